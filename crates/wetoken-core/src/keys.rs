//! Consumer keys: who may read which app's tokens and tickets.
//!
//! A consumer key is a random string wetoken generates (`wtk_` and 43 base64url characters,
//! 256 bits of entropy) and shows once. The database keeps only its SHA-256: a key has far too
//! much entropy to be guessed from its hash, so a slow password hash would buy nothing and would
//! cost every token request.
//!
//! Each key carries a scope: the appids it may read, whether it may ask for a passive refresh
//! and how often ([`RefreshLimit`]), and optionally the networks it may be used from. [`KeyTable`] is an in-memory snapshot of
//! every key, checked per request without touching the database; the server reloads it
//! periodically, so keys added or revoked from another process take effect without a restart.
//!
//! Once any key has been added, keys are required, even after every key is revoked: revoking
//! the last key must not reopen the routes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use rand::RngCore;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityName, EntityTrait, QueryFilter, QueryOrder};
use sha2::{Digest, Sha256};

use crate::entity::consumer_key::{self, Column};
use crate::{AppId, Error, Secret, Store};

/// What every consumer key starts with, so that secret scanners and people recognise one.
pub const KEY_PREFIX: &str = "wtk_";

/// The SHA-256 of a consumer key: what the database stores and the snapshot is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lower-case hex, as stored.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the stored form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// A consumer key's record: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerKey {
    /// A short random id, for `revoke` and logs.
    pub id: String,
    /// A name chosen by the operator, unique.
    pub name: String,
    /// The apps it may read.
    pub appids: BTreeSet<String>,
    /// Whether it may ask for a passive refresh (`…/refresh?access_token=FAILED`).
    pub allow_refresh: bool,
    /// Where it may be used from; empty means anywhere.
    pub networks: Vec<IpNet>,
    /// How many passive refreshes it may ask for; `None` takes the server's default.
    pub refresh_limit: Option<RefreshLimit>,
    /// When it was added.
    pub create_time: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoke_time: Option<DateTime<Utc>>,
    /// The SHA-256 of the key.
    pub hash: KeyHash,
}

impl ConsumerKey {
    /// The record a stored row describes; a row that does not parse is [`Error::Schema`].
    fn from_row(row: consumer_key::Model) -> Result<Self, Error> {
        let corrupt = |what: &str| {
            Error::Schema(format!("consumer key {}: stored {what} is invalid", row.id))
        };
        let list = |text: &str| {
            text.split(',')
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let networks = list(&row.networks)
            .iter()
            .map(|n| n.parse::<IpNet>().map_err(|_| corrupt("network")))
            .collect::<Result<_, _>>()?;
        // `add_consumer_key` and `set_key_refresh_limit` write both columns or neither.
        let refresh_limit = match (row.refresh_burst, row.refresh_per_minute) {
            (None, None) => None,
            (Some(burst), Some(per_minute)) => {
                let burst = u32::try_from(burst).map_err(|_| corrupt("refresh limit"))?;
                let per_minute = u32::try_from(per_minute).map_err(|_| corrupt("refresh limit"))?;
                Some(RefreshLimit::new(burst, per_minute).map_err(|_| corrupt("refresh limit"))?)
            }
            _ => return Err(corrupt("refresh limit")),
        };
        Ok(ConsumerKey {
            hash: KeyHash::from_hex(&row.key_hash).ok_or_else(|| corrupt("hash"))?,
            appids: list(&row.appids).into_iter().collect(),
            networks,
            refresh_limit,
            name: row.name,
            allow_refresh: row.allow_refresh,
            create_time: row.create_time,
            revoke_time: row.revoke_time,
            id: row.id,
        })
    }
}

/// What `key add` asks for.
#[derive(Debug, Clone)]
pub struct NewConsumerKey {
    /// A unique name, 1 to 64 letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// The apps it may read; at least one.
    pub appids: Vec<AppId>,
    /// Whether it may ask for a passive refresh.
    pub allow_refresh: bool,
    /// Where it may be used from; empty means anywhere.
    pub networks: Vec<IpNet>,
    /// How many passive refreshes it may ask for; `None` takes the server's default.
    pub refresh_limit: Option<RefreshLimit>,
}

/// How many passive refreshes (reports that a credential was rejected) a caller may ask for: a
/// token bucket that holds `burst` reports and refills at `per_minute` a minute. Each report
/// takes one; an empty bucket refuses with 429 until the next one has refilled.
///
/// A report that names a credential already replaced costs no WeChat call, so the burst is sized
/// for many instances of one service that saw the same rejection at once; the rate is far above
/// what a caller that reports only real rejections needs. Built by [`RefreshLimit::new`] only,
/// so both are always within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefreshLimit {
    burst: u32,
    per_minute: u32,
}

