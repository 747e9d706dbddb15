//! The log's shape ([`Meta`]) and the records it is read back from at open.

use super::*;

/// What the store knows about the log's shape, always equal to what is on disk.
#[derive(Debug, Clone, Default)]
pub(super) struct Meta {
    pub(super) hard_state: HardState,
    pub(super) snapshot_meta: SnapshotMetadata,
    /// Index and term of the last entry dropped from the log.
    pub(super) truncated: (u64, u64),
    /// Index of the last entry, or `truncated.0` when the log is empty.
    pub(super) last_index: u64,
}

impl Meta {
    pub(super) fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }
}

/// Reads and decodes the state record at `key`, if there is one.
pub(super) fn get_state<M: raft_prost::Message + Default>(
    db: &DB,
    key: &'static [u8],
) -> Result<Option<M>, StorageError> {
    let state = cf(db, STATE_CF)?;
    let value = db
        .get_pinned_cf(state, key)
        .map_err(|source| StorageError::Rocks {
            context: format!("read {}", state_key_name(key)).into(),
            source,
        })?;
    value
        .map(|v| decode(&v, || state_key_name(key)))
        .transpose()
}

/// The record of a snapshot whose data is in a file, if there is one.
pub(super) fn snapshot_record(db: &DB) -> Result<Option<StagedSnapshot>, StorageError> {
    let value = db
        .get_pinned_cf(cf(db, STATE_CF)?, SNAPSHOT_FILE_KEY)
        .map_err(StorageError::rocks("read the snapshot file record"))?;
    value
        .map(|v| {
            snapshot_files::decode_record(&v).ok_or_else(|| StorageError::Corrupt {
                key: state_key_name(SNAPSHOT_FILE_KEY),
                reason: format!("expected 20 bytes, found {}", v.len()),
            })
        })
        .transpose()
}

/// Reads the log's shape from disk, checking the log's ends agree with the truncation
/// point.
pub(super) fn load_meta(db: &DB) -> Result<Meta, StorageError> {
    let hard_state = get_state::<HardState>(db, HARD_STATE_KEY)?.unwrap_or_default();
    let snapshot_meta = get_state::<SnapshotMetadata>(db, SNAPSHOT_META_KEY)?.unwrap_or_default();
    let state = cf(db, STATE_CF)?;
    let truncated = match db
        .get_pinned_cf(state, TRUNCATED_KEY)
        .map_err(StorageError::rocks("read the truncation point"))?
    {
        None => (0, 0),
        Some(v) => decode_truncated(&v).ok_or_else(|| StorageError::Corrupt {
            key: state_key_name(TRUNCATED_KEY),
            reason: format!("expected 16 bytes, found {}", v.len()),
        })?,
    };

    let log = cf(db, LOG_CF)?;
    let mut it = db.raw_iterator_cf(log);
    let key_index = |key: &[u8]| {
        entry_index(key).ok_or_else(|| StorageError::Corrupt {
            key: format!("{LOG_CF}/{key:02x?}"),
            reason: format!("log key is {} bytes, expected 8", key.len()),
        })
    };
    // Each seek resets the iterator's status: check it after each, or a failed read
    // of the first entry would look like an empty log.
    it.seek_to_first();
    it.status()
        .map_err(StorageError::rocks("find the first entry of the log"))?;
    let first = it.key().map(key_index).transpose()?;
    it.seek_to_last();
    it.status()
        .map_err(StorageError::rocks("find the last entry of the log"))?;
    let last = it.key().map(key_index).transpose()?;

    let last_index = match (first, last) {
        (Some(first), Some(last)) => {
            if first != truncated.0 + 1 {
                return Err(StorageError::Corrupt {
                    key: entry_key_name(first),
                    reason: format!(
                        "log starts at {first} but the truncation point is {}",
                        truncated.0
                    ),
                });
            }
            last
        }
        (None, None) => truncated.0,
        (first, last) => {
            return Err(StorageError::Corrupt {
                key: LOG_CF.to_owned(),
                reason: format!("the log's first entry is {first:?} but its last {last:?}"),
            })
        }
    };
    Ok(Meta {
        hard_state,
        snapshot_meta,
        truncated,
        last_index,
    })
}

/// Every record of a large entry's data in the log: its index and where the data is.
pub(super) fn payload_records(db: &DB) -> Result<Vec<(u64, PayloadRef)>, StorageError> {
    let mut records = Vec::new();
    let mut it = db.raw_iterator_cf(cf(db, LOG_CF)?);
    it.seek_to_first();
    while let Some((key, value)) = it.item() {
        if value.first() == Some(&PAYLOAD_TAG) {
            let index = entry_index(key).ok_or_else(|| StorageError::Corrupt {
                key: format!("{LOG_CF}/{key:02x?}"),
                reason: format!("log key is {} bytes, expected 8", key.len()),
            })?;
            if let (_, Some(place)) = decode_log_value(index, value)? {
                records.push((index, place));
            }
        }
        it.next();
    }
    it.status().map_err(StorageError::rocks(
        "read the log's records of segment files",
    ))?;
    Ok(records)
}
