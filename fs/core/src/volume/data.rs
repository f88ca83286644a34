//! File data and attributes: open, read, write, truncate, fallocate, fsync, setattr.
//!
//! # Copy-on-write (invariant 2)
//!
//! A block of a file is a hole, `Staged` (bytes in the inode's staging file) or `Sealed`
//! (an immutable block). Writing into a sealed block first copies it into the staging file
//! (unless the write covers the whole block), then points the extent at the staging file and
//! drops the reference: the sealed block itself is never touched.
//!
//! # Dirty-extent journal
//!
//! The first change to a block in an epoch adds a journal row `(epoch, ino, block)` in the same
//! batch as the change: writes, truncation of a partial block, fallocate and hole punching.
//!
//! # Passthrough writes
//!
//! A file with no sealed block (a new file, or one just opened with `O_TRUNC`: how checkpoints
//! are written) may be opened for writing by kernel passthrough ([`IoKind::PassthroughWrite`]):
//! the kernel writes straight into its staging file and this process sees none of it. The
//! staging file is then the truth about the file's bytes, size and mtime, and
//! [`Volume::absorb`] brings the node up to date with it: every block under a data region of
//! the staging file (`SEEK_DATA`/`SEEK_HOLE`) becomes `Staged` and is journaled, and the size
//! and mtime are the staging file's. It runs before anything of ours looks at the file's data
//! or attributes (a read or write through us, truncate, fallocate, open, a seal) and at
//! `fsync`, where its batch is synced with the staging file before the answer (invariant 1),
//! and at `close`. `stat` meanwhile answers the staging file's size and mtime without a
//! batch. A block the sealer or a snapshot sealed while the kernel kept writing is staged
//! again at the next absorb (the snapshot keeps the sealed version: invariant 2), since the
//! staging file, which a seal of an open file leaves whole, may have changed under it.

use super::{NodeData, Txn, Volume, MAX_FILE_SIZE};
use crate::error::{FsError, Result};
use crate::extent::{blocks_for, spans};
use crate::meta::Mutation;
use crate::progress::{Meter, OnProgress};
use crate::staging::{allocate, data_regions, punch_hole, read_full_at};
use crate::types::{BlockId, Extent, Inode, Ino, JournalEntry, Kind, Timespec, INLINE_MAX};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What a write removes from its file, as the kernel's `file_remove_privs` would. A mount
/// with FUSE_HANDLE_KILLPRIV_V2 has the file system do it (the kernel then stops asking for
/// `security.capability` before every write, the most frequent request of an untar);
/// [`Volume::write`] removes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillPriv {
    /// Clear set-user-ID, and set-group-ID where group execute is set (the writer lacks
    /// `CAP_FSETID`: FUSE_WRITE_KILL_SUIDGID).
    pub suidgid: bool,
    /// Remove the `security.capability` attribute (any write by a process, whoever it is).
    pub caps: bool,
}

/// How the kernel does the I/O of one open file.
///
/// The kernel keeps one I/O mode per inode: while any open uses passthrough, no open may use
/// the page cache, so writers then get direct I/O (through us, so the journal sees them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Through the kernel page cache and this process.
    Cached,
    /// Reads go straight from the kernel to the staging file.
    Passthrough,
    /// Reads and writes go straight between the kernel and the staging file (see the module
    /// doc, "Passthrough writes"); counted as a passthrough open too.
    PassthroughWrite,
    /// Through this process, bypassing the page cache.
    DirectIo,
}

/// The answer to an open.
#[derive(Debug)]
pub struct Opened {
    pub inode: Inode,
    pub kind: IoKind,
    /// For passthrough: the file the kernel reads.
    pub backing: Option<std::fs::File>,
    /// `close()` must reach the volume (a FLUSH request): set for opens for writing of a
    /// volume that ships blocks at close (`ship.rs`). Otherwise the adapter asks the kernel
    /// not to send one (a round trip saved per close).
    pub flush_on_close: bool,
}

/// Pick the I/O mode of a new open (a pure decision; see [`IoKind`]).
/// `fully_staged` is true only for a read-only open of a file with no other open and no
/// sealed block.
pub fn choose_io(write: bool, passthrough_opens: u32, fully_staged: bool) -> IoKind {
    match (passthrough_opens > 0, write) {
        (true, true) => IoKind::DirectIo,
        (true, false) => IoKind::Passthrough,
        (false, false) if fully_staged => IoKind::Passthrough,
        _ => IoKind::Cached,
    }
}

/// Whether the volume's recent new files are small or large: the sizes of its last 16 new
/// files (created by this mount) at their last close, as one bit each (larger than the
/// inline limit, [`INLINE_MAX`]). A new file created without `O_TRUNC` (an untar's or a
/// copy's `O_EXCL`) is written by kernel passthrough while at least half of them were large
/// ([`NewFiles::expect_large`]): a small file written so costs a staging file and a
/// backing open before it goes back inline at close, a large one written through us costs a
/// write request per 4-128 KiB. A mount starts out expecting small files, so a tree of small
/// files stays inline all the way.
#[derive(Debug, Default)]
pub struct NewFiles(std::sync::atomic::AtomicU32);

impl NewFiles {
    const WINDOW: u32 = 16;

    /// A new file was closed for the last time at `size` bytes.
    pub fn closed(&self, size: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mask = (1u32 << Self::WINDOW) - 1;
        let bit = u32::from(size > INLINE_MAX);
        let _ = self.0.fetch_update(Relaxed, Relaxed, |h| Some(((h << 1) | bit) & mask));
    }

    /// At least half of the last 16 new files were larger than the inline limit.
    pub fn expect_large(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed).count_ones() >= Self::WINDOW / 2
    }
}

/// Attributes to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// `fallocate` modes the volume supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallocate {
    /// Allocate; grow the file unless `keep_size`.
    Allocate { keep_size: bool },
    /// Deallocate; the range reads as zeros (`FALLOC_FL_PUNCH_HOLE`).
    PunchHole,
    /// Zero the range; grow the file unless `keep_size` (`FALLOC_FL_ZERO_RANGE`).
    ZeroRange { keep_size: bool },
}

impl NodeData {
    /// The inode as `stat` should see it: while the kernel writes the staging file by
    /// passthrough, its size and (once it changed) mtime are the file's.
    pub(super) fn live_inode(&self) -> Inode {
        let mut inode = self.inode.clone();
        if self.pt_writers > 0 {
            if let Some(md) = self.staging.as_ref().and_then(|f| f.metadata().ok()) {
                inode.size = md.len();
                let mtime = mtime_of(&md);
                if mtime != self.pt_mtime {
                    inode.mtime = mtime;
                    inode.ctime = mtime;
                }
            }
        }
        inode
    }

    fn extent(&self, vol: &Volume, block: u64) -> Result<Option<Extent>> {
        let mut cache = self.extents.lock();
        if let Some(e) = cache.get(&block) {
            return Ok(*e);
        }
        let e = vol.meta.get_extent(self.inode.ino, block)?;
        cache.insert(block, e);
        Ok(e)
    }

    fn staging_file(&mut self, vol: &Volume) -> Result<&std::fs::File> {
        if self.staging.is_none() {
            self.staging = vol.staging.open(self.inode.ino, true)?;
            // Its directory entry becomes durable at the file's next fsync (invariant 1).
            self.staging_entry_unsynced = true;
        }
        self.staging.as_ref().ok_or(FsError::Invalid("staging file missing"))
    }

