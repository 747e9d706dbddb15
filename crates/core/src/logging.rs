//! Bridges the `raft` crate's `slog` output into `log`, which a binary forwards to
//! `tracing` (with `tracing-log`). Libraries never install a subscriber.

use slog::{o, Drain};

/// A slog logger for raft id `id` that writes through the `log` facade.
pub fn raft_logger(id: u64) -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), o!("raft_id" => id))
}
