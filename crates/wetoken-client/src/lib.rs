//! Pull WeChat access tokens and tickets from a wetoken server.
//!
//! A service that calls WeChat should never fetch tokens itself: every fetch ends the previous
//! token for everybody else. It asks wetoken instead, by the URL of the app's route, as the Go
//! SDK's `NewDefaultAccessTokenByURL` did.
//!
//! - [`AccessToken`] and [`JsapiTicket`] cache the value until [`Builder::margin`] before it
//!   expires; concurrent callers share one request.
//! - [`TokenSource::invalidate`] reports a value WeChat rejected; the server refreshes once, and
//!   several reports of one value here make one request.
//! - [`call`] runs a WeChat API call and retries it once with a fresh token when WeChat answers
//!   40001, 40014 or 42001.
//! - A [`Builder`] takes several server URLs and fails over on connection errors, timeouts and
//!   the server's own failures (5xx, or errcode 90500, 90503, 90504 or 90505 in a 200 body), never on
//!   4xx or a refusal of WeChat's.
//! - A server may answer errors with their HTTP status or, as the Go wetoken did, with HTTP 200
//!   and a non-zero `errcode` (`http.credential_errors`); either way they come back as the same
//!   [`Error::Refused`].
//! - [`JssdkConfig`] asks the server to sign a page's `wx.config`.
//!
//! This crate depends on the wire types and reqwest only: nothing of the server.
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;
use wetoken_wire::{CredentialBody, ErrorBody, code};

// The trait and its error live in the wire crate, which the embedded engine
// (`wetoken_server::Embedded`) implements them from too; they stay reachable here.
pub use wetoken_wire::source::{Error, FixedToken, TokenSource};

#[cfg(feature = "blocking")]
pub mod blocking;

/// Which ticket a [`JsapiTicket`] pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TicketKind {
    /// The jsapi ticket, for `wx.config`.
    #[default]
    Jsapi,
    /// The `wx_card` api_ticket, for card signatures.
    Card,
}

/// The one builder of every source: options, then `build`. Start from [`AccessToken::builder`],
/// [`JsapiTicket::builder`] or [`JssdkConfig::builder`]; `T` is what `build` makes.
///
/// Every source takes the same server options (`url`, `urls`, `key`, `timeout`,
/// `connect_timeout`); the cached ones also take a `margin`, and a ticket its `kind`.
pub struct Builder<T> {
    urls: Vec<String>,
    margin: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    ticket: Option<TicketKind>,
    /// `Bearer <consumer key>`, marked sensitive so its `Debug` hides it.
    authorization: Option<reqwest::header::HeaderValue>,
    target: PhantomData<fn() -> T>,
}

/// Builds an [`AccessToken`].
pub type AccessTokenBuilder = Builder<AccessToken>;
/// Builds a [`JsapiTicket`].
pub type JsapiTicketBuilder = Builder<JsapiTicket>;
/// Builds a [`JssdkConfig`].
pub type JssdkConfigBuilder = Builder<JssdkConfig>;

impl<T> Clone for Builder<T> {
    fn clone(&self) -> Self {
        Self {
            urls: self.urls.clone(),
            margin: self.margin,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            ticket: self.ticket,
            authorization: self.authorization.clone(),
            target: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("urls", &self.urls)
            .field("margin", &self.margin)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ticket", &self.ticket)
            .field("authorization", &self.authorization)
            .finish()
    }
}

/// The sources that cache what they get, and so take a [`Builder::margin`].
pub trait Caching: sealed::Sealed {}
impl Caching for AccessToken {}
impl Caching for JsapiTicket {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::AccessToken {}
    impl Sealed for super::JsapiTicket {}
}

impl<T> Builder<T> {
    fn new(ticket: Option<TicketKind>) -> Self {
        Self {
            urls: Vec::new(),
            margin: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            ticket,
            authorization: None,
            target: PhantomData,
        }
    }

