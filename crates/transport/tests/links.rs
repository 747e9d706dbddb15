//! The peer transport's links when the peer is slow, stuck or gone: heartbeats go
//! ahead of appends, no gRPC message outgrows the limit, a stream whose peer stops
//! acknowledging (or never accepts it) is replaced on a new connection, and every
//! message dropped is reported to raft as the peer being unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use cita_proto::peer::{Ack, RaftBatch, SnapshotChunk};
use craft_core::raft::eraftpb::{Entry, Message, MessageType};
use craft_core::Transport;
use craft_transport::limits::ConnectionLimit;
use craft_transport::peer::{
    serve, LinkConfig, PeerService, PeerTransport, ACKS_HEADER, BATCH_HEADROOM,
};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

type Received = Arc<Mutex<Vec<Message>>>;

/// Deadlines short enough for a test: a stalled link is replaced within a second.
fn quick() -> LinkConfig {
    LinkConfig::for_election_timeout(Duration::from_millis(300))
}

/// Serves a [`PeerService`] whose raft is `inbound`, on a loopback port.
async fn receiver(inbound: craft_transport::Inbound) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        PeerService::new(inbound),
        None,
        ConnectionLimit::new(16),
        std::future::pending(),
    ));
    addr
}

/// A receiver that keeps everything it is handed.
async fn recording() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let addr = receiver(Arc::new(move |m| {
        sink.lock().unwrap().push(m);
        true
    }))
    .await;
    (addr, received)
}

/// A transport of raft id 1 with peer 2 at `addr`, and the peers it reports unreachable.
fn sender(addr: SocketAddr, config: LinkConfig) -> (PeerTransport, Arc<Mutex<Vec<u64>>>) {
    let transport = PeerTransport::new(1).with_link_config(config);
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    let reports: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = reports.clone();
    transport.report_unreachable_to(move |peer| sink.lock().unwrap().push(peer));
    (transport, reports)
}

fn message(kind: MessageType, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = 1;
    m.to = 2;
    m.term = 1;
    m.index = index;
    m
}

