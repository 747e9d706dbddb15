//! [`RocksLogStore`]: the raft log, hard state and latest snapshot in one RocksDB.
//!
//! Every [`LogStore`] call is one `WriteBatch`. The truncation point, the last index,
//! the hard state and the latest snapshot's metadata are cached in memory, so
//! `first_index`, `last_index`, `initial_state` and `term` of the truncated index never
//! touch the disk; entries and snapshot data are read from RocksDB, and the data of
//! large entries from their segment files (see `payloads`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use craft_core::{LocalSnapshot, LogStore, LogWrite, SnapshotStager, StagedSnapshot};
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

use crate::error::StorageError;
use crate::layout::{
    decode, decode_log_value, decode_truncated, encode_payload_entry, encode_truncated,
    entry_index, entry_key, entry_key_name, state_key_name, HARD_STATE_KEY, LOG_CF, PAYLOAD_TAG,
    SNAPSHOT_DATA_KEY, SNAPSHOT_FILE_KEY, SNAPSHOT_META_KEY, STATE_CF, TRUNCATED_KEY,
};
use crate::payloads::{PayloadRef, Payloads, PAYLOADS_DIR};
use crate::snapshot_files::{self, FileStager, SNAPSHOTS_DIR};

mod meta;
mod options;
mod tail;

use meta::{load_meta, payload_records, snapshot_record, Meta};
pub use options::StoreOptions;
use tail::Tail;

/// Entries dropped with point deletes at most; a longer run becomes one range delete.
/// Point deletes cost nothing to later reads, while every range tombstone in a
/// memtable is fragmented again by every read and iterator.
const MAX_POINT_DELETES: u64 = 4096;

/// Entries of at least this many bytes are kept in blob files rather than in the log's
/// SSTs (see `descriptor`): those a store wrote before it kept large entries' data in
/// segment files, and those written with [`StoreOptions::payload_min_bytes`] above it.
const BLOB_MIN_BYTES: u64 = 64 << 10;

/// The log's shape and its in-memory tail, under the store's lock.
struct LogState {
    meta: Meta,
    tail: Tail,
    /// Snapshot files below this index go once a synced write has made the record of
    /// the newer snapshot durable (see `snapshot_files`).
    stale_files_below: Option<u64>,
    /// Segment files of large entries' data.
    payloads: Payloads,
}

/// What every clone of the store shares.
struct Shared {
    db: DB,
    path: PathBuf,
    options: StoreOptions,
    state: RwLock<LogState>,
    snapshots: FileStager,
    snapshots_dir: PathBuf,
}

/// A durable [`LogStore`] (and [`raft::Storage`]) on RocksDB.
///
/// Clones share the same database. The on-disk layout is described in
/// [`crate::layout`]. The truncation point, the last index, the hard state, the latest
/// snapshot's metadata, the terms of recent entries and (within
/// [`StoreOptions::entry_cache_bytes`]) the recent entries themselves are kept in
/// memory, so raft's reads of the tail of the log never touch the disk.
#[derive(Clone)]
pub struct RocksLogStore {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read_state();
        f.debug_struct("RocksLogStore")
            .field("path", &self.inner.path)
            .field("sync", &self.inner.options.sync)
            .field("truncated", &state.meta.truncated)
            .field("last_index", &state.meta.last_index)
            .field("cached_entries", &state.tail.entries.len())
            .finish_non_exhaustive()
    }
}

