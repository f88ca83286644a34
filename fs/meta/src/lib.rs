//! The RocksDB metadata store: the embedded default for one host.
//!
//! # Key layout
//!
//! One column family per kind of record; all integers big-endian so that keys sort by number.
//!
//! ```text
//! cf        key                                   value
//! inodes    ino:u64                               bincode Inode
//! dentries  parent:u64 ++ name bytes              bincode Dentry {ino, kind, cookie}
//! cookies   parent:u64 ++ cookie:u64              bincode Dentry ++ name bytes (readdir order)
//! extents   ino:u64 ++ block:u64                  bincode Extent  (absent = hole)
//! xattrs    ino:u64 ++ name bytes                 value bytes
//! journal   epoch:u64 ++ ino:u64 ++ block:u64     empty           (dirty-extent journal)
//! refs      block id (32 bytes)                   count:u64 little-endian
//! orphans   ino:u64                               empty           (nlink 0, still open)
//! default   "epoch"                               u64 little-endian
//! ```
//!
//! What sorts next to what, and why:
//! * all entries of a directory are adjacent in `dentries` (lookup is a point get) and in
//!   `cookies`, where they sort by cookie: readdir resumes after a cookie with one seek, and
//!   entries added during a readdir land after it, so a listing is stable under change. The
//!   cookie row repeats the entry, so a listing is one range scan with no point reads;
//! * the extents of a file are adjacent and sorted by block: truncate and fsck scan a range;
//! * the journal sorts by epoch first: "everything dirty since epoch E" is one range scan that
//!   never touches the rest of the volume (invariant 3);
//! * the highest inode number is the last key of `inodes`: no counter to keep.
//!
//! Every [`Mutation`] batch becomes one RocksDB `WriteBatch` (atomic). Writes go to the WAL
//! without a sync; `sync = true` or [`MetaStore::sync`] syncs the WAL (invariant 1).

use hybridfs_core::error::{FsError, Result};
use hybridfs_core::meta::{DirEntry, MetaStore, Mutation};
use hybridfs_core::types::{BlockId, Dentry, Extent, Inode, Ino, JournalEntry};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

const CF_INODES: &str = "inodes";
const CF_DENTRIES: &str = "dentries";
const CF_COOKIES: &str = "cookies";
const CF_EXTENTS: &str = "extents";
const CF_XATTRS: &str = "xattrs";
const CF_JOURNAL: &str = "journal";
const CF_REFS: &str = "refs";
const CF_ORPHANS: &str = "orphans";
const ALL_CFS: [&str; 8] = [CF_INODES, CF_DENTRIES, CF_COOKIES, CF_EXTENTS, CF_XATTRS, CF_JOURNAL, CF_REFS, CF_ORPHANS];
const KEY_EPOCH: &[u8] = b"epoch";

fn k1(a: u64) -> [u8; 8] {
    a.to_be_bytes()
}

fn k2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn k_named(a: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(name);
    k
}

