//! The open platform's rows (migration 000014): each component's newest verify ticket, the
//! signatures of the pushes accepted within the replay window, an authorizer's refresh token
//! (its app row's sealed `secret`) written with its token, and an authorization withdrawn.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DeriveIden, EntityTrait, FromQueryResult,
    QuerySelect, SqlErr,
};

use super::Store;
use super::feed;
use super::sealing::SealedRow;
use crate::Error;
use crate::entity::app_info::{self, Column as A};
use crate::entity::credential::Column;
use crate::model::{AppId, AppKind, Kind, NewApp, Secret, TokenMode};

#[derive(Debug, Clone, Copy, DeriveIden)]
enum WetokenVerifyTicket {
    Table,
    ComponentAppid,
    Ticket,
    CreateTime,
    ReceivedAt,
}

#[derive(Debug, Clone, Copy, DeriveIden)]
enum WetokenPushSeen {
    Table,
    ComponentAppid,
    Signature,
    SeenAt,
}

/// The refresh tokens of an authorizer's refresh: the one it was fetched with, and the one
/// WeChat returned, to be stored in the token's transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshTokens<'a> {
    /// What the fetch sent, as it was stored when the fetch read the app.
    pub(crate) used: &'a Secret,
    /// What WeChat answered with.
    pub(crate) returned: &'a Secret,
}

/// A component's newest verify ticket, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyTicket {
    /// The `ComponentVerifyTicket`.
    pub ticket: String,
    /// WeChat's `CreateTime` of the push that carried it, in Unix seconds.
    pub create_time: i64,
    /// When a replica stored it.
    pub received_at: DateTime<Utc>,
}

impl std::fmt::Debug for VerifyTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyTicket")
            .field("ticket", &format_args!("<{} chars>", self.ticket.len()))
            .field("create_time", &self.create_time)
            .field("received_at", &self.received_at)
            .finish()
    }
}

