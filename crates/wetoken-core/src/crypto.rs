//! Secrets at rest: app secrets, AES keys and message tokens are stored encrypted with
//! AES-256-GCM under a master key from configuration.
//!
//! A stored value is `wtenc:v2:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`:
//! - `v2` names the format ([`Format`]), which says what the associated data holds: `v1`, written
//!   before seal generations, binds the column and appid; `v2` binds the row's seal generation too
//!   (the `Store` builds the context for each);
//! - the key id is the first 8 hex digits of a SHA-256 of the master key, so a row says which key
//!   it needs without revealing it, and a [`Keyring`] can hold the current key and a previous one
//!   during a rotation;
//! - every value has its own random 96-bit nonce;
//! - the associated data binds the value to its column and appid, so a ciphertext copied to
//!   another row or column fails to decrypt instead of becoming that row's secret; and, in `v2`,
//!   to its row's seal generation, so a ciphertext put back from an older version of its row fails
//!   too.
//!
//! GCM's tag makes any change to a stored value an error ([`SealError::Tampered`]), never a wrong
//! plain text.
//!
//! The master key is 32 bytes written in standard base64 (44 characters), as
//! `openssl rand -base64 32` or `wetoken-cli secrets new-key` print it. Both the server and the CLI
//! build their [`Keyring`] with [`Keyring::load`] or [`Keyring::from_env`].

use std::fmt;
use std::path::PathBuf;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every encrypted value [`Keyring::seal`] writes starts with.
pub const SEALED_PREFIX: &str = "wtenc:v2:";

/// What an encrypted value written before seal generations starts with.
pub const SEALED_PREFIX_V1: &str = "wtenc:v1:";

/// The form of an encrypted value, which says what its associated data binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `wtenc:v1`: bound to its column and appid; written before seal generations.
    V1,
    /// `wtenc:v2`: bound to its column, appid and its row's seal generation; what is written now.
    V2,
}

impl Format {
    /// The prefix values of this form start with.
    pub fn prefix(self) -> &'static str {
        match self {
            Format::V1 => SEALED_PREFIX_V1,
            Format::V2 => SEALED_PREFIX,
        }
    }
}

/// The environment variable holding the master key.
pub const MASTER_KEY_ENV: &str = "WETOKEN_MASTER_KEY";
/// The environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "WETOKEN_MASTER_KEY_FILE";
/// The environment variable holding the previous master key, during a rotation.
pub const MASTER_KEY_PREVIOUS_ENV: &str = "WETOKEN_MASTER_KEY_PREVIOUS";
/// The environment variable naming a file that holds the previous master key.
pub const MASTER_KEY_PREVIOUS_FILE_ENV: &str = "WETOKEN_MASTER_KEY_PREVIOUS_FILE";
/// `true` refuses plain values where encrypted ones belong; see [`KeySources::require_sealed`].
pub const REQUIRE_ENCRYPTED_ENV: &str = "WETOKEN_REQUIRE_ENCRYPTED";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A master key or keyring setting that cannot be used. The message never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Why a stored value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// It starts like an encrypted value but is not one.
    #[error("it is not in the wtenc:v1 or wtenc:v2 form")]
    Malformed,
    /// It was encrypted under a key the keyring does not hold.
    #[error("it is encrypted under master key id {0}, which is not configured")]
    UnknownKey(String),
    /// Decryption failed: the value, its nonce or tag was altered, it was moved from another
    /// row or column, or it was put back from an older version of its row.
    #[error(
        "it fails authentication: it was altered, copied from another app or column, or put back \
         from an older version of this app's row (its seal generation has moved on)"
    )]
    Tampered,
    /// It is encrypted but no master key is configured.
    #[error("it is encrypted, but no master key is configured")]
    NoKey,
}

/// One 256-bit master key. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", self.id)
    }
}

