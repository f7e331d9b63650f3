//! Starting servers, mocks and replicas for the tests.
//!
//! Databases come from `wetoken-testkit`, shared with the CLI's and the engine's tests: every
//! scenario runs once per backend (`on_every_database!`), each on a database of its own, and a
//! backend left out with `WETOKEN_TEST_DATABASES` is announced as skipped (and fails under
//! `CI=true`).

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wetoken_core::{AppId, Engine, ManualClock, NewConsumerKey, Store};
use wetoken_mock::MockWeChat;
use wetoken_server::{CredentialErrors, Server, Settings};

pub(crate) use wetoken_testkit::on_every_database;
pub use wetoken_testkit::{Backend, TestDb};

/// The secret every test app is registered with, at the mock and at the server.
pub const SECRET: &str = "6acb2b999177524beba3d97d54df2de5";

/// A running server with its own clock.
pub struct TestServer {
    pub url: String,
    pub clock: Arc<ManualClock>,
    /// The server's engine, for waiting on its scheduler ([`TestServer::sweeps`]).
    pub engine: Engine,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Settings for a test server: the scheduler effectively off (tests that want it turn it on),
/// WeChat at the mock, and errors answered with their HTTP status, which the scenarios check
/// (`answers.rs` checks that the default, HTTP 200 with the errcode, carries the same body).
pub fn settings(db: &TestDb, mock: &MockWeChat) -> Settings {
    let mut s = Settings {
        database_url: db.url.clone(),
        database_max_connections: 8,
        wechat_base_url: mock.url(),
        wechat_work_base_url: mock.url(),
        wechat_timeout_secs: 2,
        ..Settings::default()
    };
    s.refresh.scan_interval_ms = 3_600_000;
    // Tests report tickets right after fetching them; the quota guard's minimum age is tested
    // in wetoken-core's `quota_guard`.
    s.refresh.ticket_report_min_age_secs = 0;
    s.http.credential_errors = CredentialErrors::AsStatus;
    // Every test client connects from loopback, some hundreds at once (`engine.rs`): the
    // per-address share is tested where it is set low (`connections.rs`).
    s.http.max_connections_per_address = s.http.max_connections;
    // Tests read the totals right after changing what they count (and on a clock that moves
    // only when told): no reuse of an earlier reading.
    s.metrics.totals_fresh_ms = 0;
    s
}

impl TestServer {
    pub async fn start(settings: Settings) -> TestServer {
        Self::start_with_clock(settings, Arc::new(ManualClock::new(Utc::now()))).await
    }

    pub async fn start_with_clock(settings: Settings, clock: Arc<ManualClock>) -> TestServer {
        let server = Server::with_clock(&settings, clock.clone())
            .await
            .expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let engine = server.engine().clone();
        let server_engine = engine.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        // The scheduler scans once at start. Let that scan end before a test adds apps, or it
        // may see them and fetch their credentials behind the test's back.
        eventually(
            "the scheduler's first scan to end",
            Duration::from_secs(20),
            || async { engine.sweeps() > 0 },
        )
        .await;
        TestServer {
            url,
            clock,
            engine: server_engine,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
        }
    }

    /// Waits until the scheduler has finished `n` whole scans that began after this call: the
    /// scan under way may have read the clock or the database before the caller changed them.
    /// A finished scan has decided about every credential and started the refreshes it found
    /// due (which may still run; [`TestServer::stop`] waits for them).
    pub async fn sweeps(&self, n: u64) {
        let start = self.engine.sweeps();
        eventually(
            &format!("{n} more scheduler scans"),
            Duration::from_secs(20),
            || async { self.engine.sweeps() > start + n },
        )
        .await;
    }

    /// Shuts the server down and waits until it has, scheduled refreshes under way included.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
    }

    /// GET `path`; the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// GET `path`; the body as text (the status page, `/metrics`).
    pub async fn text(&self, path: &str) -> String {
        let response = self.http.get(format!("{}{path}", self.url)).send().await;
        response.unwrap().text().await.unwrap()
    }

    /// POST `path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// POST `path` with a raw body and content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Registers `appid` with [`SECRET`] and checks it worked.
    pub async fn add_app(&self, appid: &str) {
        let (status, body) = self
            .get(&format!(
                "/wechat/app/create?appid={appid}&secret={SECRET}&token=tk"
            ))
            .await;
        assert_eq!((status, &body["errcode"]), (200, &Value::from(0)), "{body}");
    }

    /// Registers `appid` with `secret` (by POST, as a JSON body) and checks it worked.
    pub async fn add_app_with(&self, appid: &str, secret: &str) {
        let body = serde_json::json!({"appid": appid, "secret": secret});
        let (status, body) = self.post_json("/wechat/app/create", &body).await;
        assert_eq!((status, &body["errcode"]), (200, &Value::from(0)), "{body}");
    }

