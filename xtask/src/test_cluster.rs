//! `cargo xtask test-cluster`: integration scenarios against real processes.
//!
//! Every scenario starts a fresh cluster (consensus binaries, one development controller
//! per node, one development network) with fast raft timing, applies faults, and
//! checks:
//! - safety: no height has two different blocks on any nodes (every chain file);
//! - liveness: progress resumes within a bound counted in election timeouts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::cluster::{check_chains_agree, Cluster, NodeView, Spec};
use crate::harness::build;

/// `cargo xtask test-cluster`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only scenarios whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Use release binaries.
    #[arg(long)]
    pub release: bool,
}

/// Liveness bound: this many election timeouts.
const BOUND_ELECTIONS: u32 = 40;

/// Blocks the others commit while a node out of raft must show no raft activity.
const QUIET_BLOCKS: u64 = 10;

fn spec(nodes: usize) -> Spec {
    Spec {
        tick_ms: 50,
        heartbeat_tick: 3,
        election_tick: 20,
        log_retain: 50,
        ..Spec::new(nodes, 0)
    }
}

struct Run<'a> {
    cluster: Cluster,
    spec: Spec,
    name: &'a str,
    checks: Vec<String>,
}

fn max_height(views: &[NodeView], alive_only: bool) -> u64 {
    views
        .iter()
        .filter(|v| !alive_only || v.alive)
        .map(|v| v.chain_height)
        .max()
        .unwrap_or(0)
}

