//! The passive-refresh route's rate limit: a token bucket per consumer key (or, while no keys
//! exist, per caller address), so that one caller stuck in a loop cannot keep the engine's
//! checks busy. The engine's quota guard is what holds cluster-wide; these buckets are per
//! replica.
//!
//! Only reports the engine declines are charged: a report of a value WeChat still accepts (or
//! of a ticket younger than the minimum age). A report that ends in a new value, or names one
//! already replaced, costs nothing, so however many services report a token that really died,
//! none is refused. Reads never touch the buckets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wetoken_core::RefreshLimit;

/// The most buckets kept; past it, full ones are forgotten (a full bucket is what a new one
/// would be), and if none is full, all are.
const MAX_BUCKETS: usize = 10_000;

/// Whose bucket a report takes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    /// A consumer key, by id.
    Key(String),
    /// A caller admitted by its address while no keys exist.
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Reports left, fractional while refilling.
    tokens: f64,
    /// When `tokens` was computed.
    at: Instant,
    /// The limit it was made under; a changed limit starts a new, full bucket.
    limit: RefreshLimit,
}

impl Bucket {
    fn full(limit: RefreshLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst()),
            at: now,
            limit,
        }
    }

    /// Refills for the time since the last look.
    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.limit.per_minute()) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.limit.burst()));
        self.at = now;
    }

    fn is_full(&self) -> bool {
        self.tokens >= f64::from(self.limit.burst())
    }
}

/// The buckets of one replica.
pub(crate) struct RefreshLimiter {
    /// The limit of a key without its own, and of every address.
    pub default: RefreshLimit,
    buckets: Mutex<HashMap<Holder, Bucket>>,
}

impl RefreshLimiter {
    pub(crate) fn new(default: RefreshLimit) -> Self {
        Self {
            default,
            buckets: Mutex::default(),
        }
    }

    /// Whether `holder` may report now under `limit`: `Err` says how long until its bucket
    /// holds a report again. Takes nothing: only [`RefreshLimiter::charge`] does.
    pub(crate) fn check(
        &self,
        holder: &Holder,
        limit: RefreshLimit,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(holder) else {
            return Ok(());
        };
        if bucket.limit != limit {
            *bucket = Bucket::full(limit, now);
        }
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let per_sec = f64::from(limit.per_minute()) / 60.0;
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
    }

    /// Takes one report from `holder`'s bucket: a report the engine declined. Never below
    /// empty, so reports that passed [`RefreshLimiter::check`] together cost no more than the
    /// bucket.
    pub(crate) fn charge(&self, holder: Holder, limit: RefreshLimit, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&holder) {
            buckets.retain(|_, b| {
                b.refill(now);
                !b.is_full()
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets
            .entry(holder)
            .or_insert_with(|| Bucket::full(limit, now));
        if bucket.limit != limit {
            *bucket = Bucket::full(limit, now);
        }
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    #[cfg(test)]
    fn take(&self, holder: Holder, limit: RefreshLimit, now: Instant) -> Result<(), Duration> {
        self.check(&holder, limit, now)?;
        self.charge(holder, limit, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Holder {
        Holder::Key(id.into())
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RefreshLimiter::new(RefreshLimit::DEFAULT);
        let limit = RefreshLimit::new(3, 60).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take(key("a"), limit, t0).unwrap();
        }
        let wait = limiter.take(key("a"), limit, t0).unwrap_err();
        assert!(
            (Duration::from_millis(990)..=Duration::from_millis(1010)).contains(&wait),
            "{wait:?}"
        );
        // Another key has its own bucket.
        limiter.take(key("b"), limit, t0).unwrap();
        // One a second refills.
        let t1 = t0 + Duration::from_millis(1_000);
        limiter.take(key("a"), limit, t1).unwrap();
        assert!(limiter.take(key("a"), limit, t1).is_err());
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(3_600);
        for _ in 0..3 {
            limiter.take(key("a"), limit, t2).unwrap();
        }
        assert!(limiter.take(key("a"), limit, t2).is_err());
    }

    #[test]
    fn a_changed_limit_starts_a_full_bucket() {
        let limiter = RefreshLimiter::new(RefreshLimit::DEFAULT);
        let t0 = Instant::now();
        let one = RefreshLimit::new(1, 1).unwrap();
        limiter.take(key("a"), one, t0).unwrap();
        assert!(limiter.take(key("a"), one, t0).is_err());
        let two = RefreshLimit::new(2, 1).unwrap();
        limiter.take(key("a"), two, t0).unwrap();
        limiter.take(key("a"), two, t0).unwrap();
        assert!(limiter.take(key("a"), two, t0).is_err());
    }

    #[test]
    fn buckets_are_bounded() {
        let limiter = RefreshLimiter::new(RefreshLimit::DEFAULT);
        let limit = RefreshLimit::new(1, 1).unwrap();
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 + 500) {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.take(Holder::Address(ip), limit, t0).unwrap();
        }
        let len = limiter.buckets.lock().unwrap().len();
        assert!(len <= MAX_BUCKETS, "{len} buckets");
    }
}
