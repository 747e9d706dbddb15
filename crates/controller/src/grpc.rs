//! The tonic client of `controller.Consensus2ControllerService`.

use std::time::Duration;

use cita_proto::common::{ConsensusConfiguration, Empty, Proposal, ProposalWithProof};
use cita_proto::controller::consensus2_controller_service_client::Consensus2ControllerServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Controller, ControllerError};

/// A [`Controller`] reached over gRPC. The channel connects lazily and reconnects on its
/// own; a call made while the controller is down fails with
/// [`ControllerError::Unavailable`], which callers retry with [`crate::retry`].
#[derive(Debug, Clone)]
pub struct GrpcController {
    client: Consensus2ControllerServiceClient<Channel>,
}

impl GrpcController {
    /// A client for the controller at `addr` (e.g. `http://127.0.0.1:50004`).
    pub fn new(addr: &str, timeout: Duration) -> Result<Self, ControllerError> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| ControllerError::Unavailable(format!("bad address {addr}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        Ok(Self {
            client: Consensus2ControllerServiceClient::new(endpoint.connect_lazy()),
        })
    }
}

fn unavailable(status: tonic::Status) -> ControllerError {
    ControllerError::Unavailable(format!("{}: {}", status.code(), status.message()))
}

impl Controller for GrpcController {
    async fn get_proposal(&self) -> Result<Proposal, ControllerError> {
        let resp = self
            .client
            .clone()
            .get_proposal(Empty {})
            .await
            .map_err(unavailable)?
            .into_inner();
        let code = resp
            .status
            .map(|s| s.code)
            .ok_or(ControllerError::Malformed {
                call: "GetProposal",
                field: "status",
            })?;
        if code != 0 {
            return Err(ControllerError::Status {
                call: "GetProposal",
                code,
            });
        }
        resp.proposal.ok_or(ControllerError::Malformed {
            call: "GetProposal",
            field: "proposal",
        })
    }

    async fn check_proposal(&self, proposal: Proposal) -> Result<bool, ControllerError> {
        let status = self
            .client
            .clone()
            .check_proposal(proposal)
            .await
            .map_err(unavailable)?
            .into_inner();
        Ok(status.code == 0)
    }

    async fn commit_block(
        &self,
        proposal: Proposal,
    ) -> Result<ConsensusConfiguration, ControllerError> {
        let resp = self
            .client
            .clone()
            .commit_block(ProposalWithProof {
                proposal: Some(proposal),
                proof: Vec::new(),
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        let code = resp
            .status
            .map(|s| s.code)
            .ok_or(ControllerError::Malformed {
                call: "CommitBlock",
                field: "status",
            })?;
        if code != 0 {
            return Err(ControllerError::Status {
                call: "CommitBlock",
                code,
            });
        }
        resp.config.ok_or(ControllerError::Malformed {
            call: "CommitBlock",
            field: "config",
        })
    }
}
