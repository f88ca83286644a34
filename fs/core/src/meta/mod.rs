//! The metadata store: typed, versioned records over a [`Kv`] engine.
//!
//! Core reads through typed getters and writes only through [`MetaStore::apply`], which turns a
//! batch of [`Mutation`]s into one atomic engine batch: either all of it is visible after a
//! crash, or none of it. `sync = true` makes the batch (and every batch before it) durable
//! against power loss before `apply` returns (invariant 1).
//!
//! # Versions, epochs and snapshots (invariants 2 and 3)
//!
//! Every write happens in the current epoch. A snapshot ends an epoch: it records the epoch
//! number and the volume moves on to the next one; that is all it costs. Reading "at epoch E"
//! returns, for each key, the newest version written in an epoch `<= E`.
//!
//! * The **live** family of a record kind (inodes, dentries, cookies, extents, xattrs) holds
//!   the newest version of each key, its value prefixed with the epoch it was written in, so
//!   the live tree reads with point lookups exactly as an unversioned store would.
//! * Writing a key whose live version is from an older epoch first moves that version to the
//!   **history** family; a deletion leaves a tombstone there. A key written again in the same
//!   epoch is simply overwritten: no snapshot can see the old value.
//! * Every versioned write adds a row to the **change journal**, keyed epoch first, so "what
//!   changed between epochs A and B" is one range scan (diff, push, and the collector).
//! * A history version is kept while some snapshot's epoch lies in the interval from its epoch
//!   to the epoch of the next newer version; the collector ([`MetaStore::collect_range`])
//!   removes the rest after a snapshot is deleted, reading only the journal rows of the epochs
//!   that snapshot covered.
//!
//! # Block references
//!
//! The count of a block is the number of stored extent versions (live and history) naming it,
//! maintained here inside the same atomic batch as the extents. A count that reaches zero puts
//! the block on the **free** list with the time; the volume's collector deletes the block file
//! after a grace period if nothing referenced it again meanwhile.
//!
//! # Modules
//!
//! * `codec` — the key layout (drawn in its module comment) and the encoding of keys and
//!   values: read it first.
//! * `read` — versioned reads (a record at an epoch, ranges merging live and history), the
//!   change journal.
//! * `catalogue` — counters, catalogues and whole-store scans (fsck, status).
//! * `apply` — [`MetaStore::apply`]: one batch of mutations, one atomic engine write.
//! * `bulk` — [`MetaStore::bulk_load`]: layer records into a new store, below transactions.
//! * `refs` — block reference counts ([`RefEntry`]) and the free list.
//! * `collect` — the version collector ([`MetaStore::collect_range`]).
//! * `hosts` — shared volumes: host leases, open rows, the collector's lease.

mod apply;
mod bulk;
mod catalogue;
mod codec;
mod collect;
mod hosts;
mod read;
mod refs;

pub use bulk::{BulkLoad, Records};
pub use hosts::{merge_data_fields, now_ms, HostRows};
pub use refs::RefEntry;

