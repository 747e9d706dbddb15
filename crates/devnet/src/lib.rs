//! craft-devnet: the development tools local clusters and tests run in place of a real
//! CITA-Cloud chain, kept out of the production crates so that a service reusing them
//! compiles none of this.
//!
//! - [`network`]: a development network microservice routing `NetworkMsg` between the
//!   nodes of a local cluster, with partitions and [`link_faults`] (delay, jitter, loss,
//!   duplication, corruption, a bandwidth cap), as netem would; binary `dev-network`.
//! - [`controller`]: a development controller ([`controller::DevChain`]) that proposes
//!   blocks, checks and commits them and writes its chain to a file; binary
//!   `dev-controller`.
//! - [`hostile`]: what a faulty or malicious peer could send a consensus node through
//!   the network service; binary `dev-hostile`.
//!
//! Production crates must never depend on it (`cargo xtask tidy` checks); tests may.

pub mod controller;
pub mod hostile;
pub mod link_faults;
pub mod network;
