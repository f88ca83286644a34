//! The merge through the store (invariant 6), many random histories: home pushes `main`, a
//! clone forks it, both sides change random files (writes at random offsets, new files,
//! deletes, renames across directories, new directories, chmod), the clone pushes its branch
//! and home merges it with `hybridfs_sync::merge::merge` (base from `main`'s layers, kept only
//! for the inodes either side touched). After the merge every content either side changed is
//! in the same inode or at (or under) a path the report names, files neither side touched are
//! unaltered, fsck is clean, and merging again is up to date.

mod common;

use common::{noise, volume};
use hybridfs_blocks::FileBlockStore;
use hybridfs_cloud::{MemStore, ObjectStore};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::{Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, IoKind, NewNode, RenameFlags, SetAttr, Volume, VolumeOptions};
use hybridfs_sync::lazy::LazyStore;
use hybridfs_sync::merge::{merge, MergeRequest};
use hybridfs_sync::{push, Remote};
use std::collections::BTreeMap;
use std::sync::Arc;

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const DIRS: [&str; 3] = ["", "d0", "d1"];
const NAMES: [&str; 4] = ["a", "b.pt", "c", "d0"];

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn dir_of(v: &Volume, d: usize) -> Option<Ino> {
    if DIRS[d].is_empty() {
        return Some(ROOT_INO);
    }
    v.lookup(ROOT_INO, DIRS[d].as_bytes()).ok().filter(|i| i.kind == Kind::Dir).map(|i| i.ino)
}

/// One random operation; those the tree does not allow now do nothing.
fn random_op(v: &Volume, rng: &mut u64) {
    let (d, n) = ((next(rng) % 3) as usize, NAMES[(next(rng) % 4) as usize].as_bytes());
    let Some(dir) = dir_of(v, d) else { return };
    let entry = v.lookup(dir, n).ok();
    match next(rng) % 8 {
        0..=3 => {
            let ino = match entry {
                Some(i) if i.kind == Kind::File => i.ino,
                Some(_) => return,
                None => match v.create_node(dir, n, NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] }, ROOT) {
                    Ok(i) => i.ino,
                    Err(_) => return,
                },
            };
            let (off, len) = (next(rng) % 300_000, 1 + next(rng) % 200_000);
            v.open_file(ino, true).unwrap();
            v.write(ino, off, &noise(next(rng), len as usize)).unwrap();
            v.release_file(ino, IoKind::Cached).unwrap();
        }
        4 => {
            if entry.is_some_and(|i| i.kind == Kind::File) {
                v.unlink(dir, n).unwrap();
            }
        }
        5 => {
            let to = dir_of(v, (next(rng) % 3) as usize);
            let to_name = NAMES[(next(rng) % 4) as usize].as_bytes();
            if let (Some(i), Some(to)) = (entry, to) {
                if i.kind == Kind::File {
                    let _ = v.rename(dir, n, to, to_name, RenameFlags::default());
                }
            }
        }
        6 => {
            if entry.is_none() && dir == ROOT_INO {
                let _ = v.create_node(dir, n, NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] }, ROOT);
            }
        }
        _ => {
            if let Some(i) = entry {
                v.setattr(i.ino, SetAttr { perm: Some(0o600 | (next(rng) as u32 & 0o44)), ..Default::default() }).unwrap();
            }
        }
    }
}

/// Every regular file: path → (inode, bytes).
fn tree(v: &Volume) -> BTreeMap<String, (Ino, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = todo.pop() {
        for e in v.readdir(dir, 0, 10_000).unwrap() {
            if e.name == b"." || e.name == b".." || e.name == b".snapshots" {
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            match e.kind {
                Kind::Dir => todo.push((e.ino, p)),
                Kind::File => {
                    let size = v.getattr(e.ino).unwrap().size;
                    let opened = v.open_file(e.ino, false).unwrap();
                    let bytes = v.read(e.ino, 0, size as u32 + 1).unwrap_or_else(|err| panic!("read {p}: {err}"));
                    v.release_file(e.ino, opened.kind).unwrap();
                    out.insert(p, (e.ino, bytes));
                }
                _ => {}
            }
        }
    }
    out
}

struct Node {
    vol: Arc<Volume>,
    meta: Arc<MetaStore>,
    _dir: tempfile::TempDir,
}

fn clone_node(store: Arc<dyn ObjectStore>, branch: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    hybridfs_sync::clone::import(&meta, &Remote::new(store.clone(), "vol"), "main", branch).unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store, "vol"), meta.clone(), None).unwrap());
    let opts = VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    let vol = Volume::open(meta.clone(), lazy, opts).unwrap();
    Node { vol, meta, _dir: dir }
}

fn one_history(seed: u64) {
    let mut rng = seed;
    let home = volume();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    common::write_file(&home.vol, "untouched", 0, &noise(seed, 70_000));
    for _ in 0..12 {
        random_op(&home.vol, &mut rng);
    }
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let base = tree(&home.vol);
    let node = clone_node(store.clone(), "node");
    for _ in 0..10 {
        random_op(&home.vol, &mut rng);
        random_op(&node.vol, &mut rng);
    }
    push(&node.vol, &remote, "node", &|_| {}).unwrap();
    let ours = tree(&home.vol);
    let theirs = tree(&node.vol);

    let req = MergeRequest { branch: "node".into(), confirm: true, prefetch: true, ..Default::default() };
    let record = merge(&home.vol, &remote, &req, None).unwrap_or_else(|e| panic!("seed {seed}: merge: {e}"));
    let result = tree(&home.vol);
    let reported: Vec<&String> = record.conflicts.iter().flat_map(|c| std::iter::once(&c.path).chain(c.copy.iter())).collect();
    let base_by_ino: BTreeMap<Ino, &Vec<u8>> = base.values().map(|(i, b)| (*i, b)).collect();
    for (side, t) in [("home", &ours), ("branch", &theirs)] {
        for (path, (ino, bytes)) in t {
            if base_by_ino.get(ino) == Some(&bytes) {
                continue;
            }
            let kept = result.iter().any(|(p, (i, b))| {
                b == bytes && (i == ino || reported.iter().any(|c| p == *c || p.starts_with(&format!("{c}/"))))
            });
            assert!(kept, "seed {seed}: invariant 6: {side}'s change to {path} is lost; report {record:?}");
        }
    }
    for (path, b) in &base {
        if ours.get(path) == Some(b) && theirs.get(path) == Some(b) {
            assert_eq!(result.get(path).map(|r| &r.1), Some(&b.1), "seed {seed}: {path} was touched by neither side");
        }
    }
    let staging = hybridfs_core::staging::Staging::new(home.dir.path().join("staging")).unwrap();
    let report = hybridfs_core::fsck::check(home.vol.meta(), home.vol.blocks(), &staging, home.vol.block_size(), true).unwrap();
    assert!(report.clean(), "seed {seed}: fsck after the merge: {:?}", report.problems);
    assert!(merge(&home.vol, &remote, &req, None).unwrap().up_to_date, "seed {seed}: merging again");
    drop(node.meta);
}

#[test]
fn merges_through_the_store_keep_every_change() {
    let cases: u64 = std::env::var("MERGE_SYNC_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(100);
    for seed in 0..cases {
        one_history(seed);
    }
}
