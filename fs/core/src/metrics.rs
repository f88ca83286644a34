//! Counters the volume keeps; names are the constants below (documented in
//! `doc/METRICS.md`). Each is counted twice, on purpose: in the volume's own atomics, which the
//! mount process writes to `metrics.json` beside the volume for `hybridctl status` (a
//! [`MetricsSnapshot`]), and through the `metrics` facade, which a process that installed a
//! recorder (the mount with `--metrics-addr`) serves in the Prometheus text format. Without a
//! recorder the facade calls cost a load and a branch.

use crate::types::BlockId;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CORRUPT_BLOCKS: &str = "hybridfs_corrupt_blocks_total";
pub const BLOCKS_SEALED: &str = "hybridfs_blocks_sealed_total";
pub const BYTES_WRITTEN: &str = "hybridfs_bytes_written_total";
pub const BYTES_READ: &str = "hybridfs_bytes_read_total";
/// Absorbs of a file open for passthrough writes that found bytes the kernel wrote (the
/// kernel's writes themselves never reach the mount: doc/METRICS.md).
pub const PASSTHROUGH_ABSORBS: &str = "hybridfs_passthrough_absorbs_total";
/// Reads of a sealed block served from the in-memory block cache.
pub const BLOCK_CACHE_HITS: &str = "hybridfs_block_cache_hits_total";
/// Reads of a sealed block that went to the block store (local disk, or the object store on
/// a clone), and the bytes they brought.
pub const BLOCK_CACHE_MISSES: &str = "hybridfs_block_cache_misses_total";
pub const BLOCK_FETCH_BYTES: &str = "hybridfs_block_fetch_bytes_total";
/// Time to get one block from the block store (histogram, seconds).
pub const BLOCK_FETCH_SECONDS: &str = "hybridfs_block_fetch_seconds";

/// How many distinct corrupt block ids are remembered (invariant 5: the metric names them).
const CORRUPT_IDS_KEPT: usize = 32;

#[derive(Default)]
pub struct Metrics {
    pub corrupt_blocks: AtomicU64,
    pub blocks_sealed: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub passthrough_absorbs: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub fetch_bytes: AtomicU64,
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
    fn add(counter: &AtomicU64, name: &'static str, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(name).increment(n);
    }

    pub fn read(&self, bytes: u64) {
        Self::add(&self.bytes_read, BYTES_READ, bytes);
    }

    pub fn written(&self, bytes: u64) {
        Self::add(&self.bytes_written, BYTES_WRITTEN, bytes);
    }

    /// An absorb of passthrough writes that found new bytes (counted with [`Metrics::written`]).
    pub fn absorbed(&self) {
        Self::add(&self.passthrough_absorbs, PASSTHROUGH_ABSORBS, 1);
    }

    pub fn sealed(&self, blocks: u64) {
        Self::add(&self.blocks_sealed, BLOCKS_SEALED, blocks);
    }

    pub fn cache_hit(&self) {
        Self::add(&self.cache_hits, BLOCK_CACHE_HITS, 1);
    }

    /// A block fetched from the block store: `bytes` in `secs`.
    pub fn cache_miss(&self, bytes: u64, secs: f64) {
        Self::add(&self.cache_misses, BLOCK_CACHE_MISSES, 1);
        Self::add(&self.fetch_bytes, BLOCK_FETCH_BYTES, bytes);
        metrics::histogram!(BLOCK_FETCH_SECONDS).record(secs);
    }

    /// Count a block that failed verification, and remember which one.
    pub fn record_corrupt(&self, id: &BlockId) {
        Self::add(&self.corrupt_blocks, CORRUPT_BLOCKS, 1);
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
            (PASSTHROUGH_ABSORBS, &self.passthrough_absorbs),
            (BLOCK_CACHE_HITS, &self.cache_hits),
            (BLOCK_CACHE_MISSES, &self.cache_misses),
            (BLOCK_FETCH_BYTES, &self.fetch_bytes),
        ];
        MetricsSnapshot {
            counters: counters.iter().map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed))).collect(),
            corrupt_block_ids: self.corrupt_ids.lock().iter().map(BlockId::to_hex).collect(),
        }
    }
}
