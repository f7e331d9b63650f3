//! The credential tables, `wechat_access_token`, `wechat_jsapi_ticket` and `wechat_card_ticket`:
//! one shape, so one [`Column`] enum and one [`Row`], with the table taken from [`Kind`].
//!
//! Not sea-orm entities: an entity is bound to one table, and these three are reached through one
//! set of sea-query statements in [`crate::store`]. The columns are those of migrations 000001,
//! 000002, 000003 (the card ticket table, and the count of forced stable tokens, on
//! `wechat_access_token` only), 000008 (`errcode`) and 000009 (the shared token check).

use chrono::{DateTime, Utc};
use sea_orm::{DeriveIden, FromQueryResult};

use crate::model::Kind;

/// The three credential tables.
#[derive(Debug, Clone, Copy, DeriveIden)]
pub enum Table {
    /// `wechat_access_token`.
    WechatAccessToken,
    /// `wechat_jsapi_ticket`.
    WechatJsapiTicket,
    /// `wechat_card_ticket`.
    WechatCardTicket,
}

/// The columns of the credential tables.
#[derive(Debug, Clone, Copy, DeriveIden)]
pub enum Column {
    /// The app; the primary key, referencing `wechat_app_info`.
    Appid,
    /// The value, in `wechat_access_token`.
    AccessToken,
    /// The value, in the ticket tables.
    Ticket,
    /// When the value expires, an absolute UTC instant.
    ExpiresAt,
    /// The outcome of the last refresh: `success`, WeChat's `errcode: errmsg`, or what else
    /// happened.
    Message,
    /// WeChat's code for that outcome: 0 for a success, NULL when no WeChat answer is behind it
    /// (and in rows from before migration 000008).
    Errcode,
    /// Whether refreshing stopped on an error retrying cannot cure.
    Halted,
    /// When the last refresh was attempted.
    RefreshTime,
    /// When the row last changed.
    UpdateTime,
    /// How many values were ever stored: the fencing token of the next write.
    Version,
    /// Who holds the refresh lease.
    LeaseOwner,
    /// Until when, in Unix milliseconds of the database's clock.
    LeaseUntil,
    /// Failed refreshes in a row.
    Failures,
    /// No replica calls WeChat before then.
    RetryAt,
    /// `wechat_access_token` only: the (China) day `force_count` counts.
    ForceDay,
    /// `wechat_access_token` only: stable tokens forced on `force_day`.
    ForceCount,
    /// `wechat_access_token` only: when the last stable token was forced.
    ForcedAt,
    /// The `version` WeChat was last asked about (migration 000009).
    CheckVersion,
    /// When it was asked.
    CheckedAt,
    /// WeChat's answer: 0 when the value worked, else its errcode.
    CheckErrcode,
    /// When the slow out-of-band check next looks at the value; NULL when none is scheduled.
    CheckDueAt,
    /// How many values were found dead before their time (replaced outside wetoken).
    ReplacedCount,
    /// When the scheduler should renew the stored value; NULL when wetoken never dated it
    /// (migration 000010).
    RenewAt,
}

/// The names a credential query gives what it computes or renames.
#[derive(Debug, Clone, Copy, DeriveIden)]
pub enum Selected {
    /// The value column of the kind asked for ([`Column::AccessToken`] or [`Column::Ticket`]).
    Value,
    /// The database's clock, in Unix milliseconds.
    DbNow,
}

impl Kind {
    /// The table holding this kind of credential.
    pub(crate) fn table(self) -> Table {
        match self {
            Kind::AccessToken => Table::WechatAccessToken,
            Kind::JsapiTicket => Table::WechatJsapiTicket,
            Kind::CardTicket => Table::WechatCardTicket,
        }
    }

    /// The column holding its value.
    pub(crate) fn value_column(self) -> Column {
        match self {
            Kind::AccessToken => Column::AccessToken,
            Kind::JsapiTicket | Kind::CardTicket => Column::Ticket,
        }
    }
}

/// A credential row as [`crate::Store::credential`] reads it, with the value under
/// [`Selected::Value`] and the database's clock under [`Selected::DbNow`].
#[derive(Debug, Clone, FromQueryResult)]
pub struct Row {
    /// The value, if one was ever stored.
    pub value: Option<String>,
    /// Its expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The outcome of the last refresh.
    pub message: String,
    /// WeChat's code for it, if WeChat answered.
    pub errcode: Option<i64>,
    /// Whether refreshing stopped.
    pub halted: bool,
    /// When the last refresh was attempted.
    pub refresh_time: Option<DateTime<Utc>>,
    /// The fencing version.
    pub version: i64,
    /// Failed refreshes in a row.
    pub failures: i32,
    /// The shared backoff.
    pub retry_at: Option<DateTime<Utc>>,
    /// The lease's holder.
    pub lease_owner: Option<String>,
    /// The lease's end, on the database's clock.
    pub lease_until: Option<i64>,
    /// The version WeChat was last asked about.
    pub check_version: Option<i64>,
    /// When.
    pub checked_at: Option<DateTime<Utc>>,
    /// WeChat's answer.
    pub check_errcode: Option<i64>,
    /// Values found dead before their time.
    pub replaced_count: i32,
    /// The database's clock when the row was read.
    pub db_now: i64,
}

/// The columns [`Row`] reads as they are stored (the value and the clock are selected under
/// [`Selected`] names).
pub(crate) const ROW_COLUMNS: [Column; 14] = [
    Column::ExpiresAt,
    Column::Message,
    Column::Errcode,
    Column::Halted,
    Column::RefreshTime,
    Column::Version,
    Column::Failures,
    Column::RetryAt,
    Column::LeaseOwner,
    Column::LeaseUntil,
    Column::CheckVersion,
    Column::CheckedAt,
    Column::CheckErrcode,
    Column::ReplacedCount,
];
