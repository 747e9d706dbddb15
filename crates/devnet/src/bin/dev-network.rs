//! The development network as a process: serves node `i` on `--base-port + i - 1`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cita_proto::network::network_service_server::NetworkServiceServer;
use clap::Parser;
use craft_devnet::network::DevNetwork;

/// A toy CITA-Cloud network service routing messages between local nodes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of nodes (with --base-port).
    #[arg(long, required_unless_present = "ports")]
    nodes: Option<usize>,
    /// Node i's network service listens on base-port + i - 1.
    #[arg(long, default_value_t = 50000)]
    base_port: u16,
    /// Explicit port of each node's network service, in node order (overrides
    /// --nodes/--base-port).
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// File of cut links (`A B` or `A *` per line), re-read continuously.
    #[arg(long)]
    partition_file: Option<PathBuf>,
    /// File of link fault rules (`nodes=1,2 delay=500ms loss=75% ...` per line), re-read
    /// continuously.
    #[arg(long)]
    faults_file: Option<PathBuf>,
    /// Write message counters (JSON) to this file at start and twice a second after.
    #[arg(long)]
    stats_file: Option<PathBuf>,
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
    let ports: Vec<u16> = if args.ports.is_empty() {
        let n = args.nodes.unwrap_or(0);
        (0..n)
            .map(|i| {
                args.base_port
                    .checked_add(i as u16)
                    .context("port out of range")
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        args.ports.clone()
    };
    anyhow::ensure!(!ports.is_empty(), "at least one node is needed");
    let net = DevNetwork::new(ports.len());
    if let Some(path) = args.partition_file.clone() {
        tokio::spawn(net.clone().follow_partition_file(path));
    }
    if let Some(path) = args.faults_file.clone() {
        tokio::spawn(net.clone().follow_faults_file(path));
    }
    if let Some(path) = args.stats_file.clone() {
        let net = net.clone();
        tokio::spawn(async move {
            let tmp = path.with_extension("tmp");
            // The first tick is at once: the file exists from the start.
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                every.tick().await;
                let json = net.stats_json();
                if let Err(e) =
                    std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "writing stats failed");
                }
            }
        });
    }
    let mut servers = tokio::task::JoinSet::new();
    for (i, port) in (1u64..).zip(ports) {
        let addr = SocketAddr::new(args.host, port);
        // Bound before anything is spawned: a port in use fails the start, named.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} for node {i}"))?;
        tracing::info!(node = i, %addr, "serving network for node");
        servers.spawn(serve_node(net.clone(), i, addr, listener));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        Some(res) = servers.join_next() => {
            res.context("server task")?.context("server failed")?;
            Ok(())
        }
    }
}

/// Serves node `i` on `addr` while its network service is up; while a `down` rule names
/// it the port is closed (connections are refused, as to a killed service), and it is
/// bound again when the rule is lifted.
async fn serve_node(
    net: Arc<DevNetwork>,
    i: u64,
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut down = net.down_watch(i).with_context(|| format!("no node {i}"))?;
    let mut listener = Some(listener);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                let _ = down.wait_for(|d| !*d).await;
                bind_again(addr).await?
            }
        };
        let svc = NetworkServiceServer::new(net.service(i))
            .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES);
        let mut stop = down.clone();
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(l),
                async move {
                    let _ = stop.wait_for(|d| *d).await;
                },
            )
            .await
            .with_context(|| format!("serving node {i} on {addr}"))?;
        tracing::info!(node = i, %addr, "port closed: network service down");
    }
}

/// Binds `addr` again after it was closed, retrying for a few seconds while the kernel
/// still holds it.
async fn bind_again(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "port open again: network service up");
                return Ok(l);
            }
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(%addr, error = %e, "binding again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr} again")),
        }
    }
}
