//! A peer whose connections stay open but stop being read: a three-node cluster in one
//! process, every raft link into a node passing through a TCP proxy of this test that
//! can freeze its connections (it stops reading them and forwards nothing, and keeps
//! both sockets open, as a peer process stuck in a long pause or a broken middlebox
//! would). While a follower's connections are frozen the other two go on committing;
//! once it reads again, even if only new connections are read (the frozen ones stay
//! stuck for good, which HTTP/2 keepalives would notice only after half a minute),
//! it catches up.
//!
//! No wall-clock assertions: every wait is a bounded polling loop that fails with a
//! message saying what it waited for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use craft_kv::node::{KvNode, NodeConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod common;

use common::{eventually, eventually_within, http, PATIENCE};

/// How long a follower that reads again on new connections may take to catch up: far
/// more than the links need (they give up on a connection after an election timeout,
/// here 0.5 s), and far less than HTTP/2 keepalives (a ping every 10 s, 20 s for its
/// answer), the only other way off a frozen connection.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Which of a proxy's connections it reads and forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// All of them.
    Open,
    /// None: each stays open, unread.
    Frozen,
    /// Only those accepted from the n-th on; older ones stay frozen for good.
    NewFrom(u64),
}

impl Flow {
    fn passes(self, connection: u64) -> bool {
        match self {
            Flow::Open => true,
            Flow::Frozen => false,
            Flow::NewFrom(first) => connection >= first,
        }
    }
}

/// A TCP proxy in front of one node's raft port.
struct Proxy {
    addr: SocketAddr,
    flow: watch::Sender<Flow>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flow = watch::Sender::new(Flow::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let (flows, count) = (flow.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let flows = flows.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pipe(in_read, out_write, flows.subscribe(), n),
                        pipe(out_read, in_write, flows.subscribe(), n),
                    );
                });
            }
        });
        Self {
            addr,
            flow,
            accepted,
        }
    }

    fn set(&self, flow: Flow) {
        self.flow.send_replace(flow);
    }

    /// Reads new connections only; the ones accepted so far stay frozen.
    fn thaw_new_connections(&self) {
        self.set(Flow::NewFrom(self.accepted.load(Ordering::SeqCst)));
    }
}

/// Copies `from` to `to` while the flow passes connection `n`; reads nothing otherwise.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: watch::Receiver<Flow>,
    n: u64,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if flow.wait_for(|f| f.passes(n)).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Frozen meanwhile: stop reading (a read cancelled here took nothing).
            _ = flow.wait_for(|f| !f.passes(n)) => continue,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(len) => {
                if to.write_all(&buf[..len]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A node under test, with its data directory.
struct TestNode {
    id: u64,
    http: SocketAddr,
    node: Option<KvNode>,
    _dir: TempDir,
}

/// Three nodes; `proxies[i]` stands in front of node `i + 1`'s raft port, and every
/// node reaches every other through it.
async fn start_cluster() -> (Vec<TestNode>, Vec<Proxy>) {
    let mut listeners = Vec::new();
    let mut proxies = Vec::new();
    let (mut raft, mut http) = (BTreeMap::new(), BTreeMap::new());
    for id in 1..=3u64 {
        let raft_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start(raft_listener.local_addr().unwrap()).await;
        raft.insert(id, proxy.addr.to_string());
        http.insert(id, http_listener.local_addr().unwrap().to_string());
        listeners.push((id, raft_listener, http_listener));
        proxies.push(proxy);
    }
    let mut nodes = Vec::new();
    for (id, raft_listener, http_listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(id, dir.path());
        config.raft_peers = raft.clone();
        config.http_peers = http.clone();
        config.tick_interval = Duration::from_millis(50);
        let node = KvNode::start(config, raft_listener, http_listener)
            .await
            .unwrap();
        nodes.push(TestNode {
            id,
            http: node.http_addr(),
            node: Some(node),
            _dir: dir,
        });
    }
    (nodes, proxies)
}

/// The leader every node names, once all agree and it says it leads.
async fn leader(nodes: &[TestNode]) -> u64 {
    eventually("all nodes to agree on a leader", || async {
        let mut named = Vec::new();
        for n in nodes {
            let status = http(n.http, "GET", "/status", None).await.ok()?.json();
            named.push((
                n.id,
                status["role"].as_str()?.to_string(),
                status["leader"].as_u64()?,
            ));
        }
        let leader = named.first()?.2;
        let agreed = named.iter().all(|(_, _, l)| *l == leader);
        let leads = named
            .iter()
            .any(|(id, role, _)| *id == leader && role == "leader");
        (agreed && leads).then_some(leader)
    })
    .await
}

/// Writes `key` = `value` through the leader at `addr` until it is acknowledged.
async fn write(addr: SocketAddr, key: &str, value: &str) {
    let body = format!(r#"{{"{key}":"{value}"}}"#);
    eventually(
        &format!("the write of {key} to be acknowledged"),
        || async {
            let reply = http(addr, "POST", "/key", Some(&body)).await.ok()?;
            (reply.status == 200).then_some(())
        },
    )
    .await;
}

/// `key` as node `addr` has applied it (a local read, not linearizable).
async fn local_value(addr: SocketAddr, key: &str) -> Option<String> {
    let reply = http(addr, "GET", &format!("/key/{key}?consistency=stale"), None)
        .await
        .ok()?;
    (reply.status == 200).then(|| reply.json()[key].as_str().map(str::to_string))?
}

async fn applied(addr: SocketAddr, key: &str, value: &str) {
    applied_within(PATIENCE, addr, key, value).await;
}

async fn applied_within(patience: Duration, addr: SocketAddr, key: &str, value: &str) {
    eventually_within(
        patience,
        &format!("{addr} to apply {key}={value}"),
        || async { (local_value(addr, key).await.as_deref() == Some(value)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_stops_reading_holds_no_one_up_and_catches_up_when_it_reads_again() {
    let (mut nodes, proxies) = start_cluster().await;
    let leader = leader(&nodes).await;
    let leader_http = nodes[leader as usize - 1].http;
    let stuck = nodes.iter().find(|n| n.id != leader).unwrap();
    let other = nodes
        .iter()
        .find(|n| n.id != leader && n.id != stuck.id)
        .unwrap();
    let (stuck_http, other_http) = (stuck.http, other.http);
    write(leader_http, "k0", "before").await;
    for n in &nodes {
        applied(n.http, "k0", "before").await;
    }

    // The stuck follower stops reading: its connections stay open, unread.
    proxies[stuck.id as usize - 1].set(Flow::Frozen);
    for i in 1..=30 {
        write(leader_http, &format!("k{i}"), "while-stuck").await;
    }
    applied(other_http, "k30", "while-stuck").await;
    assert_eq!(
        local_value(stuck_http, "k30").await,
        None,
        "a follower that reads nothing cannot have applied the latest write"
    );

    // It reads again, but only connections made from now on: the frozen ones stay
    // stuck for good, so only a sender that gives up on them reaches it.
    proxies[stuck.id as usize - 1].thaw_new_connections();
    applied_within(CATCH_UP, stuck_http, "k30", "while-stuck").await;
    write(leader_http, "k31", "after").await;
    applied(stuck_http, "k31", "after").await;

    // Everything flows again (the stale bytes of the frozen connections too): no harm.
    proxies[stuck.id as usize - 1].set(Flow::Open);
    write(leader_http, "k32", "open").await;
    for n in &nodes {
        applied(n.http, "k32", "open").await;
    }
    for n in &mut nodes {
        if let Some(node) = n.node.take() {
            node.abort();
        }
    }
}
