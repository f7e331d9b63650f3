//! The recent refresh outcomes of each credential (migration 000012): a ring of
//! [`HISTORY_SLOTS`] rows per credential, keyed `(appid, kind, slot)`. A new outcome upserts
//! the slot that is empty or holds the oldest one, so the table never holds more than
//! `HISTORY_SLOTS` rows a credential and nothing deletes to keep it so; an app's rows go with it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::Store;
use super::lease::MESSAGE_MAX;
use crate::Error;
use crate::model::{AppId, Kind};

/// How many outcomes are kept per credential.
pub const HISTORY_SLOTS: i16 = 10;

#[derive(Debug, Clone, Copy, sea_orm::DeriveIden)]
enum H {
    #[sea_orm(iden = "wetoken_refresh_history")]
    Table,
    Appid,
    Kind,
    Slot,
    At,
    Cause,
    Ok,
    Errcode,
    Errmsg,
    Replica,
}

/// The columns of an outcome, which a new one overwrites in its slot.
const OUTCOME: [H; 6] = [H::At, H::Cause, H::Ok, H::Errcode, H::Errmsg, H::Replica];

/// What asked for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCause {
    /// A caller asked for a value none was stored for, or the stored one had run out.
    Request,
    /// The scheduler renewed it ahead of its expiry.
    Scheduled,
    /// A caller reported the value rejected (a passive refresh).
    Passive,
    /// WeChat rejected it in answer to a call of wetoken's.
    Rejected,
    /// An operator forced it (`/wechat/app/refresh`, the status page's button).
    Forced,
}

impl RefreshCause {
    /// Its stored and shown name.
    pub fn name(self) -> &'static str {
        match self {
            RefreshCause::Request => "request",
            RefreshCause::Scheduled => "scheduled",
            RefreshCause::Passive => "passive",
            RefreshCause::Rejected => "rejected",
            RefreshCause::Forced => "forced",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            RefreshCause::Request,
            RefreshCause::Scheduled,
            RefreshCause::Passive,
            RefreshCause::Rejected,
            RefreshCause::Forced,
        ]
        .into_iter()
        .find(|c| c.name() == text)
    }
}

/// One refresh outcome, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// Which credential.
    pub kind: Kind,
    /// When the outcome was known.
    pub at: DateTime<Utc>,
    /// What asked for the refresh; `None` for a name this version does not know.
    pub cause: Option<RefreshCause>,
    /// Whether a new value was stored.
    pub ok: bool,
    /// WeChat's errcode, when WeChat answered a failure (or wetoken's own, 90430, for a budget
    /// refusal).
    pub errcode: Option<i64>,
    /// `success`, or the (sanitised) message the credential row records.
    pub message: String,
    /// Which replica refreshed.
    pub replica: String,
}

#[derive(FromQueryResult)]
struct Row {
    kind: String,
    at: DateTime<Utc>,
    cause: String,
    ok: bool,
    errcode: Option<i64>,
    errmsg: String,
    replica: String,
}

impl Store {
    /// Keeps `outcome` of `appid`'s credential in its ring: reads the credential's few slots
    /// (a primary-key range), then upserts the empty or oldest one.
    pub(crate) async fn record_outcome(
        &self,
        appid: &AppId,
        outcome: &RefreshOutcome,
    ) -> Result<(), Error> {
        let select = Query::select()
            .columns([H::Slot, H::At])
            .from(H::Table)
            .and_where(Expr::col(H::Appid).eq(appid.as_str()))
            .and_where(Expr::col(H::Kind).eq(outcome.kind.name()))
            .limit(HISTORY_SLOTS as u64)
            .to_owned();
        #[derive(FromQueryResult)]
        struct Used {
            slot: i16,
            at: DateTime<Utc>,
        }
        let mut used = Vec::new();
        for row in self.db.query_all(&select).await? {
            used.push(Used::from_query_result(&row, "")?);
        }
        let slot = (0..HISTORY_SLOTS)
            .find(|s| !used.iter().any(|u| u.slot == *s))
            .or_else(|| used.iter().min_by_key(|u| (u.at, u.slot)).map(|u| u.slot))
            .unwrap_or(0);
        let message: String = outcome.message.chars().take(MESSAGE_MAX).collect();
        let replica: String = outcome.replica.chars().take(128).collect();
        let cause = outcome.cause.map_or("request", RefreshCause::name);
        let insert = Query::insert()
            .into_table(H::Table)
            .columns([H::Appid, H::Kind, H::Slot].into_iter().chain(OUTCOME))
            .values_panic([
                appid.as_str().into(),
                outcome.kind.name().into(),
                slot.into(),
                // In `OUTCOME`'s order.
                outcome.at.into(),
                cause.into(),
                outcome.ok.into(),
                outcome.errcode.into(),
                message.into(),
                replica.into(),
            ])
            .on_conflict(
                OnConflict::columns([H::Appid, H::Kind, H::Slot])
                    .update_columns(OUTCOME)
                    .to_owned(),
            )
            .to_owned();
        self.db.execute(&insert).await?;
        Ok(())
    }

    /// The outcomes kept for `appid`'s credentials, newest first: at most
    /// `HISTORY_SLOTS` a credential, one primary-key range.
    pub async fn refresh_history(&self, appid: &AppId) -> Result<Vec<RefreshOutcome>, Error> {
        let select = Query::select()
            .columns([H::Kind].into_iter().chain(OUTCOME))
            .from(H::Table)
            .and_where(Expr::col(H::Appid).eq(appid.as_str()))
            .limit(HISTORY_SLOTS as u64 * Kind::ALL.len() as u64)
            .to_owned();
        let mut out = Vec::new();
        for row in self.db.query_all(&select).await? {
            let row = Row::from_query_result(&row, "")?;
            let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == row.kind) else {
                continue;
            };
            out.push(RefreshOutcome {
                kind,
                at: row.at,
                cause: RefreshCause::parse(&row.cause),
                ok: row.ok,
                errcode: row.errcode,
                message: row.errmsg,
                replica: row.replica,
            });
        }
        // Newest first; sorted here, as the rows are a handful.
        out.sort_by_key(|h| std::cmp::Reverse(h.at));
        Ok(out)
    }

    /// Deletes `appid`'s outcomes, with the app.
    pub(crate) fn forget_history(appid: &AppId) -> sea_orm::sea_query::DeleteStatement {
        Query::delete()
            .from_table(H::Table)
            .and_where(Expr::col(H::Appid).eq(appid.as_str()))
            .to_owned()
    }
}
