//! The contract between the server and `wetoken-client`: the real client against real servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wetoken_client::{
    AccessToken, CallError, Error, JsapiTicket, JssdkConfig, TicketKind, TokenSource, call,
};
use wetoken_mock::Endpoint;

use wetoken_server::CredentialErrors;

use crate::harness::{TestDb, TestServer, mock_with, on_every_database, settings};

const APP: &str = "wxclient";

on_every_database!(client_reads_what_the_server_serves);

async fn client_reads_what_the_server_serves(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;

    let source = AccessToken::by_url(&format!("{}/{APP}/wechat/token/get", server.url)).unwrap();
    assert!(source.expires_at().await.is_none());
    let tokens = join_all((0..100).map(|_| source.token())).await;
    let token = tokens[0].as_ref().unwrap().clone();
    assert!(tokens.iter().all(|t| t.as_ref().unwrap() == &token));
    assert_eq!(Some(token), mock.current_token(APP));
    assert!(source.expires_at().await.is_some());

    let ticket = JsapiTicket::by_url(&format!("{}/wx/{APP}/ticket/get", server.url)).unwrap();
    assert_eq!(
        ticket.ticket().await.ok(),
        mock.current_ticket(APP, "jsapi")
    );
    let card = JsapiTicket::builder()
        .url(format!("{}/{APP}/wechat/ticket/get", server.url))
        .kind(TicketKind::Card)
        .build()
        .unwrap();
    assert_eq!(
        card.ticket().await.ok(),
        mock.current_ticket(APP, "wx_card")
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // wx.config, signed by the server with the ticket it holds; a dead first server is skipped.
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let jssdk = JssdkConfig::builder()
        .url(format!("{dead}/{APP}/wechat/jssdk/config"))
        .url(format!("{}/{APP}/wechat/jssdk/config", server.url))
        .build()
        .unwrap();
    let page = "https://shop.example/pay?order=7&from=menu";
    let config = jssdk.sign(&format!("{page}#top")).await.unwrap();
    assert_eq!(config.app_id, APP);
    let ticket = mock.current_ticket(APP, "jsapi").unwrap();
    assert_eq!(
        config.signature,
        wetoken_core::sign::jsapi_signature(&ticket, &config.nonce_str, config.timestamp, page)
    );
    match jssdk.sign("ftp://shop.example/").await {
        Err(Error::Refused { status: 400, .. }) => {}
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    for bad in [
        "",
        "ftp://x/a/wechat/jssdk/config",
        "http://x/a/wechat/token/get",
    ] {
        assert!(
            matches!(JssdkConfig::by_url(bad), Err(Error::InvalidUrl { .. })),
            "{bad}"
        );
    }

    let unknown =
        AccessToken::by_url(&format!("{}/wxnobody/wechat/token/get", server.url)).unwrap();
    match unknown.token().await {
        Err(Error::Refused { status: 404, body }) => assert_eq!(body.errcode, 90404),
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    server.stop().await;
}

/// An HTTP proxy in front of a server that counts the requests it forwards, by path.
struct Counter {
    url: String,
    gets: Arc<AtomicU64>,
    refreshes: Arc<AtomicU64>,
}

async fn counting_proxy(target: String) -> Counter {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gets = Arc::new(AtomicU64::new(0));
    let refreshes = Arc::new(AtomicU64::new(0));
    let (g, r) = (gets.clone(), refreshes.clone());
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (g, r, http, target) = (g.clone(), r.clone(), http.clone(), target.clone());
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (g, r, http, target) = (g.clone(), r.clone(), http.clone(), target.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        if path.ends_with("/get") {
                            g.fetch_add(1, Ordering::SeqCst);
                        } else if path.ends_with("/refresh") {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                        let uri = request
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let answer = http.get(format!("{target}{uri}")).send().await.unwrap();
                        let status = answer.status().as_u16();
                        let body = answer.bytes().await.unwrap();
                        let mut response = hyper::Response::new(Full::new(body));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                },
            );
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    Counter {
        url: format!("http://{addr}"),
        gets,
        refreshes,
    }
}

async fn sqlite() -> TestDb {
    TestDb::sqlite().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_expiry_and_invalidate_dedupe() {
    let db = sqlite().await;
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(&db, &mock)).await;
    server.add_app(APP).await;
    let proxy = counting_proxy(server.url.clone()).await;
    let url = format!("{}/{APP}/wechat/token/get", proxy.url);

    // 1000 calls, one request.
    let source = AccessToken::by_url(&url).unwrap();
    let tokens = join_all((0..1000).map(|_| source.token())).await;
    let first = tokens[0].as_ref().unwrap().clone();
    assert!(tokens.iter().all(|t| t.as_ref().unwrap() == &first));
    assert_eq!(proxy.gets.load(Ordering::SeqCst), 1);

    // Twenty reports of one bad token: one refresh request, and the new token cached.
    mock.invalidate_token(&first);
    let reports = join_all((0..20).map(|_| source.invalidate(&first))).await;
    assert!(reports.iter().all(Result::is_ok));
    assert_eq!(proxy.refreshes.load(Ordering::SeqCst), 1);
    let second = source.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(Some(second.clone()), mock.current_token(APP));
    assert_eq!(
        proxy.gets.load(Ordering::SeqCst),
        1,
        "the refresh answer was cached"
    );

    // Near the end of life a new request is made: a margin that leaves 1 s of use.
    let short = AccessToken::builder()
        .url(&url)
        .margin(Duration::from_secs(7199))
        .build()
        .unwrap();
    short.token().await.unwrap();
    short.token().await.unwrap();
    let before = proxy.gets.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    short.token().await.unwrap();
    assert_eq!(proxy.gets.load(Ordering::SeqCst), before + 1);
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_two_servers_with_one_killed() {
    let db = sqlite().await;
    let mock = mock_with(&[APP]).await;
    let first = TestServer::start(settings(&db, &mock)).await;
    first.add_app(APP).await;
    let second = TestServer::start_with_clock(settings(&db, &mock), first.clock.clone()).await;
    let urls = [&first.url, &second.url].map(|u| format!("{u}/{APP}/wechat/token/get"));
    let source = AccessToken::builder().urls(urls.clone()).build().unwrap();
    let token = source.token().await.unwrap();

    first.stop().await;
    // A fresh client finds the first dead and asks the second; the cached one keeps its token,
    // and its refresh goes to the second too.
    let fresh = AccessToken::builder().urls(urls).build().unwrap();
    assert_eq!(fresh.token().await.unwrap(), token);
    mock.invalidate_token(&token);
    source.invalidate(&token).await.unwrap();
    assert_ne!(source.token().await.unwrap(), token);
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // A 4xx is an answer, not a failure: no failover.
    let both = [&second.url, &second.url].map(|u| format!("{u}/wxnobody/wechat/token/get"));
    let unknown = AccessToken::builder().urls(both).build().unwrap();
    assert!(matches!(
        unknown.token().await,
        Err(Error::Refused { status: 404, .. })
    ));
    second.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_once_helper_survives_a_token_wechat_invalidated() {
    let db = sqlite().await;
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(&db, &mock)).await;
    server.add_app(APP).await;
    let source = AccessToken::by_url(&format!("{}/{APP}/wechat/token/get", server.url)).unwrap();
    let stale = source.token().await.unwrap();
    mock.invalidate_token(&stale);

    // The menu example's loop: the first call gets 40001, the second a fresh token and success.
    let http = reqwest::Client::new();
    let answer = call(&source, |token| {
        let request = http
            .post(format!("{}/cgi-bin/menu/create", mock.url()))
            .query(&[("access_token", token)])
            .json(&json!({"button": [{"type": "view", "name": "搜索", "url": "http://www.baidu.com"}]}));
        async move { request.send().await?.json::<serde_json::Value>().await }
    })
    .await
    .unwrap();
    assert_eq!(answer["errcode"], 0);
    assert_eq!(mock.calls(Endpoint::MenuCreate), 2);
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // A body WeChat cannot read: 47001 comes back typed, without a retry.
    let err = call(&source, |token| {
        let request = http
            .post(format!("{}/cgi-bin/menu/create", mock.url()))
            .query(&[("access_token", token)])
            .body("not json");
        async move { request.send().await?.json::<serde_json::Value>().await }
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, CallError::WeChat { errcode: 47001, .. }),
        "{err}"
    );
    assert_eq!(mock.calls(Endpoint::MenuCreate), 3);
    server.stop().await;
    db.drop_db().await;
}

/// A server that answers every request with `answer`, or never answers when it is `None`.
async fn fake_server(answer: Option<&'static [u8]>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                match answer {
                    Some(bytes) => {
                        let _ = stream.write_all(bytes).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr
}

/// A full HTTP/1.1 answer with a JSON body, for [`fake_server`].
fn answer(status: &str, body: &str) -> &'static [u8] {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_bytes().into_boxed_slice())
}

/// Which errors move a client on to its next server, whether the error came with its status or
/// in a 200 body: the server's own failures do, answers (a 4xx, WeChat's refusal) do not.
#[tokio::test]
async fn only_a_servers_own_failure_moves_on_to_the_next() {
    let good = fake_server(Some(answer(
        "200 OK",
        r#"{"errcode":0,"errmsg":"success","access_token":"tok-from-the-next","expires_in":7000,"expires_date":"20261124120000"}"#,
    )))
    .await;
    // The first server's answer, and the refusal that comes back, or none when the next answers.
    type Case<'a> = (&'a str, &'a str, Option<(u16, i64)>);
    let cases: [Case; 8] = [
        (
            "200 OK",
            r#"{"errcode":90504,"errmsg":"database unavailable"}"#,
            None,
        ),
        (
            "200 OK",
            r#"{"errcode":90503,"errmsg":"WeChat unreachable"}"#,
            None,
        ),
        (
            "200 OK",
            r#"{"errcode":90500,"errmsg":"internal error"}"#,
            None,
        ),
        (
            "503 Service Unavailable",
            r#"{"errcode":90504,"errmsg":"database unavailable"}"#,
            None,
        ),
        ("502 Bad Gateway", "<html>a proxy's page</html>", None),
        (
            "200 OK",
            r#"{"errcode":40013,"errmsg":"invalid appid"}"#,
            Some((502, 40013)),
        ),
        (
            "502 Bad Gateway",
            r#"{"errcode":40013,"errmsg":"invalid appid"}"#,
            Some((502, 40013)),
        ),
        (
            "200 OK",
            r#"{"errcode":90401,"errmsg":"needs a key"}"#,
            Some((401, 90401)),
        ),
    ];
    for (status, body, refused) in cases {
        let first = fake_server(Some(answer(status, body))).await;
        let source = AccessToken::builder()
            .url(format!("http://{first}/wx1/wechat/token/get"))
            .url(format!("http://{good}/wx1/wechat/token/get"))
            .build()
            .unwrap();
        match (source.token().await, refused) {
            (Ok(token), None) => assert_eq!(token, "tok-from-the-next"),
            (Err(Error::Refused { status, body }), Some(expected)) => {
                assert_eq!((status, body.errcode), expected, "{body:?}");
            }
            (other, _) => panic!("{status} {body}: {other:?}"),
        }
    }
}

/// The real client against real servers in both modes: the same typed errors, the same
/// failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_failover_are_the_same_with_or_without_statuses() {
    const ONLY_B: &str = "wxonlyonb";
    let mut seen = Vec::new();
    for mode in [CredentialErrors::InBody, CredentialErrors::AsStatus] {
        let (db_a, db_b) = (sqlite().await, sqlite().await);
        let (mock_a, mock_b) = (mock_with(&[APP]).await, mock_with(&[APP, ONLY_B]).await);
        let mut s = settings(&db_a, &mock_a);
        s.http.credential_errors = mode;
        let a = TestServer::start(s).await;
        let mut s = settings(&db_b, &mock_b);
        s.http.credential_errors = mode;
        let b = TestServer::start(s).await;
        a.add_app(APP).await;
        b.add_app(APP).await;
        b.add_app(ONLY_B).await;
        let route =
            |server: &TestServer, appid: &str| format!("{}/{appid}/wechat/token/get", server.url);

        let unknown = AccessToken::by_url(&route(&a, "wxnobody")).unwrap();
        let err = unknown.token().await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 404, body } if body.errcode == 90404),
            "{mode:?}: {err:?}"
        );
        seen.push(format!("{err:?}"));
        let jssdk = JssdkConfig::by_url(&format!("{}/{APP}/wechat/jssdk/config", a.url)).unwrap();
        let err = jssdk.sign("ftp://shop.example/").await.unwrap_err();
        assert!(
            matches!(err, Error::Refused { status: 400, .. }),
            "{mode:?}: {err:?}"
        );
        seen.push(format!("{err:?}"));

        // A cannot reach its WeChat and holds no token (90503): B is asked.
        mock_a.inject(Endpoint::Token, wetoken_mock::Fault::Drop, 1);
        let source = AccessToken::builder()
            .url(route(&a, APP))
            .url(route(&b, APP))
            .build()
            .unwrap();
        assert_eq!(
            source.token().await.ok(),
            mock_b.current_token(APP),
            "{mode:?}"
        );
        assert_eq!(mock_a.calls(Endpoint::Token), 1, "A was asked first");

        // A does not know the app (404): an answer, so B is not asked.
        let source = AccessToken::builder()
            .url(route(&a, ONLY_B))
            .url(route(&b, ONLY_B))
            .build()
            .unwrap();
        let err = source.token().await.unwrap_err();
        assert!(
            matches!(err, Error::Refused { status: 404, .. }),
            "{mode:?}: {err:?}"
        );
        assert_eq!(
            mock_b.calls(Endpoint::Token),
            1,
            "{mode:?}: only the first test's fetch"
        );

        a.stop().await;
        b.stop().await;
        db_a.drop_db().await;
        db_b.drop_db().await;
    }
    let (in_body, as_status) = seen.split_at(seen.len() / 2);
    assert_eq!(in_body, as_status);
}

