//! `hybridctl status`, `fsck` and `journal`: read-only views of volumes.

use crate::home::{human_bytes, Home, VolumeDir};
use anyhow::Result;
use hybridfs_core::fsck;
use hybridfs_core::metrics::MetricsSnapshot;
use hybridfs_core::staging::Staging;
use hybridfs_core::types::{Extent, Kind};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::process::ExitCode;

#[derive(Serialize)]
struct VolumeStatus {
    name: String,
    block_size: u32,
    store: String,
    files: u64,
    directories: u64,
    bytes: u64,
    /// Bytes of live files in blocks written since the last push to the volume's branch (all
    /// of them before the first push): what a node must push before it may go. Zero right
    /// after a push, until the next write.
    unpushed_bytes: u64,
    /// Bytes of live files in blocks still in staging files (not yet sealed into blocks).
    unsealed_bytes: u64,
    /// Same as `unpushed_bytes` (the name of earlier versions).
    dirty_bytes: u64,
    /// Same as `unsealed_bytes` (the name of earlier versions).
    staged_bytes: u64,
    epoch: u64,
    mounted: bool,
    mountpoint: Option<String>,
    pid: Option<u32>,
    /// Snapshots kept.
    snapshots: usize,
    /// Counters of the current (or last) mount, from `metrics.json`.
    metrics: Option<MetricsSnapshot>,
}

fn volume_status(vd: &VolumeDir) -> Result<VolumeStatus> {
    let cfg = vd.config()?;
    let meta = vd.open_meta(true)?;
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
    let since = hybridfs_sync::unpushed_since(&meta, cfg.push_branch())?;
    let unpushed: HashSet<(u64, u64)> = meta.journal(since)?.into_iter().map(|e| (e.ino, e.block)).collect();
    let unpushed_bytes = unpushed.iter().map(|(i, b)| block_bytes(*i, *b)).sum();
    let mut staged_bytes = 0u64;
    meta.for_each_extent(&mut |ino, block, e| {
        if e == Extent::Staged {
            staged_bytes += block_bytes(ino, block);
        }
    })?;
    let mount = vd.mount_state();
    Ok(VolumeStatus {
        name: cfg.name,
        block_size: cfg.block_size,
        store: cfg.store,
        files,
        directories: dirs,
        bytes,
        unpushed_bytes,
        unsealed_bytes: staged_bytes,
        dirty_bytes: unpushed_bytes,
        staged_bytes,
        epoch: meta.epoch(),
        snapshots: meta.snapshots()?.len(),
        mounted: mount.is_some(),
        mountpoint: mount.as_ref().map(|m| m.mountpoint.display().to_string()),
        pid: mount.map(|m| m.pid),
        metrics: std::fs::read(vd.metrics_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()),
    })
}

pub fn status(home: &Home, name: Option<&str>, json: bool) -> Result<ExitCode> {
    let vols = match name {
        Some(n) => vec![home.volume(n)?],
        None => home.volumes()?,
    };
    let statuses = vols.iter().map(volume_status).collect::<Result<Vec<_>>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    if statuses.is_empty() {
        println!("no volumes in {} (create one with `hybridctl format NAME`)", home.root.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16} {:>8} {:>10} {:>8} {:>11} {:>11} {:>11} {:>6}  {}", "VOLUME", "BLOCK", "FILES", "DIRS", "SIZE", "UNPUSHED", "UNSEALED", "EPOCH", "MOUNT");
    for s in &statuses {
        let mount = match (&s.mountpoint, s.pid) {
            (Some(mp), Some(pid)) => format!("{mp} (pid {pid})"),
            _ => "not mounted".into(),
        };
        println!(
            "{:<16} {:>8} {:>10} {:>8} {:>11} {:>11} {:>11} {:>6}  {mount}",
            s.name,
            human_bytes(s.block_size as u64),
            s.files,
            s.directories,
            human_bytes(s.bytes),
            human_bytes(s.unpushed_bytes),
            human_bytes(s.unsealed_bytes),
            s.epoch,
        );
        println!("{:<16} store {}, {} snapshots", "", s.store, s.snapshots);
        if let Some(m) = s.metrics.as_ref().filter(|m| !m.corrupt_block_ids.is_empty()) {
            println!("{:<16} CORRUPT blocks read: {}", "", m.corrupt_block_ids.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fsck(home: &Home, name: &str, verify: bool, json: bool) -> Result<ExitCode> {
    let vd = home.volume(name)?;
    let cfg = vd.config()?;
    let meta = vd.open_meta(true)?;
    let blocks = vd.open_blocks(&meta)?;
    let staging = Staging::new(vd.staging_dir())?;
    let report = fsck::check(&*meta, &*blocks, &staging, cfg.block_size as u64, verify)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "volume {name}: {} inodes ({} files, {} directories), {}, {} sealed and {} staged blocks{}",
            report.inodes,
            report.files,
            report.directories,
            human_bytes(report.bytes),
            report.sealed_blocks,
            report.staged_blocks,
            if verify { format!(", {} blocks verified", report.verified_blocks) } else { String::new() }
        );
        for n in &report.notes {
            println!("note: {n}");
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", if report.clean() { "clean".to_string() } else { format!("{} problems", report.problems.len()) });
    }
    Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `fsck --remote`: the branch's layers and blocks in the object store.
pub fn fsck_remote(home: &Home, name: &str, branch: Option<String>, verify: bool, json: bool) -> Result<ExitCode> {
    let vd = home.volume(name)?;
    let cfg = vd.config()?;
    let remote = cfg.remote()?;
    let branch = match branch {
        Some(b) => b,
        None => match (&cfg.clone_of, remote.head(cfg.push_branch())?) {
            (Some((source, _)), None) => source.clone(),
            _ => cfg.push_branch().to_string(),
        },
    };
    let report = hybridfs_sync::check_remote(&remote, &branch, verify)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "volume {name}, branch {branch} in {}: {} layers, {} blocks{}",
            cfg.store,
            report.layers,
            report.blocks,
            if verify { format!(", {} verified", report.verified) } else { String::new() }
        );
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", if report.problems.is_empty() { "clean".to_string() } else { format!("{} problems", report.problems.len()) });
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn journal(home: &Home, name: &str, since: u64, json: bool) -> Result<ExitCode> {
    let vd = home.volume(name)?;
    let meta = vd.open_meta(true)?;
    let rows = meta.journal(since)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!("{:>6} {:>12} {:>12}", "EPOCH", "INODE", "BLOCK");
        for r in &rows {
            println!("{:>6} {:>12} {:>12}", r.epoch, r.ino, r.block);
        }
    }
    Ok(ExitCode::SUCCESS)
}
