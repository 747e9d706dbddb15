//! Deterministic simulation of a craft-core cluster: in-process replicas, a seeded
//! RNG, logical time and no tokio, so any failure replays exactly from its seed.
//!
//! - [`cluster`]: the harness (nodes, stores, state machines, crash, power loss and
//!   restart).
//! - [`disk`]: each node's store, which knows what it has synced. Two faults stop a
//!   node: a process crash keeps every write (the page cache outlives the process); a
//!   power loss keeps only what was synced, plus as many later writes as the fuzzer
//!   says reached the disk anyway, as etcd's LazyFS tests do to real processes. A
//!   correct replica sends nothing a power loss can take back (no acknowledged entry or
//!   vote before its write synced); deliberately flawed disks ([`disk::SyncFlaw`]) that
//!   acknowledge writes early show the checkers catch it when one does.
//! - [`network`]: what the network does to messages (loss, duplication, reordering,
//!   partitions, crashed nodes).
//! - [`fuzz`]: random steps and fault plans for the seeded fuzzer; about half the
//!   seeds cut power to one node or to all at once.
//! - One invariant per file, named after the Raft paper: [`election_safety`],
//!   [`log_matching`], [`leader_completeness`], [`state_machine_safety`],
//!   [`committed_immutable`], plus the [`client`] oracle. The message gate of
//!   craft-core counts as one more: an honest cluster sends nothing it refuses, and a
//!   heartbeat committing past a follower's log is what a follower that forgot
//!   acknowledged entries receives.
//! - [`state_machine`]: the replicated key-value application and its snapshots.

pub mod client;
pub mod cluster;
pub mod committed_immutable;
pub mod disk;
pub mod election_safety;
pub mod fuzz;
pub mod leader_completeness;
pub mod log_matching;
pub mod network;
pub mod state_machine;
pub mod state_machine_safety;

pub use cluster::{conf_change, Cluster, SimConfig};
