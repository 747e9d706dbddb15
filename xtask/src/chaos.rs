//! `cargo xtask chaos`: CITA-Cloud's chaos suite against a 4-node local chain. Each fault
//! is put on nodes 1 and 2 for `--secs`, then lifted; after each:
//! - every node's chain is a prefix of the longest one: at every height two nodes both
//!   know, the block is the same, counting the blocks each committed through `CommitBlock`
//!   and the heights its controller synced from a peer (`sync.log` names the peer, whose
//!   chain fills them);
//! - the height rises within `--recover-secs` (30 s, as CITA's suite asks) of the lift;
//! - no process panicked.
//!
//! It prints one row per fault: blocks committed during it, seconds from the lift to the
//! next block, violations, and what became of the two nodes. A fault and its lift are
//! waited for until they are seen in force (the network's and faultfs's logs, processes
//! gone or answering), never assumed after a fixed sleep.
//!
//! Disk faults need FUSE: nodes 1 and 2 then keep their raft data on a craft-faultfs
//! mount for the whole run (the link faults run on it too, fault-free). Where FUSE
//! cannot be used their rows are skipped, saying why and counted (`cargo xtask ci`
//! reports them); in CI (`CI=true`, where `.ci/run` installs fuse3) that is a failure. A
//! node that stops on a disk fault must stop with an error in its log, never a panic; at
//! the lift the rules are cleared and a stopped node is started again, as an operator
//! would once the disk is replaced.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use craft_devnet::link_faults::LinkFaults;

use crate::cluster::{read_chain, Cluster, Spec};
use crate::harness::{build_profile, Profile};

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
    /// A link fault rule (see `craft_devnet::link_faults`).
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
        .filter_map(|n| crate::harness::scrape(n.metrics_port))
        .filter_map(|m| {
            m.get("consensus_network_refused_total{reason=\"checksum\"}")
                .copied()
        })
        .sum()
}

/// How long a fault or its lift may take to be seen in force.
const IN_FORCE_BOUND: Duration = Duration::from_secs(15);

