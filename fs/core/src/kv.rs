//! The storage-engine seam: an ordered key-value store with column families, read by point
//! lookups and range scans, written only by transactions. [`crate::meta::MetaStore`] builds the
//! versioned metadata (snapshots, the change journal, reference counts) on top of it once, for
//! every engine; an engine only stores bytes.
//!
//! # Transactions
//!
//! Every write goes through [`Kv::transact`]: a closure gets a [`KvTxn`] whose reads see the
//! committed state plus the transaction's own writes, and whose writes commit atomically (also
//! across a crash) or not at all. An engine serialises transactions that touch the same keys:
//! one process (RocksDB) by running them one at a time, a shared engine (several hosts on one
//! database) by its isolation level, retrying the closure on a serialization failure
//! ([`FsError::MetaConflict`]). So the closure may run more than once and must have no effect
//! outside the transaction; what must happen only once, after the commit, goes in
//! [`KvTxn::on_commit`]. Read-modify-write of shared rows (reference counts, usage, the epoch)
//! is therefore correct whichever engine stores it and however many processes write it.
//!
//! # Errors
//!
//! Engine failures are [`FsError::Meta`] (fatal: the store is broken or refuses),
//! [`FsError::MetaUnavailable`] (transient: the engine may answer again, e.g. a database
//! restarting) or [`FsError::MetaConflict`] (transient: lost a race with another transaction;
//! [`transact`](Kv::transact) retries it). [`FsError::is_transient`] tells them apart.
//!
//! # Bulk loads
//!
//! A store nobody uses yet (a clone filling its new store) may be written below transactions:
//! [`Kv::bulk_writer`] takes writes without reads and commits them a batch at a time, with no
//! durability until [`Kv::persist`]; the loader reads through the writer. Every engine has it
//! (the default goes through [`Kv::transact_unlogged`]); RocksDB writes the families that come
//! in key order into sorted table files it ingests, the others into `WriteBatch`es.
//!
//! Engines: [`MemKv`] here (unit tests), RocksDB in `hybridfs-meta` (the embedded default).
//! Both pass [`conformance`] at the bottom of this file.

use crate::error::{FsError, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The column families. Each is its own ordered key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    Inodes,
    Dentries,
    Cookies,
    Extents,
    Xattrs,
    History,
    Changes,
    Refs,
    Free,
    Orphans,
    Snapshots,
    Gc,
    Pushed,
    Default,
}

impl Cf {
    /// Every family, in declaration order: `cf as usize` is its position here.
    pub const ALL: [Cf; 14] = [
        Cf::Inodes,
        Cf::Dentries,
        Cf::Cookies,
        Cf::Extents,
        Cf::Xattrs,
        Cf::History,
        Cf::Changes,
        Cf::Refs,
        Cf::Free,
        Cf::Orphans,
        Cf::Snapshots,
        Cf::Gc,
        Cf::Pushed,
        Cf::Default,
    ];

    /// The engine's name for the family (RocksDB column family names).
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dentries => "dentries",
            Cf::Cookies => "cookies",
            Cf::Extents => "extents",
            Cf::Xattrs => "xattrs",
            Cf::History => "history",
            Cf::Changes => "changes",
            Cf::Refs => "refs",
            Cf::Free => "free",
            Cf::Orphans => "orphans",
            Cf::Snapshots => "snapshots",
            Cf::Gc => "gc",
            Cf::Pushed => "pushed",
            Cf::Default => "default",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Del(Cf, Vec<u8>),
}

/// Visitor of a scan: gets key and value, returns `false` to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// What runs after a transaction committed (at most once, never after a failed attempt).
pub type CommitHook = Box<dyn FnOnce() + Send>;

