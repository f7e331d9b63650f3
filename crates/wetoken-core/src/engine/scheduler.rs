//! The scheduler: renews every app's credentials ahead of expiry, paced and with bounded
//! concurrency, through the same slots and lease as requests.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Engine;
use super::config::STABLE_RENEW_SECS;
use super::slot::Need;
use crate::model::{Kind, TokenMode};

impl Engine {
    /// How many scans the scheduler has finished in this process, whether or not they found
    /// anything due or could reach the database. A number that stops growing means a stuck
    /// scheduler. A scan counts as finished once it has started every refresh it found due; those
    /// refreshes may still be running.
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
        let semaphore = Arc::new(Semaphore::new(self.inner.config.concurrency));
        let mut running = JoinSet::new();
        let interval = Duration::from_millis(self.inner.config.scan_interval_ms);
        let mut pace = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(self.inner.config.max_refresh_rate),
        ));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = self.sweep(&semaphore, &mut pace, &mut running) => {}
            }
            self.inner.sweeps.fetch_add(1, Ordering::Release);
            metrics::counter!("wetoken_scheduler_sweeps_total").increment(1);
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        while running.join_next().await.is_some() {}
        debug!("scheduler stopped");
    }

    pub(super) async fn sweep(
        &self,
        semaphore: &Arc<Semaphore>,
        pace: &mut tokio::time::Interval,
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
            let horizon =
                now + TimeDelta::seconds((config.refresh_ahead_secs + config.jitter_secs) as i64);
            let due = match self.inner.store.due(kind, horizon).await {
                Ok(due) => due,
                Err(e) => {
                    warn!(%kind, error = %e.chain(), "scheduler could not list due credentials");
                    return;
                }
            };
            for crate::store::Due {
                appid,
                expires_at,
                token_mode,
            } in due
            {
                let threshold = if kind == Kind::AccessToken && token_mode == TokenMode::Stable {
                    TimeDelta::seconds(STABLE_RENEW_SECS)
                } else {
                    config.renew_threshold(&appid, kind)
                };
                if expires_at.is_some_and(|at| at - now > threshold) {
                    continue;
                }
                pace.tick().await;
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    return;
                };
                let engine = self.clone();
                running.spawn(async move {
                    let slot = engine.slot(&appid, kind);
                    if let Err(e) = engine
                        .fill(&appid, kind, &slot, Need::Ahead(threshold))
                        .await
                    {
                        debug!(%appid, %kind, error = %e.chain(), "scheduled refresh failed");
                    }
                    drop(permit);
                });
            }
        }
    }
}
