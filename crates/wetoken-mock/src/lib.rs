//! A mock of WeChat's API server, for wetoken's tests and demos.
//!
//! [`MockWeChat`] is a real HTTP server on a local port with the semantics that
//! `shared/wechat-api.md` describes, taking the stricter reading where WeChat documents nothing:
//!
//! - `GET /cgi-bin/token` issues a new token on every call. The previous one keeps working for
//!   [`MockConfig::overlap`] (five minutes), and every older one stops at once.
//! - `POST /cgi-bin/stable_token` hands out the same token while it has more than the overlap
//!   left; `force_refresh` is honoured at most 20 times in any 24 hours and 30 s apart.
//! - `GET /cgi-bin/ticket/getticket` needs a valid official-account token (classic or stable).
//! - WeCom's `GET /cgi-bin/gettoken` hands out the same token per (corpid, secret) while it is
//!   valid, and `GET /cgi-bin/get_jsapi_ticket` needs such a token.
//! - `GET /cgi-bin/get_api_domain_ip` and `GET /cgi-bin/getcallbackip` only check a token (of any
//!   kind, WeCom's too): `{"ip_list":["127.0.0.1"]}` while it works. They spend no quota.
//! - `POST /cgi-bin/menu/create` checks a token (any kind) and a JSON body, and keeps the body's
//!   `button` as the app's menu; `GET /cgi-bin/menu/get` answers it as WeChat does,
//!   `{"menu":{"button":[…]}}` (no `errcode` on success), or `46003` `menu no exist` before one
//!   is created. Neither spends quota.
//! - Daily quotas: each app may make [`MockConfig::token_daily_limit`] successful
//!   `/cgi-bin/token` calls a mock day, [`MockConfig::stable_token_daily_limit`]
//!   `/cgi-bin/stable_token` calls, and each WeCom corp as many `gettoken` calls as
//!   `token_daily_limit`. Past it a call gets `45009` and is not counted. A *mock day* is 24 hours
//!   of the mock clock since the mock started (so [`MockWeChat::advance`] past a day boundary
//!   resets the counts), not China's midnight: a test never sees a reset it did not ask for.
//! - `POST /cgi-bin/openapi/quota/get` with `{"cgi_path":"/cgi-bin/token"}` (or
//!   `/cgi-bin/stable_token`) answers the token's app's count today:
//!   `{"errcode":0,"errmsg":"ok","quota":{"daily_limit":2000,"used":5,"remain":1995}}`. A body that
//!   is not JSON with a string `cgi_path` gets 47001, a path without its leading `/` (or with
//!   WeChat's host) 76003, a `/sns/` path 76022, any other path 76021 (the mock counts no other).
//! - `POST /cgi-bin/clear_quota` with `{"appid":"…"}` resets every count of the token's app for
//!   today, at most 10 times a mock month (30 mock days since the start), then `48006`. A missing
//!   appid gets 41002; another app's appid 40013 (WeChat documents no code for that case: the
//!   mock's choice).
//! - The quota calls need an official account's token (classic or stable): WeCom has neither.
//! - `POST /cgi-bin/message/template/send` checks a token, `touser` (40003 when empty) and
//!   `template_id` (40037 when empty), and keeps each message it accepts
//!   ([`MockWeChat::sent_templates`]).
//!
//! The open platform (third-party platforms, `shared/wechat-api.md`'s "Open platform"), for the
//! components registered with [`MockWeChat::add_component`]:
//! - Pushes: a push is `POST {push_url}?signature=…&timestamp=…&nonce=…&encrypt_type=aes&msg_signature=…`
//!   with `<xml><AppId>component_appid</AppId><Encrypt>…</Encrypt></xml>`, sealed by
//!   `wetoken-msgcrypt` (the code wetoken opens it with) under the component's message token and
//!   EncodingAESKey, for the component appid as receive id. `signature` is WeChat's plain one,
//!   the SHA-1 of the sorted token, timestamp and nonce. Each push waits 5 s at most, and
//!   reports the receiver's status and answer ([`Pushed`]); a push is never counted as a call.
//! - `component_verify_ticket` is pushed every [`MockConfig::verify_ticket_interval`] of mock
//!   time (ten minutes) to each component with a push URL, and on demand
//!   ([`MockWeChat::push_verify_ticket`]). Each push makes a new ticket the only one accepted.
//! - [`MockWeChat::authorize`] plays a customer authorizing: a new (or given) authorizer appid, a
//!   refresh token, and an `authorized` push with an authorization code valid one hour (WeChat
//!   documents no lifetime) and the pre-auth code. [`MockWeChat::update_authorization`] pushes
//!   `updateauthorized` with a new code; [`MockWeChat::unauthorize`] pushes `unauthorized` and
//!   ends the authorizer's tokens, refresh token and pending codes at once.
//! - `POST /cgi-bin/component/api_component_token` with
//!   `{"component_appid","component_appsecret","component_verify_ticket"}` answers
//!   `{"component_access_token":"…","expires_in":7200}` (no `errcode`), a new token each call,
//!   the previous one living [`MockConfig::overlap`] more, as `/cgi-bin/token`. It needs the
//!   newest ticket pushed: none, an older or a wrong one gets 61006, the newest twelve hours after
//!   its push 61005. 41002 and 41004 for a missing appid or secret, 40013 for an unknown
//!   component, 40125 for a wrong secret; held to [`MockConfig::token_daily_limit`] per component.
//! - The calls with `?component_access_token=` need a live component token (41001, 40001, 42001
//!   as for `access_token`) of the body's `component_appid` (41002 missing; another
//!   component's: 40013, the mock's choice):
//!   `api_create_preauthcode` → `{"pre_auth_code":"…","expires_in":1800}`;
//!   `api_query_auth` with `authorization_code` → `{"authorization_info":{"authorizer_appid",
//!   "authorizer_access_token","expires_in","authorizer_refresh_token","func_info":[…]}}`, once
//!   per code (an unknown, used, withdrawn or another component's code gets 61009, an expired one
//!   61010: WeChat's codes for them, which the spec does not list);
//!   `api_authorizer_token` with `authorizer_appid` and `authorizer_refresh_token` →
//!   `{"authorizer_access_token","expires_in","authorizer_refresh_token"}`, the same refresh
//!   token back (a new one each call with [`MockConfig::rotate_refresh_tokens`]); a wrong,
//!   withdrawn or superseded refresh token gets 61023. Its calls are held to
//!   `token_daily_limit` per authorizer;
//!   `api_get_authorizer_info` with `authorizer_appid` → `{"authorizer_info":{"nick_name",
//!   "service_type_info":{"id"},…},"authorization_info":{"authorizer_appid",
//!   "authorizer_refresh_token","func_info"}}`, with a `MiniProgramInfo` object in
//!   `authorizer_info` for a mini program alone (as WeChat tells them apart; its
//!   `service_type_info.id` is then 0, an official account's 2). An authorizer that is not (or no
//!   longer) authorized to this component gets 61003. Authorizers are official accounts unless
//!   authorized with [`MockWeChat::authorize_as`] as mini programs.
//! - An authorizer token is an official account's token: tickets, token checks, menus, quotas
//!   and template messages take it; a component token is good for the component calls only.
//!
//! Errors come as WeChat sends them: HTTP 200 with a non-zero `errcode` and an `errmsg` ending in a
//! request id (`rid: 5f5e1000-1a2b3c4d-5e6f7a8b`).
//!
//! Tests drive it in-process: count calls per [`Endpoint`], queue [`Fault`]s, invalidate tokens
//! and move its clock with [`MockWeChat::advance`]. The `wetoken-mock` binary serves the same
//! thing for demos, driven over HTTP by control routes that are never counted:
//!
//! | route | body | effect |
//! | --- | --- | --- |
//! | `GET /mock/calls` | | the counters, by [`Endpoint::name`] |
//! | `POST /mock/apps` | `{"appid":"…","secret":"…"}` | [`MockWeChat::add_app`] |
//! | `POST /mock/faults` | `{"endpoint":"token","fault":{"errcode":-1},"times":3}` | [`MockWeChat::inject`]; the fault is `{"errcode":n}`, `{"status":n}`, `{"delay_ms":n}` ([`Fault::Delay`]), `{"delay_answer_ms":n}` ([`Fault::DelayAnswer`]), `"drop"`, `{"redirect":"http://host:port"}`, `{"oversized_bytes":n}` or `{"answer":{…}}` |
//! | `POST /mock/reset` | | clears the counters and the queued faults |
//! | `POST /mock/invalidate` | `{"access_token":"…"}` | [`MockWeChat::invalidate_token`] |
//! | `POST /mock/advance` | `{"seconds":7200}` | [`MockWeChat::advance`] |
//! | `POST /mock/components` | `{"component_appid","component_appsecret","token","encoding_aes_key","push_url"}` (`push_url` optional) | [`MockWeChat::add_component`] |
//! | `POST /mock/push/component_verify_ticket` | `{"component_appid":"…"}` | [`MockWeChat::push_verify_ticket`]; answers the [`Pushed`] as JSON: `ticket`, `status`, `answer`, `error`, and the `url`, `query` and `body` sent (for [`MockWeChat::resend`], a replay) |
//! | `POST /mock/push/authorized` | `{"component_appid","authorizer_appid","pre_auth_code","mini_program"}` (all but the first optional) | [`MockWeChat::authorize`], or with `"mini_program":true` [`MockWeChat::authorize_as`] a mini program; answers the [`Pushed`], with `authorizer_appid` and `authorization_code` |
//! | `POST /mock/push/updateauthorized` | `{"component_appid","authorizer_appid"}` | [`MockWeChat::update_authorization`]; answers the [`Pushed`] |
//! | `POST /mock/push/unauthorized` | `{"component_appid","authorizer_appid"}` | [`MockWeChat::unauthorize`]; answers the [`Pushed`] |
//!
//! A control route's bad request gets HTTP 400 with `{"errcode":400,"errmsg":"…"}`: a push
//! route's for an unknown component, one without a push URL, or an authorizer it cannot act on.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wetoken_mock::{Endpoint, Fault, MockWeChat};
//!
//! let mock = MockWeChat::start().await?;
//! mock.add_app("wx0123456789abcdef", "secret");
//! mock.inject(Endpoint::Token, Fault::ErrCode(-1), 1);
//! // … point the code under test at mock.url() …
//! assert_eq!(mock.calls(Endpoint::Token), 0);
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod push;
mod server;
mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::world::{Authorizing, World};

