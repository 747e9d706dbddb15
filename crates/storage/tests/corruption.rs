//! Undecodable or misplaced values on disk are reported as `StorageError::Corrupt`
//! naming their key, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use craft_core::testing::{append, entries, entry, hard_state};
use craft_core::{LogStore, LogWrite};
use craft_storage::layout::{entry_key, HARD_STATE_KEY, LOG_CF, STATE_CF, TRUNCATED_KEY};
use craft_storage::{RocksLogStore, StorageError, StoreOptions};
use raft::{GetEntriesContext, Storage as _};
use raft_prost::Message as _;

/// A store with entries 1..=10 in term 1 and a hard state, closed again.
fn store_with_ten_entries(dir: &Path) {
    let store = RocksLogStore::open(dir, StoreOptions::default()).unwrap();
    append(&store, entries(1, 10, 1)).unwrap();
    store
        .write(LogWrite {
            hard_state: Some(hard_state(1, 1, 10)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
}

/// Changes the database behind the store's back.
fn tamper(dir: &Path, f: impl FnOnce(&rocksdb::DB)) {
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, [LOG_CF, STATE_CF]).unwrap();
    f(&db);
}

fn put_entry_bytes(dir: &Path, index: u64, value: &[u8]) {
    tamper(dir, |db| {
        let log = db.cf_handle(LOG_CF).unwrap();
        db.put_cf(log, entry_key(index), value).unwrap();
    });
}

/// The key a storage error names, when it is `Corrupt`.
fn corrupt_key(e: &raft::Error) -> Option<String> {
    let raft::Error::Store(raft::StorageError::Other(inner)) = e else {
        return None;
    };
    match inner.downcast_ref::<StorageError>()? {
        StorageError::Corrupt { key, .. } => Some(key.clone()),
        _ => None,
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: raft::Result<T>, key: &str) {
    let e = r.expect_err("reading a corrupt entry must fail");
    assert_eq!(corrupt_key(&e).as_deref(), Some(key), "error: {e}");
    assert!(e.to_string().contains(key), "message must name {key}: {e}");
}

fn read(store: &RocksLogStore, low: u64, high: u64) -> raft::Result<Vec<raft::eraftpb::Entry>> {
    store.entries(low, high, None, GetEntriesContext::empty(false))
}

#[test]
fn garbage_entry_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    put_entry_bytes(dir.path(), 5, b"\xff\xfe not a protobuf entry");

    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_corrupt(read(&store, 1, 11), "raft_log/5");
    assert_corrupt(read(&store, 5, 6), "raft_log/5");
    assert_corrupt(store.term(5), "raft_log/5");
    assert_eq!(store.term(4).unwrap(), 1);
    assert_eq!(read(&store, 1, 5).unwrap(), entries(1, 4, 1));
    assert_eq!(read(&store, 6, 11).unwrap(), entries(6, 10, 1));
}

#[test]
fn truncated_entry_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    let bytes = entry(7, 1).encode_to_vec();
    put_entry_bytes(dir.path(), 7, &bytes[..bytes.len() - 3]);

    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_corrupt(read(&store, 1, 11), "raft_log/7");
    assert_corrupt(store.term(7), "raft_log/7");
}

#[test]
fn entry_under_the_wrong_index_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    put_entry_bytes(dir.path(), 3, &entry(4, 1).encode_to_vec());
    put_entry_bytes(dir.path(), 6, b"");

    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_corrupt(store.term(3), "raft_log/3");
    assert_corrupt(store.term(6), "raft_log/6");
    assert_corrupt(read(&store, 4, 11), "raft_log/6");
}

#[test]
fn hole_in_the_log_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    tamper(dir.path(), |db| {
        db.delete_cf(db.cf_handle(LOG_CF).unwrap(), entry_key(4))
            .unwrap();
    });

    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_corrupt(read(&store, 2, 8), "raft_log/4");
    assert_corrupt(store.term(4), "raft_log/4");
}

#[test]
fn corrupt_state_fails_open_naming_the_key() {
    for (key, value) in [
        (HARD_STATE_KEY, &b"\xff\xff\xff"[..]),
        (TRUNCATED_KEY, &b"short"[..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        store_with_ten_entries(dir.path());
        tamper(dir.path(), |db| {
            db.put_cf(db.cf_handle(STATE_CF).unwrap(), key, value)
                .unwrap();
        });
        let e = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap_err();
        let want = format!("raft_state/{}", String::from_utf8_lossy(key));
        assert!(
            matches!(&e, StorageError::Corrupt { key, .. } if *key == want),
            "open must report {want} corrupt, got {e}"
        );
    }
}

#[test]
fn log_not_starting_after_truncation_point_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    tamper(dir.path(), |db| {
        db.delete_cf(db.cf_handle(LOG_CF).unwrap(), entry_key(1))
            .unwrap();
    });
    let e = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt { key, .. } if key == "raft_log/2"),
        "got {e}"
    );
}

#[test]
fn entry_of_a_type_raft_does_not_know_is_reported() {
    // prost keeps any number in an enum field; raft-rs's accessors panic on one they do
    // not know, so the store must refuse it.
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    let mut odd = entry(4, 1);
    odd.entry_type = 9;
    put_entry_bytes(dir.path(), 4, &odd.encode_to_vec());

    let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_corrupt(read(&store, 1, 11), "raft_log/4");
    assert_corrupt(store.term(4), "raft_log/4");
}

#[test]
fn mutated_entry_bytes_are_read_back_or_reported_never_a_panic() {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let dir = tempfile::tempdir().unwrap();
    store_with_ten_entries(dir.path());
    let good = entry(7, 1).encode_to_vec();
    let (mut read_back, mut reported) = (0, 0);
    for _ in 0..120 {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..4) {
                0 => {
                    let i = rng.random_range(0..bytes.len().max(1));
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= rng.random_range(1..=255u8);
                    }
                }
                1 => bytes.truncate(rng.random_range(0..=bytes.len())),
                2 => bytes.push(rng.random()),
                _ => {
                    let at = rng.random_range(0..=bytes.len());
                    bytes.insert(at, rng.random());
                }
            }
        }
        put_entry_bytes(dir.path(), 7, &bytes);
        let store = RocksLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        match read(&store, 7, 8) {
            Ok(ents) => {
                // Bytes that still decode to a well-formed entry 7 are that entry.
                assert_eq!(ents.len(), 1);
                assert_eq!(ents[0].index, 7);
                assert!(raft::eraftpb::EntryType::from_i32(ents[0].entry_type).is_some());
                assert_eq!(raft_prost::Message::encoded_len(&ents[0]), bytes.len());
                read_back += 1;
            }
            Err(e) => {
                assert_eq!(corrupt_key(&e).as_deref(), Some("raft_log/7"), "error: {e}");
                reported += 1;
            }
        }
    }
    // Both outcomes occur: the loop is not testing only one path.
    assert!(
        read_back > 0 && reported > 0 && read_back + reported == 120,
        "{read_back} read, {reported} reported"
    );
}
