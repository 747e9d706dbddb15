//! Large entries' data in append-only segment files of their own, beside the database.
//!
//! A block of a megabyte put into RocksDB is written twice (into the WAL, then into a
//! blob file or an SST when the memtable is flushed), copied into a `WriteBatch` and a
//! memtable, and checksummed twice on the way. Instead, the data of an entry of at least
//! [`crate::StoreOptions::payload_min_bytes`] is appended once to the active segment
//! file `payloads/<id>.seg`, and the log keeps a small record in its place (file, offset,
//! length, CRC32C; [`crate::layout::encode_payload_entry`]).
//!
//! Durability is the log's: a synced write first syncs every segment file appended to
//! since the last sync (and the directory, when a file was created), then commits the
//! RocksDB batch that holds the records. After a crash a record names only bytes that
//! were synced before it; bytes appended after the last record (a torn write, or a
//! write whose batch never committed) are never read and go with their file.
//!
//! A segment file goes as a whole once the log is compacted past the highest index
//! ever written into it and that compaction is durable; at open, every file no record
//! names goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::layout::{check_crc32c, numbered_file, numbered_file_index};

/// The directory of segment files inside a store's directory.
pub(crate) const PAYLOADS_DIR: &str = "payloads";

/// A segment file is closed for appends once it holds this many bytes.
const SEGMENT_BYTES: u64 = 32 << 20;

/// Where an entry's data is: a byte range of a segment file and its CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRef {
    /// The segment file's id (its name, `<id>.seg`, as 20 digits).
    pub file: u64,
    /// Offset of the data in the file.
    pub offset: u64,
    /// Length of the data.
    pub len: u64,
    /// CRC32C of the data.
    pub crc32c: u32,
}

fn file_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(numbered_file(id, ".seg"))
}

fn file_id(name: &str) -> Option<u64> {
    numbered_file_index(name, ".seg")
}

#[derive(Debug)]
struct Segment {
    file: File,
    /// Bytes this store has written into it (a failed write's partial bytes past this
    /// are overwritten by the next).
    len: u64,
    /// The highest log index whose data was ever written into it.
    max_index: u64,
}

/// The segment files of one store (see the module docs).
#[derive(Debug)]
pub(crate) struct Payloads {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to; a new one is created at the first append after open
    /// and after a failed write or sync.
    active: Option<u64>,
    /// Segments appended to since their last sync.
    unsynced: BTreeSet<u64>,
    /// A segment was created since the directory was last synced.
    dir_unsynced: bool,
}

