//! A fault filesystem over fresh temporary directories, for tests: mounted, empty, no
//! faults, and unmounted before its directories are removed; and [`skip`], how a test
//! that cannot run here says so.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::{check_usable, mount, FaultFsError, FaultRule, FaultSet, Faults, Mount};

/// The environment variable naming the file each skipped test appends a line to
/// (`cargo xtask ci` sets it, then counts the lines).
pub const SKIP_LOG_ENV: &str = "CRAFT_SKIP_LOG";

/// Whether this runs in CI (`CI=true`, as CI services and `.ci/run` set it): there every
/// test must run, and one that cannot is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Says that the calling test cannot run here, and why. In CI ([`in_ci`]) that fails the
/// test (this panics with the reason). Elsewhere it prints `TEST: skipped: REASON` (past
/// the test harness's capture) and appends that line to the file [`SKIP_LOG_ENV`] names,
/// so a skip is seen and counted, never a silent pass. The test's name is its thread's
/// (the test harness names each test's thread after it).
pub fn skip(reason: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    if in_ci() {
        panic!("{test} cannot run in CI (CI=true): {reason}");
    }
    let line = format!("{test}: skipped: {reason}");
    // Straight to the process's stderr: the test harness captures `eprintln!` of a test
    // that passes, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write of a whole line to a file opened for appending: lines of tests
        // running at once do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: cannot record the skip in {} ({SKIP_LOG_ENV}): {e}",
                PathBuf::from(path).display()
            );
        }
    }
}

/// Whether FUSE can be mounted here, checked once per process. Where it cannot, the
/// calling test is [`skip`]ped (a failure in CI) and this is `false`.
pub fn usable() -> bool {
    static USABLE: OnceLock<Result<(), String>> = OnceLock::new();
    match USABLE.get_or_init(|| check_usable().map_err(|e| e.to_string())) {
        Ok(()) => true,
        Err(e) => {
            skip(&format!("FUSE cannot be mounted: {e}"));
            false
        }
    }
}

/// A mounted fault filesystem over an empty backing directory, both temporary.
pub struct TempDisk {
    // Dropped in this order: unmounted before the directories go.
    /// The mount.
    pub mount: Mount,
    /// Its fault rules and counters.
    pub faults: Faults,
    /// Where it is mounted.
    mountpoint: TempDir,
    /// The directory it mirrors (past the faults).
    pub backing: TempDir,
}

impl TempDisk {
    /// Mounts one with no faults, random choices seeded by `seed`; `Ok(None)` where FUSE
    /// cannot be mounted, after [`skip`] said so (in CI that fails the test instead).
    pub fn new(seed: u64) -> Result<Option<Self>, FaultFsError> {
        if !usable() {
            return Ok(None);
        }
        let temp = |what: &str| {
            tempfile::tempdir().map_err(|e| FaultFsError::Unusable(format!("{what}: {e}")))
        };
        let backing = temp("backing directory")?;
        let mountpoint = temp("mount point")?;
        let faults = Faults::with_seed(FaultSet::none(), seed);
        let mount = mount(backing.path(), mountpoint.path(), faults.clone())?;
        Ok(Some(Self {
            mount,
            faults,
            mountpoint,
            backing,
        }))
    }

    /// `rel` on the fault filesystem.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.mountpoint.path().join(rel)
    }

    /// `rel` in the backing directory, past the faults.
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.backing.path().join(rel)
    }

    /// Makes `rule` the only fault.
    pub fn rule(&self, rule: FaultRule) {
        self.faults.set(FaultSet::none().with(rule));
    }
}
