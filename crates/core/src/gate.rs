//! The gate in front of raft: checks a peer's message against what raft-rs asserts.
//!
//! raft-rs trusts its peers. A message that is well-formed protobuf but breaks one of its
//! invariants reaches an `assert!`, an index out of bounds or a `fatal!` and takes the
//! whole process down: a `MsgReadIndex` with no entries, a heartbeat committing past the
//! log, an append that is not contiguous, a snapshot whose membership cannot be
//! restored. [`check`] refuses such messages before [`raft::RawNode::step`] sees them, so
//! a faulty or hostile peer costs a dropped message, never a node.
//!
//! What passes still relies on raft's own rules (terms, log matching) for safety; the gate
//! only removes the inputs raft-rs cannot survive, plus the kinds a peer of ours never
//! sends (a forwarded proposal or leadership transfer), which would otherwise let any peer
//! force elections or inject entries.

use raft::eraftpb::{
    ConfChange, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, EntryType, Message,
    MessageType,
};
use raft_prost::Message as _;

/// Why a peer's message was refused. Each reason is a stable, short name for logs and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Addressed to another replica.
    Misrouted,
    /// A message, entry or membership-change type this version of raft does not know.
    /// prost decodes any number into an enum field, and raft-rs's accessors panic on
    /// one they do not know.
    UnknownType,
    /// A type only the local node may generate (`MsgHup`, `MsgBeat`, ...).
    LocalType,
    /// A type our peers never send: a forwarded proposal or leadership transfer.
    UnexpectedType,
    /// Claims to come from this replica, or from raft id 0.
    BadSender,
    /// Term 0 on a message that must carry one (raft would treat it as local).
    NoTerm,
    /// A read request or answer without exactly one entry (its context).
    BadReadContext,
    /// A read request carrying a term (raft-rs sends them with term 0 and asserts so
    /// when forwarding one).
    ReadWithTerm,
    /// A term or index at or above 2^62: no real log gets there, and raft-rs adds to
    /// them without checking for overflow.
    OutOfRange,
    /// Heartbeat commit past the end of the local log.
    CommitPastLog,
    /// Append entries not numbered `index + 1, index + 2, ...`.
    NotContiguous,
    /// Append entries with terms that decrease, start below `log_term`, or exceed the
    /// message's term.
    BadEntryTerm,
    /// A membership-change entry that does not decode.
    BadConfChange,
    /// A snapshot without index or term, or newer than its message's term.
    BadSnapshot,
    /// A snapshot whose membership raft could not restore.
    BadConfState,
    /// `MsgTimeoutNow` from someone other than the leader followed, or for a newer term.
    ForgedTimeoutNow,
    /// An append response about entries this leader does not have, or with a rejection
    /// hint past the rejected index.
    AckPastLog,
}

impl Rejection {
    /// A short, stable name (for metric labels and log fields).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Misrouted => "misrouted",
            Rejection::UnknownType => "unknown_type",
            Rejection::LocalType => "local_type",
            Rejection::UnexpectedType => "unexpected_type",
            Rejection::BadSender => "bad_sender",
            Rejection::NoTerm => "no_term",
            Rejection::BadReadContext => "bad_read_context",
            Rejection::ReadWithTerm => "read_with_term",
            Rejection::OutOfRange => "out_of_range",
            Rejection::CommitPastLog => "commit_past_log",
            Rejection::NotContiguous => "not_contiguous",
            Rejection::BadEntryTerm => "bad_entry_term",
            Rejection::BadConfChange => "bad_conf_change",
            Rejection::BadSnapshot => "bad_snapshot",
            Rejection::BadConfState => "bad_conf_state",
            Rejection::ForgedTimeoutNow => "forged_timeout_now",
            Rejection::AckPastLog => "ack_past_log",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Terms and indexes from peers must stay below this: raft-rs computes `term + 1` and
/// `index + 1` unchecked, and no log grows to 2^62 entries or elections.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

fn in_range(msg: &Message) -> bool {
    let snap = msg.get_snapshot().get_metadata();
    [
        msg.term,
        msg.log_term,
        msg.index,
        msg.commit,
        msg.reject_hint,
        msg.request_snapshot,
        snap.index,
        snap.term,
    ]
    .into_iter()
    .chain(msg.entries.iter().flat_map(|e| [e.index, e.term]))
    .all(|v| v < MAX_TERM_OR_INDEX)
}

/// What the gate needs to know about the receiving replica.
///
/// Beyond the type and sender checks, messages from a term older than `term` pass:
/// raft answers or ignores them without looking at their contents.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// The receiver's raft id.
    pub id: u64,
    /// Its current term.
    pub term: u64,
    /// The leader it follows (0 when none).
    pub leader_id: u64,
    /// Last index of its log (stable and unstable).
    pub last_index: u64,
}

