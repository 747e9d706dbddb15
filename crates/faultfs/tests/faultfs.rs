//! The fault filesystem itself, mounted in a temporary directory: the passthrough is
//! faithful, and each kind of fault does what it says while the rest keeps working.
//! Where FUSE cannot be mounted every test is skipped, saying why and counted
//! (`craft_faultfs::temp::skip`); in CI (`CI=true`) it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use craft_faultfs::temp::usable;
use craft_faultfs::temp::TempDisk;
use craft_faultfs::{FaultRule, FaultSet, InjectedError, Op};

/// A mounted fault filesystem over an empty backing directory, or `None` (the test
/// skipped, or failed in CI) where FUSE cannot be mounted.
fn fixture() -> Option<TempDisk> {
    TempDisk::new(42).unwrap()
}

fn raw_errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

#[test]
fn passthrough_mirrors_the_backing_directory() {
    let Some(fx) = fixture() else { return };
    std::fs::create_dir(fx.at("db")).unwrap();
    std::fs::write(fx.at("db/a"), b"hello").unwrap();
    assert_eq!(std::fs::read(fx.backing("db/a")).unwrap(), b"hello");
    std::fs::write(fx.backing("db/outside"), b"made behind the mount").unwrap();
    assert_eq!(
        std::fs::read(fx.at("db/outside")).unwrap(),
        b"made behind the mount"
    );

    // Overwrite in place, extend, read back at offsets.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.at("db/a"))
        .unwrap();
    f.write_all_at(b"J", 0).unwrap();
    f.write_all_at(b"!", 10).unwrap();
    let mut buf = [0u8; 11];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"Jello\0\0\0\0\0!");
    assert_eq!(f.metadata().unwrap().len(), 11);
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    f.set_len(3).unwrap();
    assert_eq!(std::fs::read(fx.at("db/a")).unwrap(), b"Jel");
    drop(f);

    // Append mode writes at the end.
    let mut f = OpenOptions::new().append(true).open(fx.at("db/a")).unwrap();
    f.write_all(b"ly").unwrap();
    drop(f);
    assert_eq!(std::fs::read(fx.backing("db/a")).unwrap(), b"Jelly");

    // Rename over an existing file, as RocksDB replaces CURRENT.
    std::fs::write(fx.at("db/CURRENT.tmp"), b"MANIFEST-2\n").unwrap();
    std::fs::write(fx.at("db/CURRENT"), b"MANIFEST-1\n").unwrap();
    std::fs::rename(fx.at("db/CURRENT.tmp"), fx.at("db/CURRENT")).unwrap();
    assert_eq!(std::fs::read(fx.at("db/CURRENT")).unwrap(), b"MANIFEST-2\n");
    assert!(!fx.at("db/CURRENT.tmp").exists());

    // A renamed directory keeps its contents reachable under the new name.
    std::fs::create_dir_all(fx.at("db/sub/deeper")).unwrap();
    std::fs::write(fx.at("db/sub/deeper/f"), b"x").unwrap();
    std::fs::rename(fx.at("db/sub"), fx.at("db/moved")).unwrap();
    assert_eq!(std::fs::read(fx.at("db/moved/deeper/f")).unwrap(), b"x");

    let mut names: Vec<String> = std::fs::read_dir(fx.at("db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["CURRENT", "a", "moved", "outside"]);

    // An unlinked file that is still open keeps working.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.at("db/outside"))
        .unwrap();
    std::fs::remove_file(fx.at("db/outside")).unwrap();
    assert!(!fx.backing("db/outside").exists());
    f.write_all_at(b"still", 0).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("still"), "{s}");
    drop(f);

    std::fs::remove_dir(fx.at("db/moved/deeper")).unwrap_err(); // not empty
    std::fs::remove_file(fx.at("db/moved/deeper/f")).unwrap();
    std::fs::remove_dir(fx.at("db/moved/deeper")).unwrap();
    std::fs::hard_link(fx.at("db/a"), fx.at("db/a2")).unwrap();
    assert_eq!(std::fs::metadata(fx.at("db/a")).unwrap().len(), 5);
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(fx.at("db/a2")).unwrap()),
        2
    );
    std::os::unix::fs::symlink("a", fx.at("db/link")).unwrap();
    assert_eq!(
        std::fs::read_link(fx.at("db/link")).unwrap(),
        Path::new("a")
    );
    assert_eq!(std::fs::read(fx.at("db/link")).unwrap(), b"Jelly");

    // Create-exclusive fails on an existing name, as it must for RocksDB's files.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.at("db/a"))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);

    // Nothing was injected without rules.
    let stats = fx.faults.stats();
    assert!(stats.ops.values().all(|o| o.failed == 0 && o.delayed == 0));
    assert!(stats.op(Op::Write).seen > 0 && stats.op(Op::Read).seen > 0);
    fx.mount.unmount().unwrap();
}

