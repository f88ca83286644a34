//! The RocksDB engine behind [`hybridfs_core::kv::Kv`]: the embedded default for one host.
//!
//! One RocksDB column family per [`Cf`]; the key layout of each, and how versions, the change
//! journal and reference counts are kept, is documented once, in `hybridfs_core::meta`. This
//! crate only stores bytes. Transactions ([`Kv::transact`]) run one at a time in this process (a
//! RocksDB volume has one process: the volume lock) over an overlay of their own writes, and
//! commit as one RocksDB `WriteBatch` (atomic), written to the WAL without a sync unless asked;
//! [`Kv::sync`] syncs the WAL (invariant 1). Point lookups of several keys use RocksDB's
//! batched `multi_get`. A bulk load ([`Kv::bulk_writer`]) writes straight into a `WriteBatch`
//! past the WAL, made durable by [`Kv::persist`].
//!
//! Memory stays bounded whatever the number of files: one LRU block cache, bounded memtables.

use hybridfs_core::error::{FsError, Result};
use hybridfs_core::kv::{serial_transact, Cf, Kv, KvBulk, KvOp, KvRead, TxnBody, Visit};
use hybridfs_core::meta::MetaStore;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

fn db_err(what: &str) -> impl Fn(rocksdb::Error) -> FsError + '_ {
    move |e| FsError::Meta(format!("{what}: {e}"))
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

pub struct RocksKv {
    db: DB,
    /// Transactions run one at a time (see the module comment).
    txn: Mutex<()>,
}

/// Open (or create) the metadata store at `path`.
pub fn open(path: &Path, opts: &RocksOptions) -> Result<MetaStore> {
    MetaStore::new(Arc::new(RocksKv::open(path, opts)?))
}

impl RocksKv {
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
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_opts.clone()));
        let db = if opts.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false)
        } else {
            DB::open_cf_descriptors(&db_opts, path, cfs)
        }
        .map_err(|e| FsError::Meta(format!("open metadata store {}: {e}", path.display())))?;
        Ok(RocksKv { db, txn: Mutex::new(()) })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    fn commit(&self, ops: Vec<KvOp>, sync: bool) -> Result<()> {
        self.commit_with(ops, sync, true)
    }

    /// Write `ops` as one batch; without `logged`, past the WAL (see [`Kv::transact_unlogged`]).
    fn commit_with(&self, ops: Vec<KvOp>, sync: bool, logged: bool) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        for op in ops {
            match op {
                KvOp::Put(cf, k, v) => wb.put_cf(self.cf(cf), k, v),
                KvOp::Del(cf, k) => wb.delete_cf(self.cf(cf), k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        wo.disable_wal(!logged);
        self.db.write_opt(wb, &wo).map_err(db_err("write metadata"))
    }
}

/// Families small enough that a scan of the whole family is a hot path worth caching (the
/// snapshot catalogue is read by every batch that retires a version).
fn small(cf: Cf) -> bool {
    matches!(cf, Cf::Snapshots | Cf::Gc | Cf::Default | Cf::Orphans)
}

impl KvRead for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_pinned_cf(self.cf(cf), key).map_err(db_err("read metadata"))?.map(|v| v.to_vec()))
    }

    /// Bounded scans (a directory, one file's extents) go through the block cache; scans of a
    /// whole big family (fsck, status) do not, so they cannot evict what the mount needs.
    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(end.is_some() || small(cf));
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(db_err("scan metadata"))?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::End);
        match iter.next() {
            Some(item) => Ok(Some(item.map_err(db_err("scan metadata"))?.0.to_vec())),
            None => Ok(None),
        }
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let handle = self.cf(cf);
        self.db.multi_get_cf(keys.iter().map(|k| (handle, *k))).into_iter().map(|r| r.map_err(db_err("read metadata"))).collect()
    }
}

