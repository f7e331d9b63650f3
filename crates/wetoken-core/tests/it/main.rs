//! The engine on its own, over in-memory SQLite and the mock WeChat.

mod lease_model;

use std::sync::Arc;

use chrono::Utc;
use wetoken_core::{
    AppId, DatabaseOptions, Engine, EngineConfig, Error, Kind, ManualClock, NewApp, Secret, Store,
    WeChat, WeChatOptions,
};
use wetoken_mock::{Endpoint, MockWeChat};

async fn engine(mock: &MockWeChat) -> Engine {
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
    Engine::new(store, wechat, clock, EngineConfig::default()).unwrap()
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
    let real = NewApp {
        appid: AppId::parse("wxreal").unwrap(),
        secret: Secret::new("s"),
        token: None,
        aes_key: None,
    };
    engine.add_app(&real).await.unwrap();
    engine.get(&real.appid, Kind::JsapiTicket).await.unwrap();
    assert_eq!(engine.cached_credentials(), 2, "the token and the ticket");
}
