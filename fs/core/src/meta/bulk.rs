//! Bulk load: [`BulkLoad::load`] writes chunks of layer records into a store nobody uses yet
//! (a clone filling its new store) below the engine's transactions, with the same result as
//! [`MetaStore::apply_unlogged`] of the same chunks. One engine writer
//! ([`crate::kv::Kv::bulk_writer`]) takes the whole load (RocksDB: a sorted table file per
//! family and layer) and puts it in the store at [`BulkLoad::finish`].
//!
//! Such a store has no snapshot and no history, so a record's old version is never kept:
//! writing a record only needs its old version when that version counts (an extent's block
//! reference, an inode's usage) or when it is a deletion (a deletion of an absent record
//! writes nothing). Those old versions are read with one `multi_get` per family per chunk,
//! through the writer (so the load's earlier chunks count); every other record is written
//! blind. Reference counts and usage are summed over the chunk and written once; keys and
//! values go into the engine's writer from two reused buffers.

use super::codec::{change_key_into, dec, enc, file_usage, k1, sealed_of, tag, versioned_into};
use super::refs::RefEntry;
use super::{apply::stored_epoch, Key, MetaStore, Mutation};
use crate::error::{FsError, Result};
use crate::kv::{Cf, KvBulk};
use crate::types::{BlockId, Usage};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

/// What the live version of a record contributes, as far as writing over it is concerned.
#[derive(Clone, Copy)]
enum Old {
    /// No live version.
    Absent,
    /// An extent, and the sealed block it names.
    Extent(Option<BlockId>),
    /// An inode, and its usage (files, bytes).
    Inode(i64, i64),
    /// Any other record.
    Present,
}

impl Old {
    fn of(cf: Cf, payload: &[u8]) -> Result<Old> {
        Ok(match cf {
            Cf::Extents => Old::Extent(sealed_of(payload)?.map(|(id, _)| id)),
            Cf::Inodes => {
                let (f, n) = file_usage(payload)?;
                Old::Inode(f, n)
            }
            _ => Old::Present,
        })
    }
}

/// The live versions a chunk reads, per versioned family (by its tag), by base key.
type Olds = [HashMap<Vec<u8>, Old>; 5];

/// Whether writing `key` (`delete`: deleting it) needs its old version.
fn reads_old(key: &Key, delete: bool) -> bool {
    delete || matches!(key, Key::Inode(_) | Key::Extent(..))
}

/// Sums of one chunk, written once at its end.
#[derive(Default)]
struct Totals {
    refs: BTreeMap<BlockId, i64>,
    usage: (i64, i64),
}

impl Totals {
    /// The live version `old` stops being live (nothing keeps it: no snapshot).
    fn retire(&mut self, old: Old) {
        match old {
            Old::Extent(Some(id)) => *self.refs.entry(id).or_default() -= 1,
            Old::Inode(f, n) => {
                self.usage.0 -= f;
                self.usage.1 -= n;
            }
            _ => {}
        }
    }

    fn add(&mut self, new: Old) {
        match new {
            Old::Extent(Some(id)) => *self.refs.entry(id).or_default() += 1,
            Old::Inode(f, n) => {
                self.usage.0 += f;
                self.usage.1 += n;
            }
            _ => {}
        }
    }
}

/// A bulk load in progress ([`MetaStore::bulk_load`]): chunks of layer records, then
/// [`BulkLoad::finish`]. Dropped without `finish`, part of what it loaded may be missing from
/// the store (a clone that fails is thrown away whole).
pub struct BulkLoad<'a> {
    meta: &'a MetaStore,
    w: Box<dyn KvBulk + 'a>,
}

