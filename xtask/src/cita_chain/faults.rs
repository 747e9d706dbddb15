//! `cargo xtask cita-chain faults`: faults on a real chain while transactions flow, the
//! same for every consensus.
//!
//! Each fault runs on a fresh chain ([`super::start`]). Senders keep sending (`cldi bench
//! send` rounds of `--round-txs` per node, paced to `--rate` transactions per second) and probes go out four
//! times a second; after `--before` seconds the fault hits the node that proposed the
//! newest block (the leader, for a raft consensus), lasts `--fault-secs`, and is undone;
//! the load goes on for `--after` seconds more, then the chain is given time to take
//! what it accepted. The report, per fault: the longest gap between blocks (by header
//! timestamps), and the checks of [`Ledger::problems`]: every transaction `cldi` saw
//! accepted is in exactly one block, and every node has the same block at every height.
//!
//! The faults:
//! - `leader-kill`: SIGKILL of the leader's consensus process, restarted `--fault-secs`
//!   later (0: at once, as a supervisor would);
//! - `network-kill`: SIGKILL of the leader's network service (network_zenoh), restarted
//!   `--fault-secs` later;
//! - `partition`: every UDP port of the leader's network service is dropped by iptables
//!   (rescanned every half second, so new sockets are caught too) for `--fault-secs`;
//!   its gRPC port, which its own node's services use, stays open. Needs root and
//!   iptables.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

use super::bench::{probe, settle, Load};
use super::observe::{Ledger, Probe, Watchers};
use super::{Chain, Service, UpArgs};
use crate::harness::signal;

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL of the leader's consensus, then a restart.
    LeaderKill,
    /// SIGKILL of the leader's network service, then a restart.
    NetworkKill,
    /// The leader's network service cut off by iptables, then healed.
    Partition,
}

/// Options of `cita-chain faults`.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// The chain (as `cita-chain up`; `--detach` and `--duration` are ignored).
    #[command(flatten)]
    pub up: UpArgs,
    /// The faults, each on a fresh chain.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Fault::LeaderKill, Fault::NetworkKill, Fault::Partition])]
    pub faults: Vec<Fault>,
    /// Seconds of load before the fault.
    #[arg(long, default_value_t = 15)]
    pub before: u64,
    /// Seconds the fault lasts.
    #[arg(long, default_value_t = 10)]
    pub fault_secs: u64,
    /// Seconds of load after it is undone.
    #[arg(long, default_value_t = 20)]
    pub after: u64,
    /// Transactions per node per `cldi bench send` round.
    #[arg(long, default_value_t = 50)]
    pub round_txs: u64,
    /// Transactions per second sent in all (rounds are paced to it).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
}

/// What one fault run found.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRun {
    /// The fault.
    pub fault: Fault,
    /// The consensus.
    pub consensus: String,
    /// The node it hit (0-based).
    pub node: usize,
    /// Transactions `cldi` saw accepted.
    pub accepted: u64,
    /// What the watchers saw.
    #[serde(flatten)]
    pub ledger: Ledger,
}

/// Senders that keep sending rounds until stopped.
pub(super) struct Rounds {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl Rounds {
    /// Rounds of `round_txs` transactions per node, paced to `rate` transactions per
    /// second in all (a chain given more than its controllers finalize grows their pools
    /// until they stall, which would measure the controllers, not the fault).
    pub(super) fn start(chain: &Chain, round_txs: u64, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let chain = Chain {
            dir: chain.dir.clone(),
            state: chain.state.clone(),
        };
        let per_round = round_txs * chain.state.nodes.len() as u64;
        let round_secs = Duration::from_secs_f64(per_round as f64 / rate.max(1.0));
        let thread = std::thread::spawn(move || {
            let mut accepted = 0;
            while !flag.load(Ordering::SeqCst) {
                let next = Instant::now() + round_secs;
                let load = Load::start(&chain, round_txs, 50)?;
                while !load.done() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                accepted += load.finish()?;
                while Instant::now() < next && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(accepted)
        });
        Rounds { stop, thread }
    }

    pub(super) fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
    }
}

/// The validator address a node's directory names (`validator_address`: hex, with or
/// without `0x`).
pub fn validator_address(node_dir: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(node_dir.join("validator_address")).ok()?;
    let hex = text.trim().trim_start_matches("0x");
    if hex.len() < 40 {
        return None;
    }
    hex::decode(hex).ok()
}

/// The node whose validator address `proposer` is (the first 20 bytes compared).
pub(super) fn node_of(chain: &Chain, proposer: &[u8]) -> Option<usize> {
    let p = proposer.get(..20)?;
    chain
        .state
        .nodes
        .iter()
        .position(|n| validator_address(&n.dir).is_some_and(|a| a.get(..20) == Some(p)))
}

/// The UDP ports process `pid` holds sockets on (`/proc/PID/fd` against
/// `/proc/net/udp{,6}`).
fn udp_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().to_string();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        ports.extend(udp_ports_in(&text, &inodes));
    }
    ports
}

