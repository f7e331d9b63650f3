//! `import-authorizers --component APPID FILE`: the authorizers of a third-party platform, with
//! their refresh tokens, from the system a vendor moves away from (WxJava's store, their own
//! tables).
//!
//! One authorizer a line: `appid,refresh_token[,kind]` (CSV; kind mp, the default, or mini), or
//! a JSON object `{"authorizer_appid":…,"authorizer_refresh_token":…,"kind":…}`. Every line is
//! checked, and every authorizer compared with what is stored, before anything is written; then
//! each line is written on its own, so one refused line keeps no other out. The tokens
//! themselves are fetched by the servers' scheduler: an imported authorizer is due at once.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use wetoken_core::{AppId, AppInfo, AppKind, AppUpdate, Engine, Error, NewApp, Secret};

use crate::DatabaseArg;
use crate::apps::MAX_REFRESH_TOKEN;

#[derive(clap::Args)]
pub(crate) struct ImportAuthorizersArgs {
    /// The third-party platform the authorizers authorized: a stored app of kind component.
    #[arg(long, value_name = "COMPONENT_APPID")]
    component: String,
    /// Replace the stored refresh token of authorizers of this platform that are already here
    /// (else they are skipped, as they are).
    #[arg(long)]
    update: bool,
    /// Check the file and compare it with the database, and write nothing: the report says what
    /// an import would do.
    #[arg(long)]
    check: bool,
    /// The file, or - for standard input: `appid,refresh_token[,kind]` or JSON objects, one a
    /// line. Blank lines, lines starting with #, and a header line (appid,…) are passed over.
    file: PathBuf,
    #[command(flatten)]
    db: DatabaseArg,
}

/// New authorizers added a transaction.
const BATCH: usize = 1000;

/// One authorizer of the file, checked.
#[derive(Debug)]
struct Line {
    line: usize,
    appid: AppId,
    refresh_token: Secret,
    /// The kind, if the line gave one (else mp for a new authorizer, the stored one for another).
    kind: Option<AppKind>,
}

/// What becomes of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Added,
    Updated,
    /// Stored already, and --update not given.
    Present,
    /// Stored already with this refresh token.
    Unchanged,
    /// Left as it is for the reason given (a withdrawn authorization).
    Skipped(String),
    Refused(String),
}

/// Reads `path` (`-`: standard input) whole.
fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        return Ok(text);
    }
    warn_if_readable_by_all(path);
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The file holds refresh tokens, which are secrets: say so if every user may read it.
fn warn_if_readable_by_all(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o004 != 0
        {
            eprintln!(
                "wetoken-cli: warning: {} is readable by every user of this machine, and it holds \
                 refresh tokens: `chmod 600` it, and delete it once imported",
                path.display()
            );
        }
    }
}

/// Checks every line of `text`: the authorizers, and the lines refused with why.
fn parse(text: &str) -> (Vec<Line>, Vec<(usize, String)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let header = std::mem::take(&mut first)
            && matches!(
                trimmed.split(',').next().map(str::trim),
                Some("appid" | "authorizer_appid")
            );
        if header {
            continue;
        }
        match parse_line(number, trimmed) {
            Ok(line) => good.push(line),
            Err(e) => bad.push((number, format!("{e:#}"))),
        }
    }
    // The same appid twice: which refresh token is right cannot be told, so none is taken.
    let mut lines_of: HashMap<AppId, Vec<usize>> = HashMap::new();
    for line in &good {
        lines_of
            .entry(line.appid.clone())
            .or_default()
            .push(line.line);
    }
    good.retain(|line| {
        let lines = &lines_of[&line.appid];
        if lines.len() == 1 {
            return true;
        }
        let others: Vec<String> = lines
            .iter()
            .filter(|&&n| n != line.line)
            .map(usize::to_string)
            .collect();
        bad.push((
            line.line,
            format!(
                "{} appears on line {} too: neither is imported",
                line.appid,
                others.join(", ")
            ),
        ));
        false
    });
    bad.sort_by_key(|(line, _)| *line);
    (good, bad)
}

