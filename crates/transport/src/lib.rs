//! craft-transport carries raft messages between nodes.
//!
//! - [`cita`]: the CITA-Cloud network adapter. Raft messages travel through the network
//!   microservice (`SendMsg`/`Broadcast`, `ProcessNetworkMsg`) with the existing raft
//!   service's module and message types, so nodes of both implementations interoperate.
//! - [`peer`]: a plain peer-to-peer gRPC transport for services outside CITA-Cloud,
//!   with opt-in mutual TLS ([`tls`]). It streams snapshots in chunks and tells raft
//!   how each went ([`craft_core::Transport::report_snapshots`]).
//! - [`limits`]: a bound on the connections a server holds open.
//! - [`integrity`]: a CRC32C trailer on every raft message our nodes send, so a message
//!   damaged in transit is dropped before raft sees it.
//!
//! Every transport implements [`craft_core::Transport`]: sends never block the Ready
//! loop; each peer has a bounded queue and its own sender task, and a full queue drops
//! the newest message (raft retransmits) and counts it. The CITA adapter sends a
//! snapshot like any other message (CITA-Cloud's snapshots are one configuration, a
//! few hundred bytes) and leaves the driver to report it delivered. It must not depend on the
//! consensus service or on storage crates.

pub mod cita;
pub mod integrity;
pub mod limits;
pub mod peer;
mod queue;
pub mod tls;

/// Where incoming raft messages go; returns whether the message was accepted.
pub type Inbound = std::sync::Arc<dyn Fn(raft::eraftpb::Message) -> bool + Send + Sync>;

pub use queue::{PeerQueues, PeerStats};

/// Decodes a raft message from its protobuf bytes, with prost's limits: nesting deeper
/// than 100 levels, lengths past the buffer and malformed fields are errors.
pub fn decode_raft_message(
    bytes: &[u8],
) -> Result<raft::eraftpb::Message, raft_prost::DecodeError> {
    <raft::eraftpb::Message as raft_prost::Message>::decode(bytes)
}

/// Encodes a raft message to protobuf bytes.
pub fn encode_raft_message(msg: &raft::eraftpb::Message) -> Vec<u8> {
    raft_prost::Message::encode_to_vec(msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft::eraftpb::{Entry, Message, MessageType};

    /// The bytes every raft implementation with this schema exchanges (the existing
    /// service encodes with prost too): field by field, in declaration order, defaults
    /// left out.
    const APPEND: &[u8] = &[
        0x08, 0x03, // msg_type = MsgAppend
        0x10, 0x02, // to = 2
        0x18, 0x01, // from = 1
        0x20, 0x05, // term = 5
        0x28, 0x04, // log_term = 4
        0x30, 0x0a, // index = 10
        0x3a, 0x09, // entries[0], 9 bytes:
        0x10, 0x05, //   term = 5 (entry_type EntryNormal is the default)
        0x18, 0x0b, //   index = 11
        0x22, 0x03, b'b', b'l', b'k', // data
        0x40, 0x09, // commit = 9
    ];

    /// A typical append, for this crate's tests.
    pub(crate) fn append() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 5;
        m.log_term = 4;
        m.index = 10;
        m.entries = vec![Entry {
            term: 5,
            index: 11,
            data: b"blk".to_vec(),
            ..Default::default()
        }];
        m.commit = 9;
        m
    }

    #[test]
    fn raft_messages_have_the_schema_bytes() {
        assert_eq!(encode_raft_message(&append()), APPEND);
        assert_eq!(decode_raft_message(APPEND).unwrap(), append());
    }

    #[test]
    fn deep_nesting_and_bad_lengths_are_errors() {
        // Unknown field 20 as groups nested `depth` deep: prost skips them recursively,
        // up to its limit of 100.
        let groups = |depth: usize| {
            let mut bytes = vec![0x08, 0x08]; // msg_type = MsgHeartbeat
            bytes.extend(std::iter::repeat_n([0xa3, 0x01], depth).flatten());
            bytes.extend(std::iter::repeat_n([0xa4, 0x01], depth).flatten());
            bytes
        };
        assert!(decode_raft_message(&groups(50)).is_ok());
        assert!(decode_raft_message(&groups(200)).is_err());
        assert!(decode_raft_message(&groups(200_000)).is_err());
        // A length past the end of the buffer.
        assert!(decode_raft_message(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x07]).is_err());
    }
}
