//! Wiring of one key-value node: the durable log store, the raft driver with the
//! key-value state machine, the peer gRPC server and the HTTP API, all stopped by one
//! [`Shutdown`].
//!
//! # Bootstrap
//!
//! A cluster forms in one of two ways, and both end in the same place: every initial
//! member installs the same snapshot `make_snapshot(1, 1, voters(ids), state)`, so their
//! logs agree from index 1 on.
//!
//! - **`--peers`**: the initial members are exactly the ids listed in
//!   [`NodeConfig::raft_peers`]. A node whose store is empty and whose id is in that list
//!   bootstraps at once, with an empty state.
//! - **hraftd's `/setup`**: with an empty `raft_peers` and an empty store, the node
//!   serves HTTP and waits. A `POST /setup` (see [`crate::setup`]) names the members;
//!   the node finds itself among them by its raft address, records the setup durably in
//!   its data directory, passes the body on to the other members, and bootstraps with
//!   the members' addresses in the state (so they are replicated and survive restarts).
//!   The member the body calls the leader campaigns once, so it leads the new cluster.
//!   A restarted node finds its recorded setup and needs no second `/setup`.
//!
//! A node whose id is *not* in a non-empty `raft_peers` starts with an empty store and
//! no bootstrap: it waits until the leader adds it (`POST /join` on the leader) and then
//! receives a snapshot. A node whose store is not empty ignores the list for membership
//! (raft's own log knows it) and only uses it for addresses.

