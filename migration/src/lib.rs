//! wetoken's schema.
//!
//! The table names are those of the Go wetoken (`wechat_app_info`, `wechat_access_token`,
//! `wechat_jsapi_ticket`), so a team moving from it finds them where it left them.
//! Unlike the Go schema, credential columns hold 512 characters (WeChat's advice; real tokens are
//! about 150 characters and the Go schema's 64 truncated them), and expiry is an absolute UTC
//! instant.
//!
//! Migrations that have landed are never edited: a change to the schema is a new migration.
#![deny(missing_docs)]

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_tables;
mod m20261124_000002_refresh_lease;
mod m20261124_000003_app_kinds;
mod m20261124_000004_call_budget;
mod m20261125_000005_consumer_keys;
mod m20261125_000006_secret_columns;

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
