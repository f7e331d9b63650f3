//! Routing and handlers. Handlers stay thin: decode the request, call the engine, encode the answer.
//!
//! The path is matched as raw text and never percent-decoded, so an encoded `/` or `..` cannot
//! reach another route; an appid must match [`AppId::parse`]'s pattern before anything else
//! happens.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Local, Utc};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::{Instrument, debug, error, warn};
use wetoken_core::keys::{Access, Refusal};
use wetoken_core::{
    AppId, AppKind, AppStatus, AppUpdate, Credential, CredentialRecord, Engine, GoFields, KeyTable,
    Kind, NewApp, Secret, TokenMode, WxCode,
};
use wetoken_wire::{
    AppList, AppShow, AppView, Created, CredentialState, ErrorBody, JssdkConfigBody, code,
};

use crate::config::{CredentialErrors, HttpSettings};

/// What every handler shares.
pub(crate) struct State {
    pub engine: Engine,
    pub http: HttpSettings,
    pub admin: AdminPolicy,
    pub readers: ReaderPolicy,
}

/// Who may use the token, ticket and jssdk routes.
pub(crate) struct ReaderPolicy {
    /// While no consumer key exists, callers must come from one of these.
    pub networks: Vec<ipnet::IpNet>,
    /// The consumer keys, as last read from the database. The request path only takes the read
    /// lock for the length of a hash lookup; the reload task swaps in a new snapshot.
    pub keys: std::sync::RwLock<Arc<KeyTable>>,
}

/// The header Go-era clients that cannot set `Authorization` may send the consumer key in.
pub(crate) const KEY_HEADER: &str = "x-wetoken-key";

/// What a request on a guarded route does with the app's credentials, for the scope check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Reads a token or ticket (`get`, and a read-only `query`): a consumer key for the app, or
    /// the app's own secret in the query, which is how the Go SDK asks.
    Read,
    /// A passive refresh: a consumer key for the app that allows refreshes.
    Refresh,
    /// Anything else done with the app's credentials (the jssdk signature, sending a message):
    /// a consumer key for the app.
    Use,
}

/// The 401's message: what a guarded route takes.
const NEEDS_A_KEY: &str = "this route needs a consumer key (Authorization: Bearer <key>); \
     token and ticket reads also take the app's own secret (?secret=)";

impl ReaderPolicy {
    /// Checks the caller before anything else, and before the app is looked up: a refusal says
    /// nothing about whether the app exists.
    ///
    /// While consumer keys exist, a request that presents none may read (`Purpose::Read`) an
    /// app's token and ticket with that app's secret in its `secret` query parameter, as the
    /// Go SDK sends it: as if it held a key for that one app, without refreshes. A wrong secret
    /// counts as no key. `engine` holds the secrets' digests.
    fn check(
        &self,
        request: &http::request::Parts,
        peer: std::net::IpAddr,
        appid: &str,
        purpose: Purpose,
        engine: &Engine,
    ) -> Result<(), ApiError> {
        let headers = &request.headers;
        let table = self.keys.read().unwrap_or_else(|e| e.into_inner());
        if !table.is_required() {
            return if self.networks.iter().any(|n| n.contains(&peer)) {
                trusted_by_address(request, peer)
            } else {
                Err(ApiError::Forbidden(
                    "token and ticket reads answer only local callers until consumer keys are configured"
                        .into(),
                ))
            };
        }
        let presented = presented_key(headers);
        if presented.is_none()
            && purpose != Purpose::Use
            && let Some(secret) = query_secret(request.uri.query())
        {
            drop(table);
            if !engine.is_app_secret(appid, &secret) {
                // Never the secret itself; the path (in the span) names the app.
                warn!(%peer, "refused: the secret presented is not this app's");
                return Err(ApiError::Unauthorized(NEEDS_A_KEY));
            }
            if purpose == Purpose::Refresh {
                return Err(ApiError::Forbidden(
                    "the app's secret reads its token and ticket; a passive refresh needs a \
                     consumer key"
                        .into(),
                ));
            }
            return Ok(());
        }
        let access = Access {
            appid,
            refresh: purpose == Purpose::Refresh,
            peer,
        };
        table
            .check(presented, access)
            .map_err(|refusal| match refusal {
                Refusal::MissingKey | Refusal::UnknownKey => ApiError::Unauthorized(NEEDS_A_KEY),
                Refusal::OutOfScope => {
                    ApiError::Forbidden("this consumer key does not cover this appid".into())
                }
                Refusal::Address => ApiError::Forbidden(
                    "this consumer key may not be used from this address".into(),
                ),
                Refusal::RefreshNotAllowed => {
                    ApiError::Forbidden("this consumer key may not ask for refreshes".into())
                }
            })
    }

    /// Installs a new snapshot of the keys.
    pub(crate) fn replace(&self, table: KeyTable) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// The app secret a request presents in its query, as the Go SDK sends it: it appends
/// `<appid>&secret=<secret>` to the URL it is given, so `?wx1&secret=S`, or `?x=1wx1&secret=S`
/// after a query of its own. The first non-empty `secret` counts.
fn query_secret(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, value)| name == "secret" && !value.is_empty())
        .map(|(_, value)| value)
}

/// The consumer key a request presents: `Authorization: Bearer <key>`, else `X-Wetoken-Key`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    bearer(headers)
        .or_else(|| headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The credentials of an `Authorization: Bearer <credentials>` header. The scheme's case does
/// not matter (RFC 9110), so `bearer …` from a client library is the same key.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

/// Who may use the admin routes.
pub(crate) struct AdminPolicy {
    /// When set, callers must present it as a bearer token, from anywhere.
    pub key: Option<String>,
    /// While no key is set, callers must come from one of these.
    pub networks: Vec<ipnet::IpNet>,
}

impl AdminPolicy {
    fn check(
        &self,
        request: &http::request::Parts,
        peer: std::net::IpAddr,
    ) -> Result<(), ApiError> {
        use subtle::ConstantTimeEq;
        match &self.key {
            Some(key) => {
                let presented = bearer(&request.headers).unwrap_or_default();
                // Constant time in the key's content; only the (public) length can show.
                if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
                    Ok(())
                } else {
                    Err(ApiError::Unauthorized(
                        "this route needs the admin key: Authorization: Bearer <key>",
                    ))
                }
            }
            None if self.networks.iter().any(|n| n.contains(&peer)) => {
                trusted_by_address(request, peer)
            }
            None => Err(ApiError::Forbidden(
                "the admin routes answer only local callers until an admin key is configured"
                    .into(),
            )),
        }
    }
}

