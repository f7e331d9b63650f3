//! The deployment manifests (`deploy/kubernetes/*.yaml`, `deploy/compose.yaml`) checked for
//! what can break a deploy and what the docs promise of them: a schema check of our own, as no
//! Kubernetes validator installs from a registry CI reaches.
//!
//! The checks return every problem they find, so `every_check_can_fail` breaks the manifests
//! one field at a time (in memory) and expects each check to say so; the real server answers the
//! probes and the compose health check (`probes_and_health_checks_reach_a_real_server`).

use std::collections::BTreeMap;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde_json::{Value, json};
use wetoken_server::Settings;

use crate::harness::{
    TestDb, TestServer, free_port, mock_with, repo_file, settings, yaml_documents,
};

/// Every Kubernetes document of `deploy/kubernetes/`.
fn kubernetes() -> Vec<Value> {
    let dir = repo_file("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .iter()
        .flat_map(|f| yaml_documents(&format!("deploy/kubernetes/{f}")))
        .filter(|d| !d.is_null())
        .collect()
}

fn compose() -> Value {
    yaml_documents("deploy/compose.yaml").remove(0)
}

/// The API groups and kinds a manifest may use: the stable ones a plain cluster serves.
const KNOWN_KINDS: [(&str, &str); 9] = [
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
];

/// What the probes must ask: the routes the server answers for them (`docs/api.md`, "Health").
const READINESS_PATH: &str = "/ready";
const LIVENESS_PATH: &str = "/live";

/// A Kubernetes object name: a DNS-1123 label.
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether an image reference names one build: a digest, or a tag other than `latest`.
fn pinned(image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':')
        .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

/// Why a `WETOKEN_*` variable would not start the server: a name that is no setting, or a value
/// its setting does not take (`value` is `None` when it comes from elsewhere, as `valueFrom`).
/// Other names are not the server's, and not checked.
fn env_problem(name: &str, value: Option<&str>) -> Option<String> {
    let rest = name.strip_prefix(wetoken_server::ENV_PREFIX)?;
    // The log filter shares the prefix (README, docs/operations.md).
    if rest == "LOG" {
        return None;
    }
    let path = rest.to_ascii_lowercase().replace("__", ".");
    let parsed: figment::value::Value = value.unwrap_or("0").parse().unwrap();
    let extracted = Figment::from(Serialized::defaults(Settings::default()))
        .merge(Serialized::default(&path, parsed))
        .extract::<Settings>();
    let err = extracted.err()?;
    let unknown = err
        .clone()
        .into_iter()
        .any(|e| matches!(e.kind, figment::error::Kind::UnknownField(..)));
    if unknown {
        Some(format!("{name} is not a setting the server knows"))
    } else {
        value.map(|v| format!("{name}={v:?} is not a value the setting takes: {err}"))
    }
}

/// Settings from a `wetoken.toml`, as the server reads its file: over the defaults, and no key
/// it does not know.
fn settings_from_toml(toml: &str) -> Result<Settings, String> {
    Figment::from(Serialized::defaults(Settings::default()))
        .merge(Toml::string(toml))
        .extract()
        .map_err(|e| e.to_string())
}

/// The labels a selector's `matchLabels` (or a Service's plain selector) asks for, missing from
/// `labels`.
fn unmatched(selector: &Value, labels: &Value) -> Vec<String> {
    match selector.as_object() {
        None => vec!["no selector".into()],
        Some(s) if s.is_empty() => vec!["an empty selector".into()],
        Some(s) => s
            .iter()
            .filter(|(k, v)| labels.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    }
}

/// Everything wrong with a set of Kubernetes documents, one line a problem.
fn kubernetes_problems(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut say = |what: String| problems.push(what);
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    };
    let mut pod_labels = Vec::new();
    for doc in docs {
        let (api, kind) = (
            doc["apiVersion"].as_str().unwrap_or_default(),
            doc["kind"].as_str().unwrap_or_default(),
        );
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let it = format!("{kind} {name:?}");
        if !KNOWN_KINDS.contains(&(api, kind)) {
            say(format!("{it}: unknown apiVersion/kind {api}/{kind}"));
        }
        if !dns_label(name) {
            say(format!("{it}: metadata.name is not a DNS-1123 label"));
        }
        if kind == "ConfigMap"
            && let Some(toml) = doc["data"]["wetoken.toml"].as_str()
            && let Err(e) = settings_from_toml(toml)
        {
            say(format!(
                "{it}: wetoken.toml is not settings the server takes: {e}"
            ));
        }
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let spec = &doc["spec"];
        let template = &spec["template"];
        let labels = &template["metadata"]["labels"];
        for label in unmatched(&spec["selector"]["matchLabels"], labels) {
            say(format!(
                "{it}: the selector's {label} is not on the pod template"
            ));
        }
        pod_labels.push(labels.clone());
        let pod = &template["spec"];
        if pod["enableServiceLinks"] != json!(false) {
            say(format!(
                "{it}: enableServiceLinks must be false (service link variables share WETOKEN_)"
            ));
        }
        // The settings the pod starts with: the ConfigMap it mounts (by --config), and the
        // environment.
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            say(format!("{it}: no containers"));
        }
        for container in &containers {
            let cname = container["name"].as_str().unwrap_or_default();
            let at = format!("{it} container {cname:?}");
            if cname.is_empty() {
                say(format!("{it}: a container without a name"));
            }
            match container["image"].as_str() {
                None | Some("") => say(format!("{at}: no image")),
                Some(image) if !pinned(image) => {
                    say(format!(
                        "{at}: image {image} is not pinned to a tag or digest"
                    ));
                }
                Some(_) => {}
            }
            // The environment: env, and every key of the Secrets and ConfigMaps in envFrom.
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().unwrap_or_default();
                if let Some(problem) = env_problem(name, var["value"].as_str()) {
                    say(format!("{at}: {problem}"));
                }
            }
            for source in container["envFrom"].as_array().into_iter().flatten() {
                let (kind, reference) = if source["secretRef"].is_object() {
                    ("Secret", &source["secretRef"])
                } else {
                    ("ConfigMap", &source["configMapRef"])
                };
                let rname = reference["name"].as_str().unwrap_or_default();
                let Some(object) = named(kind, rname) else {
                    say(format!(
                        "{at}: envFrom names no {kind} {rname:?} of these manifests"
                    ));
                    continue;
                };
                for field in ["data", "stringData"] {
                    for (name, value) in object[field].as_object().into_iter().flatten() {
                        // data is base64: its value is not checked.
                        let value = (field == "stringData").then(|| value.as_str()).flatten();
                        if let Some(problem) = env_problem(name, value) {
                            say(format!("{at}: {kind} {rname:?}: {problem}"));
                        }
                    }
                }
            }
            // --config names a file of a ConfigMap the container mounts; its listen port is
            // the one the container declares.
            let args: Vec<&str> = container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut listen_port = None;
            let mut drain_and_shutdown = None;
            if let Some(config) = args
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| args.get(i + 1))
            {
                let mounted = container["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|m| {
                        let dir = m["mountPath"].as_str()?;
                        let file = config.strip_prefix(dir)?.strip_prefix('/')?;
                        let volume = pod["volumes"]
                            .as_array()?
                            .iter()
                            .find(|v| v["name"] == m["name"])?;
                        let map = named("ConfigMap", volume["configMap"]["name"].as_str()?)?;
                        map["data"][file].as_str()
                    });
                match mounted {
                    None => say(format!(
                        "{at}: --config {config} is no file of a ConfigMap it mounts"
                    )),
                    Some(toml) => {
                        if let Ok(s) = settings_from_toml(toml) {
                            listen_port = Some(s.listen.port());
                            drain_and_shutdown =
                                Some(s.http.drain_secs + s.http.shutdown_timeout_secs);
                        }
                    }
                }
            }
            let ports = container["ports"].as_array().cloned().unwrap_or_default();
            if let Some(port) = listen_port
                && !ports.iter().any(|p| p["containerPort"] == port)
            {
                say(format!(
                    "{at}: the server listens on {port}, a port the container does not declare"
                ));
            }
            for (probe, path) in [
                ("readinessProbe", READINESS_PATH),
                ("livenessProbe", LIVENESS_PATH),
            ] {
                let get = &container[probe]["httpGet"];
                if get["path"] != path {
                    say(format!("{at}: {probe} must ask {path} (httpGet.path)"));
                }
                let port = &get["port"];
                let declared = ports.iter().any(|p| {
                    (port.is_string() && p["name"] == *port) || p["containerPort"] == *port
                });
                if !declared {
                    say(format!(
                        "{at}: {probe}'s port {port} is not a declared port"
                    ));
                }
            }
            let pre_stop = &container["lifecycle"]["preStop"];
            if !pre_stop.is_object() {
                say(format!(
                    "{at}: no preStop hook (endpoints leave after SIGTERM)"
                ));
            }
            // docs/operations.md: the grace period covers the pause, the drain and the
            // shutdown timeout together.
            let pause = match pre_stop["exec"]["command"].as_array().map(Vec::as_slice) {
                Some([sleep, secs]) if sleep == "sleep" => {
                    secs.as_str().and_then(|s| s.parse().ok())
                }
                _ => pre_stop["sleep"]["seconds"].as_u64(),
            };
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            if let (Some(pause), Some(rest)) = (pause, drain_and_shutdown)
                && grace <= pause + rest
            {
                say(format!(
                    "{at}: terminationGracePeriodSeconds {grace} does not cover the preStop \
                     pause ({pause} s), drain_secs and shutdown_timeout_secs ({rest} s)"
                ));
            }
        }
    }
    for doc in docs {
        let it = format!("{} {:?}", doc["kind"], doc["metadata"]["name"]);
        let selector = match doc["kind"].as_str() {
            Some("Service") => &doc["spec"]["selector"],
            Some("PodDisruptionBudget") => &doc["spec"]["selector"]["matchLabels"],
            _ => continue,
        };
        if !pod_labels.iter().any(|l| unmatched(selector, l).is_empty()) {
            say(format!("{it}: its selector matches no pod template"));
        }
    }
    problems
}

