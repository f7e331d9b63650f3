//! `cargo xtask fuzz [--secs N] [TARGET…]`: runs each cargo-fuzz target in `fuzz/` for a bounded
//! time and says what it did.
//!
//! cargo-fuzz needs nightly-only compiler flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain
//! accept them, so no nightly is needed. Install it once with `cargo install cargo-fuzz`.
//! The targets run without a sanitizer (`-s none`): everything they reach is safe Rust, so what a
//! fuzzer can find is a panic (an unwrap, an index, an overflow under debug assertions, a broken
//! invariant the target asserts), and building without AddressSanitizer takes half the time.
//!
//! Each target's body is a plain function (`wetoken_server::fuzz`, `wetoken_registry::fuzz`, `wetoken_core::fuzz`) that
//! a proptest also runs in `cargo test`; this is the longer, coverage-guided run. Not part of CI.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The targets, each with the seed inputs it starts from (in `fuzz/seeds/<target>`).
pub const TARGETS: [&str; 4] = ["route", "dsn", "node", "msgcrypt"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut secs = 20u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                secs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--secs takes a number of seconds")?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => bail!(
                "unknown argument {other:?}: usage cargo xtask fuzz [--secs N] [{}]",
                TARGETS.join("|")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fuzz_dir = root.join("fuzz");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        bail!("cargo-fuzz is not installed: cargo install cargo-fuzz");
    }
    let mut failed = Vec::new();
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = fuzz_dir.join("seeds").join(target);
        println!("fuzz {target}: {secs} s");
        let output = Command::new(&cargo)
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-print_final_stats=1",
                "-max_len=4096",
            ])
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map_or("?".to_owned(), |v| v.trim().to_owned())
        };
        let corpus_size = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
        println!(
            "fuzz {target}: {} executions, {} per second, coverage {} edges, corpus {corpus_size} inputs: {}",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            log.lines()
                .rev()
                .find_map(|l| l.split(" cov: ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?"),
            if output.status.success() {
                "no failure"
            } else {
                "FAILED"
            }
        );
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (the input is under fuzz/artifacts/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}
