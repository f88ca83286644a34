//! Large objects read as parallel ranged GETs: a block bigger than a part is read as
//! `ceil(len / part)` byte ranges, at most [`PARTS_IN_FLIGHT`] at a time, put back together in
//! order. One S3 connection moves far less than a node's link; a 64 MiB block read in 8 MiB
//! parts moves at the speed of eight.
//!
//! Nothing here trusts the parts: each must be exactly the length asked (the store's
//! `get_range` contract), and the caller verifies the whole reassembled frame against the
//! block's id before anything uses it (invariant 5), so a damaged or missing part fails the
//! block, never turns into wrong bytes.

use hybridfs_cloud::{ObjectStore, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Parts of one object read at the same time.
pub const PARTS_IN_FLIGHT: usize = 8;
/// The part size for blocks read in parts (S3's usual advice: 8-16 MiB per request). Volumes
/// whose blocks are at most this size read each block with one GET.
pub const PART_BYTES: u64 = 8 << 20;

/// The ranges `(offset, len)` that cover `len` bytes in parts of `part` bytes, in order (the
/// last one shorter where `part` does not divide `len`).
pub fn part_ranges(len: u64, part: u64) -> Vec<(u64, u64)> {
    let part = part.max(1);
    (0..len.div_ceil(part)).map(|i| (i * part, part.min(len - i * part))).collect()
}

/// The whole object `key`: its length (a `HEAD`), then one GET if it is at most `part` bytes,
/// else its parts in parallel, reassembled in order. The first part that fails stops the
/// others from starting and is the error.
pub fn get_in_parts(store: &dyn ObjectStore, key: &str, part: u64) -> Result<Vec<u8>, StoreError> {
    let len = store.head(key)?.ok_or_else(|| StoreError::NotFound { key: key.to_string() })?.len;
    if len <= part {
        return store.get(key).map(|(body, _)| body);
    }
    let ranges = part_ranges(len, part);
    let next = AtomicUsize::new(0);
    let parts: Vec<Mutex<Option<Result<Vec<u8>, StoreError>>>> = ranges.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..PARTS_IN_FLIGHT.min(ranges.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(offset, n)) = ranges.get(i) else { return };
                let got = store.get_range(key, offset, n);
                let failed = got.is_err();
                *parts[i].lock().expect("part lock") = Some(got);
                if failed {
                    next.store(ranges.len(), Ordering::SeqCst);
                    return;
                }
            });
        }
    });
    let mut got = Vec::with_capacity(parts.len());
    for p in parts {
        match p.into_inner().expect("part lock") {
            Some(Err(e)) => return Err(e),
            p => got.push(p),
        }
    }
    let mut body = Vec::with_capacity(len as usize);
    for (p, (offset, n)) in got.into_iter().zip(ranges) {
        match p {
            Some(Ok(bytes)) if bytes.len() as u64 == n => body.extend_from_slice(&bytes),
            Some(Ok(bytes)) => {
                let why = format!("part {offset}+{n} came back with {} bytes", bytes.len());
                return Err(StoreError::Corrupt { key: key.to_string(), why });
            }
            _ => return Err(StoreError::Corrupt { key: key.to_string(), why: format!("part {offset}+{n} was not read") }),
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridfs_cloud::{Cond, MemStore};

    #[test]
    fn parts_cover_the_object_once_in_order() {
        assert_eq!(part_ranges(0, 4), vec![]);
        assert_eq!(part_ranges(4, 4), vec![(0, 4)]);
        assert_eq!(part_ranges(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(part_ranges(3, 0), vec![(0, 1), (1, 1), (2, 1)], "a zero part size reads bytes one by one, never loops");
    }

    #[test]
    fn an_object_read_in_parts_is_the_object() {
        let store = MemStore::new();
        let body: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        store.put("k", &body, Cond::None).unwrap();
        for part in [1000, 4096, 100_003, 1 << 20] {
            assert_eq!(get_in_parts(&store, "k", part).unwrap(), body, "part {part}");
        }
        assert!(matches!(get_in_parts(&store, "absent", 10), Err(StoreError::NotFound { .. })));
    }
}