    /// The staging file that holds the bytes of a `Staged` extent. Its absence is damage
    /// (lost by a power cut before the file was ever fsynced): an error, never zeros.
    pub(super) fn staged_bytes(&self, block: u64) -> Result<&std::fs::File> {
        self.staging.as_ref().ok_or_else(|| FsError::Meta(format!(
            "block {block} of inode {} is staged but its staging file is missing",
            self.inode.ino
        )))
    }

    /// What a change to the node must restore if it fails: the store never saw its batch.
    pub(super) fn checkpoint(&self) -> (Inode, bool) {
        (self.inode.clone(), self.attr_dirty)
    }

    /// A change failed before its batch reached the store: forget what it taught the
    /// in-memory state. The extent cache and the journal set are refilled from the store,
    /// which is the truth; the inode record goes back to what it was (invariant 1: a later
    /// write to a block the cache wrongly thought staged would record nothing, and the
    /// sealer would then delete its bytes).
    pub(super) fn roll_back(&mut self, (inode, attr_dirty): (Inode, bool)) {
        self.inode = inode;
        self.attr_dirty = attr_dirty;
        self.extents.get_mut().clear();
        self.journaled.clear();
    }

    /// Record that `block` changed in the current epoch, once per epoch.
    fn journal(&mut self, epoch: u64, block: u64, batch: &mut Vec<Mutation>) {
        if self.journal_epoch != epoch {
            self.journaled.clear();
            self.journal_epoch = epoch;
        }
        if self.journaled.insert(block) {
            batch.push(Mutation::Journal(JournalEntry { epoch, ino: self.inode.ino, block }));
        }
    }

    pub(super) fn set_extent(&mut self, block: u64, extent: Option<Extent>, batch: &mut Vec<Mutation>) {
        let ino = self.inode.ino;
        batch.push(match extent {
            Some(extent) => Mutation::PutExtent { ino, block, extent },
            None => Mutation::DelExtent { ino, block },
        });
        self.extents.get_mut().insert(block, extent);
    }
}

impl Volume {
    /// Open `ino` for I/O; every successful open is matched by one [`Volume::release_file`]
    /// with the returned [`IoKind`].
    pub fn open_file(&self, ino: Ino, write: bool) -> Result<Opened> {
        self.open_file_as(ino, write, true)
    }

    /// [`Volume::open_file`]; `passthrough_write: false` keeps a writer on our path even
    /// where a passthrough write would be allowed (a new file not created with `O_TRUNC`:
    /// see [`MountView::create`](super::mount_view::MountView::create)).
    pub fn open_file_as(&self, ino: Ino, write: bool, passthrough_write: bool) -> Result<Opened> {
        self.open_file_with(ino, write, passthrough_write, false, None)
    }

    /// [`Volume::open_file_as`]; `row_written`: a shared volume's open row of this host is in
    /// the store already (a file created open, see `hosts.rs`); `created`: the record of a
    /// file this call's caller just created, which a new node starts from (no store read).
    /// `created`: the record of the file just created and [`Volume::caps_count`] before its
    /// create (the file has no `security.capability` unless one was set since).
    pub(crate) fn open_file_with(&self, ino: Ino, write: bool, passthrough_write: bool, row_written: bool, created: Option<(Inode, u64)>) -> Result<Opened> {
        let new_file = created.is_some();
        let (created, caps_before) = created.map_or((None, None), |(inode, caps)| (Some(inode), Some(caps)));
        let (node, others) = {
            let _ns = self.ns_for(&[ino]);
            let others = self.nodes.lock().get(&ino).map_or(0, |e| e.handles);
            let node = self.pin_locked_with(ino, true, created)?;
            if self.shared && others == 0 && !row_written {
                if let Err(e) = self.note_open(ino) {
                    self.unpin_locked(ino, true);
                    return Err(e);
                }
            }
            (node, others)
        };
        // The node lock (not `ns`) keeps the sealer out while the extents are looked at.
        let mut st = node.write();
        st.new_file |= new_file;
        if st.no_caps_at.is_none() && !self.shared {
            // Its passthrough check then reads no attribute from the store (the count is
            // this process's: on a shared volume another host may have set one).
            st.no_caps_at = caps_before;
        }
        // A file this call created has no extents yet and no other open (on an unshared
        // volume: no other host can have written it meanwhile).
        let fresh = new_file && others == 0 && !self.shared;
        let opened = self.absorb(&mut st).and_then(|_| self.open_locked(&mut st, write, passthrough_write, others, fresh));
        if opened.is_err() {
            drop(st);
            let _ns = self.ns_for(&[ino]);
            self.unpin_locked(ino, true);
            if self.shared && !self.has_handles(ino) {
                self.note_closed(ino);
            }
        }
        opened
    }

    /// `fresh`: the file was created by this open (no extents, no staging bytes to clear).
    fn open_locked(&self, st: &mut NodeData, write: bool, passthrough_write: bool, others: u32, fresh: bool) -> Result<Opened> {
        // A file with sealed data almost always has it at block 0: that extent (one point
        // lookup, kept in the node for the read that follows) answers before a scan of the
        // file's extents does (a store iterator per open: a clone's reads of many small files
        // paid for one each).
        let fully_staged = !write
            && others == 0
            && self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
            && st.inode.kind == Kind::File
            && st.inode.inline.is_none()
            && !matches!(st.extent(self, 0)?, Some(Extent::Sealed { .. }))
            && !self.meta.has_sealed_extent(st.inode.ino)?;
        let kind = if write && passthrough_write && self.passthrough_write_ok(st, others, fresh)? {
            IoKind::PassthroughWrite
        } else {
            choose_io(write, st.passthrough_opens, fully_staged)
        };
        if kind == IoKind::PassthroughWrite && st.pt_writers == 0 && !fresh {
            self.clear_stale_staging(st)?;
        }
        let backing = match kind {
            IoKind::Passthrough | IoKind::PassthroughWrite => Some(self.passthrough_file(st)?),
            _ => None,
        };
        match kind {
            IoKind::Passthrough => st.passthrough_opens += 1,
            IoKind::PassthroughWrite => {
                if st.pt_writers == 0 {
                    let f = st.staging.as_ref().ok_or(FsError::Invalid("staging file missing"))?;
                    let md = f.metadata().map_err(|e| FsError::io(format!("stat staging file of inode {}", st.inode.ino), e))?;
                    st.pt_mtime = mtime_of(&md);
                }
                st.passthrough_opens += 1;
                st.pt_writers += 1;
                self.space.writer_opened();
            }
            _ => {}
        }
        Ok(Opened { inode: st.live_inode(), kind, backing, flush_on_close: write && self.ships_blocks() })
    }

