//! `cargo xtask bench --kv`: a 3-node `craft-kv` cluster and a 3-member etcd cluster, side
//! by side, both on loopback with fsync on, each driven at its leader by the same `wrk`
//! load over HTTP/1.1:
//! - writes of 256-byte values under fresh keys at 1, 16 and 64 connections
//!   (`--kv-connections`): craft-kv `POST /key` `{"k":"v"}`, etcd `POST /v3/kv/put`
//!   `{"key": base64, "value": base64}` (its gRPC gateway);
//! - a 90/10 mix of linearizable reads and writes over 1000 pre-written keys at 16 and 64
//!   connections (`--kv-mix-connections`): craft-kv `GET /key/{k}` (ReadIndex), etcd
//!   `POST /v3/kv/range` `{"key": base64}` (serializable=false, ReadIndex too).
//!
//! Results go to `target/bench/kv.json`. Without etcd (`apt-get install -y etcd-server`)
//! craft-kv runs alone. `--tls` instead runs the older comparison of craft-kv with TLS off
//! and on (writes only; `target/bench/kv-tls.json`).
//!
//! Keys are ASCII: `key` + run + wrk thread + counter (3 + 3 + 3 + 9 digits) for writes,
//! `mix000`..`mix999` for the mix. etcd needs them in base64; wrk's Lua has none, so the
//! scripts carry the base64 of every 3-digit group, computed here: base64 of a
//! concatenation of 3-byte groups is the concatenation of their base64.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::etcd;
use crate::harness::{median, Processes};
use crate::kv_load;
pub use crate::kv_load::{Figures, Workload};

/// Base port: node i (1-based) listens on `BASE + 10 i` (HTTP) and `BASE + 10 i + 1`
/// (raft).
const BASE: u16 = 17100;
/// etcd member i serves clients on `ETCD_BASE + 10 i` and peers on `ETCD_BASE + 10 i + 1`.
const ETCD_BASE: u16 = 17200;
/// craft-kv's tick; heartbeat every 3 ticks, election after 10–20 (craft-core's defaults).
const TICK_MS: u64 = 50;
/// Bytes of every written value.
const VALUE_BYTES: usize = 256;
/// Keys of the read/write mix, written before it starts: `mix000`..`mix999`.
const MIX_KEYS: usize = 1000;
/// Keys per request when writing them (etcd allows 128 operations per transaction).
const PREFILL_BATCH: usize = 100;
/// Seconds of wrk before each measurement: connections, leases, memtables.
const WARMUP_SECS: u64 = 2;
/// Members of each cluster.
const MEMBERS: usize = 3;

/// How the load reaches the systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// Closed-loop clients in this process ([`crate::kv_load`]): craft-kv over HTTP/1.1,
    /// etcd over its gRPC API.
    Native,
    /// wrk over HTTP/1.1 for both, etcd through its JSON gateway.
    Wrk,
}

/// What `cargo xtask bench --kv` runs.
pub struct Options<'a> {
    /// How the load reaches the systems (the TLS comparison always uses wrk).
    pub driver: Driver,
    /// The craft-kv binary.
    pub kv_bin: &'a Path,
    /// Whether `kv_bin` is a debug build (figures not representative).
    pub debug: bool,
    /// Seconds measured per case.
    pub secs: u64,
    /// wrk connections of the write cases.
    pub write_connections: &'a [usize],
    /// wrk connections of the read/write mix cases.
    pub mix_connections: &'a [usize],
    /// The etcd binary given with `--etcd`; else `etcd` on `PATH`.
    pub etcd: Option<&'a Path>,
    /// Rounds per case; the median of each figure is reported.
    pub rounds: usize,
    /// The TLS off / on comparison of craft-kv instead.
    pub tls: bool,
}

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// This repository's example server.
    CraftKv,
    /// etcd through its HTTP/JSON gateway.
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::CraftKv => "craft-kv",
            System::Etcd => "etcd",
        }
    }
}

/// One measured case of the etcd comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvCase {
    /// Which server.
    pub system: System,
    /// Which load.
    pub workload: Workload,
    /// wrk connections.
    pub connections: usize,
    /// The figures (medians over the rounds).
    #[serde(flatten)]
    pub figures: Figures,
    /// Operations per second of each round, in the order they ran.
    pub rounds_ops_per_sec: Vec<f64>,
}

