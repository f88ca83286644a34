//! The pure merge planner: [`plan`] takes the three versions of every touched inode and
//! returns a [`MergePlan`]. Steps, in order:
//!
//! 1. **Per inode** ([`Planner::merge_node`]): a side changed it if its version differs from
//!    the base (atime and ctime aside). One side changed: take it. Both: equal → no-op;
//!    deleted vs modified → the modification; otherwise dimension by dimension (content,
//!    mode, owner, mtime, each xattr, the set of names), conflicts per the decision table in
//!    [`super`].
//! 2. **Directories that must stay** ([`Planner::keep_needed_dirs`]): a directory one side
//!    deleted comes back when the merged tree still puts or keeps entries in it.
//! 3. **No cycles** ([`Planner::break_cycles`]): a directory whose merged parent chain loops
//!    back to it keeps ours' placement.
//! 4. **Names** ([`Planner::place_names`]): every name the merge adds is checked against the
//!    home tree and the other added names; a taken name is resolved by the table (identical
//!    files collapse, the directory keeps the path, theirs gets a conflict name) and conflict
//!    copies get conflict names. Nothing is ever overwritten.
//! 5. **Mass delete** ([`Planner::check_mass_delete`]).

use super::names::conflict_name;
use super::{
    Conflict, ConflictKind, Copy, EntryMove, Link, MergeInput, MergeOptions, MergePlan, Node, OursTree, Policy,
    Side, Versions,
};
use crate::types::{Ino, Kind, ROOT_INO};
use std::collections::{BTreeMap, BTreeSet};

/// Plan the merge of theirs into ours.
pub fn plan(input: &MergeInput, tree: &dyn OursTree, opts: &MergeOptions) -> MergePlan {
    let mut p = Planner {
        input,
        tree,
        opts,
        result: BTreeMap::new(),
        pending: Vec::new(),
        copies: Vec::new(),
        moves: Vec::new(),
        conflicts: Vec::new(),
        notes: Vec::new(),
        next_ino: opts.first_ino,
    };
    for (ino, v) in &input.nodes {
        let r = p.merge_node(*ino, v);
        p.result.insert(*ino, r);
    }
    p.keep_needed_dirs();
    p.break_cycles();
    p.place_names();
    let refused = p.check_mass_delete();
    p.finish(refused)
}

/// A conflict copy waiting for its name: it goes next to `want`, under a conflict name.
struct Pending {
    node: Node,
    from: Ino,
    side: Side,
    want: Link,
    conflict: usize,
}

struct Planner<'a> {
    input: &'a MergeInput,
    tree: &'a dyn OursTree,
    opts: &'a MergeOptions,
    /// The merged state of every touched inode.
    result: BTreeMap<Ino, Option<Node>>,
    pending: Vec<Pending>,
    copies: Vec<Copy>,
    moves: Vec<EntryMove>,
    conflicts: Vec<Conflict>,
    /// Lines about changes that needed no conflict (identical files collapsed).
    notes: Vec<(Ino, String)>,
    next_ino: Ino,
}

