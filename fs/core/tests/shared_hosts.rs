//! Two hosts of a shared volume (issue 15) over one in-memory engine: each a [`Volume`] with
//! its own staging and `shared: true`, both on one key-value store and one block store (the
//! object store every host reads through). The real database and two mounts are in
//! tests/tests/multihost.rs; here each step runs in a chosen order.
//!
//! Invariants touched: 1 (a change is one transaction: a batch whose reads went stale writes
//! nothing), 4 (a block's reference count is the number of extent versions naming it: fsck),
//! and copy-on-write: a truncate on one host is never undone by another host's stale cache.

use hybridfs_core::blockstore::MemBlockStore;
use hybridfs_core::fsck;
use hybridfs_core::kv::MemKv;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::staging::Staging;
use hybridfs_core::types::{Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, FsError, NewNode, RenameFlags, SetAttr, Volume, VolumeOptions, XattrMode};
use std::sync::Arc;

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const BS: u64 = 64 << 10;

struct Hosts {
    a: Arc<Volume>,
    b: Arc<Volume>,
    meta: Arc<MetaStore>,
    blocks: Arc<MemBlockStore>,
    dir: tempfile::TempDir,
}

fn hosts() -> Hosts {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(MemKv::default());
    let meta = Arc::new(MetaStore::new(kv.clone()).unwrap());
    let blocks = Arc::new(MemBlockStore::default());
    Volume::format(&*meta, 0, 0).unwrap();
    let host = |name: &str| {
        let opts = VolumeOptions { block_size: BS as u32, staging_dir: dir.path().join(name), shared: true, ..Default::default() };
        Volume::open(Arc::new(MetaStore::new(kv.clone()).unwrap()), blocks.clone(), opts).unwrap()
    };
    let (a, b) = (host("a"), host("b"));
    Hosts { a, b, meta, blocks, dir }
}

impl Hosts {
    /// A new file `name` in the root, open for writing on host A.
    fn open_new_on_a(&self, name: &str) -> (Ino, hybridfs_core::Opened) {
        let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
        let ino = self.a.create_node(ROOT_INO, name.as_bytes(), new, ROOT).unwrap().ino;
        (ino, self.a.open_file(ino, true).unwrap())
    }

    fn fsck_clean(&self) {
        // Host A's staging: the files it wrote are its.
        let staging = Staging::new(self.dir.path().join("a")).unwrap();
        let r = fsck::check(&*self.meta, &*self.blocks, &staging, BS, true).unwrap();
        assert!(r.clean(), "fsck: {:?}", r.problems);
    }
}

fn node(kind: Kind) -> NewNode {
    NewNode { kind, perm: 0o755, rdev: 0, target: vec![] }
}

fn mkdir(v: &Volume, parent: Ino, name: &str) -> Ino {
    v.create_node(parent, name.as_bytes(), node(Kind::Dir), ROOT).unwrap().ino
}

#[test]
fn a_directory_moved_under_another_hosts_moved_directory_is_refused() {
    let h = hosts();
    let a = mkdir(&h.a, ROOT_INO, "a");
    let b = mkdir(&h.a, ROOT_INO, "b");
    let inner = mkdir(&h.a, a, "inner");
    // Host B moves b under a/inner; host A, whose kernel saw a and b side by side, moves a
    // under b: that would be a cycle cut off from the root.
    h.b.rename(ROOT_INO, b"b", inner, b"b", RenameFlags::default()).unwrap();
    let r = h.a.rename(ROOT_INO, b"a", b, b"a", RenameFlags::default());
    assert!(matches!(r, Err(FsError::Invalid(_))), "moving a directory under its own descendant: {r:?}");
    mkdir(&h.b, b, "y");
    let r = h.a.rename(ROOT_INO, b"a", b, b"y", RenameFlags { exchange: true, noreplace: false });
    assert!(matches!(r, Err(FsError::Invalid(_))), "an exchange that moves a under its descendant: {r:?}");
    // A move beside, not under, still goes.
    let c = mkdir(&h.b, ROOT_INO, "c");
    h.a.rename(ROOT_INO, b"a", c, b"a", RenameFlags::default()).unwrap();
    assert_eq!(h.meta.get_inode(a).unwrap().unwrap().parent, c);
    h.fsck_clean();
}