impl MasterKey {
    /// Parses 32 bytes in standard base64 (44 characters with padding); surrounding whitespace is
    /// ignored. `what` names the setting in the error.
    pub fn parse(text: &str, what: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = STANDARD.decode(text).map_err(|_| {
            KeyError(format!(
                "{what} is not valid base64: expected 32 random bytes in standard base64 \
                 (44 characters), as `wetoken-cli secrets new-key` or `openssl rand -base64 32` \
                 print"
            ))
        })?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError(format!(
                "{what} decodes to {} bytes; a master key is exactly 32 bytes (44 base64 \
                 characters), as `wetoken-cli secrets new-key` prints",
                bytes.len()
            ))
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"wetoken master key id\0");
        hasher.update(bytes);
        let id: String = hasher.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id,
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A new random key, in the base64 form [`MasterKey::parse`] reads.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// The key's id, as stored beside every value it encrypts.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where the master keys come from: the settings `master_key`, `master_key_file`,
/// `master_key_previous`, `master_key_previous_file`, or their `WETOKEN_*` variables.
#[derive(Default, Clone)]
pub struct KeySources {
    /// The key itself.
    pub key: Option<String>,
    /// A file whose first line is the key.
    pub key_file: Option<PathBuf>,
    /// The previous key, still read (never written) during a rotation.
    pub previous: Option<String>,
    /// A file whose first line is the previous key.
    pub previous_file: Option<PathBuf>,
    /// Refuse a plain value where an encrypted one belongs (the `require_encrypted` setting,
    /// `WETOKEN_REQUIRE_ENCRYPTED`), instead of using it with a warning. Needs a key.
    pub require_sealed: bool,
}

impl fmt::Debug for KeySources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySources")
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("key_file", &self.key_file)
            .field("previous", &self.previous.as_ref().map(|_| "***"))
            .field("previous_file", &self.previous_file)
            .field("require_sealed", &self.require_sealed)
            .finish()
    }
}

impl KeySources {
    /// The sources named by `WETOKEN_MASTER_KEY`, `WETOKEN_MASTER_KEY_FILE`,
    /// `WETOKEN_MASTER_KEY_PREVIOUS` and `WETOKEN_MASTER_KEY_PREVIOUS_FILE`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            key: var(MASTER_KEY_ENV),
            key_file: var(MASTER_KEY_FILE_ENV).map(PathBuf::from),
            previous: var(MASTER_KEY_PREVIOUS_ENV),
            previous_file: var(MASTER_KEY_PREVIOUS_FILE_ENV).map(PathBuf::from),
            require_sealed: var(REQUIRE_ENCRYPTED_ENV)
                .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on")),
        }
    }
}

fn read_one(
    name: &str,
    key: Option<&str>,
    file: Option<&PathBuf>,
) -> Result<Option<MasterKey>, KeyError> {
    match (key, file) {
        (Some(_), Some(_)) => Err(KeyError(format!("set {name} or {name}_file, not both"))),
        (Some(key), None) => MasterKey::parse(key, name).map(Some),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| KeyError(format!("reading {name}_file {}: {e}", path.display())))?;
            let line = text.lines().next().unwrap_or_default();
            MasterKey::parse(line, &format!("{name}_file {}", path.display())).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The keys a process can decrypt with: the current one, which also encrypts, and during a
/// rotation the previous one, which only decrypts.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: MasterKey,
    previous: Option<MasterKey>,
    /// Whether a plain value is refused rather than used with a warning.
    require_sealed: bool,
}

impl Keyring {
    /// A keyring that encrypts under `current` and also reads values under `previous`.
    pub fn new(current: MasterKey, previous: Option<MasterKey>) -> Self {
        // The same key twice is harmless: it reads what the current key reads.
        let previous = previous.filter(|p| p.id != current.id);
        Self {
            current,
            previous,
            require_sealed: false,
        }
    }

    /// This keyring, refusing plain values where encrypted ones belong when `yes`.
    pub fn requiring_sealed(mut self, yes: bool) -> Self {
        self.require_sealed = yes;
        self
    }

    /// Whether a plain value where an encrypted one belongs is refused.
    pub fn requires_sealed(&self) -> bool {
        self.require_sealed
    }

