//! The quota guard: what stands between a caller's report that a credential was rejected and a
//! fetch from WeChat. See `docs/ARCHITECTURE.md` ("The quota guard").

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use chrono::{DateTime, TimeDelta, Utc};
use tracing::{debug, warn};

use super::Engine;
use super::config::FORCES_PER_DAY;
use super::slot::{Need, Slot};
use crate::Error;
use crate::model::{App, AppId, AppKind, CredentialRecord, Kind, TokenCheck};
use crate::store::wechat_day;
use crate::wechat::UpstreamError;

/// Who reported a credential as rejected: named in the log line a report WeChat contradicts
/// leaves, and the unit of the stable-token share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// A caller that presented this consumer key (its name).
    Key(String),
    /// A caller admitted by its address, while no consumer keys exist.
    Address(IpAddr),
    /// Code in this process that embeds the engine.
    Embedded,
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reporter::Key(name) => write!(f, "key {name}"),
            Reporter::Address(ip) => write!(f, "address {ip}"),
            Reporter::Embedded => f.write_str("embedded caller"),
        }
    }
}

impl Reporter {
    /// How it is stored in `wetoken_refresh_share.reporter`.
    pub(crate) fn share_id(&self) -> String {
        match self {
            Reporter::Key(name) => format!("key:{name}"),
            Reporter::Address(ip) => format!("addr:{ip}"),
            Reporter::Embedded => "embedded".to_owned(),
        }
    }
}

/// Why a report was answered with the value it named, without a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Declined {
    /// WeChat accepts the access token (asked now, or recently by any replica).
    StillAccepted,
    /// The ticket was refreshed too recently to be replaced on a report.
    TooRecent,
}

impl Declined {
    fn label(self) -> &'static str {
        match self {
            Declined::StillAccepted => "still_accepted",
            Declined::TooRecent => "too_recent",
        }
    }
}

/// The errcode recorded for a scheduled renewal the whole budget refused: the same as the wire
/// crate's `OVER_BUDGET`, so the refusal reads back as [`Error::OverBudget`] on every replica.
pub(crate) const OVER_BUDGET_ERRCODE: i64 = 90430;

impl Engine {
    /// Whether what the database holds already settles a report of the stored value, with no
    /// call to WeChat: a recent check of the token that WeChat passed, or a ticket refreshed
    /// less than `ticket_report_min_age_secs` ago.
    pub(super) fn settled(
        &self,
        kind: Kind,
        record: &CredentialRecord,
        now: DateTime<Utc>,
    ) -> Option<Declined> {
        let config = &self.inner.config;
        if kind == Kind::AccessToken {
            record
                .check
                .filter(|c| c.accepted() && self.fresh(c, now))
                .map(|_| Declined::StillAccepted)
        } else {
            let min_age = TimeDelta::seconds(config.ticket_report_min_age_secs as i64);
            record
                .refresh_time
                .filter(|at| now - *at < min_age)
                .map(|_| Declined::TooRecent)
        }
    }

    /// Whether a check is recent enough to settle reports.
    pub(super) fn fresh(&self, check: &TokenCheck, now: DateTime<Utc>) -> bool {
        now - check.at < TimeDelta::seconds(self.inner.config.report_check_secs as i64)
    }

    /// Counts and logs a report answered with the value it named. One warning a minute per
    /// credential names the reporter; the rest go to debug, and all are counted.
    pub(super) fn declined(
        &self,
        appid: &AppId,
        kind: Kind,
        slot: &Slot,
        by: &Reporter,
        why: Declined,
        now: DateTime<Utc>,
    ) {
        metrics::counter!(
            "wetoken_refresh_reports_total",
            "kind" => kind.name(),
            "outcome" => why.label(),
        )
        .increment(1);
        let now_ms = now.timestamp_millis();
        let last = slot.warned_ms.load(Ordering::Acquire);
        let due = now_ms - last >= 60_000
            && slot
                .warned_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        match why {
            Declined::StillAccepted if due => warn!(
                %appid, %kind, reporter = %by,
                "reported as rejected, but WeChat accepts it: not fetching a new one (a caller \
                 using another app's token?); further reports are counted in \
                 wetoken_refresh_reports_total"
            ),
            Declined::TooRecent if due => warn!(
                %appid, %kind, reporter = %by,
                min_age_secs = self.inner.config.ticket_report_min_age_secs,
                "reported as rejected, but it was refreshed too recently to replace on a report"
            ),
            _ => debug!(%appid, %kind, reporter = %by, outcome = why.label(), "report declined"),
        }
    }

    /// Asks WeChat whether `token`, the app's stored access token, still works.
    pub(super) async fn ask_wechat(&self, app: &App, token: &str) -> Result<(), UpstreamError> {
        let work = app.info.kind == AppKind::Work;
        let call = self.inner.wechat.check_token(token, work);
        let endpoint = if work {
            "getcallbackip"
        } else {
            "get_api_domain_ip"
        };
        self.upstream(endpoint, call).await
    }

    /// Counts one token fetch against the app's budget for today, or refuses it: passive and
    /// forced refreshes stop at the budget less the reserve, anything else at the budget.
    pub(super) async fn claim_budget(
        &self,
        app: &App,
        need: &Need,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let on_demand = need.on_demand();
        let budget = app.info.daily_budget;
        let (limit, what) = if on_demand {
            (
                self.inner.config.on_demand_limit(budget),
                "passive and forced refreshes (the rest is kept for scheduled renewals)",
            )
        } else {
            (budget, "any fetch")
        };
        let appid = &app.info.appid;
        let store = &self.inner.store;
        let day = wechat_day(now);
        if store.claim_fetch(appid, &day, limit).await? {
            return Ok(());
        }
        let used = store.fetches_on(appid, &day).await.unwrap_or(limit);
        metrics::counter!(
            "wetoken_budget_refusals_total",
            "limit" => if on_demand { "reserve" } else { "budget" },
        )
        .increment(1);
        warn!(
            %appid, used, limit, budget,
            "daily budget reached for {what}; not calling WeChat"
        );
        Err(Error::OverBudget(format!(
            "{appid} made {used} token fetches today (WeChat's day, China time) and its budget \
             allows {limit} for {what}; WeChat was not called. The count starts again at \
             midnight China time; `wetoken-cli app quota {appid}` shows WeChat's own count"
        )))
    }

    /// Whether `by` may cause one more forced stable token of `appid` today.
    pub(super) async fn share_allowed(
        &self,
        appid: &AppId,
        by: &Reporter,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let share = self.inner.config.stable_share();
        let used = self
            .inner
            .store
            .share_used(appid, &by.share_id(), &wechat_day(now))
            .await?;
        if used < share {
            return Ok(());
        }
        metrics::counter!("wetoken_stable_share_refusals_total").increment(1);
        warn!(%appid, reporter = %by, used, share, "stable-token share spent; not forcing");
        Err(Error::ForceLimited(format!(
            "{by} has caused {used} of {appid}'s forced stable tokens today, its share of \
             WeChat's {FORCES_PER_DAY} a day; not calling WeChat"
        )))
    }
}
