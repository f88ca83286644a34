//! Pure arithmetic over a file cut into fixed-size blocks.

/// The part of one block that a byte range touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpan {
    /// Block index in the file.
    pub block: u64,
    /// Offset of the span inside the block.
    pub start: u64,
    /// Length of the span.
    pub len: u64,
    /// Offset of the span inside the byte range.
    pub pos: u64,
}

impl BlockSpan {
    pub fn covers_whole_block(&self, block_size: u64) -> bool {
        self.start == 0 && self.len == block_size
    }
}

/// The block spans of `[offset, offset + len)`, in order.
pub fn spans(offset: u64, len: u64, block_size: u64) -> impl Iterator<Item = BlockSpan> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let block = at / block_size;
        let start = at % block_size;
        let take = (block_size - start).min(end - at);
        let span = BlockSpan { block, start, len: take, pos: at - offset };
        at += take;
        Some(span)
    })
}

/// Number of blocks a file of `size` bytes spans.
pub fn blocks_for(size: u64, block_size: u64) -> u64 {
    size.div_ceil(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spans_cut_at_block_edges() {
        let v: Vec<_> = spans(100, 200, 128).collect();
        assert_eq!(
            v,
            vec![
                BlockSpan { block: 0, start: 100, len: 28, pos: 0 },
                BlockSpan { block: 1, start: 0, len: 128, pos: 28 },
                BlockSpan { block: 2, start: 0, len: 44, pos: 156 },
            ]
        );
        assert!(v[1].covers_whole_block(128));
        assert_eq!(spans(5, 0, 128).count(), 0);
    }

    proptest! {
        #[test]
        fn spans_tile_the_range(off in 0u64..1 << 40, len in 0u64..1 << 22, shift in 9u32..22) {
            let bs = 1u64 << shift;
            let mut next = off;
            for s in spans(off, len, bs) {
                prop_assert_eq!(s.block * bs + s.start, next);
                prop_assert!(s.start + s.len <= bs && s.len > 0);
                prop_assert_eq!(s.pos, next - off);
                next += s.len;
            }
            prop_assert_eq!(next, off + len);
        }
    }
}
