//! The RocksDB engine behind [`hybridfs_core::kv::Kv`]: the embedded default for one host.
//!
//! One RocksDB column family per [`Cf`]; the key layout of each, and how versions, the change
//! journal and reference counts are kept, is documented once, in `hybridfs_core::meta`. This
//! crate only stores bytes. Transactions ([`Kv::transact`]) run one at a time in this process (a
//! RocksDB volume has one process: the volume lock) over an overlay of their own writes, and
//! commit as one RocksDB `WriteBatch` (atomic), written to the WAL without a sync unless asked;
//! [`Kv::sync`] syncs the WAL (invariant 1). Point lookups of several keys use RocksDB's
//! batched `multi_get`. A bulk load ([`Kv::bulk_writer`]) writes the families whose keys come
//! in order into sorted table files it ingests (no memtable, no flush, no compaction: a family
//! loaded in one run lands in the last level), the others straight into a `WriteBatch` past
//! the WAL; [`Kv::persist`] makes them durable.
//!
//! Memory stays bounded whatever the number of files: one LRU block cache, bounded memtables.

use hybridfs_core::error::{FsError, Result};
use hybridfs_core::kv::{serial_transact, Cf, Kv, KvBulk, KvOp, KvRead, TxnBody, Visit};
use hybridfs_core::meta::MetaStore;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IngestExternalFileOptions, IteratorMode,
    Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions, DB,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A RocksDB failure as an [`FsError`]: a full disk (or quota) keeps its errno, ENOSPC, so a
/// caller sees "no space" rather than EIO; everything else is a metadata-store failure.
fn db_err(what: &str) -> impl Fn(rocksdb::Error) -> FsError + '_ {
    move |e| {
        let text = e.to_string();
        let errno = if text.contains("No space left on device") {
            Some(libc::ENOSPC)
        } else if text.contains("Disk quota exceeded") {
            Some(libc::EDQUOT)
        } else {
            None
        };
        match errno {
            Some(n) => FsError::io(format!("metadata store: {what}: {text}"), std::io::Error::from_raw_os_error(n)),
            None => FsError::Meta(format!("{what}: {text}")),
        }
    }
}

/// Tuning of the embedded store; memory stays bounded whatever the number of files.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    pub read_only: bool,
    /// Where table files keep their index and filter blocks.
    pub index: IndexLayout,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions { block_cache_bytes: 32 << 20, write_buffer_bytes: 48 << 20, read_only: false, index: IndexLayout::default() }
    }
}

/// Where table files keep their index and filter blocks: what a point lookup walks before
/// the data block, and whose memory grows with the metadata.
///
/// The default is [`IndexLayout::Partitioned`] (c917de0: memory bounded by the block cache
/// at 10 million files). The others are for A/B runs of one build (a cold `stat` is two
/// point lookups; benches/README.md, "Cold stat: index layouts and FORGET"): by the CPU per
/// lookup measured there, the layout is worth a few microseconds per `stat`, not the
/// regression against fuseref it was suspected of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexLayout {
    /// A whole index and filter per table, held by its table reader outside the block cache
    /// (as before c917de0): the data block is a lookup's only block-cache lookup per table
    /// probed; memory about 1% of the metadata, growing with it.
    Whole,
    /// Cut in partitions of about 4 KiB that live in the block cache, only each table's top
    /// level pinned (c917de0): memory bounded by the cache, but a partition lookup in the
    /// cache for the filter and one for the index of every table a lookup probes.
    #[default]
    Partitioned,
    /// Partitioned in the block cache, and the partitions of tables written by a flush
    /// (level 0: the newest rows, what a mount reads most) pinned while the table is open.
    PartitionedPinnedL0,
    /// Partitioned in the block cache, every table's partitions pinned while it is open.
    PartitionedPinned,
}

pub struct RocksKv {
    db: DB,
    /// Transactions run one at a time (see the module comment).
    txn: Mutex<()>,
    /// The options of every family: a bulk load's table files are written with them.
    cf_opts: Options,
    /// The block cache every family shares (for [`Kv::memory`]).
    cache: Cache,
}

/// Open (or create) the metadata store at `path`: the only writer of it while open (RocksDB's
/// lock file keeps other processes out; this is its one `MetaStore`), so batches take the
/// epoch from memory ([`MetaStore::new_exclusive`]).
pub fn open(path: &Path, opts: &RocksOptions) -> Result<MetaStore> {
    MetaStore::new_exclusive(Arc::new(RocksKv::open(path, opts)?))
}

