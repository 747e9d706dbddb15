//! The seeded fuzzer: a fault plan drawn from the seed, a run of random steps with
//! every checker after each one, then the liveness phase. Everything comes from the
//! seed, so `CRAFT_SIM_SEED=<seed>` replays a failure exactly.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use craft_core::raft::eraftpb::ConfChangeType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sim::cluster::{conf_change, Cluster, SimConfig};
use crate::sim::disk::SyncFlaw;

/// Which faults a run injects, and how hard.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Voters at bootstrap.
    pub voters: u64,
    /// Loss rate on every link.
    pub drop_rate: f64,
    /// Duplication rate.
    pub duplicate_rate: f64,
    /// Largest extra delay, in steps (reordering).
    pub max_delay: u64,
    /// Crash and restart nodes' processes (their disks keep every write).
    pub crashes: bool,
    /// Cut nodes' power (their disks keep what was synced), one node or all at once;
    /// restart them.
    pub power_loss: bool,
    /// Cut links: isolate nodes, split the cluster, one-way cuts.
    pub partitions: bool,
    /// Make single links very lossy.
    pub lossy_links: bool,
    /// Add and remove members.
    pub membership: bool,
    /// Transfer leadership.
    pub transfers: bool,
    /// Linearizable reads.
    pub reads: bool,
    /// Force elections.
    pub campaigns: bool,
    /// Chance per step that one fault happens.
    pub fault_rate: f64,
    /// Leaders tell followers of each commit at once
    /// ([`craft_core::ReplicaConfig::broadcast_commit`]).
    pub broadcast_commit: bool,
}

impl FaultPlan {
    /// A random mix of every fault.
    pub fn random(rng: &mut impl Rng) -> Self {
        let pick = |rng: &mut dyn rand::RngCore, xs: &[f64]| xs[rng.random_range(0..xs.len())];
        Self {
            voters: if rng.random_bool(0.5) { 3 } else { 5 },
            drop_rate: pick(rng, &[0.0, 0.0, 0.02, 0.1, 0.3]),
            duplicate_rate: pick(rng, &[0.0, 0.05, 0.2]),
            max_delay: [0, 2, 5, 12][rng.random_range(0..4)],
            crashes: rng.random_bool(0.6),
            partitions: rng.random_bool(0.6),
            lossy_links: rng.random_bool(0.3),
            membership: rng.random_bool(0.5),
            transfers: rng.random_bool(0.4),
            reads: rng.random_bool(0.6),
            campaigns: rng.random_bool(0.3),
            fault_rate: pick(rng, &[0.01, 0.03, 0.08]),
            // Drawn last, so the other faults of a seed stay what they were before
            // power loss existed.
            power_loss: rng.random_bool(0.5),
            // After it, likewise.
            broadcast_commit: rng.random_bool(0.5),
        }
    }
}

/// What one run did, to show the fuzzer exercises something.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    /// Steps taken, liveness phase included.
    pub steps: u64,
    /// Elections won.
    pub elections: usize,
    /// Proposals accepted by a leader.
    pub proposed: usize,
    /// Proposals acknowledged to the client.
    pub acked: usize,
    /// Reads answered.
    pub reads: usize,
    /// Snapshots installed from a leader.
    pub snapshots_received: u64,
    /// Faults injected.
    pub faults: u64,
    /// Power losses (a whole-cluster one counts once per node).
    pub power_losses: u64,
    /// Unsynced writes those power losses threw away.
    pub writes_lost: u64,
    /// Hash of the final state: equal for two runs of the same seed.
    pub fingerprint: u64,
}

/// Variations on a run, beyond what the seed draws.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Give every disk this flaw (`None`: honest disks).
    pub sync_flaw: Option<SyncFlaw>,
    /// Inject power losses whatever the seed's plan says.
    pub force_power_loss: bool,
    /// Leaders broadcast commits, or not, whatever the seed's plan says.
    pub broadcast_commit: Option<bool>,
}

/// Runs seed `seed`: `chaos_steps` random steps under its fault plan, then the liveness
/// phase. Panics (with the seed) on any violation.
pub fn run_seed(seed: u64, chaos_steps: u64) -> RunSummary {
    run_seed_with(seed, chaos_steps, RunOptions::default())
}

