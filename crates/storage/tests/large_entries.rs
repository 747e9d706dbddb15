//! Entries of a megabyte's order (large blocks) are kept in RocksDB's blob files rather
//! than in the log's SSTs: they must read back exactly, through flushes, compaction of
//! the log behind a snapshot, and a reopen, with the in-memory tail too small to hold
//! them, so every read reaches RocksDB; and the blob files of entries compacted away
//! must go, so the disk holds about the retained log, not everything ever written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use craft_core::testing::hard_state;
use craft_core::{make_snapshot, voters, LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};

/// 200 KiB, above the store's blob threshold, different for every index.
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

/// The store's blob files: how many, and their bytes. RocksDB deletes files in the
/// background, so one listed may be gone by the time it is looked at: it counts as gone.
fn blob_files(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
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
fn large_entries_read_back_through_flushes_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .bootstrap(make_snapshot(1, 1, voters([1, 2, 3]), Vec::new()))
            .unwrap();
        // 8 MiB of log: the 1 MiB memtables are flushed many times over.
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
    assert!(
        blob_files(dir.path()).0 > 0,
        "no blob file: the large entries never left the SSTs"
    );
    let store = open(dir.path());
    assert_log(&store, 31, 41);
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 41);
}

#[test]
fn blob_files_of_compacted_entries_go() {
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
                ..Default::default()
            })
            .unwrap();
        if index > 21 {
            let to = index - 20;
            store
                .save_snapshot(make_snapshot(to, 1, voters([1, 2, 3]), Vec::new()), to)
                .unwrap();
        }
        most = most.max(blob_files(dir.path()).1);
    }
    assert_log(&store, 982, 1001);
    // RocksDB stops writes at 36 L0 files, so the blob files of entries not yet
    // compacted away stay under about 40 MiB whatever the compactions' pace; without
    // reclamation they would hold nearly all 200 MiB.
    assert!(
        most < 64 << 20,
        "blob files reached {} MiB for a 4 MiB log",
        most >> 20
    );
}
