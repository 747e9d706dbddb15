//! craft-faultfs: a FUSE passthrough filesystem that injects disk faults, for tests.
//!
//! It owns one thing: mirroring a backing directory at a mountpoint and, on the
//! operations a [`FaultRule`] selects (by kind, [`Op`], and by a glob on the path),
//! injecting
//! - latency (milliseconds per operation),
//! - errors instead of the operation: `EIO` on read, write or fsync, `ENOSPC` on write
//!   (and `EROFS`, `EDQUOT`),
//! - corruption of the data reads return (random bits flipped; the file is untouched),
//!
//! each with a probability, switchable at run time through a shared [`Faults`] handle or
//! a JSON control file ([`ControlFile`], re-read every 100 ms). Everything else is a
//! plain passthrough good enough for RocksDB: create, open, read, write, fsync and
//! fdatasync, fallocate, truncate, rename, unlink, mkdir, readdir, statfs, directory
//! fsync, links; POSIX locks are left to the kernel (RocksDB's `LOCK` file works).
//!
//! **Test tool only.** No crate of the service (craft-core, craft-storage, consensus, ...)
//! may depend on it except as a dev-dependency; `cargo test -p xtask` (tidy) checks it.
//! It needs `/dev/fuse` and the right to mount (root, or `fusermount3` installed): tests
//! call [`temp::usable`], which skips them where it fails ([`temp::skip`]: said and
//! counted, and a failure in CI).
//!
//! In a test:
//!
//! ```no_run
//! use std::time::Duration;
//! use craft_faultfs::{FaultRule, FaultSet, Faults, InjectedError, Op};
//! use nix::libc;
//!
//! let backing = tempfile::tempdir()?;
//! let mnt = tempfile::tempdir()?;
//! let faults = Faults::default();
//! let fs = craft_faultfs::mount(backing.path(), mnt.path(), faults.clone())?;
//! std::fs::write(fs.path().join("a.log"), b"data")?; // a plain passthrough so far
//!
//! // fsync of *.log fails with EIO (the write before it went through), and every
//! // operation anywhere takes 5 ms longer.
//! faults.set(
//!     FaultSet::none()
//!         .with(FaultRule::on("*.log").ops([Op::Fsync]).fail(InjectedError::EIO))
//!         .with(FaultRule::on("**").delay(Duration::from_millis(5))),
//! );
//! let f = std::fs::File::options().append(true).open(fs.path().join("a.log"))?;
//! assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
//! assert_eq!(faults.stats().op(Op::Fsync).failed, 1);
//!
//! faults.clear(); // lifted
//! f.sync_all()?;
//! drop(f);
//! fs.unmount()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! From a shell (or another process), the `faultfs` binary mounts and follows a control
//! file until SIGINT or SIGTERM, then unmounts:
//!
//! ```text
//! faultfs --backing /data/raft.real --mount /data/raft --faults /tmp/faults.json
//! echo '{"rules":[{"path":"*.log","ops":["fsync"],"error":"EIO"}]}' > /tmp/faults.json.new
//! mv /tmp/faults.json.new /tmp/faults.json     # in force within 100 ms
//! rm /tmp/faults.json                          # lifted
//! ```
//!
//! The control file's format is [`FaultSet`]'s JSON form, described in [`rules`].

mod control;
mod error;
mod fs;
pub mod rules;
pub mod temp;

use std::path::{Path, PathBuf};

pub use control::{ControlFile, FaultStats, Faults, OpStats, CONTROL_POLL};
pub use error::FaultFsError;
pub use rules::{glob_matches, FaultRule, FaultSet, InjectedError, Op};

/// How a fault filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Threads serving requests, so that an operation a rule delays does not hold up
    /// every other. Default 4.
    pub threads: usize,
    /// The name the mount shows in `/proc/mounts`. Default `faultfs`.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            threads: 4,
            fsname: "faultfs".to_owned(),
        }
    }
}

/// A mounted fault filesystem. Unmounted with [`Mount::unmount`] or when dropped (then,
/// if files on it are still open, detached lazily: it goes once they are closed).
#[derive(Debug)]
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
    faults: Faults,
}

/// Mounts a fault filesystem mirroring `backing` at `mountpoint` (both existing
/// directories) with default [`MountOptions`]; `faults` steers it.
pub fn mount(
    backing: impl AsRef<Path>,
    mountpoint: impl AsRef<Path>,
    faults: Faults,
) -> Result<Mount, FaultFsError> {
    mount_with(backing, mountpoint, faults, &MountOptions::default())
}

/// [`mount`] with `options`.
pub fn mount_with(
    backing: impl AsRef<Path>,
    mountpoint: impl AsRef<Path>,
    faults: Faults,
    options: &MountOptions,
) -> Result<Mount, FaultFsError> {
    let backing_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FaultFsError::Backing { path, source }
    };
    let backing = backing.as_ref();
    let backing = backing.canonicalize().map_err(backing_err(backing))?;
    let mountpoint = mountpoint.as_ref();
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|source| FaultFsError::Mount {
            mountpoint: mountpoint.to_owned(),
            source,
        })?;
    let fs = fs::FaultFs::new(backing.clone(), faults.clone()).map_err(backing_err(&backing))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(options.fsname.clone()),
        fuser::MountOption::Subtype("faultfs".to_owned()),
    ];
    config.n_threads = Some(options.threads.max(1));
    let session =
        fuser::spawn_mount(fs, &mountpoint, &config).map_err(|source| FaultFsError::Mount {
            mountpoint: mountpoint.clone(),
            source,
        })?;
    tracing::info!(backing = %backing.display(), mountpoint = %mountpoint.display(), "fault filesystem mounted");
    Ok(Mount {
        session: Some(session),
        mountpoint,
        backing,
        faults,
    })
}

