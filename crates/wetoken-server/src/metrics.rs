//! Prometheus metrics: the recorder, and the gauges computed when `/metrics` is scraped.
//!
//! Counters and histograms are recorded where things happen (requests here, upstream calls,
//! refreshes and leases in `wetoken-core`) through the `metrics` facade, and exist at 0 from
//! start-up ([`zero_counters`]). None has an appid label. The gauges that depend on the clock or
//! on every replica's work (credentials by state, the least time left) are read from the
//! database at scrape time, so each replica reports the cluster's truth, and are written into the
//! exposition by hand: a deleted app has no series left anywhere to linger.

use std::sync::OnceLock;

use std::fmt::Write;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use wetoken_core::{CredentialState, Engine, Error, Kind, UPSTREAM_ENDPOINTS};

use wetoken_settings::{MetricsSettings, PerApp};

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

/// Renders every metric: what the recorder holds (counters and histograms, recorded where
/// things happen), then the gauges read from the database at this scrape, written here and
/// never handed to the recorder, which would keep a series of a deleted app for ever.
///
/// The gauges are aggregates (credentials by kind and state, the least time left, the last
/// success), plus series per app as `settings.per_app` says: by default only credentials in
/// trouble, at most `per_app_max`. A handful of queries, whatever the number of apps.
pub(crate) async fn render(engine: &Engine, settings: &MetricsSettings) -> Result<String, Error> {
    let mut out = handle().render();
    let now = engine.now();
    let fresh = std::time::Duration::from_millis(settings.totals_fresh_ms);
    let (totals, _) = engine.state_totals_within(fresh).await?;
    gauge_header(
        &mut out,
        "wetoken_credentials",
        "Credentials by kind and state (healthy, renewing, pending, failing, out_of_budget, halted), by every replica: read from the database at scrape time.",
    );
    for kind in Kind::ALL {
        for state in CredentialState::ALL {
            let _ = writeln!(
                out,
                "wetoken_credentials{{kind=\"{}\",state=\"{}\"}} {}",
                kind.name(),
                state.name(),
                totals.count(kind, state)
            );
        }
    }
    per_kind(
        &mut out,
        "wetoken_credential_min_seconds_left",
        "The least life left on a stored credential that is still served (not halted), by kind; absent while none is stored.",
        |kind| {
            totals
                .earliest_expiry(kind)
                .map(|at| (at - now).num_seconds())
        },
    );
    match settings.per_app {
        PerApp::None => {}
        PerApp::Trouble => {
            let troubled = engine.troubled(settings.per_app_max).await?;
            let in_trouble: u64 = CredentialState::TROUBLE
                .iter()
                .map(|s| totals.total(*s))
                .sum();
            gauge_header(
                &mut out,
                "wetoken_credential_trouble",
                "1 for each credential in trouble (halted, out_of_budget, failing), by appid, kind and state; at most metrics.per_app_max of them, the worst states first.",
            );
            for t in &troubled {
                let _ = writeln!(
                    out,
                    "wetoken_credential_trouble{{appid=\"{}\",kind=\"{}\",state=\"{}\"}} 1",
                    t.appid,
                    t.kind.name(),
                    t.state.name()
                );
            }
            gauge_header(
                &mut out,
                "wetoken_credential_trouble_unlisted",
                "Credentials in trouble left out of wetoken_credential_trouble by metrics.per_app_max.",
            );
            let _ = writeln!(
                out,
                "wetoken_credential_trouble_unlisted {}",
                in_trouble.saturating_sub(troubled.len() as u64)
            );
            seconds_left_header(&mut out);
            for t in &troubled {
                if let Some(at) = t.expires_at {
                    seconds_left(&mut out, t.appid.as_str(), t.kind, at, now);
                }
            }
        }
        PerApp::All => {
            seconds_left_header(&mut out);
            for kind in Kind::ALL {
                for (appid, at) in engine.expiries(kind).await? {
                    seconds_left(&mut out, appid.as_str(), kind, at, now);
                }
            }
            let apps = engine.apps().await?;
            gauge_header(
                &mut out,
                "wetoken_upstream_calls_today",
                "Token fetches for the app today (WeChat's day, China time), by every replica: what the daily budget counts.",
            );
            for app in &apps {
                let _ = writeln!(
                    out,
                    "wetoken_upstream_calls_today{{appid=\"{}\"}} {}",
                    app.appid, app.calls_today
                );
            }
            gauge_header(
                &mut out,
                "wetoken_upstream_daily_budget",
                "The app's daily budget of token fetches.",
            );
            for app in &apps {
                let _ = writeln!(
                    out,
                    "wetoken_upstream_daily_budget{{appid=\"{}\"}} {}",
                    app.appid, app.daily_budget
                );
            }
        }
    }
    Ok(out)
}

