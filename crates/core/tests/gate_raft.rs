//! Each forgery the gate refuses, tried on raft-rs itself: stepped into a bare
//! `RawNode` it panics (an assertion, a `fatal!`, an index or an overflow), and stepped
//! into a [`Replica`] in the same state it is refused and the replica goes on.
//!
//! The receiver is a follower (id 1) of leader 2 in term 2, in a cluster of 1, 2 and 3,
//! holding entries 2..=10, 8 of them committed; or, where the message is for a leader,
//! node 1 leading term 2.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use craft_core::gate::Rejection;
use craft_core::raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};
use craft_core::raft::{self, RawNode};
use craft_core::{
    make_snapshot, voters, Error, LogStore, LogWrite, MemLogStore, Replica, ReplicaConfig,
};

const ME: u64 = 1;
const LEADER: u64 = 2;
const TERM: u64 = 2;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn raft_config() -> raft::Config {
    raft::Config {
        id: ME,
        election_tick: 10,
        heartbeat_tick: 3,
        check_quorum: true,
        applied: 1,
        ..Default::default()
    }
}

fn store() -> MemLogStore {
    let store = MemLogStore::new();
    store
        .bootstrap(make_snapshot(1, 1, voters([1, 2, 3]), Vec::new()))
        .unwrap();
    store
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

fn msg(kind: MessageType, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = ME;
    m.term = term;
    m
}

/// What the leader of term 2 sends first: entries 2..=10, commit 8.
fn honest_append() -> Message {
    let mut m = msg(MessageType::MsgAppend, LEADER, TERM);
    m.index = 1;
    m.log_term = 1;
    m.entries = (2..=10).map(|i| entry(i, TERM)).collect();
    m.commit = 8;
    m
}

/// Persists and acknowledges everything a bare node's Ready asks for; returns the
/// messages it would send.
fn persist(raw: &mut RawNode<MemLogStore>) -> Vec<Message> {
    let mut out = Vec::new();
    while raw.has_ready() {
        let mut ready = raw.ready();
        out.extend(ready.take_messages());
        let write = LogWrite {
            snapshot: (ready.snapshot().get_metadata().index > 0).then(|| ready.snapshot().clone()),
            entries: ready.take_entries(),
            hard_state: ready.hs().cloned(),
            must_sync: true,
            ..Default::default()
        };
        if !write.is_empty() {
            raw.store().write(write).unwrap();
        }
        out.extend(ready.take_persisted_messages());
        let mut light = raw.advance(ready);
        out.extend(light.take_messages());
        raw.advance_apply();
    }
    out
}

fn bare_follower() -> RawNode<MemLogStore> {
    let mut raw = RawNode::new(&raft_config(), store(), &logger()).unwrap();
    raw.step(honest_append()).unwrap();
    persist(&mut raw);
    assert_eq!(raw.raft.raft_log.last_index(), 10);
    assert_eq!(raw.raft.leader_id, LEADER);
    raw
}

fn replica_config() -> ReplicaConfig {
    let mut cfg = ReplicaConfig::new(ME);
    cfg.pre_vote = false;
    cfg
}

fn handle_ready(replica: &mut Replica<MemLogStore>) {
    while replica.has_ready() {
        replica.handle_ready(&mut |_| {}).unwrap();
    }
}

fn follower() -> Replica<MemLogStore> {
    let (mut replica, _) = Replica::open(replica_config(), store()).unwrap();
    replica.set_snapshot_check(Box::new(|data: &[u8]| {
        if data == b"state" {
            Ok(())
        } else {
            Err(format!("{} bytes that are not a state", data.len()))
        }
    }));
    replica.step(honest_append()).unwrap();
    handle_ready(&mut replica);
    assert_eq!(replica.last_index(), 10);
    replica
}

fn bare_leader() -> RawNode<MemLogStore> {
    let mut raw = RawNode::new(&raft_config(), store(), &logger()).unwrap();
    raw.campaign().unwrap();
    persist(&mut raw);
    let mut vote = msg(MessageType::MsgRequestVoteResponse, 2, raw.raft.term);
    vote.reject = false;
    raw.step(vote).unwrap();
    persist(&mut raw);
    assert_eq!(raw.raft.state, raft::StateRole::Leader);
    raw
}

fn leader() -> Replica<MemLogStore> {
    let (mut replica, _) = Replica::open(replica_config(), store()).unwrap();
    replica.campaign().unwrap();
    handle_ready(&mut replica);
    let vote = msg(MessageType::MsgRequestVoteResponse, 2, replica.role().term);
    replica.step(vote).unwrap();
    handle_ready(&mut replica);
    assert!(replica.is_leader());
    replica
}

/// `forge` panics raft-rs when stepped into `bare` (with `then` run after it, for a
/// panic that comes a step later), and `replica` refuses it for `reason` and goes on.
fn dies_bare_refused_gated(
    what: &str,
    mut bare: RawNode<MemLogStore>,
    mut replica: Replica<MemLogStore>,
    forge: impl Fn(u64) -> Message,
    then: impl FnOnce(&mut RawNode<MemLogStore>),
    reason: Rejection,
) {
    let term = bare.raft.term;
    let died = catch_unwind(AssertUnwindSafe(|| {
        let _ = bare.step(forge(term));
        then(&mut bare);
        persist(&mut bare);
    }));
    assert!(
        died.is_err(),
        "{what}: raft-rs survived it without the gate"
    );

    let term = replica.role().term;
    match replica.step(forge(term)) {
        Err(Error::Refused { reason: r, .. }) => assert_eq!(r, reason, "{what}"),
        other => panic!("{what}: not refused: {other:?}"),
    }
    // The replica goes on: it still holds its log, and ticks and Readies as before.
    let last = replica.last_index();
    for _ in 0..3 {
        replica.tick();
        handle_ready(&mut replica);
    }
    assert!(replica.last_index() >= last, "{what}: the log shrank");
    assert_eq!(replica.refused(), 1, "{what}");
}

fn nothing(_: &mut RawNode<MemLogStore>) {}

#[test]
fn an_append_whose_previous_entry_is_past_the_log_with_term_0() {
    dies_bare_refused_gated(
        "phantom previous entry",
        bare_follower(),
        follower(),
        |term| {
            let mut m = msg(MessageType::MsgAppend, LEADER, term);
            m.index = 20;
            m.log_term = 0;
            m.commit = 20;
            m
        },
        nothing,
        Rejection::BadPrevTerm,
    );
}

#[test]
fn an_append_of_entries_with_term_0_past_the_log() {
    dies_bare_refused_gated(
        "entries of term 0",
        bare_follower(),
        follower(),
        |term| {
            let mut m = msg(MessageType::MsgAppend, LEADER, term);
            m.index = 10;
            m.log_term = TERM;
            m.entries = vec![entry(11, 0)];
            m.commit = 11;
            m
        },
        nothing,
        Rejection::BadEntryTerm,
    );
}

#[test]
fn an_append_with_a_gap() {
    dies_bare_refused_gated(
        "entries with a gap",
        bare_follower(),
        follower(),
        |term| {
            let mut m = msg(MessageType::MsgAppend, LEADER, term);
            m.index = 10;
            m.log_term = TERM;
            m.entries = vec![entry(13, TERM)];
            m
        },
        nothing,
        Rejection::NotContiguous,
    );
}

#[test]
fn a_heartbeat_committing_past_the_log() {
    let forge = |term| {
        let mut m = msg(MessageType::MsgHeartbeat, LEADER, term);
        m.commit = 20;
        m
    };
    let mut bare = bare_follower();
    let died = catch_unwind(AssertUnwindSafe(|| {
        let _ = bare.step(forge(TERM));
    }));
    assert!(
        died.is_err(),
        "raft-rs survived a heartbeat committing past its log"
    );
    // Ours takes the heartbeat without its commit (and answers it, so that a leader
    // without our gate goes on to probe this log), and commits nothing on its word.
    let mut replica = follower();
    let committed = replica.commit_index();
    replica.step(forge(TERM)).unwrap();
    assert_eq!(replica.commits_withheld(), 1);
    assert_eq!(replica.commit_index(), committed);
    let mut answered = Vec::new();
    while replica.has_ready() {
        let out = replica.handle_ready(&mut |m| answered.extend(m)).unwrap();
        answered.extend(out.messages);
    }
    assert!(
        answered
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse && m.to == LEADER),
        "the heartbeat was not answered: {answered:?}"
    );
}

