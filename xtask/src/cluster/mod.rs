//! `cargo xtask cluster`: real multi-process clusters on loopback.
//!
//! A cluster lives in one directory (default `target/cluster/`):
//! `cluster.json` (ports, process ids), `partition` (cut links, read by the development
//! network), `network.log`, and per node `node-N/` with `config.toml`, `node_address`,
//! `raft-data/`, `chain/chain.log` (the development controller's chain), and the logs
//! `consensus.log` and `controller.log`.
//!
//! Processes are recorded in `cluster.json` as soon as they start, so `cluster down`
//! (and the next `cluster up`) stop them even if the xtask that started them was killed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod zenoh_net;

use crate::harness::{
    build, free_ports, kill_and_wait, pid_alive, scrape, signal, spawn_logged, stop_pids,
};
use serde::{Deserialize, Serialize};

/// `cargo xtask cluster ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster directory.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Build, start a cluster and show its progress (Ctrl-C stops it).
    Up(UpArgs),
    /// Heights, roles and lag of the running cluster.
    Status,
    /// Stop every process of the cluster; keep its data.
    Down,
    /// Stop the cluster and delete its directory.
    Clean,
    /// SIGKILL one node's consensus process.
    Kill {
        /// Node number (1-based).
        node: usize,
    },
    /// Start (again) one node's consensus process.
    Restart {
        /// Node number (1-based).
        node: usize,
    },
    /// Cut one node off from all others.
    Partition {
        /// Node number (1-based).
        node: usize,
    },
    /// Inject link faults on messages to or from some nodes, as netem would; replaces
    /// earlier faults. E.g. `--nodes 1,2 --delay 500ms --jitter 100ms --loss 75%`.
    Chaos(ChaosArgs),
    /// Restore every link: no partition, no link faults.
    Heal,
}

/// Options of `cluster chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Nodes whose messages (to or from them) are affected.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<u64>,
    /// Delay added to each message (e.g. 500ms).
    #[arg(long, value_parser = craft_devnet::link_faults::parse_duration)]
    pub delay: Option<Duration>,
    /// Uniform jitter around the delay (e.g. 100ms).
    #[arg(long, value_parser = craft_devnet::link_faults::parse_duration)]
    pub jitter: Option<Duration>,
    /// Share of messages dropped (e.g. 75%).
    #[arg(long, value_parser = craft_devnet::link_faults::parse_probability)]
    pub loss: Option<f64>,
    /// Share of messages delivered twice.
    #[arg(long, value_parser = craft_devnet::link_faults::parse_probability)]
    pub duplicate: Option<f64>,
    /// Share of messages with bytes of their payload flipped.
    #[arg(long, value_parser = craft_devnet::link_faults::parse_probability)]
    pub corrupt: Option<f64>,
    /// Bandwidth of each affected link (e.g. 1mbps).
    #[arg(long, value_parser = craft_devnet::link_faults::parse_rate)]
    pub rate: Option<u64>,
    /// Cut the nodes off from the others.
    #[arg(long)]
    pub partition: bool,
}

impl ChaosArgs {
    /// The rule these options describe.
    pub fn rule(&self) -> craft_devnet::link_faults::LinkFaults {
        let mut r = craft_devnet::link_faults::LinkFaults::none(self.nodes.iter().copied());
        r.delay = self.delay.unwrap_or_default();
        r.jitter = self.jitter.unwrap_or_default();
        r.loss = self.loss.unwrap_or(0.0);
        r.duplicate = self.duplicate.unwrap_or(0.0);
        r.corrupt = self.corrupt.unwrap_or(0.0);
        r.rate_bps = self.rate;
        r.partition = self.partition;
        r
    }
}

