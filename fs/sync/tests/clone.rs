//! Clone: metadata from the layers, data fetched block by block on first read, verified
//! (invariant 5), cached within a size limit (invariant 7), and the clone's own branch.

mod common;

use hybridfs_blocks::FileBlockStore;
use hybridfs_cloud::{Corruption, FaultPlan, Faulty, MemStore, ObjectStore};
use hybridfs_core::meta::{Key, MetaStore};
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
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 1, "a small file's bytes are a block of their own, fetched when read");
    assert_eq!(c.lazy.packs_fetched.load(Ordering::Relaxed), 1, "with its whole pack");
    assert_eq!(read(&c.vol, "s3").unwrap(), smalls[3]);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 1, "another small file of the pack: already here, nothing fetched");
    assert_eq!(read(&c.vol, "big").unwrap(), big);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 5);
    assert_eq!(read(&c.vol, "big").unwrap(), big);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 5, "cached: read twice, fetched once");
}

/// A clone of a volume holding `big` (2 MiB of `noise(seed)`), pushed to a store whose faults
/// the returned plan sets.
fn clone_of_faulty_store(seed: u64) -> (Arc<FaultPlan>, Clone) {
    let home = volume();
    write_file(&home.vol, "big", 0, &noise(seed, 2 * MIB));
    let plan = FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(Faulty::new(MemStore::new(), plan.clone()));
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    (plan, clone_of(store, "main", "node", None))
}

#[test]
fn a_bad_object_in_the_store_is_an_error_naming_the_block_never_wrong_bytes() {
    let (plan, c) = clone_of_faulty_store(2);
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
fn a_store_that_does_not_serve_a_block_is_an_io_error_not_a_corrupt_block() {
    let (plan, c) = clone_of_faulty_store(4);
    plan.kill();
    match read(&c.vol, "big") {
        Err(FsError::Io { context, .. }) => assert!(context.starts_with("fetch block "), "{context}"),
        other => panic!("a store outage fails the read with an I/O error, got {:?}", other.map(|b| b.len())),
    }
    assert!(c.vol.metrics.snapshot().corrupt_block_ids.is_empty(), "an outage is not counted as a corrupt block");
    plan.heal();
    assert_eq!(read(&c.vol, "big").unwrap(), noise(4, 2 * MIB), "the blocks read once the store is back");
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
    let first = b"first version of the file, pushed as layer 1";
    let want = hybridfs_core::types::Extent::Sealed { id: hybridfs_blocks::block_id(first), len: first.len() as u32 };
    assert_eq!(meta.get_extent(ino, 0).unwrap(), Some(want), "layer 1's bytes, as the block published for them");
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

/// Small files keep their bytes in their inode records at home; a push publishes those bytes
/// as packed blocks and the layer carries only metadata, so a clone of many small files
/// downloads no file data (invariant 3: clone cost follows the metadata) and fetches each
/// file's block when it is read, verified (invariant 5). Home keeps its files inline.
#[test]
fn small_files_are_published_as_packed_blocks_and_a_clone_fetches_none_up_front() {
    let home = volume();
    let files: Vec<Vec<u8>> = (0..400u64).map(|i| noise(1000 + i, 1 + (i as usize * 37) % 4096)).collect();
    for (i, f) in files.iter().enumerate() {
        write_file(&home.vol, &format!("f{i}"), 0, f);
    }
    write_file(&home.vol, "same-a", 0, b"twin");
    write_file(&home.vol, "same-b", 0, b"twin");
    let data_bytes: usize = files.iter().map(Vec::len).sum();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let r = push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    assert_eq!(r.blocks_uploaded, 401, "one block per distinct small file: {r:?}");
    assert!(r.packs >= 1 && r.packs <= 2, "small blocks go into packs: {r:?}");
    let layer_bytes: u64 = store.list("vol/branches/main/layers/").unwrap().iter().map(|k| store.get(k).unwrap().0.len() as u64).sum();
    assert!(layer_bytes * 10 < data_bytes as u64, "the layer is metadata only: {layer_bytes} bytes for {data_bytes} bytes of files");
    let mut inline_at_home = 0;
    home.vol.meta().for_each_inode(&mut |i| inline_at_home += u64::from(i.inline.as_ref().is_some_and(|b| !b.is_empty()))).unwrap();
    assert_eq!(inline_at_home, 402, "home keeps its small files inline");

    let c = clone_of(store, "main", "node", None);
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 0, "no file data at clone time");
    let mut inline_on_clone = 0;
    c.meta.for_each_inode(&mut |i| inline_on_clone += u64::from(i.inline.as_ref().is_some_and(|b| !b.is_empty()))).unwrap();
    assert_eq!(inline_on_clone, 0, "the clone holds no small file's bytes in its metadata");
    for (i, f) in files.iter().enumerate() {
        assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), f, "f{i}");
    }
    assert_eq!(read(&c.vol, "same-a").unwrap(), b"twin");
    assert_eq!(read(&c.vol, "same-b").unwrap(), b"twin");
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), r.packs, "each pack fetched once, whole, for all its files");
    assert_eq!(c.lazy.packs_fetched.load(Ordering::Relaxed), r.packs);
    let staging = hybridfs_core::staging::Staging::new(c._dir.path().join("staging")).unwrap();
    let fsck = hybridfs_core::fsck::check(&c.meta, c.vol.blocks(), &staging, c.vol.block_size(), false).unwrap();
    assert!(fsck.problems.is_empty(), "{:?}", fsck.problems);
}