/// Reads, the same for the store ([`Kv`]) and a transaction's view of it ([`KvTxn`]).
pub trait KvRead {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Several keys of one family at once, in the order asked (engines batch the lookups).
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }
    /// Keys of any families at once, in the order asked: engines whose reads are round trips
    /// read them in one (and from one snapshot: the PostgreSQL engine). The default reads
    /// them one by one.
    fn get_many(&self, keys: &[(Cf, &[u8])]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|(cf, k)| self.get(*cf, k)).collect()
    }
    /// Visit keys `>= start` and `< end` (no end: to the last key) in order. The visitor must
    /// not write: a transaction collects what it read, then writes.
    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()>;
    /// The greatest key `< end` (no end: the last key of the family).
    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>>;
    /// A hint: these keys (of any families), and the first rows of these ranges (scans that
    /// will start at a [`Head`]'s start, with its end), are about to be read, so an engine
    /// whose reads are round trips may fetch them all at once and answer the reads from what
    /// it fetched (the PostgreSQL engine inside a transaction: one statement). The default
    /// does nothing.
    fn prefetch(&self, _keys: &[(Cf, &[u8])], _ranges: &[Head<'_>]) -> Result<()> {
        Ok(())
    }
    /// The first rows (at most `limit` each, in key order) of several ranges at once, in the
    /// order asked: engines whose reads are round trips read them in one (the PostgreSQL
    /// engine: one statement, one snapshot). The default scans them one by one.
    fn heads(&self, ranges: &[Head<'_>]) -> Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        ranges.iter().map(|h| head_by_scan(self, h)).collect()
    }
}

/// The start of a key range, for [`KvRead::heads`] and [`KvRead::prefetch`]: keys `>= start`
/// and `< end` of `cf`, the first `limit` of them.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub cf: Cf,
    pub start: &'a [u8],
    pub end: &'a [u8],
    pub limit: usize,
}

/// One [`Head`] read by a scan (the default of [`KvRead::heads`]).
pub fn head_by_scan<R: KvRead + ?Sized>(r: &R, h: &Head<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut rows = Vec::new();
    if h.limit == 0 {
        return Ok(rows);
    }
    r.scan(h.cf, h.start, Some(h.end), &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        Ok(rows.len() < h.limit)
    })?;
    Ok(rows)
}

/// One transaction: reads see the committed state plus this transaction's own writes.
pub trait KvTxn: KvRead {
    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>);
    fn del(&mut self, cf: Cf, key: Vec<u8>);
    /// Run `hook` once the transaction has committed (not if it fails or is retried).
    fn on_commit(&mut self, hook: CommitHook);
}

/// The body of a transaction; it may run more than once (see the module comment).
pub type TxnBody<'a> = dyn FnMut(&mut dyn KvTxn) -> Result<()> + 'a;

pub trait Kv: KvRead + Send + Sync + 'static {
    /// Run `body` as one transaction: every write it made commits atomically (also across a
    /// crash), or none when it returns an error. Retried on [`FsError::MetaConflict`], a
    /// bounded number of times. With `sync`, the commit (and every one before it) is durable
    /// against power loss before this returns; without, it survives a crash of the process
    /// but not of the machine.
    fn transact(&self, sync: bool, body: &mut TxnBody<'_>) -> Result<()>;
    /// Make every transaction committed so far durable against power loss.
    fn sync(&self) -> Result<()>;
    /// [`Kv::transact`] for a bulk load into a store nobody uses yet (a clone filling its new
    /// store): the engine may skip its log, so these writes may be lost in a crash (of the
    /// process too) until [`Kv::persist`] returns. The default is an ordinary transaction.
    fn transact_unlogged(&self, body: &mut TxnBody<'_>) -> Result<()> {
        self.transact(false, body)
    }
    /// Make every write so far durable against power loss, [`Kv::transact_unlogged`]'s and
    /// [`Kv::bulk_writer`]'s too.
    fn persist(&self) -> Result<()> {
        self.sync()
    }
    /// A writer for a bulk load into a store nobody uses yet, below transactions: writes
    /// without reads, committed a batch at a time, with the durability of
    /// [`Kv::transact_unlogged`] (none until [`Kv::persist`], after [`KvBulk::finish`]). The
    /// loader reads what it needs through the writer ([`KvBulk::multi_get`]: its own committed
    /// writes included). The default commits each batch as one [`Kv::transact_unlogged`]
    /// transaction; an engine may write straight to its storage instead (RocksDB: sorted table
    /// files, ingested, and `WriteBatch`es past the WAL).
    fn bulk_writer(&self) -> Box<dyn KvBulk + '_> {
        Box::new(TxnBulk { kv: self, ops: Vec::new() })
    }
    /// Tune the engine for a bulk load from now (`on`), or back; a tuning lasts until the
    /// store is closed, never past it (RocksDB: no compaction during the load; the next open
    /// compacts). The default does nothing.
    fn bulk_tuning(&self, _on: bool) -> Result<()> {
        Ok(())
    }
    /// The engine's memory in this process, by part (bytes; `metrics.json` shows them as
    /// `meta_mem_PART_bytes`). The default: nothing to report.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The writes of a bulk load ([`Kv::bulk_writer`]), borrowed: the writer copies them into
