//! Crash safety: a writer process is SIGKILLed at random points while appending with
//! sync on; every write it acknowledged must be there, intact, when the store reopens.
//!
//! The test re-executes its own binary as the writer: `crash_writer_child_process`
//! does nothing unless [`WRITER_ENV`] names a store directory. A process kill keeps
//! what reached the OS, so this pins down atomicity and recovery (torn batches, range
//! deletes, reopen), not power-loss durability, which rests on fsync.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use craft_core::testing::hard_state;
use craft_core::{make_snapshot, voters, LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Set to a store directory, it turns `crash_writer_child_process` into the writer.
const WRITER_ENV: &str = "CRAFT_STORAGE_CRASH_WRITER_DIR";
/// Set to a number, it fixes the seed of `acked_writes_survive_sigkill`.
const SEED_ENV: &str = "CRAFT_STORAGE_CRASH_SEED";

/// About half of the writer's entries (those of 80 bytes or more) keep their data in
/// segment files, the rest in RocksDB: a crash must keep both, and their records.
fn options() -> StoreOptions {
    StoreOptions::default().with_payload_min_bytes(80)
}

/// The entry the writer puts at `index` in `term`; its size varies with the index.
fn crash_entry(index: u64, term: u64) -> Entry {
    let mut data = format!("{index}:{term}:").into_bytes();
    data.resize(data.len() + 32 + (index % 97) as usize, (index % 251) as u8);
    Entry {
        index,
        term,
        data,
        ..Default::default()
    }
}

/// The writer: appends synced batches forever, printing `acked LAST TERM` after each
/// write returns. Every tenth batch starts a new term and overwrites the last two
/// entries; every 25th is followed by a snapshot that compacts the log.
fn run_writer(dir: &Path) {
    let store = RocksLogStore::open(dir, options()).unwrap();
    let mut last = store.last_index().unwrap();
    let mut term = store.initial_state().unwrap().hard_state.term.max(1);
    let mut out = std::io::stdout().lock();
    for round in 1u64.. {
        let first = if round % 10 == 0 && last > store.first_index().unwrap() {
            term += 1;
            last - 1
        } else {
            last + 1
        };
        let n = 3 + round % 5;
        last = first + n - 1;
        store
            .write(LogWrite {
                entries: (first..=last).map(|i| crash_entry(i, term)).collect(),
                hard_state: Some(hard_state(term, 1, last)),
                must_sync: true,
                ..Default::default()
            })
            .unwrap();
        writeln!(out, "acked {last} {term}").unwrap();
        out.flush().unwrap();
        if round % 25 == 0 && last > 20 {
            let index = last - 5;
            let snap = make_snapshot(
                index,
                store.term(index).unwrap(),
                voters([1]),
                index.to_be_bytes().to_vec(),
            );
            store.save_snapshot(snap, last - 15).unwrap();
        }
    }
}

#[test]
fn crash_writer_child_process() {
    // Only does anything when acked_writes_survive_sigkill runs this binary as its
    // writer.
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        run_writer(Path::new(&dir));
    }
}