/// A small file changed at home after a push (rewritten, emptied, deleted, grown past the
/// inline limit) reaches a clone of the next push as it is at home: the block published for
/// its earlier bytes never shows through.
#[test]
fn a_small_file_changed_after_a_push_clones_as_it_is_now() {
    let home = volume();
    for name in ["rewritten", "emptied", "deleted", "grown", "kept"] {
        write_file(&home.vol, name, 0, format!("first {name}").as_bytes());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    write_file(&home.vol, "rewritten", 0, b"second");
    let emptied = home.vol.lookup(ROOT_INO, b"emptied").unwrap().ino;
    home.vol.setattr(emptied, hybridfs_core::SetAttr { size: Some(0), ..Default::default() }).unwrap();
    home.vol.unlink(ROOT_INO, b"deleted").unwrap();
    let grown = noise(7, 3 * MIB / 2);
    write_file(&home.vol, "grown", 0, &grown);
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    // Grown: extended again by a hole past its old bytes, which must read as zeros.
    let g = home.vol.lookup(ROOT_INO, b"grown").unwrap().ino;
    home.vol.setattr(emptied, hybridfs_core::SetAttr { size: Some(100), ..Default::default() }).unwrap();
    home.vol.setattr(g, hybridfs_core::SetAttr { size: Some(2 * MIB as u64), ..Default::default() }).unwrap();
    push(&home.vol, &remote, "main", &|_| {}).unwrap();

    let c = clone_of(store, "main", "node", None);
    assert_eq!(read(&c.vol, "rewritten").unwrap(), b"secondrewritten");
    assert_eq!(read(&c.vol, "rewritten").unwrap(), read(&home.vol, "rewritten").unwrap());
    assert_eq!(read(&c.vol, "emptied").unwrap(), vec![0u8; 100], "truncated to nothing, then extended: zeros");
    assert!(c.vol.lookup(ROOT_INO, b"deleted").is_err());
    let mut want = grown.clone();
    want.resize(2 * MIB, 0);
    assert_eq!(read(&c.vol, "grown").unwrap(), want);
    assert_eq!(read(&c.vol, "kept").unwrap(), b"first kept");
    let staging = hybridfs_core::staging::Staging::new(c._dir.path().join("staging")).unwrap();
    let fsck = hybridfs_core::fsck::check(&c.meta, c.vol.blocks(), &staging, c.vol.block_size(), false).unwrap();
    assert!(fsck.problems.is_empty(), "{:?}", fsck.problems);
}

/// Replace layer 1 of `main` (the only one) by `edit` of it, under its new key, and point the
/// head at it.
fn rewrite_layer(store: &Arc<dyn ObjectStore>, format: u32, edit: impl FnOnce(&mut hybridfs_sync::Layer)) {
    let remote = Remote::new(store.clone(), "vol");
    let (mut head, etag) = remote.head("main").unwrap().unwrap();
    assert_eq!(head.seq, 1);
    let mut layer = remote.layer("main", 1).unwrap();
    edit(&mut layer);
    let body = match format {
        2 => hybridfs_core::layer::encode_format_2(&layer),
        _ => hybridfs_core::layer::encode(&layer).unwrap(),
    };
    let r = remote.layer_ref_for("main", 1, &body);
    store.put(&r.key, &body, hybridfs_cloud::Cond::None).unwrap();
    (head.layer, head.hash) = (r.key, r.hash);
    store.put(&remote.head_key("main"), &serde_json::to_vec(&head).unwrap(), hybridfs_cloud::Cond::IfMatch(etag)).unwrap();
}

/// Layers pushed before small files became blocks carry their bytes in the inode records
/// (and a tombstone for block 0), in layer format 2: they still clone, as inline files.
#[test]
fn a_layer_with_inline_bytes_in_its_inode_records_still_clones() {
    let home = volume();
    write_file(&home.vol, "small", 0, b"inline bytes");
    let big = noise(3, MIB + 5);
    write_file(&home.vol, "big", 0, &big);
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let small = home.vol.lookup(ROOT_INO, b"small").unwrap().ino;
    let meta = home.vol.meta();
    rewrite_layer(&store, 2, |layer| {
        for r in &mut layer.records {
            match r.key {
                Key::Inode(i) if i == small => r.value = meta.raw_at(&r.key, hybridfs_core::meta::LIVE).unwrap(),
                Key::Extent(i, 0) if i == small => r.value = None,
                _ => {}
            }
        }
    });
    let c = clone_of(store, "main", "node", None);
    assert_eq!(c.meta.get_inode(small).unwrap().unwrap().inline.as_deref(), Some(&b"inline bytes"[..]));
    assert_eq!(read(&c.vol, "small").unwrap(), b"inline bytes");
    assert_eq!(read(&c.vol, "big").unwrap(), big);
}

/// A record of a layer that does not decode stops the clone with an error naming the record
/// and the layer; it is never skipped (its block would silently go missing).
#[test]
fn a_record_that_does_not_decode_is_an_error_naming_it() {
    let home = volume();
    let ino = write_file(&home.vol, "f", 0, &noise(4, 10_000));
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    rewrite_layer(&store, 3, |layer| {
        let r = layer.records.iter_mut().find(|r| r.key == Key::Extent(ino, 0)).expect("block 0 of f");
        r.value = Some(vec![7, 7, 7]);
    });
    let remote = Remote::new(store, "vol");
    let err = import(&MetaStore::memory(), &remote, "main", "node").unwrap_err().to_string();
    assert!(err.contains(&format!("Extent({ino}, 0)")) && err.contains("layer 1 of branch main"), "{err}");
    let check = hybridfs_sync::check_remote(&remote, "main", false).unwrap();
    assert!(check.problems.iter().any(|p| p.contains(&format!("Extent({ino}, 0)"))), "{:?}", check.problems);
}

/// Invariant 7: a layer is read as a stream and applied in batches; a layer of more records
/// than one batch clones whole (every record applied, counted against the layer), and the
/// clone's tree reads back.
#[test]
fn invariant_7_a_layer_larger_than_one_batch_is_applied_whole_in_batches() {
    let home = volume();
    const FILES: usize = 1500;
    for i in 0..FILES {
        write_file(&home.vol, &format!("f{i:04}"), 0, format!("file {i}").as_bytes());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let remote = Remote::new(store.clone(), "vol");
    let layer = remote.layer("main", 1).unwrap();
    assert!(layer.records.len() > hybridfs_sync::clone::BATCH, "one layer of {} records", layer.records.len());
    let meta = MetaStore::memory();
    let report = import(&meta, &remote, "main", "node").unwrap();
    assert_eq!((report.layers, report.records), (1, layer.records.len() as u64), "every record applied: {report:?}");
    assert_eq!(meta.usage().unwrap().files, home.vol.meta().usage().unwrap().files);
    let c = clone_of(store, "main", "node", None);
    for i in (0..FILES).step_by(97).chain([FILES - 1]) {
        assert_eq!(read(&c.vol, &format!("f{i:04}")).unwrap(), format!("file {i}").as_bytes());
    }
}

/// Invariant 5: a layer whose stored bytes were cut short (and renamed to match, so the hash
/// check passes) is an error naming the layer: never a clone of fewer records.
#[test]
fn invariant_5_a_truncated_layer_is_an_error_naming_it_never_a_shorter_clone() {
    let home = volume();
    for i in 0..50 {
        write_file(&home.vol, &format!("f{i}"), 0, b"x");
    }
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let remote = Remote::new(store.clone(), "vol");
    let (mut head, etag) = remote.head("main").unwrap().unwrap();
    let (body, _) = store.get(&head.layer).unwrap();
    let cut = &body[..body.len() - 40];
    let r = remote.layer_ref_for("main", 1, cut);
    store.put(&r.key, cut, hybridfs_cloud::Cond::None).unwrap();
    (head.layer, head.hash) = (r.key, r.hash);
    store.put(&remote.head_key("main"), &serde_json::to_vec(&head).unwrap(), hybridfs_cloud::Cond::IfMatch(etag)).unwrap();
    let err = import(&MetaStore::memory(), &remote, "main", "node").unwrap_err().to_string();
    assert!(err.contains("layer 1 of branch main"), "{err}");
}

/// Every row of every column family of `kv` (a free-list row's value is the time its block's
/// count reached zero: only its presence is compared).
fn all_rows(kv: &dyn hybridfs_core::kv::Kv) -> Vec<(hybridfs_core::kv::Cf, Vec<u8>, Vec<u8>)> {
    use hybridfs_core::kv::Cf;
    let mut rows = Vec::new();
    for cf in Cf::ALL {
        kv.scan(cf, &[], None, &mut |k, v| {
            rows.push((cf, k.to_vec(), if cf == Cf::Free { Vec::new() } else { v.to_vec() }));
            Ok(true)
        })
        .unwrap();
    }
    rows
}

/// A branch of several pushes, each overriding the one before: files rewritten (a block loses
/// its last reference), truncated, deleted (tombstones), hard-linked, renamed across
/// directories and pushes, a directory renamed and one removed, xattrs set and removed; the
/// first push split into layers of 1,000 records, so one file's records span layers, and
/// longer than a batch. Then a clone
/// of it writes and pushes a branch of its own (a chain through its parent).
fn branch_with_history(store: &Arc<dyn ObjectStore>) {
    use hybridfs_core::types::Kind;
    use hybridfs_core::{Caller, NewNode, RenameFlags, SetAttr, XattrMode};
    let home = volume();
    let v = &home.vol;
    let who = Caller { uid: 0, gid: 0 };
    let dir = |name: &str| v.create_node(ROOT_INO, name.as_bytes(), NewNode { kind: Kind::Dir, perm: 0o755, rdev: 0, target: vec![] }, who).unwrap().ino;
    let remote = Remote::new(store.clone(), "vol");
    let (d1, d2) = (dir("d1"), dir("d2"));
    dir("gone");
    for i in 0..12 {
        write_file(v, &format!("f{i}"), 0, &noise(i, if i % 3 == 0 { 70_000 } else { 900 }));
    }
    // More records than one batch: the files above are loaded in the first batch, their
    // changes in a later one.
    for i in 0..1100 {
        write_file(v, &format!("p{i}"), 0, format!("filler {i}").as_bytes());
    }
    let f0 = v.lookup(ROOT_INO, b"f0").unwrap().ino;
    v.link(f0, d1, b"f0-link").unwrap();
    v.setxattr(f0, b"user.a", b"1", XattrMode::Any).unwrap();
    v.setxattr(f0, b"user.b", b"2", XattrMode::Any).unwrap();
    hybridfs_sync::push_chunked(v, &remote, "main", &|_| {}, 1000).unwrap();

    write_file(v, "f1", 0, &noise(101, 800)); // rewritten: its old block is unreferenced
    write_file(v, "f3", 0, &noise(103, 90_000));
    v.setattr(v.lookup(ROOT_INO, b"f6").unwrap().ino, SetAttr { size: Some(10), ..Default::default() }).unwrap();
    v.unlink(ROOT_INO, b"f2").unwrap();
    v.unlink(ROOT_INO, b"f0").unwrap(); // still linked as d1/f0-link
    v.rename(ROOT_INO, b"f4", d2, b"f4-moved", RenameFlags::default()).unwrap();
    v.rename(ROOT_INO, b"f5", ROOT_INO, b"f7", RenameFlags::default()).unwrap(); // over f7
    v.removexattr(f0, b"user.a").unwrap();
    v.rmdir(ROOT_INO, b"gone").unwrap();
    push(v, &remote, "main", &|_| {}).unwrap();

    v.rename(ROOT_INO, b"d1", d2, b"d1-in-d2", RenameFlags::default()).unwrap();
    v.link(v.lookup(ROOT_INO, b"f8").unwrap().ino, ROOT_INO, b"f8-again").unwrap();
    v.unlink(d2, b"f4-moved").unwrap();
    write_file(v, "f9", 50_000, &noise(109, 30_000));
    write_file(v, "new", 0, b"created in the third push");
    push(v, &remote, "main", &|_| {}).unwrap();

    let c = clone_of(store.clone(), "main", "node", None);
    write_file(&c.vol, "f10", 0, &noise(110, 5_000));
    c.vol.unlink(ROOT_INO, b"f11").unwrap();
    c.vol.rename(ROOT_INO, b"f8", ROOT_INO, b"f8-node", RenameFlags::default()).unwrap();
    push(&c.vol, &Remote::new(store.clone(), "vol"), "node", &|_| {}).unwrap();
}

/// Invariants 1 and 2: a clone loaded in bulk (below the store's transactions, in its own
/// batches) holds exactly the rows a clone through ordinary transactions holds, in every
/// column family: the same live rows and versions, change journal, block reference counts,
/// free list, usage (as the sum of its rows), pushed blocks and orphans. So `fsck` finds what it found before, and no
/// block a version names is counted as unreferenced (the collector would delete it). Checked
/// on RocksDB (its own bulk writer) and on the in-memory engine (the default one through
/// transactions), for a branch and for a clone's branch chained through its parent.
#[test]
fn invariant_1_and_2_a_bulk_loaded_clone_holds_exactly_the_rows_of_a_transactional_one() {
    use hybridfs_sync::clone::{import_at, import_at_through_transactions};
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    branch_with_history(&store);
    let remote = Remote::new(store.clone(), "vol");
    let dir = tempfile::tempdir().unwrap();
    for source in ["main", "node"] {
        let mut clones = Vec::new();
        for bulk in [true, false] {
            let rocks: Arc<dyn hybridfs_core::kv::Kv> = Arc::new(
                hybridfs_meta::RocksKv::open(&dir.path().join(format!("{source}-{bulk}")), &hybridfs_meta::RocksOptions::default())
                    .unwrap(),
            );
            for kv in [rocks, Arc::new(hybridfs_core::kv::MemKv::default()) as Arc<dyn hybridfs_core::kv::Kv>] {
                let meta = MetaStore::new(kv.clone()).unwrap();
                let report = if bulk { import_at(&meta, &remote, source, None, "x") } else { import_at_through_transactions(&meta, &remote, source, None, "x") }
                    .unwrap();
                // Usage is compared as the sum it stands for: a bulk load writes the `usage`
                // row, transactions their thread's shard row (`usage/NN`).
                let rows: Vec<_> =
                    all_rows(&*kv).into_iter().filter(|r| !(r.0 == hybridfs_core::kv::Cf::Default && r.1.starts_with(b"usage"))).collect();
                clones.push(((report.records, meta.usage().unwrap()), rows));
            }
        }
        let (records, rows) = &clones[0];
        let families: std::collections::BTreeSet<_> = rows.iter().map(|r| r.0).collect();
        for cf in [hybridfs_core::kv::Cf::Refs, hybridfs_core::kv::Cf::Free, hybridfs_core::kv::Cf::Xattrs, hybridfs_core::kv::Cf::Pushed] {
            assert!(families.contains(&cf), "{source}: the branch exercises {cf:?} ({families:?})");
        }
        for (i, (n, other)) in clones.iter().enumerate().skip(1) {
            assert_eq!(n, records, "{source}: clone {i} (records, usage)");
            let diff: Vec<_> = rows.iter().zip(other).filter(|(a, b)| a != b).take(3).collect();
            assert!(diff.is_empty() && rows.len() == other.len(), "{source}: clone {i} differs ({} rows against {}): {diff:?}", other.len(), rows.len());
        }
    }
}

/// Invariant 5 with packs fetched whole: a pack whose bytes were damaged in the store (one
/// small file's range) does not match its name, so it is not split; its blocks are then
/// fetched one by one as ranges, each verified: the damaged file's read fails with a corrupt
/// block naming it, never wrong bytes, and every other file of the pack reads fine.
#[test]
fn a_damaged_pack_is_never_split_its_good_blocks_still_read_and_the_bad_one_fails() {
    let home = volume();
    let files: Vec<Vec<u8>> = (0..50u64).map(|i| noise(500 + i, 3000 + i as usize * 100)).collect();
    for (i, f) in files.iter().enumerate() {
        write_file(&home.vol, &format!("f{i}"), 0, f);
    }
    let store = Arc::new(MemStore::new());
    push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    let c = clone_of(store.clone(), "main", "node", None);
    let victim = hybridfs_blocks::block_id(&files[7]);
    let (pack, offset, len) = c.meta.pushed(&victim).unwrap().unwrap().expect("f7 is packed");
    let key = format!("vol/packs/{}", pack.to_hex());
    let (mut body, _) = store.get(&key).unwrap();
    body[(offset + len / 2) as usize] ^= 1;
    store.put(&key, &body, hybridfs_cloud::Cond::None).unwrap();

    match read(&c.vol, "f7") {
        Err(FsError::CorruptBlock { id, .. }) => assert_eq!(id, victim),
        other => panic!("invariant 5: the damaged block must fail, got {:?}", other.map(|b| b.len())),
    }
    for (i, f) in files.iter().enumerate().filter(|(i, _)| *i != 7) {
        assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), f, "f{i} shares the pack and reads fine");
    }
    assert_eq!(c.lazy.packs_fetched.load(Ordering::Relaxed), 0, "a pack that does not match its name is never split");
}

