//! The sealer: a named background worker (`sealer` in the volume's [`crate::worker`]
//! registry) that turns staged blocks of closed, idle files into sealed, content-addressed
//! blocks. It ends at [`SealerHandle::stop_and_drain`] or at the registry's stop signal
//! (looked at every [`TICK`]), sealing what is queued before it goes.
//!
//! # Commit order for one batch of blocks
//!
//! 1. write each block to the block store and sync it (the block is durable, unreferenced);
//!    A volume that ships blocks (`blocks_to_store = on-fsync`, `ship.rs`) then uploads them
//!    to its object store: a failed upload stops here, the data stays staged;
//! 2. under `refs`: check that every block is still there (a block this batch deduplicated
//!    onto may have lost its last reference, and its file, meanwhile: it is written again),
//!    then apply one synced metadata batch: extents → `Sealed`, reference counts +1;
//! 3. punch the sealed ranges out of the staging file.
//!
//! Only step 2 holds `refs`, so writers that drop a block reference wait for one synced commit
//! at most, never for up to [`SEAL_BATCH`] block writes.
//!
//! A crash after 1 leaves unreferenced block files (reclaimable, reported by fsck, harmless);
//! after 2, stale bytes in the staging file that no extent points at. No order loses data.
//! All-zero blocks become holes instead of blocks.
//!
//! # A full disk
//!
//! Sealing writes new block files before the staged bytes they replace are punched out of the
//! staging file: up to one chunk ([`SEAL_BATCH`] blocks) ahead. The sealer seals a file only if
//! that fits above the disk's reserve (the one the write path keeps, [`crate::space`]); a file
//! that does not fit stays staged (durable: invariant 1,
//! unsealed data is never lost) and is tried again with a backoff ([`RETRY_FIRST`] doubling up
//! to [`RETRY_MAX`]), at the stop drain, or at the next mount. The sealer warns once per
//! episode and its worker status says why (`last_error`) until a retry seals everything.

use super::{NodeData, NodeGuard, Volume};
use crate::error::{FsError, Result};
use crate::meta::{MetaStore, Mutation};
use crate::staging::{punch_hole, read_full_at};
use crate::types::{Extent, Ino};
use crate::worker::Handle;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::ops::DerefMut;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Blocks sealed per metadata commit.
const SEAL_BATCH: usize = 64;
/// Inodes locked and sealed together.
const SEAL_GROUP: usize = 256;
/// How often the sealer looks for due inodes and at the stop signal.
const TICK: Duration = Duration::from_millis(200);
/// The first pause before files left staged for lack of room are tried again; doubled per
/// retry that still finds no room, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Bytes counted per block on top of its data when checking for room: the block file's frame
/// and the rounding up to the file system's block.
const BLOCK_OVERHEAD: u64 = 4096;

/// Files (with staged data) and their staged bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unsealed {
    pub files: u64,
    pub bytes: u64,
}

/// The files among `inos` (those with a staging file) that have staged blocks, and those
/// blocks' bytes. `size_of` gives a file's size (None: the file is gone; not counted). Reads
/// only these files' extents: the cost follows the unsealed data, not the volume's size.
pub fn count_unsealed(
    meta: &MetaStore,
    inos: &[Ino],
    block_size: u64,
    size_of: &mut dyn FnMut(Ino) -> Result<Option<u64>>,
) -> Result<Unsealed> {
    let mut total = Unsealed::default();
    for &ino in inos {
        let Some(size) = size_of(ino)? else { continue };
        let mut staged = false;
        for (block, extent) in meta.extents(ino, 0)? {
            if extent == Extent::Staged {
                staged = true;
                total.bytes += size.saturating_sub(block * block_size).min(block_size);
            }
        }
        total.files += staged as u64;
    }
    Ok(total)
}

/// What one sealing call did: how many inodes it sealed, and those it left staged because
/// sealing them would have eaten into the disk's reserve.
#[derive(Debug, Default)]
pub struct SealOutcome {
    pub sealed: usize,
    pub no_room: Vec<Ino>,
    pub no_room_bytes: u64,
}

enum Msg {
    Seal(Ino),
    Stop,
}

pub struct SealerHandle {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl SealerHandle {
    pub fn enqueue(&self, ino: Ino) {
        let _ = self.tx.send(Msg::Seal(ino));
    }

