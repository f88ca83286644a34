//! Kernel passthrough: read-only opens of files whose data is all in their staging file are
//! served by the kernel straight from that file, at local-disk speed.
//!
//! The kernel wants one backing id per inode shared by all its passthrough opens; `Backings`
//! keeps it, counted, until the last of them is released. The file handle tells release which
//! kind of open it was.

use crate::errno::ReplyError;
use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use hybridfs_core::{IoKind, MountView, Opened};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// `FOPEN_NOFLUSH` (`close` sends no FLUSH request: we have nothing to do there that
/// `release` does not do, and it saves a round trip per file closed), unless the volume wants
/// the FLUSH of `close()`: writers of a volume that ships blocks at close
/// ([`Opened::flush_on_close`]).
fn noflush(flush_on_close: bool) -> FopenFlags {
    match flush_on_close {
        true => FopenFlags::empty(),
        false => FopenFlags::FOPEN_NOFLUSH,
    }
}

const FH_CACHED: u64 = 0;
const FH_PASSTHROUGH: u64 = 1;
const FH_DIRECT: u64 = 2;

pub(crate) fn kind_of(fh: FileHandle) -> IoKind {
    match fh.0 {
        FH_PASSTHROUGH => IoKind::Passthrough,
        FH_DIRECT => IoKind::DirectIo,
        _ => IoKind::Cached,
    }
}

#[derive(Default)]
pub(crate) struct Backings {
    by_ino: Mutex<HashMap<u64, (Arc<BackingId>, u32)>>,
    /// A shared volume: page-cache opens drop the file's cached pages (no `FOPEN_KEEP_CACHE`).
    drop_cache: bool,
}

impl Backings {
    pub(crate) fn keep_cache(&mut self, keep: bool) {
        self.drop_cache = !keep;
    }

    /// The flags of a page-cache open: `FOPEN_KEEP_CACHE` but on a shared volume, and
    /// `FOPEN_NOFLUSH` unless `flush_on_close` ([`noflush`]).
    pub(crate) fn cached(&self, flush_on_close: bool) -> FopenFlags {
        let keep = if self.drop_cache { FopenFlags::empty() } else { FopenFlags::FOPEN_KEEP_CACHE };
        keep | noflush(flush_on_close)
    }

    pub(crate) fn reply_open(&self, vol: &MountView, opened: Opened, reply: ReplyOpen) {
        let ino = opened.inode.ino;
        // A volume that ships blocks at close needs the FLUSH of a writer's close().
        let flush = noflush(opened.flush_on_close);
        let cached = self.cached(opened.flush_on_close);
        match (opened.kind, opened.backing) {
            (IoKind::Passthrough, Some(file)) => {
                let mut map = self.by_ino.lock();
                let id = match map.get_mut(&ino) {
                    Some((id, n)) => {
                        *n += 1;
                        id.clone()
                    }
                    None => match reply.open_backing(&file) {
                        Ok(id) => {
                            let id = Arc::new(id);
                            map.insert(ino, (id.clone(), 1));
                            id
                        }
                        Err(e) => {
                            drop(map);
                            tracing::warn!("open backing file of inode {ino}: {e}; passthrough off");
                            vol.enable_passthrough(false);
                            // Retry as a cached open; the volume no longer offers passthrough.
                            let again = vol.release(ino, IoKind::Passthrough).and_then(|_| vol.open(ino, false));
                            return match again {
                                Ok(_) => reply.opened(FileHandle(FH_CACHED), self.cached(false)),
                                Err(e) => reply.fail("open", e),
                            };
                        }
                    },
                };
                reply.opened_passthrough(FileHandle(FH_PASSTHROUGH), flush, &id);
            }
            (IoKind::DirectIo, _) => reply.opened(FileHandle(FH_DIRECT), FopenFlags::FOPEN_DIRECT_IO | flush),
            _ => reply.opened(FileHandle(FH_CACHED), cached),
        }
    }

    pub(crate) fn released(&self, ino: u64) {
        let mut map = self.by_ino.lock();
        if let Some((_, n)) = map.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ino);
            }
        }
    }
}
