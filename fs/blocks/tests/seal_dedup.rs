//! The sealer over the real block store: sealing bytes whose block file exists but is torn
//! (a power cut after its rename reached the disk and before its data did) must not
//! deduplicate onto it and then drop the only good copy, the staging file (invariant 1).

use hybridfs_blocks::{block_id, FileBlockStore};
use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::{Kind, ROOT_INO};
use hybridfs_core::{Caller, IoKind, NewNode, Volume, VolumeOptions};
use std::sync::Arc;

#[test]
fn sealing_onto_a_torn_block_file_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    let blocks = Arc::new(FileBlockStore::open(dir.path().join("blocks")).unwrap());
    Volume::format(&*meta, 0, 0).unwrap();
    let opts = VolumeOptions { block_size: 1 << 16, staging_dir: dir.path().join("staging"), ..Default::default() };
    let vol = Volume::open(meta.clone(), blocks.clone(), opts).unwrap();

    let data: Vec<u8> = (0..1u32 << 16).map(|i| (i % 253) as u8).collect();
    let torn = blocks.path(&block_id(&data));
    std::fs::create_dir_all(torn.parent().unwrap()).unwrap();
    std::fs::write(&torn, b"").unwrap();

    let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    let ino = vol.create_node(ROOT_INO, b"f", new, Caller { uid: 0, gid: 0 }).unwrap().ino;
    vol.open_file(ino, true).unwrap();
    vol.write(ino, 0, &data).unwrap();
    vol.release_file(ino, IoKind::Cached).unwrap();
    assert!(vol.seal_inode(ino).unwrap());
    assert!(!dir.path().join("staging").join(ino.to_string()).exists(), "staging copy dropped");

    assert_eq!(blocks.get(&block_id(&data)).unwrap(), data, "the sealed block is the torn file");
    vol.open_file(ino, false).unwrap();
    assert_eq!(vol.read(ino, 0, data.len() as u32).unwrap(), data);
    vol.release_file(ino, IoKind::Cached).unwrap();
}
