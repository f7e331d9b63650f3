//! The recent refresh outcomes of each credential, for the status page's per-app view
//! (issue #16): `wetoken_refresh_history`, a ring of a fixed number of slots per credential.
//!
//! The key is `(appid, kind, slot)`: a writer upserts the slot that is empty or holds the
//! oldest outcome, so the table holds at most slots × credentials rows, whatever the number of
//! refreshes and replicas, and nothing ever deletes to keep it so (an app's rows go with the
//! app). The engine writes it while it holds the refresh lease, so two replicas rarely pick the
//! same slot; when they do, one outcome overwrites the other, which a history may lose.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WetokenRefreshHistory {
    Table,
    Appid,
    Kind,
    Slot,
    At,
    Cause,
    Ok,
    Errcode,
    Errmsg,
    Replica,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WetokenRefreshHistory as H;
        let mut create = Table::create()
            .table(H::Table)
            .if_not_exists()
            .col(ColumnDef::new(H::Appid).string_len(64).not_null())
            .col(ColumnDef::new(H::Kind).string_len(16).not_null())
            .col(ColumnDef::new(H::Slot).small_integer().not_null())
            .col(ColumnDef::new(H::At).timestamp_with_time_zone().not_null())
            .col(ColumnDef::new(H::Cause).string_len(16).not_null())
            .col(ColumnDef::new(H::Ok).boolean().not_null())
            .col(ColumnDef::new(H::Errcode).big_integer().null())
            .col(ColumnDef::new(H::Errmsg).string_len(1024).not_null())
            .col(ColumnDef::new(H::Replica).string_len(128).not_null())
            .primary_key(Index::create().col(H::Appid).col(H::Kind).col(H::Slot))
            .to_owned();
        crate::match_charset(manager, &mut create, "wechat_app_info", "appid").await?;
        manager.create_table(create).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WetokenRefreshHistory::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