#[tokio::test]
async fn garbage_and_hanging_servers_give_clear_errors() {
    let garbage = fake_server(Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
    ))
    .await;
    let source = AccessToken::by_url(&format!("http://{garbage}/wx1/wechat/token/get")).unwrap();
    assert!(matches!(source.token().await, Err(Error::Malformed { .. })));

    let broken = fake_server(Some(b"this is not HTTP\r\n\r\n")).await;
    let source = AccessToken::by_url(&format!("http://{broken}/wx1/wechat/token/get")).unwrap();
    assert!(matches!(source.token().await, Err(Error::Transport { .. })));

    let hanging = fake_server(None).await;
    let source = AccessToken::builder()
        .url(format!("http://{hanging}/wx1/wechat/token/get"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    assert!(matches!(source.token().await, Err(Error::Timeout { .. })));
    assert!(started.elapsed() < Duration::from_secs(3));

    // Unreachable: nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let source = AccessToken::by_url(&format!("http://{dead}/wx1/wechat/token/get")).unwrap();
    let err = source.token().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_flavour_works_without_a_runtime() {
    let db = sqlite().await;
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(&db, &mock)).await;
    server.add_app(APP).await;
    let url = format!("{}/{APP}/wechat/token/get", server.url);
    let (source, token) = tokio::task::spawn_blocking(move || {
        let source = wetoken_client::blocking::AccessToken::by_url(&url).unwrap();
        let token = source.token().unwrap();
        (source, token)
    })
    .await
    .unwrap();
    // WeChat rejects it (a token WeChat accepts would be answered as it is).
    mock.invalidate_token(&token);
    let reported = token.clone();
    let again = tokio::task::spawn_blocking(move || {
        source.invalidate(&reported).unwrap();
        source.token().unwrap()
    })
    .await
    .unwrap();
    assert_ne!(token, again);
    assert_eq!(Some(again), mock.current_token(APP));
    server.stop().await;
    db.drop_db().await;
}