impl MetaStore {
    /// Start a bulk load into this store, which nobody uses yet (see [`BulkLoad::load`]).
    pub fn bulk_load(&self) -> BulkLoad<'_> {
        BulkLoad { meta: self, w: self.kv.bulk_writer() }
    }

    /// [`BulkLoad::load`] of one batch, finished.
    pub fn load_bulk(&self, batch: Vec<Mutation>) -> Result<()> {
        let mut load = self.bulk_load();
        load.load(batch)?;
        load.finish()
    }

    /// Tune the engine for a bulk load ([`MetaStore::bulk_load`]) from now (`on`) or no more.
    pub fn bulk_tuning(&self, on: bool) -> Result<()> {
        self.kv.bulk_tuning(on)
    }

    /// No snapshot and no history: no old version is ever kept.
    fn pristine(&self) -> Result<bool> {
        Ok(self.kv.last_before(Cf::Snapshots, None)?.is_none() && self.kv.last_before(Cf::History, None)?.is_none())
    }
}

impl BulkLoad<'_> {
    /// Load `batch`, with the result of [`MetaStore::apply_unlogged`] of it (the same rows,
    /// journal rows, reference counts and usage), below the engine's transactions (see the
    /// module comment). The same durability: none until [`MetaStore::persist`], after
    /// [`BulkLoad::finish`]. A batch with other mutations than layer records (`Raw`,
    /// `MarkPushed`, `PutOrphan`), or a store with a snapshot or history, goes through
    /// [`MetaStore::apply_unlogged`], once what was loaded before it is in the store.
    pub fn load(&mut self, batch: Vec<Mutation>) -> Result<()> {
        let meta = self.meta;
        let records_only = batch.iter().all(|m| matches!(m, Mutation::Raw { .. } | Mutation::MarkPushed { .. } | Mutation::PutOrphan(_)));
        if !records_only || !meta.pristine()? {
            self.w.finish()?;
            return meta.apply_unlogged(batch);
        }
        let epoch = stored_epoch(&*meta.kv)?;
        let mut olds = self.read_olds(&batch)?;
        let mut totals = Totals::default();
        let w = &mut self.w;
        let (mut key, mut val) = (Vec::with_capacity(64), Vec::with_capacity(256));
        // Each family's rows go to the engine in key order as far as the chunk allows (an
        // engine writes an ascending run cheaply: RocksDB into one sorted file): the live rows
        // as they come (a layer lists each family in order), the journal rows family by
        // family after them, the pushed blocks sorted.
        let mut journaled: Vec<Option<Cf>> = vec![None; batch.len()];
        let mut pushed = Vec::new();
        for (m, journal) in batch.iter().zip(journaled.iter_mut()) {
            match m {
                Mutation::Raw { key: k, value } => {
                    let cf = k.base_into(&mut key);
                    let slot = olds[tag(cf) as usize].get_mut(key.as_slice());
                    let old = slot.as_deref().copied();
                    match value {
                        Some(payload) => {
                            let new = if reads_old(k, false) { Old::of(cf, payload)? } else { Old::Present };
                            if let Some(old) = old {
                                totals.retire(old);
                            }
                            totals.add(new);
                            if let Some(slot) = slot {
                                *slot = new;
                            }
                            versioned_into(epoch, payload, &mut val);
                            w.put(cf, &key, &val);
                        }
                        None => {
                            let old = old.expect("a deletion's old version is read");
                            if matches!(old, Old::Absent) {
                                continue;
                            }
                            totals.retire(old);
                            *slot.expect("read") = Old::Absent;
                            w.del(cf, &key);
                        }
                    }
                    *journal = Some(cf);
                }
                Mutation::MarkPushed { id, packed } => pushed.push((id, packed)),
                Mutation::PutOrphan(ino) => w.put(Cf::Orphans, &k1(*ino), &[]),
                other => unreachable!("not a layer record: {other:?}"),
            }
        }
        for cf in [Cf::Inodes, Cf::Dentries, Cf::Cookies, Cf::Extents, Cf::Xattrs] {
            for (m, _) in batch.iter().zip(&journaled).filter(|(_, j)| **j == Some(cf)) {
                if let Mutation::Raw { key: k, .. } = m {
                    k.base_into(&mut key);
                    change_key_into(epoch, cf, &key, &mut val);
                    w.put(Cf::Changes, &val, &[]);
                }
            }
        }
        pushed.sort_by_key(|(id, _)| **id);
        for (id, packed) in pushed {
            w.put(Cf::Pushed, &id.0, &enc(packed));
        }
        self.finish_totals(&totals)?;
        self.w.commit()?;
        if meta.epoch() != epoch {
            meta.epoch.store(epoch, Ordering::Release);
        }
        Ok(())
    }

    /// Put everything loaded in the store: its reads see it, [`MetaStore::persist`] makes it
    /// durable.
    pub fn finish(mut self) -> Result<()> {
        self.w.finish()
    }

    /// The live versions of the records of `batch` whose writing needs them, read with one
    /// `multi_get` per family.
    fn read_olds(&mut self, batch: &[Mutation]) -> Result<Olds> {
        let mut olds: Olds = Default::default();
        let mut base = Vec::new();
        for m in batch {
            if let Mutation::Raw { key, value } = m {
                if reads_old(key, value.is_none()) {
                    let cf = key.base_into(&mut base);
                    olds[tag(cf) as usize].entry(base.clone()).or_insert(Old::Absent);
                }
            }
        }
        for cf in [Cf::Inodes, Cf::Dentries, Cf::Cookies, Cf::Extents, Cf::Xattrs] {
            let map = &mut olds[tag(cf) as usize];
            if map.is_empty() {
                continue;
            }
            let keys: Vec<Vec<u8>> = map.keys().cloned().collect();
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            for (k, row) in keys.iter().zip(self.w.multi_get(cf, &refs)?) {
                if let Some(row) = row {
                    let payload = row.get(8..).ok_or_else(|| FsError::Meta(format!("live {} row is truncated", cf.name())))?;
                    map.insert(k.clone(), Old::of(cf, payload)?);
                }
            }
        }
        Ok(olds)
    }

    /// Fold the chunk's reference and usage sums into the stored ones (read in one
    /// `multi_get`), as [`MetaStore::apply`] does for a batch.
    fn finish_totals(&mut self, totals: &Totals) -> Result<()> {
        let changed: Vec<(&BlockId, &i64)> = totals.refs.iter().filter(|(_, d)| **d != 0).collect();
        let ids: Vec<&[u8]> = changed.iter().map(|(id, _)| &id.0[..]).collect();
        let now = super::refs::now_secs();
        let w = &mut self.w;
        let counts = w.multi_get(Cf::Refs, &ids)?;
        // A block counted again leaves the free list: deleted there only where it is in it
        // (a new block, the common case, never was: no deletion to write).
        let revived: Vec<&[u8]> = ids.iter().zip(&counts).filter(|(_, c)| c.is_none()).map(|(id, _)| *id).collect();
        let in_free: std::collections::HashSet<&[u8]> =
            revived.iter().zip(w.multi_get(Cf::Free, &revived)?).filter(|(_, row)| row.is_some()).map(|(id, _)| *id).collect();
        for ((id, delta), row) in changed.iter().zip(counts) {
            let entry = match row {
                Some(v) => RefEntry::decode(&id.0, &v)?,
                None => RefEntry { id: **id, count: 0 },
            };
            entry.write(entry.change(**delta), now, &mut |cf, k, v| match v {
                Some(v) => w.put(cf, k, v),
                None if cf == Cf::Free && !in_free.contains(k) => {}
                None => w.del(cf, k),
            });
        }
        if totals.usage != (0, 0) {
            let stored = w.multi_get(Cf::Default, &[b"usage"])?.pop().flatten();
            let u: Usage = stored.map_or(Ok(Usage::default()), |v| dec("usage", &v))?;
            let files = (u.files as i64 + totals.usage.0).max(0) as u64;
            let bytes = (u.bytes as i64 + totals.usage.1).max(0) as u64;
            w.put(Cf::Default, b"usage", &enc(&Usage { files, bytes }));
        }
        Ok(())
    }
}
