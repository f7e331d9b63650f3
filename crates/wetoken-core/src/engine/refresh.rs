//! The slow path and the lease: under a slot's lock, look in memory, then the database, then take
//! the credential's refresh lease, fetch, store fenced on the lease and the version read, and give
//! the lease back; record a failure with its backoff, or a halt, for every replica to see.
//! `docs/ARCHITECTURE.md` ("The lease") is the reasoning.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tracing::{Instrument, debug, info, warn};

use super::Engine;
use super::config::{FORCE_SPACING_SECS, FORCES_PER_DAY};
use super::guard::{Declined, OVER_BUDGET_ERRCODE};
use super::open::NO_VERIFY_TICKET_ERRCODE;
use super::slot::{Need, Seen, Slot, Why};
use super::upstream::FetchError;
use crate::Error;
use crate::model::{App, AppId, AppKind, Credential, CredentialRecord, Kind, TokenMode};
use crate::store::{
    Checked, Dates, Failure, RefreshCause, RefreshOutcome, RefreshTokens, wechat_day,
    wechat_day_end,
};
use crate::wechat::UpstreamError;

pub(super) type BoxedResult<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Arc<Credential>, Error>> + Send + 'a>>;

/// The error a recorded failure stands for, as other replicas read it back: WeChat's refusal
/// when the row keeps WeChat's code, else the recorded outcome as an outage (WeChat unreachable,
/// or a row from before migration 000008, which kept no code).
fn recorded_error(record: &CredentialRecord) -> Error {
    match record.errcode {
        Some(OVER_BUDGET_ERRCODE) => Error::OverBudget(record.message.clone()),
        Some(NO_VERIFY_TICKET_ERRCODE) => Error::NoVerifyTicket(record.message.clone()),
        Some(errcode) if errcode != 0 => Error::Refused {
            errcode,
            // The message was written as `<errcode>: <errmsg>` (`UpstreamError::message`).
            errmsg: record
                .message
                .strip_prefix(&format!("{errcode}: "))
                .unwrap_or(&record.message)
                .to_owned(),
        },
        _ => Error::Unavailable(record.message.clone()),
    }
}

/// Why `record` may not be fetched at `now`, if it may not: halted, or waiting out a backoff.
pub(super) fn stopped(
    appid: &AppId,
    kind: Kind,
    record: &CredentialRecord,
    now: DateTime<Utc>,
) -> Option<Error> {
    if record.halted {
        return Some(Error::Halted {
            appid: appid.clone(),
            kind,
            errcode: record.errcode,
            message: record.message.clone(),
        });
    }
    if record.retry_at.is_some_and(|at| now < at) {
        debug!(%appid, %kind, "in backoff; not calling WeChat");
        return Some(recorded_error(record));
    }
    None
}

/// What a refresh task that did not finish stands for: a panic (a bug), or a cancellation, which
/// happens only while the runtime shuts down.
fn task_error(appid: &AppId, kind: Kind, e: tokio::task::JoinError) -> Error {
    if !e.is_panic() {
        return Error::Unavailable(format!(
            "the refresh of {kind} of {appid} was cancelled: the process is shutting down"
        ));
    }
    let payload = e.into_panic();
    let panic = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    Error::RefreshPanicked {
        appid: appid.clone(),
        kind,
        panic,
    }
}

impl Engine {
    /// A lease owner unique to one attempt: this replica's name and a counter.
    pub(super) fn lease_owner(&self) -> String {
        format!(
            "{}#{}",
            self.inner.replica,
            self.inner.leases.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The slow path. Under the slot's lock: memory, then the database, then the lease.
    ///
    /// Boxed as `dyn Send` because a ticket's refresh recurses into its token's.
    pub(super) fn fill<'a>(
        &'a self,
        appid: &'a AppId,
        kind: Kind,
        slot: &'a Arc<Slot>,
        need: Need,
    ) -> BoxedResult<'a> {
        Box::pin(self.fill_unboxed(appid, kind, slot, need))
    }

