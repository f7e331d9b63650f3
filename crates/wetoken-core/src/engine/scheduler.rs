//! The scheduler: renews every app's credentials ahead of expiry, paced and with bounded
//! concurrency, through the same slots and lease as requests.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeDelta;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Engine;
use super::slot::{Need, Slot, Why};
use crate::Error;
use crate::model::{AppId, Kind};
use crate::store::Checked;

impl Engine {
    /// How many scans the scheduler has finished in this process, whether or not they found
    /// anything due or could reach the database. A number that stops growing means a stuck
    /// scheduler. A scan counts as finished once it has taken up every credential it found due,
    /// paced: the last `concurrency` of them may still be waiting their turn or running.
    pub fn sweeps(&self) -> u64 {
        self.inner.sweeps.load(Ordering::Acquire)
    }

    /// Renews every app's credentials ahead of expiry until `shutdown` resolves.
    ///
    /// Every `scan_interval_ms` it asks the database which credentials are missing or near their
    /// renewal point, and refreshes those with at most `concurrency` at once, starting at most
    /// `max_refresh_rate` a second. Each app's renewal
    /// point is `refresh_ahead_secs` plus a share of `jitter_secs` fixed by its appid, so refreshes
    /// spread out. Failures are recorded and backed off; the loop itself never stops on one.
    /// Refreshes under way when `shutdown` resolves are finished, so no fetched value is lost.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        self.run_scheduler_for(None, shutdown).await;
    }

    /// As [`Engine::run_scheduler`], renewing and checking only the credentials of the apps in
    /// `only` (`None`: every app): a service that embeds the engine for its own apps leaves the
    /// others in the database to whoever serves them. The filter is in the scan's query, so the
    /// other apps cost nothing.
    pub async fn run_scheduler_for(
        &self,
        only: Option<&[AppId]>,
        shutdown: impl Future<Output = ()>,
    ) {
        let semaphore = Arc::new(Semaphore::new(self.inner.config.concurrency));
        let mut running = JoinSet::new();
        let interval = Duration::from_millis(self.inner.config.scan_interval_ms);
        let pace = Arc::new(Pace::new(self.inner.config.max_refresh_rate));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = self.sweep(only, &semaphore, &pace, &mut running) => {}
            }
            self.inner.sweeps.fetch_add(1, Ordering::Release);
            metrics::counter!("wetoken_scheduler_sweeps_total").increment(1);
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        // Renewals under way finish, so that no fetched value is lost; those still waiting their
        // turn are not started.
        pace.stop();
        while running.join_next().await.is_some() {}
        debug!("scheduler stopped");
    }

    pub(super) async fn sweep(
        &self,
        only: Option<&[AppId]>,
        semaphore: &Arc<Semaphore>,
        pace: &Arc<Pace>,
        running: &mut JoinSet<()>,
    ) {
        let config = &self.inner.config;
        let kinds: &[Kind] = if config.refresh_tickets {
            &Kind::ALL
        } else {
            &[Kind::AccessToken]
        };
        for &kind in kinds {
            let now = self.now();
            let due = match self.inner.store.due(kind, now, DUE_PER_SCAN, only).await {
                Ok(due) => due,
                Err(e) => {
                    warn!(%kind, error = %e.chain(), "scheduler could not list due credentials");
                    return;
                }
            };
            // Every replica scans the same rows in the same order. Each walks them from a point
            // of its own, so that replicas renew different credentials at once rather than
            // queue on each other's leases. What callers may already miss (nothing stored, or
            // less than the margin left) still comes first.
            let margin = config.margin();
            let (mut urgent, mut rest): (Vec<_>, Vec<_>) = due
                .into_iter()
                .partition(|d| d.expires_at.is_none_or(|at| at - now <= margin));
            rotate_randomly(&mut urgent);
            rotate_randomly(&mut rest);
            urgent.append(&mut rest);
            for crate::store::Due {
                appid,
                expires_at,
                renew_at,
                token_mode,
            } in urgent
            {
                let threshold = config.renew_ahead(&appid, kind, token_mode);
                if let Some(expires_at) = expires_at
                    && expires_at - now > threshold
                {
                    // Not due by these settings: a value wetoken never dated (imported, adopted
                    // from the Go wetoken) or dated under other settings. Date it, once.
                    let at = expires_at - threshold;
                    if renew_at != Some(at)
                        && let Err(e) = self.inner.store.date_renewal(&appid, kind, at).await
                    {
                        debug!(%appid, %kind, error = %e.chain(), "could not date a renewal");
                    }
                    continue;
                }
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    return;
                };
                let (engine, pace) = (self.clone(), pace.clone());
                running.spawn(async move {
                    let slot = engine.slot(&appid, kind);
                    let need = Need::Ahead(threshold, Some(pace));
                    // Renewed, or being renewed, by another replica since the scan: one read, and
                    // none of the pace spent, which is what lets replicas add up. Otherwise the
                    // fill takes the lease at once, and its turn of the pace under it.
                    if !engine.renewed_elsewhere(&appid, kind, &slot, &need).await
                        && let Err(e) = engine.fill(&appid, kind, &slot, need).await
                    {
                        debug!(%appid, %kind, error = %e.chain(), "scheduled refresh failed");
                    }
                    drop(permit);
                });
            }
        }
        self.check_sweep(only, semaphore, running).await;
    }
}

