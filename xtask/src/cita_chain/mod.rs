//! `cargo xtask cita-chain`: a local CITA-Cloud chain of the real services on loopback.
//!
//! Each node runs the real `network_zenoh`, `storage_opendal`, `executor_evm` and
//! `controller` (controller_hsm) binaries with a consensus of the user's choice: ours,
//! `consensus_raft` or `consensus_overlord`. `docs/cita-chain-build.md` says how to build
//! the services; `--services DIR` (or `CITA_SERVICES`) names the directory holding them,
//! under the names that recipe gives them.
//!
//! `up` generates the chain with the real `cloud-config create` (the configuration an
//! operator deploys), re-issues each node's TLS certificate so that it is also valid for
//! `localhost` (network_zenoh checks the name it dials against the certificate), starts
//! the services of every node in the order network, storage, executor, consensus,
//! controller, and shows each node's height. A chain lives in one directory (default
//! `target/cita-chain/`): `chain.json` (what runs, with process ids, written as each
//! process starts), `home/` (cldi's accounts), `<chain>/` (the chain's CA and certificates)
//! and per node `<chain>-nodeN/` with `config.toml`, the keys, the services' data, and
//! `logs/<service>.out`.

pub mod bench;
pub mod faults;
pub mod migrate;
pub mod observe;
pub mod rpc;

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};

use crate::harness::{build_profile, pid_alive, spawn_logged, stop_pids, Profile};

/// `cargo xtask cita-chain ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Chain directory.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Generate a new chain, start it and show each node's height (Ctrl-C stops it).
    Up(UpArgs),
    /// Each node's height and which of its processes run.
    Status,
    /// Stop every process of the chain (controllers first) and wait for them; keep the data.
    Down,
    /// Send signed transactions with `cldi bench send` through one node's controller and
    /// report how many reached a block.
    Send(SendArgs),
    /// Faults on a fresh chain while transactions flow (leader's consensus killed, its
    /// network service killed, its network cut off): the longest block gap, and whether
    /// every accepted transaction is in exactly one block on every node.
    Faults(faults::FaultArgs),
    /// docs/migration.md run on a chain of consensus_raft under load: every node
    /// replaced by ours, leader last, then rolled back; the longest block gap, and whether
    /// every accepted transaction is in exactly one block on every node.
    Migrate(migrate::MigrateArgs),
}

/// Options of `cita-chain up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Directory holding the service binaries: network_zenoh, storage_opendal,
    /// executor_evm, controller, cloud-config, cldi, and consensus_raft /
    /// consensus_overlord when chosen (see docs/cita-chain-build.md). Default: the
    /// `CITA_SERVICES` environment variable.
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// The consensus: `ours` (built from this checkout), `consensus_raft`,
    /// `consensus_overlord` (from the services directory), or the path of a binary that
    /// speaks consensus_raft's configuration.
    #[arg(long, default_value = "ours")]
    pub consensus: String,
    /// Number of nodes (all validators).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Seconds between blocks (the chain's `block_interval`).
    #[arg(long, default_value_t = 3)]
    pub block_interval: u32,
    /// Chain name (each node's certificate names `<chain>-nodeN`).
    #[arg(long, default_value = "cita")]
    pub chain_name: String,
    /// Build ours with the dev profile instead of the optimised one (faster to build;
    /// its CPU and memory figures mean nothing).
    #[arg(long)]
    pub debug: bool,
    /// Start the chain, wait for its first block and return, leaving it running.
    #[arg(long)]
    pub detach: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// Options of `cita-chain send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Number of transactions.
    pub total: u64,
    /// Concurrent senders (cldi's `-c`; its default, one per transaction over one
    /// connection, is refused by the controller for large totals).
    #[arg(long, default_value_t = 200)]
    pub concurrency: u64,
    /// Connections to the controller.
    #[arg(long, default_value_t = 4)]
    pub connections: u64,
    /// Node (1-based) whose controller receives them.
    #[arg(long, default_value_t = 1)]
    pub node: usize,
}

