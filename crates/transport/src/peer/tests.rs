#![allow(clippy::unwrap_used)]

use super::lane::framed_len;
use super::*;
use cita_proto::peer::RaftBatch;
use prost::Message as _;

#[test]
fn messages_with_entries_and_every_append_go_on_the_bulk_lane() {
    let mut append = crate::tests::append();
    assert!(is_bulk(&append));
    append.entries.clear();
    assert!(
        is_bulk(&append),
        "an empty append keeps its place among appends"
    );
    for kind in [
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestPreVoteResponse,
        MessageType::MsgReadIndex,
        MessageType::MsgReadIndexResp,
        MessageType::MsgTimeoutNow,
    ] {
        let mut m = Message::default();
        m.set_msg_type(kind);
        assert!(!is_bulk(&m), "{kind:?}");
    }
    let mut propose = Message::default();
    propose.set_msg_type(MessageType::MsgPropose);
    propose.entries = crate::tests::append().entries;
    assert!(is_bulk(&propose));
}

#[test]
fn a_batch_is_no_larger_than_its_framed_messages_say() {
    for len in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20, 5 << 20] {
        let batch = RaftBatch {
            from: u64::MAX,
            messages: vec![vec![0; len].into()],
        };
        // The `from` field takes at most 11 bytes; the headroom covers it.
        assert!(batch.encoded_len() <= framed_len(len) + 11, "{len}");
        assert!(batch.encoded_len() >= framed_len(len), "{len}");
    }
}
