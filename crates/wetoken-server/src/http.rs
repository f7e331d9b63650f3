//! The HTTP layer. Handlers stay thin: decode the request, call the engine, encode the answer.
//! This file holds what every handler shares ([`State`]) and `dispatch`, which checks the
//! caller and sends each route to its handler; the concerns around it live in the modules below.
//!
//! - `request`: per-request plumbing ([`handle`]: request id, log span, time limit, metrics);
//! - `route`: matching the raw path to a route;
//! - `access`: who may call what (consumer keys, the admin key, trust by address);
//! - `params`: query and body parameters;
//! - `credential`: the token and ticket answer, written by hand;
//! - `admin`: the `/wechat/app/*` handlers;
//! - `push`: `/component/{id}/event`, WeChat's pushes to a third-party platform (public: the
//!   push's signature is its gate);
//! - `error`: errors to `errcode`s and statuses, in one function;
//! - `fuzz`: the fuzz target's entry point.
//!
//! What a request may reach is the [`Mount`]'s: the whole server mounts everything
//! ([`Mount::EVERYTHING`]); an embedding service mounts route groups and may limit them to some
//! apps (`crate::embed`). Every request body type a host may hand in is read alike
//! ([`RequestBody`]).
//!
//! The path is matched as raw text and never percent-decoded, so an encoded `/` or `..` cannot
//! reach another route; an appid must match [`AppId::parse`]'s pattern before anything else
//! happens.

mod access;
mod admin;
mod credential;
mod error;
mod fuzz;
mod limit;

pub(crate) use limit::RefreshLimiter;
mod params;
pub(crate) use params::Listing;
mod push;
pub(crate) use push::PushPolicy;
pub(crate) use push::counters_at_start as push_counters_at_start;
mod request;
mod route;

use std::collections::HashSet;
use std::sync::Arc;

use http::{Method, Request, StatusCode};

use wetoken_core::{AppId, ConsumerKey, Engine, Kind, WxCode};
use wetoken_wire::{JssdkConfigBody, code};

use access::Purpose;
pub(crate) use access::{AdminPolicy, ReaderPolicy};
use admin::app_route;
use credential::credential_response;
pub(crate) use error::engine_error;
use error::{ApiError, ApiResult, json, success, typed};
pub(crate) use fuzz::fuzz_request;
use params::Params;
pub(crate) use request::handle;
use route::{Route, route};

use wetoken_settings::{HttpSettings, MetricsSettings};

/// What every handler shares.
pub(crate) struct State {
    pub engine: Engine,
    pub http: HttpSettings,
    pub metrics: MetricsSettings,
    pub admin: AdminPolicy,
    pub readers: ReaderPolicy,
    /// The push route's timestamp window and its limit on refused pushes.
    pub pushes: PushPolicy,
    /// Proxies whose `X-Forwarded-For` names the caller (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Set on SIGTERM while the server drains: `/ready` answers 503.
    pub draining: std::sync::atomic::AtomicBool,
}

/// A request body wetoken can read: any [`hyper::body::Body`] whose errors box, such as hyper's
/// `Incoming`, axum's `Body` or `http_body_util::Full`.
pub trait RequestBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> RequestBody for B
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// Which routes a request may reach, and for which apps.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// The credential group: `/{appid}/wechat/…` and `/wx/{appid}/…`.
    pub credentials: bool,
    /// The admin routes, `/wechat/app/*`.
    pub admin: bool,
    /// The status page `/`, `/metrics`, and the health routes.
    pub observe: bool,
    /// WeChat's pushes to third-party platforms, `/component/{id}/event`.
    pub events: bool,
    /// The apps the credential, admin and push routes serve; `None`: every app.
    pub apps: Option<HashSet<String>>,
}

impl Mount {
    /// The whole server's.
    pub(crate) const EVERYTHING: Mount = Mount {
        credentials: true,
        admin: true,
        observe: true,
        events: true,
        apps: None,
    };

    fn serves(&self, route: &Route<'_>) -> bool {
        match route {
            Route::Credential { .. } | Route::Query(_) | Route::WxCode(_) | Route::Jssdk(_) => {
                self.credentials
            }
            Route::App(_) => self.admin,
            Route::Status
            | Route::StatusApp(_)
            | Route::Metrics
            | Route::Health
            | Route::Ready
            | Route::Live => self.observe,
            Route::ComponentEvent(_) => self.events,
        }
    }

