//! The CLI, run as a process.

use std::process::Command;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wetoken-cli"))
        .args(args)
        .env_remove("WETOKEN_DATABASE_URL")
        .output()
        .expect("run wetoken-cli");
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

    let (ok, out, err) = cli(&["migrate", "status", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.starts_with("pending"), "{out}");

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
}