impl Store {
    /// Stores `component`'s verify ticket unless a newer one (by WeChat's `CreateTime`) is
    /// stored already: returns whether it was stored. Two replicas receiving pushes at once
    /// keep the newest, whatever order their writes land in.
    pub async fn save_verify_ticket(
        &self,
        component: &AppId,
        ticket: &str,
        create_time: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        use WetokenVerifyTicket as T;
        let update = Query::update()
            .table(T::Table)
            .value(T::Ticket, ticket)
            .value(T::CreateTime, create_time)
            .value(T::ReceivedAt, now)
            .and_where(Expr::col(T::ComponentAppid).eq(component.as_str()))
            .and_where(Expr::col(T::CreateTime).lte(create_time))
            .to_owned();
        for _ in 0..2 {
            if self.db.execute(&update).await?.rows_affected() == 1 {
                return Ok(true);
            }
            let insert = Query::insert()
                .into_table(T::Table)
                .columns([T::ComponentAppid, T::Ticket, T::CreateTime, T::ReceivedAt])
                .values_panic([
                    component.as_str().into(),
                    ticket.into(),
                    create_time.into(),
                    now.into(),
                ])
                .to_owned();
            match self.db.execute(&insert).await {
                Ok(_) => return Ok(true),
                // Stored meanwhile by another replica: compare with it.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // MySQL counts a row written with the values it had as unchanged: the same ticket again.
        Ok(false)
    }

    /// `component`'s newest stored verify ticket, if any.
    pub async fn verify_ticket(&self, component: &AppId) -> Result<Option<VerifyTicket>, Error> {
        use WetokenVerifyTicket as T;
        let select = Query::select()
            .columns([T::Ticket, T::CreateTime, T::ReceivedAt])
            .from(T::Table)
            .and_where(Expr::col(T::ComponentAppid).eq(component.as_str()))
            .to_owned();
        #[derive(FromQueryResult)]
        struct Row {
            ticket: String,
            create_time: i64,
            received_at: DateTime<Utc>,
        }
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        let row = Row::from_query_result(&row, "")?;
        Ok(Some(VerifyTicket {
            ticket: row.ticket,
            create_time: row.create_time,
            received_at: row.received_at,
        }))
    }

    /// Notes a push's `msg_signature` for `component`: `false` if it was noted before (the
    /// push is a replay), on any replica. Signatures older than `forget_before_ms` (Unix ms) go.
    pub async fn note_push(
        &self,
        component: &AppId,
        signature: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<bool, Error> {
        use WetokenPushSeen as S;
        let prune = Query::delete()
            .from_table(S::Table)
            .and_where(Expr::col(S::SeenAt).lt(forget_before_ms))
            .to_owned();
        self.db.execute(&prune).await?;
        let insert = Query::insert()
            .into_table(S::Table)
            .columns([S::ComponentAppid, S::Signature, S::SeenAt])
            .values_panic([component.as_str().into(), signature.into(), now_ms.into()])
            .to_owned();
        match self.db.execute(&insert).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets a push's `msg_signature` noted by [`Store::note_push`].
    pub async fn forget_push(&self, component: &AppId, signature: &str) -> Result<(), Error> {
        use WetokenPushSeen as S;
        let forget = Query::delete()
            .from_table(S::Table)
            .and_where(Expr::col(S::ComponentAppid).eq(component.as_str()))
            .and_where(Expr::col(S::Signature).eq(signature))
            .to_owned();
        self.db.execute(&forget).await?;
        Ok(())
    }

    /// Within a credential write's transaction `txn` (after its change number, before the
    /// credential row): makes `refresh_token` the authorizer's stored one, if it is not already.
    /// The app row is locked and compared as read, so no other write of its secrets is lost.
    pub(super) async fn keep_refresh_token(
        &self,
        txn: &DatabaseTransaction,
        appid: &AppId,
        tokens: RefreshTokens<'_>,
    ) -> Result<(), Error> {
        let refresh_token = tokens.returned;
        let find = app_info::Entity::find_by_id(appid.as_str().to_owned());
        let row = if self.db.get_database_backend() == DbBackend::Sqlite {
            // The transaction holds SQLite's write lock already (the change number).
            find.one(txn).await?
        } else {
            find.lock_exclusive().one(txn).await?
        };
        let Some(row) = row else {
            return Err(Error::UnknownApp(appid.clone()));
        };
        let sealed = SealedRow::of(&row);
        let stored = self.open_checked(
            &row.appid,
            A::Secret,
            row.secret.clone(),
            row.seal_generation,
        );
        match stored.as_deref() {
            Ok(stored) if stored == refresh_token.expose() => return Ok(()),
            // Replaced since the fetch read it (the account authorized again, or an operator
            // set it): the newer one stays. WeChat's answer was to the one it replaced.
            Ok(stored) if stored != tokens.used.expose() => {
                tracing::warn!(%appid, "the refresh token changed while a refresh used the one before; keeping the newer");
                return Ok(());
            }
            _ => {}
        }
        let changes = [(A::Secret, refresh_token.expose())];
        let resealed = self.reseal_row(&sealed, &changes, |column, stored| {
            self.open_checked(&sealed.appid, column, stored, sealed.generation)
        })?;
        let mut write = Query::update();
        write.table(app_info::Entity);
        for (column, value) in resealed.values {
            write.value(column, value);
        }
        write
            .value(A::SealGeneration, resealed.generation)
            .cond_where(sealed.unchanged());
        if txn.execute(&write).await?.rows_affected() != 1 {
            return Err(Error::Unavailable(format!(
                "the stored refresh token of authorizer {appid} changed while the new one was \
                 being written; the new one was not written"
            )));
        }
        Ok(())
    }

    /// Marks `authorizer`, an authorizer of `component`, revoked and deletes its credentials
    /// (every replica drops them through the change feed), so nothing serves or refreshes it
    /// and no alert counts it. Returns whether it was an authorizer of `component`.
    pub async fn revoke_authorizer(
        &self,
        component: &AppId,
        authorizer: &AppId,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        // The change number first, then the app row, then its credential rows: the order every
        // writer takes its locks in (`save_credential`), so none waits on another crosswise.
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        let mut seq = feed::next_seq(&txn).await?;
        let mark = Query::update()
            .table(app_info::Entity)
            .value(A::RevokedAt, now)
            .value(A::UpdateTime, now)
            .and_where(Expr::col(A::Appid).eq(authorizer.as_str()))
            .and_where(Expr::col(A::ComponentAppid).eq(component.as_str()))
            .to_owned();
        if txn.execute(&mark).await?.rows_affected() == 0 {
            // The number taken goes back with the rest: no gap in the feed.
            txn.rollback().await?;
            return Ok(false);
        }
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            // Each change is logged even for a row that is not there: a number taken and never
            // logged would look like a gap to every replica's feed reader.
            if i > 0 {
                seq = feed::next_seq(&txn).await?;
            }
            feed::log_change(&txn, seq, authorizer, kind, now).await?;
            let delete = Query::delete()
                .from_table(kind.table())
                .and_where(Expr::col(Column::Appid).eq(authorizer.as_str()))
                .to_owned();
            txn.execute(&delete).await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Lets the next look at a credential waiting on `errcode` (a verify ticket) fetch at once:
    /// its backoff is lifted, if it is still waiting on that; and if it was, so are those of
    /// `appid`'s authorizers, whose tokens waited on the component's (they recorded the same
    /// errcode). A component that was not waiting (every push but the first) costs one update
    /// by primary key, not a pass over its authorizers.
    pub(crate) async fn lift_wait(
        &self,
        appid: &AppId,
        kind: Kind,
        errcode: i64,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let lift = |rows: Condition| {
            Query::update()
                .table(kind.table())
                .value(Column::RetryAt, Option::<DateTime<Utc>>::None)
                .value(Column::UpdateTime, now)
                .cond_where(rows)
                .and_where(Expr::col(Column::Errcode).eq(errcode))
                .to_owned()
        };
        let own = Condition::all().add(Expr::col(Column::Appid).eq(appid.as_str()));
        if self.db.execute(&lift(own)).await?.rows_affected() == 0 {
            return Ok(());
        }
        let authorizers = Query::select()
            .column(A::Appid)
            .from(app_info::Entity)
            .and_where(Expr::col(A::ComponentAppid).eq(appid.as_str()))
            .to_owned();
        let theirs = Condition::all().add(Expr::col(Column::Appid).in_subquery(authorizers));
        self.db.execute(&lift(theirs)).await?;
        Ok(())
    }

    /// An authorizer that authorized again at `since` (when its authorization was being
    /// exchanged): a withdrawal from before is lifted and its credential rows made again (a
    /// withdrawal deleted them). A withdrawal recorded since is newer, and stays: `false`.
    pub(crate) async fn reinstate_authorizer(
        &self,
        appid: &AppId,
        kind: AppKind,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let lift = Query::update()
            .table(app_info::Entity)
            .value(A::RevokedAt, Option::<DateTime<Utc>>::None)
            // Always a change, so that MySQL counts the row as matched.
            .value(A::UpdateTime, now)
            .and_where(Expr::col(A::Appid).eq(appid.as_str()))
            .cond_where(
                Expr::col(A::RevokedAt)
                    .is_null()
                    .or(Expr::col(A::RevokedAt).lte(since)),
            )
            .to_owned();
        // Lifted and its rows made together: a lifted withdrawal without them would never be
        // renewed.
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        if txn.execute(&lift).await?.rows_affected() == 0 {
            return Ok(false);
        }
        super::credentials::make_rows(&txn, appid, kind, now).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Adds `apps`, authorizers of `component` (kind mp or mini, classic token mode), with their
    /// credential rows, in one transaction: every one of them, or none. For bulk imports
    /// (`wetoken-cli import-authorizers`): a few statements for hundreds of apps, where
    /// [`Store::insert_app`] takes three round trips an app. An appid stored already fails the
    /// whole call (the caller may then add them one by one, to learn which).
    pub async fn insert_authorizers(
        &self,
        component: &AppId,
        apps: &[NewApp],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        /// Rows a statement: well under every backend's limit of bound values.
        const ROWS: usize = 500;
        for app in apps {
            let fits = app.component.as_ref() == Some(component)
                && matches!(app.kind, AppKind::Mp | AppKind::Mini)
                && app.token_mode == TokenMode::Classic
                && app.work.is_none();
            if !fits {
                return Err(Error::InvalidInput(format!(
                    "{} is not an authorizer of {component} (kind mp or mini, token mode \
                     classic)",
                    app.appid
                )));
            }
        }
        let rows = apps
            .iter()
            .map(|app| self.new_app_row(app, now))
            .collect::<Result<Vec<_>, _>>()?;
        // Writes first: on SQLite a transaction that reads before it writes cannot wait for
        // another writer (it fails at once with "database is locked"); the component is checked
        // at the end, within the transaction.
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(ROWS).collect();
            match app_info::Entity::insert_many(chunk).exec(&txn).await {
                Ok(_) => {}
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    return Err(Error::InvalidInput(format!(
                        "an app among these {} is stored already: none was added",
                        apps.len()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Their credential rows, as `insert_app` makes them: the scheduler finds them due.
        for kind in [Kind::AccessToken, Kind::JsapiTicket] {
            let of_kind: Vec<&NewApp> = apps.iter().filter(|a| a.kind.has(kind)).collect();
            for chunk in of_kind.chunks(ROWS) {
                let mut insert = Query::insert();
                insert.into_table(kind.table()).columns([
                    Column::Appid,
                    kind.value_column(),
                    Column::Message,
                    Column::UpdateTime,
                ]);
                for app in chunk {
                    insert.values_panic([
                        app.appid.as_str().into(),
                        "".into(),
                        "not fetched yet".into(),
                        now.into(),
                    ]);
                }
                insert.on_conflict(
                    OnConflict::column(Column::Appid)
                        .do_nothing_on([Column::Appid])
                        .to_owned(),
                );
                txn.execute(&insert).await?;
            }
        }
        self.check_component(&txn, component).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Checks that `component` is a stored component: what an authorizer's row must name.
    pub(super) async fn check_component(
        &self,
        conn: &impl ConnectionTrait,
        component: &AppId,
    ) -> Result<(), Error> {
        let kind = app_info::Entity::find_by_id(component.as_str().to_owned())
            .select_only()
            .column(A::Kind)
            .into_tuple::<String>()
            .one(conn)
            .await?;
        match kind.as_deref() {
            Some(kind) if kind == AppKind::Component.as_str() => Ok(()),
            Some(kind) => Err(Error::InvalidInput(format!(
                "{component} is a {kind} app, not a third-party platform (kind component): an \
                 authorizer's component_appid must name one"
            ))),
            None => Err(Error::InvalidInput(format!(
                "no third-party platform {component} is stored: add it (kind component) before \
                 its authorizers"
            ))),
        }
    }
}
