//! `zk://host[:port][,host[:port]…][/chroot][?session_timeout_ms=N]`: Apache ZooKeeper.
//!
//! The chroot is kept by this module (every path is prefixed with it) rather than by the client,
//! so that writing a node can create the chroot as well as the node's other parents.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use zookeeper_client as zk;

use crate::RegistryError;

/// How long opening a registry waits for a ZooKeeper session, at the least: with several hosts
/// each is given `HOST_TIMEOUT` in turn, so the wait grows with the list.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one host may take to answer before the next is tried.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// The session timeout asked of ZooKeeper unless the URL says otherwise. ZooKeeper clamps it to
/// between 2 and 20 of its ticks.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect, and how.
#[derive(Clone)]
struct Target {
    url: String,
    hosts: String,
    chroot: String,
    session_timeout: Duration,
}

#[derive(Clone)]
pub(crate) struct ZkRegistry {
    target: Target,
    client: zk::Client,
}

/// Parses what follows `zk://`.
fn parse(url: &str, rest: &str) -> Result<Target, RegistryError> {
    let bad = |reason: String| RegistryError::Unsupported {
        registry: url.to_owned(),
        reason,
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, chroot) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hosts.is_empty() {
        return Err(bad(
            "zk:// needs at least one host, as zk://127.0.0.1:2181".into()
        ));
    }
    let mut list = Vec::new();
    for host in hosts.split(',') {
        if !host.starts_with('[') && host.matches(':').count() > 1 {
            return Err(bad(format!(
                "{host:?}: an IPv6 address goes in brackets, as [::1] or [::1]:2181"
            )));
        }
        let (name, port) = crate::host_port(host, 2181).ok_or_else(|| {
            bad(format!(
                "{host:?} is not host[:port] or [ipv6][:port] with a port from 1 to 65535"
            ))
        })?;
        list.push(format!("{name}:{port}"));
    }
    if !chroot.is_empty()
        && chroot[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad(format!("{chroot:?} is not a chroot path")));
    }
    let mut session_timeout = DEFAULT_SESSION_TIMEOUT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("session_timeout_ms", ms)) => {
                let ms: u64 = ms.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                    bad(format!(
                        "session_timeout_ms={ms:?} is not a positive number"
                    ))
                })?;
                session_timeout = Duration::from_millis(ms);
            }
            _ => {
                return Err(bad(format!(
                    "unknown parameter {pair:?}; only session_timeout_ms is known"
                )));
            }
        }
    }
    Ok(Target {
        url: url.to_owned(),
        hosts: list.join(","),
        chroot: chroot.to_owned(),
        session_timeout,
    })
}

impl Target {
    async fn connect(&self) -> Result<zk::Client, RegistryError> {
        let connecting = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(HOST_TIMEOUT)
            .with_fail_eagerly()
            .connect(&self.hosts);
        let hosts = self.hosts.split(',').count() as u32;
        let limit = CONNECT_TIMEOUT.max(HOST_TIMEOUT * hosts + Duration::from_secs(1));
        let unreachable = |cause: String| RegistryError::Unreachable {
            registry: self.url.clone(),
            cause,
        };
        match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(unreachable(format!(
                "cannot connect to {}: {e}",
                self.hosts
            ))),
            Err(_) => Err(unreachable(format!(
                "no ZooKeeper session with {} within {} s",
                self.hosts,
                limit.as_secs()
            ))),
        }
    }

    fn full(&self, path: &str) -> String {
        format!("{}{path}", self.chroot)
    }

    fn error(&self, path: &str, e: zk::Error) -> RegistryError {
        match e {
            zk::Error::ConnectionLoss
            | zk::Error::SessionExpired
            | zk::Error::Timeout
            | zk::Error::ClientClosed
            | zk::Error::NoHosts => RegistryError::Unreachable {
                registry: self.url.clone(),
                cause: format!("reading or writing {path}: {e}"),
            },
            e => RegistryError::Io {
                registry: self.url.clone(),
                path: path.to_owned(),
                cause: e.to_string(),
            },
        }
    }
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// Creates the parents of `full` (a chroot-prefixed path) as persistent nodes.
async fn make_parents(client: &zk::Client, full: &str) -> Result<(), zk::Error> {
    match full.rfind('/') {
        Some(0) | None => Ok(()),
        Some(i) => client.mkdir(&full[..i], &persistent()).await,
    }
}

impl ZkRegistry {
    pub(crate) async fn open(url: &str, rest: &str) -> Result<Self, RegistryError> {
        let target = parse(url, rest)?;
        let client = target.connect().await?;
        Ok(Self { target, client })
    }