/// The most renewals of one kind one scan starts; the rest wait for the next scan.
const DUE_PER_SCAN: u64 = 10_000;

/// What spaces a scheduler's renewals `max_refresh_rate` a second apart, shared by its tasks: a
/// renewal takes its turn under the lease, just before it calls WeChat
/// (`Engine::refresh_under_lease`). Once the scheduler stops, no turn is given.
#[derive(Debug)]
pub(crate) struct Pace {
    interval: tokio::sync::Mutex<tokio::time::Interval>,
    stopped: tokio::sync::watch::Sender<bool>,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pace {
            interval: tokio::sync::Mutex::new(interval),
            stopped: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Waits for the next turn; `false` once the scheduler stops.
    pub(super) async fn turn(&self) -> bool {
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stopped| *stopped) => false,
            () = async { self.interval.lock().await.tick().await; } => !*self.stopped.borrow(),
        }
    }

    fn stop(&self) {
        self.stopped.send_replace(true);
    }
}

/// Turns `list` so that it starts at a random element.
fn rotate_randomly<T>(list: &mut [T]) {
    if list.len() > 1 {
        let start = rand::rng().random_range(0..list.len());
        list.rotate_left(start);
    }
}

impl Engine {
    /// Whether the stored row shows `kind` of `appid` renewed since the scan (it meets `need`),
    /// leased by a refresh under way, or stopped (halted, or backing off after a failure another
    /// replica recorded). A failed read says no: the fill finds out.
    async fn renewed_elsewhere(&self, appid: &AppId, kind: Kind, slot: &Slot, need: &Need) -> bool {
        let Ok(Some(record)) = self.inner.store.credential(appid, kind).await else {
            return false;
        };
        let now = self.now();
        record.leased
            || super::refresh::stopped(appid, kind, &record, now).is_some()
            || record
                .credential
                .as_ref()
                .is_some_and(|c| self.satisfies(slot, c, now, need))
    }
}

/// The most out-of-band checks one scan starts; the rest wait for the next scan.
const CHECKS_PER_SCAN: u64 = 1000;

