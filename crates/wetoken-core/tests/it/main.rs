//! The engine on its own, over in-memory SQLite and the mock WeChat.

mod feed_model;
mod lease_model;
mod lease_replicas;
mod quota_guard;

use std::sync::Arc;

use chrono::Utc;
use wetoken_core::{
    AppId, DatabaseOptions, Engine, EngineConfig, Error, Kind, ManualClock, NewApp, Secret, Store,
    WeChat, WeChatOptions,
};
use wetoken_mock::{Endpoint, MockWeChat};

async fn engine(mock: &MockWeChat) -> Engine {
    engine_with(mock, EngineConfig::default()).await
}

/// An engine over a fresh in-memory SQLite database, calling `mock`.
async fn engine_with(mock: &MockWeChat, config: EngineConfig) -> Engine {
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
    Engine::new(store, wechat, clock, config).unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_of_many_apps_is_paced_not_a_burst() {
    let mock = MockWeChat::start().await.unwrap();
    let config = EngineConfig {
        max_refresh_rate: 40,
        concurrency: 8,
        scan_interval_ms: 50,
        refresh_tickets: false,
        ..EngineConfig::default()
    };
    let engine = engine_with(&mock, config).await;
    for i in 0..120 {
        let appid = format!("wxpaced{i:03}");
        mock.add_app(&appid, "s");
        engine
            .add_app(&NewApp::mp(AppId::parse(&appid).unwrap(), Secret::new("s")))
            .await
            .unwrap();
    }
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
    let _ = stop.send(());
    scheduler.await.unwrap();
    assert_eq!(mock.calls(Endpoint::Token), 120, "each app once");
}
