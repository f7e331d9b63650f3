//! `cargo xtask bench --apps N --replicas R [--db postgres|mysql]`: wetoken at scale, on one
//! shared database (issue #15). For each database it:
//!
//! 1. makes a fresh `wetoken_bench` database and measures a replica's RSS with no apps;
//! 2. imports N apps with live tokens and tickets through `wetoken-cli import` (a CSV);
//! 3. starts R release replicas, and times the first one from spawn to its first token served;
//! 4. reads every app's token on every replica, so that all of them are cached;
//! 5. counts the database's own statements over 20 idle seconds (PostgreSQL's transactions in
//!    `pg_stat_database`, MariaDB's `Questions`), per replica;
//! 6. reads RSS, the default `/metrics` size and list-page times;
//! 7. runs wrk on the token route with the load spread over all N apps;
//! 8. makes 2,000 tokens due at once and samples the scheduler's renewals at the mock, to see
//!    them spread at the configured rate.
//!
//! Needs the `psql` and `mysql` clients, `wrk`, and the machine's PostgreSQL and MariaDB. It
//! drops and recreates the `wetoken_bench` database on each; it touches no other.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use wetoken_mock::{Endpoint, MockWeChat};

use crate::bench::{Load, Server, release_binary, wrk_with};

const DATABASE: &str = "wetoken_bench";
/// The scheduler's rate a replica while the sweep is sampled (`XTASK_SWEEP_RATE`
/// overrides it: below what the machine sustains, it shows whether replicas add up), and how
/// many tokens are made due.
const SWEEP_RATE: u32 = 200;

fn sweep_rate() -> Result<u32> {
    match std::env::var("XTASK_SWEEP_RATE") {
        Ok(rate) => rate
            .parse()
            .ok()
            .filter(|rate| *rate > 0)
            .with_context(|| format!("XTASK_SWEEP_RATE={rate:?} is not a positive number")),
        Err(_) => Ok(SWEEP_RATE),
    }
}
const SWEEP_APPS: usize = 2_000;
/// Seconds of idle counted for the statements a second.
const IDLE_SECS: u64 = 20;

