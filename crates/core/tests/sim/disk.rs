//! The simulated disks: each node's [`LogStore`] is a [`MemLogStore`] that tracks what
//! is synced ([`MemLogStore::with_sync_tracking`]), so the harness can inject two kinds
//! of failure:
//!
//! - a process crash ([`crate::sim::Cluster::crash`]): the replica is gone, every write
//!   survives (on Linux the page cache outlives the process);
//! - a power loss ([`crate::sim::Cluster::power_loss`]): the disk goes back to its last
//!   sync, plus however many later writes it happened to write back, as etcd's LazyFS
//!   tests do to real processes.
//!
//! A correct replica only sends what a synced write backs, so a power loss costs it
//! nothing a quorum relied on. To show that the checkers would notice otherwise, a
//! [`SimStore`] can also be made with a [`SyncFlaw`]: it then claims to sync writes it
//! leaves in the cache, as a store with a broken fsync path would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use craft_core::raft::eraftpb::{Entry, Snapshot};
use craft_core::raft::{self, GetEntriesContext, RaftState};
use craft_core::{LogStore, LogWrite, MemLogStore};

/// A way to get syncing wrong. Each one acknowledges a write (returns from a
/// `must_sync` write, so the replica sends what depends on it) that a power loss can
/// still take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFlaw {
    /// The sync of a write happens only when the next write comes: the synced
    /// watermark lags one write behind what was acknowledged.
    LagOneWrite,
    /// A write that must sync only for a new term or vote is not synced: a voter can
    /// forget whom it voted for.
    UnsyncedVotes,
    /// A write carrying entries or a snapshot is not synced: a follower can forget
    /// entries it acknowledged.
    UnsyncedEntries,
    /// Nothing is ever synced, as with fsync turned off.
    NoSync,
}

impl SyncFlaw {
    /// The flaw named `name` in kebab case (`lag-one-write`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its name in kebab case.
    pub fn name(self) -> &'static str {
        match self {
            SyncFlaw::LagOneWrite => "lag-one-write",
            SyncFlaw::UnsyncedVotes => "unsynced-votes",
            SyncFlaw::UnsyncedEntries => "unsynced-entries",
            SyncFlaw::NoSync => "no-sync",
        }
    }

    /// Every flaw.
    pub const ALL: [SyncFlaw; 4] = [
        SyncFlaw::LagOneWrite,
        SyncFlaw::UnsyncedVotes,
        SyncFlaw::UnsyncedEntries,
        SyncFlaw::NoSync,
    ];
}

/// A node's disk: a sync-tracking [`MemLogStore`], honest unless given a flaw. Clones
/// share the disk.
#[derive(Debug, Clone)]
pub struct SimStore {
    mem: MemLogStore,
    flaw: Option<SyncFlaw>,
    /// [`SyncFlaw::LagOneWrite`]: a write was acknowledged as synced but is not yet.
    owed: Arc<AtomicBool>,
}

impl SimStore {
    /// An empty disk, honest when `flaw` is `None`.
    pub fn new(flaw: Option<SyncFlaw>) -> Self {
        Self {
            mem: MemLogStore::with_sync_tracking(),
            flaw,
            owed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes everything written so far durable (the harness does so after bootstrap,
    /// as an installer would, whatever the flaw).
    pub fn sync(&self) {
        self.owed.store(false, Ordering::Relaxed);
        self.mem.sync();
    }

    /// Writes made since the last real sync.
    pub fn unsynced_writes(&self) -> usize {
        self.mem.unsynced_writes()
    }

    /// Writes that reached stable storage.
    pub fn synced_writes(&self) -> u64 {
        self.mem.synced_writes()
    }

    /// Loses power: back to the last sync plus the first `keep` writes after it.
    /// Returns how many writes were lost.
    pub fn power_loss(&self, keep: usize) -> usize {
        self.owed.store(false, Ordering::Relaxed);
        self.mem.power_loss(keep)
    }

    /// Whether this write is really synced, given the flaw.
    fn really_syncs(&self, write: &LogWrite) -> bool {
        if !write.must_sync {
            return false;
        }
        match self.flaw {
            None => true,
            Some(SyncFlaw::LagOneWrite | SyncFlaw::NoSync) => false,
            Some(SyncFlaw::UnsyncedVotes) => write.snapshot.is_some() || !write.entries.is_empty(),
            Some(SyncFlaw::UnsyncedEntries) => write.snapshot.is_none() && write.entries.is_empty(),
        }
    }
}

impl raft::Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

impl LogStore for SimStore {
    fn write(&self, mut write: LogWrite) -> raft::Result<()> {
        if self.flaw == Some(SyncFlaw::LagOneWrite) {
            // The previous write's sync, late.
            if self.owed.swap(write.must_sync, Ordering::Relaxed) {
                self.mem.sync();
            }
        }
        write.must_sync = self.really_syncs(&write);
        self.mem.write(write)
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        self.mem.latest_snapshot()
    }

    fn may_block(&self) -> bool {
        false
    }
}
