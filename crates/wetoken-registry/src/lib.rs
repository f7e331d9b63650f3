//! wetoken's configuration registry.
//!
//! The Go wetoken was deployed from a registry in which each service found its settings at paths
//! named after its platform; its database settings live at `/<platform>/var/db/<name>`.
//! This crate reads and writes such nodes, selected by URL:
//!
//! - `fs://<dir>`: each node is a file under `<dir>` at the node's path. Nothing to install.
//! - `zk://host[:port][,host[:port]…][/chroot]`: Apache ZooKeeper (port 2181 when none is given;
//!   an IPv6 host in brackets, `[::1]:2181`).
//!   Each node's data is its JSON text.
//!
//! Besides reading and writing nodes, a server announces itself with [`Registry::register`]: an
//! ephemeral node that lives while the server does (on ZooKeeper, while its session does, and it
//! is made again after a session loss), and a file on `fs://` that a clean shutdown removes.
//!
//! [`database`] turns a database node (the Go/hydra form or a plain URL) into connection settings.
#![deny(missing_docs)]

pub mod database;
mod fs;
mod zk;

use serde_json::Value;

/// Why a registry or a node could not be used. Every message names the registry, the path and
/// the cause.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry URL is not one this build understands.
    #[error("registry {registry}: {reason}")]
    Unsupported {
        /// The URL given.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The registry cannot be reached (a missing directory, an unreachable server). From
    /// [`Registry::open`], which reads no node, it names no path: callers add the node they were
    /// about to read.
    #[error("registry {registry} is unreachable: {cause}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// What failed.
        cause: String,
    },
    /// No node at that path.
    #[error("registry {registry}: no node at {path}")]
    Missing {
        /// The registry.
        registry: String,
        /// The node's path.
        path: String,
    },
    /// The node is not valid JSON, or not of the expected shape.
    #[error("registry {registry}: node {path} is malformed: {cause}")]
    Malformed {
        /// The registry.
        registry: String,
        /// The node's path.
        path: String,
        /// What is wrong.
        cause: String,
    },
    /// The node could not be read or written.
    #[error("registry {registry}: node {path}: {cause}")]
    Io {
        /// The registry.
        registry: String,
        /// The node's path.
        path: String,
        /// What failed.
        cause: String,
    },
}

/// Checks a name that becomes one segment of a node path.
fn segment(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be letters, digits, '_', '-' or '.'"
        ))
    }
}

/// Splits `host`, `host:port`, `[ipv6]` or `[ipv6]:port` into the host (an IPv6 address keeps
/// its brackets) and the port, `default` when none is given. `None` for anything else: a host
/// of other than letters, digits, '.', '-' and '_'; an IPv6 address without brackets or of other
/// than hex digits, ':' and '.'; a port that is not 1 to 65535.
fn host_port(text: &str, default: u16) -> Option<(&str, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (address, after) = rest.split_once(']')?;
            let ok = !address.is_empty()
                && address
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            (ok.then_some(&text[..address.len() + 2])?, port)
        }
        None => {
            let (host, port) = match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            (ok.then_some(host)?, port)
        }
    };
    let port = match port {
        None => default,
        Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0)?,
    };
    Some((host, port))
}

/// The path of a platform's database node, `/<platform>/var/db/<name>`.
pub fn database_node(platform: &str, name: &str) -> Result<String, String> {
    segment("platform", platform)?;
    segment("database name", name)?;
    Ok(format!("/{platform}/var/db/{name}"))
}

/// The path of a server cluster's settings node, `/<platform>/wetoken-server/<cluster>/conf`.
pub fn server_settings_node(platform: &str, cluster: &str) -> Result<String, String> {
    segment("platform", platform)?;
    segment("cluster", cluster)?;
    Ok(format!("/{platform}/wetoken-server/{cluster}/conf"))
}

/// The path under which a server cluster's live servers announce themselves,
/// `/<platform>/wetoken-server/<cluster>/servers`; each server's node is named `<host:port>`.
pub fn servers_node(platform: &str, cluster: &str) -> Result<String, String> {
    segment("platform", platform)?;
    segment("cluster", cluster)?;
    Ok(format!("/{platform}/wetoken-server/{cluster}/servers"))
}

