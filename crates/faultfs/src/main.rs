//! `faultfs`: mounts a fault-injecting passthrough of a directory and follows a JSON
//! control file until SIGINT or SIGTERM, then unmounts. A test tool; see the crate docs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use craft_faultfs::{Faults, MountOptions};
use nix::sys::signal::{SigSet, Signal};

/// Mirror BACKING at MOUNT, injecting the faults the control file names.
#[derive(Debug, Parser)]
#[command(name = "faultfs", version)]
struct Args {
    /// The directory mirrored (created when missing).
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount it (created when missing).
    #[arg(long)]
    mount: PathBuf,
    /// JSON control file with the rules in force, re-read every 100 ms; missing or
    /// empty means no faults.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Write the counters (operations seen, delayed, failed; reads corrupted) to this
    /// JSON file every 500 ms and at exit.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn write_stats(path: &std::path::Path, faults: &Faults) {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(&faults.stats()).unwrap_or_default();
    if std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "cannot write the stats file");
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    // Block the stop signals before any thread starts, so every thread inherits the
    // mask and the main thread alone takes them, with sigwait.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block().context("blocking SIGINT/SIGTERM")?;

    for dir in [&args.backing, &args.mount] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let faults = Faults::default();
    let _control = args
        .faults
        .as_ref()
        .map(|path| faults.watch(path))
        .transpose()?;
    let mount = craft_faultfs::mount_with(
        &args.backing,
        &args.mount,
        faults.clone(),
        &MountOptions {
            threads: args.threads,
            ..MountOptions::default()
        },
    )?;
    if let Some(path) = args.stats.clone() {
        let faults = faults.clone();
        std::thread::Builder::new()
            .name("faultfs-stats".into())
            .spawn(move || loop {
                write_stats(&path, &faults);
                std::thread::sleep(Duration::from_millis(500));
            })
            .context("starting the stats thread")?;
    }
    println!(
        "faultfs: {} mounted at {}",
        args.backing.display(),
        mount.path().display()
    );

    let signal = stop.wait().context("waiting for a signal")?;
    tracing::info!(?signal, "unmounting");
    if let Some(path) = &args.stats {
        write_stats(path, &faults);
    }
    mount.unmount()?;
    Ok(())
}
