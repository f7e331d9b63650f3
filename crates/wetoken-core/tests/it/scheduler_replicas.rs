//! Several replicas' schedulers over one database: each credential is renewed once for the
//! cluster, and a replica whose fetch hangs holds nobody else up.
//!
//! Each replica calls a mock WeChat of its own, so that the fetches of each are counted apart;
//! every mock knows every app.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use wetoken_core::{AppId, Engine, EngineConfig, Kind, ManualClock, NewApp, Secret};
use wetoken_mock::{Endpoint, Fault, MockWeChat};
use wetoken_testkit::{TestDb, on_every_database};

use crate::quota_guard::{Scheduler, replica, wait_until};

const APPS: usize = 60;
const SECRET: &str = "sweep-secret";
/// How long the first fetch of replica 0 hangs: less than the WeChat client's timeout (10 s), so
/// that it ends in a token.
const HANG: Duration = Duration::from_secs(7);

fn appids() -> Vec<AppId> {
    (0..APPS)
        .map(|i| AppId::parse(&format!("wxsweepers{i:04}")).unwrap())
        .collect()
}

/// Whether `appid`'s access token is stored.
async fn stored(engine: &Engine, appid: &AppId) -> bool {
    let status = engine.app_status(appid).await.unwrap();
    status
        .access_token
        .and_then(|record| record.credential)
        .is_some()
}

/// Three replicas renew 60 cold apps, one fetch each, at one renewal at a time each
/// (`concurrency = 1`). Replica 0's first fetch hangs for seven seconds: the other two renew
/// every other app meanwhile, rather than wait their turn behind its lease. (How the work splits
/// between replicas, and how fast a cluster renews, is measured by `cargo xtask bench`, not
/// here.)
async fn schedulers_share_the_renewals_and_a_hung_fetch_holds_nobody_up(db: &TestDb) {
    let config = EngineConfig {
        concurrency: 1,
        max_refresh_rate: 20,
        scan_interval_ms: 50,
        refresh_tickets: false,
        lease_ms: 30_000,
        ..EngineConfig::default()
    };
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut mocks = Vec::new();
    let mut engines = Vec::new();
    for _ in 0..3 {
        let mock = MockWeChat::start().await.unwrap();
        for appid in appids() {
            mock.add_app(appid.as_str(), SECRET);
        }
        engines.push(replica(db, &mock, clock.clone(), &config).await);
        mocks.push(mock);
    }
    engines[0].store().migrate().await.unwrap();
    for appid in appids() {
        engines[0]
            .add_app(&NewApp::mp(appid, Secret::new(SECRET)))
            .await
            .unwrap();
    }
    mocks[0].inject(Endpoint::Token, Fault::Delay(HANG), 1);
    let hung_since = std::time::Instant::now();

    let schedulers: Vec<Scheduler> = engines.iter().map(Scheduler::start).collect();
    // Replica 0 takes its first credential's lease and hangs on WeChat with it.
    wait_until(Duration::from_secs(5), || {
        mocks[0].calls(Endpoint::Token) == 1
    })
    .await;
    // The others renew the other 59, well before the hung fetch returns.
    let observer = &engines[1];
    let deadline = hung_since + HANG - Duration::from_secs(2);
    loop {
        let mut missing = 0;
        for appid in appids() {
            missing += usize::from(!stored(observer, &appid).await);
        }
        if missing == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} tokens not stored while one fetch hung: the other replicas waited on it \
             (fetches per replica: {:?})",
            mocks
                .iter()
                .map(|m| m.calls(Endpoint::Token))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A stopping scheduler finishes what it started: the hung fetch is stored too.
    for scheduler in schedulers {
        scheduler.stop().await;
    }
    for appid in appids() {
        assert!(stored(observer, &appid).await, "{appid} not stored");
    }
    let fetches: Vec<u64> = mocks.iter().map(|m| m.calls(Endpoint::Token)).collect();
    assert_eq!(
        fetches.iter().sum::<u64>(),
        APPS as u64,
        "one fetch per credential for the cluster: {fetches:?}"
    );
    // Replica 0 made only the fetch that hung; the other two renewed everything else.
    assert_eq!(fetches[0], 1, "{fetches:?}");
    let reads = engines[2].get(&appids()[0], Kind::AccessToken).await;
    assert!(reads.is_ok(), "{reads:?}");
}

on_every_database!(schedulers_share_the_renewals_and_a_hung_fetch_holds_nobody_up);
