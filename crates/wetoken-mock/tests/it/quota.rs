//! Daily quotas on the token calls, WeChat's quota helpers (`openapi/quota/get`, `clear_quota`)
//! and `getcallbackip`, the second token check that spends no quota.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use wetoken_mock::{Endpoint, MockConfig, MockWeChat};

use crate::support::{APP, SECRET, assert_err, get, mock, post, token};

const OTHER: &str = "wx00000000000000ff";
const CORP: &str = "ww0123456789abcdef";
const DAY: Duration = Duration::from_secs(86_400);

async fn mock_with(config: MockConfig) -> MockWeChat {
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    mock.add_app(APP, SECRET);
    mock
}

/// `GET /cgi-bin/token` for `appid` (known with [`SECRET`]), whatever it answers.
async fn token_call(mock: &MockWeChat, appid: &str) -> Value {
    get(
        mock,
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", appid),
            ("secret", SECRET),
        ],
    )
    .await
}

async fn quota_get(mock: &MockWeChat, token: &str, body: &str) -> Value {
    post(
        mock,
        "/cgi-bin/openapi/quota/get",
        &[("access_token", token)],
        body,
    )
    .await
}

/// `quota/get` for `cgi_path`, expecting a success: (daily_limit, used, remain).
async fn quota(mock: &MockWeChat, token: &str, cgi_path: &str) -> (u64, u64, u64) {
    let body = quota_get(mock, token, &json!({ "cgi_path": cgi_path }).to_string()).await;
    assert_eq!(body["errcode"], 0, "{body}");
    assert_eq!(body["errmsg"], "ok", "{body}");
    let field = |name: &str| body["quota"][name].as_u64().unwrap();
    (field("daily_limit"), field("used"), field("remain"))
}

async fn clear(mock: &MockWeChat, token: &str, appid: &str) -> Value {
    post(
        mock,
        "/cgi-bin/clear_quota",
        &[("access_token", token)],
        &json!({ "appid": appid }).to_string(),
    )
    .await
}

async fn callback_ip(mock: &MockWeChat, token: &str) -> Value {
    get(mock, "/cgi-bin/getcallbackip", &[("access_token", token)]).await
}

async fn work_token(mock: &MockWeChat) -> Value {
    get(
        mock,
        "/cgi-bin/gettoken",
        &[("corpid", CORP), ("corpsecret", "agent-a")],
    )
    .await
}

#[tokio::test]
async fn getcallbackip_checks_any_token_is_counted_apart_and_spends_no_quota() {
    let mock = mock().await;
    mock.add_app(CORP, "agent-a");
    let official = token(&mock).await;
    let work = work_token(&mock).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for good in [&official, &work] {
        let body = callback_ip(&mock, good).await;
        assert_eq!(
            body,
            json!({"ip_list": ["127.0.0.1"]}),
            "no errcode on success"
        );
    }
    assert_err(&get(&mock, "/cgi-bin/getcallbackip", &[]).await, 41001);
    assert_err(&callback_ip(&mock, "not-a-token").await, 40001);
    mock.invalidate_token(&official);
    assert_err(&callback_ip(&mock, &official).await, 40001);
    mock.advance(Duration::from_secs(7200));
    assert_err(&callback_ip(&mock, &work).await, 42001);
    // Another method than GET is refused.
    let body = post(
        &mock,
        "/cgi-bin/getcallbackip",
        &[("access_token", &work)],
        "{}",
    )
    .await;
    assert_err(&body, 43001);

    assert_eq!(mock.calls(Endpoint::CallbackIp), 7);
    assert_eq!(mock.calls(Endpoint::CheckToken), 0);
    assert_eq!(mock.token_fetches(APP), 1, "only the token call itself");
    assert_eq!(mock.quota_used(CORP, Endpoint::WorkToken), 1);
}