fn snapshot(index: u64, term: u64, cs: ConfState, data: &[u8]) -> Snapshot {
    make_snapshot(index, term, cs, data.to_vec())
}

#[test]
fn a_snapshot_of_term_0_past_the_log() {
    dies_bare_refused_gated(
        "snapshot of term 0",
        bare_follower(),
        follower(),
        |term| {
            let mut m = msg(MessageType::MsgSnapshot, LEADER, term);
            m.set_snapshot(snapshot(20, 0, voters([1, 2, 3]), b"state"));
            m
        },
        nothing,
        Rejection::BadSnapshot,
    );
}

#[test]
fn a_snapshot_whose_membership_cannot_be_restored() {
    dies_bare_refused_gated(
        "snapshot with a voter that is also a learner",
        bare_follower(),
        follower(),
        |term| {
            let mut m = msg(MessageType::MsgSnapshot, LEADER, term);
            let cs = ConfState {
                voters: vec![1, 2],
                learners: vec![2],
                ..Default::default()
            };
            m.set_snapshot(snapshot(20, TERM, cs, b"state"));
            m
        },
        nothing,
        Rejection::BadConfState,
    );
}

#[test]
fn a_transfer_request_to_a_follower() {
    dies_bare_refused_gated(
        "MsgTransferLeader to a follower",
        bare_follower(),
        follower(),
        |term| msg(MessageType::MsgTransferLeader, 3, term),
        nothing,
        Rejection::UnexpectedType,
    );
}

