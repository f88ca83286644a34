//! Shared fixtures of the sync tests: a volume over in-memory metadata and real block files.

use hybridfs_blocks::FileBlockStore;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::{Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, IoKind, NewNode, Volume, VolumeOptions};
use std::sync::Arc;

#[allow(dead_code)] // `dir` keeps the temporary directory alive; some suites only need that
pub struct Fixture {
    pub vol: Arc<Volume>,
    pub dir: tempfile::TempDir,
}

pub fn volume() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    let blocks = Arc::new(FileBlockStore::open(dir.path().join("blocks")).unwrap());
    Volume::format(&meta, 0, 0).unwrap();
    let opts = VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    let vol = Volume::open(meta, blocks, opts).unwrap();
    Fixture { vol, dir }
}

/// Deterministic bytes that do not compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_file(vol: &Volume, name: &str, offset: u64, data: &[u8]) -> Ino {
    let ino = match vol.lookup(ROOT_INO, name.as_bytes()) {
        Ok(i) => i.ino,
        Err(_) => {
            let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
            vol.create_node(ROOT_INO, name.as_bytes(), new, Caller { uid: 0, gid: 0 }).unwrap().ino
        }
    };
    vol.open_file(ino, true).unwrap();
    vol.write(ino, offset, data).unwrap();
    vol.release_file(ino, IoKind::Cached).unwrap();
    ino
}


/// The whole content of file `name` in the root of `vol`.
#[allow(dead_code)] // not every suite reads
pub fn read(vol: &Volume, name: &str) -> Result<Vec<u8>, hybridfs_core::FsError> {
    let i = vol.lookup(ROOT_INO, name.as_bytes())?;
    let opened = vol.open_file(i.ino, false)?;
    let r = vol.read(i.ino, 0, i.size as u32 + 1);
    vol.release_file(i.ino, opened.kind)?;
    r
}

/// The names of the volume's snapshots.
#[allow(dead_code)] // not every suite pushes
pub fn snapshot_names(vol: &Volume) -> Vec<String> {
    vol.snapshots().unwrap().into_iter().map(|s| s.name).collect()
}

/// The snapshots pushes of `branch` kept as fork bases (issue 10), by name.
#[allow(dead_code)] // not every suite pushes
pub fn fork_bases(vol: &Volume, branch: &str) -> Vec<String> {
    hybridfs_sync::forkbase::list(vol, branch).unwrap().into_iter().map(|b| b.snapshot).collect()
}
