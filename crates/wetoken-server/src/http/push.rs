//! `/component/{component_appid}/event`: WeChat's pushes to a third-party platform (its
//! authorization-event URL): verify tickets, authorizations and their withdrawal.
//!
//! The route is public, outside the admin and reader policies: a push's `msg_signature`, made
//! with the platform's message token, is its only gate. `wetoken_core::msgcrypt` verifies it
//! before anything is decrypted. Around it, this module refuses what a signature alone would
//! let through: a push whose `timestamp` is outside `http.push_window_secs` of the engine's
//! clock, and a replay (a `msg_signature` any replica accepted within the window,
//! [`Engine::first_push`], through the database). Every refusal costs the source address one
//! from its bucket ([`PushPolicy`]), and an address whose bucket is empty is refused before
//! anything is looked up; pushes accepted cost nothing.
//!
//! Accepted pushes are answered with the plain text `success`, as WeChat expects within 5 s.
//! An `authorized` push's exchange (`api_query_auth`, then storing the authorizer) is awaited for
//! at most [`AUTHORIZE_WAIT`]; past it the answer is `success` and the exchange goes on, its
//! outcome logged. A verified push whose handling failed on a cause a retry may cure (the
//! database, WeChat unreachable) is answered with the error's status, so WeChat sends it again;
//! one a retry cannot cure is logged and answered `success`.
//!
//! Logs name the platform, the authorizer and the `InfoType`, never a ticket, a code, a token or
//! the body.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::Method;
use tracing::{error, info, warn};
use wetoken_core::msgcrypt::{Authorization, ComponentPush, MsgCrypt, MsgCryptError};
use wetoken_core::{AppId, Engine, Error};

use super::error::{ApiError, ApiResult, typed};
use super::limit::{Holder, RefreshLimiter};
use super::params::{Params, read_body};
use super::{Mount, RequestBody, State};

/// The push route's policy: the buckets of refused pushes per source address, and the
/// timestamp window.
pub(crate) struct PushPolicy {
    /// Refused pushes per source address; its `default` is every address's limit.
    pub limits: RefreshLimiter,
    /// How far a push's timestamp may be from the engine's clock, either way.
    pub window: Duration,
}

/// The largest push body read. WeChat's are a few hundred bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long an `authorized` push waits for its exchange before answering `success` anyway:
/// WeChat gives the answer 5 s.
const AUTHORIZE_WAIT: Duration = Duration::from_secs(3);

/// What became of a push, for `wetoken_component_pushes_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled, answered `success`.
    Ok,
    /// Verified, but handling it failed (logged with the platform and the authorizer).
    Failed,
    /// Its `msg_signature` was accepted before.
    Replayed,
    /// No signature, a wrong one, or one that verifies over what does not decrypt to a push for
    /// this platform.
    Forged,
    /// Its timestamp is outside the window.
    Stale,
    /// Not a push: parameters, body or XML malformed, too large, or a method not served.
    Malformed,
    /// For no third-party platform this server serves.
    UnknownComponent,
    /// Its source address is over its rate of refused pushes.
    Limited,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Replayed => "replayed",
            Outcome::Forged => "forged",
            Outcome::Stale => "stale",
            Outcome::Malformed => "malformed",
            Outcome::UnknownComponent => "unknown_component",
            Outcome::Limited => "limited",
        }
    }

    /// Whether the push was refused, which costs its address.
    fn is_refusal(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Failed)
    }
}

/// The `info_type` label of a push not decrypted (refused before, or a URL check).
pub(crate) const UNKNOWN: &str = "unknown";
/// The `info_type` label of the URL check (a GET with `echostr`).
pub(crate) const URL_CHECK: &str = "url_check";
/// The `info_type` labels a decrypted push may have; any other `InfoType` counts as `other`.
pub(crate) const INFO_TYPES: [&str; 5] = [
    "component_verify_ticket",
    "authorized",
    "updateauthorized",
    "unauthorized",
    "other",
];

