//! Listings at 100,000 apps (issue #15): a page of apps after a cursor, filtered by the state of
//! their credentials, their kind and an appid prefix; the totals by state; the credentials in
//! trouble. Each is a few indexed queries whatever the number of apps:
//!
//! - a page is keyset-paged on `appid` (`appid > :cursor ORDER BY appid LIMIT n + 1`), so page
//!   1,000 costs what page 1 does;
//! - a state filter reads each credential table's `(state, appid)` index (migration 000011),
//!   each branch stopped at the page's size, and the database merges the branches in its own
//!   order (a merge in Rust would disagree with a case-insensitive MariaDB collation);
//! - a kind filter reads `wechat_app_info`'s `(kind, appid)` index;
//! - the totals are one `GROUP BY` a credential table.
//!
//! `state` is the stored, clock-free part (`halted`, `out_of_budget`, `failing`, `pending`,
//! `live`); a live credential is `renewing` once its `renew_at` has come, else `healthy`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Asterisk, Expr, ExprTrait, JoinType, LikeExpr, Order, Query, SelectStatement, UnionType,
};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::Store;
use crate::Error;
use crate::entity::app_info::{self, Column as A};
use crate::entity::credential::Column as C;
use crate::model::{AppId, AppInfo, AppKind, CredentialRecord, Kind, truncate_for_message};

/// What state a credential is in, as the listings filter by and the metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialState {
    /// A value is stored and its renewal has not come yet.
    Healthy,
    /// A value is stored and the scheduler should be renewing it now (`renew_at` has come).
    Renewing,
    /// No value fetched yet, and no refresh failed.
    Pending,
    /// The last refresh failed; refreshing goes on after a backoff.
    Failing,
    /// The last scheduled fetch was refused by the app's daily budget; no replica tries again
    /// before the WeChat day ends.
    OutOfBudget,
    /// Refreshing stopped on an error retrying cannot cure, until the app's settings change.
    Halted,
}

impl CredentialRecord {
    /// The record's state, by the rules of the generated `state` column (migration 000011),
    /// `due` telling whether its renewal has come: for code that holds a record rather than a
    /// listing row.
    pub fn state(&self, due: bool) -> CredentialState {
        if self.halted {
            CredentialState::Halted
        } else if self.errcode == Some(crate::engine::OVER_BUDGET_ERRCODE) {
            CredentialState::OutOfBudget
        } else if self.failures > 0 {
            CredentialState::Failing
        } else if self.credential.as_ref().is_none_or(|c| c.value.is_empty()) {
            CredentialState::Pending
        } else if due {
            CredentialState::Renewing
        } else {
            CredentialState::Healthy
        }
    }
}

impl CredentialState {
    /// Every state, the worst last.
    pub const ALL: [CredentialState; 6] = [
        CredentialState::Healthy,
        CredentialState::Renewing,
        CredentialState::Pending,
        CredentialState::Failing,
        CredentialState::OutOfBudget,
        CredentialState::Halted,
    ];

    /// The states an operator must act on (or wait out): what per-app metrics show by default.
    pub const TROUBLE: [CredentialState; 3] = [
        CredentialState::Halted,
        CredentialState::OutOfBudget,
        CredentialState::Failing,
    ];

