//! The refresh lease and the writes only its holder makes: taking the lease (a compare-and-set on
//! the database's clock), giving it back, the fenced write of a fetched value, and the record of a
//! failed refresh. `docs/ARCHITECTURE.md` ("The lease") is the protocol.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query, UpdateStatement};
use sea_orm::{ConnectionTrait, TransactionTrait};

use super::open::RefreshTokens;
use super::{Store, feed};
use crate::Error;
use crate::entity::credential::Column;
use crate::model::{AppId, Credential, Kind};

/// A failed refresh, as recorded.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The outcome: WeChat's `errcode: errmsg`, or what else went wrong.
    pub message: &'a str,
    /// WeChat's code, when WeChat answered.
    pub errcode: Option<i64>,
    /// Whether refreshing stops until the app's settings change.
    pub halted: bool,
    /// Failures in a row, this one included.
    pub failures: i32,
    /// No replica calls WeChat for this credential before then.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The most characters of a refresh outcome the `message` column keeps.
pub(super) const MESSAGE_MAX: usize = 1024;

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
    pub(crate) async fn try_lease(
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
    pub(crate) async fn release_lease(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
    ) -> Result<(), Error> {
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

    /// Stores a freshly fetched credential as the current one and gives the lease back;
    /// `dates.renew_at` is when the scheduler should renew it, `dates.check_due` when the
    /// out-of-band check first looks at it (`None`: never).
    ///
    /// The write is fenced: it happens only if `owner` still holds the lease and the row is still
    /// at `version`, the one read before the fetch. Returns the change number it was recorded
    /// under in the change feed, or `None` if it did not happen: a newer value was stored
    /// meanwhile and this one must not replace it.
    ///
    /// For an authorizer's token, `refresh_token` has the `authorizer_refresh_token` WeChat
    /// returned with it, written in the same transaction: exactly when the token is, so neither
    /// is stored without the other. It is written only over the one the fetch was made with: a
    /// refresh token replaced meanwhile (a new authorization) is newer, and stays.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn save_credential(
        &self,
        appid: &AppId,
        kind: Kind,
        credential: &Credential,
        fence: (&str, i64),
        now: DateTime<Utc>,
        dates: Dates,
        refresh_token: Option<RefreshTokens<'_>>,
    ) -> Result<Option<i64>, Error> {
        let (owner, version) = fence;
        let update = outcome(appid, kind, owner, now)
            .value(Column::CheckDueAt, dates.check_due)
            .value(Column::RenewAt, dates.renew_at)
            .value(kind.value_column(), credential.value.as_str())
            .value(Column::ExpiresAt, credential.expires_at)
            .value(Column::Message, "success")
            .value(Column::Errcode, 0)
            .value(Column::Halted, false)
            .value(Column::Failures, 0)
            .value(Column::RetryAt, Option::<DateTime<Utc>>::None)
            .value(Column::Version, Expr::col(Column::Version).add(1))
            .and_where(Expr::col(Column::Version).eq(version))
            .to_owned();
        // The change number first: every writer takes the counter's row lock before any
        // credential row's, so two writers never wait on each other in opposite orders.
        let txn = self.db.begin().await?;
        let seq = feed::next_seq(&txn).await?;
        // The app row before the credential row: the order `update_app` takes them in.
        if let Some(refresh_token) = refresh_token {
            self.keep_refresh_token(&txn, appid, refresh_token).await?;
        }
        if txn.execute(&update).await?.rows_affected() != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        feed::log_change(&txn, seq, appid, kind, now).await?;
        txn.commit().await?;
        Ok(Some(seq))
    }

    /// Records a failed refresh and gives the lease back. The stored value, if any, is kept: it
    /// may still be valid.
    pub(crate) async fn record_failure(
        &self,
        appid: &AppId,
        kind: Kind,
        failure: &Failure<'_>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let message: String = failure.message.chars().take(MESSAGE_MAX).collect();
        let update = outcome(appid, kind, owner, now)
            .value(Column::Message, message)
            .value(Column::Errcode, failure.errcode)
            .value(Column::Halted, failure.halted)
            .value(Column::Failures, failure.failures)
            .value(Column::RetryAt, failure.retry_at)
            .to_owned();
        self.db.execute(&update).await?;
        Ok(())
    }
}

/// When the scheduler should next look at a value just stored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dates {
    /// When to renew it.
    pub renew_at: Option<DateTime<Utc>>,
    /// When to check it with WeChat (`None`: never).
    pub check_due: Option<DateTime<Utc>>,
}

