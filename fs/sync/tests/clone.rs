//! Clone: metadata from the layers, data fetched block by block on first read, verified
//! (invariant 5), cached within a size limit (invariant 7), and the clone's own branch.

mod common;

use hybridfs_blocks::FileBlockStore;
use hybridfs_cloud::{Corruption, FaultPlan, Faulty, MemStore, ObjectStore};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::ROOT_INO;
use hybridfs_core::{FsError, Volume, VolumeOptions};
use hybridfs_sync::clone::import;
use hybridfs_sync::lazy::LazyStore;
use hybridfs_sync::{push, Remote};
use common::{noise, read, volume, write_file};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const MIB: usize = 1 << 20;

struct Clone {
    vol: Arc<Volume>,
    meta: Arc<MetaStore>,
    lazy: Arc<LazyStore>,
    _dir: tempfile::TempDir,
}

fn clone_of(store: Arc<dyn ObjectStore>, source: &str, branch: &str, cap: Option<u64>) -> Clone {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    clone_with_cache(store, source, branch, cap, dir, &cache)
}

fn clone_with_cache(
    store: Arc<dyn ObjectStore>,
    source: &str,
    branch: &str,
    cap: Option<u64>,
    dir: tempfile::TempDir,
    cache: &std::path::Path,
) -> Clone {
    let meta = Arc::new(MetaStore::memory());
    let remote = Remote::new(store.clone(), "vol");
    import(&meta, &remote, source, branch).unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(cache).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store, "vol"), meta.clone(), cap).unwrap());
    let opts = VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    let vol = Volume::open(meta.clone(), lazy.clone(), opts).unwrap();
    Clone { vol, meta, lazy, _dir: dir }
}

#[test]
fn a_clone_downloads_metadata_first_and_each_block_when_read() {
    let home = volume();
    let big = noise(1, 4 * MIB);
    write_file(&home.vol, "big", 0, &big);
    let smalls: Vec<Vec<u8>> = (0..10).map(|i| noise(10 + i, 20_000)).collect();
    for (i, s) in smalls.iter().enumerate() {
        write_file(&home.vol, &format!("s{i}"), 0, s);
    }
    write_file(&home.vol, "inline", 0, b"tiny");
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();

    let c = clone_of(store, "main", "node", None);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 0, "nothing but metadata up front");
    assert_eq!(read(&c.vol, "inline").unwrap(), b"tiny");
    assert_eq!(read(&c.vol, "s3").unwrap(), smalls[3]);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 1, "one small block, fetched as a range of its pack");
    assert_eq!(read(&c.vol, "big").unwrap(), big);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 5);
    assert_eq!(read(&c.vol, "big").unwrap(), big);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 5, "cached: read twice, fetched once");
}

#[test]
fn a_bad_object_in_the_store_is_an_error_naming_the_block_never_wrong_bytes() {
    let home = volume();
    write_file(&home.vol, "big", 0, &noise(2, 2 * MIB));
    let plan = FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(Faulty::new(MemStore::new(), plan.clone()));
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let c = clone_of(store, "main", "node", None);
    plan.corrupt_reads("/blocks/", Corruption::FlipByte);
    match read(&c.vol, "big") {
        Err(FsError::CorruptBlock { id, .. }) => assert_eq!(id.to_hex().len(), 64),
        other => panic!("invariant 5: a corrupt object must fail the read, got {:?}", other.map(|b| b.len())),
    }
    assert!(c.vol.metrics.snapshot().corrupt_block_ids.len() == 1, "and a metric names it");
    plan.heal();
    assert_eq!(read(&c.vol, "big").unwrap(), noise(2, 2 * MIB), "a good copy reads once the store is fixed");
}

#[test]
fn the_cache_stays_under_its_limit_and_never_drops_unpushed_blocks() {
    let home = volume();
    let data = noise(3, 10 * MIB);
    write_file(&home.vol, "big", 0, &data);
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let cap = 3 * MIB as u64 + 100;
    let c = clone_of(store.clone(), "main", "node", Some(cap));
    // A block written on the clone and not pushed yet.
    let mine = noise(4, MIB);
    let ino = write_file(&c.vol, "mine", 0, &mine);
    c.vol.seal_inode(ino).unwrap();
    assert_eq!(read(&c.vol, "big").unwrap(), data);
    assert!(
        c.lazy.cached_bytes() <= cap + MIB as u64 + 64,
        "invariant 7: cache {} over the limit {cap} by more than one block",
        c.lazy.cached_bytes()
    );
    assert_eq!(read(&c.vol, "mine").unwrap(), mine, "the unpushed block is still here");
    assert_eq!(read(&c.vol, "big").unwrap(), data, "evicted blocks come back from the store");

    // The clone pushes its own branch: only its change, naming where it forked.
    let remote = Remote::new(store.clone(), "vol");
    let r = push(&c.vol, &remote, "node", &|_| {}).unwrap();
    assert_eq!(r.blocks_uploaded, 1, "{r:?}");
    assert_eq!(remote.layer("node", 1).unwrap().parent, Some(("main".to_string(), 1)));
    let second = clone_of(store, "node", "node2", None);
    assert_eq!(read(&second.vol, "mine").unwrap(), mine, "a clone of the node's branch has its change");
    assert_eq!(read(&second.vol, "big").unwrap(), data, "and what it forked from");
}

