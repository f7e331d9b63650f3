//! Only the scheduler, as the Go wetoken's `Cron` did: a service with no HTTP of wetoken's
//! keeps some apps' credentials renewed ahead of expiry in the shared database, on its own
//! tokio runtime, where other services (or wetoken servers) read them.
//!
//! ```text
//! WETOKEN_DATABASE_URL=sqlite://embed.db?mode=rwc WETOKEN_WECHAT_BASE_URL=http://127.0.0.1:9100 \
//!   APPIDS=wx9e02ddcc34513fd4 cargo run -p wetoken-server --example cron_only
//! ```
//!
//! `tests/it/embed.rs` runs [`cron`] on a credential about to expire and sees it renewed.

use std::future::Future;

use wetoken_server::{Apps, Embedded};

/// Runs the scheduler for `apps` until `stop` resolves, then lets the renewals under way finish
/// (each stores its value or releases its lease) before returning.
pub async fn cron(wetoken: &Embedded, apps: Apps, stop: impl Future<Output = ()>) {
    wetoken.start_cron(apps);
    stop.await;
    wetoken.shutdown().await;
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let settings = wetoken_server::Settings::load(
        std::path::Path::new("wetoken.toml"),
        figment::Figment::new(),
    )?;
    // `APPIDS=wx1,wx2` limits it to those apps; unset, it renews every app in the database.
    let apps = match std::env::var("APPIDS") {
        Ok(list) => Apps::only(list.split(',').map(str::trim))?,
        Err(_) => Apps::all(),
    };
    let wetoken = Embedded::from_settings(&settings).await?;
    println!("renewing credentials until Ctrl-C");
    cron(&wetoken, apps, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
