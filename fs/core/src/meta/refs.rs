//! Block reference counts and the free list.
//!
//! The count of a block is the number of stored extent versions (live and history) naming it.
//! [`MetaStore::apply`] and the collector sum the changes of one batch per block and fold them
//! into the stored [`RefEntry`] inside the same engine batch as the extents. A count reaching
//! zero puts the block on the free list with the time; one leaving zero takes it off.
//!
//! ```text
//! refs   block id  ->  count u64 LE       (absent = 0)
//! free   block id  ->  unix seconds u64 LE (the count reached zero then)
//! ```

use super::codec::le;
use super::MetaStore;
use crate::error::{FsError, Result};
use crate::kv::{Cf, KvRead, KvTxn};
use crate::types::BlockId;
use std::collections::BTreeMap;

/// One block's stored reference count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefEntry {
    pub id: BlockId,
    pub count: u64,
}

/// What changing a [`RefEntry`] by a delta does to the refs and free families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RefChange {
    /// The new count (0: the entry is deleted).
    pub count: u64,
    /// The count reached zero: the block goes on the free list.
    pub freed: bool,
    /// The count left zero: the block comes off the free list.
    pub revived: bool,
}

impl RefEntry {
    pub(super) fn load(r: &dyn KvRead, id: BlockId) -> Result<RefEntry> {
        let count = r.get(Cf::Refs, &id.0)?.map_or(Ok(0), |v| le(&v))?;
        Ok(RefEntry { id, count })
    }

    pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<RefEntry> {
        let id = BlockId(key.try_into().map_err(|_| FsError::Meta("malformed block id key".into()))?);
        Ok(RefEntry { id, count: le(value)? })
    }

    /// The pure decision: the count after `delta` (never below zero) and whether the block
    /// enters or leaves the free list.
    pub(super) fn change(&self, delta: i64) -> RefChange {
        let new = self.count as i64 + delta;
        if new < 0 {
            tracing::error!("reference count of block {} would go negative ({} {delta:+}); kept at zero", self.id, self.count);
        }
        let count = new.max(0) as u64;
        RefChange { count, freed: self.count > 0 && count == 0, revived: self.count == 0 && count > 0 }
    }

    /// Store `change` of this entry in `tx`; `now` is the free list's time.
    pub(super) fn store(&self, change: RefChange, now: u64, tx: &mut dyn KvTxn) {
        self.write(change, now, &mut |cf, k, v| match v {
            Some(v) => tx.put(cf, k.to_vec(), v.to_vec()),
            None => tx.del(cf, k.to_vec()),
        });
    }

    /// The writes of `change` of this entry, to `out` (`None`: a deletion).
    pub(super) fn write(&self, change: RefChange, now: u64, out: &mut dyn FnMut(Cf, &[u8], Option<&[u8]>)) {
        let key = &self.id.0[..];
        if change.count > 0 {
            out(Cf::Refs, key, Some(&change.count.to_le_bytes()));
        } else {
            out(Cf::Refs, key, None);
        }
        if change.revived {
            out(Cf::Free, key, None);
        } else if change.freed {
            out(Cf::Free, key, Some(&now.to_le_bytes()));
        }
    }
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl MetaStore {
    pub fn block_refs(&self, id: &BlockId) -> Result<u64> {
        Ok(RefEntry::load(self.reader(), *id)?.count)
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

    pub fn for_each_ref(&self, f: &mut dyn FnMut(BlockId, u64)) -> Result<()> {
        self.kv.scan(Cf::Refs, &[], None, &mut |k, v| {
            let e = RefEntry::decode(k, v)?;
            f(e.id, e.count);
            Ok(true)
        })
    }
}

/// Add reference deltas to the stored counts, inside `tx`; a count reaching zero puts the
/// block on the free list, one leaving zero takes it off. Returns the blocks that became free.
pub(super) fn finish_refs(tx: &mut dyn KvTxn, deltas: &BTreeMap<BlockId, i64>) -> Result<Vec<BlockId>> {
    let mut freed = Vec::new();
    let now = now_secs();
    for (id, delta) in deltas {
        if *delta == 0 {
            continue;
        }
        let entry = RefEntry::load(tx, *id)?;
        let change = entry.change(*delta);
        entry.store(change, now, tx);
        if change.freed {
            freed.push(*id);
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(count: u64) -> RefEntry {
        RefEntry { id: BlockId([7; 32]), count }
    }

    #[test]
    fn a_count_reaching_zero_frees_the_block_and_one_leaving_zero_revives_it() {
        assert_eq!(entry(1).change(-1), RefChange { count: 0, freed: true, revived: false });
        assert_eq!(entry(0).change(2), RefChange { count: 2, freed: false, revived: true });
        assert_eq!(entry(3).change(-1), RefChange { count: 2, freed: false, revived: false });
    }

    #[test]
    fn a_count_never_goes_below_zero_and_an_absent_one_is_not_freed_again() {
        assert_eq!(entry(1).change(-5), RefChange { count: 0, freed: true, revived: false });
        assert_eq!(entry(0).change(-1), RefChange { count: 0, freed: false, revived: false });
    }

    #[test]
    fn a_zero_count_is_deleted_and_the_free_time_recorded() {
        use crate::kv::{Kv, MemKv};
        let kv = MemKv::default();
        let e = entry(1);
        kv.transact(false, &mut |tx| {
            tx.put(Cf::Refs, e.id.0.to_vec(), 1u64.to_le_bytes().to_vec());
            Ok(())
        })
        .unwrap();
        kv.transact(false, &mut |tx| {
            e.store(e.change(-1), 42, tx);
            Ok(())
        })
        .unwrap();
        assert_eq!(kv.get(Cf::Refs, &e.id.0).unwrap(), None);
        assert_eq!(kv.get(Cf::Free, &e.id.0).unwrap(), Some(42u64.to_le_bytes().to_vec()));
    }
}
