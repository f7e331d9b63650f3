//! Encrypting the stored secrets: the start-up check, encrypting rows written in plain text, and
//! re-encrypting under a new master key.
//!
//! Every change is a compare-and-set on one row: its secret-like values are encrypted anew
//! together, under the row's next seal generation (`store/sealing.rs`), by an `UPDATE … WHERE
//! appid = :id AND seal_generation = :read AND secret = :read …`. So it can run while servers
//! serve and admins update apps: a row changed meanwhile is left alone and counted.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Query, UpdateStatement};
use sea_orm::{
    ConnectionTrait, DerivePartialModel, EntityName, EntityTrait, IdenStatic, TransactionTrait,
};
use wetoken_migration::{Migrator, MigratorTrait};

use crate::crypto::{Format, is_sealed, sealed_format, sealed_key_id};
use crate::entity::app_info::{self, Column};
use crate::store::{SEALED, SealedRow};
use crate::{Error, Store};

/// How the stored secret-like values (`secret`, `token`, `aes_key`, `pay_key`) are held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsReport {
    /// Values in plain text.
    pub plain: usize,
    /// Encrypted values, by master key id.
    pub by_key: BTreeMap<String, usize>,
    /// Encrypted values in the `wtenc:v1` form, not bound to their row's seal generation (also
    /// counted in `by_key`).
    pub unbound: usize,
}

impl SecretsReport {
    /// How many values are encrypted.
    pub fn encrypted(&self) -> usize {
        self.by_key.values().sum()
    }
}

/// Which values [`Store::reseal`] encrypts anew. Either way, values in the `wtenc:v1` form are
/// encrypted anew too, bound to their row's seal generation; and a row is encrypted anew whole,
/// every value of it under its next generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Only plain ones: what a server does at start.
    Plain,
    /// Every value not under the current master key, plain ones included: a rotation.
    NotCurrent,
}

/// What [`Store::reseal`] did.
#[derive(Debug, Clone, Default)]
pub struct ResealReport {
    /// Values now encrypted under the current key that were plain ([`Reseal::Plain`]), or not
    /// under the current key ([`Reseal::NotCurrent`]).
    pub resealed: usize,
    /// Values in the `wtenc:v1` form now bound to their row's seal generation, not counted in
    /// `resealed`.
    pub bound: usize,
    /// Values that changed while being re-encrypted (an app update); left as the update wrote
    /// them.
    pub changed_meanwhile: usize,
    /// Values that could not be decrypted, one message each (app and column, never the value).
    pub failed: Vec<String>,
}

/// The secret-like columns of `wechat_app_info` and the row's seal generation, as stored.
#[derive(DerivePartialModel)]
#[sea_orm(entity = "app_info::Entity")]
struct SecretColumns {
    appid: String,
    secret: Option<String>,
    token: Option<String>,
    aes_key: Option<String>,
    pay_key: Option<String>,
    seal_generation: i64,
}

impl From<SecretColumns> for SealedRow {
    fn from(row: SecretColumns) -> Self {
        SealedRow {
            appid: row.appid,
            generation: row.seal_generation,
            stored: SEALED
                .into_iter()
                .zip([row.secret, row.token, row.aes_key, row.pay_key])
                .collect(),
        }
    }
}

impl Store {
    /// Every app row's secret-like values as stored, with its seal generation.
    async fn raw_secrets(&self) -> Result<Vec<SealedRow>, Error> {
        let manager = wetoken_migration::SchemaManager::new(self.connection());
        if !manager.has_table(app_info::Entity.table_name()).await? {
            return Ok(Vec::new());
        }
        let rows = app_info::Entity::find()
            .into_partial_model::<SecretColumns>()
            .all(self.connection())
            .await?;
        Ok(rows.into_iter().map(SealedRow::from).collect())
    }

