//! The multi-process side of the demos: one node per process, as in the Hoverbear
//! raft-rs examples (`register server 1 1 127.0.0.1:8080`). A node serves its demo's
//! HTTP API on the address it is given and talks raft (gRPC, the craft peer transport)
//! on the next port; its raft log is durable (RocksDB) under `./craft-<demo>-<id>`.
//! Writes to a follower are answered `307` to the leader; the client follows them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use craft_core::{make_snapshot, voters, DriverConfig, LogStore, NodeHandle, ReplicaConfig};
use craft_kv::client::ApiClient;
use craft_storage::{RocksLogStore, StoreOptions};
use craft_transport::limits::ConnectionLimit;
use craft_transport::peer::{PeerService, PeerTransport};
use tokio::net::TcpListener;

/// A node's raft address: the port after its API address.
pub fn raft_addr(api: SocketAddr) -> anyhow::Result<SocketAddr> {
    let port = api
        .port()
        .checked_add(1)
        .with_context(|| format!("{api}: no port after it for raft"))?;
    Ok(SocketAddr::new(api.ip(), port))
}

/// What a demo's HTTP handlers get: the raft handle and where the members are.
pub struct Node<R> {
    /// This node's id.
    pub id: u64,
    /// The raft driver.
    pub raft: NodeHandle<R>,
    /// Every member's API address, by id.
    pub peers: BTreeMap<u64, SocketAddr>,
}

impl<R> Clone for Node<R> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft: self.raft.clone(),
            peers: self.peers.clone(),
        }
    }
}

impl<R: Send + 'static> Node<R> {
    /// When this node does not lead: a `307` to `path` on the leader, or `503` when no
    /// leader is known. `None` when it leads.
    pub fn not_leader(&self, path: &str) -> Option<Response> {
        let status = self.raft.status();
        if status.leader_id == self.id {
            return None;
        }
        Some(match self.peers.get(&status.leader_id) {
            Some(addr) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("http://{addr}{path}"))],
            )
                .into_response(),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known; retry later\n",
            )
                .into_response(),
        })
    }
}

/// Runs node `id` of the cluster `peers` (API addresses by id) with `state_machine`,
/// serving `routes(node)` until Ctrl-C.
pub async fn serve<M>(
    demo: &str,
    id: u64,
    peers: BTreeMap<u64, SocketAddr>,
    state_machine: M,
    routes: impl FnOnce(Node<M::Response>) -> axum::Router,
) -> anyhow::Result<()>
where
    M: craft_core::StateMachine,
{
    let api = *peers
        .get(&id)
        .with_context(|| format!("node {id} is not among the peers {peers:?}"))?;
    let data_dir = PathBuf::from(format!("craft-{demo}-{id}"));
    let store = RocksLogStore::open(&data_dir, StoreOptions::default())
        .with_context(|| format!("opening {}", data_dir.display()))?;
    if store.is_empty()? {
        // Every node is given the same peers, so all bootstrap the same voters.
        store.bootstrap(make_snapshot(
            1,
            1,
            voters(peers.keys().copied()),
            Vec::new(),
        ))?;
    }
    let transport = PeerTransport::new(id);
    for (&peer, &addr) in peers.iter().filter(|(&peer, _)| peer != id) {
        transport.set_peer(peer, &format!("http://{}", raft_addr(addr)?))?;
    }
    let raft_listener = TcpListener::bind(raft_addr(api)?)
        .await
        .with_context(|| format!("binding the raft address {}", raft_addr(api).unwrap_or(api)))?;
    let api_listener = TcpListener::bind(api)
        .await
        .with_context(|| format!("binding {api}"))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let driver = DriverConfig {
        tick_interval: Duration::from_millis(50),
        ..DriverConfig::default()
    };
    let (raft, task) = craft_core::start(
        ReplicaConfig::new(id),
        driver,
        store,
        state_machine,
        transport,
        stopped(stop_rx.clone()),
    )
    .await?;
    let inbox = raft.clone();
    let inbound: craft_transport::cita::Inbound = Arc::new(move |msg| inbox.step(msg));
    let raft_server = tokio::spawn(craft_transport::peer::serve(
        raft_listener,
        PeerService::new(inbound),
        None,
        ConnectionLimit::new(craft_transport::limits::DEFAULT_MAX_CONNECTIONS),
        stopped(stop_rx.clone()),
    ));
    let app = routes(Node { id, raft, peers });
    println!(
        "node {id}: API on http://{api}, raft on {}, log in {}",
        raft_addr(api)?,
        data_dir.display()
    );
    let shutdown = stopped(stop_rx);
    let http = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    tokio::signal::ctrl_c().await?;
    println!("node {id}: stopping");
    stop_tx.send_replace(true);
    task.await??;
    raft_server.await??;
    http.await??;
    Ok(())
}

/// A client call: `method path` on `addr`, following the leader's redirects. Prints
/// and returns the answer's body.
pub async fn call(method: Method, addr: &str, path: &str, body: Bytes) -> anyhow::Result<String> {
    let client = ApiClient::new(None, Duration::from_secs(10));
    let (mut addr, mut path) = (addr.to_string(), path.to_string());
    for _ in 0..5 {
        let (status, reply, location) = client
            .request_with_location(method.clone(), &addr, &path, body.clone())
            .await?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        match (status, location) {
            (StatusCode::TEMPORARY_REDIRECT, Some(location)) => {
                let rest = location
                    .strip_prefix("http://")
                    .with_context(|| format!("redirected to {location:?}"))?;
                let slash = rest.find('/').unwrap_or(rest.len());
                addr = rest[..slash].to_string();
                path = rest[slash..].to_string();
            }
            (status, _) if status.is_success() => return Ok(text),
            (status, _) => anyhow::bail!("{status}: {}", text.trim()),
        }
    }
    anyhow::bail!("redirected too many times")
}

/// `<id> <addr>...` style arguments: parses a socket address, naming the argument.
pub fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("{text:?} is not host:port (e.g. 127.0.0.1:8080)"))
}
