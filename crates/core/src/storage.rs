//! What the replica needs from durable storage, and an in-memory implementation of it.
//!
//! The read side is [`raft::Storage`]; the write side is [`LogStore`]. Implementations
//! live in their own crates (`craft-storage` for RocksDB); [`MemLogStore`] here serves
//! tests, simulations and examples that need no durability. A simulation can ask it to
//! model a disk's write cache as well ([`MemLogStore::with_sync_tracking`]), so that a
//! simulated power loss drops whatever was written but not yet synced.

use crate::sync::RwLockExt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// A snapshot of the local state machine to save, and how far to compact the log
/// behind it.
#[derive(Debug, Clone)]
pub struct LocalSnapshot {
    /// The snapshot; its index is at most the last index of the log. Its data is empty
    /// when `staged` holds it.
    pub snapshot: Snapshot,
    /// Drop the log up to and including this index (at most the snapshot's index).
    pub compact_to: u64,
    /// The snapshot's data, already made durable by the store's [`SnapshotStager`]:
    /// the write records it instead of carrying the bytes.
    pub staged: Option<StagedSnapshot>,
}

/// Snapshot data a [`SnapshotStager`] made durable, waiting to be recorded by a
/// [`LogWrite`]. Until then the store's latest snapshot is the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedSnapshot {
    /// Index of the entry the state was captured after.
    pub index: u64,
    /// Length of the data in bytes.
    pub len: u64,
    /// CRC32C of the data, checked when it is read back.
    pub crc32c: u32,
}

/// Makes a local snapshot's data durable ahead of the write that records it, on a
/// thread of the caller's choosing.
///
/// A store that writes a snapshot's bytes in the same batch as the log would put a
/// write (and an fsync) of the whole state on the raft task's path, and every
/// proposal waits behind it. With a stager the driver writes the data from its
/// snapshot task instead, and the raft task's write only records it
/// ([`LocalSnapshot::staged`]). Staged data that is never recorded (a newer snapshot
/// overtook it, the process stopped) is the store's to remove.
pub trait SnapshotStager: Send + Sync + 'static {
    /// Durably stores `data`, the state machine after entry `index`.
    fn stage(&self, index: u64, data: &[u8]) -> raft::Result<StagedSnapshot>;
}

/// Checks a `raft::Storage::entries` request `[low, high)` against a log holding
/// `[first, last]`: `Compacted` below `first`, `Unavailable` past `last + 1` or when
/// `low > high`. Every store answers the same way.
pub fn check_entries_range(low: u64, high: u64, first: u64, last: u64) -> raft::Result<()> {
    if low < first {
        return Err(raft::Error::Store(raft::StorageError::Compacted));
    }
    if high > last + 1 || low > high {
        return Err(raft::Error::Store(raft::StorageError::Unavailable));
    }
    Ok(())
}

/// One Ready's worth of state to persist, written atomically.
///
/// Parts are applied in this order: `local_snapshot`, `snapshot`, `entries`,
/// `hard_state`. A received `snapshot` replaces the log and the state, so a
/// `local_snapshot` in the same write is skipped, whatever its index (raft hands out a
/// received snapshot only ahead of everything applied here).
#[derive(Debug, Default, Clone)]
pub struct LogWrite {
    /// A snapshot of the local state machine, saved in the same batch as the rest, so
    /// that a Ready costs one write. Need not be durable on its own: losing it only
    /// means replaying more of the log.
    pub local_snapshot: Option<LocalSnapshot>,
    /// A snapshot received from the leader: replaces the whole log.
    pub snapshot: Option<Snapshot>,
    /// New entries; an entry whose index is already present truncates the log there first.
    pub entries: Vec<Entry>,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Whether the write must reach stable storage before it returns. Raft requires this
    /// whenever entries, a snapshot, the term or the vote change.
    pub must_sync: bool,
}

impl LogWrite {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.local_snapshot.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }
}

