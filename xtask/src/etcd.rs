//! A 3-member etcd cluster on loopback for `cargo xtask bench --kv`: started from Debian's
//! `etcd` binary (`apt-get install -y etcd-server`), fsync on (etcd's default; no
//! `--unsafe-no-fsync`), killed and its data removed when the guard is dropped.
//!
//! Everything is reached over etcd's HTTP/JSON gRPC gateway (`/v3/...`) with curl, the
//! same way the bench reaches `craft-kv`: no `etcdctl` needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::harness::Processes;

/// etcd's tick (`--heartbeat-interval`), ms: etcd refuses an election timeout under 5
/// ticks, so 100 ms is the longest tick with a 500 ms election timeout.
pub const HEARTBEAT_MS: u64 = 100;
/// `--election-timeout`, ms; etcd draws each timeout in `[500, 1000)` ms, like craft-kv's
/// 10–20 ticks of 50 ms.
pub const ELECTION_MS: u64 = 500;

/// How to get etcd on Debian and Ubuntu.
pub const INSTALL_HINT: &str = "apt-get install -y etcd-server";

/// The etcd binary: `explicit`, else `etcd` on `PATH`.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// The first line of `etcd --version`, e.g. `etcd Version: 3.4.23`.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("etcd Version:"))
        .map(|l| l.trim_start_matches("etcd Version:").trim().to_string())
}

/// Standard base64 with padding (RFC 4648), as etcd's JSON gateway wants for bytes.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What `/v3/maintenance/status` says about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The answering member's id.
    pub member_id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
}

/// A 64-bit id as the gateway writes it (a JSON string) or as `etcdctl -w json` writes it
/// (a number).
fn id(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Parses an answer of `POST /v3/maintenance/status`, or one element of
/// `etcdctl endpoint status -w json` (which nests it under `Status`).
pub fn parse_status(text: &str) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let v = if v.get("Status").is_some() {
        &v["Status"]
    } else {
        &v
    };
    Some(Status {
        member_id: id(&v["header"]["member_id"])?,
        leader: v.get("leader").and_then(id).unwrap_or(0),
    })
}

/// `POST body` to `url` with curl: the status code and the answer.
pub fn post(url: &str, body: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    use std::io::Write;
    let mut child = Command::new("curl")
        .args([
            "-s",
            "-L",
            "--max-time",
            &timeout.as_secs().max(1).to_string(),
        ])
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .args(["--data-binary", "@-", "-w", "\n%{http_code}"])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running curl (apt-get install -y curl)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    Ok((code, answer.to_string()))
}

/// A running etcd cluster; dropping it kills the members and removes their data.
pub struct EtcdCluster {
    procs: Processes,
    /// `http://127.0.0.1:port` of each member, in member order.
    pub client_urls: Vec<String>,
}

