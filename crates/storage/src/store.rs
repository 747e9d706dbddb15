//! [`RocksLogStore`]: the raft log, hard state and latest snapshot in one RocksDB.
//!
//! Every [`LogStore`] call is one `WriteBatch`. The truncation point, the last index,
//! the hard state and the latest snapshot's metadata are cached in memory, so
//! `first_index`, `last_index`, `initial_state` and `term` of the truncated index never
//! touch the disk; entries and snapshot data are read from RocksDB.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use craft_core::{LogStore, LogWrite};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ReadOptions, WriteBatch, WriteOptions,
    DB,
};

use crate::error::StorageError;
use crate::layout::{
    decode_truncated, encode_truncated, entry_index, entry_key, entry_key_name, state_key_name,
    HARD_STATE_KEY, LOG_CF, LOG_END, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, STATE_CF, TRUNCATED_KEY,
};

/// How a [`RocksLogStore`] is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Whether writes that raft marks `must_sync` wait for fsync. Default `true`.
    ///
    /// Turn off for benchmarks only: without it an acknowledged write can be lost on
    /// power failure (a process crash alone loses nothing, the WAL is still written).
    pub sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { sync: true }
    }
}

impl StoreOptions {
    /// Sets [`StoreOptions::sync`].
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }
}

/// What the store keeps in memory, always equal to what is on disk.
#[derive(Debug, Clone, Default)]
struct Cached {
    hard_state: HardState,
    snapshot_meta: SnapshotMetadata,
    /// Index and term of the last entry dropped from the log.
    truncated: (u64, u64),
    /// Index of the last entry, or `truncated.0` when the log is empty.
    last_index: u64,
}

impl Cached {
    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }
}

struct Inner {
    db: DB,
    path: PathBuf,
    sync: bool,
    cached: RwLock<Cached>,
}

/// A durable [`LogStore`] (and [`raft::Storage`]) on RocksDB.
///
/// Clones share the same database. The on-disk layout is described in
/// [`crate::layout`].
#[derive(Clone)]
pub struct RocksLogStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.read_cached();
        f.debug_struct("RocksLogStore")
            .field("path", &self.inner.path)
            .field("sync", &self.inner.sync)
            .field("truncated", &cached.truncated)
            .field("last_index", &cached.last_index)
            .finish_non_exhaustive()
    }
}

fn descriptor(name: &str) -> ColumnFamilyDescriptor {
    let mut opts = rocksdb::Options::default();
    // Built without compression libraries; say so rather than rely on the fallback.
    opts.set_compression_type(DBCompressionType::None);
    ColumnFamilyDescriptor::new(name, opts)
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or(StorageError::MissingColumnFamily(name))
}

fn encode<M: protobuf::Message>(
    msg: &M,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, StorageError> {
    msg.write_to_bytes().map_err(|e| StorageError::Encode {
        what: what(),
        reason: e.to_string(),
    })
}

fn decode<M: protobuf::Message>(
    bytes: &[u8],
    key: impl FnOnce() -> String,
) -> Result<M, StorageError> {
    let reason = match M::parse_from_bytes(bytes) {
        // We only ever write known fields; unknown ones mean bytes that merely happen
        // to parse.
        Ok(msg) if msg.get_unknown_fields().iter().next().is_some() => {
            "value has fields this store never writes".to_owned()
        }
        Ok(msg) => return Ok(msg),
        Err(e) => e.to_string(),
    };
    Err(StorageError::Corrupt { key: key(), reason })
}

/// Decodes the entry stored under `index` and checks it claims that index.
fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = decode(bytes, || entry_key_name(index))?;
    if entry.index != index {
        return Err(StorageError::Corrupt {
            key: entry_key_name(index),
            reason: format!("entry claims index {}", entry.index),
        });
    }
    Ok(entry)
}

/// An exclusive upper bound just past the key of `index` (no overflow at `u64::MAX`).
fn key_after(index: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[..8].copy_from_slice(&entry_key(index));
    out
}

fn get_state<M: protobuf::Message>(db: &DB, key: &'static [u8]) -> Result<Option<M>, StorageError> {
    let state = cf(db, STATE_CF)?;
    let value = db
        .get_pinned_cf(state, key)
        .map_err(|source| StorageError::Rocks {
            context: format!("read {}", state_key_name(key)).into(),
            source,
        })?;
    value
        .map(|v| decode(&v, || state_key_name(key)))
        .transpose()
}

