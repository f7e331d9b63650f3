//! Taking over a database the Go wetoken wrote: recognising it, refusing while a Go server still
//! writes to it, and adopting the tokens and tickets it stored.
//!
//! The schema side (wider columns, wetoken's own columns, defaults) is migration 000007 and
//! [`wetoken_migration::go`]. What stays here needs a setting: the Go server wrote `expire_date`
//! as `DATE_ADD(now(), INTERVAL expire SECOND)`, a DATETIME in the MySQL session's time zone, with
//! no zone stored. [`GoZone`] says which zone that was; by default the database server's own,
//! which is what `now()` used unless the Go DSN set `time_zone`.
//!
//! A Go server left running beside wetoken fetches tokens next to it, and each of its fetches
//! ends wetoken's token five minutes later. Its writes show in `expire_date`, which wetoken never
//! writes: a row issued (`expire_date − expire`) within [`GO_WRITE_WINDOW_SECS`] means a Go
//! server is still at work, and the takeover stops unless forced.

use std::fmt;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};
use wetoken_migration::SchemaManager;
use wetoken_migration::go::{CREDENTIAL_TABLES, GO_NEVER, is_go_schema};

use crate::{Error, Store};

/// How recent a Go write must be to count as a Go server still running.
pub const GO_WRITE_WINDOW_SECS: i64 = 600;

/// How far ahead of the database's clock a Go row may seem issued before the zone is taken to
/// be wrong (the Go server's clock and the database's may differ a little).
const CLOCK_SLACK_SECS: i64 = 300;

/// The time zone the Go wetoken wrote `expire_date` in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GoZone {
    /// The MySQL server's own (`@@global.time_zone`), as `now()` used it.
    #[default]
    Database,
    /// A fixed offset from UTC, in seconds east.
    Fixed(i32),
}

impl GoZone {
    /// `database`, `UTC`, or an offset such as `+08:00` (China's time, which has no daylight
    /// saving).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("database") {
            return Ok(GoZone::Database);
        }
        if text.eq_ignore_ascii_case("utc") || text == "Z" {
            return Ok(GoZone::Fixed(0));
        }
        let bad = || {
            Error::InvalidInput(format!(
                "go_time_zone {text:?}: expected `database` (the MySQL server's own zone), `UTC`, \
                 or an offset such as +08:00"
            ))
        };
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(bad()),
        };
        let (hours, minutes) = rest.split_once(':').unwrap_or((rest, "0"));
        let hours: i32 = hours.parse().map_err(|_| bad())?;
        let minutes: i32 = minutes.parse().map_err(|_| bad())?;
        if !(0..=14).contains(&hours) || !(0..60).contains(&minutes) {
            return Err(bad());
        }
        Ok(GoZone::Fixed(sign * (hours * 3600 + minutes * 60)))
    }
}

impl fmt::Display for GoZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoZone::Database => f.write_str("database"),
            GoZone::Fixed(seconds) => write!(f, "{}", offset_text(*seconds)),
        }
    }
}

fn offset_text(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let abs = seconds.unsigned_abs();
    format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
}

/// How to take over a database the Go wetoken wrote. The default suits a database wetoken made
/// too: nothing of it applies there.
#[derive(Debug, Clone, Default)]
pub struct Takeover {
    /// The zone of the Go server's `expire_date`.
    pub zone: GoZone,
    /// Go on although a Go server seems to be writing.
    pub force: bool,
}

/// A row a Go server wrote recently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoWrite {
    /// `wechat_access_token` or `wechat_jsapi_ticket`.
    pub table: &'static str,
    /// The app.
    pub appid: String,
    /// How long ago it was issued, by the database's clock in the Go zone.
    pub seconds_ago: i64,
}

/// Stored Go credentials that have no wetoken expiry yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adoptable {
    /// Still valid: served until they expire, with no call to WeChat.
    pub live: u64,
    /// Expired: fetched anew when first needed.
    pub expired: u64,
}

