//! The replicated state machine of the consensus service.
//!
//! Log entries are encoded `common.Proposal`s; applying one checks it with the node's
//! own controller and commits it (empty proof). The state is the chain's
//! `ConsensusConfiguration` (height, block interval, validators); snapshot data is that
//! configuration, encoded, as the existing raft service expects.
//!
//! An entry counts as applied only once the controller has its block: `CheckProposal`
//! and `CommitBlock` succeeded, or the controller's own height reached the block's
//! (it synced the block from its peers). A refusal or an error is retried with backoff on
//! the apply task, never skipped, so raft's applied index never runs ahead of the chain.
//!
//! The snapshot is not a pure function of the log, and cannot be: the configuration
//! (validators, block interval) is computed by the controller, which is the chain's
//! source of truth. What it holds is the controller's configuration after every block up
//! to the snapshot's index, or a newer one if the controller synced further. Both are
//! the chain's state at some height at or above the snapshot's, which is all a
//! restoring node needs: [`StateMachine::restore`] keeps whichever view is newer, and the
//! controller, not the snapshot, decides the next height.

use craft_core::sync::LockExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cita_proto::common::{ConsensusConfiguration, Proposal};
use craft_controller::{retry, Backoff, Controller, ControllerError};
use craft_core::raft::eraftpb::Snapshot;
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};
use prost::Message as _;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The block at this height was committed to the controller.
    Committed(u64),
    /// Nothing to commit: not a block, or the controller already has a block at this
    /// height (committed before, or synced from its peers); the reason. A block the
    /// controller refuses is never skipped: it is retried until it is taken or synced.
    Skipped(&'static str),
}

/// Decodes a snapshot's data, or a configuration pushed by the controller.
pub fn decode_configuration(bytes: &[u8]) -> Result<ConsensusConfiguration, prost::DecodeError> {
    ConsensusConfiguration::decode(bytes)
}

/// What our snapshots add to the configuration: the last block this node committed to
/// its controller and the raft entry that carried it, so a restart can offer that block
/// again to a controller that lost it. Its fields are numbered far above the
/// configuration's (1-3), so the snapshot data stays a valid `ConsensusConfiguration`
/// for any decoder (the existing service skips unknown fields, as protobuf requires),
/// and a snapshot without them (the existing service's) reads as zeros.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct LastBlock {
    /// Height of the block.
    #[prost(uint64, tag = "1001")]
    pub height: u64,
    /// Raft index of the entry that committed it.
    #[prost(uint64, tag = "1002")]
    pub index: u64,
}

/// Encodes a snapshot's data: `config`, followed by `last` when known.
pub fn encode_snapshot(config: &ConsensusConfiguration, last: Option<LastBlock>) -> Vec<u8> {
    let mut data = config.encode_to_vec();
    if let Some(last) = last {
        // Protobuf messages concatenate: a decoder of either type skips the other's
        // fields.
        data.extend_from_slice(&last.encode_to_vec());
    }
    data
}

/// The [`LastBlock`] recorded in a snapshot's data, if any.
pub fn snapshot_last_block(data: &[u8]) -> Option<LastBlock> {
    LastBlock::decode(data)
        .ok()
        .filter(|last| last.height > 0 && last.index > 0)
}

/// Checks a snapshot's data before it is kept: a configuration naming at least one
/// validator. A snapshot without validators would take this node out of the chain.
pub fn check_snapshot_data(data: &[u8]) -> Result<(), String> {
    let cfg =
        decode_configuration(data).map_err(|e| format!("not a ConsensusConfiguration: {e}"))?;
    if cfg.validators.is_empty() {
        return Err("a configuration without validators".into());
    }
    if cfg.validators.iter().any(|v| v.is_empty()) {
        return Err("a configuration with an empty validator address".into());
    }
    Ok(())
}

/// The chain state shared between the state machine, the block loop and the gRPC
/// service: the latest configuration this node knows.
pub type SharedConfig = watch::Sender<ConsensusConfiguration>;

