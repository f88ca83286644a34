//! Snapshots from the tests' side: the `hybridctl snapshot ...`, `diff`, `rollback` and `gc`
//! commands with their `--json` output parsed into plain structs (a field missing from the
//! output is a test failure naming the command), and [`Tree`], a model of a whole directory
//! tree (kinds, modes, link counts, file mtimes, bytes, user xattrs, symlink targets) to
//! compare a live tree with a snapshot view or with itself before a rollback.
//!
//! Commands that the contract gives a `--volume` option get the volume's name explicitly;
//! `show`, `delete`, `hold` and `release` rely on the default (the only volume of the home).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::content::first_difference;
use crate::{sys, CmdOutput, TestVolume};

/// The directory the mount shows snapshots under.
pub const SNAPSHOTS_DIR: &str = ".snapshots";

/// One snapshot as `snapshot list/show --json` (and `rollback --json`) print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub name: String,
    pub epoch: u64,
    pub created: i64,
    pub files: u64,
    pub bytes: u64,
    /// Present in `list` and `show`; `rollback`'s `target`/`saved_as` may leave it out.
    pub unique_bytes: Option<u64>,
    pub holds: Vec<String>,
}

fn field<'v>(v: &'v Value, key: &str, what: &str) -> &'v Value {
    v.get(key).unwrap_or_else(|| panic!("{what}: no field {key:?} in {v}"))
}

fn u64_field(v: &Value, key: &str, what: &str) -> u64 {
    field(v, key, what).as_u64().unwrap_or_else(|| panic!("{what}: field {key:?} is not an unsigned integer: {v}"))
}

fn str_field(v: &Value, key: &str, what: &str) -> String {
    field(v, key, what).as_str().unwrap_or_else(|| panic!("{what}: field {key:?} is not a string: {v}")).to_string()
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("{what}: not a string: {s}")).to_string())
        .collect()
}

impl Snapshot {
    pub fn from_json(v: &Value, what: &str) -> Snapshot {
        Snapshot {
            id: u64_field(v, "id", what),
            name: str_field(v, "name", what),
            epoch: u64_field(v, "epoch", what),
            created: field(v, "created", what)
                .as_i64()
                .unwrap_or_else(|| panic!("{what}: field \"created\" is not an integer: {v}")),
            files: u64_field(v, "files", what),
            bytes: u64_field(v, "bytes", what),
            unique_bytes: v.get("unique_bytes").map(|_| u64_field(v, "unique_bytes", what)),
            holds: strings(field(v, "holds", what), &format!("{what}: holds")),
        }
    }
}

/// One entry of `diff --json`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiffEntry {
    pub change: String,
    pub path: String,
    pub from_path: Option<String>,
    pub kind: String,
    pub ranges: Vec<(u64, u64)>,
    pub attrs: Vec<String>,
}

/// `diff --json`.
#[derive(Debug, Clone)]
pub struct Diff {
    pub from_epoch: u64,
    /// `None` (JSON null) when TO is the live tree.
    pub to_epoch: Option<u64>,
    pub journal_rows: u64,
    pub entries: Vec<DiffEntry>,
}

impl Diff {
    pub fn from_json(v: &Value, what: &str) -> Diff {
        let entries = field(v, "entries", what)
            .as_array()
            .unwrap_or_else(|| panic!("{what}: entries is not an array: {v}"))
            .iter()
            .map(|e| {
                let ranges = match e.get("ranges") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(r) => r
                        .as_array()
                        .unwrap_or_else(|| panic!("{what}: ranges is not an array: {e}"))
                        .iter()
                        .map(|pair| match pair.as_array().map(|p| (p.first(), p.get(1), p.len())) {
                            Some((Some(a), Some(b), 2)) if a.is_u64() && b.is_u64() => {
                                (a.as_u64().unwrap(), b.as_u64().unwrap())
                            }
                            _ => panic!("{what}: a range is not [start, end]: {e}"),
                        })
                        .collect(),
                };
                let attrs = match e.get("attrs") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(a) => strings(a, &format!("{what}: attrs")),
                };
                DiffEntry {
                    change: str_field(e, "change", what),
                    path: str_field(e, "path", what),
                    from_path: match e.get("from_path") {
                        None | Some(Value::Null) => None,
                        Some(_) => Some(str_field(e, "from_path", what)),
                    },
                    kind: str_field(e, "kind", what),
                    ranges,
                    attrs,
                }
            })
            .collect();
        Diff {
            from_epoch: u64_field(v, "from_epoch", what),
            to_epoch: match field(v, "to_epoch", what) {
                Value::Null => None,
                _ => Some(u64_field(v, "to_epoch", what)),
            },
            journal_rows: u64_field(v, "journal_rows", what),
            entries,
        }
    }

    /// The entry for `path` (at TO; at FROM for deleted paths), if any.
    pub fn entry(&self, path: &str) -> Option<&DiffEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// `(change, path)` of every entry, sorted: for "exactly these changes" checks.
    pub fn changes(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self.entries.iter().map(|e| (e.change.clone(), e.path.clone())).collect();
        out.sort();
        out
    }
}

