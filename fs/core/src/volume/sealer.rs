//! The sealer: a named background worker (`sealer` in the volume's [`crate::worker`]
//! registry) that turns staged blocks of closed, idle files into sealed, content-addressed
//! blocks. It ends at [`SealerHandle::stop_and_drain`] or at the registry's stop signal
//! (looked at every [`TICK`]), sealing what is queued before it goes.
//!
//! # Commit order for one batch of blocks
//!
//! 1. write each block to the block store and sync it (the block is durable, unreferenced);
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

use super::{NodeData, NodeGuard, Volume};
use crate::error::{FsError, Result};
use crate::staging::{punch_hole, read_full_at};
use crate::types::{Extent, Ino};
use crate::worker::Handle;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Blocks sealed per metadata commit.
const SEAL_BATCH: usize = 64;
/// Inodes locked and sealed together.
const SEAL_GROUP: usize = 256;
/// How often the sealer looks for due inodes and at the stop signal.
const TICK: Duration = Duration::from_millis(200);

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

fn run(vol: Arc<Volume>, status: &Handle, rx: Receiver<Msg>, delay: Duration) {
    let mut queue = DueQueue::default();
    let stop = vol.workers().stop_signal();
    while !stop.is_stopped() {
        match rx.recv_timeout(TICK) {
            Ok(Msg::Seal(ino)) => queue.push(ino, Instant::now() + delay),
            Ok(Msg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let mut ready = Vec::new();
        while let Some(ino) = queue.pop_due(Instant::now()) {
            ready.push(ino);
        }
        for group in ready.chunks(SEAL_GROUP) {
            seal_logged(&vol, status, group);
        }
    }
    let mut all: Vec<Ino> = queue.drain().collect();
    all.extend(vol.staging.list().unwrap_or_default());
    all.sort_unstable();
    all.dedup();
    for group in all.chunks(SEAL_GROUP) {
        seal_logged(&vol, status, group);
    }
}

/// Seal one group; its outcome becomes the worker's status (a failed group is queued again by
/// the file's next close, or sealed at the next mount: its staged bytes stay).
fn seal_logged(vol: &Volume, status: &Handle, inos: &[Ino]) {
    status.busy(format!("seal {} files", inos.len()));
    let result = vol.seal_inodes(inos).map(|_| ());
    if let Err(e) = &result {
        tracing::error!("seal staged blocks of inodes {:?}..: {e}", &inos[..inos.len().min(4)]);
    }
    status.done(result.map_err(|e| format!("seal inodes {:?}..: {e}", &inos[..inos.len().min(4)])));
}

impl Volume {
    /// Seal every staged block of `ino` unless it is open. Returns whether it was sealed.
    pub fn seal_inode(&self, ino: Ino) -> Result<bool> {
        self.seal_inodes(&[ino]).map(|n| n == 1)
    }

    /// Seal the staged blocks of those of `inos` that are not open. Blocks of all of them go
    /// to the store together, [`SEAL_BATCH`] per synced metadata commit, so sealing many small
    /// files costs few syncs. Returns how many inodes were sealed.
    pub fn seal_inodes(&self, inos: &[Ino]) -> Result<usize> {
        let mut guards = self.lock_for_sealing(inos)?;
        let result = self.seal_locked(&mut guards);
        let sealed = self.unpin_sealed(guards);
        result.map(|_| sealed)
    }

    /// Release the nodes the sealer pinned. A file unlinked while it was pinned was not purged
    /// at the kernel's FORGET (the pin kept it): purge it now that nothing holds it.
    fn unpin_sealed(&self, guards: Vec<NodeGuard>) -> usize {
        let nodes: Vec<(Ino, u32)> = guards.iter().map(|g| (g.inode.ino, g.inode.nlink)).collect();
        drop(guards);
        let mut unlinked = Vec::new();
        {
            let _ns = self.ns.lock();
            for &(ino, nlink) in &nodes {
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
        nodes.len()
    }

    /// Pin and lock the nodes to seal. Done under `ns`, so no namespace transaction (the only
    /// holder of several node locks) runs meanwhile and the lock order cannot cross.
    fn lock_for_sealing(&self, inos: &[Ino]) -> Result<Vec<NodeGuard>> {
        let _ns = self.ns.lock();
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
                let _ns = self.ns.lock();
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

    fn seal_locked(&self, guards: &mut [NodeGuard]) -> Result<()> {
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
        for (st, _) in guards.iter_mut().zip(&open).filter(|(_, open)| !**open) {
            st.staging = None;
            self.staging.remove(st.inode.ino)?;
        }
        Ok(())
    }

    /// Step 2 of the commit order for one chunk of sealed blocks (see the module doc).
    fn commit_sealed(&self, guards: &mut [NodeGuard], chunk: &[(usize, u64)], mut sealed: Vec<Option<Extent>>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::DueQueue;
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
}
