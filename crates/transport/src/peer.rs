//! A plain peer-to-peer gRPC transport (`craft.peer.RaftPeer`) for services that run
//! outside CITA-Cloud, such as the key-value example. Each node serves `RaftPeer` and
//! knows its peers' addresses; messages to one peer go in order as batches.
//!
//! Without TLS anyone who reaches the port can send raft messages under any raft id.
//! With [`PeerTls`] both sides use mutual TLS: only holders of a certificate signed by
//! the cluster's CA can connect, in either direction.
//!
//! Limits: a message (one batch) is at most [`cita_proto::MAX_MESSAGE_BYTES`] either
//! way, a server holds at most its [`ConnectionLimit`] of connections and
//! [`MAX_STREAMS_PER_CONNECTION`] concurrent requests on each, and each peer has a
//! queue of [`QUEUE_CAPACITY`] batches (when full the newest is dropped and counted).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use cita_proto::peer::{Ack, RaftBatch};
use raft::eraftpb::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::cita::Inbound;
use crate::integrity::{decode_checked, encode_checked};
use crate::limits::ConnectionLimit;
use crate::queue::PeerQueues;
use crate::tls::PeerTls;

/// Batches queued per peer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Concurrent requests a peer server serves on one connection (a sender has one batch
/// in flight per peer).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The sending side: a [`craft_core::Transport`] over `RaftPeer.Send`.
#[derive(Clone)]
pub struct PeerTransport {
    id: u64,
    peers: Arc<RwLock<HashMap<u64, RaftPeerClient<Channel>>>>,
    queues: Arc<PeerQueues<RaftBatch>>,
    tls: Option<PeerTls>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// A transport for raft id `id` with no peers yet.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            peers: Arc::new(RwLock::new(HashMap::new())),
            queues: Arc::new(PeerQueues::new(QUEUE_CAPACITY)),
            tls: None,
        }
    }

    /// Dials peers with mutual TLS (`https`), presenting `tls`'s certificate and
    /// trusting only its CA. Set before adding peers.
    pub fn with_tls(mut self, tls: PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds or replaces peer `id` at `addr` (e.g. `http://127.0.0.1:7151`; with TLS the
    /// scheme becomes `https`).
    pub fn set_peer(&self, id: u64, addr: &str) -> Result<(), tonic::transport::Error> {
        let addr = match (&self.tls, addr.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => addr.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config())?;
        }
        let client = RaftPeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES);
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, client);
        self.queues.remove(id);
        Ok(())
    }

    /// `(peer, sent, dropped)` batches per peer.
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        self.queues.stats()
    }
}

impl craft_core::Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        let mut by_peer: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for m in &messages {
            by_peer.entry(m.to).or_default().push(encode_checked(m));
        }
        for (to, msgs) in by_peer {
            let Some(client) = self
                .peers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&to)
                .cloned()
            else {
                tracing::debug!(to, "no address for peer; dropping");
                continue;
            };
            let batch = RaftBatch {
                from: self.id,
                messages: msgs,
            };
            self.queues.push(to, batch, move || {
                move |batch: RaftBatch| {
                    let mut client = client.clone();
                    async move { client.send(batch).await.is_ok() }
                }
            });
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes: mutual TLS when `tls` is
/// given (a client without a certificate signed by its CA is refused in the handshake),
/// at most `limit` connections, messages up to [`cita_proto::MAX_MESSAGE_BYTES`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PeerService,
    tls: Option<&PeerTls>,
    limit: ConnectionLimit,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        server = server.tls_config(tls.server_config())?;
    }
    server
        .add_service(
            RaftPeerServer::new(service)
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(limit.incoming(listener), shutdown)
        .await
}

/// The receiving side: serves `RaftPeer` and hands each decoded message to `inbound`.
#[derive(Clone)]
pub struct PeerService {
    inbound: Inbound,
}

impl PeerService {
    /// A service that delivers to `inbound`.
    pub fn new(inbound: Inbound) -> Self {
        Self { inbound }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, Status> {
        let batch = req.into_inner();
        // Decode all first: a batch with one bad message is refused whole.
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            // Every member of this transport adds the checksum trailer.
            let (m, _) = decode_checked(bytes, true)
                .map_err(|e| Status::invalid_argument(format!("raft message refused: {e}")))?;
            if m.from != batch.from {
                return Err(Status::invalid_argument(format!(
                    "message from {} in a batch from {}",
                    m.from, batch.from
                )));
            }
            msgs.push(m);
        }
        for m in msgs {
            (self.inbound)(m);
        }
        Ok(Response::new(Ack {}))
    }
}