impl RefreshLimit {
    /// The largest burst accepted: more would make the limit no limit.
    pub const MAX_BURST: u32 = 1000;
    /// The fastest refill accepted: 100 a second.
    pub const MAX_PER_MINUTE: u32 = 6000;

    /// The server's default (`http.refresh_burst`, `http.refresh_per_minute`) unless its settings
    /// say otherwise: 10 reports at once (ten instances of a service that saw the same rejection),
    /// then one every 10 s. A caller that reports only real rejections makes a few a day per app.
    pub const DEFAULT: RefreshLimit = RefreshLimit {
        burst: 10,
        per_minute: 6,
    };

    /// A limit of `burst` reports at once, refilled at `per_minute` a minute: 1 to
    /// [`RefreshLimit::MAX_BURST`] and 1 to [`RefreshLimit::MAX_PER_MINUTE`].
    pub fn new(burst: u32, per_minute: u32) -> Result<Self, Error> {
        if !(1..=Self::MAX_BURST).contains(&burst) {
            return Err(Error::InvalidInput(format!(
                "a refresh burst of {burst}: it must be 1 to {} reports",
                Self::MAX_BURST
            )));
        }
        if !(1..=Self::MAX_PER_MINUTE).contains(&per_minute) {
            return Err(Error::InvalidInput(format!(
                "a refresh rate of {per_minute} a minute: it must be 1 to {} a minute",
                Self::MAX_PER_MINUTE
            )));
        }
        Ok(Self { burst, per_minute })
    }

    /// The most reports at once: the bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// How many reports a minute refill the bucket.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

impl fmt::Display for RefreshLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at once, {} a minute", self.burst, self.per_minute)
    }
}

/// A key just added: the only time the key itself is seen.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The record's id.
    pub id: String,
    /// The key, to hand to the consumer.
    pub key: Secret,
}

/// Parses a CIDR block or a single address.
pub fn parse_network(s: &str) -> Result<IpNet, Error> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| Error::InvalidInput(format!("{s:?} is not an address or CIDR block")))
}

/// A new random key and its id.
fn generate() -> (String, Secret) {
    let mut bytes = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let mut id = [0u8; 5];
    rand::rng().fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    (format!("k{id}"), Secret::new(key))
}

/// Why a request was refused. 401 for the first two, 403 for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key was presented.
    MissingKey,
    /// The key is unknown or revoked.
    UnknownKey,
    /// The key does not cover this app (whether or not the app exists).
    OutOfScope,
    /// The key may not be used from the caller's address.
    Address,
    /// The key may not ask for a passive refresh.
    RefreshNotAllowed,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The appid from the path, as written (not yet validated).
    pub appid: &'a str,
    /// Whether it is a passive refresh.
    pub refresh: bool,
    /// The caller's address.
    pub peer: IpAddr,
}

/// An immutable snapshot of every consumer key, for checking requests without a database query.
#[derive(Debug, Default)]
pub struct KeyTable {
    active: HashMap<KeyHash, Arc<ConsumerKey>>,
    required: bool,
}

impl KeyTable {
    /// A snapshot of `keys`. Revoked keys open nothing, but their existence makes keys required.
    pub fn new(keys: impl IntoIterator<Item = ConsumerKey>) -> Self {
        let mut table = Self::default();
        for key in keys {
            table.required = true;
            if key.revoke_time.is_none() {
                table.active.insert(key.hash, Arc::new(key));
            }
        }
        table
    }

