//! `cargo xtask bench`: the token route against its ceiling and against Redis, memory with 1,000
//! apps, and a refresh sweep over 10,000 apps. Needs `wrk` and `redis-benchmark` (Debian's `wrk`
//! and `redis-tools`), a Redis on 127.0.0.1:6379, and Chromium for the chart.
//!
//! Everything runs on this machine against 127.0.0.1, in bounded loops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use wetoken_mock::{Endpoint, MockConfig, MockWeChat};

use crate::scale;

const CONNECTIONS: u32 = 64;
const DURATION: &str = "10s";
const SECRET: &str = "bench-secret";

/// How many times (a) and (b) take turns.
const ROUNDS: usize = 3;

/// The run with the median throughput.
fn median(mut runs: Vec<Load>) -> Load {
    runs.sort_by(|x, y| x.rps.total_cmp(&y.rps));
    runs.swap_remove(runs.len() / 2)
}

/// One load run's figures.
pub(crate) struct Load {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Load {
    fn json(&self) -> Value {
        json!({"requests_per_sec": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms})
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A release `wetoken-server` with its output in `dir`.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Server {
    async fn start(dir: &Path, db: &Path, wechat: &str, env: &[(&str, &str)]) -> Result<Server> {
        let database_url = format!("sqlite://{}", db.display());
        let server = Server::spawn(dir, &database_url, wechat, env)?;
        server.wait_healthy(dir).await?;
        Ok(server)
    }

    /// Starts a release server on `database_url`, not waiting for it.
    pub(crate) fn spawn(
        dir: &Path,
        database_url: &str,
        wechat: &str,
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("server-{port}.log")))?;
        let child = Command::new(release_binary("wetoken-server"))
            .current_dir(dir)
            .args(["start", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .args(["--wechat-base-url", wechat])
            .env("WETOKEN_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting wetoken-server")?;
        Ok(Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits until `/health` answers 200.
    pub(crate) async fn wait_healthy(&self, dir: &Path) -> Result<()> {
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if http
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("wetoken-server did not come up; see {}", dir.display())
    }

    pub(crate) fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn release_binary(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let path = target.join("release").join(name);
    // Absolute: the server runs in another working directory.
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// Runs wrk against `url` and reads its throughput and latency percentiles.
fn wrk(url: &str) -> Result<Load> {
    wrk_with(url, None)
}

/// [`wrk`] with a Lua script that makes the requests.
pub(crate) fn wrk_with(url: &str, script: Option<&Path>) -> Result<Load> {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{DURATION}"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk against {url} failed or saw errors:\n{text}");
    }
    let field = |prefix: &str| -> Result<f64> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no {prefix:?} in wrk's output:\n{text}"))?;
        let value = line[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        parse_wrk_value(value)
    };
    Ok(Load {
        rps: field("Requests/sec:")?,
        p50_ms: field("50%")?,
        p99_ms: field("99%")?,
    })
}

/// wrk writes latencies as `812.00us`, `1.20ms`, `2.00s`; this gives milliseconds.
fn parse_wrk_value(value: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (value, 1.0)
    };
    Ok(number
        .parse::<f64>()
        .with_context(|| format!("reading {value:?}"))?
        * scale)
}

/// Redis GET of a token-sized value, one connection per client.
fn redis(value_size: usize) -> Result<Load> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "-t",
            "get",
            "-n",
            "400000",
            "--csv",
        ])
        .args([
            "-c",
            &CONNECTIONS.to_string(),
            "-d",
            &value_size.to_string(),
            "-P",
            "1",
        ])
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let line = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("no GET line from redis-benchmark:\n{text}"))?;
    let cells: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    if cells.len() < 6 {
        bail!("unexpected redis-benchmark output: {line}");
    }
    Ok(Load {
        rps: cells[0],
        p50_ms: cells[3],
        p99_ms: cells[5],
    })
}

/// The ceiling: a minimal hyper server answering a fixed body of `size` bytes, built and run
/// like wetoken-server (a release binary, its own process, tokio's default runtime), so the two
/// differ only in what they do per request.
pub fn serve_ceiling(port: u16, size: usize) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let body = Bytes::from(format!(
                "{{\"errcode\":0,\"errmsg\":\"{}\"}}",
                "x".repeat(size.saturating_sub(28))
            ));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut response = hyper::Response::new(Full::new(body));
                        response.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static(
                                "application/json; charset=utf-8",
                            ),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(conn);
            }
        })
}

