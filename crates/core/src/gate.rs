//! The gate in front of raft: checks a peer's message against what raft-rs asserts and
//! against what the receiving replica holds.
//!
//! raft-rs trusts its peers. A message that is well-formed protobuf but breaks one of its
//! invariants reaches an `assert!`, an index out of bounds, an overflow or a `fatal!`
//! and takes the whole process down. Some of those messages are wrong on their own (a
//! read request without its context); others only disagree with the receiver's log (a
//! commit index past its end). [`check`] refuses both kinds before
//! [`raft::RawNode::step`] sees them, so a faulty or hostile peer costs a dropped message,
//! never a node.
//!
//! # What raft-rs 0.7 cannot survive, and the check that keeps it away
//!
//! Sites reachable from `step` with a peer's message (R is the receiver: its term T,
//! last index L, committed C, durable index P). `tests/gate_raft.rs` steps each forgery
//! marked † into a bare `RawNode` (which panics) and into a [`crate::Replica`] (which
//! refuses it and goes on).
//!
//! | raft-rs site | what reaches it | refused as |
//! |---|---|---|
//! | `raft_log.rs` `commit_to` "to_commit out of range" † | a heartbeat with commit > L | [`Rejection::CommitPastLog`] |
//! | the same, through `maybe_append` † | an append whose previous entry is past L with term 0 (raft-rs reads term 0 there, so it "matches"), or entries of term 0 past L | [`Rejection::BadPrevTerm`], [`Rejection::BadEntryTerm`] |
//! | `maybe_append` slice, `raft_log.append` "after out of range", "conflict with committed entry", `log_unstable` out of bounds † | entries not numbered `index + 1, index + 2, ...` | [`Rejection::NotContiguous`] |
//! | `restore` fast-forward `commit_to` † | a snapshot of term 0 past L | [`Rejection::BadSnapshot`] |
//! | `restore` "unable to restore config" / "invalid restore" † | a snapshot whose membership raft-rs cannot rebuild | [`Rejection::BadConfState`] |
//! | `Progress::next_idx - 1`, `log_unstable` `index + 1` | a snapshot at index 0 or near `u64::MAX` | [`Rejection::BadSnapshot`], [`Rejection::OutOfRange`] |
//! | `send` "term should not be set" † | a forwarded `MsgTransferLeader` / `MsgPropose` / `MsgReadIndex` carrying a term | [`Rejection::UnexpectedType`], [`Rejection::ReadWithTerm`] |
//! | `send` "term should be set" † | a vote request answered with term 0: a message of term 0, or a pre-vote refused by a replica still at term 0 (a negative priority) | [`Rejection::NoTerm`], [`Rejection::BadVote`] |
//! | `term + 1` overflow at the next election † | a term near `u64::MAX` | [`Rejection::OutOfRange`], [`Rejection::TermJump`] |
//! | `become_leader` "last index == persisted" † | a winning vote while a candidate's entries are not yet durable (after a `MsgTimeoutNow`, in one batch) | [`Rejection::BadVote`] |
//! | `m.entries[0]` (read index), "stepped empty MsgProp" | a read request without one entry; a proposal | [`Rejection::BadReadContext`], [`Rejection::UnexpectedType`] |
//! | `Progress::maybe_update` `n + 1` overflow † | an acknowledgement at `u64::MAX` | [`Rejection::OutOfRange`], [`Rejection::AckPastLog`] |
//! | `maybe_send_snapshot` "unexpected error" / "need non-empty snapshot" | a snapshot request (`request_snapshot`) | [`Rejection::SnapshotRequest`] |
//! | a `debug_assert` on the term, and a term set back to 0 in release builds | an append, heartbeat or snapshot of term 0 | [`Rejection::NoTerm`] |
//!
//! Beyond crashes, the gate holds a peer to what raft expects of it: one leader per term
//! ([`Rejection::NotLeader`]: appends, heartbeats, snapshots, read answers and
//! `MsgTimeoutNow` come from the leader this replica follows), no newer leader while the
//! current one is alive ([`Rejection::LeaderInLease`]), vote requests whose last log
//! term is not above their term, no forced (leadership-transfer) pre-votes, and no
//! commit index taken from a vote message ([`crate::Replica::step`] clears it: a voter
//! could otherwise commit this log's uncommitted entries). A snapshot's data is checked
//! by the state machine before raft may persist it ([`Rejection::BadSnapshotData`]). One
//! more raft-rs panic needs no message to be refused: a leader that applies its own
//! removal keeps leading and panics at its next write; [`crate::Replica`] makes it step
//! down instead.
//!
//! # What passes
//!
//! Raft tolerates crashes, not lies. A replica whose leader has gone quiet follows a
//! member that claims a newer term, as raft requires of a replica that missed an
//! election ([`Rejection::LeaderInLease`] holds off such claims while its leader is
//! alive); a voter that lies about its log can win an election (a forced campaign
//! passes the lease, as leadership transfer needs); and a leader, elected or forged, can
//! replicate and commit whatever it likes. The gate keeps every such message from
//! stopping the replica (no panic, no state it cannot open again), not from being
//! believed.

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
    /// An append whose previous entry has term 0 at an index above 0, or a term above
    /// the message's: raft-rs reads term 0 for any index past its log, so such an
    /// append "matches" a log it is not part of and commits past the end of it.
    BadPrevTerm,
    /// A leader's message (append, heartbeat, snapshot) in the current term from
    /// someone other than the leader this replica follows in that term: there is one
    /// leader per term.
    NotLeader,
    /// A leader's message from a newer term while this replica still hears from its own
    /// leader (within an election timeout, check-quorum on), or while it leads. raft-rs
    /// ignores vote requests in that lease; without the same rule for appends,
    /// heartbeats and snapshots, one message claiming the next term would make any
    /// member the leader of a replica that has a live one. The cost: a follower that
    /// missed a real election (or leadership transfer) follows the new leader once its
    /// old leader has been quiet for an election timeout.
    LeaderInLease,
    /// A term more than [`MAX_TERM_STEP`] above this replica's.
    TermJump,
    /// A snapshot request (`request_snapshot`): ours never asks for one, and raft-rs
    /// would give the sender a snapshot at any index it names.
    SnapshotRequest,
    /// A vote request whose last log term is above its own term or that carries a
    /// priority, a forced (leadership transfer) pre-vote, or a winning vote for a
    /// candidate whose log is not yet durable.
    BadVote,
    /// A snapshot whose data the state machine cannot restore
    /// ([`crate::StateMachine::check_snapshot`]); it is never persisted.
    BadSnapshotData,
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
            Rejection::BadPrevTerm => "bad_prev_term",
            Rejection::NotLeader => "not_leader",
            Rejection::LeaderInLease => "leader_in_lease",
            Rejection::TermJump => "term_jump",
            Rejection::SnapshotRequest => "snapshot_request",
            Rejection::BadVote => "bad_vote",
            Rejection::BadSnapshotData => "bad_snapshot_data",
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

