//! A ciphertext put back from an older version of its row is refused (issue #17), on SQLite,
//! MariaDB and PostgreSQL.
//!
//! Whoever can write to the database, and kept a copy of an app's row from before its secret
//! was changed (a backup, a dump), could put the old ciphertext back: bound to its column and
//! appid only, it decrypted, and wetoken sent WeChat a secret that was meant to be dead. Every
//! encrypted value is now bound to its row's seal generation too, which every write of a secret
//! moves on:
//!
//! - `an_old_ciphertext_put_back_is_refused`: after a new secret is stored, the old secret's
//!   ciphertext put back is refused, by name (app and column, never a value), for that app
//!   alone, and nothing is sent to WeChat; so is the old ciphertext of a column the update did
//!   not change (every value of the row is sealed anew), and an old secret with its old
//!   generation put back beside values of the new one. A ciphertext moved to another app or
//!   another column is refused too. A `wtenc:v1` value (from before generations) is read in a
//!   row at generation 0 and refused in one that moved on; a server's start binds it, and
//!   leaves a row it cannot read as it is without holding up the start.
//! - `concurrent_updates_of_different_secrets_lose_nothing`: four writers on pools of their own
//!   change one column each of the same row, over and over; since each write seals every column
//!   anew, a write that raced another would put back the value the other replaced. None does:
//!   each column ends as its writer last wrote it, and every value decrypts.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use wetoken_core::crypto::{MasterKey, sealed_format};
use wetoken_core::entity::app_info::{self, Column};
use wetoken_core::{
    AppId, AppUpdate, DatabaseOptions, Engine, EngineConfig, Error, Keyring, Kind, NewApp, Secret,
    Store, SystemClock,
};
use wetoken_mock::{Endpoint, MockWeChat};
use wetoken_testkit::{TestDb, on_every_database};

on_every_database!(
    an_old_ciphertext_put_back_is_refused,
    concurrent_updates_of_different_secrets_lose_nothing
);

const A: &str = "wxreplay000000001";
const B: &str = "wxreplay000000002";

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(MasterKey::from_bytes(&[11; 32]), None))
}

async fn store(db: &TestDb) -> Store {
    let mut options = DatabaseOptions::new(&db.url);
    options.max_connections = 3;
    options.keyring = Some(keyring());
    Store::connect(&options).await.unwrap()
}

fn id(appid: &str) -> AppId {
    AppId::parse(appid).unwrap()
}

/// The row as stored.
async fn row(store: &Store, appid: &str) -> app_info::Model {
    app_info::Entity::find_by_id(appid.to_owned())
        .one(store.connection())
        .await
        .unwrap()
        .unwrap()
}

/// What an attacker with write access to the database does: one column set by hand.
async fn put(store: &Store, appid: &str, column: Column, value: impl Into<sea_orm::Value>) {
    app_info::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .filter(Column::Appid.eq(appid))
        .exec(store.connection())
        .await
        .unwrap();
}

/// The app's row read through the store: its secret, or the refusal's text.
async fn read(store: &Store, appid: &str) -> Result<String, String> {
    match store.app(&id(appid)).await {
        Ok(app) => Ok(app.unwrap().secret.expose().to_owned()),
        Err(e @ Error::Secret(_)) => Err(e.to_string()),
        Err(e) => panic!("not a secret's error: {e}"),
    }
}

/// The refusal names the app and the column, and none of the values.
fn refused(result: Result<String, String>, column: &str, not: &[&str]) -> String {
    let message = result.expect_err("the value put back must be refused");
    assert!(
        message.contains(&format!(
            "the stored {column} of app {A} cannot be decrypted"
        )),
        "{message}"
    );
    for value in not {
        assert!(
            !message.contains(value),
            "the error shows a value: {message}"
        );
    }
    message
}

fn set_secret(secret: &str) -> AppUpdate {
    AppUpdate {
        secret: Some(Secret::new(secret)),
        ..AppUpdate::default()
    }
}

