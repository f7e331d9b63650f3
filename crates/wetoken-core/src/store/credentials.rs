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

/// What a credential row says, in the engine's terms.
fn record_of(row: Row) -> CredentialRecord {
    let credential = match (row.value, row.expires_at) {
        (Some(value), Some(expires_at)) => Some(Credential { value, expires_at }),
        _ => None,
    };
    CredentialRecord {
        credential,
        message: row.message,
        errcode: row.errcode,
        halted: row.halted,
        refresh_time: row.refresh_time,
        version: row.version,
        failures: row.failures,
        retry_at: row.retry_at,
        renew_at: row.renew_at,
        leased: row.lease_owner.is_some()
            && row.lease_until.is_some_and(|until| until >= row.db_now),
        check: match (row.check_version, row.checked_at, row.check_errcode) {
            (Some(v), Some(at), Some(errcode)) if v == row.version => {
                Some(TokenCheck { at, errcode })
            }
            _ => None,
        },
        replaced: row.replaced_count,
    }
}

impl Store {
    /// The stored state of one credential, if a row exists.
    pub async fn credential(
        &self,
        appid: &AppId,
        kind: Kind,
    ) -> Result<Option<CredentialRecord>, Error> {
        let select = self
            .credential_select(kind)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .to_owned();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        Ok(Some(record_of(Row::from_query_result(&row, "")?)))
    }

    /// The stored state of the `kind` credentials of `appids` that have a row, by appid: one
    /// query, for a page of a listing.
    pub async fn credentials_of(
        &self,
        kind: Kind,
        appids: &[AppId],
    ) -> Result<std::collections::HashMap<String, CredentialRecord>, Error> {
        if appids.is_empty() {
            return Ok(Default::default());
        }
        let select = self
            .credential_select(kind)
            .column(Column::Appid)
            .and_where(Expr::col(Column::Appid).is_in(appids.iter().map(AppId::as_str)))
            .to_owned();
        let mut out = std::collections::HashMap::new();
        for row in self.db.query_all(&select).await? {
            let appid: String = row.try_get("", "appid")?;
            out.insert(appid, record_of(Row::from_query_result(&row, "")?));
        }
        Ok(out)
    }

