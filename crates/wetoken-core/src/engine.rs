//! The engine: cache, single-flight refresh, backoff and the scheduler.
//!
//! Each (app, kind) has a [`Slot`]: the credential being served, and an async mutex that makes
//! every refresh of that credential in this process wait for the one before it.
//! A request that finds a servable credential in memory never touches the lock or the database.
//! A request that does not takes the lock, looks again (memory, then the database), and only then
//! calls WeChat. So any number of concurrent requests for a cold credential make one upstream call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use crate::Error;
use crate::clock::Clock;
use crate::model::{App, AppId, AppUpdate, Credential, CredentialRecord, Kind, NewApp};
use crate::store::Store;
use crate::wechat::{Issued, UpstreamError, WeChat};

/// How the engine refreshes. Every field has a default; durations are in seconds unless named
/// otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// A credential with less life than this left is never handed out.
    pub margin_secs: u64,
    /// The scheduler renews a credential once it has less than this left (plus the app's jitter).
    pub refresh_ahead_secs: u64,
    /// Each app's renewal point is moved earlier by a fixed share of this, so that apps added
    /// together do not refresh together.
    pub jitter_secs: u64,
    /// How often the scheduler looks for credentials to renew, in milliseconds.
    pub scan_interval_ms: u64,
    /// The most refreshes the scheduler runs at once.
    pub concurrency: usize,
    /// The first wait after a failed refresh; it doubles with each failure.
    pub backoff_base_secs: u64,
    /// The longest wait between failed refreshes, and the wait after a quota error.
    pub backoff_max_secs: u64,
    /// Whether the scheduler also renews jsapi tickets (otherwise they are fetched on demand).
    pub refresh_tickets: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            margin_secs: 300,
            refresh_ahead_secs: 1200,
            jitter_secs: 300,
            scan_interval_ms: 15_000,
            concurrency: 4,
            backoff_base_secs: 2,
            backoff_max_secs: 300,
            refresh_tickets: true,
        }
    }
}

impl EngineConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidInput(format!("refresh settings: {m}")));
        if self.margin_secs >= 7200 {
            return bad("margin_secs must be below WeChat's 7200 s lifetime");
        }
        if self.refresh_ahead_secs <= self.margin_secs {
            return bad(
                "refresh_ahead_secs must exceed margin_secs, or callers would wait on WeChat",
            );
        }
        if self.refresh_ahead_secs + self.jitter_secs >= 7200 {
            return bad("refresh_ahead_secs + jitter_secs must be below 7200 s");
        }
        if self.concurrency == 0 || self.scan_interval_ms == 0 {
            return bad("concurrency and scan_interval_ms must be positive");
        }
        if self.backoff_base_secs == 0 || self.backoff_max_secs < self.backoff_base_secs {
            return bad("need 0 < backoff_base_secs <= backoff_max_secs");
        }
        Ok(())
    }

    fn margin(&self) -> TimeDelta {
        TimeDelta::seconds(self.margin_secs as i64)
    }

    /// The wait after the `failures`-th failure in a row: `backoff_base_secs · 2^(failures-1)`,
    /// capped at `backoff_max_secs` (a quota error waits the cap at once), times `factor`, which
    /// callers draw from [½, 1] so that processes failing together do not retry together.
    fn backoff(&self, failures: u32, quota: bool, factor: f64) -> TimeDelta {
        let max = self.backoff_max_secs as f64;
        let raw = if quota {
            max
        } else {
            let exp = failures.saturating_sub(1).min(30);
            (self.backoff_base_secs as f64 * f64::from(1u32 << exp)).min(max)
        };
        TimeDelta::milliseconds((raw * factor * 1000.0) as i64)
    }

    /// When the scheduler should renew this app's credential: `refresh_ahead` plus a share of the
    /// jitter window fixed by the appid, so the same app always renews at the same point.
    fn renew_threshold(&self, appid: &AppId, kind: Kind) -> TimeDelta {
        let mut h = DefaultHasher::new();
        (appid.as_str(), kind.index()).hash(&mut h);
        let jitter = if self.jitter_secs == 0 {
            0
        } else {
            h.finish() % self.jitter_secs
        };
        TimeDelta::seconds((self.refresh_ahead_secs + jitter) as i64)
    }
}

