//! Linearizability under faults, checked: a real 3-node `craft-kv` cluster (three
//! processes, RocksDB, gRPC) with every raft link passing through a TCP proxy of this
//! test, concurrent clients doing set, get and delete on a few keys against every node,
//! while a nemesis SIGKILLs and restarts the leader and cuts a follower off. Every
//! operation's invocation, completion and answer is recorded (a timeout or a broken
//! connection is indeterminate) and the history is checked with `craft-lincheck`.
//!
//! `CRAFT_JEPSEN_SECS` sets how long the clients run (default 8 s, the CI size);
//! `cargo xtask jepsen-kv --secs N` runs a longer one. `CRAFT_JEPSEN_READS=stale` makes
//! the clients read with `?consistency=stale`, a read path that is *not* linearizable,
//! to show the checker catches it (`cargo xtask jepsen-kv --stale-reads`). A failing
//! history is written as JSON next to the test's data and its path printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_addr, http, kill};
use craft_lincheck::{check, Op, Recorder, Ret, Verdict};
use rand::{Rng as _, SeedableRng as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const NODES: usize = 3;
const KEYS: [&str; 3] = ["a", "b", "c"];
const CLIENTS: u64 = 6;
/// How long one client operation may take before it counts as indeterminate.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The nodes' raft tick (`--tick-ms`).
const TICK_MS: u64 = 50;
/// Ticks of an election timeout (the raft default the nodes run with).
const ELECTION_TICKS: u64 = 10;

/// A test's temporary directory, kept (and its path printed) when the test fails, or
/// always with `CRAFT_KEEP_TEST_DIR=1`, so the nodes' logs and data can be looked at.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    fn new(prefix: &str) -> Self {
        Self(Some(
            tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
        ))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        let asked = std::env::var("CRAFT_KEEP_TEST_DIR").is_ok_and(|v| v == "1");
        if std::thread::panicking() || asked {
            if let Some(dir) = self.0.take() {
                eprintln!("node logs and data kept in {}", dir.keep().display());
            }
        }
    }
}

/// A one-way TCP proxy for the raft link `from → to`, which the nemesis can cut: a
/// cut closes its open connections and refuses new ones until healed.
struct Link {
    /// Where `from` dials to reach `to`.
    addr: SocketAddr,
    /// `true` while cut.
    cut: watch::Sender<bool>,
}

impl Link {
    async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            cut: watch::Sender::new(false),
        });
        let cut = link.cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = cut.subscribe();
                if *cut.borrow() {
                    continue; // dropped: refused
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        link
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// A `craft-kv` process of the cluster.
struct Node {
    id: usize,
    http: SocketAddr,
    raft: SocketAddr,
    peers: String,
    hpeers: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{}.log", self.id)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_craft-kv"))
            .args(["--id", &self.id.to_string()])
            .args(["--haddr", &self.http.to_string()])
            .args(["--raddr", &self.raft.to_string()])
            .args(["--peers", &self.peers])
            .args(["--hpeers", &self.hpeers])
            .args(["--tick-ms", &TICK_MS.to_string()])
            .arg(self.dir.join(format!("node{}", self.id)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        kill(self.child.take());
    }

    /// Waits until the node serves HTTP; fails at once, with the end of its log, if its
    /// process exited (it could not bind its ports, say).
    async fn serving(&mut self) {
        let (id, addr) = (self.id, self.http);
        let log = self.dir.join(format!("node{id}.log"));
        eventually("a node to serve HTTP", || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                panic!("node {id} exited at start ({status}); its log ends:\n{}", {
                    let mut tail = tail;
                    tail.reverse();
                    tail.join("\n")
                });
            }
            async move { http(addr, "GET", "/status", None).await.ok().map(|_| ()) }
        })
        .await;
    }
}

/// The cluster: nodes, and the proxies of every raft link (`links[from][to]`).
struct Cluster {
    nodes: Vec<Node>,
    links: BTreeMap<(usize, usize), Arc<Link>>,
}

