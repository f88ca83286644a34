//! Writes: [`MetaStore::apply`] turns a batch of mutations into one atomic engine batch,
//! moving replaced versions to history, writing journal rows and adjusting block references
//! and usage inside the same batch (invariants 1 to 3).

use super::codec::{be, change_key, dec, enc, file_usage, hist_key, hist_prefix, k1, k2, k_named, le, sealed_of, versioned};
use super::read::get_at;
use super::refs::finish_refs;
use super::{MetaStore, Mutation, LIVE};
use crate::error::{FsError, Result};
use crate::kv::{prefix_end, Cf, Head, KvRead, KvTxn};
use crate::types::{BlockId, Dentry, Extent, Inode, SnapshotInfo};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A live version: its epoch and payload.
pub(super) type LiveRow = Option<(u64, Vec<u8>)>;

/// What one attempt at a batch accumulates besides its writes (which the transaction holds,
/// so its reads see them).
struct Batch {
    /// The epoch the batch writes in, read from the store inside the transaction.
    epoch: u64,
    refs: BTreeMap<BlockId, i64>,
    usage: (i64, i64),
    /// The snapshots' epochs, read once per attempt when a retired version needs them.
    snap_epochs: Option<Vec<u64>>,
    /// No snapshot exists and the batch is a bulk load: see [`MetaStore::apply_in`].
    blind: bool,
}

impl MetaStore {
    pub fn apply(&self, batch: Vec<Mutation>, sync: bool) -> Result<()> {
        self.apply_freeing(batch, sync).map(|_| ())
    }

    /// [`MetaStore::apply`], returning the blocks whose last reference the batch dropped (they
    /// are on the free list now).
    ///
    /// One engine transaction: every read-modify-write here (versions, reference counts, usage,
    /// the epoch) reads inside it, so it is correct whichever engine stores it and however
    /// many processes share that engine; the engine may run the body again after a conflict.
    pub fn apply_freeing(&self, batch: Vec<Mutation>, sync: bool) -> Result<Vec<BlockId>> {
        self.apply_slice(&batch, sync)
    }

    /// [`MetaStore::apply_freeing`] of a batch the caller keeps (to try it again).
    pub fn apply_slice(&self, batch: &[Mutation], sync: bool) -> Result<Vec<BlockId>> {
        let mut freed = Vec::new();
        self.kv.transact(sync, &mut |tx| {
            freed = self.apply_in(tx, batch, false)?;
            Ok(())
        })?;
        Ok(freed)
    }

    /// [`MetaStore::apply`] for a bulk load into a store that nothing uses yet (a clone
    /// filling its new store): the same versions, journal rows, references and usage, but the
    /// engine may skip its log, so the batch may be lost in a crash until
    /// [`MetaStore::persist`] returns. Whoever loads in bulk marks the result complete only
    /// after that (a crash before leaves a load that is known to be unfinished).
    pub fn apply_unlogged(&self, batch: Vec<Mutation>) -> Result<()> {
        self.kv.transact_unlogged(&mut |tx| self.apply_in(tx, &batch, true).map(|_| ()))
    }

    /// Make every batch so far durable against power loss, unlogged ones included.
    pub fn persist(&self) -> Result<()> {
        self.kv.persist()
    }

