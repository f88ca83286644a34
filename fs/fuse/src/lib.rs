//! The FUSE adapter: decode a request, call the core [`MountView`], encode the reply. Nothing
//! else: which inodes are live and which are read-only snapshot views, `EROFS` for changes to
//! views, and the kernel's lookup counts are the facade's (`hybridfs_core::volume::mount_view`).
//!
//! # Threads: how synchronous callbacks reach the core
//!
//! fuser runs `n_threads` session threads, each reading its own cloned `/dev/fuse` descriptor
//! and calling [`Filesystem`] methods directly. The core is synchronous and thread-safe (see
//! the locking notes in `hybridfs_core::volume`), so each callback blocks its session thread
//! on the core and replies; there is no async runtime on this path and nothing to bound
//! beyond the thread count: the kernel queues what the threads have not read yet. One
//! exception: a read that would wait for the object store (a clone's cold data) is handed to
//! a bounded pool of waiter threads with its reply, so that waiting never takes a session
//! thread; a waiter also answers `EINTR` when the reader is interrupted (see `cold.rs`).
//!
//! # Kernel caching
//!
//! Only this process changes the volume while it is mounted, so the kernel may cache freely:
//! attributes and entries (also negative ones) for [`TTL`], page cache kept across opens
//! (`FOPEN_KEEP_CACHE`). A shared volume (several hosts) is the exception: [`SHARED_TTL`],
//! and no page cache kept across opens ([`HybridFs::shared`]). The kernel then offers one of two modes, and the mount picks one:
//! * **passthrough** (default): read-only opens of files whose data is all in their staging
//!   file are served by the kernel from that file (see `passthrough.rs`); with passthrough
//!   writes on, so are opens for writing of files with no sealed block (new files, `O_TRUNC`
//!   opens: the core's "Passthrough writes"); other writes are write-through, up to 1 MiB per
//!   request;
//! * **writeback cache** (`--writeback-cache`): the kernel gathers small writes into large ones
//!   and keeps size and mtime; `fsync` and `close` flush it to us.
//!
//! Permission checks are the kernel's (`default_permissions`); file locks are kept by the
//! kernel, local to this node.

mod cold;
mod errno;
pub mod kernel_cache;
mod listing;
mod passthrough;
mod session;

pub use session::{mount, MountConfig};

use errno::{ReplyError, ReplyResult};
use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use hybridfs_core::blockstore::{with_waiting, Waiting};
use hybridfs_core::types::{Inode, Kind, Timespec};
use hybridfs_core::{
    Caller, Fallocate, FsError, IoKind, KillPriv, MountView, NewNode, ReaddirEntry, RenameFlags, SetAttr, TimeSet, Volume,
    XattrMode,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// FUSE requests by kind (`op`), and the time each spent in this process (histogram,
/// seconds), from the adapter's entry to its reply (doc/METRICS.md).
pub const FUSE_REQUESTS: &str = "hybridfs_fuse_requests_total";
pub const FUSE_REQUEST_SECONDS: &str = "hybridfs_fuse_request_seconds";

/// One FUSE request: its metrics (count and latency by op) and, at debug, its span `fuse`
/// with `op`, `ino` (the inode or parent directory) and `result` (`ok` or the errno's name,
/// noted by [`errno::ReplyError::fail`] on the thread that replies). Sent along with a cold
/// read to the thread that answers it.
struct OpTimer {
    op: &'static str,
    start: std::time::Instant,
    span: tracing::Span,
}

/// A request's [`OpTimer`] with its span entered on the session thread, so that what the
/// handler logs carries the request's fields.
struct Op {
    timer: OpTimer,
    _entered: tracing::span::EnteredSpan,
}

fn op_timer(op: &'static str, ino: INodeNo) -> Op {
    let span = tracing::debug_span!("fuse", op, ino = ino.0, result = tracing::field::Empty);
    errno::take_failure();
    Op { _entered: span.clone().entered(), timer: OpTimer { op, start: std::time::Instant::now(), span } }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        metrics::counter!(FUSE_REQUESTS, "op" => self.op).increment(1);
        metrics::histogram!(FUSE_REQUEST_SECONDS, "op" => self.op).record(self.start.elapsed().as_secs_f64());
        if !self.span.is_disabled() {
            self.span.record("result", errno::take_failure().unwrap_or("ok"));
        }
    }
}