fn k_journal(e: &JournalEntry) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&e.epoch.to_be_bytes());
    k[8..16].copy_from_slice(&e.ino.to_be_bytes());
    k[16..].copy_from_slice(&e.block.to_be_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix` (None: no bound).
fn prefix_successor(prefix: &mut Vec<u8>) -> Option<Vec<u8>> {
    while let Some(last) = prefix.pop() {
        if last < 0xff {
            prefix.push(last + 1);
            return Some(prefix.clone());
        }
    }
    None
}

fn be(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn db_err(what: &str) -> impl Fn(rocksdb::Error) -> FsError + '_ {
    move |e| FsError::Meta(format!("{what}: {e}"))
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialisation cannot fail")
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| FsError::Meta(format!("decode {what}: {e}")))
}

/// Tuning of the embedded store; memory stays bounded whatever the number of files.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    pub read_only: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions { block_cache_bytes: 32 << 20, write_buffer_bytes: 48 << 20, read_only: false }
    }
}

pub struct RocksMeta {
    db: DB,
    /// Serialises read-modify-write of reference counts.
    refs_lock: Mutex<()>,
}

impl RocksMeta {
    pub fn open(path: &Path, opts: &RocksOptions) -> Result<Self> {
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks stay with their table readers, outside the block cache: in
        // the cache, a large table's filter (over 1 MiB at a million files) does not fit one
        // cache shard and was re-read and re-checksummed on every lookup (a cold `find` over
        // 1M files took 67 s). Their memory is about 1% of the metadata size.
        table.set_cache_index_and_filter_blocks(false);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(opts.write_buffer_bytes / 4);
        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(!opts.read_only);
        db_opts.create_missing_column_families(!opts.read_only);
        db_opts.set_db_write_buffer_size(opts.write_buffer_bytes);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(64 << 20);
        let cfs = ALL_CFS.iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_opts.clone()));
        let db = if opts.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false)
        } else {
            DB::open_cf_descriptors(&db_opts, path, cfs)
        }
        .map_err(|e| FsError::Meta(format!("open metadata store {}: {e}", path.display())))?;
        Ok(RocksMeta { db, refs_lock: Mutex::new(()) })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>> {
        self.db.get_pinned_cf(self.cf(cf), key).map_err(db_err("read metadata"))
    }

    /// Visit keys and values of `cf` from `start` while they begin with `prefix`. Short scans
    /// (readdir, one file's extents) go through the block cache; whole-volume scans (fsck,
    /// status) do not, so they cannot evict what the mount needs.
    fn scan(&self, cf: &str, start: &[u8], prefix: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(!prefix.is_empty());
        let mut upper = prefix.to_vec();
        if let Some(next) = prefix_successor(&mut upper) {
            ro.set_iterate_upper_bound(next);
        }
        let iter = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(db_err("scan metadata"))?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn put_refs(&self, wb: &mut WriteBatch, deltas: BTreeMap<BlockId, i64>) -> Result<()> {
        for (id, delta) in deltas {
            let now = self.block_refs(&id)? as i64 + delta;
            if now > 0 {
                wb.put_cf(self.cf(CF_REFS), id.0, (now as u64).to_le_bytes());
            } else {
                wb.delete_cf(self.cf(CF_REFS), id.0);
            }
        }
        Ok(())
    }

    fn add(&self, wb: &mut WriteBatch, m: Mutation, deltas: &mut BTreeMap<BlockId, i64>) {
        match m {
            Mutation::PutInode(i) => wb.put_cf(self.cf(CF_INODES), k1(i.ino), enc(&i)),
            Mutation::DelInode(ino) => wb.delete_cf(self.cf(CF_INODES), k1(ino)),
            Mutation::PutDentry { parent, name, dentry } => {
                let mut row = enc(&dentry);
                row.extend_from_slice(&name);
                wb.put_cf(self.cf(CF_COOKIES), k2(parent, dentry.cookie), row);
                wb.put_cf(self.cf(CF_DENTRIES), k_named(parent, &name), enc(&dentry));
            }
            Mutation::DelDentry { parent, name, cookie } => {
                wb.delete_cf(self.cf(CF_COOKIES), k2(parent, cookie));
                wb.delete_cf(self.cf(CF_DENTRIES), k_named(parent, &name));
            }
            Mutation::PutExtent { ino, block, extent } => wb.put_cf(self.cf(CF_EXTENTS), k2(ino, block), enc(&extent)),
            Mutation::DelExtent { ino, block } => wb.delete_cf(self.cf(CF_EXTENTS), k2(ino, block)),
            Mutation::PutXattr { ino, name, value } => wb.put_cf(self.cf(CF_XATTRS), k_named(ino, &name), value),
            Mutation::DelXattr { ino, name } => wb.delete_cf(self.cf(CF_XATTRS), k_named(ino, &name)),
            Mutation::Journal(e) => wb.put_cf(self.cf(CF_JOURNAL), k_journal(&e), []),
            Mutation::RefDelta { id, delta } => *deltas.entry(id).or_default() += delta,
            Mutation::PutOrphan(ino) => wb.put_cf(self.cf(CF_ORPHANS), k1(ino), []),
            Mutation::DelOrphan(ino) => wb.delete_cf(self.cf(CF_ORPHANS), k1(ino)),
            Mutation::SetEpoch(e) => wb.put(KEY_EPOCH, e.to_le_bytes()),
        }
    }
}

impl MetaStore for RocksMeta {
    fn get_inode(&self, ino: Ino) -> Result<Option<Inode>> {
        self.get(CF_INODES, &k1(ino))?.map(|v| dec("inode", &v)).transpose()
    }

    fn max_ino(&self) -> Result<Ino> {
        let mut iter = self.db.iterator_cf(self.cf(CF_INODES), IteratorMode::End);
        match iter.next() {
            Some(item) => Ok(be(&item.map_err(db_err("scan inodes"))?.0, 0)),
            None => Ok(0),
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        self.get(CF_DENTRIES, &k_named(parent, name))?.map(|v| dec("directory entry", &v)).transpose()
    }

    fn readdir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan(CF_COOKIES, &k2(parent, after.saturating_add(1)), &k1(parent), &mut |k, v| {
            let dentry: Dentry = dec("readdir entry", v)?;
            let used = bincode::serialized_size(&dentry).map_err(|e| FsError::Meta(format!("readdir entry: {e}")))?;
            let name = v.get(used as usize..).ok_or_else(|| FsError::Meta("readdir entry is truncated".into()))?;
            out.push(DirEntry { cookie: be(k, 8), name: name.to_vec(), dentry });
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn get_extent(&self, ino: Ino, block: u64) -> Result<Option<Extent>> {
        self.get(CF_EXTENTS, &k2(ino, block))?.map(|v| dec("extent", &v)).transpose()
    }

    fn extents(&self, ino: Ino, from: u64) -> Result<Vec<(u64, Extent)>> {
        let mut out = Vec::new();
        self.scan(CF_EXTENTS, &k2(ino, from), &k1(ino), &mut |k, v| {
            out.push((be(k, 8), dec("extent", v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get(CF_XATTRS, &k_named(ino, name))?.map(|v| v.to_vec()))
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan(CF_XATTRS, &k1(ino), &k1(ino), &mut |k, _| {
            out.push(k[8..].to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    fn journal(&self, from_epoch: u64) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        self.scan(CF_JOURNAL, &k1(from_epoch), &[], &mut |k, _| {
            out.push(JournalEntry { epoch: be(k, 0), ino: be(k, 8), block: be(k, 16) });
            Ok(true)
        })?;
        Ok(out)
    }

    fn block_refs(&self, id: &BlockId) -> Result<u64> {
        Ok(match self.get(CF_REFS, &id.0)? {
            Some(v) if v.len() == 8 => u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
            Some(_) => return Err(FsError::Meta(format!("reference count of {id} is malformed"))),
            None => 0,
        })
    }

    fn orphans(&self) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        self.scan(CF_ORPHANS, &[], &[], &mut |k, _| {
            out.push(be(k, 0));
            Ok(true)
        })?;
        Ok(out)
    }

    fn epoch(&self) -> Result<u64> {
        Ok(match self.db.get_pinned(KEY_EPOCH).map_err(db_err("read epoch"))? {
            Some(v) if v.len() == 8 => u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
            _ => 1,
        })
    }

    fn for_each_inode(&self, f: &mut dyn FnMut(Inode)) -> Result<()> {
        self.scan(CF_INODES, &[], &[], &mut |_, v| {
            f(dec("inode", v)?);
            Ok(true)
        })
    }

    fn for_each_dentry(&self, f: &mut dyn FnMut(Ino, &[u8], Dentry)) -> Result<()> {
        self.scan(CF_DENTRIES, &[], &[], &mut |k, v| {
            f(be(k, 0), &k[8..], dec("directory entry", v)?);
            Ok(true)
        })
    }

    fn for_each_extent(&self, f: &mut dyn FnMut(Ino, u64, Extent)) -> Result<()> {
        self.scan(CF_EXTENTS, &[], &[], &mut |k, v| {
            f(be(k, 0), be(k, 8), dec("extent", v)?);
            Ok(true)
        })
    }

    fn for_each_ref(&self, f: &mut dyn FnMut(BlockId, u64)) -> Result<()> {
        self.scan(CF_REFS, &[], &[], &mut |k, v| {
            let id = BlockId(k.try_into().map_err(|_| FsError::Meta("malformed block id key".into()))?);
            let n = v.try_into().map(u64::from_le_bytes).map_err(|_| FsError::Meta("malformed count".into()))?;
            f(id, n);
            Ok(true)
        })
    }

    fn apply(&self, batch: Vec<Mutation>, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        let mut deltas = BTreeMap::new();
        for m in batch {
            self.add(&mut wb, m, &mut deltas);
        }
        let _guard = (!deltas.is_empty()).then(|| self.refs_lock.lock().expect("refs lock"));
        self.put_refs(&mut wb, deltas)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(db_err("write metadata"))
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err("sync metadata log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridfs_core::types::Kind;

    #[test]
    fn batches_round_trip_and_ranges_stay_in_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let m = RocksMeta::open(dir.path(), &RocksOptions::default()).unwrap();
        let file = Inode::new(7, Kind::File, 0o644, 0, 0);
        let d = |ino, cookie| Dentry { ino, kind: Kind::File, cookie };
        m.apply(
            vec![
                Mutation::PutInode(file.clone()),
                Mutation::PutDentry { parent: 1, name: b"b".to_vec(), dentry: d(7, 1) },
                Mutation::PutDentry { parent: 1, name: b"a".to_vec(), dentry: d(8, 2) },
                Mutation::PutDentry { parent: 2, name: b"c".to_vec(), dentry: d(9, 1) },
                Mutation::PutExtent { ino: 7, block: 3, extent: Extent::Staged },
                Mutation::PutExtent { ino: 8, block: 0, extent: Extent::Staged },
                Mutation::Journal(JournalEntry { epoch: 1, ino: 7, block: 3 }),
                Mutation::Journal(JournalEntry { epoch: 2, ino: 8, block: 0 }),
                Mutation::RefDelta { id: BlockId([1; 32]), delta: 2 },
                Mutation::RefDelta { id: BlockId([1; 32]), delta: -1 },
            ],
            true,
        )
        .unwrap();
        assert_eq!(m.get_inode(7).unwrap(), Some(file));
        assert_eq!(m.max_ino().unwrap(), 7);
        let names: Vec<_> = m.readdir(1, 0, 10).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![b"b".to_vec(), b"a".to_vec()], "cookie order, not name order");
        assert_eq!(m.readdir(1, 1, 10).unwrap().len(), 1);
        assert_eq!(m.extents(7, 0).unwrap(), vec![(3, Extent::Staged)]);
        assert_eq!(m.journal(2).unwrap(), vec![JournalEntry { epoch: 2, ino: 8, block: 0 }]);
        assert_eq!(m.block_refs(&BlockId([1; 32])).unwrap(), 1);
        m.apply(vec![Mutation::RefDelta { id: BlockId([1; 32]), delta: -1 }], false).unwrap();
        let mut refs = 0;
        m.for_each_ref(&mut |_, _| refs += 1).unwrap();
        assert_eq!(refs, 0, "a count that reaches zero is dropped");
    }
}
