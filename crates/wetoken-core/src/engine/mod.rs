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
//!
//! The engine is split by concern:
//! - this file: the [`Engine`] handle, its shared state, and what callers ask of it
//!   ([`Engine::get`], [`Engine::stored`], [`Engine::refresh`], [`Engine::force_refresh`]);
//! - `config`: [`EngineConfig`], its validation, backoff and renewal points;
//! - `slot`: what this process holds of each credential, and the background cache check;
//! - `refresh`: the slow path under the slot's lock, the lease, the fenced write, recorded
//!   failures;
//! - `upstream`: the calls to WeChat and their accounting;
//! - `scheduler`: renewing ahead of expiry;
//! - `apps`: adding, changing and listing apps, the secret digests, `wx.config` signing.

mod apps;
mod config;
mod feed;
mod guard;
mod open;
mod refresh;
mod scheduler;
mod slot;
mod upstream;

pub use apps::{AppStatus, JssdkConfig};
pub use config::EngineConfig;
pub(crate) use guard::OVER_BUDGET_ERRCODE;
pub use guard::Reporter;
pub use open::{REFRESH_TOKEN_INVALID, VERIFY_TICKET_LIFETIME};
pub use upstream::UPSTREAM_ENDPOINTS;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::Semaphore;

use self::slot::{Need, Slot, Why};
use crate::Error;
use crate::clock::Clock;
use crate::keys::SecretDigests;
use crate::model::{AppId, Credential, Kind};
use crate::store::Store;
use crate::wechat::WeChat;

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
    /// The change feed's reader.
    feed: feed::Feed,
    /// The last totals by state read for the status page and the scrape, and when (engine
    /// clock, Unix ms): at 100,000 apps they cost a pass over three indexes.
    pub(crate) totals: crate::facade::TotalsCache,
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
        // A scheduled renewal waits for its turn of the pace holding its lease, at worst
        // `concurrency` turns; past half the lease it gives the credential up until the next scan.
        let worst_turn_ms = config.concurrency as f64 * 1000.0 / f64::from(config.max_refresh_rate);
        if worst_turn_ms > config.lease_ms as f64 / 2.0 {
            tracing::warn!(
                concurrency = config.concurrency,
                max_refresh_rate = config.max_refresh_rate,
                lease_ms = config.lease_ms,
                "refresh.concurrency / refresh.max_refresh_rate is over half of refresh.lease_ms: \
                 scheduled renewals may give up their turn and wait for the next scan; \
                 lower concurrency or raise max_refresh_rate"
            );
        }
        let upstream = Semaphore::new(config.max_upstream_concurrency);
        let engine = Self {
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
                feed: feed::Feed::default(),
                totals: Default::default(),
            }),
        };
        engine.start_feed();
        Ok(engine)
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

    pub(crate) fn inner_totals(&self) -> &crate::facade::TotalsCache {
        &self.inner.totals
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// How many times this process has tried to take a refresh lease (each attempt is a write
    /// to the database, whether or not it got the lease).
    pub fn lease_attempts(&self) -> u64 {
        self.inner.leases.load(std::sync::atomic::Ordering::Relaxed)
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
            && self.unchecked_for(&slot, now) < self.trust_ms()
        {
            // Checked within `cache_check_ms`, or the change feed is behind but the value is
            // still within `cache_trust_secs` of its last check: the feed's next poll settles
            // it (the feed starts here if the engine was made outside a runtime).
            self.start_feed();
            return Ok(c);
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
            && self.unchecked_for(&slot, now) < self.inner.config.cache_check_ms as i64
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

    /// A caller's report that WeChat rejected `failed`: the passive refresh, behind the quota
    /// guard.
    ///
    /// - If `failed` is no longer the current value, the current one is returned without
    ///   calling WeChat. So any number of callers reporting one bad value, on any number of
    ///   replicas, cause at most one fetch.
    /// - If it is the current access token, WeChat is asked whether it really rejects it
    ///   (`get_api_domain_ip`, which spends no token quota) before anything is fetched; its
    ///   answer is shared by every replica for `report_check_secs`. A token WeChat accepts is
    ///   returned as it is, and `by` is named in the log.
    /// - A current ticket is replaced only once it is `ticket_report_min_age_secs` old.
    /// - A fetch stops at the app's daily budget less the reserve for scheduled renewals
    ///   ([`Error::OverBudget`]); a forced stable token, at `by`'s share of the day's 20.
    pub async fn report(
        &self,
        appid: &AppId,
        kind: Kind,
        failed: &str,
        by: &Reporter,
    ) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        let need = Need::replace(failed, Why::Report(by.clone()));
        self.fill(appid, kind, &slot, need).await
    }

    /// [`Engine::report`] by code that embeds the engine ([`Reporter::Embedded`]).
    pub async fn refresh(
        &self,
        appid: &AppId,
        kind: Kind,
        failed: &str,
    ) -> Result<Arc<Credential>, Error> {
        self.report(appid, kind, failed, &Reporter::Embedded).await
    }

    /// Replaces `failed`, which WeChat itself rejected in answer to a call of wetoken's: no
    /// check first, and the whole budget applies.
    pub(crate) async fn replace_rejected(
        &self,
        appid: &AppId,
        kind: Kind,
        failed: &str,
    ) -> Result<Arc<Credential>, Error> {
        let slot = self.slot(appid, kind);
        self.fill(appid, kind, &slot, Need::replace(failed, Why::Rejected))
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
            Some(c) => {
                let slot = self.slot(appid, kind);
                self.fill(appid, kind, &slot, Need::replace(&c.value, Why::Forced))
                    .await
            }
            None => self.get(appid, kind).await,
        }
    }
}
