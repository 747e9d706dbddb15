//! The async driver: runs a [`Replica`] on tokio.
//!
//! Three tasks. The raft task owns the replica: it ticks on a timer, takes every
//! command and peer message that is already waiting (so proposals that arrive together
//! share one Ready and one fsync), handles the Ready and hands committed entries to the
//! apply task. The apply task owns the state machine and applies entries in log order;
//! a slow application (a controller taking seconds per call) therefore never stops
//! ticks, heartbeats or votes. Each proposer is answered when its own entry is applied.
//! A local snapshot is captured on the apply task between two entries
//! ([`StateMachine::snapshot`]); the snapshot task serialises it on a blocking thread
//! while both other tasks go on (and, when the store has a [`SnapshotStager`], makes
//! the bytes durable there too), and the raft task writes or records it with the next
//! Ready.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeV2, ConfState, Message, Snapshot};
use raft::{SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Error, ProposeError};
use crate::read::ReadContexts;
use crate::replica::{
    Committed, CommittedKind, LogPosition, ReadyOutput, ReadySink, Replica, ReplicaConfig,
};
use crate::state_machine::{SnapshotJob, StateMachine};
use crate::storage::{LogStore, SnapshotStager, StagedSnapshot};
use crate::transport::{SnapshotReporter, Transport};

mod apply;
mod handle;

use apply::{apply_loop, snapshot_loop, AppliedKind, ApplyJob, ApplyReport, SnapshotData};
use handle::Command;
pub use handle::{NodeHandle, NodeStatus, Role};

/// Tunables of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Wall-clock length of one raft tick.
    pub tick_interval: Duration,
    /// How long a proposer waits for its entry to apply.
    pub proposal_timeout: Duration,
    /// Most commands or messages taken into one Ready.
    pub max_batch: usize,
    /// Capacity of the queue of incoming peer messages; more are dropped.
    pub inbox_capacity: usize,
    /// When a leader is asked to stop, how long it may spend handing leadership to
    /// its [`Replica::successor`] first, so the others go on without waiting for an
    /// election timeout (a rolling restart then costs a round trip per node, not an
    /// election). It stops as soon as the successor has taken over, or the transfer
    /// was given up. Zero stops at once.
    pub hand_off_on_stop: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_millis(100),
            proposal_timeout: Duration::from_secs(10),
            max_batch: 4096,
            inbox_capacity: 8192,
            hand_off_on_stop: Duration::from_secs(2),
        }
    }
}