fn descriptor(name: &str, options: &StoreOptions, cache: &Cache) -> ColumnFamilyDescriptor {
    let mut opts = rocksdb::Options::default();
    // Built without compression libraries; say so rather than rely on the fallback.
    opts.set_compression_type(DBCompressionType::None);
    opts.set_write_buffer_size(options.write_buffer_bytes.max(64 << 10));
    opts.set_max_write_buffer_number(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index blocks count against the (small) cache instead of growing on the side.
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    if name == LOG_CF {
        // Large entries (a block of a megabyte) go to blob files when the memtable is
        // flushed, and the SSTs keep only a reference: compactions then move references,
        // never rewrite the retained log's bytes, and a blob file goes as a whole once
        // compaction behind the log has dropped every entry in it.
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(BLOB_MIN_BYTES);
        opts.set_blob_compression_type(DBCompressionType::None);
    }
    ColumnFamilyDescriptor::new(name, opts)
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or(StorageError::MissingColumnFamily(name))
}

/// An exclusive upper bound just past the key of `index` (no overflow at `u64::MAX`).
fn key_after(index: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[..8].copy_from_slice(&entry_key(index));
    out
}

/// Deletes the entries `[low, high]`: point deletes for a short run, one range delete
/// for a long one.
fn delete_entries(batch: &mut WriteBatch, log: &ColumnFamily, low: u64, high: u64) {
    if low > high {
        return;
    }
    if high - low < MAX_POINT_DELETES {
        for index in low..=high {
            batch.delete_cf(log, entry_key(index));
        }
    } else {
        batch.delete_range_cf(log, &entry_key(low)[..], &key_after(high)[..]);
    }
}

impl RocksLogStore {
    /// Opens the store at `path`, creating the directory, the database and its column
    /// families when missing.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StorageError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|source| StorageError::CreateDir {
            path: path.to_owned(),
            source,
        })?;
        let mut db_opts = rocksdb::Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // A raft log is small and short-lived: little memory, few threads, little
        // housekeeping.
        let write_buffer = options.write_buffer_bytes.max(64 << 10);
        db_opts.set_db_write_buffer_size(write_buffer * 4);
        db_opts.set_max_total_wal_size((write_buffer * 8) as u64);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(2);
        db_opts.set_max_log_file_size(1 << 20);
        db_opts.set_stats_dump_period_sec(0);
        db_opts.set_stats_persist_period_sec(0);
        db_opts.set_max_open_files(256);
        // Recovery drops a torn last record (a write that never finished, so was never
        // acknowledged) and refuses damage anywhere before it: a log shorter than what
        // was acknowledged would let this node forget entries and its vote. RocksDB's
        // default, point-in-time recovery, instead takes the first record failing its
        // checksum for the end of the log and opens without error. That mode is also
        // the only one WAL recycling allows, so WAL files are not recycled, though
        // recycling made each synced write cheaper (its fdatasync would overwrite
        // allocated blocks instead of growing the file): correctness first.
        db_opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        let cache = Cache::new_lru_cache(options.block_cache_bytes.max(64 << 10));
        let db = DB::open_cf_descriptors(
            &db_opts,
            path,
            [
                descriptor(LOG_CF, &options, &cache),
                descriptor(STATE_CF, &options, &cache),
            ],
        )
        .map_err(|source| StorageError::Rocks {
            context: format!("open {}", path.display()).into(),
            source,
        })?;
        let meta = load_meta(&db)?;
        let snapshots_dir = path.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&snapshots_dir).map_err(|source| StorageError::CreateDir {
            path: snapshots_dir.clone(),
            source,
        })?;
        // Every file but the one the latest snapshot's record names: staged but never
        // recorded, or superseded before a crash.
        let recorded = snapshot_record(&db)?
            .filter(|r| r.index == meta.snapshot_meta.index)
            .map(|r| r.index);
        snapshot_files::remove_where(&snapshots_dir, |index| Some(index) != recorded);
        let mut payloads = Payloads::open(path.join(PAYLOADS_DIR))?;
        payloads.retain_referenced(payload_records(&db)?)?;
        tracing::info!(
            path = %path.display(),
            first_index = meta.first_index(),
            last_index = meta.last_index,
            term = meta.hard_state.term,
            commit = meta.hard_state.commit,
            snapshot_index = meta.snapshot_meta.index,
            "opened raft log store"
        );
        let tail = Tail::empty_at(meta.last_index + 1);
        Ok(Self {
            inner: Arc::new(Shared {
                db,
                path: path.to_owned(),
                options,
                state: RwLock::new(LogState {
                    meta,
                    tail,
                    stale_files_below: None,
                    payloads,
                }),
                snapshots: FileStager::new(snapshots_dir.clone()),
                snapshots_dir,
            }),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read_state(&self) -> RwLockReadGuard<'_, LogState> {
        // The state is changed only after a successful write and by infallible steps,
        // so a panic elsewhere cannot leave it half updated.
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, LogState> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        cf(&self.inner.db, name)
    }

    /// Reads the entry at `index` from disk, which the metadata says is in the log,
    /// with its data when `with_data` (else a large entry's data is left empty).
    fn read_entry(
        &self,
        state: &LogState,
        index: u64,
        with_data: bool,
    ) -> Result<Entry, StorageError> {
        let value = self
            .inner
            .db
            .get_pinned_cf(self.cf(LOG_CF)?, entry_key(index))
            .map_err(|source| StorageError::Rocks {
                context: format!("read {}", entry_key_name(index)).into(),
                source,
            })?
            .ok_or_else(|| StorageError::Corrupt {
                key: entry_key_name(index),
                reason: "entry missing from the log".to_owned(),
            })?;
        let (mut entry, place) = decode_log_value(index, &value)?;
        if let (Some(place), true) = (place, with_data) {
            entry.data = state.payloads.read(index, &place)?;
        }
        Ok(entry)
    }

    /// Reads entries `[low, high)` from disk, all of which the metadata says are in the
    /// log, stopping once they exceed `max_size` (but returning at least one). Returns
    /// whether the size limit cut the read short.
    fn read_entries(
        &self,
        state: &LogState,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        ents: &mut Vec<Entry>,
    ) -> Result<bool, StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_key(high).to_vec());
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(LOG_CF)?, opts);
        it.seek(entry_key(low));
        let mut size = 0u64;
        let mut next = low;
        while next < high {
            let Some((key, value)) = it.item() else { break };
            let index = entry_index(key).ok_or_else(|| StorageError::Corrupt {
                key: format!("{LOG_CF}/{key:02x?}"),
                reason: format!("log key is {} bytes, expected 8", key.len()),
            })?;
            if index != next {
                break;
            }
            let (mut entry, place) = decode_log_value(index, value)?;
            if let Some(place) = place {
                entry.data = state.payloads.read(index, &place)?;
            }
            size = size.saturating_add(raft_prost::Message::encoded_len(&entry) as u64);
            ents.push(entry);
            next += 1;
            if max_size.is_some_and(|max| size > max) {
                // One over the limit: limit_size below drops it (or keeps it if alone).
                raft::util::limit_size(ents, max_size);
                return Ok(true);
            }
            it.next();
        }
        it.status().map_err(|source| StorageError::Rocks {
            context: format!("iterate {LOG_CF} [{low}, {high})").into(),
            source,
        })?;
        if next < high {
            return Err(StorageError::Corrupt {
                key: entry_key_name(next),
                reason: "entry missing from the log".to_owned(),
            });
        }
        Ok(false)
    }

    fn read_snapshot(&self, meta: &SnapshotMetadata) -> Result<Snapshot, StorageError> {
        let data = match snapshot_record(&self.inner.db)? {
            Some(record) if record.index == meta.index && meta.index > 0 => {
                snapshot_files::read(&self.inner.snapshots_dir, &record)?
            }
            _ => self
                .inner
                .db
                .get_cf(self.cf(STATE_CF)?, SNAPSHOT_DATA_KEY)
                .map_err(StorageError::rocks("read the snapshot data"))?
                .unwrap_or_default(),
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta.clone());
        snapshot.data = data;
        Ok(snapshot)
    }

    /// Writes `batch`. RocksDB is told never to wait inside a write: while its writes
    /// stall (memtables full, waiting for a flush) it would block the caller, and on a
    /// full disk that flush never completes while its error recovery waits for free
    /// space, so the write would hang rather than fail. The store waits instead,
    /// retrying, until RocksDB takes the write, fails it (a background error such as
    /// ENOSPC stops the database and fails every write), or the stall outlasts
    /// [`StoreOptions::write_stall_timeout`].
    fn commit(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync && self.inner.options.sync);
        opts.set_no_slowdown(true);
        let started = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            // `write_opt` takes the batch; keep the original for a retry.
            let attempt = WriteBatch::from_data(batch.data());
            match self.inner.db.write_opt(attempt, &opts) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {
                    let waited = started.elapsed();
                    if waited >= self.inner.options.write_stall_timeout {
                        return Err(StorageError::WriteStalled { waited, source: e });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(e) => return Err(StorageError::rocks("write a batch")(e)),
            }
        }
    }

    fn put_snapshot(
        &self,
        batch: &mut WriteBatch,
        snapshot: &Snapshot,
    ) -> Result<(), StorageError> {
        let state = self.cf(STATE_CF)?;
        let meta = snapshot.get_metadata();
        batch.put_cf(
            state,
            SNAPSHOT_META_KEY,
            raft_prost::Message::encode_to_vec(meta),
        );
        batch.put_cf(state, SNAPSHOT_DATA_KEY, &snapshot.data);
        batch.delete_cf(state, SNAPSHOT_FILE_KEY);
        Ok(())
    }

    /// Records a snapshot whose data a [`FileStager`] already wrote: its metadata and
    /// the file's record, no bytes.
    fn put_staged_snapshot(
        &self,
        batch: &mut WriteBatch,
        snapshot: &Snapshot,
        staged: &StagedSnapshot,
    ) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        if staged.index != meta.index {
            return Err(StorageError::Corrupt {
                key: state_key_name(SNAPSHOT_FILE_KEY),
                reason: format!(
                    "staged data is of index {}, the snapshot of {}",
                    staged.index, meta.index
                ),
            });
        }
        snapshot_files::check_present(&self.inner.snapshots_dir, staged)?;
        let state = self.cf(STATE_CF)?;
        batch.put_cf(
            state,
            SNAPSHOT_META_KEY,
            raft_prost::Message::encode_to_vec(meta),
        );
        batch.put_cf(
            state,
            SNAPSHOT_FILE_KEY,
            snapshot_files::encode_record(staged),
        );
        batch.delete_cf(state, SNAPSHOT_DATA_KEY);
        Ok(())
    }

    /// Adds a local snapshot and its compaction to `batch`, updating `next`. Returns
    /// the compaction point when the log is compacted, `None` when nothing is to be
    /// written (the snapshot is not newer than the latest).
    fn stage_local_snapshot(
        &self,
        batch: &mut WriteBatch,
        state: &LogState,
        next: &mut Meta,
        local: &LocalSnapshot,
    ) -> Result<Option<Option<u64>>, StorageError> {
        let index = local.snapshot.get_metadata().index;
        if index <= next.snapshot_meta.index {
            return Ok(None);
        }
        if index > next.last_index || local.compact_to > index {
            return Err(StorageError::SnapshotBeyondLog {
                index,
                compact_to: local.compact_to,
                last_index: next.last_index,
            });
        }
        match &local.staged {
            Some(staged) => self.put_staged_snapshot(batch, &local.snapshot, staged)?,
            None => self.put_snapshot(batch, &local.snapshot)?,
        }
        next.snapshot_meta = local.snapshot.get_metadata().clone();
        let compact_to = local.compact_to;
        if compact_to <= next.truncated.0 {
            return Ok(Some(None));
        }
        // compact_to is in [first_index, last_index] here.
        let term = match state.tail.term(compact_to) {
            Some(term) => term,
            None if compact_to == index => local.snapshot.get_metadata().term,
            None => self.read_entry(state, compact_to, false)?.term,
        };
        delete_entries(batch, self.cf(LOG_CF)?, next.first_index(), compact_to);
        next.truncated = (compact_to, term);
        batch.put_cf(
            self.cf(STATE_CF)?,
            TRUNCATED_KEY,
            encode_truncated(next.truncated),
        );
        Ok(Some(Some(compact_to)))
    }

    /// [`LogStore::write`] with this crate's error type.
    pub fn write_batch(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut state = self.write_state();
        let mut next = state.meta.clone();
        let mut batch = WriteBatch::default();
        let log = self.cf(LOG_CF)?;
        let mut hard_state_changed = false;

        // Build the whole batch first; memory changes only once it is written.
        let mut compacted = None;
        if let (Some(local), None) = (&write.local_snapshot, &write.snapshot) {
            if let Some(c) = self.stage_local_snapshot(&mut batch, &state, &mut next, local)? {
                compacted = c;
            }
        }

        if let Some(snapshot) = &write.snapshot {
            let meta = snapshot.get_metadata();
            delete_entries(&mut batch, log, next.first_index(), next.last_index);
            next.truncated = (meta.index, meta.term);
            next.last_index = meta.index;
            if next.hard_state.commit < meta.index {
                next.hard_state.commit = meta.index;
                hard_state_changed = true;
            }
            batch.put_cf(
                self.cf(STATE_CF)?,
                TRUNCATED_KEY,
                encode_truncated(next.truncated),
            );
            self.put_snapshot(&mut batch, snapshot)?;
            next.snapshot_meta = meta.clone();
        }

        let mut truncated_from = None;
        if let (Some(first), Some(last)) = (write.entries.first(), write.entries.last()) {
            let contiguous = write
                .entries
                .iter()
                .zip(first.index..)
                .all(|(e, index)| e.index == index);
            if !contiguous || first.index < next.first_index() || first.index > next.last_index + 1
            {
                return Err(StorageError::NonContiguousAppend {
                    first: first.index,
                    last: last.index,
                    first_index: next.first_index(),
                    next_index: next.last_index + 1,
                });
            }
            if first.index <= next.last_index {
                // Conflicting suffix: drop what the new entries do not overwrite.
                delete_entries(&mut batch, log, last.index + 1, next.last_index);
                truncated_from = Some(first.index);
            }
            for entry in &write.entries {
                let value = if entry.data.len() >= self.inner.options.payload_min_bytes {
                    let place = state.payloads.append(entry.index, &entry.data)?;
                    encode_payload_entry(entry, &place)
                } else {
                    raft_prost::Message::encode_to_vec(entry)
                };
                batch.put_cf(log, entry_key(entry.index), value);
            }
            next.last_index = last.index;
        }

        if let Some(hs) = &write.hard_state {
            next.hard_state = hs.clone();
            hard_state_changed = true;
        }
        if hard_state_changed {
            let value = raft_prost::Message::encode_to_vec(&next.hard_state);
            batch.put_cf(self.cf(STATE_CF)?, HARD_STATE_KEY, value);
        }

        if batch.is_empty() {
            return Ok(());
        }
        let sync = write.must_sync && self.inner.options.sync;
        if sync {
            // The records in this batch (and in unsynced batches before it) name these
            // bytes: durable first.
            state.payloads.sync()?;
        }
        self.commit(batch, write.must_sync)?;

        // Files of snapshots older than the one just recorded go once that record is
        // durable: now if this write was synced, else after the next synced write.
        if next.snapshot_meta.index > state.meta.snapshot_meta.index {
            let below = next.snapshot_meta.index;
            state.stale_files_below = Some(state.stale_files_below.map_or(below, |b| b.max(below)));
        }
        let durable = !self.inner.options.sync || write.must_sync;
        if let (true, Some(below)) = (durable, state.stale_files_below) {
            snapshot_files::remove_where(&self.inner.snapshots_dir, |index| index < below);
            state.stale_files_below = None;
        }
        if durable {
            // The truncation point only grows, so the durable one is this write's.
            state.payloads.remove_through(next.truncated.0);
        }

        // Written: bring the in-memory view in line.
        let old_last = state.meta.last_index;
        if let Some(snapshot) = &write.snapshot {
            tracing::info!(
                index = snapshot.get_metadata().index,
                term = snapshot.get_metadata().term,
                "installed snapshot, log replaced"
            );
            state.tail = Tail::empty_at(snapshot.get_metadata().index + 1);
        } else if let Some(c) = compacted {
            state.tail.compact_to(c);
        }
        if let Some(from) = truncated_from {
            state.tail.truncate_from(from, old_last);
        }
        let budget = self.inner.options.entry_cache_bytes;
        for entry in write.entries {
            state.tail.push(entry, budget);
        }
        state.meta = next;
        Ok(())
    }

    /// Entries `[low, high)`, from memory where the tail holds them.
    fn get_entries(
        &self,
        state: &LogState,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let cached_from = state.tail.entries_start(state.meta.last_index);
        let wanted = usize::try_from(high - low).unwrap_or(usize::MAX);
        let mut ents = Vec::with_capacity(wanted.min(1024));
        if low < cached_from {
            let disk_high = high.min(cached_from);
            if self.read_entries(state, low, disk_high, max_size, &mut ents)? || disk_high == high {
                return Ok(ents);
            }
        }
        let from = low.max(cached_from);
        let skip = (from - cached_from) as usize;
        ents.extend(
            state
                .tail
                .entries
                .iter()
                .skip(skip)
                .take((high - from) as usize)
                .cloned(),
        );
        raft::util::limit_size(&mut ents, max_size);
        Ok(ents)
    }
}

