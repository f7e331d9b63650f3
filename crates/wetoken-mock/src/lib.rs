//! A mock of WeChat's API server, for wetoken's tests and demos.
//!
//! It is a real HTTP server with WeChat's semantics as `shared/wechat-api.md` describes them:
//! every `/cgi-bin/token` call issues a new token and cuts the previous one's life to five
//! minutes; stable tokens are reused while valid and can be forced at most 20 times a day, 30 s
//! apart; tickets need a valid token; WeCom hands out the same token while it is valid.
//! Errors come as WeChat sends them: HTTP 200 with `errcode` and an `errmsg` ending in a request id.
//!
//! Tests drive it in-process through [`MockWeChat`]: count calls per [`Endpoint`], queue
//! [`Fault`]s, invalidate tokens, move its clock. The `wetoken-mock` binary serves the same for
//! demos, driven over HTTP under `/mock/…` (see the README).
#![deny(missing_docs)]

mod server;
mod wechat;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::wechat::World;

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The lifetime of issued tokens, in seconds (WeChat: 7200).
    pub token_expires_in: u64,
    /// The lifetime of issued tickets, in seconds (WeChat: 7200).
    pub ticket_expires_in: u64,
    /// How long a superseded token keeps working (WeChat: five minutes).
    pub overlap: Duration,
    /// Whether an unknown appid is registered by its first token call instead of getting 40013.
    pub auto_register: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            token_expires_in: 7200,
            ticket_expires_in: 7200,
            overlap: Duration::from_secs(300),
            auto_register: false,
        }
    }
}

/// The mock's API endpoints, as counted and faulted.
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
    /// WeCom's `GET /cgi-bin/gettoken`.
    WorkToken,
    /// WeCom's `GET /cgi-bin/get_jsapi_ticket`.
    WorkTicket,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::Ticket,
        Endpoint::CheckToken,
        Endpoint::MenuCreate,
        Endpoint::WorkToken,
        Endpoint::WorkTicket,
    ];

    /// The name used by the `/mock/…` control routes.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::Ticket => "ticket",
            Endpoint::CheckToken => "check_token",
            Endpoint::MenuCreate => "menu_create",
            Endpoint::WorkToken => "work_token",
            Endpoint::WorkTicket => "work_ticket",
        }
    }

    /// The endpoint with that control-route name.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A fault the next call of an endpoint gets instead of its normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 200 with this `errcode`.
    ErrCode(i64),
    /// This HTTP status with a short text body.
    HttpStatus(u16),
    /// The normal answer, this much later.
    Delay(Duration),
    /// The connection is closed without an answer.
    Drop,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock WeChat server. Dropping it stops the server.
pub struct MockWeChat {
    world: Shared,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockWeChat {
    /// Starts a mock with the default config on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<MockWeChat> {
        Self::start_with(MockConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a mock with `config` on `addr`.
    pub async fn start_with(config: MockConfig, addr: SocketAddr) -> std::io::Result<MockWeChat> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let world: Shared = Arc::new(Mutex::new(World::new(config)));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server::serve(listener, world.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(MockWeChat {
            world,
            addr,
            stop: Some(stop),
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

    /// Registers an app (or a WeCom corp's app secret). For official accounts the secret added
    /// last is the valid one; a WeCom corp accepts all its secrets.
    pub fn add_app(&self, appid: &str, secret: &str) {
        lock(&self.world).add_app(appid, secret);
    }

    /// How many requests reached `endpoint`, faults included.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        lock(&self.world).calls.get(&endpoint).copied().unwrap_or(0)
    }

    /// Sets every counter to zero.
    pub fn reset_calls(&self) {
        lock(&self.world).calls.clear();
    }

    /// The next `times` calls of `endpoint` get `fault`, after any faults queued before.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        let mut world = lock(&self.world);
        let queue = world.faults.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(fault, times as usize));
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.world).faults.clear();
    }

    /// Makes WeChat reject `token` with 40001 from now on.
    pub fn invalidate_token(&self, token: &str) {
        lock(&self.world).invalidate(token);
    }

    /// The newest classic access token issued for `appid`.
    pub fn current_token(&self, appid: &str) -> Option<String> {
        lock(&self.world).current_token(appid)
    }

    /// The newest ticket of `kind` (`"jsapi"` or `"wx_card"`) issued for `appid`.
    pub fn current_ticket(&self, appid: &str, kind: &str) -> Option<String> {
        lock(&self.world).current_ticket(appid, kind)
    }

    /// Moves the mock's clock forward.
    pub fn advance(&self, by: Duration) {
        lock(&self.world).advance(by);
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockWeChat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