/// The write side of a raft log store.
///
/// Methods take `&self` because [`raft::RawNode`] owns its storage and only lends it
/// out shared; implementations synchronise internally.
///
/// Invariants every implementation keeps (the shared storage suite checks them):
/// - [`LogStore::write`] is atomic: after a crash either all of it is there or none.
/// - When `must_sync` is set, `write` returns only once the data is on stable storage.
///   A write without it may be lost on power failure, until a later synced write (an
///   fsync of a write-ahead log) makes it durable too; the replica only sends what
///   depends on a synced write (entries, a snapshot, a term or a vote), so losing the
///   rest (a commit index, a local snapshot) costs a replay, not safety. The
///   simulation checks that by cutting power ([`MemLogStore::with_sync_tracking`]).
/// - [`raft::Storage::first_index`] is one past the last compacted index, and
///   [`raft::Storage::term`] answers for that compacted index too.
/// - [`raft::Storage::initial_state`] reports the conf state of the latest snapshot;
///   entries after it are replayed by the replica on start.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Persists one Ready atomically; durably when `write.must_sync`.
    fn write(&self, write: LogWrite) -> raft::Result<()>;

    /// Saves a snapshot of the local state machine and drops the log up to and
    /// including `compact_to` (which is at most the snapshot's index). Need not sync:
    /// losing it on power failure only means replaying more of the log. A snapshot at
    /// or below the latest one is ignored; one beyond the log is an error.
    ///
    /// The same as a [`LogWrite`] carrying only [`LogWrite::local_snapshot`].
    fn save_snapshot(&self, snapshot: Snapshot, compact_to: u64) -> raft::Result<()> {
        self.write(LogWrite {
            local_snapshot: Some(LocalSnapshot {
                snapshot,
                compact_to,
                staged: None,
            }),
            ..Default::default()
        })
    }

    /// The latest snapshot (metadata and data), or an empty one when there is none.
    fn latest_snapshot(&self) -> raft::Result<Snapshot>;

    /// Where the driver makes local snapshots' data durable off the raft task, if this
    /// store takes staged snapshots ([`SnapshotStager`]). `None` (the default): the
    /// data travels in the [`LogWrite`].
    fn snapshot_stager(&self) -> Option<std::sync::Arc<dyn SnapshotStager>> {
        None
    }

    /// Whether writes may block the thread (disk IO). The async driver moves blocking
    /// writes off the runtime's workers; an in-memory store skips that cost.
    fn may_block(&self) -> bool {
        true
    }

    /// Whether the store holds no raft state at all (never bootstrapped, never received
    /// a snapshot).
    fn is_empty(&self) -> raft::Result<bool> {
        Ok(self.initial_state()?.hard_state == HardState::default()
            && self.latest_snapshot()?.get_metadata().index == 0
            && self.last_index()? == 0)
    }

    /// Installs the initial snapshot of a new cluster member (bootstrap). Equivalent to
    /// receiving `snapshot` from a leader.
    fn bootstrap(&self, snapshot: Snapshot) -> raft::Result<()> {
        let hs = HardState {
            term: snapshot.get_metadata().term,
            commit: snapshot.get_metadata().index,
            ..Default::default()
        };
        self.write(LogWrite {
            snapshot: Some(snapshot),
            hard_state: Some(hs),
            must_sync: true,
            ..Default::default()
        })
    }
}

/// Builds a snapshot from its parts.
pub fn make_snapshot(index: u64, term: u64, conf_state: ConfState, data: Vec<u8>) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = term;
    snap.mut_metadata().set_conf_state(conf_state);
    snap.data = data;
    snap
}

/// Builds a conf state with the given voters.
pub fn voters(ids: impl IntoIterator<Item = u64>) -> ConfState {
    ConfState {
        voters: ids.into_iter().collect(),
        ..Default::default()
    }
}

#[derive(Debug, Default, Clone)]
struct MemCore {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Index and term of the last entry dropped from the log.
    truncated: (u64, u64),
    /// `entries[i].index == truncated.0 + 1 + i`.
    entries: Vec<Entry>,
}

impl MemCore {
    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }
}