/// A gauge by kind, for the kinds `value` gives a value of.
fn per_kind(out: &mut String, name: &str, help: &str, value: impl Fn(Kind) -> Option<i64>) {
    gauge_header(out, name, help);
    for kind in Kind::ALL {
        if let Some(v) = value(kind) {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {v}", kind.name());
        }
    }
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn seconds_left_header(out: &mut String) {
    gauge_header(
        out,
        "wetoken_credential_seconds_left",
        "Seconds of life the stored credential has left, by appid and kind (per-app series: see metrics.per_app).",
    );
}

fn seconds_left(out: &mut String, appid: &str, kind: Kind, at: DateTime<Utc>, now: DateTime<Utc>) {
    let _ = writeln!(
        out,
        "wetoken_credential_seconds_left{{appid=\"{appid}\",kind=\"{}\"}} {}",
        kind.name(),
        (at - now).num_seconds()
    );
}

/// Creates every counter at 0, with each label set it has from the start, so that a rule on
/// `increase()` or `rate()` sees its first event (a series born at 1 shows no increase).
pub(crate) fn zero_counters() {
    for (name, labels) in counters_at_start() {
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::counter!(name, labels).increment(0);
    }
}

/// The counters and label sets that exist from start-up.
pub(crate) fn counters_at_start() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let mut out: Vec<(&'static str, Vec<(&'static str, &'static str)>)> = vec![
        ("wetoken_scheduler_sweeps_total", vec![]),
        ("wetoken_stable_share_refusals_total", vec![]),
        ("wetoken_out_of_band_replacements_total", vec![]),
        ("wetoken_budget_refusals_total", vec![("limit", "reserve")]),
        ("wetoken_budget_refusals_total", vec![("limit", "budget")]),
        (
            "wetoken_refresh_reports_total",
            vec![
                ("kind", Kind::AccessToken.name()),
                ("outcome", "still_accepted"),
            ],
        ),
        (
            "wetoken_http_requests_total",
            vec![("route", "token_get"), ("status", "200")],
        ),
    ];
    for limit in [
        crate::conn::Refusal::Total,
        crate::conn::Refusal::PerAddress,
    ] {
        out.push((
            "wetoken_connections_refused_total",
            vec![("limit", limit.label())],
        ));
    }
    for (info_type, outcome) in crate::http::push_counters_at_start() {
        out.push((
            "wetoken_component_pushes_total",
            vec![("info_type", info_type), ("outcome", outcome)],
        ));
    }
    for kind in [Kind::JsapiTicket, Kind::CardTicket] {
        out.push((
            "wetoken_refresh_reports_total",
            vec![("kind", kind.name()), ("outcome", "too_recent")],
        ));
    }
    for kind in Kind::ALL {
        out.push(("wetoken_lease_acquired_total", vec![("kind", kind.name())]));
        out.push(("wetoken_lease_waits_total", vec![("kind", kind.name())]));
    }
    for endpoint in UPSTREAM_ENDPOINTS {
        out.push((
            "wetoken_upstream_calls_total",
            vec![("endpoint", endpoint), ("result", "ok")],
        ));
    }
    out
}

/// Names and describes the metrics, so the exposition carries HELP lines.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "wetoken_http_requests_total",
        "HTTP requests answered, by route and status."
    );
    describe_counter!(
        "wetoken_connections_refused_total",
        "Connections closed as soon as accepted, by the limit they met (max_connections, max_connections_per_address)."
    );
    describe_counter!(
        "wetoken_upstream_calls_total",
        "Calls to WeChat, by endpoint and result (ok, WeChat's errcode, http_<status>, unreachable, malformed)."
    );
    describe_histogram!(
        "wetoken_upstream_seconds",
        "Latency of calls to WeChat, by endpoint."
    );
    describe_histogram!(
        "wetoken_refresh_seconds",
        "Latency of refreshes (all upstream calls a refresh needs), by credential kind."
    );
    describe_gauge!(
        "wetoken_refresh_last_success_timestamp_seconds",
        "When a refresh of this kind last succeeded on this replica (Unix seconds); max() across replicas is the cluster's."
    );
    describe_counter!(
        "wetoken_component_pushes_total",
        "WeChat's pushes to /component/{id}/event, by info_type (component_verify_ticket, authorized, updateauthorized, unauthorized, other, url_check; unknown: refused before decryption) and outcome (ok, failed, replayed, forged, stale, malformed, unknown_component, limited)."
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
}
