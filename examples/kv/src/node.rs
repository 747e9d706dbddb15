//! Wiring of one key-value node: the durable log store, the raft driver with the
//! key-value state machine, the peer gRPC server and the HTTP API, all stopped by one
//! [`Shutdown`].
//!
//! # Bootstrap
//!
//! The initial members of a cluster are exactly the ids listed in
//! [`NodeConfig::raft_peers`]. A node whose store is empty and whose id is in that list
//! bootstraps it: it installs the snapshot `make_snapshot(1, 1, voters(all listed ids),
//! empty state)`. Every initial member is given the same list, so every one installs the
//! same snapshot and their logs agree from index 1 on; no `/setup` call is needed.
//!
//! A node whose id is *not* in the list starts with an empty store and no bootstrap: it
//! waits until the leader adds it (`POST /join` on the leader) and then receives a
//! snapshot. A node whose store is not empty ignores the list for membership (raft's
//! own log knows it) and only uses it for addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use craft_core::{
    make_snapshot, voters, DriverConfig, LogStore, NodeHandle, NodeStatus, ReplicaConfig,
};
use craft_storage::{RocksLogStore, StoreOptions};
use craft_transport::limits::{ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use craft_transport::peer::{PeerService, PeerTransport};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::http_api::{router, ApiState};
use crate::peers::{endpoint_uri, AddressBook};
use crate::shutdown::Shutdown;
use crate::store::{KvReader, KvState, KvStateMachine, Outcome};
use crate::tls::{KvTls, KvTlsError, LimitAcceptor, TlsFiles};

/// Everything one node needs besides its two listeners.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's raft id (never 0).
    pub id: u64,
    /// Directory of the durable raft log (RocksDB lives in `data_dir/raft`).
    pub data_dir: PathBuf,
    /// Raft (gRPC) addresses `host:port` of the initial members, by id; see the module
    /// docs for how it decides bootstrap.
    pub raft_peers: BTreeMap<u64, String>,
    /// HTTP addresses `host:port` by id, for redirecting writes to the leader. This
    /// node's own is added from its HTTP listener when missing.
    pub http_peers: BTreeMap<u64, String>,
    /// Length of one raft tick. Default 100 ms (election after 1–2 s without leader).
    pub tick_interval: Duration,
    /// How long a write, a membership change or a read barrier may wait. Default 5 s.
    pub request_timeout: Duration,
    /// TLS files: mutual TLS between members and HTTPS for clients. Default: none
    /// (plain gRPC and HTTP; anyone who reaches the raft port can send raft messages).
    pub tls: Option<TlsFiles>,
    /// Connections each of the two servers (raft, HTTP) holds open at most; past it new
    /// ones are closed at once. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl NodeConfig {
    /// A configuration with the default timings.
    pub fn new(id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            data_dir: data_dir.into(),
            raft_peers: BTreeMap::new(),
            http_peers: BTreeMap::new(),
            tick_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why a node failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Raft id 0 is reserved by raft.
    #[error("raft id 0 is not allowed")]
    ZeroId,
    /// The raft log store could not be opened.
    #[error("raft log store: {0}")]
    Store(#[from] craft_storage::StorageError),
    /// Inspecting or bootstrapping the raft log store failed.
    #[error("bootstrapping the raft log store: {0}")]
    Bootstrap(#[source] craft_core::raft::Error),
    /// The initial state could not be encoded.
    #[error("encoding the initial state: {0}")]
    Encode(#[from] serde_json::Error),
    /// A peer's raft address is not a valid endpoint.
    #[error("raft address {addr:?} of peer {id}: {source}")]
    PeerAddress {
        /// Peer id.
        id: u64,
        /// The address given.
        addr: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// The raft engine failed to start or stopped with an error.
    #[error("raft engine: {0}")]
    Engine(#[from] craft_core::Error),
    /// The peer gRPC server failed.
    #[error("raft peer server: {0}")]
    RaftServer(#[source] tonic::transport::Error),
    /// A listener or the HTTP server failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A TLS file is missing or unusable.
    #[error("TLS: {0}")]
    Tls(#[from] KvTlsError),
    /// A task of the node panicked or was cancelled.
    #[error("node task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running key-value node: its tasks, its raft handle and its shutdown signal.
pub struct KvNode {
    /// Raft id.
    id: u64,
    /// Handle on the raft driver.
    raft: NodeHandle<Outcome>,
    /// Read side of the state machine.
    kv: KvReader,
    /// Stops every task below.
    shutdown: Shutdown,
    /// The raft driver task.
    driver: JoinHandle<Result<(), craft_core::Error>>,
    /// The peer gRPC server task.
    raft_server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The HTTP server task.
    http_server: JoinHandle<std::io::Result<()>>,
    /// Bound raft address.
    raft_addr: std::net::SocketAddr,
    /// Bound HTTP address.
    http_addr: std::net::SocketAddr,
}

impl std::fmt::Debug for KvNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvNode")
            .field("id", &self.id)
            .field("raft_addr", &self.raft_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl KvNode {
    /// Opens the store under `config.data_dir` (bootstrapping it when this node is an
    /// initial member with an empty store), starts the raft driver and serves raft on
    /// `raft_listener` and the HTTP API on `http_listener`, on the current runtime.
    pub async fn start(
        mut config: NodeConfig,
        raft_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<Self, NodeError> {
        let id = config.id;
        if id == 0 {
            return Err(NodeError::ZeroId);
        }
        let raft_addr = raft_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        config
            .http_peers
            .entry(id)
            .or_insert_with(|| http_addr.to_string());
        let span = tracing::info_span!("kv", node_id = id);
        let tls = config.tls.as_ref().map(KvTls::load).transpose()?;

        let store = RocksLogStore::open(config.data_dir.join("raft"), StoreOptions::default())?;
        if store.is_empty().map_err(NodeError::Bootstrap)? {
            if config.raft_peers.contains_key(&id) {
                let ids: Vec<u64> = config.raft_peers.keys().copied().collect();
                let initial = make_snapshot(
                    1,
                    1,
                    voters(ids.iter().copied()),
                    KvState::default().encode()?,
                );
                store.bootstrap(initial).map_err(NodeError::Bootstrap)?;
                span.in_scope(|| tracing::info!(voters = ?ids, "bootstrapped a new cluster"));
            } else {
                span.in_scope(|| {
                    tracing::info!("empty store and not an initial member: waiting to be added (POST /join on the leader)")
                });
            }
        }

        let mut transport = PeerTransport::new(id);
        if let Some(tls) = &tls {
            transport = transport.with_tls(tls.peer.clone());
        }
        for (&peer, addr) in config.raft_peers.iter().filter(|(&peer, _)| peer != id) {
            transport
                .set_peer(peer, &endpoint_uri(addr))
                .map_err(|source| NodeError::PeerAddress {
                    id: peer,
                    addr: addr.clone(),
                    source,
                })?;
        }
        let configured: BTreeSet<u64> = config.raft_peers.keys().copied().collect();
        let hook_transport = transport.clone();
        let hook_span = span.clone();
        let state_machine = KvStateMachine::new().with_member_hook(Box::new(move |peer, addrs| {
            // Addresses given at start win; a node never sends to itself.
            let Some(addrs) = addrs else { return };
            if peer == id || configured.contains(&peer) {
                return;
            }
            let _entered = hook_span.enter();
            match hook_transport.set_peer(peer, &endpoint_uri(&addrs.raft)) {
                Ok(()) => tracing::info!(peer, raft_addr = %addrs.raft, "learned a member's address"),
                Err(e) => tracing::warn!(peer, raft_addr = %addrs.raft, error = %e, "unusable member address"),
            }
        }));
        let kv = state_machine.reader();

        let shutdown = Shutdown::new();
        let replica = ReplicaConfig::new(id);
        let driver_config = DriverConfig {
            tick_interval: config.tick_interval,
            proposal_timeout: config.request_timeout,
            ..DriverConfig::default()
        };
        let (raft, driver) = craft_core::start(
            replica,
            driver_config,
            store,
            state_machine,
            transport,
            shutdown.wait(),
        )
        .await?;

        let inbox = raft.clone();
        let inbound: craft_transport::cita::Inbound = Arc::new(move |msg| inbox.step(msg));
        let raft_server = tokio::spawn(
            {
                let tls = tls.as_ref().map(|t| t.peer.clone());
                let limit = ConnectionLimit::new(config.max_connections);
                let stop = shutdown.wait();
                async move {
                    craft_transport::peer::serve(
                        raft_listener,
                        PeerService::new(inbound),
                        tls.as_ref(),
                        limit,
                        stop,
                    )
                    .await
                }
            }
            .instrument(span.clone()),
        );

        let api = ApiState {
            raft: raft.clone(),
            kv: kv.clone(),
            addresses: AddressBook::new(config.http_peers.clone(), kv.clone()),
            shutdown: shutdown.clone(),
            https: tls.is_some(),
        };
        let handle = axum_server::Handle::new();
        let stop = shutdown.wait();
        let h = handle.clone();
        tokio::spawn(async move {
            stop.await;
            h.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        let limit = ConnectionLimit::new(config.max_connections);
        let app = router(api).into_make_service();
        let std_listener = http_listener.into_std()?;
        let http_server = match &tls {
            Some(tls) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.http.clone());
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(
                    LimitAcceptor::new(axum_server::accept::DefaultAcceptor, limit),
                );
                let server = axum_server::from_tcp(std_listener)?
                    .acceptor(acceptor)
                    .handle(handle);
                tokio::spawn(server.serve(app).instrument(span.clone()))
            }
            None => {
                let server = axum_server::from_tcp(std_listener)?
                    .acceptor(LimitAcceptor::new(
                        axum_server::accept::DefaultAcceptor,
                        limit,
                    ))
                    .handle(handle);
                tokio::spawn(server.serve(app).instrument(span.clone()))
            }
        };
        span.in_scope(|| tracing::info!(%raft_addr, %http_addr, "node started"));

        Ok(Self {
            id,
            raft,
            kv,
            shutdown,
            driver,
            raft_server,
            http_server,
            raft_addr,
            http_addr,
        })
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raft handle (propose, read barrier, membership, status).
    pub fn raft(&self) -> &NodeHandle<Outcome> {
        &self.raft
    }

    /// Local reads of the state machine (not linearizable by themselves).
    pub fn kv(&self) -> &KvReader {
        &self.kv
    }

    /// The latest raft status.
    pub fn status(&self) -> NodeStatus {
        self.raft.status()
    }

    /// The address the peer gRPC server listens on.
    pub fn raft_addr(&self) -> std::net::SocketAddr {
        self.raft_addr
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http_addr
    }

    /// The shutdown signal (raised by `POST /shutdown` too).
    pub fn shutdown_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Stops the node gracefully; [`KvNode::wait`] returns once it has.
    pub fn shutdown(&self) {
        self.shutdown.signal();
    }

    /// Waits until the node stops: after a shutdown request, or when the raft driver
    /// fails (then the servers are shut down too and the driver's error returned).
    pub async fn wait(self) -> Result<(), NodeError> {
        let driver = self.driver.await;
        self.shutdown.signal();
        let raft_server = self.raft_server.await;
        let http_server = self.http_server.await;
        driver??;
        raft_server?.map_err(NodeError::RaftServer)?;
        http_server??;
        Ok(())
    }

    /// Kills the node at once, as a crash would: aborts its tasks without a graceful
    /// shutdown. What is durable in the store stays.
    pub fn abort(self) {
        self.driver.abort();
        self.raft_server.abort();
        self.http_server.abort();
    }
}
