//! What the replica needs from the application it replicates.

use std::future::Future;

use raft::eraftpb::Snapshot;

use crate::replica::Committed;

/// The replicated application. The driver calls it from one task, in log order.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back once its command is applied.
    type Response: Send + 'static;

    /// Applies one committed entry. Every entry comes through, including leader no-ops
    /// and membership changes (already applied to raft), so an application can track
    /// its applied index. Must be deterministic: every replica applies the same entries
    /// and must reach the same state.
    fn apply(&mut self, entry: &Committed) -> impl Future<Output = Self::Response> + Send;

    /// Serialises the current state, taken right after the last applied entry.
    fn snapshot(&mut self) -> Vec<u8>;

    /// Replaces the state with a snapshot's (from the local store at start, or from the
    /// leader when this replica fell behind its log).
    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send;
}
