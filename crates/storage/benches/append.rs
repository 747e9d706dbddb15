//! Appending to `RocksLogStore`: batches of 1, 16 and 256 entries of 256 bytes, with
//! fsync on and off, reported in entries per second.
//!
//! Each `LogStore::write` is one `WriteBatch`; with sync on it is one fsync of the WAL,
//! so a batch of `n` entries costs `1/n` fsyncs per entry (printed per benchmark).
//!
//! Run: `cargo bench -p craft-storage --bench append` (release; builds RocksDB once
//! for that profile).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use craft_core::{LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use raft::eraftpb::Entry;

const ENTRY_BYTES: usize = 256;

fn batch(first: u64, n: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|index| Entry {
            index,
            term: 1,
            data: vec![(index % 251) as u8; ENTRY_BYTES],
            ..Default::default()
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for sync in [true, false] {
        for n in [1u64, 16, 256] {
            let dir = tempfile::tempdir().unwrap();
            let store =
                RocksLogStore::open(dir.path(), StoreOptions::default().with_sync(sync)).unwrap();
            let fsyncs_per_entry = if sync { 1.0 / n as f64 } else { 0.0 };
            println!(
                "append/{}/{n}: one WriteBatch per call, {fsyncs_per_entry:.4} fsyncs per entry",
                if sync { "sync" } else { "nosync" }
            );
            group.throughput(Throughput::Elements(n));
            let id = BenchmarkId::new(if sync { "sync" } else { "nosync" }, n);
            let mut next = 1u64;
            group.bench_with_input(id, &n, |b, &n| {
                b.iter_batched(
                    || {
                        let entries = batch(next, n);
                        next += n;
                        LogWrite {
                            entries,
                            must_sync: true,
                            ..Default::default()
                        }
                    },
                    |write| store.write(black_box(write)).unwrap(),
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