/// One measured case of the TLS comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsCase {
    /// `plain` or `tls`.
    pub transport: &'static str,
    /// wrk connections.
    pub connections: usize,
    /// The figures (writes).
    #[serde(flatten)]
    pub figures: Figures,
}

struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A CA and one certificate per node for 127.0.0.1, as PEM files in `dir`.
    fn make(dir: &Path, nodes: usize) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf whose subject equals its issuer's looks self-signed to
        // OpenSSL (curl).
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "craft-kv bench CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        for i in 1..=nodes {
            let key = KeyPair::generate()?;
            let cert =
                CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
            std::fs::write(dir.join(format!("n{i}.pem")), cert.pem())?;
            std::fs::write(dir.join(format!("n{i}.key")), key.serialize_pem())?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn args(&self, node: usize) -> Vec<String> {
        let p = |name: String| self.dir.join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            p(format!("n{node}.pem")),
            "--tls-key".into(),
            p(format!("n{node}.key")),
            "--tls-ca".into(),
            p("ca.pem".into()),
        ]
    }
}

/// Running craft-kv nodes; dropping it kills them and removes their data.
type KvCluster = Processes;

fn http_port(i: usize) -> u16 {
    BASE + 10 * i as u16
}

fn start(bin: &Path, dir: &Path, nodes: usize, certs: Option<&Certs>) -> anyhow::Result<KvCluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let list = |raft: bool| {
        (1..=nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", http_port(i) + u16::from(raft)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cluster = KvCluster::default();
    for i in 1..=nodes {
        let log_path = dir.join(format!("n{i}.log"));
        let data = dir.join(format!("n{i}"));
        let mut cmd = Command::new(bin);
        cmd.args(["--id", &i.to_string()])
            .args(["--haddr", &format!("127.0.0.1:{}", http_port(i))])
            .args(["--raddr", &format!("127.0.0.1:{}", http_port(i) + 1)])
            .args(["--peers", &list(true), "--hpeers", &list(false)])
            .args(["--tick-ms", &TICK_MS.to_string()]);
        if let Some(c) = certs {
            cmd.args(c.args(i));
        }
        cmd.arg(&data).env("RUST_LOG", "warn");
        cluster.spawn(&mut cmd, data, log_path)?;
    }
    Ok(cluster)
}

/// `GET /status` of node `i` through curl: the leader id it reports.
fn leader_of(i: usize, certs: Option<&Certs>) -> Option<usize> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "1"]);
    let url = match certs {
        Some(c) => {
            cmd.args(["--cacert", &c.dir.join("ca.pem").display().to_string()]);
            format!("https://127.0.0.1:{}/status", http_port(i))
        }
        None => format!("http://127.0.0.1:{}/status", http_port(i)),
    };
    let out = cmd.arg(url).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["leader"].as_u64().map(|l| l as usize)
}

fn wait_leader(cluster: &mut KvCluster, certs: Option<&Certs>) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes = cluster.len();
    while Instant::now() < deadline {
        cluster.check_alive("craft-kv node")?;
        let seen: Vec<Option<usize>> = (1..=nodes).map(|i| leader_of(i, certs)).collect();
        if let Some(Some(l)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*l)) {
                return Ok(*l);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no leader agreed on within 30 s")
}

/// The ASCII key of the `n`-th mix key.
fn mix_key(n: usize) -> String {
    format!("mix{n:03}")
}

fn value() -> String {
    "v".repeat(VALUE_BYTES)
}

/// The Lua string literal of `s` (ASCII without quotes or backslashes here).
fn lua_str(s: &str) -> String {
    format!("\"{s}\"")
}

