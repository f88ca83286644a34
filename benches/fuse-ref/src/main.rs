//! `fuse-ref BACKING MOUNTPOINT`: the physical reference for one FUSE round trip.
//!
//! A bare pass-through file system on fuser, the same library, mount options, thread count,
//! attribute TTL and kernel capabilities as hybridfs, serving a local directory with one system
//! call per request and no metadata engine, journal, staging or cache of its own. The benchmark
//! (`benches/run.sh --targets ...,fuseref`) runs it next to hybridfs so that the metadata
//! targets ("time per operation within 1.3x of one round trip") compare against what FUSE
//! itself costs on this machine and kernel, not against the local disk.
//!
//! Not a file system to use: inode numbers are the backing file system's, the inode table
//! only grows, xattrs and locks are not served. It runs until unmounted (or SIGTERM'd by the
//! benchmark, which then unmounts it).

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// hybridfs's attribute and entry TTL (fs/fuse/src/lib.rs), so the kernel caches alike.
const TTL: Duration = Duration::from_secs(5);
const GEN: Generation = Generation(0);
/// hybridfs's largest request (fs/fuse/src/session.rs).
const MAX_IO: u32 = 1 << 20;
const ROOT: u64 = 1;

struct RefFs {
    root_ino: u64,
    /// FUSE inode -> its backing path (the last one seen: enough for a benchmark).
    paths: RwLock<HashMap<u64, PathBuf>>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
}

fn err(e: io::Error) -> Errno {
    Errno::from(e)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn kind(m: &Metadata) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

impl RefFs {
    fn new(backing: &Path) -> io::Result<RefFs> {
        let m = fs::symlink_metadata(backing)?;
        if !m.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", backing.display())));
        }
        let paths = HashMap::from([(ROOT, backing.to_path_buf())]);
        Ok(RefFs {
            root_ino: m.ino(),
            paths: RwLock::new(paths),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_ino {
            ROOT
        } else {
            backing_ino
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.read().get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, m: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// lstat `path`, remember it as its inode's path, and return its attributes.
    fn remember(&self, path: PathBuf) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(&path).map_err(err)?;
        let attr = self.attr(&m);
        self.paths.write().insert(attr.ino.0, path);
        Ok(attr)
    }

    fn entry(&self, path: Result<PathBuf, Errno>, reply: ReplyEntry) {
        match path.and_then(|p| self.remember(p)) {
            Ok(a) => reply.entry(&TTL, &a, GEN),
            Err(e) => reply.error(e),
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.files.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_file(&self, f: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().insert(fh, Arc::new(f));
        FileHandle(fh)
    }

    /// After a rename, the moved entry (and, for a directory, everything under it) lives at
    /// the new path.
    fn renamed(&self, from: &Path, to: &Path) {
        let mut paths = self.paths.write();
        for p in paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            }
        }
    }

    fn list(&self, ino: INodeNo) -> Result<(PathBuf, Vec<(OsStringName, u64, FileType)>), Errno> {
        let dir = self.path(ino)?;
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(err)? {
            let e = e.map_err(err)?;
            let t = e.file_type().map_err(err)?;
            let k = if t.is_dir() {
                FileType::Directory
            } else if t.is_symlink() {
                FileType::Symlink
            } else {
                FileType::RegularFile
            };
            use std::os::unix::fs::DirEntryExt;
            out.push((e.file_name(), self.fuse_ino(e.ino()), k));
        }
        Ok((dir, out))
    }
}

type OsStringName = std::ffi::OsString;

fn set_times(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    fn ts(t: Option<TimeOrNow>) -> libc::timespec {
        match t {
            None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
            Some(TimeOrNow::SpecificTime(t)) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ }
            }
        }
    }
    let times = [ts(atime), ts(mtime)];
    let c = cstr(path)?;
    // SAFETY: c is a valid C string and times a two-element array, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: c is a valid C string; -1 (as u32::MAX) leaves an id unchanged.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    // With the writeback cache the kernel reads pages of files opened write-only.
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => o.read(true),
        _ => o.read(true).write(true),
    };
    o.custom_flags(flags & libc::O_TRUNC);
    o
}