/// A database the bench runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Mysql,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Postgres => "PostgreSQL",
            Db::Mysql => "MariaDB",
        }
    }

    fn url(self) -> String {
        match self {
            Db::Postgres => format!("postgres://postgres@127.0.0.1:5432/{DATABASE}"),
            Db::Mysql => format!("mysql://root@127.0.0.1:3306/{DATABASE}"),
        }
    }

    /// Runs `sql` with the database's own client and gives its output, trimmed.
    fn sql(self, database: &str, sql: &str) -> Result<String> {
        let out = match self {
            Db::Postgres => Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
                .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
                .output()
                .context("running psql (apt-get install postgresql-client)")?,
            Db::Mysql => Command::new("mysql")
                .args(["-h", "127.0.0.1", "-uroot", "-N", "-B", database, "-e", sql])
                .output()
                .context("running mysql (apt-get install mariadb-client)")?,
        };
        if !out.status.success() {
            bail!(
                "{} said: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn recreate(self) -> Result<()> {
        match self {
            Db::Postgres => {
                self.sql(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
                )?;
                self.sql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
            }
            Db::Mysql => {
                self.sql("mysql", &format!("DROP DATABASE IF EXISTS {DATABASE}"))?;
                self.sql("mysql", &format!("CREATE DATABASE {DATABASE}"))?;
            }
        }
        Ok(())
    }

    /// The database's count of statements so far: PostgreSQL's transactions on the bench
    /// database (every statement outside a transaction is one), MariaDB's `Questions` (server
    /// wide: the machine must be otherwise quiet).
    fn statements(self) -> Result<u64> {
        let text = match self {
            Db::Postgres => self.sql(
                "postgres",
                &format!(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database \
                     WHERE datname = '{DATABASE}'"
                ),
            )?,
            Db::Mysql => {
                let row = self.sql("mysql", "SHOW GLOBAL STATUS LIKE 'Questions'")?;
                row.split_whitespace().nth(1).unwrap_or_default().to_owned()
            }
        };
        text.parse()
            .with_context(|| format!("reading the statement count from {text:?}"))
    }
}

fn appid(i: usize) -> String {
    format!("wxs{i:06}")
}

/// The listing cursor of the page after app `i` (wetoken-core's `Cursor`: `c1` and the appid in
/// hex).
fn cursor(i: usize) -> String {
    let mut out = String::from("c1");
    for b in appid(i).bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn cli(args: &[&str]) -> Result<()> {
    let out = Command::new(release_binary("wetoken-cli"))
        .args(args)
        .output()
        .context("running wetoken-cli")?;
    if !out.status.success() {
        bail!(
            "wetoken-cli {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Reads `appids`' tokens from `url`, 32 at a time.
async fn read_all(http: &reqwest::Client, url: &str, apps: usize) -> Result<()> {
    use futures::StreamExt;
    let failures: Vec<String> = futures::stream::iter(0..apps)
        .map(|i| async move {
            let answer = http
                .get(format!("{url}/{}/wechat/token/get", appid(i)))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 200 => None,
                Ok(r) => Some(format!("{}: {}", appid(i), r.status())),
                Err(e) => Some(format!("{}: {e}", appid(i))),
            }
        })
        .buffer_unordered(32)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    if let Some(first) = failures.first() {
        bail!("{} reads failed; the first: {first}", failures.len());
    }
    Ok(())
}

/// The slowest of three fetches of `url`, in ms, and the last answer.
async fn timed_get(http: &reqwest::Client, url: &str) -> Result<(f64, Value)> {
    let mut worst = 0.0f64;
    let mut body = Value::Null;
    for _ in 0..3 {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        let status = response.status();
        let text = response.text().await?;
        worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("{url} answered {status}: {text}");
        }
        body = serde_json::from_str(&text).unwrap_or(Value::Null);
    }
    Ok((worst, body))
}

/// One run's figures.
struct Figures {
    db: Db,
    apps: usize,
    replicas: usize,
    import_secs: f64,
    first_token_ms: f64,
    statements_per_sec_per_replica: f64,
    rss_base_mib: f64,
    /// The first replica once it served its first token: the apps known, nothing cached.
    rss_started_mib: f64,
    rss_mib: f64,
    scrape_bytes: usize,
    list_first_ms: f64,
    list_middle_ms: f64,
    load: Load,
    sweep_rate: u32,
    sweep_peak: u64,
    sweep_mean: f64,
}

impl Figures {
    fn bytes_per_app(&self) -> f64 {
        (self.rss_mib - self.rss_base_mib) * 1024.0 * 1024.0 / self.apps as f64
    }

    fn json(&self) -> Value {
        json!({
            "database": self.db.name(),
            "apps": self.apps,
            "replicas": self.replicas,
            "seed_secs": self.import_secs,
            "first_token_ms": self.first_token_ms,
            "statements_per_sec_per_replica": self.statements_per_sec_per_replica,
            "rss_base_mib": self.rss_base_mib,
            "rss_started_mib": self.rss_started_mib,
            "rss_mib": self.rss_mib,
            "rss_bytes_per_app": self.bytes_per_app(),
            "scrape_bytes": self.scrape_bytes,
            "list_first_page_ms": self.list_first_ms,
            "list_middle_page_ms": self.list_middle_ms,
            "token_route": {"requests_per_sec": self.load.rps, "p50_ms": self.load.p50_ms, "p99_ms": self.load.p99_ms},
            "sweep": {"configured_rate": self.sweep_rate, "peak_per_second": self.sweep_peak, "mean_per_second": self.sweep_mean},
        })
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.1} | {:.1} / {:.0} B | {} | {:.1} / {:.1} | {:.0} (p99 {:.2} ms) | {} / {:.0} | {:.0} ms |",
            self.db.name(),
            self.apps,
            self.replicas,
            self.statements_per_sec_per_replica,
            self.rss_mib,
            self.bytes_per_app(),
            self.scrape_bytes,
            self.list_first_ms,
            self.list_middle_ms,
            self.load.rps,
            self.load.p99_ms,
            self.sweep_peak,
            self.sweep_mean,
            self.first_token_ms,
        )
    }
}

async fn run_one(
    db: Db,
    apps: usize,
    replicas: usize,
    work: &Path,
    mock: &MockWeChat,
) -> Result<Figures> {
    let http = reqwest::Client::new();
    let url = db.url();
    println!("{}: {apps} apps, {replicas} replicas", db.name());
    db.recreate()?;
    cli(&["migrate", "up", "--database-url", &url])?;

    // The base: a replica on the empty database.
    let base = Server::spawn(work, &url, &mock.url(), &[])?;
    base.wait_healthy(work).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_base_mib = base.rss_kib()? as f64 / 1024.0;
    drop(base);

    // Rows written straight into the tables, 500 to a statement: `wetoken-cli import` does
    // about 170 apps a second here, which would make 100,000 a ten-minute wait.
    let started = Instant::now();
    wetoken_testkit::seed_apps(&url, "wxs", apps, chrono::Utc::now(), |_| {
        wetoken_testkit::Seed::Healthy
    })
    .await;
    let import_secs = started.elapsed().as_secs_f64();
    println!("  seeded in {import_secs:.1} s");
    // What autovacuum (PostgreSQL) or the first statistics sample (MariaDB) does on its own
    // within minutes: without it the planner still sees the empty tables of a moment ago.
    let tables = "wechat_app_info, wechat_access_token, wechat_jsapi_ticket, wechat_card_ticket";
    match db {
        Db::Postgres => db.sql(DATABASE, "ANALYZE")?,
        Db::Mysql => db.sql(DATABASE, &format!("ANALYZE TABLE {tables}"))?,
    };

    // The first replica, from spawn to its first token.
    let started = Instant::now();
    let mut servers = vec![Server::spawn(work, &url, &mock.url(), &[])?];
    let first = format!("{}/{}/wechat/token/get", servers[0].url, appid(apps / 2));
    let first_token_ms = loop {
        if http
            .get(&first)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break started.elapsed().as_secs_f64() * 1000.0;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the first replica served no token within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("  first token after {first_token_ms:.0} ms");
    let rss_started_mib = servers[0].rss_kib()? as f64 / 1024.0;
    for _ in 1..replicas {
        let server = Server::spawn(work, &url, &mock.url(), &[])?;
        server.wait_healthy(work).await?;
        servers.push(server);
    }
    for server in &servers {
        read_all(&http, &server.url, apps).await?;
    }
    mock.reset_calls();

    // Idle: what the replicas ask of the database when nobody asks anything of them. PostgreSQL
    // counts an idle connection's statements up to 10 s late: wait those out first.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = db.statements()?;
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let after = db.statements()?;
    // Less the bench's own reading of the counter.
    let statements = after.saturating_sub(before).saturating_sub(1);
    let statements_per_sec_per_replica = statements as f64 / IDLE_SECS as f64 / replicas as f64;
    println!("  idle: {statements_per_sec_per_replica:.1} statements a second per replica");
    // The largest replica's: read now, with every token cached, and again after the scrape,
    // the list pages and the load, whichever is more.
    let largest_rss = || -> Result<f64> {
        Ok(servers
            .iter()
            .map(|s| s.rss_kib().map(|k| k as f64 / 1024.0))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .fold(0.0, f64::max))
    };
    let mut rss_mib = largest_rss()?;

    let scrape = http
        .get(format!("{}/metrics", servers[0].url))
        .send()
        .await?
        .bytes()
        .await?;
    println!(
        "  RSS {rss_mib:.1} MiB (base {rss_base_mib:.1}, started {rss_started_mib:.1}), scrape {} bytes",
        scrape.len()
    );
    let (list_first_ms, _) = timed_get(
        &http,
        &format!("{}/wechat/app/list?limit=100", servers[0].url),
    )
    .await?;
    let (list_middle_ms, _) = timed_get(
        &http,
        &format!(
            "{}/wechat/app/list?limit=100&cursor={}",
            servers[0].url,
            cursor(apps / 2)
        ),
    )
    .await?;
    println!("  list pages {list_first_ms:.1} / {list_middle_ms:.1} ms");

    let script = work.join(format!("spread-{apps}.lua"));
    std::fs::write(
        &script,
        format!(
            "math.randomseed(os.time())\n\
             request = function()\n  \
             return wrk.format(\"GET\", string.format(\"/wxs%06d/wechat/token/get\", math.random(0, {})))\n\
             end\n",
            apps - 1
        ),
    )?;
    let load = wrk_with(&servers[0].url, Some(&script))?;
    println!(
        "  token route over all apps: {:.0} req/s, p99 {:.2} ms",
        load.rps, load.p99_ms
    );
    let rss_after_mib = largest_rss()?;
    println!("  RSS after the scrape, the pages and the load: {rss_after_mib:.1} MiB");
    rss_mib = rss_mib.max(rss_after_mib);

    // The sweep: the servers restart at the sweep's rate, and SWEEP_APPS tokens fall due.
    drop(servers);
    let due = SWEEP_APPS.min(apps);
    let table = "wechat_access_token";
    let soon = match db {
        Db::Postgres => "now() + interval '600 seconds'",
        Db::Mysql => "UTC_TIMESTAMP(6) + INTERVAL 600 SECOND",
    };
    let past = match db {
        Db::Postgres => "now() - interval '1 second'",
        Db::Mysql => "UTC_TIMESTAMP(6) - INTERVAL 1 SECOND",
    };
    db.sql(
        DATABASE,
        &format!(
            "UPDATE {table} SET expires_at = {soon}, renew_at = {past} WHERE appid < '{}'",
            appid(due)
        ),
    )?;
    mock.reset_calls();
    let sweep_rate = sweep_rate()?;
    let rate = sweep_rate.to_string();
    let env = [
        ("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "200"),
        ("WETOKEN_REFRESH__MAX_REFRESH_RATE", rate.as_str()),
        ("WETOKEN_REFRESH__CONCURRENCY", "16"),
        ("WETOKEN_REFRESH__REFRESH_TICKETS", "false"),
    ];
    let sweepers = (0..replicas)
        .map(|_| Server::spawn(work, &url, &mock.url(), &env))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut samples = vec![(0.0f64, 0u64)];
    while mock.calls(Endpoint::Token) < due as u64 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push((started.elapsed().as_secs_f64(), mock.calls(Endpoint::Token)));
    }
    drop(sweepers);
    let (sweep_peak, sweep_mean) = spread(&samples);
    println!(
        "  sweep of {due}: {} fetched, at most {sweep_peak} in a second, {sweep_mean:.0}/s between the first and the last (rate {sweep_rate}/s a replica)",
        mock.calls(Endpoint::Token)
    );
    Ok(Figures {
        db,
        apps,
        replicas,
        import_secs,
        first_token_ms,
        statements_per_sec_per_replica,
        rss_base_mib,
        rss_started_mib,
        rss_mib,
        scrape_bytes: scrape.len(),
        list_first_ms,
        list_middle_ms,
        load,
        sweep_rate,
        sweep_peak,
        sweep_mean,
    })
}

/// The most calls in any one-second window of `samples` (time, running count), and the mean
/// rate from before the first call to the last.
pub(crate) fn spread(samples: &[(f64, u64)]) -> (u64, f64) {
    let mut peak = 0;
    for (i, &(t0, c0)) in samples.iter().enumerate() {
        if let Some(&(_, c1)) = samples[i..]
            .iter()
            .take_while(|(t, _)| *t - t0 <= 1.0)
            .last()
        {
            peak = peak.max(c1 - c0);
        }
    }
    // From the last sample before any call to the first that saw them all.
    let total = samples.last().map_or(0, |s| s.1);
    let start = samples.iter().rev().find(|(_, c)| *c == 0).map(|s| s.0);
    let end = samples.iter().find(|(_, c)| *c == total).map(|s| s.0);
    let mean = match (start, end) {
        (Some(t0), Some(t1)) if t1 > t0 => total as f64 / (t1 - t0),
        _ => 0.0,
    };
    (peak, mean)
}

/// `cargo xtask bench --pages --apps N [--db …]`: the listings, the status page and the scrape at
/// N apps, 1% of them halted, 1% failing and 1% never fetched, on one release replica. Each
/// figure is the slowest of five requests after one to warm up; then `EXPLAIN` of a filtered
/// page's query, as `store::listing` builds it.
pub async fn pages(apps: usize, dbs: &[Db]) -> Result<()> {
    let out = std::path::PathBuf::from("target/bench");
    let (work, mock) = crate::bench::workspace(&out.join("pages")).await?;
    let http = reqwest::Client::new();
    for &db in dbs {
        let url = db.url();
        println!("{}: {apps} apps", db.name());
        db.recreate()?;
        cli(&["migrate", "up", "--database-url", &url])?;
        let state = |i: usize| match i % 100 {
            0 => wetoken_testkit::Seed::Halted,
            1 => wetoken_testkit::Seed::Failing,
            2 => wetoken_testkit::Seed::Empty,
            _ => wetoken_testkit::Seed::Healthy,
        };
        wetoken_testkit::seed_apps(&url, "wxs", apps, chrono::Utc::now(), state).await;
        let tables =
            "wechat_app_info, wechat_access_token, wechat_jsapi_ticket, wechat_card_ticket";
        match db {
            Db::Postgres => db.sql(DATABASE, "ANALYZE")?,
            Db::Mysql => db.sql(DATABASE, &format!("ANALYZE TABLE {tables}"))?,
        };
        let server = Server::spawn(&work, &url, &mock.url(), &[])?;
        server.wait_healthy(&work).await?;
        let middle = cursor(apps / 2);
        let last = cursor(apps.saturating_sub(50));
        let list = "/wechat/app/list";
        let pages = [
            ("first page", list.to_owned()),
            ("middle page", format!("{list}?cursor={middle}")),
            ("last page", format!("{list}?cursor={last}")),
            (
                "1000 apps, middle",
                format!("{list}?limit=1000&cursor={middle}"),
            ),
            ("halted, first page", format!("{list}?state=halted")),
            (
                "halted, middle",
                format!("{list}?state=halted&cursor={middle}"),
            ),
            (
                "failing, middle",
                format!("{list}?state=failing&cursor={middle}"),
            ),
            (
                "healthy, middle",
                format!("{list}?state=healthy&cursor={middle}"),
            ),
            ("renewing (none)", format!("{list}?state=renewing")),
            (
                "out_of_budget (none)",
                format!("{list}?state=out_of_budget"),
            ),
            ("pending, kind mp", format!("{list}?state=pending&kind=mp")),
            ("kind mini (none)", format!("{list}?kind=mini")),
            ("prefix wxs05", format!("{list}?prefix=wxs05")),
            (
                "prefix wxs00001 (10 apps)",
                format!("{list}?prefix=wxs00001"),
            ),
            ("status page", "/".to_owned()),
            ("status page, halted", "/?state=halted".to_owned()),
            ("/metrics", "/metrics".to_owned()),
        ];
        println!("| request | ms (slowest of 5) | bytes |");
        println!("|---|---|---|");
        for (what, path) in pages {
            let url = format!("{}{path}", server.url);
            timed_get(&http, &url).await?;
            let mut worst = 0.0f64;
            let mut bytes = 0;
            for _ in 0..5 {
                let started = Instant::now();
                let body = http.get(&url).send().await?.bytes().await?;
                worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
                bytes = body.len();
            }
            println!("| {what} | {worst:.1} | {bytes} |");
        }
        drop(server);
        let after = appid(apps / 2);
        let branch = |table: &str, n: usize| {
            format!(
                "SELECT appid FROM (SELECT appid FROM {table} WHERE state = 'halted' \
                 AND appid > '{after}' ORDER BY appid LIMIT 101) s{n}"
            )
        };
        let query = format!(
            "SELECT a.* FROM wechat_app_info a JOIN ({} UNION {} UNION {}) m \
             ON m.appid = a.appid WHERE a.appid > '{after}' ORDER BY a.appid LIMIT 101",
            branch("wechat_access_token", 0),
            branch("wechat_jsapi_ticket", 1),
            branch("wechat_card_ticket", 2),
        );
        let explain = match db {
            Db::Postgres => format!("EXPLAIN ANALYZE {query}"),
            Db::Mysql => format!("EXPLAIN {query}"),
        };
        println!(
            "EXPLAIN of the halted page after {after}:\n{}",
            db.sql(DATABASE, &explain)?
        );
        let kind = format!(
            "SELECT * FROM wechat_app_info WHERE kind = 'mini' AND appid > '{after}' \
             ORDER BY appid LIMIT 101"
        );
        let explain = match db {
            Db::Postgres => format!("EXPLAIN ANALYZE {kind}"),
            Db::Mysql => format!("EXPLAIN {kind}"),
        };
        println!(
            "EXPLAIN of the mini programs' page:\n{}",
            db.sql(DATABASE, &explain)?
        );
    }
    Ok(())
}

pub async fn run(apps: &[usize], replicas: &[usize], dbs: &[Db]) -> Result<()> {
    let out = std::path::PathBuf::from("target/bench");
    let (work, mock) = crate::bench::workspace(&out.join("scale")).await?;
    let mut rows = Vec::new();
    for &db in dbs {
        for &n in apps {
            for &r in replicas {
                rows.push(run_one(db, n, r, &work, &mock).await?);
            }
        }
    }
    println!();
    println!(
        "| database | apps | replicas | statements/s per replica, idle | RSS MiB / per app | scrape bytes | list page ms (first / middle) | token route req/s, spread | sweep peak / mean per s | first token |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", row.row());
    }
    let json: Vec<Value> = rows.iter().map(Figures::json).collect();
    std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}/scale.json", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_of_samples() {
        let samples = [
            (0.0, 0),
            (0.5, 0),
            (1.0, 100),
            (1.5, 200),
            (2.0, 300),
            (3.0, 300),
        ];
        let (peak, mean) = super::spread(&samples);
        assert_eq!(peak, 200);
        assert!((mean - 200.0).abs() < 1e-9, "{mean}");
    }
}
