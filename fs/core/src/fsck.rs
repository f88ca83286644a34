//! Consistency check of a volume: namespace, link counts, extents, block references.
//!
//! Problems are inconsistencies that lose or misreport data; notes are leftovers that a crash
//! may legitimately leave (unreferenced block files, stale staging files) and that are
//! reclaimable.

use crate::blockstore::BlockStore;
use crate::error::Result;
use crate::extent::blocks_for;
use crate::meta::MetaStore;
use crate::progress::{Meter, OnProgress};
use crate::staging::Staging;
use crate::types::{BlockId, Extent, Ino, Kind, ROOT_INO};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub bytes: u64,
    pub sealed_blocks: u64,
    pub staged_blocks: u64,
    /// Extent versions kept only for snapshots.
    pub snapshot_blocks: u64,
    pub verified_blocks: u64,
    /// Referenced blocks this node holds no copy of: they are in the object store (a clone's
    /// data, or a branch's blocks a merge took) and are fetched, verified, on first read.
    pub remote_only_blocks: u64,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Seen {
    kind: Kind,
    nlink: u32,
    size: u64,
    inline: Option<usize>,
}

pub fn check(
    meta: &MetaStore,
    blocks: &dyn BlockStore,
    staging: &Staging,
    block_size: u64,
    verify: bool,
) -> Result<FsckReport> {
    check_with(meta, blocks, staging, block_size, verify, &crate::progress::ignore)
}

/// [`check`], reporting the verification (`verify`) to `progress`: op `fsck`, blocks read
/// and verified of those referenced, and their bytes.
pub fn check_with(
    meta: &MetaStore,
    blocks: &dyn BlockStore,
    staging: &Staging,
    block_size: u64,
    verify: bool,
    progress: OnProgress,
) -> Result<FsckReport> {
    let mut r = FsckReport::default();
    let mut inodes: HashMap<Ino, Seen> = HashMap::new();
    meta.for_each_inode(&mut |i| {
        let inline = i.inline.as_ref().map(Vec::len);
        inodes.insert(i.ino, Seen { kind: i.kind, nlink: i.nlink, size: i.size, inline });
    })?;
    r.inodes = inodes.len() as u64;
    if !inodes.get(&ROOT_INO).is_some_and(|s| s.kind == Kind::Dir) {
        r.problems.push("root directory (inode 1) is missing".into());
    }
    for (ino, s) in &inodes {
        match s.inline {
            Some(len) if len as u64 != s.size => {
                r.problems.push(format!("inode {ino}: {len} inline bytes but size {}", s.size))
            }
            Some(_) if s.kind != Kind::File => r.problems.push(format!("inode {ino}: inline data on a {:?}", s.kind)),
            _ => {}
        }
    }
    check_names(meta, &inodes, &mut r)?;
    check_extents(meta, blocks, staging, &inodes, block_size, verify.then_some(progress), &mut r)?;
    for s in inodes.values() {
        match s.kind {
            Kind::Dir => r.directories += 1,
            Kind::File => {
                r.files += 1;
                r.bytes += s.size;
            }
            _ => {}
        }
    }
    Ok(r)
}

/// A shared volume (its metadata in a database several hosts mount): its host rows. Open rows
/// of dead hosts, of missing inodes, and orphans no live host holds are leftovers of crashed
/// hosts (notes: the next lease pass of a mounted host clears them); `repair` clears them now
/// ([`MetaStore::repair_hosts`]).
pub fn check_shared(meta: &MetaStore, repair: bool, r: &mut FsckReport) -> Result<()> {
    let found = meta.check_hosts(crate::meta::now_ms())?;
    for (host, end) in &found.dead {
        r.notes.push(format!("host {host:016x}: its lease ended (at {end} ms): its rows hold nothing"));
    }
    for (ino, host) in &found.dead_open_rows {
        r.notes.push(format!("inode {ino}: open row of host {host:016x}, which is dead"));
    }
    for (ino, host) in &found.missing_open_rows {
        r.notes.push(format!("open row of host {host:016x} for inode {ino}, which is gone"));
    }
    for ino in &found.unheld_orphans {
        r.notes.push(format!("orphan inode {ino}: no live host holds it open"));
    }
    if found.is_empty() {
        return Ok(());
    }
    if repair {
        let purged = meta.repair_hosts(&found)?;
        r.notes.push(format!(
            "repaired: removed the rows of {} dead hosts, {} open rows, purged {purged} orphans",
            found.dead.len(),
            found.dead_open_rows.len() + found.missing_open_rows.len()
        ));
    } else {
        r.notes.push("reclaimable: a mounted host's next lease pass clears them, `fsck --repair` now".into());
    }
    Ok(())
}