    /// Its name in listings, filters and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CredentialState::Healthy => "healthy",
            CredentialState::Renewing => "renewing",
            CredentialState::Pending => "pending",
            CredentialState::Failing => "failing",
            CredentialState::OutOfBudget => "out_of_budget",
            CredentialState::Halted => "halted",
        }
    }

    /// Parses a name [`CredentialState::name`] gives (`out-of-budget` too).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown state {:?}: expected one of {}",
                    truncate_for_message(&text),
                    Self::ALL.map(Self::name).join(", ")
                ))
            })
    }

    /// The value of the generated `state` column (migration 000011) it is read from.
    fn stored(self) -> &'static str {
        match self {
            CredentialState::Healthy | CredentialState::Renewing => "live",
            CredentialState::Pending => "pending",
            CredentialState::Failing => "failing",
            CredentialState::OutOfBudget => "out_of_budget",
            CredentialState::Halted => "halted",
        }
    }

    /// The state a stored `state` is in, `due` telling whether its `renew_at` has come.
    fn from_stored(stored: &str, due: bool) -> Option<Self> {
        Some(match stored {
            "live" if due => CredentialState::Renewing,
            "live" => CredentialState::Healthy,
            "pending" => CredentialState::Pending,
            "failing" => CredentialState::Failing,
            "out_of_budget" => CredentialState::OutOfBudget,
            "halted" => CredentialState::Halted,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// Which apps a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppFilter {
    /// Apps with at least one credential in this state.
    pub state: Option<CredentialState>,
    /// Apps of this kind.
    pub kind: Option<AppKind>,
    /// Apps whose appid starts with this (checked with [`AppFilter::prefix`]).
    pub prefix: Option<String>,
    /// The authorizers of this third-party platform: an index range on `wechat_app_info`'s
    /// `(component_appid, appid)` (migration 000014).
    pub component: Option<AppId>,
    /// Authorizers whose authorization was withdrawn (`true`) or stands (`false`); every app
    /// when `None`. Checked on the rows the other conditions' range reads.
    pub revoked: Option<bool>,
    /// Order the apps by their worst credential first (halted, out of budget, failing, then
    /// the rest), by appid within each: what the status page shows. Without a state filter
    /// only; listings with one are in appid order.
    pub worst_first: bool,
}

impl AppFilter {
    /// Checks an appid prefix: 1 to 64 of the characters an appid is made of.
    pub fn prefix(text: &str) -> Result<String, Error> {
        let ok = !text.is_empty()
            && text.len() <= AppId::MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(text.to_owned())
        } else {
            Err(Error::InvalidInput(format!(
                "prefix {:?} is not the start of an appid: 1 to 64 of A-Z a-z 0-9 _ . -",
                truncate_for_message(text)
            )))
        }
    }
}

/// Where a page starts: after the appid it names, and in a worst-first listing within the
/// rank it names. Opaque to callers (`c1` and the appid in hex; `c2`, the rank's digit and the
/// appid in hex), so that what it holds may change without breaking them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    appid: AppId,
    /// 0 in appid order; 1 to [`RANKS`] in a worst-first listing.
    rank: u8,
}

/// The ranks of a worst-first listing: an app with a halted credential, then out of budget,
/// then failing, then every other app.
const RANKS: u8 = 4;

impl Cursor {
    /// The cursor of the page after `appid`.
    pub fn after(appid: &AppId) -> Self {
        Cursor {
            appid: appid.clone(),
            rank: 0,
        }
    }

    /// The appid the page starts after.
    pub fn appid(&self) -> &AppId {
        &self.appid
    }

    /// Its text form, as listings hand it out.
    pub fn encode(&self) -> String {
        let mut out = if self.rank == 0 {
            String::from("c1")
        } else {
            format!("c2{}", self.rank)
        };
        for b in self.appid.as_str().bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Reads a cursor a listing handed out.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidInput(format!(
                "cursor {:?} is not one a listing handed out; start again without one",
                truncate_for_message(text)
            ))
        };
        let (rank, hex) = match text.strip_prefix("c2") {
            Some(rest) => {
                let rank = rest.bytes().next().map_or(0, |b| b.wrapping_sub(b'0'));
                if !(1..=RANKS).contains(&rank) {
                    return Err(bad());
                }
                (rank, &rest[1..])
            }
            None => (0, text.strip_prefix("c1").ok_or_else(bad)?),
        };
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let appid = String::from_utf8(bytes).map_err(|_| bad())?;
        let appid = AppId::parse(&appid).map_err(|_| bad())?;
        Ok(Cursor { appid, rank })
    }
}

/// Up to this many renewing values in a table, a page of renewing apps reads them all through
/// the `(state, renew_at)` index rather than walking the live ones in appid order.
const FEW_RENEWING: u64 = 10_000;

/// A page's size: 1 to [`PAGE_MAX`], [`PAGE_DEFAULT`] when not given.
pub const PAGE_DEFAULT: u64 = 100;
/// The largest page.
pub const PAGE_MAX: u64 = 1000;

/// Checks a page size given as text.
pub fn page_limit(text: Option<&str>) -> Result<u64, Error> {
    let Some(text) = text else {
        return Ok(PAGE_DEFAULT);
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=PAGE_MAX).contains(n))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "limit must be a whole number from 1 to {PAGE_MAX}, not {:?}",
                truncate_for_message(text)
            ))
        })
}

