//! The quota guard (issue #14), through real engines: three replicas (each an [`Engine`] with its
//! own pool) on one database, calling the mock WeChat, on SQLite, MariaDB and PostgreSQL.
//!
//! - A caller stuck in a loop reporting a token WeChat still accepts makes no fetch.
//! - The same loop on tokens WeChat really rejects is stopped by the budget's reserve, and the
//!   scheduled renewal still gets its fetch.
//! - 60 reports of one really rejected token across replicas make one check and one fetch.
//! - A token replaced outside wetoken is found and renewed by the slow check, and counted.
//! - A halted app takes no lease and writes nothing on scheduler passes.
//! - One reporter cannot spend more than its share of a day's forced stable tokens.
//! - A reported ticket is replaced only once it is old enough.
//! - An app's own check interval turns the slow check off and on.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sea_orm::{ConnectionTrait, Statement};
use wetoken_core::{
    AppId, AppKind, AppUpdate, Clock, DatabaseOptions, Engine, EngineConfig, Error, Kind,
    ManualClock, NewApp, Reporter, Secret, Store, SystemClock, TokenMode,
};
use wetoken_mock::{Endpoint, MockConfig, MockWeChat};
use wetoken_testkit::{TestDb, on_every_database};

const APPID: &str = "wxquota0000000001";
const SECRET: &str = "quota-secret";

/// An engine over its own small pool on `db`, calling `mock`, reading time from `clock`.
pub(crate) async fn replica(
    db: &TestDb,
    mock: &MockWeChat,
    clock: Arc<dyn Clock>,
    config: &EngineConfig,
) -> Engine {
    let mut options = DatabaseOptions::new(&db.url);
    options.max_connections = 3;
    let store = Store::connect(&options).await.unwrap();
    let wechat = crate::wechat_on(mock);
    Engine::new(store, wechat, clock, config.clone()).unwrap()
}

/// Three replicas on `db`, the schema installed and `app` added through the first.
async fn replicas(
    db: &TestDb,
    mock: &MockWeChat,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    app: NewApp,
) -> Vec<Engine> {
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(replica(db, mock, clock.clone(), &config).await);
    }
    engines[0].store().migrate().await.unwrap();
    engines[0].add_app(&app).await.unwrap();
    engines
}

fn appid() -> AppId {
    AppId::parse(APPID).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        lease_ms: 2_000,
        lease_poll_ms: 20,
        cache_check_ms: 100,
        ..EngineConfig::default()
    }
}

fn key_named(name: &str) -> Reporter {
    Reporter::Key(name.into())
}

/// The loop of a service that calls WeChat with this app's token for another app, gets 40001,
/// and reports the token, 2000 times, across three replicas, while WeChat accepts the token.
async fn a_buggy_reporter_of_a_good_token_makes_no_fetch(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, clock.clone(), config(), app).await;
    let first = engines[0].get(&appid(), Kind::AccessToken).await.unwrap();
    assert_eq!(mock.calls(Endpoint::Token), 1);
    for i in 0..2000 {
        let engine = &engines[i % 3];
        let token = engine.get(&appid(), Kind::AccessToken).await.unwrap();
        let answer = engine
            .report(
                &appid(),
                Kind::AccessToken,
                &token.value,
                &key_named("buggy"),
            )
            .await
            .unwrap();
        assert_eq!(answer.value, first.value, "report {i} changed the token");
        // 20 ms a report: the loop spans 40 s of the engines' time, past `report_check_secs`.
        clock.advance(Duration::from_millis(20));
    }
    assert_eq!(mock.calls(Endpoint::Token), 1, "no fetch for 2000 reports");
    let checks = mock.calls(Endpoint::CheckToken);
    assert!((1..=6).contains(&checks), "{checks} verification calls");
}

