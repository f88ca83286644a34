//! Sub-block deltas: a changed block sent as the byte ranges where it differs from the block it
//! replaced, when the store already holds that one.
//!
//! A push that uploads block `B` of `(file, index)` looks up the block `A` the same extent
//! named at the previous push. When the store holds `A` (alone under `blocks/`, which is always
//! a whole frame; or as a delta this node uploaded, whose chain length it recorded) and `A`
//! is on the node, the push compares the two (only blocks that changed are read: never the
//! unchanged data of the volume, invariant 3) and, if the differing ranges are small enough,
//! uploads a **delta object** instead of `B`'s frame: always inside a pack, so an object alone
//! under `blocks/` stays a whole frame for every reader and every version.
//!
//! # Delta object (the plain body; with encryption it is sealed to `B`'s id like a frame)
//!
//! ```text
//! "HYBD" u8 version=1 u8 depth  [32] result id B  u32 result len
//! [32] base id A  u8 where (0: alone under blocks/, 1: in a pack)  [32 pack][u64 offset][u64 len] (where = 1)
//! u32 ranges, then per range: u32 offset  u32 len  bytes
//! ```
//!
//! `depth` is the number of deltas from the whole frame at the root of the chain to `B`
//! (1: `A` is a whole frame). A push starts a new chain (sends the whole block) when `A`'s
//! depth is [`MAX_CHAIN`] or the ranges exceed [`max_delta_bytes`] of the block.
//!
//! # Reading (invariant 5)
//!
//! [`resolve`] reads an object; a delta's base is read from the location the delta names (or
//! a verified local copy), recursively, at most [`READ_CHAIN_LIMIT`] deep; the ranges are
//! applied and the result is checked against `B`'s id before anyone uses it. A bad delta, a bad
//! or missing base, a chain too long: an error naming the block (the readers turn it into `EIO`),
//! never wrong bytes. Objects written before deltas existed are whole frames and read as before.

use crate::{Remote, Result, SyncError};
use hybridfs_core::types::BlockId;

const MAGIC: &[u8; 4] = b"HYBD";
const VERSION: u8 = 1;
/// Ranges closer than this are sent as one (a range costs 8 bytes of header).
const GRAIN: usize = 256;
/// The longest chain a push builds: the next change of the block is sent whole.
pub const MAX_CHAIN: u8 = 8;
/// The longest chain a reader follows (a store written with a larger bound still reads).
pub const READ_CHAIN_LIMIT: u8 = 32;

/// The most delta bytes sent for a block of `len` bytes: a quarter of it, and always under the
/// pack threshold (deltas only travel in packs).
pub fn max_delta_bytes(len: usize) -> usize {
    (len / 4).min(crate::PACK_SMALLER_THAN - 4096)
}

/// Whether a stored body (decrypted) is a delta object.
pub fn is_delta(body: &[u8]) -> bool {
    body.len() >= 4 && &body[..4] == MAGIC
}

/// The length of the delta object at the start of `bytes` (a walk over a pack's bodies steps
/// over it), or None if none is there whole.
pub fn encoded_len(bytes: &[u8]) -> Option<usize> {
    if !is_delta(bytes) {
        return None;
    }
    let mut r = Reader { body: bytes, at: 4 + 2 + 32 + 4 + 32 };
    if r.u8()? == 1 {
        r.take(32 + 8 + 8)?;
    }
    for _ in 0..r.u32()? {
        r.take(4)?;
        let len = r.u32()? as usize;
        r.take(len)?;
    }
    Some(r.at)
}

/// The local state name recording a delta this node uploaded: its chain depth and where it is.
pub(crate) fn state_name(id: &BlockId) -> String {
    format!("delta/{}", id.to_hex())
}

/// What this node recorded about a delta it uploaded.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub depth: u8,
    pub pack: BlockId,
    pub offset: u64,
    pub len: u64,
}

/// One parsed delta object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub depth: u8,
    pub result: BlockId,
    pub result_len: u32,
    pub base: BlockId,
    pub base_at: Option<(BlockId, u64, u64)>,
    pub ranges: Vec<(u32, Vec<u8>)>,
}

