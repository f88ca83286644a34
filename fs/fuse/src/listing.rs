//! Directory listings read ahead per open directory handle.
//!
//! The kernel asks for a directory a few dozen entries at a time (as many as fit in its
//! buffer) and passes back, as the next offset, the offset of the last entry it took. Each
//! open directory keeps the entries fetched from the volume in batches of [`BATCH`], so a
//! listing costs one store scan per batch instead of one per request. Entries removed after
//! they were fetched may still be listed; POSIX leaves that unspecified.

use hybridfs_core::{FsError, MountView, ReaddirEntry};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

const BATCH: usize = 1024;
/// Entries handed to one reply at most: more than a kernel readdir buffer (one page) holds,
/// so the buffer is not copied whole on every request.
const PER_REPLY: usize = 256;

/// What is left of the last batch of one open directory.
#[derive(Default)]
struct Buffer {
    /// The buffer continues the listing right after this offset.
    after: u64,
    entries: Vec<ReaddirEntry>,
    /// The batch came back short: nothing follows the buffered entries.
    at_end: bool,
    filled: bool,
}

#[derive(Default)]
pub(crate) struct Listings {
    next_fh: AtomicU64,
    open: Mutex<HashMap<u64, Buffer>>,
}

impl Listings {
    pub(crate) fn open(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().insert(fh, Buffer::default());
        fh
    }

    pub(crate) fn close(&self, fh: u64) {
        self.open.lock().remove(&fh);
    }

    /// The entries after `offset`: what is buffered when it continues right there, else a
    /// fresh batch from the volume.
    pub(crate) fn entries(&self, vol: &MountView, ino: u64, fh: u64, offset: u64) -> Result<Vec<ReaddirEntry>, FsError> {
        if let Some(buf) = self.open.lock().get(&fh) {
            if buf.filled && buf.after == offset && (!buf.entries.is_empty() || buf.at_end) {
                return Ok(buf.entries[..buf.entries.len().min(PER_REPLY)].to_vec());
            }
        }
        let fresh = vol.readdir(ino, offset, BATCH)?;
        let reply = fresh[..fresh.len().min(PER_REPLY)].to_vec();
        // `.` and `..` come on top of BATCH store entries when the listing starts.
        let at_end = fresh.iter().filter(|e| e.offset > 2).count() < BATCH;
        if let Some(buf) = self.open.lock().get_mut(&fh) {
            *buf = Buffer { after: offset, entries: fresh, at_end, filled: true };
        }
        Ok(reply)
    }

    /// The kernel took `sent`, a prefix of what [`Listings::entries`] returned.
    pub(crate) fn consumed(&self, fh: u64, sent: &[ReaddirEntry]) {
        let Some(last) = sent.last() else { return };
        if let Some(buf) = self.open.lock().get_mut(&fh) {
            let n = buf.entries.iter().take_while(|e| e.offset <= last.offset).count();
            buf.entries.drain(..n);
            buf.after = last.offset;
        }
    }
}
