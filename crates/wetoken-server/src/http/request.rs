//! Request plumbing around `dispatch`: [`handle`] gives each request its id and log span, its
//! time limit and its metrics, and turns every error into an answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tracing::{Instrument, debug, warn};

use super::error::{ApiError, error_response};
use super::route::{in_credential_group, route};
use super::{Mount, RequestBody, State, dispatch};
use wetoken_settings::CredentialErrors;

/// Serves one request. Never fails: every error becomes a JSON answer.
pub(crate) async fn handle<B: RequestBody>(
    state: Arc<State>,
    mount: Arc<Mount>,
    peer: std::net::IpAddr,
    request: Request<B>,
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
    // `key` is filled in only when a request is refused: the consumer key's name, when one
    // was presented and is known. `client` only behind a trusted proxy: the caller it names.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.to_str().unwrap_or_default(),
        path = %request.uri().path(),
        key = tracing::field::Empty,
        client = tracing::field::Empty,
    );
    let errors_in_body = state.http.credential_errors == CredentialErrors::InBody
        && in_credential_group(request.uri().path());
    let timeout = Duration::from_secs(state.http.request_timeout_secs);
    // For the refusal line (a reference-counted copy of the path's bytes).
    let uri = request.uri().clone();
    let answer = tokio::time::timeout(
        timeout,
        dispatch(&state, &mount, peer, request, &mut label).instrument(span.clone()),
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
            if let Some(reason) = e.refusal() {
                // Every 401 and 403, so that a caller locked out (or probing) shows in the log,
                // with the app asked for when the path names a well-formed appid.
                let appid = route(uri.path())
                    .and_then(|r| r.appid())
                    .filter(|a| wetoken_core::AppId::parse(a).is_ok());
                span.in_scope(|| warn!(%peer, reason, appid, "refused"));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
