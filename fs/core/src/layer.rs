//! Layers: the records one push publishes, and their encoding (owned here, with the records
//! it carries; `hybridfs-sync` moves the bytes and never decodes a record itself).
//!
//! # Format 3 (written now)
//!
//! ```text
//! zstd(  u32 LE format = 3
//!        u32 LE n, bincode(LayerHeader) of n bytes     what a chain walk needs, and the count
//!        records × { u32 LE n, bincode(Entry) of n bytes }   exactly `header.records` of them
//!     )
//! ```
//!
//! The header comes first, so a chain walk learns a layer's predecessor (`prev`,
//! `parent_ref`) by decompressing a few bytes, without decoding its records. Each entry is one
//! record with the pack location of the block it names, so a reader applies records as they
//! come: [`LayerReader`] hands them out in chunks of a size the caller picks and holds no
//! more than one entry besides the decompressor's window (invariant 7: memory bounded by the
//! chunk, whatever the size of the layer). A layer whose stream ends before its count, or
//! goes on after it, or whose entry does not decode, is a [`LayerError`]: never skipped.
//!
//! # Format 2 (still read)
//!
//! `zstd(bincode(Layer))` with `format = 2` first: decoded whole (such layers were written
//! with at most 100,000 records each), then handed out like format 3.

use crate::error::FsError;
use crate::kv::Cf;
use crate::meta::Key;
use crate::record;
use crate::types::BlockId;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// The format [`encode`] writes.
pub const LAYER_FORMAT: u32 = 3;
/// The older format still read.
pub const LAYER_FORMAT_2: u32 = 2;
/// An entry longer than this is corrupt (a record is an inode, a name, an extent or an xattr).
const MAX_ENTRY: u32 = 16 << 20;
/// A header longer than this is corrupt.
const MAX_HEADER: u32 = 1 << 20;

/// Why a layer's bytes cannot be read (the caller names the layer).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer format {0}, this hybridfs reads formats 2 and 3")]
    Format(u32),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("does not decode: {0}")]
    Undecodable(String),
    /// A record that does not decode, with the layer it is in.
    #[error("layer {seq} of branch {branch} of volume {volume}: {why}")]
    Record { seq: u64, branch: String, volume: String, why: FsError },
}

/// The exact layer object a head or a later layer names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    pub seq: u64,
    pub key: String,
    /// blake3 of the stored bytes (after encryption, if any), 64 hex digits.
    pub hash: String,
}

/// One record of a layer: its value at the pushed snapshot, or `None` (deleted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    pub value: Option<Vec<u8>>,
}

/// Where a packed block is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub id: BlockId,
    pub pack: BlockId,
    pub offset: u64,
    pub len: u64,
}

/// Where a block is: `Some((pack, offset, len))` inside a pack, `None` stored alone.
pub type Location = Option<(BlockId, u64, u64)>;

/// The metadata changes of one push, whole (format 2's encoding is bincode of it).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Layer {
    pub format: u32,
    pub volume: String,
    pub branch: String,
    pub seq: u64,
    /// The epoch range `(base_epoch, epoch]` of the pushing node it covers.
    pub base_epoch: u64,
    pub epoch: u64,
    pub block_size: u64,
    /// The first layer of a branch forked from another: the branch and layer it starts from.
    pub parent: Option<(String, u64)>,
    /// The last layer of a push: the tree is whole after it (a large push writes several).
    pub complete: bool,
    pub records: Vec<Record>,
    pub packed: Vec<Packed>,
    /// The id of the push that wrote it (a race's two attempts never write the same bytes).
    pub push: String,
    /// The layer before it on this branch (None for layer 1).
    pub prev: Option<LayerRef>,
    /// Layer 1 of a fork: the exact layer of the parent branch it starts from.
    pub parent_ref: Option<LayerRef>,
}

/// Everything about a layer but its records (format 3 stores it first).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerHeader {
    pub format: u32,
    pub volume: String,
    pub branch: String,
    pub seq: u64,
    pub base_epoch: u64,
    pub epoch: u64,
    pub block_size: u64,
    pub parent: Option<(String, u64)>,
    pub complete: bool,
    pub push: String,
    pub prev: Option<LayerRef>,
    pub parent_ref: Option<LayerRef>,
    /// The number of records that follow.
    pub records: u64,
}