/// The local ports of the sockets of `inodes` in a `/proc/net/udp` table.
pub fn udp_ports_in(table: &str, inodes: &BTreeSet<String>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode = f.get(9)?;
            if !inodes.contains(*inode) {
                return None;
            }
            let port = f.get(1)?.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// iptables rules dropping UDP to and from some ports; removed when dropped.
#[derive(Default)]
struct Partition {
    ports: BTreeSet<u16>,
}

impl Partition {
    fn rule(op: &str, dir: &str, port: u16) -> anyhow::Result<()> {
        let status = Command::new("iptables")
            .args([
                op,
                "INPUT",
                "-p",
                "udp",
                dir,
                &port.to_string(),
                "-j",
                "DROP",
            ])
            .status()
            .context("running iptables (apt-get install -y iptables; needs root)")?;
        ensure!(status.success(), "iptables {op} INPUT {dir} {port} failed");
        Ok(())
    }

    /// Cuts off every UDP port `pid` holds now.
    fn cover(&mut self, pid: u32) -> anyhow::Result<()> {
        for port in udp_ports(pid) {
            if self.ports.insert(port) {
                Self::rule("-I", "--dport", port)?;
                Self::rule("-I", "--sport", port)?;
            }
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for port in &self.ports {
            let _ = Self::rule("-D", "--dport", *port);
            let _ = Self::rule("-D", "--sport", *port);
        }
    }
}

pub(super) fn pid_of(chain: &Chain, node: usize, svc: Service) -> anyhow::Result<u32> {
    chain
        .node_pids(node)
        .into_iter()
        .find(|(s, _)| *s == svc)
        .map(|(_, p)| p)
        .with_context(|| format!("node{node}'s {} is not running", svc.name()))
}

/// Sleeps `secs` seconds, sending probes through the nodes in turn meanwhile (and, if
/// given, running `also` every half second).
pub(super) fn probing(
    chain: &Chain,
    probes: &mut Vec<Probe>,
    secs: u64,
    mut also: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut next_also = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next_also {
            also()?;
            next_also = Instant::now() + Duration::from_millis(500);
        }
        probes.push(probe(chain, probes.len() % chain.state.nodes.len()));
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// One fault on a fresh chain.
fn run_one(root: &Path, dir: &Path, args: &FaultArgs, fault: Fault) -> anyhow::Result<FaultRun> {
    let up = UpArgs {
        detach: true,
        duration: None,
        ..args.up.clone()
    };
    let (mut chain, _) = super::start(root, dir, &up, &AtomicBool::new(false))?;
    let result = (|| {
        settle(&chain, up.block_interval)?;
        let watchers = Watchers::start(&chain)?;
        let started = Instant::now();
        let rounds = Rounds::start(&chain, args.round_txs, args.rate);
        let mut probes = Vec::new();
        probing(&chain, &mut probes, args.before, || Ok(()))?;
        // The fault hits the proposer of the newest block all nodes have (waited for a
        // while: a controller busy with a burst answers late).
        let mut newest = watchers.newest_common();
        let wait = Instant::now() + Duration::from_secs(60);
        while newest.is_none() && Instant::now() < wait {
            probing(&chain, &mut probes, 1, || Ok(()))?;
            newest = watchers.newest_common();
        }
        let newest = newest.context("no block on every node within 60 s before the fault")?;
        let node = node_of(&chain, &newest.proposer).with_context(|| {
            format!(
                "no node has the validator address of block {}'s proposer",
                newest.height
            )
        })?;
        eprintln!(
            "   {fault:?} on node{node} (proposer of block {})",
            newest.height
        );
        match fault {
            Fault::LeaderKill | Fault::NetworkKill => {
                let svc = if fault == Fault::LeaderKill {
                    Service::Consensus
                } else {
                    Service::Network
                };
                signal(pid_of(&chain, node, svc)?, "-KILL");
                probing(&chain, &mut probes, args.fault_secs, || Ok(()))?;
                chain.start(node, svc, true)?;
            }
            Fault::Partition => {
                let pid = pid_of(&chain, node, Service::Network)?;
                let mut cut = Partition::default();
                probing(&chain, &mut probes, args.fault_secs, || cut.cover(pid))?;
                eprintln!("   partition of UDP ports {:?} healed", cut.ports);
                drop(cut);
            }
        }
        probing(&chain, &mut probes, args.after, || Ok(()))?;
        let accepted = rounds.finish()? + probes.iter().filter(|p| p.hash.is_some()).count() as u64;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !watchers.quiet(&probes) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let ledger = Ledger::of(&watchers.seen(), &probes, chain.state.nodes.len(), started);
        Ok(FaultRun {
            fault,
            consensus: up.consensus.clone(),
            node,
            accepted,
            ledger,
        })
    })();
    chain.down();
    result
}

/// `cita-chain faults`: every fault, then a table; fails if any run lost, duplicated
/// or forked anything.
pub fn run(root: &Path, args: &FaultArgs) -> anyhow::Result<()> {
    let dir = root.join("target").join("cita-chain-faults");
    let mut runs = Vec::new();
    for &fault in &args.faults {
        eprintln!("== {fault:?} with {}", args.up.consensus);
        runs.push(run_one(root, &dir.join("chain"), args, fault)?);
    }
    println!(
        "\n{} nodes, {} consensus, block_interval {} s; fault after {} s, for {} s, then {} s of load",
        args.up.nodes, args.up.consensus, args.up.block_interval, args.before, args.fault_secs, args.after
    );
    println!(
        "{:<14} {:>5} {:>12} {:>9} {:>9} {:>9} {:>6} {:>9}  problems",
        "fault", "node", "longest gap", "gap p99", "accepted", "committed", "blocks", "final p99"
    );
    let mut bad = Vec::new();
    for r in &runs {
        let problems = r.ledger.problems(r.accepted);
        println!(
            "{:<14} {:>5} {:>10.2} s {:>7.2} s {:>9} {:>9} {:>6} {:>7.2} s  {}",
            format!("{:?}", r.fault),
            r.node,
            r.ledger.gap_max_s,
            r.ledger.gap_p99_s,
            r.accepted,
            r.ledger.committed,
            r.ledger.blocks,
            r.ledger.finality_p99_s,
            if problems.is_empty() {
                "none".to_string()
            } else {
                problems.join(", ")
            }
        );
        if !problems.is_empty() {
            bad.push(format!("{:?}: {}", r.fault, problems.join(", ")));
        }
    }
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!(
        "faults-{}.json",
        args.up.consensus.replace('/', "_")
    ));
    std::fs::write(&out, serde_json::to_vec_pretty(&runs)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("results in {}", out.display());
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
    fn udp_ports_of_a_process_are_read_from_the_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 00000000:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
  2: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 0000000000000000 0\n";
        let inodes: BTreeSet<String> = ["4242".to_string()].into();
        assert_eq!(udp_ports_in(table, &inodes), vec![40000]);
        assert!(udp_ports_in(table, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn validator_addresses_are_read_as_hex() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(validator_address(dir.path()), None);
        let addr = "0x".to_string() + &"ab".repeat(20);
        std::fs::write(dir.path().join("validator_address"), format!("{addr}\n")).unwrap();
        assert_eq!(validator_address(dir.path()), Some(vec![0xab; 20]));
        std::fs::write(dir.path().join("validator_address"), "0xzz").unwrap();
        assert_eq!(validator_address(dir.path()), None);
    }
}