/// An append at `index` carrying `bytes` bytes of entry data.
fn append(index: u64, bytes: usize) -> Message {
    let mut m = message(MessageType::MsgAppend, index);
    m.entries = vec![Entry {
        term: 1,
        index: index + 1,
        data: vec![7; bytes],
        ..Default::default()
    }];
    m
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kinds(received: &Received) -> Vec<MessageType> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.msg_type())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_goes_ahead_of_appends_the_peer_has_not_taken() {
    // The receiver's raft takes no append until released (its handler blocks, as a
    // busy receiver would), but takes everything else at once. The handler runs on a
    // runtime worker: it blocks through `block_in_place`, so that the worker's other
    // tasks move on. Without it, held appends resent on new connections (no ack comes
    // while they are held) blocked every worker in turn, timers included, and the test
    // hung instead of failing (seen once in CI). A held handler gives up after a minute,
    // so nothing here can hang.
    let received: Received = Arc::default();
    let held = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    let (sink, gate) = (received.clone(), held.clone());
    let addr = receiver(Arc::new(move |m: Message| {
        if m.msg_type() == MessageType::MsgAppend {
            tokio::task::block_in_place(|| {
                let (lock, released) = &*gate;
                let mut holding = lock.lock().unwrap();
                let give_up = std::time::Instant::now() + Duration::from_secs(60);
                while *holding && std::time::Instant::now() < give_up {
                    holding = released
                        .wait_timeout(holding, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
            });
        }
        sink.lock().unwrap().push(m);
        true
    }))
    .await;
    let (transport, _) = sender(addr, LinkConfig::default());
    transport.send((1..=20).map(|i| append(i, 64 << 10)).collect());
    transport.send(vec![message(MessageType::MsgHeartbeat, 0)]);
    until("the heartbeat, while the appends are held", || {
        kinds(&received) == vec![MessageType::MsgHeartbeat]
    })
    .await;
    *held.0.lock().unwrap() = false;
    held.1.notify_all();
    until("every append after it", || {
        received.lock().unwrap().len() == 21
    })
    .await;
    let appends: Vec<u64> = received.lock().unwrap()[1..]
        .iter()
        .map(|m| m.index)
        .collect();
    assert_eq!(
        appends,
        (1..=20).collect::<Vec<_>>(),
        "appends stay in order"
    );
}

#[tokio::test]
async fn appends_larger_together_than_a_grpc_message_all_arrive() {
    let (addr, received) = recording().await;
    let (transport, reports) = sender(addr, LinkConfig::default());
    // 80 MiB in one Ready: more than one gRPC message may carry.
    let appends: Vec<Message> = (1..=20).map(|i| append(i, 4 << 20)).collect();
    let total: usize = appends.iter().map(|m| m.entries[0].data.len()).sum();
    assert!(total > cita_proto::MAX_MESSAGE_BYTES);
    transport.send(appends);
    until("20 appends", || received.lock().unwrap().len() == 20).await;
    let indexes: Vec<u64> = received.lock().unwrap().iter().map(|m| m.index).collect();
    assert_eq!(indexes, (1..=20).collect::<Vec<_>>());
    until("all acknowledged", || {
        transport.peer_stats() == vec![(2, 20, 0)]
    })
    .await;
    assert!(reports.lock().unwrap().is_empty(), "nothing was dropped");
}

#[tokio::test]
async fn a_message_no_grpc_message_can_carry_is_dropped_and_reported() {
    let (addr, received) = recording().await;
    let (transport, reports) = sender(addr, LinkConfig::default());
    let too_large = append(1, cita_proto::MAX_MESSAGE_BYTES - BATCH_HEADROOM + 1);
    transport.send(vec![too_large, append(2, 10)]);
    until("the small append", || received.lock().unwrap().len() == 1).await;
    assert_eq!(received.lock().unwrap()[0].index, 2);
    assert_eq!(*reports.lock().unwrap(), vec![2]);
    until("counted", || transport.peer_stats() == vec![(2, 1, 1)]).await;
}

#[tokio::test]
async fn a_peer_nobody_answers_for_is_reported_once_per_lane_not_per_message() {
    // Nothing listens there: every connection is refused.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let transport = PeerTransport::new(1).with_link_config(quick());
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    for i in 0..50 {
        transport.send(vec![message(MessageType::MsgHeartbeat, 0), append(i, 100)]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reported before anyone listened for reports: told once someone does.
    let reports: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = reports.clone();
    transport.report_unreachable_to(move |peer| sink.lock().unwrap().push(peer));
    until("a report", || !reports.lock().unwrap().is_empty()).await;
    let reports = reports.lock().unwrap().clone();
    assert!(reports.iter().all(|&p| p == 2), "{reports:?}");
    assert!(
        reports.len() <= 2,
        "one report per lane at most: {reports:?}"
    );
}

#[tokio::test]
async fn a_full_lane_drops_the_newest_and_reports_it() {
    // A peer that accepts connections and never answers: the lane cannot drain.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = LinkConfig {
        queue_messages: 4,
        ..LinkConfig::default()
    };
    let (transport, reports) = sender(addr, config);
    for _ in 0..20 {
        transport.send(vec![message(MessageType::MsgHeartbeat, 0)]);
    }
    let stats = transport.peer_stats();
    let (_, sent, dropped) = stats[0];
    assert_eq!(sent, 0);
    assert!(dropped >= 15, "{stats:?}");
    assert_eq!(*reports.lock().unwrap(), vec![2]);
}

/// A peer whose first batch stream is accepted, then neither read nor acknowledged
/// (stuck on a connection that stays alive); later streams are served by a real
/// [`PeerService`]. Records the address each stream came from.
struct StuckFirst {
    real: PeerService,
    stuck: AtomicBool,
    /// Held so the stuck stream stays open.
    held: Mutex<Vec<Streaming<RaftBatch>>>,
    streams_from: Mutex<Vec<SocketAddr>>,
}

type AckStream = Pin<Box<dyn futures::Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl RaftPeer for StuckFirst {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, Status> {
        self.real.send(req).await
    }

    type BatchesStream = AckStream;

    async fn batches(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        self.streams_from
            .lock()
            .unwrap()
            .push(req.remote_addr().unwrap());
        if !self.stuck.swap(true, Ordering::SeqCst) {
            self.held.lock().unwrap().push(req.into_inner());
            let mut response: Response<AckStream> =
                Response::new(Box::pin(futures::stream::pending()));
            response
                .metadata_mut()
                .insert(ACKS_HEADER, MetadataValue::from_static("1"));
            return Ok(response);
        }
        let response = self.real.batches(req).await?;
        let (metadata, acks, extensions) = response.into_parts();
        Ok(Response::from_parts(metadata, Box::pin(acks), extensions))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        self.real.send_snapshot(req).await
    }
}

#[tokio::test]
async fn a_stream_that_stops_acknowledging_is_replaced_on_a_new_connection() {
    let received: Received = Arc::default();
    let sink = received.clone();
    let peer = Arc::new(StuckFirst {
        real: PeerService::new(Arc::new(move |m| {
            sink.lock().unwrap().push(m);
            true
        })),
        stuck: AtomicBool::new(false),
        held: Mutex::default(),
        streams_from: Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(RaftPeerServer::from_arc(peer.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let (transport, reports) = sender(addr, quick());
    // Raft sends a heartbeat every few ticks, heard or not.
    let mut sent = 0;
    until("a heartbeat through a new stream", || {
        transport.send(vec![message(MessageType::MsgHeartbeat, sent)]);
        sent += 1;
        !received.lock().unwrap().is_empty()
    })
    .await;
    let from = peer.streams_from.lock().unwrap().clone();
    assert!(from.len() >= 2, "{from:?}");
    assert_ne!(from[0], from[1], "the new stream is on a new connection");
    assert!(
        reports.lock().unwrap().contains(&2),
        "the loss was reported"
    );
    let (_, _, dropped) = transport.peer_stats()[0];
    assert!(
        dropped >= 1,
        "the heartbeats on the stuck stream count as dropped"
    );
}

#[tokio::test]
async fn a_stream_the_peer_never_accepts_is_given_up_and_tried_on_new_connections() {
    // Accepts TCP connections and never says a word of HTTP/2.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    let (transport, reports) = sender(addr, quick());
    until("a second connection", || {
        // Raft sends a heartbeat every few ticks, heard or not.
        transport.send(vec![message(MessageType::MsgHeartbeat, 0)]);
        accepted.lock().unwrap().len() >= 2
    })
    .await;
    assert_eq!(*reports.lock().unwrap(), vec![2], "reported once");
}
