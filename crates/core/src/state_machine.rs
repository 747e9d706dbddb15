//! What the replica needs from the application it replicates.

use std::future::Future;

use raft::eraftpb::Snapshot;

use crate::replica::Committed;

/// The replicated application. The driver calls it from one task (the apply task), in
/// log order.
///
/// # Snapshots
///
/// Every so often (see [`crate::ReplicaConfig::snapshot_interval`]) the driver asks for
/// a snapshot right after an entry is applied. Taking one is split in two, so that
/// neither raft nor the apply task waits for a large state to be serialised:
///
/// 1. [`StateMachine::snapshot`] runs on the apply task, between two entries. It must
///    be quick: capture the state as it is (an `Arc` of an immutable or persistent
///    structure, a copy-on-write handle, or a copy when the state is small) and return
///    a [`SnapshotJob`] that serialises that capture.
/// 2. The driver runs the job on a blocking thread ([`tokio::task::spawn_blocking`])
///    while raft and the apply task go on. Entries applied meanwhile must not change
///    what the job serialises: its bytes are the state at the entry it was taken
///    after. Once done, the driver saves the snapshot at that entry and compacts the
///    log behind it with its next write.
///
/// At most one job runs at a time; a job whose turn comes after a newer one was taken
/// is dropped unrun. A job that fails (or panics) saves nothing: the log is kept, and
/// a later snapshot is tried after more entries. A state small enough to serialise in
/// microseconds can return [`SnapshotJob::ready`], which skips the blocking thread.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back once its command is applied.
    type Response: Send + 'static;

    /// Applies one committed entry. Every entry comes through, including leader no-ops
    /// and membership changes (already applied to raft), so an application can track
    /// its applied index. Must be deterministic: every replica applies the same entries
    /// and must reach the same state.
    fn apply(&mut self, entry: &Committed) -> impl Future<Output = Self::Response> + Send;

    /// Captures the current state, right after the last applied entry, and returns the
    /// job that serialises it. Runs on the apply task: capture cheaply, serialise in
    /// the job (see [Snapshots](StateMachine#snapshots)).
    fn snapshot(&mut self) -> SnapshotJob;

    /// Replaces the state with a snapshot's (from the local store at start, or from the
    /// leader when this replica fell behind its log). `snapshot.data` is what a
    /// [`SnapshotJob`] of some replica produced.
    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send;

    /// Checks a snapshot's data, received from a peer, before raft may persist it: `Err`
    /// with the reason when [`StateMachine::restore`] could not restore from it. Runs on
    /// the raft task, so it must be quick and must not block (decode, check limits,
    /// drop the result); it needs no state, as snapshots of every replica share one
    /// format. A snapshot refused here is dropped like any message the gate refuses
    /// ([`crate::gate::Rejection::BadSnapshotData`]): the replica goes on with what it
    /// had, and never stores a snapshot it could not open again.
    fn check_snapshot(data: &[u8]) -> Result<(), String>
    where
        Self: Sized;
}

/// Serialises a state captured by [`StateMachine::snapshot`], off the raft and apply
/// tasks.
///
/// ```
/// use std::sync::Arc;
/// use craft_core::SnapshotJob;
///
/// // The state lives in an Arc; applying replaces it (copy-on-write), so the capture
/// // below stays as it was while the job runs.
/// let state: Arc<Vec<u64>> = Arc::new(vec![1, 2, 3]);
/// let captured = Arc::clone(&state);
/// let job = SnapshotJob::new(move || {
///     Ok(captured.iter().flat_map(|v| v.to_be_bytes()).collect())
/// });
/// assert_eq!(job.run().map(|bytes| bytes.len()), Ok(24));
/// assert_eq!(SnapshotJob::ready(vec![7]).run(), Ok(vec![7]));
/// ```
pub struct SnapshotJob(SnapshotWork);

enum SnapshotWork {
    /// Already serialised.
    Ready(Vec<u8>),
    /// Serialises when run.
    Deferred(Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>),
}

impl SnapshotJob {
    /// A job that runs `serialise` on a blocking thread. It may take as long as it
    /// needs; it must not touch state that later entries change (capture before).
    pub fn new(serialise: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static) -> Self {
        Self(SnapshotWork::Deferred(Box::new(serialise)))
    }

    /// A snapshot that is already serialised (a small state): saved without a trip to
    /// a blocking thread.
    pub fn ready(data: Vec<u8>) -> Self {
        Self(SnapshotWork::Ready(data))
    }

    /// Whether the bytes are already there ([`SnapshotJob::ready`]).
    pub fn is_ready(&self) -> bool {
        matches!(self.0, SnapshotWork::Ready(_))
    }

    /// Serialises, on the calling thread.
    pub fn run(self) -> Result<Vec<u8>, String> {
        match self.0 {
            SnapshotWork::Ready(data) => Ok(data),
            SnapshotWork::Deferred(serialise) => serialise(),
        }
    }
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            SnapshotWork::Ready(data) => f
                .debug_tuple("SnapshotJob::Ready")
                .field(&data.len())
                .finish(),
            SnapshotWork::Deferred(_) => f.write_str("SnapshotJob::Deferred"),
        }
    }
}
