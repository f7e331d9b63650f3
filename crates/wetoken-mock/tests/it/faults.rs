//! Injected faults and the call counters.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wetoken_mock::{Endpoint, Fault};

use crate::support::{APP, SECRET, assert_err, check, client, get, mock, post, token};

fn token_url(mock: &wetoken_mock::MockWeChat) -> String {
    format!(
        "{}/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}",
        mock.url()
    )
}

#[tokio::test]
async fn errcode_faults_are_queued_in_order_then_normal_answers_resume() {
    let mock = mock().await;
    mock.inject(Endpoint::Token, Fault::ErrCode(-1), 2);
    mock.inject(Endpoint::Token, Fault::ErrCode(45009), 1);
    mock.inject(Endpoint::Token, Fault::ErrCode(40164), 0);
    let query = [
        ("grant_type", "client_credential"),
        ("appid", APP),
        ("secret", SECRET),
    ];
    for expected in [-1, -1, 45009] {
        let body = get(&mock, "/cgi-bin/token", &query).await;
        assert_err(&body, expected);
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap()
                .starts_with("injected fault"),
            "{body}"
        );
    }
    assert_eq!(
        mock.current_token(APP),
        None,
        "a faulted call issues nothing"
    );
    let issued = token(&mock).await;
    assert_eq!(mock.current_token(APP), Some(issued));
    assert_eq!(mock.calls(Endpoint::Token), 4, "faulted calls are counted");
}

#[tokio::test]
async fn faults_apply_only_to_their_endpoint_and_can_be_cleared() {
    let mock = mock().await;
    mock.inject(Endpoint::Ticket, Fault::ErrCode(-1), 5);
    mock.inject(Endpoint::CheckToken, Fault::ErrCode(45011), 1);
    let issued = token(&mock).await;
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &issued), ("type", "jsapi")],
    )
    .await;
    assert_err(&body, -1);
    // Faults come before any other handling, even a wrong method or a malformed body.
    mock.inject(Endpoint::StableToken, Fault::ErrCode(-1), 1);
    assert_err(&get(&mock, "/cgi-bin/stable_token", &[]).await, -1);
    assert_eq!(check(&mock, &issued).await, 45011);
    assert_eq!(check(&mock, &issued).await, 0);

    mock.clear_faults();
    let body = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &issued), ("type", "jsapi")],
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");
    assert_eq!(mock.calls(Endpoint::Ticket), 2);
}

#[tokio::test]
async fn an_http_status_fault_answers_that_status_with_a_text_body() {
    let mock = mock().await;
    mock.inject(Endpoint::Token, Fault::HttpStatus(503), 1);
    let response = client().get(token_url(&mock)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert!(text.contains("injected fault"), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    assert_eq!(mock.current_token(APP), None);
    let response = client().get(token_url(&mock)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.calls(Endpoint::Token), 2);
}

#[tokio::test]
async fn a_delay_fault_answers_normally_but_late() {
    let mock = mock().await;
    mock.inject(Endpoint::Token, Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let delayed = token(&mock).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(mock.current_token(APP), Some(delayed), "answered normally");
    let started = Instant::now();
    token(&mock).await;
    assert!(started.elapsed() < Duration::from_millis(300), "only once");
    assert_eq!(mock.calls(Endpoint::Token), 2);
}

/// `Delay` waits before the mock acts: nothing is issued while the caller waits. `DelayAnswer`
/// acts at once and holds the answer back: the new token is WeChat's current one while the
/// caller has not heard of it yet.
#[tokio::test]
async fn a_delayed_answer_is_issued_before_it_is_sent() {
    let mock = mock().await;
    let first = token(&mock).await;
    mock.inject(Endpoint::Token, Fault::Delay(Duration::from_millis(400)), 1);
    let waiting = tokio::spawn(token_call(token_url(&mock)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.current_token(APP), Some(first), "nothing issued yet");
    let second = waiting.await.unwrap();
    assert_eq!(mock.current_token(APP).as_ref(), Some(&second));

    mock.inject(
        Endpoint::Token,
        Fault::DelayAnswer(Duration::from_millis(400)),
        1,
    );
    let started = Instant::now();
    let waiting = tokio::spawn(token_call(token_url(&mock)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let issued = mock.current_token(APP).unwrap();
    assert_ne!(issued, second, "issued before the answer is sent");
    assert_eq!(waiting.await.unwrap(), issued);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(mock.calls(Endpoint::Token), 3);
}

async fn token_call(url: String) -> String {
    let body: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_drop_fault_closes_the_connection_without_an_answer() {
    let mock = mock().await;
    mock.inject(Endpoint::Token, Fault::Drop, 2);
    let error = client()
        .get(token_url(&mock))
        .send()
        .await
        .expect_err("no answer");
    assert!(!error.is_status() && !error.is_decode(), "{error:?}");

    // On the wire: the request goes out, and the connection ends with not a byte back.
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let request = format!(
        "GET /cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET} HTTP/1.1\r\nHost: {}\r\n\r\n",
        mock.addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed, not left hanging");
    assert!(
        read.is_ok_and(|n| n == 0) || answer.is_empty(),
        "{answer:?}"
    );
    assert!(answer.is_empty());

    assert_eq!(mock.calls(Endpoint::Token), 2);
    assert_eq!(mock.current_token(APP), None);
    token(&mock).await;
    assert_eq!(mock.calls(Endpoint::Token), 3);
}

#[tokio::test]
async fn every_request_to_an_endpoint_is_counted_until_reset() {
    let mock = mock().await;
    let issued = token(&mock).await;
    assert_err(&get(&mock, "/cgi-bin/token", &[]).await, 40002);
    post(&mock, "/cgi-bin/stable_token", &[], "{").await;
    get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", &issued), ("type", "jsapi")],
    )
    .await;
    check(&mock, &issued).await;
    check(&mock, "bad").await;
    check(&mock, "").await;
    post(
        &mock,
        "/cgi-bin/menu/create",
        &[("access_token", &issued)],
        "{}",
    )
    .await;
    get(&mock, "/cgi-bin/gettoken", &[]).await;
    get(&mock, "/cgi-bin/get_jsapi_ticket", &[]).await;
    get(&mock, "/cgi-bin/get_jsapi_ticket", &[]).await;
    let expected = [
        (Endpoint::Token, 2),
        (Endpoint::StableToken, 1),
        (Endpoint::Ticket, 1),
        (Endpoint::CheckToken, 3),
        (Endpoint::MenuCreate, 1),
        (Endpoint::WorkToken, 1),
        (Endpoint::WorkTicket, 2),
    ];
    for (endpoint, count) in expected {
        assert_eq!(mock.calls(endpoint), count, "{endpoint:?}");
    }
    mock.reset_calls();
    for endpoint in Endpoint::ALL {
        assert_eq!(mock.calls(endpoint), 0, "{endpoint:?}");
    }
    assert_eq!(check(&mock, &issued).await, 0, "a reset keeps the tokens");
    assert_eq!(mock.calls(Endpoint::CheckToken), 1);
}