/// What the takeover finds on a Go database.
#[derive(Debug, Clone)]
pub struct GoSurvey {
    /// The zone's offset from UTC, in seconds, as resolved.
    pub offset_secs: i32,
    /// Where it came from.
    pub zone: GoZone,
    /// Rows a Go server wrote within [`GO_WRITE_WINDOW_SECS`].
    pub writes: Vec<GoWrite>,
    /// Rows still to adopt that, read in this zone, were issued in the future: the zone is
    /// wrong. `seconds_ago` is negative.
    pub ahead: Vec<GoWrite>,
    /// Credentials to adopt, by table.
    pub adoptable: Vec<(&'static str, Adoptable)>,
}

impl GoSurvey {
    /// The error that stops a takeover while a Go server writes, naming the rows.
    pub fn writing_error(&self) -> Option<Error> {
        let first = self.writes.first()?;
        let mut names: Vec<String> = self
            .writes
            .iter()
            .take(5)
            .map(|w| format!("{} {} ({} s ago)", w.table, w.appid, w.seconds_ago))
            .collect();
        if self.writes.len() > 5 {
            names.push(format!("and {} more", self.writes.len() - 5));
        }
        Some(Error::InvalidInput(format!(
            "a Go wetoken (wtserver) still writes to this database: it stored {} within the \
             last {} minutes ({}). Its cron would fetch tokens beside wetoken and end them five \
             minutes later: stop every Go wtserver first, then run this again; --force skips this \
             check (go_time_zone is {}; if it is wrong, these times are too)",
            if self.writes.len() == 1 {
                format!("{} of {}", first.table, first.appid)
            } else {
                format!("{} rows", self.writes.len())
            },
            GO_WRITE_WINDOW_SECS / 60,
            names.join(", "),
            self.zone_text(),
        )))
    }

    /// The error that stops a takeover whose zone is wrong: read in it, Go rows still to adopt
    /// were issued in the future, so their expiries would be read hours off.
    pub fn zone_error(&self) -> Option<Error> {
        let first = self.ahead.first()?;
        Some(Error::InvalidInput(format!(
            "read in go_time_zone {}, {} rows of the Go wetoken were issued in the future              ({} of {}: {} s ahead of the database's clock): the Go server wrote expire_date in              another time zone. Set go_time_zone (--go-time-zone, WETOKEN_GO_TIME_ZONE) to the              zone of its MySQL sessions, e.g. +08:00",
            self.zone_text(),
            self.ahead.len(),
            first.table,
            first.appid,
            -first.seconds_ago,
        )))
    }

    /// The zone as resolved, for an operator: `+08:00 (the database's)`.
    pub fn zone_text(&self) -> String {
        match self.zone {
            GoZone::Database => format!(
                "{} (the database server's time zone)",
                offset_text(self.offset_secs)
            ),
            GoZone::Fixed(_) => offset_text(self.offset_secs),
        }
    }
}

impl Store {
    /// The offset of `zone` from UTC, in seconds; `database` asks the MySQL server.
    async fn go_offset(&self, zone: GoZone) -> Result<i32, Error> {
        match zone {
            GoZone::Fixed(seconds) => Ok(seconds),
            GoZone::Database => {
                let ZoneRow {
                    offset_secs: offset,
                    zone_name: name,
                } = ZoneRow::find_by_statement(Statement::from_string(
                    DbBackend::MySql,
                    "SELECT CAST(TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), \
                     CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', @@global.time_zone)) AS SIGNED) \
                     AS offset_secs, CAST(@@global.time_zone AS CHAR) AS zone_name",
                ))
                .one(self.connection())
                .await?
                .ok_or_else(|| Error::Schema("the time zone query answered no row".into()))?;
                let offset = offset.ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "the MySQL server's time zone {name:?} cannot be resolved (its time zone \
                         tables are not loaded): set go_time_zone to the Go server's offset, \
                         e.g. +08:00"
                    ))
                })?;
                // Offsets are whole minutes; the query's two clock reads may straddle a second.
                Ok(((offset as f64 / 60.0).round() * 60.0) as i32)
            }
        }
    }

    /// What a takeover finds: `None` when this is not a database the Go wetoken created.
    pub async fn go_survey(&self, zone: GoZone) -> Result<Option<GoSurvey>, Error> {
        let manager = SchemaManager::new(self.connection());
        if !is_go_schema(&manager).await? {
            return Ok(None);
        }
        let offset = self.go_offset(zone).await?;
        let mut survey = GoSurvey {
            offset_secs: offset,
            zone,
            writes: Vec::new(),
            ahead: Vec::new(),
            adoptable: Vec::new(),
        };
        for (table, value) in CREDENTIAL_TABLES {
            if !manager.has_column(table, "expire_date").await? {
                continue;
            }
            // The Go server's now(), in its zone, as the database sees it.
            let go_now = format!("TIMESTAMPADD(SECOND, {offset}, UTC_TIMESTAMP())");
            let age = format!(
                "TIMESTAMPDIFF(SECOND, DATE_SUB(expire_date, INTERVAL expire SECOND), {go_now})"
            );
            let pending = if manager.has_column(table, "expires_at").await? {
                "expires_at IS NULL"
            } else {
                "TRUE"
            };
            let rows = RecentRow::find_by_statement(Statement::from_string(
                DbBackend::MySql,
                format!(
                    "SELECT CAST(appid AS CHAR) AS appid, CAST({age} AS SIGNED) AS seconds_ago, \
                     CAST({pending} AS SIGNED) AS pending \
                     FROM {table} WHERE expire_date > '{GO_NEVER}' \
                     AND ({age} < {GO_WRITE_WINDOW_SECS}) ORDER BY appid"
                ),
            ))
            .all(self.connection())
            .await?;
            for row in rows {
                let write = GoWrite {
                    table,
                    appid: row.appid,
                    seconds_ago: row.seconds_ago,
                };
                let pending = row.pending != 0;
                if write.seconds_ago >= -CLOCK_SLACK_SECS {
                    survey.writes.push(write);
                } else if pending {
                    survey.ahead.push(write);
                }
            }
            // Before migration 000007 there is no expires_at: every stored value is to adopt.
            let unadopted = if pending == "TRUE" {
                String::new()
            } else {
                format!("expires_at IS NULL AND {value} IS NOT NULL AND ")
            };
            let row = AdoptableRow::find_by_statement(Statement::from_string(
                DbBackend::MySql,
                format!(
                    "SELECT CAST(COALESCE(SUM(expire_date > {go_now}), 0) AS SIGNED) AS live, \
                     CAST(COALESCE(SUM(expire_date <= {go_now}), 0) AS SIGNED) AS expired \
                     FROM {table} WHERE {unadopted}{value} <> '' \
                     AND expire_date > '{GO_NEVER}'"
                ),
            ))
            .one(self.connection())
            .await?;
            survey
                .adoptable
                .push((table, row.map(Adoptable::from).unwrap_or_default()));
        }
        Ok(Some(survey))
    }

    /// Gives every stored Go credential without a wetoken expiry the expiry its `expire_date`
    /// says, read in the survey's zone. Returns how many it adopted. Idempotent.
    pub(crate) async fn adopt_go_credentials(&self, survey: &GoSurvey) -> Result<u64, Error> {
        let offset = survey.offset_secs;
        let mut adopted = 0;
        for (table, value) in CREDENTIAL_TABLES {
            // The session's zone is UTC (sqlx sets it), so a DATETIME in UTC stored into a
            // TIMESTAMP column is the right instant.
            let done = self
                .connection()
                .execute_raw(Statement::from_string(
                    DbBackend::MySql,
                    format!(
                        "UPDATE {table} SET expires_at = TIMESTAMPADD(SECOND, {neg}, expire_date) \
                         WHERE expires_at IS NULL AND {value} IS NOT NULL AND {value} <> '' \
                         AND expire_date > '{GO_NEVER}'",
                        neg = -offset
                    ),
                ))
                .await?;
            adopted += done.rows_affected();
        }
        Ok(adopted)
    }
}

