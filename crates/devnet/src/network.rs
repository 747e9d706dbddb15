//! A development network microservice for local clusters.
//!
//! One process serves `network.NetworkService` for every node of the cluster, each node
//! on its own port, and routes `NetworkMsg` between them the way CITA-Cloud's network
//! does: node `i` has session id (`origin`) `i`; `SendMsg` delivers to the node whose
//! origin is `msg.origin`, `Broadcast` to all others, and the receiver sees the sender's
//! origin. Links can be cut to simulate partitions, and given the faults of
//! [`crate::link_faults`] (delay, jitter, loss, duplication, corruption, a bandwidth cap).
//!
//! It also observes what each node does on the network ([`DevNetwork::observed_json`]):
//! the handlers it registered, the messages it sent by method and type, and the raft ids
//! its `probe`s and raft messages claim. That is the evidence a black-box check of the
//! CITA-Cloud contract needs (`cargo xtask conformance`).

use craft_core::sync::{LockExt, RwLockExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cita_proto::common::{Empty, NodeNetInfo, StatusCode, TotalNodeNetInfo};
use cita_proto::network::network_msg_handler_service_client::NetworkMsgHandlerServiceClient;
use cita_proto::network::network_service_server::NetworkService;
use cita_proto::network::{NetworkMsg, NetworkStatusResponse, RegisterInfo};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::link_faults::LinkFaults;
use craft_transport::PeerQueues;

struct Slot {
    handler: RwLock<Option<NetworkMsgHandlerServiceClient<Channel>>>,
    observed: Mutex<Observed>,
    /// Whether a `down` rule has stopped this node's network service.
    down: tokio::sync::watch::Sender<bool>,
}

/// What one node was seen doing on the network.
#[derive(Debug, Default)]
struct Observed {
    /// `RegisterNetworkMsgHandler` calls: module, hostname, port.
    registered: Vec<(String, String, String)>,
    /// Messages sent, by `"method:type"` (e.g. `"send_msg:raft"`).
    sent: BTreeMap<String, u64>,
    /// Raft ids claimed by its `probe` and `probe-resp` payloads.
    probe_ids: BTreeSet<u64>,
    /// `from` of the raft messages it sent (a sample of them).
    raft_from: BTreeSet<u64>,
}

/// Distinct values kept per observed set, and the longest module or host name recorded:
/// a hostile node cannot make the record grow without bound.
const MAX_OBSERVED: usize = 16;
const MAX_OBSERVED_NAME: usize = 64;

impl Observed {
    fn record(&mut self, method: &str, msg: &NetworkMsg) {
        let ty: String = msg.r#type.chars().take(MAX_OBSERVED_NAME).collect();
        let key = format!("{method}:{ty}");
        if self.sent.len() < MAX_OBSERVED || self.sent.contains_key(&key) {
            *self.sent.entry(key.clone()).or_default() += 1;
        }
        let count = self.sent.get(&key).copied().unwrap_or(0);
        match msg.r#type.as_str() {
            "probe" | "probe-resp" => {
                if let Ok(id) = <[u8; 8]>::try_from(&msg.msg[..]) {
                    insert_bounded(&mut self.probe_ids, u64::from_be_bytes(id));
                }
            }
            // Decoding costs: the first messages, then one in 256.
            "raft" if count <= 64 || count.is_multiple_of(256) => {
                if let Ok(m) = craft_transport::decode_raft_message(&msg.msg[..]) {
                    insert_bounded(&mut self.raft_from, m.from);
                }
            }
            _ => {}
        }
    }

    fn to_json(&self, origin: usize) -> serde_json::Value {
        serde_json::json!({
            "origin": origin,
            "registered": self.registered.iter().map(|(m, h, p)| serde_json::json!({
                "module": m, "hostname": h, "port": p,
            })).collect::<Vec<_>>(),
            "sent": self.sent,
            "probe_ids": self.probe_ids,
            "raft_from": self.raft_from,
        })
    }
}

fn insert_bounded(set: &mut BTreeSet<u64>, v: u64) {
    if set.len() < MAX_OBSERVED {
        set.insert(v);
    }
}

