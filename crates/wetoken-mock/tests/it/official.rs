//! Classic access tokens, tickets and token checks of official accounts.

use std::net::SocketAddr;
use std::time::Duration;

use wetoken_mock::{Endpoint, MockConfig, MockWeChat};

use crate::support::{APP, SECRET, assert_err, check, client, get, mock, post, token};

#[tokio::test]
async fn a_token_call_answers_without_errcode_and_issues_a_new_token_each_time() {
    let mock = mock().await;
    let body = get(
        &mock,
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", APP),
            ("secret", SECRET),
            ("unused", "ignored"),
        ],
    )
    .await;
    assert!(body.get("errcode").is_none(), "{body}");
    assert!(body.get("errmsg").is_none(), "{body}");
    assert_eq!(body["expires_in"], 7200);
    let first = body["access_token"].as_str().unwrap().to_owned();
    assert!((136..=160).contains(&first.len()), "{first}");
    assert!(first.starts_with("86_"), "{first}");
    assert!(
        first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    );
    assert_eq!(mock.current_token(APP), Some(first.clone()));

    let second = token(&mock).await;
    assert_ne!(second, first);
    assert_eq!(mock.current_token(APP), Some(second.clone()));
    assert_eq!(mock.current_token("wxunknown"), None);
    assert_eq!(mock.calls(Endpoint::Token), 2);
    assert_eq!(
        check(&mock, &first).await,
        0,
        "the previous one still works"
    );
    assert_eq!(check(&mock, &second).await, 0);
}

#[tokio::test]
async fn the_previous_token_overlaps_five_minutes_and_older_ones_stop_at_once() {
    let mock = mock().await;
    let first = token(&mock).await;
    let second = token(&mock).await;
    mock.advance(Duration::from_secs(299));
    assert_eq!(check(&mock, &first).await, 0, "within the overlap");
    mock.advance(Duration::from_secs(2));
    assert_eq!(check(&mock, &first).await, 42001, "past the overlap");
    assert_eq!(check(&mock, &second).await, 0);

    // Two new tokens in a row: the one before the previous is invalid at once.
    let third = token(&mock).await;
    let fourth = token(&mock).await;
    assert_eq!(check(&mock, &second).await, 40001, "superseded twice");
    assert_eq!(check(&mock, &third).await, 0, "the previous one overlaps");
    assert_eq!(check(&mock, &fourth).await, 0);
    assert_eq!(check(&mock, &first).await, 40001);

    // The newest lives its full lifetime, and no longer.
    mock.advance(Duration::from_secs(7199));
    assert_eq!(check(&mock, &third).await, 42001);
    assert_eq!(check(&mock, &fourth).await, 0);
    mock.advance(Duration::from_secs(1));
    assert_eq!(check(&mock, &fourth).await, 42001);
}