/// Readers of many blocks of one pack at the same time: the pack is fetched once, every
/// reader gets its own verified block (invariant 5).
#[test]
fn concurrent_readers_of_one_pack_fetch_it_once() {
    let files: Vec<Vec<u8>> = (0..64u64).map(|i| noise(900 + i, 5000)).collect();
    let (store, r) = pushed_files(&files);
    assert_eq!(r.packs, 1, "{r:?}");
    let c = clone_of(store, "main", "node", None);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (c, files) = (&c, &files);
            s.spawn(move || {
                for i in (t..64).step_by(8) {
                    assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), &files[i], "f{i}");
                }
            });
        }
    });
    assert_eq!(c.lazy.packs_fetched.load(Ordering::Relaxed), 1, "one GET of the pack for 64 files read by 8 threads");
}

/// A volume of large blocks fetches each block as parallel ranged GETs: the parts are put
/// back together and the whole frame is verified against the block's id before use
/// (invariant 5). A damaged part (a flipped byte, a short part) fails the block with a
/// corrupt-block error naming it, never wrong bytes; healed, the block reads.
#[test]
fn large_blocks_come_in_verified_ranged_parts_and_a_bad_part_fails_the_block() {
    let (plan, c) = clone_of_faulty_store(6);
    c.lazy.set_part_bytes(100_000);
    for how in [Corruption::FlipByte, Corruption::Truncate] {
        plan.corrupt_reads("/blocks/", how);
        match read(&c.vol, "big") {
            Err(FsError::CorruptBlock { id, .. }) => assert_eq!(id.to_hex().len(), 64),
            other => panic!("invariant 5: a bad part must fail the block ({how:?}), got {:?}", other.map(|b| b.len())),
        }
    }
    plan.heal();
    assert_eq!(read(&c.vol, "big").unwrap(), noise(6, 2 * MIB), "11 parts per 1 MiB block, reassembled in order");
    assert_eq!(c.lazy.fetched.load(Ordering::Relaxed), 2);
}

