//! Test support shared by wetoken's test suites (a dev-dependency only; never published).
//!
//! One harness decides which databases a test runs on, for the server's tests, the CLI's and the
//! engine's alike.
//!
//! - SQLite always runs, on a file of its own under the system's temporary directory.
//! - MariaDB and PostgreSQL run against `WETOKEN_TEST_MYSQL_URL` (default
//!   `mysql://root@127.0.0.1:3306`) and `WETOKEN_TEST_POSTGRES_URL` (default
//!   `postgres://postgres@127.0.0.1:5432`). Each test creates a database of its own there and
//!   drops it afterwards. A backend that cannot be reached fails the test.
//! - A developer without those servers says `WETOKEN_TEST_DATABASES=sqlite`. Every test that
//!   is then not run on a backend says so on the terminal, with the count so far, past the test
//!   harness's output capture ([`skipped`]). Under `CI=true` the opt-out is itself a failure, so
//!   CI always covers all three.
//!
//! [`on_every_database!`] and [`on_databases!`] turn `async fn scenario(db: &TestDb)` into one
//! `#[tokio::test]` per backend. [`seed_apps`] fills a migrated database with many apps at once.
#![deny(missing_docs)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database};

mod seed;
pub use seed::{Seed, seed_apps};

/// A database server the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file; always available.
    Sqlite,
    /// MariaDB or MySQL.
    Mysql,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// Every backend, SQLite first.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Mysql, Backend::Postgres];

    /// `sqlite`, `mysql` or `postgres`: the names `WETOKEN_TEST_DATABASES` lists.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Mysql => "mysql",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether this run tests on `self`: listed in `WETOKEN_TEST_DATABASES` (all three when it
    /// is unset). Leaving a backend out panics under `CI=true`; otherwise the skip is counted and
    /// announced for `test` (see [`skipped`]).
    pub fn wanted(self, test: &str) -> bool {
        let listed = std::env::var("WETOKEN_TEST_DATABASES")
            .unwrap_or_else(|_| "sqlite,mysql,postgres".into());
        if listed.split(',').any(|b| b.trim() == self.name()) {
            return true;
        }
        assert!(
            !in_ci(),
            "CI must test {} but WETOKEN_TEST_DATABASES={listed:?} leaves it out",
            self.name()
        );
        skip(&format!(
            "{test} on {} (WETOKEN_TEST_DATABASES={listed})",
            self.name()
        ));
        false
    }
}

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// How many tests (or database runs of one) this test binary has skipped so far.
pub fn skipped() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// Counts a skipped test and says so on the real standard error, which the test harness does not
/// capture, so a green run still shows what it did not test. Callers check [`in_ci`] first: CI
/// skips nothing.
pub fn skip(what: &str) {
    let n = SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {what}. {n} skipped so far in this test binary; CI=true skips none. ***"
    );
}

/// A database made for one test.
pub struct TestDb {
    /// The backend it lives on.
    pub backend: Backend,
    /// The URL wetoken connects to.
    pub url: String,
    /// The server's maintenance database, for MariaDB and PostgreSQL.
    admin_url: Option<String>,
    name: String,
    file: Option<PathBuf>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "wt_{}_{micros}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    /// A fresh, empty database on `backend` for `test` (named in the skip notice), or `None` when
    /// the developer opted out of that backend (never under CI).
    ///
    /// A MariaDB or PostgreSQL server that cannot be reached panics, naming the way out.
    pub async fn create(backend: Backend, test: &str) -> Option<TestDb> {
        if !backend.wanted(test) {
            return None;
        }
        let name = unique_name();
        if backend == Backend::Sqlite {
            let dir = std::env::temp_dir().join("wetoken-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{name}.db"));
            return Some(TestDb {
                backend,
                url: format!("sqlite://{}?mode=rwc", path.display()),
                admin_url: None,
                name,
                file: Some(path),
            });
        }
        let (var, default, admin_db) = if backend == Backend::Mysql {
            (
                "WETOKEN_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306",
                "test",
            )
        } else {
            (
                "WETOKEN_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432",
                "postgres",
            )
        };
        let root = std::env::var(var).unwrap_or_else(|_| default.into());
        let root = root.trim_end_matches('/').to_owned();
        let admin_url = format!("{root}/{admin_db}");
        let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach {} at {admin_url}: {e}. Start it, point {var} at one, \
                 or set WETOKEN_TEST_DATABASES=sqlite to test on SQLite only",
                backend.name()
            )
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Some(TestDb {
            backend,
            url: format!("{root}/{name}"),
            admin_url: Some(admin_url),
            name,
            file: None,
        })
    }

    /// A fresh SQLite database, which every run tests on.
    pub async fn sqlite() -> TestDb {
        TestDb::create(Backend::Sqlite, "SQLite")
            .await
            .expect("SQLite is always tested")
    }

    /// The database's own name (a SQLite file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database. Tests call it at the end; a failed test leaves its database behind
    /// for a look.
    pub async fn drop_db(self) {
        if let Some(path) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(admin_url) = &self.admin_url
            && let Ok(admin) = Database::connect(admin_url).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE {}", self.name))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// Runs each `async fn scenario(db: &TestDb)` once per backend listed: a module per scenario,
/// with one `#[tokio::test]` per backend, named `sqlite`, `mysql` or `postgres`.
///
/// ```ignore
/// wetoken_testkit::on_databases!([Mysql, Postgres]: replicas_share_one_lease);
/// ```
#[macro_export]
macro_rules! on_databases {
    ($backends:tt : $($scenario:ident),* $(,)?) => {
        $( $crate::on_databases!(@module $scenario $backends); )*
    };
    (@module $scenario:ident [$($backend:ident),+ $(,)?]) => {
        mod $scenario {
            $( $crate::on_databases!(@test $scenario, $backend); )+
        }
    };
    (@test $scenario:ident, Sqlite) => { $crate::on_databases!(@fn $scenario, sqlite, Sqlite); };
    (@test $scenario:ident, Mysql) => { $crate::on_databases!(@fn $scenario, mysql, Mysql); };
    (@test $scenario:ident, Postgres) => { $crate::on_databases!(@fn $scenario, postgres, Postgres); };
    (@fn $scenario:ident, $name:ident, $backend:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let test = concat!(module_path!(), "::", stringify!($name));
            if let Some(db) = $crate::TestDb::create($crate::Backend::$backend, test).await {
                super::$scenario(&db).await;
                db.drop_db().await;
            }
        }
    };
}

/// Runs each `async fn scenario(db: &TestDb)` on SQLite, MariaDB and PostgreSQL
/// ([`on_databases!`] with all three).
#[macro_export]
macro_rules! on_every_database {
    ($($scenario:ident),* $(,)?) => {
        $crate::on_databases!([Sqlite, Mysql, Postgres]: $($scenario),*);
    };
}
