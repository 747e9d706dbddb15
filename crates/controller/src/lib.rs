//! craft-controller talks to a CITA-Cloud controller: the [`Controller`] trait the
//! consensus service needs, its gRPC client [`GrpcController`] (lazy reconnect, typed
//! errors, [`retry`] with bounded exponential backoff). The development controller that
//! local clusters run is in craft-devnet.
//!
//! It knows nothing of raft and must not depend on the raft crates or craft-core.

mod grpc;
mod retry;

use std::future::Future;

pub use cita_proto::common::{ConsensusConfiguration, Proposal};
pub use grpc::GrpcController;
pub use retry::{retry, Backoff};

/// Why a controller call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ControllerError {
    /// The controller could not be reached, or the call failed in transport. Retry.
    #[error("controller unavailable: {0}")]
    Unavailable(String),
    /// The controller answered with a non-zero status code.
    #[error("controller returned status code {code} for {call}")]
    Status {
        /// Which call.
        call: &'static str,
        /// The code it returned.
        code: u32,
    },
    /// The controller answered without a field the contract requires.
    #[error("controller answered {call} without {field}")]
    Malformed {
        /// Which call.
        call: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

impl ControllerError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ControllerError::Unavailable(_))
    }
}

/// Height of the ping proposal: `CommitBlock` with it commits nothing and answers the
/// controller's current configuration.
pub const PING_HEIGHT: u64 = u64::MAX;

/// The controller as the consensus service uses it.
pub trait Controller: Send + Sync + 'static {
    /// The next block to agree on (`height` is the controller's height + 1).
    fn get_proposal(&self) -> impl Future<Output = Result<Proposal, ControllerError>> + Send;

    /// Whether the controller accepts `proposal`; `Ok(false)` is a definite rejection.
    fn check_proposal(
        &self,
        proposal: Proposal,
    ) -> impl Future<Output = Result<bool, ControllerError>> + Send;

    /// Commits an agreed block (empty proof) and returns the configuration after it.
    fn commit_block(
        &self,
        proposal: Proposal,
    ) -> impl Future<Output = Result<ConsensusConfiguration, ControllerError>> + Send;

    /// The controller's current configuration, committing nothing.
    fn ping(&self) -> impl Future<Output = Result<ConsensusConfiguration, ControllerError>> + Send {
        self.commit_block(Proposal {
            height: PING_HEIGHT,
            data: Default::default(),
        })
    }
}
