//! The CITA-Cloud network adapter.
//!
//! Wire behaviour, shared with the existing raft consensus service:
//! - module `consensus`; message types `raft` (an encoded `eraftpb.Message`), `probe`
//!   (sender's raft id, 8 bytes big-endian, by `Broadcast`), `probe-resp` (responder's
//!   raft id, to the prober's origin), `refresh` (the intended raft id, sent back when a
//!   `raft` message reached the wrong node).
//! - `origin` is the network's session id of a peer. The adapter learns raft id →
//!   origin from incoming `raft`, `probe` and `probe-resp` messages, sends with `SendMsg`
//!   to that origin, and when the origin is unknown probes. Meanwhile it holds the last
//!   few messages without entries or a snapshot (votes, heartbeats, a leader's
//!   `MsgTimeoutNow`: what raft would not send again before an election timeout) and
//!   sends them once a probe answer names the origin, if that comes within [`HOLD_FOR`];
//!   appends and snapshots are dropped, as raft sends them again.
//!
//! # Who may speak for a raft id
//!
//! A peer chooses the raft id it claims (the `from` of a raft message, the payload of a
//! probe); only the `origin` is the network service's word. So the map changes only on
//! what the network vouches for:
//! - a raft id no origin speaks for yet is bound to the first origin that claims it, and
//!   an origin speaks for one raft id only;
//! - a claim that conflicts with a binding is refused ([`InboundError::OriginConflict`]),
//!   and a raft message carrying it never reaches raft. The bound origin is replaced only
//!   when the network no longer lists it among its peers (`GetPeersNetInfo`), or, for a
//!   network that cannot say, when it has been silent for [`CitaNetworkConfig::stale_after`];
//! - `refresh` from origin O for raft id Y ("I am not Y") removes only the binding Y → O;
//! - no origin may claim this node's own raft id.
//!
//! A hostile peer can therefore claim a raft id no one has spoken for yet (the real node
//! then takes it back once the hostile origin falls silent or leaves the network), but it
//! cannot take over or blackhole the traffic of a node that is talking.
//!
//! # Who must send the checksum trailer
//!
//! Our nodes end every raft message with a CRC32C trailer ([`crate::integrity`]); the
//! existing service never does, and probes, probe answers and refreshes are the same
//! 8 bytes from both (the contract's format; nothing else is announced). The rule:
//! - an origin is required to send the trailer once one raft message from it carried a
//!   trailer that verified (only our nodes send one). The requirement remembers the raft
//!   id bound to the origin then;
//! - from then on, a raft message from that origin without a trailer, or with one that
//!   does not match, is dropped before raft sees it and counted (`no_checksum`,
//!   `checksum`). Raft messages never lift the requirement, however many arrive;
//! - it is lifted only by a well-formed `probe` from that origin (exactly 8 bytes) naming
//!   exactly that raft id: what a node sends when it starts, so a node restarted there,
//!   possibly as the existing service (a rolling upgrade rolled back). The next raft
//!   message from the origin whose trailer verifies sets the requirement again.
//!
//! Why no damage lifts it: a raft message is never read as a probe, as the type field
//! decides, not the payload; a damaged probe is either not 8 bytes (refused as
//! `bad_id_payload`) or names another raft id, which the origin binding refuses as a
//! conflict (an origin speaks for one raft id), and which is not the raft id the
//! requirement remembers (so not even an origin whose binding has gone is lifted by it).
//!
//! The window, stated honestly: between a node's own probe (at its start; ours also
//! probe when they lack a peer's origin, or after a refresh that undid a binding) and
//! its first raft message whose trailer verifies, a raft message of that origin is taken
//! without the check (no trailer, or one that does not match, read as none). Damage
//! cannot open that window, only the node's own probe; the gate in front of raft
//! (`craft_core::gate`) and the controller's check of each block (`CheckProposal`) still
//! stand behind it. A node of the existing service restarted at such an origin whose
//! start probe is lost is not heard until it probes again (it does on any refresh, or
//! when it must send to a peer whose origin it does not know).
//!
//! "End to end" here means one hop: from this adapter through the network service to the
//! adapter of the receiving node, where the trailer is checked before raft sees the
//! message. The rest of a block's way (from the proposing controller into raft, through
//! the raft log, out to each node's controller) is covered by each controller's own
//! check of the block (`CheckProposal`) before it is committed, not by the trailer.
//!
//! # Sending
//!
//! Like the KV transport's links ([`crate::peer`]), messages to one peer go on two
//! lanes, each a bounded queue drained by a task of its own:
//! - the **control lane** carries every message without entries (heartbeats and their
//!   answers, votes, append answers, read index, `MsgTimeoutNow`, probe answers), with
//!   up to [`CONTROL_IN_FLIGHT`] `SendMsg` calls at once, so it never waits behind
//!   bulk data;
//! - the **bulk lane** carries `MsgAppend` (even an empty one: it may commit what the
//!   appends before it carried), `MsgSnapshot` and any other message with entries, one
//!   `SendMsg` at a time, so a follower receives the appends in the order raft sent
//!   them. It queues at most [`BULK_QUEUE_BYTES`] besides its message bound.
//!
//! A raft message whose encoding exceeds [`MAX_RAFT_MESSAGE_BYTES`] never leaves: it is
//! dropped, logged and counted. Nothing is dropped without telling raft: a full queue, a
//! failed `SendMsg` or one answered with a non-zero code, an append for a peer whose
//! origin is unknown, a message too large, or one still queued for an origin that was
//! replaced (it is never sent there) reports the peer unreachable
//! ([`CitaNetwork::report_unreachable_to`], usually
//! [`craft_core::NodeHandle::report_unreachable`]), so raft's leader probes it instead
//! of streaming appends after lost ones. A peer is reported once, and again only after
//! a message from it arrived.
//!
//! The channel to the network service sends HTTP/2 keepalive pings, so a connection
//! that stalled is replaced; [`TIMEOUTS_BEFORE_LOST`] calls in a row that time out are
//! taken as a lost network service (this node registers its handler again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cita_proto::common::{Empty, StatusCode};
use cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerService;
use cita_proto::network::network_service_client::NetworkServiceClient;
use cita_proto::network::{NetworkMsg, RegisterInfo};
use futures::StreamExt as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::integrity::{decode_checked, encode_checked, Integrity, IntegrityError};
use crate::queue::PeerStats;

/// Module name the consensus service registers with the network.
pub const MODULE: &str = "consensus";
/// Message type of a raft message.
pub const TYPE_RAFT: &str = "raft";
/// Message type asking peers for their raft ids.
pub const TYPE_PROBE: &str = "probe";
/// Message type answering a probe.
pub const TYPE_PROBE_RESP: &str = "probe-resp";
/// Message type telling a sender its origin mapping is stale.
pub const TYPE_REFRESH: &str = "refresh";

/// The outgoing queue of `refresh` replies (no raft id is `u64::MAX` in practice: ids
/// are hashes, and this one would only share a queue).
const REPLY_QUEUE: u64 = u64::MAX;

