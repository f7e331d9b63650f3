//! The columns of the cluster-wide refresh lease and the fencing version.
//!
//! - `version` counts the values ever stored; a write names the version it read, so a late writer
//!   cannot replace a newer credential.
//! - `lease_owner` and `lease_until` are the lease: a replica takes it with a compare-and-set
//!   before calling WeChat. `lease_until` is in Unix milliseconds of the database's clock, so
//!   replicas with skewed clocks agree on when a lease has lapsed.
//! - `failures` and `retry_at` share the backoff after failed refreshes among replicas.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The credential tables of the first migration.
const TABLES: [&str; 2] = ["wechat_access_token", "wechat_jsapi_ticket"];

#[derive(DeriveIden)]
enum Credential {
    Version,
    LeaseOwner,
    LeaseUntil,
    Failures,
    RetryAt,
}

fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new(Credential::Version)
            .big_integer()
            .not_null()
            .default(0)
            .to_owned(),
        ColumnDef::new(Credential::LeaseOwner)
            .string_len(64)
            .null()
            .to_owned(),
        ColumnDef::new(Credential::LeaseUntil)
            .big_integer()
            .null()
            .to_owned(),
        ColumnDef::new(Credential::Failures)
            .integer()
            .not_null()
            .default(0)
            .to_owned(),
        ColumnDef::new(Credential::RetryAt)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            // One column per statement: SQLite's ALTER TABLE adds one at a time.
            for column in columns() {
                crate::add_column_if_missing(manager, table, column).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            for column in columns() {
                crate::drop_column_if_present(manager, table, &column.get_column_name()).await?;
            }
        }
        Ok(())
    }
}