/// Everything wrong with the compose file, one line a problem.
fn compose_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(services) = doc["services"].as_object() else {
        return vec!["no services".into()];
    };
    for (name, service) in services {
        let it = format!("service {name:?}");
        match service["image"].as_str() {
            Some(image) if !pinned(image) => {
                problems.push(format!(
                    "{it}: image {image} is not pinned to a tag or digest"
                ));
            }
            None if !service["build"].is_object() => {
                problems.push(format!("{it}: neither an image nor a build"));
            }
            _ => {}
        }
        for dependency in service["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|d| d.0)
        {
            if !services.contains_key(dependency) {
                problems.push(format!("{it}: depends on {dependency:?}, no service here"));
            }
        }
        let wetoken = service["build"].is_object()
            || service["image"]
                .as_str()
                .is_some_and(|i| i.contains("wetoken"));
        if !wetoken {
            continue;
        }
        let env: BTreeMap<String, Option<String>> = match &service["environment"] {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (kv.to_owned(), None),
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        for (var, value) in &env {
            // ${VAR:?…} is filled in by compose from the shell: only the name is checked.
            let literal = value.as_deref().filter(|v| !v.contains("${"));
            if let Some(problem) = env_problem(var, literal) {
                problems.push(format!("{it}: {problem}"));
            }
        }
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !matches!(test.as_slice(), ["CMD", "wetoken-server", "health", ..]) {
            problems.push(format!(
                "{it}: the healthcheck must run [\"CMD\", \"wetoken-server\", \"health\", …] \
                 (the image has no shell tools): {test:?}"
            ));
        }
        let listen = env
            .get("WETOKEN_LISTEN")
            .cloned()
            .flatten()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .map_or(9999, |a| a.port());
        for port in service["ports"].as_array().into_iter().flatten() {
            let inside = port
                .as_str()
                .and_then(|p| p.rsplit(':').next())
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<u16>().ok());
            if inside != Some(listen) {
                problems.push(format!(
                    "{it}: publishes {port}, but the server listens on {listen}"
                ));
            }
        }
    }
    problems
}