    /// Whether requests must present a key: whether any key was ever added.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// How many keys are usable.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// The usable keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<ConsumerKey>> {
        self.active.values()
    }

    /// The name of the active key `presented` is, if it is one: for log lines about a request
    /// the key was refused for.
    pub fn name_of(&self, presented: &str) -> Option<&str> {
        self.active
            .get(&KeyHash::of(presented))
            .map(|key| key.name.as_str())
    }

    /// Checks a presented key against a request, and returns the key's record: the server
    /// counts a passive refresh against it. Looks up the key's hash only, so the time taken
    /// depends on the hash, which tells nothing about any key.
    pub fn check(
        &self,
        presented: Option<&str>,
        access: Access<'_>,
    ) -> Result<&Arc<ConsumerKey>, Refusal> {
        let presented = presented
            .filter(|k| !k.is_empty())
            .ok_or(Refusal::MissingKey)?;
        let key = self
            .active
            .get(&KeyHash::of(presented))
            .ok_or(Refusal::UnknownKey)?;
        if !key.networks.is_empty() && !key.networks.iter().any(|n| n.contains(&access.peer)) {
            return Err(Refusal::Address);
        }
        if !key.appids.contains(access.appid) {
            return Err(Refusal::OutOfScope);
        }
        if access.refresh && !key.allow_refresh {
            return Err(Refusal::RefreshNotAllowed);
        }
        Ok(key)
    }
}

/// The SHA-256 of each app's secret, for the Go SDK's way of asking: it cannot send a consumer
/// key, and sends the app's own secret in the query (`?<appid>&secret=<secret>`) instead.
///
/// The engine holds one, reloaded with the consumer keys and changed at once when this process
/// adds, updates or deletes an app; requests check it without touching the database. Only the
/// digests are held, never a secret.
#[derive(Default)]
pub(crate) struct SecretDigests {
    by_app: HashMap<String, [u8; 32]>,
    /// Counts the changes made by this process, so that a reload that read the database before
    /// one of them does not install what it read over it.
    generation: u64,
}

impl SecretDigests {
    /// Whether `presented` is `appid`'s secret. Constant time in the secrets' content: the
    /// digests are compared with `subtle`, and an unknown appid is compared against zeros, so
    /// the time taken does not tell whether the app exists either.
    pub(crate) fn matches(&self, appid: &str, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let (stored, known) = match self.by_app.get(appid) {
            Some(stored) => (stored, true),
            None => (&[0u8; 32], false),
        };
        bool::from(presented.ct_eq(stored)) & known
    }

    /// Records `appid`'s secret (`None`: it has none, or no longer exists).
    pub(crate) fn set(&mut self, appid: &str, secret: Option<&Secret>) {
        self.generation += 1;
        match secret {
            Some(secret) => {
                let digest = Sha256::digest(secret.expose().as_bytes()).into();
                self.by_app.insert(appid.to_owned(), digest);
            }
            None => {
                self.by_app.remove(appid);
            }
        }
    }

    /// The generation a reload starts from; see [`SecretDigests::install`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces every digest with those of `secrets`, read from the database since
    /// [`SecretDigests::generation`] said `read_at`; returns false and keeps what is held when
    /// this process changed an app meanwhile (the next reload reads it).
    pub(crate) fn install(&mut self, read_at: u64, secrets: &[(String, Secret)]) -> bool {
        if self.generation != read_at {
            return false;
        }
        self.by_app = secrets
            .iter()
            .map(|(appid, secret)| {
                let digest = Sha256::digest(secret.expose().as_bytes()).into();
                (appid.clone(), digest)
            })
            .collect();
        true
    }
}

