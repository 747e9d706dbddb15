//! Entries of a megabyte's order (large blocks) keep their data in segment files of
//! their own, written once, and RocksDB holds only a record of where: they must read
//! back exactly, through compaction of the log behind a snapshot and a reopen, with the
//! in-memory tail too small to hold them, so every read reaches the disk; RocksDB must
//! not hold their bytes; and the segment files of entries compacted away must go, so
//! the disk holds about the retained log, not everything ever written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use craft_core::testing::hard_state;
use craft_core::{make_snapshot, voters, LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};

/// 200 KiB, above the store's segment threshold, different for every index.
fn large_entry(index: u64) -> Entry {
    let mut data = vec![(index % 251) as u8; 200 << 10];
    data[..8].copy_from_slice(&index.to_be_bytes());
    Entry {
        index,
        term: 1,
        data,
        ..Default::default()
    }
}

fn open(dir: &Path) -> RocksLogStore {
    RocksLogStore::open(dir, StoreOptions::default().with_entry_cache_bytes(0)).unwrap()
}

/// How many files under `dir` (not below) end with `suffix`, and their bytes. RocksDB
/// deletes files in the background, so one listed may be gone by the time it is looked
/// at: it counts as gone.
fn files(dir: &Path, suffix: &str) -> (usize, u64) {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

/// The bytes of RocksDB's own files: WAL, SSTs, blob files.
fn rocksdb_bytes(dir: &Path) -> u64 {
    [".log", ".sst", ".blob"]
        .iter()
        .map(|suffix| files(dir, suffix).1)
        .sum()
}

fn segments(dir: &Path) -> (usize, u64) {
    files(&dir.join("payloads"), ".seg")
}

fn assert_log(store: &RocksLogStore, first: u64, last: u64) {
    assert_eq!(store.first_index().unwrap(), first);
    assert_eq!(store.last_index().unwrap(), last);
    let read = store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(read.len() as u64, last - first + 1);
    for (entry, index) in read.iter().zip(first..) {
        assert!(
            entry == &large_entry(index),
            "entry {index} read back changed"
        );
    }
}

#[test]
fn large_entries_read_back_through_compaction_and_reopen_from_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .bootstrap(make_snapshot(1, 1, voters([1, 2, 3]), Vec::new()))
            .unwrap();
        // 8 MiB of log, more than the 1 MiB memtables hold many times over.
        for index in 2..=41 {
            store
                .write(LogWrite {
                    entries: vec![large_entry(index)],
                    hard_state: Some(hard_state(1, 1, index)),
                    must_sync: true,
                    ..Default::default()
                })
                .unwrap();
        }
        assert_log(&store, 2, 41);
        store
            .save_snapshot(make_snapshot(30, 1, voters([1, 2, 3]), Vec::new()), 30)
            .unwrap();
        assert_log(&store, 31, 41);
    }
    let (n, bytes) = segments(dir.path());
    assert!(
        n > 0 && bytes >= 11 * (200 << 10),
        "segment files: {n}, {bytes} bytes"
    );
    // Written once: RocksDB's files hold records, not the 8 MiB of data.
    let rocks = rocksdb_bytes(dir.path());
    assert!(
        rocks < 1 << 20,
        "RocksDB holds {rocks} bytes for 40 records"
    );
    let store = open(dir.path());
    assert_log(&store, 31, 41);
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 41);
}

#[test]
fn segment_files_of_compacted_entries_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .bootstrap(make_snapshot(1, 1, voters([1, 2, 3]), Vec::new()))
        .unwrap();
    // 200 MiB written, 20 entries (4 MiB) retained behind a snapshot after each write,
    // as the consensus service does after every block.
    let mut most = 0;
    for index in 2..=1001u64 {
        store
            .write(LogWrite {
                entries: vec![large_entry(index)],
                hard_state: Some(hard_state(1, 1, index)),
                must_sync: index % 2 == 0,
                ..Default::default()
            })
            .unwrap();
        if index > 21 {
            let to = index - 20;
            store
                .save_snapshot(make_snapshot(to, 1, voters([1, 2, 3]), Vec::new()), to)
                .unwrap();
        }
        most = most.max(segments(dir.path()).1);
    }
    assert_log(&store, 982, 1001);
    // A segment file (32 MiB) goes once every entry in it is compacted away: at most
    // the retained 4 MiB plus about two files are on disk at any time.
    assert!(
        most < 72 << 20,
        "segment files reached {} MiB for a 4 MiB log",
        most >> 20
    );
    drop(store);
    // Reopened, the files no record names go at once.
    let store = open(dir.path());
    assert_log(&store, 982, 1001);
    let (_, bytes) = segments(dir.path());
    assert!(
        bytes < 40 << 20,
        "{} MiB of segment files after reopen",
        bytes >> 20
    );
}