/// How many credentials are in each state, by kind, and the earliest expiry among those still
/// served (healthy, renewing, failing, out of budget).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateTotals {
    counts: [[u64; 6]; 3],
    earliest: [Option<DateTime<Utc>>; 3],
}

impl StateTotals {
    /// How many `kind` credentials are in `state`.
    pub fn count(&self, kind: Kind, state: CredentialState) -> u64 {
        self.counts[kind.index()][state.index()]
    }

    /// How many credentials of any kind are in `state`.
    pub fn total(&self, state: CredentialState) -> u64 {
        Kind::ALL.iter().map(|k| self.count(*k, state)).sum()
    }

    /// The earliest expiry of a `kind` value still served, if any is stored.
    pub fn earliest_expiry(&self, kind: Kind) -> Option<DateTime<Utc>> {
        self.earliest[kind.index()]
    }
}

/// A credential in trouble, for the per-app metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Troubled {
    /// The app.
    pub appid: AppId,
    /// Which credential.
    pub kind: Kind,
    /// Its state: one of [`CredentialState::TROUBLE`].
    pub state: CredentialState,
    /// When its stored value expires, if one is stored.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, sea_orm::DeriveIden)]
enum Listed {
    State,
    Count,
    Earliest,
    Appid,
}

/// How each credential table's branch of a state filter is read: whole, for a table with few
/// renewing values; leaving out the apps with a credential in one of `worse` (stored states).
struct Branches<'a> {
    few_renewing: [bool; 3],
    worse: &'a [&'static str],
}

/// `renew_at` has come: a live value is renewing.
fn due(now: DateTime<Utc>) -> Expr {
    Expr::col(C::RenewAt).lte(now)
}

