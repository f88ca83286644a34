//! Object-store traffic of this process by purpose: requests and bytes of pushes, clones,
//! fetches and merges, for the cost ledger of the burst agent (doc/AGENT.md).
//!
//! A [`Counted`] store adds each call it passes on (one per call: the retries inside
//! [`crate::Retry`] are not counted again), the bytes sent (put bodies) and received (get
//! bodies), to the process-wide totals of its [`Purpose`]; [`totals`] reads them. A mount
//! process writes them into its `metrics.json`; `hybridctl` into the file named by
//! [`TRAFFIC_FILE_ENV`] when it exits.

use crate::{Cond, ObjectMeta, ObjectStore, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `hybridctl` writes this process's [`totals`] (JSON) to the file this variable names.
pub const TRAFFIC_FILE_ENV: &str = "HYBRIDCTL_TRAFFIC_FILE";

/// Why a store call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Publishing a branch: blocks, packs, layers, the head.
    Push,
    /// Making a clone: the branch's layers and metadata.
    Clone,
    /// Everything else a volume reads from its store: blocks a clone reads on demand, pulls,
    /// checks.
    Fetch,
    /// Merging a branch: its layers and blocks read, the result published.
    Merge,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Purpose::Push, Purpose::Clone, Purpose::Fetch, Purpose::Merge];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Push => "push",
            Purpose::Clone => "clone",
            Purpose::Fetch => "fetch",
            Purpose::Merge => "merge",
        }
    }
}

/// Requests and bytes of one purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

struct Counters {
    requests: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

static TOTALS: [Counters; 4] = {
    const Z: Counters = Counters { requests: AtomicU64::new(0), sent: AtomicU64::new(0), received: AtomicU64::new(0) };
    [Z, Z, Z, Z]
};

fn counters(p: Purpose) -> &'static Counters {
    &TOTALS[p as usize]
}

/// This process's traffic so far, by purpose name (`push`, `clone`, `fetch`, `merge`).
pub fn totals() -> BTreeMap<String, Traffic> {
    Purpose::ALL
        .iter()
        .map(|p| {
            let c = counters(*p);
            let t = Traffic {
                requests: c.requests.load(Ordering::Relaxed),
                bytes_sent: c.sent.load(Ordering::Relaxed),
                bytes_received: c.received.load(Ordering::Relaxed),
            };
            (p.as_str().to_string(), t)
        })
        .collect()
}

/// A store whose calls count as `purpose` (see the module comment).
pub struct Counted {
    inner: Arc<dyn ObjectStore>,
    purpose: Purpose,
}

impl Counted {
    pub fn new(inner: Arc<dyn ObjectStore>, purpose: Purpose) -> Counted {
        Counted { inner, purpose }
    }

    fn count(&self, sent: usize, received: usize) {
        let c = counters(self.purpose);
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.sent.fetch_add(sent as u64, Ordering::Relaxed);
        c.received.fetch_add(received as u64, Ordering::Relaxed);
    }
}

impl ObjectStore for Counted {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        self.count(data.len(), 0);
        self.inner.put(key, data, cond)
    }
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        let r = self.inner.get(key);
        self.count(0, r.as_ref().map_or(0, |(b, _)| b.len()));
        r
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let r = self.inner.get_range(key, offset, len);
        self.count(0, r.as_ref().map_or(0, Vec::len));
        r
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.count(0, 0);
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.count(0, 0);
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count(0, 0);
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    #[test]
    fn calls_and_bytes_count_under_their_purpose() {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let before = totals();
        let push = Counted::new(mem.clone(), Purpose::Push);
        let merge = Counted::new(mem, Purpose::Merge);
        push.put("v/blocks/a", &[7; 1000], Cond::None).unwrap();
        assert_eq!(merge.get("v/blocks/a").unwrap().0.len(), 1000);
        merge.get_range("v/blocks/a", 10, 100).unwrap();
        let after = totals();
        let d = |p: &str| Traffic {
            requests: after[p].requests - before[p].requests,
            bytes_sent: after[p].bytes_sent - before[p].bytes_sent,
            bytes_received: after[p].bytes_received - before[p].bytes_received,
        };
        assert_eq!(d("push"), Traffic { requests: 1, bytes_sent: 1000, bytes_received: 0 });
        assert_eq!(d("merge"), Traffic { requests: 2, bytes_sent: 0, bytes_received: 1100 });
    }
}
