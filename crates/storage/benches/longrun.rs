//! Does the log store stay fast forever? Appends a million entries the way the
//! consensus service does (one entry per write, each write also saving a snapshot and
//! compacting the log one entry behind it, 1000 entries retained) and prints the
//! write rate for each tenth of the run. The first and the last tenth must match.
//!
//! `cargo bench --workspace --bench longrun` (`LONGRUN_ENTRIES=N` for another count,
//! `LONGRUN_SYNC=1` to fsync every write).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use craft_core::{make_snapshot, voters, LocalSnapshot, LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage as _};

const RETAIN: u64 = 1000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a
    // quick run.
    let bench = std::env::args().any(|a| a == "--bench");
    let total = env_u64("LONGRUN_ENTRIES").unwrap_or(if bench { 1_000_000 } else { 20_000 });
    let sync = env_u64("LONGRUN_SYNC").is_some_and(|v| v != 0);
    let dir = tempfile::tempdir().unwrap();
    // A small entry cache, so that reading the retained tail back also reads RocksDB
    // over the compacted prefix.
    let options = StoreOptions::default()
        .with_sync(sync)
        .with_entry_cache_bytes(64 << 10);
    let store = RocksLogStore::open(dir.path(), options).unwrap();
    store
        .bootstrap(make_snapshot(1, 1, voters([1]), Vec::new()))
        .unwrap();
    let payload = vec![0xabu8; 256];
    let tenth = (total / 10).max(1);
    println!(
        "longrun: {total} entries of 256 bytes, one write each with a snapshot and compaction \
         ({RETAIN} retained), sync {}",
        if sync { "on" } else { "off" }
    );
    println!("{:>8} {:>12} {:>14}", "tenth", "entries/s", "read tail us");
    let mut rates = Vec::new();
    let mut started = Instant::now();
    for index in 2..total + 2 {
        let applied = index - 1;
        let local = (applied > RETAIN).then(|| LocalSnapshot {
            snapshot: make_snapshot(applied, 1, voters([1]), b"configuration".to_vec()),
            compact_to: applied - RETAIN,
            staged: None,
        });
        store
            .write(LogWrite {
                local_snapshot: local,
                entries: vec![Entry {
                    index,
                    term: 1,
                    data: payload.clone(),
                    ..Default::default()
                }],
                hard_state: Some(HardState {
                    term: 1,
                    vote: 1,
                    commit: applied,
                }),
                must_sync: true,
                snapshot: None,
            })
            .unwrap();
        if (index - 1) % tenth == 0 {
            let rate = tenth as f64 / started.elapsed().as_secs_f64();
            // Reading the retained tail back, as a leader sending to a lagging follower
            // does: the older part comes from RocksDB, the newest from the cache.
            let t = Instant::now();
            let first = store.first_index().unwrap();
            let got = store
                .entries(first, index + 1, None, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got.len() as u64, index + 1 - first);
            let read_us = t.elapsed().as_secs_f64() * 1e6;
            rates.push(rate);
            println!("{:>8} {rate:>12.0} {read_us:>14.0}", rates.len());
            started = Instant::now();
        }
    }
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!("last tenth / first tenth: {:.3}", last / first);
    }
}
