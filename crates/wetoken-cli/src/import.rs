//! `import FILE`: apps, and optionally their live tokens and tickets, from an export of another
//! database: the way across for the Go wetoken's Oracle users (docs/migrating-from-go.md has
//! the SQL*Plus query), or from any spreadsheet.
//!
//! The file is a JSON array of objects, JSON objects one a line, or CSV with a header line. Each
//! record takes the Go wetoken's app fields under wetoken's names or the Go handlers' camelCase
//! ones, plus `access_token`/`access_token_expires_at` and `ticket`/`ticket_expires_at` (RFC
//! 3339). The whole file is read and checked before anything is written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use wetoken_core::{AppKind, Credential, GoFields, Kind, NewApp, Secret, TokenMode};

use crate::DatabaseArg;

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The file: a JSON array, JSON lines, or CSV with a header (by its ending: .csv is CSV,
    /// anything else JSON).
    file: std::path::PathBuf,
    #[command(flatten)]
    db: DatabaseArg,
}

/// Every field a record may have; anything else is refused, so a misspelt column is not lost.
const FIELDS: [&str; 18] = [
    "appid",
    "secret",
    "kind",
    "token_mode",
    "corpid",
    "agentid",
    "token",
    "aes_key",
    "pay_key",
    "mchid",
    "sub_appid",
    "sub_mchid",
    "wechat_host",
    "wcode_template_id",
    "access_token",
    "access_token_expires_at",
    "ticket",
    "ticket_expires_at",
];

/// One record, checked: the app, and what it held.
struct Record {
    line: usize,
    app: NewApp,
    credentials: Vec<(Kind, Credential)>,
}

/// The records of `path`, each with the line it starts on, as field → value.
fn read(path: &Path) -> anyhow::Result<Vec<(usize, BTreeMap<String, String>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if csv {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = reader.headers().context("reading the CSV header")?.clone();
        let mut out = Vec::new();
        for row in reader.records() {
            let row = row.context("reading the CSV")?;
            let line = row.position().map_or(0, |p| p.line() as usize);
            let fields = headers
                .iter()
                .zip(row.iter())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            out.push((line, fields));
        }
        return Ok(out);
    }
    let trimmed = text.trim_start();
    let values: Vec<(usize, serde_json::Value)> = if trimmed.starts_with('[') {
        let array: Vec<serde_json::Value> =
            serde_json::from_str(&text).context("reading the JSON array")?;
        array
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect()
    } else {
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(line)
                .with_context(|| format!("line {}: not a JSON object", i + 1))?;
            values.push((i + 1, value));
        }
        values
    };
    values
        .into_iter()
        .map(|(line, value)| {
            let serde_json::Value::Object(object) = value else {
                bail!("record {line}: not a JSON object");
            };
            let mut fields = BTreeMap::new();
            for (key, value) in object {
                let text = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    other => bail!("record {line}: field {key:?} is {other}, not a string"),
                };
                fields.insert(key, text);
            }
            Ok((line, fields))
        })
        .collect()
}

/// Checks one record and makes it an app; `line` names it in every error.
fn check(line: usize, mut fields: BTreeMap<String, String>) -> anyhow::Result<Record> {
    let at = || format!("record at line {line}");
    for (go, ours) in GoFields::GO_NAMES {
        if let Some(value) = fields.remove(go) {
            if fields.get(ours).is_some_and(|v| *v != value) {
                bail!("{}: {ours} and {go} disagree", at());
            }
            fields.insert(ours.to_owned(), value);
        }
    }
    fields.retain(|_, v| !v.is_empty());
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        bail!(
            "{}: unknown field {unknown:?} (known: {})",
            at(),
            FIELDS.join(", ")
        );
    }
    let get = |name: &str| fields.get(name).map(String::as_str);
    let kind = AppKind::parse(get("kind").unwrap_or("mp")).with_context(at)?;
    let (appid, work) =
        NewApp::identify(kind, get("appid"), get("corpid"), get("agentid")).with_context(at)?;
    let secret = |name: &str, max: usize| {
        get(name)
            .map(|v| Secret::checked(name, v, max))
            .transpose()
            .with_context(at)
    };
    let go = |name: &str| {
        get(name)
            .map(|v| GoFields::check(name, v))
            .transpose()
            .with_context(at)
    };
    let app = NewApp {
        appid,
        component: None,
        kind,
        token_mode: get("token_mode")
            .map(TokenMode::parse)
            .transpose()
            .with_context(at)?
            .unwrap_or_default(),
        work,
        daily_budget: None,
        secret: secret("secret", Secret::MAX_APP_SECRET)?
            .ok_or_else(|| anyhow::anyhow!("{}: secret is required", at()))?,
        token: secret("token", Secret::MAX_MESSAGE_KEY)?,
        aes_key: secret("aes_key", Secret::MAX_MESSAGE_KEY)?,
        pay_key: secret("pay_key", GoFields::MAX)?,
        go: GoFields {
            mchid: go("mchid")?,
            sub_appid: go("sub_appid")?,
            sub_mchid: go("sub_mchid")?,
            wechat_host: go("wechat_host")?,
            wcode_template_id: go("wcode_template_id")?,
        },
        verify_secs: None,
    };
    let mut credentials = Vec::new();
    for (kind, value, expires) in [
        (Kind::AccessToken, "access_token", "access_token_expires_at"),
        (Kind::JsapiTicket, "ticket", "ticket_expires_at"),
    ] {
        match (get(value), get(expires)) {
            (None, None) => {}
            (Some(v), Some(at_text)) => {
                if v.len() > 512 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    bail!("{}: {value} is not a WeChat credential", at());
                }
                let expires_at = DateTime::parse_from_rfc3339(at_text)
                    .with_context(|| format!("{}: {expires} must be RFC 3339", at()))?
                    .with_timezone(&Utc);
                if !app.kind.has(kind) {
                    bail!(
                        "{}: a {} app has no {}",
                        at(),
                        app.kind.as_str(),
                        kind.name()
                    );
                }
                credentials.push((
                    kind,
                    Credential {
                        value: v.to_owned(),
                        expires_at,
                    },
                ));
            }
            _ => bail!("{}: {value} and {expires} go together", at()),
        }
    }
    Ok(Record {
        line,
        app,
        credentials,
    })
}

