//! Kernel passthrough: read-only opens of files whose data is all in their staging file are
//! served by the kernel straight from that file, at local-disk speed; with passthrough writes
//! on, so are opens for writing of files with no sealed block (the core's
//! `IoKind::PassthroughWrite`), from `open` and `create` alike.
//!
//! The kernel wants one backing id per inode shared by all its passthrough opens; `Backings`
//! keeps it, counted, until the last of them is released. The file handle tells release which
//! kind of open it was.

use crate::errno::ReplyError;
use fuser::{BackingId, FileHandle, FopenFlags, ReplyCreate, ReplyOpen};
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
const FH_PASSTHROUGH_WRITE: u64 = 3;

pub(crate) fn kind_of(fh: FileHandle) -> IoKind {
    match fh.0 {
        FH_PASSTHROUGH => IoKind::Passthrough,
        FH_PASSTHROUGH_WRITE => IoKind::PassthroughWrite,
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

/// How one open is answered: by passthrough with a backing id, or with these flags.
enum Answer {
    Passthrough(FileHandle, FopenFlags, Arc<BackingId>),
    Plain(FileHandle, FopenFlags),
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

    /// The answer to an open; `open_backing` registers the staging file with the kernel.
    fn answer(
        &self,
        vol: &MountView,
        opened: Opened,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Result<Answer, hybridfs_core::FsError> {
        let ino = opened.inode.ino;
        // A volume that ships blocks at close needs the FLUSH of a writer's close().
        let flush = noflush(opened.flush_on_close);
        Ok(match (opened.kind, opened.backing) {
            (kind @ (IoKind::Passthrough | IoKind::PassthroughWrite), Some(file)) => {
                match self.backing(ino, || open_backing(&file)) {
                    Some(id) => Answer::Passthrough(handle(kind), flush, id),
                    None => {
                        // Retry as a cached open; the volume no longer offers passthrough.
                        vol.enable_passthrough(false);
                        vol.release(ino, kind)?;
                        let again = vol.open(ino, kind == IoKind::PassthroughWrite)?;
                        Answer::Plain(FileHandle(FH_CACHED), self.cached(again.flush_on_close))
                    }
                }
            }
            (IoKind::DirectIo, _) => Answer::Plain(FileHandle(FH_DIRECT), FopenFlags::FOPEN_DIRECT_IO | flush),
            _ => Answer::Plain(FileHandle(FH_CACHED), self.cached(opened.flush_on_close)),
        })
    }

    pub(crate) fn reply_open(&self, vol: &MountView, opened: Opened, reply: ReplyOpen) {
        match self.answer(vol, opened, |f| reply.open_backing(f)) {
            Ok(Answer::Passthrough(fh, flags, id)) => reply.opened_passthrough(fh, flags, &id),
            Ok(Answer::Plain(fh, flags)) => reply.opened(fh, flags),
            Err(e) => reply.fail("open", e),
        }
    }

    /// [`Backings::reply_open`] for a new file (`create`).
    pub(crate) fn reply_create(&self, vol: &MountView, opened: Opened, attr: &fuser::FileAttr, ttl: &std::time::Duration, reply: ReplyCreate) {
        match self.answer(vol, opened, |f| reply.open_backing(f)) {
            Ok(Answer::Passthrough(fh, flags, id)) => reply.created_passthrough(ttl, attr, crate::GEN, fh, flags, &id),
            Ok(Answer::Plain(fh, flags)) => reply.created(ttl, attr, crate::GEN, fh, flags),
            Err(e) => reply.fail("create", e),
        }
    }

    /// The inode's backing id, registered with `open` at its first passthrough open and
    /// counted. None: the kernel refused it (logged).
    fn backing(&self, ino: u64, open: impl FnOnce() -> std::io::Result<BackingId>) -> Option<Arc<BackingId>> {
        let mut map = self.by_ino.lock();
        if let Some((id, n)) = map.get_mut(&ino) {
            *n += 1;
            return Some(id.clone());
        }
        match open() {
            Ok(id) => {
                let id = Arc::new(id);
                map.insert(ino, (id.clone(), 1));
                Some(id)
            }
            Err(e) => {
                tracing::warn!("open backing file of inode {ino}: {e}; passthrough off");
                None
            }
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

fn handle(kind: IoKind) -> FileHandle {
    FileHandle(if kind == IoKind::PassthroughWrite { FH_PASSTHROUGH_WRITE } else { FH_PASSTHROUGH })
}