impl Delta {
    /// The delta from `base` to `new` (both plain bytes), or None when it would exceed
    /// `limit` bytes of ranges.
    pub fn between(base: &[u8], new: &[u8], limit: usize) -> Option<Vec<(u32, Vec<u8>)>> {
        let mut ranges: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        let common = base.len().min(new.len());
        let mut push = |start: usize, end: usize, ranges: &mut Vec<(u32, Vec<u8>)>| -> bool {
            match ranges.last_mut() {
                Some((off, bytes)) if *off as usize + bytes.len() + GRAIN >= start => {
                    let from = *off as usize + bytes.len();
                    total += end - from;
                    bytes.extend_from_slice(&new[from..end]);
                }
                _ => {
                    total += end - start + 8;
                    ranges.push((start as u32, new[start..end].to_vec()));
                }
            }
            total <= limit
        };
        let mut at = 0;
        while at < common {
            let end = (at + GRAIN).min(common);
            if base[at..end] != new[at..end] {
                if !push(at, end, &mut ranges) {
                    return None;
                }
            }
            at = end;
        }
        if new.len() > common && !push(common, new.len(), &mut ranges) {
            return None;
        }
        Some(ranges)
    }

    /// The result's bytes: `base` (verified by the caller) with the ranges applied.
    pub fn apply(&self, base: &[u8]) -> Result<Vec<u8>> {
        let len = self.result_len as usize;
        let mut out = base[..base.len().min(len)].to_vec();
        out.resize(len, 0);
        for (off, bytes) in &self.ranges {
            let off = *off as usize;
            if off + bytes.len() > len {
                return Err(self.corrupt("a range lies past the block's end"));
            }
            out[off..off + bytes.len()].copy_from_slice(bytes);
        }
        Ok(out)
    }

