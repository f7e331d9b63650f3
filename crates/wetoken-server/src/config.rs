//! Settings, layered with figment: built-in defaults, then `wetoken.toml`, then `WETOKEN_*`
//! environment variables (`__` separates a section: `WETOKEN_REFRESH__MARGIN_SECS`), then
//! command-line flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use wetoken_core::{DatabaseOptions, EngineConfig, WeChatOptions};

/// Everything `wetoken-server start` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://…`, `mysql://…` or `postgres://…`.
    pub database_url: String,
    /// The most connections the database pool opens.
    pub database_max_connections: u32,
    /// Whether `start` applies pending migrations itself.
    pub auto_migrate: bool,
    /// WeChat's API root.
    pub wechat_base_url: String,
    /// The longest one call to WeChat may take, in seconds.
    pub wechat_timeout_secs: u64,
    /// API roots tried in order when `wechat_base_url` cannot be connected to. Unset: WeChat's
    /// disaster-recovery domain when `wechat_base_url` is WeChat's default, none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_fallback_urls: Option<Vec<String>>,
    /// WeCom's API root, for apps of kind `work`.
    pub wechat_work_base_url: String,
    /// The key the admin routes (`/wechat/app/*`, the status page) require as
    /// `Authorization: Bearer <key>`. Unset, they answer only callers in `admin_networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    /// A file holding the admin key (its first line), for secrets mounted as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key_file: Option<std::path::PathBuf>,
    /// Where the admin routes may be called from while no admin key is set (CIDR blocks).
    pub admin_networks: Vec<String>,
    /// How credentials are refreshed.
    pub refresh: EngineConfig,
    /// Limits of the HTTP server.
    pub http: HttpSettings,
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// How long a client may take to send its request headers, in seconds.
    pub header_read_timeout_secs: u64,
    /// How long one request may take, in seconds.
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests, in seconds.
    pub shutdown_timeout_secs: u64,
    /// The most connections served at once; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            database_url: "sqlite://wetoken.db".into(),
            database_max_connections: 16,
            auto_migrate: true,
            wechat_base_url: WeChatOptions::default().base_url,
            wechat_timeout_secs: 10,
            wechat_fallback_urls: None,
            wechat_work_base_url: WeChatOptions::default().work_base_url,
            admin_key: None,
            admin_key_file: None,
            admin_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            refresh: EngineConfig::default(),
            http: HttpSettings::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            shutdown_timeout_secs: 10,
            max_connections: 10_000,
        }
    }
}

/// The prefix of the environment variables that configure the server.
pub const ENV_PREFIX: &str = "WETOKEN_";

