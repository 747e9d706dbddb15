//! The behaviour every [`LogStore`] must show, as a suite any backend runs against
//! itself (feature `testing`).
//!
//! Each check takes a freshly opened, empty store and panics with a message naming
//! the check when the store misbehaves. [`run_log_store_suite`] runs them all:
//!
//! ```
//! craft_core::testing::run_log_store_suite(craft_core::MemLogStore::new);
//! ```
//!
//! Reopening a store (durability) is backend-specific and tested by each backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, StorageError, NO_LIMIT};

use crate::storage::{make_snapshot, voters, LocalSnapshot, LogStore, LogWrite};

/// One check of the suite: panics when the fresh store it is given misbehaves.
pub type Check<S> = fn(S);

/// Runs every check of the suite, each on a fresh store from `open`.
pub fn run_log_store_suite<S: LogStore>(mut open: impl FnMut() -> S) {
    let checks: [(&str, Check<S>); 17] = [
        (
            "empty_store_is_truncated_at_zero",
            empty_store_is_truncated_at_zero,
        ),
        ("bootstrap_installs_snapshot", bootstrap_installs_snapshot),
        ("append_reads_back", append_reads_back),
        (
            "append_outside_log_is_rejected",
            append_outside_log_is_rejected,
        ),
        (
            "append_truncates_conflicting_suffix",
            append_truncates_conflicting_suffix,
        ),
        ("entries_respect_max_size", entries_respect_max_size),
        ("compacted_range_is_reported", compacted_range_is_reported),
        ("save_snapshot_compacts_log", save_snapshot_compacts_log),
        (
            "save_snapshot_ignores_older_rejects_beyond_log",
            save_snapshot_ignores_older_rejects_beyond_log,
        ),
        ("leader_snapshot_replaces_log", leader_snapshot_replaces_log),
        (
            "leader_snapshot_with_entries_and_hard_state",
            leader_snapshot_with_entries_and_hard_state,
        ),
        (
            "leader_snapshot_keeps_higher_commit",
            leader_snapshot_keeps_higher_commit,
        ),
        ("hard_state_round_trips", hard_state_round_trips),
        (
            "rejected_write_changes_nothing",
            rejected_write_changes_nothing,
        ),
        (
            "local_snapshot_rides_with_entries",
            local_snapshot_rides_with_entries,
        ),
        (
            "rejected_local_snapshot_changes_nothing",
            rejected_local_snapshot_changes_nothing,
        ),
        (
            "compaction_step_by_step_keeps_reads_right",
            compaction_step_by_step_keeps_reads_right,
        ),
    ];
    for (name, check) in checks {
        eprintln!("log store suite: {name}");
        check(open());
    }
}

/// An entry at `index` in `term` whose data names both, so a wrong read shows.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} term {term}").into_bytes(),
        ..Default::default()
    }
}

/// Entries `first..=last`, all in `term`.
pub fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|i| entry(i, term)).collect()
}

/// A hard state from its parts.
pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

/// A synced write of `entries` alone.
pub fn append(store: &impl LogStore, entries: Vec<Entry>) -> raft::Result<()> {
    store.write(LogWrite {
        entries,
        must_sync: true,
        ..Default::default()
    })
}

fn read<S: LogStore>(
    store: &S,
    low: u64,
    high: u64,
    max_size: Option<u64>,
) -> raft::Result<Vec<Entry>> {
    store.entries(low, high, max_size, GetEntriesContext::empty(false))
}

fn is_compacted<T>(r: &raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
}

fn is_unavailable<T>(r: &raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Unavailable)))
}

/// Asserts first index, last index and the term at every index in `terms`.
#[track_caller]
fn assert_log<S: LogStore>(store: &S, what: &str, first: u64, last: u64, terms: &[(u64, u64)]) {
    assert_eq!(store.first_index().unwrap(), first, "{what}: first_index");
    assert_eq!(store.last_index().unwrap(), last, "{what}: last_index");
    for &(index, term) in terms {
        assert_eq!(store.term(index).unwrap(), term, "{what}: term({index})");
    }
}

/// Asserts two snapshots agree on index, term, conf state and data.
#[track_caller]
fn assert_snapshot(got: &Snapshot, want: &Snapshot, what: &str) {
    let (g, w) = (got.get_metadata(), want.get_metadata());
    assert_eq!(
        (g.index, g.term),
        (w.index, w.term),
        "{what}: snapshot index and term"
    );
    assert_eq!(
        g.get_conf_state(),
        w.get_conf_state(),
        "{what}: snapshot conf state"
    );
    assert_eq!(got.data, want.data, "{what}: snapshot data");
}

