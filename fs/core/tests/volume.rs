//! Core logic through the in-memory metadata and block stores (no FUSE, no RocksDB).

use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::types::{Extent, Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, Fallocate, FsError, IoKind, NewNode, RenameFlags, SetAttr};
use std::collections::BTreeSet;

const BS: u64 = 4096;
const ME: Caller = Caller { uid: 0, gid: 0 };

mod common;
use common::MemVolume;

fn fixture() -> MemVolume {
    MemVolume::new(BS)
}

trait Clean {
    fn fsck_clean(&self);
}

impl Clean for MemVolume {
    fn fsck_clean(&self) {
        let r = self.fsck();
        assert!(r.clean(), "fsck problems: {:?}", r.problems);
    }
}

#[test]
fn write_read_seal_and_copy_on_write() {
    let f = fixture();
    let ino = f.file("a");
    let data: Vec<u8> = (0..3 * BS + 100).map(|i| (i % 251) as u8).collect();
    f.vol.write(ino, 0, &data).unwrap();
    assert_eq!(f.read_all(ino), data);
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    assert!(f.vol.seal_inode(ino).unwrap());
    let sealed: Vec<_> = f.meta.extents(ino, 0).unwrap();
    assert_eq!(sealed.len(), 4);
    assert!(sealed.iter().all(|(_, e)| matches!(e, Extent::Sealed { .. })));
    let before: Vec<Extent> = sealed.iter().map(|(_, e)| *e).collect();

    // Invariant 2: overwriting part of a sealed block stages a copy; the sealed block stays.
    f.vol.open_file(ino, true).unwrap();
    f.vol.write(ino, BS + 10, b"XYZ").unwrap();
    let mut expect = data.clone();
    expect[(BS + 10) as usize..(BS + 13) as usize].copy_from_slice(b"XYZ");
    assert_eq!(f.read_all(ino), expect);
    for e in &before {
        if let Extent::Sealed { id, len } = e {
            if f.meta.extents(ino, 0).unwrap().iter().any(|(_, x)| x == e) {
                assert_eq!(f.blocks.get(id).unwrap().len(), *len as usize);
            }
        }
    }
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.vol.seal_inode(ino).unwrap();
    f.vol.open_file(ino, true).unwrap();
    assert_eq!(f.read_all(ino), expect);
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.fsck_clean();
}

/// Invariant 5: a corrupted sealed block is an error naming it, never wrong bytes.
#[test]
fn corrupt_block_is_an_error() {
    let f = fixture();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![7u8; 2 * BS as usize]).unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.vol.seal_inode(ino).unwrap();
    let (_, ext) = f.meta.extents(ino, 0).unwrap()[0];
    let Extent::Sealed { id, .. } = ext else { panic!("not sealed") };
    f.blocks.corrupt(&id);
    f.vol.open_file(ino, true).unwrap();
    match f.vol.read(ino, 0, 10) {
        Err(FsError::CorruptBlock { id: got, .. }) => assert_eq!(got, id),
        other => panic!("expected a corrupt block error, got {other:?}"),
    }
}

/// The journal records exactly the blocks written, truncated or punched (invariant 3).
#[test]
fn journal_records_exactly_the_changed_blocks() {
    let f = fixture();
    let a = f.file("a");
    let b = f.file("b");
    f.vol.write(a, 10, b"x").unwrap();
    f.vol.write(a, 10, b"y").unwrap();
    f.vol.write(a, 5 * BS - 1, b"zz").unwrap();
    f.vol.write(b, 100 * BS, b"far").unwrap();
    let rows: BTreeSet<(Ino, u64)> = f.meta.journal(0).unwrap().into_iter().map(|e| (e.ino, e.block)).collect();
    assert_eq!(rows, BTreeSet::from([(a, 0), (a, 4), (a, 5), (b, 100)]));
    assert_eq!(f.vol.read(b, 50 * BS, 10).unwrap(), vec![0u8; 10], "holes read as zeros");
}