    /// Whether `appid` is one of the mount's apps.
    pub(crate) fn covers(&self, appid: &AppId) -> bool {
        self.apps
            .as_ref()
            .is_none_or(|apps| apps.contains(appid.as_str()))
    }

    /// An app outside the mount is answered as an app that does not exist, so a mount limited
    /// to its own apps says nothing about the others in the database.
    fn admit(&self, appid: &AppId) -> Result<(), ApiError> {
        if self.covers(appid) {
            Ok(())
        } else {
            Err(wetoken_core::Error::UnknownApp(appid.clone()).into())
        }
    }
}

/// Routes a request. The token and ticket routes are awaited inline; every other route's future
/// is boxed, so that this future (moved a few times per request) stays small: the database ping
/// alone is 9 KB, and copying it was most of the token route's work (docs/performance.md).
async fn dispatch<B: RequestBody>(
    state: &State,
    mount: &Mount,
    mut peer: std::net::IpAddr,
    request: Request<B>,
    label: &mut &'static str,
) -> ApiResult {
    let (parts, body) = request.into_parts();
    let Some(route) = route(parts.uri.path()) else {
        return Err(ApiError::NotFound);
    };
    if !mount.serves(&route) {
        return Err(ApiError::NotFound);
    }
    *label = route.label();
    // The probes answer whoever asks; every other route sees the caller behind a trusted proxy.
    if !matches!(route, Route::Live | Route::Ready | Route::Health) {
        let client = access::client_address(peer, &parts.headers, &state.trusted_proxies)?;
        if client != peer {
            tracing::Span::current().record("client", tracing::field::display(client));
            peer = client;
        }
    }
    // /metrics names every appid in trouble: the admin key reads it, and so does the metrics
    // key (or an address in metrics_networks), which reads nothing else.
    match route {
        Route::App(_) | Route::Status | Route::StatusApp(_) => state.admin.check(&parts, peer)?,
        Route::Metrics => state.admin.check_metrics(&parts, peer)?,
        _ => {}
    }
    let method = &parts.method;
    let read_only = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Health => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            Ok(Box::pin(health(state)).await)
        }
        Route::Ready => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            Box::pin(ready(state)).await
        }
        Route::Live => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            Ok(success())
        }
        Route::Metrics => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            let text = Box::pin(crate::metrics::render(&state.engine, &state.metrics)).await?;
            Ok(typed(text, "text/plain; version=0.0.4; charset=utf-8"))
        }
        Route::Status => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            let listing = Box::pin(Params::read(&parts, body, &state.http))
                .await?
                .listing()?;
            let fresh = std::time::Duration::from_millis(state.metrics.totals_fresh_ms);
            let page = Box::pin(crate::status::page(&state.engine, mount, &listing, fresh)).await?;
            Ok(html(page))
        }
        Route::StatusApp(appid) => Box::pin(status_app(state, mount, appid, &parts, body)).await,
        Route::Credential {
            appid,
            kind,
            refresh,
        } => {
            let purpose = if refresh {
                Purpose::Refresh
            } else {
                Purpose::Read
            };
            let (appid, key) = admit(state, mount, &parts, peer, appid, purpose)?;
            // `?type=wx_card` picks the card ticket; only the refresh route needs a body.
            let params = if refresh || (kind != Kind::AccessToken && parts.uri.query().is_some()) {
                Box::pin(Params::read(&parts, body, &state.http)).await?
            } else {
                Params::default()
            };
            let kind = match (kind, params.optional("type")) {
                (Kind::AccessToken, _) | (_, None | Some("jsapi")) => kind,
                (_, Some("wx_card")) => Kind::CardTicket,
                (_, Some(other)) => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown ticket type {other:?}: expected jsapi or wx_card"
                    )));
                }
            };
            let now_credential = if refresh {
                let name = match kind {
                    Kind::AccessToken => "access_token",
                    Kind::JsapiTicket | Kind::CardTicket => "ticket",
                };
                let failed = params.required(name)?;
                let report = state.readers.admit_report(key.as_deref(), peer, &appid)?;
                let answer = state
                    .engine
                    .report(&appid, kind, failed, &report.reporter)
                    .await?;
                if answer.value == failed {
                    state.readers.declined(report);
                }
                answer
            } else {
                state.engine.get(&appid, kind).await?
            };
            Ok(credential_response(
                kind,
                &now_credential,
                state.engine.now(),
            ))
        }
        Route::Query(appid) => {
            // The Go SDK's own secret reads its app's stored token, as on token/get.
            let (appid, _) = admit(state, mount, &parts, peer, appid, Purpose::Read)?;
            let credential = Box::pin(state.engine.stored(&appid, Kind::AccessToken)).await?;
            Ok(credential_response(
                Kind::AccessToken,
                &credential,
                state.engine.now(),
            ))
        }
        Route::WxCode(appid) => {
            // Sending a message on the app's behalf takes a key (or a local caller while none
            // exists), as the jssdk route does.
            let (appid, _) = admit(state, mount, &parts, peer, appid, Purpose::Use)?;
            let params = Box::pin(Params::read(&parts, body, &state.http)).await?;
            let request = WxCode {
                user_name: params.required("user_name")?,
                system_name: params.required("system_name")?,
                code: params.required("code")?,
            };
            Box::pin(state.engine.send_wxcode(&appid, &request)).await?;
            // The Go server answered the bare word.
            Ok(typed("success".into(), "text/plain; charset=utf-8"))
        }
        Route::App(action) => Box::pin(app_route(state, mount, action, &parts, body)).await,
        // Public: no policy but the push's signature, checked by the handler.
        Route::ComponentEvent(component) => {
            push::component_event(state, mount, &parts, body, peer, component).await
        }
        Route::Jssdk(appid) => {
            let (appid, _) = admit(state, mount, &parts, peer, appid, Purpose::Use)?;
            let params = Box::pin(Params::read(&parts, body, &state.http)).await?;
            let config =
                Box::pin(state.engine.jssdk_config(&appid, params.required("url")?)).await?;
            Ok(json(
                StatusCode::OK,
                &JssdkConfigBody {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    app_id: config.app_id,
                    timestamp: config.timestamp,
                    nonce_str: config.nonce_str,
                    signature: config.signature,
                },
            ))
        }
    }
}