/// Access granted by the caller's address alone (no admin key, no consumer key yet) must not
/// extend to web pages that a browser on a trusted machine happens to open. Refused:
/// - a request a browser marks as coming from another site (`Sec-Fetch-Site: cross-site` or
///   `same-site`), or whose `Origin` is not this server: a form or script on some page (CSRF);
/// - a loopback caller that names this server by a domain name other than `localhost` or this
///   host's own name (which a registry announcement uses): a page
///   whose domain was made to resolve to 127.0.0.1 (DNS rebinding), or a proxy on this host that
///   passes its public `Host` on, which would make every outside caller look local.
///
/// Programs (the clients, curl, the Go SDKs) send none of these headers, and a person opening
/// the status page by its address sends `Sec-Fetch-Site: none` or `same-origin`.
fn trusted_by_address(
    request: &http::request::Parts,
    peer: std::net::IpAddr,
) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        Err(ApiError::Forbidden(format!(
            "access by network address alone does not extend to {what}; configure an admin key \
             or consumer keys to call this route from there"
        )))
    };
    // One pass over the few headers a request carries rather than three hashed lookups: this
    // runs on every token read of an install without keys, and cost it 700 instructions.
    let (mut host, mut origin, mut site) = (None, None, None);
    for (name, value) in &request.headers {
        let slot = if *name == http::header::HOST {
            &mut host
        } else if *name == http::header::ORIGIN {
            &mut origin
        } else if *name == SEC_FETCH_SITE {
            &mut site
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    let authority = request
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| host?.to_str().ok());
    if let Some(site) = site
        && (site == "cross-site" || site == "same-site")
    {
        return refuse("requests from other web sites");
    }
    if let Some(origin) = origin {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, host)| authority.is_some_and(|a| a.eq_ignore_ascii_case(host)));
        if !same {
            return refuse("requests from other web sites");
        }
    }
    if peer.is_loopback()
        && let Some(authority) = authority
    {
        // An IPv6 literal is bracketed; a browser takes a name of digits and dots for IPv4.
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, port)| {
                if port.ends_with(']') { authority } else { host }
            });
        let literal =
            host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        // This host's own name is fine: a server listening on every address announces itself
        // by it, and a rebinding page cannot take it over.
        if !(literal
            || host.eq_ignore_ascii_case("localhost")
            || host.eq_ignore_ascii_case(crate::hostname()))
        {
            return refuse("loopback callers that name this server by a domain name");
        }
    }
    Ok(())
}

const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// Why a request failed, before or inside the engine.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    Forbidden(String),
    BodyTooLarge(usize),
    NotFound,
    MethodNotAllowed,
    Timeout,
    Engine(wetoken_core::Error),
}

impl From<wetoken_core::Error> for ApiError {
    fn from(e: wetoken_core::Error) -> Self {
        ApiError::Engine(e)
    }
}

type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

/// The one place errors become `errcode`s; each errcode's HTTP status is the wire contract's
/// (`code::http_status`), so clients can tell it from the errcode alone. Whether a credential
/// route sends that status or 200 is decided in [`handle`].
fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    use wetoken_core::Error as E;
    let (errcode, errmsg) = match e {
        ApiError::BadRequest(m) => (code::BAD_REQUEST, m.clone()),
        ApiError::Unauthorized(m) => (code::UNAUTHORIZED, (*m).into()),
        ApiError::Forbidden(m) => (code::FORBIDDEN, m.clone()),
        ApiError::BodyTooLarge(limit) => (
            code::BODY_TOO_LARGE,
            format!("request body is over the {limit}-byte limit"),
        ),
        ApiError::NotFound => (code::NOT_FOUND, "no such route".into()),
        ApiError::MethodNotAllowed => (
            code::METHOD_NOT_ALLOWED,
            "method not allowed on this route".into(),
        ),
        ApiError::Timeout => (code::UPSTREAM_UNAVAILABLE, "request timed out".into()),
        ApiError::Engine(e) => match e {
            E::InvalidInput(m) => (code::BAD_REQUEST, m.clone()),
            E::UnknownApp(_) => (code::UNKNOWN_APP, e.to_string()),
            E::DuplicateApp(_) => (code::DUPLICATE_APP, e.to_string()),
            E::ForceLimited(m) => (code::LIMITED, m.clone()),
            E::NotStored { .. } => (code::NOT_STORED, e.to_string()),
            // WeChat's own code, which is never in wetoken's range: 502.
            E::Refused { errcode, errmsg } => (*errcode, errmsg.clone()),
            E::Halted { errcode, .. } => (errcode.unwrap_or(code::HALTED), e.to_string()),
            E::Unavailable(m) => (
                code::UPSTREAM_UNAVAILABLE,
                format!("{m}; no valid credential is held"),
            ),
            E::DatabaseUnavailable(_) => {
                (code::DATABASE_UNAVAILABLE, "database unavailable".into())
            }
            E::Secret(cause) => {
                // Which column and which master key stay in the log.
                error!(%cause, "a stored secret cannot be read");
                (
                    code::INTERNAL,
                    "a stored secret of this app cannot be decrypted; see the server log".into(),
                )
            }
            E::Database(cause) => {
                // The database's own text stays in the log.
                error!(%cause, "database error");
                (code::INTERNAL, "internal error; see the server log".into())
            }
            E::Schema(cause) => {
                error!(%cause, "the database does not hold what wetoken expects");
                (code::INTERNAL, "internal error; see the server log".into())
            }
            // The app's own settings, which an admin can fix; nothing secret is named.
            E::AppConfig { .. } => {
                error!(error = %e, "misconfigured app");
                (code::INTERNAL, e.to_string())
            }
            E::RefreshPanicked { .. } => {
                error!(error = %e, "a refresh task panicked");
                (code::INTERNAL, "internal error; see the server log".into())
            }
        },
    };
    let status = StatusCode::from_u16(code::http_status(errcode))
        .expect("the wire contract names real statuses");
    let mut response = json(status, &ErrorBody { errcode, errmsg });
    if matches!(e, ApiError::BodyTooLarge(_)) {
        // The rest of the body was not read, so the connection cannot carry another request:
        // say so, or a client may reuse it and find it closed.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("wire types always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn typed(body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn success() -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        &ErrorBody {
            errcode: code::OK,
            errmsg: "success".into(),
        },
    )
}

