//! A plain peer-to-peer gRPC transport (`craft.peer.RaftPeer`) for services that run
//! outside CITA-Cloud, such as the key-value example. Each node serves `RaftPeer` and
//! knows its peers' addresses.
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

use craft_core::sync::{LockExt, RwLockExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use cita_proto::peer::{Ack, RaftBatch, SnapshotChunk};
use craft_core::SnapshotReporter;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::integrity::{decode_checked, encode_checked};
use crate::limits::ConnectionLimit;
use crate::queue::PeerStats;
use crate::tls::PeerTls;
use crate::Inbound;

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

/// How a transport tells raft that a peer could not be reached.
type UnreachableFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Where unreachable peers are reported: nowhere yet (then they are remembered, and
/// reported once a reporter is set), or to the reporter.
#[derive(Default)]
struct Unreachable {
    reporter: Option<UnreachableFn>,
    pending: HashSet<u64>,
}

impl Unreachable {
    fn report(&mut self, to: u64) {
        match &self.reporter {
            Some(report) => report(to),
            None => {
                self.pending.insert(to);
            }
        }
    }
}

/// What every lane of a transport shares.
struct LinkShared {
    /// This node's raft id, the `from` of every batch.
    id: u64,
    config: LinkConfig,
    unreachable: Mutex<Unreachable>,
}

impl LinkShared {
    fn report_unreachable(&self, to: u64) {
        self.unreachable.locked().report(to);
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

/// Bytes `len` bytes of message take in a batch: the bytes, a tag and a length.
fn framed_len(len: usize) -> usize {
    len + 1 + prost_varint_len(len)
}

/// Bytes of `len` as a protobuf varint.
fn prost_varint_len(len: usize) -> usize {
    let bits = usize::BITS - len.max(1).leading_zeros();
    bits.div_ceil(7) as usize
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

/// The two lanes to one peer, each run by a task of its own; dropping the link stops
/// them (what they still hold is dropped).
struct PeerLink {
    control: Arc<Lane>,
    bulk: Arc<Lane>,
    /// Messages of both lanes.
    stats: Arc<PeerStats>,
}

impl PeerLink {
    fn start(to: u64, endpoint: Endpoint, shared: Arc<LinkShared>) -> Self {
        let stats = Arc::new(PeerStats::default());
        let lane = |kind| {
            let lane = Arc::new(Lane {
                to,
                kind,
                shared: shared.clone(),
                stats: stats.clone(),
                queue: Mutex::new(LaneQueue::default()),
                wake: Notify::new(),
                closed: watch::Sender::new(false),
                reported: AtomicBool::new(false),
            });
            tokio::spawn(lane.clone().run(endpoint.clone()));
            lane
        };
        Self {
            control: lane("control"),
            bulk: lane("bulk"),
            stats,
        }
    }

    fn lane(&self, bulk: bool) -> &Lane {
        if bulk {
            &self.bulk
        } else {
            &self.control
        }
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.control.close();
        self.bulk.close();
    }
}

/// One lane to one peer: a queue of encoded messages and the stream that takes them.
struct Lane {
    to: u64,
    /// `control` or `bulk`, for logs.
    kind: &'static str,
    shared: Arc<LinkShared>,
    stats: Arc<PeerStats>,
    queue: Mutex<LaneQueue>,
    /// Woken when messages are queued, a stream is replaced, or the lane closes.
    wake: Notify,
    /// Turns true when the link is dropped.
    closed: watch::Sender<bool>,
    /// Raft was told the peer is unreachable, and the peer acknowledged nothing since.
    reported: AtomicBool,
}

/// A lane's queue, and which stream may take from it.
#[derive(Default)]
struct LaneQueue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The stream that may take batches; a stream that was replaced takes no more.
    stream: u64,
    /// The link was dropped: the lane's task ends.
    closed: bool,
    /// Batches taken by the current stream and not acknowledged yet.
    outstanding: Outstanding,
}

/// The batches a stream has taken and not had acknowledged.
#[derive(Default)]
struct Outstanding {
    /// Messages and bytes of each, oldest first.
    batches: VecDeque<(u64, usize)>,
    /// When the oldest began to wait for its acknowledgement: when it was taken, or
    /// when the one before it was acknowledged.
    since: Option<Instant>,
}

impl Outstanding {
    fn taken(&mut self, messages: u64, bytes: usize) {
        if self.batches.is_empty() {
            self.since = Some(Instant::now());
        }
        self.batches.push_back((messages, bytes));
    }

    /// The oldest batch was acknowledged: its messages.
    fn acked(&mut self) -> u64 {
        let messages = self.batches.pop_front().map_or(0, |(m, _)| m);
        self.since = (!self.batches.is_empty()).then(Instant::now);
        messages
    }

    /// Whether the oldest batch has waited longer than `deadline` (plus a second per
    /// MiB past its first).
    fn overdue(&self, deadline: Duration) -> bool {
        let (Some(since), Some((_, bytes))) = (self.since, self.batches.front()) else {
            return false;
        };
        let extra_mib = bytes.saturating_sub(1 << 20).div_ceil(1 << 20) as u64;
        since.elapsed() > deadline + Duration::from_secs(extra_mib)
    }

    /// Messages of every batch outstanding, now forgotten.
    fn take_all(&mut self) -> u64 {
        self.since = None;
        self.batches.drain(..).map(|(m, _)| m).sum()
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The link was dropped.
    Closed,
    /// It could not be opened (an error, or the setup deadline ran out).
    NotOpened { timed_out: bool },
    /// It was open and ended: the peer ended it, or it stalled (no acknowledgement in
    /// time) and was torn down.
    Ended { stalled: bool },
}

impl Lane {
    /// Queues `bytes` unless the queue is full: then it is dropped, counted and
    /// reported.
    fn push(&self, bytes: Vec<u8>) {
        let config = &self.shared.config;
        let mut q = self.queue.locked();
        if q.closed {
            return;
        }
        let full = !q.messages.is_empty()
            && (q.messages.len() >= config.queue_messages
                || q.bytes + bytes.len() > config.queue_bytes);
        if full {
            drop(q);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                "lane queue full; message dropped"
            );
            self.report_unreachable();
            return;
        }
        q.bytes += bytes.len();
        q.messages.push_back(bytes);
        drop(q);
        self.wake.notify_waiters();
    }

    /// Tells raft the peer is unreachable, unless it was told since the peer last
    /// acknowledged anything.
    fn report_unreachable(&self) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::debug!(to = self.to, lane = self.kind, "reporting peer unreachable");
            self.shared.report_unreachable(self.to);
        }
    }

    fn close(&self) {
        let mut q = self.queue.locked();
        q.closed = true;
        q.messages.clear();
        q.bytes = 0;
        drop(q);
        self.closed.send_replace(true);
        self.wake.notify_waiters();
    }

    /// Completes once the lane is closed.
    async fn until_closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Waits until `ready` holds for the queue (checked under its lock), or the lane
    /// closes (`false`).
    async fn wait_for(&self, ready: impl Fn(&LaneQueue) -> bool) -> bool {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let q = self.queue.locked();
                if q.closed {
                    return false;
                }
                if ready(&q) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Takes the next batch for stream `stream`: the queued messages up to the batch
    /// budget (at least one). `None` once that stream was replaced or the lane closed.
    async fn next_batch(&self, stream: u64) -> Option<RaftBatch> {
        let budget = self.shared.config.max_batch_bytes.min(MAX_SINGLE_MESSAGE);
        let live = |q: &LaneQueue| q.stream != stream || !q.messages.is_empty();
        if !self.wait_for(live).await {
            return None;
        }
        let mut q = self.queue.locked();
        if q.stream != stream || q.closed {
            return None;
        }
        let mut messages = Vec::new();
        let mut size = 0;
        while let Some(next) = q.messages.front() {
            let framed = framed_len(next.len());
            if !messages.is_empty() && size + framed > budget {
                break;
            }
            size += framed;
            q.bytes -= next.len();
            if let Some(m) = q.messages.pop_front() {
                messages.push(m);
            }
        }
        if messages.is_empty() {
            return None;
        }
        // Recorded under the queue's lock: a stream torn down meanwhile counts it lost.
        q.outstanding.taken(messages.len() as u64, size);
        Some(RaftBatch {
            from: self.shared.id,
            messages,
        })
    }

    /// Runs the lane until its link is dropped: opens a stream when there is something
    /// to send, keeps it while it is healthy, and opens another (on a new connection
    /// after a stall) when it ends.
    async fn run(self: Arc<Self>, endpoint: Endpoint) {
        let config = self.shared.config.clone();
        let mut client = client(&endpoint);
        let mut failures = 0u32;
        let mut slow_setups = 0u32;
        loop {
            if !self.wait_for(|q| !q.messages.is_empty()).await {
                return;
            }
            let setup_deadline = config.setup_deadline * 2u32.pow(slow_setups.min(3));
            let end = self.stream(&mut client, setup_deadline).await;
            let lost = self.end_stream();
            let failed = match end {
                StreamEnd::Closed => return,
                StreamEnd::NotOpened { timed_out } => {
                    if timed_out {
                        slow_setups += 1;
                    }
                    true
                }
                StreamEnd::Ended { stalled } => {
                    slow_setups = 0;
                    stalled
                }
            };
            if matches!(
                end,
                StreamEnd::NotOpened { timed_out: true } | StreamEnd::Ended { stalled: true }
            ) {
                // The connection may be the stuck part: the next stream goes on a new one.
                client = self::client(&endpoint);
            }
            if failed {
                // The peer cannot be reached now: what waits for it is dropped (raft
                // sends again what still matters once it hears from the peer), and
                // what comes during the pause before the next attempt goes with it.
                self.drop_queued();
            }
            if lost > 0 || failed {
                // Raft probes the peer rather than stream appends it will not get.
                self.report_unreachable();
            }
            if failed {
                failures += 1;
                let delay = (RETRY_DELAY * 2u32.pow((failures - 1).min(10))).min(setup_deadline);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.until_closed() => return,
                }
            } else {
                failures = 0;
            }
        }
    }

    /// Opens a stream and serves it until it ends.
    async fn stream(
        self: &Arc<Self>,
        client: &mut RaftPeerClient<Channel>,
        setup_deadline: Duration,
    ) -> StreamEnd {
        let stream = {
            let mut q = self.queue.locked();
            q.stream += 1;
            q.stream
        };
        let lane = self.clone();
        let batches = futures::stream::unfold(lane, move |lane| async move {
            let batch = lane.next_batch(stream).await?;
            Some((batch, lane))
        });
        let setup = tokio::time::timeout(setup_deadline, client.batches(batches));
        let response = tokio::select! {
            response = setup => response,
            () = self.until_closed() => return StreamEnd::Closed,
        };
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => {
                tracing::debug!(to = self.to, lane = self.kind, code = ?status.code(), error = %status.message(), "batch stream not opened");
                return StreamEnd::NotOpened { timed_out: false };
            }
            Err(_) => {
                tracing::info!(to = self.to, lane = self.kind, deadline = ?setup_deadline, "batch stream not accepted in time; trying a new connection");
                return StreamEnd::NotOpened { timed_out: true };
            }
        };
        let acknowledged = response.metadata().contains_key(ACKS_HEADER);
        self.reported.store(false, Ordering::Relaxed);
        let mut acks = response.into_inner();
        let ack_deadline = self.shared.config.ack_deadline;
        let mut check = tokio::time::interval((ack_deadline / 4).max(Duration::from_millis(1)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(_)) => {
                        let messages = self
                            .queue
                            .locked()
                            .outstanding
                            .acked();
                        self.stats.sent.fetch_add(messages, Ordering::Relaxed);
                        self.reported.store(false, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        tracing::debug!(to = self.to, lane = self.kind, "batch stream ended by the peer");
                        return StreamEnd::Ended { stalled: false };
                    }
                    Err(status) => {
                        tracing::debug!(to = self.to, lane = self.kind, code = ?status.code(), error = %status.message(), "batch stream ended");
                        return StreamEnd::Ended { stalled: false };
                    }
                },
                _ = check.tick() => {
                    let overdue = acknowledged && self
                        .queue
                        .locked()
                        .outstanding
                        .overdue(ack_deadline);
                    if overdue {
                        tracing::info!(to = self.to, lane = self.kind, deadline = ?ack_deadline, "peer stopped acknowledging batches; reconnecting");
                        return StreamEnd::Ended { stalled: true };
                    }
                    if !acknowledged {
                        // A peer that acknowledges nothing: what it took counts as sent.
                        let messages = self
                            .queue
                            .locked()
                            .outstanding
                            .take_all();
                        self.stats.sent.fetch_add(messages, Ordering::Relaxed);
                    }
                }
                () = self.until_closed() => return StreamEnd::Closed,
            }
        }
    }

    /// Drops and counts every queued message.
    fn drop_queued(&self) {
        let dropped = {
            let mut q = self.queue.locked();
            q.bytes = 0;
            std::mem::take(&mut q.messages).len() as u64
        };
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                dropped,
                "peer unreachable; queued messages dropped"
            );
        }
    }

    /// Ends the current stream: it takes no more batches, and what it took without
    /// acknowledging is counted dropped. Returns how many messages that was.
    fn end_stream(&self) -> u64 {
        let lost = {
            let mut q = self.queue.locked();
            q.stream += 1;
            q.outstanding.take_all()
        };
        self.wake.notify_waiters();
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                lost,
                "messages lost with their stream"
            );
        }
        lost
    }
}