#[tokio::test]
async fn past_the_daily_limit_a_token_call_gets_45009_until_the_next_mock_day() {
    let mock = mock_with(MockConfig {
        token_daily_limit: 3,
        ..MockConfig::default()
    })
    .await;
    let mut last = String::new();
    for _ in 0..3 {
        last = token(&mock).await;
    }
    assert_eq!(mock.token_fetches(APP), 3);
    for _ in 0..2 {
        let body = token_call(&mock, APP).await;
        assert_err(&body, 45009);
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap()
                .starts_with("reach max api daily quota limit"),
            "{body}"
        );
        assert!(body.get("access_token").is_none(), "{body}");
    }
    assert_eq!(
        mock.current_token(APP),
        Some(last.clone()),
        "nothing issued"
    );
    assert_eq!(mock.token_fetches(APP), 3, "refused calls are not counted");
    assert_eq!(mock.calls(Endpoint::Token), 5, "but they are calls");
    assert_eq!(quota(&mock, &last, "/cgi-bin/token").await, (3, 3, 0));
    // Errors before the quota is looked at are not counted either.
    let body = get(
        &mock,
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", APP),
            ("secret", "wrong"),
        ],
    )
    .await;
    assert_err(&body, 40125);

    // Another app has its own quota.
    mock.add_app(OTHER, SECRET);
    let other = token_call(&mock, OTHER).await;
    assert!(other["access_token"].is_string(), "{other}");
    assert_eq!(mock.token_fetches(OTHER), 1);

    // The next mock day starts 24 h after the mock did.
    mock.advance(DAY);
    assert_eq!(mock.token_fetches(APP), 0);
    let fresh = token(&mock).await;
    assert_eq!(mock.token_fetches(APP), 1);
    assert_eq!(quota(&mock, &fresh, "/cgi-bin/token").await, (3, 1, 2));
}

#[tokio::test]
async fn stable_and_wecom_token_calls_have_daily_limits_too() {
    let mock = mock_with(MockConfig {
        token_daily_limit: 2,
        stable_token_daily_limit: 2,
        ..MockConfig::default()
    })
    .await;
    mock.add_app(CORP, "agent-a");
    let stable = || {
        post(
            &mock,
            "/cgi-bin/stable_token",
            &[],
            r#"{"grant_type":"client_credential","appid":"wx0123456789abcdef","secret":"0123456789abcdef0123456789abcdef"}"#,
        )
    };
    // Every stable call counts, the ones that hand back the same token as well.
    let first = stable().await;
    assert_eq!(stable().await["access_token"], first["access_token"]);
    assert_err(&stable().await, 45009);
    assert_eq!(mock.quota_used(APP, Endpoint::StableToken), 2);
    assert_eq!(mock.token_fetches(APP), 0, "classic and stable are apart");
    let held = first["access_token"].as_str().unwrap();
    assert_eq!(quota(&mock, held, "/cgi-bin/stable_token").await, (2, 2, 0));
    assert_eq!(quota(&mock, held, "/cgi-bin/token").await, (2, 0, 2));

    // WeCom: per corp, the same token while it lives, and 45009 past the limit.
    let work = work_token(&mock).await;
    assert_eq!(work["errcode"], 0, "{work}");
    assert_eq!(
        work_token(&mock).await["access_token"],
        work["access_token"]
    );
    assert_err(&work_token(&mock).await, 45009);
    assert_eq!(mock.quota_used(CORP, Endpoint::WorkToken), 2);
    mock.advance(DAY);
    assert_eq!(work_token(&mock).await["errcode"], 0);
    assert_eq!(mock.quota_used(CORP, Endpoint::WorkToken), 1);
}