/// A limit's number as its column holds it; [`RefreshLimit`]'s bounds keep it in range.
fn stored(n: u32) -> i32 {
    i32::try_from(n).expect("a refresh limit is far below i32::MAX")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Store {
    /// Adds a consumer key and returns it: the only time the key is seen, since only its hash is
    /// stored.
    pub async fn add_consumer_key(
        &self,
        new: &NewConsumerKey,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, Error> {
        if !valid_name(&new.name) {
            return Err(Error::InvalidInput(format!(
                "malformed key name {:?}: expected 1 to 64 letters, digits, '_', '-' or '.'",
                new.name.chars().take(80).collect::<String>()
            )));
        }
        if new.appids.is_empty() {
            return Err(Error::InvalidInput(
                "a consumer key needs at least one appid".into(),
            ));
        }
        let existing = self.consumer_keys().await?;
        if existing.iter().any(|k| k.name == new.name) {
            return Err(Error::InvalidInput(format!(
                "a key named {:?} exists already",
                new.name
            )));
        }
        let (id, key) = generate();
        let appids: BTreeSet<&str> = new.appids.iter().map(AppId::as_str).collect();
        let appids: Vec<&str> = appids.into_iter().collect();
        let networks: Vec<String> = new.networks.iter().map(IpNet::to_string).collect();
        let row = consumer_key::ActiveModel {
            id: Set(id.clone()),
            name: Set(new.name.clone()),
            key_hash: Set(KeyHash::of(key.expose()).to_hex()),
            appids: Set(appids.join(",")),
            allow_refresh: Set(new.allow_refresh),
            networks: Set(networks.join(",")),
            create_time: Set(now),
            revoke_time: Set(None),
            refresh_burst: Set(new.refresh_limit.map(|l| stored(l.burst))),
            refresh_per_minute: Set(new.refresh_limit.map(|l| stored(l.per_minute))),
        };
        consumer_key::Entity::insert(row)
            .exec(self.connection())
            .await?;
        Ok(IssuedKey { id, key })
    }

    /// Every consumer key, revoked ones included, oldest first.
    pub async fn consumer_keys(&self) -> Result<Vec<ConsumerKey>, Error> {
        let found = consumer_key::Entity::find()
            .order_by_asc(Column::CreateTime)
            .order_by_asc(Column::Id)
            .all(self.connection())
            .await;
        let rows = match found {
            Ok(rows) => rows,
            Err(e) => {
                let table = consumer_key::Entity.table_name();
                let manager = wetoken_migration::SchemaManager::new(self.connection());
                if matches!(manager.has_table(table).await, Ok(false)) {
                    return Err(Error::Schema(format!(
                        "table {table} is missing: run `wetoken-cli migrate up` (or set auto_migrate)"
                    )));
                }
                return Err(e.into());
            }
        };
        rows.into_iter().map(ConsumerKey::from_row).collect()
    }

    /// The key with this id or name, revoked or not.
    async fn consumer_key(&self, id_or_name: &str) -> Result<ConsumerKey, Error> {
        let mut matches: Vec<ConsumerKey> = self
            .consumer_keys()
            .await?
            .into_iter()
            .filter(|k| k.id == id_or_name || k.name == id_or_name)
            .collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(Error::InvalidInput(format!(
                "no consumer key has the id or name {id_or_name:?}"
            ))),
            _ => Err(Error::InvalidInput(format!(
                "{id_or_name:?} is one key's id and another's name: name the key by its id"
            ))),
        }
    }

    /// Revokes the key with this id or name. Returns its id; revoking a revoked key changes
    /// nothing and is not an error.
    pub async fn revoke_consumer_key(
        &self,
        id_or_name: &str,
        now: DateTime<Utc>,
    ) -> Result<String, Error> {
        let key = self.consumer_key(id_or_name).await?;
        consumer_key::Entity::update_many()
            .col_expr(Column::RevokeTime, Expr::value(now))
            .filter(Column::Id.eq(key.id.as_str()))
            .filter(Column::RevokeTime.is_null())
            .exec(self.connection())
            .await?;
        Ok(key.id.clone())
    }

    /// Sets the refresh limit of the key with this id or name (`None`: the server's default).
    /// Returns its id. Servers apply it when they next reload the keys; the key's bucket starts
    /// full under the new limit. A revoked key is refused: its limit no longer matters.
    pub async fn set_key_refresh_limit(
        &self,
        id_or_name: &str,
        limit: Option<RefreshLimit>,
    ) -> Result<String, Error> {
        let key = self.consumer_key(id_or_name).await?;
        if key.revoke_time.is_some() {
            return Err(Error::InvalidInput(format!(
                "consumer key {} ({}) is revoked",
                key.id, key.name
            )));
        }
        consumer_key::Entity::update_many()
            .col_expr(
                Column::RefreshBurst,
                Expr::value(limit.map(|l| stored(l.burst))),
            )
            .col_expr(
                Column::RefreshPerMinute,
                Expr::value(limit.map(|l| stored(l.per_minute))),
            )
            .filter(Column::Id.eq(key.id.as_str()))
            .exec(self.connection())
            .await?;
        Ok(key.id)
    }

    /// The snapshot of every key, for the server.
    pub async fn key_table(&self) -> Result<KeyTable, Error> {
        Ok(KeyTable::new(self.consumer_keys().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_app_secret_opens_its_own_app_only() {
        let mut digests = SecretDigests::default();
        let read_at = digests.generation();
        let stored = [
            ("wxa".to_owned(), Secret::new("secret-a")),
            ("wxb".to_owned(), Secret::new("secret-b")),
        ];
        assert!(digests.install(read_at, &stored));
        assert!(digests.matches("wxa", "secret-a"));
        assert!(digests.matches("wxb", "secret-b"));
        for (appid, presented) in [
            ("wxa", "secret-b"),
            ("wxb", "secret-a"),
            ("wxa", ""),
            ("wxa", "secret-a "),
            ("wxnobody", "secret-a"),
            ("wxnobody", ""),
        ] {
            assert!(!digests.matches(appid, presented), "{appid} {presented:?}");
        }

        // A change by this process wins over a reload that read the database before it.
        let read_at = digests.generation();
        digests.set("wxa", Some(&Secret::new("new-a")));
        assert!(!digests.install(read_at, &stored));
        assert!(digests.matches("wxa", "new-a") && !digests.matches("wxa", "secret-a"));
        digests.set("wxb", None);
        assert!(!digests.matches("wxb", "secret-b"));
        let read_at = digests.generation();
        assert!(digests.install(read_at, &stored[..1]));
        assert!(digests.matches("wxa", "secret-a") && !digests.matches("wxa", "new-a"));
    }

    fn key(appids: &[&str], refresh: bool, networks: &[&str], secret: &str) -> ConsumerKey {
        ConsumerKey {
            id: "k1".into(),
            name: "n".into(),
            appids: appids.iter().map(|a| (*a).to_owned()).collect(),
            allow_refresh: refresh,
            networks: networks.iter().map(|n| parse_network(n).unwrap()).collect(),
            refresh_limit: None,
            create_time: Utc::now(),
            revoke_time: None,
            hash: KeyHash::of(secret),
        }
    }

    fn access(appid: &str, refresh: bool, peer: [u8; 4]) -> Access<'_> {
        Access {
            appid,
            refresh,
            peer: IpAddr::from(peer),
        }
    }

    #[test]
    fn each_refusal() {
        let table = KeyTable::new([key(&["wx1"], false, &["127.0.0.1/32"], "good")]);
        let local = [127, 0, 0, 1];
        // (presented key, appid, refresh, peer, expected)
        type Case<'a> = (Option<&'a str>, &'a str, bool, [u8; 4], Result<(), Refusal>);
        let cases: [Case; 7] = [
            (Some("good"), "wx1", false, local, Ok(())),
            (None, "wx1", false, local, Err(Refusal::MissingKey)),
            (Some(""), "wx1", false, local, Err(Refusal::MissingKey)),
            (Some("bad"), "wx1", false, local, Err(Refusal::UnknownKey)),
            (Some("good"), "wx2", false, local, Err(Refusal::OutOfScope)),
            (
                Some("good"),
                "wx1",
                true,
                local,
                Err(Refusal::RefreshNotAllowed),
            ),
            (
                Some("good"),
                "wx1",
                false,
                [127, 0, 0, 2],
                Err(Refusal::Address),
            ),
        ];
        for (presented, appid, refresh, peer, expected) in cases {
            assert_eq!(
                table
                    .check(presented, access(appid, refresh, peer))
                    .map(|_| ()),
                expected,
                "{presented:?} {appid} {refresh} {peer:?}"
            );
        }
    }

    #[test]
    fn revoked_keys_open_nothing_but_keep_keys_required() {
        let mut revoked = key(&["wx1"], true, &[], "k");
        revoked.revoke_time = Some(Utc::now());
        let table = KeyTable::new([revoked]);
        assert!(table.is_required());
        assert_eq!(table.active(), 0);
        assert_eq!(
            table
                .check(Some("k"), access("wx1", false, [127, 0, 0, 1]))
                .map(|_| ()),
            Err(Refusal::UnknownKey)
        );
        assert!(!KeyTable::new([]).is_required());
    }

    #[test]
    fn refresh_limits_are_bounded() {
        let ok = RefreshLimit::new(10, 6).unwrap();
        assert_eq!((ok.burst(), ok.per_minute()), (10, 6));
        assert_eq!(ok.to_string(), "10 at once, 6 a minute");
        for (burst, per_minute) in [
            (1, 1),
            (RefreshLimit::MAX_BURST, RefreshLimit::MAX_PER_MINUTE),
        ] {
            assert!(RefreshLimit::new(burst, per_minute).is_ok());
        }
        for (burst, per_minute, says) in [
            (0, 6, "burst of 0"),
            (RefreshLimit::MAX_BURST + 1, 6, "1 to 1000 reports"),
            (10, 0, "rate of 0"),
            (10, RefreshLimit::MAX_PER_MINUTE + 1, "1 to 6000 a minute"),
        ] {
            let e = RefreshLimit::new(burst, per_minute)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{burst} {per_minute}: {e}");
        }
    }

    #[test]
    fn a_stored_refresh_limit_is_both_columns_or_neither() {
        let row = |burst: Option<i32>, per_minute: Option<i32>| consumer_key::Model {
            id: "k1".into(),
            name: "n".into(),
            key_hash: KeyHash::of("k").to_hex(),
            appids: "wx1".into(),
            allow_refresh: true,
            networks: String::new(),
            create_time: Utc::now(),
            revoke_time: None,
            refresh_burst: burst,
            refresh_per_minute: per_minute,
        };
        let limit = |b, p| ConsumerKey::from_row(row(b, p)).map(|k| k.refresh_limit);
        assert_eq!(limit(None, None).unwrap(), None);
        assert_eq!(
            limit(Some(3), Some(60)).unwrap(),
            Some(RefreshLimit::new(3, 60).unwrap())
        );
        for (b, p) in [
            (Some(3), None),
            (None, Some(60)),
            (Some(0), Some(60)),
            (Some(-1), Some(60)),
            (Some(3), Some(i32::MAX)),
        ] {
            let e = limit(b, p).unwrap_err();
            assert!(
                matches!(e, Error::Schema(ref m) if m.contains("refresh limit")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_passing_check_names_the_key() {
        let mut limited = key(&["wx1"], true, &[], "a");
        limited.id = "ka".into();
        limited.refresh_limit = Some(RefreshLimit::new(2, 60).unwrap());
        let mut other = key(&["wx1"], true, &[], "b");
        other.id = "kb".into();
        let table = KeyTable::new([limited.clone(), other]);
        let found = table
            .check(Some("a"), access("wx1", true, [127, 0, 0, 1]))
            .unwrap();
        assert_eq!(**found, limited);
        let found = table
            .check(Some("b"), access("wx1", true, [127, 0, 0, 1]))
            .unwrap();
        assert_eq!((found.id.as_str(), found.refresh_limit), ("kb", None));
        let mut ids: Vec<&str> = table.keys().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["ka", "kb"]);
    }

    #[test]
    fn generated_keys_are_distinct_and_hash_round_trips() {
        let (id1, k1) = generate();
        let (id2, k2) = generate();
        assert_ne!(k1.expose(), k2.expose());
        assert_ne!(id1, id2);
        assert!(k1.expose().starts_with(KEY_PREFIX));
        assert_eq!(k1.expose().len(), KEY_PREFIX.len() + 43);
        let h = KeyHash::of(k1.expose());
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }

    fn appid() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}"
    }

    proptest! {
        /// The scope check agrees with its definition: a request passes exactly when the key is
        /// known, the caller's address is allowed, the appid is in scope, and a refresh is allowed.
        #[test]
        fn scope_check_matches_its_definition(
            scope in proptest::collection::btree_set(appid(), 1..5),
            asked in appid(),
            refresh in any::<bool>(),
            allow_refresh in any::<bool>(),
            restrict in any::<bool>(),
            peer in any::<[u8; 4]>(),
            right_key in any::<bool>(),
        ) {
            let networks: &[&str] = if restrict { &["10.0.0.0/8"] } else { &[] };
            let scope_refs: Vec<&str> = scope.iter().map(String::as_str).collect();
            let table = KeyTable::new([key(&scope_refs, allow_refresh, networks, "the-key")]);
            let presented = if right_key { "the-key" } else { "another-key" };
            let got = table.check(Some(presented), access(&asked, refresh, peer)).map(|_| ());
            let expected = if !right_key {
                Err(Refusal::UnknownKey)
            } else if restrict && peer[0] != 10 {
                Err(Refusal::Address)
            } else if !scope.contains(&asked) {
                Err(Refusal::OutOfScope)
            } else if refresh && !allow_refresh {
                Err(Refusal::RefreshNotAllowed)
            } else {
                Ok(())
            };
            prop_assert_eq!(got, expected);
        }

        /// No key other than the issued one passes, whatever the request.
        #[test]
        fn only_the_issued_key_passes(other in ".{0,60}", asked in appid()) {
            let (_, issued) = generate();
            let table = KeyTable::new([key(&[asked.as_str()], true, &[], issued.expose())]);
            prop_assume!(other != issued.expose());
            prop_assert!(table.check(Some(&other), access(&asked, false, [127, 0, 0, 1])).is_err());
            prop_assert!(table.check(Some(issued.expose()), access(&asked, true, [127, 0, 0, 1])).is_ok());
        }
    }
}
