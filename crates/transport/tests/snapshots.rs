//! Snapshots over the peer transport: streamed in chunks, reassembled and checked by
//! the receiver, handed to raft whole, and reported to the sender's raft only once the
//! receiver has acknowledged them (finished) or refused them (failed).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::SnapshotChunk;
use craft_core::raft::eraftpb::{ConfState, Message, MessageType, Snapshot};
use craft_core::raft::SnapshotStatus;
use craft_core::{SnapshotReporter, Transport};
use craft_transport::integrity::encode_checked;
use craft_transport::limits::ConnectionLimit;
use craft_transport::peer::{serve, PeerService, PeerTransport};
use tokio::sync::{mpsc, oneshot};

/// What the receiving node's raft was handed.
type Received = Arc<Mutex<Vec<Message>>>;

/// Serves a [`PeerService`] (made by `service` around its inbound) on a loopback port.
async fn receiver(
    accept: bool,
    service: impl FnOnce(craft_transport::Inbound) -> PeerService,
) -> (SocketAddr, Received, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let sink = received.clone();
    let inbound: craft_transport::Inbound = Arc::new(move |m| {
        if accept {
            sink.lock().unwrap().push(m);
        }
        accept
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let service = service(inbound);
    tokio::spawn(async move {
        serve(listener, service, None, ConnectionLimit::new(16), async {
            let _ = stopped.await;
        })
        .await
    });
    (addr, received, stop)
}

/// A transport of raft id 1 that knows raft id 2 at `addr`, and its snapshot reports.
fn sender(
    addr: SocketAddr,
) -> (
    PeerTransport,
    mpsc::UnboundedReceiver<(u64, SnapshotStatus)>,
) {
    let transport = PeerTransport::new(1).with_snapshot_chunk_bytes(64 << 10);
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    let (reporter, reports) = SnapshotReporter::channel();
    assert!(transport.report_snapshots(reporter));
    (transport, reports)
}

/// A snapshot message from 1 to 2 whose state is `len` bytes.
fn snapshot_message(len: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 40;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().set_conf_state(ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    });
    snap.data = (0..len).map(|i| (i % 251) as u8).collect();
    m.set_snapshot(snap);
    m
}

async fn next_report(
    reports: &mut mpsc::UnboundedReceiver<(u64, SnapshotStatus)>,
) -> SnapshotStatus {
    let (to, status) = tokio::time::timeout(Duration::from_secs(30), reports.recv())
        .await
        .expect("no snapshot report")
        .expect("reports closed");
    assert_eq!(to, 2);
    status
}

#[tokio::test]
async fn a_snapshot_is_streamed_in_chunks_and_reported_finished_once_received() {
    let (addr, received, _stop) = receiver(true, PeerService::new).await;
    let (transport, mut reports) = sender(addr);
    let msg = snapshot_message(5 << 20);
    transport.send(vec![msg.clone()]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Finish);
    // Finished means the receiver's raft already has it, whole.
    let got = received.lock().unwrap().clone();
    assert_eq!(got, vec![msg]);
}

#[tokio::test]
async fn a_snapshot_over_the_receivers_limit_is_refused_and_reported_failed() {
    let (addr, received, _stop) = receiver(true, |inbound| {
        PeerService::new(inbound).with_max_snapshot_bytes(1 << 20)
    })
    .await;
    let (transport, mut reports) = sender(addr);
    transport.send(vec![snapshot_message(2 << 20)]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Failure);
    assert!(received.lock().unwrap().is_empty());
    // One under the limit passes.
    transport.send(vec![snapshot_message(512 << 10)]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Finish);
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_snapshot_raft_cannot_take_or_nobody_receives_is_reported_failed() {
    // The receiver's raft inbox is full.
    let (addr, _received, _stop) = receiver(false, PeerService::new).await;
    let (transport, mut reports) = sender(addr);
    transport.send(vec![snapshot_message(1 << 10)]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Failure);
    // No server at the address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = listener.local_addr().unwrap();
    drop(listener);
    let (transport, mut reports) = sender(gone);
    transport.send(vec![snapshot_message(1 << 10)]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Failure);
    // No address for the peer at all.
    let (reporter, mut reports) = SnapshotReporter::channel();
    let nowhere = PeerTransport::new(1);
    assert!(nowhere.report_snapshots(reporter));
    nowhere.send(vec![snapshot_message(1 << 10)]);
    assert_eq!(next_report(&mut reports).await, SnapshotStatus::Failure);
}

/// Sends `chunks` as one `SendSnapshot` stream, as a buggy or hostile peer might.
async fn send_raw(addr: SocketAddr, chunks: Vec<SnapshotChunk>) -> Result<(), tonic::Status> {
    let mut client = RaftPeerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .map(|_| ())
}

/// `bytes` cut into chunks of `size` from raft id `from`, announcing `total_len`.
fn chunks(bytes: &[u8], size: usize, from: u64, total_len: u64) -> Vec<SnapshotChunk> {
    bytes
        .chunks(size)
        .map(|data| SnapshotChunk {
            from,
            total_len,
            data: data.to_vec(),
        })
        .collect()
}

#[tokio::test]
async fn damaged_short_long_or_mixed_snapshot_streams_are_refused() {
    let (addr, received, _stop) = receiver(true, PeerService::new).await;
    let bytes = encode_checked(&snapshot_message(256 << 10));
    let len = bytes.len() as u64;
    let code = |r: Result<(), tonic::Status>| r.map_err(|s| s.code());

    // The stream a well-behaved sender makes is accepted.
    assert_eq!(
        code(send_raw(addr, chunks(&bytes, 10_000, 1, len)).await),
        Ok(())
    );
    assert_eq!(received.lock().unwrap().len(), 1);

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let mut short = chunks(&bytes, 10_000, 1, len);
    short.pop();
    let mut mixed = chunks(&bytes, 10_000, 1, len);
    mixed[3].from = 9;
    let mut resized = chunks(&bytes, 10_000, 1, len);
    resized[2].total_len = len + 1;
    let cases = [
        ("a flipped bit", chunks(&flipped, 10_000, 1, len)),
        ("a missing chunk", short),
        (
            "more bytes than announced",
            chunks(&bytes, 10_000, 1, len - 1),
        ),
        ("chunks from two senders", mixed),
        ("two announced lengths", resized),
        (
            "a sender other than the message's",
            chunks(&bytes, 10_000, 5, len),
        ),
        ("no chunk at all", Vec::new()),
    ];
    for (what, stream) in cases {
        let result = code(send_raw(addr, stream).await);
        assert!(result.is_err(), "{what}: accepted");
    }
    // A message that is not a snapshot has no business in a snapshot stream.
    let mut append = snapshot_message(0);
    append.set_msg_type(MessageType::MsgAppend);
    let append = encode_checked(&append);
    let result = code(send_raw(addr, chunks(&append, 10_000, 1, append.len() as u64)).await);
    assert_eq!(result, Err(tonic::Code::InvalidArgument));
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "a refused stream reached raft"
    );
}
