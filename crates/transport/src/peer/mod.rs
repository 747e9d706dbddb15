//! A plain peer-to-peer gRPC transport (`craft.peer.RaftPeer`) for services that run
//! outside CITA-Cloud, such as the key-value example. Each node serves `RaftPeer` and
//! knows its peers' addresses.
//!
//! This file holds the sending side's face ([`PeerTransport`], [`LinkConfig`] and the
//! limits); `lane.rs` the lanes and their batching, deadlines and reports; `snapshot.rs`
//! both ends of a snapshot stream; `service.rs` the receiving side ([`PeerService`],
//! [`serve`]).
//!
//! # Links
//!
//! Messages to one peer travel on two long-lived streams of batches
//! (`RaftPeer.Batches`), each on a connection of its own:
//! - the **control lane** carries every message without entries (heartbeats and their
//!   answers, votes, append answers, read-index requests and answers, `MsgTimeoutNow`),
//!   so they never wait behind bulk data, in our queue or in a TCP buffer;
//! - the **bulk lane** carries the messages with entries (`MsgAppend`, a forwarded
//!   `MsgPropose`), in order.
//!
//! A lane packs what is queued into batches of up to [`LinkConfig::max_batch_bytes`]
//! (one gRPC message each, always under [`cita_proto::MAX_MESSAGE_BYTES`]; a message
//! larger than that budget travels alone, and one that could not fit a gRPC message
//! even alone is dropped and logged). A batch costs one HTTP/2 DATA frame rather than a
//! request and its answer. The receiver acknowledges every batch once it has handed its
//! messages to raft.
//!
//! # What a link does when the peer does not answer
//!
//! - A stream must be accepted within [`LinkConfig::setup_deadline`] (connect, TLS and
//!   HTTP/2 handshakes, the peer's response headers), or it is given up and the next
//!   attempt goes on a new connection; attempts after a failure are spaced out, up to
//!   a setup deadline apart.
//! - A stream with batches outstanding must acknowledge one within
//!   [`LinkConfig::ack_deadline`] (plus a second per MiB of the oldest batch past the
//!   first); otherwise it is torn down with its connection (a stream stuck on a
//!   connection that is still alive, which HTTP/2 keepalives never notice, or a peer
//!   that stopped reading) and the next stream goes on a new connection.
//! - Nothing is dropped without telling raft: when a lane drops messages (its queue is
//!   full, its stream ended before they were acknowledged, or they were waiting when a
//!   stream could not be opened or stalled), the transport reports
//!   the peer unreachable ([`PeerTransport::report_unreachable_to`], usually
//!   [`craft_core::NodeHandle::report_unreachable`]), so raft's leader stops streaming
//!   appends to it and probes, instead of waiting for answers to appends that are gone.
//!   A report is made once per loss, and again only after the peer acknowledged
//!   something, so a dead peer does not flood raft with reports.
//!
//! Without TLS anyone who reaches the port can send raft messages under any raft id.
//! With [`PeerTls`] both sides use mutual TLS: only holders of a certificate signed by
//! the cluster's CA can connect, in either direction.
//!
//! # Snapshots
//!
//! Snapshots (`MsgSnapshot`, the whole state machine) go through neither lane: each is
//! streamed to its peer on a task of its own (`RaftPeer.SendSnapshot`) in chunks of
//! [`SNAPSHOT_CHUNK_BYTES`], on a connection of its own so it holds back no heartbeat.
//! The receiver reassembles it, checks its integrity trailer, decodes it and hands it to
//! raft before it answers; only that answer makes the transport report the snapshot
//! finished to raft, and any failure reports it failed, so raft sends another later
//! instead of waiting forever or resending one that can never arrive.
//!
//! # Limits
//!
//! A message (one batch, or one snapshot chunk) is at most
//! [`cita_proto::MAX_MESSAGE_BYTES`] either way; a snapshot is at most
//! [`DEFAULT_MAX_SNAPSHOT_BYTES`] ([`PeerService::with_max_snapshot_bytes`]), and a server
//! receives at most [`MAX_CONCURRENT_SNAPSHOTS`] at once; a server holds at most its
//! [`ConnectionLimit`] of connections and [`MAX_STREAMS_PER_CONNECTION`] concurrent
//! requests on each; each lane queues at most [`LinkConfig::queue_messages`] messages
//! and [`LinkConfig::queue_bytes`] bytes (past either the newest is dropped, counted and
//! reported).

mod lane;
mod service;
mod snapshot;
#[cfg(test)]
mod tests;

pub use service::{serve, PeerService};

use lane::{LinkShared, PeerLink, Unreachable, UnreachableFn};
use snapshot::stream_snapshot;

