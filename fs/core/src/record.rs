//! Versioned records as typed values, and the form in which a push publishes them.
//!
//! The metadata store keeps each record (see [`Key`]) as bincode of its type. Code outside
//! core (the layers of `hybridfs-sync`) carries records as `(key, bytes)` pairs without
//! knowing that encoding: it asks this module what a record is ([`decode`]) and which block
//! it names ([`sealed_block`]). A record that does not decode is an error naming it, never
//! skipped (a push that skipped one would leave its block out of the store).
//!
//! # The published form (what a layer carries)
//!
//! Locally a small file (up to [`INLINE_MAX`]) keeps its bytes in its inode record. A layer
//! must stay metadata only (a clone of a million small files downloads no file data), so a
//! push publishes such a file as a file with one sealed block:
//!
//! ```text
//! local (home)                        published (layer), built by [`published`]
//! Inode { inline: Some(bytes), .. }   Inode { inline: None, .. }
//! (no Extent(ino, 0))                 Extent(ino, 0) = Sealed { id: blake3(bytes), len }
//! ```
//!
//! The block's frame is built from the inode's bytes at push time ([`inline_bytes`]) and goes
//! to the store like any small block (packed); a reader fetches it lazily and verifies it
//! against its id (invariant 5). Both published records derive from the snapshot's state
//! alone, so they agree whichever of them a layer carries and however a push splits its
//! records into layers: a changed inode record of a file that is not (or no longer) inline
//! carries its `Extent(ino, 0)` as stored, which replaces a block published for it earlier
//! (a file truncated to nothing, or deleted). A file that outgrew [`INLINE_MAX`] never
//! becomes inline again, so its extents then travel as they are.
//!
//! Layers written before this form carry inline bytes in inode records; applying them as
//! stored still gives a valid tree (inline files), so readers take both.
//!
//! Content comparisons across the two forms use [`ContentId`]: the same bytes inline or as
//! the block published for them compare equal.

use crate::error::{FsError, Result};
use crate::meta::{Key, MetaStore};
use crate::types::{BlockId, Dentry, Extent, Ino, Inode, Kind};

/// One record's value, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Inode(Inode),
    /// A directory entry (under its name).
    Dentry(Dentry),
    /// The readdir-order row of an entry: the entry and its name.
    Cookie(Dentry, Vec<u8>),
    Extent(Extent),
    /// An extended attribute's value.
    Xattr(Vec<u8>),
}

fn bad(key: &Key, e: impl std::fmt::Display) -> FsError {
    FsError::Meta(format!("record {key:?} does not decode: {e}"))
}

/// The value of record `key` from its stored bytes; an error names the record.
pub fn decode(key: &Key, bytes: &[u8]) -> Result<Value> {
    Ok(match key {
        Key::Inode(_) => Value::Inode(bincode::deserialize(bytes).map_err(|e| bad(key, e))?),
        Key::Dentry(..) => Value::Dentry(bincode::deserialize(bytes).map_err(|e| bad(key, e))?),
        Key::Cookie(..) => {
            let d: Dentry = bincode::deserialize(bytes).map_err(|e| bad(key, e))?;
            let len = bincode::serialized_size(&d).map_err(|e| bad(key, e))? as usize;
            Value::Cookie(d, bytes.get(len..).unwrap_or_default().to_vec())
        }
        Key::Extent(..) => Value::Extent(bincode::deserialize(bytes).map_err(|e| bad(key, e))?),
        Key::Xattr(..) => Value::Xattr(bytes.to_vec()),
    })
}

