//! Watching a running chain from outside, the same for every consensus: one watcher per
//! node polls its controller every 20 ms ([`super::rpc`]) and records each new block
//! (when it was seen, its header, hash and transaction hashes); [`Ledger`] turns what
//! they saw into what a user checks: every transaction in exactly one block, every node
//! with the same block at every height, the gaps between blocks, and how long
//! transactions waited.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::rpc::Controller;
use super::{Chain, Ports};

/// One block as one node's controller showed it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The node (0-based).
    pub node: usize,
    /// The block's height.
    pub height: u64,
    /// When the watcher saw the node at this height.
    pub at: Instant,
    /// The header's timestamp (ms).
    pub timestamp_ms: u64,
    /// The proposer's validator address.
    pub proposer: Vec<u8>,
    /// The block's hash.
    pub hash: Vec<u8>,
    /// Its transactions' hashes.
    pub txs: Vec<Vec<u8>>,
}

/// One probe transaction: when `cldi send` started, and the hash it printed (`None`:
/// not accepted).
#[derive(Debug, Clone)]
pub struct Probe {
    /// When `cldi send` was started.
    pub sent: Instant,
    /// The accepted transaction's hash.
    pub hash: Option<Vec<u8>>,
}

/// The nearest-rank quantile `q` of `xs` (NaN when empty).
pub fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// Watches node `node`'s controller from `from + 1` until `stop`, appending every new
/// block to `seen`. A controller that does not answer (killed, restarting) is dialled
/// again.
async fn watch(
    node: usize,
    port: u16,
    from: u64,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = from + 1;
    let mut client: Option<Controller> = None;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Controller::connect(port).await {
                Ok(c) => client.insert(c),
                Err(_) => continue,
            },
        };
        let Ok(height) = c.height().await else {
            client = None;
            continue;
        };
        while next <= height {
            let at = Instant::now();
            let (Ok(block), Ok(hash)) = (c.block(next).await, c.block_hash(next).await) else {
                break;
            };
            if let Ok(mut s) = seen.lock() {
                s.push(Seen {
                    node,
                    height: next,
                    at,
                    timestamp_ms: block.timestamp_ms,
                    proposer: block.proposer,
                    hash,
                    txs: block.tx_hashes,
                });
            }
            next += 1;
        }
    }
}

/// The watchers of every node of a chain; they stop when it is dropped.
pub struct Watchers {
    rt: Option<tokio::runtime::Runtime>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    nodes: usize,
}

