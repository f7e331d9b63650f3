//! The database: apps and their stored credentials.
//!
//! One [`Store`] serves SQLite, MySQL/MariaDB and PostgreSQL alike.
//! Apps go through the sea-orm entity in [`crate::entity`]; the two credential tables share a shape,
//! so one set of sea-query statements serves both, with the table and value column taken from
//! [`Kind`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, JoinType, OnConflict, Order, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryOrder, QuerySelect, SqlErr,
    TransactionTrait,
};

use crate::Error;
use crate::crypto::{Keyring, SealError, is_sealed};
use crate::entity::app_info;
use crate::model::{
    App, AppId, AppInfo, AppKind, AppUpdate, Credential, CredentialRecord, GoFields, Kind, NewApp,
    Secret, TokenMode, WorkIds,
};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// `sqlite://path?mode=rwc`, `mysql://…` or `postgres://…`.
    pub url: String,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub connect_timeout: Duration,
    /// How long a connection may live before it is replaced, if limited.
    pub max_lifetime: Option<Duration>,
    /// The master keys app secrets are encrypted with; `None` stores them in plain text (and
    /// refuses to read encrypted ones). See [`crate::crypto`].
    pub keyring: Option<Arc<Keyring>>,
}

impl DatabaseOptions {
    /// Options for `url` with a pool fit for one wetoken process.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            max_lifetime: None,
            keyring: None,
        }
    }
}

/// The daily budget of upstream calls of an app that was given none: WeChat's token quota for a
/// typical official account.
pub const DEFAULT_DAILY_BUDGET: i32 = 2000;

/// A failed refresh, as recorded.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The outcome: WeChat's `errcode: errmsg`, or what else went wrong.
    pub message: &'a str,
    /// Whether refreshing stops until the app's settings change.
    pub halted: bool,
    /// Failures in a row, this one included.
    pub failures: i32,
    /// No replica calls WeChat for this credential before then.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The most characters of a refresh outcome the `message` column keeps.
const MESSAGE_MAX: usize = 1024;

impl Kind {
    fn table(self) -> Alias {
        Alias::new(match self {
            Kind::AccessToken => "wechat_access_token",
            Kind::JsapiTicket => "wechat_jsapi_ticket",
            Kind::CardTicket => "wechat_card_ticket",
        })
    }

    fn value_column(self) -> Alias {
        Alias::new(match self {
            Kind::AccessToken => "access_token",
            Kind::JsapiTicket | Kind::CardTicket => "ticket",
        })
    }
}

fn col(name: &'static str) -> Alias {
    Alias::new(name)
}

/// wetoken's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    keyring: Option<Arc<Keyring>>,
}

/// The secret-like columns of `wechat_app_info`, encrypted when a master key is configured.
/// An empty value is no value: the Go schema stores `''` for an unset `token`, `aes_key` or
/// `pay_key`, and it is never encrypted.
pub(crate) const SECRET_COLUMNS: [&str; 4] = ["secret", "token", "aes_key", "pay_key"];

impl Store {
    /// Connects to the database `options` names.
    ///
    /// A SQLite URL without a `mode` gets `mode=rwc`, so the file is created on first start.
    pub async fn connect(options: &DatabaseOptions) -> Result<Self, Error> {
        let mut url = options.url.clone();
        if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let mut connect = ConnectOptions::new(url);
        connect
            .max_connections(options.max_connections)
            .min_connections(1)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .sqlx_logging(false);
        if let Some(lifetime) = options.max_lifetime {
            connect.max_lifetime(lifetime);
        }
        if options.url.contains(":memory:") {
            // Every in-memory SQLite connection is a separate database.
            connect.max_connections(1);
        }
        let db = Database::connect(connect).await.map_err(Error::from)?;
        Ok(Self {
            db,
            keyring: options.keyring.clone(),
        })
    }

    /// Wraps an open connection. Secrets are stored in plain text unless
    /// [`Store::with_keyring`] says otherwise.
    pub fn from_connection(db: DatabaseConnection) -> Self {
        Self { db, keyring: None }
    }

