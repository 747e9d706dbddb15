//! The on-disk layout: column families and keys.
//!
//! - [`LOG_CF`] holds one rust-protobuf encoded [`raft::eraftpb::Entry`] per key; the
//!   key is the entry's index as 8 big-endian bytes, so key order is log order.
//! - [`STATE_CF`] holds the raft state under fixed keys: [`HARD_STATE_KEY`] (encoded
//!   `HardState`), [`SNAPSHOT_META_KEY`] (encoded `SnapshotMetadata`),
//!   [`SNAPSHOT_DATA_KEY`] (the snapshot's raw data) and [`TRUNCATED_KEY`] (index and
//!   term of the last entry dropped from the log, 2 × 8 big-endian bytes).
//!
//! Every change goes through one `WriteBatch`, so these keys never disagree after a
//! crash.

/// Column family of log entries.
pub const LOG_CF: &str = "raft_log";
/// Column family of hard state, snapshot and truncation point.
pub const STATE_CF: &str = "raft_state";

/// Key of the encoded `HardState` in [`STATE_CF`].
pub const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Key of the encoded `SnapshotMetadata` of the latest snapshot in [`STATE_CF`].
pub const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";
/// Key of the latest snapshot's data in [`STATE_CF`].
pub const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";
/// Key of the truncation point `(index, term)` in [`STATE_CF`].
pub const TRUNCATED_KEY: &[u8] = b"truncated";

/// The key of the entry at `index` in [`LOG_CF`].
pub fn entry_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index an entry key stands for, or `None` when it is not 8 bytes long.
pub(crate) fn entry_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// How a log key is named in errors.
pub(crate) fn entry_key_name(index: u64) -> String {
    format!("{LOG_CF}/{index}")
}

/// How a state key is named in errors.
pub(crate) fn state_key_name(key: &[u8]) -> String {
    format!("{STATE_CF}/{}", String::from_utf8_lossy(key))
}

/// Encodes a truncation point.
pub(crate) fn encode_truncated((index, term): (u64, u64)) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

/// Decodes a truncation point, or `None` when it is not 16 bytes long.
pub(crate) fn decode_truncated(value: &[u8]) -> Option<(u64, u64)> {
    let index: [u8; 8] = value.get(..8)?.try_into().ok()?;
    let term: [u8; 8] = value.get(8..)?.try_into().ok()?;
    Some((u64::from_be_bytes(index), u64::from_be_bytes(term)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_in_index_order() {
        let keys: Vec<_> = [0u64, 1, 255, 256, 1 << 40, u64::MAX]
            .iter()
            .map(|&i| entry_key(i))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(entry_index(&entry_key(42)), Some(42));
        assert_eq!(entry_index(b"short"), None);
    }

    #[test]
    fn truncated_round_trips_and_rejects_bad_length() {
        assert_eq!(decode_truncated(&encode_truncated((7, 3))), Some((7, 3)));
        assert_eq!(decode_truncated(&[0; 15]), None);
        assert_eq!(decode_truncated(&[0; 17]), None);
    }
}
