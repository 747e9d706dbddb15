//! Starting and stopping raft as this node's validator status changes.

use super::*;

impl Node {
    pub(super) fn is_validator(&self) -> bool {
        validator_ids(&self.config.borrow()).contains(&self.me)
    }

    pub(super) async fn supervise(self: Arc<Self>) -> anyhow::Result<()> {
        let mut config_rx = self.config.subscribe();
        loop {
            // Wait until raft should run: there is raft state and we are (or may be) a
            // validator, or we are a validator of a new chain.
            let has_state = !self.store.is_empty().context("reading raft state")?;
            if !self.is_validator() {
                if has_state && self.config.borrow().validators.is_empty() {
                    // Configuration not known yet; durable state is enough to start.
                } else {
                    tracing::info!("not a validator; raft idle");
                    tokio::select! {
                        _ = self.stop.requested() => return Ok(()),
                        _ = config_rx.wait_for(|c| validator_ids(c).contains(&self.me)) => {}
                    }
                    continue;
                }
            }
            let mut bootstrapped = false;
            if !has_state {
                let cfg = self.config.borrow().clone();
                let ids = validator_ids(&cfg);
                tracing::info!(voters = ?ids, "bootstrapping raft with the initial snapshot");
                let snapshot = make_snapshot(
                    BOOTSTRAP_INDEX,
                    BOOTSTRAP_INDEX,
                    voters(ids),
                    cfg.encode_to_vec(),
                );
                self.store
                    .bootstrap(snapshot)
                    .context("writing the initial snapshot")?;
                bootstrapped = true;
            }
            let (handle, stop_raft, join) = self.start_raft().await?;
            if bootstrapped {
                let first = self.config.borrow().validators.first().map(|v| raft_id(v));
                if first == Some(self.me) {
                    tracing::info!("first validator: campaigning");
                    let _ = handle.campaign().await;
                    // The other validators' services may not be up yet: a pre-vote they
                    // never saw would leave the chain waiting for a randomized election
                    // timeout (10 to 20 s with the defaults). Ask again each second until
                    // a leader is known; a pre-vote changes no term, so this disturbs
                    // nobody, and the task ends with raft.
                    let retry = handle.clone();
                    tokio::spawn(async move {
                        for _ in 0..FIRST_CAMPAIGN_RETRIES {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let s = retry.status();
                            if s.leader_id != 0 || s.role == Role::Leader {
                                return;
                            }
                            tracing::info!("no leader yet: campaigning again");
                            if retry.campaign().await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
            let end = self.block_loop(&handle).await;
            // Raft hears its peers until it has stopped: a leader hands over first.
            stop_raft.fire();
            let joined = join.await;
            self.network.set_inbound(None);
            self.network.set_peer_started(None);
            self.network.stop_reporting_unreachable();
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!(e).context("raft stopped with an error")),
                Err(e) => return Err(anyhow::anyhow!(e).context("raft task panicked")),
            }
            match end {
                LoopEnd::Shutdown => return Ok(()),
                LoopEnd::RaftStopped => anyhow::bail!("raft stopped unexpectedly"),
                LoopEnd::Removed => {
                    tracing::info!("removed from the validators: raft stopped");
                    tokio::select! {
                        _ = self.stop.requested() => return Ok(()),
                        _ = config_rx.wait_for(|c| validator_ids(c).contains(&self.me)) => {}
                    }
                    tracing::info!("added back to the validators: restarting raft");
                }
            }
        }
    }

    pub(super) async fn start_raft(
        &self,
    ) -> anyhow::Result<(
        NodeHandle<BlockOutcome>,
        shutdown::Trigger,
        tokio::task::JoinHandle<Result<(), craft_core::Error>>,
    )> {
        let replica = ReplicaConfig {
            id: self.me,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            check_quorum: self.cfg.check_quorum,
            pre_vote: true,
            max_size_per_msg: 4 * 1024 * 1024,
            max_inflight_msgs: 256,
            // With blocks paced by `block_interval`, followers hear of each commit at
            // once: otherwise they learn it with the next heartbeat, and a real
            // controller fetches the block from its peers first, bypassing us. At full
            // speed (`block_interval` 0) the next block's append carries the commit, and
            // telling them at once would double the messages per block (it cost an
            // all-ours cluster 22% of its blocks/s; docs/migration.md).
            broadcast_commit: self.config.borrow().block_interval > 0,
            // The state is one small configuration: snapshot after every block.
            snapshot_interval: 1,
            log_retain: self.cfg.log_retain,
        };
        let driver = DriverConfig {
            tick_interval: Duration::from_millis(self.cfg.tick_interval_in_millis),
            proposal_timeout: Duration::from_millis(
                self.cfg.tick_interval_in_millis * self.cfg.election_tick as u64 * 2,
            )
            .max(Duration::from_secs(5)),
            // Stopping while leading, hand over first (the others then go on within a
            // round trip, not an election timeout), but for no longer than an election
            // timeout would have taken, and at most 2 s.
            hand_off_on_stop: Duration::from_millis(
                self.cfg.tick_interval_in_millis * self.cfg.election_tick as u64,
            )
            .min(Duration::from_secs(2)),
            ..DriverConfig::default()
        };
        let sm = BlockStateMachine::new(
            self.controller.clone(),
            self.config.clone(),
            self.metrics.clone(),
            self.prechecks.clone(),
            self.stall.clone(),
        );
        let (stop_tx, stop_rx) = shutdown::channel();
        let (handle, join) = craft_core::start(
            replica,
            driver,
            self.store.clone(),
            sm,
            self.network.clone(),
            async move { stop_rx.requested().await },
        )
        .await
        .context("starting raft")?;
        let h = handle.clone();
        self.network.set_inbound(Some(Arc::new(move |m| h.step(m))));
        let h = handle.clone();
        self.network
            .set_peer_started(Some(Arc::new(move |id| h.peer_restarted(id))));
        let h = handle.clone();
        self.network
            .report_unreachable_to(move |id| h.report_unreachable(id));
        Ok((handle, stop_tx, join))
    }

    pub(super) fn publish_status(&self, st: &craft_core::NodeStatus) {
        self.metrics.term.set(st.term as i64);
        self.metrics.leader.set(st.leader_id as i64);
        self.metrics.last_index.set(st.last_index as i64);
        self.metrics.commit_index.set(st.commit as i64);
        self.metrics
            .refused_messages
            .set(st.refused_messages as i64);
        self.metrics.role.set(match st.role {
            Role::Follower => 0,
            Role::PreCandidate => 1,
            Role::Candidate => 2,
            Role::Leader => 3,
        });
    }
}
