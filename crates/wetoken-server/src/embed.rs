//! wetoken inside another Rust service, as the Go wetoken's `Bind` and `Cron` did: the engine
//! built from the server's [`Settings`], its routes as a service to mount in the host's router,
//! the scheduler alone, and credentials read in process. `docs/embedding.md` says when to
//! embed and what it gives up.
//!
//! ```no_run
//! # async fn host() -> Result<(), Box<dyn std::error::Error>> {
//! use wetoken_server::{Apps, Embedded, Routes, Settings};
//!
//! let settings = Settings::load(std::path::Path::new("wetoken.toml"), figment::Figment::new())?;
//! let wetoken = Embedded::from_settings(&settings).await?;
//! // Bind: the credential routes of two apps, to nest under the host's router.
//! let apps = Apps::only(["wx9e02ddcc34513fd4", "wx1234567890abcdef"])?;
//! let routes = wetoken.service(Routes::credentials().apps(apps.clone()));
//! // Cron: their renewals, on the host's runtime.
//! wetoken.start_cron(apps);
//! // In process.
//! let token = wetoken.token("wx9e02ddcc34513fd4").await?;
//! # drop((routes, token));
//! wetoken.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The server itself is built on the same pieces: [`crate::Server`] is an [`Embedded`] that mounts
//! every route on a listener of its own and runs the scheduler for every app.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{Request, Response};
use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wetoken_core::{AppId, Clock, Credential, Engine, Kind, Store, SystemClock, WeChat};
use wetoken_wire::source::{Error as SourceError, TokenSource};

use crate::http::{self, Mount, RequestBody};
use crate::{Settings, StartError, redact_url};

/// wetoken's engine inside another service: the database pool, the WeChat client, the access
/// policy and the background tasks, built from the same [`Settings`] as the server (file,
/// environment, registry nodes: [`Settings::load`], [`Settings::load_with_registry`]).
///
/// Cheap to clone; clones share everything. Keep one alive for as long as its routes or cron
/// should run: once every clone is dropped its background tasks stop (without waiting), so call
/// [`Embedded::shutdown`] to stop them and wait.
#[derive(Clone)]
pub struct Embedded {
    state: Arc<http::State>,
    tasks: Arc<Tasks>,
}

/// The background tasks an [`Embedded`] has started, and how to stop them.
struct Tasks {
    stop: watch::Sender<bool>,
    running: Mutex<Vec<JoinHandle<()>>>,
    key_reload: Duration,
    keys_reloading: AtomicBool,
    cron: AtomicBool,
}

impl Embedded {
    /// Opens the database, applies pending migrations when `settings.auto_migrate` is set (a
    /// host that manages its own schema turns it off and runs [`crate::install`] or
    /// `wetoken-cli install` itself), checks the stored secrets against the master keys, and
    /// builds the engine, reading time from the system clock.
    ///
    /// Must be called within a tokio runtime: the engine's change-feed reader starts on it.
    /// Nothing else runs until asked for: [`Embedded::service`] starts the consumer keys' reload
    /// and [`Embedded::start_cron`] the scheduler.
    pub async fn from_settings(settings: &Settings) -> Result<Self, StartError> {
        Self::with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As [`Embedded::from_settings`], reading time from `clock`.
    pub async fn with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let db_error = |source| StartError::Database {
            url: redact_url(&settings.database_url),
            source,
        };
        let mut options = settings.database();
        options.keyring = settings.keyring().map_err(StartError::Settings)?;
        let store = Store::connect(&options).await.map_err(db_error)?;
        if settings.auto_migrate {
            let takeover = settings.takeover().map_err(StartError::Settings)?;
            let installed = store.install(&takeover).await.map_err(db_error)?;
            if !installed.applied.is_empty() {
                info!(applied = ?installed.applied, "applied migrations");
            }
            if let Some((adopted, zone)) = installed.adopted.filter(|(n, _)| *n > 0) {
                info!(adopted, %zone, "adopted the Go wetoken's stored tokens and tickets");
            }
        }
        let (found, encrypted) = store.prepare_secrets().await.map_err(|e| match e {
            wetoken_core::Error::Secret(m) => StartError::Secrets(m),
            e => db_error(e),
        })?;
        match store.keyring() {
            None => warn!(
                plain = found.plain,
                "no master key is configured: app secrets are stored in plain text \
                 (set master_key or WETOKEN_MASTER_KEY)"
            ),
            Some(keyring) => info!(
                key_id = keyring.current_id(),
                previous_key_id = keyring.previous_id(),
                encrypted_now = encrypted,
                "app secrets are encrypted at rest"
            ),
        }
        let wechat =
            WeChat::new(&settings.wechat()).map_err(|e| StartError::Settings(e.to_string()))?;
        let engine = Engine::new(store, wechat, clock, settings.refresh.clone())
            .map_err(|e| StartError::Settings(e.to_string()))?;
        let admin = http::AdminPolicy {
            key: settings.admin_key().map_err(StartError::Settings)?,
            networks: settings.admin_networks().map_err(StartError::Settings)?,
            metrics_key: settings.metrics_key().map_err(StartError::Settings)?,
            metrics_networks: settings.metrics_networks().map_err(StartError::Settings)?,
        };
        let keys = engine.key_table().await.map_err(db_error)?;
        if keys.is_required() {
            // The Go SDK presents its app's secret instead of a key.
            engine.reload_app_secrets().await.map_err(db_error)?;
        }
        let limit = settings
            .http
            .refresh_limit()
            .map_err(StartError::Settings)?;
        let readers = http::ReaderPolicy {
            limits: http::RefreshLimiter::new(limit),
            networks: settings.reader_networks().map_err(StartError::Settings)?,
            keys: std::sync::RwLock::new(Arc::new(keys)),
        };
        Ok(Self {
            state: Arc::new(http::State {
                engine,
                http: settings.http.clone(),
                metrics: settings.metrics.clone(),
                admin,
                readers,
                pushes: http::PushPolicy {
                    limits: http::RefreshLimiter::new(
                        settings
                            .http
                            .push_refusal_limit()
                            .map_err(StartError::Settings)?,
                    ),
                    window: settings.http.push_window().map_err(StartError::Settings)?,
                },
                trusted_proxies: settings.trusted_proxies().map_err(StartError::Settings)?,
                draining: AtomicBool::new(false),
            }),
            tasks: Arc::new(Tasks {
                stop: watch::channel(false).0,
                running: Mutex::default(),
                key_reload: Duration::from_millis(settings.consumer_keys_reload_ms.max(1)),
                keys_reloading: AtomicBool::new(false),
                cron: AtomicBool::new(false),
            }),
        })
    }