/// The shared routing state of a development network.
pub struct DevNetwork {
    nodes: Vec<Slot>,
    cuts: RwLock<HashSet<(u64, u64)>>,
    delivery: PeerQueues<NetworkMsg>,
    send_msg_calls: AtomicU64,
    broadcast_calls: AtomicU64,
    faults: RwLock<Vec<LinkFaults>>,
    /// When each directed link under a rate cap is free again.
    link_free_at: Mutex<HashMap<(u64, u64), Instant>>,
    fault_counts: FaultCounts,
}

/// Messages the link faults acted on.
#[derive(Debug, Default)]
struct FaultCounts {
    lost: AtomicU64,
    duplicated: AtomicU64,
    corrupted: AtomicU64,
    delayed: AtomicU64,
}

/// Longest a rate-capped link queues a message before dropping it (netem's queue limit).
const MAX_LINK_QUEUE: Duration = Duration::from_secs(10);

impl std::fmt::Debug for DevNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevNetwork")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl DevNetwork {
    /// A network for nodes with origins `1..=nodes`.
    pub fn new(nodes: usize) -> Arc<Self> {
        Arc::new(Self {
            nodes: (0..nodes)
                .map(|_| Slot {
                    handler: RwLock::new(None),
                    observed: Mutex::new(Observed::default()),
                    down: tokio::sync::watch::Sender::new(false),
                })
                .collect(),
            cuts: RwLock::new(HashSet::new()),
            delivery: PeerQueues::new(4096),
            send_msg_calls: AtomicU64::new(0),
            broadcast_calls: AtomicU64::new(0),
            faults: RwLock::new(Vec::new()),
            link_free_at: Mutex::new(HashMap::new()),
            fault_counts: FaultCounts::default(),
        })
    }

    /// Replaces the link fault rules. A node a `down` rule names loses its handler
    /// registration and queued messages, as a network service that is killed does.
    pub fn set_faults(&self, rules: Vec<LinkFaults>) {
        let mut current = self.faults.write_locked();
        if *current != rules {
            let text: Vec<String> = rules.iter().map(ToString::to_string).collect();
            tracing::info!(faults = ?text, "link faults changed");
            *current = rules;
        }
        for (node, slot) in (1u64..).zip(&self.nodes) {
            let down = current.iter().any(|r| r.down && r.nodes.contains(&node));
            let changed = slot
                .down
                .send_if_modified(|d| std::mem::replace(d, down) != down);
            if changed && down {
                *slot.handler.write_locked() = None;
                self.delivery.remove(node);
                tracing::info!(node, "network service down: registration forgotten");
            } else if changed {
                tracing::info!(node, "network service up");
            }
        }
    }

    /// Whether node `origin`'s network service is down (a `down` rule names it).
    pub fn is_down(&self, origin: u64) -> bool {
        self.slot(origin).is_some_and(|s| *s.down.borrow())
    }

    /// Follows whether node `origin`'s network service is down, for a server that closes
    /// its port meanwhile.
    pub fn down_watch(&self, origin: u64) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.slot(origin).map(|s| s.down.subscribe())
    }

    /// Keeps the fault rules in step with `path` (see [`LinkFaults::parse_file`]),
    /// re-reading it every 100 ms. A missing file means no faults.
    pub async fn follow_faults_file(self: Arc<Self>, path: std::path::PathBuf) {
        let mut last: Option<String> = None;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if last.as_deref() != Some(&text) {
                match LinkFaults::parse_file(&text) {
                    Ok(rules) => self.set_faults(rules),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring faults file")
                    }
                }
                last = Some(text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Counters as JSON: `send_msg` and `broadcast` calls, `delivered` and `dropped`
    /// messages (summed over nodes), what the link faults did, and `nodes`, what each
    /// node was seen doing ([`DevNetwork::observed_json`]).
    pub fn stats_json(&self) -> String {
        let (delivered, dropped) = self
            .delivery
            .stats()
            .iter()
            .fold((0, 0), |(a, b), (_, s, d)| (a + s, b + d));
        let f = &self.fault_counts;
        serde_json::json!({
            "send_msg": self.send_msg_calls.load(Ordering::Relaxed),
            "broadcast": self.broadcast_calls.load(Ordering::Relaxed),
            "delivered": delivered,
            "dropped": dropped,
            "fault_lost": f.lost.load(Ordering::Relaxed),
            "fault_duplicated": f.duplicated.load(Ordering::Relaxed),
            "fault_corrupted": f.corrupted.load(Ordering::Relaxed),
            "fault_delayed": f.delayed.load(Ordering::Relaxed),
            "nodes": self.observed_json(),
        })
        .to_string()
    }

    /// What each node was seen doing, as JSON: a list with, per node, `origin`,
    /// `registered` (module, hostname, port of each handler registration), `sent`
    /// (message counts by `"method:type"`), `probe_ids` (raft ids its probes claim) and
    /// `raft_from` (the `from` of a sample of its raft messages).
    pub fn observed_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, slot)| slot.observed.locked().to_json(i + 1))
                .collect(),
        )
    }

    fn observe(&self, origin: u64, f: impl FnOnce(&mut Observed)) {
        if let Some(slot) = self.slot(origin) {
            f(&mut slot.observed.locked());
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the network has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The `NetworkService` node `origin` (1-based) talks to.
    pub fn service(self: &Arc<Self>, origin: u64) -> NodePort {
        NodePort {
            net: self.clone(),
            me: origin,
        }
    }

    /// Replaces the set of cut links. A cut `(a, b)` drops traffic both ways.
    pub fn set_cuts(&self, cuts: impl IntoIterator<Item = (u64, u64)>) {
        let mut set = HashSet::new();
        for (a, b) in cuts {
            set.insert((a, b));
            set.insert((b, a));
        }
        let mut current = self.cuts.write_locked();
        if *current != set {
            tracing::info!(cuts = ?set, "network links changed");
            *current = set;
        }
    }

    /// Parses a partition file: one `A B` per line cuts link A–B; `A *` isolates A.
    /// Blank lines and `#` comments are ignored.
    pub fn parse_cuts(&self, text: &str) -> Result<Vec<(u64, u64)>, String> {
        let mut cuts = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "bad partition line {line:?}: expected `A B` or `A *`"
                ));
            };
            let a: u64 = a
                .parse()
                .map_err(|_| format!("bad node {a:?} in {line:?}"))?;
            if b == "*" {
                for other in 1..=self.nodes.len() as u64 {
                    if other != a {
                        cuts.push((a, other));
                    }
                }
            } else {
                let b: u64 = b
                    .parse()
                    .map_err(|_| format!("bad node {b:?} in {line:?}"))?;
                cuts.push((a, b));
            }
        }
        Ok(cuts)
    }

    /// Keeps the cuts in step with `path`, re-reading it every 100 ms. A missing file
    /// means no cuts.
    pub async fn follow_partition_file(self: Arc<Self>, path: std::path::PathBuf) {
        let mut last: Option<String> = None;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if last.as_deref() != Some(&text) {
                match self.parse_cuts(&text) {
                    Ok(cuts) => self.set_cuts(cuts),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring partition file")
                    }
                }
                last = Some(text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn slot(&self, origin: u64) -> Option<&Slot> {
        origin
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
    }

    fn deliver(self: &Arc<Self>, from: u64, to: u64, mut msg: NetworkMsg) -> bool {
        if from == to || self.cuts.read_locked().contains(&(from, to)) {
            return false;
        }
        if self.slot(to).is_none() {
            return false;
        }
        if self.is_down(from) || self.is_down(to) {
            self.fault_counts.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        msg.origin = from;
        let rule = self
            .faults
            .read_locked()
            .iter()
            .find(|r| r.covers(from, to))
            .cloned();
        let Some(rule) = rule else {
            return self.enqueue(to, msg);
        };
        if rule.cuts(from, to) || rand::random::<f64>() < rule.loss {
            self.fault_counts.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let copies = if rand::random::<f64>() < rule.duplicate {
            self.fault_counts.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut copy = msg.clone();
            if !copy.msg.is_empty() && rand::random::<f64>() < rule.corrupt {
                self.fault_counts.corrupted.fetch_add(1, Ordering::Relaxed);
                // 1 to 3 distinct bytes, each changed.
                let mut damaged = copy.msg.to_vec();
                let n = damaged.len();
                let flips = rand::random_range(1..=3usize).min(n);
                for i in rand::seq::index::sample(&mut rand::rng(), n, flips) {
                    damaged[i] ^= rand::random_range(1..=255u8);
                }
                copy.msg = damaged.into();
            }
            let mut wait = rule.delay;
            if !rule.jitter.is_zero() {
                let j = rule.jitter.as_secs_f64();
                let shifted = wait.as_secs_f64() + rand::random_range(-j..=j);
                wait = Duration::from_secs_f64(shifted.max(0.0));
            }
            if let Some(bps) = rule.rate_bps {
                let bits = (copy.msg.len() as u64 + 64) * 8;
                let on_wire = Duration::from_secs_f64(bits as f64 / bps as f64);
                let now = Instant::now();
                let mut free = self.link_free_at.locked();
                let start = free
                    .get(&(from, to))
                    .copied()
                    .filter(|t| *t > now)
                    .unwrap_or(now);
                if start - now > MAX_LINK_QUEUE {
                    self.fault_counts.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                free.insert((from, to), start + on_wire);
                wait += start + on_wire - now;
            }
            if wait.is_zero() {
                self.enqueue(to, copy);
            } else {
                self.fault_counts.delayed.fetch_add(1, Ordering::Relaxed);
                let net = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    net.enqueue(to, copy);
                });
            }
        }
        true
    }

    /// Hands `msg` to node `to`'s delivery queue.
    fn enqueue(&self, to: u64, msg: NetworkMsg) -> bool {
        let Some(client) = self
            .slot(to)
            .and_then(|slot| slot.handler.read_locked().clone())
        else {
            return false;
        };
        self.delivery.push(to, msg, move || {
            move |msg: NetworkMsg| {
                let mut client = client.clone();
                async move { client.process_network_msg(msg).await.is_ok() }
            }
        })
    }
}

/// The `NetworkService` as seen by one node.
#[derive(Clone)]
pub struct NodePort {
    net: Arc<DevNetwork>,
    me: u64,
}

fn ok() -> Response<StatusCode> {
    Response::new(StatusCode { code: 0 })
}

impl NodePort {
    /// `Unavailable` while this node's network service is down: a call that reached the
    /// port just before it closed fails as it would against a killed service.
    fn up(&self) -> Result<(), Status> {
        if self.net.is_down(self.me) {
            return Err(Status::unavailable("network service down"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl NetworkService for NodePort {
    async fn send_msg(&self, req: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
        self.up()?;
        self.net.send_msg_calls.fetch_add(1, Ordering::Relaxed);
        let msg = req.into_inner();
        self.net.observe(self.me, |o| o.record("send_msg", &msg));
        let to = msg.origin;
        if self.net.slot(to).is_none() {
            return Err(Status::not_found(format!("no peer with origin {to}")));
        }
        self.net.deliver(self.me, to, msg);
        Ok(ok())
    }

    async fn broadcast(&self, req: Request<NetworkMsg>) -> Result<Response<StatusCode>, Status> {
        self.up()?;
        self.net.broadcast_calls.fetch_add(1, Ordering::Relaxed);
        let msg = req.into_inner();
        self.net.observe(self.me, |o| o.record("broadcast", &msg));
        for to in 1..=self.net.len() as u64 {
            if to != self.me {
                self.net.deliver(self.me, to, msg.clone());
            }
        }
        Ok(ok())
    }

    async fn get_network_status(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<NetworkStatusResponse>, Status> {
        Ok(Response::new(NetworkStatusResponse {
            peer_count: self.net.len().saturating_sub(1) as u64,
        }))
    }

    async fn register_network_msg_handler(
        &self,
        req: Request<RegisterInfo>,
    ) -> Result<Response<StatusCode>, Status> {
        self.up()?;
        let info = req.into_inner();
        self.net.observe(self.me, |o| {
            if o.registered.len() < MAX_OBSERVED {
                let cut = |s: &str| s.chars().take(MAX_OBSERVED_NAME).collect::<String>();
                o.registered
                    .push((cut(&info.module_name), cut(&info.hostname), cut(&info.port)));
            }
        });
        let addr = format!("http://{}:{}", info.hostname, info.port);
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| Status::invalid_argument(format!("bad handler address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let client = NetworkMsgHandlerServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES);
        if let Some(slot) = self.net.slot(self.me) {
            *slot.handler.write_locked() = Some(client);
        }
        // A re-registered handler gets a fresh delivery queue.
        self.net.delivery.remove(self.me);
        tracing::info!(node = self.me, module = %info.module_name, %addr, "handler registered");
        Ok(ok())
    }

    async fn add_node(&self, _req: Request<NodeNetInfo>) -> Result<Response<StatusCode>, Status> {
        Ok(ok())
    }

    async fn get_peers_net_info(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<TotalNodeNetInfo>, Status> {
        let nodes = (1..=self.net.len() as u64)
            .filter(|o| *o != self.me)
            .map(|origin| NodeNetInfo {
                multi_address: format!("/dev/node/{origin}"),
                origin,
            })
            .collect();
        Ok(Response::new(TotalNodeNetInfo { nodes }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partition_file_syntax() {
        let net = DevNetwork::new(3);
        assert_eq!(net.parse_cuts("# none\n\n").unwrap(), vec![]);
        assert_eq!(net.parse_cuts("1 2\n").unwrap(), vec![(1, 2)]);
        assert_eq!(net.parse_cuts("2 *").unwrap(), vec![(2, 1), (2, 3)]);
        assert!(net.parse_cuts("1").is_err());
        assert!(net.parse_cuts("x 2").is_err());
    }

    /// A handler that records the payloads it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    #[tonic::async_trait]
    impl cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerService
        for Recorder
    {
        async fn process_network_msg(
            &self,
            req: Request<NetworkMsg>,
        ) -> Result<Response<StatusCode>, Status> {
            self.0.lock().unwrap().push(req.into_inner().msg.to_vec());
            Ok(ok())
        }
    }

    /// A 2-node network whose node 2 records what it receives.
    async fn pair() -> (Arc<DevNetwork>, Recorder) {
        use cita_proto::network::network_msg_handler_service_server::NetworkMsgHandlerServiceServer;
        let rec = Recorder::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NetworkMsgHandlerServiceServer::new(rec.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let net = DevNetwork::new(2);
        net.service(2)
            .register_network_msg_handler(Request::new(RegisterInfo {
                module_name: "consensus".into(),
                hostname: "127.0.0.1".into(),
                port: port.to_string(),
            }))
            .await
            .unwrap();
        (net, rec)
    }

    async fn received(rec: &Recorder, at_least: usize) -> Vec<Vec<u8>> {
        for _ in 0..500 {
            if rec.0.lock().unwrap().len() >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::take(&mut *rec.0.lock().unwrap())
    }

    fn payload(i: u8) -> NetworkMsg {
        NetworkMsg {
            module: "consensus".into(),
            r#type: "raft".into(),
            origin: 2,
            msg: vec![i; 32].into(),
        }
    }

    #[tokio::test]
    async fn link_faults_lose_duplicate_corrupt_and_delay() {
        let (net, rec) = pair().await;
        let rule = |s: &str| vec![s.parse::<LinkFaults>().unwrap()];

        net.set_faults(rule("nodes=2 loss=100%"));
        for i in 0..20 {
            assert!(!net.deliver(1, 2, payload(i)));
        }
        net.set_faults(rule("nodes=1 duplicate=100%"));
        for i in 0..20 {
            net.deliver(1, 2, payload(i));
        }
        let got = received(&rec, 40).await;
        assert_eq!(
            got.len(),
            40,
            "lost messages arrived, or duplicates did not"
        );
        for i in 0..20u8 {
            assert_eq!(got.iter().filter(|m| **m == vec![i; 32]).count(), 2);
        }

        net.set_faults(rule("nodes=2 corrupt=100%"));
        for i in 0..20 {
            net.deliver(1, 2, payload(i));
        }
        let got = received(&rec, 20).await;
        assert_eq!(got.len(), 20);
        assert!(
            got.iter().all(|m| (0..20u8).all(|i| *m != vec![i; 32])),
            "a message arrived intact"
        );

        // Delayed and rate-capped: still delivered, in full.
        net.set_faults(rule("nodes=2 delay=50ms jitter=20ms rate=1mbps"));
        for i in 0..10 {
            net.deliver(1, 2, payload(i));
        }
        assert_eq!(received(&rec, 10).await.len(), 10);
        let stats = net.stats_json();
        assert!(stats.contains("\"fault_lost\":20"), "{stats}");
        assert!(stats.contains("\"fault_corrupted\":20"), "{stats}");
        assert!(stats.contains("\"fault_delayed\":10"), "{stats}");

        // A partition cuts the chosen nodes off from the others, both ways.
        net.set_faults(rule("nodes=2 partition"));
        assert!(!net.deliver(1, 2, payload(1)));
        net.set_faults(Vec::new());
        assert!(net.deliver(1, 2, payload(1)));
        assert_eq!(received(&rec, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn what_each_node_sends_and_registers_is_observed() {
        let (net, rec) = pair().await;
        let port = net.service(1);
        let probe = |ty: &str, id: u64| NetworkMsg {
            module: "consensus".into(),
            r#type: ty.into(),
            origin: 0,
            msg: id.to_be_bytes().to_vec().into(),
        };
        port.broadcast(Request::new(probe("probe", 77)))
            .await
            .unwrap();
        port.send_msg(Request::new(NetworkMsg {
            origin: 2,
            ..probe("probe-resp", 77)
        }))
        .await
        .unwrap();
        let raft = craft_core::raft::eraftpb::Message {
            from: 77,
            to: 5,
            ..Default::default()
        };
        port.send_msg(Request::new(NetworkMsg {
            module: "consensus".into(),
            r#type: "raft".into(),
            origin: 2,
            msg: craft_transport::encode_raft_message(&raft).into(),
        }))
        .await
        .unwrap();
        // A hostile sender cannot grow the record: a hundred types, a few kept.
        for i in 0..100 {
            port.send_msg(Request::new(NetworkMsg {
                origin: 2,
                ..probe(&format!("junk-{i}"), i)
            }))
            .await
            .unwrap();
        }
        received(&rec, 103).await;

        let nodes = net.observed_json();
        let n1 = &nodes[0];
        assert_eq!(n1["origin"], 1);
        assert_eq!(n1["sent"]["broadcast:probe"], 1);
        assert_eq!(n1["sent"]["send_msg:probe-resp"], 1);
        assert_eq!(n1["sent"]["send_msg:raft"], 1);
        assert_eq!(n1["sent"].as_object().unwrap().len(), MAX_OBSERVED);
        assert_eq!(n1["probe_ids"], serde_json::json!([77]));
        assert_eq!(n1["raft_from"], serde_json::json!([77]));
        // Node 2 registered its handler (in `pair`) and sent nothing.
        let n2 = &nodes[1];
        assert_eq!(n2["registered"][0]["module"], "consensus");
        assert_eq!(n2["registered"][0]["hostname"], "127.0.0.1");
        assert!(n2["sent"].as_object().unwrap().is_empty());
        assert!(net.stats_json().contains("\"nodes\":["));
    }

    #[tokio::test]
    async fn cut_links_drop_both_ways() {
        let net = DevNetwork::new(3);
        net.set_cuts([(1, 2)]);
        let msg = NetworkMsg::default();
        // No handler registered either way, but the cut is checked first.
        assert!(!net.deliver(1, 2, msg.clone()));
        assert!(!net.deliver(2, 1, msg.clone()));
        assert!(!net.deliver(1, 1, msg.clone()));
        assert!(!net.deliver(1, 9, msg));
    }

    #[tokio::test]
    async fn a_node_whose_network_is_down_is_forgotten_until_it_registers_again() {
        let (net, rec) = pair().await;
        let mut watch = net.down_watch(2).unwrap();
        assert!(net.deliver(1, 2, payload(1)));
        assert_eq!(received(&rec, 1).await.len(), 1);

        net.set_faults(vec!["nodes=2 down".parse().unwrap()]);
        assert!(*watch.borrow_and_update());
        assert!(
            !net.deliver(1, 2, payload(2)),
            "delivered to a node that is down"
        );
        assert!(
            !net.deliver(2, 1, payload(3)),
            "delivered from a node that is down"
        );
        let port = net.service(2);
        let refused = port.send_msg(Request::new(payload(4))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        // Other nodes' services still answer.
        net.service(1)
            .broadcast(Request::new(payload(5)))
            .await
            .unwrap();

        // Lifted: the port is up again but the registration was lost with the service.
        net.set_faults(vec![]);
        assert!(!*watch.borrow_and_update());
        assert!(
            !net.deliver(1, 2, payload(6)),
            "a forgotten handler was delivered to"
        );
        assert!(received(&rec, 1).await.is_empty());
    }
}
