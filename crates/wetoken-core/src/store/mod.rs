//! The database: apps and their stored credentials.
//!
//! One [`Store`] serves SQLite, MySQL/MariaDB and PostgreSQL alike.
//! Apps and consumer keys go through sea-orm entities in [`crate::entity`]; the three credential
//! tables share a shape, so one set of sea-query statements serves them all, with the table and
//! value column taken from [`Kind`](crate::model::Kind) and the columns named by
//! [`crate::entity::credential::Column`].
//!
//! This file holds the connection, the sealing of secret-like columns and the error conversion;
//! `apps` the app rows, `credentials` the credential rows, and `lease` the refresh lease and the
//! fenced writes only the engine makes.

mod apps;
mod credentials;
mod feed;
mod history;
mod lease;
mod listing;
mod open;
mod quota;
mod sealing;

pub(crate) use credentials::Due;
pub use history::{HISTORY_SLOTS, RefreshCause, RefreshOutcome};
pub(crate) use lease::{Checked, Dates, Failure};
pub use listing::{
    AppFilter, CredentialState, Cursor, PAGE_DEFAULT, PAGE_MAX, StateTotals, Troubled, page_limit,
};
pub(crate) use open::RefreshTokens;
pub use open::VerifyTicket;
pub use quota::wechat_day_end;
pub(crate) use sealing::{SEALED, SealedRow};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, IdenStatic};

use crate::Error;
use crate::crypto::{Format, Keyring, SealError, is_sealed, sealed_format};
use crate::entity::app_info;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// `sqlite://path?mode=rwc`, `mysql://…` or `postgres://…`.
    pub url: String,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub connect_timeout: Duration,
    /// How long a connection may live before it is replaced, if limited.
    pub max_lifetime: Option<Duration>,
    /// The master keys app secrets are encrypted with; `None` stores them in plain text (and
    /// refuses to read encrypted ones). See [`crate::crypto`].
    pub keyring: Option<Arc<Keyring>>,
}

impl DatabaseOptions {
    /// Options for `url` with a pool fit for one wetoken process.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            max_lifetime: None,
            keyring: None,
        }
    }

    /// These options with a pool as a registry's database node sets it: at most `max_open`
    /// connections and each living `lifetime_secs`, where given.
    pub fn with_pool(mut self, max_open: Option<u32>, lifetime_secs: Option<u64>) -> Self {
        if let Some(max_open) = max_open {
            self.max_connections = max_open;
        }
        self.max_lifetime = lifetime_secs.map(Duration::from_secs);
        self
    }
}

/// The daily budget of upstream calls of an app that was given none: WeChat's token quota for a
/// typical official account.
pub const DEFAULT_DAILY_BUDGET: i32 = 2000;

/// wetoken's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    keyring: Option<Arc<Keyring>>,
}

impl Store {
    /// Connects to the database `options` names.
    ///
    /// A SQLite URL without a `mode` gets `mode=rwc`, so the file is created on first start.
    pub async fn connect(options: &DatabaseOptions) -> Result<Self, Error> {
        let mut url = options.url.clone();
        if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let mut connect = ConnectOptions::new(url);
        connect
            .max_connections(options.max_connections)
            .min_connections(1)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .sqlx_logging(false);
        if let Some(lifetime) = options.max_lifetime {
            connect.max_lifetime(lifetime);
        }
        // A deleted or overwritten value (a secret once stored plain, before encryption) is
        // zeroed in the file rather than left in a free page for `strings` to find.
        connect.map_sqlx_sqlite_opts(|sqlite| sqlite.pragma("secure_delete", "ON"));
        if options.url.contains(":memory:") {
            // Every in-memory SQLite connection is a separate database.
            connect.max_connections(1);
        }
        let db = match Database::connect(connect).await {
            Ok(db) => db,
            Err(e @ (sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_))) => {
                // The pool often says only that it timed out: find out why, and where.
                return Err(match probe(&options.url, options.connect_timeout).await {
                    Some(cause) => {
                        Error::from(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(cause)))
                    }
                    None => Error::from(e),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            db,
            keyring: options.keyring.clone(),
        })
    }

    /// Wraps an open connection. Secrets are stored in plain text unless
    /// [`Store::with_keyring`] says otherwise.
    pub fn from_connection(db: DatabaseConnection) -> Self {
        Self { db, keyring: None }
    }