impl Settings {
    /// Settings from the defaults, the TOML file at `file` (if it exists), the `WETOKEN_*`
    /// environment, and `overrides` (the command line), each over the one before.
    pub fn load(file: &Path, overrides: Figment) -> Result<Self, Box<figment::Error>> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(
                Env::prefixed(ENV_PREFIX)
                    // WETOKEN_LOG (the log filter) and the test harness's WETOKEN_TEST_*
                    // share the prefix but are not settings.
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        key != "log" && !key.starts_with("test_")
                    })
                    .split("__"),
            )
            .merge(overrides)
            .extract()
            .map_err(Box::new)
    }

    /// The admin key, from `admin_key` or the first line of `admin_key_file`.
    pub fn admin_key(&self) -> Result<Option<String>, String> {
        match (&self.admin_key, &self.admin_key_file) {
            (Some(_), Some(_)) => Err("set admin_key or admin_key_file, not both".into()),
            (Some(key), None) => Ok(Some(key.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading admin_key_file {}: {e}", path.display()))?;
                let key = text.lines().next().unwrap_or_default().trim().to_owned();
                Ok(Some(key))
            }
            (None, None) => Ok(None),
        }
        .and_then(|key| match key {
            Some(key) if key.len() < 16 => {
                Err("the admin key must be at least 16 characters".into())
            }
            key => Ok(key),
        })
    }

    /// The admin networks, parsed.
    pub fn admin_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.admin_networks
            .iter()
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("admin_networks: {n:?} is not an address or CIDR block"))
            })
            .collect()
    }

    /// The database part, as the engine takes it.
    pub fn database(&self) -> DatabaseOptions {
        let mut options = DatabaseOptions::new(self.database_url.clone());
        options.max_connections = self.database_max_connections;
        options
    }

    /// The WeChat part, as the engine takes it.
    pub fn wechat(&self) -> WeChatOptions {
        let defaults = WeChatOptions::default();
        let fallback_urls = match &self.wechat_fallback_urls {
            Some(urls) => urls.clone(),
            None if self.wechat_base_url == defaults.base_url => defaults.fallback_urls.clone(),
            None => Vec::new(),
        };
        WeChatOptions {
            base_url: self.wechat_base_url.clone(),
            fallback_urls,
            work_base_url: self.wechat_work_base_url.clone(),
            timeout: Duration::from_secs(self.wechat_timeout_secs),
            ..defaults
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::{Jail, Provider};

    #[test]
    fn layers_override_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "wetoken.toml",
                "listen = \"127.0.0.1:1000\"\ndatabase_url = \"sqlite://file.db\"\n[refresh]\nmargin_secs = 100\n",
            )?;
            jail.set_env("WETOKEN_DATABASE_URL", "sqlite://env.db");
            jail.set_env("WETOKEN_REFRESH__CONCURRENCY", "9");
            jail.set_env("WETOKEN_TEST_DATABASES", "sqlite");
            jail.set_env("WETOKEN_LOG", "debug");
            let flags = Figment::new().merge(("listen", "127.0.0.1:2000"));
            let s = Settings::load(Path::new("wetoken.toml"), flags).map_err(|e| *e)?;
            assert_eq!(s.listen, "127.0.0.1:2000".parse().unwrap());
            assert_eq!(s.database_url, "sqlite://env.db");
            assert_eq!(s.refresh.margin_secs, 100);
            assert_eq!(s.refresh.concurrency, 9);
            assert_eq!(s.refresh.refresh_ahead_secs, 1200);
            Ok(())
        });
    }

    #[test]
    fn unknown_settings_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("WETOKEN_LISTNE", "127.0.0.1:1");
            let err = Settings::load(Path::new("absent.toml"), Figment::new()).unwrap_err();
            assert!(err.to_string().contains("listne"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let example = include_str!("../../../deploy/wetoken.toml");
        let parsed: Settings = Figment::from(Toml::string(example)).extract().unwrap();
        assert_eq!(parsed, Settings::default());
        // Every field is in the example, so an operator sees every setting.
        let keys = Figment::from(Toml::string(example));
        let defaults = Figment::from(Serialized::defaults(Settings::default()));
        for (section, dict) in defaults.data().unwrap().values().flat_map(|d| d.iter()) {
            match dict.as_dict() {
                Some(inner) => {
                    for key in inner.keys() {
                        assert!(
                            keys.contains(&format!("{section}.{key}")),
                            "{section}.{key}"
                        );
                    }
                }
                None => assert!(keys.contains(section), "{section}"),
            }
        }
    }

    #[test]
    fn wechat_falls_back_to_its_second_domain_only_by_default() {
        let s = Settings::default();
        assert_eq!(s.wechat().fallback_urls, ["https://api2.weixin.qq.com"]);
        let mock = Settings {
            wechat_base_url: "http://127.0.0.1:9998".into(),
            ..Settings::default()
        };
        assert!(mock.wechat().fallback_urls.is_empty());
        let chosen = Settings {
            wechat_fallback_urls: Some(vec!["http://b".into()]),
            ..mock
        };
        assert_eq!(chosen.wechat().fallback_urls, ["http://b"]);
    }

    #[test]
    fn defaults_listen_on_9999_with_sqlite() {
        let s = Settings::default();
        assert_eq!(s.listen.port(), 9999);
        assert!(s.database_url.starts_with("sqlite://"));
        s.refresh.validate().unwrap();
    }
}
