//! `wetoken-cli key add|list|revoke`: consumer keys, the credentials other services read tokens
//! with.
//!
//! A running server re-reads the keys every `consumer_keys_reload_ms` (5 s), so what these
//! commands change takes effect without a restart.

use anyhow::Context;
use chrono::Utc;
use wetoken_core::keys::parse_network;
use wetoken_core::{AppId, NewConsumerKey};

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

pub(crate) async fn run(action: KeyAction) -> anyhow::Result<()> {
    match action {
        KeyAction::Add {
            name,
            appids,
            no_refresh,
            networks,
            db,
        } => {
            let new = NewConsumerKey {
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
                "ID           NAME                 REFRESH  CREATED               REVOKED               APPIDS / NETWORKS"
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
                    "{:<12} {:<20} {:<8} {:<21} {:<21} {} / {networks}",
                    k.id,
                    k.name,
                    if k.allow_refresh { "yes" } else { "no" },
                    k.create_time.format("%Y-%m-%d %H:%M:%SZ"),
                    k.revoke_time.map_or_else(
                        || "-".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string()
                    ),
                    appids.join(","),
                );
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