impl Filesystem for RefFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for flag in [
            InitFlags::FUSE_WRITEBACK_CACHE,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(self.child(parent, name), reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = match fh.map(|fh| self.file(fh)) {
            Some(Ok(f)) => f.metadata(),
            _ => match self.path(ino) {
                Ok(p) => fs::symlink_metadata(p),
                Err(e) => return reply.error(e),
            },
        };
        match m {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(err(e)),
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
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let run = || -> Result<FileAttr, Errno> {
            let path = self.path(ino)?;
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(err)?;
            }
            if uid.is_some() || gid.is_some() {
                lchown(&path, uid, gid).map_err(err)?;
            }
            if let Some(size) = size {
                OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size)).map_err(err)?;
            }
            if atime.is_some() || mtime.is_some() {
                set_times(&path, atime, mtime).map_err(err)?;
            }
            self.remember(path)
        };
        match run() {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|p| fs::read_link(p).map_err(err)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let path = self.child(parent, name).and_then(|p| {
            fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(&p).map_err(err)?;
            Ok(p)
        });
        self.entry(path, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).and_then(|p| fs::remove_file(p).map_err(err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).and_then(|p| fs::remove_dir(p).map_err(err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let path = self.child(parent, link_name).and_then(|p| {
            std::os::unix::fs::symlink(target, &p).map_err(err)?;
            Ok(p)
        });
        self.entry(path, reply)
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
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let run = || -> Result<(), Errno> {
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            fs::rename(&from, &to).map_err(err)?;
            self.renamed(&from, &to);
            Ok(())
        };
        match run() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let path = self.path(ino).and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::hard_link(&from, &to).map_err(err)?;
            Ok(to)
        });
        self.entry(path, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.path(ino).and_then(|p| open_options(flags.0).open(p).map_err(err)) {
            Ok(f) => reply.opened(self.add_file(f), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let run = || -> Result<Vec<u8>, Errno> {
            let f = self.file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        };
        match run() {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.file(fh).and_then(|f| f.write_all_at(data, offset).map_err(err)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok()
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
        self.files.lock().remove(&fh.0);
        reply.ok()
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let r = self.file(fh).and_then(|f| if datasync { f.sync_data() } else { f.sync_all() }.map_err(err));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.list(ino) {
            Ok((_, entries)) => {
                for (i, (name, child, kind)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match self.list(ino) {
            Ok((dir, entries)) => {
                for (i, (name, _, _)) in entries.iter().enumerate().skip(offset as usize) {
                    let Ok(attr) = self.remember(dir.join(name)) else { continue };
                    if reply.add(attr.ino, i as u64 + 1, name, &TTL, &attr, GEN) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let run = || -> io::Result<libc::statvfs> {
            let c = cstr(&self.path(INodeNo(ROOT)).map_err(|_| io::Error::from(io::ErrorKind::NotFound))?)?;
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: c is a valid C string and s a statvfs the call fills.
            if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(s)
        };
        match run() {
            Ok(s) => reply.statfs(
                s.f_blocks as u64,
                s.f_bfree as u64,
                s.f_bavail as u64,
                s.f_files as u64,
                s.f_ffree as u64,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
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
        let run = || -> Result<(FileAttr, FileHandle), Errno> {
            let path = self.child(parent, name)?;
            let mut o = open_options(flags);
            o.create(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            }
            let f = o.open(&path).map_err(err)?;
            let attr = self.remember(path)?;
            Ok((attr, self.add_file(f)))
        };
        match run() {
            Ok((a, fh)) => reply.created(&TTL, &a, GEN, fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: fuse-ref BACKING_DIR MOUNTPOINT [--threads N]\n\
         A bare pass-through FUSE file system: the one-round-trip reference of benches/run.sh."
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut pos, mut threads) = (Vec::new(), 4usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => threads = it.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            _ => pos.push(a),
        }
    }
    let [backing, mountpoint] = pos.as_slice() else { usage() };
    let fs = match RefFs::new(Path::new(backing)) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("fuse-ref: {backing}: {e}");
            std::process::exit(1)
        }
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("fuse-ref".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::RW,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    if let Err(e) = fuser::Session::new(fs, Path::new(mountpoint), &config).and_then(|s| s.run()) {
        eprintln!("fuse-ref: {mountpoint}: {e}");
        std::process::exit(1)
    }
}