    /// The consumer key to present (`Authorization: Bearer <key>`), for servers that have
    /// consumer keys (`wetoken-cli key add`). A key that cannot be a header value is refused by
    /// `build`.
    pub fn key(mut self, key: impl AsRef<str>) -> Self {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.as_ref()))
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        // An invalid key is kept as an empty value and refused in `source`.
        self.authorization = Some(value.unwrap_or_else(|_| {
            let mut empty = reqwest::header::HeaderValue::from_static("");
            empty.set_sensitive(true);
            empty
        }));
        self
    }

    /// Adds a server's URL for the source's route (the credential's `get` route, or
    /// `/jssdk/config`); servers are tried in the order added.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Adds several servers' URLs.
    pub fn urls<I: IntoIterator<Item = S>, S: Into<String>>(mut self, urls: I) -> Self {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// How long one request to a server may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting to a server may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn servers(&self) -> Result<Servers, Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = &self.authorization {
            if value.is_empty() {
                return Err(Error::InvalidUrl {
                    url: self.urls.first().cloned().unwrap_or_default(),
                    reason: "the consumer key holds characters a header cannot".into(),
                });
            }
            headers.insert(reqwest::header::AUTHORIZATION, value.clone());
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| Error::Transport {
                url: self.urls.first().cloned().unwrap_or_default(),
                message: e.to_string(),
            })?;
        Ok(Servers {
            count: self.urls.len(),
            preferred: AtomicUsize::new(0),
            http,
        })
    }

    fn source(self) -> Result<Source, Error> {
        if self.urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "no server URL given".into(),
            });
        }
        let routes = self
            .urls
            .iter()
            .map(|u| Route::parse(u, self.ticket))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Source {
            routes,
            servers: self.servers()?,
            margin: self.margin,
            cached: Mutex::new(None),
            field: if self.ticket.is_some() {
                "ticket"
            } else {
                "access_token"
            },
        })
    }
}

impl<T: Caching> Builder<T> {
    /// How much life a cached value must have left to be handed out (default 60 s).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }
}

impl Builder<AccessToken> {
    /// The source; fails on a malformed URL or none at all.
    pub fn build(self) -> Result<AccessToken, Error> {
        self.source().map(AccessToken)
    }
}

impl Builder<JsapiTicket> {
    /// Which ticket: the jsapi ticket (default) or the `wx_card` ticket.
    pub fn kind(mut self, kind: TicketKind) -> Self {
        self.ticket = Some(kind);
        self
    }

    /// The source; fails on a malformed URL or none at all.
    pub fn build(self) -> Result<JsapiTicket, Error> {
        self.source().map(JsapiTicket)
    }
}

/// `url` parsed, if it is an http(s) URL with a host.
fn http_url(url: &str) -> Result<reqwest::Url, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            "the scheme must be http or https, with a host".into(),
        ));
    }
    Ok(parsed)
}

/// One server's `get` and `refresh` URLs for the credential.
#[derive(Debug)]
struct Route {
    get: reqwest::Url,
    refresh: reqwest::Url,
}

impl Route {
    /// The refresh route is the get route with its last segment `get` replaced by `refresh`,
    /// keeping the query (`type=wx_card`).
    fn parse(url: &str, ticket: Option<TicketKind>) -> Result<Route, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut get = http_url(url)?;
        if ticket == Some(TicketKind::Card) && !get.query_pairs().any(|(k, _)| k == "type") {
            get.query_pairs_mut().append_pair("type", "wx_card");
        }
        let path = get.path().to_owned();
        let Some(base) = path.strip_suffix("/get") else {
            return Err(invalid("expected the route's URL, ending in /get"));
        };
        let mut refresh = get.clone();
        refresh.set_path(&format!("{base}/refresh"));
        Ok(Route { get, refresh })
    }
}

struct Cached {
    value: String,
    fetched: Instant,
    expires_in: Duration,
    expires_at: SystemTime,
}

/// The implementation behind [`AccessToken`] and [`JsapiTicket`].
struct Source {
    routes: Vec<Route>,
    servers: Servers,
    margin: Duration,
    cached: Mutex<Option<Cached>>,
    /// The body field, and the refresh route's parameter: `access_token` or `ticket`.
    field: &'static str,
}

