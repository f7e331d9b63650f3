//! wetoken's HTTP server.
//!
//! It serves the token engine of `wetoken-core` over hyper 1.x, on the routes of the Go wetoken:
//! `/{appid}/wechat/token/get`, `/{appid}/wechat/ticket/get`, their `refresh` twins, the
//! `/wx/{appid}/…` aliases, `/wechat/app/*` to manage apps, and `/health`.
//!
//! Run it, or test it, by building a [`Server`] and handing [`Server::serve`] a bound listener
//! and a shutdown future. To put wetoken inside a service of your own instead (its routes in
//! your router, the scheduler on your runtime, tokens in process), see [`Embedded`] and
//! `docs/embedding.md`; the server is built on it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wetoken_server::{Server, Settings};
//! let settings = Settings::default();
//! let server = Server::new(&settings).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod conn;
mod embed;
mod http;
mod metrics;
mod parse_errors;
mod status;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use wetoken_core::{Clock, Engine, Installed, Store, SystemClock, Takeover};

pub use embed::{Apps, Embedded, EmbeddedToken, PeerAddr, ResponseFuture, Routes, WetokenService};
pub use http::RequestBody;
/// The engine's crate, for the types [`Embedded`] hands out (`Credential`, `Kind`, `Error`).
pub use wetoken_core;
pub use wetoken_settings::{
    CredentialErrors, ENV_PREFIX, HttpSettings, MetricsSettings, PerApp, Settings,
    ignored_service_links, redact_url,
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}")]
    Database {
        /// The database URL, without its password.
        url: String,
        /// What failed.
        source: wetoken_core::Error,
    },
    /// The settings do not make sense.
    #[error("settings: {0}")]
    Settings(String),
    /// The stored secrets cannot be read with the configured master keys.
    #[error("stored secrets: {0}")]
    Secrets(String),
    /// The registry, or its database node, could not be read.
    #[error(transparent)]
    Registry(#[from] wetoken_registry::RegistryError),
}

/// Creates wetoken's tables, or brings them up to date, in the database that the registry at
/// `registry` (`fs://<dir>` or `zk://…`) names for `platform` at `/<platform>/var/db/<db_name>`:
/// the Go wetoken's `wetoken zk://… mall`, and `wetoken-cli install` from code. A database the
/// Go wetoken created is taken over as `takeover` says ([`Takeover::default`]: refuse while a Go
/// server writes to it, read its dates in the database's zone). Running it again changes
/// nothing.
///
/// ```no_run
/// # async fn setup() -> Result<(), wetoken_server::StartError> {
/// let installed = wetoken_server::install("zk://127.0.0.1:2181", "mall", "db", &Default::default()).await?;
/// print!("{installed}");
/// # Ok(()) }
/// ```
pub async fn install(
    registry: &str,
    platform: &str,
    db_name: &str,
    takeover: &Takeover,
) -> Result<Installed, StartError> {
    let node = wetoken_registry::Registry::open(registry)
        .await?
        .database(platform, db_name)
        .await?;
    let options =
        wetoken_core::DatabaseOptions::new(&node.url).with_pool(node.max_open, node.lifetime_secs);
    let db_error = |source| StartError::Database {
        url: redact_url(&node.url),
        source,
    };
    let store = Store::connect(&options).await.map_err(db_error)?;
    store.install(takeover).await.map_err(db_error)
}

/// A server ready to serve: its database is open and migrated. An [`Embedded`] engine that
/// mounts every route on a listener of its own and runs the scheduler for every app.
pub struct Server {
    embedded: Embedded,
}

impl Server {
    /// Opens the database (applying migrations when `auto_migrate` is set) and builds the engine,
    /// reading time from the system clock.
    pub async fn new(settings: &Settings) -> Result<Self, StartError> {
        Self::with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As [`Server::new`], reading time from `clock`.
    pub async fn with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let embedded = Embedded::with_clock(settings, clock).await?;
        Ok(Self { embedded })
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        self.embedded.engine()
    }

    /// Serves on `listener`, and runs the refresh scheduler, until `shutdown` resolves.
    ///
    /// Then `/ready` answers 503 and, for `http.drain_secs`, every route is still served, with
    /// `Connection: close`, so that keep-alive clients reconnect elsewhere. Then it stops
    /// accepting, waits up to `http.shutdown_timeout_secs` for in-flight requests, lets
    /// scheduled refreshes under way finish, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let http = self.embedded.state().http.clone();
        let target = self.mount();
        Listening::spawn(listener, &http, Some(target.clone()))?
            .run(self.embedded, target, shutdown)
            .await
    }

    /// Every route, for every app: the service an embedding host mounts, on a listener.
    fn mount(&self) -> Target {
        let service = self.embedded.service(Routes::all());
        Target {
            state: self.embedded.state().clone(),
            mount: service.mount,
        }
    }
}

