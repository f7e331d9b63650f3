//! The status page at `/`: every app, what it holds and how its refreshes go, for a person; and
//! each app's own page at `/status/{appid}`, with its recent refresh outcomes and a forced
//! refresh that asks first.
//!
//! Server-rendered HTML with inline CSS: no build step, no script, nothing fetched from
//! elsewhere. Every text shown passes [`escape`].

use std::fmt::Write;

use chrono::{DateTime, Utc};
use wetoken_core::{
    AppFilter, AppId, AppKind, AppStatus, CredentialRecord, CredentialState, Engine, Error, Kind,
    RefreshOutcome, StateTotals,
};

use crate::http::Listing;

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a credential's remaining life is shown: its text and its colour class.
fn life(record: Option<&CredentialRecord>, now: DateTime<Utc>) -> (String, &'static str) {
    let Some(expires_at) = record
        .and_then(|r| r.credential.as_ref())
        .map(|c| c.expires_at)
    else {
        return ("none".into(), "none");
    };
    let left = (expires_at - now).num_seconds();
    let class = match left {
        ..=0 => "expired",
        1..=600 => "red",
        601..=1800 => "amber",
        _ => "green",
    };
    let text = if left <= 0 {
        "expired".into()
    } else {
        format!(
            "{}h {:02}m {:02}s",
            left / 3600,
            left % 3600 / 60,
            left % 60
        )
    };
    (text, class)
}

/// The trouble a credential is in, by the stored `state` column's rules (migration 000011):
/// halted, out of budget (the budget refused its last scheduled fetch) or failing.
fn trouble(record: Option<&CredentialRecord>) -> Option<CredentialState> {
    record
        .map(|r| r.state(false))
        .filter(|s| CredentialState::TROUBLE.contains(s))
}

/// An instant as the page shows it, in UTC.
fn at(instant: DateTime<Utc>) -> String {
    instant.format("%m-%d %H:%M:%S").to_string()
}

/// When the credential was last refreshed, when it renews and when it is retried.
fn times(out: &mut String, record: &CredentialRecord, now: DateTime<Utc>) {
    let mut parts = Vec::new();
    if let Some(t) = record.refresh_time {
        parts.push(format!("refreshed {}", at(t)));
    }
    if !record.halted
        && record.credential.is_some()
        && let Some(t) = record.renew_at
    {
        parts.push(format!("renews {}", at(t)));
    }
    // The shared backoff of a failing credential: no replica calls WeChat before then.
    if let Some(t) = record
        .retry_at
        .filter(|_| record.failures > 0 && !record.halted)
    {
        let due = if t <= now { " (due)" } else { "" };
        parts.push(format!("retry {}{due}", at(t)));
    }
    if !parts.is_empty() {
        let _ = write!(
            out,
            "<div class=\"times\">{}</div>",
            escape(&parts.join(" · "))
        );
    }
}

/// One credential's cell: "n/a" when WeChat issues no such credential to the app's kind; else
/// its time left, its trouble (in red) and the last outcome, and its times.
fn credential_cell(
    out: &mut String,
    applies: bool,
    record: Option<&CredentialRecord>,
    now: DateTime<Utc>,
) {
    if !applies {
        out.push_str("<td class=\"na\">n/a</td>");
        return;
    }
    let (text, class) = life(record, now);
    let message = record.map_or("not fetched yet", |r| r.message.as_str());
    let (bad, label) = match trouble(record) {
        Some(state) => (" bad", format!(" <strong>{}</strong>", state.name())),
        None => ("", String::new()),
    };
    let _ = write!(
        out,
        "<td class=\"{class}{bad}\"><span class=\"left\">{}</span>{label}<div class=\"msg\">{}</div>",
        escape(&text),
        escape(message)
    );
    if let Some(r) = record {
        times(out, r, now);
    }
    out.push_str("</td>");
}

/// The app's credentials, each with whether its kind has it.
fn credentials(status: &AppStatus) -> [(Kind, bool, Option<&CredentialRecord>); 3] {
    let has = |kind| status.app.kind.has(kind);
    [
        (
            Kind::AccessToken,
            has(Kind::AccessToken),
            status.access_token.as_ref(),
        ),
        (
            Kind::JsapiTicket,
            has(Kind::JsapiTicket),
            status.jsapi_ticket.as_ref(),
        ),
        (
            Kind::CardTicket,
            has(Kind::CardTicket),
            status.card_ticket.as_ref(),
        ),
    ]
}

