//! `cargo xtask bench --cita-chain`: transactions on a real CITA-Cloud chain, one chain per
//! consensus, the consensuses alternating in one run.
//!
//! Each case generates and starts a fresh chain ([`super::start`]), lets it commit two
//! blocks, then for the measured window:
//! - **load**: one `cldi bench send` per node, each sending its share of `--txs` signed
//!   transactions to its own node's controller; `cldi` prints how many were accepted;
//! - **probes**: `cldi send` of one transaction every `1 / --probes-per-sec` seconds,
//!   nodes in turn; a probe's finality is the time from starting `cldi` to the moment
//!   the block holding it has been seen on every node (so it includes `cldi`'s own
//!   start, about the same for every consensus);
//! - **watchers**: one task per node polls its controller every 20 ms
//!   ([`super::rpc`]) and records every new block: when it was seen, its header
//!   timestamp, its hash and its transaction hashes;
//! - `/proc` readings of every process of every node, CPU at both ends of the window
//!   and resident sets every half second.
//!
//! The window ends when the senders are done, every probe is in a block on every node
//!   and each node has two empty blocks in a row (or at a deadline). Then the case
//!   checks what a user would: every accepted transaction is in exactly one block, no
//!   hash appears twice, and every node has the same block hash at every height.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

use super::rpc::Controller;
use super::{Chain, Ports, Service, UpArgs};
use crate::harness::median;
use crate::procfs::{clock_ticks_per_sec, cpu_ticks, rss_mb};

/// Options of `bench --cita-chain`.
#[derive(Debug, Clone, clap::Args)]
pub struct CitaArgs {
    /// Instead of the consensus cases: a real CITA-Cloud chain (the services of
    /// docs/cita-chain-build.md) under `cldi` transactions, one chain per consensus.
    /// Results in target/bench/cita-chain.json.
    #[arg(long)]
    pub cita_chain: bool,
    /// The services' directory (as `cita-chain up --services`; default: `CITA_SERVICES`).
    #[arg(long, requires = "cita_chain")]
    pub services: Option<PathBuf>,
    /// The consensuses compared (as `cita-chain up --consensus`).
    #[arg(long, value_delimiter = ',', default_values_t = ["ours".to_string(), "consensus_raft".to_string(), "consensus_overlord".to_string()])]
    pub cita_consensus: Vec<String>,
    /// The chain's `block_interval`s, one set of cases each (seconds).
    #[arg(long, value_delimiter = ',', default_values_t = [3u32, 1])]
    pub block_intervals: Vec<u32>,
    /// Nodes of each chain.
    #[arg(long, default_value_t = 4)]
    pub cita_nodes: usize,
    /// Transactions sent per case, shared among the nodes.
    #[arg(long, default_value_t = 20_000)]
    pub txs: u64,
    /// Concurrent requests of each node's `cldi bench send`.
    #[arg(long, default_value_t = 100)]
    pub concurrency: u64,
    /// Finality probes per second.
    #[arg(long, default_value_t = 4.0)]
    pub probes_per_sec: f64,
}

/// One block as one node's controller showed it.
#[derive(Debug, Clone)]
struct Seen {
    node: usize,
    height: u64,
    at: Instant,
    timestamp_ms: u64,
    hash: Vec<u8>,
    txs: Vec<Vec<u8>>,
}

/// One probe transaction.
#[derive(Debug, Clone)]
struct Probe {
    sent: Instant,
    hash: Option<Vec<u8>>,
}

/// What one case measured.
#[derive(Debug, Clone, Serialize)]
pub struct CitaCase {
    /// The consensus (`cita-chain up --consensus`).
    pub consensus: String,
    /// The chain's `block_interval` (s).
    pub block_interval: u32,
    /// Nodes.
    pub nodes: usize,
    /// Transactions `cldi` saw accepted (load and probes).
    pub accepted: u64,
    /// Transactions in the window's blocks.
    pub committed: u64,
    /// Transaction hashes found in more than one block.
    pub duplicates: u64,
    /// Probes accepted but not found in a block on every node.
    pub probes_lost: u64,
    /// Heights whose block hash was compared across every node.
    pub heights_compared: u64,
    /// Heights where two nodes' block hashes differ.
    pub hash_mismatches: u64,
    /// Committed transactions per second, from the first send to the last block holding
    /// one on every node.
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
    /// Blocks in the window.
    pub blocks: u64,
    /// CPU of every node's consensus process per block (ms).
    pub consensus_cpu_ms_per_block: f64,
    /// CPU of every process of every node per block (ms).
    pub chain_cpu_ms_per_block: f64,
    /// Largest resident set of a consensus process (MB).
    pub consensus_rss_mb: f64,
    /// Largest resident set of a whole node, its five processes together (MB).
    pub node_rss_mb: f64,
}