#[test]
fn pull_brings_a_clone_forward_unless_both_sides_changed_the_same_record() {
    let home = volume();
    write_file(&home.vol, "a", 0, &noise(7, 100_000));
    write_file(&home.vol, "b", 0, &noise(8, 100_000));
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let c = clone_of(store.clone(), "main", "node", None);

    // Home changes a, the clone writes a new file: no record changed on both sides.
    write_file(&home.vol, "a", 10, &[1u8; 10]);
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    write_file(&c.vol, "mine", 0, b"node data");
    let r = hybridfs_sync::clone::pull(c.vol.meta(), &remote).unwrap();
    assert_eq!((r.from_seq, r.to_seq), (1, 2));
    let mut want = noise(7, 100_000);
    want[10..20].fill(1);
    assert_eq!(read(&c.vol, "a").unwrap(), want, "the clone sees home's change");
    assert_eq!(read(&c.vol, "mine").unwrap(), b"node data", "and keeps its own");
    assert!(hybridfs_sync::clone::pull(c.vol.meta(), &remote).unwrap().up_to_date);

    // Both change b: refused, nothing applied (invariant 6: no local change is lost).
    write_file(&home.vol, "b", 0, &[2u8; 10]);
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    write_file(&c.vol, "b", 0, &[3u8; 10]);
    let err = hybridfs_sync::clone::pull(c.vol.meta(), &remote).unwrap_err();
    assert!(err.to_string().contains("changed both here and on branch main"), "{err}");
    assert_eq!(&read(&c.vol, "b").unwrap()[..10], &[3u8; 10], "the local change stays");
}

#[test]
fn cloning_again_fetches_only_what_changed_since() {
    let home = volume();
    write_file(&home.vol, "big", 0, &noise(9, 6 * MIB));
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let shared = tempfile::tempdir().unwrap();
    let first = clone_with_cache(store.clone(), "main", "node", None, tempfile::tempdir().unwrap(), shared.path());
    assert_eq!(read(&first.vol, "big").unwrap().len(), 6 * MIB);
    assert_eq!(first.lazy.fetched.load(Ordering::Relaxed), 6);

    // A day later: one block changed at home; the node clones again into a new volume.
    write_file(&home.vol, "big", (2 * MIB + 5) as u64, b"changed");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let again = clone_with_cache(store, "main", "node-2", None, tempfile::tempdir().unwrap(), shared.path());
    let mut want = noise(9, 6 * MIB);
    want[2 * MIB + 5..2 * MIB + 12].copy_from_slice(b"changed");
    assert_eq!(read(&again.vol, "big").unwrap(), want);
    assert_eq!(again.lazy.fetched.load(Ordering::Relaxed), 1, "only the changed block is downloaded");
}

#[test]
fn an_encrypted_volume_shows_the_store_neither_content_nor_block_ids() {
    use hybridfs_sync::crypt::Cipher;
    let home = volume();
    let secret = b"model weights: the secret sauce ".repeat(40_000);
    write_file(&home.vol, "weights", 0, &secret);
    let store = Arc::new(MemStore::new());
    let key = Arc::new(Cipher::new(&[42; 32]));
    let remote = Remote::new(store.clone(), "vol").with_cipher(Some(key.clone()));
    push(&home.vol, &remote, "main", &|_| {}).unwrap();

    // Invariant 8: nothing readable, no content hash, in any object or name.
    let ino = home.vol.lookup(ROOT_INO, b"weights").unwrap().ino;
    let ids: Vec<String> = home
        .vol
        .meta()
        .extents(ino, 0)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e {
            hybridfs_core::types::Extent::Sealed { id, .. } => Some(id.to_hex()),
            _ => None,
        })
        .collect();
    assert!(!ids.is_empty());
    for k in store.list("").unwrap() {
        assert!(ids.iter().all(|id| !k.contains(id.as_str())), "a block id is visible in the name {k}");
        let (body, _) = store.get(&k).unwrap();
        assert!(!body.windows(12).any(|w| w == b"secret sauce"), "plaintext in {k}");
        assert!(!body.windows(6).any(|w| w == b"\"seq\":"), "a readable head in {k}");
    }

    // The key opens it; another key does not.
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    import(&meta, &remote, "main", "node").unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store.clone(), "vol").with_cipher(Some(key)), meta.clone(), None).unwrap());
    let vol = Volume::open(meta, lazy, VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() }).unwrap();
    assert_eq!(read(&vol, "weights").unwrap(), secret);
    let wrong = Remote::new(store, "vol").with_cipher(Some(Arc::new(Cipher::new(&[7; 32]))));
    let err = import(&MetaStore::memory(), &wrong, "main", "node").unwrap_err();
    assert!(err.to_string().contains("decryption failed"), "{err}");
}

