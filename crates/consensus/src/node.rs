//! One consensus node: wires the controller, the network, durable storage and the raft
//! engine together, and runs the block loop.
//!
//! Life of a node:
//! 1. Serve gRPC (ConsensusService, NetworkMsgHandlerService, Health), register with the
//!    network, ping the controller for its configuration.
//! 2. Start raft once this node is a validator (or has raft state already). An empty
//!    store is bootstrapped with the initial snapshot every validator installs: index 5,
//!    term 5, voters = validators' raft ids, data = the configuration. The first
//!    validator campaigns.
//! 3. As leader: keep raft membership equal to the validator list (a leader that is no
//!    longer a validator hands leadership over first), fetch a proposal every
//!    `block_interval`, propose it if its height is the next one, and hand leadership
//!    over if the controller gives no valid proposal for too long.
//! 4. A node removed from the validators stops raft, and starts it again when added back.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cita_proto::common::{ConsensusConfiguration, Proposal};
use cita_proto::consensus::consensus_service_server::ConsensusServiceServer;
use cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerServiceServer;
use craft_controller::{retry, Backoff, Controller, ControllerError, GrpcController};
use craft_core::raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry, EntryType,
};
use craft_core::raft::{GetEntriesContext, Storage as _};
use craft_core::{make_snapshot, voters, DriverConfig, LogStore, NodeHandle, ReplicaConfig, Role};
use craft_storage::{RocksLogStore, StoreOptions};
use craft_transport::cita::{CitaNetwork, CitaNetworkConfig};
use craft_transport::limits::{ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use prost::Message as _;
use tokio::sync::watch;
use tracing::Instrument;

use crate::chain::{
    check_snapshot_data, decode_configuration, snapshot_last_block, BlockOutcome,
    BlockStateMachine, PreCheckSlot, SharedConfig,
};
use crate::config::{read_node_address, ConsensusConfig};
use crate::metrics::Metrics;
use crate::raft_id::raft_id;
use crate::service::ConsensusRpc;
use crate::timed_store::TimedStore;

/// Index and term of the initial snapshot every validator installs.
pub const BOOTSTRAP_INDEX: u64 = 5;

/// How many times, a second apart, the first validator of a new chain campaigns again
/// while no leader is known.
const FIRST_CAMPAIGN_RETRIES: u32 = 60;

type Store = TimedStore<RocksLogStore>;

/// How the block loop ended.
enum LoopEnd {
    Shutdown,
    Removed,
    /// The raft task ended on its own (a storage error); its join result says why.
    RaftStopped,
}

/// The raft ids of a validator list.
pub fn validator_ids(cfg: &ConsensusConfiguration) -> BTreeSet<u64> {
    cfg.validators.iter().map(|v| raft_id(v)).collect()
}

/// Everything a running node shares between its tasks.
struct Node {
    cfg: ConsensusConfig,
    me: u64,
    store: Store,
    controller: Arc<GrpcController>,
    network: CitaNetwork,
    config: Arc<SharedConfig>,
    metrics: Metrics,
    prechecks: PreCheckSlot,
    stop: watch::Receiver<bool>,
}

/// Runs the service until `shutdown` completes.
pub async fn run(
    cfg: ConsensusConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = read_node_address(std::path::Path::new(&cfg.node_addr))?;
    let me = raft_id(&address);
    let span = tracing::info_span!("consensus", node_id = me);
    run_node(cfg, me, shutdown).instrument(span).await
}

async fn run_node(
    cfg: ConsensusConfig,
    me: u64,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(
        raft_id = me,
        version = env!("CARGO_PKG_VERSION"),
        "consensus starting"
    );
    let metrics = Metrics::new(&cfg.metrics_buckets).context("creating metrics")?;
    let rocks = RocksLogStore::open(
        &cfg.raft_data_path,
        StoreOptions::default()
            .with_entry_cache_bytes(cfg.entry_cache_bytes)
            .with_block_cache_bytes(cfg.rocksdb_block_cache_bytes)
            .with_write_buffer_bytes(cfg.rocksdb_write_buffer_bytes),
    )
    .with_context(|| {
        format!(
            "opening raft data at {} (consensus_raft.raft_data_path)",
            cfg.raft_data_path
        )
    })?;
    let store = TimedStore::new(
        rocks,
        metrics.fsync_latency.clone(),
        metrics.store_writes.clone(),
    );
    let controller_addr = format!("http://{}:{}", cfg.service_host, cfg.controller_port);
    tracing::info!(addr = %controller_addr, "controller grpc addr");
    let controller = Arc::new(
        GrpcController::new(&controller_addr, Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("controller address: {e}"))?,
    );
    let network_addr = format!("http://{}:{}", cfg.service_host, cfg.network_port);
    tracing::info!(addr = %network_addr, "network grpc addr");
    let network = CitaNetwork::new(CitaNetworkConfig {
        raft_id: me,
        network_addr,
        handler_host: cfg.handler_host.clone(),
        handler_port: cfg.grpc_listen_port,
        queue_capacity: 1024,
        probe_interval: Duration::from_millis(500),
        // Raft heartbeats reach every follower each heartbeat_tick; a bound origin this
        // long silent has left.
        stale_after: Duration::from_secs(10),
    })
    .context("network address")?;

    let snapshot = store
        .latest_snapshot()
        .context("reading the latest snapshot")?;
    let initial = if snapshot.get_metadata().index > 0 {
        check_snapshot_data(&snapshot.data)
            .and_then(|()| decode_configuration(&snapshot.data).map_err(|e| e.to_string()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "raft data at {} (consensus_raft.raft_data_path): its snapshot at index {} \
                     cannot be restored: {e}. This version never keeps such a snapshot; the \
                     directory was written by another program or damaged. To recover, run \
                     `consensus reset-raft -c <config>`: it keeps the term and vote and \
                     drops the snapshot and log, and the leader sends this node a fresh \
                     snapshot when it starts (see README, Recovering a raft directory)",
                    cfg.raft_data_path,
                    snapshot.get_metadata().index
                )
            })?
    } else {
        ConsensusConfiguration::default()
    };
    metrics.height.set(initial.height as i64);
    let config = Arc::new(watch::Sender::new(initial));
    let pushed = Arc::new(watch::Sender::new(None::<ConsensusConfiguration>));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    // gRPC server.
    let (raft_stopped_tx, raft_stopped) = tokio::sync::oneshot::channel::<()>();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ConsensusServiceServer<ConsensusRpc>>()
        .await;
    let listen: SocketAddr = format!("{}:{}", cfg.listen_host, cfg.grpc_listen_port)
        .parse()
        .with_context(|| {
            format!(
                "consensus_raft.listen_host {:?} is not an IP address",
                cfg.listen_host
            )
        })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (consensus_raft.grpc_listen_port)"))?;
    tracing::info!(%listen, "serving gRPC");
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            ConsensusServiceServer::new(ConsensusRpc::new(pushed.clone()))
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        )
        .add_service(
            NetworkMsgHandlerServiceServer::new(network.clone())
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            // At most DEFAULT_MAX_CONNECTIONS open (the controller and the network service
            // need a few). Accepted sockets get TCP_NODELAY, as tonic gives its own
            // listeners: small answers must not wait for the peer's delayed ACK.
            ConnectionLimit::new(DEFAULT_MAX_CONNECTIONS).incoming(listener),
            // Served until raft has stopped, not merely been asked to: a leader still
            // hears its peers while it hands leadership over.
            async move {
                let _ = raft_stopped.await;
            },
        );
    let server = tokio::spawn(server);

    {
        let network = network.clone();
        tokio::spawn(async move { network.stay_registered().await }.in_current_span());
    }
    if cfg.enable_metrics {
        let addr: SocketAddr = format!("{}:{}", cfg.listen_host, cfg.metrics_port)
            .parse()
            .with_context(|| "consensus_raft.metrics_port".to_string())?;
        let m = metrics.clone();
        let net = network.clone();
        let refresh = move || refresh_peer_metrics(&m, &net);
        let serve =
            crate::metrics::serve(addr, metrics.clone(), refresh, wait_stop(stop_rx.clone()));
        tokio::spawn(
            async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }
            .in_current_span(),
        );
    }

    let node = Arc::new(Node {
        cfg,
        me,
        store,
        controller,
        network,
        config,
        metrics,
        prechecks: PreCheckSlot::default(),
        stop: stop_rx,
    });
    tokio::spawn(
        node.clone()
            .follow_pushed(pushed.subscribe())
            .in_current_span(),
    );
    tokio::spawn(node.clone().sync_with_controller().in_current_span());

    let result = node.clone().supervise().await;
    if result.is_ok() {
        // Raft has stopped (a leader handed over first): the others forget what this
        // run acknowledged, whatever comes back at this address next.
        node.network
            .announce_departure(Duration::from_secs(1))
            .await;
    }
    let _ = raft_stopped_tx.send(());
    if result.is_ok() {
        // Shutdown was requested: the server drains in-flight calls and stops.
        let _ = server.await;
    } else {
        server.abort();
    }
    tracing::info!("consensus stopped");
    result
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The proposal for `height` that applying `entries` committed: the first one for that
/// height at or below `commit`, in log order. Applying skips a proposal for a height
/// already committed, so a later entry for the same height (a new leader that proposed
/// it again before applying the first) was never committed to a controller; and an entry
/// past `commit` may yet be overwritten.
fn committed_proposal_at(entries: &[Entry], commit: u64, height: u64) -> Option<Proposal> {
    entries
        .iter()
        .take_while(|e| e.index <= commit)
        .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
        .filter_map(|e| Proposal::decode(&e.data[..]).ok())
        .find(|p| p.height == height)
}

