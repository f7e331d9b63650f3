//! Helpers shared by the tests.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wetoken_mock::MockWeChat;

pub const APP: &str = "wx0123456789abcdef";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A mock that knows [`APP`] with [`SECRET`].
pub async fn mock() -> MockWeChat {
    let mock = MockWeChat::start().await.expect("the mock starts");
    mock.add_app(APP, SECRET);
    mock
}

thread_local! {
    // One per test: every test has its own thread and runtime, and a client's pooled
    // connections belong to the runtime they were made on.
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
}

pub fn client() -> reqwest::Client {
    CLIENT.with(reqwest::Client::clone)
}

/// GETs `path` with `query`, expecting HTTP 200 and a JSON body.
pub async fn get(mock: &MockWeChat, path: &str, query: &[(&str, &str)]) -> Value {
    let response = client()
        .get(format!("{}{path}", mock.url()))
        .query(query)
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("a JSON body")
}

/// POSTs `body` (raw) to `path` with `query`, expecting HTTP 200 and a JSON body.
pub async fn post(mock: &MockWeChat, path: &str, query: &[(&str, &str)], body: &str) -> Value {
    let response = client()
        .post(format!("{}{path}", mock.url()))
        .query(query)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(response.status(), 200, "POST {path}");
    response.json().await.expect("a JSON body")
}

/// A new classic token for [`APP`].
pub async fn token(mock: &MockWeChat) -> String {
    let body = get(
        mock,
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", APP),
            ("secret", SECRET),
        ],
    )
    .await;
    assert!(body.get("errcode").is_none(), "{body}");
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {body}"))
        .to_owned()
}

/// What `GET /cgi-bin/get_api_domain_ip` says of `token`: 0 when it is accepted.
pub async fn check(mock: &MockWeChat, token: &str) -> i64 {
    let body = get(
        mock,
        "/cgi-bin/get_api_domain_ip",
        &[("access_token", token)],
    )
    .await;
    match body.get("errcode") {
        None => {
            assert_eq!(body["ip_list"][0], "127.0.0.1", "{body}");
            0
        }
        Some(code) => {
            assert_rid(&body);
            code.as_i64().expect("a numeric errcode")
        }
    }
}

/// Asserts `body` is a WeChat error with `errcode` and a well-formed request id.
pub fn assert_err(body: &Value, errcode: i64) {
    assert_eq!(body["errcode"], errcode, "{body}");
    assert_rid(body);
}

/// Asserts `errmsg` ends with ` rid: xxxxxxxx-xxxxxxxx-xxxxxxxx`, the first group about now.
pub fn assert_rid(body: &Value) {
    let message = body["errmsg"].as_str().expect("an errmsg");
    let (text, rid) = message
        .rsplit_once(" rid: ")
        .unwrap_or_else(|| panic!("no rid in {message:?}"));
    assert!(!text.is_empty(), "{message:?}");
    let groups: Vec<&str> = rid.split('-').collect();
    assert_eq!(groups.len(), 3, "{message:?}");
    for group in &groups {
        assert_eq!(group.len(), 8, "{message:?}");
        assert!(
            group
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{message:?}"
        );
    }
    let secs = u32::from_str_radix(groups[0], 16).expect("hex");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as u32;
    // The mock clock may have been advanced by a few days in a test.
    assert!(
        secs >= now - 5 && secs <= now + 10 * 86_400,
        "rid time {secs} vs now {now}"
    );
}

/// Asserts an `expires_in` of `expected` seconds, or one less: real time runs on during a test,
/// and WeChat rounds down.
pub fn assert_expires_in(actual: u64, expected: u64) {
    assert!(
        actual == expected || actual + 1 == expected,
        "expires_in {actual}, expected {expected}"
    );
}
