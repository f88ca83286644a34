//! The key codec of the metadata store: how records become engine keys and values.
//!
//! # Key layout
//!
//! All integers big-endian, so keys sort by number. `!e` is the bitwise complement of epoch
//! `e` (newest first). A base key names a record independent of its version.
//!
//! ```text
//! family     key                                       value
//! inodes     ino                                       epoch ++ bincode Inode
//! dentries   parent ++ name                            epoch ++ bincode Dentry
//! cookies    parent ++ cookie                          epoch ++ bincode Dentry ++ name
//! extents    ino ++ block                              epoch ++ bincode Extent (absent = hole)
//! xattrs     ino ++ name                               epoch ++ value
//! history    tag ++ base ++ 0x00 ++ !epoch             0 (tombstone) | 1 ++ the live value's payload
//! changes    epoch ++ tag ++ base                      empty
//! refs       block id                                  count u64 LE
//! free       block id                                  unix seconds u64 LE (count reached zero)
//! orphans    ino                                       empty (nlink 0, still open)
//! snapshots  name                                      bincode SnapshotInfo
//! gc         from ++ to                                empty (epochs whose versions to collect)
//! pushed     block id                                  bincode Option<(pack, offset, len)> (in the store)
//! default    "epoch" | "snap_next" | "usage"           u64 LE | u64 LE | bincode Usage
//!            "m:" ++ name                              opaque (state of other layers: push, …)
//!            "usage/" ++ NN | "usage/~" ++ random u64   usage shards, delta rows: i64 LE files ++ bytes
//!            "host/" | "open/" | "lease/" ++ …          shared volumes' hosts (`hosts.rs`)
//! ```
//!
//! `tag` is the live family (0 inodes … 4 xattrs). Names never contain NUL, so the 0x00 after
//! the base ends it: all versions of one base are adjacent and no other base shares the prefix.

use super::Key;
use crate::error::{FsError, Result};
use crate::kv::Cf;
use crate::types::{BlockId, Extent, Kind};

pub(super) fn k1(a: u64) -> Vec<u8> {
    a.to_be_bytes().to_vec()
}

pub(super) fn k2(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

pub(super) fn k_named(a: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub(super) fn be(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| FsError::Meta("metadata key or value is truncated".into()))
}

pub(super) fn le(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| FsError::Meta("malformed counter in the metadata store".into()))
}

pub(super) fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialisation cannot fail")
}

pub(super) fn dec<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| FsError::Meta(format!("decode {what}: {e}")))
}


/// The live family's tag in history and journal keys.
pub(super) fn tag(cf: Cf) -> u8 {
    match cf {
        Cf::Inodes => 0,
        Cf::Dentries => 1,
        Cf::Cookies => 2,
        Cf::Extents => 3,
        Cf::Xattrs => 4,
        other => unreachable!("{other:?} is not versioned"),
    }
}

pub(super) fn cf_of(tag: u8) -> Result<Cf> {
    Ok(match tag {
        0 => Cf::Inodes,
        1 => Cf::Dentries,
        2 => Cf::Cookies,
        3 => Cf::Extents,
        4 => Cf::Xattrs,
        t => return Err(FsError::Meta(format!("unknown record tag {t} in the change journal"))),
    })
}

impl Key {
    pub(super) fn cf_base(&self) -> (Cf, Vec<u8>) {
        let mut base = Vec::with_capacity(16);
        let cf = self.base_into(&mut base);
        (cf, base)
    }

    /// The family, the base key written into `buf` (a bulk load reuses one buffer).
    pub(super) fn base_into(&self, buf: &mut Vec<u8>) -> Cf {
        crate::layer::KeyRef::of(self).base_into(buf)
    }

    /// The record an engine row of a versioned family names (its live key `base`): what an
    /// engine's change notifications carry (issue 15's `LISTEN/NOTIFY`).
    pub fn of_row(cf: Cf, base: &[u8]) -> Result<Key> {
        Self::decode(cf, base)
    }

    pub(super) fn decode(cf: Cf, base: &[u8]) -> Result<Key> {
        let a = be(base, 0)?;
        Ok(match cf {
            Cf::Inodes => Key::Inode(a),
            Cf::Dentries => Key::Dentry(a, base[8..].to_vec()),
            Cf::Cookies => Key::Cookie(a, be(base, 8)?),
            Cf::Extents => Key::Extent(a, be(base, 8)?),
            Cf::Xattrs => Key::Xattr(a, base[8..].to_vec()),
            other => return Err(FsError::Meta(format!("{other:?} is not versioned"))),
        })
    }
}

/// All history keys of `base` start with this.
pub(super) fn hist_prefix(cf: Cf, base: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 10);
    k.push(tag(cf));
    k.extend_from_slice(base);
    k.push(0);
    k
}

pub(super) fn hist_key(cf: Cf, base: &[u8], epoch: u64) -> Vec<u8> {
    let mut k = hist_prefix(cf, base);
    k.extend_from_slice(&(!epoch).to_be_bytes());
    k
}

pub(super) fn change_key(epoch: u64, cf: Cf, base: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 9);
    change_key_into(epoch, cf, base, &mut k);
    k
}

/// [`change_key`] into `buf`.
pub(super) fn change_key_into(epoch: u64, cf: Cf, base: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&epoch.to_be_bytes());
    buf.push(tag(cf));
    buf.extend_from_slice(base);
}

pub(super) fn versioned(epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    versioned_into(epoch, payload, &mut v);
    v
}

/// [`versioned`] into `buf`.
pub(super) fn versioned_into(epoch: u64, payload: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&epoch.to_be_bytes());
    buf.extend_from_slice(payload);
}

pub(super) fn sealed_of(payload: &[u8]) -> Result<Option<(BlockId, u64)>> {
    Ok(match dec::<Extent>("extent", payload)? {
        Extent::Sealed { id, len } => Some((id, len as u64)),
        Extent::Staged => None,
    })
}

/// The fields a bincode [`Inode`](crate::types::Inode) starts with, up to its size: what usage needs, read without
/// decoding the byte strings that follow (name, target, inline bytes). bincode reads a
/// prefix of the record (trailing bytes are allowed, as for cookie rows).
#[derive(serde::Deserialize)]
struct InodeHead {
    _ino: u64,
    kind: Kind,
    _perm: u32,
    _uid: u32,
    _gid: u32,
    _nlink: u32,
    size: u64,
}

pub(super) fn file_usage(payload: &[u8]) -> Result<(i64, i64)> {
    let i: InodeHead = dec("inode", payload)?;
    Ok(if i.kind == Kind::File { (1, i.size as i64) } else { (0, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Inode;

    /// Usage (files, bytes) read from an inode record's head is what the whole record says.
    #[test]
    fn file_usage_reads_the_head_of_an_inode_record() {
        let mut f = Inode::new(9, Kind::File, 0o644, 0, 0);
        f.size = 3;
        f.name = b"abc".to_vec();
        f.inline = Some(b"xyz".to_vec());
        assert_eq!(file_usage(&enc(&f)).unwrap(), (1, 3));
        let mut d = Inode::new(10, Kind::Dir, 0o755, 0, 0);
        d.size = 4096;
        assert_eq!(file_usage(&enc(&d)).unwrap(), (0, 0));
        assert!(file_usage(&[1, 2, 3]).is_err());
    }
}
