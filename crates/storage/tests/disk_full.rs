//! A genuinely full disk: the store on a small tmpfs (8 MiB), written until the
//! filesystem is full. The write that does not fit must be an error, not a panic;
//! nothing acknowledged may be lost; once space returns, a reopened store takes writes
//! again.
//!
//! Mounting a tmpfs needs root; where `mount` fails the test is skipped, saying why and
//! counted (`craft_faultfs::temp::skip`), and in CI (`CI=true`) it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use craft_core::testing::hard_state;
use craft_core::LogWrite;
use craft_storage::{RocksLogStore, StorageError, StoreOptions};
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};

/// A tmpfs of `size` mounted at a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a failed test may leave the store open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Runs `f` on a thread of its own and returns its result, failing the test if it
/// takes over a minute: on a full disk an operation must fail, not block.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung for 60 s: on a full disk it must fail, not block"))
}

fn entry(index: u64) -> Entry {
    let mut data = format!("entry {index} ").into_bytes();
    data.resize(4096, (index % 251) as u8);
    Entry {
        index,
        term: 1,
        data,
        ..Default::default()
    }
}

fn append(store: &RocksLogStore, first: u64, last: u64) -> Result<(), StorageError> {
    store.write_batch(LogWrite {
        entries: (first..=last).map(entry).collect(),
        hard_state: Some(hard_state(1, 1, last)),
        must_sync: true,
        ..Default::default()
    })
}

/// Checks the store holds `1..=last`, each entry intact, and returns `last`.
#[track_caller]
fn check(store: &RocksLogStore, acked: u64, failed_last: u64) -> u64 {
    let last = store.last_index().unwrap();
    assert!(
        last == acked || last == failed_last,
        "last index {last}: acknowledged {acked}, failed write up to {failed_last}"
    );
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(1, 1, last)
    );
    let ents = store
        .entries(1, last + 1, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(ents.len() as u64, last);
    for (e, i) in ents.iter().zip(1..) {
        assert_eq!(*e, entry(i), "entry {i}");
    }
    last
}

#[test]
fn a_full_disk_fails_writes_loses_nothing_and_recovers_when_space_returns() {
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(e) => {
            craft_faultfs::temp::skip(&format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    // Room to free later: 2 MiB of ballast.
    let ballast: PathBuf = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 2 << 20]).unwrap();
    let dir = fs.path().join("raft");
    // A stall that never ends fails after 5 s instead of the default 30.
    let options = StoreOptions::default()
        .with_write_buffer_bytes(256 << 10)
        .with_write_stall_timeout(Duration::from_secs(5));
    let store = RocksLogStore::open(&dir, options.clone()).unwrap();

    // 64 KiB a batch until a write fails; 8 MiB holds at most ~128 of them.
    let per = 16u64;
    let (acked, failure) = within("filling the disk", {
        let store = store.clone();
        move || {
            let mut acked = 0u64;
            for _ in 0..1000 {
                match append(&store, acked + 1, acked + per) {
                    Ok(()) => acked += per,
                    Err(e) => return (acked, Some(e)),
                }
            }
            (acked, None)
        }
    });
    let e = failure.expect("an 8 MiB disk must fill up");
    eprintln!(
        "full after {acked} entries ({} KiB acknowledged, {} bytes free): {e}",
        acked * 4,
        fs.free_bytes()
    );
    assert!(
        matches!(
            e,
            StorageError::Rocks { .. } | StorageError::WriteStalled { .. }
        ),
        "{e:?}"
    );
    // A write that hits ENOSPC itself says so; one caught in a stall behind a flush
    // that cannot write fails as stalled (or with the flush's ENOSPC).
    assert!(
        e.to_string().contains("No space left on device")
            || matches!(e, StorageError::WriteStalled { .. }),
        "the error must say the disk is full: {e}"
    );
    assert_eq!(store.last_index().unwrap(), acked, "memory unchanged");
    let failed_last = acked + per;

    // Still full: writes keep failing, and so does a reopen that needs to write.
    let again = within("a write on the full disk", {
        let store = store.clone();
        move || append(&store, acked + 1, acked + per)
    });
    eprintln!("writing again: {again:?}");
    assert!(again.is_err());
    within("closing the store on the full disk", move || drop(store));
    let reopened = within("reopening on the full disk", {
        let (dir, options) = (dir.clone(), options.clone());
        move || RocksLogStore::open(&dir, options)
    });
    match reopened {
        Ok(store) => {
            eprintln!("reopened on the full disk");
            check(&store, acked, failed_last);
        }
        Err(e) => eprintln!("reopen on the full disk fails: {e}"),
    }

    // Space returns: everything acknowledged is there, and writes go on.
    std::fs::remove_file(&ballast).unwrap();
    let store = RocksLogStore::open(&dir, options.clone()).unwrap();
    let last = check(&store, acked, failed_last);
    eprintln!(
        "after freeing 2 MiB: last index {last} (acknowledged {acked}); {} bytes free",
        fs.free_bytes()
    );
    append(&store, last + 1, last + per).unwrap();
    drop(store);
    let store = RocksLogStore::open(&dir, options).unwrap();
    assert_eq!(check(&store, last + per, last + per), last + per);
}