/// The delta objects the layers of `branch` name (decrypted), and every named block read
/// back through `fetch_frame` (deltas resolved, invariant 5).
fn deltas_in_store(remote: &Remote, branch: &str) -> Vec<hybridfs_sync::delta::Delta> {
    let (head, _) = remote.head(branch).unwrap().expect("head");
    let mut packed = std::collections::BTreeMap::new();
    let mut named = std::collections::BTreeSet::new();
    for seq in 1..=head.seq {
        let layer = remote.layer(branch, seq).unwrap();
        packed.extend(layer.packed.iter().map(|p| (p.id, (p.pack, p.offset, p.len))));
        for r in layer.records {
            named.extend(hybridfs_core::record::sealed_block(&r.key, r.value.as_deref()).unwrap());
        }
    }
    let mut deltas = Vec::new();
    for id in &named {
        let frame = remote.fetch_frame(id, packed.get(id).copied()).unwrap_or_else(|e| panic!("block {id}: {e}"));
        hybridfs_blocks::decode(id, &frame).unwrap();
        if let Some((pack, offset, len)) = packed.get(id) {
            let body = remote.store.get_range(&remote.pack_key(pack), *offset, *len).unwrap();
            let body = remote.open_frame(id, body).unwrap();
            if hybridfs_sync::delta::is_delta(&body) {
                deltas.push(hybridfs_sync::delta::Delta::decode(id, &body).unwrap());
            }
        }
    }
    deltas
}