impl EtcdCluster {
    /// Starts `members` etcd members in `dir` (data in `dir/eN`, logs in `dir/eN.log`);
    /// member i (1-based) serves clients on `base + 10 i` and peers on `base + 10 i + 1`.
    pub fn start(bin: &Path, dir: &Path, members: usize, base: u16) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let port = |i: usize, peer: bool| base + 10 * i as u16 + u16::from(peer);
        let initial = (1..=members)
            .map(|i| format!("e{i}=http://127.0.0.1:{}", port(i, true)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            procs: Processes::default(),
            client_urls: Vec::new(),
        };
        for i in 1..=members {
            let client = format!("http://127.0.0.1:{}", port(i, false));
            let peer = format!("http://127.0.0.1:{}", port(i, true));
            let data = dir.join(format!("e{i}"));
            let log_path = dir.join(format!("e{i}.log"));
            let mut cmd = Command::new(bin);
            cmd.args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "craft-kv-bench"])
                .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
                .args(["--election-timeout", &ELECTION_MS.to_string()])
                // Like craft-kv (pre-vote on; check-quorum is always on in etcd).
                .arg("--pre-vote")
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .args(["--log-level", "warn"]);
            cluster.procs.spawn(&mut cmd, data, log_path)?;
            cluster.client_urls.push(client);
        }
        Ok(cluster)
    }

    /// Fails if a member has exited (a port in use, a bad flag: see its log).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.check_alive("etcd member")
    }

    fn healthy(url: &str) -> bool {
        Command::new("curl")
            .args(["-s", "--max-time", "1"])
            .arg(format!("{url}/health"))
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .is_some_and(|v| v["health"] == "true")
    }

    fn status(url: &str) -> Option<Status> {
        let (code, text) = post(
            &format!("{url}/v3/maintenance/status"),
            "{}",
            Duration::from_secs(1),
        )
        .ok()?;
        (code == 200).then(|| parse_status(&text)).flatten()
    }

    /// Waits until every member is healthy and all name the same leader; returns the
    /// leader's client URL.
    pub fn wait_leader(&mut self, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.check_alive()?;
            let seen: Vec<Option<Status>> =
                self.client_urls.iter().map(|u| Self::status(u)).collect();
            if let Some(i) = leader_index(&seen) {
                if self.client_urls.iter().all(|u| Self::healthy(u)) {
                    return Ok(self.client_urls[i].clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the etcd cluster agreed on no leader within {within:?} (logs: {})",
            self.procs
                .logs()
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The index of the member that every member names as leader, if they all answered and
/// agree.
pub fn leader_index(seen: &[Option<Status>]) -> Option<usize> {
    let first = seen.first().copied().flatten()?;
    if first.leader == 0
        || !seen
            .iter()
            .all(|s| s.is_some_and(|s| s.leader == first.leader))
    {
        return None;
    }
    seen.iter()
        .position(|s| s.is_some_and(|s| s.member_id == first.leader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64(&[0u8; 256]).len(), 344);
    }

    #[test]
    fn reads_gateway_and_etcdctl_status() {
        // `POST /v3/maintenance/status` through the gateway: 64-bit ids as strings.
        let gateway = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"13668033151171901709","raftIndex":"5","raftTerm":"2","raftAppliedIndex":"5","dbSizeInUse":"20480"}"#;
        assert_eq!(
            parse_status(gateway),
            Some(Status {
                member_id: 13668033151171901709,
                leader: 13668033151171901709
            })
        );
        // One element of `etcdctl endpoint status -w json`: numbers, nested.
        let ctl = r#"{"Endpoint":"http://127.0.0.1:23791","Status":{"header":{"cluster_id":15118495548433857066,"member_id":42,"revision":3,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":7,"raftIndex":7,"raftTerm":2}}"#;
        assert_eq!(
            parse_status(ctl),
            Some(Status {
                member_id: 42,
                leader: 7
            })
        );
        // No leader yet: the gateway leaves the field out.
        let none = r#"{"header":{"member_id":"5"},"version":"3.4.23"}"#;
        assert_eq!(parse_status(none).map(|s| s.leader), Some(0));
        assert_eq!(parse_status("not json"), None);
        assert_eq!(parse_status("{}"), None);
    }

    #[test]
    fn leader_is_the_member_all_agree_on() {
        let s = |member_id, leader| Some(Status { member_id, leader });
        assert_eq!(leader_index(&[s(1, 2), s(2, 2), s(3, 2)]), Some(1));
        // Disagreement, no leader, or a silent member: not yet.
        assert_eq!(leader_index(&[s(1, 2), s(2, 3), s(3, 2)]), None);
        assert_eq!(leader_index(&[s(1, 0), s(2, 0), s(3, 0)]), None);
        assert_eq!(leader_index(&[s(1, 2), None, s(3, 2)]), None);
        // A leader that none of the answering members is.
        assert_eq!(leader_index(&[s(1, 9), s(2, 9)]), None);
        assert_eq!(leader_index(&[]), None);
    }
}
