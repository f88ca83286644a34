//! The history of a branch in the store: a chain of layers, each named by the hash of its body.
//!
//! # Layer names and the chain (invariant 4)
//!
//! ```text
//! VOLUME/branches/B/layers/<seq:012>-<32 hex>   the 32 hex: blake3 of the object's stored bytes
//! VOLUME/branches/B/head                        {seq, layer: KEY, hash: 64 hex, push, epoch, ...}
//! ```
//!
//! Every push writes its layers under keys no other attempt uses: two nodes racing for the same
//! sequence number write different bodies (each layer names the id of the push that wrote it),
//! hence different keys, and only the one whose conditional head PUT succeeds is named by the
//! head. A refused writer has written nothing a reader can reach.
//!
//! The head names the exact key and the full hash of its newest layer; each layer names the
//! key and hash of the layer before it on its branch (`prev`) and, for the first layer of a
//! fork, the exact layer of the parent branch it starts from (`parent_ref`). Readers walk the
//! chain back from the head and check every body against the hash that named it before they
//! use it; a layer replaced, truncated or swapped is an error naming it, never silently read.
//!
//! A walk reads each layer's header only ([`hybridfs_core::layer`]: format 3 keeps it ahead
//! of the records): it downloads and verifies the body, decompresses the few bytes of the
//! header and drops the body. Whoever applies a layer then reads it again ([`Remote::stream`],
//! verified again) and takes its records a chunk at a time: memory stays bounded by one
//! compressed body and one chunk whatever the length of the chain (invariant 7).

use crate::{Layer, Remote, Result, SyncError};
use hybridfs_core::layer::{Entry, EntryRef, LayerError, LayerHeader, LayerReader};
pub use hybridfs_core::layer::LayerRef;

/// Forks followed before a chain is called corrupt.
const MAX_FORKS: usize = 64;

/// One layer of a chain, oldest first, with its header.
#[derive(Clone, Debug)]
pub struct ChainLink {
    pub branch: String,
    pub r: LayerRef,
    pub header: LayerHeader,
    /// The size of the layer's stored object (what reading it again downloads).
    pub bytes: u64,
}

/// The records of one verified layer, a chunk at a time ([`Remote::stream`]).
pub struct LayerStream {
    reader: LayerReader<std::io::Cursor<Vec<u8>>>,
    name: String,
    /// The size of the stored object it was read from.
    pub stored_bytes: u64,
}

impl LayerStream {
    pub fn header(&self) -> &LayerHeader {
        self.reader.header()
    }

    /// Up to `max` next records; none: the layer is done (its record count checked). An
    /// error names the layer.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Entry>> {
        self.reader.next_chunk(max).map_err(|e| self.bad(e))
    }

    /// `f` of the next record, borrowed (decoded in place); none: the layer is done (its
    /// record count checked). An error names the layer.
    pub fn next_with<T>(&mut self, f: impl FnOnce(&LayerHeader, EntryRef<'_>) -> T) -> Result<Option<T>> {
        self.reader.next_with(f).map_err(|e| self.bad(e))
    }

    /// An error about record `e` of this layer (a record that does not decode names itself).
    pub fn bad(&self, e: LayerError) -> SyncError {
        match e {
            LayerError::Record { .. } => SyncError::Corrupt(e.to_string()),
            e => SyncError::Corrupt(format!("{}: {e}", self.name)),
        }
    }
}

impl crate::Head {
    /// The layer this head names.
    pub fn layer_ref(&self) -> LayerRef {
        LayerRef { seq: self.seq, key: self.layer.clone(), hash: self.hash.clone() }
    }
}

impl Remote {
    /// What a layer's encryption is bound to: its branch and sequence number (the key itself
    /// depends on the sealed bytes).
    pub(crate) fn layer_aad(&self, branch: &str, seq: u64) -> String {
        format!("{}/branches/{branch}/layers/{seq:012}", self.volume)
    }

    /// The key and reference of layer `seq` of `branch` whose stored bytes are `body`.
    pub fn layer_ref_for(&self, branch: &str, seq: u64, body: &[u8]) -> LayerRef {
        let hash = blake3::hash(body).to_hex().to_string();
        let key = format!("{}/branches/{branch}/layers/{seq:012}-{}", self.volume, &hash[..32]);
        LayerRef { seq, key, hash }
    }

    /// The stored bytes of the layer `r` names, checked against its hash.
    fn layer_body(&self, branch: &str, r: &LayerRef) -> Result<Vec<u8>> {
        if r.hash.len() != 64 {
            return Err(SyncError::Corrupt(format!(
                "layer {} of branch {branch} is named without a hash ({}): written by an older hybridfs; push the branch again from a current one",
                r.seq, r.key
            )));
        }
        let (body, _) = self.store.get(&r.key)?;
        let got = blake3::hash(&body).to_hex();
        if got.as_str() != r.hash {
            return Err(SyncError::Corrupt(format!(
                "layer {} of branch {branch} ({}) does not match the hash that names it (blake3 {}, expected {})",
                r.seq, r.key, got, r.hash
            )));
        }
        Ok(body)
    }

