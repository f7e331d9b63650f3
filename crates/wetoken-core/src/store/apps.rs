//! App rows (`wechat_app_info`): adding, reading, changing and deleting apps, with their
//! secret-like columns sealed and opened on the way, and the per-day count of upstream calls.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait,
    IdenStatic, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};

use super::sealing::{SealedRow, next_generation};
use super::{DEFAULT_DAILY_BUDGET, Store, wechat_day};
use crate::Error;
use crate::crypto::is_sealed;
use crate::entity::app_info::{self, Column as A};
use crate::entity::credential::Column as C;
use crate::model::{
    App, AppId, AppInfo, AppKind, AppUpdate, GoFields, Kind, NewApp, Secret, TokenMode, WorkIds,
};

impl Store {
    /// Adds an app. An existing appid is refused and its row left as it was.
    pub async fn insert_app(&self, app: &NewApp, now: DateTime<Utc>) -> Result<(), Error> {
        if (app.kind == AppKind::Work) != app.work.is_some() {
            return Err(Error::InvalidInput(
                "a WeCom app (kind work) needs a corpid and an agentid; other kinds take neither"
                    .into(),
            ));
        }
        self.check_open_platform(app).await?;
        let row = self.new_app_row(app, now)?;
        // The app and its credential rows together: the scheduler finds what is due in the
        // credential tables alone, so an app row without them would never be renewed.
        let txn = self.db.begin().await?;
        match app_info::Entity::insert(row).exec(&txn).await {
            Ok(_) => {}
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(Error::DuplicateApp(app.appid.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        super::credentials::make_rows(&txn, &app.appid, app.kind, now).await?;
        txn.commit().await?;
        Ok(())
    }

    /// A new app's row, its secret-like values sealed.
    pub(super) fn new_app_row(
        &self,
        app: &NewApp,
        now: DateTime<Utc>,
    ) -> Result<app_info::ActiveModel, Error> {
        // A new row starts at a random generation (see `next_generation`).
        let generation = next_generation(0);
        let id = app.appid.as_str();
        Ok(app_info::ActiveModel {
            appid: Set(id.to_owned()),
            kind: Set(app.kind.as_str().to_owned()),
            token_mode: Set(app.token_mode.as_str().to_owned()),
            corpid: Set(app.work.as_ref().map(|w| w.corpid.clone())),
            agentid: Set(app.work.as_ref().map(|w| w.agentid.clone())),
            component_appid: Set(app.component.as_ref().map(|c| c.to_string())),
            revoked_at: Set(None),
            daily_budget: Set(app.daily_budget.unwrap_or(DEFAULT_DAILY_BUDGET)),
            calls_day: Set(None),
            calls_today: Set(0),
            verify_secs: Set(app.verify_secs),
            secret: Set(self.seal(id, A::Secret, app.secret.expose(), generation)?),
            token: Set(app
                .token
                .as_ref()
                .map(|s| self.seal(id, A::Token, s.expose(), generation))
                .transpose()?),
            aes_key: Set(app
                .aes_key
                .as_ref()
                .map(|s| self.seal(id, A::AesKey, s.expose(), generation))
                .transpose()?),
            // The Go schema's NOT NULL columns get '' for "not set", as the Go server wrote them,
            // so a rolled-back Go server reads every row.
            pay_key: Set(Some(match &app.pay_key {
                Some(key) => self.seal(id, A::PayKey, key.expose(), generation)?,
                None => String::new(),
            })),
            seal_generation: Set(generation),
            mchid: Set(app.go.mchid.clone().unwrap_or_default()),
            sub_appid: Set(app.go.sub_appid.clone().unwrap_or_default()),
            sub_mchid: Set(app.go.sub_mchid.clone().unwrap_or_default()),
            wechat_host: Set(app.go.wechat_host.clone()),
            wcode_template_id: Set(app.go.wcode_template_id.clone()),
            create_time: Set(now),
            update_time: Set(now),
        })
    }

    /// A component needs its message token and EncodingAESKey (WeChat's pushes are opened with
    /// them); an authorizer is an official account or mini program of a stored component.
    async fn check_open_platform(&self, app: &NewApp) -> Result<(), Error> {
        if app.kind == AppKind::Component {
            let (Some(token), Some(aes_key)) = (&app.token, &app.aes_key) else {
                return Err(Error::InvalidInput(
                    "a third-party platform (kind component) needs its message token and \
                     EncodingAESKey (token and aes_key): WeChat's pushes are opened with them"
                        .into(),
                ));
            };
            crate::msgcrypt::MsgCrypt::new(token.expose(), aes_key.expose(), app.appid.as_str())
                .map_err(|e| {
                    Error::InvalidInput(format!("third-party platform {}: {e}", app.appid))
                })?;
        }
        if let Some(component) = &app.component {
            if !matches!(app.kind, AppKind::Mp | AppKind::Mini) {
                return Err(Error::InvalidInput(format!(
                    "an authorizer (an app with a component_appid) is an official account or a \
                     mini program (kind mp or mini), not {}",
                    app.kind.as_str()
                )));
            }
            if app.token_mode != TokenMode::Classic {
                return Err(Error::InvalidInput(
                    "an authorizer's token comes from its third-party platform: token_mode \
                     stable does not apply"
                        .into(),
                ));
            }
            self.check_component(&self.db, component).await?;
        }
        Ok(())
    }

    /// What [`Store::check_open_platform`] checks at insert, for an update of `row`: a
    /// component's message token and EncodingAESKey as they will be (the new one, or the one
    /// stored) must still open WeChat's pushes, and an authorizer's token stays classic.
    fn check_open_platform_update(
        &self,
        row: &app_info::Model,
        update: &AppUpdate,
    ) -> Result<(), Error> {
        if row.component_appid.is_some() && update.token_mode == Some(TokenMode::Stable) {
            return Err(Error::InvalidInput(
                "an authorizer's token comes from its third-party platform: token_mode stable \
                 does not apply"
                    .into(),
            ));
        }
        if row.kind != AppKind::Component.as_str()
            || (update.token.is_none() && update.aes_key.is_none())
        {
            return Ok(());
        }
        let effective =
            |column: A, new: Option<&Secret>, stored: &Option<String>| match (new, set(stored)) {
                (Some(new), _) => Ok(Some(new.expose().to_owned())),
                (None, Some(stored)) => self
                    .open_checked(&row.appid, column, stored.to_owned(), row.seal_generation)
                    .map(Some),
                (None, None) => Ok(None),
            };
        let token = effective(A::Token, update.token.as_ref(), &row.token)?;
        let aes_key = effective(A::AesKey, update.aes_key.as_ref(), &row.aes_key)?;
        let (Some(token), Some(aes_key)) = (token, aes_key) else {
            return Err(Error::InvalidInput(
                "a third-party platform (kind component) needs its message token and \
                 EncodingAESKey (token and aes_key): WeChat's pushes are opened with them"
                    .into(),
            ));
        };
        crate::msgcrypt::MsgCrypt::new(&token, &aes_key, &row.appid).map_err(|e| {
            Error::InvalidInput(format!(
                "third-party platform {}: {e}; nothing was changed",
                row.appid
            ))
        })?;
        Ok(())
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

    /// What listings show of one app, which must exist ([`Error::UnknownApp`] otherwise).
    pub async fn known_app_info(&self, appid: &AppId) -> Result<AppInfo, Error> {
        self.app_info(appid)
            .await?
            .ok_or_else(|| Error::UnknownApp(appid.clone()))
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
    /// app's own secret). Reads the three columns it needs only (the generation opens the
    /// secret). An app whose secret does not decrypt comes with its error, so that one broken
    /// row spoils no other app.
    pub async fn app_secrets(&self) -> Result<Vec<(String, Result<Secret, Error>)>, Error> {
        let rows: Vec<(String, String, i64)> = app_info::Entity::find()
            .select_only()
            .column(app_info::Column::Appid)
            .column(app_info::Column::Secret)
            .column(app_info::Column::SealGeneration)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(appid, stored, generation)| {
                let secret = self
                    .open(&appid, A::Secret, stored, generation)
                    .map(Secret::new);
                (appid, secret)
            })
            .collect())
    }

    /// Changes an app's settings. Any halt on its credentials is lifted, since the settings that
    /// caused it may be what changed.
    ///
    /// A change to any secret-like value moves the row to its next seal generation and encrypts
    /// every one of its values anew (`sealing.rs`), compared with the row as read: a write that
    /// raced it makes it read the row again and retry, so no value another writer stored is
    /// lost. A kept value that cannot be read (altered, under a key not configured, plain under
    /// `require_encrypted`) refuses the change, unless the change replaces that value too.
    ///
    /// On MySQL/MariaDB and PostgreSQL the row is read `FOR UPDATE`, so updates of one app take
    /// turns rather than retry. On SQLite it is read before the write's transaction: a
    /// transaction that reads before it writes cannot wait for another writer there (it fails at
    /// once with "database is locked"), where a lone write waits its turn. Either way the
    /// comparison is what makes the write safe, whoever else writes.
    pub async fn update_app(
        &self,
        appid: &AppId,
        update: &AppUpdate,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        const ATTEMPTS: u64 = 10;
        for attempt in 1..=ATTEMPTS {
            if self.try_update_app(appid, update, now).await? {
                return Ok(());
            }
            // Writers that keep colliding step apart.
            let pause = rand::random_range(1..=10 * attempt);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        Err(Error::Database(crate::error::DbCause(std::sync::Arc::new(
            sea_orm::DbErr::Custom(format!(
                "app {appid} changed {ATTEMPTS} times while being updated; nothing was written: \
                 try again"
            )),
        ))))
    }

    /// One attempt of [`Store::update_app`]: `false` when another write to the row's secrets
    /// came between its read and its write, and nothing was written.
    async fn try_update_app(
        &self,
        appid: &AppId,
        update: &AppUpdate,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let find = app_info::Entity::find_by_id(appid.as_str().to_owned());
        let (row, txn) = if self.db.get_database_backend() == DbBackend::Sqlite {
            let row = find.one(&self.db).await?;
            (row, self.db.begin().await?)
        } else {
            let txn = self.db.begin().await?;
            (find.lock_exclusive().one(&txn).await?, txn)
        };
        let Some(row) = row else {
            return Err(Error::UnknownApp(appid.clone()));
        };
        self.check_open_platform_update(&row, update)?;
        let sealed = SealedRow::of(&row);
        let changes: Vec<(A, &str)> = [
            (A::Secret, update.secret.as_ref()),
            (A::Token, update.token.as_ref()),
            (A::AesKey, update.aes_key.as_ref()),
            (A::PayKey, update.pay_key.as_ref()),
        ]
        .into_iter()
        .filter_map(|(column, value)| Some((column, value?.expose())))
        .collect();
        let mut row: app_info::ActiveModel = row.into();
        let mut write =
            app_info::Entity::update_many().filter(app_info::Column::Appid.eq(appid.as_str()));
        if !changes.is_empty() {
            let resealed = self.reseal_row(&sealed, &changes, |column, stored| {
                self.open_checked(&sealed.appid, column, stored, sealed.generation)
            })?;
            for (column, value) in resealed.values {
                row.set(column, value.into());
            }
            row.seal_generation = Set(resealed.generation);
            write = write.filter(sealed.unchanged());
        }
        if let Some(mode) = update.token_mode {
            row.token_mode = Set(mode.as_str().to_owned());
        }
        if let Some(budget) = update.daily_budget {
            row.daily_budget = Set(budget);
        }
        if let Some(secs) = update.verify_secs {
            row.verify_secs = Set(Some(secs));
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
        let written = write.set(row).exec(&txn).await?.rows_affected;
        // The generation always changes, so even MySQL's count of changed rows is 1 for a match.
        if !changes.is_empty() && written == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        for kind in Kind::ALL {
            let lift = Query::update()
                .table(kind.table())
                .value(C::Halted, false)
                .value(C::Failures, 0)
                .value(C::RetryAt, Option::<DateTime<Utc>>::None)
                .value(C::Message, "settings changed")
                .value(C::Errcode, Option::<i64>::None)
                .value(C::UpdateTime, now)
                .and_where(Expr::col(C::Appid).eq(appid.as_str()))
                .cond_where(
                    Expr::col(C::Halted)
                        .eq(true)
                        .or(Expr::col(C::Failures).gt(0)),
                )
                .to_owned();
            txn.execute(&lift).await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Removes an app and its stored credentials. Returns whether it existed.
    pub async fn delete_app(&self, appid: &AppId) -> Result<bool, Error> {
        // A platform's authorizers would be left with no way to a token.
        let authorizers = app_info::Entity::find()
            .filter(app_info::Column::ComponentAppid.eq(appid.as_str()))
            .count(&self.db)
            .await?;
        if authorizers > 0 {
            return Err(Error::InvalidInput(format!(
                "{appid} is the third-party platform of {authorizers} stored authorizers, whose \
                 tokens come through it: remove them first"
            )));
        }
        let txn = self.db.begin().await?;
        for kind in Kind::ALL {
            // The change number first (the order every writer takes its locks in); the feed
            // tells the other replicas to drop what they cache of the app.
            let seq = super::feed::next_seq(&txn).await?;
            super::feed::log_change(&txn, seq, appid, kind, Utc::now()).await?;
            let delete = Query::delete()
                .from_table(kind.table())
                .and_where(Expr::col(C::Appid).eq(appid.as_str()))
                .to_owned();
            txn.execute(&delete).await?;
        }
        txn.execute(&Store::forget_shares(appid)).await?;
        txn.execute(&Store::forget_history(appid)).await?;
        let gone = app_info::Entity::delete_by_id(appid.as_str().to_owned())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(gone.rows_affected > 0)
    }
}

impl Store {
    fn requires_sealed(&self) -> bool {
        self.keyring.as_ref().is_some_and(|k| k.requires_sealed())
    }

    /// [`Store::open`], refusing a plain value under `require_encrypted`.
    pub(crate) fn open_checked(
        &self,
        appid: &str,
        column: A,
        value: String,
        generation: i64,
    ) -> Result<String, Error> {
        if self.requires_sealed() && !is_sealed(&value) {
            return Err(Error::Secret(format!(
                "the stored {} of app {appid} is in plain text, and require_encrypted refuses \
                 plain values: it was written by a process without the master key, or changed \
                 in the database. A server start or `wetoken-cli migrate up --encrypt-secrets` \
                 encrypts it",
                column.as_str(),
            )));
        }
        self.open(appid, column, value, generation)
    }

    fn app_from_row(&self, row: app_info::Model) -> Result<App, Error> {
        let open = |column: A, value: String| {
            if self.keyring.is_some() && !is_sealed(&value) && !self.requires_sealed() {
                // Accepted, so that rows from before encryption keep working, but a server with
                // the key encrypted every plain value at start: this one came later.
                tracing::warn!(
                    appid = row.appid,
                    column = column.as_str(),
                    "stored in plain text although a master key is configured: written by a \
                     process without the key, or changed in the database; a server start or \
                     `wetoken-cli migrate up --encrypt-secrets` encrypts it"
                );
            }
            self.open_checked(&row.appid, column, value, row.seal_generation)
                .map(Secret::new)
        };
        let secret = open(A::Secret, row.secret.clone())?;
        let optional = |column, value: &Option<String>| {
            set(value).map(|v| open(column, v.to_owned())).transpose()
        };
        Ok(App {
            info: info_from_row(&row)?,
            secret,
            token: optional(A::Token, &row.token)?,
            aes_key: optional(A::AesKey, &row.aes_key)?,
            pay_key: optional(A::PayKey, &row.pay_key)?,
        })
    }
}

/// The app a row describes, secrets left out.
pub(super) fn info_from_row(row: &app_info::Model) -> Result<AppInfo, Error> {
    let corrupt = |what: &str| Error::AppConfig {
        appid: format!("{:?}", row.appid),
        problem: format!("its stored {what} is invalid"),
    };
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
        component: row
            .component_appid
            .as_deref()
            .map(AppId::parse)
            .transpose()
            .map_err(|_| corrupt("component_appid"))?,
        revoked_at: row.revoked_at,
        daily_budget: row.daily_budget,
        calls_today: if row.calls_day.as_deref() == Some(wechat_day(Utc::now()).as_str()) {
            row.calls_today
        } else {
            0
        },
        verify_secs: row.verify_secs,
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
