//! Taking over a Go wetoken's database on MariaDB, as docs/migrating-from-go.md says to: the Go
//! schema from the Go DDL (`../shared/go-wetoken/ddl/mysql`, or `WETOKEN_GO_DDL`), Go-shaped
//! rows, then `wetoken-cli install --check`, `install`, `wetoken-server install` and `start`
//! from the registry's database node, and the Go routes and fields afterwards.
//!
//! Also: an install cut off after each of its statements (by a proxy that counts the MySQL
//! protocol's commands) finishes when run again, and a Go server still writing stops install.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{FixedOffset, Utc};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wetoken_core::{DatabaseOptions, Store};
use wetoken_mock::{Endpoint, MockWeChat};

use crate::harness::{Backend, Replica, TestDb, free_port, server_command};

/// The Go server's zone in these tests: China's, as most Go deployments ran.
const GO_ZONE: &str = "+08:00";
const LIVE_TOKEN: &str = "GO_live_token_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN";
const LIVE_TICKET: &str = "GO_live_ticket_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM";
const EXPIRED_TOKEN: &str = "GO_expired_token_0123456789abcdefghijklmnopqrstuvwxyz";

/// The statements of the Go wetoken's MySQL DDL, or `None` (and a loud line) when the files are
/// not here; under `CI=true` that is a failure.
fn go_ddl() -> Option<Vec<String>> {
    let dir = std::env::var("WETOKEN_GO_DDL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/go-wetoken/ddl/mysql")
        });
    let mut statements = Vec::new();
    for table in [
        "wechat_app_info",
        "wechat_access_token",
        "wechat_jsapi_ticket",
        "wechat_user_info",
    ] {
        let path = dir.join(format!("{table}.sql"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the Go takeover tests, but the Go DDL is not at {} (WETOKEN_GO_DDL)",
                path.display()
            );
            eprintln!(
                "SKIPPED: the Go takeover tests need the Go DDL at {} (set WETOKEN_GO_DDL)",
                path.display()
            );
            return None;
        };
        statements.extend(
            text.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    Some(statements)
}

/// A local time in the Go server's zone, `seconds` from now, as a DATETIME literal.
fn go_time(seconds: i64) -> String {
    let zone = FixedOffset::east_opt(8 * 3600).unwrap();
    (Utc::now() + chrono::TimeDelta::seconds(seconds))
        .with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A MariaDB database holding the Go wetoken's tables and rows:
/// - `wxgolive`: every Go field, a live token (an hour left, issued an hour ago) and a live
///   ticket, and the user `alice`;
/// - `wxgoexpired`: a token that expired ten minutes ago, and the user `bob`, who has no openid;
/// - `wxgobare`: only the required fields, nothing stored.
struct GoDb {
    db: TestDb,
    store: Store,
}

impl GoDb {
    async fn create() -> Option<GoDb> {
        let ddl = go_ddl()?;
        let db = TestDb::create(Backend::Mysql, "takeover (Go schema on MariaDB)").await?;
        let store = Store::connect(&DatabaseOptions::new(&db.url))
            .await
            .unwrap();
        let run = |sql: String| {
            let store = store.clone();
            async move {
                store
                    .connection()
                    .execute_unprepared(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        };
        for statement in ddl {
            run(statement).await;
        }
        run(format!(
            "INSERT INTO wechat_app_info (appid, secret, token, aes_key, update_time, mchid, \
             pay_key, sub_appid, sub_mchid, wechat_host, wcode_template_id) VALUES \
             ('wxgolive', 'secretlive0123456789abcdef012345', 'msgtoken', \
              'aeskey0123456789abcdef0123456789', '{now}', '1900000109', 'paykey0123456789', \
              'wxsub01', '1900000110', 'mall.example.com', 'TPL-code-01'), \
             ('wxgoexpired', 'secretexpired0123456789abcdef012', 'tk2', '', '{now}', '', '', '', \
              '', NULL, 'TPL-code-02'), \
             ('wxgobare', 'secretbare0123456789abcdef012345', 'tk3', '', '{now}', '', '', '', \
              '', NULL, NULL)",
            now = go_time(-86_400)
        ))
        .await;
        // As the Go server wrote them: expire_date = DATE_ADD(now(), INTERVAL expire SECOND) in
        // its zone, so a row issued an hour ago with 7200 s expires in an hour.
        run(format!(
            "INSERT INTO wechat_access_token (appid, access_token, expire, expire_date, \
             update_time, message) VALUES \
             ('wxgolive', '{LIVE_TOKEN}', 7200, '{live}', '{issued}', 'success'), \
             ('wxgoexpired', '{EXPIRED_TOKEN}', 7200, '{expired}', '{old}', 'success')",
            live = go_time(3600),
            issued = go_time(-3600),
            expired = go_time(-600),
            old = go_time(-7800),
        ))
        .await;
        run(format!(
            "INSERT INTO wechat_jsapi_ticket (appid, ticket, expire, expire_date, update_time, \
             message) VALUES ('wxgolive', '{LIVE_TICKET}', 7200, '{live}', '{issued}', 'success')",
            live = go_time(3600),
            issued = go_time(-3600),
        ))
        .await;
        run(format!(
            "INSERT INTO wechat_user_info (appid, openid, user_name, nick_name, status, \
             create_time, update_time) VALUES \
             ('wxgolive', 'oGoAlice0123456789', 'alice', 'Alice', 0, '{t}', '{t}'), \
             ('wxgoexpired', '', 'bob', 'Bob', 0, '{t}', '{t}')",
            t = go_time(-86_400)
        ))
        .await;
        Some(GoDb { db, store })
    }

    /// `/<platform>/var/db/db` as the Go wetoken's registry held it, in an `fs://` registry:
    /// the hydra form with a Go MySQL DSN, reaching the database at `addr`.
    fn registry(&self, platform: &str, addr: SocketAddr) -> String {
        let dir = std::env::temp_dir().join(format!(
            "wetoken-takeover-{}-{}",
            std::process::id(),
            self.db.url.rsplit('/').next().unwrap()
        ));
        let node = dir.join(platform).join("var/db");
        std::fs::create_dir_all(&node).unwrap();
        let name = self.db.url.rsplit('/').next().unwrap();
        let conn = format!("root:@tcp({addr})/{name}?charset=utf8&tls=false");
        std::fs::write(
            node.join("db"),
            json!({"provider": "mysql", "connString": conn}).to_string(),
        )
        .unwrap();
        format!("fs://{}", dir.display())
    }

    /// Every column of the database, as `table.column → type, nullability, default`.
    async fn schema(&self) -> BTreeMap<String, String> {
        #[derive(FromQueryResult)]
        struct Column {
            name: String,
            shape: String,
        }
        Column::find_by_statement(Statement::from_string(
            DbBackend::MySql,
            "SELECT CAST(CONCAT(TABLE_NAME, '.', COLUMN_NAME) AS CHAR) AS name, \
             CAST(CONCAT_WS(' ', COLUMN_TYPE, IS_NULLABLE, COALESCE(COLUMN_DEFAULT, '-'), \
             COALESCE(COLLATION_NAME, '-')) AS CHAR) AS shape \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()",
        ))
        .all(self.store.connection())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.shape))
        .collect()
    }

    /// The rows that must survive, as text.
    async fn data(&self) -> Vec<String> {
        #[derive(FromQueryResult)]
        struct Line {
            line: String,
        }
        let mut out = Vec::new();
        for sql in [
            "SELECT CONCAT_WS('|', appid, secret, token, aes_key, mchid, pay_key, sub_appid, \
             sub_mchid, COALESCE(wechat_host, '-'), COALESCE(wcode_template_id, '-')) AS line \
             FROM wechat_app_info ORDER BY appid",
            // Not the rows wetoken adds for apps that had none (an empty value, never fetched),
            // which a Go row, written only with a fetched value, cannot be.
            "SELECT CONCAT_WS('|', appid, access_token, expire, expire_date) AS line \
             FROM wechat_access_token WHERE access_token <> '' ORDER BY appid",
            "SELECT CONCAT_WS('|', appid, ticket, expire, expire_date) AS line \
             FROM wechat_jsapi_ticket WHERE ticket <> '' ORDER BY appid",
            "SELECT CONCAT_WS('|', appid, openid, user_name) AS line FROM wechat_user_info \
             ORDER BY user_id",
        ] {
            let lines = Line::find_by_statement(Statement::from_string(DbBackend::MySql, sql))
                .all(self.store.connection())
                .await
                .unwrap();
            out.extend(lines.into_iter().map(|l| l.line));
        }
        out
    }

    /// How many stored tokens have a wetoken expiry.
    async fn adopted_tokens(&self) -> i64 {
        #[derive(FromQueryResult)]
        struct Count {
            n: i64,
        }
        Count::find_by_statement(Statement::from_string(
            DbBackend::MySql,
            "SELECT COUNT(*) AS n FROM wechat_access_token WHERE expires_at IS NOT NULL",
        ))
        .one(self.store.connection())
        .await
        .unwrap()
        .map_or(0, |c| c.n)
    }

    async fn drop_db(self) {
        let _ = self.store.connection().close_by_ref().await;
        self.db.drop_db().await;
    }
}

/// The MariaDB the tests use, as an address.
fn mysql_addr() -> SocketAddr {
    let url = std::env::var("WETOKEN_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let host = url
        .trim_start_matches("mysql://")
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/');
    let host = host.split('/').next().unwrap();
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:3306")
    };
    host.parse()
        .expect("WETOKEN_TEST_MYSQL_URL names an IP address and port")
}

/// `wetoken-cli`, built beside `wetoken-server` by `cargo test --workspace`.
fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_wetoken-server")).with_file_name("wetoken-cli");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test` (or build wetoken-cli first)",
        path.display()
    );
    let mut command = Command::new(path);
    for (key, _) in std::env::vars() {
        if key.starts_with("WETOKEN_") && !key.starts_with("WETOKEN_TEST_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    // The tests' proxies run on this runtime: let them, while the process runs.
    let out = tokio::task::block_in_place(|| command.output()).expect("run wetoken-cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn server(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = server_command();
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = tokio::task::block_in_place(|| command.output()).expect("run wetoken-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// docs/migrating-from-go.md, step by step.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_database_is_taken_over_as_the_guide_says() {
    let Some(go) = GoDb::create().await else {
        return;
    };
    let mock = MockWeChat::start().await.unwrap();
    for (appid, secret) in [
        ("wxgolive", "secretlive0123456789abcdef012345"),
        ("wxgoexpired", "secretexpired0123456789abcdef012"),
        ("wxgobare", "secretbare0123456789abcdef012345"),
    ] {
        mock.add_app(appid, secret);
    }
    // WeChat knows the token the Go server fetched an hour ago.
    mock.grant_token("wxgolive", LIVE_TOKEN, Duration::from_secs(3600));
    let registry = go.registry("mall", mysql_addr());
    let zone = ["--go-time-zone", GO_ZONE];
    let schema_before = go.schema().await;
    let data_before = go.data().await;

    // Step 2: install --check changes nothing and says what install will do.
    let (ok, out, err) = cli(
        &[&["install", "--check"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("holds the Go wetoken's tables"), "{out}");
    assert!(
        out.contains("wechat_access_token.access_token: VARCHAR(64) NOT NULL → VARCHAR(512) NULL"),
        "{out}"
    );
    assert!(
        out.contains("would adopt from wechat_access_token: 1 still valid")
            && out.contains("1 expired"),
        "{out}"
    );
    assert!(!out.contains("would refuse"), "{out}");
    assert_eq!(
        go.schema().await,
        schema_before,
        "--check changed the schema"
    );

    // Step 3: install.
    let (ok, out, err) = cli(
        &[&["install"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("created table wechat_card_ticket")
            && out.contains("applied migration m20261129_000007_go_takeover")
            && out.contains("adopted 3 tokens and tickets"),
        "{out}"
    );
    // Every Go row and value is as it was.
    assert_eq!(go.data().await, data_before);
    // Again: nothing to do, nothing changed.
    let schema_after = go.schema().await;
    let (ok, out, err) = cli(
        &[&["install"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(
        go.schema().await,
        schema_after,
        "a second install changed the schema"
    );
    let (ok, out, _) = cli(
        &[&["install", "--check"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok && out.contains("nothing to do"), "{out}");
    // The card ticket table took the Go tables' character set.
    assert!(
        schema_after["wechat_card_ticket.appid"].contains("utf8mb3")
            || schema_after["wechat_card_ticket.appid"].contains(" utf8_"),
        "{schema_after:?}"
    );

    // Step 4: the server's own nodes beside the Go database node, then start from them.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (ok, out, err) = server(
        &[
            "install",
            "-r",
            &registry,
            "-c",
            "prod",
            "--platform",
            "mall",
            "--listen",
            &listen,
        ],
        &[("WETOKEN_GO_TIME_ZONE", GO_ZONE)],
    );
    assert!(ok, "{err}");
    assert!(out.contains("kept the database node"), "{out}");
    let mut command = server_command();
    command
        .args(["start", "-r", &registry, "-c", "prod", "--platform", "mall"])
        .env("WETOKEN_WECHAT_BASE_URL", mock.url())
        .env("WETOKEN_GO_TIME_ZONE", GO_ZONE);
    let replica = Replica::spawn(command, port).await;

    // At start the scheduler renews what has no valid value: the expired token and the app
    // that had none (and their tickets). The live token and ticket are not among them.
    crate::harness::eventually(
        "the first scan's fetches",
        Duration::from_secs(20),
        || async { mock.calls(Endpoint::Token) == 2 && mock.calls(Endpoint::Ticket) == 2 },
    )
    .await;

    // Step 5: the Go SDK's requests, unchanged. The live token is the Go server's, byte for
    // byte, with its own expiry, and WeChat was never asked for one for that app.
    let sdk = |appid: &str, what: &str| {
        format!(
            "{}/wx/{appid}/{what}/get?{appid}&secret=whatever",
            replica.url
        )
    };
    let (status, text) = get(&sdk("wxgolive", "token")).await;
    assert_eq!(status, 200, "{text}");
    let body = json_of(&text);
    assert_eq!(body["access_token"], LIVE_TOKEN, "{body}");
    let left = body["expires_in"].as_i64().unwrap();
    assert!(
        (3500..=3600).contains(&left),
        "expire_date read in the wrong zone: {body}"
    );
    let (_, text) = get(&sdk("wxgolive", "ticket")).await;
    assert_eq!(json_of(&text)["ticket"], LIVE_TICKET, "{text}");
    let (_, text) = get(&format!("{}/wx/wxgolive/token/query", replica.url)).await;
    assert_eq!(json_of(&text)["access_token"], LIVE_TOKEN, "{text}");
    assert_eq!(mock.current_token("wxgolive").as_deref(), Some(LIVE_TOKEN));
    assert_eq!(mock.current_ticket("wxgolive", "jsapi"), None);

    // The expired one was fetched, once, and is what every caller gets.
    let fetched = mock.current_token("wxgoexpired").unwrap();
    for _ in 0..5 {
        let (_, text) = get(&sdk("wxgoexpired", "token")).await;
        assert_eq!(json_of(&text)["access_token"], fetched.as_str(), "{text}");
    }
    assert_eq!(mock.calls(Endpoint::Token), 2);

    // Every app and field is listed (the pay key only as being set).
    let (_, text) = get(&format!("{}/wechat/app/list", replica.url)).await;
    let apps = json_of(&text)["apps"].as_array().unwrap().clone();
    assert_eq!(apps.len(), 3, "{text}");
    let live = apps.iter().find(|a| a["appid"] == "wxgolive").unwrap();
    for (field, value) in [
        ("mchid", "1900000109"),
        ("sub_appid", "wxsub01"),
        ("sub_mchid", "1900000110"),
        ("wechat_host", "mall.example.com"),
        ("wcode_template_id", "TPL-code-01"),
    ] {
        assert_eq!(live[field], value, "{field}: {live}");
    }
    assert_eq!(live["has_pay_key"], true, "{live}");
    assert_eq!(live["has_aes_key"], true, "{live}");
    assert!(!text.contains("paykey0123456789"), "the pay key was listed");
    let bare = apps.iter().find(|a| a["appid"] == "wxgobare").unwrap();
    assert_eq!(bare["has_aes_key"], false, "'' is no AES key: {bare}");
    assert!(bare.get("mchid").is_none(), "'' is no mchid: {bare}");

    // The verification code goes to alice's openid with the app's template.
    let (status, text) = get(&format!(
        "{}/wx/wxgolive/wxcode/send?user_name=alice&system_name=mall&code=482913",
        replica.url
    ))
    .await;
    assert_eq!((status, text.as_str()), (200, "success"));
    let sent = mock.sent_templates();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["touser"], "oGoAlice0123456789");
    assert_eq!(sent[0]["template_id"], "TPL-code-01");
    assert_eq!(sent[0]["data"]["keyword1"]["value"], "482913");
    assert_eq!(
        mock.calls(Endpoint::Token),
        2,
        "the live token served the message"
    );

    // A new app is a row the Go columns accept, and nothing reads its '' as a value.
    let (status, text) = get(&format!(
        "{}/wechat/app/create?appid=wxgonew&secret=s3cr3t&aesKey=k&subAppid=wxsub9",
        replica.url
    ))
    .await;
    assert_eq!(status, 200, "{text}");
    let (_, text) = get(&format!("{}/wechat/app/show?appid=wxgonew", replica.url)).await;
    let app = &json_of(&text)["app"];
    assert_eq!(app["sub_appid"], "wxsub9", "{app}");
    assert_eq!(app["has_aes_key"], true, "{app}");
    drop(replica);
    mock.shutdown().await;
    go.drop_db().await;
}

/// `token/query` and `wxcode/send`, and each of their refusals.
#[tokio::test(flavor = "multi_thread")]
async fn the_go_routes_answer_and_refuse_as_the_go_server_did() {
    let Some(go) = GoDb::create().await else {
        return;
    };
    // Only wxgolive is known to WeChat: the first scan's fetches for the other two fail (and
    // halt them), so the expired Go token stays what is stored.
    let mock = MockWeChat::start().await.unwrap();
    mock.add_app("wxgolive", "secretlive0123456789abcdef012345");
    mock.grant_token("wxgolive", LIVE_TOKEN, Duration::from_secs(3600));
    let port = free_port();
    let mut command = server_command();
    command
        .args(["start", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--database-url",
            &go.db.url,
            "--wechat-base-url",
            &mock.url(),
        ])
        .env("WETOKEN_GO_TIME_ZONE", GO_ZONE);
    let replica = Replica::spawn(command, port).await;
    let url = |path: &str| format!("{}{path}", replica.url);
    crate::harness::eventually(
        "the first scan's fetches",
        Duration::from_secs(20),
        || async { mock.calls(Endpoint::Token) == 2 },
    )
    .await;

    // query never fetches: the expired token is not served, and nothing is stored for bare.
    let (_, text) = get(&url("/wx/wxgoexpired/token/query")).await;
    let body = json_of(&text);
    assert_eq!(body["errcode"], 90410, "{body}");
    let (_, text) = get(&url("/wx/wxgobare/token/query")).await;
    assert_eq!(json_of(&text)["errcode"], 90410, "{text}");
    let (_, text) = get(&url("/wx/wxnobody/token/query")).await;
    assert_eq!(json_of(&text)["errcode"], 90404, "{text}");
    assert_eq!(mock.calls(Endpoint::Token), 2);

    let send = |appid: &str, query: &str| url(&format!("/wx/{appid}/wxcode/send?{query}"));
    // Each refusal, and WeChat's own.
    for (target, errcode, says) in [
        (
            send("wxgolive", "user_name=alice&system_name=mall"),
            90400,
            "code is required",
        ),
        (
            send("wxgolive", "user_name=carol&system_name=m&code=1"),
            90400,
            "用户不存在",
        ),
        (
            send("wxgoexpired", "user_name=bob&system_name=m&code=1"),
            90400,
            "未绑定公众号",
        ),
        (
            send("wxgobare", "user_name=bob&system_name=m&code=1"),
            90400,
            "未配置微信验证码模板编号",
        ),
        (
            send("wxnobody", "user_name=bob&system_name=m&code=1"),
            90404,
            "unknown app",
        ),
    ] {
        let (_, text) = get(&target).await;
        let body = json_of(&text);
        assert_eq!(body["errcode"], errcode, "{target}: {body}");
        assert!(
            body["errmsg"].as_str().unwrap().contains(says),
            "{target}: {body}"
        );
    }
    assert!(mock.sent_templates().is_empty());
    mock.inject(
        Endpoint::TemplateSend,
        wetoken_mock::Fault::ErrCode(43004),
        1,
    );
    let (_, text) = get(&send("wxgolive", "user_name=alice&system_name=m&code=1")).await;
    let body = json_of(&text);
    assert_eq!(body["errcode"], 43004, "{body}");
    assert!(
        body["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("发送验证码失败:"),
        "{body}"
    );
    // A token WeChat no longer takes is refreshed once and the message sent.
    mock.invalidate_token(LIVE_TOKEN);
    let (status, text) = get(&send("wxgolive", "user_name=alice&system_name=m&code=7")).await;
    assert_eq!((status, text.as_str()), (200, "success"));
    assert_eq!(mock.calls(Endpoint::Token), 3);
    assert_eq!(mock.sent_templates().len(), 1);
    drop(replica);
    mock.shutdown().await;
    go.drop_db().await;
}

/// A Go wtserver that stored a token minutes ago is still running: install says so and stops,
/// naming the row, unless forced.
#[tokio::test(flavor = "multi_thread")]
async fn install_refuses_while_a_go_server_writes() {
    let Some(go) = GoDb::create().await else {
        return;
    };
    go.store
        .connection()
        .execute_unprepared(&format!(
            "INSERT INTO wechat_access_token (appid, access_token, expire, expire_date, \
             update_time, message) VALUES ('wxgobare', 'GO_fresh', 7200, '{}', '{}', 'success')",
            go_time(7200 - 90),
            go_time(-90)
        ))
        .await
        .unwrap();
    let registry = go.registry("mall", mysql_addr());
    let zone = ["--go-time-zone", GO_ZONE];
    let schema_before = go.schema().await;
    let (ok, out, _) = cli(
        &[&["install", "--check"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok);
    assert!(
        out.contains("would refuse") && out.contains("wechat_access_token of wxgobare"),
        "{out}"
    );
    let (ok, _, err) = cli(
        &[&["install"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("a Go wetoken (wtserver) still writes to this database")
            && err.contains("wxgobare")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        go.schema().await,
        schema_before,
        "a refused install changed the schema"
    );
    // Read as UTC, the Go rows were issued eight hours ahead: install says the zone is wrong.
    let (ok, out, _) = cli(
        &[
            "install",
            "--check",
            "--go-time-zone",
            "UTC",
            &registry,
            "mall",
        ],
        &[],
    );
    assert!(ok && out.contains("issued in the future"), "{out}");
    let (ok, _, err) = cli(
        &[
            "install",
            "--force",
            "--go-time-zone",
            "UTC",
            &registry,
            "mall",
        ],
        &[],
    );
    assert!(!ok && err.contains("Set go_time_zone"), "{err}");
    assert_eq!(
        go.schema().await,
        schema_before,
        "a refused install changed the schema"
    );
    let (ok, out, err) = cli(
        &[&["install", "--force"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("adopted 4 tokens and tickets"), "{out}");
    go.drop_db().await;
}

/// A TCP proxy in front of MariaDB that forwards the first `limit` statements (the MySQL
/// protocol's `COM_QUERY` and `COM_STMT_EXECUTE` commands, on every connection together) and
/// holds back the command after them, raising `cut`; [`install_killed`] then kills the process,
/// and dropping the proxy closes its connections: a process killed right after its `limit`-th
/// statement.
struct StatementCut {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl StatementCut {
    async fn start(target: SocketAddr, limit: usize) -> StatementCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (s, c) = (seen.clone(), cut.clone());
        let tasks2: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tasks = tasks2.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                // Each packet goes on at once (Nagle would hold it for the peer's ACK).
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (s, c) = (s.clone(), c.clone());
                let task = tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    // Client to server, packet by packet: 3 bytes of length, 1 of sequence.
                    loop {
                        let mut header = [0u8; 4];
                        if client_read.read_exact(&mut header).await.is_err() {
                            break;
                        }
                        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
                        let mut packet = vec![0u8; 4 + len];
                        packet[..4].copy_from_slice(&header);
                        if client_read.read_exact(&mut packet[4..]).await.is_err() {
                            break;
                        }
                        let payload = &packet[4..];
                        if header[3] == 0 && !payload.is_empty() {
                            // A new command: held back for good once `limit` are through.
                            if c.load(Ordering::SeqCst) || s.load(Ordering::SeqCst) >= limit {
                                c.store(true, Ordering::SeqCst);
                                std::future::pending::<()>().await;
                            }
                            if matches!(payload[0], 0x03 | 0x17) {
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if server_write.write_all(&packet).await.is_err() {
                            break;
                        }
                    }
                    down.abort();
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks2.lock().unwrap().push(accept.abort_handle());
        StatementCut {
            addr,
            seen,
            cut,
            tasks: tasks2,
        }
    }
}

impl Drop for StatementCut {
    /// Closes every connection it still holds, so that none is left open at the database.
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Runs `wetoken-cli install` through `cut`, and kills it (SIGKILL) as soon as the cut holds back
/// a statement. Returns whether it was killed, and else whether it succeeded.
async fn install_killed(registry: &str, cut: &StatementCut) -> (bool, bool) {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_wetoken-server")).with_file_name("wetoken-cli");
    let mut child = Command::new(path)
        .args(["install", "--go-time-zone", GO_ZONE, registry, "mall"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wetoken-cli");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (false, status.success());
        }
        if cut.cut.load(Ordering::SeqCst) {
            child.kill().unwrap();
            child.wait().unwrap();
            return (true, false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// MySQL commits each DDL statement on its own, so an install can stop between any two. Cut off
/// after each of its statements, it finishes when run again, with the schema and rows a whole
/// install gives.
#[tokio::test(flavor = "multi_thread")]
async fn an_install_cut_off_after_any_statement_finishes_when_run_again() {
    let zone = ["--go-time-zone", GO_ZONE];
    // The reference: one whole install, counting its statements.
    let Some(reference) = GoDb::create().await else {
        return;
    };
    let counter = StatementCut::start(mysql_addr(), usize::MAX).await;
    let registry = reference.registry("mall", counter.addr);
    let (ok, _, err) = cli(
        &[&["install"][..], &zone, &[&registry, "mall"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    let total = counter.seen.load(Ordering::SeqCst);
    let schema = reference.schema().await;
    reference.drop_db().await;
    assert!(
        total > 20,
        "an install of the Go schema took only {total} statements"
    );

    let mut cut_runs = 0;
    for limit in 1..total {
        let go = GoDb::create().await.unwrap();
        let data = go.data().await;
        let cut = StatementCut::start(mysql_addr(), limit).await;
        let through_cut = go.registry("mall", cut.addr);
        let (killed, ok) = install_killed(&through_cut, &cut).await;
        assert!(
            killed || ok,
            "install through the proxy failed without being cut ({limit})"
        );
        cut_runs += usize::from(killed);
        // The killed process's connections close, as the kernel closes a dead process's
        // sockets: the proxy held them open, and with them the install lock of the session
        // it cut, for which the next install would wait.
        drop(cut);
        let direct = go.registry("mall", mysql_addr());
        let (ok, out, err) = cli(&[&["install"][..], &zone, &[&direct, "mall"]].concat(), &[]);
        assert!(
            ok,
            "cut after {limit} of {total} statements, the next install failed: {err}"
        );
        assert_eq!(go.schema().await, schema, "cut after {limit}: {out}");
        assert_eq!(go.data().await, data, "cut after {limit}: {out}");
        // And the adopted expiries are there.
        let adopted = go.adopted_tokens().await;
        assert_eq!(adopted, 2, "cut after {limit}: {out}");
        go.drop_db().await;
    }
    assert!(cut_runs > 20, "only {cut_runs} of {total} runs were cut");
}