/// The counter's label sets that exist from start-up (`crate::metrics::zero_counters`): each
/// push kind handled or failed or replayed, and each refusal made before decryption.
pub(crate) fn counters_at_start() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for info_type in &INFO_TYPES[..4] {
        for outcome in [Outcome::Ok, Outcome::Failed, Outcome::Replayed] {
            out.push((*info_type, outcome.label()));
        }
    }
    for outcome in [
        Outcome::Forged,
        Outcome::Stale,
        Outcome::Malformed,
        Outcome::UnknownComponent,
        Outcome::Limited,
    ] {
        out.push((UNKNOWN, outcome.label()));
    }
    out
}

fn count(info_type: &'static str, outcome: Outcome) {
    metrics::counter!(
        "wetoken_component_pushes_total",
        "info_type" => info_type,
        "outcome" => outcome.label(),
    )
    .increment(1);
}

/// What [`receive`] made of a push: its label, its outcome (`None`: counted later, by the task
/// that finishes it) and the answer.
struct Handled {
    info_type: &'static str,
    outcome: Option<Outcome>,
    answer: ApiResult,
}

impl Handled {
    fn refused(info_type: &'static str, outcome: Outcome, error: ApiError) -> Self {
        Self {
            info_type,
            outcome: Some(outcome),
            answer: Err(error),
        }
    }

    fn done(info_type: &'static str, outcome: Outcome, answer: ApiResult) -> Self {
        Self {
            info_type,
            outcome: Some(outcome),
            answer,
        }
    }
}

/// The answer WeChat waits for.
fn success() -> http::Response<http_body_util::Full<bytes::Bytes>> {
    typed("success".into(), "text/plain; charset=utf-8")
}

/// `/component/{component}/event`, for a caller at `peer` (behind any trusted proxy). Boxed
/// here, so that `dispatch`'s future holds a pointer to it and not the future itself.
pub(super) fn component_event<'a, B: RequestBody>(
    state: &'a State,
    mount: &'a Mount,
    parts: &'a http::request::Parts,
    body: B,
    peer: IpAddr,
    component: &'a str,
) -> std::pin::Pin<Box<dyn Future<Output = ApiResult> + Send + 'a>> {
    Box::pin(event(state, mount, parts, body, peer, component))
}

async fn event<B: RequestBody>(
    state: &State,
    mount: &Mount,
    parts: &http::request::Parts,
    body: B,
    peer: IpAddr,
    component: &str,
) -> ApiResult {
    let limits = &state.pushes.limits;
    let holder = Holder::Address(peer);
    if let Err(wait) = limits.check(&holder, limits.default, Instant::now()) {
        count(UNKNOWN, Outcome::Limited);
        let secs = wait.as_secs_f64().ceil().max(1.0);
        warn!(%peer, component, retry_after_secs = secs, "push refused: the address is over its rate of refused pushes");
        return Err(ApiError::Limited(
            format!(
                "{peer} sent too many refused pushes ({}); try again in {secs} s",
                limits.default
            ),
            wait,
        ));
    }
    let handled = receive(state, mount, parts, body, component).await;
    if let Some(outcome) = handled.outcome {
        count(handled.info_type, outcome);
        if outcome.is_refusal() {
            limits.charge(holder, limits.default, Instant::now());
        }
    }
    handled.answer
}

