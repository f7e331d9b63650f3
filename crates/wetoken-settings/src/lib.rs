//! wetoken's settings, layered with figment: built-in defaults, then `wetoken.toml`, then
//! `WETOKEN_*` environment variables (`__` separates a section: `WETOKEN_REFRESH__MARGIN_SECS`),
//! then command-line flags. `wetoken-server` and `wetoken-cli` both read them here, so the two
//! agree on the database, the master key and where WeChat is.
#![deny(missing_docs)]

mod redact;
mod sources;

pub use redact::redact_url;
pub use sources::{SERVICE_LINKS_IGNORED, config_file, flags};

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use wetoken_core::{
    DatabaseOptions, EngineConfig, GoZone, KeySources, Keyring, Secret, Takeover, WeChatOptions,
};

/// Everything `wetoken-server start` can be told. Its `Debug` hides the keys and the database
/// password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://…`, `mysql://…` or `postgres://…`.
    pub database_url: String,
    /// The most connections the database pool opens.
    pub database_max_connections: u32,
    /// How long a database connection may live before it is replaced, in seconds; unset, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_max_lifetime_secs: Option<u64>,
    /// Whether `start` applies pending migrations itself.
    pub auto_migrate: bool,
    /// The time zone the Go wetoken wrote `expire_date` in, read when taking over its database
    /// (docs/migrating-from-go.md): `database` (the MySQL server's own, which the Go server's
    /// `now()` used), `UTC`, or an offset such as `+08:00`.
    pub go_time_zone: String,
    /// Take over a Go wetoken's database although a Go server seems to still write to it.
    pub go_takeover_force: bool,
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
    /// A key that reads `/metrics` and nothing else, as `Authorization: Bearer <key>`, so that
    /// Prometheus need not hold the admin key (which `/metrics` takes too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_key: Option<String>,
    /// A file holding the metrics key (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_key_file: Option<std::path::PathBuf>,
    /// Where `/metrics` may be scraped from without a key (CIDR blocks), whether or not keys
    /// are set. Empty by default: `/metrics` then answers as an admin route does, or to the
    /// metrics key.
    pub metrics_networks: Vec<String>,
    /// The `host:port` a server started with a registry announces under
    /// `/<platform>/wetoken-server/<cluster>/servers/`. Unset: the listen address, or this host's
    /// name and the listen port when listening on every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The master key app secrets are encrypted under: 32 bytes in base64. Unset (with
    /// `master_key_file`), secrets are stored in plain text and the server warns at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<String>,
    /// A file holding the master key (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<std::path::PathBuf>,
    /// During a rotation, the previous master key: read, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_previous: Option<String>,
    /// A file holding the previous master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_previous_file: Option<std::path::PathBuf>,
    /// With a master key: refuse a plain value where an encrypted one belongs (written by a
    /// process without the key), instead of using it with a warning.
    #[serde(default)]
    pub require_encrypted: bool,
    /// Where the token, ticket and jssdk routes may be called from while no consumer key exists
    /// (CIDR blocks). Once a key is added (`wetoken-cli key add`), every caller needs one.
    pub reader_networks: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR blocks). For a request from one of
    /// them, the caller is the last address in `X-Forwarded-For` that is not a trusted proxy
    /// itself: that is the address consumer keys' `--allow` networks and the per-address limits
    /// see. Access by address alone (no keys) is never granted to a forwarded request. Empty:
    /// no proxy is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How often the consumer keys are re-read from the database, in milliseconds, so keys added
    /// or revoked by `wetoken-cli` take effect without a restart.
    pub consumer_keys_reload_ms: u64,
    /// How credentials are refreshed.
    pub refresh: EngineConfig,
    /// Limits of the HTTP server.
    pub http: HttpSettings,
    /// What `/metrics` shows.
    pub metrics: MetricsSettings,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.clone();
        for key in [
            &mut shown.admin_key,
            &mut shown.metrics_key,
            &mut shown.master_key,
            &mut shown.master_key_previous,
        ] {
            if key.is_some() {
                *key = Some("***".into());
            }
        }
        shown.database_url = redact_url(&shown.database_url);
        let text = serde_json::to_string(&shown).map_err(|_| std::fmt::Error)?;
        write!(f, "Settings {text}")
    }
}

