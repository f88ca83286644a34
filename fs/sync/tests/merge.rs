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

/// A day: home pushes `main`, a clone forks it, both change random files, the clone pushes.
struct Day {
    home: common::Fixture,
    remote: Remote,
    node: Node,
    base: BTreeMap<String, (Ino, Vec<u8>)>,
}

fn day(seed: u64) -> Day {
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
    Day { home, remote, node, base }
}

fn one_history(seed: u64) {
    let Day { home, remote, node, base } = day(seed);
    let ours = tree(&home.vol);
    let theirs = tree(&node.vol);

    let req = MergeRequest { branch: "node".into(), confirm: true, prefetch: true, ..Default::default() };
    let record = merge(&home.vol, &remote, &req, None).unwrap_or_else(|e| panic!("seed {seed}: merge: {e}"));
    assert!(record.base_snapshot.is_some(), "seed {seed}: the base is read from home's fork base, not from main's layers");
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

/// The record of a dry run with its conflict-name stamps made neutral.
fn plan_of(vol: &Volume, remote: &Remote) -> (String, Option<String>, u64) {
    let req = MergeRequest { branch: "node".into(), confirm: true, dry_run: true, ..Default::default() };
    let r = merge(vol, remote, &req, None).unwrap();
    let mut lines = serde_json::to_string(&(&r.changes, &r.conflicts, &r.base)).unwrap();
    for t in [r.at - 60, r.at, r.at + 60] {
        lines = lines.replace(&hybridfs_core::merge::names::stamp(t), "STAMP");
    }
    (lines, r.base_snapshot, r.records_read)
}

/// Issue 10, O(changes) planning: the base read by key from home's fork base (the snapshot its
/// push of `main` kept) gives exactly the plan that reading `main`'s layers from the store
/// gives (invariant 6 holds either way), and reads fewer records.
#[test]
fn the_fork_base_gives_the_plan_main_s_layers_give() {
    for seed in 0..40 {
        let d = day(seed);
        let (fast, from, fast_read) = plan_of(&d.home.vol, &d.remote);
        let from = from.unwrap_or_else(|| panic!("seed {seed}: no fork base used"));
        assert!(from.starts_with("push-main-"), "{from}");
        d.home.vol.snapshot_delete(&from).unwrap();
        let (slow, none, slow_read) = plan_of(&d.home.vol, &d.remote);
        assert_eq!(none, None, "seed {seed}: the fork base is gone: main's layers are read");
        assert_eq!(fast, slow, "seed {seed}: the two bases plan alike");
        assert!(fast_read <= slow_read, "seed {seed}: {fast_read} records read from the fork base, {slow_read} from the layers");
        drop(d.node.meta);
    }
}

/// A merge holds its fork base (the branch's next merge reads it again); the push of `main`
/// keeps only the newest fork bases otherwise, and an undo of the first merge releases it.
#[test]
fn a_merge_holds_its_fork_base_and_pushes_keep_the_newest() {
    let d = day(7);
    let req = MergeRequest { branch: "node".into(), confirm: true, ..Default::default() };
    let rec = merge(&d.home.vol, &d.remote, &req, None).unwrap();
    let base = rec.base_snapshot.clone().expect("fork base used");
    let holder = hybridfs_sync::forkbase::holder("node");
    assert!(d.home.vol.snapshot(&base).unwrap().holds.contains(&holder));
    for i in 0..hybridfs_sync::forkbase::FORK_BASES_KEPT + 2 {
        common::write_file(&d.home.vol, &format!("later{i}"), 0, b"x");
        push(&d.home.vol, &d.remote, "main", &|_| {}).unwrap();
    }
    let bases = hybridfs_sync::forkbase::list(&d.home.vol, "main").unwrap();
    assert_eq!(bases.len(), hybridfs_sync::forkbase::FORK_BASES_KEPT + 1, "the newest and the held one: {bases:?}");
    assert_eq!(bases[0].snapshot, base, "the held base survives the pruning");
    let push_snaps = d.home.vol.snapshots().unwrap().into_iter().filter(|s| s.name.starts_with("push-main-")).count();
    assert_eq!(push_snaps, bases.len(), "no other push snapshot is left");
    hybridfs_sync::merge::undo(&d.home.vol, Some(rec.id), None).unwrap();
    assert!(!d.home.vol.snapshot(&base).unwrap().holds.contains(&holder), "undoing the first merge releases the base");
    drop(d.node.meta);
}

/// Issue 10: merging while the branch's node reported changes it has not pushed warns (the
/// merge goes on with what is pushed); a report older than the head (the node pushed since)
/// or one saying everything is pushed does not; a node that never reported is not warned of.
#[test]
fn a_merge_warns_when_the_node_reported_unpushed_changes() {
    use hybridfs_sync::nodestate;
    let d = day(3);
    let req = MergeRequest { branch: "node".into(), confirm: true, dry_run: true, ..Default::default() };
    assert!(merge(&d.home.vol, &d.remote, &req, None).unwrap().warnings.is_empty(), "no report, no warning");
    let st = nodestate::local(&d.node.vol, "node", "n1").unwrap();
    assert_eq!((st.pushed_seq, st.unpushed_records), (1, 0), "right after its push: {st:?}");
    nodestate::publish(&d.remote, "node", &st).unwrap();
    assert!(merge(&d.home.vol, &d.remote, &req, None).unwrap().warnings.is_empty(), "all pushed, no warning");

    common::write_file(&d.node.vol, "late", 0, b"written after the push");
    let st = nodestate::local(&d.node.vol, "node", "n1").unwrap();
    assert!(st.unpushed_records > 0, "{st:?}");
    nodestate::publish(&d.remote, "node", &st).unwrap();
    assert_eq!(nodestate::read(&d.remote, "node").unwrap(), Some(st));
    // The test's home block store is local only: the branch's blocks come during the merge.
    let req = MergeRequest { dry_run: false, prefetch: true, ..req };
    let rec = merge(&d.home.vol, &d.remote, &req, None).unwrap();
    assert!(rec.applied && rec.warnings.len() == 1 && rec.warnings[0].contains("not pushed yet"), "{:?}", rec.warnings);
    let again = merge(&d.home.vol, &d.remote, &req, None).unwrap();
    assert!(again.up_to_date && again.warnings.len() == 1, "up to date, and still told: {:?}", again.warnings);

    push(&d.node.vol, &d.remote, "node", &|_| {}).unwrap();
    let rec = merge(&d.home.vol, &d.remote, &req, None).unwrap();
    assert!(rec.warnings.is_empty(), "the report is older than the head: {:?}", rec.warnings);
    assert_eq!(common::read(&d.home.vol, "late").unwrap(), b"written after the push");

    let (head, _) = d.remote.head("node").unwrap().unwrap();
    let ahead = nodestate::NodeState { node: "n1".into(), at: 0, pushed_seq: head.seq + 1, unpushed_records: 0 };
    let w = nodestate::unpushed_warning("node", &head, &ahead).expect("a report newer than the head merged");
    assert!(w.contains("newer than the head"), "{w}");
    drop(d.node.meta);
}

/// Issue 10 with small files published as blocks (issue 9 item 6): home keeps a small file's
/// bytes inline, layers carry them as the block published for them. Invariant 6: the merge
/// never takes one form for a change: a mode changed on the branch keeps the bytes, a rewrite
/// on either side is taken, no conflict; from the fork base and from `main`'s layers alike.
#[test]
fn small_files_merge_by_their_bytes_inline_or_published() {
    for fork_base in [true, false] {
        let home = volume();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let remote = Remote::new(store.clone(), "vol");
        for (name, bytes) in [("mode", "tiny one"), ("theirs", "tiny two"), ("ours", "tiny three")] {
            common::write_file(&home.vol, name, 0, bytes.as_bytes());
        }
        push(&home.vol, &remote, "main", &|_| {}).unwrap();
        let node = clone_node(store.clone(), "node");
        let chmod = |v: &Volume, name: &str| {
            let ino = v.lookup(ROOT_INO, name.as_bytes()).unwrap().ino;
            v.setattr(ino, SetAttr { perm: Some(0o600), ..Default::default() }).unwrap();
        };
        chmod(&node.vol, "mode");
        chmod(&node.vol, "ours");
        let ino = node.vol.lookup(ROOT_INO, b"theirs").unwrap().ino;
        node.vol.setattr(ino, SetAttr { size: Some(0), ..Default::default() }).unwrap();
        common::write_file(&node.vol, "theirs", 0, b"the branch's bytes");
        let ino = home.vol.lookup(ROOT_INO, b"ours").unwrap().ino;
        home.vol.setattr(ino, SetAttr { size: Some(0), ..Default::default() }).unwrap();
        common::write_file(&home.vol, "ours", 0, b"home's bytes");
        push(&node.vol, &remote, "node", &|_| {}).unwrap();
        if !fork_base {
            for s in common::fork_bases(&home.vol, "main") {
                home.vol.snapshot_delete(&s).unwrap();
            }
        }
        let req = MergeRequest { branch: "node".into(), confirm: true, prefetch: true, ..Default::default() };
        let rec = merge(&home.vol, &remote, &req, None).unwrap();
        assert_eq!(rec.base_snapshot.is_some(), fork_base);
        assert!(rec.conflicts.is_empty(), "fork base {fork_base}: no conflict: {:?}", rec.conflicts);
        for (name, want) in [("mode", "tiny one"), ("theirs", "the branch's bytes"), ("ours", "home's bytes")] {
            let got = common::read(&home.vol, name).unwrap_or_else(|e| panic!("fork base {fork_base}: read {name}: {e}; {rec:?}"));
            assert_eq!(String::from_utf8_lossy(&got), want, "fork base {fork_base}: {name}");
        }
        for name in ["mode", "ours"] {
            assert_eq!(home.vol.lookup(ROOT_INO, name.as_bytes()).unwrap().perm & 0o777, 0o600, "fork base {fork_base}: the branch's mode of {name}");
        }
        drop(node.meta);
    }
}

/// Issue 10, "only metadata moves at merge time": a home volume whose block store stands in
/// front of its object store (as every home volume with a store opens: `open_blocks`) merges
/// a branch without downloading its blocks. The merged tree references them in the store;
/// fsck counts them as remote-only (clean); the collector leaves them alone (it removes only
/// the volume's own block files); the first read fetches each one and verifies it against its
/// hash (invariant 5: a corrupt copy in the store is an error, never wrong bytes, and is not
/// kept); the next push of `main` uploads only home's own new block, none of the branch's.
/// Invariant 6: every change of both sides is in the result.
#[test]
fn a_home_volume_references_the_branch_s_blocks_and_fetches_them_on_first_read() {
    use hybridfs_cloud::{Corruption, FaultPlan, Faulty};
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(Faulty::new(MemStore::new(), plan.clone()));
    let remote = Remote::new(store.clone(), "vol");
    let meta = Arc::new(MetaStore::memory());
    Volume::format(&meta, 0, 0).unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store.clone(), "vol"), meta.clone(), None).unwrap());
    let opts = VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    let home = Volume::open(meta, lazy.clone(), opts).unwrap();
    common::write_file(&home, "shared", 0, &noise(1, 300_000));
    common::write_file(&home, "kept", 0, &noise(2, 50_000));
    push(&home, &remote, "main", &|_| {}).unwrap();

    // The branch: a big file (a block of its own in the store), a small one (in a pack), and
    // a rewrite of a home file. Home writes a file of its own.
    let node = clone_node(store.clone(), "node");
    let (big, small, shared) = (noise(11, 1_500_000), noise(12, 40_000), noise(13, 300_000));
    common::write_file(&node.vol, "big", 0, &big);
    common::write_file(&node.vol, "small", 0, &small);
    common::write_file(&node.vol, "shared", 0, &shared);
    push(&node.vol, &remote, "node", &|_| {}).unwrap();
    let mine = noise(21, 100_000);
    common::write_file(&home, "mine", 0, &mine);

    let own_blocks = |v: &Volume| {
        let mut ids = std::collections::BTreeSet::new();
        v.blocks().for_each(&mut |id| {
            ids.insert(id);
        })
        .unwrap();
        ids
    };
    let req = MergeRequest { branch: "node".into(), ..Default::default() };
    let rec = merge(&home, &remote, &req, None).unwrap();
    assert!(rec.applied && rec.conflicts.is_empty(), "{rec:?}");
    assert_eq!(rec.blocks_fetched, 0, "only metadata moves at merge time: {rec:?}");
    assert!(rec.blocks_to_fetch >= 4 && rec.bytes_to_fetch >= 1_800_000, "the report says what the first reads fetch: {rec:?}");
    assert_eq!(lazy.fetched.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing was downloaded");
    let branch_blocks = own_blocks(&node.vol);
    assert!(own_blocks(&home).is_disjoint(&branch_blocks), "no block of the branch became a local file of home");

    let staging = hybridfs_core::staging::Staging::new(dir.path().join("staging")).unwrap();
    let fsck = |verify| hybridfs_core::fsck::check(home.meta(), home.blocks(), &staging, home.block_size(), verify).unwrap();
    let report = fsck(false);
    assert!(report.clean(), "fsck with remote-only blocks: {:?}", report.problems);
    assert_eq!(report.remote_only_blocks, rec.blocks_to_fetch, "{report:?}");
    assert!(report.notes.iter().any(|n| n.contains("only in the object store")), "{:?}", report.notes);
    let gc = home.collect(std::time::Duration::ZERO).unwrap();
    assert_eq!(gc.blocks_freed, 0, "the collector drops no block the merged tree references: {gc:?}");

    // Invariant 5: a corrupt copy in the store fails the read; nothing wrong is kept.
    plan.corrupt_reads("/packs/", Corruption::FlipByte);
    assert!(common::read(&home, "small").is_err(), "a corrupt pack range is never served");
    plan.corrupt_reads("/blocks/", Corruption::Truncate);
    assert!(common::read(&home, "big").is_err(), "a corrupt block object is never served");
    plan.heal();
    for (name, want) in [("big", &big), ("small", &small), ("shared", &shared), ("mine", &mine)] {
        let got = common::read(&home, name).unwrap_or_else(|e| panic!("read {name} after the merge: {e}"));
        assert!(got == *want, "invariant 6: {name} holds its merged bytes");
    }
    assert_eq!(common::read(&home, "kept").unwrap(), noise(2, 50_000));
    let fetched = lazy.fetched.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fetched >= rec.blocks_to_fetch, "the first reads fetched the branch's blocks: {fetched}");
    assert_eq!(fsck(true).remote_only_blocks, 0, "read once, they are in this node's cache");

    // The next push of main: the branch's blocks are in the store already.
    let keys = |p: &str| store.list(&format!("vol/{p}/")).unwrap();
    let (packs, blocks) = (keys("packs"), keys("blocks"));
    let puts = plan.puts_done();
    let pushed = push(&home, &remote, "main", &|_| {}).unwrap();
    assert_eq!(pushed.blocks_uploaded, 1, "only home's own new file goes up: {pushed:?}");
    let new_packs = keys("packs").into_iter().filter(|k| !packs.contains(k)).count();
    let new_blocks = keys("blocks").into_iter().filter(|k| !blocks.contains(k)).count();
    assert_eq!((new_packs, new_blocks), (1, 0), "one pack (home's small file), no block object: {pushed:?}");
    // That pack, the layer and the head.
    assert_eq!(plan.puts_done() - puts, 3, "{pushed:?}");
    drop(node.meta);
}
