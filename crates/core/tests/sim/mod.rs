//! Deterministic simulation of a craft-core cluster: in-process replicas, a seeded
//! RNG, logical time and no tokio, so any failure replays exactly from its seed.
//!
//! - [`cluster`]: the harness (nodes, stores, state machines, crash and restart).
//! - [`network`]: what the network does to messages (loss, duplication, reordering,
//!   partitions, crashed nodes).
//! - [`fuzz`]: random steps and fault plans for the seeded fuzzer.
//! - One invariant per file, named after the Raft paper: [`election_safety`],
//!   [`log_matching`], [`leader_completeness`], [`state_machine_safety`],
//!   [`committed_immutable`], plus the [`client`] oracle.
//! - [`state_machine`]: the replicated key-value application and its snapshots.

pub mod client;
pub mod cluster;
pub mod committed_immutable;
pub mod election_safety;
pub mod fuzz;
pub mod leader_completeness;
pub mod log_matching;
pub mod network;
pub mod state_machine;
pub mod state_machine_safety;

pub use cluster::{conf_change, Cluster, SimConfig};
