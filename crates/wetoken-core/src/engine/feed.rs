//! The change feed's reader: one task per engine that asks the database every
//! `cache_check_ms / 2` which credentials changed since the last change it saw, and drops what
//! this process caches of them. Its last successful poll vouches for every other cached value
//! (`Engine::unchecked_for`), so a process with any number of cached credentials makes one query
//! per interval. `docs/ARCHITECTURE.md` ("Cache coherence") is the reasoning.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::TimeDelta;
use tracing::{debug, warn};

use super::{Engine, Inner};

/// How many changes one query reads; a poll reads on until it has them all.
const PAGE: u64 = 1000;

/// How long changes are kept in `wetoken_change`: far longer than `cache_trust_secs`, after
/// which a replica that could not read the feed drops its whole cache anyway.
const KEEP: TimeDelta = TimeDelta::hours(1);

/// How often a replica prunes the changes older than [`KEEP`], in polls.
const PRUNE_EVERY: u64 = 600;

/// The feed reader's state.
pub(super) struct Feed {
    /// The number of the last change applied; -1 until the first poll.
    pub(super) cursor: AtomicI64,
    /// When the last successful poll began (engine clock, Unix ms); 0 before the first.
    pub(super) polled_ms: AtomicI64,
    /// Whether the reader task runs.
    started: AtomicBool,
    /// Polls made, for pruning.
    polls: AtomicI64,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            cursor: AtomicI64::new(-1),
            polled_ms: AtomicI64::new(0),
            started: AtomicBool::new(false),
            polls: AtomicI64::new(0),
        }
    }
}

impl Engine {
    /// Starts the feed's reader, once, if a tokio runtime is at hand (else the next call from
    /// within one does).
    pub(super) fn start_feed(&self) {
        if self.inner.feed.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.feed.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = Duration::from_millis((self.inner.config.cache_check_ms / 2).max(1));
        runtime.spawn(read_feed(weak, every));
    }

    /// How long ago the change feed's last successful poll began, while that is within
    /// `cache_trust_secs`: until then, what this process caches is served without the
    /// database (a readiness probe's answer while the database is away). `None` before the
    /// first poll and once the cache is no longer trusted.
    pub fn cache_checked_ago(&self) -> Option<Duration> {
        let polled = self.inner.feed.polled_ms.load(Ordering::Acquire);
        let ago = (self.now().timestamp_millis() - polled).max(0);
        (polled > 0 && ago < self.trust_ms()).then(|| Duration::from_millis(ago as u64))
    }

    /// One poll: applies every change since the cursor. On the first poll, or after failing
    /// for longer than `cache_trust_secs`, there is nothing to catch up from: it drops the
    /// whole cache and starts from the last change committed.
    pub(super) async fn poll_feed(&self) {
        let feed = &self.inner.feed;
        let store = &self.inner.store;
        let started = self.now().timestamp_millis();
        let polled = feed.polled_ms.load(Ordering::Acquire);
        let mut cursor = feed.cursor.load(Ordering::Acquire);
        if cursor < 0 || started - polled > self.trust_ms() {
            match store.change_cursor().await {
                Ok(last) => {
                    self.drop_cache();
                    feed.cursor.store(last, Ordering::Release);
                    feed.polled_ms.store(started, Ordering::Release);
                    if cursor >= 0 {
                        warn!(
                            "the change feed was unreadable for longer than cache_trust_secs; the cache starts afresh"
                        );
                    }
                }
                Err(e) => debug!(error = %e.chain(), "could not read the change feed"),
            }
            return;
        }
        loop {
            let changes = match store.changes_since(cursor, PAGE).await {
                Ok(changes) => changes,
                Err(e) => {
                    debug!(error = %e.chain(), "could not read the change feed");
                    return;
                }
            };
            if changes.first().is_some_and(|c| c.seq != cursor + 1) {
                // Changes were pruned before this process read them: start afresh.
                feed.cursor.store(-1, Ordering::Release);
                return;
            }
            let last_page = (changes.len() as u64) < PAGE;
            for change in changes {
                let slot = self.inner.slots[change.kind.index()]
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(change.appid.as_str())
                    .cloned();
                if let Some(slot) = slot {
                    slot.changed(change.seq);
                }
                cursor = change.seq;
                feed.cursor.store(cursor, Ordering::Release);
            }
            if last_page {
                break;
            }
        }
        feed.polled_ms.store(started, Ordering::Release);
        if feed.polls.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY as i64 == 0 {
            let before = self.now() - KEEP;
            if let Err(e) = store.prune_changes(before).await {
                debug!(error = %e.chain(), "could not prune the change feed");
            }
        }
    }

    /// Forgets every cached value (the slots stay, with their locks).
    fn drop_cache(&self) {
        for map in &self.inner.slots {
            for slot in map.read().unwrap_or_else(|e| e.into_inner()).values() {
                slot.clear();
            }
        }
    }
}

/// The reader task: polls every `every` while the engine lives.
async fn read_feed(engine: Weak<Inner>, every: Duration) {
    loop {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        Engine { inner }.poll_feed().await;
        tokio::time::sleep(every).await;
    }
}