#[tokio::test]
async fn quota_get_answers_the_token_apps_count_and_refuses_bad_paths_as_wechat_does() {
    let mock = mock().await;
    mock.add_app(CORP, "agent-a");
    mock.add_app(OTHER, SECRET);
    let mut held = String::new();
    for _ in 0..5 {
        held = token(&mock).await;
    }
    let body = quota_get(&mock, &held, r#"{"cgi_path":"/cgi-bin/token"}"#).await;
    assert_eq!(
        body,
        json!({"errcode": 0, "errmsg": "ok",
               "quota": {"daily_limit": 2000, "used": 5, "remain": 1995}})
    );
    // Asking spends nothing.
    assert_eq!(quota(&mock, &held, "/cgi-bin/token").await, (2000, 5, 1995));

    let refused = [
        ("not json", 47001),
        (r#"{"path":"/cgi-bin/token"}"#, 47001),
        (r#"{"cgi_path":5}"#, 47001),
        (r#"{"cgi_path":""}"#, 76003),
        (r#"{"cgi_path":"cgi-bin/token"}"#, 76003),
        (
            r#"{"cgi_path":"https://api.weixin.qq.com/cgi-bin/token"}"#,
            76003,
        ),
        (r#"{"cgi_path":"/sns/jscode2session"}"#, 76022),
        (r#"{"cgi_path":"/cgi-bin/no_such_api"}"#, 76021),
    ];
    for (body, errcode) in refused {
        assert_err(&quota_get(&mock, &held, body).await, errcode);
    }
    let path = r#"{"cgi_path":"/cgi-bin/token"}"#;
    assert_err(
        &post(&mock, "/cgi-bin/openapi/quota/get", &[], path).await,
        41001,
    );
    assert_err(&quota_get(&mock, "not-a-token", path).await, 40001);
    let work = work_token(&mock).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_err(&quota_get(&mock, &work, path).await, 40001);
    let body = get(
        &mock,
        "/cgi-bin/openapi/quota/get",
        &[("access_token", &held)],
    )
    .await;
    assert_err(&body, 43002);
    mock.advance(Duration::from_secs(7200));
    assert_err(&quota_get(&mock, &held, path).await, 42001);
    assert_eq!(mock.calls(Endpoint::QuotaGet), 15);
}

#[tokio::test]
async fn clear_quota_resets_the_apps_counts_ten_times_a_mock_month() {
    let mock = mock().await;
    mock.add_app(OTHER, SECRET);
    for _ in 0..3 {
        token(&mock).await;
    }
    let held = token(&mock).await;
    let other = token_call(&mock, OTHER).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mock.token_fetches(APP), 4);

    // Only the token's own app, named in the body.
    assert_err(&clear(&mock, &held, OTHER).await, 40013);
    assert_err(
        &post(
            &mock,
            "/cgi-bin/clear_quota",
            &[("access_token", &held)],
            "{}",
        )
        .await,
        41002,
    );
    assert_err(
        &post(
            &mock,
            "/cgi-bin/clear_quota",
            &[("access_token", &held)],
            "appid",
        )
        .await,
        47001,
    );
    assert_err(&clear(&mock, "not-a-token", APP).await, 40001);
    assert_eq!(mock.quota_clears(APP), 0, "refusals use no clear");
    assert_eq!(mock.token_fetches(APP), 4);

    let body = clear(&mock, &held, APP).await;
    assert_eq!(body, json!({"errcode": 0, "errmsg": "ok"}));
    assert_eq!(mock.token_fetches(APP), 0);
    assert_eq!(quota(&mock, &held, "/cgi-bin/token").await, (2000, 0, 2000));
    assert_eq!(mock.token_fetches(OTHER), 1, "another app keeps its count");
    assert_eq!(mock.quota_clears(APP), 1);
    assert_eq!(mock.quota_clears(OTHER), 0);

    for n in 2..=10 {
        assert_eq!(clear(&mock, &held, APP).await["errcode"], 0, "clear {n}");
    }
    token(&mock).await;
    let body = clear(&mock, &held, APP).await;
    assert_err(&body, 48006);
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("forbid to clear quota because of reaching the limit"),
        "{body}"
    );
    assert_eq!(mock.token_fetches(APP), 1, "a refused clear clears nothing");
    assert_eq!(mock.quota_clears(APP), 10);
    assert_eq!(clear(&mock, &other, OTHER).await["errcode"], 0, "per app");
    assert_eq!(mock.calls(Endpoint::ClearQuota), 16);

    // A new mock month (30 mock days) brings ten more.
    mock.advance(DAY * 30);
    let fresh = token(&mock).await;
    assert_eq!(mock.quota_clears(APP), 0);
    assert_eq!(clear(&mock, &fresh, APP).await["errcode"], 0);
}