/// The consensus a chain runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consensus {
    /// This project's `consensus`, in consensus_raft's place.
    Ours,
    /// The existing raft service.
    Raft,
    /// The overlord (BFT) service, cloud-config's default.
    Overlord,
    /// A binary at this path that takes consensus_raft's configuration.
    Path(PathBuf),
}

impl Consensus {
    /// Parses `--consensus`.
    pub fn parse(s: &str) -> Self {
        match s {
            "ours" => Consensus::Ours,
            "consensus_raft" | "raft" => Consensus::Raft,
            "consensus_overlord" | "overlord" => Consensus::Overlord,
            path => Consensus::Path(PathBuf::from(path)),
        }
    }

    /// cloud-config's `--consensus_image`: which table the node configuration gets.
    pub fn image(&self) -> &'static str {
        match self {
            Consensus::Overlord => "consensus_overlord",
            _ => "consensus_raft",
        }
    }

    /// The arguments of its `run` command in a node directory.
    pub fn run_args(&self) -> Vec<&'static str> {
        match self {
            Consensus::Overlord => vec!["run", "-c", "config.toml", "-p", "private_key"],
            _ => vec!["run", "-c", "config.toml", "--stdout"],
        }
    }
}

/// One of a node's services, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// network_zenoh.
    Network,
    /// storage_opendal.
    Storage,
    /// executor_evm.
    Executor,
    /// The chosen consensus.
    Consensus,
    /// controller_hsm.
    Controller,
}

impl Service {
    /// All services, in the order a node starts them (each retries its dependencies,
    /// this order only keeps the logs short).
    pub const START_ORDER: [Service; 5] = [
        Service::Network,
        Service::Storage,
        Service::Executor,
        Service::Consensus,
        Service::Controller,
    ];

    /// Its name in logs and the status view.
    pub fn name(self) -> &'static str {
        match self {
            Service::Network => "network",
            Service::Storage => "storage",
            Service::Executor => "executor",
            Service::Consensus => "consensus",
            Service::Controller => "controller",
        }
    }
}

/// The ports cloud-config gives node `i` (0-based) when its nodelist entry has port
/// `40000 + i`: a block of 100 per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// network_zenoh's peer port (QUIC, UDP).
    pub zenoh: u16,
    /// network_zenoh's gRPC port.
    pub network: u16,
    /// The consensus's gRPC port.
    pub consensus: u16,
    /// executor_evm's gRPC port (cldi's `-e`).
    pub executor: u16,
    /// storage_opendal's gRPC port.
    pub storage: u16,
    /// The controller's gRPC port (cldi's `-r`).
    pub controller: u16,
    /// The consensus's metrics port (ours serves Prometheus text there).
    pub consensus_metrics: u16,
}

impl Ports {
    /// Node `i`'s ports (0-based).
    pub fn of(i: usize) -> Self {
        let off = 100 * i as u16;
        Ports {
            zenoh: 40000 + i as u16,
            network: 50000 + off,
            consensus: 50001 + off,
            executor: 50002 + off,
            storage: 50003 + off,
            controller: 50004 + off,
            consensus_metrics: 60001 + off,
        }
    }
}

