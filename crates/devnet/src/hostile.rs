//! Hostile network input, for tests and for `dev-hostile`: what a faulty or malicious
//! peer could send a consensus node through the network service.
//!
//! Every payload here is something the node must answer with an error (or ignore) and
//! survive: random bytes, valid raft messages cut short, groups nested 100,000 deep, a
//! length prefix of 2^31, empty payloads, unknown message types and modules, and
//! well-formed raft messages that would trip an assertion inside raft-rs.

use cita_proto::network::NetworkMsg;
use craft_core::raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};

/// One hostile message and what it is, for reports.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// A short description.
    pub what: &'static str,
    /// The message as the network would deliver it (its `origin` is set by the sender).
    pub msg: NetworkMsg,
}

fn net(kind: &str, payload: Vec<u8>) -> NetworkMsg {
    NetworkMsg {
        module: "consensus".into(),
        r#type: kind.into(),
        origin: 0,
        msg: payload.into(),
    }
}

/// A small deterministic generator (xorshift), so a failing payload can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced by a fixed one.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Random bytes, `len` of them.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Protobuf groups nested `depth` deep (start-group tags of field 1, never closed).
pub fn nested_groups(depth: usize) -> Vec<u8> {
    vec![0x0b; depth]
}

/// A length-delimited field (raft `Message.entries`) claiming `len` bytes that never
/// come.
pub fn huge_length(len: u64) -> Vec<u8> {
    let mut out = vec![0x3a];
    let mut v = len;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out
}

/// A raft message of `kind` from `from` to `to` in `term`, every other field empty.
fn forged(kind: MessageType, to: u64, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.to = to;
    m.from = from;
    m.term = term;
    m
}

/// Well-formed raft messages from `from` to `to`, one per raft-rs assertion a peer could
/// reach, plus the kinds a peer never sends. Each one killed an unguarded node.
pub fn forged_raft(to: u64, from: u64) -> Vec<(&'static str, Message)> {
    let base = |kind: MessageType, term: u64| forged(kind, to, from, term);
    let far = 1 << 40;
    let mut heartbeat = base(MessageType::MsgHeartbeat, far);
    heartbeat.commit = far;
    let mut gap = base(MessageType::MsgAppend, far);
    gap.index = 1;
    gap.log_term = 1;
    gap.entries = vec![Entry {
        index: 5,
        term: far,
        ..Default::default()
    }];
    let mut snapshot = base(MessageType::MsgSnapshot, far);
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = far;
    snap.mut_metadata().term = far;
    snap.mut_metadata().set_conf_state(ConfState {
        voters: vec![to],
        learners: vec![to],
        ..Default::default()
    });
    snapshot.set_snapshot(snap);
    let mut hup = base(MessageType::MsgHup, 0);
    hup.from = to;
    // prost decodes any number into an enum field; raft-rs's accessors panic on one
    // they do not know.
    let mut unknown_type = base(MessageType::MsgHeartbeat, 1);
    unknown_type.msg_type = 99;
    let mut unknown_entry = base(MessageType::MsgAppend, far);
    unknown_entry.entries = vec![Entry {
        entry_type: 7,
        index: 1,
        term: far,
        ..Default::default()
    }];
    vec![
        ("unknown message type 99", unknown_type),
        ("MsgAppend with entry type 7", unknown_entry),
        (
            "MsgReadIndex without entries",
            base(MessageType::MsgReadIndex, 0),
        ),
        ("empty MsgPropose", base(MessageType::MsgPropose, 0)),
        ("heartbeat committing past the log", heartbeat),
        ("non-contiguous MsgAppend", gap),
        ("snapshot with an invalid ConfState", snapshot),
        (
            "MsgTimeoutNow from a non-leader",
            base(MessageType::MsgTimeoutNow, far),
        ),
        (
            "MsgTransferLeader from a peer",
            base(MessageType::MsgTransferLeader, 1),
        ),
        ("local-only MsgHup", hup),
    ]
}

/// What the receiver holds, as its metrics show it: the ground stateful forgeries are
/// built on.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetState {
    /// Its raft term.
    pub term: u64,
    /// Last index of its raft log.
    pub last_index: u64,
    /// Its committed index.
    pub commit: u64,
}