/// The routes, as matched on path segments.
enum Route<'a> {
    Status,
    Health,
    Live,
    Metrics,
    App(&'a str),
    Jssdk(&'a str),
    Credential {
        appid: &'a str,
        kind: Kind,
        refresh: bool,
    },
    /// `/wx/{appid}/token/query`: the stored token, never fetched.
    Query(&'a str),
    /// `/wx/{appid}/wxcode/send`: the Go wetoken's verification-code message.
    WxCode(&'a str),
}

impl Route<'_> {
    /// The route's name in metrics.
    fn label(&self) -> &'static str {
        match self {
            Route::Status => "status",
            Route::Health => "health",
            Route::Live => "live",
            Route::Metrics => "metrics",
            Route::App(_) => "app",
            Route::Jssdk(_) => "jssdk_config",
            Route::Credential {
                kind: Kind::AccessToken,
                refresh: false,
                ..
            } => "token_get",
            Route::Credential {
                kind: Kind::AccessToken,
                refresh: true,
                ..
            } => "token_refresh",
            Route::Credential { refresh: false, .. } => "ticket_get",
            Route::Credential { refresh: true, .. } => "ticket_refresh",
            Route::Query(_) => "token_query",
            Route::WxCode(_) => "wxcode_send",
        }
    }
}

/// `path` split at each '/' into at most `N` segments (`None` past the last), or `None` when it
/// has more. A byte loop: `str::split` sets up a searcher per segment, which cost the token route
/// about 300 instructions.
fn segments<const N: usize>(path: &str) -> Option<[Option<&str>; N]> {
    let mut parts = [None; N];
    let mut start = 0;
    let mut n = 0;
    for (i, &b) in path.as_bytes().iter().enumerate() {
        if b == b'/' {
            *parts.get_mut(n)? = Some(&path[start..i]);
            n += 1;
            start = i + 1;
        }
    }
    *parts.get_mut(n)? = Some(&path[start..]);
    Some(parts)
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/" {
        return Some(Route::Status);
    }
    let parts = segments::<5>(path.strip_prefix('/')?)?;
    let credential = |appid, kind: &str, op: &str| {
        let kind = match kind {
            "token" => Kind::AccessToken,
            "ticket" => Kind::JsapiTicket,
            _ => return None,
        };
        let refresh = match op {
            "get" => false,
            "refresh" => true,
            _ => return None,
        };
        Some(Route::Credential {
            appid,
            kind,
            refresh,
        })
    };
    match parts {
        [Some("health" | "healthz" | "ready" | "readyz"), None, ..] => Some(Route::Health),
        [Some("live" | "livez"), None, ..] => Some(Route::Live),
        [Some("metrics"), None, ..] => Some(Route::Metrics),
        [Some("wechat"), Some("app"), Some(action), None, None] => Some(Route::App(action)),
        [
            Some(appid),
            Some("wechat"),
            Some("jssdk"),
            Some("config"),
            None,
        ] => Some(Route::Jssdk(appid)),
        [Some("wx"), Some(appid), Some("token"), Some("query"), None] => Some(Route::Query(appid)),
        [Some("wx"), Some(appid), Some("wxcode"), Some("send"), None] => Some(Route::WxCode(appid)),
        [Some("wx"), Some(appid), Some(kind), Some(op), None] => credential(appid, kind, op),
        [Some(appid), Some("wechat"), Some(kind), Some(op), None] => credential(appid, kind, op),
        _ => None,
    }
}

/// Whether `path` is in the credential-route group: `/wx/{appid}/…` and `/{appid}/wechat/…`
/// (the token, ticket, refresh and jssdk routes, and any route added under those prefixes),
/// but not the admin routes' `/wechat/app/…`. The group answers errors as
/// `http.credential_errors` says. Decided from the path alone, before routing, so a route
/// added to the group later needs nothing else to answer alike, and neither does a path in it
/// that no route matches.
fn in_credential_group(path: &str) -> bool {
    let Some((first, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    first == "wx" || rest.split_once('/').map_or(rest, |(second, _)| second) == "wechat"
}

/// Serves one request. Never fails: every error becomes a JSON answer.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: std::net::IpAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // The caller's id is reused as it came (a reference-counted copy of hyper's header bytes).
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
    // The route's metrics label, set by `dispatch` once it has matched the path.
    let mut label = "unmatched";
    // Only the path: the query may carry a secret. Every field costs the token route (the fmt
    // layer formats them when the span is made), so the span carries the two that tell requests
    // apart in a log.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.to_str().unwrap_or_default(),
        path = %request.uri().path(),
    );
    let errors_in_body = state.http.credential_errors == CredentialErrors::InBody
        && in_credential_group(request.uri().path());
    let timeout = Duration::from_secs(state.http.request_timeout_secs);
    let answer = within(
        timeout,
        dispatch(&state, peer, request, &mut label).instrument(span.clone()),
    )
    .await
    .unwrap_or(Err(ApiError::Timeout));
    // Logs and metrics keep the status the answer stands for, whichever is sent.
    let (mut response, status) = match answer {
        Ok(response) => {
            let status = response.status();
            (response, status)
        }
        Err(e) => {
            let mut response = span.in_scope(|| error_response(&e));
            let status = response.status();
            if errors_in_body {
                *response.status_mut() = StatusCode::OK;
            }
            (response, status)
        }
    };
    span.in_scope(|| debug!(status = status.as_u16(), "answered"));
    response.headers_mut().insert(REQUEST_ID, request_id);
    count_request(label, status_label(status));
    Ok(response)
}