    /// The engine, for what this handle does not offer.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// wetoken's routes as a service to mount in the host's router: the route groups and apps
    /// `routes` names, with the server's access policy, consumer keys, rate limits and quota
    /// guard, and its answers. It implements `tower::Service` (for axum's `nest_service` or
    /// `route_service`) and hyper's `Service`, for any request body type.
    ///
    /// Access decisions that depend on the caller's address read it from a [`PeerAddr`]
    /// request extension, which the host sets from its connection (axum's `ConnectInfo`, or
    /// the peer hyper's accept loop has). Without one the caller is unknown: it is in no
    /// network (unless one is `::/0`), so while no consumer key exists the credential routes
    /// refuse it, and the admin routes refuse it unless it presents the admin key.
    ///
    /// Mounting starts the consumer keys' reload (every `consumer_keys_reload_ms`), once per
    /// `Embedded`; mounting `/metrics` installs wetoken's Prometheus recorder as the process's
    /// global one, if the host has none.
    pub fn service(&self, routes: Routes) -> WetokenService {
        if routes.mount.observe {
            crate::metrics::handle();
            crate::metrics::describe();
            crate::metrics::zero_counters();
        }
        self.state.warn_open_routes(&routes.mount);
        self.start_key_reload();
        WetokenService {
            state: self.state.clone(),
            mount: Arc::new(routes.mount),
        }
    }