/// A registry, opened from its URL.
#[derive(Clone)]
pub struct Registry {
    url: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Fs(fs::FsRegistry),
    Zk(zk::ZkRegistry),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

/// A server's announcement of itself, made by [`Registry::register`]. It lives until
/// [`Registration::close`] (which removes it) or until it is dropped (on ZooKeeper the session
/// ends and ZooKeeper removes the node; on `fs://` the file is removed).
pub struct Registration {
    inner: RegistrationInner,
}

enum RegistrationInner {
    Fs(fs::FsRegistration),
    Zk(zk::ZkRegistration),
}

impl Registration {
    /// Removes the node and stops keeping it.
    pub async fn close(self) {
        match self.inner {
            RegistrationInner::Fs(r) => r.close(),
            RegistrationInner::Zk(r) => r.close().await,
        }
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        match &self.inner {
            RegistrationInner::Fs(r) => r.path(),
            RegistrationInner::Zk(r) => r.path(),
        }
    }
}

/// A node path, `/segment/segment…`, as a path relative to the registry's root: never empty, never
/// absolute, without empty, `.` or `..` segments, so joining it to the root cannot leave the root.
pub fn node_relative_path(path: &str) -> Result<&str, String> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    let ok = !relative.is_empty()
        && relative
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(relative)
    } else {
        Err("a node path is /segment/segment…, without empty, '.' or '..' segments".into())
    }
}

/// Entry points for the fuzz targets in `fuzz/`, which property tests also run. Not an API.
#[doc(hidden)]
pub mod fuzz {
    use std::path::{Component, Path};

    /// The `dsn` target: translates `data` as a Go MySQL DSN. A translation must be a URL whose
    /// authority ends where its path starts, so nothing in the DSN can move the host, the
    /// database or the parameters to another part of the URL.
    pub fn dsn(data: &[u8]) {
        let Ok(dsn) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(url) = crate::database::go_mysql_dsn_to_url(dsn) {
            check_url(dsn, &url);
        }
    }

    fn check_url(input: &str, url: &str) {
        let rest = url
            .strip_prefix("mysql://")
            .unwrap_or_else(|| panic!("{input:?} gave {url:?}"));
        let end = rest
            .find(['/', '?', '#'])
            .unwrap_or_else(|| panic!("{input:?} gave {url:?}: no path"));
        assert_eq!(&rest[end..=end], "/", "{input:?} gave {url:?}");
        let authority = &rest[..end];
        assert!(
            authority.matches('@').count() <= 1,
            "{input:?} gave {url:?}"
        );
        assert!(
            !url.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#'),
            "{input:?} gave {url:?}"
        );
        let path_and_query = &rest[end + 1..];
        let path = path_and_query.split('?').next().unwrap_or_default();
        assert!(!path.contains('/'), "{input:?} gave {url:?}");
    }

    /// The `node` target: a node path, then a newline, then the node's JSON. The path must stay
    /// under the registry's root; a parsed database node must name a supported URL.
    pub fn node(data: &[u8]) {
        let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let (path, json) = (&data[..split], data.get(split + 1..).unwrap_or_default());
        if let Ok(path) = std::str::from_utf8(path) {
            if let Ok(relative) = crate::node_relative_path(path) {
                assert!(
                    Path::new(relative)
                        .components()
                        .all(|c| matches!(c, Component::Normal(_))),
                    "{path:?} escapes the root"
                );
            }
            if let Some((platform, name)) = path.split_once(' ')
                && let Ok(node) = crate::database_node(platform, name)
            {
                crate::node_relative_path(&node).expect("a database node path is a node path");
            }
        }
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(json)
            && let Ok(node) = crate::database::parse(&value)
        {
            let scheme = node.url.split("://").next().unwrap_or_default();
            assert!(
                matches!(scheme, "mysql" | "postgres" | "postgresql" | "sqlite"),
                "{}",
                node.url
            );
            if node.url.starts_with("mysql://") && value.get("url").is_none() {
                check_url(&value.to_string(), &node.url);
            }
        }
    }
}