fn same_opt(a: Option<&Node>, b: Option<&Node>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

/// Three-way pick of one value: `Some` the merged value, `None` a conflict.
fn pick<T: PartialEq + Clone>(b: &T, o: &T, t: &T) -> Option<T> {
    if o == b || o == t {
        Some(t.clone())
    } else if t == b {
        Some(o.clone())
    } else {
        None
    }
}

/// The merged inode with home's form of its content when the bytes are home's (a small file
/// stays inline at home rather than taking the block a layer published for the same bytes).
fn home_form(mut r: Node, o: Option<&Node>) -> Node {
    if let Some(o) = o.filter(|o| o.kind == r.kind && o.content == r.content) {
        r.content = o.content.clone();
    }
    r
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Planner<'_> {
    fn conflict(&mut self, kind: ConflictKind, ino: Ino, at: Option<Link>, detail: String) -> usize {
        self.conflicts.push(Conflict { kind, ino, at, copy: None, detail });
        self.conflicts.len() - 1
    }

    fn alloc_ino(&mut self) -> Ino {
        let i = self.next_ino;
        self.next_ino += 1;
        i
    }

    /// A copy of `src` (one side's version of inode `from`) to be named after `want`.
    fn copy(&mut self, src: &Node, side: Side, want: Link, conflict: usize) {
        let mut node = src.clone();
        node.ino = self.alloc_ino();
        node.links = BTreeSet::new();
        node.nlink = 1;
        self.pending.push(Pending { node, from: src.ino, side, want, conflict });
    }

    fn merge_node(&mut self, ino: Ino, v: &Versions) -> Option<Node> {
        let (b, o, t) = (v.base.as_ref(), v.ours.as_ref(), v.theirs.as_ref());
        let merged = match (same_opt(o, b), same_opt(t, b)) {
            (_, true) => o.cloned(),
            (true, false) => t.cloned(),
            (false, false) => self.both_changed(ino, b, o, t),
        };
        merged.map(|r| home_form(r, o))
    }

    fn both_changed(&mut self, ino: Ino, b: Option<&Node>, o: Option<&Node>, t: Option<&Node>) -> Option<Node> {
        match (b, o, t) {
            (_, None, None) => None,
            (_, Some(o), Some(t)) if o.same(t) => Some(o.clone()),
            (Some(_), None, Some(t)) => {
                let at = t.links.iter().next().cloned();
                self.conflict(ConflictKind::DeleteModify, ino, at, "deleted at home, modified on the branch: the branch's version is kept".into());
                Some(t.clone())
            }
            (Some(_), Some(o), None) => {
                let at = o.links.iter().next().cloned();
                self.conflict(ConflictKind::DeleteModify, ino, at, "deleted on the branch, modified at home: the home version is kept".into());
                Some(o.clone())
            }
            (None, Some(o), Some(t)) => {
                let at = o.links.iter().next().cloned();
                let c = self.conflict(ConflictKind::InodeClash, ino, at, "created on both sides under one inode number: the branch's file is kept as a copy".into());
                if let (Some(want), false) = (t.links.iter().next().cloned(), t.kind == Kind::Dir) {
                    self.copy(t, Side::Theirs, want, c);
                }
                Some(o.clone())
            }
            (Some(b), Some(o), Some(t)) => Some(self.merge_dims(b, o, t)),
            (None, None, Some(_)) | (None, Some(_), None) => unreachable!("a side that did not change equals the base"),
        }
    }

    /// Both sides changed an inode that exists on all three: dimension by dimension.
    fn merge_dims(&mut self, b: &Node, o: &Node, t: &Node) -> Node {
        let mut r = o.clone();
        let ino = o.ino;
        let at = o.links.iter().next().cloned();
        let policy = self.opts.policy;
        let theirs_wins_meta = policy != Policy::Ours;
        // Content.
        let mut content_conflict = false;
        let mut copy_theirs = false;
        r.content = match pick(&b.content, &o.content, &t.content) {
            Some(c) => c,
            None => {
                content_conflict = true;
                match policy {
                    Policy::KeepBoth => {
                        copy_theirs = true;
                        o.content.clone()
                    }
                    Policy::Theirs => {
                        self.conflict(ConflictKind::Content, ino, at.clone(), "content changed on both sides: the branch's version is kept, the home version is discarded (it is in the pre-merge snapshot)".into());
                        t.content.clone()
                    }
                    Policy::Ours => {
                        self.conflict(ConflictKind::Content, ino, at.clone(), "content changed on both sides: the home version is kept, the branch's version is discarded (it is in the branch)".into());
                        o.content.clone()
                    }
                }
            }
        };
        // Mode, owner, xattrs: field by field, theirs wins a field changed on both.
        let mut fields: Vec<String> = Vec::new();
        r.perm = pick(&b.perm, &o.perm, &t.perm).unwrap_or_else(|| {
            fields.push("mode".into());
            if theirs_wins_meta { t.perm } else { o.perm }
        });
        r.uid = pick(&(b.uid, b.gid), &(o.uid, o.gid), &(t.uid, t.gid)).map_or_else(
            || {
                fields.push("owner".into());
                if theirs_wins_meta { t.uid } else { o.uid }
            },
            |x| x.0,
        );
        r.gid = pick(&(b.uid, b.gid), &(o.uid, o.gid), &(t.uid, t.gid)).map_or(if theirs_wins_meta { t.gid } else { o.gid }, |x| x.1);
        let keys: BTreeSet<&Vec<u8>> = b.xattrs.keys().chain(o.xattrs.keys()).chain(t.xattrs.keys()).collect();
        r.xattrs = BTreeMap::new();
        for k in keys {
            let (bv, ov, tv) = (b.xattrs.get(k), o.xattrs.get(k), t.xattrs.get(k));
            let v = pick(&bv, &ov, &tv).unwrap_or_else(|| {
                fields.push(format!("xattr {}", show(k)));
                if theirs_wins_meta { tv } else { ov }
            });
            if let Some(v) = v {
                r.xattrs.insert(k.clone(), v.clone());
            }
        }
        // Times follow the content; directories take the newest.
        r.mtime = match pick(&b.mtime, &o.mtime, &t.mtime) {
            Some(m) => m,
            None if o.kind == Kind::Dir => o.mtime.max(t.mtime),
            None if content_conflict => {
                if policy == Policy::Theirs { t.mtime } else { o.mtime }
            }
            None if o.content == t.content => o.mtime.max(t.mtime),
            None => {
                fields.push("mtime".into());
                if theirs_wins_meta { t.mtime } else { o.mtime }
            }
        };
        r.atime = o.atime.max(t.atime);
        r.ctime = o.ctime.max(t.ctime);
        if !fields.is_empty() {
            let winner = if theirs_wins_meta { "the branch's" } else { "the home" };
            self.conflict(ConflictKind::Metadata, ino, at.clone(), format!("{} changed on both sides: {winner} value is kept", fields.join(", ")));
        }
        // Names.
        let mut rename_copies = Vec::new();
        r.links = match pick(&b.links, &o.links, &t.links) {
            Some(l) => l,
            None => {
                let theirs_new: Vec<Link> = t.links.iter().filter(|l| !o.links.contains(*l) && !b.links.contains(*l)).cloned().collect();
                if o.kind == Kind::Dir || theirs_new.is_empty() {
                    let names: Vec<String> = t.links.iter().map(|l| show(&l.1)).collect();
                    self.conflict(ConflictKind::Rename, ino, at.clone(), format!("renamed on both sides: the home name is kept (the branch named it {})", names.join(", ")));
                } else {
                    rename_copies = theirs_new;
                }
                o.links.clone()
            }
        };
        if o.kind != Kind::Dir {
            let added = r.links.difference(&o.links).count() as u32;
            let removed = o.links.difference(&r.links).count() as u32;
            r.nlink = (o.nlink + added).saturating_sub(removed);
        }
        // Copies of theirs: at each of its new names (a rename conflict), else next to ours.
        if !rename_copies.is_empty() {
            for want in rename_copies {
                let c = self.conflict(ConflictKind::Rename, ino, at.clone(), "renamed on both sides: the home name is kept; a copy is kept at the branch's name".into());
                // The copy holds the merged file (theirs' content when the content conflicts too).
                let mut src = r.clone();
                if copy_theirs {
                    src.content = t.content.clone();
                    src.mtime = t.mtime;
                }
                self.copy(&src, Side::Theirs, want, c);
            }
        } else if copy_theirs {
            // Next to the merged file; a file whose every known name went goes next to a name
            // it had; failing all, in the root under its inode number.
            let known = r.links.iter().chain(&o.links).chain(&t.links).chain(&b.links).next().cloned();
            let want = known.unwrap_or_else(|| (ROOT_INO, format!("inode-{ino}").into_bytes()));
            let c = self.conflict(ConflictKind::Content, ino, Some(want.clone()), "content changed on both sides: the home version keeps the path, the branch's version is kept as a copy".into());
            self.copy(t, Side::Theirs, want, c);
        }
        r
    }

    /// The versions of a touched inode.
    fn versions(&self, ino: Ino) -> Option<&Versions> {
        self.input.nodes.get(&ino)
    }

    /// Bring back a touched directory that the merge would delete: the side that still has it
    /// (ours first), else the base.
    fn keep_dir(&mut self, d: Ino, why: &str) {
        let Some(v) = self.versions(d) else { return };
        let Some(node) = v.ours.clone().or_else(|| v.theirs.clone()).or_else(|| v.base.clone()) else { return };
        let at = node.links.iter().next().cloned();
        self.result.insert(d, Some(node));
        self.conflict(ConflictKind::DirectoryKept, d, at, format!("directory deleted on one side is kept: {why}"));
    }

    /// The merged entries a deleted directory would still hold in the home tree.
    fn keeps_entries(&self, d: Ino) -> bool {
        let home = self.versions(d).and_then(|v| v.ours.as_ref()).is_some();
        if !home {
            return false;
        }
        self.tree.entries(d).into_iter().any(|(name, ino)| match self.result.get(&ino) {
            Some(None) => false,
            Some(Some(n)) => n.links.contains(&(d, name)),
            None => true,
        })
    }

    fn keep_needed_dirs(&mut self) {
        loop {
            let mut need: Vec<(Ino, &'static str)> = Vec::new();
            let parents = self.result.values().flatten().flat_map(|n| n.links.iter().map(|l| l.0));
            let wanted = self.pending.iter().map(|p| p.want.0);
            for p in parents.chain(wanted) {
                if matches!(self.result.get(&p), Some(None)) {
                    need.push((p, "the merged tree puts entries in it"));
                }
            }
            let gone: Vec<Ino> = self.result.iter().filter(|(_, r)| r.is_none()).map(|(i, _)| *i).collect();
            for d in gone {
                let is_dir = self.versions(d).and_then(|v| v.ours.as_ref()).is_some_and(|n| n.kind == Kind::Dir);
                if is_dir && self.keeps_entries(d) {
                    need.push((d, "it still holds home entries"));
                }
            }
            if need.is_empty() {
                return;
            }
            for (d, why) in need {
                if matches!(self.result.get(&d), Some(None)) {
                    self.keep_dir(d, why);
                }
            }
        }
    }

    /// The parent of directory `d` in the merged tree.
    fn merged_parent(&self, d: Ino) -> Option<Ino> {
        match self.result.get(&d) {
            Some(Some(n)) => n.links.iter().next().map(|l| l.0),
            Some(None) => None,
            None => self.tree.parent_of(d),
        }
    }

    /// Whether walking up from `d` comes back to `d`.
    fn loops(&self, d: Ino) -> bool {
        let mut cur = self.merged_parent(d);
        for _ in 0..100_000 {
            match cur {
                None => return false,
                Some(p) if p == ROOT_INO => return false,
                Some(p) if p == d => return true,
                Some(p) => cur = self.merged_parent(p),
            }
        }
        true
    }

    fn break_cycles(&mut self) {
        let moved: Vec<Ino> = self
            .result
            .iter()
            .filter_map(|(i, r)| r.as_ref().map(|n| (*i, n)))
            .filter(|(i, n)| n.kind == Kind::Dir && self.versions(*i).and_then(|v| v.ours.as_ref()).is_none_or(|o| o.links != n.links))
            .map(|(i, _)| i)
            .collect();
        for d in moved {
            if !self.loops(d) {
                continue;
            }
            let v = self.versions(d).expect("touched");
            let Some(home) = v.ours.clone().or_else(|| v.base.clone()) else { continue };
            let links = home.links.clone();
            if let Some(Some(n)) = self.result.get_mut(&d) {
                n.links = links.clone();
            }
            self.conflict(ConflictKind::Cycle, d, links.into_iter().next(), "moved on both sides into each other: the home placement is kept".into());
        }
    }

    /// Who holds `link` in the merged tree so far.
    fn occupant(&self, link: &Link, removed: &BTreeSet<Link>, claimed: &BTreeMap<Link, (Ino, Kind)>) -> Option<(Ino, Kind)> {
        if let Some(c) = claimed.get(link) {
            return Some(*c);
        }
        if removed.contains(link) {
            return None;
        }
        self.tree.entry(link.0, &link.1)
    }

    fn free_name(&self, want: &Link, removed: &BTreeSet<Link>, claimed: &BTreeMap<Link, (Ino, Kind)>) -> Link {
        let (branch, stamp) = (&self.opts.branch, &self.opts.stamp);
        let name = conflict_name(&want.1, branch, stamp, &mut |n| self.occupant(&(want.0, n.to_vec()), removed, claimed).is_some());
        (want.0, name)
    }

    fn home_links(&self, ino: Ino) -> BTreeSet<Link> {
        self.versions(ino).and_then(|v| v.ours.as_ref()).map(|o| o.links.clone()).unwrap_or_default()
    }

    fn place_names(&mut self) {
        let mut removed: BTreeSet<Link> = BTreeSet::new();
        let mut adds: Vec<(Link, Ino, Kind)> = Vec::new();
        for (ino, r) in &self.result {
            let home = self.home_links(*ino);
            let now: BTreeSet<Link> = r.as_ref().map(|n| n.links.clone()).unwrap_or_default();
            removed.extend(home.difference(&now).cloned());
            if let Some(n) = r {
                adds.extend(now.difference(&home).map(|l| (l.clone(), *ino, n.kind)));
            }
        }
        let mut claimed: BTreeMap<Link, (Ino, Kind)> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<(Link, Ino, Kind)> = adds.into();
        while let Some((link, ino, kind)) = queue.pop_front() {
            if let Some((from, into)) = self.place(link, ino, kind, &removed, &mut claimed) {
                self.fold_into(from, into, &mut queue, &mut claimed);
            }
        }
        for mut p in std::mem::take(&mut self.pending) {
            let link = self.free_name(&p.want, &removed, &claimed);
            claimed.insert(link.clone(), (p.node.ino, p.node.kind));
            p.node.links.insert(link.clone());
            self.conflicts[p.conflict].copy = Some((p.node.ino, link));
            self.copies.push(Copy { node: p.node, from: p.from, side: p.side });
        }
    }

    /// Whether the merged files `a` and `b` hold the same bytes.
    fn identical(&self, a: Ino, b: Ino) -> bool {
        match (self.result.get(&a), self.result.get(&b)) {
            (Some(Some(x)), Some(Some(y))) => x.kind == y.kind && x.content == y.content,
            _ => false,
        }
    }

    /// Add `link` for `ino`, resolving a taken name per the table.
    /// Returns `(theirs, ours)` when a directory new to home folds into the home directory
    /// of the same name (its entries go there).
    fn place(&mut self, link: Link, ino: Ino, kind: Kind, removed: &BTreeSet<Link>, claimed: &mut BTreeMap<Link, (Ino, Kind)>) -> Option<(Ino, Ino)> {
        let Some((oi, okind)) = self.occupant(&link, removed, claimed).filter(|(oi, _)| *oi != ino) else {
            claimed.insert(link, (ino, kind));
            return None;
        };
        let only_new = self.home_links(ino).is_empty()
            && matches!(self.result.get(&ino), Some(Some(n)) if n.links.len() == 1);
        if kind != Kind::Dir && only_new && self.identical(ino, oi) {
            self.result.insert(ino, None);
            self.notes.push((oi, format!("{}: created on both sides with the same content: one file", show(&link.1))));
            return None;
        }
        let created_by_theirs = self.versions(ino).is_some_and(|v| v.base.is_none() && v.ours.is_none());
        if kind == Kind::Dir && okind == Kind::Dir && only_new && created_by_theirs {
            self.result.insert(ino, None);
            self.notes.push((oi, format!("{}: directory created on both sides: one directory, the entries of both", show(&link.1))));
            return Some((ino, oi));
        }
        let to = self.free_name(&link, removed, claimed);
        if kind == Kind::Dir && okind != Kind::Dir {
            claimed.insert(link.clone(), (ino, kind));
            claimed.insert(to.clone(), (oi, okind));
            self.move_entry(oi, okind, &link, &to);
            let c = self.conflict(ConflictKind::FileVsDir, oi, Some(link), "a file and a directory at one path: the directory keeps it, the file gets the conflict name".into());
            self.conflicts[c].copy = Some((oi, to));
            return None;
        }
        claimed.insert(to.clone(), (ino, kind));
        if let Some(Some(n)) = self.result.get_mut(&ino) {
            n.links.remove(&link);
            n.links.insert(to.clone());
        }
        let (ck, why) = if okind == Kind::Dir && kind != Kind::Dir {
            (ConflictKind::FileVsDir, "a file and a directory at one path: the directory keeps it, the branch's file gets the conflict name")
        } else {
            (ConflictKind::Name, "two different files at one path: the home one keeps it, the branch's gets the conflict name")
        };
        let c = self.conflict(ck, ino, Some(link), why.into());
        self.conflicts[c].copy = Some((ino, to));
        None
    }

    /// Theirs' new directory `from` folds into home's `into`: its entries (still to place)
    /// and the copies wanted in it go there.
    fn fold_into(
        &mut self,
        from: Ino,
        into: Ino,
        queue: &mut std::collections::VecDeque<(Link, Ino, Kind)>,
        claimed: &mut BTreeMap<Link, (Ino, Kind)>,
    ) {
        // Entries already placed in `from` are placed again, in `into`.
        let placed: Vec<Link> = claimed.keys().filter(|l| l.0 == from).cloned().collect();
        for link in placed {
            let (ino, kind) = claimed.remove(&link).expect("listed");
            queue.push_back((link, ino, kind));
        }
        for (link, ino, _) in queue.iter_mut().filter(|(l, _, _)| l.0 == from) {
            let moved = (into, link.1.clone());
            if let Some(Some(n)) = self.result.get_mut(ino) {
                n.links.remove(link);
                n.links.insert(moved.clone());
            }
            *link = moved;
        }
        for p in self.pending.iter_mut().filter(|p| p.want.0 == from) {
            p.want.0 = into;
        }
    }

    /// The home entry `from` of `ino` moves to `to`.
    fn move_entry(&mut self, ino: Ino, kind: Kind, from: &Link, to: &Link) {
        match self.result.get_mut(&ino) {
            Some(Some(n)) => {
                n.links.remove(from);
                n.links.insert(to.clone());
            }
            Some(None) => {}
            None => self.moves.push(EntryMove { ino, kind, from: from.clone(), to: to.clone() }),
        }
    }

    /// Refuse a branch that deletes too much of the tree (a wiped or re-cloned node).
    fn check_mass_delete(&self) -> Option<String> {
        if self.opts.confirm {
            return None;
        }
        let mut deleted = 0u64;
        let (mut root_removed, mut root_added) = (0u64, 0u64);
        let in_root = |n: &Node| n.links.iter().filter(|l| l.0 == ROOT_INO).cloned().collect::<BTreeSet<Link>>();
        for v in self.input.nodes.values() {
            let b = v.base.as_ref().map(in_root).unwrap_or_default();
            let t = v.theirs.as_ref().map(in_root).unwrap_or_default();
            root_removed += b.difference(&t).count() as u64;
            root_added += t.difference(&b).count() as u64;
            if v.base.as_ref().is_some_and(|b| b.kind != Kind::Dir) && v.theirs.is_none() {
                deleted += 1;
            }
        }
        let base = self.input.base_files;
        if base > 0 && deleted as f64 * 100.0 > self.opts.max_delete_pct * base as f64 {
            return Some(format!(
                "the branch deletes {deleted} of {base} files ({:.0}%, more than --max-delete {}%): nothing was applied; check the branch, then merge again with --confirm",
                deleted as f64 * 100.0 / base as f64,
                self.opts.max_delete_pct
            ));
        }
        let roots = self.input.base_root_entries;
        if roots > 0 && root_removed >= roots && root_added == 0 {
            return Some("the branch empties the root directory: nothing was applied; check the branch, then merge again with --confirm".into());
        }
        None
    }

    fn finish(self, refused: Option<String>) -> MergePlan {
        let mut plan = MergePlan { refused, copies: self.copies, moves: self.moves, conflicts: self.conflicts, ..Default::default() };
        for (ino, r) in self.result {
            let v = &self.input.nodes[&ino];
            let home = v.ours.clone();
            let unchanged = match (&r, &home) {
                (Some(a), Some(b)) => a.same(b) && a.nlink == b.nlink,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let what = describe(home.as_ref(), r.as_ref());
            // A directory whose only change is its times changed because of its entries: those
            // are reported themselves.
            let dir_times = r.as_ref().is_some_and(|n| n.kind == Kind::Dir) && what == "modified: times";
            if !same_opt(v.theirs.as_ref(), v.base.as_ref()) && !dir_times {
                plan.taken.push((ino, what));
            }
            plan.nodes.insert(ino, r);
            plan.ours.insert(ino, home);
        }
        plan.taken.extend(self.notes);
        plan
    }
}

/// What differs from `from` to `to`, in words.
pub fn describe(from: Option<&Node>, to: Option<&Node>) -> String {
    let (a, b) = match (from, to) {
        (None, Some(_)) => return "created".into(),
        (Some(_), None) => return "deleted".into(),
        (None, None) => return "unchanged".into(),
        (Some(a), Some(b)) => (a, b),
    };
    let mut what = Vec::new();
    if a.content != b.content {
        what.push("content");
    }
    if a.links != b.links {
        what.push("renamed");
    }
    if a.perm != b.perm {
        what.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push("owner");
    }
    if a.xattrs != b.xattrs {
        what.push("xattrs");
    }
    if a.mtime != b.mtime && what.is_empty() {
        what.push("times");
    }
    if what.is_empty() {
        what.push("links");
    }
    format!("modified: {}", what.join(", "))
}