/// The wrk script of one system and load. Both systems get the same keys, values,
/// thread ids, counters and random choices; only the request encoding differs.
fn lua_script(system: System, workload: Workload) -> String {
    let mut s = format!(
        "-- Generated by `cargo xtask bench --kv`: {}, {}.\n",
        system.name(),
        workload.label()
    );
    s.push_str(
        r#"local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local run = 0
local counter = 0
function init(args)
  run = (tonumber(args[1]) or 0) % 1000
  math.randomseed(run * 1000 + tid)
end
local headers = {["Content-Type"] = "application/json"}
"#,
    );
    match system {
        System::CraftKv => {
            s.push_str(&format!("local VALUE = {}\n", lua_str(&value())));
            s.push_str(
                r#"local function put(key)
  return wrk.format("POST", "/key", headers, '{"' .. key .. '":"' .. VALUE .. '"}')
end
local function get(key)
  return wrk.format("GET", "/key/" .. key)
end
local function write_key(c)
  return string.format("key%03d%03d%09d", run, tid, c)
end
local function mix_key(n)
  return string.format("mix%03d", n)
end
"#,
            );
        }
        System::Etcd => {
            // B[n]: base64 of the 3 ASCII digits of n.
            let groups: Vec<String> = (0..1000)
                .map(|n| lua_str(&etcd::base64(format!("{n:03}").as_bytes())))
                .collect();
            s.push_str(&format!("local B = {{[0] = {}}}\n", groups.join(", ")));
            s.push_str(&format!(
                "local KEY = {}\nlocal MIX = {}\nlocal VALUE = {}\n",
                lua_str(&etcd::base64(b"key")),
                lua_str(&etcd::base64(b"mix")),
                lua_str(&etcd::base64(value().as_bytes())),
            ));
            s.push_str(
                r#"local function put(key)
  return wrk.format("POST", "/v3/kv/put", headers, '{"key":"' .. key .. '","value":"' .. VALUE .. '"}')
end
local function get(key)
  return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
end
local function write_key(c)
  return KEY .. B[run] .. B[tid] .. B[math.floor(c / 1000000) % 1000] .. B[math.floor(c / 1000) % 1000] .. B[c % 1000]
end
local function mix_key(n)
  return MIX .. B[n]
end
"#,
            );
        }
    }
    match workload {
        Workload::Write => s.push_str(
            r#"request = function()
  counter = counter + 1
  return put(write_key(counter))
end
"#,
        ),
        Workload::Mix => s.push_str(&format!(
            r#"request = function()
  counter = counter + 1
  local n = math.random(0, {last})
  if counter % 10 == 0 then
    return put(mix_key(n))
  end
  return get(mix_key(n))
end
"#,
            last = MIX_KEYS - 1
        )),
    }
    s
}

/// The request bodies that write every mix key, `PREFILL_BATCH` keys each.
fn prefill_bodies(system: System) -> Vec<String> {
    let keys: Vec<usize> = (0..MIX_KEYS).collect();
    let v = value();
    let v64 = etcd::base64(v.as_bytes());
    keys.chunks(PREFILL_BATCH)
        .map(|chunk| match system {
            System::CraftKv => {
                let map: serde_json::Map<String, serde_json::Value> = chunk
                    .iter()
                    .map(|n| (mix_key(*n), serde_json::Value::from(v.clone())))
                    .collect();
                serde_json::Value::Object(map).to_string()
            }
            System::Etcd => {
                let ops: Vec<serde_json::Value> = chunk
                    .iter()
                    .map(|n| {
                        serde_json::json!({"requestPut": {
                            "key": etcd::base64(mix_key(*n).as_bytes()),
                            "value": v64,
                        }})
                    })
                    .collect();
                serde_json::json!({ "success": ops }).to_string()
            }
        })
        .collect()
}

/// Writes every mix key through `url` (the leader).
fn prefill(system: System, url: &str) -> anyhow::Result<()> {
    let path = match system {
        System::CraftKv => "/key",
        System::Etcd => "/v3/kv/txn",
    };
    for body in prefill_bodies(system) {
        let (code, answer) = etcd::post(&format!("{url}{path}"), &body, Duration::from_secs(10))?;
        if code != 200 {
            bail!("writing the mix keys to {url}{path}: {code} {answer}");
        }
    }
    Ok(())
}

/// A latency line of wrk's `--latency` distribution, in ms.
fn wrk_ms(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
    let v = line.split_whitespace().nth(1)?;
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * factor)
}

/// Requests/s, p50, p99 and non-2xx answers from wrk's output. Socket errors
/// (`connect`, `read`, `write`, `timeout`) count as errors too.
fn parse_wrk(text: &str) -> Option<Figures> {
    let ops_per_sec = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let non_2xx: u64 = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // "  Socket errors: connect 0, read 0, write 0, timeout 12"
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Some(Figures {
        ops_per_sec,
        p50_ms: wrk_ms(text, "50%")?,
        p99_ms: wrk_ms(text, "99%")?,
        errors: non_2xx + socket,
    })
}

