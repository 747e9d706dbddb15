//! The command line of the `craft-kv` binary, modelled on hraftd's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::node::NodeConfig;
use crate::peers::PeerList;

/// A node of a replicated key-value store with an hraftd-style HTTP API.
///
/// Initial members all get the same `--peers` list and bootstrap from it; a node whose
/// id is not in `--peers` starts empty and waits to be added by `POST /join` on the
/// leader. Without `--peers` the node forms a single-member cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "craft-kv", version)]
pub struct Args {
    /// Raft id of this node (a positive integer).
    #[arg(long)]
    pub id: u64,
    /// HTTP API listen address.
    #[arg(long, default_value = "127.0.0.1:7150")]
    pub haddr: String,
    /// Raft (gRPC) listen address.
    #[arg(long, default_value = "127.0.0.1:7151")]
    pub raddr: String,
    /// Raft addresses of the initial members, `id=host:port,...` (this node included).
    #[arg(long)]
    pub peers: Option<PeerList>,
    /// HTTP addresses of members, `id=host:port,...`, for redirecting writes to the
    /// leader (this node's own is `--haddr`).
    #[arg(long)]
    pub hpeers: Option<PeerList>,
    /// Raft tick in milliseconds; a leader is elected after 10–20 ticks without one.
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
    /// Directory for the raft log and snapshots.
    pub data_dir: PathBuf,
}

impl Args {
    /// The node configuration these arguments describe.
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(self.id, &self.data_dir);
        config.raft_peers = match &self.peers {
            Some(peers) => peers.0.clone(),
            // Like hraftd without -join: a cluster of one.
            None => [(self.id, self.raddr.clone())].into(),
        };
        config.http_peers = self.hpeers.clone().unwrap_or_default().0;
        config.http_peers.insert(self.id, self.haddr.clone());
        config.tick_interval = Duration::from_millis(self.tick_ms.max(1));
        config
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parses_an_hraftd_style_command_line() {
        let args = Args::try_parse_from([
            "craft-kv",
            "--id",
            "2",
            "--haddr",
            "127.0.0.1:8150",
            "--raddr",
            "127.0.0.1:8151",
            "--peers",
            "1=127.0.0.1:7151,2=127.0.0.1:8151,3=127.0.0.1:9151",
            "--hpeers",
            "1=127.0.0.1:7150",
            "./node2",
        ])
        .unwrap();
        let config = args.node_config();
        assert_eq!(config.id, 2);
        assert_eq!(config.raft_peers.len(), 3);
        assert_eq!(config.http_peers[&1], "127.0.0.1:7150");
        assert_eq!(config.http_peers[&2], "127.0.0.1:8150");
        assert_eq!(config.data_dir, PathBuf::from("./node2"));
    }

    #[test]
    fn without_peers_a_node_is_a_cluster_of_one() {
        let args = Args::try_parse_from(["craft-kv", "--id", "1", "./node1"]).unwrap();
        let config = args.node_config();
        assert_eq!(config.raft_peers[&1], "127.0.0.1:7151");
    }

    #[test]
    fn rejects_a_bad_peer_list() {
        assert!(Args::try_parse_from(["craft-kv", "--id", "1", "--peers", "1", "d"]).is_err());
    }
}
