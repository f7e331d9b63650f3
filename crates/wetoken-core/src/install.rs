//! Creating and upgrading wetoken's tables: the migrations, the Go takeover around them, and the
//! report an operator reads (`wetoken-cli install`, `install --check`, a server's start).

use std::fmt;

use wetoken_migration::{Migrator, MigratorTrait, SchemaManager};

use crate::takeover::{GoSurvey, Takeover};
use crate::{Error, Store};

mod lock;

/// The tables wetoken owns, as named in the Go wetoken.
pub const TABLES: [&str; 12] = [
    "wechat_app_info",
    "wechat_access_token",
    "wechat_jsapi_ticket",
    "wechat_card_ticket",
    "wechat_user_info",
    "wetoken_consumer_key",
    "wetoken_refresh_share",
    "wetoken_change_seq",
    "wetoken_change",
    "wetoken_refresh_history",
    "wetoken_verify_ticket",
    "wetoken_push_seen",
];

impl Store {
    /// Applies every pending migration; returns the names of those applied. A database the Go
    /// wetoken created is taken over with [`Takeover::default`]; see [`Store::install`].
    pub async fn migrate(&self) -> Result<Vec<String>, Error> {
        Ok(self.install(&Takeover::default()).await?.applied)
    }

    /// Creates wetoken's tables, or brings them up to date, and takes over a database the Go
    /// wetoken created: refuses while a Go server writes to it (unless forced), upgrades its
    /// tables in place, and adopts the tokens and tickets it stored. Running it again changes
    /// nothing; a run interrupted after any statement finishes when run again.
    ///
    /// Processes that install at once (replicas started together on an empty database, a
    /// `wetoken-cli install` beside them) take turns: on MySQL/MariaDB and PostgreSQL the work
    /// runs on a connection of its own that holds a database lock (`GET_LOCK`,
    /// `pg_advisory_lock`) throughout, so the next process finds the migrations applied and
    /// does nothing. SQLite serves one process, and locks its file itself.
    pub async fn install(&self, takeover: &Takeover) -> Result<Installed, Error> {
        let Some(lock) = lock::MigrationLock::take(self).await? else {
            return self.install_unlocked(takeover).await;
        };
        let installed = lock.store().install_unlocked(takeover).await;
        // Released on an error too; closing the connection would release it anyway.
        lock.release().await;
        installed
    }

    async fn install_unlocked(&self, takeover: &Takeover) -> Result<Installed, Error> {
        let survey = self.go_survey(takeover.zone).await?;
        if let Some(wrong) = survey.as_ref().and_then(GoSurvey::zone_error) {
            return Err(wrong);
        }
        if let Some(survey) = &survey
            && let Some(refusal) = survey.writing_error()
        {
            if !takeover.force {
                return Err(refusal);
            }
            tracing::warn!(%refusal, "going on as forced");
        }
        let before = self.tables_present().await?;
        let pending: Vec<String> = Migrator::get_pending_migrations(self.connection())
            .await?
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        if !pending.is_empty() {
            Migrator::up(self.connection(), None).await?;
        }
        let created = self
            .tables_present()
            .await?
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        let adopted = match &survey {
            Some(survey) => Some((self.adopt_go_credentials(survey).await?, survey.zone_text())),
            None => None,
        };
        Ok(Installed {
            created,
            applied: pending,
            adopted,
        })
    }

    /// What [`Store::install`] would do, changing nothing: `install --check`.
    pub async fn install_plan(&self, takeover: &Takeover) -> Result<InstallPlan, Error> {
        let present = self.tables_present().await?;
        let missing = TABLES
            .into_iter()
            .filter(|t| !present.contains(t))
            .collect();
        let pending = self
            .migration_status()
            .await?
            .into_iter()
            .filter_map(|(name, applied)| (!applied).then_some(name))
            .collect();
        let manager = SchemaManager::new(self.connection());
        let go_changes = wetoken_migration::go::changes(&manager)
            .await?
            .into_iter()
            .map(|c| c.description)
            .collect();
        Ok(InstallPlan {
            missing,
            pending,
            go_changes,
            go: self.go_survey(takeover.zone).await?,
            force: takeover.force,
        })
    }

