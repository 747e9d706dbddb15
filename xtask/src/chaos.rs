//! `cargo xtask chaos`: CITA-Cloud's chaos suite against a 4-node local chain. Each fault
//! is put on nodes 1 and 2 for `--secs`, then lifted; after each:
//! - no height has two different blocks, and chains are prefixes of one another;
//! - the height rises within `--recover-secs` (30 s, as CITA's suite asks) of the lift;
//! - no process panicked.
//!
//! It prints one row per fault: blocks committed during it, seconds from the lift to the
//! next block, violations, and what became of the two nodes.
//!
//! Disk faults need FUSE: nodes 1 and 2 then keep their raft data on a craft-faultfs
//! mount for the whole run (the link faults run on it too, fault-free), and their rows
//! are skipped, saying why, where FUSE cannot be used. A node that stops on a disk fault
//! must stop with an error in its log, never a panic; at the lift the rules are cleared
//! and a stopped node is started again, as an operator would once the disk is replaced.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use craft_transport::link_faults::LinkFaults;

use crate::cluster::{build_profile, check_chains_agree, Cluster, Profile, Spec};

/// `cargo xtask chaos`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Seconds the chain may take to rise after a fault is lifted.
    #[arg(long, default_value_t = 30)]
    pub recover_secs: u64,
    /// Run only faults whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Use debug binaries (as CI does) instead of the optimised build.
    #[arg(long)]
    pub debug: bool,
}

