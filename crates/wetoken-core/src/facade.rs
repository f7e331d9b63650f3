//! What a server asks of the engine besides credentials and apps: whether the database answers,
//! the consumer keys' snapshot, and what the metrics and listings read. A server holds an
//! [`Engine`] and asks it these; it never reaches for the [`Store`](crate::Store) behind it, so
//! the store's shape can change without the server noticing.

use chrono::{DateTime, Utc};

use crate::model::{AppId, AppInfo, Kind};
use crate::store::{AppFilter, Cursor, StateTotals, Troubled};
use crate::{AppStatus, Engine, Error, KeyTable};

/// A page of a listing: apps with the state of their credentials, and where the next page
/// starts, if one follows.
#[derive(Debug, Clone)]
pub struct AppPage {
    /// The apps, ordered by appid (or worst first, as the filter asks).
    pub apps: Vec<AppStatus>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<Cursor>,
}

impl Engine {
    /// Checks that the database answers: the health and readiness probes.
    pub async fn ping_database(&self) -> Result<(), Error> {
        self.store().ping().await
    }

    /// A snapshot of every consumer key, revoked ones included, to check requests against
    /// without a query each.
    pub async fn key_table(&self) -> Result<KeyTable, Error> {
        self.store().key_table().await
    }

    /// When each stored `kind` credential expires, by app: what the metrics' gauges report,
    /// read from the database so that every replica reports the cluster's truth.
    pub async fn expiries(&self, kind: Kind) -> Result<Vec<(AppId, DateTime<Utc>)>, Error> {
        self.store().expiries(kind).await
    }

    /// What listings show of every app, ordered by appid, without the state of its credentials
    /// (which [`Engine::app_statuses`] adds) and without decrypting a secret.
    pub async fn apps(&self) -> Result<Vec<AppInfo>, Error> {
        self.store().apps().await
    }

    /// A page of at most `limit` apps after `after` that match `filter`, with the state of
    /// their credentials: a handful of indexed queries whatever the number of apps
    /// (`store::listing`).
    pub async fn list_apps(
        &self,
        filter: &AppFilter,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<AppPage, Error> {
        let store = self.store();
        let (apps, next) = if filter.worst_first && filter.state.is_none() {
            store
                .page_worst_first(filter, after, limit, self.now())
                .await?
        } else {
            let (apps, more) = store
                .page_of_apps(filter, after.map(Cursor::appid), limit, self.now())
                .await?;
            let next = more
                .then(|| apps.last().map(|a| Cursor::after(&a.appid)))
                .flatten();
            (apps, next)
        };
        let ids: Vec<AppId> = apps.iter().map(|a| a.appid.clone()).collect();
        let mut records = Vec::new();
        for kind in Kind::ALL {
            records.push(store.credentials_of(kind, &ids).await?);
        }
        let apps = apps
            .into_iter()
            .map(|app| {
                let id = app.appid.as_str();
                AppStatus {
                    access_token: records[0].remove(id),
                    jsapi_ticket: records[1].remove(id),
                    card_ticket: records[2].remove(id),
                    app,
                }
            })
            .collect();
        Ok(AppPage { apps, next })
    }

    /// The refresh outcomes kept for `appid`'s credentials, newest first: at most
    /// [`crate::HISTORY_SLOTS`] a credential, one primary-key range.
    pub async fn refresh_history(
        &self,
        appid: &AppId,
    ) -> Result<Vec<crate::RefreshOutcome>, Error> {
        self.store().refresh_history(appid).await
    }

    /// How many credentials are in each state, by kind, read from the database: every
    /// replica's work.
    pub async fn state_totals(&self) -> Result<StateTotals, Error> {
        self.store().state_totals(self.now()).await
    }

    /// [`Engine::state_totals`] as read at most `fresh` ago, for pages and scrapes that anyone
    /// may ask for often. A reading older than `fresh` (but younger than ten times it) is
    /// answered at once while one refresh runs behind it; an older one, or none, is read
    /// first. `fresh` of zero reads every time. Returns the totals and how old they are.
    pub async fn state_totals_within(
        &self,
        fresh: std::time::Duration,
    ) -> Result<(StateTotals, std::time::Duration), Error> {
        let now = self.now().timestamp_millis();
        let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
        if fresh_ms > 0
            && let Some((at, totals)) = self.inner_totals().last()
        {
            let age = now.saturating_sub(at).max(0);
            if age < fresh_ms.saturating_mul(10) {
                if age >= fresh_ms && self.inner_totals().begin_refresh() {
                    let engine = self.clone();
                    tokio::spawn(async move {
                        let now = engine.now();
                        if let Ok(totals) = engine.store().state_totals(now).await {
                            engine.inner_totals().store(now.timestamp_millis(), totals);
                        }
                        engine.inner_totals().end_refresh();
                    });
                }
                let age = std::time::Duration::from_millis(u64::try_from(age).unwrap_or(0));
                return Ok((totals, age));
            }
        }
        let read_at = self.now();
        let totals = self.store().state_totals(read_at).await?;
        self.inner_totals()
            .store(read_at.timestamp_millis(), totals.clone());
        Ok((totals, std::time::Duration::ZERO))
    }

    /// At most `limit` credentials in trouble (halted, out of budget, failing), the worst first.
    pub async fn troubled(&self, limit: u64) -> Result<Vec<Troubled>, Error> {
        self.store().troubled(limit).await
    }
}

/// The engine's last reading of the totals by state; see [`Engine::state_totals_within`].
#[derive(Default)]
pub(crate) struct TotalsCache {
    last: std::sync::Mutex<Option<(i64, StateTotals)>>,
    refreshing: std::sync::atomic::AtomicBool,
}

impl TotalsCache {
    fn last(&self) -> Option<(i64, StateTotals)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, at: i64, totals: StateTotals) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // A slower, older reading never replaces a newer one.
        if last.as_ref().is_none_or(|(held, _)| *held <= at) {
            *last = Some((at, totals));
        }
    }

    /// Whether this caller is the one to refresh (no refresh is under way).
    fn begin_refresh(&self) -> bool {
        !self
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    fn end_refresh(&self) {
        self.refreshing
            .store(false, std::sync::atomic::Ordering::Release);
    }
}
