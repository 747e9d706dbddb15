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
    check_snapshot_data, decode_configuration, snapshot_last_block, ApplyStall, BlockOutcome,
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

mod block_loop;
mod config_sync;
mod membership;
mod shutdown;
mod supervisor;

use shutdown::Shutdown;

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
    stall: ApplyStall,
    /// The service's shutdown.
    stop: Shutdown,
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

    let (stop_tx, stop_rx) = shutdown::channel();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested");
        stop_tx.fire();
    });

    // gRPC server.
    let (raft_stopped_tx, raft_stopped) = shutdown::channel();
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
            async move { raft_stopped.requested().await },
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
        let serve = crate::metrics::serve(addr, metrics.clone(), refresh, {
            let stop = stop_rx.clone();
            async move { stop.requested().await }
        });
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
        stall: ApplyStall::default(),
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
    raft_stopped_tx.fire();
    if result.is_ok() {
        // Shutdown was requested: the server drains in-flight calls and stops.
        let _ = server.await;
    } else {
        server.abort();
    }
    tracing::info!("consensus stopped");
    result
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
