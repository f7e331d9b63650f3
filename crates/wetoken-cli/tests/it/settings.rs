//! The CLI reads the server's settings: `wetoken.toml` in its working directory (or `--config`),
//! then `WETOKEN_*` variables, then its own flags, with the server's errors.

use std::path::{Path, PathBuf};

use wetoken_mock::{Endpoint, MockWeChat};

use crate::run_cli;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wetoken-cliconf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An address nothing listens on: a port just bound and let go.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Runs the CLI in `dir`.
fn cli_in(dir: &Path, args: &[&str], input: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    run_cli(Some(dir), args, input, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_wetoken_toml_then_the_environment_then_its_flags() {
    let mock = MockWeChat::start().await.unwrap();
    for appid in ["wxconf", "wxfall", "wxenv"] {
        mock.add_app(appid, "conf-secret");
    }
    let dir = scratch_dir("toml");
    let db = dir.join("servers.db");
    let toml = |base: &str, fallback: &str| {
        format!(
            "database_url = \"sqlite://{}\"\nwechat_base_url = \"{base}\"\nwechat_fallback_urls = [{fallback}]\n",
            db.display()
        )
    };
    std::fs::write(dir.join("wetoken.toml"), toml(&mock.url(), "")).unwrap();

    // The database the file names: created by `migrate up`, and by nothing else.
    let (ok, _, err) = cli_in(&dir, &["app", "list"], "", &[]);
    assert!(!ok && err.contains("no database at"), "{err}");
    assert!(!db.exists(), "app list created the database");
    let (ok, _, err) = cli_in(&dir, &["migrate", "up"], "", &[]);
    assert!(ok, "{err}");
    assert!(
        db.exists(),
        "migrate up did not use the file's database_url"
    );
    assert!(!dir.join("wetoken.db").exists());
    for appid in ["wxconf", "wxfall", "wxenv"] {
        let (ok, _, err) = cli_in(&dir, &["app", "add", appid], "conf-secret\n", &[]);
        assert!(ok, "{err}");
    }

    // `token get` goes to the file's wechat_base_url: the mock.
    let (ok, token, err) = cli_in(&dir, &["token", "get", "wxconf"], "", &[]);
    assert!(ok, "{err}");
    assert_eq!(Some(token.trim().to_owned()), mock.current_token("wxconf"));
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The first URL down: the file's fallback URL is tried next.
    let dead = dead_url();
    std::fs::write(
        dir.join("wetoken.toml"),
        toml(&dead, &format!("\"{}\"", mock.url())),
    )
    .unwrap();
    let (ok, token, err) = cli_in(&dir, &["token", "get", "wxfall"], "", &[]);
    assert!(ok, "the fallback URL was not used: {err}");
    assert_eq!(Some(token.trim().to_owned()), mock.current_token("wxfall"));
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // The environment over the file: with no fallback in the file, only WETOKEN_WECHAT_BASE_URL
    // reaches the mock.
    std::fs::write(dir.join("wetoken.toml"), toml(&dead, "")).unwrap();
    let (ok, token, err) = cli_in(
        &dir,
        &["token", "get", "wxenv"],
        "",
        &[("WETOKEN_WECHAT_BASE_URL", &mock.url())],
    );
    assert!(ok, "{err}");
    assert_eq!(Some(token.trim().to_owned()), mock.current_token("wxenv"));
    // And over the file's database: the environment's, which does not exist, is refused.
    let elsewhere = dir.join("elsewhere.db");
    let env_db = format!("sqlite://{}", elsewhere.display());
    let (ok, _, err) = cli_in(
        &dir,
        &["app", "list"],
        "",
        &[("WETOKEN_DATABASE_URL", &env_db)],
    );
    assert!(!ok && err.contains("elsewhere.db"), "{err}");
    assert!(!elsewhere.exists());
    // A flag over both.
    let file_db = format!("sqlite://{}", db.display());
    let (ok, out, err) = cli_in(
        &dir,
        &["app", "list", "--database-url", &file_db],
        "",
        &[("WETOKEN_DATABASE_URL", &env_db)],
    );
    assert!(ok && out.contains("wxconf"), "{out}{err}");

    // --config names another file, which must exist.
    let other = dir.join("conf");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("other.toml"),
        format!("database_url = \"{env_db}\"\n"),
    )
    .unwrap();
    let other_toml = other.join("other.toml");
    let (ok, _, err) = cli_in(
        &dir,
        &["app", "list", "--config", other_toml.to_str().unwrap()],
        "",
        &[],
    );
    assert!(!ok && err.contains("elsewhere.db"), "not read: {err}");
    let (ok, _, err) = cli_in(&dir, &["app", "list", "--config", "missing.toml"], "", &[]);
    assert!(!ok, "{err}");
    assert!(err.contains("--config missing.toml: no such file"), "{err}");
    let (ok, _, err) = cli_in(
        &dir,
        &[
            "install",
            "fs:///nonexistent",
            "mall",
            "--config",
            "missing.toml",
        ],
        "",
        &[],
    );
    assert!(
        !ok && err.contains("--config missing.toml: no such file"),
        "{err}"
    );

    // The server's checks: an unknown WETOKEN_* variable is refused, Kubernetes' service links
    // are ignored with one warning, a placeholder master key is refused.
    let (ok, _, err) = cli_in(&dir, &["app", "list"], "", &[("WETOKEN_LISTNE", "x")]);
    assert!(!ok && err.contains("listne"), "{err}");
    let (ok, out, err) = cli_in(
        &dir,
        &["app", "list"],
        "",
        &[
            ("WETOKEN_PORT", "tcp://10.0.0.1:9999"),
            ("WETOKEN_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    assert!(ok && out.contains("wxconf"), "{out}{err}");
    assert_eq!(
        err.matches("warning: ignoring these variables").count(),
        1,
        "{err}"
    );
    assert!(err.contains("WETOKEN_PORT, WETOKEN_SERVICE_HOST"), "{err}");
    let mut placeholder = toml(&mock.url(), "");
    placeholder += "master_key = \"CHANGE-ME-to-a-long-random-string\"\n";
    std::fs::write(dir.join("wetoken.toml"), placeholder).unwrap();
    let (ok, _, err) = cli_in(&dir, &["app", "list"], "", &[]);
    assert!(!ok && err.contains("placeholder"), "{err}");

    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
