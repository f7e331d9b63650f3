//! The engine on its own, over in-memory SQLite and the mock WeChat.

mod feed_model;
mod lease_model;
mod lease_replicas;
mod open_calls;
mod open_platform;
mod quota_guard;
mod scheduler_replicas;
mod sealed_replay;
mod secrets_on_disk;
mod status_views;
mod upstream;

use std::sync::Arc;

use chrono::Utc;
use wetoken_core::{
    AppId, DatabaseOptions, Engine, EngineConfig, Error, Kind, ManualClock, NewApp, Secret, Store,
    WeChat, WeChatOptions,
};
use wetoken_mock::{Endpoint, MockWeChat};

/// A WeChat client that calls `mock` alone, for WeChat's and WeCom's calls, with no fallback.
fn wechat_on(mock: &MockWeChat) -> WeChat {
    WeChat::new(&WeChatOptions {
        base_url: mock.url(),
        fallback_urls: Vec::new(),
        work_base_url: mock.url(),
        ..WeChatOptions::default()
    })
    .unwrap()
}

async fn engine(mock: &MockWeChat) -> Engine {
    engine_with(mock, EngineConfig::default()).await
}

/// An engine over a fresh in-memory SQLite database, calling `mock`.
async fn engine_with(mock: &MockWeChat, config: EngineConfig) -> Engine {
    engine_and_clock(mock, config).await.0
}

