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

/// Runs headless Chromium with `args` after the usual ones, in a profile of its own; returns
/// what it printed.
async fn chromium_run(browser: &'static str, args: Vec<String>) -> String {
    let profile = std::env::temp_dir().join(format!("wetoken-chromium-{}", rand_u32()));
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
                "--hide-scrollbars",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile_dir);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The DOM Chromium renders from `url`.
async fn rendered(browser: &'static str, url: &str) -> String {
    let dom = chromium_run(browser, vec!["--dump-dom".into(), url.into()]).await;
    assert!(dom.contains("<h1"), "{url}: {dom}");
    dom
}

/// A screenshot of `url` at `size` into `$WETOKEN_SCREENSHOTS/name`, when that variable names a
/// directory: how docs/status-page.png and docs/status-detail.png are made
/// (docs/operations.md). Without it, nothing is written, so a test run leaves the tree clean.
async fn screenshot(browser: &'static str, url: &str, name: &str, size: &str) {
    let Some(dir) = std::env::var_os("WETOKEN_SCREENSHOTS") else {
        return;
    };
    let path = std::path::Path::new(&dir).join(name);
    chromium_run(
        browser,
        vec![
            format!("--screenshot={}", path.display()),
            format!("--window-size={size}"),
            url.into(),
        ],
    )
    .await;
    assert!(path.exists(), "{} was not written", path.display());
}

