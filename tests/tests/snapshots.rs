//! Snapshots (issue 3) through a real mount and the `hybridctl` CLI:
//!
//! - invariant 2 (a snapshot never changes): every file under `.snapshots/NAME` reads the
//!   bytes, modes, xattrs and link targets of snapshot time, whatever the live tree does
//!   afterwards (overwrite, truncate, append, rename, unlink, chmod, xattrs, writes through a
//!   handle opened before the snapshot), before and after a remount; the view is read-only
//!   (EROFS for every kind of change) and `.snapshots` is hidden from the root's listing;
//! - invariant 3 (O(changes)): `diff` lists exactly the changed paths with plausible byte
//!   ranges, reading fewer journal rows than there are untouched files;
//! - space: deleting a snapshot and running `gc --grace 0` frees exactly the blocks nothing
//!   else references (never one a snapshot or a live file still needs), the grace period is
//!   respected, and `fsck` stays clean;
//! - the CLI's refusals and exit codes (2 bad input, 1 refused), holds, the default volume;
//! - rollback: only unmounted; saves the present as `pre-rollback-<UTC stamp>` first, then the
//!   live tree equals the snapshot exactly; the saved state can be browsed and rolled back to.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::snap::{as_view, assert_same_tree, is_pre_rollback_name, read_tree, Node, Snapshot, Tree};
use hybridfs_tests::sys::{self, errno_of, SysResult};
use hybridfs_tests::{poll_until, TestVolume};

const MIB: usize = 1 << 20;
const INV2: &str = "invariant 2: a snapshot never changes after it is taken";
const INV3: &str = "invariant 3: diff costs O(changes), it never scans the volume";

fn open_rw(vol: &TestVolume, rel: &str) -> File {
    OpenOptions::new().read(true).write(true).open(vol.path(rel)).unwrap_or_else(|e| panic!("open {rel}: {e}"))
}

fn errno<T>(r: io::Result<T>) -> SysResult<T> {
    r.map_err(|e| errno_of(&e))
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, r: SysResult<T>) {
    match r {
        Err(e) if e == libc::EROFS => {}
        Err(e) => panic!("{INV2}: {what} in a snapshot must fail with EROFS, got errno {e}"),
        Ok(v) => panic!("{INV2}: {what} in a snapshot must fail with EROFS, but it succeeded ({v:?})"),
    }
}