#[tokio::test]
async fn the_overlap_never_lengthens_a_token_life() {
    let config = MockConfig {
        token_expires_in: 200,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    mock.add_app(APP, SECRET);
    let first = token(&mock).await;
    mock.advance(Duration::from_secs(100));
    let second = token(&mock).await;
    mock.advance(Duration::from_secs(101));
    assert_eq!(
        check(&mock, &first).await,
        42001,
        "expired at 200 s, before the overlap ended"
    );
    assert_eq!(check(&mock, &second).await, 0);
}

#[tokio::test]
async fn token_call_errors() {
    let mock = mock().await;
    let cases: &[(&[(&str, &str)], i64)] = &[
        (&[("appid", APP), ("secret", SECRET)], 40002),
        (
            &[
                ("grant_type", "password"),
                ("appid", APP),
                ("secret", SECRET),
            ],
            40002,
        ),
        (
            &[("grant_type", "client_credential"), ("secret", SECRET)],
            41002,
        ),
        (
            &[
                ("grant_type", "client_credential"),
                ("appid", ""),
                ("secret", SECRET),
            ],
            41002,
        ),
        (
            &[("grant_type", "client_credential"), ("appid", APP)],
            41004,
        ),
        (
            &[
                ("grant_type", "client_credential"),
                ("appid", "wxnobody"),
                ("secret", SECRET),
            ],
            40013,
        ),
        (
            &[
                ("grant_type", "client_credential"),
                ("appid", APP),
                ("secret", "wrong"),
            ],
            40125,
        ),
    ];
    for (query, errcode) in cases {
        let body = get(&mock, "/cgi-bin/token", query).await;
        assert_err(&body, *errcode);
        assert!(body.get("access_token").is_none(), "{body}");
    }
    assert_eq!(mock.current_token(APP), None, "no error issued a token");
    assert_eq!(mock.calls(Endpoint::Token), cases.len() as u64);

    // Only the secret added last is right for an official account.
    mock.add_app(APP, "new-secret");
    let old = [
        ("grant_type", "client_credential"),
        ("appid", APP),
        ("secret", SECRET),
    ];
    assert_err(&get(&mock, "/cgi-bin/token", &old).await, 40125);
    let new = [
        ("grant_type", "client_credential"),
        ("appid", APP),
        ("secret", "new-secret"),
    ];
    assert!(get(&mock, "/cgi-bin/token", &new).await["access_token"].is_string());

    // Another method than GET is refused.
    let body = post(&mock, "/cgi-bin/token", &new, "{}").await;
    assert_err(&body, 43001);
}

#[tokio::test]
async fn auto_register_takes_the_first_secret_it_sees() {
    let config = MockConfig {
        auto_register: true,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let query = |secret| {
        [
            ("grant_type", "client_credential"),
            ("appid", "wxfresh"),
            ("secret", secret),
        ]
    };
    let body = get(&mock, "/cgi-bin/token", &query("s1")).await;
    let issued = body["access_token"]
        .as_str()
        .expect("registered and issued");
    assert_eq!(mock.current_token("wxfresh").as_deref(), Some(issued));
    let body = get(&mock, "/cgi-bin/token", &query("s2")).await;
    assert_err(&body, 40125);
    let body = get(&mock, "/cgi-bin/token", &query("s1")).await;
    assert!(body["access_token"].is_string(), "{body}");

    // The stable-token and WeCom calls register unknown ids the same way.
    let stable = r#"{"grant_type":"client_credential","appid":"wxstable","secret":"s3"}"#;
    let body = post(&mock, "/cgi-bin/stable_token", &[], stable).await;
    assert!(body["access_token"].is_string(), "{body}");
    let body = get(
        &mock,
        "/cgi-bin/gettoken",
        &[("corpid", "wwfresh"), ("corpsecret", "s4")],
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");
    let body = get(
        &mock,
        "/cgi-bin/gettoken",
        &[("corpid", "wwfresh"), ("corpsecret", "other")],
    )
    .await;
    assert_err(&body, 40001);
}

#[tokio::test]
async fn tickets_need_a_valid_token() {
    let mock = mock().await;
    let token = token(&mock).await;
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &token), ("type", "jsapi")],
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");
    assert_eq!(body["errmsg"], "ok");
    assert_eq!(body["expires_in"], 7200);
    let jsapi = body["ticket"].as_str().unwrap().to_owned();
    assert!(jsapi.len() > 20);
    assert_eq!(mock.current_ticket(APP, "jsapi"), Some(jsapi.clone()));
    assert_eq!(mock.current_ticket(APP, "wx_card"), None);

    // Each call issues a new one, per type.
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &token), ("type", "jsapi")],
    )
    .await;
    let again = body["ticket"].as_str().unwrap().to_owned();
    assert_ne!(again, jsapi);
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &token), ("type", "wx_card")],
    )
    .await;
    let card = body["ticket"].as_str().unwrap().to_owned();
    assert_eq!(mock.current_ticket(APP, "wx_card"), Some(card));
    assert_eq!(mock.current_ticket(APP, "jsapi"), Some(again));

    let ticket = |query: Vec<(&'static str, String)>| {
        let mock = &mock;
        async move {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(mock, "/cgi-bin/ticket/getticket", &query).await
        }
    };
    assert_err(
        &ticket(vec![
            ("access_token", token.clone()),
            ("type", "other".into()),
        ])
        .await,
        40097,
    );
    assert_err(&ticket(vec![("access_token", token.clone())]).await, 40097);
    assert_err(&ticket(vec![("type", "jsapi".into())]).await, 41001);
    assert_err(
        &ticket(vec![
            ("access_token", "not-a-token".into()),
            ("type", "jsapi".into()),
        ])
        .await,
        40001,
    );

    // Invalidated on WeChat's side: 40001 at once.
    mock.invalidate_token(&token);
    assert_err(
        &ticket(vec![
            ("access_token", token.clone()),
            ("type", "jsapi".into()),
        ])
        .await,
        40001,
    );

    // Expired: 42001.
    let fresh = crate::support::token(&mock).await;
    mock.advance(Duration::from_secs(7200));
    assert_err(
        &ticket(vec![("access_token", fresh), ("type", "jsapi".into())]).await,
        42001,
    );
    assert_eq!(mock.calls(Endpoint::Ticket), 9);
}

