//! Builds the planner's input from metadata stores (O(changes): only the journal rows of
//! both sides since the base are read, then the records of the inodes they name).
//!
//! A side is a [`View`]: a metadata store read at an epoch. The home volume is ours at
//! [`LIVE`]; base and theirs may be another store (the branch's layers applied to a scratch
//! store) or the home store at a snapshot's epoch.

use super::{Link, MergeInput, Node, OursTree, Versions};
use crate::error::{FsError, Result};
use crate::meta::{Key, MetaStore, LIVE};
use crate::types::{Ino, Kind, ROOT_INO};
use std::collections::{BTreeMap, BTreeSet};

/// A metadata store read at an epoch.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub meta: &'a MetaStore,
    pub epoch: u64,
}

impl View<'_> {
    /// Inode `ino` as the planner sees it; `candidates` are names it may have besides the one
    /// its record names (hard links either side touched). Unlinked inodes count as absent.
    pub fn node(&self, ino: Ino, candidates: &BTreeSet<Link>) -> Result<Option<Node>> {
        let (meta, at) = (self.meta, self.epoch);
        let Some(i) = meta.get_inode_at(ino, at)? else { return Ok(None) };
        if i.nlink == 0 {
            return Ok(None);
        }
        let extents = if i.kind == Kind::File { meta.extents_at(ino, 0, at)? } else { Vec::new() };
        let content = super::Content { size: i.size, inline: i.inline.clone(), extents, target: i.target.clone(), rdev: i.rdev };
        let mut xattrs = BTreeMap::new();
        for name in meta.xattr_names_at(ino, at)? {
            if let Some(v) = meta.get_xattr_at(ino, &name, at)? {
                xattrs.insert(name, v);
            }
        }
        let mut links = BTreeSet::new();
        if ino != ROOT_INO {
            let own = (i.parent, i.name.clone());
            for l in candidates.iter().chain(std::iter::once(&own)) {
                if meta.lookup_at(l.0, &l.1, at)?.is_some_and(|d| d.ino == ino) {
                    links.insert(l.clone());
                }
            }
        }
        Ok(Some(Node {
            ino,
            kind: i.kind,
            content,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            atime: i.atime,
            ctime: i.ctime,
            xattrs,
            links,
            nlink: i.nlink,
        }))
    }

    /// A hard-linked file with more names on this side than `names` know: look for the rest
    /// in the directories of the known ones (costs a listing of those directories, only for
    /// such files; names in other directories stay unknown, and the merge leaves them alone).
    fn more_names(&self, ino: Ino, names: &mut BTreeSet<Link>) -> Result<()> {
        let Some(i) = self.meta.get_inode_at(ino, self.epoch)? else { return Ok(()) };
        if i.kind == Kind::Dir || i.nlink <= 1 {
            return Ok(());
        }
        let mut known = 0;
        for (p, n) in names.iter() {
            known += u32::from(self.named(*p, n)? == Some(ino));
        }
        if known >= i.nlink {
            return Ok(());
        }
        let dirs: BTreeSet<Ino> = names.iter().map(|l| l.0).collect();
        for d in dirs {
            for e in self.meta.readdir_at(d, 0, usize::MAX, self.epoch)? {
                if e.dentry.ino == ino {
                    names.insert((d, e.name));
                }
            }
        }
        Ok(())
    }

    fn named(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        Ok(self.meta.lookup_at(parent, name, self.epoch)?.map(|d| d.ino))
    }
}

/// The records changed on a store in epochs `(after, upto]` (one journal scan).
pub fn touched(meta: &MetaStore, after: u64, upto: u64) -> Result<BTreeSet<Key>> {
    let mut keys = BTreeSet::new();
    meta.changes(after, upto, &mut |c| {
        keys.insert(c.key);
        Ok(true)
    })?;
    Ok(keys)
}

