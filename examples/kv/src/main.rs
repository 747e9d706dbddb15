//! `craft-kv`: one node of the replicated key-value store. All logic lives in the
//! library; this binary parses the command line, binds, runs until shutdown.

use anyhow::Context;
use clap::Parser;
use craft_kv::cli::Args;
use craft_kv::node::KvNode;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let node = KvNode::start(args.node_config(), raft_listener, http_listener)
        .await
        .with_context(|| format!("starting node {} on {}", args.id, args.data_dir.display()))?;

    let shutdown = node.shutdown_signal();
    tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                tracing::info!("interrupted; shutting down");
                shutdown.signal();
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for Ctrl-C; use POST /shutdown"),
        }
    });
    node.wait().await.context("node stopped with an error")?;
    tracing::info!("stopped");
    Ok(())
}
