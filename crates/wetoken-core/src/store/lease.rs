//! The refresh lease and the writes only its holder makes: taking the lease (a compare-and-set on
//! the database's clock), giving it back, the fenced write of a fetched value, and the record of a
//! failed refresh. `docs/ARCHITECTURE.md` ("The lease") is the protocol.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, Query};

use super::Store;
use crate::Error;
use crate::entity::credential::Column;
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
            vec![Column::Appid, Column::Message, Column::UpdateTime],
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
            .value(Column::LeaseOwner, owner)
            .value(Column::LeaseUntil, self.db_now_ms().add(ttl_ms))
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .cond_where(
                Expr::col(Column::LeaseOwner)
                    .is_null()
                    .or(Expr::col(Column::LeaseUntil).lt(self.db_now_ms())),
            )
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// Gives the lease back, if `owner` still holds it.
    pub async fn release_lease(&self, appid: &AppId, kind: Kind, owner: &str) -> Result<(), Error> {
        let update = Query::update()
            .table(kind.table())
            .value(Column::LeaseOwner, Option::<String>::None)
            .value(Column::LeaseUntil, Option::<i64>::None)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .and_where(Expr::col(Column::LeaseOwner).eq(owner))
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
            .value(Column::ExpiresAt, credential.expires_at)
            .value(Column::Message, "success")
            .value(Column::Halted, false)
            .value(Column::Failures, 0)
            .value(Column::RetryAt, Option::<DateTime<Utc>>::None)
            .value(Column::Version, Expr::col(Column::Version).add(1))
            .value(Column::LeaseOwner, Option::<String>::None)
            .value(Column::LeaseUntil, Option::<i64>::None)
            .value(Column::RefreshTime, now)
            .value(Column::UpdateTime, now)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .and_where(Expr::col(Column::LeaseOwner).eq(owner))
            .and_where(Expr::col(Column::Version).eq(version))
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
            .value(Column::Message, message)
            .value(Column::Halted, failure.halted)
            .value(Column::Failures, failure.failures)
            .value(Column::RetryAt, failure.retry_at)
            .value(Column::LeaseOwner, Option::<String>::None)
            .value(Column::LeaseUntil, Option::<i64>::None)
            .value(Column::RefreshTime, now)
            .value(Column::UpdateTime, now)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .and_where(Expr::col(Column::LeaseOwner).eq(owner))
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }
}