/// Checks a message from a peer before it is stepped into raft.
pub fn check(msg: &Message, view: &View) -> Result<(), Rejection> {
    use MessageType::*;
    if msg.to != view.id {
        return Err(Rejection::Misrouted);
    }
    let Some(kind) = MessageType::from_i32(msg.msg_type) else {
        return Err(Rejection::UnknownType);
    };
    if msg
        .entries
        .iter()
        .any(|e| EntryType::from_i32(e.entry_type).is_none())
    {
        return Err(Rejection::UnknownType);
    }
    if raft::raw_node::is_local_msg(kind) {
        return Err(Rejection::LocalType);
    }
    if msg.from == 0 || msg.from == view.id {
        return Err(Rejection::BadSender);
    }
    if !in_range(msg) {
        return Err(Rejection::OutOfRange);
    }
    match kind {
        // A follower's read request travels with term 0, as raft-rs sends it.
        MsgReadIndex => {
            if msg.entries.len() != 1 {
                return Err(Rejection::BadReadContext);
            }
            // A follower forwards it to its leader, and raft-rs refuses to send one
            // that carries a term.
            if msg.term != 0 {
                return Err(Rejection::ReadWithTerm);
            }
            return Ok(());
        }
        MsgPropose | MsgTransferLeader => return Err(Rejection::UnexpectedType),
        _ => {}
    }
    if msg.term == 0 {
        return Err(Rejection::NoTerm);
    }
    if msg.term < view.term {
        // raft answers or ignores a message from an older term without reading it.
        return Ok(());
    }
    match kind {
        MsgReadIndexResp if msg.entries.len() != 1 => Err(Rejection::BadReadContext),
        MsgHeartbeat if msg.commit > view.last_index => Err(Rejection::CommitPastLog),
        MsgAppend => check_append(msg),
        // A follower only acknowledges, or rejects at, entries it was sent, and its
        // rejection hint is at most the index it rejected.
        MsgAppendResponse
            if msg.index > view.last_index || (msg.reject && msg.reject_hint > msg.index) =>
        {
            Err(Rejection::AckPastLog)
        }
        MsgSnapshot => check_snapshot(msg),
        // Only the leader a replica follows may tell it to campaign at once; one that
        // has lost its leader is electing anyway.
        MsgTimeoutNow
            if msg.term != view.term || (view.leader_id != 0 && msg.from != view.leader_id) =>
        {
            Err(Rejection::ForgedTimeoutNow)
        }
        _ => Ok(()),
    }
}

fn check_append(msg: &Message) -> Result<(), Rejection> {
    let mut prev_term = msg.log_term;
    for (i, entry) in msg.entries.iter().enumerate() {
        let want = (i as u64)
            .checked_add(1)
            .and_then(|n| msg.index.checked_add(n));
        if want != Some(entry.index) {
            return Err(Rejection::NotContiguous);
        }
        if entry.term < prev_term || entry.term > msg.term {
            return Err(Rejection::BadEntryTerm);
        }
        prev_term = entry.term;
        let decodes = match entry.get_entry_type() {
            EntryType::EntryNormal => true,
            EntryType::EntryConfChange => {
                ConfChange::decode(&entry.data[..]).is_ok_and(|cc| conf_change_types_known(&cc))
            }
            EntryType::EntryConfChangeV2 => ConfChangeV2::decode(&entry.data[..])
                .is_ok_and(|cc| conf_change_v2_types_known(&cc)),
        };
        if !decodes {
            return Err(Rejection::BadConfChange);
        }
    }
    Ok(())
}

/// Whether every enum in `cc` is one raft knows (prost keeps unknown numbers).
pub fn conf_change_types_known(cc: &ConfChange) -> bool {
    ConfChangeType::from_i32(cc.change_type).is_some()
}

/// Whether every enum in `cc` is one raft knows (prost keeps unknown numbers).
pub fn conf_change_v2_types_known(cc: &ConfChangeV2) -> bool {
    ConfChangeTransition::from_i32(cc.transition).is_some()
        && cc
            .changes
            .iter()
            .all(|c| ConfChangeType::from_i32(c.change_type).is_some())
}

