//! `consensus`: the raft consensus microservice for CITA-Cloud.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use consensus::config::ConsensusConfig;

/// mimalloc: a block of megabytes is allocated and freed several times on its way
/// (decoded, encoded, sent, stored); the system allocator maps, zeroes and unmaps fresh
/// pages for each such buffer, mimalloc reuses its own. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "consensus",
    version,
    about = "Raft consensus service for CITA-Cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// run the service
    Run {
        /// the consensus config
        #[arg(short = 'c', long = "config", default_value = "config.toml")]
        config: PathBuf,
        /// the log dir. Overrides the config
        #[arg(short = 'd', long = "log-dir")]
        log_dir: Option<String>,
        /// the log file name. Overrides the config
        #[arg(short = 'f', long = "log-file-name")]
        log_file_name: Option<String>,
        /// if specified, log to stdout. Overrides the config
        #[arg(long)]
        stdout: bool,
    },
    /// move the raft directory (raft_data_path) aside and start a new one that keeps
    /// only the term and vote; the leader then sends this node a snapshot. For a
    /// directory the service refuses to start from. Run it with the service stopped.
    ResetRaft {
        /// the consensus config
        #[arg(short = 'c', long = "config", default_value = "config.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::ResetRaft { config }) = &cli.command {
        let cfg = ConsensusConfig::load(config)?;
        let aside = consensus::reset::reset_raft(std::path::Path::new(&cfg.raft_data_path))?;
        println!(
            "raft data at {} reset (term and vote kept); the old directory is at {}",
            cfg.raft_data_path,
            aside.display()
        );
        return Ok(());
    }
    let Some(Command::Run {
        config,
        log_dir,
        log_file_name,
        stdout,
    }) = cli.command
    else {
        use clap::CommandFactory;
        Cli::command().print_help()?;
        return Ok(());
    };
    let mut cfg = ConsensusConfig::load(&config)?;
    if let Some(d) = log_dir {
        cfg.log_dir = d;
    }
    if let Some(f) = log_file_name {
        cfg.log_file_name = f;
    }
    if stdout {
        cfg.log_to_stdout = true;
    }
    let _guard = consensus::logging::init(&cfg)?;
    // One worker: the service's work is a chain of small steps, and a second worker
    // mostly adds cross-thread wake-ups. Multi-threaded all the same, so that a
    // RocksDB write can leave the worker (`block_in_place`) and other tasks go on
    // during the fsync.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The node runs as a task, on the worker: `block_on`'s own future is polled on this
    // (main) thread, and the block loop there would cost two cross-thread wake-ups per
    // block.
    let result = runtime.block_on(async {
        match tokio::spawn(consensus::node::run(cfg, shutdown_signal())).await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the node task failed: {e}")),
        }
    });
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "consensus failed");
    }
    result
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