    pub(crate) async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match self.client.get_data(&self.target.full(path)).await {
            Ok((data, _)) => Ok(Some(data)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(self.target.error(path, e)),
        }
    }

    pub(crate) async fn write(&self, path: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let full = self.target.full(path);
        let err = |e| self.target.error(path, e);
        make_parents(&self.client, &full).await.map_err(err)?;
        // Set, or create; a node created between the two is set on the second round.
        for _ in 0..3 {
            match self.client.set_data(&full, bytes, None).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(err(e)),
            }
            match self.client.create(&full, bytes, &persistent()).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Err(self.target.error(path, zk::Error::BadVersion))
    }

    pub(crate) async fn children(&self, path: &str) -> Result<Vec<String>, RegistryError> {
        match self.client.list_children(&self.target.full(path)).await {
            Ok(names) => Ok(names),
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.target.error(path, e)),
        }
    }

    pub(crate) async fn register(
        &self,
        path: &str,
        data: Vec<u8>,
    ) -> Result<ZkRegistration, RegistryError> {
        // A session of its own, so that the node lives exactly as long as the registration,
        // whatever becomes of the registry it came from.
        let client = self.target.connect().await?;
        let full = self.target.full(path);
        let node = announce(&client, &full, &data)
            .await
            .map_err(|e| self.target.error(path, e))?;
        let node = Node::new(&self.target, path, node);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep(
            self.target.clone(),
            client,
            path.to_owned(),
            data,
            node,
            stopped,
        ));
        Ok(ZkRegistration {
            path: path.to_owned(),
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// What came of announcing.
enum Announced {
    /// This session holds the node.
    Made,
    /// Another live session holds it; the watcher fires when that node changes or goes.
    Held {
        owner: i64,
        watcher: zk::OneshotWatcher,
    },
}

/// Makes the ephemeral node at `full` for `client`'s session. A node another session holds is
/// left alone, whoever it is: an earlier run of this server whose session has not expired yet,
/// or another server announcing the same address. Deleting it would take a live server's node.
async fn announce(client: &zk::Client, full: &str, data: &[u8]) -> Result<Announced, zk::Error> {
    make_parents(client, full).await?;
    for _ in 0..3 {
        match client.create(full, data, &ephemeral()).await {
            Ok(_) => return Ok(Announced::Made),
            Err(zk::Error::NodeExists) => match client.check_and_watch_stat(full).await? {
                (Some(stat), _) if stat.ephemeral_owner == client.session_id().0 => {
                    return Ok(Announced::Made);
                }
                (Some(stat), watcher) => {
                    return Ok(Announced::Held {
                        owner: stat.ephemeral_owner,
                        watcher,
                    });
                }
                // Gone meanwhile: make it.
                (None, _) => {}
            },
            Err(e) => return Err(e),
        }
    }
    Err(zk::Error::NodeExists)
}

/// How this session's node stands.
enum Node {
    /// This session holds it.
    Made,
    /// Another session holds it; the future ends when that node changes or goes.
    Held(Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>),
    /// Announcing failed; try again at that time.
    Retry(tokio::time::Instant),
}

impl Node {
    /// Logs what came of announcing: the conflict, when another session holds the node.
    fn new(target: &Target, path: &str, announced: Announced) -> Node {
        match announced {
            Announced::Made => {
                info!(registry = %target.url, path, "registered");
                Node::Made
            }
            Announced::Held { owner, watcher } => {
                let address = path.rsplit('/').next().unwrap_or(path);
                warn!(
                    registry = %target.url,
                    path,
                    owner = format_args!("{owner:#x}"),
                    "another live ZooKeeper session holds the node for {address}: another server \
                     announces the same address (give each its own `advertise`), or this \
                     server's previous run has not lost its session yet; serving unannounced \
                     until that node is gone"
                );
                Node::Held(Box::pin(watcher.changed()))
            }
        }
    }

    fn retry(target: &Target, path: &str, e: &RegistryError) -> Node {
        warn!(registry = %target.url, path, error = %e, "announcing failed; will retry");
        Node::Retry(tokio::time::Instant::now() + Duration::from_secs(1))
    }

    /// Ends when it is time to announce again; never while this session holds the node.
    async fn turn(&mut self) {
        match self {
            Node::Made => std::future::pending().await,
            Node::Held(changed) => {
                changed.as_mut().await;
            }
            Node::Retry(at) => tokio::time::sleep_until(*at).await,
        }
    }
}

/// Removes the node at `full` if this session made it; a node another session made (a server
/// that took over the address) is left alone.
async fn withdraw(client: &zk::Client, full: &str) -> Result<(), zk::Error> {
    match client.check_stat(full).await? {
        Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
            match client.delete(full, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
                Err(e) => Err(e),
            }
        }
        _ => Ok(()),
    }
}

/// Keeps the announcement alive: while the session lives ZooKeeper keeps the node; when the
/// session is lost (expired after an outage longer than the session timeout), a new session is
/// made and the node announced again, retrying with a capped backoff until it works or `stop`.
/// While another session holds the node, its removal is watched for, and the node made then.
async fn keep(
    target: Target,
    mut client: zk::Client,
    path: String,
    data: Vec<u8>,
    mut node: Node,
    mut stop: oneshot::Receiver<()>,
) {
    let full = target.full(&path);
    loop {
        let mut states = client.state_watcher();
        let mut state = states.peek_state();
        while !state.is_terminated() {
            tokio::select! {
                next = states.changed() => {
                    state = next;
                    match state {
                        zk::SessionState::Disconnected => {
                            warn!(registry = %target.url, path, "lost the registry connection; the node stays while the session lives");
                        }
                        zk::SessionState::SyncConnected => {
                            info!(registry = %target.url, path, "registry connection back");
                        }
                        _ => {}
                    }
                }
                () = node.turn() => {
                    node = match announce(&client, &full, &data).await {
                        Ok(announced) => Node::new(&target, &path, announced),
                        Err(e) => Node::retry(&target, &path, &target.error(&path, e)),
                    };
                }
                _ = &mut stop => {
                    withdraw(&client, &full).await.unwrap_or_else(|e| {
                        warn!(registry = %target.url, path, error = %e, "could not remove the server's registry node");
                    });
                    return;
                }
            }
        }
        warn!(registry = %target.url, path, %state, "registry session lost; announcing again in a new session");
        let mut backoff = Duration::from_millis(250);
        loop {
            let attempt = async {
                let fresh = target.connect().await?;
                let announced = announce(&fresh, &full, &data)
                    .await
                    .map_err(|e| target.error(&path, e))?;
                Ok::<_, RegistryError>((fresh, announced))
            };
            tokio::select! {
                result = attempt => match result {
                    Ok((fresh, announced)) => {
                        client = fresh;
                        node = Node::new(&target, &path, announced);
                        break;
                    }
                    Err(e) => warn!(registry = %target.url, path, error = %e, "registering again failed; will retry"),
                },
                _ = &mut stop => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// An announcement on ZooKeeper: an ephemeral node kept by a background task.
pub(crate) struct ZkRegistration {
    path: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ZkRegistration {
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // The task removes the node; bound the wait, then end the task, which ends its
            // session: ZooKeeper removes the node then.
            if tokio::time::timeout(CONNECT_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for ZkRegistration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task drops its client; the session ends and ZooKeeper removes the node.
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn urls() {
        let t = parse("zk://a", "a").unwrap();
        assert_eq!((t.hosts.as_str(), t.chroot.as_str()), ("a:2181", ""));
        let t = parse("u", "a:1,b,c:3/x/y?session_timeout_ms=2000").unwrap();
        assert_eq!(t.hosts, "a:1,b:2181,c:3");
        assert_eq!(t.chroot, "/x/y");
        assert_eq!(t.session_timeout.as_millis(), 2000);
        assert_eq!(parse("u", "127.0.0.1:2181/").unwrap().chroot, "");
        // IPv6: in brackets, with or without a port.
        assert_eq!(parse("u", "[::1]").unwrap().hosts, "[::1]:2181");
        let t = parse("u", "[::1]:2182,[fe80::1],h/x").unwrap();
        assert_eq!(
            (t.hosts.as_str(), t.chroot.as_str()),
            ("[::1]:2182,[fe80::1]:2181,h:2181", "/x")
        );
        let err = parse("zk://::1", "::1").err().unwrap().to_string();
        assert!(err.contains("brackets"), "{err}");
        for bad in [
            "",
            "/chroot",
            "a:port",
            "a b",
            "a,,b",
            "a/x//y",
            "a/../y",
            "a?session_timeout_ms=0",
            "a?foo=1",
            "::1",
            "::1:2181",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[]",
            "[h]",
            "a:0",
            "a:",
        ] {
            let err = parse("zk://bad", bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?}"));
            assert!(err.to_string().contains("zk://bad"), "{err}");
        }
    }
}
