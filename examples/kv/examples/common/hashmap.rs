//! The hashmap demo's state machine: a `HashMap<String, serde_json::Value>` changed by
//! JSON commands.

use craft_core::sync::LockExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use craft_core::raft::eraftpb::Snapshot;
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A change to the map.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
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
pub type Map = Arc<Mutex<HashMap<String, Value>>>;

/// A state machine over a `HashMap<String, serde_json::Value>`.
#[derive(Default)]
pub struct JsonMap {
    /// The map.
    pub map: Map,
}

impl StateMachine for JsonMap {
    /// The value the key held before, or an error for an undecodable command.
    type Response = Result<Option<Value>, String>;

    fn apply(&mut self, entry: &Committed) -> impl Future<Output = Self::Response> + Send {
        let result = match &entry.kind {
            CommittedKind::Normal { data, .. } => match serde_json::from_slice::<Op>(data) {
                Ok(op) => {
                    let mut map = self.map.locked();
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
        let map = self.map.locked().clone();
        SnapshotJob::new(move || serde_json::to_vec(&map).map_err(|e| e.to_string()))
    }

    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send {
        std::future::ready(decode(&snapshot.data).map(|restored| {
            *self.map.locked() = restored;
        }))
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        decode(data).map(drop)
    }
}

/// A snapshot's data as the map (empty: the initial, empty map).
fn decode(data: &[u8]) -> Result<HashMap<String, Value>, String> {
    if data.is_empty() {
        return Ok(HashMap::new());
    }
    serde_json::from_slice(data).map_err(|e| e.to_string())
}
