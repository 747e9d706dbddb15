//! `craft-kv`: one node of the replicated key-value store. All logic lives in the
//! library; this binary parses the command line, binds, runs until shutdown.

use anyhow::Context;
use craft_kv::cli::Args;
use craft_kv::node::{KvNode, NodeError};
use craft_kv::shutdown::Shutdown;
use tokio::net::TcpListener;

/// mimalloc: a large value is allocated and freed several times on its way
/// (decoded, encoded, sent, stored); the system allocator maps, zeroes and unmaps fresh
/// pages for each such buffer, mimalloc reuses its own. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The node runs as a task on the workers: `block_on`'s own future is polled on the
    // main thread, which would cost cross-thread wake-ups on every request.
    runtime.block_on(async {
        match tokio::spawn(run(args)).await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the node task failed: {e}")),
        }
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Logs go to stderr, as hraftd's do, in colour only on a terminal: a log file holds
    // plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let raft_listener = TcpListener::bind(&args.raddr)
        .await
        .with_context(|| format!("binding the raft address {} (--raddr)", args.raddr))?;
    let http_listener = TcpListener::bind(&args.haddr)
        .await
        .with_context(|| format!("binding the HTTP address {} (--haddr)", args.haddr))?;
    let shutdown = Shutdown::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                tracing::info!("interrupted; shutting down");
                signal.signal();
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for Ctrl-C; use POST /shutdown"),
        }
    });
    let node = match KvNode::start_with(args.node_config(), raft_listener, http_listener, shutdown)
        .await
    {
        Ok(node) => node,
        Err(NodeError::StoppedBeforeSetup) => {
            tracing::info!("stopped before it was set up");
            return Ok(());
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("starting node {} on {}", args.id, args.data_dir.display())
            })
        }
    };
    node.wait().await.context("node stopped with an error")?;
    tracing::info!("stopped");
    Ok(())
}
