//! The refresh lease and the writes only its holder makes: taking the lease (a compare-and-set on
//! the database's clock), giving it back, the fenced write of a fetched value, and the record of a
//! failed refresh. `docs/ARCHITECTURE.md` ("The lease") is the protocol.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, Query};

use super::{Store, col};
use crate::Error;
use crate::model::{AppId, Credential, Kind};

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

impl Store {
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
}
