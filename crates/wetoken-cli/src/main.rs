//! `wetoken-cli`: the operator's tool for wetoken's database.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wetoken_core::{DatabaseOptions, Store};

/// Manage wetoken's database.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or inspect wetoken's tables (wechat_app_info, wechat_access_token,
    /// wechat_jsapi_ticket).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply every pending migration. Running it again changes nothing.
    Up(DatabaseArg),
    /// List wetoken's migrations and whether each is applied.
    Status(DatabaseArg),
}

#[derive(clap::Args)]
struct DatabaseArg {
    /// sqlite://wetoken.db, mysql://user:pass@host/db or postgres://user@host/db.
    #[arg(
        long,
        env = "WETOKEN_DATABASE_URL",
        default_value = "sqlite://wetoken.db"
    )]
    database_url: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wetoken-cli: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wetoken-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(arg: &DatabaseArg) -> anyhow::Result<Store> {
    Store::connect(&DatabaseOptions::new(&arg.database_url))
        .await
        .context("opening the database")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { action } => match action {
            MigrateAction::Up(db) => {
                let store = connect(&db).await?;
                let applied = store.migrate().await.context("applying migrations")?;
                if applied.is_empty() {
                    println!("nothing to do: every migration is already applied");
                }
                for name in applied {
                    println!("applied {name}");
                }
            }
            MigrateAction::Status(db) => {
                let store = connect(&db).await?;
                for (name, applied) in store.migration_status().await? {
                    let state = if applied { "applied" } else { "pending" };
                    println!("{state:8} {name}");
                }
            }
        },
    }
    Ok(())
}
