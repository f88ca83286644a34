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
//!
//! A chunk is [`Records`]: every key and value of it in one buffer (reused from chunk to
//! chunk by a caller that keeps it), not a [`Mutation`] with vectors of its own per record.

use super::codec::{change_key_into, dec, enc, file_usage, k1, sealed_of, tag, versioned_into};
use super::refs::RefEntry;
use super::{apply::stored_epoch, Key, MetaStore, Mutation};
use crate::error::{FsError, Result};
use crate::kv::{Cf, KvBulk};
use crate::types::{BlockId, Ino, Usage};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

/// Layer records for [`BulkLoad::load_records`], their keys (base keys, as stored) and values
/// in one buffer: the same as a batch of `Raw`, `MarkPushed` and `PutOrphan` mutations, in
/// order.
#[derive(Default)]
pub struct Records {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

/// One record of [`Records`]: ranges of its buffer.
enum Item {
    Raw { cf: Cf, key: (u32, u32), value: Option<(u32, u32)> },
    Pushed { id: BlockId, packed: Option<(BlockId, u64, u64)> },
    Orphan(Ino),
}

impl Records {
    /// Records held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Layer records held (`Raw`; the blocks they name and orphans are records of their own).
    pub fn records(&self) -> u64 {
        self.items.iter().filter(|i| matches!(i, Item::Raw { .. })).count() as u64
    }

    /// Empty, keeping the memory for the next chunk.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    fn append(&mut self, bytes: &[u8]) -> (u32, u32) {
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(bytes);
        (at, bytes.len() as u32)
    }

    /// A record of family `cf` (a versioned one) at base key `key`: `Raw` (None: deleted).
    pub fn push_raw(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        let key = self.append(key);
        let value = value.map(|v| self.append(v));
        self.items.push(Item::Raw { cf, key, value });
    }

    /// `MarkPushed`.
    pub fn push_pushed(&mut self, id: BlockId, packed: Option<(BlockId, u64, u64)>) {
        self.items.push(Item::Pushed { id, packed });
    }

    /// `PutOrphan`.
    pub fn push_orphan(&mut self, ino: Ino) {
        self.items.push(Item::Orphan(ino));
    }

    fn slice(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.bytes[at as usize..][..len as usize]
    }

    /// The mutations these records are.
    pub fn to_mutations(&self) -> Result<Vec<Mutation>> {
        self.items
            .iter()
            .map(|item| {
                Ok(match item {
                    Item::Raw { cf, key, value } => {
                        Mutation::Raw { key: Key::decode(*cf, self.slice(*key))?, value: value.map(|v| self.slice(v).to_vec()) }
                    }
                    Item::Pushed { id, packed } => Mutation::MarkPushed { id: *id, packed: *packed },
                    Item::Orphan(ino) => Mutation::PutOrphan(*ino),
                })
            })
            .collect()
    }

    /// `batch` as records, if it holds only `Raw`, `MarkPushed` and `PutOrphan` mutations.
    fn of(batch: &[Mutation]) -> Option<Records> {
        let mut out = Records::default();
        let mut base = Vec::new();
        for m in batch {
            match m {
                Mutation::Raw { key, value } => {
                    let cf = key.base_into(&mut base);
                    out.push_raw(cf, &base, value.as_deref());
                }
                Mutation::MarkPushed { id, packed } => out.push_pushed(*id, *packed),
                Mutation::PutOrphan(ino) => out.push_orphan(*ino),
                _ => return None,
            }
        }
        Some(out)
    }
}

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
type Olds<'r> = [HashMap<&'r [u8], Old>; 5];

