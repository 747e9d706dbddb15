//! A fault filesystem over fresh temporary directories, for tests: mounted, empty, no
//! faults, and unmounted before its directories are removed.

use std::path::PathBuf;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::{check_usable, mount, FaultFsError, FaultRule, FaultSet, Faults, Mount};

/// Whether FUSE can be mounted here, checked once per process; prints why not, so a
/// test that skips says so.
pub fn usable() -> bool {
    static USABLE: OnceLock<Result<(), String>> = OnceLock::new();
    match USABLE.get_or_init(|| check_usable().map_err(|e| e.to_string())) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
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
    /// Mounts one with no faults, random choices seeded by `seed`; `Ok(None)` (after
    /// printing why) where FUSE cannot be mounted.
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
