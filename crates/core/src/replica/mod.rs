//! The deterministic, sans-IO layer: one raft replica driven by explicit calls.
//!
//! A [`Replica`] owns a [`raft::RawNode`] and its [`LogStore`]. Callers feed it time
//! ([`Replica::tick`]), peer messages ([`Replica::step`]) and requests
//! ([`Replica::propose`], ...), then call [`Replica::handle_ready`], which persists what
//! raft asks for and hands back what to send and what to apply, in the order the `raft`
//! crate documents. Nothing here reads a clock, spawns a task or touches the network,
//! so a test harness can run many replicas step by step and replay a run exactly. The
//! one concession to the async driver: inside a multi-threaded tokio runtime, a store
//! write that may block runs under `block_in_place` (outside one, it runs as is).

use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;

use crate::error::{Error, ProposeError};
use crate::storage::{make_snapshot, LocalSnapshot, LogStore, LogWrite, StagedSnapshot};

mod ready;
mod snapshot;

use snapshot::snapshot_recipients;

/// Tunables of one replica. Times are in ticks.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's raft id; never 0.
    pub id: u64,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Leader steps down when it has not heard from a quorum for an election timeout.
    pub check_quorum: bool,
    /// Pre-vote avoids disrupting a healthy leader after a partition heals.
    pub pre_vote: bool,
    /// Largest append message in bytes.
    pub max_size_per_msg: u64,
    /// Appends in flight per follower.
    pub max_inflight_msgs: usize,
    /// Tell followers of a new commit index at once, with an append of its own,
    /// rather than with the next append or at the next tick. It costs an extra round
    /// of messages per commit (twice the messages per entry when entries come one at a
    /// time), for followers that must act on a commit promptly: their state machines
    /// apply sooner. Off by default.
    pub broadcast_commit: bool,
    /// Take a state-machine snapshot after this many applied entries (at least 1).
    pub snapshot_interval: u64,
    /// Entries kept in the log behind the latest snapshot, so a briefly lagging
    /// follower catches up from the log rather than a snapshot.
    pub log_retain: u64,
}

impl ReplicaConfig {
    /// Defaults that suit a small cluster with a 100 ms tick.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            election_tick: 10,
            heartbeat_tick: 3,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            broadcast_commit: false,
            snapshot_interval: 1000,
            log_retain: 1000,
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            // Unless asked for, no extra round of empty appends per commit: followers
            // learn the commit index from the next append, or from the broadcast at
            // the next tick (see `Replica::tick`). Under load that halves the
            // messages per entry.
            skip_bcast_commit: !self.broadcast_commit,
            ..Default::default()
        }
    }
}

/// What a committed entry carries, once decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum CommittedKind {
    /// A leader's empty entry at the start of its term.
    Empty,
    /// An application command.
    Normal {
        /// The command as proposed.
        data: Vec<u8>,
        /// The context given at proposal.
        context: Vec<u8>,
    },
    /// A membership change, already applied to raft; `conf_state` is the result.
    ConfChange {
        /// The change as proposed (v1 changes are converted).
        change: ConfChangeV2,
        /// Membership after the change.
        conf_state: ConfState,
    },
}

/// A committed entry to apply to the state machine, in index order.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Log index.
    pub index: u64,
    /// Term the entry was proposed in.
    pub term: u64,
    /// Its content.
    pub kind: CommittedKind,
}

/// A replica's role, the leader it knows and its term: what [`Replica::role`] says now,
/// and what [`ReadyOutput::role_change`] reports when any of them changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The role.
    pub role: StateRole,
    /// The leader as this replica knows it (0 when unknown).
    pub leader_id: u64,
    /// The current term.
    pub term: u64,
}

/// What one [`Replica::handle_ready`] call leaves for the caller, to do in field order.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send now; their persistence requirements are already met.
    pub messages: Vec<Message>,
    /// A snapshot from the leader, already persisted: restore the state machine from it
    /// before applying `committed`.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply, in order. Call [`Replica::advance_apply`] once done.
    pub committed: Vec<Committed>,
    /// Answers to [`Replica::read_index`]: a read is linearizable once the state machine
    /// has applied `index`.
    pub read_states: Vec<ReadState>,
    /// Set when the role, leader or term changed.
    pub role_change: Option<Leadership>,
}

