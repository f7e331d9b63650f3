//! The lock that makes installs take turns.
//!
//! sea-orm's migrator reads the applied migrations, then applies the rest, recording each in
//! `seaql_migrations`: two processes doing so at once both apply the first, and the second to
//! record it fails on the table's primary key (`Duplicate entry
//! 'm20261124_000001_create_tables'`). So an install holds a database lock for its whole run.
//!
//! MySQL's `GET_LOCK` and PostgreSQL's session-level advisory locks belong to a connection, and
//! a pool hands each statement whichever connection is free: the lock and every statement of
//! the install therefore go over a pool of exactly one connection, opened with the main pool's
//! settings and closed afterwards (which releases the lock whatever happened).

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Pool};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, SqlxMySqlConnector,
    SqlxPostgresConnector, Statement,
};
use tracing::{debug, info, warn};

use crate::{Error, Store};

/// How long a process waits for another's install before giving up.
const WAIT: Duration = Duration::from_secs(600);

/// PostgreSQL's advisory lock: "wetoken" in ASCII. Advisory locks are per database.
const PG_KEY: i64 = 0x0077_6574_6f6b_656e;

/// MySQL's named locks are per server: the name carries the database's, hashed to stay within
/// the 64 characters a lock name may have.
const MYSQL_NAME: &str = "CONCAT('wetoken_migrate_', MD5(COALESCE(DATABASE(), '')))";

/// A held install lock, with the one connection it lives on.
pub(super) struct MigrationLock {
    store: Store,
}

impl MigrationLock {
    /// Opens a connection of its own and takes the lock on it, waiting for another process's
    /// install for up to ten minutes. `None` on SQLite.
    pub(super) async fn take(store: &Store) -> Result<Option<Self>, Error> {
        let db = store.connection();
        let single = match db.get_database_backend() {
            DbBackend::MySql => {
                SqlxMySqlConnector::from_sqlx_mysql_pool(one(db.get_mysql_connection_pool()).await?)
            }
            DbBackend::Postgres => SqlxPostgresConnector::from_sqlx_postgres_pool(
                one(db.get_postgres_connection_pool()).await?,
            ),
            _ => return Ok(None),
        };
        let lock = Self {
            store: store.on(single),
        };
        let deadline = Instant::now() + WAIT;
        let mut waiting = false;
        while !lock.try_take().await? {
            if !waiting {
                info!("another process is migrating the database; waiting for it to finish");
                waiting = true;
            }
            if Instant::now() >= deadline {
                lock.close().await;
                return Err(Error::Schema(format!(
                    "another process has been migrating the database for over {} s; if none \
                     is, a connection holding the lock must be closed",
                    WAIT.as_secs()
                )));
            }
        }
        debug!(waited = waiting, "took the install lock");
        Ok(Some(lock))
    }

    /// The store to install through: its one connection holds the lock.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// Releases the lock and closes the connection.
    pub(super) async fn release(self) {
        let sql = match self.backend() {
            DbBackend::MySql => format!("SELECT RELEASE_LOCK({MYSQL_NAME})"),
            _ => format!("SELECT pg_advisory_unlock({PG_KEY})"),
        };
        if let Err(e) = self.run(&sql).await {
            // Closing the connection below releases it all the same.
            warn!(error = %Error::from(e).chain(), "could not release the install lock");
        }
        self.close().await;
    }

    /// One attempt, which waits up to a second on MySQL (`GET_LOCK` waits itself) and not at
    /// all on PostgreSQL (where the caller's next attempt comes after a pause).
    async fn try_take(&self) -> Result<bool, Error> {
        let sql = match self.backend() {
            DbBackend::MySql => format!("SELECT GET_LOCK({MYSQL_NAME}, 1)"),
            _ => format!("SELECT pg_try_advisory_lock({PG_KEY})"),
        };
        let taken = match self.backend() {
            // 1: taken; 0: timed out; NULL: an error (such as the session being killed).
            DbBackend::MySql => {
                self.query(&sql).await?.try_get_by_index::<Option<i64>>(0)? == Some(1)
            }
            _ => self.query(&sql).await?.try_get_by_index::<bool>(0)?,
        };
        if !taken && self.backend() == DbBackend::Postgres {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(taken)
    }

    fn backend(&self) -> DbBackend {
        self.store.connection().get_database_backend()
    }

    async fn query(&self, sql: &str) -> Result<sea_orm::QueryResult, DbErr> {
        self.store
            .connection()
            .query_one_raw(Statement::from_string(self.backend(), sql))
            .await?
            .ok_or_else(|| DbErr::Custom(format!("no row from {sql}")))
    }

    async fn run(&self, sql: &str) -> Result<(), DbErr> {
        self.query(sql).await.map(drop)
    }

    async fn close(self) {
        let db: DatabaseConnection = self.store.connection().clone();
        if let Err(e) = db.close().await {
            debug!(error = %e, "closing the install connection");
        }
    }
}

/// A pool of one connection with `pool`'s settings: every statement over it goes over the same
/// connection, which is kept for as long as the pool is (no lifetime, no idle timeout).
async fn one<DB: sqlx::Database>(pool: &Pool<DB>) -> Result<Pool<DB>, DbErr> {
    pool.options()
        .clone()
        .max_connections(1)
        .min_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with((*pool.connect_options()).clone())
        .await
        .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))
}
