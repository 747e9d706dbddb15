//! The CITA-Cloud network adapter.
//!
//! Wire behaviour, shared with the existing raft consensus service:
//! - module `consensus`; message types `raft` (an encoded `eraftpb.Message`), `probe`
//!   (sender's raft id, 8 bytes big-endian, by `Broadcast`), `probe-resp` (responder's
//!   raft id, to the prober's origin), `refresh` (the intended raft id, sent back when a
//!   `raft` message reached the wrong node).
//! - `origin` is the network's session id of a peer. The adapter learns raft id →
//!   origin from incoming `raft`, `probe` and `probe-resp` messages, sends with `SendMsg`
//!   to that origin, and when the origin is unknown drops the message and probes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cita_proto::common::StatusCode;
use cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerService;
use cita_proto::network::network_service_client::NetworkServiceClient;
use cita_proto::network::{NetworkMsg, RegisterInfo};
use raft::eraftpb::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::queue::PeerQueues;
use crate::{decode_raft_message, encode_raft_message};

/// Module name the consensus service registers with the network.
pub const MODULE: &str = "consensus";
/// Message type of a raft message.
pub const TYPE_RAFT: &str = "raft";
/// Message type asking peers for their raft ids.
pub const TYPE_PROBE: &str = "probe";
/// Message type answering a probe.
pub const TYPE_PROBE_RESP: &str = "probe-resp";
/// Message type telling a sender its origin mapping is stale.
pub const TYPE_REFRESH: &str = "refresh";

/// Settings of the adapter.
#[derive(Debug, Clone)]
pub struct CitaNetworkConfig {
    /// This node's raft id.
    pub raft_id: u64,
    /// The network service, e.g. `http://127.0.0.1:50000`.
    pub network_addr: String,
    /// Host the network should call `ProcessNetworkMsg` on.
    pub handler_host: String,
    /// Port the network should call `ProcessNetworkMsg` on.
    pub handler_port: u16,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Least time between two probe broadcasts.
    pub probe_interval: Duration,
}

/// Where incoming raft messages go; returns whether the message was accepted.
pub type Inbound = Arc<dyn Fn(Message) -> bool + Send + Sync>;

/// Why an incoming network message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    /// The message is for another module.
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    /// The type is none of raft, probe, probe-resp, refresh.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A raft id payload that is not 8 bytes.
    #[error("{kind} payload is {len} bytes, expected 8")]
    BadIdPayload {
        /// The message type.
        kind: String,
        /// Its length.
        len: usize,
    },
    /// A raft payload that does not decode.
    #[error("undecodable raft message: {0}")]
    BadRaftMessage(String),
}

struct Inner {
    cfg: CitaNetworkConfig,
    client: NetworkServiceClient<Channel>,
    origins: RwLock<HashMap<u64, u64>>,
    queues: PeerQueues<NetworkMsg>,
    inbound: RwLock<Option<Inbound>>,
    last_probe: Mutex<Option<Instant>>,
}

/// The adapter: a [`craft_core::Transport`] for outgoing raft messages and the
/// `NetworkMsgHandlerService` for incoming ones. Cheap to clone.
#[derive(Clone)]
pub struct CitaNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CitaNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CitaNetwork")
            .field("raft_id", &self.inner.cfg.raft_id)
            .finish_non_exhaustive()
    }
}

fn id_payload(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn parse_id(kind: &str, bytes: &[u8]) -> Result<u64, InboundError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| InboundError::BadIdPayload {
            kind: kind.to_string(),
            len: bytes.len(),
        })
}

