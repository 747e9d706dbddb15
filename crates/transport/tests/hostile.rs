//! Generated hostile input for the CITA network message handler, all the way into raft.
//!
//! Valid raft messages (appends, heartbeats, votes, snapshots, reads) and probes are
//! mutated (bytes flipped, cut short, extended, wrapped in nested groups) and fed to
//! `CitaNetwork::handle`, whose raft messages are stepped into a live `Replica` and its
//! Ready handled, as the consensus service does. No input may panic or stop the replica.
//!
//! `CRAFT_FUZZ_CASES` sets the number of generated inputs per test (CI runs a bounded
//! number; `cargo xtask fuzz` runs 100,000).
#![allow(clippy::unwrap_used, missing_docs)]

use craft_core::sync::LockExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::network::NetworkMsg;
use craft_core::raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use craft_core::{make_snapshot, voters, LogStore, MemLogStore, Replica, ReplicaConfig};
use craft_mutate::{apply, mutation};
use craft_transport::cita::{CitaNetwork, CitaNetworkConfig};
use craft_transport::encode_raft_message;
use proptest::prelude::*;

fn cases() -> u32 {
    craft_mutate::cases(3000)
}

const ME: u64 = 7;

/// Valid messages to start mutating from, addressed to `ME` from peer 2.
fn seeds() -> Vec<Message> {
    let base = |kind: MessageType, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = ME;
        m.from = 2;
        m.term = term;
        m
    };
    let mut append = base(MessageType::MsgAppend, 6);
    append.index = 5;
    append.log_term = 5;
    append.commit = 6;
    append.entries = vec![
        Entry {
            index: 6,
            term: 6,
            data: b"block".to_vec(),
            ..Default::default()
        },
        Entry {
            index: 7,
            term: 6,
            entry_type: EntryType::EntryConfChangeV2.into(),
            ..Default::default()
        },
    ];
    let mut heartbeat = base(MessageType::MsgHeartbeat, 6);
    heartbeat.commit = 5;
    let mut vote = base(MessageType::MsgRequestVote, 7);
    vote.index = 9;
    vote.log_term = 6;
    let mut snapshot = base(MessageType::MsgSnapshot, 6);
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 9;
    snap.mut_metadata().term = 6;
    snap.mut_metadata().set_conf_state(ConfState {
        voters: vec![2, 3, ME],
        ..Default::default()
    });
    snap.data = b"config".to_vec();
    snapshot.set_snapshot(snap);
    let mut read = base(MessageType::MsgReadIndexResp, 6);
    read.index = 5;
    read.entries = vec![Entry::default()];
    let response = base(MessageType::MsgAppendResponse, 6);
    vec![append, heartbeat, vote, snapshot, read, response]
}

/// A change to one field of a decoded message: what a buggy or hostile peer writes
/// while keeping the encoding valid.
#[derive(Debug, Clone)]
struct FieldChange(u8, u64);

/// The fields [`change`] knows.
const FIELDS: usize = 12;

/// Changes to a message: none in a quarter of the cases (only its bytes are damaged),
/// else one to `craft_mutate::FIELDS_AT_ONCE` distinct fields at once.
fn field_changes() -> impl Strategy<Value = Vec<FieldChange>> {
    let value = prop_oneof![0u64..16, Just(u64::MAX), Just(1 << 40), any::<u64>(),];
    prop_oneof![
        1 => Just(Vec::new()),
        3 => craft_mutate::fields(FIELDS, value).prop_map(|changes| changes
            .into_iter()
            .map(|(f, v)| FieldChange(f as u8, v))
            .collect()),
    ]
}

