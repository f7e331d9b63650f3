//! The status page at `/`: every app, what it holds and how its refreshes go, for a person.
//!
//! Server-rendered HTML with inline CSS: no build step, nothing fetched from elsewhere.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use wetoken_core::{
    AppFilter, AppKind, AppStatus, CredentialRecord, CredentialState, Engine, Error, StateTotals,
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

fn credential_cell(out: &mut String, record: Option<&CredentialRecord>, now: DateTime<Utc>) {
    let (text, class) = life(record, now);
    let message = record.map_or("not fetched yet", |r| r.message.as_str());
    let halted = if record.is_some_and(|r| r.halted) {
        " <strong>halted</strong>"
    } else {
        ""
    };
    let _ = write!(
        out,
        "<td class=\"{class}\"><span class=\"left\">{}</span>{halted}<div class=\"msg\">{}</div></td>",
        escape(&text),
        escape(message)
    );
}

fn row(out: &mut String, status: &AppStatus, now: DateTime<Utc>) {
    let app = &status.app;
    let _ = write!(
        out,
        "<tr><td class=\"appid\">{}</td><td>{}</td><td>{}</td>",
        escape(app.appid.as_str()),
        app.kind.as_str(),
        app.token_mode.as_str()
    );
    credential_cell(out, status.access_token.as_ref(), now);
    credential_cell(out, status.jsapi_ticket.as_ref(), now);
    credential_cell(out, status.card_ticket.as_ref(), now);
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
    for kind in [AppKind::Mp, AppKind::Mini, AppKind::Work] {
        let selected = if listing.filter.kind == Some(kind) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", kind.as_str());
    }
    let _ = write!(
        out,
        "</select></label> <label>appid starts with <input name=\"prefix\" value=\"{}\"></label> <button>show</button></form>",
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
    let mut page = engine
        .list_apps(&listing.filter, listing.after.as_ref(), listing.limit)
        .await?;
    page.apps.retain(|status| mount.covers(&status.app.appid));
    let apps = &page.apps;
    let now = engine.now();
    let mut out = String::with_capacity(4096 + apps.len() * 512);
    out.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"30\">",
        "<title>wetoken status</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}",
        "table{border-collapse:collapse;width:100%}",
        "th,td{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}",
        "th{background:#f4f4f4}.appid{font-family:monospace}",
        ".msg{color:#666;font-size:12px;max-width:28em;overflow-wrap:anywhere}",
        ".green .left{color:#137333}.amber .left{color:#b06000}",
        ".red .left,.expired .left,td.red,a.red{color:#c5221f;font-weight:bold}.none .left{color:#999}",
        ".summary a{color:inherit;text-decoration:none}.summary a:hover{text-decoration:underline}",
        "</style></head><body><h1>wetoken</h1>"
    ));
    summary(&mut out, &totals);
    if totals_age.as_secs() > 0 {
        let _ = write!(
            out,
            "<p class=\"msg\">Totals as of {} s ago.</p>",
            totals_age.as_secs()
        );
    }
    filters(&mut out, listing);
    let _ = write!(
        out,
        "<p>{} apps on this page. Times are what each credential has left at {} UTC; the page reloads every 30 s.</p>",
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
}
