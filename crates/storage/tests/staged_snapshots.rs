//! Local snapshots whose data the store's stager wrote to a file of its own, off the raft
//! task: recorded by a batch that carries no bytes, read back checked, old files removed
//! only once the newer record is durable, leftovers removed at open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use craft_core::testing::{entries, hard_state};
use craft_core::{make_snapshot, voters, LocalSnapshot, LogStore, LogWrite, StagedSnapshot};
use craft_storage::{RocksLogStore, StorageError, StoreOptions};
use raft::Storage as _;

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A store with entries 2..=100 after the bootstrap snapshot at 1.
fn store_with_log(dir: &Path) -> RocksLogStore {
    let store = RocksLogStore::open(dir, StoreOptions::default()).unwrap();
    store
        .bootstrap(make_snapshot(1, 1, voters([1, 2, 3]), Vec::new()))
        .unwrap();
    store
        .write(LogWrite {
            entries: entries(2, 100, 1),
            hard_state: Some(hard_state(1, 1, 100)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    store
}

/// Records the data `stager` wrote for `index`, in a write that syncs or not.
fn record(store: &RocksLogStore, staged: StagedSnapshot, must_sync: bool) {
    let mut snapshot = make_snapshot(staged.index, 1, voters([1, 2, 3]), Vec::new());
    snapshot.data.clear();
    store
        .write(LogWrite {
            local_snapshot: Some(LocalSnapshot {
                snapshot,
                compact_to: staged.index - 10,
                staged: Some(staged),
            }),
            must_sync,
            ..Default::default()
        })
        .unwrap();
}

#[test]
fn staged_data_is_recorded_read_back_and_superseded_files_go_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_log(dir.path());
    let stager = store
        .snapshot_stager()
        .expect("a RocksDB store stages snapshots");

    let state_40 = vec![4u8; 3 << 20];
    let staged = stager.stage(40, &state_40).unwrap();
    // Staged but not recorded: the latest snapshot is still the bootstrap one.
    assert_eq!(store.latest_snapshot().unwrap().get_metadata().index, 1);
    record(&store, staged, true);
    let latest = store.latest_snapshot().unwrap();
    assert_eq!(latest.get_metadata().index, 40);
    assert_eq!(latest.data, state_40);
    assert_eq!(store.first_index().unwrap(), 31);
    // Raft's own read of it, to send to a follower.
    assert_eq!(store.snapshot(40, 2).unwrap().data, state_40);

    // A newer one recorded without a sync: the old file stays, for a power loss could
    // drop this record and leave the old one the latest.
    let state_60 = vec![6u8; 1 << 20];
    record(&store, stager.stage(60, &state_60).unwrap(), false);
    assert_eq!(store.latest_snapshot().unwrap().data, state_60);
    assert_eq!(
        files(dir.path()),
        ["00000000000000000040.snap", "00000000000000000060.snap"]
    );
    // The next synced write makes it durable, and the old file goes.
    store
        .write(LogWrite {
            entries: entries(101, 101, 1),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(files(dir.path()), ["00000000000000000060.snap"]);

    // Staged and never recorded (a newer capture overtook it, or the process stopped):
    // gone at the next open, while the recorded one stays and reads back.
    stager.stage(80, b"never recorded").unwrap();
    drop(stager);
    drop(store);
    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(files(dir.path()), ["00000000000000000060.snap"]);
    assert_eq!(store.latest_snapshot().unwrap().data, state_60);
}

#[test]
fn a_damaged_snapshot_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_log(dir.path());
    let stager = store.snapshot_stager().unwrap();
    record(
        &store,
        stager.stage(50, b"the state after fifty").unwrap(),
        true,
    );
    let path = dir.path().join("snapshots/00000000000000000050.snap");
    std::fs::write(&path, b"the state after fiftY").unwrap();
    let err = store.latest_snapshot().unwrap_err().to_string();
    assert!(err.contains("00000000000000000050.snap"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = store.latest_snapshot().unwrap_err().to_string();
    assert!(err.contains("00000000000000000050.snap"), "{err}");
}

#[test]
fn recording_data_that_was_not_staged_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_log(dir.path());
    let missing = StagedSnapshot {
        index: 50,
        len: 10,
        crc32c: 0,
    };
    let mut snapshot = make_snapshot(50, 1, voters([1, 2, 3]), Vec::new());
    snapshot.data.clear();
    let err = store.write_batch(LogWrite {
        local_snapshot: Some(LocalSnapshot {
            snapshot,
            compact_to: 40,
            staged: Some(missing),
        }),
        ..Default::default()
    });
    assert!(
        matches!(err, Err(StorageError::SnapshotFile { .. })),
        "{err:?}"
    );
    assert_eq!(store.latest_snapshot().unwrap().get_metadata().index, 1);
    assert_eq!(store.first_index().unwrap(), 2);
}

#[test]
fn a_snapshot_from_the_leader_replaces_a_staged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_log(dir.path());
    let stager = store.snapshot_stager().unwrap();
    record(&store, stager.stage(50, b"ours at fifty").unwrap(), true);
    store
        .write(LogWrite {
            snapshot: Some(make_snapshot(
                200,
                2,
                voters([1, 2, 3]),
                b"leader's".to_vec(),
            )),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    let latest = store.latest_snapshot().unwrap();
    assert_eq!(
        (latest.get_metadata().index, latest.data.as_slice()),
        (200, b"leader's".as_slice())
    );
    assert!(files(dir.path()).is_empty());
    drop(store);
    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.latest_snapshot().unwrap().data, b"leader's");
}
