//! Who must send the checksum trailer through the CITA adapter, and that no damage on
//! the link switches that requirement off: two adapters of ours, each with a network
//! service that records what it is asked to send, and this test as the link between
//! them, delivering (or damaging) what one sent to the other's handler. A node of the
//! existing service is played by hand, in the format `cita-cloud/consensus_raft` uses:
//! 8-byte probes and probe answers, and raft messages without a trailer. Ours send the
//! same 8-byte probes: the requirement is set by a raft message whose trailer verifies,
//! and lifted only by a well-formed probe naming the raft id of the origin.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cita_proto::common::{Empty, NodeNetInfo, StatusCode, TotalNodeNetInfo};
use cita_proto::network::network_service_server::{NetworkService, NetworkServiceServer};
use cita_proto::network::{NetworkMsg, NetworkStatusResponse, RegisterInfo};
use craft_core::raft::eraftpb::{Entry, Message, MessageType};
use craft_transport::cita::{
    CitaNetwork, CitaNetworkConfig, InboundError, MODULE, TYPE_PROBE, TYPE_PROBE_RESP, TYPE_RAFT,
    TYPE_REFRESH,
};
use craft_transport::encode_raft_message;
use craft_transport::integrity::TRAILER_LEN;
use tonic::{Request, Response, Status};

/// Raft id of the receiving node of ours.
const ME: u64 = 7;
/// Raft id of the sending node (ours, or the existing service after a rollback).
const PEER: u64 = 2;
/// The sending node's origin, as the receiver's network service names it.
const PEER_ORIGIN: u64 = 42;
/// The receiving node's origin, as the sender's network service names it.
const MY_ORIGIN: u64 = 77;

/// A network service that records what it is asked to send and broadcast.
#[derive(Clone, Default)]
struct Recorder {
    sent: Arc<Mutex<Vec<NetworkMsg>>>,
    broadcast: Arc<Mutex<Vec<NetworkMsg>>>,
}

