//! Log output: stdout, or a file rotated by size.

use std::path::Path;

use anyhow::Context;
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::ConsensusConfig;

/// Installs the global subscriber. Keep the returned guard alive: it flushes the file.
/// Logs of the `raft` crate (slog → log) are captured too.
pub fn init(cfg: &ConsensusConfig) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = EnvFilter::try_new(&cfg.log_level).with_context(|| {
        format!(
            "consensus_raft.log_level: invalid filter {:?}",
            cfg.log_level
        )
    })?;
    if cfg.log_to_stdout {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
        return Ok(None);
    }
    std::fs::create_dir_all(&cfg.log_dir).with_context(|| {
        format!(
            "creating log directory {} (consensus_raft.log_dir)",
            cfg.log_dir
        )
    })?;
    let path = Path::new(&cfg.log_dir).join(&cfg.log_file_name);
    let compression = if cfg.log_rotate_compress {
        Compression::OnRotate(1)
    } else {
        Compression::None
    };
    let writer = FileRotate::new(
        path,
        AppendCount::new(cfg.log_rotate_keep.max(1)),
        ContentLimit::Bytes(
            usize::try_from(cfg.log_rotate_size)
                .unwrap_or(usize::MAX)
                .max(4096),
        ),
        compression,
        None,
    );
    let (writer, guard) = tracing_appender::non_blocking(writer);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .init();
    Ok(Some(guard))
}
