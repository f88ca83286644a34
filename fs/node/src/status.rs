//! Read-only views of volumes: status (sizes, unpushed and unsealed bytes, mount state),
//! fsck (local and of the branch in the store), the dirty-extent journal, the merge log.
//! They open the metadata read-only, so they work while the volume is mounted.

use crate::home::VolumeDir;
use crate::error::{typed, NodeResult};
use hybridfs_core::fsck::{self, FsckReport};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::metrics::MetricsSnapshot;
use hybridfs_core::progress::OnProgress;
use hybridfs_core::staging::Staging;
use hybridfs_core::types::{Extent, JournalEntry, Kind};
use hybridfs_sync::RemoteCheck;
use hybridfs_sync::merge::{MergeRecord, MergeSummary};
use crate::workers::WorkerStatus;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// At most this many paths in [`VolumeStatus::unpushed_paths`].
pub const UNPUSHED_PATHS_LISTED: usize = 100;

#[derive(Serialize, Debug)]
pub struct VolumeStatus {
    pub name: String,
    pub block_size: u32,
    pub store: String,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    /// Bytes of live files in blocks written since the last push to the volume's branch (all
    /// of them before the first push): what a node must push before it may go. Zero right
    /// after a push, until the next write.
    pub unpushed_bytes: u64,
    /// The files holding those bytes, most unpushed bytes first, at most
    /// [`UNPUSHED_PATHS_LISTED`] of them (what a node that must go without a push loses).
    pub unpushed_paths: Vec<String>,
    /// How many files hold unpushed bytes (`unpushed_paths` may list fewer).
    pub unpushed_files: u64,
    /// Bytes of live files in blocks still in staging files (not yet sealed into blocks).
    pub unsealed_bytes: u64,
    /// Same as `unpushed_bytes` (the name of earlier versions).
    pub dirty_bytes: u64,
    /// Same as `unsealed_bytes` (the name of earlier versions).
    pub staged_bytes: u64,
    pub epoch: u64,
    pub mounted: bool,
    pub mountpoint: Option<String>,
    pub pid: Option<u32>,
    /// Snapshots kept.
    pub snapshots: usize,
    /// Counters of the current (or last) mount, from `metrics.json`.
    pub metrics: Option<MetricsSnapshot>,
    /// The mount process's background workers (mounted volumes whose mount answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<WorkerStatus>>,
}

/// The unpushed bytes of each file: the blocks the journal holds since the last push to
/// `branch`, counted at the file's size now (`size_of`: None for a file that is gone; the last
/// block may be short). Reads only the journal since that push and the sizes of the files it
/// names, so the cost follows the changes since the push, not the size of the volume.
pub fn unpushed_per_file(
    meta: &MetaStore,
    branch: &str,
    block_size: u64,
    size_of: &mut dyn FnMut(u64) -> anyhow::Result<Option<u64>>,
) -> anyhow::Result<HashMap<u64, u64>> {
    let since = hybridfs_sync::unpushed_since(meta, branch)?;
    let unpushed: HashSet<(u64, u64)> = meta.journal(since)?.into_iter().map(|e| (e.ino, e.block)).collect();
    let mut sizes: HashMap<u64, Option<u64>> = HashMap::new();
    let mut per_file: HashMap<u64, u64> = HashMap::new();
    for (ino, block) in unpushed {
        let size = match sizes.get(&ino) {
            Some(s) => *s,
            None => *sizes.entry(ino).or_insert(size_of(ino)?),
        };
        match size.map_or(0, |s| s.saturating_sub(block * block_size).min(block_size)) {
            0 => {}
            n => *per_file.entry(ino).or_default() += n,
        }
    }
    Ok(per_file)
}

impl VolumeDir {
    pub fn status(&self) -> NodeResult<VolumeStatus> {
        typed(|| {
            let cfg = self.config()?;
            let meta = self.open_meta(true)?;
            let (mut files, mut dirs, mut bytes) = (0, 0, 0);
            let mut sizes: HashMap<u64, u64> = HashMap::new();
            meta.for_each_inode(&mut |i| match i.kind {
                Kind::File => {
                    files += 1;
                    bytes += i.size;
                    sizes.insert(i.ino, i.size);
                }
                Kind::Dir => dirs += 1,
                _ => {}
            })?;
            let bs = cfg.block_size as u64;
            // The bytes of one block of a live file (the last block may be short; deleted files: 0).
            let block_bytes = |ino: u64, block: u64| sizes.get(&ino).map_or(0, |s| s.saturating_sub(block * bs).min(bs));
            let per_file = unpushed_per_file(&meta, cfg.push_branch(), bs, &mut |ino| Ok(sizes.get(&ino).copied()))?;
            let unpushed_bytes = per_file.values().sum();
            let mut dirty: Vec<(u64, u64)> = per_file.into_iter().collect();
            dirty.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let unpushed_files = dirty.len() as u64;
            let listed: Vec<u64> = dirty.iter().take(UNPUSHED_PATHS_LISTED).map(|(ino, _)| *ino).collect();
            let unpushed_paths = hybridfs_core::diff::live_paths(&meta, &listed)?;
            let mut staged_bytes = 0u64;
            meta.for_each_extent(&mut |ino, block, e| {
                if e == Extent::Staged {
                    staged_bytes += block_bytes(ino, block);
                }
            })?;
            let mount = self.mount_state();
            let mounted = mount.is_some();
            Ok(VolumeStatus {
                name: cfg.name,
                block_size: cfg.block_size,
                store: cfg.store,
                files,
                directories: dirs,
                bytes,
                unpushed_bytes,
                unpushed_paths,
                unpushed_files,
                unsealed_bytes: staged_bytes,
                dirty_bytes: unpushed_bytes,
                staged_bytes,
                epoch: meta.epoch(),
                snapshots: meta.snapshots()?.len(),
                mounted: mount.is_some(),
                mountpoint: mount.as_ref().map(|m| m.mountpoint.display().to_string()),
                pid: mount.map(|m| m.pid),
                metrics: std::fs::read(self.metrics_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()),
                workers: if mounted { self.workers() } else { None },
            })
        })
    }

