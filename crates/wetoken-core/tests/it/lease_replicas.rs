//! The refresh lease of `docs/ARCHITECTURE.md`, driven through the real [`Engine`] and [`Store`]
//! by seeded random schedules: the test that a regression in the engine or the store fails.
//!
//! Each schedule is one credential (an appid of its own) and three replicas. A replica is an
//! [`Engine`] with its own [`Store`] (its own connection pool) on one shared database, running on
//! a tokio runtime of its own, so that killing it (`shutdown_background`) drops its refresh tasks
//! mid-flight without releasing their leases, as `kill -9` of a process would. The lease lasts
//! one second, so a dead holder's lease lapses and is taken over within the schedule.
//!
//! A schedule is a few rounds, each of which needs exactly one new value:
//! - an expiry round moves the clocks (the engines' [`ManualClock`] and the mock's) to five
//!   minutes less one second before the stored value expires, so every replica needs a new one;
//! - a passive round has the replicas report the stored value as rejected
//!   ([`Engine::refresh`]), mixed with plain reads. The mock has really invalidated it: a
//!   report of a value WeChat still accepts is answered with that value and fetches nothing
//!   (the quota guard, tested in `quota_guard`).
//!
//! Every replica makes one to three concurrent calls per round. At random, the round's first
//! WeChat fetch is slow ([`Fault::Delay`], longer than the lease in one round of four), one
//! replica is killed at a random moment and restarted, and both clocks tick forward a second now
//! and then, so that a fetch begun later yields a later expiry.
//!
//! Invariants, checked after every round and by a sampler that reads the row every 20 ms:
//! - one upstream fetch per need (the mock counts fetches), plus at most one per replica killed
//!   and one per call that outlived the lease (only a holder that lost its lease lets another
//!   replica fetch); a round without either fetches exactly once, which is what a broken lease
//!   condition fails;
//! - at most one stored write per round, and the stored row never goes back: its version only
//!   grows, a version never changes its value, and its expiry (the fetch's start plus its
//!   lifetime) never decreases, so no value replaces one fetched later; a broken fence fails
//!   this;
//! - every caller that was not killed gets a value with more than the margin left, never the one
//!   it reported as rejected, and one WeChat (the mock) accepts when it is served: the value
//!   stored in that round; or, for a plain read in a passive round, an earlier value of the same
//!   lifetime; or, after a lapsed lease, what a fenced-out holder fetched.
//!
//! The mock retires a value at once when a second newer one is issued, which is stricter than
//! WeChat's five-minute overlap; an earlier value of the lifetime may meet that, and so may any
//! value of a round that fetched three times or more (leases lapsing one after another on a starved
//! machine: the third fetch retires the first). Those are counted (`strict_refusals`), not failed.
//!
//! Each schedule costs about 0.4 s of CPU, most of it building each replica's TLS-capable
//! WeChat client, so `cargo test` runs 64 schedules on SQLite and 32 on PostgreSQL (about 250
//! and 120 rounds); `WETOKEN_LEASE_SCHEDULES=N` runs more.
//! `WETOKEN_LEASE_SEED=N` runs schedule N alone. `lease_model.rs` checks the protocol's design on
//! a model; this checks the code.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::ConnectionTrait;
use tokio::task::JoinHandle;
use wetoken_core::{
    AppId, Clock, Credential, DatabaseOptions, Engine, EngineConfig, Error, Kind, ManualClock,
    NewApp, Secret, Store, WeChat, WeChatOptions,
};
use wetoken_mock::{Endpoint, Fault, MockWeChat};
use wetoken_testkit::{Backend, TestDb};

const REPLICAS: usize = 3;
const LEASE_MS: u64 = 1_000;
const MARGIN_SECS: u64 = 300;
const LIFETIME_SECS: u64 = 7_200;
/// A delay at least this long makes a fetch outlive its lease, counting database round trips.
const SLOW_MS: u64 = 1_200;
const SECRET: &str = "lease-secret";

fn config() -> EngineConfig {
    EngineConfig {
        margin_secs: MARGIN_SECS,
        lease_ms: LEASE_MS,
        lease_poll_ms: 50,
        ..EngineConfig::default()
    }
}

