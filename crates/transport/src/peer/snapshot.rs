//! Both ends of a snapshot stream: chunks out with a deadline by size, and the bounded
//! reassembly of what arrives.

use std::sync::Arc;
use std::time::Duration;

use super::{SNAPSHOT_BASE_TIMEOUT, SNAPSHOT_SECS_PER_MIB};
use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::SnapshotChunk;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// The deadline of a stream of `bytes` bytes.
pub(super) fn snapshot_timeout(bytes: u64) -> Duration {
    SNAPSHOT_BASE_TIMEOUT + Duration::from_secs(SNAPSHOT_SECS_PER_MIB * bytes.div_ceil(1 << 20))
}

/// Streams an encoded snapshot message (integrity trailer included) in chunks of
/// `chunk_bytes`; returns its size once the peer has acknowledged it.
pub(super) async fn stream_snapshot(
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

/// Reads a snapshot stream whole: at most `max` bytes, every chunk from the same
/// sender and announcing the same length, and exactly that many bytes in all. Returns
/// the sender and the bytes.
pub(super) async fn reassemble(
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
