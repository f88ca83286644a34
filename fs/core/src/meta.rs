//! The metadata seam: what core needs from a metadata store, and an in-memory implementation.
//!
//! Core reads through typed getters and writes only through [`MetaStore::apply`], which takes
//! a batch of [`Mutation`]s and applies it atomically: either every mutation of a batch is
//! visible after a crash, or none is. `sync = true` makes the batch (and every batch applied
//! before it) durable against power loss before `apply` returns; without it a batch survives
//! a crash of the process but not of the machine.
//!
//! Block reference counts are changed with [`Mutation::RefDelta`]; the store adds the deltas of
//! a batch to the stored count inside the same atomic write and drops counts that reach zero.

use crate::error::Result;
use crate::types::{BlockId, Dentry, Extent, Inode, Ino, JournalEntry};
use parking_lot::Mutex;
use std::collections::BTreeMap;

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
    Journal(JournalEntry),
    RefDelta { id: BlockId, delta: i64 },
    PutOrphan(Ino),
    DelOrphan(Ino),
    SetEpoch(u64),
}

/// A directory entry as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub dentry: Dentry,
}

pub trait MetaStore: Send + Sync + 'static {
    fn get_inode(&self, ino: Ino) -> Result<Option<Inode>>;
    /// The highest inode number in use (0 when there is none).
    fn max_ino(&self) -> Result<Ino>;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>>;
    /// Up to `limit` entries of `parent` with a cookie greater than `after`, in cookie order.
    fn readdir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>>;
    fn get_extent(&self, ino: Ino, block: u64) -> Result<Option<Extent>>;
    /// Every extent of `ino` with a block index >= `from`, in order.
    fn extents(&self, ino: Ino, from: u64) -> Result<Vec<(u64, Extent)>>;
    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>>;
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>>;
    /// Journal rows with epoch >= `from_epoch`, ordered by (epoch, ino, block).
    fn journal(&self, from_epoch: u64) -> Result<Vec<JournalEntry>>;
    fn block_refs(&self, id: &BlockId) -> Result<u64>;
    fn orphans(&self) -> Result<Vec<Ino>>;
    fn epoch(&self) -> Result<u64>;

    fn for_each_inode(&self, f: &mut dyn FnMut(Inode)) -> Result<()>;
    fn for_each_dentry(&self, f: &mut dyn FnMut(Ino, &[u8], Dentry)) -> Result<()>;
    fn for_each_extent(&self, f: &mut dyn FnMut(Ino, u64, Extent)) -> Result<()>;
    fn for_each_ref(&self, f: &mut dyn FnMut(BlockId, u64)) -> Result<()>;

    fn apply(&self, batch: Vec<Mutation>, sync: bool) -> Result<()>;
    /// Make every batch applied so far durable against power loss.
    fn sync(&self) -> Result<()>;
}

/// In-memory [`MetaStore`] for unit tests of core logic.
#[derive(Default)]
pub struct MemMeta {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    inodes: BTreeMap<Ino, Inode>,
    dentries: BTreeMap<(Ino, Vec<u8>), Dentry>,
    cookies: BTreeMap<(Ino, u64), Vec<u8>>,
    extents: BTreeMap<(Ino, u64), Extent>,
    xattrs: BTreeMap<(Ino, Vec<u8>), Vec<u8>>,
    journal: BTreeMap<JournalEntry, ()>,
    refs: BTreeMap<BlockId, u64>,
    orphans: BTreeMap<Ino, ()>,
    epoch: u64,
}