/// What a caller needs of a credential.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// One with more than the margin left.
    Serve,
    /// One that is servable and is not this value (a passive refresh).
    Replace(&'a str),
    /// One with more than this left (a scheduled renewal).
    Ahead(TimeDelta),
}

/// Refresh attempts of one credential in this process.
#[derive(Default)]
struct Attempts {
    failures: u32,
    retry_at: Option<DateTime<Utc>>,
    last_error: Option<Error>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<Credential>>>,
    flight: Mutex<Attempts>,
}

impl Slot {
    fn cached(&self) -> Option<Arc<Credential>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, credential: Arc<Credential>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(credential);
    }
}

/// A failed fetch: either WeChat refused this credential's own call, or something it depends on
/// (the token a ticket needs, the database) failed and has been dealt with already.
enum FetchError {
    Upstream(UpstreamError),
    Other(Error),
}

/// An app with the state of each of its credentials; what listings show.
#[derive(Debug, Clone)]
pub struct AppStatus {
    /// The app.
    pub app: App,
    /// Its access token's stored state, if a row exists.
    pub access_token: Option<CredentialRecord>,
    /// Its jsapi ticket's stored state, if a row exists.
    pub jsapi_ticket: Option<CredentialRecord>,
}

/// The token engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    wechat: WeChat,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    slots: [RwLock<HashMap<String, Arc<Slot>>>; 2],
}

