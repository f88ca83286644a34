//! A volume over the in-memory stores (and real staging files in a temp dir), shared by the
//! core test suites.

use hybridfs_core::blockstore::MemBlockStore;
use hybridfs_core::fsck;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::staging::Staging;
use hybridfs_core::types::{Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, IoKind, NewNode, Volume, VolumeOptions};
use std::sync::Arc;

pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

pub struct MemVolume {
    pub vol: Arc<Volume>,
    pub meta: Arc<MetaStore>,
    pub blocks: Arc<MemBlockStore>,
    pub dir: tempfile::TempDir,
    block_size: u64,
}

impl MemVolume {
    pub fn new(block_size: u64) -> Self {
        Self::with(block_size, false)
    }

    /// A volume opened as one host of a shared volume (`VolumeOptions::shared`: changes
    /// checked inside their transaction, inode numbers from the store's counter, open rows).
    #[allow(dead_code)] // not every suite uses it
    pub fn shared(block_size: u64) -> Self {
        Self::with(block_size, true)
    }

    fn with(block_size: u64, shared: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::memory());
        let blocks = Arc::new(MemBlockStore::default());
        Volume::format(&*meta, 0, 0).unwrap();
        let opts = VolumeOptions { block_size: block_size as u32, staging_dir: dir.path().join("staging"), shared, ..Default::default() };
        let vol = Volume::open(meta.clone(), blocks.clone(), opts).unwrap();
        MemVolume { vol, meta, blocks, dir, block_size }
    }

    /// Create `name` in the root and open it for writing (release with `IoKind::Cached`).
    pub fn file(&self, name: &str) -> Ino {
        let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
        let ino = self.vol.create_node(ROOT_INO, name.as_bytes(), new, ROOT).unwrap().ino;
        assert_eq!(self.vol.open_file(ino, true).unwrap().kind, IoKind::Cached);
        ino
    }

    pub fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.vol.getattr(ino).unwrap().size;
        let got = self.vol.read(ino, 0, size as u32 + 100).unwrap();
        assert_eq!(got.len() as u64, size, "read returns exactly the file size");
        got
    }

    pub fn fsck(&self) -> fsck::FsckReport {
        let staging = Staging::new(self.dir.path().join("staging")).unwrap();
        fsck::check(&*self.meta, &*self.blocks, &staging, self.block_size, true).unwrap()
    }
}