    /// Counts the stored secret-like values by how they are held. The database does the
    /// counting, grouped by the encrypted values' key prefix: at 100,000 apps a server's start
    /// reads a few rows, not every secret.
    pub async fn secrets_report(&self) -> Result<SecretsReport, Error> {
        let manager = wetoken_migration::SchemaManager::new(self.connection());
        let table = app_info::Entity.table_name();
        if !manager.has_table(table).await? {
            return Ok(SecretsReport::default());
        }
        // The sealed prefix (`wtenc:v1:` or `wtenc:v2:`), the key id's 8 hex digits and `:`:
        // what names the form and the key.
        let prefix = crate::crypto::SEALED_PREFIX.len() + 9;
        let selects: Vec<String> = [
            Column::Secret,
            Column::Token,
            Column::AesKey,
            Column::PayKey,
        ]
        .iter()
        .map(|column| {
            let c = column.as_str();
            format!(
                "SELECT CASE WHEN {c} LIKE 'wtenc:%' THEN SUBSTR({c}, 1, {prefix}) ELSE '' \
                     END AS prefix FROM {table} WHERE {c} IS NOT NULL AND {c} <> ''"
            )
        })
        .collect();
        let sql = format!(
            "SELECT prefix, COUNT(*) AS n FROM ({}) values_held GROUP BY prefix",
            selects.join(" UNION ALL ")
        );
        let db = self.connection();
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql,
            ))
            .await?;
        let mut report = SecretsReport::default();
        for row in rows {
            let prefix: String = row.try_get("", "prefix")?;
            let n: i64 = row.try_get("", "n")?;
            let n = usize::try_from(n).unwrap_or(0);
            // The prefix alone ends at the key id's colon; the body is not needed to name it.
            match sealed_key_id(&prefix) {
                Some(id) => *report.by_key.entry(id.to_owned()).or_default() += n,
                None => report.plain += n,
            }
            if sealed_format(&prefix) == Some(Format::V1) {
                report.unbound += n;
            }
        }
        Ok(report)
    }

    /// What a server does at start, after migrations: refuses to go on if stored values are
    /// encrypted under a key it does not hold (or no key at all), and encrypts the plain ones when
    /// a master key is configured, binding those from before seal generations (`wtenc:v1`) to
    /// their rows' generations on the way. A row that cannot be read is logged and left alone.
    /// Returns the state found and how many plain values it encrypted.
    pub async fn prepare_secrets(&self) -> Result<(SecretsReport, usize), Error> {
        let report = self.secrets_report().await?;
        let Some(keyring) = self.keyring() else {
            if report.encrypted() > 0 {
                return Err(Error::Secret(format!(
                    "{} stored secrets are encrypted (master key id {}), but no master key is \
                     configured: set master_key or master_key_file (WETOKEN_MASTER_KEY, \
                     WETOKEN_MASTER_KEY_FILE)",
                    report.encrypted(),
                    ids(&report)
                )));
            }
            return Ok((report, 0));
        };
        let unknown: Vec<&str> = report
            .by_key
            .keys()
            .map(String::as_str)
            .filter(|id| !keyring.knows(id))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Secret(format!(
                "stored secrets are encrypted under master key id {}, which is neither master_key \
                 (id {}) nor master_key_previous{}: configure the key they were written with",
                unknown.join(", "),
                keyring.current_id(),
                keyring
                    .previous_id()
                    .map_or_else(String::new, |p| format!(" (id {p})"))
            )));
        }
        if report.plain == 0 && report.unbound == 0 {
            return Ok((report, 0));
        }
        if !Migrator::get_pending_migrations(self.connection())
            .await?
            .is_empty()
        {
            return Err(Error::Secret(
                "cannot encrypt the stored secrets before the schema is up to date: run \
                 `wetoken-cli migrate up`, or set auto_migrate"
                    .into(),
            ));
        }
        let done = self.reseal(Reseal::Plain).await?;
        // A row that cannot be read is left as it is, and is that app's error when it is read:
        // one broken row (altered, or a value put back from an older version of it) keeps no
        // other app from being served.
        for failure in &done.failed {
            tracing::warn!(
                %failure,
                "a stored secret could not be encrypted anew; its row is left as it was"
            );
        }
        if done.bound > 0 {
            tracing::info!(
                bound = done.bound,
                "bound the encrypted values from before seal generations (wtenc:v1) to their \
                 rows' generations"
            );
        }
        Ok((report, done.resealed))
    }

    /// Encrypts stored values anew under the current master key: the plain ones, or every one
    /// not under the current key (a rotation). Values that cannot be decrypted are reported and
    /// left alone; the others are still done.
    pub async fn reseal(&self, which: Reseal) -> Result<ResealReport, Error> {
        let keyring = self
            .keyring()
            .ok_or_else(|| Error::Secret("no master key is configured".into()))?;
        let mut report = ResealReport::default();
        let mut batch = Vec::new();
        for row in self.raw_secrets().await? {
            let mut due = 0;
            let mut bound = 0;
            for (_, stored) in row.values() {
                if match which {
                    Reseal::Plain => !is_sealed(stored),
                    Reseal::NotCurrent => sealed_key_id(stored) != Some(keyring.current_id()),
                } {
                    due += 1;
                } else if sealed_format(stored) == Some(Format::V1) {
                    bound += 1;
                }
            }
            if due + bound == 0 {
                continue;
            }
            // Plain values are read as they are here, `require_encrypted` or not: this is what
            // encrypts them.
            let resealed = match self.reseal_row(&row, &[], |column, stored| {
                self.open(&row.appid, column, stored, row.generation)
            }) {
                Ok(resealed) => resealed,
                Err(e) => {
                    // The row is left whole, the values that would open included: moved on
                    // without the one that does not, that one could never be read again.
                    report.failed.push(e.to_string());
                    continue;
                }
            };
            let mut update = Query::update();
            update
                .table(app_info::Entity)
                .value(Column::SealGeneration, resealed.generation)
                .cond_where(row.unchanged());
            for (column, value) in resealed.values {
                update.value(column, value);
            }
            batch.push(Pending { update, due, bound });
            if batch.len() == RESEAL_BATCH {
                self.write_batch(&mut batch, &mut report).await?;
            }
        }
        self.write_batch(&mut batch, &mut report).await?;
        if report.resealed + report.bound > 0 {
            self.compact_sqlite().await;
        }
        Ok(report)
    }

    /// Writes the rows of `batch` in one transaction, each by its own compare-and-set: one
    /// commit (one `fsync`) per batch rather than per row, which is what binding 100,000 rows
    /// at a first start costs. A row changed meanwhile is counted and the others still written.
    async fn write_batch(
        &self,
        batch: &mut Vec<Pending>,
        report: &mut ResealReport,
    ) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.connection().begin().await?;
        let mut done = ResealReport::default();
        for row in batch.iter() {
            if txn.execute(&row.update).await?.rows_affected() == 1 {
                done.resealed += row.due;
                done.bound += row.bound;
            } else {
                done.changed_meanwhile += row.due + row.bound;
            }
        }
        txn.commit().await?;
        report.resealed += done.resealed;
        report.bound += done.bound;
        report.changed_meanwhile += done.changed_meanwhile;
        batch.clear();
        Ok(())
    }

    /// On SQLite, rewrites the file (`VACUUM`) so that no free page keeps a value as it was
    /// before it was encrypted: `secure_delete` zeroes what is freed from now on, not what was
    /// freed before it was set, by older versions or another tool. Best effort: a failure
    /// (another process reading, say) is logged, and the encryption stands. The other databases
    /// keep old values where no query reaches them (binlogs, undo, dead tuples, backups):
    /// `docs/security.md` says what to do there.
    async fn compact_sqlite(&self) {
        if self.connection().get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
            return;
        }
        match self.connection().execute_unprepared("VACUUM").await {
            Ok(_) => tracing::info!("SQLite file rewritten (VACUUM): no plain value is left in it"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot VACUUM the SQLite file after encrypting; plain values may remain in its \
                 free pages until `sqlite3 FILE VACUUM` is run"
            ),
        }
    }
}

/// How many rows [`Store::reseal`] writes per transaction.
const RESEAL_BATCH: usize = 200;

/// A row's compare-and-set [`Store::reseal`] has yet to write, and the values it counts.
struct Pending {
    update: UpdateStatement,
    due: usize,
    bound: usize,
}

fn ids(report: &SecretsReport) -> String {
    report
        .by_key
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