/// How the mock behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// The lifetime of issued access tokens, in seconds (WeChat: 7200).
    pub token_expires_in: u64,
    /// The lifetime of issued tickets, in seconds (WeChat: 7200).
    pub ticket_expires_in: u64,
    /// How long a superseded token keeps working (WeChat: five minutes). Also the stable token's
    /// renewal window: a normal stable-token call within this much of its expiry gets a new one.
    pub overlap: Duration,
    /// Whether an unknown appid (or corpid) is registered, with the secret it came with, by its
    /// first token call instead of getting 40013.
    pub auto_register: bool,
    /// Successful `/cgi-bin/token` calls an app may make a mock day (WeChat: 2000 for an
    /// official account); WeCom's `gettoken` calls per corp are held to it too. Past it, 45009.
    pub token_daily_limit: u64,
    /// `/cgi-bin/stable_token` calls an app may make a mock day (WeChat: 500,000). Past it, 45009.
    pub stable_token_daily_limit: u64,
    /// How often each component with a push URL gets a new verify ticket pushed (WeChat: every
    /// ten minutes), on the mock clock: [`MockWeChat::advance`] past it pushes within a second.
    /// `None`: only on demand ([`MockWeChat::push_verify_ticket`]). The timer sleeps, without
    /// any tokio timer, until a component has a push URL.
    pub verify_ticket_interval: Option<Duration>,
    /// Whether `api_authorizer_token` hands out a new refresh token each time, the previous one
    /// getting 61023 from then on. WeChat returns the same long-lived one (the default, false);
    /// true is the stricter world in which storing every refresh token that comes back matters.
    pub rotate_refresh_tokens: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            token_expires_in: 7200,
            ticket_expires_in: 7200,
            overlap: Duration::from_secs(300),
            auto_register: false,
            token_daily_limit: 2000,
            stable_token_daily_limit: 500_000,
            verify_ticket_interval: Some(Duration::from_secs(600)),
            rotate_refresh_tokens: false,
        }
    }
}