/// What `/metrics` shows. Aggregates always (credentials by kind and state, the least time
/// left, upstream calls by endpoint and result); series per app only as `per_app` says, so a
/// scrape stays small at 100,000 apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Which apps get series of their own: `trouble` (the default: credentials halted, out of
    /// budget or failing, at most `per_app_max`), `all` (every app, unbounded: for a few
    /// hundred apps at most), or `none`.
    pub per_app: PerApp,
    /// The most credentials `per_app = "trouble"` shows series of.
    pub per_app_max: u64,
    /// How old, in milliseconds, the totals by state in `/metrics` and at the top of the status
    /// page may be before they are read again (behind the answer, which gets the last
    /// reading): at 100,000 apps they cost a pass over three indexes. 0 reads them every time.
    pub totals_fresh_ms: u64,
}

/// Which apps get per-app series in `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerApp {
    /// None: aggregates only.
    None,
    /// Credentials in trouble, up to `per_app_max`.
    #[default]
    Trouble,
    /// Every app.
    All,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            per_app: PerApp::Trouble,
            per_app_max: 100,
            totals_fresh_ms: 5000,
        }
    }
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
    /// On SIGTERM, how long to go on serving before no longer accepting, in seconds: `/ready`
    /// answers 503 meanwhile and every HTTP/1 answer carries `Connection: close`, so that load
    /// balancers take the server out and keep-alive clients reconnect elsewhere.
    pub drain_secs: u64,
    /// The most connections served at once; further ones are closed at once.
    pub max_connections: usize,
    /// The most connections one source address (an IPv4 address, an IPv6 /64) holds at once;
    /// further ones from it are closed at once, so that one host cannot take every one of
    /// `max_connections`. Behind a proxy or a load balancer that connects from one address,
    /// raise it to `max_connections`.
    pub max_connections_per_address: usize,
    /// How long a connection stays open with no request in progress, in seconds: then it is
    /// closed (HTTP/2: a GOAWAY), whatever pings its peer answers. An idle HTTP/1 connection is
    /// closed after `header_read_timeout_secs` already, if that is shorter.
    pub idle_timeout_secs: u64,
    /// How the credential routes (everything under `/{appid}/wechat/` and `/wx/{appid}/`)
    /// answer errors. The admin and operations routes always use HTTP statuses.
    pub credential_errors: CredentialErrors,
    /// How many passive-refresh reports a consumer key (or, while no keys exist, a caller's
    /// address) may make at once: its bucket's size. A key's own limit (`wetoken-cli key add
    /// --refresh-burst`) overrides it. Per replica.
    pub refresh_burst: u32,
    /// How many reports a minute refill that bucket.
    pub refresh_per_minute: u32,
    /// How far, in seconds, a push's `timestamp` to `/component/{id}/event` may be from the
    /// server's clock, either way: older or newer pushes are refused. Signatures seen are
    /// remembered (cluster-wide) for twice this long, so a replay within the window is refused
    /// too.
    pub push_window_secs: u64,
    /// How many refused pushes (forged, replayed, stale, malformed, for an unknown platform) one
    /// source address may send at once to `/component/{id}/event`: its bucket's size. Pushes
    /// that are accepted cost nothing. Per replica.
    pub push_refusal_burst: u32,
    /// How many refused pushes a minute refill that bucket.
    pub push_refusal_per_minute: u32,
}

