//! [`TokenSource`], what code that calls WeChat takes a token from, and its [`Error`].
//!
//! The trait lives here, beside the wire types, so that both sides of wetoken implement it
//! without either depending on the other: `wetoken-client` pulls tokens from a server by URL,
//! and `wetoken-server`'s embedded engine hands them out in process. Code written against the
//! trait (`wetoken_client::call`, for one) works the same with either. The error is the client's:
//! an embedded engine's refusal is the same [`Error::Refused`], with the `errcode` and HTTP
//! status a server would have answered.

use std::future::Future;

use crate::ErrorBody;

/// Why no credential could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A URL given is not an http(s) URL of a token or ticket route.
    #[error("invalid wetoken URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No server could be reached.
    #[error("wetoken server {url} unreachable: {message}")]
    Transport {
        /// The last server tried.
        url: String,
        /// What failed.
        message: String,
    },
    /// A server did not answer within the timeout.
    #[error("wetoken server {url} did not answer in time")]
    Timeout {
        /// The server.
        url: String,
    },
    /// The server (or the embedded engine) refused, with its `{"errcode","errmsg"}` kept as it
    /// came.
    #[error("wetoken refused ({status}): errcode {}: {}", .body.errcode, .body.errmsg)]
    Refused {
        /// The HTTP status; from a server that answers errors with HTTP 200 and a non-zero
        /// `errcode` (its default, for the Go SDK), the status that errcode stands for
        /// ([`crate::code::http_status`]). So the error is the same either way, and the same
        /// from an embedded engine.
        status: u16,
        /// The server's error body.
        body: ErrorBody,
    },
    /// The answer was not what a wetoken server sends.
    #[error("unexpected answer from {url}: {message}")]
    Malformed {
        /// The server.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// Anything that hands out a token and takes reports of rejected ones: what a WeChat API client
/// should take, so it works with a wetoken server, an embedded engine, a fixed token in tests,
/// or anything else.
pub trait TokenSource: Send + Sync {
    /// The current token.
    fn token(&self) -> impl Future<Output = Result<String, Error>> + Send;
    /// Reports `bad` as rejected by WeChat.
    fn invalidate(&self, bad: &str) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A source that always hands out the same token; for tests.
#[derive(Debug, Clone)]
pub struct FixedToken(pub String);

impl TokenSource for FixedToken {
    async fn token(&self) -> Result<String, Error> {
        Ok(self.0.clone())
    }

    async fn invalidate(&self, _bad: &str) -> Result<(), Error> {
        Ok(())
    }
}
