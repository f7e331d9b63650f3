//! Consumer keys: who may read which app's credentials.
//!
//! Only a key's SHA-256 is stored (`key_hash`, lower-case hex); the key itself is shown once when
//! it is made. `appids` and `networks` are comma-separated lists (neither an appid nor a CIDR
//! block contains a comma). A revoked key keeps its row, with `revoke_time` set.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WetokenConsumerKey {
    Table,
    Id,
    Name,
    KeyHash,
    Appids,
    AllowRefresh,
    Networks,
    CreateTime,
    RevokeTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WetokenConsumerKey as K;
        manager
            .create_table(
                Table::create()
                    .table(K::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(K::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(K::Name)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(K::KeyHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(K::Appids).text().not_null())
                    .col(
                        ColumnDef::new(K::AllowRefresh)
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .col(ColumnDef::new(K::Networks).text().not_null())
                    .col(
                        ColumnDef::new(K::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(K::RevokeTime)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    /// Refuses while any key is stored, revoked ones included: dropping them would turn a
    /// deployment that requires keys back into one that answers `reader_networks` without any,
    /// at its next start. Revoked keys count because they are what keeps keys required after
    /// the last live one is revoked.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let keys = crate::count(manager, "SELECT COUNT(*) FROM wetoken_consumer_key").await?;
        if keys > 0 {
            return Err(DbErr::Migration(format!(
                "{keys} consumer keys are stored (revoked ones included); dropping them would \
                 open the token routes to reader_networks without a key: this migration cannot \
                 be undone while they are stored"
            )));
        }
        manager
            .drop_table(Table::drop().table(WetokenConsumerKey::Table).to_owned())
            .await
    }
}