/// `gc --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub ranges: u64,
    pub records_examined: u64,
    pub versions_removed: u64,
    pub blocks_freed: u64,
    pub bytes_freed: u64,
    pub blocks_waiting: u64,
}

impl GcReport {
    pub fn from_json(v: &Value, what: &str) -> GcReport {
        GcReport {
            ranges: u64_field(v, "ranges", what),
            records_examined: u64_field(v, "records_examined", what),
            versions_removed: u64_field(v, "versions_removed", what),
            blocks_freed: u64_field(v, "blocks_freed", what),
            bytes_freed: u64_field(v, "bytes_freed", what),
            blocks_waiting: u64_field(v, "blocks_waiting", what),
        }
    }
}

/// `rollback --json`.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub target: Snapshot,
    pub saved_as: Snapshot,
    pub records_restored: u64,
}

/// stdout of a successful `--json` command, parsed; panics with the whole output otherwise.
pub fn json_of(out: &CmdOutput) -> Value {
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out}"))
}

/// True when `name` looks like `pre-rollback-YYYYMMDDTHHMMSSZ` (optionally `-N` after it).
pub fn is_pre_rollback_name(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix("pre-rollback-") else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() >= 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && (b.len() == 16 || (b[16] == b'-' && b.len() > 17 && b[17..].iter().all(u8::is_ascii_digit)))
}

impl TestVolume {
    /// `MOUNTPOINT/.snapshots/NAME`.
    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        self.mountpoint().join(SNAPSHOTS_DIR).join(name)
    }

    /// `hybridctl snapshot ARGS` (nothing added).
    pub fn snap_ctl(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec!["snapshot"];
        all.extend_from_slice(args);
        self.ctl(&all)
    }

    /// `snapshot create NAME --volume V --json`; panics unless it succeeds.
    pub fn snap_create(&self, name: &str) -> Snapshot {
        let out = self.snap_ctl(&["create", name, "--volume", self.name(), "--json"]);
        Snapshot::from_json(&json_of(&out), &format!("snapshot create {name} --json"))
    }

    /// `snapshot list --volume V --json`, with `unique_bytes` required in every entry.
    pub fn snap_list(&self) -> Vec<Snapshot> {
        let out = self.snap_ctl(&["list", "--volume", self.name(), "--json"]);
        let json = json_of(&out);
        let arr = json.as_array().unwrap_or_else(|| panic!("snapshot list --json is not an array: {out}"));
        arr.iter()
            .map(|v| {
                let s = Snapshot::from_json(v, "snapshot list --json");
                assert!(s.unique_bytes.is_some(), "snapshot list --json: entry without unique_bytes: {v}");
                s
            })
            .collect()
    }

    /// Names from `snapshot list`, sorted.
    pub fn snap_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.snap_list().into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }

    /// `snapshot show NAME --json`: `Some` on exit 0, `None` on exit 2 (unknown name); panics
    /// on anything else.
    pub fn snap_show(&self, name: &str) -> Option<Snapshot> {
        let out = self.snap_ctl(&["show", name, "--json"]);
        match out.code {
            Some(0) => {
                let s = Snapshot::from_json(&json_of(&out), &format!("snapshot show {name} --json"));
                assert!(s.unique_bytes.is_some(), "snapshot show --json without unique_bytes: {out}");
                Some(s)
            }
            Some(2) => None,
            _ => panic!("snapshot show {name}: expected exit 0 or 2 (unknown): {out}"),
        }
    }

    /// `snapshot delete NAME`; panics unless it succeeds.
    pub fn snap_delete(&self, name: &str) {
        self.snap_ctl(&["delete", name]).assert_success();
    }

    /// `diff FROM [TO] --volume V --json`.
    pub fn diff(&self, from: &str, to: Option<&str>) -> Diff {
        let mut args = vec!["diff", from];
        args.extend(to);
        args.extend(["--volume", self.name(), "--json"]);
        let out = self.ctl(&args);
        Diff::from_json(&json_of(&out), &format!("diff {from} {to:?} --json"))
    }

    /// `gc --volume V --grace SECS --json`.
    pub fn gc(&self, grace_secs: u64) -> GcReport {
        let grace = grace_secs.to_string();
        let out = self.ctl(&["gc", "--volume", self.name(), "--grace", &grace, "--json"]);
        GcReport::from_json(&json_of(&out), "gc --json")
    }

    /// `rollback NAME --volume V --json`; panics unless it succeeds.
    pub fn rollback(&self, name: &str) -> Rollback {
        let out = self.ctl(&["rollback", name, "--volume", self.name(), "--json"]);
        let json = json_of(&out);
        let what = format!("rollback {name} --json");
        Rollback {
            target: Snapshot::from_json(field(&json, "target", &what), &format!("{what}: target")),
            saved_as: Snapshot::from_json(field(&json, "saved_as", &what), &format!("{what}: saved_as")),
            records_restored: u64_field(&json, "records_restored", &what),
        }
    }

    /// Panics unless `hybridctl fsck NAME` exits 0.
    pub fn assert_fsck_clean(&self, when: &str) {
        let out = self.fsck(&[]);
        assert!(out.success(), "fsck must stay clean (invariant 1) {when}: {out}");
    }
}

