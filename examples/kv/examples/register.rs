//! A single replicated register: three nodes in one process agree on one value.
//!
//! Writes go to the leader and answer with the register's version once applied; reads
//! on any node pass a read barrier (raft's ReadIndex) first, so they see every write
//! acknowledged before them. Then the leader crashes, the other two elect a new one and
//! carry on.
//!
//! `cargo run -p craft-kv --example register`

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use common::{DemoNode, LocalCluster};
use craft_core::raft::eraftpb::Snapshot;
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};

/// The register's state: how many writes it has seen, and the last one.
type Cell = Arc<Mutex<(u64, Option<String>)>>;

/// A state machine holding one string; every command overwrites it.
#[derive(Default)]
struct Register {
    /// Shared with the demo, which reads it after a read barrier.
    cell: Cell,
}

impl StateMachine for Register {
    /// The version after the write.
    type Response = u64;

    fn apply(&mut self, entry: &Committed) -> impl Future<Output = u64> + Send {
        let mut cell = self.cell.lock().unwrap_or_else(|e| e.into_inner());
        if let CommittedKind::Normal { data, .. } = &entry.kind {
            cell.0 += 1;
            cell.1 = Some(String::from_utf8_lossy(data).into_owned());
        }
        std::future::ready(cell.0)
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // One string: serialised at once, on the apply task.
        let cell = self.cell.lock().unwrap_or_else(|e| e.into_inner());
        SnapshotJob::ready(serde_json::to_vec(&*cell).unwrap_or_default())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send {
        let result = if snapshot.data.is_empty() {
            Ok((0, None))
        } else {
            serde_json::from_slice(&snapshot.data).map_err(|e| e.to_string())
        };
        std::future::ready(result.map(|restored| {
            *self.cell.lock().unwrap_or_else(|e| e.into_inner()) = restored;
        }))
    }
}

async fn read_everywhere(
    nodes: &[DemoNode<u64>],
    cells: &BTreeMap<u64, Cell>,
) -> anyhow::Result<()> {
    for node in nodes {
        let applied = node.handle.read_barrier().await?;
        let (version, value) = cells[&node.id]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        println!(
            "  node {} reads {value:?} (version {version}, applied index {applied})",
            node.id
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cells = BTreeMap::new();
    let mut cluster = LocalCluster::start(&[1, 2, 3], |id| {
        let register = Register::default();
        cells.insert(id, register.cell.clone());
        register
    })
    .await?;

    let leader = cluster.leader().await?;
    let first_leader = leader.id;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );
    for value in ["red", "green", "blue"] {
        let version = leader.handle.propose(value.into()).await?;
        println!(
            "  wrote {value:?} through node {}: version {version}",
            leader.id
        );
    }
    if let Some(follower) = cluster.nodes.iter().find(|n| n.id != first_leader) {
        match follower.handle.propose(b"purple".to_vec()).await {
            Err(e) => println!("  node {} refuses a write: {e}", follower.id),
            Ok(v) => anyhow::bail!("follower {} accepted a write (version {v})", follower.id),
        }
    }
    read_everywhere(&cluster.nodes, &cells).await?;

    println!("node {first_leader} crashes");
    cluster.crash(first_leader).await?;
    let leader = cluster.leader().await?;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );
    let version = leader.handle.propose(b"yellow".to_vec()).await?;
    println!(
        "  wrote \"yellow\" through node {}: version {version}",
        leader.id
    );
    read_everywhere(&cluster.nodes, &cells).await?;

    cluster.stop().await?;
    println!("done");
    Ok(())
}