    /// The keyring `sources` describe; `None` when no master key is configured. A previous key
    /// without a current one is an error.
    pub fn load(sources: &KeySources) -> Result<Option<Self>, KeyError> {
        let current = read_one(
            "master_key",
            sources.key.as_deref(),
            sources.key_file.as_ref(),
        )?;
        let previous = read_one(
            "master_key_previous",
            sources.previous.as_deref(),
            sources.previous_file.as_ref(),
        )?;
        match (current, previous) {
            (Some(current), previous) => Ok(Some(
                Self::new(current, previous).requiring_sealed(sources.require_sealed),
            )),
            (None, _) if sources.require_sealed => Err(KeyError(
                "require_encrypted is set but no master key is: set master_key or \
                 master_key_file (WETOKEN_MASTER_KEY, WETOKEN_MASTER_KEY_FILE)"
                    .into(),
            )),
            (None, Some(_)) => Err(KeyError(
                "master_key_previous is set but master_key is not: a rotation needs the new key \
                 as master_key and the old one as master_key_previous"
                    .into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// The keyring the `WETOKEN_MASTER_KEY*` environment variables describe.
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        Self::load(&KeySources::from_env())
    }

    /// The id of the key new values are encrypted under.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// The previous key's id, if one is configured.
    pub fn previous_id(&self) -> Option<&str> {
        self.previous.as_ref().map(MasterKey::id)
    }

    /// Whether values under `id` can be read.
    pub fn knows(&self, id: &str) -> bool {
        self.current.id == id || self.previous_id() == Some(id)
    }

    /// Encrypts `plain` under the current key, bound to `context`, in the current form
    /// ([`Format::V2`]: the caller's context names the row's seal generation).
    pub fn seal(&self, plain: &str, context: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: context,
                },
            )
            .expect("AES-GCM encrypts any input shorter than 64 GiB");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(raw)
        )
    }

    /// Decrypts a value [`Keyring::seal`] wrote with `context`, under either key, in either
    /// form: the caller gives the context the value's [`sealed_format`] calls for.
    pub fn open(&self, stored: &str, context: &[u8]) -> Result<String, SealError> {
        let (_, id, body) = split_sealed(stored).ok_or(SealError::Malformed)?;
        let key = if id == self.current.id {
            &self.current
        } else {
            self.previous
                .as_ref()
                .filter(|p| p.id == id)
                .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?
        };
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let plain = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Tampered)?;
        // Only what `seal` wrote authenticates, and that was UTF-8.
        String::from_utf8(plain).map_err(|_| SealError::Tampered)
    }
}

/// Whether a stored value is in the encrypted form (by its prefix).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with("wtenc:")
}

/// The key id of an encrypted value, if it is one.
pub fn sealed_key_id(stored: &str) -> Option<&str> {
    split_sealed(stored).map(|(_, id, _)| id)
}

/// The form of an encrypted value, if it is one.
pub fn sealed_format(stored: &str) -> Option<Format> {
    split_sealed(stored).map(|(format, _, _)| format)
}

