//! craft-storage owns durable raft log storage: [`RocksLogStore`] keeps the raft log,
//! the hard state and the latest snapshot in RocksDB and implements
//! [`craft_core::LogStore`] (and so [`raft::Storage`]) for craft-core's replica.
//!
//! It knows nothing of CITA-Cloud or gRPC and must not depend on tonic; it sees raft
//! types only through the `raft` crate.
//!
//! Guarantees, checked by craft-core's shared log store suite and this crate's own
//! tests (`tests/suite.rs`, `tests/corruption.rs`, `tests/crash.rs`):
//! - each [`craft_core::LogStore::write`] is one RocksDB `WriteBatch`: after a crash
//!   all of it is there or none of it;
//! - a write marked `must_sync` returns only after fsync (unless
//!   [`StoreOptions::sync`] is turned off, for benchmarks);
//! - a value that does not decode is reported as [`StorageError::Corrupt`] naming its
//!   key, never a panic;
//! - an entry of [`StoreOptions::payload_min_bytes`] or more (a block of a megabyte)
//!   has its data written once, into an append-only segment file beside the database,
//!   synced before the batch whose record names it; segment files go whole once the
//!   log is compacted past them (module `payloads`);
//! - a local snapshot's data is written and synced off the raft task, into a file of
//!   its own ([`FileStager`], handed to the driver by
//!   [`craft_core::LogStore::snapshot_stager`]); the log's batch only records it, so a
//!   large state never stalls proposals;
//! - a write that RocksDB stalls for longer than [`StoreOptions::write_stall_timeout`]
//!   (a flush that cannot complete on a full disk) fails with
//!   [`StorageError::WriteStalled`]. A device that never answers an `fsync` still hangs
//!   the write: no user-space code can interrupt one.
//!
//! Disk faults under it (EIO, ENOSPC, corrupted reads, latency, through craft-faultfs)
//! and a genuinely full disk are tested in `tests/disk_faults.rs` and
//! `tests/disk_full.rs`; `docs/fault-tolerance.md` lists what was seen.
//!
//! ```
//! use craft_core::{make_snapshot, voters, LogStore};
//! use craft_storage::{RocksLogStore, StoreOptions};
//! use raft::Storage as _;
//!
//! let dir = tempfile::tempdir()?;
//! let store = RocksLogStore::open(dir.path(), StoreOptions::default())?;
//! store.bootstrap(make_snapshot(1, 1, voters([1]), Vec::new()))?;
//! assert_eq!(store.first_index()?, 2);
//! assert_eq!(store.term(1)?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
pub mod layout;
mod payloads;
mod snapshot_files;
mod store;

pub use error::{to_raft, StorageError};
pub use payloads::PayloadRef;
pub use snapshot_files::FileStager;
pub use store::{RocksLogStore, StoreOptions};
