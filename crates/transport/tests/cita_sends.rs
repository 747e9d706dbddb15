//! The CITA adapter's send path, against a network service that records every `SendMsg`:
//! appends reach a peer in the order raft sent them however the network delays each
//! call, a heartbeat is not held back by appends queued before it, and every message
//! dropped (a full queue, a failing network, a message too large, one queued for an
//! origin that was replaced) is reported to raft, once per peer until it is heard from.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cita_proto::common::{Empty, NodeNetInfo, StatusCode, TotalNodeNetInfo};
use cita_proto::network::network_service_server::{NetworkService, NetworkServiceServer};
use cita_proto::network::{NetworkMsg, NetworkStatusResponse, RegisterInfo};
use craft_core::raft::eraftpb::{Entry, Message, MessageType};
use craft_core::Transport;
use craft_transport::cita::{
    CitaNetwork, CitaNetworkConfig, MODULE, TYPE_PROBE_RESP, TYPE_RAFT, TYPE_REFRESH,
};
use craft_transport::encode_raft_message;
use craft_transport::integrity::decode_checked;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Raft id of the sending node.
const ME: u64 = 7;
/// Raft id of its peer.
const PEER: u64 = 2;
/// The peer's origin.
const PEER_ORIGIN: u64 = 42;

/// A network service that records the raft messages it is asked to send, in the order
/// it takes them. It can answer with an error code, hold appends until told to let them
/// go, and delay each call by a varying time (as a busy network service does).
#[derive(Clone)]
struct Network {
    sent: Arc<Mutex<Vec<Message>>>,
    /// Appends that reached the service (taken or still held).
    appends_arrived: Arc<AtomicU64>,
    /// The code every `SendMsg` answers with.
    code: Arc<AtomicU32>,
    /// While true, appends wait before they are taken.
    hold_appends: watch::Sender<bool>,
    /// Whether each call waits a varying few milliseconds before it is taken.
    jitter: bool,
    calls: Arc<AtomicU64>,
}

impl Network {
    fn new(jitter: bool) -> Self {
        Self {
            sent: Arc::default(),
            appends_arrived: Arc::default(),
            code: Arc::default(),
            hold_appends: watch::Sender::new(false),
            jitter,
            calls: Arc::default(),
        }
    }