/// Takes what one [`Replica::handle_ready_with`] hands over before the Ready's write is
/// durable, so the caller can act on it while the write (and its fsync) runs.
pub trait ReadySink {
    /// Messages a leader may send before its own write is durable (raft thesis
    /// 10.2.1): replication overlaps the leader's fsync.
    fn send(&mut self, messages: Vec<Message>);
    /// Committed entries to apply, in order, ahead of [`ReadyOutput::committed`]. Raft
    /// hands out only entries already durable here (and on a quorum), so applying
    /// them need not wait for this Ready's new entries to be written: under load the
    /// leader answers proposers one fsync sooner. Not used for a Ready that installs a
    /// leader's snapshot (the snapshot is restored first).
    fn apply(&mut self, committed: Vec<Committed>);
}

/// Where a proposal landed in the log. It is committed as proposed if the entry applied
/// at `index` has this `term`; any other entry there means it was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// Log index of the new entry.
    pub index: u64,
    /// Term it was proposed in.
    pub term: u64,
}

/// One raft replica: a [`RawNode`] plus the bookkeeping the Ready loop needs.
pub struct Replica<S: LogStore> {
    raw: RawNode<S>,
    cfg: ReplicaConfig,
    /// Membership as of the last entry handed out in `committed`.
    conf_state: ConfState,
    /// Highest index handed out for applying.
    handed_out: u64,
    /// Highest index the caller reported applied.
    applied: u64,
    /// Index of the latest snapshot saved to the store.
    snapshot_index: u64,
    /// Membership recorded in the latest snapshot saved to (or received into) the store.
    snapshot_conf_state: ConfState,
    /// Highest index a snapshot was asked for with [`Replica::take_snapshot_request`].
    snapshot_requested: u64,
    /// A local snapshot waiting to be written with the next Ready (or [`Replica::flush`]).
    staged_snapshot: Option<LocalSnapshot>,
    /// A commit index learnt after the last write, waiting likewise. The commit index
    /// need not be durable (raft recomputes it); keeping it lets a restart replay
    /// committed entries at once.
    staged_commit: Option<HardState>,
    /// The commit index the leader last made sure every follower was sent.
    commit_broadcast: u64,
    /// A tick passed with staged writes: the next `handle_ready` writes them even if
    /// raft has nothing to persist, so nothing stays staged longer than a tick.
    flush_due: bool,
    /// Peer messages refused by the gate.
    refused: u64,
    /// Whether the caller reports how each snapshot sent went
    /// ([`Replica::report_snapshot`]); otherwise each is reported finished when sent.
    snapshots_reported: bool,
    /// Validates a leader's snapshot data before raft may persist it.
    snapshot_check: Option<SnapshotCheck>,
    /// Heartbeats whose commit index past this log was ignored.
    commits_withheld: u64,
    /// Messages a removed leader had queued when it stepped down, sent with the Ready.
    held_messages: Vec<Message>,
    last_role: Leadership,
}

/// Checks a snapshot's data: `Err` with the reason when the state machine could not
/// restore from it.
pub type SnapshotCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send>;

