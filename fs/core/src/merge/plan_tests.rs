//! The decision table, one test per row (DESIGN.md's merge policy, invariant 6).

use super::plan::plan;
use super::*;
use crate::types::{Ino, Kind, Timespec, ROOT_INO};

const BRANCH: &str = "burst-n1";
const STAMP: &str = "20261201T0730Z";

fn node(ino: Ino, kind: Kind, parent: Ino, name: &str, bytes: &[u8]) -> Node {
    Node {
        ino,
        kind,
        content: Content { size: bytes.len() as u64, inline: Some(bytes.to_vec()), ..Default::default() },
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timespec { sec: 100, nsec: 0 },
        atime: Timespec::default(),
        ctime: Timespec::default(),
        xattrs: BTreeMap::new(),
        links: [(parent, name.as_bytes().to_vec())].into_iter().collect(),
        nlink: if kind == Kind::Dir { 2 } else { 1 },
    }
}

fn file(ino: Ino, name: &str, bytes: &[u8]) -> Node {
    node(ino, Kind::File, ROOT_INO, name, bytes)
}

fn dir(ino: Ino, parent: Ino, name: &str) -> Node {
    let mut d = node(ino, Kind::Dir, parent, name, b"");
    d.content = Content::default();
    d
}

fn with(mut n: Node, f: impl FnOnce(&mut Node)) -> Node {
    f(&mut n);
    n
}

/// The home tree: entries of the ours versions plus untouched extras.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<Link, (Ino, Kind)>,
    parents: BTreeMap<Ino, Ino>,
}

impl OursTree for Tree {
    fn entry(&self, parent: Ino, name: &[u8]) -> Option<(Ino, Kind)> {
        self.entries.get(&(parent, name.to_vec())).copied()
    }
    fn parent_of(&self, d: Ino) -> Option<Ino> {
        self.parents.get(&d).copied()
    }
    fn entries(&self, d: Ino) -> Vec<(Vec<u8>, Ino)> {
        self.entries.iter().filter(|(l, _)| l.0 == d).map(|(l, (i, _))| (l.1.clone(), *i)).collect()
    }
}

struct Case {
    input: MergeInput,
    tree: Tree,
}

impl Case {
    fn new() -> Case {
        Case { input: MergeInput { base_files: 100, base_root_entries: 10, ..Default::default() }, tree: Tree::default() }
    }

    /// An inode at base, ours, theirs (the home tree gets ours' names).
    fn add(mut self, b: Option<Node>, o: Option<Node>, t: Option<Node>) -> Case {
        let ino = b.as_ref().or(o.as_ref()).or(t.as_ref()).expect("some version").ino;
        if let Some(o) = &o {
            for l in &o.links {
                self.tree.entries.insert(l.clone(), (o.ino, o.kind));
                if o.kind == Kind::Dir {
                    self.tree.parents.insert(o.ino, l.0);
                }
            }
        }
        self.input.nodes.insert(ino, Versions { base: b, ours: o, theirs: t });
        self
    }

    /// An untouched home entry.
    fn home(mut self, parent: Ino, name: &str, ino: Ino, kind: Kind) -> Case {
        self.tree.entries.insert((parent, name.as_bytes().to_vec()), (ino, kind));
        if kind == Kind::Dir {
            self.tree.parents.insert(ino, parent);
        }
        self
    }

    fn plan(&self) -> MergePlan {
        self.plan_with(Policy::KeepBoth)
    }

    fn plan_with(&self, policy: Policy) -> MergePlan {
        let opts = MergeOptions { branch: BRANCH.into(), stamp: STAMP.into(), policy, first_ino: 1000, ..Default::default() };
        plan(&self.input, &self.tree, &opts)
    }
}

fn link(parent: Ino, name: &str) -> Link {
    (parent, name.as_bytes().to_vec())
}

fn result(p: &MergePlan, ino: Ino) -> Option<Node> {
    p.nodes.get(&ino).cloned().expect("the plan changes it")
}