/// A bound listener that answers from the start: `/live` with 200 and every other route with
/// 503 (errcode 90505, starting) until [`Listening::serve`] is handed the [`Server`], which may
/// take minutes to build (migrating a large database). So the port is taken, and liveness
/// probes answered, before the slow work begins.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use wetoken_server::{Listening, Server, Settings};
/// let settings = Settings::default();
/// let listener = tokio::net::TcpListener::bind(settings.listen).await?;
/// let listening = Listening::start(listener, &settings.http)?;
/// let server = Server::new(&settings).await?;
/// listening.serve(server, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Listening {
    target: Arc<OnceLock<Target>>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<Drain>,
    http: HttpSettings,
}

/// What a request is served by once the server is built.
#[derive(Clone)]
struct Target {
    state: Arc<http::State>,
    mount: Arc<http::Mount>,
}

impl Listening {
    /// Starts accepting on `listener`, on the current tokio runtime.
    pub fn start(listener: TcpListener, settings: &HttpSettings) -> std::io::Result<Self> {
        Self::spawn(listener, settings, None)
    }

    fn spawn(
        listener: TcpListener,
        settings: &HttpSettings,
        target: Option<Target>,
    ) -> std::io::Result<Self> {
        settings
            .check_connections()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        info!(addr = %listener.local_addr()?, "listening");
        let target = Arc::new(target.map_or_else(OnceLock::new, OnceLock::from));
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            target.clone(),
            settings.clone(),
            stop_rx,
        ));
        Ok(Self {
            target,
            stop,
            accept,
            http: settings.clone(),
        })
    }

    /// Serves `server`'s routes and runs its scheduler until `shutdown` resolves; then drains
    /// and stops as [`Server::serve`] says.
    pub async fn serve(
        self,
        server: Server,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let target = server.mount();
        let _ = self.target.set(target.clone());
        self.run(server.embedded, target, shutdown).await
    }

    async fn run(
        self,
        embedded: Embedded,
        target: Target,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let state = target.state;
        embedded.start_cron(Apps::all());
        info!("serving");
        shutdown.await;
        state.draining.store(true, Ordering::Release);
        let drain = Duration::from_secs(self.http.drain_secs);
        if !drain.is_zero() {
            info!(
                drain_secs = self.http.drain_secs,
                "draining: /ready answers 503; serving on, with Connection: close"
            );
            tokio::time::sleep(drain).await;
        }
        // The scheduler finishes its refreshes while requests drain.
        let stopped = self
            .stop_accepting("shutting down: no longer accepting", || {
                embedded.signal_stop()
            })
            .await;
        embedded.shutdown().await;
        stopped
    }

    /// Stops at once, before a server was handed over: for a start-up that failed or was
    /// interrupted.
    pub async fn close(self) {
        let _ = self
            .stop_accepting("start-up did not finish: no longer accepting", || ())
            .await;
    }

    /// Stops accepting, closes idle connections, and waits up to `shutdown_timeout_secs` for
    /// the requests in flight.
    async fn stop_accepting(self, why: &str, then: impl FnOnce()) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        // Each connection's task sees the stop too: it closes its connection once idle.
        let drain = self.accept.await.map_err(std::io::Error::other)?;
        info!("{why}");
        then();
        let limit = Duration::from_secs(self.http.shutdown_timeout_secs);
        if tokio::time::timeout(limit, drain.finished()).await.is_err() {
            warn!("in-flight requests did not finish in time; closing them");
        }
        Ok(())
    }
}

/// Accepts connections until `stop`, serving each with `target` once it is set (until then,
/// [`http::starting`]); then closes the listener and hands back what the connections' tasks
/// hold, which is dropped as the last of them ends.
async fn accept_loop(
    listener: TcpListener,
    target: Arc<OnceLock<Target>>,
    settings: HttpSettings,
    stop: watch::Receiver<bool>,
) -> Drain {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_read_timeout_secs));
    // A peer that vanished without closing is found by pings, not kept forever.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let (drain, drained) = mpsc::channel::<()>(1);
    let connections = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let per_address = conn::AddressSlots::new(settings.max_connections_per_address);
    let mut refusals = conn::RefusalLog::new();
    let limits = Arc::new(settings);
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let peer = peer.ip().to_canonical();
                // Over a limit: close it rather than queue it.
                let Some(address_slot) = per_address.take(peer) else {
                    refusals.refused(conn::Refusal::PerAddress, peer);
                    continue;
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    refusals.refused(conn::Refusal::Total, peer);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let held = (permit, address_slot, drain.clone());
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    target.clone(),
                    builder.clone(),
                    limits.clone(),
                    stop.clone(),
                    held,
                ));
            }
            () = async { let _ = stopping.wait_for(|stopped| *stopped).await; } => break,
        }
    }
    drop(listener);
    Drain(drained)
}