impl CitaNetwork {
    /// Creates the adapter; the network channel connects lazily.
    pub fn new(cfg: CitaNetworkConfig) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(cfg.network_addr.clone())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(Self {
            inner: Arc::new(Inner {
                client: NetworkServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
                origins: RwLock::new(HashMap::new()),
                queues: PeerQueues::new(cfg.queue_capacity),
                inbound: RwLock::new(None),
                last_probe: Mutex::new(None),
                cfg,
            }),
        })
    }

    /// Sets (or clears) where incoming raft messages go. Cleared while raft is stopped,
    /// e.g. when this node is not a validator.
    pub fn set_inbound(&self, inbound: Option<Inbound>) {
        *self
            .inner
            .inbound
            .write()
            .unwrap_or_else(|e| e.into_inner()) = inbound;
    }

    /// Registers the `consensus` handler with the network, retrying with backoff until
    /// the network accepts it.
    pub async fn register_until_ok(&self) {
        let info = RegisterInfo {
            module_name: MODULE.to_string(),
            hostname: self.inner.cfg.handler_host.clone(),
            port: self.inner.cfg.handler_port.to_string(),
        };
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self
                .inner
                .client
                .clone()
                .register_network_msg_handler(info.clone())
                .await
            {
                Ok(resp) if resp.get_ref().code == 0 => {
                    tracing::info!("registered network message handler");
                    return;
                }
                Ok(resp) => tracing::warn!(
                    code = resp.get_ref().code,
                    attempt,
                    "network refused handler registration"
                ),
                Err(e) if attempt == 1 || attempt.is_power_of_two() => {
                    tracing::warn!(error = %e, attempt, "network unreachable, retrying registration")
                }
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    /// Origin currently known for raft id `id`.
    pub fn origin_of(&self, id: u64) -> Option<u64> {
        self.inner
            .origins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    fn learn(&self, id: u64, origin: u64) {
        if id == self.inner.cfg.raft_id {
            return;
        }
        let mut origins = self
            .inner
            .origins
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if origins.insert(id, origin) != Some(origin) {
            tracing::debug!(raft_id = id, origin, "learned peer origin");
        }
    }

    /// `(raft id, sent, dropped)` per peer.
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        self.inner.queues.stats()
    }

    /// Broadcasts a probe unless one went out within `probe_interval`.
    pub fn probe(&self) {
        {
            let mut last = self
                .inner
                .last_probe
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.inner.cfg.probe_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: TYPE_PROBE.to_string(),
            origin: 0,
            msg: id_payload(self.inner.cfg.raft_id),
        };
        let mut client = self.inner.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.broadcast(msg).await {
                tracing::debug!(error = %e, "probe broadcast failed");
            }
        });
    }

    fn send_to_origin(&self, peer: u64, origin: u64, kind: &str, payload: Vec<u8>) -> bool {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: kind.to_string(),
            origin,
            msg: payload,
        };
        let client = self.inner.client.clone();
        self.inner.queues.push(peer, msg, move || {
            move |msg: NetworkMsg| {
                let mut client = client.clone();
                async move {
                    match client.send_msg(msg).await {
                        Ok(resp) => resp.get_ref().code == 0,
                        Err(e) => {
                            tracing::debug!(peer, error = %e, "SendMsg failed");
                            false
                        }
                    }
                }
            }
        })
    }

    /// Handles one message from the network. Malformed input is refused with a reason
    /// and never reaches raft.
    pub fn handle(&self, msg: NetworkMsg) -> Result<(), InboundError> {
        if msg.module != MODULE {
            return Err(InboundError::UnknownModule(msg.module));
        }
        match msg.r#type.as_str() {
            TYPE_RAFT => {
                let raft_msg = decode_raft_message(&msg.msg)
                    .map_err(|e| InboundError::BadRaftMessage(e.to_string()))?;
                if raft_msg.to != self.inner.cfg.raft_id {
                    // The sender's origin map is stale: tell it whom it meant to reach.
                    tracing::debug!(
                        to = raft_msg.to,
                        origin = msg.origin,
                        "raft message for another node"
                    );
                    self.send_to_origin(
                        raft_msg.from,
                        msg.origin,
                        TYPE_REFRESH,
                        id_payload(raft_msg.to),
                    );
                    return Ok(());
                }
                self.learn(raft_msg.from, msg.origin);
                let inbound = self
                    .inner
                    .inbound
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(inbound) = inbound {
                    if !inbound(raft_msg) {
                        tracing::debug!("raft inbox full, message dropped");
                    }
                }
                Ok(())
            }
            TYPE_PROBE => {
                let id = parse_id(TYPE_PROBE, &msg.msg)?;
                self.learn(id, msg.origin);
                self.send_to_origin(
                    id,
                    msg.origin,
                    TYPE_PROBE_RESP,
                    id_payload(self.inner.cfg.raft_id),
                );
                Ok(())
            }
            TYPE_PROBE_RESP => {
                let id = parse_id(TYPE_PROBE_RESP, &msg.msg)?;
                self.learn(id, msg.origin);
                Ok(())
            }
            TYPE_REFRESH => {
                let id = parse_id(TYPE_REFRESH, &msg.msg)?;
                self.inner
                    .origins
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                self.probe();
                Ok(())
            }
            other => Err(InboundError::UnknownType(other.to_string())),
        }
    }
}

