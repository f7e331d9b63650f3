//! What the quota guard keeps in the database, for every replica to see: each app's count of
//! token fetches per WeChat day against its daily budget, and each reporter's count of forced
//! stable tokens.

use chrono::{DateTime, Days, NaiveTime, TimeDelta, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DeriveIden, FromQueryResult};

use super::Store;
use crate::Error;
use crate::entity::app_info::{self, Column as A};
use crate::model::AppId;

/// `wetoken_refresh_share` (migration 000009).
#[derive(Debug, Clone, Copy, DeriveIden)]
enum WetokenRefreshShare {
    Table,
    Appid,
    Reporter,
    Day,
    Forces,
}

/// When the WeChat day of `at` ends: the next midnight, China time (UTC+8).
pub fn wechat_day_end(at: DateTime<Utc>) -> DateTime<Utc> {
    let china = at + TimeDelta::hours(8);
    let midnight = china
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap_or(china.date_naive())
        .and_time(NaiveTime::MIN)
        .and_utc();
    midnight - TimeDelta::hours(8)
}

impl Store {
    /// Counts one token fetch for `appid` on `day` if fewer than `limit` were counted that day,
    /// for every replica to see; returns whether it did. One conditional UPDATE, so replicas
    /// racing for the last fetch of the day cannot both have it.
    pub(crate) async fn claim_fetch(
        &self,
        appid: &AppId,
        day: &str,
        limit: i32,
    ) -> Result<bool, Error> {
        // `calls_today` before `calls_day`: MySQL evaluates the assignments in order, and the
        // first must still see the old day.
        let update = Query::update()
            .table(app_info::Entity)
            .value(
                A::CallsToday,
                Expr::case(
                    Expr::col(A::CallsDay).eq(day),
                    Expr::col(A::CallsToday).add(1),
                )
                .finally(1),
            )
            .value(A::CallsDay, day)
            .and_where(Expr::col(A::Appid).eq(appid.as_str()))
            .cond_where(
                Expr::col(A::CallsDay)
                    .is_null()
                    .or(Expr::col(A::CallsDay).ne(day))
                    .or(Expr::col(A::CallsToday).lt(limit)),
            )
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// How many token fetches were counted for `appid` on `day`.
    pub(crate) async fn fetches_on(&self, appid: &AppId, day: &str) -> Result<i32, Error> {
        let select = Query::select()
            .column(A::CallsToday)
            .from(app_info::Entity)
            .and_where(Expr::col(A::Appid).eq(appid.as_str()))
            .and_where(Expr::col(A::CallsDay).eq(day))
            .to_owned();
        #[derive(FromQueryResult)]
        struct Count {
            calls_today: i32,
        }
        Ok(match self.db.query_one(&select).await? {
            Some(row) => Count::from_query_result(&row, "")?.calls_today,
            None => 0,
        })
    }

    /// Forgets the fetches counted for `appid` today, for every replica to see: after WeChat's
    /// own count was cleared (`clear_quota`), the daily budget lets it fetch again. Returns
    /// whether the app exists.
    pub async fn reset_calls_today(&self, appid: &AppId) -> Result<bool, Error> {
        let update = Query::update()
            .table(app_info::Entity)
            .value(A::CallsToday, 0)
            .and_where(Expr::col(A::Appid).eq(appid.as_str()))
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// How many forced stable tokens of `appid` `reporter` caused on `day`.
    pub(crate) async fn share_used(
        &self,
        appid: &AppId,
        reporter: &str,
        day: &str,
    ) -> Result<i32, Error> {
        use WetokenRefreshShare as S;
        let select = Query::select()
            .column(S::Forces)
            .from(S::Table)
            .and_where(Expr::col(S::Appid).eq(appid.as_str()))
            .and_where(Expr::col(S::Reporter).eq(reporter))
            .and_where(Expr::col(S::Day).eq(day))
            .to_owned();
        #[derive(FromQueryResult)]
        struct Forces {
            forces: i32,
        }
        Ok(match self.db.query_one(&select).await? {
            Some(row) => Forces::from_query_result(&row, "")?.forces,
            None => 0,
        })
    }

    /// Counts one forced stable token of `appid` caused by `reporter` on `day`. Called by the
    /// holder of the app's token lease only, so the read-then-write cannot race.
    pub(crate) async fn count_share(
        &self,
        appid: &AppId,
        reporter: &str,
        day: &str,
    ) -> Result<(), Error> {
        use WetokenRefreshShare as S;
        let row = |q: &mut sea_orm::sea_query::UpdateStatement| {
            q.table(S::Table)
                .and_where(Expr::col(S::Appid).eq(appid.as_str()))
                .and_where(Expr::col(S::Reporter).eq(reporter))
                .to_owned()
        };
        let same_day = row(Query::update()
            .value(S::Forces, Expr::col(S::Forces).add(1))
            .and_where(Expr::col(S::Day).eq(day)));
        if self.db.execute(&same_day).await?.rows_affected() == 1 {
            return Ok(());
        }
        let new_day = row(Query::update().value(S::Day, day).value(S::Forces, 1));
        if self.db.execute(&new_day).await?.rows_affected() == 1 {
            return Ok(());
        }
        let insert = Query::insert()
            .into_table(S::Table)
            .columns([S::Appid, S::Reporter, S::Day, S::Forces])
            .values_panic([appid.as_str().into(), reporter.into(), day.into(), 1.into()])
            .to_owned();
        self.db.execute(&insert).await?;
        Ok(())
    }

    /// Drops every reporter's count of `appid`'s forced stable tokens (the app is deleted).
    pub(crate) fn forget_shares(appid: &AppId) -> sea_orm::sea_query::DeleteStatement {
        use WetokenRefreshShare as S;
        Query::delete()
            .from_table(S::Table)
            .and_where(Expr::col(S::Appid).eq(appid.as_str()))
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wechat_day_ends_at_midnight_china_time() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // 15:59:59 UTC is 23:59:59 in China: the day ends a second later.
        assert_eq!(
            wechat_day_end(at("2026-12-05T15:59:59Z")),
            at("2026-12-05T16:00:00Z")
        );
        // 16:00 UTC is midnight in China: a new day, ending 24 h later.
        assert_eq!(
            wechat_day_end(at("2026-12-05T16:00:00Z")),
            at("2026-12-06T16:00:00Z")
        );
        assert_eq!(
            wechat_day_end(at("2026-12-05T03:00:00Z")),
            at("2026-12-05T16:00:00Z")
        );
    }
}
