//! `cargo xtask bench`: the criterion benches, then a cluster bench of real processes
//! (optimised builds) that can run any CITA-Cloud consensus binary, side by side with
//! ours.
//!
//! Every figure of the cluster bench is taken from outside the consensus processes, so
//! it means the same for any implementation:
//! - blocks/s from the development controllers' chains;
//! - block latency from each controller's own clock, from the `GetProposal` that
//!   produced a block to the `CommitBlock` of that block (the leader's controller);
//! - CPU (user + system) and RSS of the consensus processes from `/proc`;
//! - per block and node: controller calls (counted by the controllers), network
//!   messages (`SendMsg`/`Broadcast`, counted by the development network), and log
//!   lines (the consensus logs). RocksDB writes and fsyncs come from our own metrics
//!   and are shown only where a node exports them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::cluster::{Cluster, Spec};
use crate::harness::{build_profile, median, scrape, Profile};
use crate::procfs::{clock_ticks_per_sec, cpu_ticks, disk_write_bytes, machine_ticks, rss_mb};

/// The last step of [`crate::reference::reference_help`] for `--compare`.
const LAST_STEP: &str =
    "cargo xtask bench --cluster-only --compare $REF/consensus_raft/target/release/consensus";

/// `cargo xtask bench`
#[derive(Debug, clap::Args)]
#[command(after_long_help = crate::reference::reference_help(LAST_STEP))]
pub struct Args {
    /// Seconds measured per cluster case.
    #[arg(long, default_value_t = 15)]
    pub secs: u64,
    /// Only the cluster bench (skip cargo bench).
    #[arg(long)]
    pub cluster_only: bool,
    /// Use debug binaries (checks the bench itself; figures are not representative).
    #[arg(long)]
    pub debug: bool,
    /// Run this CITA consensus binary instead of ours; repeat to mix binaries in one
    /// cluster (node i runs the ((i - 1) mod count)-th).
    #[arg(long = "consensus-bin")]
    pub consensus_bins: Vec<PathBuf>,
    /// Run ours and this binary back to back and print both rows and the ratios.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 5])]
    pub nodes: Vec<usize>,
    /// Seconds of the idle case (block_interval 3, the service's default timing); 0
    /// skips it.
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// Artificial controller delay on every call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub controller_delay_ms: u64,
    /// Pad blocks to these many bytes, one set of cases per size (0: the development
    /// controller's own few dozen bytes).
    #[arg(long, value_delimiter = ',', default_values_t = [0usize])]
    pub block_bytes: Vec<usize>,
    /// Run every case this many times, binaries alternating, and report the median of
    /// each figure (a loopback cluster on a shared machine varies from run to run).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Instead of the cases above: one 3-node cluster for this many seconds, printing
    /// blocks/s per minute (does the rate hold up?).
    #[arg(long)]
    pub soak: Option<u64>,
    /// Instead of the consensus cases: the key-value example (3 `craft-kv` nodes) side by
    /// side with a 3-member etcd cluster, both driven at the leader by closed-loop
    /// clients, each through its native API (`--kv-driver`): writes, then a 90/10
    /// linearizable read/write mix (`--secs` per case; `--rounds` gives medians).
    /// Results in target/bench/kv.json.
    #[arg(long)]
    pub kv: bool,
    /// How `--kv` drives the systems: `native` (closed-loop clients in this process:
    /// craft-kv over HTTP/1.1, etcd over its gRPC API) or `wrk` (both over HTTP/1.1, etcd
    /// through its JSON gateway).
    #[arg(long, value_enum, default_value_t = crate::bench_kv::Driver::Native)]
    pub kv_driver: crate::bench_kv::Driver,
    /// Concurrent clients (wrk connections) of the `--kv` write cases.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256, 1024])]
    pub kv_connections: Vec<usize>,
    /// Concurrent clients (wrk connections) of the `--kv` read/write mix cases.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 64])]
    pub kv_mix_connections: Vec<usize>,
    /// The etcd binary of `--kv` (default: `etcd` on PATH; apt-get install -y
    /// etcd-server). Without one, craft-kv runs alone.
    #[arg(long, requires = "kv")]
    pub etcd: Option<PathBuf>,
    /// With --kv: this `craft-kv` binary (an optimised build, unless --debug says it is
    /// not) instead of building the workspace.
    #[arg(long, requires = "kv")]
    pub kv_bin: Option<PathBuf>,
    /// With `--kv`: instead of etcd, craft-kv with TLS off and on (mutual TLS between
    /// members, HTTPS for wrk), writes only; results in target/bench/kv-tls.json.
    #[arg(long, requires = "kv")]
    pub tls: bool,
    /// The real-chain benchmark.
    #[command(flatten)]
    pub cita: crate::cita_chain::bench::CitaArgs,
}

