//! What the status page reads (issue #16), on SQLite, MariaDB and PostgreSQL:
//!
//! - the refresh history is a ring of `HISTORY_SLOTS` rows per credential, newest first, written
//!   by every replica, whatever the number of refreshes; and a history that cannot be written
//!   fails no refresh;
//! - a worst-first listing pages the apps with a halted credential first, then out of budget,
//!   then failing, then the rest, each app once, in the database's order.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, Statement};
use wetoken_core::{
    AppFilter, AppId, Clock, Engine, EngineConfig, Error, HISTORY_SLOTS, Kind, ManualClock, NewApp,
    RefreshCause, Secret,
};
use wetoken_mock::{Endpoint, Fault, MockWeChat};
use wetoken_testkit::{TestDb, on_every_database};

const SECRET: &str = "status-secret";

async fn replica(db: &TestDb, mock: &MockWeChat, clock: Arc<dyn Clock>) -> Engine {
    let config = EngineConfig {
        lease_ms: 2_000,
        lease_poll_ms: 20,
        ..EngineConfig::default()
    };
    crate::quota_guard::replica(db, mock, clock, &config).await
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let db = engine.store().connection();
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// 25 refreshes of one token across three replicas, one of them failed: ten rows kept, the
/// newest first, each naming its cause and replica; then the history table gone, and a forced
/// refresh still succeeds.
async fn the_refresh_history_is_a_bounded_ring(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    let appid = AppId::parse("wxhistory00000001").unwrap();
    mock.add_app(appid.as_str(), SECRET);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(replica(db, &mock, clock.clone()).await);
    }
    engines[0].store().migrate().await.unwrap();
    engines[0]
        .add_app(&NewApp::mp(appid.clone(), Secret::new(SECRET)))
        .await
        .unwrap();
    engines[0].get(&appid, Kind::AccessToken).await.unwrap();
    for i in 0..24 {
        clock.advance(Duration::from_secs(1));
        if i == 22 {
            mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1);
            let e = engines[i % 3]
                .force_refresh(&appid, Kind::AccessToken)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Refused { errcode: -1, .. }), "{e:?}");
            // Past the backoff the failure set.
            clock.advance(Duration::from_secs(600));
        } else {
            engines[i % 3]
                .force_refresh(&appid, Kind::AccessToken)
                .await
                .unwrap();
        }
    }
    let rows = count(&engines[0], "SELECT COUNT(*) FROM wetoken_refresh_history").await;
    assert_eq!(rows, i64::from(HISTORY_SLOTS), "bounded: one ring of slots");
    let history = engines[1].refresh_history(&appid).await.unwrap();
    assert_eq!(history.len(), HISTORY_SLOTS as usize);
    assert!(
        history.windows(2).all(|w| w[0].at > w[1].at),
        "newest first, none lost"
    );
    let newest = &history[0];
    assert!(
        newest.ok && newest.cause == Some(RefreshCause::Forced),
        "{newest:?}"
    );
    // To the second: MariaDB keeps no fraction of it.
    assert_eq!(newest.at.timestamp(), clock.now().timestamp());
    let failed = &history[1];
    assert!(!failed.ok, "{failed:?}");
    assert_eq!(failed.errcode, Some(-1));
    assert!(failed.message.contains("-1"), "{failed:?}");
    assert!(
        history
            .iter()
            .all(|h| !h.replica.is_empty() && h.kind == Kind::AccessToken)
    );
    // The first fetch, asked for by a caller, has been overwritten by the ring.
    assert!(
        history
            .iter()
            .all(|h| h.cause == Some(RefreshCause::Forced))
    );

    // A history that cannot be written fails no refresh.
    let conn = engines[0].store().connection();
    conn.execute_unprepared("DROP TABLE wetoken_refresh_history")
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    engines[2]
        .force_refresh(&appid, Kind::AccessToken)
        .await
        .expect("a refresh whose history cannot be written still succeeds");
}

/// Twelve apps, two of them halted, one halted on its ticket and failing on its token, one out
/// of budget, two failing: pages of three list each once, worst first, by appid within a rank.
async fn a_worst_first_listing_pages_trouble_first(db: &TestDb) {
    let mock = MockWeChat::start().await.unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = replica(db, &mock, clock.clone()).await;
    engine.store().migrate().await.unwrap();
    let ids: Vec<AppId> = (0..12)
        .map(|i| AppId::parse(&format!("wxorder{i:02}")).unwrap())
        .collect();
    for id in &ids {
        mock.add_app(id.as_str(), SECRET);
        engine
            .add_app(&NewApp::mp(id.clone(), Secret::new(SECRET)))
            .await
            .unwrap();
        engine.get(id, Kind::JsapiTicket).await.unwrap();
    }
    let set = |table: &'static str, n: usize, halted: bool, errcode: i64| {
        Query::update()
            .table(Alias::new(table))
            .value(Alias::new("halted"), halted)
            .value(Alias::new("failures"), 1)
            .value(Alias::new("errcode"), errcode)
            .and_where(Expr::col(Alias::new("appid")).eq(ids[n].as_str()))
            .to_owned()
    };
    let conn = engine.store().connection();
    for update in [
        set("wechat_access_token", 5, true, 40125),
        set("wechat_access_token", 9, true, 40125),
        set("wechat_jsapi_ticket", 3, true, 40164),
        set("wechat_access_token", 3, false, -1),
        set("wechat_access_token", 10, false, 90430),
        set("wechat_access_token", 1, false, -1),
        set("wechat_jsapi_ticket", 7, false, -1),
    ] {
        conn.execute(&update).await.unwrap();
    }
    let filter = AppFilter {
        worst_first: true,
        ..AppFilter::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = engine.list_apps(&filter, after.as_ref(), 3).await.unwrap();
        assert!(page.apps.len() <= 3);
        seen.extend(page.apps.iter().map(|s| s.app.appid.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = [3, 5, 9, 10, 1, 7, 0, 2, 4, 6, 8, 11]
        .iter()
        .map(|n| ids[*n].to_string())
        .collect();
    assert_eq!(seen, expected);
    // A prefix narrows every rank alike.
    let narrow = AppFilter {
        prefix: Some("wxorder0".into()),
        ..filter.clone()
    };
    let page = engine.list_apps(&narrow, None, 100).await.unwrap();
    let got: Vec<String> = page.apps.iter().map(|s| s.app.appid.to_string()).collect();
    assert_eq!(
        got,
        [
            "wxorder03",
            "wxorder05",
            "wxorder09",
            "wxorder01",
            "wxorder07",
            "wxorder00",
            "wxorder02",
            "wxorder04",
            "wxorder06",
            "wxorder08"
        ]
    );
    assert!(page.next.is_none());
    // A cursor of the appid-ordered listing is refused with a reason.
    let plain = engine
        .list_apps(&AppFilter::default(), None, 2)
        .await
        .unwrap()
        .next
        .unwrap();
    let e = engine
        .list_apps(&filter, Some(&plain), 3)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("worst first"), "{e}");
}

on_every_database!(
    the_refresh_history_is_a_bounded_ring,
    a_worst_first_listing_pages_trouble_first,
);
