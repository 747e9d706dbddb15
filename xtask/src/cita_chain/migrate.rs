//! `cargo xtask cita-chain migrate`: `docs/migration.md`'s procedure, step by step, on a
//! real chain of `consensus_raft` under transaction load: every node's consensus replaced
//! by ours, leader last, then rolled back the same way.
//!
//! Each replacement is the procedure's steps 1–4: the node's consensus stopped with
//! SIGTERM (and waited for), its `raft_data_path` directory emptied, the other binary
//! started with the same command line in the same directory, and the next node touched
//! only once this one's controller is back within one block of the highest. The node to
//! replace next is a node that did not propose the newest block, until only the one that
//! did is left (step 5). Senders and probes run throughout; the report is the longest gap
//! between blocks, each step's time to catch up, and the checks of [`Ledger::problems`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::faults::{node_of, pid_of, probing, Rounds};
use super::observe::{Ledger, Probe, Watchers};
use super::{Chain, Service, UpArgs};
use crate::harness::{build_profile, stop_pids, Profile};

/// Options of `cita-chain migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The services' directory (as `cita-chain up --services`).
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// Nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// The chain's `block_interval` (s).
    #[arg(long, default_value_t = 3)]
    pub block_interval: u32,
    /// Build ours with the dev profile.
    #[arg(long)]
    pub debug: bool,
    /// Transactions per node per `cldi bench send` round.
    #[arg(long, default_value_t = 50)]
    pub round_txs: u64,
    /// Transactions per second sent in all (rounds are paced to it).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds a replaced node may take to catch up.
    #[arg(long, default_value_t = 120)]
    pub catch_up_secs: u64,
}

/// One replacement.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Upgrade (to ours) or rollback (to consensus_raft).
    pub direction: &'static str,
    /// The node (0-based).
    pub node: usize,
    /// Whether it proposed the newest block when it was picked.
    pub was_proposer: bool,
    /// Seconds from the stop to its controller being within one block of the highest.
    pub catch_up_s: f64,
}

/// The raft directory a node's config names (`[consensus_raft] raft_data_path`, default
/// `raft-data-dir`), relative to the node's directory.
pub fn raft_data_path(config: &str) -> anyhow::Result<PathBuf> {
    let table: toml::Table = config.parse().context("parsing config.toml")?;
    Ok(PathBuf::from(
        table
            .get("consensus_raft")
            .and_then(|t| t.get("raft_data_path"))
            .and_then(toml::Value::as_str)
            .unwrap_or("raft-data-dir"),
    ))
}