impl Store {
    /// A page of apps after `after` matching `filter`, ordered by appid, at most `limit`; and
    /// whether more follow.
    pub async fn page_of_apps(
        &self,
        filter: &AppFilter,
        after: Option<&AppId>,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<(Vec<AppInfo>, bool), Error> {
        self.page_in_rank(filter, after, limit, now, &[]).await
    }

    /// A page of a worst-first listing ([`AppFilter::worst_first`]) after `after`: the apps
    /// with a halted credential, then those with one out of budget (and none halted), then
    /// failing, then every other app, by appid within each rank; and the cursor of the next
    /// page, if one follows. One [`Store::page_of_apps`] query per rank the page reaches, each
    /// an index range stopped at the page's size; an app in a worse rank is left out of a
    /// better one by a primary-key probe of each credential table (`NOT EXISTS`), so a rank's
    /// range reads past at most the apps of the ranks before it.
    pub async fn page_worst_first(
        &self,
        filter: &AppFilter,
        after: Option<&Cursor>,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<(Vec<AppInfo>, Option<Cursor>), Error> {
        let (first, mut after) = match after {
            None => (1, None),
            Some(c) if c.rank >= 1 => (c.rank, Some(c.appid.clone())),
            Some(c) => {
                return Err(Error::InvalidInput(format!(
                    "cursor {:?} is from a listing in appid order, not worst first; start again \
                     without one",
                    truncate_for_message(&c.encode())
                )));
            }
        };
        let mut out: Vec<AppInfo> = Vec::new();
        let mut last: Option<(u8, AppId)> = after.clone().map(|a| (first, a));
        for rank in first..=RANKS {
            let worse: Vec<&'static str> = CredentialState::TROUBLE[..usize::from(rank - 1)]
                .iter()
                .map(|s| s.stored())
                .collect();
            let rank_filter = AppFilter {
                state: CredentialState::TROUBLE.get(usize::from(rank - 1)).copied(),
                worst_first: false,
                ..filter.clone()
            };
            // Once the page is full, a query of no rows (it reads one) says whether more follow.
            let left = limit.saturating_sub(out.len() as u64);
            let (apps, more) = self
                .page_in_rank(&rank_filter, after.as_ref(), left, now, &worse)
                .await?;
            if let Some(app) = apps.last() {
                last = Some((rank, app.appid.clone()));
            }
            out.extend(apps);
            if more {
                let next = match last {
                    Some((rank, appid)) => Cursor { appid, rank },
                    // Nothing shown yet and nothing left on the page: only with a limit of 0.
                    None => return Ok((out, None)),
                };
                return Ok((out, Some(next)));
            }
            after = None;
        }
        Ok((out, None))
    }

    /// [`Store::page_of_apps`], leaving out the apps with a credential in a stored state of
    /// `worse`.
    async fn page_in_rank(
        &self,
        filter: &AppFilter,
        after: Option<&AppId>,
        limit: u64,
        now: DateTime<Utc>,
        worse: &[&'static str],
    ) -> Result<(Vec<AppInfo>, bool), Error> {
        let app = app_info::Entity;
        let mut select = Query::select()
            .column((app, Asterisk))
            .from(app)
            .order_by((app, A::Appid), Order::Asc)
            .limit(limit.saturating_add(1))
            .to_owned();
        if let Some(after) = after {
            select.and_where(Expr::col((app, A::Appid)).gt(after.as_str()));
        }
        if let Some(kind) = filter.kind {
            select.and_where(Expr::col((app, A::Kind)).eq(kind.as_str()));
        }
        if let Some(prefix) = &filter.prefix {
            select.cond_where(prefix_condition(prefix, (app, A::Appid)));
        }
        // `component_appid = :c AND appid > :cursor ORDER BY appid LIMIT n + 1` is one range of
        // the `(component_appid, appid)` index, read in its order and stopped after n + 1 rows:
        // page 1,000 of a platform's 100,000 authorizers costs what page 1 does.
        select.cond_where(app_conditions(filter, app));
        if let Some(state) = filter.state {
            let mut few_renewing = [false; 3];
            if state == CredentialState::Renewing {
                for kind in Kind::ALL {
                    few_renewing[kind.index()] =
                        self.count_renewing(kind, now).await? <= FEW_RENEWING;
                }
            }
            let branches = Branches {
                few_renewing,
                worse,
            };
            let Some(matching) = self.with_state(filter, state, after, limit, now, branches) else {
                return Ok((Vec::new(), false));
            };
            let m = Alias::new("m");
            select.join_subquery(
                JoinType::InnerJoin,
                matching,
                m.clone(),
                Expr::col((m, Listed::Appid)).equals((app, A::Appid)),
            );
        } else if !worse.is_empty() {
            select.and_where(none_in(worse, (app, A::Appid)));
        }
        let rows = self.db.query_all(&select).await?;
        let more = rows.len() as u64 > limit;
        rows.iter()
            .take(limit as usize)
            .map(|row| super::apps::info_from_row(&app_info::Model::from_query_result(row, "")?))
            .collect::<Result<Vec<_>, _>>()
            .map(|apps| (apps, more))
    }

    /// The appids, at most `limit + 1` after `after`, with a credential in `state` that matches
    /// `filter`: one branch per credential table the filter's kind has, each an index range on
    /// `(state, appid)` stopped at the page's size. `None` when no table can match.
    ///
    /// Renewing values are usually few, and an ordered walk of the live ones would read them all
    /// to find none: a table with at most [`FEW_RENEWING`] of them is read through its
    /// `(state, renew_at)` range instead, whole (`few_renewing`).
    fn with_state(
        &self,
        filter: &AppFilter,
        state: CredentialState,
        after: Option<&AppId>,
        limit: u64,
        now: DateTime<Utc>,
        Branches {
            few_renewing,
            worse,
        }: Branches<'_>,
    ) -> Option<SelectStatement> {
        let mut union: Option<SelectStatement> = None;
        for (n, kind) in Kind::ALL.into_iter().enumerate() {
            if filter.kind.is_some_and(|k| !k.has(kind)) {
                continue;
            }
            let table = kind.table();
            let mut inner = Query::select()
                .column((table, C::Appid))
                .from(table)
                .and_where(Expr::col((table, C::State)).eq(state.stored()))
                .to_owned();
            if !few_renewing[n] {
                inner
                    .order_by((table, C::Appid), Order::Asc)
                    .limit(limit.saturating_add(1));
            }
            match state {
                CredentialState::Renewing => {
                    inner.and_where(due(now));
                }
                CredentialState::Healthy => {
                    inner.cond_where(
                        Expr::col(C::RenewAt)
                            .is_null()
                            .or(Expr::col(C::RenewAt).gt(now)),
                    );
                }
                _ => {}
            }
            if let Some(after) = after {
                inner.and_where(Expr::col((table, C::Appid)).gt(after.as_str()));
            }
            if let Some(prefix) = &filter.prefix {
                inner.cond_where(prefix_condition(prefix, (table, C::Appid)));
            }
            if !worse.is_empty() {
                inner.and_where(none_in(worse, (table, C::Appid)));
            }
            if filter.kind.is_some() || filter.component.is_some() || filter.revoked.is_some() {
                let app = app_info::Entity;
                inner
                    .join(
                        JoinType::InnerJoin,
                        app,
                        Expr::col((app, A::Appid)).equals((table, C::Appid)),
                    )
                    .cond_where(app_conditions(filter, app));
                if let Some(kind) = filter.kind {
                    inner.and_where(Expr::col((app, A::Kind)).eq(kind.as_str()));
                }
            }
            let branch = Query::select()
                .column(Listed::Appid)
                .from_subquery(inner, Alias::new(format!("s{n}")))
                .to_owned();
            match &mut union {
                None => union = Some(branch),
                Some(u) => {
                    u.union(UnionType::Distinct, branch);
                }
            }
        }
        union
    }

    /// How many credentials are in each state, by kind, and the earliest expiry among those
    /// still served. Per credential table: one `GROUP BY state` with `COUNT(*)` and
    /// `MIN(expires_at)`, an index-only scan of `(state, expires_at)`, and a count of the live
    /// values due (an index range on `(state, renew_at)`; few are due at any time).
    pub async fn state_totals(&self, now: DateTime<Utc>) -> Result<StateTotals, Error> {
        #[derive(FromQueryResult)]
        struct Group {
            state: Option<String>,
            count: i64,
            earliest: Option<DateTime<Utc>>,
        }
        let mut totals = StateTotals::default();
        for kind in Kind::ALL {
            let select = Query::select()
                .expr_as(Expr::col(C::State), Listed::State)
                .expr_as(Expr::col(Asterisk).count(), Listed::Count)
                .expr_as(Expr::col(C::ExpiresAt).min(), Listed::Earliest)
                .from(kind.table())
                .group_by_col(C::State)
                .to_owned();
            let counts = &mut totals.counts[kind.index()];
            for row in self.db.query_all(&select).await? {
                let group = Group::from_query_result(&row, "")?;
                let Some(state) = group
                    .state
                    .as_deref()
                    .and_then(|s| CredentialState::from_stored(s, false))
                else {
                    continue;
                };
                counts[state.index()] += u64::try_from(group.count).unwrap_or(0);
                let served = !matches!(state, CredentialState::Halted | CredentialState::Pending);
                if served && let Some(at) = group.earliest {
                    let earliest = &mut totals.earliest[kind.index()];
                    *earliest = Some(earliest.map_or(at, |e| std::cmp::min(e, at)));
                }
            }
            let renewing = self.count_renewing(kind, now).await?;
            let healthy = CredentialState::Healthy.index();
            let renewing = std::cmp::min(renewing, counts[healthy]);
            counts[healthy] -= renewing;
            counts[CredentialState::Renewing.index()] += renewing;
        }
        Ok(totals)
    }

    /// How many live `kind` values are due for renewal: an index range on `(state, renew_at)`.
    async fn count_renewing(&self, kind: Kind, now: DateTime<Utc>) -> Result<u64, Error> {
        let select = Query::select()
            .expr_as(Expr::col(C::Appid).count(), Listed::Count)
            .from(kind.table())
            .and_where(Expr::col(C::State).eq("live"))
            .and_where(due(now))
            .to_owned();
        let count: i64 = match self.db.query_one(&select).await? {
            Some(row) => row.try_get("", "count")?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// At most `limit` credentials in trouble, the worst states first and by appid within one:
    /// per table and state one index range on `(state, appid)`.
    pub async fn troubled(&self, limit: u64) -> Result<Vec<Troubled>, Error> {
        #[derive(FromQueryResult)]
        struct Row {
            appid: String,
            expires_at: Option<DateTime<Utc>>,
        }
        let mut out = Vec::new();
        for state in CredentialState::TROUBLE {
            for kind in Kind::ALL {
                let left = limit.saturating_sub(out.len() as u64);
                if left == 0 {
                    return Ok(out);
                }
                let select = Query::select()
                    .columns([C::Appid, C::ExpiresAt])
                    .from(kind.table())
                    .and_where(Expr::col(C::State).eq(state.stored()))
                    .order_by(C::Appid, Order::Asc)
                    .limit(left)
                    .to_owned();
                for row in self.db.query_all(&select).await? {
                    let row = Row::from_query_result(&row, "")?;
                    out.push(Troubled {
                        appid: AppId::parse(&row.appid)?,
                        kind,
                        state,
                        expires_at: row.expires_at,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The open-platform conditions of `filter` on `wechat_app_info` (as `app`): its component and
/// whether its authorization was withdrawn.
fn app_conditions(filter: &AppFilter, app: app_info::Entity) -> sea_orm::sea_query::Condition {
    let mut all = sea_orm::sea_query::Condition::all();
    if let Some(component) = &filter.component {
        all = all.add(Expr::col((app, A::ComponentAppid)).eq(component.as_str()));
    }
    match filter.revoked {
        Some(true) => all = all.add(Expr::col((app, A::RevokedAt)).is_not_null()),
        Some(false) => all = all.add(Expr::col((app, A::RevokedAt)).is_null()),
        None => {}
    }
    all
}

/// No credential of the app `appid` names is in a stored state of `states`: a primary-key probe
/// of each credential table.
fn none_in<T>(states: &[&'static str], appid: T) -> Expr
where
    T: sea_orm::sea_query::IntoColumnRef + Clone,
{
    let mut all: Option<Expr> = None;
    for (n, kind) in Kind::ALL.into_iter().enumerate() {
        let x = Alias::new(format!("x{n}"));
        let probe = Query::select()
            .expr(Expr::val(1))
            .from_as(kind.table(), x.clone())
            .and_where(Expr::col((x.clone(), C::Appid)).equals(appid.clone()))
            .and_where(Expr::col((x, C::State)).is_in(states.iter().copied()))
            .to_owned();
        let none = Expr::exists(probe).not();
        all = Some(match all {
            None => none,
            Some(all) => all.and(none),
        });
    }
    all.unwrap_or_else(|| Expr::val(true))
}

/// `column` starts with `prefix`: a lower bound the index can seek to, and `LIKE` for the rest
/// (`_` escaped; `%` cannot occur in a checked prefix). No upper bound: which strings sort
/// between a prefix and its end depends on the column's collation.
fn prefix_condition<T>(prefix: &str, column: T) -> sea_orm::sea_query::Condition
where
    T: sea_orm::sea_query::IntoColumnRef + Clone,
{
    let pattern = format!("{}%", prefix.replace('_', "!_"));
    sea_orm::sea_query::Condition::all()
        .add(Expr::col(column.clone()).gte(prefix))
        .add(Expr::col(column).like(LikeExpr::new(pattern).escape('!')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_no_listing_gave() {
        let appid = AppId::parse("ww1_a.1000002").unwrap();
        let cursor = Cursor::after(&appid);
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        let ranked = Cursor { appid, rank: 3 };
        assert!(ranked.encode().starts_with("c23"));
        assert_eq!(Cursor::decode(&ranked.encode()).unwrap(), ranked);
        for bad in [
            "",
            "c1",
            "c1zz",
            "c1616",
            "x1616263",
            "c12f2e2e",
            "c1é",
            "c2",
            "c20616263",
            "c25616263",
            "c2é616263",
        ] {
            let e = Cursor::decode(bad).unwrap_err().to_string();
            assert!(e.contains("cursor"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn states_and_limits_parse_or_say_what_is_allowed() {
        for state in CredentialState::ALL {
            assert_eq!(CredentialState::parse(state.name()).unwrap(), state);
        }
        assert_eq!(
            CredentialState::parse("out-of-budget").unwrap(),
            CredentialState::OutOfBudget
        );
        let e = CredentialState::parse("broken").unwrap_err().to_string();
        assert!(e.contains("healthy, renewing, pending"), "{e}");
        assert_eq!(page_limit(None).unwrap(), PAGE_DEFAULT);
        assert_eq!(page_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(page_limit(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(AppFilter::prefix("wx_1.").is_ok());
        for bad in ["", "wx%", "wx 1", &"a".repeat(65)] {
            assert!(AppFilter::prefix(bad).is_err(), "{bad:?}");
        }
    }
}