#[test]
fn a_rename_and_chown_of_a_file_open_on_this_host_keep_another_hosts_chmod() {
    let h = hosts();
    let (ino, opened) = h.open_new_on_a("f");
    h.a.write(ino, 0, b"hello").unwrap();
    h.b.setattr(ino, SetAttr { perm: Some(0o600), ..Default::default() }).unwrap();
    h.a.rename(ROOT_INO, b"f", ROOT_INO, b"g", RenameFlags::default()).unwrap();
    let answered = h.a.setattr(ino, SetAttr { uid: Some(7), ..Default::default() }).unwrap();
    let stored = h.meta.get_inode(ino).unwrap().unwrap();
    assert_eq!((stored.perm, stored.uid, stored.name.as_slice(), stored.size), (0o600, 7, &b"g"[..], 5), "host A wrote its whole cached record");
    assert_eq!((answered.perm, answered.uid), (0o600, 7), "host A's answer misses host B's chmod");
    h.a.release_file(ino, opened.kind).unwrap();
    h.fsck_clean();
}

#[test]
fn a_truncate_on_another_host_never_brings_back_bytes_from_before_it() {
    let h = hosts();
    let (ino, opened) = h.open_new_on_a("f");
    h.a.write(ino, 0, &vec![b'x'; 3 * BS as usize]).unwrap();
    // A snapshot seals host A's staged blocks: its extent cache says sealed.
    h.a.snapshot_create("s1").unwrap();
    // Host B truncates the file to nothing and extends it again: three blocks of holes.
    h.b.setattr(ino, SetAttr { size: Some(0), ..Default::default() }).unwrap();
    h.b.setattr(ino, SetAttr { size: Some(3 * BS), ..Default::default() }).unwrap();
    // Host A writes into the middle of block 1, which it has cached as sealed with x's.
    h.a.write(ino, BS + 5, b"new").unwrap();
    let mut want = vec![0u8; 3 * BS as usize];
    want[BS as usize + 5..BS as usize + 8].copy_from_slice(b"new");
    let got = h.a.read(ino, 0, 3 * BS as u32).unwrap();
    assert!(got == want, "copy-on-write: host A's write brought back bytes from before host B's truncate");
    h.a.release_file(ino, opened.kind).unwrap();
    // Sealed into the shared block store, host B reads what host A wrote on the truncated file.
    h.a.snapshot_create("s2").unwrap();
    let on_b = h.b.open_file(ino, false).unwrap();
    let got = h.b.read(ino, 0, 3 * BS as u32).unwrap();
    h.b.release_file(ino, on_b.kind).unwrap();
    assert!(got == want, "host B reads bytes from before its truncate");
    // The snapshot still has the x's (its versions keep their block references).
    h.fsck_clean();
}