#[test]
fn truncate_and_punch_hole_read_zeros() {
    let f = fixture();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![1u8; 3 * BS as usize]).unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.vol.seal_inode(ino).unwrap();
    f.vol.setattr(ino, SetAttr { size: Some(BS + 7), ..Default::default() }).unwrap();
    f.vol.setattr(ino, SetAttr { size: Some(2 * BS), ..Default::default() }).unwrap();
    f.vol.open_file(ino, true).unwrap();
    let got = f.read_all(ino);
    assert_eq!(got.len(), 2 * BS as usize);
    assert!(got[..(BS + 7) as usize].iter().all(|b| *b == 1));
    assert!(got[(BS + 7) as usize..].iter().all(|b| *b == 0), "truncated bytes come back as zeros");
    f.vol.fallocate(ino, 10, BS, Fallocate::PunchHole).unwrap();
    let got = f.read_all(ino);
    assert!(got[10..(BS + 10) as usize].iter().all(|b| *b == 0));
    assert_eq!(got[9], 1);
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.fsck_clean();
}

#[test]
fn unlinked_open_file_lives_until_released_and_forgotten() {
    let f = fixture();
    let ino = f.file("a");
    f.vol.remember(ino);
    f.vol.write(ino, 0, b"still here").unwrap();
    f.vol.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(f.read_all(ino), b"still here");
    assert_eq!(f.meta.orphans().unwrap(), vec![ino]);
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    assert!(f.meta.get_inode(ino).unwrap().is_some(), "the kernel still references it");
    f.vol.forget(ino, 1);
    assert!(f.meta.get_inode(ino).unwrap().is_none());
    assert!(f.meta.orphans().unwrap().is_empty());
    f.fsck_clean();
}

/// A local volume's FORGET purges only what has an orphan row (a linked file's FORGET reads
/// no inode record), so every way an inode the kernel still references loses its last link
/// must write that row. Invariant 1: fsck is clean at every step (an inode with no links is
/// an orphan, which a restart after a crash purges too); invariant 7: the kernel's FORGET
/// frees each such inode, none stays behind in the store.
#[test]
fn every_inode_unlinked_while_the_kernel_holds_it_is_purged_at_its_forget() {
    let f = fixture();
    let mkdir = |parent: Ino, name: &str| {
        let new = NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] };
        f.vol.create_node(parent, name.as_bytes(), new, ME).unwrap().ino
    };
    let closed = |name: &str| {
        let ino = f.file(name);
        f.vol.write(ino, 0, name.as_bytes()).unwrap();
        f.vol.release_file(ino, IoKind::Cached).unwrap();
        ino
    };
    // The kernel forgets `ino`: it goes, with its orphan row.
    let purged_at_forget = |ino: Ino, what: &str| {
        assert!(f.meta.orphans().unwrap().contains(&ino), "{what}: no orphan row");
        assert_eq!(f.meta.get_inode(ino).unwrap().map(|i| i.nlink), Some(0), "{what}: the kernel still holds it");
        f.fsck_clean();
        f.vol.forget(ino, 1);
        assert!(f.meta.get_inode(ino).unwrap().is_none(), "{what}: its FORGET left the inode");
        assert!(f.meta.orphans().unwrap().is_empty(), "{what}: its FORGET left the orphan row");
        f.fsck_clean();
    };
    let file = || RenameFlags::default();

    // unlink of a file no handle holds
    let a = closed("a");
    f.vol.remember(a);
    f.vol.unlink(ROOT_INO, b"a").unwrap();
    purged_at_forget(a, "unlink");

    // the last of two hard links: the first unlink leaves it linked, and a FORGET then
    // keeps it; the second makes it an orphan
    let h = closed("h1");
    f.vol.link(h, ROOT_INO, b"h2").unwrap();
    f.vol.remember(h);
    f.vol.remember(h);
    f.vol.unlink(ROOT_INO, b"h1").unwrap();
    assert!(f.meta.orphans().unwrap().is_empty(), "a file with a name left is no orphan");
    f.vol.forget(h, 1);
    f.vol.forget(h, 1);
    assert_eq!(f.meta.get_inode(h).unwrap().map(|i| i.nlink), Some(1), "a linked file's FORGET purged it");
    f.vol.remember(h);
    f.vol.unlink(ROOT_INO, b"h2").unwrap();
    purged_at_forget(h, "unlink of the last hard link");

    // rmdir of a directory the kernel holds (a shell's working directory)
    let d = mkdir(ROOT_INO, "cwd");
    f.vol.remember(d);
    f.vol.rmdir(ROOT_INO, b"cwd").unwrap();
    purged_at_forget(d, "rmdir");

    // rename over a file no handle holds
    let src = closed("src");
    let dst = closed("dst");
    f.vol.remember(dst);
    f.vol.rename(ROOT_INO, b"src", ROOT_INO, b"dst", file()).unwrap();
    purged_at_forget(dst, "rename over a closed file");

    // rename over an open file: readable until its release, purged at the FORGET after it
    let open = f.file("open");
    f.vol.write(open, 0, b"still here").unwrap();
    f.vol.remember(open);
    f.vol.rename(ROOT_INO, b"dst", ROOT_INO, b"open", file()).unwrap();
    assert_eq!(f.read_all(open), b"still here", "invariant 2: an open file's bytes went at the rename over it");
    f.vol.release_file(open, IoKind::Cached).unwrap();
    purged_at_forget(open, "rename over an open file");

    // rename over an empty directory the kernel holds
    let (from, over) = (mkdir(ROOT_INO, "from"), mkdir(ROOT_INO, "over"));
    f.vol.remember(over);
    f.vol.rename(ROOT_INO, b"from", ROOT_INO, b"over", file()).unwrap();
    purged_at_forget(over, "rename over a directory");

    // a rollback to a snapshot taken while a file was an orphan brings it back unlinked: an
    // orphan again (the kernel has taken a reference to that number again meanwhile)
    let back = closed("back");
    f.vol.remember(back);
    f.vol.unlink(ROOT_INO, b"back").unwrap();
    f.vol.snapshot_create("unlinked").unwrap();
    f.vol.forget(back, 1);
    assert!(f.meta.get_inode(back).unwrap().is_none());
    f.vol.remember(back);
    f.vol.rollback("unlinked").unwrap();
    purged_at_forget(back, "rollback");

    // what is left is linked: the kernel's FORGETs keep it all
    for ino in [src, from] {
        f.vol.remember(ino);
        f.vol.forget(ino, 1);
        assert!(f.meta.get_inode(ino).unwrap().is_some_and(|i| i.nlink > 0));
    }
    assert_eq!(f.vol.lookup(ROOT_INO, b"open").unwrap().ino, src);
    assert_eq!(f.vol.lookup(ROOT_INO, b"over").unwrap().ino, from);
    f.fsck_clean();
}

