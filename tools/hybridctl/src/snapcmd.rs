//! `hybridctl snapshot …`, `diff`, `rollback`, `gc`, `push`, `pull` and `prefetch`: each one
//! request of the control API (`hybridfs_node::control`), run by the mount process when the
//! volume is mounted, else here; this module builds the request and prints the reply.

use crate::fmt::human_bytes;
use crate::usage;
use anyhow::{Context, Result};
use hybridfs_node::control::{self, Reply, Request, SnapshotRow};
use hybridfs_node::types::DiffReport;
use hybridfs_node::{Home, VolumeDir};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

/// Run `req` on `vd` (in its mount process when mounted), drawing its progress events (a
/// push's upload, a merge's block fetch, gc, a rollback, a pull) through [`crate::progress`].
pub(crate) fn call(vd: &VolumeDir, req: &Request) -> Result<Reply> {
    Ok(crate::progress::run(req.op(), |on| control::call(vd, req, on))?)
}

/// `--volume` or the only volume (or `main`).
pub fn pick_volume(home: &Home, name: Option<&str>) -> Result<VolumeDir> {
    if let Some(n) = name {
        return Ok(home.volume(n)?);
    }
    let all = home.volumes()?;
    match all.len() {
        0 => usage(format!("no volumes in {}: create one with hybridctl format NAME", home.root.display())),
        1 => Ok(all.into_iter().next().expect("one")),
        _ => match all.into_iter().find(|v| v.name == "main") {
            Some(v) => Ok(v),
            None => usage("several volumes exist: choose one with --volume NAME"),
        },
    }
}

fn created(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let age = std::time::SystemTime::now().duration_since(t).unwrap_or_default().as_secs();
    match age {
        0..=119 => format!("{age}s ago"),
        120..=7199 => format!("{}m ago", age / 60),
        7200..=172_799 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

/// Pretty JSON through `serde_json::Value`, whose objects sort their keys: the output of
/// earlier versions, which built a `Value` first.
fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&serde_json::to_value(v)?)?);
    Ok(())
}

fn print_snapshot_row(s: &SnapshotRow) {
    println!(
        "{:<28} {:>10} {:>6} {:>9} {:>10} {:>10}  {}",
        s.info.name,
        created(s.info.created),
        s.info.epoch,
        s.info.files,
        human_bytes(s.info.bytes),
        human_bytes(s.unique_bytes),
        s.info.holds.join(","),
    );
}

const HEADER: &str = "NAME                            CREATED  EPOCH     FILES       SIZE     UNIQUE  HOLDS";

/// The reply as `--json` prints it.
fn print_reply_json(reply: &Reply) -> Result<()> {
    match reply {
        Reply::Snapshot(s) => print_json(s),
        Reply::Snapshots(rows) if rows.len() == 1 => print_json(&rows[0]),
        Reply::Snapshots(rows) => print_json(rows),
        Reply::Diff(d) => print_json(d),
        Reply::Gc(g) => print_json(g),
        Reply::Rollback(r) => print_json(r),
        Reply::Push(p) => print_json(p),
        Reply::Pull(p) => print_json(p),
        Reply::Prefetch(p) => print_json(p),
        Reply::Merge(m) => print_json(m),
        Reply::Workers(w) => print_json(w),
    }
}

