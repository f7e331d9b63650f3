//! The `wetoken-server` binary as a user runs it: the README's command, SIGTERM, bad settings.

use std::process::{Command, Stdio};
use std::time::Duration;

use wetoken_mock::{Endpoint, Fault};

use crate::harness::{self, SECRET, eventually, free_port, mock_with};

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wetoken-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server_command(dir: &std::path::Path) -> Command {
    let mut command = harness::server_command();
    command.current_dir(dir);
    command
}

/// Starts `wetoken-server start --log-format json` in `dir` on `port`, against `wechat`, with
/// `env`, its log to a pipe; returns once `/health` answers 200.
async fn start_json(
    dir: &std::path::Path,
    port: u16,
    wechat: &str,
    env: &[(&str, &str)],
) -> std::process::Child {
    let child = server_command(dir)
        .envs(env.iter().copied())
        .args([
            "start",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--wechat-base-url",
            wechat,
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    eventually(
        "the server answers /health",
        Duration::from_secs(30),
        || async {
            http.get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    child
}

/// The JSON body of a GET of `url`.
async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Sends `child` SIGTERM and waits for it: whether it exited 0, its log, and the log's lines
/// as JSON (each must be).
async fn stop_json(child: std::process::Child) -> (bool, String, Vec<serde_json::Value>) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (output.status.success(), log, lines)
}

#[tokio::test]
async fn default_start_creates_sqlite_serves_and_exits_cleanly_on_sigterm() {
    let mock = mock_with(&["wxbin"]).await;
    let dir = scratch_dir("start");
    let port = free_port();
    let master_key = wetoken_core::crypto::MasterKey::generate();
    let child = start_json(
        &dir,
        port,
        &mock.url(),
        &[
            ("WETOKEN_MASTER_KEY", &master_key),
            ("WETOKEN_CONSUMER_KEYS_RELOAD_MS", "50"),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(
        dir.join("wetoken.db").exists(),
        "the default SQLite file is created"
    );

    let created = http
        .get(format!(
            "{base}/wechat/app/create?appid=wxbin&secret={SECRET}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let body = get_json(&http, format!("{base}/wxbin/wechat/token/get")).await;
    assert_eq!(
        body["access_token"].as_str(),
        mock.current_token("wxbin").as_deref()
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // A consumer key, added by another process: the server needs it from then on.
    let db = format!("sqlite://{}", dir.join("wetoken.db").display());
    let store = wetoken_core::Store::connect(&wetoken_core::DatabaseOptions::new(&db))
        .await
        .unwrap();
    let new = wetoken_core::NewConsumerKey {
        name: "bin".into(),
        appids: vec![wetoken_core::AppId::parse("wxbin").unwrap()],
        allow_refresh: true,
        networks: vec![],
        refresh_limit: None,
    };
    let issued = store
        .add_consumer_key(&new, chrono::Utc::now())
        .await
        .unwrap();
    let consumer_key = issued.key.expose().to_owned();
    let token_url = format!("{base}/wxbin/wechat/token/get");
    // Refused as the Go wetoken refused, by default: HTTP 200 and a non-zero errcode.
    let errcode = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["errcode"].as_i64()
    };
    eventually("the key is required", Duration::from_secs(10), || async {
        let response = http.get(&token_url).send().await.unwrap();
        errcode(response).await == Some(90401)
    })
    .await;
    let keyed = http
        .get(&token_url)
        .bearer_auth(&consumer_key)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    let current: serde_json::Value = keyed.json().await.unwrap();
    let current = current["access_token"].as_str().unwrap().to_owned();
    // A report of a token WeChat still accepts: answered as it is, no fetch, and the key's
    // name logged (checked below), so the buggy caller can be found.
    let reported: serde_json::Value = http
        .get(format!(
            "{base}/wxbin/wechat/token/refresh?access_token={current}"
        ))
        .bearer_auth(&consumer_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reported["access_token"].as_str(), Some(current.as_str()));
    assert_eq!(mock.calls(Endpoint::Token), 1, "the report fetched nothing");
    let wrong = http
        .get(&token_url)
        .header("x-wetoken-key", format!("{consumer_key}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(wrong).await, Some(90401));
    // The key for an app it does not cover: 403, logged with the key's name (checked below).
    let out_of_scope = http
        .get(format!("{base}/wxother/wechat/token/get"))
        .bearer_auth(&consumer_key)
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(out_of_scope).await, Some(90403));
    // The Go SDK's way: the app's own secret (stored encrypted) in the query. A wrong one is
    // refused, and logged without it.
    const WRONG: &str = "a-wrong-secret-that-must-stay-out-of-the-log";
    let sdk = |secret: &str| format!("{token_url}?wxbin&secret={secret}");
    let own = http.get(sdk(SECRET)).send().await.unwrap();
    assert_eq!(errcode(own).await, Some(0));
    let refused = http.get(sdk(WRONG)).send().await.unwrap();
    assert_eq!(errcode(refused).await, Some(90401));
    // Stored encrypted under the master key.
    assert!(store.secrets_report().await.unwrap().plain == 0);
    // A plain secret written behind the server's back (by this keyless store) still works, and
    // the server says so when it reads it.
    const PLAIN: &str = "plain-secret-written-without-the-key";
    let update = wetoken_core::AppUpdate {
        secret: Some(wetoken_core::Secret::new(PLAIN)),
        ..wetoken_core::AppUpdate::default()
    };
    store
        .update_app(
            &wetoken_core::AppId::parse("wxbin").unwrap(),
            &update,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(store.secrets_report().await.unwrap().plain, 1);
    mock.add_app("wxbin", PLAIN);
    let refreshed = http
        .post(format!("{base}/wechat/app/refresh"))
        .json(&serde_json::json!({"appid": "wxbin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);

    let (exited_0, log, lines) = stop_json(child).await;
    assert!(exited_0, "{log}");
    for (what, secret) in [
        ("the app secret", SECRET),
        ("the consumer key", consumer_key.as_str()),
        ("the master key", master_key.as_str()),
        ("a refused secret", WRONG),
    ] {
        assert!(!log.contains(secret), "{what} reached the log:\n{log}");
    }
    assert!(log.contains("app secrets are encrypted at rest"), "{log}");
    assert!(
        log.contains("refused: the secret presented is not this app's"),
        "{log}"
    );
    assert!(
        log.contains("stored in plain text although a master key is configured"),
        "{log}"
    );
    assert!(
        !log.contains(PLAIN),
        "the plain secret reached the log:\n{log}"
    );
    // --log-format json: one JSON object a line; what happens in a request carries its id.
    let doubted = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("WeChat accepts it"))
        })
        .unwrap_or_else(|| panic!("no line about the report WeChat contradicted in\n{log}"));
    assert_eq!(doubted["fields"]["reporter"], "key bin", "{doubted}");
    assert_eq!(doubted["level"], "WARN", "{doubted}");
    // Every 401 and 403 has its line: the reason, the caller, and the key's name when known.
    let refusals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "refused")
        .collect();
    let scope = refusals
        .iter()
        .find(|l| l["span"]["path"] == "/wxother/wechat/token/get")
        .unwrap_or_else(|| panic!("no refusal line for the out-of-scope key in\n{log}"));
    assert_eq!(scope["span"]["key"], "bin", "{scope}");
    assert_eq!(scope["appid"], "wxother", "{scope}");
    assert_eq!(scope["level"], "WARN", "{scope}");
    assert!(scope["fields"]["peer"].is_string(), "{scope}");
    assert!(
        refusals
            .iter()
            .any(|l| l["span"]["key"] == "an unknown or revoked key"),
        "no refusal line for the wrong key in\n{log}"
    );
    assert!(
        refusals.len() >= 3,
        "the wrong key, the out-of-scope key and the wrong secret: {refusals:?}"
    );
    // sea-orm's migrator says nothing at info; the server's own line names what was applied.
    assert!(
        lines.iter().all(|l| !l["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sea_orm")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "applied migrations"),
        "{log}"
    );
    let added = lines
        .iter()
        .find(|l| l["fields"]["message"] == "app added")
        .unwrap_or_else(|| panic!("no 'app added' line in\n{log}"));
    assert!(added["span"]["request_id"].is_string(), "{added}");
    // The GET create with the secret in its query was logged, as deprecated, without it.
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("deprecated"))),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_fail_with_a_clear_message() {
    let dir = scratch_dir("bad");
    std::fs::write(dir.join("wetoken.toml"), "[refresh]\nmargin_secs = 9000\n").unwrap();
    let output = server_command(&dir)
        .args(["start", "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("margin_secs must be below"), "{err}");

    let output = server_command(&dir)
        .args(["start"])
        .env("WETOKEN_LISTEN", "not an address")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("reading settings") && err.to_lowercase().contains("listen"),
        "{err}"
    );

    // A bad flag names the flag's source, not a Rust type ("(&str, alloc::string::String)").
    let output = server_command(&dir)
        .args(["start", "--listen", "300.1.1.1:9999"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("\"default.listen\" in the command line")
            && !err.contains("::")
            && !err.contains("&str"),
        "{err}"
    );

    // In JSON mode the fatal line is JSON too, like every line before it.
    std::fs::remove_file(dir.join("wetoken.toml")).unwrap();
    let port = free_port();
    let output = server_command(&dir)
        .args(["start", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args([
            "--database-url",
            &format!("mysql://root@127.0.0.1:{port}/x"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot open database mysql://root:***@127.0.0.1:")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `wetoken-server ARGS` in `dir` to completion.
/// Runs the binary to its end: whether it succeeded, its stdout and its stderr. One that is still
/// running after 30 s (a start that should have been refused) is killed and counts as a failure
/// whose stderr says so, so a test fails rather than hangs.
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut child = server_command(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                false,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                format!(
                    "still running after 30 s: {args:?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kubernetes' service-link variables are ignored with one warning; `health` tells a running
/// server from none; a `--config` that does not exist and a placeholder key stop the start.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_survives_service_links_and_refuses_mistakes() {
    let dir = scratch_dir("startup");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");

    // Nothing listens yet: health says so.
    let (ok, _, err) = run(&dir, &["health", "--listen", &listen], &[]);
    assert!(!ok && err.contains(&listen), "{err}");

    let mut child = server_command(&dir)
        .env("WETOKEN_PORT", "tcp://10.0.0.1:9999")
        .env("WETOKEN_PORT_9999_TCP", "tcp://10.0.0.1:9999")
        .env("WETOKEN_SERVICE_HOST", "10.0.0.1")
        .env("WETOKEN_SERVICE_PORT", "9999")
        .args(["start", "--listen", &listen, "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        let mut last = (false, String::new(), String::new());
        for _ in 0..300 {
            last = run(&dir, &["health", "--listen", &listen], &[]);
            if last.0 {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                last.2 = format!("the server exited ({status})");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        last
    });
    assert!(ok, "the server did not become healthy: {err}");
    assert!(out.contains("/health"), "{out}");
    let (ok, _, err) = run(
        &dir,
        &["health", "--live"],
        &[("WETOKEN_LISTEN", &format!("0.0.0.0:{port}"))],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run(&dir, &["health", "--ready", "--listen", &listen], &[]);
    assert!(ok && out.contains("/ready"), "{out}{err}");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Kubernetes makes them"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    // The list is a JSON array, not the string of its Debug text.
    let warning: serde_json::Value = serde_json::from_str(warnings[0]).unwrap();
    assert_eq!(
        warning["fields"]["links"],
        serde_json::json!([
            "WETOKEN_PORT",
            "WETOKEN_PORT_9999_TCP",
            "WETOKEN_SERVICE_HOST",
            "WETOKEN_SERVICE_PORT",
        ]),
        "{log}"
    );

    let (ok, _, err) = run(&dir, &["start", "--config", "nowhere.toml"], &[]);
    assert!(
        !ok && err.contains("--config nowhere.toml: no such file"),
        "{err}"
    );
    let (ok, _, err) = run(
        &dir,
        &["start", "--listen", &listen],
        &[("WETOKEN_ADMIN_KEY", "CHANGE-ME-to-a-long-random-string")],
    );
    assert!(!ok && err.contains("placeholder"), "{err}");
    // A log filter that does not parse stops the start, in the chosen format, rather than
    // falling back to `info` in silence.
    for format in ["pretty", "json"] {
        let (ok, _, err) = run(
            &dir,
            &["start", "--listen", &listen, "--log-format", format],
            &[("WETOKEN_LOG", "info,wetoken_core=loud")],
        );
        assert!(
            !ok && err.contains("WETOKEN_LOG=") && err.contains("not a log filter"),
            "{err}"
        );
        if format == "json" {
            let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
            let line: serde_json::Value = serde_json::from_str(line).expect(line);
            assert_eq!(line["level"], "ERROR", "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json` for log collectors: every line about an app has `appid` at the top level
/// (a refresh's lines carry it only in their span), lists are arrays, and WeChat's refusals
/// carry its errcode and errmsg.
#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_name_their_app_at_the_top_and_keep_lists_as_arrays() {
    let mock = mock_with(&["wxlog", "wxbusy"]).await;
    let dir = scratch_dir("jsonlog");
    let port = free_port();
    let child = start_json(&dir, port, &mock.url(), &[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // A refresh, a refusal WeChat may take back (45009), and one for good (40013: an appid
    // WeChat does not know).
    for appid in ["wxlog", "wxbusy", "wxnone"] {
        let created = http
            .post(format!("{base}/wechat/app/create"))
            .json(&serde_json::json!({"appid": appid, "secret": SECRET}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200, "{appid}");
    }
    let token = |appid: &str| get_json(&http, format!("{base}/{appid}/wechat/token/get"));
    let first = token("wxlog").await;
    // A ticket fetch with a token WeChat no longer takes: the token is replaced once.
    mock.invalidate_token(first["access_token"].as_str().unwrap());
    let ticket = get_json(&http, format!("{base}/wxlog/wechat/ticket/get")).await;
    assert!(ticket["ticket"].is_string(), "{ticket}");
    mock.inject(Endpoint::Token, Fault::ErrCode(45009), 1);
    assert_eq!(token("wxbusy").await["errcode"], 45009);
    assert_eq!(token("wxnone").await["errcode"], 40013);

    let (_, log, lines) = stop_json(child).await;
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in\n{log}"))
    };
    let refreshed = line("refreshed");
    assert_eq!(refreshed["appid"], "wxlog", "{refreshed}");
    let refused = line("refresh refused");
    assert_eq!(refused["appid"], "wxbusy", "{refused}");
    assert_eq!(refused["fields"]["errcode"], 45009, "{refused}");
    assert!(
        refused["fields"]["errmsg"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{refused}"
    );
    let halted = line("WeChat refused for good; refreshing stops until the app's settings change");
    assert_eq!(halted["appid"], "wxnone", "{halted}");
    assert_eq!(halted["fields"]["errcode"], 40013, "{halted}");
    assert!(halted["fields"]["errmsg"].is_string(), "{halted}");
    let rejected = line("WeChat rejected the token a ticket fetch used; refreshing it once");
    assert_eq!(rejected["appid"], "wxlog", "{rejected}");
    assert_eq!(rejected["fields"]["errcode"], 40001, "{rejected}");
    assert!(rejected["fields"]["errmsg"].is_string(), "{rejected}");
    let added = line("app added");
    assert_eq!(added["appid"], "wxlog", "{added}");
    let applied = line("applied migrations");
    assert!(
        applied["fields"]["applied"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(serde_json::Value::is_string)),
        "{applied}"
    );
    // Whatever line names an app, in its fields or a span's, has it at the top.
    for l in &lines {
        let named = std::iter::once(&l["fields"])
            .chain(l["spans"].as_array().into_iter().flatten())
            .any(|f| f.get("appid").is_some());
        assert_eq!(named, l["appid"].is_string(), "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What one keep-alive client saw.
#[derive(Default, Debug)]
struct Tally {
    /// Requests answered 200 with a token.
    ok: u64,
    /// Of those, sent after SIGTERM.
    after_term: u64,
    /// Connections the server ended with `Connection: close` after an answer.
    closed: u64,
    /// Requests sent and never answered (a reset, or a close before the answer), or answered
    /// with something else than a token.
    lost: Vec<String>,
}

/// One request on `conn` and its answer: the status, whether the server closes the
/// connection after it, and the body.
async fn exchange(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    request: &[u8],
) -> Result<(u16, bool, String), String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    conn.get_mut()
        .write_all(request)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let (mut status, mut length, mut close) = (0u16, 0usize, false);
    let mut line = String::new();
    loop {
        line.clear();
        let n = conn
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("the connection closed before the answer".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
        } else if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
}

/// A keep-alive client in a loop, 10 ms between requests: it reuses its connection until the
/// server answers with `Connection: close`, then opens another, as long as `reconnect_until`
/// (set at SIGTERM: a load balancer stops sending new connections within the drain delay)
/// allows, and never past 30 s.
async fn keep_alive_client(
    addr: std::net::SocketAddr,
    path: String,
    termed: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
    reconnect_within: Duration,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Tally {
    use std::sync::atomic::Ordering;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes();
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    let mut tally = Tally::default();
    'connections: while std::time::Instant::now() < give_up {
        if termed.get().is_some_and(|t| t.elapsed() > reconnect_within) {
            break;
        }
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            // Refused: nothing was sent.
            break;
        };
        let mut conn = tokio::io::BufReader::new(stream);
        while std::time::Instant::now() < give_up {
            // Between two requests, on a connection or a new one: a few hundred connections in
            // all, not thousands of ephemeral ports that other tests bind at the same time.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let after_term = termed.get().is_some();
            match exchange(&mut conn, &request).await {
                Ok((200, close, body)) if body.contains("\"access_token\"") => {
                    tally.ok += 1;
                    tally.after_term += u64::from(after_term);
                    answered.fetch_add(1, Ordering::Relaxed);
                    if close {
                        tally.closed += 1;
                        continue 'connections;
                    }
                }
                Ok((status, _, body)) => {
                    tally.lost.push(format!("answered {status}: {body}"));
                    break 'connections;
                }
                Err(e) => {
                    tally.lost.push(e);
                    break 'connections;
                }
            }
        }
    }
    tally
}

/// SIGTERM under keep-alive load loses no request that was sent: during `http.drain_secs`
/// every answer carries `Connection: close` and `/ready` answers 503, so the clients leave on
/// their own; then the server stops accepting, finishes what is in flight and exits 0.
/// Before, SIGTERM stopped at once: the connections idle between two requests were closed
/// under the clients, whose next request met a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_keep_alive_load_loses_no_request() {
    const DRAIN_SECS: u64 = 2;
    const CLIENTS: usize = 6;
    let mock = mock_with(&["wxdrain"]).await;
    let dir = scratch_dir("drain");
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let log = dir.join("server.log");
    let mut child = server_command(&dir)
        .env("WETOKEN_HTTP__DRAIN_SECS", DRAIN_SECS.to_string())
        .args(["start", "--listen", &addr.to_string()])
        .args(["--wechat-base-url", &mock.url()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    eventually("the server is ready", Duration::from_secs(30), || async {
        http.get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let created = http
        .post(format!("{base}/wechat/app/create"))
        .json(&serde_json::json!({"appid": "wxdrain", "secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);

    let termed = std::sync::Arc::new(std::sync::OnceLock::new());
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(keep_alive_client(
                addr,
                "/wxdrain/wechat/token/get".into(),
                termed.clone(),
                Duration::from_millis(DRAIN_SECS * 1000 / 2),
                answered.clone(),
            ))
        })
        .collect();
    eventually("the load is under way", Duration::from_secs(10), || async {
        answered.load(std::sync::atomic::Ordering::Relaxed) >= 20 * CLIENTS as u64
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    termed.set(std::time::Instant::now()).unwrap();
    eventually("/ready answers 503", Duration::from_secs(1), || async {
        http.get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let stopped_after = termed.get().unwrap().elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{text}"
    );
    assert!(
        stopped_after >= Duration::from_secs(DRAIN_SECS),
        "stopped {stopped_after:?} after SIGTERM, before the drain delay"
    );
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await.unwrap();
        total.ok += tally.ok;
        total.after_term += tally.after_term;
        total.closed += tally.closed;
        total.lost.extend(tally.lost);
    }
    eprintln!(
        "{} requests answered, {} after SIGTERM, {} connections closed by the server",
        total.ok, total.after_term, total.closed
    );
    assert!(total.lost.is_empty(), "lost: {:?}\n{text}", total.lost);
    assert!(total.after_term > 0, "nothing was served while draining");
    assert!(
        total.closed >= CLIENTS as u64,
        "every client was told to close"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