/// A WeCom app's reported token is checked on WeCom's root (`getcallbackip`): one WeChat
/// accepts is answered as it is; one it rejects is replaced.
async fn a_wecom_token_is_checked_on_wecoms_own_call(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app("wwquotacorp", SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (key, work) =
        NewApp::identify(AppKind::Work, None, Some("wwquotacorp"), Some("1000002")).unwrap();
    let app = NewApp {
        kind: AppKind::Work,
        work,
        ..NewApp::mp(key.clone(), Secret::new(SECRET))
    };
    let engines = replicas(db, &mock, clock.clone(), config(), app).await;
    let token = engines[0].get(&key, Kind::AccessToken).await.unwrap();
    for engine in &engines {
        let answer = engine
            .report(&key, Kind::AccessToken, &token.value, &key_named("wecom"))
            .await
            .unwrap();
        assert_eq!(answer.value, token.value);
    }
    assert_eq!(mock.calls(Endpoint::WorkToken), 1, "no fetch");
    assert_eq!(
        mock.calls(Endpoint::CallbackIp),
        1,
        "one check, on WeCom's call"
    );
    assert_eq!(mock.calls(Endpoint::CheckToken), 0);
    mock.invalidate_token(&token.value);
    clock.advance(Duration::from_secs(31));
    let answer = engines[1]
        .report(&key, Kind::AccessToken, &token.value, &key_named("wecom"))
        .await
        .unwrap();
    assert_ne!(answer.value, token.value);
    assert_eq!(mock.calls(Endpoint::WorkToken), 2);
}

/// The same loop while WeChat really rejects each token: every report is true, so each makes a
/// fetch, until the budget less its reserve is spent. The scheduled renewal still gets its fetch.
async fn a_loop_on_rejected_tokens_stops_at_the_reserve(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = EngineConfig {
        budget_reserve: 10,
        ..config()
    };
    let app = NewApp {
        daily_budget: Some(30),
        ..NewApp::mp(appid(), Secret::new(SECRET))
    };
    let engines = replicas(db, &mock, clock.clone(), config, app).await;
    let mut refused = None;
    for i in 0..200 {
        let engine = &engines[i % 3];
        let token = match engine.get(&appid(), Kind::AccessToken).await {
            Ok(token) => token,
            Err(e) => panic!("get {i}: {e}"),
        };
        mock.invalidate_token(&token.value);
        match engine
            .report(
                &appid(),
                Kind::AccessToken,
                &token.value,
                &key_named("buggy"),
            )
            .await
        {
            Ok(new) => assert_ne!(new.value, token.value),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
        clock.advance(Duration::from_millis(200));
    }
    let (at, e) = refused.expect("the reserve stopped the loop");
    assert!(matches!(e, Error::OverBudget(_)), "{e:?}");
    assert!(e.to_string().contains("20"), "{e}");
    // 30 less the reserve of 10: the first fetch and 19 passive ones.
    assert_eq!(mock.calls(Endpoint::Token), 20, "stopped after report {at}");
    // Reports go on being refused without calling WeChat at all.
    let checks = mock.calls(Endpoint::CheckToken);
    for engine in &engines {
        let stored = engine.stored(&appid(), Kind::AccessToken).await.unwrap();
        let e = engine
            .report(
                &appid(),
                Kind::AccessToken,
                &stored.value,
                &key_named("buggy"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::OverBudget(_)), "{e:?}");
    }
    assert_eq!(mock.calls(Endpoint::Token), 20);
    assert_eq!(mock.calls(Endpoint::CheckToken), checks);

    // Close to the token's end, the scheduler renews it from the reserve.
    clock.advance(Duration::from_secs(7200 - 600));
    let scheduler = Scheduler::start(&engines[0]);
    wait_until(Duration::from_secs(20), || {
        mock.calls(Endpoint::Token) == 21
    })
    .await;
    scheduler.stop().await;
    let renewed = engines[1].get(&appid(), Kind::AccessToken).await.unwrap();
    assert!(renewed.expires_at - clock.now() > TimeDelta::seconds(7000));
    assert_eq!(mock.calls(Endpoint::Token), 21);
}

/// 60 reports of one token WeChat really invalidated, 20 on each replica at once: one check,
/// one fetch, and everyone gets the new token.
async fn sixty_reports_of_a_rejected_token_make_one_check_and_one_fetch(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, clock.clone(), config(), app).await;
    let old = engines[0].get(&appid(), Kind::AccessToken).await.unwrap();
    mock.invalidate_token(&old.value);
    let (tokens, checks) = (
        mock.calls(Endpoint::Token),
        mock.calls(Endpoint::CheckToken),
    );
    let mut reports = tokio::task::JoinSet::new();
    for i in 0..60 {
        let engine = engines[i % 3].clone();
        let failed = old.value.clone();
        reports.spawn(async move {
            engine
                .report(
                    &appid(),
                    Kind::AccessToken,
                    &failed,
                    &key_named(&format!("caller{}", i % 7)),
                )
                .await
        });
    }
    let mut answers = std::collections::BTreeSet::new();
    while let Some(answer) = reports.join_next().await {
        answers.insert(answer.unwrap().unwrap().value.clone());
    }
    assert_eq!(answers.len(), 1, "everyone got the same new token");
    assert!(!answers.contains(&old.value));
    assert_eq!(mock.calls(Endpoint::Token) - tokens, 1, "one fetch");
    assert_eq!(mock.calls(Endpoint::CheckToken) - checks, 1, "one check");
}

/// Someone fetches the app's token outside wetoken. WeChat keeps the old one working for the
/// overlap (one second here), then refuses it; the slow check finds that and renews at once.
async fn a_token_replaced_out_of_band_is_renewed_by_the_slow_check(db: &TestDb) {
    let mock = MockWeChat::start_with(
        MockConfig {
            overlap: Duration::from_secs(1),
            ..MockConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    mock.add_app(APPID, SECRET);
    let config = EngineConfig {
        verify_interval_secs: 2,
        scan_interval_ms: 100,
        refresh_tickets: false,
        ..config()
    };
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, Arc::new(SystemClock), config, app).await;
    let ours = engines[0].get(&appid(), Kind::AccessToken).await.unwrap();
    let schedulers: Vec<Scheduler> = engines.iter().map(Scheduler::start).collect();
    // A few checks pass while the token is good: nothing is fetched.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "no fetch while WeChat accepts it"
    );
    assert!(mock.calls(Endpoint::CheckToken) >= 1, "the slow check ran");
    let status = engines[0].app_status(&appid()).await.unwrap();
    assert_eq!(status.access_token.unwrap().replaced, 0);

    let url = format!(
        "{}/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}",
        mock.url()
    );
    let outside: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let outside = outside["access_token"].as_str().unwrap().to_owned();
    let replaced_at = std::time::Instant::now();
    // Dead after the one-second overlap; found within the two-second interval and a scan.
    wait_until(Duration::from_secs(8), || mock.calls(Endpoint::Token) == 3).await;
    let took = replaced_at.elapsed();
    assert!(
        took <= Duration::from_millis(1_000 + 2_000 + 1_500),
        "renewed after {took:?}"
    );
    for s in schedulers {
        s.stop().await;
    }
    let now = engines[2].get(&appid(), Kind::AccessToken).await.unwrap();
    assert_ne!(now.value, ours.value);
    assert_ne!(now.value, outside);
    assert_eq!(
        mock.calls(Endpoint::Token),
        3,
        "ours, the outsider's, the renewal"
    );
    let status = engines[1].app_status(&appid()).await.unwrap();
    assert_eq!(status.access_token.unwrap().replaced, 1, "counted once");
}

/// An app WeChat refused for good: its token is halted. 100 scheduler passes on each of three
/// replicas take no lease and change no row.
async fn a_halted_app_is_left_alone_by_the_scheduler(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    // Not registered at the mock: 40013, a refusal retrying cannot cure.
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = EngineConfig {
        scan_interval_ms: 5,
        ..config()
    };
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, clock.clone(), config, app).await;
    let e = engines[0]
        .get(&appid(), Kind::JsapiTicket)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Halted { .. }), "{e:?}");
    let rows = snapshot(&engines[0]).await;
    let leases: Vec<u64> = engines.iter().map(Engine::lease_attempts).collect();
    let calls = mock.calls(Endpoint::Token);
    let schedulers: Vec<Scheduler> = engines.iter().map(Scheduler::start).collect();
    let passes = |e: &Engine| e.sweeps() >= 100;
    wait_until(Duration::from_secs(60), || engines.iter().all(passes)).await;
    for s in schedulers {
        s.stop().await;
    }
    assert_eq!(
        engines
            .iter()
            .map(Engine::lease_attempts)
            .collect::<Vec<_>>(),
        leases,
        "no lease taken"
    );
    assert_eq!(snapshot(&engines[0]).await, rows, "no row changed");
    assert_eq!(mock.calls(Endpoint::Token), calls);
}

