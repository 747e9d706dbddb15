//! `cargo xtask conformance`: checks any implementation of the CITA-Cloud consensus
//! contract, black-box, through the development controllers and network only.
//!
//! Each check is named after the clause of the contract it tests (the clauses are listed,
//! with the contract's words, in this module's README.md) and reports pass or fail with
//! its evidence. What a service does is read from outside: chain files and controller
//! counters ([`craft_controller`]'s development controller), what the development network
//! saw each node register and send, the service's gRPC answers and its process state. No
//! check reads a service's logs or its own metrics.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::blackbox;
use crate::cluster::{check_chains_agree, node_address, Cluster, Spec};
use crate::harness::build;

/// `cargo xtask conformance`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The consensus binary to check (default: ours, built from this checkout).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Run only the groups of checks whose name contains this (main, tick, controller,
    /// validators, node_addr).
    #[arg(long)]
    pub only: Option<String>,
    /// Build ours with the release profile (when `--bin` is not given).
    #[arg(long)]
    pub release: bool,
    /// Exit successfully even when clauses fail (to record another implementation's
    /// results).
    #[arg(long)]
    pub report_only: bool,
}

/// A clause of the contract: its name and the contract's words.
#[derive(Debug, Clone, Copy)]
struct Clause {
    id: &'static str,
    text: &'static str,
}

/// The clauses checked, in report order.
const CLAUSES: &[Clause] = &[
    Clause {
        id: "cli.run",
        text: "`consensus run -c config.toml [--stdout]`",
    },
    Clause {
        id: "cli.log_dir",
        text: "`consensus run -c config.toml [-d LOG_DIR] [-f LOG_FILE_NAME]`",
    },
    Clause {
        id: "config.keys",
        text: "the config file has a `[consensus_raft]` table with controller_port, grpc_listen_port, network_port, node_addr, log_level, log_to_stdout, log_dir, log_file_name, log_rotate_size, log_rotate_keep, log_rotate_compress, tick_interval_in_millis, heartbeat_tick, election_tick, check_quorum, raft_data_path, enable_metrics, metrics_port, metrics_buckets",
    },
    Clause {
        id: "config.tick_interval_in_millis",
        text: "`tick_interval_in_millis` (200) sets the raft tick: a leader heartbeats every heartbeat_tick ticks",
    },
    Clause {
        id: "config.metrics",
        text: "`enable_metrics`, `metrics_port`: metrics served on that port",
    },
    Clause {
        id: "node_addr.file",
        text: "`node_addr` in the config is a path to a file holding the node's address as hex (optionally `0x`-prefixed)",
    },
    Clause {
        id: "bootstrap",
        text: "a node whose storage is empty and that is in the validator list installs the same initial snapshot as every other validator; the first validator in the list campaigns",
    },
    Clause {
        id: "network.register",
        text: "`RegisterNetworkMsgHandler(RegisterInfo)`; module name `consensus`; the network then calls `ProcessNetworkMsg` on `hostname:port`",
    },
    Clause {
        id: "network.message_types",
        text: "`raft` messages with `SendMsg` to the peer's origin; `probe` by `Broadcast`",
    },
    Clause {
        id: "raft.id",
        text: "raft id of a node = SipHash-1-3 with both keys 0 over the raw node-address bytes; `probe` payload: the sender's raft id, 8 bytes big-endian",
    },
    Clause {
        id: "consensus.health",
        text: "`grpc.health.v1.Health` — the standard gRPC health check (`Check`)",
    },
    Clause {
        id: "consensus.reconfigure",
        text: "`Reconfigure(common.ConsensusConfiguration) returns (common.StatusCode)`: the controller pushes the chain's current height, block interval and validators (0 = success)",
    },
    Clause {
        id: "consensus.check_block",
        text: "`CheckBlock(common.ProposalWithProof) returns (common.StatusCode)`: raft's proof is empty",
    },
    Clause {
        id: "proposal.height_plus_one",
        text: "the leader fetches a proposal and proposes it only if `height == current height + 1`",
    },
    Clause {
        id: "proposal.check_failure",
        text: "a committed proposal whose height is above the node's height is checked with `CheckProposal`, then `CommitBlock`: a refused check is never skipped",
    },
    Clause {
        id: "controller.unreachable",
        text: "the controller being unreachable and coming back: blocks are committed to it in order once it is back",
    },
    Clause {
        id: "raft.leader_change",
        text: "the leader lost: another validator leads and the chain goes on; the old one catches up on return",
    },
    Clause {
        id: "restart.recovery",
        text: "restart: the consensus recovers its raft state, and the last committed proposal is committed to the controller again when it is one ahead",
    },
    Clause {
        id: "validators.change",
        text: "membership changes are `ConfChangeV2` entries, derived from the difference between the raft voters and the validator list the controller returns",
    },
    Clause {
        id: "validators.self_removal",
        text: "a node removed from the validators stays up, and rejoins when it is added back",
    },
    Clause {
        id: "network.malformed",
        text: "`ProcessNetworkMsg(network.NetworkMsg)` — messages from peers (hostile ones included) never stop the node",
    },
    Clause {
        id: "safety",
        text: "no height ever has two different blocks",
    },
];