#[test]
fn a_clone_can_start_from_an_earlier_push() {
    let home = volume();
    write_file(&home.vol, "f", 0, b"first version of the file, pushed as layer 1");
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    write_file(&home.vol, "f", 0, b"SECOND");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let meta = MetaStore::memory();
    let r = hybridfs_sync::clone::import_at(&meta, &remote, "main", Some(1), "old").unwrap();
    assert_eq!(r.seq, 1);
    let ino = meta.lookup(ROOT_INO, b"f").unwrap().unwrap().ino;
    let inode = meta.get_inode(ino).unwrap().unwrap();
    assert_eq!(inode.inline.as_deref(), Some(&b"first version of the file, pushed as layer 1"[..]));
    assert!(hybridfs_sync::clone::import_at(&MetaStore::memory(), &remote, "main", Some(3), "x").is_err());
}

#[test]
fn a_large_push_writes_several_layers_and_moves_the_head_once() {
    let home = volume();
    let files: Vec<Vec<u8>> = (0..30).map(|i| noise(100 + i, 5_000 + i as usize * 100)).collect();
    for (i, f) in files.iter().enumerate() {
        write_file(&home.vol, &format!("f{i}"), 0, f);
    }
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    // At most 10 records per layer: 30 files of 4 records each need a dozen layers.
    let r = hybridfs_sync::push_chunked(&home.vol, &remote, "main", &|_| {}, 10).unwrap();
    assert!(r.seq >= 12, "{r:?}");
    let (head, _) = remote.head("main").unwrap().unwrap();
    assert_eq!(head.seq, r.seq);
    assert!(remote.layer("main", r.seq).unwrap().complete);
    assert!(!remote.layer("main", 1).unwrap().complete, "a part of a push");
    let c = clone_of(store.clone(), "main", "node", None);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), f);
    }
    let err = hybridfs_sync::clone::import_at(&MetaStore::memory(), &remote, "main", Some(2), "x").unwrap_err();
    assert!(err.to_string().contains("part of a larger push"), "{err}");
}

/// A pull applies a layer at a time in bounded batches (invariant 7). Interrupted after its
/// first batch (as a crash would leave it), the clone is refused until `pull` runs again and
/// finishes to the same head; then the tree is whole and the local change is still there
/// (invariant 6).
#[test]
fn an_interrupted_pull_is_finished_by_the_next_one_and_the_volume_waits_for_it() {
    let home = volume();
    write_file(&home.vol, "first", 0, b"one");
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let c = clone_of(store.clone(), "main", "node", None);
    // A local change to a file home leaves alone (a new name in the root would conflict with
    // home's new names: records, not merges, this stage).
    write_file(&c.vol, "first", 0, b"ONE");
    const FILES: usize = 3000;
    for i in 0..FILES {
        write_file(&home.vol, &format!("f{i:04}"), 0, format!("file {i}").as_bytes());
    }
    let pushed = hybridfs_sync::push_chunked(&home.vol, &remote, "main", &|_| {}, 2500).unwrap();
    assert!(pushed.seq >= 4, "the change spans several layers: {pushed:?}");

    let meta = c.meta.clone();
    let err = hybridfs_sync::clone::pull_stopping_after(&meta, &remote, Some(1)).unwrap_err();
    assert!(err.to_string().contains("stopped after 1 batches"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let reopen = || {
        let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
        let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
        LazyStore::new(own, cache, Remote::new(store.clone(), "vol"), meta.clone(), None)
    };
    let refused = reopen().err().expect("a clone with an unfinished pull is not opened");
    assert!(refused.to_string().contains("run `hybridctl pull` to finish it"), "{refused}");

    let done = hybridfs_sync::clone::pull(&meta, &remote).unwrap();
    assert_eq!(done.to_seq, pushed.seq, "{done:?}");
    assert!(done.records as usize >= 2 * FILES, "every new record applied: {done:?}");
    assert!(reopen().is_ok(), "the finished pull lets the volume open");
    for i in [0, 1234, FILES - 1] {
        assert_eq!(read(&c.vol, &format!("f{i:04}")).unwrap(), format!("file {i}").as_bytes());
    }
    assert_eq!(read(&c.vol, "first").unwrap(), b"ONE", "invariant 6: the local change stays");
    assert!(hybridfs_sync::clone::pull(&meta, &remote).unwrap().up_to_date);
}