/// The `<tr>` of `appid` in a rendered listing, and where it starts.
fn row_of<'a>(dom: &'a str, appid: &str) -> (usize, &'a str) {
    let at = dom
        .find(&format!("<td class=\"appid\"><a href=\"status/{appid}\""))
        .unwrap_or_else(|| panic!("no row for {appid} in {dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    (start, &dom[start..end])
}

/// The page reads nothing that differs between databases, so it runs once, on SQLite.
///
/// A halted app, a failing one, a healthy one and a pending mini program, named so that appid
/// order would put the halted one last: the listing shows it first and in red, then the failing
/// one, with the summary's counts and "n/a" for the tickets a mini program never has. The app's
/// page asks before forcing a refresh; the forced refresh goes through the admin path (a
/// same-origin POST passes, a cross-site one is refused) and its quota guard (the budget's
/// reserve refuses the second, 90430); the page shows the outcomes in the app's history.
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
    let healthy = unique_appid("wxaok");
    let failing = unique_appid("wxbfail");
    let pending = unique_appid("wxcmini");
    let halted = unique_appid("wxzhalt");
    let mock = mock_with(&[&healthy, &failing, &pending]).await;
    mock.add_app(&halted, "the-real-one");
    let server = TestServer::start(settings(db, &mock)).await;
    // A budget of 4: forced refreshes stop at 2 calls (the reserve keeps the rest).
    let (status, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": healthy, "secret": SECRET, "daily_budget": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.add_app(&failing).await;
    server.add_app(&halted).await;
    let (status, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": pending, "secret": SECRET, "kind": "mini"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.token(&healthy).await;
    let (status, _) = server.get(&format!("/{halted}/wechat/token/get")).await;
    assert_eq!(status, 502);
    mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1);
    let (status, _) = server.get(&format!("/{failing}/wechat/token/get")).await;
    assert_eq!(status, 502);
    // Ten minutes before expiry the token shows red.
    server.clock.advance(Duration::from_secs(7200 - 590));

    let url = format!("{}/", server.url);
    let dom = rendered(browser, &url).await;
    assert!(dom.contains("<h1>wetoken</h1>"), "{dom}");
    // The summary by state.
    let summary = &dom[dom.find("<p class=\"summary\">").expect("a summary")..];
    let summary = &summary[..summary.find("</p>").unwrap()];
    for counted in ["<strong>1</strong> halted", "<strong>1</strong> failing"] {
        assert!(summary.contains(counted), "{counted} in {summary}");
    }
    for state in ["healthy", "renewing", "pending", "out_of_budget"] {
        assert!(
            summary.contains(&format!(" {state}</a>")),
            "{state} in {summary}"
        );
    }
    // Worst first, whatever the appids: halted, failing, then the rest by appid.
    let (at_halted, stopped) = row_of(&dom, &halted);
    let (at_failing, failed) = row_of(&dom, &failing);
    let (at_healthy, fine) = row_of(&dom, &healthy);
    let (at_pending, mini) = row_of(&dom, &pending);
    assert!(
        at_halted < at_failing && at_failing < at_healthy && at_healthy < at_pending,
        "{dom}"
    );
    // In red: the row and the cell carry `bad`, which the page's CSS colours #c5221f.
    assert!(stopped.starts_with("<tr class=\"bad\">"), "{stopped}");
    assert!(
        stopped.contains("bad\"><span class=\"left\">none</span> <strong>halted</strong>")
            && stopped.contains("40125"),
        "{stopped}"
    );
    assert!(
        dom.contains("tr.bad td.appid a,td.bad,td.bad .msg,td.bad strong,p.bad{color:#c5221f}"),
        "the CSS makes .bad red"
    );
    assert!(failed.starts_with("<tr class=\"bad\">"), "{failed}");
    assert!(failed.contains("<strong>failing</strong>"), "{failed}");
    assert!(failed.contains("retry "), "the next retry's time: {failed}");
    // The healthy app: not red as a row, its token red with minutes left, its times.
    assert!(fine.starts_with("<tr>"), "{fine}");
    assert!(
        fine.contains("class=\"red\"><span class=\"left\">0h 09m"),
        "{fine}"
    );
    assert!(fine.contains("success"), "{fine}");
    assert!(
        fine.contains("refreshed ") && fine.contains("renews "),
        "{fine}"
    );
    assert!(fine.contains("1 / 4"), "{fine}");
    // The mini program: its token pending, "n/a" for the two tickets it can never have.
    assert_eq!(
        mini.matches("<td class=\"na\">n/a</td>").count(),
        2,
        "{mini}"
    );
    assert!(mini.contains("not fetched yet"), "{mini}");
    assert_eq!(fine.matches("n/a").count(), 0, "{fine}");
    assert!(!dom.contains(SECRET));
    screenshot(browser, &url, "status-page.png", "1400,560").await;

    // Search: a whole appid links to its page.
    let found = rendered(browser, &format!("{url}?prefix={halted}")).await;
    assert!(
        found.contains(&format!(
            "<p class=\"exact\">App <a href=\"status/{halted}\">"
        )),
        "{found}"
    );

    // The app's page asks before it forces.
    let page = format!("{}/status/{healthy}", server.url);
    let confirm = rendered(browser, &format!("{page}?force=token")).await;
    assert!(
        confirm.contains(&format!(
            "<form class=\"confirm\" method=\"post\" action=\"{healthy}\"><input type=\"hidden\" name=\"kind\" value=\"token\">"
        )),
        "{confirm}"
    );
    assert_eq!(mock.calls(Endpoint::Token), 3, "asking forces nothing");

    // The confirmed POST, as the browser sends it from the page: the admin path forces it.
    let post = |site: &'static str, origin: String| {
        server
            .http
            .post(&page)
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("kind=token")
            .send()
    };
    let response = post("same-origin", server.url.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    // No other site may frame the page and get its button clicked.
    let headers = response.headers();
    assert_eq!(headers["x-frame-options"], "DENY");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("<p class=\"ok result\">Forced: a new access_token is stored"),
        "{text}"
    );
    assert_eq!(mock.calls(Endpoint::Token), 4);
    // The second meets the budget's reserve: refused, WeChat not called. (A second later: the
    // history orders by time, to the second.)
    server.clock.advance(Duration::from_secs(1));
    let response = post("same-origin", server.url.clone()).await.unwrap();
    assert_eq!(response.status(), 429);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            "<p class=\"bad result\">The forced refresh of the access_token was refused: 90430: "
        ),
        "{text}"
    );
    // From another site, refused before anything runs.
    let response = post("cross-site", "http://evil.example".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = post("same-origin", "http://evil.example".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(mock.calls(Endpoint::Token), 4);

    // The history: the refusal, the forced fetch, the first fetch, newest first.
    let detail = rendered(browser, &page).await;
    let history = &detail[detail.find("<table class=\"history\">").expect("a history")..];
    let rows: Vec<&str> = history.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "{history}");
    assert!(
        rows[0].contains("<td>forced</td><td class=\"bad\">90430: "),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("<td>forced</td><td>success</td>"),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].contains("<td>request</td><td>success</td>"),
        "{}",
        rows[2]
    );
    assert!(!detail.contains(SECRET));
    screenshot(browser, &page, "status-detail.png", "1100,640").await;
    let stopped = rendered(browser, &format!("{}/status/{halted}", server.url)).await;
    assert!(
        stopped.contains("<td>request</td><td class=\"bad\">40125: "),
        "{stopped}"
    );

    // A mini program's page offers no ticket refresh.
    let mini = rendered(browser, &format!("{}/status/{pending}", server.url)).await;
    assert!(mini.contains("?force=token"), "{mini}");
    assert!(
        !mini.contains("?force=ticket") && !mini.contains("?force=wx_card"),
        "{mini}"
    );
    server.stop().await;
    database.drop_db().await;
}
