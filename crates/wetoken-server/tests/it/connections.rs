//! Connections held as an attacker would hold them, with a real HTTP/2 client (the `h2` crate):
//! many that made one request and then sit open answering pings, ones that stop reading, and
//! many from one address. None may lock out a new client (issue #17).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use h2::client::SendRequest;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{TestDb, TestServer, eventually, mock_with, sample, settings};

fn socket_addr(server: &TestServer) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to `server` from `from` (any 127.0.0.0/8 address is loopback on Linux, and
/// stands here for another host).
async fn connect_from(server: SocketAddr, from: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(server).await
}

/// One `GET /health` on an HTTP/2 connection; its status, once the whole body is read.
async fn get_health(sender: &mut SendRequest<Bytes>, server: SocketAddr) -> Result<u16, h2::Error> {
    let mut ready = sender.clone().ready().await?;
    let request = http::Request::get(format!("http://{server}/health"))
        .body(())
        .unwrap();
    let (response, _) = ready.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    *sender = ready;
    Ok(status)
}

/// An HTTP/2 client that made one request and now holds its connection as an attacker would:
/// the connection is driven (so the server's pings are answered) and the client pings the
/// server itself every 200 ms. `connection` ends when the server closes it.
struct Holder {
    sender: SendRequest<Bytes>,
    connection: JoinHandle<Result<(), h2::Error>>,
    pinger: JoinHandle<()>,
}

impl Holder {
    async fn open(server: SocketAddr, from: &str) -> Holder {
        let tcp = connect_from(server, from).await.unwrap();
        let (mut sender, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let mut ping_pong = connection.ping_pong().unwrap();
        let connection = tokio::spawn(connection);
        let status = get_health(&mut sender, server).await.unwrap();
        assert_eq!(status, 200);
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                    return;
                }
            }
        });
        Holder {
            sender,
            connection,
            pinger,
        }
    }
}

/// Whether a new HTTP/1 client from `from` is answered: an empty answer is a connection closed
/// at once.
async fn http1_answered(server: SocketAddr, from: &str) -> bool {
    let Ok(mut stream) = connect_from(server, from).await else {
        return false;
    };
    let _ = stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    answer.starts_with(b"HTTP/1.1 200")
}

async fn refused_total(server: &TestServer, from: &str, limit: &str) -> f64 {
    let http = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let text = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sample(
        &text,
        &format!("wetoken_connections_refused_total{{limit=\"{limit}\"}}"),
    )
    .unwrap_or_else(|| panic!("no refused-connections counter for {limit}: {text}"))
}

/// The attack of issue #17: 200 HTTP/2 connections, each made one request and then sat open
/// answering the server's pings (and pinging it), filled `max_connections = 200` for good. Now
/// each is closed with a GOAWAY once it has had no request for `idle_timeout_secs`, pings or
/// not, and a new client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answering_http2_connections_are_closed_when_idle() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.max_connections = 200;
    s.http.max_connections_per_address = 200;
    s.http.idle_timeout_secs = 3;
    let server = TestServer::start(s).await;
    let addr = socket_addr(&server);

    let started = Instant::now();
    let holders = join_all((0..200).map(|_| Holder::open(addr, "127.0.0.1"))).await;
    let opened = started.elapsed();
    // Every slot is taken: a new client is turned away (unless opening them took so long
    // that the first are closed already).
    if opened < Duration::from_secs(2) {
        assert!(
            !http1_answered(addr, "127.0.0.2").await,
            "a 201st connection was served while 200 were held"
        );
    }

    // Each is closed within the idle timeout, and another to let it go, with a GOAWAY that
    // says no error.
    let deadline = Duration::from_secs(3 + 3 + 10);
    for holder in holders {
        let Holder {
            mut sender,
            connection,
            pinger,
        } = holder;
        let ended = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), connection)
            .await
            .expect("an idle HTTP/2 connection answering pings was kept open");
        assert!(ended.unwrap().is_ok(), "closed gracefully");
        let after = get_health(&mut sender, addr).await.unwrap_err();
        assert!(
            after.is_go_away() && after.is_remote() && after.reason() == Some(h2::Reason::NO_ERROR),
            "{after:?}"
        );
        pinger.abort();
    }
    assert!(http1_answered(addr, "127.0.0.2").await);
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
    db.drop_db().await;
}