/// The largest step above its own term a replica takes from one message. An honest
/// peer is ahead by the elections it saw and this replica did not; with pre-vote on, a
/// node cut off does not raise its term at all. Without a bound, one message with a
/// term just under [`MAX_TERM_OR_INDEX`] would move every replica there, and the next
/// election would cross it: the cluster would refuse its own votes forever.
pub const MAX_TERM_STEP: u64 = 1 << 32;

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
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// The receiver's raft id.
    pub id: u64,
    /// Its current term.
    pub term: u64,
    /// The leader it follows (0 when none; its own id when it leads).
    pub leader_id: u64,
    /// Last index of its log (stable and unstable).
    pub last_index: u64,
    /// Its committed index.
    pub committed: u64,
    /// Last index of its log known durable.
    pub persisted: u64,
    /// Whether it is campaigning (a candidate, not a pre-candidate).
    pub candidate: bool,
    /// Whether it heard from its leader within an election timeout, with check-quorum
    /// on (raft-rs's own lease test for vote requests). A leader counts as in its
    /// lease too: with check-quorum it steps down once a quorum goes quiet.
    pub in_lease: bool,
}

/// Checks a message from a peer before it is stepped into raft.
///
/// Every check is a predicate over the message and the receiver's [`View`]; the
/// raft-rs 0.7 sites each one keeps unreachable are listed in the module docs.
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
    if msg.request_snapshot != 0 {
        return Err(Rejection::SnapshotRequest);
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
    if msg.term - view.term > MAX_TERM_STEP {
        return Err(Rejection::TermJump);
    }
    // One leader per term: in its term, only the leader this replica follows sends
    // appends, heartbeats and snapshots.
    let leads = matches!(kind, MsgAppend | MsgHeartbeat | MsgSnapshot);
    if leads && msg.term == view.term && view.leader_id != 0 && msg.from != view.leader_id {
        return Err(Rejection::NotLeader);
    }
    // A leader of a newer term is heard only once the current one has gone quiet.
    if leads && msg.term > view.term && view.in_lease {
        return Err(Rejection::LeaderInLease);
    }
    match kind {
        MsgReadIndexResp if msg.entries.len() != 1 => Err(Rejection::BadReadContext),
        // Read answers come from the leader this replica follows, in its term.
        MsgReadIndexResp if msg.term != view.term || msg.from != view.leader_id => {
            Err(Rejection::NotLeader)
        }
        MsgHeartbeat if msg.commit > view.last_index => Err(Rejection::CommitPastLog),
        MsgAppend => check_append(msg),
        // A follower only acknowledges, or rejects at, entries it was sent, and its
        // rejection hint is at most the index it rejected.
        MsgAppendResponse
            if msg.index > view.last_index
                || (msg.reject && (msg.reject_hint > msg.index || msg.log_term > msg.term)) =>
        {
            Err(Rejection::AckPastLog)
        }
        MsgSnapshot => check_snapshot(msg),
        // Only the leader a replica follows may tell it to campaign at once; one that
        // knows no leader (restarted since it was asked, say) is electing anyway.
        MsgTimeoutNow
            if msg.term != view.term || (view.leader_id != 0 && msg.from != view.leader_id) =>
        {
            Err(Rejection::ForgedTimeoutNow)
        }
        // A vote that would make this replica leader while its log is not all durable
        // reaches raft-rs's assertion in `become_leader`. An honest candidate's log is
        // durable before it asks for votes, so only a forged sequence gets here.
        MsgRequestVoteResponse if view.candidate && view.persisted < view.last_index => {
            Err(Rejection::BadVote)
        }
        MsgRequestVote | MsgRequestPreVote => check_vote(msg, kind),
        _ => Ok(()),
    }
}