impl Payloads {
    /// Opens the segment files under `dir` (created when missing) for reading. Until
    /// [`Payloads::retain_referenced`] has been told the records, nothing is removed.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StorageError> {
        fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mut segments = BTreeMap::new();
        let listing = fs::read_dir(&dir).map_err(|e| file_error(&dir, e))?;
        for item in listing {
            let item = item.map_err(|e| file_error(&dir, e))?;
            let Some(id) = item.file_name().to_str().and_then(file_id) else {
                continue;
            };
            let path = item.path();
            let file = File::open(&path).map_err(|e| file_error(&path, e))?;
            let len = file.metadata().map_err(|e| file_error(&path, e))?.len();
            segments.insert(
                id,
                Segment {
                    file,
                    len,
                    max_index: 0,
                },
            );
        }
        Ok(Self {
            dir,
            segments,
            active: None,
            unsynced: BTreeSet::new(),
            dir_unsynced: false,
        })
    }

    /// Given every record the log holds (index and reference), checks that each names
    /// bytes that exist, learns each file's highest index, and removes the files no
    /// record names.
    pub(crate) fn retain_referenced(
        &mut self,
        records: impl IntoIterator<Item = (u64, PayloadRef)>,
    ) -> Result<(), StorageError> {
        let mut named = BTreeSet::new();
        for (index, r) in records {
            let segment = self
                .segments
                .get_mut(&r.file)
                .ok_or_else(|| missing(&self.dir, index, &r))?;
            if r.offset
                .checked_add(r.len)
                .is_none_or(|end| end > segment.len)
            {
                return Err(StorageError::Corrupt {
                    key: file_path(&self.dir, r.file).display().to_string(),
                    reason: format!(
                        "entry {index} names bytes {}..+{} of a {}-byte file",
                        r.offset, r.len, segment.len
                    ),
                });
            }
            segment.max_index = segment.max_index.max(index);
            named.insert(r.file);
        }
        let unnamed: Vec<u64> = self
            .segments
            .keys()
            .filter(|id| !named.contains(id))
            .copied()
            .collect();
        for id in unnamed {
            self.remove(id);
        }
        Ok(())
    }

    /// Appends the data of the entry at `index`; durable after the next
    /// [`Payloads::sync`].
    pub(crate) fn append(&mut self, index: u64, data: &[u8]) -> Result<PayloadRef, StorageError> {
        let id = self.active_for(data.len() as u64)?;
        let path = file_path(&self.dir, id);
        let Some(segment) = self.segments.get_mut(&id) else {
            return Err(file_error(
                &path,
                std::io::Error::other("active segment vanished"),
            ));
        };
        let offset = segment.len;
        self.unsynced.insert(id);
        if let Err(e) = segment.file.write_all_at(data, offset) {
            // What reached the file past `len` is overwritten by the next append; start
            // a new file anyway, as the device may be failing.
            self.active = None;
            return Err(file_error(&path, e));
        }
        segment.len += data.len() as u64;
        segment.max_index = segment.max_index.max(index);
        Ok(PayloadRef {
            file: id,
            offset,
            len: data.len() as u64,
            crc32c: crc32c::crc32c(data),
        })
    }

    /// The active segment, rotated when `incoming` bytes would take it past
    /// [`SEGMENT_BYTES`].
    fn active_for(&mut self, incoming: u64) -> Result<u64, StorageError> {
        if let Some(id) = self.active {
            match self.segments.get(&id) {
                Some(s) if s.len == 0 || s.len + incoming <= SEGMENT_BYTES => return Ok(id),
                _ => self.active = None,
            }
        }
        let id = self.segments.keys().next_back().map_or(1, |last| last + 1);
        let path = file_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| file_error(&path, e))?;
        self.segments.insert(
            id,
            Segment {
                file,
                len: 0,
                max_index: 0,
            },
        );
        self.dir_unsynced = true;
        self.active = Some(id);
        Ok(id)
    }

    /// Syncs every segment appended to since the last sync, then the directory when a
    /// file was created. After an error, appends go to a new file (an fsync that failed
    /// may have dropped pages that a later one would not report again).
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        while let Some(&id) = self.unsynced.first() {
            if let Some(segment) = self.segments.get(&id) {
                if let Err(e) = segment.file.sync_data() {
                    self.active = None;
                    return Err(file_error(&file_path(&self.dir, id), e));
                }
            }
            self.unsynced.remove(&id);
        }
        if self.dir_unsynced {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| file_error(&self.dir, e))?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Reads the data `r` names for the entry at `index`, checking its checksum.
    pub(crate) fn read(&self, index: u64, r: &PayloadRef) -> Result<Vec<u8>, StorageError> {
        let path = file_path(&self.dir, r.file);
        let segment = self
            .segments
            .get(&r.file)
            .ok_or_else(|| missing(&self.dir, index, r))?;
        let corrupt = |reason: String| StorageError::Corrupt {
            key: path.display().to_string(),
            reason: format!("entry {index}: {reason}"),
        };
        let len = usize::try_from(r.len)
            .ok()
            .filter(|_| {
                r.offset
                    .checked_add(r.len)
                    .is_some_and(|end| end <= segment.len)
            })
            .ok_or_else(|| {
                corrupt(format!(
                    "bytes {}..+{} past the file's end",
                    r.offset, r.len
                ))
            })?;
        let mut data = vec![0; len];
        segment
            .file
            .read_exact_at(&mut data, r.offset)
            .map_err(|e| file_error(&path, e))?;
        check_crc32c(&data, r.crc32c).map_err(corrupt)?;
        Ok(data)
    }

    /// Removes the files whose every entry is at or below `truncated`, the log's
    /// durable truncation point.
    pub(crate) fn remove_through(&mut self, truncated: u64) {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.max_index <= truncated)
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if self.active == Some(id) {
            self.active = None;
        }
        self.unsynced.remove(&id);
        self.segments.remove(&id);
        let path = file_path(&self.dir, id);
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a segment file");
        }
    }

    /// The segment files' ids and sizes, oldest first.
    #[cfg(test)]
    fn files(&self) -> Vec<(u64, u64)> {
        self.segments.iter().map(|(&id, s)| (id, s.len)).collect()
    }
}