    /// The token a successful `/{appid}/wechat/token/get` returns.
    pub async fn token(&self, appid: &str) -> String {
        let (status, body) = self.get(&format!("/{appid}/wechat/token/get")).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The ticket a successful `/{appid}/wechat/ticket/get` returns.
    pub async fn ticket(&self, appid: &str) -> String {
        let (status, body) = self.get(&format!("/{appid}/wechat/ticket/get")).await;
        assert_eq!(status, 200, "{body}");
        body["ticket"].as_str().unwrap().to_owned()
    }
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
    (status, body)
}

/// A mock WeChat that knows `appids` with [`SECRET`].
pub async fn mock_with(appids: &[&str]) -> MockWeChat {
    let mock = MockWeChat::start().await.expect("mock starts");
    for appid in appids {
        mock.add_app(appid, SECRET);
    }
    mock
}

/// Waits until `condition` holds, checking every 20 ms, and fails after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the Prometheus sample line that starts with `series` (name and labels, in
/// order).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `wetoken-server` binary, with none of the developer's `WETOKEN_*` settings leaking in
/// (the harness's own `WETOKEN_TEST_*` stay: they are not settings).
pub fn server_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wetoken-server"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WETOKEN_") && !key.starts_with("WETOKEN_TEST_") {
            command.env_remove(key);
        }
    }
    command
}

/// A `wetoken-server` process.
pub struct Replica {
    child: Option<Child>,
    pub url: String,
}

impl Replica {
    /// Starts a replica on `database_url` with WeChat at `wechat`, and waits until it answers.
    /// Like [`settings`], it answers errors with their HTTP status.
    pub async fn start(database_url: &str, wechat: &str, env: &[(&str, &str)]) -> Replica {
        Self::start_logged(database_url, wechat, env, None).await
    }

    /// As [`Replica::start`], writing the server's log (its standard error) to `log`.
    pub async fn start_logged(
        database_url: &str,
        wechat: &str,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Replica {
        let port = free_port();
        let mut command = server_command();
        command
            .args(["start", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url, "--wechat-base-url", wechat])
            .env("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "3600000")
            .env("WETOKEN_REFRESH__LEASE_MS", "2000")
            .env("WETOKEN_REFRESH__LEASE_POLL_MS", "50")
            .env("WETOKEN_HTTP__CREDENTIAL_ERRORS", "as_status")
            // As in `settings`: every test client is on loopback.
            .env("WETOKEN_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "10000")
            .envs(env.iter().copied());
        if let Some(log) = log {
            command.stderr(std::fs::File::create(log).expect("create the log file"));
        }
        let replica = Self::started(command, port).await;
        // As with TestServer: the scheduler scans once at start, and a scan still running when a
        // test adds its apps would fetch their credentials behind the test's back.
        let admin_key = env
            .iter()
            .find(|(name, _)| *name == "WETOKEN_ADMIN_KEY")
            .map(|(_, key)| *key);
        let http = reqwest::Client::new();
        eventually(
            "the replica's first scheduler scan ends",
            Duration::from_secs(20),
            || async {
                let mut request = http.get(format!("{}/metrics", replica.url));
                if let Some(key) = admin_key {
                    request = request.bearer_auth(key);
                }
                let Ok(response) = request.send().await else {
                    return false;
                };
                let text = response.text().await.unwrap_or_default();
                sample(&text, "wetoken_scheduler_sweeps_total").is_some_and(|n| n >= 1.0)
            },
        )
        .await;
        replica
    }

    /// Starts `command` (a `wetoken-server start …` that listens on 127.0.0.1:`port`), and
    /// waits until it answers.
    pub async fn spawn(mut command: Command, port: u16) -> Replica {
        command.stderr(Stdio::null());
        Self::started(command, port).await
    }

    /// As [`Replica::spawn`], with the standard error `command` has.
    async fn started(mut command: Command, port: u16) -> Replica {
        command.stdout(Stdio::null());
        let replica = Replica {
            child: Some(command.spawn().expect("start wetoken-server")),
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        eventually(
            "a replica answers /health",
            Duration::from_secs(30),
            || async {
                http.get(format!("{}/health", replica.url))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        replica
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy (in front of a database, a ZooKeeper) that the test can take down and bring back.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (d, g) = (down.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            down,
            generation,
        }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn bring_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Adds a consumer key through `store`, as `wetoken-cli key add` does; the key.
pub async fn add_key(
    store: &Store,
    name: &str,
    appids: &[&str],
    allow_refresh: bool,
    networks: &[&str],
) -> String {
    let new = NewConsumerKey {
        name: name.into(),
        appids: appids.iter().map(|a| AppId::parse(a).unwrap()).collect(),
        allow_refresh,
        networks: networks
            .iter()
            .map(|n| wetoken_core::keys::parse_network(n).unwrap())
            .collect(),
        refresh_limit: None,
    };
    let issued = store.add_consumer_key(&new, Utc::now()).await.unwrap();
    issued.key.expose().to_owned()
}

/// A file of the repository, by its path from the root (`deploy/compose.yaml`).
pub fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The documents of a YAML file of the repository, as JSON values: aliases resolved, and merge
/// keys (`<<: *anchor`, as compose files use them) applied, the mapping's own keys winning.
pub fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .iter()
        .map(yaml_to_json)
        .collect()
}

fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(text) => text.parse::<f64>().map_or(Value::Null, Value::from),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => items.iter().map(yaml_to_json).collect(),
        Yaml::Hash(hash) => {
            let mut object = serde_json::Map::new();
            for (key, value) in hash {
                let key = match yaml_to_json(key) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if key == "<<" {
                    continue;
                }
                object.insert(key, yaml_to_json(value));
            }
            let merged = hash.get(&Yaml::String("<<".into())).map(yaml_to_json);
            for base in merged.iter().flat_map(|m| match m {
                Value::Array(bases) => bases.clone(),
                base => vec![base.clone()],
            }) {
                for (key, value) in base.as_object().into_iter().flatten() {
                    object.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            Value::Object(object)
        }
        Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => Value::Null,
    }
}