/// Checks, verifies, decrypts and handles one push (or answers the URL check).
async fn receive<B: RequestBody>(
    state: &State,
    mount: &Mount,
    parts: &http::request::Parts,
    body: B,
    component: &str,
) -> Handled {
    let malformed = |error| Handled::refused(UNKNOWN, Outcome::Malformed, error);
    let Ok(params) = Params::parse(parts.uri.query(), &[], false) else {
        return malformed(ApiError::BadRequest("the query string is malformed".into()));
    };
    let url_check = match (&parts.method, params.optional("echostr")) {
        (&Method::POST, _) => None,
        (&Method::GET | &Method::HEAD, Some(echostr)) => Some(echostr),
        _ => return malformed(ApiError::MethodNotAllowed),
    };
    let component = match AppId::parse(component) {
        Ok(id) => id,
        Err(e) => return malformed(e.into()),
    };
    if let Err(e) = mount.admit(&component) {
        return Handled::refused(UNKNOWN, Outcome::UnknownComponent, e);
    }
    let signed = match Signed::read(&params, &state.engine, state.pushes.window) {
        Ok(signed) => signed,
        Err((outcome, e)) => return Handled::refused(UNKNOWN, outcome, e),
    };
    let body = match url_check {
        Some(_) => bytes::Bytes::new(),
        None => match read_body(parts, body, MAX_BODY).await {
            Ok(body) => body,
            Err(e) => return malformed(e),
        },
    };
    let crypt = match crypt_of(&state.engine, &component).await {
        Ok(crypt) => crypt,
        Err((outcome, e)) => return Handled::refused(UNKNOWN, outcome, e),
    };
    if let Some(echostr) = url_check {
        return match crypt.open(signed.signature, signed.timestamp, signed.nonce, echostr) {
            Ok(message) => Handled::done(
                URL_CHECK,
                Outcome::Ok,
                Ok(typed(message, "text/plain; charset=utf-8")),
            ),
            Err(e) => {
                let (outcome, e) = refusal(&e);
                Handled::refused(UNKNOWN, outcome, e)
            }
        };
    }
    let push = match crypt
        .open_envelope(signed.signature, signed.timestamp, signed.nonce, &body)
        .and_then(|fields| ComponentPush::from_fields(&fields))
    {
        Ok(push) => push,
        Err(e) => {
            let (outcome, e) = refusal(&e);
            return Handled::refused(UNKNOWN, outcome, e);
        }
    };
    let info_type = info_type(&push);
    if push_component(&push) != &component {
        // Decryption checked the receive id; the signed AppId inside must agree.
        return Handled::refused(
            info_type,
            Outcome::Forged,
            ApiError::Forbidden(format!(
                "the push names another third-party platform than {component}"
            )),
        );
    }
    // Signatures in upper-case hex verify too: remember one spelling.
    let signature = signed.signature.to_ascii_lowercase();
    match state
        .engine
        .first_push(&component, &signature, state.pushes.window)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Handled::refused(
                info_type,
                Outcome::Replayed,
                ApiError::Forbidden(format!(
                    "this push to {component} was received before (its msg_signature was \
                     accepted within the last {} s): a replay is refused",
                    state.pushes.window.as_secs()
                )),
            );
        }
        Err(e) => {
            error!(%component, info_type, error = %e.chain(), "cannot note a push as seen; answered with an error so that WeChat sends it again");
            return Handled::done(info_type, Outcome::Failed, Err(e.into()));
        }
    }
    let handled = handle(&state.engine, component.clone(), info_type, push).await;
    // Answered with an error so that WeChat sends it again: its retry, the same request, must
    // not be refused as a replay.
    if handled.outcome == Some(Outcome::Failed)
        && handled.answer.is_err()
        && let Err(e) = state.engine.forget_push(&component, &signature).await
    {
        warn!(%component, info_type, error = %e.chain(), "cannot forget a push that failed; WeChat's retry of it will be refused as a replay");
    }
    handled
}

/// The query's signed parameters, checked: present, well-formed, and a timestamp within the
/// window of the engine's clock.
struct Signed<'a> {
    signature: &'a str,
    timestamp: &'a str,
    nonce: &'a str,
}

impl<'a> Signed<'a> {
    fn read(
        params: &'a Params,
        engine: &Engine,
        window: Duration,
    ) -> Result<Self, (Outcome, ApiError)> {
        let malformed = |m: &str| (Outcome::Malformed, ApiError::BadRequest(m.into()));
        if params.optional("encrypt_type").is_some_and(|t| t != "aes") {
            return Err(malformed(
                "encrypt_type must be aes: a third-party platform's pushes are encrypted",
            ));
        }
        let Some(signature) = params.optional("msg_signature") else {
            return Err((
                Outcome::Forged,
                ApiError::Forbidden("the push carries no msg_signature".into()),
            ));
        };
        let (Some(timestamp), Some(nonce)) =
            (params.optional("timestamp"), params.optional("nonce"))
        else {
            return Err(malformed("timestamp and nonce are required"));
        };
        let Some(seconds) = timestamp
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| timestamp.parse::<i64>().ok())
            .flatten()
        else {
            return Err(malformed("timestamp must be Unix seconds"));
        };
        let off = seconds.saturating_sub(engine.now().timestamp());
        let limit = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        if off.saturating_abs() > limit {
            return Err((
                Outcome::Stale,
                ApiError::Forbidden(format!(
                    "the push's timestamp is {off} s from this server's clock, outside the \
                     {limit} s either way that http.push_window_secs allows: an old push \
                     replayed, or a clock out of step"
                )),
            ));
        }
        Ok(Self {
            signature,
            timestamp,
            nonce,
        })
    }
}