/// A new store is truncated at 0: first index 1, last index 0, term(0) = 0, default
/// hard state and conf state, no snapshot.
pub fn empty_store_is_truncated_at_zero<S: LogStore>(store: S) {
    let what = "empty store";
    assert_log(&store, what, 1, 0, &[(0, 0)]);
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default(), "{what}: hard state");
    assert!(!state.initialized(), "{what}: conf state must be empty");
    assert!(store.is_empty().unwrap(), "{what}: is_empty");
    assert_eq!(
        store.latest_snapshot().unwrap().get_metadata().index,
        0,
        "{what}: snapshot index"
    );
    assert!(
        read(&store, 1, 1, None).unwrap().is_empty(),
        "{what}: entries(1, 1)"
    );
    assert!(
        is_compacted(&read(&store, 0, 1, None)),
        "{what}: entries(0, 1) must be Compacted"
    );
    assert!(
        is_unavailable(&read(&store, 1, 2, None)),
        "{what}: entries(1, 2) must be Unavailable"
    );
    assert!(
        is_unavailable(&store.term(1)),
        "{what}: term(1) must be Unavailable"
    );
}

/// [`LogStore::bootstrap`] installs the snapshot: the log starts after it, its term is
/// kept, the hard state commits it and the conf state is the snapshot's.
pub fn bootstrap_installs_snapshot<S: LogStore>(store: S) {
    let what = "after bootstrap at 5";
    let snap = make_snapshot(5, 2, voters([1, 2, 3]), b"state".to_vec());
    store.bootstrap(snap.clone()).unwrap();
    assert_log(&store, what, 6, 5, &[(5, 2)]);
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(2, 0, 5), "{what}: hard state");
    assert_eq!(
        state.conf_state.voters,
        vec![1, 2, 3],
        "{what}: conf state voters"
    );
    assert!(!store.is_empty().unwrap(), "{what}: is_empty");
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);
    assert_snapshot(&store.snapshot(5, 2).unwrap(), &snap, what);
    assert!(
        matches!(
            store.snapshot(6, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ),
        "{what}: snapshot(6) must be SnapshotTemporarilyUnavailable"
    );
    assert!(
        is_compacted(&read(&store, 5, 6, None)),
        "{what}: entries(5, 6) must be Compacted"
    );
    assert!(
        is_compacted(&store.term(4)),
        "{what}: term(4) must be Compacted"
    );
}

/// Appended entries read back whole, from an empty log (starting at 1) and after a
/// bootstrap; `entries` answers any sub-range and refuses ranges past the end.
pub fn append_reads_back<S: LogStore>(store: S) {
    let what = "append to empty log";
    append(&store, entries(1, 3, 1)).unwrap();
    assert_log(&store, what, 1, 3, &[(0, 0), (1, 1), (3, 1)]);
    assert_eq!(
        read(&store, 1, 4, None).unwrap(),
        entries(1, 3, 1),
        "{what}: entries(1, 4)"
    );

    let what = "append after more appends";
    let mut more = entries(4, 5, 1);
    more.extend(entries(6, 8, 2));
    append(&store, more).unwrap();
    append(&store, entries(9, 9, 3)).unwrap();
    assert_log(
        &store,
        what,
        1,
        9,
        &[(1, 1), (5, 1), (6, 2), (8, 2), (9, 3)],
    );
    let all = read(&store, 1, 10, None).unwrap();
    assert_eq!(all.len(), 9, "{what}: entries(1, 10) length");
    for (i, e) in all.iter().enumerate() {
        let index = i as u64 + 1;
        assert_eq!(e, &entry(index, e.term), "{what}: entry {index}");
    }
    assert_eq!(
        read(&store, 4, 7, None).unwrap(),
        all[3..6].to_vec(),
        "{what}: entries(4, 7)"
    );
    assert_eq!(
        read(&store, 9, 10, NO_LIMIT.into()).unwrap(),
        all[8..].to_vec(),
        "{what}: entries(9, 10)"
    );
    assert!(
        read(&store, 10, 10, None).unwrap().is_empty(),
        "{what}: entries(10, 10)"
    );
    assert!(
        is_unavailable(&read(&store, 5, 11, None)),
        "{what}: entries(5, 11) must be Unavailable"
    );
    assert!(
        is_unavailable(&store.term(10)),
        "{what}: term(10) must be Unavailable"
    );
}