/// Two keys report a stable token that WeChat really rejected. Each forced refresh is fine, until
/// one key has caused its share of the day's 20 (two, at 10 %); the other key still may.
async fn one_key_cannot_spend_the_days_forced_stable_tokens(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = EngineConfig {
        stable_share_percent: 10,
        ..config()
    };
    let app = NewApp {
        token_mode: TokenMode::Stable,
        ..NewApp::mp(appid(), Secret::new(SECRET))
    };
    let engines = replicas(db, &mock, clock.clone(), config, app).await;
    let mut token = engines[0].get(&appid(), Kind::AccessToken).await.unwrap();
    let mut report = async |i: usize, by: &str| {
        // WeChat allows a forced stable token every 30 s.
        clock.advance(Duration::from_secs(31));
        mock.advance(Duration::from_secs(31));
        mock.invalidate_token(&token.value);
        let engine = &engines[i % 3];
        let answer = engine
            .report(&appid(), Kind::AccessToken, &token.value, &key_named(by))
            .await;
        if let Ok(new) = &answer {
            token = new.clone();
        }
        answer
    };
    for i in 0..2 {
        report(i, "alpha").await.expect("within alpha's share");
    }
    let before = mock.calls(Endpoint::StableToken);
    let e = report(2, "alpha").await.unwrap_err();
    assert!(
        matches!(&e, Error::ForceLimited(m) if m.contains("key alpha") && m.contains("share")),
        "{e:?}"
    );
    assert_eq!(
        mock.calls(Endpoint::StableToken),
        before,
        "WeChat not called"
    );
    report(3, "beta").await.expect("beta has its own share");
    assert_eq!(mock.calls(Endpoint::StableToken), before + 1);
}

