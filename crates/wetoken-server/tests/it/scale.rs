//! Issue #15 at 100,000 apps, as an operator meets it: listings that page and filter, the totals
//! by state at the top of the status page, and metrics that stay small, lose deleted apps and
//! exist from start-up. Timings are measured (docs/performance.md), not asserted here.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use wetoken_server::PerApp;
use wetoken_testkit::{Seed, on_databases, seed_apps};

use crate::harness::{Replica, TestDb, TestServer, mock_with, on_every_database, sample, settings};

/// Seeded app `i`'s state: every 50th halted, failing or never fetched, the rest healthy.
fn seed_of(i: usize) -> Seed {
    match i % 50 {
        0 => Seed::Halted,
        1 => Seed::Failing,
        2 => Seed::Empty,
        _ => Seed::Healthy,
    }
}

fn seeded(n: usize, prefix: &str, want: Seed) -> Vec<String> {
    (0..n)
        .filter(|i| seed_of(*i) == want)
        .map(|i| format!("{prefix}{i:06}"))
        .collect()
}

/// Every appid a listing gives, page after page of `limit` from `query`; panics on a page larger
/// than asked or a cursor that repeats.
async fn every_page(server: &TestServer, query: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    loop {
        let mut path = format!("/wechat/app/list?limit={limit}");
        if !query.is_empty() {
            path += &format!("&{query}");
        }
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let apps = body["apps"].as_array().unwrap();
        assert!(apps.len() <= limit, "{path}: {} apps", apps.len());
        out.extend(apps.iter().map(|a| a["appid"].as_str().unwrap().to_owned()));
        match body.get("next").and_then(Value::as_str) {
            Some(next) => {
                assert!(seen.insert(next.to_owned()), "cursor {next} came twice");
                assert_eq!(apps.len(), limit, "{path}: a short page before the last");
                cursor = Some(next.to_owned());
            }
            None => return out,
        }
    }
}

on_every_database!(listings_page_through_every_app_once_and_filter);