/// Options of `cluster up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Seconds between blocks.
    #[arg(long, default_value_t = 1)]
    pub block_interval: u32,
    /// Build and run release binaries.
    #[arg(long)]
    pub release: bool,
    /// Start the cluster and return, leaving it running.
    #[arg(long)]
    pub detach: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// Tunables of a cluster beyond `UpArgs`.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of nodes.
    pub nodes: usize,
    /// Seconds between blocks.
    pub block_interval: u32,
    /// Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Heartbeat ticks.
    pub heartbeat_tick: usize,
    /// Election ticks.
    pub election_tick: usize,
    /// Raft entries kept behind the snapshot.
    pub log_retain: u64,
    /// Validator changes `(height, node numbers)`.
    pub schedule: Vec<(u64, Vec<usize>)>,
    /// Artificial controller delay in milliseconds.
    pub controller_delay_ms: u64,
    /// Histogram buckets (seconds) for the consensus metrics.
    pub buckets: Option<Vec<f64>>,
    /// Development controllers skip their fsync (an "instant" controller for benches).
    pub controller_no_fsync: bool,
    /// Consensus binaries, node `i` running `consensus_bins[(i - 1) % len]`; empty runs
    /// ours from the build directory.
    pub consensus_bins: Vec<PathBuf>,
    /// Proposal data size the development controllers pad blocks to (0: no padding).
    pub block_bytes: usize,
    /// Controllers and the network write their counters to `stats.json` files.
    pub stats: bool,
    /// More arguments for every development controller.
    pub controller_args: Vec<String>,
    /// CITA-Cloud's `network_zenoh` binary: each node gets its own network service over
    /// QUIC with TLS (see [`zenoh_net`]) instead of the shared development network
    /// (so no link faults or partitions).
    pub zenoh: Option<PathBuf>,
    /// Nodes whose `raft-data` is a craft-faultfs mount (`disk-faults.json` in the node's
    /// directory switches its faults; see [`Cluster::set_disk_faults`]).
    pub faultfs: Vec<usize>,
    /// Nodes whose consensus `create` does not start (a scenario starts it later with
    /// [`Cluster::start_consensus`]).
    pub held_back: Vec<usize>,
}

impl Spec {
    /// A cluster of `nodes` with interactive timing (1.5 s election timeout).
    pub fn new(nodes: usize, block_interval: u32) -> Self {
        Self {
            nodes,
            block_interval,
            tick_ms: 100,
            heartbeat_tick: 3,
            election_tick: 15,
            log_retain: 200,
            schedule: Vec::new(),
            controller_delay_ms: 0,
            buckets: None,
            controller_no_fsync: false,
            consensus_bins: Vec::new(),
            block_bytes: 0,
            stats: false,
            controller_args: Vec::new(),
            zenoh: None,
            faultfs: Vec::new(),
            held_back: Vec::new(),
        }
    }
}

/// A node's `config.toml`: the service's table, as the service reads it.
#[derive(Debug, Serialize)]
struct NodeConfig {
    consensus_raft: ConsensusTable,
}

/// The `[consensus_raft]` keys a local cluster sets (README lists them all).
#[derive(Debug, Serialize)]
struct ConsensusTable {
    controller_port: u16,
    grpc_listen_port: u16,
    network_port: u16,
    node_addr: String,
    log_to_stdout: bool,
    log_level: String,
    tick_interval_in_millis: u64,
    heartbeat_tick: usize,
    election_tick: usize,
    raft_data_path: String,
    enable_metrics: bool,
    metrics_port: u16,
    listen_host: String,
    log_retain: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_buckets: Option<Vec<f64>>,
}

/// One node's ports and processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// 1-based node number.
    pub index: usize,
    /// Node address, hex.
    pub address: String,
    /// Its network service port.
    pub network_port: u16,
    /// Its consensus gRPC port.
    pub grpc_port: u16,
    /// Its controller port.
    pub controller_port: u16,
    /// Its metrics port.
    pub metrics_port: u16,
    /// Running consensus process.
    pub consensus_pid: Option<u32>,
    /// Running controller process.
    pub controller_pid: Option<u32>,
    /// The consensus binary this node runs (ours from `bin_dir` when absent).
    #[serde(default)]
    pub consensus_bin: Option<PathBuf>,
    /// The development controller's arguments, to start it again.
    #[serde(default)]
    pub controller_args: Vec<String>,
    /// The consensus process's arguments when not `run -c config.toml --stdout`.
    #[serde(default)]
    pub consensus_args: Option<Vec<String>>,
    /// Its own network service process (`network_zenoh`), when it has one.
    #[serde(default)]
    pub network_pid: Option<u32>,
    /// Port its own network service's peers connect to (`network_zenoh`'s `port`).
    #[serde(default)]
    pub zenoh_port: u16,
    /// The faultfs process under its `raft-data`, when it has one.
    #[serde(default)]
    pub faultfs_pid: Option<u32>,
}

