//! Listings that page and filter at 100,000 apps (issue #15): what state each credential is in,
//! as an indexed column, so that "the halted apps" is an index range, not a scan of every row.
//!
//! - `state` on the three credential tables: a generated column, worked out by the database from
//!   the columns every writer already writes, so no writer can forget it:
//!   `halted` (refreshing stopped on an error retrying cannot cure), `out_of_budget` (the last
//!   fetch was refused by the app's daily budget, errcode 90430), `failing` (the last refresh
//!   failed, `failures > 0`), `pending` (no value stored yet), else `live`.
//!   Whether a live value is due for renewal depends on the clock (`renew_at`), so the listing
//!   tells `healthy` from `renewing` at query time.
//! - Indexes per credential table on `(state, appid)`: a page of apps in one state is an index
//!   range read in appid order, stopped at the page's size; on `(state, renew_at)`: the live
//!   values due for renewal, few at a time; on `(state, expires_at)`: the least time left among
//!   the values still served.
//! - An index on `wechat_app_info (kind, appid)`: the same for a page of one kind of app.
//!
//! The column is STORED on PostgreSQL and MariaDB; SQLite can add only a VIRTUAL generated
//! column to an existing table (its index stores the value all the same).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The credential tables, their value columns and the short names of their indexes.
const TABLES: [(&str, &str, &str); 3] = [
    ("wechat_access_token", "access_token", "wat"),
    ("wechat_jsapi_ticket", "ticket", "wjt"),
    ("wechat_card_ticket", "ticket", "wct"),
];

const APP_KIND_INDEX: &str = "idx_app_kind_appid";

/// The second column of each index on `state`: `appid` for a page of one state in appid order,
/// `renew_at` for the live values due (renewing), `expires_at` for the least time left.
const STATE_INDEXED: [&str; 3] = ["appid", "renew_at", "expires_at"];

fn state_index(short: &str, column: &str) -> String {
    format!("idx_{short}_state_{column}")
}

/// The expression the database computes `state` from. 90430 is wetoken's OVER_BUDGET errcode,
/// which a scheduled fetch refused by the budget records.
fn state_expression(value: &str) -> String {
    format!(
        "CASE WHEN halted THEN 'halted' \
         WHEN errcode = 90430 THEN 'out_of_budget' \
         WHEN failures > 0 THEN 'failing' \
         WHEN {value} IS NULL OR {value} = '' THEN 'pending' \
         ELSE 'live' END"
    )
}

/// Whether `table` has its `state` column. SQLite's `table_info`, which `has_column` reads, leaves
/// generated columns out; `table_xinfo` lists them.
async fn has_state(manager: &SchemaManager<'_>, table: &str) -> Result<bool, DbErr> {
    if manager.get_database_backend() != DbBackend::Sqlite {
        return manager.has_column(table, "state").await;
    }
    let sql = format!("SELECT COUNT(*) FROM pragma_table_xinfo('{table}') WHERE name = 'state'");
    Ok(crate::count(manager, &sql).await? > 0)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for (table, value, short) in TABLES {
            if !has_state(manager, table).await? {
                let expression = state_expression(value);
                let sql = match manager.get_database_backend() {
                    DbBackend::Sqlite => format!(
                        "ALTER TABLE {table} ADD COLUMN state VARCHAR(16) \
                         GENERATED ALWAYS AS ({expression}) VIRTUAL"
                    ),
                    _ => format!(
                        "ALTER TABLE {table} ADD COLUMN state VARCHAR(16) \
                         GENERATED ALWAYS AS ({expression}) STORED"
                    ),
                };
                db.execute_unprepared(&sql).await?;
            }
            for column in STATE_INDEXED {
                let name = state_index(short, column);
                if !manager.has_index(table, &name).await? {
                    manager
                        .create_index(
                            Index::create()
                                .name(&name)
                                .table(Alias::new(table))
                                .col(Alias::new("state"))
                                .col(Alias::new(column))
                                .to_owned(),
                        )
                        .await?;
                }
            }
        }
        if !manager.has_index("wechat_app_info", APP_KIND_INDEX).await? {
            manager
                .create_index(
                    Index::create()
                        .name(APP_KIND_INDEX)
                        .table(Alias::new("wechat_app_info"))
                        .col(Alias::new("kind"))
                        .col(Alias::new("appid"))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut indexes: Vec<(&str, String)> = TABLES
            .iter()
            .flat_map(|(table, _, short)| {
                STATE_INDEXED.map(|column| (*table, state_index(short, column)))
            })
            .collect();
        indexes.push(("wechat_app_info", APP_KIND_INDEX.to_owned()));
        for (table, name) in indexes {
            if manager.has_index(table, &name).await? {
                manager
                    .drop_index(
                        Index::drop()
                            .name(&name)
                            .table(Alias::new(table))
                            .to_owned(),
                    )
                    .await?;
            }
        }
        for (table, _, _) in TABLES {
            if has_state(manager, table).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Alias::new(table))
                            .drop_column(Alias::new("state"))
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