    /// The verified layer `r` of `branch` of which `body` are the stored bytes, opened:
    /// format and header read, records not yet.
    fn open_layer(&self, branch: &str, r: &LayerRef, body: Vec<u8>) -> Result<LayerStream> {
        let name = format!("layer {} of branch {branch} ({})", r.seq, r.key);
        let stored_bytes = body.len() as u64;
        let bytes = self.open_meta(&self.layer_aad(branch, r.seq), body)?;
        let reader = LayerReader::open(std::io::Cursor::new(bytes)).map_err(|e| SyncError::Corrupt(format!("{name}: {e}")))?;
        let h = reader.header();
        if h.seq != r.seq || h.branch != branch || h.volume != self.volume {
            return Err(SyncError::Corrupt(format!("{name}: it says it is layer {} of {}/{}", h.seq, h.volume, h.branch)));
        }
        Ok(LayerStream { reader, name, stored_bytes })
    }

    /// The records of the layer `r` names, read again and verified, a chunk at a time.
    pub fn stream(&self, branch: &str, r: &LayerRef) -> Result<LayerStream> {
        let body = self.layer_body(branch, r)?;
        self.open_layer(branch, r, body)
    }

    /// The records of a chain link (read again and verified).
    pub fn stream_link(&self, link: &ChainLink) -> Result<LayerStream> {
        self.stream(&link.branch, &link.r)
    }

    /// The header of the layer `r` names, verified.
    pub fn read_header(&self, branch: &str, r: &LayerRef) -> Result<LayerHeader> {
        Ok(self.stream(branch, r)?.header().clone())
    }

    /// The layer `r` names, verified, whole (memory grows with the layer: tools, tests, the
    /// merge; clone and pull use [`Remote::stream`]).
    pub fn read_layer(&self, branch: &str, r: &LayerRef) -> Result<Layer> {
        let s = self.stream(branch, r)?;
        let name = s.name.clone();
        s.reader.into_layer().map_err(|e| match e {
            LayerError::Record { .. } => SyncError::Corrupt(e.to_string()),
            e => SyncError::Corrupt(format!("{name}: {e}")),
        })
    }

    /// The layer of a chain link (read again and verified), whole.
    pub fn open_link(&self, link: &ChainLink) -> Result<Layer> {
        self.read_layer(&link.branch, &link.r)
    }

    /// The layers of `branch` from `top` back to sequence number `down_to` (inclusive), oldest
    /// first; reaching layer 1 of a fork, with `follow_parent`, the parent's chain up to the
    /// fork point comes first.
    pub fn chain(&self, branch: &str, top: LayerRef, down_to: u64, follow_parent: bool) -> Result<Vec<ChainLink>> {
        self.walk(branch, top, down_to, follow_parent, 0)
    }

    fn walk(&self, branch: &str, top: LayerRef, down_to: u64, follow_parent: bool, depth: usize) -> Result<Vec<ChainLink>> {
        if depth > MAX_FORKS {
            return Err(SyncError::Corrupt(format!("branch {branch}: more than {MAX_FORKS} nested forks")));
        }
        let mut links = Vec::new();
        let mut parent = None;
        let mut next = Some(top);
        // Each step goes one sequence number down: the walk ends.
        while let Some(r) = next.take().filter(|r| r.seq >= down_to.max(1)) {
            let layer = self.stream(branch, &r)?;
            let (header, bytes) = (layer.header().clone(), layer.stored_bytes);
            drop(layer);
            match (&header.prev, r.seq) {
                (None, 1) => match (&header.parent, &header.parent_ref) {
                    (Some(p), Some(pr)) => parent = Some((pr.clone(), p.clone())),
                    (None, None) => {}
                    _ => return Err(SyncError::Corrupt(format!("layer 1 of branch {branch} ({}) names its fork point only in part", r.key))),
                },
                (Some(p), s) if p.seq + 1 == s => next = Some(p.clone()),
                (p, s) => {
                    return Err(SyncError::Corrupt(format!("layer {s} of branch {branch} ({}) names {p:?} as the layer before it", r.key)))
                }
            }
            links.push(ChainLink { branch: branch.to_string(), r, header, bytes });
        }
        links.reverse();
        match parent {
            Some((pr, (pb, ps))) if follow_parent => {
                if pr.seq != ps {
                    return Err(SyncError::Corrupt(format!("layer 1 of branch {branch} names layer {ps} of {pb} and a reference to layer {}", pr.seq)));
                }
                let mut all = self.walk(&pb, pr, 1, true, depth + 1)?;
                all.extend(links);
                Ok(all)
            }
            _ => Ok(links),
        }
    }

    /// The reference of layer `seq` of `branch`, found by walking back from its head.
    pub fn layer_ref(&self, branch: &str, seq: u64) -> Result<LayerRef> {
        let (head, _) = self
            .head(branch)?
            .ok_or_else(|| SyncError::Corrupt(format!("volume {} has no branch {branch} in {}", self.volume, self.store.describe())))?;
        if seq == 0 || seq > head.seq {
            return Err(SyncError::Conflict(format!("branch {branch} has layers 1 to {}, not {seq}", head.seq)));
        }
        let mut r = head.layer_ref();
        while r.seq > seq {
            r = self.read_header(branch, &r)?.prev.ok_or_else(|| SyncError::Corrupt(format!("layer {} of branch {branch} names no layer before it", r.seq)))?;
        }
        Ok(r)
    }

    /// Layer `seq` of `branch` (walks back from the head: for tools and tests).
    pub fn layer(&self, branch: &str, seq: u64) -> Result<Layer> {
        let r = self.layer_ref(branch, seq)?;
        self.read_layer(branch, &r)
    }
}
