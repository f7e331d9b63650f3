//! Credential rows (`wechat_access_token`, `wechat_jsapi_ticket`, `wechat_card_ticket`, one shape
//! with the table taken from [`Kind`]): reading a credential's state on the database's clock,
//! importing one, what the scheduler finds due, expiries for the metrics, and the count of forced
//! stable tokens.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, JoinType, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, DbBackend, SqlErr};

use super::{Store, col};
use crate::Error;
use crate::entity::app_info;
use crate::model::{AppId, AppKind, Credential, CredentialRecord, Kind, TokenMode};

impl Store {
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
    pub(super) fn db_now_ms(&self) -> Expr {
        Expr::cust(match self.db.get_database_backend() {
            DbBackend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            DbBackend::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            _ => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        })
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
    pub(super) async fn insert_row(
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