#[test]
fn rename_replace_noreplace_exchange_and_link_counts() {
    let f = fixture();
    let dir = |name: &str| {
        let new = NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] };
        f.vol.create_node(ROOT_INO, name.as_bytes(), new, ME).unwrap().ino
    };
    let d1 = dir("d1");
    let d2 = dir("d2");
    let a = f.file("a");
    let b = f.file("b");
    f.vol.release_file(a, IoKind::Cached).unwrap();
    f.vol.release_file(b, IoKind::Cached).unwrap();
    assert_eq!(f.vol.getattr(ROOT_INO).unwrap().nlink, 4);
    let noreplace = RenameFlags { noreplace: true, exchange: false };
    assert!(matches!(f.vol.rename(ROOT_INO, b"a", ROOT_INO, b"b", noreplace), Err(FsError::Exists)));
    f.vol.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameFlags::default()).unwrap();
    assert_eq!(f.vol.lookup(ROOT_INO, b"b").unwrap().ino, a);
    assert!(f.meta.get_inode(b).unwrap().is_none(), "replaced, unreferenced inode is gone");
    f.vol.rename(ROOT_INO, b"d1", d2, b"inner", RenameFlags::default()).unwrap();
    assert_eq!(f.vol.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(f.vol.getattr(d2).unwrap().nlink, 3);
    let exchange = RenameFlags { noreplace: false, exchange: true };
    f.vol.rename(ROOT_INO, b"b", d2, b"inner", exchange).unwrap();
    assert_eq!(f.vol.lookup(ROOT_INO, b"b").unwrap().ino, d1);
    assert_eq!(f.vol.lookup(d2, b"inner").unwrap().ino, a);
    assert_eq!(f.vol.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(f.vol.getattr(d2).unwrap().nlink, 2);
    f.vol.link(a, ROOT_INO, b"hard").unwrap();
    assert_eq!(f.vol.getattr(a).unwrap().nlink, 2);
    assert!(matches!(f.vol.rmdir(ROOT_INO, b"d2"), Err(FsError::NotEmpty)));
    f.fsck_clean();
}

#[test]
fn readdir_offsets_are_stable_while_entries_change() {
    let f = fixture();
    for i in 0..50 {
        let ino = f.file(&format!("f{i}"));
        f.vol.release_file(ino, IoKind::Cached).unwrap();
    }
    let first = f.vol.readdir(ROOT_INO, 0, 20).unwrap();
    let resume = first.last().unwrap().offset;
    f.vol.unlink(ROOT_INO, b"f0").unwrap();
    let ino = f.file("new");
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    let mut seen: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    let mut off = resume;
    loop {
        let more = f.vol.readdir(ROOT_INO, off, 20).unwrap();
        let Some(last) = more.last() else { break };
        off = last.offset;
        seen.extend(more.into_iter().map(|e| e.name));
    }
    assert_eq!(seen.len(), 2 + 50 + 1, ". .. 50 files and the new one, none twice");
    assert!(f.vol.readdir(ROOT_INO, off, 20).unwrap().is_empty());
}

#[test]
fn io_mode_follows_the_kernel_rule_of_one_mode_per_inode() {
    use hybridfs_core::choose_io;
    assert_eq!(choose_io(false, 0, true), IoKind::Passthrough, "fully staged, alone: passthrough");
    assert_eq!(choose_io(false, 0, false), IoKind::Cached, "sealed data must be verified by us");
    assert_eq!(choose_io(true, 0, true), IoKind::Cached, "writers always pass through us");
    assert_eq!(choose_io(false, 2, false), IoKind::Passthrough, "join the passthrough opens");
    assert_eq!(choose_io(true, 1, false), IoKind::DirectIo, "no page cache while passthrough is on");
}

#[test]
fn passthrough_open_exposes_the_staging_file_sized_like_the_file() {
    let f = fixture();
    f.vol.enable_passthrough(true);
    let ino = f.file("a");
    f.vol.write(ino, 0, &[5u8; 5000]).unwrap();
    f.vol.setattr(ino, SetAttr { size: Some(9000), ..Default::default() }).unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    let opened = f.vol.open_file(ino, false).unwrap();
    assert_eq!(opened.kind, IoKind::Passthrough);
    let backing = opened.backing.expect("a backing file");
    assert_eq!(backing.metadata().unwrap().len(), 9000);
    let writer = f.vol.open_file(ino, true).unwrap();
    assert_eq!(writer.kind, IoKind::DirectIo);
    f.vol.release_file(ino, IoKind::DirectIo).unwrap();
    f.vol.release_file(ino, IoKind::Passthrough).unwrap();
    assert!(f.vol.seal_inode(ino).unwrap());
    assert_eq!(f.vol.open_file(ino, false).unwrap().kind, IoKind::Cached, "sealed: no passthrough");
}

#[test]
fn small_files_stay_inline_until_they_outgrow_it() {
    use hybridfs_core::types::INLINE_MAX;
    let f = fixture();
    let ino = f.file("small");
    f.vol.write(ino, 0, b"hello").unwrap();
    f.vol.write(ino, 10, b"world").unwrap();
    assert_eq!(f.read_all(ino), b"hello\0\0\0\0\0world");
    assert!(f.meta.extents(ino, 0).unwrap().is_empty(), "inline files have no extents");
    assert!(!f.dir.path().join("staging").join(ino.to_string()).exists(), "and no staging file");
    let rows: Vec<_> = f.meta.journal(0).unwrap().into_iter().map(|e| (e.ino, e.block)).collect();
    assert_eq!(rows, vec![(ino, 0)], "inline writes are journaled as block 0");
    f.vol.setattr(ino, SetAttr { size: Some(3), ..Default::default() }).unwrap();
    assert_eq!(f.read_all(ino), b"hel");
    f.vol.write(ino, INLINE_MAX - 1, b"xy").unwrap();
    let mut expect = b"hel".to_vec();
    expect.resize(INLINE_MAX as usize - 1, 0);
    expect.extend_from_slice(b"xy");
    assert_eq!(f.read_all(ino), expect, "outgrown: moved to the staging file intact");
    assert_eq!(f.meta.extents(ino, 0).unwrap(), vec![(0, Extent::Staged), (1, Extent::Staged)]);
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    f.vol.seal_inode(ino).unwrap();
    f.fsck_clean();
}

/// Passthrough writes: what the kernel writes into the staging file (here: written to the
/// backing file directly) is absorbed from the file's data regions. `stat` sees its size at
/// once; `fsync` stores the size, `Staged` extents and journal rows of every block written
/// (invariant 1); a read through us sees the kernel's bytes, also after a snapshot sealed
/// them; a file of at most 4 KiB written so goes inline at its last close.
#[test]
fn passthrough_writes_are_absorbed_from_the_staging_file() {
    use std::os::unix::fs::FileExt;
    let f = fixture();
    f.vol.enable_passthrough(true);
    f.vol.enable_passthrough_writes(true);
    let new = || NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
    let ino = f.vol.create_node(ROOT_INO, b"ckpt", new(), ME).unwrap().ino;
    let opened = f.vol.open_file(ino, true).unwrap();
    assert_eq!(opened.kind, IoKind::PassthroughWrite, "a new file is written by passthrough");
    let kernel = opened.backing.expect("the staging file");
    let data: Vec<u8> = (0..3 * BS + 10).map(|i| (i % 251) as u8 + 1).collect();
    kernel.write_all_at(&data, 0).unwrap();
    assert_eq!(f.vol.getattr(ino).unwrap().size, data.len() as u64, "stat sees the kernel's size");
    let counted = |m: &hybridfs_core::metrics::Metrics| {
        use std::sync::atomic::Ordering::Relaxed;
        (m.bytes_written.load(Relaxed), m.passthrough_absorbs.load(Relaxed))
    };
    assert_eq!(counted(&f.vol.metrics), (0, 0), "nothing counted before the mount learns of the kernel's writes");
    f.vol.fsync(ino).unwrap();
    assert_eq!(counted(&f.vol.metrics), (data.len() as u64, 1), "the absorb at fsync counts the bytes written by passthrough");
    f.vol.fsync(ino).unwrap();
    assert_eq!(counted(&f.vol.metrics), (data.len() as u64, 1), "nothing new: nothing counted again");
    let epoch = f.vol.epoch();
    let rows: BTreeSet<u64> = f.meta.journal(epoch).unwrap().iter().filter(|j| j.ino == ino).map(|j| j.block).collect();
    assert_eq!(rows, (0..4).collect(), "invariant 1: fsync journals every block written by passthrough");
    assert_eq!(f.meta.get_inode(ino).unwrap().unwrap().size, data.len() as u64, "invariant 1: fsync stores the size");
    assert!(f.meta.extents(ino, 0).unwrap().iter().all(|(_, e)| *e == Extent::Staged));

    f.vol.snapshot_create("s1").unwrap();
    assert!(f.meta.extents(ino, 0).unwrap().iter().all(|(_, e)| matches!(e, Extent::Sealed { .. })), "the snapshot sealed it");
    kernel.write_all_at(b"new", BS + 1).unwrap();
    let mut live = data.clone();
    live[(BS + 1) as usize..(BS + 4) as usize].copy_from_slice(b"new");
    assert_eq!(f.read_all(ino), live, "a read through us sees what the kernel wrote after the snapshot");
    let rows: BTreeSet<u64> = f.meta.journal(f.vol.epoch()).unwrap().iter().filter(|j| j.ino == ino).map(|j| j.block).collect();
    assert!(rows.contains(&1), "the block written after the snapshot is journaled in the new epoch: {rows:?}");
    f.vol.release_file(ino, IoKind::PassthroughWrite).unwrap();
    assert!(f.vol.seal_inode(ino).unwrap());
    f.vol.open_file(ino, false).unwrap();
    assert_eq!(f.read_all(ino), live, "after close and seal");
    f.vol.release_file(ino, IoKind::Cached).unwrap();

    let small = f.vol.create_node(ROOT_INO, b"small", new(), ME).unwrap().ino;
    let opened = f.vol.open_file(small, true).unwrap();
    assert_eq!(opened.kind, IoKind::PassthroughWrite);
    opened.backing.unwrap().write_all_at(b"hello", 0).unwrap();
    let before = counted(&f.vol.metrics);
    f.vol.release_file(small, IoKind::PassthroughWrite).unwrap();
    assert_eq!(counted(&f.vol.metrics), (before.0 + 5, before.1 + 1), "the absorb at close counts its bytes");
    let inode = f.meta.get_inode(small).unwrap().unwrap();
    assert_eq!(inode.inline.as_deref(), Some(&b"hello"[..]), "a small file goes inline at its last close");
    assert!(f.meta.extents(small, 0).unwrap().is_empty());
    f.vol.seal_inodes(&[ino, small]).unwrap();
    f.fsck_clean();
}

/// A shared volume runs one host's namespace changes side by side (`ns` shared, per-inode
/// stripes: volume/mod.rs); creates, renames (also across two directories in opposite
/// directions, the stripes' out-of-order case), links and unlinks from several threads, some
/// in one directory, must leave the namespace whole: every change applied exactly once
/// (invariant 1: an acknowledged change is in the store), link counts and directory records
/// right (fsck), and nothing freed that a name or an open file still reaches (invariant 2).
#[test]
fn shared_volume_changes_on_one_host_run_side_by_side_and_keep_the_namespace_whole() {
    let f = MemVolume::shared(BS);
    let mkdir = |parent: Ino, name: &str| {
        let new = NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] };
        f.vol.create_node(parent, name.as_bytes(), new, ME).unwrap().ino
    };
    let common = mkdir(ROOT_INO, "common");
    let (x, y) = (mkdir(ROOT_INO, "x"), mkdir(ROOT_INO, "y"));
    const THREADS: usize = 4;
    const ROUNDS: usize = 60;
    let own: Vec<Ino> = (0..THREADS).map(|t| mkdir(ROOT_INO, &format!("t{t}"))).collect();
    let remembered: Vec<Ino> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS).map(|t| {
            let (f, own) = (&f, own[t]);
            s.spawn(move || {
                let mut inos = Vec::new();
                for r in 0..ROUNDS {
                    let name = format!("f{t}-{r}");
                    let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
                    let dir = if r % 2 == 0 { own } else { common };
                    let opened = f.vol.create_open(dir, name.as_bytes(), new, ME, false).unwrap();
                    let ino = opened.inode.ino;
                    f.vol.remember(ino);
                    inos.push(ino);
                    f.vol.write(ino, 0, name.as_bytes()).unwrap();
                    f.vol.release_file(ino, opened.kind).unwrap();
                    // Across x and y: threads 0 and 2 move x -> y, 1 and 3 y -> x.
                    let (from, to) = if t % 2 == 0 { (x, y) } else { (y, x) };
                    f.vol.rename(dir, name.as_bytes(), from, name.as_bytes(), RenameFlags::default()).unwrap();
                    f.vol.rename(from, name.as_bytes(), to, name.as_bytes(), RenameFlags::default()).unwrap();
                    match r % 3 {
                        0 => f.vol.unlink(to, name.as_bytes()).unwrap(),
                        1 => {
                            f.vol.link(ino, own, format!("h{t}-{r}").as_bytes()).unwrap();
                            f.vol.unlink(to, name.as_bytes()).unwrap();
                        }
                        _ => f.vol.rename(to, name.as_bytes(), own, name.as_bytes(), RenameFlags::default()).unwrap(),
                    }
                }
                inos
            })
        }).collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    // Every change once: per thread, ROUNDS/3 files kept under their name, ROUNDS/3 under a
    // hard link (their first name unlinked), the rest gone.
    for t in 0..THREADS {
        let names: BTreeSet<Vec<u8>> = f.vol.readdir(own[t], 2, 10_000).unwrap().into_iter().map(|e| e.name).collect();
        let want: BTreeSet<Vec<u8>> = (0..ROUNDS)
            .filter_map(|r| match r % 3 {
                0 => None,
                1 => Some(format!("h{t}-{r}")),
                _ => Some(format!("f{t}-{r}")),
            })
            .map(String::into_bytes)
            .collect();
        assert_eq!(names, want, "thread {t}'s directory");
        for name in &names {
            let ino = f.vol.lookup(own[t], name).unwrap().ino;
            let first = if name[0] == b'h' { [b"f", &name[1..]].concat() } else { name.clone() };
            let opened = f.vol.open_file(ino, false).unwrap();
            assert_eq!(f.read_all(ino), first, "invariant 2: a kept file lost its bytes");
            f.vol.release_file(ino, opened.kind).unwrap();
        }
    }
    for d in [common, x, y] {
        assert!(f.vol.readdir(d, 2, 10).unwrap().is_empty(), "directory {d} keeps entries");
    }
    assert!(f.meta.orphans().unwrap().is_empty(), "shared volume: unlinked files nobody holds open are purged at unlink");
    f.fsck_clean();
    // The kernel's FORGETs: files purged at unlink have nothing left to do, kept ones stay.
    for ino in remembered {
        f.vol.forget(ino, 1);
    }
    assert!(f.meta.orphans().unwrap().is_empty());
    f.fsck_clean();
}