/// An append that leaves a gap, or starts below the first index, is an error.
pub fn append_outside_log_is_rejected<S: LogStore>(store: S) {
    let what = "rejected append";
    store
        .bootstrap(make_snapshot(5, 2, voters([1]), Vec::new()))
        .unwrap();
    append(&store, entries(6, 7, 2)).unwrap();
    assert!(
        append(&store, entries(9, 9, 2)).is_err(),
        "{what}: append at 9 after last 7 must fail"
    );
    assert!(
        append(&store, entries(5, 6, 2)).is_err(),
        "{what}: append at 5 below first 6 must fail"
    );
    assert_log(&store, what, 6, 7, &[(5, 2), (7, 2)]);
    assert_eq!(
        read(&store, 6, 8, None).unwrap(),
        entries(6, 7, 2),
        "{what}: log unchanged"
    );
}

/// Appending at an index already present replaces that entry and everything after it,
/// as raft does when a new leader overwrites an uncommitted suffix.
pub fn append_truncates_conflicting_suffix<S: LogStore>(store: S) {
    append(&store, entries(1, 10, 1)).unwrap();

    let what = "overwrite 6..=7 in term 2";
    append(&store, entries(6, 7, 2)).unwrap();
    assert_log(&store, what, 1, 7, &[(5, 1), (6, 2), (7, 2)]);
    assert!(
        is_unavailable(&store.term(8)),
        "{what}: term(8) must be Unavailable"
    );
    let mut want = entries(1, 5, 1);
    want.extend(entries(6, 7, 2));
    assert_eq!(
        read(&store, 1, 8, None).unwrap(),
        want,
        "{what}: entries(1, 8)"
    );

    let what = "append at last + 1 keeps the log";
    append(&store, entries(8, 9, 2)).unwrap();
    assert_log(&store, what, 1, 9, &[(7, 2), (9, 2)]);

    let what = "overwrite from the first index";
    append(&store, entries(1, 2, 3)).unwrap();
    assert_log(&store, what, 1, 2, &[(0, 0), (1, 3), (2, 3)]);
    assert_eq!(
        read(&store, 1, 3, None).unwrap(),
        entries(1, 2, 3),
        "{what}: entries(1, 3)"
    );
    append(&store, entries(3, 4, 3)).unwrap();
    assert_eq!(
        read(&store, 1, 5, None).unwrap(),
        entries(1, 4, 3),
        "{what}: entries(1, 5)"
    );
}

/// `max_size` caps the total encoded size of what `entries` returns, but at least one
/// entry always comes back.
pub fn entries_respect_max_size<S: LogStore>(store: S) {
    let what = "max_size";
    let ents = entries(1, 5, 1);
    let size = |n: usize| {
        ents[..n]
            .iter()
            .map(|e| raft_prost::Message::encoded_len(e) as u64)
            .sum::<u64>()
    };
    append(&store, ents.clone()).unwrap();
    for (max, want) in [
        (Some(0), 1),
        (Some(1), 1),
        (Some(size(1)), 1),
        (Some(size(2) - 1), 1),
        (Some(size(2)), 2),
        (Some(size(3) + 1), 3),
        (Some(size(5)), 5),
        (Some(NO_LIMIT), 5),
        (None, 5),
    ] {
        let got = read(&store, 1, 6, max).unwrap();
        assert_eq!(got, ents[..want].to_vec(), "{what}: entries(1, 6, {max:?})");
    }
    let got = read(&store, 3, 6, Some(0)).unwrap();
    assert_eq!(got, ents[2..3].to_vec(), "{what}: entries(3, 6, Some(0))");
}

/// Below the first index `entries` and `term` say Compacted, except that `term`
/// still answers for the index just before it.
pub fn compacted_range_is_reported<S: LogStore>(store: S) {
    let what = "after compaction to 4";
    append(&store, entries(1, 10, 1)).unwrap();
    store
        .save_snapshot(make_snapshot(6, 1, voters([1]), Vec::new()), 4)
        .unwrap();
    assert_log(&store, what, 5, 10, &[(4, 1), (5, 1)]);
    assert!(
        is_compacted(&read(&store, 4, 6, None)),
        "{what}: entries(4, 6) must be Compacted"
    );
    assert!(
        is_compacted(&read(&store, 1, 11, None)),
        "{what}: entries(1, 11) must be Compacted"
    );
    assert!(
        is_compacted(&store.term(3)),
        "{what}: term(3) must be Compacted"
    );
    assert_eq!(
        read(&store, 5, 11, None).unwrap(),
        entries(5, 10, 1),
        "{what}: entries(5, 11)"
    );
}

