//! The sealed columns of an app row (`secret`, `token`, `aes_key`, `pay_key`) and its seal
//! generation, which move together.
//!
//! Every encrypted value of a row is bound to the row's `seal_generation`. A write of any of
//! them moves the row to a new generation and encrypts every one of them anew under it, in one
//! `UPDATE` that compares the generation and each stored value with what was read: a writer that
//! raced it (another replica, an older wetoken, a hand-made change) makes it match no row, and
//! nothing is overwritten. So once a row has moved on, a ciphertext from any earlier version of
//! it, put back into any of its columns, no longer decrypts.

use sea_orm::IdenStatic;
use sea_orm::sea_query::{Condition, Expr, ExprTrait};

use super::Store;
use crate::Error;
use crate::entity::app_info::{self, Column as A};

/// The columns whose values are sealed.
pub(crate) const SEALED: [A; 4] = [A::Secret, A::Token, A::AesKey, A::PayKey];

/// The sealed columns of one row as they were read, and its generation: what a write compares
/// against.
#[derive(Debug, Clone)]
pub(crate) struct SealedRow {
    pub(crate) appid: String,
    pub(crate) generation: i64,
    /// Each of [`SEALED`], as stored (`None` for NULL).
    pub(crate) stored: Vec<(A, Option<String>)>,
}

impl SealedRow {
    pub(crate) fn of(row: &app_info::Model) -> Self {
        Self {
            appid: row.appid.clone(),
            generation: row.seal_generation,
            stored: vec![
                (A::Secret, Some(row.secret.clone())),
                (A::Token, row.token.clone()),
                (A::AesKey, row.aes_key.clone()),
                (A::PayKey, row.pay_key.clone()),
            ],
        }
    }

    /// The values set, with their columns: `''` and NULL are no value (the Go schema stores `''`
    /// for an unset one), and are never encrypted.
    pub(crate) fn values(&self) -> impl Iterator<Item = (A, &str)> {
        self.stored.iter().filter_map(|(column, value)| {
            Some((*column, value.as_deref().filter(|v| !v.is_empty())?))
        })
    }

    /// The row as it was read: its appid, its generation and every sealed column unchanged.
    pub(crate) fn unchanged(&self) -> Condition {
        let mut same = Condition::all()
            .add(Expr::col(A::Appid).eq(self.appid.as_str()))
            .add(Expr::col(A::SealGeneration).eq(self.generation));
        for (column, value) in &self.stored {
            same = same.add(match value {
                Some(value) => Expr::col(*column).eq(value.as_str()),
                None => Expr::col(*column).is_null(),
            });
        }
        same
    }
}

/// The generation after `current`: the next number, or for a new row (or one from before
/// generations, at 0) a random start, so that an app deleted and added again does not pass
/// through the numbers its earlier row had, whose ciphertexts would decrypt in it again.
pub(crate) fn next_generation(current: i64) -> i64 {
    if current > 0 {
        current + 1
    } else {
        rand::random_range(1..=(1i64 << 52))
    }
}

/// Every sealed value of a row, encrypted anew under its next generation.
#[derive(Debug)]
pub(crate) struct Resealed {
    pub(crate) generation: i64,
    /// The columns to write, each with its new stored form.
    pub(crate) values: Vec<(A, String)>,
}

impl Store {
    /// Every value of `row` encrypted anew at its next generation, those of `changes` replacing
    /// the stored ones of their columns. A kept value is first read with `open`, and one that
    /// cannot be read makes the whole reseal an error: moving the row on without it would leave
    /// it bound to a generation the row no longer has, unreadable even with the right key.
    pub(crate) fn reseal_row(
        &self,
        row: &SealedRow,
        changes: &[(A, &str)],
        open: impl Fn(A, String) -> Result<String, Error>,
    ) -> Result<Resealed, Error> {
        let generation = next_generation(row.generation);
        let mut values = Vec::new();
        for (column, new) in changes {
            values.push((*column, self.seal(&row.appid, *column, new, generation)?));
        }
        for (column, stored) in row.values() {
            if changes
                .iter()
                .any(|(changed, _)| changed.as_str() == column.as_str())
            {
                continue;
            }
            let plain = open(column, stored.to_owned())?;
            values.push((column, self.seal(&row.appid, column, &plain, generation)?));
        }
        Ok(Resealed { generation, values })
    }
}
