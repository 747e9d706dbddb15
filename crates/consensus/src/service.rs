//! `consensus.ConsensusService` as the controller calls it.

use std::sync::Arc;

use cita_proto::common::{ConsensusConfiguration, ProposalWithProof, StatusCode};
use cita_proto::consensus::consensus_service_server::ConsensusService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Serves `Reconfigure` and `CheckBlock`.
#[derive(Debug, Clone)]
pub struct ConsensusRpc {
    /// The latest configuration pushed by the controller. `send_replace` never blocks,
    /// and a newer push replaces an older one that was not yet acted upon.
    pushed: Arc<watch::Sender<Option<ConsensusConfiguration>>>,
}

impl ConsensusRpc {
    /// A service publishing pushed configurations into `pushed`.
    pub fn new(pushed: Arc<watch::Sender<Option<ConsensusConfiguration>>>) -> Self {
        Self { pushed }
    }
}

#[tonic::async_trait]
impl ConsensusService for ConsensusRpc {
    async fn reconfigure(
        &self,
        req: Request<ConsensusConfiguration>,
    ) -> Result<Response<StatusCode>, Status> {
        let cfg = req.into_inner();
        tracing::info!(
            height = cfg.height,
            interval = cfg.block_interval,
            validators = cfg.validators.len(),
            "reconfigure from controller"
        );
        self.pushed.send_replace(Some(cfg));
        Ok(Response::new(StatusCode { code: 0 }))
    }

    async fn check_block(
        &self,
        req: Request<ProposalWithProof>,
    ) -> Result<Response<StatusCode>, Status> {
        // Raft is not byzantine-tolerant: its proofs are empty, and any block that
        // reached the chain through raft is valid.
        let block = req.into_inner();
        if block.proposal.is_none() {
            return Ok(Response::new(StatusCode { code: 1 }));
        }
        Ok(Response::new(StatusCode { code: 0 }))
    }
}
