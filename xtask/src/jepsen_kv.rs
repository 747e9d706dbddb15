//! `cargo xtask jepsen-kv`: a longer run of the KV linearizability test: a 3-node
//! `craft-kv` cluster, concurrent clients on every node, the leader SIGKILLed and
//! restarted and a follower cut off in turn, the whole history checked by
//! `craft-lincheck`. Prints the operation count and the verdict.

use std::path::Path;

/// `cargo xtask jepsen-kv`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Read with `?consistency=stale`, a read path that is not linearizable: the run
    /// must then fail, showing that the checker catches it.
    #[arg(long)]
    pub stale_reads: bool,
}

/// Runs the test with the requested length.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let mut envs = vec![("CRAFT_JEPSEN_SECS", args.secs.to_string())];
    if args.stale_reads {
        envs.push(("CRAFT_JEPSEN_READS", "stale".to_string()));
    }
    crate::harness::cargo(
        root,
        &[
            "test",
            "-p",
            "craft-kv",
            "--test",
            "linearizable",
            "reads_and_writes_stay_linearizable",
            "--",
            "--nocapture",
        ],
        &envs,
    )
}