/// The mock's WeChat endpoints, as counted and faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /cgi-bin/token`.
    Token,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `GET /cgi-bin/ticket/getticket`.
    Ticket,
    /// `GET /cgi-bin/get_api_domain_ip`: only checks the token.
    CheckToken,
    /// `POST /cgi-bin/menu/create`.
    MenuCreate,
    /// `GET /cgi-bin/menu/get`: the menu the app's last `menu/create` set.
    MenuGet,
    /// WeCom's `GET /cgi-bin/gettoken`.
    WorkToken,
    /// WeCom's `GET /cgi-bin/get_jsapi_ticket`.
    WorkTicket,
    /// `POST /cgi-bin/message/template/send`.
    TemplateSend,
    /// `GET /cgi-bin/getcallbackip`: only checks the token, like [`Endpoint::CheckToken`].
    CallbackIp,
    /// `POST /cgi-bin/openapi/quota/get`: an app's count of a limited call today.
    QuotaGet,
    /// `POST /cgi-bin/clear_quota`: resets an app's counts, 10 times a month.
    ClearQuota,
    /// `POST /cgi-bin/component/api_component_token`: a component token, with a verify ticket.
    ComponentToken,
    /// `POST /cgi-bin/component/api_create_preauthcode`.
    PreAuthCode,
    /// `POST /cgi-bin/component/api_query_auth`: an authorization code exchanged.
    QueryAuth,
    /// `POST /cgi-bin/component/api_authorizer_token`: an authorizer token, with its refresh
    /// token.
    AuthorizerToken,
    /// `POST /cgi-bin/component/api_get_authorizer_info`: an authorizer's name and kind.
    AuthorizerInfo,
}

