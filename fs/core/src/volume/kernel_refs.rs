//! The kernel's references to live inodes (FUSE lookup counts), kept small.
//!
//! The kernel takes one reference per entry it is given (lookup, create, readdirplus) and
//! gives them back with `FORGET`; until then the mount must know the inode is referenced (an
//! unlinked file stays readable, `purge_if_unused`). After a cold `find` over a volume of
//! millions of files the kernel holds every one of them, so this table is as long as the
//! volume. A `HashMap<Ino, u64>` spent 16 bytes a slot plus a control byte, at 7/8 load and
//! doubling (about 285 MiB for 10 million inodes, and both tables at once while it grew; it
//! never shrank after the kernel let go).
//!
//! Here the set of referenced inodes is a two-level bitmap keyed like a roaring bitmap: the
//! high bits of the number pick a chunk of [`CHUNK`] inodes; a chunk holds a sorted list of
//! 16-bit offsets while it has at most [`SPARSE_MAX`] members (2 bytes each) and a bitmap of
//! 8 KiB beyond (1 bit per inode number). Inode numbers are handed out in order, so a volume's
//! inodes fill chunks densely: 10 million referenced inodes take about 1.2 MiB. (Numbers
//! scattered one per chunk would cost a chunk each, ~80 bytes; a shared volume's hosts take
//! ranges of numbers and fill them in order too.) Counts above
//! one (an inode looked up again while the kernel still holds it: a hard link, a lookup after
//! the entry's TTL) are rare and go to a small map of the extra references. Memory is given
//! back as the kernel forgets: empty chunks go, bitmaps that thin out become lists again, and
//! the extras map shrinks when it empties.

use crate::types::Ino;
use std::collections::HashMap;

/// Inode numbers per chunk.
const CHUNK_BITS: u32 = 16;
const CHUNK: u64 = 1 << CHUNK_BITS;
/// Members a chunk keeps as a sorted list; one more makes it a bitmap.
const SPARSE_MAX: usize = 4096;
/// A bitmap chunk with fewer members than this becomes a list again.
const DENSE_MIN: u32 = (SPARSE_MAX / 2) as u32;
const WORDS: usize = (CHUNK / 64) as usize;

enum Chunk {
    Sparse(Vec<u16>),
    Dense(Box<[u64; WORDS]>, u32),
}

impl Chunk {
    fn contains(&self, low: u16) -> bool {
        match self {
            Chunk::Sparse(v) => v.binary_search(&low).is_ok(),
            Chunk::Dense(bits, _) => bits[low as usize / 64] & (1 << (low % 64)) != 0,
        }
    }

    /// Add `low`; false when it was there already.
    fn insert(&mut self, low: u16) -> bool {
        match self {
            Chunk::Sparse(v) => {
                let Err(at) = v.binary_search(&low) else { return false };
                if v.len() < SPARSE_MAX {
                    v.insert(at, low);
                    return true;
                }
                let mut bits = Box::new([0u64; WORDS]);
                for &l in v.iter().chain(std::iter::once(&low)) {
                    bits[l as usize / 64] |= 1 << (l % 64);
                }
                *self = Chunk::Dense(bits, SPARSE_MAX as u32 + 1);
                true
            }
            Chunk::Dense(bits, n) => {
                let (w, b) = (low as usize / 64, 1u64 << (low % 64));
                if bits[w] & b != 0 {
                    return false;
                }
                bits[w] |= b;
                *n += 1;
                true
            }
        }
    }

    /// Remove `low` (it is a member); returns the members left.
    fn remove(&mut self, low: u16) -> usize {
        match self {
            Chunk::Sparse(v) => {
                if let Ok(at) = v.binary_search(&low) {
                    v.remove(at);
                }
                if v.capacity() > 64 && v.len() < v.capacity() / 4 {
                    v.shrink_to(v.len() * 2);
                }
                v.len()
            }
            Chunk::Dense(bits, n) => {
                let (w, b) = (low as usize / 64, 1u64 << (low % 64));
                if bits[w] & b != 0 {
                    bits[w] &= !b;
                    *n -= 1;
                }
                if *n < DENSE_MIN {
                    let mut v = Vec::with_capacity(*n as usize * 2);
                    for (w, &word) in bits.iter().enumerate() {
                        let mut word = word;
                        while word != 0 {
                            v.push((w * 64) as u16 + word.trailing_zeros() as u16);
                            word &= word - 1;
                        }
                    }
                    let left = v.len();
                    *self = Chunk::Sparse(v);
                    return left;
                }
                *n as usize
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Chunk::Sparse(v) => v.capacity() * 2,
            Chunk::Dense(..) => WORDS * 8,
        }
    }
}

/// Referenced inodes and their kernel lookup counts (see the module comment).
#[derive(Default)]
pub(crate) struct KernelRefs {
    chunks: HashMap<u64, Chunk>,
    /// References beyond the first, for the inodes that have more than one.
    extra: HashMap<Ino, u64>,
    len: usize,
}

fn split(ino: Ino) -> (u64, u16) {
    (ino >> CHUNK_BITS, (ino & (CHUNK - 1)) as u16)
}

impl KernelRefs {
    /// One more reference to `ino`.
    pub(crate) fn add(&mut self, ino: Ino) {
        let (hi, low) = split(ino);
        if self.chunks.entry(hi).or_insert_with(|| Chunk::Sparse(Vec::new())).insert(low) {
            self.len += 1;
        } else {
            *self.extra.entry(ino).or_insert(0) += 1;
        }
    }

