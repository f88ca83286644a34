//! Snapshots: create, delete, hold, rollback, the collector, and read-only views at an epoch.
//!
//! A snapshot is an epoch number in the catalogue (see [`crate::meta`]): taking one seals the
//! staged data (so a snapshot only ever names immutable blocks), then ends the epoch in one
//! synced batch. Its cost is the data written since the last seal, never the size of the volume
//! (invariant 3). Nothing written later can change what it shows (invariant 2): writes land in
//! newer epochs and older versions move to history.
//!
//! # Crash points
//!
//! * create: sealing is the sealer's usual crash-safe order; the snapshot exists exactly when
//!   the batch "catalogue entry + next epoch" is in the log.
//! * delete: "remove from the catalogue + queue its epochs for collection" is one batch; the
//!   collector's passes are idempotent and resume from the queue.
//! * rollback: the `pre-rollback-*` snapshot first (as create), then every record changed since
//!   the target is set back to its version at the target in one batch.
//! * gc: a block file is deleted only after its free-list entry is older than the grace period
//!   and its count is still zero (checked under the reference lock); the entry goes after the
//!   file, so a crash between leaves an entry whose file is already gone, which the next pass
//!   clears.

use super::namespace::ReaddirEntry;
use super::Volume;
use crate::error::{FsError, Result};
use crate::extent::spans;
use crate::meta::{Mutation, LIVE};
use crate::progress::{Meter, OnProgress};
use crate::types::{Extent, Ino, Kind, SnapshotInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// Longest snapshot name.
pub const SNAPSHOT_NAME_MAX: usize = 128;

/// Snapshot names: letters, digits, `.`, `_`, `-` and `:`; not starting with `.` or `-`.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(FsError::BadInput(format!("invalid snapshot name {name:?}: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > SNAPSHOT_NAME_MAX {
        return bad(&format!("longer than {SNAPSHOT_NAME_MAX} bytes"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it must not start with '.' or '-'");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        return bad(&format!("{c:?} is not allowed (use letters, digits, '.', '_', '-', ':')"));
    }
    Ok(())
}

fn unknown(name: &str) -> FsError {
    FsError::BadInput(format!("no snapshot named {name:?}"))
}

/// What one collector pass did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    /// Epoch ranges of deleted snapshots gone through.
    pub ranges: usize,
    pub records_examined: u64,
    pub versions_removed: u64,
    pub blocks_freed: u64,
    pub bytes_freed: u64,
    /// Blocks whose count is zero but whose grace period has not passed yet.
    pub blocks_waiting: u64,
    /// A shared volume: another host's pass held the collector's lease, so this one did
    /// nothing.
    #[serde(default)]
    pub skipped: bool,
}

/// The name of the collector's lease on a shared volume (`meta/hosts.rs`).
pub const GC_LEASE: &str = "gc";
/// How long one host's collector pass holds the lease at most: a pass that takes longer may
/// overlap another host's (each step is still one transaction: the overlap does work twice,
/// it never loses or double-frees anything).
pub const GC_LEASE_TIME: Duration = Duration::from_secs(600);

/// What a rollback did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollbackReport {
    pub target: SnapshotInfo,
    /// The snapshot of the state before the rollback.
    pub saved_as: SnapshotInfo,
    pub records_restored: u64,
}

