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
            client: Consensus2ControllerServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(cita_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cita_proto::MAX_MESSAGE_BYTES),
        })
    }
}

/// The payload of a `{status, payload}` answer: a missing status or payload is
/// malformed, a non-zero status code is an error.
fn answer<T>(
    call: &'static str,
    status: Option<cita_proto::common::StatusCode>,
    payload: Option<T>,
    field: &'static str,
) -> Result<T, ControllerError> {
    let code = status.map(|s| s.code).ok_or(ControllerError::Malformed {
        call,
        field: "status",
    })?;
    if code != 0 {
        return Err(ControllerError::Status { call, code });
    }
    payload.ok_or(ControllerError::Malformed { call, field })
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
        answer("GetProposal", resp.status, resp.proposal, "proposal")
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
        answer("CommitBlock", resp.status, resp.config, "config")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cita_proto::common::StatusCode;

    #[test]
    fn answers_are_checked_field_by_field() {
        let ok = Some(StatusCode { code: 0 });
        assert_eq!(answer("C", ok, Some(5), "x"), Ok(5));
        assert_eq!(
            answer::<u8>("C", None, Some(5), "x"),
            Err(ControllerError::Malformed {
                call: "C",
                field: "status"
            })
        );
        assert_eq!(
            answer("C", Some(StatusCode { code: 7 }), Some(5), "x"),
            Err(ControllerError::Status { call: "C", code: 7 })
        );
        assert_eq!(
            answer::<u8>("C", ok, None, "x"),
            Err(ControllerError::Malformed {
                call: "C",
                field: "x"
            })
        );
    }
}