/// An engine over its own pool on `url`, calling `mock`, reading time from `clock`.
async fn engine(url: String, mock: String, clock: Arc<ManualClock>) -> Engine {
    let mut options = DatabaseOptions::new(url);
    options.max_connections = 2;
    let store = Store::connect(&options).await.expect("connect");
    let wechat = WeChat::new(&WeChatOptions {
        base_url: mock,
        fallback_urls: Vec::new(),
        ..WeChatOptions::default()
    })
    .unwrap();
    Engine::new(store, wechat, clock, config()).unwrap()
}

/// A value a call got, WeChat's verdict on it when served, and how long the call took.
type Served = (Arc<Credential>, serde_json::Value, Duration);

/// One replica: an engine on a runtime of its own.
struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    engine: Engine,
}

impl Replica {
    async fn start(url: &str, mock: &str, clock: &Arc<ManualClock>) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let engine = runtime
            .spawn(engine(url.to_owned(), mock.to_owned(), clock.clone()))
            .await
            .expect("replica starts");
        Replica {
            runtime: Some(runtime),
            engine,
        }
    }

    /// One call on this replica, after `after`: a read, or a passive refresh reporting `failed`.
    /// With the value, WeChat's (the mock's) verdict on it right when it was served.
    fn call(
        &self,
        appid: &AppId,
        failed: Option<String>,
        after: Duration,
        mock: std::net::SocketAddr,
    ) -> JoinHandle<Result<Served, Error>> {
        let (engine, appid) = (self.engine.clone(), appid.clone());
        self.runtime.as_ref().unwrap().spawn(async move {
            tokio::time::sleep(after).await;
            let began = Instant::now();
            let credential = match failed {
                Some(failed) => engine.refresh(&appid, Kind::AccessToken, &failed).await,
                None => engine.get(&appid, Kind::AccessToken).await,
            }?;
            let took = began.elapsed();
            let verdict = verdict(mock, &credential.value).await;
            Ok((credential, verdict, took))
        })
    }

    /// Like `kill -9`: every task of the replica is dropped where it stands, leases and all.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// WeChat's (the mock's) answer to a call with `token`, over a plain HTTP/1.1 request: a
/// reqwest client per replica would cost more than the rest of the schedule.
async fn verdict(mock: std::net::SocketAddr, token: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(mock)
        .await
        .expect("reach the mock");
    let request = format!(
        "GET /cgi-bin/get_api_domain_ip?access_token={token} HTTP/1.1\r\nHost: {mock}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("the mock answered {answer:?}: {e}"))
}

/// The stored state of the schedule's credential.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    version: i64,
    value: String,
    expires_at: DateTime<Utc>,
}

async fn row(observer: &Engine, appid: &AppId) -> Option<Row> {
    let status = observer.app_status(appid).await.expect("read the row");
    let record = status.access_token?;
    let credential = record.credential?;
    Some(Row {
        version: record.version,
        value: credential.value,
        expires_at: credential.expires_at,
    })
}

/// Checks that the stored row never goes back from `before` to `after`.
fn check_step(before: &Option<Row>, after: &Option<Row>) -> Result<(), String> {
    match (before, after) {
        (Some(_), None) => Err("the stored value disappeared".into()),
        (Some(b), Some(a)) if a.version < b.version => Err(format!(
            "the version went back from {} to {}",
            b.version, a.version
        )),
        (Some(b), Some(a)) if a.version == b.version && a.value != b.value => Err(format!(
            "version {} changed its value without a new version",
            a.version
        )),
        (Some(b), Some(a)) if a.expires_at < b.expires_at => Err(format!(
            "version {} (expires {}) replaced version {} (expires {}): a value fetched earlier \
             overwrote one fetched later",
            a.version, a.expires_at, b.version, b.expires_at
        )),
        _ => Ok(()),
    }
}

/// What one schedule did.
#[derive(Default, Debug)]
struct Outcome {
    rounds: u64,
    fetches: u64,
    writes: u64,
    kills: u64,
    slow: u64,
    /// Rounds in which a second fetch took over after a kill or a slow fetch.
    takeovers: u64,
    /// Rounds without a kill or a call longer than the lease: exactly one fetch each.
    clean_rounds: u64,
    /// Earlier values of a lifetime served and then refused by the mock's strict reading.
    strict_refusals: u64,
}

