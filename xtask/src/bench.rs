//! `cargo xtask bench`: the criterion/engine benches and a cluster bench of real
//! processes (release builds). Prints tables and writes JSON under `target/bench/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::cluster::{build_profile, scrape, Cluster, Profile, Spec};

/// `cargo xtask bench`
#[derive(Debug, clap::Args)]
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
}

/// One cluster bench result.
#[derive(Debug, Serialize)]
pub struct ClusterResult {
    nodes: usize,
    controller_delay_ms: u64,
    blocks_per_sec: f64,
    p50_block_ms: f64,
    p99_block_ms: f64,
    median_fsync_ms: f64,
    median_rpc_ms: f64,
    limit_blocks_per_sec: f64,
}

/// Cumulative histogram buckets `le -> count` for `name`, summed over `samples`.
fn buckets(samples: &[BTreeMap<String, f64>], name: &str) -> BTreeMap<u64, f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: BTreeMap<u64, f64> = BTreeMap::new();
    for s in samples {
        for (k, v) in s {
            if let Some(rest) = k.strip_prefix(&prefix) {
                let le = rest.trim_end_matches("\"}");
                let nanos = if le == "+Inf" {
                    u64::MAX
                } else {
                    le.parse::<f64>()
                        .map(|f| (f * 1e9) as u64)
                        .unwrap_or(u64::MAX)
                };
                *out.entry(nanos).or_default() += v;
            }
        }
    }
    out
}

/// The `q` quantile in milliseconds of the difference of two cumulative histograms,
/// interpolated linearly inside the bucket.
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let counts: Vec<(u64, f64)> = after
        .iter()
        .map(|(le, v)| (*le, v - before.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = counts.last().map(|c| c.1).unwrap_or(0.0);
    if total <= 0.0 {
        return f64::NAN;
    }
    let target = total * q;
    let mut prev_le = 0u64;
    let mut prev_count = 0.0;
    for (le, count) in counts {
        if count >= target {
            if le == u64::MAX {
                return prev_le as f64 / 1e6;
            }
            let frac = if count > prev_count {
                (target - prev_count) / (count - prev_count)
            } else {
                1.0
            };
            return (prev_le as f64 + frac * (le - prev_le) as f64) / 1e6;
        }
        prev_le = le;
        prev_count = count;
    }
    f64::NAN
}

fn fine_buckets() -> Vec<f64> {
    let mut b = Vec::new();
    let mut x = 0.00005;
    while x < 2.0 {
        b.push((x * 1e6_f64).round() / 1e6);
        x *= 1.15;
    }
    b.dedup();
    b
}

fn bench_cluster(
    root: &Path,
    bin_dir: &Path,
    nodes: usize,
    delay: u64,
    secs: u64,
) -> anyhow::Result<ClusterResult> {
    let dir = root
        .join("target")
        .join("bench")
        .join(format!("cluster-{nodes}n-{delay}ms"));
    let spec = Spec {
        controller_delay_ms: delay,
        buckets: Some(fine_buckets()),
        controller_no_fsync: true,
        ..Spec::new(nodes, 0)
    };
    let cluster = Cluster::create(&dir, bin_dir, &spec, false)?;
    let result = (|| {
        let start = Instant::now();
        while !cluster.views().iter().any(|v| v.chain_height >= 20) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "cluster made no progress"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let scrape_all = || -> Vec<BTreeMap<String, f64>> {
            cluster
                .state
                .nodes
                .iter()
                .filter_map(|n| scrape(n.metrics_port))
                .collect()
        };
        let height = || {
            cluster
                .views()
                .iter()
                .map(|v| v.chain_height)
                .max()
                .unwrap_or(0)
        };
        let m0 = scrape_all();
        let (h0, t0) = (height(), Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        let m1 = scrape_all();
        let (h1, t1) = (height(), Instant::now());
        let rate = (h1 - h0) as f64 / (t1 - t0).as_secs_f64();
        let lat = |q| {
            quantile(
                &buckets(&m0, "consensus_block_latency_seconds"),
                &buckets(&m1, "consensus_block_latency_seconds"),
                q,
            )
        };
        let fsync = quantile(
            &buckets(&m0, "consensus_fsync_latency_seconds"),
            &buckets(&m1, "consensus_fsync_latency_seconds"),
            0.5,
        );
        let rpc = quantile(
            &buckets(&m0, "consensus_check_proposal_seconds"),
            &buckets(&m1, "consensus_check_proposal_seconds"),
            0.5,
        );
        Ok(ClusterResult {
            nodes,
            controller_delay_ms: delay,
            blocks_per_sec: rate,
            p50_block_ms: lat(0.5),
            p99_block_ms: lat(0.99),
            median_fsync_ms: fsync,
            median_rpc_ms: rpc,
            limit_blocks_per_sec: 1000.0 / (fsync + 4.0 * rpc),
        })
    })();
    cluster.down();
    result
}

/// Runs the benches.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    if !args.cluster_only {
        // `--workspace`: the same feature resolution as the binaries built below, so one
        // optimised RocksDB build serves both.
        crate::ci::cargo(root, &["bench", "--workspace"], &[])?;
    }
    // The bench profile (optimised like release) shares one RocksDB build with
    // `cargo bench` above.
    let bin_dir = build_profile(
        root,
        if args.debug {
            Profile::Debug
        } else {
            Profile::Bench
        },
    )?;
    let mut results = Vec::new();
    println!(
        "\ncluster bench: block_interval = 0, fsync on, loopback, {} s per case",
        args.secs
    );
    println!(
        "{:>5} {:>8} {:>10} {:>9} {:>9} {:>11} {:>10} {:>12}",
        "nodes", "ctl ms", "blocks/s", "p50 ms", "p99 ms", "fsync p50", "rpc p50", "limit/s"
    );
    for nodes in [3, 5] {
        for delay in [0, 1] {
            let r = bench_cluster(root, &bin_dir, nodes, delay, args.secs)?;
            println!(
                "{:>5} {:>8} {:>10.1} {:>9.2} {:>9.2} {:>11.3} {:>10.3} {:>12.1}",
                r.nodes,
                r.controller_delay_ms,
                r.blocks_per_sec,
                r.p50_block_ms,
                r.p99_block_ms,
                r.median_fsync_ms,
                r.median_rpc_ms,
                r.limit_blocks_per_sec
            );
            results.push(r);
        }
    }
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("cluster.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_of_histogram_difference() {
        let before: BTreeMap<u64, f64> =
            [(1_000_000, 0.0), (2_000_000, 0.0), (u64::MAX, 0.0)].into();
        let after: BTreeMap<u64, f64> =
            [(1_000_000, 50.0), (2_000_000, 100.0), (u64::MAX, 100.0)].into();
        assert!((quantile(&before, &after, 0.5) - 1.0).abs() < 1e-9);
        assert!((quantile(&before, &after, 0.75) - 1.5).abs() < 1e-9);
        assert!(quantile(&before, &before, 0.5).is_nan());
    }
}
