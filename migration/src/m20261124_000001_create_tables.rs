//! The three tables of the Go wetoken, widened for real tokens.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WechatAppInfo {
    Table,
    Appid,
    Secret,
    Token,
    AesKey,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum WechatAccessToken {
    Table,
    AccessToken,
}

#[derive(DeriveIden)]
enum WechatJsapiTicket {
    Table,
    Ticket,
}

/// Columns both credential tables share.
#[derive(DeriveIden)]
enum Credential {
    Appid,
    ExpiresAt,
    Message,
    Halted,
    RefreshTime,
    UpdateTime,
}

/// One credential table: the appid, the value column, and the shared bookkeeping columns.
fn credential_table(table: impl IntoIden, value: impl IntoIden) -> TableCreateStatement {
    let table = table.into_iden();
    Table::create()
        .table(table.clone())
        .if_not_exists()
        .col(
            ColumnDef::new(Credential::Appid)
                .string_len(64)
                .not_null()
                .primary_key(),
        )
        .col(ColumnDef::new(value).string_len(512).null())
        .col(
            ColumnDef::new(Credential::ExpiresAt)
                .timestamp_with_time_zone()
                .null(),
        )
        .col(
            ColumnDef::new(Credential::Message)
                .string_len(1024)
                .not_null()
                .default(""),
        )
        .col(
            ColumnDef::new(Credential::Halted)
                .boolean()
                .not_null()
                .default(false),
        )
        .col(
            ColumnDef::new(Credential::RefreshTime)
                .timestamp_with_time_zone()
                .null(),
        )
        .col(
            ColumnDef::new(Credential::UpdateTime)
                .timestamp_with_time_zone()
                .not_null()
                .default(Expr::current_timestamp()),
        )
        .foreign_key(
            ForeignKey::create()
                .from(table, Credential::Appid)
                .to(WechatAppInfo::Table, WechatAppInfo::Appid)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WechatAppInfo::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WechatAppInfo::Appid)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WechatAppInfo::Secret)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(WechatAppInfo::Token).string_len(128).null())
                    .col(ColumnDef::new(WechatAppInfo::AesKey).string_len(128).null())
                    // An explicit default keeps MySQL from giving the column ON UPDATE semantics.
                    .col(
                        ColumnDef::new(WechatAppInfo::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(WechatAppInfo::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(credential_table(
                WechatAccessToken::Table,
                WechatAccessToken::AccessToken,
            ))
            .await?;
        manager
            .create_table(credential_table(
                WechatJsapiTicket::Table,
                WechatJsapiTicket::Ticket,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WechatJsapiTicket::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WechatAccessToken::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WechatAppInfo::Table).to_owned())
            .await
    }
}