/// The nearest-rank quantile `q` of `xs` (NaN when empty).
fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// Parses `` `N` success, `M` failure `` from `cldi bench send`.
pub fn parse_bench_success(out: &str) -> Option<u64> {
    out.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix('`')?;
        let (n, tail) = rest.split_once('`')?;
        tail.trim_start()
            .starts_with("success")
            .then(|| n.parse().ok())
            .flatten()
    })
}

/// Parses the transaction hash `cldi send` prints (`0x` and 64 hex digits).
pub fn parse_tx_hash(out: &str) -> Option<Vec<u8>> {
    let hex = out
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("0x"))?;
    if hex.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Watches node `node`'s controller from `from + 1` until `stop`, appending every new
/// block to `seen`.
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
            let (Ok((timestamp_ms, txs)), Ok(hash)) =
                (c.block(next).await, c.block_hash(next).await)
            else {
                break;
            };
            if let Ok(mut s) = seen.lock() {
                s.push(Seen {
                    node,
                    height: next,
                    at,
                    timestamp_ms,
                    hash,
                    txs,
                });
            }
            next += 1;
        }
    }
}

fn random_address() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("0x");
    for _ in 0..3 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(42);
    out
}

/// Runs one case on a fresh chain in `dir`.
fn case(
    root: &Path,
    dir: &Path,
    args: &CitaArgs,
    debug: bool,
    consensus: &str,
    interval: u32,
) -> anyhow::Result<CitaCase> {
    let up = UpArgs {
        services: args.services.clone(),
        consensus: consensus.to_string(),
        nodes: args.cita_nodes,
        block_interval: interval,
        chain_name: "bench".into(),
        debug,
        detach: true,
        duration: None,
    };
    let never = AtomicBool::new(false);
    let (chain, _) = super::start(root, dir, &up, &never)?;
    let chain = DownOnDrop(chain);
    let nodes = args.cita_nodes;
    // Two more blocks: every service has settled.
    let h0 = chain.0.height(0).unwrap_or(1);
    let settle = Instant::now() + Duration::from_secs(20 + 4 * u64::from(interval));
    while chain.0.height(0).is_none_or(|h| h < h0 + 2) {
        ensure!(Instant::now() < settle, "the chain stopped at height {h0}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let from: Vec<u64> = (0..nodes)
        .map(|i| chain.0.height(i).context("a node does not answer"))
        .collect::<anyhow::Result<_>>()?;
    let pids: Vec<Vec<(Service, u32)>> = (0..nodes).map(|i| chain.0.node_pids(i)).collect();
    let consensus_pids: Vec<u32> = pids
        .iter()
        .flat_map(|n| {
            n.iter()
                .filter(|(s, _)| *s == Service::Consensus)
                .map(|(_, p)| *p)
        })
        .collect();
    let all_pids: Vec<u32> = pids
        .iter()
        .flat_map(|n| n.iter().map(|(_, p)| *p))
        .collect();

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    for (i, f) in from.iter().enumerate() {
        rt.spawn(watch(
            i,
            Ports::of(i).controller,
            *f,
            seen.clone(),
            stop.clone(),
        ));
    }

    let cpu0 = (
        consensus_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>(),
        all_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>(),
    );
    let started = Instant::now();
    // The load: one sender per node.
    let share = args.txs / nodes as u64;
    let senders: Vec<std::process::Child> = (0..nodes)
        .map(|i| {
            chain
                .0
                .cldi(i)
                .args([
                    "bench",
                    "send",
                    "--disable-watch",
                    "-c",
                    &args.concurrency.to_string(),
                    "--connections",
                    "2",
                    &share.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting cldi bench send")
        })
        .collect::<anyhow::Result<_>>()?;
    let senders_done = Arc::new(AtomicBool::new(false));
    let loader = {
        let done = senders_done.clone();
        std::thread::spawn(move || {
            let mut accepted = 0u64;
            let mut errors = Vec::new();
            for s in senders {
                match s.wait_with_output() {
                    Ok(out) => {
                        let text = String::from_utf8_lossy(&out.stdout);
                        match parse_bench_success(&text) {
                            Some(n) => accepted += n,
                            None => errors.push(format!(
                                "{}{}",
                                text.lines().last().unwrap_or(""),
                                String::from_utf8_lossy(&out.stderr)
                            )),
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            done.store(true, Ordering::SeqCst);
            (accepted, errors)
        })
    };

    // Probes and resident sets until the senders are done and the chain is quiet.
    let probe_every = Duration::from_secs_f64(1.0 / args.probes_per_sec.max(0.1));
    let mut probes: Vec<Probe> = Vec::new();
    let mut consensus_rss: f64 = 0.0;
    let mut node_rss: f64 = 0.0;
    let mut next_probe = Instant::now();
    let mut next_rss = Instant::now();
    let deadline_after_load = Duration::from_secs(60 + 10 * u64::from(interval));
    let mut load_done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_rss {
            next_rss = now + Duration::from_millis(500);
            for n in &pids {
                let node: f64 = n.iter().map(|(_, p)| rss_mb(*p)).sum();
                node_rss = node_rss.max(node);
                for (s, p) in n {
                    if *s == Service::Consensus {
                        consensus_rss = consensus_rss.max(rss_mb(*p));
                    }
                }
            }
        }
        if load_done_at.is_none() && senders_done.load(Ordering::SeqCst) {
            load_done_at = Some(now);
        }
        if load_done_at.is_none() && now >= next_probe {
            next_probe = now + probe_every;
            let node = probes.len() % nodes;
            let sent = Instant::now();
            let out = chain
                .0
                .cldi(node)
                .args(["-t", "3", "send", &random_address()])
                .output();
            let hash = out
                .ok()
                .and_then(|o| parse_tx_hash(&String::from_utf8_lossy(&o.stdout)));
            probes.push(Probe { sent, hash });
            continue;
        }
        if let Some(done) = load_done_at {
            if quiet(&seen, nodes, &probes) || done.elapsed() > deadline_after_load {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu1 = (
        consensus_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>(),
        all_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>(),
    );
    stop.store(true, Ordering::SeqCst);
    rt.shutdown_timeout(Duration::from_secs(2));
    let (load_accepted, errors) = loader
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    if !errors.is_empty() {
        eprintln!("cldi bench send reported: {}", errors.join(" | "));
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut r = summarize(&seen, &probes, nodes, started);
    r.consensus = consensus.to_string();
    r.block_interval = interval;
    r.accepted = load_accepted + probes.iter().filter(|p| p.hash.is_some()).count() as u64;
    let ticks = clock_ticks_per_sec();
    let blocks = r.blocks.max(1) as f64;
    r.consensus_cpu_ms_per_block = (cpu1.0 - cpu0.0) as f64 / ticks * 1000.0 / blocks;
    r.chain_cpu_ms_per_block = (cpu1.1 - cpu0.1) as f64 / ticks * 1000.0 / blocks;
    r.consensus_rss_mb = consensus_rss;
    r.node_rss_mb = node_rss;
    drop(chain);
    Ok(r)
}

/// Whether every probe is in a block on every node and each node's last two blocks are
/// empty.
fn quiet(seen: &Mutex<Vec<Seen>>, nodes: usize, probes: &[Probe]) -> bool {
    let Ok(seen) = seen.lock() else {
        return false;
    };
    let tail_empty = (0..nodes).all(|n| {
        let mine: Vec<&Seen> = seen.iter().filter(|s| s.node == n).collect();
        mine.len() >= 2 && mine[mine.len() - 2..].iter().all(|s| s.txs.is_empty())
    });
    tail_empty
        && probes
            .iter()
            .filter_map(|p| p.hash.as_ref())
            .all(|h| (0..nodes).all(|n| seen.iter().any(|s| s.node == n && s.txs.contains(h))))
}

/// The figures of a case from what the watchers saw (CPU, RSS and names left for the
/// caller).
fn summarize(seen: &[Seen], probes: &[Probe], nodes: usize, started: Instant) -> CitaCase {
    // Heights every node has seen, and the agreement on their hashes.
    let mut by_height: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        by_height.entry(s.height).or_default().push(s);
    }
    let complete: Vec<(&u64, &Vec<&Seen>)> = by_height
        .iter()
        .filter(|(_, v)| (0..nodes).all(|n| v.iter().any(|s| s.node == n)))
        .collect();
    let hash_mismatches = complete
        .iter()
        .filter(|(_, v)| v.iter().any(|s| s.hash != v[0].hash || s.txs != v[0].txs))
        .count() as u64;
    // Transactions: committed, duplicates, and when each was final (seen everywhere).
    let mut final_at: HashMap<&[u8], Instant> = HashMap::new();
    let mut count: HashMap<&[u8], u64> = HashMap::new();
    let mut committed = 0u64;
    let mut last_final: Option<Instant> = None;
    let mut stamps = Vec::new();
    for (_, v) in &complete {
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
    CitaCase {
        consensus: String::new(),
        block_interval: 0,
        nodes,
        accepted: 0,
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
        consensus_cpu_ms_per_block: 0.0,
        chain_cpu_ms_per_block: 0.0,
        consensus_rss_mb: 0.0,
        node_rss_mb: 0.0,
    }
}

/// Stops the chain when dropped, whatever happened to the case.
struct DownOnDrop(Chain);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// The median of each figure over rounds (counts summed, so that a loss in any round
/// shows).
fn combine(rs: &[CitaCase]) -> CitaCase {
    let m = |f: fn(&CitaCase) -> f64| median(rs.iter().map(f).collect());
    let sum = |f: fn(&CitaCase) -> u64| rs.iter().map(f).sum::<u64>();
    CitaCase {
        consensus: rs[0].consensus.clone(),
        block_interval: rs[0].block_interval,
        nodes: rs[0].nodes,
        accepted: sum(|r| r.accepted),
        committed: sum(|r| r.committed),
        duplicates: sum(|r| r.duplicates),
        probes_lost: sum(|r| r.probes_lost),
        heights_compared: sum(|r| r.heights_compared),
        hash_mismatches: sum(|r| r.hash_mismatches),
        tx_per_sec: m(|r| r.tx_per_sec),
        finality_p50_s: m(|r| r.finality_p50_s),
        finality_p99_s: m(|r| r.finality_p99_s),
        gap_p50_s: m(|r| r.gap_p50_s),
        gap_p99_s: m(|r| r.gap_p99_s),
        gap_max_s: rs.iter().map(|r| r.gap_max_s).fold(0.0, f64::max),
        blocks: sum(|r| r.blocks),
        consensus_cpu_ms_per_block: m(|r| r.consensus_cpu_ms_per_block),
        chain_cpu_ms_per_block: m(|r| r.chain_cpu_ms_per_block),
        consensus_rss_mb: m(|r| r.consensus_rss_mb),
        node_rss_mb: m(|r| r.node_rss_mb),
    }
}

fn print_table(interval: u32, rows: &[CitaCase]) {
    println!(
        "\nblock_interval {interval} s, {} nodes (medians over rounds; counts summed; max gap over rounds)",
        rows.first().map_or(0, |r| r.nodes)
    );
    println!(
        "{:<20} {:>8} {:>15} {:>17} {:>8} {:>15} {:>11} {:>9} {:>9}  accepted/committed dup lost mismatch",
        "consensus", "tx/s", "final p50/p99 s", "gap p50/p99/max", "blocks", "cons CPU ms/blk", "chain ms/blk", "cons RSS", "node RSS"
    );
    for r in rows {
        println!(
            "{:<20} {:>8.0} {:>7.2} / {:<5.2} {:>5.2}/{:>5.2}/{:>5.2} {:>8} {:>15.1} {:>11.0} {:>7.1}MB {:>7.1}MB  {}/{} {} {} {}",
            r.consensus,
            r.tx_per_sec,
            r.finality_p50_s,
            r.finality_p99_s,
            r.gap_p50_s,
            r.gap_p99_s,
            r.gap_max_s,
            r.blocks,
            r.consensus_cpu_ms_per_block,
            r.chain_cpu_ms_per_block,
            r.consensus_rss_mb,
            r.node_rss_mb,
            r.accepted,
            r.committed,
            r.duplicates,
            r.probes_lost,
            r.hash_mismatches
        );
    }
}

/// `bench --cita-chain`: every case, consensuses alternating in each round.
pub fn run(root: &Path, args: &CitaArgs, debug: bool, rounds: usize) -> anyhow::Result<()> {
    ensure!(
        !args.cita_consensus.is_empty(),
        "--cita-consensus names none"
    );
    ensure!(
        args.txs >= args.cita_nodes as u64,
        "--txs is smaller than --cita-nodes"
    );
    let dir = root.join("target").join("bench").join("cita-chain");
    let mut results: BTreeMap<(u32, usize), Vec<CitaCase>> = BTreeMap::new();
    for round in 1..=rounds.max(1) {
        for &interval in &args.block_intervals {
            for (k, consensus) in args.cita_consensus.iter().enumerate() {
                eprintln!("== round {round}: {consensus}, block_interval {interval} s");
                let r = case(root, &dir.join("chain"), args, debug, consensus, interval)
                    .with_context(|| format!("{consensus} at block_interval {interval}"))?;
                eprintln!(
                    "   {:.0} tx/s, finality p50 {:.2} s p99 {:.2} s, gap max {:.2} s, {} accepted / {} committed",
                    r.tx_per_sec, r.finality_p50_s, r.finality_p99_s, r.gap_max_s, r.accepted, r.committed
                );
                results.entry((interval, k)).or_default().push(r);
            }
        }
    }
    let mut all = Vec::new();
    for &interval in &args.block_intervals {
        let rows: Vec<CitaCase> = (0..args.cita_consensus.len())
            .filter_map(|k| results.get(&(interval, k)).map(|rs| combine(rs)))
            .collect();
        print_table(interval, &rows);
        all.extend(rows);
    }
    let raw: Vec<&CitaCase> = results.values().flatten().collect();
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("cita-chain.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({ "medians": all, "runs": raw }))?,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("\nresults in {}", out.display());
    let bad: Vec<String> = all
        .iter()
        .filter(|r| {
            r.duplicates > 0
                || r.probes_lost > 0
                || r.hash_mismatches > 0
                || r.committed < r.accepted
        })
        .map(|r| format!("{} at {} s", r.consensus, r.block_interval))
        .collect();
    if !bad.is_empty() {
        bail!(
            "transactions lost or duplicated, or nodes disagree: {}",
            bad.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cldi_bench_and_send_outputs_parse() {
        let bench = "Preparing connections and transactions..\nSending transactions..\n`5000` tasks finished in `812` ms\n`4998` success, `2` failure\n";
        assert_eq!(parse_bench_success(bench), Some(4998));
        assert_eq!(parse_bench_success("bench failed\n"), None);
        let hash = format!("0x{}\n", "ab".repeat(32));
        assert_eq!(parse_tx_hash(&hash), Some(vec![0xab; 32]));
        assert_eq!(parse_tx_hash("0xabc\n"), None);
        assert_eq!(parse_tx_hash(&format!("0x{}zz\n", "ab".repeat(31))), None);
        assert_eq!(parse_tx_hash("error: connection refused\n"), None);
    }

    fn block(node: usize, height: u64, at: Instant, ts: u64, txs: &[u8]) -> Seen {
        Seen {
            node,
            height,
            at,
            timestamp_ms: ts,
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
        let probes = vec![
            Probe {
                sent: s(0),
                hash: Some(vec![1; 32]),
            },
            Probe {
                sent: s(2000),
                hash: Some(vec![3; 32]),
            },
            Probe {
                sent: s(2500),
                hash: Some(vec![4; 32]),
            },
            Probe {
                sent: s(2600),
                hash: None,
            },
        ];
        let r = summarize(&seen, &probes, 2, t0);
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

        // A transaction in two blocks, and a fork at 11.
        seen[4] = block(0, 12, s(7000), 9_000, &[3]);
        seen.push(block(1, 12, s(7100), 9_000, &[3]));
        seen[3].hash = vec![99];
        let r = summarize(&seen, &probes, 2, t0);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.hash_mismatches, 1);
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