impl Engine {
    /// An engine over `store` and `wechat`, reading time from `clock`.
    pub fn new(
        store: Store,
        wechat: WeChat,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                wechat,
                clock,
                config,
                slots: Default::default(),
            }),
        })
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The current time, as the engine sees it.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// A credential with more than the safety margin of life left.
    ///
    /// From memory when it holds one; otherwise from the database; otherwise fetched from WeChat
    /// and stored in both. Concurrent calls for one credential make at most one upstream call.
    pub async fn get(&self, appid: &AppId, kind: Kind) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        if let Some(c) = slot.cached()
            && self.satisfies(&c, self.now(), Need::Serve)
        {
            return Ok(c);
        }
        self.fill(appid, kind, &slot, Need::Serve).await
    }

    /// The passive refresh: `failed` is a value WeChat rejected.
    ///
    /// If it is still the current credential, a new one is fetched; otherwise the current one is
    /// returned without calling WeChat. So any number of callers reporting one bad value cause one
    /// upstream call.
    pub async fn refresh(
        &self,
        appid: &AppId,
        kind: Kind,
        failed: &str,
    ) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        self.fill(appid, kind, &slot, Need::Replace(failed)).await
    }

    /// Adds an app.
    pub async fn add_app(&self, app: &NewApp) -> Result<(), Error> {
        self.inner.store.insert_app(app, self.now()).await?;
        info!(appid = %app.appid, "app added");
        Ok(())
    }

    /// Changes an app's settings and lifts any halt on its credentials.
    pub async fn update_app(&self, appid: &AppId, update: &AppUpdate) -> Result<(), Error> {
        if update.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to update: give secret, token or aes_key".into(),
            ));
        }
        self.inner
            .store
            .update_app(appid, update, self.now())
            .await?;
        self.forget(appid);
        info!(%appid, "app updated");
        Ok(())
    }

    /// Removes an app and its credentials.
    pub async fn delete_app(&self, appid: &AppId) -> Result<(), Error> {
        let existed = self.inner.store.delete_app(appid).await?;
        self.forget(appid);
        if !existed {
            return Err(Error::UnknownApp(appid.clone()));
        }
        info!(%appid, "app deleted");
        Ok(())
    }

    /// One app and the state of its credentials.
    pub async fn app_status(&self, appid: &AppId) -> Result<AppStatus, Error> {
        let app = self
            .inner
            .store
            .app(appid)
            .await?
            .ok_or_else(|| Error::UnknownApp(appid.clone()))?;
        self.status_of(app).await
    }

    /// Every app and the state of its credentials.
    pub async fn app_statuses(&self) -> Result<Vec<AppStatus>, Error> {
        let mut out = Vec::new();
        for app in self.inner.store.apps().await? {
            out.push(self.status_of(app).await?);
        }
        Ok(out)
    }

    async fn status_of(&self, app: App) -> Result<AppStatus, Error> {
        let store = &self.inner.store;
        Ok(AppStatus {
            access_token: store.credential(&app.appid, Kind::AccessToken).await?,
            jsapi_ticket: store.credential(&app.appid, Kind::JsapiTicket).await?,
            app,
        })
    }

    /// How many credentials this process holds slots for (cached or being fetched).
    pub fn cached_credentials(&self) -> usize {
        self.inner
            .slots
            .iter()
            .map(|map| map.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn slot(&self, appid: &AppId, kind: Kind) -> Arc<Slot> {
        let map = &self.inner.slots[kind.index()];
        if let Some(slot) = map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(appid.as_str())
        {
            return slot.clone();
        }
        map.write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(appid.as_str().to_owned())
            .or_default()
            .clone()
    }

    /// Drops what this process remembers of an app: its cached credentials and its backoff.
    fn forget(&self, appid: &AppId) {
        for map in &self.inner.slots {
            map.write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(appid.as_str());
        }
    }

    fn satisfies(&self, c: &Credential, now: DateTime<Utc>, need: Need<'_>) -> bool {
        let left = c.expires_at - now;
        match need {
            Need::Serve => left > self.inner.config.margin(),
            Need::Replace(failed) => c.value != failed && left > self.inner.config.margin(),
            Need::Ahead(threshold) => left > threshold,
        }
    }

    /// The slow path: under the slot's lock, look again in memory and the database, and fetch
    /// from WeChat only when neither has what is needed.
    async fn fill(
        &self,
        appid: &AppId,
        kind: Kind,
        slot: &Slot,
        need: Need<'_>,
    ) -> Result<Arc<Credential>, Error> {
        let mut attempts = slot.flight.lock().await;
        let now = self.now();
        if let Some(c) = slot.cached()
            && self.satisfies(&c, now, need)
        {
            return Ok(c);
        }
        let record = self.inner.store.credential(appid, kind).await?;
        if let Some(record) = &record {
            if let Some(c) = &record.credential
                && self.satisfies(c, now, need)
            {
                let c = Arc::new(c.clone());
                slot.set(c.clone());
                return Ok(c);
            }
            if record.halted {
                return Err(Error::Halted {
                    appid: appid.clone(),
                    kind,
                    message: record.message.clone(),
                });
            }
        }
        if let (Some(retry_at), Some(err)) = (attempts.retry_at, &attempts.last_error)
            && now < retry_at
        {
            debug!(%appid, %kind, %retry_at, "in backoff; not calling WeChat");
            return Err(err.clone());
        }
        let Some(app) = self.inner.store.app(appid).await? else {
            // Keep no slot for an appid nobody registered, or a flood of made-up appids would
            // grow the map without bound.
            drop(attempts);
            self.forget(appid);
            return Err(Error::UnknownApp(appid.clone()));
        };
        let span = tracing::info_span!("refresh", appid = %appid, kind = %kind);
        let started = self.now();
        match self.fetch(&app, kind).instrument(span).await {
            Ok(issued) => {
                let credential = Arc::new(Credential {
                    value: issued.value,
                    expires_at: started + TimeDelta::seconds(issued.expires_in as i64),
                });
                *attempts = Attempts::default();
                // Serve it even if it cannot be stored: it is valid, and WeChat has already
                // retired the previous one.
                slot.set(credential.clone());
                if let Err(e) = self
                    .inner
                    .store
                    .save_credential(appid, kind, &credential, self.now())
                    .await
                {
                    warn!(%appid, %kind, error = %e, "fetched a credential but could not store it");
                }
                info!(%appid, %kind, expires_at = %credential.expires_at, "refreshed");
                Ok(credential)
            }
            Err(FetchError::Other(e)) => Err(e),
            Err(FetchError::Upstream(e)) => Err(self.failed(appid, kind, &mut attempts, e).await),
        }
    }

    /// Records a failed fetch and decides when the next may be tried.
    async fn failed(
        &self,
        appid: &AppId,
        kind: Kind,
        attempts: &mut Attempts,
        e: UpstreamError,
    ) -> Error {
        let now = self.now();
        let halted = e.is_fatal();
        if let Err(db) = self
            .inner
            .store
            .record_failure(appid, kind, &e.message(), halted, now)
            .await
        {
            warn!(%appid, %kind, error = %db, "could not record a failed refresh");
        }
        let err = match &e {
            UpstreamError::Refused { errcode, errmsg } if halted => {
                warn!(%appid, %kind, errcode, "WeChat refused for good; refreshing stops until the app's settings change");
                return Error::Halted {
                    appid: appid.clone(),
                    kind,
                    message: format!("{errcode}: {errmsg}"),
                };
            }
            UpstreamError::Refused { errcode, errmsg } => Error::Refused {
                errcode: *errcode,
                errmsg: errmsg.clone(),
            },
            other => Error::Unavailable(other.to_string()),
        };
        attempts.failures = attempts.failures.saturating_add(1);
        let factor = rand::rng().random_range(0.5..=1.0);
        let delay = self
            .inner
            .config
            .backoff(attempts.failures, e.is_quota(), factor);
        attempts.retry_at = Some(now + delay);
        attempts.last_error = Some(err.clone());
        warn!(%appid, %kind, error = %e, failures = attempts.failures, retry_in_secs = delay.num_seconds(), "refresh failed");
        err
    }

    /// One upstream fetch of `kind` for `app`.
    ///
    /// A ticket needs a token: if WeChat rejects the one held, the token is refreshed once (as a
    /// passive refresh, so concurrent rejections share it) and the ticket call tried once more.
    async fn fetch(&self, app: &App, kind: Kind) -> Result<Issued, FetchError> {
        let wechat = &self.inner.wechat;
        match kind {
            Kind::AccessToken => wechat
                .access_token(&app.appid, &app.secret)
                .await
                .map_err(FetchError::Upstream),
            Kind::JsapiTicket => {
                let token = Box::pin(self.get(&app.appid, Kind::AccessToken))
                    .await
                    .map_err(FetchError::Other)?;
                match wechat.jsapi_ticket(&token.value).await {
                    Err(e) if e.is_token_rejected() => {
                        warn!(appid = %app.appid, error = %e, "WeChat rejected the token; refreshing it once");
                        let token =
                            Box::pin(self.refresh(&app.appid, Kind::AccessToken, &token.value))
                                .await
                                .map_err(FetchError::Other)?;
                        wechat
                            .jsapi_ticket(&token.value)
                            .await
                            .map_err(FetchError::Upstream)
                    }
                    other => other.map_err(FetchError::Upstream),
                }
            }
        }
    }

    /// Renews every app's credentials ahead of expiry until `shutdown` resolves.
    ///
    /// Every `scan_interval_ms` it asks the database which credentials are missing or near their
    /// renewal point, and refreshes those with at most `concurrency` at once. Each app's renewal
    /// point is `refresh_ahead_secs` plus a share of `jitter_secs` fixed by its appid, so refreshes
    /// spread out. Failures are recorded and backed off; the loop itself never stops on one.
    /// Refreshes under way when `shutdown` resolves are finished, so no fetched value is lost.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        let semaphore = Arc::new(Semaphore::new(self.inner.config.concurrency));
        let mut running = JoinSet::new();
        let interval = Duration::from_millis(self.inner.config.scan_interval_ms);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = self.sweep(&semaphore, &mut running) => {}
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        while running.join_next().await.is_some() {}
        debug!("scheduler stopped");
    }

    async fn sweep(&self, semaphore: &Arc<Semaphore>, running: &mut JoinSet<()>) {
        let config = &self.inner.config;
        let kinds: &[Kind] = if config.refresh_tickets {
            &Kind::ALL
        } else {
            &[Kind::AccessToken]
        };
        for &kind in kinds {
            let now = self.now();
            let horizon =
                now + TimeDelta::seconds((config.refresh_ahead_secs + config.jitter_secs) as i64);
            let due = match self.inner.store.due(kind, horizon).await {
                Ok(due) => due,
                Err(e) => {
                    warn!(%kind, error = %e, "scheduler could not list due credentials");
                    return;
                }
            };
            for (appid, expires_at) in due {
                let threshold = config.renew_threshold(&appid, kind);
                if expires_at.is_some_and(|at| at - now > threshold) {
                    continue;
                }
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    return;
                };
                let engine = self.clone();
                running.spawn(async move {
                    let slot = engine.slot(&appid, kind);
                    if let Err(e) = engine
                        .fill(&appid, kind, &slot, Need::Ahead(threshold))
                        .await
                    {
                        debug!(%appid, %kind, error = %e, "scheduled refresh failed");
                    }
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = EngineConfig {
            backoff_base_secs: 2,
            backoff_max_secs: 60,
            ..EngineConfig::default()
        };
        let secs = |n, quota| config.backoff(n, quota, 1.0).num_seconds();
        assert_eq!(
            [
                secs(1, false),
                secs(2, false),
                secs(3, false),
                secs(5, false)
            ],
            [2, 4, 8, 32]
        );
        assert_eq!(secs(6, false), 60);
        assert_eq!(secs(u32::MAX, false), 60);
        assert_eq!(secs(1, true), 60, "quota errors wait the cap at once");
        assert_eq!(config.backoff(1, false, 0.5).num_milliseconds(), 1000);
    }

    #[test]
    fn renewal_points_spread_over_the_jitter_window_and_stay_put() {
        let config = EngineConfig::default();
        let points: Vec<i64> = (0..1000)
            .map(|i| {
                let appid = AppId::parse(&format!("wx{i:016x}")).unwrap();
                let t = config
                    .renew_threshold(&appid, Kind::AccessToken)
                    .num_seconds();
                assert_eq!(
                    t,
                    config
                        .renew_threshold(&appid, Kind::AccessToken)
                        .num_seconds()
                );
                t
            })
            .collect();
        let ahead = config.refresh_ahead_secs as i64;
        let jitter = config.jitter_secs as i64;
        assert!(points.iter().all(|t| (ahead..ahead + jitter).contains(t)));
        // Spread: every tenth of the window holds some apps, none holds more than a fifth.
        for decile in 0..10 {
            let lo = ahead + decile * jitter / 10;
            let hi = lo + jitter / 10;
            let n = points.iter().filter(|t| (lo..hi).contains(*t)).count();
            assert!((30..200).contains(&n), "decile {decile}: {n} apps");
        }
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad = [
            EngineConfig {
                margin_secs: 7200,
                ..EngineConfig::default()
            },
            EngineConfig {
                refresh_ahead_secs: 300,
                ..EngineConfig::default()
            },
            EngineConfig {
                refresh_ahead_secs: 7000,
                ..EngineConfig::default()
            },
            EngineConfig {
                concurrency: 0,
                ..EngineConfig::default()
            },
            EngineConfig {
                backoff_base_secs: 10,
                backoff_max_secs: 5,
                ..EngineConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        EngineConfig::default().validate().unwrap();
    }
}
