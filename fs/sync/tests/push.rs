//! Push: a volume (in-memory metadata, real block files) published to an object store.
//!
//! Invariant 4 (commit order: blocks → layer → head; an interrupted push leaves the old head
//! valid and resumes without re-uploading), invariant 3 (a push moves what changed, read from
//! the journal) and invariant 5 (a corrupt local block never leaves the node) are checked
//! against the in-memory store with fault injection; `s3.rs` repeats the main case against a
//! real S3 server.

mod common;

use common::{noise, volume, write_file};
use hybridfs_cloud::{Cond, FaultPlan, Faulty, MemStore, ObjectStore};
use hybridfs_core::types::{BlockId, Extent};
use hybridfs_sync::{push, Remote, SyncError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// Every block the layers of `branch` name must be in the store (alone or in a pack) and
/// decode to bytes with its id: the store never holds a head naming a missing block.
pub fn check_remote(remote: &Remote, branch: &str) -> BTreeSet<BlockId> {
    let (head, _) = remote.head(branch).unwrap().expect("head");
    let mut packed = BTreeMap::new();
    let mut named = BTreeSet::new();
    for seq in 1..=head.seq {
        let layer = remote.layer(branch, seq).unwrap();
        assert_eq!(layer.seq, seq);
        for p in layer.packed {
            packed.insert(p.id, (p.pack, p.offset, p.len));
        }
        for r in layer.records {
            if let Some(id) = hybridfs_core::record::sealed_block(&r.key, r.value.as_deref()).unwrap() {
                named.insert(id);
            }
        }
    }
    for id in &named {
        // A whole frame, or a delta resolved against its base (fs/sync/src/delta.rs).
        let frame = remote.fetch_frame(id, packed.get(id).copied()).unwrap_or_else(|e| panic!("block {id} in the store: {e}"));
        hybridfs_blocks::decode(id, &frame).unwrap_or_else(|e| panic!("block {id} in the store: {e}"));
    }
    named
}

fn remote(store: Arc<dyn ObjectStore>) -> Remote {
    Remote::new(store, "vol")
}

#[test]
fn a_push_uploads_what_changed_since_the_last_one_and_packs_small_blocks() {
    let f = volume();
    for i in 0..20 {
        write_file(&f.vol, &format!("small{i}"), 0, &noise(i, 10_000));
    }
    write_file(&f.vol, "big", 0, &noise(99, 3 * MIB));
    write_file(&f.vol, "tiny", 0, b"inline bytes travel as a block of their own");
    let r = remote(Arc::new(MemStore::new()));
    let first = push(&f.vol, &r, "main", &|_| {}).unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.blocks_uploaded, 24, "20 small blocks + 3 of the big file + tiny's inline bytes");
    assert_eq!(first.packs, 1, "the 21 small blocks travel in one pack");
    assert!(first.requests <= 1 + 3 + 1 + 2, "head read, 3 big blocks, 1 pack, layer, head: {first:?}");
    assert_eq!(check_remote(&r, "main").len(), 24);

    // Invariant 3: 100 bytes changed in one block: one block and a small layer move.
    write_file(&f.vol, "big", (MIB + MIB / 2) as u64, &[7u8; 100]);
    let second = push(&f.vol, &r, "main", &|_| {}).unwrap();
    assert_eq!(second.seq, 2);
    assert_eq!(second.blocks_uploaded, 1, "{second:?}");
    assert!(
        second.bytes_uploaded <= (1.25 * MIB as f64) as u64,
        "bytes sent {} must stay within 1.25x the changed block",
        second.bytes_uploaded
    );
    check_remote(&r, "main");

    let third = push(&f.vol, &r, "main", &|_| {}).unwrap();
    assert!(third.up_to_date, "nothing changed: {third:?}");
    assert_eq!(r.head("main").unwrap().unwrap().0.seq, 2);
    assert_eq!(common::snapshot_names(&f.vol), common::fork_bases(&f.vol, "main"), "a finished push leaves no snapshot behind but the fork base of the last push");
}

