//! Disk faults under the store: [`RocksLogStore`] on craft-faultfs, a FUSE passthrough
//! that fails, corrupts or delays the operations its rules select.
//!
//! What must hold whatever the disk does:
//! - a write that was not made durable is never reported as a success;
//! - a store reopened after the fault holds everything acknowledged, intact, and of what
//!   was not acknowledged at most the one failed write, whole (as after a crash in the
//!   middle of it: raft never told anyone about it, so keeping it is safe);
//! - damaged data read back is a clear error naming the file, never wrong entries;
//! - no panic; once the fault is gone, a reopened store works.
//!
//! Where FUSE cannot be mounted (it needs /dev/fuse and root or fusermount3) every test
//! is skipped, saying why and counted (`craft_faultfs::temp::skip`); in CI (`CI=true`)
//! it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use craft_core::testing::hard_state;
use craft_core::LogWrite;
use craft_faultfs::temp::TempDisk;
use craft_faultfs::{FaultRule, InjectedError, Op};
use craft_storage::{RocksLogStore, StorageError, StoreOptions};
use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage as _};

/// A fault filesystem with the store's directory on it.
struct Disk(TempDisk);

impl std::ops::Deref for Disk {
    type Target = TempDisk;

    fn deref(&self) -> &TempDisk {
        &self.0
    }
}

impl Disk {
    fn new() -> Option<Self> {
        TempDisk::new(11).unwrap().map(Self)
    }

    /// The store's directory, on the fault filesystem.
    fn dir(&self) -> PathBuf {
        self.at("raft")
    }

    /// The same directory in the backing directory, past the faults.
    fn backing_dir(&self) -> PathBuf {
        self.backing("raft")
    }

    /// The names of the files in `sub`, a directory of the store's, past the faults.
    fn files_in(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.backing_dir().join(sub))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn files_ending(&self, suffix: &str) -> Vec<String> {
        std::fs::read_dir(self.backing_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(suffix))
            .collect()
    }
}

/// Small memtables, so that a few hundred kilobytes of log reach SST files.
fn options() -> StoreOptions {
    StoreOptions::default().with_write_buffer_bytes(64 << 10)
}

fn open(dir: &Path) -> Result<RocksLogStore, StorageError> {
    RocksLogStore::open(dir, options())
}

/// Entry `index` in `term`: about 1 KiB whose bytes say which entry it is.
fn entry(index: u64, term: u64) -> Entry {
    let mut data = format!("entry {index} term {term} ").into_bytes();
    data.resize(1024, (index % 251) as u8);
    Entry {
        index,
        term,
        data,
        ..Default::default()
    }
}

/// One synced write of entries `first..=last` in `term`, with a hard state.
fn append(store: &RocksLogStore, first: u64, last: u64, term: u64) -> Result<(), StorageError> {
    store.write_batch(LogWrite {
        entries: (first..=last).map(|i| entry(i, term)).collect(),
        hard_state: Some(hard_state(term, 1, last)),
        must_sync: true,
        ..Default::default()
    })
}

/// Appends `batches` batches of `per` entries after `after`, all of which must succeed.
fn append_acked(store: &RocksLogStore, after: u64, batches: u64, per: u64) -> u64 {
    let mut last = after;
    for _ in 0..batches {
        append(store, last + 1, last + per, 1).unwrap();
        last += per;
    }
    last
}

fn read_all(store: &RocksLogStore) -> raft::Result<Vec<Entry>> {
    let (first, last) = (store.first_index()?, store.last_index()?);
    store.entries(first, last + 1, None, GetEntriesContext::empty(false))
}

/// The store holds exactly `1..=last` in `term` 1 (or, past `acked`, the entries of
/// the one failed write `acked+1..=failed_last`, whole, with its hard state).
#[track_caller]
fn assert_log(store: &RocksLogStore, acked: u64, failed_last: Option<u64>) -> u64 {
    let last = store.last_index().unwrap();
    let hs: HardState = store.initial_state().unwrap().hard_state;
    assert!(
        last == acked || Some(last) == failed_last,
        "last index {last}: acknowledged up to {acked}, failed write to {failed_last:?}"
    );
    assert_eq!(
        hs,
        hard_state(1, 1, last),
        "hard state goes with the entries"
    );
    let ents = read_all(store).unwrap();
    assert_eq!(ents.len() as u64, last);
    for (e, i) in ents.iter().zip(1..) {
        assert_eq!(*e, entry(i, 1), "entry {i} read back wrong");
    }
    last
}