#[test]
fn fallocate_and_statfs_pass_through() {
    let Some(fx) = fixture() else { return };
    let f = File::create(fx.at("prealloc")).unwrap();
    // Keep-size preallocation, as RocksDB does for its WAL and SST files.
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        1 << 20,
    )
    .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 4096).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 4096);
    let through = nix::sys::statvfs::statvfs(fx.mount.path()).unwrap();
    let direct = nix::sys::statvfs::statvfs(fx.backing.path()).unwrap();
    assert_eq!(through.blocks(), direct.blocks());
}

#[test]
fn eio_on_fsync_fails_fsync_only_on_matching_paths() {
    let Some(fx) = fixture() else { return };
    let wal = File::create(fx.at("000003.log")).unwrap();
    let sst = File::create(fx.at("000004.sst")).unwrap();
    fx.rule(
        FaultRule::on("*.log")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    wal.write_all_at(b"record", 0).unwrap();
    assert_eq!(
        raw_errno(&wal.sync_all().unwrap_err()),
        Some(nix::libc::EIO)
    );
    assert_eq!(
        raw_errno(&wal.sync_data().unwrap_err()),
        Some(nix::libc::EIO)
    );
    sst.write_all_at(b"table", 0).unwrap();
    sst.sync_all().unwrap();
    // The write itself went through: only the fsync failed.
    assert_eq!(std::fs::read(fx.backing("000003.log")).unwrap(), b"record");

    // Directory fsync is an fsync of the directory's path.
    fx.rule(
        FaultRule::on("**")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    let dir = File::open(fx.mount.path()).unwrap();
    assert_eq!(
        raw_errno(&dir.sync_all().unwrap_err()),
        Some(nix::libc::EIO)
    );

    fx.faults.clear();
    wal.sync_all().unwrap();
    dir.sync_all().unwrap();
    assert_eq!(fx.faults.stats().op(Op::Fsync).failed, 3);
}

#[test]
fn eio_on_read_and_enospc_on_write() {
    let Some(fx) = fixture() else { return };
    std::fs::write(fx.at("data"), b"0123456789").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.at("data"))
        .unwrap();
    fx.rule(
        FaultRule::on("data")
            .ops([Op::Read])
            .fail(InjectedError::EIO),
    );
    let mut buf = [0u8; 4];
    assert_eq!(
        raw_errno(&f.read_exact_at(&mut buf, 0).unwrap_err()),
        Some(nix::libc::EIO)
    );
    f.write_all_at(b"ab", 0).unwrap();

    fx.rule(
        FaultRule::on("**")
            .ops([Op::Write])
            .fail(InjectedError::ENOSPC),
    );
    let e = f.write_all_at(b"zz", 0).unwrap_err();
    assert_eq!(raw_errno(&e), Some(nix::libc::ENOSPC));
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
    // Preallocation and truncation are writes too; the failed ones changed nothing.
    assert_eq!(
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 1 << 16),
        Err(nix::errno::Errno::ENOSPC)
    );
    assert_eq!(
        raw_errno(&f.set_len(1).unwrap_err()),
        Some(nix::libc::ENOSPC)
    );
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"ab23");
    assert_eq!(std::fs::read(fx.backing("data")).unwrap(), b"ab23456789");

    fx.faults.clear();
    f.write_all_at(b"zz", 0).unwrap();
    assert_eq!(std::fs::read(fx.backing("data")).unwrap(), b"zz23456789");
}

#[test]
fn corruption_flips_bits_in_what_is_read_never_on_disk() {
    let Some(fx) = fixture() else { return };
    let original: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(fx.backing("000009.sst"), &original).unwrap();
    std::fs::write(fx.backing("000010.log"), &original).unwrap();
    fx.rule(FaultRule::on("*.sst").ops([Op::Read]).corrupt(1));

    let read = std::fs::read(fx.at("000009.sst")).unwrap();
    assert_eq!(read.len(), original.len());
    let flipped: u32 = read
        .iter()
        .zip(&original)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    let stats = fx.faults.stats();
    assert!(stats.corrupted_reads >= 1, "{stats:?}");
    // One bit per read request (the kernel splits a large read into several).
    assert!(
        flipped >= 1 && u64::from(flipped) <= stats.flipped_bits,
        "{flipped}"
    );
    assert_eq!(std::fs::read(fx.backing("000009.sst")).unwrap(), original);
    assert_eq!(std::fs::read(fx.at("000010.log")).unwrap(), original);

    fx.faults.clear();
    assert_eq!(std::fs::read(fx.at("000009.sst")).unwrap(), original);
}