/// [`LogStore::save_snapshot`] stores the snapshot and drops the log up to
/// `compact_to`, after which `first_index` is `compact_to + 1` and `term(compact_to)`
/// is kept; the hard state is untouched.
pub fn save_snapshot_compacts_log<S: LogStore>(store: S) {
    let mut ents = entries(1, 5, 1);
    ents.extend(entries(6, 10, 2));
    append(&store, ents).unwrap();
    let hs = hard_state(2, 1, 9);
    store
        .write(LogWrite {
            hard_state: Some(hs.clone()),
            ..Default::default()
        })
        .unwrap();

    let what = "snapshot at 8, compact to 5";
    let snap = make_snapshot(8, 2, voters([1, 2]), b"at 8".to_vec());
    store.save_snapshot(snap.clone(), 5).unwrap();
    assert_log(&store, what, 6, 10, &[(5, 1), (6, 2), (10, 2)]);
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hs, "{what}: hard state");
    assert_eq!(state.conf_state.voters, vec![1, 2], "{what}: conf state");
    assert_eq!(
        read(&store, 6, 11, None).unwrap().len(),
        5,
        "{what}: entries(6, 11)"
    );

    let what = "snapshot at 9, compact to 3 (behind the truncation point)";
    let snap = make_snapshot(9, 2, voters([1, 2]), b"at 9".to_vec());
    store.save_snapshot(snap.clone(), 3).unwrap();
    assert_log(&store, what, 6, 10, &[(5, 1)]);
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);

    let what = "snapshot at 10, compact everything";
    let snap = make_snapshot(10, 2, voters([1, 2, 3]), b"at 10".to_vec());
    store.save_snapshot(snap.clone(), 10).unwrap();
    assert_log(&store, what, 11, 10, &[(10, 2)]);
    assert!(
        read(&store, 11, 11, None).unwrap().is_empty(),
        "{what}: entries(11, 11)"
    );
    assert_eq!(
        store.initial_state().unwrap().conf_state.voters,
        vec![1, 2, 3],
        "{what}: conf state"
    );
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hs,
        "{what}: hard state"
    );

    let what = "append after full compaction";
    append(&store, entries(11, 12, 3)).unwrap();
    assert_log(&store, what, 11, 12, &[(10, 2), (11, 3), (12, 3)]);
}

/// A snapshot no newer than the latest is ignored; one beyond the log, or asked to
/// compact past itself, is an error.
pub fn save_snapshot_ignores_older_rejects_beyond_log<S: LogStore>(store: S) {
    append(&store, entries(1, 10, 1)).unwrap();
    let snap = make_snapshot(6, 1, voters([1]), b"at 6".to_vec());
    store.save_snapshot(snap.clone(), 4).unwrap();

    let what = "older snapshot";
    store
        .save_snapshot(make_snapshot(5, 1, voters([1]), b"at 5".to_vec()), 5)
        .unwrap();
    store
        .save_snapshot(make_snapshot(6, 1, voters([1]), b"again".to_vec()), 6)
        .unwrap();
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);
    assert_log(&store, what, 5, 10, &[(4, 1)]);

    let what = "snapshot beyond the log";
    let r = store.save_snapshot(make_snapshot(11, 1, voters([1]), Vec::new()), 8);
    assert!(r.is_err(), "{what}: must fail");
    let r = store.save_snapshot(make_snapshot(8, 1, voters([1]), Vec::new()), 9);
    assert!(r.is_err(), "{what}: compact_to past the snapshot must fail");
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);
    assert_log(&store, what, 5, 10, &[(4, 1)]);
}

