//! `wetoken_consumer_key`: one row per consumer key (migration 000005).

use sea_orm::entity::prelude::*;

/// A row of `wetoken_consumer_key`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wetoken_consumer_key")]
pub struct Model {
    /// A short random id, for `revoke` and logs.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The operator's name for it, unique.
    pub name: String,
    /// The key's SHA-256, lower-case hex, unique.
    pub key_hash: String,
    /// The appids it may read, comma-separated.
    pub appids: String,
    /// Whether it may ask for a passive refresh.
    pub allow_refresh: bool,
    /// Where it may be used from, comma-separated CIDR blocks; empty means anywhere.
    pub networks: String,
    /// When it was added.
    pub create_time: DateTimeUtc,
    /// When it was revoked; a revoked key keeps its row.
    pub revoke_time: Option<DateTimeUtc>,
    /// The most passive-refresh reports it may make at once (its bucket's size); NULL takes
    /// the server's default (migration 000009).
    pub refresh_burst: Option<i32>,
    /// How many reports a minute refill its bucket; NULL takes the server's default.
    pub refresh_per_minute: Option<i32>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