fn refresh_peer_metrics(m: &Metrics, net: &CitaNetwork) {
    for (peer, sent, dropped) in net.peer_stats() {
        let label = peer.to_string();
        let s = m.messages_sent.with_label_values(&[label.as_str()]);
        s.inc_by(sent.saturating_sub(s.get()));
        let d = m.messages_dropped.with_label_values(&[label.as_str()]);
        d.inc_by(dropped.saturating_sub(d.get()));
    }
    for (reason, count) in net.refused_stats() {
        let c = m.network_refused.with_label_values(&[reason]);
        c.inc_by(count.saturating_sub(c.get()));
    }
}

impl Node {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Adopts configurations pushed with `Reconfigure`: the newest wins, and one at
    /// a lower height than what this node committed is ignored.
    async fn follow_pushed(
        self: Arc<Self>,
        mut pushed: watch::Receiver<Option<ConsensusConfiguration>>,
    ) {
        while pushed.changed().await.is_ok() {
            let Some(cfg) = pushed.borrow_and_update().clone() else {
                continue;
            };
            self.adopt(cfg);
        }
    }

    fn adopt(&self, cfg: ConsensusConfiguration) {
        self.config.send_if_modified(|cur| {
            if cfg.height >= cur.height && *cur != cfg {
                *cur = cfg;
                true
            } else {
                false
            }
        });
    }

