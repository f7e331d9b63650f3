//! The mock's HTTP side: routing, counting, faults and the `/mock/…` control routes.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::wechat::error;
use crate::{Endpoint, Fault, Shared, lock};

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    world: Shared,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let world = world.clone();
                let service = service_fn(move |request| handle(world.clone(), request));
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

/// Why a connection is cut without an answer (the [`Fault::Drop`]).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; encoding=utf-8"),
    );
    response
}

fn endpoint_of(path: &str) -> Option<(Endpoint, Method)> {
    let (endpoint, wants) = match path {
        "/cgi-bin/token" => (Endpoint::Token, Method::GET),
        "/cgi-bin/stable_token" => (Endpoint::StableToken, Method::POST),
        "/cgi-bin/ticket/getticket" => (Endpoint::Ticket, Method::GET),
        "/cgi-bin/get_api_domain_ip" => (Endpoint::CheckToken, Method::GET),
        "/cgi-bin/menu/create" => (Endpoint::MenuCreate, Method::POST),
        "/cgi-bin/gettoken" => (Endpoint::WorkToken, Method::GET),
        "/cgi-bin/get_jsapi_ticket" => (Endpoint::WorkTicket, Method::GET),
        _ => return None,
    };
    Some((endpoint, wants))
}

async fn handle(
    world: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    if let Some(control) = path.strip_prefix("/mock/") {
        return Ok(control_route(&world, &parts.method, control, &body));
    }
    let Some((endpoint, wants)) = endpoint_of(path) else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &error(404, "mock WeChat has no such API"),
        ));
    };
    let fault = {
        let mut w = lock(&world);
        *w.calls.entry(endpoint).or_insert(0) += 1;
        w.faults.get_mut(&endpoint).and_then(|q| q.pop_front())
    };
    match fault {
        Some(Fault::ErrCode(code)) => {
            return Ok(json_response(
                StatusCode::OK,
                &error(code, "injected fault"),
            ));
        }
        Some(Fault::HttpStatus(status)) => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"injected fault")));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(response);
        }
        Some(Fault::Drop) => return Err(Dropped),
        Some(Fault::Delay(by)) => tokio::time::sleep(by).await,
        None => {}
    }
    let mut params: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if wants == Method::POST {
        if parts.method != Method::POST {
            return Ok(json_response(
                StatusCode::OK,
                &error(43002, "require POST method"),
            ));
        }
        match serde_json::from_slice::<serde_json::Map<String, Value>>(&body) {
            Ok(object) => {
                for (key, value) in object {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    params.insert(key, text);
                }
            }
            Err(_) => {
                return Ok(json_response(
                    StatusCode::OK,
                    &error(47001, "data format error"),
                ));
            }
        }
    }
    let answer = lock(&world).answer(endpoint, &params);
    Ok(json_response(StatusCode::OK, &answer))
}

fn control_route(
    world: &Shared,
    method: &Method,
    route: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let ok = || json_response(StatusCode::OK, &json!({"errcode": 0, "errmsg": "ok"}));
    let bad = |m: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"errcode": 400, "errmsg": m}),
        )
    };
    let input: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(&format!("body is not JSON: {e}")),
        }
    };
    let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
    match (method.clone(), route) {
        (Method::GET, "calls") => {
            let w = lock(world);
            let counts: serde_json::Map<String, Value> = Endpoint::ALL
                .into_iter()
                .map(|e| {
                    (
                        e.name().to_owned(),
                        json!(w.calls.get(&e).copied().unwrap_or(0)),
                    )
                })
                .collect();
            json_response(StatusCode::OK, &Value::Object(counts))
        }
        (Method::POST, "apps") => match (text("appid"), text("secret")) {
            (Some(appid), Some(secret)) => {
                lock(world).add_app(&appid, &secret);
                ok()
            }
            _ => bad("need appid and secret"),
        },
        (Method::POST, "faults") => {
            let Some(endpoint) = text("endpoint").as_deref().and_then(Endpoint::from_name) else {
                return bad("unknown endpoint");
            };
            let times = input.get("times").and_then(Value::as_u64).unwrap_or(1) as usize;
            let fault = match input.get("fault") {
                Some(Value::String(s)) if s == "drop" => Fault::Drop,
                Some(Value::Object(f)) => {
                    if let Some(code) = f.get("errcode").and_then(Value::as_i64) {
                        Fault::ErrCode(code)
                    } else if let Some(status) = f.get("status").and_then(Value::as_u64) {
                        Fault::HttpStatus(status as u16)
                    } else if let Some(ms) = f.get("delay_ms").and_then(Value::as_u64) {
                        Fault::Delay(Duration::from_millis(ms))
                    } else {
                        return bad("fault needs errcode, status or delay_ms");
                    }
                }
                _ => return bad("fault must be \"drop\" or an object"),
            };
            let mut w = lock(world);
            w.faults
                .entry(endpoint)
                .or_default()
                .extend(std::iter::repeat_n(fault, times));
            ok()
        }
        (Method::POST, "reset") => {
            let mut w = lock(world);
            w.calls.clear();
            w.faults.clear();
            ok()
        }
        (Method::POST, "invalidate") => match text("access_token") {
            Some(token) => {
                lock(world).invalidate(&token);
                ok()
            }
            None => bad("need access_token"),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"errcode": 404, "errmsg": "no such control route"}),
        ),
    }
}
