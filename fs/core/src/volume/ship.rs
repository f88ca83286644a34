//! Blocks to the shared store at `fsync` and `close` (`blocks_to_store = on-fsync`): the data
//! path of a volume several hosts mount.
//!
//! With a [`BlockShipper`] set ([`Volume::ship_blocks_with`]), every seal of staged data —
//! the one `fsync` and `close()` (FUSE `flush`) of a written file now do at once, the sealer's,
//! a snapshot's — puts the new blocks in the volume's object store before the extents naming
//! them are committed. The sealer's commit order (see `sealer.rs`) becomes:
//!
//! 1. write each block to the local block store and sync it;
//! 2. **ship**: upload the blocks the store does not have yet (same objects as a push:
//!    `VOLUME/blocks/<id>` or a pack, recorded in the `pushed` family so a later push skips
//!    them);
//! 3. one synced metadata batch: extents → `Sealed`;
//! 4. punch the sealed ranges out of the staging file (closed files only).
//!
//! So no committed extent names a block another host cannot read through the store: blocks
//! before the records that name them, as a push orders blocks before its layer (invariant 4).
//! A ship that fails (store down, or slower than the shipper's bound) fails the seal before 3:
//! the extents stay `Staged`, the bytes stay in this host's staging file (synced first by
//! `fsync`: invariant 1), and `fsync`/`close` return the error (`EIO`). The sealer tries again
//! at the file's next close or the next mount.
//!
//! Hook order for the write path: whatever turns a file's writes into `Staged` extents (the
//! userspace write path at each write; a passthrough write path at `fsync`/`close`) runs
//! before [`Volume::seal_for_sync`], which seals what the metadata says is staged.

use super::{NodeData, Volume};
use crate::error::Result;
use crate::types::BlockId;
use std::ops::DerefMut;
use std::sync::Arc;

/// Where sealed blocks go before the records naming them are committed: the volume's shared
/// object store. Implemented above core (the node library, over the sync crate's uploads).
pub trait BlockShipper: Send + Sync {
    /// Make every block of `ids` (sealed, in `vol`'s block store, maybe repeated) readable from
    /// the shared store and recorded as there; `Ok` only once all are. Bounded in time: a store
    /// that does not answer is an error (`EIO`), not a wait.
    fn ship(&self, vol: &Volume, ids: &[BlockId]) -> Result<()>;
}

impl Volume {
    /// Ship the blocks of every seal to `shipper` before committing them (None: seal locally
    /// only, the default). Set before the volume serves.
    pub fn ship_blocks_with(&self, shipper: Option<Arc<dyn BlockShipper>>) {
        *self.shipper.write() = shipper;
    }

    /// Whether seals ship their blocks to the shared store (`blocks_to_store = on-fsync`).
    pub fn ships_blocks(&self) -> bool {
        self.shipper.read().is_some()
    }

    /// Step 2 of the commit order (module doc): the sealed blocks of a chunk to the store.
    pub(super) fn ship_sealed(&self, ids: &[BlockId]) -> Result<()> {
        let shipper = self.shipper.read().clone();
        match shipper {
            Some(s) if !ids.is_empty() => s.ship(self, ids),
            _ => Ok(()),
        }
    }

    /// `fsync` or `close()` of an open file on a volume that ships blocks: seal the file's
    /// staged blocks now and ship them (module doc). Nothing to do without a shipper, or when
    /// the file never had a staging file open here.
    pub(super) fn seal_for_sync<G: DerefMut<Target = NodeData>>(&self, st: &mut G) -> Result<()> {
        if !self.ships_blocks() || st.staging.is_none() {
            return Ok(());
        }
        // A shared volume: a chunk that met another host's truncate goes again, from the
        // extents as stored.
        self.retrying(|| self.seal_locked(std::slice::from_mut(&mut *st)))
    }
}