impl Engine {
    /// Starts the out-of-band checks that are due: each app's stored access token is shown to
    /// WeChat every `verify_interval_secs` (or the app's own `verify_secs`), so that a token
    /// replaced outside wetoken is renewed without waiting for a caller to report it.
    async fn check_sweep(
        &self,
        only: Option<&[AppId]>,
        semaphore: &Arc<Semaphore>,
        running: &mut JoinSet<()>,
    ) {
        let config = &self.inner.config;
        let now = self.now();
        let horizon =
            now + TimeDelta::seconds((config.refresh_ahead_secs + config.jitter_secs) as i64);
        let due = match self
            .inner
            .store
            .checks_due(now, horizon, CHECKS_PER_SCAN, only)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e.chain(), "scheduler could not list due token checks");
                return;
            }
        };
        for appid in due {
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                return;
            };
            let engine = self.clone();
            running.spawn(async move {
                if let Err(e) = engine.check_out_of_band(&appid).await {
                    debug!(%appid, error = %e.chain(), "out-of-band check failed");
                }
                drop(permit);
            });
        }
    }

    /// One out-of-band check of `appid`'s access token, under its lease; renews the token at
    /// once if WeChat no longer accepts it.
    pub(super) async fn check_out_of_band(&self, appid: &AppId) -> Result<(), Error> {
        let kind = Kind::AccessToken;
        let store = &self.inner.store;
        let slot = self.slot(appid, kind);
        let _flight = slot.flight.lock().await;
        let Some(app) = store.app(appid).await? else {
            return Ok(());
        };
        let now = self.now();
        let owner = format!(
            "{}#{}",
            self.inner.replica,
            self.inner.leases.fetch_add(1, Ordering::Relaxed)
        );
        let ttl = Duration::from_millis(self.inner.config.lease_ms);
        if !store.try_lease(appid, kind, &owner, ttl, now).await? {
            // Another replica is refreshing or checking it.
            return Ok(());
        }
        let release = || async {
            if let Err(e) = store.release_lease(appid, kind, &owner).await {
                warn!(%appid, error = %e.chain(), "could not release the lease; it lapses by itself");
            }
        };
        let record = match store.credential(appid, kind).await {
            Ok(Some(r)) if !r.halted => r,
            Ok(_) => {
                release().await;
                return Ok(());
            }
            Err(e) => {
                release().await;
                return Err(e);
            }
        };
        let interval = self.inner.config.verify_interval(app.info.verify_secs);
        let Some(current) = record.credential.clone() else {
            release().await;
            return Ok(());
        };
        let recently = |i: TimeDelta| record.check.is_some_and(|c| now - c.at < i / 2);
        let next_due = interval.map(|i| now + i);
        let skip = match interval {
            // Turned off since it was scheduled: unschedule it.
            None => true,
            // Checked meanwhile (a report, another replica): that check rescheduled it.
            Some(i) => recently(i),
        };
        let check = |errcode, next_due, replaced| Checked {
            version: record.version,
            errcode,
            next_due,
            replaced,
        };
        if skip {
            let keep = if interval.is_some() { next_due } else { None };
            store
                .record_check(appid, kind, &owner, check(None, keep, false), now, true)
                .await?;
            return Ok(());
        }
        match self.ask_wechat(&app, &current.value).await {
            Ok(()) => {
                store
                    .record_check(
                        appid,
                        kind,
                        &owner,
                        check(Some(0), next_due, false),
                        now,
                        true,
                    )
                    .await
            }
            Err(e) if e.is_token_rejected() => {
                metrics::counter!("wetoken_out_of_band_replacements_total").increment(1);
                warn!(
                    %appid,
                    errcode = e.errcode(),
                    errmsg = e.errmsg(),
                    expires_at = %current.expires_at,
                    "WeChat no longer accepts the stored token, which had life left: it was \
                     replaced outside wetoken (another program with the app's secret, or the \
                     admin console; a leaked secret?). Renewing it now"
                );
                if let Err(db) = store
                    .record_check(
                        appid,
                        kind,
                        &owner,
                        check(e.errcode(), None, true),
                        now,
                        false,
                    )
                    .await
                {
                    warn!(error = %db.chain(), "could not count the replacement");
                }
                let need = Need::replace(&current.value, Why::Rejected);
                self.refresh_under_lease(app, kind, &slot, &need, &owner)
                    .await
                    .map(drop)
            }
            Err(e) => {
                debug!(%appid, error = %e, "out-of-band check got no answer; trying again later");
                store
                    .record_check(appid, kind, &owner, check(None, next_due, false), now, true)
                    .await
            }
        }
    }
}