/// One line: CSV `appid,refresh_token[,kind]` or a JSON object.
fn parse_line(line: usize, text: &str) -> anyhow::Result<Line> {
    let (appid, token, kind) = if text.starts_with('{') {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).context("not a JSON object")?;
        let field = |name: &str| -> anyhow::Result<Option<String>> {
            match object.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("{name} is {other}, not a string"),
            }
        };
        let fields = (
            field("authorizer_appid")?,
            field("authorizer_refresh_token")?,
            field("kind")?,
        );
        const KNOWN: [&str; 3] = ["authorizer_appid", "authorizer_refresh_token", "kind"];
        if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!("unknown field {unknown:?} (known: {})", KNOWN.join(", "));
        }
        fields
    } else {
        let fields = csv_fields(text)?;
        if fields.len() > 3 {
            bail!(
                "{} fields: expected appid,refresh_token[,kind]",
                fields.len()
            );
        }
        let mut fields = fields.into_iter();
        (fields.next(), fields.next(), fields.next())
    };
    let appid = AppId::parse(appid.as_deref().unwrap_or_default())?;
    let refresh_token = match token.as_deref() {
        None | Some("") => bail!("{appid}: no refresh token"),
        Some(token) => Secret::checked("the refresh token", token, MAX_REFRESH_TOKEN)
            .with_context(|| appid.to_string())?,
    };
    let kind = match kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some("mp") => Some(AppKind::Mp),
        Some("mini") => Some(AppKind::Mini),
        Some(other) => bail!(
            "{appid}: kind {:?}: an authorizer is mp (an official account) or mini (a mini \
             program)",
            other.chars().take(20).collect::<String>()
        ),
    };
    Ok(Line {
        line,
        appid,
        refresh_token,
        kind,
    })
}