fn advance(clock: &ManualClock, mock: &MockWeChat, by: Duration) {
    clock.advance(by);
    mock.advance(by);
}

async fn schedule(url: &str, observer: &Engine, seed: u64) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mock = Arc::new(MockWeChat::start().await.expect("mock starts"));
    let appid = AppId::parse(&format!("wxlease{seed:05}")).unwrap();
    mock.add_app(appid.as_str(), SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Replica::start(url, &mock.url(), &clock).await);
    }
    observer
        .add_app(&NewApp::mp(appid.clone(), Secret::new(SECRET)))
        .await
        .map_err(|e| e.to_string())?;

    // The sampler: the row, every few milliseconds, must never go back.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler: JoinHandle<Result<(), String>> = tokio::spawn({
        let (observer, appid, stop) = (observer.clone(), appid.clone(), stop.clone());
        async move {
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                let now = row(&observer, &appid).await;
                check_step(&last, &now).map_err(|e| format!("sampler: {e}"))?;
                last = now;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    });

    let mut outcome = Outcome {
        rounds: rng.random_range(3..=5),
        ..Outcome::default()
    };
    let mut stored: Option<Row> = None;
    // The values stored or served since the last expiry round: WeChat issued them less than
    // five minutes ago (mock time), so its overlap covers them even once superseded.
    let mut lifetime = BTreeSet::new();
    for round in 0..outcome.rounds {
        let say = |what: String| format!("seed {seed}, round {round}: {what}");
        let passive = round > 0 && rng.random_ratio(1, 3);
        if round > 0 && !passive {
            advance(
                &clock,
                &mock,
                Duration::from_secs(LIFETIME_SECS - MARGIN_SECS + 1),
            );
            lifetime.clear();
        } else {
            // Time passes between needs, more than `cache_check_ms`, so the replicas look at
            // the database again.
            advance(&clock, &mock, Duration::from_secs(2));
        }
        let started_at = clock.now();
        let reported = stored.as_ref().map(|r| r.value.clone());
        if passive && let Some(value) = &reported {
            mock.invalidate_token(value);
        }
        let calls_before = mock.calls(Endpoint::Token);

        let delay = match rng.random_range(0..8) {
            0 | 1 => Some(rng.random_range(SLOW_MS..1_800)),
            2 | 3 => Some(rng.random_range(20..300)),
            _ => None,
        };
        if let Some(ms) = delay {
            mock.inject(Endpoint::Token, Fault::Delay(Duration::from_millis(ms)), 1);
        }
        let slow = u64::from(delay.is_some_and(|ms| ms >= SLOW_MS));

        let mut calls = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            for _ in 0..rng.random_range(1..=3) {
                let failed = reported
                    .clone()
                    .filter(|_| passive && rng.random_ratio(2, 3));
                let after = Duration::from_millis(rng.random_range(0..40));
                let is_refresh = failed.is_some();
                calls.push((
                    i,
                    is_refresh,
                    replica.call(&appid, failed, after, mock.addr()),
                ));
            }
        }
        // Ticks: the clocks move a second at a time while the round runs, so a fetch begun later
        // gets a later expiry.
        let ticks = tokio::spawn({
            let offsets: Vec<u64> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..1_500))
                .collect();
            let (clock, mock) = (clock.clone(), mock.clone());
            async move {
                let mut offsets = offsets;
                offsets.sort_unstable();
                let begun = tokio::time::Instant::now();
                for at in offsets {
                    tokio::time::sleep_until(begun + Duration::from_millis(at)).await;
                    advance(&clock, &mock, Duration::from_secs(1));
                }
            }
        });
        // A crash: one replica dies at a random moment (while it may hold the lease, or a fetch
        // may be on its way), and a new one takes its place and asks too.
        let mut killed = None;
        let mut kills = 0;
        if rng.random_ratio(1, 3) {
            let victim = rng.random_range(0..REPLICAS);
            let window = if slow == 1 { 1_200 } else { 80 };
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..window))).await;
            replicas[victim].kill();
            kills = 1;
            killed = Some(victim);
            replicas[victim] = Replica::start(url, &mock.url(), &clock).await;
            calls.push((
                REPLICAS,
                false,
                replicas[victim].call(&appid, None, Duration::ZERO, mock.addr()),
            ));
        }

        let mut served = BTreeSet::new();
        // Who got what, for a failure's message.
        let mut got = Vec::new();
        let mut refused = BTreeSet::new();
        let mut long_calls = 0;
        // Whether the round needs a new value: a cold start, an expiry, or a passive refresh.
        let mut needed = !passive;
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, is_refresh, call) in calls {
            let left = deadline.saturating_duration_since(Instant::now());
            let (credential, verdict, took) = match tokio::time::timeout(left, call).await {
                Err(_) => return Err(say("a call hung for 30 s".into())),
                Ok(Err(e)) if e.is_cancelled() && killed == Some(i) => continue,
                Ok(Err(e)) => return Err(say(format!("a call's task failed: {e}"))),
                Ok(Ok(Err(e))) => return Err(say(format!("replica {i}'s caller got {e}"))),
                Ok(Ok(Ok(c))) => c,
            };
            // Only a holder that lost its lease lets another fetch: killed, or its call lasted
            // longer than the lease (a slow fetch, or a machine too busy to keep up).
            long_calls += u64::from(took >= Duration::from_millis(LEASE_MS));
            needed |= is_refresh;
            if credential.expires_at - started_at <= TimeDelta::seconds(MARGIN_SECS as i64) {
                return Err(say(format!(
                    "served a value with {} left",
                    credential.expires_at - started_at
                )));
            }
            if verdict.get("errcode").is_some_and(|c| c != 0) {
                refused.insert(credential.value.clone());
            }
            if is_refresh && Some(&credential.value) == reported.as_ref() {
                return Err(say(
                    "a passive refresh answered the value it reported".into()
                ));
            }
            got.push(format!(
                "replica {i} {} got {} in {took:?}{}",
                if is_refresh { "refresh" } else { "read" },
                credential.value,
                if verdict.get("errcode").is_some_and(|c| c != 0) {
                    " (refused)"
                } else {
                    ""
                }
            ));
            served.insert(credential.value.clone());
        }
        ticks.await.unwrap();
        mock.clear_faults();

        let fetched = mock.calls(Endpoint::Token) - calls_before;
        let now = row(observer, &appid).await;
        check_step(&stored, &now).map_err(say)?;
        let Some(now) = now else {
            return Err(say("nothing stored".into()));
        };
        let written = (now.version - stored.as_ref().map_or(0, |r| r.version)) as u64;
        if written > 1 {
            return Err(say(format!("{written} values stored for one need")));
        }
        if fetched > 1 + kills + long_calls {
            return Err(say(format!(
                "{fetched} fetches for one need, with {kills} kills and {long_calls} calls \
                 longer than the lease"
            )));
        }
        if kills == 0 && long_calls == 0 && fetched != u64::from(needed) {
            // Nothing went wrong: exactly one fetch per need (per credential lifetime).
            return Err(say(format!(
                "{fetched} fetches without a crash or a lapsed lease; {} needed",
                u64::from(needed)
            )));
        }
        // What the round did, for a failure's message.
        let round_was = || {
            format!(
                "stored: version {}, {}; earlier values of this lifetime: {lifetime:?}; {} round, \
                 {fetched} fetches, {kills} kills (replica {killed:?}), {long_calls} calls longer \
                 than the lease, delay {delay:?}; {}",
                now.version,
                now.value,
                if passive { "passive" } else { "expiry" },
                got.join("; ")
            )
        };
        // The mock forgets a value at once when a second newer one is issued, where WeChat keeps
        // it five more minutes. A round of three or more fetches (leases lapsing one after
        // another on a starved machine) meets that with values of its own, stored or not: the
        // first one issued is forgotten by the third. Counted, not failed.
        let superseded_twice = fetched >= 3;
        // Everyone got the round's value, except plain reads in a passive round, which may still
        // be served an earlier value of this lifetime until the replica looks at the database.
        for value in &served {
            let earlier = passive && lifetime.contains(value);
            let refused_by_mock = refused.contains(value);
            // A holder whose lease lapsed and whose write was fenced out serves what it fetched
            // when nothing newer is stored yet: valid, just not stored.
            let fenced_out =
                (kills > 0 || long_calls > 0) && (!refused_by_mock || superseded_twice);
            if *value != now.value && !earlier && !fenced_out {
                return Err(say(format!(
                    "a caller got {value}, which is neither stored nor an earlier value of this \
                     lifetime; {}",
                    round_was()
                )));
            }
            // Otherwise only an earlier value may meet the mock's strictness, after a lost fetch
            // (a crash or a fenced-out slow fetch) or a passive refresh.
            if refused_by_mock {
                if !earlier && !superseded_twice {
                    return Err(say(format!(
                        "a caller got {value}, and WeChat does not accept it; {}",
                        round_was()
                    )));
                }
                outcome.strict_refusals += 1;
            }
        }
        lifetime.extend(served);
        lifetime.insert(now.value.clone());
        outcome.fetches += fetched;
        outcome.writes += written;
        outcome.kills += kills;
        outcome.slow += slow;
        outcome.takeovers += u64::from(fetched > 1);
        outcome.clean_rounds += u64::from(kills == 0 && long_calls == 0);
        stored = Some(now);
    }
    stop.store(true, Ordering::Relaxed);
    sampler
        .await
        .unwrap()
        .map_err(|e| format!("seed {seed}: {e}"))?;
    for mut replica in replicas {
        replica.kill();
    }
    Ok(outcome)
}

