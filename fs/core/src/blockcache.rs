//! A small cache of verified plain blocks, so that many small reads of one sealed block pay for
//! reading and verifying it once. Bounded in bytes (invariant 7); least recently used goes first.

use crate::types::BlockId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<BlockId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.map.get_mut(id)?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    pub fn insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += data.len();
        if let Some((old, _)) = inner.map.insert(id, (data, tick)) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.capacity {
            let Some(victim) = inner.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) else {
                break;
            };
            if let Some((old, _)) = inner.map.remove(&victim) {
                inner.bytes -= old.len();
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
}