/// What one cluster case measured.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Which binaries ran.
    pub label: String,
    /// Cluster size.
    pub nodes: usize,
    /// Blocks padded to this many bytes (0: not padded).
    pub block_bytes: usize,
    /// Blocks committed per second.
    pub blocks_per_sec: f64,
    /// Median block latency (ms).
    pub p50_ms: f64,
    /// 99th percentile block latency (ms).
    pub p99_ms: f64,
    /// CPU of all consensus processes per block (ms).
    pub cpu_ms_per_block: f64,
    /// CPU of the development controllers and network per block (ms): the harness's
    /// share of the machine, the same work whichever consensus binary runs.
    pub harness_cpu_ms_per_block: f64,
    /// Largest resident set of a consensus process at the end (MB).
    pub rss_mb: f64,
    /// Per block and node: controller calls.
    pub controller_calls: f64,
    /// Per block and node: network messages sent.
    pub network_msgs: f64,
    /// Per block and node: bytes the consensus process caused to be written to the disk
    /// (`write_bytes` in `/proc/PID/io`: WAL, segment and SST files, block files; for
    /// any implementation).
    pub disk_bytes: f64,
    /// Per block and node: RocksDB write batches (ours only).
    pub store_writes: Option<f64>,
    /// Per block and node: fsyncs (ours only).
    pub fsyncs: Option<f64>,
    /// Per block and node: log lines.
    pub log_lines: f64,
    /// Share of the machine's CPU time the hypervisor took away during the case
    /// (`steal` in `/proc/stat`): high values mean the figures are not comparable.
    pub steal_percent: f64,
}

/// What the idle case measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Which binaries ran.
    pub label: String,
    /// Blocks padded to this many bytes (0: not padded).
    pub block_bytes: usize,
    /// Median and 99th percentile block latency (ms), as in the throughput cases.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Mean CPU of one consensus process, percent of one core.
    pub cpu_percent: f64,
    /// Largest resident set of a consensus process (MB).
    pub rss_mb: f64,
}

/// Counters read at one moment.
#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    height: u64,
    cpu_ticks: u64,
    harness_ticks: u64,
    controller_calls: f64,
    network_msgs: f64,
    latency: BTreeMap<u64, f64>,
    store_writes: Option<f64>,
    fsyncs: Option<f64>,
    log_lines: f64,
    disk_bytes: u64,
    /// `(steal, all)` clock ticks of the whole machine.
    machine: (u64, u64),
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn count_lines(path: &Path) -> f64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as f64)
        .unwrap_or(0.0)
}

fn consensus_pids(cluster: &Cluster) -> Vec<u32> {
    cluster
        .state
        .nodes
        .iter()
        .filter_map(|n| n.consensus_pid)
        .collect()
}