/// Counts a request. The counter handles of the hot routes are looked up once and kept, so the
/// token route does not hash its labels on every request.
fn count_request(route: &'static str, status: &'static str) {
    static TOKEN_GET_OK: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    static TICKET_GET_OK: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    let counter = |route: &'static str| metrics::counter!("wetoken_http_requests_total", "route" => route, "status" => "200");
    match (route, status) {
        ("token_get", "200") => TOKEN_GET_OK
            .get_or_init(|| counter("token_get"))
            .increment(1),
        ("ticket_get", "200") => TICKET_GET_OK
            .get_or_init(|| counter("ticket_get"))
            .increment(1),
        _ => metrics::counter!(
            "wetoken_http_requests_total",
            "route" => route,
            "status" => status,
        )
        .increment(1),
    }
}

pin_project_lite::pin_project! {
    /// Runs `future` to its end, or gives up after `limit`. Unlike `tokio::time::timeout`, the
    /// timer is armed only when the first poll does not finish the future: a token answered from
    /// memory neither reads the clock for a deadline nor touches the timer wheel. A slow request
    /// gets its `limit` from its first wait on, a few microseconds late.
    ///
    /// A struct, not an `async fn`: an async fn would hold `future` twice (as its argument and
    /// as the pinned local), and this future is moved several times per request.
    struct Within<F> {
        #[pin]
        future: F,
        // Unconstrained, as in `tokio::time::timeout`: a future that spends the task's
        // cooperative budget must not keep its own deadline from firing.
        #[pin]
        timer: Option<tokio::task::Unconstrained<tokio::time::Sleep>>,
        limit: Duration,
    }
}