/// A candidate's last log term is never above its term. A forced campaign (the
/// leadership-transfer context, which raft-rs lets past its lease) is never a pre-vote:
/// a transferee skips pre-vote. (Its term is not tied to the receiver's: a follower that
/// lagged in terms, still hearing an old leader, is asked all the same.)
fn check_vote(msg: &Message, kind: MessageType) -> Result<(), Rejection> {
    if msg.log_term > msg.term {
        return Err(Rejection::BadVote);
    }
    // Nobody here sets priorities. A negative one makes raft-rs refuse a pre-vote, and a
    // replica still at term 0 (a new member) then answers with term 0, which raft-rs
    // treats as fatal; with priority 0, a replica whose log is empty grants every
    // pre-vote and never answers so.
    if msg.priority != 0 || msg.deprecated_priority != 0 {
        return Err(Rejection::BadVote);
    }
    if msg.context.as_slice() == raft::CAMPAIGN_TRANSFER && kind != MessageType::MsgRequestVote {
        return Err(Rejection::BadVote);
    }
    Ok(())
}

fn check_append(msg: &Message) -> Result<(), Rejection> {
    // raft-rs's `term(i)` is 0 for every index past its log: a previous entry of term 0
    // at an index above 0 "matches" there, and the append then commits past the end.
    // Only the index-0 dummy entry has term 0, and no entry is newer than its leader.
    if (msg.index > 0 && msg.log_term == 0) || msg.log_term > msg.term {
        return Err(Rejection::BadPrevTerm);
    }
    let mut prev_term = msg.log_term;
    for (i, entry) in msg.entries.iter().enumerate() {
        let want = (i as u64)
            .checked_add(1)
            .and_then(|n| msg.index.checked_add(n));
        if want != Some(entry.index) {
            return Err(Rejection::NotContiguous);
        }
        if entry.term == 0 || entry.term < prev_term || entry.term > msg.term {
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
            committed: 8,
            persisted: 10,
            candidate: false,
            in_lease: false,
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
        gap.log_term = 5;
        gap.entries = vec![entry(12, 5)];
        assert_eq!(check(&gap, &v), Err(Rejection::NotContiguous));
        let mut overflow = msg(MessageType::MsgAppend);
        overflow.index = u64::MAX;
        overflow.entries = vec![entry(0, 5)];
        assert_eq!(check(&overflow, &v), Err(Rejection::OutOfRange));
        let mut future = msg(MessageType::MsgAppend);
        future.index = 10;
        future.log_term = 5;
        future.entries = vec![entry(11, 6)];
        assert_eq!(check(&future, &v), Err(Rejection::BadEntryTerm));
        let mut cc = msg(MessageType::MsgAppend);
        cc.index = 10;
        cc.log_term = 5;
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
    fn what_only_the_receivers_state_shows_wrong_is_refused() {
        let v = view();
        // A previous entry of term 0 past the log "matches" in raft-rs and commits past
        // its end; so do entries of term 0.
        let mut phantom = msg(MessageType::MsgAppend);
        phantom.index = 50;
        phantom.commit = 50;
        assert_eq!(check(&phantom, &v), Err(Rejection::BadPrevTerm));
        let mut zero = msg(MessageType::MsgAppend);
        zero.index = 10;
        zero.log_term = 4;
        zero.entries = vec![entry(11, 0)];
        assert_eq!(check(&zero, &v), Err(Rejection::BadEntryTerm));
        let mut ahead = msg(MessageType::MsgAppend);
        ahead.index = 10;
        ahead.log_term = 6;
        assert_eq!(check(&ahead, &v), Err(Rejection::BadPrevTerm));
        // The start of the log: index 0, term 0, is the one honest term-0 previous entry.
        let mut first = msg(MessageType::MsgAppend);
        first.entries = vec![entry(1, 5)];
        assert_eq!(check(&first, &v), Ok(()));

        // One leader per term.
        for kind in [
            MessageType::MsgAppend,
            MessageType::MsgHeartbeat,
            MessageType::MsgSnapshot,
        ] {
            let mut other = msg(kind);
            other.from = 3;
            assert_eq!(check(&other, &v), Err(Rejection::NotLeader), "{kind:?}");
        }
        let mut answer = msg(MessageType::MsgReadIndexResp);
        answer.from = 3;
        answer.entries = vec![Entry::default()];
        assert_eq!(check(&answer, &v), Err(Rejection::NotLeader));

        // A leader of a newer term is followed once the current one has gone quiet.
        let leased = View {
            in_lease: true,
            ..v
        };
        let mut newer = msg(MessageType::MsgHeartbeat);
        newer.from = 3;
        newer.term = 6;
        assert_eq!(check(&newer, &leased), Err(Rejection::LeaderInLease));
        assert_eq!(check(&newer, &v), Ok(()));
        // Answers from a newer term still pass: a leader cut off learns of it from them.
        let mut newer_ack = msg(MessageType::MsgHeartbeatResponse);
        newer_ack.term = 6;
        assert_eq!(check(&newer_ack, &leased), Ok(()));

        let mut jump = msg(MessageType::MsgHeartbeatResponse);
        jump.term = v.term + MAX_TERM_STEP + 1;
        assert_eq!(check(&jump, &v), Err(Rejection::TermJump));
        jump.term = v.term + MAX_TERM_STEP;
        assert_eq!(check(&jump, &v), Ok(()));

        let mut request = msg(MessageType::MsgAppendResponse);
        request.reject = true;
        request.index = 5;
        request.request_snapshot = 5;
        assert_eq!(check(&request, &v), Err(Rejection::SnapshotRequest));
        let mut hint_term = msg(MessageType::MsgAppendResponse);
        hint_term.reject = true;
        hint_term.index = 9;
        hint_term.reject_hint = 9;
        hint_term.log_term = 6;
        assert_eq!(check(&hint_term, &v), Err(Rejection::AckPastLog));

        // TimeoutNow and a winning vote wait until the log is durable.
        let unsynced = View { persisted: 9, ..v };
        let campaigning = View {
            candidate: true,
            ..unsynced
        };
        assert_eq!(
            check(&msg(MessageType::MsgRequestVoteResponse), &campaigning),
            Err(Rejection::BadVote)
        );
        // A follower ignores a late answer to an election it gave up: nothing to refuse.
        assert_eq!(
            check(&msg(MessageType::MsgRequestVoteResponse), &unsynced),
            Ok(())
        );
        assert_eq!(check(&msg(MessageType::MsgRequestVoteResponse), &v), Ok(()));
    }

    #[test]
    fn votes_that_claim_too_much_are_refused() {
        let v = view();
        let vote = |kind, term, log_term| {
            let mut m = msg(kind);
            m.from = 3;
            m.term = term;
            m.log_term = log_term;
            m.index = 10;
            m
        };
        assert_eq!(check(&vote(MessageType::MsgRequestVote, 6, 5), &v), Ok(()));
        assert_eq!(
            check(&vote(MessageType::MsgRequestVote, 6, 7), &v),
            Err(Rejection::BadVote)
        );
        let mut negative = vote(MessageType::MsgRequestPreVote, 6, 5);
        negative.priority = -1;
        assert_eq!(check(&negative, &v), Err(Rejection::BadVote));
        let fresh = View { term: 0, ..v };
        assert_eq!(
            check(&vote(MessageType::MsgRequestPreVote, 6, 5), &fresh),
            Ok(())
        );

        // A forced (transfer) campaign passes the lease in raft-rs; it is never a
        // pre-vote.
        let leased = View {
            in_lease: true,
            ..v
        };
        let forced = |kind, term| {
            let mut m = vote(kind, term, 5);
            m.context = raft::CAMPAIGN_TRANSFER.to_vec();
            m
        };
        assert_eq!(
            check(&forced(MessageType::MsgRequestVote, 6), &leased),
            Ok(())
        );
        assert_eq!(
            check(&forced(MessageType::MsgRequestVote, 9), &leased),
            Ok(())
        );
        assert_eq!(
            check(&forced(MessageType::MsgRequestPreVote, 6), &leased),
            Err(Rejection::BadVote)
        );
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
