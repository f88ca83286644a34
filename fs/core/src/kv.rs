//! The storage-engine seam: an ordered key-value store with column families and atomic
//! batches. [`crate::meta::MetaStore`] builds the versioned metadata (snapshots, the change
//! journal, reference counts) on top of it once, for every engine; an engine only stores bytes.
//!
//! Engines: [`MemKv`] here (unit tests), RocksDB in `hybridfs-meta` (the embedded default).
//! Both pass the conformance test at the bottom of this file.

use crate::error::Result;
use parking_lot::RwLock;
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

    /// Whether a whole-family scan of this family is a hot path worth caching.
    pub fn small(self) -> bool {
        matches!(self, Cf::Snapshots | Cf::Gc | Cf::Default | Cf::Orphans)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Del(Cf, Vec<u8>),
}

/// Visitor of a scan: gets key and value, returns `false` to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

pub trait Kv: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visit keys `>= start` and `< end` (no end: to the last key) in order.
    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()>;
    /// The greatest key `< end` (no end: the last key of the family).
    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>>;
    /// Apply every op or none (atomic, also across a crash). Without `sync` the batch survives
    /// a crash of the process but not of the machine.
    fn write(&self, ops: Vec<KvOp>, sync: bool) -> Result<()>;
    /// Make every batch written so far durable against power loss.
    fn sync(&self) -> Result<()>;
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
}

impl Kv for MemKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // Copy the range out first: the visitor may call back into the store.
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

    fn write(&self, ops: Vec<KvOp>, _sync: bool) -> Result<()> {
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
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The behaviour every engine must show; engines call this from their own tests.
pub fn conformance(kv: &dyn Kv) {
    let put = |k: &[u8], v: &[u8]| KvOp::Put(Cf::Extents, k.to_vec(), v.to_vec());
    kv.write(vec![put(b"a1", b"x"), put(b"a2", b"y"), put(b"b1", b"z"), put(b"a\xff", b"w")], true).unwrap();
    kv.write(vec![KvOp::Put(Cf::Inodes, b"a1".to_vec(), b"other".to_vec())], false).unwrap();
    assert_eq!(kv.get(Cf::Extents, b"a1").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(kv.get(Cf::Extents, b"a3").unwrap(), None);
    let mut seen = Vec::new();
    let end = prefix_end(b"a").unwrap();
    kv.scan(Cf::Extents, b"a", Some(&end), &mut |k, _| {
        seen.push(k.to_vec());
        Ok(true)
    })
    .unwrap();
    assert_eq!(seen, vec![b"a1".to_vec(), b"a2".to_vec(), b"a\xff".to_vec()], "ordered, bounded, per family");
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
    kv.write(vec![KvOp::Del(Cf::Extents, b"a1".to_vec()), put(b"a2", b"y2")], false).unwrap();
    assert_eq!(kv.get(Cf::Extents, b"a1").unwrap(), None);
    assert_eq!(kv.get(Cf::Extents, b"a2").unwrap().as_deref(), Some(&b"y2"[..]));
    assert_eq!(kv.get(Cf::Inodes, b"a1").unwrap().as_deref(), Some(&b"other"[..]));
    kv.sync().unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_kv_conforms() {
        super::conformance(&super::MemKv::default());
    }

    #[test]
    fn prefix_end_skips_0xff() {
        assert_eq!(super::prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(super::prefix_end(b"\xff\xff"), None);
    }
}
