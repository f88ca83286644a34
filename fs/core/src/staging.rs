//! Staging files: the private, mutable home of data not yet sealed.
//!
//! Each inode with staged blocks has one sparse file `staging/<ino>` whose bytes sit at the same
//! offsets as in the file itself, so a sequential writer turns into sequential `pwrite`s on the
//! local disk. Which blocks of that file count is recorded by `Extent::Staged` in the metadata
//! store; bytes of the staging file under any other extent are ignored. The set of files in the
//! directory is the sealer's work list after a restart.

use crate::error::{FsError, Result};
use crate::types::Ino;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Staging {
    dir: PathBuf,
    /// Empty files made ahead of need ([`Staging::start_pool`]); unset: each staging file is
    /// created when it is opened.
    pool: std::sync::OnceLock<(Arc<Pool>, std::thread::JoinHandle<()>)>,
}

/// Files kept ready in the pool; refilled when half are gone.
const POOL_FILES: usize = 64;

/// Empty unnamed files (`O_TMPFILE`) made by a thread of their own in the staging directory
/// `dir`, each taken by linking it under its inode's name: ext4 allocates an inode per
/// created file, which on this project's VM (ext4 without a journal) costs ~40 us to ~1 ms
/// (each free inode of the group deleted in the last minutes is skipped, reading its inode
/// table block); an untar's request threads paid it in every create (benches/README.md,
/// "untar: staging files from a pool"). An unnamed file holds no lock on the directory while
/// it is made (a rename from a pool directory would wait for the thread's create there), and
/// one never linked goes with the process: nothing is left to clean up.
struct Pool {
    dir: PathBuf,
    ready: parking_lot::Mutex<Vec<File>>,
    wanted: parking_lot::Condvar,
    stop: AtomicBool,
}

impl Staging {
    /// Opens the staging directory `dir`, creating it (and its parents) when missing. A new
    /// one is made under a parent marked `FS_TOPDIR_FL` (best effort; ext4's `chattr +T`), so
    /// that ext4 puts it in a block group of its own instead of its parent's: the staging
    /// files are created there, and on an ext4 without a journal every inode allocation skips
    /// (reading its inode table block) each free inode of the group deleted in the last
    /// minutes, ~1 ms per staging file beside a busy scratch directory against ~40 us in a
    /// quiet group (benches/README.md, "untar: new files by passthrough").
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.exists() {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                if std::fs::create_dir_all(parent).is_ok() {
                    mark_topdir(parent);
                }
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| FsError::io(format!("create {}", dir.display()), e))?;
        Ok(Staging { dir, pool: std::sync::OnceLock::new() })
    }

    /// Keep empty files ready for [`Staging::open`] to take (a thread `staging-pool` makes
    /// them; a mount starts it with its sealer, `Volume::start_sealer`: offline commands that
    /// open the volume make none). Best effort: where the file system has no `O_TMPFILE` (or
    /// the link fails), files are created when needed, as without a pool.
    pub fn start_pool(&self) {
        if self.pool.get().is_some() {
            return;
        }
        let pool = Arc::new(Pool {
            dir: self.dir.clone(),
            ready: parking_lot::Mutex::new(Vec::new()),
            wanted: parking_lot::Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let filler = pool.clone();
        match std::thread::Builder::new().name("staging-pool".into()).spawn(move || filler.fill()) {
            Ok(handle) => {
                if let Err((extra, handle)) = self.pool.set((pool, handle)) {
                    // Another start won the race: this one's thread stops.
                    extra.stop_and_join(handle);
                }
            }
            Err(e) => tracing::warn!("staging file pool: no thread ({e}); staging files are created when needed"),
        }
    }

    pub fn path(&self, ino: Ino) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Open the staging file of `ino`, creating it when `create`: from the pool where one
    /// is ready and `ino` has no staging file yet (a link that replaces nothing).
    pub fn open(&self, ino: Ino, create: bool) -> Result<Option<File>> {
        let path = self.path(ino);
        if create {
            if let Some(f) = self.take_pooled(&path) {
                return Ok(Some(f));
            }
        }
        match OpenOptions::new().read(true).write(true).create(create).mode(0o600).open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(FsError::io(format!("open staging file {}", path.display()), e)),
        }
    }

    pub fn remove(&self, ino: Ino) -> Result<()> {
        match std::fs::remove_file(self.path(ino)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(FsError::io(format!("remove staging file of inode {ino}"), e))
            }
            _ => Ok(()),
        }
    }

    /// A pool file linked as `path`, if one is ready and nothing is at `path` (`linkat`
    /// fails with `EEXIST`: an existing staging file is opened as it is, by the caller).
    fn take_pooled(&self, path: &Path) -> Option<File> {
        let (pool, _) = self.pool.get()?;
        if pool.stop.load(Ordering::Relaxed) {
            return None;
        }
        let file = {
            let mut ready = pool.ready.lock();
            let taken = ready.pop();
            if ready.len() <= POOL_FILES / 2 {
                pool.wanted.notify_one();
            }
            taken?
        };
        match link_unnamed(&file, path) {
            Ok(()) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Still empty and unnamed: back to the pool.
                pool.ready.lock().push(file);
                None
            }
            Err(e) => {
                // No /proc, or a file system that cannot link unnamed files: the pool stops
                // (once), files are created when needed.
                if !pool.stop.swap(true, Ordering::Relaxed) {
                    tracing::warn!("link a pooled staging file as {}: {e}; staging files are created when needed", path.display());
                    let _ready = pool.ready.lock();
                    pool.wanted.notify_all();
                }
                None
            }
        }
    }

    /// Make the directory entries of the staging files created so far durable.
    pub fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| FsError::io(format!("sync staging directory {}", self.dir.display()), e))
    }

    /// Inodes that have a staging file.
    pub fn list(&self) -> Result<Vec<Ino>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| FsError::io("list staging dir", e))?;
        Ok(rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
    }
}

