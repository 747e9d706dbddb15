//! `cargo xtask`: project automation that needs no tool beyond Cargo.
//!
//! Each verb lives in a module of its own and is one variant of [`Command`]; add a verb by
//! adding a module and a variant. Run `cargo xtask --help` for the list.

mod bench;
mod bench_kv;
mod blackbox;
mod chaos;
mod ci;
mod cita_chain;
mod cluster;
mod codegen;
mod conformance;
mod etcd;
mod fuzz;
mod fuzz_sim;
mod harness;
mod interop;
mod jepsen_kv;
mod kv_load;
mod procfs;
mod reference;
mod test_cluster;
mod tidy;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

/// Project automation for consensus-raft.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    command: Command,
}

/// The verbs of `cargo xtask`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the Rust code of the `.proto` files in `proto/` into
    /// `crates/proto/src/generated/`.
    Codegen(codegen::Args),
    /// Run a local multi-process cluster (consensus + development controller and network).
    Cluster(cluster::Args),
    /// Integration scenarios against real multi-process clusters.
    TestCluster(test_cluster::Args),
    /// Run the core's deterministic simulation over many seeds.
    FuzzSim(fuzz_sim::Args),
    /// Hostile-input tests of every network decoder with many generated inputs.
    Fuzz(fuzz::Args),
    /// Everything CI runs: fmt, clippy, simulation fuzzing, tests, integration clusters.
    Ci(ci::Args),
    /// Benchmarks: storage and replication benches, and a multi-process cluster bench.
    Bench(Box<bench::Args>),
    /// CITA-Cloud's chaos suite (link faults, kills) on a 4-node chain, as a table.
    Chaos(chaos::Args),
    /// The KV example's linearizability test, run longer: crashes, partitions, a checker.
    JepsenKv(jepsen_kv::Args),
    /// Our consensus beside the existing service (consensus_raft) in one raft group: mixed
    /// clusters, validator changes, a rolling upgrade and its rollback.
    Interop(interop::Args),
    /// Check any consensus binary against the CITA-Cloud contract, black-box, clause by
    /// clause.
    Conformance(conformance::Args),
    /// A local CITA-Cloud chain of the real services (controller, executor, storage,
    /// network) with ours, consensus_raft or consensus_overlord as its consensus.
    CitaChain(cita_chain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.command {
        Command::Codegen(args) => codegen::run(&root, &args),
        Command::Cluster(args) => cluster::run(&root, &args),
        Command::TestCluster(args) => test_cluster::run(&root, &args),
        Command::FuzzSim(args) => fuzz_sim::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Ci(args) => ci::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Chaos(args) => chaos::run(&root, &args),
        Command::JepsenKv(args) => jepsen_kv::run(&root, &args),
        Command::Interop(args) => interop::run(&root, &args),
        Command::Conformance(args) => conformance::run(&root, &args),
        Command::CitaChain(args) => cita_chain::run(&root, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Print the message and its causes, without the backtrace `RUST_BACKTRACE` would add.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory. Read at run time
/// (`cargo run` sets `CARGO_MANIFEST_DIR`), so a binary built from another checkout that
/// shares the target directory still works on this one.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}
