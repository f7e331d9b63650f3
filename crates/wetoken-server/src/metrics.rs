//! Prometheus metrics: the recorder, and the gauges computed when `/metrics` is scraped.
//!
//! Counters and histograms are recorded where things happen (requests here, upstream calls,
//! refreshes and leases in `wetoken-core`) through the `metrics` facade. The gauges that depend on
//! the clock (seconds left on each credential) or on every replica's work (calls today) are set
//! from the database at scrape time, so each replica reports the cluster's truth.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use wetoken_core::{Engine, Error, Kind};

/// The process's recorder, installed on first use. One per process: every server in it shares it.
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding service's): then ours only
        // renders what reaches it, which is nothing; say so once.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Sets the clock-dependent gauges from the database, then renders every metric.
pub(crate) async fn render(engine: &Engine) -> Result<String, Error> {
    let handle = handle();
    let now = engine.now();
    for kind in Kind::ALL {
        for (appid, expires_at) in engine.expiries(kind).await? {
            metrics::gauge!(
                "wetoken_credential_seconds_left",
                "appid" => appid.to_string(),
                "kind" => kind.name(),
            )
            .set((expires_at - now).num_seconds() as f64);
        }
    }
    for app in engine.apps().await? {
        let appid = app.appid.to_string();
        metrics::gauge!("wetoken_upstream_calls_today", "appid" => appid.clone())
            .set(f64::from(app.calls_today));
        metrics::gauge!("wetoken_upstream_daily_budget", "appid" => appid)
            .set(f64::from(app.daily_budget));
    }
    Ok(handle.render())
}

/// Names and describes the metrics, so the exposition carries HELP lines.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "wetoken_http_requests_total",
        "HTTP requests answered, by route and status."
    );
    describe_counter!(
        "wetoken_upstream_calls_total",
        "Calls to WeChat, by appid, endpoint and result (ok, WeChat's errcode, http_<status>, unreachable, malformed)."
    );
    describe_histogram!(
        "wetoken_upstream_seconds",
        "Latency of calls to WeChat, by endpoint."
    );
    describe_histogram!(
        "wetoken_refresh_seconds",
        "Latency of refreshes (all upstream calls a refresh needs), by credential kind."
    );
    describe_counter!(
        "wetoken_scheduler_sweeps_total",
        "Scans of the database for credentials due for renewal that the scheduler finished."
    );
    describe_counter!(
        "wetoken_lease_acquired_total",
        "Refresh leases this replica took, by credential kind."
    );
    describe_counter!(
        "wetoken_lease_waits_total",
        "Times this replica waited on another's refresh lease, by credential kind."
    );
    describe_counter!(
        "wetoken_refresh_reports_total",
        "Passive-refresh reports answered with the value they named, without a fetch, by kind and outcome (still_accepted: WeChat accepts the token; too_recent: the ticket is younger than ticket_report_min_age_secs). A steady rise means a caller reports tokens that work."
    );
    describe_counter!(
        "wetoken_budget_refusals_total",
        "Token fetches refused by an app's daily budget, by limit (reserve: a passive or forced refresh met the budget less the reserve; budget: a scheduled renewal met the whole budget). Alert on any increase."
    );
    describe_counter!(
        "wetoken_stable_share_refusals_total",
        "Forced stable tokens refused because the reporter had caused its share of the day's 20."
    );
    describe_counter!(
        "wetoken_out_of_band_replacements_total",
        "Stored access tokens the slow check found dead before their time: replaced by a fetch outside wetoken (a leaked secret?). Per app: replaced_count in `wetoken-cli app show`."
    );
    describe_gauge!(
        "wetoken_credential_seconds_left",
        "Seconds of life the stored credential has left, by appid and kind."
    );
    describe_gauge!(
        "wetoken_upstream_calls_today",
        "Token fetches for the app today (WeChat's day, China time), by every replica: what the daily budget counts."
    );
    describe_gauge!(
        "wetoken_upstream_daily_budget",
        "The app's daily budget of token fetches."
    );
}
