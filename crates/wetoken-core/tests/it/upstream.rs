//! A hostile upstream (issue #17): what "WeChat" answers is trusted no further than it must be.
//! Each case is injected at the mock; the engine must refuse it, keep the secret at home, and
//! store, log and return nothing unbounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use wetoken_core::{
    AppId, Engine, EngineConfig, Kind, ManualClock, NewApp, Secret, wechat::MAX_ERRMSG_CHARS,
};
use wetoken_mock::{Endpoint, Fault, MockWeChat};

use super::{engine, engine_and_clock};

/// Past any backoff a failed fetch leaves.
fn past_backoff(clock: &ManualClock) {
    clock.advance(Duration::from_secs(3600));
}

const SECRET: &str = "s3cret-that-must-stay-home";

async fn app(mock: &MockWeChat, engine: &Engine) -> AppId {
    mock.add_app("wxhostile", SECRET);
    let app = NewApp::mp(AppId::parse("wxhostile").unwrap(), Secret::new(SECRET));
    engine.add_app(&app).await.unwrap();
    app.appid
}

/// The stored outcome of the last refresh of `appid`'s token.
async fn stored_message(engine: &Engine, appid: &AppId) -> String {
    let status = engine.app_status(appid).await.unwrap();
    status.access_token.map(|r| r.message).unwrap_or_default()
}

/// A listener standing in for the redirect's target: counts the connections it gets and keeps
/// what they sent.
struct Elsewhere {
    url: String,
    connections: Arc<AtomicUsize>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

async fn elsewhere() -> Elsewhere {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, keep) = (connections.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    Elsewhere {
        url,
        connections,
        received,
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_secret_stays_home() {
    let mock = MockWeChat::start().await.unwrap();
    let (engine, clock) = engine_and_clock(&mock, EngineConfig::default()).await;
    let appid = app(&mock, &engine).await;
    let target = elsewhere().await;
    mock.inject(Endpoint::Token, Fault::Redirect(target.url.clone()), 1);

    let refused = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    assert!(
        refused.to_string().contains("redirect"),
        "the caller learns why: {refused}"
    );
    // Had the client followed, the request (and the secret in its query) would have reached the
    // target before `get` returned.
    assert_eq!(target.connections.load(Ordering::SeqCst), 0);
    let sent = String::from_utf8_lossy(&target.received.lock().unwrap()).into_owned();
    assert!(
        !sent.contains(SECRET),
        "the secret reached the redirect's target"
    );
    assert!(stored_message(&engine, &appid).await.contains("302"));

    // WeChat itself, next time, is served as usual.
    past_backoff(&clock);
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    assert_eq!(
        mock.current_token("wxhostile").as_deref(),
        Some(token.value.as_str())
    );
}

#[tokio::test]
async fn an_oversized_answer_is_refused_unread() {
    let mock = MockWeChat::start().await.unwrap();
    let (engine, clock) = engine_and_clock(&mock, EngineConfig::default()).await;
    let appid = app(&mock, &engine).await;

    mock.inject(Endpoint::Token, Fault::Oversized(200 * 1024 * 1024), 1);
    let refused = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    assert!(refused.to_string().contains("larger than"), "{refused}");
    past_backoff(&clock);
    mock.inject(Endpoint::Token, Fault::Oversized(64 * 1024 + 1), 1);
    let refused = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    assert!(refused.to_string().contains("larger than"), "{refused}");
    // An answer at the limit is read (and its token, the mock's "OVERSIZED", served).
    past_backoff(&clock);
    mock.inject(Endpoint::Token, Fault::Oversized(64 * 1024), 1);
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    assert_eq!(token.value, "OVERSIZED");
}

#[tokio::test]
async fn errmsg_is_cut_and_cleaned_before_it_is_stored_or_returned() {
    let mock = MockWeChat::start().await.unwrap();
    let engine = engine(&mock).await;
    let appid = app(&mock, &engine).await;
    let errmsg = format!(
        "{}\n2026-12-05T00:00:00Z INFO wetoken: admin key is hunter2\u{1b}[2J\u{202e}",
        "system busy ".repeat(2000)
    );
    mock.inject(
        Endpoint::Token,
        Fault::Answer(json!({"errcode": -1, "errmsg": errmsg})),
        1,
    );
    let refused = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    for (what, text) in [
        ("the error", refused.to_string()),
        ("the stored message", stored_message(&engine, &appid).await),
    ] {
        assert!(text.contains("system busy"), "{what}: {text}");
        assert!(
            text.chars().count() <= MAX_ERRMSG_CHARS + 64,
            "{what} is {} characters",
            text.chars().count()
        );
        assert!(!text.chars().any(char::is_control), "{what}: {text:?}");
        assert!(!text.contains("hunter2"), "{what} keeps the tail: {text}");
    }
}

#[tokio::test]
async fn an_implausible_token_is_not_stored_or_served() {
    let mock = MockWeChat::start().await.unwrap();
    let (engine, clock) = engine_and_clock(&mock, EngineConfig::default()).await;
    let appid = app(&mock, &engine).await;
    for token in [
        "tok\r\nSet-Cookie: x=1".to_owned(),
        "<script>".to_owned() + " ",
        "a".repeat(10_000),
    ] {
        past_backoff(&clock);
        mock.inject(
            Endpoint::Token,
            Fault::Answer(json!({"access_token": token, "expires_in": 7200})),
            1,
        );
        let refused = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
        assert!(refused.to_string().contains("printable ASCII"), "{refused}");
        let stored = engine.app_status(&appid).await.unwrap();
        assert!(
            stored.access_token.and_then(|r| r.credential).is_none(),
            "nothing stored"
        );
    }
}