/// On a shared volume an unlinked file that no handle holds goes in the unlink's own
/// transaction, even while the kernel still references it (its FORGET then does nothing);
/// one that is open stays, readable, until its release and FORGET (invariant 2: nothing an
/// open file reaches is freed).
#[test]
fn shared_volume_unlink_frees_an_unopened_file_at_once_and_keeps_an_open_one() {
    let f = MemVolume::shared(BS);
    let closed = f.file("closed");
    f.vol.write(closed, 0, b"bytes").unwrap();
    f.vol.release_file(closed, IoKind::Cached).unwrap();
    f.vol.remember(closed);
    f.vol.unlink(ROOT_INO, b"closed").unwrap();
    assert!(f.meta.get_inode(closed).unwrap().is_none(), "an unlinked file no handle holds stayed");
    assert!(f.meta.orphans().unwrap().is_empty());
    f.vol.forget(closed, 1);
    assert!(f.meta.get_inode(closed).unwrap().is_none());

    let open = f.file("open");
    f.vol.remember(open);
    f.vol.write(open, 0, b"still here").unwrap();
    f.vol.unlink(ROOT_INO, b"open").unwrap();
    assert_eq!(f.read_all(open), b"still here", "invariant 2: an open file's data went at its unlink");
    assert_eq!(f.meta.orphans().unwrap(), vec![open]);
    f.vol.release_file(open, IoKind::Cached).unwrap();
    f.vol.forget(open, 1);
    assert!(f.meta.get_inode(open).unwrap().is_none());
    assert!(f.meta.orphans().unwrap().is_empty());
    f.fsck_clean();
}