/// Reads everything the cache holds from disk, checking the log's ends agree with the
/// truncation point.
fn load_cached(db: &DB) -> Result<Cached, StorageError> {
    let hard_state = get_state::<HardState>(db, HARD_STATE_KEY)?.unwrap_or_default();
    let snapshot_meta = get_state::<SnapshotMetadata>(db, SNAPSHOT_META_KEY)?.unwrap_or_default();
    let state = cf(db, STATE_CF)?;
    let truncated = match db
        .get_pinned_cf(state, TRUNCATED_KEY)
        .map_err(StorageError::rocks("read the truncation point"))?
    {
        None => (0, 0),
        Some(v) => decode_truncated(&v).ok_or_else(|| StorageError::Corrupt {
            key: state_key_name(TRUNCATED_KEY),
            reason: format!("expected 16 bytes, found {}", v.len()),
        })?,
    };

    let log = cf(db, LOG_CF)?;
    let mut it = db.raw_iterator_cf(log);
    let key_index = |key: &[u8]| {
        entry_index(key).ok_or_else(|| StorageError::Corrupt {
            key: format!("{LOG_CF}/{key:02x?}"),
            reason: format!("log key is {} bytes, expected 8", key.len()),
        })
    };
    it.seek_to_first();
    let first = it.key().map(key_index).transpose()?;
    it.seek_to_last();
    let last = it.key().map(key_index).transpose()?;
    it.status()
        .map_err(StorageError::rocks("scan the ends of the log"))?;

    let last_index = match (first, last) {
        (Some(first), Some(last)) => {
            if first != truncated.0 + 1 {
                return Err(StorageError::Corrupt {
                    key: entry_key_name(first),
                    reason: format!(
                        "log starts at {first} but the truncation point is {}",
                        truncated.0
                    ),
                });
            }
            last
        }
        _ => truncated.0,
    };
    Ok(Cached {
        hard_state,
        snapshot_meta,
        truncated,
        last_index,
    })
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
        let db =
            DB::open_cf_descriptors(&db_opts, path, [descriptor(LOG_CF), descriptor(STATE_CF)])
                .map_err(|source| StorageError::Rocks {
                    context: format!("open {}", path.display()).into(),
                    source,
                })?;
        let cached = load_cached(&db)?;
        tracing::info!(
            path = %path.display(),
            first_index = cached.first_index(),
            last_index = cached.last_index,
            term = cached.hard_state.term,
            commit = cached.hard_state.commit,
            snapshot_index = cached.snapshot_meta.index,
            "opened raft log store"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                sync: options.sync,
                cached: RwLock::new(cached),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read_cached(&self) -> RwLockReadGuard<'_, Cached> {
        // The cache is replaced in one assignment after each successful write, so a
        // panic elsewhere cannot leave it half updated.
        self.inner
            .cached
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cached(&self) -> RwLockWriteGuard<'_, Cached> {
        self.inner
            .cached
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        cf(&self.inner.db, name)
    }

    /// Reads the entry at `index`, which the cache says is in the log.
    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
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
        decode_entry(index, &value)
    }

    /// Reads entries `[low, high)`, all of which the cache says are in the log, stopping
    /// once they exceed `max_size` (but returning at least one).
    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_key(high).to_vec());
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(LOG_CF)?, opts);
        it.seek(entry_key(low));
        let wanted = usize::try_from(high - low).unwrap_or(usize::MAX);
        let mut ents = Vec::with_capacity(wanted.min(1024));
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
            let entry = decode_entry(index, value)?;
            size = size.saturating_add(u64::from(entry.compute_size()));
            ents.push(entry);
            next += 1;
            if max_size.is_some_and(|max| size > max) {
                // One over the limit: limit_size below drops it (or keeps it if alone).
                raft::util::limit_size(&mut ents, max_size);
                return Ok(ents);
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
        Ok(ents)
    }

    fn read_snapshot(&self, meta: &SnapshotMetadata) -> Result<Snapshot, StorageError> {
        let data = self
            .inner
            .db
            .get_cf(self.cf(STATE_CF)?, SNAPSHOT_DATA_KEY)
            .map_err(StorageError::rocks("read the snapshot data"))?
            .unwrap_or_default();
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta.clone());
        snapshot.data = data.into();
        Ok(snapshot)
    }

    fn commit(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync && self.inner.sync);
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(StorageError::rocks("write a batch"))
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
            encode(meta, || format!("snapshot metadata at {}", meta.index))?,
        );
        batch.put_cf(state, SNAPSHOT_DATA_KEY, &snapshot.data);
        Ok(())
    }

    /// [`LogStore::write`] with this crate's error type.
    pub fn write_batch(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut cached = self.write_cached();
        let mut next = cached.clone();
        let mut batch = WriteBatch::default();
        let log = self.cf(LOG_CF)?;
        let state = self.cf(STATE_CF)?;
        let mut hard_state_changed = false;

        if let Some(snapshot) = &write.snapshot {
            let meta = snapshot.get_metadata();
            batch.delete_range_cf(log, &entry_key(0)[..], &LOG_END[..]);
            next.truncated = (meta.index, meta.term);
            next.last_index = meta.index;
            if next.hard_state.commit < meta.index {
                next.hard_state.commit = meta.index;
                hard_state_changed = true;
            }
            batch.put_cf(state, TRUNCATED_KEY, encode_truncated(next.truncated));
            self.put_snapshot(&mut batch, snapshot)?;
            next.snapshot_meta = meta.clone();
        }

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
                // Conflicting suffix: drop it (and anything past it) before appending.
                batch.delete_range_cf(log, &entry_key(first.index)[..], &LOG_END[..]);
            }
            for entry in &write.entries {
                let value = encode(entry, || format!("entry {}", entry.index))?;
                batch.put_cf(log, entry_key(entry.index), value);
            }
            next.last_index = last.index;
        }

        if let Some(hs) = write.hard_state {
            next.hard_state = hs;
            hard_state_changed = true;
        }
        if hard_state_changed {
            let value = encode(&next.hard_state, || "hard state".to_owned())?;
            batch.put_cf(state, HARD_STATE_KEY, value);
        }

        if batch.is_empty() {
            return Ok(());
        }
        self.commit(batch, write.must_sync)?;
        if let Some(snapshot) = &write.snapshot {
            tracing::info!(
                index = snapshot.get_metadata().index,
                term = snapshot.get_metadata().term,
                "installed snapshot, log replaced"
            );
        }
        *cached = next;
        Ok(())
    }

    /// [`LogStore::save_snapshot`] with this crate's error type.
    pub fn save_local_snapshot(
        &self,
        snapshot: Snapshot,
        compact_to: u64,
    ) -> Result<(), StorageError> {
        let mut cached = self.write_cached();
        let index = snapshot.get_metadata().index;
        if index <= cached.snapshot_meta.index {
            return Ok(());
        }
        if index > cached.last_index || compact_to > index {
            return Err(StorageError::SnapshotBeyondLog {
                index,
                compact_to,
                last_index: cached.last_index,
            });
        }
        let mut next = cached.clone();
        let mut batch = WriteBatch::default();
        self.put_snapshot(&mut batch, &snapshot)?;
        next.snapshot_meta = snapshot.get_metadata().clone();
        if compact_to > cached.truncated.0 {
            // compact_to is in [first_index, last_index] here.
            let term = self.read_entry(compact_to)?.term;
            batch.delete_range_cf(
                self.cf(LOG_CF)?,
                &entry_key(0)[..],
                &key_after(compact_to)[..],
            );
            next.truncated = (compact_to, term);
            batch.put_cf(
                self.cf(STATE_CF)?,
                TRUNCATED_KEY,
                encode_truncated(next.truncated),
            );
        }
        self.commit(batch, false)?;
        tracing::debug!(
            index,
            compact_to,
            first_index = next.first_index(),
            "saved snapshot"
        );
        *cached = next;
        Ok(())
    }
}

impl raft::Storage for RocksLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let cached = self.read_cached();
        Ok(RaftState::new(
            cached.hard_state.clone(),
            cached.snapshot_meta.get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let cached = self.read_cached();
        if low < cached.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > cached.last_index + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low == high {
            return Ok(Vec::new());
        }
        // Hold the lock while reading so no write changes the range underneath.
        Ok(self.read_entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let cached = self.read_cached();
        if idx == cached.truncated.0 {
            return Ok(cached.truncated.1);
        }
        if idx < cached.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > cached.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_cached().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_cached().last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let cached = self.read_cached();
        if cached.snapshot_meta.index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.read_snapshot(&cached.snapshot_meta)?)
    }
}

impl LogStore for RocksLogStore {
    fn write(&self, write: LogWrite) -> raft::Result<()> {
        Ok(self.write_batch(write)?)
    }

    fn save_snapshot(&self, snapshot: Snapshot, compact_to: u64) -> raft::Result<()> {
        Ok(self.save_local_snapshot(snapshot, compact_to)?)
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        let cached = self.read_cached();
        Ok(self.read_snapshot(&cached.snapshot_meta)?)
    }
}