impl Volume {
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.meta.snapshots()
    }

    pub fn snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        self.meta.snapshot(name)?.ok_or_else(|| unknown(name))
    }

    /// Take snapshot `name` of the live tree.
    pub fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        check_snapshot_name(name)?;
        let _gate = self.gate.write();
        let _catalog = self.catalog.lock();
        // On a shared volume another host may end the epoch first: then again, from the new one.
        self.retrying(|| self.snapshot_locked(name))
    }

    /// Caller holds the gate (no file data is being written) and the catalogue lock.
    fn snapshot_locked(&self, name: &str) -> Result<SnapshotInfo> {
        // The epoch first, then the name: a snapshot another host takes meanwhile ends the
        // epoch in the transaction that writes its name, so either this name check sees it or
        // the batch's `ExpectEpoch` does (the name alone is checked outside the transaction;
        // two hosts taking one name at once both got it when the epoch was read after it).
        let epoch = self.meta.current_epoch()?;
        if self.meta.snapshot(name)?.is_some() {
            return Err(FsError::BadInput(format!("a snapshot named {name:?} already exists")));
        }
        let open: Vec<_> = self.nodes.lock().values().map(|e| e.node.clone()).collect();
        for node in open {
            let mut st = node.write();
            self.persist_attrs(&mut st, false)?;
        }
        self.seal_everything()?;
        let usage = self.meta.usage()?;
        let info = SnapshotInfo {
            id: self.meta.next_snapshot_id()?,
            name: name.to_string(),
            epoch,
            created: crate::types::Timespec::now().sec,
            files: usage.files,
            bytes: usage.bytes,
            holds: Vec::new(),
        };
        crate::crashpoint("snapshot-after-seal");
        let batch = vec![Mutation::ExpectEpoch(epoch), Mutation::PutSnapshot(info.clone()), Mutation::SetEpoch(epoch + 1)];
        self.meta.apply(batch, true)?;
        self.catalogue_changed();
        crate::crashpoint("snapshot-after-commit");
        tracing::info!("snapshot {name} taken at epoch {epoch}");
        Ok(info)
    }

    /// Delete snapshot `name`; its space is reclaimed by the collector. Refused while held.
    pub fn snapshot_delete(&self, name: &str) -> Result<SnapshotInfo> {
        let _catalog = self.catalog.lock();
        let snap = self.snapshot(name)?;
        if !snap.holds.is_empty() {
            return Err(FsError::Refused(format!(
                "snapshot {name:?} is held by {}; release it first",
                snap.holds.join(", ")
            )));
        }
        let prev = self.meta.snapshots()?.iter().map(|s| s.epoch).filter(|e| *e < snap.epoch).max().unwrap_or(0);
        self.meta.apply(
            vec![Mutation::DelSnapshot(name.to_string()), Mutation::PutGcRange { from: prev, to: snap.epoch }],
            true,
        )?;
        self.catalogue_changed();
        crate::crashpoint("delete-after-commit");
        tracing::info!("snapshot {name} (epoch {}) deleted", snap.epoch);
        Ok(snap)
    }

    /// Record that `holder` (a clone, a branch, an admin) depends on snapshot `name`.
    pub fn snapshot_hold(&self, name: &str, holder: &str, on: bool) -> Result<SnapshotInfo> {
        if holder.is_empty() || holder.contains(',') {
            return Err(FsError::BadInput(format!("invalid holder name {holder:?}")));
        }
        let _catalog = self.catalog.lock();
        let mut snap = self.snapshot(name)?;
        let had = snap.holds.iter().any(|h| h == holder);
        match (on, had) {
            (true, false) => snap.holds.push(holder.to_string()),
            (false, true) => snap.holds.retain(|h| h != holder),
            (true, true) => return Ok(snap),
            (false, false) => {
                return Err(FsError::BadInput(format!("snapshot {name:?} is not held by {holder:?}")))
            }
        }
        self.meta.apply(vec![Mutation::PutSnapshot(snap.clone())], true)?;
        self.catalogue_changed();
        Ok(snap)
    }

    /// Return the live tree to snapshot `name`, after saving the current state as a
    /// `pre-rollback-*` snapshot. Refused while files are open (their handles would point
    /// into a tree that no longer exists).
    pub fn rollback(&self, name: &str) -> Result<RollbackReport> {
        self.rollback_with(name, &crate::progress::ignore)
    }

    /// [`Volume::rollback`], reporting to `progress` (op `rollback`, in records): the records
    /// changed since the snapshot as each is read at the snapshot; the last (all restored)
    /// once the restore, one transaction, is in.
    pub fn rollback_with(&self, name: &str, progress: OnProgress) -> Result<RollbackReport> {
        let _gate = self.gate.write();
        let _catalog = self.catalog.lock();
        let target = self.snapshot(name)?;
        let open = self.nodes.lock().values().filter(|e| e.handles > 0).count();
        if open > 0 {
            return Err(FsError::Refused(format!("{open} files are open on the volume; close them first")));
        }
        let stamp = chrono_stamp();
        let mut saved_name = format!("pre-rollback-{stamp}");
        for n in 2.. {
            if self.meta.snapshot(&saved_name)?.is_none() {
                break;
            }
            saved_name = format!("pre-rollback-{stamp}-{n}");
        }
        let saved_as = self.snapshot_locked(&saved_name)?;
        crate::crashpoint("rollback-after-saved");
        let _ns = self.ns_all();
        let mut keys = BTreeSet::new();
        self.meta.changes(target.epoch, LIVE, &mut |c| {
            keys.insert(c.key);
            Ok(true)
        })?;
        let mut orphans = Vec::new();
        let mut meter = Meter::new("rollback", "records", keys.len() as u64, 0, progress);
        for (i, k) in keys.iter().enumerate() {
            if let crate::meta::Key::Inode(ino) = k {
                if self.meta.get_inode_at(*ino, target.epoch)?.is_some_and(|i| i.nlink == 0) {
                    orphans.push(*ino);
                }
            }
            // The last one counts when the restore is in.
            if i + 1 < keys.len() {
                meter.add(1, 0);
            }
        }
        let records = keys.len() as u64;
        let mut batch: Vec<Mutation> = keys.into_iter().map(|key| Mutation::Restore { key, at: target.epoch }).collect();
        batch.extend(orphans.iter().map(|ino| Mutation::PutOrphan(*ino)));
        {
            let _refs = self.refs.lock();
            self.meta.apply(batch, true)?;
        }
        self.recent.clear();
        // Files still open may have had a `security.capability` restored: what their nodes
        // know of it no longer holds (`NodeData::no_caps_at`).
        self.caps_set.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        crate::crashpoint("rollback-after-restore");
        meter.finish();
        self.nodes.lock().retain(|_, e| e.handles > 0);
        drop(_ns);
        for ino in orphans {
            self.purge_if_unused(ino)?;
        }
        self.next_ino.fetch_max(super::next_ino(&self.meta)?, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("rolled back to snapshot {name}; previous state saved as {saved_name}");
        Ok(RollbackReport { target, saved_as, records_restored: records })
    }

    /// One collector pass: drop versions no snapshot needs (for deleted snapshots), then
    /// delete block files unreferenced for at least `grace`.
    pub fn collect(&self, grace: Duration) -> Result<GcReport> {
        self.collect_with(grace, &crate::progress::ignore)
    }

    /// [`Volume::collect`], reporting to `progress` (op `gc`): the epoch ranges of deleted
    /// snapshots gone through (unit `ranges`, when there are any), then the unreferenced
    /// blocks examined (deleted when their grace has passed) and the bytes freed.
    ///
    /// On a shared volume one host runs a pass at a time: a pass takes the collector's lease
    /// ([`GC_LEASE`], for at most [`GC_LEASE_TIME`]) or, another host holding it, does
    /// nothing ([`GcReport::skipped`]).
    pub fn collect_with(&self, grace: Duration, progress: OnProgress) -> Result<GcReport> {
        let _one = self.collector.lock();
        if !self.shared {
            return self.collect_pass(grace, progress);
        }
        let until = crate::meta::now_ms() + GC_LEASE_TIME.as_millis() as u64;
        if !self.meta.take_lease(GC_LEASE, self.host, until)? {
            tracing::info!("another host's collector pass is running; this one skips");
            return Ok(GcReport { skipped: true, ..GcReport::default() });
        }
        let pass = self.collect_pass(grace, progress);
        if let Err(e) = self.meta.end_lease(GC_LEASE, self.host) {
            tracing::warn!("give the collector's lease back (it ends by itself within {GC_LEASE_TIME:?}): {e}");
        }
        pass
    }

    fn collect_pass(&self, grace: Duration, progress: OnProgress) -> Result<GcReport> {
        let mut report = GcReport::default();
        let pinned: Vec<u64> = self.meta.snapshots()?.iter().map(|s| s.epoch).collect();
        let ranges = self.meta.gc_ranges()?;
        let mut meter = (!ranges.is_empty()).then(|| Meter::new("gc", "ranges", ranges.len() as u64, 0, progress));
        for (from, to) in ranges {
            let stats = self.meta.collect_range(from, to, &pinned, false)?;
            crate::crashpoint("gc-after-versions");
            self.meta.apply(vec![Mutation::DelGcRange { from, to }], true)?;
            report.ranges += 1;
            report.records_examined += stats.keys;
            report.versions_removed += stats.versions_removed;
            if let Some(m) = &mut meter {
                m.add(1, 0);
            }
        }
        let now = crate::types::Timespec::now().sec.max(0) as u64;
        let mut done = Vec::new();
        {
            let _refs = self.refs.lock();
            let free = self.meta.free_blocks()?;
            let mut meter = Meter::new("gc", "", free.len() as u64, 0, progress);
            for (id, since) in free {
                if now.saturating_sub(since) < grace.as_secs() {
                    report.blocks_waiting += 1;
                    meter.add(1, 0);
                    continue;
                }
                let freed = report.bytes_freed;
                if self.meta.block_refs(&id)? == 0 {
                    self.cache.remove(&id);
                    // None: a pass that crashed after deleting the file; only the entry is left.
                    if let Some(bytes) = self.blocks.stored_len(&id)? {
                        self.blocks.remove(&id)?;
                        crate::crashpoint("gc-after-block-delete");
                        report.blocks_freed += 1;
                        report.bytes_freed += bytes;
                    }
                }
                done.push(Mutation::DelFree(id));
                meter.add(1, report.bytes_freed - freed);
            }
            if !done.is_empty() {
                self.meta.apply(done, true)?;
            }
            meter.finish();
        }
        Ok(report)
    }

    /// Bytes that deleting a snapshot would free: versions only it keeps, whose blocks
    /// nothing else references. Such a version was replaced after the snapshot and before the
    /// next one (else the next one would keep it), so only the journal rows of the epochs
    /// between this snapshot and the next (or the live tree) are read: the changes made
    /// after it, not the volume.
    pub fn snapshot_unique_bytes(&self, name: &str) -> Result<u64> {
        let snaps = self.meta.snapshots()?;
        let snap = snaps.iter().find(|s| s.name == name).ok_or_else(|| unknown(name))?;
        let next = snaps.iter().map(|s| s.epoch).filter(|e| *e > snap.epoch).min().unwrap_or(LIVE);
        let others: Vec<u64> = snaps.iter().filter(|s| s.name != name).map(|s| s.epoch).collect();
        let stats = self.meta.collect_range(snap.epoch, next, &others, true)?;
        Ok(stats.unreferenced.iter().map(|(_, len)| len).sum())
    }

    // ---- read-only views at an epoch -------------------------------------------------------

    pub fn getattr_at(&self, ino: Ino, at: u64) -> Result<crate::types::Inode> {
        self.meta.get_inode_at(ino, at)?.ok_or(FsError::NotFound)
    }

    pub fn lookup_at(&self, parent: Ino, name: &[u8], at: u64) -> Result<crate::types::Inode> {
        if name.len() > crate::types::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let d = self.meta.lookup_at(parent, name, at)?.ok_or(FsError::NotFound)?;
        self.getattr_at(d.ino, at)
    }

    pub fn readdir_at(&self, ino: Ino, offset: u64, limit: usize, at: u64) -> Result<Vec<ReaddirEntry>> {
        let dir = self.getattr_at(ino, at)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        if offset < 1 {
            out.push(ReaddirEntry { offset: 1, ino, kind: Kind::Dir, name: b".".to_vec() });
        }
        if offset < 2 {
            let parent = if dir.parent == 0 { ino } else { dir.parent };
            out.push(ReaddirEntry { offset: 2, ino: parent, kind: Kind::Dir, name: b"..".to_vec() });
        }
        for e in self.meta.readdir_at(ino, offset.saturating_sub(2), limit, at)? {
            out.push(ReaddirEntry { offset: e.cookie + 2, ino: e.dentry.ino, kind: e.dentry.kind, name: e.name });
        }
        Ok(out)
    }

    /// Read file bytes as they were at epoch `at`. Snapshot data is always sealed, so every
    /// byte is verified against its block's hash (invariant 5).
    pub fn read_at(&self, ino: Ino, offset: u64, size: u32, at: u64) -> Result<Vec<u8>> {
        let inode = self.getattr_at(ino, at)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if offset >= inode.size {
            return Ok(Vec::new());
        }
        let n = (size as u64).min(inode.size - offset);
        let mut buf = vec![0u8; n as usize];
        if let Some(inline) = &inode.inline {
            let from = (offset as usize).min(inline.len());
            let to = (offset + n).min(inline.len() as u64) as usize;
            buf[..to - from].copy_from_slice(&inline[from..to]);
            return Ok(buf);
        }
        for s in spans(offset, n, self.block_size) {
            let out = &mut buf[s.pos as usize..(s.pos + s.len) as usize];
            match self.meta.get_extent_at(ino, s.block, at)? {
                None => {}
                Some(Extent::Staged) => {
                    return Err(FsError::Meta(format!("inode {ino} block {} is staged at epoch {at}", s.block)))
                }
                Some(Extent::Sealed { id, len }) => {
                    let block = self.sealed(&id, len)?;
                    let avail = block.len().saturating_sub(s.start as usize).min(out.len());
                    out[..avail].copy_from_slice(&block[s.start as usize..s.start as usize + avail]);
                }
            }
        }
        Ok(buf)
    }

    pub fn getxattr_at(&self, ino: Ino, name: &[u8], at: u64) -> Result<Vec<u8>> {
        self.getattr_at(ino, at)?;
        self.meta.get_xattr_at(ino, name, at)?.ok_or(FsError::NoXattr)
    }

    pub fn listxattr_at(&self, ino: Ino, at: u64) -> Result<Vec<u8>> {
        self.getattr_at(ino, at)?;
        let mut out = Vec::new();
        for name in self.meta.xattr_names_at(ino, at)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }
}

/// UTC time as `YYYYMMDDTHHMMSSZ`, for generated snapshot names.
pub fn chrono_stamp() -> String {
    let (y, m, d, hh, mm, ss) = crate::types::utc(crate::types::Timespec::now().sec);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["daily-2026-11-22", "a", "v1.2_rc:3"] {
            check_snapshot_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "with space", "é", &"x".repeat(129)] {
            assert!(matches!(check_snapshot_name(bad), Err(FsError::BadInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn stamp_is_a_utc_time() {
        let s = chrono_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}