impl Endpoint {
    /// Every endpoint, in declaration order.
    pub const ALL: [Endpoint; 17] = [
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::Ticket,
        Endpoint::CheckToken,
        Endpoint::MenuCreate,
        Endpoint::WorkToken,
        Endpoint::WorkTicket,
        Endpoint::TemplateSend,
        Endpoint::CallbackIp,
        Endpoint::QuotaGet,
        Endpoint::ClearQuota,
        Endpoint::MenuGet,
        Endpoint::ComponentToken,
        Endpoint::PreAuthCode,
        Endpoint::QueryAuth,
        Endpoint::AuthorizerToken,
        Endpoint::AuthorizerInfo,
    ];

    /// The name the `/mock/…` control routes use: `token`, `stable_token`, `ticket`,
    /// `check_token`, `menu_create`, `menu_get`, `work_token`, `work_ticket`, `template_send`,
    /// `callback_ip`, `quota_get`, `clear_quota`, `component_token`, `create_preauthcode`,
    /// `query_auth`, `authorizer_token` or `authorizer_info`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::Ticket => "ticket",
            Endpoint::CheckToken => "check_token",
            Endpoint::MenuCreate => "menu_create",
            Endpoint::MenuGet => "menu_get",
            Endpoint::WorkToken => "work_token",
            Endpoint::WorkTicket => "work_ticket",
            Endpoint::TemplateSend => "template_send",
            Endpoint::CallbackIp => "callback_ip",
            Endpoint::QuotaGet => "quota_get",
            Endpoint::ClearQuota => "clear_quota",
            Endpoint::ComponentToken => "component_token",
            Endpoint::PreAuthCode => "create_preauthcode",
            Endpoint::QueryAuth => "query_auth",
            Endpoint::AuthorizerToken => "authorizer_token",
            Endpoint::AuthorizerInfo => "authorizer_info",
        }
    }

    /// The endpoint with that control-route name.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The URL path WeChat serves it at.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Token => "/cgi-bin/token",
            Endpoint::StableToken => "/cgi-bin/stable_token",
            Endpoint::Ticket => "/cgi-bin/ticket/getticket",
            Endpoint::CheckToken => "/cgi-bin/get_api_domain_ip",
            Endpoint::MenuCreate => "/cgi-bin/menu/create",
            Endpoint::MenuGet => "/cgi-bin/menu/get",
            Endpoint::WorkToken => "/cgi-bin/gettoken",
            Endpoint::WorkTicket => "/cgi-bin/get_jsapi_ticket",
            Endpoint::TemplateSend => "/cgi-bin/message/template/send",
            Endpoint::CallbackIp => "/cgi-bin/getcallbackip",
            Endpoint::QuotaGet => "/cgi-bin/openapi/quota/get",
            Endpoint::ClearQuota => "/cgi-bin/clear_quota",
            Endpoint::ComponentToken => "/cgi-bin/component/api_component_token",
            Endpoint::PreAuthCode => "/cgi-bin/component/api_create_preauthcode",
            Endpoint::QueryAuth => "/cgi-bin/component/api_query_auth",
            Endpoint::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Endpoint::AuthorizerInfo => "/cgi-bin/component/api_get_authorizer_info",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the next call of an endpoint gets instead of its normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 200 with this `errcode` (`-1` is WeChat's transient "system error").
    ErrCode(i64),
    /// This HTTP status with a short text body. A number that is no HTTP status gives 500.
    HttpStatus(u16),
    /// The normal answer, this much later: the wait comes before the mock acts on the call, so
    /// nothing is issued (no token minted, no refresh token rotated) until it is over.
    Delay(Duration),
    /// The normal answer, made at once and sent this much later: WeChat has already issued the
    /// token (and, with [`MockConfig::rotate_refresh_tokens`], a new refresh token, the old one
    /// now refused) while the caller is still waiting for the answer. What a caller that dies
    /// meanwhile meets (a crash between WeChat's answer and the write).
    DelayAnswer(Duration),
    /// The connection is closed without any answer.
    Drop,
    /// HTTP 302 to this root, with the request's path and query appended (the secret
    /// included): a hostile or hijacked upstream. A client that follows it sends the secret there.
    Redirect(String),
    /// HTTP 200 with a token answer padded to this many bytes.
    Oversized(usize),
    /// HTTP 200 with this JSON as the whole answer: a malformed `errmsg`, a strange token.
    Answer(serde_json::Value),
}