pub(crate) async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (line, fields) in read(&args.file)? {
        let record = check(line, fields)?;
        if !seen.insert(record.app.appid.clone()) {
            bail!(
                "record at line {}: appid {} appears twice in the file",
                record.line,
                record.app.appid
            );
        }
        records.push(record);
    }
    if records.is_empty() {
        bail!("{} holds no records", args.file.display());
    }
    let settings = args.db.settings()?;
    let store = args.db.installed(&settings).await?;
    // Stored secrets encrypted but no master key here: refuse rather than store plain ones.
    store.prepare_secrets().await?;
    let engine = crate::apps::engine(store, &settings)?;
    let now = engine.now();
    // Eight at a time: at 100,000 apps, one by one takes minutes of round trips.
    let outcomes: Vec<anyhow::Result<Outcome>> = futures::stream::iter(records)
        .map(|record| import_one(&engine, record, now))
        .buffer_unordered(8)
        .collect()
        .await;
    let (mut added, mut kept, mut stored, mut expired) = (0, Vec::new(), 0, 0);
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(Outcome::Added {
                stored: s,
                expired: e,
            }) => {
                added += 1;
                stored += s;
                expired += e;
            }
            Ok(Outcome::Kept(appid)) => kept.push(appid),
            Err(e) => failures.push(e),
        }
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first.context(format!(
            "{added} apps were added; the records that failed were not, and running the import \
             again adds them and leaves the others as they are"
        )));
    }
    kept.sort();
    println!("imported {added} apps and {stored} live tokens and tickets");
    if expired > 0 {
        println!("skipped {expired} expired tokens and tickets: fetched when first needed");
    }
    if !kept.is_empty() {
        println!(
            "left {} apps that were already here as they were: {}",
            kept.len(),
            kept.join(", ")
        );
    }
    Ok(())
}

/// What importing one record did.
enum Outcome {
    /// The app was added, with this many live credentials stored and this many expired ones
    /// skipped.
    Added { stored: usize, expired: usize },
    /// The appid was already here; its app was left as it was.
    Kept(String),
}

async fn import_one(
    engine: &wetoken_core::Engine,
    record: Record,
    now: DateTime<Utc>,
) -> anyhow::Result<Outcome> {
    match engine.add_app(&record.app).await {
        Ok(()) => {}
        Err(wetoken_core::Error::DuplicateApp(appid)) => {
            return Ok(Outcome::Kept(appid.to_string()));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "record at line {}: adding {}",
                    record.line, record.app.appid
                )
            });
        }
    }
    let (mut stored, mut expired) = (0, 0);
    for (kind, credential) in &record.credentials {
        if credential.expires_at <= now {
            expired += 1;
            continue;
        }
        let imported = engine
            .import_credential(&record.app, *kind, credential)
            .await
            .with_context(|| {
                format!(
                    "record at line {}: storing {}'s {kind}",
                    record.line, record.app.appid
                )
            })?;
        if imported {
            stored += 1;
        }
    }
    Ok(Outcome::Added { stored, expired })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> anyhow::Result<Record> {
        check(
            7,
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn go_names_and_ours_are_one_field() {
        let r = record(&[
            ("appid", "wx1"),
            ("secret", "s"),
            ("aesKey", "k"),
            ("subAppid", "wxsub"),
            ("mchid", "19"),
        ])
        .unwrap();
        assert_eq!(r.app.aes_key.unwrap().expose(), "k");
        assert_eq!(r.app.go.sub_appid.as_deref(), Some("wxsub"));
        assert!(
            record(&[
                ("appid", "wx1"),
                ("secret", "s"),
                ("aesKey", "a"),
                ("aes_key", "b")
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_records_name_their_line() {
        for (bad, says) in [
            (vec![("appid", "wx1")], "secret is required"),
            (vec![("appid", "wx/1"), ("secret", "s")], "appid"),
            (
                vec![("appid", "wx1"), ("secret", "s"), ("colour", "red")],
                "unknown field",
            ),
            (
                vec![("appid", "wx1"), ("secret", "s"), ("access_token", "t")],
                "go together",
            ),
            (
                vec![
                    ("appid", "wx1"),
                    ("secret", "s"),
                    ("access_token", "t"),
                    ("access_token_expires_at", "tomorrow"),
                ],
                "RFC 3339",
            ),
        ] {
            let error = format!("{:#}", record(&bad).err().expect("refused"));
            assert!(error.contains("line 7") && error.contains(says), "{error}");
        }
    }
}