use crate::error::Result;
use crate::kv::{Kv, KvRead, MemKv};
use crate::types::{BlockId, Dentry, Extent, Inode, Ino, JournalEntry, SnapshotInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Read the live tree (the newest version of everything).
pub const LIVE: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    PutInode(Inode),
    /// A new inode whose number no record has ever had (a shared volume's numbers come from
    /// the database's counter, [`MetaStore::allocate_inos`]): written like `PutInode` but
    /// without reading its row first. Under PostgreSQL's `SERIALIZABLE` a read of an absent
    /// key locks the index page where the key would go, and another host's create inserting
    /// into that page then conflicts with this one.
    InsertInode(Inode),
    DelInode(Ino),
    /// Adds the entry under its name and under its cookie (the readdir order index).
    PutDentry { parent: Ino, name: Vec<u8>, dentry: Dentry },
    DelDentry { parent: Ino, name: Vec<u8>, cookie: u64 },
    PutExtent { ino: Ino, block: u64, extent: Extent },
    DelExtent { ino: Ino, block: u64 },
    PutXattr { ino: Ino, name: Vec<u8>, value: Vec<u8> },
    DelXattr { ino: Ino, name: Vec<u8> },
    /// A journal row for a block whose bytes changed without an extent write (inline data,
    /// truncation past the last extent).
    Journal(JournalEntry),
    PutOrphan(Ino),
    DelOrphan(Ino),
    /// Takes effect after the batch: every versioned write of the batch is in the old epoch.
    SetEpoch(u64),
    PutSnapshot(SnapshotInfo),
    DelSnapshot(String),
    /// Versions written in epochs `(from, to]` may have lost their last snapshot.
    PutGcRange { from: u64, to: u64 },
    DelGcRange { from: u64, to: u64 },
    /// The block file is gone; forget that it was free.
    DelFree(BlockId),
    /// Set the live version of `key` back to its version at epoch `at` (rollback).
    Restore { key: Key, at: u64 },
    /// Write the live version of `key` as given (None: delete it), e.g. from a layer.
    Raw { key: Key, value: Option<Vec<u8>> },
    /// Small named state of the layers above (push cursors); None deletes it.
    SetMeta { name: String, value: Option<Vec<u8>> },
    /// The block is stored in the object store (a push need not upload it again): alone, or
    /// inside pack `(pack, offset, len)`.
    MarkPushed { id: BlockId, packed: Option<(BlockId, u64, u64)> },
    /// A precondition (shared volumes): the live inode `ino` is still `inode` (None: absent)
    /// inside the batch's transaction, else the batch fails with [`crate::FsError::MetaStale`]
    /// and writes nothing. Put before the writes of the batch.
    ExpectInode(Ino, Option<Inode>),
    /// A precondition: the live entry `name` of `parent` is still `dentry` (None: absent).
    ExpectDentry { parent: Ino, name: Vec<u8>, dentry: Option<Dentry> },
    /// A precondition: the batch writes in this epoch (no other host ended it meanwhile).
    ExpectEpoch(u64),
    /// A precondition (shared volumes): the hosts with an open row for `ino` are exactly
    /// `hosts` (sorted), see `hosts.rs`.
    ExpectOpeners { ino: Ino, hosts: Vec<u64> },
    /// `host` holds `ino` open (a new file created open, in its create's batch).
    PutOpen { ino: Ino, host: u64 },
    /// Forget that `host` holds `ino` open (a host whose lease expired).
    DelOpen { ino: Ino, host: u64 },
    /// What the data path of an open file changed (size, mtime, ctime, inline bytes), merged
    /// into the live inode as it is inside the batch's transaction, so another host's chmod,
    /// chown, utimes or unlink in between stays (a shared volume's open files). An inode no
    /// longer stored is left gone.
    MergeInodeData(Inode),
    /// A precondition (shared volumes): the live inode `ino` exists and its `parent` is still
    /// `parent`. A directory rename expects this of every ancestor of its target directory:
    /// the ancestor check it made is then part of its transaction's reads, so two hosts
    /// moving two directories under each other cannot both commit (a cycle cut off from the
    /// root), see `volume/namespace.rs`.
    ExpectParent { ino: Ino, parent: Ino },
    /// What a namespace change on an open file of a shared volume changed in its record:
    /// the fields where `after` differs from `before` (and, with `data`, the data path's
    /// fields not yet written) are set in the live inode as it is inside the batch's
    /// transaction; the other fields stay as stored (another host's chmod, chown, utimes,
    /// size). An inode no longer stored is left gone.
    MergeInodeFields { before: Inode, after: Inode, data: bool },
    /// A precondition (shared volumes): the live extent of `block` of `ino` is still `extent`
    /// (None: a hole). The data path of an open file expects what its extent cache says of a
    /// block it changes, and a seal that the block is still staged: a truncate on another
    /// host in between fails the batch instead of bringing a removed block back.
    ExpectExtent { ino: Ino, block: u64, extent: Option<Extent> },
}

/// A directory entry as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub dentry: Dentry,
}

/// The record a change-journal row names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Key {
    Inode(Ino),
    Dentry(Ino, Vec<u8>),
    Cookie(Ino, u64),
    Extent(Ino, u64),
    Xattr(Ino, Vec<u8>),
}