/// What `cluster.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Directory of the binaries.
    pub bin_dir: PathBuf,
    /// The development network's process.
    pub network_pid: Option<u32>,
    /// The nodes.
    pub nodes: Vec<NodeInfo>,
}

/// A cluster directory and what runs in it.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// Its recorded state.
    pub state: State,
}

/// One node as seen from outside.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Whether its consensus process runs.
    pub alive: bool,
    /// Height from metrics.
    pub height: Option<u64>,
    /// Term from metrics.
    pub term: Option<u64>,
    /// Role (0 follower .. 3 leader).
    pub role: Option<u64>,
    /// Last block latency in microseconds.
    pub last_latency_us: Option<u64>,
    /// Height of its controller's chain file.
    pub chain_height: u64,
}

impl NodeView {
    /// Role as text.
    pub fn role_name(&self) -> &'static str {
        if !self.alive {
            return "down";
        }
        match self.role {
            Some(3) => "leader",
            Some(2) => "candidate",
            Some(1) => "pre-candidate",
            Some(0) => "follower",
            _ => "starting",
        }
    }
}

/// Node `i`'s address: 20 bytes, the node number at the end of the first 8 and of the
/// last 12.
pub fn node_address(i: usize) -> String {
    // The first 8 bytes differ too: `network_zenoh` takes a node's origin from them.
    format!("{i:016x}{i:024x}")
}

/// Whether `path` is a mount point (listed in this process's mountinfo).
fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    // Field 5 is the mount point (spaces escaped as \040).
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

/// A node's chain: height → the block as its `chain.log` line holds it (hex; a padded
/// block without its padding, see [`craft_devnet::controller::parse_block_line`]), the
/// same text for the same block on every node. Heights synced from peers are absent.
pub fn read_chain(path: &Path) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(path) {
        for line in text.lines() {
            if let Some((h, d)) = line.split_once(' ') {
                if let Ok(h) = h.parse::<u64>() {
                    if d != "sync" && !d.is_empty() {
                        out.insert(h, d.to_string());
                    }
                }
            }
        }
    }
    out
}

impl Cluster {
    /// The default cluster directory.
    pub fn default_dir(root: &Path) -> PathBuf {
        root.join("target").join("cluster")
    }

