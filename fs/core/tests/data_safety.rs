//! The local data path never loses acknowledged bytes nor brings deleted ones back, even
//! when an operation fails halfway (issue 8). Each test names the invariant it guards.

use hybridfs_core::blockstore::{BlockStore, MemBlockStore};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::{BlockId, Extent, Ino, Kind, ROOT_INO};
use hybridfs_core::{Caller, Fallocate, FsError, IoKind, NewNode, Volume, VolumeOptions};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

const BS: u64 = 64 << 10;
const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// A block store whose `put` can be made to wait until the test lets it go.
#[derive(Default)]
struct GatedStore {
    inner: MemBlockStore,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    get_gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl GatedStore {
    /// The next `put` reports on the first channel, then waits on the second.
    fn hold_next_put(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = channel();
        let (go_tx, go_rx) = channel();
        *self.gate.lock().unwrap() = Some((entered_tx, go_rx));
        (entered_rx, go_tx)
    }

    /// The same for the next `get` (a slow fetch from the object store).
    fn hold_next_get(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = channel();
        let (go_tx, go_rx) = channel();
        *self.get_gate.lock().unwrap() = Some((entered_tx, go_rx));
        (entered_rx, go_tx)
    }
}

impl BlockStore for GatedStore {
    fn put(&self, data: &[u8]) -> hybridfs_core::Result<BlockId> {
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, go)) = gate {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        self.inner.put(data)
    }
    fn sync(&self) -> hybridfs_core::Result<()> {
        self.inner.sync()
    }
    fn get(&self, id: &BlockId) -> hybridfs_core::Result<Vec<u8>> {
        let gate = self.get_gate.lock().unwrap().take();
        if let Some((entered, go)) = gate {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        self.inner.get(id)
    }
    fn contains(&self, id: &BlockId) -> hybridfs_core::Result<bool> {
        self.inner.contains(id)
    }
    fn remove(&self, id: &BlockId) -> hybridfs_core::Result<()> {
        self.inner.remove(id)
    }
    fn frame(&self, id: &BlockId) -> hybridfs_core::Result<Vec<u8>> {
        self.inner.frame(id)
    }
    fn stored_len(&self, id: &BlockId) -> hybridfs_core::Result<Option<u64>> {
        self.inner.stored_len(id)
    }
    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> hybridfs_core::Result<()> {
        self.inner.for_each(f)
    }
}

struct Fixture {
    vol: Arc<Volume>,
    meta: Arc<MetaStore>,
    blocks: Arc<GatedStore>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::memory());
        let blocks = Arc::new(GatedStore::default());
        Volume::format(&*meta, 0, 0).unwrap();
        let opts = VolumeOptions { block_size: BS as u32, staging_dir: dir.path().join("staging"), ..Default::default() };
        let vol = Volume::open(meta.clone(), blocks.clone(), opts).unwrap();
        Fixture { vol, meta, blocks, dir }
    }

    /// Create `name` in the root, open for writing.
    fn file(&self, name: &str) -> Ino {
        let new = NewNode { kind: Kind::File, perm: 0o644, rdev: 0, target: vec![] };
        let ino = self.vol.create_node(ROOT_INO, name.as_bytes(), new, ROOT).unwrap().ino;
        self.vol.open_file(ino, true).unwrap();
        ino
    }

    fn close_and_seal(&self, ino: Ino) {
        self.vol.release_file(ino, IoKind::Cached).unwrap();
        self.vol.seal_inode(ino).unwrap();
    }

    fn sealed_ids(&self, ino: Ino) -> Vec<BlockId> {
        let extents = self.meta.extents(ino, 0).unwrap();
        extents.into_iter().filter_map(|(_, e)| if let Extent::Sealed { id, .. } = e { Some(id) } else { None }).collect()
    }
}

