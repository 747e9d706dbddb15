//! Run-time control of a mounted fault filesystem: [`Faults`] is the shared handle that
//! holds the rules in force and counts what was injected; [`ControlFile`] keeps it in
//! line with a JSON file, re-read every 100 ms.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::FaultFsError;
use crate::rules::{Decision, FaultSet, Op};

/// How often a [`ControlFile`] is re-read.
pub const CONTROL_POLL: Duration = Duration::from_millis(100);

/// Counters of one kind of operation.
#[derive(Debug, Default)]
struct OpCounters {
    seen: AtomicU64,
    delayed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    set: RwLock<Arc<FaultSet>>,
    ops: [OpCounters; Op::ALL.len()],
    corrupted_reads: AtomicU64,
    flipped_bits: AtomicU64,
    rng: AtomicU64,
}

/// The rules a fault filesystem applies, switchable at run time, and counters of what
/// it did. Clones share both; hand one to [`crate::mount`] and keep one to steer.
#[derive(Debug, Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

/// What one kind of operation saw, in a [`FaultStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    /// Operations of this kind the filesystem served.
    pub seen: u64,
    /// Of those, how many a rule delayed.
    pub delayed: u64,
    /// Of those, how many a rule failed.
    pub failed: u64,
}

/// A snapshot of a [`Faults`]' counters, since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// Per kind of operation, by [`Op::name`].
    pub ops: std::collections::BTreeMap<&'static str, OpStats>,
    /// Reads whose data had bits flipped.
    pub corrupted_reads: u64,
    /// Bits flipped in all.
    pub flipped_bits: u64,
}

impl FaultStats {
    /// The counters of `op`.
    pub fn op(&self, op: Op) -> OpStats {
        self.ops.get(op.name()).copied().unwrap_or_default()
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::new(FaultSet::none())
    }
}

