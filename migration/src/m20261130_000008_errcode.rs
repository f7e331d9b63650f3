//! `errcode` on the three credential tables: WeChat's code for the last recorded outcome, so that
//! a replica reading another's failure needs no parsing of `message`.
//!
//! - `0` after a success; WeChat's code when it refused; NULL when no WeChat answer is behind the
//!   outcome (unreachable, an HTTP error, an unreadable answer, "not fetched yet", "imported",
//!   "settings changed").
//! - Rows written before this migration keep NULL until their next refresh: they read as an
//!   outcome without a WeChat code, and `message` still says what happened. Only a halt or a
//!   backoff recorded before the upgrade shows, until then, wetoken's own code instead of
//!   WeChat's.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The credential tables, as of migration 000003.
const TABLES: [&str; 3] = [
    "wechat_access_token",
    "wechat_jsapi_ticket",
    "wechat_card_ticket",
];

#[derive(DeriveIden)]
enum Credential {
    Errcode,
}

fn errcode() -> ColumnDef {
    ColumnDef::new(Credential::Errcode)
        .big_integer()
        .null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            crate::add_column_if_missing(manager, table, errcode()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            crate::drop_column_if_present(manager, table, &errcode().get_column_name()).await?;
        }
        Ok(())
    }
}