fn within<F: Future>(limit: Duration, future: F) -> Within<F> {
    Within {
        future,
        timer: None,
        limit,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        if this.timer.is_none() {
            this.timer
                .set(Some(tokio::task::unconstrained(tokio::time::sleep(
                    *this.limit,
                ))));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// The header that carries a request's id, taken from the caller when it sends a sane one.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A caller's request id is kept when it is 1 to 64 visible ASCII characters; anything else
/// (too long for a log line, control characters) gets an id of ours instead.
fn sane_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 64 && id.iter().all(u8::is_ascii_graphic)
}

/// A process-unique request id: a random prefix fixed at start, and a counter, both in hex
/// (`1a2b3c4d-5f`). Written into a stack buffer: this runs on every request.
fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ std::process::id().rotate_left(16))
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 8 + 1 + 16];
    for (i, byte) in out[..8].iter_mut().enumerate() {
        *byte = HEX[(prefix >> (28 - 4 * i) & 0xf) as usize];
    }
    out[8] = b'-';
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        out[9 + i] = HEX[(n >> (4 * (digits - 1 - i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out[..9 + digits]).expect("hex digits and '-' are a valid header")
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        _ => "other",
    }
}

/// Routes a request. The token and ticket routes are awaited inline; every other route's future
/// is boxed, so that this future (moved a few times per request) stays small: the database ping
/// alone is 9 KB, and copying it cost the token route a third of its instructions.
async fn dispatch(
    state: &State,
    peer: std::net::IpAddr,
    request: Request<Incoming>,
    label: &mut &'static str,
) -> ApiResult {
    let (parts, body) = request.into_parts();
    let Some(route) = route(parts.uri.path()) else {
        return Err(ApiError::NotFound);
    };
    *label = route.label();
    // /metrics names every appid with its expiry and calls: it is admin-only too.
    if matches!(route, Route::App(_) | Route::Status | Route::Metrics) {
        state.admin.check(&parts, peer)?;
    }
    let method = &parts.method;
    let read_only = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Health => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            Box::pin(state.engine.store().ping()).await?;
            Ok(success())
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
            let text = Box::pin(crate::metrics::render(&state.engine)).await?;
            Ok(typed(text, "text/plain; version=0.0.4; charset=utf-8"))
        }
        Route::Status => {
            if !read_only {
                return Err(ApiError::MethodNotAllowed);
            }
            let page = Box::pin(crate::status::page(&state.engine)).await?;
            Ok(typed(page, "text/html; charset=utf-8"))
        }
        Route::Credential {
            appid,
            kind,
            refresh,
        } => {
            if !(read_only || method == Method::POST) {
                return Err(ApiError::MethodNotAllowed);
            }
            let purpose = if refresh {
                Purpose::Refresh
            } else {
                Purpose::Read
            };
            state
                .readers
                .check(&parts, peer, appid, purpose, &state.engine)?;
            let appid = AppId::parse(appid)?;
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
                state.engine.refresh(&appid, kind, failed).await?
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
            if !(read_only || method == Method::POST) {
                return Err(ApiError::MethodNotAllowed);
            }
            // The Go SDK's own secret reads its app's stored token, as on token/get.
            state
                .readers
                .check(&parts, peer, appid, Purpose::Read, &state.engine)?;
            let appid = AppId::parse(appid)?;
            let credential = Box::pin(state.engine.stored(&appid, Kind::AccessToken)).await?;
            Ok(credential_response(
                Kind::AccessToken,
                &credential,
                state.engine.now(),
            ))
        }
        Route::WxCode(appid) => {
            if !(read_only || method == Method::POST) {
                return Err(ApiError::MethodNotAllowed);
            }
            // Sending a message on the app's behalf takes a key (or a local caller while none
            // exists), as the jssdk route does.
            state
                .readers
                .check(&parts, peer, appid, Purpose::Use, &state.engine)?;
            let appid = AppId::parse(appid)?;
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
        Route::App(action) => Box::pin(app_route(state, action, &parts, body)).await,
        Route::Jssdk(appid) => {
            if !(read_only || method == Method::POST) {
                return Err(ApiError::MethodNotAllowed);
            }
            state
                .readers
                .check(&parts, peer, appid, Purpose::Use, &state.engine)?;
            let appid = AppId::parse(appid)?;
            let params = Params::read(&parts, body, &state.http).await?;
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

async fn app_route(
    state: &State,
    action: &str,
    parts: &http::request::Parts,
    body: Incoming,
) -> ApiResult {
    let method = &parts.method;
    let allowed = match action {
        // The Go clients create apps with GET and a query string.
        "create" => method == Method::GET || method == Method::POST,
        "list" | "show" => method == Method::GET,
        "update" | "delete" | "refresh" => method == Method::POST,
        _ => return Err(ApiError::NotFound),
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    let params = Params::read(parts, body, &state.http).await?;
    if action == "create" && method == Method::GET && params.optional("secret").is_some() {
        // Never the secret itself: the Go clients' way still works, but should end.
        warn!(
            appid = params.optional("appid").unwrap_or_default(),
            "deprecated: an app was created with its secret in a GET query string; POST it in the body"
        );
    }
    let engine = &state.engine;
    match action {
        "create" => {
            let kind = AppKind::parse(params.optional("kind").unwrap_or("mp"))?;
            let (appid, work) = NewApp::identify(
                kind,
                params.optional("appid"),
                params.optional("corpid"),
                params.optional("agentid"),
            )?;
            let app = NewApp {
                appid,
                kind,
                token_mode: params
                    .optional("token_mode")
                    .map(TokenMode::parse)
                    .transpose()?
                    .unwrap_or_default(),
                work,
                secret: params
                    .secret("secret", 255)?
                    .ok_or_else(|| ApiError::BadRequest("secret is required".into()))?,
                token: params.secret("token", Secret::MAX_MESSAGE_KEY)?,
                aes_key: params.secret("aes_key", Secret::MAX_MESSAGE_KEY)?,
                daily_budget: params.budget()?,
                pay_key: params.secret("pay_key", GoFields::MAX)?,
                go: params.go_fields()?,
            };
            engine.add_app(&app).await?;
            Ok(json(
                StatusCode::OK,
                &Created {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    appid: app.appid.to_string(),
                },
            ))
        }
        "list" => {
            let apps = engine.app_statuses().await?;
            Ok(json(
                StatusCode::OK,
                &AppList {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    apps: apps.iter().map(app_view).collect(),
                },
            ))
        }
        "show" => {
            let appid = AppId::parse(params.required("appid")?)?;
            let status = engine.app_status(&appid).await?;
            Ok(json(
                StatusCode::OK,
                &AppShow {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    app: app_view(&status),
                },
            ))
        }
        "update" => {
            let appid = AppId::parse(params.required("appid")?)?;
            let update = AppUpdate {
                secret: params.secret("secret", Secret::MAX_APP_SECRET)?,
                token: params.secret("token", Secret::MAX_MESSAGE_KEY)?,
                aes_key: params.secret("aes_key", Secret::MAX_MESSAGE_KEY)?,
                token_mode: params
                    .optional("token_mode")
                    .map(TokenMode::parse)
                    .transpose()?,
                daily_budget: params.budget()?,
                pay_key: params.secret("pay_key", GoFields::MAX)?,
                go: params.go_fields()?,
            };
            engine.update_app(&appid, &update).await?;
            Ok(success())
        }
        "delete" => {
            let appid = AppId::parse(params.required("appid")?)?;
            engine.delete_app(&appid).await?;
            Ok(success())
        }
        "refresh" => {
            let appid = AppId::parse(params.required("appid")?)?;
            let kind = match params.optional("kind").unwrap_or("token") {
                "token" => Kind::AccessToken,
                "ticket" | "jsapi" => Kind::JsapiTicket,
                "wx_card" => Kind::CardTicket,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown kind {other:?}: expected token, ticket or wx_card"
                    )));
                }
            };
            let credential = engine.force_refresh(&appid, kind).await?;
            Ok(credential_response(kind, &credential, engine.now()))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The token route's answer, written by hand: this is the hot path, and the body is a
/// [`wetoken_wire::CredentialBody`] (a test checks the two agree). No clone of the value, no intermediate
/// structure, one allocation.
fn credential_response(kind: Kind, c: &Credential, now: DateTime<Utc>) -> Response<Full<Bytes>> {
    let field = match kind {
        Kind::AccessToken => "access_token",
        Kind::JsapiTicket | Kind::CardTicket => "ticket",
    };
    let mut body = Vec::with_capacity(c.value.len() + 128);
    body.extend_from_slice(br#"{"errcode":0,"errmsg":"success",""#);
    body.extend_from_slice(field.as_bytes());
    body.extend_from_slice(b"\":");
    // WeChat's values are plain printable ASCII and go in as they are; anything else is escaped
    // by serde_json, so nothing here depends on it.
    // A fold without short-circuit, so the check vectorizes.
    let plain = c.value.bytes().fold(true, |plain, b| {
        plain & (b > b' ') & (b < 0x7f) & (b != b'"') & (b != b'\\')
    });
    if plain {
        body.push(b'"');
        body.extend_from_slice(c.value.as_bytes());
        body.push(b'"');
    } else {
        serde_json::to_writer(&mut body, c.value.as_str()).expect("writing to a Vec cannot fail");
    }
    body.extend_from_slice(br#","expires_in":"#);
    push_decimal(&mut body, c.seconds_left(now));
    body.extend_from_slice(br#","expires_date":""#);
    expires_date(c.expires_at, &mut body);
    body.extend_from_slice(br#""}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Appends `n` in decimal, without the formatting machinery of `to_string`.
fn push_decimal(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `at` as `YYYYMMDDHHMMSS` in local time (as the Go wetoken wrote it). Converting to
/// local time consults the time zone, so each thread remembers its last answer: nearly every
/// request asks for the same few instants.
fn expires_date(at: DateTime<Utc>, out: &mut Vec<u8>) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, [u8; 14])> = const { std::cell::RefCell::new((i64::MIN, [0; 14])) };
    }
    let key = at.timestamp();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != key {
            let text = at.with_timezone(&Local).format("%Y%m%d%H%M%S").to_string();
            let mut digits = [b'0'; 14];
            let bytes = text.as_bytes();
            let n = bytes.len().min(14);
            digits[..n].copy_from_slice(&bytes[..n]);
            *last = (key, digits);
        }
        out.extend_from_slice(&last.1);
    });
}

fn app_view(status: &AppStatus) -> AppView {
    let app = &status.app;
    AppView {
        appid: app.appid.to_string(),
        kind: app.kind.as_str().into(),
        token_mode: app.token_mode.as_str().into(),
        corpid: app.work.as_ref().map(|w| w.corpid.clone()),
        agentid: app.work.as_ref().map(|w| w.agentid.clone()),
        daily_budget: app.daily_budget,
        calls_today: app.calls_today,
        has_token: app.has_token,
        has_aes_key: app.has_aes_key,
        has_pay_key: app.has_pay_key,
        mchid: app.go.mchid.clone(),
        sub_appid: app.go.sub_appid.clone(),
        sub_mchid: app.go.sub_mchid.clone(),
        wechat_host: app.go.wechat_host.clone(),
        wcode_template_id: app.go.wcode_template_id.clone(),
        create_time: app.create_time.to_rfc3339(),
        update_time: app.update_time.to_rfc3339(),
        access_token: credential_state(status.access_token.as_ref()),
        jsapi_ticket: credential_state(status.jsapi_ticket.as_ref()),
        card_ticket: credential_state(status.card_ticket.as_ref()),
    }
}

fn credential_state(record: Option<&CredentialRecord>) -> CredentialState {
    match record {
        None => CredentialState {
            expires_at: None,
            message: "not fetched yet".into(),
            halted: false,
        },
        Some(r) => CredentialState {
            expires_at: r.credential.as_ref().map(|c| c.expires_at.to_rfc3339()),
            message: r.message.clone(),
            halted: r.halted,
        },
    }
}

/// A request's parameters: the query string, overlaid by a form or JSON body.
/// Parameters a route does not use are ignored.
#[derive(Default)]
struct Params(HashMap<String, String>);

impl Params {
    async fn read(
        parts: &http::request::Parts,
        body: Incoming,
        limits: &HttpSettings,
    ) -> Result<Self, ApiError> {
        let limit = limits.body_limit_bytes;
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge(limit));
        }
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::BodyTooLarge(limit)
                } else {
                    ApiError::BadRequest("could not read the request body".into())
                }
            })?
            .to_bytes();
        Self::parse(parts.uri.query(), &body, is_json)
    }

    /// The parameters of a query string and a body already read: what [`Params::read`] does once
    /// it has the body. Never panics, whatever the input (`fuzz/` and a property test check).
    fn parse(query: Option<&str>, body: &[u8], is_json: bool) -> Result<Self, ApiError> {
        let mut map: HashMap<String, String> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let blank = body.iter().all(u8::is_ascii_whitespace);
        if !blank && is_json {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
                .map_err(|e| {
                ApiError::BadRequest(format!("request body is not a JSON object: {e}"))
            })?;
            for (key, value) in object {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => continue,
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "field {key:?} must be a string"
                        )));
                    }
                };
                map.insert(key, text);
            }
        } else if !blank {
            map.extend(form_urlencoded::parse(body).into_owned());
        }
        for (go, ours) in GoFields::GO_NAMES {
            let Some(value) = map.remove(go) else {
                continue;
            };
            match map.get(ours) {
                Some(other) if *other != value => {
                    return Err(ApiError::BadRequest(format!(
                        "{ours} and {go} name the same field and disagree: give one"
                    )));
                }
                _ => {
                    map.insert(ours.to_owned(), value);
                }
            }
        }
        Ok(Self(map))
    }

    fn optional(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.optional(name)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
    }

    /// `daily_budget`: a whole number of upstream calls a day.
    fn budget(&self) -> Result<Option<i32>, ApiError> {
        Ok(self
            .optional("daily_budget")
            .map(AppUpdate::budget)
            .transpose()?)
    }

    /// The Go wetoken's app fields that are not secrets.
    fn go_fields(&self) -> Result<GoFields, ApiError> {
        let field = |name| {
            self.optional(name)
                .map(|v| GoFields::check(name, v))
                .transpose()
        };
        Ok(GoFields {
            mchid: field("mchid")?,
            sub_appid: field("sub_appid")?,
            sub_mchid: field("sub_mchid")?,
            wechat_host: field("wechat_host")?,
            wcode_template_id: field("wcode_template_id")?,
        })
    }

    /// A secret-like field: at most `max` characters, no control characters.
    fn secret(&self, name: &str, max: usize) -> Result<Option<Secret>, ApiError> {
        Ok(self
            .optional(name)
            .map(|v| Secret::checked(name, v, max))
            .transpose()?)
    }
}