/// Read `len` bytes of file `name` at `offset`.
fn read_at(vol: &Volume, name: &str, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
    let i = vol.lookup(ROOT_INO, name.as_bytes())?;
    let opened = vol.open_file(i.ino, false)?;
    let r = vol.read(i.ino, offset, len);
    vol.release_file(i.ino, opened.kind)?;
    r
}

/// 64 KiB written at an unaligned offset across the border of blocks 1 and 2 of `big` (4 MiB
/// of `noise(seed)`): what the file holds afterwards.
fn change_across_a_border(vol: &Volume, seed: u64) -> Vec<u8> {
    let mut want = noise(seed, 4 * MIB);
    let at = 2 * MIB - 20_000;
    let patch = noise(seed + 1000, 64 << 10);
    want[at..at + patch.len()].copy_from_slice(&patch);
    write_file(vol, "big", at as u64, &patch);
    want
}

#[test]
fn invariant_4_and_5_a_changed_block_travels_as_a_delta_and_clones_byte_for_byte() {
    for encrypted in [false, true] {
        let home = volume();
        write_file(&home.vol, "big", 0, &noise(30, 4 * MIB));
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let cipher = encrypted.then(|| Arc::new(hybridfs_sync::crypt::Cipher::new(&[9; 32])));
        let remote = Remote::new(store.clone(), "vol").with_cipher(cipher);
        push(&home.vol, &remote, "main", &|_| {}).unwrap();

        let want = change_across_a_border(&home.vol, 30);
        let second = push(&home.vol, &remote, "main", &|_| {}).unwrap();
        assert_eq!((second.blocks_uploaded, second.blocks_as_deltas, second.packs), (2, 2, 1), "{second:?}");
        assert!(second.bytes_uploaded < 80 << 10, "64 KiB written, {} bytes sent", second.bytes_uploaded);
        // Invariant 4: each delta names a base the store held before the layer naming the
        // delta's block was written (a block of the first push, a whole frame).
        let deltas = deltas_in_store(&remote, "main");
        assert_eq!(deltas.len(), 2);
        for d in &deltas {
            assert_eq!((d.depth, d.base_at), (1, None), "against the whole block of the first push");
            remote.fetch_frame(&d.base, None).expect("the base is in the store");
        }
        if !encrypted {
            let c = clone_of(store, "main", "node", None);
            assert_eq!(read(&c.vol, "big").unwrap(), want, "the clone reads the changed file byte for byte");
        }
    }
}

