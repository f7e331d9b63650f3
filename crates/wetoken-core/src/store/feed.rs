//! The change feed (migration 000010): every write of a credential value takes the next number
//! of `wetoken_change_seq` in its own transaction and leaves a row in `wetoken_change`, so that a
//! replica learns what others replaced with one query per interval (`changes_since`), however
//! many credentials it caches. `docs/ARCHITECTURE.md` ("Cache coherence") is the reasoning.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DeriveIden, FromQueryResult};

use super::Store;
use crate::Error;
use crate::model::{AppId, Kind};

#[derive(Debug, Clone, Copy, DeriveIden)]
enum WetokenChangeSeq {
    Table,
    Id,
    Seq,
}

#[derive(Debug, Clone, Copy, DeriveIden)]
enum WetokenChange {
    Table,
    Seq,
    Appid,
    Kind,
    At,
}

/// One change: the credential whose stored value was written or deleted, and its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub seq: i64,
    pub appid: String,
    pub kind: Kind,
}

/// Takes the next change number, inside the caller's transaction `txn`. The UPDATE locks the
/// counter's row until `txn` ends, so numbers are committed in the order they are taken.
pub(super) async fn next_seq(txn: &impl ConnectionTrait) -> Result<i64, Error> {
    use WetokenChangeSeq as S;
    let bump = Query::update()
        .table(S::Table)
        .value(S::Seq, Expr::col(S::Seq).add(1))
        .and_where(Expr::col(S::Id).eq(1))
        .to_owned();
    txn.execute(&bump).await?;
    read_seq(txn).await
}

async fn read_seq(conn: &impl ConnectionTrait) -> Result<i64, Error> {
    use WetokenChangeSeq as S;
    let select = Query::select()
        .column(S::Seq)
        .from(S::Table)
        .and_where(Expr::col(S::Id).eq(1))
        .to_owned();
    #[derive(FromQueryResult)]
    struct SeqRow {
        seq: i64,
    }
    match conn.query_one(&select).await? {
        Some(row) => Ok(SeqRow::from_query_result(&row, "")?.seq),
        None => Err(Error::Schema(
            "wetoken_change_seq has no row: migration 000010 did not finish; run `wetoken-cli \
             migrate up`"
                .into(),
        )),
    }
}

/// Records change `seq` of (`appid`, `kind`), inside the transaction that took `seq`.
pub(super) async fn log_change(
    txn: &impl ConnectionTrait,
    seq: i64,
    appid: &AppId,
    kind: Kind,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    use WetokenChange as C;
    let insert = Query::insert()
        .into_table(C::Table)
        .columns([C::Seq, C::Appid, C::Kind, C::At])
        .values_panic([
            seq.into(),
            appid.as_str().into(),
            (kind.index() as i16).into(),
            now.into(),
        ])
        .to_owned();
    txn.execute(&insert).await?;
    Ok(())
}

impl Store {
    /// The number of the last change committed.
    pub(crate) async fn change_cursor(&self) -> Result<i64, Error> {
        read_seq(&self.db).await
    }

    /// The changes after `cursor`, oldest first, at most `limit`.
    pub(crate) async fn changes_since(
        &self,
        cursor: i64,
        limit: u64,
    ) -> Result<Vec<Change>, Error> {
        use WetokenChange as C;
        let select = Query::select()
            .columns([C::Seq, C::Appid, C::Kind])
            .from(C::Table)
            .and_where(Expr::col(C::Seq).gt(cursor))
            .order_by(C::Seq, Order::Asc)
            .limit(limit)
            .to_owned();
        #[derive(FromQueryResult)]
        struct ChangeRow {
            seq: i64,
            appid: String,
            kind: i16,
        }
        self.db
            .query_all(&select)
            .await?
            .iter()
            .map(|row| {
                let row = ChangeRow::from_query_result(row, "")?;
                let kind = usize::try_from(row.kind)
                    .ok()
                    .and_then(|i| Kind::ALL.get(i).copied())
                    .ok_or_else(|| {
                        Error::Schema(format!(
                            "wetoken_change {}: unknown kind {}",
                            row.seq, row.kind
                        ))
                    })?;
                Ok(Change {
                    seq: row.seq,
                    appid: row.appid,
                    kind,
                })
            })
            .collect()
    }

    /// Forgets changes recorded before `before`.
    pub(crate) async fn prune_changes(&self, before: DateTime<Utc>) -> Result<(), Error> {
        use WetokenChange as C;
        let delete = Query::delete()
            .from_table(C::Table)
            .and_where(Expr::col(C::At).lt(before))
            .to_owned();
        self.db.execute(&delete).await?;
        Ok(())
    }
}
