//! Raft ids of CITA-Cloud nodes: defined with the CITA network adapter, which keys peers
//! by them.

pub use craft_transport::cita::raft_id;