/// Control messages sent to one peer at once (`SendMsg` calls in flight).
pub const CONTROL_IN_FLIGHT: usize = 8;
/// Encoded bytes a peer's bulk lane queues before new messages are dropped (a message
/// finding the lane empty is always taken): as much as raft sends a follower at most
/// before it waits for an answer, as the KV transport's [`crate::peer::QUEUE_BYTES`].
pub const BULK_QUEUE_BYTES: usize = crate::peer::QUEUE_BYTES;
/// Room kept under [`cita_proto::MAX_MESSAGE_BYTES`] for the `NetworkMsg`'s own fields
/// and the gRPC framing.
pub const MESSAGE_HEADROOM: usize = 64 << 10;
/// Largest encoded raft message (with its checksum trailer) the adapter sends; a larger
/// one could never pass the gRPC limit and is dropped and reported, not retried.
pub const MAX_RAFT_MESSAGE_BYTES: usize = cita_proto::MAX_MESSAGE_BYTES - MESSAGE_HEADROOM;
/// Calls to the network service in a row that time out before it is taken as lost.
pub const TIMEOUTS_BEFORE_LOST: u32 = 3;
/// Interval of the HTTP/2 keepalive pings on the channel to the network service.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Time a keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the adapter.
#[derive(Debug, Clone)]
pub struct CitaNetworkConfig {
    /// This node's raft id.
    pub raft_id: u64,
    /// The network service, e.g. `http://127.0.0.1:50000`.
    pub network_addr: String,
    /// Host the network should call `ProcessNetworkMsg` on.
    pub handler_host: String,
    /// Port the network should call `ProcessNetworkMsg` on.
    pub handler_port: u16,
    /// Messages queued per peer and lane before new ones are dropped.
    pub queue_capacity: usize,
    /// Least time between two probe broadcasts.
    pub probe_interval: Duration,
    /// How long a bound origin may be silent before another origin may take over its
    /// raft id, when the network cannot list its peers. Default in the service: 10 s.
    pub stale_after: Duration,
}

/// Where incoming raft messages go; returns whether the message was accepted.
pub type Inbound = Arc<dyn Fn(Message) -> bool + Send + Sync>;

/// Told the raft id of a peer that has just started (it sent a `probe`).
pub type PeerStarted = Arc<dyn Fn(u64) + Send + Sync>;

/// Told the raft id of a peer messages were dropped to.
type UnreachableFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Where peers that messages were dropped to are reported, and which were reported
/// and not heard from since.
#[derive(Default)]
struct Unreachable {
    /// Who is told; `None` while raft is stopped (reports are then not made).
    reporter: Option<UnreachableFn>,
    /// Peers reported and not heard from since.
    reported: HashSet<u64>,
}

/// The reports of unreachable peers, shared with the lanes' tasks.
#[derive(Default)]
struct Reports(Mutex<Unreachable>);

impl Reports {
    /// Reports `peer` unreachable, unless it was reported and not heard from since.
    fn report(&self, peer: u64) {
        if peer == REPLY_QUEUE {
            return;
        }
        let report = {
            let mut u = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let Some(report) = u.reporter.clone() else {
                return;
            };
            if !u.reported.insert(peer) {
                return;
            }
            report
        };
        tracing::debug!(peer, "reporting peer unreachable");
        report(peer);
    }

    /// A message from `peer` arrived: a drop may be reported again.
    fn heard_from(&self, peer: u64) {
        let mut u = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !u.reported.is_empty() {
            u.reported.remove(&peer);
        }
    }

    fn set(&self, reporter: Option<UnreachableFn>) {
        let mut u = self.0.lock().unwrap_or_else(|e| e.into_inner());
        u.reporter = reporter;
        u.reported.clear();
    }
}

/// Whether `m` goes on the bulk lane, sent in order: it carries entries or a snapshot,
/// or is an append (even an empty one may commit entries only the appends before it
/// carry).
fn is_bulk(m: &Message) -> bool {
    m.msg_type == MessageType::MsgAppend as i32
        || m.msg_type == MessageType::MsgSnapshot as i32
        || !m.entries.is_empty()
}

/// One lane to a peer: its queue's sending end and the bytes it holds.
struct Lane {
    tx: mpsc::Sender<NetworkMsg>,
    /// Bytes of payload queued and not yet taken by the lane's task.
    queued_bytes: Arc<AtomicUsize>,
}

/// The two lanes to one peer at one origin. Dropping it (the peer's origin changed, or
/// its binding was evicted) makes its tasks drop, count and report what is still
/// queued instead of sending it to the old origin.
struct PeerLink {
    control: Lane,
    bulk: Lane,
    /// Set when the link is dropped.
    stale: Arc<AtomicBool>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.stale.store(true, Ordering::Release);
    }
}

/// The links to peers, and their counters (kept when a link is replaced).
#[derive(Default)]
struct Links {
    links: HashMap<u64, PeerLink>,
    stats: HashMap<u64, Arc<PeerStats>>,
}

impl Links {
    /// The counters of `peer`, made on first use. Past [`MAX_BINDINGS`] peers counted,
    /// those without a link are forgotten first: a peer's counters outlive its link
    /// (its origin may change), but not without bound.
    fn stats_of(&mut self, peer: u64) -> Arc<PeerStats> {
        if !self.stats.contains_key(&peer) && self.stats.len() >= MAX_BINDINGS {
            let links = &self.links;
            self.stats.retain(|p, _| links.contains_key(p));
        }
        self.stats.entry(peer).or_default().clone()
    }
}

/// What a lane's task needs to send.
struct LaneSender {
    peer: u64,
    /// `control` or `bulk`, for logs.
    kind: &'static str,
    client: NetworkServiceClient<Channel>,
    network_lost: Arc<tokio::sync::Notify>,
    stats: Arc<PeerStats>,
    stale: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicUsize>,
    reports: Arc<Reports>,
    /// Calls to the network in a row that timed out (all lanes).
    timeouts: Arc<AtomicU32>,
}

impl LaneSender {
    /// Runs the lane: takes messages in queue order, with up to `in_flight` sends at
    /// once (1: strictly one after another), until the link is dropped and drained.
    async fn run(self: Arc<Self>, rx: mpsc::Receiver<NetworkMsg>, in_flight: usize) {
        let this = self.clone();
        ReceiverStream::new(rx)
            .map(move |msg| {
                this.queued_bytes
                    .fetch_sub(msg.msg.len(), Ordering::Relaxed);
                this.clone().deliver(msg)
            })
            .buffer_unordered(in_flight.max(1))
            .for_each(|()| std::future::ready(()))
            .await;
    }

    async fn deliver(self: Arc<Self>, msg: NetworkMsg) {
        if self.stale.load(Ordering::Acquire) {
            tracing::debug!(
                peer = self.peer,
                origin = msg.origin,
                lane = self.kind,
                "origin replaced; queued message dropped"
            );
            self.dropped();
            return;
        }
        match self.client.clone().send_msg(msg).await {
            Ok(resp) => {
                self.timeouts.store(0, Ordering::Relaxed);
                let code = resp.get_ref().code;
                if code == 0 {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!(peer = self.peer, code, "network refused SendMsg");
                    self.dropped();
                }
            }
            Err(e) => {
                tracing::debug!(peer = self.peer, error = %e, "SendMsg failed");
                if network_gone(&e) {
                    self.network_lost.notify_one();
                } else if matches!(
                    e.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) {
                    let in_a_row = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                    if in_a_row >= TIMEOUTS_BEFORE_LOST {
                        self.timeouts.store(0, Ordering::Relaxed);
                        tracing::warn!(
                            in_a_row,
                            "calls to the network service keep timing out; taking it as lost"
                        );
                        self.network_lost.notify_one();
                    }
                }
                self.dropped();
            }
        }
    }

    fn dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.reports.report(self.peer);
    }
}

/// Why an incoming network message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    /// The message is for another module.
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    /// The type is none of raft, probe, probe-resp, refresh.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A raft id payload that is not 8 bytes.
    #[error("{kind} payload is {len} bytes, expected 8")]
    BadIdPayload {
        /// The message type.
        kind: String,
        /// Its length.
        len: usize,
    },
    /// A raft payload that does not decode.
    #[error("undecodable raft message: {0}")]
    BadRaftMessage(String),
    /// A raft message whose checksum trailer does not match, or that has none, from an
    /// origin required to send it (see the module docs): damaged in transit.
    #[error("damaged raft message from origin {origin}: {error}")]
    Damaged {
        /// The sending origin.
        origin: u64,
        /// What was wrong.
        error: crate::integrity::IntegrityError,
    },
    /// A claim to a raft id that another origin speaks for, that this origin's own raft id
    /// contradicts, or that is this node's own.
    #[error("origin {origin} claims raft id {raft_id}: {why}")]
    OriginConflict {
        /// The raft id claimed.
        raft_id: u64,
        /// The claiming origin.
        origin: u64,
        /// What the claim conflicts with.
        why: String,
    },
}

