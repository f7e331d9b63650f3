//! `wetoken-server`: the command line around the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use figment::Figment;
use wetoken_server::{Server, Settings, redact_url};

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
    /// Settings come from built-in defaults, then the config file, then WETOKEN_* environment
    /// variables (WETOKEN_REFRESH__MARGIN_SECS for [refresh] margin_secs), then these flags.
    /// With no settings at all it serves on 0.0.0.0:9999 from a SQLite file wetoken.db in the
    /// current directory, creating it and its tables on first start.
    Start(StartArgs),
}

#[derive(clap::Args)]
struct StartArgs {
    /// The TOML settings file; a missing file is skipped.
    #[arg(long, short = 'c', default_value = "wetoken.toml")]
    config: PathBuf,
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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => start(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wetoken-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WETOKEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr, leaving stdout to what a command prints for a person.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let mut flags = Figment::new();
    if let Some(listen) = args.listen {
        flags = flags.merge(("listen", listen));
    }
    if let Some(url) = args.database_url {
        flags = flags.merge(("database_url", url));
    }
    if let Some(url) = args.wechat_base_url {
        flags = flags.merge(("wechat_base_url", url));
    }
    let settings = Settings::load(&args.config, flags).context("reading settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        tracing::info!(
            database = %redact_url(&settings.database_url),
            wechat = %settings.wechat_base_url,
            "starting"
        );
        let server = Server::new(&settings).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        server.serve(listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
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
