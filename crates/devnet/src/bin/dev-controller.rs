//! The development controller as a process: `dev-controller --listen ... --consensus ...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use cita_proto::controller::consensus2_controller_service_server::Consensus2ControllerServiceServer;
use clap::Parser;
use craft_devnet::controller::{DevChain, DevChainConfig};

/// A toy CITA-Cloud controller for local clusters and tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve Consensus2ControllerService on.
    #[arg(long, default_value = "127.0.0.1:50004")]
    listen: SocketAddr,
    /// gRPC address of this node's consensus service, pushed with Reconfigure at start.
    #[arg(long, default_value = "http://127.0.0.1:50001")]
    consensus: String,
    /// Name written into proposals.
    #[arg(long, default_value = "dev")]
    node_name: String,
    /// Validator node addresses (hex, comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
    validators: Vec<String>,
    /// Block interval in seconds.
    #[arg(long, default_value_t = 3)]
    block_interval: u32,
    /// Validator changes, `HEIGHT:hex,hex,...`; repeatable.
    #[arg(long = "validators-at")]
    validators_at: Vec<String>,
    /// Directory for chain.log; omitted keeps the chain in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Peer controllers (`http://host:port`, comma separated) to sync heights from.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Sync from peers when this many blocks behind.
    #[arg(long, default_value_t = 20)]
    sync_lag: u64,
    /// Artificial delay on every call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Do not fsync chain.log (benchmarks of an instant controller only).
    #[arg(long)]
    no_fsync: bool,
    /// Pad each proposal's data to this many bytes.
    #[arg(long, default_value_t = 0)]
    block_bytes: usize,
    /// Write the call counters and block latency histogram (JSON) to this file twice a
    /// second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Every N-th `GetProposal` answers a proposal at a wrong height (conformance tests
    /// of consensus; 0: never).
    #[arg(long, default_value_t = 0)]
    wrong_height_every: u64,
    /// Every N-th `CheckProposal` is refused as a transient failure (conformance tests
    /// of consensus; 0: never).
    #[arg(long, default_value_t = 0)]
    fail_check_every: u64,
}

fn parse_validators(list: &[String]) -> anyhow::Result<Vec<Vec<u8>>> {
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bytes = hex::decode(s.trim_start_matches("0x"))
                .with_context(|| format!("validator {s:?} is not hex"))?;
            if bytes.len() != 20 {
                bail!("validator {s:?} is {} bytes, expected 20", bytes.len());
            }
            Ok(bytes)
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour only on a terminal: a cluster's log files are plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let mut schedule = Vec::new();
    for item in &args.validators_at {
        let (h, list) = item
            .split_once(':')
            .with_context(|| format!("--validators-at {item:?}: expected HEIGHT:hex,hex"))?;
        let h: u64 = h
            .parse()
            .with_context(|| format!("--validators-at {item:?}: bad height"))?;
        let list: Vec<String> = list.split(',').map(str::to_string).collect();
        schedule.push((h, parse_validators(&list)?));
    }
    let chain = DevChain::open(DevChainConfig {
        node_name: args.node_name.clone(),
        validators: parse_validators(&args.validators)?,
        block_interval: args.block_interval,
        validator_schedule: schedule,
        data_dir: args.data_dir.clone(),
        delay: Duration::from_millis(args.delay_ms),
        no_fsync: args.no_fsync,
        block_bytes: args.block_bytes,
        wrong_height_every: args.wrong_height_every,
        fail_check_every: args.fail_check_every,
    })
    .context("opening the chain")?;
    if let Some(path) = args.stats_file.clone() {
        let chain = chain.clone();
        tokio::spawn(async move {
            let tmp = path.with_extension("tmp");
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let json = chain.stats().to_json();
                if let Err(e) =
                    std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "writing stats failed");
                }
            }
        });
    }
    tracing::info!(listen = %args.listen, height = chain.height(), "development controller starting");
    let pusher = chain.clone();
    let consensus = args.consensus.clone();
    let args_listen = args.listen;
    tokio::spawn(async move {
        pusher.reconfigure_until_accepted(consensus.clone()).await;
        if !args.peers.is_empty() {
            pusher
                .follow_peers(args.peers.clone(), consensus, args.sync_lag)
                .await;
        }
    });
    tonic::transport::Server::builder()
        .add_service(
            Consensus2ControllerServiceServer::new(chain)
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_shutdown(args_listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    Ok(())
}
