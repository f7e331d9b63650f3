//! Beyond the Go wetoken: stable tokens, card tickets, JS-SDK signing, WeCom apps, mini programs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use wetoken_core::{ManualClock, sign};
use wetoken_mock::Endpoint;

use crate::harness::{SECRET, TestDb, TestServer, mock_with, on_every_database, settings};

const APP: &str = "wxbeyond";

on_every_database!(
    stable_tokens_are_forced_within_wechats_limits,
    card_tickets_are_their_own_credential,
    jssdk_config_is_signed_with_the_current_ticket,
    wecom_apps_and_mini_programs_live_beside_official_accounts,
);

async fn errcode(server: &TestServer, path: &str) -> (u16, i64, String) {
    let (status, body) = server.get(path).await;
    (
        status,
        body["errcode"].as_i64().unwrap(),
        body["errmsg"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn stable_tokens_are_forced_within_wechats_limits(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    // 02:00 UTC is 10:00 in China: twenty-one forces 31 s apart stay within WeChat's day.
    let morning = Utc::now().date_naive().and_hms_opt(2, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(Utc.from_utc_datetime(&morning)));
    // One caller reports all twenty-one: give it the whole day's share (the share itself is
    // tested in wetoken-core's `quota_guard`).
    let mut settings = settings(db, &mock);
    settings.refresh.stable_share_percent = 100;
    let server = TestServer::start_with_clock(settings, clock).await;
    let (status, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": APP, "secret": SECRET, "token_mode": "stable"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let tokens = join_all((0..20).map(|_| server.token(APP))).await;
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(mock.calls(Endpoint::StableToken), 1);
    assert_eq!(
        mock.calls(Endpoint::Token),
        0,
        "stable mode never calls /cgi-bin/token"
    );

    // A stale report: no call. The current one: a forced refresh.
    let refresh = |value: &str| format!("/{APP}/wechat/token/refresh?access_token={value}");
    let (_, body) = server.get(&refresh("stale")).await;
    assert_eq!(body["access_token"], tokens[0].as_str());
    assert_eq!(mock.calls(Endpoint::StableToken), 1);
    let mut current = tokens[0].clone();
    // WeChat has really rejected it: a report of a token WeChat accepts fetches nothing.
    mock.invalidate_token(&current);
    let (status, body) = server.get(&refresh(&current)).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["access_token"], current.as_str());
    current = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(mock.calls(Endpoint::StableToken), 2);

    // Within 30 s of the last force: refused here, WeChat not called.
    mock.invalidate_token(&current);
    let (status, code, msg) = errcode(&server, &refresh(&current)).await;
    assert_eq!((status, code), (429, 90429), "{msg}");
    assert!(msg.contains("30 s"), "{msg}");
    assert_eq!(mock.calls(Endpoint::StableToken), 2);

    // Nineteen more, 31 s apart, make twenty today; the twenty-first is refused.
    for _ in 0..19 {
        server.clock.advance(Duration::from_secs(31));
        mock.advance(Duration::from_secs(31));
        mock.invalidate_token(&current);
        let (status, body) = server.get(&refresh(&current)).await;
        assert_eq!(status, 200, "{body}");
        let fresh = body["access_token"].as_str().unwrap().to_owned();
        assert_ne!(
            fresh, current,
            "WeChat issued a new one: within its limits too"
        );
        current = fresh;
    }
    assert_eq!(mock.calls(Endpoint::StableToken), 21);
    server.clock.advance(Duration::from_secs(31));
    mock.advance(Duration::from_secs(31));
    mock.invalidate_token(&current);
    let (status, code, msg) = errcode(&server, &refresh(&current)).await;
    assert_eq!((status, code), (429, 90429), "{msg}");
    assert!(msg.contains("20 times today"), "{msg}");
    assert_eq!(mock.calls(Endpoint::StableToken), 21);
    assert_eq!(
        server.token(APP).await,
        current,
        "the current token is still served"
    );

    // Switching to classic takes effect at once, without a restart.
    let (status, body) = server
        .post_json(
            "/wechat/app/update",
            &json!({"appid": APP, "token_mode": "classic"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get(&refresh(&current)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.calls(Endpoint::Token), 1);
    assert_eq!(
        mock.current_token(APP).as_deref(),
        body["access_token"].as_str()
    );
    let (_, show) = server.get(&format!("/wechat/app/show?appid={APP}")).await;
    assert_eq!(show["app"]["token_mode"], "classic");
    server.stop().await;
}

async fn card_tickets_are_their_own_credential(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;

    let path = format!("/{APP}/wechat/ticket/get?type=wx_card");
    let answers = join_all((0..50).map(|_| server.get(&path))).await;
    let card = answers[0].1["ticket"].as_str().unwrap().to_owned();
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b["ticket"] == card.as_str())
    );
    assert_eq!(Some(card.clone()), mock.current_ticket(APP, "wx_card"));
    assert_eq!(mock.calls(Endpoint::Ticket), 1);

    // The jsapi ticket is another credential, fetched once on its own.
    let jsapi = server.ticket(APP).await;
    assert_ne!(jsapi, card);
    assert_eq!(Some(jsapi.clone()), mock.current_ticket(APP, "jsapi"));
    assert_eq!(server.get(&path).await.1["ticket"], card.as_str());
    assert_eq!(mock.calls(Endpoint::Ticket), 2);

    // Its own passive refresh.
    let refresh = format!("/{APP}/wechat/ticket/refresh?type=wx_card&ticket=");
    let (_, body) = server.get(&format!("{refresh}stale")).await;
    assert_eq!(body["ticket"], card.as_str());
    assert_eq!(mock.calls(Endpoint::Ticket), 2);
    let (_, body) = server.get(&format!("{refresh}{card}")).await;
    assert_ne!(body["ticket"], card.as_str());
    assert_eq!(
        mock.current_ticket(APP, "wx_card").as_deref(),
        body["ticket"].as_str()
    );
    assert_eq!(
        server.ticket(APP).await,
        jsapi,
        "the jsapi ticket is untouched"
    );
    assert_eq!(mock.calls(Endpoint::Ticket), 3);

    let (status, code, msg) =
        errcode(&server, &format!("/{APP}/wechat/ticket/get?type=coupon")).await;
    assert_eq!((status, code), (400, 90400), "{msg}");
    assert!(msg.contains("unknown ticket type"), "{msg}");
    let (_, show) = server.get(&format!("/wechat/app/show?appid={APP}")).await;
    assert_eq!(show["app"]["card_ticket"]["message"], "success", "{show}");
    server.stop().await;
}

async fn jssdk_config_is_signed_with_the_current_ticket(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;

    let page = "http://example.com/shop/item?id=7&from=share#reviews";
    let encoded: String = form_encode(page);
    let (status, body) = server
        .get(&format!("/{APP}/wechat/jssdk/config?url={encoded}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["appId"], APP);
    let ticket = mock
        .current_ticket(APP, "jsapi")
        .expect("a jsapi ticket was fetched");
    let expected = sign::jsapi_signature(
        &ticket,
        body["nonceStr"].as_str().unwrap(),
        body["timestamp"].as_i64().unwrap(),
        "http://example.com/shop/item?id=7&from=share",
    );
    assert_eq!(
        body["signature"],
        expected.as_str(),
        "signed without the fragment"
    );
    assert_eq!(body["nonceStr"].as_str().unwrap().len(), 16);

    // By POST with JSON, too.
    let (status, body) = server
        .post_json(
            &format!("/{APP}/wechat/jssdk/config"),
            &json!({"url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.calls(Endpoint::Ticket), 1);

    for (url, says) in [
        ("", "url is required"),
        ("example.com%2Fpage", "http"),
        ("ftp%3A%2F%2Fexample.com%2F", "http"),
        ("http%3A%2F%2F", "http"),
    ] {
        let (status, code, msg) =
            errcode(&server, &format!("/{APP}/wechat/jssdk/config?url={url}")).await;
        assert_eq!((status, code), (400, 90400), "{url}: {msg}");
        assert!(msg.contains(says), "{url}: {msg}");
    }
    server.stop().await;
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn wecom_apps_and_mini_programs_live_beside_official_accounts(db: &TestDb) {
    let mock = mock_with(&[]).await;
    // One id string: a corp with two WeCom apps, and an official account.
    mock.add_app("wxsame", "work-secret-1");
    mock.add_app("wxsame", "work-secret-2");
    mock.add_app("wxsame", SECRET);
    mock.add_app("wxmini", SECRET);
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app("wxsame").await;
    for (agentid, secret) in [("1000002", "work-secret-1"), ("1000003", "work-secret-2")] {
        let (status, body) = server
            .post_json(
                "/wechat/app/create",
                &json!({"kind": "work", "corpid": "wxsame", "agentid": agentid, "secret": secret}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["appid"], format!("wxsame.{agentid}"));
    }
    let official = server.token("wxsame").await;
    let work_a = server.token("wxsame.1000002").await;
    let work_b = server.token("wxsame.1000003").await;
    assert!(official != work_a && work_a != work_b && official != work_b);
    assert_eq!(mock.calls(Endpoint::Token), 1);
    assert_eq!(mock.calls(Endpoint::WorkToken), 2);

    // The WeCom jsapi ticket comes from WeCom's own endpoint; wx.config is signed with the corpid.
    let ticket = server.ticket("wxsame.1000002").await;
    assert_eq!(mock.calls(Endpoint::WorkTicket), 1);
    assert_eq!(mock.calls(Endpoint::Ticket), 0);
    assert_eq!(Some(ticket), mock.current_ticket("wxsame", "jsapi"));
    let (status, body) = server
        .get("/wxsame.1000002/wechat/jssdk/config?url=https%3A%2F%2Fcorp.example.com%2F")
        .await;
    assert_eq!(
        (status, &body["appId"]),
        (200, &Value::from("wxsame")),
        "{body}"
    );

    // A mini program has a token and nothing else.
    let (status, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": "wxmini", "secret": SECRET, "kind": "mini"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.token("wxmini").await;
    for path in [
        "/wxmini/wechat/ticket/get",
        "/wxsame.1000002/wechat/ticket/get?type=wx_card",
    ] {
        let (status, code, msg) = errcode(&server, path).await;
        assert_eq!((status, code), (400, 90400), "{path}: {msg}");
        assert!(msg.contains("issues no"), "{path}: {msg}");
    }

    let (_, list) = server.get("/wechat/app/list").await;
    let kinds: Vec<(&str, &str)> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["appid"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("wxmini", "mini"),
            ("wxsame", "mp"),
            ("wxsame.1000002", "work"),
            ("wxsame.1000003", "work")
        ]
    );
    assert!(!list.to_string().contains("work-secret"));

    // Bad input.
    for (body, says) in [
        (
            json!({"appid": "wxk", "secret": "s", "kind": "bot"}),
            "unknown app kind",
        ),
        (
            json!({"appid": "wxk", "secret": "s", "token_mode": "eternal"}),
            "unknown token_mode",
        ),
        (
            json!({"kind": "work", "corpid": "ww1", "secret": "s"}),
            "agentid is required",
        ),
        (
            json!({"kind": "work", "agentid": "1", "secret": "s"}),
            "corpid is required",
        ),
        (
            json!({"kind": "work", "corpid": "ww.1", "agentid": "2", "secret": "s"}),
            "malformed corpid",
        ),
        (
            json!({"appid": "wxk", "secret": "s", "agentid": "1"}),
            "kind=work",
        ),
    ] {
        let (status, answer) = server.post_json("/wechat/app/create", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let msg = answer["errmsg"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    server.stop().await;
}
