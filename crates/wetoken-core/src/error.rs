//! The one error type of the engine.

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
        /// The recorded outcome, `"<errcode>: <errmsg>"`.
        message: String,
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
    /// WeChat could not be reached or failed, and no valid credential is held.
    #[error("{0}")]
    Unavailable(String),
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The database failed otherwise.
    #[error("database error: {0}")]
    Database(String),
    /// A stored secret cannot be read: it was altered, or is encrypted under a master key that is
    /// not configured. The text names the app and column, never the value.
    #[error("{0}")]
    Secret(String),
}

impl Error {
    /// WeChat's errcode behind a [`Error::Halted`], read back from the recorded message.
    pub fn halted_errcode(&self) -> Option<i64> {
        match self {
            Error::Halted { message, .. } => message.split_once(':')?.0.trim().parse().ok(),
            _ => None,
        }
    }
}
