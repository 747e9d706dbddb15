//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.
//!
//! Nothing is skipped silently. A test or step that cannot run here (no FUSE, no Docker
//! engine, a tool missing) says `skipped` and why, and appends a line to the file
//! `CRAFT_SKIP_LOG` names, which `ci` sets; the summary counts the lines. In CI
//! (`CI=true`) such a test fails at once, and `ci` fails when anything was skipped.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use craft_faultfs::temp::{in_ci, SKIP_LOG_ENV};

use crate::harness::{cargo, skipped};

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

/// The lines of the skip log: one per test or step skipped.
fn skips(log: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(log) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", log.display())),
    }
}

/// Where the RustSec advisory database is read from: `CRAFT_ADVISORY_DB`, else the
/// snapshot in `../shared/advisory-db` beside the clone.
fn advisory_db(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CRAFT_ADVISORY_DB")
        .map(Into::into)
        .unwrap_or_else(|| root.join("..").join("shared").join("advisory-db"))
}

/// Checks `Cargo.lock` against the RustSec advisories with `cargo audit`, offline.
/// Advisories that cannot be fixed are listed, each with its reason, in
/// `.cargo/audit.toml`. Skipped, saying so, where cargo-audit or the database is missing
/// (`.ci/run` installs the tool).
fn audit(root: &Path) -> anyhow::Result<()> {
    let db = advisory_db(root);
    let have_tool = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["audit", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_tool || !db.join("crates").is_dir() {
        return skipped(
            "cargo audit",
            &if have_tool {
                format!("no advisory database at {}", db.display())
            } else {
                "cargo-audit is not installed (cargo install cargo-audit --locked)".to_string()
            },
        );
    }
    let db = db.to_string_lossy().into_owned();
    cargo(
        root,
        &[
            "audit",
            "--no-fetch",
            "--stale",
            "--db",
            &db,
            "--deny",
            "warnings",
        ],
        &[],
    )
}

/// Runs the checks.
/// The Kubernetes manifests of `deploy/k8s`, validated offline against the Kubernetes
/// schemas (strict: an unknown field fails) with `kubernetes-validate` from PyPI, which
/// ships the schemas. `.ci/run` installs it; elsewhere a missing tool is a counted
/// skip.
fn kubernetes_manifests(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("deploy/k8s");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // kustomize's own file is not a Kubernetes resource.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    manifests.sort();
    println!("==> kubernetes-validate --strict deploy/k8s/*.yaml");
    let status = match Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(&manifests)
        .status()
    {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skipped(
                "kubernetes-validate",
                "not installed (pip install kubernetes-validate)",
            );
        }
        Err(e) => return Err(e).context("running kubernetes-validate"),
    };
    if !status.success() {
        bail!("the Kubernetes manifests in deploy/k8s do not validate");
    }
    Ok(())
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let log = root.join("target").join("ci-skipped.log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&log, "").with_context(|| format!("emptying {}", log.display()))?;
    let log = crate::harness::SKIP_LOG.get_or_init(|| log).clone();
    let log_env = (SKIP_LOG_ENV, log.to_string_lossy().into_owned());
    checks(root, args, &log_env)?;
    let skipped = skips(&log)?;
    for line in &skipped {
        println!("  {line}");
    }
    println!("ci: every step passed, {} skipped", skipped.len());
    if in_ci() && !skipped.is_empty() {
        bail!(
            "{} skipped in CI (CI=true), where everything must run",
            skipped.len()
        );
    }
    Ok(())
}

/// Every step, skipped tests recorded in `log_env`'s file.
fn checks(root: &Path, args: &Args, log_env: &(&str, String)) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"], &[])?;
    audit(root)?;
    kubernetes_manifests(root)?;
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
        &[
            ("CRAFT_SIM_SEEDS", args.sim_seeds.to_string()),
            log_env.clone(),
        ],
    )?;
    if !args.skip_cluster {
        crate::test_cluster::run(
            root,
            &crate::test_cluster::Args {
                only: None,
                release: false,
            },
        )?;
        // The chaos suite, bounded: every fault for 3 s on the debug build.
        println!("==> cargo xtask chaos --debug --secs 3");
        crate::chaos::run(
            root,
            &crate::chaos::Args {
                secs: 3,
                recover_secs: 30,
                only: None,
                debug: true,
            },
        )?;
        // The contract, clause by clause, on ours.
        println!("==> cargo xtask conformance");
        crate::conformance::run(
            root,
            &crate::conformance::Args {
                bin: None,
                only: None,
                release: false,
                report_only: false,
            },
        )?;
        let bin_dir = crate::harness::build(root, false)?;
        // The interop harness itself, with our own binary standing in for the existing
        // service (CI has no build of it): a rolling replacement of every node of a
        // 4-node chain, each restarted with an empty raft directory.
        println!("==> cargo xtask interop --debug --only rolling_upgrade --reference <ours>");
        crate::interop::run(
            root,
            &crate::interop::Args {
                reference: Some(bin_dir.join("consensus")),
                zenoh: None,
                only: Some("rolling_upgrade".into()),
                secs: 2,
                rounds: 1,
                debug: true,
                keep: false,
            },
        )?;
        // The compose deployment, when a Docker engine is there (the script records a
        // skip otherwise, and fails in CI).
        println!("==> deploy/test-compose.sh");
        let status = Command::new("bash")
            .current_dir(root)
            .arg("deploy/test-compose.sh")
            .arg(&bin_dir)
            .env(log_env.0, &log_env.1)
            .status()
            .context("running deploy/test-compose.sh")?;
        if !status.success() {
            bail!("deploy/test-compose.sh failed");
        }
    } else {
        skipped(
            "the multi-process scenarios (test-cluster, chaos, conformance, interop, compose)",
            "--skip-cluster",
        )?;
    }
    Ok(())
}
