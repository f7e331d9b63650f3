//! The engine's settings: [`EngineConfig`], the checks that they make sense together, and what is
//! derived from them (the backoff after a failure, each app's renewal point), with WeChat's own
//! limits on stable tokens.

use std::hash::{DefaultHasher, Hash, Hasher};

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::model::{AppId, Kind, TokenMode};

/// How the engine refreshes. Every field has a default; durations are in seconds unless named
/// otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// A credential with less life than this left is never handed out.
    pub margin_secs: u64,
    /// The scheduler renews a credential once it has less than this left (plus the app's jitter).
    pub refresh_ahead_secs: u64,
    /// Each app's renewal point is moved earlier by a fixed share of this, so that apps added
    /// together do not refresh together.
    pub jitter_secs: u64,
    /// How often the scheduler looks for credentials to renew, in milliseconds.
    pub scan_interval_ms: u64,
    /// The most refreshes the scheduler runs at once.
    pub concurrency: usize,
    /// The most refreshes the scheduler starts per second, so that many apps coming due together
    /// (a cold start with 10,000 apps) reach WeChat as a steady trickle, not a burst.
    pub max_refresh_rate: u32,
    /// The first wait after a failed refresh; it doubles with each failure.
    pub backoff_base_secs: u64,
    /// The longest wait between failed refreshes, and the wait after a quota error.
    pub backoff_max_secs: u64,
    /// Whether the scheduler also renews jsapi tickets (otherwise they are fetched on demand).
    pub refresh_tickets: bool,
    /// The most calls to WeChat this process makes at once, requests and scheduler together.
    pub max_upstream_concurrency: usize,
    /// How long a replica's refresh lease lasts, in milliseconds. It must outlast a refresh
    /// (a WeChat call and a database write); a holder that dies loses it after this long.
    pub lease_ms: u64,
    /// How often a replica waiting on another's lease looks for the result, in milliseconds.
    pub lease_poll_ms: u64,
    /// How stale a cached credential may be, in milliseconds: the change feed is read every half
    /// of this, so that a refresh by another replica is picked up within it.
    pub cache_check_ms: u64,
    /// While the database cannot be reached, a cached credential is served for at most this long
    /// after its last successful check. Keep it under WeChat's five-minute overlap.
    pub cache_trust_secs: u64,
    /// How long WeChat's answer about a stored access token settles callers' reports of it: a
    /// report of a token WeChat accepted less than this long ago is answered with that token,
    /// with no call to WeChat at all. After that the next report asks WeChat again (one call,
    /// shared by every replica through the database).
    pub report_check_secs: u64,
    /// A reported ticket (which WeChat offers no way to check) is replaced only once its last
    /// refresh is at least this old.
    pub ticket_report_min_age_secs: u64,
    /// Token fetches of each app's daily budget kept for scheduled renewals: passive and forced
    /// refreshes stop at `daily_budget` less this (less at most half the budget, for apps with
    /// small budgets).
    pub budget_reserve: u32,
    /// How often each app's stored access token is checked with WeChat, so that a token
    /// replaced outside wetoken is renewed without waiting for a caller to report it. An app's
    /// own `verify_secs` overrides it; 0 turns the check off.
    pub verify_interval_secs: u64,
    /// The share of a day's 20 forced stable tokens that one reporter (a consumer key, or an
    /// address while no keys exist) may cause, in percent.
    pub stable_share_percent: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            margin_secs: 300,
            refresh_ahead_secs: 1200,
            jitter_secs: 300,
            scan_interval_ms: 15_000,
            concurrency: 4,
            max_refresh_rate: 20,
            backoff_base_secs: 2,
            backoff_max_secs: 300,
            refresh_tickets: true,
            max_upstream_concurrency: 16,
            lease_ms: 30_000,
            lease_poll_ms: 100,
            cache_check_ms: 1_000,
            cache_trust_secs: 240,
            report_check_secs: 30,
            ticket_report_min_age_secs: 60,
            budget_reserve: 100,
            verify_interval_secs: 600,
            stable_share_percent: 50,
        }
    }
}