/// A [`MemKv`] that counts the reads made outside transactions (each a round trip on
/// PostgreSQL) and can run a step of another host's once, right after a `get_many`.
#[derive(Default)]
struct Watched {
    kv: MemKv,
    gets: std::sync::atomic::AtomicU64,
    get_manys: std::sync::atomic::AtomicU64,
    transacts: std::sync::atomic::AtomicU64,
    after_get_many: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    after_heads: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl hybridfs_core::kv::KvRead for Watched {
    fn get(&self, cf: hybridfs_core::kv::Cf, key: &[u8]) -> hybridfs_core::Result<Option<Vec<u8>>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.kv.get(cf, key)
    }
    fn get_many(&self, keys: &[(hybridfs_core::kv::Cf, &[u8])]) -> hybridfs_core::Result<Vec<Option<Vec<u8>>>> {
        self.get_manys.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = self.kv.get_many(keys);
        let step = self.after_get_many.lock().take();
        if let Some(step) = step {
            step();
        }
        out
    }
    fn heads(&self, ranges: &[hybridfs_core::kv::Head<'_>]) -> hybridfs_core::Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        let out = self.kv.heads(ranges);
        let step = self.after_heads.lock().take();
        if let Some(step) = step {
            step();
        }
        out
    }
    fn scan(&self, cf: hybridfs_core::kv::Cf, start: &[u8], end: Option<&[u8]>, f: &mut hybridfs_core::kv::Visit<'_>) -> hybridfs_core::Result<()> {
        self.kv.scan(cf, start, end, f)
    }
    fn last_before(&self, cf: hybridfs_core::kv::Cf, end: Option<&[u8]>) -> hybridfs_core::Result<Option<Vec<u8>>> {
        self.kv.last_before(cf, end)
    }
}

impl hybridfs_core::kv::Kv for Watched {
    fn transact(&self, sync: bool, body: &mut hybridfs_core::kv::TxnBody<'_>) -> hybridfs_core::Result<()> {
        self.transacts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.kv.transact(sync, body)
    }
    fn sync(&self) -> hybridfs_core::Result<()> {
        self.kv.sync()
    }
}

fn watched_hosts() -> (Arc<Watched>, Arc<Volume>, Arc<Volume>, tempfile::TempDir) {
    watched_hosts_with(VolumeOptions::default())
}

/// [`watched_hosts`] with `base` options (shared, block size and staging dirs set here).
fn watched_hosts_with(base: VolumeOptions) -> (Arc<Watched>, Arc<Volume>, Arc<Volume>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(Watched::default());
    let blocks = Arc::new(MemBlockStore::default());
    Volume::format(&MetaStore::new(kv.clone()).unwrap(), 0, 0).unwrap();
    let host = |name: &str| {
        let opts = VolumeOptions {
            block_size: BS as u32,
            staging_dir: dir.path().join(name),
            shared: true,
            ..clone_opts(&base)
        };
        Volume::open(Arc::new(MetaStore::new(kv.clone()).unwrap()), blocks.clone(), opts).unwrap()
    };
    let (a, b) = (host("a"), host("b"));
    (kv, a, b, dir)
}

#[test]
fn a_create_unlink_and_rename_read_their_directories_and_names_in_one_round_trip() {
    use std::sync::atomic::Ordering::SeqCst;
    let (kv, a, _b, _dir) = watched_hosts();
    let d = mkdir(&a, ROOT_INO, "d");
    let file = || NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    a.create_node(d, b"first", file(), ROOT).unwrap(); // takes this directory's inode range
    let reads = || (kv.gets.load(SeqCst), kv.get_manys.load(SeqCst));
    let before = reads();
    a.create_node(d, b"f", file(), ROOT).unwrap();
    assert_eq!(reads(), (before.0, before.1 + 1), "a create reads the directory and the name in one get_many, nothing one by one");
    let before = reads();
    a.rename(d, b"f", ROOT_INO, b"g", RenameFlags::default()).unwrap();
    assert_eq!(reads().1, before.1 + 1, "a rename reads both directories and both names at once");
    assert!(reads().0 - before.0 <= 1, "and one by one at most the moved inode's record ({:?} -> {:?})", before, reads());
    let before = reads();
    assert!(a.lookup(d, b"h").is_err());
    a.unlink(ROOT_INO, b"g").unwrap();
    assert!(reads().1 <= before.1 + 1, "an unlink reads the directory and the name at once, if at all");
}

#[test]
fn a_create_takes_what_the_kernels_getattr_and_lookup_just_read_instead_of_reading_it_again() {
    // Before a create the kernel asks for the directory's attributes and looks the name up;
    // the create's transaction takes both answers (volume/recent.rs): no read of its own.
    use std::sync::atomic::Ordering::SeqCst;
    let (kv, a, b, dir) = watched_hosts();
    let d = mkdir(&b, ROOT_INO, "d");
    let file = || NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    b.create_node(d, b"first", file(), ROOT).unwrap(); // host B takes this directory's inode range
    let reads = || (kv.gets.load(SeqCst), kv.get_manys.load(SeqCst));
    for name in ["f1", "f2", "f3"] {
        a.getattr(d).unwrap();
        assert!(matches!(a.lookup(d, name.as_bytes()), Err(FsError::NotFound)));
        let before = reads();
        a.create_node(d, name.as_bytes(), file(), ROOT).unwrap();
        assert_eq!(reads(), before, "the create of {name} read what the getattr and lookup had just read");
    }
    // A directory record this host committed answers the kernel's getattr a moment later;
    // another host's change, once told (its notification), is read from the store.
    b.setattr(d, SetAttr { perm: Some(0o700), ..Default::default() }).unwrap();
    a.changed_elsewhere(d);
    assert_eq!(a.getattr(d).unwrap().perm & 0o777, 0o700);
    fsck_clean_a(&a, &dir);
}

#[test]
fn a_stale_kept_answer_fails_the_commit_and_the_change_runs_again_from_the_store() {
    // Invariant 1 (a batch whose reads went stale writes nothing): host A keeps what it read
    // and committed; host B changes it behind A's back, untold; A's next changes take the
    // stale answers, their commits find them stale, and they run again from the store: B's
    // file makes A's create fail with EEXIST, and B's chmod of the directory survives A's
    // create in it (A's stale record of the directory is never written back).
    let (_kv, a, b, dir) = watched_hosts();
    let d = mkdir(&a, ROOT_INO, "d");
    let file = |perm| NewNode { kind: Kind::File, perm, rdev: 0, target: vec![] };
    a.create_node(d, b"first", file(0o644), ROOT).unwrap(); // A committed d's record
    assert!(matches!(a.lookup(d, b"x"), Err(FsError::NotFound))); // A keeps "no x"
    b.create_node(d, b"x", file(0o600), ROOT).unwrap();
    b.setattr(d, SetAttr { perm: Some(0o711), ..Default::default() }).unwrap();
    let r = a.create_node(d, b"x", file(0o644), ROOT);
    assert!(matches!(r, Err(FsError::Exists)), "two hosts created one name: {r:?}");
    assert_eq!(a.lookup(d, b"x").unwrap().perm & 0o777, 0o600, "host B's file is the one");
    a.create_node(d, b"y", file(0o644), ROOT).unwrap();
    a.changed_elsewhere(d);
    let attr = a.getattr(d).unwrap();
    assert_eq!(attr.perm & 0o777, 0o711, "B's chmod survived A's creates");
    let names: Vec<_> = a.readdir(d, 0, 100).unwrap().into_iter().map(|e| e.name).filter(|n| !n.starts_with(b".")).collect();
    assert_eq!(names, [&b"first"[..], b"x", b"y"], "one entry each");
    fsck_clean_a(&a, &dir);
}

#[test]
fn an_rmdir_purges_the_directory_in_its_own_transaction_and_a_removed_working_directory_keeps_its_last_record() {
    // One transaction for an rmdir on a shared volume (it was two: an orphan, then its purge
    // at the kernel's FORGET); the kernel's questions about a removed working directory (no
    // handle) are answered from its last record until that FORGET.
    use std::sync::atomic::Ordering::SeqCst;
    let (kv, a, b, dir) = watched_hosts();
    let d = mkdir(&a, ROOT_INO, "d");
    a.remember(d); // the kernel's reference (its lookup)
    a.setxattr(d, b"user.tag", b"v", XattrMode::Any).unwrap();
    let before = kv.transacts.load(SeqCst);
    a.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(kv.transacts.load(SeqCst), before + 1, "one transaction");
    assert!(a.meta().get_inode(d).unwrap().is_none(), "the record went with the entry");
    assert!(a.meta().xattr_names(d).unwrap().is_empty(), "its xattrs too");
    assert!(!a.meta().is_orphan(d).unwrap());
    let ghost = a.getattr(d).unwrap();
    assert_eq!((ghost.kind, ghost.nlink, ghost.ino), (Kind::Dir, 0, d), "a removed working directory's attributes");
    a.opendir(d).unwrap();
    let names: Vec<_> = a.readdir(d, 0, 100).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [&b"."[..], b".."], "nothing in it");
    a.releasedir(d);
    assert!(matches!(b.getattr(d), Err(FsError::NotFound)), "another host finds it gone");
    let before = kv.transacts.load(SeqCst);
    a.forget(d, 1);
    assert_eq!(kv.transacts.load(SeqCst), before, "its FORGET has nothing to write");
    assert!(matches!(a.getattr(d), Err(FsError::NotFound)), "and after its FORGET nothing is kept");
    fsck_clean_a(&a, &dir);
}

