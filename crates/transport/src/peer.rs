//! A plain peer-to-peer gRPC transport (`craft.peer.RaftPeer`) for services that run
//! outside CITA-Cloud, such as the key-value example. Each node serves `RaftPeer` and
//! knows its peers' addresses; messages to one peer go in order as batches.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::raft_peer_server::RaftPeer;
use cita_proto::peer::{Ack, RaftBatch};
use raft::eraftpb::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::cita::Inbound;
use crate::queue::PeerQueues;
use crate::{decode_raft_message, encode_raft_message};

/// The sending side: a [`craft_core::Transport`] over `RaftPeer.Send`.
#[derive(Clone)]
pub struct PeerTransport {
    id: u64,
    peers: Arc<RwLock<HashMap<u64, RaftPeerClient<Channel>>>>,
    queues: Arc<PeerQueues<RaftBatch>>,
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
            queues: Arc::new(PeerQueues::new(1024)),
        }
    }

    /// Adds or replaces peer `id` at `addr` (e.g. `http://127.0.0.1:7151`).
    pub fn set_peer(&self, id: u64, addr: &str) -> Result<(), tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(addr.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let client = RaftPeerClient::new(endpoint.connect_lazy());
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
            by_peer
                .entry(m.to)
                .or_default()
                .push(encode_raft_message(m));
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
            let m = decode_raft_message(bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
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
