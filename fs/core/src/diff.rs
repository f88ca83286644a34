//! What changed between two epochs, read from the change journal (invariant 3).
//!
//! Only the records the journal names for the epochs `(from, to]` are read: the directory
//! entries added or removed (added, deleted and renamed paths) and the inodes, extents and
//! xattrs written (modified files, with the byte ranges of the blocks whose content differs).
//! The tree is never walked; paths are rebuilt by following each inode's `parent` and `name`.

use crate::error::Result;
use crate::meta::{Key, MetaStore};
use crate::types::{Dentry, Extent, Inode, Ino, Kind, ROOT_INO};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Deleted,
    Modified,
    Renamed,
}

impl ChangeKind {
    /// The one-letter code of the human listing.
    pub fn code(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Deleted => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Renamed => 'R',
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    pub change: ChangeKind,
    /// The path at `to` (at `from` for deleted paths).
    pub path: String,
    /// Renamed paths: the path at `from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    pub kind: String,
    /// Modified files: changed byte ranges `[start, end)` of the file at `to` (bytes past the
    /// end of one side count as changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<(u64, u64)>,
    /// Modified: what changed besides content (`size`, `mode`, `owner`, `times`, `xattrs`,
    /// `target`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DiffReport {
    pub from_epoch: u64,
    /// None: the live tree.
    pub to_epoch: Option<u64>,
    /// Journal rows read: the cost of the diff.
    pub journal_rows: u64,
    pub entries: Vec<DiffEntry>,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "chardev",
        Kind::BlockDev => "blockdev",
    }
}

struct Paths<'m> {
    meta: &'m MetaStore,
    cache: HashMap<(Ino, u64), String>,
}

/// The live paths of `inos`, rebuilt from each inode's `parent` and `name` as diffs do (the
/// tree is not walked).
pub fn live_paths(meta: &MetaStore, inos: &[Ino]) -> Result<Vec<String>> {
    let mut paths = Paths { meta, cache: HashMap::new() };
    inos.iter().map(|i| paths.of(*i, crate::meta::LIVE)).collect()
}

impl Paths<'_> {
    /// The path of directory or file `ino` at epoch `at`, from its parent chain.
    fn of(&mut self, ino: Ino, at: u64) -> Result<String> {
        if ino == ROOT_INO {
            return Ok(String::new());
        }
        if let Some(p) = self.cache.get(&(ino, at)) {
            return Ok(p.clone());
        }
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut path = None;
        for _ in 0..4096 {
            if cur == ROOT_INO {
                break;
            }
            if let Some(p) = self.cache.get(&(cur, at)) {
                path = Some(p.clone());
                break;
            }
            match self.meta.get_inode_at(cur, at)? {
                Some(i) => {
                    parts.push(String::from_utf8_lossy(&i.name).into_owned());
                    cur = i.parent;
                }
                None => {
                    parts.push(format!("<inode {cur}>"));
                    break;
                }
            }
        }
        let mut out = path.unwrap_or_default();
        for p in parts.iter().rev() {
            out.push('/');
            out.push_str(p);
        }
        self.cache.insert((ino, at), out.clone());
        Ok(out)
    }

    fn entry(&mut self, parent: Ino, name: &[u8], at: u64) -> Result<String> {
        Ok(format!("{}/{}", self.of(parent, at)?, String::from_utf8_lossy(name)))
    }
}

/// Merge overlapping or touching ranges.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// Byte ranges where two inline contents differ (bytes past the shorter one included).
fn inline_ranges(a: &[u8], b: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..a.len().max(b.len()) {
        let differs = a.get(i) != b.get(i);
        match (differs, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s as u64, i as u64));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s as u64, a.len().max(b.len()) as u64));
    }
    out
}

fn content_ranges(
    meta: &MetaStore,
    a: &Inode,
    b: &Inode,
    blocks: &BTreeSet<u64>,
    from: u64,
    to: u64,
    bs: u64,
) -> Result<Vec<(u64, u64)>> {
    let end = a.size.max(b.size);
    let mut ranges = Vec::new();
    match (&a.inline, &b.inline) {
        (Some(x), Some(y)) => return Ok(inline_ranges(x, y)),
        (Some(_), None) | (None, Some(_)) => return Ok(vec![(0, end)]),
        (None, None) => {}
    }
    for &block in blocks {
        let ea = meta.get_extent_at(a.ino, block, from)?;
        let eb = meta.get_extent_at(b.ino, block, to)?;
        let same = match (ea, eb) {
            (Some(Extent::Sealed { id: x, len: lx }), Some(Extent::Sealed { id: y, len: ly })) => x == y && lx == ly,
            (None, None) => true,
            _ => false,
        };
        if !same {
            ranges.push((block * bs, ((block + 1) * bs).min(end)));
        }
    }
    if a.size != b.size {
        ranges.push((a.size.min(b.size), end));
    }
    Ok(merge(ranges))
}

fn attr_changes(a: &Inode, b: &Inode, xattrs: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.size != b.size && a.kind != Kind::Dir {
        out.push("size");
    }
    if a.perm != b.perm {
        out.push("mode");
    }
    if a.uid != b.uid || a.gid != b.gid {
        out.push("owner");
    }
    if a.target != b.target {
        out.push("target");
    }
    if xattrs {
        out.push("xattrs");
    }
    if a.mtime != b.mtime && a.kind != Kind::Dir {
        out.push("times");
    }
    out
}

