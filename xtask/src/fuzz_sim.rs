//! `cargo xtask fuzz-sim`: the deterministic simulation of craft-core over many seeds.

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
    crate::ci::cargo(
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
    )
}