/// A `CheckProposal` the leader started for its own proposal while the proposal
/// replicates, so that the check is off the block's critical path. The check is still
/// made before `CommitBlock`, with the same controller at the same height.
pub struct PreCheck {
    proposal: Proposal,
    result: tokio::task::JoinHandle<Result<bool, ControllerError>>,
}

/// Where the block loop leaves its [`PreCheck`] for the state machine.
#[derive(Clone, Default)]
pub struct PreCheckSlot(Arc<Mutex<Option<PreCheck>>>);

impl PreCheckSlot {
    /// Starts checking `proposal` with `controller` now, timing the call into
    /// `latency`; replaces any earlier check.
    pub fn start<C: Controller>(
        &self,
        controller: Arc<C>,
        proposal: Proposal,
        latency: prometheus::Histogram,
    ) {
        let p = proposal.clone();
        let result = tokio::spawn(async move {
            let _timer = latency.start_timer();
            controller.check_proposal(p).await
        });
        let old = self.0.locked().replace(PreCheck { proposal, result });
        if let Some(old) = old {
            old.result.abort();
        }
    }

    /// The check started for exactly `proposal`, if any.
    fn take(
        &self,
        proposal: &Proposal,
    ) -> Option<tokio::task::JoinHandle<Result<bool, ControllerError>>> {
        let mut slot = self.0.locked();
        match slot.take() {
            Some(pre) if pre.proposal == *proposal => Some(pre.result),
            Some(other) if other.proposal.height > proposal.height => {
                *slot = Some(other);
                None
            }
            Some(stale) => {
                stale.result.abort();
                None
            }
            None => None,
        }
    }
}

/// Since when this node's controller has refused the committed block being applied
/// (it is behind and has not synced it yet), shared by the state machine with the
/// block loop, which hands leadership over when it lasts.
#[derive(Clone, Default)]
pub struct ApplyStall(Arc<Mutex<Option<Instant>>>);

impl ApplyStall {
    /// When the controller first refused the block being applied; `None` while no
    /// block waits on it.
    pub fn since(&self) -> Option<Instant> {
        *self.0.locked()
    }

    fn begin(&self) {
        self.0.locked().get_or_insert_with(Instant::now);
    }

    fn end(&self) {
        *self.0.locked() = None;
    }
}

/// Applies committed proposals to the node's controller.
pub struct BlockStateMachine<C> {
    controller: Arc<C>,
    config: Arc<SharedConfig>,
    metrics: Metrics,
    backoff: Backoff,
    prechecks: PreCheckSlot,
    stall: ApplyStall,
    /// The last block this node committed to its controller, recorded in snapshots.
    last_block: Option<LastBlock>,
}

impl<C: Controller> BlockStateMachine<C> {
    /// A state machine committing through `controller`, publishing into `config`;
    /// checks the leader started early are taken from `prechecks`; a block the
    /// controller refuses is reported in `stall` until it applies.
    pub fn new(
        controller: Arc<C>,
        config: Arc<SharedConfig>,
        metrics: Metrics,
        prechecks: PreCheckSlot,
        stall: ApplyStall,
    ) -> Self {
        Self {
            controller,
            config,
            metrics,
            backoff: Backoff::default(),
            prechecks,
            stall,
            last_block: None,
        }
    }

