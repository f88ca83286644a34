//! Counters the volume keeps; names are the constants below, as a status or metrics endpoint
//! shows them.

use std::sync::atomic::{AtomicU64, Ordering};

pub const CORRUPT_BLOCKS: &str = "hybridfs_corrupt_blocks_total";
pub const BLOCKS_SEALED: &str = "hybridfs_blocks_sealed_total";
pub const BYTES_WRITTEN: &str = "hybridfs_bytes_written_total";
pub const BYTES_READ: &str = "hybridfs_bytes_read_total";

#[derive(Default)]
pub struct Metrics {
    pub corrupt_blocks: AtomicU64,
    pub blocks_sealed: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            (CORRUPT_BLOCKS, self.corrupt_blocks.load(Ordering::Relaxed)),
            (BLOCKS_SEALED, self.blocks_sealed.load(Ordering::Relaxed)),
            (BYTES_WRITTEN, self.bytes_written.load(Ordering::Relaxed)),
            (BYTES_READ, self.bytes_read.load(Ordering::Relaxed)),
        ]
    }
}
