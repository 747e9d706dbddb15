//! A plain peer-to-peer gRPC transport (`craft.peer.RaftPeer`) for services that run
//! outside CITA-Cloud, such as the key-value example. Each node serves `RaftPeer` and
//! knows its peers' addresses; messages to one peer go in order as batches, on one
//! long-lived stream per peer (`RaftPeer.Batches`): a batch costs one HTTP/2 DATA frame
//! rather than a request and its answer, which halves the syscalls and wake-ups per raft
//! round. A stream that ends (the peer restarted or refused a batch) is opened again with
//! the next batch; what was queued on it is counted dropped, and raft sends it again.
//!
//! Without TLS anyone who reaches the port can send raft messages under any raft id.
//! With [`PeerTls`] both sides use mutual TLS: only holders of a certificate signed by
//! the cluster's CA can connect, in either direction.
//!
//! Snapshots (`MsgSnapshot`, the whole state machine) do not go through the batch
//! queue: each is streamed to its peer on a task of its own (`RaftPeer.SendSnapshot`)
//! in chunks of [`SNAPSHOT_CHUNK_BYTES`], on a connection of its own so it holds back no
//! heartbeat. The receiver reassembles it, checks its integrity trailer, decodes it and
//! hands it to raft before it answers; only that answer makes the transport report the
//! snapshot finished to raft, and any failure reports it failed, so raft sends another
//! later instead of waiting forever or resending one that can never arrive.
//!
//! Limits: a message (one batch, or one snapshot chunk) is at most
//! [`cita_proto::MAX_MESSAGE_BYTES`] either way; a snapshot is at most
//! [`DEFAULT_MAX_SNAPSHOT_BYTES`] ([`PeerService::with_max_snapshot_bytes`]), and a server
//! receives at most [`MAX_CONCURRENT_SNAPSHOTS`] at once; a server holds at most its
//! [`ConnectionLimit`] of connections and [`MAX_STREAMS_PER_CONNECTION`] concurrent
//! requests on each, and each peer has a queue of [`QUEUE_CAPACITY`] batches (when full
//! the newest is dropped and counted).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use cita_proto::peer::{Ack, RaftBatch, SnapshotChunk};
use craft_core::SnapshotReporter;
use futures::StreamExt as _;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::cita::Inbound;
use crate::integrity::{decode_checked, encode_checked};
use crate::limits::ConnectionLimit;
use crate::queue::PeerStats;
use crate::tls::PeerTls;

/// Batches queued per peer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Concurrent requests a peer server serves on one connection (a sender has one batch
/// stream per peer, and at most one snapshot stream on a connection of its own).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Bytes of a snapshot message per chunk of its stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot message a [`PeerService`] accepts by default: 1 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Snapshots a [`PeerService`] receives at once; more are refused (the sender's raft
/// tries again later). Bounds the memory held by snapshots being reassembled.
pub const MAX_CONCURRENT_SNAPSHOTS: usize = 2;
/// Time a snapshot stream may take: this much, plus [`SNAPSHOT_SECS_PER_MIB`] for each
/// MiB of the snapshot.
pub const SNAPSHOT_BASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a snapshot stream may take per MiB on top of [`SNAPSHOT_BASE_TIMEOUT`]: a
/// rate of 1 MiB/s at least.
pub const SNAPSHOT_SECS_PER_MIB: u64 = 1;

/// The clients of one peer.
#[derive(Clone)]
struct Peer {
    /// The batch stream (no deadline: HTTP/2 keepalives notice a dead peer).
    batches: RaftPeerClient<Channel>,
    /// Snapshot streams, on a connection of their own (timeout per stream).
    snapshots: RaftPeerClient<Channel>,
}

