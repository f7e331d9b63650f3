//! `fs://<dir>`: each node is a file under `<dir>` at the node's path.
//!
//! A node with children is a directory; its own data, if it has any, is not kept (the registry's
//! nodes with data are leaves: settings, database nodes, server announcements).

use std::path::{Path, PathBuf};

use crate::RegistryError;

#[derive(Clone)]
pub(crate) struct FsRegistry {
    url: String,
    root: PathBuf,
}

impl FsRegistry {
    pub(crate) fn open(url: &str, dir: &str) -> Result<Self, RegistryError> {
        let root = PathBuf::from(dir);
        if !root.is_dir() {
            return Err(RegistryError::Unreachable {
                registry: url.to_owned(),
                cause: format!("{} is not a directory", root.display()),
            });
        }
        Ok(Self {
            url: url.to_owned(),
            root,
        })
    }

    fn file(&self, path: &str) -> PathBuf {
        // `Registry::check` has made sure the path is /segment/… without '.' or '..'.
        self.root.join(&path[1..])
    }

    fn io(&self, path: &str, e: std::io::Error) -> RegistryError {
        RegistryError::Io {
            registry: self.url.clone(),
            path: path.to_owned(),
            cause: e.to_string(),
        }
    }

    pub(crate) fn read(&self, path: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let file = self.file(path);
        match std::fs::read(&file) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if file.is_dir() => Err(RegistryError::Malformed {
                registry: self.url.clone(),
                path: path.to_owned(),
                cause: format!("a directory, not a node with data ({e})"),
            }),
            Err(e) => Err(self.io(path, e)),
        }
    }

    pub(crate) fn write(&self, path: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let file = self.file(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io(path, e))?;
        }
        // Write beside and rename, so a reader never sees half a node.
        let partial = partial_name(&file);
        std::fs::write(&partial, bytes).map_err(|e| self.io(path, e))?;
        std::fs::rename(&partial, &file).map_err(|e| self.io(path, e))
    }

    pub(crate) fn children(&self, path: &str) -> Result<Vec<String>, RegistryError> {
        let dir = self.file(path);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| self.io(path, e))?.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') {
                names.push(name.into_owned());
            }
        }
        Ok(names)
    }

    pub(crate) fn register(
        &self,
        path: &str,
        bytes: &[u8],
    ) -> Result<FsRegistration, RegistryError> {
        self.write(path, bytes)?;
        Ok(FsRegistration {
            path: path.to_owned(),
            file: Some(self.file(path)),
            bytes: bytes.to_vec(),
        })
    }
}

fn partial_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// An announcement on `fs://`: a file removed on close or drop, unless another server has
/// announced itself at the same path since (its file then holds other bytes).
pub(crate) struct FsRegistration {
    path: String,
    file: Option<PathBuf>,
    /// What this registration wrote: the server's pid and start time make it its own.
    bytes: Vec<u8>,
}

impl FsRegistration {
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn close(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        // Another server at the same address may have replaced the file: leave its file alone.
        // (A replacement between this read and the removal is not caught; a file system offers
        // no compare-and-delete.)
        match std::fs::read(&file) {
            Ok(bytes) if bytes == self.bytes => {}
            Ok(_) => {
                tracing::info!(path = %self.path, "the registry node is another server's now; leaving it");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "could not read the server's registry node");
                return;
            }
        }
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path, error = %e, "could not remove the server's registry node");
        }
    }
}

impl Drop for FsRegistration {
    fn drop(&mut self) {
        self.remove();
    }
}