impl raft::Storage for RocksLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.read_state();
        Ok(RaftState::new(
            state.meta.hard_state.clone(),
            state.meta.snapshot_meta.get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let state = self.read_state();
        craft_core::check_entries_range(
            low,
            high,
            state.meta.first_index(),
            state.meta.last_index,
        )?;
        if low == high {
            return Ok(Vec::new());
        }
        // Hold the lock while reading so no write changes the range underneath.
        Ok(self.get_entries(&state, low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = self.read_state();
        let meta = &state.meta;
        if idx == meta.truncated.0 {
            return Ok(meta.truncated.1);
        }
        if idx < meta.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > meta.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if let Some(term) = state.tail.term(idx) {
            return Ok(term);
        }
        Ok(self.read_entry(&state, idx, false)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_state().meta.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_state().meta.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let meta = self.read_state().meta.snapshot_meta.clone();
        if meta.index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.read_snapshot(&meta)?)
    }
}

impl LogStore for RocksLogStore {
    fn write(&self, write: LogWrite) -> raft::Result<()> {
        Ok(self.write_batch(write)?)
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        let meta = self.read_state().meta.snapshot_meta.clone();
        Ok(self.read_snapshot(&meta)?)
    }

    fn snapshot_stager(&self) -> Option<Arc<dyn SnapshotStager>> {
        Some(Arc::new(self.inner.snapshots.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7u8; len],
            ..Default::default()
        }
    }

    #[test]
    fn tail_keeps_terms_and_a_byte_budget_of_entries() {
        let mut tail = Tail::empty_at(1);
        for i in 1..=10 {
            tail.push(entry(i, 1 + i / 5, 68), 400);
        }
        // 100 bytes an entry: the newest four fit the budget.
        assert_eq!(tail.entries.len(), 4);
        assert_eq!(tail.entries_start(10), 7);
        assert_eq!(tail.term(1), Some(1));
        assert_eq!(tail.term(10), Some(3));
        assert_eq!(tail.term(11), None);

        tail.truncate_from(9, 10);
        assert_eq!((tail.entries.len(), tail.term(9)), (2, None));
        assert_eq!(tail.entries_start(8), 7);
        tail.compact_to(7);
        assert_eq!(
            (tail.entries.len(), tail.term(7), tail.term(8)),
            (1, None, Some(2))
        );
        assert_eq!(tail.entries_bytes, 100);

        // Truncating below what the terms cover restarts them there.
        tail.truncate_from(3, 8);
        assert_eq!(
            (tail.terms_start, tail.terms.len(), tail.entries.len()),
            (3, 0, 0)
        );
        // An entry larger than the budget is still kept, alone.
        tail.push(entry(3, 4, 1000), 400);
        assert_eq!((tail.entries.len(), tail.term(3)), (1, Some(4)));
    }
}