/// What WeChat said when asked whether the stored value works, to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    /// The stored version asked about.
    pub version: i64,
    /// WeChat's answer: 0 when it worked; `None` when it gave none (unreachable, a transient
    /// error): then only the next check is scheduled.
    pub errcode: Option<i64>,
    /// When the out-of-band check looks next (`None`: never).
    pub next_due: Option<DateTime<Utc>>,
    /// Whether the value was found dead before its time (replaced outside wetoken).
    pub replaced: bool,
}

impl Store {
    /// Records WeChat's answer about the stored value, for every replica to read, if `owner`
    /// still holds the lease. With `release`, gives the lease back (the check was all the
    /// holder had to do); without, keeps it for the fetch that follows a rejection.
    pub(crate) async fn record_check(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        check: Checked,
        now: DateTime<Utc>,
        release: bool,
    ) -> Result<(), Error> {
        let mut update = Query::update();
        update
            .table(kind.table())
            .value(Column::CheckDueAt, check.next_due)
            .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
            .and_where(Expr::col(Column::LeaseOwner).eq(owner));
        if let Some(errcode) = check.errcode {
            update
                .value(Column::CheckVersion, check.version)
                .value(Column::CheckedAt, now)
                .value(Column::CheckErrcode, errcode);
        }
        if check.replaced {
            update.value(
                Column::ReplacedCount,
                Expr::col(Column::ReplacedCount).add(1),
            );
        }
        if release {
            update
                .value(Column::LeaseOwner, Option::<String>::None)
                .value(Column::LeaseUntil, Option::<i64>::None);
        }
        self.db.execute(&update).await?;
        Ok(())
    }
}

/// The part every recorded outcome shares: it happens only while `owner` holds the lease, gives
/// the lease back, and stamps the attempt.
fn outcome(appid: &AppId, kind: Kind, owner: &str, now: DateTime<Utc>) -> UpdateStatement {
    Query::update()
        .table(kind.table())
        .value(Column::LeaseOwner, Option::<String>::None)
        .value(Column::LeaseUntil, Option::<i64>::None)
        .value(Column::RefreshTime, now)
        .value(Column::UpdateTime, now)
        .and_where(Expr::col(Column::Appid).eq(appid.as_str()))
        .and_where(Expr::col(Column::LeaseOwner).eq(owner))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeDelta;

    use super::*;
    use crate::model::{NewApp, Secret};
    use crate::store::DatabaseOptions;

    #[tokio::test]
    async fn every_recorded_outcome_writes_its_errcode() {
        let store = Store::connect(&DatabaseOptions::new("sqlite::memory:"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let appid = AppId::parse("wx0123456789abcdef").unwrap();
        let now = Utc::now();
        store
            .insert_app(&NewApp::mp(appid.clone(), Secret::new("s")), now)
            .await
            .unwrap();
        let kind = Kind::AccessToken;
        let record = || async { store.credential(&appid, kind).await.unwrap().unwrap() };

        assert!(
            store
                .try_lease(&appid, kind, "a", Duration::from_secs(30), now)
                .await
                .unwrap()
        );
        assert_eq!(record().await.errcode, None, "not fetched yet");
        let refused = Failure {
            message: "40164: invalid ip",
            errcode: Some(40164),
            halted: false,
            failures: 1,
            retry_at: Some(now + TimeDelta::seconds(2)),
        };
        store
            .record_failure(&appid, kind, &refused, "a", now)
            .await
            .unwrap();
        assert_eq!(record().await.errcode, Some(40164));

        assert!(
            store
                .try_lease(&appid, kind, "b", Duration::from_secs(30), now)
                .await
                .unwrap()
        );
        let unreachable = Failure {
            message: "WeChat unreachable: timed out",
            errcode: None,
            ..refused
        };
        store
            .record_failure(&appid, kind, &unreachable, "b", now)
            .await
            .unwrap();
        assert_eq!(record().await.errcode, None);

        assert!(
            store
                .try_lease(&appid, kind, "c", Duration::from_secs(30), now)
                .await
                .unwrap()
        );
        let credential = Credential {
            value: "token".into(),
            expires_at: now + TimeDelta::hours(2),
        };
        let version = record().await.version;
        assert!(
            store
                .save_credential(
                    &appid,
                    kind,
                    &credential,
                    ("c", version),
                    now,
                    Dates::default(),
                    None,
                )
                .await
                .unwrap()
                .is_some()
        );
        let saved = record().await;
        assert_eq!(
            (saved.message.as_str(), saved.errcode),
            ("success", Some(0))
        );
    }
}
