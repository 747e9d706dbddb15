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
//! then takes it back once the hostile origin falls silent or leaves the network), but
//! through the network service it cannot take over the raft id of a node that is
//! talking. The origin is only the network's word: whoever reaches this node's gRPC port
//! directly can make up origins, so that port must be reachable by the network service
//! alone (`listen_host`; see docs/security.md).
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

use craft_core::sync::{LockExt, RwLockExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cita_proto::common::{Empty, StatusCode};
use cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerService;
use cita_proto::network::network_service_client::NetworkServiceClient;
use cita_proto::network::{NetworkMsg, RegisterInfo};
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::integrity::{decode_checked, encode_checked, Integrity};
use crate::queue::PeerStats;

mod dispatch;
mod held;
mod lanes;
mod origins;
mod raft_id;
mod register;
mod wire;

pub use held::HOLD_FOR;
pub use raft_id::raft_id;

pub use crate::Inbound;
pub use wire::{
    InboundError, MAX_RAFT_MESSAGE_BYTES, MESSAGE_HEADROOM, MODULE, TYPE_PROBE, TYPE_PROBE_RESP,
    TYPE_RAFT, TYPE_REFRESH,
};

use held::Held;
use lanes::{is_bulk, network_gone, Lane, LaneSender, Links, PeerLink, Reports};
use origins::{Origins, MAX_BINDINGS};
use wire::{id_payload, parse_id};

/// The outgoing queue of `refresh` replies (no raft id is `u64::MAX` in practice: ids
/// are hashes, and this one would only share a queue).
const REPLY_QUEUE: u64 = u64::MAX;

/// Control messages sent to one peer at once (`SendMsg` calls in flight).
pub const CONTROL_IN_FLIGHT: usize = 8;
/// Encoded bytes a peer's bulk lane queues before new messages are dropped (a message
/// finding the lane empty is always taken): as much as raft sends a follower at most
/// before it waits for an answer, as the KV transport's [`crate::peer::QUEUE_BYTES`].
pub const BULK_QUEUE_BYTES: usize = crate::peer::QUEUE_BYTES;
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

/// Told the raft id of a peer that has just started (it sent a `probe`).
pub type PeerStarted = Arc<dyn Fn(u64) + Send + Sync>;

/// What every clone of the adapter shares.
struct Shared {
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
    held: Mutex<Held>,
    /// Woken when a call to the network failed as if it were gone (`Unavailable`): a
    /// network service started again has forgotten our handler.
    network_lost: Arc<tokio::sync::Notify>,
}

/// The adapter: a [`craft_core::Transport`] for outgoing raft messages and the
/// `NetworkMsgHandlerService` for incoming ones. Cheap to clone.
#[derive(Clone)]
pub struct CitaNetwork {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for CitaNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CitaNetwork")
            .field("raft_id", &self.inner.cfg.raft_id)
            .finish_non_exhaustive()
    }
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
            inner: Arc::new(Shared {
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
                held: Mutex::new(Held::default()),
                network_lost: Arc::new(tokio::sync::Notify::new()),
                cfg,
            }),
        })
    }

    /// Sets (or clears) where incoming raft messages go. Cleared while raft is stopped,
    /// e.g. when this node is not a validator.
    pub fn set_inbound(&self, inbound: Option<Inbound>) {
        *self.inner.inbound.write_locked() = inbound;
    }

    /// Sets (or clears) who is told of a peer that has just started: one that sends a
    /// `probe`, as every node does when it starts and does not yet know its peers'
    /// origins. It may have started with an empty raft directory (see
    /// [`craft_core::NodeHandle::peer_restarted`]).
    pub fn set_peer_started(&self, peer_started: Option<PeerStarted>) {
        *self.inner.peer_started.write_locked() = peer_started;
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

    /// Origin currently known for raft id `id`.
    pub fn origin_of(&self, id: u64) -> Option<u64> {
        self.inner.origins.read_locked().by_id.get(&id).copied()
    }

    /// Holds `m` for its raft id, whose origin is unknown: see [`HOLD_FOR`]. Returns
    /// whether it did (`false`: `m` is dropped).
    fn hold(&self, m: Message) -> bool {
        self.inner.held.locked().hold(m)
    }

    /// Sends what is held for raft id `id`, now bound to `origin`, that is still recent.
    fn release_held(&self, id: u64, origin: u64) {
        let held = self.inner.held.locked().take(id);
        for m in held {
            self.send_to_origin(id, origin, TYPE_RAFT, encode_checked(&m), false);
        }
    }

    /// Refusals of incoming messages since start, by [`InboundError::kind`].
    pub fn refused_stats(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .refused
            .locked()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// `(raft id, sent, dropped)` raft messages per peer (both lanes), sorted by raft
    /// id: sent were taken by the network (code 0); dropped found a full queue, failed,
    /// were refused by the network, were too large, were appends for a peer whose
    /// origin was unknown, or were still queued for an origin that was replaced.
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        let links = self.inner.links.locked();
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
            .locked()
            .stats_of(peer)
            .dropped
            .fetch_add(1, Ordering::Relaxed);
        self.inner.reports.report(peer);
    }

    /// Drops the link to `peer` (its origin is no longer bound): what it still holds is
    /// dropped, counted and reported, never sent to the old origin. `forget` also drops
    /// its counters (the binding was evicted, to keep them as bounded as bindings).
    fn remove_link(&self, peer: u64, forget: bool) {
        let mut links = self.inner.links.locked();
        links.links.remove(&peer);
        if forget {
            links.stats.remove(&peer);
        }
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
            msg: payload.into(),
        };
        let len = msg.msg.len();
        let mut links = self.inner.links.locked();
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

#[cfg(test)]
mod tests;