/// Polls `done` every 50 ms until it holds; fails after `bound`, saying `what`.
fn wait_until(
    bound: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() > bound {
            bail!("not within {bound:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of `path` that contain `needle` (none when it cannot be read).
fn log_lines(path: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Whether something accepts connections on loopback `port`.
fn port_open(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Sets the link fault `rules` and waits until the development network has taken them
/// (it logs every change).
fn set_link_faults(cluster: &Cluster, rules: &[LinkFaults]) -> anyhow::Result<()> {
    const CHANGED: &str = "link faults changed";
    let log = cluster.dir.join("network.log");
    let before = log_lines(&log, CHANGED).len();
    cluster.set_faults(rules)?;
    wait_until(IN_FORCE_BOUND, "the network takes the link faults", || {
        Ok(log_lines(&log, CHANGED).len() > before)
    })
}

/// Sets (or, with `None`, lifts) the disk faults under node `i` and waits until its
/// faultfs has taken them (it logs every change with the number of rules).
fn set_disk_faults(cluster: &Cluster, i: usize, rules: Option<&str>) -> anyhow::Result<()> {
    const CHANGED: &str = "fault rules changed";
    let log = cluster.node_dir(i).join("faultfs.log");
    let before = log_lines(&log, CHANGED).len();
    cluster.set_disk_faults(i, rules)?;
    let lifted = rules.is_none();
    wait_until(
        IN_FORCE_BOUND,
        &format!(
            "node {i}'s faultfs {} the disk faults",
            if lifted { "lifts" } else { "takes" }
        ),
        || {
            let lines = log_lines(&log, CHANGED);
            Ok(lines.len() > before
                && lines
                    .last()
                    .is_some_and(|l| l.contains("rules=0") == lifted))
        },
    )
}

/// Kills node `i`'s consensus process and waits until it is gone.
fn kill_consensus(cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
    cluster.kill(i)?;
    wait_until(
        IN_FORCE_BOUND,
        &format!("node {i}'s consensus exits"),
        || Ok(!cluster.consensus_alive(i)),
    )
}

/// Starts node `i`'s consensus process and waits until it serves its metrics.
fn start_consensus(cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
    cluster.start_consensus(i, false)?;
    let port = cluster.state.nodes[i - 1].metrics_port;
    wait_until(
        IN_FORCE_BOUND,
        &format!("node {i}'s consensus serves its metrics"),
        || Ok(crate::harness::scrape(port).is_some() || !cluster.consensus_alive(i)),
    )
}

fn apply(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Link(rule) => {
            let rule: LinkFaults = rule.parse().map_err(anyhow::Error::msg)?;
            set_link_faults(cluster, &[rule])
        }
        Fault::KillConsensus => AFFECTED
            .iter()
            .try_for_each(|&i| kill_consensus(cluster, i)),
        Fault::KillController => AFFECTED.iter().try_for_each(|&i| {
            cluster.kill_controller(i)?;
            let port = cluster.state.nodes[i - 1].controller_port;
            wait_until(
                IN_FORCE_BOUND,
                &format!("node {i}'s controller closes its port"),
                || Ok(!port_open(port)),
            )
        }),
        Fault::Disk(rules) => AFFECTED
            .iter()
            .try_for_each(|&i| set_disk_faults(cluster, i, Some(rules))),
        Fault::DiskAtRestart(rules) => AFFECTED.iter().try_for_each(|&i| {
            kill_consensus(cluster, i)?;
            set_disk_faults(cluster, i, Some(rules))?;
            start_consensus(cluster, i)
        }),
    }
}

fn lift(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Link(_) => set_link_faults(cluster, &[]),
        Fault::KillConsensus => AFFECTED
            .iter()
            .try_for_each(|&i| start_consensus(cluster, i)),
        Fault::KillController => AFFECTED.iter().try_for_each(|&i| {
            cluster.start_controller(i, false)?;
            let port = cluster.state.nodes[i - 1].controller_port;
            wait_until(
                IN_FORCE_BOUND,
                &format!("node {i}'s controller opens its port"),
                || Ok(port_open(port)),
            )
        }),
        Fault::Disk(_) | Fault::DiskAtRestart(_) => AFFECTED.iter().try_for_each(|&i| {
            set_disk_faults(cluster, i, None)?;
            if cluster.consensus_alive(i) {
                Ok(())
            } else {
                start_consensus(cluster, i)
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
    // The fault lasts `--secs` from when it was seen in force; the chain is watched
    // meanwhile.
    let held = Instant::now();
    let mut highest = before;
    while held.elapsed() < Duration::from_secs(args.secs) {
        highest = highest.max(top(cluster));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = highest.max(top(cluster)).saturating_sub(before);
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
    match check_prefixes(&node_chains(cluster)) {
        Ok(agreed) => {
            if agreed.synced > 0 {
                notes.push(format!(
                    "{} heights agree, {} of them known through syncs",
                    agreed.heights, agreed.synced
                ));
            }
        }
        Err(e) => violations.push(format!("safety: {e}")),
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

/// Heights a controller took from a peer by syncing: `from + 1 ..= to` are the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Synced {
    from: u64,
    to: u64,
    /// The peer, as a node number (`None`: an address of no node of the cluster).
    peer: Option<usize>,
    /// The peer as the controller named it.
    peer_name: String,
}

/// A node's chain as its controller recorded it.
#[derive(Debug, Clone, Default)]
struct NodeChain {
    /// Blocks committed through `CommitBlock`, by height (hex).
    committed: BTreeMap<u64, String>,
    /// Jumps made by syncing from a peer.
    synced: Vec<Synced>,
    /// The chain's height: its top block or its last jump.
    height: u64,
}

/// Every node's chain: `chain.log` for the blocks and the heights jumped to, `sync.log`
/// for the peers the jumps came from (the development controller writes both).
fn node_chains(cluster: &Cluster) -> Vec<NodeChain> {
    let port_of = |url: &str| -> Option<usize> {
        let port: u16 = url.rsplit(':').next()?.trim_end_matches('/').parse().ok()?;
        cluster
            .state
            .nodes
            .iter()
            .find(|n| n.controller_port == port)
            .map(|n| n.index)
    };
    (1..=cluster.state.nodes.len())
        .map(|i| {
            let dir = cluster.node_dir(i).join("chain");
            let committed = read_chain(&dir.join("chain.log"));
            let jumped = std::fs::read_to_string(dir.join("chain.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_suffix(" sync")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            let synced = std::fs::read_to_string(dir.join("sync.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let from = words.next()?.parse().ok()?;
                    let to = words.next()?.parse().ok()?;
                    let peer_name = words.next()?.to_string();
                    Some(Synced {
                        from,
                        to,
                        peer: port_of(&peer_name),
                        peer_name,
                    })
                })
                .collect();
            let height = committed
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .max(jumped);
            NodeChain {
                committed,
                synced,
                height,
            }
        })
        .collect()
}

/// What [`check_prefixes`] compared.
#[derive(Debug, PartialEq, Eq)]
struct Agreed {
    /// Heights known on at least one node.
    heights: usize,
    /// Of those, heights some node knows through a sync.
    synced: usize,
}

/// Where a node's block at a height comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// It committed it.
    Committed,
    /// It synced it from this node (which committed it, or synced it in turn).
    SyncedFrom(usize),
}

/// A short form of a block (its `chain.log` line) for messages: its first bytes as text
/// where they are (`craft-dev-block|HEIGHT|NODE|NONCE...`), and its length.
fn show(hex: &str) -> String {
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks(2)
        .take(48)
        .map_while(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    format!(
        "{:?}.. ({} bytes)",
        String::from_utf8_lossy(&bytes),
        craft_devnet::controller::parse_block_line(hex).map_or(hex.len() / 2, |b| b.len())
    )
}

/// Node `i`'s block at `h` (0-based `i`), following syncs to the peer whose chain filled
/// them, and where it came from; `None` where no chain knows it. `depth` bounds the chase.
fn block_at(chains: &[NodeChain], i: usize, h: u64, depth: usize) -> Option<(&str, Source)> {
    let chain = chains.get(i)?;
    if let Some(b) = chain.committed.get(&h) {
        return Some((b, Source::Committed));
    }
    if depth == 0 {
        return None;
    }
    chain
        .synced
        .iter()
        .filter(|s| s.from < h && h <= s.to)
        .find_map(|s| {
            let peer = s.peer?;
            block_at(chains, peer - 1, h, depth - 1).map(|(b, _)| (b, Source::SyncedFrom(peer)))
        })
}

/// Checks that every node's chain, the blocks it committed and the heights it synced, is
/// a prefix of the longest one: at every height two nodes both know (or a node knows
/// twice, committed and synced), the block is the same; and that every sync came from a
/// known peer whose chain reached the height synced to.
fn check_prefixes(chains: &[NodeChain]) -> Result<Agreed, String> {
    let n = chains.len();
    let name = |i: usize, src: Source| match src {
        Source::Committed => format!("node {} (committed)", i + 1),
        Source::SyncedFrom(p) => format!("node {} (synced from node {p})", i + 1),
    };
    for (i, c) in chains.iter().enumerate() {
        for s in &c.synced {
            let Some(peer) = s.peer else {
                return Err(format!(
                    "node {} synced heights {}..={} from {}, no node of the cluster",
                    i + 1,
                    s.from + 1,
                    s.to,
                    s.peer_name
                ));
            };
            let reached = chains.get(peer - 1).map_or(0, |p| p.height);
            if reached < s.to {
                return Err(format!(
                    "node {} synced to height {} from node {peer}, whose chain reaches only {reached}",
                    i + 1,
                    s.to
                ));
            }
            // A block it committed inside the range must be the peer's.
            for (h, own) in c.committed.range(s.from + 1..=s.to) {
                if let Some((theirs, src)) = block_at(chains, peer - 1, *h, n) {
                    if theirs != own {
                        return Err(format!(
                            "height {h}: node {} committed {}, but synced {} there from {}",
                            i + 1,
                            show(own),
                            show(theirs),
                            name(peer - 1, src)
                        ));
                    }
                }
            }
        }
    }
    let Some(longest) = (0..n).max_by_key(|i| (chains[*i].height, std::cmp::Reverse(*i))) else {
        return Ok(Agreed {
            heights: 0,
            synced: 0,
        });
    };
    let top = chains[longest].height;
    let (mut heights, mut synced) = (0, 0);
    for h in 1..=top {
        // The longest chain's block first, so that a difference is told as a node that
        // is not its prefix.
        let mut seen: Option<(usize, &str, Source)> = None;
        let mut through_sync = false;
        for i in std::iter::once(longest).chain((0..n).filter(|i| *i != longest)) {
            if h > chains[i].height {
                continue;
            }
            let Some((block, src)) = block_at(chains, i, h, n) else {
                continue;
            };
            through_sync |= src != Source::Committed;
            match seen {
                None => seen = Some((i, block, src)),
                Some((j, other, other_src)) if other != block => {
                    let how = if j == longest {
                        format!(
                            "node {}'s chain is not a prefix of the longest (node {}, height {top})",
                            i + 1,
                            longest + 1
                        )
                    } else {
                        "fork".to_string()
                    };
                    return Err(format!(
                        "{how}: at height {h} {} has {}, {} has {}",
                        name(i, src),
                        show(block),
                        name(j, other_src),
                        show(other)
                    ));
                }
                Some(_) => {}
            }
        }
        if seen.is_some() {
            heights += 1;
            if through_sync {
                synced += 1;
            }
        }
    }
    Ok(Agreed { heights, synced })
}

/// Runs the suite.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let bin_dir = build_profile(root, Profile::for_figures(args.debug))?;
    let dir = root.join("target").join("chaos");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let selected = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let fuse = craft_faultfs::check_usable();
    let mut skipped = 0;
    if let Err(e) = &fuse {
        // In CI (where fuse3 is installed) this is an error; elsewhere each disk row
        // skipped is said and counted.
        for (name, _) in FAULTS.iter().filter(|(n, f)| is_disk(*f) && selected(n)) {
            crate::harness::skipped(
                &format!("chaos {name}"),
                &format!("FUSE cannot be mounted: {e}"),
            )?;
            skipped += 1;
        }
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
        if !selected(name) || (is_disk(fault) && fuse.is_err()) {
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
    println!(
        "chaos: {} faults, 0 violations, {skipped} skipped",
        rows.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block(h: u64, nonce: u64) -> String {
        format!("{h:02x}{nonce:02x}")
    }

    fn chain(committed: &[(u64, u64)], synced: &[(u64, u64, usize)]) -> NodeChain {
        let committed: BTreeMap<u64, String> =
            committed.iter().map(|&(h, n)| (h, block(h, n))).collect();
        let synced: Vec<Synced> = synced
            .iter()
            .map(|&(from, to, peer)| Synced {
                from,
                to,
                peer: Some(peer),
                peer_name: format!("node {peer}"),
            })
            .collect();
        let height = committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(synced.iter().map(|s| s.to).max().unwrap_or(0));
        NodeChain {
            committed,
            synced,
            height,
        }
    }

    fn range(from: u64, to: u64, nonce: u64) -> Vec<(u64, u64)> {
        (from..=to).map(|h| (h, nonce)).collect()
    }

    #[test]
    fn chains_that_are_prefixes_agree_synced_heights_included() {
        let chains = [
            chain(&range(1, 30, 0), &[]),
            chain(&range(1, 12, 0), &[]),
            // Synced 6..=20 from node 1, then committed on.
            chain(&[range(1, 5, 0), range(21, 25, 0)].concat(), &[(5, 20, 1)]),
        ];
        assert_eq!(
            check_prefixes(&chains),
            Ok(Agreed {
                heights: 30,
                synced: 15
            })
        );
        // Node 3 synced 1..=25 from node 2, which synced 13..=25 from node 1.
        let chains = [
            chain(&range(1, 30, 0), &[]),
            chain(&range(1, 12, 0), &[(12, 25, 1)]),
            chain(&[], &[(0, 25, 2)]),
        ];
        assert_eq!(
            check_prefixes(&chains),
            Ok(Agreed {
                heights: 30,
                synced: 25
            })
        );
    }

    #[test]
    fn a_different_block_on_a_shorter_chain_is_not_a_prefix() {
        let mut forked = range(1, 12, 0);
        forked[7].1 = 9;
        let chains = [chain(&range(1, 30, 0), &[]), chain(&forked, &[])];
        let e = check_prefixes(&chains).unwrap_err();
        assert!(
            e.contains(
                "node 2's chain is not a prefix of the longest (node 1, height 30): at height 8"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_fork_among_shorter_chains_names_where_each_block_came_from() {
        // Node 3 took heights 1..=20 from node 2, which has another block at 8 than
        // node 1 and node 4.
        let mut forked = range(1, 20, 0);
        forked[7].1 = 9;
        let chains = [
            chain(&range(1, 5, 0), &[]),
            chain(&forked, &[]),
            chain(&range(21, 22, 0), &[(0, 20, 2)]),
            chain(&range(1, 10, 0), &[]),
        ];
        let e = check_prefixes(&chains).unwrap_err();
        assert!(
            e.contains("not a prefix of the longest (node 3, height 22): at height 8")
                && e.contains("node 3 (synced from node 2)"),
            "{e}"
        );
    }

    #[test]
    fn a_block_committed_inside_a_synced_range_must_be_the_peers() {
        let chains = [
            chain(&range(1, 25, 0), &[]),
            chain(&[(15, 7)], &[(0, 20, 1)]),
        ];
        let e = check_prefixes(&chains).unwrap_err();
        assert!(
            e.contains("height 15: node 2 committed") && e.contains("from node 1"),
            "{e}"
        );
    }

    #[test]
    fn a_sync_past_the_peers_chain_or_from_a_stranger_is_a_violation() {
        let chains = [chain(&range(1, 10, 0), &[]), chain(&[], &[(0, 15, 1)])];
        let e = check_prefixes(&chains).unwrap_err();
        assert!(e.contains("whose chain reaches only 10"), "{e}");
        let mut stranger = chain(&[], &[(0, 5, 1)]);
        stranger.synced[0].peer = None;
        let e = check_prefixes(&[chain(&range(1, 10, 0), &[]), stranger]).unwrap_err();
        assert!(e.contains("no node of the cluster"), "{e}");
    }
}
