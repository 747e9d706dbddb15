//! The in-memory store passes the shared log store suite, with and without sync
//! tracking, and a power loss keeps exactly what was synced.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use craft_core::raft::eraftpb::HardState;
use craft_core::raft::Storage;
use craft_core::testing::{append, entries, hard_state, run_log_store_suite};
use craft_core::{make_snapshot, voters, LocalSnapshot, LogStore, LogWrite, MemLogStore};

#[test]
fn mem_log_store_passes_log_store_suite() {
    run_log_store_suite(MemLogStore::new);
}

#[test]
fn sync_tracking_mem_log_store_passes_log_store_suite() {
    run_log_store_suite(MemLogStore::with_sync_tracking);
}

fn commit(store: &MemLogStore, hs: HardState) {
    store
        .write(LogWrite {
            hard_state: Some(hs),
            ..Default::default()
        })
        .unwrap();
}

fn hs(store: &MemLogStore) -> HardState {
    store.initial_state().unwrap().hard_state
}

#[test]
fn power_loss_drops_what_was_not_synced() {
    let store = MemLogStore::with_sync_tracking();
    assert!(store.tracks_sync());
    store
        .bootstrap(make_snapshot(1, 1, voters([1]), b"boot".to_vec()))
        .unwrap();
    assert_eq!(store.unsynced_writes(), 0, "bootstrap syncs");
    append(&store, entries(2, 5, 1)).unwrap();
    commit(&store, hard_state(1, 1, 4));
    store
        .save_snapshot(make_snapshot(4, 1, voters([1]), b"at 4".to_vec()), 3)
        .unwrap();
    assert_eq!(store.unsynced_writes(), 2);
    assert_eq!(store.first_index().unwrap(), 4);

    assert_eq!(store.power_loss(0), 2);
    assert_eq!(hs(&store), hard_state(1, 0, 1), "commit and vote as synced");
    assert_eq!(store.first_index().unwrap(), 2, "compaction undone");
    assert_eq!(store.last_index().unwrap(), 5, "synced entries kept");
    assert_eq!(store.latest_snapshot().unwrap().data, b"boot");
    assert_eq!(store.unsynced_writes(), 0);
    assert_eq!(store.power_loss(0), 0, "nothing left to lose");
}

#[test]
fn a_synced_write_makes_every_earlier_write_durable() {
    let store = MemLogStore::with_sync_tracking();
    append(&store, entries(1, 3, 1)).unwrap();
    commit(&store, hard_state(1, 1, 2));
    store
        .write(LogWrite {
            local_snapshot: Some(LocalSnapshot {
                snapshot: make_snapshot(2, 1, voters([1]), Vec::new()),
                compact_to: 1,
                staged: None,
            }),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.unsynced_writes(), 2);
    append(&store, entries(4, 4, 2)).unwrap();
    assert_eq!(store.unsynced_writes(), 0);
    assert_eq!(store.synced_writes(), 4);
    assert_eq!(store.power_loss(0), 0);
    assert_eq!(hs(&store), hard_state(1, 1, 2));
    assert_eq!(store.first_index().unwrap(), 2);
    assert_eq!(store.last_index().unwrap(), 4);

    commit(&store, hard_state(2, 1, 4));
    store.sync();
    assert_eq!(store.power_loss(0), 0);
    assert_eq!(hs(&store), hard_state(2, 1, 4), "sync() made it durable");
}

#[test]
fn power_loss_keeps_the_oldest_unsynced_writes_asked_for() {
    let store = MemLogStore::with_sync_tracking();
    append(&store, entries(1, 5, 1)).unwrap();
    for commit_index in 1..=4 {
        commit(&store, hard_state(1, 1, commit_index));
    }
    assert_eq!(store.unsynced_writes(), 4);
    assert_eq!(store.power_loss(2), 2);
    assert_eq!(hs(&store), hard_state(1, 1, 2));
    // What the disk kept is durable now.
    assert_eq!(store.power_loss(0), 0);
    assert_eq!(hs(&store), hard_state(1, 1, 2));
    // Keeping more than there is keeps everything.
    commit(&store, hard_state(1, 1, 5));
    assert_eq!(store.power_loss(9), 0);
    assert_eq!(hs(&store), hard_state(1, 1, 5));
}

#[test]
fn a_rejected_write_is_not_tracked() {
    let store = MemLogStore::with_sync_tracking();
    append(&store, entries(1, 3, 1)).unwrap();
    assert!(append(&store, entries(9, 9, 1)).is_err());
    assert_eq!(store.unsynced_writes(), 0);
    commit(&store, hard_state(1, 0, 3));
    assert_eq!(store.power_loss(1), 0);
    assert_eq!(hs(&store), hard_state(1, 0, 3));
}

#[test]
fn clones_share_the_disk() {
    let store = MemLogStore::with_sync_tracking();
    let disk = store.clone();
    append(&store, entries(1, 2, 1)).unwrap();
    commit(&store, hard_state(1, 0, 2));
    assert_eq!(disk.power_loss(0), 1);
    assert_eq!(hs(&store), HardState::default());
}

#[test]
#[should_panic(expected = "with_sync_tracking")]
fn power_loss_needs_sync_tracking() {
    let store = MemLogStore::new();
    assert!(!store.tracks_sync());
    store.sync();
    assert_eq!(store.unsynced_writes(), 0);
    store.power_loss(0);
}