/// Everything wrong with the Dockerfile, one line a problem: its base images pinned, the port
/// it exposes the one the server listens on by default, and a health check and entry point that
/// run the server's own subcommands (the image has no shell tools).
fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect();
    let mut stages = Vec::new();
    let saw = |what: &str| instructions.iter().any(|(i, _)| i == what);
    for (instruction, rest) in &instructions {
        match instruction.as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let image = words
                    .iter()
                    .find(|w| !w.starts_with("--"))
                    .copied()
                    .unwrap_or("");
                if !stages.contains(&image) && !pinned(image) {
                    problems.push(format!("FROM {image}: not pinned to a tag or digest"));
                }
                if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                    stages.push(words.get(i + 1).copied().unwrap_or(""));
                }
            }
            "EXPOSE" => {
                let port = Settings::default().listen.port().to_string();
                if !rest
                    .split_whitespace()
                    .any(|p| p.split('/').next() == Some(port.as_str()))
                {
                    problems.push(format!(
                        "EXPOSE {rest}: the server listens on {port} by default"
                    ));
                }
            }
            "HEALTHCHECK" => {
                let command = rest.split_once("CMD ").map(|(_, c)| c.trim());
                if !command.is_some_and(|c| c.starts_with("[\"wetoken-server\", \"health\"")) {
                    problems.push(format!(
                        "HEALTHCHECK {rest}: must run [\"wetoken-server\", \"health\", …]"
                    ));
                }
            }
            "ENTRYPOINT" if !rest.starts_with("[\"wetoken-server\", \"start\"") => {
                problems.push(format!("ENTRYPOINT {rest}: must run wetoken-server start"));
            }
            _ => {}
        }
    }
    for needed in ["HEALTHCHECK", "ENTRYPOINT", "EXPOSE"] {
        if !saw(needed) {
            problems.push(format!("no {needed}"));
        }
    }
    problems
}

