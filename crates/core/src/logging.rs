//! Bridges the `raft` crate's `slog` output into `log`, which a binary forwards to
//! `tracing` (with `tracing-log`). Libraries never install a subscriber.

use slog::{o, Drain};

/// A slog logger that writes through the `log` facade. raft-rs adds the raft id to
/// every record itself.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), o!())
}
