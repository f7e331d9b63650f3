//! Resource limits against hostile or careless clients: slow headers, too many connections,
//! too many refreshes at once.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wetoken_mock::{Endpoint, Fault};

use crate::harness::{TestDb, TestServer, mock_with, settings};

async fn sqlite() -> TestDb {
    TestDb::sqlite().await
}

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; how long that took, and what it sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let db = sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.header_read_timeout_secs = 1;
    let server = TestServer::start(s).await;

    // Slowloris: a request line, then one header byte now and then, never the blank line.
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let (took, _) = until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // Normal requests are unaffected.
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let db = sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.max_connections = 2;
    let server = TestServer::start(s).await;

    // Two connections that have begun a request (one that sends nothing is closed after
    // header_read_timeout_secs: see the next test).
    // The listener accepts connections in the order they were made, so these two take the
    // slots before the third is accepted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr(&server)).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (_, answer) = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(
        answer.is_empty(),
        "over the limit, no answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // Once the server has seen them close, their slots are free again: a new connection is
    // answered (one that comes before the server noticed is closed unanswered; try again).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let mut fourth = TcpStream::connect(addr(&server)).await.unwrap();
        let _ = fourth
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let (_, answer) = until_closed(&mut fourth, Duration::from_secs(5)).await;
        if !answer.is_empty() {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no connection was answered after the held ones closed"
        );
    };
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    let db = sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.header_read_timeout_secs = 1;
    s.http.max_connections = 2;
    let server = TestServer::start(s).await;

    // Fill the slots with a socket that sends nothing and one that sends `P`, which could begin
    // the HTTP/2 preface: hyper's header timer has started for neither, so the server must close
    // these itself.
    let mut silent = Vec::new();
    for first in [&b""[..], b"P"] {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream.write_all(first).await.unwrap();
        silent.push(stream);
    }
    for stream in &mut silent {
        let (took, got) = until_closed(stream, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        assert!(got.is_empty());
    }
    // The slots are free again.
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_calls_are_bounded() {
    let db = sqlite().await;
    let apps: Vec<String> = (0..4).map(|i| format!("wxbound{i}")).collect();
    let ids: Vec<&str> = apps.iter().map(String::as_str).collect();
    let mock = mock_with(&ids).await;
    let mut s = settings(&db, &mock);
    s.refresh.max_upstream_concurrency = 1;
    let server = TestServer::start(s).await;
    for app in &apps {
        server.add_app(app).await;
    }
    mock.inject(Endpoint::Token, Fault::Delay(Duration::from_millis(300)), 4);
    let started = Instant::now();
    let tokens = join_all(apps.iter().map(|app| server.token(app))).await;
    // One at a time: four 300 ms calls cannot finish sooner than 1.2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(tokens.len(), 4);
    assert_eq!(mock.calls(Endpoint::Token), 4);
    server.stop().await;
    db.drop_db().await;
}

/// What hyper answers by itself, for a request it cannot parse, carries wetoken's JSON body like
/// every other error (issue #17: these had empty bodies): a malformed request line or header
/// (400), a URI over 65,534 bytes (414), more than 100 headers or a head over hyper's ~400 KiB
/// buffer (431).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layers_own_errors_carry_the_json_body() {
    let db = sqlite().await;
    let mock = mock_with(&[]).await;
    let server = TestServer::start(settings(&db, &mock)).await;

    let many_headers: String = (0..120).map(|i| format!("X-H{i}: a\r\n")).collect();
    let cases: [(&str, Vec<u8>, u16); 5] = [
        (
            "a request line that is not HTTP",
            b"BLAH\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a header line without a colon",
            b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a 70,000-byte URI",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
        (
            "120 headers",
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            "a 1 MiB header",
            format!(
                "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1024 * 1024)
            )
            .into_bytes(),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        // The server may answer and close before it has read all of a request too large.
        let _ = stream.write_all(&request).await;
        let (_, answer) = until_closed(&mut stream, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no answer: {answer:?}"));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer:?}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{what}: {answer:?}"
        );
        assert!(head.contains("content-type: application/json"), "{what}");
        let body: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {answer:?}"));
        assert_eq!(body["errcode"], 90400, "{what}: {body}");
        assert!(!body["errmsg"].as_str().unwrap().is_empty(), "{what}");
    }
    // And the server serves on.
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
    db.drop_db().await;
}