/// Whether writing a record of `cf` (`delete`: deleting it) needs its old version.
fn reads_old(cf: Cf, delete: bool) -> bool {
    delete || matches!(cf, Cf::Inodes | Cf::Extents)
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
        match Records::of(&batch) {
            Some(records) => self.load_records(&records),
            None => {
                self.w.finish()?;
                self.meta.apply_unlogged(batch)
            }
        }
    }

    /// [`BulkLoad::load`] of `records`.
    pub fn load_records(&mut self, records: &Records) -> Result<()> {
        let meta = self.meta;
        if !meta.pristine()? {
            self.w.finish()?;
            return meta.apply_unlogged(records.to_mutations()?);
        }
        let epoch = stored_epoch(&*meta.kv)?;
        let mut olds = self.read_olds(records)?;
        let mut totals = Totals::default();
        let w = &mut self.w;
        let mut val = Vec::with_capacity(256);
        // Each family's rows go to the engine in key order as far as the chunk allows (an
        // engine writes an ascending run cheaply: RocksDB into one sorted file): the live rows
        // as they come (a layer lists each family in order), the journal rows family by
        // family after them, the pushed blocks sorted.
        let mut journaled: Vec<Option<Cf>> = vec![None; records.items.len()];
        let mut pushed = Vec::new();
        for (item, journal) in records.items.iter().zip(journaled.iter_mut()) {
            match item {
                Item::Raw { cf, key, value } => {
                    let (cf, key) = (*cf, records.slice(*key));
                    let slot = olds[tag(cf) as usize].get_mut(key);
                    let old = slot.as_deref().copied();
                    match value {
                        Some(payload) => {
                            let payload = records.slice(*payload);
                            let new = if reads_old(cf, false) { Old::of(cf, payload)? } else { Old::Present };
                            if let Some(old) = old {
                                totals.retire(old);
                            }
                            totals.add(new);
                            if let Some(slot) = slot {
                                *slot = new;
                            }
                            versioned_into(epoch, payload, &mut val);
                            w.put(cf, key, &val);
                        }
                        None => {
                            let old = old.expect("a deletion's old version is read");
                            if matches!(old, Old::Absent) {
                                continue;
                            }
                            totals.retire(old);
                            *slot.expect("read") = Old::Absent;
                            w.del(cf, key);
                        }
                    }
                    *journal = Some(cf);
                }
                Item::Pushed { id, packed } => pushed.push((id, packed)),
                Item::Orphan(ino) => w.put(Cf::Orphans, &k1(*ino), &[]),
            }
        }
        for cf in [Cf::Inodes, Cf::Dentries, Cf::Cookies, Cf::Extents, Cf::Xattrs] {
            for (item, _) in records.items.iter().zip(&journaled).filter(|(_, j)| **j == Some(cf)) {
                if let Item::Raw { key, .. } = item {
                    change_key_into(epoch, cf, records.slice(*key), &mut val);
                    w.put(Cf::Changes, &val, &[]);
                }
            }
        }
        pushed.sort_by_key(|(id, _)| **id);
        for (id, packed) in pushed {
            val.clear();
            bincode::serialize_into(&mut val, packed).expect("in-memory serialisation cannot fail");
            w.put(Cf::Pushed, &id.0, &val);
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

    /// The live versions of the records of `records` whose writing needs them, read with one
    /// `multi_get` per family.
    fn read_olds<'r>(&mut self, records: &'r Records) -> Result<Olds<'r>> {
        let mut olds: Olds<'r> = Default::default();
        for item in &records.items {
            if let Item::Raw { cf, key, value } = item {
                if reads_old(*cf, value.is_none()) {
                    olds[tag(*cf) as usize].insert(records.slice(*key), Old::Absent);
                }
            }
        }
        for cf in [Cf::Inodes, Cf::Dentries, Cf::Cookies, Cf::Extents, Cf::Xattrs] {
            let map = &mut olds[tag(cf) as usize];
            if map.is_empty() {
                continue;
            }
            let keys: Vec<&'r [u8]> = map.keys().copied().collect();
            let rows = self.w.multi_get(cf, &keys)?;
            for (k, row) in keys.into_iter().zip(rows) {
                if let Some(row) = row {
                    let payload = row.get(8..).ok_or_else(|| FsError::Meta(format!("live {} row is truncated", cf.name())))?;
                    map.insert(k, Old::of(cf, payload)?);
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
