//! The replicated state machine of the consensus service.
//!
//! Log entries are encoded `common.Proposal`s; applying one checks it with the node's
//! own controller and commits it (empty proof). The state is the chain's
//! `ConsensusConfiguration` (height, block interval, validators); snapshot data is that
//! configuration, encoded, as the existing raft service expects.

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
    /// Nothing to commit (not a block, already committed, or refused); the reason.
    Skipped(&'static str),
}

/// Decodes a snapshot's data, or a configuration pushed by the controller.
pub fn decode_configuration(bytes: &[u8]) -> Result<ConsensusConfiguration, prost::DecodeError> {
    ConsensusConfiguration::decode(bytes)
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
        let old = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(PreCheck { proposal, result });
        if let Some(old) = old {
            old.result.abort();
        }
    }

    /// The check started for exactly `proposal`, if any.
    fn take(
        &self,
        proposal: &Proposal,
    ) -> Option<tokio::task::JoinHandle<Result<bool, ControllerError>>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
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

/// Applies committed proposals to the node's controller.
pub struct BlockStateMachine<C> {
    controller: Arc<C>,
    config: Arc<SharedConfig>,
    metrics: Metrics,
    backoff: Backoff,
    prechecks: PreCheckSlot,
}

impl<C: Controller> BlockStateMachine<C> {
    /// A state machine committing through `controller`, publishing into `config`;
    /// checks the leader started early are taken from `prechecks`.
    pub fn new(
        controller: Arc<C>,
        config: Arc<SharedConfig>,
        metrics: Metrics,
        prechecks: PreCheckSlot,
    ) -> Self {
        Self {
            controller,
            config,
            metrics,
            backoff: Backoff::default(),
            prechecks,
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
        let checked = match early {
            Some(ok) => Ok(ok),
            None => {
                let timer = self.metrics.check_latency.start_timer();
                let checked = retry(
                    "CheckProposal",
                    &self.backoff,
                    ControllerError::is_transient,
                    || controller.check_proposal(proposal.clone()),
                )
                .await;
                timer.observe_duration();
                checked
            }
        };
        match checked {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    index,
                    height = proposal.height,
                    "controller rejected a committed proposal; waiting for it to sync"
                );
                return BlockOutcome::Skipped("rejected by CheckProposal");
            }
            Err(e) => {
                tracing::warn!(index, height = proposal.height, error = %e, "CheckProposal failed");
                return BlockOutcome::Skipped("CheckProposal failed");
            }
        }
        let committed = retry(
            "CommitBlock",
            &self.backoff,
            ControllerError::is_transient,
            || controller.commit_block(proposal.clone()),
        )
        .await;
        match committed {
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
                BlockOutcome::Committed(h)
            }
            Err(e) => {
                tracing::warn!(index, height = proposal.height, error = %e, "CommitBlock refused");
                BlockOutcome::Skipped("CommitBlock refused")
            }
        }
    }
}

impl<C: Controller> StateMachine for BlockStateMachine<C> {
    type Response = BlockOutcome;

    async fn apply(&mut self, entry: &Committed) -> BlockOutcome {
        match &entry.kind {
            CommittedKind::Normal { data, .. } => self.apply_block(entry.index, data).await,
            CommittedKind::Empty => BlockOutcome::Skipped("leader no-op"),
            CommittedKind::ConfChange { .. } => BlockOutcome::Skipped("membership change"),
        }
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // The configuration is a few hundred bytes: serialised at once.
        SnapshotJob::ready(self.config.borrow().encode_to_vec())
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
        Ok(())
    }
}