use craft_core::sync::{LockExt, RwLockExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use craft_core::SnapshotReporter;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tonic::transport::{Channel, Endpoint};

use crate::integrity::encode_checked;
use crate::tls::PeerTls;

/// Messages a lane queues by default before new ones are dropped
/// ([`LinkConfig::queue_messages`]).
pub const QUEUE_CAPACITY: usize = 1024;
/// Encoded bytes a lane queues by default before new messages are dropped
/// ([`LinkConfig::queue_bytes`]): as much as raft sends a follower at most before it
/// waits for an answer with `craft_core::ReplicaConfig`'s defaults (256 appends in
/// flight of about 1 MiB each), so a burst raft means to send is not cut short.
pub const QUEUE_BYTES: usize = 256 << 20;
/// Bytes of raft messages a batch packs by default ([`LinkConfig::max_batch_bytes`]):
/// raft's appends are about 1 MiB each (`max_size_per_msg`), so a few go together, and
/// a batch takes a few milliseconds of a link rather than seconds of it.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Room kept under [`cita_proto::MAX_MESSAGE_BYTES`] for a batch's own fields and the
/// framing of each message in it: a message larger than the limit minus this never
/// leaves.
pub const BATCH_HEADROOM: usize = 64 << 10;
/// Deadline to open a stream, by default ([`LinkConfig::setup_deadline`]).
pub const DEFAULT_SETUP_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline for an acknowledgement while batches are outstanding, by default
/// ([`LinkConfig::ack_deadline`]).
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(2);
/// The shortest deadline [`LinkConfig::for_election_timeout`] sets: below it a loaded
/// machine's scheduling alone would tear down healthy streams.
pub const MIN_DEADLINE: Duration = Duration::from_millis(200);
/// Wait before the first attempt to open a stream again after one failed; it doubles
/// with each failure in a row, up to the setup deadline.
pub const RETRY_DELAY: Duration = Duration::from_millis(20);
/// Response header by which a receiver says it acknowledges every batch of the stream.
/// A sender applies its acknowledgement deadline only to streams that carry it, so a
/// peer of an older version (which acknowledges nothing) is still served.
pub const ACKS_HEADER: &str = "craft-batch-acks";
/// Acknowledgements a receiver queues on a stream before it stops reading batches.
const ACKS_IN_FLIGHT: usize = 64;
/// Concurrent requests a peer server serves on one connection (a sender has one batch
/// stream per lane, each on a connection of its own, and at most one snapshot stream on
/// another).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Bytes of a snapshot message per chunk of its stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot message a [`PeerService`] accepts by default: 1 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Snapshots a [`PeerService`] receives at once; more are refused (the sender's raft
/// tries again later). Bounds the memory held by snapshots being reassembled.
pub const MAX_CONCURRENT_SNAPSHOTS: usize = 2;
/// Time a snapshot stream may take: this much, plus [`SNAPSHOT_SECS_PER_MIB`] for each
/// MiB of the snapshot.
pub const SNAPSHOT_BASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a snapshot stream may take per MiB on top of [`SNAPSHOT_BASE_TIMEOUT`]: a
/// rate of 1 MiB/s at least.
pub const SNAPSHOT_SECS_PER_MIB: u64 = 1;

/// Deadlines and bounds of the links to peers.
///
/// The deadlines are the time in which a stalled link is noticed and replaced. Raft
/// itself gives a peer an election timeout: a follower that hears no heartbeat for
/// that long campaigns, and a leader that hears from no quorum for that long steps
/// down. A link that stalls for longer costs the cluster elections, so it should be
/// noticed within about one election timeout; one that is noticed much sooner would be
/// torn down for a pause raft does not mind (a busy peer, a large batch). Hence
/// [`LinkConfig::for_election_timeout`], which a node should use with its own timing;
/// the defaults suit raft's default one (10 ticks of 100 ms to 20 ticks: 1–2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Time a stream may take to be accepted by the peer: connecting, the TLS and
    /// HTTP/2 handshakes, the peer's response headers. Each setup that runs out doubles
    /// it for the next attempt (up to 8 times it), so a slow but live peer is reached.
    pub setup_deadline: Duration,
    /// Time a stream with batches outstanding may go without acknowledging one (plus a
    /// second per MiB of the oldest outstanding batch past its first MiB) before it is
    /// torn down with its connection.
    pub ack_deadline: Duration,
    /// Bytes of encoded raft messages packed into one batch; a message larger than this
    /// travels alone.
    pub max_batch_bytes: usize,
    /// Messages a lane queues before new ones are dropped.
    pub queue_messages: usize,
    /// Encoded bytes a lane queues before new messages are dropped (a message finding
    /// the queue empty is always taken).
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            setup_deadline: DEFAULT_SETUP_DEADLINE,
            ack_deadline: DEFAULT_ACK_DEADLINE,
            max_batch_bytes: MAX_BATCH_BYTES,
            queue_messages: QUEUE_CAPACITY,
            queue_bytes: QUEUE_BYTES,
        }
    }
}