/// Replaces node `node`'s consensus with `bin`, as the procedure's steps 1–4 say.
fn replace(
    chain: &mut Chain,
    node: usize,
    bin: &Path,
    probes: &mut Vec<Probe>,
    catch_up: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    // 1. SIGTERM, waited for (ours hands leadership over first when it leads).
    let pid = pid_of(chain, node, Service::Consensus)?;
    stop_pids(&[pid], Duration::from_secs(10));
    // 2. The same config and node address; the raft directory emptied.
    let dir = chain.state.nodes[node].dir.clone();
    let config = std::fs::read_to_string(dir.join("config.toml"))
        .with_context(|| format!("reading {}", dir.join("config.toml").display()))?;
    let data = dir.join(raft_data_path(&config)?);
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("emptying {}", data.display()))?;
    }
    // 3. The other binary, the same command line.
    chain.state.nodes[node].consensus_bin = Some(bin.to_path_buf());
    chain.start(node, Service::Consensus, true)?;
    // 4. Caught up: its controller holds a block committed after the restart and is
    //    within one block of the highest, twice in a row. (Within one block alone
    //    passed a controller that stopped one block short and never synced.)
    let deadline = Instant::now() + catch_up;
    let nodes = chain.state.nodes.len();
    let h_start = (0..nodes)
        .filter_map(|i| chain.height(i))
        .max()
        .unwrap_or(0);
    let mut good = 0;
    while good < 2 {
        if Instant::now() > deadline {
            bail!(
                "node{node} did not catch up within {} s after its consensus was replaced by {}",
                catch_up.as_secs(),
                bin.display()
            );
        }
        probing(chain, probes, 1, || Ok(()))?;
        let heights: Vec<Option<u64>> = (0..nodes).map(|i| chain.height(i)).collect();
        let top = heights.iter().flatten().max().copied().unwrap_or(0);
        good = match heights[node] {
            Some(h) if h > h_start && h + 1 >= top => good + 1,
            _ => 0,
        };
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `cita-chain migrate`.
pub fn run(root: &Path, args: &MigrateArgs) -> anyhow::Result<()> {
    let ours = build_profile(root, Profile::for_figures(args.debug))?.join("consensus");
    let up = UpArgs {
        services: args.services.clone(),
        consensus: "consensus_raft".into(),
        nodes: args.nodes,
        block_interval: args.block_interval,
        chain_name: "migrate".into(),
        debug: args.debug,
        detach: true,
        duration: None,
    };
    let dir = root.join("target").join("cita-chain-migrate");
    let (mut chain, _) = super::start(root, &dir, &up, &AtomicBool::new(false))?;
    let theirs = chain.state.consensus_bin.clone();
    let result = (|| {
        super::bench::settle(&chain, args.block_interval)?;
        let watchers = Watchers::start(&chain)?;
        let started = Instant::now();
        let rounds = Rounds::start(&chain, args.round_txs, args.rate);
        let mut probes = Vec::new();
        probing(&chain, &mut probes, 10, || Ok(()))?;
        let mut steps = Vec::new();
        for (direction, bin) in [("upgrade", &ours), ("rollback", &theirs)] {
            let mut left: Vec<usize> = (0..args.nodes).collect();
            while !left.is_empty() {
                let proposer = watchers
                    .newest_common()
                    .and_then(|b| node_of(&chain, &b.proposer));
                let pick = left.iter().position(|n| Some(*n) != proposer).unwrap_or(0);
                let node = left.remove(pick);
                eprintln!(
                    "   {direction}: node{node}{}",
                    if Some(node) == proposer {
                        " (the proposer)"
                    } else {
                        ""
                    }
                );
                let catch_up_s = replace(
                    &mut chain,
                    node,
                    bin,
                    &mut probes,
                    Duration::from_secs(args.catch_up_secs),
                )?;
                steps.push(Step {
                    direction,
                    node,
                    was_proposer: Some(node) == proposer,
                    catch_up_s,
                });
            }
        }
        probing(&chain, &mut probes, 10, || Ok(()))?;
        let accepted = rounds.finish()? + probes.iter().filter(|p| p.hash.is_some()).count() as u64;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !watchers.quiet(&probes) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let ledger = Ledger::of(&watchers.seen(), &probes, args.nodes, started);
        Ok::<_, anyhow::Error>((steps, accepted, ledger))
    })();
    chain.down();
    let (steps, accepted, ledger) = result?;
    println!(
        "\n{} nodes of consensus_raft, block_interval {} s, under cldi load: upgraded to ours node by node, then rolled back",
        args.nodes, args.block_interval
    );
    println!(
        "{:<9} {:>5} {:>9} {:>12}",
        "step", "node", "proposer", "caught up"
    );
    for s in &steps {
        println!(
            "{:<9} {:>5} {:>9} {:>10.1} s",
            s.direction,
            s.node,
            if s.was_proposer { "yes" } else { "" },
            s.catch_up_s
        );
    }
    println!(
        "longest gap between blocks {:.2} s (p99 {:.2} s); {} accepted, {} committed in {} blocks; finality p99 {:.2} s",
        ledger.gap_max_s, ledger.gap_p99_s, accepted, ledger.committed, ledger.blocks, ledger.finality_p99_s
    );
    let out = dir.join("migrate.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(
            &serde_json::json!({ "steps": steps, "accepted": accepted, "ledger": ledger }),
        )?,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("results in {}", out.display());
    let problems = ledger.problems(accepted);
    if !problems.is_empty() {
        bail!("{}", problems.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raft_directory_is_read_from_the_config_or_defaulted() {
        let with = "[consensus_raft]\nraft_data_path = \"data/raft\"\n";
        assert_eq!(raft_data_path(with).ok(), Some(PathBuf::from("data/raft")));
        let without = "[consensus_raft]\nnetwork_port = 50000\n";
        assert_eq!(
            raft_data_path(without).ok(),
            Some(PathBuf::from("raft-data-dir"))
        );
        assert!(raft_data_path("not toml [").is_err());
    }
}
