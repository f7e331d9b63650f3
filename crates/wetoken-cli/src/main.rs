//! `wetoken-cli`: the operator's tool for wetoken's database.
//!
//! Every command works on the database directly, so it needs no running server: `install` finds
//! the database through a registry's database node, the others take `--database-url` or a
//! registry (`-r`).
//!
//! The commands read the server's settings (`wetoken_settings::Settings`): `--config FILE` or
//! `wetoken.toml` in the working directory, then `WETOKEN_*` variables, then their own flags. So
//! the CLI opens the database the servers use, with their master key, and calls WeChat where
//! they do, fallback domains included.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use wetoken_core::{DatabaseOptions, Store};
use wetoken_settings::Settings;

mod apps;
mod authorizers;
mod import;
mod keys;
mod quota;
mod secrets;

/// Manage wetoken's database: tables, apps, consumer keys, the master key, and the tokens and
/// tickets it holds.
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
    /// On a database the Go wetoken created, its tables are upgraded in place: every app, column
    /// and row is kept, and stored tokens and tickets are served until their expire_date. It
    /// refuses while a Go wtserver still writes there (--force skips that check). An interrupted
    /// run finishes when run again. See docs/migrating-from-go.md.
    ///
    /// Examples: wetoken-cli install zk://127.0.0.1:2181 mall;
    /// wetoken-cli install --check fs:///etc/wetoken mall
    Install {
        /// Print what would change, and change nothing.
        #[arg(long)]
        check: bool,
        /// Go on although a Go wtserver seems to be writing to the database.
        #[arg(long)]
        force: bool,
        /// The time zone the Go wetoken wrote expire_date in: `database` (the MySQL server's own,
        /// which Go's now() used), `UTC`, or an offset such as +08:00. Default: the
        /// go_time_zone setting (WETOKEN_GO_TIME_ZONE), else `database`.
        #[arg(long)]
        go_time_zone: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        /// The registry: fs://<dir> (each node a file under dir) or
        /// zk://host[:port][,host[:port]…][/chroot] (ZooKeeper).
        registry: String,
        /// The platform whose database node to read.
        platform: String,
        /// The database node's name.
        #[arg(default_value = "db")]
        db_name: String,
    },
    /// Create or inspect wetoken's tables (wechat_app_info, wechat_access_token,
    /// wechat_jsapi_ticket, wechat_card_ticket).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Add, list, show, change or remove apps, and read or clear their WeChat quota. App secrets
    /// are never printed.
    App {
        #[command(subcommand)]
        action: apps::AppAction,
    },
    /// Get an app's access token: the stored one while it is fresh, else a new one from WeChat
    /// (taking the same lease as the servers, so a cluster still fetches once).
    Token {
        #[command(subcommand)]
        action: apps::CredentialAction,
    },
    /// Get an app's jsapi ticket (or, with --type wx_card, its card ticket), as `token` does.
    Ticket {
        #[command(subcommand)]
        action: apps::TicketAction,
    },
    /// Add apps, and their live tokens and tickets, from a JSON, JSON-lines or CSV export (the
    /// way across from the Go wetoken on Oracle: docs/migrating-from-go.md). Apps already here
    /// are left as they are; nothing is written unless every record is valid.
    ///
    /// Example: wetoken-cli import apps.jsonl --database-url mysql://u:p@db/wetoken
    Import(import::ImportArgs),
    /// Add the authorizers of a third-party platform, with their refresh tokens, from the system
    /// you move away from (WxJava's store, your own tables): one a line, appid,refresh_token[,kind]
    /// (kind mp, the default, or mini) or {"authorizer_appid":…,"authorizer_refresh_token":…,
    /// "kind":…}.
    ///
    /// Every line is checked, and compared with the database, before anything is written.
    /// Authorizers of this platform already here are skipped (--update replaces their refresh
    /// token); an appid stored as an app of its own or under another platform is refused and
    /// left as it is, as is every malformed or repeated line. Prints each line not added, then
    /// the totals; exits non-zero if any line was refused. The servers then fetch the tokens.
    ///
    /// Example: wetoken-cli import-authorizers --component wxcomponent1 authorizers.csv
    ImportAuthorizers(authorizers::ImportAuthorizersArgs),
    /// Manage consumer keys: who may read which app's tokens and tickets.
    Key {
        #[command(subcommand)]
        action: keys::KeyAction,
    },
    /// The master key app secrets are encrypted under: make one, see how rows are held, rotate.
    Secrets {
        #[command(subcommand)]
        action: secrets::SecretsAction,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply every pending migration. Running it again changes nothing.
    Up {
        /// Then encrypt the secrets still stored in plain text (rows from the Go schema, or
        /// written without a key) under the master key, as a server with one does at start.
        /// Only once every server runs a wetoken that reads encrypted secrets: an older one, or
        /// the Go wetoken, would send the ciphertext to WeChat as the secret.
        #[arg(long)]
        encrypt_secrets: bool,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// List wetoken's migrations and whether each is applied.
    Status(DatabaseArg),
}

/// The settings file: the server's, read the way the server reads it.
#[derive(clap::Args, Clone)]
pub(crate) struct ConfigArg {
    /// The server's TOML settings file. Without this flag, wetoken.toml in the current directory
    /// is read if it exists; a file named here must exist. WETOKEN_* variables override it, and
    /// this command's flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The settings, as `wetoken-server start` would read them here, with `flags` on top.
    /// Kubernetes' service-link variables are ignored with a warning, as the server does.
    pub(crate) fn load<'a>(
        &self,
        flags: impl IntoIterator<Item = (&'a str, Option<String>)>,
    ) -> anyhow::Result<Settings> {
        let file = wetoken_settings::config_file(self.config.as_deref()).map_err(|e| anyhow!(e))?;
        let links = wetoken_settings::ignored_service_links();
        if !links.is_empty() {
            eprintln!(
                "wetoken-cli: warning: {}: {}",
                wetoken_settings::SERVICE_LINKS_IGNORED,
                links.join(", ")
            );
        }
        Settings::load(&file, wetoken_settings::flags(flags)).context("reading settings")
    }
}

/// Which database to work on: a URL, or a registry's database node.
#[derive(clap::Args, Clone)]
pub(crate) struct DatabaseArg {
    #[command(flatten)]
    config: ConfigArg,
    /// sqlite://wetoken.db, mysql://user:pass@host/db or postgres://user@host/db. Default: the
    /// database_url setting (wetoken.toml, WETOKEN_DATABASE_URL), else sqlite://wetoken.db.
    #[arg(long)]
    database_url: Option<String>,
    /// Find the database through this registry's node /<platform>/var/db/<db-name> instead
    /// (over --database-url and WETOKEN_DATABASE_URL): fs://<dir> or zk://host[:port][/chroot].
    #[arg(long, short = 'r')]
    registry: Option<String>,
    /// With --registry: the platform.
    #[arg(long, default_value = "wetoken", requires = "registry")]
    platform: String,
    /// With --registry: the database node's name.
    #[arg(long, default_value = "db", requires = "registry")]
    db_name: String,
    #[command(flatten)]
    keys: secrets::MasterKeyArgs,
}

impl DatabaseArg {
    /// The settings, with this command's database flag and `more` flags over them.
    pub(crate) fn settings_with<'a>(
        &self,
        more: impl IntoIterator<Item = (&'a str, Option<String>)>,
    ) -> anyhow::Result<Settings> {
        let flags = [("database_url", self.database_url.clone())];
        let mut settings = self.config.load(flags.into_iter().chain(more))?;
        self.keys.apply(&mut settings);
        Ok(settings)
    }

    /// The settings, with this command's database flag over them.
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        self.settings_with([])
    }

    /// Opens the database with the master keyring, if one is configured, so secrets are written
    /// encrypted and read decrypted; the schema is not touched.
    async fn open(&self, settings: &Settings) -> anyhow::Result<Store> {
        let keyring = settings.keyring().map_err(|e| anyhow!(e))?;
        match &self.registry {
            Some(registry) => {
                open_from_registry(registry, &self.platform, &self.db_name, keyring).await
            }
            None => {
                let mut options = settings.database();
                options.keyring = keyring;
                Store::connect(&options)
                    .await
                    .context("opening the database")
            }
        }
    }

    /// Refuses a SQLite URL whose file does not exist, before anything would create it.
    fn existing(&self, settings: &Settings) -> anyhow::Result<()> {
        if self.registry.is_none()
            && let Some(path) = sqlite_file(&settings.database_url)
            && !path.exists()
        {
            bail!(
                "no database at {}: `wetoken-cli migrate up` creates one there; or point \
                 --database-url (WETOKEN_DATABASE_URL, database_url in wetoken.toml) at the \
                 server's database",
                path.display()
            );
        }
        Ok(())
    }

    /// Reads the settings, opens the database and checks that wetoken's tables are up to date
    /// ([`DatabaseArg::installed`]).
    pub(crate) async fn open_installed(&self) -> anyhow::Result<Store> {
        self.installed(&self.settings()?).await
    }

    /// Opens the database `settings` name and checks that wetoken's tables are up to date. A
    /// SQLite file that does not exist is an error, not created: `app list` run in the wrong
    /// directory should say so, not leave an empty `wetoken.db` behind.
    pub(crate) async fn installed(&self, settings: &Settings) -> anyhow::Result<Store> {
        self.existing(settings)?;
        let store = self.open(settings).await?;
        let pending: Vec<String> = store
            .migration_status()
            .await
            .context("reading the schema's state")?
            .into_iter()
            .filter_map(|(name, applied)| (!applied).then_some(name))
            .collect();
        if !pending.is_empty() {
            bail!(
                "the database is missing {} of wetoken's migrations ({}): run `wetoken-cli migrate up` (or `install`) first",
                pending.len(),
                pending.join(", ")
            );
        }
        Ok(store)
    }
}

