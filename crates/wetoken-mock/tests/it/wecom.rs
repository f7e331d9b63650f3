//! WeCom: one token per (corpid, corpsecret), the same while valid, and its jsapi ticket.

use std::time::Duration;

use serde_json::Value;
use wetoken_mock::{Endpoint, MockWeChat};

use crate::support::{APP, assert_err, assert_expires_in, check, get, mock, token};

const CORP: &str = "ww0123456789abcdef";

async fn gettoken(mock: &MockWeChat, corpid: &str, secret: &str) -> Value {
    get(
        mock,
        "/cgi-bin/gettoken",
        &[("corpid", corpid), ("corpsecret", secret)],
    )
    .await
}

async fn work_token(mock: &MockWeChat, secret: &str) -> (String, u64) {
    let body = gettoken(mock, CORP, secret).await;
    assert_eq!(body["errcode"], 0, "{body}");
    assert_eq!(body["errmsg"], "ok", "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["expires_in"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_wecom_token_is_the_same_while_valid_one_per_secret() {
    let mock = mock().await;
    mock.add_app(CORP, "agent-a");
    mock.add_app(CORP, "agent-b");
    let (a, expires_in) = work_token(&mock, "agent-a").await;
    assert_eq!(expires_in, 7200);
    assert!(a.len() >= 136, "{a}");
    mock.advance(Duration::from_secs(100));
    let (same, expires_in) = work_token(&mock, "agent-a").await;
    assert_eq!(same, a);
    assert_expires_in(expires_in, 7100);
    // Every secret of the corp is good, not only the last one added.
    let (b, _) = work_token(&mock, "agent-b").await;
    assert_ne!(a, b);
    assert_eq!(work_token(&mock, "agent-a").await.0, a);
    assert_eq!(check(&mock, &a).await, 0);
    assert_eq!(mock.current_token(CORP), None, "not a classic token");

    // Past its lifetime: a new one.
    mock.advance(Duration::from_secs(7100));
    assert_eq!(check(&mock, &a).await, 42001);
    let (renewed, expires_in) = work_token(&mock, "agent-a").await;
    assert_ne!(renewed, a);
    assert_eq!(expires_in, 7200);
    // Invalidated on WeChat's side: a new one too.
    mock.invalidate_token(&renewed);
    let (after, _) = work_token(&mock, "agent-a").await;
    assert_ne!(after, renewed);
    assert_eq!(check(&mock, &renewed).await, 40001);
    assert_eq!(mock.calls(Endpoint::WorkToken), 6);
    assert_eq!(mock.calls(Endpoint::Token), 0);
}

#[tokio::test]
async fn wecom_token_errors() {
    let mock = mock().await;
    mock.add_app(CORP, "agent-a");
    assert_err(&gettoken(&mock, "wwnobody", "agent-a").await, 40013);
    assert_err(&gettoken(&mock, CORP, "wrong").await, 40001);
    assert_err(
        &get(&mock, "/cgi-bin/gettoken", &[("corpsecret", "agent-a")]).await,
        41002,
    );
    assert_err(
        &get(&mock, "/cgi-bin/gettoken", &[("corpid", CORP)]).await,
        41004,
    );
    assert_eq!(mock.calls(Endpoint::WorkToken), 4);
}

#[tokio::test]
async fn the_wecom_jsapi_ticket_needs_a_wecom_token() {
    let mock = mock().await;
    mock.add_app(CORP, "agent-a");
    let (work, _) = work_token(&mock, "agent-a").await;
    let body = get(
        &mock,
        "/cgi-bin/get_jsapi_ticket",
        &[("access_token", &work)],
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");
    assert_eq!(body["errmsg"], "ok");
    assert_eq!(body["expires_in"], 7200);
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    assert_eq!(mock.current_ticket(CORP, "jsapi"), Some(ticket.clone()));
    let body = get(
        &mock,
        "/cgi-bin/get_jsapi_ticket",
        &[("access_token", &work)],
    )
    .await;
    assert_ne!(body["ticket"], ticket.as_str(), "a new ticket each call");

    // The two kinds of token do not mix.
    let official = token(&mock).await;
    let body = get(
        &mock,
        "/cgi-bin/get_jsapi_ticket",
        &[("access_token", &official)],
    )
    .await;
    assert_err(&body, 40001);
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &work), ("type", "jsapi")],
    )
    .await;
    assert_err(&body, 40001);
    assert_eq!(mock.current_ticket(APP, "jsapi"), None);

    assert_err(&get(&mock, "/cgi-bin/get_jsapi_ticket", &[]).await, 41001);
    mock.advance(Duration::from_secs(7200));
    let body = get(
        &mock,
        "/cgi-bin/get_jsapi_ticket",
        &[("access_token", &work)],
    )
    .await;
    assert_err(&body, 42001);
    assert_eq!(mock.calls(Endpoint::WorkTicket), 5);
    assert_eq!(mock.calls(Endpoint::Ticket), 1);
}
