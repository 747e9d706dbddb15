//! `cargo xtask interop`: our consensus service and the existing one (`consensus_raft`) in
//! one raft group, under the development controllers and network.
//!
//! Everything is judged from outside, the same way for both binaries
//! ([`crate::blackbox`]). The oracle of every scenario: no height with two different
//! blocks on any two nodes, no process exited, and progress
//! within a bound of 20 election timeouts.
//!
//! With `--zenoh PATH` every scenario runs a second time over CITA-Cloud's real network
//! service, `network_zenoh` (one per node, QUIC with TLS; see [`crate::cluster::zenoh_net`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::blackbox::{self, Monitor};
use crate::cluster::{check_chains_agree, Cluster, Spec};
use crate::harness::{build_profile, Profile};
use crate::reference::{reference_help, ZENOH_HELP};

const LAST_STEP: &str =
    "cargo xtask interop --reference $REF/consensus_raft/target/release/consensus";

/// `cargo xtask interop`
#[derive(Debug, clap::Args)]
#[command(after_long_help = format!("{}\n\n{ZENOH_HELP}", reference_help(LAST_STEP)))]
pub struct Args {
    /// The existing service's `consensus` binary. Without it the command says how to
    /// build one and exits successfully.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// CITA-Cloud's `network_zenoh` binary: every scenario runs again over it (one
    /// network service per node, QUIC with TLS), named `<scenario>_zenoh`.
    #[arg(long)]
    pub zenoh: Option<PathBuf>,
    /// Run only scenarios whose name contains this, or one of these
    /// comma-separated parts (`--only all_,mixed`).
    #[arg(long)]
    pub only: Option<String>,
    /// Seconds of each blocks/s window.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Run the whole set this many times, one round after another, and print each
    /// scenario's blocks/s per round, the medians, and the mixed clusters' medians
    /// against the all-existing cluster's (a loopback cluster on a shared machine
    /// varies from run to run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Our binary from a debug build (checks the command itself; figures are not
    /// representative).
    #[arg(long)]
    pub debug: bool,
    /// Keep every scenario's logs and data under target/interop, not only a failed
    /// one's.
    #[arg(long)]
    pub keep: bool,
}

/// Raft timing of every interop cluster: the existing service ticks every 200 ms whatever
/// its config says, so ours is given the same tick; the election timeout is 3 s.
fn spec(nodes: usize) -> Spec {
    Spec {
        tick_ms: 200,
        heartbeat_tick: 3,
        election_tick: 15,
        log_retain: 200,
        controller_no_fsync: true,
        ..Spec::new(nodes, 0)
    }
}

/// Which implementation a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Reference,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Reference => "reference",
        }
    }
}

struct Run<'a> {
    cluster: Cluster,
    spec: Spec,
    name: &'a str,
    reference: PathBuf,
    kinds: Vec<Kind>,
    monitor: Monitor,
    checks: Vec<String>,
    /// Figures for the summary: (what, value).
    figures: Vec<(String, String)>,
}