impl HttpSettings {
    /// The connection limits, checked: none may be 0.
    pub fn check_connections(&self) -> Result<(), String> {
        for (name, value) in [
            ("http.max_connections", self.max_connections as u64),
            (
                "http.max_connections_per_address",
                self.max_connections_per_address as u64,
            ),
            ("http.idle_timeout_secs", self.idle_timeout_secs),
            (
                "http.header_read_timeout_secs",
                self.header_read_timeout_secs,
            ),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The default passive-refresh limit these settings give, checked.
    pub fn refresh_limit(&self) -> Result<wetoken_core::RefreshLimit, String> {
        wetoken_core::RefreshLimit::new(self.refresh_burst, self.refresh_per_minute)
            .map_err(|e| format!("http.refresh_burst / http.refresh_per_minute: {e}"))
    }

    /// The push route's limit on refused pushes per source address, checked.
    pub fn push_refusal_limit(&self) -> Result<wetoken_core::RefreshLimit, String> {
        wetoken_core::RefreshLimit::new(self.push_refusal_burst, self.push_refusal_per_minute)
            .map_err(|e| format!("http.push_refusal_burst / http.push_refusal_per_minute: {e}"))
    }

    /// The push route's timestamp window, checked: 1 s to a day.
    pub fn push_window(&self) -> Result<std::time::Duration, String> {
        if !(1..=86_400).contains(&self.push_window_secs) {
            return Err("http.push_window_secs must be 1 to 86400".into());
        }
        Ok(std::time::Duration::from_secs(self.push_window_secs))
    }
}

/// How the credential routes answer errors. The body is the same either way:
/// `{"errcode":N,"errmsg":"…"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialErrors {
    /// HTTP 200 with a non-zero `errcode`, as WeChat and the Go wetoken answer. The Go SDK
    /// (`NewDefaultAccessTokenByURL`) reads the body of a 200 only, so this is what it needs to
    /// see wetoken's errcode and errmsg.
    #[default]
    InBody,
    /// The status the errcode stands for (`wetoken_wire::code::http_status`): 401, 404, 503, …
    AsStatus,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            database_url: "sqlite://wetoken.db".into(),
            database_max_connections: 16,
            database_max_lifetime_secs: None,
            auto_migrate: true,
            go_time_zone: "database".into(),
            go_takeover_force: false,
            wechat_base_url: WeChatOptions::default().base_url,
            wechat_timeout_secs: 10,
            wechat_fallback_urls: None,
            wechat_work_base_url: WeChatOptions::default().work_base_url,
            admin_key: None,
            admin_key_file: None,
            admin_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            metrics_key: None,
            metrics_key_file: None,
            metrics_networks: Vec::new(),
            advertise: None,
            master_key: None,
            master_key_file: None,
            master_key_previous: None,
            master_key_previous_file: None,
            require_encrypted: false,
            reader_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            trusted_proxies: Vec::new(),
            consumer_keys_reload_ms: 5000,
            refresh: EngineConfig::default(),
            http: HttpSettings::default(),
            metrics: MetricsSettings::default(),
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
            drain_secs: 0,
            max_connections: 10_000,
            max_connections_per_address: 128,
            idle_timeout_secs: 60,
            credential_errors: CredentialErrors::InBody,
            refresh_burst: wetoken_core::RefreshLimit::DEFAULT.burst(),
            refresh_per_minute: wetoken_core::RefreshLimit::DEFAULT.per_minute(),
            push_window_secs: 300,
            push_refusal_burst: 20,
            push_refusal_per_minute: 60,
        }
    }
}

/// The prefix of the environment variables that configure the server.
pub const ENV_PREFIX: &str = "WETOKEN_";

/// Whether `key` (a `WETOKEN_*` variable's name after the prefix, lower-case) is shaped like the
/// variables Kubernetes injects for a Service whose name starts with `wetoken`:
/// `WETOKEN[_X]_SERVICE_HOST`, `…_SERVICE_PORT[_NAME]`, `…_PORT`, `…_PORT_9999_TCP[_PROTO|_PORT|_ADDR]`.
/// No setting has such a name.
fn is_service_link(key: &str) -> bool {
    let parts: Vec<&str> = key.split('_').collect();
    let is_proto = |p: &str| matches!(p, "tcp" | "udp" | "sctp");
    parts
        .windows(2)
        .any(|w| w == ["service", "host"] || w == ["service", "port"])
        || parts.last() == Some(&"port")
        || parts
            .windows(3)
            .any(|w| w[0] == "port" && w[1].parse::<u16>().is_ok() && is_proto(w[2]))
}

/// The `WETOKEN_*` variables of this process that are taken for Kubernetes service links and
/// ignored, for one warning at start.
pub fn ignored_service_links() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars()
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            is_service_link(&rest).then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// Admin and master keys from examples and documentation, refused so that a copied example
/// never guards a real deployment: any key containing one of these (case aside).
const PLACEHOLDERS: [&str; 6] = [
    "change-me",
    "changeme",
    "replace-me",
    "placeholder",
    "your-key",
    // The base64 of compose's old demo master key, "compose-demo-key-replace-me-now!".
    "y29tcg9zzs1kzw1vlwtles1yzxbsywnllw1llw5vdye=",
];

