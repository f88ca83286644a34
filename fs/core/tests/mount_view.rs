//! The mount facade (`MountView`): routing between the live tree and `.snapshots/` views,
//! `EROFS` for changes to views, and kernel lookup counts (live inodes only), without FUSE.

use hybridfs_core::types::{Kind, ROOT_INO};
use hybridfs_core::{Fallocate, FsError, IoKind, KillPriv, MountView, NewNode, RenameFlags, SetAttr, XattrMode};

#[allow(dead_code)] // the shared fixture has more than this suite uses
mod common;
use common::{MemVolume, ROOT};

fn file() -> NewNode {
    NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] }
}

/// A volume with `/a` ("old") in snapshot `s1`, then `/a` rewritten to "new": the view, the
/// view's root and its `a`.
fn with_snapshot(f: &MemVolume) -> (MountView, u64, u64) {
    let view = MountView::new(f.vol.clone());
    let a = view.create(ROOT_INO, b"a", file(), ROOT, false).unwrap().inode.ino;
    view.write(a, 0, b"old", KillPriv::default()).unwrap();
    view.release(a, IoKind::Cached).unwrap();
    f.vol.snapshot_create("s1").unwrap();
    let opened = view.open(a, true).unwrap();
    view.write(a, 0, b"new", KillPriv::default()).unwrap();
    view.release(a, opened.kind).unwrap();
    let snaps = view.lookup(ROOT_INO, b".snapshots").unwrap().unwrap();
    let s1 = view.lookup(snaps.ino, b"s1").unwrap().unwrap();
    let old_a = view.lookup(s1.ino, b"a").unwrap().unwrap();
    (view, s1.ino, old_a.ino)
}

#[test]
fn reads_route_to_the_live_tree_or_the_snapshot_at_its_epoch() {
    let f = MemVolume::new(4096);
    let (view, s1, old_a) = with_snapshot(&f);
    let a = view.lookup(ROOT_INO, b"a").unwrap().unwrap().ino;
    assert_ne!(a, old_a, "a view inode has its own number");
    let opened = view.open(a, false).unwrap();
    assert_eq!(view.read(a, 0, 100).unwrap(), b"new");
    view.release(a, opened.kind).unwrap();
    assert_eq!(view.read(old_a, 0, 100).unwrap(), b"old");
    assert_eq!(view.getattr(old_a).unwrap().perm & 0o222, 0, "views are shown read-only");
    let names: Vec<_> = view.readdir(s1, 0, 100).unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&b"a".to_vec()), "{names:?}");
    let opened = view.open(old_a, false).unwrap();
    assert_eq!(opened.kind, IoKind::Cached);
    view.flush(old_a).unwrap();
    view.fsync(old_a).unwrap();
    view.release(old_a, opened.kind).unwrap();
}

#[test]
fn a_missing_live_name_may_be_cached_a_missing_view_name_may_not() {
    let f = MemVolume::new(4096);
    let (view, s1, _) = with_snapshot(&f);
    assert!(view.lookup(ROOT_INO, b"nothing").unwrap().is_none(), "live: a cacheable absence");
    assert!(matches!(view.lookup(s1, b"nothing"), Err(FsError::NotFound)), "view: not cached");
    let snaps = view.lookup(ROOT_INO, b".snapshots").unwrap().unwrap();
    assert!(matches!(view.lookup(snaps.ino, b"s2"), Err(FsError::NotFound)), "a snapshot may come any moment");
}

#[test]
fn every_change_to_a_view_is_read_only() {
    let f = MemVolume::new(4096);
    let (view, s1, old_a) = with_snapshot(&f);
    let live_a = view.lookup(ROOT_INO, b"a").unwrap().unwrap().ino;
    let ro = |r: Result<(), FsError>, what: &str| assert!(matches!(r, Err(FsError::ReadOnly)), "{what}: {r:?}");
    ro(view.create_node(s1, b"x", file(), ROOT).map(drop), "mknod in a view");
    ro(view.create(s1, b"x", file(), ROOT, false).map(drop), "create in a view");
    ro(view.open(old_a, true).map(drop), "open a view file for writing");
    ro(view.write(old_a, 0, b"x", KillPriv::default()).map(drop), "write");
    ro(view.setattr(old_a, SetAttr { size: Some(0), ..Default::default() }).map(drop), "truncate");
    ro(view.unlink(s1, b"a"), "unlink");
    ro(view.rmdir(s1, b"a"), "rmdir");
    ro(view.rename(s1, b"a", ROOT_INO, b"b", RenameFlags::default()), "rename out of a view");
    ro(view.rename(ROOT_INO, b"a", s1, b"b", RenameFlags::default()), "rename into a view");
    ro(view.link(old_a, ROOT_INO, b"b").map(drop), "link a view file");
    ro(view.link(live_a, s1, b"b").map(drop), "link into a view");
    ro(view.setxattr(old_a, b"user.x", b"1", XattrMode::Any), "setxattr");
    ro(view.removexattr(old_a, b"user.x"), "removexattr");
    ro(view.fallocate(old_a, 0, 10, Fallocate::Allocate { keep_size: false }), "fallocate");
    assert_eq!(view.read(old_a, 0, 100).unwrap(), b"old", "nothing changed in the view");
}