/// Well-formed raft messages whose every field is plausible and which only disagree
/// with the receiver's own state `at`, as a member `from` (ideally the receiver's
/// leader, so that they pass the one-leader-per-term check and meet the checks on the
/// log behind it) could send them. Each one reaches a raft-rs `fatal!`, an assertion or
/// state the node could not open again, without the gate.
pub fn forged_stateful(to: u64, from: u64, at: TargetState) -> Vec<(&'static str, Message)> {
    let TargetState {
        term,
        last_index: last,
        commit,
    } = at;
    let base = |kind: MessageType, term: u64| forged(kind, to, from, term);
    // Far enough past the log that a live chain does not reach it while the message
    // travels, and far below any overflow.
    let ahead = last + 1_000_000;
    let mut phantom = base(MessageType::MsgAppend, term);
    phantom.index = ahead;
    phantom.log_term = 0;
    phantom.commit = ahead;
    let mut zero_terms = base(MessageType::MsgAppend, term);
    zero_terms.index = last;
    zero_terms.log_term = term;
    zero_terms.entries = vec![Entry {
        index: last + 1,
        term: 0,
        ..Default::default()
    }];
    zero_terms.commit = last + 1;
    let mut past = base(MessageType::MsgHeartbeat, term);
    past.commit = ahead;
    let snapshot_with = |data: Vec<u8>| {
        let mut m = base(MessageType::MsgSnapshot, term);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = last + 10;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(ConfState {
            voters: vec![to, from],
            ..Default::default()
        });
        snap.data = data;
        m.set_snapshot(snap);
        m
    };
    let garbage = snapshot_with(b"not a ConsensusConfiguration".to_vec());
    let no_validators = snapshot_with(prost::Message::encode_to_vec(
        &cita_proto::common::ConsensusConfiguration {
            height: 1_000_000,
            block_interval: 3,
            validators: Vec::new(),
        },
    ));
    let mut newer = base(MessageType::MsgHeartbeat, term + 1);
    newer.commit = commit;
    let mut ack = base(MessageType::MsgAppendResponse, term);
    ack.index = last + 100;
    let mut request = base(MessageType::MsgAppendResponse, term);
    request.reject = true;
    request.index = commit;
    request.request_snapshot = commit;
    let mut forced = base(MessageType::MsgRequestPreVote, term + 1);
    forced.index = last;
    forced.log_term = term;
    forced.context = craft_core::raft::CAMPAIGN_TRANSFER.to_vec();
    let mut boast = base(MessageType::MsgRequestVote, term + 1);
    boast.index = last + 1000;
    boast.log_term = term + 5;
    vec![
        ("append after an entry past the log, of term 0", phantom),
        ("entries of term 0 past the log", zero_terms),
        ("heartbeat committing past the log", past),
        ("snapshot whose data is not a configuration", garbage),
        (
            "snapshot of a configuration without validators",
            no_validators,
        ),
        ("heartbeat of the next term while the leader lives", newer),
        ("acknowledgement past the leader's log", ack),
        ("snapshot request", request),
        ("forced pre-vote", forced),
        ("vote claiming a log term above its term", boast),
    ]
}

/// The whole hostile set for a node with raft id `to`, sent as if by the peer with raft
/// id `from`: `random` random payloads (seeded), every hand-made case, and, given the
/// receiver's state, the stateful forgeries of [`forged_stateful`].
pub fn payloads(
    to: u64,
    from: u64,
    seed: u64,
    random: usize,
    state: Option<TargetState>,
) -> Vec<Hostile> {
    let mut out = Vec::new();
    let mut rng = Rng::new(seed);
    let kinds = ["raft", "probe", "probe-resp", "refresh"];
    for i in 0..random {
        let len = (rng.next_u64() % 256) as usize;
        out.push(Hostile {
            what: "random bytes",
            msg: net(kinds[i % kinds.len()], rng.bytes(len)),
        });
    }
    let mut valid = Message::default();
    valid.set_msg_type(MessageType::MsgHeartbeat);
    valid.to = to;
    valid.from = from;
    valid.term = 1;
    valid.commit = 0;
    let encoded = craft_transport::encode_raft_message(&valid);
    for cut in 1..encoded.len() {
        out.push(Hostile {
            what: "truncated raft message",
            msg: net("raft", encoded[..cut].to_vec()),
        });
    }
    let mut extended = encoded.clone();
    extended.extend(rng.bytes(17));
    out.push(Hostile {
        what: "raft message with trailing garbage",
        msg: net("raft", extended),
    });
    for kind in kinds {
        out.push(Hostile {
            what: "groups nested 100,000 deep",
            msg: net(kind, nested_groups(100_000)),
        });
        out.push(Hostile {
            what: "a length of 2^31",
            msg: net(kind, huge_length(1 << 31)),
        });
        out.push(Hostile {
            what: "empty payload",
            msg: net(kind, Vec::new()),
        });
    }
    out.push(Hostile {
        what: "unknown message type",
        msg: net("bogus", encoded.clone()),
    });
    out.push(Hostile {
        what: "probe of the wrong length",
        msg: net("probe", vec![1, 2, 3]),
    });
    out.push(Hostile {
        what: "wrong module",
        msg: NetworkMsg {
            module: "controller".into(),
            ..net("raft", encoded)
        },
    });
    // With the checksum trailer our nodes add, as a faulty node of ours would send them:
    // they pass the integrity check and meet the gate.
    let stateful = state
        .map(|at| forged_stateful(to, from, at))
        .unwrap_or_default();
    for (what, m) in forged_raft(to, from).into_iter().chain(stateful) {
        out.push(Hostile {
            what,
            msg: net("raft", craft_transport::integrity::encode_checked(&m)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_covers_every_case() {
        let set = payloads(
            1,
            2,
            7,
            10,
            Some(TargetState {
                term: 5,
                last_index: 40,
                commit: 39,
            }),
        );
        for what in [
            "random bytes",
            "truncated raft message",
            "groups nested 100,000 deep",
            "a length of 2^31",
            "empty payload",
            "unknown message type",
            "wrong module",
            "MsgReadIndex without entries",
            "non-contiguous MsgAppend",
            "append after an entry past the log, of term 0",
            "snapshot whose data is not a configuration",
        ] {
            assert!(set.iter().any(|h| h.what == what), "{what} missing");
        }
        assert_eq!(
            huge_length(1 << 31),
            vec![0x3a, 0x80, 0x80, 0x80, 0x80, 0x08]
        );
        assert_eq!(nested_groups(3), vec![0x0b; 3]);
    }
}
