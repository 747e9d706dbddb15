//! A [`LogStore`] wrapper that counts writes and records synced write latency.

use craft_core::raft::eraftpb::{Entry, Snapshot};
use craft_core::raft::{GetEntriesContext, RaftState};
use craft_core::{LogStore, LogWrite};
use prometheus::{Histogram, IntCounter};

/// Counts the writes of the inner store and times every synced one into a histogram.
#[derive(Clone)]
pub struct TimedStore<S> {
    inner: S,
    fsync: Histogram,
    writes: IntCounter,
}

impl<S> TimedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, fsync: Histogram, writes: IntCounter) -> Self {
        Self {
            inner,
            fsync,
            writes,
        }
    }
}

impl<S: LogStore> raft::Storage for TimedStore<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.inner.snapshot(request_index, to)
    }
}

impl<S: LogStore> LogStore for TimedStore<S> {
    fn write(&self, write: LogWrite) -> raft::Result<()> {
        if !write.is_empty() {
            self.writes.inc();
        }
        if write.must_sync {
            let _t = self.fsync.start_timer();
            self.inner.write(write)
        } else {
            self.inner.write(write)
        }
    }
    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        self.inner.latest_snapshot()
    }
    fn may_block(&self) -> bool {
        self.inner.may_block()
    }
    /// None, on purpose: the service's state is one small configuration, written in the
    /// log's batch more cheaply than into a file of its own with an fsync per block.
    fn snapshot_stager(&self) -> Option<std::sync::Arc<dyn craft_core::SnapshotStager>> {
        None
    }
}