impl Registry {
    /// Opens the registry at `url`: `fs://<dir>` or `zk://host[:port][,host[:port]…][/chroot]`.
    /// A ZooKeeper registry is connected to here, and an unreachable one is an error after
    /// `zk::CONNECT_TIMEOUT`.
    pub async fn open(url: &str) -> Result<Registry, RegistryError> {
        let unsupported = |reason: &str| RegistryError::Unsupported {
            registry: url.to_owned(),
            reason: reason.to_owned(),
        };
        let backend = if let Some(dir) = url.strip_prefix("fs://") {
            if dir.is_empty() {
                return Err(unsupported("fs:// needs a directory, as fs:///etc/wetoken"));
            }
            Backend::Fs(fs::FsRegistry::open(url, dir)?)
        } else if let Some(rest) = url.strip_prefix("zk://") {
            Backend::Zk(zk::ZkRegistry::open(url, rest).await?)
        } else {
            return Err(unsupported(
                "expected fs://<dir> or zk://host[:port][,host[:port]…][/chroot]",
            ));
        };
        Ok(Registry {
            url: url.to_owned(),
            backend,
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node at `path`, parsed as JSON.
    pub async fn read_json(&self, path: &str) -> Result<Value, RegistryError> {
        let bytes = self
            .read(path)
            .await?
            .ok_or_else(|| RegistryError::Missing {
                registry: self.url.clone(),
                path: path.to_owned(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: format!("not JSON: {e}"),
        })
    }

    /// The database node of `platform` named `name`, at `/<platform>/var/db/<name>`, read and
    /// parsed ([`database::parse`]): where the Go wetoken's `wetoken zk://… mall` found the
    /// database to create its tables in. Errors name the registry and the node.
    pub async fn database(
        &self,
        platform: &str,
        name: &str,
    ) -> Result<database::DatabaseNode, RegistryError> {
        let malformed = |path: String, cause: String| RegistryError::Malformed {
            registry: self.url.clone(),
            path,
            cause,
        };
        let path = database_node(platform, name)
            .map_err(|cause| malformed(format!("/{platform}/var/db/{name}"), cause))?;
        let node = self.read_json(&path).await?;
        database::parse(&node).map_err(|cause| malformed(path, cause))
    }

    /// Whether a node is at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool, RegistryError> {
        Ok(self.read(path).await?.is_some())
    }

    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let path = self.check(path)?;
        match &self.backend {
            Backend::Fs(fs) => fs.read(path),
            Backend::Zk(zk) => zk.read(path).await,
        }
    }

    /// Writes `value` as the node at `path`, creating its parents; an existing node is replaced.
    pub async fn write_json(&self, path: &str, value: &Value) -> Result<(), RegistryError> {
        let path = self.check(path)?;
        let text = serde_json::to_vec_pretty(value).map_err(|e| self.io(path, e))?;
        match &self.backend {
            Backend::Fs(fs) => fs.write(path, &text),
            Backend::Zk(zk) => zk.write(path, &text).await,
        }
    }

    /// The names of the children of `path` (none when it does not exist), sorted.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, RegistryError> {
        let path = self.check(path)?;
        let mut names = match &self.backend {
            Backend::Fs(fs) => fs.children(path)?,
            Backend::Zk(zk) => zk.children(path).await?,
        };
        names.sort();
        Ok(names)
    }

    /// Announces a server: an ephemeral node at `path` holding `value`; see [`Registration`].
    /// On ZooKeeper a background task makes the node again whenever the session is lost; a node
    /// another live session holds at `path` is not taken (a warning says so), and the task makes
    /// this one once that node is gone.
    pub async fn register(&self, path: &str, value: &Value) -> Result<Registration, RegistryError> {
        let path = self.check(path)?;
        let text = serde_json::to_vec(value).map_err(|e| self.io(path, e))?;
        let inner = match &self.backend {
            Backend::Fs(fs) => RegistrationInner::Fs(fs.register(path, &text)?),
            Backend::Zk(zk) => RegistrationInner::Zk(zk.register(path, text).await?),
        };
        Ok(Registration { inner })
    }

    /// Checks that `path` is `/segment/segment…` without empty, `.` or `..` segments.
    fn check<'p>(&self, path: &'p str) -> Result<&'p str, RegistryError> {
        let ok = path.starts_with('/')
            && !path.chars().any(char::is_control)
            && node_relative_path(path).is_ok();
        if ok {
            Ok(path)
        } else {
            Err(RegistryError::Malformed {
                registry: self.url.clone(),
                path: path.to_owned(),
                cause: "a node path is /segment/segment…, without empty, '.' or '..' segments"
                    .into(),
            })
        }
    }

    fn io(&self, path: &str, cause: impl std::fmt::Display) -> RegistryError {
        RegistryError::Io {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: cause.to_string(),
        }
    }
}