#[test]
fn changed_on_one_side_takes_that_side() {
    let b = file(10, "a", b"base");
    let p = Case::new().add(Some(b.clone()), Some(b.clone()), Some(file(10, "a", b"theirs"))).plan();
    assert_eq!(result(&p, 10).unwrap().content.inline.as_deref(), Some(&b"theirs"[..]));
    assert!(p.conflicts.is_empty());
    assert_eq!(p.taken.len(), 1);
    // Changed only at home: nothing to apply.
    let p = Case::new().add(Some(b.clone()), Some(file(10, "a", b"ours")), Some(b)).plan();
    assert!(p.is_empty() && p.conflicts.is_empty());
}

#[test]
fn changed_on_both_to_identical_content_is_a_no_op() {
    let b = file(10, "a", b"base");
    let p = Case::new().add(Some(b), Some(file(10, "a", b"same")), Some(file(10, "a", b"same"))).plan();
    assert!(p.is_empty() && p.conflicts.is_empty(), "{p:?}");
}

#[test]
fn content_conflict_keeps_ours_and_copies_theirs_with_the_extension_last() {
    let b = node(10, Kind::File, ROOT_INO, "ckpt.pt", b"base");
    let o = node(10, Kind::File, ROOT_INO, "ckpt.pt", b"ours");
    let t = node(10, Kind::File, ROOT_INO, "ckpt.pt", b"theirs");
    let p = Case::new().add(Some(b), Some(o), Some(t)).plan();
    assert!(!p.nodes.contains_key(&10), "ours stays as it is");
    assert_eq!(p.copies.len(), 1);
    let copy = &p.copies[0];
    assert_eq!(copy.node.ino, 1000);
    assert_eq!(copy.node.content.inline.as_deref(), Some(&b"theirs"[..]));
    assert_eq!(copy.node.links, [link(ROOT_INO, "ckpt.conflict-burst-n1-20261201T0730Z.pt")].into_iter().collect());
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].kind, ConflictKind::Content);
    assert_eq!(p.conflicts[0].copy.as_ref().unwrap().0, 1000);
}

#[test]
fn conflict_copy_never_overwrites_an_existing_path() {
    let b = file(10, "m.bin", b"base");
    let p = Case::new()
        .add(Some(b), Some(file(10, "m.bin", b"o")), Some(file(10, "m.bin", b"t")))
        .home(ROOT_INO, "m.conflict-burst-n1-20261201T0730Z.bin", 50, Kind::File)
        .plan();
    assert_eq!(p.copies[0].node.links, [link(ROOT_INO, "m.conflict-burst-n1-20261201T0730Z-2.bin")].into_iter().collect());
}

#[test]
fn policies_theirs_and_ours_pick_a_side_without_a_copy() {
    let b = file(10, "a", b"base");
    let case = Case::new().add(Some(b), Some(file(10, "a", b"o")), Some(file(10, "a", b"t")));
    let p = case.plan_with(Policy::Theirs);
    assert!(p.copies.is_empty());
    assert_eq!(result(&p, 10).unwrap().content.inline.as_deref(), Some(&b"t"[..]));
    assert_eq!(p.conflicts[0].kind, ConflictKind::Content);
    let p = case.plan_with(Policy::Ours);
    assert!(p.copies.is_empty() && !p.nodes.contains_key(&10));
    assert_eq!(p.conflicts.len(), 1);
}

#[test]
fn delete_vs_modify_keeps_the_modification() {
    let b = file(10, "a", b"base");
    // Deleted at home, modified on the branch.
    let p = Case::new().add(Some(b.clone()), None, Some(file(10, "a", b"t"))).plan();
    assert_eq!(result(&p, 10).unwrap().content.inline.as_deref(), Some(&b"t"[..]));
    assert_eq!(p.conflicts[0].kind, ConflictKind::DeleteModify);
    // Deleted on the branch, modified at home: nothing to apply, reported.
    let p = Case::new().add(Some(b.clone()), Some(file(10, "a", b"o")), None).plan();
    assert!(p.is_empty());
    assert_eq!(p.conflicts[0].kind, ConflictKind::DeleteModify);
    // Deleted on the branch, untouched at home: deleted.
    let p = Case::new().add(Some(b.clone()), Some(b), None).plan();
    assert_eq!(result(&p, 10), None);
    assert!(p.conflicts.is_empty());
}