    /// Every migration wetoken knows, with whether it has been applied here.
    pub async fn migration_status(&self) -> Result<Vec<(String, bool)>, Error> {
        let manager = SchemaManager::new(self.connection());
        let applied: Vec<String> = if manager.has_table("seaql_migrations").await? {
            Migrator::get_applied_migrations(self.connection())
                .await?
                .iter()
                .map(|m| m.name().to_owned())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Migrator::migrations()
            .iter()
            .map(|m| {
                let name = m.name().to_owned();
                let done = applied.contains(&name);
                (name, done)
            })
            .collect())
    }

    /// Which of wetoken's tables exist in this database.
    pub async fn tables_present(&self) -> Result<Vec<&'static str>, Error> {
        let manager = SchemaManager::new(self.connection());
        let mut present = Vec::new();
        for table in TABLES {
            if manager.has_table(table).await? {
                present.push(table);
            }
        }
        Ok(present)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.connection().ping().await.map_err(Error::from)
    }
}

/// What [`Store::install`] did. Its `Display` is the report an operator reads: one line per table
/// created and per migration applied, or that there was nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The tables that did not exist before.
    pub created: Vec<&'static str>,
    /// The migrations applied, by name.
    pub applied: Vec<String>,
    /// On a Go database: the stored credentials given a wetoken expiry, and the zone their
    /// `expire_date` was read in.
    pub adopted: Option<(u64, String)>,
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for table in &self.created {
            writeln!(f, "created table {table}")?;
        }
        for name in &self.applied {
            writeln!(f, "applied migration {name}")?;
        }
        let adopted = match &self.adopted {
            Some((n, zone)) if *n > 0 => {
                writeln!(
                    f,
                    "adopted {n} tokens and tickets the Go wetoken stored (expire_date read in \
                     {zone})"
                )?;
                true
            }
            _ => false,
        };
        if self.applied.is_empty() && !adopted {
            writeln!(
                f,
                "nothing to do: wetoken's tables are in place and up to date"
            )?;
        }
        Ok(())
    }
}

/// What [`Store::install`] would do: `install --check`.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// wetoken's tables that do not exist yet.
    pub missing: Vec<&'static str>,
    /// Migrations not yet applied.
    pub pending: Vec<String>,
    /// Changes to the Go wetoken's tables (or columns a migration adds) still to make.
    pub go_changes: Vec<String>,
    /// What a Go database holds, if this is one.
    pub go: Option<GoSurvey>,
    /// Whether a Go writer would be ignored.
    pub force: bool,
}

impl InstallPlan {
    /// Whether install would change anything.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.pending.is_empty()
            && self.go_changes.is_empty()
            && self.go.as_ref().is_none_or(|go| {
                go.adoptable
                    .iter()
                    .all(|(_, a)| a.live == 0 && a.expired == 0)
            })
    }

    /// Whether install would refuse: the Go zone is wrong, or a Go server writes and the check
    /// is not forced.
    pub fn refused(&self) -> Option<Error> {
        let go = self.go.as_ref()?;
        if let Some(wrong) = go.zone_error() {
            return Some(wrong);
        }
        if self.force {
            return None;
        }
        go.writing_error()
    }
}

impl fmt::Display for InstallPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(go) = &self.go {
            writeln!(
                f,
                "this database holds the Go wetoken's tables; its expire_date is read in {}",
                go.zone_text()
            )?;
        }
        for table in &self.missing {
            writeln!(f, "would create table {table}")?;
        }
        for name in &self.pending {
            writeln!(f, "would apply migration {name}")?;
        }
        if !self.go_changes.is_empty() {
            writeln!(
                f,
                "would change the Go wetoken's tables (migration 000007):"
            )?;
            for change in &self.go_changes {
                writeln!(f, "  {change}")?;
            }
        }
        if let Some(go) = &self.go {
            for (table, a) in &go.adoptable {
                if a.live + a.expired > 0 {
                    writeln!(
                        f,
                        "would adopt from {table}: {} still valid (served until they expire, \
                         with no call to WeChat), {} expired (fetched when first needed)",
                        a.live, a.expired
                    )?;
                }
            }
        }
        if let Some(refusal) = self.refused() {
            writeln!(f, "would refuse: {refusal}")?;
        } else if let Some(go) = &self.go
            && !go.writes.is_empty()
        {
            writeln!(
                f,
                "a Go wetoken wrote {} rows in the last minutes; --force goes on regardless",
                go.writes.len()
            )?;
        }
        if self.is_empty() {
            writeln!(
                f,
                "nothing to do: wetoken's tables are in place and up to date"
            )?;
        }
        Ok(())
    }
}
