//! The mock's HTTP side: serving, routing, counting, faults and the `/mock/…` control routes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::world::{Authorizing, ComponentRequest, OpenBody, Params, Reply, StableRequest};
use crate::{Endpoint, Fault, MockComponent, PushError, Pushed, Shared, lock, push};

/// The largest request body read; a larger one is answered as malformed.
const BODY_LIMIT: usize = 1 << 20;
/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type Body = Full<Bytes>;

/// Serves `listener` until `stop` turns true (or its sender goes away).
pub(crate) async fn serve(listener: TcpListener, world: Shared, mut stop: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let world = world.clone();
                    let service = service_fn(move |request| handle(world.clone(), request));
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "mock WeChat connection ended");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "mock WeChat cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = async {
                // A dropped sender counts as a stop too.
                let _ = stop.wait_for(|stopped| *stopped).await;
            } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("mock WeChat: requests still in flight at shutdown are cut");
    }
    connections.shutdown().await;
}

/// The error that makes hyper close the connection without an answer ([`Fault::Drop`]).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    // What WeChat sends, "encoding" and all.
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; encoding=utf-8"),
    );
    response
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn query_params(query: Option<&str>) -> Params {
    let mut params = Params::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params
            .entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    params
}

async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, BODY_LIMIT)
        .collect()
        .await
        .ok()
        .map(|collected| collected.to_bytes())
}

fn wants_post(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::StableToken
            | Endpoint::MenuCreate
            | Endpoint::TemplateSend
            | Endpoint::QuotaGet
            | Endpoint::ClearQuota
            | Endpoint::ComponentToken
            | Endpoint::PreAuthCode
            | Endpoint::QueryAuth
            | Endpoint::AuthorizerToken
            | Endpoint::AuthorizerInfo
    )
}

async fn handle(world: Shared, request: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if let Some(route) = path.strip_prefix("/mock/") {
        let body = read_body(body).await;
        return Ok(control(&world, &parts.method, route, body.as_deref()).await);
    }
    let Some(endpoint) = Endpoint::ALL.into_iter().find(|e| e.path() == path) else {
        tracing::debug!(method = %parts.method, path, "mock WeChat: no such API");
        let answer = lock(&world).error(404, &format!("mock WeChat has no API at {path}"));
        return Ok(json_response(StatusCode::NOT_FOUND, &answer));
    };
    let fault = lock(&world).record(endpoint);
    let mut answer_late = None;
    match fault {
        Some(Fault::ErrCode(code)) => {
            tracing::debug!(
                endpoint = endpoint.name(),
                code,
                "mock WeChat: injected errcode"
            );
            let answer = lock(&world).error(code, "injected fault");
            return Ok(json_response(StatusCode::OK, &answer));
        }
        Some(Fault::HttpStatus(status)) => {
            tracing::debug!(
                endpoint = endpoint.name(),
                status,
                "mock WeChat: injected status"
            );
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(text_response(status, "injected fault\n"));
        }
        Some(Fault::Drop) => {
            tracing::debug!(endpoint = endpoint.name(), "mock WeChat: injected drop");
            return Err(Dropped);
        }
        Some(Fault::Redirect(root)) => {
            let target = format!(
                "{}{}",
                root.trim_end_matches('/'),
                parts.uri.path_and_query().map_or("", |p| p.as_str())
            );
            tracing::debug!(endpoint = endpoint.name(), "mock WeChat: injected redirect");
            let mut response = text_response(StatusCode::FOUND, "moved\n");
            if let Ok(location) = HeaderValue::from_str(&target) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return Ok(response);
        }
        Some(Fault::Oversized(bytes)) => {
            tracing::debug!(
                endpoint = endpoint.name(),
                bytes,
                "mock WeChat: injected oversized answer"
            );
            let head = r#"{"access_token":"OVERSIZED","expires_in":7200,"padding":""#;
            let mut body = String::with_capacity(bytes.max(head.len() + 2));
            body.push_str(head);
            body.extend(std::iter::repeat_n(
                'x',
                bytes.saturating_sub(head.len() + 2),
            ));
            body.push_str("\"}");
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; encoding=utf-8"),
            );
            return Ok(response);
        }
        Some(Fault::Answer(value)) => {
            tracing::debug!(endpoint = endpoint.name(), "mock WeChat: injected answer");
            return Ok(json_response(StatusCode::OK, &value));
        }
        Some(Fault::Delay(by)) => {
            tracing::debug!(
                endpoint = endpoint.name(),
                ?by,
                "mock WeChat: injected delay"
            );
            tokio::time::sleep(by).await;
        }
        Some(Fault::DelayAnswer(by)) => answer_late = Some(by),
        None => {}
    }

    let reply = answer(&world, endpoint, &parts.method, parts.uri.query(), body).await;
    if let Some(by) = answer_late {
        tracing::debug!(
            endpoint = endpoint.name(),
            ?by,
            "mock WeChat: answered, the answer held back"
        );
        tokio::time::sleep(by).await;
    }
    let (Ok(value) | Err(value)) = reply;
    let errcode = value.get("errcode").and_then(|c| c.as_i64()).unwrap_or(0);
    tracing::debug!(endpoint = endpoint.name(), errcode, "mock WeChat answered");
    Ok(json_response(StatusCode::OK, &value))
}