impl Mount {
    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory it mirrors.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The handle that steers it.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Unmounts, waiting for the serving threads to finish. Fails (and detaches the
    /// mount lazily) when files on it are still open.
    pub fn unmount(mut self) -> Result<(), FaultFsError> {
        self.take_down()
    }

    fn take_down(&mut self) -> Result<(), FaultFsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            // The unmount went through, and one of the serving threads, reading
            // `/dev/fuse` as the kernel tore the connection down, was told
            // ECONNABORTED instead of ENODEV (which fuser takes as the clean end);
            // which of the two it gets is a race inside the kernel. The mount is gone.
            Err(source) if connection_ended(&source) && !is_mounted(&self.mountpoint) => {
                tracing::debug!(mountpoint = %self.mountpoint.display(), error = %source, "serving thread saw the connection end");
                Ok(())
            }
            Err(source) => {
                // Busy: detach it now, it goes when the last file on it is closed.
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
                Err(FaultFsError::Unmount {
                    mountpoint: self.mountpoint.clone(),
                    source,
                })
            }
        }
    }
}

/// Whether `error` is what reading `/dev/fuse` returns once the kernel has ended the
/// connection.
fn connection_ended(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(nix::libc::ECONNABORTED | nix::libc::ENODEV)
    )
}

/// Whether `/proc/self/mountinfo` lists a mount at `path`. Unreadable counts as mounted,
/// so that a mount is never taken for gone on a guess.
fn is_mounted(path: &Path) -> bool {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => mountinfo_lists(&table, path),
        Err(_) => true,
    }
}

/// Whether a mount table in `/proc/self/mountinfo`'s format lists a mount at `path`.
/// The mount point is its fifth field, with space, tab, newline and backslash written
/// as octal escapes.
fn mountinfo_lists(table: &str, path: &Path) -> bool {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => escaped.push_str("\\040"),
            '\t' => escaped.push_str("\\011"),
            '\n' => escaped.push_str("\\012"),
            '\\' => escaped.push_str("\\134"),
            c => escaped.push(c),
        }
    }
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(escaped.as_str()))
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.take_down() {
            tracing::warn!(error = %e, "fault filesystem not unmounted cleanly");
        }
    }
}

/// Checks that a fault filesystem can be mounted here, by mounting one over an empty
/// directory under the system's temporary directory and unmounting it. The error says
/// why not (no `/dev/fuse`, not allowed to mount, ...), for a test to give as it skips.
pub fn check_usable() -> Result<(), FaultFsError> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(FaultFsError::Unusable(format!(
            "cannot open /dev/fuse: {e}"
        )));
    }
    let base = std::env::temp_dir().join(format!(
        "craft-faultfs-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let (backing, mnt) = (base.join("backing"), base.join("mnt"));
    let result = (|| {
        for dir in [&backing, &mnt] {
            std::fs::create_dir_all(dir).map_err(|e| {
                FaultFsError::Unusable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mount = mount(&backing, &mnt, Faults::default())
            .map_err(|e| FaultFsError::Unusable(e.to_string()))?;
        std::fs::write(mnt.join("probe"), b"probe")
            .map_err(|e| FaultFsError::Unusable(format!("cannot write through the mount: {e}")))?;
        mount
            .unmount()
            .map_err(|e| FaultFsError::Unusable(e.to_string()))
    })();
    let _ = std::fs::remove_dir_all(&base);
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
97 22 0:52 / /tmp/craft\\040probe/mnt rw,nosuid,nodev,relatime shared:60 - fuse.faultfs faultfs rw,user_id=0
98 22 0:53 / /tmp/plain rw,relatime shared:61 - fuse.faultfs faultfs rw,user_id=0
";

    #[test]
    fn mountinfo_lists_mount_points_with_their_escapes() {
        assert!(mountinfo_lists(TABLE, Path::new("/tmp/craft probe/mnt")));
        assert!(mountinfo_lists(TABLE, Path::new("/tmp/plain")));
        assert!(mountinfo_lists(TABLE, Path::new("/")));
        assert!(!mountinfo_lists(TABLE, Path::new("/tmp/craft")));
        assert!(!mountinfo_lists(TABLE, Path::new("/tmp/plain/sub")));
        assert!(!mountinfo_lists(
            TABLE,
            Path::new("/tmp/craft\\040probe/mnt")
        ));
    }

    #[test]
    fn only_the_ends_of_a_connection_count_as_its_end() {
        for (errno, ended) in [
            (nix::libc::ECONNABORTED, true),
            (nix::libc::ENODEV, true),
            (nix::libc::EBUSY, false),
            (nix::libc::EIO, false),
        ] {
            let error = std::io::Error::from_raw_os_error(errno);
            assert_eq!(connection_ended(&error), ended, "{error}");
        }
        assert!(!connection_ended(&std::io::Error::other("thread panicked")));
    }
}
