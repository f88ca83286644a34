//! Keeps a reserve of free space on the disk that holds the volume.
//!
//! Data writes are refused with ENOSPC while the free space is below the reserve, so the
//! metadata store (whose own writes must not fail) always has room to record the unlink that
//! frees space again. The reserve is small: 2% of the file system, between 8 MiB and 256 MiB.
//! The sealer keeps out of it too ([`SpaceGuard::room`]): sealing writes new block files (in
//! the same volume directory, so on the same disk) up to one chunk of blocks ahead of the
//! staged bytes it frees, and a file that does not fit stays staged, durable, until there is
//! room.
//!
//! Writes by kernel passthrough (`mount.passthrough_writes`) never pass through
//! [`SpaceGuard::check`]: the kernel can fill the disk to its last byte, and then the metadata
//! store could not record the absorb of those writes, nor the unlink that frees space. While
//! passthrough writes are on, the guard therefore holds a ballast file of [`BALLAST`] bytes
//! beside the staging files ([`SpaceGuard::hold_ballast`]):
//!
//! * [`SpaceGuard::tend`], run before each absorb and when the last passthrough writer
//!   closes, gives it up once the disk is full (below 1 MiB free) and no passthrough writer
//!   is open any more (one still open would eat the room it leaves), so the metadata store's
//!   writes find room, and takes it again once the room above the reserve is twice its size
//!   (the files were removed);
//! * a metadata batch refused for lack of space is tried again after the ballast is given up
//!   ([`SpaceGuard::make_room`], `Volume::apply_live`), whenever the disk filled;
//! * a new open for writing is granted passthrough only while the ballast is held and the
//!   free space is above the reserve ([`SpaceGuard::passthrough_ok`], a `statvfs` per such
//!   open): otherwise its writes go through the mount and its reserve check, so once the
//!   ballast is gone only the writers already open can fill the disk again.
//!
//! RocksDB keeps a little room of its own: it preallocates its log in blocks of about its
//! write buffer (`allow_fallocate`), so the appends of small batches land in space it holds
//! already, and it recovers from a full disk by itself once there is room again.

use crate::error::{FsError, Result};
use parking_lot::Mutex;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Size of the ballast file held while passthrough writes are on (see the module doc).
pub const BALLAST: u64 = 8 << 20;
/// The ballast is given up once the free space is below this: the disk is full, and a writer
/// that keeps writing would eat the room it makes before the metadata store could use it.
const GIVE_UP_BELOW: u64 = 1 << 20;
/// Its name in the staging directory (not an inode number: [`crate::staging::Staging::list`]
/// skips it).
const BALLAST_NAME: &str = "ballast";

pub struct SpaceGuard {
    path: CString,
    reserve: u64,
    ballast_path: PathBuf,
    /// Whether the ballast is wanted (passthrough writes on), and whether it is held now.
    ballast_wanted: AtomicBool,
    ballast_held: AtomicBool,
    ballast_lock: Mutex<()>,
    /// Opens for passthrough writing now: while there is one, a full disk keeps the ballast
    /// (the writer would eat the room it leaves) unless the metadata store needs it.
    pt_writers: AtomicUsize,
}

/// Capacity figures of the disk that holds the volume.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskSpace {
    pub block_size: u64,
    pub blocks: u64,
    pub free: u64,
    pub avail: u64,
}