    fn corrupt(&self, why: &str) -> SyncError {
        SyncError::Corrupt(format!("delta of block {} (base {}): {why}", self.result, self.base))
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.ranges.iter().map(|(_, b)| b.len() + 8).sum();
        let mut out = Vec::with_capacity(128 + size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, self.depth]);
        out.extend_from_slice(&self.result.0);
        out.extend_from_slice(&self.result_len.to_le_bytes());
        out.extend_from_slice(&self.base.0);
        match &self.base_at {
            None => out.push(0),
            Some((pack, offset, len)) => {
                out.push(1);
                out.extend_from_slice(&pack.0);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for (off, bytes) in &self.ranges {
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Parse a delta object stored as block `id`.
    pub fn decode(id: &BlockId, body: &[u8]) -> Result<Delta> {
        let bad = |why: &str| SyncError::Corrupt(format!("delta object of block {id}: {why}"));
        let mut r = Reader { body, at: 0 };
        if r.take(4).ok_or_else(|| bad("too short"))? != MAGIC {
            return Err(bad("not a delta"));
        }
        let version = r.u8().ok_or_else(|| bad("too short"))?;
        if version != VERSION {
            return Err(bad(&format!("unknown delta version {version}")));
        }
        let short = || bad("truncated");
        let depth = r.u8().ok_or_else(short)?;
        let result = r.id().ok_or_else(short)?;
        let result_len = r.u32().ok_or_else(short)?;
        let base = r.id().ok_or_else(short)?;
        let base_at = match r.u8().ok_or_else(short)? {
            0 => None,
            1 => Some((r.id().ok_or_else(short)?, r.u64().ok_or_else(short)?, r.u64().ok_or_else(short)?)),
            w => return Err(bad(&format!("unknown base location {w}"))),
        };
        let n = r.u32().ok_or_else(short)?;
        let mut ranges = Vec::with_capacity((n as usize).min(4096));
        for _ in 0..n {
            let off = r.u32().ok_or_else(short)?;
            let len = r.u32().ok_or_else(short)? as usize;
            ranges.push((off, r.take(len).ok_or_else(short)?.to_vec()));
        }
        if r.at != body.len() {
            return Err(bad("bytes after its last range"));
        }
        if result != *id {
            return Err(bad(&format!("it names block {result}")));
        }
        if depth == 0 || base == result {
            return Err(bad("a chain that does not start at a whole block"));
        }
        Ok(Delta { depth, result, result_len, base, base_at, ranges })
    }
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.body.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn id(&mut self) -> Option<BlockId> {
        self.take(32).map(|b| BlockId(b.try_into().expect("32 bytes")))
    }
}

/// The verified frame of block `id` from what the store holds at `packed`: a whole frame, or
/// a delta resolved against its base (read from `local` when a verified copy is on the node,
/// else from the store where the delta says), checked against `id` (invariant 5).
pub(crate) fn resolve(
    remote: &Remote,
    id: &BlockId,
    packed: Option<(BlockId, u64, u64)>,
    local: &dyn Fn(&BlockId) -> Option<Vec<u8>>,
    depth: u8,
) -> Result<Vec<u8>> {
    let body = match packed {
        None => remote.store.get(&remote.block_key(id)).map(|(b, _)| b)?,
        Some((pack, offset, len)) => remote.store.get_range(&remote.pack_key(&pack), offset, len)?,
    };
    resolve_body(remote, id, body, local, depth)
}

/// [`resolve`] of a body already read from the store (still sealed when the volume is
/// encrypted).
pub(crate) fn resolve_body(
    remote: &Remote,
    id: &BlockId,
    body: Vec<u8>,
    local: &dyn Fn(&BlockId) -> Option<Vec<u8>>,
    depth: u8,
) -> Result<Vec<u8>> {
    let body = remote.open_frame(id, body)?;
    let in_store = |e: hybridfs_core::FsError| SyncError::Corrupt(format!("the copy in the store: {e}"));
    if !is_delta(&body) {
        hybridfs_blocks::verify(id, &body).map_err(in_store)?;
        return Ok(body);
    }
    let d = Delta::decode(id, &body)?;
    if depth >= READ_CHAIN_LIMIT {
        return Err(d.corrupt(&format!("the chain of deltas is longer than {READ_CHAIN_LIMIT}")));
    }
    let base = match local(&d.base).and_then(|f| hybridfs_blocks::decode(&d.base, &f).ok()) {
        Some(plain) => plain,
        None => {
            let frame = resolve(remote, &d.base, d.base_at, local, depth + 1)?;
            hybridfs_blocks::decode(&d.base, &frame).map_err(in_store)?
        }
    };
    let frame = hybridfs_blocks::encode(&d.apply(&base)?);
    hybridfs_blocks::verify(id, &frame).map_err(|e| d.corrupt(&format!("the result does not match the block: {e}")))?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(data: &[u8]) -> BlockId {
        hybridfs_blocks::block_id(data)
    }

    #[test]
    fn round_trip_and_bounds() {
        let base: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 3) as u8).collect();
        let mut new = base.clone();
        new[100_001..100_001 + 65_536].iter_mut().for_each(|b| *b ^= 0x5a);
        new.extend_from_slice(&[9; 1000]);
        let ranges = Delta::between(&base, &new, max_delta_bytes(new.len())).expect("small change");
        let sent: usize = ranges.iter().map(|r| r.1.len()).sum();
        assert!(sent <= 65_536 + 1000 + 2 * GRAIN, "sent {sent}");
        let d = Delta { depth: 1, result: id(&new), result_len: new.len() as u32, base: id(&base), base_at: Some((id(b"p"), 5, 6)), ranges };
        let body = d.encode();
        assert!(is_delta(&body));
        let back = Delta::decode(&d.result, &body).expect("decodes");
        let mut two = body.clone();
        two.extend_from_slice(b"HYBK next frame");
        assert_eq!(encoded_len(&two), Some(body.len()), "a walk over a pack steps over it");
        assert_eq!(encoded_len(&body[..body.len() - 1]), None);
        assert_eq!(back, d);
        assert_eq!(back.apply(&base).unwrap(), new);
        // Shorter result, and a change too large to send as a delta.
        let short = base[..5000].to_vec();
        assert_eq!(Delta::between(&base, &short, 10).unwrap().len(), 0);
        let other: Vec<u8> = base.iter().map(|b| b ^ 1).collect();
        assert!(Delta::between(&base, &other, max_delta_bytes(other.len())).is_none());
        // Damage is refused, never applied.
        assert!(Delta::decode(&id(b"x"), &body).is_err(), "names another block");
        assert!(Delta::decode(&d.result, &body[..body.len() - 1]).is_err(), "truncated");
        let mut past = d.clone();
        past.ranges.push((new.len() as u32 - 2, vec![1, 2, 3]));
        assert!(past.apply(&base).is_err());
    }
}