fn split_sealed(stored: &str) -> Option<(Format, &str, &str)> {
    let (format, rest) = [Format::V2, Format::V1]
        .into_iter()
        .find_map(|f| Some((f, stored.strip_prefix(f.prefix())?)))?;
    let (id, body) = rest.split_once(':')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((format, id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(seed: u8) -> Keyring {
        Keyring::new(MasterKey::from_bytes(&[seed; 32]), None)
    }

    #[test]
    fn master_keys_are_validated_strictly() {
        let good = MasterKey::generate();
        assert_eq!(good.len(), 44);
        assert!(MasterKey::parse(&format!(" {good}\n"), "k").is_ok());
        for (bad, says) in [
            ("", "0 bytes"),
            ("not base64!", "not valid base64"),
            (&STANDARD.encode([1u8; 31]), "31 bytes"),
            (&STANDARD.encode([1u8; 33]), "33 bytes"),
            (&URL_SAFE_NO_PAD.encode([0xffu8; 32]), "not valid base64"),
            (&"00".repeat(32), "48 bytes"),
        ] {
            let err = MasterKey::parse(bad, "master_key").unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("master_key"),
                "{bad:?}: {err}"
            );
            if bad.len() > 4 {
                assert!(!err.contains(bad), "the error repeats the key: {err}");
            }
        }
    }

    #[test]
    fn sources_are_exclusive_and_previous_needs_current() {
        let key = MasterKey::generate();
        let both = KeySources {
            key: Some(key.clone()),
            key_file: Some("/nonexistent".into()),
            ..KeySources::default()
        };
        assert!(
            Keyring::load(&both)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let only_previous = KeySources {
            previous: Some(key.clone()),
            ..KeySources::default()
        };
        assert!(Keyring::load(&only_previous).is_err());
        assert!(Keyring::load(&KeySources::default()).unwrap().is_none());
        let missing = KeySources {
            key_file: Some("/nonexistent/key".into()),
            ..KeySources::default()
        };
        assert!(
            Keyring::load(&missing)
                .unwrap_err()
                .to_string()
                .contains("master_key_file")
        );
        assert!(
            !format!(
                "{:?}",
                KeySources {
                    key: Some(key.clone()),
                    ..KeySources::default()
                }
            )
            .contains(&key)
        );
    }

    #[test]
    fn a_rotation_reads_both_keys_and_writes_the_new_one() {
        let old = MasterKey::from_bytes(&[1; 32]);
        let new = MasterKey::from_bytes(&[2; 32]);
        let before = Keyring::new(old.clone(), None).seal("s3cret", b"ctx");
        let during = Keyring::new(new.clone(), Some(old.clone()));
        assert_eq!(during.open(&before, b"ctx").unwrap(), "s3cret");
        let after = during.seal("s3cret", b"ctx");
        assert_eq!(sealed_key_id(&after), Some(new.id()));
        assert_eq!(
            Keyring::new(old.clone(), None).open(&after, b"ctx"),
            Err(SealError::UnknownKey(new.id().to_owned()))
        );
        assert_eq!(
            Keyring::new(new, None).open(&after, b"ctx").unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn both_forms_are_read_and_the_current_one_is_written() {
        let r = ring(6);
        let v2 = r.seal("s3cret", b"ctx");
        assert!(v2.starts_with("wtenc:v2:"), "{v2}");
        assert_eq!(sealed_format(&v2), Some(Format::V2));
        // A value from before seal generations: the same bytes under the v1 prefix.
        let v1 = v2.replacen(SEALED_PREFIX, SEALED_PREFIX_V1, 1);
        assert_eq!(sealed_format(&v1), Some(Format::V1));
        assert_eq!(sealed_key_id(&v1), Some(r.current_id()));
        assert_eq!(r.open(&v1, b"ctx").unwrap(), "s3cret");
        for other in ["wtenc:v3:", "wtenc:", "wtenc:v2"] {
            let value = v2.replacen(SEALED_PREFIX, other, 1);
            assert_eq!(sealed_format(&value), None, "{value}");
            assert_eq!(r.open(&value, b"ctx"), Err(SealError::Malformed), "{value}");
        }
    }

    #[test]
    fn the_same_secret_encrypts_differently_each_time() {
        let r = ring(7);
        assert_ne!(r.seal("x", b""), r.seal("x", b""));
        assert!(
            !r.seal("6acb2b999177524beba3d97d54df2de5", b"")
                .contains("6acb2b99")
        );
    }

    proptest! {
        #[test]
        fn round_trip(plain in ".{0,300}", context in proptest::collection::vec(any::<u8>(), 0..40), seed in any::<u8>()) {
            let r = ring(seed);
            let sealed = r.seal(&plain, &context);
            prop_assert!(is_sealed(&sealed));
            prop_assert_eq!(sealed_key_id(&sealed), Some(r.current_id()));
            prop_assert_eq!(r.open(&sealed, &context).unwrap(), plain);
        }

        /// Any flipped bit in the stored bytes, anywhere after the prefix, is an error, never
        /// another plain text.
        #[test]
        fn any_flipped_bit_is_an_error(plain in ".{0,64}", bit in any::<prop::sample::Index>()) {
            let r = ring(3);
            let sealed = r.seal(&plain, b"wechat_app_info/secret/wx1");
            let mut raw = URL_SAFE_NO_PAD.decode(split_sealed(&sealed).unwrap().2).unwrap();
            let i = bit.index(raw.len() * 8);
            raw[i / 8] ^= 1 << (i % 8);
            let tampered = format!("{SEALED_PREFIX}{}:{}", r.current_id(), URL_SAFE_NO_PAD.encode(&raw));
            prop_assert_eq!(r.open(&tampered, b"wechat_app_info/secret/wx1"), Err(SealError::Tampered));
        }

        /// Any change to the stored text is an error too, whichever character changes.
        #[test]
        fn any_changed_character_is_an_error(plain in ".{0,64}", at in any::<prop::sample::Index>(), to in any::<char>()) {
            let r = ring(4);
            let sealed = r.seal(&plain, b"c");
            let mut chars: Vec<char> = sealed.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != to);
            chars[i] = to;
            let changed: String = chars.into_iter().collect();
            prop_assert!(r.open(&changed, b"c").is_err());
        }

        /// A value moved to another row or column does not decrypt there.
        #[test]
        fn the_context_is_bound(plain in ".{0,32}", a in "[a-z]{1,8}", b in "[a-z]{1,8}") {
            prop_assume!(a != b);
            let r = ring(5);
            let sealed = r.seal(&plain, a.as_bytes());
            prop_assert_eq!(r.open(&sealed, b.as_bytes()), Err(SealError::Tampered));
        }
    }
}
