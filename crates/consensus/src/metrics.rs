//! Prometheus metrics of the service, served on `/metrics`.

use std::net::SocketAddr;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Chain height this node has committed.
    pub height: IntGauge,
    /// Raft term.
    pub term: IntGauge,
    /// Leader's raft id as seen here (0: none).
    pub leader: IntGauge,
    /// 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
    pub role: IntGauge,
    /// Last index of the raft log.
    pub last_index: IntGauge,
    /// Committed raft index.
    pub commit_index: IntGauge,
    /// Proposals this node made as leader.
    pub proposals: IntCounter,
    /// Seconds from fetching a proposal to its commit on the leader.
    pub block_latency: Histogram,
    /// Microseconds the last block took (leader: fetch to commit; follower: check+commit).
    pub last_commit_latency_us: IntGauge,
    /// Seconds per synced raft log write.
    pub fsync_latency: Histogram,
    /// Raft log writes (one RocksDB write batch each), synced or not.
    pub store_writes: IntCounter,
    /// Seconds per `CheckProposal` call (a loopback gRPC round trip to the controller).
    pub check_latency: Histogram,
    /// Raft messages handed to the network, per peer.
    pub messages_sent: IntCounterVec,
    /// Raft messages dropped (full queue or failed send), per peer.
    pub messages_dropped: IntCounterVec,
    /// Peer raft messages refused before reaching raft (they would have tripped an
    /// assertion in raft-rs, or were of a kind peers never send), since start.
    pub refused_messages: IntGauge,
    /// Network messages refused by the CITA adapter (undecodable, unknown type, an
    /// origin claiming a raft id another origin speaks for, ...), per reason.
    pub network_refused: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric with histogram `buckets` (seconds).
    pub fn new(buckets: &[f64]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("consensus".into()), None)?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter_vec = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &["peer"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let network_refused = IntCounterVec::new(
            Opts::new(
                "network_refused_total",
                "network messages refused before reaching raft, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(network_refused.clone()))?;
        let proposals = IntCounter::new("proposals_total", "proposals made as leader")?;
        registry.register(Box::new(proposals.clone()))?;
        let store_writes = IntCounter::new("store_writes_total", "raft log write batches")?;
        registry.register(Box::new(store_writes.clone()))?;
        Ok(Self {
            height: gauge("height", "committed chain height")?,
            term: gauge("term", "raft term")?,
            leader: gauge("leader_id", "raft id of the leader (0: none)")?,
            role: gauge("role", "0 follower, 1 pre-candidate, 2 candidate, 3 leader")?,
            last_index: gauge("raft_last_index", "last index of the raft log")?,
            commit_index: gauge("raft_commit_index", "committed raft index")?,
            proposals,
            block_latency: histogram(
                "block_latency_seconds",
                "fetch-to-commit time of blocks led here",
            )?,
            last_commit_latency_us: gauge(
                "last_commit_latency_us",
                "latency of the last block, microseconds",
            )?,
            fsync_latency: histogram("fsync_latency_seconds", "synced raft log write time")?,
            store_writes,
            check_latency: histogram("check_proposal_seconds", "CheckProposal round trip time")?,
            messages_sent: counter_vec(
                "messages_sent_total",
                "raft messages handed to the network",
            )?,
            messages_dropped: counter_vec("messages_dropped_total", "raft messages dropped")?,
            refused_messages: gauge(
                "refused_messages",
                "peer raft messages refused before reaching raft, since start",
            )?,
            network_refused,
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics` on `addr` until `shutdown` completes. `refresh` runs before each
/// scrape (to pull counters kept elsewhere).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let refresh = std::sync::Arc::new(refresh);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            async move {
                refresh();
                metrics.render()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics port {addr}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server")?;
    Ok(())
}
