//! Writes: [`MetaStore::apply`] turns a batch of mutations into one atomic engine batch,
//! moving replaced versions to history, writing journal rows and adjusting block references
//! and usage inside the same batch (invariants 1 to 3).

use super::codec::{be, change_key, enc, file_usage, hist_key, hist_prefix, k1, k2, k_named, sealed_of, versioned};
use super::{MetaStore, Mutation};
use crate::error::Result;
use crate::kv::{prefix_end, Cf, KvOp};
use crate::types::{BlockId, Usage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

/// A live version as the batch being built sees it.
pub(super) type LiveRow = Option<(u64, Vec<u8>)>;

/// One batch under construction: the engine ops plus what the batch itself already changed.
pub(super) struct Batch {
    epoch: u64,
    ops: Vec<KvOp>,
    live: HashMap<(Cf, Vec<u8>), LiveRow>,
    hist: HashSet<(Cf, Vec<u8>)>,
    refs: BTreeMap<BlockId, i64>,
    usage: (i64, i64),
}

impl MetaStore {
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
}
