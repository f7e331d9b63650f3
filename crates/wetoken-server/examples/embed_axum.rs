//! An axum service that embeds wetoken, as the Go wetoken's `Bind` did: a route of its own,
//! wetoken's credential routes for its app nested under `/wetoken`, the scheduler renewing that
//! app's credentials, and a handler that calls WeChat's menu API with a token read in process.
//!
//! Try it against the mock WeChat (settings come from `wetoken.toml` if present, then
//! `WETOKEN_*` variables, exactly as the server's):
//!
//! ```text
//! cargo run -p wetoken-mock -- --listen 127.0.0.1:9100 --app wx9e02ddcc34513fd4:s3cret &
//! WETOKEN_DATABASE_URL=sqlite://embed.db?mode=rwc WETOKEN_WECHAT_BASE_URL=http://127.0.0.1:9100 \
//!   APPID=wx9e02ddcc34513fd4 APP_SECRET=s3cret cargo run -p wetoken-server --example embed_axum
//! curl 127.0.0.1:8080/hello
//! curl 127.0.0.1:8080/wetoken/wx9e02ddcc34513fd4/wechat/token/get
//! curl -d '{"button":[{"type":"click","name":"Hi","key":"HI"}]}' 127.0.0.1:8080/menu
//! curl 127.0.0.1:8080/menu
//! ```
//!
//! `tests/it/embed.rs` drives [`router`] over HTTP against the mock.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use wetoken_client::{CallError, call};
use wetoken_server::{Apps, Embedded, EmbeddedToken, PeerAddr, Routes};

/// What the host's own handlers share.
#[derive(Clone)]
pub struct Host {
    /// The app's token, in process; any `TokenSource` would do (a `wetoken_client::AccessToken`
    /// pulling from a wetoken server, say) and the handlers would not change.
    pub token: EmbeddedToken,
    /// Where WeChat is: the same `wechat_base_url` wetoken's settings name.
    pub wechat: String,
    /// The host's HTTP client for WeChat's API.
    pub http: reqwest::Client,
}

/// The host's router: `/hello` of its own, `/menu` (GET reads the menu, POST sets it) calling
/// WeChat with the in-process token, and wetoken's credential routes for `appid` alone under
/// `/wetoken` (`/wetoken/{appid}/wechat/token/get`, …). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`, so that wetoken's access policy sees
/// the caller's address.
pub fn router(wetoken: &Embedded, appid: &str, wechat: &str) -> anyhow::Result<Router> {
    let routes = Routes::credentials().apps(Apps::only([appid])?);
    let host = Host {
        token: wetoken.token_source(appid)?,
        wechat: wechat.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    Ok(Router::new()
        .route("/hello", get(|| async { "hello from the host service\n" }))
        .route("/menu", get(menu_get).post(menu_create))
        .nest_service("/wetoken", wetoken.service(routes))
        .layer(middleware::from_fn(peer_addr))
        .with_state(host))
}

/// Hands wetoken the caller's address, which axum keeps in `ConnectInfo`. Without it wetoken
/// treats every caller as unknown, which only a consumer key (or the app's secret) admits.
async fn peer_addr(mut request: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let peer = PeerAddr(peer.ip());
        request.extensions_mut().insert(peer);
    }
    next.run(request).await
}

/// `GET /menu`: WeChat's `/cgi-bin/menu/get`, retried once with a fresh token if WeChat rejects
/// the one it was given.
async fn menu_get(State(host): State<Host>) -> Result<Json<Value>, (StatusCode, String)> {
    let url = format!("{}/cgi-bin/menu/get", host.wechat);
    let answer = call(&host.token, |token| {
        let request = host.http.get(&url).query(&[("access_token", token)]);
        async move { request.send().await?.json().await }
    })
    .await;
    answer.map(Json).map_err(bad_gateway)
}

/// `POST /menu`: WeChat's `/cgi-bin/menu/create` with the request's JSON body.
async fn menu_create(
    State(host): State<Host>,
    Json(menu): Json<Value>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let url = format!("{}/cgi-bin/menu/create", host.wechat);
    let answer = call(&host.token, |token| {
        let request = host
            .http
            .post(&url)
            .query(&[("access_token", token)])
            .json(&menu);
        async move { request.send().await?.json().await }
    })
    .await;
    answer.map(Json).map_err(bad_gateway)
}

fn bad_gateway(e: CallError) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("{e}\n"))
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let settings = wetoken_server::Settings::load(
        std::path::Path::new("wetoken.toml"),
        figment::Figment::new(),
    )?;
    let appid = std::env::var("APPID").unwrap_or_else(|_| "wx9e02ddcc34513fd4".into());
    let wetoken = Embedded::from_settings(&settings).await?;
    if let Ok(secret) = std::env::var("APP_SECRET") {
        add_app_once(&wetoken, &appid, &secret).await?;
    }
    // The Go wetoken's `Bind(app, true, appid)`: routes and cron, for this app.
    wetoken.start_cron(Apps::only([&appid])?);
    let app = router(&wetoken, &appid, &settings.wechat_base_url)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Finishes the renewals under way, which release their leases.
    wetoken.shutdown().await;
    Ok(())
}

/// Registers the app unless it exists, for the demo.
#[allow(dead_code)]
async fn add_app_once(wetoken: &Embedded, appid: &str, secret: &str) -> anyhow::Result<()> {
    use wetoken_server::wetoken_core::{AppId, Error, NewApp, Secret};
    let app = NewApp::mp(AppId::parse(appid)?, Secret::new(secret));
    match wetoken.engine().add_app(&app).await {
        Ok(()) | Err(Error::DuplicateApp(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