/// its batch (no allocation per write for the loader). A later write of a key wins. Nothing
/// else uses the store during the load: a write is not promised to be readable through the
/// store's own reads before [`KvBulk::finish`], nor atomic with the others of its batch (a
/// crash loses the load: it is durable only after [`Kv::persist`], after `finish`).
pub trait KvBulk {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    fn del(&mut self, cf: Cf, key: &[u8]);
    /// Make everything put since the last commit readable through [`KvBulk::multi_get`].
    fn commit(&mut self) -> Result<()>;
    /// The committed values of `keys` in `cf` (the load's own committed writes included).
    fn multi_get(&mut self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Commit, and put everything committed into the store, where its reads see it and
    /// [`Kv::persist`] makes it durable. The writer may be used again after it.
    fn finish(&mut self) -> Result<()> {
        self.commit()
    }
}

/// [`Kv::bulk_writer`] through ordinary transactions (every engine).
struct TxnBulk<'a, K: Kv + ?Sized> {
    kv: &'a K,
    ops: Vec<KvOp>,
}

impl<K: Kv + ?Sized> KvBulk for TxnBulk<'_, K> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops.push(KvOp::Put(cf, key.to_vec(), value.to_vec()));
    }

    fn del(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push(KvOp::Del(cf, key.to_vec()));
    }

    fn commit(&mut self) -> Result<()> {
        let ops = std::mem::take(&mut self.ops);
        if ops.is_empty() {
            return Ok(());
        }
        // In order: a later write of a key wins, as in the engines' own batches.
        self.kv.transact_unlogged(&mut |tx| {
            for op in &ops {
                match op {
                    KvOp::Put(cf, k, v) => tx.put(*cf, k.clone(), v.clone()),
                    KvOp::Del(cf, k) => tx.del(*cf, k.clone()),
                }
            }
            Ok(())
        })
    }

    fn multi_get(&mut self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.kv.multi_get(cf, keys)
    }
}

/// Write `ops` in one transaction (a convenience over [`Kv::transact`]).
pub fn write_ops(kv: &dyn Kv, ops: Vec<KvOp>, sync: bool) -> Result<()> {
    kv.transact(sync, &mut |tx| {
        for op in &ops {
            match op {
                KvOp::Put(cf, k, v) => tx.put(*cf, k.clone(), v.clone()),
                KvOp::Del(cf, k) => tx.del(*cf, k.clone()),
            }
        }
        Ok(())
    })
}

/// How many times [`Kv::transact`] runs a body that keeps losing races, at least, before it
/// gives up.
pub const MAX_ATTEMPTS: u32 = 16;

/// How long [`Kv::transact`] keeps retrying a body that loses races before it gives up (the
/// caller then gets EIO): long enough that contention between hosts is a slowdown, never an
/// error, and bounded so that a livelock cannot hang a caller forever.
pub const CONFLICT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Run `attempt` (one whole transaction: begin, body, commit) until it commits, for engines
/// whose transactions can lose races: a [`FsError::MetaConflict`] tries again after a short,
/// growing, jittered pause, for [`CONFLICT_PATIENCE`] and at least [`MAX_ATTEMPTS`] times;
/// any other error ends it.
pub fn retry_conflicts(attempt: impl FnMut() -> Result<()>) -> Result<()> {
    retry_conflicts_for(CONFLICT_PATIENCE, attempt)
}

/// [`retry_conflicts`] with its patience given.
pub fn retry_conflicts_for(patience: std::time::Duration, mut attempt: impl FnMut() -> Result<()>) -> Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    let mut n = 0u32;
    loop {
        n += 1;
        match attempt() {
            Err(FsError::MetaConflict(why)) if n < MAX_ATTEMPTS || start.elapsed() < patience => {
                tracing::debug!("metadata transaction conflict ({why}); attempt {n}");
                if n == MAX_ATTEMPTS {
                    tracing::info!("a metadata transaction lost {n} races in a row ({why}); still retrying");
                }
                // Jitter, so racing transactions do not retry in lockstep.
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                std::thread::sleep(pause + pause * (nanos % 100) / 100);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(FsError::MetaConflict(why)) => {
                return Err(FsError::MetaConflict(format!("{why} (lost {n} races in {:.1?})", start.elapsed())))
            }
            other => return other,
        }
    }
}