/// The sending side: a [`craft_core::Transport`] over `RaftPeer.Batches` (a stream of
/// batches per peer) and `RaftPeer.SendSnapshot` (snapshot streams).
#[derive(Clone)]
pub struct PeerTransport {
    id: u64,
    peers: Arc<RwLock<HashMap<u64, Peer>>>,
    streams: Arc<Mutex<HashMap<u64, BatchStream>>>,
    tls: Option<PeerTls>,
    /// Where snapshot outcomes go, once the raft driver has asked for them.
    reporter: Arc<OnceLock<SnapshotReporter>>,
    /// Peers a snapshot is being streamed to now.
    streaming: Arc<Mutex<HashSet<u64>>>,
    /// Bytes per snapshot chunk.
    chunk_bytes: usize,
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
            streams: Arc::new(Mutex::new(HashMap::new())),
            tls: None,
            reporter: Arc::new(OnceLock::new()),
            streaming: Arc::new(Mutex::new(HashSet::new())),
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }

    /// Streams snapshots in chunks of `bytes` (at least 1) instead of
    /// [`SNAPSHOT_CHUNK_BYTES`].
    pub fn with_snapshot_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
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
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config())?;
        }
        let client = |endpoint: Endpoint| {
            RaftPeerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
        };
        // Neither kind of stream has a fixed deadline (a snapshot stream sets its own,
        // by its size); keepalives notice a dead peer. Each kind has a connection of its
        // own, so a snapshot holds back no heartbeat.
        let endpoint = endpoint
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let peer = Peer {
            batches: client(endpoint.clone()),
            snapshots: client(endpoint),
        };
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, peer);
        // The stream to the old address ends once its sender is dropped.
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    fn peer(&self, id: u64) -> Option<Peer> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Tells raft, when it asked to be told, how the snapshot to `to` went.
    fn report(&self, to: u64, status: SnapshotStatus) {
        if let Some(reporter) = self.reporter.get() {
            reporter.report(to, status);
        }
    }

    /// Streams one snapshot message to its peer on a task of its own, and reports the
    /// outcome. One stream per peer at a time: raft sends a follower one snapshot at a
    /// time, and a second one (from a new term) fails at once and is sent again later.
    fn send_snapshot(&self, msg: Message) {
        let to = msg.to;
        let index = msg.get_snapshot().get_metadata().index;
        let Some(peer) = self.peer(to) else {
            tracing::debug!(to, "no address for peer; snapshot dropped");
            self.report(to, SnapshotStatus::Failure);
            return;
        };
        if !self
            .streaming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(to)
        {
            tracing::debug!(
                to,
                index,
                "a snapshot to this peer is still streaming; new one dropped"
            );
            self.report(to, SnapshotStatus::Failure);
            return;
        }
        let transport = self.clone();
        tokio::spawn(async move {
            // Encoded here rather than on the raft task, and the message dropped at once:
            // only the encoded copy stays while it streams.
            let bytes = encode_checked(&msg);
            drop(msg);
            let result =
                stream_snapshot(peer.snapshots, transport.id, bytes, transport.chunk_bytes).await;
            transport
                .streaming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&to);
            match result {
                Ok(bytes) => {
                    tracing::info!(to, index, bytes, "snapshot sent");
                    transport.report(to, SnapshotStatus::Finish);
                }
                Err(status) => {
                    tracing::warn!(to, index, code = ?status.code(), error = %status.message(), "snapshot not sent");
                    transport.report(to, SnapshotStatus::Failure);
                }
            }
        });
    }

    /// `(peer, sent, dropped)` batches per peer, sorted by peer: sent were taken by the
    /// HTTP/2 layer onto a stream the peer accepted; dropped found the queue full, were
    /// still queued when their stream ended, or went onto a stream the peer never
    /// accepted (a refused handshake).
    pub fn peer_stats(&self) -> Vec<(u64, u64, u64)> {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = streams
            .iter()
            .map(|(id, s)| {
                let (sent, dropped) = s.counts();
                (*id, sent, dropped)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

impl craft_core::Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        let mut by_peer: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for m in messages {
            if m.msg_type == MessageType::MsgSnapshot as i32 {
                self.send_snapshot(m);
            } else {
                by_peer.entry(m.to).or_default().push(encode_checked(&m));
            }
        }
        if by_peer.is_empty() {
            return;
        }
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for (to, msgs) in by_peer {
            let batch = RaftBatch {
                from: self.id,
                messages: msgs,
            };
            if let Some(stream) = streams.get_mut(&to) {
                stream.push(to, batch);
                continue;
            }
            let Some(client) = self.peer(to).map(|p| p.batches) else {
                tracing::debug!(to, "no address for peer; dropping");
                continue;
            };
            streams
                .entry(to)
                .or_insert_with(|| BatchStream::new(client))
                .push(to, batch);
        }
    }

    /// Snapshots are streamed and acknowledged, so their outcome is known.
    fn report_snapshots(&self, reporter: SnapshotReporter) -> bool {
        let _ = self.reporter.set(reporter);
        true
    }
}

/// One peer's batch stream (`RaftPeer.Batches`): opened with the first batch, and again
/// with the first batch after it ended.
struct BatchStream {
    client: RaftPeerClient<Channel>,
    /// The open stream's queue and counts.
    live: Option<(mpsc::Sender<RaftBatch>, Arc<Mutex<StreamCounts>>)>,
    /// Totals of the streams that ended, plus batches dropped on a full queue.
    stats: Arc<PeerStats>,
}

/// What happened to the batches of one stream so far.
#[derive(Default)]
struct StreamCounts {
    /// Put in its queue.
    queued: u64,
    /// Taken from the queue by the HTTP/2 layer.
    taken: u64,
    /// The peer answered with its response headers: it took the stream.
    accepted: bool,
    /// The stream ended and its counts went into the totals.
    ended: bool,
}

impl BatchStream {
    fn new(client: RaftPeerClient<Channel>) -> Self {
        Self {
            client,
            live: None,
            stats: Arc::new(PeerStats::default()),
        }
    }

    /// `(sent, dropped)`: batches taken onto streams the peer accepted, and batches
    /// dropped (the queue was full, or their stream ended before they were taken or
    /// was never accepted).
    fn counts(&self) -> (u64, u64) {
        let mut sent = self.stats.sent.load(Ordering::Relaxed);
        if let Some((_, counts)) = &self.live {
            let c = counts.lock().unwrap_or_else(|e| e.into_inner());
            if c.accepted && !c.ended {
                sent += c.taken;
            }
        }
        (sent, self.stats.dropped.load(Ordering::Relaxed))
    }

    /// Queues `batch` on the open stream, opening one if it has ended. Never waits: a
    /// batch that finds the queue full is dropped and counted.
    fn push(&mut self, to: u64, batch: RaftBatch) {
        let mut batch = batch;
        if let Some((tx, counts)) = &self.live {
            match tx.try_send(batch) {
                Ok(()) => {
                    counts.lock().unwrap_or_else(|e| e.into_inner()).queued += 1;
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(b)) => batch = b,
            }
        }
        let (tx, counts) = self.open(to);
        match tx.try_send(batch) {
            Ok(()) => counts.lock().unwrap_or_else(|e| e.into_inner()).queued += 1,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.live = Some((tx, counts));
    }

    /// Starts a stream on a task of its own; it runs until the peer ends it (an error,
    /// or the peer shutting down) or its sender is dropped.
    fn open(&self, to: u64) -> (mpsc::Sender<RaftBatch>, Arc<Mutex<StreamCounts>>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counts = Arc::new(Mutex::new(StreamCounts::default()));
        let mut client = self.client.clone();
        let stats = self.stats.clone();
        let task_counts = counts.clone();
        tokio::spawn(async move {
            let taking = task_counts.clone();
            let batches = ReceiverStream::new(rx).inspect(move |_| {
                taking.lock().unwrap_or_else(|e| e.into_inner()).taken += 1;
            });
            let ended = match client.batches(batches).await {
                Ok(response) => {
                    task_counts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .accepted = true;
                    let mut acks = response.into_inner();
                    loop {
                        match acks.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(status) => Some(status),
            };
            let mut c = task_counts.lock().unwrap_or_else(|e| e.into_inner());
            c.ended = true;
            // Taken onto an accepted stream counts as sent; anything else is lost.
            let sent = if c.accepted { c.taken } else { 0 };
            let lost = c.queued.saturating_sub(sent);
            stats.sent.fetch_add(sent, Ordering::Relaxed);
            stats.dropped.fetch_add(lost, Ordering::Relaxed);
            drop(c);
            match ended {
                None => tracing::debug!(to, lost, "batch stream ended by the peer"),
                Some(status) => tracing::debug!(
                    to,
                    lost,
                    code = ?status.code(),
                    error = %status.message(),
                    "batch stream ended; the next batch opens another"
                ),
            }
        });
        (tx, counts)
    }
}

/// The deadline of a stream of `bytes` bytes.
fn snapshot_timeout(bytes: u64) -> Duration {
    SNAPSHOT_BASE_TIMEOUT + Duration::from_secs(SNAPSHOT_SECS_PER_MIB * bytes.div_ceil(1 << 20))
}

/// Streams an encoded snapshot message (integrity trailer included) in chunks of
/// `chunk_bytes`; returns its size once the peer has acknowledged it.
async fn stream_snapshot(
    mut client: RaftPeerClient<Channel>,
    from: u64,
    bytes: Vec<u8>,
    chunk_bytes: usize,
) -> Result<u64, Status> {
    let bytes = Arc::new(bytes);
    let total_len = bytes.len() as u64;
    let chunks = bytes.len().div_ceil(chunk_bytes);
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let start = i * chunk_bytes;
        let end = bytes.len().min(start + chunk_bytes);
        SnapshotChunk {
            from,
            total_len,
            data: bytes[start..end].to_vec(),
        }
    }));
    let mut request = Request::new(stream);
    request.set_timeout(snapshot_timeout(total_len));
    client.send_snapshot(request).await?;
    Ok(total_len)
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
    // A graceful shutdown waits for open requests, and a batch stream stays open as
    // long as its sender runs: the streams are ended first.
    let (stop, stopped) = watch::channel(false);
    let service = PeerService {
        stopping: stopped,
        ..service
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
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
    /// Largest snapshot message accepted, in bytes.
    max_snapshot_bytes: u64,
    /// One permit per snapshot being received.
    snapshot_slots: Arc<Semaphore>,
    /// Turns true when the server is shutting down: batch streams end.
    stopping: watch::Receiver<bool>,
}

impl PeerService {
    /// A service that delivers to `inbound`, accepting snapshots of up to
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`].
    pub fn new(inbound: Inbound) -> Self {
        Self {
            inbound,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOTS)),
            // Never changes unless [`serve`] sets its own.
            stopping: watch::channel(false).1,
        }
    }

    /// Accepts snapshot messages of up to `bytes` bytes (encoded, trailer included);
    /// larger ones are refused before any of them is buffered, and the sender's raft
    /// tries again later. A state machine whose snapshots outgrow it cannot add members
    /// or catch up lagging ones, so size it above the largest state expected.
    pub fn with_max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }
}

/// Reads a snapshot stream whole: at most `max` bytes, every chunk from the same
/// sender and announcing the same length, and exactly that many bytes in all. Returns
/// the sender and the bytes.
async fn reassemble(
    stream: &mut Streaming<SnapshotChunk>,
    max: u64,
) -> Result<(u64, Vec<u8>), Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    let (from, total_len) = (first.from, first.total_len);
    if total_len > max {
        return Err(Status::resource_exhausted(format!(
            "snapshot of {total_len} bytes from raft id {from} exceeds the limit of {max} bytes"
        )));
    }
    let total = usize::try_from(total_len)
        .map_err(|_| Status::resource_exhausted("snapshot larger than memory"))?;
    // Grown as the bytes arrive, so an announced length costs no memory up front.
    let mut bytes = Vec::with_capacity(total.min(cita_proto::MAX_MESSAGE_BYTES));
    let mut chunk = Some(first);
    while let Some(c) = chunk {
        if c.from != from || c.total_len != total_len {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk from raft id {} announcing {} bytes, in a stream from {from} of {total_len} bytes",
                c.from, c.total_len
            )));
        }
        if c.data.len() > total - bytes.len() {
            return Err(Status::invalid_argument(format!(
                "snapshot stream from raft id {from} carries more than the {total_len} bytes it announced"
            )));
        }
        bytes.extend_from_slice(&c.data);
        chunk = stream.message().await?;
    }
    if bytes.len() != total {
        return Err(Status::invalid_argument(format!(
            "snapshot stream from raft id {from} ended after {} of {total_len} bytes",
            bytes.len()
        )));
    }
    Ok((from, bytes))
}

impl PeerService {
    /// Hands a batch's messages to raft. Decoded all first: a batch with one bad message
    /// is refused whole.
    fn deliver(&self, batch: RaftBatch) -> Result<(), Status> {
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
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, Status> {
        self.deliver(req.into_inner())?;
        Ok(Response::new(Ack {}))
    }

    type BatchesStream = ReceiverStream<Result<Ack, Status>>;

    /// Answers at once (the response headers tell the sender the stream is taken) and
    /// delivers its batches on a task of its own, until the sender ends the stream, a
    /// batch is refused, or the server shuts down.
    async fn batches(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<Self::BatchesStream>, Status> {
        let mut stream = req.into_inner();
        let (end_tx, end_rx) = mpsc::channel(1);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let end = loop {
                tokio::select! {
                    batch = stream.message() => match batch {
                        Ok(Some(batch)) => {
                            if let Err(status) = service.deliver(batch) {
                                break Some(status);
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    },
                    _ = stopping.wait_for(|stop| *stop) => {
                        break Some(Status::unavailable("shutting down"));
                    }
                }
            };
            if let Some(status) = end {
                let _ = end_tx.send(Err(status)).await;
            }
            // Dropping the sender ends the answer stream, and with it the call.
        });
        Ok(Response::new(ReceiverStream::new(end_rx)))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let Ok(_slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "already receiving as many snapshots as allowed",
            ));
        };
        let mut stream = req.into_inner();
        let (from, bytes) = reassemble(&mut stream, self.max_snapshot_bytes).await?;
        let len = bytes.len();
        // Checksumming and decoding tens of MiB is work for a blocking thread.
        let decoded = tokio::task::spawn_blocking(move || decode_checked(&bytes, true))
            .await
            .map_err(|e| Status::internal(format!("decoding the snapshot: {e}")))?;
        let (m, _) = decoded
            .map_err(|e| Status::invalid_argument(format!("snapshot message refused: {e}")))?;
        if m.msg_type != MessageType::MsgSnapshot as i32 {
            return Err(Status::invalid_argument(format!(
                "a snapshot stream carried message type {}",
                m.msg_type
            )));
        }
        if m.from != from {
            return Err(Status::invalid_argument(format!(
                "snapshot from {} in a stream from {from}",
                m.from
            )));
        }
        let index = m.get_snapshot().get_metadata().index;
        if !(self.inbound)(m) {
            return Err(Status::unavailable("raft inbox full; snapshot dropped"));
        }
        tracing::info!(from, index, bytes = len, "snapshot received");
        Ok(Response::new(Ack {}))
    }
}
