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
//!
//! An entry whose data is large is stored in two parts: its data in a segment file
//! (`payloads/`, see `payloads`) and, under its key in [`LOG_CF`], a record
//! ([`encode_payload_entry`]): the byte [`PAYLOAD_TAG`], the data's place (segment file,
//! offset, length: 8 big-endian bytes each) and CRC32C (4), then the entry encoded
//! with its data left out. No protobuf encoding of an entry starts with a zero byte
//! (field number 0 does not exist), so the two forms cannot be confused.

use raft::eraftpb::Entry;

use crate::payloads::PayloadRef;
use crate::StorageError;

/// The first byte of a log value whose entry's data is in a segment file.
pub const PAYLOAD_TAG: u8 = 0;
/// Length of a payload record's header: the tag, file, offset, length and CRC32C.
const PAYLOAD_HEADER: usize = 1 + 8 + 8 + 8 + 4;

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

/// The name of a numbered file beside the database (a snapshot's, a segment's): `n` as
/// 20 digits, then `suffix`, so that names sort in number order.
pub(crate) fn numbered_file(n: u64, suffix: &str) -> String {
    format!("{n:020}{suffix}")
}

/// The number in a name of [`numbered_file`]'s form with this `suffix`, or `None` for
/// any other name.
pub(crate) fn numbered_file_index(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks that `data`'s CRC32C is `expected`; the error says both.
pub(crate) fn check_crc32c(data: &[u8], expected: u32) -> Result<(), String> {
    let crc = crc32c::crc32c(data);
    if crc == expected {
        Ok(())
    } else {
        Err(format!("CRC32C {crc:08x}, the record says {expected:08x}"))
    }
}

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

/// Encodes the log value of `entry` whose data is at `place`: the record described in
/// the module docs. `entry.data` is left out, whatever it holds.
pub fn encode_payload_entry(entry: &Entry, place: &PayloadRef) -> Vec<u8> {
    use raft_prost::Message as _;
    let meta = Entry {
        data: Vec::new(),
        entry_type: entry.entry_type,
        term: entry.term,
        index: entry.index,
        context: entry.context.clone(),
        sync_log: entry.sync_log,
    };
    let mut out = Vec::with_capacity(PAYLOAD_HEADER + meta.encoded_len());
    out.push(PAYLOAD_TAG);
    out.extend_from_slice(&place.file.to_be_bytes());
    out.extend_from_slice(&place.offset.to_be_bytes());
    out.extend_from_slice(&place.len.to_be_bytes());
    out.extend_from_slice(&place.crc32c.to_be_bytes());
    meta.encode(&mut out)
        .unwrap_or_else(|_| unreachable!("a Vec grows to take any encoding"));
    out
}

/// Decodes the log value stored under `index`: an entry, and when its data is in a
/// segment file, where (the entry's `data` is then empty). Anything that is not
/// exactly one of the two forms is [`StorageError::Corrupt`] naming the key.
pub fn decode_log_value(
    index: u64,
    bytes: &[u8],
) -> Result<(Entry, Option<PayloadRef>), StorageError> {
    if bytes.first() != Some(&PAYLOAD_TAG) {
        return decode_entry(index, bytes).map(|e| (e, None));
    }
    let (Some(header), Some(rest)) = (bytes.get(..PAYLOAD_HEADER), bytes.get(PAYLOAD_HEADER..))
    else {
        return Err(StorageError::Corrupt {
            key: entry_key_name(index),
            reason: format!(
                "payload record of {} bytes, shorter than its header",
                bytes.len()
            ),
        });
    };
    let u64_at = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let mut crc = [0; 4];
    crc.copy_from_slice(&header[25..29]);
    let place = PayloadRef {
        file: u64_at(1),
        offset: u64_at(9),
        len: u64_at(17),
        crc32c: u32::from_be_bytes(crc),
    };
    let entry = decode_entry(index, rest)?;
    if !entry.data.is_empty() {
        return Err(StorageError::Corrupt {
            key: entry_key_name(index),
            reason: "payload record carries data of its own".to_owned(),
        });
    }
    Ok((entry, Some(place)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn payload_records_round_trip_and_refuse_what_is_not_one() {
        let entry = Entry {
            index: 9,
            term: 4,
            data: vec![7; 100],
            context: b"ctx".to_vec(),
            ..Default::default()
        };
        let place = PayloadRef {
            file: 3,
            offset: 1 << 33,
            len: 100,
            crc32c: 0xfeed_beef,
        };
        let value = encode_payload_entry(&entry, &place);
        assert_eq!(value[0], PAYLOAD_TAG);
        let (back, at) = decode_log_value(9, &value).unwrap();
        assert_eq!(at, Some(place));
        assert_eq!(
            back,
            Entry {
                data: Vec::new(),
                ..entry.clone()
            }
        );
        // An inline entry is itself.
        let inline = raft_prost::Message::encode_to_vec(&entry);
        assert_eq!(decode_log_value(9, &inline).unwrap(), (entry.clone(), None));
        // Short header, wrong index, data inside the record.
        assert!(decode_log_value(9, &value[..20]).is_err());
        assert!(decode_log_value(10, &value).is_err());
        let mut with_data = value[..PAYLOAD_HEADER].to_vec();
        with_data.extend(raft_prost::Message::encode_to_vec(&entry));
        let e = decode_log_value(9, &with_data).unwrap_err().to_string();
        assert!(e.contains("data of its own"), "{e}");
    }

    #[test]
    fn truncated_round_trips_and_rejects_bad_length() {
        assert_eq!(decode_truncated(&encode_truncated((7, 3))), Some((7, 3)));
        assert_eq!(decode_truncated(&[0; 15]), None);
        assert_eq!(decode_truncated(&[0; 17]), None);
    }
}
