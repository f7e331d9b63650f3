//! The server's nodes in a configuration registry: its settings, its database, and its
//! announcement while it runs. The layout (`docs/registry.md`):
//!
//! - `/<platform>/wetoken-server/<cluster>/conf`: the server's settings, as JSON with the keys of
//!   `wetoken.toml`;
//! - `/<platform>/var/db/<db-name>`: the database, as the Go wetoken kept it;
//! - `/<platform>/wetoken-server/<cluster>/servers/<host:port>`: one ephemeral node per live
//!   server.

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use figment::Figment;
use figment::providers::Serialized;
use serde_json::{Value, json};
use wetoken_core::{EngineConfig, Store};
use wetoken_registry::{Registration, Registry, RegistryError, database};
use wetoken_server::Settings;

/// One server cluster's nodes in one registry.
pub struct ServerNodes {
    registry: Registry,
    cluster: String,
    platform: String,
    conf: String,
    db: String,
    servers: String,
}

impl ServerNodes {
    pub async fn open(
        url: &str,
        platform: &str,
        cluster: &str,
        db_name: &str,
    ) -> anyhow::Result<Self> {
        let conf =
            wetoken_registry::server_settings_node(platform, cluster).map_err(|e| anyhow!(e))?;
        let servers = wetoken_registry::servers_node(platform, cluster).map_err(|e| anyhow!(e))?;
        let db = wetoken_registry::database_node(platform, db_name).map_err(|e| anyhow!(e))?;
        let registry = Registry::open(url)
            .await
            .with_context(|| format!("reading the settings node {conf}"))?;
        Ok(Self {
            registry,
            cluster: cluster.to_owned(),
            platform: platform.to_owned(),
            conf,
            db,
            servers,
        })
    }

    fn hint(&self) -> String {
        format!(
            "run `wetoken-server install -r {} -c {} --platform {}` first",
            self.registry.url(),
            self.cluster,
            self.platform
        )
    }

    /// Reads a node, saying how to make it when it is missing.
    async fn read(&self, path: &str) -> anyhow::Result<Value> {
        match self.registry.read_json(path).await {
            Ok(value) => Ok(value),
            Err(e @ RegistryError::Missing { .. }) => Err(anyhow!("{e}: {}", self.hint())),
            Err(e) => Err(e.into()),
        }
    }

    /// The settings the registry holds: the settings node, with the database node's URL and
    /// pool settings over it. Each node is checked here, so a bad one is named.
    pub async fn settings_layer(&self) -> anyhow::Result<Figment> {
        let conf = self.read(&self.conf).await?;
        let malformed = |cause: String| RegistryError::Malformed {
            registry: self.registry.url().to_owned(),
            path: self.conf.clone(),
            cause,
        };
        if !conf.is_object() {
            return Err(malformed("the settings node must be a JSON object".into()).into());
        }
        let checked: Result<Settings, _> = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Settings::registry_layer(&conf))
            .extract();
        if let Err(e) = checked {
            return Err(malformed(e.to_string()).into());
        }
        let node = self.read(&self.db).await?;
        let node = database::parse(&node).map_err(|cause| RegistryError::Malformed {
            registry: self.registry.url().to_owned(),
            path: self.db.clone(),
            cause,
        })?;
        let mut layer = Settings::registry_layer(&conf).merge(("database_url", node.url));
        if let Some(max_open) = node.max_open {
            layer = layer.merge(("database_max_connections", max_open));
        }
        if let Some(lifetime) = node.lifetime_secs {
            layer = layer.merge(("database_max_lifetime_secs", lifetime));
        }
        Ok(layer)
    }

    /// Announces a running server at `servers/<host:port>`.
    pub async fn announce(
        &self,
        settings: &Settings,
        bound: SocketAddr,
    ) -> anyhow::Result<Registration> {
        let address = match &settings.advertise {
            Some(address) => address.clone(),
            None if bound.ip().is_unspecified() => {
                format!("{}:{}", wetoken_server::hostname(), bound.port())
            }
            None => bound.to_string(),
        };
        let ok = !address.is_empty()
            && address
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b));
        if !ok {
            bail!("advertise {address:?} must be host:port");
        }
        let path = format!("{}/{address}", self.servers);
        let value = json!({
            "addr": address,
            "listen": bound.to_string(),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": chrono::Utc::now().to_rfc3339(),
        });
        let registration = self
            .registry
            .register(&path, &value)
            .await
            .context("announcing the server")?;
        tracing::info!(registry = %self.registry.url(), %path, "announced");
        Ok(registration)
    }

    /// `wetoken-server install`: the settings node, the database node, the tables.
    pub async fn install(
        &self,
        listen: SocketAddr,
        database_url: Option<&str>,
        force: bool,
    ) -> anyhow::Result<()> {
        let url = self.registry.url();
        if self.registry.exists(&self.conf).await? {
            println!("kept the settings at {url} {}", self.conf);
        } else {
            let defaults = json!({ "listen": listen, "refresh": EngineConfig::default() });
            self.registry.write_json(&self.conf, &defaults).await?;
            println!("wrote the default settings to {url} {}", self.conf);
        }
        if self.registry.exists(&self.db).await? {
            println!("kept the database node at {url} {}", self.db);
            if database_url.is_some() {
                println!("  (--database-url was not used: the node is there already)");
            }
        } else {
            let given = match database_url {
                Some(given) => given.to_owned(),
                None if std::io::stdin().is_terminal() => ask_database_url()?,
                None => bail!(
                    "registry {url}: no node at {}: pass --database-url (mysql://…, postgres://… or sqlite://…), or run install at a terminal to be asked",
                    self.db
                ),
            };
            let node = json!({ "url": given });
            database::parse(&node).map_err(|e| anyhow!("--database-url: {e}"))?;
            self.registry.write_json(&self.db, &node).await?;
            println!("wrote the database node {url} {}", self.db);
        }
        let layer = self.settings_layer().await?;
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(layer)
            .extract()
            .context("reading the registry's settings")?;
        let store = Store::connect(&settings.database())
            .await
            .with_context(|| {
                format!(
                    "opening the database that {} names ({})",
                    self.db,
                    wetoken_server::redact_url(&settings.database_url)
                )
            })?;
        let mut takeover = settings.takeover().map_err(|e| anyhow!(e))?;
        takeover.force |= force;
        let installed = store
            .install(&takeover)
            .await
            .context("creating wetoken's tables")?;
        print!("{installed}");
        Ok(())
    }
}

/// Asks at the terminal for the database URL, until one parses (three tries). The answer is not
/// echoed: it holds the database password; it is shown back with the password hidden.
fn ask_database_url() -> anyhow::Result<String> {
    for _ in 0..3 {
        let given = rpassword::prompt_password(
            "Database for wetoken (mysql://user:pass@host:3306/db, postgres://user:pass@host/db or sqlite://path; not echoed): ",
        )
        .context("reading the answer")?;
        let given = given.trim();
        match database::parse(&json!({ "url": given })) {
            Ok(_) => {
                eprintln!("using {}", wetoken_server::redact_url(given));
                return Ok(given.to_owned());
            }
            Err(e) => eprintln!("{e}"),
        }
    }
    bail!("no usable database URL given: the database node is still absent")
}