fn check_snapshot(msg: &Message) -> Result<(), Rejection> {
    let meta = msg.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > msg.term {
        return Err(Rejection::BadSnapshot);
    }
    if !conf_state_is_valid(meta.get_conf_state()) {
        return Err(Rejection::BadConfState);
    }
    Ok(())
}

/// Whether raft can restore `cs`: at least one voter, no raft id 0, no learner that is
/// also a voter (in either half of a joint configuration), outgoing learners only while
/// joint and each of them an outgoing voter, and `auto_leave` only while joint.
pub fn conf_state_is_valid(cs: &ConfState) -> bool {
    let joint = !cs.voters_outgoing.is_empty();
    let all = cs
        .voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next);
    !cs.voters.is_empty()
        && all.clone().all(|id| *id != 0)
        && cs
            .learners
            .iter()
            .all(|l| !cs.voters.contains(l) && !cs.voters_outgoing.contains(l))
        && cs
            .learners_next
            .iter()
            .all(|l| cs.voters_outgoing.contains(l) && !cs.voters.contains(l))
        && (joint || (cs.learners_next.is_empty() && !cs.auto_leave))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, Snapshot};

    fn view() -> View {
        View {
            id: 1,
            term: 5,
            leader_id: 2,
            last_index: 10,
        }
    }

    fn msg(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = 1;
        m.from = 2;
        m.term = 5;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn routine_messages_pass() {
        let mut append = msg(MessageType::MsgAppend);
        append.index = 10;
        append.log_term = 4;
        append.entries = vec![entry(11, 4), entry(12, 5)];
        assert_eq!(check(&append, &view()), Ok(()));
        let mut hb = msg(MessageType::MsgHeartbeat);
        hb.commit = 10;
        assert_eq!(check(&hb, &view()), Ok(()));
        let mut read = msg(MessageType::MsgReadIndex);
        read.term = 0;
        read.entries = vec![Entry::default()];
        assert_eq!(check(&read, &view()), Ok(()));
        assert_eq!(check(&msg(MessageType::MsgTimeoutNow), &view()), Ok(()));
        assert_eq!(check(&msg(MessageType::MsgRequestVote), &view()), Ok(()));
    }

    #[test]
    fn reads_with_the_drivers_contexts_pass() {
        // The driver's contexts (`crate::ReadContexts`) are 24 bytes, in the one entry.
        let (_, ctx) = crate::ReadContexts::new(2).issue();
        let mut read = msg(MessageType::MsgReadIndex);
        read.term = 0;
        read.entries = vec![Entry {
            data: ctx.clone(),
            ..Default::default()
        }];
        assert_eq!(check(&read, &view()), Ok(()));
        let mut answer = msg(MessageType::MsgReadIndexResp);
        answer.index = 10;
        answer.entries = vec![Entry {
            data: ctx,
            ..Default::default()
        }];
        assert_eq!(check(&answer, &view()), Ok(()));
    }

    #[test]
    fn what_raft_rs_cannot_survive_is_refused() {
        let v = view();
        assert_eq!(
            check(&msg(MessageType::MsgReadIndex), &v),
            Err(Rejection::BadReadContext)
        );
        let mut read = msg(MessageType::MsgReadIndex);
        read.entries = vec![Entry::default()];
        assert_eq!(check(&read, &v), Err(Rejection::ReadWithTerm));
        assert_eq!(
            check(&msg(MessageType::MsgPropose), &v),
            Err(Rejection::UnexpectedType)
        );
        let mut hb = msg(MessageType::MsgHeartbeat);
        hb.commit = 11;
        assert_eq!(check(&hb, &v), Err(Rejection::CommitPastLog));
        let mut gap = msg(MessageType::MsgAppend);
        gap.index = 10;
        gap.entries = vec![entry(12, 5)];
        assert_eq!(check(&gap, &v), Err(Rejection::NotContiguous));
        let mut overflow = msg(MessageType::MsgAppend);
        overflow.index = u64::MAX;
        overflow.entries = vec![entry(0, 5)];
        assert_eq!(check(&overflow, &v), Err(Rejection::OutOfRange));
        let mut future = msg(MessageType::MsgAppend);
        future.index = 10;
        future.entries = vec![entry(11, 6)];
        assert_eq!(check(&future, &v), Err(Rejection::BadEntryTerm));
        let mut cc = msg(MessageType::MsgAppend);
        cc.index = 10;
        let mut bad = entry(11, 5);
        bad.set_entry_type(EntryType::EntryConfChangeV2);
        bad.data = vec![0xff, 0xff, 0xff];
        cc.entries = vec![bad];
        assert_eq!(check(&cc, &v), Err(Rejection::BadConfChange));
        let mut local = msg(MessageType::MsgHup);
        local.term = 0;
        assert_eq!(check(&local, &v), Err(Rejection::LocalType));
        let mut no_term = msg(MessageType::MsgAppend);
        no_term.term = 0;
        assert_eq!(check(&no_term, &v), Err(Rejection::NoTerm));
        let mut me = msg(MessageType::MsgHeartbeat);
        me.from = 1;
        assert_eq!(check(&me, &v), Err(Rejection::BadSender));
        let mut other = msg(MessageType::MsgTimeoutNow);
        other.from = 3;
        assert_eq!(check(&other, &v), Err(Rejection::ForgedTimeoutNow));
        let mut newer = msg(MessageType::MsgTimeoutNow);
        newer.term = 6;
        assert_eq!(check(&newer, &v), Err(Rejection::ForgedTimeoutNow));
        // From an older term raft reads nothing of it, so it passes.
        let mut stale = msg(MessageType::MsgHeartbeat);
        stale.term = 4;
        stale.commit = 99;
        assert_eq!(check(&stale, &v), Ok(()));
        let mut ack = msg(MessageType::MsgAppendResponse);
        ack.index = 11;
        assert_eq!(check(&ack, &v), Err(Rejection::AckPastLog));
        let mut huge = msg(MessageType::MsgHeartbeat);
        huge.term = u64::MAX;
        assert_eq!(check(&huge, &v), Err(Rejection::OutOfRange));
        let mut hint = msg(MessageType::MsgAppendResponse);
        hint.reject = true;
        hint.index = 9;
        hint.reject_hint = 10;
        assert_eq!(check(&hint, &v), Err(Rejection::AckPastLog));
    }

    #[test]
    fn numbers_no_raft_enum_has_are_refused() {
        let v = view();
        let mut unknown = msg(MessageType::MsgHeartbeat);
        unknown.msg_type = 99;
        assert_eq!(check(&unknown, &v), Err(Rejection::UnknownType));
        unknown.msg_type = -1;
        assert_eq!(check(&unknown, &v), Err(Rejection::UnknownType));

        let mut append = msg(MessageType::MsgAppend);
        append.index = 10;
        append.log_term = 5;
        append.entries = vec![entry(11, 5)];
        assert_eq!(check(&append, &v), Ok(()));
        append.entries[0].entry_type = 3;
        assert_eq!(check(&append, &v), Err(Rejection::UnknownType));

        let mut cc = ConfChangeV2 {
            changes: vec![raft::eraftpb::ConfChangeSingle {
                change_type: 5,
                node_id: 3,
            }],
            ..Default::default()
        };
        append.entries[0].set_entry_type(EntryType::EntryConfChangeV2);
        append.entries[0].data = cc.encode_to_vec();
        assert_eq!(check(&append, &v), Err(Rejection::BadConfChange));
        cc.changes[0].change_type = ConfChangeType::AddNode.into();
        append.entries[0].data = cc.encode_to_vec();
        assert_eq!(check(&append, &v), Ok(()));
        cc.transition = 9;
        append.entries[0].data = cc.encode_to_vec();
        assert_eq!(check(&append, &v), Err(Rejection::BadConfChange));
    }

    #[test]
    fn snapshots_need_a_restorable_membership() {
        let v = view();
        let snap = |cs: ConfState| {
            let mut m = msg(MessageType::MsgSnapshot);
            let mut s = Snapshot::default();
            s.mut_metadata().index = 20;
            s.mut_metadata().term = 5;
            s.mut_metadata().set_conf_state(cs);
            m.set_snapshot(s);
            m
        };
        let ok = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        assert_eq!(check(&snap(ok.clone()), &v), Ok(()));
        let cases = [
            ConfState::default(),
            ConfState {
                voters: vec![1, 2],
                learners: vec![2],
                ..Default::default()
            },
            ConfState {
                voters: vec![1, 0],
                ..Default::default()
            },
            ConfState {
                voters: vec![1],
                learners_next: vec![2],
                ..Default::default()
            },
            ConfState {
                voters: vec![1],
                auto_leave: true,
                ..Default::default()
            },
        ];
        for cs in cases {
            assert_eq!(
                check(&snap(cs.clone()), &v),
                Err(Rejection::BadConfState),
                "{cs:?}"
            );
        }
        let mut stale = snap(ok);
        stale.mut_snapshot().mut_metadata().term = 6;
        assert_eq!(check(&stale, &v), Err(Rejection::BadSnapshot));
    }
}