#[test]
fn rename_on_one_side_carries_the_other_sides_modification() {
    let d = dir(5, ROOT_INO, "d");
    let b = file(10, "a", b"base");
    let t = with(file(10, "a", b"base"), |n| n.links = [link(5, "moved")].into_iter().collect());
    let p = Case::new().add(Some(d.clone()), Some(d.clone()), Some(d)).add(Some(b), Some(file(10, "a", b"ours")), Some(t)).plan();
    let r = result(&p, 10).unwrap();
    assert_eq!(r.links, [link(5, "moved")].into_iter().collect());
    assert_eq!(r.content.inline.as_deref(), Some(&b"ours"[..]));
    assert!(p.conflicts.is_empty());
}

#[test]
fn renamed_differently_on_both_keeps_ours_and_a_copy_at_theirs() {
    let b = file(10, "a", b"x");
    let o = with(file(10, "a", b"x"), |n| n.links = [link(ROOT_INO, "o")].into_iter().collect());
    let t = with(file(10, "a", b"x"), |n| n.links = [link(ROOT_INO, "t.txt")].into_iter().collect());
    let p = Case::new().add(Some(b), Some(o), Some(t)).plan();
    assert!(!p.nodes.contains_key(&10), "ours keeps its name");
    assert_eq!(p.copies[0].node.links, [link(ROOT_INO, "t.conflict-burst-n1-20261201T0730Z.txt")].into_iter().collect());
    assert_eq!(p.conflicts[0].kind, ConflictKind::Rename);
}

#[test]
fn created_on_both_with_different_content_gives_a_conflict_name() {
    let p = Case::new().add(None, Some(file(10, "new", b"o")), None).add(None, None, Some(file(20, "new", b"t"))).plan();
    let r = result(&p, 20).unwrap();
    assert_eq!(r.links, [link(ROOT_INO, "new.conflict-burst-n1-20261201T0730Z")].into_iter().collect());
    assert_eq!(p.conflicts[0].kind, ConflictKind::Name);
}

#[test]
fn created_on_both_with_identical_content_is_one_file() {
    let p = Case::new().add(None, Some(file(10, "new", b"same")), None).add(None, None, Some(file(20, "new", b"same"))).plan();
    assert!(p.is_empty(), "{p:?}");
    assert!(p.conflicts.is_empty());
}

#[test]
fn two_new_names_in_one_directory_are_not_a_conflict() {
    let d = dir(5, ROOT_INO, "d");
    let p = Case::new()
        .add(Some(d.clone()), Some(with(d.clone(), |n| n.mtime.sec = 200)), Some(with(d, |n| n.mtime.sec = 300)))
        .add(None, Some(node(10, Kind::File, 5, "x", b"1")), None)
        .add(None, None, Some(node(20, Kind::File, 5, "y", b"2")))
        .plan();
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    assert_eq!(result(&p, 20).unwrap().links, [link(5, "y")].into_iter().collect());
    assert_eq!(result(&p, 5).unwrap().mtime.sec, 300, "a directory takes the newest mtime");
}

#[test]
fn directory_keeps_the_path_against_a_file() {
    // Theirs makes a directory where home made a file: the home file moves.
    let p = Case::new().add(None, Some(file(10, "x", b"o")), None).add(None, None, Some(dir(20, ROOT_INO, "x"))).plan();
    assert_eq!(result(&p, 20).unwrap().links, [link(ROOT_INO, "x")].into_iter().collect());
    assert_eq!(result(&p, 10).unwrap().links, [link(ROOT_INO, "x.conflict-burst-n1-20261201T0730Z")].into_iter().collect());
    assert_eq!(p.conflicts[0].kind, ConflictKind::FileVsDir);
    // Theirs makes a file where home made a directory: theirs' file gets the conflict name.
    let p = Case::new().add(None, Some(dir(10, ROOT_INO, "x")), None).add(None, None, Some(file(20, "x", b"t"))).plan();
    assert_eq!(result(&p, 20).unwrap().links, [link(ROOT_INO, "x.conflict-burst-n1-20261201T0730Z")].into_iter().collect());
    assert_eq!(p.conflicts[0].kind, ConflictKind::FileVsDir);
    // An untouched home file loses its path to theirs' directory: an entry move.
    let p = Case::new().home(ROOT_INO, "y", 30, Kind::File).add(None, None, Some(dir(20, ROOT_INO, "y"))).plan();
    assert_eq!(p.moves.len(), 1);
    assert_eq!(p.moves[0].to, link(ROOT_INO, "y.conflict-burst-n1-20261201T0730Z"));
}