/// A home volume holding `big` (4 MiB of `noise(seed)`) pushed once to a store whose faults
/// the returned plan sets, then changed across a block border: what `big` holds now.
fn pushed_then_changed(seed: u64) -> (common::Fixture, Arc<FaultPlan>, Arc<dyn ObjectStore>, Remote, Vec<u8>) {
    let home = volume();
    write_file(&home.vol, "big", 0, &noise(seed, 4 * MIB));
    let plan = FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(Faulty::new(MemStore::new(), plan.clone()));
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let want = change_across_a_border(&home.vol, seed);
    (home, plan, store, remote, want)
}

#[test]
fn invariant_5_a_corrupt_delta_or_base_is_an_error_never_wrong_bytes() {
    for (damaged, how) in [("/packs/", Corruption::FlipByte), ("/packs/", Corruption::Truncate), ("/blocks/", Corruption::FlipByte)] {
        let (home, plan, store, remote, want) = pushed_then_changed(31);
        assert_eq!(push(&home.vol, &remote, "main", &|_| {}).unwrap().blocks_as_deltas, 2);

        let c = clone_of(store, "main", "node", None);
        plan.corrupt_reads(damaged, how);
        // Block 1 is a delta (in a pack) against the first push's block 1 (alone).
        match read_at(&c.vol, "big", MIB as u64, 4096) {
            Err(FsError::CorruptBlock { .. }) => {}
            other => panic!("invariant 5: a damaged {damaged} object ({how:?}) must fail the read, got {:?}", other.map(|b| b.len())),
        }
        assert!(!c.vol.metrics.snapshot().corrupt_block_ids.is_empty(), "a metric names the block");
        plan.heal();
        assert_eq!(read(&c.vol, "big").unwrap(), want, "the good copy reads once the store is fixed");
    }
}

