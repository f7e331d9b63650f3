//! The open platform's routes (issue #19): a third-party platform's token, its authorization
//! link and its authorizers' listing, and an authorizer's token through the ordinary routes and
//! the Rust client, against the mock WeChat. The push endpoint is not used: the verify ticket
//! and the authorization are handed to the server's engine, as the endpoint would.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use wetoken_client::{AccessToken, Error as ClientError, TokenSource};
use wetoken_core::{AppId, DatabaseOptions, Store};
use wetoken_mock::{Endpoint, MockComponent, MockConfig, MockWeChat};

use crate::harness::{
    Backend, TestDb, TestServer, add_key, eventually, on_every_database, settings,
};

const COMPONENT: &str = "wxcomponent01";
const SECRET: &str = "componentsecret";
const TOKEN: &str = "pushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AUTHORIZER: &str = "wxauthorizer01";

on_every_database!(
    a_platform_is_served_through_its_routes,
    authorizers_are_listed_a_page_at_a_time,
);

fn id(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

/// A mock that knows the component, pushing only when told (to nobody: the test hands what a
/// push carries to the engine).
async fn mock() -> MockWeChat {
    let config = MockConfig {
        verify_ticket_interval: None,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    mock.add_component(MockComponent {
        appid: COMPONENT.into(),
        secret: SECRET.into(),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        push_url: Some("http://127.0.0.1:9/nobody".into()),
    })
    .unwrap();
    mock
}

/// Adds the component through the admin route.
async fn add_component(server: &TestServer) {
    let body = json!({"appid": COMPONENT, "kind": "component", "secret": SECRET,
        "token": TOKEN, "aes_key": AES_KEY});
    let (status, body) = server.post_json("/wechat/app/create", &body).await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
}

/// A verify ticket pushed by the mock, handed to the server's engine.
async fn give_verify_ticket(server: &TestServer, mock: &MockWeChat) {
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let stored = server
        .engine
        .accept_verify_ticket(&id(COMPONENT), &pushed.ticket.unwrap(), now)
        .await
        .unwrap();
    assert!(stored);
}

fn errcode(body: &Value) -> Option<i64> {
    body["errcode"].as_i64()
}

async fn a_platform_is_served_through_its_routes(db: &TestDb) {
    let mock = mock().await;
    let mut s = settings(db, &mock);
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s).await;
    add_component(&server).await;
    let token_path = format!("/component/{COMPONENT}/token/get");
    let link = |query: &str| format!("/component/{COMPONENT}/auth_url?{query}");

    // No verify ticket yet: 90461 with what to do, and WeChat is not called, on the token
    // route (again, from the recorded wait) and on the authorization link.
    for _ in 0..2 {
        let (status, body) = server.get(&token_path).await;
        assert_eq!((status, errcode(&body)), (503, Some(90461)), "{body}");
        let message = body["errmsg"].as_str().unwrap();
        assert!(message.contains("component_verify_ticket"), "{message}");
        assert!(
            message.contains("/component/wxcomponent01/event"),
            "{message}"
        );
    }
    let (status, body) = server
        .get(&link("redirect_uri=https://a.example/done"))
        .await;
    assert_eq!((status, errcode(&body)), (503, Some(90461)), "{body}");
    assert_eq!(mock.calls(Endpoint::ComponentToken), 0);
    assert_eq!(mock.calls(Endpoint::PreAuthCode), 0);

    // With one: the component token, fetched once for every caller.
    give_verify_ticket(&server, &mock).await;
    let answers = futures::future::join_all((0..20).map(|_| server.get(&token_path))).await;
    let component_token = mock.current_component_token(COMPONENT).unwrap();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["access_token"].as_str(),
            Some(component_token.as_str())
        );
        assert!(body["expires_in"].as_i64().unwrap() > 7000, "{body}");
    }
    assert_eq!(
        server.get(&token_path).await.1["access_token"],
        answers[0].1["access_token"]
    );
    assert_eq!(mock.calls(Endpoint::ComponentToken), 1);

    // Only a platform has a component token.
    let body = json!({"appid": "wxplain01", "secret": "plainsecret"});
    let (status, _) = server.post_json("/wechat/app/create", &body).await;
    assert_eq!(status, 200);
    let (status, body) = server.get("/component/wxplain01/token/get").await;
    assert_eq!((status, errcode(&body)), (400, Some(90400)), "{body}");
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .contains("not a third-party platform")
    );
    let (status, body) = server.get("/component/wxnobody/token/get").await;
    assert_eq!((status, errcode(&body)), (404, Some(90404)), "{body}");

    // The authorization link: bad inputs are refused before WeChat is asked.
    for (query, why) in [
        ("", "redirect_uri is required"),
        ("redirect_uri=/done", "http"),
        ("redirect_uri=ftp://a.example/", "http"),
        ("redirect_uri=https://a.example/&auth_type=4", "auth_type"),
    ] {
        let (status, body) = server.get(&link(query)).await;
        assert_eq!(
            (status, errcode(&body)),
            (400, Some(90400)),
            "{query}: {body}"
        );
        assert!(
            body["errmsg"].as_str().unwrap().contains(why),
            "{query}: {body}"
        );
    }
    assert_eq!(mock.calls(Endpoint::PreAuthCode), 0);
    let redirect = "https://shop.example/authorized?from=wetoken&x=1";
    let query = format!(
        "redirect_uri={}&auth_type=1",
        form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let (status, body) = server.get(&link(&query)).await;
    assert_eq!((status, errcode(&body)), (200, Some(0)), "{body}");
    let url = reqwest::Url::parse(body["auth_url"].as_str().unwrap()).unwrap();
    assert_eq!(
        (url.scheme(), url.host_str(), url.path()),
        (
            "https",
            Some("mp.weixin.qq.com"),
            "/cgi-bin/componentloginpage"
        )
    );
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("{name} in {url}"))
    };
    assert_eq!(param("component_appid"), COMPONENT);
    assert_eq!(param("redirect_uri"), redirect);
    assert_eq!(param("auth_type"), "1");
    let expires_at = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap());
    assert!(expires_at.unwrap() > chrono::Utc::now() + chrono::TimeDelta::minutes(5));
    // Made with the component token fetched above, not another.
    assert_eq!(mock.calls(Endpoint::ComponentToken), 1);

    // The pre-auth code is one WeChat issued: an account authorizes with it, once.
    let pushed = mock
        .authorize(COMPONENT, Some(AUTHORIZER), Some(&param("pre_auth_code")))
        .await
        .unwrap();
    assert!(
        mock.authorize(
            COMPONENT,
            Some("wxauthorizer02"),
            Some(&param("pre_auth_code"))
        )
        .await
        .is_err(),
        "a pre-auth code is used up"
    );
    let authorizer = server
        .engine
        .authorized(&id(COMPONENT), &pushed.authorization_code.unwrap())
        .await
        .unwrap();
    assert_eq!(authorizer.as_str(), AUTHORIZER);

    // The authorizer's token and ticket come through the ordinary routes and the Rust client.
    let authorizer_token = mock.current_authorizer_token(AUTHORIZER).unwrap();
    assert_eq!(server.token(AUTHORIZER).await, authorizer_token);
    let (status, body) = server.get(&format!("/wx/{AUTHORIZER}/token/get")).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some(authorizer_token.as_str()))
    );
    assert_eq!(
        Some(server.ticket(AUTHORIZER).await),
        mock.current_ticket(AUTHORIZER, "jsapi")
    );
    let client_url = format!("{}/{AUTHORIZER}/wechat/token/get", server.url);
    let client = AccessToken::by_url(&client_url).unwrap();
    assert_eq!(client.token().await.unwrap(), authorizer_token);
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        0,
        "api_query_auth gave it"
    );

    // The admin routes show the platform and the authorizer as such.
    let (_, shown) = server
        .get(&format!("/wechat/app/show?appid={COMPONENT}"))
        .await;
    assert_eq!(shown["app"]["kind"], "component", "{shown}");
    assert!(shown["app"].get("component_appid").is_none(), "{shown}");
    let (_, shown) = server
        .get(&format!("/wechat/app/show?appid={AUTHORIZER}"))
        .await;
    assert_eq!(shown["app"]["kind"], "mp", "{shown}");
    assert_eq!(shown["app"]["component_appid"], COMPONENT, "{shown}");
    assert!(shown["app"].get("revoked_at").is_none(), "{shown}");
    let (_, listed) = server.get("/wechat/app/list?kind=component").await;
    let listed: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["appid"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [COMPONENT]);

    // A consumer key scoped to the authorizer reads it as any app's, and nothing else; one
    // scoped to the platform reads the component token and makes links.
    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    let reader = add_key(&cli, "authorizer", &[AUTHORIZER], false, &[]).await;
    let platform = add_key(&cli, "platform", &[COMPONENT], false, &[]).await;
    let with_key = |path: &str, key: &str| {
        server
            .http
            .get(format!("{}{path}", server.url))
            .bearer_auth(key)
            .send()
    };
    let status_of = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();
    eventually("both keys are loaded", Duration::from_secs(10), || async {
        server.get(&token_path).await.0 == 401
            && status_of(with_key(&token_path, &platform).await) == 200
    })
    .await;
    let authorizer_path = format!("/{AUTHORIZER}/wechat/token/get");
    assert_eq!(status_of(with_key(&authorizer_path, &reader).await), 200);
    assert_eq!(status_of(with_key(&token_path, &reader).await), 403);
    assert_eq!(status_of(with_key(&token_path, &platform).await), 200);
    assert_eq!(status_of(with_key(&authorizer_path, &platform).await), 403);
    let link_path = link("redirect_uri=https://a.example/");
    assert_eq!(status_of(with_key(&link_path, &reader).await), 403);
    assert_eq!(status_of(with_key(&link_path, &platform).await), 200);
    let keyed = AccessToken::builder()
        .url(&client_url)
        .key(&reader)
        .build()
        .unwrap();
    assert_eq!(keyed.token().await.unwrap(), authorizer_token);

    // Withdrawn: 90460 on every route and through the client, which says so.
    mock.unauthorize(COMPONENT, AUTHORIZER).await.unwrap();
    assert!(
        server
            .engine
            .unauthorized(&id(COMPONENT), &id(AUTHORIZER))
            .await
            .unwrap()
    );
    let response = with_key(&authorizer_path, &reader).await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!((status, errcode(&body)), (410, Some(90460)), "{body}");
    let fresh = AccessToken::builder()
        .url(&client_url)
        .key(&reader)
        .build()
        .unwrap();
    match fresh.token().await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!((status, body.errcode), (410, 90460), "{}", body.errmsg)
        }
        other => panic!("expected the withdrawal, got {other:?}"),
    }
    // The admin routes still reach it, and say when it was withdrawn.
    let (_, shown) = server
        .get(&format!("/wechat/app/show?appid={AUTHORIZER}"))
        .await;
    assert!(shown["app"]["revoked_at"].is_string(), "{shown}");

    // A platform's message token and key are checked on update as on create; nothing changes
    // on a refusal.
    let not_base64 = "!".repeat(43);
    for (field, value) in [("aes_key", "tooshort"), ("aes_key", not_base64.as_str())] {
        let body = json!({"appid": COMPONENT, field: value});
        let (status, body) = server.post_json("/wechat/app/update", &body).await;
        assert_eq!(
            (status, errcode(&body)),
            (400, Some(90400)),
            "{field}: {body}"
        );
        assert!(
            body["errmsg"].as_str().unwrap().contains(COMPONENT),
            "{body}"
        );
    }
    let new_key = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let body = json!({"appid": COMPONENT, "aes_key": new_key});
    let (status, body) = server.post_json("/wechat/app/update", &body).await;
    assert_eq!((status, errcode(&body)), (200, Some(0)), "{body}");
    let stored = server.engine.component(&id(COMPONENT)).await.unwrap();
    assert_eq!(stored.aes_key.unwrap().expose(), new_key);
    assert_eq!(stored.token.unwrap().expose(), TOKEN);
    // An authorizer's refresh token is updated in place of a secret.
    let body = json!({"appid": AUTHORIZER, "refresh_token": "refreshtoken@@@new"});
    let (status, body) = server.post_json("/wechat/app/update", &body).await;
    assert_eq!((status, errcode(&body)), (200, Some(0)), "{body}");
    let body = json!({"appid": AUTHORIZER, "refresh_token": "r", "secret": "s"});
    let (status, body) = server.post_json("/wechat/app/update", &body).await;
    assert_eq!((status, errcode(&body)), (400, Some(90400)), "{body}");
    let body = json!({"appid": AUTHORIZER, "token_mode": "stable"});
    let (status, body) = server.post_json("/wechat/app/update", &body).await;
    assert_eq!((status, errcode(&body)), (400, Some(90400)), "{body}");
    server.stop().await;
}