/// Invariant 1: a write that fails halfway (here: it spans a hole and a corrupt sealed block)
/// leaves no trace in the node's extent cache, so a later write to the hole is recorded and
/// survives sealing. Before the fix the cache kept saying `Staged` for the hole: the later
/// write recorded nothing and the sealer deleted its bytes.
#[test]
fn failed_write_does_not_leave_a_staged_block_the_store_never_saw() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, BS, &vec![7u8; BS as usize]).unwrap();
    f.close_and_seal(ino);
    let ids = f.sealed_ids(ino);
    assert_eq!(ids.len(), 1, "block 1 sealed, block 0 a hole");
    f.blocks.inner.corrupt(&ids[0]);

    f.vol.open_file(ino, true).unwrap();
    let err = f.vol.write(ino, BS - 10, &[1u8; 20]).unwrap_err();
    assert!(matches!(err, FsError::CorruptBlock { .. }), "{err:?}");
    f.vol.write(ino, 0, b"hello").unwrap();
    f.close_and_seal(ino);

    f.vol.open_file(ino, false).unwrap();
    assert_eq!(f.vol.read(ino, 0, 5).unwrap(), b"hello", "the write after the failed one was lost");
    f.vol.release_file(ino, IoKind::Cached).unwrap();
}

/// Invariant 1: a fallocate that fails halfway (block 0 punched whole, then block 1 needs
/// its corrupt bytes) leaves block 0 as the store has it: its data, not a hole the cache
/// made up.
#[test]
fn failed_fallocate_leaves_the_extent_cache_as_the_store_has_it() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![9u8; BS as usize]).unwrap();
    f.vol.write(ino, BS, &vec![8u8; BS as usize]).unwrap();
    f.close_and_seal(ino);
    let ids = f.sealed_ids(ino);
    assert_eq!(ids.len(), 2);
    f.blocks.inner.corrupt(&ids[1]);
    f.vol.open_file(ino, true).unwrap();
    let err = f.vol.fallocate(ino, 0, BS + 10, Fallocate::PunchHole).unwrap_err();
    assert!(matches!(err, FsError::CorruptBlock { .. }), "{err:?}");
    assert!(f.vol.read(ino, 0, 16).unwrap().iter().all(|b| *b == 9), "block 0 reads as punched");
    f.vol.write(ino, 3, b"abc").unwrap();
    f.close_and_seal(ino);
    f.vol.open_file(ino, false).unwrap();
    assert_eq!(f.vol.read(ino, 0, 8).unwrap(), b"\x09\x09\x09abc\x09\x09");
    f.vol.release_file(ino, IoKind::Cached).unwrap();
}

/// Invariant 2: bytes punched out of a block a snapshot sealed while the file stayed open do
/// not come back with the next partial write (the staging file still held them).
#[test]
fn punched_block_stays_zero_after_a_partial_write() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![0xAAu8; BS as usize]).unwrap();
    f.vol.snapshot_create("s1").unwrap();
    f.vol.fallocate(ino, 0, BS, Fallocate::PunchHole).unwrap();
    f.vol.write(ino, 0, b"x").unwrap();
    let got = f.vol.read(ino, 0, 16).unwrap();
    assert_eq!(got[0], b'x');
    assert!(got[1..].iter().all(|b| *b == 0), "punched bytes came back: {:x?}", &got[1..]);
    f.close_and_seal(ino);
    f.vol.open_file(ino, false).unwrap();
    let got = f.vol.read(ino, 0, BS as u32).unwrap();
    assert!(got[1..].iter().all(|b| *b == 0), "punched bytes were sealed");
    f.vol.release_file(ino, IoKind::Cached).unwrap();
}

/// Invariant 2, same for ZERO_RANGE followed by fallocate (allocate) and a read.
#[test]
fn zeroed_block_stays_zero_after_allocate() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![0xBBu8; BS as usize]).unwrap();
    f.vol.snapshot_create("s1").unwrap();
    f.vol.fallocate(ino, 0, BS, Fallocate::ZeroRange { keep_size: true }).unwrap();
    f.vol.fallocate(ino, 0, BS, Fallocate::Allocate { keep_size: true }).unwrap();
    f.close_and_seal(ino);
    f.vol.open_file(ino, false).unwrap();
    assert!(f.vol.read(ino, 0, BS as u32).unwrap().iter().all(|b| *b == 0));
    f.vol.release_file(ino, IoKind::Cached).unwrap();
}