/// [`run_seed`] with `options`.
pub fn run_seed_with(seed: u64, chaos_steps: u64, options: RunOptions) -> RunSummary {
    let mut plan = FaultPlan::random(&mut StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15));
    plan.power_loss |= options.force_power_loss;
    plan.broadcast_commit = options.broadcast_commit.unwrap_or(plan.broadcast_commit);
    let config = SimConfig {
        sync_flaw: options.sync_flaw,
        broadcast_commit: plan.broadcast_commit,
        ..SimConfig::with_voters(plan.voters)
    };
    let mut c = Cluster::new(seed, config);
    c.note(format!("plan {plan:?}"));
    c.net.drop_rate = plan.drop_rate;
    c.net.duplicate_rate = plan.duplicate_rate;
    c.net.max_delay = plan.max_delay;
    let mut faults = 0;
    for _ in 0..chaos_steps {
        let step = catch_unwind(AssertUnwindSafe(|| random_step(&mut c, &plan)));
        match step {
            Ok(fault) => faults += u64::from(fault),
            // A checker's report already says everything.
            Err(panic) if panic_message(&*panic).starts_with(&format!("seed {seed} ")) => {
                resume_unwind(panic)
            }
            // A panic inside raft: report it with the cluster's state and recent actions.
            Err(panic) => c.fail(format!("panic: {}", panic_message(&*panic))),
        }
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| c.converge(3000))) {
        if panic_message(&*panic).starts_with(&format!("seed {seed} ")) {
            resume_unwind(panic);
        }
        c.fail(format!("panic: {}", panic_message(&*panic)));
    }
    RunSummary {
        steps: c.now,
        elections: c.election.elections(),
        proposed: c.client.proposed(),
        acked: c.client.acked(),
        reads: c.client.answered_reads.len(),
        snapshots_received: c.nodes.values().map(|n| n.snapshots_received).sum(),
        faults,
        power_losses: c.power_losses,
        writes_lost: c.writes_lost,
        fingerprint: c.fingerprint(),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "non-string panic".to_owned()
    }
}

/// Cuts `id`'s power. Half the time the disk keeps nothing unsynced (what LazyFS does
/// by default), else a random number of the unsynced writes, oldest first.
fn lose_power(c: &mut Cluster, id: u64) {
    let unsynced = c.nodes.get(&id).map_or(0, |n| n.store.unsynced_writes());
    let keep = if c.rng.random_bool(0.5) {
        0
    } else {
        c.rng.random_range(0..=unsynced)
    };
    c.power_loss(id, keep);
}

fn choose(c: &mut Cluster, ids: &[u64]) -> Option<u64> {
    (!ids.is_empty()).then(|| ids[c.rng.random_range(0..ids.len())])
}

/// One random step: maybe deliver, maybe tick, maybe propose, maybe a fault; then the
/// whole-cluster checks. Returns whether a fault was injected.
pub fn random_step(c: &mut Cluster, plan: &FaultPlan) -> bool {
    c.now += 1;
    if c.rng.random_bool(0.7) {
        let fraction = if c.rng.random_bool(0.2) { 0.5 } else { 1.0 };
        c.deliver(fraction);
    }
    let r: f64 = c.rng.random();
    if r < 0.25 {
        c.tick_all();
    } else if r < 0.35 {
        let live = c.live();
        if let Some(id) = choose(c, &live) {
            c.tick(id);
        }
    }
    if c.rng.random_bool(0.2) {
        c.propose_on_leader();
    }
    let fault = plan.fault_rate > 0.0 && c.rng.random_bool(plan.fault_rate);
    if fault {
        random_fault(c, plan);
    }
    c.check();
    fault
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash,
    PowerLoss,
    PowerLossAll,
    Restart,
    Isolate,
    Split,
    OneWayCut,
    Heal,
    LossyLink,
    Membership,
    Transfer,
    Read,
    Campaign,
}

