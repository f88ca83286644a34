//! Reference-model test of snapshots (invariant 2: a snapshot never changes after it is taken).
//!
//! Random file operations (write, truncate, unlink, rename, seal) are mixed with snapshot
//! create, delete and rollback and with collector passes, applied to a volume over the
//! in-memory stores and to a model: the live tree and a frozen copy of it per snapshot. After
//! every step the live tree and every snapshot are read back (snapshots at their epoch, as the
//! `.snapshots` views read them) and compared with the model; the diff from a snapshot to the
//! live tree must name every path whose content differs (nothing lost, invariant 3's journal).
//! fsck, which checks reference counts of live and snapshot versions, is clean at the end.

mod common;

use common::{MemVolume, ROOT};
use hybridfs_core::meta::LIVE;
use hybridfs_core::types::{Kind, ROOT_INO};
use hybridfs_core::{FsError, IoKind, NewNode, RenameFlags, SetAttr};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const BS: u64 = 4096;
const NAMES: usize = 4;
const SNAPS: usize = 3;
const MAX_END: u64 = 5 * BS;

type Tree = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Write { file: usize, off: u64, len: u64, byte: u8 },
    Truncate { file: usize, size: u64 },
    Unlink { file: usize },
    Rename { from: usize, to: usize },
    Seal { file: usize },
    Snapshot { snap: usize },
    Delete { snap: usize },
    Rollback { snap: usize },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..NAMES;
    let snap = 0..SNAPS;
    prop_oneof![
        6 => (file.clone(), 0..MAX_END, 1..2 * BS, any::<u8>()).prop_map(|(file, off, len, byte)| Op::Write { file, off, len, byte }),
        1 => (file.clone(), 0..MAX_END).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => file.clone().prop_map(|file| Op::Unlink { file }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => file.prop_map(|file| Op::Seal { file }),
        2 => snap.clone().prop_map(|snap| Op::Snapshot { snap }),
        1 => snap.clone().prop_map(|snap| Op::Delete { snap }),
        1 => snap.prop_map(|snap| Op::Rollback { snap }),
        1 => Just(Op::Gc),
    ]
}

fn fname(i: usize) -> String {
    format!("f{i}")
}

struct Model {
    live: Tree,
    snaps: BTreeMap<String, Tree>,
}

fn apply(mem: &MemVolume, model: &mut Model, op: &Op) {
    let v = &mem.vol;
    match op {
        Op::Write { file, off, len, byte } => {
            let name = fname(*file);
            let ino = match v.lookup(ROOT_INO, name.as_bytes()) {
                Ok(i) => i.ino,
                Err(_) => {
                    let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
                    v.create_node(ROOT_INO, name.as_bytes(), new, ROOT).unwrap().ino
                }
            };
            v.open_file(ino, true).unwrap();
            v.write(ino, *off, &vec![*byte; *len as usize]).unwrap();
            v.release_file(ino, IoKind::Cached).unwrap();
            let m = model.live.entry(name).or_default();
            let end = (off + len) as usize;
            if m.len() < end {
                m.resize(end, 0);
            }
            m[*off as usize..end].fill(*byte);
        }
        Op::Truncate { file, size } => {
            let name = fname(*file);
            if let Some(m) = model.live.get_mut(&name) {
                let ino = v.lookup(ROOT_INO, name.as_bytes()).unwrap().ino;
                v.setattr(ino, SetAttr { size: Some(*size), ..Default::default() }).unwrap();
                m.resize(*size as usize, 0);
            }
        }
        Op::Unlink { file } => {
            let name = fname(*file);
            let r = v.unlink(ROOT_INO, name.as_bytes());
            assert_eq!(r.is_ok(), model.live.remove(&name).is_some(), "unlink {name}: {r:?}");
        }
        Op::Rename { from, to } => {
            let (a, b) = (fname(*from), fname(*to));
            let r = v.rename(ROOT_INO, a.as_bytes(), ROOT_INO, b.as_bytes(), RenameFlags::default());
            assert_eq!(r.is_ok(), model.live.contains_key(&a), "rename {a} {b}: {r:?}");
            if let Some(m) = model.live.remove(&a) {
                model.live.insert(b, m);
            }
        }
        Op::Seal { file } => {
            if let Ok(i) = v.lookup(ROOT_INO, fname(*file).as_bytes()) {
                v.seal_inode(i.ino).unwrap();
            }
        }
        Op::Snapshot { snap } => {
            let name = format!("s{snap}");
            match v.snapshot_create(&name) {
                Ok(_) => assert!(model.snaps.insert(name, model.live.clone()).is_none()),
                Err(FsError::BadInput(_)) => assert!(model.snaps.contains_key(&name), "{name} refused but absent"),
                Err(e) => panic!("snapshot {name}: {e}"),
            }
        }
        Op::Delete { snap } => {
            let name = format!("s{snap}");
            let r = v.snapshot_delete(&name);
            assert_eq!(r.is_ok(), model.snaps.remove(&name).is_some(), "delete {name}: {r:?}");
        }
        Op::Rollback { snap } => {
            let name = format!("s{snap}");
            match v.rollback(&name) {
                Ok(report) => {
                    model.snaps.insert(report.saved_as.name.clone(), model.live.clone());
                    model.live = model.snaps[&name].clone();
                }
                Err(e) => assert!(!model.snaps.contains_key(&name), "rollback to {name}: {e}"),
            }
        }
        Op::Gc => {
            v.collect(Duration::ZERO).unwrap();
        }
    }
}