/// How long a probe waits for the database: a probe's own timeout is short (Kubernetes' is one
/// second by default), and an answer that comes too late counts as none.
const PROBE_PING: std::time::Duration = std::time::Duration::from_millis(900);

/// Whether the database answers a ping within [`PROBE_PING`].
async fn database_answers(state: &State) -> Result<(), wetoken_core::Error> {
    match tokio::time::timeout(PROBE_PING, state.engine.ping_database()).await {
        Ok(answered) => answered,
        Err(_) => Err(wetoken_core::Error::Unavailable(
            "the database did not answer in time".into(),
        )),
    }
}

/// `/ready`: whether a load balancer should send requests here. Not while draining; otherwise
/// as long as what this process caches is trusted (the change feed read the database within
/// `cache_trust_secs`), without asking the database, so that a database outage does not take
/// every replica out of service while they can serve from memory; after that, only if the
/// database answers.
async fn ready(state: &State) -> ApiResult {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::NotReady(
            code::NOT_READY,
            "stopping: draining before shutdown",
        ));
    }
    if state.engine.cache_checked_ago().is_some() || database_answers(state).await.is_ok() {
        return Ok(success());
    }
    Err(ApiError::NotReady(
        code::DATABASE_UNAVAILABLE,
        "database unavailable for longer than cache_trust_secs",
    ))
}

