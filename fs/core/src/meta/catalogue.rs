//! Counters, catalogues (snapshots, collector ranges, orphans, pushed blocks, named layer
//! state) and the whole-store scans fsck and status use.

use super::codec::{be, dec, tag};
use super::{Key, MetaStore};
use crate::error::{FsError, Result};
use crate::kv::Cf;
use crate::types::{BlockId, Dentry, Extent, Inode, Ino, SnapshotInfo, Usage};

/// The named state of the shared inode counter ([`MetaStore::allocate_inos`]).
pub const INO_NEXT: &str = "ino_next";

impl MetaStore {
    /// Whether `ino` has an orphan row (unlinked while something held it).
    pub fn is_orphan(&self, ino: Ino) -> Result<bool> {
        Ok(self.kv.get(Cf::Orphans, &ino.to_be_bytes())?.is_some())
    }

    pub fn orphans(&self) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        self.kv.scan(Cf::Orphans, &[], None, &mut |k, _| {
            out.push(be(k, 0)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Snapshots in epoch order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out: Vec<SnapshotInfo> = Vec::new();
        self.kv.scan(Cf::Snapshots, &[], None, &mut |_, v| {
            out.push(dec("snapshot", v)?);
            Ok(true)
        })?;
        out.sort_by_key(|s| s.epoch);
        Ok(out)
    }

    pub fn snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        self.kv.get(Cf::Snapshots, name.as_bytes())?.map(|v| dec("snapshot", &v)).transpose()
    }

    pub fn next_snapshot_id(&self) -> Result<u64> {
        super::apply::next_snapshot_id(self.reader())
    }

    /// Ranges of epochs `(from, to]` the collector still has to go through.
    pub fn gc_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        self.kv.scan(Cf::Gc, &[], None, &mut |k, _| {
            out.push((be(k, 0)?, be(k, 8)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The payload of record `key` at epoch `at` as stored (bincode of its type; xattrs: the
    /// value), for layers that carry records without interpreting them.
    pub fn raw_at(&self, key: &Key, at: u64) -> Result<Option<Vec<u8>>> {
        let (cf, base) = key.cf_base();
        self.get_at(cf, &base, at)
    }

    /// Take `n` inode numbers for this process from the volume's shared counter (the named
    /// state `ino_next`), read and moved on inside one transaction, so hosts sharing the
    /// store never get the same number: returns the first of `[first, first + n)`, all
    /// below `hi` (else [`FsError::NoSpace`]). A volume without the counter starts it above
    /// the highest number used below `hi`, and at least at `lo`.
    pub fn allocate_inos(&self, lo: Ino, hi: Ino, n: u64) -> Result<Ino> {
        let key = [&b"m:"[..], INO_NEXT.as_bytes()].concat();
        let mut first = 0;
        self.kv.transact(false, &mut |tx| {
            first = match tx.get(Cf::Default, &key)? {
                Some(v) if v.len() == 8 => u64::from_le_bytes(v[..].try_into().expect("8 bytes")),
                _ => (super::read::max_ino_below(tx, hi)? + 1).max(lo),
            };
            if first.saturating_add(n) > hi {
                return Err(FsError::NoSpace);
            }
            tx.put(Cf::Default, key.clone(), (first + n).to_le_bytes().to_vec());
            Ok(())
        })?;
        Ok(first)
    }

    /// Named state set with [`Mutation::SetMeta`].
    pub fn meta_value(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.kv.get(Cf::Default, &[&b"m:"[..], name.as_bytes()].concat())
    }

    /// Whether block `id` is in the object store: `Some(None)` alone, `Some(Some(pack,
    /// offset, len))` inside a pack.
    pub fn pushed(&self, id: &BlockId) -> Result<Option<Option<(BlockId, u64, u64)>>> {
        self.kv.get(Cf::Pushed, &id.0)?.map(|v| dec("pushed block", &v)).transpose()
    }

    /// The `usage` row (bulk loads, older volumes) plus every shard's delta.
    pub fn usage(&self) -> Result<Usage> {
        let (mut files, mut bytes) = (0i64, 0i64);
        self.kv.scan(Cf::Default, b"usage", Some(b"usage0"), &mut |k, v| {
            let (f, b) = if k == b"usage" {
                let u: Usage = dec("usage", v)?;
                (u.files as i64, u.bytes as i64)
            } else {
                super::apply::usage_delta(v)?
            };
            files += f;
            bytes += b;
            Ok(true)
        })?;
        Ok(Usage { files: files.max(0) as u64, bytes: bytes.max(0) as u64 })
    }

    // ---- whole-store scans (fsck, status) --------------------------------------------------

    pub fn for_each_inode(&self, f: &mut dyn FnMut(Inode)) -> Result<()> {
        self.kv.scan(Cf::Inodes, &[], None, &mut |_, v| {
            f(dec("inode", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    pub fn for_each_dentry(&self, f: &mut dyn FnMut(Ino, &[u8], Dentry)) -> Result<()> {
        self.kv.scan(Cf::Dentries, &[], None, &mut |k, v| {
            f(be(k, 0)?, &k[8..], dec("directory entry", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    /// Every live extent.
    pub fn for_each_extent(&self, f: &mut dyn FnMut(Ino, u64, Extent)) -> Result<()> {
        self.kv.scan(Cf::Extents, &[], None, &mut |k, v| {
            f(be(k, 0)?, be(k, 8)?, dec("extent", v.get(8..).unwrap_or_default())?);
            Ok(true)
        })
    }

    /// Every extent version kept for snapshots: `(ino, block, epoch, extent)`.
    pub fn for_each_history_extent(&self, f: &mut dyn FnMut(Ino, u64, u64, Extent)) -> Result<()> {
        let t = tag(Cf::Extents);
        self.kv.scan(Cf::History, &[t], Some(&[t + 1]), &mut |k, v| {
            if v.first() == Some(&1) {
                f(be(k, 1)?, be(k, 9)?, !be(k, 18)?, dec("extent", &v[1..])?);
            }
            Ok(true)
        })
    }
}
