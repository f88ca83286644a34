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
use crate::kv::{Cf, Kv, KvOp};
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
    pub(super) fn load(kv: &dyn Kv, id: BlockId) -> Result<RefEntry> {
        let count = kv.get(Cf::Refs, &id.0)?.map_or(Ok(0), |v| le(&v))?;
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

    /// The engine ops that store `change` of this entry; `now` is the free list's time.
    pub(super) fn ops(&self, change: RefChange, now: u64, ops: &mut Vec<KvOp>) {
        let key = self.id.0.to_vec();
        if change.count > 0 {
            ops.push(KvOp::Put(Cf::Refs, key.clone(), change.count.to_le_bytes().to_vec()));
        } else {
            ops.push(KvOp::Del(Cf::Refs, key.clone()));
        }
        if change.revived {
            ops.push(KvOp::Del(Cf::Free, key));
        } else if change.freed {
            ops.push(KvOp::Put(Cf::Free, key, now.to_le_bytes().to_vec()));
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl MetaStore {
    pub fn block_refs(&self, id: &BlockId) -> Result<u64> {
        Ok(RefEntry::load(&*self.kv, *id)?.count)
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

    /// Add reference deltas to the stored counts; a count reaching zero puts the block on the
    /// free list, one leaving zero takes it off. Returns the blocks that became free.
    pub(super) fn finish_refs(&self, ops: &mut Vec<KvOp>, deltas: &BTreeMap<BlockId, i64>) -> Result<Vec<BlockId>> {
        let mut freed = Vec::new();
        let now = now_secs();
        for (id, delta) in deltas {
            if *delta == 0 {
                continue;
            }
            let entry = RefEntry::load(&*self.kv, *id)?;
            let change = entry.change(*delta);
            entry.ops(change, now, ops);
            if change.freed {
                freed.push(*id);
            }
        }
        Ok(freed)
    }
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
    fn the_ops_delete_a_zero_count_and_record_the_free_time() {
        let mut ops = Vec::new();
        let e = entry(1);
        e.ops(e.change(-1), 42, &mut ops);
        let key = e.id.0.to_vec();
        assert_eq!(ops, vec![KvOp::Del(Cf::Refs, key.clone()), KvOp::Put(Cf::Free, key, 42u64.to_le_bytes().to_vec())]);
    }
}