fn change(mut m: Message, c: &FieldChange) -> Message {
    let FieldChange(field, v) = *c;
    match field {
        0 => m.set_msg_type(MessageType::from_i32((v % 20) as i32).unwrap_or_default()),
        // Numbers no enum of raft has: prost decodes them as they are.
        10 => m.msg_type = (v % 64) as i32 - 16,
        11 => {
            if let Some(e) = m.entries.get_mut((v % 3) as usize) {
                e.entry_type = (v / 3 % 8) as i32 - 2;
            }
        }
        1 => m.term = v,
        2 => m.index = v,
        3 => m.log_term = v,
        4 => m.commit = v,
        5 => m.reject = v % 2 == 1,
        6 => m.reject_hint = v,
        7 => {
            if let Some(e) = m.entries.get_mut((v % 3) as usize) {
                e.index = v / 3;
            }
        }
        8 => {
            if let Some(e) = m.entries.get_mut((v % 3) as usize) {
                e.term = v / 3;
            }
        }
        _ => m.entries.clear(),
    }
    m
}

struct Node {
    net: CitaNetwork,
    replica: Arc<Mutex<Replica<MemLogStore>>>,
    /// Raft messages that reached the replica (decoded and addressed to it).
    stepped: Arc<AtomicU64>,
}

fn node() -> Node {
    let store = MemLogStore::new();
    store
        .bootstrap(make_snapshot(5, 5, voters([2, 3, ME]), b"config".to_vec()))
        .unwrap();
    let (replica, _) = Replica::open(ReplicaConfig::new(ME), store).unwrap();
    let replica = Arc::new(Mutex::new(replica));
    let net = CitaNetwork::new(CitaNetworkConfig {
        raft_id: ME,
        // Nothing listens here: replies fail quietly.
        network_addr: "http://127.0.0.1:9".into(),
        handler_host: "127.0.0.1".into(),
        handler_port: 1,
        queue_capacity: 16,
        probe_interval: Duration::from_secs(3600),
        stale_after: Duration::from_secs(3600),
    })
    .unwrap();
    let r = replica.clone();
    let stepped = Arc::new(AtomicU64::new(0));
    let count = stepped.clone();
    net.set_inbound(Some(Arc::new(move |m: Message| {
        count.fetch_add(1, Ordering::Relaxed);
        let mut replica = r.locked();
        // Refusals are the expected answer; what matters is that nothing panics.
        let _ = replica.step(m);
        true
    })));
    Node {
        net,
        replica,
        stepped,
    }
}

/// The origin a sender of raft id `from` has: one per raft id, so that mutated `from`
/// fields still reach raft instead of stopping at the origin check (which has tests of
/// its own).
fn origin_for(kind: &str, payload: &[u8]) -> u64 {
    let from = match kind {
        "raft" => craft_transport::decode_raft_message(payload).map_or(0, |m| m.from),
        _ => <[u8; 8]>::try_from(payload).map_or(0, u64::from_be_bytes),
    };
    from.wrapping_add(1000)
}

/// Feeds one input; the replica must still handle its Ready afterwards.
fn feed(node: &Node, kind: &str, payload: Vec<u8>) -> Result<(), TestCaseError> {
    let _ = node.net.handle(NetworkMsg {
        module: "consensus".into(),
        r#type: kind.into(),
        origin: origin_for(kind, &payload),
        msg: payload.into(),
    });
    drain(node)
}

/// Handles every Ready of the node's replica. A store error would stop a real node:
/// it counts as a failure.
fn drain(node: &Node) -> Result<(), TestCaseError> {
    let mut replica = node.replica.locked();
    while replica.has_ready() {
        replica
            .handle_ready(&mut |_| {})
            .map_err(|e| TestCaseError::fail(format!("replica stopped: {e}")))?;
    }
    Ok(())
}

#[test]
fn mutated_raft_messages_never_panic_or_stop_the_replica() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let seeds = seeds();
    let node = node();
    let strategy = (
        0..seeds.len(),
        field_changes(),
        prop::collection::vec(mutation(), 0..3),
        prop::sample::select(vec!["raft", "raft", "raft", "raft", "probe", "refresh"]),
    );
    let mut runner = craft_mutate::runner(3000);
    runner
        .run(&strategy, |(seed, changes, mutations, kind)| {
            let message = changes.iter().fold(seeds[seed].clone(), change);
            let bytes = mutations.iter().fold(encode_raft_message(&message), apply);
            feed(&node, kind, bytes)
        })
        .unwrap();
    // The mutations must exercise raft, not only the decoder: many inputs still reach
    // the replica, and the gate refuses some of them.
    let stepped = node.stepped.load(Ordering::Relaxed);
    assert!(
        stepped >= u64::from(cases()) / 10,
        "only {stepped} inputs reached raft"
    );
    let refused = node.replica.locked().refused();
    assert!(refused > 0, "the gate refused nothing of {stepped}");
    println!(
        "{} mutated inputs: {stepped} reached the replica, {refused} refused by the gate",
        cases()
    );
}

