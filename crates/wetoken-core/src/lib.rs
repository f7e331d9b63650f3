//! wetoken's token engine.
//!
//! WeChat's `access_token` and `jsapi_ticket` live two hours, and every fetch of a new token ends
//! the previous one five minutes later.
//! Several services fetching tokens for one app therefore break each other.
//! This crate is the one place that fetches: it keeps every app's credentials in a database and an
//! in-process cache, refreshes them before they expire, and hands them out.
//!
//! - [`Engine::get`] answers from memory when it can, then from the database, then from WeChat.
//!   Concurrent requests for a cold credential share one upstream call (single-flight per app and
//!   [`Kind`]).
//! - [`Engine::refresh`] is the passive refresh: a caller whose WeChat call rejected a credential
//!   names it, and a new one is fetched only if it is still the current one.
//! - [`Engine::run_scheduler`] renews every app's credentials ahead of expiry, jittered and with
//!   bounded concurrency, so callers do not wait on WeChat.
//! - [`Store`] is the database (SQLite, MySQL/MariaDB or PostgreSQL through sea-orm) and
//!   [`WeChat`] the upstream client.
//!
//! Time comes from a [`Clock`], so expiry logic is tested by moving a clock rather than waiting.
//!
//! This crate knows nothing about HTTP serving or command lines: `wetoken-server` and `wetoken-cli`
//! put it to use.
#![deny(missing_docs)]

pub mod clock;
pub mod crypto;
mod engine;
pub mod entity;
mod error;
mod facade;
mod install;
pub mod keys;
pub mod model;
pub mod msgcrypt;
pub mod secrets;
pub mod sign;
pub mod store;
pub mod takeover;
pub mod wechat;
mod wxcode;

pub use clock::{Clock, ManualClock, SystemClock};
pub use crypto::{KeySources, Keyring};
pub use engine::{
    AppStatus, Engine, EngineConfig, JssdkConfig, REFRESH_TOKEN_INVALID, Reporter,
    UPSTREAM_ENDPOINTS, VERIFY_TICKET_LIFETIME,
};
pub use error::{Chain, DbCause, Error};
pub use facade::AppPage;
pub use install::{InstallPlan, Installed, TABLES};
pub use keys::{ConsumerKey, KeyTable, NewConsumerKey, RefreshLimit};
pub use model::{
    App, AppId, AppInfo, AppKind, AppUpdate, Credential, CredentialRecord, GoFields, Kind, NewApp,
    Secret, TokenCheck, TokenMode, WorkIds,
};
pub use msgcrypt::{MsgCrypt, MsgCryptError};
pub use secrets::{Reseal, ResealReport, SecretsReport};
pub use store::{
    AppFilter, CredentialState, Cursor, DatabaseOptions, HISTORY_SLOTS, PAGE_DEFAULT, PAGE_MAX,
    RefreshCause, RefreshOutcome, StateTotals, Store, Troubled, VerifyTicket, page_limit,
};
pub use takeover::{GoZone, Takeover};
pub use wechat::{UpstreamError, WeChat, WeChatOptions};
pub use wxcode::WxCode;

/// Entry points for the fuzz targets in `fuzz/`, which property tests also run. Not an API.
#[doc(hidden)]
pub mod fuzz {
    /// The `msgcrypt` target: `data` as a push body, a ciphertext, inner XML and a message to
    /// seal; see `msgcrypt::fuzz` for what must hold.
    pub fn msgcrypt(data: &[u8]) {
        crate::msgcrypt::fuzz(data);
    }
}