impl Faults {
    /// A handle with `set` in force, its random choices seeded from the clock.
    pub fn new(set: FaultSet) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self::with_seed(set, seed)
    }

    /// A handle with `set` in force and random choices (probabilities, which bits are
    /// flipped) drawn from `seed`.
    pub fn with_seed(set: FaultSet, seed: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                set: RwLock::new(Arc::new(set)),
                ops: Default::default(),
                corrupted_reads: AtomicU64::new(0),
                flipped_bits: AtomicU64::new(0),
                rng: AtomicU64::new(seed),
            }),
        }
    }

    /// Puts `set` in force, for every operation that starts from now on.
    pub fn set(&self, set: FaultSet) {
        let set = Arc::new(set);
        *self
            .shared
            .set
            .write()
            .unwrap_or_else(PoisonError::into_inner) = set;
    }

    /// Lifts every rule: a plain passthrough from now on.
    pub fn clear(&self) {
        self.set(FaultSet::none());
    }

    /// The rules in force.
    pub fn current(&self) -> FaultSet {
        (**self
            .shared
            .set
            .read()
            .unwrap_or_else(PoisonError::into_inner))
        .clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> FaultStats {
        let mut stats = FaultStats {
            corrupted_reads: self.shared.corrupted_reads.load(Ordering::Relaxed),
            flipped_bits: self.shared.flipped_bits.load(Ordering::Relaxed),
            ..Default::default()
        };
        for op in Op::ALL {
            let c = &self.shared.ops[op.index()];
            stats.ops.insert(
                op.name(),
                OpStats {
                    seen: c.seen.load(Ordering::Relaxed),
                    delayed: c.delayed.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                },
            );
        }
        stats
    }

    /// Keeps the rules in line with the JSON file at `path` (see [`ControlFile`]).
    pub fn watch(&self, path: impl Into<PathBuf>) -> Result<ControlFile, FaultFsError> {
        ControlFile::start(self.clone(), path.into())
    }

    /// A uniform number in [0, 1) (splitmix64 over a shared counter).
    fn chance(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// What the rules in force decide for `op` on `path`, counted.
    pub(crate) fn decide(&self, op: Op, path: &str) -> Decision {
        let set = Arc::clone(
            &self
                .shared
                .set
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let d = set.decide(op, path, || self.chance());
        let c = &self.shared.ops[op.index()];
        c.seen.fetch_add(1, Ordering::Relaxed);
        if !d.delay.is_zero() {
            c.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if d.error.is_some() {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    /// Flips `bits` random bits of `data`, counted.
    pub(crate) fn corrupt(&self, data: &mut [u8], bits: u32) {
        if data.is_empty() || bits == 0 {
            return;
        }
        let len = data.len() as u64 * 8;
        for _ in 0..bits {
            let bit = self.next_u64() % len;
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        self.shared.corrupted_reads.fetch_add(1, Ordering::Relaxed);
        self.shared
            .flipped_bits
            .fetch_add(u64::from(bits), Ordering::Relaxed);
    }
}

/// Keeps a [`Faults`] in line with a JSON control file ([`FaultSet`]'s form), re-read
/// every [`CONTROL_POLL`]. A missing or empty file means no faults; a file that does not
/// parse keeps the rules in force and is reported (once per content) in the log, so a
/// writer that is halfway through loses nothing, though writing a temporary file and
/// renaming it over the control file is the safe way. Stops when dropped.
#[derive(Debug)]
pub struct ControlFile {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Reads the control file: `None` when it cannot be read for another reason than being
/// missing.
fn read_control(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the fault control file");
            None
        }
    }
}

impl ControlFile {
    fn start(faults: Faults, path: PathBuf) -> Result<Self, FaultFsError> {
        let origin = path.display().to_string();
        // The first read happens now, so the file's rules are in force on return.
        let mut last = read_control(&path);
        if let Some(text) = &last {
            faults.set(FaultSet::from_json(text, &origin)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let watched = path.clone();
            std::thread::Builder::new()
                .name("faultfs-control".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(CONTROL_POLL);
                        let Some(text) = read_control(&watched) else {
                            continue;
                        };
                        if last.as_ref() == Some(&text) {
                            continue;
                        }
                        match FaultSet::from_json(&text, &origin) {
                            Ok(set) => {
                                tracing::info!(rules = set.rules.len(), path = %watched.display(), "fault rules changed");
                                faults.set(set);
                            }
                            Err(e) => tracing::warn!(error = %e, "fault rules unchanged"),
                        }
                        last = Some(text);
                    }
                })
                .map_err(|source| FaultFsError::Watch {
                    path: path.clone(),
                    source,
                })?
        };
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The control file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlFile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::rules::{FaultRule, InjectedError};

    #[test]
    fn corruption_flips_the_bits_asked_for() {
        let faults = Faults::with_seed(FaultSet::none(), 7);
        let mut data = vec![0u8; 4096];
        faults.corrupt(&mut data, 3);
        let flipped: u32 = data.iter().map(|b| b.count_ones()).sum();
        // Three draws can land on the same bit (twice flips it back); rarely, at 4096 bytes.
        assert!(flipped == 3 || flipped == 1, "{flipped} bits flipped");
        let stats = faults.stats();
        assert_eq!((stats.corrupted_reads, stats.flipped_bits), (1, 3));
    }

    #[test]
    fn probability_fires_about_as_often_as_asked() {
        let faults = Faults::with_seed(
            FaultSet::none().with(
                FaultRule::on("**")
                    .fail(InjectedError::EIO)
                    .probability(0.25),
            ),
            1,
        );
        let failed = (0..4000)
            .filter(|_| faults.decide(Op::Read, "x").error.is_some())
            .count();
        assert!((800..1200).contains(&failed), "{failed} of 4000 failed");
        assert_eq!(faults.stats().op(Op::Read).failed, failed as u64);
        assert_eq!(faults.stats().op(Op::Read).seen, 4000);
    }

    #[test]
    fn control_file_is_followed_and_bad_content_keeps_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.json");
        let rule = FaultSet::none().with(FaultRule::on("*.log").fail(InjectedError::EIO));
        std::fs::write(&path, rule.to_json()).unwrap();
        let faults = Faults::default();
        let watcher = faults.watch(&path).unwrap();
        assert_eq!(faults.current(), rule, "in force when watch returns");

        let wait_for = |want: &FaultSet| {
            for _ in 0..50 {
                if faults.current() == *want {
                    return;
                }
                std::thread::sleep(CONTROL_POLL);
            }
            panic!("rules never became {want:?}");
        };
        std::fs::write(&path, "{ half").unwrap();
        std::thread::sleep(CONTROL_POLL * 3);
        assert_eq!(faults.current(), rule, "a bad file keeps the rules");
        std::fs::remove_file(&path).unwrap();
        wait_for(&FaultSet::none());
        drop(watcher);
        std::fs::write(&path, rule.to_json()).unwrap();
        std::thread::sleep(CONTROL_POLL * 3);
        assert_eq!(faults.current(), FaultSet::none(), "stopped when dropped");
    }
}