impl<S: LogStore> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.cfg.id)
            .field("role", &self.last_role)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<S: LogStore> Replica<S> {
    /// Opens a replica on `store`. A store that was never bootstrapped must be given an
    /// initial snapshot with [`LogStore::bootstrap`] first, or receive one from a leader
    /// (a new member joining an existing cluster starts empty).
    ///
    /// Returns the replica and the snapshot the state machine must be restored from
    /// (`None` when the store has none). Committed entries after it are replayed by the
    /// first [`Replica::handle_ready`] calls.
    pub fn open(cfg: ReplicaConfig, store: S) -> Result<(Self, Option<Snapshot>), Error> {
        let snapshot = store.latest_snapshot()?;
        let applied = snapshot.get_metadata().index;
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let logger = crate::logging::raft_logger();
        let raft_cfg = cfg.raft_config(applied);
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, store, &logger)?;
        let last_role = Leadership {
            role: raw.raft.state,
            leader_id: raw.raft.leader_id,
            term: raw.raft.term,
        };
        let replica = Self {
            raw,
            cfg,
            snapshot_conf_state: conf_state.clone(),
            conf_state,
            handed_out: applied,
            applied,
            snapshot_index: applied,
            snapshot_requested: applied,
            staged_snapshot: None,
            staged_commit: None,
            commit_broadcast: 0,
            flush_due: false,
            refused: 0,
            snapshots_reported: false,
            snapshot_check: None,
            held_messages: Vec::new(),
            commits_withheld: 0,
            last_role,
        };
        Ok((replica, (applied > 0).then_some(snapshot)))
    }

    /// This replica's raft id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// Current role, leader and term.
    pub fn role(&self) -> Leadership {
        Leadership {
            role: self.raw.raft.state,
            leader_id: self.raw.raft.leader_id,
            term: self.raw.raft.term,
        }
    }

    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Highest committed index known here.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Highest index the caller reported applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Highest index handed out for applying (in a [`ReadySink`] or a
    /// [`ReadyOutput`]); the caller may not have applied it yet.
    pub fn handed_out_index(&self) -> u64 {
        self.handed_out
    }

    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Membership as of the last handed-out committed entry.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Whether `id` is a voter in the current configuration (either half when joint).
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf_state.voters.contains(&id) || self.conf_state.voters_outgoing.contains(&id)
    }

    /// The storage, for reading.
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// The underlying raw node, for inspection by tests and tools.
    pub fn raw(&self) -> &RawNode<S> {
        &self.raw
    }

    /// Sets the election timeout raft uses until it next resets it (on a change of term
    /// or role), in ticks within `[election_tick, 2 * election_tick)`. Raft draws that
    /// timeout from `rand::thread_rng`, which nothing can seed; a simulation calls this
    /// after every operation so that a run replays exactly from its seed.
    pub fn set_election_timeout(&mut self, ticks: usize) {
        let low = self.cfg.election_tick;
        self.raw
            .raft
            .set_randomized_election_timeout(ticks.clamp(low, 2 * low - 1));
    }

    /// Advances logical time by one tick. Returns whether there may be a Ready.
    ///
    /// A leader whose commit index moved since the last tick also sends it to every
    /// follower (an empty append where nothing else is due), so that followers apply
    /// within a tick even when no new entry follows. Writes staged by earlier calls
    /// become due: the next [`Replica::handle_ready`] makes them.
    pub fn tick(&mut self) -> bool {
        let mut ready = self.raw.tick();
        let committed = self.raw.raft.raft_log.committed;
        if self.is_leader() && committed > self.commit_broadcast {
            self.raw.raft.bcast_append();
            self.commit_broadcast = committed;
            ready = true;
        }
        if self.has_staged() {
            self.flush_due = true;
            ready = true;
        }
        ready
    }

    /// Starts an election now. A replica that is not a voter (still joining, a learner,
    /// or removed) ignores this: raft 0.7 does not check, and would make it leader of
    /// an empty quorum and then panic.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if !self.raw.raft.promotable() {
            tracing::warn!(raft_id = self.cfg.id, "not a voter: campaign ignored");
            return Ok(());
        }
        Ok(self.raw.campaign()?)
    }

    /// Feeds a message from a peer. It first passes the checks of [`crate::gate`]: a
    /// message for another replica, of a local-only or unexpected type, or one that
    /// would trip an assertion inside raft-rs is refused ([`Error::Refused`]) and never
    /// reaches raft.
    pub fn step(&mut self, mut msg: Message) -> Result<(), Error> {
        let view = self.gate_view();
        if MessageType::from_i32(msg.msg_type) == Some(MessageType::MsgHeartbeat)
            && msg.commit > view.last_index
            && crate::gate::check(&msg, &view) == Err(crate::gate::Rejection::CommitPastLog)
        {
            // The leader counts entries as held here that this log lacks: this node lost
            // what it acknowledged (replaced with an empty raft directory, as when
            // migrating). Refusing the heartbeat outright would leave a leader without
            // our gate (the existing service's) waiting forever for its answer; so it is
            // taken with no commit index of its own (this replica commits nothing on
            // its word), answered, and the leader goes on to probe this log and send a
            // snapshot.
            msg.commit = msg.commit.min(view.committed);
            self.commits_withheld += 1;
            let n = self.commits_withheld;
            if n.is_power_of_two() {
                tracing::warn!(
                    raft_id = self.cfg.id,
                    from = msg.from,
                    last_index = view.last_index,
                    withheld = n,
                    "heartbeat committing past this log: its commit ignored (entries acknowledged here were lost?)"
                );
            }
        }
        // `from_i32`, not `get_msg_type`: raft's accessor panics on a number it does not
        // know, and the gate has not looked at this message yet.
        if matches!(
            MessageType::from_i32(msg.msg_type),
            Some(
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgRequestVoteResponse
                    | MessageType::MsgRequestPreVoteResponse
            )
        ) {
            // raft-rs commits up to a commit index named in a vote message if the term
            // there matches: a shortcut that would let any voter commit this log's
            // uncommitted entries. The next append says the same, from the leader.
            msg.commit = 0;
            msg.commit_term = 0;
        }
        let mut verdict = crate::gate::check(&msg, &view);
        if verdict.is_ok()
            && msg.get_msg_type() == MessageType::MsgSnapshot
            && msg.term >= view.term
        {
            // The state machine looks at a leader's snapshot before raft may persist it:
            // one it could not restore would stop this node now and at every restart.
            if let Some(check) = &self.snapshot_check {
                if let Err(e) = check(&msg.get_snapshot().data) {
                    tracing::warn!(raft_id = self.cfg.id, from = msg.from, error = %e, "snapshot refused before it was kept");
                    verdict = Err(crate::gate::Rejection::BadSnapshotData);
                }
            }
        }
        if let Err(reason) = verdict {
            self.refused += 1;
            return Err(Error::Refused {
                from: msg.from,
                kind: msg.msg_type,
                reason,
            });
        }
        match self.raw.step(msg) {
            // Messages from peers raft does not know (e.g. removed ones) are routine.
            Ok(()) | Err(raft::Error::StepPeerNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// What [`crate::gate`] checks a peer's message against: this replica's term,
    /// leader, log and lease, as raft-rs holds them now.
    pub fn gate_view(&self) -> crate::gate::View {
        let r = &self.raw.raft;
        crate::gate::View {
            id: self.cfg.id,
            term: r.term,
            leader_id: r.leader_id,
            last_index: r.raft_log.last_index(),
            committed: r.raft_log.committed,
            persisted: r.raft_log.persisted,
            candidate: r.state == StateRole::Candidate,
            in_lease: r.check_quorum
                && r.leader_id != raft::INVALID_ID
                && r.election_elapsed < r.election_timeout(),
        }
    }

    /// Sets the check a leader's snapshot data must pass before raft sees the snapshot
    /// (see [`crate::StateMachine::check_snapshot`]). Without one, any data passes.
    pub fn set_snapshot_check(&mut self, check: SnapshotCheck) {
        self.snapshot_check = Some(check);
    }

    /// How many heartbeats committing past this log [`Replica::step`] took without their
    /// commit index since open: the leader counted entries as held here that this log
    /// lacks, so entries this node acknowledged were lost (an emptied raft directory, or
    /// a disk that lied about a sync).
    pub fn commits_withheld(&self) -> u64 {
        self.commits_withheld
    }

    /// How many peer messages [`Replica::step`] refused since open.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Proposes a command. On success the entry is in the leader's log (not yet
    /// committed) at the returned position.
    pub fn propose(
        &mut self,
        context: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<LogPosition, ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        match self.raw.propose(context, data) {
            Ok(()) => Ok(self.last_position()),
            Err(raft::Error::ProposalDropped) => Err(ProposeError::Dropped),
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Proposes a membership change (joint consensus for several changes at once).
    pub fn propose_conf_change(
        &mut self,
        change: ConfChangeV2,
    ) -> Result<LogPosition, ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        match self.raw.propose_conf_change(Vec::new(), change) {
            Ok(()) => Ok(self.last_position()),
            Err(raft::Error::ProposalDropped) => Err(ProposeError::Dropped),
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// The voter best placed to take over from this leader: of the other voters, one
    /// heard from recently if any was, and among those the one whose log matches this
    /// one furthest (it needs the fewest entries before it can take over). `None` when
    /// this replica does not lead or leads alone.
    pub fn successor(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let prs = self.raw.raft.prs();
        let cs = self.conf_state();
        cs.voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .filter(|id| *id != self.id())
            .filter_map(|id| prs.get(id).map(|pr| (pr.recent_active, pr.matched, id)))
            // Ties go to the lowest id, so the choice does not depend on map order.
            .max_by_key(|(active, matched, id)| (*active, *matched, std::cmp::Reverse(*id)))
            .map(|(_, _, id)| id)
    }

    /// Whether this leader is handing leadership over ([`Replica::transfer_leader`]);
    /// it refuses proposals meanwhile.
    pub fn transferring(&self) -> bool {
        self.is_leader() && self.raw.raft.lead_transferee.is_some()
    }

    /// Starts a linearizable read. The answer arrives as a [`ReadState`] carrying `ctx`
    /// in a later [`ReadyOutput::read_states`].
    ///
    /// `ctx` must be unique across the cluster and across restarts: the leader drops a
    /// request whose context it already has pending, and an answer is matched to its
    /// request by context alone. [`crate::ReadContexts`] issues such contexts.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    /// Tells raft a peer could not be reached, so it probes instead of streaming.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// Tells a leader that peer `id` has just started, perhaps with an empty log.
    ///
    /// Raft assumes a node never loses what it acknowledged; one replaced with an empty
    /// raft directory has. The leader still counts what it acknowledged before
    /// (`matched`) and sends heartbeats that commit up to there: a raft-rs follower
    /// whose log is shorter panics on that (ours refuses such a heartbeat at the gate;
    /// the existing service does not). So the leader forgets what the peer had: it
    /// heartbeats with commit 0 and probes from its last index, and the peer's answer
    /// (an ack, or a rejection that leads to a snapshot) sets it right within a round
    /// trip. The commit index never moves back, so safety is untouched; a peer that
    /// lost nothing costs one probe.
    pub fn peer_restarted(&mut self, id: u64) {
        if self.raw.raft.state != StateRole::Leader || id == self.cfg.id {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(id) {
            if pr.matched == 0 {
                return;
            }
            tracing::info!(
                raft_id = self.cfg.id,
                peer = id,
                matched = pr.matched,
                "peer restarted: probing it afresh"
            );
            pr.matched = 0;
            pr.become_probe();
            pr.next_idx = last + 1;
        }
    }

    /// Says whether whoever sends this replica's messages reports how each snapshot
    /// went, with [`Replica::report_snapshot`]. Off by default: every snapshot is then
    /// reported finished as soon as [`Replica::handle_ready`] hands it out (see
    /// [`crate::Transport#snapshots`]).
    pub fn set_snapshots_reported(&mut self, reported: bool) {
        self.snapshots_reported = reported;
    }

    /// Tells raft how the snapshot last sent to `id` ended: after
    /// [`SnapshotStatus::Finish`] it waits for the follower's answer and goes on from
    /// the snapshot; after [`SnapshotStatus::Failure`] it probes the follower again a
    /// heartbeat later and sends a new snapshot if it still needs one. A report for a
    /// follower that is not waiting for a snapshot is ignored.
    pub fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        self.raw.report_snapshot(id, status);
    }

    /// Whether [`Replica::handle_ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready() || (self.flush_due && self.has_staged())
    }

    fn not_leader(&self) -> ProposeError {
        let leader = self.raw.raft.leader_id;
        ProposeError::NotLeader {
            leader: (leader != 0).then_some(leader),
        }
    }

    fn last_position(&self) -> LogPosition {
        LogPosition {
            index: self.raw.raft.raft_log.last_index(),
            term: self.raw.raft.term,
        }
    }
}