/// One row of the change journal: `key` was written (or deleted) in `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub epoch: u64,
    pub key: Key,
}

/// What one collector pass over a range of epochs did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Distinct records examined.
    pub keys: u64,
    pub versions_removed: u64,
    /// Blocks whose last reference went, with their length in bytes.
    pub unreferenced: Vec<(BlockId, u64)>,
}

pub struct MetaStore {
    kv: Arc<dyn Kv>,
    /// The epoch as this process last saw it committed: set when the store opens and after
    /// every batch. Batches themselves read the stored epoch inside their transaction, unless
    /// the store is `exclusive`.
    epoch: Arc<AtomicU64>,
    /// Usage changes go in rows of their own ([`MetaStore::set_usage_deltas`]).
    usage_deltas: std::sync::atomic::AtomicBool,
    /// Nothing but this `MetaStore` writes through `kv` while it is open (see
    /// [`MetaStore::new_exclusive`]): `epoch` is then the stored epoch, and batches take it
    /// from there instead of reading it (a store read per batch: ~20% of a `chmod`'s time).
    exclusive: bool,
}

impl MetaStore {
    /// A store whose engine other `MetaStore`s may write through too (other hosts of a shared
    /// engine, or other instances over one engine in this process): every batch reads the
    /// epoch inside its transaction.
    pub fn new(kv: Arc<dyn Kv>) -> Result<Self> {
        let epoch = apply::stored_epoch(&*kv)?;
        Ok(MetaStore { kv, epoch: Arc::new(AtomicU64::new(epoch)), usage_deltas: Default::default(), exclusive: false })
    }

    /// A store that is the only writer of its engine while it is open (the caller's promise:
    /// RocksDB's lock file keeps other processes out, and its opener makes one `MetaStore` of
    /// it), over an engine that runs its transactions one at a time with their commit hooks
    /// before the next begins (RocksDB's and the memory engine's `serial_transact`). The
    /// epoch is written only by batches ([`Mutation::SetEpoch`]), whose commit hook sets
    /// [`MetaStore::epoch`] before the next batch starts, so a batch may take the epoch it
    /// writes in from there (invariant 2: a version replaced after a snapshot still goes to
    /// history, as the tests of this module check on an exclusive and a shared store).
    pub fn new_exclusive(kv: Arc<dyn Kv>) -> Result<Self> {
        Ok(MetaStore { exclusive: true, ..Self::new(kv)? })
    }

    /// An empty in-memory store, for unit tests (exclusive: [`MetaStore::new_exclusive`]).
    pub fn memory() -> Self {
        MetaStore::new_exclusive(Arc::new(MemKv::default())).expect("empty memory store")
    }

    /// The epoch writes happen in (as of this process's last batch).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The epoch as stored now (another host sharing the store may have moved it on since
    /// [`MetaStore::epoch`] last saw it).
    pub fn current_epoch(&self) -> Result<u64> {
        apply::stored_epoch(&*self.kv)
    }