/// [`engine_with`], and the clock it reads.
async fn engine_and_clock(mock: &MockWeChat, config: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let store = Store::connect(&DatabaseOptions::new("sqlite::memory:"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let wechat = WeChat::new(&WeChatOptions {
        base_url: mock.url(),
        ..WeChatOptions::default()
    })
    .unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    (
        Engine::new(store, wechat, clock.clone(), config).unwrap(),
        clock,
    )
}

#[tokio::test]
async fn unknown_appids_leave_no_trace() {
    let mock = MockWeChat::start().await.unwrap();
    let engine = engine(&mock).await;
    for i in 0..100 {
        let appid = AppId::parse(&format!("wxmadeup{i}")).unwrap();
        for kind in Kind::ALL {
            assert!(matches!(
                engine.get(&appid, kind).await,
                Err(Error::UnknownApp(_))
            ));
        }
        assert!(matches!(
            engine.refresh(&appid, Kind::AccessToken, "x").await,
            Err(Error::UnknownApp(_))
        ));
    }
    assert_eq!(engine.cached_credentials(), 0);
    assert_eq!(mock.calls(Endpoint::Token), 0);

    mock.add_app("wxreal", "s");
    let real = NewApp::mp(AppId::parse("wxreal").unwrap(), Secret::new("s"));
    engine.add_app(&real).await.unwrap();
    engine.get(&real.appid, Kind::JsapiTicket).await.unwrap();
    assert_eq!(engine.cached_credentials(), 2, "the token and the ticket");
}

/// An engine whose scheduler renews at `rate` a second, `concurrency` at a time, tokens only,
/// with `n` cold apps named `prefix` and a number, known to `mock` too.
async fn cold_apps(
    mock: &MockWeChat,
    rate: u32,
    concurrency: usize,
    prefix: &str,
    n: usize,
) -> Engine {
    let config = EngineConfig {
        max_refresh_rate: rate,
        concurrency,
        scan_interval_ms: 50,
        refresh_tickets: false,
        ..EngineConfig::default()
    };
    let engine = engine_with(mock, config).await;
    for i in 0..n {
        let appid = format!("{prefix}{i:03}");
        mock.add_app(&appid, "s");
        engine
            .add_app(&NewApp::mp(AppId::parse(&appid).unwrap(), Secret::new("s")))
            .await
            .unwrap();
    }
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_of_many_apps_is_paced_not_a_burst() {
    let mock = MockWeChat::start().await.unwrap();
    let engine = cold_apps(&mock, 40, 8, "wxpaced", 120).await;
    let scheduler = quota_guard::Scheduler::start(&engine);
    // 40 a second: the 41st fetch comes a second after the first at the earliest, and all 120
    // take three seconds, where a burst would take milliseconds.
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(15);
    for (fetches, at_least) in [(41, 0.95), (120, 2.9)] {
        while mock.calls(Endpoint::Token) < fetches {
            assert!(
                std::time::Instant::now() < deadline,
                "the scheduler never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let took = started.elapsed().as_secs_f64();
        assert!(took >= at_least, "{fetches} fetched in {took:.2} s");
    }
    scheduler.stop().await;
    assert_eq!(mock.calls(Endpoint::Token), 120, "each app once");
}

/// Renewals still waiting their turn of the pace when the scheduler stops are not started: a
/// stopping scheduler finishes what it began, and begins nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_scheduler_starts_no_renewal_waiting_its_turn() {
    let mock = MockWeChat::start().await.unwrap();
    let engine = cold_apps(&mock, 1, 8, "wxstopping", 20).await;
    let scheduler = quota_guard::Scheduler::start(&engine);
    // The first renewal is under way at once; seven more wait their turn, one a second.
    while mock.calls(Endpoint::Token) < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), scheduler.stop())
        .await
        .expect("the scheduler stops without working through the queue");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        mock.calls(Endpoint::Token) <= 2,
        "{} fetched after the stop",
        mock.calls(Endpoint::Token)
    );
}

/// An app is stored with its credential rows or not at all: the scheduler finds what is due in
/// those alone, so an app row without them would never be renewed. A failure writing the
/// ticket's row (a trigger here; a lost connection in life) leaves no app behind.
#[tokio::test]
async fn an_app_is_added_whole_or_not_at_all() {
    use sea_orm::ConnectionTrait;
    let mock = MockWeChat::start().await.unwrap();
    let engine = engine(&mock).await;
    let db = engine.store().connection();
    db.execute_unprepared(
        "CREATE TRIGGER refuse_tickets BEFORE INSERT ON wechat_jsapi_ticket \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .await
    .unwrap();
    let appid = AppId::parse("wxwhole000000001").unwrap();
    let app = NewApp::mp(appid.clone(), Secret::new("s"));
    let e = engine.add_app(&app).await.unwrap_err();
    let chain = e.chain().to_string();
    assert!(chain.contains("refused by the test"), "{chain}");
    assert!(
        engine.store().app(&appid).await.unwrap().is_none(),
        "an app was left without its credential rows"
    );
    db.execute_unprepared("DROP TRIGGER refuse_tickets")
        .await
        .unwrap();
    engine.add_app(&app).await.unwrap();
    let status = engine.app_status(&appid).await.unwrap();
    assert!(status.access_token.is_some() && status.jsapi_ticket.is_some());
}

/// A token wetoken did not fetch (imported, or adopted from the Go wetoken) has no renewal
/// date: the scheduler's first scan dates it without fetching, and renews it when that comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_token_is_dated_then_renewed_on_time() {
    use std::time::Duration;
    use wetoken_core::Clock;
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app("wximported", "s");
    let config = EngineConfig {
        scan_interval_ms: 20,
        refresh_tickets: false,
        ..EngineConfig::default()
    };
    let (engine, clock) = engine_and_clock(&mock, config).await;
    let appid = AppId::parse("wximported").unwrap();
    engine
        .add_app(&NewApp::mp(appid.clone(), Secret::new("s")))
        .await
        .unwrap();
    let imported = wetoken_core::Credential {
        value: "86_imported".into(),
        expires_at: clock.now() + chrono::TimeDelta::hours(2),
    };
    assert!(
        engine
            .store()
            .import_credential(&appid, Kind::AccessToken, &imported, None, clock.now())
            .await
            .unwrap()
    );
    let renew_at = || async {
        use sea_orm::{ConnectionTrait, Statement};
        let db = engine.store().connection();
        let sql = "SELECT renew_at FROM wechat_access_token WHERE appid = 'wximported'";
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<Option<chrono::DateTime<Utc>>>(0)
            .unwrap()
    };
    assert_eq!(renew_at().await, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .run_scheduler(async move {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.sweeps() < 3 {
        assert!(std::time::Instant::now() < deadline, "no scans");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dated = renew_at().await.expect("dated by the first scan");
    let ahead = imported.expires_at - dated;
    assert!(
        (1200..1500).contains(&ahead.num_seconds()),
        "renewed {ahead} ahead"
    );
    assert_eq!(mock.calls(Endpoint::Token), 0, "not fetched early");
    // Its renewal point comes: renewed, and the new value dated by its fetch.
    clock.advance(Duration::from_secs(7200 - 1190));
    while mock.calls(Endpoint::Token) < 1 {
        assert!(std::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    scheduler.await.unwrap();
    assert!(renew_at().await.is_some_and(|at| at > dated));
    assert_eq!(mock.calls(Endpoint::Token), 1);
}

/// The totals for pages and scrapes are reused while fresh, answered stale (once) while a
/// refresh runs behind, and read first when too old.
#[tokio::test]
async fn totals_are_reused_while_fresh_and_refreshed_behind_the_answer() {
    use std::time::Duration;
    use wetoken_core::store::CredentialState;

    let mock = MockWeChat::start().await.unwrap();
    let (engine, clock) = engine_and_clock(&mock, EngineConfig::default()).await;
    let fresh = Duration::from_secs(5);
    let pending =
        |t: &wetoken_core::store::StateTotals| t.count(Kind::AccessToken, CredentialState::Pending);
    let add = |appid: &'static str| {
        let engine = engine.clone();
        async move {
            let app = NewApp::mp(AppId::parse(appid).unwrap(), Secret::new("s"));
            engine.add_app(&app).await.unwrap();
        }
    };
    add("wxtotal1").await;
    let (first, age) = engine.state_totals_within(fresh).await.unwrap();
    assert_eq!((pending(&first), age), (1, Duration::ZERO));
    add("wxtotal2").await;
    // Fresh: the same reading, no query.
    let (again, _) = engine.state_totals_within(fresh).await.unwrap();
    assert_eq!(pending(&again), 1);
    // Stale: answered from the last reading at once, and read again behind it.
    clock.advance(Duration::from_secs(6));
    let (stale, age) = engine.state_totals_within(fresh).await.unwrap();
    assert_eq!((pending(&stale), age), (1, Duration::from_secs(6)));
    let mut refreshed = 0;
    for _ in 0..200 {
        let (now, _) = engine.state_totals_within(fresh).await.unwrap();
        refreshed = pending(&now);
        if refreshed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refreshed, 2, "the refresh behind the answer landed");
    // Too old to show: read first.
    add("wxtotal3").await;
    clock.advance(Duration::from_secs(60));
    let (read, age) = engine.state_totals_within(fresh).await.unwrap();
    assert_eq!((pending(&read), age), (3, Duration::ZERO));
    // Zero: every call reads.
    add("wxtotal4").await;
    let (read, _) = engine.state_totals_within(Duration::ZERO).await.unwrap();
    assert_eq!(pending(&read), 4);
}