    async fn apply_block(&mut self, index: u64, data: &[u8]) -> BlockOutcome {
        let proposal = match Proposal::decode(data) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(index, error = %e, "committed entry is not a proposal; skipped");
                return BlockOutcome::Skipped("undecodable");
            }
        };
        let height = self.config.borrow().height;
        if proposal.height <= height {
            tracing::debug!(
                index,
                proposal = proposal.height,
                height,
                "block already committed"
            );
            return BlockOutcome::Skipped("already committed");
        }
        let started = Instant::now();
        let controller = self.controller.clone();
        // The leader's early check, unless it failed or was cancelled: then check
        // again here, with retries.
        let early = match self.prechecks.take(&proposal) {
            Some(handle) => handle.await.ok().and_then(Result::ok),
            None => None,
        };
        // A block raft committed is never skipped: it is applied only once this node's
        // controller has it, either through this CheckProposal and CommitBlock, or by
        // syncing it from its peers (its height reaches the block's). Until then the
        // apply task waits and retries; raft keeps running.
        let mut attempt = 0u32;
        let mut early = early;
        // Every failed call, also one retried at once, means the block waits on a
        // controller that does not answer: reported to the block loop.
        let stall = self.stall.clone();
        let stalled = move |e: &ControllerError| {
            stall.begin();
            e.is_transient()
        };
        loop {
            let checked = match early.take() {
                Some(ok) => Ok(ok),
                None => {
                    let timer = self.metrics.check_latency.start_timer();
                    let checked = retry("CheckProposal", &self.backoff, &stalled, || {
                        controller.check_proposal(proposal.clone())
                    })
                    .await;
                    timer.observe_duration();
                    checked
                }
            };
            let refused = match checked {
                Ok(true) => {
                    match retry("CommitBlock", &self.backoff, &stalled, || {
                        controller.commit_block(proposal.clone())
                    })
                    .await
                    {
                        Ok(new_config) => {
                            let h = proposal.height;
                            tracing::debug!(
                                height = h,
                                index,
                                validators = new_config.validators.len(),
                                "block committed"
                            );
                            self.metrics.height.set(new_config.height as i64);
                            self.metrics
                                .last_commit_latency_us
                                .set(started.elapsed().as_micros() as i64);
                            self.config.send_replace(new_config);
                            self.last_block = Some(LastBlock { height: h, index });
                            return BlockOutcome::Committed(h);
                        }
                        Err(e) => format!("CommitBlock refused: {e}"),
                    }
                }
                Ok(false) => "CheckProposal rejected it".to_string(),
                Err(e) => format!("CheckProposal failed: {e}"),
            };
            attempt += 1;
            self.stall.begin();
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(
                    index,
                    height = proposal.height,
                    attempt,
                    reason = %refused,
                    "committed block not applied yet: waiting for the controller to take it or sync it"
                );
            }
            if let Some(outcome) = self.synced_past(&proposal, attempt).await {
                return outcome;
            }
        }
    }

    /// After a refused attempt: waits a backoff (or until the configuration changes),
    /// then asks the controller where it is. `Some` once its height has reached the
    /// proposal's: another node's block at that height was synced into it.
    async fn synced_past(&self, proposal: &Proposal, attempt: u32) -> Option<BlockOutcome> {
        let mut changes = self.config.subscribe();
        tokio::select! {
            () = tokio::time::sleep(self.backoff.delay(attempt)) => {}
            _ = changes.changed() => {}
        }
        if let Ok(current) = self.controller.ping().await {
            if current.height > self.config.borrow().height {
                self.metrics.height.set(current.height as i64);
                self.config.send_replace(current);
            }
        }
        let height = self.config.borrow().height;
        (height >= proposal.height).then(|| {
            tracing::info!(
                height = proposal.height,
                controller = height,
                "the controller synced past the block; applied"
            );
            BlockOutcome::Skipped("synced by the controller")
        })
    }
}

impl<C: Controller> StateMachine for BlockStateMachine<C> {
    type Response = BlockOutcome;

    async fn apply(&mut self, entry: &Committed) -> BlockOutcome {
        match &entry.kind {
            CommittedKind::Normal { data, .. } => {
                let outcome = self.apply_block(entry.index, data).await;
                self.stall.end();
                outcome
            }
            CommittedKind::Empty => BlockOutcome::Skipped("leader no-op"),
            CommittedKind::ConfChange { .. } => BlockOutcome::Skipped("membership change"),
        }
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // The configuration is a few hundred bytes: serialised at once.
        SnapshotJob::ready(encode_snapshot(&self.config.borrow(), self.last_block))
    }