impl LinkConfig {
    /// Both deadlines set to `election_timeout` (the shortest one: `election_tick`
    /// ticks), and at least [`MIN_DEADLINE`]; see [`LinkConfig`] for why.
    pub fn for_election_timeout(election_timeout: Duration) -> Self {
        let deadline = election_timeout.max(MIN_DEADLINE);
        Self {
            setup_deadline: deadline,
            ack_deadline: deadline,
            ..Self::default()
        }
    }
}

/// A peer's address: the endpoint its lanes connect to, and the client of its snapshot
/// streams.
#[derive(Clone)]
struct Peer {
    /// Each lane makes its own connection(s) to it.
    endpoint: Endpoint,
    /// Snapshot streams, on a connection of their own (timeout per stream).
    snapshots: RaftPeerClient<Channel>,
}

/// The sending side: a [`craft_core::Transport`] over `RaftPeer.Batches` (two lanes of
/// batches per peer) and `RaftPeer.SendSnapshot` (snapshot streams).
#[derive(Clone)]
pub struct PeerTransport {
    id: u64,
    peers: Arc<RwLock<HashMap<u64, Peer>>>,
    links: Arc<Mutex<HashMap<u64, PeerLink>>>,
    /// Peers with no address that raft was already told about.
    unknown: Arc<Mutex<HashSet<u64>>>,
    shared: Arc<OnceLock<Arc<LinkShared>>>,
    config: LinkConfig,
    tls: Option<PeerTls>,
    /// Where snapshot outcomes go, once the raft driver has asked for them.
    reporter: Arc<OnceLock<SnapshotReporter>>,
    /// Peers a snapshot is being streamed to now.
    streaming: Arc<Mutex<HashSet<u64>>>,
    /// Bytes per snapshot chunk.
    chunk_bytes: usize,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// A transport for raft id `id` with no peers yet, and [`LinkConfig::default`].
    pub fn new(id: u64) -> Self {
        Self {
            id,
            peers: Arc::new(RwLock::new(HashMap::new())),
            links: Arc::new(Mutex::new(HashMap::new())),
            unknown: Arc::new(Mutex::new(HashSet::new())),
            shared: Arc::new(OnceLock::new()),
            config: LinkConfig::default(),
            tls: None,
            reporter: Arc::new(OnceLock::new()),
            streaming: Arc::new(Mutex::new(HashSet::new())),
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }

    /// Uses `config` for the links to peers. Set before the first message is sent.
    pub fn with_link_config(mut self, config: LinkConfig) -> Self {
        self.config = config;
        self
    }

    /// Streams snapshots in chunks of `bytes` (at least 1) instead of
    /// [`SNAPSHOT_CHUNK_BYTES`].
    pub fn with_snapshot_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Dials peers with mutual TLS (`https`), presenting `tls`'s certificate and
    /// trusting only its CA. Set before adding peers.
    pub fn with_tls(mut self, tls: PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Tells `report` the raft id of every peer this transport dropped messages to
    /// (see [the module docs](self)); usually [`craft_core::NodeHandle::report_unreachable`].
    /// Peers reported before it is set are told to it at once.
    pub fn report_unreachable_to(&self, report: impl Fn(u64) + Send + Sync + 'static) {
        let report: UnreachableFn = Arc::new(report);
        let mut unreachable = self.shared().unreachable.locked();
        for to in std::mem::take(&mut unreachable.pending) {
            report(to);
        }
        unreachable.reporter = Some(report);
    }

    fn shared(&self) -> &Arc<LinkShared> {
        self.shared.get_or_init(|| {
            Arc::new(LinkShared {
                id: self.id,
                config: self.config.clone(),
                unreachable: Mutex::new(Unreachable::default()),
            })
        })
    }

    /// Adds or replaces peer `id` at `addr` (e.g. `http://127.0.0.1:7151`; with TLS the
    /// scheme becomes `https`).
    pub fn set_peer(&self, id: u64, addr: &str) -> Result<(), tonic::transport::Error> {
        let addr = match (&self.tls, addr.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => addr.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(addr)?
            .connect_timeout(self.config.setup_deadline)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config())?;
        }
        // Keepalives are the last resort for a dead connection; the lanes' own deadlines
        // notice a stalled one far sooner. A snapshot stream sets its own deadline, by
        // its size.
        let endpoint = endpoint
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let peer = Peer {
            snapshots: client(&endpoint),
            endpoint,
        };
        self.peers.write_locked().insert(id, peer);
        self.unknown.locked().remove(&id);
        // The lanes to the old address stop once their link is dropped.
        self.links.locked().remove(&id);
        Ok(())
    }

    fn peer(&self, id: u64) -> Option<Peer> {
        self.peers.read_locked().get(&id).cloned()
    }

    /// Tells raft, when it asked to be told, how the snapshot to `to` went.
    fn report(&self, to: u64, status: SnapshotStatus) {
        if let Some(reporter) = self.reporter.get() {
            reporter.report(to, status);
        }
    }

    /// Streams one snapshot message to its peer on a task of its own, and reports the
    /// outcome. One stream per peer at a time: raft sends a follower one snapshot at a
    /// time, and a second one (from a new term) fails at once and is sent again later.
    fn send_snapshot(&self, msg: Message) {
        let to = msg.to;
        let index = msg.get_snapshot().get_metadata().index;
        let Some(peer) = self.peer(to) else {
            tracing::debug!(to, "no address for peer; snapshot dropped");
            self.report(to, SnapshotStatus::Failure);
            return;
        };
        if !self.streaming.locked().insert(to) {
            tracing::debug!(
                to,
                index,
                "a snapshot to this peer is still streaming; new one dropped"
            );
            self.report(to, SnapshotStatus::Failure);
            return;
        }
        let transport = self.clone();
        tokio::spawn(async move {
            // Encoded here rather than on the raft task, and the message dropped at once:
            // only the encoded copy stays while it streams.
            let bytes = encode_checked(&msg);
            drop(msg);
            let result =
                stream_snapshot(peer.snapshots, transport.id, bytes, transport.chunk_bytes).await;
            transport.streaming.locked().remove(&to);
            match result {
                Ok(bytes) => {
                    tracing::info!(to, index, bytes, "snapshot sent");
                    transport.report(to, SnapshotStatus::Finish);
                }
                Err(status) => {
                    tracing::warn!(to, index, code = ?status.code(), error = %status.message(), "snapshot not sent");
                    transport.report(to, SnapshotStatus::Failure);
                }
            }
        });
    }

    /// `(peer, sent, dropped)` raft messages per peer (both lanes), sorted by peer:
    /// sent were acknowledged by the peer (or, from a peer that acknowledges nothing,
    /// taken onto a stream it accepted); dropped found their lane's queue full, were too
    /// large for any batch, went onto a stream that ended before acknowledging them, or
    /// were waiting when a stream could not be opened or stalled.
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        let links = self.links.locked();
        let mut out: Vec<_> = links
            .iter()
            .map(|(id, link)| {
                (
                    *id,
                    link.stats.sent.load(Ordering::Relaxed),
                    link.stats.dropped.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Raft was told once that `to` has no address.
    fn no_address(&self, to: u64) {
        tracing::debug!(to, "no address for peer; dropping");
        let new = self.unknown.locked().insert(to);
        if new {
            self.shared().report_unreachable(to);
        }
    }
}

/// A client of `endpoint` on a connection of its own (made when first used).
fn client(endpoint: &Endpoint) -> RaftPeerClient<Channel> {
    RaftPeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
}

/// Whether `m` goes on the bulk lane: it carries entries, or keeps their order (every
/// append, even an empty one: it may commit entries only the appends before it carry).
fn is_bulk(m: &Message) -> bool {
    m.msg_type == MessageType::MsgAppend as i32 || !m.entries.is_empty()
}

/// The largest encoded raft message a batch can carry alone.
const MAX_SINGLE_MESSAGE: usize = cita_proto::MAX_MESSAGE_BYTES - BATCH_HEADROOM;

impl craft_core::Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        let shared = self.shared().clone();
        let mut links = self.links.locked();
        for m in messages {
            if m.msg_type == MessageType::MsgSnapshot as i32 {
                self.send_snapshot(m);
                continue;
            }
            let to = m.to;
            let bulk = is_bulk(&m);
            let link = match links.get(&to) {
                Some(link) => link,
                None => {
                    let Some(peer) = self.peer(to) else {
                        self.no_address(to);
                        continue;
                    };
                    links
                        .entry(to)
                        .or_insert_with(|| PeerLink::start(to, peer.endpoint, shared.clone()))
                }
            };
            let bytes = encode_checked(&m);
            if bytes.len() > MAX_SINGLE_MESSAGE {
                tracing::warn!(
                    to,
                    bytes = bytes.len(),
                    limit = MAX_SINGLE_MESSAGE,
                    msg_type = ?m.msg_type(),
                    index = m.index,
                    "raft message too large for any batch; dropped"
                );
                link.stats.dropped.fetch_add(1, Ordering::Relaxed);
                link.lane(bulk).report_unreachable();
                continue;
            }
            link.lane(bulk).push(bytes);
        }
    }

    /// Snapshots are streamed and acknowledged, so their outcome is known.
    fn report_snapshots(&self, reporter: SnapshotReporter) -> bool {
        let _ = self.reporter.set(reporter);
        true
    }
}
