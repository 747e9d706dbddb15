//! What can go wrong in craft-faultfs.

use std::path::PathBuf;

/// Errors of mounting, controlling and unmounting a fault filesystem.
#[derive(Debug, thiserror::Error)]
pub enum FaultFsError {
    /// The backing directory is missing or unreadable.
    #[error("cannot use backing directory {path}: {source}")]
    Backing {
        /// The backing directory.
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The kernel (or fusermount) refused the mount.
    #[error("cannot mount a fault filesystem at {mountpoint}: {source}")]
    Mount {
        /// Where it was to be mounted.
        mountpoint: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The mount could not be taken down cleanly (it was detached lazily instead).
    #[error("cannot unmount {mountpoint} (detached it lazily): {source}")]
    Unmount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// A fault rule set does not parse or breaks a rule (e.g. a probability above 1).
    #[error("invalid fault rules in {origin}: {reason}")]
    InvalidRules {
        /// Where the rules came from (a file name, `inline`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The thread that watches a control file could not be started.
    #[error("cannot start watching {path}: {source}")]
    Watch {
        /// The control file.
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// FUSE cannot be used on this machine (no `/dev/fuse`, no permission to mount).
    #[error("FUSE is not usable here: {0}")]
    Unusable(String),
}
