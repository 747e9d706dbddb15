//! Local snapshots' data in files of their own, beside the database.
//!
//! A state machine's snapshot can be the whole state: megabytes. Written into the same
//! `WriteBatch` as the log, it would go through RocksDB's WAL (and its fsync) and
//! memtable on the raft task, and every proposal would wait behind it. Instead the
//! driver's snapshot task hands the bytes to [`FileStager`], which writes
//! `snapshots/<index>.snap` and syncs it there; the next Ready's batch only records it
//! under [`crate::layout::SNAPSHOT_FILE_KEY`] (index, length, CRC32C).
//!
//! A file is removed once a newer snapshot's record is durable (so a power loss that
//! drops an unsynced record still finds the file the previous record names), and at
//! open every file but the recorded one goes (staged but never recorded, or left over).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use craft_core::{SnapshotStager, StagedSnapshot};

use crate::error::StorageError;
use crate::layout::{check_crc32c, numbered_file, numbered_file_index};

/// Bytes written between two syncs of a snapshot file.
const SYNC_CHUNK: usize = 256 << 10;

/// The directory of snapshot files inside a store's directory.
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";

/// The file that holds the data of the snapshot at `index`.
pub(crate) fn file_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(numbered_file(index, ".snap"))
}

/// The index a snapshot file's name gives, or `None` for any other name.
fn file_index(name: &str) -> Option<u64> {
    numbered_file_index(name, ".snap")
}

/// Encodes a staged snapshot's record: index, length (8 bytes each) and CRC32C (4),
/// big-endian.
pub(crate) fn encode_record(s: &StagedSnapshot) -> [u8; 20] {
    let mut out = [0; 20];
    out[..8].copy_from_slice(&s.index.to_be_bytes());
    out[8..16].copy_from_slice(&s.len.to_be_bytes());
    out[16..].copy_from_slice(&s.crc32c.to_be_bytes());
    out
}

/// Decodes a record, or `None` when it is not 20 bytes long.
pub(crate) fn decode_record(v: &[u8]) -> Option<StagedSnapshot> {
    if v.len() != 20 {
        return None;
    }
    let u64_at = |at: usize| v[at..at + 8].try_into().ok().map(u64::from_be_bytes);
    Some(StagedSnapshot {
        index: u64_at(0)?,
        len: u64_at(8)?,
        crc32c: u32::from_be_bytes(v[16..].try_into().ok()?),
    })
}

fn file_error(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::SnapshotFile {
        path: path.to_owned(),
        source,
    }
}

/// Writes snapshot data into the store's snapshot directory (see the module docs).
#[derive(Debug, Clone)]
pub struct FileStager {
    dir: PathBuf,
}

impl FileStager {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Writes and syncs the file of the snapshot at `index`: a temporary file first,
    /// then renamed, then the directory synced, so the file is either absent or whole.
    pub fn write(&self, index: u64, data: &[u8]) -> Result<StagedSnapshot, StorageError> {
        let path = file_path(&self.dir, index);
        let tmp = path.with_extension("snap.tmp");
        let written = File::create(&tmp)
            .and_then(|mut f| {
                // A chunk at a time, each synced: one flush of the whole state would hold
                // the disk (and, on ext4, the journal commit that the log's own small
                // synced writes wait for) for as long as it takes.
                for chunk in data.chunks(SYNC_CHUNK) {
                    f.write_all(chunk)?;
                    f.sync_data()?;
                }
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(file_error(&path, e));
        }
        Ok(StagedSnapshot {
            index,
            len: data.len() as u64,
            crc32c: crc32c::crc32c(data),
        })
    }
}

impl SnapshotStager for FileStager {
    fn stage(&self, index: u64, data: &[u8]) -> raft::Result<StagedSnapshot> {
        Ok(self.write(index, data)?)
    }
}

/// Reads the data a record names, checking its length and checksum.
pub(crate) fn read(dir: &Path, record: &StagedSnapshot) -> Result<Vec<u8>, StorageError> {
    let path = file_path(dir, record.index);
    let data = fs::read(&path).map_err(|e| file_error(&path, e))?;
    let corrupt = |reason: String| StorageError::Corrupt {
        key: path.display().to_string(),
        reason,
    };
    if data.len() as u64 != record.len {
        return Err(corrupt(format!(
            "{} bytes, the record says {}",
            data.len(),
            record.len
        )));
    }
    check_crc32c(&data, record.crc32c).map_err(corrupt)?;
    Ok(data)
}

/// Whether the file a record names is there with the recorded length (cheap: no read).
pub(crate) fn check_present(dir: &Path, record: &StagedSnapshot) -> Result<(), StorageError> {
    let path = file_path(dir, record.index);
    let len = fs::metadata(&path).map_err(|e| file_error(&path, e))?.len();
    if len != record.len {
        return Err(StorageError::Corrupt {
            key: path.display().to_string(),
            reason: format!("{len} bytes, the staged snapshot says {}", record.len),
        });
    }
    Ok(())
}

/// Removes the snapshot files (and leftover temporary files) that `keep` rejects.
/// Failures are logged, not returned: a file left behind costs disk, not correctness.
pub(crate) fn remove_where(dir: &Path, mut remove: impl FnMut(u64) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = match file_index(&name) {
            Some(index) => remove(index),
            None => name.ends_with(".snap.tmp"),
        };
        if stale {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an old snapshot file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_names_parse() {
        let s = StagedSnapshot {
            index: 42,
            len: 7,
            crc32c: 0xdead_beef,
        };
        assert_eq!(decode_record(&encode_record(&s)), Some(s));
        assert_eq!(decode_record(&[0; 19]), None);
        assert_eq!(file_index("00000000000000000042.snap"), Some(42));
        assert_eq!(file_index("42.snap"), None);
        assert_eq!(file_index("00000000000000000042.snap.tmp"), None);
    }

    #[test]
    fn staged_files_read_back_checked_and_are_removed_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let stager = FileStager::new(dir.path().to_owned());
        let a = stager.write(10, b"state after ten").unwrap();
        let b = stager.write(20, b"state after twenty").unwrap();
        assert_eq!(read(dir.path(), &a).unwrap(), b"state after ten");
        check_present(dir.path(), &b).unwrap();

        // A flipped byte, or a file shorter than its record: Corrupt, naming the file.
        let path = file_path(dir.path(), 10);
        fs::write(&path, b"state after tem").unwrap();
        let err = read(dir.path(), &a).unwrap_err().to_string();
        assert!(
            err.contains("00000000000000000010.snap") && err.contains("CRC32C"),
            "{err}"
        );
        fs::write(&path, b"short").unwrap();
        assert!(check_present(dir.path(), &a).is_err());

        fs::write(dir.path().join("00000000000000000030.snap.tmp"), b"torn").unwrap();
        remove_where(dir.path(), |i| i < 20);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["00000000000000000020.snap"]);
    }
}