/// The normal answer of `endpoint`.
async fn answer(
    world: &Shared,
    endpoint: Endpoint,
    method: &Method,
    query: Option<&str>,
    body: Incoming,
) -> Reply {
    if wants_post(endpoint) && method != Method::POST {
        return Err(lock(world).error(43002, "require POST method"));
    }
    if !wants_post(endpoint) && method != Method::GET {
        return Err(lock(world).error(43001, "require GET method"));
    }
    let params = query_params(query);
    let body = if wants_post(endpoint) {
        read_body(body).await
    } else {
        None
    };
    let mut w = lock(world);
    match endpoint {
        Endpoint::Token => w.token(&params),
        Endpoint::StableToken => match json_body::<StableRequest>(body.as_deref()) {
            Some(request) => w.stable_token(&request),
            None => Err(w.error(47001, "data format error")),
        },
        Endpoint::Ticket => w.ticket(&params),
        Endpoint::CheckToken | Endpoint::CallbackIp => w.check_only(&params),
        Endpoint::MenuCreate => w.menu_create(&params, body.as_deref().unwrap_or_default()),
        Endpoint::MenuGet => w.menu_get(&params),
        Endpoint::WorkToken => w.work_token(&params),
        Endpoint::WorkTicket => w.work_ticket(&params),
        Endpoint::TemplateSend => w.template_send(&params, body.as_deref().unwrap_or_default()),
        Endpoint::QuotaGet => w.quota_get(&params, body.as_deref().unwrap_or_default()),
        Endpoint::ClearQuota => w.clear_quota(&params, body.as_deref().unwrap_or_default()),
        Endpoint::ComponentToken => match json_body::<ComponentRequest>(body.as_deref()) {
            Some(request) => w.component_token_call(&request),
            None => Err(w.error(47001, "data format error")),
        },
        Endpoint::PreAuthCode
        | Endpoint::QueryAuth
        | Endpoint::AuthorizerToken
        | Endpoint::AuthorizerInfo => {
            let Some(request) = json_body::<OpenBody>(body.as_deref()) else {
                return Err(w.error(47001, "data format error"));
            };
            match endpoint {
                Endpoint::PreAuthCode => w.create_preauthcode(&params, &request),
                Endpoint::QueryAuth => w.query_auth(&params, &request),
                Endpoint::AuthorizerInfo => w.authorizer_info_call(&params, &request),
                _ => w.authorizer_token_call(&params, &request),
            }
        }
    }
}

/// A JSON request body, if it is one of this shape.
fn json_body<T: serde::de::DeserializeOwned>(body: Option<&[u8]>) -> Option<T> {
    serde_json::from_slice(body?).ok()
}