    /// The same store, encrypting and decrypting secrets with `keyring`.
    pub fn with_keyring(mut self, keyring: Option<Arc<Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// The same store over another connection: the install lock's own.
    pub(crate) fn on(&self, db: DatabaseConnection) -> Self {
        Self {
            db,
            keyring: self.keyring.clone(),
        }
    }

    /// The keyring secrets are encrypted with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// The stored form of a secret-like value of `appid`'s `column` in a row at seal generation
    /// `generation`: encrypted under the current master key and bound to the generation, or as it
    /// is when none is configured.
    pub(crate) fn seal(
        &self,
        appid: &str,
        column: app_info::Column,
        plain: &str,
        generation: i64,
    ) -> Result<String, Error> {
        match &self.keyring {
            Some(keyring) => Ok(keyring.seal(
                plain,
                &secret_context(appid, column, Format::V2, generation),
            )),
            // A plain value that looks encrypted would be refused when read back.
            None if is_sealed(plain) => Err(Error::InvalidInput(format!(
                "{} must not start with \"wtenc:\"",
                column.as_str()
            ))),
            None => Ok(plain.to_owned()),
        }
    }

    /// The plain text of a stored secret-like value of a row at seal generation `generation`. A
    /// plain value is read as it is (rows from before encryption); an encrypted one needs its
    /// key and must authenticate: a `wtenc:v2` value under the row's generation, a `wtenc:v1`
    /// value (from before generations) only in a row still at generation 0.
    pub(crate) fn open(
        &self,
        appid: &str,
        column: app_info::Column,
        stored: String,
        generation: i64,
    ) -> Result<String, Error> {
        if !is_sealed(&stored) {
            return Ok(stored);
        }
        let cannot = |why: &dyn std::fmt::Display| {
            Error::Secret(format!(
                "the stored {} of app {appid} cannot be decrypted: {why}",
                column.as_str()
            ))
        };
        let format = sealed_format(&stored).ok_or_else(|| cannot(&SealError::Malformed))?;
        if format == Format::V1 && generation != 0 {
            return Err(cannot(&format_args!(
                "it is in the wtenc:v1 form, from before seal generations, but its row is at \
                 seal generation {generation}: an older value put back, or one written by an \
                 older wetoken"
            )));
        }
        let opened = match &self.keyring {
            Some(keyring) => {
                keyring.open(&stored, &secret_context(appid, column, format, generation))
            }
            None => Err(SealError::NoKey),
        };
        opened.map_err(|e| cannot(&e))
    }

    /// The underlying connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// The day as WeChat counts it for its daily limits (China time), `YYYYMMDD`.
pub fn wechat_day(at: DateTime<Utc>) -> String {
    (at + chrono::TimeDelta::hours(8))
        .format("%Y%m%d")
        .to_string()
}

/// What a secret-like value is bound to: its table, column and appid, and in the `wtenc:v2` form
/// its row's seal generation. A ciphertext copied to another row or column, or put back into its
/// row after the row moved on to another generation, does not decrypt there.
pub(crate) fn secret_context(
    appid: &str,
    column: app_info::Column,
    format: Format,
    generation: i64,
) -> Vec<u8> {
    let column = column.as_str();
    match format {
        Format::V1 => format!("wetoken/wechat_app_info/{column}/{appid}"),
        Format::V2 => format!("wetoken/v2/wechat_app_info/{column}/{appid}/{generation}"),
    }
    .into_bytes()
}

/// The `host:port` a MySQL or PostgreSQL URL names (the port defaulted), if it names one.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "mysql" | "mariadb" => 3306,
        "postgres" | "postgresql" => 5432,
        _ => return None,
    };
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = match host_port.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default,
    };
    Some((host.to_owned(), port))
}

/// Why the database at `url` cannot be reached, found by opening a TCP connection to it: the
/// pool's own error after a failed start says only that it timed out. `None` when the host
/// answers (the cause is then past TCP: authentication, TLS, the database's name, which the
/// pool would have reported) or the URL names no host.
async fn probe(url: &str, timeout: std::time::Duration) -> Option<String> {
    let (host, port) = host_port(url)?;
    let target = format!("{host}:{port}");
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let cause = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
                format!("cannot resolve {host}: {e}")
            }
            _ => e.to_string(),
        },
        Err(_) => format!("no answer within {} s", timeout.as_secs()),
    };
    Some(format!("cannot connect to {target}: {cause}"))
}

#[cfg(test)]
mod connect_tests {
    use super::*;

    #[test]
    fn urls_name_their_host_and_port() {
        for (url, want) in [
            (
                "mysql://root:pw@127.0.0.1:3399/x",
                Some(("127.0.0.1", 3399)),
            ),
            ("mysql://root@db/x?ssl-mode=disabled", Some(("db", 3306))),
            ("postgres://u:p@[::1]:6000/x", Some(("::1", 6000))),
            ("postgres://u@[::1]/x", Some(("::1", 5432))),
            (
                "postgres://pg.example.com/x",
                Some(("pg.example.com", 5432)),
            ),
            ("sqlite://wetoken.db", None),
        ] {
            let got = host_port(url);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{url}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_is_named_with_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut options = DatabaseOptions::new(format!("mysql://root:pw@127.0.0.1:{port}/x"));
        options.connect_timeout = std::time::Duration::from_secs(1);
        let e = Store::connect(&options).await.expect_err("refused");
        let text = e.chain().to_string();
        assert!(
            text.contains(&format!(
                "cannot connect to 127.0.0.1:{port}: connection refused"
            )),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");
    }
}
