//! Wire compatibility with CITA-Cloud: each message decodes from bytes written out by hand
//! from the contract's field numbers and types, and encodes back to exactly those bytes.
//!
//! A key byte is `field_number << 3 | wire_type`: wire type 0 is a varint, 2 is
//! length-delimited (bytes, strings, messages). Proto3 leaves fields at their default value
//! out of the encoding.

use cita_proto::{
    common::{ConsensusConfiguration, Proposal, ProposalWithProof, StatusCode},
    network::{NetworkMsg, RegisterInfo},
};
use prost::{DecodeError, Message};

/// Concatenates the pieces of a hand-written encoding.
fn concat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

/// Asserts that `wire` decodes to `expected` and that `expected` encodes to `wire`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(
    wire: &[u8],
    expected: &M,
) -> Result<(), DecodeError> {
    assert_eq!(&M::decode(wire)?, expected, "decoding {wire:02x?}");
    assert_eq!(expected.encode_to_vec(), wire, "encoding {expected:?}");
    Ok(())
}

/// A 20-byte node address whose bytes all equal `byte`.
fn address(byte: u8) -> Vec<u8> {
    vec![byte; 20]
}

#[test]
fn consensus_configuration() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x08, 0x01], // height = 1
        &[0x10, 0x03], // block_interval = 3
        &[0x1a, 0x14], // validators[0]: 20 bytes
        &address(0xaa),
        &[0x1a, 0x14], // validators[1]: 20 bytes
        &address(0xbb),
    ]);
    let config = ConsensusConfiguration::decode(wire.as_slice())?;
    assert_eq!(config.height, 1);
    assert_eq!(config.block_interval, 3);
    assert_eq!(config.validators, vec![address(0xaa), address(0xbb)]);
    assert_wire(&wire, &config)
}

#[test]
fn consensus_configuration_with_multi_byte_varints() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x08, 0xac, 0x02], // height = 300
        &[0x10, 0x80, 0x01], // block_interval = 128
    ]);
    let expected = ConsensusConfiguration {
        height: 300,
        block_interval: 128,
        validators: Vec::new(),
    };
    assert_wire(&wire, &expected)
}

#[test]
fn network_msg() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x0a, 0x09], // module: 9 bytes
        b"consensus",
        &[0x12, 0x04], // type: 4 bytes
        b"raft",
        &[0x18, 0x07], // origin = 7
        &[0x22, 0x03], // msg: 3 bytes
        &[0x01, 0x02, 0x03],
    ]);
    let msg = NetworkMsg::decode(wire.as_slice())?;
    assert_eq!(msg.module, "consensus");
    assert_eq!(msg.r#type, "raft");
    assert_eq!(msg.origin, 7);
    assert_eq!(msg.msg[..], [0x01, 0x02, 0x03]);
    assert_wire(&wire, &msg)
}

#[test]
fn network_msg_probe_with_big_endian_raft_id() -> Result<(), DecodeError> {
    let raft_id: u64 = 0x0102_0304_0506_0708;
    let wire = concat(&[
        &[0x0a, 0x09],
        b"consensus",
        &[0x12, 0x05],
        b"probe",
        &[0x22, 0x08], // msg: the raft id, 8 bytes big-endian; origin 0 is left out
        &raft_id.to_be_bytes(),
    ]);
    let expected = NetworkMsg {
        module: "consensus".to_owned(),
        r#type: "probe".to_owned(),
        origin: 0,
        msg: raft_id.to_be_bytes().to_vec().into(),
    };
    assert_wire(&wire, &expected)
}

#[test]
fn proposal() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x08, 0x05], // height = 5
        &[0x12, 0x05], // data: 5 bytes
        b"block",
    ]);
    let expected = Proposal {
        height: 5,
        data: b"block".to_vec().into(),
    };
    assert_wire(&wire, &expected)
}

#[test]
fn proposal_with_proof() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x0a, 0x09], // proposal: a 9-byte message
        &[0x08, 0x05, 0x12, 0x05],
        b"block",
        &[0x12, 0x02], // proof: 2 bytes
        &[0xde, 0xad],
    ]);
    let expected = ProposalWithProof {
        proposal: Some(Proposal {
            height: 5,
            data: b"block".to_vec().into(),
        }),
        proof: vec![0xde, 0xad],
    };
    assert_wire(&wire, &expected)
}

#[test]
fn commit_block_ping_has_max_height_and_empty_data_and_proof() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x0a, 0x0b], // proposal: an 11-byte message
        &[0x08],       // height = u64::MAX: ten varint bytes
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    ]);
    let expected = ProposalWithProof {
        proposal: Some(Proposal {
            height: u64::MAX,
            data: Default::default(),
        }),
        proof: Vec::new(),
    };
    assert_wire(&wire, &expected)
}

#[test]
fn status_code() -> Result<(), DecodeError> {
    // Success is the default value, so it encodes to nothing at all.
    assert_wire(&[], &StatusCode::ok())?;
    assert!(StatusCode::decode(&[][..])?.is_ok());
    // code = 405: 0x95 0x03 as a varint.
    let error = StatusCode::decode(&[0x08, 0x95, 0x03][..])?;
    assert_eq!(error.code, 405);
    assert!(!error.is_ok());
    assert_wire(&[0x08, 0x95, 0x03], &StatusCode::error(405))
}

#[test]
fn register_info() -> Result<(), DecodeError> {
    let wire = concat(&[
        &[0x0a, 0x09], // module_name: 9 bytes
        b"consensus",
        &[0x12, 0x09], // hostname: 9 bytes
        b"127.0.0.1",
        &[0x1a, 0x05], // port: 5 bytes (a string, not a number)
        b"50001",
    ]);
    let info = RegisterInfo::decode(wire.as_slice())?;
    assert_eq!(info.module_name, "consensus");
    assert_eq!(info.hostname, "127.0.0.1");
    assert_eq!(info.port, "50001");
    assert_wire(&wire, &info)
}
