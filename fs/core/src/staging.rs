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

pub struct Staging {
    dir: PathBuf,
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
        Ok(Staging { dir })
    }

    pub fn path(&self, ino: Ino) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Open the staging file of `ino`, creating it when `create`.
    pub fn open(&self, ino: Ino, create: bool) -> Result<Option<File>> {
        let path = self.path(ino);
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
