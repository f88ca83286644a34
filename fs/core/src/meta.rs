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
//! # Key layout
//!
//! All integers big-endian, so keys sort by number. `!e` is the bitwise complement of epoch
//! `e` (newest first). A base key names a record independent of its version.
//!
//! ```text
//! family     key                                       value
//! inodes     ino                                       epoch ++ bincode Inode
//! dentries   parent ++ name                            epoch ++ bincode Dentry
//! cookies    parent ++ cookie                          epoch ++ bincode Dentry ++ name
//! extents    ino ++ block                              epoch ++ bincode Extent (absent = hole)
//! xattrs     ino ++ name                               epoch ++ value
//! history    tag ++ base ++ 0x00 ++ !epoch             0 (tombstone) | 1 ++ the live value's payload
//! changes    epoch ++ tag ++ base                      empty
//! refs       block id                                  count u64 LE
//! free       block id                                  unix seconds u64 LE (count reached zero)
//! orphans    ino                                       empty (nlink 0, still open)
//! snapshots  name                                      bincode SnapshotInfo
//! gc         from ++ to                                empty (epochs whose versions to collect)
//! pushed     block id                                  bincode Option<(pack, offset, len)> (in the store)
//! default    "epoch" | "snap_next" | "usage"           u64 LE | u64 LE | bincode Usage
//!            "m:" ++ name                              opaque (state of other layers: push, …)
//! ```
//!
//! `tag` is the live family (0 inodes … 4 xattrs). Names never contain NUL, so the 0x00 after
//! the base ends it: all versions of one base are adjacent and no other base shares the prefix.

use crate::error::{FsError, Result};
use crate::kv::{prefix_end, Cf, Kv, KvOp, MemKv};
use crate::types::{BlockId, Dentry, Extent, Inode, Ino, JournalEntry, Kind, SnapshotInfo, Usage};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Read the live tree (the newest version of everything).
pub const LIVE: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    PutInode(Inode),
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

fn k1(a: u64) -> Vec<u8> {
    a.to_be_bytes().to_vec()
}

fn k2(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

fn k_named(a: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(name);
    k
}

fn be(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| FsError::Meta("metadata key or value is truncated".into()))
}

fn le(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| FsError::Meta("malformed counter in the metadata store".into()))
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialisation cannot fail")
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| FsError::Meta(format!("decode {what}: {e}")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The live family's tag in history and journal keys.
fn tag(cf: Cf) -> u8 {
    match cf {
        Cf::Inodes => 0,
        Cf::Dentries => 1,
        Cf::Cookies => 2,
        Cf::Extents => 3,
        Cf::Xattrs => 4,
        other => unreachable!("{other:?} is not versioned"),
    }
}

fn cf_of(tag: u8) -> Result<Cf> {
    Ok(match tag {
        0 => Cf::Inodes,
        1 => Cf::Dentries,
        2 => Cf::Cookies,
        3 => Cf::Extents,
        4 => Cf::Xattrs,
        t => return Err(FsError::Meta(format!("unknown record tag {t} in the change journal"))),
    })
}

impl Key {
    fn cf_base(&self) -> (Cf, Vec<u8>) {
        match self {
            Key::Inode(i) => (Cf::Inodes, k1(*i)),
            Key::Dentry(p, n) => (Cf::Dentries, k_named(*p, n)),
            Key::Cookie(p, c) => (Cf::Cookies, k2(*p, *c)),
            Key::Extent(i, b) => (Cf::Extents, k2(*i, *b)),
            Key::Xattr(i, n) => (Cf::Xattrs, k_named(*i, n)),
        }
    }

    fn decode(cf: Cf, base: &[u8]) -> Result<Key> {
        let a = be(base, 0)?;
        Ok(match cf {
            Cf::Inodes => Key::Inode(a),
            Cf::Dentries => Key::Dentry(a, base[8..].to_vec()),
            Cf::Cookies => Key::Cookie(a, be(base, 8)?),
            Cf::Extents => Key::Extent(a, be(base, 8)?),
            Cf::Xattrs => Key::Xattr(a, base[8..].to_vec()),
            other => return Err(FsError::Meta(format!("{other:?} is not versioned"))),
        })
    }
}

/// All history keys of `base` start with this.
fn hist_prefix(cf: Cf, base: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 10);
    k.push(tag(cf));
    k.extend_from_slice(base);
    k.push(0);
    k
}

fn hist_key(cf: Cf, base: &[u8], epoch: u64) -> Vec<u8> {
    let mut k = hist_prefix(cf, base);
    k.extend_from_slice(&(!epoch).to_be_bytes());
    k
}