pub fn run(home: &Home, volume: Option<&str>, req: Request, json: bool) -> Result<ExitCode> {
    let vd = pick_volume(home, volume)?;
    let reply = call(&vd, &req)?;
    if json {
        // `snapshot list` prints an array even when it holds one snapshot.
        match (&req, &reply) {
            (Request::SnapshotList, Reply::Snapshots(rows)) => print_json(rows)?,
            _ => print_reply_json(&reply)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_reply(&vd, &req, &reply)?;
    Ok(ExitCode::SUCCESS)
}

fn print_reply(vd: &VolumeDir, req: &Request, reply: &Reply) -> Result<()> {
    match (req, reply) {
        (Request::SnapshotCreate { name }, Reply::Snapshot(s)) => println!("snapshot {name} of volume {} taken (epoch {})", vd.name, s.epoch),
        (Request::SnapshotDelete { name }, Reply::Snapshot(_)) => {
            println!("snapshot {name} deleted; its space is reclaimed by the collector (hybridctl gc)")
        }
        (Request::SnapshotHold { name, by, on: true }, Reply::Snapshot(_)) => println!("snapshot {name} held by {by}"),
        (Request::SnapshotHold { name, by, on: false }, Reply::Snapshot(_)) => println!("snapshot {name} released by {by}"),
        (Request::SnapshotList | Request::SnapshotShow { .. }, Reply::Snapshots(rows)) => {
            println!("{HEADER}");
            rows.iter().for_each(print_snapshot_row);
        }
        (Request::Diff { .. }, Reply::Diff(d)) => print_diff(d),
        (Request::Gc { .. }, Reply::Gc(g)) if g.skipped => println!("gc: another host's collector pass is running; this one did nothing"),
        (Request::Gc { .. }, Reply::Gc(g)) => println!(
            "gc: {} deleted-snapshot ranges, {} records examined, {} old versions removed, {} blocks freed ({}), {} blocks in their grace period",
            g.ranges,
            g.records_examined,
            g.versions_removed,
            g.blocks_freed,
            human_bytes(g.bytes_freed),
            g.blocks_waiting,
        ),
        (Request::Rollback { name }, Reply::Rollback(r)) => println!(
            "volume {} rolled back to snapshot {name} ({} records restored); the previous state is snapshot {}",
            vd.name, r.records_restored, r.saved_as.name
        ),
        (Request::Pull, Reply::Pull(p)) if p.up_to_date => {
            println!("volume {} is up to date with branch {} (layer {})", vd.name, p.source, p.to_seq)
        }
        (Request::Pull, Reply::Pull(p)) => {
            println!("volume {} pulled branch {} from layer {} to {}: {} records", vd.name, p.source, p.from_seq, p.to_seq, p.records)
        }
        (Request::Prefetch { .. }, Reply::Prefetch(p)) => {
            println!("prefetched {} paths: {} blocks are local now ({:.1}s)", p.paths, p.blocks, p.seconds)
        }
        (Request::Push { .. }, Reply::Push(p)) => print_push(vd, p),
        (_, reply) => return Err(control::ControlError::UnexpectedReply(format!("{reply:?}")).into()),
    }
    Ok(())
}

fn print_push(vd: &VolumeDir, p: &hybridfs_node::types::PushReport) {
    let store = vd.config().map(|c| c.store).unwrap_or_default();
    let branch = &p.branch;
    if p.up_to_date {
        println!("branch {branch} in {store} is up to date (layer {})", p.seq);
        return;
    }
    println!(
        "pushed layer {} of branch {branch} to {store}: {} records, {} blocks uploaded{} in {} packs and single objects ({}), {} already there, {} requests, {:.1}s{}",
        p.seq,
        p.records,
        p.blocks_uploaded,
        if p.blocks_as_deltas > 0 { format!(" ({} as deltas)", p.blocks_as_deltas) } else { String::new() },
        p.packs,
        human_bytes(p.bytes_uploaded),
        p.blocks_skipped,
        p.requests,
        p.seconds,
        if p.resumed { " (resumed an interrupted push)" } else { "" },
    );
}

fn print_diff(d: &DiffReport) {
    for e in &d.entries {
        let code = e.change.code();
        match &e.from_path {
            Some(from) => println!("{code} {from} -> {}", e.path),
            None => println!("{code} {}", e.path),
        }
        if !e.ranges.is_empty() || !e.attrs.is_empty() {
            let shown: Vec<String> = e.ranges.iter().take(8).map(|(a, b)| format!("{a}-{b}")).collect();
            let more = if e.ranges.len() > 8 { format!(" (+{} more)", e.ranges.len() - 8) } else { String::new() };
            let bytes: u64 = e.ranges.iter().map(|(a, b)| b - a).sum();
            if !e.ranges.is_empty() {
                println!("    bytes {}{more} ({})", shown.join(","), human_bytes(bytes));
            }
            if !e.attrs.is_empty() {
                println!("    changed: {}", e.attrs.join(", "));
            }
        }
    }
    eprintln!("{} changes ({} journal rows read)", d.entries.len(), d.journal_rows);
}

/// `hybridctl push`: the branch defaults to the volume's own; pushing to another one forks it
/// from where the volume's branch stands.
pub fn push(home: &Home, volume: Option<&str>, branch: Option<String>, json: bool) -> Result<ExitCode> {
    let vd = pick_volume(home, volume)?;
    let cfg = vd.config()?;
    let branch = branch.unwrap_or_else(|| cfg.push_branch().to_string());
    let fork_from = (branch != cfg.push_branch()).then(|| cfg.push_branch().to_string());
    run(home, Some(&vd.name), Request::Push { branch, fork_from }, json)
}

/// `hybridctl prefetch PATH...`: the mounted volume holding the paths, and each path's
/// components below its mount point.
pub fn prefetch(home: &Home, paths: &[std::path::PathBuf], json: bool) -> Result<ExitCode> {
    let mut target: Option<(VolumeDir, Vec<Vec<String>>)> = None;
    for p in paths {
        let abs = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
        let found = home.volumes()?.into_iter().find_map(|vd| {
            let mp = vd.mount_state()?.mountpoint;
            let rest = abs.strip_prefix(&mp).ok()?.to_path_buf();
            Some((vd, rest))
        });
        let Some((vd, rest)) = found else {
            return usage(format!("{} is not inside a mounted hybridfs volume", p.display()));
        };
        let parts: Vec<String> = rest.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.first().is_some_and(|c| c == ".snapshots") {
            return usage(format!("{}: prefetch live paths, not snapshots", p.display()));
        }
        match &mut target {
            Some((v, list)) if v.name == vd.name => list.push(parts),
            Some((v, _)) => return usage(format!("{} is on volume {}, the others on {}: one volume at a time", p.display(), vd.name, v.name)),
            None => target = Some((vd, vec![parts])),
        }
    }
    let Some((vd, list)) = target else { return usage("name at least one path") };
    run(home, Some(&vd.name), Request::Prefetch { paths: list }, json)
}