    /// `bulk`: a store with no snapshot skips reading the old version of records whose
    /// replacement has no effect beyond the overwrite (names, readdir rows, xattrs: no
    /// history to keep, no reference or usage to adjust).
    fn apply_in(&self, tx: &mut dyn KvTxn, batch: &[Mutation], bulk: bool) -> Result<Vec<BlockId>> {
        let deltas = self.usage_deltas.load(Ordering::Relaxed);
        if !bulk {
            prefetch(tx, batch, !self.exclusive, !deltas)?;
        }
        // An exclusive store knows the stored epoch (`MetaStore::new_exclusive`).
        let epoch = if self.exclusive { self.epoch() } else { stored_epoch(tx)? };
        let mut b = Batch { epoch, refs: BTreeMap::new(), usage: (0, 0), snap_epochs: None, blind: false };
        if bulk {
            b.blind = !pinned(tx, &mut b, 0, u64::MAX)?;
        }
        let mut new_epoch = None;
        for m in batch {
            match m {
                Mutation::PutInode(i) => vput(tx, &mut b, Cf::Inodes, k1(i.ino), enc(i))?,
                Mutation::InsertInode(i) => vput_new(tx, &mut b, Cf::Inodes, k1(i.ino), enc(i))?,
                Mutation::DelInode(ino) => vdel(tx, &mut b, Cf::Inodes, k1(*ino))?,
                Mutation::PutDentry { parent, name, dentry } => {
                    let mut row = enc(dentry);
                    row.extend_from_slice(name);
                    vput(tx, &mut b, Cf::Cookies, k2(*parent, dentry.cookie), row)?;
                    vput(tx, &mut b, Cf::Dentries, k_named(*parent, name), enc(dentry))?;
                }
                Mutation::DelDentry { parent, name, cookie } => {
                    vdel(tx, &mut b, Cf::Cookies, k2(*parent, *cookie))?;
                    vdel(tx, &mut b, Cf::Dentries, k_named(*parent, name))?;
                }
                Mutation::PutExtent { ino, block, extent } => vput(tx, &mut b, Cf::Extents, k2(*ino, *block), enc(extent))?,
                Mutation::DelExtent { ino, block } => vdel(tx, &mut b, Cf::Extents, k2(*ino, *block))?,
                Mutation::PutXattr { ino, name, value } => vput(tx, &mut b, Cf::Xattrs, k_named(*ino, name), value.clone())?,
                Mutation::DelXattr { ino, name } => vdel(tx, &mut b, Cf::Xattrs, k_named(*ino, name))?,
                Mutation::Journal(j) => tx.put(Cf::Changes, change_key(j.epoch, Cf::Extents, &k2(j.ino, j.block)), Vec::new()),
                Mutation::PutOrphan(ino) => tx.put(Cf::Orphans, k1(*ino), Vec::new()),
                Mutation::DelOrphan(ino) => tx.del(Cf::Orphans, k1(*ino)),
                Mutation::SetEpoch(e) => new_epoch = Some(*e),
                Mutation::PutSnapshot(s) => {
                    let next = next_snapshot_id(tx)?.max(s.id + 1);
                    tx.put(Cf::Default, b"snap_next".to_vec(), next.to_le_bytes().to_vec());
                    tx.put(Cf::Snapshots, s.name.as_bytes().to_vec(), enc(s));
                }
                Mutation::DelSnapshot(name) => tx.del(Cf::Snapshots, name.as_bytes().to_vec()),
                Mutation::PutGcRange { from, to } => tx.put(Cf::Gc, k2(*from, *to), Vec::new()),
                Mutation::DelGcRange { from, to } => tx.del(Cf::Gc, k2(*from, *to)),
                Mutation::DelFree(id) => tx.del(Cf::Free, id.0.to_vec()),
                Mutation::Raw { key, value } => {
                    let (cf, base) = key.cf_base();
                    match value {
                        Some(payload) => vput(tx, &mut b, cf, base, payload.clone())?,
                        None => vdel(tx, &mut b, cf, base)?,
                    }
                }
                Mutation::SetMeta { name, value } => {
                    let k = [&b"m:"[..], name.as_bytes()].concat();
                    match value {
                        Some(v) => tx.put(Cf::Default, k, v.clone()),
                        None => tx.del(Cf::Default, k),
                    }
                }
                Mutation::MarkPushed { id, packed } => tx.put(Cf::Pushed, id.0.to_vec(), enc(packed)),
                Mutation::ExpectInode(ino, want) => {
                    let now: Option<Inode> = get_at(tx, Cf::Inodes, &k1(*ino), LIVE)?.map(|v| dec("inode", &v)).transpose()?;
                    if now != *want {
                        return Err(FsError::MetaStale(format!("inode {ino}")));
                    }
                }
                Mutation::ExpectEpoch(e) if *e != b.epoch => {
                    return Err(FsError::MetaStale(format!("epoch {e} ended (now {})", b.epoch)));
                }
                Mutation::ExpectEpoch(_) => {}
                Mutation::ExpectOpeners { ino, hosts } => {
                    let now = super::hosts::openers_in(tx, *ino)?;
                    if now != *hosts {
                        return Err(FsError::MetaStale(format!("hosts holding inode {ino} open")));
                    }
                }
                Mutation::PutOpen { ino, host } => tx.put(Cf::Default, super::hosts::open_key(*ino, *host), Vec::new()),
                Mutation::DelOpen { ino, host } => tx.del(Cf::Default, super::hosts::open_key(*ino, *host)),
                Mutation::MergeInodeData(new) => {
                    let now: Option<Inode> = get_at(tx, Cf::Inodes, &k1(new.ino), LIVE)?.map(|v| dec("inode", &v)).transpose()?;
                    if let Some(mut inode) = now {
                        super::hosts::merge_data_fields(&mut inode, new);
                        vput(tx, &mut b, Cf::Inodes, k1(inode.ino), enc(&inode))?;
                    }
                }
                Mutation::ExpectParent { ino, parent } => {
                    let now: Option<Inode> = get_at(tx, Cf::Inodes, &k1(*ino), LIVE)?.map(|v| dec("inode", &v)).transpose()?;
                    if now.is_none_or(|i| i.parent != *parent) {
                        return Err(FsError::MetaStale(format!("parent of directory {ino}")));
                    }
                }
                Mutation::ExpectExtent { ino, block, extent } => {
                    let now: Option<Extent> = get_at(tx, Cf::Extents, &k2(*ino, *block), LIVE)?.map(|v| dec("extent", &v)).transpose()?;
                    if now != *extent {
                        return Err(FsError::MetaStale(format!("block {block} of inode {ino}")));
                    }
                }
                Mutation::MergeInodeFields { before, after, data } => {
                    let now: Option<Inode> = get_at(tx, Cf::Inodes, &k1(after.ino), LIVE)?.map(|v| dec("inode", &v)).transpose()?;
                    if let Some(mut inode) = now {
                        super::hosts::merge_changed_fields(&mut inode, before, after, *data);
                        vput(tx, &mut b, Cf::Inodes, k1(inode.ino), enc(&inode))?;
                    }
                }
                Mutation::ExpectDentry { parent, name, dentry } => {
                    let now: Option<Dentry> =
                        get_at(tx, Cf::Dentries, &k_named(*parent, name), LIVE)?.map(|v| dec("directory entry", &v)).transpose()?;
                    if now != *dentry {
                        return Err(FsError::MetaStale(format!("entry {} of directory {parent}", String::from_utf8_lossy(name))));
                    }
                }
                Mutation::Restore { key, at } => {
                    let (cf, base) = key.cf_base();
                    match get_at(tx, cf, &base, *at)? {
                        Some(payload) => vput(tx, &mut b, cf, base, payload)?,
                        None => vdel(tx, &mut b, cf, base)?,
                    }
                }
            }
        }
        let freed = finish_refs(tx, &b.refs)?;
        if b.usage != (0, 0) && deltas {
            // A row of its own that no transaction reads (folded into a shard now and then by
            // `fold_usage_deltas`): see `MetaStore::set_usage_deltas`.
            tx.put(Cf::Default, usage_delta_key(), usage_delta_row(b.usage.0, b.usage.1));
        } else if b.usage != (0, 0) {
            // Into this thread's shard, not the one `usage` row: batches of different
            // threads and hosts (a shared engine) do not all read-modify-write one row, which
            // made every pair of concurrent creates a conflict (see `usage_shard`).
            let key = usage_shard_key(usage_shard());
            let (files, bytes) = tx.get(Cf::Default, &key)?.map_or(Ok((0, 0)), |v| usage_delta(&v))?;
            tx.put(Cf::Default, key, usage_delta_row(files + b.usage.0, bytes + b.usage.1));
        }
        // The epoch this process reads with moves on once the batch is in (every versioned
        // write of the batch is in the old epoch), or catches up with another process's
        // move; when neither happened (nearly every batch) no hook is needed.
        if let Some(e) = new_epoch {
            tx.put(Cf::Default, b"epoch".to_vec(), e.to_le_bytes().to_vec());
        }
        let seen = new_epoch.unwrap_or(epoch);
        if seen != self.epoch() {
            let cache = Arc::clone(&self.epoch);
            tx.on_commit(Box::new(move || cache.store(seen, Ordering::Release)));
        }
        Ok(freed)
    }