/// A third-party platform (component) the mock knows: what WeChat's open platform holds for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockComponent {
    /// The `component_appid`, also the receive id its pushes are encrypted for.
    pub appid: String,
    /// The `component_appsecret`.
    pub secret: String,
    /// The message token pushes are signed with.
    pub token: String,
    /// The 43-character EncodingAESKey pushes are encrypted with.
    pub aes_key: String,
    /// The authorization-event URL pushes are POSTed to; `None`: no pushes, no timer.
    pub push_url: Option<String>,
}

/// A push the mock made, and what its receiver did with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    /// The component it was for.
    pub component_appid: String,
    /// `component_verify_ticket`, `authorized`, `updateauthorized` or `unauthorized`.
    pub info_type: String,
    /// The verify ticket pushed, now the only one `api_component_token` accepts.
    pub ticket: Option<String>,
    /// The authorizer the push is about.
    pub authorizer_appid: Option<String>,
    /// The authorization code pushed, for one `api_query_auth`.
    pub authorization_code: Option<String>,
    /// The pre-auth code the customer came with.
    pub pre_auth_code: Option<String>,
    /// The URL it was POSTed to.
    pub url: String,
    /// The query sent: `signature`, `timestamp`, `nonce`, `encrypt_type=aes`, `msg_signature`.
    /// With [`Pushed::body`], enough to send the same push again (a replay).
    pub query: Vec<(String, String)>,
    /// The body sent: `<xml><AppId>…</AppId><Encrypt>…</Encrypt></xml>`.
    pub body: String,
    /// The receiver's HTTP status; `None` when it gave none (see [`Pushed::error`]).
    pub status: Option<u16>,
    /// The receiver's answer (WeChat expects `success`), its first KiB.
    pub answer: Option<String>,
    /// Why the receiver answered nothing: refused, timed out (after 5 s, as WeChat).
    pub error: Option<String>,
}