/// Messages a leader receives, from peer 2 in term `term`.
fn leader_seeds(term: u64) -> Vec<Message> {
    let base = |kind: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = ME;
        m.from = 2;
        m.term = term;
        m
    };
    let mut ack = base(MessageType::MsgAppendResponse);
    ack.index = 6;
    let mut nack = base(MessageType::MsgAppendResponse);
    nack.reject = true;
    nack.index = 6;
    nack.reject_hint = 3;
    nack.log_term = 2;
    let hb = base(MessageType::MsgHeartbeatResponse);
    let mut read = base(MessageType::MsgReadIndex);
    read.term = 0;
    read.entries = vec![Entry {
        data: b"ctx".to_vec(),
        ..Default::default()
    }];
    let mut vote = base(MessageType::MsgRequestPreVote);
    vote.term = term + 1;
    vote.index = 6;
    vote.log_term = term;
    vec![ack, nack, hb, read, vote]
}

/// A replica that has just won an election in a 3-voter cluster (votes from peer 2).
fn leader_node() -> Node {
    let node = node();
    {
        let mut r = node.replica.locked();
        r.campaign().unwrap();
        for kind in [
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgRequestVoteResponse,
        ] {
            while r.has_ready() {
                r.handle_ready(&mut |_| {}).unwrap();
            }
            let mut m = Message::default();
            m.set_msg_type(kind);
            m.to = ME;
            m.from = 2;
            // A pre-vote is answered in the term it asks for.
            m.term = r.raw().raft.term + u64::from(kind == MessageType::MsgRequestPreVoteResponse);
            r.step(m).unwrap();
        }
        while r.has_ready() {
            r.handle_ready(&mut |_| {}).unwrap();
        }
        assert!(r.is_leader(), "the fixture did not become leader");
    }
    node
}

#[test]
fn mutated_messages_to_a_leader_never_panic_or_stop_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let node = std::cell::RefCell::new(leader_node());
    let mut runner = craft_mutate::runner(3000);
    let stepped_as_leader = std::cell::Cell::new(0u64);
    runner
        .run(
            &(
                0..5usize,
                field_changes(),
                prop::collection::vec(mutation(), 0..2),
            ),
            |(seed, changes, mutations)| {
                // Hostile input deposes the leader often; start again from a fresh one.
                let term = {
                    let n = node.borrow();
                    let r = n.replica.locked();
                    r.is_leader().then(|| r.raw().raft.term)
                };
                let term = match term {
                    Some(t) => t,
                    None => {
                        *node.borrow_mut() = leader_node();
                        node.borrow().replica.locked().raw().raft.term
                    }
                };
                stepped_as_leader.set(stepped_as_leader.get() + 1);
                let message = changes
                    .iter()
                    .fold(leader_seeds(term)[seed].clone(), change);
                let bytes = mutations.iter().fold(encode_raft_message(&message), apply);
                feed(&node.borrow(), "raft", bytes)
            },
        )
        .unwrap();
    assert!(stepped_as_leader.get() >= u64::from(cases()));
}

#[test]
fn random_bytes_never_panic_or_stop_the_replica() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let node = node();
    let mut runner = craft_mutate::runner(3000);
    runner
        .run(
            &(
                prop::collection::vec(any::<u8>(), 0..512),
                prop::sample::select(vec!["raft", "probe", "probe-resp", "refresh", "x"]),
            ),
            |(bytes, kind)| feed(&node, kind, bytes),
        )
        .unwrap();
}