/// How long the kernel may trust attributes and entries it got from us.
pub const TTL: Duration = Duration::from_secs(5);
/// The same on a shared volume (other hosts change it too): a rename, unlink or new size on
/// another host is seen by this host's next lookup or stat at most this long after
/// (doc/SEMANTICS.md, "Several hosts"); `meta_cache_ttl_ms` in `volume.json` changes it.
pub const SHARED_TTL: Duration = Duration::from_secs(1);
const GEN: Generation = Generation(0);

pub struct HybridFs {
    vol: MountView,
    passthrough: passthrough::Backings,
    want_passthrough: bool,
    want_passthrough_writes: bool,
    listings: listing::Listings,
    cold: cold::ColdReads,
    /// [`TTL`], or on a shared volume its shorter one ([`HybridFs::shared`]).
    ttl: Duration,
}

impl HybridFs {
    /// `read_only`: every change is `EROFS` (a `ro` mount; the kernel has `MS_RDONLY` too).
    /// `want_passthrough_writes`: opens for writing of files with no sealed block are
    /// passthrough too (only with `want_passthrough`).
    pub fn new(vol: Arc<Volume>, want_passthrough: bool, want_passthrough_writes: bool, read_only: bool) -> Self {
        let vol = if read_only { MountView::read_only(vol) } else { MountView::new(vol) };
        let cold = cold::ColdReads::new(vol.clone());
        HybridFs {
            vol,
            passthrough: passthrough::Backings::default(),
            want_passthrough,
            want_passthrough_writes,
            listings: listing::Listings::default(),
            cold,
            ttl: TTL,
        }
    }