/// Checks the reopened store against the last write the writer acknowledged.
fn check_store(dir: &Path, acked_last: u64, acked_term: u64, round: usize) {
    let ctx = format!("round {round}, acked {acked_last} in term {acked_term}");
    let store =
        RocksLogStore::open(dir, options()).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    let hs = store.initial_state().unwrap().hard_state;

    // Each write sets commit to its last index in the same batch.
    assert_eq!(hs.commit, last, "{ctx}: commit must be the last index");
    assert!(
        last >= acked_last,
        "{ctx}: last index {last} lost acked entries"
    );
    if last == acked_last {
        assert_eq!(
            hs,
            hard_state(acked_term, 1, acked_last),
            "{ctx}: hard state"
        );
    } else {
        // The write in flight at the kill landed whole.
        assert!(
            hs.term >= acked_term,
            "{ctx}: term went back to {}",
            hs.term
        );
    }
    assert_eq!(
        store.term(last).unwrap(),
        hs.term,
        "{ctx}: term of last entry"
    );

    let truncated_term = store
        .term(first - 1)
        .unwrap_or_else(|e| panic!("{ctx}: term({}) failed: {e}", first - 1));
    let snap = store.latest_snapshot().unwrap();
    assert!(
        snap.get_metadata().index + 1 >= first,
        "{ctx}: snapshot behind the log start"
    );
    let ents = store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap_or_else(|e| panic!("{ctx}: entries({first}, {}) failed: {e}", last + 1));
    assert_eq!(ents.len() as u64, last + 1 - first, "{ctx}: entry count");
    let mut prev_term = truncated_term;
    for (e, index) in ents.iter().zip(first..) {
        assert_eq!(
            e,
            &crash_entry(index, e.term),
            "{ctx}: entry {index} damaged"
        );
        assert!(e.term >= prev_term, "{ctx}: term goes down at {index}");
        prev_term = e.term;
        // Entries the kill could not have overwritten carry acked terms.
        if index + 1 < acked_last {
            assert!(e.term <= acked_term, "{ctx}: entry {index} from the future");
        }
    }
    if acked_last >= first && last == acked_last {
        assert_eq!(
            store.term(acked_last).unwrap(),
            acked_term,
            "{ctx}: acked entry's term"
        );
    }
}

#[test]
fn acked_writes_survive_sigkill() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash test seed {seed} (set {SEED_ENV} to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut total_acked = 0;

    for round in 0..10 {
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("acked ") {
                    let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
                    if tx
                        .send((parts.next().unwrap(), parts.next().unwrap()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });

        let kill_after = rng.random_range(1..=300);
        let mut acked = None;
        for _ in 0..kill_after {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(ack) => acked = Some(ack),
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "round {round}: writer stopped acknowledging ({e:?}): {:?}",
                        child.wait()
                    );
                }
            }
        }
        // Let the next write get somewhere before the kill.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        // Acks already in the pipe when the kill landed count too.
        let acked = rx.iter().last().or(acked).unwrap();
        total_acked += kill_after;
        check_store(dir.path(), acked.0, acked.1, round);
    }
    eprintln!(
        "crash test: {total_acked}+ acked writes over {:?}",
        started.elapsed()
    );
}

/// Power loss in the middle of the last write leaves a torn record at the end of the
/// WAL. That write was never acknowledged (its fsync had not returned), so recovery
/// drops it and opens with everything before it; it must not refuse to open.
#[test]
fn a_torn_last_record_is_dropped_and_everything_before_it_kept() {
    let base = tempfile::tempdir().unwrap();
    let src = base.path().join("store");
    let batches = 8u64;
    let per = 4u64;
    {
        let store = RocksLogStore::open(&src, StoreOptions::default()).unwrap();
        for b in 0..batches {
            let (first, last) = (b * per + 1, (b + 1) * per);
            store
                .write(LogWrite {
                    entries: (first..=last).map(|i| crash_entry(i, 1)).collect(),
                    hard_state: Some(hard_state(1, 1, last)),
                    must_sync: true,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let newest_wal = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .expect("a WAL file")
    };
    let acked = batches * per;
    for cut in [1u64, 7, 33, 100] {
        let dir = base.path().join(format!("torn-{cut}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        let wal = newest_wal(&dir);
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(len > cut, "WAL of {len} bytes");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - cut)
            .unwrap();
        let store = RocksLogStore::open(&dir, StoreOptions::default())
            .unwrap_or_else(|e| panic!("a torn tail ({cut} bytes cut) refused: {e}"));
        // The last batch is gone (torn), every batch before it is whole.
        let last = store.last_index().unwrap();
        assert_eq!(last, acked - per, "{cut} bytes cut");
        let entries = store
            .entries(1, last + 1, u64::MAX, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries.len() as u64, last);
        for e in &entries {
            assert_eq!(e, &crash_entry(e.index, 1));
        }
        let hs = store.initial_state().unwrap().hard_state;
        assert_eq!(
            hs.commit, last,
            "the hard state of the torn write is gone too"
        );
    }
}