/// The body of the `route` fuzz target (`fuzz/`), also run by a property test.
///
/// `data` is a flags byte, a request target (`/path?query`), a newline, then a body. It goes
/// through what a request goes through before the engine: the URI parse, route matching, the
/// consumer-key check, appid validation, parameter parsing and the error mapping. It panics only
/// when an invariant breaks:
/// - a matched appid or action is one raw path segment, and a valid appid is the text it was
///   parsed from;
/// - the route of a path does not depend on anything but the path;
/// - a consumer key passes only for the one key, its one appid, and never for a refresh it
///   forbids.
pub(crate) fn fuzz_request(data: &[u8]) {
    const KEY: &str = "wtk_fuzz";
    const SCOPE: &str = "wxfuzz";
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (target, body) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    let routed = route(path);
    let segment = |s: &str| {
        assert!(!s.contains('/'), "{s:?} from {path:?}");
        assert!(path.contains(s));
    };
    let table = KeyTable::new([wetoken_core::ConsumerKey {
        id: "kfuzz".into(),
        name: "fuzz".into(),
        appids: [SCOPE.to_owned()].into(),
        allow_refresh: flags & 2 == 0,
        networks: vec![],
        create_time: Utc::now(),
        revoke_time: None,
        hash: wetoken_core::keys::KeyHash::of(KEY),
    }]);
    let presented = std::str::from_utf8(body).ok().map(str::trim);
    // Every credential route answers errors as the group does; no admin route does.
    match &routed {
        Some(Route::Credential { .. } | Route::Jssdk(_)) => {
            assert!(in_credential_group(path), "{path:?}");
        }
        Some(_) => assert!(!in_credential_group(path), "{path:?}"),
        None => {}
    }
    match &routed {
        Some(Route::Credential { appid, refresh, .. }) => {
            segment(appid);
            let access = Access {
                appid,
                refresh: *refresh,
                peer: std::net::IpAddr::from([127, 0, 0, 1]),
            };
            if table.check(presented, access).is_ok() {
                assert_eq!((presented, *appid), (Some(KEY), SCOPE));
                assert!(!refresh || flags & 2 == 0);
            }
            if let Ok(id) = AppId::parse(appid) {
                assert_eq!(id.as_str(), *appid);
            }
        }
        Some(Route::Jssdk(appid)) => {
            segment(appid);
            if let Ok(id) = AppId::parse(appid) {
                assert_eq!(id.as_str(), *appid);
            }
        }
        Some(Route::App(action)) => segment(action),
        _ => {}
    }
    match Params::parse(uri.query(), body, flags & 1 == 1) {
        Ok(params) => {
            for name in [
                "appid",
                "secret",
                "kind",
                "token_mode",
                "type",
                "url",
                "agentid",
            ] {
                if let Some(v) = params.optional(name) {
                    assert!(!v.is_empty());
                }
                if let Err(e) = params.secret(name, 255) {
                    let _ = error_response(&e);
                }
                let _ = params.required(name);
            }
            if let Err(e) = params.budget() {
                let _ = error_response(&e);
            }
        }
        Err(e) => {
            let response = error_response(&e);
            assert!(response.status().is_client_error(), "{e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fuzz target's body on arbitrary bytes, and on inputs shaped like requests.
        #[test]
        fn fuzz_request_never_breaks(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            fuzz_request(&data);
        }

        #[test]
        fn fuzz_request_on_request_shapes(
            flags in 0u8..4,
            prefix in "(/wx)?",
            appid in "[a-z0-9._%/-]{0,12}",
            kind in "(token|ticket|jssdk|app|x)",
            op in "(get|refresh|config|create|/)",
            query in "[a-z0-9=&%+_]{0,30}",
            body in "(wtk_fuzz|\\{\"appid\":\"wxfuzz\"\\}|[ -~]{0,40})",
        ) {
            let data = format!("{}{prefix}/{appid}/wechat/{kind}/{op}?{query}\n{body}", flags as char);
            fuzz_request(data.as_bytes());
        }
    }

    fn credential_route(path: &str) -> Option<(String, Kind, bool)> {
        match route(path)? {
            Route::Credential {
                appid,
                kind,
                refresh,
            } => Some((appid.to_owned(), kind, refresh)),
            _ => None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            credential_route("/wx1/wechat/token/get"),
            Some(("wx1".into(), Kind::AccessToken, false))
        );
        assert_eq!(
            credential_route("/wx/wx1/ticket/refresh"),
            Some(("wx1".into(), Kind::JsapiTicket, true))
        );
        assert!(matches!(
            route("/wechat/app/create"),
            Some(Route::App("create"))
        ));
        assert!(matches!(route("/health"), Some(Route::Health)));
        assert!(matches!(route("/"), Some(Route::Status)));
        assert!(matches!(route("/metrics"), Some(Route::Metrics)));
        for bad in [
            "",
            "//",
            "/wx1/wechat/token",
            "/wx1/wechat/token/get/",
            "/wx1/wechat/token/get/x",
            "/wx1/wechat/secret/get",
            "/wx1/other/token/get",
            "wx1/wechat/token/get",
        ] {
            assert!(route(bad).is_none(), "{bad:?} should not route");
        }
    }

    #[test]
    fn the_credential_group_is_every_route_under_its_prefixes() {
        for path in [
            "/wx1/wechat/token/get",
            "/wx1/wechat/ticket/refresh",
            "/wx1/wechat/jssdk/config",
            "/wx/wx1/token/get",
            "/wx/wx1/ticket/get",
            // Routes to come inherit the group; so does a path no route matches.
            "/wx/wx1/token/query",
            "/wx/wx1/wxcode/send",
            "/wx1/wechat/no/such",
            "/wechat/wechat/token/get",
        ] {
            assert!(in_credential_group(path), "{path}");
        }
        for path in [
            "/",
            "",
            "/wx",
            "/health",
            "/metrics",
            "/wechat/app/create",
            "/wechat/app/list",
            "/nothing/here",
        ] {
            assert!(!in_credential_group(path), "{path}");
        }
    }

    use wetoken_wire::CredentialBody;

    #[test]
    fn the_hand_written_body_is_a_credential_body() {
        for value in ["86_vWP_BMIM-x.y~z", "86_a\"b\\c", "é\u{1}\t", ""] {
            check_body(value);
        }
    }

    fn check_body(value: &str) {
        let c = Credential {
            value: value.into(),
            expires_at: Utc::now() + chrono::TimeDelta::seconds(7000),
        };
        for (kind, field) in [
            (Kind::AccessToken, "access_token"),
            (Kind::JsapiTicket, "ticket"),
        ] {
            let response = credential_response(kind, &c, Utc::now());
            let bytes = futures_lite_body(response);
            let body: CredentialBody = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body.value(), Some(c.value.as_str()));
            assert_eq!((body.errcode, body.errmsg.as_str()), (0, "success"));
            assert!((6999..=7000).contains(&body.expires_in));
            let expected = c
                .expires_at
                .with_timezone(&Local)
                .format("%Y%m%d%H%M%S")
                .to_string();
            assert_eq!(body.expires_date, expected);
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(value.get(field).is_some(), "{value}");
        }
    }

    /// hyper moves a request's future several times (`memcpy` was 64 % of the token route's
    /// instructions when a cold route's 9 KB database future sat inline in it). Cold routes box
    /// their work; this keeps a new inline future, or an `async fn` wrapper that holds its
    /// argument twice, from growing the hot one unnoticed. Today: 1,792 and 960 bytes.
    #[test]
    fn the_request_future_stays_small() {
        fn size3<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size4<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let handle = size3(handle);
        let dispatch = size4(
            |s: &'static State,
             p: std::net::IpAddr,
             r: Request<Incoming>,
             l: &'static mut &'static str| dispatch(s, p, r, l),
        );
        assert!(handle <= 2048, "handle's future is {handle} bytes");
        assert!(dispatch <= 1024, "dispatch's future is {dispatch} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn within_arms_its_timer_only_for_futures_that_wait() {
        let limit = Duration::from_secs(30);
        assert_eq!(within(limit, async { 1 }).await, Some(1));
        let started = tokio::time::Instant::now();
        assert_eq!(within(limit, std::future::pending::<u8>()).await, None);
        assert_eq!(started.elapsed(), limit);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(29)).await;
            2
        };
        assert_eq!(within(limit, slow).await, Some(2));
        let too_slow = async {
            tokio::time::sleep(Duration::from_secs(31)).await;
            3
        };
        assert_eq!(within(limit, too_slow).await, None);
    }

    proptest::proptest! {
        /// The byte loop splits as `str::split` does, and refuses what has too many segments.
        #[test]
        fn segments_split_like_str_split(path in "[a/b.%]{0,12}") {
            let expected: Vec<&str> = path.split('/').collect();
            match segments::<5>(&path) {
                Some(parts) => {
                    let got: Vec<&str> = parts.iter().map_while(|p| *p).collect();
                    proptest::prop_assert_eq!(got, expected);
                }
                None => proptest::prop_assert!(expected.len() > 5, "{path:?}"),
            }
        }
    }

    #[test]
    fn decimals_are_written_as_to_string_writes_them() {
        for n in [0, 7, 10, 7199, -1, -10, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes(), "{n}");
        }
    }

    #[test]
    fn address_trust_does_not_extend_to_web_pages() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let lan = std::net::IpAddr::from([10, 0, 0, 7]);
        let check = |peer, headers: &[(&str, &str)]| {
            let mut request = Request::builder().uri("/wx1/wechat/token/get");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let (parts, ()) = request.body(()).unwrap().into_parts();
            trusted_by_address(&parts, peer).is_ok()
        };
        // How a server listening on every address announces itself, so how a local caller
        // that found it in the registry names it.
        let own_name = format!("{}:9999", crate::hostname());
        let allowed: &[(std::net::IpAddr, &[(&str, &str)])] = &[
            (loopback, &[]),
            (loopback, &[("host", "127.0.0.1:9999")]),
            (loopback, &[("host", "localhost:9999")]),
            (loopback, &[("host", "LOCALHOST")]),
            (loopback, &[("host", "[::1]:9999")]),
            (loopback, &[("host", "[::1]")]),
            (loopback, &[("host", &own_name)]),
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "none")],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("sec-fetch-site", "same-origin"),
                ],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("origin", "http://127.0.0.1:9999"),
                ],
            ),
            // From the network, a name is how callers reach it.
            (lan, &[("host", "wetoken.internal:9999")]),
        ];
        for (peer, headers) in allowed {
            assert!(check(*peer, headers), "{peer} {headers:?} should pass");
        }
        let refused: &[(std::net::IpAddr, &[(&str, &str)])] = &[
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "cross-site")],
            ),
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "same-site")],
            ),
            (
                lan,
                &[
                    ("host", "wetoken.internal"),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("origin", "http://evil.example"),
                ],
            ),
            (loopback, &[("host", "127.0.0.1:9999"), ("origin", "null")]),
            (loopback, &[("origin", "http://127.0.0.1:9999")]),
            (
                lan,
                &[
                    ("host", "wetoken.internal"),
                    ("origin", "https://evil.example"),
                ],
            ),
            // DNS rebinding, or a local proxy passing the public name on.
            (loopback, &[("host", "rebind.evil.example:9999")]),
            (loopback, &[("host", "wetoken.example.com")]),
        ];
        for (peer, headers) in refused {
            assert!(
                !check(*peer, headers),
                "{peer} {headers:?} should be refused"
            );
        }
    }

    #[test]
    fn request_ids_are_short_hex_and_distinct() {
        let ids: Vec<String> = (0..2000)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let (prefix, counter) = id.split_once('-').unwrap();
            assert_eq!(prefix.len(), 8, "{id}");
            assert!(!counter.is_empty() && counter.len() <= 16, "{id}");
            assert!(
                id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
                "{id}"
            );
            assert!(counter == "0" || !counter.starts_with('0'), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    fn futures_lite_body(response: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { response.into_body().collect().await.unwrap().to_bytes() })
    }

    #[test]
    fn encoded_slashes_stay_in_the_appid() {
        // The path is not decoded, so this is one (malformed) appid, not another route.
        let (appid, _, _) = credential_route("/wx%2Fwechat%2Ftoken/wechat/token/get").unwrap();
        assert!(AppId::parse(&appid).is_err());
    }
}
