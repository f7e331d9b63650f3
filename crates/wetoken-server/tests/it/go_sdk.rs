//! The real Go SDK (`github.com/lib4dev/wechat`, which Go services point at the Go wetoken)
//! against a real server with its default settings: `tests/gosdk/main.go`, built once per test
//! run with Debian's `golang-go`, offline, from the SDK's copy in `../shared/go-sdk` next to the
//! workspace (`WETOKEN_GO_SDK` names another).
//!
//! Without `go` or the SDK the tests say loudly that they skipped; under `CI=true` they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use wetoken_core::{DatabaseOptions, Store};
use wetoken_mock::Endpoint;
use wetoken_server::{CredentialErrors, Settings};

use crate::harness::{
    SECRET, TestDb, TestServer, add_key, eventually, mock_with, on_every_database, settings,
};

const APP: &str = "wx9e02ddcc34513fd4";
const OTHER: &str = "wxgoother";
const OTHER_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The built program, or why there is none.
fn program() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(path) => Some(path.clone()),
        Err(missing) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the Go SDK tests: {missing}"
            );
            eprintln!(
                "\n=== SKIPPED: the Go SDK tests did not run: {missing}. \
                 Install golang-go (apt-get install golang-go) and put the SDK at \
                 ../shared/go-sdk or name it in WETOKEN_GO_SDK. ===\n"
            );
            None
        }
    }
}

