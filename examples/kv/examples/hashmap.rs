//! A replicated hash map of JSON values: three nodes in one process apply the same
//! inserts and removals in the same order, and every node answers reads with the same
//! map once it has passed a read barrier (raft's ReadIndex).
//!
//! `cargo run -p craft-kv --example hashmap`

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use common::LocalCluster;
use craft_core::raft::eraftpb::Snapshot;
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A change to the map.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    /// Sets `key` to `value`.
    Insert {
        /// The key.
        key: String,
        /// Any JSON value.
        value: Value,
    },
    /// Removes `key`.
    Remove {
        /// The key.
        key: String,
    },
}

/// The replicated map, shared with the demo for reads.
type Map = Arc<Mutex<HashMap<String, Value>>>;

/// A state machine over a `HashMap<String, serde_json::Value>`.
#[derive(Default)]
struct JsonMap {
    /// The map.
    map: Map,
}

impl StateMachine for JsonMap {
    /// The value the key held before, or an error for an undecodable command.
    type Response = Result<Option<Value>, String>;

    fn apply(&mut self, entry: &Committed) -> impl Future<Output = Self::Response> + Send {
        let result = match &entry.kind {
            CommittedKind::Normal { data, .. } => match serde_json::from_slice::<Op>(data) {
                Ok(op) => {
                    let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
                    Ok(match op {
                        Op::Insert { key, value } => map.insert(key, value),
                        Op::Remove { key } => map.remove(&key),
                    })
                }
                Err(e) => Err(format!("entry {}: {e}", entry.index)),
            },
            _ => Ok(None),
        };
        std::future::ready(result)
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // A copy is cheap for a demo-sized map; it is serialised off the apply task.
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner()).clone();
        SnapshotJob::new(move || serde_json::to_vec(&map).map_err(|e| e.to_string()))
    }

    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send {
        let result = if snapshot.data.is_empty() {
            Ok(HashMap::new())
        } else {
            serde_json::from_slice(&snapshot.data).map_err(|e| e.to_string())
        };
        std::future::ready(result.map(|restored| {
            *self.map.lock().unwrap_or_else(|e| e.into_inner()) = restored;
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut maps = BTreeMap::new();
    let cluster = LocalCluster::start(&[1, 2, 3], |id| {
        let sm = JsonMap::default();
        maps.insert(id, sm.map.clone());
        sm
    })
    .await?;
    let leader = cluster.leader().await?;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );

    let ops = [
        Op::Insert {
            key: "alice".into(),
            value: json!({ "age": 31, "langs": ["rust", "go"] }),
        },
        Op::Insert {
            key: "bob".into(),
            value: json!(42),
        },
        Op::Insert {
            key: "carol".into(),
            value: json!(null),
        },
        Op::Insert {
            key: "bob".into(),
            value: json!("forty-two"),
        },
        Op::Remove {
            key: "carol".into(),
        },
    ];
    for op in &ops {
        let command = serde_json::to_string(op)?;
        let previous = leader.handle.propose(command.clone().into_bytes()).await?;
        let previous = previous.map_err(anyhow::Error::msg)?;
        let previous = previous.map_or_else(|| "none".to_string(), |v| v.to_string());
        println!("  {command} (previous value: {previous})");
    }

    let mut seen = Vec::new();
    for node in &cluster.nodes {
        let applied = node.handle.read_barrier().await?;
        let map: BTreeMap<String, Value> = maps[&node.id]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = serde_json::to_string(&map)?;
        println!("  node {} (applied index {applied}): {text}", node.id);
        seen.push(text);
    }
    anyhow::ensure!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "replicas disagree: {seen:?}"
    );

    cluster.stop().await?;
    println!("all replicas agree; done");
    Ok(())
}
