//! `/component/{id}/event`: the mock WeChat pushes verify tickets, authorizations and
//! withdrawals to a real server, which stores what they carry and answers `success`; forged,
//! replayed (on another replica too), stale, oversized and malformed pushes are refused with
//! nothing stored, and an address that keeps sending refused pushes is rate-limited.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use wetoken_core::msgcrypt::MsgCrypt;
use wetoken_core::{AppId, Kind};
use wetoken_mock::{Endpoint, Fault, MockComponent, MockConfig, MockWeChat, Pushed};
use wetoken_server::{Apps, Embedded, PeerAddr, Routes, Settings};

use crate::harness::{TestDb, TestServer, eventually, on_every_database, sample, settings};

pub(crate) const COMPONENT: &str = "wxcomponent01";
const COMPONENT_SECRET: &str = "componentsecret";
const TOKEN: &str = "pushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AUTHORIZER: &str = "wxauthorizer01";

on_every_database!(
    pushes_store_tickets_and_authorizations,
    a_replay_is_refused_on_every_replica,
    a_push_that_failed_is_handled_when_wechat_sends_it_again,
);

async fn mock() -> MockWeChat {
    let config = MockConfig {
        verify_ticket_interval: None,
        ..MockConfig::default()
    };
    MockWeChat::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The component as the mock knows it, pushing to `push_url`.
fn mock_component(push_url: &str) -> MockComponent {
    MockComponent {
        appid: COMPONENT.into(),
        secret: COMPONENT_SECRET.into(),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        push_url: Some(push_url.into()),
    }
}

fn event_url(server: &TestServer) -> String {
    format!("{}/component/{COMPONENT}/event", server.url)
}

fn id(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

/// A server that knows the component, and a mock that pushes to it.
pub(crate) async fn started(
    db: &TestDb,
    tweak: impl FnOnce(&mut Settings),
) -> (MockWeChat, TestServer) {
    let mock = mock().await;
    let mut settings = settings(db, &mock);
    tweak(&mut settings);
    let server = TestServer::start(settings).await;
    let (status, body) = server
        .get(&format!(
            "/wechat/app/create?appid={COMPONENT}&kind=component&secret={COMPONENT_SECRET}\
             &token={TOKEN}&aes_key={AES_KEY}"
        ))
        .await;
    assert_eq!((status, &body["errcode"]), (200, &json!(0)), "{body}");
    mock.add_component(mock_component(&event_url(&server)))
        .unwrap();
    (mock, server)
}

/// A push as accepted: 200 and the plain text `success`.
fn assert_success(pushed: &Pushed) {
    assert_eq!(
        (pushed.status, pushed.answer.as_deref()),
        (Some(200), Some("success")),
        "{pushed:?}"
    );
}

/// A push as refused: `status`, and the JSON error body with `errcode`.
fn assert_refused(pushed: &Pushed, status: u16, errcode: i64) {
    assert_eq!(pushed.status, Some(status), "{pushed:?}");
    let body: Value = serde_json::from_str(pushed.answer.as_deref().unwrap()).unwrap();
    assert_eq!(body["errcode"], json!(errcode), "{body}");
    assert!(body["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Sends a push's query and `body` to `url` as WeChat would; the status and the answer.
async fn send(url: &str, query: &[(String, String)], body: impl Into<String>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .query(query)
        .header("content-type", "text/xml")
        .body(body.into())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn errcode(answer: &str) -> i64 {
    let body: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    body["errcode"].as_i64().unwrap()
}

/// `query` with `name` set to `value`.
fn with(query: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    query
        .iter()
        .map(|(k, v)| (k.clone(), if k == name { value.into() } else { v.clone() }))
        .collect()
}

async fn pushes_store_tickets_and_authorizations(db: &TestDb) {
    let (mock, server) = started(db, |_| {}).await;
    let component = id(COMPONENT);

    // A verify ticket is stored, and the component token is fetched with it.
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_success(&pushed);
    let stored = server.engine.verify_ticket(&component).await.unwrap();
    assert_eq!(stored.map(|t| t.ticket), pushed.ticket);
    let token = server
        .engine
        .get(&component, Kind::AccessToken)
        .await
        .unwrap();
    assert_eq!(
        Some(token.value.clone()),
        mock.current_component_token(COMPONENT)
    );

    // An authorization: the authorizer is stored before the answer, and its token served by
    // the ordinary route.
    let pushed = mock
        .authorize(COMPONENT, Some(AUTHORIZER), None)
        .await
        .unwrap();
    assert_success(&pushed);
    assert_eq!(
        Some(server.token(AUTHORIZER).await),
        mock.current_authorizer_token(AUTHORIZER)
    );
    assert_eq!(mock.calls(Endpoint::QueryAuth), 1);

    // A changed authorization exchanges its new code; the authorizer goes on being served.
    let pushed = mock
        .update_authorization(COMPONENT, AUTHORIZER)
        .await
        .unwrap();
    assert_success(&pushed);
    assert_eq!(mock.calls(Endpoint::QueryAuth), 2);
    assert_eq!(
        Some(server.token(AUTHORIZER).await),
        mock.current_authorizer_token(AUTHORIZER)
    );

    // A withdrawal: nothing is served for it any more.
    let pushed = mock.unauthorize(COMPONENT, AUTHORIZER).await.unwrap();
    assert_success(&pushed);
    let (status, body) = server.get(&format!("/{AUTHORIZER}/wechat/token/get")).await;
    assert_eq!((status, &body["errcode"]), (410, &json!(90460)), "{body}");

    let metrics = server.text("/metrics").await;
    for info_type in [
        "component_verify_ticket",
        "authorized",
        "updateauthorized",
        "unauthorized",
    ] {
        let series =
            format!("wetoken_component_pushes_total{{info_type=\"{info_type}\",outcome=\"ok\"}}");
        assert!(sample(&metrics, &series).unwrap_or(0.0) >= 1.0, "{series}");
    }
    server.stop().await;
}

async fn a_replay_is_refused_on_every_replica(db: &TestDb) {
    let (mock, server) = started(db, |_| {}).await;
    let component = id(COMPONENT);
    let first = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_success(&first);

    // A newer ticket, then the first one replayed: refused, and the newer stays.
    let second = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_success(&second);
    let replayed = mock.resend(&first).await;
    assert_refused(&replayed, 403, 90403);
    assert!(
        replayed.answer.as_deref().unwrap().contains("replay"),
        "{replayed:?}"
    );
    let stored = server.engine.verify_ticket(&component).await.unwrap();
    assert_eq!(stored.map(|t| t.ticket), second.ticket);

    // The same signature in upper case verifies, and is still a replay.
    let upper = second
        .query
        .iter()
        .find(|(k, _)| k == "msg_signature")
        .unwrap()
        .1
        .to_ascii_uppercase();
    let (status, answer) = send(
        &second.url,
        &with(&second.query, "msg_signature", &upper),
        second.body.clone(),
    )
    .await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");

    // Another replica on the same database refuses it too.
    let replica = TestServer::start(settings(db, &mock)).await;
    let elsewhere = Pushed {
        url: event_url(&replica),
        ..second.clone()
    };
    assert_refused(&mock.resend(&elsewhere).await, 403, 90403);
    // And accepts what it has not seen.
    mock.add_component(mock_component(&event_url(&replica)))
        .unwrap();
    assert_success(&mock.push_verify_ticket(COMPONENT).await.unwrap());

    // A replayed authorization does not exchange its code again.
    mock.add_component(mock_component(&event_url(&server)))
        .unwrap();
    let authorized = mock
        .authorize(COMPONENT, Some(AUTHORIZER), None)
        .await
        .unwrap();
    assert_success(&authorized);
    assert_refused(&mock.resend(&authorized).await, 403, 90403);
    assert_eq!(mock.calls(Endpoint::QueryAuth), 1);

    replica.stop().await;
    server.stop().await;
}

/// Forged pushes: another token, another key, a tampered body, a wrong or missing signature.
/// Each is refused with 403 before anything is stored; the genuine push, sent after its
/// tampered copies, is still accepted (a refusal does not use up its signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pushes_are_refused_and_store_nothing() {
    let db = TestDb::sqlite().await;
    let (mock, server) = started(&db, |_| {}).await;
    let component = id(COMPONENT);
    let url = event_url(&server);

    // The mock signs with another token, then encrypts with another key.
    mock.add_component(MockComponent {
        token: "anothertoken".into(),
        ..mock_component(&url)
    })
    .unwrap();
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_refused(&pushed, 403, 90403);
    mock.add_component(MockComponent {
        aes_key: "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj".into(),
        ..mock_component(&url)
    })
    .unwrap();
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_refused(&pushed, 403, 90403);
    assert!(
        server
            .engine
            .verify_ticket(&component)
            .await
            .unwrap()
            .is_none()
    );

    // A genuine push, held back (its URL goes nowhere) and tampered with.
    mock.add_component(mock_component("http://127.0.0.1:9/nowhere"))
        .unwrap();
    let genuine = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert!(genuine.status.is_none());
    let body = genuine.body.clone();
    let at = body.find("<Encrypt><![CDATA[").unwrap() + 20;
    let flipped = if &body[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &body[..at], &body[at + 1..]);
    let (status, answer) = send(&url, &genuine.query, tampered).await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    let bad = "0".repeat(40);
    let (status, answer) = send(
        &url,
        &with(&genuine.query, "msg_signature", &bad),
        body.clone(),
    )
    .await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    let unsigned: Vec<_> = genuine
        .query
        .iter()
        .filter(|(k, _)| k != "msg_signature")
        .cloned()
        .collect();
    let (status, answer) = send(&url, &unsigned, body.clone()).await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    // The timestamp and nonce are signed too.
    let ts: i64 = genuine
        .query
        .iter()
        .find(|(k, _)| k == "timestamp")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let (status, answer) = send(
        &url,
        &with(&genuine.query, "timestamp", &(ts + 1).to_string()),
        body.clone(),
    )
    .await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    assert!(
        server
            .engine
            .verify_ticket(&component)
            .await
            .unwrap()
            .is_none()
    );

    let (status, answer) = send(&url, &genuine.query, body).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let stored = server.engine.verify_ticket(&component).await.unwrap();
    assert_eq!(stored.map(|t| t.ticket), genuine.ticket);

    let metrics = server.text("/metrics").await;
    let forged = "wetoken_component_pushes_total{info_type=\"unknown\",outcome=\"forged\"}";
    assert!(sample(&metrics, forged).unwrap_or(0.0) >= 6.0, "{metrics}");
    server.stop().await;
    db.drop_db().await;
}

/// Stale, oversized, malformed pushes, other methods, and pushes for what is not a component
/// this server knows: each refused with its own status, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_get_clear_errors() {
    let db = TestDb::sqlite().await;
    let (mock, server) = started(&db, |_| {}).await;
    let component = id(COMPONENT);
    let url = event_url(&server);

    // An hour ahead of the server's clock (the mock's clock moved on), then within it, then an
    // hour behind it.
    mock.add_component(mock_component("http://127.0.0.1:9/nowhere"))
        .unwrap();
    mock.advance(Duration::from_secs(3600));
    let ahead = mock.push_verify_ticket(COMPONENT).await.unwrap();
    let (status, answer) = send(&url, &ahead.query, ahead.body.clone()).await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    assert!(answer.contains("push_window_secs"), "{answer}");
    server.clock.advance(Duration::from_secs(3600));
    // The refusal did not use it up.
    let (status, answer) = send(&url, &ahead.query, ahead.body.clone()).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let behind = mock.push_verify_ticket(COMPONENT).await.unwrap();
    server.clock.advance(Duration::from_secs(3600));
    let (status, answer) = send(&url, &behind.query, behind.body.clone()).await;
    assert_eq!((status, errcode(&answer)), (403, 90403), "{answer}");
    mock.advance(Duration::from_secs(3600));

    let genuine = mock.push_verify_ticket(COMPONENT).await.unwrap();
    // Oversized.
    let padded = format!("{}{}", genuine.body, " ".repeat(70 * 1024));
    let (status, answer) = send(&url, &genuine.query, padded).await;
    assert_eq!((status, errcode(&answer)), (413, 90413), "{answer}");
    // Not XML, XML without Encrypt, a DTD.
    for body in [
        "not xml".to_owned(),
        "<xml><AppId>wxcomponent01</AppId></xml>".to_owned(),
        "<!DOCTYPE xml [<!ENTITY a \"b\">]><xml><Encrypt>&a;</Encrypt></xml>".to_owned(),
    ] {
        let (status, answer) = send(&url, &genuine.query, body.clone()).await;
        assert_eq!((status, errcode(&answer)), (400, 90400), "{body}: {answer}");
    }
    // No timestamp; a timestamp that is no number.
    let untimed: Vec<_> = genuine
        .query
        .iter()
        .filter(|(k, _)| k != "timestamp")
        .cloned()
        .collect();
    let (status, answer) = send(&url, &untimed, genuine.body.clone()).await;
    assert_eq!((status, errcode(&answer)), (400, 90400), "{answer}");
    let (status, answer) = send(
        &url,
        &with(&genuine.query, "timestamp", "-5"),
        genuine.body.clone(),
    )
    .await;
    assert_eq!((status, errcode(&answer)), (400, 90400), "{answer}");
    // Another method.
    let response = reqwest::Client::new()
        .put(&url)
        .query(&genuine.query)
        .body(genuine.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    // An unknown platform, and an app that is no platform: the same 404.
    server.add_app("wxplainapp01").await;
    for other in ["wxnobody", "wxplainapp01", "bad..id"] {
        let (status, answer) = send(
            &format!("{}/component/{other}/event", server.url),
            &genuine.query,
            genuine.body.clone(),
        )
        .await;
        let expected = if other == "bad..id" { 400 } else { 404 };
        assert_eq!(status, expected, "{other}: {answer}");
    }
    let stored = server.engine.verify_ticket(&component).await.unwrap();
    assert_eq!(stored.map(|t| t.ticket), ahead.ticket);

    // The genuine push is still accepted after all that.
    let (status, answer) = send(&url, &genuine.query, genuine.body.clone()).await;
    assert_eq!((status, answer.as_str()), (200, "success"));

    // WeChat's URL check: the decrypted echostr, answered as text.
    let crypt = MsgCrypt::new(TOKEN, AES_KEY, COMPONENT).unwrap();
    let now = server.engine.now().timestamp();
    let sealed = crypt.seal("1616140317555161061", now, "n0nce").unwrap();
    let response = reqwest::Client::new()
        .get(&url)
        .query(&[
            ("msg_signature", sealed.msg_signature.as_str()),
            ("timestamp", sealed.timestamp.as_str()),
            ("nonce", "n0nce"),
            ("echostr", sealed.encrypt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "1616140317555161061");
    let response = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    server.stop().await;
    db.drop_db().await;
}

/// An address that keeps sending refused pushes is refused at once (429, Retry-After), before
/// anything is looked up; accepted pushes cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pushes_are_rate_limited_per_address() {
    let db = TestDb::sqlite().await;
    let (mock, server) = started(&db, |s| {
        s.http.push_refusal_burst = 3;
        s.http.push_refusal_per_minute = 1;
    })
    .await;
    let url = event_url(&server);
    // Accepted pushes, more than the burst: none is limited.
    for _ in 0..5 {
        assert_success(&mock.push_verify_ticket(COMPONENT).await.unwrap());
    }
    mock.add_component(mock_component("http://127.0.0.1:9/nowhere"))
        .unwrap();
    let genuine = mock.push_verify_ticket(COMPONENT).await.unwrap();
    let forged = with(&genuine.query, "msg_signature", &"0".repeat(40));
    for _ in 0..3 {
        let (status, _) = send(&url, &forged, genuine.body.clone()).await;
        assert_eq!(status, 403);
    }
    let response = reqwest::Client::new()
        .post(&url)
        .query(&forged)
        .body(genuine.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(errcode(&response.text().await.unwrap()), 90429);
    // The address is refused whatever it sends, until its bucket refills.
    let (status, _) = send(&url, &genuine.query, genuine.body.clone()).await;
    assert_eq!(status, 429);
    let metrics = server.text("/metrics").await;
    let limited = "wetoken_component_pushes_total{info_type=\"unknown\",outcome=\"limited\"}";
    assert!(sample(&metrics, limited).unwrap_or(0.0) >= 2.0, "{metrics}");
    server.stop().await;
    db.drop_db().await;
}

/// An `authorized` push whose exchange is slow is answered `success` within WeChat's 5 s, and
/// the authorizer is stored when the exchange ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_authorization_is_answered_in_time() {
    let db = TestDb::sqlite().await;
    let (mock, server) = started(&db, |s| s.wechat_timeout_secs = 10).await;
    assert_success(&mock.push_verify_ticket(COMPONENT).await.unwrap());
    mock.inject(Endpoint::QueryAuth, Fault::Delay(Duration::from_secs(5)), 1);
    let started = Instant::now();
    let pushed = mock
        .authorize(COMPONENT, Some(AUTHORIZER), None)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_success(&pushed);
    assert!(
        took < Duration::from_millis(4500),
        "answered after {took:?}"
    );
    eventually(
        "the authorizer to be stored",
        Duration::from_secs(15),
        || async {
            server
                .engine
                .store()
                .app(&id(AUTHORIZER))
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    assert_eq!(
        Some(server.token(AUTHORIZER).await),
        mock.current_authorizer_token(AUTHORIZER)
    );
    server.stop().await;
    db.drop_db().await;
}

/// An embedded mount serves pushes only when it mounts the route group, and only for the
/// platforms among its apps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_accepts_pushes_for_its_components_only() {
    let db = TestDb::sqlite().await;
    let (mock, server) = started(&db, |_| {}).await;
    mock.add_component(mock_component("http://127.0.0.1:9/nowhere"))
        .unwrap();
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    let wetoken = Embedded::from_settings(&settings(&db, &mock))
        .await
        .unwrap();
    let target = format!(
        "/component/{COMPONENT}/event?{}",
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pushed.query)
            .finish()
    );
    let answer = |routes: Routes| {
        let service = wetoken.service(routes);
        let mut request = http::Request::post(target.clone())
            .body(Full::new(Bytes::from(pushed.body.clone())))
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(std::net::IpAddr::from([127, 0, 0, 1])));
        async move {
            let response = hyper::service::Service::call(&service, request)
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // Not mounted: no such route.
    let (status, _) = answer(Routes::credentials()).await;
    assert_eq!(status, 404);
    // Mounted for other apps: the platform is unknown.
    let others = Apps::only(["wxsomeoneelse"]).unwrap();
    let (status, body) = answer(Routes::credentials().with_events(true).apps(others)).await;
    assert_eq!((status, errcode(&body)), (404, 90404), "{body}");
    assert!(
        server
            .engine
            .verify_ticket(&id(COMPONENT))
            .await
            .unwrap()
            .is_none()
    );
    // Mounted for it: accepted.
    let own = Apps::only([COMPONENT]).unwrap();
    let (status, body) = answer(Routes::credentials().with_events(true).apps(own)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert!(
        server
            .engine
            .verify_ticket(&id(COMPONENT))
            .await
            .unwrap()
            .is_some()
    );
    wetoken.shutdown().await;
    server.stop().await;
    db.drop_db().await;
}

/// A push answered with an error so that WeChat sends it again (here WeChat was unreachable for
/// the exchange) is handled when it comes again, byte for byte: it is not a replay.
async fn a_push_that_failed_is_handled_when_wechat_sends_it_again(db: &TestDb) {
    let (mock, server) = started(db, |_| {}).await;
    assert_success(&mock.push_verify_ticket(COMPONENT).await.unwrap());
    mock.inject(Endpoint::QueryAuth, Fault::HttpStatus(502), 1);
    let pushed = mock
        .authorize(COMPONENT, Some(AUTHORIZER), None)
        .await
        .unwrap();
    let status = pushed.status.unwrap_or(0);
    assert!((500..600).contains(&status), "{pushed:?}");
    let (code, _) = server.get(&format!("/{AUTHORIZER}/wechat/token/get")).await;
    assert_eq!(code, 404, "nothing stored yet");

    // WeChat's retry: the same request.
    let again = mock.resend(&pushed).await;
    assert_success(&again);
    assert_eq!(
        Some(server.token(AUTHORIZER).await),
        mock.current_authorizer_token(AUTHORIZER)
    );
    // Once handled, the same push again is a replay.
    assert_refused(&mock.resend(&pushed).await, 403, 90403);
}