/// The transactions of an engine that one process owns (RocksDB, [`MemKv`]): run one at a
/// time under `lock`, reading through an overlay of the transaction's own writes, committed as
/// one atomic batch by `commit`. No other writer exists, so there are no conflicts to retry.
pub fn serial_transact(
    read: &dyn KvRead,
    lock: &Mutex<()>,
    body: &mut TxnBody<'_>,
    commit: impl FnOnce(Vec<KvOp>) -> Result<()>,
) -> Result<()> {
    let _one_at_a_time = lock.lock();
    let mut tx = Overlay::new(read);
    body(&mut tx)?;
    let (ops, hooks) = tx.finish();
    commit(ops)?;
    for hook in hooks {
        hook();
    }
    Ok(())
}

/// A transaction as a map of pending writes over a reader of the committed state (or of an
/// engine transaction's snapshot): reads see the pending writes first; [`Overlay::finish`]
/// hands the writes over for one commit, with the hooks to run after it.
pub struct Overlay<'a> {
    read: &'a dyn KvRead,
    /// Pending writes by (family, key); `None` deletes.
    writes: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    hooks: Vec<CommitHook>,
}

impl<'a> Overlay<'a> {
    pub fn new(read: &'a dyn KvRead) -> Self {
        Overlay { read, writes: BTreeMap::new(), hooks: Vec::new() }
    }

    /// The writes, in (family, key) order, and the commit hooks.
    pub fn finish(self) -> (Vec<KvOp>, Vec<CommitHook>) {
        let ops = self.writes.into_iter().map(|((cf, k), v)| match v {
            Some(v) => KvOp::Put(cf, k, v),
            None => KvOp::Del(cf, k),
        });
        (ops.collect(), self.hooks)
    }
}