    /// Whether a new open for writing may be a passthrough write: the mount allows it, the
    /// file has no sealed block and no inline bytes, and every other open of it is a
    /// passthrough one (the kernel keeps one I/O mode per inode). Not on a volume that ships
    /// blocks at fsync (`ship.rs`): each fsync seals the file, and the next absorb would
    /// stage (and the next fsync seal and hash) all of it again. Nor while the space guard
    /// says the disk is too full (`space.rs`: no ballast held, or free space below the
    /// reserve): the kernel's writes pass no space check of ours. Nor for a file with a
    /// set-user-ID or set-group-ID bit or a `security.capability` attribute: the mount takes
    /// FUSE_HANDLE_KILLPRIV_V2, so a write must clear them here ([`KillPriv`]), and writes by
    /// passthrough never reach us.
    /// A `fresh` file (created by this open) is known to have no sealed block without a
    /// store read.
    fn passthrough_write_ok(&self, st: &mut NodeData, others: u32, fresh: bool) -> Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let ok = self.passthrough.load(Relaxed)
            && self.passthrough_writes.load(Relaxed)
            && !self.ships_blocks()
            && st.inode.kind == Kind::File
            && others == st.passthrough_opens
            && st.inode.inline.as_ref().is_none_or(|b| b.is_empty())
            && st.inode.perm & (libc::S_ISUID | libc::S_ISGID) == 0
            && (fresh || !self.meta.has_sealed_extent(st.inode.ino)?)
            && !self.has_caps(st)?
            && self.space.passthrough_ok();
        if ok && st.inode.inline.is_some() {
            // An empty inline file (a new one, or one truncated to nothing): its bytes will
            // be in the staging file.
            st.inode.inline = None;
            st.attr_dirty = true;
        }
        Ok(ok)
    }

    /// Before the kernel writes a staging file: bytes left in it under blocks the file does
    /// not hold (an earlier life of the block, sealed while open and then punched) are
    /// punched, so that absorbing its data regions later finds only the file's own bytes.
    fn clear_stale_staging(&self, st: &mut NodeData) -> Result<()> {
        let ino = st.inode.ino;
        let Some(f) = st.staging.as_ref() else { return Ok(()) };
        let io = |e| FsError::io(format!("clear staging file of inode {ino}"), e);
        let len = f.metadata().map_err(io)?.len();
        let bs = self.block_size;
        for (start, end) in data_regions(f, len).map_err(io)? {
            for block in start / bs..end.div_ceil(bs) {
                if st.extent(self, block)?.is_none() {
                    punch_hole(st.staging.as_ref().expect("checked"), block * bs, bs).map_err(io)?;
                }
            }
        }
        Ok(())
    }

    /// Bring the node of a file open for passthrough writes up to date with its staging file
    /// (see the module doc, "Passthrough writes"); the batch goes to the store unsynced, like
    /// a write's. Nothing to do while nobody writes by passthrough.
    ///
    /// The kernel's writes never reach this process, so this is where they are counted: the
    /// bytes it learns of (see [`Volume::absorb_locked`]) go to `hybridfs_bytes_written_total`,
    /// an absorb that found any to `hybridfs_passthrough_absorbs_total`, and each absorb is a
    /// span `absorb` (target `hybridfs_core::absorb`: `ino`, `bytes`, `result`) at debug.
    pub(super) fn absorb(&self, st: &mut NodeData) -> Result<()> {
        if st.pt_writers == 0 {
            return Ok(());
        }
        let span = tracing::debug_span!(
            target: "hybridfs_core::absorb",
            "absorb",
            ino = st.inode.ino,
            bytes = tracing::field::Empty,
            result = tracing::field::Empty
        )
        .entered();
        let before = (st.checkpoint(), st.pt_mtime);
        let done = self.absorb_locked(st);
        match &done {
            Ok(bytes) => {
                if *bytes > 0 {
                    self.metrics.written(*bytes);
                    self.metrics.absorbed();
                }
                span.record("bytes", bytes);
                span.record("result", "ok");
            }
            Err(e) => {
                st.roll_back(before.0);
                st.pt_mtime = before.1;
                span.record("result", tracing::field::display(e));
            }
        }
        done.map(|_| ())
    }

    /// The bytes the node learned of: the growth of the file's size, and the data regions
    /// below its old size in blocks that were not staged before (written into a hole, or
    /// staged again after a seal). Overwrites of bytes already staged are not seen.
    fn absorb_locked(&self, st: &mut NodeData) -> Result<u64> {
        let mut batch = Vec::new();
        let learned = self.absorb_into(st, &mut batch)?;
        if !batch.is_empty() {
            batch.push(self.inode_write(&st.inode));
            st.attr_dirty = false;
            self.apply_live(batch, false)?;
        }
        Ok(learned)
    }

    /// [`Volume::absorb_locked`] without its write: the extents and journal rows of what the
    /// kernel wrote go to `batch` (the caller adds the inode record and applies it), the size
    /// and mtime to the node. When the kernel wrote anything, the space guard looks at the
    /// disk first (`space.rs`: it may have filled it; room for the batch). An absorb that
    /// finds nothing new skips that `statvfs`: while a passthrough writer is open the guard
    /// can only take its ballast back, which the next absorb that finds something, or the
    /// writer's close, does.
    pub(super) fn absorb_into(&self, st: &mut NodeData, batch: &mut Vec<Mutation>) -> Result<u64> {
        let ino = st.inode.ino;
        let Some(f) = st.staging.as_ref() else { return Ok(0) };
        let io = |e| FsError::io(format!("read back passthrough writes of inode {ino}"), e);
        let md = f.metadata().map_err(io)?;
        let (size, mtime) = (md.len(), mtime_of(&md));
        let regions = data_regions(f, size).map_err(io)?;
        let epoch = self.epoch();
        let batch_before = batch.len();
        let bs = self.block_size;
        let old_size = st.inode.size;
        let mut learned = size.saturating_sub(old_size);
        for (start, end) in regions {
            for block in start / bs..end.div_ceil(bs) {
                if st.extent(self, block)? != Some(Extent::Staged) {
                    // Written by the kernel, or sealed (by a snapshot) while the kernel kept
                    // writing: the staging file holds its bytes. A sealed version stays with
                    // the snapshot that has it (invariant 2).
                    st.set_extent(block, Some(Extent::Staged), batch);
                    let (lo, hi) = (start.max(block * bs), end.min((block + 1) * bs).min(old_size));
                    learned += hi.saturating_sub(lo);
                }
                st.journal(epoch, block, batch);
            }
        }
        let mut changed = batch.len() > batch_before;
        if size != st.inode.size {
            st.inode.size = size;
            st.attr_dirty = true;
            changed = true;
        }
        if mtime != st.pt_mtime {
            st.pt_mtime = mtime;
            st.inode.mtime = mtime;
            st.inode.ctime = mtime;
            st.attr_dirty = true;
            changed = true;
        }
        if changed {
            if let Err(e) = self.space.tend() {
                tracing::warn!("space guard: {e}");
            }
        }
        Ok(learned)
    }

    /// The staging file of a fully staged file, sized like the file, for the kernel to read.
    fn passthrough_file(&self, st: &mut NodeData) -> Result<std::fs::File> {
        let size = st.inode.size;
        let ino = st.inode.ino;
        let f = st.staging_file(self)?;
        let io = |e| FsError::io(format!("prepare staging file of inode {ino} for passthrough"), e);
        if f.metadata().map_err(io)?.len() != size {
            f.set_len(size).map_err(io)?;
        }
        f.try_clone().map_err(io)
    }

    /// The last close of one open: persist attributes, queue sealing, purge if unlinked.
    pub fn release_file(&self, ino: Ino, kind: IoKind) -> Result<()> {
        let node = self.node_if_open(ino).ok_or(FsError::Invalid("release of a file not open"))?;
        let (nlink, staged) = {
            let mut st = node.write();
            let absorbed = self.absorb(&mut st);
            if matches!(kind, IoKind::Passthrough | IoKind::PassthroughWrite) {
                st.passthrough_opens = st.passthrough_opens.saturating_sub(1);
            }
            if kind == IoKind::PassthroughWrite {
                st.pt_writers = st.pt_writers.saturating_sub(1);
                // After its last absorb: on a full disk, room for the batches below.
                self.space.writer_closed();
            }
            absorbed?;
            self.persist_attrs(&mut st, false)?;
            // A shared volume: another host may have unlinked it (or changed its mode)
            // meanwhile. For the handles still open here the node takes that in; the last
            // close reads nothing (a round trip per close): the node leaves memory, and a file
            // another host unlinked is purged by the `open-rows` thread right after this
            // host's open row goes (`hosts.rs`, `Volume::delete_closed_rows`).
            if self.shared && self.nodes.lock().get(&ino).is_some_and(|e| e.handles > 1) {
                self.refresh_node(&mut st)?;
            }
            // The volume's node table is asked only by a release that has a use for the
            // answer (most releases: neither a passthrough writer nor a new file).
            let last = (kind == IoKind::PassthroughWrite || st.new_file) && self.nodes.lock().get(&ino).is_some_and(|e| e.handles == 1);
            if last && st.new_file {
                st.new_file = false;
                self.new_files.closed(st.inode.size);
            }
            if kind == IoKind::PassthroughWrite && last {
                self.reinline(&mut st)?;
            }
            (st.inode.nlink, st.staging.is_some())
        };
        let left = {
            let _ns = self.ns_for(&[ino]);
            let left = self.unpin_locked(ino, true);
            if self.shared && !self.has_handles(ino) {
                self.note_closed(ino);
            }
            left
        };
        if left && nlink == 0 {
            self.purge_if_unused(ino)?;
        } else if left && staged {
            if let Some(s) = self.sealer.lock().as_ref() {
                s.enqueue(ino);
            }
        }
        Ok(())
    }

    /// A small file written by passthrough (its bytes in block 0 of the staging file), closed
    /// for the last time, goes back inline as if written through us: its bytes move into the
    /// inode record. The staging file stays until the sealer removes it (after a synced
    /// commit: the record that names the staged block may be the durable one until then);
    /// if the file leaves inline before that, `uninline` clears its older bytes.
    fn reinline(&self, st: &mut NodeData) -> Result<()> {
        let size = st.inode.size;
        if size > INLINE_MAX || st.inode.inline.is_some() || st.inode.kind != Kind::File {
            return Ok(());
        }
        let extent = st.extent(self, 0)?;
        if matches!(extent, Some(Extent::Sealed { .. })) || !self.meta.extents(st.inode.ino, 1)?.is_empty() {
            return Ok(());
        }
        let mut bytes = vec![0u8; size as usize];
        if extent.is_some() {
            read_full_at(st.staged_bytes(0)?, &mut bytes, 0)
                .map_err(|e| FsError::io(format!("read staging file of inode {}", st.inode.ino), e))?;
        }
        let before = st.checkpoint();
        let mut batch = Vec::new();
        if extent.is_some() {
            st.set_extent(0, None, &mut batch);
        }
        st.inode.inline = Some(bytes);
        batch.push(self.inode_write(&st.inode));
        st.attr_dirty = false;
        let done = self.apply_live(batch, false);
        if done.is_err() {
            st.roll_back(before);
        }
        done
    }

    /// Whether a new file created without `O_TRUNC` should be written by passthrough (where
    /// allowed): most recent new files outgrew the inline limit ([`NewFiles`]).
    pub fn expect_large_new_files(&self) -> bool {
        self.new_files.expect_large()
    }

    /// Let read-only opens of files held entirely in their staging file use kernel passthrough.
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Let opens for writing of files with no sealed block use kernel passthrough too (see
    /// the module doc, "Passthrough writes"); takes effect only with passthrough on.
    /// While on, the space guard holds its ballast (`space.rs`): the kernel's writes pass no
    /// space check of ours.
    pub fn enable_passthrough_writes(&self, on: bool) {
        self.passthrough_writes.store(on, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.space.hold_ballast(on && !self.ships_blocks()) {
            tracing::warn!("space guard: {e}");
        }
    }

    fn open_node(&self, ino: Ino) -> Result<super::Node> {
        self.node_if_open(ino).ok_or(FsError::Invalid("I/O on a file that is not open"))
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let node = self.open_node(ino)?;
        if node.read().pt_writers > 0 {
            self.absorb(&mut node.write())?;
        }
        let mut fetched = self.fetch_unlocked(&node, offset, size)?;
        let st = node.read();
        let fsize = st.inode.size;
        if offset >= fsize {
            return Ok(Vec::new());
        }
        let n = (size as u64).min(fsize - offset);
        let mut buf = vec![0u8; n as usize];
        if let Some(inline) = &st.inode.inline {
            let from = (offset as usize).min(inline.len());
            let to = (offset + n).min(inline.len() as u64) as usize;
            buf[..to - from].copy_from_slice(&inline[from..to]);
            self.metrics.read(n);
            return Ok(buf);
        }
        for s in spans(offset, n, self.block_size) {
            let out = &mut buf[s.pos as usize..(s.pos + s.len) as usize];
            match st.extent(self, s.block)? {
                None => {}
                Some(Extent::Staged) => {
                    read_full_at(st.staged_bytes(s.block)?, out, s.block * self.block_size + s.start)
                        .map_err(|e| FsError::io(format!("read staging file of inode {ino}"), e))?;
                }
                Some(Extent::Sealed { id, len }) => {
                    let block = match fetched.iter().position(|(f, _)| *f == id) {
                        Some(i) => fetched.swap_remove(i).1.map_err(|e| self.block_failed(&id, e))?,
                        // The file changed since the blocks were fetched.
                        None => self.sealed(&id, len)?,
                    };
                    let avail = block.len().saturating_sub(s.start as usize).min(out.len());
                    out[..avail].copy_from_slice(&block[s.start as usize..s.start as usize + avail]);
                }
            }
        }
        self.metrics.read(n);
        Ok(buf)
    }

    /// The sealed blocks a read needs, got without holding the node lock: a fetch from the
    /// object store may take up to the store's read timeout, and the node lock is what
    /// `stat`, `open` and writers of the file wait for. Blocks are immutable, so a block got
    /// here is right whatever happens to the file meanwhile; the read then looks at the
    /// extents again under the lock and uses these (one cache lookup per block). A failure is
    /// reported only if the file still names the block then (an overwrite may have dropped
    /// its last reference, and its file, meanwhile).
    fn fetch_unlocked(&self, node: &super::Node, offset: u64, size: u32) -> Result<Vec<(BlockId, Result<Arc<Vec<u8>>>)>> {
        let mut wanted = Vec::new();
        {
            let st = node.read();
            if st.inode.inline.is_some() || offset >= st.inode.size {
                return Ok(Vec::new());
            }
            let n = (size as u64).min(st.inode.size - offset);
            for s in spans(offset, n, self.block_size) {
                if let Some(Extent::Sealed { id, len }) = st.extent(self, s.block)? {
                    match self.cache.get(&id) {
                        Some(b) => {
                            self.metrics.cache_hit();
                            wanted.push((id, len, Some(b)));
                        }
                        None => {
                            self.read_ahead(&st, s.block, &id)?;
                            wanted.push((id, len, None));
                        }
                    }
                }
            }
        }
        Ok(wanted
            .into_iter()
            .map(|(id, len, hit)| (id, hit.map_or_else(|| self.fetch_sealed(&id, len), Ok)))
            .collect())
    }

    /// Sealed block `id` (number `block` of the file) is about to be read from the block
    /// store: tell it the next sealed blocks of the file, so a store in front of the object
    /// store fetches them in parallel (a sequential reader of a clone waits for one round
    /// trip, not one per block). How many follows the file's reads ([`ahead_depth`]): 8
    /// blocks, doubled at each block a reader takes right after the last one, up to
    /// [`AHEAD_MAX_BYTES`] ahead.
    ///
    /// Only where there may be something to fetch: when this node holds both `id` and the
    /// window's last block (a home volume's own blocks, or a clone whose read-ahead already
    /// ran), nothing is asked: two existence checks instead of up to the window's extent
    /// lookups and twice as many file checks (`benches/run.sh`'s cold random reads of a home
    /// volume pay for each).
    fn read_ahead(&self, st: &NodeData, block: u64, id: &BlockId) -> Result<()> {
        if !self.blocks.fetches() {
            return Ok(());
        }
        let max = (AHEAD_MAX_BYTES / self.block_size.max(1)).clamp(AHEAD_MIN, AHEAD_MAX);
        let depth = st.read_pattern.next_depth(block, max);
        let last = blocks_for(st.inode.size, self.block_size);
        let end = (block + 1 + depth).min(last);
        if end <= block + 1 {
            return Ok(());
        }
        if self.blocks.is_local(id)? {
            match st.extent(self, end - 1)? {
                Some(Extent::Sealed { id: far, .. }) if !self.blocks.is_local(&far)? => {}
                _ => return Ok(()),
            }
        }
        let mut ids = Vec::new();
        for b in block + 1..end {
            if let Some(Extent::Sealed { id, .. }) = st.extent(self, b)? {
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            self.blocks.prefetch(&ids);
        }
        Ok(())
    }

    /// Fetch every sealed block of the files under `ino` (a directory is walked) into the
    /// block store's local cache, ahead of a job. Returns the number of blocks named.
    pub fn prefetch_tree(&self, ino: Ino) -> Result<u64> {
        self.prefetch_tree_with(ino, &crate::progress::ignore)
    }

    /// [`Volume::prefetch_tree`], reporting to `progress` (op `prefetch`: blocks and bytes
    /// fetched or found local): the tree is walked once for its totals (metadata only), then
    /// again to fetch.
    pub fn prefetch_tree_with(&self, ino: Ino, progress: OnProgress) -> Result<u64> {
        let (mut blocks, mut bytes) = (0u64, 0u64);
        self.for_each_sealed_under(ino, &mut |file| {
            blocks += file.len() as u64;
            bytes += file.iter().map(|(_, len)| *len as u64).sum::<u64>();
            Ok(())
        })?;
        let mut meter = Meter::new("prefetch", "", blocks, bytes, progress);
        let mut named = 0u64;
        self.for_each_sealed_under(ino, &mut |file| {
            named += file.len() as u64;
            for chunk in file.chunks(32) {
                let ids: Vec<BlockId> = chunk.iter().map(|(id, _)| *id).collect();
                self.blocks.prefetch(&ids);
                for (id, len) in chunk {
                    self.blocks.frame(id)?;
                    meter.add(1, *len as u64);
                }
            }
            Ok(())
        })?;
        meter.finish();
        Ok(named)
    }

    /// The sealed blocks (and their lengths) of each file under `ino`, a file at a time.
    fn for_each_sealed_under(&self, ino: Ino, f: &mut dyn FnMut(&[(BlockId, u32)]) -> Result<()>) -> Result<()> {
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            let inode = self.getattr(i)?;
            match inode.kind {
                Kind::Dir => {
                    let mut offset = 2;
                    loop {
                        let page = self.readdir(i, offset, 1024)?;
                        let Some(last) = page.last() else { break };
                        offset = last.offset;
                        todo.extend(page.iter().filter(|e| e.offset > 2).map(|e| e.ino));
                    }
                }
                Kind::File => {
                    let sealed: Vec<(BlockId, u32)> = self
                        .meta
                        .extents(i, 0)?
                        .into_iter()
                        .filter_map(|(_, e)| match e {
                            Extent::Sealed { id, len } => Some((id, len)),
                            Extent::Staged => None,
                        })
                        .collect();
                    f(&sealed)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The verified bytes of a sealed block, from the cache or the block store.
    pub(crate) fn sealed(&self, id: &BlockId, len: u32) -> Result<Arc<Vec<u8>>> {
        self.fetch_sealed(id, len).map_err(|e| self.block_failed(id, e))
    }

    /// The verified bytes of a sealed block, kept in the cache; failures are not reported.
    fn fetch_sealed(&self, id: &BlockId, len: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.get(id) {
            self.metrics.cache_hit();
            return Ok(b);
        }
        let start = std::time::Instant::now();
        let d = self.blocks.get(id)?;
        self.metrics.cache_miss(d.len() as u64, start.elapsed().as_secs_f64());
        if d.len() != len as usize {
            return Err(FsError::CorruptBlock { id: *id, why: format!("{} bytes, expected {len}", d.len()) });
        }
        let d = Arc::new(d);
        self.cache.insert(*id, d.clone());
        Ok(d)
    }

    /// Report a block a reader needed and could not get (invariant 5: a log line and a
    /// metric name it). A read that may not wait, or whose caller was interrupted, did not
    /// fail to get the block: nothing to report. Only a damaged block counts as corrupt; a
    /// store that did not serve it (timeout, outage) is logged, not counted.
    fn block_failed(&self, id: &BlockId, e: FsError) -> FsError {
        if matches!(e, FsError::WouldBlock | FsError::Interrupted) {
            return e;
        }
        if matches!(e, FsError::CorruptBlock { .. }) {
            self.metrics.record_corrupt(id);
        }
        tracing::error!("read block {id}: {e}");
        e
    }

    /// Make `block` of an open node staged, copying a sealed block's bytes in unless
    /// `overwritten` (the caller is about to replace the whole block).
    fn stage_block(&self, st: &mut NodeData, block: u64, overwritten: bool, batch: &mut Vec<Mutation>) -> Result<()> {
        let cached = st.extent(self, block)?;
        if self.shared && cached != Some(Extent::Staged) {
            // Another host may have truncated the file since this one cached the block: the
            // batch then fails instead of bringing back a block the truncate removed (with
            // bytes from before it), see `write_killing`.
            batch.push(Mutation::ExpectExtent { ino: st.inode.ino, block, extent: cached });
        }
        match cached {
            Some(Extent::Staged) => return Ok(()),
            Some(Extent::Sealed { id, len }) => {
                // The store drops the reference (or keeps the version for a snapshot).
                if !overwritten {
                    let bytes = self.sealed(&id, len)?;
                    let off = block * self.block_size;
                    st.staging_file(self)?
                        .write_all_at(&bytes, off)
                        .map_err(|e| FsError::io(format!("copy block {id} to staging"), e))?;
                }
            }
            None => {
                let f = st.staging_file(self)?;
                // The staging file may still hold bytes of an earlier life of this block
                // (sealed while open, then punched or zeroed whole): they must not come back.
                if !overwritten {
                    punch_hole(f, block * self.block_size, self.block_size)
                        .map_err(|e| FsError::io(format!("clear staging block {block} of inode {}", st.inode.ino), e))?;
                }
            }
        }
        st.set_extent(block, Some(Extent::Staged), batch);
        Ok(())
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32> {
        self.write_killing(ino, offset, data, KillPriv::default())
    }

    /// A write that first removes what `kill` names from the file ([`KillPriv`]), in its own
    /// batch, before the data changes.
    pub fn write_killing(&self, ino: Ino, offset: u64, data: &[u8], kill: KillPriv) -> Result<u32> {
        let len = data.len() as u64;
        let end = offset.checked_add(len).filter(|e| *e <= MAX_FILE_SIZE).ok_or(FsError::TooBig)?;
        if len == 0 {
            return Ok(0);
        }
        self.space.check(len)?;
        let _gate = self.gate.read();
        let node = self.open_node(ino)?;
        let mut st = node.write();
        self.kill_privs(&mut st, kill)?;
        let attempt = |st: &mut NodeData| {
            let before = st.checkpoint();
            let written = self.write_locked(st, offset, data, end);
            if written.is_err() {
                st.roll_back(before);
            }
            written
        };
        let written = attempt(&mut st);
        if !(self.shared && matches!(written, Err(FsError::MetaStale(_)))) {
            return written;
        }
        // A shared volume: a block this host had cached changed in the store (another host
        // truncated the file): the write goes again on the file as stored.
        self.reload_node(&mut st)?;
        attempt(&mut st)
    }

    /// A shared volume: another host changed the blocks of a file this host has open (a
    /// truncate): forget the cached extents and take the record as stored (its size
    /// included; the truncate came after this host's last write that reached the store).
    fn reload_node(&self, st: &mut NodeData) -> Result<()> {
        st.extents.get_mut().clear();
        st.journaled.clear();
        st.inode = self.meta.get_inode(st.inode.ino)?.ok_or(FsError::NotFound)?;
        st.attr_dirty = false;
        Ok(())
    }

    /// Clear what `kill` names on an open file (see [`KillPriv`]). The common case, nothing
    /// to clear, reads the store at most once per open node and caps count.
    fn kill_privs(&self, st: &mut NodeData, kill: KillPriv) -> Result<()> {
        const S_ISUID: u32 = 0o4000;
        const S_ISGID: u32 = 0o2000;
        const S_IXGRP: u32 = 0o0010;
        let mut perm = st.inode.perm;
        if kill.suidgid {
            perm &= !S_ISUID;
            if perm & S_IXGRP != 0 {
                perm &= !S_ISGID;
            }
        }
        let caps = kill.caps && self.has_caps(st)?;
        if perm == st.inode.perm && !caps {
            return Ok(());
        }
        self.absorb(st)?;
        let before = st.checkpoint();
        let ino = st.inode.ino;
        let mut batch = Vec::new();
        if caps {
            batch.push(Mutation::DelXattr { ino, name: super::xattr::XATTR_CAPS.to_vec() });
        }
        st.inode.perm = perm;
        st.inode.ctime = Timespec::now();
        batch.push(if self.shared {
            // Only the mode and ctime (and unwritten data fields): another host's changes stay.
            Mutation::MergeInodeFields { before: before.0.clone(), after: st.inode.clone(), data: before.1 }
        } else {
            Mutation::PutInode(st.inode.clone())
        });
        st.attr_dirty = false;
        if let Err(e) = self.apply_live(batch, false) {
            st.roll_back(before);
            return Err(e);
        }
        Ok(())
    }

    /// How many `security.capability` attributes were set since the volume was opened.
    pub fn caps_count(&self) -> u64 {
        self.caps_set.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The open file `ino` was created with no attributes after [`Volume::caps_count`] was
    /// `count`: its first write need not read the store for capabilities (on a shared
    /// volume that read is a database round trip per new file).
    pub fn created_without_caps(&self, ino: Ino, count: u64) {
        if let Some(node) = self.node_if_open(ino) {
            let mut st = node.write();
            if st.no_caps_at.is_none() {
                st.no_caps_at = Some(count);
            }
        }
    }

    /// Whether the file has a `security.capability` attribute; an answer "no" is kept on
    /// the node until one is set anywhere in the volume.
    fn has_caps(&self, st: &mut NodeData) -> Result<bool> {
        let count = self.caps_set.load(std::sync::atomic::Ordering::Acquire);
        if st.no_caps_at == Some(count) {
            return Ok(false);
        }
        let has = self.meta.get_xattr(st.inode.ino, super::xattr::XATTR_CAPS)?.is_some();
        st.no_caps_at = if has { None } else { Some(count) };
        Ok(has)
    }

    fn write_locked(&self, st: &mut NodeData, offset: u64, data: &[u8], end: u64) -> Result<u32> {
        self.absorb(st)?;
        let ino = st.inode.ino;
        let len = data.len() as u64;
        let mut batch = Vec::new();
        let epoch = self.epoch();
        if st.inode.inline.is_some() {
            if end <= INLINE_MAX {
                return self.write_inline(st, offset, data);
            }
            self.uninline(st, &mut batch)?;
        }
        for s in spans(offset, len, self.block_size) {
            self.stage_block(st, s.block, s.covers_whole_block(self.block_size), &mut batch)?;
            st.journal(epoch, s.block, &mut batch);
        }
        st.staging_file(self)?
            .write_all_at(data, offset)
            .map_err(|e| FsError::io(format!("write staging file of inode {ino}"), e))?;
        let now = Timespec::now();
        st.inode.mtime = now;
        st.inode.ctime = now;
        st.attr_dirty = true;
        if end > st.inode.size {
            st.inode.size = end;
        }
        if !batch.is_empty() {
            batch.push(self.inode_write(&st.inode));
            st.attr_dirty = false;
            self.apply_live(batch, false)?;
        }
        self.metrics.written(len);
        Ok(len as u32)
    }

    /// A write that keeps a small file inline: the bytes go into the inode record.
    fn write_inline(&self, st: &mut NodeData, offset: u64, data: &[u8]) -> Result<u32> {
        let mut batch = Vec::new();
        st.journal(self.epoch(), 0, &mut batch);
        let buf = st.inode.inline.get_or_insert_with(Vec::new);
        let end = (offset as usize) + data.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(data);
        st.inode.size = buf.len() as u64;
        let now = Timespec::now();
        st.inode.mtime = now;
        st.inode.ctime = now;
        batch.push(self.inode_write(&st.inode));
        st.attr_dirty = false;
        self.apply_live(batch, false)?;
        self.metrics.written(data.len() as u64);
        Ok(data.len() as u32)
    }

    /// Move an inline file's bytes to its staging file (block 0), before it grows past
    /// [`INLINE_MAX`] or gets block-level treatment (fallocate). The caller persists the inode.
    fn uninline(&self, st: &mut NodeData, batch: &mut Vec<Mutation>) -> Result<()> {
        let Some(bytes) = st.inode.inline.take() else { return Ok(()) };
        if bytes.is_empty() {
            return Ok(());
        }
        let ino = st.inode.ino;
        let io = |e| FsError::io(format!("write staging file of inode {ino}"), e);
        if let Some(old) = &st.staging {
            // A staging file left from before the file went inline again (written by
            // passthrough, see `reinline`) may hold older bytes past the inline ones.
            punch_hole(old, 0, self.block_size).map_err(io)?;
        }
        st.staging_file(self)?.write_all_at(&bytes, 0).map_err(io)?;
        st.set_extent(0, Some(Extent::Staged), batch);
        st.journal(self.epoch(), 0, batch);
        Ok(())
    }

    /// `close()` of one descriptor: the attributes reach the store (not yet durably). On a
    /// volume that ships blocks (`ship.rs`), the file's staged data is sealed and in the
    /// object store when it returns (close-to-open between hosts).
    pub fn flush(&self, ino: Ino) -> Result<()> {
        let node = self.open_node(ino)?;
        let mut st = node.write_arc();
        self.persist_attrs(&mut st, false)?;
        self.seal_for_sync(&mut st)
    }

    /// Make the data and metadata of `ino`, and every metadata change before, durable. On a
    /// volume that ships blocks (`ship.rs`), durable also means in the object store: the
    /// file's staged data is sealed and uploaded before this returns; if the store does not
    /// take it, the error is returned and the data stays durable in the staging file.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        match self.node_if_open(ino) {
            Some(node) => {
                let mut st = node.write_arc();
                // What the kernel wrote by passthrough is in the batch synced below.
                self.absorb(&mut st)?;
                if let Some(f) = &st.staging {
                    f.sync_data().map_err(|e| FsError::io(format!("fsync staging file of inode {ino}"), e))?;
                }
                if st.staging_entry_unsynced {
                    self.staging.sync_dir()?;
                    st.staging_entry_unsynced = false;
                }
                self.persist_attrs(&mut st, true)?;
                self.seal_for_sync(&mut st)
            }
            None => self.meta.sync(),
        }
    }

    pub fn setattr(&self, ino: Ino, attr: SetAttr) -> Result<Inode> {
        if attr.size.is_none() && !self.shared {
            if let Some(done) = self.setattr_open(ino, &attr)? {
                return Ok(done);
            }
        }
        self.retrying(|| self.setattr_once(ino, attr.clone()))
    }

    /// A change of mode, owner or times of a file open here, on a volume no other host
    /// writes (tar's `futimens`, `fchown` and `fchmod` of each file it wrote, before its
    /// close): the node holds the record, so no transaction loads it; what the kernel wrote
    /// by passthrough (the absorb) and the change go to the store in one batch, applied
    /// before this returns, as every setattr's is (invariant 1: in the store's log, made
    /// durable by the next fsync). `None`: the file is not open here.
    fn setattr_open(&self, ino: Ino, attr: &SetAttr) -> Result<Option<Inode>> {
        // Held as a namespace change holds it: the node cannot leave memory (a last close,
        // then an unlink's purge of the record) between finding it and writing its record.
        let _ns = self.ns_for(&[ino]);
        let Some(node) = self.node_if_open(ino) else { return Ok(None) };
        let mut st = node.write();
        let before = (st.checkpoint(), st.pt_mtime);
        let done = self.setattr_node(&mut st, attr);
        if done.is_err() {
            // The store never saw the batch.
            st.roll_back(before.0);
            st.pt_mtime = before.1;
        }
        done.map(Some)
    }

    fn setattr_node(&self, st: &mut NodeData, attr: &SetAttr) -> Result<Inode> {
        let mut batch = Vec::new();
        // The answer carries the size: the kernel's writes by passthrough count.
        let learned = if st.pt_writers > 0 { self.absorb_into(st, &mut batch)? } else { 0 };
        set_attrs(&mut st.inode, attr, Timespec::now());
        batch.push(self.inode_write(&st.inode));
        self.apply_live(batch, false)?;
        st.attr_dirty = false;
        if learned > 0 {
            self.metrics.written(learned);
            self.metrics.absorbed();
        }
        Ok(st.inode.clone())
    }

    fn setattr_once(&self, ino: Ino, attr: SetAttr) -> Result<Inode> {
        let _gate = attr.size.map(|_| self.gate.read());
        if let Some(node) = self.node_if_open(ino) {
            // The answer carries the size: the kernel's writes by passthrough count.
            self.absorb(&mut node.write())?;
        }
        let mut txn = self.txn(&[ino]);
        if let Some(size) = attr.size {
            self.truncate_in(&mut txn, ino, size)?;
            // A truncate removes the file's capabilities, whoever does it, as the kernel's
            // `file_remove_privs` does: with FUSE_HANDLE_KILLPRIV_V2 it may leave that to us.
            if self.meta.get_xattr(ino, super::xattr::XATTR_CAPS)?.is_some() {
                txn.push(Mutation::DelXattr { ino, name: super::xattr::XATTR_CAPS.to_vec() });
            }
        }
        let inode = txn.inode_mut(ino)?;
        set_attrs(inode, &attr, Timespec::now());
        let out = inode.clone();
        txn.commit(false)?;
        Ok(out)
    }

    /// Truncate inside a namespace transaction, loading the node if the file is not open.
    fn truncate_in(&self, txn: &mut Txn<'_>, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        match txn.inode(ino)?.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("truncate of a special file")),
        }
        let pinned = txn.node_mut(ino)?.is_none();
        if pinned {
            // Not open: load it as a node for the duration of the change.
            txn.slots.remove(&ino);
            self.pin_locked(ino, false)?;
        }
        let result = (|| {
            let mut batch = Vec::new();
            let st = txn.node_mut(ino)?.ok_or(FsError::NotFound)?;
            self.truncate_node(st, size, &mut batch)?;
            txn.batch.extend(batch);
            txn.slots.get_mut(&ino).expect("loaded").1 = true;
            Ok(())
        })();
        if pinned {
            // The node leaves memory when the transaction's guard drops after commit.
            self.unpin_locked(ino, false);
        }
        result
    }

    fn truncate_node(&self, st: &mut NodeData, size: u64, batch: &mut Vec<Mutation>) -> Result<()> {
        self.absorb(st)?;
        let ino = st.inode.ino;
        let old = st.inode.size;
        let bs = self.block_size;
        let epoch = self.epoch();
        if st.inode.inline.is_some() {
            if size <= INLINE_MAX {
                st.inode.inline.as_mut().expect("inline").resize(size as usize, 0);
                st.journal(epoch, 0, batch);
                let now = Timespec::now();
                st.inode.size = size;
                st.inode.mtime = now;
                st.inode.ctime = now;
                return Ok(());
            }
            self.uninline(st, batch)?;
        }
        if size < old {
            let first_dead = blocks_for(size, bs);
            for (block, _) in self.meta.extents(ino, first_dead)? {
                st.set_extent(block, None, batch);
            }
            for block in first_dead..blocks_for(old, bs) {
                st.journal(epoch, block, batch);
            }
            if !size.is_multiple_of(bs) {
                let block = size / bs;
                if st.extent(self, block)?.is_some() {
                    self.stage_block(st, block, false, batch)?;
                }
                st.journal(epoch, block, batch);
            }
        }
        // The staging file keeps the file's length, so passthrough readers see the right EOF.
        if let Some(f) = &st.staging {
            f.set_len(size).map_err(|e| FsError::io(format!("truncate staging file of inode {ino}"), e))?;
            if st.pt_writers > 0 {
                // Our own change of the staging file's mtime: the inode's times below rule.
                let md = f.metadata().map_err(|e| FsError::io(format!("stat staging file of inode {ino}"), e))?;
                st.pt_mtime = mtime_of(&md);
            }
        }
        let now = Timespec::now();
        st.inode.size = size;
        st.inode.mtime = now;
        st.inode.ctime = now;
        Ok(())
    }

    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        let end = offset.checked_add(len).filter(|e| *e <= MAX_FILE_SIZE).ok_or(FsError::TooBig)?;
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes"));
        }
        let _gate = self.gate.read();
        let node = self.open_node(ino)?;
        let mut st = node.write();
        let before = st.checkpoint();
        let done = self.fallocate_locked(&mut st, offset, len, end, mode);
        if done.is_err() {
            st.roll_back(before);
        }
        done
    }

    fn fallocate_locked(&self, st: &mut NodeData, offset: u64, len: u64, end: u64, mode: Fallocate) -> Result<()> {
        self.absorb(st)?;
        let ino = st.inode.ino;
        let mut batch = Vec::new();
        let epoch = self.epoch();
        let bs = self.block_size;
        self.uninline(st, &mut batch)?;
        for s in spans(offset, len, bs) {
            let whole = s.covers_whole_block(bs);
            let at = s.block * bs + s.start;
            match mode {
                Fallocate::Allocate { .. } => {
                    if st.extent(self, s.block)?.is_none() {
                        self.space.check(s.len)?;
                        self.stage_block(st, s.block, false, &mut batch)?;
                        allocate(st.staging_file(self)?, at, s.len)
                            .map_err(|e| FsError::io(format!("allocate staging of inode {ino}"), e))?;
                    }
                }
                Fallocate::PunchHole | Fallocate::ZeroRange { .. } => match st.extent(self, s.block)? {
                    None => continue,
                    Some(Extent::Sealed { .. }) if whole => {
                        st.set_extent(s.block, None, &mut batch);
                        // An open file sealed by a snapshot keeps its bytes in staging; a
                        // passthrough reader of the staging file must see the zeros too.
                        if let Some(f) = &st.staging {
                            punch_hole(f, at, s.len)
                                .map_err(|e| FsError::io(format!("punch staging of inode {ino}"), e))?;
                        }
                    }
                    Some(_) => {
                        self.stage_block(st, s.block, false, &mut batch)?;
                        punch_hole(st.staging_file(self)?, at, s.len)
                            .map_err(|e| FsError::io(format!("punch staging of inode {ino}"), e))?;
                    }
                },
            }
            st.journal(epoch, s.block, &mut batch);
        }
        let grow = matches!(mode, Fallocate::Allocate { keep_size: false } | Fallocate::ZeroRange { keep_size: false });
        let now = Timespec::now();
        if grow && end > st.inode.size {
            st.inode.size = end;
            // The staging file keeps the file's length (allocate keeps the staging size): a
            // passthrough reader sees the right EOF, and a passthrough writer's size is its.
            if let Some(f) = &st.staging {
                f.set_len(end).map_err(|e| FsError::io(format!("grow staging file of inode {ino}"), e))?;
            }
        }
        if mode != (Fallocate::Allocate { keep_size: true }) {
            st.inode.mtime = now;
        }
        st.inode.ctime = now;
        batch.push(self.inode_write(&st.inode));
        st.attr_dirty = false;
        self.apply_live(batch, false)
    }
}

/// Read-ahead depth, in blocks, for a read that does not follow the last one.
pub(crate) const AHEAD_MIN: u64 = 8;
/// The most blocks read ahead of a sequential reader...
pub(crate) const AHEAD_MAX: u64 = 64;
/// ...and the most bytes.
pub(crate) const AHEAD_MAX_BYTES: u64 = 128 << 20;

/// Where the reads of one open file went: the block after the last one read from the block
/// store, and the read-ahead depth that read had. Readers share the node's read lock, so the
/// two are atomics; concurrent readers may interleave them, which only makes a depth wrong for
/// a read or two.
#[derive(Debug, Default)]
pub(crate) struct ReadPattern {
    next: std::sync::atomic::AtomicU64,
    depth: std::sync::atomic::AtomicU64,
}

impl ReadPattern {
    /// Record a read of `block`; the read-ahead depth for it ([`ahead_depth`]).
    fn next_depth(&self, block: u64, max: u64) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let depth = ahead_depth(self.next.load(Relaxed), self.depth.load(Relaxed), block, max);
        self.next.store(block + 1, Relaxed);
        self.depth.store(depth, Relaxed);
        depth
    }
}

/// The read-ahead depth for a read of `block`, given the block after the previous read
/// (`next`) and the depth it had (0: none yet): a read that takes up where the last one
/// stopped doubles it (up to `max`), a read of the same block again keeps it, any other read
/// (the first, or a jump) starts again at [`AHEAD_MIN`]. Sequential readers of a clone get
/// deep read-ahead within a few blocks; random readers never fetch more than today's 8.
pub(crate) fn ahead_depth(next: u64, depth: u64, block: u64, max: u64) -> u64 {
    let max = max.max(AHEAD_MIN);
    if depth == 0 {
        AHEAD_MIN
    } else if block == next {
        (depth * 2).clamp(AHEAD_MIN, max)
    } else if block + 1 == next {
        depth.clamp(AHEAD_MIN, max)
    } else {
        AHEAD_MIN
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::{ahead_depth, ReadPattern, AHEAD_MIN};

    #[test]
    fn read_ahead_deepens_for_sequential_readers_and_resets_on_a_jump() {
        let p = ReadPattern::default();
        let depths: Vec<u64> = (0..6).map(|b| p.next_depth(b, 64)).collect();
        assert_eq!(depths, vec![8, 16, 32, 64, 64, 64], "doubles at each next block, up to the cap");
        assert_eq!(p.next_depth(5, 64), 64, "the same block again keeps the depth");
        assert_eq!(p.next_depth(100, 64), AHEAD_MIN, "a jump starts again");
        assert_eq!(p.next_depth(50, 64), AHEAD_MIN, "so does a step back");
        assert_eq!(ahead_depth(3, 8, 3, 4), AHEAD_MIN, "the cap is never below the minimum");
        assert_eq!(ahead_depth(0, 0, 0, 64), AHEAD_MIN, "a file's first read starts at the minimum");
    }
}

/// A setattr's mode, owner and times (not its size) on `inode`, at time `now`.
fn set_attrs(inode: &mut Inode, attr: &SetAttr, now: Timespec) {
    if let Some(p) = attr.perm {
        inode.perm = p & 0o7777;
    }
    if let Some(u) = attr.uid {
        inode.uid = u;
    }
    if let Some(g) = attr.gid {
        inode.gid = g;
    }
    let at = |t: TimeSet| match t {
        TimeSet::Now => now,
        TimeSet::At(t) => t,
    };
    if let Some(t) = attr.atime {
        inode.atime = at(t);
    }
    if let Some(t) = attr.mtime {
        inode.mtime = at(t);
    }
    inode.ctime = attr.ctime.unwrap_or(now);
}

/// A file's mtime as the volume keeps times.
fn mtime_of(md: &std::fs::Metadata) -> Timespec {
    use std::os::unix::fs::MetadataExt;
    Timespec { sec: md.mtime(), nsec: md.mtime_nsec() as u32 }
}

#[cfg(test)]
mod new_files_tests {
    use super::NewFiles;
    use crate::types::INLINE_MAX;

    #[test]
    fn new_files_expect_large_once_half_of_the_last_16_outgrew_the_inline_limit() {
        let n = NewFiles::default();
        assert!(!n.expect_large(), "a mount starts out expecting small files");
        for i in 0..7 {
            n.closed(INLINE_MAX + 1 + i);
        }
        assert!(!n.expect_large(), "7 large of 16 is not half");
        n.closed(INLINE_MAX + 1);
        assert!(n.expect_large(), "8 large of the last 16");
        n.closed(INLINE_MAX);
        assert!(n.expect_large(), "a file at the inline limit is small; the 8 large are still in the window");
        for _ in 0..8 {
            n.closed(10);
        }
        assert!(!n.expect_large(), "the first large one left the window: 7 of the last 16");
    }
}
