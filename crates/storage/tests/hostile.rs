//! Generated corruption of every record the log store reads back: entries, the hard
//! state, the snapshot metadata and the truncation point. Valid records are mutated
//! (bytes flipped, cut short, extended, wrapped in nested groups) and decoded with the
//! store's own decoders. Each must come back as a well-formed record (its encoding as long
//! as the stored bytes, an entry at its own index and of a type raft knows), or as
//! `StorageError::Corrupt` naming its key: never a panic, never a value raft-rs would trip
//! on. (A flip inside a value decodes to another well-formed record; RocksDB's block
//! checksums are what catch that on disk.)
//!
//! `CRAFT_FUZZ_CASES` sets the number of generated inputs per record kind (CI runs a
//! bounded number; `cargo xtask fuzz` runs 100,000).
#![allow(clippy::unwrap_used, missing_docs)]

use craft_mutate::{apply, mutation, runner, DEEP_GROUPS};
use craft_storage::layout::{decode, decode_entry, decode_truncated, encode_truncated};
use craft_storage::StorageError;
use proptest::prelude::*;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};
use raft_prost::Message as _;

fn entries() -> Vec<Entry> {
    let normal = Entry {
        index: 7,
        term: 3,
        data: b"a block of some length".to_vec(),
        context: b"ctx".to_vec(),
        ..Default::default()
    };
    let conf = Entry {
        index: 7,
        term: 3,
        entry_type: EntryType::EntryConfChangeV2.into(),
        data: vec![0x12, 0x04, 0x08, 0x00, 0x10, 0x04],
        ..Default::default()
    };
    let empty = Entry {
        index: 7,
        term: 3,
        ..Default::default()
    };
    vec![normal, conf, empty]
}

fn run<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) {
    runner(3000).run(&strategy, test).unwrap();
}

fn corrupt_key(e: &StorageError) -> Option<&str> {
    match e {
        StorageError::Corrupt { key, .. } => Some(key),
        _ => None,
    }
}

#[test]
fn mutated_entries_are_well_formed_or_corrupt() {
    let seeds = entries();
    let accepted = std::sync::atomic::AtomicU32::new(0);
    let refused = std::sync::atomic::AtomicU32::new(0);
    run(
        (0..seeds.len(), prop::collection::vec(mutation(), 1..4)),
        |(seed, mutations)| {
            let bytes = mutations.iter().fold(seeds[seed].encode_to_vec(), apply);
            match decode_entry(7, &bytes) {
                Ok(e) => {
                    prop_assert_eq!(e.index, 7);
                    prop_assert!(EntryType::from_i32(e.entry_type).is_some());
                    prop_assert_eq!(e.encoded_len(), bytes.len());
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    prop_assert_eq!(corrupt_key(&e), Some("raft_log/7"), "{}", e);
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(())
        },
    );
    let (a, r) = (accepted.into_inner(), refused.into_inner());
    println!("entries: {a} read back well-formed, {r} reported corrupt");
    assert!(a > 0 && r > 0, "only one outcome seen: {a} / {r}");
}

#[test]
fn mutated_state_records_are_well_formed_or_corrupt() {
    let hard = HardState {
        term: 9,
        vote: 2,
        commit: 41,
    }
    .encode_to_vec();
    let meta = SnapshotMetadata {
        conf_state: Some(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        }),
        index: 40,
        term: 9,
    }
    .encode_to_vec();
    let seeds = [hard, meta];
    run(
        (0..2usize, prop::collection::vec(mutation(), 1..4)),
        |(seed, mutations)| {
            let bytes = mutations.iter().fold(seeds[seed].clone(), apply);
            let key = || "raft_state/x".to_string();
            let result = if seed == 0 {
                decode::<HardState>(&bytes, key).map(|m| m.encoded_len())
            } else {
                decode::<SnapshotMetadata>(&bytes, key).map(|m| m.encoded_len())
            };
            match result {
                Ok(len) => prop_assert_eq!(len, bytes.len()),
                Err(e) => prop_assert_eq!(corrupt_key(&e), Some("raft_state/x")),
            }
            Ok(())
        },
    );
}

#[test]
fn truncation_points_of_any_length_never_panic() {
    run(prop::collection::vec(any::<u8>(), 0..40), |bytes| {
        match decode_truncated(&bytes) {
            Some(point) => {
                prop_assert_eq!(bytes.len(), 16);
                prop_assert_eq!(encode_truncated(point).to_vec(), bytes);
            }
            None => prop_assert_ne!(bytes.len(), 16),
        }
        Ok(())
    });
}

#[test]
fn hand_made_extremes_are_corrupt() {
    // Groups nested 100,000 deep, a length of 2^31, an empty value.
    let deep = vec![0x0b; DEEP_GROUPS];
    // Field 4 (an entry's data) claiming 2^31 bytes.
    let huge = vec![0x22, 0x80, 0x80, 0x80, 0x80, 0x08];
    for bytes in [deep, huge] {
        let e = decode_entry(3, &bytes).unwrap_err();
        assert_eq!(corrupt_key(&e), Some("raft_log/3"));
        assert!(decode::<HardState>(&bytes, || "k".into()).is_err());
    }
    // An empty value decodes to entry 0, which is not entry 3.
    assert!(decode_entry(3, &[]).is_err());
}
