//! Counters the volume keeps; names are the constants below. The mount process writes a
//! [`MetricsSnapshot`] to `metrics.json` beside the volume, which `hybridctl status` shows.

use crate::types::BlockId;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CORRUPT_BLOCKS: &str = "hybridfs_corrupt_blocks_total";
pub const BLOCKS_SEALED: &str = "hybridfs_blocks_sealed_total";
pub const BYTES_WRITTEN: &str = "hybridfs_bytes_written_total";
pub const BYTES_READ: &str = "hybridfs_bytes_read_total";

/// How many distinct corrupt block ids are remembered (invariant 5: the metric names them).
const CORRUPT_IDS_KEPT: usize = 32;

#[derive(Default)]
pub struct Metrics {
    pub corrupt_blocks: AtomicU64,
    pub blocks_sealed: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    corrupt_ids: Mutex<Vec<BlockId>>,
}

/// A point-in-time copy of the counters, as written to `metrics.json`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    pub counters: BTreeMap<String, u64>,
    /// Hex ids of blocks that failed verification (the first 32).
    pub corrupt_block_ids: Vec<String>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Count a block that failed verification, and remember which one.
    pub fn record_corrupt(&self, id: &BlockId) {
        Self::add(&self.corrupt_blocks, 1);
        let mut ids = self.corrupt_ids.lock();
        if ids.len() < CORRUPT_IDS_KEPT && !ids.contains(id) {
            ids.push(*id);
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let counters = [
            (CORRUPT_BLOCKS, &self.corrupt_blocks),
            (BLOCKS_SEALED, &self.blocks_sealed),
            (BYTES_WRITTEN, &self.bytes_written),
            (BYTES_READ, &self.bytes_read),
        ];
        MetricsSnapshot {
            counters: counters.iter().map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed))).collect(),
            corrupt_block_ids: self.corrupt_ids.lock().iter().map(BlockId::to_hex).collect(),
        }
    }
}
