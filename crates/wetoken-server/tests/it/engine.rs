//! What the token engine promises, seen over HTTP: one upstream call per credential lifetime,
//! expiry, passive refresh, ticket recovery, WeChat errors, restarts and the scheduler.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use wetoken_mock::{Endpoint, Fault};

use crate::harness::{TestDb, TestServer, eventually, mock_with, on_every_database, settings};

const APP: &str = "wx9e02ddcc34513fd4";

on_every_database!(
    cold_concurrent_gets_make_one_upstream_call,
    expired_credentials_are_refreshed,
    passive_refresh_calls_wechat_once_per_current_value,
    ticket_recovers_when_wechat_rejects_its_token,
    fatal_wechat_errors_halt_until_settings_change,
    transient_wechat_errors_back_off_and_recover,
    unreachable_wechat_gives_503_and_valid_tokens_keep_being_served,
    restart_reloads_credentials_without_upstream_calls,
    scheduler_renews_ahead_of_expiry,
);

async fn cold_concurrent_gets_make_one_upstream_call(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;

    let tokens = join_all((0..500).map(|_| server.token(APP))).await;
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every caller gets the same token"
    );
    assert_eq!(Some(tokens[0].clone()), mock.current_token(APP));
    assert_eq!(mock.calls(Endpoint::Token), 1);

    let tickets = join_all((0..200).map(|_| server.ticket(APP))).await;
    assert!(tickets.iter().all(|t| *t == tickets[0]));
    assert_eq!(mock.calls(Endpoint::Ticket), 1);
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "the ticket used the cached token"
    );

    let (_, body) = server.get(&format!("/{APP}/wechat/token/get")).await;
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((7190..=7200).contains(&expires_in), "{body}");
    assert_eq!(body["expires_date"].as_str().unwrap().len(), 14, "{body}");
    assert_eq!(body["errmsg"], "success");
    server.stop().await;
}

async fn expired_credentials_are_refreshed(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;
    let first = server.token(APP).await;
    let first_ticket = server.ticket(APP).await;

    // Still more than the 300 s margin left: served as is.
    server.clock.advance(Duration::from_secs(7200 - 301));
    assert_eq!(server.token(APP).await, first);
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // Inside the margin: never handed out, a new one is fetched.
    server.clock.advance(Duration::from_secs(2));
    let second = server.token(APP).await;
    assert_ne!(second, first);
    assert_eq!(mock.calls(Endpoint::Token), 2);
    let (_, body) = server.get(&format!("/{APP}/wechat/token/get")).await;
    assert!(body["expires_in"].as_i64().unwrap() > 7000, "{body}");

    let second_ticket = server.ticket(APP).await;
    assert_ne!(second_ticket, first_ticket);
    assert_eq!(mock.calls(Endpoint::Ticket), 2);
    server.stop().await;
}

async fn passive_refresh_calls_wechat_once_per_current_value(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;
    let current = server.token(APP).await;

    // A stale value: no call, the current token comes back.
    let (status, body) = server
        .get(&format!(
            "/{APP}/wechat/token/refresh?access_token=stale-value"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], current.as_str());
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // Fifty callers report the current one at once, which WeChat has really rejected: one
    // check and one fetch.
    mock.invalidate_token(&current);
    let path = format!("/{APP}/wechat/token/refresh?access_token={current}");
    let answers = join_all((0..50).map(|_| server.get(&path))).await;
    let fresh = answers[0].1["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, current);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["access_token"], fresh.as_str());
    }
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // The old value reported again (a late caller, or POST with a form): still no call.
    let (status, body) = server
        .post_raw(
            &format!("/{APP}/wechat/token/refresh"),
            "application/x-www-form-urlencoded",
            format!("access_token={current}").into_bytes(),
        )
        .await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some(fresh.as_str()))
    );
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // Tickets the same way.
    let ticket = server.ticket(APP).await;
    let path = format!("/{APP}/wechat/ticket/refresh?ticket={ticket}");
    let answers = join_all((0..20).map(|_| server.get(&path))).await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b["ticket"] != ticket.as_str())
    );
    assert_eq!(mock.calls(Endpoint::Ticket), 2);
    server.stop().await;
}

