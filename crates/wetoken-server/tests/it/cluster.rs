//! Several `wetoken-server` processes on one database: one upstream fetch per credential
//! lifetime for the whole cluster, and the faults a cluster meets.
//!
//! These run real processes against MariaDB and PostgreSQL (the databases a cluster shares), with
//! the mock WeChat in this process, and assert on the mock's call counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;
use wetoken_mock::{Endpoint, Fault, MockConfig, MockWeChat};

use crate::harness::{Proxy, Replica, SECRET, TestDb, eventually, free_port, mock_with};

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn three_replicas(db: &TestDb, mock: &MockWeChat, env: &[(&str, &str)]) -> Vec<Replica> {
    // The first creates the tables; the others find them.
    let first = Replica::start(&db.url, &mock.url(), env).await;
    let mut replicas = vec![first];
    for _ in 0..2 {
        replicas.push(Replica::start(&db.url, &mock.url(), env).await);
    }
    replicas
}

async fn add_app(http: &reqwest::Client, replica: &Replica, appid: &str) {
    let (status, body) = get(
        http,
        format!(
            "{}/wechat/app/create?appid={appid}&secret={SECRET}",
            replica.url
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

// Replicas share one database, which SQLite cannot serve to several processes: these run on
// MariaDB and PostgreSQL.
wetoken_testkit::on_databases!(
    [Mysql, Postgres]:
    cold_start_across_replicas_fetches_once,
    passive_refresh_across_replicas_fetches_once,
    kill_9_of_the_lease_holder_is_taken_over,
    sigterm_finishes_in_flight_work_and_releases_the_lease,
    wechat_failing_is_retried_with_a_bounded_shared_backoff,
    schedulers_on_three_replicas_fetch_once_per_lifetime,
    database_outage_serves_what_is_valid_then_recovers,
    unreachable_wechat_domain_fails_over_to_the_next,
    a_replaced_token_is_served_by_no_replica_after_the_bound,
    three_replicas_started_together_on_an_empty_database_all_come_up,
    ready_holds_while_the_cache_is_trusted_in_a_database_outage,
    a_replica_waiting_to_migrate_answers_live_and_nothing_else,
);

const APP: &str = "wxcluster";

/// A proxy in front of `db`'s server, and the URL that reaches `db` through it: what a test
/// takes down to cut a replica off its database.
async fn through_proxy(db: &TestDb) -> (Proxy, String) {
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let target: SocketAddr = host.parse().unwrap();
    let proxy = Proxy::start(target).await;
    let proxied = format!("{scheme}://{userinfo}@{}/{path}", proxy.addr);
    (proxy, proxied)
}

async fn cold_start_across_replicas_fetches_once(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let replicas = three_replicas(db, &mock, &[]).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;

    let tokens = join_all((0..300).map(|i| {
        get(
            &http,
            format!("{}/{APP}/wechat/token/get", replicas[i % 3].url),
        )
    }))
    .await;
    let first = tokens[0].1["access_token"].clone();
    for (status, body) in &tokens {
        assert_eq!((*status, &body["access_token"]), (200, &first), "{body}");
    }
    let tickets = join_all((0..300).map(|i| {
        get(
            &http,
            format!("{}/{APP}/wechat/ticket/get", replicas[(i + 1) % 3].url),
        )
    }))
    .await;
    let ticket = tickets[0].1["ticket"].clone();
    assert!(
        tickets
            .iter()
            .all(|(s, b)| *s == 200 && b["ticket"] == ticket)
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "one token fetch for the cluster"
    );
    assert_eq!(
        mock.calls(Endpoint::Ticket),
        1,
        "one ticket fetch for the cluster"
    );
}

async fn passive_refresh_across_replicas_fetches_once(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let replicas = three_replicas(db, &mock, &[]).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;
    let (_, body) = get(&http, format!("{}/{APP}/wechat/token/get", replicas[1].url)).await;
    let stale = body["access_token"].as_str().unwrap().to_owned();
    // WeChat has really rejected it (a token it accepts is answered as it is, no fetch).
    mock.invalidate_token(&stale);

    let answers = join_all((0..60).map(|i| {
        get(
            &http,
            format!(
                "{}/{APP}/wechat/token/refresh?access_token={stale}",
                replicas[i % 3].url
            ),
        )
    }))
    .await;
    let fresh = answers[0].1["access_token"].clone();
    assert_ne!(fresh.as_str(), Some(stale.as_str()));
    for (status, body) in &answers {
        assert_eq!((*status, &body["access_token"]), (200, &fresh), "{body}");
    }
    assert_eq!(
        mock.calls(Endpoint::Token),
        2,
        "one fetch for sixty reports on three replicas"
    );
    assert_eq!(mock.current_token(APP).as_deref(), fresh.as_str());
}

async fn kill_9_of_the_lease_holder_is_taken_over(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let mut replicas = three_replicas(db, &mock, &[]).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;

    // Replica 0 takes the lease and hangs in WeChat; it dies there.
    mock.inject(Endpoint::Token, Fault::Delay(Duration::from_secs(3)), 1);
    let doomed = tokio::spawn({
        let http = http.clone();
        let url = format!("{}/{APP}/wechat/token/get", replicas[0].url);
        async move { http.get(url).send().await }
    });
    eventually(
        "replica 0 is mid-refresh",
        Duration::from_secs(10),
        || async { mock.calls(Endpoint::Token) == 1 },
    )
    .await;
    replicas[0].kill();
    assert!(
        doomed.await.unwrap().is_err(),
        "the dead replica answered nobody"
    );

    // The others wait out the lease (2 s) and one of them completes the refresh.
    let started = Instant::now();
    let answers = join_all((0..20).map(|i| {
        get(
            &http,
            format!("{}/{APP}/wechat/token/get", replicas[1 + i % 2].url),
        )
    }))
    .await;
    let token = answers[0].1["access_token"].clone();
    for (status, body) in &answers {
        assert_eq!((*status, &body["access_token"]), (200, &token), "{body}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        2,
        "exactly one fetch after the holder died"
    );
    assert_eq!(mock.current_token(APP).as_deref(), token.as_str());
}

async fn sigterm_finishes_in_flight_work_and_releases_the_lease(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let mut replicas = three_replicas(db, &mock, &[("WETOKEN_REFRESH__LEASE_MS", "20000")]).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;

    mock.inject(
        Endpoint::Token,
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = format!("{}/{APP}/wechat/token/get", replicas[0].url);
        async move { get(&http, url).await }
    });
    let in_flight = async move { in_flight.await.unwrap() };
    eventually(
        "replica 0 is mid-refresh",
        Duration::from_secs(10),
        || async { mock.calls(Endpoint::Token) == 1 },
    )
    .await;
    let exit = replicas[0].terminate().await;
    assert!(exit.success(), "SIGTERM exits 0: {exit:?}");
    let (status, body) = in_flight.await;
    assert_eq!(status, 200, "the in-flight request was finished: {body}");

    // The lease was released, not left to lapse (it would take 20 s): the others answer at once.
    let started = Instant::now();
    let (status, other) = get(&http, format!("{}/{APP}/wechat/token/get", replicas[1].url)).await;
    assert_eq!(status, 200);
    assert_eq!(other["access_token"], body["access_token"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);
}

async fn wechat_failing_is_retried_with_a_bounded_shared_backoff(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let backoff = [
        ("WETOKEN_REFRESH__BACKOFF_BASE_SECS", "1"),
        ("WETOKEN_REFRESH__BACKOFF_MAX_SECS", "2"),
    ];
    let replicas = three_replicas(db, &mock, &backoff).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;

    mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1000);
    // Three seconds of callers on every replica, ten at a time.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while Instant::now() < deadline {
        let answers = join_all((0..10).map(|i| {
            get(
                &http,
                format!("{}/{APP}/wechat/token/get", replicas[i % 3].url),
            )
        }))
        .await;
        for (status, body) in answers {
            assert_eq!(
                (status, &body["errcode"]),
                (502, &Value::from(-1)),
                "{body}"
            );
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = mock.calls(Endpoint::Token);
    // Backoff 0.5-1 s, then 1-2 s, shared by the cluster: a handful of calls, not hundreds.
    assert!(
        (2..=6).contains(&calls),
        "{calls} calls for {answered} requests"
    );

    mock.clear_faults();
    eventually("the cluster recovers", Duration::from_secs(10), || async {
        get(&http, format!("{}/{APP}/wechat/token/get", replicas[2].url))
            .await
            .0
            == 200
    })
    .await;
    assert_eq!(mock.calls(Endpoint::Token), calls + 1);
}

async fn schedulers_on_three_replicas_fetch_once_per_lifetime(db: &TestDb) {
    // Tokens that live 7003 s and renew when under 7000 s left: due 3 s after every fetch.
    let config = MockConfig {
        token_expires_in: 7003,
        ticket_expires_in: 7003,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    mock.add_app(APP, SECRET);
    let schedule = [
        ("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "100"),
        ("WETOKEN_REFRESH__REFRESH_AHEAD_SECS", "7000"),
        ("WETOKEN_REFRESH__JITTER_SECS", "0"),
        ("WETOKEN_REFRESH__MARGIN_SECS", "60"),
        ("WETOKEN_REFRESH__REFRESH_TICKETS", "false"),
    ];
    let replicas = three_replicas(db, &mock, &schedule).await;
    let http = reqwest::Client::new();
    add_app(&http, &replicas[0], APP).await;

    eventually(
        "the first scheduled fetch",
        Duration::from_secs(10),
        || async { mock.calls(Endpoint::Token) >= 1 },
    )
    .await;
    let start = Instant::now();
    let first = mock.calls(Endpoint::Token);
    // One renewal per 3 s lifetime for the cluster: two more take at least two lifetimes.
    // Three schedulers without the lease would make them within one scan of each other.
    eventually("two more renewals", Duration::from_secs(30), || async {
        mock.calls(Endpoint::Token) >= first + 2
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        elapsed > 5.0,
        "{} renewals in {elapsed:.1} s, one lifetime is 3 s",
        mock.calls(Endpoint::Token) - first
    );
    drop(replicas);
}

async fn database_outage_serves_what_is_valid_then_recovers(db: &TestDb) {
    let mock = mock_with(&[APP, "wxcold"]).await;
    // The replica reaches the database through the proxy.
    let (proxy, proxied) = through_proxy(db).await;
    let replica = Replica::start(&proxied, &mock.url(), &[]).await;
    let http = reqwest::Client::new();
    add_app(&http, &replica, APP).await;
    add_app(&http, &replica, "wxcold").await;
    let (_, body) = get(&http, format!("{}/{APP}/wechat/token/get", replica.url)).await;
    let token = body["access_token"].clone();

    proxy.take_down();
    // What memory holds is still served.
    for _ in 0..5 {
        let (status, body) = get(&http, format!("{}/{APP}/wechat/token/get", replica.url)).await;
        assert_eq!((status, &body["access_token"]), (200, &token), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing held: 503, and WeChat is not called, since the result could not be stored.
    let (status, body) = get(&http, format!("{}/wxcold/wechat/token/get", replica.url)).await;
    assert_eq!(
        (status, &body["errcode"]),
        (503, &Value::from(90504)),
        "{body}"
    );
    let (status, _) = get(&http, format!("{}/health", replica.url)).await;
    assert_eq!(status, 503);
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The database comes back: no restart needed.
    proxy.bring_back();
    eventually("the replica recovers", Duration::from_secs(20), || async {
        get(&http, format!("{}/wxcold/wechat/token/get", replica.url))
            .await
            .0
            == 200
    })
    .await;
    assert_eq!(mock.calls(Endpoint::Token), 2);
}

async fn unreachable_wechat_domain_fails_over_to_the_next(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    // Nothing listens on the primary domain.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let fallbacks = format!("[\"{}\"]", mock.url());
    let replica = Replica::start(
        &db.url,
        &dead,
        &[("WETOKEN_WECHAT_FALLBACK_URLS", &fallbacks)],
    )
    .await;
    let http = reqwest::Client::new();
    add_app(&http, &replica, APP).await;
    let (status, body) = get(&http, format!("{}/{APP}/wechat/token/get", replica.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        mock.current_token(APP).as_deref(),
        body["access_token"].as_str()
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // Without a fallback the same replica setup answers 503.
    let lonely = Replica::start(&db.url, &dead, &[]).await;
    let (status, body) = get(
        &http,
        format!(
            "{}/{APP}/wechat/token/refresh?access_token={}",
            lonely.url,
            body["access_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        (status, &body["errcode"]),
        (503, &Value::from(90503)),
        "{body}"
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);
}

/// The cache-coherence bound of docs/ARCHITECTURE.md, through the change feed: once one replica
/// stores a new token, no other serves the old one for longer than `cache_check_ms` plus a
/// read; a replica cut off from the database serves what it holds (valid at WeChat for five
/// minutes) and catches up once it is back; a restarted replica serves the newest.
async fn a_replaced_token_is_served_by_no_replica_after_the_bound(db: &TestDb) {
    const CHECK_MS: u64 = 400;
    let mock = mock_with(&[APP]).await;
    let (proxy, proxied) = through_proxy(db).await;
    let check = CHECK_MS.to_string();
    let env = [("WETOKEN_REFRESH__CACHE_CHECK_MS", check.as_str())];
    // Replica 0 reaches the database through the proxy; the others directly.
    let mut replicas = vec![Replica::start(&proxied, &mock.url(), &env).await];
    for _ in 0..2 {
        replicas.push(Replica::start(&db.url, &mock.url(), &env).await);
    }
    let http = reqwest::Client::new();
    add_app(&http, &replicas[1], APP).await;
    let token = |r: &Replica| {
        let (http, url) = (http.clone(), format!("{}/{APP}/wechat/token/get", r.url));
        async move {
            let (status, body) = get(&http, url).await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let replace = |r: &Replica, old: &str| {
        mock.invalidate_token(old);
        let (http, url) = (
            http.clone(),
            format!("{}/{APP}/wechat/token/refresh?access_token={old}", r.url),
        );
        async move {
            let (status, body) = get(&http, url).await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    // Every replica serves (and caches) the first token.
    let first = token(&replicas[1]).await;
    for r in &replicas {
        assert_eq!(token(r).await, first);
    }

    // Replaced through replica 1: each other replica switches within the bound, and never
    // serves anything but the old token or the new one on the way.
    let second = replace(&replicas[1], &first).await;
    let replaced = Instant::now();
    let bound = Duration::from_millis(CHECK_MS + 600);
    for r in &replicas {
        loop {
            let served = token(r).await;
            if served == second {
                break;
            }
            assert_eq!(served, first, "a third value");
            assert!(
                replaced.elapsed() <= bound,
                "{} still served the replaced token {:?} after it was replaced",
                r.url,
                replaced.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Replica 0 loses the database; the token is replaced through replica 2. Replica 0 serves
    // what it holds meanwhile (WeChat keeps it valid for five minutes), and switches once the
    // database is back.
    proxy.take_down();
    tokio::time::sleep(Duration::from_millis(2 * CHECK_MS)).await;
    let third = replace(&replicas[2], &second).await;
    for _ in 0..3 {
        assert_eq!(
            token(&replicas[0]).await,
            second,
            "what it holds, while cut off"
        );
        tokio::time::sleep(Duration::from_millis(CHECK_MS)).await;
    }
    proxy.bring_back();
    eventually("replica 0 catches up", Duration::from_secs(10), || async {
        token(&replicas[0]).await == third
    })
    .await;
    assert_eq!(token(&replicas[1]).await, third);

    // A replica killed and started again serves the newest token, replaced while it was down.
    replicas[2].kill();
    let fourth = replace(&replicas[1], &third).await;
    let restarted = Replica::start(&db.url, &mock.url(), &env).await;
    assert_eq!(token(&restarted).await, fourth);
    let replaced = Instant::now();
    for r in [&replicas[0], &restarted] {
        eventually("the newest token everywhere", bound, || async {
            token(r).await == fourth
        })
        .await;
    }
    assert!(replaced.elapsed() <= bound + Duration::from_millis(200));
    assert_eq!(mock.calls(Endpoint::Token), 4, "one fetch per replacement");
}

/// Three replicas started at the same moment on an empty database. Migrations took no lock:
/// two of three exited with `Duplicate entry 'm20261124_000001_create_tables'` (#16). Each
/// answers `/live` from the moment its port is bound, and the rest only once it is ready.
async fn three_replicas_started_together_on_an_empty_database_all_come_up(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let logs = std::env::temp_dir().join(format!(
        "wetoken-together-{}-{}",
        std::process::id(),
        db.name()
    ));
    std::fs::create_dir_all(&logs).unwrap();
    let mut children = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let log = logs.join(format!("replica-{i}.log"));
        let mut command = crate::harness::server_command();
        command
            .args(["start", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &db.url, "--wechat-base-url", &mock.url()])
            .env("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "3600000")
            .env("WETOKEN_HTTP__CREDENTIAL_ERRORS", "as_status")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        children.push((command.spawn().unwrap(), port, log));
    }
    let http = reqwest::Client::new();
    for (child, port, log) in &mut children {
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "replica on {port} exited ({status}):\n{}",
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
            }
            let ready = http.get(format!("{url}/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, body) = get(
        &http,
        format!(
            "http://127.0.0.1:{}/wechat/app/create?appid={APP}&secret={SECRET}",
            children[0].1
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut served = Vec::new();
    for (_, port, _) in &children {
        let (status, body) = get(
            &http,
            format!("http://127.0.0.1:{port}/{APP}/wechat/token/get"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        served.push(body["access_token"].clone());
    }
    assert!(served.iter().all(|t| *t == served[0]), "{served:?}");
    assert_eq!(mock.calls(Endpoint::Token), 1);
    let mut waited = 0;
    for (mut child, _, log) in children {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("waiting for it to finish") {
            waited += 1;
        }
    }
    // Which replicas met the lock held depends on timing; the log says when one waited.
    eprintln!("{waited} of 3 replicas waited for another's migrations");
    let _ = std::fs::remove_dir_all(&logs);
}

/// `/ready` stays 200 while the database is away for as long as the replica trusts what it
/// caches (`cache_trust_secs`), and turns 503 after; `/health` says the database is down all
/// along. Before, `/ready` pinged the database, so an outage took every replica out of service
/// although each could serve from memory.
async fn ready_holds_while_the_cache_is_trusted_in_a_database_outage(db: &TestDb) {
    const TRUST_SECS: u64 = 3;
    const CHECK_MS: u64 = 400;
    let mock = mock_with(&[APP]).await;
    let (proxy, proxied) = through_proxy(db).await;
    let (trust, check) = (TRUST_SECS.to_string(), CHECK_MS.to_string());
    let replica = Replica::start(
        &proxied,
        &mock.url(),
        &[
            ("WETOKEN_REFRESH__CACHE_TRUST_SECS", trust.as_str()),
            ("WETOKEN_REFRESH__CACHE_CHECK_MS", check.as_str()),
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    add_app(&http, &replica, APP).await;
    let (status, _) = get(&http, format!("{}/{APP}/wechat/token/get", replica.url)).await;
    assert_eq!(status, 200);
    let (status, health) = get(&http, format!("{}/health", replica.url)).await;
    assert_eq!(
        (status, &health["database"]),
        (200, &Value::from("up")),
        "{health}"
    );

    proxy.take_down();
    let down = Instant::now();
    let (status, health) = get(&http, format!("{}/health", replica.url)).await;
    assert_eq!(
        (status, &health["database"], &health["cache"]),
        (503, &Value::from("down"), &Value::from("trusted")),
        "{health}"
    );
    let mut last_ready = down;
    let turned = loop {
        let (status, body) = get(&http, format!("{}/ready", replica.url)).await;
        if status == 503 {
            assert_eq!(body["errcode"], 90504, "{body}");
            break down.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        last_ready = Instant::now();
        assert!(
            down.elapsed() < Duration::from_secs(TRUST_SECS + 5),
            "/ready never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The last poll before the outage began at most half a check interval before it.
    let trusted = Duration::from_secs(TRUST_SECS) - Duration::from_millis(CHECK_MS / 2 + 100);
    assert!(
        last_ready.duration_since(down) >= trusted,
        "/ready turned 503 after {turned:?}, before cache_trust_secs"
    );
    assert!(turned <= Duration::from_secs(TRUST_SECS + 2), "{turned:?}");
    eprintln!("/ready turned 503 {turned:?} into the outage (cache_trust_secs = {TRUST_SECS})");
    let (status, health) = get(&http, format!("{}/health", replica.url)).await;
    assert_eq!(
        (status, &health["database"], &health["cache"]),
        (503, &Value::from("down"), &Value::from("untrusted")),
        "{health}"
    );

    proxy.bring_back();
    eventually("/ready again", Duration::from_secs(20), || async {
        get(&http, format!("{}/ready", replica.url)).await.0 == 200
    })
    .await;
}

/// The port is bound before the database is migrated, and answers meanwhile: `/live` 200, every
/// other route 503 with errcode 90505. The test holds the install lock itself, so the replica
/// waits in its migration for as long as the test says. Before, the port was bound only once
/// migrated: nothing answered, and a liveness probe killed a long migration.
async fn a_replica_waiting_to_migrate_answers_live_and_nothing_else(db: &TestDb) {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
    let mock = mock_with(&[APP]).await;
    let mut options = ConnectOptions::new(db.url.clone());
    options.max_connections(1).min_connections(1);
    let holder = Database::connect(options).await.unwrap();
    let backend = holder.get_database_backend();
    let (take, release) = match backend {
        DbBackend::MySql => (
            "SELECT GET_LOCK(CONCAT('wetoken_migrate_', MD5(DATABASE())), 0)",
            "SELECT RELEASE_LOCK(CONCAT('wetoken_migrate_', MD5(DATABASE())))",
        ),
        _ => (
            "SELECT pg_advisory_lock(33607072988489070)",
            "SELECT pg_advisory_unlock(33607072988489070)",
        ),
    };
    holder
        .execute_raw(Statement::from_string(backend, take))
        .await
        .unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!(
        "wetoken-waiting-{}-{}.log",
        std::process::id(),
        db.name()
    ));
    let mut command = crate::harness::server_command();
    command
        .args(["start", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &db.url, "--wechat-base-url", &mock.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the replica exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let live = http.get(format!("{url}/live")).send().await;
        if live.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/live never answered:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in [
        "/ready".to_owned(),
        "/health".to_owned(),
        format!("/{APP}/wechat/token/get"),
        "/wechat/app/list".to_owned(),
    ] {
        let (status, body) = get(&http, format!("{url}{path}")).await;
        assert_eq!(
            (status, &body["errcode"]),
            (503, &Value::from(90505)),
            "{path}: {body}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the replica exited");

    holder
        .execute_raw(Statement::from_string(backend, release))
        .await
        .unwrap();
    eventually("the replica is ready", Duration::from_secs(30), || async {
        get(&http, format!("{url}/ready")).await.0 == 200
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
}