    fn reader(&self) -> &dyn KvRead {
        &*self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Cf;
    use crate::types::{Kind, Usage};

    fn file(ino: Ino, size: u64) -> Inode {
        let mut i = Inode::new(ino, Kind::File, 0o644, 0, 0);
        i.size = size;
        i
    }

    /// A snapshot of epoch `e`, which ends it.
    fn end_epoch(m: &MetaStore, e: u64) {
        let info = SnapshotInfo { id: e, name: format!("s{e}"), epoch: e, created: 0, files: 0, bytes: 0, holds: vec![] };
        m.apply(vec![Mutation::PutSnapshot(info), Mutation::SetEpoch(e + 1)], false).unwrap();
    }

    fn sealed(n: u8) -> Extent {
        Extent::Sealed { id: BlockId([n; 32]), len: 100 }
    }

    /// An exclusive store (batches take the epoch from memory) and one that reads it in
    /// every batch: the tests of versions run on both.
    fn both_kinds() -> [MetaStore; 2] {
        [MetaStore::memory(), MetaStore::new(std::sync::Arc::new(MemKv::default())).unwrap()]
    }

    #[test]
    fn reads_at_an_epoch_see_the_newest_version_written_up_to_it() {
        // Invariant 2 on both kinds of store: a version replaced after a snapshot's epoch
        // ended stays readable at that epoch.
        for m in both_kinds() {
            reads_at_an_epoch(m);
        }
    }

    fn reads_at_an_epoch(m: MetaStore) {
        assert_eq!(m.epoch(), 1);
        m.apply(vec![Mutation::PutInode(file(7, 1))], false).unwrap();
        end_epoch(&m, 1);
        m.apply(vec![Mutation::PutInode(file(7, 2))], false).unwrap();
        m.apply(vec![Mutation::PutInode(file(7, 3))], false).unwrap();
        end_epoch(&m, 2);
        m.apply(vec![Mutation::DelInode(7)], false).unwrap();
        end_epoch(&m, 3);
        m.apply(vec![Mutation::PutInode(file(7, 4))], false).unwrap();
        let size = |at| m.get_inode_at(7, at).unwrap().map(|i| i.size);
        assert_eq!(size(0), None);
        assert_eq!(size(1), Some(1));
        assert_eq!(size(2), Some(3), "the same epoch overwrites in place");
        assert_eq!(size(3), None, "the deletion is a tombstone");
        assert_eq!(size(4), Some(4));
        assert_eq!(size(LIVE), Some(4));
        assert_eq!(m.max_ino().unwrap(), 7);
        assert_eq!(m.usage().unwrap(), Usage { files: 1, bytes: 4 });
    }

    /// `per` files of 10 bytes from each of `threads` threads (inodes 1000 + 100 t + i), one
    /// batch each.
    fn files_from_threads(m: &std::sync::Arc<MetaStore>, threads: u64, per: u64) {
        let threads: Vec<_> = (0..threads)
            .map(|t| {
                let m = std::sync::Arc::clone(m);
                std::thread::spawn(move || {
                    for i in 0..per {
                        m.apply(vec![Mutation::PutInode(file(1000 + t * 100 + i, 10))], false).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    /// Every row of every family (the shards' usage rows summed: which shard a thread adds to
    /// is chance).
    fn all_rows(m: &MetaStore) -> (Vec<(Cf, Vec<u8>, Vec<u8>)>, Usage) {
        let mut rows = Vec::new();
        for cf in Cf::ALL {
            m.kv.scan(cf, &[], None, &mut |k, v| {
                if !(cf == Cf::Default && k.starts_with(b"usage")) {
                    rows.push((cf, k.to_vec(), v.to_vec()));
                }
                Ok(true)
            })
            .unwrap();
        }
        (rows, m.usage().unwrap())
    }

    #[test]
    fn an_inserted_inode_writes_exactly_what_a_put_of_a_new_number_does() {
        // Invariants 2 and 3: `InsertInode` skips the read of the row (a shared volume's new
        // numbers come from the counter), so it must leave the same record, journal row and
        // usage as `PutInode` of a number never used, and later versions must keep history
        // the same way (a snapshot between the create and a change reads the first version).
        let (put, insert) = (MetaStore::memory(), MetaStore::memory());
        let (root, new, later) = (file(1, 0), file(7, 10), file(7, 30));
        for (m, first) in [(&put, Mutation::PutInode(new.clone())), (&insert, Mutation::InsertInode(new.clone()))] {
            m.apply(vec![Mutation::PutInode(root.clone()), Mutation::SetEpoch(1)], true).unwrap();
            m.apply(vec![first], false).unwrap();
            let snap = crate::types::SnapshotInfo { id: 1, name: "s".into(), epoch: 1, created: 0, files: 2, bytes: 10, holds: vec![] };
            m.apply(vec![Mutation::PutSnapshot(snap), Mutation::SetEpoch(2)], false).unwrap();
            m.apply(vec![Mutation::PutInode(later.clone())], false).unwrap();
            assert_eq!(m.get_inode_at(7, 1).unwrap().map(|i| i.size), Some(10), "the version of epoch 1 stays");
        }
        let (a, b) = (all_rows(&put), all_rows(&insert));
        assert_eq!(a.1, Usage { files: 2, bytes: 30 });
        assert_eq!(a, b);
    }

    #[test]
    fn usage_is_the_sum_of_its_shards_whichever_threads_made_and_removed_the_files() {
        // Each thread adds to its own shard (a file made by one and removed by another leaves
        // one shard above zero and one below); a bulk load's `usage` row counts too.
        let m = std::sync::Arc::new(MetaStore::memory());
        files_from_threads(&m, 4, 50);
        assert_eq!(m.usage().unwrap(), Usage { files: 200, bytes: 2000 });
        let mut shards = 0;
        m.kv.scan(Cf::Default, b"usage/", Some(b"usage0"), &mut |_, _| { shards += 1; Ok(true) }).unwrap();
        assert!(shards >= 1 && shards <= 4, "{shards} shard rows");
        let m2 = std::sync::Arc::clone(&m);
        std::thread::spawn(move || {
            for i in 0..50 {
                m2.apply(vec![Mutation::DelInode(1000 + i)], false).unwrap();
            }
        })
        .join()
        .unwrap();
        assert_eq!(m.usage().unwrap(), Usage { files: 150, bytes: 1500 });
        m.kv.transact(false, &mut |tx| {
            tx.put(Cf::Default, b"usage".to_vec(), codec::enc(&Usage { files: 5, bytes: 7 }));
            Ok(())
        })
        .unwrap();
        assert_eq!(m.usage().unwrap(), Usage { files: 155, bytes: 1507 }, "the base row and the shards add up");
    }

    #[test]
    fn usage_as_delta_rows_reads_no_shard_in_a_batch_and_folds_to_the_same_sum() {
        // A shared volume's batches write their usage change as a row of their own; the sum
        // reads the same before and after the rows are folded into a shard.
        let m = std::sync::Arc::new(MetaStore::memory());
        m.set_usage_deltas(true);
        files_from_threads(&m, 3, 40);
        m.apply(vec![Mutation::DelInode(1000), Mutation::DelInode(1001)], false).unwrap();
        let rows = |prefix: &[u8], end: &[u8]| {
            let mut n = 0;
            m.kv.scan(Cf::Default, prefix, Some(end), &mut |_, _| { n += 1; Ok(true) }).unwrap();
            n
        };
        assert_eq!(rows(b"usage/~", b"usage/\x7f"), 121, "one delta row per batch");
        assert_eq!(rows(b"usage/", b"usage/~"), 0, "no shard read and rewritten");
        assert_eq!(m.usage().unwrap(), Usage { files: 118, bytes: 1180 });
        assert_eq!(m.fold_usage_deltas().unwrap(), 121);
        assert_eq!(rows(b"usage/~", b"usage/\x7f"), 0);
        assert_eq!(rows(b"usage/", b"usage/~"), 1, "folded into one shard");
        assert_eq!(m.usage().unwrap(), Usage { files: 118, bytes: 1180 }, "the same sum after the fold");
        assert_eq!(m.fold_usage_deltas().unwrap(), 0);
    }

    #[test]
    fn ranges_at_an_epoch_merge_live_and_history() {
        for m in both_kinds() {
            ranges_at_an_epoch(m);
        }
    }

    fn ranges_at_an_epoch(m: MetaStore) {
        let d = |ino, cookie| Dentry { ino, kind: Kind::File, cookie };
        let put = |name: &[u8], ino, cookie| Mutation::PutDentry { parent: 1, name: name.to_vec(), dentry: d(ino, cookie) };
        m.apply(vec![put(b"a", 2, 1), put(b"b", 3, 2), put(b"c", 4, 3)], false).unwrap();
        end_epoch(&m, 1);
        m.apply(vec![Mutation::DelDentry { parent: 1, name: b"b".to_vec(), cookie: 2 }, put(b"d", 5, 4)], false).unwrap();
        let names = |at, after, limit| -> Vec<Vec<u8>> {
            m.readdir_at(1, after, limit, at).unwrap().into_iter().map(|e| e.name).collect()
        };
        assert_eq!(names(1, 0, 10), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(names(LIVE, 0, 10), vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        for limit in 1..4 {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = m.readdir_at(1, after, limit, 1).unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().unwrap().cookie;
                all.extend(page.into_iter().map(|e| e.name));
            }
            assert_eq!(all, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], "pages of {limit}");
        }
        assert_eq!(m.lookup_at(1, b"b", 1).unwrap().map(|d| d.ino), Some(3));
        assert_eq!(m.lookup_at(1, b"b", LIVE).unwrap(), None);
    }

    #[test]
    fn references_count_every_kept_version_and_the_collector_frees_unpinned_ones() {
        let m = MetaStore::memory();
        let put = |b: u8| Mutation::PutExtent { ino: 9, block: 0, extent: sealed(b) };
        m.apply(vec![put(1)], false).unwrap();
        m.apply(vec![put(2)], false).unwrap();
        assert_eq!(m.block_refs(&BlockId([1; 32])).unwrap(), 0, "overwritten in the same epoch");
        assert_eq!(m.free_blocks().unwrap().len(), 1);
        // Snapshot at epoch 1, then overwrite: the old version stays for the snapshot.
        end_epoch(&m, 1);
        m.apply(vec![put(3)], false).unwrap();
        assert_eq!(m.block_refs(&BlockId([2; 32])).unwrap(), 1);
        assert_eq!(m.get_extent_at(9, 0, 1).unwrap(), Some(sealed(2)));
        let kept = m.collect_range(0, 2, &[1], false).unwrap();
        assert_eq!(kept.versions_removed, 0, "pinned by the snapshot at epoch 1");
        let dry = m.collect_range(0, 2, &[], true).unwrap();
        assert_eq!(dry.unreferenced, vec![(BlockId([2; 32]), 100)]);
        assert_eq!(m.block_refs(&BlockId([2; 32])).unwrap(), 1, "a dry run changes nothing");
        let gone = m.collect_range(0, 2, &[], false).unwrap();
        assert_eq!(gone.versions_removed, 1);
        assert_eq!(m.block_refs(&BlockId([2; 32])).unwrap(), 0);
        assert_eq!(m.get_extent(9, 0).unwrap(), Some(sealed(3)));
        let mut hist = 0;
        m.for_each_history_extent(&mut |_, _, _, _| hist += 1).unwrap();
        assert_eq!(hist, 0);
    }

    /// Invariants 2 and 3: a bulk load (a clone filling its new store, which skips reading old
    /// names and readdir rows) leaves exactly the versions, journal rows, references and usage
    /// that applying the same batches one by one does, also when a later batch rewrites or
    /// deletes what an earlier one wrote.
    #[test]
    fn a_bulk_load_keeps_the_same_versions_journal_references_and_usage_as_apply() {
        use super::codec::enc;
        let d = |ino| enc(&Dentry { ino, kind: Kind::File, cookie: ino });
        let raw = |key: Key, value: Option<Vec<u8>>| Mutation::Raw { key, value };
        let batches = vec![
            vec![
                raw(Key::Inode(7), Some(enc(&file(7, 10)))),
                raw(Key::Extent(7, 0), Some(enc(&sealed(1)))),
                raw(Key::Dentry(1, b"a".to_vec()), Some(d(7))),
                raw(Key::Inode(8), Some(enc(&file(8, 5)))),
                raw(Key::Dentry(1, b"b".to_vec()), Some(d(8))),
            ],
            vec![
                raw(Key::Inode(7), Some(enc(&file(7, 20)))),
                raw(Key::Extent(7, 0), Some(enc(&sealed(2)))),
                raw(Key::Dentry(1, b"a".to_vec()), Some(d(9))),
                raw(Key::Dentry(1, b"b".to_vec()), None),
                raw(Key::Inode(8), None),
                raw(Key::Xattr(7, b"user.x".to_vec()), Some(b"v".to_vec())),
            ],
        ];
        let (one, bulk) = (MetaStore::memory(), MetaStore::memory());
        for b in &batches {
            one.apply(b.clone(), false).unwrap();
            bulk.apply_unlogged(b.clone()).unwrap();
        }
        bulk.persist().unwrap();
        let keys = [Key::Inode(7), Key::Inode(8), Key::Extent(7, 0), Key::Dentry(1, b"a".to_vec()), Key::Dentry(1, b"b".to_vec()), Key::Xattr(7, b"user.x".to_vec())];
        for k in &keys {
            assert_eq!(bulk.raw_at(k, LIVE).unwrap(), one.raw_at(k, LIVE).unwrap(), "{k:?}");
        }
        assert_eq!(bulk.usage().unwrap(), one.usage().unwrap());
        assert_eq!(bulk.usage().unwrap(), Usage { files: 1, bytes: 20 });
        for n in [1, 2] {
            assert_eq!(bulk.block_refs(&BlockId([n; 32])).unwrap(), one.block_refs(&BlockId([n; 32])).unwrap(), "block {n}");
        }
        assert_eq!(bulk.free_blocks().unwrap().len(), one.free_blocks().unwrap().len());
        let journal = |m: &MetaStore| {
            let mut out = Vec::new();
            m.changes(0, LIVE, &mut |c| {
                out.push(c);
                Ok(true)
            })
            .unwrap();
            out
        };
        assert_eq!(journal(&bulk), journal(&one));
    }

    /// Shared volumes (issue 15): a batch whose preconditions no longer hold writes nothing
    /// (invariant 1: all of a namespace change or none), and inode ranges never overlap.
    #[test]
    fn a_batch_whose_reads_went_stale_writes_nothing_and_inode_ranges_are_disjoint() {
        let m = MetaStore::memory();
        let d = Dentry { ino: 7, kind: Kind::File, cookie: 1 };
        m.apply(vec![Mutation::PutInode(file(1, 0))], false).unwrap();
        let seen = m.get_inode(1).unwrap();
        // Another host changes the directory record meanwhile.
        m.apply(vec![Mutation::PutInode(file(1, 5))], false).unwrap();
        let stale = vec![
            Mutation::ExpectInode(1, seen),
            Mutation::ExpectDentry { parent: 1, name: b"x".to_vec(), dentry: None },
            Mutation::PutDentry { parent: 1, name: b"x".to_vec(), dentry: d },
            Mutation::PutInode(file(7, 0)),
        ];
        assert!(matches!(m.apply(stale, false), Err(crate::FsError::MetaStale(_))));
        assert_eq!(m.lookup(1, b"x").unwrap(), None, "a stale batch wrote its entry");
        assert_eq!(m.get_inode(7).unwrap(), None, "a stale batch wrote its inode");
        let fresh = vec![
            Mutation::ExpectInode(1, m.get_inode(1).unwrap()),
            Mutation::ExpectDentry { parent: 1, name: b"x".to_vec(), dentry: None },
            Mutation::PutDentry { parent: 1, name: b"x".to_vec(), dentry: d },
        ];
        m.apply(fresh, false).unwrap();
        let taken = vec![Mutation::ExpectDentry { parent: 1, name: b"x".to_vec(), dentry: None }];
        assert!(matches!(m.apply(taken, false), Err(crate::FsError::MetaStale(_))));
        assert!(matches!(m.apply(vec![Mutation::ExpectEpoch(m.epoch() + 1)], false), Err(crate::FsError::MetaStale(_))));
        m.apply(vec![Mutation::ExpectEpoch(m.current_epoch().unwrap())], false).unwrap();
        // Ranges start above the highest inode and never overlap.
        let a = m.allocate_inos(2, 1 << 20, 1024).unwrap();
        let b = m.allocate_inos(2, 1 << 20, 1024).unwrap();
        assert_eq!(a, 2, "above the highest inode (1), and at least lo");
        assert_eq!(b, a + 1024);
        assert!(matches!(m.allocate_inos(2, b + 1024 + 10, 1024), Err(crate::FsError::NoSpace)));
    }

    #[test]
    fn journal_rows_name_every_versioned_write() {
        let m = MetaStore::memory();
        m.apply(vec![Mutation::PutExtent { ino: 7, block: 3, extent: Extent::Staged }], false).unwrap();
        end_epoch(&m, 1);
        m.apply(vec![Mutation::PutExtent { ino: 8, block: 0, extent: Extent::Staged }], false).unwrap();
        assert_eq!(m.journal(2).unwrap(), vec![JournalEntry { epoch: 2, ino: 8, block: 0 }]);
        assert_eq!(m.journal(1).unwrap().len(), 2);
    }
}