impl Overlay<'_> {
    /// The pending writes of `cf` in `[start, end)`.
    fn pending(&self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.writes
            .range((cf, start.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && end.is_none_or(|e| k.as_slice() < e))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl KvRead for Overlay<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.read.get(cf, key),
        }
    }

    fn prefetch(&self, keys: &[(Cf, &[u8])], ranges: &[Head<'_>]) -> Result<()> {
        let unwritten: Vec<(Cf, &[u8])> = keys.iter().copied().filter(|(cf, k)| !self.writes.contains_key(&(*cf, k.to_vec()))).collect();
        if unwritten.is_empty() && ranges.is_empty() {
            return Ok(());
        }
        // Ranges go down whole: a scan of one merges what the store answers with the pending
        // writes, as any scan does.
        self.read.prefetch(&unwritten, ranges)
    }

    fn heads(&self, ranges: &[Head<'_>]) -> Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        // Ranges with no pending write are the store's answer; the others a merged scan.
        let clean: Vec<bool> = ranges.iter().map(|h| self.pending(h.cf, h.start, Some(h.end)).is_empty()).collect();
        let asked: Vec<Head<'_>> = ranges.iter().zip(&clean).filter(|(_, c)| **c).map(|(h, _)| *h).collect();
        let mut stored = self.read.heads(&asked)?.into_iter();
        ranges
            .iter()
            .zip(clean)
            .map(|(h, clean)| match clean {
                true => stored.next().ok_or_else(|| FsError::Meta("heads: an engine answered fewer ranges than asked".into())),
                false => head_by_scan(self, h),
            })
            .collect()
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        let mut pending = self.pending(cf, start, end).into_iter().peekable();
        if pending.peek().is_none() {
            return self.read.scan(cf, start, end, f);
        }
        // Merge the store's rows with the pending ones, which win on equal keys.
        let mut stopped = false;
        self.read.scan(cf, start, end, &mut |k, v| {
            while let Some((pk, _)) = pending.peek() {
                if pk.as_slice() > k {
                    break;
                }
                let (pk, pv) = pending.next().expect("peeked");
                let same = pk.as_slice() == k;
                if let Some(pv) = pv {
                    if !f(&pk, &pv)? {
                        stopped = true;
                        return Ok(false);
                    }
                }
                if same {
                    return Ok(true);
                }
            }
            if !f(k, v)? {
                stopped = true;
                return Ok(false);
            }
            Ok(true)
        })?;
        if !stopped {
            for (pk, pv) in pending {
                if let Some(pv) = pv {
                    if !f(&pk, &pv)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        // The greatest live key: the store's, unless deleted here, against the pending puts.
        let mut bound = end.map(<[u8]>::to_vec);
        loop {
            let stored = self.read.last_before(cf, bound.as_deref())?;
            let lo = stored.clone().unwrap_or_default();
            let newest_put = self.pending(cf, &lo, end).into_iter().rev().find(|(_, v)| v.is_some()).map(|(k, _)| k);
            match (&stored, newest_put) {
                (_, Some(p)) if stored.as_ref().is_none_or(|s| p >= *s) => return Ok(Some(p)),
                (Some(s), _) if matches!(self.writes.get(&(cf, s.clone())), Some(None)) => bound = Some(s.clone()),
                _ => return Ok(stored),
            }
        }
    }
}

impl KvTxn for Overlay<'_> {
    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((cf, key), Some(value));
    }

    fn del(&mut self, cf: Cf, key: Vec<u8>) {
        self.writes.insert((cf, key), None);
    }

    fn on_commit(&mut self, hook: CommitHook) {
        self.hooks.push(hook);
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// In-memory [`Kv`] for unit tests.
#[derive(Default)]
pub struct MemKv {
    cfs: RwLock<BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>>,
    txn: Mutex<()>,
}

impl KvRead for MemKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // Copy the range out first: the visitor may read the store again.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let cfs = self.cfs.read();
            let Some(m) = cfs.get(&cf) else { return Ok(()) };
            let hi = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
            m.range((Bound::Included(start.to_vec()), hi)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (k, v) in rows {
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let cfs = self.cfs.read();
        let Some(m) = cfs.get(&cf) else { return Ok(None) };
        let hi = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        Ok(m.range((Bound::Unbounded, hi)).next_back().map(|(k, _)| k.clone()))
    }
}

impl Kv for MemKv {
    fn transact(&self, _sync: bool, body: &mut TxnBody<'_>) -> Result<()> {
        serial_transact(self, &self.txn, body, |ops| {
            let mut cfs = self.cfs.write();
            for op in ops {
                match op {
                    KvOp::Put(cf, k, v) => {
                        cfs.entry(cf).or_default().insert(k, v);
                    }
                    KvOp::Del(cf, k) => {
                        if let Some(m) = cfs.get_mut(&cf) {
                            m.remove(&k);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The behaviour every engine must show; engines call this from their own tests.
pub fn conformance(kv: &dyn Kv) {
    let put = |k: &[u8], v: &[u8]| KvOp::Put(Cf::Extents, k.to_vec(), v.to_vec());
    write_ops(kv, vec![put(b"a1", b"x"), put(b"a2", b"y"), put(b"b1", b"z"), put(b"a\xff", b"w")], true).unwrap();
    write_ops(kv, vec![KvOp::Put(Cf::Inodes, b"a1".to_vec(), b"other".to_vec())], false).unwrap();
    assert_eq!(kv.get(Cf::Extents, b"a1").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(kv.get(Cf::Extents, b"a3").unwrap(), None);
    let keys: [&[u8]; 3] = [b"b1", b"zz", b"a1"];
    let many = kv.multi_get(Cf::Extents, &keys).unwrap();
    assert_eq!(many, vec![Some(b"z".to_vec()), None, Some(b"x".to_vec())], "multi_get answers in the order asked");
    let mixed: [(Cf, &[u8]); 4] = [(Cf::Inodes, b"a1"), (Cf::Extents, b"a1"), (Cf::Inodes, b"zz"), (Cf::Extents, b"b1")];
    let got = kv.get_many(&mixed).unwrap();
    assert_eq!(got, vec![Some(b"other".to_vec()), Some(b"x".to_vec()), None, Some(b"z".to_vec())], "get_many: families kept apart, order kept");
    assert_eq!(kv.get_many(&[]).unwrap(), Vec::<Option<Vec<u8>>>::new());
    let scan = |r: &dyn KvRead, start: &[u8], end: Option<&[u8]>| {
        let mut seen = Vec::new();
        r.scan(Cf::Extents, start, end, &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        seen
    };
    let end = prefix_end(b"a").unwrap();
    let names = |rows: Vec<(Vec<u8>, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(names(scan(kv, b"a", Some(&end))), vec![b"a1".to_vec(), b"a2".to_vec(), b"a\xff".to_vec()], "ordered, bounded, per family");
    let mut first = Vec::new();
    kv.scan(Cf::Extents, b"a2", None, &mut |k, _| {
        first.push(k.to_vec());
        Ok(false)
    })
    .unwrap();
    assert_eq!(first, vec![b"a2".to_vec()], "a visitor stops the scan");
    assert_eq!(kv.last_before(Cf::Extents, Some(b"b")).unwrap(), Some(b"a\xff".to_vec()));
    assert_eq!(kv.last_before(Cf::Extents, None).unwrap(), Some(b"b1".to_vec()));
    assert_eq!(kv.last_before(Cf::Refs, None).unwrap(), None);
    write_ops(kv, vec![KvOp::Del(Cf::Extents, b"a1".to_vec()), put(b"a2", b"y2")], false).unwrap();
    assert_eq!(kv.get(Cf::Extents, b"a1").unwrap(), None);
    assert_eq!(kv.get(Cf::Extents, b"a2").unwrap().as_deref(), Some(&b"y2"[..]));
    assert_eq!(kv.get(Cf::Inodes, b"a1").unwrap().as_deref(), Some(&b"other"[..]));

    // A transaction reads its own writes, in point lookups, scans and last_before.
    kv.transact(false, &mut |tx| {
        tx.put(Cf::Extents, b"a0".to_vec(), b"new".to_vec());
        tx.del(Cf::Extents, b"a2".to_vec());
        tx.put(Cf::Extents, b"a\xff".to_vec(), b"w2".to_vec());
        tx.put(Cf::Extents, b"c1".to_vec(), b"c".to_vec());
        assert_eq!(tx.get(Cf::Extents, b"a0")?.as_deref(), Some(&b"new"[..]));
        assert_eq!(tx.get(Cf::Extents, b"a2")?, None);
        let rows = scan(tx, b"a", Some(&end));
        assert_eq!(rows, vec![(b"a0".to_vec(), b"new".to_vec()), (b"a\xff".to_vec(), b"w2".to_vec())]);
        assert_eq!(tx.last_before(Cf::Extents, None)?, Some(b"c1".to_vec()));
        assert_eq!(tx.last_before(Cf::Extents, Some(b"a\xff"))?, Some(b"a0".to_vec()), "a deleted key is skipped");
        assert_eq!(tx.multi_get(Cf::Extents, &[b"a0", b"a2"])?, vec![Some(b"new".to_vec()), None]);
        assert_eq!(tx.get_many(&[(Cf::Inodes, b"a1"), (Cf::Extents, b"a0"), (Cf::Extents, b"a2")])?, vec![Some(b"other".to_vec()), Some(b"new".to_vec()), None]);
        Ok(())
    })
    .unwrap();
    assert_eq!(names(scan(kv, b"", None)), vec![b"a0".to_vec(), b"a\xff".to_vec(), b"b1".to_vec(), b"c1".to_vec()]);

    // Heads: the first rows of several ranges at once, outside a transaction and inside one
    // (its own writes included); a prefetched range scanned past what was fetched.
    let h = |start: &'static [u8], end: &'static [u8], limit| Head { cf: Cf::Extents, start, end, limit };
    let keys_of = |rows: Vec<Vec<(Vec<u8>, Vec<u8>)>>| rows.into_iter().map(names).collect::<Vec<_>>();
    let got = kv.heads(&[h(b"a", b"b", 1), h(b"b", b"d", 5), h(b"d", b"e", 3), h(b"a", b"z", 0)]).unwrap();
    assert_eq!(got[0], vec![(b"a0".to_vec(), b"new".to_vec())], "heads carry values");
    assert_eq!(keys_of(got), vec![vec![b"a0".to_vec()], vec![b"b1".to_vec(), b"c1".to_vec()], vec![], vec![]], "heads: in the order asked, each at most its limit");
    assert!(kv.heads(&[]).unwrap().is_empty());
    let rolled_back = kv.transact(false, &mut |tx| {
        tx.prefetch(&[(Cf::Extents, b"b1")], &[h(b"a", b"b", 1), h(b"b", b"d", 1)])?;
        tx.del(Cf::Extents, b"a0".to_vec());
        tx.put(Cf::Extents, b"b0".to_vec(), b"b0".to_vec());
        assert_eq!(names(scan(tx, b"a", Some(b"b"))), vec![b"a\xff".to_vec()], "a prefetched range, its fetched row deleted here");
        assert_eq!(names(scan(tx, b"b", Some(b"d"))), vec![b"b0".to_vec(), b"b1".to_vec(), b"c1".to_vec()], "a prefetched range read past its limit");
        let got = tx.heads(&[h(b"a", b"b", 1), h(b"c", b"d", 2), h(b"b", b"d", 2)])?;
        assert_eq!(keys_of(got), vec![vec![b"a\xff".to_vec()], vec![b"c1".to_vec()], vec![b"b0".to_vec(), b"b1".to_vec()]], "heads see the transaction's writes");
        assert_eq!(tx.get(Cf::Extents, b"b1")?.as_deref(), Some(&b"z"[..]));
        Err(FsError::Meta("rolled back on purpose".into()))
    });
    assert!(matches!(rolled_back, Err(FsError::Meta(ref m)) if m == "rolled back on purpose"), "{rolled_back:?}");
    assert_eq!(names(scan(kv, b"", None)), vec![b"a0".to_vec(), b"a\xff".to_vec(), b"b1".to_vec(), b"c1".to_vec()]);

    // A failing transaction writes nothing and runs no commit hook.
    let hooked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let h = hooked.clone();
    let failed = kv.transact(false, &mut |tx| {
        tx.put(Cf::Extents, b"zz".to_vec(), b"never".to_vec());
        let h = h.clone();
        tx.on_commit(Box::new(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        Err(FsError::Meta("the body failed".into()))
    });
    assert!(failed.is_err());
    assert_eq!(kv.get(Cf::Extents, b"zz").unwrap(), None, "all or nothing");
    assert_eq!(hooked.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Commit hooks run once, after the commit.
    let h = hooked.clone();
    kv.transact(true, &mut |tx| {
        tx.put(Cf::Refs, b"n".to_vec(), 0u64.to_le_bytes().to_vec());
        let h = h.clone();
        tx.on_commit(Box::new(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        Ok(())
    })
    .unwrap();
    assert_eq!(hooked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Read-modify-write from several threads loses no update (what reference counts need).
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    kv.transact(false, &mut |tx| {
                        let n = tx.get(Cf::Refs, b"n")?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                        tx.put(Cf::Refs, b"n".to_vec(), (n + 1).to_le_bytes().to_vec());
                        Ok(())
                    })
                    .unwrap();
                }
            });
        }
    });
    let n = kv.get(Cf::Refs, b"n").unwrap().map(|v| u64::from_le_bytes(v.try_into().unwrap()));
    assert_eq!(n, Some(200), "concurrent increments are serialised");
    kv.sync().unwrap();

    // A bulk writer: a later write of a key wins, its reads see what it committed, and the
    // store's own reads see everything once it finished.
    let mut w = kv.bulk_writer();
    w.put(Cf::Xattrs, b"k1", b"v1");
    w.put(Cf::Xattrs, b"k2", b"v2");
    w.del(Cf::Xattrs, b"k1");
    w.put(Cf::Xattrs, b"k2", b"v3");
    w.del(Cf::Extents, b"b1");
    w.commit().unwrap();
    assert_eq!(w.multi_get(Cf::Xattrs, &[b"k1", b"k2"]).unwrap(), vec![None, Some(b"v3".to_vec())]);
    w.put(Cf::Xattrs, b"k1", b"again");
    w.commit().unwrap();
    assert_eq!(w.multi_get(Cf::Xattrs, &[b"k1"]).unwrap(), vec![Some(b"again".to_vec())]);
    // Keys in order, then out of order, rewritten and deleted, over many commits (an engine
    // that writes sorted runs starts new ones, or gives up on them, on the way).
    let key = |i: u32| format!("n{i:05}").into_bytes();
    for round in 0..3u32 {
        for i in (0..300u32).filter(|i| i % 3 == round) {
            w.put(Cf::Dentries, &key(i), &i.to_be_bytes());
        }
        w.commit().unwrap();
    }
    for i in (0..300u32).rev().step_by(2) {
        w.put(Cf::Dentries, &key(i), b"odd");
        w.commit().unwrap();
        assert_eq!(w.multi_get(Cf::Dentries, &[&key(i)]).unwrap(), vec![Some(b"odd".to_vec())]);
    }
    for i in (0..300u32).step_by(5) {
        w.del(Cf::Dentries, &key(i));
    }
    w.commit().unwrap();
    // Block-id families (sorted in memory by an engine that may): read back across a finish.
    w.put(Cf::Refs, b"r1", b"1");
    w.put(Cf::Refs, b"r2", b"2");
    w.finish().unwrap();
    w.put(Cf::Refs, b"r1", b"3");
    w.del(Cf::Refs, b"r2");
    w.put(Cf::Refs, b"r3", b"4");
    w.commit().unwrap();
    let got = w.multi_get(Cf::Refs, &[b"r0", b"r1", b"r2", b"r3"]).unwrap();
    assert_eq!(got, vec![None, Some(b"3".to_vec()), None, Some(b"4".to_vec())]);
    w.finish().unwrap();
    // A block-id family empty when the writer starts (an engine may know, without reading,
    // that a key it never wrote is absent): read before and after writes, across a finish
    // and a write by another writer in between.
    assert_eq!(w.multi_get(Cf::Pushed, &[b"p1"]).unwrap(), vec![None]);
    w.put(Cf::Pushed, b"p1", b"1");
    w.put(Cf::Pushed, b"p2", b"2");
    w.del(Cf::Pushed, b"p2");
    w.commit().unwrap();
    assert_eq!(w.multi_get(Cf::Pushed, &[b"p0", b"p1", b"p2"]).unwrap(), vec![None, Some(b"1".to_vec()), None]);
    w.finish().unwrap();
    write_ops(kv, vec![KvOp::Put(Cf::Pushed, b"p3".to_vec(), b"3".to_vec())], false).unwrap();
    w.put(Cf::Pushed, b"p4", b"4");
    w.commit().unwrap();
    let got = w.multi_get(Cf::Pushed, &[b"p1", b"p3", b"p4", b"p5"]).unwrap();
    assert_eq!(got, vec![Some(b"1".to_vec()), Some(b"3".to_vec()), Some(b"4".to_vec()), None]);
    w.finish().unwrap();
    drop(w);
    assert_eq!(kv.get(Cf::Pushed, b"p1").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(kv.get(Cf::Pushed, b"p2").unwrap(), None);
    assert_eq!(kv.get(Cf::Refs, b"r1").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(kv.get(Cf::Refs, b"r2").unwrap(), None);
    assert_eq!(kv.get(Cf::Xattrs, b"k1").unwrap().as_deref(), Some(&b"again"[..]));
    assert_eq!(kv.get(Cf::Xattrs, b"k2").unwrap().as_deref(), Some(&b"v3"[..]));
    assert_eq!(kv.get(Cf::Extents, b"b1").unwrap(), None);
    let mut rows = Vec::new();
    kv.scan(Cf::Dentries, b"n", Some(b"o"), &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    let want: Vec<(Vec<u8>, Vec<u8>)> = (0..300u32)
        .filter(|i| i % 5 != 0)
        .map(|i| (key(i), if i % 2 == 1 { b"odd".to_vec() } else { i.to_be_bytes().to_vec() }))
        .collect();
    assert_eq!(rows, want, "every key's last write, in order");
    kv.persist().unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_kv_conforms() {
        super::conformance(&super::MemKv::default());
    }

    #[test]
    fn a_family_as_usize_is_its_position_in_all() {
        for (i, cf) in super::Cf::ALL.iter().enumerate() {
            assert_eq!(*cf as usize, i, "{cf:?}");
        }
    }

    #[test]
    fn conflicts_are_retried_a_bounded_number_of_times_and_other_errors_are_not() {
        use crate::error::FsError;
        let mut n = 0;
        super::retry_conflicts(|| {
            n += 1;
            if n < 3 { Err(FsError::MetaConflict("lost a race".into())) } else { Ok(()) }
        })
        .unwrap();
        assert_eq!(n, 3, "retried until it committed");
        let mut n = 0;
        let e = super::retry_conflicts_for(std::time::Duration::ZERO, || {
            n += 1;
            Err(FsError::MetaConflict("always".into()))
        });
        assert!(matches!(e, Err(FsError::MetaConflict(_))));
        assert_eq!(n, super::MAX_ATTEMPTS, "gives up after MAX_ATTEMPTS once its patience is spent");
        let (mut n, start) = (0, std::time::Instant::now());
        let patience = std::time::Duration::from_secs(3); // its first MAX_ATTEMPTS take about 1.5 s
        let e = super::retry_conflicts_for(patience, || {
            n += 1;
            Err(FsError::MetaConflict("always".into()))
        });
        assert!(matches!(e, Err(FsError::MetaConflict(_))));
        assert!(n > super::MAX_ATTEMPTS && start.elapsed() >= patience, "keeps trying for its patience ({n} attempts)");
        let mut n = 0;
        let e = super::retry_conflicts(|| {
            n += 1;
            Err(FsError::Meta("broken".into()))
        });
        assert!(matches!(e, Err(FsError::Meta(_))) && n == 1, "a fatal error is not retried");
    }

    #[test]
    fn prefix_end_skips_0xff() {
        assert_eq!(super::prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(super::prefix_end(b"\xff\xff"), None);
    }
}