/// The deadline of a stream of `bytes` bytes.
fn snapshot_timeout(bytes: u64) -> Duration {
    SNAPSHOT_BASE_TIMEOUT + Duration::from_secs(SNAPSHOT_SECS_PER_MIB * bytes.div_ceil(1 << 20))
}

/// Streams an encoded snapshot message (integrity trailer included) in chunks of
/// `chunk_bytes`; returns its size once the peer has acknowledged it.
async fn stream_snapshot(
    mut client: RaftPeerClient<Channel>,
    from: u64,
    bytes: Vec<u8>,
    chunk_bytes: usize,
) -> Result<u64, Status> {
    let bytes = Arc::new(bytes);
    let total_len = bytes.len() as u64;
    let chunks = bytes.len().div_ceil(chunk_bytes);
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let start = i * chunk_bytes;
        let end = bytes.len().min(start + chunk_bytes);
        SnapshotChunk {
            from,
            total_len,
            data: bytes[start..end].to_vec(),
        }
    }));
    let mut request = Request::new(stream);
    request.set_timeout(snapshot_timeout(total_len));
    client.send_snapshot(request).await?;
    Ok(total_len)
}

/// Serves `service` on `listener` until `shutdown` completes: mutual TLS when `tls` is
/// given (a client without a certificate signed by its CA is refused in the handshake),
/// at most `limit` connections, messages up to [`cita_proto::MAX_MESSAGE_BYTES`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PeerService,
    tls: Option<&PeerTls>,
    limit: ConnectionLimit,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        server = server.tls_config(tls.server_config())?;
    }
    // A graceful shutdown waits for open requests, and a batch stream stays open as
    // long as its sender runs: the streams are ended first.
    let (stop, stopped) = watch::channel(false);
    let service = PeerService {
        stopping: stopped,
        ..service
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    server
        .add_service(
            RaftPeerServer::new(service)
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(limit.incoming(listener), shutdown)
        .await
}

/// The receiving side: serves `RaftPeer` and hands each decoded message to `inbound`.
#[derive(Clone)]
pub struct PeerService {
    inbound: Inbound,
    /// Largest snapshot message accepted, in bytes.
    max_snapshot_bytes: u64,
    /// One permit per snapshot being received.
    snapshot_slots: Arc<Semaphore>,
    /// Turns true when the server is shutting down: batch streams end.
    stopping: watch::Receiver<bool>,
}

impl PeerService {
    /// A service that delivers to `inbound`, accepting snapshots of up to
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`].
    pub fn new(inbound: Inbound) -> Self {
        Self {
            inbound,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOTS)),
            // Never changes unless [`serve`] sets its own.
            stopping: watch::channel(false).1,
        }
    }

    /// Accepts snapshot messages of up to `bytes` bytes (encoded, trailer included);
    /// larger ones are refused before any of them is buffered, and the sender's raft
    /// tries again later. A state machine whose snapshots outgrow it cannot add members
    /// or catch up lagging ones, so size it above the largest state expected.
    pub fn with_max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }
}

/// Reads a snapshot stream whole: at most `max` bytes, every chunk from the same
/// sender and announcing the same length, and exactly that many bytes in all. Returns
/// the sender and the bytes.
async fn reassemble(
    stream: &mut Streaming<SnapshotChunk>,
    max: u64,
) -> Result<(u64, Vec<u8>), Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    let (from, total_len) = (first.from, first.total_len);
    if total_len > max {
        return Err(Status::resource_exhausted(format!(
            "snapshot of {total_len} bytes from raft id {from} exceeds the limit of {max} bytes"
        )));
    }
    let total = usize::try_from(total_len)
        .map_err(|_| Status::resource_exhausted("snapshot larger than memory"))?;
    // Grown as the bytes arrive, so an announced length costs no memory up front.
    let mut bytes = Vec::with_capacity(total.min(cita_proto::MAX_MESSAGE_BYTES));
    let mut chunk = Some(first);
    while let Some(c) = chunk {
        if c.from != from || c.total_len != total_len {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk from raft id {} announcing {} bytes, in a stream from {from} of {total_len} bytes",
                c.from, c.total_len
            )));
        }
        if c.data.len() > total - bytes.len() {
            return Err(Status::invalid_argument(format!(
                "snapshot stream from raft id {from} carries more than the {total_len} bytes it announced"
            )));
        }
        bytes.extend_from_slice(&c.data);
        chunk = stream.message().await?;
    }
    if bytes.len() != total {
        return Err(Status::invalid_argument(format!(
            "snapshot stream from raft id {from} ended after {} of {total_len} bytes",
            bytes.len()
        )));
    }
    Ok((from, bytes))
}

/// Completes once the server is shutting down.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

impl PeerService {
    /// Hands a batch's messages to raft. Decoded all first: a batch with one bad message
    /// is refused whole.
    fn deliver(&self, batch: RaftBatch) -> Result<(), Status> {
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            // Every member of this transport adds the checksum trailer.
            let (m, _) = decode_checked(bytes, true)
                .map_err(|e| Status::invalid_argument(format!("raft message refused: {e}")))?;
            if m.from != batch.from {
                return Err(Status::invalid_argument(format!(
                    "message from {} in a batch from {}",
                    m.from, batch.from
                )));
            }
            msgs.push(m);
        }
        for m in msgs {
            (self.inbound)(m);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, Status> {
        self.deliver(req.into_inner())?;
        Ok(Response::new(Ack {}))
    }

    type BatchesStream = ReceiverStream<Result<Ack, Status>>;

    /// Answers at once (the response headers tell the sender the stream is taken, and
    /// carry [`ACKS_HEADER`]), delivers its batches on a task of its own and
    /// acknowledges each once delivered, until the sender ends the stream, a batch is
    /// refused, or the server shuts down.
    async fn batches(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<Self::BatchesStream>, Status> {
        let mut stream = req.into_inner();
        let (answers, answers_rx) = mpsc::channel(ACKS_IN_FLIGHT);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let end = loop {
                tokio::select! {
                    batch = stream.message() => match batch {
                        Ok(Some(batch)) => {
                            if let Err(status) = service.deliver(batch) {
                                break Some(status);
                            }
                            // Acknowledged once raft has its messages. A sender that
                            // reads no acknowledgements holds up only its own stream.
                            tokio::select! {
                                sent = answers.send(Ok(Ack {})) => if sent.is_err() {
                                    break None;
                                },
                                () = stopped(&mut stopping) => {
                                    break Some(Status::unavailable("shutting down"));
                                }
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    },
                    () = stopped(&mut stopping) => {
                        break Some(Status::unavailable("shutting down"));
                    }
                }
            };
            if let Some(status) = end {
                let _ = answers.send(Err(status)).await;
            }
            // Dropping the sender ends the answer stream, and with it the call.
        });
        let mut response = Response::new(ReceiverStream::new(answers_rx));
        response
            .metadata_mut()
            .insert(ACKS_HEADER, MetadataValue::from_static("1"));
        Ok(response)
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let Ok(_slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "already receiving as many snapshots as allowed",
            ));
        };
        let mut stream = req.into_inner();
        let (from, bytes) = reassemble(&mut stream, self.max_snapshot_bytes).await?;
        let len = bytes.len();
        // Checksumming and decoding tens of MiB is work for a blocking thread.
        let decoded = tokio::task::spawn_blocking(move || decode_checked(&bytes, true))
            .await
            .map_err(|e| Status::internal(format!("decoding the snapshot: {e}")))?;
        let (m, _) = decoded
            .map_err(|e| Status::invalid_argument(format!("snapshot message refused: {e}")))?;
        if m.msg_type != MessageType::MsgSnapshot as i32 {
            return Err(Status::invalid_argument(format!(
                "a snapshot stream carried message type {}",
                m.msg_type
            )));
        }
        if m.from != from {
            return Err(Status::invalid_argument(format!(
                "snapshot from {} in a stream from {from}",
                m.from
            )));
        }
        let index = m.get_snapshot().get_metadata().index;
        if !(self.inbound)(m) {
            return Err(Status::unavailable("raft inbox full; snapshot dropped"));
        }
        tracing::info!(from, index, bytes = len, "snapshot received");
        Ok(Response::new(Ack {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message as _;

    #[test]
    fn messages_with_entries_and_every_append_go_on_the_bulk_lane() {
        let mut append = crate::tests::append();
        assert!(is_bulk(&append));
        append.entries.clear();
        assert!(
            is_bulk(&append),
            "an empty append keeps its place among appends"
        );
        for kind in [
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgReadIndex,
            MessageType::MsgReadIndexResp,
            MessageType::MsgTimeoutNow,
        ] {
            let mut m = Message::default();
            m.set_msg_type(kind);
            assert!(!is_bulk(&m), "{kind:?}");
        }
        let mut propose = Message::default();
        propose.set_msg_type(MessageType::MsgPropose);
        propose.entries = crate::tests::append().entries;
        assert!(is_bulk(&propose));
    }

    #[test]
    fn a_batch_is_no_larger_than_its_framed_messages_say() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20, 5 << 20] {
            let batch = RaftBatch {
                from: u64::MAX,
                messages: vec![vec![0; len]],
            };
            // The `from` field takes at most 11 bytes; the headroom covers it.
            assert!(batch.encoded_len() <= framed_len(len) + 11, "{len}");
            assert!(batch.encoded_len() >= framed_len(len), "{len}");
        }
    }
}