/// The platform's crypt: its message token, EncodingAESKey and appid. An app that is not a
/// third-party platform is answered as one that does not exist, so the public route tells
/// nothing of the other apps.
async fn crypt_of(engine: &Engine, component: &AppId) -> Result<MsgCrypt, (Outcome, ApiError)> {
    let app = match engine.component(component).await {
        Ok(app) => app,
        Err(Error::UnknownApp(_) | Error::InvalidInput(_)) => {
            return Err((
                Outcome::UnknownComponent,
                Error::UnknownApp(component.clone()).into(),
            ));
        }
        Err(e) => return Err((Outcome::Failed, e.into())),
    };
    let misconfigured = |problem: String| {
        (
            Outcome::Failed,
            ApiError::Engine(Error::AppConfig {
                appid: component.to_string(),
                problem,
            }),
        )
    };
    let (Some(token), Some(aes_key)) = (&app.token, &app.aes_key) else {
        return Err(misconfigured(
            "a third-party platform needs its message token and EncodingAESKey".into(),
        ));
    };
    MsgCrypt::new(token.expose(), aes_key.expose(), component.as_str())
        .map_err(|e| misconfigured(e.to_string()))
}

/// A refusal by `wetoken_core::msgcrypt`: the signature or what it covers (403), or the
/// request's shape (400).
fn refusal(e: &MsgCryptError) -> (Outcome, ApiError) {
    use MsgCryptError as E;
    match e {
        E::BadSignature => (
            Outcome::Forged,
            ApiError::Forbidden(format!(
                "{e}: the push is forged, altered, or signed with another message token"
            )),
        ),
        E::BadBase64 | E::BadLength | E::BadPadding | E::WrongReceiveId => (
            Outcome::Forged,
            ApiError::Forbidden(format!(
                "{e}: the push was not encrypted for this third-party platform with its \
                 EncodingAESKey"
            )),
        ),
        E::Oversized { max } => (Outcome::Malformed, ApiError::BodyTooLarge(*max)),
        _ => (Outcome::Malformed, ApiError::BadRequest(e.to_string())),
    }
}

fn info_type(push: &ComponentPush) -> &'static str {
    match push {
        ComponentPush::VerifyTicket { .. } => INFO_TYPES[0],
        ComponentPush::Authorized(_) => INFO_TYPES[1],
        ComponentPush::UpdateAuthorized(_) => INFO_TYPES[2],
        ComponentPush::Unauthorized { .. } => INFO_TYPES[3],
        ComponentPush::Other { .. } => INFO_TYPES[4],
    }
}

fn push_component(push: &ComponentPush) -> &AppId {
    match push {
        ComponentPush::VerifyTicket {
            component_appid, ..
        }
        | ComponentPush::Unauthorized {
            component_appid, ..
        }
        | ComponentPush::Other {
            component_appid, ..
        } => component_appid,
        ComponentPush::Authorized(a) | ComponentPush::UpdateAuthorized(a) => &a.component_appid,
    }
}