fn random_fault(c: &mut Cluster, plan: &FaultPlan) {
    let mut menu = Vec::new();
    if plan.crashes {
        menu.extend([Fault::Crash, Fault::Restart, Fault::Restart]);
    }
    if plan.power_loss {
        menu.extend([Fault::PowerLoss; 3]);
        menu.extend([Fault::Restart; 3]);
        menu.push(Fault::PowerLossAll);
    }
    if plan.partitions {
        menu.extend([
            Fault::Isolate,
            Fault::Split,
            Fault::OneWayCut,
            Fault::Heal,
            Fault::Heal,
        ]);
    }
    if plan.lossy_links {
        menu.push(Fault::LossyLink);
    }
    if plan.membership {
        menu.push(Fault::Membership);
    }
    if plan.transfers {
        menu.push(Fault::Transfer);
    }
    if plan.reads {
        menu.extend([Fault::Read, Fault::Read]);
    }
    if plan.campaigns {
        menu.push(Fault::Campaign);
    }
    if menu.is_empty() {
        return;
    }
    let fault = menu[c.rng.random_range(0..menu.len())];
    let live = c.live();
    let members: Vec<u64> = c
        .nodes
        .values()
        .filter(|n| !n.removed)
        .map(|n| n.id)
        .collect();
    match fault {
        Fault::Crash => {
            if let Some(id) = choose(c, &live) {
                c.crash(id);
            }
        }
        Fault::PowerLoss => {
            if let Some(id) = choose(c, &members) {
                lose_power(c, id);
            }
        }
        Fault::PowerLossAll => {
            c.note("power loss everywhere");
            for &id in &members {
                lose_power(c, id);
            }
        }
        Fault::Restart => {
            let crashed = c.crashed();
            if let Some(id) = choose(c, &crashed) {
                c.restart(id);
            }
        }
        Fault::Isolate => {
            let target = if c.rng.random_bool(0.5) {
                c.leader()
            } else {
                choose(c, &members)
            };
            if let Some(id) = target {
                c.note(format!("isolate {id}"));
                c.net.isolate(id, members.iter().copied());
            }
        }
        Fault::Split => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for &id in &members {
                if c.rng.random_bool(0.5) {
                    a.push(id);
                } else {
                    b.push(id);
                }
            }
            c.note(format!("partition {a:?} | {b:?}"));
            c.net.partition(&[a, b]);
        }
        Fault::OneWayCut => {
            if let (Some(x), Some(y)) = (choose(c, &members), choose(c, &members)) {
                if x != y {
                    c.note(format!("cut {x} -> {y}"));
                    c.net.cut.insert((x, y));
                }
            }
        }
        Fault::Heal => {
            c.note("heal partitions");
            c.net.heal();
            c.net.link_drop.clear();
        }
        Fault::LossyLink => {
            if let (Some(x), Some(y)) = (choose(c, &members), choose(c, &members)) {
                let rate = c.rng.random_range(0.3..=1.0);
                c.note(format!("link {x} -> {y} loses {rate:.2}"));
                c.net.link_drop.insert((x, y), rate);
            }
        }
        Fault::Membership => {
            let Some(leader) = c.leader() else {
                return;
            };
            let voters = c.replica(leader).conf_state().voters.clone();
            if voters.len() < 5 && (voters.len() <= 3 || c.rng.random_bool(0.5)) {
                let id = c.add_empty_node();
                c.propose_conf_change(leader, conf_change(ConfChangeType::AddNode, id));
            } else if voters.len() > 3 {
                if let Some(id) = choose(c, &voters) {
                    c.propose_conf_change(leader, conf_change(ConfChangeType::RemoveNode, id));
                }
            }
        }
        Fault::Transfer => {
            let Some(leader) = c.leader() else {
                return;
            };
            let voters = c.replica(leader).conf_state().voters.clone();
            if let Some(to) = choose(c, &voters) {
                c.transfer_leader(leader, to);
            }
        }
        Fault::Read => {
            if let Some(leader) = c.leader() {
                c.read_index(leader);
            }
        }
        Fault::Campaign => {
            if let Some(id) = choose(c, &live) {
                c.campaign(id);
            }
        }
    }
}