fn file_error(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::PayloadFile {
        path: path.to_owned(),
        source,
    }
}

fn missing(dir: &Path, index: u64, r: &PayloadRef) -> StorageError {
    StorageError::Corrupt {
        key: file_path(dir, r.file).display().to_string(),
        reason: format!("entry {index} names a segment file that is not there"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(index: u64, len: usize) -> Vec<u8> {
        let mut d = vec![(index % 251) as u8; len];
        d[..8].copy_from_slice(&index.to_be_bytes());
        d
    }

    #[test]
    fn appends_read_back_across_rotation_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PAYLOADS_DIR);
        let mut p = Payloads::open(path.clone()).unwrap();
        let big = (SEGMENT_BYTES / 3 + 1) as usize;
        let refs: Vec<_> = (1..=4)
            .map(|i| (i, p.append(i, &data(i, big)).unwrap()))
            .collect();
        p.sync().unwrap();
        // Three a third long do not fit in one file.
        assert_eq!(p.files().len(), 2, "{:?}", p.files());
        for (i, r) in &refs {
            assert_eq!(p.read(*i, r).unwrap(), data(*i, big));
        }
        drop(p);
        let mut p = Payloads::open(path).unwrap();
        p.retain_referenced(refs.iter().copied()).unwrap();
        for (i, r) in &refs {
            assert_eq!(p.read(*i, r).unwrap(), data(*i, big));
        }
        // A new file after reopen; never appended into an old one.
        let r = p.append(5, &data(5, 10)).unwrap();
        assert_eq!(r.file, 3);
        assert_eq!(r.offset, 0);
    }

    #[test]
    fn files_go_once_compaction_passes_their_highest_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Payloads::open(dir.path().join(PAYLOADS_DIR)).unwrap();
        let big = (SEGMENT_BYTES / 2) as usize;
        let r1 = p.append(1, &data(1, big)).unwrap();
        let r2 = p.append(2, &data(2, big)).unwrap();
        let r3 = p.append(3, &data(3, big)).unwrap();
        assert_eq!((r1.file, r2.file, r3.file), (1, 1, 2));
        p.remove_through(1);
        assert_eq!(p.files().len(), 2, "file 1 still holds entry 2");
        p.remove_through(2);
        assert_eq!(p.files().iter().map(|f| f.0).collect::<Vec<_>>(), [2]);
        assert!(!file_path(&dir.path().join(PAYLOADS_DIR), 1).exists());
        assert!(p.read(1, &r1).is_err());
        assert_eq!(p.read(3, &r3).unwrap(), data(3, big));
    }

    #[test]
    fn unnamed_files_go_at_open_and_bad_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PAYLOADS_DIR);
        let mut p = Payloads::open(path.clone()).unwrap();
        let r1 = p.append(1, &data(1, 100)).unwrap();
        p.active = None; // as after a reopen
        let r2 = p.append(2, &data(2, 100)).unwrap();
        p.sync().unwrap();
        drop(p);

        let mut p = Payloads::open(path.clone()).unwrap();
        p.retain_referenced([(2, r2)]).unwrap();
        assert_eq!(p.files(), [(r2.file, 100)]);
        assert!(p.read(1, &r1).is_err(), "its file is gone");

        let mut p = Payloads::open(path.clone()).unwrap();
        let past_end = PayloadRef { len: 101, ..r2 };
        assert!(matches!(
            p.retain_referenced([(2, past_end)]),
            Err(StorageError::Corrupt { .. })
        ));
        let bad_crc = PayloadRef {
            crc32c: r2.crc32c ^ 1,
            ..r2
        };
        let e = p.read(2, &bad_crc).unwrap_err().to_string();
        assert!(e.contains("CRC32C"), "{e}");
        let e = p.read(2, &past_end).unwrap_err().to_string();
        assert!(e.contains("past the file's end"), "{e}");
    }

    #[test]
    fn names_parse_only_in_their_own_form() {
        assert_eq!(file_id("00000000000000000007.seg"), Some(7));
        assert_eq!(file_id("7.seg"), None);
        assert_eq!(file_id("00000000000000000007.snap"), None);
        assert_eq!(file_id("0000000000000000000x.seg"), None);
    }
}
