//! [`FaultFs`]: the FUSE passthrough itself. Every request is mapped to a path under the
//! backing directory and performed there with ordinary system calls, after the rules in
//! force (see [`crate::Faults`]) have had their say.
//!
//! Inodes are numbered by the filesystem (1 is the root) and remembered per backing
//! inode (device, inode number) with the path they were last seen at; renames move the
//! paths of everything under the renamed name, unlinks forget them, and the kernel's
//! `forget` drops them. Open files and directories keep their backing descriptor, so an
//! unlinked file that is still open reads and writes as on any POSIX filesystem. Files
//! are opened with `FOPEN_DIRECT_IO`, so every read and write reaches the filesystem
//! (and its rules) instead of the page cache. POSIX locks are not negotiated with the
//! kernel, which then handles them locally: RocksDB's `LOCK` works as on a disk.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

use crate::control::Faults;
use crate::rules::Op;

/// How long the kernel may cache attributes and names. Everything changes through the
/// mount (the kernel keeps its caches right itself), so a second is safe.
const TTL: Duration = Duration::from_secs(1);

/// A backing inode: device and inode number.
type BackingKey = (u64, u64);

#[derive(Debug)]
struct Node {
    /// Path relative to the backing directory; `None` once unlinked or replaced.
    path: Option<PathBuf>,
    key: BackingKey,
    /// Lookups the kernel holds (it forgets them with `forget`).
    lookups: u64,
}

#[derive(Debug, Default)]
struct Inodes {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<BackingKey, u64>,
    next: u64,
}

impl Inodes {
    /// The node of backing inode `key`, now at `path`, with one more lookup.
    fn remember(&mut self, path: PathBuf, key: BackingKey) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(path);
                node.lookups += 1;
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: Some(path),
                key,
                lookups: 1,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let key = node.key;
            self.nodes.remove(&ino);
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Forgets the paths of `path` and everything under it (unlinked or replaced).
    fn unlink(&mut self, path: &Path) {
        for node in self.nodes.values_mut() {
            if node.path.as_deref().is_some_and(|p| p.starts_with(path)) {
                node.path = None;
            }
        }
    }

    /// Moves `from` and everything under it to `to`, forgetting what `to` replaced.
    fn rename(&mut self, from: &Path, to: &Path, exchange: bool) {
        for node in self.nodes.values_mut() {
            let Some(p) = node.path.as_deref() else {
                continue;
            };
            if let Ok(rest) = p.strip_prefix(from) {
                node.path = Some(under(to, rest));
            } else if let Ok(rest) = p.strip_prefix(to) {
                node.path = exchange.then(|| under(from, rest));
            }
        }
    }
}

/// `base/rest`, or `base` itself when `rest` is empty (no trailing `/`).
fn under(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// An open file: its backing descriptor and the path it was opened at.
#[derive(Debug)]
struct OpenFile {
    file: Arc<File>,
    path: PathBuf,
}

/// An open directory: its entries as read at `opendir`, served from there.
#[derive(Debug)]
struct OpenDir {
    path: PathBuf,
    entries: Arc<Vec<(u64, FileType, std::ffi::OsString)>>,
}

/// The FUSE filesystem: a passthrough to `backing` with faults injected by `faults`.
#[derive(Debug)]
pub(crate) struct FaultFs {
    backing: PathBuf,
    faults: Faults,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that cannot panic half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn nix_errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsecs)
    }
}