impl Run<'_> {
    fn bound(&self) -> Duration {
        Duration::from_millis(self.spec.tick_ms * self.spec.election_tick as u64) * BOUND_ELECTIONS
    }

    /// Polls until `pred` holds, failing after the liveness bound.
    fn wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&[NodeView]) -> bool,
    ) -> anyhow::Result<Vec<NodeView>> {
        let start = Instant::now();
        let bound = self.bound();
        loop {
            let views = self.cluster.views();
            if pred(&views) {
                self.checks.push(format!(
                    "{what} (after {:.1}s)",
                    start.elapsed().as_secs_f64()
                ));
                return Ok(views);
            }
            if start.elapsed() > bound {
                let state: Vec<String> = views
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("n{}={}:{}", i + 1, v.role_name(), v.chain_height))
                    .collect();
                bail!(
                    "{}: not within {:?} ({} election timeouts): {what}; nodes: {}",
                    self.name,
                    bound,
                    BOUND_ELECTIONS,
                    state.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn leader(&mut self) -> anyhow::Result<usize> {
        let views = self.wait("a leader is elected", |v| {
            v.iter().any(|n| n.alive && n.role == Some(3))
        })?;
        views
            .iter()
            .position(|n| n.alive && n.role == Some(3))
            .map(|i| i + 1)
            .context("leader vanished")
    }

    fn progress(&mut self, blocks: u64, what: &str) -> anyhow::Result<u64> {
        let from = max_height(&self.cluster.views(), true);
        let target = from + blocks;
        self.wait(&format!("{what}: height {from} -> {target}"), |v| {
            max_height(v, true) >= target
        })?;
        Ok(target)
    }

    /// Waits until a live node other than `old` leads.
    fn other_leader(&mut self, old: usize, what: &str) -> anyhow::Result<()> {
        self.wait(what, |v| {
            v.iter()
                .enumerate()
                .any(|(i, n)| i + 1 != old && n.alive && n.role == Some(3))
        })?;
        Ok(())
    }

    fn caught_up(&mut self, node: usize, what: &str) -> anyhow::Result<()> {
        let target = max_height(&self.cluster.views(), true);
        self.wait(
            &format!("{what}: node {node} reaches height {target}"),
            |v| v[node - 1].chain_height >= target,
        )?;
        Ok(())
    }

    fn safe(&mut self) -> anyhow::Result<()> {
        let n = check_chains_agree(&self.cluster.chains())?;
        self.checks
            .push(format!("safety: chains agree on all {n} heights"));
        Ok(())
    }

    fn log_contains(&self, node: usize, needle: &str) -> bool {
        std::fs::read_to_string(self.cluster.node_dir(node).join("consensus.log"))
            .map(|s| s.contains(needle))
            .unwrap_or(false)
    }
}

type Scenario = fn(&mut Run<'_>) -> anyhow::Result<()>;

fn steady_progress(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.leader()?;
    r.wait("every node reaches height 30", |v| {
        v.iter().all(|n| n.chain_height >= 30)
    })?;
    r.safe()?;
    let chains = r.cluster.chains();
    for (i, c) in chains.iter().enumerate() {
        for h in 1..=30 {
            if !c.contains_key(&h) {
                bail!("node {} has no block at height {h}", i + 1);
            }
        }
    }
    r.checks.push("every node has every block 1..=30".into());
    Ok(())
}

fn leader_kill_restart(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(10, "start")?;
    for round in 1..=3 {
        let leader = r.leader()?;
        r.cluster.kill(leader)?;
        r.checks
            .push(format!("round {round}: leader {leader} SIGKILLed"));
        r.progress(10, "survivors keep committing")?;
        r.cluster.start_consensus(leader, false)?;
        r.caught_up(leader, "restarted leader")?;
        r.safe()?;
    }
    Ok(())
}

fn all_killed_restart(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(15, "start")?;
    let before = r.cluster.chains();
    for i in 1..=r.spec.nodes {
        r.cluster.kill(i)?;
    }
    r.checks.push("all consensus processes SIGKILLed".into());
    for i in 1..=r.spec.nodes {
        r.cluster.start_consensus(i, false)?;
    }
    r.progress(10, "restarted cluster commits")?;
    let after = r.cluster.chains();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        for (h, block) in b {
            if a.get(h) != Some(block) {
                bail!(
                    "node {} lost or changed block {h} across the restart",
                    i + 1
                );
            }
        }
    }
    r.checks
        .push("no committed block lost across the restart".into());
    r.safe()
}

fn partitioned_leader_heal(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(10, "start")?;
    let old = r.leader()?;
    r.cluster.partition(Some(old))?;
    r.checks.push(format!("leader {old} cut off"));
    r.other_leader(old, "the majority elects a new leader")?;
    r.progress(10, "majority side commits")?;
    r.cluster.partition(None)?;
    r.checks.push("links healed".into());
    r.caught_up(old, "old leader")?;
    r.progress(5, "healed cluster commits")?;
    r.safe()
}

fn validator_removal_readd(r: &mut Run<'_>) -> anyhow::Result<()> {
    // Scheduled in the spec: node 3 leaves at height 40, returns at height 100.
    r.wait("height 50 with node 3 removed", |v| {
        max_height(v, true) >= 50
    })?;
    // A member's raft writes its log and answers the leader for every block; node 3
    // out of raft does neither. Alive, with both counters still while the others commit
    // QUIET_BLOCKS blocks, it has stopped raft.
    let port = r.cluster.state.nodes[2].metrics_port;
    let mut still: Option<(f64, u64)> = None;
    r.wait(
        &format!(
            "node 3 stops raft: alive, no raft log write and no raft message sent while the others commit {QUIET_BLOCKS} blocks"
        ),
        |v| {
            let others = v[..2].iter().map(|n| n.chain_height).max().unwrap_or(0);
            let Some(activity) = crate::harness::scrape(port).filter(|_| v[2].alive).map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        k.starts_with("consensus_messages_sent_total")
                            || k.as_str() == "consensus_store_writes_total"
                    })
                    .map(|(_, v)| v)
                    .sum::<f64>()
            }) else {
                still = None;
                return false;
            };
            match still {
                Some((seen, from)) if seen == activity => others >= from + QUIET_BLOCKS,
                _ => {
                    still = Some((activity, others));
                    false
                }
            }
        },
    )?;
    let stopped = Instant::now();
    while !r.log_contains(3, "removed from the validators") {
        if stopped.elapsed() > r.bound() {
            bail!("node 3 never stopped raft after its removal");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.checks.push("node 3 stopped raft after removal".into());
    r.wait("cluster passes height 100 without node 3", |v| {
        max_height(v, true) >= 100
    })?;
    let start = Instant::now();
    while !r.log_contains(3, "added back to the validators") {
        if start.elapsed() > r.bound() {
            bail!("node 3 never restarted raft after re-addition");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.checks
        .push("node 3 restarted raft after re-addition".into());
    let target = max_height(&r.cluster.views(), true) + 10;
    r.wait(&format!("all three nodes commit past {target}"), |v| {
        v.iter().all(|n| n.chain_height >= target)
    })?;
    r.safe()
}

fn follower_catch_up(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(10, "start")?;
    let leader = r.leader()?;
    let follower = if leader == 3 { 2 } else { 3 };
    r.cluster.kill(follower)?;
    r.progress(20, "short outage")?;
    r.cluster.start_consensus(follower, false)?;
    r.caught_up(follower, "catch-up from the log")?;
    r.cluster.kill(follower)?;
    r.progress(
        3 * r.spec.log_retain,
        "long outage (log compacted past the follower)",
    )?;
    r.cluster.start_consensus(follower, false)?;
    r.caught_up(follower, "catch-up by snapshot")?;
    if !r.log_contains(follower, "restoring state machine from leader snapshot") {
        bail!("node {follower} caught up without installing a snapshot");
    }
    r.checks
        .push(format!("node {follower} installed a leader snapshot"));
    r.safe()
}

/// The leader's controller hangs (SIGSTOP): every call to it times out, so the leader
/// can neither apply the last block nor get the next one. It hands leadership to the
/// next validator, the others go on, and once its controller runs again the node
/// catches up. (On a real chain: a controller that fell behind and does not sync.)
fn leader_controller_hangs(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(5, "start")?;
    let old = r.leader()?;
    r.cluster.pause_controller(old, true)?;
    r.checks.push(format!("leader {old}'s controller frozen"));
    r.other_leader(old, "another node leads")?;
    if !r.log_contains(old, "transferring leadership") {
        bail!("node {old} lost leadership without handing it over");
    }
    r.checks.push(format!("node {old} handed leadership over"));
    r.progress(10, "the others commit")?;
    r.cluster.pause_controller(old, false)?;
    r.checks.push(format!("leader {old}'s controller thawed"));
    r.caught_up(old, "node with the thawed controller")?;
    r.safe()
}

/// Controller calls of 2 s each (twice the election timeout) slow blocks down but
/// never stop ticks, heartbeats or votes: the leader and the term stay.
fn slow_controller_keeps_leader(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(1, "first block through the slow controller")?;
    let leader = r.leader()?;
    let term = r.cluster.views()[leader - 1].term;
    r.checks.push(format!("leader {leader} in term {term:?}"));
    let mut changed = None;
    let from = max_height(&r.cluster.views(), true);
    r.wait(
        &format!("three more blocks after {from}, leader and term unchanged"),
        |v| {
            if let Some((i, n)) = v.iter().enumerate().find(|(i, n)| {
                n.alive
                    && n.term.is_some()
                    && (n.term != term || (*i + 1 == leader && n.role != Some(3)))
            }) {
                changed.get_or_insert(format!(
                    "node {} in term {:?}, role {:?}",
                    i + 1,
                    n.term,
                    n.role
                ));
            }
            changed.is_some() || max_height(v, true) >= from + 3
        },
    )?;
    if let Some(what) = changed {
        bail!("leadership changed under a slow controller: {what}");
    }
    r.checks.push("no leader change, no new term".into());
    r.safe()
}

/// Blocks of the configured size reach every node's controller.
fn blocks_of_size(r: &mut Run<'_>) -> anyhow::Result<()> {
    let bytes = r.spec.block_bytes;
    r.wait(
        &format!("every node commits 3 blocks of {bytes} bytes"),
        |v| v.iter().all(|n| n.chain_height >= 3),
    )?;
    let chains = r.cluster.chains();
    for (i, c) in chains.iter().enumerate() {
        let line = c
            .get(&3)
            .with_context(|| format!("node {} has no block 3", i + 1))?;
        let block = craft_devnet::controller::parse_block_line(line)
            .with_context(|| format!("node {}: block 3 is not a block: {line:.80}", i + 1))?;
        anyhow::ensure!(
            block.len() == bytes,
            "node {}: block 3 has {} bytes, expected {bytes}",
            i + 1,
            block.len()
        );
    }
    r.checks
        .push(format!("every node's block 3 is {bytes} bytes"));
    r.safe()
}

/// Every node is fed the hostile set of `craft_devnet::hostile` (`dev-hostile`): through the
/// development network as a real peer, and straight to its network handler from an
/// unknown origin. All nodes must live, refuse the forged raft messages (at the gate, or
/// at the origin check when they claim a raft id the origin does not speak for), and go
/// on committing.
fn hostile_input(r: &mut Run<'_>) -> anyhow::Result<()> {
    r.progress(5, "start")?;
    let nodes = r.cluster.state.nodes.clone();
    // Forged as the leader where it can be: a follower then meets the forgeries with the
    // leader's raft id, origin and checksum, and only its own state tells them wrong.
    let leader = r.leader()?;
    for target in &nodes {
        let sender = if target.index == leader {
            nodes[target.index % nodes.len()].index
        } else {
            leader
        };
        let report = r
            .cluster
            .feed_hostile(target.index, sender)?
            .replace('\n', "; ");
        r.checks.push(format!(
            "node {} fed the hostile set, stateful forgeries built from its term and index \
             included, as node {sender}: {}",
            target.index,
            report.trim_end_matches("; ")
        ));
    }
    let views = r.wait("every node alive after the hostile set", |v| {
        v.iter().all(|n| n.alive)
    })?;
    r.checks.push("every node is alive".into());
    for target in &nodes {
        // Refused by the gate in front of raft, or before it by the origin check (a
        // claim to a raft id the origin does not speak for, or to the target's own) or
        // the checksum (from an origin that sends checksums, a message without one).
        let m = crate::harness::scrape(target.metrics_port).unwrap_or_default();
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let gate = get("consensus_refused_messages");
        let before_gate = get("consensus_network_refused_total{reason=\"origin_conflict\"}")
            + get("consensus_network_refused_total{reason=\"checksum\"}");
        // Eighteen forged raft messages through the network, from the real sender's
        // origin and raft id with a valid checksum: all reach the gate. More sent
        // directly.
        anyhow::ensure!(
            gate >= 18.0 && gate + before_gate >= 36.0,
            "node {} refused only {gate} forged raft messages at the gate and {before_gate} before it",
            target.index
        );
    }
    r.checks
        .push("every node counted the forged raft messages as refused".into());
    r.wait("every node passes height +10", {
        let target = max_height(&views, true) + 10;
        move |v| v.iter().all(|n| n.chain_height >= target)
    })?;
    // Nothing they sent was kept in a form the node cannot start from: each node, killed
    // and started again, opens its raft data and catches up.
    for target in &nodes {
        let i = target.index;
        r.cluster.kill(i)?;
        r.cluster.start_consensus(i, false)?;
        // Its consensus process (not only its controller's chain file) must be serving
        // and commit blocks made after the restart.
        let goal = max_height(&r.cluster.views(), true) + 3;
        r.wait(
            &format!("node {i}, restarted after the hostile set, commits height {goal}"),
            move |v| v[i - 1].alive && v[i - 1].height.is_some_and(|h| h >= goal),
        )?;
    }
    r.checks
        .push("every node, SIGKILLed and restarted, opened its raft data and caught up".into());
    r.safe()
}

/// Node 1, the first validator, starts alone and campaigns to no one; nodes 2 and 3
/// start two seconds later. The election timeout is 50 s: a leader within half of it can
/// only come from node 1 asking again.
fn first_election_with_late_peers(r: &mut Run<'_>) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_secs(2));
    r.cluster.start_consensus(2, false)?;
    r.cluster.start_consensus(3, false)?;
    r.checks
        .push("node 1 started alone, nodes 2 and 3 two seconds later".into());
    let timeout = Duration::from_millis(r.spec.tick_ms * r.spec.election_tick as u64);
    let start = Instant::now();
    loop {
        let views = r.cluster.views();
        if views.iter().any(|n| n.alive && n.role == Some(3)) {
            r.checks.push(format!(
                "a leader before any election timeout ({:.1}s after the late nodes started, timeout {:.0}s)",
                start.elapsed().as_secs_f64(),
                timeout.as_secs_f64()
            ));
            break;
        }
        if start.elapsed() > timeout / 2 {
            bail!("no leader within half an election timeout ({timeout:?}) after the late nodes started");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        r.log_contains(1, "no leader yet: campaigning again"),
        "node 1 never campaigned again"
    );
    r.progress(5, "the chain commits")?;
    r.safe()
}

fn scenarios() -> Vec<(&'static str, Spec, Scenario)> {
    let late_peers = Spec {
        election_tick: 1000,
        held_back: vec![2, 3],
        ..spec(3)
    };
    let mut removal = spec(3);
    removal.schedule = vec![(40, vec![1, 2]), (100, vec![1, 2, 3])];
    let slow = Spec {
        controller_delay_ms: 2000,
        ..spec(3)
    };
    let sized = |bytes: usize| Spec {
        block_bytes: bytes,
        ..spec(3)
    };
    vec![
        (
            "slow_controller_keeps_leader",
            slow,
            slow_controller_keeps_leader as Scenario,
        ),
        ("blocks_1kib", sized(1 << 10), blocks_of_size),
        ("blocks_1mib", sized(1 << 20), blocks_of_size),
        ("blocks_8mib", sized(8 << 20), blocks_of_size),
        ("steady_progress", spec(3), steady_progress),
        (
            "first_election_with_late_peers",
            late_peers,
            first_election_with_late_peers,
        ),
        ("hostile_input", spec(3), hostile_input),
        ("leader_controller_hangs", spec(3), leader_controller_hangs),
        ("leader_kill_restart", spec(3), leader_kill_restart),
        ("all_killed_restart", spec(3), all_killed_restart),
        ("partitioned_leader_heal", spec(3), partitioned_leader_heal),
        ("validator_removal_readd", removal, validator_removal_readd),
        ("follower_catch_up", spec(3), follower_catch_up),
    ]
}

/// Prints the last lines of node `i`'s consensus log, indented.
fn print_log_tail(path: &Path, i: usize) {
    const LINES: usize = 25;
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("  node {i}: no log at {}", path.display());
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    println!(
        "  node {i}, last {} lines of {}:",
        LINES.min(lines.len()),
        path.display()
    );
    for line in &lines[lines.len().saturating_sub(LINES)..] {
        println!("    {line}");
    }
}

/// Runs the scenarios.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let bin_dir = build(root, args.release)?;
    let base: PathBuf = root.join("target").join("test-cluster");
    let mut passed = 0;
    let mut failed = Vec::new();
    for (name, spec, scenario) in scenarios() {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let dir = base.join(name);
        let started = Instant::now();
        println!("scenario {name} ...");
        let cluster = Cluster::create(&dir, &bin_dir, &spec, false)?;
        let mut run = Run {
            cluster,
            spec,
            name,
            checks: Vec::new(),
        };
        let mut result = scenario(&mut run);
        run.cluster.reload();
        run.cluster.down();
        // `down` returns only once every process has exited: a script may go on to
        // `clean` or `up` at once.
        let left = run.cluster.running_pids();
        if result.is_ok() && !left.is_empty() {
            result = Err(anyhow::anyhow!(
                "processes {left:?} still running after down"
            ));
        }
        for c in &run.checks {
            println!("  checked: {c}");
        }
        match result {
            Ok(()) => {
                passed += 1;
                println!("  ok ({:.1}s)", started.elapsed().as_secs_f64());
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e) => {
                println!("  FAILED: {e:#}\n  logs kept in {}", dir.display());
                // CI keeps only what is printed: each node's last log lines.
                for i in 1..=run.cluster.state.nodes.len() {
                    print_log_tail(&run.cluster.node_dir(i).join("consensus.log"), i);
                }
                failed.push(name);
            }
        }
    }
    println!("test-cluster: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