    /// Starts the refresh scheduler on the current tokio runtime, for the credentials of
    /// `apps`: it renews each ahead of expiry and checks tokens for replacement, through the
    /// lease, so any number of embedded instances and servers on one database fetch once per
    /// lifetime. No route need be mounted. [`Embedded::shutdown`] stops it, letting refreshes
    /// under way finish and release their leases. A second call does nothing and says so.
    pub fn start_cron(&self, apps: Apps) {
        if self.tasks.cron.swap(true, Ordering::AcqRel) {
            warn!("the scheduler is already running; start_cron ignored");
            return;
        }
        let engine = self.state.engine.clone();
        let mut stop = self.tasks.stop.subscribe();
        self.tasks.spawn(async move {
            let only = apps.0.as_deref();
            engine
                .run_scheduler_for(only, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    /// The app's access token, fetched under the lease when none is held or it is within the
    /// margin of expiry: what the Go wetoken's `NewToken(…).Get()` returned. Reads in process
    /// pass no access policy and no mount's app limit: the host's code is trusted.
    pub async fn token(&self, appid: &str) -> Result<Arc<Credential>, wetoken_core::Error> {
        self.credential(appid, Kind::AccessToken).await
    }

    /// The app's jsapi ticket ([`Kind::JsapiTicket`]) or card ticket ([`Kind::CardTicket`]):
    /// the Go wetoken's `NewTicket(…).Get()`.
    pub async fn ticket(
        &self,
        appid: &str,
        kind: Kind,
    ) -> Result<Arc<Credential>, wetoken_core::Error> {
        self.credential(appid, kind).await
    }

    async fn credential(
        &self,
        appid: &str,
        kind: Kind,
    ) -> Result<Arc<Credential>, wetoken_core::Error> {
        self.state.engine.get(&AppId::parse(appid)?, kind).await
    }

    /// The app's access token as a [`TokenSource`], so code written against the trait (such as
    /// `wetoken_client::call`, WeChat's retry-once loop) works the same embedded or against a
    /// server. Its errors are the ones a server would have answered.
    pub fn token_source(&self, appid: &str) -> Result<EmbeddedToken, wetoken_core::Error> {
        Ok(EmbeddedToken {
            engine: self.state.engine.clone(),
            appid: AppId::parse(appid)?,
        })
    }

    /// Stops the background tasks and waits for them: the scheduler finishes the refreshes under
    /// way, which store or release their leases, and the keys' reload ends. The routes keep
    /// answering (a host drains its own server first), but nothing renews ahead of expiry any
    /// more. The engine's change-feed reader is not stopped: it runs until the last clone is
    /// dropped, so reads after this still see other instances' writes within `cache_check_ms`.
    pub async fn shutdown(&self) {
        self.tasks.signal_stop();
        let running = std::mem::take(&mut *lock(&self.tasks.running));
        for task in running {
            if let Err(e) = task.await {
                warn!(error = %e, "a background task failed");
            }
        }
    }

    /// Tells the background tasks to stop, without waiting.
    pub(crate) fn signal_stop(&self) {
        self.tasks.signal_stop();
    }

    pub(crate) fn state(&self) -> &Arc<http::State> {
        &self.state
    }

    /// Starts the consumer keys' reload, once.
    pub(crate) fn start_key_reload(&self) {
        if self.tasks.keys_reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let stop = self.tasks.stop.subscribe();
        self.tasks
            .spawn(reload_keys(self.state.clone(), self.tasks.key_reload, stop));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.running).push(tokio::spawn(task));
    }

    fn signal_stop(&self) {
        self.stop.send_replace(true);
    }
}

impl http::State {
    /// Warns of the routes of `mount` that answer by address alone.
    fn warn_open_routes(&self, mount: &Mount) {
        if mount.admin && self.admin.key.is_none() {
            warn!(
                networks = ?shown(&self.admin.networks),
                "no admin key is configured: the admin routes answer only these networks"
            );
        }
        if mount.observe && !self.admin.metrics_networks.is_empty() {
            info!(
                networks = ?shown(&self.admin.metrics_networks),
                "/metrics answers these networks without a key (metrics_networks)"
            );
        }
        let no_keys = self.readers.keys.read().is_ok_and(|t| !t.is_required());
        if mount.credentials && no_keys {
            warn!(
                networks = ?shown(&self.readers.networks),
                "no consumer key exists: the token, ticket and jssdk routes answer only these networks \
                 (wetoken-cli key add)"
            );
        }
    }
}

fn shown(networks: &[ipnet::IpNet]) -> Vec<String> {
    networks.iter().map(ToString::to_string).collect()
}

/// Re-reads the consumer keys every `every` until `stop`, so keys added or revoked by
/// `wetoken-cli` from another process take effect without a restart. While keys are required it
/// also has the engine re-read the apps' secrets (their digests), which the Go SDK presents
/// instead of a key, before the new keys take effect. While the database is away the last
/// snapshot stays in force.
async fn reload_keys(state: Arc<http::State>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = state.readers.keys.read().map_or(0, |t| t.active());
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match state.engine.key_table().await {
            Ok(table) => {
                if table.is_required()
                    && let Err(e) = state.engine.reload_app_secrets().await
                {
                    warn!(error = %e.chain(), "cannot reload the app secrets; keeping the last ones");
                }
                let active = table.active();
                if active != last {
                    info!(active, "consumer keys reloaded");
                    last = active;
                }
                state.readers.replace(table);
            }
            Err(e) => {
                warn!(error = %e.chain(), "cannot reload the consumer keys; keeping the last ones")
            }
        }
    }
}

/// Which apps a mount or the scheduler serves: every app in the database, or only some (the
/// Go wetoken's `Bind(app, true, "wx…")`).
#[derive(Debug, Clone, Default)]
pub struct Apps(Option<Arc<[AppId]>>);

impl Apps {
    /// Every app in the database.
    pub fn all() -> Self {
        Self(None)
    }

    /// Only these apps; each appid is checked as a request's would be.
    pub fn only<I>(appids: I) -> Result<Self, wetoken_core::Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let appids = appids
            .into_iter()
            .map(|a| AppId::parse(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Some(appids.into())))
    }

    fn set(&self) -> Option<HashSet<String>> {
        self.0
            .as_ref()
            .map(|apps| apps.iter().map(|a| a.as_str().to_owned()).collect())
    }
}

/// Which of wetoken's routes a [`WetokenService`] answers; the others are 404, as a path no route
/// matches.
#[derive(Debug, Clone)]
pub struct Routes {
    mount: Mount,
}

impl Routes {
    /// The credential group alone, for every app: the token and ticket reads, their passive
    /// refreshes, the jssdk signature and the Go wetoken's `/wx/{appid}/…` routes. What the
    /// Go wetoken's `Bind` mounted.
    pub fn credentials() -> Self {
        Self {
            mount: Mount {
                credentials: true,
                admin: false,
                observe: false,
                events: false,
                apps: None,
            },
        }
    }

