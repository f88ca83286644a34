//! The block seam: sealed, immutable, content-addressed blocks.
//!
//! A block store keeps plain bytes under their [`BlockId`] (blake3 of the bytes). `get` always
//! verifies what it read against the id before returning it (invariant 5): a mismatch is a
//! [`FsError::CorruptBlock`] naming the block, never wrong bytes. `put` is idempotent: putting
//! bytes that are already stored costs a lookup. Blocks are never modified (invariant 2); they are
//! removed only when no extent references them.

use crate::error::{FsError, Result};
use crate::types::BlockId;
use parking_lot::Mutex;
use std::collections::HashMap;

pub trait BlockStore: Send + Sync + 'static {
    /// Hash, encode and store `data`; returns its id. Durable only after [`BlockStore::sync`].
    fn put(&self, data: &[u8]) -> Result<BlockId>;
    /// Make every block put so far durable against power loss.
    fn sync(&self) -> Result<()>;
    /// The verified plain bytes of block `id`.
    fn get(&self, id: &BlockId) -> Result<Vec<u8>>;
    fn contains(&self, id: &BlockId) -> Result<bool>;
    fn remove(&self, id: &BlockId) -> Result<()>;
    /// The stored frame of block `id` as it is (for uploading it unchanged); not verified.
    fn frame(&self, id: &BlockId) -> Result<Vec<u8>>;
    /// Bytes block `id` takes in the store (None: not there).
    fn stored_len(&self, id: &BlockId) -> Result<Option<u64>>;
    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> Result<()>;
    /// A hint: these blocks will probably be read soon (a store in front of a slower one may
    /// start fetching them). The default does nothing.
    fn prefetch(&self, _ids: &[BlockId]) {}
    /// Whether this store fetches blocks it does not hold from an object store behind it (on
    /// first read, verified): a block whose location is recorded there (the `pushed` family)
    /// may then be referenced without a local copy. The default: no, every block is local.
    fn fetches(&self) -> bool {
        false
    }
    /// Whether this node holds a copy of block `id` (for a store that fetches, [`contains`]
    /// also counts blocks only in the object store).
    ///
    /// [`contains`]: BlockStore::contains
    fn is_local(&self, id: &BlockId) -> Result<bool> {
        self.contains(id)
    }
}

/// How a read on the current thread may wait for a slower store behind a block store (the
/// object store behind a clone's local cache). The caller of a read sets it around the call
/// ([`with_waiting`]); block stores that can wait ask [`waiting`] only once the block is not
/// held locally, so a read served locally pays nothing for it. Why a thread-local and not an
/// argument: the decision belongs to whoever serves the request (the FUSE adapter, which knows
/// its threads and its caller), the waiting to the block store, and every layer between (the
/// volume's read path, snapshot views) stays as it is.
#[derive(Clone, Copy, Debug, Default)]
pub enum Waiting {
    /// Wait as long as the store's own bound (a clone's read timeout).
    #[default]
    Allowed,
    /// Never wait: a block not held locally is [`FsError::WouldBlock`] at once.
    Never,
    /// Wait, but give up with [`FsError::Interrupted`] as soon as `probe(arg)` says the caller
    /// is gone or has a signal to handle; asked every [`INTERRUPT_POLL`] while waiting.
    Interruptible { probe: fn(u64) -> bool, arg: u64 },
}

/// How often a waiting read asks [`Waiting::Interruptible`]'s probe.
pub const INTERRUPT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

thread_local! {
    static WAITING: std::cell::Cell<Waiting> = const { std::cell::Cell::new(Waiting::Allowed) };
}

/// Run `f` with reads on this thread waiting as `w` says; the previous mode is restored
/// afterwards (also if `f` panics).
pub fn with_waiting<T>(w: Waiting, f: impl FnOnce() -> T) -> T {
    struct Restore(Waiting);
    impl Drop for Restore {
        fn drop(&mut self) {
            WAITING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(WAITING.with(|c| c.replace(w)));
    f()
}

/// How reads on this thread may wait now (see [`Waiting`]).
pub fn waiting() -> Waiting {
    WAITING.with(|c| c.get())
}

/// In-memory [`BlockStore`] for unit tests. Its ids are a cheap non-cryptographic hash.
#[derive(Default)]
pub struct MemBlockStore {
    blocks: Mutex<HashMap<BlockId, Vec<u8>>>,
}

impl MemBlockStore {
    pub fn fake_id(data: &[u8]) -> BlockId {
        let mut id = [0u8; 32];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, b) in data.iter().enumerate() {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
            id[i % 32] ^= (h >> 24) as u8;
        }
        id[..8].copy_from_slice(&h.to_le_bytes());
        id[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        BlockId(id)
    }

    /// Flip a byte of a stored block, for corruption tests.
    pub fn corrupt(&self, id: &BlockId) {
        if let Some(b) = self.blocks.lock().get_mut(id) {
            if let Some(x) = b.first_mut() {
                *x ^= 0xff;
            }
        }
    }
}

impl BlockStore for MemBlockStore {
    fn put(&self, data: &[u8]) -> Result<BlockId> {
        let id = Self::fake_id(data);
        self.blocks.lock().entry(id).or_insert_with(|| data.to_vec());
        Ok(id)
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn get(&self, id: &BlockId) -> Result<Vec<u8>> {
        let data = self.blocks.lock().get(id).cloned().ok_or_else(|| FsError::CorruptBlock {
            id: *id,
            why: "missing".into(),
        })?;
        if Self::fake_id(&data) != *id {
            return Err(FsError::CorruptBlock { id: *id, why: "hash mismatch".into() });
        }
        Ok(data)
    }
    fn contains(&self, id: &BlockId) -> Result<bool> {
        Ok(self.blocks.lock().contains_key(id))
    }
    fn remove(&self, id: &BlockId) -> Result<()> {
        self.blocks.lock().remove(id);
        Ok(())
    }
    fn stored_len(&self, id: &BlockId) -> Result<Option<u64>> {
        Ok(self.blocks.lock().get(id).map(|b| b.len() as u64))
    }
    fn frame(&self, id: &BlockId) -> Result<Vec<u8>> {
        self.blocks.lock().get(id).cloned().ok_or(FsError::CorruptBlock { id: *id, why: "missing".into() })
    }
    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> Result<()> {
        self.blocks.lock().keys().for_each(|id| f(*id));
        Ok(())
    }
}
