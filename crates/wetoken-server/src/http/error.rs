//! Errors and the plain answers: [`ApiError`], why a request failed, and [`error_response`], the
//! one place an error becomes an `errcode` and an HTTP status; also the small JSON and text
//! answers every handler builds its response with.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tracing::error;
use wetoken_wire::{ErrorBody, code};

/// Why a request failed, before or inside the engine.
#[derive(Debug)]
pub(super) enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    Forbidden(String),
    BodyTooLarge(usize),
    NotFound,
    MethodNotAllowed,
    Timeout,
    /// The server is not ready to serve: it is starting, or stopping, or cannot reach its
    /// database and no longer trusts what it caches.
    NotReady(i64, &'static str),
    /// A caller over its passive-refresh rate; it may try again after the wait.
    Limited(String, std::time::Duration),
    Engine(wetoken_core::Error),
}

impl From<wetoken_core::Error> for ApiError {
    fn from(e: wetoken_core::Error) -> Self {
        ApiError::Engine(e)
    }
}

impl ApiError {
    /// Why the caller was refused, for a 401 or a 403.
    pub(super) fn refusal(&self) -> Option<&str> {
        match self {
            ApiError::Unauthorized(m) => Some(m),
            ApiError::Forbidden(m) => Some(m),
            _ => None,
        }
    }
}

pub(super) type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

/// The one place errors become `errcode`s; each errcode's HTTP status is the wire contract's
/// (`code::http_status`), so clients can tell it from the errcode alone. Whether a credential
/// route sends that status or 200 is decided in [`handle`].
pub(super) fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let (errcode, errmsg) = errcode_of(e);
    let status = StatusCode::from_u16(code::http_status(errcode))
        .expect("the wire contract names real statuses");
    let mut response = json(status, &ErrorBody { errcode, errmsg });
    if let ApiError::Limited(_, wait) = e {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(e, ApiError::BodyTooLarge(_)) {
        // The rest of the body was not read, so the connection cannot carry another request:
        // say so, or a client may reuse it and find it closed.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// An error's `errcode` and `errmsg`, as answers and the status page show them.
pub(super) fn errcode_of(e: &ApiError) -> (i64, String) {
    match e {
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
        ApiError::NotReady(errcode, m) => (*errcode, (*m).into()),
        ApiError::Limited(m, _) => (code::LIMITED, m.clone()),
        ApiError::Engine(e) => engine_errcode(e),
    }
}

/// An engine error's `errcode` and message, as every answer and the embedded engine's
/// [`TokenSource`](wetoken_wire::source::TokenSource) give it. Causes that are the server's own
/// business (the database's text, a secret that does not decrypt) stay in the log.
fn engine_errcode(e: &wetoken_core::Error) -> (i64, String) {
    use wetoken_core::Error as E;
    match e {
        E::InvalidInput(m) => (code::BAD_REQUEST, m.clone()),
        E::UnknownApp(_) => (code::UNKNOWN_APP, e.to_string()),
        E::DuplicateApp(_) => (code::DUPLICATE_APP, e.to_string()),
        E::ForceLimited(m) => (code::LIMITED, m.clone()),
        E::OverBudget(m) => (code::OVER_BUDGET, m.clone()),
        E::NotStored { .. } => (code::NOT_STORED, e.to_string()),
        E::NoVerifyTicket(m) => (code::NO_VERIFY_TICKET, m.clone()),
        E::Revoked { .. } => (code::REVOKED, e.to_string()),
        // WeChat's own code, which is never in wetoken's range: 502.
        E::Refused { errcode, errmsg } => (*errcode, errmsg.clone()),
        E::Halted { errcode, .. } => (errcode.unwrap_or(code::HALTED), e.to_string()),
        E::Unavailable(m) => (
            code::UPSTREAM_UNAVAILABLE,
            format!("{m}; no valid credential is held"),
        ),
        E::DatabaseUnavailable(_) => (code::DATABASE_UNAVAILABLE, "database unavailable".into()),
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
    }
}

/// An engine error as a client sees it: the same `errcode`, message and HTTP status a server
/// would have answered, so code behind a `TokenSource` cannot tell an embedded engine from a
/// server by its errors.
pub(crate) fn engine_error(e: &wetoken_core::Error) -> wetoken_wire::source::Error {
    let (errcode, errmsg) = engine_errcode(e);
    wetoken_wire::source::Error::Refused {
        status: code::http_status(errcode),
        body: ErrorBody { errcode, errmsg },
    }
}

pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("wire types always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(super) fn typed(body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn success() -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        &ErrorBody {
            errcode: code::OK,
            errmsg: "success".into(),
        },
    )
}