impl Run<'_> {
    fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.spec.tick_ms * self.spec.election_tick as u64)
    }

    /// Liveness bound of every wait.
    fn bound(&self) -> Duration {
        self.election_timeout() * 20
    }

    fn max_tip(&mut self) -> u64 {
        let tips = blackbox::tips(&self.cluster);
        self.monitor.observe(&tips);
        tips.into_iter().max().unwrap_or(0)
    }

    /// Waits (feeding the gap monitor) until `pred` holds on the chain heights.
    fn wait(&mut self, what: &str, pred: impl FnMut(&[u64]) -> bool) -> anyhow::Result<Duration> {
        let bound = self.bound();
        let monitor = &mut self.monitor;
        let took = blackbox::wait(&self.cluster, bound, what, pred, |t| monitor.observe(t))
            .with_context(|| self.name.to_string())?;
        self.checks
            .push(format!("{what} (after {:.2}s)", took.as_secs_f64()));
        Ok(took)
    }

    fn progress(&mut self, blocks: u64, what: &str) -> anyhow::Result<()> {
        let target = self.max_tip() + blocks;
        self.wait(&format!("{what}: height {target}"), |t| {
            t.iter().copied().max().unwrap_or(0) >= target
        })?;
        Ok(())
    }

    fn leader_after(&mut self, after: u64) -> anyhow::Result<usize> {
        let bound = self.bound();
        let monitor = &mut self.monitor;
        blackbox::leader_after(&self.cluster, bound, after, |t| monitor.observe(t))
            .with_context(|| self.name.to_string())
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = match self.kinds[i - 1] {
            Kind::Ours => None,
            Kind::Reference => Some(self.reference.clone()),
        };
        self.cluster.set_consensus_bin(i, bin)?;
        self.cluster.start_consensus(i, false)
    }

    fn caught_up(&mut self, i: usize, from: u64, what: &str) -> anyhow::Result<Duration> {
        let bound = self.bound();
        let monitor = &mut self.monitor;
        let took = blackbox::caught_up(&self.cluster, bound, i, from, |t| monitor.observe(t))
            .with_context(|| format!("{}: {what}", self.name))?;
        self.checks.push(format!(
            "{what}: node {i} commits again and is level (after {:.2}s)",
            took.as_secs_f64()
        ));
        Ok(took)
    }

    fn alive(&self) -> anyhow::Result<()> {
        let views = self.cluster.views();
        for (i, v) in views.iter().enumerate() {
            if !v.alive {
                bail!("node {} ({}) exited", i + 1, self.kinds[i].name());
            }
        }
        Ok(())
    }

    fn safe(&mut self) -> anyhow::Result<()> {
        let n = check_chains_agree(&self.cluster.chains())?;
        self.checks
            .push(format!("safety: chains agree on all {n} heights"));
        Ok(())
    }

    /// Blocks per second over `secs`.
    fn rate(&mut self, secs: u64) -> anyhow::Result<f64> {
        let from = self.max_tip();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(100));
            self.max_tip();
        }
        let blocks = self.max_tip() - from;
        let rate = blocks as f64 / start.elapsed().as_secs_f64();
        self.checks
            .push(format!("{blocks} blocks in {secs}s: {rate:.1} blocks/s"));
        Ok(rate)
    }

    fn kind_list(&self) -> String {
        self.kinds
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{}={}", i + 1, k.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

type Scenario = fn(&mut Run<'_>, &Args) -> anyhow::Result<()>;

/// A scenario's name, whether it passed, and its figures (what, value).
type ScenarioOutcome = (String, bool, Vec<(String, String)>);

/// One implementation throughout: the baseline mixed clusters are compared with.
fn uniform(r: &mut Run<'_>, args: &Args) -> anyhow::Result<()> {
    r.leader_after(0)?;
    let rate = r.rate(args.secs)?;
    r.figures.push(("blocks/s".into(), format!("{rate:.1}")));
    r.alive()?;
    r.safe()
}

/// Mixed 3-node cluster led by a node of `want`'s kind: blocks/s, then the leader is
/// SIGKILLed (a node of the other kind takes over) and restarted.
fn led_by(r: &mut Run<'_>, args: &Args, want: Kind) -> anyhow::Result<()> {
    let mut leader = r.leader_after(0)?;
    let mut moves = 0;
    // Who wins the first election is a race; move leadership the black-box way until
    // the wanted kind leads.
    while r.kinds[leader - 1] != want {
        moves += 1;
        if moves > 8 {
            bail!("a {} node never became leader", want.name());
        }
        let h = r.max_tip();
        r.cluster.kill(leader)?;
        let next = r.leader_after(h)?;
        r.start(leader)?;
        r.caught_up(leader, h, "restarted")?;
        leader = next;
    }
    r.checks.push(format!(
        "node {leader} ({}) leads after {moves} leader kills",
        want.name()
    ));
    let rate = r.rate(args.secs)?;
    r.figures.push(("blocks/s".into(), format!("{rate:.1}")));
    r.safe()?;

    let h = r.max_tip();
    r.cluster.kill(leader)?;
    r.checks
        .push(format!("leader {leader} ({}) SIGKILLed", want.name()));
    let next = r.leader_after(h)?;
    r.checks
        .push(format!("node {next} ({}) leads", r.kinds[next - 1].name()));
    r.progress(20, "survivors commit")?;
    let from = r.max_tip();
    r.start(leader)?;
    let took = r.caught_up(leader, from, "restarted leader")?;
    r.figures.push((
        "catch-up after SIGKILL".into(),
        format!("{:.2}s", took.as_secs_f64()),
    ));
    r.progress(20, "the whole cluster commits")?;
    r.alive()?;
    r.safe()
}

fn led_by_ours(r: &mut Run<'_>, args: &Args) -> anyhow::Result<()> {
    led_by(r, args, Kind::Ours)
}

fn led_by_reference(r: &mut Run<'_>, args: &Args) -> anyhow::Result<()> {
    led_by(r, args, Kind::Reference)
}

/// Heights of the validator schedule of [`validator_changes`] (one block a second).
const REMOVE_OURS: u64 = 10;
const READD_OURS: u64 = 30;
const REMOVE_REFERENCE: u64 = 45;
const READD_REFERENCE: u64 = 65;

/// A 4-node cluster, two of each kind, one block a second: node 3 (ours) leaves the
/// validators and comes back, then node 4 (the existing service) does. Each removed node
/// must stay up (a self-removal is not a crash), and each re-added one must commit again.
///
/// That the removal took effect in raft, not only in the controller's list, is checked
/// by quorum: while the node is out, it is cut off and one more node is stopped, and the
/// two left must still commit. They are a quorum of the three voters only if the removed
/// node no longer votes; of four they are not.
fn validator_changes(r: &mut Run<'_>, _args: &Args) -> anyhow::Result<()> {
    for (node, removed, readded) in [
        (3, REMOVE_OURS, READD_OURS),
        (4, REMOVE_REFERENCE, READD_REFERENCE),
    ] {
        let kind = r.kinds[node - 1].name();
        r.wait(
            &format!("node {node} ({kind}) removed at height {removed}"),
            |t| t.iter().copied().max().unwrap_or(0) >= removed + 3,
        )?;
        r.alive()
            .with_context(|| format!("after node {node}'s removal"))?;
        r.checks
            .push(format!("node {node} ({kind}) stayed up while removed"));
        let tip = r.max_tip();
        if tip + 5 >= readded {
            bail!(
                "height {tip} already near the re-addition at {readded}: the schedule is too tight"
            );
        }
        let leader = r.leader_after(tip)?;
        let other = (1..=r.spec.nodes)
            .find(|i| *i != node && *i != leader)
            .context("no node to stop")?;
        r.cluster.partition(Some(node))?;
        r.cluster.stop(other, Duration::from_secs(5))?;
        r.progress(
            3,
            &format!("node {node} cut off and node {other} stopped, the two left commit"),
        )?;
        r.cluster.partition(None)?;
        r.start(other)?;
        let target = readded + 5;
        r.wait(
            &format!("node {node} ({kind}) re-added: every node passes {target}"),
            |t| t.iter().all(|h| *h >= target),
        )?;
    }
    r.alive()?;
    r.safe()
}

/// A 4-node chain of the existing service has each node replaced by ours, one at a time
/// (stopped, started as ours on the same address with an empty raft directory, waited
/// for until it has caught up), and is then rolled back the same way.
fn rolling_upgrade(r: &mut Run<'_>, args: &Args) -> anyhow::Result<()> {
    r.leader_after(0)?;
    let before = r.rate(args.secs.min(5))?;
    r.figures.push((
        "blocks/s before (all reference)".into(),
        format!("{before:.1}"),
    ));
    let start_height = r.max_tip();
    r.monitor = Monitor::new(start_height);
    let started = Instant::now();
    for (phase, to) in [("upgrade", Kind::Ours), ("rollback", Kind::Reference)] {
        let mut times = Vec::new();
        // The leader goes last: a fresh node of the existing service panics on a
        // heartbeat that commits past its empty log, and a leader of that service sends
        // one (it still counts what the node had before). Ours, leading, forgets what a
        // restarted peer had; a new leader, elected when the old one stops, knows nothing
        // of anyone's log yet.
        while let Some(i) = {
            let tip = r.max_tip();
            let leader = r.leader_after(tip)?;
            let left: Vec<usize> = (1..=r.spec.nodes)
                .filter(|i| r.kinds[i - 1] != to)
                .collect();
            left.iter()
                .copied()
                .find(|i| *i != leader)
                .or(left.first().copied())
        } {
            r.cluster.stop(i, Duration::from_secs(5))?;
            // Its height once stopped: only the new process can raise it.
            let from = blackbox::tips(&r.cluster)[i - 1];
            r.cluster.wipe_raft_data(i)?;
            r.kinds[i - 1] = to;
            r.start(i)?;
            let took = r.caught_up(i, from, &format!("{phase}: node {i} now {}", to.name()))?;
            times.push(format!("{}: {:.2}s", i, took.as_secs_f64()));
            // The existing service, started afresh, waits for its controller to push a
            // configuration, which a controller does after syncing: its catch-up is
            // reported, and the 10 s target holds for ours.
            if to == Kind::Ours && took > Duration::from_secs(10) {
                bail!(
                    "{phase}: node {i} took {:.1}s to catch up (target 10 s)",
                    took.as_secs_f64()
                );
            }
            // A few blocks with every node up before the next one goes.
            r.progress(10, &format!("{phase}: the chain goes on after node {i}"))?;
        }
        r.figures
            .push((format!("{phase} catch-up per node"), times.join(", ")));
        let rate = r.rate(args.secs.min(5))?;
        r.figures.push((
            format!("blocks/s after the {phase} (all {})", to.name()),
            format!("{rate:.1}"),
        ));
    }
    let blocks = r.max_tip() - start_height;
    let elapsed = started.elapsed().as_secs_f64();
    let (gap, at) = r.monitor.longest();
    let limit = r.election_timeout() + Duration::from_secs(5);
    r.figures.push((
        "blocks/s through upgrade and rollback".into(),
        format!(
            "{:.1} ({blocks} blocks in {elapsed:.1}s)",
            blocks as f64 / elapsed
        ),
    ));
    r.figures.push((
        "longest gap".into(),
        format!(
            "{:.2}s after height {at} (limit {:.0}s)",
            gap.as_secs_f64(),
            limit.as_secs_f64()
        ),
    ));
    if gap > limit {
        bail!(
            "no block for {:.2}s after height {at}: more than one election timeout plus 5 s",
            gap.as_secs_f64()
        );
    }
    r.alive()?;
    r.safe()
}

fn scenarios() -> Vec<(&'static str, Spec, Vec<Kind>, Scenario)> {
    use Kind::{Ours, Reference};
    let mut changes = Spec {
        block_interval: 1,
        ..spec(4)
    };
    changes.schedule = vec![
        (REMOVE_OURS, vec![1, 2, 4]),
        (READD_OURS, vec![1, 2, 3, 4]),
        (REMOVE_REFERENCE, vec![1, 2, 3]),
        (READD_REFERENCE, vec![1, 2, 3, 4]),
    ];
    vec![
        (
            "all_reference",
            spec(3),
            vec![Reference; 3],
            uniform as Scenario,
        ),
        ("all_ours", spec(3), vec![Ours; 3], uniform),
        (
            "mixed_led_by_ours",
            spec(3),
            vec![Ours, Reference, Reference],
            led_by_ours,
        ),
        (
            "mixed_led_by_reference",
            spec(3),
            vec![Reference, Ours, Ours],
            led_by_reference,
        ),
        (
            "validator_changes",
            changes,
            vec![Ours, Reference, Ours, Reference],
            validator_changes,
        ),
        // One block a second, as a chain runs (its default is one every 3 s): at full
        // speed the existing service's raft task exits and restarts now and then (its
        // log says `raft exit`), and a 4-node chain of it with one node being replaced
        // then has no quorum.
        (
            "rolling_upgrade",
            Spec {
                block_interval: 1,
                ..spec(4)
            },
            vec![Reference; 4],
            rolling_upgrade,
        ),
    ]
}

/// Runs the interop scenarios.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let Some(reference) = &args.reference else {
        println!(
            "interop: no --reference given, nothing run.\n\n{}",
            reference_help(LAST_STEP)
        );
        return Ok(());
    };
    anyhow::ensure!(
        reference.is_file(),
        "no consensus binary at {}\n\n{}",
        reference.display(),
        reference_help(LAST_STEP)
    );
    let reference = fs::canonicalize(reference)
        .with_context(|| format!("resolving {}", reference.display()))?;
    let bin_dir = build_profile(root, Profile::for_figures(args.debug))?;
    println!(
        "interop: ours {}, reference {}{}",
        bin_dir.join("consensus").display(),
        reference.display(),
        args.zenoh
            .as_ref()
            .map(|z| format!(", network_zenoh {}", z.display()))
            .unwrap_or_default()
    );
    let zenoh = match &args.zenoh {
        Some(path) => {
            anyhow::ensure!(
                path.is_file(),
                "no network_zenoh binary at {}\n\n{ZENOH_HELP}",
                path.display()
            );
            Some(fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?)
        }
        None => None,
    };
    let base = root.join("target").join("interop");
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    let networks = std::iter::once(None).chain(zenoh.iter().map(Some));
    let runs: Vec<(String, Spec, Vec<Kind>, Scenario)> = networks
        .flat_map(|net| {
            scenarios()
                .into_iter()
                .map(move |(name, mut spec, kinds, scenario)| {
                    spec.zenoh = net.cloned();
                    let name = match net {
                        Some(_) => format!("{name}_zenoh"),
                        None => name.to_string(),
                    };
                    (name, spec, kinds, scenario)
                })
        })
        .collect();
    let rounds = args.rounds;
    let runs = (1..=rounds).flat_map(|round| runs.iter().map(move |r| (round, r.clone())));
    for (round, (name, mut spec, kinds, scenario)) in runs {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|part| name.contains(part)))
        {
            continue;
        }
        let name = name.as_str();
        spec.consensus_bins = kinds
            .iter()
            .map(|k| match k {
                Kind::Ours => bin_dir.join("consensus"),
                Kind::Reference => reference.clone(),
            })
            .collect();
        let dir = match rounds {
            1 => base.join(name),
            _ => base.join(format!("{name}-{round}")),
        };
        let started = Instant::now();
        let cluster = Cluster::create(&dir, &bin_dir, &spec, false)?;
        let mut run = Run {
            cluster,
            spec,
            name,
            reference: reference.clone(),
            kinds,
            monitor: Monitor::new(0),
            checks: Vec::new(),
            figures: Vec::new(),
        };
        match rounds {
            1 => println!("scenario {name} ({}) ...", run.kind_list()),
            _ => println!(
                "scenario {name} ({}), round {round} of {rounds} ...",
                run.kind_list()
            ),
        }
        let result = scenario(&mut run, args);
        run.cluster.reload();
        run.cluster.down();
        for c in &run.checks {
            println!("  checked: {c}");
        }
        for (what, value) in &run.figures {
            println!("  {what}: {value}");
        }
        match &result {
            Ok(()) => {
                println!("  ok ({:.1}s)", started.elapsed().as_secs_f64());
                if args.keep {
                    println!("  logs kept in {}", dir.display());
                } else {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
            Err(e) => {
                println!("  FAILED: {e:#}\n  logs kept in {}", dir.display());
                failed.push(name.to_string());
            }
        }
        summary.push((name.to_string(), result.is_ok(), run.figures));
    }
    if rounds > 1 {
        print!("{}", rates_table(&summary));
    }
    println!("\n| scenario | result | figures |\n|---|---|---|");
    for (name, ok, figures) in &summary {
        let text: Vec<String> = figures.iter().map(|(w, v)| format!("{w}: {v}")).collect();
        println!(
            "| {name} | {} | {} |",
            if *ok { "pass" } else { "FAIL" },
            text.join("; ")
        );
    }
    if !failed.is_empty() {
        bail!("interop scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// A table of each scenario's blocks/s over the rounds, their median, and that median
/// against the all-existing cluster's on the same network.
fn rates_table(summary: &[ScenarioOutcome]) -> String {
    let mut rates: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, _, figures) in summary {
        let Some(rate) = figures
            .iter()
            .find(|(what, _)| what == "blocks/s")
            .and_then(|(_, v)| v.parse::<f64>().ok())
        else {
            continue;
        };
        match rates.iter_mut().find(|(n, _)| *n == name.as_str()) {
            Some((_, xs)) => xs.push(rate),
            None => rates.push((name, vec![rate])),
        }
    }
    let median_of = |name: &str| {
        rates
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, xs)| crate::harness::median(xs.clone()))
    };
    let mut table =
        String::from("\n| scenario | blocks/s per round | median | median / all_reference |\n|---|---|---:|---:|\n");
    for (name, xs) in &rates {
        let base = match name.strip_suffix("_zenoh") {
            Some(_) => "all_reference_zenoh",
            None => "all_reference",
        };
        let median = crate::harness::median(xs.clone());
        let ratio = median_of(base)
            .filter(|b| *b > 0.0)
            .map(|b| format!("{:.2}x", median / b))
            .unwrap_or_else(|| "-".into());
        let each: Vec<String> = xs.iter().map(|x| format!("{x:.1}")).collect();
        table += &format!("| {name} | {} | {median:.1} | {ratio} |\n", each.join(", "));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, rate: Option<&str>) -> ScenarioOutcome {
        let mut figures = vec![("catch-up after SIGKILL".to_string(), "0.40s".to_string())];
        if let Some(rate) = rate {
            figures.insert(0, ("blocks/s".to_string(), rate.to_string()));
        }
        (name.to_string(), true, figures)
    }

    #[test]
    fn rates_are_medians_over_rounds_against_the_all_existing_cluster_of_the_same_network() {
        let summary = vec![
            row("all_reference", Some("100.0")),
            row("mixed_led_by_ours", Some("150.0")),
            row("all_reference_zenoh", Some("80.0")),
            row("mixed_led_by_ours_zenoh", Some("60.0")),
            row("validator_changes", None),
            row("all_reference", Some("120.0")),
            row("mixed_led_by_ours", Some("170.0")),
            row("all_reference_zenoh", Some("90.0")),
            row("mixed_led_by_ours_zenoh", Some("99.0")),
            row("all_reference", Some("110.0")),
            row("mixed_led_by_ours", Some("160.0")),
            row("all_reference_zenoh", Some("100.0")),
            row("mixed_led_by_ours_zenoh", Some("108.0")),
        ];
        let table = rates_table(&summary);
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            lines[1..],
            [
                "| all_reference | 100.0, 120.0, 110.0 | 110.0 | 1.00x |",
                "| mixed_led_by_ours | 150.0, 170.0, 160.0 | 160.0 | 1.45x |",
                "| all_reference_zenoh | 80.0, 90.0, 100.0 | 90.0 | 1.00x |",
                "| mixed_led_by_ours_zenoh | 60.0, 99.0, 108.0 | 99.0 | 1.10x |",
            ]
        );
    }
}
