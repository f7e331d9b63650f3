//! `wetoken-cli key add|list|limit|revoke`: consumer keys, the credentials other services read tokens
//! with.
//!
//! A running server re-reads the keys every `consumer_keys_reload_ms` (5 s), so what these
//! commands change takes effect without a restart.

use anyhow::Context;
use chrono::Utc;
use wetoken_core::keys::parse_network;
use wetoken_core::{AppId, NewConsumerKey, RefreshLimit};

use crate::DatabaseArg;

#[derive(clap::Subcommand)]
pub(crate) enum KeyAction {
    /// Add a consumer key and print it. It is shown this once: only its hash is stored.
    ///
    /// Once any key exists, the token, ticket and jssdk routes require one, as
    /// "Authorization: Bearer <key>" (or "X-Wetoken-Key: <key>"), from every caller.
    ///
    /// Example: wetoken-cli key add --name mall-api --appid wx9e02ddcc34513fd4 --allow 10.0.0.0/8
    Add {
        /// A unique name for the key: who holds it.
        #[arg(long)]
        name: String,
        /// An appid the key may read; repeat for several.
        #[arg(long = "appid", required = true)]
        appids: Vec<String>,
        /// Forbid passive refreshes (…/refresh?access_token=FAILED) with this key.
        #[arg(long)]
        no_refresh: bool,
        /// A network (CIDR) the key may be used from; repeat for several. Default: anywhere.
        #[arg(long = "allow", value_name = "CIDR")]
        networks: Vec<String>,
        #[command(flatten)]
        limit: LimitArgs,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Set a key's passive-refresh limit (by id or name), or give it back the server's default
    /// (http.refresh_burst, http.refresh_per_minute). Servers apply it within
    /// consumer_keys_reload_ms.
    ///
    /// Example: wetoken-cli key limit mall-api --refresh-burst 20 --refresh-per-minute 12
    Limit {
        /// The key's id (from `key list`) or name.
        key: String,
        #[command(flatten)]
        limit: LimitArgs,
        /// Use the server's default limit again.
        #[arg(long, conflicts_with_all = ["refresh_burst", "refresh_per_minute"])]
        default: bool,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// List the keys: name, id, scope, when made, when revoked. Never the keys themselves.
    List {
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Revoke a key, by id or name. Servers stop accepting it within consumer_keys_reload_ms.
    Revoke {
        /// The key's id (from `key list`) or name.
        key: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
}

/// A key's passive-refresh limit: a token bucket of `--refresh-burst` reports, refilled at
/// `--refresh-per-minute`. Both or neither; neither takes the server's default.
#[derive(clap::Args)]
pub(crate) struct LimitArgs {
    /// How many passive-refresh reports the key may make at once (1 to 1000).
    #[arg(long, requires = "refresh_per_minute")]
    refresh_burst: Option<u32>,
    /// How many reports a minute refill them (1 to 6000).
    #[arg(long, requires = "refresh_burst")]
    refresh_per_minute: Option<u32>,
}

impl LimitArgs {
    fn limit(&self) -> anyhow::Result<Option<RefreshLimit>> {
        match (self.refresh_burst, self.refresh_per_minute) {
            (Some(burst), Some(per_minute)) => Ok(Some(RefreshLimit::new(burst, per_minute)?)),
            _ => Ok(None),
        }
    }
}

pub(crate) async fn run(action: KeyAction) -> anyhow::Result<()> {
    match action {
        KeyAction::Add {
            name,
            appids,
            no_refresh,
            networks,
            limit,
            db,
        } => {
            let refresh_limit = limit.limit()?;
            if no_refresh && refresh_limit.is_some() {
                anyhow::bail!(
                    "--no-refresh forbids passive refreshes: a refresh limit means nothing with it"
                );
            }
            let new = NewConsumerKey {
                refresh_limit,
                name,
                appids: appids
                    .iter()
                    .map(|a| AppId::parse(a))
                    .collect::<Result<_, _>>()?,
                allow_refresh: !no_refresh,
                networks: networks
                    .iter()
                    .map(|n| parse_network(n))
                    .collect::<Result<_, _>>()?,
            };
            let store = db.open_installed().await?;
            if store
                .migration_status()
                .await?
                .iter()
                .any(|(_, done)| !done)
            {
                anyhow::bail!(
                    "the database has pending migrations: run wetoken-cli migrate up first"
                );
            }
            let issued = store
                .add_consumer_key(&new, Utc::now())
                .await
                .context("adding the key")?;
            // A typo in an appid would make a key that opens nothing: say so, but keep the key,
            // since keys may be made before their apps are added.
            for appid in &new.appids {
                match store.known_app_info(appid).await {
                    Err(wetoken_core::Error::UnknownApp(_)) => eprintln!(
                        "warning: no app {appid} is registered: the key covers it, but reads of it \
                         answer 90404 until `wetoken-cli app add` adds it"
                    ),
                    Err(e) => return Err(e).context("looking up the key's apps"),
                    Ok(_) => {}
                }
            }
            eprintln!(
                "added key {} ({}); it is shown once, here, and cannot be read back:",
                issued.id, new.name
            );
            println!("{}", issued.key.expose());
        }
        KeyAction::List { db } => {
            let store = db.open_installed().await?;
            let keys = store.consumer_keys().await?;
            if keys.is_empty() {
                eprintln!("no consumer keys: token reads answer only reader_networks");
            }
            println!(
                "ID           NAME                 REFRESH     CREATED               REVOKED               APPIDS / NETWORKS"
            );
            for k in keys {
                let appids: Vec<&str> = k.appids.iter().map(String::as_str).collect();
                let networks: Vec<String> = k.networks.iter().map(ToString::to_string).collect();
                let networks = if networks.is_empty() {
                    "anywhere".to_owned()
                } else {
                    networks.join(",")
                };
                println!(
                    "{:<12} {:<20} {:<11} {:<21} {:<21} {} / {networks}",
                    k.id,
                    k.name,
                    match (k.allow_refresh, k.refresh_limit) {
                        (false, _) => "no".to_owned(),
                        (true, None) => "default".to_owned(),
                        (true, Some(l)) => format!("{}+{}/min", l.burst(), l.per_minute()),
                    },
                    k.create_time.format("%Y-%m-%d %H:%M:%SZ"),
                    k.revoke_time.map_or_else(
                        || "-".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string()
                    ),
                    appids.join(","),
                );
            }
        }
        KeyAction::Limit {
            key,
            limit,
            default,
            db,
        } => {
            let limit = limit.limit()?;
            if limit.is_none() && !default {
                anyhow::bail!(
                    "give --refresh-burst and --refresh-per-minute, or --default for the server's"
                );
            }
            let store = db.open_installed().await?;
            let id = store.set_key_refresh_limit(&key, limit).await?;
            match limit {
                Some(limit) => println!("key {id}: passive refreshes limited to {limit}"),
                None => println!("key {id}: the server's default passive-refresh limit"),
            }
        }
        KeyAction::Revoke { key, db } => {
            let store = db.open_installed().await?;
            let id = store.revoke_consumer_key(&key, Utc::now()).await?;
            println!("revoked key {id}");
        }
    }
    Ok(())
}
