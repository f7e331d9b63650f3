//! The Go wetoken's columns on every database, and wetoken's on the Go wetoken's tables.
//!
//! - `wechat_app_info` gains the Go app fields where they are missing: `mchid`, `pay_key`
//!   (encrypted like the secret, hence `TEXT`), `sub_appid`, `sub_mchid`, `wechat_host` and
//!   `wcode_template_id`.
//! - A database the Go wetoken created gets what its tables lack for wetoken ([`crate::go`]):
//!   wider credential columns, `expires_at`, `halted`, `refresh_time`, `create_time`, and
//!   defaults on the Go columns wetoken does not write. Its rows are kept; their expiries are
//!   adopted after the migrations, in the Go server's time zone (`wetoken_core`'s takeover).
//! - `wechat_user_info`, the Go wetoken's users (for `/wx/{appid}/wxcode/send`), is created
//!   where it is missing, without the Go DDL's unique key on `appid` (which allowed one user
//!   per app).
//!
//! `down` drops only the columns and table this added to a database wetoken created; on a Go
//! database, the Go columns stay (they held the Go server's data).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WechatUserInfo {
    Table,
    UserId,
    Appid,
    Openid,
    Unionid,
    UserName,
    NickName,
    HeadUrl,
    Phone,
    Email,
    Status,
    CreateTime,
    UpdateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for change in crate::go::changes(manager).await? {
            change.apply(manager).await?;
        }
        use WechatUserInfo as U;
        manager
            .create_table(
                Table::create()
                    .table(U::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(U::UserId)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(U::Appid).string_len(64).not_null())
                    .col(ColumnDef::new(U::Openid).string_len(64).not_null())
                    .col(ColumnDef::new(U::Unionid).string_len(64).null())
                    .col(
                        ColumnDef::new(U::UserName)
                            .string_len(32)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(U::NickName).string_len(64).null())
                    .col(ColumnDef::new(U::HeadUrl).string_len(256).null())
                    .col(ColumnDef::new(U::Phone).string_len(16).null())
                    .col(ColumnDef::new(U::Email).string_len(64).null())
                    .col(
                        ColumnDef::new(U::Status)
                            .small_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(U::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(U::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if crate::go::is_go_schema(manager).await? {
            return Err(DbErr::Migration(
                "this database was the Go wetoken's: its columns and wechat_user_info hold the \
                 Go server's data, so this migration is not undone here"
                    .into(),
            ));
        }
        manager
            .drop_table(
                Table::drop()
                    .table(WechatUserInfo::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        for column in [
            "wcode_template_id",
            "wechat_host",
            "pay_key",
            "sub_mchid",
            "sub_appid",
            "mchid",
        ] {
            crate::drop_column_if_present(manager, "wechat_app_info", column).await?;
        }
        Ok(())
    }
}
