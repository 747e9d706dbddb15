//! Wire types of consensus-raft: the protobuf messages and gRPC services of the CITA-Cloud
//! contract, and of craft's own peer-to-peer raft transport.
//!
//! This crate owns *wire types only*. It holds no logic beyond a few constructors, and it
//! knows nothing about the layers above it: it must not depend on `raft` or on any `craft-*`
//! crate, so every other crate can depend on it.
//!
//! # Modules
//!
//! One module per protobuf package, each a checked-in file of `src/generated/`:
//!
//! | module | package | what |
//! |---|---|---|
//! | [`common`] | `common` | messages shared by every CITA-Cloud service |
//! | [`consensus`] | `consensus` | `ConsensusService`, served by the consensus service |
//! | [`controller`] | `controller` | `Consensus2ControllerService`, served by the controller |
//! | [`network`] | `network` | `NetworkService` and `NetworkMsgHandlerService` |
//! | [`peer`] | `craft.peer` | `RaftPeer`, craft's peer transport outside CITA-Cloud |
//!
//! Each service `Foo` comes as a client (`foo_client::FooClient`) and a server
//! (`foo_server::{Foo, FooServer}`).
//!
//! # Regenerating
//!
//! The code is generated from `proto/*.proto` by `cargo xtask codegen` (pure Rust: `protox`,
//! `prost-build` and `tonic-prost-build`, no `protoc`) and checked in, so building this crate
//! needs no build script. Never edit `src/generated/` by hand; a test in `xtask` fails when it
//! is stale.
//!
//! # Health checks
//!
//! The standard `grpc.health.v1.Health` service is not generated here: servers take it from
//! the [`tonic-health`](https://docs.rs/tonic-health/0.14) crate (version 0.14, matching tonic).
//!
//! # Example
//!
//! ```
//! use cita_proto::common::{ConsensusConfiguration, StatusCode};
//! use prost::Message as _;
//!
//! let config = ConsensusConfiguration {
//!     height: 1,
//!     block_interval: 3,
//!     validators: vec![vec![0xab; 20]],
//! };
//! let bytes = config.encode_to_vec();
//! assert_eq!(ConsensusConfiguration::decode(bytes.as_slice()), Ok(config));
//! assert!(StatusCode::ok().is_ok());
//! ```

/// Largest gRPC message (in bytes) our CITA services and clients encode or decode.
///
/// tonic refuses messages over 4 MiB by default, which a block near that size, or a
/// raft append carrying several blocks, would exceed forever. Every server and client
/// of ours sets this limit instead: a block must fit in it with room for a raft
/// message's framing (raft batches entries up to 4 MiB per message, and an entry
/// larger than that travels alone).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Package `common`: messages shared by every CITA-Cloud service.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]

pub mod common {
    include!("generated/common.rs");
}

/// Package `consensus`: the service a CITA-Cloud consensus service serves to its controller.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod consensus {
    include!("generated/consensus.rs");
}

/// Package `controller`: the part of the CITA-Cloud controller that consensus calls.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod controller {
    include!("generated/controller.rs");
}

/// Package `network`: the CITA-Cloud network service and the handler it calls.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod network {
    include!("generated/network.rs");
}

/// Package `craft.peer`: craft's own peer-to-peer raft transport, used outside CITA-Cloud.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod peer {
    include!("generated/craft.peer.rs");
}

impl common::StatusCode {
    /// The code of success; every other value is an error code.
    pub const OK: u32 = 0;

    /// A status that reports success.
    #[must_use]
    pub const fn ok() -> Self {
        Self { code: Self::OK }
    }

    /// A status that reports the error `code` (a non-zero value).
    #[must_use]
    pub const fn error(code: u32) -> Self {
        Self { code }
    }

    /// Whether this status reports success.
    #[must_use]
    pub const fn is_ok(&self) -> bool {
        self.code == Self::OK
    }
}

#[cfg(test)]
mod tests {
    use super::common::StatusCode;

    #[test]
    fn only_zero_is_ok() {
        assert!(StatusCode::ok().is_ok());
        assert_eq!(StatusCode::ok(), StatusCode::default());
        assert!(!StatusCode::error(1).is_ok());
        assert!(!StatusCode { code: u32::MAX }.is_ok());
    }
}
