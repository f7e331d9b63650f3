//! Pull WeChat access tokens and jsapi tickets from a wetoken server.
//!
//! A service that calls WeChat should never fetch tokens itself: every fetch ends the previous
//! token for everybody else. It asks wetoken instead, by the URL of the app's route:
//!
//! ```no_run
//! # async fn run() -> Result<(), wetoken_client::Error> {
//! let source = wetoken_client::AccessToken::by_url(
//!     "http://127.0.0.1:9999/wx9e02ddcc34513fd4/wechat/token/get",
//! )?;
//! let token = source.token().await?; // cached until shortly before it expires
//! # let _ = token; Ok(()) }
//! ```
//!
//! The value is cached in the process until a minute before it expires; concurrent callers share
//! one request to the server.
#![deny(missing_docs)]

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;
use wetoken_wire::{CredentialBody, ErrorBody};

/// Why no credential could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The URL given is not an http(s) URL.
    #[error("invalid wetoken URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("wetoken server unreachable: {0}")]
    Transport(String),
    /// The server answered with an error body, kept as it came.
    #[error("wetoken answered HTTP {status}: errcode {}: {}", .body.errcode, .body.errmsg)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's `{"errcode","errmsg"}`.
        body: ErrorBody,
    },
    /// The server's answer was not what a wetoken server sends.
    #[error("unexpected answer from the wetoken server: {0}")]
    Malformed(String),
}

/// Life a cached value must have left to be handed out.
const MARGIN: Duration = Duration::from_secs(60);

struct Cached {
    value: String,
    fetched: Instant,
    expires_in: Duration,
    expires_at: SystemTime,
}

/// One credential route, cached: the implementation behind [`AccessToken`] and [`JsapiTicket`].
struct Source {
    url: reqwest::Url,
    http: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl Source {
    fn new(url: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self {
            url: parsed,
            http,
            cached: Mutex::new(None),
        })
    }

    async fn get(&self) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched.elapsed() + MARGIN < c.expires_in
        {
            return Ok(c.value.clone());
        }
        let response = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        if status != 200 {
            let body: ErrorBody = serde_json::from_slice(&bytes)
                .map_err(|_| Error::Malformed(format!("HTTP {status} without an error body")))?;
            return Err(Error::Refused { status, body });
        }
        let body: CredentialBody =
            serde_json::from_slice(&bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        let value = body
            .value()
            .ok_or_else(|| Error::Malformed("no access_token or ticket in the answer".into()))?
            .to_owned();
        let expires_in = Duration::from_secs(body.expires_in.max(0) as u64);
        *cached = Some(Cached {
            value: value.clone(),
            fetched: Instant::now(),
            expires_in,
            expires_at: SystemTime::now() + expires_in,
        });
        Ok(value)
    }

    async fn expires_at(&self) -> Option<SystemTime> {
        self.cached.lock().await.as_ref().map(|c| c.expires_at)
    }
}

/// An app's access token, pulled from wetoken's `/{appid}/wechat/token/get` route.
pub struct AccessToken(Source);

impl AccessToken {
    /// A source for the token route at `url`. A malformed URL is refused here.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Source::new(url).map(Self)
    }

    /// The token, from the cache while it has more than a minute left, else from the server.
    pub async fn token(&self) -> Result<String, Error> {
        self.0.get().await
    }

    /// When the cached token expires, if one is cached.
    pub async fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at().await
    }
}

/// An app's jsapi ticket, pulled from wetoken's `/{appid}/wechat/ticket/get` route.
pub struct JsapiTicket(Source);

impl JsapiTicket {
    /// A source for the ticket route at `url`. A malformed URL is refused here.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Source::new(url).map(Self)
    }

    /// The ticket, from the cache while it has more than a minute left, else from the server.
    pub async fn ticket(&self) -> Result<String, Error> {
        self.0.get().await
    }

    /// When the cached ticket expires, if one is cached.
    pub async fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused() {
        for bad in ["", "127.0.0.1:9999/x", "ftp://host/x", "http://"] {
            assert!(
                matches!(AccessToken::by_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?}"
            );
        }
        assert!(AccessToken::by_url("http://127.0.0.1:9999/wx1/wechat/token/get").is_ok());
    }
}
