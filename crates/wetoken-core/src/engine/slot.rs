//! What this process holds of each credential: a [`Slot`] per (app, kind) with the value served,
//! when it last matched the database, and the async mutex that makes refreshes in this process
//! single-flight; whether a held value satisfies a caller ([`Need`]); and the background check
//! that keeps the cache coherent with other replicas' writes.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Mutex;
use tracing::debug;

use super::config::STABLE_MARGIN_SECS;
use super::{Engine, Reporter};
use crate::model::{App, AppId, AppKind, Credential, Kind, TokenMode};

/// What a caller needs of a credential.
#[derive(Clone, Debug)]
pub(super) enum Need {
    /// One with more than the margin left.
    Serve,
    /// One that is servable and is not `failed`: a passive refresh, or a forced one.
    Replace {
        /// The value to replace.
        failed: String,
        /// Who says it must go, which decides what the quota guard asks first.
        why: Why,
    },
    /// One with more than this left (a scheduled renewal).
    Ahead(TimeDelta),
}

/// Why a value is to be replaced.
#[derive(Clone, Debug)]
pub(super) enum Why {
    /// A caller reports that WeChat rejected it. WeChat is asked first (tokens), or the value
    /// must be old enough (tickets); the fetch counts against the budget less the reserve.
    Report(Reporter),
    /// WeChat itself rejected it, in answer to a call of wetoken's (a ticket fetch, a message,
    /// the out-of-band check). Fetched at once, against the whole budget.
    Rejected,
    /// An operator forces a new one. Fetched at once, against the budget less the reserve.
    Forced,
}

impl Need {
    /// Whether a caller or an operator asks for the fetch (it stops at the budget less the
    /// reserve), rather than the credential's own life or WeChat (the whole budget).
    pub(super) fn on_demand(&self) -> bool {
        matches!(
            self,
            Need::Replace {
                why: Why::Report(_) | Why::Forced,
                ..
            }
        )
    }

    /// A replacement of `failed` for `why`.
    pub(super) fn replace(failed: &str, why: Why) -> Self {
        Need::Replace {
            failed: failed.to_owned(),
            why,
        }
    }
}

/// One credential as this process knows it.
#[derive(Default)]
pub(super) struct Slot {
    /// The credential served, with the stored version it came with.
    pub(super) current: RwLock<Option<(Arc<Credential>, i64)>>,
    /// When `current` last matched the database (engine clock, Unix ms).
    pub(super) checked_ms: AtomicI64,
    /// Whether a background check against the database is under way.
    pub(super) checking: AtomicBool,
    /// Life a served value must have left, in ms; 0 until the app is known (then the configured
    /// margin applies).
    pub(super) margin_ms: AtomicI64,
    /// Held while this process looks for, waits for or fetches a new value.
    pub(super) flight: Mutex<()>,
    /// When a report WeChat contradicted was last logged at warn (engine clock, Unix ms), so
    /// that a caller stuck in a loop leaves one line a minute, not one per report.
    pub(super) warned_ms: AtomicI64,
}

impl Slot {
    pub(super) fn cached(&self) -> Option<Arc<Credential>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    pub(super) fn set(&self, credential: Arc<Credential>, version: i64, now: DateTime<Utc>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((credential, version));
        self.checked_ms
            .store(now.timestamp_millis(), Ordering::Release);
    }

    pub(super) fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Milliseconds since the cached value last matched the database.
    pub(super) fn unchecked_for(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp_millis() - self.checked_ms.load(Ordering::Acquire)
    }
}

impl Engine {
    /// How many credentials this process holds slots for (cached or being fetched).
    pub fn cached_credentials(&self) -> usize {
        self.inner
            .slots
            .iter()
            .map(|map| map.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub(super) fn trust_ms(&self) -> i64 {
        self.inner.config.cache_trust_secs as i64 * 1000
    }

    pub(super) fn slot(&self, appid: &AppId, kind: Kind) -> Arc<Slot> {
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
    pub(super) fn forget(&self, appid: &AppId) {
        for map in &self.inner.slots {
            map.write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(appid.as_str());
        }
    }

    pub(super) fn satisfies(
        &self,
        slot: &Slot,
        c: &Credential,
        now: DateTime<Utc>,
        need: &Need,
    ) -> bool {
        let left = c.expires_at - now;
        let margin = match slot.margin_ms.load(Ordering::Acquire) {
            0 => self.inner.config.margin(),
            ms => TimeDelta::milliseconds(ms),
        };
        match need {
            Need::Serve => left > margin,
            Need::Replace { failed, .. } => c.value != *failed && left > margin,
            Need::Ahead(threshold) => left > *threshold,
        }
    }

    /// Settles the margin of a slot once its app is known: a stable token keeps working to the
    /// end of its life (WeChat only issues the next one in the last five minutes, and both stay
    /// valid meanwhile), so it is served until [`STABLE_MARGIN_SECS`] before expiry.
    pub(super) fn settle_margin(&self, slot: &Slot, app: &App, kind: Kind) {
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
    pub(super) fn check_in_background(&self, appid: &AppId, kind: Kind, slot: Arc<Slot>) {
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
                Err(e) => debug!(%appid, %kind, error = %e.chain(), "cache check failed"),
            }
            slot.checking.store(false, Ordering::Release);
        });
    }
}