#[test]
fn a_directory_open_on_this_host_stays_an_orphan_until_its_forget() {
    let (_kv, a, _b, dir) = watched_hosts();
    let d = mkdir(&a, ROOT_INO, "d");
    a.remember(d);
    a.opendir(d).unwrap();
    a.rmdir(ROOT_INO, b"d").unwrap();
    let kept = a.meta().get_inode(d).unwrap().expect("an open directory is kept");
    assert_eq!(kept.nlink, 0);
    assert!(a.meta().is_orphan(d).unwrap());
    a.releasedir(d);
    a.forget(d, 1);
    assert!(a.meta().get_inode(d).unwrap().is_none(), "purged at its FORGET");
    assert!(!a.meta().is_orphan(d).unwrap());
    fsck_clean_a(&a, &dir);
}

#[test]
fn an_entry_another_host_adds_after_the_emptiness_check_fails_the_rmdir_with_enotempty() {
    // Invariant 1 (a batch whose reads went stale writes nothing): host A finds "d" empty;
    // host B then creates a file in it before A commits. A's commit finds d's record changed,
    // runs again, and answers ENOTEMPTY; B's file stays, reachable.
    let (kv, a, b, dir) = watched_hosts();
    let d = mkdir(&a, ROOT_INO, "d");
    a.lookup(ROOT_INO, b"d").unwrap(); // A keeps d's record, as after the kernel's lookup
    let b2 = b.clone();
    *kv.after_heads.lock() = Some(Box::new(move || {
        b2.create_node(d, b"late", NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] }, ROOT).unwrap();
    }));
    let r = a.rmdir(ROOT_INO, b"d");
    assert!(matches!(r, Err(FsError::NotEmpty)), "{r:?}");
    assert!(kv.after_heads.lock().is_none(), "B's create ran between A's check and its commit");
    assert_eq!(a.lookup(d, b"late").unwrap().kind, Kind::File);
    assert_eq!(a.getattr(d).unwrap().nlink, 2);
    fsck_clean_a(&a, &dir);
}