/// Names `ls DIR` shows, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The file contents of a tree (regular files only).
fn file_contents(tree: &Tree) -> BTreeMap<String, Vec<u8>> {
    tree.0
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { data, .. } => Some((p.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

fn assert_same_contents(what: &str, actual: &BTreeMap<String, Vec<u8>>, expected: &BTreeMap<String, Vec<u8>>) {
    let a: Vec<&String> = actual.keys().collect();
    let e: Vec<&String> = expected.keys().collect();
    assert_eq!(a, e, "{what}: the set of files differs");
    for (path, want) in expected {
        assert_same_bytes(&format!("{what}: {path}"), &actual[path], want);
    }
}

fn splice(data: &mut Vec<u8>, at: usize, with: &[u8]) {
    if data.len() < at + with.len() {
        data.resize(at + with.len(), 0);
    }
    data[at..at + with.len()].copy_from_slice(with);
}

/// Snapshot list without `unique_bytes` (which legitimately changes as the live tree does).
fn catalogue(vol: &TestVolume) -> Vec<Snapshot> {
    let mut list: Vec<Snapshot> =
        vol.snap_list().into_iter().map(|s| Snapshot { unique_bytes: None, ..s }).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[test]
fn snapshot_never_changes_whatever_the_live_tree_does() {
    let mut vol = TestVolume::new();
    let files: Vec<(&str, u64, usize)> = vec![
        ("small/empty", 1, 0),
        ("small/one", 2, 1),
        ("small/inline", 3, 1000),
        ("small/full-inline", 4, 4096),
        ("small/append", 5, 300),
        ("small/rewrite", 6, 2000),
        ("small/unlinked-open", 7, 500),
        ("big/overwrite", 10, 3 * MIB + 17),
        ("big/truncate", 11, 5 * MIB),
        ("big/append", 12, 2 * MIB + 5),
        ("big/delete", 13, 4 * MIB),
        ("big/rename", 14, 3 * MIB),
        ("big/handle", 15, 2 * MIB),
        ("attrs/mode", 20, 10),
        ("attrs/xattr", 21, 100),
        ("dir/sub/deep", 22, 70_000),
    ];
    for (rel, seed, len) in &files {
        vol.put(rel, &pattern(*seed, *len));
    }
    fs::set_permissions(vol.path("attrs/mode"), Permissions::from_mode(0o640)).unwrap();
    sys::setxattr(&vol.path("attrs/xattr"), "user.k", b"old value", 0).unwrap();
    symlink("big/overwrite", vol.path("link")).unwrap();
    fs::create_dir(vol.path("emptydir")).unwrap();
    // A handle opened before the snapshot and written through after it.
    let handle = open_rw(&vol, "big/handle");
    let before = read_tree(vol.mountpoint());
    assert_eq!(file_contents(&before).len(), files.len(), "setup: the live tree has every file");

    let s1 = vol.snap_create("s1");
    assert_eq!(s1.name, "s1");
    assert!(s1.holds.is_empty(), "a new snapshot has no holds: {s1:?}");
    let total: u64 = files.iter().map(|f| f.2 as u64).sum();
    assert!(s1.files >= files.len() as u64, "snapshot files {} < {} regular files written", s1.files, files.len());
    assert!(
        s1.bytes >= total && s1.bytes <= total + MIB as u64,
        "snapshot bytes {} is not the logical size of the tree ({total} bytes of files)",
        s1.bytes
    );
    let snap1 = vol.snapshot_path("s1");
    assert_same_tree(&format!("{INV2}: .snapshots/s1 right after it was taken"), &read_tree(&snap1), &as_view(&before));

    // ---- change everything in the live tree -------------------------------------------------
    let mut model: BTreeMap<String, Vec<u8>> = files.iter().map(|(r, s, l)| (r.to_string(), pattern(*s, *l))).collect();
    {
        let f = open_rw(&vol, "big/overwrite");
        let (a, b) = (pattern(30, 65_536), pattern(31, 1000));
        f.write_all_at(&a, MIB as u64 + 100).unwrap();
        f.write_all_at(&b, 2 * MIB as u64 - 500).unwrap(); // across a block boundary
        f.sync_all().unwrap();
        let m = model.get_mut("big/overwrite").unwrap();
        splice(m, MIB + 100, &a);
        splice(m, 2 * MIB - 500, &b);
    }
    {
        let w = pattern(32, 4096);
        handle.write_all_at(&w, 12_345).unwrap();
        handle.sync_all().unwrap();
        splice(model.get_mut("big/handle").unwrap(), 12_345, &w);
    }
    open_rw(&vol, "big/truncate").set_len(MIB as u64 + 3).unwrap();
    model.get_mut("big/truncate").unwrap().truncate(MIB + 3);
    {
        let extra = pattern(33, MIB);
        let mut f = OpenOptions::new().append(true).open(vol.path("big/append")).unwrap();
        f.write_all(&extra).unwrap();
        f.sync_all().unwrap();
        model.get_mut("big/append").unwrap().extend_from_slice(&extra);
    }
    fs::remove_file(vol.path("big/delete")).unwrap();
    model.remove("big/delete");
    fs::create_dir(vol.path("moved")).unwrap();
    fs::rename(vol.path("big/rename"), vol.path("moved/renamed")).unwrap();
    let moved = model.remove("big/rename").unwrap();
    model.insert("moved/renamed".into(), moved);
    {
        let extra = pattern(34, 50);
        let mut f = OpenOptions::new().append(true).open(vol.path("small/append")).unwrap();
        f.write_all(&extra).unwrap();
        model.get_mut("small/append").unwrap().extend_from_slice(&extra);
    }
    fs::write(vol.path("small/rewrite"), pattern(35, 3000)).unwrap();
    model.insert("small/rewrite".into(), pattern(35, 3000));
    {
        let flipped: Vec<u8> = pattern(3, 1000)[10..20].iter().map(|b| !b).collect();
        open_rw(&vol, "small/inline").write_all_at(&flipped, 10).unwrap();
        splice(model.get_mut("small/inline").unwrap(), 10, &flipped);
    }
    {
        // Grows past the inline limit: converted to blocks in the live tree only.
        let mut f = OpenOptions::new().append(true).open(vol.path("small/full-inline")).unwrap();
        f.write_all(b"!").unwrap();
        model.get_mut("small/full-inline").unwrap().push(b'!');
    }
    fs::write(vol.path("small/empty"), b"not empty").unwrap();
    model.insert("small/empty".into(), b"not empty".to_vec());
    let unlinked_handle = File::open(vol.path("small/unlinked-open")).unwrap();
    fs::remove_file(vol.path("small/unlinked-open")).unwrap();
    model.remove("small/unlinked-open");
    fs::set_permissions(vol.path("attrs/mode"), Permissions::from_mode(0o600)).unwrap();
    sys::setxattr(&vol.path("attrs/xattr"), "user.k", b"new value", 0).unwrap();
    sys::setxattr(&vol.path("attrs/xattr"), "user.k2", b"added", 0).unwrap();
    fs::remove_file(vol.path("dir/sub/deep")).unwrap();
    fs::remove_dir(vol.path("dir/sub")).unwrap();
    model.remove("dir/sub/deep");
    fs::remove_file(vol.path("link")).unwrap();
    symlink("small/one", vol.path("link")).unwrap();
    fs::remove_dir(vol.path("emptydir")).unwrap();
    vol.put("new/big", &pattern(40, 2 * MIB + 1));
    vol.put("new/small", &pattern(41, 10));
    model.insert("new/big".into(), pattern(40, 2 * MIB + 1));
    model.insert("new/small".into(), pattern(41, 10));

    assert_same_tree(&format!("{INV2}: .snapshots/s1 after the live tree changed"), &read_tree(&snap1), &as_view(&before));
    let live = read_tree(vol.mountpoint());
    assert_same_contents("the live tree keeps every change made after the snapshot", &file_contents(&live), &model);
    match &live.0["attrs/mode"] {
        Node::File { mode, .. } => assert_eq!(*mode, 0o600, "live chmod"),
        other => panic!("attrs/mode is {other:?}"),
    }
    match &live.0["attrs/xattr"] {
        Node::File { xattrs, .. } => {
            assert_eq!(xattrs.get("user.k").map(Vec::as_slice), Some(&b"new value"[..]), "live xattr");
            assert_eq!(xattrs.get("user.k2").map(Vec::as_slice), Some(&b"added"[..]), "live xattr");
        }
        other => panic!("attrs/xattr is {other:?}"),
    }
    match &before.0["attrs/xattr"] {
        Node::File { xattrs, .. } => assert_eq!(xattrs.len(), 1, "setup: one xattr before the snapshot"),
        other => panic!("attrs/xattr is {other:?}"),
    }

    // ---- a second snapshot shows the live tree of its time ----------------------------------
    let s2 = vol.snap_create("s2");
    assert!(s2.epoch > s1.epoch, "epochs grow: s1 {} s2 {}", s1.epoch, s2.epoch);
    assert_ne!(s2.id, s1.id, "snapshot ids are never reused");
    assert_same_tree("s2 shows the live tree at the time it was taken", &read_tree(&vol.snapshot_path("s2")), &as_view(&live));
    assert_same_tree(&format!("{INV2}: s1 after s2 was taken"), &read_tree(&snap1), &as_view(&before));

    // ---- .snapshots: hidden from the root's listing, lists the snapshots --------------------
    let root = listing(vol.mountpoint());
    assert!(!root.contains(&".snapshots".to_string()), "readdir of the root must not list .snapshots: {root:?}");
    assert!(fs::metadata(vol.path(".snapshots")).unwrap().is_dir(), ".snapshots is a directory");
    assert_eq!(listing(&vol.path(".snapshots")), ["s1", "s2"], "ls MOUNTPOINT/.snapshots lists the snapshot names");

    // ---- the catalogue and the views survive a remount --------------------------------------
    let cat = catalogue(&vol);
    assert_eq!(cat.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["s1", "s2"]);
    drop(handle);
    drop(unlinked_handle);
    vol.remount();
    assert_eq!(catalogue(&vol), cat, "snapshot list (ids, epochs, sizes, holds) unchanged by a remount");
    assert_same_tree(&format!("{INV2}: s1 after a remount"), &read_tree(&snap1), &as_view(&before));
    assert_same_tree(&format!("{INV2}: s2 after a remount"), &read_tree(&vol.snapshot_path("s2")), &as_view(&live));
    assert_same_tree("the live tree after a remount", &read_tree(vol.mountpoint()), &live);
    vol.umount();
    vol.assert_fsck_clean("with two snapshots and a changed live tree");
}

#[test]
fn snapshot_view_is_read_only() {
    let vol = TestVolume::new();
    vol.put("f", &pattern(1, 5000));
    vol.put("big", &pattern(2, 2 * MIB));
    vol.put("dir/inner", &pattern(3, 10));
    fs::create_dir(vol.path("emptydir")).unwrap();
    sys::setxattr(&vol.path("f"), "user.k", b"v", 0).unwrap();
    symlink("f", vol.path("ln")).unwrap();
    vol.put("live-only", b"stays live");
    let before = read_tree(vol.mountpoint());
    vol.snap_create("s1");
    let snap = vol.snapshot_path("s1");
    let s = |rel: &str| snap.join(rel);

    assert_erofs("open O_WRONLY", errno(OpenOptions::new().write(true).open(s("f"))));
    assert_erofs("open O_RDWR", errno(OpenOptions::new().read(true).write(true).open(s("big"))));
    assert_erofs("open O_TRUNC", errno(OpenOptions::new().write(true).truncate(true).open(s("f"))));
    assert_erofs("open O_APPEND", errno(OpenOptions::new().append(true).open(s("f"))));
    assert_erofs("create a file", errno(File::create(s("new"))));
    assert_erofs("create a file in a subdirectory", errno(File::create(s("dir/new"))));
    assert_erofs("mkdir", errno(fs::create_dir(s("newdir"))));
    assert_erofs("unlink", errno(fs::remove_file(s("f"))));
    assert_erofs("unlink a symlink", errno(fs::remove_file(s("ln"))));
    assert_erofs("rmdir", errno(fs::remove_dir(s("emptydir"))));
    assert_erofs("rename inside the snapshot", errno(fs::rename(s("f"), s("g"))));
    assert_erofs("rename a live file into the snapshot", errno(fs::rename(vol.path("live-only"), s("moved-in"))));
    assert_erofs("rename out of the snapshot", errno(fs::rename(s("dir/inner"), vol.path("moved-out"))));
    assert_erofs("chmod", errno(fs::set_permissions(s("f"), Permissions::from_mode(0o777))));
    assert_erofs("chmod a directory", errno(fs::set_permissions(s("dir"), Permissions::from_mode(0o700))));
    assert_erofs("chown", errno(std::os::unix::fs::chown(s("f"), Some(1), Some(1))));
    let cpath = sys::cpath(&s("big"));
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::truncate(cpath.as_ptr(), 0) };
    assert_erofs("truncate", if r == 0 { Ok(()) } else { Err(sys::errno()) });
    assert_erofs("setxattr", sys::setxattr(&s("f"), "user.k", b"changed", 0));
    assert_erofs("setxattr (new name)", sys::setxattr(&s("f"), "user.other", b"x", 0));
    assert_erofs("removexattr", sys::removexattr(&s("f"), "user.k"));
    assert_erofs("utimensat", sys::utimensat(&s("f"), (1, 0), (1, 0), 0));
    assert_erofs("symlink", errno(symlink("f", s("ln2"))));
    assert_erofs("link inside the snapshot", errno(fs::hard_link(s("f"), s("f2"))));
    assert_erofs("link a live file into the snapshot", errno(fs::hard_link(vol.path("live-only"), s("f3"))));
    let fifo = sys::cpath(&s("fifo"));
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    assert_erofs("mkfifo", if r == 0 { Ok(()) } else { Err(sys::errno()) });
    // .snapshots itself cannot be changed either.
    let top = vol.path(".snapshots");
    assert_erofs("create a file in .snapshots", errno(File::create(top.join("x"))));
    assert_erofs("mkdir in .snapshots", errno(fs::create_dir(top.join("s9"))));
    assert_erofs("rmdir .snapshots/s1", errno(fs::remove_dir(top.join("s1"))));
    assert_erofs("rename .snapshots/s1", errno(fs::rename(top.join("s1"), top.join("s9"))));
    let missing = fs::metadata(top.join("no-such-snapshot")).map(drop);
    assert_eq!(errno(missing), Err(libc::ENOENT), ".snapshots/<unknown> does not exist");

    // Reading still works and nothing changed, in the snapshot or in the live tree.
    assert_same_tree(&format!("{INV2}: after refused changes"), &read_tree(&snap), &as_view(&before));
    assert_same_tree("the live tree after refused changes in the snapshot", &read_tree(vol.mountpoint()), &before);
    assert_eq!(vol.snap_names(), ["s1"], "refused changes created no snapshot");
    assert_eq!(listing(&vol.path(".snapshots")), ["s1"]);
}

/// Panics unless the union of `ranges` covers every `[start, end)` of `cover`.
fn assert_covers(what: &str, ranges: &[(u64, u64)], cover: &[(u64, u64)]) {
    for &(start, end) in cover {
        let mut pos = start;
        for _ in 0..=ranges.len() {
            if pos >= end {
                break;
            }
            match ranges.iter().find(|r| r.0 <= pos && pos < r.1) {
                Some(r) => pos = r.1,
                None => break,
            }
        }
        assert!(pos >= end, "{what}: ranges {ranges:?} do not cover the changed bytes [{start}, {end}) (gap at {pos})");
    }
}

/// Panics unless every range is well formed and lies inside one of `allowed`.
fn assert_within(what: &str, ranges: &[(u64, u64)], allowed: &[(u64, u64)]) {
    for r in ranges {
        assert!(r.0 < r.1, "{what}: empty or reversed range {r:?} in {ranges:?}");
        assert!(
            allowed.iter().any(|a| a.0 <= r.0 && r.1 <= a.1),
            "{what}: range {r:?} reaches bytes that did not change (allowed: the touched blocks {allowed:?}); \
             all ranges {ranges:?}"
        );
    }
}

#[test]
fn diff_lists_exactly_what_changed() {
    const BS: u64 = 64 << 10;
    const UNTOUCHED: usize = 1000;
    let mut vol = TestVolume::builder().block_size("64K").build();
    for i in 0..UNTOUCHED {
        fs::create_dir_all(vol.path(format!("untouched/d{}", i / 100))).unwrap();
        fs::write(vol.path(format!("untouched/d{}/f{i}", i / 100)), pattern(1000 + i as u64, 20)).unwrap();
    }
    vol.put("untouched/big", &pattern(2000, 300_000));
    vol.put("inline", &pattern(1, 100));
    vol.put("grow", &pattern(2, 50));
    vol.put("big", &pattern(3, 2 * MIB));
    vol.put("shrink", &pattern(4, MIB));
    vol.put("gone", &pattern(5, 3000));
    vol.put("gonebig", &pattern(6, 300_000));
    vol.put("moved", &pattern(7, 200_000));
    vol.put("chmod", &pattern(8, 10));
    vol.put("xattr", &pattern(9, 10));
    vol.put("d/keep", &pattern(10, 10));
    vol.put("olddir/x", &pattern(11, 10));
    fs::set_permissions(vol.path("chmod"), Permissions::from_mode(0o644)).unwrap();
    let s1 = vol.snap_create("s1");

    let flipped: Vec<u8> = pattern(1, 100)[10..20].iter().map(|b| !b).collect();
    open_rw(&vol, "inline").write_all_at(&flipped, 10).unwrap();
    OpenOptions::new().append(true).open(vol.path("grow")).unwrap().write_all(&pattern(12, 30)).unwrap();
    {
        let f = open_rw(&vol, "big");
        f.write_all_at(&[0x11; 100], 200_000).unwrap(); // block 3
        f.write_all_at(&[0x22; 10], 10 * BS + 5).unwrap(); // block 10
        f.sync_all().unwrap();
    }
    open_rw(&vol, "shrink").set_len(100_000).unwrap();
    fs::remove_file(vol.path("gone")).unwrap();
    fs::remove_file(vol.path("gonebig")).unwrap();
    fs::rename(vol.path("moved"), vol.path("d/moved2")).unwrap();
    fs::set_permissions(vol.path("chmod"), Permissions::from_mode(0o600)).unwrap();
    sys::setxattr(&vol.path("xattr"), "user.k", b"v", 0).unwrap();
    vol.put("d/new", &pattern(13, 5000));
    vol.put("newdir/inner", &pattern(14, 10));
    symlink("big", vol.path("ln")).unwrap();
    fs::remove_file(vol.path("olddir/x")).unwrap();
    fs::remove_dir(vol.path("olddir")).unwrap();

    let expected: BTreeSet<(&str, &str)> = [
        ("modified", "/inline"),
        ("modified", "/grow"),
        ("modified", "/big"),
        ("modified", "/shrink"),
        ("deleted", "/gone"),
        ("deleted", "/gonebig"),
        ("renamed", "/d/moved2"),
        ("modified", "/chmod"),
        ("modified", "/xattr"),
        ("added", "/d/new"),
        ("added", "/newdir"),
        ("added", "/newdir/inner"),
        ("added", "/ln"),
        ("deleted", "/olddir"),
        ("deleted", "/olddir/x"),
    ]
    .into_iter()
    .collect();

    let d1 = vol.diff("s1", None);
    let got: BTreeSet<(String, String)> = d1.changes().into_iter().collect();
    let want: BTreeSet<(String, String)> = expected.iter().map(|(c, p)| (c.to_string(), p.to_string())).collect();
    assert_eq!(
        got,
        want,
        "diff s1 (live) must list exactly the changed paths\n  missing: {:?}\n  extra: {:?}\n  entries: {:#?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>(),
        d1.entries
    );
    assert_eq!(d1.from_epoch, s1.epoch, "diff from_epoch is the snapshot's epoch");
    for e in &d1.entries {
        assert!(e.path.starts_with('/'), "diff paths start with '/': {e:?}");
        if let Some(fp) = &e.from_path {
            assert!(fp.starts_with('/'), "diff from_path starts with '/': {e:?}");
        }
    }
    let entry = |p: &str| d1.entry(p).unwrap_or_else(|| panic!("no diff entry for {p}"));
    let kinds = [
        ("/inline", "file"),
        ("/d/moved2", "file"),
        ("/newdir", "dir"),
        ("/newdir/inner", "file"),
        ("/ln", "symlink"),
        ("/olddir", "dir"),
        ("/olddir/x", "file"),
        ("/gone", "file"),
    ];
    for (p, k) in kinds {
        assert_eq!(entry(p).kind, k, "kind of {p}: {:?}", entry(p));
    }
    assert_eq!(entry("/d/moved2").from_path.as_deref(), Some("/moved"), "renamed entry names its old path");
    // Small inline files: exact byte ranges.
    assert_eq!(entry("/inline").ranges, [(10, 20)], "inline file: the exact bytes changed: {:?}", entry("/inline"));
    assert_eq!(entry("/grow").ranges, [(50, 80)], "inline file append: exactly the new bytes: {:?}", entry("/grow"));
    assert!(entry("/grow").attrs.contains(&"size".to_string()), "append changes the size: {:?}", entry("/grow"));
    // Big files: block-granular ranges covering the written bytes and nothing else.
    let big = entry("/big");
    assert_covers("/big", &big.ranges, &[(200_000, 200_100), (10 * BS + 5, 10 * BS + 15)]);
    assert_within("/big", &big.ranges, &[(3 * BS, 4 * BS), (10 * BS, 11 * BS)]);
    assert!(!big.attrs.contains(&"size".to_string()), "overwrites in place do not change the size: {big:?}");
    let shrink = entry("/shrink");
    assert_covers("/shrink", &shrink.ranges, &[(100_000, MIB as u64)]);
    assert_within("/shrink", &shrink.ranges, &[(BS, MIB as u64)]);
    assert!(shrink.attrs.contains(&"size".to_string()), "truncate changes the size: {shrink:?}");
    assert!(entry("/chmod").attrs.contains(&"mode".to_string()), "chmod: {:?}", entry("/chmod"));
    assert!(entry("/chmod").ranges.is_empty(), "chmod changes no bytes: {:?}", entry("/chmod"));
    assert!(entry("/xattr").attrs.contains(&"xattrs".to_string()), "setxattr: {:?}", entry("/xattr"));
    assert!(entry("/xattr").ranges.is_empty(), "setxattr changes no bytes: {:?}", entry("/xattr"));
    assert!(
        d1.journal_rows < UNTOUCHED as u64,
        "{INV3}: diff read {} journal rows for {} changes on a volume of {UNTOUCHED}+ untouched files",
        d1.journal_rows,
        expected.len()
    );

    // Between two snapshots: the same changes.
    let s2 = vol.snap_create("s2");
    let d12 = vol.diff("s1", Some("s2"));
    assert_eq!((d12.from_epoch, d12.to_epoch), (s1.epoch, Some(s2.epoch)), "diff s1 s2 epochs");
    let mut a = d1.entries.clone();
    let mut b = d12.entries.clone();
    a.sort();
    b.sort();
    assert_eq!(b, a, "diff s1 s2 must equal diff s1 (live) taken just before s2");

    // After s2: only the newer changes.
    OpenOptions::new().append(true).open(vol.path("d/keep")).unwrap().write_all(b"more").unwrap();
    fs::remove_file(vol.path("inline")).unwrap();
    let d2 = vol.diff("s2", None);
    assert_eq!(
        d2.changes(),
        [("deleted".to_string(), "/inline".to_string()), ("modified".to_string(), "/d/keep".to_string())]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "diff s2 (live) lists only what changed after s2: {:#?}",
        d2.entries
    );
    assert_eq!(d2.entry("/d/keep").unwrap().ranges, [(10, 14)], "inline append after s2");
    // s1 to s2 is still the same after further live changes.
    let mut b2 = vol.diff("s1", Some("s2")).entries;
    b2.sort();
    assert_eq!(b2, a, "{INV2}: diff between two snapshots does not change with the live tree");

    // Unknown names are bad input.
    vol.ctl(&["diff", "nosuch", "--volume", vol.name(), "--json"]).assert_code(2);
    vol.ctl(&["diff", "s1", "nosuch", "--volume", vol.name(), "--json"]).assert_code(2);
    vol.umount();
    // Unmounted, the same answer.
    let mut b3 = vol.diff("s1", Some("s2")).entries;
    b3.sort();
    assert_eq!(b3, a, "diff s1 s2 unmounted equals the mounted answer");
    vol.assert_fsck_clean("after diffs");
}

#[test]
fn deleted_snapshot_space_is_collected_only_when_unreferenced() {
    let mut vol = TestVolume::new();
    let keep = pattern(1, 3 * MIB);
    let (old, new) = (pattern(2, 4 * MIB), pattern(3, 4 * MIB));
    vol.put("keep", &keep);
    vol.put("churn", &old);
    vol.snap_create("s1");
    vol.snap_create("s2");
    let unique = |vol: &TestVolume| -> BTreeMap<String, u64> {
        vol.snap_list().into_iter().map(|s| (s.name, s.unique_bytes.unwrap())).collect()
    };
    for (name, u) in unique(&vol) {
        assert_eq!(u, 0, "{name}: while the live tree still references every block, unique_bytes is 0");
    }
    vol.put("churn", &new);
    vol.umount(); // seals the new data into blocks
    let n0 = vol.block_files().len();
    assert!(n0 >= 11, "3 MiB kept + 4 MiB old + 4 MiB new at 1 MiB blocks: at least 11 block files, found {n0}");
    vol.mount();
    for (name, u) in unique(&vol) {
        assert_eq!(u, 0, "{name}: s1 and s2 hold the same old blocks, so deleting one alone frees nothing");
    }

    let gc = vol.gc(0);
    assert_eq!(gc.blocks_freed, 0, "gc must not free blocks that snapshots reference: {gc:?}");
    assert_eq!(vol.block_files().len(), n0, "gc with every snapshot kept removed block files");

    vol.snap_delete("s1");
    let gc = vol.gc(0);
    assert_eq!(gc.blocks_freed, 0, "s2 still references the old blocks of s1: nothing may be freed: {gc:?}");
    assert_eq!(vol.block_files().len(), n0, "block files removed while s2 references them");
    assert_same_bytes(&format!("{INV2}: s2/churn after s1 was deleted and collected"), &fs::read(vol.snapshot_path("s2").join("churn")).unwrap(), &old);
    let u2 = unique(&vol)["s2"];
    assert!(u2 >= 4_000_000, "s2 alone keeps the old 4 MiB of churn: unique_bytes {u2}");

    vol.snap_delete("s2");
    let waiting = vol.gc(3600);
    assert_eq!(waiting.blocks_freed, 0, "--grace 3600 frees nothing just unreferenced: {waiting:?}");
    assert!(waiting.blocks_waiting >= 4, "the 4 old blocks wait for their grace period: {waiting:?}");
    assert_eq!(vol.block_files().len(), n0, "a block was deleted within its grace period");
    let gc = vol.gc(0);
    assert!(gc.blocks_freed >= 4, "after deleting every snapshot, gc --grace 0 frees the 4 old blocks: {gc:?}");
    assert!(gc.bytes_freed >= 4_000_000, "the old blocks held 4 MiB of incompressible data: {gc:?}");
    let n1 = vol.block_files().len();
    assert!(n1 <= n0, "gc added block files ({n0} -> {n1})");
    assert_eq!(n0 - n1, gc.blocks_freed as usize, "the blocks directory shrinks by blocks_freed ({n0} -> {n1}): {gc:?}");
    let again = vol.gc(0);
    assert_eq!((again.blocks_freed, again.blocks_waiting), (0, 0), "a second gc finds nothing: {again:?}");

    // Nothing the live tree references was freed.
    vol.remount();
    assert_same_bytes("live keep after gc", &fs::read(vol.path("keep")).unwrap(), &keep);
    assert_same_bytes("live churn after gc", &fs::read(vol.path("churn")).unwrap(), &new);
    assert!(vol.snap_names().is_empty(), "both snapshots are gone");
    let gone = fs::metadata(vol.snapshot_path("s2")).map(drop);
    assert_eq!(errno(gone), Err(libc::ENOENT), "a deleted snapshot is not shown under .snapshots");
    vol.umount();
    vol.assert_fsck_clean("after snapshots were deleted and collected");
    assert_eq!(vol.block_files().len(), n1, "umount and fsck keep the collected state");
}

#[test]
fn bad_names_and_unknown_snapshots_are_bad_input() {
    let mut vol = TestVolume::new();
    vol.put("f", b"data");
    let long_ok = "x".repeat(128);
    let too_long = "x".repeat(129);
    let bad: Vec<&str> = vec!["", ".hidden", "-dash", "a/b", "with space", "é", "tab\there", "a*b", &too_long];
    for mounted in [true, false] {
        let state = if mounted { "mounted" } else { "unmounted" };
        let p = if mounted { "m" } else { "u" };
        for name in &bad {
            let out = vol.snap_ctl(&["create", name, "--volume", vol.name()]);
            assert_eq!(out.code, Some(2), "({state}) invalid snapshot name {name:?} must be exit 2: {out}");
        }
        let ok1 = format!("{p}-{}", &long_ok[2..]);
        assert_eq!(ok1.len(), 128);
        let ok2 = format!("{p}.v1.2_rc:3-final");
        for name in [&ok1, &ok2] {
            vol.snap_ctl(&["create", name, "--volume", vol.name()]).assert_success();
            let out = vol.snap_ctl(&["create", name, "--volume", vol.name()]);
            assert_eq!(out.code, Some(2), "({state}) an existing name must be exit 2: {out}");
            assert!(vol.snap_show(name).is_some(), "({state}) {name} shown");
        }
        for args in [
            &["show", "nosuch", "--json"][..],
            &["delete", "nosuch"],
            &["hold", "nosuch", "--by", "me"],
            &["release", "nosuch", "--by", "me"],
        ] {
            let out = vol.snap_ctl(args);
            assert_eq!(out.code, Some(2), "({state}) unknown snapshot: snapshot {args:?} must be exit 2: {out}");
        }
        let out = vol.ctl(&["diff", "nosuch", "--volume", vol.name()]);
        assert_eq!(out.code, Some(2), "({state}) diff of an unknown snapshot: {out}");
        let out = vol.snap_ctl(&["release", &ok2, "--by", "nobody-holds-it"]);
        assert!(!out.success(), "({state}) release by a holder that does not hold it: {out}");
        let out = vol.ctl(&["gc", "--volume", vol.name(), "--grace", "soon"]);
        assert_eq!(out.code, Some(2), "({state}) gc --grace soon: {out}");
        if mounted {
            vol.umount();
        }
    }
    let out = vol.ctl(&["rollback", "nosuch", "--volume", vol.name()]);
    assert_eq!(out.code, Some(2), "rollback to an unknown snapshot: {out}");
    let mut want: Vec<String> = vec![
        format!("m-{}", &long_ok[2..]),
        "m.v1.2_rc:3-final".into(),
        format!("u-{}", &long_ok[2..]),
        "u.v1.2_rc:3-final".into(),
    ];
    want.sort();
    assert_eq!(vol.snap_names(), want, "only the valid names were created");
    vol.assert_fsck_clean("after refused snapshot commands");
    vol.mount();
    assert_eq!(listing(&vol.path(".snapshots")), want, ".snapshots lists them all");
    assert_eq!(fs::read(vol.snapshot_path("u.v1.2_rc:3-final").join("f")).unwrap(), b"data");
}

#[test]
fn volume_defaults_to_the_only_one() {
    let vol = TestVolume::new();
    vol.put("f", b"one");
    let out = vol.snap_ctl(&["create", "d1", "--json"]);
    out.assert_success();
    assert_eq!(vol.snap_names(), ["d1"], "create without --volume uses the only volume");
    let out = vol.snap_ctl(&["list", "--json"]);
    out.assert_success();
    assert!(out.stdout.contains("\"d1\""), "list without --volume lists the only volume's snapshots: {out}");

    vol.ctl(&["format", "other"]).assert_success();
    let out = vol.snap_ctl(&["create", "d2"]);
    assert!(!out.success(), "two volumes and none named main: --volume is required: {out}");
    vol.snap_ctl(&["create", "d2", "--volume", "other"]).assert_success();
    let out = vol.snap_ctl(&["list", "--volume", "other", "--json"]);
    out.assert_success();
    assert!(out.stdout.contains("\"d2\""), "d2 belongs to other: {out}");
    assert_eq!(vol.snap_names(), ["d1"], "the mounted volume did not get d2");
    let out = vol.snap_ctl(&["create", "d3", "--volume", "no-such-volume"]);
    assert!(!out.success(), "a missing volume: {out}");
}

#[test]
fn held_snapshots_cannot_be_deleted() {
    let mut vol = TestVolume::new();
    vol.put("f", &pattern(1, 100_000));
    vol.snap_create("s1");
    vol.snap_ctl(&["hold", "s1", "--by", "clone-A"]).assert_success();
    vol.snap_ctl(&["hold", "s1", "--by", "backup-B"]).assert_success();
    let mut holds = vol.snap_show("s1").unwrap().holds;
    holds.sort();
    assert_eq!(holds, ["backup-B", "clone-A"], "show lists the holders");
    let out = vol.snap_ctl(&["delete", "s1"]);
    assert_eq!(out.code, Some(1), "deleting a held snapshot is refused with exit 1: {out}");
    assert!(
        out.stderr.contains("clone-A") || out.stderr.contains("backup-B"),
        "the refusal names the holder on stderr: {out}"
    );
    assert!(vol.snap_show("s1").is_some(), "a refused delete leaves the snapshot");

    vol.remount();
    let mut holds = vol.snap_show("s1").unwrap().holds;
    holds.sort();
    assert_eq!(holds, ["backup-B", "clone-A"], "holds survive a remount");
    vol.snap_ctl(&["release", "s1", "--by", "clone-A"]).assert_success();
    let out = vol.snap_ctl(&["delete", "s1"]);
    assert_eq!(out.code, Some(1), "still held by backup-B: {out}");
    assert!(out.stderr.contains("backup-B"), "the refusal names the remaining holder backup-B: {out}");
    assert!(!out.stderr.contains("clone-A"), "clone-A released its hold and is not named: {out}");
    vol.snap_ctl(&["release", "s1", "--by", "backup-B"]).assert_success();
    assert!(vol.snap_show("s1").unwrap().holds.is_empty(), "no holds left");
    vol.snap_delete("s1");
    assert!(vol.snap_show("s1").is_none(), "deleted once released");
    let gone = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        fs::metadata(vol.snapshot_path("s1")).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
    });
    assert!(gone, ".snapshots/s1 disappears after the delete");
    vol.snap_ctl(&["hold", "s1", "--by", "late"]).assert_code(2);

    // Unmounted, the same rules.
    vol.umount();
    vol.snap_create("s2");
    vol.snap_ctl(&["hold", "s2", "--by", "admin"]).assert_success();
    let out = vol.snap_ctl(&["delete", "s2"]);
    assert_eq!(out.code, Some(1), "(unmounted) held: {out}");
    assert!(out.stderr.contains("admin"), "(unmounted) the refusal names the holder: {out}");
    vol.snap_ctl(&["release", "s2", "--by", "admin"]).assert_success();
    vol.snap_delete("s2");
    assert!(vol.snap_names().is_empty());
    vol.assert_fsck_clean("after holds, refused and accepted deletes");
}

/// A tree with every kind of thing a rollback must restore.
fn build_tree(vol: &TestVolume) {
    vol.put("big/a", &pattern(1, 3 * MIB + 11));
    vol.put("big/b", &pattern(2, 2 * MIB));
    vol.put("small/a", &pattern(3, 100));
    vol.put("small/b", &pattern(4, 4096));
    vol.put("deep/er/still/x", &pattern(5, 70_000));
    vol.put("hl/a", &pattern(6, 10));
    fs::hard_link(vol.path("hl/a"), vol.path("hl/b")).unwrap();
    symlink("big/a", vol.path("ln")).unwrap();
    fs::set_permissions(vol.path("small/a"), Permissions::from_mode(0o600)).unwrap();
    sys::setxattr(&vol.path("small/b"), "user.k", b"v1", 0).unwrap();
    fs::create_dir(vol.path("empty")).unwrap();
}

/// Changes every part of [`build_tree`]'s tree.
fn change_tree(vol: &TestVolume) {
    let f = open_rw(vol, "big/a");
    f.write_all_at(&pattern(10, 100_000), MIB as u64 - 10).unwrap();
    f.sync_all().unwrap();
    open_rw(vol, "big/b").set_len(1000).unwrap();
    vol.put("small/a", &pattern(11, 200));
    fs::set_permissions(vol.path("small/a"), Permissions::from_mode(0o644)).unwrap();
    sys::setxattr(&vol.path("small/b"), "user.k", b"v2", 0).unwrap();
    sys::setxattr(&vol.path("small/b"), "user.new", b"n", 0).unwrap();
    fs::remove_file(vol.path("deep/er/still/x")).unwrap();
    fs::remove_dir(vol.path("deep/er/still")).unwrap();
    fs::remove_file(vol.path("hl/b")).unwrap();
    fs::remove_file(vol.path("ln")).unwrap();
    symlink("elsewhere", vol.path("ln")).unwrap();
    fs::rename(vol.path("empty"), vol.path("renamed-empty")).unwrap();
    vol.put("added/big", &pattern(12, 2 * MIB + 3));
    vol.put("added/small", &pattern(13, 7));
}

#[test]
fn rollback_restores_the_snapshot_and_saves_the_present() {
    let mut vol = TestVolume::new();
    build_tree(&vol);
    let t1 = read_tree(vol.mountpoint());
    let s1 = vol.snap_create("s1");
    change_tree(&vol);
    let t2 = read_tree(vol.mountpoint());
    assert_ne!(t1, t2, "setup: the tree changed");

    let out = vol.ctl(&["rollback", "s1", "--volume", vol.name(), "--json"]);
    assert_eq!(out.code, Some(1), "rollback of a mounted volume is refused with exit 1: {out}");
    assert!(out.all_output().to_lowercase().contains("mounted"), "the refusal says the volume is mounted: {out}");
    assert_eq!(vol.snap_names(), ["s1"], "a refused rollback saves nothing");
    assert_same_tree("the live tree after a refused rollback", &read_tree(vol.mountpoint()), &t2);

    vol.umount();
    let rb = vol.rollback("s1");
    assert_eq!(rb.target.name, "s1");
    assert_eq!(rb.target.epoch, s1.epoch, "rollback target is s1");
    assert!(is_pre_rollback_name(&rb.saved_as.name), "saved as pre-rollback-<UTC stamp>: {:?}", rb.saved_as.name);
    assert!(rb.saved_as.epoch > s1.epoch, "the saved state is newer than s1");
    assert!(rb.records_restored > 0, "a rollback over changes restores records: {rb:?}");
    let mut want = vec!["s1".to_string(), rb.saved_as.name.clone()];
    want.sort();
    assert_eq!(vol.snap_names(), want, "after rollback: s1 and the saved state");
    vol.assert_fsck_clean("after a rollback");

    vol.mount();
    assert_same_tree("after rollback, the live tree equals s1", &read_tree(vol.mountpoint()), &t1);
    assert_same_tree(&format!("{INV2}: s1 after a rollback"), &read_tree(&vol.snapshot_path("s1")), &as_view(&t1));
    let saved = vol.snapshot_path(&rb.saved_as.name);
    assert_same_tree("the pre-rollback snapshot holds the tree from before the rollback", &read_tree(&saved), &as_view(&t2));

    // The rolled-back tree is writable, and new inodes do not collide with restored ones.
    let inos: BTreeSet<u64> =
        t1.0.keys().map(|p| fs::symlink_metadata(vol.path(p)).unwrap().ino()).collect();
    vol.put("after/one", &pattern(20, 5000));
    vol.put("after/two", &pattern(21, 2 * MIB));
    for p in ["after", "after/one", "after/two"] {
        let ino = fs::metadata(vol.path(p)).unwrap().ino();
        assert!(!inos.contains(&ino), "new {p} got inode {ino}, already used by a restored file");
    }
    let f = open_rw(&vol, "big/a");
    f.write_all_at(b"written after rollback", 5).unwrap();
    f.sync_all().unwrap();
    drop(f);
    vol.remount();
    assert_same_bytes("after/one", &fs::read(vol.path("after/one")).unwrap(), &pattern(20, 5000));
    assert_same_bytes("after/two", &fs::read(vol.path("after/two")).unwrap(), &pattern(21, 2 * MIB));
    assert_same_bytes("hl/b", &fs::read(vol.path("hl/b")).unwrap(), &pattern(6, 10));
    assert_eq!(fs::metadata(vol.path("hl/a")).unwrap().nlink(), 2, "hard link count restored");
    assert_same_tree(&format!("{INV2}: pre-rollback snapshot after new writes"), &read_tree(&saved), &as_view(&t2));

    // Undo: roll back to the saved state.
    vol.umount();
    vol.assert_fsck_clean("after writes on the rolled-back tree");
    let undo = vol.rollback(&rb.saved_as.name);
    assert!(is_pre_rollback_name(&undo.saved_as.name), "{:?}", undo.saved_as.name);
    assert_ne!(undo.saved_as.name, rb.saved_as.name, "a second pre-rollback snapshot gets its own name");
    assert_eq!(vol.snap_names().len(), 3, "s1 and two pre-rollback snapshots: {:?}", vol.snap_names());
    vol.mount();
    assert_same_tree("rolling back to the pre-rollback snapshot undoes the rollback", &read_tree(vol.mountpoint()), &t2);
    assert_same_tree(&format!("{INV2}: s1 after two rollbacks"), &read_tree(&vol.snapshot_path("s1")), &as_view(&t1));
    vol.umount();
    vol.assert_fsck_clean("after undoing a rollback");
}