#[test]
fn chains_of_deltas_are_bounded_and_a_clone_reads_the_end_of_one() {
    use hybridfs_sync::delta::MAX_CHAIN;
    let home = volume();
    let mut want = noise(32, MIB);
    write_file(&home.vol, "one", 0, &want);
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let remote = Remote::new(store.clone(), "vol");
    push(&home.vol, &remote, "main", &|_| {}).unwrap();
    let (mut as_delta, mut states) = (Vec::new(), Vec::new());
    for round in 0..MAX_CHAIN as u64 + 3 {
        let at = (round as usize * 70_001) % (MIB - 5000);
        let patch = noise(100 + round, 5000);
        want[at..at + 5000].copy_from_slice(&patch);
        write_file(&home.vol, "one", at as u64, &patch);
        let r = push(&home.vol, &remote, "main", &|_| {}).unwrap();
        assert_eq!(r.blocks_uploaded, 1);
        as_delta.push(r.blocks_as_deltas);
        states.push(want.clone());
    }
    // Deltas of depth 1..=MAX_CHAIN, then the block whole (a new chain), then deltas again.
    let mut expected = vec![1; MAX_CHAIN as usize];
    expected.extend([0, 1, 1]);
    assert_eq!(as_delta, expected);
    let deltas = deltas_in_store(&remote, "main");
    assert!(deltas.iter().all(|d| d.depth <= MAX_CHAIN), "no chain longer than the bound");
    assert_eq!(deltas.iter().map(|d| d.depth).max(), Some(MAX_CHAIN));
    let c = clone_of(store.clone(), "main", "node", None);
    assert_eq!(read(&c.vol, "one").unwrap(), want);
    // An earlier push: the end of the longest chain, resolved through all its bases.
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    hybridfs_sync::clone::import_at(&meta, &remote, "main", Some(1 + MAX_CHAIN as u64), "old").unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store, "vol"), meta.clone(), None).unwrap());
    let vol = Volume::open(meta, lazy, VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() }).unwrap();
    assert_eq!(read(&vol, "one").unwrap(), states[MAX_CHAIN as usize - 1], "layer {} holds the chain's last delta", 1 + MAX_CHAIN);
}

#[test]
fn invariant_4_an_interrupted_push_of_deltas_resumes_and_clones_byte_for_byte() {
    let (home, plan, store, remote, want) = pushed_then_changed(33);
    write_file(&home.vol, "new", 0, &noise(34, 2 * MIB));
    plan.die_after_puts(1);
    assert!(push(&home.vol, &remote, "main", &|_| {}).is_err());
    plan.heal();
    assert_eq!(remote.head("main").unwrap().unwrap().0.seq, 1, "the old head stays valid");
    let resumed = push(&home.vol, &remote, "main", &|_| {}).unwrap();
    assert!(resumed.resumed, "{resumed:?}");
    assert_eq!(resumed.blocks_uploaded + resumed.blocks_skipped, 4, "{resumed:?}");
    assert_eq!(deltas_in_store(&remote, "main").len(), 2);
    let c = clone_of(store, "main", "node", None);
    assert_eq!(read(&c.vol, "big").unwrap(), want);
    assert_eq!(read(&c.vol, "new").unwrap(), noise(34, 2 * MIB));
}

/// Files in a dir (not recursive).
fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default()
}

/// Block files in a cache dir (its fan-out directories).
fn block_files_in(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 2)
        .map(|e| files_in(&e.path()).len())
        .sum()
}

