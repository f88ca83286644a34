//! Reference-model test: random file operations applied to a volume (in-memory metadata and
//! block stores, real staging files) and to a plain `Vec<u8>` per file, compared after every
//! step. It walks files across every representation a block can have — inline, staged, sealed,
//! hole — so copy-on-write of sealed blocks (invariant 2) and sealing are checked against the
//! model, and fsck must be clean at the end.

use hybridfs_core::types::Ino;
use hybridfs_core::{Fallocate, IoKind, SetAttr};
use proptest::prelude::*;

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

mod common;
use common::MemVolume;

struct Subject {
    mem: MemVolume,
    inos: Vec<Ino>,
}

impl Subject {
    fn new() -> Self {
        let mem = MemVolume::new(BS);
        let inos = (0..FILES).map(|i| mem.file(&format!("f{i}"))).collect();
        Subject { mem, inos }
    }

    fn apply(&self, op: &Op) {
        let v = &self.mem.vol;
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
                let got = s.mem.read_all(s.inos[f]);
                prop_assert!(got == *m, "step {step} ({op:?}): file {f} differs (got {} bytes, model {})", got.len(), m.len());
            }
        }
        for ino in &s.inos {
            s.mem.vol.release_file(*ino, IoKind::Cached).unwrap();
        }
        s.mem.vol.seal_inodes(&s.inos).unwrap();
        let report = s.mem.fsck();
        prop_assert!(report.clean(), "fsck: {:?}", report.problems);
    }
}