    /// The columns [`Row`] reads from a `kind` table.
    fn credential_select(&self, kind: Kind) -> sea_orm::sea_query::SelectStatement {
        Query::select()
            .expr_as(Expr::col(kind.value_column()), Selected::Value)
            .columns(ROW_COLUMNS)
            .expr_as(self.db_now_ms(), Selected::DbNow)
            .from(kind.table())
            .to_owned()
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
    /// a credential already stored is kept. Returns whether it was stored. `renew_at` dates its
    /// renewal (`Engine::import_credential` works it out); without it the scheduler dates the
    /// row on its next scan, one write per row.
    pub async fn import_credential(
        &self,
        appid: &AppId,
        kind: Kind,
        credential: &Credential,
        renew_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let txn = self.db.begin().await?;
        let seq = super::feed::next_seq(&txn).await?;
        // The row may exist without a value (every app has its token row from the start).
        insert_row(
            &txn,
            kind,
            vec![Column::Appid, Column::Message, Column::UpdateTime],
            vec![appid.as_str().into(), "not fetched yet".into(), now.into()],
        )
        .await?;
        let fill = Query::update()
            .table(kind.table())
            .value(kind.value_column(), credential.value.as_str())
            .value(Column::ExpiresAt, credential.expires_at)
            .value(Column::RenewAt, renew_at)
            .value(Column::Message, "imported")
            .value(Column::UpdateTime, now)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .cond_where(
                // The Go schema's NOT NULL columns hold '' for none.
                Expr::col(kind.value_column())
                    .is_null()
                    .or(Expr::col(kind.value_column()).eq("")),
            )
            .to_owned();
        let stored = txn.execute(&fill).await?.rows_affected() == 1;
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

    /// The `kind` credentials the scheduler should look at, at most `limit`, the longest due
    /// first: those whose `renew_at` has come or was never set (imported, adopted, or not
    /// fetched yet), that are not halted, not waiting out a backoff and not leased by a refresh
    /// under way (the database's clock decides, as for taking a lease). A ticket whose app's
    /// access token is halted is not listed either: it cannot be fetched without one. Each comes
    /// with its stored expiry and the app's token mode.
    ///
    /// One query on the credential table's `renew_at` index, joined to the app (and for a
    /// ticket, its token) by primary key: its cost follows what is due, not how many apps exist.
    /// Every app has its token row, and official accounts and WeCom apps their jsapi-ticket row
    /// (`insert_app`, migration 000010); card tickets only those that asked for one. With `only`,
    /// just those apps' (an embedded scheduler limited to some apps).
    pub(crate) async fn due(
        &self,
        kind: Kind,
        now: DateTime<Utc>,
        limit: u64,
        only: Option<&[AppId]>,
    ) -> Result<Vec<Due>, Error> {
        use app_info::Column as A;
        let (app, cred) = (app_info::Entity, kind.table());
        let kinds: Vec<&str> = AppKind::ALL
            .into_iter()
            .filter(|k| k.has(kind))
            .map(AppKind::as_str)
            .collect();
        let mut select = Query::select()
            .column((cred, Column::Appid))
            .column((cred, Column::ExpiresAt))
            .column((cred, Column::RenewAt))
            .column((app, A::TokenMode))
            .from(cred)
            .join(
                JoinType::InnerJoin,
                app,
                Expr::col((app, A::Appid)).equals((cred, Column::Appid)),
            )
            .and_where(Expr::col((cred, Column::Halted)).eq(false))
            .cond_where(
                Expr::col((cred, Column::RenewAt))
                    .is_null()
                    .or(Expr::col((cred, Column::RenewAt)).lte(now)),
            )
            .cond_where(
                Expr::col((cred, Column::RetryAt))
                    .is_null()
                    .or(Expr::col((cred, Column::RetryAt)).lte(now)),
            )
            // Not what a refresh under way holds: its holder stores it.
            .cond_where(
                Expr::col((cred, Column::LeaseOwner))
                    .is_null()
                    .or(Expr::col((cred, Column::LeaseUntil)).lt(self.db_now_ms())),
            )
            .and_where(Expr::col((app, A::Kind)).is_in(kinds))
            .order_by((cred, Column::RenewAt), Order::Asc)
            .limit(limit)
            .to_owned();
        if let Some(only) = only {
            select
                .and_where(Expr::col((cred, Column::Appid)).is_in(only.iter().map(AppId::as_str)));
        }
        if kind != Kind::AccessToken {
            let token = Kind::AccessToken.table();
            select
                .join(
                    JoinType::LeftJoin,
                    token,
                    Expr::col((cred, Column::Appid)).equals((token, Column::Appid)),
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
            renew_at: Option<DateTime<Utc>>,
            token_mode: String,
        }
        let rows = self.db.query_all(&select).await?;
        rows.iter()
            .map(|row| {
                let row = DueRow::from_query_result(row, "")?;
                Ok(Due {
                    appid: AppId::parse(&row.appid)?,
                    expires_at: row.expires_at,
                    renew_at: row.renew_at,
                    token_mode: TokenMode::parse(&row.token_mode)?,
                })
            })
            .collect()
    }

    /// Dates a stored value's renewal (one the scheduler found undated or dated for other
    /// settings), so that it leaves the scheduler's list until then.
    pub(crate) async fn date_renewal(
        &self,
        appid: &AppId,
        kind: Kind,
        renew_at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let update = Query::update()
            .table(kind.table())
            .value(Column::RenewAt, renew_at)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }

    /// Access tokens whose out-of-band check is due at `now`, that are not halted and are still
    /// good past `horizon` (those nearer their end are renewed anyway), the most overdue first,
    /// at most `limit`.
    pub(crate) async fn checks_due(
        &self,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
        limit: u64,
        only: Option<&[AppId]>,
    ) -> Result<Vec<AppId>, Error> {
        let mut select = Query::select()
            .column(Column::Appid)
            .from(Kind::AccessToken.table())
            .and_where(Expr::col(Column::CheckDueAt).lte(now))
            .and_where(Expr::col(Column::Halted).eq(false))
            .and_where(Expr::col(Column::ExpiresAt).gt(horizon))
            .order_by(Column::CheckDueAt, Order::Asc)
            .limit(limit)
            .to_owned();
        if let Some(only) = only {
            select.and_where(Expr::col(Column::Appid).is_in(only.iter().map(AppId::as_str)));
        }
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
    /// When the scheduler was to renew it, if wetoken dated it.
    pub renew_at: Option<DateTime<Utc>>,
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

/// Makes the rows a new app has from the start: its access token's, and its jsapi
/// ticket's if it has one, "not fetched yet". The value is '' (a Go wetoken rolled back to
/// reads these rows, and its columns never held NULL); with no expiry, it reads as none.
///
/// On `conn`, the caller's transaction, so that an app is never stored without its rows (the
/// scheduler finds what is due in those alone).
pub(super) async fn make_rows(
    conn: &impl ConnectionTrait,
    appid: &AppId,
    kind: AppKind,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    for credential in [Kind::AccessToken, Kind::JsapiTicket] {
        if kind.has(credential) {
            insert_row(
                conn,
                credential,
                vec![
                    Column::Appid,
                    credential.value_column(),
                    Column::Message,
                    Column::UpdateTime,
                ],
                vec![
                    appid.as_str().into(),
                    "".into(),
                    "not fetched yet".into(),
                    now.into(),
                ],
            )
            .await?;
        }
    }
    Ok(())
}