    async fn restore(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let cfg = decode_configuration(&snapshot.data).map_err(|e| {
            format!(
                "snapshot at index {} is not a ConsensusConfiguration: {e}",
                snapshot.get_metadata().index
            )
        })?;
        self.config.send_if_modified(|cur| {
            // A controller that synced further keeps its newer view.
            if cfg.height >= cur.height {
                *cur = cfg.clone();
                true
            } else {
                false
            }
        });
        self.metrics.height.set(self.config.borrow().height as i64);
        self.last_block = snapshot_last_block(&snapshot.data);
        Ok(())
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        check_snapshot_data(data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::VecDeque;
    use std::time::Duration;

    use craft_controller::PING_HEIGHT;

    use super::*;

    /// A controller whose `CheckProposal` answers come from a script (then `true`), and
    /// whose height can be moved as if it synced blocks from its peers.
    #[derive(Default)]
    struct Scripted {
        checks: Mutex<VecDeque<Result<bool, ControllerError>>>,
        commits: Mutex<VecDeque<Result<(), ControllerError>>>,
        height: Mutex<u64>,
        committed: Mutex<Vec<u64>>,
    }

    impl Scripted {
        fn config(&self) -> ConsensusConfiguration {
            ConsensusConfiguration {
                height: *self.height.lock().unwrap(),
                ..Default::default()
            }
        }
    }

    impl Controller for Scripted {
        async fn get_proposal(&self) -> Result<Proposal, ControllerError> {
            Err(ControllerError::Unavailable("not used".into()))
        }

        async fn check_proposal(&self, _: Proposal) -> Result<bool, ControllerError> {
            self.checks.lock().unwrap().pop_front().unwrap_or(Ok(true))
        }

        async fn commit_block(
            &self,
            proposal: Proposal,
        ) -> Result<ConsensusConfiguration, ControllerError> {
            if proposal.height != PING_HEIGHT {
                self.commits.lock().unwrap().pop_front().unwrap_or(Ok(()))?;
                *self.height.lock().unwrap() = proposal.height;
                self.committed.lock().unwrap().push(proposal.height);
            }
            Ok(self.config())
        }
    }

    fn machine(controller: &Arc<Scripted>) -> BlockStateMachine<Scripted> {
        let config = Arc::new(watch::Sender::new(ConsensusConfiguration::default()));
        BlockStateMachine::new(
            controller.clone(),
            config,
            Metrics::new(&[0.001, 0.01]).unwrap(),
            PreCheckSlot::default(),
            ApplyStall::default(),
        )
    }

    fn block(height: u64) -> Vec<u8> {
        Proposal {
            height,
            data: vec![7; 8].into(),
        }
        .encode_to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_or_failed_check_is_retried_until_the_block_is_committed() {
        let controller = Arc::new(Scripted::default());
        controller.checks.lock().unwrap().extend([
            Ok(false),
            Err(ControllerError::Status {
                call: "CheckProposal",
                code: 1,
            }),
            Err(ControllerError::Unavailable("restarting".into())),
            Ok(false),
        ]);
        controller
            .commits
            .lock()
            .unwrap()
            .extend([Err(ControllerError::Status {
                call: "CommitBlock",
                code: 1,
            })]);
        let mut sm = machine(&controller);
        assert_eq!(
            sm.apply_block(5, &block(1)).await,
            BlockOutcome::Committed(1)
        );
        assert_eq!(*controller.committed.lock().unwrap(), vec![1]);
        assert!(controller.checks.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_the_controller_keeps_refusing_waits_until_it_syncs_past_it() {
        let controller = Arc::new(Scripted::default());
        controller
            .checks
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(Ok(false), 10_000));
        let mut sm = machine(&controller);
        let entry = block(1);
        let apply = sm.apply_block(9, &entry);
        tokio::pin!(apply);
        // An hour of (virtual) refusals: still not applied.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), &mut apply)
                .await
                .is_err(),
            "a refused block must not be skipped"
        );
        // The controller syncs height 1 from its peers: now it is applied, not committed
        // a second time.
        *controller.height.lock().unwrap() = 1;
        assert_eq!(
            apply.await,
            BlockOutcome::Skipped("synced by the controller")
        );
        assert!(controller.committed.lock().unwrap().is_empty());
    }
}