impl Recorder {
    fn sent(&self, kind: &str) -> Vec<NetworkMsg> {
        let sent = self.sent.lock().unwrap();
        sent.iter().filter(|m| m.r#type == kind).cloned().collect()
    }

    fn broadcast(&self, kind: &str) -> Vec<NetworkMsg> {
        let sent = self.broadcast.lock().unwrap();
        sent.iter().filter(|m| m.r#type == kind).cloned().collect()
    }
}

#[tonic::async_trait]
impl NetworkService for Recorder {
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
    ) -> Result<Response<NetworkStatusResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn register_network_msg_handler(
        &self,
        _: Request<RegisterInfo>,
    ) -> Result<Response<StatusCode>, Status> {
        Ok(Response::new(StatusCode { code: 0 }))
    }
    async fn add_node(&self, _: Request<NodeNetInfo>) -> Result<Response<StatusCode>, Status> {
        Ok(Response::new(StatusCode { code: 0 }))
    }
    async fn get_peers_net_info(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<TotalNodeNetInfo>, Status> {
        Err(Status::unimplemented("test"))
    }
}

/// A node of ours: its adapter, what its network service was asked to send, and the raft
/// messages its handler passed on to raft.
struct Node {
    net: CitaNetwork,
    wire: Recorder,
    raft: Arc<Mutex<Vec<Message>>>,
}

impl Node {
    async fn start(raft_id: u64) -> Node {
        let wire = Recorder::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NetworkServiceServer::new(wire.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let net = CitaNetwork::new(CitaNetworkConfig {
            raft_id,
            network_addr: format!("http://{addr}"),
            handler_host: "127.0.0.1".into(),
            handler_port: 1,
            queue_capacity: 1024,
            // Long: a rate-limited request shows up once however often it is due.
            probe_interval: Duration::from_secs(3600),
            stale_after: Duration::from_secs(3600),
        })
        .unwrap();
        let raft = Arc::new(Mutex::new(Vec::new()));
        let sink = raft.clone();
        net.set_inbound(Some(Arc::new(move |m| {
            sink.lock().unwrap().push(m);
            true
        })));
        Node { net, wire, raft }
    }

    /// Hands the node a message from `origin`.
    fn hear(&self, kind: &str, origin: u64, msg: Vec<u8>) -> Result<(), InboundError> {
        self.net.handle(NetworkMsg {
            module: MODULE.into(),
            r#type: kind.into(),
            origin,
            msg: msg.into(),
        })
    }

    /// The payload of the probe this node broadcasts.
    async fn its_probe(&self) -> Vec<u8> {
        self.net.probe();
        until("a probe", || !self.wire.broadcast(TYPE_PROBE).is_empty()).await;
        self.wire.broadcast(TYPE_PROBE)[0].msg.to_vec()
    }

    fn delivered(&self) -> usize {
        self.raft.lock().unwrap().len()
    }

    fn refused(&self, reason: &str) -> u64 {
        let stats = self.net.refused_stats();
        stats.iter().find(|(r, _)| *r == reason).map_or(0, |s| s.1)
    }
}

/// Waits (at most 5 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An append carrying one block.
fn append(from: u64, to: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = from;
    m.to = to;
    m.term = 3;
    m.index = 5;
    m.log_term = 3;
    m.entries = vec![Entry {
        term: 3,
        index: 6,
        data: b"block at height 1".to_vec(),
        ..Default::default()
    }];
    m
}

/// The same bytes with the entry's data changed, as a corrupting link would.
fn with_block_damaged(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = out.windows(5).position(|w| w == b"block").unwrap();
    out[at] ^= 0x20;
    out
}

/// What the existing service sends as a probe or probe answer: the bare raft id.
fn plain_id(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Every probe, probe answer and refresh `node` was asked to send or broadcast is the
/// contract's: 8 bytes, a raft id.
fn only_contract_ids(node: &Node) {
    let sent = node.wire.sent.lock().unwrap().clone();
    let broadcast = node.wire.broadcast.lock().unwrap().clone();
    for m in sent.iter().chain(&broadcast) {
        if m.r#type != TYPE_RAFT {
            assert_eq!(m.msg.len(), 8, "{m:?}");
            assert_ne!(m.msg, plain_id(0), "{m:?}");
        }
    }
    assert!(node.wire.broadcast(TYPE_REFRESH).is_empty());
}

/// Two nodes of ours that know each other's origins ([`MY_ORIGIN`], [`PEER_ORIGIN`]),
/// the way they learn them: the peer's probe, and the answer to it. `me` has not heard
/// a raft message from the peer yet.
async fn pair() -> (Node, Node) {
    let peer = Node::start(PEER).await;
    let me = Node::start(ME).await;
    let probe = peer.its_probe().await;
    assert_eq!(probe, plain_id(PEER));
    me.hear(TYPE_PROBE, PEER_ORIGIN, probe).unwrap();
    until("the probe answer", || {
        !me.wire.sent(TYPE_PROBE_RESP).is_empty()
    })
    .await;
    let answer = me.wire.sent(TYPE_PROBE_RESP)[0].clone();
    assert_eq!(
        (answer.origin, &answer.msg.to_vec()),
        (PEER_ORIGIN, &plain_id(ME))
    );
    peer.hear(TYPE_PROBE_RESP, MY_ORIGIN, answer.msg.to_vec())
        .unwrap();
    (me, peer)
}

/// The bytes `node` puts on the wire for raft message `m`.
async fn on_the_wire(node: &Node, m: Message) -> Vec<u8> {
    let before = node.wire.sent(TYPE_RAFT).len();
    craft_core::Transport::send(&node.net, vec![m]);
    until("the raft message", || {
        node.wire.sent(TYPE_RAFT).len() > before
    })
    .await;
    node.wire.sent(TYPE_RAFT)[before].msg.to_vec()
}

/// `me` has heard one intact raft message from the peer, so requires the trailer from
/// its origin; returns the peer and the bytes it sent.
async fn required() -> (Node, Node, Vec<u8>) {
    let (me, peer) = pair().await;
    let intact = on_the_wire(&peer, append(PEER, ME)).await;
    me.hear(TYPE_RAFT, PEER_ORIGIN, intact.clone()).unwrap();
    assert_eq!(me.delivered(), 1);
    (me, peer, intact)
}

#[tokio::test]
async fn no_damage_to_trailers_ever_lets_an_unchecked_message_through() {
    let (me, peer, intact) = required().await;
    // The peer requires ours in the same way.
    let mine = on_the_wire(&me, append(ME, PEER)).await;
    peer.hear(TYPE_RAFT, MY_ORIGIN, mine).unwrap();
    assert!(peer
        .hear(TYPE_RAFT, MY_ORIGIN, encode_raft_message(&append(ME, PEER)))
        .is_err());

    let body = intact.len() - TRAILER_LEN;
    let mut damaged = Vec::new();
    for bit in 0..TRAILER_LEN * 8 {
        let mut m = intact.clone();
        m[body + bit / 8] ^= 1 << (bit % 8);
        damaged.push(with_block_damaged(&m));
        damaged.push(m);
    }
    for cut in 1..=TRAILER_LEN {
        let m = intact[..intact.len() - cut].to_vec();
        damaged.push(with_block_damaged(&m));
        damaged.push(m);
    }
    damaged.push(with_block_damaged(&intact));
    damaged.push(encode_raft_message(&append(PEER, ME)));
    // Many rounds in a row, with nothing intact in between.
    let rounds = 20;
    for _ in 0..rounds {
        for m in &damaged {
            let refused = me.hear(TYPE_RAFT, PEER_ORIGIN, m.clone());
            assert!(
                matches!(
                    refused,
                    Err(InboundError::Damaged {
                        origin: PEER_ORIGIN,
                        ..
                    })
                ),
                "{refused:?}"
            );
        }
    }
    assert_eq!(me.delivered(), 1, "a damaged message reached raft");
    assert_eq!(
        me.refused("checksum") + me.refused("no_checksum"),
        (rounds * damaged.len()) as u64
    );
    assert!(me.refused("checksum") > 0 && me.refused("no_checksum") > 0);
    // Still required afterwards; the intact message gets through, unchanged.
    me.hear(TYPE_RAFT, PEER_ORIGIN, intact).unwrap();
    assert_eq!(*me.raft.lock().unwrap(), vec![append(PEER, ME); 2]);
    only_contract_ids(&me);
    only_contract_ids(&peer);
}

#[tokio::test]
async fn a_node_of_the_existing_service_is_heard_and_answered_in_its_format() {
    let me = Node::start(ME).await;
    let existing = 50;
    me.hear(TYPE_PROBE, existing, plain_id(3)).unwrap();
    assert_eq!(me.net.origin_of(3), Some(existing));
    // It reads only 8-byte probes and answers, the only ones ours send.
    until("the probe answer", || {
        !me.wire.sent(TYPE_PROBE_RESP).is_empty()
    })
    .await;
    let answer = me.wire.sent(TYPE_PROBE_RESP)[0].clone();
    assert_eq!(
        (answer.origin, answer.msg.to_vec()),
        (existing, plain_id(ME))
    );
    assert_eq!(me.its_probe().await, plain_id(ME));
    for _ in 0..10 {
        me.hear(TYPE_RAFT, existing, encode_raft_message(&append(3, ME)))
            .unwrap();
    }
    me.hear(TYPE_PROBE_RESP, existing, plain_id(3)).unwrap();
    for _ in 0..10 {
        me.hear(TYPE_RAFT, existing, encode_raft_message(&append(3, ME)))
            .unwrap();
    }
    assert_eq!(me.delivered(), 20);
    assert!(me.net.refused_stats().is_empty());
    // What ours sends it is the contract's: a raft message it decodes (the trailer is an
    // unknown field to it), 8-byte ids, and no refresh it did not cause.
    let sent = on_the_wire(&me, append(ME, 3)).await;
    assert_eq!(
        craft_transport::decode_raft_message(&sent).unwrap(),
        append(ME, 3)
    );
    only_contract_ids(&me);
    assert!(me.wire.sent(TYPE_REFRESH).is_empty());
}

#[tokio::test]
async fn a_node_of_ours_restarted_as_the_existing_service_is_heard_after_its_probe() {
    let (me, _peer, _) = required().await;
    let plain = encode_raft_message(&append(PEER, ME));
    for _ in 0..10 {
        assert!(me.hear(TYPE_RAFT, PEER_ORIGIN, plain.clone()).is_err());
    }
    assert_eq!(me.refused("no_checksum"), 10);
    // Its probe, the existing service's at its start: heard from then on.
    me.hear(TYPE_PROBE, PEER_ORIGIN, plain_id(PEER)).unwrap();
    for _ in 0..10 {
        me.hear(TYPE_RAFT, PEER_ORIGIN, plain.clone()).unwrap();
    }
    assert_eq!(me.delivered(), 11);
    // Ours there again: it probes (the same 8 bytes, so nothing changes yet), then its
    // first intact message requires the trailer again.
    let again = Node::start(PEER).await;
    again
        .hear(TYPE_PROBE_RESP, MY_ORIGIN, plain_id(ME))
        .unwrap();
    me.hear(TYPE_PROBE, PEER_ORIGIN, again.its_probe().await)
        .unwrap();
    me.hear(TYPE_RAFT, PEER_ORIGIN, plain.clone()).unwrap();
    assert_eq!(me.delivered(), 12);
    let intact = on_the_wire(&again, append(PEER, ME)).await;
    me.hear(TYPE_RAFT, PEER_ORIGIN, intact).unwrap();
    assert!(me.hear(TYPE_RAFT, PEER_ORIGIN, plain).is_err());
    assert_eq!(me.delivered(), 13);
    only_contract_ids(&me);
    assert!(me.wire.sent(TYPE_REFRESH).is_empty());
}

#[tokio::test]
async fn damaged_probes_never_lift_the_requirement() {
    let (me, peer, _) = required().await;
    let probe = peer.its_probe().await;
    assert_eq!(probe, plain_id(PEER));
    let mut damaged = Vec::new();
    // Bit-flipped.
    for bit in 0..probe.len() * 8 {
        let mut p = probe.clone();
        p[bit / 8] ^= 1 << (bit % 8);
        damaged.push(p);
    }
    // Truncated.
    for at in 0..probe.len() {
        damaged.push(probe[..at].to_vec());
        damaged.push(probe[at + 1..].to_vec());
    }
    // Extended, before or after.
    for extra in 1..=8 {
        for byte in [0x00, 0x5a, 0xff] {
            let mut p = probe.clone();
            p.extend(std::iter::repeat_n(byte, extra));
            damaged.push(p);
            let mut p = vec![byte; extra];
            p.extend_from_slice(&probe);
            damaged.push(p);
        }
    }
    // Up to three bytes changed at once, as the development network's corruption does.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut p = probe.clone();
        for _ in 0..=next() % 3 {
            let at = (next() % p.len() as u64) as usize;
            p[at] ^= (next() % 255 + 1) as u8;
        }
        if p != probe {
            damaged.push(p);
        }
    }
    for p in &damaged {
        assert_ne!(*p, probe);
        let refused = me.hear(TYPE_PROBE, PEER_ORIGIN, p.clone());
        assert!(
            matches!(
                refused,
                Err(InboundError::BadIdPayload { .. } | InboundError::OriginConflict { .. })
            ),
            "{refused:?}"
        );
    }
    let plain = encode_raft_message(&append(PEER, ME));
    assert!(
        me.hear(TYPE_RAFT, PEER_ORIGIN, plain.clone()).is_err(),
        "a damaged probe lifted the requirement"
    );
    assert_eq!(me.delivered(), 1);
    assert!(me.refused("bad_id_payload") > 0 && me.refused("origin_conflict") > 0);
    // The node still speaks for its raft id, and only its own probe lifts it.
    assert_eq!(me.net.origin_of(PEER), Some(PEER_ORIGIN));
    me.hear(TYPE_PROBE, PEER_ORIGIN, probe).unwrap();
    me.hear(TYPE_RAFT, PEER_ORIGIN, plain).unwrap();
    assert_eq!(me.delivered(), 2);
}