impl Cluster {
    async fn start(dir: &Path) -> Self {
        let addrs: Vec<(SocketAddr, SocketAddr)> =
            (0..NODES).map(|_| (free_addr(), free_addr())).collect();
        let mut links = BTreeMap::new();
        for from in 1..=NODES {
            for to in (1..=NODES).filter(|&to| to != from) {
                links.insert((from, to), Link::start(addrs[to - 1].1).await);
            }
        }
        let hpeers = (1..=NODES)
            .map(|i| format!("{i}={}", addrs[i - 1].0))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let peers = (1..=NODES)
                .map(|to| {
                    let addr = if to == id {
                        addrs[id - 1].1
                    } else {
                        links[&(id, to)].addr
                    };
                    format!("{to}={addr}")
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut node = Node {
                id,
                http: addrs[id - 1].0,
                raft: addrs[id - 1].1,
                peers,
                hpeers: hpeers.clone(),
                dir: dir.to_path_buf(),
                child: None,
            };
            node.start();
            nodes.push(node);
        }
        for node in &mut nodes {
            node.serving().await;
        }
        Self { nodes, links }
    }

    /// Cuts (or heals) every link to and from `id`.
    fn isolate(&self, id: usize, cut: bool) {
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.set_cut(cut);
            }
        }
    }

    /// The leader some live node reports, as a node index from 1.
    async fn leader(&self) -> usize {
        eventually("a leader", || async {
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let Ok(reply) = http(node.http, "GET", "/status", None).await else {
                    continue;
                };
                if let Some(leader) = reply.json()["leader"].as_u64() {
                    return Some(leader as usize);
                }
            }
            None
        })
        .await
    }
}

