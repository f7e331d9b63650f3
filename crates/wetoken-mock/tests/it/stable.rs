//! Stable access tokens: reuse while valid, renewal near expiry, forced refreshes and their limits.

use std::time::Duration;

use serde_json::{Value, json};
use wetoken_mock::{Endpoint, MockWeChat};

use crate::support::{APP, SECRET, assert_err, assert_expires_in, check, get, mock, post, token};

async fn stable(mock: &MockWeChat, force: bool) -> (String, u64) {
    let body = post(
        mock,
        "/cgi-bin/stable_token",
        &[],
        &json!({
            "grant_type": "client_credential",
            "appid": APP,
            "secret": SECRET,
            "force_refresh": force,
        })
        .to_string(),
    )
    .await;
    assert!(body.get("errcode").is_none(), "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["expires_in"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn the_same_stable_token_comes_back_while_valid_and_is_renewed_in_its_last_minutes() {
    let mock = mock().await;
    let (first, expires_in) = stable(&mock, false).await;
    assert_eq!(expires_in, 7200);
    assert!((136..=160).contains(&first.len()));
    mock.advance(Duration::from_secs(1000));
    let (same, expires_in) = stable(&mock, false).await;
    assert_eq!(same, first);
    assert_expires_in(expires_in, 6200);

    // Independent of classic tokens, both ways.
    let classic = token(&mock).await;
    assert_eq!(stable(&mock, false).await.0, first);
    assert_eq!(check(&mock, &first).await, 0);
    assert_eq!(check(&mock, &classic).await, 0);
    assert_eq!(mock.current_token(APP), Some(classic.clone()));

    // 301 s left: still the same one.
    mock.advance(Duration::from_secs(7200 - 1000 - 301));
    let (same, expires_in) = stable(&mock, false).await;
    assert_eq!(same, first);
    assert_expires_in(expires_in, 301);
    // 299 s left: a new one, and the old one works until its own end.
    mock.advance(Duration::from_secs(2));
    let (second, expires_in) = stable(&mock, false).await;
    assert_ne!(second, first);
    assert_eq!(expires_in, 7200);
    assert_eq!(
        stable(&mock, false).await.0,
        second,
        "then that one is reused"
    );
    assert_eq!(check(&mock, &first).await, 0);
    mock.advance(Duration::from_secs(299));
    assert_eq!(check(&mock, &first).await, 42001);
    assert_eq!(check(&mock, &second).await, 0);
    assert_eq!(check(&mock, &classic).await, 0, "issued later, it lives on");
    assert_eq!(mock.calls(Endpoint::StableToken), 6);
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // Stable tokens fetch tickets like classic ones.
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &second), ("type", "jsapi")],
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");

    // Invalidated on WeChat's side: the next call gets a new one.
    mock.invalidate_token(&second);
    let (third, _) = stable(&mock, false).await;
    assert_ne!(third, second);
    assert_eq!(check(&mock, &second).await, 40001);
}

#[tokio::test]
async fn forced_refreshes_overlap_and_are_spaced_30_s_apart() {
    let mock = mock().await;
    let (first, _) = stable(&mock, false).await;
    let (second, expires_in) = stable(&mock, true).await;
    assert_ne!(second, first);
    assert_eq!(expires_in, 7200);
    assert_eq!(check(&mock, &first).await, 0, "the old one keeps working");

    // Within 30 s of the last force: nothing is refreshed, the current one comes back.
    mock.advance(Duration::from_secs(29));
    let (same, expires_in) = stable(&mock, true).await;
    assert_eq!(same, second);
    assert_expires_in(expires_in, 7171);
    mock.advance(Duration::from_secs(1));
    let (third, _) = stable(&mock, true).await;
    assert_ne!(third, second);
    assert_eq!(check(&mock, &first).await, 40001, "two generations back");
    assert_eq!(check(&mock, &second).await, 0);
    mock.advance(Duration::from_secs(300));
    assert_eq!(
        check(&mock, &second).await,
        42001,
        "five minutes after the force"
    );
    assert_eq!(check(&mock, &third).await, 0);
}

#[tokio::test]
async fn at_most_20_forced_refreshes_a_day() {
    let mock = mock().await;
    let (mut current, _) = stable(&mock, false).await;
    // Twenty forces a minute apart, at 60 s, 120 s, … 1200 s.
    for n in 1..=20 {
        mock.advance(Duration::from_secs(60));
        let (fresh, _) = stable(&mock, true).await;
        assert_ne!(fresh, current, "force {n} is honoured");
        current = fresh;
    }
    mock.advance(Duration::from_secs(60));
    let (refused, expires_in) = stable(&mock, true).await;
    assert_eq!(
        refused, current,
        "the 21st force of the day refreshes nothing"
    );
    assert_expires_in(expires_in, 7200 - 60);
    // A day after the first force (at 86 460 s + 5 s), it has left the window.
    mock.advance(Duration::from_secs(86_400 - 20 * 60 + 5));
    let (again, _) = stable(&mock, true).await;
    assert_ne!(again, current);
    // 35 s later the spacing allows another, but the day still holds twenty.
    mock.advance(Duration::from_secs(35));
    assert_eq!(stable(&mock, true).await.0, again);
    // Once the second force (at 120 s) has left it too, one more.
    mock.advance(Duration::from_secs(30));
    assert_ne!(stable(&mock, true).await.0, again);
    assert_eq!(mock.calls(Endpoint::StableToken), 25);
}

#[tokio::test]
async fn stable_token_request_errors() {
    let mock = mock().await;
    let cases: &[(Value, i64)] = &[
        (json!({"appid": APP, "secret": SECRET}), 40002),
        (
            json!({"grant_type": "x", "appid": APP, "secret": SECRET}),
            40002,
        ),
        (
            json!({"grant_type": "client_credential", "secret": SECRET}),
            41002,
        ),
        (
            json!({"grant_type": "client_credential", "appid": APP}),
            41004,
        ),
        (
            json!({"grant_type": "client_credential", "appid": "wxnone", "secret": SECRET}),
            40013,
        ),
        (
            json!({"grant_type": "client_credential", "appid": APP, "secret": "bad"}),
            40125,
        ),
        // The wrong JSON types are a malformed body.
        (
            json!({"grant_type": "client_credential", "appid": APP, "secret": SECRET, "force_refresh": "yes"}),
            47001,
        ),
        (
            json!({"grant_type": "client_credential", "appid": 12, "secret": SECRET}),
            47001,
        ),
        (json!(["client_credential"]), 47001),
    ];
    for (body, errcode) in cases {
        let answer = post(&mock, "/cgi-bin/stable_token", &[], &body.to_string()).await;
        assert_err(&answer, *errcode);
    }
    let answer = post(&mock, "/cgi-bin/stable_token", &[], "{\"grant_type\":").await;
    assert_err(&answer, 47001);
    let answer = post(&mock, "/cgi-bin/stable_token", &[], "").await;
    assert_err(&answer, 47001);
    // Query parameters are no substitute for the body.
    let query = [
        ("grant_type", "client_credential"),
        ("appid", APP),
        ("secret", SECRET),
    ];
    assert_err(&get(&mock, "/cgi-bin/stable_token", &query).await, 43002);
    assert_eq!(mock.calls(Endpoint::StableToken), cases.len() as u64 + 3);
}