/// A client that made its request and then never reads again cannot take the GOAWAY (nor the
/// ping that comes with it): its connection is dropped another `idle_timeout_secs` later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_that_stop_reading_are_dropped() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.max_connections = 2;
    s.http.idle_timeout_secs = 2;
    let server = TestServer::start(s).await;
    let addr = socket_addr(&server);

    let mut deaf = Vec::new();
    for _ in 0..2 {
        let tcp = connect_from(addr, "127.0.0.1").await.unwrap();
        let (mut sender, mut connection) = h2::client::handshake(tcp).await.unwrap();
        // Driven until the answer is in, then never polled again.
        tokio::select! {
            status = get_health(&mut sender, addr) => assert_eq!(status.unwrap(), 200),
            ended = &mut connection => panic!("the connection ended first: {ended:?}"),
        }
        deaf.push((sender, connection));
    }
    assert!(!http1_answered(addr, "127.0.0.2").await, "both slots held");
    let started = Instant::now();
    eventually(
        "a new client to be served once the deaf connections are dropped",
        Duration::from_secs(15),
        || http1_answered(addr, "127.0.0.2"),
    )
    .await;
    // Idle for 2 s, then 2 s to take the GOAWAY: not before.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(deaf);
    server.stop().await;
    db.drop_db().await;
}

/// One address cannot take every connection: past `max_connections_per_address`, its new
/// connections are closed at once and counted, while another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[]).await;
    let mut s = settings(&db, &mock);
    s.http.max_connections = 100;
    s.http.max_connections_per_address = 3;
    let server = TestServer::start(s).await;
    let addr = socket_addr(&server);
    let limit = "max_connections_per_address";
    let before = refused_total(&server, "127.0.0.2", limit).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Holder::open(addr, "127.0.0.3").await);
    }
    // The fourth from 127.0.0.3, over HTTP/2 and over HTTP/1: closed unanswered.
    let tcp = connect_from(addr, "127.0.0.3").await.unwrap();
    let fourth = async {
        let (mut sender, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        get_health(&mut sender, addr).await
    };
    let fourth = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("the fourth connection was neither answered nor closed");
    assert!(
        fourth.is_err(),
        "a fourth connection was served: {fourth:?}"
    );
    assert!(!http1_answered(addr, "127.0.0.3").await);
    // Another address is served, over HTTP/2 too.
    let mut other = Holder::open(addr, "127.0.0.4").await;
    assert_eq!(get_health(&mut other.sender, addr).await.unwrap(), 200);
    let after = refused_total(&server, "127.0.0.2", limit).await;
    assert!(after >= before + 2.0, "{before} -> {after}");

    // A connection given up gives its address's slot back.
    let first = held.remove(0);
    first.pinger.abort();
    first.connection.abort();
    drop(first.sender);
    eventually(
        "127.0.0.3 to be served again",
        Duration::from_secs(10),
        || http1_answered(addr, "127.0.0.3"),
    )
    .await;
    server.stop().await;
    db.drop_db().await;
}

/// An HTTP/1.1 keep-alive connection is closed after its answer once idle for
/// `idle_timeout_secs`, or `header_read_timeout_secs` (the wait for the next request's
/// headers), whichever is shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_keep_alive_connections_are_closed() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&[]).await;
    for (idle, header_read) in [(1, 30), (30, 1)] {
        let mut s = settings(&db, &mock);
        s.http.idle_timeout_secs = idle;
        s.http.header_read_timeout_secs = header_read;
        let server = TestServer::start(s).await;
        let mut stream = connect_from(socket_addr(&server), "127.0.0.1")
            .await
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buf);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("idle {idle} s, header read {header_read} s: kept open"),
            }
        };
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        assert!(
            closed < Duration::from_secs(6),
            "idle {idle} s, header read {header_read} s: closed after {closed:?}"
        );
        server.stop().await;
    }
    db.drop_db().await;
}
