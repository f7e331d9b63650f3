//! Who may use the admin routes (local callers by default, key holders once a key is set) and
//! the token routes (local callers until consumer keys exist, then key holders within scope).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use wetoken_client::TokenSource;
use wetoken_core::{AppId, DatabaseOptions, Store};
use wetoken_mock::Endpoint;
use wetoken_server::{Server, Settings};

use crate::harness::{
    SECRET, TestDb, TestServer, add_key, eventually, mock_with, on_every_database, settings,
};

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
    for path in ["/wechat/app/list", "/", "/metrics"] {
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
    let (code, body) = status(
        outsider
            .get(&url)
            .header("authorization", format!("bearer {KEY}")),
    )
    .await;
    assert_eq!(code, 200, "the scheme's case does not matter: {body}");
    let (code, _) = status(outsider.get(format!("{}/", server.url)).bearer_auth(KEY)).await;
    assert_eq!(code, 200);
    // /metrics names every appid: a scraper presents the admin key.
    let metrics = format!("{}/metrics", server.url);
    let (code, _) = status(outsider.get(&metrics)).await;
    assert_eq!(code, 401);
    let (code, body) = status(outsider.get(&metrics).bearer_auth(KEY)).await;
    assert_eq!(code, 200);
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("wetoken_http_requests_total")),
        "{body}"
    );

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
    // One file per backend: the three run at once in one process, and each removes its own.
    let path = std::env::temp_dir().join(format!(
        "wetoken-admin-key-{}-{}",
        std::process::id(),
        std::ptr::from_ref(db) as usize
    ));
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

on_every_database!(consumer_keys_guard_token_reads);

/// A client whose connections come from 127.0.0.1.
fn from_loopback() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .build()
        .unwrap()
}

