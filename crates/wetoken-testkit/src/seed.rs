//! Many apps at once, for tests and measurements at scale: rows written straight into a migrated
//! database, a few hundred to a statement, so that 100,000 apps take seconds, not the hours one
//! `/wechat/app/create` each would.
//!
//! The rows are those wetoken writes for an official account (`mp`, classic token mode, a plain
//! secret): the app, and its access-token and jsapi-ticket rows in the state [`Seed`] says.
//! Table and column names are spelled here as text: this crate knows nothing of wetoken-core.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::{Alias, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, Database};

/// The state a seeded app's credentials are in at the `now` given to [`seed_apps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// Values stored, expiring in two hours, renewal due in 100 minutes.
    Healthy,
    /// No value fetched yet.
    Empty,
    /// The last refresh failed; retried in ten minutes. The values expire in 15 minutes.
    Failing,
    /// Refreshing stopped on WeChat's 40125; the values expired an hour ago.
    Halted,
}

/// Rows a statement inserts.
const BATCH: usize = 500;

/// Inserts `n` apps named `{prefix}{i:06}` (i from 0) into the database at `url`, each with its
/// access-token and jsapi-ticket rows in the state `seed(i)` gives. Panics on any failure.
pub async fn seed_apps(
    url: &str,
    prefix: &str,
    n: usize,
    now: DateTime<Utc>,
    seed: impl Fn(usize) -> Seed,
) {
    let db = Database::connect(url).await.expect("connect to seed");
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let mut apps = Query::insert()
            .into_table(Alias::new("wechat_app_info"))
            .columns(
                [
                    "appid",
                    "secret",
                    "kind",
                    "token_mode",
                    "daily_budget",
                    "calls_today",
                    "mchid",
                    "sub_appid",
                    "sub_mchid",
                    "pay_key",
                    "create_time",
                    "update_time",
                ]
                .map(Alias::new),
            )
            .to_owned();
        for i in start..end {
            let values: [SimpleExpr; 12] = [
                format!("{prefix}{i:06}").into(),
                "seeded-secret".into(),
                "mp".into(),
                "classic".into(),
                2000.into(),
                0.into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                now.into(),
                now.into(),
            ];
            apps.values_panic(values);
        }
        db.execute(&apps).await.expect("seed apps");
        for (table, value) in [
            ("wechat_access_token", "access_token"),
            ("wechat_jsapi_ticket", "ticket"),
        ] {
            let mut rows = Query::insert()
                .into_table(Alias::new(table))
                .columns(
                    [
                        "appid",
                        value,
                        "expires_at",
                        "renew_at",
                        "message",
                        "halted",
                        "failures",
                        "retry_at",
                        "errcode",
                        "update_time",
                    ]
                    .map(Alias::new),
                )
                .to_owned();
            for i in start..end {
                let appid = format!("{prefix}{i:06}");
                let minutes = |m: i64| Some(now + TimeDelta::minutes(m));
                let none: Option<DateTime<Utc>> = None;
                let (stored, expires, renew, message, halted, failures, retry, errcode) =
                    match seed(i) {
                        Seed::Healthy => (
                            format!("{value}-{appid}"),
                            minutes(120),
                            minutes(100),
                            "success",
                            false,
                            0,
                            none,
                            Some(0),
                        ),
                        Seed::Empty => (
                            String::new(),
                            none,
                            none,
                            "not fetched yet",
                            false,
                            0,
                            none,
                            None,
                        ),
                        Seed::Failing => (
                            format!("{value}-{appid}"),
                            minutes(15),
                            minutes(-5),
                            "-1: system error",
                            false,
                            2,
                            minutes(10),
                            Some(-1),
                        ),
                        Seed::Halted => (
                            format!("{value}-{appid}"),
                            minutes(-60),
                            minutes(-80),
                            "40125: invalid appsecret",
                            true,
                            1,
                            none,
                            Some(40125),
                        ),
                    };
                let values: [SimpleExpr; 10] = [
                    appid.into(),
                    stored.into(),
                    expires.into(),
                    renew.into(),
                    message.into(),
                    halted.into(),
                    failures.into(),
                    retry.into(),
                    errcode.map(i64::from).into(),
                    now.into(),
                ];
                rows.values_panic(values);
            }
            db.execute(&rows).await.expect("seed credential rows");
        }
        start = end;
    }
    let _ = db.close().await;
}