/// Starts a node: opens the replica on `store`, restores `state_machine` from the
/// store's snapshot, and spawns the driver task on the current tokio runtime. The task
/// runs until `shutdown` completes or a storage error stops it.
pub async fn start<S, M, T>(
    config: ReplicaConfig,
    driver: DriverConfig,
    store: S,
    mut state_machine: M,
    transport: T,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(NodeHandle<M::Response>, JoinHandle<Result<(), Error>>), Error>
where
    S: LogStore,
    M: StateMachine,
    T: Transport,
{
    let stager = store.snapshot_stager();
    let (mut replica, snapshot) = Replica::open(config, store)?;
    let (reporter, snapshot_reports) = SnapshotReporter::channel();
    let reported = transport.report_snapshots(reporter.clone());
    replica.set_snapshots_reported(reported);
    replica.set_snapshot_check(Box::new(|data| M::check_snapshot(data)));
    if let Some(snap) = &snapshot {
        state_machine.restore(snap).await.map_err(Error::Restore)?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(driver.max_batch.max(1));
    let (msg_tx, msg_rx) = mpsc::channel(driver.inbox_capacity.max(1));
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    let handle = NodeHandle {
        commands: cmd_tx,
        inbox: msg_tx,
        status: status_rx,
        proposal_timeout: driver.proposal_timeout,
    };
    let span = tracing::info_span!("raft", node_id = replica.id());
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (captures_tx, captures_rx) = mpsc::unbounded_channel();
    let snapshotter =
        tokio::spawn(snapshot_loop(captures_rx, done_tx.clone(), stager).instrument(span.clone()));
    let sm_applied = replica.applied_index();
    let applier = tokio::spawn(
        apply_loop(state_machine, sm_applied, jobs_rx, done_tx, captures_tx)
            .instrument(span.clone()),
    );
    let replica_id = replica.id();
    let mut task = Driver {
        replica,
        transport,
        config: driver,
        commands: cmd_rx,
        inbox: msg_rx,
        snapshot_reports,
        _reporter: reporter,
        status: status_tx,
        jobs: jobs_tx,
        done: done_rx,
        sm_applied,
        proposals: VecDeque::new(),
        conf_changes: VecDeque::new(),
        reads: HashMap::new(),
        ready_reads: Vec::new(),
        read_contexts: ReadContexts::new(replica_id),
    };
    task.publish_status();
    let join = tokio::spawn(
        async move {
            let result = task.run(shutdown).await;
            applier.abort();
            // A serialisation already running on a blocking thread finishes unheard.
            snapshotter.abort();
            result
        }
        .instrument(span),
    );
    Ok((handle, join))
}

struct Pending<T> {
    at: LogPosition,
    reply: oneshot::Sender<Result<T, ProposeError>>,
}

struct Driver<S: LogStore, R, T> {
    replica: Replica<S>,
    transport: T,
    config: DriverConfig,
    commands: mpsc::Receiver<Command<R>>,
    inbox: mpsc::Receiver<Message>,
    /// How snapshots sent by the transport went, when it reports them.
    snapshot_reports: mpsc::UnboundedReceiver<(u64, SnapshotStatus)>,
    /// Keeps `snapshot_reports` open when the transport does not report.
    _reporter: SnapshotReporter,
    status: watch::Sender<NodeStatus>,
    /// To the apply task.
    jobs: mpsc::UnboundedSender<ApplyJob<R>>,
    /// From the apply task.
    done: mpsc::UnboundedReceiver<ApplyReport>,
    /// Highest index the state machine has applied (or restored to).
    sm_applied: u64,
    proposals: VecDeque<Pending<R>>,
    conf_changes: VecDeque<Pending<ConfState>>,
    /// Read requests sent to raft, by the sequence number of their context, with the
    /// time they were made. Raft drops a read silently when there is no leader; such
    /// reads expire after the proposal timeout (their callers gave up by then).
    reads: HashMap<u64, (Instant, oneshot::Sender<Result<u64, ProposeError>>)>,
    /// Reads with a known read index, waiting for apply to reach it.
    ready_reads: Vec<(u64, oneshot::Sender<Result<u64, ProposeError>>)>,
    /// Contexts of this run's reads: unique across nodes and restarts, so an answer to
    /// another node's read, or to a read of an earlier run, completes none of ours.
    read_contexts: ReadContexts,
}

impl<S: LogStore, R: Send + 'static, T: Transport> Driver<S, R, T> {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // Set once asked to stop while leading: until then, leadership is handed over.
        let mut hand_off: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown, if hand_off.is_none() => match self.begin_hand_off() {
                    Some(deadline) => hand_off = Some(deadline),
                    None => break,
                },
                _ = sleep_until(hand_off), if hand_off.is_some() => {
                    tracing::warn!("leadership not handed over in time; stopping as leader");
                    break;
                }
                _ = ticker.tick() => {
                    self.replica.tick();
                    self.expire_reads();
                }
                done = self.done.recv() => match done {
                    Some(done) => self.on_done(done)?,
                    // The apply task only ends early by panicking.
                    None => return Err(Error::ApplyStopped),
                },
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(msg) = self.inbox.recv() => self.on_message(msg),
                Some((to, status)) = self.snapshot_reports.recv() => {
                    self.on_snapshot_report(to, status)
                }
            }
            while let Ok((to, status)) = self.snapshot_reports.try_recv() {
                self.on_snapshot_report(to, status);
            }
            while let Ok(done) = self.done.try_recv() {
                self.on_done(done)?;
            }
            // Take everything else already waiting, commands and peer messages alike, so
            // they share one Ready (one fsync).
            for _ in 1..self.config.max_batch {
                match self.commands.try_recv() {
                    Ok(cmd) => self.on_command(cmd),
                    Err(_) => break,
                }
            }
            for _ in 1..self.config.max_batch {
                match self.inbox.try_recv() {
                    Ok(msg) => self.on_message(msg),
                    Err(_) => break,
                }
            }
            self.process_ready()?;
            if hand_off.is_some() && !self.replica.transferring() {
                let st = self.replica.role();
                if self.replica.is_leader() {
                    tracing::warn!("leadership transfer given up; stopping as leader");
                } else {
                    tracing::info!(
                        leader = st.leader_id,
                        term = st.term,
                        "leadership handed over"
                    );
                }
                break;
            }
        }
        tracing::info!("raft node stopping");
        self.fail_all(ProposeError::Stopped);
        self.replica.flush()?;
        Ok(())
    }

    /// Asked to stop: a leader with a successor starts handing leadership to it and
    /// gets a deadline; anyone else stops at once (`None`).
    fn begin_hand_off(&mut self) -> Option<tokio::time::Instant> {
        if self.config.hand_off_on_stop.is_zero() {
            return None;
        }
        let to = self.replica.successor()?;
        tracing::info!(to, "asked to stop while leading: handing leadership over");
        self.replica.transfer_leader(to);
        Some(tokio::time::Instant::now() + self.config.hand_off_on_stop)
    }

    fn expire_reads(&mut self) {
        let timeout = self.config.proposal_timeout;
        if self.reads.is_empty() {
            return;
        }
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= timeout)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some((_, reply)) = self.reads.remove(&ctx) {
                let _ = reply.send(Err(ProposeError::Timeout));
            }
        }
    }

    fn on_snapshot_report(&mut self, to: u64, status: SnapshotStatus) {
        match status {
            SnapshotStatus::Finish => tracing::debug!(to, "snapshot delivered"),
            SnapshotStatus::Failure => {
                tracing::info!(to, "snapshot not delivered; raft will send another")
            }
        }
        self.replica.report_snapshot(to, status);
    }

    fn on_message(&mut self, msg: Message) {
        match self.replica.step(msg) {
            Ok(()) => {}
            Err(e @ Error::Refused { .. }) => {
                // Logged sparingly: a hostile peer must not flood the log either.
                let n = self.replica.refused();
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, refused = n, "peer message refused");
                } else {
                    tracing::debug!(error = %e, refused = n, "peer message refused");
                }
            }
            Err(e) => tracing::debug!(error = %e, "peer message rejected"),
        }
    }

    fn on_command(&mut self, cmd: Command<R>) {
        match cmd {
            Command::Propose { data, reply } => match self.replica.propose(Vec::new(), data) {
                Ok(at) => self.proposals.push_back(Pending { at, reply }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::ConfChange { change, reply } => {
                match self.replica.propose_conf_change(change) {
                    Ok(at) => self.conf_changes.push_back(Pending { at, reply }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::ReadIndex { reply } => {
                let (seq, ctx) = self.read_contexts.issue();
                self.reads.insert(seq, (Instant::now(), reply));
                self.replica.read_index(ctx);
            }
            Command::TransferLeader(to) => self.replica.transfer_leader(to),
            Command::Campaign => {
                if let Err(e) = self.replica.campaign() {
                    tracing::warn!(error = %e, "campaign failed");
                }
            }
            Command::ReportUnreachable(id) => self.replica.report_unreachable(id),
            Command::PeerRestarted(id) => self.replica.peer_restarted(id),
        }
    }

    fn process_ready(&mut self) -> Result<(), Error> {
        while self.replica.has_ready() {
            let mut sink = DriverSink {
                transport: &self.transport,
                jobs: &self.jobs,
                proposals: &mut self.proposals,
            };
            let out = self.replica.handle_ready_with(&mut sink)?;
            self.on_ready(out);
        }
        Ok(())
    }

    fn on_ready(&mut self, out: ReadyOutput) {
        if !out.messages.is_empty() {
            self.transport.send(out.messages);
        }
        if let Some(change) = out.role_change {
            tracing::info!(role = %Role::from(change.role), leader = change.leader_id, term = change.term, "raft role changed");
            // Reads issued in an old term may never be answered.
            for (_, (_, reply)) in self.reads.drain() {
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
        if let Some(snapshot) = out.snapshot {
            // Proposals at or below the snapshot were either committed before (then
            // the proposer saw it) or overwritten; their outcome is unknown here.
            drop_through(&mut self.proposals, snapshot.get_metadata().index);
            let _ = self.jobs.send(ApplyJob::Restore(snapshot));
        }
        queue_apply(&self.jobs, &mut self.proposals, out.committed);
        if let Some((index, conf_state)) = self.replica.take_snapshot_request() {
            let _ = self.jobs.send(ApplyJob::Capture { index, conf_state });
        }
        for rs in out.read_states {
            // Only an answer to one of this run's own requests completes a read.
            let Some(seq) = self.read_contexts.recognise(&rs.request_ctx) else {
                tracing::debug!(
                    index = rs.index,
                    context_len = rs.request_ctx.len(),
                    "read answer for a request this run did not make; ignored"
                );
                continue;
            };
            if let Some((_, reply)) = self.reads.remove(&seq) {
                self.ready_reads.push((rs.index, reply));
            }
        }
        self.answer_reads();
        self.publish_status();
    }

    /// Takes the apply task's report.
    fn on_done(&mut self, done: ApplyReport) -> Result<(), Error> {
        match done {
            ApplyReport::Failed(e) => return Err(e),
            ApplyReport::Restored(index) => {
                // As for proposals when the restore was queued.
                drop_through(&mut self.conf_changes, index);
                self.sm_applied = self.sm_applied.max(index);
            }
            ApplyReport::Applied(results) => {
                for (index, term, outcome) in results {
                    match outcome {
                        // Its proposer was answered by the apply task.
                        AppliedKind::Normal => {}
                        AppliedKind::ConfChange(cs) => {
                            resolve(&mut self.conf_changes, index, term, cs)
                        }
                        AppliedKind::Empty => {}
                    }
                    drop_through(&mut self.conf_changes, index);
                    self.sm_applied = self.sm_applied.max(index);
                }
                self.replica.advance_apply(self.sm_applied);
            }
            ApplyReport::Snapshot {
                index,
                conf_state,
                data,
            } => {
                // The entries it follows were reported applied before it was captured.
                if index > self.replica.applied_index() {
                    tracing::warn!(
                        index,
                        applied = self.replica.applied_index(),
                        "snapshot ahead of the applied index; dropped"
                    );
                } else {
                    match data {
                        SnapshotData::Inline(data) => {
                            self.replica.stage_snapshot(index, conf_state, data)?
                        }
                        SnapshotData::Staged(staged) => {
                            self.replica.stage_staged_snapshot(conf_state, staged)?
                        }
                    }
                }
            }
        }
        self.answer_reads();
        self.publish_status();
        Ok(())
    }

    /// Answers the reads whose read index the state machine has reached.
    fn answer_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.sm_applied;
        let handed_out = self.replica.handed_out_index();
        let mut queued = Vec::new();
        let mut waiting = Vec::new();
        for (index, reply) in self.ready_reads.drain(..) {
            if index <= applied {
                let _ = reply.send(Ok(applied));
            } else if index <= handed_out {
                queued.push(reply);
            } else {
                waiting.push((index, reply));
            }
        }
        self.ready_reads = waiting;
        // Reads whose index is handed out are answered by the apply task right after
        // it applies that far, without a round through this task.
        if !queued.is_empty() {
            let _ = self.jobs.send(ApplyJob::AnswerReads(queued));
        }
    }

    fn publish_status(&self) {
        let role = self.replica.role();
        let status = NodeStatus {
            id: self.replica.id(),
            role: role.role.into(),
            leader_id: role.leader_id,
            term: role.term,
            commit: self.replica.commit_index(),
            applied: self.sm_applied,
            last_index: self.replica.last_index(),
            conf_state: self.replica.conf_state().clone(),
            refused_messages: self.replica.refused(),
        };
        self.status.send_if_modified(|old| {
            if *old != status {
                *old = status;
                true
            } else {
                false
            }
        });
    }

    fn fail_all(&mut self, err: ProposeError) {
        for p in self.proposals.drain(..) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for p in self.conf_changes.drain(..) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.ready_reads.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// The driver's [`ReadySink`]: sends at once, and queues committed entries for the
/// apply task with their proposers' answer channels.
struct DriverSink<'a, T, R> {
    transport: &'a T,
    jobs: &'a mpsc::UnboundedSender<ApplyJob<R>>,
    proposals: &'a mut VecDeque<Pending<R>>,
}

impl<T: Transport, R> ReadySink for DriverSink<'_, T, R> {
    fn send(&mut self, messages: Vec<Message>) {
        self.transport.send(messages);
    }

    fn apply(&mut self, committed: Vec<Committed>) {
        queue_apply(self.jobs, self.proposals, committed);
    }
}

/// Queues `committed` for the apply task, with the answer channel of each pending
/// proposal whose entry it is. A pending proposal at an index taken by another entry
/// (another term's, or a membership change) was dropped, and is told so now.
fn queue_apply<R>(
    jobs: &mpsc::UnboundedSender<ApplyJob<R>>,
    proposals: &mut VecDeque<Pending<R>>,
    committed: Vec<Committed>,
) {
    if committed.is_empty() {
        return;
    }
    let mut replies = VecDeque::new();
    for entry in &committed {
        drop_through(proposals, entry.index.saturating_sub(1));
        if proposals.front().is_some_and(|p| p.at.index == entry.index) {
            if let Some(p) = proposals.pop_front() {
                let ours =
                    p.at.term == entry.term && matches!(entry.kind, CommittedKind::Normal { .. });
                if ours {
                    replies.push_back((entry.index, p.reply));
                } else {
                    let _ = p.reply.send(Err(ProposeError::Dropped));
                }
            }
        }
    }
    let _ = jobs.send(ApplyJob::Apply { committed, replies });
}

/// Answers the proposal at `index` if the applied entry is the one it proposed.
fn resolve<T>(pending: &mut VecDeque<Pending<T>>, index: u64, term: u64, value: T) {
    drop_through(pending, index.saturating_sub(1));
    if pending.front().is_some_and(|p| p.at.index == index) {
        if let Some(p) = pending.pop_front() {
            let result = if p.at.term == term {
                Ok(value)
            } else {
                Err(ProposeError::Dropped)
            };
            let _ = p.reply.send(result);
        }
    }
}

/// Fails every pending proposal at or below `index`: another entry took its place.
fn drop_through<T>(pending: &mut VecDeque<Pending<T>>, index: u64) {
    while pending.front().is_some_and(|p| p.at.index <= index) {
        if let Some(p) = pending.pop_front() {
            let _ = p.reply.send(Err(ProposeError::Dropped));
        }
    }
}

/// Completes at `deadline`, or never when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
