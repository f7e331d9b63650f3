//! The change feed (issue #15): how a replica learns which cached credentials another replica
//! replaced, with one query per interval whatever the number of apps.
//!
//! - `wetoken_change_seq`: one row (`id` = 1) whose `seq` every write of a credential value
//!   increments in the write's own transaction. The row lock orders those transactions, so the
//!   sequence numbers commit in order: a reader that has seen `seq` N has seen every change up
//!   to N.
//! - `wetoken_change`: one row per change (`seq`, `appid`, `kind`: 0 access token, 1 jsapi
//!   ticket, 2 card ticket; `at`), read by `seq > cursor`, pruned after an hour.
//!
//! The scheduler's scan (issue #15: one indexed query, whatever the number of apps):
//! - `renew_at` on the credential tables: when the scheduler should renew the stored value (its
//!   expiry less the app's renewal point), written with the value; NULL for a row whose value
//!   was never fetched by wetoken (imported, adopted from the Go wetoken, or none yet), which the
//!   scheduler looks at and dates once. Indexed, as is `check_due_at`.
//! - Every app gets its access-token row, and official accounts and WeCom apps their jsapi-ticket
//!   row, now rather than at their first fetch: so that what is due is found in the credential
//!   table's index alone, without scanning every app for a missing row. `Store::insert_app` does
//!   the same for new apps.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WetokenChangeSeq {
    Table,
    Id,
    Seq,
}

#[derive(DeriveIden)]
enum Credential {
    RenewAt,
}

#[derive(DeriveIden)]
enum WetokenChange {
    Table,
    Seq,
    Appid,
    Kind,
    At,
}

/// The credential tables and the short names of their indexes.
const INDEXED: [(&str, &str); 3] = [
    ("wechat_access_token", "wat"),
    ("wechat_jsapi_ticket", "wjt"),
    ("wechat_card_ticket", "wct"),
];

/// The columns the scheduler's scans select on.
const INDEXED_COLUMNS: [&str; 2] = ["renew_at", "check_due_at"];

fn index_name(short: &str, column: &str) -> String {
    format!("idx_{short}_{column}")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WetokenChangeSeq as S;
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(S::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(S::Seq).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        let rows = crate::count(manager, "SELECT COUNT(*) FROM wetoken_change_seq").await?;
        if rows == 0 {
            manager
                .exec_stmt(
                    Query::insert()
                        .into_table(S::Table)
                        .columns([S::Id, S::Seq])
                        .values_panic([1.into(), 0.into()])
                        .to_owned(),
                )
                .await?;
        }
        use WetokenChange as C;
        let mut create = Table::create()
            .table(C::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(C::Seq)
                    .big_integer()
                    .not_null()
                    .primary_key(),
            )
            .col(ColumnDef::new(C::Appid).string_len(64).not_null())
            .col(ColumnDef::new(C::Kind).small_integer().not_null())
            .col(ColumnDef::new(C::At).timestamp_with_time_zone().not_null())
            .to_owned();
        crate::match_charset(manager, &mut create, "wechat_app_info", "appid").await?;
        manager.create_table(create).await?;
        for (table, _) in INDEXED {
            let renew_at = ColumnDef::new(Credential::RenewAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned();
            crate::add_column_if_missing(manager, table, renew_at).await?;
        }
        // The rows every app has (card tickets are made when first asked for).
        // The value is '' rather than NULL: a Go wetoken rolled back to reads these rows, and its
        // NOT NULL columns never held NULL.
        for (table, value, kinds) in [
            (
                "wechat_access_token",
                "access_token",
                "'mp', 'mini', 'work'",
            ),
            ("wechat_jsapi_ticket", "ticket", "'mp', 'work'"),
        ] {
            let sql = format!(
                "INSERT INTO {table} (appid, {value}, message, update_time) \
                 SELECT a.appid, '', 'not fetched yet', CURRENT_TIMESTAMP FROM wechat_app_info a \
                 WHERE a.kind IN ({kinds}) \
                 AND NOT EXISTS (SELECT 1 FROM {table} c WHERE c.appid = a.appid)"
            );
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        for (table, short) in INDEXED {
            for column in INDEXED_COLUMNS {
                let name = index_name(short, column);
                if manager.has_index(table, &name).await? {
                    continue;
                }
                manager
                    .create_index(
                        Index::create()
                            .name(&name)
                            .table(Alias::new(table))
                            .col(Alias::new(column))
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, short) in INDEXED {
            for column in INDEXED_COLUMNS {
                let name = index_name(short, column);
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
        }
        for (table, _) in INDEXED {
            crate::drop_column_if_present(manager, table, "renew_at").await?;
        }
        for table in ["wetoken_change", "wetoken_change_seq"] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