fn sample(cluster: &Cluster) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        machine: machine_ticks(),
        ..Default::default()
    };
    s.height = cluster
        .views()
        .iter()
        .map(|v| v.chain_height)
        .max()
        .unwrap_or(0);
    s.cpu_ticks = consensus_pids(cluster).into_iter().map(cpu_ticks).sum();
    s.disk_bytes = consensus_pids(cluster)
        .into_iter()
        .map(disk_write_bytes)
        .sum();
    s.harness_ticks = cluster
        .state
        .nodes
        .iter()
        .filter_map(|n| n.controller_pid)
        .chain(cluster.state.network_pid)
        .map(cpu_ticks)
        .sum();
    for n in &cluster.state.nodes {
        let dir = cluster.node_dir(n.index);
        if let Some(stats) = read_json(&dir.join("controller-stats.json")) {
            for call in ["get_proposal", "check_proposal", "commit_block"] {
                s.controller_calls += stats[call].as_f64().unwrap_or(0.0);
            }
            for bucket in stats["latency_us"].as_array().into_iter().flatten() {
                let le = bucket[0].as_u64().unwrap_or(0);
                let le = if le == 0 { u64::MAX } else { le };
                *s.latency.entry(le).or_default() += bucket[1].as_f64().unwrap_or(0.0);
            }
        }
        s.log_lines += count_lines(&dir.join("consensus.log"));
        if let Some(m) = scrape(n.metrics_port) {
            if let Some(w) = m.get("consensus_store_writes_total") {
                *s.store_writes.get_or_insert(0.0) += w;
            }
            if let Some(f) = m.get("consensus_fsync_latency_seconds_count") {
                *s.fsyncs.get_or_insert(0.0) += f;
            }
        }
    }
    if let Some(net) = read_json(&cluster.dir.join("network-stats.json")) {
        s.network_msgs =
            net["send_msg"].as_f64().unwrap_or(0.0) + net["broadcast"].as_f64().unwrap_or(0.0);
    }
    s
}

