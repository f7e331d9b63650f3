//! The engine: cache, single-flight refresh, the cluster-wide lease, backoff and the scheduler.
//!
//! Each (app, kind) has a [`Slot`]: the credential being served, when it was last checked against
//! the database, and an async mutex that makes every refresh of that credential in this process
//! wait for the one before it.
//!
//! - A request that finds a servable, recently checked credential in memory never touches the lock
//!   or the database.
//! - Otherwise it takes the lock, looks again (memory, then the database) and, only if neither has
//!   what it needs, takes the credential's refresh lease in the database and calls WeChat. A
//!   replica that finds the lease held waits for the holder's result in the database instead.
//!
//! So any number of concurrent requests, on any number of replicas sharing a database, make one
//! upstream call per credential lifetime. The reasoning, with timings, is in
//! `docs/ARCHITECTURE.md`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use rand::distr::SampleString;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use crate::Error;
use crate::clock::Clock;
use crate::keys::SecretDigests;
use crate::model::{
    App, AppId, AppInfo, AppKind, AppUpdate, Credential, CredentialRecord, Kind, NewApp, Secret,
    TokenMode,
};
use crate::store::{Failure, Store, wechat_day};
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
    /// The most refreshes the scheduler starts per second, so that many apps coming due together
    /// (a cold start with 10,000 apps) reach WeChat as a steady trickle, not a burst.
    pub max_refresh_rate: u32,
    /// The first wait after a failed refresh; it doubles with each failure.
    pub backoff_base_secs: u64,
    /// The longest wait between failed refreshes, and the wait after a quota error.
    pub backoff_max_secs: u64,
    /// Whether the scheduler also renews jsapi tickets (otherwise they are fetched on demand).
    pub refresh_tickets: bool,
    /// The most calls to WeChat this process makes at once, requests and scheduler together.
    pub max_upstream_concurrency: usize,
    /// How long a replica's refresh lease lasts, in milliseconds. It must outlast a refresh
    /// (a WeChat call and a database write); a holder that dies loses it after this long.
    pub lease_ms: u64,
    /// How often a replica waiting on another's lease looks for the result, in milliseconds.
    pub lease_poll_ms: u64,
    /// How often a cached credential is checked against the database, in milliseconds, so that a
    /// refresh by another replica is picked up.
    pub cache_check_ms: u64,
    /// While the database cannot be reached, a cached credential is served for at most this long
    /// after its last successful check. Keep it under WeChat's five-minute overlap.
    pub cache_trust_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            margin_secs: 300,
            refresh_ahead_secs: 1200,
            jitter_secs: 300,
            scan_interval_ms: 15_000,
            concurrency: 4,
            max_refresh_rate: 20,
            backoff_base_secs: 2,
            backoff_max_secs: 300,
            refresh_tickets: true,
            max_upstream_concurrency: 16,
            lease_ms: 30_000,
            lease_poll_ms: 100,
            cache_check_ms: 1_000,
            cache_trust_secs: 240,
        }
    }
}

/// WeChat keeps a superseded token working this long.
const WECHAT_OVERLAP_SECS: u64 = 300;

/// A stable token is served until this long before it expires.
const STABLE_MARGIN_SECS: i64 = 60;

/// The scheduler renews a stable token this long before it expires: inside WeChat's last five
/// minutes, the only time a normal stable-token call issues a new one.
const STABLE_RENEW_SECS: i64 = 240;