/// Runs `count` schedules from seed 0 (or `WETOKEN_LEASE_SEED` alone), `parallel` at a time, on
/// `db`, and checks that they exercised crashes, slow fetches and takeovers.
async fn run_schedules(db: &TestDb, count: u64, parallel: usize) {
    if db.backend == Backend::Sqlite {
        // Readers and the writer of a SQLite file get along better in WAL mode; it persists in
        // the file.
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        conn.execute_unprepared("PRAGMA journal_mode=WAL")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    drop(store);
    // The observer reads rows and adds apps; it never refreshes (its WeChat is nowhere).
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let observer = engine(db.url.clone(), "http://127.0.0.1:9".into(), clock).await;
    let count = match std::env::var("WETOKEN_LEASE_SCHEDULES") {
        Ok(n) => n.parse().expect("WETOKEN_LEASE_SCHEDULES is a number"),
        Err(_) => count,
    };
    let seeds: Vec<u64> = match std::env::var("WETOKEN_LEASE_SEED") {
        Ok(seed) => vec![seed.parse().expect("WETOKEN_LEASE_SEED is a number")],
        Err(_) => (0..count).collect(),
    };
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut running = tokio::task::JoinSet::new();
    for seed in seeds.iter().copied() {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (url, observer) = (db.url.clone(), observer.clone());
        running.spawn(async move {
            let outcome = schedule(&url, &observer, seed).await;
            drop(permit);
            outcome
        });
    }
    let mut total = Outcome::default();
    let mut failures = Vec::new();
    while let Some(outcome) = running.join_next().await {
        match outcome.expect("a schedule panicked") {
            Ok(o) => {
                total.rounds += o.rounds;
                total.fetches += o.fetches;
                total.writes += o.writes;
                total.kills += o.kills;
                total.slow += o.slow;
                total.takeovers += o.takeovers;
                total.clean_rounds += o.clean_rounds;
                total.strict_refusals += o.strict_refusals;
            }
            Err(e) => failures.push(e),
        }
    }
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} schedules broke the lease's invariants on {}:\n{}",
        failures.len(),
        seeds.len(),
        db.backend.name(),
        failures.join("\n")
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "lease: {} schedules on {} in {:.1?}: {total:?}",
        seeds.len(),
        db.backend.name(),
        started.elapsed()
    );
    if seeds.len() as u64 == count {
        // The schedules did reach the hard cases.
        assert!(
            total.kills >= count / 5 && total.slow >= count / 5 && total.takeovers >= count / 10,
            "too few hard cases: {total:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_sqlite_fetch_once_per_lifetime_through_crashes_and_slow_fetches() {
    let db = TestDb::create(Backend::Sqlite, "lease_replicas::sqlite")
        .await
        .unwrap();
    run_schedules(&db, 64, 12).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_fetch_once_per_lifetime_through_crashes_and_slow_fetches() {
    let Some(db) = TestDb::create(Backend::Postgres, "lease_replicas::postgres").await else {
        return;
    };
    run_schedules(&db, 32, 8).await;
    db.drop_db().await;
}
