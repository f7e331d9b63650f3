//! `wetoken-server`: the command line around the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use figment::Figment;
use tracing_subscriber::field::MakeExt;
use wetoken_server::{Listening, Server, Settings, redact_url};

mod json_log;
mod registry;

/// WeChat access tokens and tickets for every app, from one place.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve tokens and tickets over HTTP.
    ///
    /// Settings come from built-in defaults, then the config file, then the registry (with -r),
    /// then WETOKEN_* environment variables (WETOKEN_REFRESH__MARGIN_SECS for [refresh]
    /// margin_secs), then these flags.
    /// With no settings at all it serves on 0.0.0.0:9999 from a SQLite file wetoken.db in the
    /// current directory, creating it and its tables on first start.
    ///
    /// With -r REGISTRY -c CLUSTER it reads its settings from the node
    /// /<platform>/wetoken-server/<cluster>/conf and its database from /<platform>/var/db/db
    /// (write both with `install`), and announces itself at
    /// /<platform>/wetoken-server/<cluster>/servers/<host:port> while it runs.
    Start(StartArgs),
    /// Prepare a registry and a database for `start -r REGISTRY -c CLUSTER`.
    ///
    /// Writes the server's default settings node when it is absent, asks for the database when
    /// its node is absent (at a terminal; otherwise pass --database-url), and creates wetoken's
    /// tables in that database. Running it again changes nothing and says so.
    ///
    /// Example: wetoken-server install -r zk://127.0.0.1:2181 -c t
    Install(InstallArgs),
    /// Ask a server running here whether it is healthy: exit 0 if `/health` answers 200, 1
    /// otherwise. For container health checks (Docker's HEALTHCHECK, compose), which have no
    /// curl in wetoken's image.
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// The server's address; 0.0.0.0 and [::] mean this host's loopback.
    #[arg(long, env = "WETOKEN_LISTEN", default_value = "127.0.0.1:9999")]
    listen: std::net::SocketAddr,
    /// Ask `/live` instead: the process answers, whatever the database does.
    #[arg(long, conflicts_with = "ready")]
    live: bool,
    /// Ask `/ready` instead: the server serves (from its trusted cache through a database
    /// outage) and is not draining. What a container health check wants.
    #[arg(long)]
    ready: bool,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

/// Where the registry is, and which nodes of it are this server's.
#[derive(clap::Args)]
struct RegistryArgs {
    /// The registry: fs://<dir> or zk://host[:port][,host[:port]…][/chroot].
    #[arg(long, short = 'r', requires = "cluster")]
    registry: Option<String>,
    /// The server cluster's name: its settings are /<platform>/wetoken-server/<cluster>/conf.
    #[arg(long, short = 'c', requires = "registry")]
    cluster: Option<String>,
    /// The platform whose nodes to use.
    #[arg(long, default_value = "wetoken")]
    platform: String,
    /// The database node's name, /<platform>/var/db/<db-name>.
    #[arg(long, default_value = "db")]
    db_name: String,
}

#[derive(clap::Args)]
struct StartArgs {
    /// The TOML settings file. Without this flag, wetoken.toml in the current directory is read
    /// if it exists; a file named here must exist.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The address to listen on, e.g. 127.0.0.1:9999.
    #[arg(long)]
    listen: Option<String>,
    /// sqlite://wetoken.db, mysql://user:pass@host/db or postgres://user@host/db.
    #[arg(long)]
    database_url: Option<String>,
    /// WeChat's API root (default https://api.weixin.qq.com); point it at wetoken-mock for demos.
    #[arg(long)]
    wechat_base_url: Option<String>,
    /// How log lines are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The registry: fs://<dir> or zk://host[:port][,host[:port]…][/chroot].
    #[arg(long, short = 'r')]
    registry: String,
    /// The server cluster's name.
    #[arg(long, short = 'c')]
    cluster: String,
    /// The platform whose nodes to write.
    #[arg(long, default_value = "wetoken")]
    platform: String,
    /// The database node's name, /<platform>/var/db/<db-name>.
    #[arg(long, default_value = "db")]
    db_name: String,
    /// The database to record when the database node is absent: mysql://user:pass@host:3306/db,
    /// postgres://user:pass@host/db or sqlite://path. Without it, install asks at a terminal.
    #[arg(long)]
    database_url: Option<String>,
    /// The listen address to record when the settings node is absent.
    #[arg(long, default_value = "0.0.0.0:9999")]
    listen: std::net::SocketAddr,
    /// Take over a Go wetoken's database although a Go wtserver seems to still write to it.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `start` logs, in JSON if asked: its last words are a log line too, so that a log
    // collector reading JSON gets them whole.
    let json_log =
        matches!(&cli.command, Command::Start(a) if matches!(a.log_format, LogFormat::Json));
    let result = match cli.command {
        Command::Start(args) => start(args),
        Command::Install(args) => install(args),
        Command::Health(args) => health(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json_log => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wetoken-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// sea-orm's migrator logs every migration it applies at info, and the server logs them in one
/// line of its own: its lines show only when asked for, by a `WETOKEN_LOG` at debug or naming it.
const QUIET_MIGRATOR: &str = "sea_orm_migration=warn";

/// The log filter: `WETOKEN_LOG` (an `EnvFilter` directive list), or `info`. A value that does
/// not parse is an error, not a silent `info`: the operator asked for something else.
fn log_filter(spec: Option<String>) -> Result<tracing_subscriber::EnvFilter, String> {
    let spec = spec.unwrap_or_else(|| "info".into());
    let asked = spec.contains("sea_orm")
        || spec
            .split(',')
            .any(|d| matches!(d.trim(), "debug" | "trace"));
    let full = if asked {
        spec.clone()
    } else {
        format!("{spec},{QUIET_MIGRATOR}")
    };
    tracing_subscriber::EnvFilter::try_new(full).map_err(|e| {
        format!(
            "WETOKEN_LOG={spec:?} is not a log filter ({e}); expected directives such as \
             `info`, `warn` or `info,wetoken_core=debug`"
        )
    })
}

/// Starts logging. A `WETOKEN_LOG` that does not parse starts it at `info`, so that the error
/// it returns is logged in the chosen format, and the start stops.
fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let (filter, refused) = match log_filter(std::env::var("WETOKEN_LOG").ok()) {
        Ok(filter) => (filter, None),
        Err(e) => (
            log_filter(None).expect("the default filter parses"),
            Some(e),
        ),
    };
    // Logs go to stderr, leaving stdout to what a command prints for a person. Colours only on a
    // terminal: a log file or journald wants none, and styling every request span's fields was
    // most of what a span cost on the token route.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        // Fields as `name=value` without styling: the fmt layer formats a span's fields when the
        // span is made, once per request, and the default formatter's styling cost more than
        // the rest of the token route's own work.
        LogFormat::Pretty => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|out, field, value| {
                    if field.name() == "message" {
                        write!(out, "{value:?}")
                    } else {
                        write!(out, "{field}={value:?}")
                    }
                })
                .delimited(" "),
            )
            .init(),
        LogFormat::Json => builder
            .json()
            .event_format(json_log::JsonLines(
                tracing_subscriber::fmt::format().json(),
            ))
            .init(),
    }
    refused.map_or(Ok(()), |e| Err(anyhow::Error::msg(e)))
}

