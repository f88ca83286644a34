//! Keeps a reserve of free space on the disk that holds the volume.
//!
//! Data writes are refused with ENOSPC while the free space is below the reserve, so the
//! metadata store (whose own writes must not fail) always has room to record the unlink that
//! frees space again. The reserve is small: 2% of the file system, between 8 MiB and 256 MiB.
//! The sealer keeps out of it too ([`SpaceGuard::room`]): sealing writes new block files (in
//! the same volume directory, so on the same disk) up to one chunk of blocks ahead of the
//! staged bytes it frees, and a file that does not fit stays staged, durable, until there is
//! room.

use crate::error::{FsError, Result};
use std::ffi::CString;
use std::path::Path;

pub struct SpaceGuard {
    path: CString,
    reserve: u64,
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
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::Invalid("volume path contains a NUL byte"))?;
        let mut guard = SpaceGuard { path, reserve: 0 };
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
}