/// The tree as the volume shows it at epoch `at`.
fn read_tree(mem: &MemVolume, at: u64) -> Tree {
    let v = &mem.vol;
    let mut tree = Tree::new();
    for e in v.readdir_at(ROOT_INO, 0, 1000, at).unwrap() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let size = v.getattr_at(e.ino, at).unwrap().size;
        let bytes = if at == LIVE {
            let opened = v.open_file(e.ino, false).unwrap();
            let bytes = v.read(e.ino, 0, size as u32 + 10).unwrap();
            v.release_file(e.ino, opened.kind).unwrap();
            bytes
        } else {
            v.read_at(e.ino, 0, size as u32 + 10, at).unwrap()
        };
        assert_eq!(bytes.len() as u64, size);
        tree.insert(String::from_utf8(e.name).unwrap(), bytes);
    }
    tree
}

fn check(mem: &MemVolume, model: &Model, step: usize, op: &Op) -> Result<(), TestCaseError> {
    let live = read_tree(mem, LIVE);
    prop_assert!(live == model.live, "step {step} ({op:?}): the live tree differs: {:?} vs model {:?}", live.keys(), model.live.keys());
    let names: BTreeSet<String> = mem.vol.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    prop_assert_eq!(&names, &model.snaps.keys().cloned().collect::<BTreeSet<_>>(), "step {} ({:?}): snapshot names", step, op);
    for (name, tree) in &model.snaps {
        let at = mem.vol.snapshot(name).unwrap().epoch;
        let got = read_tree(mem, at);
        prop_assert!(
            &got == tree,
            "step {step} ({op:?}): invariant 2 broken: snapshot {name} changed: {:?} vs model {:?}",
            got.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
            tree.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
        );
        // Every path whose content differs from the snapshot is in the diff.
        let report = hybridfs_core::diff::diff(mem.vol.meta(), at, LIVE, BS).unwrap();
        let named: BTreeSet<String> = report
            .entries
            .iter()
            .flat_map(|e| [Some(e.path.clone()), e.from_path.clone()])
            .flatten()
            .collect();
        let keys: BTreeSet<&String> = tree.keys().chain(model.live.keys()).collect();
        for k in keys {
            if tree.get(k) != model.live.get(k) {
                prop_assert!(named.contains(&format!("/{k}")), "step {step}: diff from {name} misses /{k}: {:?}", report.entries);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_never_change_and_rollback_restores_them(ops in prop::collection::vec(op(), 1..50)) {
        let mem = MemVolume::new(BS);
        let mut model = Model { live: Tree::new(), snaps: BTreeMap::new() };
        for (step, op) in ops.iter().enumerate() {
            apply(&mem, &mut model, op);
            check(&mem, &model, step, op)?;
        }
        for name in model.snaps.keys() {
            mem.vol.snapshot_delete(name).unwrap();
        }
        mem.vol.collect(Duration::ZERO).unwrap();
        let report = mem.fsck();
        prop_assert!(report.clean(), "fsck: {:?}", report.problems);
        prop_assert_eq!(report.snapshot_blocks, 0, "with every snapshot deleted and collected, no old version is left");
    }
}