    /// Opens the cluster recorded in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("cluster.json");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster at {} (run `cargo xtask cluster up`)",
                dir.display()
            )
        })?;
        let state =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("cluster.json");
        let tmp = self.dir.join("cluster.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Directory of node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    /// Writes configs and starts every process of a new cluster in `dir`, stopping and
    /// wiping whatever cluster was there.
    pub fn create(dir: &Path, bin_dir: &Path, spec: &Spec, detach: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(spec.nodes >= 1, "a cluster needs at least one node");
        if let Ok(old) = Cluster::open(dir) {
            old.down();
        }
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        const PORTS: usize = 5;
        let ports = free_ports(spec.nodes * PORTS)?;
        let nodes: Vec<NodeInfo> = (1..=spec.nodes)
            .map(|i| {
                let p = &ports[(i - 1) * PORTS..i * PORTS];
                NodeInfo {
                    index: i,
                    address: node_address(i),
                    network_port: p[0],
                    grpc_port: p[1],
                    controller_port: p[2],
                    metrics_port: p[3],
                    consensus_pid: None,
                    controller_pid: None,
                    consensus_bin: (!spec.consensus_bins.is_empty())
                        .then(|| spec.consensus_bins[(i - 1) % spec.consensus_bins.len()].clone()),
                    controller_args: Vec::new(),
                    consensus_args: None,
                    network_pid: None,
                    zenoh_port: p[4],
                    faultfs_pid: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            state: State {
                bin_dir: bin_dir.to_path_buf(),
                network_pid: None,
                nodes,
            },
        };
        cluster.save()?;
        fs::write(dir.join("partition"), "")?;
        fs::write(dir.join("faults"), "")?;
        let net_ports: Vec<String> = cluster
            .state
            .nodes
            .iter()
            .map(|n| n.network_port.to_string())
            .collect();
        if let Some(zenoh) = &spec.zenoh {
            zenoh_net::write_configs(&cluster)?;
            for i in 1..=spec.nodes {
                let nd = zenoh_net::network_dir(&cluster, i);
                let mut cmd = Command::new(zenoh);
                cmd.current_dir(&nd).args(["run", "-c", "config.toml"]);
                let pid = spawn_logged(&mut cmd, &nd.join("network.log"), detach)
                    .with_context(|| format!("starting {}", zenoh.display()))?;
                cluster.state.nodes[i - 1].network_pid = Some(pid);
                cluster.save()?;
            }
        } else {
            let mut net = Command::new(bin_dir.join("dev-network"));
            net.arg("--ports")
                .arg(net_ports.join(","))
                .arg("--partition-file")
                .arg(dir.join("partition"))
                .arg("--faults-file")
                .arg(dir.join("faults"));
            if spec.stats {
                net.arg("--stats-file").arg(dir.join("network-stats.json"));
            }
            let pid = spawn_logged(&mut net, &dir.join("network.log"), detach)?;
            cluster.state.network_pid = Some(pid);
            cluster.save()?;
        }
        let validators: Vec<String> = cluster
            .state
            .nodes
            .iter()
            .map(|n| n.address.clone())
            .collect();
        for i in 1..=spec.nodes {
            let node = cluster.state.nodes[i - 1].clone();
            let nd = cluster.node_dir(i);
            fs::create_dir_all(&nd)?;
            // No trailing newline: the existing service refuses one.
            fs::write(nd.join("node_address"), format!("0x{}", node.address))?;
            let config = NodeConfig {
                consensus_raft: ConsensusTable {
                    controller_port: node.controller_port,
                    grpc_listen_port: node.grpc_port,
                    network_port: node.network_port,
                    node_addr: nd.join("node_address").display().to_string(),
                    log_to_stdout: true,
                    log_level: "info".into(),
                    tick_interval_in_millis: spec.tick_ms,
                    heartbeat_tick: spec.heartbeat_tick,
                    election_tick: spec.election_tick,
                    raft_data_path: nd.join("raft-data").display().to_string(),
                    enable_metrics: true,
                    metrics_port: node.metrics_port,
                    listen_host: "127.0.0.1".into(),
                    log_retain: spec.log_retain,
                    metrics_buckets: spec.buckets.clone(),
                },
            };
            let config = format!(
                "# Written by `cargo xtask cluster`.\n{}",
                toml::to_string(&config).context("writing a node's config.toml")?
            );
            fs::write(nd.join("config.toml"), config)?;
            let peers: Vec<String> = cluster
                .state
                .nodes
                .iter()
                .filter(|n| n.index != i)
                .map(|n| format!("http://127.0.0.1:{}", n.controller_port))
                .collect();
            let mut cmd = Command::new("dev-controller");
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", node.controller_port))
                .arg("--consensus")
                .arg(format!("http://127.0.0.1:{}", node.grpc_port))
                .arg("--node-name")
                .arg(i.to_string())
                .arg("--validators")
                .arg(validators.join(","))
                .arg("--block-interval")
                .arg(spec.block_interval.to_string())
                .arg("--data-dir")
                .arg(nd.join("chain"))
                .arg("--delay-ms")
                .arg(spec.controller_delay_ms.to_string());
            if !peers.is_empty() {
                cmd.arg("--peers").arg(peers.join(","));
            }
            if spec.controller_no_fsync {
                cmd.arg("--no-fsync");
            }
            if spec.block_bytes > 0 {
                cmd.arg("--block-bytes").arg(spec.block_bytes.to_string());
            }
            if spec.stats {
                cmd.arg("--stats-file")
                    .arg(nd.join("controller-stats.json"));
            }
            cmd.args(&spec.controller_args);
            for (h, members) in &spec.schedule {
                let list: Vec<String> = members.iter().map(|m| node_address(*m)).collect();
                cmd.arg("--validators-at")
                    .arg(format!("{h}:{}", list.join(",")));
            }
            cluster.state.nodes[i - 1].controller_args = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            cluster.start_controller(i, detach)?;
            if spec.faultfs.contains(&i) {
                cluster.mount_faultfs(i, detach)?;
            }
            if !spec.held_back.contains(&i) {
                cluster.start_consensus(i, detach)?;
            }
        }
        Ok(cluster)
    }

    /// Mounts craft-faultfs over node `i`'s `raft-data` (backed by `raft-data.real`,
    /// following `disk-faults.json`), returning once the mount is in place.
    fn mount_faultfs(&mut self, i: usize, detach: bool) -> anyhow::Result<()> {
        let nd = self.node_dir(i);
        let mount = nd.join("raft-data");
        fs::create_dir_all(&mount)?;
        let mut cmd = Command::new(self.state.bin_dir.join("faultfs"));
        cmd.arg("--backing")
            .arg(nd.join("raft-data.real"))
            .arg("--mount")
            .arg(&mount)
            .arg("--faults")
            .arg(nd.join("disk-faults.json"))
            .arg("--stats")
            .arg(nd.join("disk-stats.json"));
        let pid = spawn_logged(&mut cmd, &nd.join("faultfs.log"), detach)?;
        self.node_mut(i)?.faultfs_pid = Some(pid);
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&mount) {
            if !pid_alive(pid) || Instant::now() > deadline {
                let log = fs::read_to_string(nd.join("faultfs.log")).unwrap_or_default();
                bail!(
                    "faultfs did not mount {}:\n{}",
                    mount.display(),
                    log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sets the disk faults under node `i`'s `raft-data` (a craft-faultfs rule set as
    /// JSON, e.g. `{"rules":[{"ops":["fsync"],"error":"EIO"}]}`), or lifts them (`None`).
    /// In force within 100 ms.
    pub fn set_disk_faults(&self, i: usize, rules: Option<&str>) -> anyhow::Result<()> {
        let path = self.node_dir(i).join("disk-faults.json");
        match rules {
            Some(json) => {
                let tmp = path.with_extension("tmp");
                fs::write(&tmp, json)?;
                fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            }
            None => {
                if path.exists() {
                    fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Whether node `i`'s consensus process is running.
    pub fn consensus_alive(&self, i: usize) -> bool {
        self.state
            .nodes
            .get(i.wrapping_sub(1))
            .and_then(|n| n.consensus_pid)
            .is_some_and(pid_alive)
    }

    /// Starts node `i`'s development controller (again), with the arguments it was
    /// created with.
    pub fn start_controller(&mut self, i: usize, detach: bool) -> anyhow::Result<()> {
        anyhow::ensure!(i >= 1 && i <= self.state.nodes.len(), "no node {i}");
        if let Some(pid) = self.state.nodes[i - 1].controller_pid {
            anyhow::ensure!(
                !pid_alive(pid),
                "node {i}'s controller is running (pid {pid})"
            );
        }
        let mut cmd = Command::new(self.state.bin_dir.join("dev-controller"));
        cmd.args(&self.state.nodes[i - 1].controller_args);
        let pid = spawn_logged(&mut cmd, &self.node_dir(i).join("controller.log"), detach)?;
        self.state.nodes[i - 1].controller_pid = Some(pid);
        self.save()
    }

    /// SIGKILLs node `i`'s development controller.
    pub fn kill_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self
            .state
            .nodes
            .get(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))?
            .controller_pid;
        self.state.nodes[i - 1].controller_pid = None;
        if let Some(pid) = pid {
            kill_and_wait(pid, &format!("node {i}'s controller"))?;
        }
        self.save()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `i`'s development controller: frozen,
    /// it accepts connections and answers nothing, as a hung controller does.
    pub fn pause_controller(&self, i: usize, frozen: bool) -> anyhow::Result<()> {
        let pid = self
            .state
            .nodes
            .get(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))?
            .controller_pid
            .with_context(|| format!("node {i}'s controller is not running"))?;
        signal(pid, if frozen { "-STOP" } else { "-CONT" });
        Ok(())
    }

    /// Starts node `i`'s consensus process (again).
    pub fn start_consensus(&mut self, i: usize, detach: bool) -> anyhow::Result<()> {
        let nd = self.node_dir(i);
        anyhow::ensure!(i >= 1 && i <= self.state.nodes.len(), "no node {i}");
        if let Some(pid) = self.state.nodes[i - 1].consensus_pid {
            anyhow::ensure!(!pid_alive(pid), "node {i} is running (pid {pid})");
        }
        let bin = self.state.nodes[i - 1]
            .consensus_bin
            .clone()
            .unwrap_or_else(|| self.state.bin_dir.join("consensus"));
        let mut cmd = Command::new(bin);
        match &self.state.nodes[i - 1].consensus_args {
            Some(args) => cmd.args(args),
            None => cmd
                .arg("run")
                .arg("-c")
                .arg(nd.join("config.toml"))
                .arg("--stdout"),
        };
        let pid = spawn_logged(&mut cmd, &nd.join("consensus.log"), detach)?;
        self.state.nodes[i - 1].consensus_pid = Some(pid);
        self.save()
    }

    /// SIGKILLs node `i`'s consensus process and waits until it has exited: a second
    /// process could not open the raft data it still holds.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(pid) = self.node_mut(i)?.consensus_pid.take() {
            kill_and_wait(pid, &format!("node {i}'s consensus"))?;
        }
        self.save()
    }

    /// Stops node `i`'s consensus process as an operator would: SIGTERM, then SIGKILL if it
    /// has not exited after `grace`. Returns once it has exited.
    pub fn stop(&mut self, i: usize, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.node_mut(i)?.consensus_pid.take() {
            stop_pids(&[pid], grace);
        }
        self.save()
    }

    /// Makes node `i` start with `args` instead of `run -c config.toml --stdout` (`None`
    /// restores those).
    pub fn set_consensus_args(
        &mut self,
        i: usize,
        args: Option<Vec<String>>,
    ) -> anyhow::Result<()> {
        let node = self
            .state
            .nodes
            .get_mut(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))?;
        node.consensus_args = args;
        self.save()
    }

    /// Makes node `i` run `bin` from its next start (ours from the build directory when
    /// `None`).
    pub fn set_consensus_bin(&mut self, i: usize, bin: Option<PathBuf>) -> anyhow::Result<()> {
        self.node_mut(i)?.consensus_bin = bin;
        self.save()
    }

    /// Deletes node `i`'s raft directory (the node must be stopped): it starts again as a
    /// node that never ran, beside its controller's chain.
    pub fn wipe_raft_data(&self, i: usize) -> anyhow::Result<()> {
        let dir = self.node_dir(i).join("raft-data");
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    /// Feeds node `target` the hostile set of `dev-hostile`: through the development
    /// network as node `target + 1` (the real peer), and straight to its network
    /// handler from an unknown origin. Returns the tool's report (one line per kind).
    pub fn feed_hostile(&self, target: usize, sender: usize) -> anyhow::Result<String> {
        let nodes = &self.state.nodes;
        let t = nodes
            .get(target.wrapping_sub(1))
            .with_context(|| format!("no node {target}"))?;
        let sender = nodes
            .get(sender.wrapping_sub(1))
            .with_context(|| format!("no node {sender}"))?;
        let tool = self.state.bin_dir.join("dev-hostile");
        // The target's raft state, for forgeries that only disagree with it.
        let state = scrape(t.metrics_port).and_then(|m| {
            let get = |k: &str| m.get(k).map(|v| *v as u64);
            Some(format!(
                "{},{},{}",
                get("consensus_term")?,
                get("consensus_raft_last_index")?,
                get("consensus_raft_commit_index")?
            ))
        });
        let mut command = Command::new(&tool);
        if let Some(state) = &state {
            command.arg("--state").arg(state);
        }
        let out = command
            .arg("--network")
            .arg(format!("http://127.0.0.1:{}", sender.network_port))
            .arg("--origin")
            .arg(t.index.to_string())
            .arg("--to-address")
            .arg(&t.address)
            .arg("--from-address")
            .arg(&sender.address)
            .arg("--direct")
            .arg(format!("http://127.0.0.1:{}", t.grpc_port))
            .arg("--seed")
            .arg(t.index.to_string())
            .output()
            .with_context(|| format!("running {}", tool.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "dev-hostile against node {target} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn node_mut(&mut self, i: usize) -> anyhow::Result<&mut NodeInfo> {
        self.state
            .nodes
            .get_mut(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))
    }

    /// Cuts node `i` off (`Some`) or heals every link (`None`).
    pub fn partition(&self, isolate: Option<usize>) -> anyhow::Result<()> {
        let text = isolate.map(|i| format!("{i} *\n")).unwrap_or_default();
        fs::write(self.dir.join("partition"), text).context("writing the partition file")
    }

    /// Sets the link faults (the development network re-reads them within 100 ms);
    /// none restores every link.
    pub fn set_faults(
        &self,
        rules: &[craft_devnet::link_faults::LinkFaults],
    ) -> anyhow::Result<()> {
        let text: String = rules.iter().map(|r| format!("{r}\n")).collect();
        fs::write(self.dir.join("faults"), text).context("writing the faults file")
    }

    /// Every process id the cluster recorded.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .state
            .nodes
            .iter()
            .flat_map(|n| [n.consensus_pid, n.controller_pid, n.network_pid])
            .flatten()
            .collect();
        pids.extend(self.state.network_pid);
        pids
    }

    /// Processes of the cluster that have not exited.
    pub fn running_pids(&self) -> Vec<u32> {
        self.pids().into_iter().filter(|p| pid_alive(*p)).collect()
    }

    /// Stops every process of the cluster, consensus first, and returns once they have
    /// all exited: how many were running.
    pub fn down(&self) -> usize {
        let of = |pid: fn(&NodeInfo) -> Option<u32>| -> Vec<u32> {
            self.state.nodes.iter().filter_map(pid).collect()
        };
        // Filesystems last: they unmount once nothing has files open on them.
        stop_pids(&of(|n| n.consensus_pid), Duration::from_secs(5))
            + stop_pids(&self.pids(), Duration::from_secs(3))
            + stop_pids(&of(|n| n.faultfs_pid), Duration::from_secs(5))
    }

    /// The outside view of every node.
    pub fn views(&self) -> Vec<NodeView> {
        self.state
            .nodes
            .iter()
            .map(|n| {
                let alive = n.consensus_pid.is_some_and(pid_alive);
                let m = if alive { scrape(n.metrics_port) } else { None };
                let get = |k: &str| m.as_ref().and_then(|m| m.get(k)).map(|v| *v as u64);
                NodeView {
                    alive,
                    height: get("consensus_height"),
                    term: get("consensus_term"),
                    role: get("consensus_role"),
                    last_latency_us: get("consensus_last_commit_latency_us"),
                    chain_height: read_chain(
                        &self.node_dir(n.index).join("chain").join("chain.log"),
                    )
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(0),
                }
            })
            .collect()
    }

    /// Every node's chain.
    pub fn chains(&self) -> Vec<BTreeMap<u64, String>> {
        (1..=self.state.nodes.len())
            .map(|i| read_chain(&self.node_dir(i).join("chain").join("chain.log")))
            .collect()
    }

    /// Refreshes process ids from `cluster.json` (another xtask may have restarted a node).
    pub fn reload(&mut self) {
        if let Ok(c) = Cluster::open(&self.dir) {
            self.state = c.state;
        }
    }
}

/// Checks that no height has two different blocks on any nodes. Returns the number of
/// heights compared.
pub fn check_chains_agree(chains: &[BTreeMap<u64, String>]) -> anyhow::Result<usize> {
    let mut seen: BTreeMap<u64, (usize, &String)> = BTreeMap::new();
    for (i, chain) in chains.iter().enumerate() {
        for (h, block) in chain {
            match seen.get(h) {
                Some((j, other)) if *other != block => {
                    bail!(
                        "fork at height {h}: node {} has {block}, node {} has {other}",
                        i + 1,
                        j + 1
                    )
                }
                Some(_) => {}
                None => {
                    seen.insert(*h, (i, block));
                }
            }
        }
    }
    Ok(seen.len())
}

fn render(views: &[NodeView], started: Instant) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<6} {:<10} {:>5} {:>8} {:>8} {:>12}   ({:.0}s)",
        "node",
        "role",
        "term",
        "height",
        "chain",
        "last block",
        started.elapsed().as_secs_f64()
    )];
    for (i, v) in views.iter().enumerate() {
        let fmt = |x: Option<u64>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let lat = v
            .last_latency_us
            .filter(|l| *l > 0)
            .map(|l| format!("{:.1} ms", l as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        lines.push(format!(
            "{:<6} {:<10} {:>5} {:>8} {:>8} {:>12}",
            i + 1,
            v.role_name(),
            fmt(v.term),
            fmt(v.height),
            v.chain_height,
            lat
        ));
    }
    lines
}

/// Runs `cargo xtask cluster ...`.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| Cluster::default_dir(root));
    match &args.verb {
        Verb::Up(up) => up_cmd(root, &dir, up),
        Verb::Status => {
            let cluster = Cluster::open(&dir)?;
            let views = cluster.views();
            for line in render(&views, Instant::now()) {
                println!("{line}");
            }
            let top = views.iter().map(|v| v.chain_height).max().unwrap_or(0);
            for (i, v) in views.iter().enumerate() {
                if v.chain_height < top {
                    println!("node {} lags {} blocks", i + 1, top - v.chain_height);
                }
            }
            let compared = check_chains_agree(&cluster.chains())?;
            println!("chains agree on all {compared} heights known to any node");
            Ok(())
        }
        Verb::Down => {
            let started = Instant::now();
            let stopped = Cluster::open(&dir)?.down();
            println!(
                "cluster stopped: {stopped} processes exited in {:.2} s; data kept in {}",
                started.elapsed().as_secs_f64(),
                dir.display()
            );
            Ok(())
        }
        Verb::Clean => {
            if let Ok(c) = Cluster::open(&dir) {
                c.down();
            }
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            println!("removed {}", dir.display());
            Ok(())
        }
        Verb::Kill { node } => {
            Cluster::open(&dir)?.kill(*node)?;
            println!("node {node} killed (SIGKILL)");
            Ok(())
        }
        Verb::Restart { node } => {
            let mut c = Cluster::open(&dir)?;
            if c.state
                .nodes
                .get(node.wrapping_sub(1))
                .and_then(|n| n.consensus_pid)
                .is_some_and(pid_alive)
            {
                c.kill(*node)?;
            }
            c.start_consensus(*node, true)?;
            println!("node {node} started");
            Ok(())
        }
        Verb::Partition { node } => {
            Cluster::open(&dir)?.partition(Some(*node))?;
            println!("node {node} cut off");
            Ok(())
        }
        Verb::Chaos(chaos) => {
            let cluster = Cluster::open(&dir)?;
            let n = cluster.state.nodes.len() as u64;
            if let Some(bad) = chaos.nodes.iter().find(|i| **i == 0 || **i > n) {
                bail!("node {bad} is not in this cluster of {n}");
            }
            let rule = chaos.rule();
            cluster.set_faults(std::slice::from_ref(&rule))?;
            println!("link faults: {rule}");
            Ok(())
        }
        Verb::Heal => {
            let cluster = Cluster::open(&dir)?;
            cluster.partition(None)?;
            cluster.set_faults(&[])?;
            println!("all links restored");
            Ok(())
        }
    }
}

fn up_cmd(root: &Path, dir: &Path, up: &UpArgs) -> anyhow::Result<()> {
    eprintln!(
        "building binaries{} ...",
        if up.release { " (release)" } else { "" }
    );
    let bin_dir = build(root, up.release)?;
    let spec = Spec::new(up.nodes, up.block_interval);
    let mut cluster = Cluster::create(dir, &bin_dir, &spec, up.detach)?;
    eprintln!(
        "cluster of {} nodes starting in {}",
        up.nodes,
        dir.display()
    );
    if up.detach {
        println!("cluster running; `cargo xtask cluster status` shows it, `cargo xtask cluster down` stops it");
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut printed = 0usize;
    let mut last_plain = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::SeqCst) {
        if up
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        cluster.reload();
        let views = cluster.views();
        if tty {
            let lines = render(&views, started);
            let mut out = std::io::stdout().lock();
            if printed > 0 {
                let _ = write!(out, "\x1b[{printed}F\x1b[J");
            }
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "Ctrl-C stops the cluster; logs in {}", dir.display());
            let _ = out.flush();
            printed = lines.len() + 1;
        } else if last_plain.elapsed() >= Duration::from_secs(2) {
            last_plain = Instant::now();
            let summary: Vec<String> = views
                .iter()
                .enumerate()
                .map(|(i, v)| format!("n{}={}:{}", i + 1, v.role_name(), v.chain_height))
                .collect();
            println!(
                "t={:>4.0}s {}",
                started.elapsed().as_secs_f64(),
                summary.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("stopping the cluster ...");
    cluster.reload();
    cluster.down();
    let compared = check_chains_agree(&cluster.chains())?;
    eprintln!(
        "stopped; chains agree on {compared} heights; data kept in {}",
        dir.display()
    );
    Ok(())
}
