//! The wire vocabulary shared with the existing service: the module and message type
//! names, the 8-byte raft id payloads, the size bound of a raft message, and why an
//! incoming message is refused.

use crate::integrity::IntegrityError;

/// Module name the consensus service registers with the network.
pub const MODULE: &str = "consensus";
/// Message type of a raft message.
pub const TYPE_RAFT: &str = "raft";
/// Message type asking peers for their raft ids.
pub const TYPE_PROBE: &str = "probe";
/// Message type answering a probe.
pub const TYPE_PROBE_RESP: &str = "probe-resp";
/// Message type telling a sender its origin mapping is stale.
pub const TYPE_REFRESH: &str = "refresh";

/// Room kept under [`cita_proto::MAX_MESSAGE_BYTES`] for the `NetworkMsg`'s own fields
/// and the gRPC framing.
pub const MESSAGE_HEADROOM: usize = 64 << 10;
/// Largest encoded raft message (with its checksum trailer) the adapter sends; a larger
/// one could never pass the gRPC limit and is dropped and reported, not retried.
pub const MAX_RAFT_MESSAGE_BYTES: usize = cita_proto::MAX_MESSAGE_BYTES - MESSAGE_HEADROOM;

/// Why an incoming network message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    /// The message is for another module.
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    /// The type is none of raft, probe, probe-resp, refresh.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A raft id payload that is not 8 bytes.
    #[error("{kind} payload is {len} bytes, expected 8")]
    BadIdPayload {
        /// The message type.
        kind: String,
        /// Its length.
        len: usize,
    },
    /// A raft payload that does not decode.
    #[error("undecodable raft message: {0}")]
    BadRaftMessage(String),
    /// A raft message whose checksum trailer does not match, or that has none, from an
    /// origin required to send it (see the module docs): damaged in transit.
    #[error("damaged raft message from origin {origin}: {error}")]
    Damaged {
        /// The sending origin.
        origin: u64,
        /// What was wrong.
        error: IntegrityError,
    },
    /// A claim to a raft id that another origin speaks for, that this origin's own raft id
    /// contradicts, or that is this node's own.
    #[error("origin {origin} claims raft id {raft_id}: {why}")]
    OriginConflict {
        /// The raft id claimed.
        raft_id: u64,
        /// The claiming origin.
        origin: u64,
        /// What the claim conflicts with.
        why: String,
    },
}

impl InboundError {
    /// A short name of the reason, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            InboundError::UnknownModule(_) => "unknown_module",
            InboundError::UnknownType(_) => "unknown_type",
            InboundError::BadIdPayload { .. } => "bad_id_payload",
            InboundError::BadRaftMessage(_) => "undecodable",
            InboundError::Damaged {
                error: IntegrityError::Missing,
                ..
            } => "no_checksum",
            InboundError::Damaged { .. } => "checksum",
            InboundError::OriginConflict { .. } => "origin_conflict",
        }
    }
}

/// The 8-byte payload naming raft id `id` (probe, probe-resp, refresh).
pub(crate) fn id_payload(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Reads an 8-byte raft id payload of a `kind` message.
pub(crate) fn parse_id(kind: &str, bytes: &[u8]) -> Result<u64, InboundError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| InboundError::BadIdPayload {
            kind: kind.to_string(),
            len: bytes.len(),
        })
}
