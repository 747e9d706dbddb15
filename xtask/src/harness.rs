//! The harness every verb shares: building the workspace's binaries, starting processes
//! with their output in a log file, stopping them, and reading their metrics.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use craft_faultfs::temp::{in_ci, SKIP_LOG_ENV};
use std::sync::OnceLock;

/// How to build the service binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`: what tests and CI use.
    Debug,
    /// `release`.
    Release,
    /// `bench` (optimised like release): shares its RocksDB build with `cargo bench`.
    Bench,
}

impl Profile {
    /// The build figures come from: `Bench`, or `Debug` when `debug` (to check a command
    /// itself quickly, as CI does).
    pub fn for_figures(debug: bool) -> Self {
        if debug {
            Profile::Debug
        } else {
            Profile::Bench
        }
    }
}

/// Builds the service binaries and returns their directory.
pub fn build(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    build_profile(
        root,
        if release {
            Profile::Release
        } else {
            Profile::Debug
        },
    )
}

/// Builds the service binaries with `profile` and returns their directory.
pub fn build_profile(root: &Path, profile: Profile) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args(["build", "--quiet", "--workspace"]);
    match profile {
        // All targets: the same feature resolution as `cargo test --workspace`, so
        // RocksDB (whose build depends on every resolved feature below it) is compiled
        // once for the dev profile and shared with the tests.
        Profile::Debug => {
            cmd.arg("--all-targets");
        }
        // Only the binaries: the optimised profiles link with fat LTO, which would
        // otherwise be paid again for every test, bench and example target.
        Profile::Release => {
            cmd.args(["--bins", "--release"]);
        }
        Profile::Bench => {
            cmd.args(["--bins", "--profile", "bench"]);
        }
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(Path::new(target).join(if profile == Profile::Debug {
        "debug"
    } else {
        "release"
    }))
}

/// Whether process `pid` runs (a zombie does not).
pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is `Z`.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `sig` (`-TERM`, `-KILL`, ...) to `pid`, ignoring a process that is gone.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, then SIGKILL for what is still alive after `grace`; returns once every
/// process has exited (or 5 s after the SIGKILL, saying which did not), with the number
/// that were running.
pub fn stop_pids(pids: &[u32], grace: Duration) -> usize {
    let running: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    for &pid in &running {
        signal(pid, "-TERM");
    }
    let wait_all = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && running.iter().any(|p| pid_alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_all(grace);
    for &pid in &running {
        if pid_alive(pid) {
            signal(pid, "-KILL");
        }
    }
    wait_all(Duration::from_secs(5));
    for &pid in &running {
        if pid_alive(pid) {
            eprintln!("process {pid} is still running after SIGKILL");
        }
    }
    running.len()
}

/// SIGKILLs `pid` and waits until it has exited (a process in the middle of an fsync
/// exits when the call returns); an error naming `what` if it still runs after 30 s.
pub fn kill_and_wait(pid: u32, what: &str) -> anyhow::Result<()> {
    signal(pid, "-KILL");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::ensure!(
        !pid_alive(pid),
        "{what} (pid {pid}) still runs 30 s after SIGKILL"
    );
    Ok(())
}

/// Starts `cmd` with stdout and stderr appended to `log`, reaped in the background;
/// `detach` puts it in a process group of its own (a Ctrl-C here does not reach it).
pub fn spawn_logged(cmd: &mut Command, log: &Path, detach: bool) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    if detach {
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id();
    // Reap it in the background so it never lingers as a zombie.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Reads a Prometheus text endpoint's plain (unlabelled) samples.
pub fn scrape(port: u16) -> Option<BTreeMap<String, f64>> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                out.insert(k.to_string(), v);
            }
        }
    }
    Some(out)
}