/// WeChat keeps a superseded token working this long.
pub(super) const WECHAT_OVERLAP_SECS: u64 = 300;

/// A stable token is served until this long before it expires.
pub(super) const STABLE_MARGIN_SECS: i64 = 60;

/// The scheduler renews a stable token this long before it expires: inside WeChat's last five
/// minutes, the only time a normal stable-token call issues a new one.
pub(super) const STABLE_RENEW_SECS: i64 = 240;

/// WeChat allows this many forced stable tokens a day ...
pub(super) const FORCES_PER_DAY: i32 = 20;
/// ... this far apart.
pub(super) const FORCE_SPACING_SECS: i64 = 30;

impl EngineConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidInput(format!("refresh settings: {m}")));
        if self.margin_secs >= 7200 {
            return bad("margin_secs must be below WeChat's 7200 s lifetime");
        }
        if self.refresh_ahead_secs <= self.margin_secs {
            return bad(
                "refresh_ahead_secs must exceed margin_secs, or callers would wait on WeChat",
            );
        }
        if self.refresh_ahead_secs + self.jitter_secs >= 7200 {
            return bad("refresh_ahead_secs + jitter_secs must be below 7200 s");
        }
        if self.concurrency == 0
            || self.scan_interval_ms == 0
            || self.max_refresh_rate == 0
            || self.max_upstream_concurrency == 0
        {
            return bad(
                "concurrency, scan_interval_ms, max_refresh_rate and max_upstream_concurrency must be positive",
            );
        }
        if self.backoff_base_secs == 0 || self.backoff_max_secs < self.backoff_base_secs {
            return bad("need 0 < backoff_base_secs <= backoff_max_secs");
        }
        if self.lease_ms < 1000 || self.lease_poll_ms == 0 || self.lease_poll_ms >= self.lease_ms {
            return bad("need lease_ms >= 1000 and 0 < lease_poll_ms < lease_ms");
        }
        if self.cache_check_ms == 0 || self.cache_check_ms >= self.cache_trust_secs * 1000 {
            return bad("need 0 < cache_check_ms < cache_trust_secs * 1000");
        }
        if self.cache_trust_secs >= WECHAT_OVERLAP_SECS {
            return bad("cache_trust_secs must be below WeChat's 300 s overlap");
        }
        if self.report_check_secs == 0 || self.report_check_secs > 3600 {
            return bad(
                "report_check_secs must be from 1 to 3600 (every report would otherwise ask WeChat, or a rejection would go unheard for hours)",
            );
        }
        if self.ticket_report_min_age_secs > 7200 {
            return bad("ticket_report_min_age_secs must be at most 7200, a ticket's lifetime");
        }
        if self.verify_interval_secs > 86_400 {
            return bad("verify_interval_secs must be at most 86400 (0 turns the check off)");
        }
        if !(1..=100).contains(&self.stable_share_percent) {
            return bad("stable_share_percent must be from 1 to 100");
        }
        Ok(())
    }

    /// The daily budget's limit for passive and forced refreshes: the budget less the reserve,
    /// and never less than half the budget.
    pub(super) fn on_demand_limit(&self, budget: i32) -> i32 {
        let reserve = i32::try_from(self.budget_reserve).unwrap_or(i32::MAX);
        budget - reserve.min(budget / 2)
    }

    /// How many of a day's forced stable tokens one reporter may cause (at least one).
    pub(super) fn stable_share(&self) -> i32 {
        ((FORCES_PER_DAY as u32 * self.stable_share_percent).div_ceil(100)).max(1) as i32
    }

    /// The out-of-band check interval of an app whose own setting is `verify_secs`; `None`
    /// when the check is off.
    pub(super) fn verify_interval(&self, verify_secs: Option<i32>) -> Option<TimeDelta> {
        let secs = verify_secs.map_or(self.verify_interval_secs as i64, i64::from);
        (secs > 0).then(|| TimeDelta::seconds(secs))
    }

    pub(super) fn margin(&self) -> TimeDelta {
        TimeDelta::seconds(self.margin_secs as i64)
    }

    /// The wait after the `failures`-th failure in a row: `backoff_base_secs · 2^(failures-1)`,
    /// capped at `backoff_max_secs` (a quota error waits the cap at once), times `factor`, which
    /// callers draw from [½, 1] so that processes failing together do not retry together.
    pub(super) fn backoff(&self, failures: u32, quota: bool, factor: f64) -> TimeDelta {
        let max = self.backoff_max_secs as f64;
        let raw = if quota {
            max
        } else {
            let exp = failures.saturating_sub(1).min(30);
            (self.backoff_base_secs as f64 * f64::from(1u32 << exp)).min(max)
        };
        TimeDelta::milliseconds((raw * factor * 1000.0) as i64)
    }

    /// How long before expiry the scheduler renews this credential: a stable token in WeChat's
    /// last five minutes ([`STABLE_RENEW_SECS`]), anything else at [`Self::renew_threshold`].
    pub(super) fn renew_ahead(&self, appid: &AppId, kind: Kind, mode: TokenMode) -> TimeDelta {
        if kind == Kind::AccessToken && mode == TokenMode::Stable {
            TimeDelta::seconds(STABLE_RENEW_SECS)
        } else {
            self.renew_threshold(appid, kind)
        }
    }

    /// When the scheduler should renew this app's credential: `refresh_ahead` plus a share of the
    /// jitter window fixed by the appid, so the same app always renews at the same point.
    pub(super) fn renew_threshold(&self, appid: &AppId, kind: Kind) -> TimeDelta {
        let mut h = DefaultHasher::new();
        (appid.as_str(), kind.index()).hash(&mut h);
        let jitter = if self.jitter_secs == 0 {
            0
        } else {
            h.finish() % self.jitter_secs
        };
        TimeDelta::seconds((self.refresh_ahead_secs + jitter) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = EngineConfig {
            backoff_base_secs: 2,
            backoff_max_secs: 60,
            ..EngineConfig::default()
        };
        let secs = |n, quota| config.backoff(n, quota, 1.0).num_seconds();
        assert_eq!(
            [
                secs(1, false),
                secs(2, false),
                secs(3, false),
                secs(5, false)
            ],
            [2, 4, 8, 32]
        );
        assert_eq!(secs(6, false), 60);
        assert_eq!(secs(u32::MAX, false), 60);
        assert_eq!(secs(1, true), 60, "quota errors wait the cap at once");
        assert_eq!(config.backoff(1, false, 0.5).num_milliseconds(), 1000);
    }

    #[test]
    fn renewal_points_spread_over_the_jitter_window_and_stay_put() {
        let config = EngineConfig::default();
        let points: Vec<i64> = (0..1000)
            .map(|i| {
                let appid = AppId::parse(&format!("wx{i:016x}")).unwrap();
                let t = config
                    .renew_threshold(&appid, Kind::AccessToken)
                    .num_seconds();
                assert_eq!(
                    t,
                    config
                        .renew_threshold(&appid, Kind::AccessToken)
                        .num_seconds()
                );
                t
            })
            .collect();
        let ahead = config.refresh_ahead_secs as i64;
        let jitter = config.jitter_secs as i64;
        assert!(points.iter().all(|t| (ahead..ahead + jitter).contains(t)));
        // Spread: every tenth of the window holds some apps, none holds more than a fifth.
        for decile in 0..10 {
            let lo = ahead + decile * jitter / 10;
            let hi = lo + jitter / 10;
            let n = points.iter().filter(|t| (lo..hi).contains(*t)).count();
            assert!((30..200).contains(&n), "decile {decile}: {n} apps");
        }
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad = [
            EngineConfig {
                margin_secs: 7200,
                ..EngineConfig::default()
            },
            EngineConfig {
                refresh_ahead_secs: 300,
                ..EngineConfig::default()
            },
            EngineConfig {
                refresh_ahead_secs: 7000,
                ..EngineConfig::default()
            },
            EngineConfig {
                concurrency: 0,
                ..EngineConfig::default()
            },
            EngineConfig {
                backoff_base_secs: 10,
                backoff_max_secs: 5,
                ..EngineConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        EngineConfig::default().validate().unwrap();
    }
}
