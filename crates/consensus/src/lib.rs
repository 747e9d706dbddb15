//! The raft consensus microservice of CITA-Cloud, as a library; `src/main.rs` is a thin
//! command line over [`node::run`].
//!
//! It composes the engine crates: `craft-core` (the Ready loop), `craft-storage`
//! (RocksDB log), `craft-transport` (the CITA network adapter) and `craft-controller`
//! (the controller client). Only this crate knows the CITA block flow; the engine crates
//! must never depend on it.

pub mod chain;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod raft_id;
pub mod reset;
pub mod service;
pub mod timed_store;
