//! Read-ahead hints go to a block store only where there may be something to fetch: a home
//! volume reading its own blocks asks nothing (its cold random reads would pay for every
//! hint), a reader of blocks the node does not hold hints the next ones of the file.

use hybridfs_core::blockstore::{BlockStore, MemBlockStore};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::{BlockId, Extent, Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, IoKind, NewNode, Volume, VolumeOptions};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

const BS: u64 = 64 << 10;
const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// A store that "fetches": blocks in `remote` count as held only in an object store behind it.
#[derive(Default)]
struct Hinted {
    inner: MemBlockStore,
    remote: Mutex<HashSet<BlockId>>,
    hints: Mutex<Vec<BlockId>>,
}

impl BlockStore for Hinted {
    fn put(&self, data: &[u8]) -> hybridfs_core::Result<BlockId> {
        self.inner.put(data)
    }
    fn sync(&self) -> hybridfs_core::Result<()> {
        self.inner.sync()
    }
    fn get(&self, id: &BlockId) -> hybridfs_core::Result<Vec<u8>> {
        self.remote.lock().unwrap().remove(id);
        self.inner.get(id)
    }
    fn contains(&self, id: &BlockId) -> hybridfs_core::Result<bool> {
        self.inner.contains(id)
    }
    fn remove(&self, id: &BlockId) -> hybridfs_core::Result<()> {
        self.inner.remove(id)
    }
    fn frame(&self, id: &BlockId) -> hybridfs_core::Result<Vec<u8>> {
        self.inner.frame(id)
    }
    fn stored_len(&self, id: &BlockId) -> hybridfs_core::Result<Option<u64>> {
        self.inner.stored_len(id)
    }
    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> hybridfs_core::Result<()> {
        self.inner.for_each(f)
    }
    fn prefetch(&self, ids: &[BlockId]) {
        self.hints.lock().unwrap().extend_from_slice(ids);
    }
    fn fetches(&self) -> bool {
        true
    }
    fn is_local(&self, id: &BlockId) -> hybridfs_core::Result<bool> {
        Ok(!self.remote.lock().unwrap().contains(id))
    }
}

/// A sealed file of `n` distinct blocks; its block ids in order.
fn sealed_file(vol: &Volume, meta: &MetaStore, n: u64) -> (Ino, Vec<BlockId>) {
    let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    let ino = vol.create_node(ROOT_INO, b"f", new, ROOT).unwrap().ino;
    vol.open_file(ino, true).unwrap();
    for b in 0..n {
        vol.write(ino, b * BS, &vec![b as u8 + 1; BS as usize]).unwrap();
    }
    vol.release_file(ino, IoKind::Cached).unwrap();
    vol.seal_inode(ino).unwrap();
    let ids = meta.extents(ino, 0).unwrap().into_iter().filter_map(|(_, e)| if let Extent::Sealed { id, .. } = e { Some(id) } else { None }).collect();
    (ino, ids)
}

#[test]
fn read_ahead_hints_only_blocks_the_node_may_have_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    let blocks = Arc::new(Hinted::default());
    Volume::format(&*meta, 0, 0).unwrap();
    // No block cache: every read goes to the block store.
    let opts = VolumeOptions { block_size: BS as u32, staging_dir: dir.path().join("staging"), block_cache_bytes: 0, ..Default::default() };
    let vol = Volume::open(meta.clone(), blocks.clone(), opts).unwrap();
    let (ino, ids) = sealed_file(&vol, &meta, 12);
    assert_eq!(ids.len(), 12);

    // Home: every block held here. Reads anywhere in the file ask for nothing ahead.
    vol.open_file(ino, false).unwrap();
    for b in [0u64, 5, 3, 11] {
        assert_eq!(vol.read(ino, b * BS, 4096).unwrap(), vec![b as u8 + 1; 4096]);
    }
    assert!(blocks.hints.lock().unwrap().is_empty(), "a node holding every block hints none");

    // A clone: blocks 1.. are only in the object store. Reading block 0 (held) hints the
    // window, since its last block is not held; reading block 9 (not held) hints 10 and 11.
    blocks.remote.lock().unwrap().extend(ids[1..].iter().copied());
    assert_eq!(vol.read(ino, 0, 4096).unwrap(), vec![1u8; 4096]);
    assert_eq!(*blocks.hints.lock().unwrap(), ids[1..9].to_vec(), "blocks 1..=8 hinted");
    blocks.hints.lock().unwrap().clear();
    assert_eq!(vol.read(ino, 9 * BS, 4096).unwrap(), vec![10u8; 4096]);
    assert_eq!(*blocks.hints.lock().unwrap(), ids[10..12].to_vec(), "blocks 10 and 11 hinted");
    vol.release_file(ino, IoKind::Cached).unwrap();
}
