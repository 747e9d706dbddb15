//! The command line of the `craft-kv` binary, modelled on hraftd's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::node::NodeConfig;
use crate::peers::PeerList;
use crate::tls::TlsFiles;

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
    /// This node's TLS certificate (PEM). With --tls-key and --tls-ca: members talk
    /// raft over mutual TLS and the HTTP API is served over HTTPS.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs every member's certificate; a peer without
    /// one is refused.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Require HTTPS clients to present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    pub http_client_ca: Option<PathBuf>,
    /// Connections each server (raft, HTTP) holds open at most.
    #[arg(long, default_value_t = craft_transport::limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
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
        config.max_connections = self.max_connections;
        if let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            config.tls = Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                http_client_ca: self.http_client_ca.clone(),
            });
        }
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
    fn tls_takes_all_three_files() {
        let args = Args::try_parse_from([
            "craft-kv",
            "--id",
            "1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
            "d",
        ])
        .unwrap();
        let tls = args.node_config().tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("ca.pem"));
        assert_eq!(tls.http_client_ca, None);
        // One missing file is a usage error, not a silently plain-text node.
        assert!(
            Args::try_parse_from(["craft-kv", "--id", "1", "--tls-cert", "c.pem", "d"]).is_err()
        );
        assert!(
            Args::try_parse_from(["craft-kv", "--id", "1", "--http-client-ca", "x", "d"]).is_err()
        );
    }

    #[test]
    fn rejects_a_bad_peer_list() {
        assert!(Args::try_parse_from(["craft-kv", "--id", "1", "--peers", "1", "d"]).is_err());
    }
}
