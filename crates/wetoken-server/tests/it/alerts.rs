//! The Prometheus alert rules shipped in `deploy/prometheus/`: promtool's checks and its unit
//! tests of them (`alerts.test.yaml`: each alert firing in its trouble, quiet when healthy), and
//! checks that they name only metrics, labels and label values a real server exports, and that
//! docs/operations.md lists exactly the alerts the file holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{TestDb, TestServer, mock_with, repo_file, settings, yaml_documents};

const RULES: &str = "deploy/prometheus/alerts.yaml";

/// promtool, from Debian's `prometheus` package (`.ci/run` installs it).
fn promtool() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
}

fn run(command: &mut Command) {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let Some(promtool) = promtool() else {
        assert!(
            !wetoken_testkit::in_ci(),
            "CI must run promtool on the alert rules, but it is not installed (Debian's prometheus)"
        );
        wetoken_testkit::skip("the alert rules' promtool tests (promtool is not installed)");
        return;
    };
    let dir = repo_file("deploy/prometheus");
    run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yaml"])
        .current_dir(&dir));
    run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(&dir));
    // The scrape example, with the rules it loads. promtool insists that the key file it names
    // exists: check a copy that names one that does.
    let copy = std::env::temp_dir().join(format!("wetoken-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&copy).unwrap();
    let key_file = copy.join("wetoken-metrics-key");
    std::fs::write(&key_file, "a-metrics-key-0123456789\n").unwrap();
    let config = std::fs::read_to_string(dir.join("prometheus.yaml")).unwrap();
    const KEY_FILE: &str = "/etc/prometheus/wetoken-metrics-key";
    assert!(config.contains(KEY_FILE), "{config}");
    std::fs::write(
        copy.join("prometheus.yaml"),
        config.replace(KEY_FILE, key_file.to_str().unwrap()),
    )
    .unwrap();
    std::fs::copy(dir.join("alerts.yaml"), copy.join("alerts.yaml")).unwrap();
    run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yaml"])
        .current_dir(&copy));
    let _ = std::fs::remove_dir_all(copy);
}

/// Every rule of the file: its name (`alert`) and the rest as JSON.
fn rules() -> Vec<Value> {
    let docs = yaml_documents(RULES);
    let rules: Vec<Value> = docs[0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect();
    assert!(!rules.is_empty());
    rules
}

/// A metric name and its label matchers (`{state="halted"}`: `("state", "=", "halted")`).
type Selector = (String, Vec<(String, String, String)>);

/// The metric names in `text` that are wetoken's, each with the label matchers that follow it.
fn selectors(text: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("wetoken_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        if let Some(inner) = tail[end..].strip_prefix('{') {
            let inner = &inner[..inner.find('}').expect("a closing brace")];
            for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let op_at = matcher.find(['=', '!']).expect("an operator");
                let (label, op_value) = matcher.split_at(op_at);
                let op_len = op_value.find('"').expect("a quoted value");
                let (op, value) = op_value.split_at(op_len);
                matchers.push((
                    label.trim().to_owned(),
                    op.to_owned(),
                    value.trim_matches('"').to_owned(),
                ));
            }
        }
        found.push((name, matchers));
        rest = &tail[end..];
    }
    found
}

/// The label names of every `by (…)` in `expr`.
fn grouped_by(expr: &str) -> BTreeSet<String> {
    expr.match_indices("by (")
        .flat_map(|(at, by)| {
            let inner = &expr[at + by.len()..];
            inner[..inner.find(')').expect("a closing parenthesis")]
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A scrape as metric name → the label sets of its samples; a metric with a `# TYPE` line and
/// no sample (a per-app gauge with no app to name) has none.
fn exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut metrics: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let name = typed.split(' ').next().unwrap_or_default();
            metrics.entry(name.to_owned()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        metrics.entry(name.to_owned()).or_default().push(labels);
    }
    metrics
}

/// The rules use names a server really exports: each metric, each label they group by, and
/// each label value they match on, as a server scrapes with its default settings (and an app
/// in it). A metric renamed or a state renamed in the server, or mistyped in the rules, would
/// leave an alert that can never fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_name_what_a_server_exports() {
    let database = TestDb::sqlite().await;
    let mock = mock_with(&["wxrules0001"]).await;
    let server = TestServer::start(settings(&database, &mock)).await;
    server.add_app("wxrules0001").await;
    server.token("wxrules0001").await;
    let scraped = exposition(&server.text("/metrics").await);
    server.stop().await;
    database.drop_db().await;

    let mut checked = 0;
    for rule in rules() {
        let alert = rule["alert"].as_str().expect("an alert name");
        let expr = rule["expr"].as_str().expect("an expr");
        let mut labels_here = BTreeSet::new();
        for (name, matchers) in selectors(expr) {
            let samples = scraped
                .get(&name)
                .unwrap_or_else(|| panic!("{alert}: a server exports no {name}"));
            labels_here.extend(samples.iter().flat_map(|s| s.keys().cloned()));
            for (label, op, value) in matchers {
                if op == "=" || op == "!=" {
                    assert!(
                        samples.iter().any(|s| s.get(&label) == Some(&value)),
                        "{alert}: no {name} sample has {label}=\"{value}\": {samples:?}"
                    );
                }
            }
            checked += 1;
        }
        for label in grouped_by(expr) {
            assert!(
                labels_here.contains(&label),
                "{alert}: groups by {label}, which its metrics do not carry ({labels_here:?})"
            );
        }
        // Metrics the annotations point an operator to exist too.
        for text in rule["annotations"].as_object().into_iter().flatten() {
            for (name, _) in selectors(text.1.as_str().unwrap_or_default()) {
                assert!(scraped.contains_key(&name), "{alert}'s text names {name}");
            }
        }
    }
    assert!(checked >= 8, "{checked} selectors checked");
}

/// docs/operations.md's "Alerts" lists the alerts of the file, no fewer and no more.
#[test]
fn the_operations_guide_lists_the_shipped_alerts() {
    let guide = std::fs::read_to_string(repo_file("docs/operations.md")).unwrap();
    let section = guide
        .split_once("\n## Alerts\n")
        .expect("an Alerts section")
        .1;
    let section = section.split_once("\n## ").map_or(section, |(s, _)| s);
    assert!(
        section.contains(RULES),
        "the section points to the file: {section}"
    );
    let documented: BTreeSet<&str> = section
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("Wetoken") && w.len() > "Wetoken".len())
        .collect();
    let shipped = rules();
    let shipped: BTreeSet<&str> = shipped
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(documented, shipped);
}
