//! App secrets at rest: encrypted under the master key, plain rows encrypted at start, a clear
//! refusal to start without the key, rotation while serving, tampering detected.

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use wetoken_core::crypto::{MasterKey, sealed_key_id};
use wetoken_core::entity::app_info::{self, Column};
use wetoken_core::{DatabaseOptions, Keyring, Reseal, Store};
use wetoken_mock::Endpoint;
use wetoken_server::{Server, Settings};

use crate::harness::{SECRET, TestDb, TestServer, mock_with, on_every_database, settings};

on_every_database!(secrets_are_encrypted_rotated_and_checked);

/// The raw stored `column` of `appid`.
async fn stored(store: &Store, appid: &str, column: Column) -> String {
    app_info::Entity::find_by_id(appid.to_owned())
        .select_only()
        .column(column)
        .into_tuple::<String>()
        .one(store.connection())
        .await
        .unwrap()
        .unwrap()
}

async fn overwrite(store: &Store, appid: &str, column: Column, value: String) {
    app_info::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .filter(Column::Appid.eq(appid))
        .exec(store.connection())
        .await
        .unwrap();
}

fn with_keys(s: &Settings, current: Option<&str>, previous: Option<&str>) -> Settings {
    Settings {
        master_key: current.map(str::to_owned),
        master_key_previous: previous.map(str::to_owned),
        ..s.clone()
    }
}

/// A forced refresh: the app's secret is decrypted and sent to WeChat.
async fn refresh(server: &TestServer, appid: &str) {
    let (code, body) = server
        .post_json("/wechat/app/refresh", &json!({"appid": appid}))
        .await;
    assert_eq!(code, 200, "{appid}: {body}");
}

async fn start_error(s: &Settings) -> String {
    Server::new(s)
        .await
        .err()
        .expect("refused to start")
        .to_string()
}

