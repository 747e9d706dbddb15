//! Throughput and latency of an in-process 3-node cluster over an in-memory transport,
//! with in-memory storage and with RocksDB (sync on).
//!
//! `cargo bench -p craft-storage --bench replication` (or `cargo xtask bench`) prints,
//! for 1 and 64 concurrent proposers, proposals/s and p50/p99 latency. Set
//! `CRAFT_BENCH_SECS` to change the measuring time per case (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use craft_core::raft::eraftpb::{Message, Snapshot};
use craft_core::{
    make_snapshot, start, voters, Committed, DriverConfig, LogStore, MemLogStore, NodeHandle,
    ReplicaConfig, SnapshotJob, StateMachine, Transport,
};
use craft_storage::{RocksLogStore, StoreOptions};

/// Counts applied commands.
struct Counter(u64);

impl StateMachine for Counter {
    type Response = u64;
    async fn apply(&mut self, _entry: &Committed) -> u64 {
        self.0 += 1;
        self.0
    }
    fn snapshot(&mut self) -> SnapshotJob {
        SnapshotJob::ready(self.0.to_be_bytes().to_vec())
    }
    async fn restore(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let b: [u8; 8] = snapshot.data.as_slice().try_into().unwrap_or([0; 8]);
        self.0 = u64::from_be_bytes(b);
        Ok(())
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        (data.is_empty() || data.len() == 8)
            .then_some(())
            .ok_or_else(|| format!("{} bytes, not a counter", data.len()))
    }
}

type Handles = Arc<RwLock<HashMap<u64, NodeHandle<u64>>>>;

/// Delivers messages straight into the peers' inboxes.
struct Loopback(Handles);

impl Transport for Loopback {
    fn send(&self, messages: Vec<Message>) {
        let peers = self.0.read().unwrap();
        for m in messages {
            if let Some(h) = peers.get(&m.to) {
                h.step(m);
            }
        }
    }
}

async fn cluster<S: LogStore + Clone>(stores: Vec<S>) -> (Handles, NodeHandle<u64>) {
    let handles: Handles = Arc::new(RwLock::new(HashMap::new()));
    for (i, store) in stores.into_iter().enumerate() {
        let id = i as u64 + 1;
        store
            .bootstrap(make_snapshot(
                1,
                1,
                voters([1, 2, 3]),
                0u64.to_be_bytes().to_vec(),
            ))
            .unwrap();
        let mut cfg = ReplicaConfig::new(id);
        cfg.snapshot_interval = 10_000;
        cfg.log_retain = 5_000;
        let driver = DriverConfig {
            tick_interval: Duration::from_millis(50),
            ..DriverConfig::default()
        };
        let (h, _join) = start(
            cfg,
            driver,
            store,
            Counter(0),
            Loopback(handles.clone()),
            std::future::pending(),
        )
        .await
        .unwrap();
        handles.write().unwrap().insert(id, h);
    }
    let leader = handles.read().unwrap()[&1].clone();
    leader.campaign().await.unwrap();
    for _ in 0..200 {
        if leader.status().role == craft_core::Role::Leader && leader.propose(vec![0]).await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (handles, leader)
}

async fn measure(
    leader: &NodeHandle<u64>,
    proposers: usize,
    secs: u64,
) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..proposers {
        let h = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let payload = vec![7u8; 64];
            while Instant::now() < deadline {
                let t = Instant::now();
                if h.propose(payload.clone()).await.is_ok() {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (all.len() as f64 / elapsed, pct(0.5), pct(0.99))
}

fn secs() -> u64 {
    static S: OnceLock<u64> = OnceLock::new();
    *S.get_or_init(|| {
        std::env::var("CRAFT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5)
    })
}

fn report(storage: &str, proposers: usize, (rate, p50, p99): (f64, Duration, Duration)) {
    println!(
        "replication/{storage:<12} proposers={proposers:<3} {rate:>10.0} proposals/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for proposers in [1, 64] {
            let (_h, leader) = cluster(vec![
                MemLogStore::new(),
                MemLogStore::new(),
                MemLogStore::new(),
            ])
            .await;
            report(
                "memory",
                proposers,
                measure(&leader, proposers, secs()).await,
            );
        }
        for proposers in [1, 64] {
            let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
            let stores: Vec<_> = dirs
                .iter()
                .map(|d| RocksLogStore::open(d.path(), StoreOptions::default()).unwrap())
                .collect();
            let (_h, leader) = cluster(stores).await;
            report(
                "rocksdb-sync",
                proposers,
                measure(&leader, proposers, secs()).await,
            );
        }
    });
}
