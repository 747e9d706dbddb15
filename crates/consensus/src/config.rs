//! The service's configuration: the `[consensus_raft]` table of the node's config file
//! (the same keys and defaults as the existing raft service), then `CONSENSUS_RAFT_*`
//! environment variables (e.g. `CONSENSUS_RAFT_GRPC_LISTEN_PORT=51001`).
//!
//! Other tables in the file belong to other microservices and are ignored; an unknown
//! key inside `[consensus_raft]` is an error naming it.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything `[consensus_raft]` may say. Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusConfig {
    /// Port of the controller's `Consensus2ControllerService`.
    pub controller_port: u16,
    /// Port this service listens on (ConsensusService, NetworkMsgHandlerService, Health).
    pub grpc_listen_port: u16,
    /// Port of the network microservice.
    pub network_port: u16,
    /// Path of the file holding this node's address in hex (`0x` optional).
    pub node_addr: String,
    /// Log filter, e.g. `info` or `consensus=debug,info`.
    pub log_level: String,
    /// Log to stdout instead of a file.
    pub log_to_stdout: bool,
    /// Directory of the log file.
    pub log_dir: String,
    /// Name of the log file.
    pub log_file_name: String,
    /// Rotate the log file when it reaches this many bytes.
    pub log_rotate_size: u64,
    /// Rotated log files to keep.
    pub log_rotate_keep: usize,
    /// Gzip rotated log files.
    pub log_rotate_compress: bool,
    /// Length of one raft tick in milliseconds.
    pub tick_interval_in_millis: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Ticks without a leader before an election.
    pub election_tick: usize,
    /// Leader steps down when it loses contact with a quorum.
    pub check_quorum: bool,
    /// Directory of the raft log (RocksDB).
    pub raft_data_path: String,
    /// Serve Prometheus metrics on `metrics_port`.
    pub enable_metrics: bool,
    /// Port of the metrics endpoint (`/metrics`).
    pub metrics_port: u16,
    /// Bucket bounds of latency histograms, in seconds.
    pub metrics_buckets: Vec<f64>,
    /// Host of the controller and the network services (craft addition).
    pub service_host: String,
    /// Address this service binds (craft addition).
    pub listen_host: String,
    /// Host the network calls `ProcessNetworkMsg` on (craft addition).
    pub handler_host: String,
    /// Raft log entries kept behind the latest snapshot (craft addition).
    pub log_retain: u64,
    /// A leader whose controller has only refused for this many seconds (failed calls,
    /// no proposal for the next height, the last committed block not taken) hands
    /// leadership to the next validator; a slow controller that answers does not count
    /// (craft addition; 0 never). Unset: four block intervals, at least one election
    /// timeout, as the existing service does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_leader_after_secs: Option<u64>,
    /// Bytes of recent raft log entries kept in memory (craft addition).
    pub entry_cache_bytes: usize,
    /// RocksDB block cache in bytes (craft addition).
    pub rocksdb_block_cache_bytes: usize,
    /// RocksDB memtable size per column family in bytes (craft addition).
    pub rocksdb_write_buffer_bytes: usize,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        Self {
            controller_port: 50004,
            grpc_listen_port: 50001,
            network_port: 50000,
            node_addr: "node_address".into(),
            log_level: "info".into(),
            log_to_stdout: false,
            log_dir: "logs".into(),
            log_file_name: "consensus-service.log".into(),
            log_rotate_size: 128 * 1024 * 1024,
            log_rotate_keep: 5,
            log_rotate_compress: false,
            tick_interval_in_millis: 200,
            heartbeat_tick: 15,
            election_tick: 50,
            check_quorum: true,
            raft_data_path: "raft-data-dir".into(),
            enable_metrics: true,
            metrics_port: 60001,
            metrics_buckets: vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
            service_host: "127.0.0.1".into(),
            listen_host: "0.0.0.0".into(),
            handler_host: "127.0.0.1".into(),
            log_retain: 200,
            transfer_leader_after_secs: None,
            entry_cache_bytes: 8 << 20,
            rocksdb_block_cache_bytes: 512 << 10,
            rocksdb_write_buffer_bytes: 1 << 20,
        }
    }
}

