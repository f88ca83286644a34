//! The sealer: a named background worker that turns staged blocks of closed, idle files into
//! sealed, content-addressed blocks.
//!
//! # Commit order for one batch of blocks
//!
//! 1. write each block to the block store and sync it (the block is durable, unreferenced);
//! 2. apply one synced metadata batch: extents → `Sealed`, reference counts +1;
//! 3. punch the sealed ranges out of the staging file.
//!
//! A crash after 1 leaves unreferenced block files (reclaimable, reported by fsck, harmless);
//! after 2, stale bytes in the staging file that no extent points at. No order loses data.
//! All-zero blocks become holes instead of blocks.

use super::{Node, Volume};
use crate::error::{FsError, Result};
use crate::meta::Mutation;
use crate::metrics::Metrics;
use crate::staging::{punch_hole, read_full_at};
use crate::types::{Extent, Ino};
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Blocks sealed per metadata commit.
const SEAL_BATCH: usize = 32;

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
    let thread = std::thread::Builder::new()
        .name("sealer".into())
        .spawn(move || run(vol, rx, delay))
        .expect("spawn sealer thread");
    SealerHandle { tx, thread: Some(thread) }
}

fn run(vol: Arc<Volume>, rx: Receiver<Msg>, delay: Duration) {
    let mut due: BTreeMap<Ino, Instant> = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Msg::Seal(ino)) => {
                due.insert(ino, Instant::now() + delay);
            }
            Ok(Msg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let ready: Vec<Ino> = due.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
        for ino in ready {
            due.remove(&ino);
            seal_logged(&vol, ino);
        }
    }
    let mut all: Vec<Ino> = due.into_keys().collect();
    all.extend(vol.staging.list().unwrap_or_default());
    all.sort_unstable();
    all.dedup();
    for ino in all {
        seal_logged(&vol, ino);
    }
}

fn seal_logged(vol: &Volume, ino: Ino) {
    if let Err(e) = vol.seal_inode(ino) {
        tracing::error!("seal staged blocks of inode {ino}: {e}");
    }
}

impl Volume {
    /// Seal every staged block of `ino` unless it is open. Returns whether it was sealed.
    pub fn seal_inode(&self, ino: Ino) -> Result<bool> {
        let node = {
            let _ns = self.ns.lock();
            if self.has_handles(ino) {
                return Ok(false);
            }
            match self.pin_locked(ino, false) {
                Ok(n) => n,
                Err(FsError::NotFound) => {
                    self.staging.remove(ino)?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        };
        let result = self.seal_node(&node);
        let _ns = self.ns.lock();
        self.unpin_locked(ino, false);
        result.map(|_| true)
    }

    fn seal_node(&self, node: &Node) -> Result<()> {
        let mut st = node.write();
        let ino = st.inode.ino;
        let staged: Vec<u64> = self
            .meta
            .extents(ino, 0)?
            .into_iter()
            .filter(|(_, e)| *e == Extent::Staged)
            .map(|(b, _)| b)
            .collect();
        let bs = self.block_size;
        for chunk in staged.chunks(SEAL_BATCH) {
            let mut batch = Vec::new();
            {
                let _refs = self.refs.lock();
                for &block in chunk {
                    let len = st.inode.size.saturating_sub(block * bs).min(bs) as usize;
                    let mut buf = vec![0u8; len];
                    if let Some(f) = &st.staging {
                        read_full_at(f, &mut buf, block * bs)
                            .map_err(|e| FsError::io(format!("read staging file of inode {ino}"), e))?;
                    }
                    let extent = if buf.iter().all(|b| *b == 0) {
                        None
                    } else {
                        let id = self.blocks.put(&buf)?;
                        batch.push(Mutation::RefDelta { id, delta: 1 });
                        Some(Extent::Sealed { id, len: len as u32 })
                    };
                    st.set_extent(block, extent, &mut batch);
                }
                self.blocks.sync()?;
                self.meta.apply(batch, true)?;
            }
            Metrics::add(&self.metrics.blocks_sealed, chunk.len() as u64);
            if let Some(f) = &st.staging {
                for &block in chunk {
                    punch_hole(f, block * bs, bs)
                        .map_err(|e| FsError::io(format!("punch staging file of inode {ino}"), e))?;
                }
            }
        }
        st.staging = None;
        self.staging.remove(ino)
    }
}