/// `/health`: the database's state and the cache's, with 200 when the database answers and
/// 503 when not (serving from memory meanwhile, while `cache` says `trusted`).
/// `/status/{appid}`: the app's page (GET, `?force=token|ticket|wx_card` to ask for a
/// confirmation first), and the forced refresh it confirms (POST `kind`). The POST is
/// `/wechat/app/refresh`'s own path: `dispatch` has made the admin check (with its refusal of
/// cross-site requests while no admin key is set), then [`admin::force_refresh`] and the
/// engine's quota guard decide. The page shows the outcome, never the new value.
async fn status_app<B: RequestBody>(
    state: &State,
    mount: &Mount,
    appid: &str,
    parts: &http::request::Parts,
    body: B,
) -> ApiResult {
    use crate::status::Forced;
    let appid = AppId::parse(appid)?;
    mount.admit(&appid)?;
    let method = parts.method.clone();
    let params = Box::pin(Params::read(parts, body, &state.http))
        .await?
        .with("appid", appid.as_str());
    let mut status = StatusCode::OK;
    let forced = if method == Method::POST {
        match admin::force_refresh(&state.engine, mount, &params).await {
            Ok((kind, credential)) => Forced::Done(kind, credential.expires_at),
            Err(ApiError::BadRequest(m)) => return Err(ApiError::BadRequest(m)),
            Err(e) => {
                let kind = admin::refresh_kind(params.optional("kind"))?;
                let (errcode, errmsg) = error::errcode_of(&e);
                status = StatusCode::from_u16(code::http_status(errcode))
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                Forced::Refused(kind, errcode, errmsg)
            }
        }
    } else if method == Method::GET || method == Method::HEAD {
        match params.optional("force") {
            Some(kind) => Forced::Confirm(admin::refresh_kind(Some(kind))?),
            None => Forced::Nothing,
        }
    } else {
        return Err(ApiError::MethodNotAllowed);
    };
    let page = Box::pin(crate::status::detail(&state.engine, &appid, &forced)).await?;
    let mut response = html(page);
    *response.status_mut() = status;
    Ok(response)
}

/// A status page's answer. The pages run no script and load nothing, and no other site may
/// frame them: a page that did could get the forced refresh's button clicked (clickjacking), a
/// same-origin POST the cross-site check would let through.
fn html(page: String) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut response = typed(page, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    response
}

async fn health(state: &State) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let database = database_answers(state).await;
    let checked = state.engine.cache_checked_ago();
    let draining = state.draining.load(std::sync::atomic::Ordering::Acquire);
    let (status, errcode, errmsg) = match &database {
        Ok(()) => (StatusCode::OK, code::OK, "success".to_owned()),
        Err(e) => {
            tracing::debug!(error = %e.chain(), "health: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                code::DATABASE_UNAVAILABLE,
                "database unavailable".to_owned(),
            )
        }
    };
    json(
        status,
        &serde_json::json!({
            "errcode": errcode,
            "errmsg": errmsg,
            "state": if draining { "draining" } else { "serving" },
            "database": if database.is_ok() { "up" } else { "down" },
            "cache": if checked.is_some() { "trusted" } else { "untrusted" },
            "cache_checked_ms_ago": checked.map(|d| d.as_millis() as u64),
        }),
    )
}

/// The answer to every request while the server starts: `/live` (and `/livez`) 200, anything
/// else 503 with errcode 90505.
pub(crate) fn starting(path: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match route(path) {
        Some(Route::Live) => success(),
        _ => error::error_response(&ApiError::NotReady(
            code::NOT_READY,
            "starting: opening and migrating the database",
        )),
    }
}

/// What every credential-group route does first: the method (GET, HEAD or POST), then the
/// caller, and only then the appid, so that a refusal never says whether an appid exists; an
/// app outside the mount is then answered as unknown.
fn admit(
    state: &State,
    mount: &Mount,
    parts: &http::request::Parts,
    peer: std::net::IpAddr,
    appid: &str,
    purpose: Purpose,
) -> Result<(AppId, Option<Arc<ConsumerKey>>), ApiError> {
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::POST) {
        return Err(ApiError::MethodNotAllowed);
    }
    let key = state
        .readers
        .check(parts, peer, appid, purpose, &state.engine)?;
    let appid = AppId::parse(appid)?;
    mount.admit(&appid)?;
    Ok((appid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper moves a request's future several times, so its size is copied on every request
    /// (docs/performance.md: a cold route's 9 KB database future inline in it was most of the
    /// token route's work). Cold routes box their work; this keeps a new inline future, or an
    /// `async fn` wrapper that holds its argument twice, from growing the hot one unnoticed.
    #[test]
    fn the_request_future_stays_small() {
        use hyper::body::Incoming;
        fn size4<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size5<A, B, C, D, E, F: Future>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let handle = size4(handle::<Incoming>);
        let dispatch = size5(
            |s: &'static State,
             m: &'static Mount,
             p: std::net::IpAddr,
             r: Request<Incoming>,
             l: &'static mut &'static str| dispatch(s, m, p, r, l),
        );
        assert!(handle <= 2048, "handle's future is {handle} bytes");
        assert!(dispatch <= 1024, "dispatch's future is {dispatch} bytes");
    }
}
