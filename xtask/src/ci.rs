//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// `cargo xtask ci`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seeds for the simulation fuzzer.
    #[arg(long, default_value_t = 1500)]
    pub sim_seeds: u64,
    /// Skip the multi-process integration scenarios.
    #[arg(long)]
    pub skip_cluster: bool,
}

/// Runs `cargo` with `args` in `root`, failing on a non-zero exit.
pub fn cargo(root: &Path, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<()> {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(&program)
        .current_dir(root)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    println!("<== {:.0}s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs the checks.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The simulation fuzzer runs inside the workspace test run (one feature
    // resolution, one build), with more seeds than a plain `cargo test`.
    cargo(
        root,
        &["test", "--workspace"],
        &[("CRAFT_SIM_SEEDS", args.sim_seeds.to_string())],
    )?;
    if !args.skip_cluster {
        crate::test_cluster::run(
            root,
            &crate::test_cluster::Args {
                only: None,
                release: false,
            },
        )?;
        // The compose deployment, when a Docker engine is there (the script skips
        // otherwise).
        let bin_dir = crate::cluster::build(root, false)?;
        println!("==> deploy/test-compose.sh");
        let status = Command::new("bash")
            .current_dir(root)
            .arg("deploy/test-compose.sh")
            .arg(&bin_dir)
            .status()
            .context("running deploy/test-compose.sh")?;
        if !status.success() {
            bail!("deploy/test-compose.sh failed");
        }
    }
    Ok(())
}