impl MemState {
    fn apply_one(&mut self, m: Mutation) {
        match m {
            Mutation::PutInode(i) => {
                self.inodes.insert(i.ino, i);
            }
            Mutation::DelInode(ino) => {
                self.inodes.remove(&ino);
            }
            Mutation::PutDentry { parent, name, dentry } => {
                self.cookies.insert((parent, dentry.cookie), name.clone());
                self.dentries.insert((parent, name), dentry);
            }
            Mutation::DelDentry { parent, name, cookie } => {
                self.cookies.remove(&(parent, cookie));
                self.dentries.remove(&(parent, name));
            }
            Mutation::PutExtent { ino, block, extent } => {
                self.extents.insert((ino, block), extent);
            }
            Mutation::DelExtent { ino, block } => {
                self.extents.remove(&(ino, block));
            }
            Mutation::PutXattr { ino, name, value } => {
                self.xattrs.insert((ino, name), value);
            }
            Mutation::DelXattr { ino, name } => {
                self.xattrs.remove(&(ino, name));
            }
            Mutation::Journal(e) => {
                self.journal.insert(e, ());
            }
            Mutation::RefDelta { id, delta } => {
                let now = self.refs.get(&id).copied().unwrap_or(0) as i64 + delta;
                if now > 0 {
                    self.refs.insert(id, now as u64);
                } else {
                    self.refs.remove(&id);
                }
            }
            Mutation::PutOrphan(ino) => {
                self.orphans.insert(ino, ());
            }
            Mutation::DelOrphan(ino) => {
                self.orphans.remove(&ino);
            }
            Mutation::SetEpoch(e) => self.epoch = e,
        }
    }
}

impl MetaStore for MemMeta {
    fn get_inode(&self, ino: Ino) -> Result<Option<Inode>> {
        Ok(self.state.lock().inodes.get(&ino).cloned())
    }
    fn max_ino(&self) -> Result<Ino> {
        Ok(self.state.lock().inodes.keys().next_back().copied().unwrap_or(0))
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        Ok(self.state.lock().dentries.get(&(parent, name.to_vec())).copied())
    }
    fn readdir(&self, parent: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let s = self.state.lock();
        let range = s.cookies.range((parent, after.saturating_add(1))..=(parent, u64::MAX));
        Ok(range
            .take(limit)
            .map(|((_, cookie), name)| DirEntry {
                cookie: *cookie,
                name: name.clone(),
                dentry: s.dentries[&(parent, name.clone())],
            })
            .collect())
    }
    fn get_extent(&self, ino: Ino, block: u64) -> Result<Option<Extent>> {
        Ok(self.state.lock().extents.get(&(ino, block)).copied())
    }
    fn extents(&self, ino: Ino, from: u64) -> Result<Vec<(u64, Extent)>> {
        let s = self.state.lock();
        Ok(s.extents.range((ino, from)..=(ino, u64::MAX)).map(|((_, b), e)| (*b, *e)).collect())
    }
    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().xattrs.get(&(ino, name.to_vec())).cloned())
    }
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let s = self.state.lock();
        Ok(s.xattrs.keys().filter(|(i, _)| *i == ino).map(|(_, n)| n.clone()).collect())
    }
    fn journal(&self, from_epoch: u64) -> Result<Vec<JournalEntry>> {
        let s = self.state.lock();
        Ok(s.journal.keys().filter(|e| e.epoch >= from_epoch).copied().collect())
    }
    fn block_refs(&self, id: &BlockId) -> Result<u64> {
        Ok(self.state.lock().refs.get(id).copied().unwrap_or(0))
    }
    fn orphans(&self) -> Result<Vec<Ino>> {
        Ok(self.state.lock().orphans.keys().copied().collect())
    }
    fn epoch(&self) -> Result<u64> {
        Ok(self.state.lock().epoch.max(1))
    }
    fn for_each_inode(&self, f: &mut dyn FnMut(Inode)) -> Result<()> {
        self.state.lock().inodes.values().for_each(|i| f(i.clone()));
        Ok(())
    }
    fn for_each_dentry(&self, f: &mut dyn FnMut(Ino, &[u8], Dentry)) -> Result<()> {
        self.state.lock().dentries.iter().for_each(|((p, n), d)| f(*p, n, *d));
        Ok(())
    }
    fn for_each_extent(&self, f: &mut dyn FnMut(Ino, u64, Extent)) -> Result<()> {
        self.state.lock().extents.iter().for_each(|((i, b), e)| f(*i, *b, *e));
        Ok(())
    }
    fn for_each_ref(&self, f: &mut dyn FnMut(BlockId, u64)) -> Result<()> {
        self.state.lock().refs.iter().for_each(|(id, n)| f(*id, *n));
        Ok(())
    }
    fn apply(&self, batch: Vec<Mutation>, _sync: bool) -> Result<()> {
        let mut s = self.state.lock();
        batch.into_iter().for_each(|m| s.apply_one(m));
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
