//! Credential rows (`wechat_access_token`, `wechat_jsapi_ticket`, `wechat_card_ticket`, one shape
//! with the table taken from [`Kind`]): reading a credential's state on the database's clock,
//! importing one, what the scheduler finds due, expiries for the metrics, and the count of forced
//! stable tokens.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, JoinType, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, SqlErr, TransactionTrait};

use super::Store;
use crate::Error;
use crate::entity::app_info;
use crate::entity::credential::{Column, ROW_COLUMNS, Row, Selected};
use crate::model::{AppId, AppKind, Credential, CredentialRecord, Kind, TokenCheck, TokenMode};

impl Store {
    /// The stored state of one credential, if a row exists.
    pub async fn credential(
        &self,
        appid: &AppId,
        kind: Kind,
    ) -> Result<Option<CredentialRecord>, Error> {
        let select = Query::select()
            .expr_as(Expr::col(kind.value_column()), Selected::Value)
            .columns(ROW_COLUMNS)
            .expr_as(self.db_now_ms(), Selected::DbNow)
            .from(kind.table())
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .to_owned();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        let row = Row::from_query_result(&row, "")?;
        let credential = match (row.value, row.expires_at) {
            (Some(value), Some(expires_at)) => Some(Credential { value, expires_at }),
            _ => None,
        };
        Ok(Some(CredentialRecord {
            credential,
            message: row.message,
            errcode: row.errcode,
            halted: row.halted,
            refresh_time: row.refresh_time,
            version: row.version,
            failures: row.failures,
            retry_at: row.retry_at,
            leased: row.lease_owner.is_some()
                && row.lease_until.is_some_and(|until| until >= row.db_now),
            check: match (row.check_version, row.checked_at, row.check_errcode) {
                (Some(v), Some(at), Some(errcode)) if v == row.version => {
                    Some(TokenCheck { at, errcode })
                }
                _ => None,
            },
            replaced: row.replaced_count,
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
        let txn = self.db.begin().await?;
        let seq = super::feed::next_seq(&txn).await?;
        let stored = insert_row(
            &txn,
            kind,
            vec![
                Column::Appid,
                kind.value_column(),
                Column::ExpiresAt,
                Column::Message,
                Column::UpdateTime,
            ],
            vec![
                appid.as_str().into(),
                credential.value.as_str().into(),
                credential.expires_at.into(),
                "imported".into(),
                now.into(),
            ],
        )
        .await?;
        if stored {
            super::feed::log_change(&txn, seq, appid, kind, now).await?;
            txn.commit().await?;
        } else {
            txn.rollback().await?;
        }
        Ok(stored)
    }

    /// Inserts a credential row unless one exists for the appid; returns whether it did.
    pub(super) async fn insert_row(
        &self,
        kind: Kind,
        columns: Vec<Column>,
        values: Vec<sea_orm::sea_query::SimpleExpr>,
    ) -> Result<bool, Error> {
        insert_row(&self.db, kind, columns, values).await
    }

    /// Apps whose `kind` credential is missing or expires before `before`, and is not halted:
    /// what the scheduler should look at. Each comes with its stored expiry, if any, and its
    /// token mode.
    ///
    /// Only apps that have the credential are listed: jsapi tickets for official accounts and
    /// WeCom apps; card tickets only for official accounts that have asked for one before (most
    /// never use cards). A ticket whose app's access token is halted is not listed either: it
    /// cannot be fetched without one, and trying would take and release its lease on every scan.
    pub(crate) async fn due(&self, kind: Kind, before: DateTime<Utc>) -> Result<Vec<Due>, Error> {
        use app_info::Column as A;
        let (app, cred) = (app_info::Entity, kind.table());
        let kinds: Vec<&str> = [AppKind::Mp, AppKind::Mini, AppKind::Work]
            .into_iter()
            .filter(|k| k.has(kind))
            .map(AppKind::as_str)
            .collect();
        let mut select = Query::select()
            .column((app, A::Appid))
            .column((cred, Column::ExpiresAt))
            .column((app, A::TokenMode))
            .from(app)
            .join(
                if kind == Kind::CardTicket {
                    JoinType::InnerJoin
                } else {
                    JoinType::LeftJoin
                },
                cred,
                Expr::col((app, A::Appid)).equals((cred, Column::Appid)),
            )
            .cond_where(
                Expr::col((cred, Column::Appid))
                    .is_null()
                    .or(Expr::col((cred, Column::Halted)).eq(false).and(
                        Expr::col((cred, Column::ExpiresAt))
                            .is_null()
                            .or(Expr::col((cred, Column::ExpiresAt)).lt(before)),
                    )),
            )
            .and_where(Expr::col((app, A::Kind)).is_in(kinds))
            .order_by((app, A::Appid), Order::Asc)
            .to_owned();
        if kind != Kind::AccessToken {
            let token = Kind::AccessToken.table();
            select
                .join(
                    JoinType::LeftJoin,
                    token,
                    Expr::col((app, A::Appid)).equals((token, Column::Appid)),
                )
                .cond_where(
                    Expr::col((token, Column::Appid)).is_null().or(Expr::col((
                        token,
                        Column::Halted,
                    ))
                    .eq(false)),
                );
        }
        #[derive(FromQueryResult)]
        struct DueRow {
            appid: String,
            expires_at: Option<DateTime<Utc>>,
            token_mode: String,
        }
        let rows = self.db.query_all(&select).await?;
        rows.iter()
            .map(|row| {
                let row = DueRow::from_query_result(row, "")?;
                Ok(Due {
                    appid: AppId::parse(&row.appid)?,
                    expires_at: row.expires_at,
                    token_mode: TokenMode::parse(&row.token_mode)?,
                })
            })
            .collect()
    }

    /// Access tokens whose out-of-band check is due at `now`, that are not halted and are still
    /// good past `horizon` (those nearer their end are renewed anyway), the most overdue first,
    /// at most `limit`.
    pub(crate) async fn checks_due(
        &self,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<AppId>, Error> {
        let select = Query::select()
            .column(Column::Appid)
            .from(Kind::AccessToken.table())
            .and_where(Expr::col(Column::CheckDueAt).lte(now))
            .and_where(Expr::col(Column::Halted).eq(false))
            .and_where(Expr::col(Column::ExpiresAt).gt(horizon))
            .order_by(Column::CheckDueAt, Order::Asc)
            .limit(limit)
            .to_owned();
        #[derive(FromQueryResult)]
        struct CheckRow {
            appid: String,
        }
        self.db
            .query_all(&select)
            .await?
            .iter()
            .map(|row| AppId::parse(&CheckRow::from_query_result(row, "")?.appid))
            .collect()
    }

    /// Sets when the slow check next looks at `appid`'s stored access token (`None`: never), if
    /// one is stored.
    pub(crate) async fn schedule_check(
        &self,
        appid: &AppId,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        let update = Query::update()
            .table(Kind::AccessToken.table())
            .value(Column::CheckDueAt, next)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .and_where(Expr::col(Column::AccessToken).is_not_null())
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }

    /// Every stored `kind` credential's expiry, by app.
    pub async fn expiries(&self, kind: Kind) -> Result<Vec<(AppId, DateTime<Utc>)>, Error> {
        let select = Query::select()
            .columns([Column::Appid, Column::ExpiresAt])
            .from(kind.table())
            .and_where(Expr::col(Column::ExpiresAt).is_not_null())
            .to_owned();
        #[derive(FromQueryResult)]
        struct ExpiryRow {
            appid: String,
            expires_at: DateTime<Utc>,
        }
        self.db
            .query_all(&select)
            .await?
            .iter()
            .map(|row| {
                let row = ExpiryRow::from_query_result(row, "")?;
                Ok((AppId::parse(&row.appid)?, row.expires_at))
            })
            .collect()
    }

    /// How many stable tokens were forced on `day` for `appid`, and when the last one was.
    pub(crate) async fn forces(
        &self,
        appid: &AppId,
        day: &str,
    ) -> Result<(i32, Option<DateTime<Utc>>), Error> {
        let select = Query::select()
            .columns([Column::ForceDay, Column::ForceCount, Column::ForcedAt])
            .from(Kind::AccessToken.table())
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .to_owned();
        #[derive(FromQueryResult)]
        struct ForcesRow {
            force_day: Option<String>,
            force_count: i32,
            forced_at: Option<DateTime<Utc>>,
        }
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok((0, None));
        };
        let row = ForcesRow::from_query_result(&row, "")?;
        let today = if row.force_day.as_deref() == Some(day) {
            row.force_count
        } else {
            0
        };
        Ok((today, row.forced_at))
    }

    /// Counts one forced stable token on `day`. Called by the lease holder only.
    pub(crate) async fn record_force(
        &self,
        appid: &AppId,
        day: &str,
        count: i32,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let update = Query::update()
            .table(Kind::AccessToken.table())
            .value(Column::ForceDay, day)
            .value(Column::ForceCount, count)
            .value(Column::ForcedAt, now)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }
}

/// A credential the scheduler may need to renew.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    /// The app.
    pub appid: AppId,
    /// When the stored value expires, if one is stored.
    pub expires_at: Option<DateTime<Utc>>,
    /// The app's token mode (stable tokens renew on their own schedule).
    pub token_mode: TokenMode,
}

/// Inserts a credential row on `conn` unless one exists for the appid; returns whether it did.
async fn insert_row(
    conn: &impl ConnectionTrait,
    kind: Kind,
    columns: Vec<Column>,
    values: Vec<sea_orm::sea_query::SimpleExpr>,
) -> Result<bool, Error> {
    let insert = Query::insert()
        .into_table(kind.table())
        .columns(columns)
        .values_panic(values)
        .on_conflict(
            OnConflict::column(Column::Appid)
                .do_nothing_on([Column::Appid])
                .to_owned(),
        )
        .to_owned();
    match conn.execute(&insert).await {
        Ok(done) => Ok(done.rows_affected() == 1),
        // MySQL reports the ignored duplicate on some versions; the row exists either way.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