fn check_names(meta: &MetaStore, inodes: &HashMap<Ino, Seen>, r: &mut FsckReport) -> Result<()> {
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut per_dir: HashMap<Ino, u64> = HashMap::new();
    // Each directory's parent, by its entry (directories have one).
    let mut up: HashMap<Ino, Ino> = HashMap::new();
    meta.for_each_dentry(&mut |parent, name, d| {
        let name = String::from_utf8_lossy(name);
        *per_dir.entry(parent).or_default() += 1;
        match inodes.get(&d.ino) {
            None => r.problems.push(format!("entry {name:?} in directory {parent} names missing inode {}", d.ino)),
            Some(s) if s.kind != d.kind => r.problems.push(format!(
                "entry {name:?} in directory {parent}: type {:?} but inode {} is {:?}",
                d.kind, d.ino, s.kind
            )),
            Some(_) => {}
        }
        if !inodes.get(&parent).is_some_and(|s| s.kind == Kind::Dir) {
            r.problems.push(format!("entry {name:?} lives in {parent}, which is not a directory"));
        }
        *links.entry(d.ino).or_default() += 1;
        if d.kind == Kind::Dir {
            *subdirs.entry(parent).or_default() += 1;
            up.insert(d.ino, parent);
        }
    })?;
    check_connected(&up, r);
    for (&dir, &count) in &per_dir {
        let indexed = meta.readdir(dir, 0, usize::MAX)?.len() as u64;
        if indexed != count {
            r.problems.push(format!("directory {dir}: {count} entries but {indexed} in readdir order"));
        }
    }
    let orphans: HashSet<Ino> = meta.orphans()?.into_iter().collect();
    for (&ino, s) in inodes {
        let expected = match s.kind {
            Kind::Dir if ino == ROOT_INO || links.get(&ino).copied().unwrap_or(0) > 0 => {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            }
            _ => links.get(&ino).copied().unwrap_or(0),
        };
        if s.nlink == 0 && expected == 0 {
            if !orphans.contains(&ino) {
                r.problems.push(format!("inode {ino} has no links and is not an orphan"));
            }
        } else if s.nlink != expected {
            r.problems.push(format!("inode {ino}: link count {} but {expected} links found", s.nlink));
        }
    }
    Ok(())
}