/// A ticket (WeChat offers no check for one) is replaced on a report only once it is
/// `ticket_report_min_age_secs` old.
async fn a_reported_ticket_is_replaced_only_once_old_enough(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, clock.clone(), config(), app).await;
    let ticket = engines[0].get(&appid(), Kind::JsapiTicket).await.unwrap();
    assert_eq!(mock.calls(Endpoint::Ticket), 1);
    for (i, engine) in engines.iter().enumerate() {
        let answer = engine
            .report(
                &appid(),
                Kind::JsapiTicket,
                &ticket.value,
                &key_named("pages"),
            )
            .await
            .unwrap();
        assert_eq!(
            answer.value, ticket.value,
            "report {i}: too young to replace"
        );
        clock.advance(Duration::from_secs(15));
    }
    assert_eq!(mock.calls(Endpoint::Ticket), 1);
    clock.advance(Duration::from_secs(16));
    let answer = engines[1]
        .report(
            &appid(),
            Kind::JsapiTicket,
            &ticket.value,
            &key_named("pages"),
        )
        .await
        .unwrap();
    assert_ne!(answer.value, ticket.value, "61 s old: replaced");
    assert_eq!(mock.calls(Endpoint::Ticket), 2);
}

/// An app's own `verify_secs` of 0 turns the slow check off for it, at once; a positive one turns
/// it back on.
async fn an_apps_own_interval_turns_the_slow_check_off_and_on(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(APPID, SECRET);
    let config = EngineConfig {
        verify_interval_secs: 1,
        scan_interval_ms: 50,
        refresh_tickets: false,
        ..config()
    };
    let app = NewApp::mp(appid(), Secret::new(SECRET));
    let engines = replicas(db, &mock, Arc::new(SystemClock), config, app).await;
    engines[0].get(&appid(), Kind::AccessToken).await.unwrap();
    let off = AppUpdate {
        verify_secs: Some(0),
        ..AppUpdate::default()
    };
    engines[0].update_app(&appid(), &off).await.unwrap();
    let scheduler = Scheduler::start(&engines[1]);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(mock.calls(Endpoint::CheckToken), 0, "off for this app");
    let on = AppUpdate {
        verify_secs: Some(1),
        ..AppUpdate::default()
    };
    engines[2].update_app(&appid(), &on).await.unwrap();
    wait_until(Duration::from_secs(5), || {
        mock.calls(Endpoint::CheckToken) >= 2
    })
    .await;
    scheduler.stop().await;
    assert_eq!(mock.calls(Endpoint::Token), 1);
}

wetoken_testkit::on_databases!([Sqlite]: an_apps_own_interval_turns_the_slow_check_off_and_on);

on_every_database!(
    a_buggy_reporter_of_a_good_token_makes_no_fetch,
    a_loop_on_rejected_tokens_stops_at_the_reserve,
    sixty_reports_of_a_rejected_token_make_one_check_and_one_fetch,
    a_token_replaced_out_of_band_is_renewed_by_the_slow_check,
    a_halted_app_is_left_alone_by_the_scheduler,
    one_key_cannot_spend_the_days_forced_stable_tokens,
    a_reported_ticket_is_replaced_only_once_old_enough,
    a_wecom_token_is_checked_on_wecoms_own_call,
);

/// Every credential row, as text: what "writes nothing" compares.
async fn snapshot(engine: &Engine) -> Vec<String> {
    let db = engine.store().connection();
    let mut rows = Vec::new();
    for table in [
        "wechat_access_token",
        "wechat_jsapi_ticket",
        "wechat_card_ticket",
    ] {
        let sql = format!("SELECT * FROM {table} ORDER BY appid");
        let statement = Statement::from_string(db.get_database_backend(), sql);
        for row in db.query_all_raw(statement).await.unwrap() {
            rows.push(format!("{table}: {row:?}"));
        }
    }
    rows
}

/// A scheduler running on its own task until stopped.
pub(crate) struct Scheduler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    pub(crate) fn start(engine: &Engine) -> Scheduler {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = engine.clone();
        let task = tokio::spawn(async move {
            engine
                .run_scheduler(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Scheduler { stop, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Polls `done` every 10 ms until it holds; fails the test after `limit`.
pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not done within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
