//! What an operator sees: metrics, request ids, liveness and readiness, the status page.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use wetoken_mock::{Endpoint, Fault};

use crate::harness::{SECRET, TestDb, TestServer, mock_with, on_every_database, sample, settings};

on_every_database!(metrics_request_ids_and_probes);

/// An appid no other test (or run on another database) uses: the metrics registry is shared by
/// the whole test process.
fn unique_appid(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

async fn metrics_request_ids_and_probes(db: &TestDb) {
    let appid = unique_appid("wxops");
    let mock = mock_with(&[&appid]).await;
    let mut settings = settings(db, &mock);
    // Every app's own series, as a deployment of a few apps may want them.
    settings.metrics.per_app = wetoken_server::PerApp::All;
    let server = TestServer::start(settings).await;
    let (status, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": appid, "secret": SECRET, "daily_budget": 500}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.token(&appid).await;
    server.ticket(&appid).await;
    let token = server.token(&appid).await;
    mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1);
    mock.invalidate_token(&token);
    let (status, _) = server
        .get(&format!(
            "/{appid}/wechat/token/refresh?access_token={token}"
        ))
        .await;
    assert_eq!(status, 502);

    let text = server.text("/metrics").await;
    // By endpoint and result, no appid (the recorder is the test process's: other tests call
    // WeChat too).
    let calls = |endpoint: &str, result: &str| {
        sample(
            &text,
            &format!("wetoken_upstream_calls_total{{endpoint=\"{endpoint}\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(calls("token", "ok") >= 1.0, "{text}");
    assert!(calls("ticket", "ok") >= 1.0);
    assert!(
        calls("token", "-1") >= 1.0,
        "WeChat's errcode is the result label"
    );
    assert!(!text.contains("wetoken_upstream_calls_total{appid="));
    let left = sample(
        &text,
        &format!("wetoken_credential_seconds_left{{appid=\"{appid}\",kind=\"access_token\"}}"),
    )
    .expect("a seconds-left gauge");
    assert!((7000.0..=7200.0).contains(&left), "{left}");
    assert_eq!(
        sample(
            &text,
            &format!("wetoken_upstream_calls_today{{appid=\"{appid}\"}}")
        ),
        Some(2.0),
        "two token fetches; the ticket and the check have quotas of their own"
    );
    assert_eq!(
        sample(
            &text,
            &format!("wetoken_upstream_daily_budget{{appid=\"{appid}\"}}")
        ),
        Some(500.0)
    );
    for series in [
        "wetoken_http_requests_total{route=\"token_get\",status=\"200\"}",
        "wetoken_http_requests_total{route=\"token_refresh\",status=\"502\"}",
        "wetoken_lease_acquired_total{kind=\"access_token\"}",
        "wetoken_scheduler_sweeps_total",
    ] {
        assert!(
            sample(&text, series).is_some_and(|n| n >= 1.0),
            "{series} in\n{text}"
        );
    }
    assert!(text.contains("wetoken_refresh_seconds_bucket{kind=\"access_token\""));
    assert!(text.contains("# HELP wetoken_upstream_calls_total"));
    assert!(!text.contains(SECRET));

    // Request ids: made up when absent, echoed when sent.
    let response = server
        .http
        .get(format!("{}/live", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!made.is_empty());
    let response = server
        .http
        .get(format!("{}/ready", server.url))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let (_, show) = server.get(&format!("/wechat/app/show?appid={appid}")).await;
    assert_eq!(
        (
            show["app"]["calls_today"].as_i64(),
            show["app"]["daily_budget"].as_i64()
        ),
        // Token fetches only: the first and the failed passive refresh. The ticket and the
        // check before the refresh have quotas of their own at WeChat.
        (Some(2), Some(500))
    );
    server.stop().await;
}

/// Debian's Chromium, where it is installed (CI installs it).
fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// The page reads nothing that differs between databases, so it runs once, on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            !wetoken_testkit::in_ci(),
            "CI must test the status page in Chromium, but it is not installed"
        );
        wetoken_testkit::skip("the status page in a real browser (Chromium is not installed)");
        return;
    };
    let database = TestDb::sqlite().await;
    let db = &database;
    let appid = unique_appid("wxpage");
    let halted = unique_appid("wxhalt");
    let mock = mock_with(&[&appid]).await;
    mock.add_app(&halted, "the-real-one");
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(&appid).await;
    server.add_app(&halted).await;
    server.token(&appid).await;
    let (status, _) = server.get(&format!("/{halted}/wechat/token/get")).await;
    assert_eq!(status, 502);
    // Ten minutes before expiry the token shows red.
    server.clock.advance(Duration::from_secs(7200 - 590));

    let profile = std::env::temp_dir().join(format!("wetoken-chromium-{}", rand_u32()));
    let url = format!("{}/", server.url);
    let profile_dir = profile.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile_dir);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<h1>wetoken</h1>"),
        "{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The row of the healthy app: its token in red with minutes left, the outcome, calls today.
    let healthy = dom
        .split("<tr>")
        .find(|r| r.contains(&appid))
        .expect("a row for the app");
    assert!(
        healthy.contains("class=\"red\"><span class=\"left\">0h 09m"),
        "{healthy}"
    );
    assert!(healthy.contains("success"), "{healthy}");
    assert!(healthy.contains("1 / 2000"), "{healthy}");
    // The halted one says so, with WeChat's reason.
    let stopped = dom
        .split("<tr>")
        .find(|r| r.contains(&halted))
        .expect("a row for the halted app");
    assert!(
        stopped.contains("<strong>halted</strong>") && stopped.contains("40125"),
        "{stopped}"
    );
    assert!(!dom.contains(SECRET));
    server.stop().await;
    database.drop_db().await;
}