impl Drop for Staging {
    /// Stops the pool's thread; its unnamed files go when closed.
    fn drop(&mut self) {
        if let Some((pool, handle)) = self.pool.take() {
            pool.stop_and_join(handle);
        }
    }
}

impl Pool {
    fn stop_and_join(&self, handle: std::thread::JoinHandle<()>) {
        self.stop.store(true, Ordering::Relaxed);
        {
            let _ready = self.ready.lock();
            self.wanted.notify_all();
        }
        let _ = handle.join();
    }

    /// The thread: keep [`POOL_FILES`] ready; wait while more than half are.
    fn fill(&self) {
        loop {
            {
                let mut ready = self.ready.lock();
                while ready.len() > POOL_FILES / 2 && !self.stop.load(Ordering::Relaxed) {
                    self.wanted.wait(&mut ready);
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            while self.ready.lock().len() < POOL_FILES && !self.stop.load(Ordering::Relaxed) {
                match OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(&self.dir) {
                    Ok(f) => self.ready.lock().push(f),
                    Err(e) => {
                        // No O_TMPFILE here, a full disk or a removed directory: the opens
                        // create their own files meanwhile; try again after a pause.
                        tracing::debug!("staging file pool: unnamed file in {}: {e}", self.dir.display());
                        let mut ready = self.ready.lock();
                        if !self.stop.load(Ordering::Relaxed) {
                            self.wanted.wait_for(&mut ready, std::time::Duration::from_secs(1));
                        }
                        break;
                    }
                }
            }
        }
        self.ready.lock().clear();
    }
}

/// Give the unnamed (`O_TMPFILE`) file `file` the name `to`; `EEXIST` if `to` exists.
fn link_unnamed(file: &File, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| std::ffi::CString::new(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
    let from = c(format!("/proc/self/fd/{}", file.as_raw_fd()).as_bytes())?;
    let to = c(to.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated paths that live through the call; the descriptor is
    // open (it names the file through /proc, followed by AT_SYMLINK_FOLLOW: no capability
    // needed, unlike AT_EMPTY_PATH).
    let rc = unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Set `FS_TOPDIR_FL` on the directory `dir` (see [`Staging::new`]); file systems without
/// the flag, or a caller not allowed to set it, leave it unset.
fn mark_topdir(dir: &Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_long = 0x0002_0000;
    let Ok(d) = File::open(dir) else { return };
    let mut flags: libc::c_long = 0;
    // SAFETY: both ioctls read or write one `long` at the given pointer, which lives
    // through the calls; the descriptor is open.
    unsafe {
        if libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 && flags & FS_TOPDIR_FL == 0 {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Read as much of `buf` as the file holds at `off`; the rest stays as it was (zeros).
pub fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deallocate `[off, off+len)` of a staging file so it reads as zeros and frees disk space.
pub fn punch_hole(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off as i64, len as i64) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Reserve `[off, off+len)` of a staging file on disk (ENOSPC now rather than on write).
pub fn allocate(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mode = libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off as i64, len as i64) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The data regions of a staging file below `size`, as `[start, end)` ranges (`SEEK_DATA` /
/// `SEEK_HOLE`): where bytes were written, which is how the kernel's passthrough writes are
/// found (a file system without holes reports one region: the whole file).
pub fn data_regions(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence: i32| {
        // SAFETY: plain syscall on an owned, open descriptor; only its offset changes, and
        // staging files are read and written with pread/pwrite only.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r >= 0 {
            Ok(Some(r as u64))
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) }
        }
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(start) = seek(pos, libc::SEEK_DATA)?.filter(|s| *s < size) else { break };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) until the pool's thread has made files.
    fn pool_ready(s: &Staging) -> usize {
        for _ in 0..500 {
            let n = s.pool.get().map_or(0, |(p, _)| p.ready.lock().len());
            if n > 0 {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the staging file pool made no file in 5 s");
    }

    #[test]
    fn new_staging_files_come_from_the_pool_and_are_listed_as_theirs() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::new(d.path().join("staging")).unwrap();
        s.start_pool();
        let before = pool_ready(&s);
        let f = s.open(42, true).unwrap().unwrap();
        assert_eq!(s.pool.get().unwrap().0.ready.lock().len(), before - 1, "taken from the pool");
        f.write_all_at(b"abc", 0).unwrap();
        assert_eq!(std::fs::read(s.path(42)).unwrap(), b"abc", "the file handed out is the one named by the inode");
        assert_eq!(s.list().unwrap(), vec![42], "the pool's files have no name");
        drop(s);
        assert_eq!(std::fs::read_dir(d.path().join("staging")).unwrap().count(), 1, "a stopped pool leaves no file");
    }

    /// Invariant 1 (staged bytes are never lost): taking a file from the pool never replaces
    /// a staging file already there; it is opened with its bytes.
    #[test]
    fn an_existing_staging_file_is_opened_not_replaced_by_a_pool_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::new(d.path().join("staging")).unwrap();
        std::fs::write(s.path(7), b"staged").unwrap();
        s.start_pool();
        // A full pool: its thread waits until half is taken, so the count below is exact.
        let ready = || s.pool.get().unwrap().0.ready.lock().len();
        for _ in 0..500 {
            if ready() == POOL_FILES {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(ready(), POOL_FILES, "the pool filled within 5 s");
        let f = s.open(7, true).unwrap().unwrap();
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"staged");
        assert_eq!(ready(), POOL_FILES, "the pool file went back to the pool");
    }

    /// Invariant 1: a staging file linked from the pool is durable like a created one: its
    /// bytes and name are there after the volume lets go of it (fsync of the file and the
    /// directory, as `Volume::fsync` does).
    #[test]
    fn a_pooled_staging_file_keeps_its_name_and_bytes_after_the_pool_stops() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("staging");
        let s = Staging::new(&dir).unwrap();
        s.start_pool();
        pool_ready(&s);
        let f = s.open(9, true).unwrap().unwrap();
        f.write_all_at(b"staged", 0).unwrap();
        f.sync_data().unwrap();
        s.sync_dir().unwrap();
        drop(f);
        drop(s);
        assert_eq!(std::fs::read(dir.join("9")).unwrap(), b"staged");
        assert_eq!(Staging::new(&dir).unwrap().list().unwrap(), vec![9]);
    }
}