async fn consumer_keys_guard_token_reads(db: &TestDb) {
    const OTHER: &str = "wxother";
    let mock = mock_with(&[APP, OTHER]).await;
    let mut s = settings(db, &mock);
    // A fresh install: only reader_networks may read. 127.0.0.2 stands for a remote caller.
    s.reader_networks = vec!["127.0.0.1/32".into()];
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s.clone()).await;
    server.add_app(APP).await;
    server.add_app(OTHER).await;
    let outsider = from_other_address();
    let token_url = |appid: &str| format!("{}/{appid}/wechat/token/get", server.url);
    for path in [
        format!("/{APP}/wechat/token/get"),
        format!("/wx/{APP}/ticket/get"),
        format!("/{APP}/wechat/jssdk/config?url=http://a.example/"),
    ] {
        let (code, body) = status(outsider.get(format!("{}{path}", server.url))).await;
        assert_eq!(
            (code, body["errcode"].as_i64()),
            (403, Some(90403)),
            "{path}: {body}"
        );
    }
    let (code, body) = status(from_loopback().get(token_url(APP))).await;
    assert_eq!(code, 200, "a local caller reads on a fresh install: {body}");

    // Another process adds keys; the server picks them up without a restart.
    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    let reader = add_key(&cli, "reader", &[APP], true, &[]).await;
    let no_refresh = add_key(&cli, "no-refresh", &[APP], false, &[]).await;
    let pinned = add_key(&cli, "pinned", &[APP], true, &["127.0.0.1/32"]).await;
    let local = from_loopback();
    eventually("the keys are loaded", Duration::from_secs(10), || async {
        status(local.get(token_url(APP))).await.0 == 401
    })
    .await;

    // No key, a wrong key: 401, from anywhere, for every credential route.
    for path in [
        format!("/{APP}/wechat/token/get"),
        format!("/{APP}/wechat/ticket/get?type=wx_card"),
        format!("/{APP}/wechat/token/refresh?access_token=x"),
        format!("/{APP}/wechat/jssdk/config?url=http://a.example/"),
        "/wxnosuchapp/wechat/token/get".to_owned(),
        "/not..an..appid/wechat/token/get".to_owned(),
    ] {
        let url = format!("{}{path}", server.url);
        let (code, body) = status(local.get(&url)).await;
        assert_eq!(
            (code, body["errcode"].as_i64()),
            (401, Some(90401)),
            "{path}: {body}"
        );
        let (code, _) = status(outsider.get(&url).bearer_auth("wtk_not-a-key")).await;
        assert_eq!(code, 401, "{path}: a wrong key");
    }

    // The right key, as a bearer token or in X-Wetoken-Key.
    let (code, body) = status(outsider.get(token_url(APP)).bearer_auth(&reader)).await;
    assert_eq!(code, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (code, body) = status(
        outsider
            .get(format!("{}/wx/{APP}/ticket/get", server.url))
            .header("x-wetoken-key", &reader),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // The Rust client presents its key; without one it gets the server's 401.
    let keyed = wetoken_client::AccessToken::builder()
        .url(token_url(APP))
        .key(&reader)
        .build()
        .unwrap();
    assert_eq!(keyed.token().await.unwrap(), token);
    assert!(
        !format!("{:?}", wetoken_client::AccessToken::builder().key(&reader)).contains(&reader)
    );
    let keyless = wetoken_client::AccessToken::by_url(&token_url(APP)).unwrap();
    match keyless.token().await {
        Err(wetoken_client::Error::Refused { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
    let ticket = wetoken_client::JsapiTicket::builder()
        .url(format!("{}/{APP}/wechat/ticket/get", server.url))
        .key(&reader)
        .build()
        .unwrap();
    ticket.ticket().await.unwrap();

    // Out of scope, and a made-up appid: the same 403, so the answer tells nothing.
    let (code, other) = status(outsider.get(token_url(OTHER)).bearer_auth(&reader)).await;
    let (_, made_up) = status(outsider.get(token_url("wxnosuchapp")).bearer_auth(&reader)).await;
    assert_eq!(
        (code, other["errcode"].as_i64()),
        (403, Some(90403)),
        "{other}"
    );
    assert_eq!(other, made_up);

    // Refresh not allowed for this key, allowed for the other.
    let refresh = format!(
        "{}/{APP}/wechat/token/refresh?access_token={token}",
        server.url
    );
    let (code, body) = status(outsider.get(&refresh).bearer_auth(&no_refresh)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["errmsg"].as_str().unwrap().contains("refresh"),
        "{body}"
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "the refused refresh fetched nothing"
    );
    let (code, _) = status(outsider.get(token_url(APP)).bearer_auth(&no_refresh)).await;
    assert_eq!(code, 200, "the no-refresh key still reads");
    // WeChat has really rejected it: a report of a token it accepts would fetch nothing.
    mock.invalidate_token(&token);
    let (code, body) = status(outsider.get(&refresh).bearer_auth(&reader)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // An IP allowlist: 127.0.0.2 is outside 127.0.0.1/32.
    let (code, body) = status(outsider.get(token_url(APP)).bearer_auth(&pinned)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["errmsg"].as_str().unwrap().contains("address"),
        "{body}"
    );
    let (code, _) = status(local.get(token_url(APP)).bearer_auth(&pinned)).await;
    assert_eq!(code, 200);

    // Revoked from another process: refused without a restart.
    cli.revoke_consumer_key("reader", Utc::now()).await.unwrap();
    eventually(
        "the revocation is loaded",
        Duration::from_secs(10),
        || async {
            status(outsider.get(token_url(APP)).bearer_auth(&reader))
                .await
                .0
                == 401
        },
    )
    .await;
    let (code, _) = status(outsider.get(token_url(APP)).bearer_auth(&no_refresh)).await;
    assert_eq!(code, 200, "other keys keep working");

    // Admin routes are not consumer routes: still local, no consumer key needed.
    let (code, _) = server.get("/wechat/app/list").await;
    assert_eq!(code, 200);
    server.stop().await;

    // Revoking every key does not reopen the routes, even after a restart.
    cli.revoke_consumer_key("no-refresh", Utc::now())
        .await
        .unwrap();
    cli.revoke_consumer_key("pinned", Utc::now()).await.unwrap();
    let server = TestServer::start(s.clone()).await;
    let (code, _) =
        status(from_loopback().get(format!("{}/{APP}/wechat/token/get", server.url))).await;
    assert_eq!(code, 401);
    server.stop().await;

    // A schema without the key table (auto_migrate off, migrations not run) is a clear refusal.
    let path = std::env::temp_dir().join(format!(
        "wetoken-nokeys-{}-{}.db",
        std::process::id(),
        std::ptr::from_ref(db) as usize
    ));
    let unmigrated = Settings {
        database_url: format!("sqlite://{}?mode=rwc", path.display()),
        auto_migrate: false,
        ..s.clone()
    };
    let err = Server::new(&unmigrated).await.err().expect("refused");
    assert!(
        format!("{:#}", anyhow_chain(&err)).contains("migrate up"),
        "{err:?}"
    );
    let _ = std::fs::remove_file(path);
}

/// An error and its sources, as `wetoken-server` prints them.
fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// With no admin key and no consumer key, trust comes from the caller's address. A web page in a
/// browser on that machine must not borrow it: a cross-site form, or a page whose domain was
/// made to resolve to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_trust_is_not_lent_to_web_pages() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(&db, &mock)).await;
    server.add_app(APP).await;
    let http = reqwest::Client::new();
    let token = format!("{}/{APP}/wechat/token/get", server.url);
    let delete = format!("{}/wechat/app/delete", server.url);
    let port = server.url.rsplit(':').next().unwrap().to_owned();

    // A program on the machine: served, as before.
    assert_eq!(status(http.get(&token)).await.0, 200);
    assert_eq!(
        status(http.get(&server.url).header("sec-fetch-site", "none"))
            .await
            .0,
        200,
        "a person opening the status page by its address"
    );

    // A form on another site posting to the admin route, and a script reading a token.
    let (code, body) = status(
        http.post(&delete)
            .header("origin", "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("appid={APP}")),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["errmsg"].as_str().unwrap().contains("other web sites"));
    let (code, _) = status(http.get(&token).header("sec-fetch-site", "cross-site")).await;
    assert_eq!(code, 403);
    // DNS rebinding: the page's own domain, resolved to 127.0.0.1.
    let (code, body) = status(
        http.get(&token)
            .header("host", format!("rebind.evil.example:{port}")),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["errmsg"].as_str().unwrap().contains("domain name"));

    // Nothing was deleted; the app still answers.
    assert_eq!(status(http.get(&token)).await.0, 200);
    assert_eq!(mock.calls(Endpoint::Token), 1);
    server.stop().await;
    db.drop_db().await;
}

/// nginx's default `proxy_pass http://127.0.0.1:…` makes every outside caller look local and
/// rewrites Host: while trust comes from the address alone, a request a proxy passed on is
/// refused, on the admin and the token routes alike.
#[tokio::test]
async fn a_proxied_request_gets_no_local_trust() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(&db, &mock)).await;
    server.add_app(APP).await;
    let http = reqwest::Client::new();
    let token = format!("{}/{APP}/wechat/token/get", server.url);
    let list = format!("{}/wechat/app/list", server.url);
    let delete = format!("{}/wechat/app/delete?appid={APP}", server.url);
    let proxied = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-for", "203.0.113.9")
            .header("via", "1.1 nginx")
    };
    for request in [
        http.get(&list),
        http.get(&token),
        http.post(&delete),
        http.get(&token).header("x-real-ip", "203.0.113.9"),
        http.get(&token).header("forwarded", "for=203.0.113.9"),
    ] {
        let request = proxied(request);
        let (code, body) = status(request).await;
        assert_eq!(code, 403, "{body}");
        assert!(body["errmsg"].as_str().unwrap().contains("proxy"), "{body}");
    }
    // Nothing was deleted, and a local program is served as before.
    assert_eq!(status(http.get(&token)).await.0, 200);
    assert_eq!(status(http.get(&list)).await.0, 200);
    server.stop().await;
    db.drop_db().await;
}

/// Behind a proxy listed in `trusted_proxies`, the caller is the address the proxy appends to
/// `X-Forwarded-For`: a key's `--allow` networks see it, and a forgery to its left is not
/// believed. Garbage from a trusted proxy is refused; a proxy not listed is not read; address
/// trust is still never lent through a proxy.
#[tokio::test]
async fn a_trusted_proxy_names_the_caller() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[APP]).await;
    let mut s = settings(&db, &mock);
    // 127.0.0.1 is the proxy; 127.0.0.2 is a caller that reaches the server directly.
    s.trusted_proxies = vec!["127.0.0.1/32".into()];
    let server = TestServer::start(s.clone()).await;
    server.add_app(APP).await;
    let token = format!("{}/{APP}/wechat/token/get", server.url);
    let proxy = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .build()
        .unwrap();

    // No keys yet: a forwarded request gets no local trust, even from a trusted proxy.
    let (code, body) = status(proxy.get(&token).header("x-forwarded-for", "127.0.0.1")).await;
    assert_eq!(code, 403, "{body}");

    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    let office = add_key(&cli, "office", &[APP], false, &["203.0.113.0/24"]).await;
    // Restarted, so that the key is loaded now rather than at the next reload.
    server.stop().await;
    let server = TestServer::start(s).await;
    let token = format!("{}/{APP}/wechat/token/get", server.url);
    let via = |xff: &str| {
        proxy
            .get(&token)
            .bearer_auth(&office)
            .header("x-forwarded-for", xff)
    };

    for (xff, want) in [
        // The caller the proxy saw is in the key's network.
        ("203.0.113.9", 200),
        // A caller outside it, who wrote an address of the network in front of its own.
        ("203.0.113.9, 198.51.100.7", 403),
        ("198.51.100.7", 403),
    ] {
        let (code, body) = status(via(xff)).await;
        assert_eq!(code, want, "{xff}: {body}");
    }
    // A proxy that sends garbage is refused, saying how to fix it.
    let (code, body) = status(via("unknown")).await;
    assert_eq!(code, 400, "{body}");
    let message = body["errmsg"].as_str().unwrap();
    assert!(
        message.contains("X-Forwarded-For") && message.contains("127.0.0.1"),
        "{body}"
    );
    // Without the header the request is the proxy's own: outside the key's network.
    let (code, body) = status(proxy.get(&token).bearer_auth(&office)).await;
    assert_eq!(code, 403, "{body}");
    // Not a trusted proxy: its X-Forwarded-For is not read, so the key sees 127.0.0.2.
    let (code, body) = status(
        from_other_address()
            .get(&token)
            .bearer_auth(&office)
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // The probes answer the proxy's health checks without the header.
    assert_eq!(
        status(proxy.get(format!("{}/live", server.url))).await.0,
        200
    );
    server.stop().await;
    db.drop_db().await;
}

on_every_database!(consumer_keys_cannot_be_migrated_away);

/// Undoing the consumer-key migration would drop every key and, at the next start, open the token
/// routes to `reader_networks` again: refused while any key is stored.
async fn consumer_keys_cannot_be_migrated_away(db: &TestDb) {
    use wetoken_migration::MigratorTrait;
    let store = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    add_key(&store, "reader", &[APP], true, &[]).await;
    // Down past every later migration (000006 goes too: nothing is encrypted) to 000005, which
    // refuses.
    let steps = wetoken_migration::Migrator::migrations().len() as u32 - 4;
    let err = wetoken_migration::Migrator::down(store.connection(), Some(steps))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("consumer keys are stored"), "{err}");
    // The later migrations went down; up again, the key is still there.
    store.migrate().await.unwrap();
    assert_eq!(store.consumer_keys().await.unwrap().len(), 1);
    assert!(store.key_table().await.unwrap().is_required());
}

on_every_database!(an_apps_own_secret_reads_that_app_alone);

/// The Go SDK cannot send a consumer key; it appends `?<appid>&secret=<app secret>` to every
/// request. While consumer keys exist, that secret reads its own app's token and ticket, and
/// nothing else.
async fn an_apps_own_secret_reads_that_app_alone(db: &TestDb) {
    const OTHER: &str = "wxsdkother";
    const OTHER_SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NEW_SECRET: &str = "fedcba9876543210fedcba9876543210";
    let mock = mock_with(&[APP]).await;
    mock.add_app(OTHER, OTHER_SECRET);
    // Stored encrypted: the digests come from decrypted secrets.
    let master_key = wetoken_core::crypto::MasterKey::generate();
    let keyring = wetoken_core::Keyring::new(
        wetoken_core::crypto::MasterKey::parse(&master_key, "test").unwrap(),
        None,
    );
    let mut s = settings(db, &mock);
    s.master_key = Some(master_key);
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s.clone()).await;
    server.add_app(APP).await;
    server.add_app_with(OTHER, OTHER_SECRET).await;
    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap()
        .with_keyring(Some(std::sync::Arc::new(keyring)));
    assert_eq!(cli.secrets_report().await.unwrap().plain, 0);
    // One key, revoked at once: keys are required from then on all the same.
    add_key(&cli, "mall", &[APP], true, &[]).await;
    cli.revoke_consumer_key("mall", Utc::now()).await.unwrap();
    eventually("keys are required", Duration::from_secs(10), || async {
        server.get(&format!("/{APP}/wechat/token/get")).await.0 == 401
    })
    .await;
    server.stop().await;

    // Without reloads, so that what this process changes must apply by itself.
    s.consumer_keys_reload_ms = 3_600_000;
    let server = TestServer::start(s.clone()).await;
    let sdk = |path: &str, appid: &str, secret: &str| format!("{path}?{appid}&secret={secret}");
    let (code, body) = server
        .get(&sdk(&format!("/{APP}/wechat/token/get"), APP, SECRET))
        .await;
    assert_eq!(code, 200, "its own secret reads its token: {body}");
    assert_eq!(
        body["access_token"].as_str(),
        mock.current_token(APP).as_deref()
    );
    for path in [
        sdk(&format!("/wx/{APP}/token/get"), APP, SECRET),
        sdk(&format!("/wx/{APP}/ticket/get"), APP, SECRET),
        // The SDK given a URL with a query of its own.
        format!("/{APP}/wechat/token/get?x=1{APP}&secret={SECRET}"),
        format!("/{APP}/wechat/ticket/get?type=wx_card&secret={SECRET}"),
        sdk(&format!("/{OTHER}/wechat/token/get"), OTHER, OTHER_SECRET),
    ] {
        let (code, body) = server.get(&path).await;
        assert_eq!(
            (code, body["errcode"].as_i64()),
            (200, Some(0)),
            "{path}: {body}"
        );
    }
    // Never another app's, never a wrong one, never for an app that does not exist: the same
    // 401 as without a key.
    for path in [
        sdk(&format!("/{OTHER}/wechat/token/get"), OTHER, SECRET),
        sdk(&format!("/wx/{OTHER}/ticket/get"), OTHER, SECRET),
        sdk(&format!("/{APP}/wechat/token/get"), APP, OTHER_SECRET),
        sdk(&format!("/{APP}/wechat/token/get"), APP, &SECRET[1..]),
        sdk(
            &format!("/{APP}/wechat/token/get"),
            APP,
            &format!("{SECRET}x"),
        ),
        format!("/{APP}/wechat/token/get?{APP}&secret="),
        sdk("/wxnosuchapp/wechat/token/get", "wxnosuchapp", SECRET),
        // Only reads: the jssdk signature takes a key.
        format!("/{APP}/wechat/jssdk/config?url=http://a.example/&secret={SECRET}"),
    ] {
        let (code, body) = server.get(&path).await;
        assert_eq!(
            (code, body["errcode"].as_i64()),
            (401, Some(90401)),
            "{path}: {body}"
        );
    }
    // A key presented is checked as a key, whatever the query holds.
    let (code, _) = status(
        server
            .http
            .get(format!(
                "{}{}",
                server.url,
                sdk(&format!("/{APP}/wechat/token/get"), APP, SECRET)
            ))
            .bearer_auth("wtk_not-a-key"),
    )
    .await;
    assert_eq!(code, 401);
    // Like a key without refreshes: the passive refresh needs a consumer key.
    let token = mock.current_token(APP).unwrap();
    let (code, body) = server
        .get(&format!(
            "/{APP}/wechat/token/refresh?access_token={token}&secret={SECRET}"
        ))
        .await;
    assert_eq!(
        (code, body["errcode"].as_i64()),
        (403, Some(90403)),
        "{body}"
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        2,
        "one fetch per app, none refused"
    );

    // This process changes a secret, or removes the app: it applies at once.
    let (code, body) = server
        .post_json(
            "/wechat/app/update",
            &json!({"appid": OTHER, "secret": NEW_SECRET}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let other = format!("/{OTHER}/wechat/token/get");
    assert_eq!(server.get(&sdk(&other, OTHER, OTHER_SECRET)).await.0, 401);
    mock.add_app(OTHER, NEW_SECRET);
    let (code, body) = server.get(&sdk(&other, OTHER, NEW_SECRET)).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = server
        .post_json("/wechat/app/delete", &json!({"appid": OTHER}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(server.get(&sdk(&other, OTHER, NEW_SECRET)).await.0, 401);
    server.stop().await;

    // Another process changes a secret: seen from the next reload on.
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s).await;
    let update = wetoken_core::AppUpdate {
        secret: Some(wetoken_core::Secret::new(NEW_SECRET)),
        ..wetoken_core::AppUpdate::default()
    };
    cli.update_app(&AppId::parse(APP).unwrap(), &update, Utc::now())
        .await
        .unwrap();
    let mine = format!("/{APP}/wechat/token/get");
    eventually(
        "the new secret is loaded",
        Duration::from_secs(10),
        || async { server.get(&sdk(&mine, APP, NEW_SECRET)).await.0 == 200 },
    )
    .await;
    assert_eq!(server.get(&sdk(&mine, APP, SECRET)).await.0, 401);
    server.stop().await;
}

/// The metrics key reads `/metrics` and nothing else; `metrics_networks` read it without a
/// key. The settings come from the environment, as a deployment gives them, and every refusal
/// is in the log. Access does not depend on the database: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_key_reads_metrics_and_nothing_else() {
    const METRICS_KEY: &str = "a-metrics-key-for-prometheus";
    let database = TestDb::sqlite().await;
    let mock = mock_with(&[APP]).await;
    let log = std::env::temp_dir().join(format!("wetoken-metrics-key-{}.log", std::process::id()));
    let replica = crate::harness::Replica::start_logged(
        &database.url,
        &mock.url(),
        &[
            ("WETOKEN_ADMIN_KEY", KEY),
            ("WETOKEN_METRICS_KEY", METRICS_KEY),
            ("WETOKEN_METRICS_NETWORKS", "[\"127.0.0.3/32\"]"),
            ("WETOKEN_CONSUMER_KEYS_RELOAD_MS", "50"),
        ],
        Some(&log),
    )
    .await;
    let url = |path: &str| format!("{}{path}", replica.url);
    let outsider = from_other_address();
    // A consumer key exists, so the token routes need one from everywhere.
    let store = Store::connect(&DatabaseOptions::new(&database.url))
        .await
        .unwrap();
    let (code, body) = status(
        outsider
            .post(url("/wechat/app/create"))
            .bearer_auth(KEY)
            .json(&json!({"appid": APP, "secret": SECRET})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let consumer = add_key(&store, "mall", &[APP], false, &[]).await;
    eventually(
        "the consumer key is loaded",
        Duration::from_secs(10),
        || {
            let request = outsider
                .get(url(&format!("/{APP}/wechat/token/get")))
                .bearer_auth(&consumer);
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;

    // /metrics: the metrics key or the admin key, from anywhere.
    for key in [METRICS_KEY, KEY] {
        let (code, body) = status(outsider.get(url("/metrics")).bearer_auth(key)).await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.as_str()
                .is_some_and(|t| t.contains("wetoken_credentials{")),
            "{body}"
        );
    }
    // No key, a wrong one, a consumer key: 401, saying what it takes.
    for key in [
        None,
        Some("a-metrics-key-for-prometheuS"),
        Some(consumer.as_str()),
    ] {
        let mut request = outsider.get(url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let (code, body) = status(request).await;
        assert_eq!(
            (code, body["errcode"].as_i64()),
            (401, Some(90401)),
            "{key:?}"
        );
        assert!(
            body["errmsg"].as_str().unwrap().contains("metrics key"),
            "{body}"
        );
    }
    // From metrics_networks, no key is needed; through a proxy, it is.
    let scraper = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        .build()
        .unwrap();
    let (code, _) = status(scraper.get(url("/metrics"))).await;
    assert_eq!(code, 200);
    let (code, _) = status(
        scraper
            .get(url("/metrics"))
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await;
    assert_eq!(code, 401);
    // The network opens /metrics alone: the status page still needs the admin key.
    let (code, _) = status(scraper.get(url("/"))).await;
    assert_eq!(code, 401);

    // The metrics key opens nothing else: the admin routes, the status page, the token routes.
    let refusals = [
        outsider.get(url("/wechat/app/list")),
        outsider.get(url("/")),
        outsider
            .post(url("/wechat/app/delete"))
            .json(&json!({"appid": APP})),
        outsider.get(url(&format!("/{APP}/wechat/token/get"))),
        outsider.get(url(&format!("/wx/{APP}/ticket/get"))),
    ];
    for request in refusals {
        let (code, body) = status(request.bearer_auth(METRICS_KEY)).await;
        assert_eq!(code, 401, "{body}");
    }
    let (code, _) = status(outsider.get(url("/wechat/app/list")).bearer_auth(KEY)).await;
    assert_eq!(code, 200, "the app is still there");
    // SIGTERM, so that the log is whole.
    let mut replica = replica;
    assert!(replica.terminate().await.success());

    // Each refusal is logged as every 401 is, and neither key ever is.
    let text = std::fs::read_to_string(&log).unwrap();
    for path in [
        "/metrics".to_owned(),
        "/wechat/app/list".to_owned(),
        "/wechat/app/delete".to_owned(),
        format!("/{APP}/wechat/token/get"),
    ] {
        assert!(
            text.lines().any(|l| l.contains("refused")
                && [format!("path={path}}}"), format!("path={path} ")]
                    .iter()
                    .any(|p| l.contains(p.as_str()))),
            "no refusal of {path} logged in\n{text}"
        );
    }
    assert!(!text.contains(METRICS_KEY) && !text.contains(KEY), "{text}");
    let _ = std::fs::remove_file(log);
    database.drop_db().await;
}
