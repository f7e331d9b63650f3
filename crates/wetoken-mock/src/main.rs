//! `wetoken-mock`: the mock WeChat API server, for demos.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use wetoken_mock::{MockConfig, MockWeChat};

/// A mock of WeChat's API server with WeChat's token semantics.
///
/// Control it over HTTP: GET /mock/calls, POST /mock/apps {"appid","secret"},
/// POST /mock/faults {"endpoint":"token","fault":{"errcode":-1},"times":3},
/// POST /mock/invalidate {"access_token"}, POST /mock/reset.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:9998")]
    listen: SocketAddr,
    /// An app to know, as APPID:SECRET; repeat for more.
    #[arg(long = "app", value_name = "APPID:SECRET")]
    apps: Vec<String>,
    /// Register unknown appids on their first token call instead of answering 40013.
    #[arg(long)]
    auto_register: bool,
    /// The lifetime of issued tokens and tickets, in seconds.
    #[arg(long, default_value_t = 7200)]
    token_expires_in: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let config = MockConfig {
        token_expires_in: args.token_expires_in,
        ticket_expires_in: args.token_expires_in,
        auto_register: args.auto_register,
        ..MockConfig::default()
    };
    let mock = match MockWeChat::start_with(config, args.listen).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("wetoken-mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    for app in &args.apps {
        let Some((appid, secret)) = app.split_once(':') else {
            eprintln!("wetoken-mock: --app takes APPID:SECRET, got {app:?}");
            return ExitCode::FAILURE;
        };
        mock.add_app(appid, secret);
    }
    println!("mock WeChat listening on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}