/// Refuses a key that is a known placeholder.
fn not_placeholder(setting: &str, key: &str) -> Result<(), String> {
    let lower = key.to_ascii_lowercase();
    match PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        Some(_) => Err(format!(
            "{setting} is a placeholder from an example: generate a real one (the admin and \
             metrics keys: `openssl rand -base64 32`; the master key: \
             `wetoken-cli secrets new-key`)"
        )),
        None => Ok(()),
    }
}

impl Settings {
    /// Settings from the defaults, the TOML file at `file` (if it exists), the `WETOKEN_*`
    /// environment, and `overrides` (the command line), each over the one before.
    pub fn load(file: &Path, overrides: Figment) -> Result<Self, Box<figment::Error>> {
        Self::load_with_registry(file, Figment::new(), overrides)
    }

    /// As [`Settings::load`], with the settings a registry holds for the server (its settings
    /// node, and the database its database node names) between the file and the environment.
    pub fn load_with_registry(
        file: &Path,
        registry: Figment,
        overrides: Figment,
    ) -> Result<Self, Box<figment::Error>> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(registry)
            .merge(
                Env::prefixed(ENV_PREFIX)
                    // WETOKEN_LOG (the log filter), the test harness's WETOKEN_TEST_* and the
                    // variables Kubernetes makes for a Service named wetoken share the prefix
                    // but are not settings.
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        key != "log" && !key.starts_with("test_") && !is_service_link(&key)
                    })
                    .split("__"),
            )
            .merge(overrides)
            .extract()
            .map_err(Box::new)
    }

    /// A settings layer for [`Settings::load_with_registry`] from a JSON object with the keys of
    /// `wetoken.toml`, as a registry's settings node holds them. It lives in figment's default
    /// profile, like the file and the environment, so that the order of the layers decides.
    pub fn registry_layer(conf: &serde_json::Value) -> Figment {
        Figment::from(Serialized::defaults(conf))
    }

    /// The admin key, from `admin_key` or the first line of `admin_key_file`, held as a
    /// [`Secret`] from here on, so no `Debug` of what holds it can print it.
    pub fn admin_key(&self) -> Result<Option<Secret>, String> {
        bearer_key("admin", &self.admin_key, &self.admin_key_file)
    }

    /// The metrics key, from `metrics_key` or the first line of `metrics_key_file`, checked as
    /// the admin key is, and refused when it is the admin key: it would then open every admin
    /// route to whoever holds it for scraping.
    pub fn metrics_key(&self) -> Result<Option<Secret>, String> {
        let key = bearer_key("metrics", &self.metrics_key, &self.metrics_key_file)?;
        if let (Some(metrics), Some(admin)) = (&key, self.admin_key()?)
            && metrics.expose() == admin.expose()
        {
            return Err(
                "metrics_key is the admin key: give Prometheus a key of its own, or the admin key \
                 alone"
                    .into(),
            );
        }
        Ok(key)
    }

    /// The networks `/metrics` answers without a key, parsed.
    pub fn metrics_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        parse_networks("metrics_networks", &self.metrics_networks)
    }

    /// The admin networks, parsed.
    pub fn admin_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        parse_networks("admin_networks", &self.admin_networks)
    }

    /// The reader networks, parsed.
    pub fn reader_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        parse_networks("reader_networks", &self.reader_networks)
    }

    /// The trusted proxies, parsed.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        parse_networks("trusted_proxies", &self.trusted_proxies)
    }

    /// The database part, as the engine takes it (without the keyring: see
    /// [`Settings::keyring`]).
    pub fn database(&self) -> DatabaseOptions {
        let mut options = DatabaseOptions::new(self.database_url.clone());
        options.max_connections = self.database_max_connections;
        options.max_lifetime = self.database_max_lifetime_secs.map(Duration::from_secs);
        options
    }

    /// How to take over a database the Go wetoken wrote.
    pub fn takeover(&self) -> Result<Takeover, String> {
        Ok(Takeover {
            zone: GoZone::parse(&self.go_time_zone).map_err(|e| e.to_string())?,
            force: self.go_takeover_force,
        })
    }

    /// The master keys, from `master_key`/`master_key_file` and
    /// `master_key_previous`/`master_key_previous_file` (or their `WETOKEN_*` variables).
    pub fn keyring(&self) -> Result<Option<Arc<Keyring>>, String> {
        for (name, key) in [
            ("master_key", &self.master_key),
            ("master_key_previous", &self.master_key_previous),
        ] {
            if let Some(key) = key {
                not_placeholder(name, key)?;
            }
        }
        let sources = KeySources {
            key: self.master_key.clone(),
            key_file: self.master_key_file.clone(),
            previous: self.master_key_previous.clone(),
            previous_file: self.master_key_previous_file.clone(),
            require_sealed: self.require_encrypted,
        };
        Keyring::load(&sources)
            .map(|k| k.map(Arc::new))
            .map_err(|e| e.to_string())
    }

    /// The WeChat part, as the engine takes it.
    pub fn wechat(&self) -> WeChatOptions {
        WeChatOptions {
            timeout: Duration::from_secs(self.wechat_timeout_secs),
            ..WeChatOptions::with_base_urls(
                &self.wechat_base_url,
                &self.wechat_work_base_url,
                self.wechat_fallback_urls.clone(),
            )
        }
    }
}