impl InboundError {
    /// A short name of the reason, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            InboundError::UnknownModule(_) => "unknown_module",
            InboundError::UnknownType(_) => "unknown_type",
            InboundError::BadIdPayload { .. } => "bad_id_payload",
            InboundError::BadRaftMessage(_) => "undecodable",
            InboundError::Damaged {
                error: IntegrityError::Missing,
                ..
            } => "no_checksum",
            InboundError::Damaged { .. } => "checksum",
            InboundError::OriginConflict { .. } => "origin_conflict",
        }
    }
}

/// The raft id ↔ origin bindings (see the module docs for the rules).
#[derive(Debug, Default)]
struct Origins {
    by_id: HashMap<u64, u64>,
    by_origin: HashMap<u64, u64>,
    /// When each bound origin was last heard from.
    last_seen: HashMap<u64, Instant>,
    /// Raft ids whose rebinding is being checked with the network, and since when.
    checking: HashMap<u64, Instant>,
    /// Origins required to send the checksum trailer, with the raft id bound to each
    /// when a verified trailer set the requirement: only a probe from the origin naming
    /// that raft id lifts it (see the module docs). Kept when a binding goes: the origin
    /// of a node stays its own, and no damage may lift the requirement.
    trailer_required: HashMap<u64, u64>,
}

/// Most origins remembered as required to send the trailer; past it, those not bound
/// any more are forgotten (a bound origin never is).
const MAX_TRAILER_REQUIRED: usize = 2 * MAX_BINDINGS;

/// Most raft ids bound at once. The origin is the network's word, but whoever reaches
/// the gRPC port directly can make up origins: past the bound, a new claim takes the
/// place of the binding silent longest, if that one is stale, and is refused otherwise.
const MAX_BINDINGS: usize = 1024;

/// How long a message to a raft id whose origin is unknown is held for the probe's
/// answer. A node that restarted knows only the peers that have spoken to it since (a
/// follower hears from its leader alone), so its first vote requests to the others
/// would otherwise be lost, and its election (a leadership transfer, too) with them.
pub const HOLD_FOR: Duration = Duration::from_secs(1);

/// Most messages held per raft id; older ones give way.
const HOLD_PER_PEER: usize = 8;

/// Most raft ids messages are held for at once.
const HOLD_PEERS: usize = 64;

/// Whether raft would not send `m` again soon if it were lost: no entries and no
/// snapshot, so it is small, and worth holding while the origin is being learned.
fn worth_holding(m: &Message) -> bool {
    m.entries.is_empty() && m.snapshot.is_none()
}

impl Origins {
    fn bind(&mut self, id: u64, origin: u64) {
        if let Some(old) = self.by_id.insert(id, origin) {
            self.by_origin.remove(&old);
            self.last_seen.remove(&old);
        }
        self.by_origin.insert(origin, id);
        self.last_seen.insert(origin, Instant::now());
    }

    fn unbind(&mut self, id: u64) {
        if let Some(origin) = self.by_id.remove(&id) {
            self.by_origin.remove(&origin);
            self.last_seen.remove(&origin);
        }
        self.checking.remove(&id);
    }

    /// Requires the checksum trailer from `origin`, bound to raft id `id`, whose raft
    /// message has just carried one that verified. Returns whether that is new.
    fn require_trailer(&mut self, origin: u64, id: u64) -> bool {
        if !self.trailer_required.contains_key(&origin)
            && self.trailer_required.len() >= MAX_TRAILER_REQUIRED
        {
            let bound = &self.by_origin;
            self.trailer_required.retain(|o, _| bound.contains_key(o));
        }
        self.trailer_required.insert(origin, id) != Some(id)
    }

    /// Lifts the requirement of `origin`, whose well-formed probe names raft id `id`, if
    /// it was set while the origin spoke for that raft id. Returns whether it did.
    fn lift_trailer(&mut self, origin: u64, id: u64) -> bool {
        let lift = self.trailer_required.get(&origin) == Some(&id);
        if lift {
            self.trailer_required.remove(&origin);
        }
        lift
    }

    /// Room for one more binding: `Some(None)` when there is, `Some(Some(id))` when the
    /// binding of `id`, silent longest and for at least `stale_after`, was dropped to make
    /// it, `None` when there is none.
    fn make_room(&mut self, stale_after: Duration) -> Option<Option<u64>> {
        if self.by_id.len() < MAX_BINDINGS {
            return Some(None);
        }
        let oldest = self
            .last_seen
            .iter()
            .min_by_key(|(_, seen)| **seen)
            .map(|(origin, seen)| (*origin, *seen));
        match oldest {
            Some((origin, seen)) if seen.elapsed() >= stale_after => {
                let id = self.by_origin.get(&origin).copied();
                if let Some(id) = id {
                    self.unbind(id);
                }
                Some(id)
            }
            _ => None,
        }
    }
}

struct Inner {
    cfg: CitaNetworkConfig,
    client: NetworkServiceClient<Channel>,
    origins: RwLock<Origins>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    links: Mutex<Links>,
    reports: Arc<Reports>,
    timeouts: Arc<AtomicU32>,
    inbound: RwLock<Option<Inbound>>,
    peer_started: RwLock<Option<PeerStarted>>,
    last_probe: Mutex<Option<Instant>>,
    /// Messages held for raft ids whose origin is not known yet, with when each was.
    held: Mutex<HashMap<u64, std::collections::VecDeque<(Instant, Message)>>>,
    /// Woken when a call to the network failed as if it were gone (`Unavailable`): a
    /// network service started again has forgotten our handler.
    network_lost: Arc<tokio::sync::Notify>,
}

/// Whether a failed call says the network service is not there (down, restarting),
/// rather than that it refused this one message.
fn network_gone(e: &Status) -> bool {
    e.code() == tonic::Code::Unavailable
}

/// The adapter: a [`craft_core::Transport`] for outgoing raft messages and the
/// `NetworkMsgHandlerService` for incoming ones. Cheap to clone.
#[derive(Clone)]
pub struct CitaNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CitaNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CitaNetwork")
            .field("raft_id", &self.inner.cfg.raft_id)
            .finish_non_exhaustive()
    }
}

fn id_payload(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn parse_id(kind: &str, bytes: &[u8]) -> Result<u64, InboundError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| InboundError::BadIdPayload {
            kind: kind.to_string(),
            len: bytes.len(),
        })
}