    fn sent(&self, kind: MessageType) -> Vec<Message> {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .filter(|m| m.get_msg_type() == kind)
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl NetworkService for Network {
    async fn send_msg(&self, r: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
        let msg = r.into_inner();
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.jitter {
            // 0 to 4 ms, in an order unrelated to the calls'.
            tokio::time::sleep(Duration::from_millis(call * 7 % 5)).await;
        }
        if msg.r#type == TYPE_RAFT {
            let (m, _) = decode_checked(msg.msg.clone(), true).expect("a raft message of ours");
            assert_eq!(msg.origin, PEER_ORIGIN);
            if m.get_msg_type() == MessageType::MsgAppend {
                self.appends_arrived.fetch_add(1, Ordering::SeqCst);
                let mut held = self.hold_appends.subscribe();
                let _ = held.wait_for(|held| !*held).await;
            }
            self.sent.lock().unwrap().push(m);
        }
        Ok(Response::new(StatusCode {
            code: self.code.load(Ordering::SeqCst),
        }))
    }
    async fn broadcast(&self, _: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
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

/// An adapter (raft id [`ME`]) whose network is `network`, that knows [`PEER`] at
/// [`PEER_ORIGIN`], and the peers it reported unreachable.
async fn adapter(network: &Network, queue_capacity: usize) -> (CitaNetwork, Arc<Mutex<Vec<u64>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                NetworkServiceServer::new(network.clone())
                    .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let net = CitaNetwork::new(CitaNetworkConfig {
        raft_id: ME,
        network_addr: format!("http://{addr}"),
        handler_host: "127.0.0.1".into(),
        handler_port: 1,
        queue_capacity,
        probe_interval: Duration::from_secs(3600),
        stale_after: Duration::from_secs(3600),
    })
    .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    net.report_unreachable_to(move |id| r.lock().unwrap().push(id));
    hear(&net, TYPE_PROBE_RESP, PEER.to_be_bytes().to_vec());
    assert_eq!(net.origin_of(PEER), Some(PEER_ORIGIN));
    (net, reports)
}

/// Hands `net` a message from the peer's origin.
fn hear(net: &CitaNetwork, kind: &str, msg: Vec<u8>) {
    net.handle(NetworkMsg {
        module: MODULE.into(),
        r#type: kind.into(),
        origin: PEER_ORIGIN,
        msg: msg.into(),
    })
    .unwrap();
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An append to the peer at `index`, carrying `bytes` of block.
fn append(index: u64, bytes: usize) -> Message {
    let mut m = message(MessageType::MsgAppend);
    m.index = index - 1;
    m.log_term = 1;
    m.entries = vec![Entry {
        term: 1,
        index,
        data: vec![7; bytes],
        ..Default::default()
    }];
    m
}

fn message(kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = ME;
    m.to = PEER;
    m.term = 1;
    m
}

fn indexes(appends: &[Message]) -> Vec<u64> {
    appends.iter().map(|m| m.entries[0].index).collect()
}

/// `(sent, dropped)` to the peer.
fn stats(net: &CitaNetwork) -> (u64, u64) {
    net.peer_stats()
        .into_iter()
        .find(|s| s.0 == PEER)
        .map_or((0, 0), |s| (s.1, s.2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_reach_a_peer_in_order_while_the_network_delays_each_call() {
    let network = Network::new(true);
    let (net, reports) = adapter(&network, 1024).await;
    let mut index = 0;
    for round in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..5 {
            index += 1;
            batch.push(append(index, 1000));
        }
        batch.push(message(if round % 2 == 0 {
            MessageType::MsgHeartbeat
        } else {
            MessageType::MsgAppendResponse
        }));
        net.send(batch);
        tokio::task::yield_now().await;
    }
    until("every append", || {
        network.sent(MessageType::MsgAppend).len() == 200
    })
    .await;
    assert_eq!(
        indexes(&network.sent(MessageType::MsgAppend)),
        (1..=200).collect::<Vec<_>>()
    );
    until("every control message", || {
        network.sent(MessageType::MsgHeartbeat).len() == 20
            && network.sent(MessageType::MsgAppendResponse).len() == 20
    })
    .await;
    assert_eq!(stats(&net), (240, 0));
    assert!(reports.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_queued_behind_large_appends_is_sent_before_them() {
    let network = Network::new(false);
    let (net, reports) = adapter(&network, 1024).await;
    network.hold_appends.send_replace(true);
    let mut batch: Vec<Message> = (1..=16).map(|i| append(i, 4 << 20)).collect();
    batch.push(message(MessageType::MsgHeartbeat));
    net.send(batch);
    // The first append is at the network, held; the heartbeat goes past the rest.
    until("the heartbeat", || {
        network.sent(MessageType::MsgHeartbeat).len() == 1
    })
    .await;
    assert!(network.sent(MessageType::MsgAppend).is_empty());
    assert!(network.appends_arrived.load(Ordering::SeqCst) <= 1);
    network.hold_appends.send_replace(false);
    until("every append", || {
        network.sent(MessageType::MsgAppend).len() == 16
    })
    .await;
    assert_eq!(
        indexes(&network.sent(MessageType::MsgAppend)),
        (1..=16).collect::<Vec<_>>()
    );
    assert!(reports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_full_queue_reports_the_peer_unreachable_once() {
    let network = Network::new(false);
    let (net, reports) = adapter(&network, 4).await;
    network.hold_appends.send_replace(true);
    net.send((1..=50).map(|i| append(i, 100)).collect());
    // One taken by the lane (held at the network), four queued, the rest dropped.
    let (_, dropped) = stats(&net);
    assert!(dropped >= 45, "{dropped}");
    assert_eq!(*reports.lock().unwrap(), vec![PEER]);
    // Heartbeats go on their own lane, which is not full.
    net.send(vec![message(MessageType::MsgHeartbeat)]);
    until("the heartbeat", || {
        network.sent(MessageType::MsgHeartbeat).len() == 1
    })
    .await;
    assert_eq!(*reports.lock().unwrap(), vec![PEER]);
}

#[tokio::test]
async fn a_failing_network_reports_the_peer_once_until_it_is_heard_from() {
    let network = Network::new(false);
    network.code.store(1, Ordering::SeqCst);
    let (net, reports) = adapter(&network, 1024).await;
    net.send((1..=10).map(|i| append(i, 100)).collect());
    net.send(vec![message(MessageType::MsgHeartbeat); 5]);
    until("every send to fail", || stats(&net) == (0, 15)).await;
    assert_eq!(*reports.lock().unwrap(), vec![PEER]);
    // The peer speaks: the next loss is reported again.
    let mut answer = message(MessageType::MsgHeartbeatResponse);
    (answer.from, answer.to) = (PEER, ME);
    hear(&net, TYPE_RAFT, encode_raft_message(&answer));
    net.send(vec![append(11, 100)]);
    until("the next send to fail", || stats(&net) == (0, 16)).await;
    assert_eq!(*reports.lock().unwrap(), vec![PEER, PEER]);
}

#[tokio::test]
async fn an_oversized_message_is_dropped_and_reported_not_sent() {
    let network = Network::new(false);
    let (net, reports) = adapter(&network, 1024).await;
    net.send(vec![append(1, cita_proto::MAX_MESSAGE_BYTES)]);
    assert_eq!(stats(&net), (0, 1));
    assert_eq!(*reports.lock().unwrap(), vec![PEER]);
    // What follows it goes, and it is never among what went.
    net.send(vec![append(1, 100)]);
    until("the next append", || {
        network.sent(MessageType::MsgAppend).len() == 1
    })
    .await;
    assert_eq!(stats(&net), (1, 1));
    assert_eq!(
        network.sent(MessageType::MsgAppend)[0].entries[0]
            .data
            .len(),
        100
    );
    assert_eq!(network.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn messages_queued_for_an_origin_that_was_replaced_are_dropped_and_reported() {
    let network = Network::new(false);
    let (net, reports) = adapter(&network, 1024).await;
    network.hold_appends.send_replace(true);
    net.send((1..=10).map(|i| append(i, 100)).collect());
    until("the first append at the network", || {
        network.appends_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    // The peer's origin says it is not the peer any more.
    hear(&net, TYPE_REFRESH, PEER.to_be_bytes().to_vec());
    assert_eq!(net.origin_of(PEER), None);
    network.hold_appends.send_replace(false);
    until("every append accounted for", || {
        let (sent, dropped) = stats(&net);
        sent + dropped == 10
    })
    .await;
    // Only the one already at the network went to the old origin.
    assert_eq!(stats(&net), (1, 9));
    assert_eq!(network.appends_arrived.load(Ordering::SeqCst), 1);
    assert_eq!(*reports.lock().unwrap(), vec![PEER]);
}