    /// At start: learns the controller's configuration (ping), and if raft recorded
    /// one block more than the controller has, commits that block again (the node
    /// stopped between raft commit and controller commit).
    async fn sync_with_controller(self: Arc<Self>) {
        let controller = self.controller.clone();
        let ping = retry(
            "controller ping",
            &Backoff::default(),
            ControllerError::is_transient,
            || controller.ping(),
        )
        .await;
        let ctrl = match ping {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::warn!(error = %e, "controller ping refused");
                return;
            }
        };
        tracing::info!(
            height = ctrl.height,
            validators = ctrl.validators.len(),
            "controller configuration"
        );
        let recorded = self.config.borrow().height;
        if recorded > 0 && ctrl.height + 1 == recorded {
            match self.last_committed_proposal(recorded) {
                Some(p) => {
                    tracing::info!(
                        height = recorded,
                        "re-committing the last block the controller missed"
                    );
                    let c = self.controller.clone();
                    match retry(
                        "CommitBlock",
                        &Backoff::default(),
                        ControllerError::is_transient,
                        || c.commit_block(p.clone()),
                    )
                    .await
                    {
                        Ok(cfg) => self.adopt(cfg),
                        Err(e) => tracing::warn!(error = %e, "re-commit refused"),
                    }
                }
                None => tracing::warn!(
                    height = recorded,
                    "last block not in the raft log; controller must sync it"
                ),
            }
        }
        self.adopt(ctrl);
    }

    /// The proposal this node committed at `height`, from the retained raft log: the
    /// entry the latest snapshot names as the one that carried the last block
    /// ([`crate::chain::LastBlock`]). Only that entry is certain: a later entry for the
    /// same height (a new leader proposing it again before it applied the first) was
    /// skipped when applied, and its block may differ from the one the others have.
    fn last_committed_proposal(&self, height: u64) -> Option<Proposal> {
        let snapshot = self.store.latest_snapshot().ok()?;
        let last = snapshot_last_block(&snapshot.data)?;
        if last.height != height {
            return None;
        }
        let first = self.store.first_index().ok()?;
        let commit = self.store.initial_state().ok()?.hard_state.commit;
        if last.index < first || last.index > commit.max(snapshot.get_metadata().index) {
            return None;
        }
        let entries = self
            .store
            .entries(
                last.index,
                last.index + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .ok()?;
        committed_proposal_at(&entries, last.index, height)
    }

    fn is_validator(&self) -> bool {
        validator_ids(&self.config.borrow()).contains(&self.me)
    }

    async fn supervise(self: Arc<Self>) -> anyhow::Result<()> {
        let mut config_rx = self.config.subscribe();
        let mut stop = self.stop.clone();
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
                        _ = stop.wait_for(|s| *s) => return Ok(()),
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
            let _ = stop_raft.send(());
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
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        _ = config_rx.wait_for(|c| validator_ids(c).contains(&self.me)) => {}
                    }
                    tracing::info!("added back to the validators: restarting raft");
                }
            }
        }
    }

    async fn start_raft(
        &self,
    ) -> anyhow::Result<(
        NodeHandle<BlockOutcome>,
        tokio::sync::oneshot::Sender<()>,
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
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (handle, join) = craft_core::start(
            replica,
            driver,
            self.store.clone(),
            sm,
            self.network.clone(),
            async {
                let _ = stop_rx.await;
            },
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

    fn publish_status(&self, st: &craft_core::NodeStatus) {
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

    async fn block_loop(&self, handle: &NodeHandle<BlockOutcome>) -> LoopEnd {
        let mut status_rx = handle.watch_status();
        let mut config_rx = self.config.subscribe();
        let mut stop = self.stop.clone();
        let tick = Duration::from_millis(self.cfg.tick_interval_in_millis);
        let mut was_voter = false;
        let mut last_fetch: Option<Instant> = None;
        let mut last_valid = Instant::now();
        let mut fetch_failures = 0u32;
        loop {
            if self.stopping() {
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
                    _ = stop.changed() => {}
                    _ = status_rx.changed() => {}
                    _ = tokio::time::sleep(tick) => {}
                }
                continue;
            }
            let chain = self.config.borrow().clone();
            if !self.reconcile_membership(handle, &st, &chain).await {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(tick) => {}
                }
                continue;
            }
            let interval = Duration::from_secs(u64::from(chain.block_interval));
            if let Some(due) = last_fetch.map(|t| t + interval) {
                if Instant::now() < due {
                    tokio::select! {
                        _ = stop.changed() => {}
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
                _ = stop.wait_for(|s| *s) => return LoopEnd::Shutdown,
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
    async fn maybe_hand_over(
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

    /// Makes raft membership follow the validator list. Returns whether it already
    /// matches (blocks may be proposed).
    async fn reconcile_membership(
        &self,
        handle: &NodeHandle<BlockOutcome>,
        st: &craft_core::NodeStatus,
        chain: &ConsensusConfiguration,
    ) -> bool {
        let want = validator_ids(chain);
        let cs = &st.conf_state;
        if want.is_empty() {
            return true;
        }
        if !cs.voters_outgoing.is_empty() {
            // Leaving a joint configuration is under way.
            return false;
        }
        let have: BTreeSet<u64> = cs.voters.iter().copied().collect();
        if want == have {
            return true;
        }
        if !want.contains(&self.me) {
            match want.intersection(&have).next() {
                Some(&to) => {
                    tracing::info!(
                        to,
                        "this node is no longer a validator: transferring leadership"
                    );
                    let _ = handle.transfer_leader(to).await;
                }
                None => {
                    tracing::warn!(want = ?want, have = ?have, "no current voter remains a validator; cannot hand over")
                }
            }
            return false;
        }
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Auto);
        for id in want.difference(&have) {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(ConfChangeType::AddNode);
            c.node_id = *id;
            change.mut_changes().push(c);
        }
        for id in have.difference(&want) {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(ConfChangeType::RemoveNode);
            c.node_id = *id;
            change.mut_changes().push(c);
        }
        tracing::info!(add = ?want.difference(&have).collect::<Vec<_>>(), remove = ?have.difference(&want).collect::<Vec<_>>(), "changing raft membership to follow validators");
        match handle.change_membership(change).await {
            Ok(cs) => tracing::info!(voters = ?cs.voters, "membership change committed"),
            Err(e) => tracing::info!(error = %e, "membership change not committed"),
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(index: u64, height: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 2,
            data: Proposal {
                height,
                data: data.to_vec(),
            }
            .encode_to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn the_committed_proposal_is_the_first_committed_one_for_its_height() {
        // Height 7 was proposed at index 10, then again (another block) at 12 by a new
        // leader that had not applied 10 yet; 14 is an uncommitted proposal for 8.
        let log = [
            block(9, 6, b"six"),
            block(10, 7, b"seven-a"),
            Entry {
                index: 11,
                term: 3,
                ..Default::default()
            },
            block(12, 7, b"seven-b"),
            block(13, 8, b"eight-a"),
            block(14, 8, b"eight-b"),
        ];
        let data = |p: Option<Proposal>| p.map(|p| p.data);
        assert_eq!(
            data(committed_proposal_at(&log, 13, 7)),
            Some(b"seven-a".to_vec())
        );
        assert_eq!(
            data(committed_proposal_at(&log, 13, 8)),
            Some(b"eight-a".to_vec())
        );
        // Past the commit index nothing counts, even the only proposal for a height.
        assert_eq!(data(committed_proposal_at(&log, 12, 8)), None);
        assert_eq!(data(committed_proposal_at(&log, 13, 9)), None);
    }
}