impl SpaceGuard {
    pub fn new(path: &Path) -> Result<Self> {
        let ballast_path = path.join(BALLAST_NAME);
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::Invalid("volume path contains a NUL byte"))?;
        let mut guard = SpaceGuard {
            path,
            reserve: 0,
            ballast_path,
            ballast_wanted: AtomicBool::new(false),
            ballast_held: AtomicBool::new(false),
            ballast_lock: Mutex::new(()),
            pt_writers: AtomicUsize::new(0),
        };
        let disk = guard.disk()?;
        let total = disk.blocks * disk.block_size;
        guard.reserve = (total / 50).clamp(8 << 20, 256 << 20);
        Ok(guard)
    }

    pub fn disk(&self) -> Result<DiskSpace> {
        // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(self.path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(FsError::io("statfs of the volume directory", std::io::Error::last_os_error()));
        }
        Ok(DiskSpace {
            block_size: st.f_frsize as u64,
            blocks: st.f_blocks as u64,
            free: st.f_bfree as u64,
            avail: st.f_bavail as u64,
        })
    }

    /// Fails with ENOSPC when writing `len` more bytes would eat into the reserve.
    pub fn check(&self, len: u64) -> Result<()> {
        if self.room()? < len {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// Bytes that can still be written before the free space reaches the reserve.
    pub fn room(&self) -> Result<u64> {
        let disk = self.disk()?;
        Ok(disk.avail.saturating_mul(disk.block_size).saturating_sub(self.reserve))
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Hold the ballast (passthrough writes on) or let it go for good (off); see the module
    /// doc. Taking it needs [`BALLAST`] bytes of room above the reserve: without them it is
    /// taken later, by [`SpaceGuard::tend`].
    pub fn hold_ballast(&self, on: bool) -> Result<()> {
        self.ballast_wanted.store(on, Ordering::Relaxed);
        if on {
            self.tend()
        } else {
            self.give_up_ballast()
        }
    }

    /// Whether the ballast is held: passthrough writes may be opened (the kernel can fill
    /// the disk and the ballast still makes room for the metadata store).
    pub fn ballast_held(&self) -> bool {
        self.ballast_held.load(Ordering::Relaxed)
    }

    /// Whether a new open for writing may use kernel passthrough: the ballast is held (taken
    /// again here if there is room for it) and the free space is above the reserve. Else
    /// the writer goes through the mount, whose writes [`SpaceGuard::check`] the reserve.
    pub fn passthrough_ok(&self) -> bool {
        if !self.ballast_wanted.load(Ordering::Relaxed) {
            return false;
        }
        if !self.ballast_held() {
            if let Err(e) = self.tend() {
                tracing::warn!("space guard: {e}");
            }
        }
        self.ballast_held() && self.room().is_ok_and(|room| room > 0)
    }

    /// An open for passthrough writing began.
    pub fn writer_opened(&self) {
        self.pt_writers.fetch_add(1, Ordering::Relaxed);
    }

    /// An open for passthrough writing ended (after its last absorb): the last one on a full
    /// disk gives the ballast up ([`SpaceGuard::tend`]).
    pub fn writer_closed(&self) {
        if self.pt_writers.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Err(e) = self.tend() {
                tracing::warn!("space guard: {e}");
            }
        }
    }

    /// Before the metadata store records writes the guard did not check (an absorb of
    /// passthrough writes), and when the last passthrough writer closes: give the ballast up
    /// when the disk is full (below [`GIVE_UP_BELOW`]) and nobody writes by passthrough any
    /// more (a writer still open would eat the room: then only a batch the metadata store
    /// refuses takes it, [`SpaceGuard::make_room`]); take it again when the room above the
    /// reserve is twice the ballast.
    pub fn tend(&self) -> Result<()> {
        if !self.ballast_wanted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let held = self.ballast_held();
        let disk = self.disk()?;
        let avail = disk.avail.saturating_mul(disk.block_size);
        if held && avail < GIVE_UP_BELOW && self.pt_writers.load(Ordering::Relaxed) == 0 {
            self.warn_full(avail);
            self.give_up_ballast()
        } else if !held && avail.saturating_sub(self.reserve) >= 2 * BALLAST {
            self.take_ballast()
        } else {
            Ok(())
        }
    }

    /// The metadata store found the disk full: give the ballast up (if held) so that it finds
    /// room; returns whether there was one to give (then its batch is worth another try).
    pub fn make_room(&self) -> bool {
        if !self.ballast_held() {
            return false;
        }
        self.warn_full(self.disk().map_or(0, |d| d.avail.saturating_mul(d.block_size)));
        if let Err(e) = self.give_up_ballast() {
            tracing::warn!("space guard: {e}");
        }
        true
    }

    fn warn_full(&self, avail: u64) {
        tracing::warn!(
            "disk full ({avail} bytes free, reserve {}): giving up the {} MiB ballast so the metadata store can record writes and deletes; new writers go through the mount until there is room",
            self.reserve,
            BALLAST >> 20
        );
    }

    fn take_ballast(&self) -> Result<()> {
        let _one = self.ballast_lock.lock();
        if self.ballast_held() {
            return Ok(());
        }
        let io = |e| FsError::io(format!("allocate ballast file {}", self.ballast_path.display()), e);
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&self.ballast_path).map_err(io)?;
        // SAFETY: a valid open file descriptor; posix_fallocate writes nothing we read.
        let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, BALLAST as libc::off_t) };
        if rc != 0 {
            let _ = f.set_len(0);
            return Err(io(std::io::Error::from_raw_os_error(rc)));
        }
        self.ballast_held.store(true, Ordering::Relaxed);
        tracing::debug!("space guard: holding a {} MiB ballast", BALLAST >> 20);
        Ok(())
    }

    fn give_up_ballast(&self) -> Result<()> {
        let _one = self.ballast_lock.lock();
        self.ballast_held.store(false, Ordering::Relaxed);
        match std::fs::remove_file(&self.ballast_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(FsError::io(format!("remove ballast file {}", self.ballast_path.display()), e))
            }
            _ => Ok(()),
        }
    }
}