impl CitaNetwork {
    /// Creates the adapter; the network channel connects lazily.
    pub fn new(cfg: CitaNetworkConfig) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(cfg.network_addr.clone())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(Self {
            inner: Arc::new(Inner {
                client: NetworkServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
                origins: RwLock::new(Origins::default()),
                refused: Mutex::new(BTreeMap::new()),
                links: Mutex::new(Links::default()),
                reports: Arc::new(Reports::default()),
                timeouts: Arc::new(AtomicU32::new(0)),
                inbound: RwLock::new(None),
                peer_started: RwLock::new(None),
                last_probe: Mutex::new(None),
                held: Mutex::new(HashMap::new()),
                network_lost: Arc::new(tokio::sync::Notify::new()),
                cfg,
            }),
        })
    }

    /// Sets (or clears) where incoming raft messages go. Cleared while raft is stopped,
    /// e.g. when this node is not a validator.
    pub fn set_inbound(&self, inbound: Option<Inbound>) {
        *self
            .inner
            .inbound
            .write()
            .unwrap_or_else(|e| e.into_inner()) = inbound;
    }

    /// Sets (or clears) who is told of a peer that has just started: one that sends a
    /// `probe`, as every node does when it starts and does not yet know its peers'
    /// origins. It may have started with an empty raft directory (see
    /// [`craft_core::NodeHandle::peer_restarted`]).
    pub fn set_peer_started(&self, peer_started: Option<PeerStarted>) {
        *self
            .inner
            .peer_started
            .write()
            .unwrap_or_else(|e| e.into_inner()) = peer_started;
    }

    /// Tells `report` the raft id of every peer this adapter dropped messages to (see
    /// [the module docs](self)); usually [`craft_core::NodeHandle::report_unreachable`].
    /// Replaces any reporter set before.
    pub fn report_unreachable_to(&self, report: impl Fn(u64) + Send + Sync + 'static) {
        self.inner.reports.set(Some(Arc::new(report)));
    }

    /// Stops reporting unreachable peers, e.g. while raft is stopped.
    pub fn stop_reporting_unreachable(&self) {
        self.inner.reports.set(None);
    }

    /// Registers the `consensus` handler with the network, retrying with backoff until
    /// the network accepts it.
    pub async fn register_until_ok(&self) {
        let info = RegisterInfo {
            module_name: MODULE.to_string(),
            hostname: self.inner.cfg.handler_host.clone(),
            port: self.inner.cfg.handler_port.to_string(),
        };
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self
                .inner
                .client
                .clone()
                .register_network_msg_handler(info.clone())
                .await
            {
                Ok(resp) if resp.get_ref().code == 0 => {
                    tracing::info!("registered network message handler");
                    // Now that answers can reach us, say who we are: peers learn our
                    // origin from the probe and answer with theirs. A probe sent
                    // before (raft starts first) found no handler to answer to, and a
                    // peer that has no origin for us yet may not send to us again
                    // before it needs to.
                    self.probe_now();
                    return;
                }
                Ok(resp) => tracing::warn!(
                    code = resp.get_ref().code,
                    attempt,
                    "network refused handler registration"
                ),
                Err(e) if attempt == 1 || attempt.is_power_of_two() => {
                    tracing::warn!(error = %e, attempt, "network unreachable, retrying registration")
                }
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    /// Registers the handler ([`CitaNetwork::register_until_ok`]) and registers it again
    /// whenever a call to the network has failed as if the service were gone: a network
    /// service that was killed and started again no longer knows where to deliver, and
    /// this node would otherwise never hear from its peers again. Runs until dropped.
    pub async fn stay_registered(&self) {
        loop {
            self.register_until_ok().await;
            self.inner.network_lost.notified().await;
            tracing::warn!("network service unreachable; registering again once it is back");
        }
    }

    /// Origin currently known for raft id `id`.
    pub fn origin_of(&self, id: u64) -> Option<u64> {
        self.inner
            .origins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&id)
            .copied()
    }

    /// Accepts `origin`'s claim to speak for raft id `id`, binding it if neither is bound
    /// yet; refuses a conflicting claim and starts checking with the network whether the
    /// bound origin is gone.
    fn claim(&self, id: u64, origin: u64) -> Result<(), InboundError> {
        let conflict = |why: String| InboundError::OriginConflict {
            raft_id: id,
            origin,
            why,
        };
        if id == self.inner.cfg.raft_id {
            return Err(conflict("that is this node's own raft id".into()));
        }
        if id == 0 {
            return Err(conflict("raft id 0 is reserved".into()));
        }
        let mut o = self
            .inner
            .origins
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let bound_origin = o.by_id.get(&id).copied();
        let bound_id = o.by_origin.get(&origin).copied();
        match (bound_origin, bound_id) {
            (Some(b), _) if b == origin => {
                o.last_seen.insert(origin, Instant::now());
                Ok(())
            }
            (None, None) => {
                match o.make_room(self.inner.cfg.stale_after) {
                    None => {
                        return Err(conflict(format!(
                            "{MAX_BINDINGS} raft ids are bound and none is stale"
                        )))
                    }
                    // Its outgoing queue goes with it: queues stay as bounded as bindings.
                    Some(Some(evicted)) => self.remove_link(evicted, true),
                    Some(None) => {}
                }
                tracing::debug!(raft_id = id, origin, "learned peer origin");
                o.bind(id, origin);
                drop(o);
                self.release_held(id, origin);
                Ok(())
            }
            (_, Some(other)) => Err(conflict(format!("the origin speaks for raft id {other}"))),
            (Some(b), None) => {
                let silent = o
                    .last_seen
                    .get(&b)
                    .is_none_or(|t| t.elapsed() >= self.inner.cfg.stale_after);
                if silent {
                    tracing::info!(
                        raft_id = id,
                        old = b,
                        new = origin,
                        "bound origin silent; rebinding"
                    );
                    o.bind(id, origin);
                    // What is queued for the old origin is not sent there.
                    self.remove_link(id, false);
                    drop(o);
                    self.release_held(id, origin);
                    return Ok(());
                }
                let recent = o
                    .checking
                    .get(&id)
                    .is_some_and(|t| t.elapsed() < self.inner.cfg.probe_interval);
                if !recent {
                    o.checking.insert(id, Instant::now());
                    self.check_rebind(id, b, origin);
                }
                Err(conflict(format!("origin {b} speaks for it")))
            }
        }
    }

    /// Asks the network which origins it lists; rebinds `id` from `old` to `new` if the
    /// network lists `new` but no longer `old`.
    fn check_rebind(&self, id: u64, old: u64, new: u64) {
        let this = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let listed: HashSet<u64> = match this
                .inner
                .client
                .clone()
                .get_peers_net_info(Empty {})
                .await
            {
                Ok(resp) => resp.into_inner().nodes.iter().map(|n| n.origin).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "GetPeersNetInfo failed; origin {old} keeps raft id {id}");
                    return;
                }
            };
            let mut o = this
                .inner
                .origins
                .write()
                .unwrap_or_else(|e| e.into_inner());
            o.checking.remove(&id);
            let still = o.by_id.get(&id) == Some(&old) && !o.by_origin.contains_key(&new);
            if still && listed.contains(&new) && !listed.contains(&old) {
                tracing::info!(raft_id = id, old, new, "network no longer lists the bound origin; rebinding");
                o.bind(id, new);
                this.remove_link(id, false);
                drop(o);
                this.release_held(id, new);
            }
        });
    }

    /// Holds `m` for its raft id, whose origin is unknown: see [`HOLD_FOR`]. Returns
    /// whether it did (`false`: `m` is dropped).
    fn hold(&self, m: Message) -> bool {
        if !worth_holding(&m) {
            return false;
        }
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, q| q.back().is_some_and(|(at, _)| at.elapsed() < HOLD_FOR));
        if !held.contains_key(&m.to) && held.len() >= HOLD_PEERS {
            return false;
        }
        let q = held.entry(m.to).or_default();
        if q.len() >= HOLD_PER_PEER {
            q.pop_front();
        }
        q.push_back((Instant::now(), m));
        true
    }

    /// Sends what is held for raft id `id`, now bound to `origin`, that is still recent.
    fn release_held(&self, id: u64, origin: u64) {
        let Some(q) = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        else {
            return;
        };
        for (at, m) in q {
            if at.elapsed() < HOLD_FOR {
                self.send_to_origin(id, origin, TYPE_RAFT, encode_checked(&m), false);
            }
        }
    }

    /// Refusals of incoming messages since start, by [`InboundError::kind`].
    pub fn refused_stats(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// `(raft id, sent, dropped)` raft messages per peer (both lanes), sorted by raft
    /// id: sent were taken by the network (code 0); dropped found a full queue, failed,
    /// were refused by the network, were too large, were appends for a peer whose
    /// origin was unknown, or were still queued for an origin that was replaced.
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        let links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = links
            .stats
            .iter()
            .filter(|(peer, _)| **peer != REPLY_QUEUE)
            .map(|(peer, s)| {
                (
                    *peer,
                    s.sent.load(Ordering::Relaxed),
                    s.dropped.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Counts a message to `peer` dropped before it was queued, and reports the peer.
    fn dropped_before_queue(&self, peer: u64) {
        self.inner
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats_of(peer)
            .dropped
            .fetch_add(1, Ordering::Relaxed);
        self.inner.reports.report(peer);
    }

    /// Drops the link to `peer` (its origin is no longer bound): what it still holds is
    /// dropped, counted and reported, never sent to the old origin. `forget` also drops
    /// its counters (the binding was evicted, to keep them as bounded as bindings).
    fn remove_link(&self, peer: u64, forget: bool) {
        let mut links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        links.links.remove(&peer);
        if forget {
            links.stats.remove(&peer);
        }
    }

    /// Broadcasts a probe unless one went out within `probe_interval`.
    pub fn probe(&self) {
        {
            let mut last = self
                .inner
                .last_probe
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.inner.cfg.probe_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.broadcast_probe();
    }

    /// Tells the other nodes this node is leaving: broadcasts its probe and waits, at
    /// most `wait`, for the network service to take it. A leader of ours takes a probe
    /// as a restart and forgets what this node acknowledged, so while it is gone, and
    /// when it comes back with an empty raft directory (perhaps as the existing service,
    /// which steps the messages it was sent before its raft started), no heartbeat
    /// commits past its log on the strength of what this run acknowledged.
    pub async fn announce_departure(&self, wait: Duration) {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: TYPE_PROBE.to_string(),
            origin: 0,
            msg: id_payload(self.inner.cfg.raft_id),
        };
        let mut client = self.inner.client.clone();
        match tokio::time::timeout(wait, client.broadcast(msg)).await {
            Ok(Ok(_)) => tracing::info!("departure announced to the other nodes"),
            Ok(Err(e)) => tracing::warn!(error = %e, "departure probe not taken"),
            Err(_) => tracing::warn!("departure probe not taken in time"),
        }
    }

    /// Broadcasts a probe whenever the last one was.
    fn probe_now(&self) {
        *self
            .inner
            .last_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.broadcast_probe();
    }

    /// Broadcasts our probe: this node's raft id, 8 bytes big-endian, as every node of
    /// the existing service sends it.
    fn broadcast_probe(&self) {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: TYPE_PROBE.to_string(),
            origin: 0,
            msg: id_payload(self.inner.cfg.raft_id),
        };
        let mut client = self.inner.client.clone();
        let lost = self.inner.network_lost.clone();
        tokio::spawn(async move {
            if let Err(e) = client.broadcast(msg).await {
                tracing::debug!(error = %e, "probe broadcast failed");
                if network_gone(&e) {
                    lost.notify_one();
                }
            }
        });
    }

    /// Queues `payload` for `peer` at `origin` on its bulk or control lane. Returns
    /// `false` when it was dropped (the lane is full): counted and reported.
    fn send_to_origin(
        &self,
        peer: u64,
        origin: u64,
        kind: &str,
        payload: Vec<u8>,
        bulk: bool,
    ) -> bool {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: kind.to_string(),
            origin,
            msg: payload,
        };
        let len = msg.msg.len();
        let mut links = self.inner.links.lock().unwrap_or_else(|e| e.into_inner());
        let stats = links.stats_of(peer);
        let link = match links.links.entry(peer) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.start_link(peer, stats.clone()))
            }
        };
        let lane = if bulk { &link.bulk } else { &link.control };
        let queued = lane.queued_bytes.load(Ordering::Relaxed);
        let over_bytes = bulk && queued > 0 && queued.saturating_add(len) > BULK_QUEUE_BYTES;
        if !over_bytes {
            lane.queued_bytes.fetch_add(len, Ordering::Relaxed);
            match lane.tx.try_send(msg) {
                Ok(()) => return true,
                Err(_) => {
                    lane.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                }
            }
        }
        drop(links);
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            peer,
            lane = if bulk { "bulk" } else { "control" },
            "send queue full; message dropped"
        );
        self.inner.reports.report(peer);
        false
    }

    /// Starts the two lanes to `peer`, each drained by a task of its own.
    fn start_link(&self, peer: u64, stats: Arc<PeerStats>) -> PeerLink {
        let stale = Arc::new(AtomicBool::new(false));
        let lane = |kind: &'static str, in_flight: usize| {
            let (tx, rx) = mpsc::channel(self.inner.cfg.queue_capacity.max(1));
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let sender = Arc::new(LaneSender {
                peer,
                kind,
                client: self.inner.client.clone(),
                network_lost: self.inner.network_lost.clone(),
                stats: stats.clone(),
                stale: stale.clone(),
                queued_bytes: queued_bytes.clone(),
                reports: self.inner.reports.clone(),
                timeouts: self.inner.timeouts.clone(),
            });
            tokio::spawn(sender.run(rx, in_flight));
            Lane { tx, queued_bytes }
        };
        PeerLink {
            control: lane("control", CONTROL_IN_FLIGHT),
            bulk: lane("bulk", 1),
            stale,
        }
    }

    /// Handles one message from the network. Malformed input and conflicting origin
    /// claims are refused with a reason, counted, and never reach raft.
    pub fn handle(&self, msg: NetworkMsg) -> Result<(), InboundError> {
        let result = self.handle_inner(msg);
        if let Err(e) = &result {
            *self
                .inner
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(e.kind())
                .or_default() += 1;
        }
        result
    }

    /// Requires the checksum trailer from `origin`, bound to raft id `id`, whose raft
    /// message has just carried one that verified.
    fn require_trailer(&self, origin: u64, id: u64) {
        let new = self
            .inner
            .origins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .require_trailer(origin, id);
        if new {
            tracing::debug!(
                raft_id = id,
                origin,
                "peer sends the checksum trailer; requiring it"
            );
        }
    }

    /// Lifts the trailer requirement of `origin` if its probe names raft id `id`, the
    /// one it was required under: the node there has started again, maybe as the
    /// existing service.
    fn lift_trailer(&self, origin: u64, id: u64) {
        let lifted = self
            .inner
            .origins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .lift_trailer(origin, id);
        if lifted {
            // Every probe of a node of ours lifts it too (until its next message): debug.
            tracing::debug!(
                raft_id = id,
                origin,
                "peer probed (started again); checksum trailer not required until it sends one"
            );
        }
    }

    fn handle_inner(&self, msg: NetworkMsg) -> Result<(), InboundError> {
        if msg.module != MODULE {
            return Err(InboundError::UnknownModule(msg.module));
        }
        match msg.r#type.as_str() {
            TYPE_RAFT => {
                let required = self
                    .inner
                    .origins
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .trailer_required
                    .contains_key(&msg.origin);
                let (raft_msg, integrity) = match decode_checked(&msg.msg, required) {
                    Ok(decoded) => decoded,
                    Err(IntegrityError::Decode(e)) => {
                        return Err(InboundError::BadRaftMessage(e.to_string()))
                    }
                    Err(error) => {
                        return Err(InboundError::Damaged {
                            origin: msg.origin,
                            error,
                        })
                    }
                };
                if raft_msg.to != self.inner.cfg.raft_id {
                    // The sender's origin map is stale: tell it whom it meant to reach.
                    tracing::debug!(
                        to = raft_msg.to,
                        origin = msg.origin,
                        "raft message for another node"
                    );
                    // Queued under one key for all such replies: `from` is the sender's
                    // word, and a queue per claimed id would let it grow without bound.
                    self.send_to_origin(
                        REPLY_QUEUE,
                        msg.origin,
                        TYPE_REFRESH,
                        id_payload(raft_msg.to),
                        false,
                    );
                    return Ok(());
                }
                self.claim(raft_msg.from, msg.origin)?;
                self.inner.reports.heard_from(raft_msg.from);
                if integrity == Integrity::Verified {
                    self.require_trailer(msg.origin, raft_msg.from);
                }
                let inbound = self
                    .inner
                    .inbound
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(inbound) = inbound {
                    if !inbound(raft_msg) {
                        tracing::debug!("raft inbox full, message dropped");
                    }
                }
                Ok(())
            }
            TYPE_PROBE => {
                let id = parse_id(TYPE_PROBE, &msg.msg)?;
                // A damaged probe names another raft id and is refused here as a
                // conflict; one that passes names the raft id the origin speaks for.
                self.claim(id, msg.origin)?;
                self.inner.reports.heard_from(id);
                self.lift_trailer(msg.origin, id);
                let peer_started = self
                    .inner
                    .peer_started
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(peer_started) = peer_started {
                    peer_started(id);
                }
                self.send_to_origin(
                    id,
                    msg.origin,
                    TYPE_PROBE_RESP,
                    id_payload(self.inner.cfg.raft_id),
                    false,
                );
                Ok(())
            }
            TYPE_PROBE_RESP => {
                let id = parse_id(TYPE_PROBE_RESP, &msg.msg)?;
                self.claim(id, msg.origin)?;
                self.inner.reports.heard_from(id);
                Ok(())
            }
            TYPE_REFRESH => {
                let id = parse_id(TYPE_REFRESH, &msg.msg)?;
                // Origin O says it is not `id`: that undoes a binding id → O, and nothing
                // else (no one may unbind another origin).
                let removed = {
                    let mut o = self
                        .inner
                        .origins
                        .write()
                        .unwrap_or_else(|e| e.into_inner());
                    let ours = o.by_id.get(&id) == Some(&msg.origin);
                    if ours {
                        o.unbind(id);
                        self.remove_link(id, false);
                    }
                    ours
                };
                if removed {
                    self.probe();
                }
                Ok(())
            }
            other => Err(InboundError::UnknownType(other.to_string())),
        }
    }
}

