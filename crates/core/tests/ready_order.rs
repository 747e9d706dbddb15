//! The order in which a `Replica` hands over what one Ready holds: what may go before
//! the Ready's write is durable goes to the `ReadySink` first.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;

use craft_core::raft::eraftpb::Message;
use craft_core::raft::Storage;
use craft_core::{
    make_snapshot, voters, Committed, CommittedKind, LogPosition, LogStore, MemLogStore, ReadySink,
    Replica, ReplicaConfig,
};

/// Records what it is handed and, for each committed entry, the store's last index at
/// that moment (what had been written).
#[derive(Default)]
struct Recorder {
    store: Option<MemLogStore>,
    sent: Vec<Message>,
    applied: Vec<(u64, u64)>,
}

impl ReadySink for Recorder {
    fn send(&mut self, messages: Vec<Message>) {
        self.sent.extend(messages);
    }

    fn apply(&mut self, committed: Vec<Committed>) {
        let last = self
            .store
            .as_ref()
            .map_or(0, |s| s.last_index().expect("in-memory store"));
        self.applied
            .extend(committed.iter().map(|c| (c.index, last)));
    }
}

fn open(id: u64) -> (Replica<MemLogStore>, MemLogStore) {
    let store = MemLogStore::new();
    store
        .bootstrap(make_snapshot(1, 1, voters([1, 2]), Vec::new()))
        .unwrap();
    let (replica, _) = Replica::open(ReplicaConfig::new(id), store.clone()).unwrap();
    (replica, store)
}

/// Handles every Ready of `r` and returns what it sends.
fn drain(r: &mut Replica<MemLogStore>) -> Vec<Message> {
    let mut sent = Vec::new();
    while r.has_ready() {
        let mut sink = Recorder::default();
        let out = r.handle_ready_with(&mut sink).unwrap();
        sent.extend(sink.sent);
        sent.extend(out.messages);
    }
    sent
}

/// Delivers messages between two replicas until they fall quiet.
fn settle(a: &mut Replica<MemLogStore>, b: &mut Replica<MemLogStore>) {
    let mut queue: VecDeque<Message> = drain(a).into();
    queue.extend(drain(b));
    while let Some(m) = queue.pop_front() {
        let to = if m.to == a.id() { &mut *a } else { &mut *b };
        to.step(m).unwrap();
        queue.extend(drain(to));
    }
}

/// A leader of two whose next Ready holds both A's commit (the follower's ack for A has
/// just been stepped) and B, proposed before the ack arrived and not yet written.
struct AckAndProposal {
    leader: Replica<MemLogStore>,
    leader_store: MemLogStore,
    a: LogPosition,
    b: LogPosition,
}

fn ack_and_proposal() -> AckAndProposal {
    let (mut leader, leader_store) = open(1);
    let (mut follower, _) = open(2);
    leader.campaign().unwrap();
    settle(&mut leader, &mut follower);
    assert!(leader.is_leader());
    // A goes to the follower, which acknowledges it.
    let a = leader.propose(Vec::new(), b"a".to_vec()).unwrap();
    for m in drain(&mut leader) {
        follower.step(m).unwrap();
    }
    let acks = drain(&mut follower);
    assert!(!acks.is_empty());
    let b = leader.propose(Vec::new(), b"b".to_vec()).unwrap();
    for m in acks {
        leader.step(m).unwrap();
    }
    assert!(leader.has_ready());
    AckAndProposal {
        leader,
        leader_store,
        a,
        b,
    }
}

#[test]
fn entries_committed_by_an_ack_are_handed_over_before_the_next_entries_are_written() {
    let AckAndProposal {
        mut leader,
        leader_store,
        a,
        b,
    } = ack_and_proposal();
    let mut sink = Recorder {
        store: Some(leader_store.clone()),
        ..Default::default()
    };
    let out = leader.handle_ready_with(&mut sink).unwrap();

    assert_eq!(
        sink.applied,
        vec![(a.index, a.index)],
        "A is handed over before B is written (the store ends at A)"
    );
    assert!(out.committed.iter().all(|c| c.index != a.index));
    assert_eq!(
        leader_store.last_index().unwrap(),
        b.index,
        "B written by the same call"
    );
}

#[test]
fn handle_ready_gives_the_early_entries_first_in_its_output() {
    let AckAndProposal { mut leader, a, .. } = ack_and_proposal();
    let out = leader.handle_ready(&mut |_| {}).unwrap();
    let first = out.committed.first().expect("A is committed");
    assert_eq!(first.index, a.index);
    assert!(matches!(&first.kind, CommittedKind::Normal { data, .. } if data == b"a"));
}
