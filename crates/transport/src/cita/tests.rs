//! The adapter's tests: origins, checksums, lanes, registration.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::encode_raft_message;
use crate::integrity::IntegrityError;
use raft::eraftpb::MessageType;
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
        msg: msg.into(),
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
    let refused =
        |r: Result<(), InboundError>| matches!(r, Err(InboundError::Damaged { origin: 42, .. }));
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
        .add_service(cita_proto::network::network_service_server::NetworkServiceServer::new(svc))
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
                cita_proto::network::network_service_server::NetworkServiceServer::new(rec.clone()),
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
    let (m, _) = decode_checked(sent[0].msg.clone(), true).unwrap();
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
    let terms: Vec<u64> = held.of(2).iter().map(|m| m.term).collect();
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
        assert_eq!(probe.msg[..], 7u64.to_be_bytes());
    }
}
