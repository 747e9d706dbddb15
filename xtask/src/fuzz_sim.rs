//! `cargo xtask fuzz-sim`: the deterministic simulation of craft-core over many seeds,
//! then the hostile member (a voter that forges around the cluster's state) for at
//! least a million adversarial messages.

use std::path::Path;

/// `cargo xtask fuzz-sim`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many random seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cut nodes' power in every seed (by default about half the seeds do).
    #[arg(long)]
    pub power_loss: bool,
    /// Run on deliberately broken disks that acknowledge writes before they are
    /// durable (`lag-one-write`, `unsynced-votes`, `unsynced-entries`, `no-sync`): the
    /// checkers must catch them.
    #[arg(long)]
    pub flaw: Option<String>,
    /// Adversarial messages the hostile member sends in all (over seeds of 4,000).
    #[arg(long, default_value_t = 1_000_000)]
    pub hostile_messages: u64,
    /// Skip the hostile member.
    #[arg(long)]
    pub no_hostile: bool,
}

/// Runs the simulation fuzzer.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let mut envs = vec![("CRAFT_SIM_SEEDS", args.seeds.to_string())];
    if let Some(seed) = args.seed {
        envs.push(("CRAFT_SIM_SEED", seed.to_string()));
    }
    if args.power_loss {
        envs.push(("CRAFT_SIM_POWER_LOSS", "1".to_owned()));
    }
    if let Some(flaw) = &args.flaw {
        envs.push(("CRAFT_SIM_FLAW", flaw.clone()));
    }
    crate::harness::cargo(
        root,
        &[
            "test",
            "-p",
            "craft-core",
            "--test",
            "simulation",
            "fuzz_seeds",
            "--",
            "--nocapture",
        ],
        &envs,
    )?;
    if args.no_hostile || args.seed.is_some() || args.flaw.is_some() {
        return Ok(());
    }
    let per_seed = 4000u64;
    let seeds = args.hostile_messages.div_ceil(per_seed).max(1);
    crate::harness::cargo(
        root,
        &[
            "test",
            "-p",
            "craft-core",
            "--test",
            "hostile_sim",
            "--",
            "--nocapture",
        ],
        &[
            ("CRAFT_HOSTILE_SEEDS", seeds.to_string()),
            ("CRAFT_HOSTILE_MESSAGES", per_seed.to_string()),
        ],
    )
}