/// Every linked directory reaches the root through its parents: none is in a cycle of
/// directories cut off from the root (two hosts moving directories under each other).
fn check_connected(up: &HashMap<Ino, Ino>, r: &mut FsckReport) {
    let mut reached: HashSet<Ino> = HashSet::from([ROOT_INO]);
    let mut cut: HashSet<Ino> = HashSet::new();
    for &start in up.keys() {
        let mut path = Vec::new();
        let mut at = start;
        let ok = loop {
            if reached.contains(&at) {
                break true;
            }
            if cut.contains(&at) || path.len() > up.len() {
                break false;
            }
            path.push(at);
            match up.get(&at) {
                Some(&parent) => at = parent,
                None => break false,
            }
        };
        if ok {
            reached.extend(path);
        } else {
            r.problems.push(format!("directory {start} does not reach the root through its parents (cut off, or in a cycle)"));
            cut.extend(path);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_extents(
    meta: &MetaStore,
    blocks: &dyn BlockStore,
    staging: &Staging,
    inodes: &HashMap<Ino, Seen>,
    block_size: u64,
    verify: Option<OnProgress>,
    r: &mut FsckReport,
) -> Result<()> {
    // Per block: the extents that use it, and its length.
    let mut refs: HashMap<BlockId, (u64, u64)> = HashMap::new();
    let mut staged_inodes: HashSet<Ino> = HashSet::new();
    meta.for_each_extent(&mut |ino, block, ext| {
        match inodes.get(&ino) {
            None => r.problems.push(format!("extent {block} of missing inode {ino}")),
            Some(s) if s.kind != Kind::File => r.problems.push(format!("extent {block} of non-file inode {ino}")),
            Some(s) if s.inline.is_some() => r.problems.push(format!("inode {ino} has inline data and extent {block}")),
            Some(s) if block >= blocks_for(s.size, block_size) => {
                r.problems.push(format!("inode {ino}: extent {block} lies beyond the end of the file ({} bytes)", s.size))
            }
            Some(_) => {}
        }
        match ext {
            Extent::Staged => {
                r.staged_blocks += 1;
                staged_inodes.insert(ino);
            }
            Extent::Sealed { id, len } => {
                r.sealed_blocks += 1;
                let e = refs.entry(id).or_default();
                (e.0, e.1) = (e.0 + 1, len as u64);
            }
        }
    })?;
    let on_disk: HashSet<Ino> = staging.list()?.into_iter().collect();
    for ino in &staged_inodes {
        if !on_disk.contains(ino) {
            r.problems.push(format!("inode {ino} has staged blocks but no staging file"));
        }
    }
    let stale = on_disk.iter().filter(|i| !staged_inodes.contains(i)).count();
    if stale > 0 {
        r.notes.push(format!("{stale} staging files hold no staged block (reclaimable)"));
    }
    meta.for_each_history_extent(&mut |_, _, _, ext| {
        if let Extent::Sealed { id, len } = ext {
            r.snapshot_blocks += 1;
            let e = refs.entry(id).or_default();
            (e.0, e.1) = (e.0 + 1, len as u64);
        }
    })?;
    check_refs(meta, blocks, &refs, verify, r)
}

fn check_refs(
    meta: &MetaStore,
    blocks: &dyn BlockStore,
    refs: &HashMap<BlockId, (u64, u64)>,
    verify: Option<OnProgress>,
    r: &mut FsckReport,
) -> Result<()> {
    let mut meter = verify.map(|on| {
        let bytes = refs.values().map(|(_, len)| len).sum();
        Meter::new("fsck", "", refs.len() as u64, bytes, on)
    });
    let mut stored: HashMap<BlockId, u64> = HashMap::new();
    meta.for_each_ref(&mut |id, n| {
        stored.insert(id, n);
    })?;
    for (id, &(n, len)) in refs {
        let s = stored.get(id).copied().unwrap_or(0);
        if s != n {
            r.problems.push(format!("block {id}: reference count {s} but {n} extents use it"));
        }
        if !blocks.contains(id)? {
            r.problems.push(format!("block {id} is referenced but missing from the block store"));
            if let Some(m) = &mut meter {
                m.add(1, len);
            }
            continue;
        }
        if !blocks.is_local(id)? {
            r.remote_only_blocks += 1;
        }
        if let Some(m) = &mut meter {
            match blocks.get(id) {
                Ok(_) => r.verified_blocks += 1,
                Err(e) => r.problems.push(format!("block {id} fails verification: {e}")),
            }
            m.add(1, len);
        }
    }
    if let Some(m) = &mut meter {
        m.finish();
    }
    let verify = meter.is_some();
    for (id, n) in &stored {
        if !refs.contains_key(id) {
            r.problems.push(format!("block {id}: reference count {n} but no extent uses it"));
        }
    }
    let free: HashSet<BlockId> = meta.free_blocks()?.into_iter().map(|(id, _)| id).collect();
    for id in &free {
        if refs.contains_key(id) {
            r.problems.push(format!("block {id} is on the free list but still referenced"));
        }
    }
    let mut unreferenced = 0u64;
    let mut waiting = 0u64;
    blocks.for_each(&mut |id| {
        if free.contains(&id) {
            waiting += 1;
        } else if !refs.contains_key(&id) {
            unreferenced += 1;
        }
    })?;
    if r.remote_only_blocks > 0 {
        let how = if verify { "fetched and verified now" } else { "fetched, verified, on first read" };
        r.notes.push(format!("{} referenced blocks are only in the object store ({how})", r.remote_only_blocks));
    }
    if waiting > 0 {
        r.notes.push(format!("{waiting} unreferenced block files wait for the collector (grace period)"));
    }
    if unreferenced > 0 {
        r.notes.push(format!("{unreferenced} block files are referenced by nothing (reclaimable)"));
    }
    Ok(())
}
