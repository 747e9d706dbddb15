//! The command line of the `craft-kv` binary, modelled on hraftd's.
//!
//! hraftd is a Go program, and Go's flag package takes long flags with one dash or two
//! (`-id node1` and `--id node1` are the same). [`hraftd_args`] rewrites the one-dash
//! form of our long flags to the two-dash form clap reads, so hraftd's command lines work
//! as they are; `-h` and `-V` keep their one-letter meaning.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};

use crate::ids::{raft_id, IdError};

use crate::node::NodeConfig;
use crate::peers::PeerList;
use crate::tls::TlsFiles;

/// A node of a replicated key-value store with an hraftd-style HTTP API.
///
/// Two ways to form a cluster:
/// - hraftd's: start every node without `--peers`; each serves HTTP and waits until a
///   `POST /setup` names the members (sent to one node, which tells the others);
/// - all initial members get the same `--peers` list and bootstrap from it at once.
///
/// A node whose id is not in `--peers` starts empty and waits to be added by
/// `POST /join` on the leader. A node restarted on a data directory that holds a
/// cluster rejoins it, whichever way it was formed.
#[derive(Debug, Clone, Parser)]
#[command(name = "craft-kv", version)]
pub struct Args {
    /// This node's name (`node1`) or number (`1`). With `--peers` it is the raft id
    /// (names map to ids as the `ids` module documents); in hraftd's `/setup` flow the
    /// node's raft id comes from the setup body and this is its name in the logs.
    #[arg(long)]
    pub id: NodeName,
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
    /// Async worker threads. One by default: a write is a chain of small steps (HTTP,
    /// raft, fsync, peers), and a second worker mostly adds cross-thread wake-ups; the
    /// fsync leaves the worker, so other requests go on meanwhile.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
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
    /// Applied entries between two snapshots of the whole map (each compacts the log).
    #[arg(long, default_value_t = crate::node::DEFAULT_SNAPSHOT_INTERVAL)]
    pub snapshot_interval: u64,
    /// Directory for the raft log and snapshots.
    pub data_dir: PathBuf,
}

/// A node's name and the raft id it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    /// The name as given.
    pub name: String,
    /// Its raft id ([`raft_id`]).
    pub id: u64,
}

impl FromStr for NodeName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            name: s.trim().to_string(),
            id: raft_id(s)?,
        })
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The process's arguments with hraftd's one-dash long flags (`-id`, `-haddr=...`)
/// rewritten to two dashes. Arguments after `--` are left alone.
pub fn hraftd_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Args::command();
    let long: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    let mut out = Vec::new();
    let mut rewriting = true;
    for (i, arg) in args.into_iter().enumerate() {
        let text = arg.to_str().unwrap_or_default();
        if text == "--" {
            rewriting = false;
        }
        let one_dash = i > 0 && rewriting && text.starts_with('-') && !text.starts_with("--");
        let name = text.get(1..).unwrap_or_default();
        let name = name.split_once('=').map_or(name, |(name, _)| name);
        if one_dash && name.len() > 1 && (long.contains(&name) || name == "help") {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg);
        }
    }
    out
}

impl Args {
    /// Parses the process's command line, hraftd's one-dash flags included.
    pub fn from_env() -> Self {
        Self::parse_from(hraftd_args(std::env::args_os()))
    }

    /// The node configuration these arguments describe. Without `--peers` the list of
    /// members is empty: the node waits for `POST /setup` (unless its data directory
    /// already holds a cluster).
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(self.id.id, &self.data_dir);
        config.name = self.id.name.clone();
        config.raft_addr = self.raddr.clone();
        config.raft_peers = self.peers.clone().unwrap_or_default().0;
        config.http_peers = self.hpeers.clone().unwrap_or_default().0;
        if !config.raft_peers.is_empty() {
            config.http_peers.insert(self.id.id, self.haddr.clone());
        }
        config.tick_interval = Duration::from_millis(self.tick_ms.max(1));
        config.max_connections = self.max_connections;
        config.snapshot_interval = self.snapshot_interval;
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
    fn without_peers_a_node_waits_for_setup() {
        let args = Args::try_parse_from(["craft-kv", "--id", "1", "./node1"]).unwrap();
        let config = args.node_config();
        assert!(config.raft_peers.is_empty());
        assert_eq!(config.raft_addr, "127.0.0.1:7151");
    }

    #[test]
    fn one_worker_thread_unless_told_and_never_none() {
        let args = Args::try_parse_from(["craft-kv", "--id", "1", "./node1"]).unwrap();
        assert_eq!(args.worker_threads, 1);
        let args = Args::try_parse_from(hraftd_args(os(&[
            "craft-kv",
            "-id",
            "1",
            "-worker-threads",
            "2",
            "./node1",
        ])))
        .unwrap();
        assert_eq!(args.worker_threads, 2);
        assert!(
            Args::try_parse_from(["craft-kv", "--id", "1", "--worker-threads", "0", "d"]).is_err()
        );
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn takes_hraftd_command_lines_as_the_seed_writes_them() {
        let argv = hraftd_args(os(&[
            "hraftd",
            "-id",
            "node1",
            "-haddr",
            "127.0.0.1:7150",
            "-raddr=127.0.0.1:7151",
            "./node1",
        ]));
        let args = Args::try_parse_from(argv).unwrap();
        assert_eq!(args.id.name, "node1");
        assert_eq!(args.id.id, raft_id("node1").unwrap());
        assert_eq!(args.haddr, "127.0.0.1:7150");
        assert_eq!(args.raddr, "127.0.0.1:7151");
        assert_eq!(args.data_dir, PathBuf::from("./node1"));
        // Two dashes, one-letter flags, values that start with a dash, and whatever
        // follows `--` are left as they are.
        assert_eq!(
            hraftd_args(os(&[
                "kv", "--id", "-x", "-h", "-tick-ms", "5", "--", "-id"
            ])),
            os(&["kv", "--id", "-x", "-h", "--tick-ms", "5", "--", "-id"])
        );
        // An unknown one-dash flag is still an error, not a silent value.
        assert!(Args::try_parse_from(hraftd_args(os(&["kv", "-idd", "1", "d"]))).is_err());
    }

    #[test]
    fn a_numeric_name_is_the_raft_id_and_zero_is_refused() {
        let args = Args::try_parse_from(["craft-kv", "--id", "7", "d"]).unwrap();
        assert_eq!(args.id.id, 7);
        assert!(Args::try_parse_from(["craft-kv", "--id", "0", "d"]).is_err());
        assert!(Args::try_parse_from(["craft-kv", "--id", "", "d"]).is_err());
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
