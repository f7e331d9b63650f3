//! The Go wetoken's tables, and what it takes to serve from them.
//!
//! The Go wetoken's installer created `wechat_app_info`, `wechat_access_token`,
//! `wechat_jsapi_ticket` and `wechat_user_info` on MySQL, `utf8`, with credential columns of 64
//! characters, a local-time `expire_date` instead of an absolute expiry, and NOT NULL columns
//! wetoken does not write. Migration 000001 creates its tables `IF NOT EXISTS`, so on such a
//! database it keeps the Go tables as they are; [`changes`] lists what they then lack, and
//! migration 000007 makes those changes. Every Go column and row is kept, so a rollback finds
//! them.
//!
//! Each change is one statement, chosen by reading the schema first: running the list again after
//! an interruption makes only the changes still missing, and `wetoken-cli install --check` prints
//! it without changing anything.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

/// The Go wetoken's credential tables and their value columns.
pub const CREDENTIAL_TABLES: [(&str, &str); 2] = [
    ("wechat_access_token", "access_token"),
    ("wechat_jsapi_ticket", "ticket"),
];

/// A column as MySQL's `information_schema` describes it.
#[derive(Debug, Clone)]
pub struct MysqlColumn {
    /// `varchar`, `text`, `datetime`, …
    pub data_type: String,
    /// The most characters a string column holds.
    pub max_length: Option<i64>,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The default, as MySQL prints it; `None` when there is none.
    pub default: Option<String>,
    /// The character set of a string column.
    pub charset: Option<String>,
    /// The collation of a string column.
    pub collation: Option<String>,
}

/// How MySQL describes `table.column` in the current database, if it exists.
pub async fn mysql_column(
    manager: &SchemaManager<'_>,
    table: &str,
    column: &str,
) -> Result<Option<MysqlColumn>, DbErr> {
    let conn = manager.get_connection();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            "SELECT CAST(DATA_TYPE AS CHAR), CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED), \
             CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), \
             CAST(CHARACTER_SET_NAME AS CHAR), CAST(COLLATION_NAME AS CHAR) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            [table.into(), column.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let default: Option<String> = row.try_get_by_index(3)?;
    Ok(Some(MysqlColumn {
        data_type: row.try_get_by_index::<String>(0)?.to_ascii_lowercase(),
        max_length: row.try_get_by_index(1)?,
        nullable: row.try_get_by_index::<String>(2)? == "YES",
        // MariaDB says `NULL` (the text) for "no default" on nullable columns.
        default: default.filter(|d| d != "NULL"),
        charset: row.try_get_by_index(4)?,
        collation: row.try_get_by_index(5)?,
    }))
}

