//! How a [`RocksLogStore`](super::RocksLogStore) is opened.

use std::time::Duration;

/// How a [`RocksLogStore`] is opened.
///
/// The defaults size RocksDB for a raft log rather than a database: the log is written
/// once, read back mostly from the in-memory tail, and dropped from the front, so a
/// small block cache and small memtables are enough.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Whether writes that raft marks `must_sync` wait for fsync. Default `true`.
    ///
    /// Turn off for benchmarks only: without it an acknowledged write can be lost on
    /// power failure (a process crash alone loses nothing, the WAL is still written).
    pub sync: bool,
    /// Bytes of recent log entries kept in memory, so that sending and applying them
    /// never reads RocksDB. Default 8 MiB; the newest entry is always kept.
    pub entry_cache_bytes: usize,
    /// RocksDB block cache, shared by both column families. Default 512 KiB.
    pub block_cache_bytes: usize,
    /// RocksDB memtable size per column family. Default 1 MiB.
    pub write_buffer_bytes: usize,
    /// How long a write may wait while RocksDB stalls writes (memtables full, waiting
    /// for a flush) before it fails with [`StorageError::WriteStalled`]. Default 30 s:
    /// a healthy stall lasts milliseconds; one that never ends (a flush that cannot
    /// write) must stop the node with an error rather than hang it.
    pub write_stall_timeout: Duration,
    /// Entries whose data is at least this many bytes keep their data in segment files
    /// of their own (see `payloads`), written once, instead of in RocksDB, which writes
    /// a value twice (WAL, then flush). Default 64 KiB.
    pub payload_min_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            sync: true,
            entry_cache_bytes: 8 << 20,
            block_cache_bytes: 512 << 10,
            write_buffer_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(30),
            payload_min_bytes: 64 << 10,
        }
    }
}

impl StoreOptions {
    /// Sets [`StoreOptions::sync`].
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Sets [`StoreOptions::entry_cache_bytes`].
    pub fn with_entry_cache_bytes(mut self, bytes: usize) -> Self {
        self.entry_cache_bytes = bytes;
        self
    }

    /// Sets [`StoreOptions::block_cache_bytes`].
    pub fn with_block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// Sets [`StoreOptions::write_buffer_bytes`].
    pub fn with_write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = bytes;
        self
    }

    /// Sets [`StoreOptions::write_stall_timeout`].
    pub fn with_write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.write_stall_timeout = timeout;
        self
    }

    /// Sets [`StoreOptions::payload_min_bytes`].
    pub fn with_payload_min_bytes(mut self, bytes: usize) -> Self {
        self.payload_min_bytes = bytes;
        self
    }
}