/// What is done to nodes 1 and 2.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A link fault rule (see `craft_transport::link_faults`).
    Link(&'static str),
    /// SIGKILL of their consensus processes; started again at the lift.
    KillConsensus,
    /// SIGKILL of their development controllers; started again at the lift.
    KillController,
    /// craft-faultfs rules (JSON) under their raft data; consensus processes that
    /// stopped are started again at the lift.
    Disk(&'static str),
    /// As `Disk`, and the consensus processes are restarted as the fault begins, so
    /// that recovery reads the store through it (a running node reads little from disk).
    DiskAtRestart(&'static str),
}

const FAULTS: &[(&str, Fault)] = &[
    (
        "delay 500ms ±100ms",
        Fault::Link("nodes=1,2 delay=500ms jitter=100ms"),
    ),
    ("loss 75%", Fault::Link("nodes=1,2 loss=75%")),
    ("duplicate 75%", Fault::Link("nodes=1,2 duplicate=75%")),
    ("corrupt 75%", Fault::Link("nodes=1,2 corrupt=75%")),
    ("bandwidth 1mbps", Fault::Link("nodes=1,2 rate=1mbps")),
    ("partition", Fault::Link("nodes=1,2 partition")),
    ("kill consensus", Fault::KillConsensus),
    ("kill controller", Fault::KillController),
    // The network service's port closes and it forgets every registration, as a killed
    // network container's does; it comes back at the lift.
    ("kill network", Fault::Link("nodes=1,2 down")),
    (
        "disk latency 500ms",
        Fault::Disk(r#"{"rules":[{"delay_ms":500}]}"#),
    ),
    (
        "disk EIO",
        Fault::Disk(r#"{"rules":[{"ops":["write","fsync"],"error":"EIO"}]}"#),
    ),
    (
        "disk full",
        Fault::Disk(r#"{"rules":[{"ops":["write","create"],"error":"ENOSPC"}]}"#),
    ),
    (
        "disk corrupt",
        Fault::DiskAtRestart(r#"{"rules":[{"ops":["read"],"corrupt_bits":4}]}"#),
    ),
];

fn is_disk(fault: Fault) -> bool {
    matches!(fault, Fault::Disk(_) | Fault::DiskAtRestart(_))
}

const AFFECTED: [usize; 2] = [1, 2];

/// One row of the table.
#[derive(Debug)]
struct Row {
    fault: &'static str,
    during: u64,
    recovered_after: Option<Duration>,
    violations: Vec<String>,
    /// What became of nodes 1 and 2, where it is worth saying.
    notes: Vec<String>,
}

fn top(cluster: &Cluster) -> u64 {
    cluster
        .views()
        .iter()
        .map(|v| v.chain_height)
        .max()
        .unwrap_or(0)
}

/// Lines of the cluster's logs that report a panic.
fn panics(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    let mut logs = vec![cluster.dir.join("network.log")];
    for i in 1..=cluster.state.nodes.len() {
        logs.push(cluster.node_dir(i).join("consensus.log"));
        logs.push(cluster.node_dir(i).join("controller.log"));
        logs.push(cluster.node_dir(i).join("faultfs.log"));
    }
    for log in logs {
        if let Ok(text) = std::fs::read_to_string(&log) {
            for line in text.lines().filter(|l| l.contains("panicked")) {
                out.push(format!("{}: {line}", log.display()));
            }
        }
    }
    out
}

/// Raft messages the nodes dropped for a failed checksum, summed.
fn damaged(cluster: &Cluster) -> f64 {
    cluster
        .state
        .nodes
        .iter()
        .filter_map(|n| crate::cluster::scrape(n.metrics_port))
        .filter_map(|m| {
            m.get("consensus_network_refused_total{reason=\"checksum\"}")
                .copied()
        })
        .sum()
}

fn apply(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Link(rule) => {
            let rule: LinkFaults = rule.parse().map_err(anyhow::Error::msg)?;
            cluster.set_faults(&[rule])
        }
        Fault::KillConsensus => AFFECTED.iter().try_for_each(|&i| cluster.kill(i)),
        Fault::KillController => AFFECTED
            .iter()
            .try_for_each(|&i| cluster.kill_controller(i)),
        Fault::Disk(rules) => AFFECTED
            .iter()
            .try_for_each(|&i| cluster.set_disk_faults(i, Some(rules))),
        Fault::DiskAtRestart(rules) => AFFECTED.iter().try_for_each(|&i| {
            cluster.kill(i)?;
            cluster.set_disk_faults(i, Some(rules))?;
            std::thread::sleep(Duration::from_millis(200));
            cluster.start_consensus(i, false)
        }),
    }
}

fn lift(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Link(_) => cluster.set_faults(&[]),
        Fault::KillConsensus => AFFECTED
            .iter()
            .try_for_each(|&i| cluster.start_consensus(i, false)),
        Fault::KillController => AFFECTED
            .iter()
            .try_for_each(|&i| cluster.start_controller(i, false)),
        Fault::Disk(_) | Fault::DiskAtRestart(_) => AFFECTED.iter().try_for_each(|&i| {
            cluster.set_disk_faults(i, None)?;
            std::thread::sleep(Duration::from_millis(200));
            if cluster.consensus_alive(i) {
                Ok(())
            } else {
                cluster.start_consensus(i, false)
            }
        }),
    }
}

/// What node `i`'s consensus process said when it stopped: the error it exited with and
/// its causes (anyhow's `Error: ...` and `Caused by:` lines, at the end of its log), or
/// else the last line logged at ERROR.
fn last_error(cluster: &Cluster, i: usize) -> Option<String> {
    let text = std::fs::read_to_string(cluster.node_dir(i).join("consensus.log")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let said = match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(at) => {
            // The error, then its innermost cause (before any backtrace).
            let chain: Vec<&str> = lines[at..]
                .iter()
                .map(|l| l.trim())
                .take_while(|l| !l.starts_with("Stack backtrace"))
                .filter(|l| !l.is_empty() && *l != "Caused by:")
                .collect();
            let cause = chain.last().filter(|_| chain.len() > 1).map(|c| {
                c.split_once(": ").map_or(*c, |(n, rest)| {
                    if n.chars().all(|ch| ch.is_ascii_digit()) {
                        rest
                    } else {
                        c
                    }
                })
            });
            match cause {
                Some(cause) => format!("{} / {cause}", chain[0]),
                None => chain[0].to_string(),
            }
        }
        None => lines
            .iter()
            .rev()
            .find(|l| l.contains("ERROR"))?
            .to_string(),
    };
    Some(said.chars().take(400).collect())
}

fn run_fault(
    cluster: &mut Cluster,
    args: &Args,
    name: &'static str,
    fault: Fault,
) -> anyhow::Result<Row> {
    let before = top(cluster);
    let damaged_before = damaged(cluster);
    apply(cluster, fault)?;
    std::thread::sleep(Duration::from_secs(args.secs));
    let during = top(cluster).saturating_sub(before);
    let corrupting = matches!(fault, Fault::Link(rule) if rule.contains("corrupt"));
    let dropped = damaged(cluster) - damaged_before;
    let at_lift = top(cluster);
    let mut notes = Vec::new();
    let mut violations = Vec::new();
    if is_disk(fault) {
        for i in AFFECTED {
            if cluster.consensus_alive(i) {
                continue;
            }
            match last_error(cluster, i) {
                Some(line) => notes.push(format!("node {i} stopped: {line}")),
                None => violations.push(format!("node {i} stopped without an error in its log")),
            }
        }
    }
    lift(cluster, fault)?;
    let lifted = Instant::now();
    let bound = Duration::from_secs(args.recover_secs);
    let mut recovered_after = None;
    while lifted.elapsed() < bound {
        if top(cluster) > at_lift {
            recovered_after = Some(lifted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if corrupting && dropped <= 0.0 {
        violations
            .push("no damaged message was dropped: the corruption never reached a node".into());
    }
    if recovered_after.is_none() {
        violations.push(format!(
            "no block within {} s of the lift",
            args.recover_secs
        ));
    }
    if let Err(e) = check_chains_agree(&cluster.chains()) {
        violations.push(format!("safety: {e:#}"));
    }
    violations.extend(panics(cluster));
    Ok(Row {
        fault: name,
        during,
        recovered_after,
        violations,
        notes,
    })
}

/// Runs the suite.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let bin_dir = build_profile(root, Profile::for_figures(args.debug))?;
    let dir = root.join("target").join("chaos");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let fuse = craft_faultfs::check_usable();
    if let Err(e) = &fuse {
        println!("chaos: disk faults skipped: {e}");
    }
    let spec = Spec {
        tick_ms: 50,
        heartbeat_tick: 3,
        election_tick: 20,
        faultfs: if fuse.is_ok() {
            AFFECTED.to_vec()
        } else {
            Vec::new()
        },
        ..Spec::new(4, 0)
    };
    let mut cluster = Cluster::create(&dir, &bin_dir, &spec, false)?;
    // A chain to start from: every node past height 10.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.views().iter().any(|v| v.chain_height < 10) {
        if Instant::now() > deadline {
            cluster.down();
            bail!("the 4-node chain never reached height 10");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "\nchaos: 4 nodes, block_interval 0, tick 50 ms, election 20 ticks; each fault on nodes 1 and 2 for {} s{}",
        args.secs,
        if args.debug { " (debug binaries)" } else { "" }
    );
    println!(
        "{:<20} {:>14} {:>22}  violations",
        "fault", "blocks during", "next block after lift"
    );
    let mut rows = Vec::new();
    for &(name, fault) in FAULTS {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        if is_disk(fault) && fuse.is_err() {
            continue;
        }
        let row = match run_fault(&mut cluster, args, name, fault) {
            Ok(row) => row,
            Err(e) => {
                cluster.down();
                return Err(e.context(format!("running fault {name}")));
            }
        };
        println!(
            "{:<20} {:>14} {:>22}  {}",
            row.fault,
            row.during,
            row.recovered_after
                .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            if row.violations.is_empty() {
                "0".to_string()
            } else {
                row.violations.join("; ")
            }
        );
        for note in &row.notes {
            println!("{:<20}   {note}", "");
        }
        rows.push(row);
    }
    cluster.down();
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.fault)
        .collect();
    if !failed.is_empty() {
        bail!(
            "faults with violations: {} (logs in {})",
            failed.join(", "),
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("chaos: {} faults, 0 violations", rows.len());
    Ok(())
}