impl Source {
    async fn get(&self) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched.elapsed() + self.margin < c.expires_in
        {
            return Ok(c.value.clone());
        }
        let value = self.ask(|r| r.get.clone()).await?;
        let answer = value.value.clone();
        *cached = Some(value);
        Ok(answer)
    }

    async fn invalidate(&self, bad: &str) -> Result<(), Error> {
        let mut cached = self.cached.lock().await;
        // Someone already replaced it: nothing to report.
        if cached.as_ref().is_some_and(|c| c.value != bad) {
            return Ok(());
        }
        let field = self.field;
        let fresh = self
            .ask(|r| {
                let mut url = r.refresh.clone();
                url.query_pairs_mut().append_pair(field, bad);
                url
            })
            .await?;
        *cached = Some(fresh);
        Ok(())
    }

    async fn expires_at(&self) -> Option<SystemTime> {
        self.cached.lock().await.as_ref().map(|c| c.expires_at)
    }

    /// Asks the servers for the credential at the route `url_of` picks.
    async fn ask(&self, url_of: impl Fn(&Route) -> reqwest::Url) -> Result<Cached, Error> {
        self.servers
            .ask(
                |i| url_of(&self.routes[i]),
                |name, bytes| self.parse(name, bytes),
            )
            .await
    }

    fn parse(&self, name: &str, bytes: &[u8]) -> Result<Cached, Error> {
        let malformed = |message: String| Error::Malformed {
            url: name.to_owned(),
            message,
        };
        let body: CredentialBody = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not a credential answer: {e}")))?;
        let value = match self.field {
            "ticket" => body.ticket.clone(),
            _ => body.access_token.clone(),
        }
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed(format!("no {} in the answer", self.field)))?;
        let expires_in = Duration::from_secs(body.expires_in.max(0) as u64);
        Ok(Cached {
            value,
            fetched: Instant::now(),
            expires_in,
            expires_at: SystemTime::now() + expires_in,
        })
    }
}

/// The servers a source asks, in turn, with failover.
struct Servers {
    count: usize,
    /// The server that answered last; tried first.
    preferred: AtomicUsize,
    http: reqwest::Client,
}

impl Servers {
    /// Asks the servers in turn, starting with the one that answered last, until one answers;
    /// moves on only after a failure of the server itself (see [`Failed`]). `url_of` gives
    /// server `i`'s URL, and `parse` reads a successful answer (given the server's name for
    /// messages).
    async fn ask<T>(
        &self,
        url_of: impl Fn(usize) -> reqwest::Url,
        parse: impl Fn(&str, &[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.count {
            let index = (first + i) % self.count;
            match self.ask_one(url_of(index), &parse).await {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(Failed { error, next: true }) => last = Some(error),
                Err(Failed { error, .. }) => return Err(error),
            }
        }
        Err(last.unwrap_or(Error::InvalidUrl {
            url: String::new(),
            reason: "no server URL given".into(),
        }))
    }

    async fn ask_one<T>(
        &self,
        url: reqwest::Url,
        parse: impl Fn(&str, &[u8]) -> Result<T, Error>,
    ) -> Result<T, Failed> {
        // The query may hold a rejected token: name servers by host and path only.
        let name = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ) + url.path();
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::Timeout { url: name.clone() }
            } else {
                Error::Transport {
                    url: name.clone(),
                    message: e.without_url().to_string(),
                }
            }
        };
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| Failed::next(failed(e)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failed::next(failed(e)))?;
        let refused = |body: ErrorBody| Failed {
            next: code::try_another_server(body.errcode),
            error: Error::Refused {
                status: code::http_status(body.errcode),
                body,
            },
        };
        if status == 200 {
            // A server answering errors in the body (its default, for the Go SDK): the same
            // error as it would be with its status.
            if let Some(body) = error_in_body(&bytes) {
                return Err(refused(body));
            }
            return parse(&name, &bytes).map_err(Failed::last);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Failed {
                next: code::try_another_server(body.errcode),
                error: Error::Refused { status, body },
            }),
            // Not wetoken's answer: a proxy's, in front of a server that is down.
            Err(_) if status >= 500 => Err(Failed::next(Error::Refused {
                status,
                body: ErrorBody {
                    errcode: -1,
                    errmsg: format!("HTTP {status} without a wetoken error body"),
                },
            })),
            Err(_) => Err(Failed::last(Error::Malformed {
                url: name.clone(),
                message: format!("HTTP {status} without an error body"),
            })),
        }
    }
}

/// Why one server gave no answer, and whether the next server should be asked: after a
/// connection error, a timeout, a 5xx that is not wetoken's (a proxy's), or one of wetoken's
/// own failures (errcode 90500, 90503, 90504, 90505: `code::try_another_server`), whether it came
/// with its HTTP status or in a 200 body. Every other error is an answer: a 4xx, and a refusal
/// of WeChat's, which another replica on the same database would repeat.
struct Failed {
    error: Error,
    next: bool,
}

impl Failed {
    fn next(error: Error) -> Self {
        Self { error, next: true }
    }

    fn last(error: Error) -> Self {
        Self { error, next: false }
    }
}

/// The error a 200 answer carries, if its `errcode` is not 0.
fn error_in_body(bytes: &[u8]) -> Option<ErrorBody> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        errcode: i64,
        #[serde(default)]
        errmsg: String,
    }
    let head: Head = serde_json::from_slice(bytes).ok()?;
    (head.errcode != code::OK).then_some(ErrorBody {
        errcode: head.errcode,
        errmsg: head.errmsg,
    })
}

