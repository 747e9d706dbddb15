//! `cargo xtask fuzz`: the hostile-input tests with many generated inputs.

use std::path::Path;

/// `cargo xtask fuzz`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Generated inputs per decoder test.
    #[arg(long, default_value_t = 100_000)]
    pub cases: u32,
}

/// Runs every `hostile` test target with `CRAFT_FUZZ_CASES` inputs each, in the bench
/// profile (optimised, and the same build as `cargo xtask bench`).
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    crate::harness::cargo(
        root,
        &[
            "test",
            "--profile",
            "bench",
            "--workspace",
            // Every decoder reports, even after one fails.
            "--no-fail-fast",
            "--test",
            "hostile",
            "--",
            "--nocapture",
        ],
        &[("CRAFT_FUZZ_CASES", args.cases.to_string())],
    )
}