    /// The workers of the volume's mount process (None: not mounted, or it did not answer).
    pub fn workers(&self) -> Option<Vec<WorkerStatus>> {
        match crate::control::call(self, &crate::control::Request::Workers, &|_| {}) {
            Ok(crate::control::Reply::Workers(w)) => Some(w),
            _ => None,
        }
    }

    /// What the volume's last mount left unsealed (files whose staged data is still in
    /// staging), as one line for people; None when everything is sealed. For an unmounted
    /// volume: `hybridctl umount` asks it once the mount process has ended.
    pub fn unsealed_note(&self) -> NodeResult<Option<String>> {
        typed(|| {
            let staging = Staging::new(self.staging_dir())?;
            let inos = staging.list()?;
            if inos.is_empty() {
                return Ok(None);
            }
            let meta = self.open_meta(true)?;
            let bs = self.config()?.block_size as u64;
            let u = hybridfs_core::volume::count_unsealed(&meta, &inos, bs, &mut |ino| Ok(meta.get_inode(ino)?.map(|i| i.size)))?;
            if u.files == 0 {
                return Ok(None);
            }
            let room = hybridfs_core::space::SpaceGuard::new(&self.staging_dir())?.room()?;
            Ok(Some(unsealed_line(u, room < u.bytes)))
        })
    }

    /// Check metadata and block consistency (`verify`: re-hash every sealed block).
    pub fn fsck(&self, verify: bool) -> NodeResult<FsckReport> {
        self.fsck_with(verify, false, &hybridfs_core::progress::ignore)
    }

    /// [`VolumeDir::fsck`], reporting the verification to `progress` (op `fsck`). A shared
    /// volume's host rows are checked too (`fsck::check_shared`); `repair` clears what crashed
    /// hosts left there.
    pub fn fsck_with(&self, verify: bool, repair: bool, progress: OnProgress) -> NodeResult<FsckReport> {
        typed(|| {
            let cfg = self.config()?;
            let meta = self.open_meta(true)?;
            let workers = crate::workers::Workers::new();
            let remote = crate::control::RemoteSlot::new(cfg.clone(), workers.clone());
            let blocks = self.open_blocks(&meta, &remote, &workers)?;
            let staging = Staging::new(self.staging_dir())?;
            let mut report = fsck::check_with(&*meta, &*blocks, &staging, cfg.block_size as u64, verify, progress)?;
            if cfg.meta.is_some() {
                fsck::check_shared(&meta, repair, &mut report)?;
            }
            Ok(report)
        })
    }

    /// Check the volume's branch in its store (default: the volume's branch; for a clone not
    /// pushed yet, its source): every block its layers name is there.
    pub fn fsck_remote(&self, branch: Option<String>, verify: bool) -> NodeResult<RemoteCheck> {
        self.fsck_remote_with(branch, verify, &hybridfs_core::progress::ignore)
    }

    /// [`VolumeDir::fsck_remote`], reporting the verification to `progress` (op `fsck`).
    pub fn fsck_remote_with(&self, branch: Option<String>, verify: bool, progress: OnProgress) -> NodeResult<RemoteCheck> {
        typed(|| {
            let cfg = self.config()?;
            let remote = cfg.remote()?;
            let branch = match branch {
                Some(b) => b,
                None => match (&cfg.clone_of, remote.head(cfg.push_branch())?) {
                    (Some((source, _)), None) => source.clone(),
                    _ => cfg.push_branch().to_string(),
                },
            };
            Ok(hybridfs_sync::check_remote_with(&remote, &branch, verify, progress)?)
        })
    }

    /// The dirty-extent journal from epoch `since` on.
    pub fn journal(&self, since: u64) -> NodeResult<Vec<JournalEntry>> {
        typed(|| {
            Ok(self.open_meta(true)?.journal(since)?)
        })
    }

    /// Past merges into this volume.
    pub fn merge_log(&self) -> NodeResult<Vec<MergeSummary>> {
        typed(|| {
            let meta = self.open_meta(self.mount_state().is_some())?;
            Ok(hybridfs_sync::merge::log(&meta).map_err(crate::control::ControlError::from)?)
        })
    }

    /// The report of merge `id`.
    pub fn merge_show(&self, id: u64) -> NodeResult<MergeRecord> {
        typed(|| {
            let meta = self.open_meta(self.mount_state().is_some())?;
            Ok(hybridfs_sync::merge::show(&meta, id).map_err(crate::control::ControlError::from)?)
        })
    }
}

/// The line that says what an unmount left unsealed (the mount's exit log, `hybridctl umount`).
pub fn unsealed_line(u: hybridfs_core::volume::Unsealed, disk_full: bool) -> String {
    let why = if disk_full { "disk full" } else { "their seal failed (see the mount log)" };
    format!(
        "{} files ({} bytes) left unsealed: {why}; they stay in staging and are sealed at the next mount",
        u.files, u.bytes
    )
}
