//! The quota guard (issue #14): what replicas share so that misbehaving callers cannot make
//! wetoken fetch more than once per credential lifetime.
//!
//! On the three credential tables:
//! - `check_version`, `checked_at`, `check_errcode`: the last time WeChat was asked whether the
//!   stored value still works (`/cgi-bin/get_api_domain_ip`, which spends no token quota), which
//!   stored value (`version`) was asked about, and WeChat's answer (0: it works). A burst of
//!   reports across replicas reads this instead of asking again.
//! - `check_due_at`: when the slow out-of-band check next looks at the value; NULL when none is
//!   scheduled (the app's interval is 0, or no value is stored).
//! - `replaced_count`: how many times the value was found dead before its time, replaced by a
//!   fetch made outside wetoken (a leaked secret, an old script, the admin console).
//!
//! On `wechat_app_info`, `verify_secs`: the app's out-of-band check interval; NULL takes the
//! server's default, 0 turns it off.
//!
//! On `wetoken_consumer_key`, `refresh_burst` and `refresh_per_minute`: the key's token bucket for
//! passive-refresh reports; NULL takes the server's default.
//!
//! `wetoken_refresh_share`: forced stable tokens per app, per reporter (a consumer key, or an
//! address while no keys exist), per WeChat day, so that one caller cannot spend the day's 20.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The credential tables, as of migration 000003.
const CREDENTIAL_TABLES: [&str; 3] = [
    "wechat_access_token",
    "wechat_jsapi_ticket",
    "wechat_card_ticket",
];

#[derive(DeriveIden)]
enum Credential {
    CheckVersion,
    CheckedAt,
    CheckErrcode,
    CheckDueAt,
    ReplacedCount,
}

#[derive(DeriveIden)]
enum App {
    VerifySecs,
}

#[derive(DeriveIden)]
enum Key {
    RefreshBurst,
    RefreshPerMinute,
}

#[derive(DeriveIden)]
enum WetokenRefreshShare {
    Table,
    Appid,
    Reporter,
    Day,
    Forces,
}

fn credential_columns() -> Vec<ColumnDef> {
    use Credential as C;
    vec![
        ColumnDef::new(C::CheckVersion)
            .big_integer()
            .null()
            .to_owned(),
        ColumnDef::new(C::CheckedAt)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
        ColumnDef::new(C::CheckErrcode)
            .big_integer()
            .null()
            .to_owned(),
        ColumnDef::new(C::CheckDueAt)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
        ColumnDef::new(C::ReplacedCount)
            .integer()
            .not_null()
            .default(0)
            .to_owned(),
    ]
}

fn key_columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new(Key::RefreshBurst)
            .integer()
            .null()
            .to_owned(),
        ColumnDef::new(Key::RefreshPerMinute)
            .integer()
            .null()
            .to_owned(),
    ]
}

fn app_column() -> ColumnDef {
    ColumnDef::new(App::VerifySecs).integer().null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in CREDENTIAL_TABLES {
            for column in credential_columns() {
                crate::add_column_if_missing(manager, table, column).await?;
            }
        }
        crate::add_column_if_missing(manager, "wechat_app_info", app_column()).await?;
        for column in key_columns() {
            crate::add_column_if_missing(manager, "wetoken_consumer_key", column).await?;
        }
        use WetokenRefreshShare as S;
        let mut create = Table::create()
            .table(S::Table)
            .if_not_exists()
            .col(ColumnDef::new(S::Appid).string_len(64).not_null())
            .col(ColumnDef::new(S::Reporter).string_len(128).not_null())
            .col(ColumnDef::new(S::Day).string_len(8).not_null())
            .col(ColumnDef::new(S::Forces).integer().not_null().default(0))
            .primary_key(Index::create().col(S::Appid).col(S::Reporter))
            .to_owned();
        // No foreign key, but the same character set as the appids it names, so that a join
        // on a Go-made MySQL database compares like with like.
        crate::match_charset(manager, &mut create, "wechat_app_info", "appid").await?;
        manager.create_table(create).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WetokenRefreshShare::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        for column in key_columns() {
            crate::drop_column_if_present(
                manager,
                "wetoken_consumer_key",
                &column.get_column_name(),
            )
            .await?;
        }
        crate::drop_column_if_present(manager, "wechat_app_info", &app_column().get_column_name())
            .await?;
        for table in CREDENTIAL_TABLES {
            for column in credential_columns() {
                crate::drop_column_if_present(manager, table, &column.get_column_name()).await?;
            }
        }
        Ok(())
    }
}