/// The sealed block record `key` (at `value`; `None`: deleted) names, if any.
pub fn sealed_block(key: &Key, value: Option<&[u8]>) -> Result<Option<BlockId>> {
    match (key, value) {
        (Key::Extent(..), Some(v)) => match decode(key, v)? {
            Value::Extent(Extent::Sealed { id, .. }) => Ok(Some(id)),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Whether record `key` is an inode with no name left (unlinked while open where it was
/// written): such an inode is an orphan wherever the record is applied.
pub fn is_unlinked_inode(key: &Key, value: Option<&[u8]>) -> Result<bool> {
    match (key, value) {
        (Key::Inode(_), Some(v)) => match decode(key, v)? {
            Value::Inode(i) => Ok(i.nlink == 0),
            _ => Ok(false),
        },
        _ => Ok(false),
    }
}

/// The id of the block that holds `bytes` (blake3 of the plain bytes, as for every block).
pub fn block_id_of(bytes: &[u8]) -> BlockId {
    BlockId(*blake3::hash(bytes).as_bytes())
}

/// A small file's bytes, when its inode keeps them inline (empty files have nothing to
/// publish).
fn inline_of(i: &Inode) -> Option<&[u8]> {
    i.inline.as_deref().filter(|b| i.kind == Kind::File && !b.is_empty())
}

/// One record in its published form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub key: Key,
    pub value: Option<Vec<u8>>,
    /// The record names a block built from the inline bytes of inode `.0` (the pusher
    /// uploads it from them: [`inline_bytes`]); `.1` is its id.
    pub inline_block: Option<(Ino, BlockId)>,
}

/// Records `key` of `meta` at epoch `at` puts into a layer, in their published form (see the
/// module doc): one record, or for an inode record of a file also its `Extent(ino, 0)`.
pub fn published(meta: &MetaStore, key: &Key, at: u64) -> Result<Vec<Published>> {
    let raw = meta.raw_at(key, at)?;
    let plain = |key: &Key, value| Published { key: key.clone(), value, inline_block: None };
    match key {
        Key::Inode(ino) => {
            let inode = match raw.as_deref().map(|v| decode(key, v)).transpose()? {
                Some(Value::Inode(i)) => Some(i),
                _ => None,
            };
            match inode {
                // Directories and files with extents: nothing published for block 0.
                Some(i) if i.inline.is_none() => Ok(vec![plain(key, raw)]),
                Some(i) if inline_of(&i).is_some() => {
                    let block = published_block(&i);
                    let mut bare = i;
                    bare.inline = None;
                    let value = bincode::serialize(&bare).expect("plain data");
                    Ok(vec![plain(key, Some(value)), block])
                }
                // Deleted, or inline and empty: block 0 as stored (replaces a published one).
                _ => {
                    let ext = Key::Extent(*ino, 0);
                    let ext_value = meta.raw_at(&ext, at)?;
                    Ok(vec![plain(key, raw), plain(&ext, ext_value)])
                }
            }
        }
        Key::Extent(ino, 0) => match meta.get_inode_at(*ino, at)? {
            Some(i) if inline_of(&i).is_some() => Ok(vec![published_block(&i)]),
            _ => Ok(vec![plain(key, raw)]),
        },
        _ => Ok(vec![plain(key, raw)]),
    }
}

/// `Extent(ino, 0)` naming the block of an inline file's bytes.
fn published_block(i: &Inode) -> Published {
    let bytes = inline_of(i).unwrap_or_default();
    let id = block_id_of(bytes);
    let extent = Extent::Sealed { id, len: bytes.len() as u32 };
    Published {
        key: Key::Extent(i.ino, 0),
        value: Some(bincode::serialize(&extent).expect("plain data")),
        inline_block: Some((i.ino, id)),
    }
}

/// The inline bytes of inode `ino` at epoch `at`, checked to be block `id` (the block a push
/// publishes for them; invariant 5: nothing else leaves under its name).
pub fn inline_bytes(meta: &MetaStore, ino: Ino, at: u64, id: &BlockId) -> Result<Vec<u8>> {
    let bytes = meta.get_inode_at(ino, at)?.and_then(|i| inline_of(&i).map(<[u8]>::to_vec));
    match bytes {
        Some(b) if block_id_of(&b) == *id => Ok(b),
        _ => Err(FsError::CorruptBlock { id: *id, why: format!("inode {ino} no longer holds these inline bytes at epoch {at}") }),
    }
}

/// What a file's bytes are, whichever form holds them: equal for the same bytes inline or
/// as the block published for them.
/// Blocks by number (holes absent); an inline file is its published block 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentId(pub Vec<(u64, Extent)>);

/// The [`ContentId`] of a file with `inline` bytes (if any) and `extents`.
pub fn content_id(inline: Option<&[u8]>, extents: &[(u64, Extent)]) -> ContentId {
    match inline.filter(|b| !b.is_empty()) {
        Some(b) => ContentId(vec![(0, Extent::Sealed { id: block_id_of(b), len: b.len() as u32 })]),
        None => ContentId(extents.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Mutation, LIVE};

    fn file(ino: Ino, bytes: &[u8]) -> Inode {
        let mut i = Inode::new(ino, Kind::File, 0o644, 0, 0);
        i.size = bytes.len() as u64;
        i.inline = Some(bytes.to_vec());
        i
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error_naming_it() {
        let e = sealed_block(&Key::Extent(7, 3), Some(&[9, 9])).unwrap_err().to_string();
        assert!(e.contains("Extent(7, 3)"), "{e}");
        let e = is_unlinked_inode(&Key::Inode(12), Some(b"x")).unwrap_err().to_string();
        assert!(e.contains("Inode(12)"), "{e}");
    }

    #[test]
    fn a_small_file_is_published_as_a_sealed_block_and_compares_equal_to_its_inline_form() {
        let meta = MetaStore::memory();
        meta.apply(vec![Mutation::PutInode(file(5, b"hello")), Mutation::Journal(crate::types::JournalEntry { epoch: 0, ino: 5, block: 0 })], false).unwrap();
        let out = published(&meta, &Key::Inode(5), LIVE).unwrap();
        assert_eq!(out.len(), 2);
        let Value::Inode(bare) = decode(&out[0].key, out[0].value.as_deref().unwrap()).unwrap() else { panic!() };
        assert_eq!((bare.inline, bare.size), (None, 5));
        let id = block_id_of(b"hello");
        assert_eq!(out[1].key, Key::Extent(5, 0));
        assert_eq!(sealed_block(&out[1].key, out[1].value.as_deref()).unwrap(), Some(id));
        assert_eq!(out[1].inline_block, Some((5, id)));
        // The journal's row for block 0 publishes the same record.
        assert_eq!(published(&meta, &Key::Extent(5, 0), LIVE).unwrap(), vec![out[1].clone()]);
        assert_eq!(inline_bytes(&meta, 5, LIVE, &id).unwrap(), b"hello");
        assert!(inline_bytes(&meta, 5, LIVE, &block_id_of(b"other")).is_err());
        let Value::Extent(ext) = decode(&out[1].key, out[1].value.as_deref().unwrap()).unwrap() else { panic!() };
        assert_eq!(content_id(Some(b"hello"), &[]), content_id(None, &[(0, ext)]));
        assert_ne!(content_id(Some(b"hellO"), &[]), content_id(None, &[(0, ext)]));
    }

    #[test]
    fn a_deleted_or_emptied_small_file_publishes_its_block_0_as_stored() {
        let meta = MetaStore::memory();
        meta.apply(vec![Mutation::PutInode(file(5, b""))], false).unwrap();
        let out = published(&meta, &Key::Inode(5), LIVE).unwrap();
        assert_eq!(out[1], Published { key: Key::Extent(5, 0), value: None, inline_block: None });
        let out = published(&meta, &Key::Inode(6), LIVE).unwrap();
        assert_eq!((out[0].value.clone(), out[1].key.clone(), out[1].value.clone()), (None, Key::Extent(6, 0), None));
        let mut dir = Inode::new(2, Kind::Dir, 0o755, 0, 0);
        dir.inline = None;
        meta.apply(vec![Mutation::PutInode(dir)], false).unwrap();
        assert_eq!(published(&meta, &Key::Inode(2), LIVE).unwrap().len(), 1);
    }
}