/// Whether any credential the app's kind has is in trouble: its row is red.
fn in_trouble(status: &AppStatus) -> bool {
    credentials(status)
        .iter()
        .any(|(_, applies, r)| *applies && trouble(*r).is_some())
}

fn row(out: &mut String, status: &AppStatus, now: DateTime<Utc>) {
    let app = &status.app;
    let class = if in_trouble(status) {
        " class=\"bad\""
    } else {
        ""
    };
    let appid = escape(app.appid.as_str());
    let _ = write!(
        out,
        "<tr{class}><td class=\"appid\"><a href=\"status/{appid}\">{appid}</a></td><td>{}</td><td>{}</td>",
        app.kind.as_str(),
        app.token_mode.as_str()
    );
    for (_, applies, record) in credentials(status) {
        credential_cell(out, applies, record, now);
    }
    let over = if app.calls_today > app.daily_budget {
        " class=\"red\""
    } else {
        ""
    };
    let _ = write!(
        out,
        "<td{over}>{} / {}</td></tr>",
        app.calls_today, app.daily_budget
    );
}

/// The totals by state, worst first, as the summary line at the top: each a link to the apps in
/// that state.
fn summary(out: &mut String, totals: &StateTotals) {
    out.push_str("<p class=\"summary\">Credentials: ");
    let mut first = true;
    for state in CredentialState::ALL.iter().rev() {
        let n = totals.total(*state);
        if !first {
            out.push_str(" · ");
        }
        first = false;
        let class = match state {
            CredentialState::Halted | CredentialState::OutOfBudget | CredentialState::Failing
                if n > 0 =>
            {
                " class=\"red\""
            }
            _ => "",
        };
        let _ = write!(
            out,
            "<a{class} href=\"?state={name}\"><strong>{n}</strong> {name}</a>",
            name = state.name()
        );
    }
    out.push_str("</p>");
}

/// The filter form, holding the listing's current filters.
fn filters(out: &mut String, listing: &Listing) {
    out.push_str("<form class=\"filters\" method=\"get\"><label>state <select name=\"state\"><option value=\"\">any</option>");
    for state in CredentialState::ALL {
        let selected = if listing.filter.state == Some(state) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", state.name());
    }
    out.push_str(
        "</select></label> <label>kind <select name=\"kind\"><option value=\"\">any</option>",
    );
    for kind in AppKind::ALL {
        let selected = if listing.filter.kind == Some(kind) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", kind.as_str());
    }
    let _ = write!(
        out,
        "</select></label> <label>appid (or its start) <input name=\"prefix\" value=\"{}\"></label> <button>show</button></form>",
        escape(listing.filter.prefix.as_deref().unwrap_or(""))
    );
}