impl Watchers {
    /// Watches every node of `chain` from its current height on.
    pub fn start(chain: &Chain) -> anyhow::Result<Self> {
        let nodes = chain.state.nodes.len();
        let from: Vec<u64> = (0..nodes)
            .map(|i| {
                chain
                    .height(i)
                    .with_context(|| format!("node{i} does not answer"))
            })
            .collect::<anyhow::Result<_>>()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting a runtime")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        for (i, f) in from.iter().enumerate() {
            rt.spawn(watch(
                i,
                Ports::of(i).controller,
                *f,
                seen.clone(),
                stop.clone(),
            ));
        }
        Ok(Watchers {
            rt: Some(rt),
            seen,
            stop,
            nodes,
        })
    }

    /// What was seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether every accepted probe is in a block on every node and each node's last
    /// two blocks are empty: the chain has taken everything it was given.
    pub fn quiet(&self, probes: &[Probe]) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        let tail_empty = (0..self.nodes).all(|n| {
            let mine: Vec<&Seen> = seen.iter().filter(|s| s.node == n).collect();
            mine.len() >= 2 && mine[mine.len() - 2..].iter().all(|s| s.txs.is_empty())
        });
        tail_empty
            && probes.iter().filter_map(|p| p.hash.as_ref()).all(|h| {
                (0..self.nodes).all(|n| seen.iter().any(|s| s.node == n && s.txs.contains(h)))
            })
    }

    /// The newest block every node has seen.
    pub fn newest_common(&self) -> Option<Seen> {
        let seen = self.seen();
        let mut by_height: BTreeMap<u64, usize> = BTreeMap::new();
        for s in &seen {
            *by_height.entry(s.height).or_default() += 1;
        }
        let h = by_height
            .iter()
            .rev()
            .find(|(_, n)| **n >= self.nodes)
            .map(|(h, _)| *h)?;
        seen.into_iter().find(|s| s.height == h)
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// What the watchers saw, checked and measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    /// Transactions in the blocks every node has.
    pub committed: u64,
    /// Transaction hashes found in more than one block.
    pub duplicates: u64,
    /// Probes accepted but not found in a block on every node.
    pub probes_lost: u64,
    /// Heights whose block was compared across every node.
    pub heights_compared: u64,
    /// Heights where two nodes' blocks differ (hash or transactions).
    pub hash_mismatches: u64,
    /// Committed transactions per second, from the start to the last block holding one
    /// on every node.
    pub tx_per_sec: f64,
    /// Probe finality, median (s).
    pub finality_p50_s: f64,
    /// Probe finality, 99th percentile (s).
    pub finality_p99_s: f64,
    /// Time between consecutive blocks by header timestamp, median (s).
    pub gap_p50_s: f64,
    /// Time between consecutive blocks, 99th percentile (s).
    pub gap_p99_s: f64,
    /// Longest time between consecutive blocks (s).
    pub gap_max_s: f64,
    /// Blocks every node has.
    pub blocks: u64,
}