/// A file unlinked and forgotten by the kernel while the sealer had it pinned is purged once
/// the sealer lets it go (its space and blocks are not kept until the next mount).
#[test]
fn orphan_pinned_by_the_sealer_at_forget_is_purged_after_sealing() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.remember(ino);
    f.vol.write(ino, 0, &vec![3u8; 2 * BS as usize]).unwrap();
    // Unlinked while open: the data stays for the descriptor, and after the last close for
    // the kernel's reference, until FORGET.
    f.vol.unlink(ROOT_INO, b"a").unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    let (entered, go) = f.blocks.hold_next_put();
    let vol = f.vol.clone();
    let sealer = std::thread::spawn(move || vol.seal_inode(ino));
    entered.recv().unwrap();
    f.vol.forget(ino, 1);
    assert!(f.meta.get_inode(ino).unwrap().is_some(), "pinned by the sealer");
    go.send(()).unwrap();
    sealer.join().unwrap().unwrap();
    assert!(f.meta.get_inode(ino).unwrap().is_none(), "the orphan outlived the sealer's pin");
    assert!(f.meta.orphans().unwrap().is_empty());
    assert!(!f.dir.path().join("staging").join(ino.to_string()).exists());
}

/// Invariant 5 for staged data: a staged block whose staging file is gone reads as an
/// error, never as zeros, and the sealer does not turn it into a hole.
#[test]
fn staged_block_without_its_staging_file_is_an_error() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![5u8; BS as usize]).unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    std::fs::remove_file(f.dir.path().join("staging").join(ino.to_string())).unwrap();
    f.vol.open_file(ino, false).unwrap();
    assert!(f.vol.read(ino, 0, 10).is_err(), "a lost staging file read as zeros");
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    assert!(f.vol.seal_inode(ino).is_err());
    assert_eq!(f.meta.extents(ino, 0).unwrap(), vec![(0, Extent::Staged)], "still staged, not a hole");
}

/// Space comes back at `rm`: the data of a file whose last name goes while no descriptor
/// has it open is freed at once, even though the kernel still references the inode (its
/// FORGET may arrive after the next write, which would then fail with ENOSPC).
#[test]
fn unlink_of_a_closed_file_frees_its_data_before_forget() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.remember(ino);
    f.vol.write(ino, 0, &vec![4u8; 3 * BS as usize]).unwrap();
    f.vol.release_file(ino, IoKind::Cached).unwrap();
    let staging = f.dir.path().join("staging").join(ino.to_string());
    assert!(staging.exists());
    f.vol.unlink(ROOT_INO, b"a").unwrap();
    assert!(f.meta.get_inode(ino).unwrap().is_some(), "the kernel still references it");
    assert!(f.meta.extents(ino, 0).unwrap().is_empty(), "its data is unreachable and freed");
    assert!(!staging.exists());
    f.vol.forget(ino, 1);
    assert!(f.meta.get_inode(ino).unwrap().is_none());
}

/// A read waiting for a block from the object store does not hold its file's lock: `open`,
/// `stat` and a write of the same file go on meanwhile (issue 9: four cold reads against an
/// unreachable store stopped the whole mount).
#[test]
fn a_slow_block_fetch_does_not_hold_the_file_lock() {
    let f = Fixture::new();
    let ino = f.file("a");
    f.vol.write(ino, 0, &vec![6u8; BS as usize]).unwrap();
    f.close_and_seal(ino);
    f.vol.open_file(ino, false).unwrap();
    let (entered, go) = f.blocks.hold_next_get();
    let vol = f.vol.clone();
    let reader = std::thread::spawn(move || vol.read(ino, 0, 16));
    entered.recv().unwrap();
    let (done_tx, done_rx) = channel();
    let vol = f.vol.clone();
    let writer = std::thread::spawn(move || {
        vol.open_file(ino, true).unwrap();
        vol.write(ino, 0, b"new").unwrap();
        vol.getattr(ino).unwrap();
        done_tx.send(()).unwrap();
    });
    let unblocked = done_rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok();
    go.send(()).unwrap();
    writer.join().unwrap();
    let got = reader.join().unwrap().unwrap();
    assert!(unblocked, "open/write/stat of the file waited for the fetch");
    assert!(got == vec![6u8; 16] || &got[..3] == b"new", "{got:?}");
}