#[test]
fn metadata_field_by_field_theirs_wins_the_same_field() {
    let b = file(10, "a", b"x");
    let o = with(b.clone(), |n| {
        n.perm = 0o600;
        n.uid = 7;
        n.xattrs.insert(b"user.o".to_vec(), b"1".to_vec());
    });
    let t = with(b.clone(), |n| {
        n.perm = 0o640;
        n.xattrs.insert(b"user.t".to_vec(), b"2".to_vec());
    });
    let p = Case::new().add(Some(b), Some(o), Some(t)).plan();
    let r = result(&p, 10).unwrap();
    assert_eq!(r.perm, 0o640, "same field on both: theirs");
    assert_eq!(r.uid, 7, "one side: that side");
    assert_eq!(r.xattrs.len(), 2);
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].kind, ConflictKind::Metadata);
    assert!(p.conflicts[0].detail.contains("mode"));
}

#[test]
fn a_deleted_directory_comes_back_for_a_modified_child() {
    let d = dir(5, ROOT_INO, "d");
    let f = node(10, Kind::File, 5, "f", b"base");
    // Home deleted d and f; the branch modified f.
    let p = Case::new().add(Some(d.clone()), None, Some(d.clone())).add(Some(f.clone()), None, Some(node(10, Kind::File, 5, "f", b"t"))).plan();
    assert!(result(&p, 5).is_some(), "d comes back");
    assert!(result(&p, 10).is_some());
    // The branch deleted d and f; home modified f: nothing to apply, both reported.
    let p = Case::new().add(Some(d.clone()), Some(d.clone()), None).add(Some(f.clone()), Some(node(10, Kind::File, 5, "f", b"o")), None).plan();
    assert!(p.is_empty(), "{:?}", p.nodes);
    assert!(p.conflicts.iter().any(|c| c.kind == ConflictKind::DirectoryKept));
    // The branch deleted d; home added a file in it.
    let p = Case::new().add(Some(d.clone()), Some(d), None).add(None, Some(node(11, Kind::File, 5, "new", b"o")), None).plan();
    assert!(p.is_empty());
    assert!(p.conflicts.iter().any(|c| c.kind == ConflictKind::DirectoryKept));
}

#[test]
fn crossed_directory_moves_do_not_form_a_cycle() {
    let a = dir(5, ROOT_INO, "a");
    let b = dir(6, ROOT_INO, "b");
    let a_in_b = with(a.clone(), |n| n.links = [link(6, "a")].into_iter().collect());
    let b_in_a = with(b.clone(), |n| n.links = [link(5, "b")].into_iter().collect());
    // Home moved a into b; the branch moved b into a.
    let p = Case::new().add(Some(a.clone()), Some(a_in_b), Some(a)).add(Some(b.clone()), Some(b), Some(b_in_a)).plan();
    assert!(p.conflicts.iter().any(|c| c.kind == ConflictKind::Cycle), "{:?}", p.conflicts);
    assert!(!p.nodes.contains_key(&6), "b stays where home has it");
}

#[test]
fn mass_delete_and_emptied_root_are_refused_without_confirm() {
    let mut case = Case::new();
    case.input.base_files = 4;
    case.input.base_root_entries = 3;
    for i in 0..3 {
        let f = file(10 + i, &format!("f{i}"), b"x");
        case = case.add(Some(f.clone()), Some(f), None);
    }
    assert!(case.plan().refused.is_some(), "3 of 4 deleted");
    let opts = MergeOptions { confirm: true, ..Default::default() };
    assert!(plan(&case.input, &case.tree, &opts).refused.is_none());
    case.input.base_files = 100;
    let p = case.plan();
    assert!(p.refused.as_deref().unwrap().contains("root"), "{:?}", p.refused);
    // Fewer than half, root not emptied: fine.
    case.input.base_root_entries = 10;
    assert!(case.plan().refused.is_none());
}