#[test]
fn the_dockerfile_passes_its_checks() {
    let text = std::fs::read_to_string(repo_file("deploy/Dockerfile")).unwrap();
    let problems = dockerfile_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    for (from, to, says) in [
        ("FROM debian:bookworm-slim", "FROM debian", "not pinned"),
        (
            "FROM rust:1.95-bookworm AS build",
            "FROM rust:latest AS build",
            "not pinned",
        ),
        ("EXPOSE 9999", "EXPOSE 8080", "listens on 9999"),
        (
            "CMD [\"wetoken-server\", \"health\", \"--ready\"]",
            "CMD curl -f localhost:9999/ready",
            "must run [\"wetoken-server\", \"health\"",
        ),
        ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
        (
            "ENTRYPOINT [\"wetoken-server\", \"start\"",
            "ENTRYPOINT [\"sh\", \"-c\"",
            "must run wetoken-server start",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = text.replacen(from, to, 1);
        let problems = dockerfile_problems(&broken);
        assert!(
            problems.iter().any(|p| p.contains(says)),
            "{from} -> {to}: expected {says:?} in {problems:#?}"
        );
    }
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_check() {
    let problems = kubernetes_problems(&kubernetes());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_compose_file_passes_the_schema_check() {
    let problems = compose_problems(&compose());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A path into a JSON value (object keys, array indexes as digits), for the breaks below.
fn at<'a>(doc: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.')
        .fold(doc, |v, part| match part.parse::<usize>() {
            Ok(i) => &mut v[i],
            Err(_) => &mut v[part],
        })
}

/// Each check says so when the field it checks is broken: one break at a time, in memory.
#[test]
fn every_check_can_fail() {
    let good = kubernetes();
    let index = |kind: &str| good.iter().position(|d| d["kind"] == kind).unwrap();
    let (config, secret, deployment, service, budget) = (
        index("ConfigMap"),
        index("Secret"),
        index("Deployment"),
        index("Service"),
        index("PodDisruptionBudget"),
    );
    let container = "spec.template.spec.containers.0";
    let breaks: Vec<(usize, String, Value, &str)> = vec![
        (
            deployment,
            "apiVersion".into(),
            json!("apps/v1beta1"),
            "unknown apiVersion/kind",
        ),
        (
            service,
            "kind".into(),
            json!("Servce"),
            "unknown apiVersion/kind",
        ),
        (
            deployment,
            "metadata.name".into(),
            Value::Null,
            "not a DNS-1123 label",
        ),
        (
            config,
            "metadata.name".into(),
            json!("Wetoken_Config"),
            "not a DNS-1123 label",
        ),
        (
            deployment,
            "spec.selector.matchLabels.app".into(),
            json!("wetoken-other"),
            "not on the pod template",
        ),
        (
            deployment,
            "spec.template.spec.containers".into(),
            json!([]),
            "no containers",
        ),
        (
            deployment,
            format!("{container}.name"),
            Value::Null,
            "without a name",
        ),
        (
            deployment,
            format!("{container}.image"),
            Value::Null,
            "no image",
        ),
        (
            deployment,
            format!("{container}.image"),
            json!("wetoken"),
            "not pinned",
        ),
        (
            deployment,
            format!("{container}.image"),
            json!("wetoken:latest"),
            "not pinned",
        ),
        (
            deployment,
            format!("{container}.image"),
            json!("registry.local:5000/wetoken"),
            "not pinned",
        ),
        (
            deployment,
            "spec.template.spec.enableServiceLinks".into(),
            Value::Null,
            "enableServiceLinks",
        ),
        (
            deployment,
            format!("{container}.lifecycle"),
            Value::Null,
            "no preStop hook",
        ),
        (
            deployment,
            format!("{container}.readinessProbe.httpGet.path"),
            json!("/health"),
            "readinessProbe must ask /ready",
        ),
        (
            deployment,
            format!("{container}.livenessProbe.httpGet.path"),
            json!("/healthz/live"),
            "livenessProbe must ask /live",
        ),
        (
            deployment,
            format!("{container}.livenessProbe.httpGet.port"),
            json!("metrics"),
            "not a declared port",
        ),
        (
            deployment,
            format!("{container}.ports.0.containerPort"),
            json!(8080),
            "a port the container does not declare",
        ),
        (
            deployment,
            format!("{container}.args.1"),
            json!("/etc/wetoken/other.toml"),
            "no file of a ConfigMap it mounts",
        ),
        (
            deployment,
            format!("{container}.env"),
            json!([{"name": "WETOKEN_REFRESH_MARGIN_SECS", "value": "300"}]),
            "not a setting the server knows",
        ),
        (
            deployment,
            format!("{container}.env"),
            json!([{"name": "WETOKEN_HTTP__DRAIN_SECS", "value": "soon"}]),
            "not a value the setting takes",
        ),
        (
            secret,
            "stringData.WETOKEN_ADMIN_TOKEN".into(),
            json!("x"),
            "not a setting the server knows",
        ),
        (
            config,
            "data.wetoken\\.toml".into(),
            Value::Null,
            "no file of a ConfigMap it mounts",
        ),
        (
            deployment,
            "spec.template.spec.terminationGracePeriodSeconds".into(),
            json!(15),
            "does not cover the preStop",
        ),
        (
            service,
            "spec.selector.app".into(),
            json!("other"),
            "matches no pod template",
        ),
        (
            budget,
            "spec.selector.matchLabels".into(),
            json!({}),
            "matches no pod template",
        ),
    ];
    for (doc, path, value, says) in breaks {
        let mut docs = good.clone();
        if path == "data.wetoken\\.toml" {
            // A key with a dot: replaced whole, as a ConfigMap without that file.
            docs[doc]["data"] = json!({"other.toml": "listen = \"0.0.0.0:9999\""});
        } else {
            *at(&mut docs[doc], &path) = value.clone();
        }
        let problems = kubernetes_problems(&docs);
        assert!(
            problems.iter().any(|p| p.contains(says)),
            "{path} = {value}: expected a problem saying {says:?}, got {problems:#?}"
        );
    }
    // The ConfigMap's settings are read as the server reads them.
    let mut docs = good.clone();
    let toml = docs[config]["data"]["wetoken.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    docs[config]["data"]["wetoken.toml"] = json!(format!("{toml}\nlisten_port = 9999\n"));
    let problems = kubernetes_problems(&docs);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not settings the server takes")),
        "{problems:#?}"
    );

    let good = compose();
    let breaks: Vec<(&str, Value, &str)> = vec![
        ("services.mariadb.image", json!("mariadb"), "not pinned"),
        (
            "services.mariadb.image",
            json!("mariadb:latest"),
            "not pinned",
        ),
        (
            "services.wetoken-1.build",
            Value::Null,
            "neither an image nor a build",
        ),
        (
            "services.wetoken-1.depends_on",
            json!({"mysql": {"condition": "service_healthy"}}),
            "no service here",
        ),
        (
            "services.wetoken-1.healthcheck.test",
            json!(["CMD-SHELL", "echo > /dev/tcp/127.0.0.1/9999"]),
            "the healthcheck must run",
        ),
        (
            "services.wetoken-2.healthcheck",
            json!({"test": ["CMD", "curl", "-f", "localhost:9999/ready"]}),
            "the healthcheck must run",
        ),
        (
            "services.wetoken-1.environment.WETOKEN_ADMINKEY",
            json!("x"),
            "not a setting the server knows",
        ),
        (
            "services.wetoken-1.environment.WETOKEN_LISTEN",
            json!("0.0.0.0:8080"),
            "but the server listens on 8080",
        ),
    ];
    for (path, value, says) in breaks {
        let mut doc = good.clone();
        *at(&mut doc, path) = value.clone();
        let problems = compose_problems(&doc);
        assert!(
            problems.iter().any(|p| p.contains(says)),
            "{path} = {value}: expected a problem saying {says:?}, got {problems:#?}"
        );
    }
}

/// The probes' paths answer 200 on a real server, and the compose health check, run as
/// compose runs it (with the service's WETOKEN_LISTEN pointed at that server), exits 0; against
/// a port nothing listens on it exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_health_checks_reach_a_real_server() {
    let database = TestDb::sqlite().await;
    let mock = mock_with(&[]).await;
    let server = TestServer::start(settings(&database, &mock)).await;
    let docs = kubernetes();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    for container in deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = container[probe]["httpGet"]["path"].as_str().unwrap();
            let (status, body) = server.get(path).await;
            assert_eq!(status, 200, "{probe} {path}: {body}");
        }
    }
    let compose = compose();
    let test: Vec<String> = compose["services"]["wetoken-1"]["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&test[..2], ["CMD", "wetoken-server"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let unused = format!("127.0.0.1:{}", free_port());
    for (listen, healthy) in [(address.as_str(), true), (unused.as_str(), false)] {
        let mut command = crate::harness::server_command();
        command.args(&test[2..]).env("WETOKEN_LISTEN", listen);
        let status = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert_eq!(
            status.status.success(),
            healthy,
            "{listen}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    server.stop().await;
    database.drop_db().await;
}