impl craft_core::Transport for CitaNetwork {
    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            match self.origin_of(to) {
                Some(origin) => {
                    let bytes = encode_checked(&m);
                    if bytes.len() > MAX_RAFT_MESSAGE_BYTES {
                        tracing::warn!(
                            to,
                            bytes = bytes.len(),
                            limit = MAX_RAFT_MESSAGE_BYTES,
                            msg_type = ?m.msg_type(),
                            index = m.index,
                            "raft message too large for the network; dropped"
                        );
                        self.dropped_before_queue(to);
                        continue;
                    }
                    self.send_to_origin(to, origin, TYPE_RAFT, bytes, is_bulk(&m));
                }
                None => {
                    tracing::debug!(to, "origin unknown, probing");
                    if !self.hold(m) {
                        // An append (raft sends it again once the peer is probed) or
                        // more peers held for than we keep.
                        self.dropped_before_queue(to);
                    }
                    self.probe();
                }
            }
        }
    }
}

#[tonic::async_trait]
impl NetworkMsgHandlerService for CitaNetwork {
    async fn process_network_msg(
        &self,
        req: Request<NetworkMsg>,
    ) -> Result<Response<StatusCode>, Status> {
        match self.handle(req.into_inner()) {
            Ok(()) => Ok(Response::new(StatusCode { code: 0 })),
            Err(e) => {
                tracing::debug!(error = %e, "refused network message");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::encode_raft_message;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn net_at(network_addr: &str, stale_after: Duration) -> CitaNetwork {
        CitaNetwork::new(CitaNetworkConfig {
            raft_id: 7,
            network_addr: network_addr.into(),
            handler_host: "127.0.0.1".into(),
            handler_port: 1,
            queue_capacity: 16,
            probe_interval: Duration::from_millis(20),
            stale_after,
        })
        .unwrap()
    }

    fn net() -> CitaNetwork {
        // Nothing listens here: outgoing sends fail and are counted, never block.
        net_at("http://127.0.0.1:9", Duration::from_secs(3600))
    }

    fn raft_msg(from: u64, to: u64) -> Vec<u8> {
        let m = Message {
            from,
            to,
            term: 3,
            ..Default::default()
        };
        encode_raft_message(&m)
    }

    fn nm(kind: &str, origin: u64, msg: Vec<u8>) -> NetworkMsg {
        NetworkMsg {
            module: MODULE.into(),
            r#type: kind.into(),
            origin,
            msg,
        }
    }

    #[test]
    fn appends_snapshots_and_entries_go_on_the_bulk_lane() {
        use raft::eraftpb::Entry;
        let of = |t: MessageType| Message {
            msg_type: t as i32,
            ..Default::default()
        };
        assert!(is_bulk(&of(MessageType::MsgAppend)));
        assert!(is_bulk(&of(MessageType::MsgSnapshot)));
        let propose = Message {
            entries: vec![Entry::default()],
            ..of(MessageType::MsgPropose)
        };
        assert!(is_bulk(&propose));
        for t in [
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgReadIndex,
            MessageType::MsgReadIndexResp,
            MessageType::MsgTimeoutNow,
        ] {
            assert!(!is_bulk(&of(t)), "{t:?}");
        }
    }

    #[tokio::test]
    async fn raft_message_teaches_origin_and_reaches_raft() {
        let n = net();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        n.set_inbound(Some(Arc::new(move |m: Message| {
            assert_eq!((m.from, m.to, m.term), (2, 7, 3));
            s.fetch_add(1, Ordering::SeqCst);
            true
        })));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(n.origin_of(2), Some(42));
    }

    #[tokio::test]
    async fn misaddressed_raft_message_is_not_stepped() {
        let n = net();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        n.set_inbound(Some(Arc::new(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            true
        })));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 8))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        assert_eq!(n.origin_of(2), None);
    }