fn clause(id: &str) -> Clause {
    CLAUSES
        .iter()
        .copied()
        .find(|c| c.id == id)
        .unwrap_or(Clause {
            id: "unknown",
            text: "",
        })
}

/// One check's outcome.
#[derive(Debug)]
struct Outcome {
    clause: &'static str,
    group: &'static str,
    passed: bool,
    evidence: String,
}

/// Raft timing of every group: ticks of 50 ms, heartbeats every 3, elections after 20.
fn spec(nodes: usize, block_interval: u32) -> Spec {
    Spec {
        tick_ms: 50,
        heartbeat_tick: 3,
        election_tick: 20,
        log_retain: 50,
        stats: true,
        controller_no_fsync: false,
        ..Spec::new(nodes, block_interval)
    }
}

/// A group of checks on one cluster.
struct Group<'a> {
    name: &'static str,
    cluster: Cluster,
    spec: Spec,
    outcomes: &'a mut Vec<Outcome>,
}

impl Group<'_> {
    fn bound(&self) -> Duration {
        Duration::from_millis(self.spec.tick_ms * self.spec.election_tick as u64) * 40
    }

    fn record(&mut self, id: &'static str, result: anyhow::Result<String>) {
        let (passed, evidence) = match result {
            Ok(e) => (true, e),
            Err(e) => (false, format!("{e:#}")),
        };
        let c = clause(id);
        println!(
            "  {} {}: {evidence}",
            if passed { "pass" } else { "FAIL" },
            c.id
        );
        if !passed {
            println!("       the contract: {}", c.text);
        }
        self.outcomes.push(Outcome {
            clause: c.id,
            group: self.name,
            passed,
            evidence,
        });
    }

    fn wait(&self, what: &str, pred: impl FnMut(&[u64]) -> bool) -> anyhow::Result<Duration> {
        blackbox::wait(&self.cluster, self.bound(), what, pred, |_| {})
    }

    fn all_reach(&self, height: u64) -> anyhow::Result<Duration> {
        self.wait(&format!("every node reaches height {height}"), |t| {
            t.iter().all(|h| *h >= height)
        })
    }

    fn progress(&self, blocks: u64) -> anyhow::Result<u64> {
        let target = blackbox::max_tip(&self.cluster) + blocks;
        self.wait(&format!("the chain reaches {target}"), |t| {
            t.iter().copied().max().unwrap_or(0) >= target
        })?;
        Ok(target)
    }

    fn down_nodes(&self) -> Vec<usize> {
        self.cluster
            .views()
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.alive)
            .map(|(i, _)| i + 1)
            .collect()
    }

    fn all_alive(&self) -> anyhow::Result<()> {
        let down = self.down_nodes();
        if !down.is_empty() {
            bail!(
                "node(s) {down:?} exited (see {})",
                self.cluster.dir.display()
            );
        }
        Ok(())
    }

    fn no_gaps(&self) -> anyhow::Result<()> {
        let gaps = blackbox::gaps(&self.cluster);
        if let Some((node, first, n)) = gaps.first() {
            bail!(
                "node {node}'s chain misses {n} height(s), the first {first}: a block was skipped"
            );
        }
        Ok(())
    }

    /// Rewrites node `i`'s config with exactly the contract's keys.
    fn write_contract_config(&self, i: usize) -> anyhow::Result<()> {
        self.write_config(i, true)
    }

    /// [`Group::write_contract_config`] with `log_to_stdout` as given.
    fn write_config(&self, i: usize, log_to_stdout: bool) -> anyhow::Result<()> {
        let n = &self.cluster.state.nodes[i - 1];
        let nd = self.cluster.node_dir(i);
        let config = format!(
            "# Written by `cargo xtask conformance`: the contract's keys, no others.\n\
             [consensus_raft]\n\
             controller_port = {}\n\
             grpc_listen_port = {}\n\
             network_port = {}\n\
             node_addr = {:?}\n\
             log_level = \"info\"\n\
             log_to_stdout = {log_to_stdout}\n\
             log_dir = {:?}\n\
             log_file_name = \"consensus-service.log\"\n\
             log_rotate_size = 134217728\n\
             log_rotate_keep = 5\n\
             log_rotate_compress = false\n\
             tick_interval_in_millis = {}\n\
             heartbeat_tick = {}\n\
             election_tick = {}\n\
             check_quorum = false\n\
             raft_data_path = {:?}\n\
             enable_metrics = true\n\
             metrics_port = {}\n\
             metrics_buckets = [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0]\n",
            n.controller_port,
            n.grpc_port,
            n.network_port,
            nd.join("node_address").display().to_string(),
            nd.join("logs").display().to_string(),
            self.spec.tick_ms,
            self.spec.heartbeat_tick,
            self.spec.election_tick,
            nd.join("raft-data").display().to_string(),
            n.metrics_port,
        );
        let path = nd.join("config.toml");
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// Stops every consensus process, lets `prepare` change node directories, wipes the
    /// raft state and starts them all again: a cluster that first starts the way
    /// `prepare` leaves it.
    fn restart_fresh(
        &mut self,
        mut prepare: impl FnMut(&mut Self, usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for i in 1..=self.spec.nodes {
            self.cluster.stop(i, Duration::from_secs(5))?;
        }
        for i in 1..=self.spec.nodes {
            self.cluster.wipe_raft_data(i)?;
            prepare(self, i)?;
        }
        for i in 1..=self.spec.nodes {
            self.cluster.start_consensus(i, false)?;
        }
        Ok(())
    }

    /// The development network's counters (it writes them at start and every 500 ms).
    fn network_stats(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.cluster.dir.join("network-stats.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn controller_stats(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let path = self.cluster.node_dir(i).join("controller-stats.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The sum over controllers of a counter.
    fn controller_sum(&self, key: &str) -> anyhow::Result<u64> {
        let mut sum = 0;
        for i in 1..=self.spec.nodes {
            sum += self.controller_stats(i)?[key].as_u64().unwrap_or(0);
        }
        Ok(sum)
    }

    fn safety(&mut self) {
        let result = check_chains_agree(&self.cluster.chains())
            .map(|n| format!("chains agree on all {n} heights"));
        self.record("safety", result);
    }
}

/// The raft id the contract gives node address `addr`.
fn raft_id(addr: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(addr);
    h.finish()
}

fn address_bytes(i: usize) -> Vec<u8> {
    let hex = node_address(i);
    (0..hex.len())
        .step_by(2)
        .filter_map(|k| u8::from_str_radix(&hex[k..k + 2], 16).ok())
        .collect()
}

mod grpc;

/// Bootstrap, the service's answers, what it does on the network, leader loss, the
/// controller lost and back, hostile messages and a restart of every node.
fn main_group(g: &mut Group<'_>) -> anyhow::Result<()> {
    g.restart_fresh(|g, i| g.write_contract_config(i))?;
    let boot = g.all_reach(10);
    g.record(
        "bootstrap",
        boot.as_ref()
            .map(|t| {
                format!(
                    "3 nodes from empty storage: every node committed heights 1..=10 within {:.1}s",
                    t.as_secs_f64()
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    );
    boot?;
    g.record(
        "cli.run",
        g.all_alive().map(|()| {
            "3 processes started as `run -c config.toml --stdout` run and commit".to_string()
        }),
    );
    g.record(
        "config.keys",
        g.all_alive().map(|()| {
            "configs with exactly the contract's 19 keys (and no others) accepted by every node"
                .to_string()
        }),
    );

    let nodes = g.cluster.state.nodes.clone();
    let health: anyhow::Result<String> = (|| {
        for n in &nodes {
            let status = grpc::health(n.grpc_port)?;
            anyhow::ensure!(
                status == "SERVING",
                "node {} answers {status} to Check(\"\")",
                n.index
            );
        }
        Ok("every node answers SERVING to Check(\"\")".into())
    })();
    g.record("consensus.health", health);

    let tips = blackbox::tips(&g.cluster);
    let validators: Vec<Vec<u8>> = (1..=nodes.len()).map(address_bytes).collect();
    let reconfigure: anyhow::Result<String> = (|| {
        let mut codes = Vec::new();
        for n in &nodes {
            let code = grpc::reconfigure(n.grpc_port, tips[n.index - 1], 0, validators.clone())?;
            codes.push(code);
        }
        anyhow::ensure!(
            codes.iter().all(|c| *c == 0),
            "status codes {codes:?} for the controller's own configuration"
        );
        Ok(format!(
            "status 0 from every node for its controller's configuration (heights {tips:?})"
        ))
    })();
    g.record("consensus.reconfigure", reconfigure);
    let check_block: anyhow::Result<String> = (|| {
        let chains = g.cluster.chains();
        let mut codes = Vec::new();
        for n in &nodes {
            let (h, line) = chains[n.index - 1]
                .iter()
                .next_back()
                .context("no block yet")?;
            let data = craft_devnet::controller::parse_block_line(line)
                .with_context(|| format!("block {h} of node {} is not a block", n.index))?;
            codes.push(grpc::check_block(n.grpc_port, *h, data)?);
        }
        anyhow::ensure!(
            codes.iter().all(|c| *c == 0),
            "status codes {codes:?} for committed blocks with an empty proof"
        );
        Ok("status 0 from every node for a committed block with an empty proof".into())
    })();
    g.record("consensus.check_block", check_block);
    let metrics: anyhow::Result<String> = (|| {
        for n in &nodes {
            let m = crate::harness::scrape(n.metrics_port).with_context(|| {
                format!(
                    "node {}: nothing on metrics_port {}",
                    n.index, n.metrics_port
                )
            })?;
            anyhow::ensure!(!m.is_empty(), "node {}: no samples on /metrics", n.index);
        }
        Ok("every node serves Prometheus samples on its metrics_port".into())
    })();
    g.record("config.metrics", metrics);

    // What the development network saw (its stats file is rewritten twice a second).
    std::thread::sleep(Duration::from_millis(1200));
    let net = g.network_stats()?;
    let register: anyhow::Result<String> = (|| {
        for n in &nodes {
            let regs = net["nodes"][n.index - 1]["registered"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ok = regs.iter().any(|r| {
                r["module"] == "consensus" && r["port"] == n.grpc_port.to_string().as_str()
            });
            anyhow::ensure!(
                ok,
                "node {} registered {regs:?}, not module \"consensus\" on its grpc_listen_port {}",
                n.index,
                n.grpc_port
            );
        }
        Ok("every node registered module \"consensus\" at its grpc_listen_port".into())
    })();
    g.record("network.register", register);
    let types: anyhow::Result<String> = (|| {
        let mut evidence = Vec::new();
        for n in &nodes {
            let sent = &net["nodes"][n.index - 1]["sent"];
            let count = |k: &str| sent[k].as_u64().unwrap_or(0);
            anyhow::ensure!(
                count("send_msg:raft") > 0 && count("broadcast:raft") == 0,
                "node {} sent raft messages as {sent}",
                n.index
            );
            evidence.push(format!(
                "node {}: {} raft by SendMsg, {} probes by Broadcast",
                n.index,
                count("send_msg:raft"),
                count("broadcast:probe")
            ));
        }
        anyhow::ensure!(
            nodes
                .iter()
                .any(|n| net["nodes"][n.index - 1]["sent"]["broadcast:probe"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0),
            "no node broadcast a probe"
        );
        Ok(evidence.join("; "))
    })();
    g.record("network.message_types", types);
    let ids: anyhow::Result<String> = (|| {
        let mut evidence = Vec::new();
        for n in &nodes {
            let want = raft_id(&address_bytes(n.index));
            let seen = &net["nodes"][n.index - 1];
            let claimed: Vec<u64> = ["probe_ids", "raft_from"]
                .iter()
                .flat_map(|k| seen[*k].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v.as_u64())
                .collect();
            anyhow::ensure!(!claimed.is_empty(), "node {} claimed no raft id", n.index);
            anyhow::ensure!(
                claimed.iter().all(|id| *id == want),
                "node {} claimed raft ids {claimed:?}, the contract gives {want:#x}",
                n.index
            );
            evidence.push(format!("node {}: {want:#018x}", n.index));
        }
        Ok(format!(
            "probes and raft messages claim exactly: {}",
            evidence.join(", ")
        ))
    })();
    g.record("raft.id", ids);

    // The leader lost.
    let leader_change: anyhow::Result<String> = (|| {
        let h = blackbox::max_tip(&g.cluster);
        let leader = blackbox::leader_after(&g.cluster, g.bound(), h, |_| {})?;
        let h = blackbox::max_tip(&g.cluster);
        g.cluster.kill(leader)?;
        let next = blackbox::leader_after(&g.cluster, g.bound(), h, |_| {})?;
        anyhow::ensure!(next != leader, "the killed leader {leader} still proposes");
        let target = g.progress(20)?;
        let from = blackbox::max_tip(&g.cluster);
        g.cluster.start_consensus(leader, false)?;
        let took = blackbox::caught_up(&g.cluster, g.bound(), leader, from, |_| {})?;
        Ok(format!(
            "leader {leader} SIGKILLed: node {next} proposed, the chain reached {target}; node {leader} restarted and was level after {:.1}s",
            took.as_secs_f64()
        ))
    })();
    g.record("raft.leader_change", leader_change);

    // Controllers lost and back: a follower's, then the leader's.
    let unreachable: anyhow::Result<String> = (|| {
        let h = blackbox::max_tip(&g.cluster);
        let leader = blackbox::leader_after(&g.cluster, g.bound(), h, |_| {})?;
        let follower = if leader == 1 { 2 } else { 1 };
        let mut evidence = Vec::new();
        for (who, node) in [("follower", follower), ("leader", leader)] {
            g.cluster.kill_controller(node)?;
            std::thread::sleep(Duration::from_secs(3));
            let from = blackbox::tips(&g.cluster)[node - 1];
            g.cluster.start_controller(node, false)?;
            let took = blackbox::caught_up(&g.cluster, g.bound(), node, from, |_| {})?;
            evidence.push(format!(
                "{who} {node}'s controller down 3 s: level again {:.1}s after its return",
                took.as_secs_f64()
            ));
        }
        g.progress(10)?;
        g.no_gaps()?;
        g.all_alive()?;
        evidence.push("no height skipped on any chain".into());
        Ok(evidence.join("; "))
    })();
    g.record("controller.unreachable", unreachable);

    // Hostile messages, through the network as a peer and straight to the handler.
    let hostile: anyhow::Result<String> = (|| {
        let mut evidence = Vec::new();
        for target in &nodes {
            let sender = nodes[target.index % nodes.len()].index;
            let lines = g
                .cluster
                .feed_hostile(target.index, sender)?
                .lines()
                .count();
            evidence.push(format!("node {}: {lines} kinds", target.index));
        }
        std::thread::sleep(Duration::from_millis(500));
        g.all_alive()?;
        let target = g.progress(10)?;
        Ok(format!(
            "the hostile set of dev-hostile ({}) sent to every node through the network and directly; all stayed up and the chain reached {target}",
            evidence.join(", ")
        ))
    })();
    g.record("network.malformed", hostile);

    // Every node SIGKILLed and restarted.
    let restart: anyhow::Result<String> = (|| {
        let before = g.cluster.chains();
        for i in 1..=g.spec.nodes {
            g.cluster.kill(i)?;
        }
        for i in 1..=g.spec.nodes {
            g.cluster.start_consensus(i, false)?;
        }
        let target = g.progress(10)?;
        let after = g.cluster.chains();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            for (h, block) in b {
                anyhow::ensure!(
                    a.get(h) == Some(block),
                    "node {} lost or changed block {h} across the restart",
                    i + 1
                );
            }
        }
        g.no_gaps()?;
        Ok(format!(
            "all SIGKILLed at heights {:?} and restarted: nothing lost, the chain reached {target}, no height skipped",
            before
                .iter()
                .map(|c| c.keys().next_back().copied().unwrap_or(0))
                .collect::<Vec<_>>()
        ))
    })();
    g.record("restart.recovery", restart);
    g.safety();
    Ok(())
}

/// `tick_interval_in_millis` honoured: the leader's heartbeat rate on an idle chain.
fn tick_group(g: &mut Group<'_>) -> anyhow::Result<()> {
    g.restart_fresh(|g, i| g.write_contract_config(i))?;
    g.all_reach(1)?;
    let h = blackbox::max_tip(&g.cluster);
    // Idle: the next block is a block interval away.
    let leader = blackbox::leader_after(&g.cluster, g.bound(), h.saturating_sub(1), |_| {})?;
    std::thread::sleep(Duration::from_millis(1200));
    let sent = |g: &Group<'_>| -> anyhow::Result<u64> {
        Ok(
            g.network_stats()?["nodes"][leader - 1]["sent"]["send_msg:raft"]
                .as_u64()
                .unwrap_or(0),
        )
    };
    let start_h = blackbox::max_tip(&g.cluster);
    let a = sent(g)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let b = sent(g)?;
    let secs = t0.elapsed().as_secs_f64();
    let blocks = blackbox::max_tip(&g.cluster) - start_h;
    let rate = (b - a) as f64 / secs;
    let followers = (g.spec.nodes - 1) as f64;
    let expected = followers * 1000.0 / (g.spec.tick_ms as f64 * g.spec.heartbeat_tick as f64);
    let result = if blocks > 1 {
        Err(anyhow::anyhow!(
            "{blocks} blocks in the idle window: not idle"
        ))
    } else if rate >= 0.6 * expected {
        Ok(format!(
            "tick 50 ms, heartbeat_tick 3: the idle leader sent {rate:.1} raft messages/s to 2 followers (heartbeats every 150 ms give {expected:.1})"
        ))
    } else {
        Err(anyhow::anyhow!(
            "tick 50 ms, heartbeat_tick 3: the idle leader sent {rate:.1} raft messages/s; heartbeats every 150 ms give {expected:.1} (every 600 ms, a 200 ms tick, gives {:.1})",
            expected / 4.0
        ))
    };
    g.record("config.tick_interval_in_millis", result);
    Ok(())
}

/// Controllers that hand out proposals at wrong heights and refuse checks now and then.
fn controller_group(g: &mut Group<'_>) -> anyhow::Result<()> {
    g.restart_fresh(|g, i| g.write_contract_config(i))?;
    g.all_reach(60)?;
    let height: anyhow::Result<String> = (|| {
        let wrong = g.controller_sum("wrong_height_proposals")?;
        let out_of_order = g.controller_sum("commits_out_of_order")?;
        anyhow::ensure!(wrong > 0, "no wrong-height proposal was handed out");
        anyhow::ensure!(
            out_of_order == 0,
            "{out_of_order} CommitBlock calls for a height other than height + 1"
        );
        g.no_gaps()?;
        Ok(format!(
            "{wrong} proposals at the current height or height + 2 handed out; none committed, no height skipped, 60 blocks on every node"
        ))
    })();
    g.record("proposal.height_plus_one", height);
    let check: anyhow::Result<String> = (|| {
        let failed = g.controller_sum("failed_checks")?;
        anyhow::ensure!(failed > 0, "no CheckProposal was refused");
        g.no_gaps()?;
        g.all_alive()?;
        Ok(format!(
            "{failed} CheckProposal calls refused (status 105); every node still committed every height 1..=60"
        ))
    })();
    g.record("proposal.check_failure", check);
    g.safety();
    Ok(())
}

/// Node 3 leaves the validators at height 20 and is back from height 70.
fn validators_group(g: &mut Group<'_>) -> anyhow::Result<()> {
    g.restart_fresh(|g, i| g.write_contract_config(i))?;
    g.wait("the chain passes 40 with node 3 removed", |t| {
        t.iter().copied().max().unwrap_or(0) >= 40
    })?;
    let removed: anyhow::Result<String> = (|| {
        g.all_alive()?;
        let sent = |g: &Group<'_>| -> anyhow::Result<u64> {
            Ok(g.network_stats()?["nodes"][2]["sent"]["send_msg:raft"]
                .as_u64()
                .unwrap_or(0))
        };
        let a = sent(g)?;
        std::thread::sleep(Duration::from_secs(2));
        let b = sent(g)?;
        Ok(format!(
            "node 3 stayed up after its removal at height 20 and sent {} raft messages in 2 s while removed",
            b - a
        ))
    })();
    let change: anyhow::Result<String> = (|| {
        g.wait("the chain passes 70 without node 3", |t| {
            t.iter().copied().max().unwrap_or(0) >= 70
        })?;
        let target = blackbox::max_tip(&g.cluster) + 20;
        let took = g.all_reach(target)?;
        Ok(format!(
            "two validators passed height 70 without node 3; node 3 added back: every node reached {target} within {:.1}s",
            took.as_secs_f64()
        ))
    })();
    let rejoined = change.is_ok();
    g.record(
        "validators.self_removal",
        removed.and_then(|e| {
            anyhow::ensure!(rejoined, "node 3 never rejoined after being added back");
            Ok(e + ", and rejoined once added back")
        }),
    );
    g.record("validators.change", change);
    g.safety();
    Ok(())
}

/// The node address file in its three spellings, and logging to a directory.
fn node_addr_group(g: &mut Group<'_>) -> anyhow::Result<()> {
    let logs = g.cluster.dir.join("log-dir");
    fs::create_dir_all(&logs)?;
    let config3 = g.cluster.node_dir(3).join("config.toml");
    g.cluster.set_consensus_args(
        3,
        Some(vec![
            "run".into(),
            "-c".into(),
            config3.display().to_string(),
            "-d".into(),
            logs.display().to_string(),
            "-f".into(),
            "conformance.log".into(),
        ]),
    )?;
    g.restart_fresh(|g, i| {
        // Node 3 logs to files: `log_to_stdout` would win over `-d`/`-f`.
        g.write_config(i, i != 3)?;
        let addr = node_address(i);
        // Node 1: as `echo 0x... > node_address` writes it; node 2: no prefix.
        let text = match i {
            1 => format!("0x{addr}\n"),
            2 => addr,
            _ => format!("0x{addr}"),
        };
        let path = g.cluster.node_dir(i).join("node_address");
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    })?;
    let reached = g.wait("the chain reaches 10", |t| {
        t.iter().copied().max().unwrap_or(0) >= 10
    });
    std::thread::sleep(Duration::from_millis(500));
    let tips = blackbox::tips(&g.cluster);
    let down = g.down_nodes();
    let spellings = [
        "\"0x<hex>\\n\" (a trailing newline)",
        "\"<hex>\" (no prefix)",
        "\"0x<hex>\"",
    ];
    let failures: Vec<String> = (1..=3)
        .filter(|i| down.contains(i) || tips[i - 1] == 0)
        .map(|i| {
            format!(
                "node {i} with {} {}",
                spellings[i - 1],
                if down.contains(&i) {
                    "exited"
                } else {
                    "committed nothing"
                }
            )
        })
        .collect();
    let result = match (&reached, failures.is_empty()) {
        (Ok(_), true) => Ok(format!(
            "all three spellings accepted ({}): heights {tips:?}",
            spellings.join(", ")
        )),
        _ => Err(anyhow::anyhow!(
            "{}{}",
            failures.join("; "),
            reached
                .as_ref()
                .err()
                .map(|e| format!("; {e:#}"))
                .unwrap_or_default()
        )),
    };
    g.record("node_addr.file", result);
    let log_dir: anyhow::Result<String> = (|| {
        anyhow::ensure!(!down.contains(&3), "node 3, started with -d and -f, exited");
        let files: Vec<(String, u64)> = fs::read_dir(&logs)?
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        anyhow::ensure!(
            files
                .iter()
                .any(|(name, len)| name.starts_with("conformance.log") && *len > 0),
            "no non-empty conformance.log* in {} (found {files:?})",
            logs.display()
        );
        Ok(format!(
            "node 3 run with `-d {} -f conformance.log` (log_to_stdout = false, no --stdout) logs to {files:?}",
            logs.display()
        ))
    })();
    g.record("cli.log_dir", log_dir);
    g.safety();
    Ok(())
}

type GroupFn = fn(&mut Group<'_>) -> anyhow::Result<()>;

fn groups() -> Vec<(&'static str, Spec, GroupFn)> {
    let mut validators = spec(3, 0);
    validators.schedule = vec![(20, vec![1, 2]), (70, vec![1, 2, 3])];
    let faulty = Spec {
        controller_args: vec![
            "--wrong-height-every".into(),
            "5".into(),
            "--fail-check-every".into(),
            "7".into(),
        ],
        ..spec(3, 0)
    };
    vec![
        ("main", spec(3, 0), main_group as GroupFn),
        ("tick", spec(3, 30), tick_group),
        ("controller", faulty, controller_group),
        ("validators", validators, validators_group),
        ("node_addr", spec(3, 0), node_addr_group),
    ]
}

/// Runs the kit and prints the report.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let bin_dir = build(root, args.release)?;
    let bin = match &args.bin {
        Some(b) => {
            anyhow::ensure!(b.is_file(), "no consensus binary at {}", b.display());
            fs::canonicalize(b).with_context(|| format!("resolving {}", b.display()))?
        }
        None => bin_dir.join("consensus"),
    };
    println!("conformance of {}", bin.display());
    let base = root.join("target").join("conformance");
    let mut outcomes = Vec::new();
    for (name, mut spec, group) in groups() {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        spec.consensus_bins = vec![bin.clone()];
        let dir = base.join(name);
        println!("group {name} ...");
        let started = Instant::now();
        let cluster = Cluster::create(&dir, &bin_dir, &spec, false)?;
        let before = outcomes.len();
        let mut g = Group {
            name,
            cluster,
            spec,
            outcomes: &mut outcomes,
        };
        if let Err(e) = group(&mut g) {
            g.record(
                "safety",
                Err(e.context(format!("group {name} stopped early"))),
            );
        }
        g.cluster.reload();
        g.cluster.down();
        let failed = outcomes[before..].iter().any(|o| !o.passed);
        println!("  ({:.1}s)", started.elapsed().as_secs_f64());
        if failed {
            println!("  logs kept in {}", dir.display());
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
    }
    println!("\n| clause | group | result | evidence |\n|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} |",
            o.clause,
            o.group,
            if o.passed { "pass" } else { "FAIL" },
            o.evidence.replace('|', "\\|").replace('\n', " ")
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.clause)
        .collect();
    let passed = outcomes.len() - failed.len();
    println!(
        "\nconformance: {passed} of {} checks passed{}",
        outcomes.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", failed.join(", "))
        }
    );
    if !failed.is_empty() && !args.report_only {
        bail!("{} clause(s) failed", failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_the_contracts() {
        // The contract defines the id as what std's DefaultHasher (SipHash-1-3, zero
        // keys) computes today over the raw address bytes.
        use std::hash::Hasher;
        let addr = address_bytes(1);
        assert_eq!(addr.len(), 20);
        assert_eq!(addr[19], 1);
        let mut d = std::collections::hash_map::DefaultHasher::new();
        d.write(&addr);
        assert_eq!(raft_id(&addr), d.finish());
    }

    #[test]
    fn every_clause_is_listed_once_and_in_the_readme() {
        let readme = include_str!("README.md");
        for (i, c) in CLAUSES.iter().enumerate() {
            assert!(
                CLAUSES[..i].iter().all(|o| o.id != c.id),
                "{} listed twice",
                c.id
            );
            assert!(
                readme.contains(&format!("`{}`", c.id)),
                "{} not in README.md",
                c.id
            );
        }
    }
}