#[test]
fn live_entries_handed_out_are_counted_until_forgotten() {
    let f = MemVolume::new(4096);
    let (view, _, old_a) = with_snapshot(&f);
    // `a` was handed out by create (in with_snapshot) and by this lookup: two references.
    let a = view.lookup(ROOT_INO, b"a").unwrap().unwrap().ino;
    view.unlink(ROOT_INO, b"a").unwrap();
    view.forget(old_a, 5); // a view inode: no count, no effect on the live one
    view.forget(a, 1);
    assert!(f.meta.get_inode(a).unwrap().is_some(), "the kernel still holds one reference");
    view.forget(a, 1);
    assert!(f.meta.get_inode(a).unwrap().is_none(), "purged at the last forget");
    assert_eq!(view.read(old_a, 0, 100).unwrap(), b"old", "the snapshot keeps its copy");
}

#[test]
fn a_read_only_mount_refuses_every_change_with_erofs_and_reads_as_before() {
    let f = MemVolume::new(4096);
    let (_, _, old_a) = with_snapshot(&f);
    let ro = MountView::read_only(f.vol.clone());
    let a = ro.lookup(ROOT_INO, b"a").unwrap().unwrap().ino;
    let rofs = |r: Result<(), FsError>, what: &str| assert!(matches!(r, Err(FsError::ReadOnly)), "{what}: {r:?}");
    rofs(ro.open(a, true).map(drop), "open for writing");
    rofs(ro.write(a, 0, b"x", KillPriv::default()).map(drop), "write");
    rofs(ro.create(ROOT_INO, b"b", file(), ROOT, false).map(drop), "create");
    rofs(ro.create_node(ROOT_INO, b"d", NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] }, ROOT).map(drop), "mkdir");
    rofs(ro.unlink(ROOT_INO, b"a"), "unlink");
    rofs(ro.rename(ROOT_INO, b"a", ROOT_INO, b"c", RenameFlags::default()), "rename");
    rofs(ro.link(a, ROOT_INO, b"l").map(drop), "link");
    rofs(ro.setattr(a, SetAttr { size: Some(0), ..SetAttr::default() }).map(drop), "truncate");
    rofs(ro.setxattr(a, b"user.k", b"v", XattrMode::Any), "setxattr");
    rofs(ro.fallocate(a, 0, 10, Fallocate::Allocate { keep_size: false }).map(drop), "fallocate");
    let opened = ro.open(a, false).unwrap();
    assert_eq!(ro.read(a, 0, 100).unwrap(), b"new");
    ro.release(a, opened.kind).unwrap();
    assert_eq!(ro.read(old_a, 0, 100).unwrap(), b"old", "snapshots read as before");
    assert_eq!(ro.getattr(a).unwrap().size, 3, "nothing changed: not truncated, not extended");
    assert!(matches!(ro.lookup(ROOT_INO, b"b"), Ok(None)), "nothing created");
}

/// A listing's attributes in one call (readdirplus): live entries read together, a file open
/// with unsaved attributes from memory, view entries at their snapshot's epoch (invariant 2:
/// a snapshot never changes), and an entry removed since the listing was read as NotFound.
#[test]
fn a_listing_s_attributes_come_from_one_call_each_from_where_it_lives() {
    let f = MemVolume::new(4096);
    let (view, s1, old_a) = with_snapshot(&f);
    let a = view.lookup(ROOT_INO, b"a").unwrap().unwrap().ino;
    let b = view.create(ROOT_INO, b"b", file(), ROOT, false).unwrap().inode.ino;
    view.write(b, 0, b"four", KillPriv::default()).unwrap();
    let gone = view.create(ROOT_INO, b"gone", file(), ROOT, false).unwrap().inode.ino;
    view.release(gone, IoKind::Cached).unwrap();
    view.unlink(ROOT_INO, b"gone").unwrap();
    view.forget(gone, 1);
    let got = view.getattrs(&[a, old_a, b, gone, ROOT_INO, s1]).unwrap();
    assert_eq!(got.len(), 6);
    let ok = |i: usize| got[i].as_ref().unwrap_or_else(|e| panic!("entry {i}: {e:?}"));
    assert_eq!((ok(0).ino, ok(0).size), (a, 3));
    assert_eq!((ok(1).ino, ok(1).size), (old_a, 3));
    assert_eq!(ok(1).perm & 0o222, 0, "the view's inode, shown read-only");
    assert_eq!((ok(2).ino, ok(2).size), (b, 4), "an open file's size before it is saved");
    assert!(matches!(got[3], Err(FsError::NotFound)), "{:?}", got[3]);
    assert_eq!(ok(4).ino, ROOT_INO);
    assert_eq!(ok(5).ino, s1);
    for (i, ino) in [a, old_a, b, ROOT_INO, s1].into_iter().enumerate() {
        let one = view.getattr(ino).unwrap();
        let many = &got[if i < 3 { i } else { i + 1 }];
        assert_eq!(many.as_ref().unwrap(), &one, "inode {ino}: the same as getattr");
    }
    view.release(b, IoKind::Cached).unwrap();
}