/// An app's access token, pulled from wetoken's `/{appid}/wechat/token/get` route.
pub struct AccessToken(Source);

impl AccessToken {
    /// A source for the token route at `url`, with default options. A malformed URL is refused
    /// here.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Self::builder().url(url).build()
    }

    /// Options, and several servers.
    pub fn builder() -> AccessTokenBuilder {
        Builder::new(None)
    }

    /// When the cached token expires, if one is cached.
    pub async fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at().await
    }
}

impl TokenSource for AccessToken {
    /// The token, from the cache while it has more than the margin left, else from a server.
    async fn token(&self) -> Result<String, Error> {
        self.0.get().await
    }

    /// Reports a token WeChat rejected and caches the server's answer. Reports of a token that
    /// was already replaced make no request.
    async fn invalidate(&self, bad: &str) -> Result<(), Error> {
        self.0.invalidate(bad).await
    }
}

/// An app's jsapi (or card) ticket, pulled from wetoken's `/{appid}/wechat/ticket/get` route.
pub struct JsapiTicket(Source);

impl JsapiTicket {
    /// A source for the ticket route at `url`, with default options.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Self::builder().url(url).build()
    }

    /// Options, the ticket kind, and several servers.
    pub fn builder() -> JsapiTicketBuilder {
        Builder::new(Some(TicketKind::Jsapi))
    }

    /// The ticket, from the cache while it has more than the margin left, else from a server.
    pub async fn ticket(&self) -> Result<String, Error> {
        self.0.get().await
    }

    /// Reports a ticket WeChat rejected and caches the server's answer.
    pub async fn invalidate(&self, bad: &str) -> Result<(), Error> {
        self.0.invalidate(bad).await
    }

    /// When the cached ticket expires, if one is cached.
    pub async fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at().await
    }
}

/// Signs `wx.config` for an app's pages, through wetoken's `/{appid}/wechat/jssdk/config`
/// route: the server signs with the app's current jsapi ticket, so the ticket never leaves it.
///
/// ```no_run
/// # async fn page() -> Result<(), wetoken_client::Error> {
/// let jssdk = wetoken_client::JssdkConfig::by_url(
///     "http://127.0.0.1:9999/wx9e02ddcc34513fd4/wechat/jssdk/config",
/// )?;
/// let config = jssdk.sign("https://shop.example/pay?order=7").await?;
/// println!("wx.config({{appId: {:?}, signature: {:?}, …}})", config.app_id, config.signature);
/// # Ok(()) }
/// ```
pub struct JssdkConfig {
    routes: Vec<reqwest::Url>,
    servers: Servers,
}

impl JssdkConfig {
    /// A signer for the route at `url` (ending in `/jssdk/config`), with default options.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Self::builder().url(url).build()
    }

    /// Options, and several servers.
    pub fn builder() -> JssdkConfigBuilder {
        Builder::new(None)
    }

    /// What `wx.config` needs for the page at `page_url` (its full http(s) URL; a `#` fragment
    /// is dropped by the server). Each call asks a server: a signature is not cached.
    pub async fn sign(&self, page_url: &str) -> Result<wetoken_wire::JssdkConfigBody, Error> {
        self.servers
            .ask(
                |i| {
                    let mut url = self.routes[i].clone();
                    url.query_pairs_mut().append_pair("url", page_url);
                    url
                },
                |name, bytes| {
                    serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
                        url: name.to_owned(),
                        message: format!("not a jssdk config answer: {e}"),
                    })
                },
            )
            .await
    }
}

impl Builder<JssdkConfig> {
    /// The signer; fails on a malformed URL or none at all.
    pub fn build(self) -> Result<JssdkConfig, Error> {
        if self.urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "no server URL given".into(),
            });
        }
        let routes = self
            .urls
            .iter()
            .map(|u| {
                let url = http_url(u)?;
                if !url.path().ends_with("/jssdk/config") {
                    return Err(Error::InvalidUrl {
                        url: u.clone(),
                        reason: "expected the route's URL, ending in /jssdk/config".into(),
                    });
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JssdkConfig {
            routes,
            servers: self.servers()?,
        })
    }
}

/// WeChat's codes for a rejected access token.
pub const TOKEN_REJECTED: [i64; 3] = [40001, 40014, 42001];

