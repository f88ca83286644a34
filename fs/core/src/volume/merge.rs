//! Applying a merge to a volume that may be mounted and in use.
//!
//! The batch is built and applied with the gate held exclusively (no data writer) and the
//! namespace lock held (no namespace operation): the merge is planned against exactly the
//! tree it changes, and readers see the tree before or after it (one atomic batch), never a
//! mix. Open files are not changed under their handles: while one the batch changes is open,
//! the attempt is repeated (for a bounded time), then refused, nothing applied. The caller invalidates the kernel's caches afterwards, outside
//! the locks (an invalidation can wait for a request that waits for them).

use super::Volume;
use crate::error::{FsError, Result};
use crate::meta::{MetaStore, Mutation};
use crate::types::Ino;
use std::collections::BTreeSet;

/// Builds a batch from the live tree: the mutations and the inodes they change.
pub type BuildBatch<'a> = dyn FnMut(&MetaStore) -> Result<(Vec<Mutation>, BTreeSet<Ino>)> + 'a;

impl Volume {
    /// Build a batch from the live tree with `build` (which returns it and the inodes it
    /// changes) and apply it, with no writer in between. While a file it changes is open,
    /// the locks are released and the attempt repeated (readers close their files between
    /// reads) for up to `wait`; then it is refused, nothing applied.
    pub fn apply_quiesced(
        &self,
        wait: std::time::Duration,
        build: &mut BuildBatch<'_>,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.try_apply_quiesced(build)? {
                None => return Ok(()),
                Some(open) if std::time::Instant::now() >= deadline => {
                    return Err(FsError::Refused(format!(
                        "{} files the merge changes stayed open for {}s (inode {} first): close them and merge again; nothing was applied",
                        open.len(),
                        wait.as_secs(),
                        open[0]
                    )))
                }
                Some(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    /// One attempt: applied (None), or the open files it would change (nothing applied).
    fn try_apply_quiesced(&self, build: &mut BuildBatch<'_>) -> Result<Option<Vec<Ino>>> {
        let _gate = self.gate.write();
        let _ns = self.ns_all();
        let (batch, inodes) = build(&self.meta)?;
        let open: Vec<Ino> = self.nodes.lock().iter().filter(|(i, e)| e.handles > 0 && inodes.contains(*i)).map(|(i, _)| *i).collect();
        if !open.is_empty() {
            return Ok(Some(open));
        }
        {
            let _refs = self.refs.lock();
            self.meta.apply(batch, true)?;
        }
        self.recent.clear();
        self.nodes.lock().retain(|i, e| e.handles > 0 || !inodes.contains(i));
        self.next_ino.fetch_max(super::next_ino(&self.meta)?, std::sync::atomic::Ordering::Relaxed);
        Ok(None)
    }
}