fn run_wrk(
    script: &Path,
    url: &str,
    connections: usize,
    secs: u64,
    run: u32,
) -> anyhow::Result<String> {
    let out = Command::new("wrk")
        .args(["-t", &connections.clamp(1, 2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency", "--timeout", "5s"])
        .args(["-s", &script.display().to_string()])
        .arg(url)
        // The script's `init(args)`: a run number, so that every run writes fresh keys.
        .args(["--", &run.to_string()])
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

/// Each figure's median over the rounds; errors are summed.
fn median_figures(rounds: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
    Figures {
        ops_per_sec: m(|f| f.ops_per_sec),
        p50_ms: m(|f| f.p50_ms),
        p99_ms: m(|f| f.p99_ms),
        errors: rounds.iter().map(|f| f.errors).sum(),
    }
}

/// Runs the KV cases and prints the table.
pub fn run(root: &Path, opts: &Options<'_>) -> anyhow::Result<()> {
    if (opts.tls || opts.driver == Driver::Wrk)
        && Command::new("wrk").arg("--version").output().is_err()
    {
        bail!("wrk is not installed: apt-get install -y wrk");
    }
    if Command::new("curl").arg("--version").output().is_err() {
        bail!("curl is not installed: apt-get install -y curl");
    }
    let out = root.join("target").join("bench").join("kv");
    std::fs::create_dir_all(&out)?;
    if opts.tls {
        run_tls(root, &out, opts)
    } else {
        run_vs_etcd(root, &out, opts)
    }
}

/// The state shared by the cases of one run.
struct Bench<'a> {
    opts: &'a Options<'a>,
    out: PathBuf,
    etcd: Option<PathBuf>,
    /// wrk runs so far: each run writes keys of its own.
    runs: Cell<u32>,
}

/// A running cluster of either system.
enum Running {
    CraftKv(KvCluster),
    Etcd(etcd::EtcdCluster),
}

impl Running {
    /// Fails if a member has exited: figures of a cluster that lost a member mean
    /// nothing.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Running::CraftKv(c) => c.check_alive("craft-kv node"),
            Running::Etcd(c) => c.check_alive(),
        }
    }
}

impl Bench<'_> {
    fn script(&self, system: System, workload: Workload) -> PathBuf {
        self.out.join(format!(
            "{}-{}.lua",
            system.name(),
            match workload {
                Workload::Write => "write",
                Workload::Mix => "mix",
            }
        ))
    }

    fn next_run(&self) -> u32 {
        let r = self.runs.get();
        self.runs.set(r + 1);
        r
    }

    /// A fresh cluster of `system`, the leader's URL once all members agree on it.
    fn start(&self, system: System) -> anyhow::Result<(Running, String)> {
        let dir = self.out.join(system.name());
        match system {
            System::CraftKv => {
                let mut cluster = start(self.opts.kv_bin, &dir, MEMBERS, None)?;
                let leader = wait_leader(&mut cluster, None)?;
                let url = format!("http://127.0.0.1:{}", http_port(leader));
                Ok((Running::CraftKv(cluster), url))
            }
            System::Etcd => {
                let bin = self.etcd.as_deref().context("etcd is not installed")?;
                let mut cluster = etcd::EtcdCluster::start(bin, &dir, MEMBERS, ETCD_BASE)?;
                let url = cluster.wait_leader(Duration::from_secs(30))?;
                Ok((Running::Etcd(cluster), url))
            }
        }
    }

    /// One case on a fresh cluster: warm-up, then `secs` measured.
    fn measure(
        &self,
        system: System,
        workload: Workload,
        connections: usize,
    ) -> anyhow::Result<Figures> {
        let (mut running, url) = self.start(system)?;
        if workload == Workload::Mix {
            prefill(system, &url)?;
        }
        if self.opts.driver == Driver::Native {
            let addr: std::net::SocketAddr = url
                .trim_start_matches("http://")
                .parse()
                .with_context(|| format!("the leader's address {url}"))?;
            let figures = kv_load::run(&kv_load::Load {
                target: match system {
                    System::CraftKv => kv_load::Target::CraftKv(addr),
                    System::Etcd => kv_load::Target::Etcd(addr),
                },
                workload,
                clients: connections,
                warmup: Duration::from_secs(WARMUP_SECS),
                measure: Duration::from_secs(self.opts.secs),
                run: self.next_run(),
                value: value().into_bytes(),
                mix_keys: MIX_KEYS,
            })?;
            running.check_alive()?;
            return Ok(figures);
        }
        let script = self.script(system, workload);
        run_wrk(&script, &url, connections, WARMUP_SECS, self.next_run())?;
        let text = run_wrk(&script, &url, connections, self.opts.secs, self.next_run())?;
        running.check_alive()?;
        drop(running);
        parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}"))
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

fn print_kv_header(etcd_version: Option<&str>) {
    let etcd = etcd_version.map_or_else(|| "etcd (not run)".to_string(), |v| format!("etcd {v}"));
    println!(
        "{:<10} {:>5} | {:^26} | {:^26} | {:^20}",
        "", "", "craft-kv", etcd, "craft-kv / etcd"
    );
    println!(
        "{:<10} {:>5} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6}",
        "case",
        "conns",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "ops/s",
        "p50",
        "p99"
    );
}

fn print_kv_row(workload: Workload, connections: usize, ours: &Figures, theirs: Option<&Figures>) {
    let figures = |f: Option<&Figures>| match f {
        Some(f) => format!("{:>8.0} {:>8.2} {:>8.2}", f.ops_per_sec, f.p50_ms, f.p99_ms),
        None => format!("{:>8} {:>8} {:>8}", "-", "-", "-"),
    };
    let ratios = match theirs {
        Some(t) => format!(
            "{:>5.2}x {:>5.2}x {:>5.2}x",
            ratio(ours.ops_per_sec, t.ops_per_sec),
            ratio(ours.p50_ms, t.p50_ms),
            ratio(ours.p99_ms, t.p99_ms)
        ),
        None => format!("{:>6} {:>6} {:>6}", "-", "-", "-"),
    };
    println!(
        "{:<10} {connections:>5} | {} | {} | {ratios}",
        workload.label(),
        figures(Some(ours)),
        figures(theirs)
    );
}

/// Each case's ops/s round by round, and each round's ratio to etcd's in the same
/// round (rounds alternate the systems, so a round's pair ran minutes apart at most):
/// the spread behind the medians, and the worst round's ratio.
fn print_rounds(results: &[KvCase]) {
    println!("ops/s per round (craft-kv; etcd; ratio of each round's pair, lowest first):");
    for line in round_lines(results) {
        println!("{line}");
    }
}

fn round_lines(results: &[KvCase]) -> Vec<String> {
    let mut lines = Vec::new();
    for ours in results.iter().filter(|r| r.system == System::CraftKv) {
        let theirs = results.iter().find(|r| {
            r.system == System::Etcd
                && r.workload == ours.workload
                && r.connections == ours.connections
        });
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!(
            "  {} {:>3}: {}",
            ours.workload.label(),
            ours.connections,
            list(&ours.rounds_ops_per_sec)
        );
        if let Some(theirs) = theirs {
            let mut paired: Vec<f64> = ours
                .rounds_ops_per_sec
                .iter()
                .zip(&theirs.rounds_ops_per_sec)
                .map(|(a, b)| ratio(*a, *b))
                .collect();
            paired.sort_by(f64::total_cmp);
            let paired: Vec<String> = paired.iter().map(|r| format!("{r:.2}x")).collect();
            line.push_str(&format!(
                "; {}; {}",
                list(&theirs.rounds_ops_per_sec),
                paired.join(", ")
            ));
        }
        lines.push(line);
    }
    lines
}

fn run_vs_etcd(root: &Path, out: &Path, opts: &Options<'_>) -> anyhow::Result<()> {
    let etcd_bin = etcd::find(opts.etcd);
    let etcd_version = etcd_bin.as_deref().and_then(etcd::version);
    match (&etcd_bin, opts.etcd) {
        (None, Some(p)) => bail!("no etcd binary at {}", p.display()),
        (None, None) => println!(
            "\netcd is not installed (looked for `etcd` on PATH; or pass --etcd PATH): {}\n\
             running craft-kv alone",
            etcd::INSTALL_HINT
        ),
        (Some(_), _) => {}
    }
    let mut systems = vec![System::CraftKv];
    if etcd_bin.is_some() {
        systems.push(System::Etcd);
    }
    let bench = Bench {
        opts,
        out: out.to_path_buf(),
        etcd: etcd_bin.clone(),
        runs: Cell::new(0),
    };
    for &system in &systems {
        for workload in [Workload::Write, Workload::Mix] {
            std::fs::write(bench.script(system, workload), lua_script(system, workload))?;
        }
    }
    let rounds = opts.rounds.max(1);
    println!(
        "\nkv bench: {MEMBERS} members each on loopback, fsync on, {} at the leader, \
         {VALUE_BYTES}-byte values, {} s per case after a {WARMUP_SECS} s warm-up, a fresh cluster per case{}",
        match opts.driver {
            Driver::Native => "closed-loop clients (conns = clients) in xtask",
            Driver::Wrk => "wrk over HTTP/1.1",
        },
        opts.secs,
        if rounds > 1 {
            format!(", median of {rounds} rounds")
        } else {
            String::new()
        }
    );
    println!(
        "  craft-kv: tick {TICK_MS} ms, heartbeat 3 ticks ({} ms), election 10-20 ticks ({}-{} ms){}",
        3 * TICK_MS,
        10 * TICK_MS,
        20 * TICK_MS,
        if opts.debug {
            " -- DEBUG build, figures not representative"
        } else {
            ""
        }
    );
    if let Some(v) = &etcd_version {
        println!(
            "  etcd {v}: --heartbeat-interval {} --election-timeout {} ({}-{} ms) --pre-vote, \
             {}",
            etcd::HEARTBEAT_MS,
            etcd::ELECTION_MS,
            etcd::ELECTION_MS,
            2 * etcd::ELECTION_MS,
            match opts.driver {
                Driver::Native => format!(
                    "its gRPC API (KV/Put, KV/Range), one connection per {} clients",
                    kv_load::ETCD_CLIENTS_PER_CONN
                ),
                Driver::Wrk => "HTTP/JSON gRPC gateway (/v3/kv/put, /v3/kv/range)".to_string(),
            }
        );
    }
    println!(
        "  write: fresh keys; mix 90/10: 90% linearizable reads, 10% writes over {MIX_KEYS} keys written before"
    );
    print_kv_header(etcd_version.as_deref());
    let cases: Vec<(Workload, usize)> = opts
        .write_connections
        .iter()
        .map(|&c| (Workload::Write, c))
        .chain(opts.mix_connections.iter().map(|&c| (Workload::Mix, c)))
        .collect();
    let mut results: Vec<KvCase> = Vec::new();
    let mut ratios = Vec::new();
    for &(workload, connections) in &cases {
        let mut all: Vec<Vec<Figures>> = vec![Vec::new(); systems.len()];
        for _ in 0..rounds {
            for (i, &system) in systems.iter().enumerate() {
                all[i].push(bench.measure(system, workload, connections)?);
            }
        }
        let medians: Vec<Figures> = all.iter().map(|f| median_figures(f)).collect();
        for ((&system, figures), rounds) in systems.iter().zip(&medians).zip(&all) {
            results.push(KvCase {
                system,
                workload,
                connections,
                figures: *figures,
                rounds_ops_per_sec: rounds.iter().map(|f| f.ops_per_sec).collect(),
            });
        }
        print_kv_row(workload, connections, &medians[0], medians.get(1));
        if let [ours, theirs] = medians.as_slice() {
            ratios.push(serde_json::json!({
                "workload": workload,
                "connections": connections,
                "ops_per_sec": ratio(ours.ops_per_sec, theirs.ops_per_sec),
                "p50": ratio(ours.p50_ms, theirs.p50_ms),
                "p99": ratio(ours.p99_ms, theirs.p99_ms),
            }));
        }
    }
    if rounds > 1 {
        print_rounds(&results);
    }
    let failed: Vec<&KvCase> = results.iter().filter(|r| r.figures.errors > 0).collect();
    if !failed.is_empty() {
        println!("errors (non-2xx answers and socket errors; the figures above count them):");
        for r in failed {
            println!(
                "  {} {} {} connections: {}",
                r.system.name(),
                r.workload.label(),
                r.connections,
                r.figures.errors
            );
        }
    }
    let path = root.join("target").join("bench").join("kv.json");
    let json = serde_json::json!({
        "setup": {
            "members": MEMBERS,
            "secs": opts.secs,
            "warmup_secs": WARMUP_SECS,
            "rounds": rounds,
            "value_bytes": VALUE_BYTES,
            "mix_keys": MIX_KEYS,
            "mix_read_percent": 90,
            "craft_kv": {
                "debug_build": opts.debug,
                "tick_ms": TICK_MS,
                "heartbeat_ms": 3 * TICK_MS,
                "election_ms": [10 * TICK_MS, 20 * TICK_MS],
            },
            "etcd": etcd_version.as_ref().map(|v| serde_json::json!({
                "version": v,
                "heartbeat_interval_ms": etcd::HEARTBEAT_MS,
                "election_ms": [etcd::ELECTION_MS, 2 * etcd::ELECTION_MS],
                "api": "HTTP/JSON gRPC gateway",
            })),
        },
        "cases": results,
        "ratios_craft_kv_over_etcd": ratios,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// craft-kv with TLS off and on, writes only.
fn run_tls(root: &Path, out: &Path, opts: &Options<'_>) -> anyhow::Result<()> {
    let script = out.join("craft-kv-write.lua");
    std::fs::write(&script, lua_script(System::CraftKv, Workload::Write))?;
    let certs = Certs::make(&out.join("certs"), MEMBERS)?;
    let runs = Cell::new(0u32);
    let next_run = || {
        let r = runs.get();
        runs.set(r + 1);
        r
    };
    println!(
        "\nkv bench: {MEMBERS} craft-kv nodes, fsync on, tick {TICK_MS} ms, wrk writing {VALUE_BYTES}-byte values to the leader, {} s per case{}",
        opts.secs,
        if opts.debug { " (DEBUG build)" } else { "" }
    );
    println!(
        "{:<8} {:>6} {:>10} {:>9} {:>9} {:>7}",
        "", "conns", "writes/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results = Vec::new();
    for &c in opts.write_connections {
        for (transport, tls) in [("plain", None), ("tls", Some(&certs))] {
            let mut cluster = start(opts.kv_bin, &out.join(transport), MEMBERS, tls)?;
            let leader = wait_leader(&mut cluster, tls)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{}", http_port(leader));
            run_wrk(&script, &url, c, WARMUP_SECS, next_run())?;
            let text = run_wrk(&script, &url, c, opts.secs, next_run())?;
            drop(cluster);
            let f = parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}"))?;
            println!(
                "{transport:<8} {c:>6} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                f.ops_per_sec, f.p50_ms, f.p99_ms, f.errors
            );
            results.push(TlsCase {
                transport,
                connections: c,
                figures: f,
            });
        }
    }
    println!("\nTLS on / off:");
    for &c in opts.write_connections {
        let find = |t: &str| {
            results
                .iter()
                .find(|r| r.transport == t && r.connections == c)
        };
        if let (Some(p), Some(t)) = (find("plain"), find("tls")) {
            println!(
                "{c:>3} connections: writes/s {:.2}x, p99 {:.2}x",
                t.figures.ops_per_sec / p.figures.ops_per_sec,
                t.figures.p99_ms / p.figures.p99_ms
            );
        }
    }
    let path = root.join("target").join("bench").join("kv-tls.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 2s test @ http://127.0.0.1:1\n  Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%   12.50ms\n  2000 requests in 2.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:   1000.50\nTransfer/sec:    0.50MB\n";
        let f = parse_wrk(text).unwrap_or_default();
        assert!((f.ops_per_sec - 1000.5).abs() < 1e-9);
        assert!((f.p50_ms - 0.812).abs() < 1e-9);
        assert!((f.p99_ms - 12.5).abs() < 1e-9);
        assert_eq!(f.errors, 3);
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn reads_wrk_output_with_socket_errors_and_seconds() {
        // A real wrk 4.2 report, trimmed, with p99 in seconds and socket errors.
        let text = "Running 2s test @ http://127.0.0.1:17210\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    20.10ms   40.00ms   1.20s    95.00%\n    Req/Sec     1.60k   200.00     2.00k    70.00%\n  Latency Distribution\n     50%   10.05ms\n     75%   20.00ms\n     90%   40.00ms\n     99%    1.02s \n  6400 requests in 2.00s, 2.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 12\nRequests/sec:   3200.00\nTransfer/sec:      1.00MB\n";
        let f = parse_wrk(text).unwrap_or_default();
        assert!((f.ops_per_sec - 3200.0).abs() < 1e-9);
        assert!((f.p50_ms - 10.05).abs() < 1e-9);
        assert!((f.p99_ms - 1020.0).abs() < 1e-9);
        assert_eq!(f.errors, 13);
    }

    #[test]
    fn medians_of_rounds() {
        let f = |ops, p99, errors| Figures {
            ops_per_sec: ops,
            p50_ms: 1.0,
            p99_ms: p99,
            errors,
        };
        let m = median_figures(&[f(100.0, 9.0, 0), f(300.0, 3.0, 1), f(200.0, 5.0, 2)]);
        assert_eq!(m.ops_per_sec, 200.0);
        assert_eq!(m.p99_ms, 5.0);
        assert_eq!(m.errors, 3);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn rounds_are_paired_with_etcd_and_the_lowest_ratio_comes_first() {
        let case = |system, rounds: &[f64]| KvCase {
            system,
            workload: Workload::Write,
            connections: 16,
            figures: Figures::default(),
            rounds_ops_per_sec: rounds.to_vec(),
        };
        let lines = round_lines(&[
            case(System::CraftKv, &[800.0, 900.0, 600.0]),
            case(System::Etcd, &[400.0, 300.0, 400.0]),
        ]);
        assert_eq!(
            lines,
            ["  write  16: 800, 900, 600; 400, 300, 400; 1.50x, 2.00x, 3.00x"]
        );
        // Without etcd, only our rounds.
        let lines = round_lines(&[case(System::CraftKv, &[800.0, 900.0])]);
        assert_eq!(lines, ["  write  16: 800, 900"]);
    }

    /// What the etcd scripts compute in Lua, `write_key` and `mix_key`, done the same way
    /// here: it must equal base64 of the ASCII key craft-kv gets.
    #[test]
    fn base64_of_key_groups_is_base64_of_the_key() {
        let b = |n: u64| etcd::base64(format!("{n:03}").as_bytes());
        for (run, tid, c) in [(0u64, 1u64, 1u64), (7, 2, 123_456_789), (999, 2, 1_000)] {
            let ascii = format!("key{run:03}{tid:03}{c:09}");
            let composed = format!(
                "{}{}{}{}{}{}",
                etcd::base64(b"key"),
                b(run),
                b(tid),
                b((c / 1_000_000) % 1000),
                b((c / 1000) % 1000),
                b(c % 1000)
            );
            assert_eq!(composed, etcd::base64(ascii.as_bytes()));
        }
        for n in [0, 42, 999] {
            assert_eq!(
                format!("{}{}", etcd::base64(b"mix"), b(n as u64)),
                etcd::base64(mix_key(n).as_bytes())
            );
        }
    }

    #[test]
    fn scripts_carry_the_same_load() {
        let etcd_write = lua_script(System::Etcd, Workload::Write);
        assert!(etcd_write.contains("/v3/kv/put"));
        // The table of 3-digit groups, from 000 to 999.
        assert!(etcd_write.contains(r#"local B = {[0] = "MDAw", "MDAx""#));
        assert!(etcd_write.contains(r#""OTk5"}"#));
        assert!(etcd_write.contains(&etcd::base64(value().as_bytes())));
        let kv_mix = lua_script(System::CraftKv, Workload::Mix);
        assert!(kv_mix.contains(r#"wrk.format("GET", "/key/" .. key)"#));
        assert!(kv_mix.contains("math.random(0, 999)"));
        let etcd_mix = lua_script(System::Etcd, Workload::Mix);
        assert!(etcd_mix.contains("/v3/kv/range"));
        // Same choice of reads and writes in both.
        for s in [&kv_mix, &etcd_mix] {
            assert!(s.contains("if counter % 10 == 0 then\n    return put(mix_key(n))"));
        }
    }

    #[test]
    fn prefill_writes_every_mix_key_once() {
        let kv = prefill_bodies(System::CraftKv);
        assert_eq!(kv.len(), MIX_KEYS.div_ceil(PREFILL_BATCH));
        let mut keys = 0;
        for body in &kv {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let map = v.as_object().cloned().unwrap_or_default();
            keys += map.len();
            assert!(map
                .values()
                .all(|v| v.as_str().map(str::len) == Some(VALUE_BYTES)));
        }
        assert_eq!(keys, MIX_KEYS);
        let etcd_bodies = prefill_bodies(System::Etcd);
        let first: serde_json::Value = serde_json::from_str(&etcd_bodies[0]).unwrap_or_default();
        let ops = first["success"].as_array().cloned().unwrap_or_default();
        // etcd's --max-txn-ops defaults to 128.
        assert!(ops.len() <= 128 && !ops.is_empty());
        assert_eq!(ops[0]["requestPut"]["key"], etcd::base64(b"mix000"));
    }
}