/// Why a WeChat API call through [`call`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] Error),
    /// WeChat could not be reached or its answer not read.
    #[error("WeChat call failed: {0}")]
    Transport(String),
    /// WeChat answered with a non-zero errcode (after the one retry, for a rejected token).
    #[error("WeChat refused: errcode {errcode}: {errmsg}")]
    WeChat {
        /// WeChat's code.
        errcode: i64,
        /// WeChat's message.
        errmsg: String,
    },
}

/// Runs a WeChat API call with a token from `source`: `request` gets the token and returns
/// WeChat's JSON answer. When WeChat answers 40001, 40014 or 42001 (HTTP 200), the token is
/// reported and the call made once more with a fresh one; any other non-zero `errcode` comes
/// back as [`CallError::WeChat`].
pub async fn call<S, F, Fut>(source: &S, request: F) -> Result<serde_json::Value, CallError>
where
    S: TokenSource,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<serde_json::Value, reqwest::Error>>,
{
    let mut retried = false;
    loop {
        let token = source.token().await?;
        let answer = request(token.clone())
            .await
            .map_err(|e| CallError::Transport(e.without_url().to_string()))?;
        let errcode = answer
            .get("errcode")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        if errcode == 0 {
            return Ok(answer);
        }
        if TOKEN_REJECTED.contains(&errcode) && !retried {
            retried = true;
            source.invalidate(&token).await?;
            continue;
        }
        return Err(CallError::WeChat {
            errcode,
            errmsg: answer
                .get("errmsg")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One builder: every source takes every server option. `JsapiTicketBuilder` once lacked
    /// `connect_timeout`, when each source had a builder of its own.
    #[test]
    fn every_source_takes_the_same_server_options() {
        fn options<T>(b: Builder<T>, route: &str) -> Builder<T> {
            b.url(format!("http://127.0.0.1:1/wx1/wechat/{route}"))
                .urls([format!("http://127.0.0.1:2/wx1/wechat/{route}")])
                .key("k")
                .timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_millis(300))
        }
        let token = options(AccessToken::builder(), "token/get").margin(Duration::ZERO);
        assert_eq!(token.connect_timeout, Duration::from_millis(300));
        token.build().unwrap();
        let ticket = options(JsapiTicket::builder(), "ticket/get")
            .kind(TicketKind::Card)
            .margin(Duration::ZERO);
        assert_eq!(ticket.connect_timeout, Duration::from_millis(300));
        ticket.build().unwrap();
        let jssdk = options(JssdkConfig::builder(), "jssdk/config");
        assert_eq!(jssdk.connect_timeout, Duration::from_millis(300));
        jssdk.build().unwrap();
    }

    #[test]
    fn malformed_urls_are_refused() {
        for bad in [
            "",
            "127.0.0.1:9999/x",
            "ftp://host/wx/wechat/token/get",
            "http://",
            "http://127.0.0.1:9999/wx1/wechat/token",
        ] {
            assert!(
                matches!(AccessToken::by_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?}"
            );
        }
        assert!(AccessToken::by_url("http://127.0.0.1:9999/wx1/wechat/token/get").is_ok());
        assert!(matches!(
            AccessToken::builder().build(),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn refresh_routes_follow_get_routes() {
        let r = Route::parse("http://h:1/wx1/wechat/token/get?wx1&secret=s", None).unwrap();
        assert_eq!(
            r.refresh.as_str(),
            "http://h:1/wx1/wechat/token/refresh?wx1&secret=s"
        );
        let r = Route::parse("http://h/wx/wx1/ticket/get", Some(TicketKind::Card)).unwrap();
        assert_eq!(r.get.as_str(), "http://h/wx/wx1/ticket/get?type=wx_card");
        assert_eq!(
            r.refresh.as_str(),
            "http://h/wx/wx1/ticket/refresh?type=wx_card"
        );
    }

    #[tokio::test]
    async fn call_retries_once_on_a_rejected_token() {
        let source = FixedToken("t".into());
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let answer = call(&source, |_token| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, reqwest::Error>(if n == 0 {
                    serde_json::json!({"errcode": 40001, "errmsg": "invalid credential"})
                } else {
                    serde_json::json!({"errcode": 0, "errmsg": "ok"})
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(answer["errcode"], 0);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let calls = std::sync::atomic::AtomicUsize::new(0);
        let err = call(&source, |_token| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, reqwest::Error>(serde_json::json!({"errcode": 42001, "errmsg": "expired"}))
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CallError::WeChat { errcode: 42001, .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one retry");

        let err = call(&source, |_token| async {
            Ok::<_, reqwest::Error>(serde_json::json!({"errcode": 45009, "errmsg": "quota"}))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CallError::WeChat { errcode: 45009, .. }));
    }
}