/// tar's `futimens`, `fchown` and `fchmod` of a file it wrote by passthrough and still holds
/// open take the open node's path (no transaction loads the record): each change, with what
/// the kernel wrote before it, is in the store when the call returns (invariant 1: a setattr
/// is in the store's log before it returns, as a namespace change's is; the crash tests make
/// that log durable by fsync), and the time tar set is not undone by the staging file's.
#[test]
fn setattr_of_an_open_file_is_in_the_store_before_it_returns() {
    use hybridfs_core::types::Timespec;
    use hybridfs_core::TimeSet;
    use std::os::unix::fs::FileExt;
    let f = fixture();
    f.vol.enable_passthrough(true);
    f.vol.enable_passthrough_writes(true);
    let new = || NewNode { kind: Kind::File, perm: 0o600, rdev: 0, target: vec![] };
    let opened = f.vol.create_open(ROOT_INO, b"t.c", new(), ME, true).unwrap();
    assert_eq!(opened.kind, IoKind::PassthroughWrite);
    let ino = opened.inode.ino;
    let data: Vec<u8> = (0..2 * BS + 5).map(|i| (i % 249) as u8 + 1).collect();
    opened.backing.unwrap().write_all_at(&data, 0).unwrap();
    let then = Timespec { sec: 1_153_704_088, nsec: 0 };
    let answer = f.vol.setattr(ino, SetAttr { mtime: Some(TimeSet::At(then)), ..Default::default() }).unwrap();
    assert_eq!((answer.size, answer.mtime), (data.len() as u64, then), "the answer carries the kernel's size and the time set");
    let stored = f.meta.get_inode(ino).unwrap().unwrap();
    assert_eq!((stored.size, stored.mtime), (data.len() as u64, then), "invariant 1: the absorb and the times are stored on return");
    assert!(f.meta.extents(ino, 0).unwrap().iter().all(|(_, e)| *e == Extent::Staged));
    let rows: BTreeSet<u64> = f.meta.journal(f.vol.epoch()).unwrap().iter().filter(|j| j.ino == ino).map(|j| j.block).collect();
    assert_eq!(rows, (0..3).collect(), "invariant 1: the blocks the kernel wrote are journaled with it");
    f.vol.setattr(ino, SetAttr { uid: Some(7), gid: Some(8), ..Default::default() }).unwrap();
    f.vol.setattr(ino, SetAttr { perm: Some(0o644), ..Default::default() }).unwrap();
    let stored = f.meta.get_inode(ino).unwrap().unwrap();
    assert_eq!((stored.uid, stored.gid, stored.perm, stored.mtime), (7, 8, 0o644, then), "invariant 1: chown and chmod stored on return");
    f.vol.release_file(ino, IoKind::PassthroughWrite).unwrap();
    let closed = f.meta.get_inode(ino).unwrap().unwrap();
    assert_eq!((closed.mtime, closed.size, closed.perm), (then, data.len() as u64, 0o644), "the close keeps what tar set");
    let reader = f.vol.open_file(ino, false).unwrap();
    assert_eq!(f.read_all(ino), data);
    f.vol.release_file(ino, reader.kind).unwrap();

    // A file open through the mount's path (inline), and one not open at all (a transaction).
    f.vol.enable_passthrough_writes(false);
    f.vol.enable_passthrough(false);
    let small = f.file("small");
    f.vol.write(small, 0, b"hi").unwrap();
    f.vol.setattr(small, SetAttr { perm: Some(0o640), ..Default::default() }).unwrap();
    let stored = f.meta.get_inode(small).unwrap().unwrap();
    assert_eq!((stored.perm, stored.inline.as_deref()), (0o640, Some(&b"hi"[..])), "invariant 1: stored on return, its bytes with it");
    f.vol.release_file(small, IoKind::Cached).unwrap();
    f.vol.setattr(small, SetAttr { uid: Some(9), ..Default::default() }).unwrap();
    assert_eq!(f.meta.get_inode(small).unwrap().unwrap().uid, 9);
    f.fsck_clean();
}