#[tokio::test]
async fn token_checks_and_menu_create() {
    let mock = mock().await;
    let token = token(&mock).await;
    assert_eq!(check(&mock, &token).await, 0);
    assert_eq!(check(&mock, "").await, 41001);
    assert_eq!(check(&mock, "86_unknown").await, 40001);
    assert_eq!(mock.calls(Endpoint::CheckToken), 3);

    let body = get(&mock, "/cgi-bin/menu/get", &[("access_token", &token)]).await;
    assert_err(&body, 46003);
    let menu = r#"{"button":[{"type":"click","name":"Hi","key":"HI"}]}"#;
    let body = post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", &token)],
        menu,
    )
    .await;
    assert_eq!(body, serde_json::json!({"errcode": 0, "errmsg": "ok"}));
    // WeChat's shape: the menu, and no errcode.
    let body = get(&mock, "/cgi-bin/menu/get", &[("access_token", &token)]).await;
    assert_eq!(
        body,
        serde_json::json!({"menu": {"button": [{"type": "click", "name": "Hi", "key": "HI"}]}})
    );
    let body = get(&mock, "/cgi-bin/menu/get", &[("access_token", "nope")]).await;
    assert_err(&body, 40001);
    assert_eq!(mock.calls(Endpoint::MenuGet), 3);
    let body = post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", &token)],
        "[1, 2]",
    )
    .await;
    assert_eq!(body["errcode"], 0, "any JSON will do: {body}");
    let body = post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", &token)],
        "{button",
    )
    .await;
    assert_err(&body, 47001);
    let body = post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", &token)],
        "",
    )
    .await;
    assert_err(&body, 47001);
    // The token is checked before the body.
    let body = post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", "nope")],
        "{",
    )
    .await;
    assert_err(&body, 40001);
    let body = get(&mock, "/cgi-bin/menu/create", &[("access_token", &token)]).await;
    assert_err(&body, 43002);
    assert_eq!(mock.calls(Endpoint::MenuCreate), 6);

    mock.invalidate_token(&token);
    assert_eq!(check(&mock, &token).await, 40001);
}

#[tokio::test]
async fn unknown_paths_are_404_with_a_json_errcode_and_not_counted() {
    let mock = mock().await;
    let response = client()
        .get(format!("{}/cgi-bin/no_such_api", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_err(&body, 404);
    let response = client()
        .get(format!("{}/cgi-bin/token/", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    for endpoint in Endpoint::ALL {
        assert_eq!(mock.calls(endpoint), 0, "{endpoint:?}");
    }
}

#[tokio::test]
async fn start_with_serves_on_the_address_given_and_shutdown_stops_it() {
    let mock = MockWeChat::start_with(MockConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = mock.addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(mock.url(), format!("http://127.0.0.1:{}", addr.port()));
    assert!(!mock.url().ends_with('/'));
    mock.add_app(APP, SECRET);
    assert_eq!(token(&mock).await.len(), 150);
    mock.shutdown().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}