impl Kv for RocksKv {
    fn transact(&self, sync: bool, body: &mut TxnBody<'_>) -> Result<()> {
        serial_transact(self, &self.txn, body, |ops| self.commit(ops, false))?;
        // The WAL sync happens after the next transaction may start, so concurrent fsyncs
        // of several files share it (one sync covers every batch before it).
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err("sync metadata log"))
    }

    /// Past the WAL: the batch lives in the memtables until they are flushed.
    fn transact_unlogged(&self, body: &mut TxnBody<'_>) -> Result<()> {
        serial_transact(self, &self.txn, body, |ops| self.commit_with(ops, false, false))
    }

    /// Straight into a `WriteBatch`, written past the WAL at each commit (no overlay, no copy
    /// of keys and values but RocksDB's own).
    fn bulk_writer(&self) -> Box<dyn KvBulk + '_> {
        Box::new(RocksBulk { kv: self, batch: WriteBatch::default(), cfs: Cf::ALL.map(|cf| self.cf(cf)) })
    }

    /// Compactions wait until the load is done: they would rewrite what the load is still
    /// writing, on the CPU the load needs. Not kept in the store: the next open compacts.
    fn bulk_tuning(&self, on: bool) -> Result<()> {
        let value = if on { "true" } else { "false" };
        for cf in Cf::ALL {
            self.db.set_options_cf(self.cf(cf), &[("disable_auto_compactions", value)]).map_err(db_err("tune metadata store"))?;
        }
        Ok(())
    }

    /// Flush every memtable to table files (RocksDB syncs them) and wait, then sync the WAL:
    /// writes made past the WAL are durable from then on.
    fn persist(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|cf| self.cf(*cf)).collect();
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &fo).map_err(db_err("flush metadata"))?;
        self.sync()
    }
}

/// [`Kv::bulk_writer`] of RocksDB.
struct RocksBulk<'a> {
    kv: &'a RocksKv,
    batch: WriteBatch,
    /// The handles, by the position of their family in [`Cf::ALL`].
    cfs: [&'a ColumnFamily; Cf::ALL.len()],
}

impl KvBulk for RocksBulk<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.cfs[cf as usize], key, value);
    }

    fn del(&mut self, cf: Cf, key: &[u8]) {
        self.batch.delete_cf(self.cfs[cf as usize], key);
    }

    fn commit(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let _one_at_a_time = self.kv.txn.lock();
        self.kv.db.write_opt(batch, &wo).map_err(db_err("write metadata"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocks_kv_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(dir.path(), &RocksOptions::default()).unwrap();
        hybridfs_core::kv::conformance(&kv);
    }

    /// Invariant 1: a bulk load written past the WAL (in a transaction or below them) is
    /// durable once `persist` returns (the store is reopened from its files alone: no WAL to
    /// replay it from).
    #[test]
    fn invariant_1_unlogged_and_bulk_writes_are_durable_after_persist() {
        use hybridfs_core::meta::{Key, Mutation};
        let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let live = open(dir.path(), &RocksOptions::default()).unwrap();
        live.apply_unlogged(vec![Mutation::Raw { key: Key::Dentry(1, b"a".to_vec()), value: Some(vec![1, 2]) }]).unwrap();
        live.load_bulk(vec![Mutation::Raw { key: Key::Dentry(1, b"b".to_vec()), value: Some(vec![3]) }]).unwrap();
        live.persist().unwrap();
        // What a crash right now leaves on disk, without the WAL.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if !p.extension().is_some_and(|e| e == "log") && p.file_name().unwrap() != "LOCK" {
                std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        let meta = open(copy.path(), &RocksOptions::default()).unwrap();
        assert_eq!(meta.raw_at(&Key::Dentry(1, b"a".to_vec()), hybridfs_core::meta::LIVE).unwrap(), Some(vec![1, 2]));
        assert_eq!(meta.raw_at(&Key::Dentry(1, b"b".to_vec()), hybridfs_core::meta::LIVE).unwrap(), Some(vec![3]), "a bulk load too");
    }

    #[test]
    fn reopened_store_keeps_its_epoch() {
        use hybridfs_core::meta::Mutation;
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), &RocksOptions::default()).unwrap().apply(vec![Mutation::SetEpoch(5)], true).unwrap();
        assert_eq!(open(dir.path(), &RocksOptions::default()).unwrap().epoch(), 5);
    }
}