/// WeChat allows this many forced stable tokens a day ...
const FORCES_PER_DAY: i32 = 20;
/// ... this far apart.
const FORCE_SPACING_SECS: i64 = 30;

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
        if self.concurrency == 0
            || self.scan_interval_ms == 0
            || self.max_refresh_rate == 0
            || self.max_upstream_concurrency == 0
        {
            return bad(
                "concurrency, scan_interval_ms, max_refresh_rate and max_upstream_concurrency must be positive",
            );
        }
        if self.backoff_base_secs == 0 || self.backoff_max_secs < self.backoff_base_secs {
            return bad("need 0 < backoff_base_secs <= backoff_max_secs");
        }
        if self.lease_ms < 1000 || self.lease_poll_ms == 0 || self.lease_poll_ms >= self.lease_ms {
            return bad("need lease_ms >= 1000 and 0 < lease_poll_ms < lease_ms");
        }
        if self.cache_check_ms == 0 || self.cache_check_ms >= self.cache_trust_secs * 1000 {
            return bad("need 0 < cache_check_ms < cache_trust_secs * 1000");
        }
        if self.cache_trust_secs >= WECHAT_OVERLAP_SECS {
            return bad("cache_trust_secs must be below WeChat's 300 s overlap");
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
#[derive(Clone, Debug)]
enum Need {
    /// One with more than the margin left.
    Serve,
    /// One that is servable and is not this value (a passive refresh).
    Replace(String),
    /// One with more than this left (a scheduled renewal).
    Ahead(TimeDelta),
}

/// One credential as this process knows it.
#[derive(Default)]
struct Slot {
    /// The credential served, with the stored version it came with.
    current: RwLock<Option<(Arc<Credential>, i64)>>,
    /// When `current` last matched the database (engine clock, Unix ms).
    checked_ms: AtomicI64,
    /// Whether a background check against the database is under way.
    checking: AtomicBool,
    /// Life a served value must have left, in ms; 0 until the app is known (then the configured
    /// margin applies).
    margin_ms: AtomicI64,
    /// Held while this process looks for, waits for or fetches a new value.
    flight: Mutex<()>,
}

impl Slot {
    fn cached(&self) -> Option<Arc<Credential>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    fn set(&self, credential: Arc<Credential>, version: i64, now: DateTime<Utc>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((credential, version));
        self.checked_ms
            .store(now.timestamp_millis(), Ordering::Release);
    }

    fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Milliseconds since the cached value last matched the database.
    fn unchecked_for(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp_millis() - self.checked_ms.load(Ordering::Acquire)
    }
}

/// A failed fetch: either WeChat refused this credential's own call, or something it depends on
/// (the token a ticket needs) failed and has been dealt with already.
enum FetchError {
    Upstream(UpstreamError),
    Other(Error),
}

type BoxedResult<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Arc<Credential>, Error>> + Send + 'a>>;

/// An app with the state of each of its credentials; what listings show.
#[derive(Debug, Clone)]
pub struct AppStatus {
    /// The app, without its secrets.
    pub app: AppInfo,
    /// Its access token's stored state, if a row exists.
    pub access_token: Option<CredentialRecord>,
    /// Its jsapi ticket's stored state, if a row exists.
    pub jsapi_ticket: Option<CredentialRecord>,
    /// Its card ticket's stored state, if a row exists.
    pub card_ticket: Option<CredentialRecord>,
}

/// What a page's `wx.config` needs, signed with the app's current jsapi ticket.
#[derive(Debug, Clone)]
pub struct JssdkConfig {
    /// The id the page passes as `appId`: the appid, or a WeCom app's corpid.
    pub app_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// A random string.
    pub nonce_str: String,
    /// The SHA-1 signature.
    pub signature: String,
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
    slots: [RwLock<HashMap<String, Arc<Slot>>>; 3],
    /// Names this process in lease owners.
    replica: String,
    /// Bounds the calls to WeChat in flight.
    upstream: Semaphore,
    leases: AtomicU64,
    /// Scheduler scans finished, successful or not.
    sweeps: AtomicU64,
    /// Digests of the apps' secrets, for callers that present one (the Go SDK).
    secrets: RwLock<SecretDigests>,
}

/// The error a recorded failure stands for, as other replicas read it back.
fn error_from_message(message: &str) -> Error {
    match message.split_once(':') {
        Some((code, text)) if code.trim().parse::<i64>().is_ok() => Error::Refused {
            errcode: code.trim().parse().unwrap_or_default(),
            errmsg: text.trim().to_owned(),
        },
        _ => Error::Unavailable(message.to_owned()),
    }
}

fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().take(24).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wetoken".into());
    format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::rng().random::<u16>()
    )
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
        let upstream = Semaphore::new(config.max_upstream_concurrency);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                wechat,
                clock,
                config,
                slots: Default::default(),
                replica: replica_name(),
                upstream,
                leases: AtomicU64::new(0),
                sweeps: AtomicU64::new(0),
                secrets: RwLock::default(),
            }),
        })
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The WeChat client.
    pub(crate) fn wechat(&self) -> &WeChat {
        &self.inner.wechat
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
    /// From memory when it holds one that was checked against the database within
    /// `cache_check_ms` (a check that is due runs in the background, and the cached value is
    /// served meanwhile for up to `cache_trust_secs`); otherwise from the database; otherwise
    /// fetched from WeChat under the cluster-wide lease and stored in both.
    pub async fn get(&self, appid: &AppId, kind: Kind) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        let now = self.now();
        if let Some(c) = slot.cached()
            && self.satisfies(&slot, &c, now, &Need::Serve)
        {
            let unchecked = slot.unchecked_for(now);
            if unchecked < self.inner.config.cache_check_ms as i64 {
                return Ok(c);
            }
            if unchecked < self.trust_ms() {
                self.check_in_background(appid, kind, slot.clone());
                return Ok(c);
            }
        }
        self.fill(appid, kind, &slot, Need::Serve).await
    }

    /// The stored credential, never fetched (the Go wetoken's `/wx/{appid}/token/query`): from
    /// memory when it was checked against the database within `cache_check_ms`, else from the
    /// database, as long as it has not expired. The safety margin does not apply: a value with a
    /// minute left is still the stored one. Nothing stored, or only an expired value, is
    /// [`Error::NotStored`].
    pub async fn stored(&self, appid: &AppId, kind: Kind) -> Result<Arc<Credential>, Error> {
        let now = self.now();
        let known = self.inner.slots[kind.index()]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(appid.as_str())
            .cloned();
        if let Some(slot) = known
            && let Some(c) = slot.cached()
            && c.expires_at > now
            && slot.unchecked_for(now) < self.inner.config.cache_check_ms as i64
        {
            return Ok(c);
        }
        let record = self.inner.store.credential(appid, kind).await?;
        if let Some(c) = record.and_then(|r| r.credential)
            && c.expires_at > now
        {
            return Ok(Arc::new(c));
        }
        if self.inner.store.app_info(appid).await?.is_none() {
            return Err(Error::UnknownApp(appid.clone()));
        }
        Err(Error::NotStored {
            appid: appid.clone(),
            kind,
        })
    }

    /// The passive refresh: `failed` is a value WeChat rejected.
    ///
    /// If it is still the current credential, a new one is fetched; otherwise the current one is
    /// returned without calling WeChat. So any number of callers reporting one bad value, on any
    /// number of replicas, cause one upstream call.
    pub async fn refresh(
        &self,
        appid: &AppId,
        kind: Kind,
        failed: &str,
    ) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        self.fill(appid, kind, &slot, Need::Replace(failed.to_owned()))
            .await
    }

    /// Fetches a new credential now, whatever the stored one's state (an operator's forced
    /// refresh). It goes through the lease like any refresh, so replicas still fetch once.
    pub async fn force_refresh(&self, appid: &AppId, kind: Kind) -> Result<Arc<Credential>, Error> {
        let current = self
            .inner
            .store
            .credential(appid, kind)
            .await?
            .and_then(|r| r.credential);
        match current {
            Some(c) => self.refresh(appid, kind, &c.value).await,
            None => self.get(appid, kind).await,
        }
    }

    /// Adds an app.
    pub async fn add_app(&self, app: &NewApp) -> Result<(), Error> {
        self.inner.store.insert_app(app, self.now()).await?;
        self.remember_secret(&app.appid, Some(&app.secret));
        info!(appid = %app.appid, "app added");
        Ok(())
    }

    /// Whether `presented` is `appid`'s app secret, as the Go SDK presents it, from digests held
    /// in memory: no database query, constant time in the secrets' content. Holds only after
    /// [`Engine::reload_app_secrets`] has run (and for apps this engine added or updated since);
    /// an app another process added or changed is seen from the next reload on.
    pub fn is_app_secret(&self, appid: &str, presented: &str) -> bool {
        self.inner
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matches(appid, presented)
    }

    /// Reads every app's secret from the database and keeps its SHA-256 for
    /// [`Engine::is_app_secret`], in place of what was held; returns how many apps it holds
    /// secrets of. A secret that does not decrypt is left out: that app's tokens cannot be
    /// fetched either, and the fetch says why.
    pub async fn reload_app_secrets(&self) -> Result<usize, Error> {
        let read_at = self.secret_digests().generation();
        let mut readable = Vec::new();
        for (appid, secret) in self.inner.store.app_secrets().await? {
            match secret {
                Ok(secret) => readable.push((appid, secret)),
                Err(e) => debug!(%appid, error = %e, "app secret left out of the digests"),
            }
        }
        if !self.secret_digests().install(read_at, &readable) {
            debug!("an app changed during the reload of app secrets; the next one reads it");
        }
        Ok(readable.len())
    }

    fn secret_digests(&self) -> std::sync::RwLockWriteGuard<'_, SecretDigests> {
        self.inner
            .secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn remember_secret(&self, appid: &AppId, secret: Option<&Secret>) {
        self.secret_digests().set(appid.as_str(), secret);
    }

    /// Changes an app's settings and lifts any halt or backoff on its credentials.
    pub async fn update_app(&self, appid: &AppId, update: &AppUpdate) -> Result<(), Error> {
        if update.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to update: give secret, token, aes_key, token_mode, daily_budget, or a Go field (mchid, pay_key, sub_appid, sub_mchid, wechat_host, wcode_template_id)".into(),
            ));
        }
        self.inner
            .store
            .update_app(appid, update, self.now())
            .await?;
        self.forget(appid);
        if let Some(secret) = &update.secret {
            self.remember_secret(appid, Some(secret));
        }
        info!(%appid, "app updated");
        Ok(())
    }

    /// Removes an app and its credentials.
    pub async fn delete_app(&self, appid: &AppId) -> Result<(), Error> {
        let existed = self.inner.store.delete_app(appid).await?;
        self.forget(appid);
        self.remember_secret(appid, None);
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
            .app_info(appid)
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

    async fn status_of(&self, app: AppInfo) -> Result<AppStatus, Error> {
        let store = &self.inner.store;
        Ok(AppStatus {
            access_token: store.credential(&app.appid, Kind::AccessToken).await?,
            jsapi_ticket: store.credential(&app.appid, Kind::JsapiTicket).await?,
            card_ticket: store.credential(&app.appid, Kind::CardTicket).await?,
            app,
        })
    }

    /// Signs `wx.config` for the page at `url` (http or https; a `#` fragment is dropped).
    pub async fn jssdk_config(&self, appid: &AppId, url: &str) -> Result<JssdkConfig, Error> {
        let url = crate::sign::signable_url(url);
        let scheme_end = url.find("://").unwrap_or(0);
        let scheme = url[..scheme_end].to_ascii_lowercase();
        let host = url[scheme_end..].trim_start_matches("://");
        if !(scheme == "http" || scheme == "https")
            || host.is_empty()
            || host.starts_with('/')
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::InvalidInput(
                "url must be the page's full http:// or https:// URL".into(),
            ));
        }
        let ticket = self.get(appid, Kind::JsapiTicket).await?;
        let app = self
            .inner
            .store
            .app_info(appid)
            .await?
            .ok_or_else(|| Error::UnknownApp(appid.clone()))?;
        let app_id = app
            .work
            .map_or_else(|| appid.as_str().to_owned(), |w| w.corpid);
        let timestamp = self.now().timestamp();
        let nonce_str = rand::distr::Alphanumeric.sample_string(&mut rand::rng(), 16);
        let signature = crate::sign::jsapi_signature(&ticket.value, &nonce_str, timestamp, url);
        Ok(JssdkConfig {
            app_id,
            timestamp,
            nonce_str,
            signature,
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

    fn trust_ms(&self) -> i64 {
        self.inner.config.cache_trust_secs as i64 * 1000
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

    /// Drops what this process remembers of an app.
    fn forget(&self, appid: &AppId) {
        for map in &self.inner.slots {
            map.write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(appid.as_str());
        }
    }

    fn satisfies(&self, slot: &Slot, c: &Credential, now: DateTime<Utc>, need: &Need) -> bool {
        let left = c.expires_at - now;
        let margin = match slot.margin_ms.load(Ordering::Acquire) {
            0 => self.inner.config.margin(),
            ms => TimeDelta::milliseconds(ms),
        };
        match need {
            Need::Serve => left > margin,
            Need::Replace(failed) => c.value != *failed && left > margin,
            Need::Ahead(threshold) => left > *threshold,
        }
    }

    /// Settles the margin of a slot once its app is known: a stable token keeps working to the
    /// end of its life (WeChat only issues the next one in the last five minutes, and both stay
    /// valid meanwhile), so it is served until [`STABLE_MARGIN_SECS`] before expiry.
    fn settle_margin(&self, slot: &Slot, app: &App, kind: Kind) {
        let stable = kind == Kind::AccessToken
            && app.info.kind != AppKind::Work
            && app.info.token_mode == TokenMode::Stable;
        let ms = if stable {
            STABLE_MARGIN_SECS * 1000
        } else {
            self.inner.config.margin_secs as i64 * 1000
        };
        slot.margin_ms.store(ms, Ordering::Release);
    }

    /// Compares the cached value with the database without holding up the request that noticed
    /// the check was due. At most one check per slot runs at a time.
    fn check_in_background(&self, appid: &AppId, kind: Kind, slot: Arc<Slot>) {
        if slot.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.clone();
        let appid = appid.clone();
        tokio::spawn(async move {
            match engine.inner.store.credential(&appid, kind).await {
                Ok(record) => {
                    let now = engine.now();
                    match record.and_then(|r| r.credential.map(|c| (c, r.version))) {
                        Some((c, version)) if engine.satisfies(&slot, &c, now, &Need::Serve) => {
                            slot.set(Arc::new(c), version, now);
                        }
                        // Nothing servable is stored (the app was deleted, say): stop serving
                        // from memory and let the next request take the slow path.
                        _ => slot.clear(),
                    }
                }
                Err(e) => debug!(%appid, %kind, error = %e, "cache check failed"),
            }
            slot.checking.store(false, Ordering::Release);
        });
    }

    /// The slow path. Under the slot's lock: memory, then the database, then the lease.
    ///
    /// Boxed as `dyn Send` because a ticket's refresh recurses into its token's.
    fn fill<'a>(
        &'a self,
        appid: &'a AppId,
        kind: Kind,
        slot: &'a Arc<Slot>,
        need: Need,
    ) -> BoxedResult<'a> {
        Box::pin(self.fill_unboxed(appid, kind, slot, need))
    }

    async fn fill_unboxed(
        &self,
        appid: &AppId,
        kind: Kind,
        slot: &Arc<Slot>,
        need: Need,
    ) -> Result<Arc<Credential>, Error> {
        let _flight = slot.flight.lock().await;
        let config = &self.inner.config;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(config.lease_ms)
            + Duration::from_secs(5);
        loop {
            let now = self.now();
            let cached = slot.cached();
            if let Some(c) = &cached
                && self.satisfies(slot, c, now, &need)
                && slot.unchecked_for(now) < config.cache_check_ms as i64
            {
                return Ok(c.clone());
            }
            let record = match self.inner.store.credential(appid, kind).await {
                Ok(record) => record,
                Err(e) => {
                    // The database is away: what memory holds stays good for a while, since
                    // nobody can replace it without the database either.
                    if let Some(c) = cached
                        && self.satisfies(slot, &c, now, &need)
                        && slot.unchecked_for(now) < self.trust_ms()
                    {
                        return Ok(c);
                    }
                    return Err(e);
                }
            };
            let Some(app) = self.inner.store.app(appid).await? else {
                // Keep no slot for an appid nobody registered, or a flood of made-up appids would
                // grow the map without bound.
                self.forget(appid);
                return Err(Error::UnknownApp(appid.clone()));
            };
            if !app.info.kind.has(kind) {
                self.forget(appid);
                return Err(Error::InvalidInput(format!(
                    "{appid} is a {} app; WeChat issues no {kind} to those",
                    app.info.kind.as_str()
                )));
            }
            self.settle_margin(slot, &app, kind);
            let version = record.as_ref().map_or(0, |r| r.version);
            if let Some(c) = record.as_ref().and_then(|r| r.credential.as_ref())
                && self.satisfies(slot, c, now, &need)
            {
                let c = Arc::new(c.clone());
                slot.set(c.clone(), version, now);
                return Ok(c);
            }
            if let Some(r) = &record {
                if r.halted {
                    return Err(Error::Halted {
                        appid: appid.clone(),
                        kind,
                        message: r.message.clone(),
                    });
                }
                if r.retry_at.is_some_and(|at| now < at) {
                    debug!(%appid, %kind, "in backoff; not calling WeChat");
                    return Err(error_from_message(&r.message));
                }
            }
            let owner = format!(
                "{}#{}",
                self.inner.replica,
                self.inner.leases.fetch_add(1, Ordering::Relaxed)
            );
            let ttl = Duration::from_millis(config.lease_ms);
            if self
                .inner
                .store
                .try_lease(appid, kind, &owner, ttl, now)
                .await?
            {
                metrics::counter!("wetoken_lease_acquired_total", "kind" => kind.name())
                    .increment(1);
                // The refresh runs in a task of its own: a caller that goes away must not strand
                // the lease or lose a value WeChat has already issued.
                let engine = self.clone();
                let slot = slot.clone();
                let need = need.clone();
                let span = tracing::info_span!("refresh", appid = %appid, kind = %kind);
                return tokio::spawn(
                    async move {
                        engine
                            .refresh_under_lease(app, kind, &slot, &need, &owner)
                            .await
                    }
                    .instrument(span),
                )
                .await
                .map_err(|e| Error::Database(format!("refresh task failed: {e}")))?;
            }
            // Another replica (or another request here, through a different slot) holds the
            // lease: wait for its result in the database rather than calling WeChat.
            metrics::counter!("wetoken_lease_waits_total", "kind" => kind.name()).increment(1);
            let seen = record.as_ref().map(|r| (r.version, r.refresh_time));
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable(
                        "another replica is refreshing this credential and has not finished".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(config.lease_poll_ms)).await;
                let Some(r) = self.inner.store.credential(appid, kind).await? else {
                    break;
                };
                if Some((r.version, r.refresh_time)) != seen || !r.leased {
                    break;
                }
            }
        }
    }

    /// Holding the lease `owner`: look once more, fetch, store fenced, give the lease back.
    async fn refresh_under_lease(
        &self,
        app: App,
        kind: Kind,
        slot: &Slot,
        need: &Need,
        owner: &str,
    ) -> Result<Arc<Credential>, Error> {
        let store = &self.inner.store;
        let appid = &app.info.appid;
        let release = || async {
            if let Err(e) = store.release_lease(appid, kind, owner).await {
                warn!(%appid, %kind, error = %e, "could not release the lease; it lapses by itself");
            }
        };
        // The previous holder may have stored its result between our read and our lease.
        let record = match store.credential(appid, kind).await {
            Ok(r) => r,
            Err(e) => {
                release().await;
                return Err(e);
            }
        };
        let now = self.now();
        let version = record.as_ref().map_or(0, |r| r.version);
        if let Some(c) = record.as_ref().and_then(|r| r.credential.as_ref())
            && self.satisfies(slot, c, now, need)
        {
            release().await;
            let c = Arc::new(c.clone());
            slot.set(c.clone(), version, now);
            return Ok(c);
        }
        // A stable token reported bad while it is still the current one: only a forced refresh
        // replaces it, and WeChat allows 20 a day, 30 s apart.
        let current = record.as_ref().and_then(|r| r.credential.as_ref());
        let force = kind == Kind::AccessToken
            && app.info.kind != AppKind::Work
            && app.info.token_mode == TokenMode::Stable
            && matches!(need, Need::Replace(failed) if current.is_some_and(|c| c.value == *failed));
        let mut forced_today = 0;
        if force {
            match self.force_allowed(appid, now).await {
                Ok(count) => forced_today = count + 1,
                Err(e) => {
                    release().await;
                    return Err(e);
                }
            }
        }
        let started = self.now();
        let timer = std::time::Instant::now();
        let fetched = self.fetch(&app, kind, force).await;
        metrics::histogram!("wetoken_refresh_seconds", "kind" => kind.name())
            .record(timer.elapsed().as_secs_f64());
        if force && fetched.is_ok() {
            let day = wechat_day(started);
            if let Err(e) = store.record_force(appid, &day, forced_today, started).await {
                warn!(error = %e, "could not count a forced stable token");
            }
        }
        match fetched {
            Ok(issued) => {
                let credential = Arc::new(Credential {
                    value: issued.value,
                    expires_at: started + TimeDelta::seconds(issued.expires_in as i64),
                });
                let now = self.now();
                match store
                    .save_credential(appid, kind, &credential, (owner, version), now)
                    .await
                {
                    Ok(true) => {
                        slot.set(credential.clone(), version + 1, now);
                        info!(expires_at = %credential.expires_at, "refreshed");
                        Ok(credential)
                    }
                    Ok(false) => {
                        // Our lease lapsed and another replica stored a newer value: it wins.
                        warn!(
                            "lease lapsed during the refresh; a newer value is stored, keeping it"
                        );
                        let newer = store
                            .credential(appid, kind)
                            .await?
                            .and_then(|r| r.credential.map(|c| (c, r.version)));
                        match newer {
                            Some((c, v)) if self.satisfies(slot, &c, now, &Need::Serve) => {
                                let c = Arc::new(c);
                                slot.set(c.clone(), v, now);
                                Ok(c)
                            }
                            _ => Ok(credential),
                        }
                    }
                    Err(e) => {
                        // Serve it even though it could not be stored: it is valid, and WeChat
                        // has already retired the previous one.
                        warn!(error = %e, "fetched a credential but could not store it");
                        slot.set(credential.clone(), version, now);
                        release().await;
                        Ok(credential)
                    }
                }
            }
            Err(FetchError::Other(e)) => {
                release().await;
                Err(e)
            }
            Err(FetchError::Upstream(e)) => {
                let failures = record.as_ref().map_or(0, |r| r.failures).saturating_add(1);
                Err(self.failed(appid, kind, owner, failures, e).await)
            }
        }
    }

    /// Records a failed fetch, with when any replica may try next, and gives the lease back.
    async fn failed(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        failures: i32,
        e: UpstreamError,
    ) -> Error {
        let now = self.now();
        let halted = e.is_fatal();
        let factor = rand::rng().random_range(0.5..=1.0);
        let delay = self
            .inner
            .config
            .backoff(failures.max(1) as u32, e.is_quota(), factor);
        let message = e.message();
        let failure = Failure {
            message: &message,
            halted,
            failures,
            retry_at: (!halted).then_some(now + delay),
        };
        if let Err(db) = self
            .inner
            .store
            .record_failure(appid, kind, &failure, owner, now)
            .await
        {
            warn!(error = %db, "could not record a failed refresh; the lease lapses by itself");
        }
        match &e {
            UpstreamError::Refused { errcode, errmsg } if halted => {
                warn!(
                    errcode,
                    "WeChat refused for good; refreshing stops until the app's settings change"
                );
                Error::Halted {
                    appid: appid.clone(),
                    kind,
                    message: format!("{errcode}: {errmsg}"),
                }
            }
            UpstreamError::Refused { errcode, errmsg } => {
                warn!(
                    errcode,
                    failures,
                    retry_in_ms = delay.num_milliseconds(),
                    "refresh refused"
                );
                Error::Refused {
                    errcode: *errcode,
                    errmsg: errmsg.clone(),
                }
            }
            other => {
                warn!(error = %other, failures, retry_in_ms = delay.num_milliseconds(), "refresh failed");
                Error::Unavailable(other.to_string())
            }
        }
    }

    /// How many stable tokens `appid` forced today, if one more is within WeChat's limits.
    async fn force_allowed(&self, appid: &AppId, now: DateTime<Utc>) -> Result<i32, Error> {
        let (count, last) = self.inner.store.forces(appid, &wechat_day(now)).await?;
        if count >= FORCES_PER_DAY {
            return Err(Error::ForceLimited(format!(
                "{appid}'s stable token was forced {count} times today and WeChat allows \
                 {FORCES_PER_DAY}; not calling WeChat"
            )));
        }
        if let Some(last) = last
            && now - last < TimeDelta::seconds(FORCE_SPACING_SECS)
        {
            return Err(Error::ForceLimited(format!(
                "{appid}'s stable token was forced {} s ago and WeChat allows one every \
                 {FORCE_SPACING_SECS} s; not calling WeChat",
                (now - last).num_seconds()
            )));
        }
        Ok(count)
    }

    /// Awaits one WeChat call and accounts for it: the calls counter and latency histogram,
    /// and the app's count of calls today in the database.
    async fn upstream(
        &self,
        app: &App,
        endpoint: &'static str,
        call: impl Future<Output = Result<Issued, UpstreamError>>,
    ) -> Result<Issued, UpstreamError> {
        let _permit = self.inner.upstream.acquire().await;
        let started = std::time::Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(UpstreamError::Refused { errcode, .. }) => errcode.to_string(),
            Err(UpstreamError::Status(status)) => format!("http_{status}"),
            Err(UpstreamError::Transport(_)) => "unreachable".to_owned(),
            Err(UpstreamError::Malformed(_)) => "malformed".to_owned(),
        };
        metrics::counter!(
            "wetoken_upstream_calls_total",
            "appid" => app.info.appid.to_string(),
            "endpoint" => endpoint,
            "result" => outcome,
        )
        .increment(1);
        metrics::histogram!("wetoken_upstream_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = self
            .inner
            .store
            .count_call(&app.info.appid, &wechat_day(self.now()))
            .await
        {
            debug!(error = %e, "could not count an upstream call");
        }
        result
    }

    /// One upstream fetch of `kind` for `app`; `force` forces a new stable token.
    ///
    /// A ticket needs a token: if WeChat rejects the one held, the token is refreshed once (as a
    /// passive refresh, so concurrent rejections share it) and the ticket call tried once more.
    async fn fetch(&self, app: &App, kind: Kind, force: bool) -> Result<Issued, FetchError> {
        let wechat = &self.inner.wechat;
        if kind == Kind::AccessToken {
            let issued = match (app.info.kind, app.info.token_mode, &app.info.work) {
                (AppKind::Work, _, Some(work)) => {
                    let call = wechat.work_token(&work.corpid, &app.secret);
                    self.upstream(app, "work_token", call).await
                }
                (AppKind::Work, _, None) => {
                    return Err(FetchError::Other(Error::Database(format!(
                        "WeCom app {} has no corpid stored",
                        app.info.appid
                    ))));
                }
                (_, TokenMode::Stable, _) => {
                    let call = wechat.stable_token(&app.info.appid, &app.secret, force);
                    self.upstream(app, "stable_token", call).await
                }
                (_, TokenMode::Classic, _) => {
                    let call = wechat.access_token(&app.info.appid, &app.secret);
                    self.upstream(app, "token", call).await
                }
            };
            return issued.map_err(FetchError::Upstream);
        }
        let ticket = |token: Arc<Credential>| async move {
            match (app.info.kind, kind) {
                (AppKind::Work, _) => {
                    let call = wechat.work_jsapi_ticket(&token.value);
                    self.upstream(app, "work_ticket", call).await
                }
                (_, Kind::CardTicket) => {
                    let call = wechat.ticket(&token.value, "wx_card");
                    self.upstream(app, "ticket", call).await
                }
                _ => {
                    let call = wechat.ticket(&token.value, "jsapi");
                    self.upstream(app, "ticket", call).await
                }
            }
        };
        let token = self
            .get(&app.info.appid, Kind::AccessToken)
            .await
            .map_err(FetchError::Other)?;
        match ticket(token.clone()).await {
            Err(e) if e.is_token_rejected() => {
                warn!(error = %e, "WeChat rejected the token; refreshing it once");
                let token = self
                    .refresh(&app.info.appid, Kind::AccessToken, &token.value)
                    .await
                    .map_err(FetchError::Other)?;
                ticket(token).await.map_err(FetchError::Upstream)
            }
            other => other.map_err(FetchError::Upstream),
        }
    }

    /// How many scans the scheduler has finished in this process, whether or not they found
    /// anything due or could reach the database. A number that stops growing means a stuck
    /// scheduler. A scan counts as finished once it has started every refresh it found due; those
    /// refreshes may still be running.
    pub fn sweeps(&self) -> u64 {
        self.inner.sweeps.load(Ordering::Acquire)
    }

    /// Renews every app's credentials ahead of expiry until `shutdown` resolves.
    ///
    /// Every `scan_interval_ms` it asks the database which credentials are missing or near their
    /// renewal point, and refreshes those with at most `concurrency` at once, starting at most
    /// `max_refresh_rate` a second. Each app's renewal
    /// point is `refresh_ahead_secs` plus a share of `jitter_secs` fixed by its appid, so refreshes
    /// spread out. Failures are recorded and backed off; the loop itself never stops on one.
    /// Refreshes under way when `shutdown` resolves are finished, so no fetched value is lost.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        let semaphore = Arc::new(Semaphore::new(self.inner.config.concurrency));
        let mut running = JoinSet::new();
        let interval = Duration::from_millis(self.inner.config.scan_interval_ms);
        let mut pace = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(self.inner.config.max_refresh_rate),
        ));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = self.sweep(&semaphore, &mut pace, &mut running) => {}
            }
            self.inner.sweeps.fetch_add(1, Ordering::Release);
            metrics::counter!("wetoken_scheduler_sweeps_total").increment(1);
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        while running.join_next().await.is_some() {}
        debug!("scheduler stopped");
    }

    async fn sweep(
        &self,
        semaphore: &Arc<Semaphore>,
        pace: &mut tokio::time::Interval,
        running: &mut JoinSet<()>,
    ) {
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
            for crate::store::Due {
                appid,
                expires_at,
                token_mode,
            } in due
            {
                let threshold = if kind == Kind::AccessToken && token_mode == TokenMode::Stable {
                    TimeDelta::seconds(STABLE_RENEW_SECS)
                } else {
                    config.renew_threshold(&appid, kind)
                };
                if expires_at.is_some_and(|at| at - now > threshold) {
                    continue;
                }
                pace.tick().await;
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