/// One record as a reader hands it out, with the location of the sealed block it names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub value: Option<Vec<u8>>,
    pub packed: Location,
}

/// An [`Entry`] borrowed from the bytes it was decoded from ([`LayerReader::next_with`]): no
/// allocation per record.
#[derive(Deserialize, Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    #[serde(borrow)]
    pub key: KeyRef<'a>,
    #[serde(borrow)]
    pub value: Option<&'a [u8]>,
    pub packed: Location,
}

/// A [`Key`] borrowed (the same encoding).
#[derive(Deserialize, Debug, Clone, Copy)]
pub enum KeyRef<'a> {
    Inode(u64),
    Dentry(u64, &'a [u8]),
    Cookie(u64, u64),
    Extent(u64, u64),
    Xattr(u64, &'a [u8]),
}

impl<'a> KeyRef<'a> {
    /// `key`, borrowed.
    pub fn of(key: &'a Key) -> KeyRef<'a> {
        match key {
            Key::Inode(i) => KeyRef::Inode(*i),
            Key::Dentry(p, n) => KeyRef::Dentry(*p, n),
            Key::Cookie(p, c) => KeyRef::Cookie(*p, *c),
            Key::Extent(i, b) => KeyRef::Extent(*i, *b),
            Key::Xattr(i, n) => KeyRef::Xattr(*i, n),
        }
    }

    /// The key as the store keeps it (its base key, without version), into `buf`, and its
    /// family.
    pub fn base_into(&self, buf: &mut Vec<u8>) -> Cf {
        buf.clear();
        let (cf, a, rest): (Cf, u64, &[u8]) = match self {
            KeyRef::Inode(i) => (Cf::Inodes, *i, &[]),
            KeyRef::Dentry(p, n) => (Cf::Dentries, *p, n),
            KeyRef::Cookie(p, c) => (Cf::Cookies, *p, &c.to_be_bytes()),
            KeyRef::Extent(i, b) => (Cf::Extents, *i, &b.to_be_bytes()),
            KeyRef::Xattr(i, n) => (Cf::Xattrs, *i, n),
        };
        buf.extend_from_slice(&a.to_be_bytes());
        buf.extend_from_slice(rest);
        cf
    }

    /// The key, owned.
    pub fn to_key(&self) -> Key {
        match *self {
            KeyRef::Inode(i) => Key::Inode(i),
            KeyRef::Dentry(p, n) => Key::Dentry(p, n.to_vec()),
            KeyRef::Cookie(p, c) => Key::Cookie(p, c),
            KeyRef::Extent(i, b) => Key::Extent(i, b),
            KeyRef::Xattr(i, n) => Key::Xattr(i, n.to_vec()),
        }
    }

    /// The key where it owns nothing (an inode, a cookie, an extent), without allocating;
    /// None for a name.
    fn plain(&self) -> Option<Key> {
        match *self {
            KeyRef::Inode(i) => Some(Key::Inode(i)),
            KeyRef::Cookie(p, c) => Some(Key::Cookie(p, c)),
            KeyRef::Extent(i, b) => Some(Key::Extent(i, b)),
            KeyRef::Dentry(..) | KeyRef::Xattr(..) => None,
        }
    }
}

impl<'a> EntryRef<'a> {
    fn of(e: &'a Entry) -> EntryRef<'a> {
        EntryRef { key: KeyRef::of(&e.key), value: e.value.as_deref(), packed: e.packed }
    }
}

/// The error for a record of layer `seq` of `branch` of `volume` that does not decode.
fn bad_record<'a>(seq: u64, branch: &'a str, volume: &'a str) -> impl Fn(FsError) -> LayerError + 'a {
    move |why| LayerError::Record { seq, branch: branch.to_string(), volume: volume.to_string(), why }
}

impl LayerHeader {
    /// The sealed block `e` names, if any; a record that does not decode is an error naming
    /// it and the layer (never skipped: a block would go missing).
    pub fn sealed_block(&self, e: &Entry) -> Result<Option<BlockId>, LayerError> {
        record::sealed_block(&e.key, e.value.as_deref()).map_err(bad_record(self.seq, &self.branch, &self.volume))
    }

    /// Whether `e` is an inode unlinked while open on the pushing node.
    pub fn is_unlinked_inode(&self, e: &Entry) -> Result<bool, LayerError> {
        record::is_unlinked_inode(&e.key, e.value.as_deref()).map_err(bad_record(self.seq, &self.branch, &self.volume))
    }

    /// [`LayerHeader::sealed_block`] of a borrowed entry.
    pub fn sealed_block_of(&self, e: &EntryRef<'_>) -> Result<Option<BlockId>, LayerError> {
        match e.key.plain() {
            Some(key) => record::sealed_block(&key, e.value).map_err(bad_record(self.seq, &self.branch, &self.volume)),
            None => Ok(None),
        }
    }

    /// [`LayerHeader::is_unlinked_inode`] of a borrowed entry.
    pub fn is_unlinked_inode_of(&self, e: &EntryRef<'_>) -> Result<bool, LayerError> {
        match e.key.plain() {
            Some(key) => record::is_unlinked_inode(&key, e.value).map_err(bad_record(self.seq, &self.branch, &self.volume)),
            None => Ok(false),
        }
    }
}

impl Layer {
    /// Its header (`records`: its number of records).
    pub fn header(&self) -> LayerHeader {
        LayerHeader {
            format: self.format,
            volume: self.volume.clone(),
            branch: self.branch.clone(),
            seq: self.seq,
            base_epoch: self.base_epoch,
            epoch: self.epoch,
            block_size: self.block_size,
            parent: self.parent.clone(),
            complete: self.complete,
            push: self.push.clone(),
            prev: self.prev.clone(),
            parent_ref: self.parent_ref.clone(),
            records: self.records.len() as u64,
        }
    }

    /// The sealed block record `r` of this layer names, if any; a record that does not
    /// decode is an error naming it and the layer (never skipped: a block would go missing).
    pub fn sealed_block(&self, r: &Record) -> Result<Option<BlockId>, LayerError> {
        record::sealed_block(&r.key, r.value.as_deref()).map_err(bad_record(self.seq, &self.branch, &self.volume))
    }

    /// Where the blocks this layer's records name are: `(block, Some(pack location))` or
    /// `(block, None)` stored alone.
    pub fn located(&self) -> Result<Vec<(BlockId, Location)>, LayerError> {
        let packed: std::collections::HashMap<BlockId, (BlockId, u64, u64)> =
            self.packed.iter().map(|p| (p.id, (p.pack, p.offset, p.len))).collect();
        let mut out = Vec::new();
        for r in &self.records {
            if let Some(id) = self.sealed_block(r)? {
                out.push((id, packed.get(&id).copied()));
            }
        }
        Ok(out)
    }
}

fn undecodable(e: impl std::fmt::Display) -> LayerError {
    LayerError::Undecodable(e.to_string())
}

/// `layer` in format 3, compressed (its `format` field is ignored). Each record carries the
/// pack location of the block it names (from `layer.packed`); a pack location no record
/// names is not kept.
pub fn encode(layer: &Layer) -> Result<Vec<u8>, LayerError> {
    let packed: std::collections::HashMap<BlockId, (BlockId, u64, u64)> =
        layer.packed.iter().map(|p| (p.id, (p.pack, p.offset, p.len))).collect();
    use std::io::Write;
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(undecodable)?;
    z.write_all(&LAYER_FORMAT.to_le_bytes()).map_err(undecodable)?;
    let mut header = layer.header();
    header.format = LAYER_FORMAT;
    let mut put = |bytes: &[u8]| -> Result<(), LayerError> {
        z.write_all(&(bytes.len() as u32).to_le_bytes()).and_then(|_| z.write_all(bytes)).map_err(undecodable)
    };
    put(&bincode::serialize(&header).map_err(undecodable)?)?;
    for r in &layer.records {
        // A record that does not decode is carried as it is (its reader names it).
        let at = layer.sealed_block(r).ok().flatten().and_then(|id| packed.get(&id).copied());
        let entry = Entry { key: r.key.clone(), value: r.value.clone(), packed: at };
        put(&bincode::serialize(&entry).map_err(undecodable)?)?;
    }
    z.finish().map_err(undecodable)
}

/// `layer` in format 2 (`zstd(bincode(Layer))`), as hybridfs wrote it before format 3: kept
/// so that tests can write old layers and check they are still read.
#[doc(hidden)]
pub fn encode_format_2(layer: &Layer) -> Vec<u8> {
    let mut old = layer.clone();
    old.format = LAYER_FORMAT_2;
    zstd::encode_all(&bincode::serialize(&old).expect("plain data")[..], 3).expect("compress in memory")
}

/// Reads a layer's records from its compressed bytes, a chunk at a time.
pub struct LayerReader<R: Read> {
    header: LayerHeader,
    body: Body<R>,
    /// Records not handed out yet.
    left: u64,
    /// The bytes of the record being decoded.
    buf: Vec<u8>,
}

enum Body<R: Read> {
    Stream(zstd::stream::read::Decoder<'static, std::io::BufReader<R>>),
    /// A format-2 layer, decoded whole.
    Whole(std::vec::IntoIter<Entry>),
}

/// Fill `buf` from `r`; false at a clean end of the stream before the first byte. `what`
/// names the item in an error (built only then: this runs once per record).
fn read_exact_or_end(r: &mut impl Read, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<bool, LayerError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(LayerError::Truncated(format!("{} ends after {got} of {} bytes", what(), buf.len()))),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LayerError::Truncated(format!("{}: {e}", what()))),
        }
    }
    Ok(true)
}

/// One length-prefixed item of at most `max` bytes.
fn read_item(r: &mut impl Read, max: u32, what: &dyn Fn() -> String) -> Result<Vec<u8>, LayerError> {
    let mut buf = Vec::new();
    read_item_into(r, max, what, &mut buf)?;
    Ok(buf)
}

/// [`read_item`] into `buf` (reused from item to item: one allocation per layer, not per
/// record).
fn read_item_into(r: &mut impl Read, max: u32, what: &dyn Fn() -> String, buf: &mut Vec<u8>) -> Result<(), LayerError> {
    let mut len = [0u8; 4];
    if !read_exact_or_end(r, &mut len, what)? {
        return Err(LayerError::Truncated(format!("the stream ends before {}", what())));
    }
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(undecodable(format!("{} claims {len} bytes (at most {max})", what())));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    if !read_exact_or_end(r, buf, what)? && len > 0 {
        return Err(LayerError::Truncated(format!("the stream ends before {}", what())));
    }
    Ok(())
}

impl<R: Read> LayerReader<R> {
    /// Open the compressed layer `src`: reads its format and header (format 3: only those).
    pub fn open(src: R) -> Result<Self, LayerError> {
        let mut z = zstd::stream::read::Decoder::new(src).map_err(undecodable)?;
        let mut format = [0u8; 4];
        if !read_exact_or_end(&mut z, &mut format, &|| "the format".into())? {
            return Err(LayerError::Truncated("empty layer".into()));
        }
        match u32::from_le_bytes(format) {
            LAYER_FORMAT => {
                let header: LayerHeader =
                    bincode::deserialize(&read_item(&mut z, MAX_HEADER, &|| "the header".into())?).map_err(undecodable)?;
                if header.format != LAYER_FORMAT {
                    return Err(LayerError::Format(header.format));
                }
                let left = header.records;
                Ok(LayerReader { header, body: Body::Stream(z), left, buf: Vec::new() })
            }
            LAYER_FORMAT_2 => {
                let mut plain = format.to_vec();
                z.read_to_end(&mut plain).map_err(|e| LayerError::Truncated(e.to_string()))?;
                let mut layer: Layer = bincode::deserialize(&plain).map_err(undecodable)?;
                drop(plain);
                let header = layer.header();
                let packed: std::collections::HashMap<BlockId, (BlockId, u64, u64)> =
                    layer.packed.iter().map(|p| (p.id, (p.pack, p.offset, p.len))).collect();
                let mut entries = Vec::with_capacity(layer.records.len());
                // Moved, not copied: a format-2 layer holds up to 100,000 records.
                for r in std::mem::take(&mut layer.records) {
                    let mut e = Entry { key: r.key, value: r.value, packed: None };
                    e.packed = header.sealed_block(&e)?.and_then(|id| packed.get(&id).copied());
                    entries.push(e);
                }
                let left = header.records;
                Ok(LayerReader { header, body: Body::Whole(entries.into_iter()), left, buf: Vec::new() })
            }
            other => Err(LayerError::Format(other)),
        }
    }

    pub fn header(&self) -> &LayerHeader {
        &self.header
    }

    /// `f` of the next record, borrowed (decoded in place: no allocation); `None` after the
    /// last (the stream is checked to end there).
    pub fn next_with<T>(&mut self, f: impl FnOnce(&LayerHeader, EntryRef<'_>) -> T) -> Result<Option<T>, LayerError> {
        match &mut self.body {
            Body::Whole(it) => Ok(it.next().map(|e| f(&self.header, EntryRef::of(&e)))),
            Body::Stream(_) => {
                if !self.next_item()? {
                    return Ok(None);
                }
                let n = self.header.records - self.left - 1;
                let entry: EntryRef<'_> = bincode::deserialize(&self.buf).map_err(|e| undecodable(format!("record {n}: {e}")))?;
                Ok(Some(f(&self.header, entry)))
            }
        }
    }

    /// Read the next record's bytes into `buf` (a stream only); false after the last.
    fn next_item(&mut self) -> Result<bool, LayerError> {
        let Body::Stream(z) = &mut self.body else { unreachable!("a stream") };
        if self.left == 0 {
            let mut one = [0u8; 1];
            if read_exact_or_end(z, &mut one, &|| "the end".into())? {
                return Err(undecodable(format!("bytes after its {} records", self.header.records)));
            }
            return Ok(false);
        }
        let n = self.header.records - self.left;
        let total = self.header.records;
        read_item_into(z, MAX_ENTRY, &|| format!("record {n} of {total}"), &mut self.buf)?;
        self.left -= 1;
        Ok(true)
    }

    /// The next record; `None` after the last (the stream is checked to end there).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, LayerError> {
        match &mut self.body {
            Body::Whole(it) => Ok(it.next()),
            Body::Stream(_) => {
                if !self.next_item()? {
                    return Ok(None);
                }
                let n = self.header.records - self.left - 1;
                Ok(Some(bincode::deserialize(&self.buf).map_err(|e| undecodable(format!("record {n}: {e}")))?))
            }
        }
    }

    /// Up to `max` next records (none: the layer is done). Holds only these.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Entry>, LayerError> {
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max.max(1) {
            match self.next_entry()? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }

    /// The whole layer (for tools, tests and the merge: memory grows with the layer).
    pub fn into_layer(mut self) -> Result<Layer, LayerError> {
        let h = self.header.clone();
        let mut records = Vec::new();
        let mut packed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(e) = self.next_entry()? {
            if let Some((pack, offset, len)) = e.packed {
                if let Some(id) = h.sealed_block(&e)? {
                    if seen.insert(id) {
                        packed.push(Packed { id, pack, offset, len });
                    }
                }
            }
            records.push(Record { key: e.key, value: e.value });
        }
        Ok(Layer {
            format: h.format,
            volume: h.volume,
            branch: h.branch,
            seq: h.seq,
            base_epoch: h.base_epoch,
            epoch: h.epoch,
            block_size: h.block_size,
            parent: h.parent,
            complete: h.complete,
            records,
            packed,
            push: h.push,
            prev: h.prev,
            parent_ref: h.parent_ref,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Extent;

    fn sealed(n: u8) -> Vec<u8> {
        bincode::serialize(&Extent::Sealed { id: BlockId([n; 32]), len: 100 }).unwrap()
    }

    fn layer(records: usize) -> Layer {
        let mut l = Layer {
            format: LAYER_FORMAT,
            volume: "vol".into(),
            branch: "main".into(),
            seq: 2,
            base_epoch: 1,
            epoch: 5,
            block_size: 1 << 20,
            parent: None,
            complete: true,
            records: Vec::new(),
            packed: Vec::new(),
            push: "p".into(),
            prev: Some(LayerRef { seq: 1, key: "k1".into(), hash: "h".repeat(64) }),
            parent_ref: None,
        };
        for i in 0..records as u64 {
            l.records.push(Record { key: Key::Extent(i + 10, 0), value: Some(sealed(i as u8)) });
            l.records.push(Record { key: Key::Dentry(1, format!("f{i}").into_bytes()), value: (i % 3 != 0).then(|| vec![1, 2, 3]) });
        }
        l.packed.push(Packed { id: BlockId([1; 32]), pack: BlockId([9; 32]), offset: 4, len: 100 });
        l
    }

    fn all(mut r: LayerReader<&[u8]>) -> Result<Vec<Entry>, LayerError> {
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn format_3_round_trips_with_the_header_first_and_pack_locations_per_record() {
        let l = layer(50);
        let bytes = encode(&l).unwrap();
        let r = LayerReader::open(&bytes[..]).unwrap();
        assert_eq!(r.header().prev, l.prev);
        assert_eq!(r.header().records, 100);
        assert_eq!(r.header().format, LAYER_FORMAT);
        let back = r.into_layer().unwrap();
        assert_eq!(back.records, l.records);
        assert_eq!(back.packed, l.packed);
        let entries = all(LayerReader::open(&bytes[..]).unwrap()).unwrap();
        assert_eq!(entries[2].packed, Some((BlockId([9; 32]), 4, 100)), "block 1 is in pack 9");
        assert_eq!(entries[0].packed, None, "block 0 is stored alone");
    }

    #[test]
    fn format_2_layers_are_still_read() {
        let l = layer(20);
        let bytes = encode_format_2(&l);
        let r = LayerReader::open(&bytes[..]).unwrap();
        assert_eq!(r.header().format, LAYER_FORMAT_2);
        let back = r.into_layer().unwrap();
        assert_eq!(back.records, l.records);
        assert_eq!(back.packed, l.packed);
    }

    /// Invariant 7: a reader hands records out in chunks of the size asked, holding no more.
    #[test]
    fn invariant_7_a_reader_hands_out_bounded_chunks_and_every_record_once() {
        let l = layer(1000);
        let bytes = encode(&l).unwrap();
        let mut r = LayerReader::open(&bytes[..]).unwrap();
        let mut n = 0;
        loop {
            let chunk = r.next_chunk(64).unwrap();
            assert!(chunk.len() <= 64);
            if chunk.is_empty() {
                break;
            }
            n += chunk.len();
        }
        assert_eq!(n, 2000);
    }

    /// Invariant 5 (nothing unverified is used): a layer cut short, or with a damaged record,
    /// or of an unknown format, is a named error, never a shorter list of records.
    #[test]
    fn a_truncated_or_damaged_layer_is_an_error_never_fewer_records() {
        let l = layer(200);
        let bytes = encode(&l).unwrap();
        // Cut the compressed stream: the decompressor or the record count catches it.
        for cut in [bytes.len() - 1, bytes.len() / 2, 20] {
            let res = LayerReader::open(&bytes[..cut]).and_then(all);
            assert!(res.is_err(), "cut at {cut} of {}: {:?}", bytes.len(), res.map(|e| e.len()));
        }
        // A plain stream that ends one record early (valid compression, wrong count).
        let mut short = l.clone();
        short.records.pop();
        let mut plain = zstd::decode_all(&encode(&short).unwrap()[..]).unwrap();
        let mut h = short.header();
        h.records += 1;
        h.format = LAYER_FORMAT;
        let hb = bincode::serialize(&h).unwrap();
        let old_len = u32::from_le_bytes(plain[4..8].try_into().unwrap()) as usize;
        plain.splice(4..8 + old_len, [(hb.len() as u32).to_le_bytes().to_vec(), hb].concat());
        let bytes = zstd::encode_all(&plain[..], 3).unwrap();
        let err = LayerReader::open(&bytes[..]).and_then(all).unwrap_err();
        assert!(matches!(err, LayerError::Truncated(_)), "{err}");
        // A record whose value is not an extent: a named error when its block is asked for.
        let mut bad = layer(1);
        bad.records[0].value = Some(vec![7, 7, 7]);
        let bytes = encode(&bad).unwrap();
        let mut r = LayerReader::open(&bytes[..]).unwrap();
        let e = r.next_entry().unwrap().unwrap();
        let err = r.header().sealed_block(&e).unwrap_err().to_string();
        assert!(err.contains("Extent(10, 0)") && err.contains("layer 2 of branch main"), "{err}");
        // Unknown format.
        let bytes = zstd::encode_all(&9u32.to_le_bytes()[..], 3).unwrap();
        assert!(matches!(LayerReader::open(&bytes[..]), Err(LayerError::Format(9))));
    }
}
