//! The `/mock/…` control routes that drive the binary in demos.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wetoken_mock::{Endpoint, MockWeChat};

use crate::support::{APP, SECRET, assert_err, check, client, get, mock, token};

async fn control(mock: &MockWeChat, route: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/mock/{route}", mock.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn calls(mock: &MockWeChat) -> Value {
    let response = client()
        .get(format!("{}/mock/calls", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn token_status(mock: &MockWeChat) -> Result<(u16, Value), reqwest::Error> {
    let response = client()
        .get(format!("{}/cgi-bin/token", mock.url()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", APP),
            ("secret", SECRET),
        ])
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test]
async fn apps_calls_invalidate_advance_and_reset() {
    let mock = MockWeChat::start().await.unwrap();
    assert_eq!(
        calls(&mock).await,
        json!({"token": 0, "stable_token": 0, "ticket": 0, "check_token": 0,
               "menu_create": 0, "work_token": 0, "work_ticket": 0, "template_send": 0,
               "callback_ip": 0, "quota_get": 0, "clear_quota": 0, "menu_get": 0,
               "component_token": 0, "create_preauthcode": 0, "query_auth": 0,
               "authorizer_token": 0, "authorizer_info": 0})
    );
    let (status, _) = token_status(&mock).await.unwrap();
    assert_eq!(status, 200);
    assert_err(&token_status(&mock).await.unwrap().1, 40013);

    let (status, body) = control(&mock, "apps", json!({"appid": APP, "secret": SECRET})).await;
    assert_eq!((status, &body["errcode"]), (200, &json!(0)), "{body}");
    let issued = token(&mock).await;
    check(&mock, &issued).await;
    let counted = calls(&mock).await;
    assert_eq!(counted["token"], 3, "{counted}");
    assert_eq!(counted["check_token"], 1, "{counted}");
    assert_eq!(counted["ticket"], 0, "{counted}");
    assert_eq!(
        calls(&mock).await,
        counted,
        "control routes are not counted"
    );

    let (status, _) = control(&mock, "invalidate", json!({"access_token": issued})).await;
    assert_eq!(status, 200);
    assert_eq!(check(&mock, &issued).await, 40001);

    let fresh = token(&mock).await;
    let (status, _) = control(&mock, "advance", json!({"seconds": 7200})).await;
    assert_eq!(status, 200);
    assert_eq!(check(&mock, &fresh).await, 42001);

    let (status, _) = control(
        &mock,
        "faults",
        json!({"endpoint": "token", "fault": {"errcode": -1}, "times": 3}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = control(&mock, "reset", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(calls(&mock).await["token"], 0);
    assert_eq!(calls(&mock).await["check_token"], 0);
    assert!(
        token(&mock).await.len() > 100,
        "the faults went with the reset"
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);
}

#[tokio::test]
async fn faults_of_every_kind_over_http() {
    let mock = mock().await;
    let inject = |fault: Value, times: u32| {
        let mock = &mock;
        async move {
            let (status, body) = control(
                mock,
                "faults",
                json!({"endpoint": "token", "fault": fault, "times": times}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    inject(json!({"errcode": 45009}), 2).await;
    inject(json!({"status": 502}), 1).await;
    inject(json!({"delay_ms": 200}), 1).await;
    inject(json!({"delay_answer_ms": 200}), 1).await;
    inject(json!("drop"), 1).await;

    for _ in 0..2 {
        let (status, body) = token_status(&mock).await.unwrap();
        assert_eq!(status, 200);
        assert_err(&body, 45009);
    }
    let (status, body) = token_status(&mock).await.unwrap();
    assert_eq!(status, 502, "{body}");
    let started = Instant::now();
    let (status, body) = token_status(&mock).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");
    let started = Instant::now();
    let (status, body) = token_status(&mock).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");
    assert!(token_status(&mock).await.is_err(), "dropped");
    let (_, body) = token_status(&mock).await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");
    assert_eq!(calls(&mock).await["token"], 7);

    // "times" defaults to one.
    let (status, _) = control(
        &mock,
        "faults",
        json!({"endpoint": "check_token", "fault": {"errcode": -1}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(check(&mock, "x").await, -1);
    assert_eq!(check(&mock, "x").await, 40001);
}

#[tokio::test]
async fn bad_control_requests_are_refused() {
    let mock = mock().await;
    let bad = [
        ("faults", json!({"endpoint": "nowhere", "fault": "drop"})),
        ("faults", json!({"endpoint": "token", "fault": "boom"})),
        (
            "faults",
            json!({"endpoint": "token", "fault": {"status": 42}}),
        ),
        (
            "faults",
            json!({"endpoint": "token", "fault": {"colour": 1}}),
        ),
        ("faults", json!({"endpoint": "token"})),
        ("apps", json!({"appid": APP})),
        ("invalidate", json!({})),
        ("advance", json!({"seconds": -5})),
    ];
    for (route, body) in bad {
        let (status, answer) = control(&mock, route, body.clone()).await;
        assert_eq!(status, 400, "{route} {body}: {answer}");
        assert_eq!(answer["errcode"], 400);
    }
    let (status, _) = control(&mock, "nothing", json!({})).await;
    assert_eq!(status, 404);
    let response = client()
        .get(format!("{}/mock/reset", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // None of it injected anything.
    assert!(token(&mock).await.len() > 100);
    let _ = get(&mock, "/cgi-bin/get_api_domain_ip", &[]).await;
    assert_eq!(calls(&mock).await["token"], 1);
}
