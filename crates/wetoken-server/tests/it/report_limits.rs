//! The passive-refresh route's rate limit (issue #14): a token bucket per consumer key, or per
//! caller address while no keys exist. Over it: 429, errcode 90429, `Retry-After`. Keys without
//! refresh rights keep getting 403; reads never count.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::Utc;
use wetoken_core::{AppId, DatabaseOptions, NewConsumerKey, RefreshLimit, Store};
use wetoken_mock::Endpoint;

use crate::harness::{
    TestDb, TestServer, add_key, eventually, mock_with, on_every_database, settings,
};

const APP: &str = "wxlimited";

on_every_database!(
    each_key_has_its_own_refresh_bucket,
    callers_without_keys_have_a_bucket_per_address,
);

fn client(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(from)))
        .build()
        .unwrap()
}

/// A report, answered: status, errcode, errmsg and `Retry-After`.
async fn report(request: reqwest::RequestBuilder) -> (u16, i64, String, Option<String>) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["errcode"].as_i64().unwrap_or(0),
        body["errmsg"].as_str().unwrap_or_default().to_owned(),
        retry_after,
    )
}

async fn each_key_has_its_own_refresh_bucket(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let mut s = settings(db, &mock);
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s).await;
    server.add_app(APP).await;
    let token = server.token(APP).await;

    let store = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    // alpha: two at once, then one a second. beta: the server's default (10 at once).
    let alpha = NewConsumerKey {
        name: "alpha".into(),
        appids: vec![AppId::parse(APP).unwrap()],
        allow_refresh: true,
        networks: vec![],
        refresh_limit: Some(RefreshLimit::new(2, 60).unwrap()),
    };
    let alpha = store.add_consumer_key(&alpha, Utc::now()).await.unwrap();
    let alpha = alpha.key.expose().to_owned();
    let beta = add_key(&store, "beta", &[APP], true, &[]).await;
    let reader = add_key(&store, "reader", &[APP], false, &[]).await;
    let http = client([127, 0, 0, 1]);
    let get = format!("{}/{APP}/wechat/token/get", server.url);
    eventually("the keys are loaded", Duration::from_secs(10), || async {
        http.get(&get).send().await.unwrap().status() == 401
    })
    .await;
    // Reports of the current token, which WeChat still accepts: each is declined (answered
    // with that token, no fetch) and charged to the key's bucket.
    let refresh = format!(
        "{}/{APP}/wechat/token/refresh?access_token={token}",
        server.url
    );
    let by = |key: &str| http.get(&refresh).bearer_auth(key);

    for i in 0..2 {
        let (status, errcode, msg, _) = report(by(&alpha)).await;
        assert_eq!((status, errcode), (200, 0), "alpha's report {i}: {msg}");
    }
    let (status, errcode, msg, retry_after) = report(by(&alpha)).await;
    assert_eq!((status, errcode), (429, 90429), "{msg}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{msg}");
    assert!(
        msg.contains("key alpha") && msg.contains("2 at once, 60 a minute"),
        "{msg}"
    );
    // Reads are not counted.
    for _ in 0..5 {
        assert_eq!(
            http.get(&get)
                .bearer_auth(&alpha)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // beta, at the same moment, has its own bucket.
    for i in 0..5 {
        let (status, _, msg, _) = report(by(&beta)).await;
        assert_eq!(status, 200, "beta's report {i}: {msg}");
    }
    // Reports of a value already replaced cost nothing: answered with the current token.
    let stale = format!(
        "{}/{APP}/wechat/token/refresh?access_token=an-old-one",
        server.url
    );
    for i in 0..30 {
        let (status, _, msg, _) = report(http.get(&stale).bearer_auth(&beta)).await;
        assert_eq!(status, 200, "beta's report {i} of an old value: {msg}");
    }
    for i in 0..5 {
        let (status, _, msg, _) = report(by(&beta)).await;
        assert_eq!(status, 200, "beta's report {i} after the old ones: {msg}");
    }
    // A key that may not refresh is refused as before, not limited.
    for _ in 0..3 {
        let (status, errcode, msg, _) = report(by(&reader)).await;
        assert_eq!((status, errcode), (403, 90403), "{msg}");
    }
    // A second later alpha has one more, and only one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(report(by(&alpha)).await.0, 200);
    assert_eq!(report(by(&alpha)).await.0, 429);

    // A new limit (wetoken-cli key limit) applies at the next reload, with a full bucket.
    store
        .set_key_refresh_limit("alpha", Some(RefreshLimit::new(5, 1).unwrap()))
        .await
        .unwrap();
    eventually("the new limit applies", Duration::from_secs(10), || async {
        report(by(&alpha)).await.0 == 200
    })
    .await;
    assert_eq!(mock.calls(Endpoint::Token), 1, "no report fetched anything");
    let body: serde_json::Value = http
        .get(&get)
        .bearer_auth(&beta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["access_token"], token.as_str());
    server.stop().await;
}

async fn callers_without_keys_have_a_bucket_per_address(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let mut s = settings(db, &mock);
    s.reader_networks = vec!["127.0.0.0/8".into()];
    s.http.refresh_burst = 3;
    s.http.refresh_per_minute = 1;
    let server = TestServer::start(s).await;
    server.add_app(APP).await;
    let token = server.token(APP).await;
    let refresh = format!(
        "{}/{APP}/wechat/token/refresh?access_token={token}",
        server.url
    );
    let (here, there) = (client([127, 0, 0, 1]), client([127, 0, 0, 2]));
    for _ in 0..3 {
        assert_eq!(report(here.get(&refresh)).await.0, 200);
    }
    let (status, errcode, msg, retry_after) = report(here.get(&refresh)).await;
    assert_eq!((status, errcode), (429, 90429), "{msg}");
    assert!(msg.contains("address 127.0.0.1"), "{msg}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    // Another address has its own.
    assert_eq!(report(there.get(&refresh)).await.0, 200);
    assert_eq!(mock.calls(Endpoint::Token), 1, "no declined report fetched");

    // A token WeChat really rejects: twenty reports of it from one address, burst or not, are
    // all answered with its replacement, and only one is fetched. Nobody is locked out for
    // reporting what really died.
    mock.invalidate_token(&token);
    // Past `report_check_secs`, so that the check of a moment ago no longer answers.
    server.clock.advance(Duration::from_secs(31));
    let reports: Vec<_> = (0..20).map(|_| report(there.get(&refresh))).collect();
    for (i, (status, _, msg, _)) in futures::future::join_all(reports)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "report {i} of the dead token: {msg}");
    }
    for i in 0..20 {
        let (status, _, msg, _) = report(there.get(&refresh)).await;
        assert_eq!(status, 200, "late report {i} of the dead token: {msg}");
    }
    assert_eq!(mock.calls(Endpoint::Token), 2, "one fetch replaced it");
    assert_ne!(server.token(APP).await, token);
    server.stop().await;
}