/// The whole page: the totals by state, then one page of apps as `listing` asks.
pub(crate) async fn page(
    engine: &Engine,
    mount: &crate::http::Mount,
    listing: &Listing,
    totals_fresh: std::time::Duration,
) -> Result<String, Error> {
    let (totals, totals_age) = engine.state_totals_within(totals_fresh).await?;
    // Worst first: the ordering is the database's, a rank at a time (`Store::page_worst_first`).
    let filter = AppFilter {
        worst_first: true,
        ..listing.filter.clone()
    };
    let mut page = engine
        .list_apps(&filter, listing.after.as_ref(), listing.limit)
        .await?;
    // A search for a whole appid names its page: one primary-key read.
    let exact = match listing.filter.prefix.as_deref().map(AppId::parse) {
        Some(Ok(appid)) if mount.covers(&appid) => match engine.app_status(&appid).await {
            Ok(_) => Some(appid),
            Err(Error::UnknownApp(_)) => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    page.apps.retain(|status| mount.covers(&status.app.appid));
    let apps = &page.apps;
    let now = engine.now();
    let mut out = String::with_capacity(4096 + apps.len() * 512);
    head(&mut out, "wetoken status", true);
    out.push_str("<h1>wetoken</h1>");
    summary(&mut out, &totals);
    if totals_age.as_secs() > 0 {
        let _ = write!(
            out,
            "<p class=\"msg\">Totals as of {} s ago.</p>",
            totals_age.as_secs()
        );
    }
    filters(&mut out, listing);
    if let Some(appid) = exact {
        let appid = escape(appid.as_str());
        let _ = write!(
            out,
            "<p class=\"exact\">App <a href=\"status/{appid}\">{appid}</a>: its own page, with its recent refreshes.</p>"
        );
    }
    let _ = write!(
        out,
        "<p>{} apps on this page, those in trouble first. Times are what each credential has left at {} UTC; the page reloads every 30 s.</p>",
        apps.len(),
        now.format("%Y-%m-%d %H:%M:%S")
    );
    out.push_str(concat!(
        "<table><thead><tr><th>app</th><th>kind</th><th>mode</th>",
        "<th>access token</th><th>jsapi ticket</th><th>card ticket</th><th>calls today</th>",
        "</tr></thead><tbody>"
    ));
    for status in apps {
        row(&mut out, status, now);
    }
    if apps.is_empty() {
        if listing.filter == AppFilter::default() && listing.after.is_none() {
            out.push_str(
                "<tr><td colspan=\"7\">No apps yet: add one with /wechat/app/create.</td></tr>",
            );
        } else {
            out.push_str("<tr><td colspan=\"7\">No apps match.</td></tr>");
        }
    }
    out.push_str("</tbody></table>");
    if let Some(next) = &page.next {
        let _ = write!(
            out,
            "<p><a href=\"?{}\">next page</a></p>",
            escape(&listing.query(Some(next)))
        );
    }
    out.push_str("</body></html>");
    Ok(out)
}

/// The CSS both pages share. Red (`#c5221f`) marks what needs an operator: a credential
/// halted, out of budget or failing (`.bad`), little time left, a refused forced refresh.
const CSS: &str = concat!(
    "body{font:14px system-ui,sans-serif;margin:2em;color:#222}",
    "table{border-collapse:collapse;width:100%}",
    "th,td{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}",
    "th{background:#f4f4f4}.appid{font-family:monospace}",
    ".msg,.times{color:#666;font-size:12px;max-width:28em;overflow-wrap:anywhere}",
    ".green .left{color:#137333}.amber .left{color:#b06000}",
    ".red .left,.expired .left,td.red,a.red{color:#c5221f;font-weight:bold}.none .left{color:#999}",
    "tr.bad td.appid a,td.bad,td.bad .msg,td.bad strong,p.bad{color:#c5221f}",
    "tr.bad{background:#fce8e6}td.bad{font-weight:bold}td.na{color:#999}",
    ".summary a{color:inherit;text-decoration:none}.summary a:hover{text-decoration:underline}",
    ".confirm{border:2px solid #c5221f;padding:.6em 1em;margin:1em 0;max-width:44em}",
    "p.ok{color:#137333;font-weight:bold}p.bad{font-weight:bold}",
);

/// The document's head, and whether the page reloads itself (not one that asks to confirm).
fn head(out: &mut String, title: &str, reload: bool) {
    out.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if reload {
        out.push_str("<meta http-equiv=\"refresh\" content=\"30\">");
    }
    let _ = write!(
        out,
        "<title>{}</title><style>{CSS}</style></head><body>",
        escape(title)
    );
}

/// The name a credential goes by in `/wechat/app/refresh`'s `kind`.
fn refresh_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::AccessToken => "token",
        Kind::JsapiTicket => "ticket",
        Kind::CardTicket => "wx_card",
    }
}

/// What the app's page shows besides the app: nothing, a forced refresh to confirm, or the
/// outcome of one.
pub(crate) enum Forced {
    Nothing,
    Confirm(Kind),
    Done(Kind, DateTime<Utc>),
    Refused(Kind, i64, String),
}