/// Whether this database holds the Go wetoken's credential tables, recognised by their
/// `expire_date` column.
pub async fn is_go_schema(manager: &SchemaManager<'_>) -> Result<bool, DbErr> {
    if manager.get_database_backend() != DbBackend::MySql {
        return Ok(false);
    }
    for (table, _) in CREDENTIAL_TABLES {
        if manager.has_table(table).await? && manager.has_column(table, "expire_date").await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One change to the schema: what an operator reads, and the statement that makes it.
pub struct Change {
    /// One line, e.g. `wechat_access_token.access_token: VARCHAR(64) → VARCHAR(512) NULL`.
    pub description: String,
    statement: TableAlterStatement,
}

impl Change {
    fn new(description: String, statement: TableAlterStatement) -> Self {
        Self {
            description,
            statement,
        }
    }

    /// Makes the change.
    pub async fn apply(self, manager: &SchemaManager<'_>) -> Result<(), DbErr> {
        manager.alter_table(self.statement).await
    }
}

fn add(table: &str, column: ColumnDef, shape: &str) -> Change {
    let name = column.get_column_name();
    Change::new(
        format!("{table}: add column {name} {shape}"),
        Table::alter()
            .table(Alias::new(table))
            .add_column(column)
            .to_owned(),
    )
}

fn modify(table: &str, column: ColumnDef, was: &MysqlColumn, shape: &str) -> Change {
    let name = column.get_column_name();
    let length = was.max_length.map(|n| format!("({n})")).unwrap_or_default();
    let null = if was.nullable { " NULL" } else { " NOT NULL" };
    let default = was
        .default
        .as_ref()
        .map(|d| format!(" DEFAULT {d}"))
        .unwrap_or_default();
    Change::new(
        format!(
            "{table}.{name}: {}{length}{null}{default} → {shape}",
            was.data_type.to_uppercase()
        ),
        Table::alter()
            .table(Alias::new(table))
            .modify_column(column)
            .to_owned(),
    )
}

/// What the tables lack, on this database, to serve as wetoken's alongside the Go columns: empty
/// on a database wetoken created, and once migration 000007 has run.
///
/// Columns of wetoken's that the Go tables lack are added on every backend (a no-op where
/// migration 000001 created them); Go columns are changed only on MySQL, where the Go tables
/// live:
/// - the credential value to 512 characters (today's tokens are longer than 64), `message` to
///   1024 with a default;
/// - `expire` and `expire_date`, which wetoken does not write, get defaults, so that its rows can
///   be inserted; `expire_date` of a row wetoken writes is then 1970, which a rolled-back Go
///   server takes as expired;
/// - `pay_key` becomes `TEXT`, room for its encrypted form.
pub async fn changes(manager: &SchemaManager<'_>) -> Result<Vec<Change>, DbErr> {
    let mysql = manager.get_database_backend() == DbBackend::MySql;
    let mut changes = Vec::new();
    let app = "wechat_app_info";
    if !manager.has_table(app).await? {
        return Ok(changes);
    }
    let mut need = |table: &str, exists: bool, column: ColumnDef, shape: &str| {
        if !exists {
            changes.push(add(table, column, shape));
        }
    };
    need(
        app,
        manager.has_column(app, "create_time").await?,
        ColumnDef::new(Alias::new("create_time"))
            .timestamp_with_time_zone()
            .not_null()
            .default(Expr::current_timestamp())
            .to_owned(),
        "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
    );
    for name in ["mchid", "sub_appid", "sub_mchid"] {
        need(
            app,
            manager.has_column(app, name).await?,
            ColumnDef::new(Alias::new(name))
                .string_len(64)
                .not_null()
                .default("")
                .to_owned(),
            "VARCHAR(64) NOT NULL DEFAULT ''",
        );
    }
    need(
        app,
        manager.has_column(app, "pay_key").await?,
        ColumnDef::new(Alias::new("pay_key"))
            .text()
            .null()
            .to_owned(),
        "TEXT NULL",
    );
    for name in ["wechat_host", "wcode_template_id"] {
        need(
            app,
            manager.has_column(app, name).await?,
            ColumnDef::new(Alias::new(name))
                .string_len(64)
                .null()
                .to_owned(),
            "VARCHAR(64) NULL",
        );
    }
    for (table, _) in CREDENTIAL_TABLES {
        if !manager.has_table(table).await? {
            continue;
        }
        need(
            table,
            manager.has_column(table, "expires_at").await?,
            ColumnDef::new(Alias::new("expires_at"))
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            "TIMESTAMP NULL",
        );
        need(
            table,
            manager.has_column(table, "halted").await?,
            ColumnDef::new(Alias::new("halted"))
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            "BOOL NOT NULL DEFAULT FALSE",
        );
        need(
            table,
            manager.has_column(table, "refresh_time").await?,
            ColumnDef::new(Alias::new("refresh_time"))
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            "TIMESTAMP NULL",
        );
    }
    if !mysql {
        return Ok(changes);
    }
    if let Some(was) = mysql_column(manager, app, "pay_key").await?
        && was.data_type != "text"
    {
        changes.push(modify(
            app,
            ColumnDef::new(Alias::new("pay_key"))
                .text()
                .null()
                .to_owned(),
            &was,
            "TEXT NULL",
        ));
    }
    for (table, value) in CREDENTIAL_TABLES {
        if let Some(was) = mysql_column(manager, table, value).await?
            && (was.max_length.unwrap_or(0) < 512 || !was.nullable)
        {
            changes.push(modify(
                table,
                ColumnDef::new(Alias::new(value))
                    .string_len(512)
                    .null()
                    .to_owned(),
                &was,
                "VARCHAR(512) NULL",
            ));
        }
        if let Some(was) = mysql_column(manager, table, "message").await?
            && (was.max_length.unwrap_or(0) < 1024 || was.default.is_none())
        {
            changes.push(modify(
                table,
                ColumnDef::new(Alias::new("message"))
                    .string_len(1024)
                    .not_null()
                    .default("")
                    .to_owned(),
                &was,
                "VARCHAR(1024) NOT NULL DEFAULT ''",
            ));
        }
        if let Some(was) = mysql_column(manager, table, "expire").await?
            && was.default.is_none()
        {
            changes.push(modify(
                table,
                ColumnDef::new(Alias::new("expire"))
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
                &was,
                "BIGINT NOT NULL DEFAULT 0",
            ));
        }
        if let Some(was) = mysql_column(manager, table, "expire_date").await?
            && was.default.is_none()
        {
            changes.push(modify(
                table,
                ColumnDef::new(Alias::new("expire_date"))
                    .date_time()
                    .not_null()
                    .default(GO_NEVER)
                    .to_owned(),
                &was,
                "DATETIME NOT NULL DEFAULT '1970-01-01 00:00:00'",
            ));
        }
    }
    Ok(changes)
}

/// The `expire_date` of a row wetoken wrote: long past, so a rolled-back Go server fetches anew.
pub const GO_NEVER: &str = "1970-01-01 00:00:00";