/// What the MySQL server says of its time zone.
#[derive(FromQueryResult)]
struct ZoneRow {
    /// Its offset from UTC now, in seconds; NULL when its time zone tables are not loaded.
    offset_secs: Option<i64>,
    /// `@@global.time_zone`: `SYSTEM`, `+08:00`, a zone name.
    zone_name: String,
}

/// A Go row issued lately.
#[derive(FromQueryResult)]
struct RecentRow {
    appid: String,
    /// How long ago it was issued (negative: in the future), read in the Go zone.
    seconds_ago: i64,
    /// 1 when wetoken has not adopted it yet.
    pending: i64,
}

/// How many stored Go credentials are still to adopt, live and expired.
#[derive(FromQueryResult)]
struct AdoptableRow {
    live: i64,
    expired: i64,
}

impl From<AdoptableRow> for Adoptable {
    fn from(row: AdoptableRow) -> Self {
        Adoptable {
            live: row.live.max(0) as u64,
            expired: row.expired.max(0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse() {
        assert_eq!(GoZone::parse("database").unwrap(), GoZone::Database);
        assert_eq!(GoZone::parse("UTC").unwrap(), GoZone::Fixed(0));
        assert_eq!(GoZone::parse("+08:00").unwrap(), GoZone::Fixed(8 * 3600));
        assert_eq!(
            GoZone::parse("-03:30").unwrap(),
            GoZone::Fixed(-(3 * 3600 + 1800))
        );
        assert_eq!(GoZone::parse("+8").unwrap(), GoZone::Fixed(8 * 3600));
        for bad in ["", "Asia/Shanghai", "+25:00", "08:00", "+08:61", "+x"] {
            assert!(GoZone::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(GoZone::Fixed(8 * 3600).to_string(), "+08:00");
        assert_eq!(GoZone::Fixed(-1800).to_string(), "-00:30");
    }
}