fn change_key(epoch: u64, cf: Cf, base: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 9);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.push(tag(cf));
    k.extend_from_slice(base);
    k
}

fn versioned(epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn sealed_of(payload: &[u8]) -> Result<Option<(BlockId, u64)>> {
    Ok(match dec::<Extent>("extent", payload)? {
        Extent::Sealed { id, len } => Some((id, len as u64)),
        Extent::Staged => None,
    })
}

fn file_usage(payload: &[u8]) -> Result<(i64, i64)> {
    let i: Inode = dec("inode", payload)?;
    Ok(if i.kind == Kind::File { (1, i.size as i64) } else { (0, 0) })
}

/// A live version as the batch being built sees it.
type LiveRow = Option<(u64, Vec<u8>)>;

/// One batch under construction: the engine ops plus what the batch itself already changed.
struct Batch {
    epoch: u64,
    ops: Vec<KvOp>,
    live: HashMap<(Cf, Vec<u8>), LiveRow>,
    hist: HashSet<(Cf, Vec<u8>)>,
    refs: BTreeMap<BlockId, i64>,
    usage: (i64, i64),
}

pub struct MetaStore {
    kv: Arc<dyn Kv>,
    /// The epoch writes happen in.
    epoch: AtomicU64,
    /// Serialises read-modify-write batches (versions, counts) and collector passes.
    write: Mutex<()>,
    /// Epochs of the snapshots, in order (a copy of the catalogue's, kept by `apply`).
    snap_epochs: Mutex<Vec<u64>>,
}

impl MetaStore {
    pub fn new(kv: Arc<dyn Kv>) -> Result<Self> {
        let epoch = match kv.get(Cf::Default, b"epoch")? {
            Some(v) => le(&v)?,
            None => 1,
        };
        let m = MetaStore { kv, epoch: AtomicU64::new(epoch), write: Mutex::new(()), snap_epochs: Mutex::new(Vec::new()) };
        m.reload_snap_epochs()?;
        Ok(m)
    }

    fn reload_snap_epochs(&self) -> Result<()> {
        let epochs = self.snapshots()?.iter().map(|s| s.epoch).collect();
        *self.snap_epochs.lock() = epochs;
        Ok(())
    }

    /// Whether some snapshot reads a version written in `from` and replaced in `until`.
    fn pinned(&self, from: u64, until: u64) -> bool {
        self.snap_epochs.lock().iter().any(|&s| from <= s && s < until)
    }

    /// An empty in-memory store, for unit tests.
    pub fn memory() -> Self {
        MetaStore::new(Arc::new(MemKv::default())).expect("empty memory store")
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    // ---- versioned reads -------------------------------------------------------------------

    /// The payload of `base` as seen at epoch `at`.
    fn get_at(&self, cf: Cf, base: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.kv.get(cf, base)? {
            if at == LIVE || be(&v, 0)? <= at {
                return Ok(Some(v[8..].to_vec()));
            }
        } else if at == LIVE {
            return Ok(None);
        }
        self.hist_at(cf, base, at)
    }

    fn hist_at(&self, cf: Cf, base: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
        let prefix = hist_prefix(cf, base);
        let start = hist_key(cf, base, at);
        let end = prefix_end(&prefix);
        let mut out = None;
        self.kv.scan(Cf::History, &start, end.as_deref(), &mut |k, v| {
            if k.len() == prefix.len() + 8 {
                out = Some(v.first().copied().unwrap_or(0) == 1).map(|live| live.then(|| v[1..].to_vec()));
            }
            Ok(false)
        })?;
        Ok(out.flatten())
    }

    /// Up to `limit` rows `(base, payload)` of `cf` whose base starts with `prefix` and is
    /// `>= start`, in base order, as seen at epoch `at`.
    fn range_at(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize, at: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let end = prefix_end(prefix);
        if at == LIVE {
            self.kv.scan(cf, start, end.as_deref(), &mut |k, v| {
                out.push((k.to_vec(), v.get(8..).unwrap_or_default().to_vec()));
                Ok(out.len() < limit)
            })?;
            return Ok(out);
        }
        let t = tag(cf);
        let hist_end = match &end {
            Some(e) => [&[t][..], e].concat(),
            None => vec![t + 1],
        };
        let mut from = start.to_vec();
        loop {
            // Live rows and bases with history, each up to `limit`; both lists are complete
            // up to `bound`.
            let mut live: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
            let mut live_more = false;
            self.kv.scan(cf, &from, end.as_deref(), &mut |k, v| {
                if live.len() == limit {
                    live_more = true;
                    return Ok(false);
                }
                live.insert(k.to_vec(), (be(v, 0)?, v[8..].to_vec()));
                Ok(true)
            })?;
            let mut hist: BTreeSet<Vec<u8>> = BTreeSet::new();
            let mut hist_more = false;
            self.kv.scan(Cf::History, &[&[t][..], &from].concat(), Some(&hist_end), &mut |k, _| {
                let base = k.get(1..k.len().saturating_sub(9)).unwrap_or_default().to_vec();
                if !hist.contains(&base) {
                    if hist.len() == limit {
                        hist_more = true;
                        return Ok(false);
                    }
                    hist.insert(base);
                }
                Ok(true)
            })?;
            let bound = [
                live_more.then(|| live.keys().next_back().cloned()).flatten(),
                hist_more.then(|| hist.iter().next_back().cloned()).flatten(),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut bases: BTreeSet<Vec<u8>> = live.keys().cloned().collect();
            bases.extend(hist);
            for base in bases {
                if bound.as_ref().is_some_and(|b| &base > b) {
                    break;
                }
                let payload = match live.get(&base) {
                    Some((e, p)) if *e <= at => Some(p.clone()),
                    _ => self.hist_at(cf, &base, at)?,
                };
                if let Some(p) = payload {
                    out.push((base, p));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match bound {
                None => return Ok(out),
                Some(mut b) => {
                    b.push(0);
                    from = b;
                }
            }
        }
    }

    pub fn get_inode(&self, ino: Ino) -> Result<Option<Inode>> {
        self.get_inode_at(ino, LIVE)
    }

    pub fn get_inode_at(&self, ino: Ino, at: u64) -> Result<Option<Inode>> {
        self.get_at(Cf::Inodes, &k1(ino), at)?.map(|v| dec("inode", &v)).transpose()
    }

    /// The highest inode number ever used (0 when there is none), history included, so that
    /// an inode number is never reused while a snapshot may still show it.
    pub fn max_ino(&self) -> Result<Ino> {
        self.max_ino_below(Ino::MAX)
    }

    /// The highest inode number below `limit` ever used (0 when there is none).
    pub fn max_ino_below(&self, limit: Ino) -> Result<Ino> {
        let live = match self.kv.last_before(Cf::Inodes, Some(&k1(limit)))? {
            Some(k) => be(&k, 0)?,
            None => 0,
        };
        let t = tag(Cf::Inodes);
        let hist = match self.kv.last_before(Cf::History, Some(&[&[t][..], &limit.to_be_bytes()].concat()))? {
            Some(k) if k.first() == Some(&t) => be(&k, 1)?,
            _ => 0,
        };
        Ok(live.max(hist))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        self.lookup_at(parent, name, LIVE)
    }

    pub fn lookup_at(&self, parent: Ino, name: &[u8], at: u64) -> Result<Option<Dentry>> {
        self.get_at(Cf::Dentries, &k_named(parent, name), at)?.map(|v| dec("directory entry", &v)).transpose()
    }

    /// Up to `limit` entries of `parent` with a cookie greater than `after`, in cookie order.
    pub fn readdir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.readdir_at(parent, after, limit, LIVE)
    }

    pub fn readdir_at(&self, parent: Ino, after: u64, limit: usize, at: u64) -> Result<Vec<DirEntry>> {
        let Some(first) = after.checked_add(1) else { return Ok(Vec::new()) };
        let rows = self.range_at(Cf::Cookies, &k1(parent), &k2(parent, first), limit, at)?;
        rows.into_iter()
            .map(|(k, v)| {
                let dentry: Dentry = dec("readdir entry", &v)?;
                let used = bincode::serialized_size(&dentry).map_err(|e| FsError::Meta(format!("readdir entry: {e}")))?;
                let name = v.get(used as usize..).ok_or_else(|| FsError::Meta("readdir entry is truncated".into()))?;
                Ok(DirEntry { cookie: be(&k, 8)?, name: name.to_vec(), dentry })
            })
            .collect()
    }

    pub fn get_extent(&self, ino: Ino, block: u64) -> Result<Option<Extent>> {
        self.get_extent_at(ino, block, LIVE)
    }

    pub fn get_extent_at(&self, ino: Ino, block: u64, at: u64) -> Result<Option<Extent>> {
        self.get_at(Cf::Extents, &k2(ino, block), at)?.map(|v| dec("extent", &v)).transpose()
    }

    /// Every extent of `ino` with a block index >= `from`, in order.
    pub fn extents(&self, ino: Ino, from: u64) -> Result<Vec<(u64, Extent)>> {
        self.extents_at(ino, from, LIVE)
    }

    /// Whether `ino` has a sealed extent, reading its extents only up to the first sealed one
    /// (a file with sealed data almost always has one at block 0).
    pub fn has_sealed_extent(&self, ino: Ino) -> Result<bool> {
        let end = prefix_end(&k1(ino));
        let mut found = false;
        let mut bad = None;
        self.kv.scan(Cf::Extents, &k2(ino, 0), end.as_deref(), &mut |_, v| {
            match dec::<Extent>("extent", v.get(8..).unwrap_or_default()) {
                Ok(Extent::Sealed { .. }) => found = true,
                Ok(Extent::Staged) => {}
                Err(e) => bad = Some(e),
            }
            Ok(!found && bad.is_none())
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    pub fn extents_at(&self, ino: Ino, from: u64, at: u64) -> Result<Vec<(u64, Extent)>> {
        let rows = self.range_at(Cf::Extents, &k1(ino), &k2(ino, from), usize::MAX, at)?;
        rows.into_iter().map(|(k, v)| Ok((be(&k, 8)?, dec("extent", &v)?))).collect()
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_at(Cf::Xattrs, &k_named(ino, name), LIVE)
    }

    pub fn get_xattr_at(&self, ino: Ino, name: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
        self.get_at(Cf::Xattrs, &k_named(ino, name), at)
    }

    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.xattr_names_at(ino, LIVE)
    }

    pub fn xattr_names_at(&self, ino: Ino, at: u64) -> Result<Vec<Vec<u8>>> {
        let rows = self.range_at(Cf::Xattrs, &k1(ino), &k1(ino), usize::MAX, at)?;
        Ok(rows.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
    }

    // ---- the change journal ----------------------------------------------------------------

    /// Visit the journal rows of epochs `(after, upto]` in (epoch, record) order.
    pub fn changes(&self, after: u64, upto: u64, f: &mut dyn FnMut(Change) -> Result<bool>) -> Result<()> {
        let Some(first) = after.checked_add(1) else { return Ok(()) };
        let end = upto.checked_add(1).map(k1);
        self.kv.scan(Cf::Changes, &k1(first), end.as_deref(), &mut |k, _| {
            let epoch = be(k, 0)?;
            let cf = cf_of(*k.get(8).ok_or_else(|| FsError::Meta("journal row is truncated".into()))?)?;
            f(Change { epoch, key: Key::decode(cf, &k[9..])? })
        })
    }

    /// The dirty-extent journal: blocks written in epochs `>= from_epoch`, in (epoch, ino,
    /// block) order.
    pub fn journal(&self, from_epoch: u64) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        self.changes(from_epoch.saturating_sub(1), LIVE, &mut |c| {
            if let Key::Extent(ino, block) = c.key {
                out.push(JournalEntry { epoch: c.epoch, ino, block });
            }
            Ok(true)
        })?;
        Ok(out)
    }

    // ---- counters and catalogues -----------------------------------------------------------

    pub fn block_refs(&self, id: &BlockId) -> Result<u64> {
        self.kv.get(Cf::Refs, &id.0)?.map_or(Ok(0), |v| le(&v))
    }

    /// Blocks no version references any more, with the time their count reached zero.
    pub fn free_blocks(&self) -> Result<Vec<(BlockId, u64)>> {
        let mut out = Vec::new();
        self.kv.scan(Cf::Free, &[], None, &mut |k, v| {
            let id = BlockId(k.try_into().map_err(|_| FsError::Meta("malformed block id key".into()))?);
            out.push((id, le(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn orphans(&self) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        self.kv.scan(Cf::Orphans, &[], None, &mut |k, _| {
            out.push(be(k, 0)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Snapshots in epoch order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out: Vec<SnapshotInfo> = Vec::new();
        self.kv.scan(Cf::Snapshots, &[], None, &mut |_, v| {
            out.push(dec("snapshot", v)?);
            Ok(true)
        })?;
        out.sort_by_key(|s| s.epoch);
        Ok(out)
    }

    pub fn snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        self.kv.get(Cf::Snapshots, name.as_bytes())?.map(|v| dec("snapshot", &v)).transpose()
    }

    pub fn next_snapshot_id(&self) -> Result<u64> {
        Ok(match self.kv.get(Cf::Default, b"snap_next")? {
            Some(v) => le(&v)?,
            None => 1,
        })
    }

    /// Ranges of epochs `(from, to]` the collector still has to go through.
    pub fn gc_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        self.kv.scan(Cf::Gc, &[], None, &mut |k, _| {
            out.push((be(k, 0)?, be(k, 8)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The payload of record `key` at epoch `at` as stored (bincode of its type; xattrs: the
    /// value), for layers that carry records without interpreting them.
    pub fn raw_at(&self, key: &Key, at: u64) -> Result<Option<Vec<u8>>> {
        let (cf, base) = key.cf_base();
        self.get_at(cf, &base, at)
    }

    /// Named state set with [`Mutation::SetMeta`].
    pub fn meta_value(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.kv.get(Cf::Default, &[&b"m:"[..], name.as_bytes()].concat())
    }

    /// Whether block `id` is in the object store: `Some(None)` alone, `Some(Some(pack,
    /// offset, len))` inside a pack.
    pub fn pushed(&self, id: &BlockId) -> Result<Option<Option<(BlockId, u64, u64)>>> {
        self.kv.get(Cf::Pushed, &id.0)?.map(|v| dec("pushed block", &v)).transpose()
    }

    pub fn usage(&self) -> Result<Usage> {
        self.kv.get(Cf::Default, b"usage")?.map_or(Ok(Usage::default()), |v| dec("usage", &v))
    }

    // ---- whole-store scans (fsck, status) --------------------------------------------------

    pub fn for_each_inode(&self, f: &mut dyn FnMut(Inode)) -> Result<()> {
        self.kv.scan(Cf::Inodes, &[], None, &mut |_, v| {
            f(dec("inode", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    pub fn for_each_dentry(&self, f: &mut dyn FnMut(Ino, &[u8], Dentry)) -> Result<()> {
        self.kv.scan(Cf::Dentries, &[], None, &mut |k, v| {
            f(be(k, 0)?, &k[8..], dec("directory entry", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    /// Every live extent.
    pub fn for_each_extent(&self, f: &mut dyn FnMut(Ino, u64, Extent)) -> Result<()> {
        self.kv.scan(Cf::Extents, &[], None, &mut |k, v| {
            f(be(k, 0)?, be(k, 8)?, dec("extent", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    /// Every extent version kept for snapshots: `(ino, block, epoch, extent)`.
    pub fn for_each_history_extent(&self, f: &mut dyn FnMut(Ino, u64, u64, Extent)) -> Result<()> {
        let t = tag(Cf::Extents);
        self.kv.scan(Cf::History, &[t], Some(&[t + 1]), &mut |k, v| {
            if v.first() == Some(&1) {
                f(be(k, 1)?, be(k, 9)?, !be(k, 18)?, dec("extent", &v[1..])?);
            }
            Ok(true)
        })
    }

    pub fn for_each_ref(&self, f: &mut dyn FnMut(BlockId, u64)) -> Result<()> {
        self.kv.scan(Cf::Refs, &[], None, &mut |k, v| {
            let id = BlockId(k.try_into().map_err(|_| FsError::Meta("malformed block id key".into()))?);
            f(id, le(v)?);
            Ok(true)
        })
    }

    // ---- writes ----------------------------------------------------------------------------

    pub fn apply(&self, batch: Vec<Mutation>, sync: bool) -> Result<()> {
        self.apply_freeing(batch, sync).map(|_| ())
    }

    /// [`MetaStore::apply`], returning the blocks whose last reference the batch dropped (they
    /// are on the free list now).
    pub fn apply_freeing(&self, batch: Vec<Mutation>, sync: bool) -> Result<Vec<BlockId>> {
        let freed;
        {
            let _w = self.write.lock();
            let mut b = Batch {
                epoch: self.epoch(),
                ops: Vec::with_capacity(batch.len() * 2),
                live: HashMap::new(),
                hist: HashSet::new(),
                refs: BTreeMap::new(),
                usage: (0, 0),
            };
            let mut new_epoch = None;
            let mut catalogue = false;
            for m in batch {
                match m {
                    Mutation::PutInode(i) => self.vput(&mut b, Cf::Inodes, k1(i.ino), enc(&i))?,
                    Mutation::DelInode(ino) => self.vdel(&mut b, Cf::Inodes, k1(ino))?,
                    Mutation::PutDentry { parent, name, dentry } => {
                        let mut row = enc(&dentry);
                        row.extend_from_slice(&name);
                        self.vput(&mut b, Cf::Cookies, k2(parent, dentry.cookie), row)?;
                        self.vput(&mut b, Cf::Dentries, k_named(parent, &name), enc(&dentry))?;
                    }
                    Mutation::DelDentry { parent, name, cookie } => {
                        self.vdel(&mut b, Cf::Cookies, k2(parent, cookie))?;
                        self.vdel(&mut b, Cf::Dentries, k_named(parent, &name))?;
                    }
                    Mutation::PutExtent { ino, block, extent } => self.vput(&mut b, Cf::Extents, k2(ino, block), enc(&extent))?,
                    Mutation::DelExtent { ino, block } => self.vdel(&mut b, Cf::Extents, k2(ino, block))?,
                    Mutation::PutXattr { ino, name, value } => self.vput(&mut b, Cf::Xattrs, k_named(ino, &name), value)?,
                    Mutation::DelXattr { ino, name } => self.vdel(&mut b, Cf::Xattrs, k_named(ino, &name))?,
                    Mutation::Journal(j) => {
                        b.ops.push(KvOp::Put(Cf::Changes, change_key(j.epoch, Cf::Extents, &k2(j.ino, j.block)), Vec::new()))
                    }
                    Mutation::PutOrphan(ino) => b.ops.push(KvOp::Put(Cf::Orphans, k1(ino), Vec::new())),
                    Mutation::DelOrphan(ino) => b.ops.push(KvOp::Del(Cf::Orphans, k1(ino))),
                    Mutation::SetEpoch(e) => {
                        b.ops.push(KvOp::Put(Cf::Default, b"epoch".to_vec(), e.to_le_bytes().to_vec()));
                        new_epoch = Some(e);
                    }
                    Mutation::PutSnapshot(s) => {
                        catalogue = true;
                        let next = self.next_snapshot_id()?.max(s.id + 1);
                        b.ops.push(KvOp::Put(Cf::Default, b"snap_next".to_vec(), next.to_le_bytes().to_vec()));
                        b.ops.push(KvOp::Put(Cf::Snapshots, s.name.as_bytes().to_vec(), enc(&s)));
                    }
                    Mutation::DelSnapshot(name) => {
                        catalogue = true;
                        b.ops.push(KvOp::Del(Cf::Snapshots, name.into_bytes()))
                    }
                    Mutation::PutGcRange { from, to } => b.ops.push(KvOp::Put(Cf::Gc, k2(from, to), Vec::new())),
                    Mutation::DelGcRange { from, to } => b.ops.push(KvOp::Del(Cf::Gc, k2(from, to))),
                    Mutation::DelFree(id) => b.ops.push(KvOp::Del(Cf::Free, id.0.to_vec())),
                    Mutation::Raw { key, value } => {
                        let (cf, base) = key.cf_base();
                        match value {
                            Some(payload) => self.vput(&mut b, cf, base, payload)?,
                            None => self.vdel(&mut b, cf, base)?,
                        }
                    }
                    Mutation::SetMeta { name, value } => {
                        let k = [&b"m:"[..], name.as_bytes()].concat();
                        b.ops.push(match value {
                            Some(v) => KvOp::Put(Cf::Default, k, v),
                            None => KvOp::Del(Cf::Default, k),
                        });
                    }
                    Mutation::MarkPushed { id, packed } => b.ops.push(KvOp::Put(Cf::Pushed, id.0.to_vec(), enc(&packed))),
                    Mutation::Restore { key, at } => {
                        let (cf, base) = key.cf_base();
                        match self.get_at(cf, &base, at)? {
                            Some(payload) => self.vput(&mut b, cf, base, payload)?,
                            None => self.vdel(&mut b, cf, base)?,
                        }
                    }
                }
            }
            freed = self.finish_refs(&mut b.ops, &b.refs)?;
            if b.usage != (0, 0) {
                let u = self.usage()?;
                let files = (u.files as i64 + b.usage.0).max(0) as u64;
                let bytes = (u.bytes as i64 + b.usage.1).max(0) as u64;
                b.ops.push(KvOp::Put(Cf::Default, b"usage".to_vec(), enc(&Usage { files, bytes })));
            }
            self.kv.write(b.ops, false)?;
            if let Some(e) = new_epoch {
                self.epoch.store(e, Ordering::Release);
            }
            if catalogue {
                self.reload_snap_epochs()?;
            }
        }
        if sync {
            self.kv.sync()?;
        }
        Ok(freed)
    }

    /// Make every batch applied so far durable against power loss.
    pub fn sync(&self) -> Result<()> {
        self.kv.sync()
    }

    fn live_row(&self, b: &Batch, cf: Cf, base: &[u8]) -> Result<LiveRow> {
        if let Some(row) = b.live.get(&(cf, base.to_vec())) {
            return Ok(row.clone());
        }
        match self.kv.get(cf, base)? {
            Some(v) => Ok(Some((be(&v, 0)?, v[8..].to_vec()))),
            None => Ok(None),
        }
    }

    /// The live version of `base` stops being live: keep it in history if a snapshot sees it
    /// (a snapshot taken since it was written), else drop it with its block reference.
    fn retire(&self, b: &mut Batch, cf: Cf, base: &[u8], old: &(u64, Vec<u8>)) -> Result<()> {
        let (epoch, payload) = old;
        if *epoch < b.epoch && self.pinned(*epoch, b.epoch) {
            b.ops.push(KvOp::Put(Cf::History, hist_key(cf, base, *epoch), [&[1u8][..], payload].concat()));
            b.hist.insert((cf, base.to_vec()));
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

    fn vput(&self, b: &mut Batch, cf: Cf, base: Vec<u8>, payload: Vec<u8>) -> Result<()> {
        if let Some(old) = self.live_row(b, cf, &base)? {
            self.retire(b, cf, &base, &old)?;
        }
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
        b.ops.push(KvOp::Put(Cf::Changes, change_key(b.epoch, cf, &base), Vec::new()));
        b.ops.push(KvOp::Put(cf, base.clone(), versioned(b.epoch, &payload)));
        b.live.insert((cf, base), Some((b.epoch, payload)));
        Ok(())
    }

    fn vdel(&self, b: &mut Batch, cf: Cf, base: Vec<u8>) -> Result<()> {
        let Some(old) = self.live_row(b, cf, &base)? else { return Ok(()) };
        self.retire(b, cf, &base, &old)?;
        // A tombstone is needed when an older version stays visible to some snapshot.
        if b.hist.contains(&(cf, base.clone())) || self.has_history(cf, &base)? {
            b.ops.push(KvOp::Put(Cf::History, hist_key(cf, &base, b.epoch), vec![0]));
            b.hist.insert((cf, base.clone()));
        }
        b.ops.push(KvOp::Put(Cf::Changes, change_key(b.epoch, cf, &base), Vec::new()));
        b.ops.push(KvOp::Del(cf, base.clone()));
        b.live.insert((cf, base), None);
        Ok(())
    }

    fn has_history(&self, cf: Cf, base: &[u8]) -> Result<bool> {
        let prefix = hist_prefix(cf, base);
        let end = prefix_end(&prefix);
        let mut found = false;
        self.kv.scan(Cf::History, &prefix, end.as_deref(), &mut |k, _| {
            found = k.len() == prefix.len() + 8;
            Ok(false)
        })?;
        Ok(found)
    }

    /// Add reference deltas to the stored counts; a count reaching zero puts the block on the
    /// free list, one leaving zero takes it off.
    fn finish_refs(&self, ops: &mut Vec<KvOp>, deltas: &BTreeMap<BlockId, i64>) -> Result<Vec<BlockId>> {
        let mut freed = Vec::new();
        for (id, delta) in deltas {
            if *delta == 0 {
                continue;
            }
            let old = self.block_refs(id)? as i64;
            let new = old + delta;
            if new < 0 {
                tracing::error!("reference count of block {id} would go negative ({old} {delta:+}); kept at zero");
            }
            if new > 0 {
                ops.push(KvOp::Put(Cf::Refs, id.0.to_vec(), (new as u64).to_le_bytes().to_vec()));
                if old == 0 {
                    ops.push(KvOp::Del(Cf::Free, id.0.to_vec()));
                }
            } else {
                ops.push(KvOp::Del(Cf::Refs, id.0.to_vec()));
                if old > 0 {
                    ops.push(KvOp::Put(Cf::Free, id.0.to_vec(), now_secs().to_le_bytes().to_vec()));
                    freed.push(*id);
                }
            }
        }
        Ok(freed)
    }

    // ---- the version collector -------------------------------------------------------------

    /// Remove the history versions of records written in epochs `(from, to]` that no snapshot
    /// in `pinned` (epochs) can see any more. With `dry_run`, change nothing and report what
    /// would go. Cost: the journal rows of those epochs and the versions of their records.
    pub fn collect_range(&self, from: u64, to: u64, pinned: &[u64], dry_run: bool) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut seen: HashSet<(Cf, Vec<u8>)> = HashSet::new();
        let mut pending: Vec<(Cf, Vec<u8>)> = Vec::new();
        let mut deltas: BTreeMap<BlockId, i64> = BTreeMap::new();
        let mut lens: HashMap<BlockId, u64> = HashMap::new();
        let mut flush = |pending: &mut Vec<(Cf, Vec<u8>)>, deltas: &mut BTreeMap<BlockId, i64>, stats: &mut GcStats| -> Result<()> {
            let _w = self.write.lock();
            let mut ops = Vec::new();
            let mut chunk_deltas = BTreeMap::new();
            for (cf, base) in pending.drain(..) {
                stats.keys += 1;
                self.collect_key(cf, &base, pinned, &mut ops, &mut chunk_deltas, &mut lens)?;
            }
            stats.versions_removed += ops.len() as u64;
            if dry_run {
                for (id, d) in chunk_deltas {
                    *deltas.entry(id).or_default() += d;
                }
                return Ok(());
            }
            for (id, d) in &chunk_deltas {
                if self.block_refs(id)? as i64 + d <= 0 {
                    stats.unreferenced.push((*id, lens.get(id).copied().unwrap_or(0)));
                }
            }
            self.finish_refs(&mut ops, &chunk_deltas)?;
            if !ops.is_empty() {
                self.kv.write(ops, false)?;
            }
            Ok(())
        };
        self.changes(from, to, &mut |c| {
            let (cf, base) = c.key.cf_base();
            // A dry run must count each record once; a real pass may see a record again in a
            // later chunk (collecting is idempotent), which keeps its memory to one chunk.
            if seen.insert((cf, base.clone())) {
                pending.push((cf, base));
            }
            if !dry_run && seen.len() >= 512 {
                seen.clear();
            }
            if pending.len() >= 512 {
                flush(&mut pending, &mut deltas, &mut stats)?;
            }
            Ok(true)
        })?;
        flush(&mut pending, &mut deltas, &mut stats)?;
        if dry_run {
            for (id, d) in deltas {
                if self.block_refs(&id)? as i64 + d <= 0 {
                    stats.unreferenced.push((id, lens.get(&id).copied().unwrap_or(0)));
                }
            }
        }
        Ok(stats)
    }

    fn collect_key(
        &self,
        cf: Cf,
        base: &[u8],
        pinned: &[u64],
        ops: &mut Vec<KvOp>,
        deltas: &mut BTreeMap<BlockId, i64>,
        lens: &mut HashMap<BlockId, u64>,
    ) -> Result<()> {
        struct V {
            epoch: u64,
            value: Option<Vec<u8>>,
            key: Option<Vec<u8>>,
        }
        let mut versions = Vec::new();
        if let Some(v) = self.kv.get(cf, base)? {
            versions.push(V { epoch: be(&v, 0)?, value: Some(v[8..].to_vec()), key: None });
        }
        let prefix = hist_prefix(cf, base);
        let end = prefix_end(&prefix);
        self.kv.scan(Cf::History, &prefix, end.as_deref(), &mut |k, v| {
            if k.len() == prefix.len() + 8 {
                let value = (v.first() == Some(&1)).then(|| v[1..].to_vec());
                versions.push(V { epoch: !be(k, prefix.len())?, value, key: Some(k.to_vec()) });
            }
            Ok(true)
        })?;
        if versions.iter().all(|v| v.key.is_none()) {
            return Ok(());
        }
        // Newest first; the live version before a history one of the same epoch.
        versions.sort_by(|a, b| b.epoch.cmp(&a.epoch));
        let n = versions.len();
        let pinned_at = |i: usize| {
            let newer = if i == 0 { u64::MAX } else { versions[i - 1].epoch };
            pinned.iter().any(|&s| versions[i].epoch <= s && s < newer)
        };
        let mut keep = vec![false; n];
        for i in 0..n {
            keep[i] = versions[i].key.is_none() || (versions[i].value.is_some() && (i == 0 || pinned_at(i)));
        }
        for i in 0..n {
            if versions[i].value.is_none() {
                let older_kept = (i + 1..n).any(|j| keep[j] && versions[j].value.is_some());
                keep[i] = older_kept && (i == 0 || pinned_at(i));
            }
        }
        for (v, kept) in versions.iter().zip(keep) {
            if kept {
                continue;
            }
            let Some(key) = &v.key else { continue };
            ops.push(KvOp::Del(Cf::History, key.clone()));
            if cf == Cf::Extents {
                if let Some((id, len)) = v.value.as_deref().map(sealed_of).transpose()?.flatten() {
                    *deltas.entry(id).or_default() -= 1;
                    lens.insert(id, len);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Kind;

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

    #[test]
    fn reads_at_an_epoch_see_the_newest_version_written_up_to_it() {
        let m = MetaStore::memory();
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

    #[test]
    fn ranges_at_an_epoch_merge_live_and_history() {
        let m = MetaStore::memory();
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