    /// The same store, encrypting and decrypting secrets with `keyring`.
    pub fn with_keyring(mut self, keyring: Option<Arc<Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// The keyring secrets are encrypted with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// The stored form of a secret-like value of `appid`'s `column`: encrypted under the current
    /// master key, or as it is when none is configured.
    pub(crate) fn seal(&self, appid: &str, column: &str, plain: &str) -> Result<String, Error> {
        match &self.keyring {
            Some(keyring) => Ok(keyring.seal(plain, &secret_context(appid, column))),
            // A plain value that looks encrypted would be refused when read back.
            None if is_sealed(plain) => Err(Error::InvalidInput(format!(
                "{column} must not start with \"wtenc:\""
            ))),
            None => Ok(plain.to_owned()),
        }
    }

    /// The plain text of a stored secret-like value. A plain value is read as it is (rows from
    /// before encryption); an encrypted one needs its key and must authenticate.
    pub(crate) fn open(&self, appid: &str, column: &str, stored: String) -> Result<String, Error> {
        if !is_sealed(&stored) {
            return Ok(stored);
        }
        let opened = match &self.keyring {
            Some(keyring) => keyring.open(&stored, &secret_context(appid, column)),
            None => Err(SealError::NoKey),
        };
        opened.map_err(|e| {
            Error::Secret(format!(
                "the stored {column} of app {appid} cannot be decrypted: {e}"
            ))
        })
    }

    /// The underlying connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Adds an app. An existing appid is refused and its row left as it was.
    pub async fn insert_app(&self, app: &NewApp, now: DateTime<Utc>) -> Result<(), Error> {
        if (app.kind == AppKind::Work) != app.work.is_some() {
            return Err(Error::InvalidInput(
                "a WeCom app (kind work) needs a corpid and an agentid; other kinds take neither"
                    .into(),
            ));
        }
        let row = app_info::ActiveModel {
            appid: Set(app.appid.as_str().to_owned()),
            kind: Set(app.kind.as_str().to_owned()),
            token_mode: Set(app.token_mode.as_str().to_owned()),
            corpid: Set(app.work.as_ref().map(|w| w.corpid.clone())),
            agentid: Set(app.work.as_ref().map(|w| w.agentid.clone())),
            daily_budget: Set(app.daily_budget.unwrap_or(DEFAULT_DAILY_BUDGET)),
            calls_day: Set(None),
            calls_today: Set(0),
            secret: Set(self.seal(app.appid.as_str(), "secret", app.secret.expose())?),
            token: Set(app
                .token
                .as_ref()
                .map(|s| self.seal(app.appid.as_str(), "token", s.expose()))
                .transpose()?),
            aes_key: Set(app
                .aes_key
                .as_ref()
                .map(|s| self.seal(app.appid.as_str(), "aes_key", s.expose()))
                .transpose()?),
            // The Go schema's NOT NULL columns get '' for "not set", as the Go server wrote them,
            // so a rolled-back Go server reads every row.
            pay_key: Set(Some(match &app.pay_key {
                Some(key) => self.seal(app.appid.as_str(), "pay_key", key.expose())?,
                None => String::new(),
            })),
            mchid: Set(app.go.mchid.clone().unwrap_or_default()),
            sub_appid: Set(app.go.sub_appid.clone().unwrap_or_default()),
            sub_mchid: Set(app.go.sub_mchid.clone().unwrap_or_default()),
            wechat_host: Set(app.go.wechat_host.clone()),
            wcode_template_id: Set(app.go.wcode_template_id.clone()),
            create_time: Set(now),
            update_time: Set(now),
        };
        match app_info::Entity::insert(row).exec(&self.db).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(Error::DuplicateApp(app.appid.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One app, if it exists.
    pub async fn app(&self, appid: &AppId) -> Result<Option<App>, Error> {
        let row = app_info::Entity::find_by_id(appid.as_str().to_owned())
            .one(&self.db)
            .await?;
        row.map(|row| self.app_from_row(row)).transpose()
    }

    /// What listings show of one app, if it exists. Its secrets are not decrypted.
    pub async fn app_info(&self, appid: &AppId) -> Result<Option<AppInfo>, Error> {
        let row = app_info::Entity::find_by_id(appid.as_str().to_owned())
            .one(&self.db)
            .await?;
        row.as_ref().map(info_from_row).transpose()
    }

    /// What listings show of every app, ordered by appid. No secret is decrypted, so a value that
    /// does not decrypt spoils no listing.
    pub async fn apps(&self) -> Result<Vec<AppInfo>, Error> {
        app_info::Entity::find()
            .order_by_asc(app_info::Column::Appid)
            .all(&self.db)
            .await?
            .iter()
            .map(info_from_row)
            .collect()
    }

    /// Every app's secret, decrypted, for the engine's digests of them (the Go SDK presents an
    /// app's own secret). Reads the two columns only. An app whose secret does not decrypt comes
    /// with its error, so that one broken row spoils no other app.
    pub async fn app_secrets(&self) -> Result<Vec<(String, Result<Secret, Error>)>, Error> {
        let rows: Vec<(String, String)> = app_info::Entity::find()
            .select_only()
            .column(app_info::Column::Appid)
            .column(app_info::Column::Secret)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(appid, stored)| {
                let secret = self.open(&appid, "secret", stored).map(Secret::new);
                (appid, secret)
            })
            .collect())
    }

    /// Changes an app's settings. Any halt on its credentials is lifted, since the settings that
    /// caused it may be what changed.
    pub async fn update_app(
        &self,
        appid: &AppId,
        update: &AppUpdate,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let txn = self.db.begin().await?;
        let Some(row) = app_info::Entity::find_by_id(appid.as_str().to_owned())
            .one(&txn)
            .await?
        else {
            return Err(Error::UnknownApp(appid.clone()));
        };
        let mut row: app_info::ActiveModel = row.into();
        let id = appid.as_str();
        if let Some(secret) = &update.secret {
            row.secret = Set(self.seal(id, "secret", secret.expose())?);
        }
        if let Some(token) = &update.token {
            row.token = Set(Some(self.seal(id, "token", token.expose())?));
        }
        if let Some(aes_key) = &update.aes_key {
            row.aes_key = Set(Some(self.seal(id, "aes_key", aes_key.expose())?));
        }
        if let Some(mode) = update.token_mode {
            row.token_mode = Set(mode.as_str().to_owned());
        }
        if let Some(budget) = update.daily_budget {
            row.daily_budget = Set(budget);
        }
        if let Some(key) = &update.pay_key {
            row.pay_key = Set(Some(self.seal(id, "pay_key", key.expose())?));
        }
        let go = &update.go;
        if let Some(v) = &go.mchid {
            row.mchid = Set(v.clone());
        }
        if let Some(v) = &go.sub_appid {
            row.sub_appid = Set(v.clone());
        }
        if let Some(v) = &go.sub_mchid {
            row.sub_mchid = Set(v.clone());
        }
        if let Some(v) = &go.wechat_host {
            row.wechat_host = Set(Some(v.clone()));
        }
        if let Some(v) = &go.wcode_template_id {
            row.wcode_template_id = Set(Some(v.clone()));
        }
        row.update_time = Set(now);
        row.update(&txn).await?;
        for kind in Kind::ALL {
            let lift = Query::update()
                .table(kind.table())
                .value(col("halted"), false)
                .value(col("failures"), 0)
                .value(col("retry_at"), Option::<DateTime<Utc>>::None)
                .value(col("message"), "settings changed")
                .value(col("update_time"), now)
                .and_where(Expr::col(col("appid")).eq(appid.as_str()))
                .cond_where(
                    Expr::col(col("halted"))
                        .eq(true)
                        .or(Expr::col(col("failures")).gt(0)),
                )
                .to_owned();
            txn.execute(&lift).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Removes an app and its stored credentials. Returns whether it existed.
    pub async fn delete_app(&self, appid: &AppId) -> Result<bool, Error> {
        let txn = self.db.begin().await?;
        for kind in Kind::ALL {
            let delete = Query::delete()
                .from_table(kind.table())
                .and_where(Expr::col(col("appid")).eq(appid.as_str()))
                .to_owned();
            txn.execute(&delete).await?;
        }
        let gone = app_info::Entity::delete_by_id(appid.as_str().to_owned())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(gone.rows_affected > 0)
    }

    /// The stored state of one credential, if a row exists.
    pub async fn credential(
        &self,
        appid: &AppId,
        kind: Kind,
    ) -> Result<Option<CredentialRecord>, Error> {
        let select = Query::select()
            .columns([
                kind.value_column(),
                col("expires_at"),
                col("message"),
                col("halted"),
                col("refresh_time"),
                col("version"),
                col("failures"),
                col("retry_at"),
                col("lease_owner"),
                col("lease_until"),
            ])
            .expr(self.db_now_ms())
            .from(kind.table())
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .to_owned();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        let value: Option<String> = row.try_get_by_index(0)?;
        let expires_at: Option<DateTime<Utc>> = row.try_get_by_index(1)?;
        let credential = match (value, expires_at) {
            (Some(value), Some(expires_at)) => Some(Credential { value, expires_at }),
            _ => None,
        };
        let owner: Option<String> = row.try_get_by_index(8)?;
        let lease_until: Option<i64> = row.try_get_by_index(9)?;
        let db_now: i64 = row.try_get_by_index(10)?;
        Ok(Some(CredentialRecord {
            credential,
            message: row.try_get_by_index(2)?,
            halted: row.try_get_by_index(3)?,
            refresh_time: row.try_get_by_index(4)?,
            version: row.try_get_by_index(5)?,
            failures: row.try_get_by_index(6)?,
            retry_at: row.try_get_by_index(7)?,
            leased: owner.is_some() && lease_until.is_some_and(|until| until >= db_now),
        }))
    }

    /// The database's clock, in Unix milliseconds, as an SQL expression for this backend.
    ///
    /// Leases are judged on it so that replicas with skewed clocks agree on when one lapsed.
    fn db_now_ms(&self) -> Expr {
        Expr::cust(match self.db.get_database_backend() {
            DbBackend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            DbBackend::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            _ => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        })
    }

    /// Makes sure the credential's row exists, so that its lease can be taken.
    async fn ensure_row(&self, appid: &AppId, kind: Kind, now: DateTime<Utc>) -> Result<(), Error> {
        self.insert_row(
            kind,
            vec![col("appid"), col("message"), col("update_time")],
            vec![appid.as_str().into(), "not fetched yet".into(), now.into()],
        )
        .await?;
        Ok(())
    }

    /// Stores a credential obtained elsewhere (`wetoken-cli import`) for an app that has none:
    /// a credential already stored is kept. Returns whether it was stored.
    pub async fn import_credential(
        &self,
        appid: &AppId,
        kind: Kind,
        credential: &Credential,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.insert_row(
            kind,
            vec![
                col("appid"),
                kind.value_column(),
                col("expires_at"),
                col("message"),
                col("update_time"),
            ],
            vec![
                appid.as_str().into(),
                credential.value.as_str().into(),
                credential.expires_at.into(),
                "imported".into(),
                now.into(),
            ],
        )
        .await
    }

    /// Inserts a credential row unless one exists for the appid; returns whether it did.
    async fn insert_row(
        &self,
        kind: Kind,
        columns: Vec<Alias>,
        values: Vec<sea_orm::sea_query::SimpleExpr>,
    ) -> Result<bool, Error> {
        let insert = Query::insert()
            .into_table(kind.table())
            .columns(columns)
            .values_panic(values)
            .on_conflict(
                OnConflict::column(col("appid"))
                    .do_nothing_on([col("appid")])
                    .to_owned(),
            )
            .to_owned();
        match self.db.execute(&insert).await {
            Ok(done) => Ok(done.rows_affected() == 1),
            // MySQL reports the ignored duplicate on some versions; the row exists either way.
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the refresh lease of one credential for `ttl`, on the database's clock, if nobody
    /// holds it or the holder's lease has lapsed. `owner` must be unique to this attempt.
    ///
    /// This is a single conditional UPDATE, a compare-and-set that every backend runs atomically.
    pub async fn try_lease(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.ensure_row(appid, kind, now).await?;
        let ttl_ms = ttl.as_millis() as i64;
        let update = Query::update()
            .table(kind.table())
            .value(col("lease_owner"), owner)
            .value(col("lease_until"), self.db_now_ms().add(ttl_ms))
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .cond_where(
                Expr::col(col("lease_owner"))
                    .is_null()
                    .or(Expr::col(col("lease_until")).lt(self.db_now_ms())),
            )
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// Gives the lease back, if `owner` still holds it.
    pub async fn release_lease(&self, appid: &AppId, kind: Kind, owner: &str) -> Result<(), Error> {
        let update = Query::update()
            .table(kind.table())
            .value(col("lease_owner"), Option::<String>::None)
            .value(col("lease_until"), Option::<i64>::None)
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .and_where(Expr::col(col("lease_owner")).eq(owner))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }

    /// Stores a freshly fetched credential as the current one and gives the lease back.
    ///
    /// The write is fenced: it happens only if `owner` still holds the lease and the row is still
    /// at `version`, the one read before the fetch. Returns whether it happened; `false` means a
    /// newer value was stored meanwhile and this one must not replace it.
    pub async fn save_credential(
        &self,
        appid: &AppId,
        kind: Kind,
        credential: &Credential,
        fence: (&str, i64),
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let (owner, version) = fence;
        let update = Query::update()
            .table(kind.table())
            .value(kind.value_column(), credential.value.as_str())
            .value(col("expires_at"), credential.expires_at)
            .value(col("message"), "success")
            .value(col("halted"), false)
            .value(col("failures"), 0)
            .value(col("retry_at"), Option::<DateTime<Utc>>::None)
            .value(col("version"), Expr::col(col("version")).add(1))
            .value(col("lease_owner"), Option::<String>::None)
            .value(col("lease_until"), Option::<i64>::None)
            .value(col("refresh_time"), now)
            .value(col("update_time"), now)
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .and_where(Expr::col(col("lease_owner")).eq(owner))
            .and_where(Expr::col(col("version")).eq(version))
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// Records a failed refresh and gives the lease back. The stored value, if any, is kept: it
    /// may still be valid.
    pub async fn record_failure(
        &self,
        appid: &AppId,
        kind: Kind,
        failure: &Failure<'_>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let message: String = failure.message.chars().take(MESSAGE_MAX).collect();
        let update = Query::update()
            .table(kind.table())
            .value(col("message"), message)
            .value(col("halted"), failure.halted)
            .value(col("failures"), failure.failures)
            .value(col("retry_at"), failure.retry_at)
            .value(col("lease_owner"), Option::<String>::None)
            .value(col("lease_until"), Option::<i64>::None)
            .value(col("refresh_time"), now)
            .value(col("update_time"), now)
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .and_where(Expr::col(col("lease_owner")).eq(owner))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }

    /// Apps whose `kind` credential is missing or expires before `before`, and is not halted:
    /// what the scheduler should look at. Each comes with its stored expiry, if any, and its
    /// token mode.
    ///
    /// Only apps that have the credential are listed: jsapi tickets for official accounts and
    /// WeCom apps; card tickets only for official accounts that have asked for one before (most
    /// never use cards).
    pub async fn due(&self, kind: Kind, before: DateTime<Utc>) -> Result<Vec<Due>, Error> {
        let app = Alias::new("app");
        let cred = Alias::new("cred");
        let mut select = Query::select()
            .column((app.clone(), col("appid")))
            .column((cred.clone(), col("expires_at")))
            .column((app.clone(), col("token_mode")))
            .from_as(app_info::Entity, app.clone())
            .join_as(
                if kind == Kind::CardTicket {
                    JoinType::InnerJoin
                } else {
                    JoinType::LeftJoin
                },
                kind.table(),
                cred.clone(),
                Expr::col((app.clone(), col("appid"))).equals((cred.clone(), col("appid"))),
            )
            .cond_where(
                Expr::col((cred.clone(), col("appid")))
                    .is_null()
                    .or(Expr::col((cred.clone(), col("halted"))).eq(false).and(
                        Expr::col((cred.clone(), col("expires_at")))
                            .is_null()
                            .or(Expr::col((cred.clone(), col("expires_at"))).lt(before)),
                    )),
            )
            .order_by((app.clone(), col("appid")), Order::Asc)
            .to_owned();
        let kinds: Vec<&str> = [AppKind::Mp, AppKind::Mini, AppKind::Work]
            .into_iter()
            .filter(|k| k.has(kind))
            .map(AppKind::as_str)
            .collect();
        select.and_where(Expr::col((app, col("kind"))).is_in(kinds));
        let rows = self.db.query_all(&select).await?;
        rows.into_iter()
            .map(|row| {
                let appid: String = row.try_get_by_index(0)?;
                let mode: String = row.try_get_by_index(2)?;
                Ok(Due {
                    appid: AppId::parse(&appid)?,
                    expires_at: row.try_get_by_index(1)?,
                    token_mode: TokenMode::parse(&mode)?,
                })
            })
            .collect()
    }

    /// Every stored `kind` credential's expiry, by app.
    pub async fn expiries(&self, kind: Kind) -> Result<Vec<(AppId, DateTime<Utc>)>, Error> {
        let select = Query::select()
            .columns([col("appid"), col("expires_at")])
            .from(kind.table())
            .and_where(Expr::col(col("expires_at")).is_not_null())
            .to_owned();
        self.db
            .query_all(&select)
            .await?
            .into_iter()
            .map(|row| {
                let appid: String = row.try_get_by_index(0)?;
                Ok((AppId::parse(&appid)?, row.try_get_by_index(1)?))
            })
            .collect()
    }

    /// Counts one upstream call for `appid` on `day`, for every replica to see.
    pub async fn count_call(&self, appid: &AppId, day: &str) -> Result<(), Error> {
        let update = Query::update()
            .table(app_info::Entity)
            .value(
                col("calls_today"),
                Expr::case(
                    Expr::col(col("calls_day")).eq(day),
                    Expr::col(col("calls_today")).add(1),
                )
                .finally(1),
            )
            .value(col("calls_day"), day)
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }

    /// How many stable tokens were forced on `day` for `appid`, and when the last one was.
    pub async fn forces(
        &self,
        appid: &AppId,
        day: &str,
    ) -> Result<(i32, Option<DateTime<Utc>>), Error> {
        let select = Query::select()
            .columns([col("force_day"), col("force_count"), col("forced_at")])
            .from(Kind::AccessToken.table())
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .to_owned();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok((0, None));
        };
        let stored_day: Option<String> = row.try_get_by_index(0)?;
        let count: i32 = row.try_get_by_index(1)?;
        let at: Option<DateTime<Utc>> = row.try_get_by_index(2)?;
        let today = if stored_day.as_deref() == Some(day) {
            count
        } else {
            0
        };
        Ok((today, at))
    }

    /// Counts one forced stable token on `day`. Called by the lease holder only.
    pub async fn record_force(
        &self,
        appid: &AppId,
        day: &str,
        count: i32,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let update = Query::update()
            .table(Kind::AccessToken.table())
            .value(col("force_day"), day)
            .value(col("force_count"), count)
            .value(col("forced_at"), now)
            .and_where(Expr::col(col("appid")).eq(appid.as_str()))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }
}

/// A credential the scheduler may need to renew.
#[derive(Debug, Clone)]
pub struct Due {
    /// The app.
    pub appid: AppId,
    /// When the stored value expires, if one is stored.
    pub expires_at: Option<DateTime<Utc>>,
    /// The app's token mode (stable tokens renew on their own schedule).
    pub token_mode: TokenMode,
}

/// The day as WeChat counts it for its daily limits (China time), `YYYYMMDD`.
pub fn wechat_day(at: DateTime<Utc>) -> String {
    (at + chrono::TimeDelta::hours(8))
        .format("%Y%m%d")
        .to_string()
}

/// What a secret-like value is bound to: its table, column and appid. A ciphertext copied to
/// another row or column does not decrypt there.
pub(crate) fn secret_context(appid: &str, column: &str) -> Vec<u8> {
    format!("wetoken/wechat_app_info/{column}/{appid}").into_bytes()
}

impl Store {
    fn app_from_row(&self, row: app_info::Model) -> Result<App, Error> {
        let open = |column, value: String| {
            if self.keyring.is_some() && !is_sealed(&value) {
                // Accepted, so that rows from before encryption keep working, but a server with
                // the key encrypted every plain value at start: this one came later.
                tracing::warn!(
                    appid = row.appid,
                    column,
                    "stored in plain text although a master key is configured: written by a \
                     process without the key, or changed in the database; a server start or \
                     `wetoken-cli migrate up --encrypt-secrets` encrypts it"
                );
            }
            self.open(&row.appid, column, value).map(Secret::new)
        };
        let secret = open("secret", row.secret.clone())?;
        let optional = |column, value: &Option<String>| {
            set(value).map(|v| open(column, v.to_owned())).transpose()
        };
        Ok(App {
            info: info_from_row(&row)?,
            secret,
            token: optional("token", &row.token)?,
            aes_key: optional("aes_key", &row.aes_key)?,
            pay_key: optional("pay_key", &row.pay_key)?,
        })
    }
}

/// The app a row describes, secrets left out.
fn info_from_row(row: &app_info::Model) -> Result<AppInfo, Error> {
    let corrupt =
        |what: &str| Error::Database(format!("app {:?}: stored {what} is invalid", row.appid));
    let work = match (&row.corpid, &row.agentid) {
        (Some(corpid), Some(agentid)) => Some(WorkIds {
            corpid: corpid.clone(),
            agentid: agentid.clone(),
        }),
        _ => None,
    };
    Ok(AppInfo {
        appid: AppId::parse(&row.appid).map_err(|_| corrupt("appid"))?,
        kind: AppKind::parse(&row.kind).map_err(|_| corrupt("kind"))?,
        token_mode: TokenMode::parse(&row.token_mode).map_err(|_| corrupt("token_mode"))?,
        work,
        daily_budget: row.daily_budget,
        calls_today: if row.calls_day.as_deref() == Some(wechat_day(Utc::now()).as_str()) {
            row.calls_today
        } else {
            0
        },
        has_token: set(&row.token).is_some(),
        has_aes_key: set(&row.aes_key).is_some(),
        has_pay_key: set(&row.pay_key).is_some(),
        go: GoFields {
            mchid: set(&Some(row.mchid.clone())).map(str::to_owned),
            sub_appid: set(&Some(row.sub_appid.clone())).map(str::to_owned),
            sub_mchid: set(&Some(row.sub_mchid.clone())).map(str::to_owned),
            wechat_host: set(&row.wechat_host).map(str::to_owned),
            wcode_template_id: set(&row.wcode_template_id).map(str::to_owned),
        },
        create_time: row.create_time,
        update_time: row.update_time,
    })
}

/// A stored optional value: `None` for NULL and for the Go schema's `''`.
fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        match e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => {
                Error::DatabaseUnavailable(e.to_string())
            }
            e => Error::Database(e.to_string()),
        }
    }
}