/// The page of one app: its credentials with their times, a forced refresh for each (which
/// asks first, then posts to this page: the admin check and the quota guard of
/// `/wechat/app/refresh` apply), and the refresh outcomes its history keeps, newest first.
pub(crate) async fn detail(
    engine: &Engine,
    appid: &AppId,
    forced: &Forced,
) -> Result<String, Error> {
    let status = engine.app_status(appid).await?;
    let history = engine.refresh_history(appid).await?;
    let now = engine.now();
    let app = &status.app;
    let id = escape(appid.as_str());
    let mut out = String::with_capacity(8192);
    head(
        &mut out,
        &format!("wetoken · {}", appid.as_str()),
        matches!(forced, Forced::Nothing),
    );
    let _ = write!(
        out,
        "<p><a href=\"../\">← every app</a></p><h1 class=\"appid\">{id}</h1><p>{} app, {} token, {} / {} calls today. Times are UTC, now {}.</p>",
        app.kind.as_str(),
        app.token_mode.as_str(),
        app.calls_today,
        app.daily_budget,
        at(now)
    );
    match forced {
        Forced::Nothing => {}
        Forced::Confirm(kind) => {
            let _ = write!(
                out,
                "<form class=\"confirm\" method=\"post\" action=\"{id}\"><input type=\"hidden\" name=\"kind\" value=\"{}\"><p>Force a new {} for {id} now? WeChat is called at once, whatever the stored one's state: it counts against the app's daily budget less its reserve, and a stable token against WeChat's 20 forced a day. Callers holding the old value get errors until they read the new one.</p><button class=\"force\">Yes, force a new {}</button> <a href=\"{id}\">cancel</a></form>",
                refresh_kind(*kind),
                kind.name(),
                kind.name()
            );
        }
        Forced::Done(kind, expires_at) => {
            let _ = write!(
                out,
                "<p class=\"ok result\">Forced: a new {} is stored, expiring {}.</p>",
                kind.name(),
                at(*expires_at)
            );
        }
        Forced::Refused(kind, errcode, errmsg) => {
            let _ = write!(
                out,
                "<p class=\"bad result\">The forced refresh of the {} was refused: {errcode}: {}</p>",
                kind.name(),
                escape(errmsg)
            );
        }
    }
    out.push_str(
        "<table><thead><tr><th>credential</th><th>state</th><th></th></tr></thead><tbody>",
    );
    for (kind, applies, record) in credentials(&status) {
        let _ = write!(out, "<tr><td>{}</td>", kind.name());
        credential_cell(&mut out, applies, record, now);
        if applies {
            let _ = write!(
                out,
                "<td><a href=\"{id}?force={}\">force refresh…</a></td></tr>",
                refresh_kind(kind)
            );
        } else {
            out.push_str("<td></td></tr>");
        }
    }
    out.push_str("</tbody></table><h2>Recent refreshes</h2>");
    history_table(&mut out, &history);
    out.push_str("</body></html>");
    Ok(out)
}

/// The refresh outcomes kept, newest first; failures in red.
fn history_table(out: &mut String, history: &[RefreshOutcome]) {
    if history.is_empty() {
        out.push_str("<p class=\"msg\">No refresh recorded yet.</p>");
        return;
    }
    out.push_str(concat!(
        "<table class=\"history\"><thead><tr><th>when</th><th>credential</th><th>cause</th>",
        "<th>outcome</th><th>replica</th></tr></thead><tbody>"
    ));
    for h in history {
        let class = if h.ok { "" } else { " class=\"bad\"" };
        let outcome = match (h.ok, h.errcode) {
            (true, _) => "success".to_owned(),
            (false, Some(errcode)) if !h.message.starts_with(&errcode.to_string()) => {
                format!("{errcode}: {}", h.message)
            }
            (false, _) => h.message.clone(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
            at(h.at),
            h.kind.name(),
            h.cause.map_or("other", wetoken_core::RefreshCause::name),
            escape(&outcome),
            escape(&h.replica)
        );
    }
    out.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn the_history_escapes_what_wechat_and_replicas_say() {
        let outcome = RefreshOutcome {
            kind: Kind::AccessToken,
            at: Utc::now(),
            cause: Some(wetoken_core::RefreshCause::Passive),
            ok: false,
            errcode: Some(40001),
            message: "<script>alert(1)</script>".into(),
            replica: "<b>host</b>".into(),
        };
        let mut out = String::new();
        history_table(&mut out, &[outcome]);
        assert!(!out.contains("<script>") && !out.contains("<b>"), "{out}");
        assert!(
            out.contains("<td class=\"bad\">40001: &lt;script&gt;alert(1)&lt;/script&gt;</td>"),
            "{out}"
        );
        assert!(out.contains("<td>passive</td>"), "{out}");
    }
}
