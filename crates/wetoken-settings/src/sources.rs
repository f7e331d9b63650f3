//! Where the layers come from, as both binaries take them: the file `--config` names (or
//! `wetoken.toml` in the working directory), the flags a command was given, and the warning
//! about Kubernetes' service-link variables.

use std::path::{Path, PathBuf};

use figment::Figment;

/// The settings file to read: the one `--config` names, which must exist, else `wetoken.toml`
/// in the working directory, read if it exists.
pub fn config_file(given: Option<&Path>) -> Result<PathBuf, String> {
    match given {
        Some(path) if !path.is_file() => Err(format!(
            "--config {}: no such file (without --config, wetoken.toml is read if it exists)",
            path.display()
        )),
        Some(path) => Ok(path.to_owned()),
        None => Ok(PathBuf::from("wetoken.toml")),
    }
}

/// What the one warning about ignored `WETOKEN_*` service-link variables says
/// ([`crate::ignored_service_links`] lists them).
pub const SERVICE_LINKS_IGNORED: &str = "ignoring these variables: Kubernetes makes them for a \
     Service named wetoken, and they are no settings (set enableServiceLinks: false in the pod \
     spec to drop them)";

/// The settings given as command-line flags (each `Some` value under its setting's name), as
/// the top layer of [`crate::Settings::load`]. An error about one of them names its source
/// "the command line", where a tuple's would name a Rust type.
pub fn flags<'a>(given: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Figment {
    let mut dict = figment::value::Dict::new();
    for (key, value) in given {
        if let Some(value) = value {
            dict.insert(key.into(), value.into());
        }
    }
    Figment::from(Flags(dict))
}

struct Flags(figment::value::Dict);

impl figment::Provider for Flags {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the command line")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_must_exist_and_the_default_may_not() {
        let err = config_file(Some(Path::new("/nonexistent/wetoken.toml"))).unwrap_err();
        assert!(
            err.contains("--config /nonexistent/wetoken.toml: no such file"),
            "{err}"
        );
        assert_eq!(config_file(None).unwrap(), PathBuf::from("wetoken.toml"));
    }

    #[test]
    fn a_bad_flag_names_the_command_line() {
        let err = crate::Settings::load(
            Path::new("absent.toml"),
            flags([
                ("listen", Some("300.1.1.1:9999".into())),
                ("database_url", None),
            ]),
        )
        .unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("in the command line"), "{shown}");
    }
}
