//! The cluster harness: replicas over simulated disks ([`SimStore`]), a [`Network`] between them, one
//! seeded RNG and logical time, so a run is a pure function of its seed.
//!
//! The harness plays every role around the replicas: it ticks them, carries their
//! messages, applies what they commit to a [`KvStateMachine`], takes snapshots, crashes
//! them (a process crash keeps every write, a power loss only what was synced, see
//! [`crate::sim::disk`]) and restarts them from their stores, and runs every invariant
//! checker after each operation and each step. A violation panics with the seed, the step and the recent
//! actions.

use std::collections::{BTreeMap, VecDeque};

use craft_core::gate::Rejection;
use craft_core::raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Message};
use craft_core::raft::StateRole;
use craft_core::{
    make_snapshot, voters, CommittedKind, LogPosition, LogStore, Replica, ReplicaConfig,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::sim::client::{ClientOracle, PendingRead};
use crate::sim::committed_immutable::CommittedImmutable;
use crate::sim::disk::{SimStore, SyncFlaw};
use crate::sim::election_safety::ElectionSafety;
use crate::sim::network::Network;
use crate::sim::state_machine::{Command, KvStateMachine};
use crate::sim::state_machine_safety::StateMachineSafety;
use crate::sim::{leader_completeness, log_matching};

/// How many recent actions a failure report shows.
const TRACE_LEN: usize = 40;

/// Shape of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Voters at bootstrap, with ids `1..=voters`.
    pub voters: u64,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Applied entries between snapshots; small, so compaction really happens.
    pub snapshot_interval: u64,
    /// Entries kept behind a snapshot.
    pub log_retain: u64,
    /// Raft pre-vote.
    pub pre_vote: bool,
    /// Raft check-quorum.
    pub check_quorum: bool,
    /// Leaders broadcast each commit at once.
    pub broadcast_commit: bool,
    /// Give every disk this flaw (`None`: honest disks), to show what the checkers
    /// catch when writes are acknowledged before they are durable.
    pub sync_flaw: Option<SyncFlaw>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            voters: 3,
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_interval: 5,
            log_retain: 2,
            pre_vote: true,
            check_quorum: true,
            broadcast_commit: false,
            sync_flaw: None,
        }
    }
}

impl SimConfig {
    /// The default shape with `voters` voters.
    pub fn with_voters(voters: u64) -> Self {
        Self {
            voters,
            ..Self::default()
        }
    }
}

/// One simulated server.
#[derive(Debug)]
pub struct Node {
    /// Raft id.
    pub id: u64,
    /// Its "disk": survives process crashes whole, power losses up to its last sync.
    pub store: SimStore,
    /// The running replica; `None` while crashed or after removal.
    pub replica: Option<Replica<SimStore>>,
    /// Its application state; lost on crash, rebuilt on restart.
    pub sm: KvStateMachine,
    /// Snapshots received from a leader.
    pub snapshots_received: u64,
    /// Removed from the cluster by a committed membership change (shut down for good).
    pub removed: bool,
}

/// The whole simulated world.
pub struct Cluster {
    /// Seed of the run.
    pub seed: u64,
    /// The one source of randomness.
    pub rng: StdRng,
    /// Shape of the cluster.
    pub config: SimConfig,
    /// Every server ever created, by id.
    pub nodes: BTreeMap<u64, Node>,
    /// The network.
    pub net: Network,
    /// Logical time, in steps.
    pub now: u64,
    /// Next id for a joining node.
    next_id: u64,
    /// Next unique command value / read context.
    next_value: u64,
    /// Election Safety checker.
    pub election: ElectionSafety,
    /// Committed-entries-are-immutable checker (also feeds Leader Completeness).
    pub committed: CommittedImmutable,
    /// State Machine Safety checker.
    pub sm_safety: StateMachineSafety,
    /// Client oracle.
    pub client: ClientOracle,
    /// Power losses so far, one per node.
    pub power_losses: u64,
    /// Unsynced writes they threw away.
    pub writes_lost: u64,
    /// Recent actions, for failure reports.
    trace: VecDeque<String>,
}