/// The table options of `layout` ([`IndexLayout`]).
fn set_index_layout(table: &mut BlockBasedOptions, layout: IndexLayout) {
    use rocksdb::BlockBasedTablePinningTier as Tier;
    if layout == IndexLayout::Whole {
        table.set_cache_index_and_filter_blocks(false);
        return;
    }
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_partition_pinning_tier(match layout {
        IndexLayout::PartitionedPinnedL0 => Tier::FlushAndSimilar,
        IndexLayout::PartitionedPinned => Tier::All,
        _ => Tier::None,
    });
}

impl RocksKv {
    pub fn open(path: &Path, opts: &RocksOptions) -> Result<Self> {
        // Four shards (8 MiB each at the default size), not RocksDB's 512 KiB ones: the whole
        // filter of a table written before partitioning (below) must fit one shard.
        let mut lru = rocksdb::LruCacheOptions::default();
        lru.set_capacity(opts.block_cache_bytes);
        lru.set_num_shard_bits(2);
        let cache = Cache::new_lru_cache_opts(&lru);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks: see [`IndexLayout`]. A whole table's filter in the cache
        // (over 1 MiB at a million files) did not fit one cache shard and was re-read and
        // re-checksummed on every lookup (a cold `find` over 1M files took 67 s): in the
        // cache they are partitioned (about 4 KiB each; each table's top level pinned).
        // Tables written in another layout still work until compaction rewrites them.
        set_index_layout(&mut table, opts.index);
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
        Ok(RocksKv { db, txn: Mutex::new(()), cf_opts, cache })
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

    /// Sorted table files for the families whose keys come in order, ingested; a `WriteBatch`
    /// written past the WAL at each commit for the others (see [`RocksBulk`]).
    fn bulk_writer(&self) -> Box<dyn KvBulk + '_> {
        Box::new(RocksBulk {
            kv: self,
            batch: WriteBatch::default(),
            cfs: Cf::ALL.map(|cf| self.cf(cf)),
            runs: Cf::ALL.map(|_| Vec::new()),
            sorted: Cf::ALL.map(|_| Sorted::default()),
            seen: Seen::default(),
            fresh: [None; Cf::ALL.len()],
            ingested: [0; Cf::ALL.len()],
            dir: self.db.path().join("bulk-load"),
            files: 0,
            error: None,
        })
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

    /// The block cache (data blocks, and index and filter partitions), the memtables, and
    /// what table readers hold outside the cache, summed over the families.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        let sum = |prop: &str| -> u64 {
            Cf::ALL.iter().filter_map(|cf| self.db.property_int_value_cf(self.cf(*cf), prop).ok().flatten()).sum()
        };
        vec![
            ("block_cache", self.cache.get_usage() as u64),
            ("block_cache_pinned", self.cache.get_pinned_usage() as u64),
            ("memtables", sum("rocksdb.cur-size-all-mem-tables")),
            ("table_readers", sum("rocksdb.estimate-table-readers-mem")),
        ]
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

/// Sorted runs a family may get in one load; past them its rows go to `WriteBatch`es: keys
/// that do not come in order would each make a small file (and an ingestion) of their own.
const MAX_RUNS: u32 = 32;

/// The families a bulk load writes to table files: a layer lists their keys in order (the
/// journal's too), so one run takes a whole layer.
fn in_runs(cf: Cf) -> bool {
    matches!(cf, Cf::Inodes | Cf::Dentries | Cf::Cookies | Cf::Extents | Cf::Xattrs | Cf::Changes)
}

/// The families a bulk load sorts in memory ([`RocksBulk`]): their keys are block ids, in no
/// order (pushed blocks, reference counts, the free list).
fn in_memory(cf: Cf) -> bool {
    matches!(cf, Cf::Pushed | Cf::Refs | Cf::Free)
}

/// Bytes (keys, values and their rows and index) a family of [`in_memory`] holds before they
/// go to a table file of their own.
const SORT_BYTES: usize = 16 << 20;

/// A hash of `key` (block ids are already uniform; other keys are mixed word by word).
fn key_hash(key: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ key.len() as u64;
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    // The finish of splitmix64.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hasher for keys that are already hashes ([`key_hash`]).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

/// No row: the end of a chain, or a deletion's value.
const NONE: u32 = u32::MAX;

/// One write in a [`Sorted`]: its key and value in the arena, and the next row whose key has
/// the same hash.
struct Row {
    key: u32,
    key_len: u32,
    /// [`NONE`]: a deletion.
    value: u32,
    value_len: u32,
    next: u32,
}

/// The writes of one family of [`in_memory`] not yet in a file: keys and values in one arena,
/// found through a hash of the key, sorted only when they go to a file ([`RocksBulk::spill`]).
/// A later write of a key replaces the earlier (its bytes stay in the arena until the spill).
#[derive(Default)]
struct Sorted {
    arena: Vec<u8>,
    rows: Vec<Row>,
    /// The first row of each key hash.
    index: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
}

impl Sorted {
    /// Memory used (the arena, the rows, and the index's buckets with their control bytes at
    /// its emptiest: half full). By length, not capacity: the capacity stays after a spill.
    fn bytes(&self) -> usize {
        self.arena.len() + self.rows.len() * (std::mem::size_of::<Row>() + 2 * 17)
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn key(&self, r: &Row) -> &[u8] {
        &self.arena[r.key as usize..][..r.key_len as usize]
    }

    fn value(&self, r: &Row) -> Option<&[u8]> {
        (r.value != NONE).then(|| &self.arena[r.value as usize..][..r.value_len as usize])
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<&Row> {
        let mut at = *self.index.get(&hash)?;
        while at != NONE {
            let r = &self.rows[at as usize];
            if self.key(r) == key {
                return Some(r);
            }
            at = r.next;
        }
        None
    }

    /// The write of `key` here, if any: `Some(None)` is a deletion.
    fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.find(key, key_hash(key)).map(|r| self.value(r))
    }

    fn put(&mut self, key: &[u8], value: Option<&[u8]>) {
        let hash = key_hash(key);
        let (at, len) = match value {
            Some(v) => {
                let at = self.arena.len() as u32;
                self.arena.extend_from_slice(v);
                (at, v.len() as u32)
            }
            None => (NONE, 0),
        };
        let first = self.index.get(&hash).copied();
        let mut i = first.unwrap_or(NONE);
        while i != NONE {
            let r = &self.rows[i as usize];
            if self.key(r) == key {
                let r = &mut self.rows[i as usize];
                (r.value, r.value_len) = (at, len);
                return;
            }
            i = r.next;
        }
        let row = Row { key: self.arena.len() as u32, key_len: key.len() as u32, value: at, value_len: len, next: first.unwrap_or(NONE) };
        self.arena.extend_from_slice(key);
        self.index.insert(hash, self.rows.len() as u32);
        self.rows.push(row);
    }

    /// The rows in key order, and empty after.
    fn drain_sorted(&mut self, out: &mut dyn FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.key(&self.rows[*a as usize]).cmp(self.key(&self.rows[*b as usize])));
        for i in order {
            let r = &self.rows[i as usize];
            out(self.key(r), self.value(r))?;
        }
        self.arena.clear();
        self.rows.clear();
        self.index.clear();
        Ok(())
    }
}

/// Bits of [`Seen`] (8 MiB, allocated zeroed at its first key: pages are touched as keys come).
const SEEN_BITS: usize = 1 << 26;

/// A Bloom filter of the keys a load wrote to the families of [`in_memory`] (two bits a key):
/// in a family that was empty when the load started, a key it says was never written is
/// absent, with no read (a first clone's blocks: none was counted before). Wrong only the
/// safe way (a key never written may look written: it is read).
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
}

impl Seen {
    fn bits_of(cf: Cf, key: &[u8]) -> [usize; 2] {
        let h = key_hash(key) ^ (cf as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        [(h as usize) % SEEN_BITS, ((h >> 32) as usize ^ (h as usize).rotate_left(13)) % SEEN_BITS]
    }

    fn add(&mut self, cf: Cf, key: &[u8]) {
        if self.bits.is_empty() {
            self.bits = vec![0; SEEN_BITS / 64];
        }
        for b in Self::bits_of(cf, key) {
            self.bits[b / 64] |= 1 << (b % 64);
        }
    }

    fn may_hold(&self, cf: Cf, key: &[u8]) -> bool {
        !self.bits.is_empty() && Self::bits_of(cf, key).iter().all(|b| self.bits[b / 64] & (1 << (b % 64)) != 0)
    }
}

/// Open runs one family may have at once, one per lane ([`lane`]).
const MAX_LANES: usize = 8;

/// The lane of `key` in `cf`: keys of one lane go to one run. The journal's rows of one epoch
/// come family by family in each chunk (each family's ascending over the load): a lane per
/// epoch and family (their 9-byte prefix). Other families have one lane.
fn lane(cf: Cf, key: &[u8]) -> &[u8] {
    let n = if cf == Cf::Changes { 9 } else { 0 };
    key.get(..n).unwrap_or(key)
}

/// A table file being written: keys strictly ascending, all in one lane (so the runs of one
/// family never overlap).
struct Run<'a> {
    file: SstFileWriter<'a>,
    path: PathBuf,
    lane: Vec<u8>,
    last: Vec<u8>,
}

/// [`Kv::bulk_writer`] of RocksDB. A family of [`in_runs`] is written to a sorted run (an
/// `SstFileWriter`) as long as its keys ascend; a key at or below the run's last one, or a read
/// of one, ingests the run first (RocksDB gives an ingested file a sequence number above
/// everything already in the store, so a later write of a key wins as in a batch). Ingested
/// files are moved into the store, no memtable and no flush: one that overlaps nothing goes
/// to the last level, compacted. A family of [`in_memory`] is kept in memory ([`Sorted`]: one
/// arena, a hash index, a later write of a key replacing the earlier) and written sorted to a
/// table file, ingested, every [`SORT_BYTES`]; its reads look there first, and in a family that
/// was empty when the load began, a key the load never wrote ([`Seen`]) is not read at all (a
/// first clone's reference counts: every block is new). The other families, and a family past
/// [`MAX_RUNS`], go to a `WriteBatch` written past the WAL at each commit.
struct RocksBulk<'a> {
    kv: &'a RocksKv,
    batch: WriteBatch,
    /// The handles, by the position of their family in [`Cf::ALL`].
    cfs: [&'a ColumnFamily; Cf::ALL.len()],
    /// The open runs of each family (one per lane), by position.
    runs: [Vec<Run<'a>>; Cf::ALL.len()],
    /// The writes of each family of [`in_memory`] not yet in a file, by position.
    sorted: [Sorted; Cf::ALL.len()],
    /// The keys written to the families of [`in_memory`] since the family was found empty.
    seen: Seen,
    /// Whether a family of [`in_memory`] was empty in the store when this writer first wrote
    /// or read it (since its last [`KvBulk::finish`]: other writers may write between loads),
    /// by position: [`Seen`] then knows every key it holds.
    fresh: [Option<bool>; Cf::ALL.len()],
    /// Runs ingested so far, by position.
    ingested: [u32; Cf::ALL.len()],
    /// Where runs are written (in the store's directory: ingested by a hard link).
    dir: PathBuf,
    /// Files started so far (their names).
    files: u64,
    /// The first failure of a write, returned by the next commit or read (writes return
    /// nothing).
    error: Option<FsError>,
}

impl<'a> RocksBulk<'a> {
    /// Whether `cf` (of [`in_memory`]) was empty when this writer first used it since its last
    /// finish (see [`RocksBulk::fresh`]).
    fn is_fresh(&mut self, cf: Cf) -> Result<bool> {
        match self.fresh[cf as usize] {
            Some(fresh) => Ok(fresh),
            None => {
                let fresh = self.sorted[cf as usize].is_empty() && self.kv.last_before(cf, None)?.is_none();
                self.fresh[cf as usize] = Some(fresh);
                Ok(fresh)
            }
        }
    }

    fn to_runs(&self, cf: Cf) -> bool {
        in_runs(cf) && self.ingested[cf as usize] < MAX_RUNS
    }

    fn write(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        if self.error.is_some() {
            return;
        }
        if in_memory(cf) {
            match self.is_fresh(cf) {
                Ok(true) => self.seen.add(cf, key),
                Ok(false) => {}
                Err(e) => return self.error = Some(e),
            }
            let i = cf as usize;
            self.sorted[i].put(key, value);
            if self.sorted[i].bytes() >= SORT_BYTES {
                if let Err(e) = self.spill(cf) {
                    self.error = Some(e);
                }
            }
            return;
        }
        if self.to_runs(cf) {
            match self.write_run(cf, key, value) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => return self.error = Some(e),
            }
        }
        match value {
            Some(v) => self.batch.put_cf(self.cfs[cf as usize], key, v),
            None => self.batch.delete_cf(self.cfs[cf as usize], key),
        }
    }

    /// Append to the run of `key`'s lane (ingesting it first and starting another where `key`
    /// does not ascend); false where the family has had its runs and goes to the batch from
    /// now on.
    fn write_run(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) -> Result<bool> {
        let i = cf as usize;
        let mut at = self.runs[i].iter().position(|r| r.lane == lane(cf, key));
        if let Some(j) = at.filter(|j| key <= self.runs[i][*j].last.as_slice()) {
            self.ingest(cf, j)?;
            at = None;
            if !self.to_runs(cf) {
                // Its other lanes too: the batch's writes must come after every run.
                while !self.runs[i].is_empty() {
                    self.ingest(cf, 0)?;
                }
                return Ok(false);
            }
        }
        let j = match at {
            Some(j) => j,
            None => {
                if self.runs[i].len() >= MAX_LANES {
                    self.ingest(cf, 0)?;
                }
                let (file, path) = self.start_file()?;
                self.runs[i].push(Run { file, path, lane: lane(cf, key).to_vec(), last: Vec::new() });
                self.runs[i].len() - 1
            }
        };
        let run = &mut self.runs[i][j];
        match value {
            Some(v) => run.file.put(key, v),
            None => run.file.delete(key),
        }
        .map_err(db_err("write a bulk-load table file"))?;
        run.last.clear();
        run.last.extend_from_slice(key);
        Ok(true)
    }

    /// A new table file, named.
    fn start_file(&mut self) -> Result<(SstFileWriter<'a>, PathBuf)> {
        if self.files == 0 {
            std::fs::create_dir_all(&self.dir).map_err(|e| FsError::Meta(format!("create {}: {e}", self.dir.display())))?;
        }
        self.files += 1;
        let path = self.dir.join(format!("{}.sst", self.files));
        let file = SstFileWriter::create(&self.kv.cf_opts);
        file.open(&path).map_err(db_err("start a bulk-load table file"))?;
        Ok((file, path))
    }

    /// Write the sorted writes of `cf` (of [`in_memory`]) to a file and move it into the store.
    fn spill(&mut self, cf: Cf) -> Result<()> {
        let i = cf as usize;
        if self.sorted[i].is_empty() {
            return Ok(());
        }
        let (mut file, path) = self.start_file()?;
        self.sorted[i].drain_sorted(&mut |k, v| {
            match v {
                Some(v) => file.put(k, v),
                None => file.delete(k),
            }
            .map_err(db_err("write a bulk-load table file"))
        })?;
        self.ingest_file(cf, file, &path)
    }

    /// Finish run `j` of `cf` and move it into the store.
    fn ingest(&mut self, cf: Cf, j: usize) -> Result<()> {
        let run = self.runs[cf as usize].remove(j);
        self.ingest_file(cf, run.file, &run.path)
    }

    /// Finish `file`, at `path`, and move it into the store (in `cf`).
    fn ingest_file(&mut self, cf: Cf, mut file: SstFileWriter<'a>, path: &Path) -> Result<()> {
        file.finish().map_err(db_err("finish a bulk-load table file"))?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.kv.db.ingest_external_file_cf_opts(self.cfs[cf as usize], &opts, vec![path]).map_err(db_err("ingest a bulk-load table file"))?;
        self.ingested[cf as usize] += 1;
        // Moved (or linked): the store holds it under its own name.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FsError::Meta(format!("remove {}: {e}", path.display()))),
            _ => Ok(()),
        }
    }

