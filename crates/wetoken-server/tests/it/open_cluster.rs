//! Issue #19's "Done when" for a cluster: three `wetoken-server` processes on one database
//! serving a third-party platform's component token and its authorizers' tokens, against the
//! mock WeChat in this process, asserting on the mock's call counters.
//!
//! What WeChat pushes (verify tickets, a withdrawal) the mock sends, encrypted and signed, to one
//! replica's `POST /component/{id}/event` ([`Pushes`]); the others learn of it through the
//! database.
//!
//! Authorizers are added through the admin route (`/wechat/app/create` with `component_appid`
//! and `refresh_token`), with the refresh token the mock issued when it played the customer
//! authorizing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use serde_json::Value;
use wetoken_mock::{Endpoint, Fault, MockComponent, MockConfig, MockWeChat};

use crate::harness::{Replica, TestDb, eventually, free_port, server_command};

const COMPONENT: &str = "wxcomponent01";
const COMPONENT_SECRET: &str = "componentsecret";
const PUSH_TOKEN: &str = "pushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// Where the mock's pushes go until [`Pushes::to`] names a replica: nothing listens there.
const NOWHERE: &str = "http://127.0.0.1:9/x";

// 3,000 fetches, each several writes, from three processes: on one SQLite file they queue for
// its write lock at about 10 a second, over 300 s. A cluster shares MariaDB or PostgreSQL (as in
// `cluster.rs`); the other scenarios run on a shared SQLite file too.
wetoken_testkit::on_databases!(
    [Mysql, Postgres]: a_thousand_authorizers_are_renewed_once_per_lifetime_by_three_schedulers
);

wetoken_testkit::on_every_database!(
    the_component_token_waits_for_a_ticket_then_is_fetched_once_for_the_cluster,
    kill_9_after_wechat_answered_loses_no_refresh_token,
    kill_9_after_wechat_rotated_the_refresh_token_halts_with_61023,
    refresh_token_invalid_halts_on_every_replica_with_a_clear_message,
    a_withdrawn_authorizer_is_served_by_no_replica_after_the_bound,
);

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// A mock that knows the component (pushes only on demand, to [`NOWHERE`]).
async fn open_mock(config: MockConfig) -> MockWeChat {
    let config = MockConfig {
        verify_ticket_interval: None,
        ..config
    };
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    pushing_to(&mock, NOWHERE);
    mock
}

async fn three_replicas(db: &TestDb, mock: &MockWeChat, env: &[(&str, &str)]) -> Vec<Replica> {
    // The first creates the tables; the others find them.
    let mut replicas = vec![Replica::start(&db.url, &mock.url(), env).await];
    for _ in 0..2 {
        replicas.push(Replica::start(&db.url, &mock.url(), env).await);
    }
    replicas
}

/// What WeChat pushes, sent by the mock to one replica's `POST /component/{id}/event`, which
/// must answer `success`: the verify ticket stored (newest wins, and tokens waiting for one are
/// lifted), a withdrawal marked. The other replicas learn of it through the database.
///
/// Only these pushes go to the replica: customers' authorizations are pushed to [`NOWHERE`],
/// and the authorizers are added through the admin route ([`add_authorizer`]), so that every
/// authorizer token the tests count comes from `api_authorizer_token`.
struct Pushes {
    url: String,
}

/// The component as the mock knows it, pushing to `push_url`.
fn pushing_to(mock: &MockWeChat, push_url: &str) {
    mock.add_component(MockComponent {
        appid: COMPONENT.into(),
        secret: COMPONENT_SECRET.into(),
        token: PUSH_TOKEN.into(),
        aes_key: AES_KEY.into(),
        push_url: Some(push_url.into()),
    })
    .unwrap();
}

impl Pushes {
    /// Pushes to `replica`.
    fn to(replica: &Replica) -> Pushes {
        Pushes {
            url: format!("{}/component/{COMPONENT}/event", replica.url),
        }
    }

    /// The mock pushes the component a new verify ticket; the replica accepts it.
    async fn verify_ticket(&self, mock: &MockWeChat) -> String {
        pushing_to(mock, &self.url);
        let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
        pushing_to(mock, NOWHERE);
        assert_eq!(pushed.answer.as_deref(), Some("success"), "{pushed:?}");
        pushed.ticket.unwrap()
    }

