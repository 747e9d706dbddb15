//! A real cluster in one process: three (or four) key-value nodes, each with its own
//! RocksDB store in a temporary directory, talking raft over gRPC on 127.0.0.1 and
//! serving the HTTP API, driven by a hand-written HTTP/1.1 client.
//!
//! No wall-clock assertions: every wait is a bounded polling loop that fails with a
//! message saying what it waited for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use craft_kv::node::{KvNode, NodeConfig};
use tempfile::TempDir;
use tokio::net::TcpListener;

mod common;

use common::{eventually, eventually_within, http, Reply, PATIENCE};

/// A node under test, with its data directory.
struct TestNode {
    id: u64,
    http: SocketAddr,
    raft: SocketAddr,
    node: Option<KvNode>,
    _dir: TempDir,
}

/// Listeners bound on ephemeral ports, so the addresses are known before start.
struct Slot {
    id: u64,
    raft: TcpListener,
    http: TcpListener,
}

async fn slot(id: u64) -> Slot {
    Slot {
        id,
        raft: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

fn addrs(slots: &[Slot]) -> (BTreeMap<u64, String>, BTreeMap<u64, String>) {
    let raft = slots
        .iter()
        .map(|s| (s.id, s.raft.local_addr().unwrap().to_string()))
        .collect();
    let http = slots
        .iter()
        .map(|s| (s.id, s.http.local_addr().unwrap().to_string()))
        .collect();
    (raft, http)
}

async fn start(
    slot: Slot,
    raft_peers: BTreeMap<u64, String>,
    http_peers: BTreeMap<u64, String>,
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(slot.id, dir.path());
    config.raft_peers = raft_peers;
    config.http_peers = http_peers;
    config.tick_interval = Duration::from_millis(50);
    let node = KvNode::start(config, slot.raft, slot.http).await.unwrap();
    TestNode {
        id: slot.id,
        http: node.http_addr(),
        raft: node.raft_addr(),
        node: Some(node),
        _dir: dir,
    }
}

/// Starts ids `1..=n` as the initial members of a new cluster.
async fn start_cluster(n: u64) -> Vec<TestNode> {
    let mut slots = Vec::new();
    for id in 1..=n {
        slots.push(slot(id).await);
    }
    let (raft, http) = addrs(&slots);
    let mut nodes = Vec::new();
    for s in slots {
        nodes.push(start(s, raft.clone(), http.clone()).await);
    }
    nodes
}

fn alive(nodes: &[TestNode]) -> impl Iterator<Item = &TestNode> {
    nodes.iter().filter(|n| n.node.is_some())
}

/// Waits until every live node names the same live leader, which says it leads.
async fn wait_for_leader(nodes: &[TestNode]) -> u64 {
    eventually("all live nodes to agree on a live leader", || async {
        let mut leaders = Vec::new();
        for n in alive(nodes) {
            let status = http(n.http, "GET", "/status", None).await.ok()?.json();
            leaders.push((
                n.id,
                status["role"].as_str()?.to_string(),
                status["leader"].as_u64()?,
            ));
        }
        let leader = leaders.first()?.2;
        let agreed = leaders.iter().all(|(_, _, l)| *l == leader);
        let leads = leaders
            .iter()
            .any(|(id, role, _)| *id == leader && role == "leader");
        (agreed && leads).then_some(leader)
    })
    .await
}

fn node(nodes: &[TestNode], id: u64) -> &TestNode {
    nodes.iter().find(|n| n.id == id).unwrap()
}

/// Sends a request, retrying while the answer is 503 (no leader yet, leadership
/// changing); returns the first other answer.
async fn settled(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    eventually(
        &format!("{method} {path} on {addr} to be answered other than 503"),
        || async {
            let reply = http(addr, method, path, body).await.ok()?;
            (reply.status != 503).then_some(reply)
        },
    )
    .await
}

async fn assert_value(addr: SocketAddr, key: &str, want: Option<&str>) {
    let reply = settled(addr, "GET", &format!("/key/{key}"), None).await;
    match want {
        Some(value) => {
            assert_eq!(reply.status, 200, "GET /key/{key} on {addr}: {reply:?}");
            assert_eq!(
                reply.json()[key],
                value,
                "GET /key/{key} on {addr}: {reply:?}"
            );
        }
        None => assert_eq!(reply.status, 404, "GET /key/{key} on {addr}: {reply:?}"),
    }
}

async fn stop_all(nodes: &mut [TestNode]) {
    for n in nodes.iter_mut() {
        if let Some(node) = n.node.take() {
            node.shutdown();
            tokio::time::timeout(PATIENCE, node.wait())
                .await
                .unwrap_or_else(|_| panic!("node {} did not stop within {PATIENCE:?}", n.id))
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_serves_linearizable_reads_and_survives_losing_its_leader() {
    let mut nodes = start_cluster(3).await;
    let leader = wait_for_leader(&nodes).await;
    let leader_http = node(&nodes, leader).http;

    let set = settled(
        leader_http,
        "POST",
        "/key",
        Some(r#"{"a":"1","b":"2","c":"3"}"#),
    )
    .await;
    assert_eq!(set.status, 200, "set on the leader: {set:?}");
    for n in &nodes {
        assert_value(n.http, "a", Some("1")).await;
        assert_value(n.http, "b", Some("2")).await;
        assert_value(n.http, "missing", None).await;
    }

    // A write on a follower is redirected to the leader's HTTP address.
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let redirect = settled(follower.http, "POST", "/key", Some(r#"{"x":"y"}"#)).await;
    assert_eq!(redirect.status, 307, "write on a follower: {redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("http://{leader_http}/key").as_str())
    );

    let delete = settled(leader_http, "DELETE", "/key/c", None).await;
    assert_eq!(delete.status, 200, "delete on the leader: {delete:?}");
    assert_value(follower.http, "c", None).await;

    let bad = http(leader_http, "POST", "/key", Some("[1,2]"))
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{bad:?}");

    // Kill the leader: abort its tasks without a graceful shutdown.
    let killed = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    killed.node.take().unwrap().abort();

    let new_leader = wait_for_leader(&nodes).await;
    assert_ne!(new_leader, leader, "a killed node cannot lead");
    let new_leader_http = node(&nodes, new_leader).http;
    let set = settled(new_leader_http, "POST", "/key", Some(r#"{"d":"4"}"#)).await;
    assert_eq!(set.status, 200, "set on the new leader: {set:?}");
    for n in alive(&nodes) {
        assert_value(n.http, "a", Some("1")).await;
        assert_value(n.http, "d", Some("4")).await;
        assert_value(n.http, "c", None).await;
    }

    // POST /shutdown stops a node gracefully.
    let last = alive(&nodes).next().unwrap();
    let bye = http(last.http, "POST", "/shutdown", Some("{}"))
        .await
        .unwrap();
    assert_eq!(bye.status, 200, "{bye:?}");
    let last_id = last.id;
    let stopping = nodes.iter_mut().find(|n| n.id == last_id).unwrap();
    let node = stopping.node.take().unwrap();
    tokio::time::timeout(PATIENCE, node.wait())
        .await
        .expect("POST /shutdown did not stop the node")
        .unwrap();
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_through_join_catches_up_and_redirects_writes() {
    let mut nodes = start_cluster(3).await;
    let leader = wait_for_leader(&nodes).await;
    let leader_http = node(&nodes, leader).http;
    let set = settled(leader_http, "POST", "/key", Some(r#"{"before":"join"}"#)).await;
    assert_eq!(set.status, 200, "{set:?}");

    // Node 4 knows the initial members but is not one: it starts empty.
    let joiner = slot(4).await;
    let raft_peers = nodes.iter().map(|n| (n.id, n.raft.to_string())).collect();
    let http_peers = nodes.iter().map(|n| (n.id, n.http.to_string())).collect();
    let joiner_raft = joiner.raft.local_addr().unwrap();
    let joiner_http = joiner.http.local_addr().unwrap();
    nodes.push(start(joiner, raft_peers, http_peers).await);

    let body = format!(r#"{{"id":4,"addr":"{joiner_raft}","haddr":"{joiner_http}"}}"#);
    let join = settled(leader_http, "POST", "/join", Some(&body)).await;
    assert_eq!(join.status, 200, "join: {join:?}");
    assert_eq!(join.json()["voters"], serde_json::json!([1, 2, 3, 4]));

    // The new member catches up from a snapshot and serves linearizable reads.
    assert_value(joiner_http, "before", Some("join")).await;
    let set = settled(leader_http, "POST", "/key", Some(r#"{"after":"join"}"#)).await;
    assert_eq!(set.status, 200, "{set:?}");
    for n in alive(&nodes) {
        assert_value(n.http, "after", Some("join")).await;
    }
    let status = settled(joiner_http, "GET", "/status", None).await.json();
    assert_eq!(
        status["voters"],
        serde_json::json!([1, 2, 3, 4]),
        "{status}"
    );

    // A write on node 4 is redirected to the leader.
    let redirect = settled(joiner_http, "DELETE", "/key/before", None).await;
    assert_eq!(redirect.status, 307, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("http://{leader_http}/key/before").as_str())
    );

    // Node 4 can lead, and the others learned its HTTP address from the join.
    let leader_raft = node(&nodes, leader).node.as_ref().unwrap().raft().clone();
    eventually("leadership to move to node 4", || {
        let leader_raft = leader_raft.clone();
        let nodes = &nodes;
        async move {
            let _ = leader_raft.transfer_leader(4).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            (node(nodes, 4).node.as_ref()?.status().role == craft_core::Role::Leader).then_some(())
        }
    })
    .await;
    assert_eq!(wait_for_leader(&nodes).await, 4);
    let follower = nodes.iter().find(|n| n.id != 4).unwrap();
    let redirect = settled(follower.http, "POST", "/key", Some(r#"{"x":"y"}"#)).await;
    assert_eq!(redirect.status, 307, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("http://{joiner_http}/key").as_str())
    );
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joining_a_cluster_that_holds_72_mib_catches_up_from_a_snapshot() {
    // Writes of 64 values of 16 KiB each (1 MiB a write): the state, and so the
    // snapshot, outgrows the largest gRPC message (64 MiB).
    const WRITES: usize = 72;
    const KEYS_PER_WRITE: usize = 64;
    const VALUE_BYTES: usize = 16 << 10;
    let mut nodes = start_cluster(3).await;
    let leader = wait_for_leader(&nodes).await;
    let leader_node = node(&nodes, leader).node.as_ref().unwrap();
    let raft = leader_node.raft().clone();
    for w in 0..WRITES {
        let pairs = (0..KEYS_PER_WRITE)
            .map(|k| {
                let tag = format!("{w}.{k}:");
                let value = tag.repeat(VALUE_BYTES / tag.len() + 1)[..VALUE_BYTES].to_string();
                (format!("key-{w:03}-{k:02}"), value)
            })
            .collect();
        let command = craft_kv::Command::Set { pairs }.encode().unwrap();
        raft.propose(command).await.unwrap().unwrap();
    }
    let state = leader_node.kv().state();
    assert_eq!(state.data.len(), WRITES * KEYS_PER_WRITE);
    let bytes = state.encode().unwrap().len();
    assert!(
        bytes > cita_proto::MAX_MESSAGE_BYTES,
        "the state is only {bytes} bytes"
    );

    // Node 4 starts empty and is added: it can only start from a snapshot of the
    // whole state, taken for the membership change.
    let joiner = slot(4).await;
    let raft_peers = nodes.iter().map(|n| (n.id, n.raft.to_string())).collect();
    let http_peers = nodes.iter().map(|n| (n.id, n.http.to_string())).collect();
    let joiner_raft = joiner.raft.local_addr().unwrap();
    let joiner_http = joiner.http.local_addr().unwrap();
    nodes.push(start(joiner, raft_peers, http_peers).await);
    let body = format!(r#"{{"id":4,"addr":"{joiner_raft}","haddr":"{joiner_http}"}}"#);
    // A join is idempotent, so it is simply asked of whichever node leads.
    eventually("node 4 to be added", || async {
        let leader = wait_for_leader(&nodes[..3]).await;
        let join = http(node(&nodes, leader).http, "POST", "/join", Some(&body))
            .await
            .ok()?;
        (join.status == 200).then_some(())
    })
    .await;

    let new = node(&nodes, 4).node.as_ref().unwrap();
    eventually_within(
        Duration::from_secs(120),
        "node 4 to catch up with the whole state",
        || async { (new.kv().len() == WRITES * KEYS_PER_WRITE).then_some(()) },
    )
    .await;
    // (`==` rather than `assert_eq!`: a difference would print 72 MiB.)
    assert!(
        new.kv().state().data == state.data,
        "node 4 holds other data"
    );
    // It serves linearizable reads and follows new writes.
    let last = format!("key-{:03}-{:02}", WRITES - 1, KEYS_PER_WRITE - 1);
    assert_value(
        joiner_http,
        &last,
        state.data.get(&last).map(|v| v.as_str()),
    )
    .await;
    // Leadership may have moved meanwhile (a debug build takes seconds over 72 MiB):
    // write on whichever node leads now.
    eventually("a write on the current leader", || async {
        let leader = wait_for_leader(&nodes).await;
        let set = http(
            node(&nodes, leader).http,
            "POST",
            "/key",
            Some(r#"{"after":"join"}"#),
        )
        .await
        .ok()?;
        (set.status == 200).then_some(())
    })
    .await;
    assert_value(joiner_http, "after", Some("join")).await;
    stop_all(&mut nodes).await;
}
