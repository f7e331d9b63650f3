//! The one error type of the engine.

use std::fmt;
use std::sync::Arc;

use sea_orm::DbErr;

use crate::model::{AppId, Kind};

/// Why the engine could not do what was asked.
///
/// The HTTP server maps each variant to a status and an `errcode` in exactly one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The input is malformed; the text says how.
    #[error("{0}")]
    InvalidInput(String),
    /// No app with that appid is registered.
    #[error("unknown app {0}")]
    UnknownApp(AppId),
    /// An app with that appid already exists; nothing was changed.
    #[error("app {0} already exists")]
    DuplicateApp(AppId),
    /// WeChat refused the refresh; its errcode and errmsg as it sent them.
    #[error("WeChat refused: errcode {errcode}: {errmsg}")]
    Refused {
        /// WeChat's code.
        errcode: i64,
        /// WeChat's message.
        errmsg: String,
    },
    /// An earlier refresh failed with an error that retrying cannot cure, so wetoken no longer calls
    /// WeChat for this credential until the app's settings change.
    #[error(
        "refreshing {kind} of {appid} is stopped: WeChat answered {message}; update the app's settings to try again"
    )]
    Halted {
        /// The app.
        appid: AppId,
        /// Which credential.
        kind: Kind,
        /// WeChat's code, as recorded; `None` for a halt recorded before wetoken kept the code.
        errcode: Option<i64>,
        /// The recorded outcome, `"<errcode>: <errmsg>"`.
        message: String,
    },
    /// A third-party platform's component token cannot be fetched: no verify ticket WeChat
    /// still accepts has been pushed to it. WeChat was not called.
    #[error("{0}")]
    NoVerifyTicket(String),
    /// The account withdrew its authorization of its third-party platform: nothing is served or
    /// refreshed for it until it authorizes again.
    #[error(
        "{appid} withdrew its authorization of the third-party platform {component}; nothing is served for it until it authorizes again"
    )]
    Revoked {
        /// The authorizer.
        appid: AppId,
        /// Its component.
        component: AppId,
    },
    /// No unexpired credential is stored, and the caller asked not to fetch one.
    #[error("no valid {kind} of {appid} is stored")]
    NotStored {
        /// The app.
        appid: AppId,
        /// Which credential.
        kind: Kind,
    },
    /// A forced stable token was asked for beyond WeChat's limits (20 a day, 30 s apart); WeChat
    /// was not called.
    #[error("{0}")]
    ForceLimited(String),
    /// The app's daily budget of token fetches is spent for this WeChat day (it ends at midnight
    /// China time), or what is left of it is kept for scheduled renewals; WeChat was not called.
    /// The text says which, with the counts.
    #[error("{0}")]
    OverBudget(String),
    /// WeChat could not be reached or failed, and no valid credential is held.
    #[error("{0}")]
    Unavailable(String),
    /// The database could not be reached. The driver's error is the source; the text says only
    /// this, so that an error chain (`{:#}`) names the cause once.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] DbCause),
    /// The database failed otherwise; the driver's error is the source.
    #[error("database error")]
    Database(#[source] DbCause),
    /// The database answered, but not with what wetoken's schema promises: a table is missing, or
    /// a stored value (other than an app's settings) is malformed. The text says which.
    #[error("{0}")]
    Schema(String),
    /// An app's stored settings cannot work: a WeCom app without its corpid, a kind or token mode
    /// wetoken does not know. Updating the app fixes it.
    #[error("app {appid} is misconfigured: {problem}")]
    AppConfig {
        /// The app, as stored.
        appid: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The task refreshing a credential panicked: a bug. Its lease lapses after `lease_ms`, and
    /// the next request tries again.
    #[error("refreshing {kind} of {appid} panicked: {panic}")]
    RefreshPanicked {
        /// The app.
        appid: AppId,
        /// Which credential.
        kind: Kind,
        /// The panic's message, when it had one.
        panic: String,
    },
    /// A stored secret cannot be read: it was altered, or is encrypted under a master key that is
    /// not configured. The text names the app and column, never the value.
    #[error("{0}")]
    Secret(String),
}

/// The database driver's error, as an [`Error`]'s source. sea-orm's text already ends with the
/// driver's own cause (`Connection Error: <cause>`) and then offers that cause as its source
/// too, so an error chain (`{:#}`) printed it twice: this source ends the chain with the text.
#[derive(Debug, Clone)]
pub struct DbCause(pub Arc<DbErr>);

impl fmt::Display for DbCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbCause {}

impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        match e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => {
                Error::DatabaseUnavailable(DbCause(Arc::new(e)))
            }
            e => Error::Database(DbCause(Arc::new(e))),
        }
    }
}

impl Error {
    /// The error followed by its sources, `database unavailable: <the driver's text>`: what a
    /// log line should carry, since [`Display`](fmt::Display) alone names no source.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

/// An error and its sources, joined by `: `; see [`Error::chain`].
pub struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_keeps_its_source() {
        let e = Error::from(DbErr::Custom("disk full".into()));
        assert!(matches!(e, Error::Database(_)));
        assert_eq!(e.to_string(), "database error");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<DbCause>().is_some(), "{source:?}");
        assert_eq!(
            e.chain().to_string(),
            "database error: Custom Error: disk full"
        );
    }

    #[test]
    fn a_connection_error_names_its_cause_once() {
        let e = Error::from(DbErr::Conn(sea_orm::RuntimeErr::Internal(
            "connection refused".into(),
        )));
        let chain = e.chain().to_string();
        assert_eq!(chain.matches("connection refused").count(), 1, "{chain}");
        let mut sources = 0;
        let mut next = std::error::Error::source(&e);
        while let Some(s) = next {
            sources += 1;
            next = s.source();
        }
        assert_eq!(sources, 1);
    }
}
