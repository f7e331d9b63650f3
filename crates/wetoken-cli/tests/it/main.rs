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

/// A fresh database on `backend` ("sqlite", "mysql" or "postgres"), or `None` when the developer
/// opted out of it (never under CI), as the server's test harness does.
async fn fresh_database(
    backend: &str,
    dir: &std::path::Path,
) -> Option<(String, Option<(String, String)>)> {
    use sea_orm::{ConnectionTrait, Database};
    let wanted =
        std::env::var("WETOKEN_TEST_DATABASES").unwrap_or_else(|_| "sqlite,mysql,postgres".into());
    if !wanted.split(',').any(|b| b.trim() == backend) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must test {backend}"
        );
        return None;
    }
    let name = format!("wt_cli_{}_{}", std::process::id(), backend);
    let (root, admin_db) = match backend {
        "sqlite" => {
            return Some((
                format!("sqlite://{}", dir.join("install.db").display()),
                None,
            ));
        }
        "mysql" => (
            std::env::var("WETOKEN_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
            "test",
        ),
        _ => (
            std::env::var("WETOKEN_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            "postgres",
        ),
    };
    let admin = format!("{}/{admin_db}", root.trim_end_matches('/'));
    let db = Database::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach {admin}: {e}"));
    let _ = db
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await;
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    Some((
        format!("{}/{name}", root.trim_end_matches('/')),
        Some((admin, name)),
    ))
}

async fn drop_database(admin: Option<(String, String)>) {
    use sea_orm::{ConnectionTrait, Database};
    if let Some((admin, name)) = admin {
        let db = Database::connect(&admin).await.unwrap();
        let _ = db
            .execute_unprepared(&format!("DROP DATABASE {name}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_creates_the_tables_a_registry_names_once() {
    for backend in ["sqlite", "mysql", "postgres"] {
        let dir =
            std::env::temp_dir().join(format!("wetoken-install-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("registry/mall/var/db")).unwrap();
        let Some((url, admin)) = fresh_database(backend, &dir).await else {
            continue;
        };
        // MySQL in the Go/hydra form, the others as plain URLs.
        let node = if backend == "mysql" {
            let rest = url.strip_prefix("mysql://").unwrap();
            let (user, rest) = rest.split_once('@').unwrap();
            let (host, db) = rest.split_once('/').unwrap();
            serde_json::json!({"provider": "mysql", "connString": format!("{user}@tcp({host})/{db}?charset=utf8"), "maxOpen": 4})
        } else {
            serde_json::json!({"url": url})
        };
        std::fs::write(dir.join("registry/mall/var/db/db"), node.to_string()).unwrap();
        let registry = format!("fs://{}", dir.join("registry").display());

        let (ok, out, err) = cli(&["install", &registry, "mall"]);
        assert!(ok, "{backend}: {err}");
        for table in [
            "wechat_app_info",
            "wechat_access_token",
            "wechat_jsapi_ticket",
            "wechat_card_ticket",
        ] {
            assert!(
                out.contains(&format!("created table {table}")),
                "{backend}: {out}"
            );
        }
        let (ok, out, err) = cli(&["install", &registry, "mall"]);
        assert!(ok, "{backend}: {err}");
        assert!(
            out.contains("nothing to do") && !out.contains("created"),
            "{backend}: {out}"
        );

        // Failures name the registry, the node and the cause, and exit non-zero.
        let (ok, _, err) = cli(&["install", &registry, "shop"]);
        assert!(
            !ok && err.contains("/shop/var/db/db") && err.contains("no node"),
            "{err}"
        );
        std::fs::write(
            dir.join("registry/mall/var/db/ora"),
            r#"{"provider":"oracle","connString":"x"}"#,
        )
        .unwrap();
        let (ok, _, err) = cli(&["install", &registry, "mall", "ora"]);
        assert!(!ok && err.contains("use mysql or postgres"), "{err}");
        drop_database(admin).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
