//! The open platform (issue #19): third-party platforms ("components") and the accounts that
//! authorized them ("authorizers").
//!
//! - `wechat_app_info.kind` widens from `VARCHAR(8)` to `VARCHAR(16)`: `component` is nine
//!   characters. (SQLite does not enforce the length, and cannot alter a column: it is left.)
//! - A component is an app of kind `component` in `wechat_app_info`: its `secret` is the
//!   `component_appsecret`, `token` and `aes_key` its message token and EncodingAESKey (sealed as
//!   every secret is), and its `wechat_access_token` row holds the `component_access_token`.
//! - An authorizer is an app of kind `mp` or `mini` whose new `component_appid` column names the
//!   component it authorized; its `secret` is its `authorizer_refresh_token`. The index on
//!   `(component_appid, appid)` pages a component's authorizers. `revoked_at` is set when the
//!   account withdrew its authorization (its credential rows are deleted then), and cleared when
//!   it authorizes again.
//! - `wetoken_verify_ticket` holds each component's newest `component_verify_ticket`, with
//!   WeChat's `CreateTime` (seconds) that orders them: a push older than the stored one never
//!   replaces it.
//! - `wetoken_push_seen` holds the `msg_signature` of every push accepted within the replay
//!   window, keyed by component: a push sent again is refused by the key, on every replica.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WetokenVerifyTicket {
    Table,
    ComponentAppid,
    Ticket,
    CreateTime,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum WetokenPushSeen {
    Table,
    ComponentAppid,
    Signature,
    SeenAt,
}

const APPS: &str = "wechat_app_info";
const KIND: &str = "kind";
const COMPONENT: &str = "component_appid";
const REVOKED_AT: &str = "revoked_at";
const BY_COMPONENT: &str = "idx_wai_component_appid";
const SEEN_AT: &str = "idx_wps_seen_at";

/// `wechat_app_info.kind` as `width` characters (the default `mp` kept); SQLite enforces no
/// length, and is left as it is.
async fn kind_width(manager: &SchemaManager<'_>, width: u32) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Sqlite {
        return Ok(());
    }
    let column = ColumnDef::new(Alias::new(KIND))
        .string_len(width)
        .not_null()
        .default("mp")
        .to_owned();
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(APPS))
                .modify_column(column)
                .to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        kind_width(manager, 16).await?;
        let column = ColumnDef::new(Alias::new(COMPONENT))
            .string_len(64)
            .null()
            .to_owned();
        crate::add_column_if_missing(manager, APPS, column).await?;
        let column = ColumnDef::new(Alias::new(REVOKED_AT))
            .timestamp_with_time_zone()
            .null()
            .to_owned();
        crate::add_column_if_missing(manager, APPS, column).await?;
        if !manager.has_index(APPS, BY_COMPONENT).await? {
            manager
                .create_index(
                    Index::create()
                        .name(BY_COMPONENT)
                        .table(Alias::new(APPS))
                        .col(Alias::new(COMPONENT))
                        .col(Alias::new("appid"))
                        .to_owned(),
                )
                .await?;
        }

        use WetokenVerifyTicket as T;
        let mut tickets = Table::create()
            .table(T::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(T::ComponentAppid)
                    .string_len(64)
                    .not_null()
                    .primary_key(),
            )
            .col(ColumnDef::new(T::Ticket).string_len(512).not_null())
            .col(ColumnDef::new(T::CreateTime).big_integer().not_null())
            .col(
                ColumnDef::new(T::ReceivedAt)
                    .timestamp_with_time_zone()
                    .not_null(),
            )
            .to_owned();
        crate::match_charset(manager, &mut tickets, APPS, "appid").await?;
        manager.create_table(tickets).await?;

        use WetokenPushSeen as S;
        let mut seen = Table::create()
            .table(S::Table)
            .if_not_exists()
            .col(ColumnDef::new(S::ComponentAppid).string_len(64).not_null())
            .col(ColumnDef::new(S::Signature).string_len(64).not_null())
            .col(ColumnDef::new(S::SeenAt).big_integer().not_null())
            .primary_key(Index::create().col(S::ComponentAppid).col(S::Signature))
            .to_owned();
        crate::match_charset(manager, &mut seen, APPS, "appid").await?;
        manager.create_table(seen).await?;
        if !manager.has_index("wetoken_push_seen", SEEN_AT).await? {
            manager
                .create_index(
                    Index::create()
                        .name(SEEN_AT)
                        .table(S::Table)
                        .col(S::SeenAt)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Interrupted before its column was added, there is nothing of it to keep.
        let kept = if manager.has_column(APPS, COMPONENT).await? {
            crate::count(
                manager,
                "SELECT COUNT(*) AS n FROM wechat_app_info \
                 WHERE kind = 'component' OR component_appid IS NOT NULL",
            )
            .await?
        } else {
            0
        };
        if kept > 0 {
            return Err(DbErr::Migration(format!(
                "{kept} components or authorizers are stored; without this migration their \
                 authorizers' refresh tokens would be read as app secrets: remove them first"
            )));
        }
        for table in ["wetoken_push_seen", "wetoken_verify_ticket"] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        if manager.has_index(APPS, BY_COMPONENT).await? {
            manager
                .drop_index(
                    Index::drop()
                        .name(BY_COMPONENT)
                        .table(Alias::new(APPS))
                        .to_owned(),
                )
                .await?;
        }
        crate::drop_column_if_present(manager, APPS, REVOKED_AT).await?;
        crate::drop_column_if_present(manager, APPS, COMPONENT).await?;
        // No `component` is left (checked above): every kind fits in 8 again.
        kind_width(manager, 8).await
    }
}
