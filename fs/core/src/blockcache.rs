//! A small cache of verified plain blocks, so that many small reads of one sealed block pay for
//! reading and verifying it once. Bounded in bytes (invariant 7); least recently used goes first.
//!
//! The use order is a queue of `(id, tick)` with stale entries left in place (an entry is live
//! while its tick is the map's): a use and an eviction cost O(1) amortized, whatever the number
//! of blocks held. (It was a scan of the whole map per eviction: with the default 64 MiB of
//! small files' blocks, thousands of entries scanned per block read once the cache was full.)

use crate::types::BlockId;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<BlockId, (Arc<Vec<u8>>, u64)>,
    /// Uses, oldest first; an entry is stale once the map holds a later tick for its id.
    order: VecDeque<(BlockId, u64)>,
    bytes: usize,
    tick: u64,
}

impl Inner {
    /// Note a use of `id` (in the map) now.
    fn used(&mut self, id: BlockId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.map.get_mut(&id) {
            e.1 = tick;
        }
        self.order.push_back((id, tick));
        // Bound the queue: drop stale entries once it is much longer than the live set.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|(i, t)| map.get(i).is_some_and(|e| e.1 == *t));
        }
    }
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock();
        let data = inner.map.get(id)?.0.clone();
        inner.used(*id);
        Some(data)
    }

    pub fn insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock();
        inner.bytes += data.len();
        if let Some((old, _)) = inner.map.insert(id, (data, 0)) {
            inner.bytes -= old.len();
        }
        inner.used(id);
        while inner.bytes > self.capacity {
            let Some((victim, t)) = inner.order.pop_front() else { break };
            if inner.map.get(&victim).is_some_and(|e| e.1 == t) {
                if let Some((old, _)) = inner.map.remove(&victim) {
                    inner.bytes -= old.len();
                }
            }
        }
    }

    pub fn remove(&self, id: &BlockId) {
        let mut inner = self.inner.lock();
        if let Some((old, _)) = inner.map.remove(id) {
            inner.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_within_capacity() {
        let c = BlockCache::new(10);
        let id = |n: u8| BlockId([n; 32]);
        c.insert(id(1), Arc::new(vec![0; 4]));
        c.insert(id(2), Arc::new(vec![0; 4]));
        assert!(c.get(&id(1)).is_some());
        c.insert(id(3), Arc::new(vec![0; 4]));
        assert!(c.get(&id(2)).is_none(), "2 was least recently used");
        assert!(c.get(&id(1)).is_some() && c.get(&id(3)).is_some());
    }

    /// Invariant 7: the bytes held stay within the capacity however many blocks pass through,
    /// the most recently used stay, and the use queue stays bounded by the live set.
    #[test]
    fn many_blocks_stay_within_capacity_and_keep_the_recent_ones() {
        let c = BlockCache::new(100 * 16);
        let id = |n: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_le_bytes());
            BlockId(b)
        };
        for n in 0..10_000u32 {
            c.insert(id(n), Arc::new(vec![0; 16]));
            // A block read again and again stays (it is always the most recent but one).
            assert!(c.get(&id(0)).is_some(), "block 0 evicted at {n}");
            let inner = c.inner.lock();
            assert!(inner.bytes <= 100 * 16 && inner.map.len() <= 100, "{} bytes in {} blocks", inner.bytes, inner.map.len());
            assert!(inner.order.len() <= 2 * inner.map.len() + 65, "use queue of {} for {} blocks", inner.order.len(), inner.map.len());
        }
        assert!(c.get(&id(9_999)).is_some() && c.get(&id(9_950)).is_some());
        assert!(c.get(&id(5_000)).is_none(), "least recently used went first");
    }
}
