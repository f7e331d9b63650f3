//! Who may use the admin routes: local callers by default, key holders once a key is set.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;
use wetoken_mock::Endpoint;
use wetoken_server::Server;

use crate::harness::{TestDb, TestServer, mock_with, on_every_database, settings};

const APP: &str = "wxguarded";
const KEY: &str = "an-admin-key-of-some-length";

on_every_database!(admin_routes_answer_local_callers_or_key_holders);

/// A client whose connections come from 127.0.0.2: loopback, but outside `127.0.0.1/32`.
fn from_other_address() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap()
}

async fn status(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn admin_routes_answer_local_callers_or_key_holders(db: &TestDb) {
    let mock = mock_with(&[APP]).await;

    // No key: only the configured networks reach the admin routes.
    let mut s = settings(db, &mock);
    s.admin_networks = vec!["127.0.0.1/32".into()];
    let server = TestServer::start(s.clone()).await;
    server.add_app(APP).await;
    let outsider = from_other_address();
    for path in ["/wechat/app/list", "/"] {
        let (code, body) = status(outsider.get(format!("{}{path}", server.url))).await;
        assert_eq!(code, 403, "{path}: {body}");
    }
    let (code, body) = status(outsider.get(format!(
        "{}/wechat/app/create?appid=wxevil&secret=x",
        server.url
    )))
    .await;
    assert_eq!(
        (code, body["errcode"].as_i64()),
        (403, Some(90403)),
        "{body}"
    );
    assert!(
        body["errmsg"].as_str().unwrap().contains("admin key"),
        "{body}"
    );
    // Token reads are not admin routes.
    let (code, body) = status(outsider.get(format!("{}/{APP}/wechat/token/get", server.url))).await;
    assert_eq!(code, 200, "{body}");
    server.stop().await;

    // With a key: the key, from anywhere; nothing without it.
    s.admin_key = Some(KEY.into());
    let server = TestServer::start(s.clone()).await;
    let url = format!("{}/wechat/app/list", server.url);
    let (code, body) = status(server.http.get(&url)).await;
    assert_eq!(
        (code, body["errcode"].as_i64()),
        (401, Some(90401)),
        "even locally: {body}"
    );
    let (code, _) = status(
        server
            .http
            .get(&url)
            .bearer_auth("an-admin-key-of-some-lengtH"),
    )
    .await;
    assert_eq!(code, 401, "a wrong key");
    let (code, _) = status(server.http.get(&url).header("authorization", KEY)).await;
    assert_eq!(code, 401, "a key without the Bearer scheme");
    let (code, body) = status(outsider.get(&url).bearer_auth(KEY)).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = status(outsider.get(format!("{}/", server.url)).bearer_auth(KEY)).await;
    assert_eq!(code, 200);

    // The forced refresh: a new token now, through the same lease as any refresh.
    let before = server.token(APP).await;
    let (code, body) = status(
        outsider
            .post(format!("{}/wechat/app/refresh", server.url))
            .bearer_auth(KEY)
            .json(&json!({"appid": APP, "kind": "token"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_ne!(body["access_token"].as_str(), Some(before.as_str()));
    assert_eq!(
        mock.current_token(APP).as_deref(),
        body["access_token"].as_str()
    );
    assert_eq!(mock.calls(Endpoint::Token), 2);
    assert_eq!(
        server.token(APP).await,
        body["access_token"].as_str().unwrap()
    );
    server.stop().await;

    // Settings that cannot work are refused at start.
    for (key, file, networks, says) in [
        (Some("short"), None, vec![], "at least 16"),
        (Some(KEY), Some("/nonexistent"), vec![], "not both"),
        (None, Some("/nonexistent/key"), vec![], "admin_key_file"),
        (None, None, vec!["10.0.0.0/33".to_owned()], "admin_networks"),
    ] {
        let mut bad = s.clone();
        bad.admin_key = key.map(str::to_owned);
        bad.admin_key_file = file.map(Into::into);
        bad.admin_networks = networks;
        let err = Server::new(&bad).await.err().expect("refused").to_string();
        assert!(err.contains(says), "{err}");
    }
    // A key from a file.
    let path = std::env::temp_dir().join(format!("wetoken-admin-key-{}", std::process::id()));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    let mut from_file = s.clone();
    from_file.admin_key = None;
    from_file.admin_key_file = Some(path.clone());
    let server = TestServer::start(from_file).await;
    let (code, _) = status(
        server
            .http
            .get(format!("{}/wechat/app/list", server.url))
            .bearer_auth(KEY),
    )
    .await;
    assert_eq!(code, 200);
    server.stop().await;
    let _ = std::fs::remove_file(path);
}
