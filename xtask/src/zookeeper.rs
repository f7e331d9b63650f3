//! `cargo xtask zookeeper start|stop` and `cargo xtask test`: the ZooKeeper the tests use.
//!
//! The registry tests need a ZooKeeper at `WETOKEN_TEST_ZK` (default `127.0.0.1:2181`). `start`
//! leaves one that already answers alone; otherwise it starts Debian's `zookeeper` package as a
//! standalone server on 127.0.0.1:2181, with its configuration and data under
//! `target/zookeeper/`, through the package's own `zkServer.sh start` (which daemonizes), and
//! waits until it answers `ruok`. Where the package is missing and this runs as root, it installs
//! it with apt-get first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const ADDRESS: &str = "127.0.0.1:2181";
const ZK_SERVER: &str = "/usr/share/zookeeper/bin/zkServer.sh";

/// Whether a ZooKeeper at `address` answers `ruok` with `imok`.
fn answers(address: &SocketAddr) -> bool {
    let ask = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"ruok")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    ask().is_ok_and(|answer| answer == "imok")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn config_file() -> PathBuf {
    workspace().join("target/zookeeper/zoo.cfg")
}

/// Makes sure the package is there, installing it when we may.
fn install() -> anyhow::Result<()> {
    if Path::new(ZK_SERVER).exists() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        bail!(
            "{ZK_SERVER} is missing: install Debian's zookeeper package (apt-get install zookeeper)"
        );
    }
    eprintln!("installing Debian's zookeeper package");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "zookeeper"],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed", args.join(" "));
        }
    }
    Ok(())
}

/// `cargo xtask zookeeper start`.
pub fn start() -> anyhow::Result<()> {
    let address: SocketAddr = ADDRESS.parse().expect("a socket address");
    if answers(&address) {
        println!("zookeeper: answering on {ADDRESS}");
        return Ok(());
    }
    install()?;
    let config = config_file();
    let dir = config.parent().expect("a parent");
    std::fs::create_dir_all(dir.join("data")).context("creating target/zookeeper")?;
    // A short tick lets tests ask for sessions of a second or two (ZooKeeper allows 2 to 20
    // ticks); four-letter words are off by default, and the readiness check needs ruok.
    let text = format!(
        "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort=2181\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat\nmaxClientCnxns=0\n",
        dir.join("data").display()
    );
    std::fs::write(&config, text).context("writing target/zookeeper/zoo.cfg")?;
    let status = Command::new(ZK_SERVER)
        .arg("start")
        .arg(&config)
        .status()
        .with_context(|| format!("running {ZK_SERVER}"))?;
    if !status.success() {
        bail!("{ZK_SERVER} start failed; see /var/log/zookeeper");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(&address) {
        if Instant::now() > deadline {
            bail!("ZooKeeper did not answer ruok on {ADDRESS} within 60 s; see /var/log/zookeeper");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("zookeeper: started on {ADDRESS} (stop it with cargo xtask zookeeper stop)");
    Ok(())
}

/// `cargo xtask zookeeper stop`: stops the server `start` started.
pub fn stop() -> anyhow::Result<()> {
    let config = config_file();
    if !config.exists() {
        bail!("no ZooKeeper was started from this workspace");
    }
    let status = Command::new(ZK_SERVER)
        .arg("stop")
        .arg(&config)
        .status()
        .with_context(|| format!("running {ZK_SERVER}"))?;
    if !status.success() {
        bail!("{ZK_SERVER} stop failed");
    }
    Ok(())
}

/// `cargo xtask test [ARGS]`: a ZooKeeper for the registry tests (unless `WETOKEN_TEST_ZK`
/// points elsewhere or is `off`), then `cargo test --workspace ARGS`.
pub fn test(args: &[String]) -> anyhow::Result<bool> {
    if std::env::var_os("WETOKEN_TEST_ZK").is_none() {
        start()?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace"])
        .args(args)
        .status()
        .context("running cargo test")?;
    Ok(status.success())
}
