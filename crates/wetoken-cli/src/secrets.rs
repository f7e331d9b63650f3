//! `wetoken-cli secrets new-key|status|rotate-key`: the master key app secrets are encrypted
//! under.
//!
//! The keys come from the server's settings (`wetoken.toml` or `--config`, then the
//! environment): `master_key` or `master_key_file` (`WETOKEN_MASTER_KEY`,
//! `WETOKEN_MASTER_KEY_FILE`: the current key), `master_key_previous` or
//! `master_key_previous_file` (the previous one, during a rotation), or the `--…-file` flags over
//! them. Keys are never taken as flag values, which other users could read in the process list.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use wetoken_core::Reseal;
use wetoken_core::crypto::MasterKey;
use wetoken_settings::Settings;

use crate::DatabaseArg;

#[derive(clap::Subcommand)]
pub(crate) enum SecretsAction {
    /// Print a new random master key (32 bytes, base64) for master_key / WETOKEN_MASTER_KEY.
    NewKey,
    /// Count the stored secrets by how they are held: plain, or under which master key id.
    Status {
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Re-encrypt every stored secret under the current master key.
    ///
    /// Give the new key as the master key and the old one as the previous key, the same pair
    /// every server must already be running with, so that servers read both while this runs.
    /// Plain-text rows are encrypted too. Each value is replaced on its own, atomically: servers
    /// keep serving throughout. Afterwards, `secrets status` shows only the new key's id, and the
    /// previous key can be removed from the servers' settings.
    RotateKey {
        /// The id of the key to re-encrypt under: the new master key's, as `secrets new-key`,
        /// `secrets status` and every server's start log show it. Asked for so that a key given
        /// here by mistake, which no server holds, cannot take every secret with it.
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
}

/// Where the master keys come from, over the settings' (`master_key`, `master_key_file`, their
/// `WETOKEN_MASTER_KEY*` variables).
#[derive(clap::Args, Clone)]
pub(crate) struct MasterKeyArgs {
    /// A file whose first line is the master key (else the settings' master_key or
    /// master_key_file: WETOKEN_MASTER_KEY, WETOKEN_MASTER_KEY_FILE).
    #[arg(long, value_name = "PATH")]
    master_key_file: Option<PathBuf>,
    /// A file whose first line is the previous master key (else master_key_previous or
    /// master_key_previous_file: WETOKEN_MASTER_KEY_PREVIOUS, WETOKEN_MASTER_KEY_PREVIOUS_FILE).
    #[arg(long, value_name = "PATH")]
    previous_key_file: Option<PathBuf>,
}

impl MasterKeyArgs {
    /// Puts the files these flags name in place of the keys the settings hold.
    pub(crate) fn apply(&self, settings: &mut Settings) {
        if let Some(file) = &self.master_key_file {
            settings.master_key = None;
            settings.master_key_file = Some(file.clone());
        }
        if let Some(file) = &self.previous_key_file {
            settings.master_key_previous = None;
            settings.master_key_previous_file = Some(file.clone());
        }
    }
}

pub(crate) async fn run(action: SecretsAction) -> anyhow::Result<()> {
    match action {
        SecretsAction::NewKey => {
            let key = MasterKey::generate();
            println!("{key}");
            // Not on stdout, which scripts capture as the key.
            eprintln!("master key id {}", MasterKey::parse(&key, "new key")?.id());
        }
        SecretsAction::Status { db } => {
            let store = db.open_installed().await?;
            let report = store.secrets_report().await?;
            if let Some(keyring) = store.keyring() {
                println!("master_key          id {}", keyring.current_id());
                if let Some(previous) = keyring.previous_id() {
                    println!("master_key_previous id {previous}");
                }
            }
            println!("plain      {}", report.plain);
            if report.unbound > 0 {
                // Counted below by key too.
                println!(
                    "unbound    {} (wtenc:v1, not bound to a seal generation: a server start or \
                     `secrets rotate-key` binds them)",
                    report.unbound
                );
            }
            for (id, count) in &report.by_key {
                let role = match store.keyring() {
                    Some(k) if k.current_id() == id => " (master_key)",
                    Some(k) if k.previous_id() == Some(id.as_str()) => " (master_key_previous)",
                    Some(_) => " (not configured)",
                    None => "",
                };
                println!("key {id} {count}{role}");
            }
        }
        SecretsAction::RotateKey { key_id, db } => {
            let store = db.open_installed().await?;
            let keyring = store
                .keyring()
                .ok_or_else(|| anyhow!("no master key: set WETOKEN_MASTER_KEY (the new key) and WETOKEN_MASTER_KEY_PREVIOUS (the old one)"))?;
            if keyring.current_id() != key_id {
                bail!(
                    "the master key given here has id {}, not {key_id}: nothing was changed. \
                     Give the key the servers run with as master_key",
                    keyring.current_id()
                );
            }
            let done = store
                .reseal(Reseal::NotCurrent)
                .await
                .context("re-encrypting")?;
            println!(
                "re-encrypted {} values under master key id {}",
                done.resealed,
                keyring.current_id()
            );
            if done.bound > 0 {
                println!(
                    "bound {} values from before seal generations (wtenc:v1) to their row's",
                    done.bound
                );
            }
            if done.changed_meanwhile > 0 {
                println!(
                    "{} values changed while this ran and were left as written; run it again",
                    done.changed_meanwhile
                );
            }
            if !done.failed.is_empty() {
                for failure in &done.failed {
                    eprintln!("wetoken-cli: {failure}");
                }
                bail!(
                    "{} values could not be decrypted and were left alone",
                    done.failed.len()
                );
            }
        }
    }
    Ok(())
}