/// A well-mixed hash of `parts` (splitmix64 steps).
fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243f_6a88_85a3_08d3, |acc, &x| {
        let mut z = (acc ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The failure report for a message node `to` could not step. Every node is honest, so
/// no message should fail the gate; two refusals are what lost writes look like.
fn refused(to: u64, e: &craft_core::Error) -> String {
    let hint = match e {
        craft_core::Error::Refused { reason, .. } => match reason {
            Rejection::CommitPastLog => {
                " (the leader counts entries as held here that this log lacks: entries \
                 acknowledged, then lost; raft-rs would panic \"to_commit out of range\")"
            }
            Rejection::AckPastLog => {
                " (the follower acknowledges entries this leader's log lacks: one of \
                 the two lost entries it had acknowledged)"
            }
            _ => " (no honest peer sends that)",
        },
        _ => "",
    };
    format!("node {to} failed to step a message: {e}{hint}")
}

/// A single-change membership change.
pub fn conf_change(change_type: ConfChangeType, id: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

impl Cluster {
    /// Bootstraps `config.voters` voters from one initial snapshot.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        let mut cluster = Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            net: Network::default(),
            now: 0,
            next_id: config.voters + 1,
            next_value: 1,
            election: ElectionSafety::default(),
            committed: CommittedImmutable::default(),
            sm_safety: StateMachineSafety::default(),
            client: ClientOracle::default(),
            power_losses: 0,
            writes_lost: 0,
            trace: VecDeque::new(),
            config,
        };
        let initial = KvStateMachine {
            applied_index: 1,
            ..KvStateMachine::default()
        };
        for id in 1..=cluster.config.voters {
            let store = SimStore::new(cluster.config.sync_flaw);
            let snapshot =
                make_snapshot(1, 1, voters(1..=cluster.config.voters), initial.snapshot());
            store.bootstrap(snapshot).unwrap();
            store.sync();
            cluster.open_node(id, store);
        }
        cluster
    }

    fn replica_config(&self, id: u64) -> ReplicaConfig {
        let mut cfg = ReplicaConfig::new(id);
        cfg.election_tick = self.config.election_tick;
        cfg.heartbeat_tick = self.config.heartbeat_tick;
        cfg.snapshot_interval = self.config.snapshot_interval;
        cfg.log_retain = self.config.log_retain;
        cfg.pre_vote = self.config.pre_vote;
        cfg.check_quorum = self.config.check_quorum;
        cfg.broadcast_commit = self.config.broadcast_commit;
        cfg
    }

    /// Opens a replica on `store` (new node or restart), restoring its state machine.
    fn open_node(&mut self, id: u64, store: SimStore) {
        let (replica, snapshot) = Replica::open(self.replica_config(id), store.clone())
            .unwrap_or_else(|e| self.fail(format!("node {id} failed to open: {e}")));
        let sm = match &snapshot {
            Some(snap) => {
                let sm = KvStateMachine::restore(&snap.data).unwrap_or_else(|e| {
                    self.fail(format!("node {id}: local snapshot is corrupt: {e}"))
                });
                let index = snap.get_metadata().index;
                if sm.applied_index != index {
                    self.fail(format!(
                        "node {id}: snapshot at index {index} holds state applied to {}",
                        sm.applied_index
                    ));
                }
                let checked = self.sm_safety.on_restore(id, &sm);
                self.ensure(checked);
                sm
            }
            None => KvStateMachine::default(),
        };
        let node = self.nodes.entry(id).or_insert_with(|| Node {
            id,
            store,
            replica: None,
            sm: KvStateMachine::default(),
            snapshots_received: 0,
            removed: false,
        });
        node.sm = sm;
        node.replica = Some(replica);
        self.net.crashed.remove(&id);
        self.after_op(id);
    }

    // ----- queries -----

    /// Ids of running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.replica.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Ids of crashed nodes that are still members (not removed).
    pub fn crashed(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.replica.is_none() && !n.removed)
            .map(|n| n.id)
            .collect()
    }

    /// The running replica of `id`.
    pub fn replica(&self, id: u64) -> &Replica<SimStore> {
        self.nodes
            .get(&id)
            .and_then(|n| n.replica.as_ref())
            .unwrap_or_else(|| self.fail(format!("node {id} is not running")))
    }

    /// Running nodes that believe they are leader, highest term first.
    pub fn leaders(&self) -> Vec<u64> {
        let mut leaders: Vec<(u64, u64)> = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.is_leader())
            .map(|r| (r.role().term, r.id()))
            .collect();
        leaders.sort_by(|a, b| b.cmp(a));
        leaders.into_iter().map(|(_, id)| id).collect()
    }

    /// The running leader with the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.leaders().first().copied()
    }

    /// Members according to `id`'s applied configuration (voters and learners).
    pub fn members_seen_by(&self, id: u64) -> Vec<u64> {
        let cs = self.replica(id).conf_state();
        let mut ids: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The state machine of `id`.
    pub fn sm(&self, id: u64) -> &KvStateMachine {
        &self.nodes[&id].sm
    }

    /// A hash of the whole visible state, to compare two runs of the same seed.
    pub fn fingerprint(&self) -> u64 {
        let s = self.net.stats;
        let mut parts = vec![
            self.now,
            s.sent,
            s.duplicated,
            s.dropped,
            s.blocked,
            s.delivered,
        ];
        for node in self.nodes.values() {
            parts.extend([
                node.id,
                node.sm.applied_index,
                node.snapshots_received,
                node.store.synced_writes(),
            ]);
            if let Some(r) = &node.replica {
                let role = r.role();
                parts.extend([role.term, role.leader_id, r.last_index(), r.commit_index()]);
            }
        }
        mix(&parts)
    }

    // ----- failure reporting -----

    /// Records an action for the failure report.
    pub fn note(&mut self, what: impl Into<String>) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{}] {}", self.now, what.into()));
    }

    /// Panics with the seed, the step, the recent actions and every node's state.
    pub fn fail(&self, msg: String) -> ! {
        let mut report = format!("seed {} step {}: {msg}\nnodes:\n", self.seed, self.now);
        for node in self.nodes.values() {
            report.push_str(&format!("  {}\n", self.describe(node.id)));
        }
        report.push_str(&format!(
            "network: {} in flight, {:?}, cut {:?}\nrecent actions:\n",
            self.net.in_flight(),
            self.net.stats,
            self.net.cut
        ));
        for line in &self.trace {
            report.push_str(&format!("  {line}\n"));
        }
        panic!("{report}");
    }

    /// One line about node `id`.
    pub fn describe(&self, id: u64) -> String {
        let node = &self.nodes[&id];
        match &node.replica {
            Some(r) => {
                let role = r.role();
                format!(
                    "node {id}: {:?} term {} leader {} last {} commit {} applied {} sm-applied {} \
                     voters {:?} snapshots-received {}",
                    role.role,
                    role.term,
                    role.leader_id,
                    r.last_index(),
                    r.commit_index(),
                    r.applied_index(),
                    node.sm.applied_index,
                    r.conf_state().voters,
                    node.snapshots_received
                )
            }
            None if node.removed => format!("node {id}: removed"),
            None => format!("node {id}: crashed"),
        }
    }

    /// Panics on a violation.
    pub fn ensure(&self, result: Result<(), String>) {
        if let Err(msg) = result {
            self.fail(msg);
        }
    }

    // ----- invariants -----

    /// Checks what can be seen right after an operation on node `id`: who leads, and
    /// what it now considers committed.
    fn after_op(&mut self, id: u64) {
        let seed = self.seed;
        let election_tick = self.config.election_tick as u64;
        let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        let role = replica.role();
        // Raft draws election timeouts from an unseeded thread RNG; replace them with a
        // function of the seed and the node's state so the run stays reproducible.
        let jitter = mix(&[seed, id, role.term, role.role as u64, role.leader_id]);
        replica.set_election_timeout((election_tick + jitter % election_tick) as usize);
        let replica = &*replica;
        let mut result = self.committed.observe(id, replica);
        if result.is_ok() && role.role == StateRole::Leader {
            result = match self.election.observe_leader(id, role.term) {
                Ok(true) => leader_completeness::check_new_leader(
                    id,
                    role.term,
                    &replica.raw().raft.raft_log,
                    &self.committed,
                ),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
        }
        self.ensure(result);
    }

    /// Runs the checks that look at the whole cluster: Log Matching over every store,
    /// and each state machine against its replica.
    pub fn check(&self) {
        let logs: Vec<_> = self
            .nodes
            .values()
            .map(|n| (n.id, log_matching::persisted_log(&n.store)))
            .collect();
        self.ensure(log_matching::check(&logs));
        for node in self.nodes.values() {
            if let Some(r) = &node.replica {
                if node.sm.applied_index != r.applied_index() {
                    self.fail(format!(
                        "node {}: state machine applied {} but replica says {}",
                        node.id,
                        node.sm.applied_index,
                        r.applied_index()
                    ));
                }
            }
        }
    }

    // ----- operations -----

    /// Advances logical time by one tick on node `id`.
    pub fn tick(&mut self, id: u64) {
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            r.tick();
            self.after_op(id);
            self.process(id);
        }
    }

    /// Ticks every running node.
    pub fn tick_all(&mut self) {
        for id in self.live() {
            self.tick(id);
        }
    }

    /// Makes node `id` campaign now.
    pub fn campaign(&mut self, id: u64) {
        self.note(format!("campaign {id}"));
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            r.campaign().unwrap();
            self.after_op(id);
            self.process(id);
        }
    }

    /// Delivers the messages due now (each with chance `fraction`), then lets every
    /// receiver handle its Ready.
    pub fn deliver(&mut self, fraction: f64) {
        let (delivered, _lost) = self.net.take_due(self.now, fraction, &mut self.rng);
        let mut touched = Vec::new();
        for msg in delivered {
            let to = msg.to;
            let Some(r) = self.nodes.get_mut(&to).and_then(|n| n.replica.as_mut()) else {
                continue;
            };
            let withheld = r.commits_withheld();
            match r.step(msg) {
                // A heartbeat committing past this log, taken without its commit: the
                // leader counts entries as held here that this log lacks.
                Ok(()) if r.commits_withheld() > withheld => self.fail(format!(
                    "node {to} got a heartbeat committing past its log (the leader counts \
                     entries as held here that this log lacks: entries acknowledged, then \
                     lost; raft-rs would panic \"to_commit out of range\")"
                )),
                Ok(()) => {}
                // A follower still hearing its leader refuses a newer one, as raft-rs
                // ignores votes in that lease: an honest cluster sends such messages
                // when a leader is cut off from a quorum but not from this follower.
                Err(craft_core::Error::Refused {
                    reason: Rejection::LeaderInLease,
                    ..
                }) => {}
                Err(e) => self.fail(refused(to, &e)),
            }
            self.after_op(to);
            if !touched.contains(&to) {
                touched.push(to);
            }
        }
        for id in touched {
            self.process(id);
        }
    }

    /// Sends messages produced by a replica.
    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            self.net.send(self.now, msg, &mut self.rng);
        }
    }

    /// Proposes a fresh unique command on node `id`. Returns the command and where it
    /// landed, or `None` when the node refused.
    pub fn propose(&mut self, id: u64) -> Option<(Vec<u8>, LogPosition)> {
        let value = self.next_value;
        self.next_value += 1;
        let cmd = Command {
            key: value % 7,
            value,
        };
        let data = cmd.encode();
        let r = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut())?;
        let result = r.propose(Vec::new(), data.clone());
        self.after_op(id);
        match result {
            Ok(at) => {
                self.note(format!(
                    "node {id} accepted {} at ({}, {})",
                    String::from_utf8_lossy(&data),
                    at.index,
                    at.term
                ));
                self.client.on_propose(id, data.clone(), at);
                self.process(id);
                Some((data, at))
            }
            Err(_) => None,
        }
    }

    /// Proposes on the current leader, if any.
    pub fn propose_on_leader(&mut self) -> Option<(Vec<u8>, LogPosition)> {
        let leader = self.leader()?;
        self.propose(leader)
    }

    /// Proposes a membership change on node `id`.
    pub fn propose_conf_change(&mut self, id: u64, cc: ConfChangeV2) -> Option<LogPosition> {
        self.note(format!("node {id} proposes {:?}", cc.get_changes()));
        let r = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut())?;
        let result = r.propose_conf_change(cc);
        self.after_op(id);
        self.process(id);
        result.ok()
    }

    /// Starts a read on node `id`; the answer is checked when it arrives.
    pub fn read_index(&mut self, id: u64) -> Vec<u8> {
        let ctx = format!("read-{}", self.next_value).into_bytes();
        self.next_value += 1;
        let commit_at_request = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.commit_index())
            .max()
            .unwrap_or(0)
            .max(self.committed.max_index());
        self.note(format!(
            "read {} on node {id}",
            String::from_utf8_lossy(&ctx)
        ));
        self.client.on_read(
            ctx.clone(),
            PendingRead {
                node: id,
                commit_at_request,
            },
        );
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            r.read_index(ctx.clone());
            self.after_op(id);
            self.process(id);
        }
        ctx
    }

    /// Asks leader `from` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, from: u64, to: u64) {
        self.note(format!("transfer leader {from} -> {to}"));
        if let Some(r) = self.nodes.get_mut(&from).and_then(|n| n.replica.as_mut()) {
            r.transfer_leader(to);
            self.after_op(from);
            self.process(from);
        }
    }

    /// Crashes node `id`'s process: the replica and its state machine are gone, its
    /// store stays whole (the page cache outlives the process). Messages it already
    /// sent stay on the wire.
    pub fn crash(&mut self, id: u64) {
        self.note(format!("crash {id}"));
        self.stop(id);
    }

    fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if node.replica.is_some() {
                node.replica = None;
                node.sm = KvStateMachine::default();
                self.net.crashed.insert(id);
            }
        }
    }

    /// Cuts node `id`'s power: its process stops if it ran, and its disk goes back to
    /// the last sync plus the first `keep` writes after it (those the disk wrote back
    /// anyway). Messages it already sent stay on the wire. Works on a crashed node too,
    /// whose unsynced writes still sat in the page cache. Returns how many writes were
    /// lost.
    pub fn power_loss(&mut self, id: u64, keep: usize) -> usize {
        let Some(node) = self.nodes.get(&id) else {
            return 0;
        };
        if node.removed {
            return 0;
        }
        let unsynced = node.store.unsynced_writes();
        let lost = node.store.power_loss(keep);
        self.power_losses += 1;
        self.writes_lost += lost as u64;
        self.note(format!(
            "power loss {id}: {lost} of {unsynced} unsynced writes lost"
        ));
        self.stop(id);
        lost
    }

    /// Restarts crashed node `id` from its store.
    pub fn restart(&mut self, id: u64) {
        self.note(format!("restart {id}"));
        let node = &self.nodes[&id];
        if node.replica.is_some() || node.removed {
            return;
        }
        let store = node.store.clone();
        self.open_node(id, store);
        self.process(id);
    }

    /// Creates a new, empty node (not yet a member) and returns its id.
    pub fn add_empty_node(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.note(format!("new empty node {id}"));
        self.open_node(id, SimStore::new(self.config.sync_flaw));
        id
    }

    /// Lets node `id` handle every Ready it has: send, restore, apply, snapshot.
    pub fn process(&mut self, id: u64) {
        let mut removed = Vec::new();
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(replica) = node.replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                break;
            }
            let mut outgoing = Vec::new();
            let out = match replica.handle_ready(&mut |msgs| outgoing.extend(msgs)) {
                Ok(out) => out,
                Err(e) => self.fail(format!("node {id}: handle_ready failed: {e}")),
            };
            outgoing.extend(out.messages);
            let node = self.nodes.get_mut(&id).unwrap();
            let replica = node.replica.as_mut().unwrap();
            let mut result = self.committed.observe(id, replica);
            if let Some(snap) = &out.snapshot {
                let index = snap.get_metadata().index;
                result = result.and(match KvStateMachine::restore(&snap.data) {
                    Ok(sm) if sm.applied_index == index => {
                        node.sm = sm;
                        node.snapshots_received += 1;
                        self.sm_safety.on_restore(id, &node.sm)
                    }
                    Ok(sm) => Err(format!(
                        "node {id}: snapshot at {index} holds state applied to {}",
                        sm.applied_index
                    )),
                    Err(e) => Err(format!("node {id}: received corrupt snapshot: {e}")),
                });
            }
            for entry in &out.committed {
                result = result
                    .and_then(|()| self.committed.check_applied(id, entry))
                    .and_then(|()| self.sm_safety.on_apply(id, entry))
                    .and_then(|()| self.client.on_apply(id, entry))
                    .and_then(|()| node.sm.apply(entry).map_err(|e| format!("node {id}: {e}")));
                if let CommittedKind::ConfChange { change, conf_state } = &entry.kind {
                    for single in change.get_changes() {
                        let gone = single.node_id;
                        if single.get_change_type() == ConfChangeType::RemoveNode
                            && !conf_state.voters.contains(&gone)
                            && !conf_state.learners.contains(&gone)
                            && !conf_state.voters_outgoing.contains(&gone)
                        {
                            removed.push(gone);
                        }
                    }
                }
            }
            if let Some(last) = out.committed.last() {
                replica.advance_apply(last.index);
            }
            // The driver's path: the replica says at which index a snapshot is due once
            // what it handed out is applied; the state machine is captured there (it
            // applies synchronously here) and the snapshot staged for the next write.
            if result.is_ok() {
                if let Some((index, conf_state)) = replica.take_snapshot_request() {
                    result = if node.sm.applied_index == index {
                        replica
                            .stage_snapshot(index, conf_state, node.sm.snapshot())
                            .map_err(|e| format!("node {id}: stage_snapshot failed: {e}"))
                    } else {
                        Err(format!(
                            "node {id}: snapshot asked at {index}, state machine applied to {}",
                            node.sm.applied_index
                        ))
                    };
                }
            }
            for rs in &out.read_states {
                result =
                    result.and_then(|()| self.client.on_read_state(id, &rs.request_ctx, rs.index));
            }
            if let Some(change) = out.role_change {
                self.note(format!(
                    "node {id} is {:?} in term {} (leader {})",
                    change.role, change.term, change.leader_id
                ));
            }
            self.ensure(result);
            self.send(outgoing);
            self.after_op(id);
        }
        for gone in removed {
            if let Some(node) = self.nodes.get_mut(&gone) {
                if !node.removed {
                    node.removed = true;
                    node.replica = None;
                    self.net.crashed.insert(gone);
                    self.note(format!("node {gone} removed and shut down"));
                }
            }
        }
    }

    /// One step of directed tests: deliver what is due, tick everyone, check.
    pub fn round(&mut self) {
        self.now += 1;
        self.deliver(1.0);
        self.tick_all();
        self.check();
    }

    /// Runs `rounds` rounds.
    pub fn run(&mut self, rounds: u64) {
        for _ in 0..rounds {
            self.round();
        }
    }

    /// Runs rounds until `done` holds; fails after `max` rounds, naming `what`.
    pub fn run_until(&mut self, max: u64, what: &str, done: impl Fn(&Self) -> bool) -> u64 {
        for n in 0..max {
            if done(self) {
                return n;
            }
            self.round();
        }
        if done(self) {
            return max;
        }
        self.fail(format!("not converged after {max} rounds: {what}"));
    }

    /// Runs until there is a leader and returns it.
    pub fn wait_leader(&mut self, max: u64) -> u64 {
        self.run_until(max, "a leader", |c| c.stable_leader().is_some());
        self.stable_leader().unwrap()
    }

    /// The leader every running member agrees on, if there is exactly one.
    pub fn stable_leader(&self) -> Option<u64> {
        let leaders = self.leaders();
        let [leader] = leaders.as_slice() else {
            return None;
        };
        let term = self.replica(*leader).role().term;
        let members = self.members_seen_by(*leader);
        members
            .iter()
            .all(|m| {
                self.nodes
                    .get(m)
                    .and_then(|n| n.replica.as_ref())
                    .is_some_and(|r| {
                        let role = r.role();
                        role.term == term && role.leader_id == *leader
                    })
            })
            .then_some(*leader)
    }

    /// Whether every running member holds the same log and state as the leader.
    pub fn in_sync(&self) -> bool {
        let Some(leader) = self.stable_leader() else {
            return false;
        };
        let l = self.replica(leader);
        let members = self.members_seen_by(leader);
        members.iter().all(|m| {
            let r = self.replica(*m);
            r.last_index() == l.last_index()
                && r.commit_index() == l.last_index()
                && r.applied_index() == l.last_index()
                && self.nodes[m].sm == self.nodes[&leader].sm
        })
    }

    /// Runs until the command `data` at `at` is applied on every running member.
    pub fn wait_applied(&mut self, at: LogPosition, max: u64) {
        self.run_until(
            max,
            &format!("entry {} applied everywhere", at.index),
            |c| {
                let Some(leader) = c.stable_leader() else {
                    return false;
                };
                c.members_seen_by(leader)
                    .iter()
                    .all(|m| c.nodes[m].sm.applied_index >= at.index)
            },
        );
    }

    /// The liveness phase: stop all faults (heal partitions, no loss, no duplication,
    /// no delay), restart crashed members, then require within `max` rounds exactly one
    /// leader, identical logs and state everywhere, a new proposal committed on every
    /// member, and every acknowledged proposal applied everywhere.
    pub fn converge(&mut self, max: u64) {
        self.note("liveness phase: faults stop");
        self.net.calm();
        for id in self.crashed() {
            self.restart(id);
        }
        let start = self.now;
        self.run_until(
            max,
            "one leader and identical logs after faults stopped",
            |c| c.in_sync(),
        );
        let mut at = None;
        for _ in 0..max {
            if let Some((_, pos)) = self.propose_on_leader() {
                at = Some(pos);
                break;
            }
            self.round();
        }
        let Some(at) = at else {
            self.fail("liveness: no leader accepts a proposal".to_owned());
        };
        let used = self.now - start;
        let left = max.saturating_sub(used).max(1);
        self.run_until(left, "the final proposal committed everywhere", |c| {
            c.in_sync()
                && c.stable_leader()
                    .is_some_and(|l| c.sm(l).applied_index >= at.index)
        });
        let leader = self.stable_leader().unwrap();
        for m in self.members_seen_by(leader) {
            let result = self.client.check_all_acked_applied(m, &self.nodes[&m].sm);
            self.ensure(result);
        }
    }
}