/// The median of `xs` (NaN when empty).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Runs `cargo` with `args` in `root`, failing on a non-zero exit.
pub fn cargo(root: &Path, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<()> {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(&program)
        .current_dir(root)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    println!("<== {:.0}s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// The skip log of this `ci` run, for the steps that run in this process.
pub static SKIP_LOG: OnceLock<PathBuf> = OnceLock::new();

/// Records that `what` did not run, and why: an error in CI (`CI=true`); elsewhere it
/// prints `WHAT: skipped: REASON` and appends that line to the skip log (this run's, or
/// the file `CRAFT_SKIP_LOG` names), as the tests do (`craft_faultfs::temp::skip`).
pub fn skipped(what: &str, reason: &str) -> anyhow::Result<()> {
    if in_ci() {
        bail!("{what} cannot run in CI (CI=true): {reason}");
    }
    let line = format!("{what}: skipped: {reason}");
    println!("{line}");
    let log = SKIP_LOG
        .get()
        .cloned()
        .or_else(|| std::env::var_os(SKIP_LOG_ENV).map(PathBuf::from));
    if let Some(log) = log {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .with_context(|| format!("recording a skip in {}", log.display()))?;
    }
    Ok(())
}

/// Processes a verb started and owns: dropping them kills each, waits for it and removes
/// its data directory (the logs stay, for a failure to be read).
#[derive(Default)]
pub struct Processes {
    children: Vec<Child>,
    data_dirs: Vec<PathBuf>,
    logs: Vec<PathBuf>,
}

impl Processes {
    /// Starts `cmd` with stderr to `log` (stdout discarded); `data` is removed on drop.
    pub fn spawn(&mut self, cmd: &mut Command, data: PathBuf, log: PathBuf) -> anyhow::Result<()> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        self.children.push(child);
        self.data_dirs.push(data);
        self.logs.push(log);
        Ok(())
    }

    /// How many were started.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// The log files, in start order.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// Fails if one has exited (a port in use, a bad flag), naming `what` and process
    /// `i + 1` and showing the end of its log.
    pub fn check_alive(&mut self, what: &str) -> anyhow::Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                let log = fs::read_to_string(&self.logs[i]).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{what} {} exited ({status}); {}:\n{}",
                    i + 1,
                    self.logs[i].display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.data_dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// `n` loopback ports that are free now and lie outside the kernel's ephemeral range
/// (`ip_local_port_range`). A port the kernel hands out for outgoing connections could
/// be taken by one (a metrics scrape, a peer's reconnect) while its node restarts, and
/// the restarted node could then not bind it. The search starts at a point drawn from
/// the clock and the process id, so that clusters started side by side rarely meet.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let (eph_lo, eph_hi) = ephemeral_range();
    // Below the ephemeral range, above the well-known and registered-by-habit ports.
    let (lo, hi) = if eph_lo > 12_000 {
        (10_000u32, u32::from(eph_lo))
    } else {
        (u32::from(eph_hi) + 1, 65_536)
    };
    let span = hi - lo;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let start = seed % span;
    let mut ports = Vec::with_capacity(n);
    for k in 0..span {
        if ports.len() == n {
            break;
        }
        let port = (lo + (start + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            ports.push(port);
        }
    }
    anyhow::ensure!(
        ports.len() == n,
        "found only {} free loopback ports of {n} in {lo}..{hi}",
        ports.len()
    );
    Ok(ports)
}

/// The kernel's range of ephemeral ports; Linux's default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_not_ephemeral() -> anyhow::Result<()> {
        let (lo, hi) = ephemeral_range();
        let ports = free_ports(24)?;
        assert_eq!(ports.len(), 24);
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 24);
        for p in &ports {
            assert!(
                !(lo..=hi).contains(p),
                "port {p} is in the ephemeral range {lo}..={hi}"
            );
            assert!(*p >= 1024, "port {p} is privileged");
        }
        // Free when handed out: every one binds.
        let held: Vec<TcpListener> = ports
            .iter()
            .map(|p| TcpListener::bind(("127.0.0.1", *p)))
            .collect::<Result<_, _>>()?;
        assert_eq!(held.len(), 24);
        Ok(())
    }
}