impl Pushed {
    pub(crate) fn new(component_appid: &str, info_type: &str) -> Self {
        Self {
            component_appid: component_appid.to_owned(),
            info_type: info_type.to_owned(),
            url: String::new(),
            ticket: None,
            authorizer_appid: None,
            authorization_code: None,
            pre_auth_code: None,
            query: Vec::new(),
            body: String::new(),
            status: None,
            answer: None,
            error: None,
        }
    }

    /// The value of the query parameter `name` that was sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why the mock could not push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushError {
    /// No component has that appid.
    UnknownComponent,
    /// The component has no push URL.
    NoPushUrl,
    /// The authorizer is malformed, of another component, unknown (for an update or a
    /// withdrawal) or no longer authorized.
    BadAuthorizer,
    /// The pre-auth code is unknown, expired, used or another component's.
    BadPreAuthCode,
    /// The push could not be sealed.
    Seal(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::UnknownComponent => f.write_str("no component has that appid"),
            PushError::NoPushUrl => f.write_str("the component has no push URL"),
            PushError::BadAuthorizer => f.write_str(
                "the authorizer appid is malformed, another component's, unknown or no longer authorized",
            ),
            PushError::BadPreAuthCode => {
                f.write_str("the pre-auth code is unknown, expired, used or another component's")
            }
            PushError::Seal(why) => write!(f, "the push cannot be sealed: {why}"),
        }
    }
}

impl std::error::Error for PushError {}

type Shared = Arc<Mutex<World>>;

