//! End-to-end integrity of raft messages between our nodes: a CRC32C of the encoded
//! message travels behind it, as protobuf field [`TRAILER_FIELD`] (bytes, 4 long).
//!
//! Raft trusts that bytes arrive intact: a flipped byte inside an entry still decodes,
//! and a follower would append and commit data the leader never proposed. TCP's 16-bit
//! checksum misses such flips often enough on a faulty link, and the development network
//! flips them on purpose. With the trailer, a damaged message is dropped before raft sees
//! it, and raft sends it again.
//!
//! The trailer is an unknown field to every raft implementation of this schema, so the
//! existing service (and any protobuf decoder) skips it: mixed clusters keep working
//! without negotiation. Which peers must send it is the receiver's policy: the CITA
//! adapter requires it from an origin once that origin has sent one verified message
//! (the existing service never does, and is never required to), the peer transport
//! requires it always (all its members are ours).

use bytes::Bytes;
use raft::eraftpb::Message;

/// Field number of the trailer. raft's `Message` has fields 1 to 17.
pub const TRAILER_FIELD: u32 = 2047;

/// The trailer's tag (field 2047, length-delimited) as a varint, then the length 4.
const TRAILER_HEAD: [u8; 3] = [0xfa, 0x7f, 0x04];
/// Bytes the trailer adds to a message.
pub const TRAILER_LEN: usize = TRAILER_HEAD.len() + 4;

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntegrityError {
    /// The trailer is there and the bytes before it do not match it.
    #[error("checksum mismatch: the message was damaged in transit")]
    Mismatch,
    /// No trailer, from a sender that must send one.
    #[error("no checksum trailer")]
    Missing,
    /// The bytes do not decode.
    #[error("undecodable raft message: {0}")]
    Decode(#[from] raft_prost::DecodeError),
}

/// Whether a decoded message carried a matching trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// It did, and it matched.
    Verified,
    /// It carried none (a sender that does not add one, or bytes that only look like a
    /// message with a damaged trailer: see [`decode_checked`]).
    Unverified,
}

/// Encodes `msg` with its trailer.
pub fn encode_checked(msg: &Message) -> Vec<u8> {
    let mut bytes = crate::encode_raft_message(msg);
    let crc = crc32c::crc32c(&bytes);
    bytes.reserve_exact(TRAILER_LEN);
    bytes.extend_from_slice(&TRAILER_HEAD);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes a message that may carry a trailer. A matching trailer gives
/// [`Integrity::Verified`]. Without one, or when the trailer does not match, the bytes
/// are decoded as they are and reported [`Integrity::Unverified`] when `required` is
/// false (a sender that sends no trailer may end a message with bytes that look like
/// one); when `required` is true a missing trailer is [`IntegrityError::Missing`] and a
/// mismatch [`IntegrityError::Mismatch`].
///
/// The message is decoded from slices of `bytes`, which are not copied.
pub fn decode_checked(
    bytes: Bytes,
    required: bool,
) -> Result<(Message, Integrity), IntegrityError> {
    let split = bytes.len().checked_sub(TRAILER_LEN);
    if let Some(at) = split.filter(|&at| bytes[at..at + TRAILER_HEAD.len()] == TRAILER_HEAD) {
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[at + TRAILER_HEAD.len()..]);
        if crc32c::crc32c(&bytes[..at]) == u32::from_le_bytes(crc) {
            // Decoded from the shared buffer, the entries' data are its only copies
            // (prost's limits as in `decode_raft_message`).
            let body = bytes.slice(..at);
            return Ok((raft_prost::Message::decode(body)?, Integrity::Verified));
        }
        if required {
            return Err(IntegrityError::Mismatch);
        }
    } else if required {
        return Err(IntegrityError::Missing);
    }
    Ok((crate::decode_raft_message(&bytes)?, Integrity::Unverified))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tests::append;

    #[test]
    fn checked_messages_round_trip_and_plain_decoders_skip_the_trailer() {
        let bytes = encode_checked(&append());
        assert_eq!(
            decode_checked(bytes.clone().into(), true).unwrap(),
            (append(), Integrity::Verified)
        );
        // What the existing service (any prost or rust-protobuf decoder) sees: the same
        // message, the trailer skipped as an unknown field.
        assert_eq!(crate::decode_raft_message(&bytes).unwrap(), append());
        // A message without one, from a sender that never adds it.
        let plain = crate::encode_raft_message(&append());
        assert_eq!(
            decode_checked(plain.clone().into(), false).unwrap(),
            (append(), Integrity::Unverified)
        );
        assert_eq!(
            decode_checked(plain.clone().into(), true).unwrap_err(),
            IntegrityError::Missing
        );
    }

    #[test]
    fn every_single_flipped_bit_is_caught_when_required() {
        let bytes = encode_checked(&append());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                // Either refused, or (a flip that turned the trailer into something
                // else) refused as missing: never a different message accepted.
                assert!(
                    decode_checked(damaged.clone().into(), true).is_err(),
                    "flip of bit {bit} in byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn without_the_trailer_a_flip_inside_an_entry_goes_unnoticed() {
        // Why the trailer exists: the damaged plain message still decodes, to other data.
        let mut plain = crate::encode_raft_message(&append());
        let at = plain.windows(3).position(|w| w == b"blk").unwrap();
        plain[at] ^= 0x01;
        let damaged = crate::decode_raft_message(&plain).unwrap();
        assert_ne!(damaged.entries[0].data, append().entries[0].data);
    }
}