#[test]
fn a_term_at_the_top_of_the_range() {
    dies_bare_refused_gated(
        "term u64::MAX, then an election",
        bare_follower(),
        follower(),
        |_| msg(MessageType::MsgHeartbeat, LEADER, u64::MAX),
        |raw| {
            let _ = raw.campaign();
        },
        Rejection::OutOfRange,
    );
}

#[test]
fn a_winning_vote_while_the_log_is_not_durable() {
    // Entries 11 and 12 arrive, then the leader's TimeoutNow, in one batch: the node
    // campaigns before it writes them. A vote forged at once would make it lead with
    // entries it has not persisted (an honest vote comes only after its request, which
    // leaves after the write).
    let more = || {
        let mut m = msg(MessageType::MsgAppend, LEADER, TERM);
        m.index = 10;
        m.log_term = TERM;
        m.entries = vec![entry(11, TERM), entry(12, TERM)];
        m
    };
    let timeout_now = || msg(MessageType::MsgTimeoutNow, LEADER, TERM);
    let mut bare = bare_follower();
    bare.step(more()).unwrap();
    bare.step(timeout_now()).unwrap();
    let mut replica = follower();
    replica.step(more()).unwrap();
    replica.step(timeout_now()).unwrap();
    dies_bare_refused_gated(
        "a vote before the candidate's entries are durable",
        bare,
        replica,
        |term| {
            let mut vote = msg(MessageType::MsgRequestVoteResponse, 3, term);
            vote.reject = false;
            vote
        },
        nothing,
        Rejection::BadVote,
    );
}