/// `files` as `f0`, `f1`, ... of a new home volume, pushed to a new in-memory store as branch
/// `main` (small files: packed).
fn pushed_files(files: &[Vec<u8>]) -> (Arc<dyn ObjectStore>, hybridfs_sync::PushReport) {
    let home = volume();
    for (i, f) in files.iter().enumerate() {
        write_file(&home.vol, &format!("f{i}"), 0, f);
    }
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let r = push(&home.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();
    (store, r)
}

/// A pack fetched whole is kept in the cache as ONE file (no file per block: creating one per
/// small file was most of a clone's extra cost per file), and every block read from it at its
/// recorded place is verified against its id (invariant 5): a second clone sharing the cache
/// reads every file with nothing fetched; a byte flipped in the cached pack never reaches a
/// reader (the damaged pack is dropped and fetched again); under a cache limit the cached packs
/// count like blocks and are evicted whole (invariant 7).
#[test]
fn a_pack_is_cached_as_one_file_verified_when_read_and_evicted_whole() {
    let files: Vec<Vec<u8>> = (0..140u64).map(|i| noise(1700 + i, 60_000 + i as usize * 100)).collect();
    let (store, r) = pushed_files(&files);
    assert_eq!(r.packs, 2, "{r:?}");
    let shared = tempfile::tempdir().unwrap();
    let read_all = |c: &Clone| {
        for (i, f) in files.iter().enumerate() {
            assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), f, "invariant 5: f{i}");
        }
    };

    let first = clone_with_cache(store.clone(), "main", "node", None, tempfile::tempdir().unwrap(), shared.path());
    read_all(&first);
    assert_eq!(first.lazy.packs_fetched.load(Ordering::Relaxed), 2);
    assert_eq!(first.lazy.fetched.load(Ordering::Relaxed), 2, "each pack fetched once for all its files");
    let packs = files_in(&shared.path().join("packs"));
    assert_eq!(packs.len(), 2, "one cache file per pack: {packs:?}");
    assert_eq!(block_files_in(shared.path()), 0, "no cache file per block");

    let again = clone_with_cache(store.clone(), "main", "node-2", None, tempfile::tempdir().unwrap(), shared.path());
    read_all(&again);
    assert_eq!(again.lazy.fetched.load(Ordering::Relaxed), 0, "a clone sharing the cache reads the cached packs");

    // Damage the cached copy of f42's pack inside f42's frame.
    let victim = hybridfs_blocks::block_id(&files[42]);
    let (pack, offset, len) = again.meta.pushed(&victim).unwrap().unwrap().expect("f42 is packed");
    let path = shared.path().join("packs").join(pack.to_hex());
    let mut body = std::fs::read(&path).unwrap();
    body[(offset + len / 2) as usize] ^= 1;
    std::fs::write(&path, &body).unwrap();
    let third = clone_with_cache(store.clone(), "main", "node-3", None, tempfile::tempdir().unwrap(), shared.path());
    read_all(&third);
    assert_eq!(third.lazy.fetched.load(Ordering::Relaxed), 1, "the damaged cached pack is fetched again, once");
    assert_eq!(std::fs::read(&path).unwrap().len(), body.len(), "and kept again");
    assert_ne!(std::fs::read(&path).unwrap(), body, "the good copy replaced the damaged one");

    // Under a limit of about one pack, blocks of packs come as their byte ranges: no pack is
    // fetched whole (it would be evicted at once, and fetched again for each of its blocks).
    let cap = (body.len() + 100) as u64;
    let limited = clone_of(store.clone(), "main", "node-4", Some(cap));
    read_all(&limited);
    assert_eq!(limited.lazy.packs_fetched.load(Ordering::Relaxed), 0, "no pack fetched whole under a limit below two packs");
    assert_eq!(limited.lazy.fetched.load(Ordering::Relaxed), files.len() as u64, "each block once, as its range");
    assert!(limited.lazy.cached_bytes() <= cap, "invariant 7: {} cached bytes over the limit {cap}", limited.lazy.cached_bytes());
}

/// Invariant 7 with cached packs: under a cache limit of two packs, reading the files of three
/// keeps at most two, each evicted whole, and every file still reads (verified, invariant 5).
#[test]
fn cached_packs_count_against_the_cache_limit_and_are_evicted_whole() {
    let files: Vec<Vec<u8>> = (0..360u64).map(|i| noise(3100 + i, 60_000 + i as usize * 100)).collect();
    let (store, r) = pushed_files(&files);
    assert!(r.packs >= 3, "{r:?}");
    let cap = 2 * hybridfs_sync::PACK_BYTES as u64 + 1024;
    let c = clone_of(store, "main", "node", Some(cap));
    for (i, f) in files.iter().enumerate() {
        assert_eq!(&read(&c.vol, &format!("f{i}")).unwrap(), f, "invariant 5: f{i}");
    }
    assert!(c.lazy.packs_fetched.load(Ordering::Relaxed) >= r.packs, "packs fetched whole");
    let kept = files_in(&c._dir.path().join("cache").join("packs")).len();
    assert!(kept <= 2, "invariant 7: {kept} packs kept under a limit of two");
    assert_eq!(block_files_in(&c._dir.path().join("cache")), 0, "no cache file per block");
    assert!(c.lazy.cached_bytes() <= cap, "invariant 7: {} cached bytes over the limit {cap}", c.lazy.cached_bytes());
}
