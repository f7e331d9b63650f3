//! wetoken's configuration registry.
//!
//! The Go wetoken was deployed from a registry in which each service found its settings at paths
//! named after its platform; its database settings live at `/<platform>/var/db/<name>`.
//! This crate reads and writes such nodes, selected by URL:
//!
//! - `fs://<dir>`: each node is a file under `<dir>` at the node's path. Nothing to install.
//! - `zk://host[:port][,host…][/chroot]`: Apache ZooKeeper. Not built yet: opening one is a clear
//!   error, not a silent fallback.
//!
//! [`database`] turns a database node (the Go/hydra form or a plain URL) into connection settings.
#![deny(missing_docs)]

pub mod database;

use std::path::{Path, PathBuf};

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
    /// The registry cannot be reached (a missing directory, an unreachable server).
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

/// A registry, opened from its URL.
#[derive(Debug, Clone)]
pub struct Registry {
    url: String,
    root: PathBuf,
}

/// The path of a platform's database node, `/<platform>/var/db/<name>`.
pub fn database_node(platform: &str, name: &str) -> Result<String, String> {
    for (what, value) in [("platform", platform), ("database name", name)] {
        let ok = !value.is_empty()
            && value != "."
            && value != ".."
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(format!(
                "{what} {value:?} must be letters, digits, '_', '-' or '.'"
            ));
        }
    }
    Ok(format!("/{platform}/var/db/{name}"))
}

impl Registry {
    /// Opens the registry at `url`.
    pub fn open(url: &str) -> Result<Registry, RegistryError> {
        let unsupported = |reason: &str| RegistryError::Unsupported {
            registry: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(dir) = url.strip_prefix("fs://") {
            if dir.is_empty() {
                return Err(unsupported("fs:// needs a directory, as fs:///etc/wetoken"));
            }
            let root = PathBuf::from(dir);
            if !root.is_dir() {
                return Err(RegistryError::Unreachable {
                    registry: url.to_owned(),
                    cause: format!("{} is not a directory", root.display()),
                });
            }
            return Ok(Registry {
                url: url.to_owned(),
                root,
            });
        }
        if url.starts_with("zk://") {
            return Err(unsupported(
                "ZooKeeper registries are not supported by this build yet; use fs://<dir>",
            ));
        }
        Err(unsupported(
            "expected fs://<dir> or zk://host[:port][/chroot]",
        ))
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn file(&self, path: &str) -> Result<PathBuf, RegistryError> {
        let relative = path.strip_prefix('/').unwrap_or(path);
        let ok = !relative.is_empty()
            && relative
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..");
        if !ok {
            return Err(RegistryError::Malformed {
                registry: self.url.clone(),
                path: path.to_owned(),
                cause: "a node path is /segment/segment…, without empty, '.' or '..' segments"
                    .into(),
            });
        }
        Ok(self.root.join(relative))
    }

    /// The node at `path`, parsed as JSON.
    pub fn read_json(&self, path: &str) -> Result<serde_json::Value, RegistryError> {
        let file = self.file(path)?;
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::Missing {
                    registry: self.url.clone(),
                    path: path.to_owned(),
                });
            }
            Err(e) => {
                return Err(RegistryError::Io {
                    registry: self.url.clone(),
                    path: path.to_owned(),
                    cause: e.to_string(),
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: format!("not JSON: {e}"),
        })
    }

    /// Writes `value` as the node at `path`, creating its parents.
    pub fn write_json(&self, path: &str, value: &serde_json::Value) -> Result<(), RegistryError> {
        let file = self.file(path)?;
        let io = |e: std::io::Error| RegistryError::Io {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: e.to_string(),
        };
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let text = serde_json::to_vec_pretty(value).map_err(|e| RegistryError::Io {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: e.to_string(),
        })?;
        std::fs::write(&file, text).map_err(io)
    }

    /// The directory behind an `fs://` registry.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths() {
        assert_eq!(database_node("mall", "db").unwrap(), "/mall/var/db/db");
        for (p, n) in [("", "db"), ("a/b", "db"), ("mall", ".."), ("mall", "d b")] {
            assert!(database_node(p, n).is_err(), "{p:?} {n:?}");
        }
    }

    #[test]
    fn fs_nodes_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("wetoken-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("fs://{}", dir.display());
        let registry = Registry::open(&url).unwrap();

        let err = registry
            .read_json("/mall/var/db/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&url) && err.contains("/mall/var/db/db") && err.contains("no node"),
            "{err}"
        );

        registry
            .write_json(
                "/mall/var/db/db",
                &serde_json::json!({"url": "sqlite://x.db"}),
            )
            .unwrap();
        assert_eq!(
            registry.read_json("/mall/var/db/db").unwrap()["url"],
            "sqlite://x.db"
        );

        std::fs::write(dir.join("mall/var/db/bad"), "{not json").unwrap();
        let err = registry
            .read_json("/mall/var/db/bad")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/mall/var/db/bad") && err.contains("not JSON"),
            "{err}"
        );

        assert!(registry.read_json("/mall/../etc").is_err());
        let err = Registry::open("fs:///nonexistent/wetoken")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unreachable") && err.contains("/nonexistent/wetoken"),
            "{err}"
        );
        let err = Registry::open("zk://127.0.0.1:2181")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zk://127.0.0.1:2181") && err.contains("not supported"),
            "{err}"
        );
        assert!(Registry::open("etcd://x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
