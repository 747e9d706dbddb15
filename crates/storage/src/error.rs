//! What can go wrong in the RocksDB log store.

use std::borrow::Cow;
use std::path::PathBuf;

/// Errors of [`crate::RocksLogStore`].
///
/// Where raft needs a [`raft::Error`], these are wrapped as
/// `raft::Error::Store(raft::StorageError::Other(..))` (see [`to_raft`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store's directory could not be created.
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        /// Directory that was to be created.
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// RocksDB failed; `context` says what the store was doing.
    #[error("rocksdb failed to {context}: {source}")]
    Rocks {
        /// What the store was doing, e.g. "write a batch".
        context: Cow<'static, str>,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// RocksDB stalled writes (memtables full, a flush that does not complete) for
    /// longer than [`crate::StoreOptions::write_stall_timeout`].
    #[error("rocksdb stalled a write for {waited:?} (a flush cannot complete: disk full or failing?): {source}")]
    WriteStalled {
        /// How long the write waited.
        waited: std::time::Duration,
        /// RocksDB's answer to the last attempt.
        source: rocksdb::Error,
    },
    /// A value on disk could not be decoded, or the on-disk layout breaks an invariant
    /// (a hole in the log, an entry stored under the wrong index).
    #[error("corrupt value at {key}: {reason}")]
    Corrupt {
        /// Column family and key, e.g. `raft_log/17`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot file could not be written or read.
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        /// The file.
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// A segment file of large entries' data could not be created, written, synced or
    /// read.
    #[error("segment file {path}: {source}")]
    PayloadFile {
        /// The file (or the directory of segment files).
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// A column family the store creates at open is missing.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// Appended entries do not continue the log: their first index is below
    /// `first_index` or beyond `last_index + 1`, or the batch has gaps.
    #[error("append of entries {first}..={last} outside log [{first_index}, {next_index}]")]
    NonContiguousAppend {
        /// Index of the first appended entry.
        first: u64,
        /// Index of the last appended entry.
        last: u64,
        /// The log's first index.
        first_index: u64,
        /// One past the log's last index.
        next_index: u64,
    },
    /// A local snapshot was saved beyond the log, or asked to compact past itself.
    #[error("snapshot at {index} (compact to {compact_to}) beyond last index {last_index}")]
    SnapshotBeyondLog {
        /// The snapshot's index.
        index: u64,
        /// Requested compaction point.
        compact_to: u64,
        /// The log's last index.
        last_index: u64,
    },
}

impl StorageError {
    /// Wraps a RocksDB error with what the store was doing.
    pub(crate) fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> Self {
        move |source| StorageError::Rocks {
            context: Cow::Borrowed(context),
            source,
        }
    }
}

/// Converts a storage error into the error type [`raft::Storage`] returns.
pub fn to_raft(e: StorageError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        to_raft(e)
    }
}
