//! Third-party platforms from the command line: `app add --kind component`, `app add
//! --component`, and `import-authorizers`, on every database.

use std::sync::Arc;

use sea_orm::ConnectionTrait;
use wetoken_core::{
    AppId, DatabaseOptions, Engine, EngineConfig, Keyring, Kind, Store, SystemClock, WeChat,
    WeChatOptions,
};
use wetoken_mock::{Endpoint, MockComponent, MockConfig, MockWeChat};
use wetoken_testkit::{TestDb, on_every_database};

use super::run_cli;

const COMPONENT: &str = "wxcomponent01";
const TOKEN: &str = "pushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

on_every_database!(
    platforms_and_authorizers_are_added_with_clear_refusals,
    import_reports_every_line_and_writes_only_the_good_ones,
    an_imported_authorizer_is_fetched_by_the_scheduler_through_its_component,
);

/// The CLI on `db`, with `input` on standard input and `env`.
struct Cli<'a> {
    db: &'a TestDb,
    env: Vec<(&'static str, String)>,
}

impl Cli<'_> {
    fn run(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--database-url", self.db.url.as_str()]);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(None, &all, input, &env)
    }

    /// Runs and expects success.
    fn ok(&self, args: &[&str], input: &str) -> String {
        let (ok, out, err) = self.run(args, input);
        assert!(ok, "{} {args:?}: {out}{err}", self.db.backend.name());
        out
    }

    /// Runs and expects a failure whose message holds `says`.
    fn refused(&self, args: &[&str], input: &str, says: &str) {
        let (ok, out, err) = self.run(args, input);
        assert!(
            !ok && err.contains(says),
            "{} {args:?}: expected {says:?}: {out}{err}",
            self.db.backend.name()
        );
    }

    fn add_component(&self, appid: &str) {
        self.ok(
            &[
                "app",
                "add",
                appid,
                "--kind",
                "component",
                "--token",
                TOKEN,
                "--aes-key",
                AES_KEY,
            ],
            "componentsecret\n",
        );
    }
}

/// A master key for the CLI's environment, and the keyring it makes.
fn master_key() -> (String, Arc<Keyring>) {
    let key = wetoken_core::crypto::MasterKey::generate();
    let parsed = wetoken_core::crypto::MasterKey::parse(&key, "key").unwrap();
    (key, Arc::new(Keyring::new(parsed, None)))
}

async fn store(db: &TestDb, keyring: Option<Arc<Keyring>>) -> Store {
    let mut options = DatabaseOptions::new(&db.url);
    options.keyring = keyring;
    Store::connect(&options).await.unwrap()
}