async fn an_old_ciphertext_put_back_is_refused(db: &TestDb) {
    let store = store(db).await;
    store.migrate().await.unwrap();
    let now = Utc::now();
    let mut app = NewApp::mp(id(A), Secret::new("old-secret-1111"));
    app.token = Some(Secret::new("message-token-1"));
    app.aes_key = Some(Secret::new("k".repeat(43)));
    store.insert_app(&app, now).await.unwrap();
    store
        .insert_app(&NewApp::mp(id(B), Secret::new("b-secret-2222")), now)
        .await
        .unwrap();
    let before = row(&store, A).await;
    assert!(
        before.seal_generation > 0,
        "a new row starts at a generation"
    );

    // The secret is changed (after a leak, say): the row moves on, every value sealed anew.
    store
        .update_app(&id(A), &set_secret("new-secret-3333"), now)
        .await
        .unwrap();
    let after = row(&store, A).await;
    assert_eq!(after.seal_generation, before.seal_generation + 1);
    assert_ne!(after.token, before.token, "the token is sealed anew too");
    assert_eq!(read(&store, A).await.unwrap(), "new-secret-3333");
    let values: Vec<String> = ["old-secret-1111", "new-secret-3333", &before.secret]
        .map(str::to_owned)
        .to_vec();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();

    // The old secret's ciphertext put back: refused, by name.
    put(&store, A, Column::Secret, before.secret.clone()).await;
    let message = refused(read(&store, A).await, "secret", &values);
    assert!(message.contains("older version"), "{message}");
    // Wherever the secret is read: the digests the Go SDK's secret is checked against...
    let secrets = store.app_secrets().await.unwrap();
    let of = |appid: &str| secrets.iter().find(|(a, _)| a == appid).unwrap();
    assert!(
        of(A).1.is_err() && of(B).1.is_ok(),
        "one app's error spoils no other"
    );
    // ...and a fetch: nothing is sent to WeChat, and the other app still fetches.
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app(A, "old-secret-1111");
    mock.add_app(B, "b-secret-2222");
    let engine = engine(&store, &mock);
    let e = engine.get(&id(A), Kind::AccessToken).await.unwrap_err();
    assert!(matches!(e, Error::Secret(_)), "{e}");
    assert_eq!(
        mock.calls(Endpoint::Token),
        0,
        "the old secret never reached WeChat"
    );
    engine.get(&id(B), Kind::AccessToken).await.unwrap();
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The old generation put back with the old secret, the other values left at the new one:
    // the token (sealed anew at the new generation) no longer decrypts.
    put(&store, A, Column::SealGeneration, before.seal_generation).await;
    refused(read(&store, A).await, "token", &values);
    put(&store, A, Column::SealGeneration, after.seal_generation).await;

    // A column the update did not change: its old ciphertext is refused as well.
    put(&store, A, Column::Secret, after.secret.clone()).await;
    assert_eq!(read(&store, A).await.unwrap(), "new-secret-3333");
    put(&store, A, Column::Token, before.token.clone()).await;
    refused(read(&store, A).await, "token", &values);
    put(&store, A, Column::Token, after.token.clone()).await;
    assert_eq!(read(&store, A).await.unwrap(), "new-secret-3333");

    // Moved to another app, or to another column of the same row: refused.
    put(&store, A, Column::Secret, row(&store, B).await.secret).await;
    refused(read(&store, A).await, "secret", &values);
    put(&store, A, Column::Secret, after.token.clone().unwrap()).await;
    refused(read(&store, A).await, "secret", &values);
    put(&store, A, Column::Secret, after.secret.clone()).await;

    // An update that keeps a value it cannot read is refused, and writes nothing; one that
    // replaces that value is how an operator mends the row.
    put(&store, A, Column::Token, before.token.clone()).await;
    let e = store
        .update_app(&id(A), &set_secret("newer-secret-4444"), now)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("the stored token of app {A}")), "{e}");
    assert_eq!(row(&store, A).await.secret, after.secret, "nothing written");
    let mend = AppUpdate {
        token: Some(Secret::new("message-token-2")),
        ..AppUpdate::default()
    };
    store.update_app(&id(A), &mend, now).await.unwrap();
    let mended = store.app(&id(A)).await.unwrap().unwrap();
    assert_eq!(mended.token.unwrap().expose(), "message-token-2");

    // A value from before generations (`wtenc:v1`, bound to column and appid only) is read in
    // a row still at generation 0, refused in a row that moved on, and bound by a start.
    let keyring = keyring();
    let v1 = keyring
        .seal(
            "v1-secret-5555",
            format!("wetoken/wechat_app_info/secret/{A}").as_bytes(),
        )
        .replacen("wtenc:v2:", "wtenc:v1:", 1);
    put(&store, A, Column::Secret, v1.clone()).await;
    let message = refused(read(&store, A).await, "secret", &["v1-secret-5555"]);
    assert!(message.contains("wtenc:v1"), "{message}");
    // As a row from before migration 000013 was: generation 0, every value v1.
    put(&store, A, Column::SealGeneration, 0i64).await;
    for column in [Column::Token, Column::AesKey] {
        put(&store, A, column, Option::<String>::None).await;
    }
    assert_eq!(read(&store, A).await.unwrap(), "v1-secret-5555");
    let (report, _) = store.prepare_secrets().await.unwrap();
    assert_eq!(report.unbound, 1, "{report:?}");
    let bound = row(&store, A).await;
    assert!(bound.seal_generation > 0);
    assert_eq!(
        sealed_format(&bound.secret),
        sealed_format("wtenc:v2:00000000:x")
    );
    assert_eq!(read(&store, A).await.unwrap(), "v1-secret-5555");
    // The v1 value, now older than the row, put back: refused.
    put(&store, A, Column::Secret, v1).await;
    refused(read(&store, A).await, "secret", &["v1-secret-5555"]);
    assert_eq!(store.secrets_report().await.unwrap().unbound, 1);
    // A start does not take it for a value to bind, and goes on: the row stays refused, by
    // name, and no other app is held up.
    let broken = row(&store, A).await;
    store.prepare_secrets().await.unwrap();
    assert_eq!(row(&store, A).await, broken, "the row is left as it was");
    refused(read(&store, A).await, "secret", &["v1-secret-5555"]);
    assert_eq!(read(&store, B).await.unwrap(), "b-secret-2222");

    store.connection().clone().close().await.unwrap();
    mock.shutdown().await;
}

