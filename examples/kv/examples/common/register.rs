//! The register demo's state machine: one string, overwritten by every write, with a
//! version counting the writes.

use craft_core::sync::LockExt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use craft_core::raft::eraftpb::Snapshot;
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};

/// The register's state: how many writes it has seen, and the last one.
pub type Cell = Arc<Mutex<(u64, Option<String>)>>;

/// A state machine holding one string; every command overwrites it.
#[derive(Default)]
pub struct Register {
    /// Shared with the demo, which reads it after a read barrier.
    pub cell: Cell,
}

impl StateMachine for Register {
    /// The version after the write.
    type Response = u64;

    fn apply(&mut self, entry: &Committed) -> impl Future<Output = u64> + Send {
        let mut cell = self.cell.locked();
        if let CommittedKind::Normal { data, .. } = &entry.kind {
            cell.0 += 1;
            cell.1 = Some(String::from_utf8_lossy(data).into_owned());
        }
        std::future::ready(cell.0)
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // One string: serialised at once, on the apply task.
        let cell = self.cell.locked();
        SnapshotJob::ready(serde_json::to_vec(&*cell).unwrap_or_default())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send {
        std::future::ready(decode(&snapshot.data).map(|restored| {
            *self.cell.locked() = restored;
        }))
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        decode(data).map(drop)
    }
}

/// A snapshot's data as the register's state (empty: the initial state).
fn decode(data: &[u8]) -> Result<(u64, Option<String>), String> {
    if data.is_empty() {
        return Ok((0, None));
    }
    serde_json::from_slice(data).map_err(|e| e.to_string())
}