async fn listings_page_through_every_app_once_and_filter(db: &TestDb) {
    const N: usize = 250;
    let mock = mock_with(&[]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    seed_apps(&db.url, "wxs", N, Utc::now(), seed_of).await;
    // Mixed case (MariaDB compares appids case-insensitively), an underscore (a LIKE wildcard)
    // and two mini programs.
    for (appid, kind) in [
        ("ab_1", "mini"),
        ("abx1", "mini"),
        ("wxB1", "mp"),
        ("wxa1", "mp"),
    ] {
        let body = serde_json::json!({"appid": appid, "secret": "s", "kind": kind});
        let (status, body) = server.post_json("/wechat/app/create", &body).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut all: Vec<String> = (0..N).map(|i| format!("wxs{i:06}")).collect();
    all.extend(["ab_1", "abx1", "wxB1", "wxa1"].map(String::from));

    // Every app exactly once, in the same order whatever the page size.
    let one_page = every_page(&server, "", 1000).await;
    assert_eq!(one_page.len(), all.len(), "{one_page:?}");
    for limit in [7, 100] {
        let paged = every_page(&server, "", limit).await;
        assert_eq!(paged, one_page, "pages of {limit}");
    }
    let listed: HashSet<&String> = one_page.iter().collect();
    assert_eq!(listed, all.iter().collect(), "every app, once");

    // No parameters: the first 100, and where to go on.
    let (_, first) = server.get("/wechat/app/list").await;
    assert_eq!(first["apps"].as_array().unwrap().len(), 100);
    assert!(first["next"].is_string(), "{}", first["next"]);

    // Filters, each paged in twos.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let by = |query: &'static str| {
        let server = &server;
        async move { sorted(every_page(server, query, 2).await) }
    };
    assert_eq!(by("state=halted").await, seeded(N, "wxs", Seed::Halted));
    assert_eq!(by("state=failing").await, seeded(N, "wxs", Seed::Failing));
    let mut pending = seeded(N, "wxs", Seed::Empty);
    pending.extend(["ab_1", "abx1", "wxB1", "wxa1"].map(String::from));
    assert_eq!(by("state=pending").await, sorted(pending));
    assert_eq!(by("state=healthy").await.len(), N - 15);
    assert!(by("state=renewing").await.is_empty());
    assert!(by("state=out_of_budget").await.is_empty());
    assert_eq!(by("kind=mini").await, ["ab_1", "abx1"]);
    assert_eq!(by("prefix=ab_").await, ["ab_1"], "_ is no wildcard");
    assert_eq!(
        by("prefix=wxs00001").await,
        (10..20).map(|i| format!("wxs{i:06}")).collect::<Vec<_>>()
    );
    assert_eq!(by("kind=mini&state=pending").await, ["ab_1", "abx1"]);
    assert!(by("kind=mini&state=halted").await.is_empty());
    assert_eq!(
        by("state=halted&prefix=wxs0001").await,
        ["wxs000100", "wxs000150"]
    );

    // The totals by state head the status page.
    let page = server.text("/").await;
    let summary = page
        .split("<p class=\"summary\">")
        .nth(1)
        .and_then(|rest| rest.split("</p>").next())
        .expect("a summary line");
    // Each seeded app has two credentials; a mini program one, the mp apps two.
    for (n, state) in [(10, "halted"), (10, "failing"), (16, "pending")] {
        assert!(
            summary.contains(&format!("<strong>{n}</strong> {state}")),
            "{state}: {summary}"
        );
    }
    // The status page pages through every app once, worst first: the halted, then the failing,
    // then the rest in the listing's own order.
    let mut shown = Vec::new();
    let mut query = "limit=40".to_owned();
    for _ in 0..20 {
        let page = server.text(&format!("/?{query}")).await;
        shown.extend(
            page.split("<td class=\"appid\"><a href=\"status/")
                .skip(1)
                .map(|r| r.split('"').next().unwrap().to_owned()),
        );
        match page.split("<p><a href=\"?").nth(1) {
            Some(rest) => query = rest.split('"').next().unwrap().replace("&amp;", "&"),
            None => break,
        }
    }
    let halted = seeded(N, "wxs", Seed::Halted);
    let failing = seeded(N, "wxs", Seed::Failing);
    let mut worst_first = halted.clone();
    worst_first.extend(failing.iter().cloned());
    worst_first.extend(
        one_page
            .iter()
            .filter(|a| !halted.contains(a) && !failing.contains(a))
            .cloned(),
    );
    assert_eq!(shown, worst_first);

    // The form's "any" sends empty values: no filter.
    let (status, _) = server
        .get("/wechat/app/list?state=&kind=&prefix=&cursor=")
        .await;
    assert_eq!(status, 200);
    assert!(
        server
            .text("/?state=&kind=&prefix=")
            .await
            .contains("wxs000003")
    );
    let page = server.text("/?state=halted&limit=3").await;
    assert!(
        page.contains("wxs000000") && page.contains("wxs000100"),
        "{page}"
    );
    assert!(
        !page.contains("wxs000003"),
        "a healthy app on the halted page"
    );
    assert!(page.contains("next page</a>"), "{page}");

    // When their renewal comes, healthy credentials are renewing.
    server.clock.advance(Duration::from_secs(101 * 60));
    assert!(by("state=healthy").await.is_empty());
    assert_eq!(by("state=renewing").await.len(), N - 15);

    // Bad parameters are refused, saying why.
    for (query, says) in [
        ("cursor=zzz", "cursor"),
        ("cursor=c1", "cursor"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("state=broken", "unknown state"),
        ("kind=app", "unknown app kind"),
        ("prefix=a%25", "prefix"),
    ] {
        let (status, body) = server.get(&format!("/wechat/app/list?{query}")).await;
        assert_eq!(
            (status, body["errcode"].as_i64()),
            (400, Some(90400)),
            "{query}: {body}"
        );
        let errmsg = body["errmsg"].as_str().unwrap();
        assert!(errmsg.contains(says), "{query}: {errmsg}");
    }
    server.stop().await;
}

on_databases!([Sqlite, Postgres]: a_scrape_at_100000_apps_stays_under_64_kb);

/// The default scrape at 100,000 apps, 4,000 of whose credentials are in trouble: aggregates, and
/// the first `per_app_max` troubled credentials by name.
async fn a_scrape_at_100000_apps_stays_under_64_kb(db: &TestDb) {
    const N: usize = 100_000;
    let mock = mock_with(&[]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    let state = |i: usize| match i % 100 {
        0 => Seed::Halted,
        1 => Seed::Failing,
        2 => Seed::Empty,
        _ => Seed::Healthy,
    };
    seed_apps(&db.url, "wxbig", N, Utc::now(), state).await;
    let text = server.text("/metrics").await;
    assert!(
        text.len() < 64 * 1024,
        "a scrape of {} bytes at {N} apps",
        text.len()
    );
    let credentials = |kind: &str, state: &str| {
        sample(
            &text,
            &format!("wetoken_credentials{{kind=\"{kind}\",state=\"{state}\"}}"),
        )
    };
    for kind in ["access_token", "jsapi_ticket"] {
        assert_eq!(credentials(kind, "halted"), Some(1000.0), "{text}");
        assert_eq!(credentials(kind, "failing"), Some(1000.0));
        assert_eq!(credentials(kind, "pending"), Some(1000.0));
        assert_eq!(credentials(kind, "healthy"), Some(97_000.0));
        assert_eq!(credentials(kind, "renewing"), Some(0.0));
    }
    assert_eq!(credentials("wx_card_ticket", "healthy"), Some(0.0));
    let trouble = text
        .lines()
        .filter(|l| l.starts_with("wetoken_credential_trouble{"))
        .count();
    assert_eq!(trouble, 100, "per_app_max troubled credentials by name");
    assert_eq!(
        sample(&text, "wetoken_credential_trouble_unlisted"),
        Some(3900.0)
    );
    // The failing values expire in 15 minutes; the halted ones, expired, are not served.
    let least = sample(
        &text,
        "wetoken_credential_min_seconds_left{kind=\"access_token\"}",
    )
    .expect("the least time left");
    assert!((800.0..=960.0).contains(&least), "{least}");

    // The status page, worst first: its first page is halted apps; a page among the healthy
    // ones, half way through, reads as little. Timed for docs/performance.md (a debug build).
    let hex = |appid: &str| {
        appid
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let failing_middle = format!("/?cursor=c23{}", hex("wxbig050001"));
    let healthy_middle = format!("/?cursor=c24{}", hex("wxbig050003"));
    for (what, path) in [
        ("first page", "/"),
        ("failing, middle", failing_middle.as_str()),
        ("the rest, middle", healthy_middle.as_str()),
    ] {
        let mut worst = Duration::ZERO;
        let mut page = String::new();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            page = server.text(path).await;
            worst = worst.max(started.elapsed());
        }
        eprintln!(
            "status page at {N} apps on {}, {what}: {:.1} ms (slowest of 3)",
            db.backend.name(),
            worst.as_secs_f64() * 1000.0
        );
        assert_eq!(page.matches("<td class=\"appid\">").count(), 100, "{what}");
    }
    let first = server.text("/").await;
    let rows: Vec<&str> = first
        .split("<tr class=\"bad\"><td class=\"appid\"><a href=\"status/")
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 100, "the first page is all in trouble");
    assert!(rows[0].starts_with("wxbig000000\""), "{}", rows[0]);
    server.stop().await;
}

on_every_database!(a_deleted_app_leaves_no_series);

/// Per-app series, in the default mode (credentials in trouble) and with `per_app = "all"`, go
/// with their app.
async fn a_deleted_app_leaves_no_series(db: &TestDb) {
    let (broken, fine) = ("wxgoneb", "wxgonef");
    let mock = mock_with(&[fine]).await;
    mock.add_app(broken, "the-real-secret");
    for per_app in [PerApp::Trouble, PerApp::All] {
        let mut s = settings(db, &mock);
        s.metrics.per_app = per_app;
        let server = TestServer::start(s).await;
        server.add_app(broken).await;
        server.add_app(fine).await;
        server.token(fine).await;
        let (status, _) = server.get(&format!("/{broken}/wechat/token/get")).await;
        assert_eq!(status, 502, "a wrong secret halts it");
        let text = server.text("/metrics").await;
        assert!(
            text.contains(&format!(
                "wetoken_credential_trouble{{appid=\"{broken}\",kind=\"access_token\",state=\"halted\"}} 1"
            )) || per_app == PerApp::All,
            "{per_app:?}: {text}"
        );
        if per_app == PerApp::All {
            assert!(
                text.contains(&format!(
                    "wetoken_credential_seconds_left{{appid=\"{fine}\""
                )),
                "{text}"
            );
            assert!(text.contains(&format!(
                "wetoken_upstream_daily_budget{{appid=\"{fine}\"}}"
            )));
        }
        for appid in [broken, fine] {
            let (status, body) = server
                .post_json("/wechat/app/delete", &serde_json::json!({"appid": appid}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let text = server.text("/metrics").await;
        for appid in [broken, fine] {
            assert!(
                !text.contains(appid),
                "{per_app:?}: {appid} is deleted, yet:\n{text}"
            );
        }
        server.stop().await;
    }
}

/// A counter born at its first event shows no `increase()` for it: every counter is there, at 0,
/// when the server starts. The binary, so that no other test's events share its recorder.
#[tokio::test]
async fn every_counter_exists_at_0_from_start() {
    let dir = std::env::temp_dir().join(format!("wetoken-zero-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("zero.db").display());
    let replica = Replica::start(&url, "http://127.0.0.1:9", &[]).await;
    let text = reqwest::get(format!("{}/metrics", replica.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut expected = vec![
        "wetoken_stable_share_refusals_total".to_owned(),
        "wetoken_out_of_band_replacements_total".to_owned(),
        "wetoken_budget_refusals_total{limit=\"reserve\"}".to_owned(),
        "wetoken_budget_refusals_total{limit=\"budget\"}".to_owned(),
        "wetoken_refresh_reports_total{kind=\"access_token\",outcome=\"still_accepted\"}"
            .to_owned(),
        "wetoken_refresh_reports_total{kind=\"jsapi_ticket\",outcome=\"too_recent\"}".to_owned(),
        "wetoken_http_requests_total{route=\"token_get\",status=\"200\"}".to_owned(),
    ];
    for kind in ["access_token", "jsapi_ticket", "wx_card_ticket"] {
        expected.push(format!("wetoken_lease_acquired_total{{kind=\"{kind}\"}}"));
        expected.push(format!("wetoken_lease_waits_total{{kind=\"{kind}\"}}"));
    }
    for endpoint in [
        "token",
        "stable_token",
        "work_token",
        "ticket",
        "work_ticket",
    ] {
        expected.push(format!(
            "wetoken_upstream_calls_total{{endpoint=\"{endpoint}\",result=\"ok\"}}"
        ));
    }
    for series in &expected {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
    assert!(sample(&text, "wetoken_scheduler_sweeps_total").is_some_and(|n| n >= 1.0));
    for state in ["healthy", "failing", "halted", "out_of_budget"] {
        let series = format!("wetoken_credentials{{kind=\"access_token\",state=\"{state}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    drop(replica);
    let _ = std::fs::remove_dir_all(&dir);
}