#[derive(Deserialize)]
struct AppBody {
    appid: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultSpec {
    Word(String),
    ErrCode { errcode: i64 },
    Status { status: u16 },
    Delay { delay_ms: u64 },
    DelayAnswer { delay_answer_ms: u64 },
    Redirect { redirect: String },
    Oversized { oversized_bytes: usize },
    Answer { answer: Value },
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct FaultBody {
    endpoint: String,
    fault: FaultSpec,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Deserialize)]
struct InvalidateBody {
    access_token: String,
}

#[derive(Deserialize)]
struct AdvanceBody {
    seconds: u64,
}

#[derive(Deserialize)]
struct ComponentBody {
    component_appid: String,
    component_appsecret: String,
    token: String,
    encoding_aes_key: String,
    push_url: Option<String>,
}

#[derive(Deserialize)]
struct PushBody {
    component_appid: String,
    authorizer_appid: Option<String>,
    pre_auth_code: Option<String>,
    /// For `authorized`: the account is a mini program.
    #[serde(default)]
    mini_program: bool,
}

fn parse<T: serde::de::DeserializeOwned>(body: Option<&[u8]>) -> Result<T, String> {
    serde_json::from_slice(body.unwrap_or_default()).map_err(|e| format!("bad body: {e}"))
}

fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

enum Route {
    Calls,
    Apps,
    Faults,
    Reset,
    Invalidate,
    Advance,
    Component,
    /// `/mock/push/{info_type}`.
    Push(PushKind),
}

#[derive(Clone, Copy)]
enum PushKind {
    Ticket,
    Authorized,
    UpdateAuthorized,
    Unauthorized,
}

/// Makes the push a control route asked for, and sends it.
async fn control_push(world: &Shared, kind: PushKind, body: PushBody) -> Result<Pushed, String> {
    let authorizer = body.authorizer_appid.as_deref();
    let prepared = {
        let mut w = lock(world);
        let component = body.component_appid.as_str();
        match (kind, authorizer) {
            (PushKind::Ticket, _) => w.push_ticket(component),
            (PushKind::Authorized, _) => w.authorize(
                component,
                authorizer,
                body.pre_auth_code.as_deref(),
                Authorizing::New {
                    mini_program: body.mini_program,
                },
            ),
            (PushKind::UpdateAuthorized, Some(authorizer)) => {
                w.authorize(component, Some(authorizer), None, Authorizing::Update)
            }
            (PushKind::Unauthorized, Some(authorizer)) => w.unauthorize(component, authorizer),
            (_, None) => Err(PushError::BadAuthorizer),
        }
    };
    let prepared = prepared.map_err(|e| e.to_string())?;
    let client = lock(world).client.clone();
    Ok(push::deliver(&client, prepared).await)
}

/// The `/mock/…` control routes; never counted, never faulted.
async fn control(
    world: &Shared,
    method: &Method,
    route: &str,
    body: Option<&[u8]>,
) -> Response<Body> {
    let (route, wanted) = match route {
        "calls" => (Route::Calls, Method::GET),
        "apps" => (Route::Apps, Method::POST),
        "faults" => (Route::Faults, Method::POST),
        "reset" => (Route::Reset, Method::POST),
        "invalidate" => (Route::Invalidate, Method::POST),
        "advance" => (Route::Advance, Method::POST),
        "components" => (Route::Component, Method::POST),
        "push/component_verify_ticket" => (Route::Push(PushKind::Ticket), Method::POST),
        "push/authorized" => (Route::Push(PushKind::Authorized), Method::POST),
        "push/updateauthorized" => (Route::Push(PushKind::UpdateAuthorized), Method::POST),
        "push/unauthorized" => (Route::Push(PushKind::Unauthorized), Method::POST),
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"errcode": 404, "errmsg": format!("no control route /mock/{route}")}),
            );
        }
    };
    if *method != wanted {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"errcode": 405, "errmsg": format!("this control route takes {wanted}")}),
        );
    }
    let result = match route {
        Route::Calls => {
            let w = lock(world);
            let counts: serde_json::Map<String, Value> = Endpoint::ALL
                .into_iter()
                .map(|e| (e.name().to_owned(), json!(w.calls[e.index()])))
                .collect();
            Ok(Value::Object(counts))
        }
        Route::Apps => parse::<AppBody>(body).map(|app| {
            lock(world).add_app(&app.appid, &app.secret);
            ok()
        }),
        Route::Faults => parse::<FaultBody>(body).and_then(|spec| {
            let endpoint = Endpoint::from_name(&spec.endpoint)
                .ok_or_else(|| format!("no endpoint {:?}", spec.endpoint))?;
            let fault = match spec.fault {
                FaultSpec::Word(word) if word == "drop" => Fault::Drop,
                FaultSpec::Word(word) => return Err(format!("no fault {word:?}")),
                FaultSpec::ErrCode { errcode } => Fault::ErrCode(errcode),
                FaultSpec::Status { status } if StatusCode::from_u16(status).is_ok() => {
                    Fault::HttpStatus(status)
                }
                FaultSpec::Status { status } => return Err(format!("{status} is no HTTP status")),
                FaultSpec::Delay { delay_ms } => Fault::Delay(Duration::from_millis(delay_ms)),
                FaultSpec::DelayAnswer { delay_answer_ms } => {
                    Fault::DelayAnswer(Duration::from_millis(delay_answer_ms))
                }
                FaultSpec::Redirect { redirect } => Fault::Redirect(redirect),
                FaultSpec::Oversized { oversized_bytes } => Fault::Oversized(oversized_bytes),
                FaultSpec::Answer { answer } => Fault::Answer(answer),
            };
            lock(world).inject(endpoint, fault, spec.times);
            Ok(ok())
        }),
        Route::Reset => {
            let mut w = lock(world);
            w.calls = [0; Endpoint::ALL.len()];
            w.clear_faults();
            Ok(ok())
        }
        Route::Invalidate => parse::<InvalidateBody>(body).map(|b| {
            lock(world).invalidate(&b.access_token);
            ok()
        }),
        Route::Advance => parse::<AdvanceBody>(body).map(|b| {
            lock(world).advance(Duration::from_secs(b.seconds));
            ok()
        }),
        Route::Component => parse::<ComponentBody>(body).and_then(|b| {
            lock(world)
                .add_component(MockComponent {
                    appid: b.component_appid,
                    secret: b.component_appsecret,
                    token: b.token,
                    aes_key: b.encoding_aes_key,
                    push_url: b.push_url,
                })
                .map(|()| ok())
                .map_err(|e| e.to_string())
        }),
        Route::Push(kind) => match parse::<PushBody>(body) {
            Ok(b) => control_push(world, kind, b).await.and_then(|pushed| {
                serde_json::to_value(pushed).map_err(|e| format!("cannot answer: {e}"))
            }),
            Err(message) => Err(message),
        },
    };
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(message) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"errcode": 400, "errmsg": message}),
        ),
    }
}
