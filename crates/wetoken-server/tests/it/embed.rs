//! wetoken embedded in another service (`wetoken_server::Embedded`, docs/embedding.md): the
//! axum example's router over real HTTP, the cron-only example's renewal, and two embedded
//! instances sharing one database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use wetoken_core::{AppId, Kind, ManualClock, NewApp, Secret};
use wetoken_mock::{Endpoint, MockWeChat};
use wetoken_server::{Apps, Embedded, PeerAddr, Routes, Settings};

use crate::harness::{SECRET, TestDb, eventually, mock_with, on_every_database, settings};

#[allow(dead_code)]
#[path = "../../examples/embed_axum.rs"]
mod embed_axum;

#[allow(dead_code)]
#[path = "../../examples/cron_only.rs"]
mod cron_only;

const APP: &str = "wx9e02ddcc34513fd4";
/// An app in the same database that the embedding service does not serve.
const OTHER: &str = "wx00000000000other";

on_every_database!(
    the_axum_example_serves_its_routes_and_wetokens_with_one_fetch,
    the_cron_example_renews_a_credential_about_to_expire,
    install_from_code_creates_the_tables_a_registry_node_names,
);

wetoken_testkit::on_databases!([Postgres]: two_embedded_instances_on_one_database_fetch_once);

async fn add_app(wetoken: &Embedded, appid: &str) {
    let app = NewApp::mp(AppId::parse(appid).unwrap(), Secret::new(SECRET));
    wetoken.engine().add_app(&app).await.unwrap();
}

/// Settings whose scheduler scans every 30 ms and renews 20 to 25 minutes before expiry.
fn cron_settings(db: &TestDb, mock: &MockWeChat) -> Settings {
    let mut s = settings(db, mock);
    s.refresh.scan_interval_ms = 30;
    s.refresh.refresh_ahead_secs = 1200;
    s.refresh.jitter_secs = 300;
    s
}

/// Waits for `n` whole scheduler scans of `wetoken` that begin after this call.
async fn sweeps(wetoken: &Embedded, n: u64) {
    let start = wetoken.engine().sweeps();
    eventually(
        &format!("{n} more scheduler scans"),
        Duration::from_secs(20),
        || async { wetoken.engine().sweeps() > start + n },
    )
    .await;
}

async fn the_axum_example_serves_its_routes_and_wetokens_with_one_fetch(db: &TestDb) {
    let mock = mock_with(&[APP, OTHER]).await;
    let wetoken = Embedded::from_settings(&settings(db, &mock)).await.unwrap();
    add_app(&wetoken, APP).await;
    add_app(&wetoken, OTHER).await;
    let app = embed_axum::router(&wetoken, APP, &mock.url()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .into_future(),
    );
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{url}{path}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    // The host's own route.
    let (status, text) = get("/hello".into()).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "hello from the host service\n")
    );

    // A hundred readers at once, half in process and half through the nested routes: one fetch.
    let in_process =
        join_all((0..50).map(|_| async { wetoken.token(APP).await.unwrap().value.clone() }));
    let over_http = join_all((0..50).map(|_| async {
        let (status, text) = get(format!("/wetoken/{APP}/wechat/token/get")).await;
        assert_eq!(status, 200, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }));
    let (in_process, over_http) = tokio::join!(in_process, over_http);
    let token = mock.current_token(APP).expect("a token was fetched");
    assert!(
        in_process.iter().chain(&over_http).all(|t| *t == token),
        "every reader gets the one token"
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The ticket route is nested too.
    let (status, text) = get(format!("/wetoken/{APP}/wechat/ticket/get")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(mock.calls(Endpoint::Ticket), 1);

    // The mount serves its app alone: another app in the database is unknown to it, and the
    // admin routes are not mounted.
    let (status, text) = get(format!("/wetoken/{OTHER}/wechat/token/get")).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, &body["errcode"]), (404, &json!(90404)), "{text}");
    let (status, _) = get("/wetoken/wechat/app/list".into()).await;
    assert_eq!(status, 404);
    assert_eq!(mock.token_fetches(OTHER), 0);

    // The host's handler calls WeChat's menu API with the in-process token, through `call`.
    let buttons = json!([{"type": "click", "name": "Hi", "key": "HI"}]);
    let response = http
        .post(format!("{url}/menu"))
        .json(&json!({"button": buttons}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"errcode": 0, "errmsg": "ok"})
    );
    let (status, text) = get("/menu".into()).await;
    assert_eq!(status, 200, "{text}");
    let menu: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(menu, json!({"menu": {"button": buttons}}));
    assert_eq!(mock.calls(Endpoint::MenuGet), 1);
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "the menu calls used the one token"
    );

    let _ = stop.send(());
    served.await.unwrap().unwrap();

    // As a hyper service, without the caller's address: unknown, so refused while no consumer
    // key exists; with it, answered.
    let service = wetoken.service(Routes::credentials());
    let request = |peer: Option<PeerAddr>| {
        let mut request = http::Request::get(format!("/{APP}/wechat/token/get"))
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        request
    };
    let answer = |request| {
        let service = service.clone();
        async move {
            let response = hyper::service::Service::call(&service, request)
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, body) = answer(request(None)).await;
    assert_eq!((status, &body["errcode"]), (403, &json!(90403)), "{body}");
    let local = PeerAddr(std::net::IpAddr::from([127, 0, 0, 1]));
    let (status, body) = answer(request(Some(local))).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!(token)),
        "{body}"
    );
    wetoken.shutdown().await;
}