async fn secrets_are_encrypted_rotated_and_checked(db: &TestDb) {
    const OLD: &str = "wxplain";
    const NEW: &str = "wxsealed";
    let mock = mock_with(&[OLD, NEW]).await;
    let base = settings(db, &mock);
    let k1 = MasterKey::generate();
    let k2 = MasterKey::generate();
    let raw = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();

    // Without a master key: plain text, as the Go schema stored it.
    let server = TestServer::start(base.clone()).await;
    server.add_app(OLD).await;
    // Nothing plain may pass for encrypted.
    let (code, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": "wxfake", "secret": "wtenc:v1:00000000:AAAA"}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    server.stop().await;
    assert_eq!(stored(&raw, OLD, Column::Secret).await, SECRET);

    // With one: the plain row is encrypted at start; new rows are written encrypted.
    let server = TestServer::start(with_keys(&base, Some(&k1), None)).await;
    let sealed = stored(&raw, OLD, Column::Secret).await;
    assert!(
        sealed.starts_with("wtenc:v2:") && !sealed.contains(SECRET),
        "{sealed}"
    );
    let token = stored(&raw, OLD, Column::Token).await;
    assert!(
        token.starts_with("wtenc:v2:"),
        "the message token too: {token}"
    );
    let (code, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": NEW, "secret": SECRET, "aes_key": "k".repeat(43)}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        stored(&raw, NEW, Column::AesKey)
            .await
            .starts_with("wtenc:v2:")
    );
    // The longest secret accepted still fits once encrypted (the widened columns).
    let (code, body) = server
        .post_json(
            "/wechat/app/create",
            &json!({"appid": "wxlong", "secret": "s".repeat(255)}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(stored(&raw, "wxlong", Column::Secret).await.len() > 255);
    let (code, body) = server.get("/wechat/app/show?appid=wxlong").await;
    assert_eq!(code, 200, "{body}");
    // The secrets decrypt to what WeChat knows: both apps fetch.
    server.token(OLD).await;
    server.token(NEW).await;
    assert_eq!(mock.calls(Endpoint::Token), 2);
    server.stop().await;

    // Encrypted rows and no key, or only another key: a clear refusal to start.
    let err = start_error(&base).await;
    assert!(err.contains("no master key is configured"), "{err}");
    let err = start_error(&with_keys(&base, Some(&k2), None)).await;
    assert!(
        err.contains("master key id") && !err.contains(&k2) && !err.contains(&k1),
        "{err}"
    );
    let mut bad = with_keys(&base, Some("c2hvcnQ="), None);
    assert!(start_error(&bad).await.contains("5 bytes"));
    bad.master_key_file = Some("/nonexistent".into());
    assert!(start_error(&bad).await.contains("not both"));

    // Rotation while serving: the server reads under both keys while the CLI's reseal runs.
    let server = TestServer::start(with_keys(&base, Some(&k2), Some(&k1))).await;
    refresh(&server, OLD).await;
    let keyring = Keyring::new(
        MasterKey::parse(&k2, "k2").unwrap(),
        Some(MasterKey::parse(&k1, "k1").unwrap()),
    );
    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap()
        .with_keyring(Some(Arc::new(keyring.clone())));
    let done = cli.reseal(Reseal::NotCurrent).await.unwrap();
    assert_eq!((done.resealed, done.failed.len()), (5, 0), "{done:?}");
    let report = cli.secrets_report().await.unwrap();
    assert_eq!((report.plain, report.encrypted()), (0, 5), "{report:?}");
    assert_eq!(
        report.by_key.keys().collect::<Vec<_>>(),
        [keyring.current_id()]
    );
    refresh(&server, OLD).await;
    refresh(&server, NEW).await;
    server.stop().await;
    // Done: the old key can go.
    let server = TestServer::start(with_keys(&base, Some(&k2), None)).await;
    refresh(&server, NEW).await;
    server.stop().await;

    // A tampered ciphertext: a clear error for that app, WeChat not called, others unaffected.
    let sealed = stored(&raw, OLD, Column::Secret).await;
    assert_eq!(sealed_key_id(&sealed), Some(keyring.current_id()));
    let mut chars: Vec<char> = sealed.chars().collect();
    let at = chars.len() - 12;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    overwrite(&raw, OLD, Column::Secret, chars.into_iter().collect()).await;
    let server = TestServer::start(with_keys(&base, Some(&k2), None)).await;
    let calls = mock.calls(Endpoint::Token);
    let (code, body) = server.get(&format!("/{OLD}/wechat/token/get")).await;
    assert_eq!(
        (code, body["errcode"].as_i64()),
        (500, Some(90500)),
        "{body}"
    );
    let message = body["errmsg"].as_str().unwrap();
    assert!(
        message.contains("cannot be decrypted") && !message.contains(keyring.current_id()),
        "the caller is told what failed, not which key: {body}"
    );
    assert_eq!(
        mock.calls(Endpoint::Token),
        calls,
        "nothing was sent to WeChat"
    );
    let (code, body) = server.get(&format!("/{NEW}/wechat/token/get")).await;
    assert_eq!(code, 200, "{body}");
    // Listings decrypt nothing: the app list, its show, the status page and /metrics still
    // answer, the broken app included, so monitoring does not go blind.
    let (code, body) = server.get("/wechat/app/list").await;
    assert_eq!(code, 200, "{body}");
    let listed: Vec<&str> = body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["appid"].as_str())
        .collect();
    assert!(listed.contains(&OLD) && listed.contains(&NEW), "{body}");
    let (code, body) = server.get(&format!("/wechat/app/show?appid={OLD}")).await;
    assert_eq!(code, 200, "{body}");
    // The status page lists it; /metrics, aggregates by default, answers.
    for (page, shows) in [("/", OLD), ("/metrics", "wetoken_credentials{")] {
        let response = server
            .http
            .get(format!("{}{page}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert!(response.text().await.unwrap().contains(shows), "{page}");
    }
    // An old ciphertext put back after the secret was stored anew (from a backup, say): refused
    // the same way, and WeChat not called (issue #17; `sealed_replay.rs` has the details).
    let before = stored(&raw, NEW, Column::Secret).await;
    let (code, body) = server
        .post_json(
            "/wechat/app/update",
            &json!({"appid": NEW, "secret": SECRET}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    refresh(&server, NEW).await;
    let calls = mock.calls(Endpoint::Token);
    let after = stored(&raw, NEW, Column::Secret).await;
    overwrite(&raw, NEW, Column::Secret, before).await;
    let (code, body) = server
        .post_json("/wechat/app/refresh", &json!({"appid": NEW}))
        .await;
    assert_eq!(
        (code, body["errcode"].as_i64()),
        (500, Some(90500)),
        "{body}"
    );
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .contains("cannot be decrypted"),
        "{body}"
    );
    assert_eq!(mock.calls(Endpoint::Token), calls, "WeChat not called");
    overwrite(&raw, NEW, Column::Secret, after).await;
    // Copying another app's ciphertext does not work either: the appid is bound in.
    overwrite(
        &raw,
        OLD,
        Column::Secret,
        stored(&raw, NEW, Column::Secret).await,
    )
    .await;
    let (code, body) = server
        .post_json("/wechat/app/refresh", &json!({"appid": OLD}))
        .await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        mock.calls(Endpoint::Token),
        calls,
        "WeChat still not called"
    );
    server.stop().await;

    // The seal generations cannot go while values bound to them are stored: 000013 refuses
    // and stays applied (the later ones, which hold nothing bound, go).
    use wetoken_migration::MigratorTrait;
    let steps = wetoken_migration::Migrator::migrations().len() as u32 - 5;
    let err = wetoken_migration::Migrator::down(raw.connection(), Some(steps))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seal generation") && err.contains("cannot be undone"),
        "{err}"
    );
    let status = raw.migration_status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|(name, applied)| *applied == (name.as_str() < "m20261206")),
        "{status:?}"
    );
    // Nor can the columns go back to the Go schema's sizes while encrypted values are stored:
    // with only values from before generations (`wtenc:v1`) left, down past every later
    // migration (which go) to 000006, which refuses and stays applied.
    for appid in [OLD, NEW, "wxlong"] {
        overwrite(&raw, appid, Column::Secret, "wtenc:v1:00000000:AAAA".into()).await;
        for column in [Column::Token, Column::AesKey, Column::PayKey] {
            overwrite(&raw, appid, column, String::new()).await;
        }
    }
    let err = wetoken_migration::Migrator::down(raw.connection(), Some(steps))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be undone"), "{err}");
    let status = raw.migration_status().await.unwrap();
    assert!(
        // 000006 and those before it stay; only the later ones went.
        status
            .iter()
            .all(|(name, applied)| *applied == (name.as_str() < "m20261129")),
        "{status:?}"
    );
}