/// fsck of a [`watched_hosts`] volume, with host A's staging.
fn fsck_clean_a(a: &Volume, dir: &tempfile::TempDir) {
    let staging = Staging::new(dir.path().join("a")).unwrap();
    let r = fsck::check(a.meta(), a.blocks(), &staging, BS, true).unwrap();
    assert!(r.clean(), "fsck: {:?}", r.problems);
}

#[test]
fn a_name_another_host_creates_after_this_ones_read_ahead_makes_this_create_fail_with_eexist() {
    // Invariant 1: a batch whose reads went stale writes nothing. Host A reads the directory
    // and the name "x" (absent) ahead; host B then creates "x"; A's commit must see that
    // its read-ahead went stale, run again and answer EEXIST: one winner, one entry.
    let (kv, a, b, _dir) = watched_hosts();
    let file = || NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    let b2 = b.clone();
    *kv.after_get_many.lock() = Some(Box::new(move || {
        b2.create_node(ROOT_INO, b"x", NewNode { kind: Kind::File, perm: 0o600, rdev: 0, target: vec![] }, ROOT).unwrap();
    }));
    let r = a.create_node(ROOT_INO, b"x", file(), ROOT);
    assert!(matches!(r, Err(FsError::Exists)), "two hosts created one name: {r:?}");
    let names: Vec<_> = a.readdir(ROOT_INO, 0, 100).unwrap().into_iter().map(|e| e.name).filter(|n| n == b"x").collect();
    assert_eq!(names.len(), 1);
    assert_eq!(a.lookup(ROOT_INO, b"x").unwrap().perm & 0o777, 0o600, "host B's file is the one");
}

#[test]
fn new_files_of_two_directories_get_inode_numbers_far_apart() {
    // PostgreSQL's SERIALIZABLE locks what a read saw page by page: interleaved new inode
    // numbers of two processes' directories made their creates conflict.
    let h = hosts();
    let d1 = mkdir(&h.a, ROOT_INO, "d1");
    let d2 = mkdir(&h.a, ROOT_INO, "d2");
    assert_ne!(d1 % hybridfs_core::volume::INO_POOLS as u64, d2 % hybridfs_core::volume::INO_POOLS as u64);
    let file = |v: &Volume, d, n: &str| v.create_node(d, n.as_bytes(), node(Kind::File), ROOT).unwrap().ino;
    let (a1, b1, a2, b2) = (file(&h.a, d1, "a1"), file(&h.a, d2, "b1"), file(&h.a, d1, "a2"), file(&h.a, d2, "b2"));
    assert_eq!((a2, b2), (a1 + 1, b1 + 1), "one directory's new files: consecutive numbers");
    assert!(a1.abs_diff(b1) >= hybridfs_core::volume::INO_BATCH, "two directories' new files: numbers {a1} and {b1}");
    // Host B's files in d1 come from its own range, never one of host A's numbers.
    let c1 = file(&h.b, d1, "c1");
    assert!(![a1, a2, b1, b2].contains(&c1));
    h.fsck_clean();
}