/// Locks the world; a panic elsewhere while it was held does not make the mock unusable.
fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running mock WeChat server. Dropping it stops the server too (without waiting for it).
pub struct MockWeChat {
    world: Shared,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockWeChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockWeChat")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockWeChat {
    /// Starts a mock with the default config on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<MockWeChat> {
        Self::start_with(MockConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a mock with `config` on `addr` (port 0 picks a free port).
    pub async fn start_with(config: MockConfig, addr: SocketAddr) -> std::io::Result<MockWeChat> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let timer = config.verify_ticket_interval.is_some();
        let world: Shared = Arc::new(Mutex::new(World::new(config, push::client()?)));
        let (stop, stopped) = watch::channel(false);
        if timer {
            tokio::spawn(push::timer(world.clone(), stopped.clone()));
        }
        let task = tokio::spawn(server::serve(listener, world.clone(), stopped));
        tracing::debug!(%addr, "mock WeChat listening");
        Ok(MockWeChat {
            world,
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers an app, or one more secret of it. An id keeps every secret it was given: WeCom's
    /// `gettoken` accepts any of them (one per WeCom app of the corp), while the official-account
    /// calls accept only the one added last.
    pub fn add_app(&self, appid: &str, secret: &str) {
        lock(&self.world).add_app(appid, secret);
    }

    /// How many requests reached `endpoint` since the start or the last reset, whatever they got:
    /// successes, errors and injected faults alike.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        lock(&self.world).calls[endpoint.index()]
    }

    /// Makes `token` the current access token of `appid` for `valid_for` more, as if issued
    /// before the mock started (by a Go wetoken, say), so that it is accepted; counts no call.
    pub fn grant_token(&self, appid: &str, token: &str, valid_for: Duration) {
        lock(&self.world).grant(appid, token, valid_for);
    }

    /// How many `/cgi-bin/token` calls of `appid` counted against its quota this mock day: the
    /// `used` that `/cgi-bin/openapi/quota/get` reports.
    pub fn token_fetches(&self, appid: &str) -> u64 {
        self.quota_used(appid, Endpoint::Token)
    }

    /// How many calls of a limited `endpoint` ([`Endpoint::Token`], [`Endpoint::StableToken`], or
    /// [`Endpoint::WorkToken`] with a corpid) counted against `owner`'s quota this mock day.
    /// Unlike [`MockWeChat::calls`], calls refused for any reason are not in it, and
    /// `clear_quota` resets it; [`MockWeChat::reset_calls`] does not.
    pub fn quota_used(&self, owner: &str, endpoint: Endpoint) -> u64 {
        lock(&self.world).quota_used(owner, endpoint)
    }

    /// How many `clear_quota` calls `appid` had honoured this mock month (10 are allowed).
    pub fn quota_clears(&self, appid: &str) -> u32 {
        lock(&self.world).quota_clears(appid)
    }

    /// The template messages accepted so far, as their JSON bodies, oldest first.
    pub fn sent_templates(&self) -> Vec<serde_json::Value> {
        lock(&self.world).sent.clone()
    }

    /// Sets every counter back to zero.
    pub fn reset_calls(&self) {
        lock(&self.world).calls = [0; Endpoint::ALL.len()];
    }

    /// The next `times` calls of `endpoint` get `fault`, once the faults queued before are used up.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        lock(&self.world).inject(endpoint, fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.world).clear_faults();
    }

    /// Invalidates `token` on WeChat's side (as a secret reset would): from now on it gets 40001.
    /// The stable-token and WeCom calls then hand out a new token instead of this one.
    pub fn invalidate_token(&self, token: &str) {
        lock(&self.world).invalidate(token);
    }

    /// The newest classic access token (`/cgi-bin/token`) issued for `appid`, valid or not.
    pub fn current_token(&self, appid: &str) -> Option<String> {
        lock(&self.world).current_token(appid)
    }

    /// The newest ticket of `kind` (`"jsapi"` or `"wx_card"`) issued for `appid`. A WeCom corp's
    /// jsapi ticket is `current_ticket(corpid, "jsapi")`.
    pub fn current_ticket(&self, appid: &str, kind: &str) -> Option<String> {
        lock(&self.world).current_ticket(appid, kind)
    }

    /// Registers a third-party platform, or replaces its settings (its tickets, tokens and
    /// authorizers stay). A token, key or appid that WXBizMsgCrypt refuses is refused. With a
    /// push URL, the timer pushes it a verify ticket every [`MockConfig::verify_ticket_interval`]
    /// from now.
    pub fn add_component(
        &self,
        component: MockComponent,
    ) -> Result<(), wetoken_msgcrypt::MsgCryptError> {
        lock(&self.world).add_component(component)
    }

    /// Pushes `component_appid` a new verify ticket now, which becomes the only one
    /// `api_component_token` accepts (whatever the receiver answers).
    pub async fn push_verify_ticket(&self, component_appid: &str) -> Result<Pushed, PushError> {
        let prepared = lock(&self.world).push_ticket(component_appid);
        self.deliver(prepared).await
    }

    /// A customer authorizes `component_appid`: the authorizer (`authorizer_appid`, or a new
    /// random `wx…` appid), an official account, gets a refresh token, and an `authorized` push
    /// carries a new authorization code for one `api_query_auth`. `pre_auth_code`, when given,
    /// must be one `api_create_preauthcode` issued to this component; it is used up.
    pub async fn authorize(
        &self,
        component_appid: &str,
        authorizer_appid: Option<&str>,
        pre_auth_code: Option<&str>,
    ) -> Result<Pushed, PushError> {
        self.authorize_as(component_appid, authorizer_appid, pre_auth_code, false)
            .await
    }

    /// [`MockWeChat::authorize`], by a mini program when `mini_program` (which
    /// `api_get_authorizer_info` then tells), by an official account otherwise.
    pub async fn authorize_as(
        &self,
        component_appid: &str,
        authorizer_appid: Option<&str>,
        pre_auth_code: Option<&str>,
        mini_program: bool,
    ) -> Result<Pushed, PushError> {
        let prepared = lock(&self.world).authorize(
            component_appid,
            authorizer_appid,
            pre_auth_code,
            Authorizing::New { mini_program },
        );
        self.deliver(prepared).await
    }

    /// A customer changes an authorization: an `updateauthorized` push with a new code; the
    /// refresh token stays.
    pub async fn update_authorization(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<Pushed, PushError> {
        let prepared = lock(&self.world).authorize(
            component_appid,
            Some(authorizer_appid),
            None,
            Authorizing::Update,
        );
        self.deliver(prepared).await
    }

    /// A customer withdraws an authorization: its tokens and refresh token stop at once (40001
    /// and 61023), and an `unauthorized` push says so.
    pub async fn unauthorize(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<Pushed, PushError> {
        let prepared = lock(&self.world).unauthorize(component_appid, authorizer_appid);
        self.deliver(prepared).await
    }

    /// Sends `pushed` again, byte for byte, to the URL it went to: a replayed push, which a
    /// receiver must refuse. What the receiver answered is in the result; nothing else changes
    /// (no new ticket or code).
    pub async fn resend(&self, pushed: &Pushed) -> Pushed {
        let again = Pushed {
            status: None,
            answer: None,
            error: None,
            ..pushed.clone()
        };
        let client = lock(&self.world).client.clone();
        push::deliver(&client, again).await
    }

    async fn deliver(
        &self,
        prepared: Result<push::Prepared, PushError>,
    ) -> Result<Pushed, PushError> {
        let client = lock(&self.world).client.clone();
        Ok(push::deliver(&client, prepared?).await)
    }

    /// The newest verify ticket pushed to `component_appid`.
    pub fn current_verify_ticket(&self, component_appid: &str) -> Option<String> {
        lock(&self.world).verify_ticket(component_appid)
    }

    /// The newest component access token issued to `component_appid`, valid or not.
    pub fn current_component_token(&self, component_appid: &str) -> Option<String> {
        lock(&self.world).component_token(component_appid)
    }

    /// The newest authorizer access token issued for `authorizer_appid`, while it is authorized.
    pub fn current_authorizer_token(&self, authorizer_appid: &str) -> Option<String> {
        lock(&self.world).authorizer_token(authorizer_appid)
    }

    /// The refresh token `api_authorizer_token` accepts for `authorizer_appid`, while it is
    /// authorized.
    pub fn authorizer_refresh_token(&self, authorizer_appid: &str) -> Option<String> {
        lock(&self.world).refresh_token(authorizer_appid)
    }

    /// Moves the mock's clock forward: expiry, overlaps and force limits are judged on real time
    /// plus every advance so far.
    pub fn advance(&self, by: Duration) {
        lock(&self.world).advance(by);
    }

    /// Stops the server: no new connections, requests in flight are answered (for at most
    /// 2 s), then every connection is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockWeChat {
    fn drop(&mut self) {
        // The server task sees this and shuts down on its own.
        let _ = self.stop.send(true);
    }
}