/// The planner input for merging theirs into ours: every inode either side's changed records
/// name, at base, ours and theirs.
pub fn input(base: View, ours: View, theirs: View, ours_keys: &BTreeSet<Key>, theirs_keys: &BTreeSet<Key>) -> Result<MergeInput> {
    let mut inos: BTreeSet<Ino> = BTreeSet::new();
    let mut candidates: BTreeMap<Ino, BTreeSet<Link>> = BTreeMap::new();
    for key in ours_keys.iter().chain(theirs_keys) {
        match key {
            Key::Inode(i) | Key::Extent(i, _) | Key::Xattr(i, _) => {
                inos.insert(*i);
            }
            Key::Dentry(p, name) => {
                inos.insert(*p);
                for v in [base, ours, theirs] {
                    if let Some(i) = v.named(*p, name)? {
                        inos.insert(i);
                        candidates.entry(i).or_default().insert((*p, name.clone()));
                    }
                }
            }
            Key::Cookie(..) => {}
        }
    }
    let mut nodes = BTreeMap::new();
    for ino in inos {
        // The name each side's record was last linked under (a hard link added on one side
        // renames the record: the old name must be looked up on every side too).
        let c = candidates.entry(ino).or_default();
        for v in [base, ours, theirs] {
            if let Some(i) = v.meta.get_inode_at(ino, v.epoch)? {
                c.insert((i.parent, i.name));
            }
        }
        for v in [base, ours, theirs] {
            v.more_names(ino, c)?;
        }
        let v = Versions { base: base.node(ino, c)?, ours: ours.node(ino, c)?, theirs: theirs.node(ino, c)? };
        if v.base.is_some() || v.ours.is_some() || v.theirs.is_some() {
            nodes.insert(ino, v);
        }
    }
    let base_root_entries = base.meta.readdir_at(ROOT_INO, 0, usize::MAX, base.epoch)?.len() as u64;
    Ok(MergeInput { nodes, base_files: ours.meta.usage()?.files, base_root_entries })
}

/// The home tree (live) as the planner asks about it. A read that fails is remembered and
/// makes [`plan_home`] fail: the planner must never take an unreadable name for a free one.
pub struct HomeTree<'a> {
    meta: &'a MetaStore,
    failed: std::sync::Mutex<Option<FsError>>,
}

impl<'a> HomeTree<'a> {
    pub fn new(meta: &'a MetaStore) -> Self {
        HomeTree { meta, failed: std::sync::Mutex::new(None) }
    }

    fn keep<T>(&self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert(FsError::Meta(format!("merge: {what}: {e}")));
                None
            }
        }
    }

    /// The first read that failed, if any.
    pub fn failure(&self) -> Option<FsError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl OursTree for HomeTree<'_> {
    fn entry(&self, parent: Ino, name: &[u8]) -> Option<(Ino, Kind)> {
        self.keep("look up an entry", self.meta.lookup(parent, name)).flatten().map(|d| (d.ino, d.kind))
    }

    fn parent_of(&self, dir: Ino) -> Option<Ino> {
        let i = self.keep("read a directory", self.meta.get_inode(dir)).flatten()?;
        Some(i.parent).filter(|p| *p != 0 && dir != ROOT_INO)
    }

    fn entries(&self, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
        let es = self.keep("list a directory", self.meta.readdir(dir, 0, usize::MAX)).unwrap_or_default();
        es.into_iter().map(|e| (e.name, e.dentry.ino)).collect()
    }
}

/// Plan against the live home tree `home`; a failed read of it fails the plan.
pub fn plan_home(input: &MergeInput, home: &MetaStore, opts: &super::MergeOptions) -> Result<super::MergePlan> {
    let tree = HomeTree::new(home);
    let plan = super::plan::plan(input, &tree, opts);
    match tree.failure() {
        Some(e) => Err(e),
        None => Ok(plan),
    }
}

/// The first inode number a conflict copy may take in the home volume.
pub fn first_free_ino(home: &MetaStore) -> Result<Ino> {
    let (lo, hi) = crate::volume::ino_range(home)?;
    Ok((home.max_ino_below(hi)? + 1).max(lo))
}

/// Ours as the live home tree.
pub fn live(meta: &MetaStore) -> View<'_> {
    View { meta, epoch: LIVE }
}