/// One node of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, nlink: u64, mtime: (i64, i64), data: Vec<u8>, xattrs: BTreeMap<String, Vec<u8>> },
    Symlink { target: PathBuf },
    Other { mode: u32 },
}

/// A whole directory tree: relative path → node. `.snapshots` at the top is left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree(pub BTreeMap<String, Node>);

/// Most entries [`read_tree`] visits: a bound, not a limit any test comes near.
const TREE_MAX_ENTRIES: usize = 100_000;
const TREE_MAX_DEPTH: usize = 64;

fn user_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let len = sys::listxattr_len(path).unwrap_or_else(|e| panic!("listxattr {}: errno {e}", path.display()));
    if len == 0 {
        return out;
    }
    let names = sys::listxattr(path, len).unwrap_or_else(|e| panic!("listxattr {}: errno {e}", path.display()));
    for name in names.into_iter().filter(|n| n.starts_with("user.")) {
        let vlen = sys::getxattr_len(path, &name).unwrap_or_else(|e| panic!("getxattr {}: errno {e}", path.display()));
        let value =
            sys::getxattr(path, &name, vlen).unwrap_or_else(|e| panic!("getxattr {} {name}: errno {e}", path.display()));
        out.insert(name, value);
    }
    out
}

/// Reads the whole tree under `root` (which is not itself part of the model).
pub fn read_tree(root: &Path) -> Tree {
    let mut tree = BTreeMap::new();
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        assert!(depth < TREE_MAX_DEPTH, "read_tree: deeper than {TREE_MAX_DEPTH} under {}", root.display());
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            if depth == 0 && name == SNAPSHOTS_DIR {
                continue;
            }
            let path = entry.path();
            let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let mode = md.permissions().mode() & 0o7777;
            let node = if md.file_type().is_symlink() {
                Node::Symlink { target: fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())) }
            } else if md.is_dir() {
                stack.push((path.clone(), rel_path.clone(), depth + 1));
                Node::Dir { mode }
            } else if md.is_file() {
                Node::File {
                    mode,
                    nlink: md.nlink(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    data: fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
                    xattrs: user_xattrs(&path),
                }
            } else {
                Node::Other { mode: md.mode() }
            };
            tree.insert(rel_path, node);
            assert!(tree.len() <= TREE_MAX_ENTRIES, "read_tree: more than {TREE_MAX_ENTRIES} entries");
        }
    }
    Tree(tree)
}

fn describe(node: &Node) -> String {
    match node {
        Node::File { mode, nlink, mtime, data, xattrs } => format!(
            "file mode {mode:o} nlink {nlink} mtime {mtime:?} {} bytes xattrs {:?}",
            data.len(),
            xattrs.keys().collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}

/// Panics with the first few differences unless `actual` and `expected` are the same tree.
pub fn assert_same_tree(what: &str, actual: &Tree, expected: &Tree) {
    let mut problems = Vec::new();
    for (path, want) in &expected.0 {
        match actual.0.get(path) {
            None => problems.push(format!("missing {path} (expected {})", describe(want))),
            Some(got) if got != want => {
                let detail = match (got, want) {
                    (Node::File { data: a, .. }, Node::File { data: b, .. }) if a != b => {
                        format!(" (content differs first at byte {:?})", first_difference(a, b))
                    }
                    _ => String::new(),
                };
                problems.push(format!("{path}: got {}, expected {}{detail}", describe(got), describe(want)))
            }
            Some(_) => {}
        }
    }
    for (path, got) in &actual.0 {
        if !expected.0.contains_key(path) {
            problems.push(format!("unexpected {path} ({})", describe(got)));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        panic!("{what}: trees differ in {n} places:\n  {}", problems.join("\n  "));
    }
}

/// The tree as a read-only snapshot view shows it: the mount clears the write bits of every
/// file and directory mode there (fs/core/src/volume/views.rs), the rest is unchanged.
pub fn as_view(tree: &Tree) -> Tree {
    Tree(
        tree.0
            .iter()
            .map(|(p, n)| {
                let n = match n {
                    Node::Dir { mode } => Node::Dir { mode: mode & !0o222 },
                    Node::File { mode, nlink, mtime, data, xattrs } => Node::File {
                        mode: mode & !0o222,
                        nlink: *nlink,
                        mtime: *mtime,
                        data: data.clone(),
                        xattrs: xattrs.clone(),
                    },
                    other => other.clone(),
                };
                (p.clone(), n)
            })
            .collect(),
    )
}

/// The same tree without file mtimes (for views where only content and attributes matter).
pub fn without_mtimes(tree: &Tree) -> Tree {
    Tree(
        tree.0
            .iter()
            .map(|(p, n)| {
                let n = match n {
                    Node::File { mode, nlink, data, xattrs, .. } => {
                        Node::File { mode: *mode, nlink: *nlink, mtime: (0, 0), data: data.clone(), xattrs: xattrs.clone() }
                    }
                    other => other.clone(),
                };
                (p.clone(), n)
            })
            .collect(),
    )
}