#[test]
fn latency_delays_but_every_operation_succeeds() {
    let Some(fx) = fixture() else { return };
    fx.rule(FaultRule::on("**").delay(Duration::from_millis(10)));
    std::fs::create_dir(fx.at("d")).unwrap();
    let f = File::create(fx.at("d/f")).unwrap();
    f.write_all_at(b"slow", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(fx.at("d/f"), fx.at("d/g")).unwrap();
    assert_eq!(std::fs::read(fx.at("d/g")).unwrap(), b"slow");
    std::fs::remove_file(fx.at("d/g")).unwrap();
    let stats = fx.faults.stats();
    for op in [
        Op::Write,
        Op::Fsync,
        Op::Read,
        Op::Create,
        Op::Rename,
        Op::Remove,
    ] {
        assert!(stats.op(op).delayed >= 1, "{op:?} not delayed: {stats:?}");
        assert_eq!(stats.op(op).failed, 0);
    }
}

#[test]
fn probability_fails_some_operations() {
    let Some(fx) = fixture() else { return };
    std::fs::write(fx.at("f"), b"x").unwrap();
    let f = File::open(fx.at("f")).unwrap();
    fx.rule(
        FaultRule::on("f")
            .ops([Op::Read])
            .fail(InjectedError::EIO)
            .probability(0.5),
    );
    let mut buf = [0u8; 1];
    let failed = (0..200)
        .filter(|_| f.read_exact_at(&mut buf, 0).is_err())
        .count();
    assert!((40..160).contains(&failed), "{failed} of 200 failed");
}

#[test]
fn a_control_file_switches_rules_at_run_time() {
    let Some(fx) = fixture() else { return };
    let control = tempfile::tempdir().unwrap();
    let path = control.path().join("faults.json");
    let watcher = fx.faults.watch(&path).unwrap();
    let f = File::create(fx.at("f")).unwrap();
    f.sync_all().unwrap();
    let set = FaultSet::none().with(
        FaultRule::on("**")
            .ops([Op::Fsync])
            .fail(InjectedError::EIO),
    );
    std::fs::write(path.with_extension("tmp"), set.to_json()).unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    let until = |want_err: bool| {
        for _ in 0..50 {
            if f.sync_all().is_err() == want_err {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "fsync never {}",
            if want_err { "failed" } else { "recovered" }
        );
    };
    until(true);
    std::fs::remove_file(&path).unwrap();
    until(false);
    drop(watcher);
}

#[test]
fn unmount_refuses_while_files_are_open_then_detaches() {
    let Some(fx) = fixture() else { return };
    let f = File::create(fx.at("held")).unwrap();
    let mountpoint = fx.mount.path().to_owned();
    let e = fx.mount.unmount().unwrap_err();
    assert!(e.to_string().contains("unmount"), "{e}");
    drop(f);
    // Detached: the mountpoint is an ordinary empty directory again.
    for _ in 0..50 {
        if std::fs::read_dir(&mountpoint).unwrap().next().is_none() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} still shows the mount", mountpoint.display());
}

#[test]
fn the_binary_mounts_follows_its_control_file_and_unmounts_on_sigterm() {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    let (control, stats) = (
        dir.path().join("faults.json"),
        dir.path().join("stats.json"),
    );
    std::fs::write(
        &control,
        FaultSet::none()
            .with(
                FaultRule::on("*.log")
                    .ops([Op::Fsync])
                    .fail(InjectedError::EIO),
            )
            .to_json(),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .arg("--backing")
        .arg(&backing)
        .arg("--mount")
        .arg(&mnt)
        .arg("--faults")
        .arg(&control)
        .arg("--stats")
        .arg(&stats)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("mounted at"), "{line}");

    let f = File::create(mnt.join("000001.log")).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    assert_eq!(raw_errno(&f.sync_all().unwrap_err()), Some(nix::libc::EIO));
    drop(f);
    assert_eq!(std::fs::read(backing.join("000001.log")).unwrap(), b"x");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!mnt.join("000001.log").exists(), "still mounted");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["ops"]["fsync"]["failed"], 1, "{stats}");
}
