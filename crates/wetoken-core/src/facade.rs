//! What a server asks of the engine besides credentials and apps: whether the database answers,
//! the consumer keys' snapshot, and what the metrics and listings read. A server holds an
//! [`Engine`] and asks it these; it never reaches for the [`Store`](crate::Store) behind it, so
//! the store's shape can change without the server noticing.

use chrono::{DateTime, Utc};

use crate::model::{AppId, AppInfo, Kind};
use crate::store::{AppFilter, Cursor, StateTotals, Troubled};
use crate::{AppStatus, Engine, Error, KeyTable};

/// A page of a listing: apps with the state of their credentials, and where the next page
/// starts, if one follows.
#[derive(Debug, Clone)]
pub struct AppPage {
    /// The apps, ordered by appid.
    pub apps: Vec<AppStatus>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<Cursor>,
}

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

    /// A page of at most `limit` apps after `after` that match `filter`, with the state of
    /// their credentials: a handful of indexed queries whatever the number of apps
    /// (`store::listing`).
    pub async fn list_apps(
        &self,
        filter: &AppFilter,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<AppPage, Error> {
        let store = self.store();
        let (apps, more) = store
            .page_of_apps(filter, after.map(Cursor::appid), limit, self.now())
            .await?;
        let ids: Vec<AppId> = apps.iter().map(|a| a.appid.clone()).collect();
        let mut records = Vec::new();
        for kind in Kind::ALL {
            records.push(store.credentials_of(kind, &ids).await?);
        }
        let next = more.then(|| ids.last().map(Cursor::after)).flatten();
        let apps = apps
            .into_iter()
            .map(|app| {
                let id = app.appid.as_str();
                AppStatus {
                    access_token: records[0].remove(id),
                    jsapi_ticket: records[1].remove(id),
                    card_ticket: records[2].remove(id),
                    app,
                }
            })
            .collect();
        Ok(AppPage { apps, next })
    }

    /// How many credentials are in each state, by kind, read from the database: every
    /// replica's work.
    pub async fn state_totals(&self) -> Result<StateTotals, Error> {
        self.store().state_totals(self.now()).await
    }

    /// At most `limit` credentials in trouble (halted, out of budget, failing), the worst first.
    pub async fn troubled(&self, limit: u64) -> Result<Vec<Troubled>, Error> {
        self.store().troubled(limit).await
    }
}
