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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

use super::observe::{Ledger, Probe, Watchers};
use super::{Chain, Service, UpArgs};
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
    /// What the watchers saw.
    #[serde(flatten)]
    pub ledger: Ledger,
    /// CPU of every node's consensus process per block (ms).
    pub consensus_cpu_ms_per_block: f64,
    /// CPU of every process of every node per block (ms).
    pub chain_cpu_ms_per_block: f64,
    /// Largest resident set of a consensus process (MB).
    pub consensus_rss_mb: f64,
    /// Largest resident set of a whole node, its five processes together (MB).
    pub node_rss_mb: f64,
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
    hex::decode(hex).ok()
}

/// The `to` of every probe: any address will do, `cldi send` makes each transaction
/// unique with a random nonce.
const PROBE_TO: &str = "0x000000000000000000000000000000000000c0de";

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
    let chain = DownOnDrop(super::start(root, dir, &up, &AtomicBool::new(false))?.0);
    let nodes = args.cita_nodes;
    settle(&chain.0, interval)?;
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
    let ticks_of = |ps: &[u32]| ps.iter().map(|p| cpu_ticks(*p)).sum::<u64>();

    let watchers = Watchers::start(&chain.0)?;
    let cpu0 = (ticks_of(&consensus_pids), ticks_of(&all_pids));
    let started = Instant::now();
    let load = Load::start(&chain.0, args.txs / nodes as u64, args.concurrency)?;

    // Probes and resident sets until the senders are done and the chain is quiet.
    let probe_every = Duration::from_secs_f64(1.0 / args.probes_per_sec.max(0.1));
    let mut probes: Vec<Probe> = Vec::new();
    let (mut consensus_rss, mut node_rss) = (0.0f64, 0.0f64);
    let mut next_probe = Instant::now();
    let mut next_rss = Instant::now();
    let deadline_after_load = Duration::from_secs(60 + 10 * u64::from(interval));
    let mut load_done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_rss {
            next_rss = now + Duration::from_millis(500);
            for n in &pids {
                node_rss = node_rss.max(n.iter().map(|(_, p)| rss_mb(*p)).sum());
                for (s, p) in n {
                    if *s == Service::Consensus {
                        consensus_rss = consensus_rss.max(rss_mb(*p));
                    }
                }
            }
        }
        if load_done_at.is_none() && load.done() {
            load_done_at = Some(now);
        }
        if load_done_at.is_none() && now >= next_probe {
            next_probe = now + probe_every;
            probes.push(probe(&chain.0, probes.len() % nodes));
            continue;
        }
        if let Some(done) = load_done_at {
            if watchers.quiet(&probes) || done.elapsed() > deadline_after_load {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu1 = (ticks_of(&consensus_pids), ticks_of(&all_pids));
    let load_accepted = load.finish()?;
    let ledger = Ledger::of(&watchers.seen(), &probes, nodes, started);
    drop(watchers);
    let ticks = clock_ticks_per_sec();
    let blocks = ledger.blocks.max(1) as f64;
    let per_block = |t: u64| t as f64 / ticks * 1000.0 / blocks;
    Ok(CitaCase {
        consensus: consensus.to_string(),
        block_interval: interval,
        nodes,
        accepted: load_accepted + probes.iter().filter(|p| p.hash.is_some()).count() as u64,
        ledger,
        consensus_cpu_ms_per_block: per_block(cpu1.0 - cpu0.0),
        chain_cpu_ms_per_block: per_block(cpu1.1 - cpu0.1),
        consensus_rss_mb: consensus_rss,
        node_rss_mb: node_rss,
    })
}

/// Waits for two more blocks on node 0: every service has settled.
pub(super) fn settle(chain: &Chain, interval: u32) -> anyhow::Result<()> {
    let h0 = chain.height(0).unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(20 + 4 * u64::from(interval));
    while chain.height(0).is_none_or(|h| h < h0 + 2) {
        ensure!(
            Instant::now() < deadline,
            "the chain stopped at height {h0}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Sends one probe transaction through node `node` with `cldi send`.
pub(super) fn probe(chain: &Chain, node: usize) -> Probe {
    let sent = Instant::now();
    let out = chain
        .cldi(node)
        .args(["-t", "3", "send", PROBE_TO])
        .output();
    let hash = out
        .ok()
        .and_then(|o| parse_tx_hash(&String::from_utf8_lossy(&o.stdout)));
    Probe { sent, hash }
}

/// One `cldi bench send` per node, each sending `share` transactions to its own node.
pub(super) struct Load {
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
    done: Arc<AtomicBool>,
}

impl Load {
    /// Starts the senders.
    pub(super) fn start(chain: &Chain, share: u64, concurrency: u64) -> anyhow::Result<Self> {
        let senders: Vec<std::process::Child> = (0..chain.state.nodes.len())
            .map(|i| {
                chain
                    .cldi(i)
                    .args([
                        "bench",
                        "send",
                        "--disable-watch",
                        "-c",
                        &concurrency.to_string(),
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
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
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
            flag.store(true, Ordering::SeqCst);
            (accepted, errors)
        });
        Ok(Load { thread, done })
    }

    /// Whether every sender has exited.
    pub(super) fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits for the senders; the transactions they saw accepted.
    pub(super) fn finish(self) -> anyhow::Result<u64> {
        let (accepted, errors) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
        if !errors.is_empty() {
            eprintln!("cldi bench send reported: {}", errors.join(" | "));
        }
        Ok(accepted)
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
/// shows; the longest gap of all rounds).
fn combine(rs: &[CitaCase]) -> CitaCase {
    let m = |f: fn(&CitaCase) -> f64| median(rs.iter().map(f).collect());
    let sum = |f: fn(&CitaCase) -> u64| rs.iter().map(f).sum::<u64>();
    CitaCase {
        consensus: rs[0].consensus.clone(),
        block_interval: rs[0].block_interval,
        nodes: rs[0].nodes,
        accepted: sum(|r| r.accepted),
        ledger: Ledger {
            committed: sum(|r| r.ledger.committed),
            duplicates: sum(|r| r.ledger.duplicates),
            probes_lost: sum(|r| r.ledger.probes_lost),
            heights_compared: sum(|r| r.ledger.heights_compared),
            hash_mismatches: sum(|r| r.ledger.hash_mismatches),
            tx_per_sec: m(|r| r.ledger.tx_per_sec),
            finality_p50_s: m(|r| r.ledger.finality_p50_s),
            finality_p99_s: m(|r| r.ledger.finality_p99_s),
            gap_p50_s: m(|r| r.ledger.gap_p50_s),
            gap_p99_s: m(|r| r.ledger.gap_p99_s),
            gap_max_s: rs.iter().map(|r| r.ledger.gap_max_s).fold(0.0, f64::max),
            blocks: sum(|r| r.ledger.blocks),
        },
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
            r.ledger.tx_per_sec,
            r.ledger.finality_p50_s,
            r.ledger.finality_p99_s,
            r.ledger.gap_p50_s,
            r.ledger.gap_p99_s,
            r.ledger.gap_max_s,
            r.ledger.blocks,
            r.consensus_cpu_ms_per_block,
            r.chain_cpu_ms_per_block,
            r.consensus_rss_mb,
            r.node_rss_mb,
            r.accepted,
            r.ledger.committed,
            r.ledger.duplicates,
            r.ledger.probes_lost,
            r.ledger.hash_mismatches
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
                    r.ledger.tx_per_sec, r.ledger.finality_p50_s, r.ledger.finality_p99_s, r.ledger.gap_max_s, r.accepted, r.ledger.committed
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
        .filter_map(|r| {
            let p = r.ledger.problems(r.accepted);
            (!p.is_empty()).then(|| {
                format!(
                    "{} at {} s: {}",
                    r.consensus,
                    r.block_interval,
                    p.join(", ")
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
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
}