    /// `n` references to `ino` dropped; true when that was its last one.
    pub(crate) fn forget(&mut self, ino: Ino, n: u64) -> bool {
        let (hi, low) = split(ino);
        let Some(chunk) = self.chunks.get_mut(&hi) else { return false };
        if !chunk.contains(low) {
            return false;
        }
        let count = 1 + self.extra.get(&ino).copied().unwrap_or(0);
        if count > n {
            let left = count - n - 1;
            if left == 0 {
                self.extra.remove(&ino);
            } else {
                self.extra.insert(ino, left);
            }
            return false;
        }
        if count > 1 {
            self.extra.remove(&ino);
        }
        if self.extra.capacity() > 64 && self.extra.len() < self.extra.capacity() / 4 {
            self.extra.shrink_to(self.extra.len() * 2);
        }
        if chunk.remove(low) == 0 {
            self.chunks.remove(&hi);
            if self.chunks.capacity() > 64 && self.chunks.len() < self.chunks.capacity() / 4 {
                self.chunks.shrink_to(self.chunks.len() * 2);
            }
        }
        self.len -= 1;
        true
    }

    pub(crate) fn contains(&self, ino: Ino) -> bool {
        let (hi, low) = split(ino);
        self.chunks.get(&hi).is_some_and(|c| c.contains(low))
    }

    /// The lookup count of `ino` (0: not referenced).
    #[cfg(test)]
    pub(crate) fn count(&self, ino: Ino) -> u64 {
        if !self.contains(ino) {
            return 0;
        }
        1 + self.extra.get(&ino).copied().unwrap_or(0)
    }

    /// Referenced inodes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap memory held, approximately (the maps' slots and the chunks' lists and bitmaps).
    pub(crate) fn heap_bytes(&self) -> usize {
        let slot = |k: usize, v: usize| k + v + 1;
        self.chunks.capacity() * slot(8, std::mem::size_of::<Chunk>())
            + self.chunks.values().map(Chunk::heap_bytes).sum::<usize>()
            + self.extra.capacity() * slot(8, 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's memory follows the referenced inodes, about a bit each for inodes handed
    /// out in order, and goes back to nothing when the kernel forgets them (counts asserted,
    /// not time).
    #[test]
    fn stays_small_and_empties_on_forget() {
        let mut refs = KernelRefs::default();
        let n: u64 = 1_000_000;
        for ino in 2..2 + n {
            refs.add(ino);
        }
        assert_eq!(refs.len(), n as usize);
        // 16 bitmap chunks of 8 KiB: ~131 KiB, against ~36 MiB for a HashMap<u64, u64>.
        assert!(refs.heap_bytes() < 256 << 10, "{} bytes for {n} inodes", refs.heap_bytes());
        assert!(refs.contains(2) && refs.contains(n + 1) && !refs.contains(n + 2) && !refs.contains(1));
        for ino in 2..2 + n {
            assert!(refs.forget(ino, 1), "ino {ino}");
        }
        assert_eq!(refs.len(), 0);
        assert!(refs.chunks.is_empty());
        assert!(refs.heap_bytes() < 8 << 10, "{} bytes left", refs.heap_bytes());
    }

    /// Scattered inode numbers cost a list entry each, not a bitmap; the worst case, one
    /// number per chunk, costs a chunk slot each (~80 bytes), still bounded per inode.
    #[test]
    fn sparse_numbers_take_lists() {
        let mut refs = KernelRefs::default();
        for i in 0..10_000u64 {
            refs.add(i * 1_000_003 + 7);
        }
        assert_eq!(refs.len(), 10_000);
        assert!(refs.chunks.values().all(|c| matches!(c, Chunk::Sparse(_))));
        assert!(refs.heap_bytes() < 10_000 * 128, "{} bytes", refs.heap_bytes());
        for i in 0..10_000u64 {
            assert!(refs.forget(i * 1_000_003 + 7, 1));
        }
        assert_eq!(refs.len(), 0);
    }

    /// Lookup counts: an inode stays referenced until as many references as it was given are
    /// forgotten, in any split; forgetting an unknown inode changes nothing.
    #[test]
    fn counts_like_a_map() {
        let mut refs = KernelRefs::default();
        let mut model: HashMap<Ino, u64> = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Around one chunk boundary and the list/bitmap switch, plus far numbers.
            let ino = match x % 4 {
                0 => (1 << 16) + (x >> 8) % 6000,
                1 => (2 << 16) - 3000 + (x >> 8) % 6000,
                2 => (x >> 8) % 100,
                _ => 1 << 40 | (x >> 8) % 50,
            };
            if (x >> 40) % 3 == 0 {
                let n = 1 + (x >> 50) % 3;
                let had = model.get(&ino).copied().unwrap_or(0);
                let gone = refs.forget(ino, n);
                if had == 0 {
                    assert!(!gone);
                } else if had <= n {
                    assert!(gone);
                    model.remove(&ino);
                } else {
                    assert!(!gone);
                    model.insert(ino, had - n);
                }
            } else {
                refs.add(ino);
                *model.entry(ino).or_insert(0) += 1;
            }
            assert_eq!(refs.count(ino), model.get(&ino).copied().unwrap_or(0), "ino {ino}");
        }
        assert_eq!(refs.len(), model.len());
        for (&ino, &c) in &model {
            assert_eq!(refs.count(ino), c);
        }
    }
}
