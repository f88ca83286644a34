//! Turns a [`MergePlan`] into one batch of metadata mutations against the home tree.
//!
//! Inode records are written whole (the merged node over the home record); extents and
//! xattrs by difference with the home version. Directory entries are removed and added
//! one by one, and every directory that gains or loses entries is rewritten from its home
//! record: a new entry takes the directory's next readdir cookie, subdirectories count in its
//! link count, and its times move to now. So two branches that both added names to one
//! directory never collide on its record or its cookies: nothing of a directory's own
//! bookkeeping is taken from theirs.

use super::{Link, MergePlan, Node};
use crate::error::{FsError, Result};
use crate::meta::{MetaStore, Mutation};
use crate::types::{BlockId, Dentry, Extent, Inode, Ino, Kind, Timespec, ROOT_INO};
use std::collections::{BTreeMap, BTreeSet};

/// The mutations that make the home tree the merged tree (one atomic batch).
pub fn mutations(home: &MetaStore, plan: &MergePlan) -> Result<Vec<Mutation>> {
    let mut b = Builder {
        home,
        out: Vec::new(),
        records: BTreeMap::new(),
        removed: BTreeSet::new(),
        dels: Vec::new(),
        adds: Vec::new(),
        now: Timespec::now(),
    };
    for (ino, r) in &plan.nodes {
        let h = plan.ours.get(ino).cloned().flatten();
        match r {
            None => b.remove(*ino, h.as_ref())?,
            Some(n) => b.update(n, h.as_ref())?,
        }
    }
    for c in &plan.copies {
        b.update(&c.node, None)?;
    }
    for m in &plan.moves {
        b.dels.push((m.from.clone(), m.ino));
        b.adds.push((m.to.clone(), m.ino, m.kind));
        let rec = b.record(m.ino)?;
        if (rec.parent, rec.name.as_slice()) == (m.from.0, m.from.1.as_slice()) {
            (rec.parent, rec.name) = m.to.clone();
        }
    }
    b.entries()?;
    let Builder { mut out, records, removed, .. } = b;
    for (ino, r) in records.into_iter().filter(|(i, _)| !removed.contains(i)) {
        // A file the merge leaves with no name (not one the planner makes; a guard) is an
        // orphan, as after an unlink: a local volume's FORGET purges only inodes with the
        // row, and so does the next mount.
        if r.nlink == 0 && r.kind != Kind::Dir {
            out.push(Mutation::PutOrphan(ino));
        }
        out.push(Mutation::PutInode(r));
    }
    Ok(out)
}

/// The entries and inodes a batch changes (what the kernel must forget after it).
pub fn touched_by(batch: &[Mutation]) -> (BTreeSet<Link>, BTreeSet<Ino>) {
    let (mut entries, mut inodes) = (BTreeSet::new(), BTreeSet::new());
    for m in batch {
        match m {
            Mutation::PutDentry { parent, name, .. } | Mutation::DelDentry { parent, name, .. } => {
                entries.insert((*parent, name.clone()));
            }
            Mutation::PutInode(i) | Mutation::InsertInode(i) | Mutation::MergeInodeData(i) => {
                inodes.insert(i.ino);
            }
            Mutation::DelInode(ino) | Mutation::PutExtent { ino, .. } | Mutation::DelExtent { ino, .. } => {
                inodes.insert(*ino);
            }
            Mutation::PutXattr { ino, .. } | Mutation::DelXattr { ino, .. } => {
                inodes.insert(*ino);
            }
            _ => {}
        }
    }
    (entries, inodes)
}

/// Tell the kernel to forget what a batch changed.
pub fn invalidate(kernel: &dyn super::KernelCache, entries: &BTreeSet<Link>, inodes: &BTreeSet<Ino>) {
    for (parent, name) in entries {
        kernel.invalidate_entry(*parent, name);
    }
    for ino in inodes {
        kernel.invalidate_inode(*ino);
    }
}

/// The sealed blocks the merged tree takes from the branch (not named by the home version):
/// the home volume must be able to fetch them.
pub fn new_blocks(plan: &MergePlan) -> BTreeSet<BlockId> {
    let mut out = BTreeSet::new();
    let nodes = plan.nodes.iter().filter_map(|(i, r)| r.as_ref().map(|n| (n, plan.ours.get(i).cloned().flatten())));
    let copies = plan.copies.iter().map(|c| (&c.node, None));
    for (n, h) in nodes.chain(copies) {
        let home: BTreeSet<BlockId> = h.map(|h| sealed(&h.content.extents)).unwrap_or_default();
        out.extend(sealed(&n.content.extents).into_iter().filter(|id| !home.contains(id)));
    }
    out
}

fn sealed(extents: &[(u64, Extent)]) -> BTreeSet<BlockId> {
    extents
        .iter()
        .filter_map(|(_, e)| match e {
            Extent::Sealed { id, .. } => Some(*id),
            Extent::Staged => None,
        })
        .collect()
}

struct Builder<'a> {
    home: &'a MetaStore,
    out: Vec<Mutation>,
    /// Inode records to write at the end (directories gain entries meanwhile).
    records: BTreeMap<Ino, Inode>,
    /// Inodes the merge deletes (their records are not written back).
    removed: BTreeSet<Ino>,
    dels: Vec<(Link, Ino)>,
    adds: Vec<(Link, Ino, Kind)>,
    now: Timespec,
}