/// The fields of a CSV line, trimmed. A line without quotes is split at its commas (building a
/// CSV reader a line costs more than the rest of an import of 100,000 lines); one with quotes is
/// read as CSV.
fn csv_fields(text: &str) -> anyhow::Result<Vec<String>> {
    if !text.contains('"') {
        return Ok(text.split(',').map(|f| f.trim().to_owned()).collect());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    reader.read_record(&mut record).context("not a CSV line")?;
    Ok(record.iter().map(str::to_owned).collect())
}

/// What to do with `line`, given the app stored under its appid (if any).
enum Plan {
    Add,
    Update,
    Done(Outcome),
}

fn plan(component: &AppId, line: &Line, stored: Option<&AppInfo>, update: bool) -> Plan {
    let Some(app) = stored else {
        return Plan::Add;
    };
    match &app.component {
        None => Plan::Done(Outcome::Refused(format!(
            "{} is stored as an app of its own (kind {}), not as an authorizer: left as it is",
            app.appid,
            app.kind.as_str()
        ))),
        Some(other) if other != component => Plan::Done(Outcome::Refused(format!(
            "{} is stored as an authorizer of {other}: left as it is",
            app.appid
        ))),
        Some(_) => {
            if let Some(kind) = line.kind
                && kind != app.kind
            {
                return Plan::Done(Outcome::Refused(format!(
                    "{} is stored as kind {}, and this line says {}: left as it is (remove it \
                     first to add it again)",
                    app.appid,
                    app.kind.as_str(),
                    kind.as_str()
                )));
            }
            if let Some(at) = app.revoked_at {
                return Plan::Done(Outcome::Skipped(format!(
                    "{} withdrew its authorization at {}: it comes back when it authorizes again",
                    app.appid,
                    at.to_rfc3339()
                )));
            }
            if update {
                Plan::Update
            } else {
                Plan::Done(Outcome::Present)
            }
        }
    }
}

pub(crate) async fn run(args: ImportAuthorizersArgs) -> anyhow::Result<()> {
    let component = AppId::parse(&args.component).context("--component")?;
    let text = read_input(&args.file)?;
    let (lines, bad) = parse(&text);
    if lines.is_empty() && bad.is_empty() {
        bail!("{} holds no authorizers", args.file.display());
    }
    let settings = args.db.settings()?;
    let store = args.db.installed(&settings).await?;
    crate::apps::check_component(&store, &component).await?;
    if !args.check {
        // Stored secrets encrypted but no master key here: refuse rather than store plain ones.
        store.prepare_secrets().await?;
    }
    let stored: HashMap<AppId, AppInfo> = store
        .apps()
        .await
        .context("reading the stored apps")?
        .into_iter()
        .map(|app| (app.appid.clone(), app))
        .collect();
    let engine = crate::apps::engine(store, &settings)?;
    let mut outcomes: Vec<(usize, AppId, Outcome)> = Vec::new();
    let (mut adds, mut updates) = (Vec::new(), Vec::new());
    for line in lines {
        match plan(&component, &line, stored.get(&line.appid), args.update) {
            Plan::Done(outcome) => outcomes.push((line.line, line.appid.clone(), outcome)),
            Plan::Add if args.check => outcomes.push((line.line, line.appid, Outcome::Added)),
            Plan::Update if args.check => outcomes.push((line.line, line.appid, Outcome::Updated)),
            Plan::Add => adds.push(line),
            Plan::Update => updates.push((line, true)),
        }
    }
    drop(stored);
    // New authorizers a thousand a transaction: 100,000 one by one take many minutes of round
    // trips and commits. A batch that fails (an app added meanwhile by a server or another
    // import) is added line by line instead, which tells which line it was.
    let mut retry = Vec::new();
    let mut adds = adds.into_iter().peekable();
    while adds.peek().is_some() {
        let batch: Vec<Line> = adds.by_ref().take(BATCH).collect();
        let apps: Vec<NewApp> = batch.iter().map(|l| authorizer(&component, l)).collect();
        match engine
            .store()
            .insert_authorizers(&component, &apps, engine.now())
            .await
        {
            Ok(()) => outcomes.extend(
                batch
                    .into_iter()
                    .map(|line| (line.line, line.appid, Outcome::Added)),
            ),
            Err(_) => retry.extend(batch.into_iter().map(|line| (line, false))),
        }
    }
    // Eight at a time, as `import` does.
    let written: Vec<(usize, AppId, Outcome)> =
        futures::stream::iter(retry.into_iter().chain(updates))
            .map(|(line, update)| write(&engine, &component, line, update, args.update))
            .buffer_unordered(8)
            .collect()
            .await;
    outcomes.extend(written);
    outcomes.sort_by_key(|(line, _, _)| *line);
    report(&args, &bad, &outcomes)
}

/// Writes one line: adds the authorizer, or replaces its refresh token. An app that appeared
/// meanwhile (another import, a server's authorization event) is compared as stored now.
async fn write(
    engine: &Engine,
    component: &AppId,
    line: Line,
    update: bool,
    may_update: bool,
) -> (usize, AppId, Outcome) {
    let outcome = if update {
        replace(engine, &line).await
    } else {
        match engine.add_app(&authorizer(component, &line)).await {
            Ok(()) => Outcome::Added,
            Err(Error::DuplicateApp(_)) => match engine.store().app_info(&line.appid).await {
                Ok(stored) => match plan(component, &line, stored.as_ref(), may_update) {
                    Plan::Done(outcome) => outcome,
                    Plan::Update => replace(engine, &line).await,
                    Plan::Add => Outcome::Refused(format!(
                        "{} was added and removed while this ran: run the import again",
                        line.appid
                    )),
                },
                Err(e) => Outcome::Refused(format!("{}: {}", line.appid, e.chain())),
            },
            Err(e) => Outcome::Refused(format!("adding {}: {}", line.appid, e.chain())),
        }
    };
    (line.line, line.appid, outcome)
}

/// Replaces a stored authorizer's refresh token, unless it is the one stored already.
async fn replace(engine: &Engine, line: &Line) -> Outcome {
    match engine.store().app(&line.appid).await {
        Ok(Some(app)) if app.secret == line.refresh_token => {
            return Outcome::Unchanged;
        }
        Ok(_) => {}
        // A refresh token that does not decrypt is replaced below, which is what mends it.
        Err(Error::Secret(_)) => {}
        Err(e) => return Outcome::Refused(format!("reading {}: {}", line.appid, e.chain())),
    }
    let update = AppUpdate {
        secret: Some(line.refresh_token.clone()),
        ..AppUpdate::default()
    };
    match engine.update_app(&line.appid, &update).await {
        Ok(()) => Outcome::Updated,
        Err(e) => Outcome::Refused(format!("updating {}: {}", line.appid, e.chain())),
    }
}

/// The new authorizer a line stands for.
fn authorizer(component: &AppId, line: &Line) -> NewApp {
    NewApp {
        kind: line.kind.unwrap_or(AppKind::Mp),
        component: Some(component.clone()),
        ..NewApp::mp(line.appid.clone(), line.refresh_token.clone())
    }
}

/// Prints every line refused or skipped for a reason of its own, how many were stored already,
/// and the totals; fails if any line was refused.
fn report(
    args: &ImportAuthorizersArgs,
    bad: &[(usize, String)],
    outcomes: &[(usize, AppId, Outcome)],
) -> anyhow::Result<()> {
    let (mut added, mut updated, mut skipped, mut refused) = (0, 0, 0, bad.len());
    let (mut present, mut unchanged) = (0, 0);
    let mut notes: Vec<(usize, String)> = bad
        .iter()
        .map(|(line, why)| (*line, format!("line {line}: refused: {why}")))
        .collect();
    for (line, _, outcome) in outcomes {
        match outcome {
            Outcome::Added => added += 1,
            Outcome::Updated => updated += 1,
            Outcome::Present => present += 1,
            Outcome::Unchanged => unchanged += 1,
            Outcome::Skipped(why) => {
                skipped += 1;
                notes.push((*line, format!("line {line}: skipped: {why}")));
            }
            Outcome::Refused(why) => {
                refused += 1;
                notes.push((*line, format!("line {line}: refused: {why}")));
            }
        }
    }
    notes.sort_by_key(|(line, _)| *line);
    for (_, note) in &notes {
        println!("{note}");
    }
    if present > 0 {
        println!(
            "{present} authorizers are stored already and were left as they are (--update \
             replaces their refresh tokens)"
        );
    }
    if unchanged > 0 {
        println!("{unchanged} authorizers are stored already with the same refresh token");
    }
    skipped += present + unchanged;
    let (add, update) = if args.check {
        ("would add", "would update")
    } else {
        ("added", "updated")
    };
    println!(
        "{add} {added}, {update} {updated}, skipped {skipped}, refused {refused} authorizers of {}",
        args.component
    );
    if args.check {
        println!("nothing was written (--check)");
    } else if added > 0 {
        println!(
            "the servers fetch the new authorizers' tokens: each is due at once, once {} has its \
             component_verify_ticket",
            args.component
        );
    }
    if refused > 0 {
        bail!(
            "{refused} lines were refused and nothing of them was written; the others were{} \
             (running the import again with the refused lines mended adds them, and skips the \
             rest)",
            if args.check { " checked" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_one_by_one_and_duplicates_refused_whole() {
        let text = "appid,refresh_token,kind\n\
                    wxa,rt-a\n\
                    \n\
                    # a comment\n\
                    wxb,rt-b,mini\n\
                    {\"authorizer_appid\":\"wxc\",\"authorizer_refresh_token\":\"rt-c\",\"kind\":\"mp\"}\n\
                    wx/bad,rt\n\
                    wxd,\n\
                    wxe,rt,work\n\
                    wxf,rt,mp,extra\n\
                    {\"authorizer_appid\":\"wxg\",\"refresh_token\":\"rt\"}\n\
                    wxdup,one\n\
                    wxdup,two\n\
                    \"wxq\",\"rt,q\",mini\n";
        let (good, bad) = parse(text);
        let good: Vec<(usize, &str, Option<AppKind>)> = good
            .iter()
            .map(|l| (l.line, l.appid.as_str(), l.kind))
            .collect();
        assert_eq!(
            good,
            [
                (2, "wxa", None),
                (5, "wxb", Some(AppKind::Mini)),
                (6, "wxc", Some(AppKind::Mp)),
                (14, "wxq", Some(AppKind::Mini))
            ]
        );
        let bad: Vec<usize> = bad.iter().map(|(line, _)| *line).collect();
        assert_eq!(bad, [7, 8, 9, 10, 11, 12, 13]);
        let (_, bad) = parse(text);
        for (line, says) in [
            (7, "malformed appid"),
            (8, "no refresh token"),
            (9, "kind \"work\""),
            (10, "4 fields"),
            (11, "unknown field \"refresh_token\""),
            (12, "appears on line 13 too"),
            (13, "appears on line 12 too"),
        ] {
            let why = &bad.iter().find(|(l, _)| *l == line).unwrap().1;
            assert!(why.contains(says), "line {line}: {why}");
        }
    }
}