fn kind(m: &Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: kind(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: u32::try_from(m.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn key(m: &Metadata) -> BackingKey {
    (m.dev(), m.ino())
}

/// Opens a backing file with the flags of a FUSE open or create. `O_APPEND` and
/// `O_DIRECT` are dropped: the kernel passes the offset of every write, and our buffers
/// are not aligned for direct IO.
fn open_backing(path: &Path, flags: i32, create_mode: Option<u32>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => options.read(true),
        libc::O_WRONLY => options.write(true),
        _ => options.read(true).write(true),
    };
    let passed = flags
        & !(libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_APPEND
            | libc::O_DIRECT
            | libc::O_NOCTTY);
    options.custom_flags(passed);
    if let Some(mode) = create_mode {
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        options.mode(mode);
    }
    options.open(path)
}

impl FaultFs {
    /// A filesystem over `backing`, which must be a directory.
    pub(crate) fn new(backing: PathBuf, faults: Faults) -> io::Result<Self> {
        let meta = std::fs::metadata(&backing)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", backing.display()),
            ));
        }
        let mut inodes = Inodes {
            next: INodeNo::ROOT.0 + 1,
            ..Default::default()
        };
        inodes.nodes.insert(
            INodeNo::ROOT.0,
            Node {
                path: Some(PathBuf::new()),
                key: key(&meta),
                lookups: 1,
            },
        );
        inodes.by_key.insert(key(&meta), INodeNo::ROOT.0);
        Ok(Self {
            backing,
            faults,
            inodes: Mutex::new(inodes),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// The path of `ino`, relative to the backing directory.
    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes)
            .nodes
            .get(&ino.0)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Applies the rules to `op` on `rel`: sleeps their delay, returns their error, or
    /// the bits to flip (reads).
    fn inject(&self, op: Op, rel: &Path) -> Result<u32, Errno> {
        let path = rel.to_string_lossy();
        let d = self.faults.decide(op, &path);
        if !d.delay.is_zero() {
            std::thread::sleep(d.delay);
        }
        if let Some(e) = d.error {
            tracing::debug!(op = op.name(), path = %path, error = ?e, "injected error");
            return Err(Errno::from_i32(e.errno()));
        }
        Ok(d.corrupt_bits)
    }

    /// Stats `rel` and remembers it, for a reply that hands the kernel an entry.
    fn entry(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        Ok(self.entry_of(rel, &meta))
    }

    fn entry_of(&self, rel: PathBuf, meta: &Metadata) -> FileAttr {
        let ino = lock(&self.inodes).remember(rel, key(meta));
        attr(ino, meta)
    }

    fn file(&self, fh: FileHandle) -> Result<(Arc<File>, PathBuf), Errno> {
        lock(&self.files)
            .get(&fh.0)
            .map(|f| (Arc::clone(&f.file), f.path.clone()))
            .ok_or(Errno::EBADF)
    }

    /// The path rules see for an open file: where its inode is now, else where it was
    /// opened.
    fn file_path(&self, ino: INodeNo, opened_at: PathBuf) -> PathBuf {
        self.rel(ino).unwrap_or(opened_at)
    }

    fn add_file(&self, file: File, path: PathBuf) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                path,
            },
        );
        FileHandle(fh)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let open = fh.and_then(|fh| self.file(fh).ok());
        let rel = match (&open, self.rel(ino)) {
            (_, Ok(rel)) => rel,
            (Some((_, path)), Err(_)) => path.clone(),
            (None, Err(e)) => return Err(e),
        };
        let abs = self.abs(&rel);
        if let Some(size) = size {
            self.inject(Op::Write, &rel)?;
            match &open {
                Some((file, _)) => file.set_len(size),
                None => OpenOptions::new()
                    .write(true)
                    .open(&abs)
                    .and_then(|f| f.set_len(size)),
            }
            .map_err(errno)?;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            self.inject(Op::Metadata, &rel)?;
        }
        if let Some(mode) = mode {
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&abs, uid, gid).map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(at(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(at(t));
            }
            match &open {
                Some((file, _)) => file.set_times(times),
                None => File::open(&abs).and_then(|f| f.set_times(times)),
            }
            .map_err(errno)?;
        }
        let meta = match &open {
            Some((file, _)) => file.metadata(),
            None => std::fs::symlink_metadata(&abs),
        }
        .map_err(errno)?;
        Ok(attr(ino.0, &meta))
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        self.inject(Op::Rename, &from)?;
        let (abs_from, abs_to) = (self.abs(&from), self.abs(&to));
        if flags.is_empty() {
            std::fs::rename(&abs_from, &abs_to).map_err(errno)?;
        } else {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &abs_from,
                nix::fcntl::AT_FDCWD,
                &abs_to,
                nix::fcntl::RenameFlags::from_bits_retain(flags.bits()),
            )
            .map_err(nix_errno)?;
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        lock(&self.inodes).rename(&from, &to, exchange);
        Ok(())
    }

    fn do_read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let (file, opened_at) = self.file(fh)?;
        let rel = self.file_path(ino, opened_at);
        let bits = self.inject(Op::Read, &rel)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(filled);
        if bits > 0 {
            self.faults.corrupt(&mut buf, bits);
        }
        Ok(buf)
    }

    fn do_opendir(&self, ino: INodeNo) -> Result<FileHandle, Errno> {
        let rel = self.rel(ino)?;
        self.inject(Op::Open, &rel)?;
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for entry in std::fs::read_dir(self.abs(&rel)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            entries.push((
                std::os::unix::fs::DirEntryExt::ino(&entry),
                kind,
                entry.file_name(),
            ));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(
            fh,
            OpenDir {
                path: rel,
                entries: Arc::new(entries),
            },
        );
        Ok(FileHandle(fh))
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        let rel = self.child(parent, name)?;
        self.inject(Op::Create, &rel)?;
        let file =
            open_backing(&self.abs(&rel), flags, Some(mode & !umask & 0o7777)).map_err(errno)?;
        let meta = file.metadata().map_err(errno)?;
        let attr = self.entry_of(rel.clone(), &meta);
        Ok((attr, self.add_file(file, rel)))
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.child(parent, name).and_then(|rel| {
                self.inject(Op::Metadata, &rel)?;
                self.entry(rel)
            }),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = (|| {
            let open = fh.and_then(|fh| self.file(fh).ok());
            let (meta, rel) = match open {
                Some((file, opened_at)) => (
                    file.metadata().map_err(errno),
                    self.file_path(ino, opened_at),
                ),
                None => {
                    let rel = self.rel(ino)?;
                    (
                        std::fs::symlink_metadata(self.abs(&rel)).map_err(errno),
                        rel,
                    )
                }
            };
            self.inject(Op::Metadata, &rel)?;
            Ok(attr(ino.0, &meta?))
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.rel(ino).and_then(|rel| {
            self.inject(Op::Metadata, &rel)?;
            std::fs::read_link(self.abs(&rel)).map_err(errno)
        });
        match r {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.child(parent, name).and_then(|rel| {
                self.inject(Op::Create, &rel)?;
                let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(mode & !umask & 0o7777);
                nix::sys::stat::mknod(&self.abs(&rel), kind, perm, u64::from(rdev))
                    .map_err(nix_errno)?;
                self.entry(rel)
            }),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.child(parent, name).and_then(|rel| {
                self.inject(Op::Create, &rel)?;
                std::fs::DirBuilder::new()
                    .mode(mode & !umask & 0o7777)
                    .create(self.abs(&rel))
                    .map_err(errno)?;
                self.entry(rel)
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.child(parent, name).and_then(|rel| {
                self.inject(Op::Remove, &rel)?;
                std::fs::remove_file(self.abs(&rel)).map_err(errno)?;
                lock(&self.inodes).unlink(&rel);
                Ok(())
            }),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.child(parent, name).and_then(|rel| {
                self.inject(Op::Remove, &rel)?;
                std::fs::remove_dir(self.abs(&rel)).map_err(errno)?;
                lock(&self.inodes).unlink(&rel);
                Ok(())
            }),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.child(parent, link_name).and_then(|rel| {
                self.inject(Op::Create, &rel)?;
                std::os::unix::fs::symlink(target, self.abs(&rel)).map_err(errno)?;
                self.entry(rel)
            }),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.rel(ino).and_then(|old| {
                let rel = self.child(newparent, newname)?;
                self.inject(Op::Create, &rel)?;
                std::fs::hard_link(self.abs(&old), self.abs(&rel)).map_err(errno)?;
                self.entry(rel)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.rel(ino).and_then(|rel| {
            self.inject(Op::Open, &rel)?;
            let file = open_backing(&self.abs(&rel), flags.0, None).map_err(errno)?;
            Ok(self.add_file(file, rel))
        });
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.file(fh).and_then(|(file, opened_at)| {
            self.inject(Op::Write, &self.file_path(ino, opened_at))?;
            file.write_all_at(data, offset).map_err(errno)
        });
        match r {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.file(fh).and_then(|(file, opened_at)| {
                self.inject(Op::Fsync, &self.file_path(ino, opened_at))?;
                if datasync {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
                .map_err(errno)
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some((path, entries)) = lock(&self.dirs)
            .get(&fh.0)
            .map(|d| (d.path.clone(), Arc::clone(&d.entries)))
        else {
            reply.error(Errno::EBADF);
            return;
        };
        if let Err(e) = self.inject(Op::Metadata, &path) {
            reply.error(e);
            return;
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let path = lock(&self.dirs).get(&fh.0).map(|d| d.path.clone());
        let r = path.map_or_else(|| self.rel(ino), Ok).and_then(|rel| {
            self.inject(Op::Fsync, &rel)?;
            let dir = File::open(self.abs(&rel)).map_err(errno)?;
            if datasync {
                dir.sync_data()
            } else {
                dir.sync_all()
            }
            .map_err(errno)
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self
            .inject(Op::Metadata, Path::new(""))
            .and_then(|_| nix::sys::statvfs::statvfs(&self.backing).map_err(nix_errno));
        match r {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                u32::try_from(s.block_size()).unwrap_or(4096),
                u32::try_from(s.name_max()).unwrap_or(255),
                u32::try_from(s.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.rel(ino).and_then(|rel| {
                self.inject(Op::Metadata, &rel)?;
                nix::unistd::access(
                    &self.abs(&rel),
                    nix::unistd::AccessFlags::from_bits_truncate(mask.bits()),
                )
                .map_err(nix_errno)
            }),
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode, umask, flags) {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.file(fh).and_then(|(file, opened_at)| {
                self.inject(Op::Write, &self.file_path(ino, opened_at))?;
                let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length))
                else {
                    return Err(Errno::EINVAL);
                };
                nix::fcntl::fallocate(
                    &*file,
                    nix::fcntl::FallocateFlags::from_bits_retain(mode),
                    offset,
                    length,
                )
                .map_err(nix_errno)
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn renames_move_everything_under_the_name() {
        let mut inodes = Inodes {
            next: 2,
            ..Default::default()
        };
        let a = inodes.remember("d/a".into(), (1, 10));
        let sub = inodes.remember("d/sub/b".into(), (1, 11));
        let replaced = inodes.remember("e".into(), (1, 12));
        let other = inodes.remember("dd/x".into(), (1, 13));
        inodes.rename(Path::new("d"), Path::new("e"), false);
        let path = |i: &Inodes, ino| i.nodes[&ino].path.clone();
        assert_eq!(path(&inodes, a), Some("e/a".into()));
        inodes.rename(Path::new("e/a"), Path::new("g"), false);
        assert_eq!(
            path(&inodes, a).unwrap().to_str(),
            Some("g"),
            "no trailing slash"
        );
        assert_eq!(path(&inodes, sub), Some("e/sub/b".into()));
        assert_eq!(path(&inodes, replaced), None);
        assert_eq!(
            path(&inodes, other),
            Some("dd/x".into()),
            "components, not bytes"
        );
        inodes.unlink(Path::new("e/sub"));
        assert_eq!(path(&inodes, sub), None);
        // The same backing inode at a new path is the same node.
        assert_eq!(inodes.remember("f".into(), (1, 11)), sub);
        inodes.forget(sub, 2);
        assert!(!inodes.nodes.contains_key(&sub));
        assert!(!inodes.by_key.contains_key(&(1, 11)));
    }
}
