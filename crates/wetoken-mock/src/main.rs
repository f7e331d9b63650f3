//! `wetoken-mock`: the mock WeChat API server, for demos.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

use wetoken_mock::{MockComponent, MockConfig, MockWeChat};

/// A mock of WeChat's API server with WeChat's token semantics, call counters and faults.
///
/// Control it over HTTP: GET /mock/calls; POST /mock/apps {"appid","secret"};
/// POST /mock/faults {"endpoint":"token","fault":{"errcode":-1}|{"status":500}|{"delay_ms":100}|{"delay_answer_ms":100}|"drop"|{"redirect":URL}|{"oversized_bytes":N}|{"answer":JSON},"times":3};
/// POST /mock/invalidate {"access_token"}; POST /mock/advance {"seconds"}; POST /mock/reset;
/// POST /mock/components {"component_appid","component_appsecret","token","encoding_aes_key","push_url"};
/// POST /mock/push/component_verify_ticket {"component_appid"};
/// POST /mock/push/authorized {"component_appid","authorizer_appid"?,"pre_auth_code"?};
/// POST /mock/push/updateauthorized and /mock/push/unauthorized {"component_appid","authorizer_appid"}.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:9998")]
    listen: SocketAddr,
    /// An app (or WeCom corp) to know, as APPID:SECRET; repeat for more.
    #[arg(long = "app", value_name = "APPID:SECRET", value_parser = parse_app)]
    apps: Vec<(String, String)>,
    /// Register unknown appids on their first token call instead of answering 40013.
    #[arg(long)]
    auto_register: bool,
    /// The lifetime of issued access tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 7200)]
    token_expires_in: u64,
    /// The lifetime of issued tickets, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 7200)]
    ticket_expires_in: u64,
    /// Successful /cgi-bin/token calls an app may make a mock day (24 h since the start) before
    /// it gets 45009; WeCom's gettoken calls per corp too.
    #[arg(long, value_name = "CALLS", default_value_t = 2000)]
    token_daily_limit: u64,
    /// A third-party platform (open platform component) to know; its verify tickets and
    /// authorization events are encrypted with TOKEN and AESKEY (43 characters) and POSTed to
    /// PUSH_URL (leave it empty for no pushes). Repeat for more.
    #[arg(long = "component", value_name = "APPID:SECRET:TOKEN:AESKEY:PUSH_URL", value_parser = parse_component)]
    components: Vec<MockComponent>,
    /// Seconds between the verify-ticket pushes to each component with a push URL (WeChat: 600);
    /// 0 pushes only on demand (POST /mock/push/component_verify_ticket).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    verify_ticket_interval: u64,
    /// Hand out a new authorizer refresh token on each api_authorizer_token call, ending the
    /// previous one (WeChat returns the same one).
    #[arg(long)]
    rotate_refresh_tokens: bool,
}

fn parse_component(text: &str) -> Result<MockComponent, String> {
    let mut parts = text.splitn(5, ':');
    let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
    match (next(), next(), next(), next()) {
        (Some(appid), Some(secret), Some(token), Some(aes_key)) => Ok(MockComponent {
            appid,
            secret,
            token,
            aes_key,
            push_url: next(),
        }),
        _ => Err(format!(
            "expected APPID:SECRET:TOKEN:AESKEY:PUSH_URL (the URL may be empty), got {text:?}"
        )),
    }
}

fn parse_app(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => {
            Ok((appid.to_owned(), secret.to_owned()))
        }
        _ => Err(format!("expected APPID:SECRET, got {text:?}")),
    }
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr (stdout carries the URL line), every WeChat call at debug level;
    // RUST_LOG overrides the levels.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,wetoken_mock=debug")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let config = MockConfig {
        token_expires_in: args.token_expires_in,
        ticket_expires_in: args.ticket_expires_in,
        auto_register: args.auto_register,
        token_daily_limit: args.token_daily_limit,
        verify_ticket_interval: (args.verify_ticket_interval > 0)
            .then(|| Duration::from_secs(args.verify_ticket_interval)),
        rotate_refresh_tokens: args.rotate_refresh_tokens,
        ..MockConfig::default()
    };
    let mock = match MockWeChat::start_with(config, args.listen).await {
        Ok(mock) => mock,
        Err(error) => {
            tracing::error!(listen = %args.listen, %error, "cannot listen");
            eprintln!("wetoken-mock: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    for (appid, secret) in &args.apps {
        mock.add_app(appid, secret);
    }
    for component in &args.components {
        if let Err(error) = mock.add_component(component.clone()) {
            eprintln!("wetoken-mock: component {}: {error}", component.appid);
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(
        url = %mock.url(),
        apps = args.apps.len(),
        components = args.components.len(),
        auto_register = args.auto_register,
        "mock WeChat started"
    );
    println!("mock WeChat listening on {}", mock.url());
    stop_signal().await;
    tracing::info!("stopping");
    mock.shutdown().await;
    ExitCode::SUCCESS
}
