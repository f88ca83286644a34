//! Three-way merge of a branch into the home tree (invariant 6: no lost writes).
//!
//! * [`plan`] — the pure planner: base / ours / theirs views of every inode either side
//!   touched in, a [`MergePlan`] out (the merged state of each inode, conflict copies, entry
//!   renames, the report). No I/O: the only thing it asks about the rest of the tree goes
//!   through [`OursTree`], a read-only lookup of the home tree.
//! * [`names`] — conflict copy names: `NAME.conflict-<branch>-<UTC>` with the extension kept
//!   last, never an existing path.
//! * [`collect`] — builds the planner's input from metadata stores (ours: the home volume's
//!   live tree and its change journal; base and theirs: any store read at an epoch).
//! * [`apply`] — turns a plan into one batch of metadata mutations against the home tree;
//!   directory attributes (nlink, mtime, readdir cookies) are recomputed from the merged
//!   entries, never taken from one side.
//!
//! # Decision table (per inode, using inode identity; per dimension)
//!
//! ```text
//! changed on one side only                         that side
//! changed on both, equal                           no-op
//! content differs on both                          ours at the path; theirs as NAME.conflict-B-T.EXT
//! deleted on one side, modified on the other       the modification wins (reported)
//! renamed on one side, modified on the other       rename applies, carries the modification
//! renamed differently on both (files)              ours keeps its name; theirs' content as a copy
//!                                                  at its new name's conflict name
//! renamed differently on both (directories)        ours keeps its name (entries merge anyway)
//! two inodes claim one name, same file content     one file (no copy)
//! a directory created on both sides, one name      one directory: home's, with both's entries
//! two inodes claim one name, otherwise             theirs gets the conflict name
//! file vs directory at one name                    the directory keeps the path
//! mode / owner / mtime / xattr on both, differ     field by field, theirs wins (reported)
//! a directory deleted on one side still holds      it is kept (the holder wins)
//!   entries the other side added or kept
//! directory moves that would form a cycle          ours' placement of the directory wins
//! theirs deletes > max_delete % or empties root    refused unless confirmed
//! ```
//!
//! `--policy theirs` / `ours` resolve content and metadata conflicts for one side without
//! a copy (the losing version stays in the pre-merge snapshot or in the branch, and is
//! reported as discarded); naming conflicts always keep both.

pub mod apply;
pub mod collect;
pub mod names;
pub mod plan;

use crate::types::{Extent, Ino, Kind, Timespec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One name of an inode: `(parent directory, name)`.
pub type Link = (Ino, Vec<u8>);

/// The bytes of a file (or a symlink's target, a device's number): what "content" means.
/// Two contents are equal when they hold the same bytes: a small file's bytes inline (home's
/// form) and as the block a push published for them (a layer's form) compare equal
/// ([`crate::record::content_id`]), so a form is never taken for a change.
#[derive(Clone, Debug, Default)]
pub struct Content {
    pub size: u64,
    pub inline: Option<Vec<u8>>,
    /// Every extent of the file (sealed extents compare by block id).
    pub extents: Vec<(u64, Extent)>,
    pub target: Vec<u8>,
    pub rdev: u32,
}

impl PartialEq for Content {
    fn eq(&self, other: &Content) -> bool {
        let id = |c: &Content| crate::record::content_id(c.inline.as_deref(), &c.extents);
        (self.size, &self.target, self.rdev) == (other.size, &other.target, other.rdev) && id(self) == id(other)
    }
}

impl Eq for Content {}

/// An inode as the planner sees it on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ino: Ino,
    pub kind: Kind,
    pub content: Content,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The names of it the merge knows of (every name for files linked once, and every
    /// name either side touched).
    pub links: BTreeSet<Link>,
    /// Its link count as stored on this side.
    pub nlink: u32,
}

impl Node {
    /// Equal ignoring atime and ctime (which every read or change moves).
    pub fn same(&self, other: &Node) -> bool {
        self.kind == other.kind
            && self.content == other.content
            && self.perm == other.perm
            && (self.uid, self.gid) == (other.uid, other.gid)
            && self.mtime == other.mtime
            && self.xattrs == other.xattrs
            && self.links == other.links
    }
}

/// One inode at the three points.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    pub base: Option<Node>,
    pub ours: Option<Node>,
    pub theirs: Option<Node>,
}

/// The kernel's caches of a mounted volume (fuser's notifier behind it, in the fuse crate):
/// what a merge changed behind the kernel's back is dropped from them.
pub trait KernelCache: Send + Sync {
    /// Forget the entry `name` of directory `parent` (a positive or negative dentry).
    fn invalidate_entry(&self, parent: Ino, name: &[u8]);
    /// Forget the attributes and cached data of `ino`.
    fn invalidate_inode(&self, ino: Ino);
}