/// The changes from epoch `from` to epoch `to` (use [`crate::meta::LIVE`] for the live tree).
pub fn diff(meta: &MetaStore, from: u64, to: u64, block_size: u64) -> Result<DiffReport> {
    let mut names: BTreeSet<(Ino, Vec<u8>)> = BTreeSet::new();
    let mut inodes: BTreeMap<Ino, (BTreeSet<u64>, bool)> = BTreeMap::new();
    let mut rows = 0u64;
    meta.changes(from, to, &mut |c| {
        rows += 1;
        match c.key {
            Key::Dentry(p, n) => {
                names.insert((p, n));
            }
            Key::Inode(i) => {
                inodes.entry(i).or_default();
            }
            Key::Extent(i, b) => {
                inodes.entry(i).or_default().0.insert(b);
            }
            Key::Xattr(i, _) => inodes.entry(i).or_default().1 = true,
            Key::Cookie(..) => {}
        }
        Ok(true)
    })?;
    let mut paths = Paths { meta, cache: HashMap::new() };
    let mut removed: Vec<(Ino, Vec<u8>, Dentry)> = Vec::new();
    let mut added: Vec<(Ino, Vec<u8>, Dentry)> = Vec::new();
    for (p, n) in names {
        let a = meta.lookup_at(p, &n, from)?;
        let b = meta.lookup_at(p, &n, to)?;
        match (a, b) {
            (Some(x), Some(y)) if x.ino == y.ino => {}
            (a, b) => {
                if let Some(x) = a {
                    removed.push((p, n.clone(), x));
                }
                if let Some(y) = b {
                    added.push((p, n, y));
                }
            }
        }
    }
    let mut entries = Vec::new();
    let mut touched: BTreeSet<Ino> = BTreeSet::new();
    let mut by_ino: HashMap<Ino, Vec<usize>> = HashMap::new();
    for (i, r) in removed.iter().enumerate() {
        by_ino.entry(r.2.ino).or_default().push(i);
    }
    let mut used = vec![false; removed.len()];
    for (p, n, d) in &added {
        let old = by_ino.get_mut(&d.ino).and_then(|v| v.pop());
        let path = paths.entry(*p, n, to)?;
        touched.insert(d.ino);
        match old {
            Some(i) => {
                used[i] = true;
                let (op, on, _) = &removed[i];
                entries.push(DiffEntry {
                    change: ChangeKind::Renamed,
                    path,
                    from_path: Some(paths.entry(*op, on, from)?),
                    kind: kind_name(d.kind).to_string(),
                    ranges: Vec::new(),
                    attrs: Vec::new(),
                });
                touched.remove(&d.ino);
            }
            None => entries.push(DiffEntry {
                change: ChangeKind::Added,
                path,
                from_path: None,
                kind: kind_name(d.kind).to_string(),
                ranges: Vec::new(),
                attrs: Vec::new(),
            }),
        }
    }
    for (i, (p, n, d)) in removed.iter().enumerate() {
        if !used[i] {
            touched.insert(d.ino);
            entries.push(DiffEntry {
                change: ChangeKind::Deleted,
                path: paths.entry(*p, n, from)?,
                from_path: None,
                kind: kind_name(d.kind).to_string(),
                ranges: Vec::new(),
                attrs: Vec::new(),
            });
        }
    }
    for (ino, (blocks, xattrs)) in inodes {
        if touched.contains(&ino) {
            continue;
        }
        let (Some(a), Some(b)) = (meta.get_inode_at(ino, from)?, meta.get_inode_at(ino, to)?) else { continue };
        if a.kind != b.kind || (b.nlink == 0 && b.kind != Kind::Dir) {
            continue;
        }
        let ranges =
            if b.kind == Kind::File { content_ranges(meta, &a, &b, &blocks, from, to, block_size)? } else { Vec::new() };
        let xattrs_changed = xattrs && {
            let na = meta.xattr_names_at(ino, from)?;
            let nb = meta.xattr_names_at(ino, to)?;
            na != nb || na.iter().try_fold(false, |acc, n| -> Result<bool> {
                Ok(acc || meta.get_xattr_at(ino, n, from)? != meta.get_xattr_at(ino, n, to)?)
            })?
        };
        let mut attrs = attr_changes(&a, &b, xattrs_changed);
        if b.kind == Kind::Dir {
            attrs.retain(|a| *a != "times");
        }
        if ranges.is_empty() && attrs.is_empty() {
            continue;
        }
        entries.push(DiffEntry {
            change: ChangeKind::Modified,
            path: paths.of(ino, to)?,
            from_path: None,
            kind: kind_name(b.kind).to_string(),
            ranges,
            attrs: attrs.into_iter().map(String::from).collect(),
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path).then(a.change.cmp(&b.change)));
    Ok(DiffReport { from_epoch: from, to_epoch: (to != crate::meta::LIVE).then_some(to), journal_rows: rows, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_inline_differences_are_exact() {
        assert_eq!(merge(vec![(5, 10), (0, 3), (3, 4), (9, 12), (20, 20)]), vec![(0, 4), (5, 12)]);
        assert_eq!(inline_ranges(b"hello world", b"hellO world!!"), vec![(4, 5), (11, 13)]);
        assert_eq!(inline_ranges(b"abc", b"abc"), vec![]);
    }
}