    /// Serve a shared volume: other hosts change it, so the kernel trusts attributes and
    /// entries for `ttl` only and drops a file's page cache when it is opened (close-to-open:
    /// what another host wrote before its close is read after this host's open).
    pub fn shared(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.passthrough.keep_cache(false);
        self
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: INodeNo(i.ino),
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: to_system(i.atime),
            mtime: to_system(i.mtime),
            ctime: to_system(i.ctime),
            crtime: to_system(i.ctime),
            kind: file_type(i.kind),
            perm: i.perm as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    /// Reply with an entry the facade counted.
    fn entry(&self, r: Result<Inode, FsError>, reply: ReplyEntry, op: &str) {
        match r {
            Ok(i) => reply.entry(&self.ttl, &self.attr(&i), GEN),
            Err(e) => reply.fail(op, e),
        }
    }

    /// Add `entries` with their attributes to a readdirplus reply until it is full; returns
    /// how many the kernel took (entries removed since the listing was read count, unsent).
    /// Attributes are read a chunk at a time with one store read each ([`MountView::getattrs`]):
    /// a reply holds a few dozen entries or a few hundred, depending on the kernel's buffer, so
    /// chunks start small and double.
    fn add_with_attrs(&self, reply: &mut ReplyDirectoryPlus, entries: &[ReaddirEntry]) -> Result<usize, FsError> {
        let mut sent = 0;
        let mut chunk = 32;
        while sent < entries.len() {
            let part = &entries[sent..(sent + chunk).min(entries.len())];
            let inos: Vec<u64> = part.iter().map(|e| e.ino).collect();
            for (e, attr) in part.iter().zip(self.vol.getattrs(&inos)?) {
                let dots = e.name == b"." || e.name == b"..";
                let inode = match attr {
                    Ok(i) => i,
                    Err(_) if dots => Inode::new(e.ino, Kind::Dir, 0o755, 0, 0),
                    // Removed since the listing was read: leave it out.
                    Err(FsError::NotFound) => {
                        sent += 1;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                if reply.add(INodeNo(e.ino), e.offset, OsStr::from_bytes(&e.name), &self.ttl, &self.attr(&inode), GEN) {
                    return Ok(sent);
                }
                sent += 1;
                self.vol.listed(e);
            }
            chunk *= 2;
        }
        Ok(sent)
    }

    fn new_node(&self, req: &Request, parent: INodeNo, name: &OsStr, new: NewNode, reply: ReplyEntry, op: &str) {
        let r = self.vol.create_node(parent.0, name.as_bytes(), new, caller(req));
        self.entry(r, reply, op);
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn to_system(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn from_system(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(from_system(t)),
    }
}

impl Filesystem for HybridFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let passthrough = session::tune(config, self.want_passthrough, self.want_passthrough_writes);
        self.vol.enable_passthrough(passthrough);
        self.vol.enable_passthrough_writes(passthrough && self.want_passthrough_writes);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vol.shutdown() {
            tracing::error!("flush volume at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = op_timer("lookup", parent);
        match self.vol.lookup(parent.0, name.as_bytes()) {
            Ok(Some(i)) => reply.entry(&self.ttl, &self.attr(&i), GEN),
            Ok(None) => {
                // A negative entry: the kernel caches the absence for TTL.
                let mut none = self.attr(&Inode::new(0, Kind::File, 0, 0, 0));
                none.ino = INodeNo(0);
                reply.entry(&self.ttl, &none, GEN);
            }
            Err(e) => reply.fail("lookup", e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = op_timer("forget", ino);
        self.vol.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = op_timer("getattr", ino);
        match self.vol.getattr(ino.0) {
            Ok(i) => reply.attr(&self.ttl, &self.attr(&i)),
            Err(e) => reply.fail("getattr", e),
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
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = op_timer("setattr", ino);
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(from_system),
        };
        match self.vol.setattr(ino.0, set) {
            Ok(i) => reply.attr(&self.ttl, &self.attr(&i)),
            Err(e) => reply.fail("setattr", e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = op_timer("readlink", ino);
        match self.vol.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.fail("readlink", e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _op = op_timer("mknod", parent);
        let Some(kind) = Kind::from_mode(mode) else {
            return reply.fail("mknod", FsError::Invalid("unknown file type"));
        };
        let new = NewNode { kind, perm: mode & !umask & 0o7777, rdev, target: Vec::new() };
        self.new_node(req, parent, name, new, reply, "mknod");
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _op = op_timer("mkdir", parent);
        let new = NewNode { kind: Kind::Dir, perm: mode & !umask & 0o7777, rdev: 0, target: Vec::new() };
        self.new_node(req, parent, name, new, reply, "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op_timer("unlink", parent);
        reply.result("unlink", self.vol.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op_timer("rmdir", parent);
        reply.result("rmdir", self.vol.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _op = op_timer("symlink", parent);
        let new = NewNode { kind: Kind::Symlink, perm: 0o777, rdev: 0, target: target.as_os_str().as_bytes().to_vec() };
        self.new_node(req, parent, link_name, new, reply, "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op_timer("rename", parent);
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT) {
            return reply.fail("rename", FsError::Invalid("RENAME_WHITEOUT is not supported"));
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        reply.result("rename", self.vol.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), f));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _op = op_timer("link", ino);
        let r = self.vol.link(ino.0, newparent.0, newname.as_bytes());
        self.entry(r, reply, "link");
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        let _op = op_timer("open", ino);
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if flags.0 & libc::O_TRUNC != 0 {
            // Only with passthrough writes is `O_TRUNC` passed on (FUSE_ATOMIC_O_TRUNC): the
            // file is emptied before the open, so a checkpoint written over an old one has no
            // sealed block and is written by passthrough.
            let empty = SetAttr { size: Some(0), ..Default::default() };
            if let Err(e) = self.vol.setattr(ino.0, empty) {
                return reply.fail("open", e);
            }
        }
        match self.vol.open(ino.0, write) {
            Ok(opened) => self.passthrough.reply_open(&self.vol, opened, reply),
            Err(e) => reply.fail("open", e),
        }
    }

    /// Answered here when the node holds the data; a read that would wait for the object
    /// store goes to a waiter thread (`cold.rs`), and this thread serves the next request.
    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let op = op_timer("read", ino);
        match with_waiting(Waiting::Never, || self.vol.read(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(FsError::WouldBlock) => {
                self.cold.submit(cold::ColdRead { ino: ino.0, offset, size, caller: req.pid(), reply, timer: op.timer })
            }
            Err(e) => reply.fail("read", e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: fuser::WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = op_timer("write", ino);
        match self.vol.write(ino.0, offset, data, kill_priv(write_flags)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.fail("write", e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        let _op = op_timer("flush", ino);
        reply.result("flush", self.vol.flush(ino.0));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = op_timer("release", ino);
        let kind = passthrough::kind_of(fh);
        if matches!(kind, IoKind::Passthrough | IoKind::PassthroughWrite) {
            self.passthrough.released(ino.0);
        }
        reply.result("release", self.vol.release(ino.0, kind));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = op_timer("fsync", ino);
        reply.result("fsync", self.vol.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        let _op = op_timer("opendir", ino);
        match self.vol.opendir(ino.0) {
            Ok(_) => reply.opened(FileHandle(self.listings.open()), FopenFlags::empty()),
            Err(e) => reply.fail("opendir", e),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: fuser::OpenFlags, reply: ReplyEmpty) {
        let _op = op_timer("releasedir", ino);
        self.listings.close(fh.0);
        self.vol.releasedir(ino.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _op = op_timer("readdir", ino);
        let entries = match self.listings.entries(&self.vol, ino.0, fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.fail("readdir", e),
        };
        let mut sent = 0;
        for e in &entries {
            if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                break;
            }
            sent += 1;
        }
        self.listings.consumed(fh.0, &entries[..sent]);
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _op = op_timer("readdirplus", ino);
        let entries = match self.listings.entries(&self.vol, ino.0, fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.fail("readdirplus", e),
        };
        let sent = match self.add_with_attrs(&mut reply, &entries) {
            Ok(n) => n,
            Err(e) => return reply.fail("readdirplus", e),
        };
        self.listings.consumed(fh.0, &entries[..sent]);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = op_timer("fsyncdir", ino);
        reply.result("fsyncdir", self.vol.fsync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = op_timer("statfs", _ino);
        match self.vol.disk_space() {
            Ok(d) => {
                let files = 1u64 << 32;
                reply.statfs(d.blocks, d.free, d.avail, files, files, d.block_size as u32, 255, d.block_size as u32)
            }
            Err(e) => reply.fail("statfs", e),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let _op = op_timer("setxattr", ino);
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.fail("setxattr", FsError::Invalid("bad setxattr flags")),
        };
        reply.result("setxattr", self.vol.setxattr(ino.0, name.as_bytes(), value, mode));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = op_timer("getxattr", ino);
        xattr_reply(self.vol.getxattr(ino.0, name.as_bytes()), size, reply, "getxattr");
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = op_timer("listxattr", ino);
        xattr_reply(self.vol.listxattr(ino.0), size, reply, "listxattr");
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op_timer("removexattr", ino);
        reply.result("removexattr", self.vol.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _op = op_timer("access", _ino);
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let _op = op_timer("create", parent);
        let new = NewNode { kind: Kind::File, perm: mode & !umask & 0o7777, rdev: 0, target: Vec::new() };
        match self.vol.create(parent.0, name.as_bytes(), new, caller(req), flags & libc::O_TRUNC != 0) {
            Ok(opened) => {
                let attr = self.attr(&opened.inode);
                self.passthrough.reply_create(&self.vol, opened, &attr, &self.ttl, reply)
            }
            Err(e) => reply.fail("create", e),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let _op = op_timer("fallocate", ino);
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let m = match rest {
            0 => Fallocate::Allocate { keep_size },
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => Fallocate::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => Fallocate::ZeroRange { keep_size },
            _ => return reply.fail("fallocate", FsError::Unsupported("fallocate mode")),
        };
        reply.result("fallocate", self.vol.fallocate(ino.0, offset, length, m));
    }

    /// No ioctl is supported. The answer is ENOTTY ("not a terminal"), quietly: every
    /// `open()` by Python asks `TCGETS`, and fuser's default logs a warning per call.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _op = op_timer("ioctl", _ino);
        reply.error(fuser::Errno::ENOTTY);
    }
}

/// What a write removes from its file (the mount has FUSE_HANDLE_KILLPRIV_V2, `session.rs`):
/// set-user/group-ID when the kernel says the writer lacks `CAP_FSETID`, capabilities on
/// every write by a process. A flush of the writeback cache (`FUSE_WRITE_CACHE`) removes
/// nothing: the write it carries already did, and an attribute set since must stay.
fn kill_priv(flags: fuser::WriteFlags) -> KillPriv {
    if flags.contains(fuser::WriteFlags::FUSE_WRITE_CACHE) {
        return KillPriv::default();
    }
    KillPriv { suidgid: flags.contains(fuser::WriteFlags::FUSE_WRITE_KILL_SUIDGID), caps: true }
}

fn xattr_reply(r: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr, op: &str) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.fail(op, FsError::Range),
        Ok(v) => reply.data(&v),
        Err(e) => reply.fail(op, e),
    }
}
