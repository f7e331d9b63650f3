//! What a server asks of the engine besides credentials and apps: whether the database answers,
//! the consumer keys' snapshot, and what the metrics and listings read. A server holds an
//! [`Engine`] and asks it these; it never reaches for the [`Store`](crate::Store) behind it, so
//! the store's shape can change without the server noticing.

use chrono::{DateTime, Utc};

use crate::model::{AppId, AppInfo, Kind};
use crate::{Engine, Error, KeyTable};

impl Engine {
    /// Checks that the database answers: the health and readiness probes.
    pub async fn ping_database(&self) -> Result<(), Error> {
        self.store().ping().await
    }

    /// A snapshot of every consumer key, revoked ones included, to check requests against
    /// without a query each.
    pub async fn key_table(&self) -> Result<KeyTable, Error> {
        self.store().key_table().await
    }

    /// When each stored `kind` credential expires, by app: what the metrics' gauges report,
    /// read from the database so that every replica reports the cluster's truth.
    pub async fn expiries(&self, kind: Kind) -> Result<Vec<(AppId, DateTime<Utc>)>, Error> {
        self.store().expiries(kind).await
    }

    /// What listings show of every app, ordered by appid, without the state of its credentials
    /// (which [`Engine::app_statuses`] adds) and without decrypting a secret.
    pub async fn apps(&self) -> Result<Vec<AppInfo>, Error> {
        self.store().apps().await
    }
}