    /// Make every batch applied so far durable against power loss.
    pub fn sync(&self) -> Result<()> {
        self.kv.sync()
    }

    /// The engine's memory by part ([`crate::kv::Kv::memory`]).
    pub fn engine_memory(&self) -> Vec<(&'static str, u64)> {
        self.kv.memory()
    }
}

/// Tell the engine every row the batch will read first (the epoch unless the store knows it,
/// this thread's usage shard, the rows the checks read, the live rows the writes replace): a
/// shared engine then reads them in one round trip instead of one each (the rows are read in
/// the loop as before). The usage shard (`shard`: the batch adds to one, no delta rows) only
/// when an inode changes (nothing else changes usage).
///
/// With them, the first row of each range the batch will scan: the history of every row it
/// may delete ([`vdel`]'s [`has_history`]; a big file's purge reads thousands, one round trip
/// each before) and the open rows its [`Mutation::ExpectOpeners`] checks. Ranges read more
/// than that (a scan past the first row) are read on from the store as before.
fn prefetch(tx: &dyn KvTxn, batch: &[Mutation], epoch: bool, shard: bool) -> Result<()> {
    let mut ranges: Vec<(Cf, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut range = |cf: Cf, (start, end): (Vec<u8>, Option<Vec<u8>>)| {
        if let Some(end) = end {
            ranges.push((cf, start, end));
        }
    };
    for m in batch {
        match m {
            Mutation::DelInode(ino) => range(Cf::History, history_range(Cf::Inodes, &k1(*ino))),
            Mutation::DelDentry { parent, name, cookie } => {
                range(Cf::History, history_range(Cf::Cookies, &k2(*parent, *cookie)));
                range(Cf::History, history_range(Cf::Dentries, &k_named(*parent, name)));
            }
            Mutation::DelExtent { ino, block } => range(Cf::History, history_range(Cf::Extents, &k2(*ino, *block))),
            Mutation::DelXattr { ino, name } => range(Cf::History, history_range(Cf::Xattrs, &k_named(*ino, name))),
            Mutation::Raw { key, value: None } => {
                let (cf, base) = key.cf_base();
                range(Cf::History, history_range(cf, &base));
            }
            Mutation::ExpectOpeners { ino, .. } => {
                let prefix = super::hosts::openers_prefix(*ino);
                let end = prefix_end(&prefix);
                range(Cf::Default, (prefix, end));
            }
            _ => {}
        }
    }
    ranges.sort();
    ranges.dedup();
    let heads: Vec<Head<'_>> = ranges.iter().map(|(cf, start, end)| Head { cf: *cf, start, end, limit: 1 }).collect();
    let mut keys: Vec<(Cf, Vec<u8>)> = Vec::new();
    if epoch {
        keys.push((Cf::Default, b"epoch".to_vec()));
    }
    if shard && batch.iter().any(|m| matches!(m, Mutation::PutInode(_) | Mutation::InsertInode(_) | Mutation::DelInode(_) | Mutation::MergeInodeData(_) | Mutation::MergeInodeFields { .. })) {
        keys.push((Cf::Default, usage_shard_key(usage_shard())));
    }
    for m in batch {
        match m {
            Mutation::PutInode(i) | Mutation::MergeInodeData(i) | Mutation::MergeInodeFields { after: i, .. } => {
                keys.push((Cf::Inodes, k1(i.ino)))
            }
            Mutation::DelInode(ino) | Mutation::ExpectInode(ino, _) | Mutation::ExpectParent { ino, .. } => keys.push((Cf::Inodes, k1(*ino))),
            Mutation::PutDentry { parent, name, dentry } => {
                keys.push((Cf::Cookies, k2(*parent, dentry.cookie)));
                keys.push((Cf::Dentries, k_named(*parent, name)));
            }
            Mutation::DelDentry { parent, name, cookie } => {
                keys.push((Cf::Cookies, k2(*parent, *cookie)));
                keys.push((Cf::Dentries, k_named(*parent, name)));
            }
            Mutation::ExpectDentry { parent, name, .. } => keys.push((Cf::Dentries, k_named(*parent, name))),
            Mutation::PutExtent { ino, block, .. } | Mutation::DelExtent { ino, block } | Mutation::ExpectExtent { ino, block, .. } => {
                keys.push((Cf::Extents, k2(*ino, *block)))
            }
            Mutation::PutXattr { ino, name, .. } | Mutation::DelXattr { ino, name } => keys.push((Cf::Xattrs, k_named(*ino, name))),
            Mutation::Raw { key, .. } => keys.push(key.cf_base()),
            _ => {}
        }
    }
    keys.sort();
    keys.dedup();
    let refs: Vec<(Cf, &[u8])> = keys.iter().map(|(cf, k)| (*cf, k.as_slice())).collect();
    tx.prefetch(&refs, &heads)
}

/// How many rows usage is spread over (besides the `usage` row that bulk loads and older
/// volumes keep): a batch adds its change to the shard of the thread applying it.
pub(super) const USAGE_SHARDS: u64 = 64;

/// This thread's usage shard: fixed per thread, random across threads and processes (std's
/// randomly keyed hasher, over nothing).
fn usage_shard() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static SHARD: u64 = std::collections::hash_map::RandomState::new().build_hasher().finish() % USAGE_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// `usage/NN`: sorts right after `usage`, so one scan from `usage` reads the base row and
/// every shard.
pub(super) fn usage_shard_key(shard: u64) -> Vec<u8> {
    format!("usage/{shard:02}").into_bytes()
}

/// Usage delta rows: `usage/~` ++ a random u64 (BE), sorting after every shard, inside the
/// `usage` scan of [`MetaStore::usage`].
const USAGE_DELTAS: &[u8] = b"usage/~";
const USAGE_DELTAS_END: &[u8] = b"usage/\x7f";

/// A new usage delta row's key (random: rows of concurrent batches never collide).
fn usage_delta_key() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let id = std::collections::hash_map::RandomState::new().build_hasher().finish();
    [USAGE_DELTAS, &id.to_be_bytes()[..]].concat()
}