async fn ticket_recovers_when_wechat_rejects_its_token(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;
    let token = server.token(APP).await;
    mock.invalidate_token(&token);

    let ticket = server.ticket(APP).await;
    assert_eq!(Some(ticket), mock.current_ticket(APP, "jsapi"));
    assert_eq!(
        mock.calls(Endpoint::Token),
        2,
        "the token was refreshed once"
    );
    assert_eq!(
        mock.calls(Endpoint::Ticket),
        2,
        "the ticket call was retried once"
    );
    assert_ne!(server.token(APP).await, token);

    // A token WeChat keeps rejecting: one refresh, one retry, then a clear error.
    let (status, body) = server
        .get(&format!(
            "/{APP}/wechat/ticket/refresh?ticket={}",
            mock.current_ticket(APP, "jsapi").unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    mock.inject(Endpoint::Ticket, Fault::ErrCode(40001), 2);
    let before = (mock.calls(Endpoint::Token), mock.calls(Endpoint::Ticket));
    let current = body["ticket"].as_str().unwrap().to_owned();
    let (status, body) = server
        .get(&format!("/{APP}/wechat/ticket/refresh?ticket={current}"))
        .await;
    assert_eq!(
        (status, &body["errcode"]),
        (502, &Value::from(40001)),
        "{body}"
    );
    assert_eq!(mock.calls(Endpoint::Token), before.0 + 1);
    assert_eq!(mock.calls(Endpoint::Ticket), before.1 + 2);
    server.stop().await;
}

async fn fatal_wechat_errors_halt_until_settings_change(db: &TestDb) {
    let mock = mock_with(&[]).await;
    mock.add_app(APP, "the-real-secret");
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await; // registered with the wrong secret

    let path = format!("/{APP}/wechat/token/get");
    let answers = join_all((0..20).map(|_| server.get(&path))).await;
    for (status, body) in &answers {
        assert_eq!(
            (*status, &body["errcode"]),
            (502, &Value::from(40125)),
            "{body}"
        );
        assert!(body["errmsg"].as_str().unwrap().contains("40125"), "{body}");
    }
    let (_, body) = server.get(&format!("/{APP}/wechat/token/get")).await;
    assert!(
        body["errmsg"].as_str().unwrap().contains("settings"),
        "{body}"
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "a halted app is not retried"
    );

    // The ticket needs the token: same error, and no ticket call.
    let (status, _) = server.get(&format!("/{APP}/wechat/ticket/get")).await;
    assert_eq!(status, 502);
    assert_eq!(mock.calls(Endpoint::Ticket), 0);
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The outcome is recorded where an operator looks.
    let (_, body) = server.get(&format!("/wechat/app/show?appid={APP}")).await;
    assert_eq!(body["app"]["access_token"]["halted"], true, "{body}");
    assert!(
        body["app"]["access_token"]["message"]
            .as_str()
            .unwrap()
            .starts_with("40125")
    );

    // Fixing the secret lifts the halt.
    let (status, body) = server
        .post_json(
            "/wechat/app/update",
            &serde_json::json!({"appid": APP, "secret": "the-real-secret"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.token(APP).await;
    assert_eq!(mock.calls(Endpoint::Token), 2);
    let (_, body) = server.get(&format!("/wechat/app/show?appid={APP}")).await;
    assert_eq!(body["app"]["access_token"]["halted"], false, "{body}");
    assert_eq!(body["app"]["access_token"]["message"], "success");

    // A halt while a valid token is held: the token keeps being served.
    let held = server.token(APP).await;
    mock.add_app(APP, "rotated-at-wechat");
    mock.invalidate_token(&held);
    let (status, body) = server
        .get(&format!("/{APP}/wechat/token/refresh?access_token={held}"))
        .await;
    assert_eq!(
        (status, &body["errcode"]),
        (502, &Value::from(40125)),
        "{body}"
    );
    assert_eq!(server.token(APP).await, held);
    let (status, _) = server
        .get(&format!("/{APP}/wechat/token/refresh?access_token={held}"))
        .await;
    assert_eq!(status, 502);
    assert_eq!(
        mock.calls(Endpoint::Token),
        3,
        "halted: the second report made no call"
    );
    server.stop().await;
}

async fn transient_wechat_errors_back_off_and_recover(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let mut s = settings(db, &mock);
    s.refresh.backoff_base_secs = 10;
    s.refresh.backoff_max_secs = 60;
    let server = TestServer::start(s).await;
    server.add_app(APP).await;

    for (fault, status, errcode) in [
        (Fault::ErrCode(-1), 502, -1),
        (Fault::ErrCode(45009), 502, 45009),
        (Fault::HttpStatus(500), 503, 90503),
    ] {
        let before = mock.calls(Endpoint::Token);
        mock.inject(Endpoint::Token, fault, 1);
        let path = format!("/{APP}/wechat/token/get");
        let answers = join_all((0..30).map(|_| server.get(&path))).await;
        for (s, body) in &answers {
            assert_eq!(
                (*s, &body["errcode"]),
                (status, &Value::from(errcode)),
                "{body}"
            );
        }
        assert_eq!(mock.calls(Endpoint::Token), before + 1, "no retry storm");
        // Within the backoff nothing is called; after it, the next request recovers.
        server.clock.advance(Duration::from_secs(4));
        let (s, _) = server.get(&format!("/{APP}/wechat/token/get")).await;
        assert_eq!(s, status);
        assert_eq!(mock.calls(Endpoint::Token), before + 1);
        server.clock.advance(Duration::from_secs(61));
        let token = server.token(APP).await;
        assert_eq!(mock.current_token(APP), Some(token));
        assert_eq!(mock.calls(Endpoint::Token), before + 2);
        // Make the next round start cold again.
        server.clock.advance(Duration::from_secs(7200));
    }
    let (_, body) = server.get(&format!("/wechat/app/show?appid={APP}")).await;
    assert_eq!(body["app"]["access_token"]["message"], "success", "{body}");
    server.stop().await;
}

async fn unreachable_wechat_gives_503_and_valid_tokens_keep_being_served(db: &TestDb) {
    let mock = mock_with(&[APP, "wxsecond"]).await;
    let mut s = settings(db, &mock);
    s.wechat_timeout_secs = 1;
    let server = TestServer::start(s).await;
    server.add_app(APP).await;
    server.add_app("wxsecond").await;
    let token = server.token(APP).await;

    // A dropped connection and a timeout, on a cold app: 503.
    mock.inject(Endpoint::Token, Fault::Drop, 1);
    let (status, body) = server.get("/wxsecond/wechat/token/get").await;
    assert_eq!(
        (status, &body["errcode"]),
        (503, &Value::from(90503)),
        "{body}"
    );
    // Past the backoff, a timeout.
    server.clock.advance(Duration::from_secs(3));
    mock.inject(
        Endpoint::Token,
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let (status, body) = server.get("/wxsecond/wechat/token/get").await;
    assert_eq!(
        (status, &body["errcode"]),
        (503, &Value::from(90503)),
        "{body}"
    );

    // WeChat failing does not stop a valid token from being served, and a passive refresh of
    // it that fails says why.
    mock.inject(Endpoint::Token, Fault::HttpStatus(500), 5);
    mock.invalidate_token(&token);
    let (status, body) = server
        .get(&format!("/{APP}/wechat/token/refresh?access_token={token}"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(server.token(APP).await, token);
    server.stop().await;
}

async fn restart_reloads_credentials_without_upstream_calls(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;
    let token = server.token(APP).await;
    let ticket = server.ticket(APP).await;
    let clock = server.clock.clone();
    server.stop().await;

    let server = TestServer::start_with_clock(settings(db, &mock), clock).await;
    assert_eq!(server.token(APP).await, token);
    assert_eq!(server.ticket(APP).await, ticket);
    assert_eq!(mock.calls(Endpoint::Token), 1);
    assert_eq!(mock.calls(Endpoint::Ticket), 1);
    server.stop().await;
}

async fn scheduler_renews_ahead_of_expiry(db: &TestDb) {
    let mock = mock_with(&[APP, "wxother"]).await;
    let mut s = settings(db, &mock);
    s.refresh.scan_interval_ms = 30;
    s.refresh.refresh_ahead_secs = 1200;
    s.refresh.jitter_secs = 300;
    let server = TestServer::start(s).await;
    server.add_app(APP).await;
    server.add_app("wxother").await;

    // New apps are fetched without anybody asking.
    let limit = Duration::from_secs(20);
    eventually(
        "the scheduler fetches both apps' tokens and tickets",
        limit,
        || async { mock.calls(Endpoint::Token) == 2 && mock.calls(Endpoint::Ticket) == 2 },
    )
    .await;
    let token = server.token(APP).await;
    assert_eq!(mock.current_token(APP), Some(token.clone()));

    // Far from expiry nothing happens: two whole scans that saw the moved clock found nothing
    // due, and a scan starts what it finds due before it counts as finished.
    server.clock.advance(Duration::from_secs(7200 - 1500 - 1));
    server.sweeps(2).await;
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // Inside the renewal window (20 to 25 minutes before expiry, by app) both are renewed,
    // and callers never wait on WeChat.
    server.clock.advance(Duration::from_secs(1500 - 1190));
    eventually("the scheduler renews both", limit, || async {
        mock.calls(Endpoint::Token) == 4 && mock.calls(Endpoint::Ticket) == 4
    })
    .await;
    let renewed = server.token(APP).await;
    assert_ne!(renewed, token);
    assert_eq!(mock.current_token(APP), Some(renewed));
    server.sweeps(2).await;
    assert_eq!(
        mock.calls(Endpoint::Token),
        4,
        "one fetch per app per lifetime"
    );

    // A failing renewal is backed off, not stormed, and the old token keeps being served.
    mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1000);
    server.clock.advance(Duration::from_secs(7200 - 1190));
    eventually("the scheduler tries again", limit, || async {
        mock.calls(Endpoint::Token) >= 6
    })
    .await;
    // The engine's clock stands still, so the backoff never ends: scans keep finding both
    // tokens due, and the refreshes they start must find the backoff and not call WeChat.
    // Stopping waits for every refresh the scheduler started.
    server.sweeps(3).await;
    server.stop().await;
    assert_eq!(
        mock.calls(Endpoint::Token),
        6,
        "one failed try per app until the backoff ends"
    );
}