/// What a disk would hold: the state as of the last sync, and the writes made since,
/// which only the page cache holds until the next sync.
#[derive(Debug, Default)]
struct Disk {
    /// The state as of the last sync.
    synced: MemCore,
    /// Writes made since, in order; each was accepted, so replaying them onto `synced`
    /// gives the live state.
    unsynced: Vec<LogWrite>,
    /// Writes that reached `synced` so far.
    synced_writes: u64,
}

impl Disk {
    /// Makes the first `n` unsynced writes durable.
    fn persist(&mut self, n: usize) {
        let n = n.min(self.unsynced.len());
        for write in self.unsynced.drain(..n) {
            // The same write on the same state: it was accepted once, so it is again.
            if let Err(e) = self.synced.apply(write) {
                unreachable!("replaying an accepted write failed: {e}");
            }
            self.synced_writes += 1;
        }
    }
}

#[derive(Debug, Default)]
struct MemState {
    /// What readers see: every write so far.
    live: MemCore,
    /// Present when the store tracks what is synced.
    disk: Option<Disk>,
}

/// An in-memory [`LogStore`]: fast, deterministic, and gone with the process.
///
/// Clones share the same log, so a test can keep a handle to a node's "disk" and
/// restart the node from it. Restarting from it models a process crash: everything
/// written survives, as it does in the page cache of a machine that keeps running.
///
/// Made with [`MemLogStore::with_sync_tracking`], the store also models a power loss:
/// it remembers the state as of the last sync (a write with [`LogWrite::must_sync`], or
/// [`MemLogStore::sync`]), which makes every write before it durable, as an fsync of a
/// write-ahead log does; [`MemLogStore::power_loss`] goes back to that state, keeping
/// as many of the later writes as the caller says reached the disk anyway. Writes stay
/// atomic: a power loss keeps or drops each one whole.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    core: Arc<RwLock<MemState>>,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that tracks what is synced, so that [`MemLogStore::power_loss`]
    /// can drop what is not. Costs a copy of every write until the next sync.
    pub fn with_sync_tracking() -> Self {
        Self {
            core: Arc::new(RwLock::new(MemState {
                live: MemCore::default(),
                disk: Some(Disk::default()),
            })),
        }
    }

    /// Whether the store tracks what is synced.
    pub fn tracks_sync(&self) -> bool {
        self.rl().disk.is_some()
    }

    /// Makes everything written so far durable, like an fsync with no new data.
    pub fn sync(&self) {
        if let Some(disk) = self.wl().disk.as_mut() {
            disk.persist(usize::MAX);
        }
    }

    /// How many writes were made since the last sync (0 when not tracking).
    pub fn unsynced_writes(&self) -> usize {
        self.rl().disk.as_ref().map_or(0, |d| d.unsynced.len())
    }

    /// How many writes reached stable storage so far, by a sync or a power loss that
    /// kept them (0 when not tracking).
    pub fn synced_writes(&self) -> u64 {
        self.rl().disk.as_ref().map_or(0, |d| d.synced_writes)
    }

    /// A power loss: the store goes back to its state as of the last sync, plus the
    /// first `keep` writes made after it (the ones the disk happened to write back
    /// before the power went). Returns how many writes were lost. Whoever holds the
    /// store must be restarted from it, as after a crash.
    ///
    /// # Panics
    ///
    /// When the store was not made by [`MemLogStore::with_sync_tracking`]: it cannot
    /// tell what was synced.
    pub fn power_loss(&self, keep: usize) -> usize {
        let mut state = self.wl();
        let Some(disk) = state.disk.as_mut() else {
            panic!("power_loss needs a store made by MemLogStore::with_sync_tracking");
        };
        let lost = disk.unsynced.len().saturating_sub(keep);
        disk.persist(keep);
        disk.unsynced.clear();
        state.live = disk.synced.clone();
        lost
    }

    fn rl(&self) -> RwLockReadGuard<'_, MemState> {
        // A poisoned lock means a panic elsewhere already; the data is still consistent
        // because every mutation below completes before it can panic.
        self.core.read_locked()
    }

    fn wl(&self) -> RwLockWriteGuard<'_, MemState> {
        self.core.write_locked()
    }
}

