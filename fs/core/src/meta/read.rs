//! Versioned reads: a record as seen at an epoch (the live family first, history when the
//! live version is newer), ranges that merge live and history rows, and the change journal.

use super::codec::{be, cf_of, dec, hist_key, hist_prefix, k1, k2, k_named, tag};
use super::{Change, DirEntry, Key, MetaStore, LIVE};
use crate::error::{FsError, Result};
use crate::kv::{prefix_end, Cf, KvRead};
use crate::types::{Dentry, Extent, Inode, Ino, JournalEntry};
use std::collections::{BTreeMap, BTreeSet};

/// The payload of `base` as seen at epoch `at`.
pub(super) fn get_at(r: &dyn KvRead, cf: Cf, base: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
    if let Some(mut v) = r.get(cf, base)? {
        if at == LIVE || be(&v, 0)? <= at {
            v.drain(..8);
            return Ok(Some(v));
        }
    } else if at == LIVE {
        return Ok(None);
    }
    hist_at(r, cf, base, at)
}

fn hist_at(r: &dyn KvRead, cf: Cf, base: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
    let prefix = hist_prefix(cf, base);
    let start = hist_key(cf, base, at);
    let end = prefix_end(&prefix);
    let mut out = None;
    r.scan(Cf::History, &start, end.as_deref(), &mut |k, v| {
        if k.len() == prefix.len() + 8 {
            out = Some(v.first().copied().unwrap_or(0) == 1).map(|live| live.then(|| v[1..].to_vec()));
        }
        Ok(false)
    })?;
    Ok(out.flatten())
}

/// [`MetaStore::max_ino_below`] through any reader (a transaction's too).
pub(super) fn max_ino_below(r: &dyn KvRead, limit: Ino) -> Result<Ino> {
    let live = match r.last_before(Cf::Inodes, Some(&k1(limit)))? {
        Some(k) => be(&k, 0)?,
        None => 0,
    };
    let t = tag(Cf::Inodes);
    let hist = match r.last_before(Cf::History, Some(&[&[t][..], &limit.to_be_bytes()].concat()))? {
        Some(k) if k.first() == Some(&t) => be(&k, 1)?,
        _ => 0,
    };
    Ok(live.max(hist))
}

impl MetaStore {
    pub(super) fn get_at(&self, cf: Cf, base: &[u8], at: u64) -> Result<Option<Vec<u8>>> {
        get_at(self.reader(), cf, base, at)
    }

    /// Up to `limit` rows `(base, payload)` of `cf` whose base starts with `prefix` and is
    /// `>= start`, in base order, as seen at epoch `at`.
    pub(super) fn range_at(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize, at: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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
                    _ => hist_at(self.reader(), cf, &base, at)?,
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

    /// Whether the live tree has inode `ino` (its record is not decoded).
    pub fn has_inode(&self, ino: Ino) -> Result<bool> {
        Ok(self.kv.get(Cf::Inodes, &k1(ino))?.is_some())
    }

    /// The live inode records of `inos`, in order, read with one `multi_get` (a listing's
    /// attributes: readdirplus).
    pub fn get_inodes(&self, inos: &[Ino]) -> Result<Vec<Option<Inode>>> {
        let keys: Vec<[u8; 8]> = inos.iter().map(|i| i.to_be_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        self.kv
            .multi_get(Cf::Inodes, &refs)?
            .into_iter()
            .map(|row| dec_live("inode", row))
            .collect()
    }

    /// The live records of `inos` and the live entries `entries` (parent, name), read
    /// together ([`KvRead::get_many`]: one round trip on PostgreSQL), each list in order.
    pub fn get_together(&self, inos: &[Ino], entries: &[(Ino, &[u8])]) -> Result<(Vec<Option<Inode>>, Vec<Option<Dentry>>)> {
        let ino_keys: Vec<[u8; 8]> = inos.iter().map(|i| i.to_be_bytes()).collect();
        let entry_keys: Vec<Vec<u8>> = entries.iter().map(|(p, n)| k_named(*p, n)).collect();
        let keys: Vec<(Cf, &[u8])> = ino_keys.iter().map(|k| (Cf::Inodes, &k[..])).chain(entry_keys.iter().map(|k| (Cf::Dentries, &k[..]))).collect();
        let mut rows = self.kv.get_many(&keys)?.into_iter();
        let found_inodes = rows.by_ref().take(inos.len()).map(|r| dec_live("inode", r)).collect::<Result<Vec<_>>>()?;
        let found_entries = rows.map(|r| dec_live("directory entry", r)).collect::<Result<Vec<_>>>()?;
        Ok((found_inodes, found_entries))
    }

    /// The highest inode number ever used (0 when there is none), history included, so that
    /// an inode number is never reused while a snapshot may still show it.
    pub fn max_ino(&self) -> Result<Ino> {
        self.max_ino_below(Ino::MAX)
    }

    /// The highest inode number below `limit` ever used (0 when there is none).
    pub fn max_ino_below(&self, limit: Ino) -> Result<Ino> {
        max_ino_below(self.reader(), limit)
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
        self.changes_from(&k1(first), end.as_deref(), f)
    }

    /// Visit the journal rows with keys in `[start, end)` (keys as `codec::change_key` makes).
    pub(super) fn changes_from(&self, start: &[u8], end: Option<&[u8]>, f: &mut dyn FnMut(Change) -> Result<bool>) -> Result<()> {
        self.kv.scan(Cf::Changes, start, end, &mut |k, _| {
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
}

/// A live row's record (the row is the 8-byte epoch it was written in, then the record).
fn dec_live<T: serde::de::DeserializeOwned>(what: &str, row: Option<Vec<u8>>) -> Result<Option<T>> {
    row.map(|v| dec(what, v.get(8..).ok_or_else(|| FsError::Meta(format!("live {what} row is truncated")))?)).transpose()
}
