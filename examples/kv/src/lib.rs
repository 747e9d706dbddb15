//! craft-kv: a replicated key-value store with the HTTP API of
//! [hraftd](https://github.com/otoolep/hraftd), built on the craft engine crates.
//!
//! It shows how a service outside CITA-Cloud uses the engine:
//! - [`store`]: the application is a [`craft_core::StateMachine`] over a
//!   `BTreeMap<String, String>`; commands and snapshots are JSON;
//! - [`node`]: [`craft_core::start`] runs it over a durable
//!   [`craft_storage::RocksLogStore`] and the peer-to-peer gRPC transport
//!   ([`craft_transport::peer`]); initial members bootstrap from the `--peers` list or
//!   from hraftd's `POST /setup` ([`setup`], [`setup_api`]), later ones join through a
//!   membership change;
//! - [`http_api`]: writes are proposals, reads are linearizable through
//!   [`craft_core::NodeHandle::read_barrier`] (raft's ReadIndex) and may go to any
//!   member, writes to a follower are redirected to the leader.
//!
//! Two small demos in `examples/` run three nodes in one process over
//! [`craft_core::MemLogStore`] and an in-process transport: `register` and `hashmap`.
//!
//! Architecture invariant: this example depends only on the generic engine crates
//! (`craft-core`, `craft-storage`, `craft-transport`'s peer transport and the
//! `craft.peer` wire types of `cita-proto`). It must not depend on the CITA-Cloud
//! consensus service, the controller, or the CITA network adapter, so it stays a
//! template for any service that wants raft.
//!
//! ```no_run
//! use craft_kv::node::{KvNode, NodeConfig};
//! use tokio::net::TcpListener;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = NodeConfig::new(1, "./node1");
//! config.raft_peers = [(1, "127.0.0.1:7151".to_string())].into();
//! let node = KvNode::start(
//!     config,
//!     TcpListener::bind("127.0.0.1:7151").await?,
//!     TcpListener::bind("127.0.0.1:7150").await?,
//! )
//! .await?;
//! node.wait().await?; // until POST /shutdown
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod client;
pub mod http_api;
pub mod ids;
pub mod node;
pub mod peers;
pub mod setup;
pub mod setup_api;
pub mod shutdown;
pub mod store;
pub mod tls;

pub use node::{KvNode, NodeConfig, NodeError};
pub use store::{Command, KvReader, KvState, KvStateMachine};