async fn the_cron_example_renews_a_credential_about_to_expire(db: &TestDb) {
    let mock = mock_with(&[APP, OTHER]).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let wetoken = Embedded::with_clock(&cron_settings(db, &mock), clock.clone())
        .await
        .unwrap();
    add_app(&wetoken, APP).await;
    add_app(&wetoken, OTHER).await;
    let first = wetoken.token(APP).await.unwrap().value.clone();
    let other = wetoken.token(OTHER).await.unwrap().value.clone();
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // 1190 s left: inside every app's renewal window (20 to 25 minutes), still served.
    clock.advance(Duration::from_secs(7200 - 1190));
    let limit = Duration::from_secs(20);
    // No route is mounted: the scheduler alone, for APP alone.
    cron_only::cron(&wetoken, Apps::only([APP]).unwrap(), async {
        eventually("the scheduler renews APP's token", limit, || async {
            mock.calls(Endpoint::Token) >= 3
        })
        .await;
        sweeps(&wetoken, 2).await;
    })
    .await;
    let renewed = mock.current_token(APP).unwrap();
    assert_ne!(renewed, first);
    assert_eq!(wetoken.token(APP).await.unwrap().value, renewed);
    assert_eq!(
        mock.calls(Endpoint::Token),
        3,
        "one renewal, and none of the app outside the cron's"
    );
    assert_eq!(mock.current_token(OTHER), Some(other));

    // Stopped: nothing more is renewed.
    clock.advance(Duration::from_secs(7200 - 1190));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.calls(Endpoint::Token), 3);
}

async fn two_embedded_instances_on_one_database_fetch_once(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let s = cron_settings(db, &mock);
    let a = Embedded::with_clock(&s, clock.clone()).await.unwrap();
    let b = Embedded::with_clock(&s, clock.clone()).await.unwrap();
    add_app(&a, APP).await;

    let reads = join_all((0..100).map(|i| {
        let wetoken = if i % 2 == 0 { &a } else { &b };
        async move { wetoken.token(APP).await.unwrap().value.clone() }
    }))
    .await;
    assert!(reads.iter().all(|t| *t == reads[0]));
    assert_eq!(mock.calls(Endpoint::Token), 1, "one fetch between them");

    // Both run the scheduler; the renewal is one fetch too.
    a.start_cron(Apps::all());
    b.start_cron(Apps::only([APP]).unwrap());
    clock.advance(Duration::from_secs(7200 - 1190));
    eventually("one of them renews", Duration::from_secs(20), || async {
        mock.calls(Endpoint::Token) >= 2
    })
    .await;
    sweeps(&a, 2).await;
    sweeps(&b, 2).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(mock.calls(Endpoint::Token), 2, "one renewal between them");

    // Each serves the renewed token and ticket, but not necessarily at once. The one that
    // neither fetched a credential nor waited for it under the lease learns of the other's
    // write from its change feed, within `cache_check_ms` (docs/ARCHITECTURE.md, "Cache
    // coherence"); until then it serves the value it holds, which WeChat keeps valid for five
    // minutes. `shutdown` stops the scheduler, not the feed, and this clock stands still, so
    // no cached value ages out: only the feed brings the stale one round.
    let token = mock.current_token(APP).unwrap();
    let ticket = mock.current_ticket(APP, "jsapi").unwrap();
    let bound = Duration::from_millis(s.refresh.cache_check_ms) + Duration::from_secs(2);
    for (name, wetoken) in [("a", &a), ("b", &b)] {
        eventually(
            &format!("{name} serves the renewed token and ticket"),
            bound,
            || async {
                wetoken.token(APP).await.unwrap().value == token
                    && wetoken.ticket(APP, Kind::JsapiTicket).await.unwrap().value == ticket
            },
        )
        .await;
    }
    assert_eq!(mock.calls(Endpoint::Token), 2, "and none since");
}

/// `wetoken_server::install`, the Go wetoken's `wetoken zk://… mall` from code: the tables of
/// the database a registry's node names, then an engine on them that migrates nothing.
async fn install_from_code_creates_the_tables_a_registry_node_names(db: &TestDb) {
    let dir = std::env::temp_dir().join(format!(
        "wetoken-embed-install-{}-{}",
        std::process::id(),
        db.name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("fs://{}", dir.display());
    let registry = wetoken_registry::Registry::open(&url).await.unwrap();
    registry
        .write_json("/mall/var/db/db", &json!({"url": db.url}))
        .await
        .unwrap();
    let takeover = Default::default();
    let installed = wetoken_server::install(&url, "mall", "db", &takeover)
        .await
        .unwrap();
    assert!(!installed.applied.is_empty(), "{installed}");
    let again = wetoken_server::install(&url, "mall", "db", &takeover)
        .await
        .unwrap();
    assert!(again.applied.is_empty(), "{again}");

    let mock = mock_with(&[APP]).await;
    let mut s = settings(db, &mock);
    s.auto_migrate = false;
    let wetoken = Embedded::from_settings(&s).await.unwrap();
    add_app(&wetoken, APP).await;
    wetoken.token(APP).await.unwrap();
    assert_eq!(mock.calls(Endpoint::Token), 1);

    let missing = wetoken_server::install(&url, "mall", "nope", &takeover).await;
    assert!(
        matches!(missing, Err(wetoken_server::StartError::Registry(_))),
        "{missing:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