/// The `q` quantile (ms) of the histogram growth between two samples (`le` in µs,
/// counts per bucket), interpolated inside the bucket.
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let counts: Vec<(u64, f64)> = after
        .iter()
        .map(|(le, v)| (*le, v - before.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total: f64 = counts.iter().map(|c| c.1).sum();
    if total <= 0.0 {
        return f64::NAN;
    }
    let target = total * q;
    let (mut seen, mut prev_le) = (0.0, 0u64);
    for (le, count) in counts {
        if count > 0.0 && seen + count >= target {
            if le == u64::MAX {
                return prev_le as f64 / 1e3;
            }
            let frac = (target - seen) / count;
            return (prev_le as f64 + frac * (le - prev_le) as f64) / 1e3;
        }
        seen += count;
        prev_le = le;
    }
    f64::NAN
}

fn label(bins: &[PathBuf]) -> String {
    if bins.is_empty() {
        return "ours".into();
    }
    bins.iter()
        .map(|b| b.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The timing the comparison uses: 50 ms tick, heartbeat 3, election 20.
fn throughput_spec(args: &Args, nodes: usize, block_bytes: usize, bins: &[PathBuf]) -> Spec {
    Spec {
        tick_ms: 50,
        heartbeat_tick: 3,
        election_tick: 20,
        controller_delay_ms: args.controller_delay_ms,
        controller_no_fsync: true,
        consensus_bins: bins.to_vec(),
        block_bytes,
        stats: true,
        ..Spec::new(nodes, 0)
    }
}

fn wait_height(cluster: &Cluster, height: u64, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cluster.views().iter().any(|v| v.chain_height >= height) {
        anyhow::ensure!(
            start.elapsed() < within,
            "cluster in {} reached no height {height} within {within:?}",
            cluster.dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn per(x: f64, blocks: f64, nodes: usize) -> f64 {
    x / blocks / nodes as f64
}

fn bench_case(
    root: &Path,
    bin_dir: &Path,
    args: &Args,
    nodes: usize,
    block_bytes: usize,
    bins: &[PathBuf],
    tag: &str,
) -> anyhow::Result<CaseResult> {
    let dir = root
        .join("target")
        .join("bench")
        .join(format!("{tag}-{nodes}n"));
    let spec = throughput_spec(args, nodes, block_bytes, bins);
    let cluster = Cluster::create(&dir, bin_dir, &spec, false)?;
    let result = (|| {
        wait_height(&cluster, 20, Duration::from_secs(60))?;
        let s0 = sample(&cluster);
        std::thread::sleep(Duration::from_secs(args.secs));
        let s1 = sample(&cluster);
        let elapsed = match (s0.at, s1.at) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => args.secs as f64,
        };
        let blocks = (s1.height - s0.height) as f64;
        anyhow::ensure!(blocks > 0.0, "no blocks committed during the measurement");
        let ticks = clock_ticks_per_sec();
        let rss = consensus_pids(&cluster)
            .into_iter()
            .map(rss_mb)
            .fold(0.0, f64::max);
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Ok(CaseResult {
            label: label(bins),
            nodes,
            block_bytes,
            blocks_per_sec: blocks / elapsed,
            p50_ms: quantile(&s0.latency, &s1.latency, 0.5),
            p99_ms: quantile(&s0.latency, &s1.latency, 0.99),
            cpu_ms_per_block: (s1.cpu_ticks - s0.cpu_ticks) as f64 / ticks * 1000.0 / blocks,
            harness_cpu_ms_per_block: (s1.harness_ticks - s0.harness_ticks) as f64 / ticks * 1000.0
                / blocks,
            rss_mb: rss,
            controller_calls: per(s1.controller_calls - s0.controller_calls, blocks, nodes),
            network_msgs: per(s1.network_msgs - s0.network_msgs, blocks, nodes),
            disk_bytes: per(
                s1.disk_bytes.saturating_sub(s0.disk_bytes) as f64,
                blocks,
                nodes,
            ),
            store_writes: delta(s0.store_writes, s1.store_writes).map(|d| per(d, blocks, nodes)),
            fsyncs: delta(s0.fsyncs, s1.fsyncs).map(|d| per(d, blocks, nodes)),
            log_lines: per(s1.log_lines - s0.log_lines, blocks, nodes),
            steal_percent: 100.0 * (s1.machine.0 - s0.machine.0) as f64
                / (s1.machine.1 - s0.machine.1).max(1) as f64,
        })
    })();
    cluster.down();
    result
}

fn bench_idle(
    root: &Path,
    bin_dir: &Path,
    args: &Args,
    block_bytes: usize,
    bins: &[PathBuf],
    tag: &str,
) -> anyhow::Result<IdleResult> {
    let dir = root
        .join("target")
        .join("bench")
        .join(format!("{tag}-idle"));
    // The service's default timing: 200 ms tick, heartbeat every 15, election 50.
    let spec = Spec {
        tick_ms: 200,
        heartbeat_tick: 15,
        election_tick: 50,
        consensus_bins: bins.to_vec(),
        block_bytes,
        stats: true,
        ..Spec::new(3, 3)
    };
    let cluster = Cluster::create(&dir, bin_dir, &spec, false)?;
    let result = (|| {
        wait_height(&cluster, 2, Duration::from_secs(60))?;
        let pids = consensus_pids(&cluster);
        let t0 = Instant::now();
        let s0 = sample(&cluster);
        let c0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        std::thread::sleep(Duration::from_secs(args.idle_secs));
        let c1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        let s1 = sample(&cluster);
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (c1 - c0) as f64 / clock_ticks_per_sec() / secs / pids.len().max(1) as f64;
        Ok(IdleResult {
            label: label(bins),
            block_bytes,
            p50_ms: quantile(&s0.latency, &s1.latency, 0.5),
            p99_ms: quantile(&s0.latency, &s1.latency, 0.99),
            cpu_percent: cpu * 100.0,
            rss_mb: pids.iter().map(|p| rss_mb(*p)).fold(0.0, f64::max),
        })
    })();
    cluster.down();
    result
}

/// Each figure's median over `results` (all of one binary and size).
fn median_case(results: Vec<CaseResult>) -> CaseResult {
    let m = |f: fn(&CaseResult) -> f64| median(results.iter().map(f).collect());
    let mo = |f: fn(&CaseResult) -> Option<f64>| {
        let xs: Vec<f64> = results.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| median(xs))
    };
    CaseResult {
        label: results.first().map(|r| r.label.clone()).unwrap_or_default(),
        nodes: results.first().map_or(0, |r| r.nodes),
        block_bytes: results.first().map_or(0, |r| r.block_bytes),
        blocks_per_sec: m(|r| r.blocks_per_sec),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        cpu_ms_per_block: m(|r| r.cpu_ms_per_block),
        harness_cpu_ms_per_block: m(|r| r.harness_cpu_ms_per_block),
        rss_mb: m(|r| r.rss_mb),
        controller_calls: m(|r| r.controller_calls),
        network_msgs: m(|r| r.network_msgs),
        disk_bytes: m(|r| r.disk_bytes),
        store_writes: mo(|r| r.store_writes),
        fsyncs: mo(|r| r.fsyncs),
        log_lines: m(|r| r.log_lines),
        steal_percent: m(|r| r.steal_percent),
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn print_header() {
    println!(
        "{:<10} {:>5} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>8} | per block and node: {:>6} {:>6} {:>9} {:>6} {:>6} {:>6}",
        "binary", "nodes", "block", "blocks/s", "MiB/s", "p50 ms", "p99 ms", "cpu ms/b", "RSS MB", "steal", "dev ms/b", "ctl", "msgs", "disk", "writes", "fsyncs", "logs"
    );
}

/// A byte count in the unit that reads best.
fn bytes_label(bytes: f64) -> String {
    match bytes {
        b if b >= f64::from(1 << 20) => format!("{:.2} MiB", b / f64::from(1 << 20)),
        b if b >= 1024.0 => format!("{:.0} KiB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}

fn print_case(name: &str, r: &CaseResult) {
    let mib_per_sec = r.blocks_per_sec * r.block_bytes as f64 / f64::from(1 << 20);
    // Disk bytes per block and node, and for padded blocks as a multiple of the block.
    let disk = match r.block_bytes {
        0 => bytes_label(r.disk_bytes),
        b => format!("{:.2}x", r.disk_bytes / b as f64),
    };
    println!(
        "{:<10} {:>5} {:>8} {:>9.1} {:>8.1} {:>8.2} {:>8.2} {:>9.2} {:>7.1} {:>5.1}% {:>8.2} | {:>26.2} {:>6.2} {:>9} {:>6} {:>6} {:>6.2}",
        name,
        r.nodes,
        if r.block_bytes == 0 { "-".to_owned() } else { bytes_label(r.block_bytes as f64) },
        r.blocks_per_sec,
        mib_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.cpu_ms_per_block,
        r.rss_mb,
        r.steal_percent,
        r.harness_cpu_ms_per_block,
        r.controller_calls,
        r.network_msgs,
        disk,
        opt(r.store_writes),
        opt(r.fsyncs),
        r.log_lines,
    );
}

fn soak(root: &Path, bin_dir: &Path, args: &Args, secs: u64) -> anyhow::Result<()> {
    let dir = root.join("target").join("bench").join("soak");
    let block_bytes = args.block_bytes.first().copied().unwrap_or(0);
    let spec = throughput_spec(args, 3, block_bytes, &args.consensus_bins);
    let cluster = Cluster::create(&dir, bin_dir, &spec, false)?;
    let result = (|| {
        wait_height(&cluster, 20, Duration::from_secs(60))?;
        println!(
            "soak: 3 nodes, block_interval 0, {secs} s ({})",
            label(&args.consensus_bins)
        );
        println!(
            "{:>7} {:>10} {:>9} {:>9} {:>10} {:>12}",
            "minute", "blocks/s", "p50 ms", "p99 ms", "cpu ms/b", "max RSS MB"
        );
        // The largest consensus process's resident memory: a leak shows as growth.
        let max_rss = || {
            consensus_pids(&cluster)
                .into_iter()
                .map(rss_mb)
                .fold(0.0, f64::max)
        };
        let start = Instant::now();
        let mut prev = sample(&cluster);
        let mut rates = Vec::new();
        let mut rss = Vec::new();
        let mut minute = 0;
        while start.elapsed() < Duration::from_secs(secs) {
            let left = Duration::from_secs(secs).saturating_sub(start.elapsed());
            std::thread::sleep(left.min(Duration::from_secs(60)));
            let now = sample(&cluster);
            let elapsed = match (prev.at, now.at) {
                (Some(a), Some(b)) => (b - a).as_secs_f64(),
                _ => 60.0,
            };
            let blocks = (now.height - prev.height) as f64;
            minute += 1;
            let rate = blocks / elapsed;
            rates.push(rate);
            rss.push(max_rss());
            println!(
                "{minute:>7} {rate:>10.1} {:>9.2} {:>9.2} {:>10.2} {:>12.1}",
                quantile(&prev.latency, &now.latency, 0.5),
                quantile(&prev.latency, &now.latency, 0.99),
                (now.cpu_ticks - prev.cpu_ticks) as f64 / clock_ticks_per_sec() * 1000.0
                    / blocks.max(1.0),
                rss.last().copied().unwrap_or(0.0),
            );
            prev = now;
        }
        if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
            println!("blocks/s, last minute / first minute: {:.3}", last / first);
        }
        if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
            let peak = rss.iter().copied().fold(0.0, f64::max);
            println!("max RSS: first minute {first:.1} MB, last {last:.1} MB, peak {peak:.1} MB");
        }
        Ok(())
    })();
    cluster.down();
    result
}

/// Runs the benches.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    for bin in args.consensus_bins.iter().chain(&args.compare) {
        anyhow::ensure!(
            bin.is_file(),
            "no consensus binary at {}\n\n{}",
            bin.display(),
            crate::reference::reference_help(LAST_STEP)
        );
    }
    if args.cita.cita_chain {
        return crate::cita_chain::bench::run(root, &args.cita, args.debug, args.rounds);
    }
    if !args.cluster_only && !args.kv {
        // `--workspace`: the same feature resolution as the binaries built below, so one
        // optimised RocksDB build serves both.
        crate::harness::cargo(root, &["bench", "--workspace"], &[])?;
    }
    if args.kv {
        let kv_bin = match &args.kv_bin {
            Some(bin) => {
                anyhow::ensure!(bin.is_file(), "no craft-kv binary at {}", bin.display());
                bin.clone()
            }
            None => build_profile(root, Profile::for_figures(args.debug))?.join("craft-kv"),
        };
        return crate::bench_kv::run(
            root,
            &crate::bench_kv::Options {
                kv_bin: &kv_bin,
                debug: args.debug,
                secs: args.secs,
                driver: args.kv_driver,
                write_connections: &args.kv_connections,
                mix_connections: &args.kv_mix_connections,
                etcd: args.etcd.as_deref(),
                rounds: args.rounds,
                tls: args.tls,
            },
        );
    }
    let bin_dir = build_profile(root, Profile::for_figures(args.debug))?;
    if let Some(secs) = args.soak {
        return soak(root, &bin_dir, args, secs);
    }
    let runs: Vec<(String, Vec<PathBuf>)> = match &args.compare {
        Some(other) => vec![
            ("ours".into(), Vec::new()),
            ("theirs".into(), vec![other.clone()]),
        ],
        None => vec![(label(&args.consensus_bins), args.consensus_bins.clone())],
    };
    println!(
        "\ncluster bench: block_interval 0, tick 50 ms, heartbeat 3, election 20, fsync on for ours, \
         instant development controller, {} s per case{}",
        args.secs,
        if args.debug { " (DEBUG binaries)" } else { "" }
    );
    for (name, bins) in &runs {
        if *name != label(bins) {
            println!("{name}: {}", label(bins));
        }
    }
    print_header();
    let mut cases: Vec<(String, CaseResult)> = Vec::new();
    let sizes: Vec<(usize, usize)> = args
        .block_bytes
        .iter()
        .flat_map(|&b| args.nodes.iter().map(move |&n| (b, n)))
        .collect();
    for (block_bytes, nodes) in sizes {
        let mut all: Vec<Vec<CaseResult>> = vec![Vec::new(); runs.len()];
        for round in 0..args.rounds.max(1) {
            for (i, (name, bins)) in runs.iter().enumerate() {
                let tag = format!("case{i}");
                let r = match bench_case(root, &bin_dir, args, nodes, block_bytes, bins, &tag) {
                    Ok(r) => r,
                    // The existing service cannot commit blocks past its gRPC limit: say
                    // so and go on with the other cases.
                    Err(e) if !bins.is_empty() => {
                        println!(
                            "{name:<10} {nodes:>5} {:>8} could not commit: {e:#}",
                            bytes_label(block_bytes as f64)
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if args.rounds > 1 {
                    print_case(&format!("{name} #{}", round + 1), &r);
                }
                all[i].push(r);
            }
        }
        for ((name, _), results) in runs.iter().zip(all) {
            if results.is_empty() {
                continue;
            }
            let r = median_case(results);
            if args.rounds > 1 {
                print_case(&format!("{name} med"), &r);
            } else {
                print_case(name, &r);
            }
            cases.push((name.clone(), r));
        }
    }
    let mut idle = Vec::new();
    if args.idle_secs > 0 {
        // The largest block asked for: a block every 3 s, as a chain with traffic runs.
        let block_bytes = args.block_bytes.iter().copied().max().unwrap_or(0);
        println!(
            "\nidle: 3 nodes, block_interval 3, tick 200 ms, heartbeat 15, election 50, {} s, blocks of {}",
            args.idle_secs,
            if block_bytes == 0 { "-".to_owned() } else { bytes_label(block_bytes as f64) },
        );
        for (i, (name, bins)) in runs.iter().enumerate() {
            let r = match bench_idle(root, &bin_dir, args, block_bytes, bins, &format!("case{i}")) {
                Ok(r) => r,
                Err(e) if !bins.is_empty() => {
                    println!("{name:<10} could not commit: {e:#}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            println!(
                "{name:<10} CPU {:.3}% of a core per consensus process, RSS {:.1} MB, block latency p50 {:.1} ms, p99 {:.1} ms",
                r.cpu_percent, r.rss_mb, r.p50_ms, r.p99_ms
            );
            idle.push((name.clone(), r));
        }
    }
    if args.compare.is_some() {
        println!("\nratios, ours / theirs:");
        for (_, a) in cases.iter().filter(|(n, _)| n == "ours") {
            let (nodes, block_bytes) = (a.nodes, a.block_bytes);
            let theirs = cases
                .iter()
                .find(|(n, r)| n == "theirs" && r.nodes == nodes && r.block_bytes == block_bytes)
                .map(|(_, r)| r);
            if let Some(b) = theirs {
                println!(
                    "{nodes} nodes, blocks of {}: blocks/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per block {:.2}x, RSS {:.2}x",
                    if block_bytes == 0 { "-".to_owned() } else { bytes_label(block_bytes as f64) },
                    a.blocks_per_sec / b.blocks_per_sec,
                    a.p50_ms / b.p50_ms,
                    a.p99_ms / b.p99_ms,
                    a.cpu_ms_per_block / b.cpu_ms_per_block,
                    a.rss_mb / b.rss_mb,
                );
            }
        }
        if let [(_, a), (_, b)] = idle.as_slice() {
            println!(
                "idle: CPU {:.2}x, RSS {:.2}x",
                a.cpu_percent / b.cpu_percent,
                a.rss_mb / b.rss_mb
            );
        }
    }
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("cluster.json");
    let json = serde_json::json!({
        "cases": cases.iter().map(|(n, r)| serde_json::json!({"run": n, "result": r})).collect::<Vec<_>>(),
        "idle": idle.iter().map(|(n, r)| serde_json::json!({"run": n, "result": r})).collect::<Vec<_>>(),
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_of_histogram_growth() {
        // Buckets of 1 ms and 2 ms (in µs); 50 samples in each after, none before.
        let before: BTreeMap<u64, f64> = [(1000, 0.0), (2000, 0.0), (u64::MAX, 0.0)].into();
        let after: BTreeMap<u64, f64> = [(1000, 50.0), (2000, 50.0), (u64::MAX, 0.0)].into();
        assert!((quantile(&before, &after, 0.5) - 1.0).abs() < 1e-9);
        assert!((quantile(&before, &after, 0.75) - 1.5).abs() < 1e-9);
        assert!(quantile(&before, &before, 0.5).is_nan());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