/// Delta rows folded per transaction by [`MetaStore::fold_usage_deltas`].
const FOLD_DELTAS: usize = 2048;

impl MetaStore {
    /// Batches add their usage change as a row of its own (`usage/~` ++ random id) instead
    /// of reading and rewriting a shard: for a shared engine (PostgreSQL), where a shard's
    /// read and rewrite made every concurrent pair of creates a serialization conflict (its
    /// `SERIALIZABLE` locks what a read saw by index page, and a rewritten row is a new index
    /// entry on the page every other batch read its shard from). Nothing reads the rows in a
    /// batch; [`MetaStore::usage`] adds them up with the shards, and
    /// [`MetaStore::fold_usage_deltas`] folds them into a shard now and then.
    pub fn set_usage_deltas(&self, on: bool) {
        self.usage_deltas.store(on, Ordering::Relaxed);
    }

    /// Fold every usage delta row into this thread's shard, [`FOLD_DELTAS`] rows a
    /// transaction (two hosts folding at once: one of them runs again and finds the rows
    /// gone); returns how many went. Usage reads the same before and after.
    pub fn fold_usage_deltas(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let mut n = 0;
            self.kv.transact(false, &mut |tx| {
                let (mut files, mut bytes, mut keys) = (0i64, 0i64, Vec::new());
                tx.scan(Cf::Default, USAGE_DELTAS, Some(USAGE_DELTAS_END), &mut |k, v| {
                    let (f, b) = usage_delta(v)?;
                    files += f;
                    bytes += b;
                    keys.push(k.to_vec());
                    Ok(keys.len() < FOLD_DELTAS)
                })?;
                n = keys.len();
                if n == 0 {
                    return Ok(());
                }
                for k in keys {
                    tx.del(Cf::Default, k);
                }
                let shard = usage_shard_key(usage_shard());
                let (f, b) = tx.get(Cf::Default, &shard)?.map_or(Ok((0, 0)), |v| usage_delta(&v))?;
                tx.put(Cf::Default, shard, usage_delta_row(f + files, b + bytes));
                Ok(())
            })?;
            total += n;
            if n < FOLD_DELTAS {
                return Ok(total);
            }
        }
    }
}