use craft_core::sync::LockExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use craft_core::{
    make_snapshot, voters, DriverConfig, LogStore, NodeHandle, NodeStatus, ReplicaConfig,
};
use craft_storage::{RocksLogStore, StoreOptions};
use craft_transport::limits::{ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use craft_transport::peer::{LinkConfig, PeerService, PeerTransport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::client::ApiClient;
use crate::http_api::{router, ApiState};
use crate::peers::{endpoint_uri, AddressBook};
use crate::setup::Setup;
use crate::setup_api::{waiting_router, Waiting};
use crate::shutdown::Shutdown;
use crate::store::{KvReader, KvState, KvStateMachine, Outcome};
use crate::tls::{KvTls, KvTlsError, LimitAcceptor, TlsFiles};

/// Everything one node needs besides its two listeners.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's raft id (never 0). In the `/setup` flow the setup decides it and
    /// this is ignored.
    pub id: u64,
    /// This node's name, for logs (`-id node1`). Default: the id in decimal.
    pub name: String,
    /// The raft address as given on the command line (`-raddr`), by which the node
    /// recognises itself in a `/setup` body besides its listener's address.
    pub raft_addr: String,
    /// Directory of the durable raft log (RocksDB lives in `data_dir/raft`).
    pub data_dir: PathBuf,
    /// Raft (gRPC) addresses `host:port` of the initial members, by id; see the module
    /// docs for how it decides bootstrap. Empty: wait for `POST /setup`.
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
    /// Take a snapshot of the whole map (and compact the log) after this many applied
    /// entries. Default [`DEFAULT_SNAPSHOT_INTERVAL`]: a snapshot writes the whole map
    /// (off the raft task, but onto the same disk as the log's synced writes), so taking
    /// one every few thousand writes of a large map costs the writes' tail latency.
    pub snapshot_interval: u64,
}

/// Entries between two snapshots of a key-value node, by default: etcd's default
/// (`--snapshot-count` 100,000 in 3.4).
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 100_000;

/// RocksDB memtable of a key-value node's raft log. The store's default (1 MiB) suits
/// the consensus service's few hundred blocks a second; at thousands of writes a second
/// it filled twice a second, and each flush (an SST written and synced, a new WAL file)
/// held up the synced appends behind it: a write p99 of 8–31 ms at 16 connections
/// against 6–7 ms with 8 MiB.
pub const LOG_WRITE_BUFFER_BYTES: usize = 8 << 20;

impl NodeConfig {
    /// A configuration with the default timings.
    pub fn new(id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            name: id.to_string(),
            raft_addr: String::new(),
            data_dir: data_dir.into(),
            raft_peers: BTreeMap::new(),
            http_peers: BTreeMap::new(),
            tick_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
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
    /// The recorded setup in the data directory is unreadable or disagrees with the
    /// command line.
    #[error("{0}")]
    Setup(String),
    /// Shutdown was requested before the node was set up; nothing was written.
    #[error("shut down before it was set up")]
    StoppedBeforeSetup,
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
    ///
    /// With an empty [`NodeConfig::raft_peers`] and nothing in the data directory, it
    /// first waits, serving `POST /setup`, until a setup names the members (see the
    /// module docs).
    pub async fn start(
        config: NodeConfig,
        raft_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<Self, NodeError> {
        Self::start_with(config, raft_listener, http_listener, Shutdown::new()).await
    }

    /// [`KvNode::start`] with a shutdown signal given by the caller, which also ends the
    /// wait for `/setup` (then [`NodeError::StoppedBeforeSetup`] is returned).
    pub async fn start_with(
        mut config: NodeConfig,
        raft_listener: TcpListener,
        http_listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<Self, NodeError> {
        let raft_addr = raft_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let tls = config.tls.as_ref().map(KvTls::load).transpose()?;
        let client = ApiClient::new(tls.as_ref().map(|t| t.http_client.clone()), PASS_ON_TIMEOUT);
        let std_http = http_listener.into_std()?;

        let store = RocksLogStore::open(
            config.data_dir.join("raft"),
            StoreOptions::default().with_write_buffer_bytes(LOG_WRITE_BUFFER_BYTES),
        )?;
        let empty = store.is_empty().map_err(NodeError::Bootstrap)?;
        let recorded = crate::setup::recorded(&config.data_dir).map_err(NodeError::Setup)?;
        // Voters and state of the snapshot to bootstrap from, and whether to campaign.
        let mut campaign = false;
        let initial: Option<(Vec<u64>, KvState)> = match recorded {
            Some(recorded) => {
                if !config.raft_peers.is_empty() && recorded.id != config.id {
                    return Err(NodeError::Setup(format!(
                        "{} was set up as raft id {}, but --id {} is raft id {}",
                        config.data_dir.display(),
                        recorded.id,
                        config.name,
                        config.id
                    )));
                }
                config.id = recorded.id;
                // A crash between recording the setup and bootstrapping: finish it.
                let setup = recorded.setup();
                empty.then(|| (setup.ids(), setup_state(&setup)))
            }
            None if config.raft_peers.is_empty() && empty => {
                let waiting = Arc::new(Waiting {
                    name: config.name.clone(),
                    raft_addr: config.raft_addr.clone(),
                    bound: raft_addr,
                    data_dir: config.data_dir.clone(),
                    client: client.clone(),
                    shutdown: shutdown.clone(),
                    accepted: Mutex::new(None),
                    done: Mutex::new(None),
                });
                let listener = std_http.try_clone()?;
                let Some((id, setup)) = wait_for_setup(
                    waiting,
                    listener,
                    tls.as_ref(),
                    config.max_connections,
                    &shutdown,
                )
                .await?
                else {
                    return Err(NodeError::StoppedBeforeSetup);
                };
                config.id = id;
                campaign = setup.members.len() > 1 && setup.members[0].id == id;
                Some((setup.ids(), setup_state(&setup)))
            }
            None if empty && config.raft_peers.contains_key(&config.id) => Some((
                config.raft_peers.keys().copied().collect(),
                KvState::default(),
            )),
            None => None,
        };
        let id = config.id;
        if id == 0 {
            return Err(NodeError::ZeroId);
        }
        config
            .http_peers
            .entry(id)
            .or_insert_with(|| http_addr.to_string());
        let span = tracing::info_span!("kv", node_id = id, name = %config.name);
        match initial {
            Some((ids, state)) => {
                let initial = make_snapshot(1, 1, voters(ids.iter().copied()), state.encode()?);
                store.bootstrap(initial).map_err(NodeError::Bootstrap)?;
                span.in_scope(|| tracing::info!(voters = ?ids, "bootstrapped a new cluster"));
            }
            None if empty => span.in_scope(|| {
                tracing::info!("empty store and not an initial member: waiting to be added (POST /join on the leader)")
            }),
            None => {}
        }

        let mut replica = ReplicaConfig::new(id);
        replica.snapshot_interval = config.snapshot_interval.max(1);
        // A link that stalls is noticed and replaced within an election timeout: before
        // that raft does not mind, after it raft starts elections (see `LinkConfig`).
        let election_timeout =
            config.tick_interval * u32::try_from(replica.election_tick).unwrap_or(u32::MAX);
        let mut transport = PeerTransport::new(id)
            .with_link_config(LinkConfig::for_election_timeout(election_timeout));
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
            transport.clone(),
            shutdown.wait(),
        )
        .await?;
        // Messages the transport drops are reported, so the leader probes the peer
        // rather than streaming appends it will never answer.
        let reporter = raft.clone();
        transport.report_unreachable_to(move |peer| reporter.report_unreachable(peer));

        let inbox = raft.clone();
        let inbound: craft_transport::cita::Inbound = Arc::new(move |msg| inbox.step(msg));
        let raft_server = tokio::spawn(
            {
                let tls = tls.as_ref().map(|t| t.peer.clone());
                let limit = ConnectionLimit::new(config.max_connections);
                // Served until the driver has stopped (its status channel closes), not
                // merely been asked to: a leader still hears its peers while it hands
                // leadership over.
                let mut status = raft.watch_status();
                let stop = async move { while status.changed().await.is_ok() {} };
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

        if campaign {
            // The member a setup calls the leader leads the new cluster.
            if let Err(e) = raft.campaign().await {
                span.in_scope(|| tracing::warn!(error = %e, "cannot campaign after setup"));
            }
        }

        let api = ApiState {
            raft: raft.clone(),
            kv: kv.clone(),
            addresses: AddressBook::new(config.http_peers.clone(), kv.clone()),
            raft_addresses: Arc::new(config.raft_peers.clone()),
            raft_addr: config.raft_addr.clone(),
            raft_bound: raft_addr,
            client,
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
        let http_server = serve_http(
            std_http,
            router(api),
            tls.as_ref(),
            config.max_connections,
            handle,
        )?
        .instrument(span.clone());
        let http_server = tokio::spawn(http_server);
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

/// How long a call passed on to another member (`/setup`, `/shutdown`) may take.
const PASS_ON_TIMEOUT: Duration = Duration::from_secs(5);

/// The replicated state a setup starts from: no keys, every member's addresses.
fn setup_state(setup: &Setup) -> KvState {
    KvState {
        members: setup.addresses(),
        ..KvState::default()
    }
}

/// The HTTP server of `app` on `listener`, plain or HTTPS, bounded to
/// `max_connections`, stopped through `handle`.
fn serve_http(
    listener: std::net::TcpListener,
    app: axum::Router,
    tls: Option<&KvTls>,
    max_connections: usize,
    handle: axum_server::Handle<std::net::SocketAddr>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>> + Send + 'static> {
    let limit = ConnectionLimit::new(max_connections);
    let app = app.into_make_service();
    let server = axum_server::from_tcp(listener)?.handle(handle);
    let tls = tls.map(|t| axum_server::tls_rustls::RustlsConfig::from_config(t.http.clone()));
    Ok(async move {
        match tls {
            Some(config) => {
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(
                    LimitAcceptor::new(axum_server::accept::DefaultAcceptor, limit),
                );
                server.acceptor(acceptor).serve(app).await
            }
            None => {
                server
                    .acceptor(LimitAcceptor::new(
                        axum_server::accept::DefaultAcceptor,
                        limit,
                    ))
                    .serve(app)
                    .await
            }
        }
    })
}

/// Serves the waiting API on `listener` until a setup is accepted (its raft id and the
/// setup) or shutdown is requested (`None`), then stops that server once its answers
/// have gone out.
async fn wait_for_setup(
    waiting: Arc<Waiting>,
    listener: std::net::TcpListener,
    tls: Option<&KvTls>,
    max_connections: usize,
    shutdown: &Shutdown,
) -> Result<Option<(u64, Setup)>, NodeError> {
    let (done, accepted) = oneshot::channel();
    *waiting.done.locked() = Some(done);
    let span = tracing::info_span!("kv", name = %waiting.name);
    span.in_scope(|| {
        tracing::info!(raft_addr = %waiting.bound, "empty data directory and no --peers: waiting for POST /setup")
    });
    let handle = axum_server::Handle::new();
    let server = serve_http(
        listener,
        waiting_router(waiting),
        tls,
        max_connections,
        handle.clone(),
    )?;
    let server = tokio::spawn(server.instrument(span));
    let result = tokio::select! {
        accepted = accepted => accepted.ok(),
        () = shutdown.wait() => None,
    };
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    server.await??;
    Ok(result)
}