/// The options of `o` that the tests here set (`VolumeOptions` holds a worker pool, so is
/// not `Clone`).
fn clone_opts(o: &VolumeOptions) -> VolumeOptions {
    VolumeOptions { host_lease: o.host_lease, closed_rows_gather: o.closed_rows_gather, ..Default::default() }
}

/// Hosts whose `open-rows` threads wait an hour: the test deletes closed rows itself.
fn hosts_deleting_closed_rows_by_hand() -> (Arc<Watched>, Arc<Volume>, Arc<Volume>, tempfile::TempDir) {
    watched_hosts_with(VolumeOptions { closed_rows_gather: Some(std::time::Duration::from_secs(3600)), ..Default::default() })
}

#[test]
fn a_create_and_close_is_one_transaction_and_closed_files_rows_go_together() {
    use std::sync::atomic::Ordering::SeqCst;
    let (kv, a, _b, _dir) = hosts_deleting_closed_rows_by_hand();
    let me = vec![a.host_id()];
    let file = || NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    let txns = || kv.transacts.load(SeqCst);
    a.create_node(ROOT_INO, b"first", file(), ROOT).unwrap(); // takes the directory's inode range
    let mut inos = Vec::new();
    for name in ["f1", "f2", "f3"] {
        let before = txns();
        let opened = a.create_open(ROOT_INO, name.as_bytes(), file(), ROOT, false).unwrap();
        let ino = opened.inode.ino;
        a.release_file(ino, opened.kind).unwrap();
        assert_eq!(txns(), before + 1, "a create and its close: one transaction (the create's, with its open row)");
        assert_eq!(a.meta().openers(ino).unwrap(), me, "the closed file's row waits for the next deletion");
        inos.push(ino);
    }
    // Opened again before its row went: the row stays, nothing is written.
    let before = txns();
    let again = a.open_file(inos[0], false).unwrap();
    assert_eq!(txns(), before, "a reopen of a file whose row is still stored writes nothing");
    assert_eq!(a.delete_closed_rows().unwrap(), 2, "the two files still closed");
    assert_eq!(txns(), before + 1, "their rows go in one transaction");
    assert_eq!(a.meta().openers(inos[0]).unwrap(), me, "the reopened file keeps its row");
    assert!(inos[1..].iter().all(|&i| a.meta().openers(i).unwrap().is_empty()));
    a.release_file(inos[0], again.kind).unwrap();
    assert_eq!(a.delete_closed_rows().unwrap(), 1);
    assert!(a.meta().openers(inos[0]).unwrap().is_empty());
    assert_eq!(a.delete_closed_rows().unwrap(), 0, "nothing closed since");
}

#[test]
fn a_file_another_host_unlinks_before_this_hosts_closed_row_goes_is_purged_when_it_goes() {
    // Unlink while open across hosts: host A closed the file but its open row is still
    // stored, so host B's unlink keeps the inode as an orphan (B cannot tell A's row from a
    // handle); when A's row goes, A purges it: nothing is left for a lease pass.
    let (_kv, a, b, _dir) = hosts_deleting_closed_rows_by_hand();
    let opened = a.create_open(ROOT_INO, b"f", NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] }, ROOT, false).unwrap();
    let ino = opened.inode.ino;
    a.write(ino, 0, b"bytes").unwrap();
    a.release_file(ino, opened.kind).unwrap();
    b.unlink(ROOT_INO, b"f").unwrap();
    let meta = a.meta();
    assert!(meta.get_inode(ino).unwrap().is_some_and(|i| i.nlink == 0), "B's unlink kept the inode A's row holds");
    assert!(meta.orphans().unwrap().contains(&ino));
    assert_eq!(a.delete_closed_rows().unwrap(), 1);
    assert!(meta.get_inode(ino).unwrap().is_none(), "the orphan stayed after the last row holding it went");
    assert!(!meta.orphans().unwrap().contains(&ino));
    assert!(meta.openers(ino).unwrap().is_empty());
}
