//! `cargo xtask bench --kv`: a 3-node `craft-kv` cluster (optimised build, fsync on)
//! driven by `wrk` over HTTP, with TLS off and with TLS on (mutual TLS between members,
//! HTTPS for the client), side by side: writes/s and latency at 1, 16 and 64
//! connections writing 256-byte values to the leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Base port: node i (1-based) listens on `BASE + 10 i` (HTTP) and `BASE + 10 i + 1`
/// (raft).
const BASE: u16 = 17100;

/// One measured case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvResult {
    /// `plain` or `tls`.
    pub transport: &'static str,
    /// wrk connections.
    pub connections: usize,
    /// Completed writes per second.
    pub writes_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Answers that were not 2xx/3xx.
    pub errors: u64,
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

struct Cluster {
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_port(i: usize) -> u16 {
    BASE + 10 * i as u16
}

fn start(bin: &Path, dir: &Path, nodes: usize, certs: Option<&Certs>) -> anyhow::Result<Cluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let list = |raft: bool| {
        (1..=nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", http_port(i) + u16::from(raft)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cluster = Cluster {
        children: Vec::new(),
    };
    for i in 1..=nodes {
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--id", &i.to_string()])
            .args(["--haddr", &format!("127.0.0.1:{}", http_port(i))])
            .args(["--raddr", &format!("127.0.0.1:{}", http_port(i) + 1)])
            .args(["--peers", &list(true), "--hpeers", &list(false)])
            .args(["--tick-ms", "50"]);
        if let Some(c) = certs {
            cmd.args(c.args(i));
        }
        cmd.arg(dir.join(format!("n{i}")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        cluster.children.push(
            cmd.spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
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

fn wait_leader(nodes: usize, certs: Option<&Certs>) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
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

const SCRIPT: &str = r#"
local counter = 0
local value = string.rep("v", 256)
request = function()
  counter = counter + 1
  local body = '{"k' .. (counter % 10000) .. '_' .. math.random(1000000) .. '":"' .. value .. '"}'
  return wrk.format("POST", "/key", {["Content-Type"] = "application/json"}, body)
end
"#;

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

fn parse_wrk(text: &str) -> Option<(f64, f64, f64, u64)> {
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Some((rps, wrk_ms(text, "50%")?, wrk_ms(text, "99%")?, errors))
}

fn run_wrk(script: &Path, url: &str, connections: usize, secs: u64) -> anyhow::Result<String> {
    let out = Command::new("wrk")
        .args(["-t", &connections.clamp(1, 2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency", "--timeout", "5s"])
        .args(["-s", &script.display().to_string()])
        .arg(url)
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

/// Runs the KV cases with `kv_bin` and prints the table.
pub fn run(root: &Path, kv_bin: &Path, secs: u64, connections: &[usize]) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install -y wrk");
    }
    let out = root.join("target").join("bench").join("kv");
    std::fs::create_dir_all(&out)?;
    let script = out.join("write.lua");
    std::fs::write(&script, SCRIPT)?;
    let certs = Certs::make(&out.join("certs"), 3)?;
    println!(
        "\nkv bench: 3 craft-kv nodes, fsync on, tick 50 ms, wrk writing 256-byte values to the leader, {secs} s per case"
    );
    println!(
        "{:<8} {:>6} {:>10} {:>9} {:>9} {:>7}",
        "", "conns", "writes/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results = Vec::new();
    for &c in connections {
        for (transport, tls) in [("plain", None), ("tls", Some(&certs))] {
            let cluster = start(kv_bin, &out.join(transport), 3, tls)?;
            let leader = wait_leader(3, tls)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{}", http_port(leader));
            // Warm up: connections, leases, the RocksDB memtable.
            run_wrk(&script, &url, c, 2)?;
            let text = run_wrk(&script, &url, c, secs)?;
            drop(cluster);
            let (rps, p50, p99, errors) =
                parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}"))?;
            println!("{transport:<8} {c:>6} {rps:>10.0} {p50:>9.2} {p99:>9.2} {errors:>7}");
            results.push(KvResult {
                transport,
                connections: c,
                writes_per_sec: rps,
                p50_ms: p50,
                p99_ms: p99,
                errors,
            });
        }
    }
    println!("\nTLS on / off:");
    for &c in connections {
        let find = |t: &str| {
            results
                .iter()
                .find(|r| r.transport == t && r.connections == c)
        };
        if let (Some(p), Some(t)) = (find("plain"), find("tls")) {
            println!(
                "{c:>3} connections: writes/s {:.2}x, p99 {:.2}x",
                t.writes_per_sec / p.writes_per_sec,
                t.p99_ms / p.p99_ms
            );
        }
    }
    let path = out.join("kv.json");
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
        let (rps, p50, p99, errors) = parse_wrk(text).unwrap_or_default();
        assert!((rps - 1000.5).abs() < 1e-9);
        assert!((p50 - 0.812).abs() < 1e-9);
        assert!((p99 - 12.5).abs() < 1e-9);
        assert_eq!(errors, 3);
        assert!(parse_wrk("garbage").is_none());
    }
}
