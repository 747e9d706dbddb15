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
        let mut trouble = Trouble::new();
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
            trouble.observe(&st);
            let cs = &st.conf_state;
            let voter = cs.voters.contains(&self.me) || cs.voters_outgoing.contains(&self.me);
            if voter {
                was_voter = true;
            } else if was_voter && cs.voters_outgoing.is_empty() {
                return LoopEnd::Removed;
            }
            if st.role != Role::Leader || st.applied < st.commit {
                if st.role == Role::Leader {
                    // This node's controller has not taken the last committed block
                    // (it is behind and has not synced): it gives no proposal for
                    // the next height either, while another node's could.
                    self.maybe_hand_over(handle, &st, &mut trouble).await;
                }
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
                    trouble.refused();
                    self.maybe_hand_over(handle, &st, &mut trouble).await;
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
                trouble.refused();
                self.maybe_hand_over(handle, &st, &mut trouble).await;
                tokio::time::sleep(tick).await;
                continue;
            }
            trouble.answered();
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

    /// Hands leadership to the next voter when, for the hand-over delay
    /// ([`crate::config::ConsensusConfig::hand_over_after`]) of its leadership, this
    /// node's controller has only refused: it is behind, so it gives no proposal for
    /// the next height or does not take the last committed block. A controller that is
    /// slow but answers keeps its leader. Each leader picks the voter after itself, so
    /// leadership walks round the validators until it reaches one whose controller is
    /// not behind; the blocks that node commits are what tell the others' controllers
    /// to sync.
    pub(super) async fn maybe_hand_over(
        &self,
        handle: &NodeHandle<BlockOutcome>,
        st: &craft_core::NodeStatus,
        trouble: &mut Trouble,
    ) {
        let interval = self.config.borrow().block_interval;
        let Some(after) = self.cfg.hand_over_after(interval) else {
            return;
        };
        let Some(since) = trouble.since(self.stall.since()) else {
            return;
        };
        if since.elapsed() < after {
            return;
        }
        if let Some(to) = next_voter(&st.conf_state.voters, self.me) {
            tracing::warn!(
                to,
                term = st.term,
                applied = st.applied,
                commit = st.commit,
                "the controller has refused for {after:?}: transferring leadership"
            );
            let _ = handle.transfer_leader(to).await;
        }
        trouble.restart();
    }
}

/// Since when this node, as leader, has had only refusals from its controller.
pub(super) struct Trouble {
    term: u64,
    leading: bool,
    /// When this node became leader (or last handed over).
    led_since: Instant,
    /// First failed or wrong-height `GetProposal` since the last good one.
    refused_since: Option<Instant>,
}

impl Trouble {
    fn new() -> Self {
        Trouble {
            term: 0,
            leading: false,
            led_since: Instant::now(),
            refused_since: None,
        }
    }

    /// Starts over when this node becomes leader or enters a new term.
    fn observe(&mut self, st: &craft_core::NodeStatus) {
        let leading = st.role == Role::Leader;
        if leading != self.leading || st.term != self.term {
            self.leading = leading;
            self.term = st.term;
            self.restart();
        }
    }

    fn restart(&mut self) {
        self.led_since = Instant::now();
        self.refused_since = None;
    }

    fn refused(&mut self) {
        self.refused_since.get_or_insert_with(Instant::now);
    }

    fn answered(&mut self) {
        self.refused_since = None;
    }

    /// Since when the controller has only refused, as leader: the earlier of a
    /// refused fetch and a refused committed block (`stalled`), but not before this
    /// leadership began.
    fn since(&self, stalled: Option<Instant>) -> Option<Instant> {
        let first = match (self.refused_since, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first.map(|t| t.max(self.led_since))
    }
}

/// The voter after `me` in id order, wrapping round; `None` when `me` is alone.
fn next_voter(voters: &[u64], me: u64) -> Option<u64> {
    let mut others: Vec<u64> = voters.iter().copied().filter(|v| *v != me).collect();
    others.sort_unstable();
    others
        .iter()
        .copied()
        .find(|v| *v > me)
        .or_else(|| others.first().copied())
}

#[cfg(test)]
mod tests {
    use super::{next_voter, Trouble};
    use std::time::{Duration, Instant};

    #[test]
    fn only_refusals_during_this_leadership_count() {
        let mut t = Trouble::new();
        let start = t.led_since;
        // Nothing refused: no trouble, however long the controller takes.
        assert_eq!(t.since(None), None);
        // A committed block refused before this leadership began counts from its start.
        let before = start.checked_sub(Duration::from_secs(60)).unwrap_or(start);
        assert_eq!(t.since(Some(before)), Some(start));
        // A refused fetch counts from the first refusal, until a good answer.
        t.refused();
        let first = t.since(None).unwrap_or(start);
        std::thread::sleep(Duration::from_millis(5));
        t.refused();
        assert_eq!(t.since(None), Some(first));
        t.answered();
        assert_eq!(t.since(None), None);
        // A hand-over starts the clock again.
        t.refused();
        std::thread::sleep(Duration::from_millis(5));
        t.restart();
        assert_eq!(t.since(None), None);
        let later = Instant::now();
        assert!(t.since(Some(later)).is_some_and(|s| s >= t.led_since));
    }

    #[test]
    fn leadership_walks_round_the_voters() {
        let voters = [30, 10, 20, 40];
        assert_eq!(next_voter(&voters, 10), Some(20));
        assert_eq!(next_voter(&voters, 20), Some(30));
        assert_eq!(next_voter(&voters, 40), Some(10));
        // Starting anywhere, four hand-overs visit every voter once.
        let mut seen = vec![20];
        let mut at = 20;
        for _ in 0..3 {
            at = next_voter(&voters, at).unwrap_or(0);
            seen.push(at);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![10, 20, 30, 40]);
        // A leader that is no longer a voter hands over to the lowest above it.
        assert_eq!(next_voter(&voters, 25), Some(30));
        assert_eq!(next_voter(&[7], 7), None);
    }
}