/// A bearer key from its setting (`<what>_key`) or the first line of its file
/// (`<what>_key_file`), at least 16 characters and no placeholder, held as a [`Secret`].
fn bearer_key(
    what: &str,
    key: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<Secret>, String> {
    let key = match (key, file) {
        (Some(_), Some(_)) => {
            return Err(format!("set {what}_key or {what}_key_file, not both"));
        }
        (Some(key), None) => key.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {what}_key_file {}: {e}", path.display()))?;
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        (None, None) => return Ok(None),
    };
    if key.len() < 16 {
        return Err(format!("the {what} key must be at least 16 characters"));
    }
    not_placeholder(&format!("{what}_key"), &key)?;
    Ok(Some(Secret::new(key)))
}

fn parse_networks(setting: &str, networks: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    networks
        .iter()
        .map(|n| wetoken_core::keys::parse_network(n).map_err(|e| format!("{setting}: {e}")))
        .collect()
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::{Jail, Provider};

    #[test]
    fn kubernetes_service_links_are_no_settings() {
        for link in [
            "port",
            "port_9999_tcp",
            "port_9999_tcp_proto",
            "port_9999_tcp_port",
            "port_9999_tcp_addr",
            "service_host",
            "service_port",
            "service_port_http",
            "admin_service_host",
            "admin_port_80_tcp",
        ] {
            assert!(is_service_link(link), "{link}");
        }
        for setting in [
            "listen",
            "database_url",
            "refresh__margin_secs",
            "http__body_limit_bytes",
            "admin_key",
            "reader_networks",
        ] {
            assert!(!is_service_link(setting), "{setting}");
        }
        Jail::expect_with(|jail| {
            jail.set_env("WETOKEN_PORT", "tcp://10.0.0.1:9999");
            jail.set_env("WETOKEN_PORT_9999_TCP", "tcp://10.0.0.1:9999");
            jail.set_env("WETOKEN_SERVICE_HOST", "10.0.0.1");
            jail.set_env("WETOKEN_SERVICE_PORT", "9999");
            jail.set_env("WETOKEN_LISTEN", "127.0.0.1:4000");
            let s = Settings::load(Path::new("none.toml"), Figment::new()).map_err(|e| *e)?;
            assert_eq!(s.listen, "127.0.0.1:4000".parse().unwrap());
            assert_eq!(ignored_service_links().len(), 4);
            Ok(())
        });
    }

    #[test]
    fn placeholder_keys_are_refused() {
        let mut s = Settings {
            admin_key: Some("CHANGE-ME-to-a-long-random-string".into()),
            ..Settings::default()
        };
        assert!(s.admin_key().unwrap_err().contains("placeholder"));
        s.admin_key = Some("a-real-key-0123456789abcdef".into());
        assert!(s.admin_key().unwrap().is_some());
        s.master_key = Some("Y29tcG9zZS1kZW1vLWtleS1yZXBsYWNlLW1lLW5vdyE=".into());
        assert!(s.keyring().unwrap_err().contains("placeholder"));
    }

    #[test]
    fn the_metrics_key_is_checked_like_the_admin_key() {
        Jail::expect_with(|jail| {
            jail.set_env("WETOKEN_METRICS_KEY", "a-metrics-key-0123456789");
            jail.set_env("WETOKEN_METRICS_NETWORKS", "[\"10.1.0.0/16\"]");
            let s = Settings::load(Path::new("none.toml"), Figment::new()).map_err(|e| *e)?;
            assert_eq!(
                s.metrics_key().unwrap().unwrap().expose(),
                "a-metrics-key-0123456789"
            );
            assert_eq!(s.metrics_networks().unwrap().len(), 1);
            Ok(())
        });
        let refused = |metrics_key: &str, admin_key: Option<&str>| {
            Settings {
                metrics_key: Some(metrics_key.into()),
                admin_key: admin_key.map(Into::into),
                ..Settings::default()
            }
            .metrics_key()
            .unwrap_err()
        };
        assert!(refused("CHANGE-ME-metrics", None).contains("metrics_key is a placeholder"));
        assert!(refused("short", None).contains("metrics key must be at least 16"));
        let same = "the-same-key-0123456789";
        assert!(refused(same, Some(same)).contains("is the admin key"));
        let both = Settings {
            metrics_key: Some("a-metrics-key-0123456789".into()),
            metrics_key_file: Some("/nonexistent".into()),
            ..Settings::default()
        };
        assert!(both.metrics_key().unwrap_err().contains("not both"));
        let bad_network = Settings {
            metrics_networks: vec!["10.0.0.0/33".into()],
            ..Settings::default()
        };
        assert!(
            bad_network
                .metrics_networks()
                .unwrap_err()
                .contains("metrics_networks")
        );
        assert!(Settings::default().metrics_key().unwrap().is_none());
    }

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
    fn the_registry_layers_between_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "wetoken.toml",
                "listen = \"127.0.0.1:1000\"\nwechat_timeout_secs = 3\n[refresh]\nmargin_secs = 100\nconcurrency = 2\n",
            )?;
            jail.set_env("WETOKEN_REFRESH__CONCURRENCY", "9");
            let registry = Settings::registry_layer(&serde_json::json!({
                "listen": "127.0.0.1:2000",
                "database_url": "mysql://registry@db/wetoken",
                "refresh": {"margin_secs": 200, "concurrency": 5},
            }));
            let flags = Figment::new().merge(("listen", "127.0.0.1:3000"));
            let s = Settings::load_with_registry(Path::new("wetoken.toml"), registry, flags)
                .map_err(|e| *e)?;
            assert_eq!(
                s.wechat_timeout_secs, 3,
                "the file, where nothing is over it"
            );
            assert_eq!(s.refresh.margin_secs, 200, "the registry over the file");
            assert_eq!(s.database_url, "mysql://registry@db/wetoken");
            assert_eq!(
                s.refresh.concurrency, 9,
                "the environment over the registry"
            );
            assert_eq!(
                s.listen,
                "127.0.0.1:3000".parse().unwrap(),
                "flags over all"
            );
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
    fn debug_hides_the_keys() {
        let s = Settings {
            admin_key: Some("admin-key-0123456789".into()),
            metrics_key: Some("metrics-key-0123456789".into()),
            master_key: Some("bWFzdGVyLWtleS0wMTIzNDU2Nzg5MDEyMzQ1Njc4OTA=".into()),
            master_key_previous: Some("cHJldmlvdXMta2V5LTAxMjM0NTY3ODkwMTIzNDU2Nzg=".into()),
            database_url: "mysql://u:pw-9876@h/db".into(),
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        for secret in [
            "admin-key-0123",
            "metrics-key-0123",
            "bWFzdGVy",
            "cHJldmlv",
            "pw-9876",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("listen"), "{shown}");
    }

    #[test]
    fn a_fresh_install_reads_and_administers_from_loopback_only() {
        let s = Settings::default();
        for networks in [s.reader_networks().unwrap(), s.admin_networks().unwrap()] {
            for local in ["127.0.0.1", "127.0.0.2", "::1"] {
                let ip: std::net::IpAddr = local.parse().unwrap();
                assert!(networks.iter().any(|n| n.contains(&ip)), "{local}");
            }
            for remote in [
                "10.1.2.3",
                "192.168.1.1",
                "172.17.0.2",
                "::ffff:10.0.0.1",
                "fe80::1",
            ] {
                let ip: std::net::IpAddr = remote.parse().unwrap();
                assert!(!networks.iter().any(|n| n.contains(&ip)), "{remote}");
            }
        }
    }

    #[test]
    fn defaults_listen_on_9999_with_sqlite() {
        let s = Settings::default();
        assert_eq!(s.listen.port(), 9999);
        assert!(s.database_url.starts_with("sqlite://"));
        s.refresh.validate().unwrap();
    }
}