    /// Every route the server answers.
    pub fn all() -> Self {
        Self {
            mount: Mount::EVERYTHING,
        }
    }

    /// Whether the credential group is mounted.
    pub fn with_credentials(mut self, on: bool) -> Self {
        self.mount.credentials = on;
        self
    }

    /// Whether `/component/{component_appid}/event`, WeChat's pushes to a third-party platform
    /// (its authorization-event URL), is mounted. It is public: a push's signature, made with
    /// the platform's message token, is its only gate. With [`Routes::apps`], only pushes to
    /// those platforms are accepted.
    pub fn with_events(mut self, on: bool) -> Self {
        self.mount.events = on;
        self
    }

    /// Whether the admin routes, `/wechat/app/*`, are mounted (under the admin policy, as in
    /// the server).
    pub fn with_admin(mut self, on: bool) -> Self {
        self.mount.admin = on;
        self
    }

    /// Whether the status page `/`, `/metrics` and the health routes are mounted (the first
    /// two under the admin policy). `/metrics` renders the process's metrics and every app's
    /// gauges, whatever [`Routes::apps`] says.
    pub fn with_status(mut self, on: bool) -> Self {
        self.mount.observe = on;
        self
    }

    /// Serves only `apps`: any other appid is answered as an unknown app (90404, after the
    /// caller's access is checked, as for an app that does not exist), the admin routes list
    /// and change only these apps and create no other, and the status page lists only them.
    pub fn apps(mut self, apps: Apps) -> Self {
        self.mount.apps = apps.set();
        self
    }
}

/// The caller's address, as a request extension for [`WetokenService`]: the host sets it from
/// its connection (`ConnectInfo` in axum, the accepted peer in hyper). A host behind a proxy that
/// it trusts may set the client's address instead; wetoken never reads forwarding headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// The address a request without [`PeerAddr`] is judged by: `::`, in no network but `::/0`.
const UNKNOWN_PEER: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// wetoken's routes as a service, from [`Embedded::service`]: a `tower::Service` and a hyper
/// `Service` over `http::Request<B>` for any body ([`RequestBody`]), answering
/// `Response<Full<Bytes>>`, never failing. Paths are wetoken's own (`/{appid}/wechat/token/get`);
/// axum's `nest_service` strips the prefix it is nested under. Cheap to clone.
#[derive(Clone)]
pub struct WetokenService {
    state: Arc<http::State>,
    pub(crate) mount: Arc<Mount>,
}

impl std::fmt::Debug for WetokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WetokenService")
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

/// The future a [`WetokenService`] answers with.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

impl WetokenService {
    fn answer<B: RequestBody>(&self, request: Request<B>) -> ResponseFuture {
        let peer = request
            .extensions()
            .get::<PeerAddr>()
            .map_or(UNKNOWN_PEER, |p| p.0.to_canonical());
        Box::pin(http::handle(
            self.state.clone(),
            self.mount.clone(),
            peer,
            request,
        ))
    }
}

impl<B: RequestBody> tower_service::Service<Request<B>> for WetokenService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.answer(request)
    }
}

impl<B: RequestBody> hyper::service::Service<Request<B>> for WetokenService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        self.answer(request)
    }
}

/// An app's access token from an embedded engine, as a [`TokenSource`]: from
/// [`Embedded::token_source`].
#[derive(Clone)]
pub struct EmbeddedToken {
    engine: Engine,
    appid: AppId,
}

impl TokenSource for EmbeddedToken {
    async fn token(&self) -> Result<String, SourceError> {
        self.engine
            .get(&self.appid, Kind::AccessToken)
            .await
            .map(|c| c.value.clone())
            .map_err(|e| http::engine_error(&e))
    }

    /// Reports a token WeChat rejected, as an embedded caller: the engine checks it with WeChat
    /// and replaces it only if WeChat really rejects it, once for every replica.
    async fn invalidate(&self, bad: &str) -> Result<(), SourceError> {
        self.engine
            .refresh(&self.appid, Kind::AccessToken, bad)
            .await
            .map(drop)
            .map_err(|e| http::engine_error(&e))
    }
}