    pub(super) async fn fill_unboxed(
        &self,
        appid: &AppId,
        kind: Kind,
        slot: &Arc<Slot>,
        need: Need,
    ) -> Result<Arc<Credential>, Error> {
        let _flight = slot.flight.lock().await;
        let config = &self.inner.config;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(config.lease_ms)
            + Duration::from_secs(5);
        loop {
            let now = self.now();
            let seen = self.seen_now(now);
            let cached = slot.cached();
            if let Some(c) = &cached
                && self.satisfies(slot, c, now, &need)
                && self.unchecked_for(slot, now) < config.cache_check_ms as i64
            {
                return Ok(c.clone());
            }
            let record = match self.inner.store.credential(appid, kind).await {
                Ok(record) => record,
                Err(e) => {
                    // The database is away: what memory holds stays good for a while, since
                    // nobody can replace it without the database either.
                    if let Some(c) = cached
                        && self.satisfies(slot, &c, now, &need)
                        && self.unchecked_for(slot, now) < self.trust_ms()
                    {
                        return Ok(c);
                    }
                    return Err(e);
                }
            };
            let Some(app) = self.inner.store.app(appid).await? else {
                // Keep no slot for an appid nobody registered, or a flood of made-up appids would
                // grow the map without bound.
                self.forget(appid);
                return Err(Error::UnknownApp(appid.clone()));
            };
            if let (Some(_), Some(component)) = (app.info.revoked_at, &app.info.component) {
                self.forget(appid);
                return Err(Error::Revoked {
                    appid: appid.clone(),
                    component: component.clone(),
                });
            }
            if !app.info.kind.has(kind) {
                self.forget(appid);
                return Err(Error::InvalidInput(format!(
                    "{appid} is a {} app; WeChat issues no {kind} to those",
                    app.info.kind.as_str()
                )));
            }
            self.settle_margin(slot, &app, kind);
            let version = record.as_ref().map_or(0, |r| r.version);
            if let Some(c) = record.as_ref().and_then(|r| r.credential.as_ref())
                && self.satisfies(slot, c, now, &need)
            {
                let c = Arc::new(c.clone());
                slot.set(c.clone(), version, seen);
                return Ok(c);
            }
            // A report of the stored value that the database already answers: no lease, no
            // write, no call to WeChat.
            if let Need::Replace {
                failed,
                why: Why::Report(by),
            } = &need
                && let Some(r) = &record
                && let Some(c) = &r.credential
                && c.value == *failed
                && self.satisfies(slot, c, now, &Need::Serve)
                && let Some(declined) = self.settled(kind, r, now)
            {
                let c = Arc::new(c.clone());
                slot.set(c.clone(), version, seen);
                self.declined(appid, kind, slot, by, declined, now);
                return Ok(c);
            }
            if let Some(e) = record.as_ref().and_then(|r| stopped(appid, kind, r, now)) {
                return Err(e);
            }
            let owner = self.lease_owner();
            let ttl = Duration::from_millis(config.lease_ms);
            if self
                .inner
                .store
                .try_lease(appid, kind, &owner, ttl, now)
                .await?
            {
                metrics::counter!("wetoken_lease_acquired_total", "kind" => kind.name())
                    .increment(1);
                // The refresh runs in a task of its own: a caller that goes away must not strand
                // the lease or lose a value WeChat has already issued.
                let engine = self.clone();
                let slot = slot.clone();
                let need = need.clone();
                let span = tracing::info_span!("refresh", appid = %appid, kind = %kind);
                return tokio::spawn(
                    async move {
                        engine
                            .refresh_under_lease(app, kind, &slot, &need, &owner)
                            .await
                    }
                    .instrument(span),
                )
                .await
                .map_err(|e| task_error(appid, kind, e))?;
            }
            // A scheduled renewal that another replica is already making: that one stores it,
            // and this scheduler goes on to credentials nobody is renewing.
            if let Need::Ahead(..) = need {
                return Err(Error::Unavailable(format!(
                    "another replica is renewing {kind} of {appid}"
                )));
            }
            // Another replica (or another request here, through a different slot) holds the
            // lease: wait for its result in the database rather than calling WeChat.
            metrics::counter!("wetoken_lease_waits_total", "kind" => kind.name()).increment(1);
            let seen = record.as_ref().map(|r| (r.version, r.refresh_time));
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable(
                        "another replica is refreshing this credential and has not finished".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(config.lease_poll_ms)).await;
                let Some(r) = self.inner.store.credential(appid, kind).await? else {
                    break;
                };
                if Some((r.version, r.refresh_time)) != seen || !r.leased {
                    break;
                }
            }
        }
    }

    /// Holding the lease `owner`: look once more, fetch, store fenced, give the lease back.
    pub(super) async fn refresh_under_lease(
        &self,
        app: App,
        kind: Kind,
        slot: &Slot,
        need: &Need,
        owner: &str,
    ) -> Result<Arc<Credential>, Error> {
        let store = &self.inner.store;
        let appid = &app.info.appid;
        let cause = need.cause();
        let release = || async {
            if let Err(e) = store.release_lease(appid, kind, owner).await {
                warn!(%appid, %kind, error = %e.chain(), "could not release the lease; it lapses by itself");
            }
        };
        // The previous holder may have stored its result between our read and our lease.
        let seen = self.seen_now(self.now());
        let record = match store.credential(appid, kind).await {
            Ok(r) => r,
            Err(e) => {
                release().await;
                return Err(e);
            }
        };
        let now = self.now();
        let version = record.as_ref().map_or(0, |r| r.version);
        if let Some(c) = record.as_ref().and_then(|r| r.credential.as_ref())
            && self.satisfies(slot, c, now, need)
        {
            release().await;
            let c = Arc::new(c.clone());
            slot.set(c.clone(), version, seen);
            return Ok(c);
        }
        // The previous holder may have recorded a halt or a backoff after our read before the
        // lease: it stands for this replica too (else a replica racing the one WeChat refused
        // would call again at once, and its success would lift a halt WeChat meant).
        if let Some(e) = record.as_ref().and_then(|r| stopped(appid, kind, r, now)) {
            release().await;
            return Err(e);
        }
        // A scheduled renewal takes its turn of the scheduler's pace here, holding the lease, so
        // that other replicas' schedulers skip this credential meanwhile rather than spend their
        // own turns on it. A turn longer in coming than half the lease gives the credential up
        // to the next scan, before the lease could lapse under it.
        if let Need::Ahead(_, Some(pace)) = need {
            let wait = Duration::from_millis(self.inner.config.lease_ms / 2);
            if !tokio::time::timeout(wait, pace.turn())
                .await
                .unwrap_or(false)
            {
                release().await;
                return Err(Error::Unavailable(format!(
                    "no turn for {kind} of {appid}: the scheduler is stopping, or far behind its \
                     pace"
                )));
            }
        }
        // A component token answers none of the APIs a check calls: it is never checked.
        let check_due = self
            .inner
            .config
            .verify_interval(app.info.verify_secs)
            .filter(|_| app.info.kind != AppKind::Component)
            .map(|interval| now + interval);
        // A caller reports the stored value, and it still has life: ask WeChat before fetching.
        if let Need::Replace {
            failed,
            why: Why::Report(by),
        } = need
            && let Some(r) = &record
            && let Some(c) = &r.credential
            && c.value == *failed
            && self.satisfies(slot, c, now, &Need::Serve)
        {
            if let Some(declined) = self.settled(kind, r, now) {
                release().await;
                let c = Arc::new(c.clone());
                slot.set(c.clone(), version, seen);
                self.declined(appid, kind, slot, by, declined, now);
                return Ok(c);
            }
            let known_rejected = r
                .check
                .is_some_and(|check| !check.accepted() && self.fresh(&check, now));
            if kind == Kind::AccessToken && app.info.kind != AppKind::Component && !known_rejected {
                let answer = self.ask_wechat(&app, &c.value).await;
                let errcode = match &answer {
                    Ok(()) => Some(0),
                    Err(e) if e.is_token_rejected() => e.errcode(),
                    Err(_) => None,
                };
                if let Some(errcode) = errcode {
                    // Released now if WeChat accepts the token; kept for the fetch otherwise.
                    let accepted = errcode == 0;
                    let check = Checked {
                        version,
                        errcode: Some(errcode),
                        next_due: if accepted { check_due } else { None },
                        replaced: false,
                    };
                    if let Err(e) = store
                        .record_check(appid, kind, owner, check, self.now(), accepted)
                        .await
                    {
                        warn!(error = %e.chain(), "could not record WeChat's answer about the token");
                        if accepted {
                            release().await;
                        }
                    }
                }
                match answer {
                    Ok(()) => {
                        let c = Arc::new(c.clone());
                        slot.set(c.clone(), version, seen);
                        self.declined(appid, kind, slot, by, Declined::StillAccepted, now);
                        return Ok(c);
                    }
                    Err(e) if e.is_token_rejected() => {
                        info!(reporter = %by, errcode = e.errcode(), errmsg = e.errmsg(), "WeChat confirms the reported token is rejected; fetching a new one");
                    }
                    // Fail open: the budget's reserve still bounds what a broken check costs.
                    Err(e) => warn!(
                        reporter = %by, error = %e,
                        "could not ask WeChat whether the reported token works; fetching a new one"
                    ),
                }
            }
        }
        // A stable token reported bad while it is still the current one: only a forced refresh
        // replaces it, and WeChat allows 20 a day, 30 s apart; one reporter may cause only its
        // share of them.
        let current = record.as_ref().and_then(|r| r.credential.as_ref());
        let force = kind == Kind::AccessToken
            && app.info.kind != AppKind::Work
            && app.info.token_mode == TokenMode::Stable
            && matches!(need, Need::Replace { failed, .. } if current.is_some_and(|c| c.value == *failed));
        let reporter = match need {
            Need::Replace {
                why: Why::Report(by),
                ..
            } => Some(by),
            _ => None,
        };
        let mut forced_today = 0;
        if force {
            // WeChat's own limits first: they are what an operator needs to hear about.
            let allowed = match (self.force_allowed(appid, now).await, reporter) {
                (Ok(count), Some(by)) => self.share_allowed(appid, by, now).await.map(|()| count),
                (other, _) => other,
            };
            match allowed {
                Ok(count) => forced_today = count + 1,
                Err(e) => {
                    release().await;
                    return Err(e);
                }
            }
        }
        if kind == Kind::AccessToken
            && let Err(e) = self.claim_budget(&app, need, now).await
        {
            let message = e.to_string();
            if need.on_demand() {
                release().await;
            } else {
                // Nothing but a new WeChat day helps: no replica tries again before it.
                let failure = Failure {
                    message: &message,
                    errcode: Some(OVER_BUDGET_ERRCODE),
                    halted: false,
                    // Counted as a failure, so that an update of the app (a larger budget) lifts
                    // the wait.
                    failures: record.as_ref().map_or(0, |r| r.failures).saturating_add(1),
                    retry_at: Some(wechat_day_end(now)),
                };
                if let Err(db) = store
                    .record_failure(appid, kind, &failure, owner, now)
                    .await
                {
                    warn!(error = %db.chain(), "could not record the budget refusal");
                }
            }
            // Kept once the lease is given back, as every outcome.
            let refused = Err((Some(OVER_BUDGET_ERRCODE), message.as_str()));
            self.remember(appid, kind, cause, refused).await;
            return Err(e);
        }
        let started = self.now();
        let timer = std::time::Instant::now();
        let fetched = self.fetch(&app, kind, force).await;
        metrics::histogram!("wetoken_refresh_seconds", "kind" => kind.name())
            .record(timer.elapsed().as_secs_f64());
        if force && fetched.is_ok() {
            let day = wechat_day(started);
            if let Err(e) = store.record_force(appid, &day, forced_today, started).await {
                warn!(error = %e.chain(), "could not count a forced stable token");
            }
            if let Some(by) = reporter
                && let Err(e) = store.count_share(appid, &by.share_id(), &day).await
            {
                warn!(error = %e.chain(), "could not count a reporter's forced stable token");
            }
        }
        match fetched {
            Ok((issued, refresh_token)) => {
                metrics::gauge!(
                    "wetoken_refresh_last_success_timestamp_seconds",
                    "kind" => kind.name()
                )
                .set(started.timestamp() as f64);
                let credential = Arc::new(Credential {
                    value: issued.value,
                    expires_at: started + TimeDelta::seconds(issued.expires_in as i64),
                });
                let now = self.now();
                let mode = if app.info.kind == AppKind::Work {
                    TokenMode::Classic
                } else {
                    app.info.token_mode
                };
                let ahead = self.inner.config.renew_ahead(appid, kind, mode);
                let dates = Dates {
                    renew_at: Some(credential.expires_at - ahead),
                    check_due: if kind == Kind::AccessToken {
                        check_due
                    } else {
                        None
                    },
                };
                let saved = store
                    .save_credential(
                        appid,
                        kind,
                        &credential,
                        (owner, version),
                        now,
                        dates,
                        refresh_token.as_ref().map(|returned| RefreshTokens {
                            used: &app.secret,
                            returned,
                        }),
                    )
                    .await;
                // Kept once the value is stored and the lease given back: writing the history
                // holds up no other replica.
                self.remember(appid, kind, cause, Ok(())).await;
                match saved {
                    Ok(Some(seq)) => {
                        let written = Seen {
                            ms: now.timestamp_millis(),
                            seq,
                        };
                        slot.set(credential.clone(), version + 1, written);
                        info!(expires_at = %credential.expires_at, "refreshed");
                        Ok(credential)
                    }
                    Ok(None) => {
                        let seen = self.seen_now(now);
                        // Our lease lapsed and another replica stored a newer value: it wins.
                        warn!(
                            "lease lapsed during the refresh; a newer value is stored, keeping it"
                        );
                        let newer = store
                            .credential(appid, kind)
                            .await?
                            .and_then(|r| r.credential.map(|c| (c, r.version)));
                        match newer {
                            Some((c, v)) if self.satisfies(slot, &c, now, &Need::Serve) => {
                                let c = Arc::new(c);
                                slot.set(c.clone(), v, seen);
                                // The stored value is the cluster's from now on; but a passive
                                // refresh must not get back the value it reported: ours, just
                                // issued, is the newer one at WeChat then.
                                if self.satisfies(slot, &c, now, need) {
                                    Ok(c)
                                } else {
                                    Ok(credential)
                                }
                            }
                            _ => Ok(credential),
                        }
                    }
                    Err(e) => {
                        // Serve it even though it could not be stored: it is valid, and WeChat
                        // has already retired the previous one.
                        warn!(error = %e.chain(), "fetched a credential but could not store it");
                        slot.set(credential.clone(), version, self.seen_now(now));
                        release().await;
                        Ok(credential)
                    }
                }
            }
            Err(FetchError::Other(e)) => {
                release().await;
                Err(e)
            }
            Err(FetchError::Waiting(e)) => {
                let failures = record.as_ref().map_or(0, |r| r.failures).saturating_add(1);
                Err(self.waiting(appid, kind, owner, failures, cause, e).await)
            }
            Err(FetchError::Upstream(e)) => {
                let failures = record.as_ref().map_or(0, |r| r.failures).saturating_add(1);
                Err(self.failed(appid, kind, owner, failures, cause, e).await)
            }
        }
    }

    /// Records a fetch that had nothing to fetch with (no verify ticket), with a backoff, and
    /// gives the lease back; WeChat was not called.
    async fn waiting(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        failures: i32,
        cause: RefreshCause,
        e: Error,
    ) -> Error {
        let now = self.now();
        let factor = rand::rng().random_range(0.5..=1.0);
        let delay = self
            .inner
            .config
            .backoff(failures.max(1) as u32, false, factor);
        let message = e.to_string();
        let failure = Failure {
            message: &message,
            errcode: Some(NO_VERIFY_TICKET_ERRCODE),
            halted: false,
            failures,
            retry_at: Some(now + delay),
        };
        self.record_failed(appid, kind, owner, cause, &failure, now)
            .await;
        warn!(
            failures,
            retry_in_ms = delay.num_milliseconds(),
            "{message}"
        );
        e
    }

    /// Writes `failure` into the credential's row, which gives the lease back, and its history.
    async fn record_failed(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        cause: RefreshCause,
        failure: &Failure<'_>,
        now: DateTime<Utc>,
    ) {
        if let Err(db) = self
            .inner
            .store
            .record_failure(appid, kind, failure, owner, now)
            .await
        {
            warn!(error = %db.chain(), "could not record a failed refresh; the lease lapses by itself");
        }
        self.remember(appid, kind, cause, Err((failure.errcode, failure.message)))
            .await;
    }

    /// Records a failed fetch, with when any replica may try next, and gives the lease back.
    pub(super) async fn failed(
        &self,
        appid: &AppId,
        kind: Kind,
        owner: &str,
        failures: i32,
        cause: RefreshCause,
        e: UpstreamError,
    ) -> Error {
        let now = self.now();
        let halted = e.is_fatal();
        let factor = rand::rng().random_range(0.5..=1.0);
        let delay = self
            .inner
            .config
            .backoff(failures.max(1) as u32, e.is_quota(), factor);
        let message = e.message();
        let failure = Failure {
            message: &message,
            errcode: e.errcode(),
            halted,
            failures,
            retry_at: (!halted).then_some(now + delay),
        };
        self.record_failed(appid, kind, owner, cause, &failure, now)
            .await;
        match &e {
            UpstreamError::Refused { errcode, errmsg } if halted => {
                warn!(
                    errcode,
                    errmsg = errmsg.as_str(),
                    "WeChat refused for good; refreshing stops until the app's settings change"
                );
                Error::Halted {
                    appid: appid.clone(),
                    kind,
                    errcode: Some(*errcode),
                    message: format!("{errcode}: {errmsg}"),
                }
            }
            UpstreamError::Refused { errcode, errmsg } => {
                warn!(
                    errcode,
                    errmsg = errmsg.as_str(),
                    failures,
                    retry_in_ms = delay.num_milliseconds(),
                    "refresh refused"
                );
                Error::Refused {
                    errcode: *errcode,
                    errmsg: errmsg.clone(),
                }
            }
            other => {
                warn!(error = %other, failures, retry_in_ms = delay.num_milliseconds(), "refresh failed");
                Error::Unavailable(other.to_string())
            }
        }
    }

    /// Keeps a refresh outcome in the credential's history for the status page. Never fails the
    /// refresh: a history that cannot be written is logged and skipped.
    async fn remember(
        &self,
        appid: &AppId,
        kind: Kind,
        cause: RefreshCause,
        result: Result<(), (Option<i64>, &str)>,
    ) {
        let (ok, errcode, message) = match result {
            Ok(()) => (true, Some(0), "success"),
            Err((errcode, message)) => (false, errcode, message),
        };
        let outcome = RefreshOutcome {
            kind,
            at: self.now(),
            cause: Some(cause),
            ok,
            errcode,
            message: message.to_owned(),
            replica: self.inner.replica.clone(),
        };
        if let Err(e) = self.inner.store.record_outcome(appid, &outcome).await {
            warn!(error = %e.chain(), "could not keep the refresh outcome in its history; the refresh goes on");
        }
    }

    /// How many stable tokens `appid` forced today, if one more is within WeChat's limits.
    pub(super) async fn force_allowed(
        &self,
        appid: &AppId,
        now: DateTime<Utc>,
    ) -> Result<i32, Error> {
        let (count, last) = self.inner.store.forces(appid, &wechat_day(now)).await?;
        if count >= FORCES_PER_DAY {
            return Err(Error::ForceLimited(format!(
                "{appid}'s stable token was forced {count} times today and WeChat allows \
                 {FORCES_PER_DAY}; not calling WeChat"
            )));
        }
        if let Some(last) = last
            && now - last < TimeDelta::seconds(FORCE_SPACING_SECS)
        {
            return Err(Error::ForceLimited(format!(
                "{appid}'s stable token was forced {} s ago and WeChat allows one every \
                 {FORCE_SPACING_SECS} s; not calling WeChat",
                (now - last).num_seconds()
            )));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str, errcode: Option<i64>) -> CredentialRecord {
        CredentialRecord {
            credential: None,
            message: message.into(),
            errcode,
            halted: false,
            refresh_time: None,
            version: 1,
            failures: 1,
            retry_at: None,
            renew_at: None,
            leased: false,
            check: None,
            replaced: 0,
        }
    }

    #[test]
    fn a_recorded_failure_reads_back_by_its_errcode() {
        match recorded_error(&record(
            "45009: reach max api daily quota limit",
            Some(45009),
        )) {
            Error::Refused { errcode, errmsg } => {
                assert_eq!(
                    (errcode, errmsg.as_str()),
                    (45009, "reach max api daily quota limit")
                );
            }
            other => panic!("{other:?}"),
        }
        // No WeChat answer behind it, or a row from before migration 000008: the message as is.
        for (message, errcode) in [
            ("WeChat unreachable: timed out", None),
            ("45009: reach max api daily quota limit", None),
        ] {
            match recorded_error(&record(message, errcode)) {
                Error::Unavailable(m) => assert_eq!(m, message),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A scheduled renewal that finds another replica holding the lease leaves it to that one at
    /// once; a request waits for the holder's result.
    #[tokio::test]
    async fn a_scheduled_renewal_does_not_wait_for_another_replicas_lease() {
        use crate::{
            Clock, DatabaseOptions, ManualClock, NewApp, Secret, Store, WeChat, WeChatOptions,
        };
        let store = Store::connect(&DatabaseOptions::new("sqlite::memory:"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        // Nobody answers there: the test fails if either path calls WeChat.
        let wechat = WeChat::new(&WeChatOptions {
            base_url: "http://127.0.0.1:9".into(),
            fallback_urls: Vec::new(),
            ..WeChatOptions::default()
        })
        .unwrap();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let engine = Engine::new(
            store,
            wechat,
            clock.clone(),
            super::super::EngineConfig::default(),
        )
        .unwrap();
        let appid = AppId::parse("wxscheduled000001").unwrap();
        engine
            .add_app(&NewApp::mp(appid.clone(), Secret::new("s")))
            .await
            .unwrap();
        let ttl = Duration::from_secs(30);
        assert!(
            engine
                .inner
                .store
                .try_lease(
                    &appid,
                    Kind::AccessToken,
                    "another-replica#1",
                    ttl,
                    clock.now()
                )
                .await
                .unwrap()
        );
        let slot = engine.slot(&appid, Kind::AccessToken);
        let ahead = Need::Ahead(TimeDelta::minutes(20), None);
        let scheduled = tokio::time::timeout(
            Duration::from_secs(5),
            engine.fill(&appid, Kind::AccessToken, &slot, ahead),
        )
        .await
        .expect("a scheduled renewal returns at once");
        assert!(
            matches!(&scheduled, Err(Error::Unavailable(m)) if m.contains("another replica")),
            "{scheduled:?}"
        );
        let request = tokio::time::timeout(
            Duration::from_millis(500),
            engine.fill(&appid, Kind::AccessToken, &slot, Need::Serve),
        )
        .await;
        assert!(
            request.is_err(),
            "a request waits for the holder: {request:?}"
        );
    }
}