    /// The customer withdraws `authorizer`'s authorization at the mock, and the replica accepts
    /// the `unauthorized` push.
    async fn unauthorized(&self, mock: &MockWeChat, authorizer: &str) {
        pushing_to(mock, &self.url);
        let pushed = mock.unauthorize(COMPONENT, authorizer).await.unwrap();
        pushing_to(mock, NOWHERE);
        assert_eq!(pushed.answer.as_deref(), Some("success"), "{pushed:?}");
    }
}

/// Registers the component through `replica`'s admin route.
async fn add_component(http: &reqwest::Client, replica: &Replica) {
    let (status, body) = get(
        http,
        format!(
            "{}/wechat/app/create?kind=component&appid={COMPONENT}&secret={COMPONENT_SECRET}\
             &token={PUSH_TOKEN}&aes_key={AES_KEY}",
            replica.url
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A customer authorizes the component as `appid` at the mock, and the authorizer is added
/// through `replica`'s admin route with the refresh token the mock issued; that refresh token.
async fn add_authorizer(
    http: &reqwest::Client,
    replica: &Replica,
    mock: &MockWeChat,
    appid: &str,
) -> String {
    mock.authorize(COMPONENT, Some(appid), None).await.unwrap();
    let refresh_token = mock.authorizer_refresh_token(appid).unwrap();
    let (status, body) = get(
        http,
        format!(
            "{}/wechat/app/create?kind=mp&appid={appid}&component_appid={COMPONENT}\
             &refresh_token={refresh_token}",
            replica.url
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    refresh_token
}

fn token_url(replica: &Replica, appid: &str) -> String {
    format!("{}/{appid}/wechat/token/get", replica.url)
}

/// The authorizers' renewals per token lifetime, cluster-wide (the slowest test here: 3,000
/// fetches, each a lease, a WeChat call and a fenced write, at the rate the machine allows). Tokens live 7015 s and are
/// renewed when under 7000 s are left: due 15 s after each fetch, a "lifetime" of 15 s. Three
/// replicas run the scheduler, every 200 ms, on 1,000 authorizers of one component: each
/// authorizer is fetched once when added, and once per lifetime after, by exactly one replica.
/// Three schedulers without the lease (or with a lease that does not hold) fetch some twice.
async fn a_thousand_authorizers_are_renewed_once_per_lifetime_by_three_schedulers(db: &TestDb) {
    const N: usize = 1000;
    const LIFETIME: u64 = 15;
    let started = Instant::now();
    let mock = open_mock(MockConfig {
        token_expires_in: 7000 + LIFETIME,
        ..MockConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let appids: Vec<String> = (0..N).map(|i| format!("wxauth{i:06}")).collect();

    // Added before the schedulers start, so that their first fetches come together.
    let setup = Replica::start(&db.url, &mock.url(), &[]).await;
    add_component(&http, &setup).await;
    let pushes = Pushes::to(&setup);
    pushes.verify_ticket(&mock).await;
    futures::stream::iter(&appids)
        .for_each_concurrent(16, |appid| {
            let (http, setup, mock) = (&http, &setup, &mock);
            async move {
                add_authorizer(http, setup, mock, appid).await;
            }
        })
        .await;
    drop(setup);
    let added = started.elapsed();

    let schedule = [
        ("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "200"),
        ("WETOKEN_REFRESH__REFRESH_AHEAD_SECS", "7000"),
        ("WETOKEN_REFRESH__JITTER_SECS", "0"),
        ("WETOKEN_REFRESH__MARGIN_SECS", "60"),
        ("WETOKEN_REFRESH__REFRESH_TICKETS", "false"),
        ("WETOKEN_REFRESH__VERIFY_INTERVAL_SECS", "0"),
        ("WETOKEN_REFRESH__MAX_REFRESH_RATE", "1000"),
        ("WETOKEN_REFRESH__CONCURRENCY", "32"),
        ("WETOKEN_REFRESH__MAX_UPSTREAM_CONCURRENCY", "64"),
        // Three replicas of 32 connections were 96 of PostgreSQL's 100, with other tests'
        // alongside: a refused connection is a fetched token not stored, fetched again.
        ("WETOKEN_DATABASE_MAX_CONNECTIONS", "10"),
        // A refresh on a loaded machine can outlast the 2 s lease of the other tests, and a
        // lapsed lease is rightly taken over (a second fetch): the default lease here.
        ("WETOKEN_REFRESH__LEASE_MS", "30000"),
        ("WETOKEN_REFRESH__LEASE_POLL_MS", "200"),
    ];
    // Started together, and not waited for beyond their first answer: their first scans
    // are the first fetches of all 1,000, which take a while.
    let replicas = join_all((0..3).map(|_| {
        let port = free_port();
        let mut command = server_command();
        command
            .args(["start", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &db.url, "--wechat-base-url", &mock.url()])
            .env("WETOKEN_HTTP__CREDENTIAL_ERRORS", "as_status")
            .env("WETOKEN_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "10000")
            .envs(schedule);
        Replica::spawn(command, port)
    }))
    .await;

    // Each authorizer's fetches, as the mock counts them, looked at every 250 ms: when each
    // was first seen. A renewal is due a lifetime after the fetch before it (its `expires_in`
    // less `refresh_ahead_secs`); two within a lifetime are a second fetch for one need.
    let mut seen: Vec<Vec<Instant>> = vec![Vec::new(); N];
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut progress = Instant::now();
    loop {
        let now = Instant::now();
        for (appid, times) in appids.iter().zip(&mut seen) {
            let n = mock.quota_used(appid, Endpoint::AuthorizerToken) as usize;
            assert!(
                n <= times.len() + 1,
                "{appid}: {} fetches within 250 ms",
                n - times.len()
            );
            if n > times.len() {
                times.push(now);
            }
        }
        if seen.iter().all(|t| t.len() >= 3) {
            break;
        }
        assert!(
            now < deadline,
            "two renewals of every authorizer take over 300 s: {} fetches so far",
            mock.calls(Endpoint::AuthorizerToken)
        );
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!(
                "{:?}: {} authorizer fetches",
                started.elapsed(),
                mock.calls(Endpoint::AuthorizerToken)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renewed = started.elapsed();
    // Observed a poll late at worst: a quarter of a second, plus the poll itself.
    let tolerance = Duration::from_millis(1500);
    for (appid, times) in appids.iter().zip(&seen) {
        for pair in times.windows(2) {
            let apart = pair[1] - pair[0];
            assert!(
                apart + tolerance >= Duration::from_secs(LIFETIME),
                "{appid} fetched twice within {apart:?}; a lifetime is {LIFETIME} s ({times:?})"
            );
        }
    }
    // Every fetch is one authorizer's, once a lifetime: three each (the first and two renewals),
    // and those on their way to a fourth.
    // The schedulers go on renewing while this is read, so the total is read between two
    // readings of the authorizers' own counts (it once came out a fetch ahead of counts read
    // before it).
    let counts = || -> Vec<u64> {
        appids
            .iter()
            .map(|appid| mock.quota_used(appid, Endpoint::AuthorizerToken))
            .collect()
    };
    let before = counts();
    let calls = mock.calls(Endpoint::AuthorizerToken);
    let after = counts();
    let (low, high) = (before.iter().sum::<u64>(), after.iter().sum::<u64>());
    assert!(
        low <= calls && calls <= high,
        "{calls} authorizer fetches, against {low} then {high} counted by authorizer"
    );
    assert!(
        after.iter().all(|n| (3..=4).contains(n)),
        "an authorizer fetched other than three or four times: {:?}",
        after
            .iter()
            .filter(|n| !(3..=4).contains(*n))
            .collect::<Vec<_>>()
    );
    // The component token too: fetched for the first authorizer, renewed once a lifetime.
    let lifetimes = renewed.as_secs() / LIFETIME + 1;
    let component = mock.calls(Endpoint::ComponentToken);
    assert!(
        (3..=lifetimes + 1).contains(&component),
        "{component} component tokens in {renewed:?}, a lifetime being {LIFETIME} s"
    );

    // Every replica serves each authorizer's current token. Renewals go on meanwhile, and a
    // replica's cache catches up within its check interval (one second), so an answer may be
    // the token just replaced: asked again, it must come round to the current one.
    let checked = Instant::now();
    for replica in &replicas {
        let stale: Vec<String> = futures::stream::iter(&appids)
            .map(|appid| {
                let (http, mock) = (&http, &mock);
                async move {
                    let mut last = String::new();
                    for _ in 0..10 {
                        let (status, body) = get(http, token_url(replica, appid)).await;
                        assert_eq!(status, 200, "{appid}: {body}");
                        let current = mock.current_authorizer_token(appid);
                        if body["access_token"].as_str() == current.as_deref() {
                            return None;
                        }
                        last = format!(
                            "{appid} served {} but WeChat's newest is {current:?} ({} fetches)",
                            body["access_token"],
                            mock.quota_used(appid, Endpoint::AuthorizerToken)
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Some(last)
                }
            })
            .buffer_unordered(32)
            .filter_map(|stale| async move { stale })
            .collect()
            .await;
        assert!(
            stale.is_empty(),
            "{} serves stale tokens: {stale:?}",
            replica.url
        );
    }
    eprintln!(
        "{N} authorizers on {}: added in {added:?}, renewed twice by {renewed:?}, every token \
         checked on three replicas in {:?}; {:?} in all",
        db.backend.name(),
        checked.elapsed(),
        started.elapsed()
    );
}

/// Before any verify ticket, neither an authorizer's token nor the component's is fetched on
/// any replica, however hard they are asked: each answers 90461 (the component's, since an
/// authorizer's token needs the component's). Once a ticket arrives, one component token and
/// one authorizer token for the whole cluster, served by every replica.
async fn the_component_token_waits_for_a_ticket_then_is_fetched_once_for_the_cluster(db: &TestDb) {
    const AUTHORIZER: &str = "wxauthorizer01";
    let mock = open_mock(MockConfig::default()).await;
    let replicas = three_replicas(db, &mock, &[]).await;
    let http = reqwest::Client::new();
    add_component(&http, &replicas[0]).await;
    add_authorizer(&http, &replicas[1], &mock, AUTHORIZER).await;

    let routes: Vec<String> = (0..120)
        .map(|i| token_url(&replicas[i % 3], [AUTHORIZER, COMPONENT][i / 3 % 2]))
        .collect();
    let answers = join_all(routes.iter().map(|url| get(&http, url.clone()))).await;
    for (url, (status, body)) in routes.iter().zip(&answers) {
        assert_eq!(
            (*status, &body["errcode"]),
            (503, &Value::from(90461)),
            "{url}: {body}"
        );
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap()
                .contains("component_verify_ticket"),
            "{url}: {body}"
        );
    }
    assert_eq!(
        mock.calls(Endpoint::ComponentToken),
        0,
        "never without a ticket"
    );
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 0);

    Pushes::to(&replicas[0]).verify_ticket(&mock).await;
    let answers =
        join_all((0..300).map(|i| get(&http, token_url(&replicas[i % 3], AUTHORIZER)))).await;
    let token = mock.current_authorizer_token(AUTHORIZER).unwrap();
    for (status, body) in &answers {
        assert_eq!(
            (*status, body["access_token"].as_str()),
            (200, Some(token.as_str())),
            "{body}"
        );
    }
    assert_eq!(
        mock.calls(Endpoint::ComponentToken),
        1,
        "one component token for the cluster"
    );
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 1);

    // The Rust client reads an authorizer's token like any app's.
    use wetoken_client::TokenSource;
    let source = wetoken_client::AccessToken::by_url(&token_url(&replicas[2], AUTHORIZER)).unwrap();
    assert_eq!(source.token().await.unwrap(), token);
}

/// The replica holding an authorizer's lease is killed (`kill -9`) after WeChat has issued the
/// new token, and before wetoken has written it: WeChat's answer is held back
/// ([`Fault::DelayAnswer`]) and the replica dies while waiting for it. Another replica takes over
/// once the lease lapses (2 s) and renews with the refresh token stored. With WeChat's own
/// semantics (the same refresh token comes back: `rotate` false), that works: the authorizer is
/// served, and its refresh token keeps working. In the stricter world where every answer brings
/// a new refresh token (`rotate` true), the one issued to the dead process is lost with it: it
/// never reached the database, and nothing can store what it never received. WeChat then
/// refuses the stored one (61023), and the authorizer halts, saying it must authorize again.
async fn kill_9_between_answer_and_write(
    db: &TestDb,
    rotate: bool,
) -> (Vec<(u16, Value)>, MockWeChat) {
    const AUTHORIZER: &str = "wxauthorizer01";
    let mock = open_mock(MockConfig {
        rotate_refresh_tokens: rotate,
        ..MockConfig::default()
    })
    .await;
    let mut replicas = three_replicas(db, &mock, &[]).await;
    let http = reqwest::Client::new();
    add_component(&http, &replicas[0]).await;
    Pushes::to(&replicas[0]).verify_ticket(&mock).await;
    let stored = add_authorizer(&http, &replicas[0], &mock, AUTHORIZER).await;
    // The component token first, so that replica 0 is in the authorizer's fetch alone.
    let (status, body) = get(&http, token_url(&replicas[0], COMPONENT)).await;
    assert_eq!(status, 200, "{body}");

    mock.inject(
        Endpoint::AuthorizerToken,
        Fault::DelayAnswer(Duration::from_secs(4)),
        1,
    );
    let doomed = tokio::spawn(http.get(token_url(&replicas[0], AUTHORIZER)).send());
    eventually(
        "WeChat has issued replica 0 a token",
        Duration::from_secs(10),
        || async { mock.current_authorizer_token(AUTHORIZER).is_some() },
    )
    .await;
    let issued = mock.current_authorizer_token(AUTHORIZER).unwrap();
    assert_eq!(
        mock.authorizer_refresh_token(AUTHORIZER).unwrap() != stored,
        rotate,
        "a new refresh token exactly when rotating"
    );
    replicas[0].kill();
    assert!(
        doomed.await.unwrap().is_err(),
        "the dead replica answered nobody"
    );

    // The others wait out the lease and one of them renews with the stored refresh token.
    let answers =
        join_all((0..20).map(|i| get(&http, token_url(&replicas[1 + i % 2], AUTHORIZER)))).await;
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        2,
        "exactly one fetch after the holder died"
    );
    if !rotate {
        let token = mock.current_authorizer_token(AUTHORIZER).unwrap();
        assert_ne!(token, issued);
        for (status, body) in &answers {
            assert_eq!(
                (*status, body["access_token"].as_str()),
                (200, Some(token.as_str())),
                "{body}"
            );
        }
        assert_eq!(mock.authorizer_refresh_token(AUTHORIZER), Some(stored));
        // The stored refresh token still works: WeChat rejects the token, and a caller's report
        // of it gets a new one.
        mock.invalidate_token(&token);
        let (status, body) = get(
            &http,
            format!(
                "{}/{AUTHORIZER}/wechat/token/refresh?access_token={token}",
                replicas[2].url
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["access_token"].as_str(),
            mock.current_authorizer_token(AUTHORIZER).as_deref()
        );
        assert_eq!(mock.calls(Endpoint::AuthorizerToken), 3);
    }
    (answers, mock)
}

async fn kill_9_after_wechat_answered_loses_no_refresh_token(db: &TestDb) {
    kill_9_between_answer_and_write(db, false).await;
}

async fn kill_9_after_wechat_rotated_the_refresh_token_halts_with_61023(db: &TestDb) {
    let (answers, mock) = kill_9_between_answer_and_write(db, true).await;
    for (status, body) in &answers {
        assert_eq!(
            (*status, &body["errcode"]),
            (502, &Value::from(61023)),
            "{body}"
        );
        assert!(
            body["errmsg"]
                .as_str()
                .unwrap()
                .contains("must authorize the third-party platform wxcomponent01 again"),
            "{body}"
        );
    }
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        2,
        "halted: no more calls"
    );
}

/// WeChat refuses an authorizer's refresh token (61023) at a scheduled renewal. The authorizer
/// halts: once its token is too old to serve, every replica answers 61023 with a message saying
/// the account must authorize again, and no scheduler calls WeChat for it again.
async fn refresh_token_invalid_halts_on_every_replica_with_a_clear_message(db: &TestDb) {
    const AUTHORIZER: &str = "wxauthorizer01";
    // Tokens live 63 s, are served while over 60 s are left, and renewed under 62 s: a
    // renewal one second after each fetch, a token served for three.
    let mock = open_mock(MockConfig {
        token_expires_in: 63,
        ..MockConfig::default()
    })
    .await;
    let schedule = [
        ("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "100"),
        ("WETOKEN_REFRESH__REFRESH_AHEAD_SECS", "62"),
        ("WETOKEN_REFRESH__JITTER_SECS", "0"),
        ("WETOKEN_REFRESH__MARGIN_SECS", "60"),
        ("WETOKEN_REFRESH__REFRESH_TICKETS", "false"),
        ("WETOKEN_REFRESH__VERIFY_INTERVAL_SECS", "0"),
    ];
    let replicas = three_replicas(db, &mock, &schedule).await;
    let http = reqwest::Client::new();
    add_component(&http, &replicas[0]).await;
    Pushes::to(&replicas[0]).verify_ticket(&mock).await;
    add_authorizer(&http, &replicas[0], &mock, AUTHORIZER).await;
    eventually("the first fetch", Duration::from_secs(10), || async {
        mock.calls(Endpoint::AuthorizerToken) >= 1
    })
    .await;
    mock.inject(Endpoint::AuthorizerToken, Fault::ErrCode(61023), 1);
    eventually("the refused renewal", Duration::from_secs(10), || async {
        mock.calls(Endpoint::AuthorizerToken) >= 2
    })
    .await;

    let halted = |r: &Replica| {
        let (http, url) = (http.clone(), token_url(r, AUTHORIZER));
        async move {
            let (status, body) = get(&http, url).await;
            if status == 200 {
                return false;
            }
            assert_eq!(
                (status, &body["errcode"]),
                (502, &Value::from(61023)),
                "{body}"
            );
            let message = body["errmsg"].as_str().unwrap();
            assert!(
                message.contains(&format!(
                    "{AUTHORIZER} is no longer valid: the account must authorize the \
                     third-party platform {COMPONENT} again"
                )),
                "{message}"
            );
            true
        }
    };
    for r in &replicas {
        eventually(
            "the halt, on every replica",
            Duration::from_secs(10),
            || halted(r),
        )
        .await;
    }
    let calls = mock.calls(Endpoint::AuthorizerToken);
    // Three schedulers, thirty scans each, and callers: WeChat is not asked again.
    for _ in 0..10 {
        for r in &replicas {
            assert!(halted(r).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(calls, 2);
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        calls,
        "halted: no more calls"
    );
}

/// An account withdraws its authorization: once the `unauthorized` push has reached one
/// replica's engine, no replica serves the authorizer's token for longer than the
/// cache-coherence bound (`cache_check_ms` plus a read); each answers 90460.
async fn a_withdrawn_authorizer_is_served_by_no_replica_after_the_bound(db: &TestDb) {
    const AUTHORIZER: &str = "wxauthorizer01";
    const CHECK_MS: u64 = 400;
    let mock = open_mock(MockConfig::default()).await;
    let check = CHECK_MS.to_string();
    let replicas = three_replicas(db, &mock, &[("WETOKEN_REFRESH__CACHE_CHECK_MS", &check)]).await;
    let http = reqwest::Client::new();
    add_component(&http, &replicas[0]).await;
    // Pushed to another replica than the one that is asked first.
    let pushes = Pushes::to(&replicas[1]);
    pushes.verify_ticket(&mock).await;
    add_authorizer(&http, &replicas[0], &mock, AUTHORIZER).await;
    // Every replica serves (and caches) the token.
    for r in &replicas {
        let (status, body) = get(&http, token_url(r, AUTHORIZER)).await;
        assert_eq!(status, 200, "{body}");
        let current = mock.current_authorizer_token(AUTHORIZER);
        assert_eq!(body["access_token"].as_str(), current.as_deref());
    }

    pushes.unauthorized(&mock, AUTHORIZER).await;
    let withdrawn = Instant::now();
    let bound = Duration::from_millis(CHECK_MS + 600);
    for r in &replicas {
        loop {
            let (status, body) = get(&http, token_url(r, AUTHORIZER)).await;
            if status != 200 {
                assert_eq!(
                    (status, &body["errcode"]),
                    (410, &Value::from(90460)),
                    "{body}"
                );
                break;
            }
            assert!(
                withdrawn.elapsed() <= bound,
                "{} still served a withdrawn authorizer {:?} after the push",
                r.url,
                withdrawn.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 1);
}
