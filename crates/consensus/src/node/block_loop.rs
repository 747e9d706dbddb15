//! The leader's block loop: a proposal from the controller each `block_interval`,
//! proposed to raft, and leadership handed over when the controller gives none.

use super::*;

impl Node {
    pub(super) async fn block_loop(&self, handle: &NodeHandle<BlockOutcome>) -> LoopEnd {
        let mut status_rx = handle.watch_status();
        let mut config_rx = self.config.subscribe();
        let tick = Duration::from_millis(self.cfg.tick_interval_in_millis);
        let mut was_voter = false;
        let mut last_fetch: Option<Instant> = None;
        let mut last_valid = Instant::now();
        let mut fetch_failures = 0u32;
        loop {
            if self.stop.is_requested() {
                return LoopEnd::Shutdown;
            }
            if status_rx.has_changed().is_err() {
                return LoopEnd::RaftStopped;
            }
            let st = status_rx.borrow_and_update().clone();
            self.publish_status(&st);
            let cs = &st.conf_state;
            let voter = cs.voters.contains(&self.me) || cs.voters_outgoing.contains(&self.me);
            if voter {
                was_voter = true;
            } else if was_voter && cs.voters_outgoing.is_empty() {
                return LoopEnd::Removed;
            }
            if st.role != Role::Leader || st.applied < st.commit {
                tokio::select! {
                    _ = self.stop.requested() => {}
                    _ = status_rx.changed() => {}
                    _ = tokio::time::sleep(tick) => {}
                }
                continue;
            }
            let chain = self.config.borrow().clone();
            if !self.reconcile_membership(handle, &st, &chain).await {
                tokio::select! {
                    _ = self.stop.requested() => {}
                    _ = tokio::time::sleep(tick) => {}
                }
                continue;
            }
            let interval = Duration::from_secs(u64::from(chain.block_interval));
            if let Some(due) = last_fetch.map(|t| t + interval) {
                if Instant::now() < due {
                    tokio::select! {
                        _ = self.stop.requested() => {}
                        _ = status_rx.changed() => {}
                        _ = config_rx.changed() => {}
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                    continue;
                }
            }
            let started = Instant::now();
            last_fetch = Some(started);
            let proposal = match self.controller.get_proposal().await {
                Ok(p) => {
                    fetch_failures = 0;
                    p
                }
                Err(e) => {
                    fetch_failures += 1;
                    if fetch_failures == 1 || fetch_failures.is_power_of_two() {
                        tracing::warn!(error = %e, attempts = fetch_failures, "GetProposal failed");
                    }
                    self.maybe_hand_over(handle, &st, &mut last_valid).await;
                    tokio::time::sleep(tick).await;
                    continue;
                }
            };
            if proposal.height != chain.height + 1 {
                tracing::debug!(
                    proposal = proposal.height,
                    height = chain.height,
                    "proposal not at the next height"
                );
                self.maybe_hand_over(handle, &st, &mut last_valid).await;
                tokio::time::sleep(tick).await;
                continue;
            }
            last_valid = Instant::now();
            self.metrics.proposals.inc();
            let height = proposal.height;
            let data = proposal.encode_to_vec();
            // Our own controller checks the proposal while raft replicates it.
            self.prechecks.start(
                self.controller.clone(),
                proposal,
                self.metrics.check_latency.clone(),
            );
            // A shutdown does not wait for the proposal: once stopped, this node's
            // part in it is over either way (raft keeps what it has made durable).
            let outcome = tokio::select! {
                outcome = handle.propose(data) => outcome,
                _ = self.stop.requested() => return LoopEnd::Shutdown,
            };
            match outcome {
                Ok(BlockOutcome::Committed(h)) => {
                    let took = started.elapsed();
                    self.metrics.block_latency.observe(took.as_secs_f64());
                    self.metrics
                        .last_commit_latency_us
                        .set(took.as_micros() as i64);
                    tracing::debug!(height = h, term = st.term, ?took, "block agreed");
                }
                Ok(BlockOutcome::Skipped(why)) => {
                    tracing::debug!(height, why, "proposal applied without commit")
                }
                Err(e) => {
                    tracing::info!(height, term = st.term, error = %e, "proposal not committed")
                }
            }
        }
    }

    /// Hands leadership to another voter when the controller has given no valid
    /// proposal for `transfer_leader_after_secs`.
    pub(super) async fn maybe_hand_over(
        &self,
        handle: &NodeHandle<BlockOutcome>,
        st: &craft_core::NodeStatus,
        last_valid: &mut Instant,
    ) {
        let after = self.cfg.transfer_leader_after_secs;
        if after == 0 || last_valid.elapsed() < Duration::from_secs(after) {
            return;
        }
        if let Some(&to) = st.conf_state.voters.iter().find(|v| **v != self.me) {
            tracing::warn!(
                to,
                "no valid proposal for {after}s: transferring leadership"
            );
            let _ = handle.transfer_leader(to).await;
        }
        *last_valid = Instant::now();
    }
}