fn id(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

async fn platforms_and_authorizers_are_added_with_clear_refusals(db: &TestDb) {
    let cli = Cli { db, env: vec![] };
    cli.ok(&["migrate", "up"], "");
    let component = ["--kind", "component"];

    // A platform needs its message token and a well-formed EncodingAESKey, checked before the
    // secret is asked for (no input is given here).
    cli.refused(
        &[&["app", "add", COMPONENT][..], &component].concat(),
        "",
        "needs --token and --aes-key",
    );
    cli.refused(
        &[
            &["app", "add", COMPONENT][..],
            &component,
            &["--token", TOKEN, "--aes-key", "short"],
        ]
        .concat(),
        "",
        "EncodingAESKey must be 43 characters",
    );
    cli.refused(
        &[
            &["app", "add", COMPONENT][..],
            &component,
            &["--token", TOKEN, "--aes-key", AES_KEY],
        ]
        .concat(),
        "",
        "no secret given",
    );
    cli.add_component(COMPONENT);
    cli.ok(&["app", "add", "wxplain01"], "plainsecret\n");
    // The message token and key from files, kept out of the process list.
    let dir = std::env::temp_dir().join(format!("wetoken-platforms-{}", db.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, aes) = (dir.join("token.txt"), dir.join("aes.txt"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&aes, format!("{AES_KEY}\n")).unwrap();
    let files = [
        "--token-file",
        token.to_str().unwrap(),
        "--aes-key-file",
        aes.to_str().unwrap(),
    ];
    let out = cli.ok(
        &[&["app", "add", "wxcomponent02"][..], &component, &files].concat(),
        "componentsecret\n",
    );
    assert!(out.contains("added wxcomponent02 (component"), "{out}");
    std::fs::write(&aes, "not-a-key\n").unwrap();
    cli.refused(
        &[&["app", "add", "wxcomponent03"][..], &component, &files].concat(),
        "componentsecret\n",
        "EncodingAESKey must be 43 characters",
    );
    let _ = std::fs::remove_dir_all(&dir);

    // An authorizer names a stored platform, is mp or mini, and its refresh token is read like
    // a secret, once the platform is known (no input is given to the refused ones).
    cli.refused(
        &["app", "add", "wxauth01", "--component", "wxnone"],
        "",
        "no third-party platform wxnone is stored",
    );
    cli.refused(
        &["app", "add", "wxauth01", "--component", "wxplain01"],
        "",
        "wxplain01 is a mp app, not a third-party platform",
    );
    cli.refused(
        &["app", "add", "wxauth01", "--component", "bad/id"],
        "",
        "--component: malformed appid",
    );
    cli.refused(
        &[
            "app",
            "add",
            "wxauth01",
            "--component",
            COMPONENT,
            "--kind",
            "work",
        ],
        "",
        "--kind mp or mini, not work",
    );
    cli.refused(
        &[
            "app",
            "add",
            "wxauth01",
            "--component",
            COMPONENT,
            "--token-mode",
            "stable",
        ],
        "",
        "--token-mode stable does not apply",
    );
    cli.refused(
        &["app", "add", "wxauth01", "--component", COMPONENT],
        "",
        "no authorizer_refresh_token given",
    );
    let out = cli.ok(
        &[
            "app",
            "add",
            "wxauth01",
            "--component",
            COMPONENT,
            "--kind",
            "mini",
        ],
        "refreshtoken01\n",
    );
    assert!(
        out.contains("added wxauth01 (mini, authorizer of wxcomponent01)"),
        "{out}"
    );
    cli.refused(
        &["app", "add", "wxauth01", "--component", COMPONENT],
        "refreshtoken01\n",
        "app wxauth01 already exists",
    );

    let list = cli.ok(&["app", "list"], "");
    let row = |appid: &str| {
        list.lines()
            .find(|l| l.starts_with(appid))
            .unwrap_or_else(|| panic!("{appid} in {list}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert!(list.contains("COMPONENT"), "{list}");
    assert_eq!(row("wxauth01")[1], "mini", "{list}");
    assert_eq!(row("wxauth01").last(), Some(&COMPONENT), "{list}");
    assert_eq!(row(COMPONENT)[1], "component", "{list}");
    assert_eq!(row(COMPONENT).last(), Some(&"-"), "{list}");
    // No classic or stable mode for either.
    assert_eq!(row("wxauth01")[2], "-", "{list}");
    assert_eq!(row(COMPONENT)[2], "-", "{list}");
    let list = cli.ok(&["app", "list", "--kind", "component"], "");
    assert!(
        list.contains(COMPONENT) && !list.contains("wxauth01"),
        "{list}"
    );

    let show = cli.ok(&["app", "show", "wxauth01"], "");
    assert!(
        show.contains("component:    wxcomponent01")
            && show.contains("refresh token: set (never shown)")
            && !show.contains("refreshtoken01")
            && !show.contains("revoked"),
        "{show}"
    );
    let show = cli.ok(&["app", "show", COMPONENT], "");
    assert!(
        show.contains("kind:         component")
            && show.contains("appsecret:    set (never shown)")
            && show.contains("msg token:    set")
            && show.contains("aes key:      set"),
        "{show}"
    );

    // A withdrawn authorization shows in both.
    let store = store(db, None).await;
    assert!(
        store
            .revoke_authorizer(&id(COMPONENT), &id("wxauth01"), chrono::Utc::now())
            .await
            .unwrap()
    );
    let show = cli.ok(&["app", "show", "wxauth01"], "");
    assert!(show.contains("revoked:      "), "{show}");
    let list = cli.ok(&["app", "list"], "");
    assert!(
        list.lines()
            .any(|l| l.starts_with("wxauth01") && l.contains("revoked")),
        "{list}"
    );
}

/// The import file of the report test: good lines, bad ones, and ones that clash with what is
/// stored.
const FILE: &str = "\
appid,refresh_token,kind
wxgood01,RefreshGood01abcdef
wxgood02,RefreshGood02abcdef,mini
{\"authorizer_appid\":\"wxgood03\",\"authorizer_refresh_token\":\"RefreshGood03abcdef\"}
wx/bad,RefreshBad04abcdef
wxbad05,
wxbad06,RefreshBad06abcdef,work
wxdup07,RefreshDup07abcdef
wxdup07,RefreshDup08abcdef
wxplain01,RefreshPlain09abcdef
wxother01,RefreshOther10abcdef
wxkept01,RefreshKept11abcdef,mini
";

async fn import_reports_every_line_and_writes_only_the_good_ones(db: &TestDb) {
    let (key, keyring) = master_key();
    let cli = Cli {
        db,
        env: vec![("WETOKEN_MASTER_KEY", key)],
    };
    cli.ok(&["migrate", "up"], "");
    cli.add_component(COMPONENT);
    cli.add_component("wxcomponent02");
    cli.ok(&["app", "add", "wxplain01"], "PlainSecret01\n");
    cli.ok(
        &["app", "add", "wxother01", "--component", "wxcomponent02"],
        "OtherRefresh01\n",
    );
    cli.ok(
        &["app", "add", "wxkept01", "--component", COMPONENT],
        "KeptRefresh01\n",
    );
    let import = ["import-authorizers", "--component", COMPONENT, "-"];

    // The platform must be a stored component; nothing is read past that.
    cli.refused(
        &["import-authorizers", "--component", "wxplain01", "-"],
        FILE,
        "wxplain01 is a mp app, not a third-party platform",
    );
    cli.refused(&import, "\n# nothing\n", "holds no authorizers");

    // --check says what would happen, and writes nothing.
    let (ok, out, _) = cli.run(&[&import[..], &["--check"]].concat(), FILE);
    assert!(!ok, "{out}");
    assert!(
        out.contains("would add 3, would update 0, skipped 0, refused 8")
            && out.contains("nothing was written (--check)"),
        "{out}"
    );
    let store = store(db, Some(keyring)).await;
    assert!(store.app(&id("wxgood01")).await.unwrap().is_none());

    let (ok, out, err) = cli.run(&import, FILE);
    assert!(!ok, "a refused line fails the run: {out}");
    let expected = [
        "line 5: refused: malformed appid \"wx/bad\": expected 1 to 64 letters, digits, '_', '-' or inner '.'",
        "line 6: refused: wxbad05: no refresh token",
        "line 7: refused: wxbad06: kind \"work\": an authorizer is mp (an official account) or mini (a mini program)",
        "line 8: refused: wxdup07 appears on line 9 too: neither is imported",
        "line 9: refused: wxdup07 appears on line 8 too: neither is imported",
        "line 10: refused: wxplain01 is stored as an app of its own (kind mp), not as an authorizer: left as it is",
        "line 11: refused: wxother01 is stored as an authorizer of wxcomponent02: left as it is",
        "line 12: refused: wxkept01 is stored as kind mp, and this line says mini: left as it is (remove it first to add it again)",
        "added 3, updated 0, skipped 0, refused 8 authorizers of wxcomponent01",
        "the servers fetch the new authorizers' tokens: each is due at once, once wxcomponent01 has its component_verify_ticket",
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
    assert!(
        err.contains("8 lines were refused and nothing of them was written"),
        "{err}"
    );

    // The good lines are stored as authorizers, sealed; nothing of the bad ones is.
    for (appid, kind, token) in [
        ("wxgood01", "mp", "RefreshGood01abcdef"),
        ("wxgood02", "mini", "RefreshGood02abcdef"),
        ("wxgood03", "mp", "RefreshGood03abcdef"),
    ] {
        let app = store.app(&id(appid)).await.unwrap().unwrap();
        assert_eq!(app.info.component, Some(id(COMPONENT)));
        assert_eq!(app.info.kind.as_str(), kind);
        assert_eq!(app.secret.expose(), token);
    }
    for appid in ["wxbad05", "wxbad06", "wxdup07"] {
        assert!(store.app(&id(appid)).await.unwrap().is_none(), "{appid}");
    }
    for (appid, component, secret) in [
        ("wxplain01", None, "PlainSecret01"),
        ("wxother01", Some(id("wxcomponent02")), "OtherRefresh01"),
        ("wxkept01", Some(id(COMPONENT)), "KeptRefresh01"),
    ] {
        let app = store.app(&id(appid)).await.unwrap().unwrap();
        assert_eq!(app.info.component, component, "{appid}");
        assert_eq!(app.secret.expose(), secret, "{appid} left as it was");
    }
    // Nothing plain on disk: each refresh token is a sealed value in its row, and on SQLite
    // no byte of the file holds one.
    let rows = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            store.connection().get_database_backend(),
            "SELECT appid, secret FROM wechat_app_info WHERE appid LIKE 'wxgood%'",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let stored: String = row.try_get("", "secret").unwrap();
        assert!(
            stored.starts_with("wtenc:") && !stored.contains("Refresh"),
            "{stored}"
        );
    }
    if let Some(path) = db.url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap();
        let mut bytes = Vec::new();
        for suffix in ["", "-journal", "-wal"] {
            bytes.extend(std::fs::read(format!("{path}{suffix}")).unwrap_or_default());
        }
        for token in ["RefreshGood01", "RefreshGood02", "RefreshGood03"] {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{token} on disk"
            );
        }
    }

    // Again from a file: the good lines are stored already and left as they are.
    let dir = std::env::temp_dir().join(format!("wetoken-authorizers-{}", db.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("authorizers.csv");
    let good: String = FILE.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &good).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let path = file.to_str().unwrap();
    let by_file = ["import-authorizers", "--component", COMPONENT, path];
    let (ok, out, err) = cli.run(&by_file, "");
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "3 authorizers are stored already and were left as they are (--update replaces their refresh tokens)",
            "added 0, updated 0, skipped 3, refused 0 authorizers of wxcomponent01",
        ],
        "{out}"
    );
    assert!(
        err.contains("is readable by every user of this machine"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (ok, _, err) = cli.run(&by_file, "");
        assert!(ok && !err.contains("readable"), "{err}");
    }

    // --update replaces a changed refresh token, leaves an equal one, and adds a new line.
    let changed = "wxgood01,RefreshGood01CHANGED\nwxgood02,RefreshGood02abcdef\nwxgood04,RefreshGood04abcdef\n";
    let out = cli.ok(&[&import[..], &["--update"]].concat(), changed);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "1 authorizers are stored already with the same refresh token",
            "added 1, updated 1, skipped 1, refused 0 authorizers of wxcomponent01",
            "the servers fetch the new authorizers' tokens: each is due at once, once wxcomponent01 has its component_verify_ticket",
        ],
        "{out}"
    );
    let secret = |appid: &'static str| {
        let store = &store;
        async move {
            store
                .app(&id(appid))
                .await
                .unwrap()
                .unwrap()
                .secret
                .expose()
                .to_owned()
        }
    };
    assert_eq!(secret("wxgood01").await, "RefreshGood01CHANGED");
    assert_eq!(secret("wxgood02").await, "RefreshGood02abcdef");
    assert_eq!(secret("wxgood04").await, "RefreshGood04abcdef");

    // A withdrawn authorization is skipped, with why, even with --update.
    store
        .revoke_authorizer(&id(COMPONENT), &id("wxgood03"), chrono::Utc::now())
        .await
        .unwrap();
    let out = cli.ok(
        &[&import[..], &["--update"]].concat(),
        "wxgood03,RefreshGood03NEW\n",
    );
    assert!(
        out.starts_with("line 1: skipped: wxgood03 withdrew its authorization at ")
            && out.contains("added 0, updated 0, skipped 1, refused 0"),
        "{out}"
    );
    assert_eq!(secret("wxgood03").await, "RefreshGood03abcdef");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An authorizer known only by its refresh token (as another system kept it), imported: the
/// scheduler of an engine over the database fetches its token through its component at once
/// (it has none, so it is due), and the engine serves that token without another fetch.
async fn an_imported_authorizer_is_fetched_by_the_scheduler_through_its_component(db: &TestDb) {
    let config = MockConfig {
        verify_ticket_interval: None,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    mock.add_component(MockComponent {
        appid: COMPONENT.into(),
        secret: "componentsecret".into(),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        push_url: Some("http://127.0.0.1:9/nobody".into()),
    })
    .unwrap();
    // Authorized at WeChat (the push went to the old system, not here).
    mock.authorize_as(COMPONENT, Some("wxauthmini01"), None, true)
        .await
        .unwrap();
    mock.authorize(COMPONENT, Some("wxauthmp01"), None)
        .await
        .unwrap();
    let file = format!(
        "{{\"authorizer_appid\":\"wxauthmini01\",\"authorizer_refresh_token\":\"{}\",\"kind\":\"mini\"}}\nwxauthmp01,{}\n",
        mock.authorizer_refresh_token("wxauthmini01").unwrap(),
        mock.authorizer_refresh_token("wxauthmp01").unwrap(),
    );

    let cli = Cli { db, env: vec![] };
    cli.ok(&["migrate", "up"], "");
    cli.add_component(COMPONENT);
    let out = cli.ok(
        &["import-authorizers", "--component", COMPONENT, "-"],
        &file,
    );
    assert!(out.contains("added 2, updated 0"), "{out}");

    let wechat = WeChat::new(&WeChatOptions {
        base_url: mock.url(),
        ..WeChatOptions::default()
    })
    .unwrap();
    let config = EngineConfig {
        scan_interval_ms: 20,
        ..EngineConfig::default()
    };
    let engine = Engine::new(store(db, None).await, wechat, Arc::new(SystemClock), config).unwrap();
    let ticket = mock
        .push_verify_ticket(COMPONENT)
        .await
        .unwrap()
        .ticket
        .unwrap();
    engine
        .accept_verify_ticket(&id(COMPONENT), &ticket, chrono::Utc::now().timestamp())
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run_scheduler(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    for appid in ["wxauthmini01", "wxauthmp01"] {
        loop {
            let stored = engine
                .store()
                .credential(&id(appid), Kind::AccessToken)
                .await
                .unwrap()
                .and_then(|record| record.credential);
            if stored.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the scheduler never fetched {appid}'s token"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let _ = stop.send(());
    scheduler.await.unwrap();

    let fetched = mock.calls(Endpoint::AuthorizerToken);
    assert_eq!(fetched, 2, "one fetch an authorizer");
    for appid in ["wxauthmini01", "wxauthmp01"] {
        let token = engine.get(&id(appid), Kind::AccessToken).await.unwrap();
        assert_eq!(
            Some(token.value.clone()),
            mock.current_authorizer_token(appid),
            "{appid}"
        );
    }
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        fetched,
        "served as stored"
    );
    mock.shutdown().await;
}