impl craft_core::Transport for CitaNetwork {
    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            match self.origin_of(to) {
                Some(origin) => {
                    self.send_to_origin(to, origin, TYPE_RAFT, encode_raft_message(&m));
                }
                None => {
                    tracing::debug!(to, "origin unknown, probing");
                    self.probe();
                }
            }
        }
    }
}

#[tonic::async_trait]
impl NetworkMsgHandlerService for CitaNetwork {
    async fn process_network_msg(
        &self,
        req: Request<NetworkMsg>,
    ) -> Result<Response<StatusCode>, Status> {
        match self.handle(req.into_inner()) {
            Ok(()) => Ok(Response::new(StatusCode { code: 0 })),
            Err(e) => {
                tracing::debug!(error = %e, "refused network message");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn net() -> CitaNetwork {
        CitaNetwork::new(CitaNetworkConfig {
            raft_id: 7,
            // Nothing listens here: outgoing sends fail and are counted, never block.
            network_addr: "http://127.0.0.1:9".into(),
            handler_host: "127.0.0.1".into(),
            handler_port: 1,
            queue_capacity: 16,
            probe_interval: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn raft_msg(from: u64, to: u64) -> Vec<u8> {
        let m = Message {
            from,
            to,
            term: 3,
            ..Default::default()
        };
        encode_raft_message(&m)
    }

    fn nm(kind: &str, origin: u64, msg: Vec<u8>) -> NetworkMsg {
        NetworkMsg {
            module: MODULE.into(),
            r#type: kind.into(),
            origin,
            msg,
        }
    }

    #[tokio::test]
    async fn raft_message_teaches_origin_and_reaches_raft() {
        let n = net();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        n.set_inbound(Some(Arc::new(move |m: Message| {
            assert_eq!((m.from, m.to, m.term), (2, 7, 3));
            s.fetch_add(1, Ordering::SeqCst);
            true
        })));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 7))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(n.origin_of(2), Some(42));
    }

    #[tokio::test]
    async fn misaddressed_raft_message_is_not_stepped() {
        let n = net();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        n.set_inbound(Some(Arc::new(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            true
        })));
        n.handle(nm(TYPE_RAFT, 42, raft_msg(2, 8))).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        assert_eq!(n.origin_of(2), None);
    }

    #[tokio::test]
    async fn probes_and_refresh_maintain_the_origin_map() {
        let n = net();
        n.handle(nm(TYPE_PROBE, 5, 9u64.to_be_bytes().to_vec()))
            .unwrap();
        assert_eq!(n.origin_of(9), Some(5));
        n.handle(nm(TYPE_PROBE_RESP, 6, 10u64.to_be_bytes().to_vec()))
            .unwrap();
        assert_eq!(n.origin_of(10), Some(6));
        n.handle(nm(TYPE_REFRESH, 6, 10u64.to_be_bytes().to_vec()))
            .unwrap();
        assert_eq!(n.origin_of(10), None);
    }

    #[tokio::test]
    async fn malformed_input_is_refused() {
        let n = net();
        let bad_module = NetworkMsg {
            module: "controller".into(),
            ..nm(TYPE_RAFT, 1, vec![])
        };
        assert!(matches!(
            n.handle(bad_module),
            Err(InboundError::UnknownModule(_))
        ));
        assert!(matches!(
            n.handle(nm("gossip", 1, vec![])),
            Err(InboundError::UnknownType(_))
        ));
        assert!(matches!(
            n.handle(nm(TYPE_PROBE, 1, vec![1, 2, 3])),
            Err(InboundError::BadIdPayload { .. })
        ));
        assert!(matches!(
            n.handle(nm(TYPE_RAFT, 1, vec![0xff, 0xff, 0xff])),
            Err(InboundError::BadRaftMessage(_))
        ));
        // Many garbage payloads: none panics.
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(len))
                .collect();
            let _ = n.handle(nm(TYPE_RAFT, 1, junk.clone()));
            let _ = n.handle(nm(TYPE_REFRESH, 1, junk));
        }
    }

    #[tokio::test]
    async fn sends_to_unknown_or_dead_peers_never_block() {
        use craft_core::Transport;
        let n = net();
        n.handle(nm(TYPE_PROBE, 5, 9u64.to_be_bytes().to_vec()))
            .unwrap();
        let mut m = Message {
            to: 9,
            from: 7,
            ..Default::default()
        };
        n.send(vec![m.clone(); 1000]);
        m.to = 11;
        n.send(vec![m; 10]);
        let (peer, _sent, dropped) = n.peer_stats().into_iter().find(|s| s.0 == 9).unwrap();
        assert_eq!(peer, 9);
        assert!(dropped > 900);
    }
}