fn engine(store: &Store, mock: &MockWeChat) -> Engine {
    let wechat = crate::wechat_on(mock);
    Engine::new(
        store.clone(),
        wechat,
        Arc::new(SystemClock),
        EngineConfig::default(),
    )
    .unwrap()
}

async fn concurrent_updates_of_different_secrets_lose_nothing(db: &TestDb) {
    const ROUNDS: usize = 25;
    let first = store(db).await;
    first.migrate().await.unwrap();
    let mut app = NewApp::mp(id(A), Secret::new("secret-start"));
    app.token = Some(Secret::new("token-start"));
    app.aes_key = Some(Secret::new("aes-start"));
    app.pay_key = Some(Secret::new("pay-start"));
    first.insert_app(&app, Utc::now()).await.unwrap();
    let start = row(&first, A).await.seal_generation;

    let mut writers = Vec::new();
    for column in 0..4 {
        let store = store(db).await;
        writers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let value = Some(Secret::new(format!("{column}-{round}")));
                let mut update = AppUpdate::default();
                match column {
                    0 => update.secret = value,
                    1 => update.token = value,
                    2 => update.aes_key = value,
                    _ => update.pay_key = value,
                }
                store.update_app(&id(A), &update, Utc::now()).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let app = first.app(&id(A)).await.unwrap().unwrap();
    let last = |column: usize| format!("{column}-{}", ROUNDS - 1);
    assert_eq!(app.secret.expose(), last(0));
    assert_eq!(app.token.unwrap().expose(), last(1));
    assert_eq!(app.aes_key.unwrap().expose(), last(2));
    assert_eq!(app.pay_key.unwrap().expose(), last(3));
    assert_eq!(
        row(&first, A).await.seal_generation,
        start + 4 * ROUNDS as i64,
        "one generation per write"
    );
}