#[test]
fn an_interrupted_push_keeps_the_old_head_and_resumes_without_re_uploading() {
    let f = volume();
    write_file(&f.vol, "a", 0, &noise(1, 2 * MIB));
    let plan = FaultPlan::new();
    let store = Arc::new(Faulty::new(MemStore::new(), plan.clone()));
    let r = remote(store.clone());
    push(&f.vol, &r, "main", &|_| {}).unwrap();

    // Eight new 1 MiB blocks; the store dies after three of them arrived.
    write_file(&f.vol, "b", 0, &noise(2, 8 * MIB));
    plan.die_after_puts(3);
    let err = push(&f.vol, &r, "main", &|_| {}).unwrap_err();
    assert!(matches!(err, SyncError::Store(_)), "{err}");
    plan.heal();
    let (head, _) = r.head("main").unwrap().unwrap();
    assert_eq!(head.seq, 1, "invariant 4: the old head stays valid");
    check_remote(&r, "main");

    let before = plan.puts_done();
    let resumed = push(&f.vol, &r, "main", &|_| {}).unwrap();
    assert!(resumed.resumed, "{resumed:?}");
    assert_eq!(resumed.blocks_skipped, 3, "what arrived is not sent again: {resumed:?}");
    assert_eq!(resumed.blocks_uploaded, 5);
    assert_eq!(plan.puts_done() - before, 5 + 2, "5 blocks, the layer, the head");
    assert_eq!(r.head("main").unwrap().unwrap().0.seq, 2);
    check_remote(&r, "main");
}

#[test]
fn a_head_moved_by_another_writer_is_never_overwritten() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let a = volume();
    write_file(&a.vol, "x", 0, &noise(3, 100_000));
    push(&a.vol, &remote(store.clone()), "main", &|_| {}).unwrap();

    // A second node that never pulled cannot push to the same branch.
    let b = volume();
    write_file(&b.vol, "y", 0, &noise(4, 100_000));
    let err = push(&b.vol, &remote(store.clone()), "main", &|_| {}).unwrap_err();
    assert!(matches!(err, SyncError::BranchMoved { remote: 1, local: 0, .. }), "{err}");
    // It may push its own branch.
    push(&b.vol, &remote(store.clone()), "node-b", &|_| {}).unwrap();

    // Someone rewrites main's head behind a's back: a's conditional put must lose.
    let r = remote(store.clone());
    let (head, etag) = r.head("main").unwrap().unwrap();
    let mut moved = head.clone();
    moved.pushed_at += 1;
    store.put(&r.head_key("main"), &serde_json::to_vec(&moved).unwrap(), Cond::IfMatch(etag)).unwrap();
    write_file(&a.vol, "x", 0, &noise(5, 100_000));
    let err = push(&a.vol, &r, "main", &|_| {}).unwrap_err();
    assert!(matches!(err, SyncError::BranchMoved { .. }), "{err}");
    assert_eq!(r.head("main").unwrap().unwrap().0, moved, "the other writer's head is intact");
}

#[test]
fn a_corrupt_local_block_is_never_uploaded() {
    let f = volume();
    let ino = write_file(&f.vol, "c", 0, &noise(6, MIB));
    f.vol.seal_inode(ino).unwrap();
    let id = match f.vol.meta().get_extent(ino, 0).unwrap() {
        Some(Extent::Sealed { id, .. }) => id,
        other => panic!("block 0 should be sealed: {other:?}"),
    };
    let path = f.dir.path().join("blocks").join(&id.to_hex()[..2]).join(id.to_hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let store = Arc::new(MemStore::new());
    let err = push(&f.vol, &remote(store.clone()), "main", &|_| {}).unwrap_err();
    assert!(err.to_string().contains(&id.to_hex()), "invariant 5: the error names the block: {err}");
    assert!(store.list("").unwrap().iter().all(|k| !k.contains("/blocks/")), "nothing wrong was uploaded");
    assert!(remote(store).head("main").unwrap().is_none());
}

#[test]
fn fsck_remote_names_missing_and_corrupt_blocks() {
    let f = volume();
    write_file(&f.vol, "a", 0, &noise(11, 3 << 20));
    let store = Arc::new(MemStore::new());
    let r = remote(store.clone());
    push(&f.vol, &r, "main", &|_| {}).unwrap();
    let clean = hybridfs_sync::check_remote(&r, "main", true).unwrap();
    assert!(clean.problems.is_empty() && clean.verified == 3, "{clean:?}");
    let keys: Vec<String> = store.list("vol/blocks/").unwrap();
    let (frame, _) = store.get(&keys[0]).unwrap();
    let mut bad = frame.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    store.put(&keys[0], &bad, Cond::None).unwrap();
    store.delete(&keys[1]).unwrap();
    let quick = hybridfs_sync::check_remote(&r, "main", false).unwrap();
    assert_eq!(quick.problems.len(), 1, "without --verify only the missing one shows: {quick:?}");
    let full = hybridfs_sync::check_remote(&r, "main", true).unwrap();
    assert_eq!(full.problems.len(), 2, "invariant 5: the corrupt one too: {full:?}");
    assert!(full.problems.iter().any(|p| p.contains(&keys[0][11..])), "names the block: {full:?}");
}