    /// Seal everything still queued, then stop.
    pub fn stop_and_drain(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn spawn(vol: Arc<Volume>, delay: Duration) -> SealerHandle {
    let (tx, rx) = crossbeam_channel::unbounded();
    let status = vol.workers().register("sealer");
    let thread = std::thread::Builder::new()
        .name("sealer".into())
        .spawn(move || run(vol, &status, rx, delay))
        .expect("spawn sealer thread");
    SealerHandle { tx, thread: Some(thread) }
}

/// Inodes waiting to be sealed, in the order they become due. The delay is the same for all,
/// so due times are monotonic and the front is always the next one.
#[derive(Default)]
struct DueQueue {
    order: VecDeque<(Instant, Ino)>,
    /// The latest due time of each waiting inode; older queue entries for it are stale.
    latest: HashMap<Ino, Instant>,
}

impl DueQueue {
    fn push(&mut self, ino: Ino, due: Instant) {
        self.order.push_back((due, ino));
        self.latest.insert(ino, due);
    }

    /// The next inode due at or before `now`, skipping entries superseded by a later push.
    fn pop_due(&mut self, now: Instant) -> Option<Ino> {
        while let Some(&(due, ino)) = self.order.front() {
            if due > now {
                return None;
            }
            self.order.pop_front();
            if self.latest.get(&ino) == Some(&due) {
                self.latest.remove(&ino);
                return Some(ino);
            }
        }
        None
    }

    fn drain(self) -> impl Iterator<Item = Ino> {
        self.latest.into_keys()
    }
}

/// Files left staged for lack of room, and when to try them again.
#[derive(Default)]
struct NoRoom {
    inos: std::collections::BTreeSet<Ino>,
    retries: u32,
    at: Option<Instant>,
}

impl NoRoom {
    /// Record one sealing call's outcome. Returns whether a disk-full episode began.
    fn record(&mut self, outcome: &SealOutcome, now: Instant) -> bool {
        if outcome.no_room.is_empty() {
            return false;
        }
        let began = self.inos.is_empty() && self.retries == 0;
        self.inos.extend(outcome.no_room.iter().copied());
        let pause = RETRY_FIRST.saturating_mul(1 << self.retries.min(5)).min(RETRY_MAX);
        self.at = Some(now + pause);
        began
    }

    /// The files due for a retry now (the set is emptied; what still does not fit is
    /// recorded again).
    fn due(&mut self, now: Instant) -> Vec<Ino> {
        match self.at {
            Some(at) if at <= now && !self.inos.is_empty() => {
                self.retries = self.retries.saturating_add(1);
                self.at = None;
                std::mem::take(&mut self.inos).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

fn run(vol: Arc<Volume>, status: &Handle, rx: Receiver<Msg>, delay: Duration) {
    let mut queue = DueQueue::default();
    let mut no_room = NoRoom::default();
    let stop = vol.workers().stop_signal();
    while !stop.is_stopped() {
        match rx.recv_timeout(TICK) {
            Ok(Msg::Seal(ino)) => queue.push(ino, Instant::now() + delay),
            Ok(Msg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let retry = no_room.due(now);
        let retrying = !retry.is_empty();
        let mut ready = retry;
        while let Some(ino) = queue.pop_due(now) {
            ready.push(ino);
        }
        ready.sort_unstable();
        ready.dedup();
        let (mut left, mut failed) = (0, false);
        for group in ready.chunks(SEAL_GROUP) {
            let Some(outcome) = seal_logged(&vol, status, group, &no_room) else {
                failed = true;
                continue;
            };
            left += outcome.no_room.len();
            if no_room.record(&outcome, Instant::now()) {
                tracing::warn!(
                    "disk full: {} files ({} bytes) stay staged, sealing them would eat into the reserve ({} bytes); \
                     tried again until there is room (free space: delete files or snapshots)",
                    outcome.no_room.len(),
                    outcome.no_room_bytes,
                    vol.space.reserve()
                );
            }
        }
        if retrying && !failed && left == 0 && no_room.inos.is_empty() {
            tracing::info!("the disk has room again: the files left staged are sealed");
            no_room = NoRoom::default();
        }
    }
    let mut all: Vec<Ino> = queue.drain().collect();
    all.extend(no_room.inos.iter().copied());
    all.extend(vol.staging.list().unwrap_or_default());
    all.sort_unstable();
    all.dedup();
    let mut final_no_room = NoRoom::default();
    for group in all.chunks(SEAL_GROUP) {
        if let Some(outcome) = seal_logged(&vol, status, group, &final_no_room) {
            final_no_room.record(&outcome, Instant::now());
        }
    }
}

/// Seal one group; its outcome becomes the worker's status (a failed group is queued again by
/// the file's next close, or sealed at the next mount: its staged bytes stay). Files left
/// staged for lack of room make the step fail with the reason, so `last_error` says why.
/// None: the call failed (logged).
fn seal_logged(vol: &Volume, status: &Handle, inos: &[Ino], no_room: &NoRoom) -> Option<SealOutcome> {
    status.busy(format!("seal {} files", inos.len()));
    let result = vol.seal_within_reserve(inos);
    let first = &inos[..inos.len().min(4)];
    match result {
        Ok(outcome) if outcome.no_room.is_empty() && no_room.inos.is_empty() => {
            status.done(Ok(()));
            Some(outcome)
        }
        Ok(outcome) => {
            let files = outcome.no_room.len() + no_room.inos.len();
            status.done(Err(format!(
                "disk full: {files} files wait in staging (sealing them would eat into the reserve of {} bytes); tried again until there is room",
                vol.space.reserve()
            )));
            Some(outcome)
        }
        Err(e) => {
            tracing::error!("seal staged blocks of inodes {first:?}..: {e}");
            status.done(Err(format!("seal inodes {first:?}..: {e}")));
            None
        }
    }
}

impl Volume {
    /// Seal every staged block of `ino` unless it is open. Returns whether it was sealed.
    pub fn seal_inode(&self, ino: Ino) -> Result<bool> {
        self.seal_inodes(&[ino]).map(|n| n == 1)
    }

    /// Seal the staged blocks of those of `inos` that are not open and fit above the disk's
    /// reserve (the others stay staged: see the module doc). Blocks of all of them go
    /// to the store together, [`SEAL_BATCH`] per synced metadata commit, so sealing many small
    /// files costs few syncs. Returns how many inodes were sealed.
    pub fn seal_inodes(&self, inos: &[Ino]) -> Result<usize> {
        self.seal_within_reserve(inos).map(|o| o.sealed)
    }

    /// [`Volume::seal_inodes`], saying which inodes were left staged because sealing them
    /// would eat into the disk's reserve (see the module doc). Their data stays in staging.
    pub fn seal_within_reserve(&self, inos: &[Ino]) -> Result<SealOutcome> {
        let guards = self.lock_for_sealing(inos)?;
        let (mut fit, left, left_bytes) = self.split_by_room(guards)?;
        let no_room: Vec<Ino> = left.iter().map(|g| g.inode.ino).collect();
        // Unlocked now, unpinned after the seal: unpinning takes `ns`, which must never be
        // waited for while holding node locks (a namespace transaction holds `ns` and waits
        // for the node lock of the file it unlinks: lock order ns -> node).
        let left = unlock_sealed(left);
        let result = self.seal_locked(&mut fit);
        let sealed = self.unpin_sealed(fit);
        self.unpin_nodes(&left);
        result.map(|_| SealOutcome { sealed, no_room, no_room_bytes: left_bytes })
    }

    /// Split locked nodes into those whose seal fits above the reserve together (in order) and
    /// those that do not; returns the latter's staged bytes too. The nodes here are not open,
    /// so [`Volume::seal_locked`] punches each chunk's blocks out of their staging files before
    /// it writes the next chunk: the most it writes ahead of the space it frees is one chunk
    /// ([`SEAL_BATCH`] blocks), or all the staged bytes if fewer. A big file on a disk more
    /// than half full is sealed this way; only a disk within a chunk of its reserve stops it.
    fn split_by_room(&self, guards: Vec<NodeGuard>) -> Result<(Vec<NodeGuard>, Vec<NodeGuard>, u64)> {
        let room = self.space.room()?;
        let chunk = SEAL_BATCH as u64 * (self.block_size + BLOCK_OVERHEAD);
        let (mut fit, mut left, mut used, mut left_bytes) = (Vec::new(), Vec::new(), 0u64, 0);
        for g in guards {
            let need = self.staged_need(&g)?;
            if used.saturating_add(need).min(chunk) <= room {
                used = used.saturating_add(need);
                fit.push(g);
            } else {
                left_bytes += need;
                left.push(g);
            }
        }
        Ok((fit, left, left_bytes))
    }

    /// What sealing a node's staged blocks may write: their bytes plus [`BLOCK_OVERHEAD`] each.
    fn staged_need(&self, st: &NodeData) -> Result<u64> {
        let bs = self.block_size;
        let mut need = 0;
        for (block, e) in self.meta.extents(st.inode.ino, 0)? {
            if e == Extent::Staged {
                need += st.inode.size.saturating_sub(block * bs).min(bs) + BLOCK_OVERHEAD;
            }
        }
        Ok(need)
    }

    /// Release the nodes the sealer pinned. A file unlinked while it was pinned was not purged
    /// at the kernel's FORGET (the pin kept it): purge it now that nothing holds it.
    fn unpin_sealed(&self, guards: Vec<NodeGuard>) -> usize {
        let nodes = unlock_sealed(guards);
        self.unpin_nodes(&nodes);
        nodes.len()
    }

    /// [`Volume::unpin_sealed`] of nodes already unlocked (see [`unlock_sealed`]).
    fn unpin_nodes(&self, nodes: &[(Ino, u32)]) {
        let mut unlinked = Vec::new();
        {
            let _ns = self.ns_all();
            for &(ino, nlink) in nodes {
                if self.unpin_locked(ino, false) && nlink == 0 {
                    unlinked.push(ino);
                }
            }
        }
        for ino in unlinked {
            if let Err(e) = self.purge_if_unused(ino) {
                tracing::error!("purge unlinked inode {ino} after sealing: {e}");
            }
        }
    }

    /// Pin and lock the nodes to seal. Done under `ns`, so no namespace transaction (the only
    /// holder of several node locks) runs meanwhile and the lock order cannot cross.
    fn lock_for_sealing(&self, inos: &[Ino]) -> Result<Vec<NodeGuard>> {
        let _ns = self.ns_all();
        let mut guards = Vec::new();
        for &ino in inos {
            if self.has_handles(ino) {
                continue;
            }
            match self.pin_locked(ino, false) {
                Ok(node) => guards.push(node.write_arc()),
                Err(FsError::NotFound) => self.staging.remove(ino)?,
                Err(e) => tracing::error!("load inode {ino} for sealing: {e}"),
            }
        }
        Ok(guards)
    }

    /// Seal every staged block of every inode, open ones included (a snapshot's first step).
    /// Open files keep their staging file and its bytes: a kernel passthrough reader may be
    /// reading it, and the bytes equal the sealed blocks until the next write.
    pub(crate) fn seal_everything(&self) -> Result<usize> {
        let mut sealed = 0;
        for group in self.staging.list()?.chunks(SEAL_GROUP) {
            let mut guards = Vec::new();
            {
                let _ns = self.ns_all();
                for &ino in group {
                    match self.pin_locked(ino, false) {
                        Ok(node) => guards.push(node.write_arc()),
                        Err(FsError::NotFound) => self.staging.remove(ino)?,
                        Err(e) => return Err(e),
                    }
                }
            }
            let result = self.seal_locked(&mut guards);
            let n = self.unpin_sealed(guards);
            result?;
            sealed += n;
        }
        Ok(sealed)
    }

    /// Seal every staged block of the locked nodes (open ones keep their staging file).
    pub(super) fn seal_locked<G: DerefMut<Target = NodeData>>(&self, guards: &mut [G]) -> Result<()> {
        // Files the kernel writes by passthrough: what it wrote so far is sealed too.
        for g in guards.iter_mut() {
            self.absorb(&mut **g)?;
        }
        let open: Vec<bool> = guards.iter().map(|g| self.has_handles(g.inode.ino)).collect();
        let mut work: Vec<(usize, u64)> = Vec::new();
        for (i, st) in guards.iter().enumerate() {
            for (block, e) in self.meta.extents(st.inode.ino, 0)? {
                if e == Extent::Staged {
                    work.push((i, block));
                }
            }
        }
        for chunk in work.chunks(SEAL_BATCH) {
            let sealed = chunk.iter().map(|&(i, block)| self.seal_block(&guards[i], block)).collect::<Result<Vec<_>>>()?;
            self.blocks.sync()?;
            // A volume that ships blocks puts them in its store before any record names them
            // (ship.rs); failing here leaves the chunk staged.
            let ids: Vec<_> = sealed.iter().filter_map(|e| match e {
                Some(Extent::Sealed { id, .. }) => Some(*id),
                _ => None,
            }).collect();
            self.ship_sealed(&ids)?;
            if let Err(e) = self.commit_sealed(guards, chunk, sealed) {
                // The extent caches may say `Sealed` where the store does not: refill them.
                for g in guards.iter_mut() {
                    g.extents.get_mut().clear();
                }
                return Err(e);
            }
            self.metrics.sealed(chunk.len() as u64);
            for &(i, block) in chunk.iter().filter(|(i, _)| !open[*i]) {
                if let Some(f) = &guards[i].staging {
                    punch_hole(f, block * self.block_size, self.block_size)
                        .map_err(|e| FsError::io(format!("punch staging file of inode {}", guards[i].inode.ino), e))?;
                }
            }
        }
        if work.is_empty() && open.iter().any(|o| !o) {
            // No synced commit above: the records that stopped naming these staging files
            // (a file made inline again, truncated or punched) are made durable before the
            // files go (invariant 1).
            self.meta.sync()?;
        }
        for (st, _) in guards.iter_mut().zip(&open).filter(|(_, open)| !**open) {
            st.staging = None;
            self.staging.remove(st.inode.ino)?;
        }
        Ok(())
    }

    /// Step 2 of the commit order for one chunk of sealed blocks (see the module doc).
    fn commit_sealed<G: DerefMut<Target = NodeData>>(&self, guards: &mut [G], chunk: &[(usize, u64)], mut sealed: Vec<Option<Extent>>) -> Result<()> {
        let _refs = self.refs.lock();
        let mut rewritten = false;
        for (k, &(i, block)) in chunk.iter().enumerate() {
            if let Some(Extent::Sealed { id, .. }) = sealed[k] {
                if !self.blocks.contains(&id)? {
                    sealed[k] = self.seal_block(&guards[i], block)?;
                    rewritten = true;
                }
            }
        }
        if rewritten {
            self.blocks.sync()?;
        }
        let mut batch = Vec::new();
        for (k, &(i, block)) in chunk.iter().enumerate() {
            if self.shared {
                // Still staged: a truncate on another host since it was read removed it, and
                // sealing it would bring it back (the whole chunk fails and goes again).
                batch.push(Mutation::ExpectExtent { ino: guards[i].inode.ino, block, extent: Some(Extent::Staged) });
            }
            guards[i].set_extent(block, sealed[k], &mut batch);
        }
        self.meta.apply(batch, true)
    }

    /// Store one staged block; all-zero blocks become holes (`None`).
    fn seal_block(&self, st: &NodeData, block: u64) -> Result<Option<Extent>> {
        let bs = self.block_size;
        let len = st.inode.size.saturating_sub(block * bs).min(bs) as usize;
        let mut buf = vec![0u8; len];
        // A staged block without its staging file is damage: sealing it would turn the
        // file's bytes into zeros for good.
        read_full_at(st.staged_bytes(block)?, &mut buf, block * bs)
            .map_err(|e| FsError::io(format!("read staging file of inode {}", st.inode.ino), e))?;
        if buf.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let id = self.blocks.put(&buf)?;
        Ok(Some(Extent::Sealed { id, len: len as u32 }))
    }
}

/// Drop the sealer's node locks, keeping what unpinning needs: each node's inode and links.
fn unlock_sealed(guards: Vec<NodeGuard>) -> Vec<(Ino, u32)> {
    guards.iter().map(|g| (g.inode.ino, g.inode.nlink)).collect()
}

#[cfg(test)]
mod tests {
    use super::{DueQueue, NoRoom, SealOutcome, RETRY_FIRST, RETRY_MAX};
    use std::time::{Duration, Instant};

    #[test]
    fn due_queue_pops_in_time_order_and_honours_re_pushes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = DueQueue::default();
        q.push(1, t0 + s);
        q.push(2, t0 + 2 * s);
        q.push(1, t0 + 3 * s);
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + 2 * s), Some(2), "1 was pushed again, so it is not due yet");
        assert_eq!(q.pop_due(t0 + 2 * s), None);
        assert_eq!(q.pop_due(t0 + 3 * s), Some(1));
        assert_eq!(q.drain().count(), 0);
    }

    #[test]
    fn files_left_for_lack_of_room_are_retried_with_a_backoff_and_warned_once() {
        let t0 = Instant::now();
        let mut r = NoRoom::default();
        let left = |inos: &[u64]| SealOutcome { sealed: 0, no_room: inos.to_vec(), no_room_bytes: 1 };
        assert!(!r.record(&left(&[]), t0), "nothing left: no episode");
        assert!(r.record(&left(&[7]), t0), "the first file left staged begins an episode");
        assert!(!r.record(&left(&[8]), t0), "one warning per episode");
        assert!(r.due(t0).is_empty(), "not before the pause");
        assert_eq!(r.due(t0 + RETRY_FIRST), vec![7, 8]);
        assert!(!r.record(&left(&[7]), t0), "still no room: the same episode");
        assert!(r.due(t0 + RETRY_FIRST).is_empty(), "the pause doubled");
        assert_eq!(r.due(t0 + 2 * RETRY_FIRST), vec![7]);
        for _ in 0..10 {
            r.record(&left(&[7]), t0);
            assert_eq!(r.due(t0 + RETRY_MAX), vec![7], "the pause is at most RETRY_MAX");
        }
    }
}