#[test]
fn a_pre_vote_a_new_member_would_refuse_with_term_0() {
    // A member that joined empty has term 0 until its leader's snapshot arrives.
    let fresh_config = raft::Config {
        applied: 0,
        ..raft_config()
    };
    let fresh_bare = RawNode::new(&fresh_config, MemLogStore::new(), &logger()).unwrap();
    let (fresh, _) = Replica::open(replica_config(), MemLogStore::new()).unwrap();
    let mut bare = fresh_bare;
    assert_eq!(bare.raft.term, 0);
    let forge = |_| {
        let mut m = msg(MessageType::MsgRequestPreVote, 2, 1);
        m.priority = -1;
        m
    };
    let died = catch_unwind(AssertUnwindSafe(|| {
        let _ = bare.step(forge(0));
    }));
    assert!(
        died.is_err(),
        "raft-rs survived a refused pre-vote at term 0"
    );
    let mut fresh = fresh;
    match fresh.step(forge(0)) {
        Err(Error::Refused { reason, .. }) => assert_eq!(reason, Rejection::BadVote),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_acknowledgement_of_entries_the_leader_lacks() {
    dies_bare_refused_gated(
        "MsgAppendResponse at u64::MAX",
        bare_leader(),
        leader(),
        |term| {
            let mut m = msg(MessageType::MsgAppendResponse, 2, term);
            m.index = u64::MAX;
            m
        },
        nothing,
        Rejection::OutOfRange,
    );
    // An acknowledgement past the leader's log but below the top of the range does not
    // panic raft-rs (its term there reads 0, so nothing commits), but it sets the
    // follower's progress past the log; the gate refuses it too (see the unit tests).
}

#[test]
fn a_snapshot_the_state_machine_cannot_restore_is_never_kept() {
    let mut replica = follower();
    let mut m = msg(MessageType::MsgSnapshot, LEADER, TERM);
    m.set_snapshot(snapshot(20, TERM, voters([1, 2, 3]), b"garbage"));
    match replica.step(m) {
        Err(Error::Refused { reason, .. }) => assert_eq!(reason, Rejection::BadSnapshotData),
        other => panic!("not refused: {other:?}"),
    }
    handle_ready(&mut replica);
    let kept = replica.store().latest_snapshot().unwrap();
    assert_eq!(
        kept.get_metadata().index,
        1,
        "the refused snapshot was stored"
    );
    // A snapshot the state machine reads is installed as before.
    let mut good = msg(MessageType::MsgSnapshot, LEADER, TERM);
    good.set_snapshot(snapshot(20, TERM, voters([1, 2, 3]), b"state"));
    replica.step(good).unwrap();
    handle_ready(&mut replica);
    assert_eq!(
        replica
            .store()
            .latest_snapshot()
            .unwrap()
            .get_metadata()
            .index,
        20
    );
}

#[test]
fn a_leader_removed_by_a_committed_change_steps_down_instead_of_panicking() {
    // raft-rs 0.7 keeps a removed leader leading with no progress for itself, and
    // panics at its next write or commit (`prs.get_mut(self_id).unwrap()`). A committed
    // change can come from any leader, so the replica must survive it.
    let mut replica = leader();
    let change = craft_core::raft::eraftpb::ConfChangeV2 {
        changes: vec![craft_core::raft::eraftpb::ConfChangeSingle {
            change_type: craft_core::raft::eraftpb::ConfChangeType::RemoveNode.into(),
            node_id: ME,
        }],
        ..Default::default()
    };
    let at = replica.propose_conf_change(change).unwrap();
    handle_ready(&mut replica);
    let mut ack = msg(MessageType::MsgAppendResponse, 2, replica.role().term);
    ack.index = at.index;
    replica.step(ack).unwrap();
    handle_ready(&mut replica);
    assert!(!replica.is_leader(), "still leading after its own removal");
    assert!(!replica.conf_state().voters.contains(&ME));
    // It goes on: more acknowledgements, ticks and Readies, no panic.
    let mut again = msg(MessageType::MsgAppendResponse, 3, replica.role().term);
    again.index = at.index;
    let _ = replica.step(again);
    for _ in 0..30 {
        replica.tick();
        handle_ready(&mut replica);
    }
}

/// Delivers messages between a bare raft-rs leader (as the existing service runs it) and
/// our replica until `done`, at most `rounds` rounds. Returns whether `done` held.
fn converse(
    leader: &mut RawNode<MemLogStore>,
    ours: &mut Replica<MemLogStore>,
    rounds: usize,
    done: impl Fn(&RawNode<MemLogStore>, &Replica<MemLogStore>) -> bool,
) -> bool {
    for round in 0..rounds {
        if done(leader, ours) {
            return true;
        }
        leader.tick();
        if round % 5 == 0 {
            let _ = leader.propose(Vec::new(), vec![round as u8]);
        }
        let mut to_ours = Vec::new();
        // The leader's Ready, persisted; what is for node 1 (ours) is delivered, and
        // acks from node 3 keep it committing.
        let mut msgs = persist(leader);
        while let Some(m) = msgs.pop() {
            match m.to {
                ME => to_ours.push(m),
                3 if m.get_msg_type() == MessageType::MsgAppend => {
                    let mut ack = msg(MessageType::MsgAppendResponse, 3, m.term);
                    ack.to = LEADER;
                    ack.index = m.index + m.entries.len() as u64;
                    let _ = leader.step(ack);
                    msgs.extend(persist(leader));
                }
                _ => {}
            }
        }
        for m in to_ours {
            let _ = ours.step(m);
        }
        ours.tick();
        while ours.has_ready() {
            let mut back = Vec::new();
            let out = ours.handle_ready(&mut |m| back.extend(m)).unwrap();
            back.extend(out.messages);
            if let Some(last) = out.committed.last() {
                ours.advance_apply(last.index);
            }
            for m in back {
                if m.to == LEADER {
                    let _ = leader.step(m);
                }
            }
        }
    }
    done(leader, ours)
}

#[test]
fn a_node_of_ours_replaced_empty_catches_up_under_a_leader_of_the_existing_service() {
    // The existing service leads with raft-rs as is (no gate). Node 1 acknowledged
    // entries, then was replaced by ours with an empty raft directory (the migration's
    // step 2): the leader still counts what node 1 had and heartbeats it with a commit
    // past its log. Ours must not panic, and must get the leader to probe it and send a
    // snapshot, so it catches up while that leader stays.
    let mut cfg = raft_config();
    cfg.id = LEADER;
    let mut leader = RawNode::new(&cfg, store(), &logger()).unwrap();
    leader.campaign().unwrap();
    let mut vote = msg(MessageType::MsgRequestVoteResponse, 3, leader.raft.term);
    vote.to = LEADER;
    vote.reject = false;
    leader.step(vote).unwrap();
    assert_eq!(leader.raft.state, raft::StateRole::Leader);
    for i in 0..10u8 {
        leader.propose(Vec::new(), vec![i]).unwrap();
    }
    // Node 1 (before its replacement) and node 3 acknowledge everything.
    let last = leader.raft.raft_log.last_index();
    for from in [ME, 3] {
        let mut ack = msg(MessageType::MsgAppendResponse, from, leader.raft.term);
        ack.to = LEADER;
        ack.index = last;
        leader.step(ack).unwrap();
    }
    // The leader had probed node 1 (it went quiet while being replaced) and waits for
    // an answer before it sends more: only heartbeats go out to it.
    {
        let pr = leader.raft.mut_prs().get_mut(ME).unwrap();
        pr.become_probe();
        pr.pause();
    }
    let mut fresh = follower_empty();
    assert!(
        converse(&mut leader, &mut fresh, 200, |l, o| {
            o.commit_index() >= l.raft.raft_log.committed && l.raft.raft_log.committed > last
        }),
        "ours never caught up: leader commit {}, ours last {} commit {}",
        leader.raft.raft_log.committed,
        fresh.last_index(),
        fresh.commit_index()
    );
}

/// Our replica as node 1 with a fresh raft directory: only the initial snapshot.
fn follower_empty() -> Replica<MemLogStore> {
    // As the consensus service runs it: pre-vote on, so a node that hears no leader
    // does not raise its term.
    let (replica, _) = Replica::open(ReplicaConfig::new(ME), store()).unwrap();
    replica
}
