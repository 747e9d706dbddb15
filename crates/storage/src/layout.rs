//! The on-disk layout: column families and keys.
//!
//! - [`LOG_CF`] holds one protobuf encoded [`raft::eraftpb::Entry`] per key; the
//!   key is the entry's index as 8 big-endian bytes, so key order is log order.
//! - [`STATE_CF`] holds the raft state under fixed keys: [`HARD_STATE_KEY`] (encoded
//!   `HardState`), [`SNAPSHOT_META_KEY`] (encoded `SnapshotMetadata`),
//!   [`SNAPSHOT_DATA_KEY`] (the snapshot's raw data), or instead
//!   [`SNAPSHOT_FILE_KEY`] (index, length and CRC32C of the data, held in the file
//!   `snapshots/<index>.snap` beside the database; see `snapshot_files`), and
//!   [`TRUNCATED_KEY`] (index and term of the last entry dropped from the log, 2 × 8
//!   big-endian bytes).
//!
//! Every change goes through one `WriteBatch`, so these keys never disagree after a
//! crash.

use raft::eraftpb::Entry;

use crate::StorageError;

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
/// Key of the record of a snapshot whose data is in a file of its own, in [`STATE_CF`]:
/// index, length (8 big-endian bytes each) and CRC32C (4). When it is there and names
/// the latest snapshot's index, the data is in that file and [`SNAPSHOT_DATA_KEY`] is
/// absent.
pub const SNAPSHOT_FILE_KEY: &[u8] = b"snapshot_file";
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
pub fn entry_key_name(index: u64) -> String {
    format!("{LOG_CF}/{index}")
}

/// How a state key is named in errors.
pub fn state_key_name(key: &[u8]) -> String {
    format!("{STATE_CF}/{}", String::from_utf8_lossy(key))
}

/// Encodes a truncation point.
pub fn encode_truncated((index, term): (u64, u64)) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

/// Decodes a truncation point, or `None` when it is not 16 bytes long.
pub fn decode_truncated(value: &[u8]) -> Option<(u64, u64)> {
    let index: [u8; 8] = value.get(..8)?.try_into().ok()?;
    let term: [u8; 8] = value.get(8..)?.try_into().ok()?;
    Some((u64::from_be_bytes(index), u64::from_be_bytes(term)))
}

/// Decodes a value stored under the key `key()` names: it must decode with prost's limits
/// and its encoding must be exactly as long as these bytes (prost skips unknown fields,
/// so a shorter one means bytes that merely happen to parse); anything else is
/// [`StorageError::Corrupt`]. A flip inside a field's value still decodes to a
/// well-formed record: RocksDB's block checksums catch damage on disk, this catches what
/// gets past them.
pub fn decode<M: raft_prost::Message + Default>(
    bytes: &[u8],
    key: impl FnOnce() -> String,
) -> Result<M, StorageError> {
    let reason = match M::decode(bytes) {
        // What this store writes re-encodes to exactly its own bytes. prost skips
        // unknown fields, so a value that decodes to something shorter holds fields this
        // store never writes: bytes that merely happen to parse.
        Ok(msg) if msg.encoded_len() != bytes.len() => {
            "value has fields this store never writes".to_owned()
        }
        Ok(msg) => return Ok(msg),
        Err(e) => e.to_string(),
    };
    Err(StorageError::Corrupt { key: key(), reason })
}

/// Decodes the entry stored under `index`: it must pass [`decode`], claim that index and have an entry type raft knows; anything else is
/// [`StorageError::Corrupt`] naming the key.
pub fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = decode(bytes, || entry_key_name(index))?;
    if entry.index != index {
        return Err(StorageError::Corrupt {
            key: entry_key_name(index),
            reason: format!("entry claims index {}", entry.index),
        });
    }
    // raft-rs's accessors panic on an entry type they do not know; prost keeps any.
    if raft::eraftpb::EntryType::from_i32(entry.entry_type).is_none() {
        return Err(StorageError::Corrupt {
            key: entry_key_name(index),
            reason: format!("unknown entry type {}", entry.entry_type),
        });
    }
    Ok(entry)
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