/// One client operation against `node`, following one redirect; its answer for the
/// history, or `None` when the node definitely did not carry it out.
async fn perform(addr: SocketAddr, key: &str, op: &Op, stale: bool) -> Option<Ret> {
    let (method, path, body) = match op {
        Op::Set(v) => (
            "POST",
            "/key".to_string(),
            Some(format!(r#"{{"{key}":"{v}"}}"#)),
        ),
        Op::Delete => ("DELETE", format!("/key/{key}"), None),
        Op::Get if stale => ("GET", format!("/key/{key}?consistency=stale"), None),
        Op::Get => ("GET", format!("/key/{key}"), None),
    };
    let mut target = addr;
    let mut path = path;
    for _ in 0..2 {
        let exchange = http(target, method, &path, body.as_deref());
        let reply = match tokio::time::timeout(OP_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => reply,
            // No answer: it may or may not have happened.
            _ => return Some(Ret::Unknown),
        };
        match (op, reply.status) {
            (Op::Get, 200) => {
                return Some(Ret::Value(reply.json()[key].as_str().map(str::to_string)))
            }
            (Op::Get, 404) => return Some(Ret::Value(None)),
            (Op::Set(_) | Op::Delete, 200) => return Some(Ret::Ok),
            (_, 307) => {
                // Not carried out here; the leader is elsewhere.
                let location = reply.header("location")?.to_string();
                let rest = location.strip_prefix("http://")?;
                let slash = rest.find('/')?;
                target = rest[..slash].parse().ok()?;
                path = rest[slash..].to_string();
            }
            // A read refused: it returned nothing, so it constrains nothing.
            (Op::Get, _) => return None,
            // A write refused with 503 may have been proposed before the refusal (a
            // timeout, a stop): its effect is unknown.
            _ => return Some(Ret::Unknown),
        }
    }
    match op {
        Op::Get => None,
        _ => Some(Ret::Unknown),
    }
}

/// Runs clients against `cluster` for `secs` with the nemesis on, and checks the history.
async fn run(secs: u64, stale: bool, dir: &Path) -> (usize, Verdict) {
    let mut cluster = Cluster::start(dir).await;
    cluster.leader().await;
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let values = Arc::new(AtomicU64::new(0));
    let http_addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (recorder, stop, values, addrs) = (
            recorder.clone(),
            stop.clone(),
            values.clone(),
            http_addrs.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client);
            while !stop.load(Ordering::Relaxed) {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let op = match rng.random_range(0..10) {
                    0..=4 => Op::Get,
                    5..=8 => Op::Set(format!("v{}", values.fetch_add(1, Ordering::Relaxed))),
                    _ => Op::Delete,
                };
                let addr = addrs[rng.random_range(0..addrs.len())];
                let id = recorder.invoke(client, key, op.clone());
                match perform(addr, key, &op, stale).await {
                    Some(ret) => recorder.complete(id, ret).unwrap(),
                    // Definitely not done: record it as an unknown read (dropped) or
                    // an unknown write (which may never take effect: always safe).
                    None => recorder.complete(id, Ret::Unknown).unwrap(),
                }
            }
        }));
    }

    // Before any fault: how far behind the fresh cluster's followers are under the
    // clients' load, by a write to a key of its own (outside the checked history).
    let leader = cluster.leader().await;
    let leader_http = cluster.nodes[leader - 1].http;
    eventually("the lag probe's write", || async {
        let reply = http(leader_http, "POST", "/key", Some(r#"{"lag-probe":"1"}"#)).await;
        (reply.ok()?.status == 200).then_some(())
    })
    .await;
    follower_lag(&cluster, leader, "lag-probe", "1").await;

    // The nemesis: kill and restart the leader, then cut a follower off, in turn.
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = cluster.leader().await;
        if round % 2 == 0 {
            let node = &mut cluster.nodes[leader - 1];
            node.kill();
            tokio::time::sleep(Duration::from_millis(800)).await;
            cluster.nodes[leader - 1].start();
        } else {
            let follower = (1..=NODES).find(|&n| n != leader).unwrap();
            cluster.isolate(follower, true);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.isolate(follower, false);
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let history = Arc::try_unwrap(recorder).ok().unwrap().into_history();
    let verdict = check(&history).unwrap();
    if !verdict.is_linearizable() {
        let path = dir.join("history.json");
        std::fs::write(&path, serde_json::to_vec(&history).unwrap()).unwrap();
        eprintln!("history written to {}", path.display());
    }
    for node in &mut cluster.nodes {
        node.kill();
    }
    (history.len(), verdict)
}

fn secs() -> u64 {
    std::env::var("CRAFT_JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_stay_linearizable_through_crashes_and_partitions() {
    let stale = std::env::var("CRAFT_JEPSEN_READS").is_ok_and(|r| r == "stale");
    // Kept, with the history, when the test fails.
    let dir = KeptOnFailure::new("craft-jepsen-");
    let (ops, verdict) = run(secs(), stale, dir.path()).await;
    println!(
        "jepsen-kv: {ops} operations, {} reads, verdict: {verdict}",
        if stale { "stale" } else { "linearizable" }
    );
    assert!(verdict.is_linearizable(), "not linearizable: {verdict}");
}

/// A node's `/status` field `field` (`commit`, `applied`), if it answers.
async fn status_index(addr: SocketAddr, field: &str) -> Option<u64> {
    let reply = http(addr, "GET", "/status", None).await.ok()?;
    (reply.status == 200).then(|| reply.json()[field].as_u64())?
}

/// How far each follower of a fresh cluster is behind the leader once a write of
/// `value` to `key` is acknowledged: the entries it had yet to apply then (against the
/// leader's commit index as its status shows it), and the ticks until it serves the
/// value. Printed rather than asserted (ticks counted on the test's clock); a follower
/// that never applies it fails the test after [`common::PATIENCE`]. On links that do
/// not stall it takes a round trip or two, well within an election timeout.
async fn follower_lag(cluster: &Cluster, leader: usize, key: &'static str, value: &'static str) {
    let leader_http = cluster.nodes[leader - 1].http;
    let commit = eventually("the leader's commit index", || {
        status_index(leader_http, "commit")
    })
    .await;
    let acked = Instant::now();
    let followers = cluster.nodes.iter().filter(|n| n.id != leader);
    let lags: Vec<_> = followers
        .map(|node| {
            let (id, addr) = (node.id, node.http);
            tokio::spawn(async move {
                let behind = status_index(addr, "applied")
                    .await
                    .map(|applied| commit.saturating_sub(applied));
                eventually("a follower to apply the acknowledged write", || async {
                    let path = format!("/key/{key}?consistency=stale");
                    let reply = http(addr, "GET", &path, None).await.ok()?;
                    (reply.status == 200 && reply.json()[key].as_str() == Some(value)).then_some(())
                })
                .await;
                let ticks = acked.elapsed().as_millis().div_ceil(u128::from(TICK_MS));
                (id, behind, ticks)
            })
        })
        .collect();
    for lag in lags {
        let (id, behind, ticks) = lag.await.unwrap();
        let behind = behind.map_or("an unknown number of".to_string(), |b| b.to_string());
        println!(
            "follower lag: node {id} was {behind} entries behind the leader's commit {commit} \
             and applied the write within {ticks} ticks (election timeout {ELECTION_TICKS} ticks)"
        );
    }
}

/// The checker and this harness catch a read path that is not linearizable: a
/// follower cut off from the leader answers `?consistency=stale` reads with the value it
/// had, after a newer write completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_from_a_cut_off_follower_is_caught() {
    let dir = KeptOnFailure::new("craft-stale-read-");
    let cluster = Cluster::start(dir.path()).await;
    let leader = cluster.leader().await;
    let leader_http = cluster.nodes[leader - 1].http;
    let recorder = Recorder::new();
    let record = |client: u64, addr: SocketAddr, op: Op, stale: bool| {
        let recorder = &recorder;
        async move {
            let id = recorder.invoke(client, "k", op.clone());
            let ret = perform(addr, "k", &op, stale).await.unwrap_or(Ret::Unknown);
            recorder.complete(id, ret.clone()).unwrap();
            ret
        }
    };
    // On a loaded machine an election may come between a write and its answer (a missed
    // heartbeat), and a write caught in one has an unknown outcome: it stays in the
    // history as such, and the write is tried again, through the nodes given in turn,
    // until one is acknowledged.
    let write_until_acknowledged = |targets: Vec<SocketAddr>, value: &'static str| {
        let mut attempt = 0;
        let record = &record;
        eventually("a write acknowledged", move || {
            let target = targets[attempt % targets.len()];
            attempt += 1;
            let written = record(1, target, Op::Set(value.into()), false);
            async move { (written.await == Ret::Ok).then_some(()) }
        })
    };
    write_until_acknowledged(vec![leader_http], "old").await;
    follower_lag(&cluster, leader, "k", "old").await;
    // The follower to cut off: the first that is not the leader. Both followers have
    // applied the first write (above).
    let follower = (1..=NODES).find(|&n| n != leader).unwrap();
    let follower_http = cluster.nodes[follower - 1].http;
    cluster.isolate(follower, true);
    // The newer write, through the two nodes still connected. The cut-off node cannot
    // have applied it, whatever became of the attempts before the acknowledged one.
    let connected: Vec<SocketAddr> = (cluster.nodes.iter())
        .filter(|n| n.id != follower)
        .map(|n| n.http)
        .collect();
    write_until_acknowledged(connected, "new").await;
    let stale = record(2, follower_http, Op::Get, true).await;
    assert_eq!(
        stale,
        Ret::Value(Some("old".into())),
        "the cut-off follower's stale read"
    );
    let verdict = check(&recorder.history()).unwrap();
    assert!(
        matches!(&verdict, Verdict::NotLinearizable(v) if v.key == "k"),
        "{verdict}"
    );
    // Its linearizable read, by contrast, cannot answer while it is cut off.
    let read = record(3, follower_http, Op::Get, false).await;
    assert!(
        !matches!(read, Ret::Value(Some(ref v)) if v == "old"),
        "a linearizable read returned the stale value"
    );
}