/// The file: other microservices' tables are allowed and ignored.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    consensus_raft: ConsensusConfig,
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    /// A key is unknown, mistyped or malformed.
    #[error("config file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// figment's description, which names the key.
        source: Box<figment::Error>,
    },
    /// A value is out of range.
    #[error("config file {path}: consensus_raft.{key}: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ConsensusConfig {
    /// Loads `[consensus_raft]` from `path`, then the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_path_buf()));
        }
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(
            Env::prefixed("CONSENSUS_RAFT_")
                .map(|k| format!("consensus_raft.{}", k.as_str().to_ascii_lowercase()).into()),
        );
        let file: ConfigFile = figment.extract().map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let cfg = file.consensus_raft;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// How long a leader's controller may only refuse before the leader hands
    /// leadership over (`None`: never): `transfer_leader_after_secs`, or when unset four
    /// block intervals, at least one election timeout.
    pub fn hand_over_after(&self, block_interval_secs: u32) -> Option<std::time::Duration> {
        use std::time::Duration;
        match self.transfer_leader_after_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => {
                let election = Duration::from_millis(
                    self.tick_interval_in_millis
                        .saturating_mul(self.election_tick as u64),
                );
                Some((Duration::from_secs(4 * u64::from(block_interval_secs))).max(election))
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key, reason: &str| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        if self.tick_interval_in_millis == 0 {
            return Err(err("tick_interval_in_millis", "must be positive"));
        }
        if self.heartbeat_tick == 0 {
            return Err(err("heartbeat_tick", "must be positive"));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(err("election_tick", "must be greater than heartbeat_tick"));
        }
        if self.metrics_buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err("metrics_buckets", "must be strictly increasing"));
        }
        Ok(())
    }
}

/// Reads a node address file: hex, optionally `0x`-prefixed, surrounding whitespace
/// ignored.
pub fn read_node_address(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading node address file {}", path.display()))?;
    let text = text.trim();
    let hex_part = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(hex_part)
        .with_context(|| format!("node address file {}: not hex: {text:?}", path.display()))?;
    anyhow::ensure!(
        !bytes.is_empty(),
        "node address file {} is empty",
        path.display()
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    // `Jail` closures return figment's large error type.
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_existing_service() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[consensus_raft]\n")?;
            let cfg = ConsensusConfig::load(Path::new("config.toml")).unwrap();
            assert_eq!(cfg.controller_port, 50004);
            assert_eq!(cfg.grpc_listen_port, 50001);
            assert_eq!(cfg.network_port, 50000);
            assert_eq!(cfg.tick_interval_in_millis, 200);
            assert_eq!(cfg.heartbeat_tick, 15);
            assert_eq!(cfg.election_tick, 50);
            assert_eq!(cfg.metrics_port, 60001);
            Ok(())
        });
    }

    #[test]
    fn hand_over_delay_follows_the_block_interval_unless_set() {
        use std::time::Duration;
        let mut cfg = ConsensusConfig::default();
        // Unset: four intervals (the existing service's rule), at least one election
        // timeout (50 ticks of 200 ms).
        assert_eq!(cfg.hand_over_after(3), Some(Duration::from_secs(12)));
        assert_eq!(cfg.hand_over_after(0), Some(Duration::from_secs(10)));
        cfg.transfer_leader_after_secs = Some(0);
        assert_eq!(cfg.hand_over_after(3), None);
        cfg.transfer_leader_after_secs = Some(45);
        assert_eq!(cfg.hand_over_after(3), Some(Duration::from_secs(45)));
    }

    #[test]
    fn file_then_environment_and_other_tables_ignored() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "config.toml",
                "[network_zenoh]\nport = 1\n[consensus_raft]\ncontroller_port = 51004\nnode_addr = \"addr\"\n",
            )?;
            jail.set_env("CONSENSUS_RAFT_GRPC_LISTEN_PORT", "51001");
            let cfg = ConsensusConfig::load(Path::new("config.toml")).unwrap();
            assert_eq!(cfg.controller_port, 51004);
            assert_eq!(cfg.grpc_listen_port, 51001);
            assert_eq!(cfg.node_addr, "addr");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[consensus_raft]\ncontroler_port = 1\n")?;
            let err = ConsensusConfig::load(Path::new("config.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("controler_port") && err.contains("config.toml"),
                "{err}"
            );

            jail.create_file(
                "bad.toml",
                "[consensus_raft]\ngrpc_listen_port = \"high\"\n",
            )?;
            let err = ConsensusConfig::load(Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("grpc_listen_port") && err.contains("bad.toml"),
                "{err}"
            );

            jail.create_file(
                "range.toml",
                "[consensus_raft]\nelection_tick = 3\nheartbeat_tick = 5\n",
            )?;
            let err = ConsensusConfig::load(Path::new("range.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("consensus_raft.election_tick"), "{err}");

            let err = ConsensusConfig::load(Path::new("nope.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("nope.toml") && err.contains("not found"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn node_address_file_accepts_optional_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node_address");
        std::fs::write(&p, "0xAbCd\n").unwrap();
        assert_eq!(read_node_address(&p).unwrap(), vec![0xab, 0xcd]);
        std::fs::write(&p, "abcd").unwrap();
        assert_eq!(read_node_address(&p).unwrap(), vec![0xab, 0xcd]);
        std::fs::write(&p, "zz").unwrap();
        assert!(read_node_address(&p)
            .unwrap_err()
            .to_string()
            .contains("not hex"));
    }
}