    /// Ingest the runs that may hold one of `keys` (in their lane, at or below its last key).
    fn ingest_holding(&mut self, cf: Cf, keys: &[&[u8]]) -> Result<()> {
        while let Some(j) = self.runs[cf as usize].iter().position(|r| keys.iter().any(|k| lane(cf, k) == r.lane && *k <= r.last.as_slice())) {
            self.ingest(cf, j)?;
        }
        Ok(())
    }
}

impl KvBulk for RocksBulk<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.write(cf, key, Some(value));
    }

    fn del(&mut self, cf: Cf, key: &[u8]) {
        self.write(cf, key, None);
    }

    fn commit(&mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let _one_at_a_time = self.kv.txn.lock();
        self.kv.db.write_opt(batch, &wo).map_err(db_err("write metadata"))
    }

    /// A key at or below the last one of its lane's run may be in it: the run is ingested
    /// first. A layer's keys ascend, so the reads of a load mostly find them above.
    fn multi_get(&mut self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.ingest_holding(cf, keys)?;
        if !in_memory(cf) {
            return self.kv.multi_get(cf, keys);
        }
        // What is in memory; nothing where the family was empty and the key never written;
        // the rest from the store.
        let fresh = self.is_fresh(cf)?;
        let (sorted, seen) = (&self.sorted[cf as usize], &self.seen);
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        let mut rest = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            out.push(None);
            if fresh && !seen.may_hold(cf, k) {
                continue;
            }
            match sorted.get(k) {
                Some(v) => out[i] = v.map(<[u8]>::to_vec),
                None => rest.push(i),
            }
        }
        if !rest.is_empty() {
            let ask: Vec<&[u8]> = rest.iter().map(|i| keys[*i]).collect();
            for (i, v) in rest.into_iter().zip(self.kv.multi_get(cf, &ask)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<()> {
        self.commit()?;
        for cf in Cf::ALL {
            self.spill(cf)?;
            while !self.runs[cf as usize].is_empty() {
                self.ingest(cf, 0)?;
            }
        }
        // Others may write to the store before this writer is used again.
        self.fresh = [None; Cf::ALL.len()];
        self.seen = Seen::default();
        Ok(())
    }
}

impl Drop for RocksBulk<'_> {
    /// Runs not ingested (a load that failed) are removed with their directory.
    fn drop(&mut self) {
        if self.files > 0 {
            self.runs = Cf::ALL.map(|_| Vec::new());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With partitioned index and filters ([`IndexLayout::Partitioned`]), the engine's memory
    /// after reading every key of a store is its block cache (index and filter partitions
    /// included) and memtables, not something that grows with the number
    /// of keys: the table readers hold next to nothing outside the cache (bytes asserted).
    #[test]
    fn index_and_filters_live_in_the_bounded_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = 1 << 20;
        let opts = RocksOptions { block_cache_bytes: cache, index: IndexLayout::Partitioned, ..RocksOptions::default() };
        let kv = RocksKv::open(dir.path(), &opts).unwrap();
        let key = |i: u32| format!("inode-{i:010}").into_bytes();
        let n = 300_000;
        for chunk in (0..n).collect::<Vec<u32>>().chunks(10_000) {
            let ops = chunk.iter().map(|&i| KvOp::Put(Cf::Inodes, key(i), vec![7; 40])).collect();
            kv.commit(ops, false).unwrap();
        }
        kv.persist().unwrap();
        let part = |kv: &RocksKv, name: &str| kv.memory().into_iter().find(|(p, _)| *p == name).unwrap().1;
        // ~20 MB of keys and values in tables: whole index and filter blocks kept by the
        // table readers would be hundreds of KiB.
        for i in (0..n).step_by(7) {
            assert!(kv.get(Cf::Inodes, &key(i)).unwrap().is_some());
        }
        assert_eq!(kv.get(Cf::Inodes, b"inode-absent").unwrap(), None);
        let (readers, cached, pinned) = (part(&kv, "table_readers"), part(&kv, "block_cache"), part(&kv, "block_cache_pinned"));
        eprintln!("table readers {readers} B, block cache {cached} B (pinned {pinned} B)");
        assert!(readers < 64 << 10, "table readers hold {readers} bytes outside the cache");
        assert!(cached <= cache as u64 + (64 << 10), "block cache {cached} bytes, capacity {cache}");
    }

    /// Not a test: CPU per point lookup of each [`IndexLayout`], the reads of a cold `stat`
    /// (a directory entry and an inode) over 10,000 files just written (newest tables) on top
    /// of an older volume's rows (compacted to the last level). Run with
    /// `cargo test --release -p hybridfs-meta -- --ignored --nocapture lookup_cpu_per_index_layout`.
    #[test]
    #[ignore]
    fn lookup_cpu_per_index_layout() {
        let cpu = || {
            let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec for the call to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
        };
        let layouts = [IndexLayout::Whole, IndexLayout::Partitioned, IndexLayout::PartitionedPinnedL0, IndexLayout::PartitionedPinned];
        let dirs: Vec<_> = layouts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let (old, new) = (1_000_000u64, 10_000u64);
        let dentry = |i: u64| [&7u64.to_be_bytes()[..], format!("f{i:07}").as_bytes()].concat();
        for (layout, dir) in layouts.iter().zip(&dirs) {
            let kv = RocksKv::open(dir.path(), &RocksOptions { index: *layout, ..RocksOptions::default() }).unwrap();
            for chunk in (0..old).collect::<Vec<u64>>().chunks(20_000) {
                let mut ops: Vec<KvOp> = chunk.iter().map(|&i| KvOp::Put(Cf::Inodes, (i + 100).to_be_bytes().to_vec(), vec![7; 90])).collect();
                ops.extend(chunk.iter().map(|&i| KvOp::Put(Cf::Dentries, [&(i / 10_000 + 100).to_be_bytes()[..], format!("o{i:07}").as_bytes()].concat(), vec![3; 30])));
                kv.commit(ops, false).unwrap();
            }
            kv.persist().unwrap();
            for cf in [Cf::Inodes, Cf::Dentries] {
                kv.db.compact_range_cf(kv.cf(cf), None::<&[u8]>, None::<&[u8]>);
            }
            for chunk in (0..new).collect::<Vec<u64>>().chunks(2_500) {
                let mut ops: Vec<KvOp> = chunk.iter().map(|&i| KvOp::Put(Cf::Inodes, (old + 1000 + i).to_be_bytes().to_vec(), vec![9; 1100])).collect();
                ops.extend(chunk.iter().map(|&i| KvOp::Put(Cf::Dentries, dentry(i), vec![3; 30])));
                kv.commit(ops, false).unwrap();
                kv.persist().unwrap();
            }
        }
        for round in 0..3 {
            for (layout, dir) in layouts.iter().zip(&dirs) {
                let kv = RocksKv::open(dir.path(), &RocksOptions { index: *layout, ..RocksOptions::default() }).unwrap();
                let mut per = Vec::new();
                for _ in 0..4 {
                    let t0 = cpu();
                    for i in 0..new {
                        assert!(kv.get(Cf::Dentries, &dentry(i)).unwrap().is_some());
                        assert!(kv.get(Cf::Inodes, &(old + 1000 + i).to_be_bytes()).unwrap().is_some());
                    }
                    per.push((cpu() - t0) / new as f64 / 1000.0);
                }
                let mem = kv.memory();
                eprintln!("round {round} {layout:?}: CPU us per stat's two gets, first pass then warm: {per:.2?}; memory {mem:?}");
            }
        }
    }

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

    /// A bulk load's block-id rows past several in-memory spills: rewritten, deleted, read
    /// back (in memory, in an ingested spill, never written) by the writer and by the store.
    #[test]
    fn bulk_block_id_rows_across_spills_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(dir.path(), &RocksOptions::default()).unwrap();
        let key = |i: u32| hybridfs_core::record::block_id_of(&i.to_le_bytes()).0;
        let n = 400_000u32;
        let mut w = kv.bulk_writer();
        for i in 0..n {
            w.put(Cf::Refs, &key(i), &i.to_le_bytes());
            if i % 1000 == 0 {
                w.commit().unwrap();
            }
        }
        w.put(Cf::Refs, &key(1), b"again");
        w.del(Cf::Refs, &key(2));
        w.put(Cf::Refs, &key(n - 1), b"last");
        w.commit().unwrap();
        let keys: Vec<[u8; 32]> = [0, 1, 2, 3, n / 2, n - 1, n, n + 1].into_iter().map(key).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let want = vec![
            Some(0u32.to_le_bytes().to_vec()),
            Some(b"again".to_vec()),
            None,
            Some(3u32.to_le_bytes().to_vec()),
            Some((n / 2).to_le_bytes().to_vec()),
            Some(b"last".to_vec()),
            None,
            None,
        ];
        assert_eq!(w.multi_get(Cf::Refs, &refs).unwrap(), want);
        assert!(kv.get(Cf::Refs, &key(0)).unwrap().is_some(), "the rows went past at least one spill (in the store before the finish)");
        w.finish().unwrap();
        drop(w);
        assert_eq!(kv.multi_get(Cf::Refs, &refs).unwrap(), want);
        let mut count = 0;
        kv.scan(Cf::Refs, &[], None, &mut |_, _| {
            count += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(count, n as usize - 1, "every key once, the deleted one gone");
    }

    #[test]
    fn reopened_store_keeps_its_epoch() {
        use hybridfs_core::meta::Mutation;
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), &RocksOptions::default()).unwrap().apply(vec![Mutation::SetEpoch(5)], true).unwrap();
        assert_eq!(open(dir.path(), &RocksOptions::default()).unwrap().epoch(), 5);
    }
}