impl Builder<'_> {
    /// The record of `ino` as this batch will write it (loaded from home on first use).
    fn record(&mut self, ino: Ino) -> Result<&mut Inode> {
        if !self.records.contains_key(&ino) {
            let rec = self
                .home
                .get_inode(ino)?
                .ok_or_else(|| FsError::Meta(format!("merge: inode {ino} is named by the plan but not in the home tree")))?;
            self.records.insert(ino, rec);
        }
        Ok(self.records.get_mut(&ino).expect("inserted"))
    }

    fn remove(&mut self, ino: Ino, home: Option<&Node>) -> Result<()> {
        let Some(h) = home else { return Ok(()) };
        self.removed.insert(ino);
        for l in &h.links {
            self.dels.push((l.clone(), ino));
        }
        self.out.push(Mutation::DelInode(ino));
        self.out.push(Mutation::DelOrphan(ino));
        for (block, _) in self.home.extents(ino, 0)? {
            self.out.push(Mutation::DelExtent { ino, block });
        }
        for name in self.home.xattr_names(ino)? {
            self.out.push(Mutation::DelXattr { ino, name });
        }
        Ok(())
    }

    /// Write the merged node `n` over its home version `h` (None: new to home).
    fn update(&mut self, n: &Node, h: Option<&Node>) -> Result<()> {
        let ino = n.ino;
        let mut rec = match h {
            Some(_) => self.home.get_inode(ino)?.ok_or_else(|| FsError::Meta(format!("merge: home inode {ino} vanished")))?,
            None => Inode::new(ino, n.kind, n.perm, n.uid, n.gid),
        };
        fill(&mut rec, n);
        let home_links = h.map(|h| h.links.clone()).unwrap_or_default();
        if !n.links.contains(&(rec.parent, rec.name.clone())) {
            if let Some((p, name)) = n.links.iter().next() {
                (rec.parent, rec.name) = (*p, name.clone());
            }
        }
        self.dels.extend(home_links.difference(&n.links).map(|l| (l.clone(), ino)));
        self.adds.extend(n.links.difference(&home_links).map(|l| (l.clone(), ino, n.kind)));
        // Extents and xattrs by difference.
        let old: BTreeMap<u64, Extent> = h.map(|h| h.content.extents.iter().copied().collect()).unwrap_or_default();
        let new: BTreeMap<u64, Extent> = n.content.extents.iter().copied().collect();
        for (block, e) in &new {
            if old.get(block) != Some(e) {
                if *e == Extent::Staged {
                    return Err(FsError::Meta(format!("merge: inode {ino} block {block} is staged on the branch (not sealed)")));
                }
                self.out.push(Mutation::PutExtent { ino, block: *block, extent: *e });
            }
        }
        for block in old.keys().filter(|b| !new.contains_key(b)) {
            self.out.push(Mutation::DelExtent { ino, block: *block });
        }
        let old_x = h.map(|h| h.xattrs.clone()).unwrap_or_default();
        for (name, v) in &n.xattrs {
            if old_x.get(name) != Some(v) {
                self.out.push(Mutation::PutXattr { ino, name: name.clone(), value: v.clone() });
            }
        }
        for name in old_x.keys().filter(|k| !n.xattrs.contains_key(*k)) {
            self.out.push(Mutation::DelXattr { ino, name: name.clone() });
        }
        self.records.insert(ino, rec);
        Ok(())
    }

    /// Remove, then add, directory entries, keeping each directory's record right.
    fn entries(&mut self) -> Result<()> {
        let now = self.now;
        for ((parent, name), ino) in std::mem::take(&mut self.dels) {
            let Some(d) = self.home.lookup(parent, &name)?.filter(|d| d.ino == ino) else { continue };
            self.out.push(Mutation::DelDentry { parent, name, cookie: d.cookie });
            if self.removed.contains(&parent) {
                continue;
            }
            if let Ok(dir) = self.record(parent) {
                dir.lose_entry(d.kind, now);
            }
        }
        for ((parent, name), ino, kind) in std::mem::take(&mut self.adds) {
            let dir = self.record(parent)?;
            if dir.kind != Kind::Dir {
                return Err(FsError::Meta(format!("merge: entry {} names inode {parent}, not a directory", String::from_utf8_lossy(&name))));
            }
            let dentry = Dentry { ino, kind, cookie: dir.gain_entry(kind, now) };
            self.out.push(Mutation::PutDentry { parent, name, dentry });
        }
        Ok(())
    }
}

/// The merged attributes of `n` over a record (directories keep their own link count and
/// cookies: [`Builder::entries`] recomputes them).
fn fill(rec: &mut Inode, n: &Node) {
    rec.kind = n.kind;
    rec.perm = n.perm;
    rec.uid = n.uid;
    rec.gid = n.gid;
    rec.mtime = n.mtime;
    rec.atime = n.atime;
    rec.ctime = n.ctime;
    rec.size = n.content.size;
    rec.inline = n.content.inline.clone();
    rec.target = n.content.target.clone();
    rec.rdev = n.content.rdev;
    if n.kind != Kind::Dir {
        rec.nlink = n.nlink;
    }
}

/// The path of `link` in the home tree now (after the merge was applied, the merged path).
pub fn path_of(home: &MetaStore, link: &Link) -> String {
    let mut parts = vec![String::from_utf8_lossy(&link.1).into_owned()];
    let mut cur = link.0;
    for _ in 0..4096 {
        if cur == ROOT_INO || cur == 0 {
            break;
        }
        match home.get_inode(cur) {
            Ok(Some(i)) => {
                parts.push(String::from_utf8_lossy(&i.name).into_owned());
                cur = i.parent;
            }
            _ => {
                parts.push(format!("<inode {cur}>"));
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}