/// Test support shared by the workspace's test suites.
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The `zk://` URL of the ZooKeeper the tests use, under a chroot no other test uses, or
    /// `None` when the developer opted out with `WETOKEN_TEST_ZK=off`. The address comes from
    /// `WETOKEN_TEST_ZK` (default `127.0.0.1:2181`). Under `CI=true` the opt-out is a failure.
    pub fn zookeeper() -> Option<String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let address = std::env::var("WETOKEN_TEST_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into());
        if address == "off" {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must test ZooKeeper but WETOKEN_TEST_ZK=off"
            );
            eprintln!("not testing ZooKeeper: WETOKEN_TEST_ZK=off");
            return None;
        }
        Some(format!(
            "zk://{address}/wetoken-test/p{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or_default(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fuzz targets' bodies, on arbitrary bytes and on inputs shaped like their inputs.
        #[test]
        fn fuzz_bodies_never_break(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            fuzz::dsn(&data);
            fuzz::node(&data);
        }

        #[test]
        fn fuzz_dsn_on_dsn_shapes(
            user in "[a-z:@/]{0,6}",
            net in "(tcp|unix|tcp6|)",
            addr in "[a-z0-9.:/@?#\\[\\] ]{0,12}",
            db in "[a-z/?]{0,6}",
            query in "[a-z=&,]{0,12}",
        ) {
            fuzz::dsn(format!("{user}@{net}({addr})/{db}?{query}").as_bytes());
        }

        #[test]
        fn fuzz_node_on_node_shapes(
            path in "[a-z./ ]{0,16}",
            dsn in "[a-z0-9:@()/?#]{0,24}",
            provider in "(mysql|postgres|oracle)",
        ) {
            let json = serde_json::json!({"provider": provider, "connString": dsn, "maxOpen": 3});
            fuzz::node(format!("{path}\n{json}").as_bytes());
        }
    }

    #[test]
    fn node_paths() {
        assert_eq!(database_node("mall", "db").unwrap(), "/mall/var/db/db");
        for (p, n) in [("", "db"), ("a/b", "db"), ("mall", ".."), ("mall", "d b")] {
            assert!(database_node(p, n).is_err(), "{p:?} {n:?}");
            assert!(server_settings_node(p, n).is_err(), "{p:?} {n:?}");
        }
        assert_eq!(
            server_settings_node("wetoken", "t").unwrap(),
            "/wetoken/wetoken-server/t/conf"
        );
        assert_eq!(
            servers_node("wetoken", "t").unwrap(),
            "/wetoken/wetoken-server/t/servers"
        );
    }

    #[tokio::test]
    async fn fs_nodes_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("wetoken-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("fs://{}", dir.display());
        let registry = Registry::open(&url).await.unwrap();

        let err = registry
            .read_json("/mall/var/db/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&url) && err.contains("/mall/var/db/db") && err.contains("no node"),
            "{err}"
        );
        assert!(!registry.exists("/mall/var/db/db").await.unwrap());

        registry
            .write_json(
                "/mall/var/db/db",
                &serde_json::json!({"url": "sqlite://x.db"}),
            )
            .await
            .unwrap();
        assert_eq!(
            registry.read_json("/mall/var/db/db").await.unwrap()["url"],
            "sqlite://x.db"
        );
        assert_eq!(registry.children("/mall/var/db").await.unwrap(), ["db"]);
        assert!(registry.children("/nothing").await.unwrap().is_empty());

        std::fs::write(dir.join("mall/var/db/bad"), "{not json").unwrap();
        let err = registry
            .read_json("/mall/var/db/bad")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/mall/var/db/bad") && err.contains("not JSON"),
            "{err}"
        );
        let err = registry
            .read_json("/mall/var")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("directory"), "{err}");

        for bad in ["/mall/../etc", "mall/var", "/", "/a//b", "/a/./b"] {
            assert!(registry.read_json(bad).await.is_err(), "{bad}");
            assert!(
                registry.write_json(bad, &Value::Null).await.is_err(),
                "{bad}"
            );
        }
        let err = Registry::open("fs:///nonexistent/wetoken")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unreachable") && err.contains("/nonexistent/wetoken"),
            "{err}"
        );
        assert!(Registry::open("etcd://x").await.is_err());
        assert!(Registry::open("fs://").await.is_err());

        // An announcement is a file while it lives, and is removed on close and on drop.
        let path = "/wetoken/wetoken-server/t/servers/127.0.0.1:9999";
        let node = registry
            .register(path, &serde_json::json!({"addr": "127.0.0.1:9999"}))
            .await
            .unwrap();
        assert_eq!(node.path(), path);
        assert_eq!(
            registry.read_json(path).await.unwrap()["addr"],
            "127.0.0.1:9999"
        );
        node.close().await;
        assert!(!registry.exists(path).await.unwrap());
        let node = registry.register(path, &Value::Null).await.unwrap();
        assert!(registry.exists(path).await.unwrap());
        drop(node);
        assert!(!registry.exists(path).await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// On fs://, a registration removed its file on close even after another server at the same
    /// address had replaced it, taking that server's announcement down.
    #[tokio::test]
    async fn fs_close_leaves_a_file_another_server_replaced() {
        let dir =
            std::env::temp_dir().join(format!("wetoken-registry-replaced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = Registry::open(&format!("fs://{}", dir.display()))
            .await
            .unwrap();
        let path = "/wetoken/wetoken-server/t/servers/127.0.0.1:9999";
        let first = registry
            .register(path, &serde_json::json!({"pid": 1, "started_at": "a"}))
            .await
            .unwrap();
        let second = registry
            .register(path, &serde_json::json!({"pid": 2, "started_at": "b"}))
            .await
            .unwrap();
        first.close().await;
        assert_eq!(registry.read_json(path).await.unwrap()["pid"], 2);
        second.close().await;
        assert!(!registry.exists(path).await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unreachable_zookeeper_is_named_in_the_error() {
        // Nothing listens on port 1 of the loopback.
        let started = std::time::Instant::now();
        let err = Registry::open("zk://127.0.0.1:1")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zk://127.0.0.1:1") && err.contains("unreachable"),
            "{err}"
        );
        assert!(started.elapsed() <= zk::CONNECT_TIMEOUT + std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn zookeeper_nodes_announcements_and_errors() {
        let Some(url) = testing::zookeeper() else {
            return;
        };
        let registry = Registry::open(&url).await.unwrap();
        let err = registry.read_json("/mall/var/db/db").await.unwrap_err();
        assert!(matches!(err, RegistryError::Missing { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains(&url) && err.contains("/mall/var/db/db"),
            "{err}"
        );

        // Writing makes the chroot and every parent; writing again replaces.
        for value in ["mysql://a@h/db", "postgres://b@h/db"] {
            registry
                .write_json("/mall/var/db/db", &serde_json::json!({ "url": value }))
                .await
                .unwrap();
            assert_eq!(
                registry.read_json("/mall/var/db/db").await.unwrap()["url"],
                value
            );
        }
        assert_eq!(registry.children("/mall/var/db").await.unwrap(), ["db"]);
        assert!(registry.children("/absent").await.unwrap().is_empty());

        // A node someone wrote by hand that is not JSON.
        let (hosts, chroot) = url["zk://".len()..].split_once('/').unwrap();
        let raw = zookeeper_client::Client::connect(&format!("{hosts}/{chroot}"))
            .await
            .unwrap();
        raw.create(
            "/mall/var/db/bad",
            b"{not json",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        let err = registry
            .read_json("/mall/var/db/bad")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/mall/var/db/bad") && err.contains("not JSON"),
            "{err}"
        );

        // An announcement is an ephemeral node, seen by others, gone on close and on drop.
        let servers = "/wetoken/wetoken-server/t/servers";
        let path = format!("{servers}/127.0.0.1:9999");
        let node = registry
            .register(&path, &serde_json::json!({"addr": "127.0.0.1:9999"}))
            .await
            .unwrap();
        let (_, stat) = raw.get_data(&path).await.unwrap();
        assert_ne!(stat.ephemeral_owner, 0, "the node must be ephemeral");
        let other = Registry::open(&url).await.unwrap();
        assert_eq!(other.children(servers).await.unwrap(), ["127.0.0.1:9999"]);
        node.close().await;
        assert!(other.children(servers).await.unwrap().is_empty());

        // Two registrations at one address, as two replicas that both announce 127.0.0.1:9999:
        // the second must not take the first one's node, which another live session holds.
        // It serves unannounced, and makes its node once the first one's is gone.
        let first_session = Registry::open(&url).await.unwrap();
        let first = first_session
            .register(&path, &serde_json::json!({"run": 1}))
            .await
            .unwrap();
        let (_, held) = raw.get_data(&path).await.unwrap();
        let node = registry
            .register(&path, &serde_json::json!({"run": 2}))
            .await
            .unwrap();
        // Time for a background replacement, were there one, to show.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (_, still) = raw.get_data(&path).await.unwrap();
        assert_eq!(other.read_json(&path).await.unwrap()["run"], 1);
        assert_eq!(
            (still.ephemeral_owner, still.czxid),
            (held.ephemeral_owner, held.czxid)
        );
        first.close().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while other.read_json(&path).await.ok().map(|v| v["run"].clone()) != Some(2.into()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiting registration did not take the address once it was free"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (_, taken) = raw.get_data(&path).await.unwrap();
        assert!(taken.ephemeral_owner != 0 && taken.ephemeral_owner != held.ephemeral_owner);
        drop(node);
        // Dropped without close: the session ends and ZooKeeper removes the node.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while other.exists(&path).await.unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the node outlived its session"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
