//! craft-core drives tikv's [`raft::RawNode`] correctly, so services only supply a
//! state machine, a log store and a transport.
//!
//! It owns the Ready loop and nothing else: it knows nothing of gRPC, RocksDB or
//! CITA-Cloud, and must not depend on tonic, rocksdb or any craft crate.
//!
//! Two layers:
//! - [`Replica`]: deterministic and sans-IO. `tick`, `step`, `propose` change raft
//!   state; [`Replica::handle_ready`] persists what raft asks for through the
//!   [`LogStore`] and returns what to send and to apply. Simulation tests drive many
//!   replicas with logical time, over [`MemLogStore`]s that track what they synced
//!   ([`MemLogStore::with_sync_tracking`]) so that a simulated power loss drops the
//!   rest.
//! - [`start`]: an async driver on tokio that ticks on a timer, batches everything that
//!   arrives together into one Ready (one fsync), applies committed entries to a
//!   [`StateMachine`] on a task of its own (handed over before the Ready's write:
//!   [`ReadySink`]) and answers each proposer through a [`NodeHandle`] from that task,
//!   so no answer waits for the raft task's fsync. State-machine
//!   snapshots are captured between two entries and serialised on a blocking thread
//!   ([`SnapshotJob`]), so neither raft nor the apply loop waits for a large state.
//!   Linearizable reads ([`NodeHandle::read_barrier`]) carry contexts unique across
//!   nodes and restarts ([`ReadContexts`]).
//!
//! ```
//! use craft_core::{MemLogStore, LogStore, Replica, ReplicaConfig, make_snapshot, voters};
//!
//! // A single-voter cluster: bootstrap the store, open, campaign, propose.
//! let store = MemLogStore::new();
//! store.bootstrap(make_snapshot(1, 1, voters([1]), Vec::new())).unwrap();
//! let (mut replica, _snapshot) = Replica::open(ReplicaConfig::new(1), store).unwrap();
//! replica.campaign().unwrap();
//! let mut applied = Vec::new();
//! while replica.has_ready() {
//!     let out = replica.handle_ready(&mut |_msgs| {}).unwrap();
//!     applied.extend(out.committed);
//! }
//! let at = replica.propose(Vec::new(), b"hello".to_vec()).unwrap();
//! while replica.has_ready() {
//!     let out = replica.handle_ready(&mut |_msgs| {}).unwrap();
//!     applied.extend(out.committed);
//! }
//! assert_eq!(applied.last().map(|c| c.index), Some(at.index));
//! ```

mod driver;
mod error;
pub mod gate;
pub mod logging;
mod read;
mod replica;
mod state_machine;
mod storage;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use driver::{start, DriverConfig, NodeHandle, NodeStatus, Role};
pub use error::{Error, ProposeError};
pub use read::ReadContexts;
pub use replica::{
    Committed, CommittedKind, Leadership, LogPosition, ReadyOutput, ReadySink, Replica,
    ReplicaConfig, SnapshotCheck,
};
pub use state_machine::{SnapshotJob, StateMachine};
pub use storage::{
    check_entries_range, make_snapshot, voters, LocalSnapshot, LogStore, LogWrite, MemLogStore,
    SnapshotStager, StagedSnapshot,
};
pub use transport::{SnapshotReporter, Transport};

/// The `raft` crate this engine is built on, re-exported so users name the same types.
pub use raft;
