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
    /// Create wetoken's tables in the database a registry names for a platform.
    ///
    /// Reads the node /<PLATFORM>/var/db/<DB_NAME> (the Go wetoken's path) from REGISTRY, either
    /// {"provider":"mysql","connString":"user:pass@tcp(host:3306)/db"} or {"url":"postgres://…"},
    /// connects, and applies wetoken's migrations. A second run changes nothing and says so.
    ///
    /// Example: wetoken-cli install fs:///etc/wetoken mall
    Install {
        /// The registry: fs://<dir> (each node a file under dir).
        registry: String,
        /// The platform whose database node to read.
        platform: String,
        /// The database node's name.
        #[arg(default_value = "db")]
        db_name: String,
    },
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

/// Creates the tables in the database a registry names; see `Command::Install`.
async fn install(registry: &str, platform: &str, db_name: &str) -> anyhow::Result<()> {
    use anyhow::anyhow;
    let registry = wetoken_registry::Registry::open(registry)?;
    let path = wetoken_registry::database_node(platform, db_name).map_err(|e| anyhow!(e))?;
    let node = registry.read_json(&path)?;
    let node = wetoken_registry::database::parse(&node)
        .map_err(|e| anyhow!("registry {}: node {path}: {e}", registry.url()))?;
    let mut options = DatabaseOptions::new(&node.url);
    if let Some(max_open) = node.max_open {
        options.max_connections = max_open.max(1);
    }
    options.max_lifetime = node.lifetime_secs.map(std::time::Duration::from_secs);
    let store = Store::connect(&options)
        .await
        .with_context(|| format!("opening the database that {path} names"))?;
    let before = store.tables_present().await?;
    let applied = store.migrate().await.context("applying migrations")?;
    let after = store.tables_present().await?;
    for table in after.iter().filter(|t| !before.contains(t)) {
        println!("created table {table}");
    }
    for name in &applied {
        println!("applied migration {name}");
    }
    if applied.is_empty() {
        println!("nothing to do: wetoken's tables are in place and up to date");
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Install {
            registry,
            platform,
            db_name,
        } => install(&registry, &platform, &db_name).await?,
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
