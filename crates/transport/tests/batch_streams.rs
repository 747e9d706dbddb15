//! Batches over the peer transport's long-lived streams (`RaftPeer.Batches`): in order on
//! one stream and acknowledged one by one, a refused batch ends only its stream (the
//! next batch opens another), and a server shuts down while senders keep their streams
//! open.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::RaftBatch;
use craft_core::raft::eraftpb::{Message, MessageType};
use craft_core::Transport;
use craft_transport::integrity::encode_checked;
use craft_transport::limits::ConnectionLimit;
use craft_transport::peer::{serve, PeerService, PeerTransport, ACKS_HEADER};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Received = Arc<Mutex<Vec<Message>>>;

type Server = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves a [`PeerService`] on a loopback port; the handle ends when the server does.
async fn receiver() -> (SocketAddr, Received, oneshot::Sender<()>, Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let (stop, server) = serve_into(listener, received.clone());
    (addr, received, stop, server)
}

/// Serves on `listener`, handing what arrives to `received`, until told to stop.
fn serve_into(
    listener: tokio::net::TcpListener,
    received: Received,
) -> (oneshot::Sender<()>, Server) {
    let inbound: craft_transport::Inbound = Arc::new(move |m| {
        received.lock().unwrap().push(m);
        true
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        PeerService::new(inbound),
        None,
        ConnectionLimit::new(16),
        async {
            let _ = stopped.await;
        },
    ));
    (stop, server)
}

/// An append from 1 to 2 at `index`.
fn append(index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 1;
    m.index = index;
    m
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn indexes(received: &Received) -> Vec<u64> {
    received.lock().unwrap().iter().map(|m| m.index).collect()
}

#[tokio::test]
async fn batches_arrive_in_order_on_one_stream() {
    let (addr, received, _stop, _server) = receiver().await;
    let transport = PeerTransport::new(1);
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    for i in 1..=200 {
        transport.send(vec![append(i)]);
    }
    until("200 messages", || received.lock().unwrap().len() == 200).await;
    assert_eq!(indexes(&received), (1..=200).collect::<Vec<_>>());
    // Sent once acknowledged, which follows the delivery.
    until("200 messages acknowledged", || {
        transport.peer_stats() == vec![(2, 200, 0)]
    })
    .await;
}

#[tokio::test]
async fn a_refused_batch_ends_its_stream_and_the_next_batch_opens_another() {
    let (addr, received, _stop, _server) = receiver().await;
    // A stream of our own that sends a good batch, a bad one, then a good one.
    let mut client = RaftPeerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let batch = |m: &Message| RaftBatch {
        from: 1,
        messages: vec![encode_checked(m).into()],
    };
    let mut bad = encode_checked(&append(2));
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let items = vec![
        batch(&append(1)),
        RaftBatch {
            from: 1,
            messages: vec![bad.into()],
        },
        batch(&append(3)),
    ];
    let answer = client
        .batches(futures::stream::iter(items))
        .await
        .expect("the stream is taken");
    assert!(
        answer.metadata().contains_key(ACKS_HEADER),
        "the receiver says it acknowledges batches"
    );
    let mut answers = answer.into_inner();
    // The good batch is acknowledged, then the stream ends at the damaged one.
    assert!(
        answers.message().await.unwrap().is_some(),
        "one acknowledgement"
    );
    let status = answers
        .message()
        .await
        .expect_err("a stream with a damaged batch is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        indexes(&received),
        vec![1],
        "nothing after the refused batch"
    );

    // The transport's own stream goes on: it is another stream.
    let transport = PeerTransport::new(1);
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    transport.send(vec![append(4)]);
    until("the transport's message", || {
        indexes(&received) == vec![1, 4]
    })
    .await;
}

#[tokio::test]
async fn a_stream_ended_by_the_peer_is_opened_again_with_the_next_batch() {
    let (addr, received, stop, server) = receiver().await;
    let transport = PeerTransport::new(1);
    transport.set_peer(2, &format!("http://{addr}")).unwrap();
    transport.send(vec![append(1)]);
    until("the first message", || indexes(&received) == vec![1]).await;

    // The server stops while the stream is open: it must not wait for the sender.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("a server with an open batch stream shuts down")
        .unwrap()
        .unwrap();

    // Started again on the same port, it hears the sender's next batches.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (_stop2, _server2) = serve_into(listener, received.clone());
    let mut next = 2;
    until("a message after the restart", || {
        // Raft sends again until heard; so does this test.
        transport.send(vec![append(next)]);
        next += 1;
        indexes(&received).len() > 1
    })
    .await;
    let stats = transport.peer_stats();
    let (_, sent, dropped) = stats[0];
    assert!(sent >= 2, "the reopened stream took batches: {stats:?}");
    assert!(sent + dropped < next, "no batch counted twice: {stats:?}");
}
