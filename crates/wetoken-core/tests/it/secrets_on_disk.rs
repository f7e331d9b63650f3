//! Nothing plain on disk after encryption (issue #17): secrets once stored in plain text in a
//! SQLite file, updated and deleted there by a process that zeroed nothing, are found by no
//! byte search of the file once a master key has encrypted the rows.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::ConnectionTrait;
use wetoken_core::crypto::MasterKey;
use wetoken_core::{AppId, AppUpdate, DatabaseOptions, Keyring, NewApp, Secret, Store};

const APPS: usize = 40;

fn secret(i: usize, round: usize) -> String {
    format!("PlainSecret{round}x{i:03}abcdefghijklmnop")
}

/// Every file SQLite keeps for `db`: the database, and a journal or WAL if one is left.
fn bytes_on_disk(db: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(bytes) = std::fs::read(&path) {
            all.extend(bytes);
        }
    }
    all
}

fn found(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn after_encrypting_no_secret_is_left_in_the_sqlite_file() {
    let dir = std::env::temp_dir().join(format!(
        "wetoken-on-disk-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wetoken.db");
    let url = format!("sqlite://{}", file.display());

    // Before encryption, as an older wetoken (or another tool) left it: plain secrets,
    // replaced and deleted with nothing zeroed, so old values sit in free pages.
    let plain = {
        let mut options = DatabaseOptions::new(&url);
        options.max_connections = 1;
        Store::connect(&options).await.unwrap()
    };
    plain.migrate().await.unwrap();
    plain
        .connection()
        .execute_unprepared("PRAGMA secure_delete = OFF")
        .await
        .unwrap();
    let now = Utc::now();
    let mut written = Vec::new();
    for i in 0..APPS {
        let appid = AppId::parse(&format!("wxdisk{i:03}")).unwrap();
        plain
            .insert_app(&NewApp::mp(appid.clone(), Secret::new(secret(i, 0))), now)
            .await
            .unwrap();
        written.push(secret(i, 0));
        if i % 2 == 0 {
            let update = AppUpdate {
                secret: Some(Secret::new(secret(i, 1))),
                ..AppUpdate::default()
            };
            plain.update_app(&appid, &update, now).await.unwrap();
            written.push(secret(i, 1));
        }
        if i % 5 == 0 {
            plain.delete_app(&appid).await.unwrap();
        }
    }
    plain.connection().clone().close().await.unwrap();
    let before = bytes_on_disk(&file);
    let plain_before = written.iter().filter(|s| found(&before, s)).count();
    assert!(
        plain_before > APPS / 2,
        "the set-up should leave plain secrets in the file: {plain_before}"
    );

    // A server starts with a master key: the rows are encrypted, and the file rewritten.
    let keyring = Keyring::new(MasterKey::from_bytes(&[7; 32]), None);
    let mut options = DatabaseOptions::new(&url);
    options.keyring = Some(Arc::new(keyring));
    let sealed = Store::connect(&options).await.unwrap();
    let (report, encrypted) = sealed.prepare_secrets().await.unwrap();
    assert_eq!(report.plain, encrypted);
    assert!(encrypted > 0);
    sealed.connection().clone().close().await.unwrap();

    let after = bytes_on_disk(&file);
    let left: Vec<&String> = written.iter().filter(|s| found(&after, s)).collect();
    assert!(
        left.is_empty(),
        "{} of {} secrets once written are still in the file: {left:?}",
        left.len(),
        written.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// With `require_encrypted`, a plain secret written after start (by a process without the
/// master key) is refused for its app, not used; without it, it is used (with a warning).
#[tokio::test]
async fn require_encrypted_refuses_a_plain_value_written_later() {
    use wetoken_core::KeySources;

    let sealing = |require: bool| {
        Keyring::new(MasterKey::from_bytes(&[9; 32]), None).requiring_sealed(require)
    };
    for require in [true, false] {
        let mut options = DatabaseOptions::new("sqlite::memory:");
        options.keyring = Some(Arc::new(sealing(require)));
        let store = Store::connect(&options).await.unwrap();
        store.migrate().await.unwrap();
        let appid = AppId::parse("wxrequire").unwrap();
        store
            .insert_app(
                &NewApp::mp(appid.clone(), Secret::new("sealed-at-insert")),
                Utc::now(),
            )
            .await
            .unwrap();
        assert!(store.app(&appid).await.unwrap().is_some());
        store
            .connection()
            .execute_unprepared(
                "UPDATE wechat_app_info SET secret = 'written-later-in-plain' WHERE appid = 'wxrequire'",
            )
            .await
            .unwrap();
        let read = store.app(&appid).await;
        if require {
            let refused = read.unwrap_err().to_string();
            assert!(refused.contains("require_encrypted"), "{refused}");
            assert!(!refused.contains("written-later-in-plain"), "{refused}");
        } else {
            let app = read.unwrap().unwrap();
            assert_eq!(app.secret.expose(), "written-later-in-plain");
        }
    }

    let without_key = KeySources {
        require_sealed: true,
        ..KeySources::default()
    };
    let refused = Keyring::load(&without_key).unwrap_err().to_string();
    assert!(refused.contains("no master key"), "{refused}");
}
