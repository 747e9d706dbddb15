//! RocksLogStore passes the shared log store suite, and keeps its state across a
//! reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use craft_core::testing::{append, entries, hard_state, run_log_store_suite};
use craft_core::{make_snapshot, voters, LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use raft::{GetEntriesContext, Storage as _};

#[test]
fn rocks_log_store_passes_log_store_suite() {
    let mut dirs = Vec::new();
    run_log_store_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        dirs.push(dir);
        store
    });
}

#[test]
fn rocks_log_store_without_sync_passes_log_store_suite() {
    let mut dirs = Vec::new();
    run_log_store_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let store =
            RocksLogStore::open(dir.path(), StoreOptions::default().with_sync(false)).unwrap();
        dirs.push(dir);
        store
    });
}

#[test]
fn rocks_log_store_with_every_entry_in_segment_files_passes_log_store_suite() {
    let mut dirs = Vec::new();
    run_log_store_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        // Even empty entries: a zero-length record in a segment file.
        let options = StoreOptions::default()
            .with_payload_min_bytes(0)
            .with_entry_cache_bytes(0);
        let store = RocksLogStore::open(dir.path(), options).unwrap();
        dirs.push(dir);
        store
    });
}

/// Everything the store reports, for comparing before and after a reopen.
#[derive(Debug, PartialEq)]
struct Observed {
    first: u64,
    last: u64,
    truncated_term: u64,
    hard_state: raft::eraftpb::HardState,
    conf_state: raft::eraftpb::ConfState,
    entries: Vec<raft::eraftpb::Entry>,
    snapshot_index: u64,
    snapshot_term: u64,
    snapshot_data: Vec<u8>,
}

fn observe(store: &RocksLogStore) -> Observed {
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    let state = store.initial_state().unwrap();
    let snap = store.latest_snapshot().unwrap();
    Observed {
        first,
        last,
        truncated_term: store.term(first - 1).unwrap(),
        hard_state: state.hard_state,
        conf_state: state.conf_state,
        entries: store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap(),
        snapshot_index: snap.get_metadata().index,
        snapshot_term: snap.get_metadata().term,
        snapshot_data: snap.data.to_vec(),
    }
}

#[test]
fn reopen_keeps_hard_state_entries_snapshot_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .bootstrap(make_snapshot(3, 1, voters([1, 2, 3]), b"boot".to_vec()))
            .unwrap();
        append(&store, entries(4, 20, 2)).unwrap();
        // A conflicting suffix, then more, then a hard state and a compaction.
        append(&store, entries(15, 25, 3)).unwrap();
        store
            .write(LogWrite {
                hard_state: Some(hard_state(3, 2, 18)),
                must_sync: true,
                ..Default::default()
            })
            .unwrap();
        store
            .save_snapshot(make_snapshot(12, 2, voters([1, 2]), b"at 12".to_vec()), 9)
            .unwrap();
        let before = observe(&store);
        assert_eq!(
            (before.first, before.last, before.truncated_term),
            (10, 25, 2)
        );
        before
    };
    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(observe(&store), before);

    // Reopened, the store goes on: a leader snapshot replaces the log and survives too.
    store
        .write(LogWrite {
            snapshot: Some(make_snapshot(
                40,
                4,
                voters([1, 2, 3, 4]),
                b"at 40".to_vec(),
            )),
            entries: entries(41, 42, 4),
            hard_state: None,
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    let before = observe(&store);
    assert_eq!(
        (before.first, before.last, before.hard_state.commit),
        (41, 42, 40)
    );
    drop(store);
    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(observe(&store), before);
}

#[test]
fn reopen_of_empty_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksLogStore::open(dir.path().join("nested/dir"), StoreOptions::default()).unwrap());
    let store =
        RocksLogStore::open(dir.path().join("nested/dir"), StoreOptions::default()).unwrap();
    assert!(store.is_empty().unwrap());
    assert_eq!(
        (store.first_index().unwrap(), store.last_index().unwrap()),
        (1, 0)
    );
}

#[test]
fn replica_restarts_from_rocks_log_store() {
    use craft_core::{Replica, ReplicaConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut proposed = Vec::new();
    {
        let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .bootstrap(make_snapshot(1, 1, voters([1]), Vec::new()))
            .unwrap();
        let (mut replica, _) = Replica::open(ReplicaConfig::new(1), store).unwrap();
        replica.campaign().unwrap();
        while replica.has_ready() {
            replica.handle_ready(&mut |_| {}).unwrap();
        }
        for i in 0..5u8 {
            proposed.push(replica.propose(Vec::new(), vec![i]).unwrap());
            while replica.has_ready() {
                let out = replica.handle_ready(&mut |_| {}).unwrap();
                if let Some(last) = out.committed.last() {
                    replica.advance_apply(last.index);
                }
            }
        }
        // The last commit index is staged for the next Ready; a node going down writes
        // it out.
        assert!(replica.has_staged());
        replica.flush().unwrap();
        assert!(!replica.has_staged());
    }
    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    let last = proposed.last().unwrap();
    assert_eq!(store.initial_state().unwrap().hard_state.commit, last.index);
    let (mut replica, snapshot) = Replica::open(ReplicaConfig::new(1), store).unwrap();
    assert_eq!(snapshot.map(|s| s.get_metadata().index), Some(1));
    let mut replayed = Vec::new();
    while replica.has_ready() {
        let out = replica.handle_ready(&mut |_| {}).unwrap();
        replayed.extend(out.committed);
    }
    let data: Vec<_> = replayed
        .iter()
        .filter_map(|c| match &c.kind {
            craft_core::CommittedKind::Normal { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(data, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    assert_eq!(replayed.last().map(|c| c.index), Some(last.index));
}