/// A verified, first-seen push: what the engine does with it.
async fn handle(
    engine: &Engine,
    component: AppId,
    info_type: &'static str,
    push: ComponentPush,
) -> Handled {
    match push {
        ComponentPush::VerifyTicket {
            ticket,
            create_time,
            ..
        } => match engine
            .accept_verify_ticket(&component, ticket.expose(), create_time)
            .await
        {
            Ok(stored) => {
                info!(%component, stored, "verify ticket pushed");
                Handled::done(info_type, Outcome::Ok, Ok(success()))
            }
            Err(e) => {
                // Worth WeChat's retry: its next push in ten minutes would do too.
                error!(%component, error = %e.chain(), "cannot store a verify ticket; answered with an error so that WeChat sends it again");
                Handled::done(info_type, Outcome::Failed, Err(e.into()))
            }
        },
        ComponentPush::Authorized(authorization)
        | ComponentPush::UpdateAuthorized(authorization) => {
            authorize(engine, component, info_type, authorization).await
        }
        ComponentPush::Unauthorized {
            authorizer_appid, ..
        } => match engine.unauthorized(&component, &authorizer_appid).await {
            Ok(revoked) => {
                if !revoked {
                    info!(%component, appid = %authorizer_appid, "withdrawal of an account that is not one of the platform's authorizers; nothing to do");
                }
                Handled::done(info_type, Outcome::Ok, Ok(success()))
            }
            Err(e) => {
                error!(%component, appid = %authorizer_appid, error = %e.chain(), "cannot record a withdrawn authorization; answered with an error so that WeChat sends it again");
                Handled::done(info_type, Outcome::Failed, Err(e.into()))
            }
        },
        ComponentPush::Other {
            info_type: other, ..
        } => {
            info!(%component, info_type = other, "push of an InfoType wetoken does not handle; answered success");
            Handled::done(info_type, Outcome::Ok, Ok(success()))
        }
    }
}

/// An `authorized` or `updateauthorized` push: the code's exchange runs in a task of its own,
/// awaited for at most [`AUTHORIZE_WAIT`]. Finished by then, the authorizer is stored before
/// the answer; otherwise the answer is `success` and the task logs and counts its outcome.
async fn authorize(
    engine: &Engine,
    component: AppId,
    info_type: &'static str,
    authorization: Authorization,
) -> Handled {
    let authorizer = authorization.authorizer_appid;
    let code = authorization.authorization_code;
    let mut task = {
        let (engine, component) = (engine.clone(), component.clone());
        tokio::spawn(async move { engine.authorized(&component, code.expose()).await })
    };
    match tokio::time::timeout(AUTHORIZE_WAIT, &mut task).await {
        Ok(joined) => {
            let (outcome, answer) = settle(&component, &authorizer, info_type, joined);
            Handled::done(info_type, outcome, answer)
        }
        Err(_) => {
            info!(%component, appid = %authorizer, info_type, "the authorization's exchange is slow: answered success, it goes on");
            tokio::spawn(async move {
                let joined = task.await;
                let (outcome, _) = settle(&component, &authorizer, info_type, joined);
                count(info_type, outcome);
            });
            Handled {
                info_type,
                outcome: None,
                answer: Ok(success()),
            }
        }
    }
}

/// The outcome of an authorization's exchange, logged, and its answer: a failure a retry may
/// cure (the database, WeChat unreachable) is answered with its error so that WeChat sends the
/// push again; one it cannot (WeChat refused the code, the appid is stored as another app) is
/// answered `success`.
fn settle(
    component: &AppId,
    authorizer: &AppId,
    info_type: &'static str,
    joined: Result<Result<AppId, Error>, tokio::task::JoinError>,
) -> (Outcome, ApiResult) {
    match joined {
        Ok(Ok(stored)) => {
            info!(%component, appid = %stored, info_type, "authorizer stored");
            (Outcome::Ok, Ok(success()))
        }
        Ok(Err(e))
            if matches!(
                e,
                Error::Database(_)
                    | Error::DatabaseUnavailable(_)
                    | Error::Unavailable(_)
                    | Error::NoVerifyTicket(_)
                    | Error::OverBudget(_)
                    | Error::Refused { errcode: -1, .. }
            ) =>
        {
            error!(%component, appid = %authorizer, info_type, error = %e.chain(), "cannot store an authorization; answered with an error so that WeChat sends it again");
            (Outcome::Failed, Err(e.into()))
        }
        Ok(Err(e)) => {
            error!(%component, appid = %authorizer, info_type, error = %e.chain(), "cannot store an authorization, and a retry would not help: answered success; the account must authorize again");
            (Outcome::Failed, Ok(success()))
        }
        Err(e) => {
            error!(%component, appid = %authorizer, info_type, error = %e, "the authorization's exchange panicked");
            (
                Outcome::Failed,
                Err(ApiError::Engine(Error::Unavailable(
                    "the authorization's exchange failed; see the server log".into(),
                ))),
            )
        }
    }
}