/// Builds `tests/gosdk` in a module of its own under the target directory, with the SDK
/// replaced by its local copy, offline. `Err` only for what is missing (`go`, the SDK); a
/// failing build panics.
fn build() -> Result<PathBuf, String> {
    let sdk = std::env::var_os("WETOKEN_GO_SDK").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/go-sdk"),
        PathBuf::from,
    );
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|dir| dir.join("go.mod").is_file())
        .ok_or_else(|| format!("no Go SDK (a go.mod) at {}", sdk.display()))?;
    match Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("`go version` failed: {out:?}")),
        Err(e) => return Err(format!("no `go` command ({e})")),
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let module = tmp.join("gosdk");
    std::fs::create_dir_all(&module).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gosdk/main.go");
    std::fs::copy(&source, module.join("main.go")).unwrap();
    let go_mod = format!(
        "module wetoken.test/gosdk\n\ngo 1.16\n\nrequire github.com/lib4dev/wechat v0.0.0\n\n\
         replace github.com/lib4dev/wechat => {}\n",
        sdk.display()
    );
    std::fs::write(module.join("go.mod"), go_mod).unwrap();
    let binary = module.join("gosdk");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&module)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOSUMDB", "off")
        .env("GOENV", "off")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", tmp.join("go/cache"))
        .env("GOPATH", tmp.join("go/path"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(binary)
}

/// Runs the program with `args`; what it printed.
async fn run(program: &Path, args: &[&str]) -> Value {
    let mut command = Command::new(program);
    command.args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gosdk {args:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("gosdk {args:?} printed ({e}): {stdout}"))
}

/// `Token()` of `NewDefaultAccessTokenByURL(appid, secret, url)`.
async fn token(program: &Path, url: &str, appid: &str, secret: &str) -> Value {
    run(program, &["token", url, appid, secret]).await
}

/// That `outcome` is the SDK's `*mp.Error` with `errcode`; its errmsg.
fn sdk_error(outcome: &Value, errcode: i64) -> String {
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert_eq!(outcome["errcode"], errcode, "{outcome}");
    let errmsg = outcome["errmsg"].as_str().unwrap_or_default();
    assert!(!errmsg.is_empty(), "{outcome}");
    errmsg.to_owned()
}

on_every_database!(the_go_sdk_reads_tokens_and_calls_wechat_through_wetoken);

async fn the_go_sdk_reads_tokens_and_calls_wechat_through_wetoken(db: &TestDb) {
    let built = tokio::task::spawn_blocking(program).await;
    let Some(gosdk) = built.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) else {
        return;
    };
    let mock = mock_with(&[APP]).await;
    mock.add_app(OTHER, OTHER_SECRET);
    let mut s = settings(db, &mock);
    // What a Go team gets when it points its SDK at a wetoken started with no settings.
    s.http.credential_errors = Settings::default().http.credential_errors;
    s.consumer_keys_reload_ms = 50;
    let server = TestServer::start(s.clone()).await;
    server.add_app(APP).await;
    server.add_app_with(OTHER, OTHER_SECRET).await;
    let url = |appid: &str| format!("{}/wx/{appid}/token/get", server.url);

    // Token(): the token the server holds, fetched once.
    let got = token(&gosdk, &url(APP), APP, SECRET).await;
    assert_eq!(got["ok"], true, "{got}");
    let held = server.token(APP).await;
    assert_eq!(got["token"], held.as_str());
    assert_eq!(mock.current_token(APP).as_deref(), Some(held.as_str()));
    let again = token(
        &gosdk,
        &format!("{}/{APP}/wechat/token/get", server.url),
        APP,
        SECRET,
    )
    .await;
    assert_eq!(
        again["token"],
        held.as_str(),
        "the Go wetoken's other route"
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // The Go README's example: the token from wetoken, the menu at WeChat (the mock).
    let created = run(&gosdk, &["menu", &url(APP), APP, SECRET, &mock.url()]).await;
    assert_eq!(created["ok"], true, "{created}");
    assert_eq!(mock.calls(Endpoint::MenuCreate), 1);
    assert_eq!(mock.calls(Endpoint::Token), 1);

    // wetoken's errors reach Go code as *mp.Error, errcode and errmsg intact.
    let unknown = token(&gosdk, &url("wxnobody"), "wxnobody", SECRET).await;
    let errmsg = sdk_error(&unknown, 90404);
    assert!(errmsg.contains("wxnobody"), "{errmsg}");

    // Consumer keys from now on (added by another process, as `wetoken-cli key add` does).
    let cli = Store::connect(&DatabaseOptions::new(&db.url))
        .await
        .unwrap();
    add_key(&cli, "mall", &[APP], false, &[]).await;
    eventually("keys are required", Duration::from_secs(10), || async {
        let (_, body) = server.get(&format!("/{OTHER}/wechat/token/get")).await;
        body["errcode"] == 90401
    })
    .await;

    // The SDK reads its own app through its secret, and nothing else.
    let own = token(&gosdk, &url(APP), APP, SECRET).await;
    assert_eq!(own["token"], held.as_str(), "{own}");
    let other = token(&gosdk, &url(OTHER), OTHER, OTHER_SECRET).await;
    assert_eq!(other["ok"], true, "{other}");
    let borrowed = token(&gosdk, &url(OTHER), OTHER, SECRET).await;
    let refused = sdk_error(&borrowed, 90401);
    let wrong = token(&gosdk, &url(APP), APP, &SECRET[..31]).await;
    assert_eq!(sdk_error(&wrong, 90401), refused);
    // It says what would do, in one line.
    assert!(
        refused.contains("consumer key") && refused.contains("secret") && !refused.contains("  "),
        "{refused}"
    );
    assert_eq!(mock.calls(Endpoint::Token), 2, "one fetch for each app");
    server.stop().await;

    // What the SDK makes of real statuses: an error of its own, without errcode or errmsg.
    s.http.credential_errors = CredentialErrors::AsStatus;
    let server = TestServer::start(s).await;
    let url = |appid: &str| format!("{}/wx/{appid}/token/get", server.url);
    let own = token(&gosdk, &url(APP), APP, SECRET).await;
    assert_eq!(own["token"], held.as_str(), "{own}");
    let borrowed = token(&gosdk, &url(OTHER), OTHER, SECRET).await;
    assert_eq!(borrowed["ok"], false, "{borrowed}");
    assert!(borrowed.get("errcode").is_none(), "{borrowed}");
    assert_eq!(borrowed["error"], "http.Status: 401 Unauthorized");
    server.stop().await;
}

wetoken_testkit::on_databases!([Sqlite]: the_go_sdk_reads_an_authorizers_token_unchanged);

/// A third-party platform's authorizer, stored by WeChat's pushes, read by the Go SDK on the
/// ordinary route as if it were an app of its own; once the account withdraws, the SDK gets
/// wetoken's error.
async fn the_go_sdk_reads_an_authorizers_token_unchanged(db: &TestDb) {
    use crate::open_push::{COMPONENT, started};
    let built = tokio::task::spawn_blocking(program).await;
    let Some(gosdk) = built.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) else {
        return;
    };
    let (mock, server) = started(db, |s| {
        s.http.credential_errors = Settings::default().http.credential_errors;
    })
    .await;
    let ticket = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_eq!(ticket.answer.as_deref(), Some("success"), "{ticket:?}");
    let authorizer = "wxgoauthorizer";
    let pushed = mock
        .authorize(COMPONENT, Some(authorizer), None)
        .await
        .unwrap();
    assert_eq!(pushed.answer.as_deref(), Some("success"), "{pushed:?}");

    // The SDK sends an app secret; an authorizer has none, and with no consumer key the
    // caller's address is what admits it.
    let url = format!("{}/wx/{authorizer}/token/get", server.url);
    let got = token(&gosdk, &url, authorizer, "no-secret-of-its-own").await;
    assert_eq!(got["ok"], true, "{got}");
    assert_eq!(
        got["token"].as_str(),
        mock.current_authorizer_token(authorizer).as_deref(),
        "{got}"
    );
    assert_eq!(
        mock.calls(Endpoint::AuthorizerToken),
        0,
        "api_query_auth's token"
    );

    mock.unauthorize(COMPONENT, authorizer).await.unwrap();
    let withdrawn = token(&gosdk, &url, authorizer, "no-secret-of-its-own").await;
    let errmsg = sdk_error(&withdrawn, 90460);
    assert!(errmsg.contains("authoriz"), "{errmsg}");
    server.stop().await;
}
