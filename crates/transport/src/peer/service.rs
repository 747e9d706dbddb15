//! The receiving side: the `RaftPeer` server, its batch streams and snapshot streams.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cita_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use cita_proto::peer::{Ack, RaftBatch, SnapshotChunk};
use raft::eraftpb::MessageType;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::reassemble;
use super::{
    ACKS_HEADER, ACKS_IN_FLIGHT, DEFAULT_MAX_SNAPSHOT_BYTES, MAX_CONCURRENT_SNAPSHOTS,
    MAX_STREAMS_PER_CONNECTION,
};
use crate::integrity::decode_checked;
use crate::limits::ConnectionLimit;
use crate::tls::PeerTls;
use crate::Inbound;

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

/// Completes once the server is shutting down.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

impl PeerService {
    /// Hands a batch's messages to raft. Decoded all first: a batch with one bad message
    /// is refused whole.
    fn deliver(&self, batch: RaftBatch) -> Result<(), Status> {
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            // Every member of this transport adds the checksum trailer.
            let (m, _) = decode_checked(bytes.clone(), true)
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

    /// Answers at once (the response headers tell the sender the stream is taken, and
    /// carry [`ACKS_HEADER`]), delivers its batches on a task of its own and
    /// acknowledges each once delivered, until the sender ends the stream, a batch is
    /// refused, or the server shuts down.
    async fn batches(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<Self::BatchesStream>, Status> {
        let mut stream = req.into_inner();
        let (answers, answers_rx) = mpsc::channel(ACKS_IN_FLIGHT);
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
                            // Acknowledged once raft has its messages. A sender that
                            // reads no acknowledgements holds up only its own stream.
                            tokio::select! {
                                sent = answers.send(Ok(Ack {})) => if sent.is_err() {
                                    break None;
                                },
                                () = stopped(&mut stopping) => {
                                    break Some(Status::unavailable("shutting down"));
                                }
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    },
                    () = stopped(&mut stopping) => {
                        break Some(Status::unavailable("shutting down"));
                    }
                }
            };
            if let Some(status) = end {
                let _ = answers.send(Err(status)).await;
            }
            // Dropping the sender ends the answer stream, and with it the call.
        });
        let mut response = Response::new(ReceiverStream::new(answers_rx));
        response
            .metadata_mut()
            .insert(ACKS_HEADER, MetadataValue::from_static("1"));
        Ok(response)
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
        let decoded = tokio::task::spawn_blocking(move || decode_checked(bytes.into(), true))
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