/// Starts the ceiling server as a process and waits until it accepts connections.
async fn ceiling(size: usize) -> Result<(Child, SocketAddr)> {
    let port = free_port()?;
    let child = Command::new(release_binary("xtask"))
        .args(["ceiling", &port.to_string(), &size.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the ceiling server")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the ceiling server did not come up")
}

async fn create_apps(http: &reqwest::Client, url: &str, prefix: &str, n: usize) -> Result<()> {
    use futures::StreamExt;
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let response = http
                .post(format!("{url}/wechat/app/create"))
                .json(&json!({"appid": format!("{prefix}{i:05}"), "secret": SECRET}))
                .send()
                .await?;
            if response.status() != 200 {
                bail!("create answered {}", response.status());
            }
            Ok(())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `cargo xtask bench [--apps N,N.. --replicas R,R.. --db postgres,mysql]`: without `--apps`,
/// the token route, memory and sweep on SQLite; with it, the scale bench (`scale.rs`).
pub fn run(args: &[String]) -> Result<()> {
    let mut apps = Vec::new();
    let mut replicas = vec![1];
    let mut dbs = vec![scale::Db::Postgres, scale::Db::Mysql];
    let mut args = args.iter();
    let mut pages = false;
    while let Some(flag) = args.next() {
        if flag == "--pages" {
            pages = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let numbers = || -> Result<Vec<usize>> {
            value
                .split(',')
                .map(|n| {
                    n.replace('_', "")
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("{flag}: {n:?} is not a positive number"))
                })
                .collect()
        };
        match flag.as_str() {
            "--apps" => apps = numbers()?,
            "--replicas" => replicas = numbers()?,
            "--db" => {
                dbs = value
                    .split(',')
                    .map(|d| match d {
                        "postgres" => Ok(scale::Db::Postgres),
                        "mysql" | "mariadb" => Ok(scale::Db::Mysql),
                        other => bail!("--db: {other:?} is not postgres or mysql"),
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown flag {other}: expected --apps, --replicas, --db or --pages"),
        }
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "wetoken-server",
            "-p",
            "wetoken-cli",
            "-p",
            "xtask",
        ])
        .status()?;
    if !status.success() {
        bail!("building wetoken-server, wetoken-cli and xtask failed");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if pages {
        let apps = apps.first().copied().unwrap_or(100_000);
        runtime.block_on(scale::pages(apps, &dbs))
    } else if apps.is_empty() {
        runtime.block_on(bench())
    } else {
        runtime.block_on(scale::run(&apps, &replicas, &dbs))
    }
}

/// A fresh working directory at `dir`, and a mock WeChat that knows every appid.
pub(crate) async fn workspace(dir: &Path) -> Result<(PathBuf, MockWeChat)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let work = std::fs::canonicalize(dir)?;
    let mock = MockWeChat::start_with(
        MockConfig {
            auto_register: true,
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    Ok((work, mock))
}

async fn bench() -> Result<()> {
    let out = PathBuf::from("target/bench");
    let (work, mock) = workspace(&out.join("run")).await?;
    let http = reqwest::Client::new();

    // (a) the token route, warm.
    let server = Server::start(&work, &work.join("a.db"), &mock.url(), &[]).await?;
    create_apps(&http, &server.url, "wxbench", 1).await?;
    let token_url = format!("{}/wxbench00000/wechat/token/get", server.url);
    let body = http.get(&token_url).send().await?.text().await?;
    println!("token route: {} bytes per answer", body.len());
    // (b) the ceiling: minimal hyper, same body size. (a) and (b) take turns, ROUNDS times, and
    // each reports its median run: a single run of each swings by 10 % on two shared cores.
    let (mut ceiling_process, addr) = ceiling(body.len()).await?;
    let ceiling_url = format!("http://{addr}/");
    let mut a_runs = Vec::new();
    let mut b_runs = Vec::new();
    for round in 1..=ROUNDS {
        let runs = wrk(&token_url).and_then(|a| Ok((a, wrk(&ceiling_url)?)));
        let (a, b) = match runs {
            Ok(runs) => runs,
            Err(e) => {
                let _ = ceiling_process.kill();
                return Err(e);
            }
        };
        println!(
            "round {round}: (a) {:>9.0} req/s, (b) {:>9.0} req/s, (a)/(b) = {:.2}",
            a.rps,
            b.rps,
            a.rps / b.rps
        );
        a_runs.push(a);
        b_runs.push(b);
    }
    let _ = ceiling_process.kill();
    let _ = ceiling_process.wait();
    let a = median(a_runs);
    let b = median(b_runs);
    println!(
        "(a) wetoken token/get : {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms (median of {ROUNDS})",
        a.rps, a.p50_ms, a.p99_ms
    );
    println!(
        "(b) minimal hyper     : {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms (median of {ROUNDS})",
        b.rps, b.p50_ms, b.p99_ms
    );
    // RSS with 1,000 apps, their tokens cached.
    create_apps(&http, &server.url, "wxrss", 999).await?;
    for i in 0..999 {
        http.get(format!("{}/wxrss{i:05}/wechat/token/get", server.url))
            .send()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mib = server.rss_kib()? as f64 / 1024.0;
    println!("RSS with 1,000 apps   : {rss_mib:.1} MiB");
    drop(server);

    // (c) Redis GET of a token-sized value.
    let c = redis(150)?;
    println!(
        "(c) redis GET         : {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
        c.rps, c.p50_ms, c.p99_ms
    );

    // The sweep: 10,000 cold apps, the scheduler at its configured rate.
    let rate = 500u32;
    let db = work.join("sweep.db");
    {
        let loader = Server::start(
            &work,
            &db,
            &mock.url(),
            &[("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "3600000")],
        )
        .await?;
        // The loader's own first scan ran before these apps existed.
        create_apps(&http, &loader.url, "wxsweep", 10_000).await?;
    }
    mock.reset_calls();
    let rate_text = rate.to_string();
    let sweeper = Server::start(
        &work,
        &db,
        &mock.url(),
        &[
            ("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "200"),
            ("WETOKEN_REFRESH__MAX_REFRESH_RATE", &rate_text),
            ("WETOKEN_REFRESH__CONCURRENCY", "16"),
            ("WETOKEN_REFRESH__REFRESH_TICKETS", "false"),
        ],
    )
    .await?;
    let started = Instant::now();
    let mut samples = vec![(0.0f64, 0u64)];
    while mock.calls(Endpoint::Token) < 10_000 && started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push((started.elapsed().as_secs_f64(), mock.calls(Endpoint::Token)));
    }
    let sweep_secs = samples.last().map_or(0.0, |s| s.0);
    let fetched = mock.calls(Endpoint::Token);
    let (peak, _) = scale::spread(&samples);
    drop(sweeper);
    println!(
        "sweep of 10,000 apps  : {fetched} fetched in {sweep_secs:.1} s, at most {peak} in any second (rate {rate}/s)"
    );

    let results = json!({
        "connections": CONNECTIONS,
        "duration": DURATION,
        "rounds": ROUNDS,
        "a_wetoken_token_get": a.json(),
        "b_minimal_hyper": b.json(),
        "c_redis_get": c.json(),
        "ratio_a_over_b": a.rps / b.rps,
        "ratio_a_over_c": a.rps / c.rps,
        "rss_mib_1000_apps": rss_mib,
        "sweep": {"apps": 10_000, "fetched": fetched, "seconds": sweep_secs, "configured_rate": rate, "peak_per_second": peak},
    });
    println!(
        "ratios                : (a)/(b) = {:.2}, (a)/(c) = {:.2}",
        a.rps / b.rps,
        a.rps / c.rps
    );
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    chart(
        &out,
        &[("wetoken", &a), ("minimal hyper", &b), ("redis GET", &c)],
        rss_mib,
    )?;
    println!("wrote {0}/results.json and {0}/chart.png", out.display());
    Ok(())
}

/// Draws the throughput bars as SVG and has Chromium turn it into a PNG.
fn chart(out: &Path, loads: &[(&str, &Load)], rss_mib: f64) -> Result<()> {
    let max = loads.iter().map(|(_, l)| l.rps).fold(1.0, f64::max);
    let mut bars = String::new();
    for (i, (name, load)) in loads.iter().enumerate() {
        let width = 560.0 * load.rps / max;
        let y = 50 + i * 72;
        bars.push_str(&format!(
            "<text x='10' y='{}' font-size='15'>{name}</text>\
             <rect x='150' y='{}' width='{width:.0}' height='30' fill='{}'/>\
             <text x='150' y='{}' font-size='13'>{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms</text>",
            y + 20,
            y,
            ["#1a73e8", "#9aa0a6", "#d93025"][i % 3],
            y + 48,
            load.rps,
            load.p50_ms,
            load.p99_ms
        ));
    }
    let svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='800' height='300' font-family='DejaVu Sans, sans-serif'>\
         <rect width='800' height='300' fill='white'/>\
         <text x='10' y='30' font-size='18'>Token route throughput at {CONNECTIONS} connections (higher is better)</text>\
         {bars}<text x='10' y='285' font-size='13'>wetoken RSS with 1,000 apps: {rss_mib:.1} MiB</text></svg>"
    );
    let svg_path = out.join("chart.svg");
    std::fs::write(&svg_path, svg)?;
    let png = out.join("chart.png");
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("Chromium draws the chart: apt-get install chromium")?;
    let profile = out.join("chromium-profile");
    let status = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!(
            "--screenshot={}",
            std::fs::canonicalize(out)?.join("chart.png").display()
        ))
        .arg("--window-size=800,300")
        .arg(format!(
            "file://{}",
            std::fs::canonicalize(&svg_path)?.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() || !png.exists() {
        bail!("Chromium could not draw {}", png.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_units() {
        assert_eq!(super::parse_wrk_value("812.00us").unwrap(), 0.812);
        assert_eq!(super::parse_wrk_value("1.50ms").unwrap(), 1.5);
        assert_eq!(super::parse_wrk_value("2.00s").unwrap(), 2000.0);
    }
}