/// The kernel's `security.capability` questions about a file open here are answered from its
/// node while no such attribute was set in the volume; the answers stay exact.
#[test]
fn capability_questions_about_open_files_are_answered_exactly() {
    use hybridfs_core::XattrMode;
    const CAPS: &[u8] = b"security.capability";
    let f = fixture();
    let a = f.file("a");
    let b = f.file("b");
    assert!(matches!(f.vol.getxattr(a, CAPS), Err(FsError::NoXattr)), "a new open file has none");
    f.vol.setxattr(a, CAPS, b"\x01\x00\x00\x02", XattrMode::Any).unwrap();
    assert_eq!(f.vol.getxattr(a, CAPS).unwrap(), b"\x01\x00\x00\x02", "set while open: seen at once");
    assert!(matches!(f.vol.getxattr(b, CAPS), Err(FsError::NoXattr)), "another open file still has none");
    f.vol.setxattr(b, b"user.x", b"1", XattrMode::Any).unwrap();
    assert!(matches!(f.vol.getxattr(b, CAPS), Err(FsError::NoXattr)), "another attribute is not a capability");
    assert_eq!(f.vol.getxattr(b, b"user.x").unwrap(), b"1");
    f.vol.write_killing(a, 0, b"x", hybridfs_core::KillPriv { suidgid: false, caps: true }).unwrap();
    assert!(matches!(f.vol.getxattr(a, CAPS), Err(FsError::NoXattr)), "a write removed it (KillPriv)");
    f.vol.setxattr(a, CAPS, b"\x01\x00\x00\x02", XattrMode::Any).unwrap();
    f.vol.release_file(a, IoKind::Cached).unwrap();
    assert_eq!(f.vol.getxattr(a, CAPS).unwrap(), b"\x01\x00\x00\x02", "closed: from the store");
    f.vol.open_file(a, true).unwrap();
    f.vol.removexattr(a, CAPS).unwrap();
    assert!(matches!(f.vol.getxattr(a, CAPS), Err(FsError::NoXattr)), "removed while open");
    f.vol.release_file(a, IoKind::Cached).unwrap();
    f.vol.release_file(b, IoKind::Cached).unwrap();
}