/// Every authorizer of a page, with its authorization.
fn page_of(body: &Value) -> Vec<(String, String)> {
    body["authorizers"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|a| {
            (
                a["appid"].as_str().unwrap().to_owned(),
                a["authorization"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every page of `/component/{COMPONENT}/authorizers?{query}` at `limit`, in order.
async fn every_page(server: &TestServer, query: &str, limit: u64) -> Vec<Vec<(String, String)>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/component/{COMPONENT}/authorizers?limit={limit}&{query}");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let (status, body) = server.get(&path).await;
        assert_eq!((status, errcode(&body)), (200, Some(0)), "{path}: {body}");
        assert_eq!(body["component_appid"], COMPONENT);
        pages.push(page_of(&body));
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "the listing does not end");
    }
}

async fn authorizers_are_listed_a_page_at_a_time(db: &TestDb) {
    let mock = mock().await;
    let server = TestServer::start(settings(db, &mock)).await;
    add_component(&server).await;
    // Another platform, with authorizers whose appids sort among ours, and an app of its own:
    // neither is listed.
    let other = json!({"appid": "wxcomponent02", "kind": "component", "secret": SECRET,
        "token": TOKEN, "aes_key": AES_KEY});
    assert_eq!(server.post_json("/wechat/app/create", &other).await.0, 200);
    let admin = &server;
    let create = move |appid: String, component: &'static str| {
        let body = json!({"appid": appid, "component_appid": component,
            "refresh_token": format!("refreshtoken@@@{appid}")});
        async move {
            let (status, body) = admin.post_json("/wechat/app/create", &body).await;
            assert_eq!((status, errcode(&body)), (200, Some(0)), "{body}");
        }
    };
    let ours: BTreeSet<String> = (0..250).map(|n| format!("wxa{:04}", n * 2)).collect();
    for chunk in ours.iter().collect::<Vec<_>>().chunks(25) {
        futures::future::join_all(chunk.iter().map(|a| create((*a).clone(), COMPONENT))).await;
    }
    for n in 0..20 {
        create(format!("wxa{:04}", n * 24 + 1), "wxcomponent02").await;
    }
    server.add_app_with("wxa0003", "plainsecret").await;
    let revoked: BTreeSet<String> = ours.iter().step_by(10).cloned().collect();
    for appid in &revoked {
        let withdrawn = server
            .engine
            .unauthorized(&id(COMPONENT), &id(appid))
            .await
            .unwrap();
        assert!(withdrawn);
    }
    assert_eq!(revoked.len(), 25);

    // Three pages of 100, 100 and 50: every authorizer once, in appid order, withdrawals shown.
    let pages = every_page(&server, "", 100).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    let listed: Vec<(String, String)> = pages.into_iter().flatten().collect();
    let appids: Vec<&String> = listed.iter().map(|(a, _)| a).collect();
    assert_eq!(
        appids,
        ours.iter().collect::<Vec<_>>(),
        "each once, in order"
    );
    for (appid, authorization) in &listed {
        let expected = if revoked.contains(appid) {
            "revoked"
        } else {
            "authorized"
        };
        assert_eq!(authorization, expected, "{appid}");
    }

    explain_the_page_query(db).await;

    // Filtered by authorization.
    let withdrawn: Vec<String> = every_page(&server, "state=revoked", 10)
        .await
        .into_iter()
        .flatten()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(withdrawn, revoked.iter().cloned().collect::<Vec<_>>());
    let standing = every_page(&server, "state=authorized", 1000).await;
    assert_eq!(standing.len(), 1);
    assert_eq!(standing[0].len(), 225);

    // What a listing of the wrong thing says.
    for (path, status, code) in [
        ("/component/wxa0003/authorizers", 400, 90400),
        ("/component/wxnobody/authorizers", 404, 90404),
        ("/component/wxcomponent01/authorizers?limit=0", 400, 90400),
        ("/component/wxcomponent01/authorizers?after=zz", 400, 90400),
        (
            "/component/wxcomponent01/authorizers?state=gone",
            400,
            90400,
        ),
    ] {
        let (got, body) = server.get(path).await;
        assert_eq!(
            (got, errcode(&body)),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let response = server
        .http
        .post(format!("{}/component/{COMPONENT}/authorizers", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    server.stop().await;
}

/// The page query `store::listing` builds for a platform's authorizers (`component_appid = :c AND
/// appid > :cursor ORDER BY appid LIMIT n + 1`) is one range of the `(component_appid, appid)`
/// index, read in its order and stopped after n + 1 rows, so it holds at 100,000 authorizers:
/// SQLite's plan says so outright; PostgreSQL's, with sequential scans priced out (a table this
/// small would be scanned whole otherwise), shows the index can serve it; MariaDB's names the
/// index as its key. (At scale MariaDB could also walk the primary key in appid order when most
/// rows are the platform's, which stops after n + 1 rows as well.)
async fn explain_the_page_query(db: &TestDb) {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let query = format!(
        "SELECT * FROM wechat_app_info WHERE component_appid = '{COMPONENT}' \
         AND appid > 'wxa0100' ORDER BY appid LIMIT 101"
    );
    let connection = sea_orm::Database::connect(&db.url).await.unwrap();
    let backend = connection.get_database_backend();
    // One transaction: the setting and the EXPLAIN on the same connection of the pool.
    let txn = connection.begin().await.unwrap();
    let (explain, column) = match db.backend {
        Backend::Sqlite => (format!("EXPLAIN QUERY PLAN {query}"), "detail"),
        Backend::Postgres => {
            let price_out = "SET LOCAL enable_seqscan = off";
            txn.execute_unprepared(price_out).await.unwrap();
            (format!("EXPLAIN {query}"), "QUERY PLAN")
        }
        Backend::Mysql => (format!("EXPLAIN {query}"), "key"),
    };
    let rows = txn
        .query_all_raw(Statement::from_string(backend, explain))
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    let plan: Vec<String> = rows
        .iter()
        .map(|row| {
            row.try_get::<Option<String>>("", column)
                .unwrap()
                .unwrap_or_default()
        })
        .collect();
    let plan = plan.join("\n");
    println!("{:?}: {plan}", db.backend);
    if db.backend != Backend::Mysql {
        assert!(plan.contains("idx_wai_component_appid"), "{plan}");
        assert!(
            !plan.to_lowercase().contains("sort"),
            "read in the index's order: {plan}"
        );
    }
}