    /// A probe, probe answer or refresh from `origin` naming raft id `id`.
    fn id_msg(kind: &str, origin: u64, id: u64) -> NetworkMsg {
        nm(kind, origin, id.to_be_bytes().to_vec())
    }

    fn counting(n: &CitaNetwork) -> Arc<AtomicUsize> {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        n.set_inbound(Some(Arc::new(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            true
        })));
        seen
    }

    fn is_conflict(r: Result<(), InboundError>) -> bool {
        matches!(r, Err(InboundError::OriginConflict { .. }))
    }

    #[tokio::test]
    async fn a_bound_raft_id_cannot_be_taken_over_by_another_origin() {
        let n = net();
        let seen = counting(&n);
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        // Origin 43 claims to be raft id 2: by raft message, probe and probe answer.
        assert!(is_conflict(n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7)))));
        assert!(is_conflict(n.handle(id_msg(TYPE_PROBE, 43, 2))));
        assert!(is_conflict(n.handle(id_msg(TYPE_PROBE_RESP, 43, 2))));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "forged message reached raft"
        );
        assert_eq!(n.origin_of(2), Some(42));
        // A refresh from 43 for raft id 2 cannot unbind 42's binding either.
        n.handle(id_msg(TYPE_REFRESH, 43, 2)).unwrap();
        assert_eq!(n.origin_of(2), Some(42));
        assert_eq!(n.refused_stats(), vec![("origin_conflict", 3)]);
    }

    #[tokio::test]
    async fn once_an_origin_sends_checksums_a_damaged_or_plain_message_is_dropped() {
        let n = net();
        let seen = counting(&n);
        let m = Message {
            from: 2,
            to: 7,
            term: 3,
            ..Default::default()
        };
        // The existing service sends no trailer and is never asked for one.
        n.handle(nm(TYPE_RAFT, 41, raft_msg(3, 7))).unwrap();
        n.handle(nm(TYPE_RAFT, 41, raft_msg(3, 7))).unwrap();
        // One of ours does.
        n.handle(nm(TYPE_RAFT, 42, encode_checked(&m))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        let mut damaged = encode_checked(&m);
        damaged[3] ^= 0x40;
        let refused = |r: Result<(), InboundError>| {
            matches!(r, Err(InboundError::Damaged { origin: 42, .. }))
        };
        assert!(refused(n.handle(nm(TYPE_RAFT, 42, damaged))));
        assert!(refused(n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7)))));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            3,
            "a damaged message reached raft"
        );
        assert_eq!(n.refused_stats(), vec![("checksum", 1), ("no_checksum", 1)]);
    }

    /// A node of ours replaced by the existing service at the same origin (a rolling
    /// upgrade rolled back): its plain messages get through again after its probe, and
    /// only then; nothing else from that origin lifts the requirement.
    #[tokio::test]
    async fn only_a_probe_for_its_raft_id_lifts_the_trailer_requirement() {
        let n = net();
        let seen = counting(&n);
        let m = Message {
            from: 2,
            to: 7,
            term: 3,
            ..Default::default()
        };
        n.handle(nm(TYPE_RAFT, 42, encode_checked(&m))).unwrap();
        // However many plain messages come, they are refused...
        for _ in 0..100 {
            assert!(n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).is_err());
        }
        // ...and so they are after a probe answer, or a probe naming another raft id.
        n.handle(id_msg(TYPE_PROBE_RESP, 42, 2)).unwrap();
        assert!(is_conflict(n.handle(id_msg(TYPE_PROBE, 42, 3))));
        assert!(n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(
            n.refused_stats(),
            vec![("no_checksum", 101), ("origin_conflict", 1)]
        );
        // The node's own probe from there: heard from then on...
        n.handle(id_msg(TYPE_PROBE, 42, 2)).unwrap();
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        // ...until one of ours is there again: required from its first intact message on.
        n.handle(nm(TYPE_RAFT, 42, encode_checked(&m))).unwrap();
        assert!(n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }

    /// The requirement remembers the raft id it was set under: once the origin's binding
    /// has gone, a damaged probe from it binds the raft id it names, but lifts nothing.
    #[tokio::test]
    async fn a_probe_naming_another_raft_id_never_lifts_the_requirement() {
        let n = net();
        let seen = counting(&n);
        let m = Message {
            from: 2,
            to: 7,
            term: 3,
            ..Default::default()
        };
        n.handle(nm(TYPE_RAFT, 42, encode_checked(&m))).unwrap();
        n.handle(id_msg(TYPE_REFRESH, 42, 2)).unwrap();
        assert_eq!(n.origin_of(2), None);
        n.handle(id_msg(TYPE_PROBE, 42, 2 ^ 1 << 40)).unwrap();
        assert!(matches!(
            n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))),
            Err(InboundError::Damaged {
                origin: 42,
                error: IntegrityError::Missing
            })
        ));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_origin_speaks_for_one_raft_id_and_never_for_ours() {
        let n = net();
        let seen = counting(&n);
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        assert!(is_conflict(n.handle(nm(TYPE_RAFT, 42, raft_msg(3, 7)))));
        assert_eq!(n.origin_of(3), None);
        assert!(is_conflict(n.handle(id_msg(TYPE_PROBE, 50, 7))));
        assert!(is_conflict(n.handle(id_msg(TYPE_PROBE, 50, 0))));
        assert_eq!(n.origin_of(7), None);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // The real node 2 answering its own refresh lets origin 42 go.
        n.handle(id_msg(TYPE_REFRESH, 42, 2)).unwrap();
        assert_eq!(n.origin_of(2), None);
        n.handle(nm(TYPE_RAFT, 42, raft_msg(3, 7))).unwrap();
        assert_eq!(n.origin_of(3), Some(42));
    }

    #[tokio::test]
    async fn made_up_origins_cannot_grow_the_map_without_bound() {
        let n = net();
        let total = MAX_BINDINGS as u64 + 500;
        let refused = (0..total)
            .filter(|i| n.handle(id_msg(TYPE_PROBE, 1000 + i, 5000 + i)).is_err())
            .count();
        assert_eq!(refused, 500);
        let o = n.inner.origins.read().unwrap();
        assert_eq!(
            (o.by_id.len(), o.by_origin.len()),
            (MAX_BINDINGS, MAX_BINDINGS)
        );
        drop(o);
        // Once bindings are stale, new claims take their place.
        let n = net_at("http://127.0.0.1:9", Duration::ZERO);
        for i in 0..total {
            n.handle(id_msg(TYPE_PROBE, 1000 + i, 5000 + i)).unwrap();
        }
        assert_eq!(n.inner.origins.read().unwrap().by_id.len(), MAX_BINDINGS);
        assert_eq!(n.origin_of(5000 + total - 1), Some(1000 + total - 1));
    }

    #[tokio::test]
    async fn a_silent_origin_gives_way() {
        let n = net_at("http://127.0.0.1:9", Duration::from_millis(50));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        assert!(is_conflict(n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7)))));
        tokio::time::sleep(Duration::from_millis(80)).await;
        n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7))).unwrap();
        assert_eq!(n.origin_of(2), Some(43));
        // The old origin now speaks for no one and may not take it back at once.
        assert!(is_conflict(n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7)))));
    }

    /// A network service that lists the given origins as its peers, counts handler
    /// registrations and records what it is asked to send and broadcast.
    #[derive(Clone, Default)]
    struct Listing {
        listed: Arc<Mutex<Vec<u64>>>,
        registered: Arc<AtomicUsize>,
        sent: Arc<Mutex<Vec<NetworkMsg>>>,
        broadcast: Arc<Mutex<Vec<NetworkMsg>>>,
    }

    #[tonic::async_trait]
    impl cita_proto::network::network_service_server::NetworkService for Listing {
        async fn send_msg(&self, r: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
            self.sent.lock().unwrap().push(r.into_inner());
            Ok(Response::new(StatusCode { code: 0 }))
        }
        async fn broadcast(&self, r: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
            self.broadcast.lock().unwrap().push(r.into_inner());
            Ok(Response::new(StatusCode { code: 0 }))
        }
        async fn get_network_status(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<cita_proto::network::NetworkStatusResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn register_network_msg_handler(
            &self,
            _: Request<RegisterInfo>,
        ) -> Result<Response<StatusCode>, Status> {
            self.registered.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(StatusCode { code: 0 }))
        }
        async fn add_node(
            &self,
            _: Request<cita_proto::common::NodeNetInfo>,
        ) -> Result<Response<StatusCode>, Status> {
            Ok(Response::new(StatusCode { code: 0 }))
        }
        async fn get_peers_net_info(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<cita_proto::common::TotalNodeNetInfo>, Status> {
            let nodes = self
                .listed
                .lock()
                .unwrap()
                .iter()
                .map(|&origin| cita_proto::common::NodeNetInfo {
                    multi_address: format!("/test/{origin}"),
                    origin,
                })
                .collect();
            Ok(Response::new(cita_proto::common::TotalNodeNetInfo {
                nodes,
            }))
        }
    }

    #[tokio::test]
    async fn the_network_vouches_for_a_rebinding() {
        let listed = Arc::new(Mutex::new(vec![42, 43]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = cita_proto::network::network_service_server::NetworkServiceServer::new(Listing {
            listed: listed.clone(),
            ..Listing::default()
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let n = net_at(&format!("http://{addr}"), Duration::from_secs(3600));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        // While the network lists 42, a claim from 43 is refused however often it comes.
        for _ in 0..5 {
            assert!(is_conflict(n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7)))));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert_eq!(n.origin_of(2), Some(42));
        // 42 has left the network: the next claim from 43 starts a check that rebinds.
        listed.lock().unwrap().retain(|o| *o != 42);
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.origin_of(2) != Some(43) {
            assert!(Instant::now() < deadline, "never rebound");
            let _ = n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7)));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        n.handle(nm(TYPE_RAFT, 43, raft_msg(2, 7))).unwrap();
    }

    /// Serves `svc` on `addr` until `stop` resolves.
    async fn serve_until(
        listener: tokio::net::TcpListener,
        svc: Listing,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        tonic::transport::Server::builder()
            .add_service(
                cita_proto::network::network_service_server::NetworkServiceServer::new(svc),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop.await;
                },
            )
            .await
            .unwrap();
    }

    /// Raft traffic from 7 to peer 2, as a node sends all the time.
    fn send_to_2(n: &CitaNetwork) {
        let m = Message {
            to: 2,
            from: 7,
            ..Default::default()
        };
        craft_core::Transport::send(n, vec![m]);
    }

    #[tokio::test]
    async fn a_network_service_started_again_is_told_our_handler_again() {
        let registered = Arc::new(AtomicUsize::new(0));
        let svc = Listing {
            registered: registered.clone(),
            ..Listing::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let first = tokio::spawn(serve_until(listener, svc.clone(), stopped));
        let n = net_at(&format!("http://{addr}"), Duration::from_secs(3600));
        tokio::spawn({
            let n = n.clone();
            async move { n.stay_registered().await }
        });
        let wait_for = |want: usize| {
            let registered = registered.clone();
            let n = n.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                while registered.load(Ordering::SeqCst) < want {
                    assert!(Instant::now() < deadline, "never registered {want} times");
                    send_to_2(&n);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        wait_for(1).await;
        // While the network runs, traffic does not register again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(registered.load(Ordering::SeqCst), 1);
        // The network service goes away and comes back on its port, knowing nothing.
        stop.send(()).unwrap();
        first.await.unwrap();
        for _ in 0..10 {
            send_to_2(&n);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(serve_until(listener, svc, stopped));
        wait_for(2).await;
    }

    #[tokio::test]
    async fn probes_and_refresh_maintain_the_origin_map() {
        let n = net();
        n.handle(id_msg(TYPE_PROBE, 5, 9)).unwrap();
        assert_eq!(n.origin_of(9), Some(5));
        n.handle(id_msg(TYPE_PROBE_RESP, 6, 10)).unwrap();
        assert_eq!(n.origin_of(10), Some(6));
        n.handle(id_msg(TYPE_REFRESH, 6, 10)).unwrap();
        assert_eq!(n.origin_of(10), None);
    }

    #[tokio::test]
    async fn malformed_input_is_refused() {
        let n = net();
        let bad_module = NetworkMsg {
            module: "controller".into(),
            ..nm(TYPE_RAFT, 1, vec![])
        };
        assert!(matches!(
            n.handle(bad_module),
            Err(InboundError::UnknownModule(_))
        ));
        assert!(matches!(
            n.handle(nm("gossip", 1, vec![])),
            Err(InboundError::UnknownType(_))
        ));
        assert!(matches!(
            n.handle(nm(TYPE_PROBE, 1, vec![1, 2, 3])),
            Err(InboundError::BadIdPayload { .. })
        ));
        assert!(matches!(
            n.handle(nm(TYPE_RAFT, 1, vec![0xff, 0xff, 0xff])),
            Err(InboundError::BadRaftMessage(_))
        ));
        // Many garbage payloads: none panics.
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(len))
                .collect();
            let _ = n.handle(nm(TYPE_RAFT, 1, junk.clone()));
            let _ = n.handle(nm(TYPE_REFRESH, 1, junk));
        }
    }

    #[tokio::test]
    async fn sends_to_unknown_or_dead_peers_never_block() {
        use craft_core::Transport;
        let n = net();
        n.handle(id_msg(TYPE_PROBE, 5, 9)).unwrap();
        let mut m = Message {
            to: 9,
            from: 7,
            ..Default::default()
        };
        n.send(vec![m.clone(); 1000]);
        m.to = 11;
        n.send(vec![m; 10]);
        let (peer, _sent, dropped) = n.peer_stats().into_iter().find(|s| s.0 == 9).unwrap();
        assert_eq!(peer, 9);
        assert!(dropped > 900);
    }

    /// An adapter (raft id 7) whose network service is a [`Listing`] of no one.
    async fn recorded() -> (Listing, CitaNetwork) {
        let rec = Listing::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    cita_proto::network::network_service_server::NetworkServiceServer::new(
                        rec.clone(),
                    ),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let n = net_at(&format!("http://{addr}"), Duration::from_secs(3600));
        (rec, n)
    }

    /// Waits (at most 5 s) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_vote_request_to_a_peer_not_heard_from_yet_goes_once_a_probe_names_it() {
        use craft_core::Transport;
        use raft::eraftpb::{Entry, MessageType};
        let (rec, n) = recorded().await;
        let msg = |t: MessageType, entries: usize| Message {
            msg_type: t as i32,
            from: 7,
            to: 2,
            term: 9,
            entries: vec![Entry::default(); entries],
            ..Default::default()
        };
        // Raft 7 has never heard from raft 2: it asks who is there, sends nothing yet.
        n.send(vec![
            msg(MessageType::MsgRequestVote, 0),
            msg(MessageType::MsgAppend, 3),
        ]);
        until("a probe", || !rec.broadcast.lock().unwrap().is_empty()).await;
        assert_eq!(rec.broadcast.lock().unwrap()[0].r#type, TYPE_PROBE);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rec.sent.lock().unwrap().is_empty());
        // Raft 2 answers from origin 42: the vote request goes there; the append, which
        // raft sends again anyway, does not.
        n.handle(id_msg(TYPE_PROBE_RESP, 42, 2)).unwrap();
        until("the held vote request", || {
            !rec.sent.lock().unwrap().is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = rec.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0].origin, sent[0].r#type.as_str()), (42, TYPE_RAFT));
        let (m, _) = decode_checked(&sent[0].msg, true).unwrap();
        assert_eq!(
            (m.get_msg_type(), m.to, m.term),
            (MessageType::MsgRequestVote, 2, 9)
        );
    }

    #[tokio::test]
    async fn messages_held_for_an_unknown_peer_stay_few() {
        use craft_core::Transport;
        use raft::eraftpb::MessageType;
        let n = net();
        for term in 0..100 {
            n.send(vec![Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: 7,
                to: 2,
                term,
                ..Default::default()
            }]);
        }
        let held = n.inner.held.lock().unwrap();
        let terms: Vec<u64> = held[&2].iter().map(|(_, m)| m.term).collect();
        assert_eq!(terms, (92..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_node_says_who_it_is_once_its_handler_is_registered() {
        let (rec, n) = recorded().await;
        // A probe just before (raft sent to a peer it did not know) does not stand in
        // for the one after registering: no handler could have been answered then.
        n.probe();
        until("the first probe", || {
            rec.broadcast.lock().unwrap().len() == 1
        })
        .await;
        n.register_until_ok().await;
        until("a probe after registering", || {
            rec.broadcast.lock().unwrap().len() == 2
        })
        .await;
        // The contract's probe, and nothing else broadcast.
        let broadcast = rec.broadcast.lock().unwrap().clone();
        for probe in &broadcast {
            assert_eq!(probe.r#type, TYPE_PROBE);
            assert_eq!(probe.msg, 7u64.to_be_bytes());
        }
    }
}