/// `wetoken-server health`: one HTTP/1.1 GET over a plain socket, so the image needs no curl.
fn health(args: &HealthArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut addr = args.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = std::time::Duration::from_secs(args.timeout_secs.max(1));
    let path = match (args.live, args.ready) {
        (true, _) => "/live",
        (_, true) => "/ready",
        _ => "/health",
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("asking {addr}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading {addr}'s answer"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1).unwrap_or_default();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if status == "200" {
        println!("{addr}{path}: {body}");
        Ok(())
    } else {
        anyhow::bail!("{addr}{path} answered {status}: {body}")
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    init_logging(args.log_format)?;
    let config =
        wetoken_settings::config_file(args.config.as_deref()).map_err(anyhow::Error::msg)?;
    let links = wetoken_server::ignored_service_links();
    if !links.is_empty() {
        tracing::warn!(?links, "{}", wetoken_settings::SERVICE_LINKS_IGNORED);
    }
    let flags = wetoken_settings::flags([
        ("listen", args.listen),
        ("database_url", args.database_url),
        ("wechat_base_url", args.wechat_base_url),
    ]);
    runtime()?.block_on(async move {
        let nodes = match (&args.registry.registry, &args.registry.cluster) {
            (Some(url), Some(cluster)) => Some(
                registry::ServerNodes::open(
                    url,
                    &args.registry.platform,
                    cluster,
                    &args.registry.db_name,
                )
                .await?,
            ),
            _ => None,
        };
        let layer = match &nodes {
            Some(nodes) => nodes.settings_layer().await?,
            None => Figment::new(),
        };
        let settings =
            Settings::load_with_registry(&config, layer, flags).context("reading settings")?;
        tracing::info!(
            database = %redact_url(&settings.database_url),
            wechat = %settings.wechat_base_url,
            "starting"
        );
        // The port first: taken by another process, it is the first thing said, and while the
        // database is opened and migrated (minutes, on a large one) `/live` answers.
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let listening = Listening::start(listener, &settings.http)?;
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let built = tokio::select! {
            built = Server::new(&settings) => built,
            () = &mut signal => {
                listening.close().await;
                tracing::info!("stopped while starting");
                return Ok(());
            }
        };
        let server = match built {
            Ok(server) => server,
            Err(e) => {
                listening.close().await;
                return Err(e.into());
            }
        };
        let announcement = match &nodes {
            Some(nodes) => Some(nodes.announce(&settings, bound).await?),
            None => None,
        };
        drop(nodes);
        // The announcement is withdrawn as soon as the shutdown signal arrives, so that nobody
        // is sent here while in-flight requests drain, and again (if still up) once serve
        // returns, on success or error.
        let announcement = std::sync::Mutex::new(announcement);
        let shutdown = async {
            signal.await;
            withdraw(&announcement).await;
        };
        let served = listening.serve(server, shutdown).await;
        withdraw(&announcement).await;
        served?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Removes the server's announcement from the registry, the first time it is called.
async fn withdraw(announcement: &std::sync::Mutex<Option<wetoken_registry::Registration>>) {
    let taken = announcement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(announcement) = taken {
        announcement.close().await;
        tracing::info!("withdrew the announcement");
    }
}

fn install(args: InstallArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let nodes = registry::ServerNodes::open(
            &args.registry,
            &args.platform,
            &args.cluster,
            &args.db_name,
        )
        .await?;
        nodes
            .install(args.listen, args.database_url.as_deref(), args.force)
            .await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