fn store_err(msg: String) -> raft::Error {
    raft::Error::Store(StorageError::Other(msg.into()))
}

impl raft::Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.rl();
        let core = &state.live;
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.snapshot.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let state = self.rl();
        let core = &state.live;
        check_entries_range(low, high, core.first_index(), core.last_index())?;
        let offset = core.first_index();
        let mut ents = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = self.rl();
        let core = &state.live;
        if idx == core.truncated.0 {
            return Ok(core.truncated.1);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().live.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().live.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let state = self.rl();
        let core = &state.live;
        if core.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(core.snapshot.clone())
    }
}

impl MemCore {
    /// Checks a local snapshot against the log; `Ok(false)` when it is not newer.
    fn check_local(&self, local: &LocalSnapshot) -> raft::Result<bool> {
        let index = local.snapshot.get_metadata().index;
        if index <= self.snapshot.get_metadata().index {
            return Ok(false);
        }
        if index > self.last_index() || local.compact_to > index {
            return Err(store_err(format!(
                "snapshot at {index} (compact to {}) beyond last index {}",
                local.compact_to,
                self.last_index()
            )));
        }
        Ok(true)
    }

    fn save_local(&mut self, local: LocalSnapshot) {
        let compact_to = local.compact_to;
        self.snapshot = local.snapshot;
        if compact_to > self.truncated.0 {
            let term = self.entries[(compact_to - self.first_index()) as usize].term;
            let drop = (compact_to - self.truncated.0) as usize;
            self.entries.drain(..drop);
            self.truncated = (compact_to, term);
        }
    }
}

impl MemCore {
    /// Applies one write atomically: checks everything first, then changes the state.
    fn apply(&mut self, write: LogWrite) -> raft::Result<()> {
        let core = self;
        // Check everything before changing anything, so a rejected write leaves the
        // store as it was.
        if write
            .local_snapshot
            .as_ref()
            .is_some_and(|l| l.staged.is_some())
        {
            // It has no stager, so nothing it was given can have been staged.
            return Err(store_err(
                "a staged snapshot given to a store that stages none".into(),
            ));
        }
        let local = match write.local_snapshot {
            Some(local) if write.snapshot.is_none() && core.check_local(&local)? => Some(local),
            _ => None,
        };
        if let Some(first) = write.entries.first() {
            let (first_index, last_index) = match &write.snapshot {
                Some(snap) => (snap.get_metadata().index + 1, snap.get_metadata().index),
                None => {
                    let compacted = local.as_ref().map_or(0, |l| l.compact_to);
                    (core.first_index().max(compacted + 1), core.last_index())
                }
            };
            if first.index < first_index || first.index > last_index + 1 {
                return Err(store_err(format!(
                    "append at {} outside log [{first_index}, {}]",
                    first.index,
                    last_index + 1
                )));
            }
        }
        if let Some(local) = local {
            core.save_local(local);
        }
        if let Some(snap) = write.snapshot {
            let meta = snap.get_metadata();
            core.truncated = (meta.index, meta.term);
            core.entries.clear();
            if core.hard_state.commit < meta.index {
                core.hard_state.commit = meta.index;
            }
            core.snapshot = snap;
        }
        if let Some(first) = write.entries.first() {
            let first_index = first.index;
            let keep = (first_index - core.first_index()) as usize;
            core.entries.truncate(keep);
            core.entries.extend(write.entries);
        }
        if let Some(hs) = write.hard_state {
            core.hard_state = hs;
        }
        Ok(())
    }
}

impl LogStore for MemLogStore {
    fn write(&self, write: LogWrite) -> raft::Result<()> {
        let mut state = self.wl();
        let state = &mut *state;
        match state.disk.as_mut() {
            None => state.live.apply(write),
            Some(disk) => {
                let must_sync = write.must_sync;
                state.live.apply(write.clone())?;
                disk.unsynced.push(write);
                if must_sync {
                    disk.persist(usize::MAX);
                }
                Ok(())
            }
        }
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        Ok(self.rl().live.snapshot.clone())
    }

    fn may_block(&self) -> bool {
        false
    }
}
