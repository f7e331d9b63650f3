//! What this process holds of each credential: a [`Slot`] per (app, kind) with the value served,
//! when it last matched the database, and the async mutex that makes refreshes in this process
//! single-flight; whether a held value satisfies a caller ([`Need`]); and the background check
//! that keeps the cache coherent with other replicas' writes.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Mutex;

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
    /// One with more than this left: a scheduled renewal, which takes its turn of its
    /// scheduler's pace (if any) before it calls WeChat.
    Ahead(TimeDelta, Option<Arc<super::scheduler::Pace>>),
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
    /// What asked for the refresh, as its history keeps it.
    pub(super) fn cause(&self) -> crate::store::RefreshCause {
        use crate::store::RefreshCause;
        match self {
            Need::Serve => RefreshCause::Request,
            Need::Ahead(..) => RefreshCause::Scheduled,
            Need::Replace { why, .. } => match why {
                Why::Report(_) => RefreshCause::Passive,
                Why::Rejected => RefreshCause::Rejected,
                Why::Forced => RefreshCause::Forced,
            },
        }
    }

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
    /// The credential served, and what the change feed knows about it.
    pub(super) held: RwLock<Held>,
    /// When `held` was last known to match the database (engine clock, Unix ms): when the read
    /// that produced it began. 0 when it must not be trusted without a read. The change feed's
    /// last poll vouches for it from then on (`Engine::unchecked_for`).
    pub(super) checked_ms: AtomicI64,
    /// Life a served value must have left, in ms; 0 until the app is known (then the configured
    /// margin applies).
    pub(super) margin_ms: AtomicI64,
    /// Held while this process looks for, waits for or fetches a new value.
    pub(super) flight: Mutex<()>,
    /// When a report WeChat contradicted was last logged at warn (engine clock, Unix ms), so
    /// that a caller stuck in a loop leaves one line a minute, not one per report.
    pub(super) warned_ms: AtomicI64,
}

/// The value a slot holds, with the change numbers that say whether it can be trusted.
#[derive(Default)]
pub(super) struct Held {
    /// The credential served, with the stored version it came with.
    pub(super) value: Option<(Arc<Credential>, i64)>,
    /// The change feed's cursor when the read that produced `value` began (or the number of the
    /// change this process itself wrote): every change up to it is reflected in `value`.
    pub(super) seen_seq: i64,
    /// The highest change number the feed reported for this credential.
    pub(super) changed_seq: i64,
}

/// When a value was read, and how far the change feed had got then.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// When the read began (engine clock, Unix ms).
    pub(super) ms: i64,
    /// The change feed's cursor then, or the number of the change just written.
    pub(super) seq: i64,
}

impl Slot {
    pub(super) fn cached(&self) -> Option<Arc<Credential>> {
        self.held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .value
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    /// Installs `credential`, read (or written) as `seen` says. If the feed has meanwhile
    /// reported a change newer than the read, the value is kept but not trusted: the next
    /// request reads the database.
    pub(super) fn set(&self, credential: Arc<Credential>, version: i64, seen: Seen) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        held.value = Some((credential, version));
        held.seen_seq = seen.seq;
        let trusted = held.changed_seq <= seen.seq;
        self.checked_ms
            .store(if trusted { seen.ms } else { 0 }, Ordering::Release);
    }

    /// What the feed does with change `seq` of this credential: drops the value unless it was
    /// read after the change.
    pub(super) fn changed(&self, seq: i64) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        held.changed_seq = held.changed_seq.max(seq);
        if seq > held.seen_seq {
            held.value = None;
            self.checked_ms.store(0, Ordering::Release);
        }
    }

    /// Forgets the value.
    pub(super) fn clear(&self) {
        self.held.write().unwrap_or_else(|e| e.into_inner()).value = None;
        self.checked_ms.store(0, Ordering::Release);
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

    /// Milliseconds since `slot`'s value was last known to match the database: since it was
    /// read, or since the change feed's last poll began, whichever is later. A value the feed
    /// said changed counts as never checked.
    pub(super) fn unchecked_for(&self, slot: &Slot, now: DateTime<Utc>) -> i64 {
        let checked = slot.checked_ms.load(Ordering::Acquire);
        if checked == 0 {
            return i64::MAX;
        }
        let polled = self.inner.feed.polled_ms.load(Ordering::Acquire);
        now.timestamp_millis() - checked.max(polled)
    }

    /// When a read beginning now is taken: the engine's clock and the feed's cursor.
    pub(super) fn seen_now(&self, now: DateTime<Utc>) -> Seen {
        Seen {
            ms: now.timestamp_millis(),
            seq: self.inner.feed.cursor.load(Ordering::Acquire),
        }
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
            Need::Ahead(threshold, _) => left > *threshold,
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
}
