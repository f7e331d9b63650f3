//! wetoken's schema.
//!
//! The table names are those of the Go wetoken (`wechat_app_info`, `wechat_access_token`,
//! `wechat_jsapi_ticket`), so a team moving from it finds them where it left them.
//! Unlike the Go schema, credential columns hold 512 characters (WeChat's advice; real tokens are
//! about 150 characters and the Go schema's 64 truncated them), and expiry is an absolute UTC
//! instant.
//!
//! Migrations that have landed are never edited: a change to the schema is a new migration.
//! The one exception is how a migration gets to its schema, never which schema it makes: MySQL
//! commits every DDL statement on its own, so each migration must finish when run again after
//! being interrupted between two statements. Columns are therefore added with
//! [`add_column_if_missing`], and tables created `IF NOT EXISTS`.
//!
//! A database created by the Go wetoken's own DDL (MySQL, `utf8`) is upgraded in place by the same
//! migrations: see [`go`] and migration 000007.
#![deny(missing_docs)]

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_tables;
mod m20261124_000002_refresh_lease;
mod m20261124_000003_app_kinds;
mod m20261124_000004_call_budget;
mod m20261125_000005_consumer_keys;
mod m20261125_000006_secret_columns;
mod m20261129_000007_go_takeover;
mod m20261130_000008_errcode;
mod m20261205_000009_quota_guard;
mod m20261205_000010_change_feed;
mod m20261205_000011_credential_state;
mod m20261205_000012_refresh_history;
mod m20261205_000013_seal_generation;
mod m20261206_000014_open_platform;

pub mod go;

/// Every migration of wetoken's schema, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_tables::Migration),
            Box::new(m20261124_000002_refresh_lease::Migration),
            Box::new(m20261124_000003_app_kinds::Migration),
            Box::new(m20261124_000004_call_budget::Migration),
            Box::new(m20261125_000005_consumer_keys::Migration),
            Box::new(m20261125_000006_secret_columns::Migration),
            Box::new(m20261129_000007_go_takeover::Migration),
            Box::new(m20261130_000008_errcode::Migration),
            Box::new(m20261205_000009_quota_guard::Migration),
            Box::new(m20261205_000010_change_feed::Migration),
            Box::new(m20261205_000011_credential_state::Migration),
            Box::new(m20261205_000012_refresh_history::Migration),
            Box::new(m20261205_000013_seal_generation::Migration),
            Box::new(m20261206_000014_open_platform::Migration),
        ]
    }
}

/// The single number a `SELECT COUNT(*) …` answers: what a `down` checks before it destroys.
pub(crate) async fn count(manager: &SchemaManager<'_>, sql: &str) -> Result<i64, DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};
    Ok(manager
        .get_connection()
        .query_one_raw(Statement::from_string(manager.get_database_backend(), sql))
        .await?
        .map(|row| row.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0))
}

/// Adds `column` to `table` unless a column of that name is there already; returns whether it
/// added it. What makes an interrupted migration finish when run again.
pub(crate) async fn add_column_if_missing(
    manager: &SchemaManager<'_>,
    table: &str,
    column: ColumnDef,
) -> Result<bool, DbErr> {
    if manager.has_column(table, column.get_column_name()).await? {
        return Ok(false);
    }
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .add_column(column)
                .to_owned(),
        )
        .await?;
    Ok(true)
}

/// Drops `column` from `table` if it is there: the `down` counterpart of
/// [`add_column_if_missing`].
pub(crate) async fn drop_column_if_present(
    manager: &SchemaManager<'_>,
    table: &str,
    column: &str,
) -> Result<(), DbErr> {
    if !manager.has_column(table, column).await? {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .drop_column(Alias::new(column))
                .to_owned(),
        )
        .await
}

/// On MySQL, gives `create` the character set and collation of `table.column`, which a column of
/// the new table references: MySQL refuses a foreign key between columns of different character
/// sets, and the Go wetoken's tables are `utf8` where a new table would default to `utf8mb4`.
/// Elsewhere it does nothing.
pub(crate) async fn match_charset(
    manager: &SchemaManager<'_>,
    create: &mut TableCreateStatement,
    table: &str,
    column: &str,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm_migration::sea_orm::DbBackend::MySql {
        return Ok(());
    }
    if let Some(found) = go::mysql_column(manager, table, column).await?
        && let (Some(charset), Some(collation)) = (found.charset, found.collation)
    {
        create.character_set(charset).collate(collation);
    }
    Ok(())
}