/// cloud-config's `--nodelist`: `localhost:<zenoh port>:node<i>` per node.
pub fn nodelist(nodes: usize) -> String {
    (0..nodes)
        .map(|i| format!("localhost:{}:node{i}", Ports::of(i).zenoh))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `chain.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The chain's name.
    pub chain_name: String,
    /// The services directory.
    pub services: PathBuf,
    /// The consensus and its binary.
    pub consensus: Consensus,
    /// The consensus binary that runs.
    pub consensus_bin: PathBuf,
    /// Per node, the processes started, in start order.
    pub nodes: Vec<NodeState>,
}

/// One node of [`State`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeState {
    /// Its directory (`<dir>/<chain>-node<i>`).
    pub dir: PathBuf,
    /// The processes started: service and process id.
    pub pids: Vec<(Service, u32)>,
    /// The consensus binary of this node when it is not the chain's (a node replaced
    /// by `cita-chain migrate`); it takes consensus_raft's command line.
    #[serde(default)]
    pub consensus_bin: Option<PathBuf>,
}

/// A chain directory and its state.
pub struct Chain {
    dir: PathBuf,
    /// What runs.
    pub state: State,
}

impl Chain {
    /// The default chain directory.
    pub fn default_dir(root: &Path) -> PathBuf {
        root.join("target").join("cita-chain")
    }

    /// Opens the chain recorded in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("chain.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is a chain there?)", path.display()))?;
        let state =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Chain {
            dir: dir.to_path_buf(),
            state,
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("chain.json");
        let tmp = self.dir.join("chain.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The binary of node `i`'s `svc`.
    pub fn binary(&self, i: usize, svc: Service) -> PathBuf {
        let s = &self.state.services;
        match svc {
            Service::Consensus => self.state.nodes[i]
                .consensus_bin
                .clone()
                .unwrap_or_else(|| self.state.consensus_bin.clone()),
            Service::Network => s.join("network_zenoh"),
            Service::Storage => s.join("storage_opendal"),
            Service::Executor => s.join("executor_evm"),
            Service::Controller => s.join("controller"),
        }
    }

    /// Starts `svc` of node `i` (0-based), its output appended to `logs/<svc>.out`.
    pub fn start(&mut self, i: usize, svc: Service, detach: bool) -> anyhow::Result<u32> {
        let node_dir = self.state.nodes[i].dir.clone();
        let logs = node_dir.join("logs");
        fs::create_dir_all(&logs)?;
        let mut cmd = Command::new(self.binary(i, svc));
        cmd.current_dir(&node_dir);
        match svc {
            Service::Consensus if self.state.nodes[i].consensus_bin.is_some() => {
                cmd.args(Consensus::Raft.run_args());
            }
            Service::Consensus => {
                cmd.args(self.state.consensus.run_args());
            }
            Service::Controller => {
                cmd.args(["run", "-c", "config.toml", "-p", "private_key"]);
            }
            _ => {
                cmd.args(["run", "-c", "config.toml"]);
            }
        }
        let pid = spawn_logged(&mut cmd, &logs.join(format!("{}.out", svc.name())), detach)?;
        let node = &mut self.state.nodes[i];
        node.pids.retain(|(s, _)| *s != svc);
        node.pids.push((svc, pid));
        self.save()?;
        Ok(pid)
    }

    /// Whether `pid` is a live process of this chain (it runs in one of its node
    /// directories: a recycled process id of another program is never signalled).
    fn ours(&self, pid: u32) -> bool {
        pid_alive(pid)
            && fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| self.state.nodes.iter().any(|n| cwd == n.dir))
    }

    /// Whether `svc` of node `i` runs.
    pub fn alive(&self, i: usize, svc: Service) -> bool {
        self.state.nodes[i]
            .pids
            .iter()
            .any(|(s, p)| *s == svc && self.ours(*p))
    }

    /// The process ids of node `i`'s services that run.
    pub fn node_pids(&self, i: usize) -> Vec<(Service, u32)> {
        self.state.nodes[i]
            .pids
            .iter()
            .copied()
            .filter(|(_, p)| self.ours(*p))
            .collect()
    }

    /// Stops every process, controllers first and networks last, each layer waited
    /// for; returns how many ran.
    pub fn down(&self) -> usize {
        let mut stopped = 0;
        for svc in Service::START_ORDER.iter().rev() {
            let pids: Vec<u32> = self
                .state
                .nodes
                .iter()
                .flat_map(|n| n.pids.iter())
                .filter(|(s, p)| s == svc && self.ours(*p))
                .map(|(_, p)| *p)
                .collect();
            stopped += stop_pids(&pids, Duration::from_secs(10));
        }
        stopped
    }

    /// `cldi` with this chain's home, pointed at node `i`'s controller and executor.
    pub fn cldi(&self, i: usize) -> Command {
        let mut cmd = Command::new(self.state.services.join("cldi"));
        let p = Ports::of(i);
        cmd.env("HOME", self.dir.join("home")).args([
            "-r",
            &format!("localhost:{}", p.controller),
            "-e",
            &format!("localhost:{}", p.executor),
        ]);
        cmd
    }

    /// Node `i`'s height as its controller reports it (`None` when it does not answer).
    pub fn height(&self, i: usize) -> Option<u64> {
        let out = self
            .cldi(i)
            .args(["-t", "1", "get", "block-number"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| parse_block_number(&String::from_utf8_lossy(&out.stdout)))
            .flatten()
    }

    /// One line per node: height and the processes that run.
    pub fn render(&self) -> Vec<String> {
        let heights: Vec<Option<u64>> = (0..self.state.nodes.len())
            .map(|i| self.height(i))
            .collect();
        let mut lines = vec![format!(
            "{:<6} {:>8}  processes ({} consensus)",
            "node",
            "height",
            match &self.state.consensus {
                Consensus::Ours => "ours".to_string(),
                Consensus::Raft => "consensus_raft".to_string(),
                Consensus::Overlord => "consensus_overlord".to_string(),
                Consensus::Path(p) => p.display().to_string(),
            }
        )];
        for (i, h) in heights.iter().enumerate() {
            let procs: Vec<String> = Service::START_ORDER
                .iter()
                .map(|s| {
                    if self.alive(i, *s) {
                        s.name().to_string()
                    } else {
                        format!("{}:DOWN", s.name())
                    }
                })
                .collect();
            lines.push(format!(
                "node{i:<2} {:>8}  {}",
                h.map_or_else(|| "-".to_string(), |h| h.to_string()),
                procs.join(" ")
            ));
        }
        lines
    }
}

/// Parses `cldi get block-number`'s output: the height alone on a line.
pub fn parse_block_number(out: &str) -> Option<u64> {
    out.lines().rev().find_map(|l| l.trim().parse().ok())
}

/// The `address` of the account JSON `cldi account generate` prints.
pub fn parse_account_address(out: &str) -> anyhow::Result<String> {
    let start = out.find('{').context("no JSON object in cldi's output")?;
    let end = out.rfind('}').context("no JSON object in cldi's output")?;
    let v: serde_json::Value = serde_json::from_str(&out[start..=end])
        .with_context(|| format!("parsing cldi's account: {out}"))?;
    v["address"]
        .as_str()
        .map(str::to_string)
        .context("cldi's account has no address")
}

/// Replaces the TLS certificate in a node's `config.toml` (`[network_zenoh] cert`).
pub fn set_network_cert(config: &str, cert_pem: &str) -> anyhow::Result<String> {
    let mut table: toml::Table = config.parse().context("parsing the node's config.toml")?;
    let net = table
        .get_mut("network_zenoh")
        .and_then(toml::Value::as_table_mut)
        .context("config.toml has no [network_zenoh] table")?;
    ensure!(
        net.contains_key("cert"),
        "[network_zenoh] has no cert to replace"
    );
    net.insert("cert".into(), toml::Value::String(cert_pem.to_string()));
    toml::to_string(&table).context("writing config.toml")
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Signs, with the chain's CA, a new certificate for node `i`'s existing key, valid for
/// `localhost` and `<chain>-node<i>`, and puts it in the node's `config.toml`.
fn reissue_cert(dir: &Path, chain: &str, i: usize) -> anyhow::Result<()> {
    let ca = dir.join(chain).join("ca_cert");
    let certs = dir.join(chain).join("certs").join(format!("node{i}"));
    let name = format!("{chain}-node{i}");
    let key = certs.join("key.pem");
    ensure!(key.exists(), "cloud-config wrote no {}", key.display());
    let csr = certs.join("localhost.csr");
    let ext = certs.join("localhost.ext");
    let cert = certs.join("localhost-cert.pem");
    fs::write(&ext, format!("subjectAltName=DNS:localhost,DNS:{name}\n"))?;
    run_ok(Command::new("openssl").args([
        "req".as_ref(),
        "-new".as_ref(),
        "-key".as_ref(),
        key.as_os_str(),
        "-subj".as_ref(),
        format!("/CN={name}").as_ref(),
        "-out".as_ref(),
        csr.as_os_str(),
    ]))
    .context("openssl req (is the openssl command installed?)")?;
    run_ok(Command::new("openssl").args([
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        ca.join("cert.pem").as_os_str(),
        "-CAkey".as_ref(),
        ca.join("key.pem").as_os_str(),
        "-CAcreateserial".as_ref(),
        "-days".as_ref(),
        "3650".as_ref(),
        "-extfile".as_ref(),
        ext.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]))
    .context("openssl x509")?;
    let config_path = dir.join(&name).join("config.toml");
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let pem = fs::read_to_string(&cert)?;
    fs::write(&config_path, set_network_cert(&config, &pem)?)
        .with_context(|| format!("writing {}", config_path.display()))
}

/// Generates the chain in `dir` with cloud-config and returns its state (nothing started).
fn generate(root: &Path, dir: &Path, up: &UpArgs) -> anyhow::Result<State> {
    ensure!(
        (1..=9).contains(&up.nodes),
        "--nodes must be 1 to 9 (cloud-config gives each node 100 ports from 50000)"
    );
    let consensus = Consensus::parse(&up.consensus);
    let services = up
        .services
        .clone()
        .or_else(|| std::env::var_os("CITA_SERVICES").map(PathBuf::from))
        .context("name the services' directory: --services DIR or CITA_SERVICES")?;
    let services = services
        .canonicalize()
        .with_context(|| format!("services directory {}", services.display()))?;
    let mut needed = vec![
        "network_zenoh",
        "storage_opendal",
        "executor_evm",
        "controller",
        "cloud-config",
        "cldi",
    ];
    match consensus {
        Consensus::Raft => needed.push("consensus_raft"),
        Consensus::Overlord => needed.push("consensus_overlord"),
        _ => {}
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|b| !services.join(b).is_file())
        .collect();
    ensure!(
        missing.is_empty(),
        "{} lacks {}: build them as docs/cita-chain-build.md says",
        services.display(),
        missing.join(", ")
    );
    let consensus_bin = match &consensus {
        Consensus::Ours => {
            // The optimised build the benchmarks use: one RocksDB build serves both.
            let profile = Profile::for_figures(up.debug);
            eprintln!("building ours ({profile:?}) ...");
            build_profile(root, profile)?.join("consensus")
        }
        Consensus::Raft => services.join("consensus_raft"),
        Consensus::Overlord => services.join("consensus_overlord"),
        Consensus::Path(p) => p
            .canonicalize()
            .with_context(|| format!("consensus binary {}", p.display()))?,
    };
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("home"))?;
    let dir = dir.canonicalize()?;
    let home = dir.join("home");
    let cldi = |args: &[&str]| {
        run_ok(
            Command::new(services.join("cldi"))
                .env("HOME", &home)
                .args(args),
        )
    };
    let admin = parse_account_address(&cldi(&[
        "--crypto", "SM", "account", "generate", "--name", "admin",
    ])?)?;
    // cldi made its `default` account (the one `send` signs with) on this first use.
    let chain = &up.chain_name;
    run_ok(
        Command::new(services.join("cloud-config"))
            .current_dir(&dir)
            .args([
                "create",
                "--chain-name",
                chain,
                "--config-dir",
                ".",
                "--consensus_image",
                consensus.image(),
                "--block_interval",
                &up.block_interval.to_string(),
                "--admin",
                &admin,
                "--nodelist",
                &nodelist(up.nodes),
            ]),
    )
    .context("cloud-config create")?;
    let mut nodes = Vec::new();
    for i in 0..up.nodes {
        reissue_cert(&dir, chain, i).with_context(|| format!("node{i}'s certificate"))?;
        nodes.push(NodeState {
            dir: dir.join(format!("{chain}-node{i}")),
            pids: Vec::new(),
            consensus_bin: None,
        });
    }
    Ok(State {
        chain_name: chain.clone(),
        services,
        consensus,
        consensus_bin,
        nodes,
    })
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| Chain::default_dir(root));
    match &args.verb {
        Verb::Up(up) => up_cmd(root, &dir, up),
        Verb::Status => {
            for line in Chain::open(&dir)?.render() {
                println!("{line}");
            }
            Ok(())
        }
        Verb::Down => {
            let started = Instant::now();
            let stopped = Chain::open(&dir)?.down();
            println!(
                "chain stopped: {stopped} processes exited in {:.1} s; data kept in {}",
                started.elapsed().as_secs_f64(),
                dir.display()
            );
            Ok(())
        }
        Verb::Faults(f) => faults::run(root, f),
        Verb::Migrate(m) => migrate::run(root, m),
        Verb::Send(send) => {
            let chain = Chain::open(&dir)?;
            let i = send.node.wrapping_sub(1);
            ensure!(
                i < chain.state.nodes.len(),
                "node {} is not in this chain of {}",
                send.node,
                chain.state.nodes.len()
            );
            let status = chain
                .cldi(i)
                .args([
                    "bench",
                    "send",
                    "-c",
                    &send.concurrency.to_string(),
                    "--connections",
                    &send.connections.to_string(),
                    &send.total.to_string(),
                ])
                .status()
                .context("running cldi")?;
            ensure!(status.success(), "cldi bench send failed ({status})");
            Ok(())
        }
    }
}

/// Generates a new chain in `dir` (stopping one that runs there), starts every service
/// and returns once every node has block 1; stops what it started if that does not
/// happen within 180 s or `stop` is set.
pub fn start(
    root: &Path,
    dir: &Path,
    up: &UpArgs,
    stop: &AtomicBool,
) -> anyhow::Result<(Chain, Instant)> {
    if let Ok(old) = Chain::open(dir) {
        let n = old.down();
        if n > 0 {
            eprintln!(
                "stopped {n} processes of the chain that ran in {}",
                dir.display()
            );
        }
    }
    let state = generate(root, dir, up)?;
    let mut chain = Chain {
        dir: dir.canonicalize()?,
        state,
    };
    chain.save()?;
    eprintln!(
        "chain {} of {} nodes ({} consensus, block_interval {} s) starting in {}",
        up.chain_name,
        up.nodes,
        up.consensus,
        up.block_interval,
        dir.display()
    );
    let started = Instant::now();
    for svc in Service::START_ORDER {
        for i in 0..up.nodes {
            chain.start(i, svc, up.detach)?;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The first block on every node, or a clear failure naming the logs.
    let first_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let heights: Vec<Option<u64>> = (0..up.nodes).map(|i| chain.height(i)).collect();
        if heights.iter().all(|h| h.is_some_and(|h| h >= 1)) {
            eprintln!(
                "every node has block 1, {:.1} s after the first service started",
                started.elapsed().as_secs_f64()
            );
            return Ok((chain, started));
        }
        if stop.load(Ordering::SeqCst) || Instant::now() >= first_deadline {
            let n = chain.down();
            bail!(
                "no block on every node within 180 s (heights {heights:?}); stopped {n} processes; logs in {}/*/logs",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn up_cmd(root: &Path, dir: &Path, up: &UpArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    if !up.detach {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let (chain, started) = start(root, dir, up, &stop)?;
    if up.detach {
        println!("chain running; `cargo xtask cita-chain status` shows it, `cargo xtask cita-chain send 1000` loads it, `cargo xtask cita-chain down` stops it");
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let mut printed = 0usize;
    while !stop.load(Ordering::SeqCst)
        && up
            .duration
            .is_none_or(|d| started.elapsed() < Duration::from_secs(d))
    {
        let lines = chain.render();
        let mut out = std::io::stdout().lock();
        if tty {
            if printed > 0 {
                let _ = write!(out, "\x1b[{printed}F\x1b[J");
            }
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "Ctrl-C stops the chain; logs in {}", dir.display());
            printed = lines.len() + 1;
        } else {
            let _ = writeln!(
                out,
                "t={:>4.0}s {}",
                started.elapsed().as_secs_f64(),
                lines[1..]
                    .iter()
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let _ = out.flush();
        drop(out);
        std::thread::sleep(Duration::from_secs(if tty { 1 } else { 3 }));
    }
    eprintln!("stopping the chain ...");
    let t = Instant::now();
    let n = chain.down();
    eprintln!(
        "{n} processes stopped in {:.1} s; data kept in {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_cloud_configs_plan() {
        let p = Ports::of(2);
        assert_eq!(p.zenoh, 40002);
        assert_eq!(p.network, 50200);
        assert_eq!(p.consensus, 50201);
        assert_eq!(p.executor, 50202);
        assert_eq!(p.storage, 50203);
        assert_eq!(p.controller, 50204);
        assert_eq!(p.consensus_metrics, 60201);
        assert_eq!(
            nodelist(3),
            "localhost:40000:node0,localhost:40001:node1,localhost:40002:node2"
        );
    }

    #[test]
    fn consensus_choice_sets_image_and_command() {
        assert_eq!(Consensus::parse("ours"), Consensus::Ours);
        assert_eq!(Consensus::parse("raft"), Consensus::Raft);
        assert_eq!(
            Consensus::parse("/x/consensus"),
            Consensus::Path("/x/consensus".into())
        );
        assert_eq!(Consensus::Ours.image(), "consensus_raft");
        assert_eq!(Consensus::Overlord.image(), "consensus_overlord");
        assert!(Consensus::Overlord.run_args().contains(&"private_key"));
        assert!(Consensus::Ours.run_args().contains(&"--stdout"));
    }

    #[test]
    fn cldi_outputs_are_parsed() {
        assert_eq!(parse_block_number("42\n"), Some(42));
        assert_eq!(parse_block_number("warning: x\n 7 \n"), Some(7));
        assert_eq!(parse_block_number("error: unavailable\n"), None);
        let account = r#"{
  "address": "0x1a2b",
  "public_key": "0x99",
  "secret_key": "0x77"
}"#;
        assert_eq!(parse_account_address(account).unwrap(), "0x1a2b");
        assert!(parse_account_address("no account").is_err());
        assert!(parse_account_address(r#"{"public_key": "0x99"}"#).is_err());
    }

    #[test]
    fn the_certificate_is_replaced_and_nothing_else_changes() {
        let config = r#"
[network_zenoh]
grpc_port = 50000
cert = """
-----BEGIN CERTIFICATE-----
OLD
-----END CERTIFICATE-----
"""
priv_key = "k"

[consensus_raft]
network_port = 50000
"#;
        let pem = "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n";
        let out: toml::Table = set_network_cert(config, pem).unwrap().parse().unwrap();
        assert_eq!(out["network_zenoh"]["cert"].as_str(), Some(pem));
        assert_eq!(out["network_zenoh"]["priv_key"].as_str(), Some("k"));
        assert_eq!(out["network_zenoh"]["grpc_port"].as_integer(), Some(50000));
        assert_eq!(
            out["consensus_raft"]["network_port"].as_integer(),
            Some(50000)
        );
        assert!(set_network_cert("[consensus_raft]\n", pem).is_err());
        assert!(set_network_cert("[network_zenoh]\ngrpc_port = 1\n", pem).is_err());
        assert!(set_network_cert("not toml [", pem).is_err());
    }
}
