//! Reference-model test: random file operations applied to a volume (in-memory metadata and
//! block stores, real staging files) and to a plain `Vec<u8>` per file, compared after every
//! step. It walks files across every representation a block can have — inline, staged, sealed,
//! hole — so copy-on-write of sealed blocks (invariant 2) and sealing are checked against the
//! model, and fsck must be clean at the end.

use hybridfs_core::blockstore::MemBlockStore;
use hybridfs_core::fsck;
use hybridfs_core::meta::MemMeta;
use hybridfs_core::staging::Staging;
use hybridfs_core::types::{Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, Fallocate, IoKind, NewNode, SetAttr, Volume, VolumeOptions};
use proptest::prelude::*;
use std::sync::Arc;

const BS: u64 = 4096;
const FILES: usize = 3;
const MAX_END: u64 = 6 * BS;

#[derive(Clone, Debug)]
enum Op {
    Write { file: usize, off: u64, len: u64, byte: u8 },
    Truncate { file: usize, size: u64 },
    PunchHole { file: usize, off: u64, len: u64 },
    Allocate { file: usize, off: u64, len: u64 },
    /// Close, seal every staged block, open again.
    Seal { file: usize },
    Fsync { file: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        4 => (file.clone(), 0..MAX_END, 1..2 * BS, any::<u8>()).prop_map(|(file, off, len, byte)| Op::Write { file, off, len, byte }),
        1 => (file.clone(), 0..MAX_END).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (file.clone(), 0..MAX_END, 1..2 * BS).prop_map(|(file, off, len)| Op::PunchHole { file, off, len }),
        1 => (file.clone(), 0..MAX_END, 1..2 * BS).prop_map(|(file, off, len)| Op::Allocate { file, off, len }),
        2 => file.clone().prop_map(|file| Op::Seal { file }),
        1 => file.prop_map(|file| Op::Fsync { file }),
    ]
}

struct Subject {
    vol: Arc<Volume>,
    meta: Arc<MemMeta>,
    blocks: Arc<MemBlockStore>,
    dir: tempfile::TempDir,
    inos: Vec<Ino>,
}

impl Subject {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MemMeta::default());
        let blocks = Arc::new(MemBlockStore::default());
        Volume::format(&*meta, 0, 0).unwrap();
        let opts = VolumeOptions { block_size: BS as u32, staging_dir: dir.path().join("staging"), ..Default::default() };
        let vol = Volume::open(meta.clone(), blocks.clone(), opts).unwrap();
        let inos = (0..FILES)
            .map(|i| {
                let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
                let ino = vol.create_node(ROOT_INO, format!("f{i}").as_bytes(), new, Caller { uid: 0, gid: 0 }).unwrap().ino;
                vol.open_file(ino, true).unwrap();
                ino
            })
            .collect();
        Subject { vol, meta, blocks, dir, inos }
    }

    fn apply(&self, op: &Op) {
        let v = &self.vol;
        match *op {
            Op::Write { file, off, len, byte } => {
                v.write(self.inos[file], off, &vec![byte; len as usize]).unwrap();
            }
            Op::Truncate { file, size } => {
                v.setattr(self.inos[file], SetAttr { size: Some(size), ..Default::default() }).unwrap();
            }
            Op::PunchHole { file, off, len } => v.fallocate(self.inos[file], off, len, Fallocate::PunchHole).unwrap(),
            Op::Allocate { file, off, len } => {
                v.fallocate(self.inos[file], off, len, Fallocate::Allocate { keep_size: false }).unwrap()
            }
            Op::Seal { file } => {
                let ino = self.inos[file];
                v.release_file(ino, IoKind::Cached).unwrap();
                assert!(v.seal_inode(ino).unwrap());
                v.open_file(ino, true).unwrap();
            }
            Op::Fsync { file } => v.fsync(self.inos[file]).unwrap(),
        }
    }

    fn content(&self, file: usize) -> Vec<u8> {
        let ino = self.inos[file];
        let size = self.vol.getattr(ino).unwrap().size;
        let got = self.vol.read(ino, 0, size as u32 + 100).unwrap();
        assert_eq!(got.len() as u64, size, "read returns exactly the file size");
        got
    }
}

fn model_apply(model: &mut [Vec<u8>], op: &Op) {
    match *op {
        Op::Write { file, off, len, byte } => {
            let m = &mut model[file];
            let end = (off + len) as usize;
            if m.len() < end {
                m.resize(end, 0);
            }
            m[off as usize..end].fill(byte);
        }
        Op::Truncate { file, size } => model[file].resize(size as usize, 0),
        Op::PunchHole { file, off, len } => {
            let m = &mut model[file];
            let end = ((off + len) as usize).min(m.len());
            if (off as usize) < end {
                m[off as usize..end].fill(0);
            }
        }
        Op::Allocate { file, off, len } => {
            let m = &mut model[file];
            let end = (off + len) as usize;
            if m.len() < end {
                m.resize(end, 0);
            }
        }
        Op::Seal { .. } | Op::Fsync { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn volume_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let s = Subject::new();
        let mut model = vec![Vec::new(); FILES];
        for (step, op) in ops.iter().enumerate() {
            s.apply(op);
            model_apply(&mut model, op);
            for (f, m) in model.iter().enumerate() {
                let got = s.content(f);
                prop_assert!(got == *m, "step {step} ({op:?}): file {f} differs (got {} bytes, model {})", got.len(), m.len());
            }
        }
        for ino in &s.inos {
            s.vol.release_file(*ino, IoKind::Cached).unwrap();
        }
        s.vol.seal_inodes(&s.inos).unwrap();
        let staging = Staging::new(s.dir.path().join("staging")).unwrap();
        let report = fsck::check(&*s.meta, &*s.blocks, &staging, BS, true).unwrap();
        prop_assert!(report.clean(), "fsck: {:?}", report.problems);
    }
}