/// A shard's row: files and bytes as signed deltas (a file made in one shard may be removed
/// in another), little-endian.
fn usage_delta_row(files: i64, bytes: i64) -> Vec<u8> {
    [files.to_le_bytes(), bytes.to_le_bytes()].concat()
}

pub(super) fn usage_delta(v: &[u8]) -> Result<(i64, i64)> {
    match (v.get(..8), v.get(8..16)) {
        (Some(f), Some(b)) if v.len() == 16 => Ok((i64::from_le_bytes(f.try_into().unwrap()), i64::from_le_bytes(b.try_into().unwrap()))),
        _ => Err(FsError::Meta(format!("usage shard row has {} bytes, not 16", v.len()))),
    }
}

/// The epoch writes happen in, as stored.
pub(super) fn stored_epoch(r: &dyn KvRead) -> Result<u64> {
    match r.get(Cf::Default, b"epoch")? {
        Some(v) => le(&v),
        None => Ok(1),
    }
}

pub(super) fn next_snapshot_id(r: &dyn KvRead) -> Result<u64> {
    match r.get(Cf::Default, b"snap_next")? {
        Some(v) => le(&v),
        None => Ok(1),
    }
}

fn live_row(tx: &dyn KvTxn, cf: Cf, base: &[u8]) -> Result<LiveRow> {
    match tx.get(cf, base)? {
        Some(v) if v.len() >= 8 => Ok(Some((be(&v, 0)?, v[8..].to_vec()))),
        Some(_) => Err(FsError::Meta(format!("live {} row is truncated", cf.name()))),
        None => Ok(None),
    }
}

