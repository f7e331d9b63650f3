//! What one connection may hold: a slot of `max_connections` and of its address's
//! `max_connections_per_address`, and how long it may stay open with no request in progress.
//!
//! hyper's HTTP/2 server keeps a connection open for as long as the peer answers its pings, with
//! no stream open or not, so a client could hold its slot for ever with one request; and one
//! address could take every slot. [`Streams`] counts a connection's requests in progress (from
//! the call of the service until its answer's body is dropped, sent or abandoned) so that the
//! server can close it, with a GOAWAY, once none has been for `idle_timeout_secs`; and
//! [`AddressSlots`] bounds the connections one source address holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The requests in progress on one connection, and when the last one ended.
pub(crate) struct Streams {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// What [`Streams::idle`] found.
pub(crate) enum Idle {
    /// No request has been in progress since `idle_timeout` ago or longer: close.
    Expired,
    /// Look again at this instant.
    CheckAt(Instant),
}

impl Streams {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// A request begins; it ends when the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Whether the connection has had no request in progress for `timeout`.
    pub(crate) fn idle(&self, timeout: Duration) -> Idle {
        let now = Instant::now();
        if self.open.load(Ordering::Acquire) > 0 {
            return Idle::CheckAt(now + timeout);
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        match since + timeout {
            at if at <= now => Idle::Expired,
            at => Idle::CheckAt(at),
        }
    }
}

/// A request in progress: it travels from the service call into the answer's body.
pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The time first, then the count: whoever sees the count at 0 sees this time.
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that holds its request's [`StreamGuard`] until hyper drops it: once sent,
/// or once the peer gave up on it.
pub(crate) struct Tracked<B> {
    body: B,
    _open: StreamGuard,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, open: StreamGuard) -> Self {
        Self { body, _open: open }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connections each source address holds: an IPv4 address, or an IPv6 address's /64 (what
/// one host is usually given).
pub(crate) struct AddressSlots {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `peer`, unless it holds `limit` already.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let key = source(peer);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: self.clone(),
            key,
        })
    }
}

/// What counts as one source: the address itself, or an IPv6 address's /64.
fn source(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One connection's slot of its address's share; given back on drop.
pub(crate) struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Why a connection was refused at once.
#[derive(Clone, Copy)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    Total,
    /// Its address holds `max_connections_per_address`.
    PerAddress,
}

impl Refusal {
    /// The `limit` label of `wetoken_connections_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerAddress => "max_connections_per_address",
        }
    }
}

/// Refused connections are counted always, and logged at most once per [`RefusalLog::EVERY`]:
/// a flood of them must not flood the log.
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Self {
            last: None,
            unlogged: 0,
        }
    }

    pub(crate) fn refused(&mut self, why: Refusal, peer: IpAddr) {
        metrics::counter!("wetoken_connections_refused_total", "limit" => why.label()).increment(1);
        if let Some(refused) = self.due(Instant::now()) {
            tracing::warn!(
                %peer,
                limit = why.label(),
                refused,
                "connections refused over a limit (the count since the last such line, at most one per 10 s; this one's peer and limit)"
            );
        }
    }

    /// Counts a refusal at `now`; the number to log, refusals since the last line included,
    /// when a line is due.
    fn due(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|last| now < last + Self::EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_limit_and_gets_slots_back() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(slots.take(a).is_none());
        assert!(slots.take(b).is_some(), "another address has its own share");
        drop(first);
        assert!(slots.take(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let slots = AddressSlots::new(1);
        let _one = slots.take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(slots.take("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(slots.take("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _v4 = slots.take("10.0.0.1".parse().unwrap()).unwrap();
        assert!(slots.take("::ffff:10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_flood_of_refusals_is_logged_once_per_period_with_its_count() {
        let mut log = RefusalLog::new();
        let start = Instant::now();
        assert_eq!(log.due(start), Some(1), "the first is logged at once");
        let quiet = (1..1000)
            .map(|i| log.due(start + Duration::from_millis(i)))
            .filter(Option::is_some)
            .count();
        assert_eq!(quiet, 0, "no line within the period");
        assert_eq!(log.due(start + RefusalLog::EVERY), Some(1000));
        assert_eq!(log.due(start + RefusalLog::EVERY * 3), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let streams = Streams::new();
        let timeout = Duration::from_secs(5);
        let open = streams.begin();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(streams.idle(timeout), Idle::CheckAt(_)), "open");
        drop(open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(streams.idle(timeout), Idle::CheckAt(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(streams.idle(timeout), Idle::Expired));
    }
}