/// The file a SQLite URL names (`sqlite://wetoken.db`, `sqlite:///var/lib/w.db?mode=rwc`,
/// `sqlite:w.db`); `None` for another database or an in-memory one.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.into())
}

/// After a migration: encrypts the secrets still stored in plain text when asked to (and given
/// the master key), else says how many there are.
async fn report_secrets(store: &Store, encrypt: bool) -> anyhow::Result<()> {
    if encrypt {
        let keyring = store.keyring().ok_or_else(|| {
            anyhow!(
                "--encrypt-secrets needs the master key: --master-key-file, WETOKEN_MASTER_KEY \
                 or WETOKEN_MASTER_KEY_FILE"
            )
        })?;
        let id = keyring.current_id().to_owned();
        let (_, encrypted) = store
            .prepare_secrets()
            .await
            .context("encrypting stored secrets")?;
        println!("encrypted {encrypted} stored secrets under master key id {id}");
        return Ok(());
    }
    let report = store
        .secrets_report()
        .await
        .context("reading how secrets are stored")?;
    if report.plain > 0 {
        println!(
            "{} secrets are stored in plain text: once every server runs a wetoken that reads \
             encrypted secrets, encrypt them with `migrate up --encrypt-secrets` and the master key",
            report.plain
        );
    }
    Ok(())
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

/// Opens the database that a registry's database node names.
async fn open_from_registry(
    registry: &str,
    platform: &str,
    db_name: &str,
    keyring: Option<std::sync::Arc<wetoken_core::Keyring>>,
) -> anyhow::Result<Store> {
    let path = wetoken_registry::database_node(platform, db_name).map_err(|e| anyhow!(e))?;
    let registry = wetoken_registry::Registry::open(registry)
        .await
        .with_context(|| format!("reading the database node {path}"))?;
    let node = registry.database(platform, db_name).await?;
    let mut options = DatabaseOptions::new(&node.url).with_pool(node.max_open, node.lifetime_secs);
    options.keyring = keyring;
    Store::connect(&options)
        .await
        .with_context(|| format!("opening the database that {path} names"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Install {
            check,
            force,
            go_time_zone,
            config,
            registry,
            platform,
            db_name,
        } => {
            let mut settings = config.load([("go_time_zone", go_time_zone)])?;
            settings.go_takeover_force |= force;
            let takeover = settings.takeover().map_err(|e| anyhow!(e))?;
            let store = open_from_registry(&registry, &platform, &db_name, None).await?;
            if check {
                let plan = store
                    .install_plan(&takeover)
                    .await
                    .context("reading the schema")?;
                print!("{plan}");
                return Ok(());
            }
            let installed = store
                .install(&takeover)
                .await
                .context("applying migrations")?;
            print!("{installed}");
        }
        Command::Import(args) => import::run(args).await?,
        Command::ImportAuthorizers(args) => authorizers::run(args).await?,
        Command::Key { action } => keys::run(action).await?,
        Command::Secrets { action } => secrets::run(action).await?,
        Command::Migrate { action } => match action {
            MigrateAction::Up {
                encrypt_secrets,
                db,
            } => {
                let store = db.open(&db.settings()?).await?;
                let applied = store.migrate().await.context("applying migrations")?;
                if applied.is_empty() {
                    println!("nothing to do: every migration is already applied");
                }
                for name in applied {
                    println!("applied {name}");
                }
                report_secrets(&store, encrypt_secrets).await?;
            }
            MigrateAction::Status(db) => {
                let settings = db.settings()?;
                db.existing(&settings)?;
                let store = db.open(&settings).await?;
                for (name, applied) in store.migration_status().await? {
                    let state = if applied { "applied" } else { "pending" };
                    println!("{state:8} {name}");
                }
            }
        },
        Command::App { action } => apps::app(action).await?,
        Command::Token { action } => apps::token(action).await?,
        Command::Ticket { action } => apps::ticket(action).await?,
    }
    Ok(())
}
