//! `cargo xtask`: the project's own chores, in Rust instead of shell scripts.
//!
//! - `cargo xtask tidy`: checks the architecture invariants of `docs/ARCHITECTURE.md` that a
//!   machine can check. It also runs as a test, so `cargo test --workspace` catches regressions.
//! - `cargo xtask bench [--apps N --replicas R --db postgres,mysql]` (or `--pages --apps N`: the
//!   listings, status page and scrape alone): the measurements of
//!   `docs/performance.md`.
//! - `cargo xtask test [ARGS]`: the README's test command: a ZooKeeper for the registry tests,
//!   then `cargo test --workspace ARGS`.
//! - `cargo xtask zookeeper start|stop`: that ZooKeeper alone.
//! - `cargo xtask fuzz [--secs N] [TARGET…]`: each cargo-fuzz target in `fuzz/` for N seconds
//!   (20 by default); see `fuzz.rs`.

use std::process::{Command, ExitCode};

mod bench;
mod fuzz;
mod scale;
mod zookeeper;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("ceiling") => {
            let mut args = std::env::args().skip(2);
            let port = args.next().and_then(|p| p.parse().ok());
            let size = args.next().and_then(|s| s.parse().ok());
            let (Some(port), Some(size)) = (port, size) else {
                eprintln!("usage: xtask ceiling PORT BODY_BYTES");
                return ExitCode::FAILURE;
            };
            match bench::serve_ceiling(port, size) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ceiling: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench") => match bench::run(&std::env::args().skip(2).collect::<Vec<_>>()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("fuzz") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            match fuzz::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fuzz: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("tidy") => match tidy() {
            Ok(()) => {
                println!("tidy: ok");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("tidy: {p}");
                }
                ExitCode::FAILURE
            }
        },
        Some("test") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            match zookeeper::test(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("test: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("zookeeper") => {
            let result = match std::env::args().nth(2).as_deref() {
                Some("start") => zookeeper::start(),
                Some("stop") => zookeeper::stop(),
                _ => Err(anyhow::anyhow!("usage: cargo xtask zookeeper start|stop")),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zookeeper: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: cargo xtask tidy|bench [--apps N --replicas R --db postgres,mysql]|test|zookeeper|fuzz [--secs N]"
            );
            ExitCode::FAILURE
        }
    }
}

/// Crates a package must not depend on, directly or not (normal dependencies only).
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The engine knows nothing of serving HTTP or of command lines. (It does use hyper through
    // reqwest, as an HTTP client; see `DIRECT_FORBIDDEN`.)
    (
        "wetoken-core",
        &[
            "clap",
            "figment",
            "wetoken-server",
            "wetoken-registry",
            "wetoken-cli",
            "wetoken-client",
            "wetoken-testkit",
        ],
    ),
    // Dependencies point one way: the CLI works on the database through the core, never
    // through the server; the server takes no CLI; only tests take the testkit.
    (
        "wetoken-cli",
        &["wetoken-server", "wetoken-client", "wetoken-testkit"],
    ),
    (
        "wetoken-server",
        &["wetoken-cli", "wetoken-client", "wetoken-testkit"],
    ),
    // The settings both binaries read: no server, no CLI, nothing a client may not have.
    (
        "wetoken-settings",
        &[
            "clap",
            "wetoken-server",
            "wetoken-cli",
            "wetoken-client",
            "wetoken-testkit",
        ],
    ),
    (
        "wetoken-migration",
        &["wetoken-core", "wetoken-server", "wetoken-registry"],
    ),
    // A service that only pulls tokens links nothing of the server or its database layer.
    (
        "wetoken-client",
        &[
            "sea-orm",
            "sqlx",
            "wetoken-core",
            "wetoken-server",
            "wetoken-settings",
            "wetoken-migration",
            "figment",
            "clap",
        ],
    ),
    (
        "wetoken-wire",
        &[
            "reqwest",
            "hyper",
            "sea-orm",
            "tokio",
            "wetoken-core",
            "wetoken-server",
            "wetoken-client",
        ],
    ),
    // The registry reads configuration: it knows nothing of HTTP or the database layer.
    (
        "wetoken-registry",
        &[
            "hyper",
            "reqwest",
            "sea-orm",
            "sqlx",
            "wetoken-core",
            "wetoken-server",
        ],
    ),
];

/// Crates a package must not name as a direct dependency.
const DIRECT_FORBIDDEN: &[(&str, &[&str])] = &[
    ("wetoken-core", &["hyper", "hyper-util", "http-body-util"]),
    (
        "wetoken-settings",
        &["hyper", "hyper-util", "http-body-util"],
    ),
];

fn tree(package: &str, depth: Option<u32>) -> Result<Vec<String>, String> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args([
        "tree",
        "--offline",
        "-e",
        "normal",
        "--prefix",
        "none",
        "-f",
        "{p}",
        "-p",
        package,
    ]);
    if let Some(depth) = depth {
        command.args(["--depth", &depth.to_string()]);
    }
    let out = command
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

fn check(package: &str, forbidden: &[&str], depth: Option<u32>, problems: &mut Vec<String>) {
    match tree(package, depth) {
        Ok(deps) => {
            // A crate reached by several paths is listed once a path: report it once.
            let mut seen = std::collections::HashSet::new();
            for dep in deps.iter().skip(1) {
                if seen.insert(dep)
                    && forbidden
                        .iter()
                        .any(|f| dep == f || dep.starts_with(&format!("{f}-")))
                {
                    let how = if depth.is_some() { "directly " } else { "" };
                    problems.push(format!("{package} {how}depends on {dep}"));
                }
            }
        }
        Err(e) => problems.push(e),
    }
}

fn tidy() -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for (package, forbidden) in FORBIDDEN {
        check(package, forbidden, None, &mut problems);
    }
    for (package, forbidden) in DIRECT_FORBIDDEN {
        check(package, forbidden, Some(1), &mut problems);
    }
    problems.sort();
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        if let Err(problems) = super::tidy() {
            panic!("architecture invariants broken:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn tidy_can_fail() {
        let mut problems = Vec::new();
        super::check("wetoken-server", &["wetoken-core"], None, &mut problems);
        assert_eq!(problems, ["wetoken-server depends on wetoken-core"]);
    }
}