#[test]
fn hard_links_added_on_both_sides_merge_as_a_set_when_one_side_only_adds() {
    let b = file(10, "a", b"x");
    let t = with(b.clone(), |n| {
        n.links.insert(link(ROOT_INO, "hard"));
        n.nlink = 2;
    });
    let p = Case::new().add(Some(b.clone()), Some(with(b, |n| n.perm = 0o600)), Some(t)).plan();
    let r = result(&p, 10).unwrap();
    assert_eq!(r.links.len(), 2);
    assert_eq!(r.nlink, 2);
    assert_eq!(r.perm, 0o600);
}

#[test]
fn a_directory_created_on_both_sides_is_one_directory_with_both_entries() {
    let p = Case::new()
        .add(None, Some(dir(10, ROOT_INO, "out")), None)
        .add(None, Some(node(11, Kind::File, 10, "a.pt", b"home")), None)
        .add(None, None, Some(dir(20, ROOT_INO, "out")))
        .add(None, None, Some(node(21, Kind::File, 20, "b.pt", b"branch")))
        .add(None, None, Some(node(22, Kind::File, 20, "a.pt", b"other")))
        .plan();
    assert!(!p.nodes.contains_key(&20), "the branch's directory is not created: {:?}", p.nodes.keys());
    assert_eq!(result(&p, 21).unwrap().links, [link(10, "b.pt")].into_iter().collect());
    assert_eq!(result(&p, 22).unwrap().links, [link(10, "a.conflict-burst-n1-20261201T0730Z.pt")].into_iter().collect());
    assert_eq!(p.conflicts.len(), 1, "only the file both created: {:?}", p.conflicts);
}

/// A merged file left with no name gets an orphan row in the merge's batch, as an unlink's
/// would: a local volume's FORGET purges only inodes with one, and fsck reports an unlinked
/// inode without one (invariant 1; invariant 6: the pre-merge snapshot keeps the file).
#[test]
fn a_merged_file_left_with_no_name_is_an_orphan() {
    use crate::meta::{MetaStore, Mutation};
    use crate::types::{Dentry, Inode};
    let home = MetaStore::memory();
    crate::volume::Volume::format(&home, 0, 0).unwrap();
    let mut rec = Inode::new(7, Kind::File, 0o644, 0, 0);
    (rec.parent, rec.name) = (ROOT_INO, b"a".to_vec());
    let dentry = Dentry { ino: 7, kind: Kind::File, cookie: 0 };
    home.apply(vec![Mutation::PutInode(rec), Mutation::PutDentry { parent: ROOT_INO, name: b"a".to_vec(), dentry }], true).unwrap();
    let ours = file(7, "a", b"");
    let nameless = with(ours.clone(), |n| {
        n.links.clear();
        n.nlink = 0;
    });
    let plan = MergePlan { nodes: [(7, Some(nameless))].into(), ours: [(7, Some(ours.clone()))].into(), ..Default::default() };
    let batch = super::apply::mutations(&home, &plan).unwrap();
    assert!(batch.iter().any(|m| matches!(m, Mutation::DelDentry { parent: ROOT_INO, .. })), "{batch:?}");
    assert!(batch.iter().any(|m| matches!(m, Mutation::PutOrphan(7))), "no orphan row: {batch:?}");
    // A merged file with its name is none.
    let chmodded = with(ours.clone(), |n| n.perm = 0o600);
    let plan = MergePlan { nodes: [(7, Some(chmodded))].into(), ours: [(7, Some(ours))].into(), ..Default::default() };
    let batch = super::apply::mutations(&home, &plan).unwrap();
    assert!(!batch.iter().any(|m| matches!(m, Mutation::PutOrphan(_))), "{batch:?}");
}
