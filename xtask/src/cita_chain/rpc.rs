//! The three calls of the controller's client API (`controller.RPCService`) the chain
//! benchmark reads blocks with: the height, a block's transaction hashes and a block's
//! hash.
//!
//! The messages are declared here with the field numbers of `cita_cloud_proto` 6.7.4
//! (`controller.proto`, `blockchain.proto`, `common.proto`), only the fields read; the
//! rest of each message is skipped by the decoder. Generating the whole client API into
//! `cita-proto` would put the controller's client side into a crate the service links.

use std::time::Duration;

use anyhow::Context;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// `controller.Flag`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Flag {
    /// `true`: the pending height; `false`: the latest committed one.
    #[prost(bool, tag = "1")]
    pub flag: bool,
}

/// `controller.BlockNumber`
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockNumber {
    /// A height.
    #[prost(uint64, tag = "1")]
    pub block_number: u64,
}

/// `common.Hash`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hash {
    /// 32 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
}

/// `blockchain.BlockHeader`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockHeader {
    /// Milliseconds since the epoch, set by the proposer's controller.
    #[prost(uint64, tag = "2")]
    pub timestamp: u64,
    /// The block's height.
    #[prost(uint64, tag = "3")]
    pub height: u64,
    /// The proposer's validator address (20 bytes).
    #[prost(bytes = "vec", tag = "5")]
    pub proposer: Vec<u8>,
}

/// What the benchmark reads of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// The header's timestamp (ms since the epoch).
    pub timestamp_ms: u64,
    /// The proposer's validator address.
    pub proposer: Vec<u8>,
    /// The transactions' hashes.
    pub tx_hashes: Vec<Vec<u8>>,
}

/// `blockchain.CompactBlockBody`
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompactBlockBody {
    /// Hashes of the block's transactions.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub tx_hashes: Vec<Vec<u8>>,
}

/// `blockchain.CompactBlock`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompactBlock {
    /// The header.
    #[prost(message, optional, tag = "2")]
    pub header: Option<BlockHeader>,
    /// The transaction hashes.
    #[prost(message, optional, tag = "3")]
    pub body: Option<CompactBlockBody>,
}

/// A client of one controller's `RPCService`.
pub struct Controller {
    grpc: tonic::client::Grpc<Channel>,
}

impl Controller {
    /// Connects to the controller on `127.0.0.1:port`.
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to the controller on 127.0.0.1:{port}"))?;
        Ok(Controller {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn call<Req, Resp>(&mut self, method: &'static str, req: Req) -> anyhow::Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .with_context(|| format!("controller not ready for {method}"))?;
        let path = PathAndQuery::from_static(method);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        Ok(self
            .grpc
            .unary(tonic::Request::new(req), path, codec)
            .await
            .with_context(|| method.to_string())?
            .into_inner())
    }

    /// The latest committed height.
    pub async fn height(&mut self) -> anyhow::Result<u64> {
        let n: BlockNumber = self
            .call(
                "/controller.RPCService/GetBlockNumber",
                Flag { flag: false },
            )
            .await?;
        Ok(n.block_number)
    }

    /// The block at `height`.
    pub async fn block(&mut self, height: u64) -> anyhow::Result<BlockInfo> {
        let b: CompactBlock = self
            .call(
                "/controller.RPCService/GetBlockByNumber",
                BlockNumber {
                    block_number: height,
                },
            )
            .await?;
        let header = b
            .header
            .with_context(|| format!("block {height} has no header"))?;
        anyhow::ensure!(
            header.height == height,
            "asked for block {height}, got {}",
            header.height
        );
        Ok(BlockInfo {
            timestamp_ms: header.timestamp,
            proposer: header.proposer,
            tx_hashes: b.body.map(|b| b.tx_hashes).unwrap_or_default(),
        })
    }

    /// The hash of the block at `height`.
    pub async fn block_hash(&mut self, height: u64) -> anyhow::Result<Vec<u8>> {
        let h: Hash = self
            .call(
                "/controller.RPCService/GetBlockHash",
                BlockNumber {
                    block_number: height,
                },
            )
            .await?;
        Ok(h.hash)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    /// A block encoded with every field of `blockchain.CompactBlock` (as the controller
    /// sends it) decodes to the fields read, the others skipped.
    #[test]
    fn a_full_compact_block_decodes_to_the_fields_read() {
        let mut buf = Vec::new();
        // version = 1 (uint32)
        prost::encoding::uint32::encode(1, &7, &mut buf);
        // header = 2: prevhash 1, timestamp 2, height 3, transactions_root 4, proposer 5
        let mut header = Vec::new();
        prost::encoding::bytes::encode(1, &vec![0xaa; 32], &mut header);
        prost::encoding::uint64::encode(2, &1_700_000_000_123, &mut header);
        prost::encoding::uint64::encode(3, &42, &mut header);
        prost::encoding::bytes::encode(4, &vec![0xbb; 32], &mut header);
        prost::encoding::bytes::encode(5, &vec![0xcc; 20], &mut header);
        prost::encoding::bytes::encode(2, &header, &mut buf);
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &vec![1u8; 32], &mut body);
        prost::encoding::bytes::encode(1, &vec![2u8; 32], &mut body);
        prost::encoding::bytes::encode(3, &body, &mut buf);

        let b = CompactBlock::decode(buf.as_slice()).unwrap();
        let h = b.header.unwrap();
        assert_eq!((h.timestamp, h.height), (1_700_000_000_123, 42));
        assert_eq!(h.proposer, vec![0xcc; 20]);
        assert_eq!(
            b.body.unwrap().tx_hashes,
            vec![vec![1u8; 32], vec![2u8; 32]]
        );
    }
}