/// Whether some snapshot reads a version written in `from` and replaced in `until`.
fn pinned(tx: &dyn KvTxn, b: &mut Batch, from: u64, until: u64) -> Result<bool> {
    if b.snap_epochs.is_none() {
        let mut epochs = Vec::new();
        tx.scan(Cf::Snapshots, &[], None, &mut |_, v| {
            epochs.push(super::codec::dec::<SnapshotInfo>("snapshot", v)?.epoch);
            Ok(true)
        })?;
        b.snap_epochs = Some(epochs);
    }
    Ok(b.snap_epochs.as_ref().is_some_and(|e| e.iter().any(|&s| from <= s && s < until)))
}

/// The live version of `base` stops being live: keep it in history if a snapshot sees it
/// (a snapshot taken since it was written), else drop it with its block reference.
fn retire(tx: &mut dyn KvTxn, b: &mut Batch, cf: Cf, base: &[u8], old: &(u64, Vec<u8>)) -> Result<()> {
    let (epoch, payload) = old;
    if *epoch < b.epoch && pinned(tx, b, *epoch, b.epoch)? {
        tx.put(Cf::History, hist_key(cf, base, *epoch), [&[1u8][..], payload].concat());
    } else if cf == Cf::Extents {
        if let Some((id, _)) = sealed_of(payload)? {
            *b.refs.entry(id).or_default() -= 1;
        }
    }
    if cf == Cf::Inodes {
        let (f, n) = file_usage(payload)?;
        b.usage.0 -= f;
        b.usage.1 -= n;
    }
    Ok(())
}

fn vput(tx: &mut dyn KvTxn, b: &mut Batch, cf: Cf, base: Vec<u8>, payload: Vec<u8>) -> Result<()> {
    let accounted = matches!(cf, Cf::Extents | Cf::Inodes);
    if !b.blind || accounted {
        if let Some(old) = live_row(tx, cf, &base)? {
            retire(tx, b, cf, &base, &old)?;
        }
    }
    vput_new(tx, b, cf, base, payload)
}

/// [`vput`] of a row known to have no live version and no history (a new inode number from
/// the counter): nothing to read, retire or subtract.
fn vput_new(tx: &mut dyn KvTxn, b: &mut Batch, cf: Cf, base: Vec<u8>, payload: Vec<u8>) -> Result<()> {
    if cf == Cf::Extents {
        if let Some((id, _)) = sealed_of(&payload)? {
            *b.refs.entry(id).or_default() += 1;
        }
    }
    if cf == Cf::Inodes {
        let (f, n) = file_usage(&payload)?;
        b.usage.0 += f;
        b.usage.1 += n;
    }
    tx.put(Cf::Changes, change_key(b.epoch, cf, &base), Vec::new());
    tx.put(cf, base, versioned(b.epoch, &payload));
    Ok(())
}

fn vdel(tx: &mut dyn KvTxn, b: &mut Batch, cf: Cf, base: Vec<u8>) -> Result<()> {
    let Some(old) = live_row(tx, cf, &base)? else { return Ok(()) };
    retire(tx, b, cf, &base, &old)?;
    // A tombstone is needed when an older version stays visible to some snapshot (the
    // transaction's reads include the history row `retire` may just have written).
    if has_history(tx, cf, &base)? {
        tx.put(Cf::History, hist_key(cf, &base, b.epoch), vec![0]);
    }
    tx.put(Cf::Changes, change_key(b.epoch, cf, &base), Vec::new());
    tx.del(cf, base);
    Ok(())
}

/// Where the history rows of `base` (family `cf`) are: [`has_history`] scans this range and
/// [`prefetch`] reads it ahead (the same range, so the scan starts from what was read).
fn history_range(cf: Cf, base: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let prefix = hist_prefix(cf, base);
    let end = prefix_end(&prefix);
    (prefix, end)
}

fn has_history(r: &dyn KvRead, cf: Cf, base: &[u8]) -> Result<bool> {
    let (prefix, end) = history_range(cf, base);
    let mut found = false;
    r.scan(Cf::History, &prefix, end.as_deref(), &mut |k, _| {
        found = k.len() == prefix.len() + 8;
        Ok(false)
    })?;
    Ok(found)
}
