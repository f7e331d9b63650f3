//! App kinds (official account, mini program, WeCom), stable-token mode, and card tickets.
//!
//! - `wechat_app_info.kind`: `mp` (official account, the Go wetoken's only kind), `mini` (mini
//!   program) or `work` (a WeCom app). A WeCom app is stored under the key `<corpid>.<agentid>`,
//!   with `corpid` and `agentid` also in columns of their own.
//! - `wechat_app_info.token_mode`: `classic` (`/cgi-bin/token`) or `stable` (`/cgi-bin/stable_token`).
//! - `wechat_access_token.force_day`, `force_count`, `forced_at`: wetoken's own count of stable
//!   tokens forced today, so it stays within WeChat's 20 a day, 30 s apart.
//! - `wechat_card_ticket`: the `wx_card` api_ticket, shaped like the other credential tables.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WechatAppInfo {
    Table,
    Appid,
    Kind,
    TokenMode,
    Corpid,
    Agentid,
}

#[derive(DeriveIden)]
enum WechatAccessToken {
    Table,
    ForceDay,
    ForceCount,
    ForcedAt,
}

#[derive(DeriveIden)]
enum WechatCardTicket {
    Table,
    Appid,
    Ticket,
    ExpiresAt,
    Message,
    Halted,
    RefreshTime,
    UpdateTime,
    Version,
    LeaseOwner,
    LeaseUntil,
    Failures,
    RetryAt,
}

async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    column: &mut ColumnDef,
) -> Result<(), DbErr> {
    let table = table.into_iden().to_string();
    crate::add_column_if_missing(manager, &table, column.to_owned()).await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WechatAppInfo as A;
        add_column(
            manager,
            A::Table,
            ColumnDef::new(A::Kind)
                .string_len(8)
                .not_null()
                .default("mp"),
        )
        .await?;
        add_column(
            manager,
            A::Table,
            ColumnDef::new(A::TokenMode)
                .string_len(8)
                .not_null()
                .default("classic"),
        )
        .await?;
        add_column(
            manager,
            A::Table,
            ColumnDef::new(A::Corpid).string_len(64).null(),
        )
        .await?;
        add_column(
            manager,
            A::Table,
            ColumnDef::new(A::Agentid).string_len(32).null(),
        )
        .await?;

        use WechatAccessToken as T;
        add_column(
            manager,
            T::Table,
            ColumnDef::new(T::ForceDay).string_len(8).null(),
        )
        .await?;
        add_column(
            manager,
            T::Table,
            ColumnDef::new(T::ForceCount)
                .integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            T::Table,
            ColumnDef::new(T::ForcedAt)
                .timestamp_with_time_zone()
                .null(),
        )
        .await?;

        use WechatCardTicket as C;
        // Its appid references wechat_app_info's, so on MySQL it takes that column's character
        // set and collation: the Go wetoken's tables are utf8, and a utf8mb4 column cannot
        // reference a utf8 one (errno 150).
        let mut create = Table::create();
        crate::match_charset(manager, &mut create, "wechat_app_info", "appid").await?;
        manager
            .create_table(
                create
                    .table(C::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(C::Appid)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(C::Ticket).string_len(512).null())
                    .col(
                        ColumnDef::new(C::ExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(C::Message)
                            .string_len(1024)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(C::Halted)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(C::RefreshTime)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(C::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(C::Version)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(C::LeaseOwner).string_len(64).null())
                    .col(ColumnDef::new(C::LeaseUntil).big_integer().null())
                    .col(ColumnDef::new(C::Failures).integer().not_null().default(0))
                    .col(ColumnDef::new(C::RetryAt).timestamp_with_time_zone().null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(C::Table, C::Appid)
                            .to(A::Table, A::Appid)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WechatCardTicket::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        for (table, column) in [
            ("wechat_access_token", "forced_at"),
            ("wechat_access_token", "force_count"),
            ("wechat_access_token", "force_day"),
            ("wechat_app_info", "agentid"),
            ("wechat_app_info", "corpid"),
            ("wechat_app_info", "token_mode"),
            ("wechat_app_info", "kind"),
        ] {
            crate::drop_column_if_present(manager, table, column).await?;
        }
        Ok(())
    }
}