/// The plain peer transport's receiving side (`RaftPeer.Send`): a whole `RaftBatch`, as
/// tonic would decode it from the wire, mutated, then handed to the service in front of
/// a live replica.
#[test]
fn mutated_peer_batches_never_panic_or_stop_the_replica() {
    use cita_proto::peer::raft_peer_server::RaftPeer;
    use cita_proto::peer::RaftBatch;
    use craft_transport::peer::PeerService;
    use prost::Message as _;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let node = node();
    let r = node.replica.clone();
    let service = PeerService::new(Arc::new(move |m: Message| {
        let _ = r.locked().step(m);
        true
    }));
    let seeds = seeds();
    let (accepted, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut runner = craft_mutate::runner(3000);
    let strategy = (
        prop::collection::vec((0..seeds.len(), field_changes()), 0..4),
        prop::collection::vec(mutation(), 0..3),
        prop_oneof![Just(2u64), any::<u64>()],
    );
    runner
        .run(&strategy, |(picks, mutations, from)| {
            let messages = picks
                .iter()
                .map(|(seed, changes)| {
                    craft_transport::integrity::encode_checked(
                        &changes.iter().fold(seeds[*seed].clone(), change),
                    )
                    .into()
                })
                .collect();
            let wire = RaftBatch { from, messages }.encode_to_vec();
            let wire = mutations.iter().fold(wire, apply);
            let Ok(batch) = RaftBatch::decode(wire.as_slice()) else {
                // tonic answers this with an error status before the service runs.
                refused.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            };
            match rt.block_on(service.send(tonic::Request::new(batch))) {
                Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                Err(status) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    refused.fetch_add(1, Ordering::Relaxed)
                }
            };
            drain(&node)
        })
        .unwrap();
    let (a, r) = (accepted.into_inner(), refused.into_inner());
    println!("peer batches: {a} delivered, {r} refused");
    assert!(a > 0 && r > 0, "only one outcome seen: {a} / {r}");
}

#[test]
fn hand_made_extremes_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let node = node();
    // Groups nested 100,000 deep and a length of 2^31: refused by the decoder.
    let deep = craft_mutate::deep_groups();
    let huge = vec![0x3a, 0x80, 0x80, 0x80, 0x80, 0x08];
    for kind in ["raft", "probe", "probe-resp", "refresh"] {
        for payload in [deep.clone(), huge.clone(), Vec::new()] {
            let result = node.net.handle(NetworkMsg {
                module: "consensus".into(),
                r#type: kind.into(),
                origin: 3,
                msg: payload.clone().into(),
            });
            // Probes carry exactly 8 bytes: all of these are errors. A raft payload may
            // also "decode" (an empty message is all defaults) into a message for raft
            // id 0, which is not ours and is dropped.
            if kind != "raft" {
                assert!(result.is_err(), "{kind} {} bytes accepted", payload.len());
            }
        }
    }
    feed(&node, "raft", deep).unwrap();
    assert_eq!(node.replica.locked().refused(), 0);
}

#[test]
fn hand_made_extremes_are_refused_by_the_peer_service() {
    use cita_proto::peer::raft_peer_server::RaftPeer;
    use cita_proto::peer::RaftBatch;
    use craft_transport::peer::PeerService;
    use prost::Message as _;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let d = delivered.clone();
    let service = PeerService::new(Arc::new(move |_| {
        d.fetch_add(1, Ordering::Relaxed);
        true
    }));
    let deep = craft_mutate::deep_groups();
    let huge = vec![0x3a, 0x80, 0x80, 0x80, 0x80, 0x08];
    // Inside a batch: each one refuses the whole batch.
    for payload in [deep.clone(), huge.clone(), Vec::new()] {
        let batch = RaftBatch {
            from: 2,
            messages: vec![payload.into()],
        };
        let status = rt
            .block_on(service.send(tonic::Request::new(batch)))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // As the batch itself: the decoder tonic runs refuses them.
    assert!(RaftBatch::decode(deep.as_slice()).is_err());
    assert!(RaftBatch::decode([0x12, 0x80, 0x80, 0x80, 0x80, 0x08].as_slice()).is_err());
    assert_eq!(delivered.load(Ordering::Relaxed), 0);
}