/// Resolves once every connection's task has ended.
struct Drain(mpsc::Receiver<()>);

impl Drain {
    async fn finished(mut self) {
        // No task sends: `None` comes when the last sender, held by the last task, is dropped.
        let _ = self.0.recv().await;
    }
}

/// Serves one connection until it ends, the server stops, or it has been idle (no request in
/// progress) for `idle_timeout_secs`. `held` (its slots, and its share of [`Drain`]) is given
/// back when it ends.
async fn serve_connection<Held: Send + 'static>(
    stream: tokio::net::TcpStream,
    peer: std::net::IpAddr,
    target: Arc<OnceLock<Target>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: Arc<HttpSettings>,
    mut stop: watch::Receiver<bool>,
    held: Held,
) {
    let header_read = Duration::from_secs(settings.header_read_timeout_secs);
    let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
    // hyper-util reads a connection's first bytes (HTTP/1 or HTTP/2?) with no deadline for as
    // long as they could begin the HTTP/2 preface, and hyper's header timer starts only once
    // HTTP/1 is chosen: a peer that sends nothing, or `P`, would hold its slot for good, and
    // `max_connections` of them would lock every caller out. So the first request must begin
    // within the header timeout, and a stopping server does not wait for one.
    let started = Arc::new(AtomicBool::new(false));
    let first = Arc::new(tokio::sync::Notify::new());
    let streams = conn::Streams::new();
    let service = {
        let (started, first, streams) = (started.clone(), first.clone(), streams.clone());
        service_fn(move |request| {
            if !started.load(Ordering::Relaxed) && !started.swap(true, Ordering::Relaxed) {
                first.notify_one();
            }
            let open = streams.begin();
            let answered = answer(target.get().cloned(), peer, request);
            async move {
                let response = answered.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| conn::Tracked::new(body, open)),
                )
            }
        })
    };
    let connection = builder
        .serve_connection(
            TokioIo::new(parse_errors::JsonParseErrors::new(stream)),
            service,
        )
        .into_owned();
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = &mut connection => Some(ended),
        () = first.notified() => None,
        () = tokio::time::sleep(header_read) => None,
        _ = stop.wait_for(|stopped| *stopped) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None if started.load(Ordering::Relaxed) => {
            // hyper's HTTP/2 server keeps a connection for as long as the peer answers its
            // pings, and each request's HTTP/1 header timer covers the wait before it; so
            // idleness is judged here, from the requests in progress, for both. A connection
            // told to close (GOAWAY, or `Connection: close` once idle) has another
            // `idle_timeout` to do so, in case its peer never reads the GOAWAY.
            let check = tokio::time::sleep(idle_timeout);
            tokio::pin!(check);
            let (mut idle_closing, mut stopping) = (false, false);
            loop {
                tokio::select! {
                    ended = &mut connection => break ended,
                    // The shutdown timeout bounds the wait that follows.
                    _ = stop.wait_for(|stopped| *stopped), if !stopping => {
                        stopping = true;
                        if !idle_closing {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    () = &mut check, if !stopping => {
                        if idle_closing {
                            tracing::debug!(%peer, "idle connection did not close; dropped");
                            break Ok(());
                        }
                        match streams.idle(idle_timeout) {
                            conn::Idle::Expired => {
                                tracing::debug!(%peer, "connection idle; closing");
                                idle_closing = true;
                                connection.as_mut().graceful_shutdown();
                                check.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                            }
                            conn::Idle::CheckAt(at) => check.as_mut().reset(at),
                        }
                    }
                }
            }
        }
        None => {
            tracing::debug!(%peer, "no request began in time; closed");
            return;
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(held);
}

/// One request: to the server once it is built, else the start-up answer. While the server
/// drains, HTTP/1 answers carry `Connection: close`, so a keep-alive client takes its next
/// request elsewhere instead of meeting a closed connection.
async fn answer(
    target: Option<Target>,
    peer: std::net::IpAddr,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let Some(Target { state, mount }) = target else {
        return Ok(http::starting(request.uri().path()));
    };
    let http1 = request.version() < ::http::Version::HTTP_2;
    let draining = state.draining.load(Ordering::Acquire);
    let mut response = http::handle(state, mount, peer, request).await?;
    if http1 && draining {
        response.headers_mut().insert(
            ::http::header::CONNECTION,
            ::http::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

/// This host's name (the kernel's, else `$HOSTNAME`, else `localhost`), read once: what a server
/// listening on every address announces in a registry, and so a name local callers may use.
pub fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// Entry points for the fuzz targets in `fuzz/`, which property tests also run. Not an API.
#[doc(hidden)]
pub mod fuzz {
    /// Routes and parses `data` as a request would be; see `fuzz/fuzz_targets/route.rs`.
    pub fn request(data: &[u8]) {
        crate::http::fuzz_request(data);
    }
}