#[test]
fn eio_on_fsync_fails_the_write_and_loses_nothing_acknowledged() {
    let Some(disk) = Disk::new() else { return };
    let store = open(&disk.dir()).unwrap();
    let acked = append_acked(&store, 0, 4, 5);

    disk.rule(
        FaultRule::on("**")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    let e = append(&store, acked + 1, acked + 5, 1).expect_err("a write whose fsync failed");
    eprintln!("synced append, fsync EIO: {e}");
    assert!(matches!(e, StorageError::Rocks { .. }), "{e:?}");
    assert!(e.to_string().contains("IO error"), "{e}");
    assert_eq!(store.last_index().unwrap(), acked, "memory unchanged");
    assert!(disk.faults.stats().op(Op::Fsync).failed >= 1);

    // RocksDB stops accepting writes after a failed WAL sync, also once the disk is
    // fine again: the store must be reopened.
    let retry = append(&store, acked + 1, acked + 5, 1);
    eprintln!("retry while failing: {retry:?}");
    assert!(retry.is_err());
    disk.faults.clear();
    let after_lift = append(&store, acked + 1, acked + 5, 1);
    eprintln!("retry after the lift, same handle: {after_lift:?}");
    assert!(after_lift.is_err(), "RocksDB was expected to stay stopped");
    drop(store);

    let store = open(&disk.dir()).unwrap();
    let last = assert_log(&store, acked, Some(acked + 5));
    eprintln!(
        "reopened: last index {last} (acknowledged {acked}; the failed write {})",
        if last == acked {
            "is gone"
        } else {
            "is there, whole"
        }
    );
    let more = append_acked(&store, last, 1, 5);
    drop(store);
    assert_log(&open(&disk.dir()).unwrap(), more, None);
}

#[test]
fn eio_on_fsync_of_the_directory_or_manifest_is_an_error_too() {
    let Some(disk) = Disk::new() else { return };
    let store = open(&disk.dir()).unwrap();
    let acked = append_acked(&store, 0, 2, 5);
    drop(store);
    // Opening writes a new MANIFEST, OPTIONS and WAL and fsyncs them and the directory.
    disk.rule(
        FaultRule::on("**")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    let e = open(&disk.dir()).expect_err("open with every fsync failing");
    eprintln!("open, fsync EIO: {e}");
    assert!(e.to_string().contains("IO error"), "{e}");
    disk.faults.clear();
    assert_log(&open(&disk.dir()).unwrap(), acked, None);
}

/// Writes about 400 KiB of log and reopens, so it all lives in SST files.
fn store_in_sst_files(disk: &Disk) -> u64 {
    let store = open(&disk.dir()).unwrap();
    let acked = append_acked(&store, 0, 40, 10);
    drop(store);
    drop(open(&disk.dir()).unwrap());
    assert!(!disk.files_ending(".sst").is_empty());
    acked
}

/// The error of opening the store and reading all of it back, if any; panics on wrong
/// data.
fn open_and_read(dir: &Path, acked: u64) -> Result<(), String> {
    let store = open(dir).map_err(|e| e.to_string())?;
    assert_eq!(store.last_index().unwrap(), acked);
    let ents = read_all(&store).map_err(|e| e.to_string())?;
    assert_eq!(ents.len() as u64, acked);
    for (e, i) in ents.iter().zip(1..) {
        assert_eq!(*e, entry(i, 1), "corruption read back as entry {i}");
    }
    Ok(())
}

#[test]
fn corrupted_sst_reads_are_a_corruption_error_naming_the_file() {
    let Some(disk) = Disk::new() else { return };
    let acked = store_in_sst_files(&disk);

    disk.rule(FaultRule::on("*.sst").ops([Op::Read]).corrupt(1));
    let e = open_and_read(&disk.dir(), acked).expect_err("every SST read corrupted");
    eprintln!("every SST read has a flipped bit: {e}");
    assert!(e.contains("Corruption"), "{e}");
    assert!(e.contains(".sst"), "must name the file: {e}");
    assert!(disk.faults.stats().corrupted_reads >= 1);

    // Now and then: each attempt reads everything right or fails, never reads wrong.
    disk.rule(
        FaultRule::on("*.sst")
            .ops([Op::Read])
            .corrupt(1)
            .probability(0.01),
    );
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..30 {
        match open_and_read(&disk.dir(), acked) {
            Ok(()) => ok += 1,
            Err(e) => {
                // A flip in an SST's properties block is reported against the MANIFEST
                // that lists the file ("properties unsorted ... MANIFEST-000073 may be
                // corrupted"): still a corruption error naming a file of the store.
                assert!(
                    e.contains("Corruption") && (e.contains(".sst") || e.contains("MANIFEST-")),
                    "{e}"
                );
                failed += 1;
            }
        }
    }
    eprintln!("1% of SST reads corrupted: {ok} clean runs, {failed} corruption errors");

    // The files themselves were never damaged.
    disk.faults.clear();
    open_and_read(&disk.dir(), acked).unwrap();
}

/// RocksDB's default point-in-time WAL recovery (the only mode WAL recycling allows)
/// took the first record failing its checksum for the end of the log and opened without
/// error: here it opened with entries 1..=5 of the 20 acknowledged, and the hard state of
/// that point, so a node would have forgotten acknowledged entries and its vote. The
/// store recovers with `kTolerateCorruptedTailRecords` (etcd's rule: a torn tail is
/// dropped, damage before it is an error).
#[test]
fn corrupted_wal_reads_at_recovery_are_an_error_not_a_shorter_log() {
    let Some(disk) = Disk::new() else { return };
    let store = open(&disk.dir()).unwrap();
    // 20 KiB: stays in the memtable and the WAL.
    let acked = append_acked(&store, 0, 4, 5);
    drop(store);
    assert!(disk.files_ending(".sst").is_empty());

    disk.rule(FaultRule::on("*.log").ops([Op::Read]).corrupt(1));
    let outcome = open_and_read(&disk.dir(), acked);
    eprintln!("every WAL read has a flipped bit, at open: {outcome:?}");
    let e = outcome.expect_err("recovery from a corrupted WAL must fail, not lose entries");
    assert!(e.contains("Corruption"), "{e}");
    disk.faults.clear();
    open_and_read(&disk.dir(), acked).unwrap();
}

#[test]
fn eio_on_read_is_an_error_never_wrong_data() {
    let Some(disk) = Disk::new() else { return };
    let acked = store_in_sst_files(&disk);
    disk.rule(
        FaultRule::on("*.sst")
            .ops([Op::Read])
            .fail(InjectedError::EIO),
    );
    let e = open_and_read(&disk.dir(), acked).expect_err("every SST read fails");
    eprintln!("SST reads fail with EIO: {e}");
    assert!(e.contains("IO error"), "{e}");
    disk.faults.clear();
    open_and_read(&disk.dir(), acked).unwrap();
}

#[test]
fn enospc_on_write_fails_the_write_and_recovers_after_reopen() {
    let Some(disk) = Disk::new() else { return };
    let store = open(&disk.dir()).unwrap();
    let acked = append_acked(&store, 0, 4, 5);

    disk.rule(
        FaultRule::on("**")
            .ops([Op::Write])
            .fail(InjectedError::ENOSPC),
    );
    let e = append(&store, acked + 1, acked + 5, 1).expect_err("a write on a full disk");
    eprintln!("synced append, write ENOSPC: {e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(store.last_index().unwrap(), acked);
    disk.faults.clear();
    let same_handle = append(&store, acked + 1, acked + 5, 1);
    eprintln!("after the lift, same handle: {same_handle:?}");
    drop(store);

    let store = open(&disk.dir()).unwrap();
    let failed_last = same_handle.is_ok().then_some(acked + 5);
    let last = assert_log(&store, failed_last.unwrap_or(acked), Some(acked + 5));
    let more = append_acked(&store, last, 2, 5);
    drop(store);
    assert_log(&open(&disk.dir()).unwrap(), more, None);
}

#[test]
fn enospc_in_background_flushes_stops_writes_without_losing_any() {
    let Some(disk) = Disk::new() else { return };
    let store = open(&disk.dir()).unwrap();
    // New SST files cannot be written: the WAL can, until the memtables are full.
    disk.rule(
        FaultRule::on("*.sst")
            .ops([Op::Write])
            .fail(InjectedError::ENOSPC),
    );
    let mut acked = 0;
    let mut error = None;
    for _ in 0..200 {
        match append(&store, acked + 1, acked + 10, 1) {
            Ok(()) => acked += 10,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let e = error.expect("writes must stop once flushes cannot write");
    eprintln!("flushes fail with ENOSPC: writes stopped after {acked} entries: {e}");
    assert!(disk.faults.stats().op(Op::Write).failed >= 1);
    drop(store);
    disk.faults.clear();
    let store = open(&disk.dir()).unwrap();
    let last = assert_log(&store, acked, Some(acked + 10));
    append_acked(&store, last, 1, 10);
}

#[test]
fn latency_slows_but_everything_succeeds() {
    let Some(disk) = Disk::new() else { return };
    disk.rule(FaultRule::on("**").delay(Duration::from_millis(2)));
    let store = open(&disk.dir()).unwrap();
    let acked = append_acked(&store, 0, 10, 5);
    assert_log(&store, acked, None);
    drop(store);
    assert_log(&open(&disk.dir()).unwrap(), acked, None);
    let stats = disk.faults.stats();
    assert!(stats.op(Op::Fsync).delayed >= 10, "{stats:?}");
    assert!(stats.ops.values().all(|o| o.failed == 0));
}

/// Every entry's data in segment files (they are 1 KiB).
fn segment_options() -> StoreOptions {
    options().with_payload_min_bytes(512)
}

#[test]
fn eio_on_fsync_of_a_segment_file_fails_the_write_before_its_records_are_written() {
    let Some(disk) = Disk::new() else { return };
    let store = RocksLogStore::open(disk.dir(), segment_options()).unwrap();
    let acked = append_acked(&store, 0, 4, 5);
    assert!(
        !disk.files_in("payloads").is_empty(),
        "data in segment files"
    );

    disk.rule(
        FaultRule::on("*.seg")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    let e =
        append(&store, acked + 1, acked + 5, 1).expect_err("a write whose segment fsync failed");
    eprintln!("synced append, segment fsync EIO: {e}");
    assert!(matches!(e, StorageError::PayloadFile { .. }), "{e:?}");
    assert!(e.to_string().contains(".seg"), "names the file: {e}");
    assert_eq!(store.last_index().unwrap(), acked, "memory unchanged");
    disk.faults.clear();

    // The records were never written, so the store goes on, appending to a new file.
    let more = append_acked(&store, acked, 2, 5);
    assert_log(&store, more, None);
    drop(store);
    let store = RocksLogStore::open(disk.dir(), segment_options()).unwrap();
    assert_log(&store, more, None);
}

#[test]
fn corrupted_segment_reads_are_a_corruption_error_never_wrong_data() {
    let Some(disk) = Disk::new() else { return };
    let store =
        RocksLogStore::open(disk.dir(), segment_options().with_entry_cache_bytes(0)).unwrap();
    let acked = append_acked(&store, 0, 4, 5);
    drop(store);

    disk.rule(FaultRule::on("*.seg").ops([Op::Read]).corrupt(1));
    let store =
        RocksLogStore::open(disk.dir(), segment_options().with_entry_cache_bytes(0)).unwrap();
    let e = read_all(&store).expect_err("every segment read corrupted");
    eprintln!("every segment read has a flipped bit: {e}");
    let e = e.to_string();
    assert!(e.contains("CRC32C") && e.contains(".seg"), "{e}");
    assert!(disk.faults.stats().corrupted_reads >= 1);
    disk.faults.clear();
    assert_log(&store, acked, None);
}
