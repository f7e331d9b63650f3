//! The CLI, run as a process.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use wetoken_mock::{Endpoint, MockWeChat};
use wetoken_registry::Registry;
use wetoken_testkit::{Backend, TestDb};

mod authorizers;
mod quota_guard;
mod settings;

fn cli(args: &[&str]) -> (bool, String, String) {
    run_cli(None, args, "", &[])
}

/// Runs the CLI with `input` on its standard input (not a terminal).
fn cli_with_input(args: &[&str], input: &str) -> (bool, String, String) {
    run_cli(None, args, input, &[])
}

/// Runs the CLI with `env`.
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    run_cli(None, args, "", env)
}

/// Runs the CLI in `dir` (else the test's own working directory) with `input` on its standard
/// input, `env`, and none of the developer's `WETOKEN_*` settings.
fn run_cli(
    dir: Option<&std::path::Path>,
    args: &[&str],
    input: &str,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wetoken-cli"));
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("WETOKEN_") && !key.starts_with("WETOKEN_TEST_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wetoken-cli");
    // The CLI may exit before reading; a broken pipe here is its business.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().expect("wait for wetoken-cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_up_is_idempotent_and_status_reports_it() {
    let dir = std::env::temp_dir().join(format!("wetoken-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("cli.db").display());

    // No file yet: status says so and creates none; `migrate up` is what creates it.
    let (ok, _, err) = cli(&["migrate", "status", "--database-url", &url]);
    assert!(!ok && err.contains("no database at"), "{err}");
    assert!(!dir.join("cli.db").exists());

    let (ok, out, err) = cli(&["migrate", "up", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(
        out.contains("applied m20261124_000001_create_tables"),
        "{out}"
    );

    let (ok, out, err) = cli(&["migrate", "up", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("nothing to do"), "{out}");

    let (ok, out, _) = cli(&["migrate", "status", "--database-url", &url]);
    assert!(ok && out.starts_with("applied"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_database_is_a_clear_failure() {
    let (ok, _, err) = cli(&[
        "migrate",
        "up",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert!(!ok);
    assert!(
        err.starts_with("wetoken-cli: opening the database"),
        "{err}"
    );
    // Where, and why, in one line: not only "pool timed out".
    assert!(
        err.contains("cannot connect to 127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert_eq!(err.matches("connection refused").count(), 1, "{err}");
}

/// A fresh database on `backend` ("sqlite", "mysql" or "postgres") for `test`, from the harness
/// the server's tests use too: `None`, announced as skipped, when the developer opted out of it
/// (never under CI).
async fn fresh_database(backend: &str, test: &str) -> Option<TestDb> {
    let backend = Backend::ALL
        .into_iter()
        .find(|b| b.name() == backend)
        .expect("a backend name");
    TestDb::create(backend, test).await
}

/// The registries to test: `fs://` under `dir` always, ZooKeeper unless the developer opted out.
fn registries(dir: &std::path::Path) -> Vec<String> {
    let fs = dir.join("registry");
    std::fs::create_dir_all(&fs).unwrap();
    let mut urls = vec![format!("fs://{}", fs.display())];
    urls.extend(wetoken_registry::testing::zookeeper());
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_creates_the_tables_a_registry_names_once() {
    for backend in ["sqlite", "mysql", "postgres"] {
        let dir =
            std::env::temp_dir().join(format!("wetoken-install-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for registry_url in registries(&dir) {
            let Some(db) =
                fresh_database(backend, "install_creates_the_tables_a_registry_names_once").await
            else {
                continue;
            };
            let url = db.url.clone();
            let registry = Registry::open(&registry_url).await.unwrap();
            // MySQL in the Go/hydra form, the others as plain URLs.
            let node = if backend == "mysql" {
                let rest = url.strip_prefix("mysql://").unwrap();
                let (user, rest) = rest.split_once('@').unwrap();
                let (host, db) = rest.split_once('/').unwrap();
                json!({"provider": "mysql", "connString": format!("{user}@tcp({host})/{db}?charset=utf8"), "maxOpen": 4})
            } else {
                json!({"url": url})
            };
            registry.write_json("/mall/var/db/db", &node).await.unwrap();

            let (ok, out, err) = cli(&["install", &registry_url, "mall"]);
            assert!(ok, "{backend} {registry_url}: {err}");
            for table in [
                "wechat_app_info",
                "wechat_access_token",
                "wechat_jsapi_ticket",
                "wechat_card_ticket",
            ] {
                assert!(
                    out.contains(&format!("created table {table}")),
                    "{backend} {registry_url}: {out}"
                );
            }
            let (ok, out, err) = cli(&["install", &registry_url, "mall"]);
            assert!(ok, "{backend} {registry_url}: {err}");
            assert!(
                out.contains("nothing to do") && !out.contains("created"),
                "{backend} {registry_url}: {out}"
            );
            // The other commands find the database through the registry too, over the
            // environment's database.
            let (ok, out, err) = cli_env(
                &[
                    "migrate",
                    "status",
                    "-r",
                    &registry_url,
                    "--platform",
                    "mall",
                ],
                &[("WETOKEN_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
            );
            assert!(
                ok && out.starts_with("applied") && !out.contains("pending"),
                "{out}{err}"
            );

            // Failures name the registry, the node and the cause, and exit non-zero.
            let (ok, _, err) = cli(&["install", &registry_url, "shop"]);
            assert!(
                !ok && err.contains(&registry_url)
                    && err.contains("/shop/var/db/db")
                    && err.contains("no node"),
                "{err}"
            );
            registry
                .write_json(
                    "/mall/var/db/ora",
                    &json!({"provider":"oracle","connString":"x"}),
                )
                .await
                .unwrap();
            let (ok, _, err) = cli(&["install", &registry_url, "mall", "ora"]);
            assert!(!ok && err.contains("use mysql or postgres"), "{err}");
            registry
                .write_json("/mall/var/db/bare", &json!(["not", "an", "object"]))
                .await
                .unwrap();
            let (ok, _, err) = cli(&["install", &registry_url, "mall", "bare"]);
            assert!(
                !ok && err.contains("/mall/var/db/bare") && err.contains("malformed"),
                "{err}"
            );
            db.drop_db().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every registry error names the registry, the path and the cause; an unreachable registry's
/// error named no path.
#[test]
fn an_unreachable_registry_is_a_clear_failure() {
    let (ok, _, err) = cli(&["install", "zk://127.0.0.1:1", "mall"]);
    assert!(
        !ok && err.contains("zk://127.0.0.1:1")
            && err.contains("unreachable")
            && err.contains("/mall/var/db/db"),
        "{err}"
    );
    let (ok, _, err) = cli(&["install", "fs:///nonexistent/registry", "mall", "mdb"]);
    assert!(
        !ok && err.contains("/nonexistent/registry") && err.contains("/mall/var/db/mdb"),
        "{err}"
    );
    let (ok, _, err) = cli(&["install", "etcd://127.0.0.1", "mall"]);
    assert!(!ok && err.contains("expected fs://"), "{err}");
}

const APP: &str = "wx9e02ddcc34513fd4";
const SECRET: &str = "6acb2b999177524beba3d97d54df2de5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_tokens_and_tickets_from_the_command_line() {
    for backend in ["sqlite", "mysql", "postgres"] {
        let dir =
            std::env::temp_dir().join(format!("wetoken-apps-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let Some(database) =
            fresh_database(backend, "apps_tokens_and_tickets_from_the_command_line").await
        else {
            continue;
        };
        let url = database.url.clone();
        let db = ["--database-url", url.as_str()];
        let with_db = |args: &[&str]| -> Vec<String> {
            args.iter()
                .chain(db.iter())
                .map(|s| s.to_string())
                .collect()
        };
        let run = |args: &[&str], input: &str| {
            let args = with_db(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli_with_input(&args, input)
        };

        // Before the tables exist, the app commands say what to do.
        let (ok, _, err) = run(&["app", "list"], "");
        assert!(!ok && err.contains("migrate up"), "{backend}: {err}");
        assert!(run(&["migrate", "up"], "").0);
        let (ok, out, _) = run(&["app", "list"], "");
        assert!(ok && out.contains("no apps yet"), "{out}");

        // The secret comes from standard input and is never printed again.
        let (ok, out, err) = run(&["app", "add", APP], &format!("{SECRET}\n"));
        assert!(ok, "{backend}: {err}");
        assert!(out.contains(&format!("added {APP} (mp, classic)")), "{out}");
        let (ok, _, err) = run(&["app", "add", APP], &format!("{SECRET}\n"));
        assert!(!ok && err.contains("already exists"), "{err}");
        let (ok, _, err) = run(&["app", "add", "wx_other"], "");
        assert!(!ok && err.contains("no secret given"), "{err}");
        let (ok, out, err) = run(
            &[
                "app",
                "add",
                "--kind",
                "work",
                "--corpid",
                APP,
                "--agentid",
                "1000002",
                "--token-mode",
                "stable",
            ],
            "work-secret\n",
        );
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("added {APP}.1000002 (work, stable)")),
            "{out}"
        );
        let (ok, _, err) = run(&["app", "add", "--kind", "work", "--agentid", "1"], "s\n");
        assert!(!ok && err.contains("corpid is required"), "{err}");
        let (ok, _, err) = run(&["app", "add", "--kind", "wechat", APP], "s\n");
        assert!(!ok && err.contains("invalid value 'wechat'"), "{err}");
        let (ok, _, err) = run(&["app", "add", "bad/appid"], "s\n");
        assert!(!ok && err.contains("malformed appid"), "{err}");
        let (ok, _, err) = run(&["app", "add", "wx_budget", "--daily-budget", "0"], "s\n");
        assert!(!ok && err.contains("daily_budget"), "{err}");

        let (ok, out, _) = run(&["app", "list"], "");
        assert!(ok, "{out}");
        assert!(
            out.contains(APP) && out.contains(&format!("{APP}.1000002")),
            "{out}"
        );
        let (ok, out, _) = run(&["app", "show", APP], "");
        assert!(
            ok && out.contains("secret:       set (never shown)"),
            "{out}"
        );

        // Tokens and tickets: fetched once, then served from the database.
        let mock = MockWeChat::start().await.unwrap();
        mock.add_app(APP, "new-secret");
        let wechat = mock.url();
        let (ok, _, err) = run(&["token", "get", APP, "--wechat-base-url", &wechat], "");
        assert!(
            !ok && err.contains("40125"),
            "the old secret is refused: {err}"
        );
        let (ok, out, err) = run(&["app", "update", APP, "--secret"], "new-secret\n");
        assert!(ok && out.contains("updated"), "{err}");
        let (ok, first, err) = run(&["token", "get", APP, "--wechat-base-url", &wechat], "");
        assert!(ok, "{err}");
        assert!(err.contains("expires at"), "{err}");
        let (ok, second, _) = run(&["token", "get", APP, "--wechat-base-url", &wechat], "");
        assert!(ok);
        assert_eq!(first.trim(), mock.current_token(APP).unwrap());
        assert_eq!(first, second);
        let (ok, ticket, err) = run(&["ticket", "get", APP, "--wechat-base-url", &wechat], "");
        assert!(ok, "{err}");
        assert_eq!(ticket.trim(), mock.current_ticket(APP, "jsapi").unwrap());
        let (ok, card, err) = run(
            &[
                "ticket",
                "get",
                APP,
                "--type",
                "wx_card",
                "--wechat-base-url",
                &wechat,
            ],
            "",
        );
        assert!(ok, "{err}");
        assert_eq!(card.trim(), mock.current_ticket(APP, "wx_card").unwrap());
        assert_eq!(mock.calls(Endpoint::Token), 2, "one refused, one issued");
        let (ok, _, err) = run(
            &["token", "get", "wx_unknown", "--wechat-base-url", &wechat],
            "",
        );
        assert!(!ok && err.contains("unknown app wx_unknown"), "{err}");

        let (ok, out, _) = run(&["app", "show", APP], "");
        assert!(
            ok && out.contains("left") && out.contains("last:       success"),
            "{out}"
        );
        let (ok, _, err) = run(&["app", "update", APP], "");
        assert!(!ok && err.contains("nothing to update"), "{err}");
        let (ok, _, err) = run(
            &["app", "update", "wx_unknown", "--token-mode", "stable"],
            "",
        );
        assert!(!ok && err.contains("unknown app"), "{err}");
        let (ok, _, err) = run(&["app", "update", APP, "--token-mode", "stable"], "");
        assert!(ok, "{err}");
        let (ok, out, _) = run(&["app", "show", APP], "");
        assert!(ok && out.contains("token mode:   stable"), "{out}");

        let (ok, out, _) = run(&["app", "remove", &format!("{APP}.1000002")], "");
        assert!(ok && out.contains("removed"), "{out}");
        let (ok, _, err) = run(&["app", "remove", &format!("{APP}.1000002")], "");
        assert!(!ok && err.contains("unknown app"), "{err}");

        // Once secrets are encrypted, adding one without the master key is refused, not
        // stored in plain text.
        let (ok, key, _) = cli(&["secrets", "new-key"]);
        assert!(ok);
        let sealed = with_db(&["app", "add", "wx_sealed"]);
        let sealed: Vec<&str> = sealed.iter().map(String::as_str).collect();
        let (ok, _, err) = run_cli(
            None,
            &sealed,
            "sealed-secret\n",
            &[("WETOKEN_MASTER_KEY", key.trim())],
        );
        assert!(ok, "{err}");
        let (ok, _, err) = run(&["app", "add", "wx_plain"], "plain-secret\n");
        assert!(!ok && err.contains("no master key"), "{err}");
        let (ok, _, err) = run(
            &["app", "update", "wx_sealed", "--secret"],
            "plain-secret\n",
        );
        assert!(!ok && err.contains("no master key"), "{err}");

        // Nothing any command printed holds a secret.
        for secret in [SECRET, "new-secret", "work-secret"] {
            let (_, out, err) = run(&["app", "list"], "");
            let (_, show, _) = run(&["app", "show", APP], "");
            assert!(!out.contains(secret) && !err.contains(secret) && !show.contains(secret));
        }
        mock.shutdown().await;
        database.drop_db().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn key_add_shows_the_key_once_list_never_and_revoke_takes_id_or_name() {
    let dir = std::env::temp_dir().join(format!("wetoken-cli-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    let db = ["--database-url", url.as_str()];

    let (ok, _, err) = cli(&[
        &["key", "add", "--name", "early", "--appid", "wx1"][..],
        &db,
    ]
    .concat());
    assert!(!ok && err.contains("migrate up"), "{err}");
    // Nothing was created where no database was: a command run in the wrong directory says so.
    assert!(err.contains("no database at"), "{err}");
    let (ok, _, err) = cli(&[&["migrate", "status"][..], &db].concat());
    assert!(!ok && err.contains("no database at"), "{err}");
    assert!(
        !dir.join("keys.db").exists(),
        "an empty database was left behind"
    );
    assert!(cli(&[&["migrate", "up"][..], &db].concat()).0);

    let add = |name: &str, extra: &[&str]| {
        let args = [
            &["key", "add", "--name", name, "--appid", "wx1"][..],
            extra,
            &db,
        ]
        .concat();
        cli(&args)
    };
    let (ok, key, err) = add(
        "mall",
        &["--appid", "wx2", "--no-refresh", "--allow", "10.0.0.0/8"],
    );
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("wtk_") && key.len() > 40, "{key:?}");
    assert!(err.contains("shown once"), "{err}");
    // No app is registered yet: the key is made, with a warning for each appid.
    for appid in ["wx1", "wx2"] {
        assert!(
            err.contains(&format!("warning: no app {appid} is registered")),
            "{err}"
        );
    }
    let (ok, _, err) = cli_with_input(&[&["app", "add", "wx1"][..], &db].concat(), "s\n");
    assert!(ok, "{err}");
    let (ok, other, err) = add("shop", &[]);
    assert!(ok);
    assert!(!err.contains("warning"), "wx1 is registered now: {err}");
    assert_ne!(other.trim(), key);
    let (ok, _, err) = add("mall", &[]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = add("bad", &["--allow", "10.0.0.0/33"]);
    assert!(!ok && err.contains("CIDR"), "{err}");
    let (ok, _, err) = add("bad", &["--appid", "wx/../x"]);
    assert!(!ok && err.contains("appid"), "{err}");

    let (ok, list, err) = cli(&[&["key", "list"][..], &db].concat());
    assert!(ok, "{err}");
    assert!(
        !list.contains(&key) && !list.contains(other.trim()),
        "{list}"
    );
    let mall = list.lines().find(|l| l.contains(" mall ")).expect(&list);
    assert!(
        mall.contains("wx1,wx2") && mall.contains("10.0.0.0/8") && mall.contains(" no "),
        "{mall}"
    );
    let mall_id = mall.split_whitespace().next().unwrap().to_owned();
    let shop = list.lines().find(|l| l.contains(" shop ")).expect(&list);
    assert!(shop.contains(" default "), "{shop}");

    // Passive-refresh limits: both numbers, in bounds; shown by key list; back to the default.
    let (ok, _, err) = add(
        "paced",
        &["--refresh-burst", "3", "--refresh-per-minute", "60"],
    );
    assert!(ok, "{err}");
    for (bad, says) in [
        (&["--refresh-burst", "3"][..], "--refresh-per-minute"),
        (
            &["--refresh-burst", "0", "--refresh-per-minute", "6"][..],
            "1 to 1000",
        ),
        (
            &["--refresh-burst", "3", "--refresh-per-minute", "6001"][..],
            "1 to 6000",
        ),
        (
            &[
                "--no-refresh",
                "--refresh-burst",
                "3",
                "--refresh-per-minute",
                "6",
            ][..],
            "--no-refresh",
        ),
    ] {
        let (ok, _, err) = add("bad", bad);
        assert!(!ok && err.contains(says), "{bad:?}: {err}");
    }
    let limit = |args: &[&str]| cli(&[&["key", "limit"][..], args, &db].concat());
    let (_, list, _) = cli(&[&["key", "list"][..], &db].concat());
    let paced = list.lines().find(|l| l.contains(" paced ")).expect(&list);
    assert!(paced.contains(" 3+60/min "), "{paced}");
    let (ok, out, err) = limit(&[
        "paced",
        "--refresh-burst",
        "20",
        "--refresh-per-minute",
        "12",
    ]);
    assert!(ok && out.contains("20 at once, 12 a minute"), "{out}{err}");
    let (ok, _, err) = limit(&["paced"]);
    assert!(!ok && err.contains("--default"), "{err}");
    let (ok, out, err) = limit(&["paced", "--default"]);
    assert!(ok && out.contains("default"), "{out}{err}");
    let (_, list, _) = cli(&[&["key", "list"][..], &db].concat());
    let paced = list.lines().find(|l| l.contains(" paced ")).expect(&list);
    assert!(paced.contains(" default "), "{paced}");
    let (ok, _, err) = limit(&["nobody", "--default"]);
    assert!(!ok && err.contains("no consumer key"), "{err}");

    let (ok, out, err) = cli(&[&["key", "revoke", &mall_id][..], &db].concat());
    assert!(ok && out.contains(&mall_id), "{err}");
    let (ok, out, _) = cli(&[&["key", "revoke", "shop"][..], &db].concat());
    assert!(ok && out.starts_with("revoked"), "{out}");
    assert!(cli(&[&["key", "revoke", "paced"][..], &db].concat()).0);
    let (ok, _, err) = cli(&[&["key", "revoke", "nobody"][..], &db].concat());
    assert!(!ok && err.contains("no consumer key"), "{err}");
    let (_, list, _) = cli(&[&["key", "list"][..], &db].concat());
    assert!(
        list.lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(5).is_some_and(|r| r != "-")),
        "every key revoked: {list}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn secrets_rotate_key_re_encrypts_every_row_under_the_new_key() {
    use std::sync::Arc;
    use wetoken_core::crypto::MasterKey;
    use wetoken_core::{AppId, DatabaseOptions, Keyring, NewApp, Secret, Store};

    let dir = std::env::temp_dir().join(format!("wetoken-cli-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("rotate.db").display());
    let db = ["--database-url", url.as_str()];
    let (ok, old, err) = cli(&["secrets", "new-key"]);
    assert!(ok);
    let (old, new) = (old.trim().to_owned(), MasterKey::generate());
    assert_eq!(old.len(), 44);
    assert_eq!(
        err.trim(),
        format!(
            "master key id {}",
            MasterKey::parse(&old, "k").unwrap().id()
        )
    );
    let ring = |current: &str, previous: Option<&str>| {
        let parse = |k: &str| MasterKey::parse(k, "k").unwrap();
        Arc::new(Keyring::new(parse(current), previous.map(parse)))
    };
    let open = |keyring| {
        let mut options = DatabaseOptions::new(&url);
        options.keyring = Some(keyring);
        async move { Store::connect(&options).await.unwrap() }
    };

    // Two apps written under the old key, one in plain text from before.
    let store = open(ring(&old, None)).await;
    store.migrate().await.unwrap();
    let app = |id: &str| {
        NewApp::mp(
            AppId::parse(id).unwrap(),
            Secret::new(format!("secret-of-{id}")),
        )
    };
    store
        .insert_app(&app("wxa"), chrono::Utc::now())
        .await
        .unwrap();
    store
        .insert_app(&app("wxb"), chrono::Utc::now())
        .await
        .unwrap();
    Store::connect(&DatabaseOptions::new(&url))
        .await
        .unwrap()
        .insert_app(&app("wxc"), chrono::Utc::now())
        .await
        .unwrap();
    let old_id = ring(&old, None).current_id().to_owned();
    let new_id = ring(&new, None).current_id().to_owned();

    let (ok, out, err) = cli_env(
        &[&["secrets", "status"][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", &old)],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("plain      1") && out.contains(&format!("key {old_id} 2 (master_key)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("master_key          id {old_id}")),
        "{out}"
    );

    // Without the old key the old rows cannot be read: those are refused and left alone (the
    // plain one, readable, is encrypted).
    // A key id that is not the given key's: refused before anything is touched.
    let (ok, _, err) = cli_env(
        &[&["secrets", "rotate-key", "--key-id", &old_id][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", &new)],
    );
    assert!(
        !ok && err.contains(&format!("has id {new_id}, not {old_id}")),
        "{err}"
    );
    let (_, out, _) = cli_env(
        &[&["secrets", "status"][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", &old)],
    );
    assert!(out.contains("plain      1"), "nothing changed: {out}");

    let (ok, _, err) = cli_env(
        &[&["secrets", "rotate-key", "--key-id", &new_id][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", &new)],
    );
    assert!(
        !ok && err.contains("could not be decrypted") && err.contains(&old_id),
        "{err}"
    );
    assert!(
        !err.contains(&old) && !err.contains(&new),
        "a key reached the output: {err}"
    );

    // With both: every value moves to the new key, the plain one included.
    let previous = dir.join("previous.key");
    std::fs::write(&previous, format!("{old}\n")).unwrap();
    let (ok, out, err) = cli_env(
        &[
            &[
                "secrets",
                "rotate-key",
                "--key-id",
                &new_id,
                "--previous-key-file",
                previous.to_str().unwrap(),
            ][..],
            &db,
        ]
        .concat(),
        &[("WETOKEN_MASTER_KEY", &new)],
    );
    assert!(ok, "{err}");
    // The first run did what it could: the plain value. This one moves the other two.
    assert!(out.contains("re-encrypted 2 values"), "{out}");
    let (_, out, _) = cli_env(
        &[&["secrets", "status"][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", &new)],
    );
    assert!(
        out.contains("plain      0") && out.contains(&format!("key {new_id} 3 (master_key)")),
        "{out}"
    );
    assert!(!out.contains(&old_id), "{out}");
    // The new key alone reads every app.
    let store = open(ring(&new, None)).await;
    for id in ["wxa", "wxb", "wxc"] {
        let got = store
            .app(&AppId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.secret.expose(), format!("secret-of-{id}"));
    }
    let (ok, _, err) = cli_env(
        &[&["secrets", "status"][..], &db].concat(),
        &[("WETOKEN_MASTER_KEY", "short")],
    );
    assert!(!ok && err.contains("master_key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows from a plain-text schema (the Go wetoken's, or written without a key) are encrypted by
/// `migrate up --encrypt-secrets` with the master key, and counted otherwise.
#[tokio::test]
async fn migrate_up_encrypts_plain_secrets_when_asked() {
    use sea_orm::ConnectionTrait;
    use wetoken_core::{AppId, DatabaseOptions, NewApp, Secret, Store};

    let dir = std::env::temp_dir().join(format!("wetoken-cli-seal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("seal.db").display());
    let db = ["--database-url", url.as_str()];
    let plain = Store::connect(&DatabaseOptions::new(&url)).await.unwrap();
    plain.migrate().await.unwrap();
    for id in ["wxplain1", "wxplain2"] {
        let app = NewApp::mp(AppId::parse(id).unwrap(), Secret::new(format!("s-{id}")));
        plain.insert_app(&app, chrono::Utc::now()).await.unwrap();
    }

    let (ok, out, err) = cli_env(&[&["migrate", "up"][..], &db].concat(), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("2 secrets are stored in plain text"), "{out}");

    // A key in the environment alone encrypts nothing: older servers may still be reading.
    let (_, key, _) = cli(&["secrets", "new-key"]);
    let key = key.trim().to_owned();
    let with_key = [("WETOKEN_MASTER_KEY", key.as_str())];
    let (ok, out, err) = cli_env(&[&["migrate", "up"][..], &db].concat(), &with_key);
    assert!(ok, "{err}");
    assert!(out.contains("2 secrets are stored in plain text"), "{out}");
    // Asked to, without a key: refused.
    let (ok, _, err) = cli_env(
        &[&["migrate", "up", "--encrypt-secrets"][..], &db].concat(),
        &[],
    );
    assert!(!ok && err.contains("needs the master key"), "{err}");

    let (ok, out, err) = cli_env(
        &[&["migrate", "up", "--encrypt-secrets"][..], &db].concat(),
        &with_key,
    );
    assert!(ok, "{err}");
    assert!(out.contains("encrypted 2 stored secrets"), "{out}");
    let (ok, out, err) = cli_env(&[&["secrets", "status"][..], &db].concat(), &with_key);
    assert!(ok, "{err}");
    assert!(
        out.contains("plain      0") && !out.contains("unbound"),
        "{out}"
    );
    // A value from before seal generations (`wtenc:v1`, in a row at generation 0) is counted
    // as unbound, and the next encrypting run binds it.
    let keyring = wetoken_core::Keyring::new(
        wetoken_core::crypto::MasterKey::parse(&key, "key").unwrap(),
        None,
    );
    let v1 = keyring
        .seal("s-wxplain1", b"wetoken/wechat_app_info/secret/wxplain1")
        .replacen("wtenc:v2:", "wtenc:v1:", 1);
    plain
        .connection()
        .execute_unprepared(&format!(
            "UPDATE wechat_app_info SET secret = '{v1}', seal_generation = 0 \
             WHERE appid = 'wxplain1'"
        ))
        .await
        .unwrap();
    let (ok, out, err) = cli_env(&[&["secrets", "status"][..], &db].concat(), &with_key);
    assert!(ok, "{err}");
    assert!(out.contains("unbound    1 (wtenc:v1"), "{out}");
    let (ok, _, err) = cli_env(
        &[&["migrate", "up", "--encrypt-secrets"][..], &db].concat(),
        &with_key,
    );
    assert!(ok, "{err}");
    let (_, out, _) = cli_env(&[&["secrets", "status"][..], &db].concat(), &with_key);
    assert!(!out.contains("unbound"), "{out}");
    // A second run has nothing left to do.
    let (ok, out, _) = cli_env(
        &[&["migrate", "up", "--encrypt-secrets"][..], &db].concat(),
        &with_key,
    );
    assert!(ok);
    assert!(out.contains("encrypted 0 stored secrets"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import`: apps with the Go fields and their live tokens from JSON lines and CSV, served
/// without calling WeChat; a malformed file imports nothing; a second import keeps what is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_loads_apps_and_live_tokens_from_an_export() {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app("wximp2", "s2");
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    for backend in ["sqlite", "mysql", "postgres"] {
        let dir =
            std::env::temp_dir().join(format!("wetoken-import-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let Some(database) =
            fresh_database(backend, "import_loads_apps_and_live_tokens_from_an_export").await
        else {
            continue;
        };
        let url = database.url.clone();
        let (ok, _, err) = cli(&["migrate", "up", "--database-url", &url]);
        assert!(ok, "{err}");
        let jsonl = dir.join("apps.jsonl");
        std::fs::write(
            &jsonl,
            format!(
                "{}\n\n{}\n",
                json!({"appid": "wximp1", "secret": "s1", "aesKey": "k1", "mchid": "19",
                       "payKey": "pk", "wcode_template_id": "TPL",
                       "access_token": "IMPORTED_TOKEN", "access_token_expires_at": later,
                       "ticket": "IMPORTED_TICKET", "ticket_expires_at": later}),
                json!({"appid": "wximp2", "secret": "s2",
                       "access_token": "OLD", "access_token_expires_at": earlier}),
            ),
        )
        .unwrap();
        let (ok, out, err) = cli(&["import", jsonl.to_str().unwrap(), "--database-url", &url]);
        assert!(ok, "{backend}: {err}");
        assert!(
            out.contains("imported 2 apps and 2 live tokens and tickets")
                && out.contains("skipped 1 expired"),
            "{backend}: {out}"
        );
        let (ok, out, _) = cli(&["app", "show", "wximp1", "--database-url", &url]);
        assert!(
            ok && out.contains("mchid:        19")
                && out.contains("wcode_template_id: TPL")
                && out.contains("pay key:      set")
                && out.contains("aes key:      set")
                && !out.contains("pk\n"),
            "{backend}: {out}"
        );
        let get = |appid: &'static str| {
            let (url, mock) = (url.clone(), mock.url());
            move || {
                cli(&[
                    "token",
                    "get",
                    appid,
                    "--database-url",
                    &url,
                    "--wechat-base-url",
                    &mock,
                ])
            }
        };
        let (ok, out, err) = get("wximp1")();
        assert!(
            ok && out.trim() == "IMPORTED_TOKEN",
            "{backend}: {out}{err}"
        );
        assert_eq!(mock.calls(Endpoint::Token), 0, "{backend}");
        // The expired one is fetched when first needed.
        let (ok, out, err) = get("wximp2")();
        assert!(ok && out.trim() != "OLD", "{backend}: {out}{err}");
        assert_eq!(mock.calls(Endpoint::Token), 1, "{backend}");
        mock.reset_calls();

        // Again, with a CSV holding one known app and one new: the known one is kept.
        let csv = dir.join("apps.csv");
        std::fs::write(
            &csv,
            "appid,secret,subAppid\nwximp1,changed,x\n\"wximp3\",\"s,3\",wxsub\n",
        )
        .unwrap();
        let (ok, out, err) = cli(&["import", csv.to_str().unwrap(), "--database-url", &url]);
        assert!(ok, "{backend}: {err}");
        assert!(
            out.contains("imported 1 apps") && out.contains("already here as they were: wximp1"),
            "{backend}: {out}"
        );
        let (_, out, _) = cli(&["app", "show", "wximp3", "--database-url", &url]);
        assert!(out.contains("sub_appid:    wxsub"), "{backend}: {out}");

        // A bad record anywhere: nothing is written, and the line is named.
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            format!(
                "{}\n{}\n",
                json!({"appid": "wximp4", "secret": "s4"}),
                json!({"appid": "wximp5", "secret": "s5", "colour": "red"}),
            ),
        )
        .unwrap();
        let (ok, _, err) = cli(&["import", bad.to_str().unwrap(), "--database-url", &url]);
        assert!(
            !ok && err.contains("line 2") && err.contains("colour"),
            "{backend}: {err}"
        );
        let (_, out, _) = cli(&["app", "list", "--database-url", &url]);
        assert!(!out.contains("wximp4"), "{backend}: {out}");
        database.drop_db().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    mock.shutdown().await;
}

/// `app list` pages: the totals by state first, a page, and the command for the next one, which
/// goes on where the page ended; `--all` walks every page; filters narrow it; bad ones are named.
#[tokio::test]
async fn app_list_pages_filters_and_totals() {
    use wetoken_testkit::{Seed, seed_apps};
    let Some(database) = fresh_database("sqlite", "app_list_pages_filters_and_totals").await else {
        return;
    };
    let url = database.url.clone();
    let run = |args: &[&str]| {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--database-url", &url])
            .collect();
        let (ok, out, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    run(&["migrate", "up"]);
    let state = |i: usize| {
        if i.is_multiple_of(10) {
            Seed::Halted
        } else {
            Seed::Healthy
        }
    };
    seed_apps(&url, "wxl", 25, chrono::Utc::now(), state).await;

    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("wxl"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let first = run(&["app", "list", "--limit", "10"]);
    assert!(
        first.starts_with(
            "credentials: 6 halted, 0 out_of_budget, 0 failing, 0 pending, 0 renewing, 44 healthy"
        ),
        "{first}"
    );
    let mut seen = rows(&first);
    let mut out = first;
    while let Some(more) = out
        .lines()
        .find_map(|l| l.strip_prefix("more: wetoken-cli "))
    {
        assert!(more.contains("--limit 10"), "{more}");
        out = run(&more.split_whitespace().collect::<Vec<_>>());
        seen.extend(rows(&out));
    }
    let every: Vec<String> = (0..25).map(|i| format!("wxl{i:06}")).collect();
    assert_eq!(seen, every, "every app once, in order");
    assert_eq!(rows(&run(&["app", "list", "--all", "--limit", "3"])), every);

    let halted = run(&["app", "list", "--state", "halted", "--limit", "2"]);
    assert_eq!(rows(&halted), ["wxl000000", "wxl000010"]);
    assert!(
        halted.contains("more: wetoken-cli app list --state halted --limit 2 --cursor "),
        "{halted}"
    );
    assert_eq!(
        rows(&run(&["app", "list", "--prefix", "wxl00001"])),
        (10..20).map(|i| format!("wxl{i:06}")).collect::<Vec<_>>()
    );
    assert!(run(&["app", "list", "--kind", "mini"]).contains("no apps match"));

    for (args, says) in [
        (&["--state", "sad"][..], "unknown state"),
        (&["--cursor", "nope"][..], "cursor"),
        (&["--limit", "0"][..], "limit"),
    ] {
        let args: Vec<&str> = ["app", "list"]
            .iter()
            .chain(args)
            .copied()
            .chain(["--database-url", &url])
            .collect();
        let (ok, _, err) = cli(&args);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
    database.drop_db().await;
}
