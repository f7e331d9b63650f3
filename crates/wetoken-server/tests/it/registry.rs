//! `wetoken-server install` and `start -r REGISTRY -c CLUSTER`, as processes, on `fs://` and on
//! the test ZooKeeper: settings and database from the registry, the server's announcement and its
//! removal, a ZooKeeper session lost and made again, and every missing or malformed node.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use wetoken_mock::{Endpoint, Fault};
use wetoken_registry::Registry;

use crate::harness::{
    Proxy, Replica, SECRET, TestDb, eventually, free_port, mock_with, on_every_database,
    server_command,
};

on_every_database!(install_then_start_from_each_registry);

/// The registries to test: `fs://` in a scratch directory, and ZooKeeper unless opted out.
fn registries(name: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "wetoken-registry-{name}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut urls = vec![format!("fs://{}", dir.display())];
    urls.extend(wetoken_registry::testing::zookeeper());
    urls
}

/// Runs `wetoken-server ARGS` to completion with nothing on standard input.
fn run(args: &[&str]) -> (bool, String, String) {
    let out = server_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wetoken-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONF: &str = "/wetoken/wetoken-server/t/conf";
const SERVERS: &str = "/wetoken/wetoken-server/t/servers";

async fn install_then_start_from_each_registry(db: &TestDb) {
    let mock = mock_with(&["wxreg"]).await;
    for (i, url) in registries("install").into_iter().enumerate() {
        let (ok, out, err) = run(&["install", "-r", &url, "-c", "t", "--database-url", &db.url]);
        assert!(ok, "{url}: {err}");
        assert!(
            out.contains(&format!("wrote the default settings to {url} {CONF}"))
                && out.contains("wrote the database node"),
            "{url}: {out}"
        );
        // Both registries name the same database: the first install creates the tables.
        let tables = if i == 0 {
            "created table wechat_app_info"
        } else {
            "nothing to do"
        };
        assert!(out.contains(tables), "{url}: {out}");
        // Again: everything is kept, nothing is created.
        let (ok, out, err) = run(&["install", "-r", &url, "-c", "t"]);
        assert!(ok, "{url}: {err}");
        assert!(
            out.contains("kept the settings")
                && out.contains("kept the database node")
                && out.contains("nothing to do")
                && !out.contains("created"),
            "{url}: {out}"
        );

        // The operator edits the settings node: the server takes its listen address and WeChat
        // from there, with no flag.
        let registry = Registry::open(&url).await.unwrap();
        let mut conf = registry.read_json(CONF).await.unwrap();
        assert_eq!(conf["listen"], "0.0.0.0:9999", "{conf}");
        let port = free_port();
        conf["listen"] = json!(format!("127.0.0.1:{port}"));
        conf["wechat_base_url"] = json!(mock.url());
        registry.write_json(CONF, &conf).await.unwrap();

        let mut command = server_command();
        command.args(["start", "-r", &url, "-c", "t"]);
        let mut server = Replica::spawn(command, port).await;
        let http = reqwest::Client::new();
        let created = http
            .post(format!("{}/wechat/app/create", server.url))
            .json(&json!({"appid": "wxreg", "secret": SECRET}))
            .send()
            .await
            .unwrap();
        // The second registry names the database the first one did: the app is there already.
        assert_eq!(created.status(), if i == 0 { 200 } else { 409 });
        let body: Value = http
            .get(format!("{}/wxreg/wechat/token/get", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["access_token"].as_str(),
            mock.current_token("wxreg").as_deref(),
            "{body}"
        );

        // Announced while it runs, gone once it stops.
        let name = format!("127.0.0.1:{port}");
        assert_eq!(
            registry.children(SERVERS).await.unwrap(),
            std::slice::from_ref(&name)
        );
        let node = registry
            .read_json(&format!("{SERVERS}/{name}"))
            .await
            .unwrap();
        assert_eq!(node["addr"], name.as_str());
        assert_eq!(node["pid"], server.pid());
        assert!(server.terminate().await.success());
        assert!(
            registry.children(SERVERS).await.unwrap().is_empty(),
            "{url}: the announcement outlived the server"
        );
    }
    assert_eq!(
        mock.calls(Endpoint::Token),
        1,
        "the second server serves the token the first one stored"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn missing_and_malformed_nodes_are_named() {
    for url in registries("nodes") {
        let registry = Registry::open(&url).await.unwrap();
        let start = ["start", "-r", &url, "-c", "t", "--listen", "127.0.0.1:0"];

        let (ok, _, err) = run(&start);
        assert!(!ok, "{url}");
        assert!(
            err.contains(&url)
                && err.contains(CONF)
                && err.contains("no node")
                && err.contains("wetoken-server install"),
            "{err}"
        );

        registry.write_json(CONF, &json!(["a list"])).await.unwrap();
        let (ok, _, err) = run(&start);
        assert!(
            !ok && err.contains(CONF) && err.contains("JSON object"),
            "{err}"
        );

        registry
            .write_json(CONF, &json!({"listne": "127.0.0.1:1"}))
            .await
            .unwrap();
        let (ok, _, err) = run(&start);
        assert!(!ok && err.contains(CONF) && err.contains("listne"), "{err}");

        registry.write_json(CONF, &json!({})).await.unwrap();
        let (ok, _, err) = run(&start);
        assert!(
            !ok && err.contains("/wetoken/var/db/db") && err.contains("no node"),
            "{err}"
        );

        registry
            .write_json(
                "/wetoken/var/db/db",
                &json!({"provider": "oracle", "connString": "scott/tiger@db"}),
            )
            .await
            .unwrap();
        let (ok, _, err) = run(&start);
        assert!(
            !ok && err.contains("/wetoken/var/db/db") && err.contains("use mysql or postgres"),
            "{err}"
        );

        // install refuses to guess a database when nobody can be asked.
        let (ok, _, err) = run(&["install", "-r", &url, "-c", "u", "--db-name", "absent"]);
        assert!(!ok && err.contains("pass --database-url"), "{err}");
        let (ok, _, err) = run(&[
            "install",
            "-r",
            &url,
            "-c",
            "u",
            "--db-name",
            "absent",
            "--database-url",
            "oracle://scott@db",
        ]);
        assert!(!ok && err.contains("--database-url"), "{err}");
        assert!(!registry.exists("/wetoken/var/db/absent").await.unwrap());
    }
    let (ok, _, err) = run(&["start", "-r", "zk://127.0.0.1:1", "-c", "t"]);
    assert!(
        !ok && err.contains("zk://127.0.0.1:1")
            && err.contains("unreachable")
            && err.contains(CONF),
        "{err}"
    );
    let (ok, _, err) = run(&["start", "-r", "fs:///tmp"]);
    assert!(!ok && err.contains("--cluster"), "{err}");
    let (ok, _, err) = run(&["start", "-r", "fs:///tmp", "-c", "../etc"]);
    assert!(!ok && err.contains("cluster"), "{err}");
}

/// ZooKeeper becomes unreachable for longer than the session timeout: ZooKeeper ends the session
/// and removes the announcement; the server keeps serving, and announces itself again in a new
/// session once ZooKeeper is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_zookeeper_session_is_made_again() {
    let Some(direct) = wetoken_registry::testing::zookeeper() else {
        return;
    };
    let (address, chroot) = direct["zk://".len()..].split_once('/').unwrap();
    let target = tokio::net::lookup_host(address)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let proxied = format!("zk://{}/{chroot}?session_timeout_ms=2000", proxy.addr);

    let db = TestDb::sqlite().await;
    let mock = mock_with(&["wxzk"]).await;
    let (ok, _, err) = run(&[
        "install",
        "-r",
        &proxied,
        "-c",
        "t",
        "--database-url",
        &db.url,
    ]);
    assert!(ok, "{err}");
    let port = free_port();
    let mut command = server_command();
    command.args(["start", "-r", &proxied, "-c", "t"]).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--wechat-base-url",
        &mock.url(),
    ]);
    let mut server = Replica::spawn(command, port).await;
    let watcher = Registry::open(&direct).await.unwrap();
    let name = format!("127.0.0.1:{port}");
    let announced = || async { watcher.children(SERVERS).await.unwrap() == [name.clone()] };
    assert!(announced().await);

    proxy.take_down();
    eventually(
        "ZooKeeper ends the unreachable server's session",
        Duration::from_secs(30),
        || async { watcher.children(SERVERS).await.unwrap().is_empty() },
    )
    .await;
    // Meanwhile the server serves.
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/wechat/app/create", server.url))
        .json(&json!({"appid": "wxzk", "secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let token = http
        .get(format!("{}/wxzk/wechat/token/get", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);

    proxy.bring_back();
    eventually(
        "the server announces itself again",
        Duration::from_secs(30),
        announced,
    )
    .await;
    assert!(
        server.terminate().await.success(),
        "the server did not crash"
    );
    assert!(watcher.children(SERVERS).await.unwrap().is_empty());
    mock.shutdown().await;
    db.drop_db().await;
}

/// On SIGTERM the announcement went only after in-flight requests had drained (and not at all
/// when serve failed), so for the whole drain the registry sent clients to a server that no
/// longer accepted them. It must be gone while a slow request is still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_announcement_goes_before_requests_drain() {
    let db = TestDb::sqlite().await;
    let mock = mock_with(&["wxdrain0", "wxdrain1"]).await;
    let http = reqwest::Client::new();
    for (i, url) in registries("drain").into_iter().enumerate() {
        let app = format!("wxdrain{i}");
        let (ok, _, err) = run(&["install", "-r", &url, "-c", "t", "--database-url", &db.url]);
        assert!(ok, "{url}: {err}");
        let port = free_port();
        let mut command = server_command();
        command
            .args(["start", "-r", &url, "-c", "t"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--wechat-base-url", &mock.url()])
            .env("WETOKEN_REFRESH__SCAN_INTERVAL_MS", "3600000");
        let mut server = Replica::spawn(command, port).await;
        let registry = Registry::open(&url).await.unwrap();
        assert_eq!(registry.children(SERVERS).await.unwrap().len(), 1, "{url}");
        let created = http
            .post(format!("{}/wechat/app/create", server.url))
            .json(&json!({"appid": app, "secret": SECRET}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200, "{url}");

        let fetches = mock.calls(Endpoint::Token);
        mock.inject(Endpoint::Token, Fault::Delay(Duration::from_secs(3)), 1);
        let in_flight = tokio::spawn({
            let (http, url) = (
                http.clone(),
                format!("{}/{app}/wechat/token/get", server.url),
            );
            async move { http.get(url).send().await.unwrap().status() }
        });
        eventually(
            "the request is in flight",
            Duration::from_secs(10),
            || async { mock.calls(Endpoint::Token) > fetches },
        )
        .await;
        let exit = tokio::spawn(async move { server.terminate().await });
        eventually(
            "the announcement is withdrawn",
            Duration::from_secs(10),
            || async { registry.children(SERVERS).await.unwrap().is_empty() },
        )
        .await;
        assert!(
            !in_flight.is_finished(),
            "{url}: the announcement outlived the drain"
        );
        assert_eq!(in_flight.await.unwrap(), 200, "{url}");
        assert!(exit.await.unwrap().success(), "{url}");
    }
    mock.shutdown().await;
    db.drop_db().await;
}

/// At a terminal, `install` asks for the database until an answer parses.
#[tokio::test]
async fn install_asks_for_the_database_at_a_terminal() {
    let dir = std::env::temp_dir().join(format!(
        "wetoken-registry-ask-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("fs://{}", dir.display());
    let database = format!("sqlite://{}/asked.db?mode=rwc", dir.display());
    // util-linux's `script` runs the command on a terminal of its own, fed from our stdin.
    let command = format!(
        "{} install -r {url} -c t",
        env!("CARGO_BIN_EXE_wetoken-server")
    );
    let answers = ["oracle://scott@db".to_owned(), database.clone()];
    let text = tokio::task::spawn_blocking(move || converse(&command, &answers))
        .await
        .unwrap();
    // Each answer is typed after its prompt, with echo off: it never shows.
    assert_eq!(text.matches("Database for wetoken").count(), 2, "{text}");
    assert!(!text.contains("scott@db"), "the answer was echoed: {text}");
    assert!(text.contains("not oracle://"), "{text}");
    assert!(text.contains("using sqlite://"), "{text}");
    assert!(text.contains("created table wechat_app_info"), "{text}");
    let registry = Registry::open(&url).await.unwrap();
    assert_eq!(
        registry.read_json("/wetoken/var/db/db").await.unwrap()["url"],
        database.as_str()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `command` on a terminal of its own (util-linux's `script`), typing each answer once the
/// output shows a prompt for it, and returns everything the terminal showed.
fn converse(command: &str, answers: &[String]) -> String {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("no end of the conversation within 60 s: {text}");
            }
        }
        let prompts = text.matches("not echoed): ").count();
        while answered < prompts.min(answers.len()) {
            // Give the prompt a moment to turn echo off before typing.
            std::thread::sleep(Duration::from_millis(200));
            stdin
                .write_all(format!("{}\n", answers[answered]).as_bytes())
                .unwrap();
            answered += 1;
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "{text}");
    text
}
