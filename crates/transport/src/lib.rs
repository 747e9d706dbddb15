//! craft-transport carries raft messages between nodes.
//!
//! - [`cita`]: the CITA-Cloud network adapter. Raft messages travel through the network
//!   microservice (`SendMsg`/`Broadcast`, `ProcessNetworkMsg`) with the existing raft
//!   service's module and message types, so nodes of both implementations interoperate.
//! - [`dev_network`]: a development network microservice that routes `NetworkMsg`
//!   between the nodes of a local cluster and can cut links.
//! - [`peer`]: a plain peer-to-peer gRPC transport for services outside CITA-Cloud.
//!
//! Every transport implements [`craft_core::Transport`]: sends never block the Ready
//! loop; each peer has a bounded queue and its own sender task, and a full queue drops
//! the newest message (raft retransmits) and counts it. It must not depend on the
//! consensus service or on storage crates.

pub mod cita;
pub mod dev_network;
pub mod peer;
mod queue;

pub use cita::Inbound;
pub use queue::{PeerQueues, PeerStats};

/// Decodes a raft message from its protobuf bytes.
pub fn decode_raft_message(
    bytes: &[u8],
) -> Result<raft::eraftpb::Message, protobuf::ProtobufError> {
    use protobuf::Message as _;
    let mut msg = raft::eraftpb::Message::default();
    msg.merge_from_bytes(bytes)?;
    Ok(msg)
}

/// Encodes a raft message to protobuf bytes.
pub fn encode_raft_message(msg: &raft::eraftpb::Message) -> Vec<u8> {
    use protobuf::Message as _;
    // Writing to a Vec cannot fail for a well-formed in-memory message.
    msg.write_to_bytes().unwrap_or_default()
}