/// A snapshot from the leader in [`LogStore::write`] replaces the whole log: it ends at
/// the snapshot, whose index and term are the truncation point, and the commit index
/// rises to it.
pub fn leader_snapshot_replaces_log<S: LogStore>(store: S) {
    append(&store, entries(1, 10, 1)).unwrap();
    store
        .write(LogWrite {
            hard_state: Some(hard_state(1, 1, 3)),
            ..Default::default()
        })
        .unwrap();

    let what = "leader snapshot at 20 over log 1..=10";
    let snap = make_snapshot(20, 4, voters([1, 2, 3]), b"leader".to_vec());
    store
        .write(LogWrite {
            snapshot: Some(snap.clone()),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_log(&store, what, 21, 20, &[(20, 4)]);
    assert!(
        is_compacted(&read(&store, 10, 11, None)),
        "{what}: entries(10, 11) must be Compacted"
    );
    assert!(
        is_compacted(&store.term(10)),
        "{what}: term(10) must be Compacted"
    );
    let state = store.initial_state().unwrap();
    assert_eq!(
        state.hard_state,
        hard_state(1, 1, 20),
        "{what}: commit raised to 20"
    );
    assert_eq!(state.conf_state.voters, vec![1, 2, 3], "{what}: conf state");
    assert_snapshot(&store.latest_snapshot().unwrap(), &snap, what);

    let what = "second leader snapshot at 30 over log 21..=25";
    append(&store, entries(21, 25, 4)).unwrap();
    let snap = make_snapshot(30, 5, voters([1, 2]), b"later".to_vec());
    store
        .write(LogWrite {
            snapshot: Some(snap),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_log(&store, what, 31, 30, &[(30, 5)]);
    assert!(
        is_compacted(&store.term(25)),
        "{what}: term(25) must be Compacted"
    );
    append(&store, entries(31, 31, 5)).unwrap();
    assert_log(&store, what, 31, 31, &[(30, 5), (31, 5)]);
}

/// Snapshot, entries after it and a hard state in one write all land.
pub fn leader_snapshot_with_entries_and_hard_state<S: LogStore>(store: S) {
    let what = "snapshot at 20 with entries 21..=22 and commit 21";
    append(&store, entries(1, 30, 1)).unwrap();
    store
        .write(LogWrite {
            snapshot: Some(make_snapshot(20, 3, voters([1]), Vec::new())),
            entries: entries(21, 22, 3),
            hard_state: Some(hard_state(3, 2, 21)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_log(&store, what, 21, 22, &[(20, 3), (21, 3), (22, 3)]);
    assert_eq!(
        read(&store, 21, 23, None).unwrap(),
        entries(21, 22, 3),
        "{what}: entries"
    );
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(3, 2, 21),
        "{what}: hard state"
    );
}

/// A leader snapshot never lowers a commit index that is already higher.
pub fn leader_snapshot_keeps_higher_commit<S: LogStore>(store: S) {
    let what = "snapshot at 20 under commit 25";
    store
        .write(LogWrite {
            hard_state: Some(hard_state(4, 1, 25)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    store
        .write(LogWrite {
            snapshot: Some(make_snapshot(20, 4, voters([1]), Vec::new())),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(4, 1, 25),
        "{what}: hard state"
    );
}

/// The hard state reads back as last written, with or without sync, with or without
/// entries in the same write.
pub fn hard_state_round_trips<S: LogStore>(store: S) {
    let what = "hard state";
    for (i, hs) in [
        hard_state(1, 0, 0),
        hard_state(1, 1, 0),
        hard_state(3, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .write(LogWrite {
                hard_state: Some(hs.clone()),
                must_sync: i % 2 == 0,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            store.initial_state().unwrap().hard_state,
            hs,
            "{what}: write {i}"
        );
    }
    store
        .write(LogWrite {
            entries: entries(1, 2, 3),
            hard_state: Some(hard_state(3, 2, 2)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(3, 2, 2),
        "{what}: with entries"
    );
    store.write(LogWrite::default()).unwrap();
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(3, 2, 2),
        "{what}: after empty write"
    );
    assert_log(&store, what, 1, 2, &[(2, 3)]);
}

/// A local snapshot, its compaction, new entries and a hard state in one write all
/// land; a received snapshot in the same write makes the local one moot.
pub fn local_snapshot_rides_with_entries<S: LogStore>(store: S) {
    let what = "local snapshot at 8 (compact to 5) with entries 11..=12";
    append(&store, entries(1, 10, 1)).unwrap();
    store
        .write(LogWrite {
            local_snapshot: Some(LocalSnapshot {
                snapshot: make_snapshot(8, 1, voters([1]), b"at 8".to_vec()),
                compact_to: 5,
                staged: None,
            }),
            entries: entries(11, 12, 2),
            hard_state: Some(hard_state(2, 1, 10)),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_log(
        &store,
        what,
        6,
        12,
        &[(5, 1), (6, 1), (10, 1), (11, 2), (12, 2)],
    );
    assert_eq!(read(&store, 6, 13, None).unwrap().len(), 7, "{what}");
    assert_eq!(store.latest_snapshot().unwrap().get_metadata().index, 8);
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(2, 1, 10)
    );

    let what = "received snapshot at 20 beside a local one at 12";
    store
        .write(LogWrite {
            local_snapshot: Some(LocalSnapshot {
                snapshot: make_snapshot(12, 2, voters([1]), b"at 12".to_vec()),
                compact_to: 12,
                staged: None,
            }),
            snapshot: Some(make_snapshot(20, 3, voters([1, 2]), b"at 20".to_vec())),
            must_sync: true,
            ..Default::default()
        })
        .unwrap();
    assert_log(&store, what, 21, 20, &[(20, 3)]);
    let snap = store.latest_snapshot().unwrap();
    assert_eq!(
        (snap.get_metadata().index, &snap.data[..]),
        (20, &b"at 20"[..])
    );
}

/// A write whose local snapshot lies beyond the log fails whole.
pub fn rejected_local_snapshot_changes_nothing<S: LogStore>(store: S) {
    let what = "local snapshot beyond the log";
    append(&store, entries(1, 5, 1)).unwrap();
    let r = store.write(LogWrite {
        local_snapshot: Some(LocalSnapshot {
            snapshot: make_snapshot(9, 1, voters([1]), Vec::new()),
            compact_to: 3,
            staged: None,
        }),
        entries: entries(6, 6, 1),
        must_sync: true,
        ..Default::default()
    });
    assert!(r.is_err(), "{what}: must fail");
    assert_log(&store, what, 1, 5, &[(0, 0), (5, 1)]);
    assert_eq!(store.latest_snapshot().unwrap().get_metadata().index, 0);
}

/// The consensus service's pattern: every write appends one entry and compacts one
/// behind a snapshot; reads, terms and bounds stay right all along.
pub fn compaction_step_by_step_keeps_reads_right<S: LogStore>(store: S) {
    let what = "append one, compact one";
    let retain = 20;
    append(&store, entries(1, retain, 1)).unwrap();
    for i in (retain + 1)..=(retain + 300) {
        let applied = i - 1;
        store
            .write(LogWrite {
                local_snapshot: Some(LocalSnapshot {
                    snapshot: make_snapshot(applied, 1 + applied / 100, voters([1]), Vec::new()),
                    compact_to: applied - retain + 1,
                    staged: None,
                }),
                entries: vec![entry(i, 1 + i / 100)],
                hard_state: Some(hard_state(1 + i / 100, 1, applied)),
                must_sync: true,
                ..Default::default()
            })
            .unwrap();
        let first = applied - retain + 2;
        assert_log(
            &store,
            what,
            first,
            i,
            &[(first - 1, 1 + (first - 1) / 100), (i, 1 + i / 100)],
        );
        let got = read(&store, first, i + 1, None).unwrap();
        assert_eq!(got.len() as u64, i + 1 - first, "{what}: entries at {i}");
        assert_eq!(
            got[0],
            entry(first, 1 + first / 100),
            "{what}: first entry at {i}"
        );
        assert!(
            is_compacted(&read(&store, first - 1, i, None)),
            "{what}: compacted at {i}"
        );
    }
}

/// A write that fails (here: a snapshot with entries that do not follow it) leaves
/// the store as it was: writes are atomic.
pub fn rejected_write_changes_nothing<S: LogStore>(store: S) {
    let what = "rejected snapshot + gap write";
    append(&store, entries(1, 5, 1)).unwrap();
    store
        .write(LogWrite {
            hard_state: Some(hard_state(1, 1, 2)),
            ..Default::default()
        })
        .unwrap();
    let r = store.write(LogWrite {
        snapshot: Some(make_snapshot(10, 2, voters([1]), b"x".to_vec())),
        entries: entries(12, 12, 2),
        hard_state: Some(hard_state(2, 1, 12)),
        must_sync: true,
        ..Default::default()
    });
    assert!(r.is_err(), "{what}: entries after a gap must fail");
    assert_log(&store, what, 1, 5, &[(0, 0), (5, 1)]);
    assert_eq!(
        read(&store, 1, 6, None).unwrap(),
        entries(1, 5, 1),
        "{what}: entries"
    );
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(1, 1, 2),
        "{what}: hard state"
    );
    assert_eq!(
        store.latest_snapshot().unwrap().get_metadata().index,
        0,
        "{what}: snapshot"
    );
}