/// What the planner needs to know of the home tree beyond the touched inodes.
pub trait OursTree {
    /// The entry `name` of directory `parent` in the home tree now.
    fn entry(&self, parent: Ino, name: &[u8]) -> Option<(Ino, Kind)>;
    /// The parent of directory `dir` in the home tree now (`None` for the root or unknown).
    fn parent_of(&self, dir: Ino) -> Option<Ino>;
    /// Every entry of `dir` in the home tree now (asked only of directories being deleted).
    fn entries(&self, dir: Ino) -> Vec<(Vec<u8>, Ino)>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Ours keeps the path, theirs gets a conflict copy (the default; invariant 6).
    #[default]
    KeepBoth,
    /// Theirs wins content and metadata conflicts; ours' version is reported as discarded.
    Theirs,
    /// Ours wins content and metadata conflicts; theirs' version is reported as discarded.
    Ours,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep-both" => Ok(Policy::KeepBoth),
            "theirs" => Ok(Policy::Theirs),
            "ours" => Ok(Policy::Ours),
            other => Err(format!("unknown merge policy {other:?} (keep-both, theirs or ours)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// The branch being merged (goes into conflict names).
    pub branch: String,
    /// UTC time of the merge as `YYYYMMDDTHHMMZ` (goes into conflict names).
    pub stamp: String,
    pub policy: Policy,
    /// Refuse when theirs deletes more than this percentage of the tree's files.
    pub max_delete_pct: f64,
    pub confirm: bool,
    /// The first inode number conflict copies may use (the home volume allocates).
    pub first_ino: Ino,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            branch: "branch".into(),
            stamp: "19700101T0000Z".into(),
            policy: Policy::KeepBoth,
            max_delete_pct: 50.0,
            confirm: false,
            first_ino: 1 << 38,
        }
    }
}

/// Everything the planner reads.
#[derive(Clone, Debug, Default)]
pub struct MergeInput {
    /// Every inode touched on either side since the base.
    pub nodes: BTreeMap<Ino, Versions>,
    /// Files in the tree (the mass-delete threshold is a share of it).
    pub base_files: u64,
    /// Entries of the root directory in the base tree.
    pub base_root_entries: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Ours,
    Theirs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// Content changed on both sides to different bytes.
    Content,
    /// Deleted on one side, modified on the other: the modification won.
    DeleteModify,
    /// Renamed to different names on both sides.
    Rename,
    /// Two inodes claim one name (created on both, or moved into one name).
    Name,
    /// A file and a directory at one name: the directory kept it.
    FileVsDir,
    /// The same attribute changed on both sides: one side won.
    Metadata,
    /// A directory deleted on one side was kept: the other side put or kept entries in it.
    DirectoryKept,
    /// Directory moves on both sides would have formed a cycle: ours' placement kept.
    Cycle,
    /// The same inode number was created on both sides (branch inode ranges collided).
    InodeClash,
}

/// One conflict, as the report lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub ino: Ino,
    /// The name that kept the path.
    pub at: Option<Link>,
    /// The conflict copy (or renamed entry) made, if any: its inode and name.
    pub copy: Option<(Ino, Link)>,
    pub detail: String,
}

/// A conflict copy: a new inode holding one side's version of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub node: Node,
    pub from: Ino,
    pub side: Side,
}

/// A home entry that must move to another name (a directory took its path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMove {
    pub ino: Ino,
    pub kind: Kind,
    pub from: Link,
    pub to: Link,
}

/// The plan: the merged state of every inode that changes, and how.
#[derive(Clone, Debug, Default)]
pub struct MergePlan {
    /// The merged state of each touched inode whose result differs from ours (`None`: it
    /// goes). Links are final (conflict names applied).
    pub nodes: BTreeMap<Ino, Option<Node>>,
    /// The home state of those inodes (what apply changes from).
    pub ours: BTreeMap<Ino, Option<Node>>,
    pub copies: Vec<Copy>,
    pub moves: Vec<EntryMove>,
    pub conflicts: Vec<Conflict>,
    /// One line per change taken from theirs (`ino`, what).
    pub taken: Vec<(Ino, String)>,
    /// Set when the merge must not be applied without `confirm`.
    pub refused: Option<String>,
}

impl MergePlan {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.copies.is_empty() && self.moves.is_empty()
    }
}

#[cfg(test)]
mod plan_tests;