impl Ledger {
    /// The ledger of `seen` by `nodes` nodes, with `probes`, from `started`.
    pub fn of(seen: &[Seen], probes: &[Probe], nodes: usize, started: Instant) -> Self {
        // Heights every node has seen, and the agreement on their blocks.
        let mut by_height: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
        for s in seen {
            by_height.entry(s.height).or_default().push(s);
        }
        let complete: Vec<&Vec<&Seen>> = by_height
            .values()
            .filter(|v| (0..nodes).all(|n| v.iter().any(|s| s.node == n)))
            .collect();
        let hash_mismatches = complete
            .iter()
            .filter(|v| v.iter().any(|s| s.hash != v[0].hash || s.txs != v[0].txs))
            .count() as u64;
        // Transactions: committed, duplicates, and when each was final (seen everywhere).
        let mut final_at: HashMap<&[u8], Instant> = HashMap::new();
        let mut count: HashMap<&[u8], u64> = HashMap::new();
        let mut committed = 0u64;
        let mut last_final: Option<Instant> = None;
        let mut stamps = Vec::new();
        for v in &complete {
            let at = v.iter().map(|s| s.at).max().unwrap_or(started);
            stamps.push(v[0].timestamp_ms);
            for tx in &v[0].txs {
                committed += 1;
                *count.entry(tx.as_slice()).or_default() += 1;
                final_at.entry(tx.as_slice()).or_insert(at);
            }
            if !v[0].txs.is_empty() {
                last_final = Some(last_final.map_or(at, |l: Instant| l.max(at)));
            }
        }
        let duplicates = count.values().filter(|c| **c > 1).count() as u64;
        let mut finality = Vec::new();
        let mut probes_lost = 0;
        for p in probes {
            let Some(h) = &p.hash else { continue };
            match final_at.get(h.as_slice()) {
                Some(at) => finality.push(at.saturating_duration_since(p.sent).as_secs_f64()),
                None => probes_lost += 1,
            }
        }
        let gaps: Vec<f64> = stamps
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]) as f64 / 1000.0)
            .collect();
        let window = last_final.map_or(0.0, |l| l.saturating_duration_since(started).as_secs_f64());
        Ledger {
            committed,
            duplicates,
            probes_lost,
            heights_compared: complete.len() as u64,
            hash_mismatches,
            tx_per_sec: if window > 0.0 {
                committed as f64 / window
            } else {
                0.0
            },
            finality_p50_s: quantile(finality.clone(), 0.5),
            finality_p99_s: quantile(finality, 0.99),
            gap_p50_s: quantile(gaps.clone(), 0.5),
            gap_p99_s: quantile(gaps.clone(), 0.99),
            gap_max_s: gaps.iter().copied().fold(0.0, f64::max),
            blocks: complete.len() as u64,
        }
    }

    /// What is wrong, if anything: transactions lost or duplicated, nodes that
    /// disagree, fewer committed than `accepted`.
    pub fn problems(&self, accepted: u64) -> Vec<String> {
        let mut out = Vec::new();
        if self.duplicates > 0 {
            out.push(format!("{} transactions in two blocks", self.duplicates));
        }
        if self.probes_lost > 0 {
            out.push(format!("{} accepted probes in no block", self.probes_lost));
        }
        if self.hash_mismatches > 0 {
            out.push(format!(
                "nodes disagree at {} heights",
                self.hash_mismatches
            ));
        }
        if self.committed < accepted {
            out.push(format!(
                "{} accepted, {} committed",
                accepted, self.committed
            ));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn block(node: usize, height: u64, at: Instant, ts: u64, txs: &[u8]) -> Seen {
        Seen {
            node,
            height,
            at,
            timestamp_ms: ts,
            proposer: vec![1; 20],
            hash: vec![height as u8],
            txs: txs.iter().map(|t| vec![*t; 32]).collect(),
        }
    }

    #[test]
    fn finality_waits_for_the_last_node_and_losses_and_forks_are_counted() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut seen = vec![
            block(0, 10, s(1000), 3_000, &[1, 2]),
            block(1, 10, s(1500), 3_000, &[1, 2]),
            block(0, 11, s(4000), 6_000, &[3]),
            block(1, 11, s(4100), 6_000, &[3]),
            // Only node 0 has 12: not complete, not counted.
            block(0, 12, s(7000), 9_000, &[4]),
        ];
        let probe = |ms, h: Option<u8>| Probe {
            sent: s(ms),
            hash: h.map(|h| vec![h; 32]),
        };
        let probes = vec![
            probe(0, Some(1)),
            probe(2000, Some(3)),
            probe(2500, Some(4)),
            probe(2600, None),
        ];
        let r = Ledger::of(&seen, &probes, 2, t0);
        assert_eq!(r.committed, 3);
        assert_eq!(r.blocks, 2);
        assert_eq!(r.duplicates, 0);
        assert_eq!(r.probes_lost, 1, "probe 4 is on one node only");
        assert_eq!(r.hash_mismatches, 0);
        // Probe 1 final at 1.5 s (the slower node), probe 2 at 4.1 - 2.0 s.
        assert_eq!(r.finality_p50_s, 1.5);
        assert!((r.finality_p99_s - 2.1).abs() < 1e-9);
        assert_eq!(r.gap_max_s, 3.0);
        assert!((r.tx_per_sec - 3.0 / 4.1).abs() < 1e-9);
        assert_eq!(
            r.problems(3),
            vec!["1 accepted probes in no block".to_string()]
        );

        // A transaction in two blocks, and a fork at 11.
        seen[4] = block(0, 12, s(7000), 9_000, &[3]);
        seen.push(block(1, 12, s(7100), 9_000, &[3]));
        seen[3].hash = vec![99];
        let r = Ledger::of(&seen, &probes, 2, t0);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.hash_mismatches, 1);
        assert_eq!(r.problems(0).len(), 3);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(xs.clone(), 0.5), 50.0);
        assert_eq!(quantile(xs.clone(), 0.99), 99.0);
        assert_eq!(quantile(vec![7.0], 0.99), 7.0);
        assert!(quantile(Vec::new(), 0.5).is_nan());
    }
}
