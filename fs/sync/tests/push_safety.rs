//! Push safety (issue 9), against the in-memory store with timing and fault wrappers:
//!
//! - invariant 4 (commit order; a concurrent writer is detected, never overwritten): nodes
//!   racing to push one branch, many rounds, each round with another node first: the branch
//!   holds exactly the acknowledged push, never a refused node's layer; the refused node's
//!   change stays unpushed locally and is refused again, never "up to date";
//! - a push that resumed an interrupted one also publishes what was written since;
//! - a crash between the head PUT and recording the push locally is recognised (the head names
//!   this node's pending push) and finished, not refused forever; a `push-…` snapshot left by
//!   a crash after recording is dropped;
//! - two pushes of one volume at once run one after the other, both succeed;
//! - a refused push names a command that works, and that command moves only the change.

mod common;

use common::{noise, volume, write_file, Fixture};
use hybridfs_cloud::{Cond, MemStore, ObjectMeta, ObjectStore, StoreError};
use hybridfs_core::meta::{Key, MetaStore};
use hybridfs_core::types::ROOT_INO;
use hybridfs_sync::{push, Remote, SyncError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const INV4: &str = "invariant 4: the store never holds a head naming anything but the acknowledged push; \
                    a concurrent writer is detected, never overwritten";

/// One node's view of the shared store: its layer and head PUTs wait `layer_delay` and
/// `head_delay` first (so a round can choose who is first), and the answer of its next
/// `lose_head_answers` head PUTs is lost after the PUT took effect.
struct Node {
    inner: Arc<MemStore>,
    layer_delay: Duration,
    head_delay: Duration,
    lose_head_answers: AtomicU64,
}

impl Node {
    fn new(inner: &Arc<MemStore>, layer_ms: u64, head_ms: u64) -> Node {
        Node {
            inner: inner.clone(),
            layer_delay: Duration::from_millis(layer_ms),
            head_delay: Duration::from_millis(head_ms),
            lose_head_answers: AtomicU64::new(0),
        }
    }
}

impl ObjectStore for Node {
    fn describe(&self) -> String {
        "mem://race".into()
    }
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        let head = key.ends_with("/head");
        if key.contains("/layers/") {
            std::thread::sleep(self.layer_delay);
        }
        if head {
            std::thread::sleep(self.head_delay);
        }
        let etag = self.inner.put(key, data, cond)?;
        if head && self.lose_head_answers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unreachable { endpoint: "mem".into(), msg: "answer lost".into() });
        }
        Ok(etag)
    }
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, offset, len)
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
}

/// The names in the root directory of `branch`, as its verified chain of layers says.
fn root_names(remote: &Remote, branch: &str) -> Vec<String> {
    let (head, _) = remote.head(branch).unwrap().unwrap_or_else(|| panic!("{INV4}: branch {branch} has no head"));
    let mut names: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
    for link in remote.chain(branch, head.layer_ref(), 1, true).unwrap_or_else(|e| panic!("{INV4}: the chain of {branch}: {e}")) {
        for r in remote.open_link(&link).unwrap().records {
            if let Key::Dentry(ROOT_INO, name) = r.key {
                names.insert(name, r.value.is_some());
            }
        }
    }
    names.into_iter().filter(|(_, live)| *live).map(|(n, _)| String::from_utf8(n).unwrap()).collect()
}

/// Blocks of `ino` in the journal rows `branch` does not have yet.
fn unpushed_blocks(meta: &MetaStore, branch: &str, ino: u64) -> usize {
    let since = hybridfs_sync::unpushed_since(meta, branch).unwrap();
    meta.journal(since).unwrap().iter().filter(|e| e.ino == ino).count()
}

#[test]
fn racing_pushes_never_lose_the_acknowledged_one() {
    const NODES: usize = 3;
    const ROUNDS: usize = 12;
    let shared = Arc::new(MemStore::new());
    let nodes: Vec<Fixture> = (0..NODES).map(|_| volume()).collect();
    let check = Remote::new(shared.clone(), "vol");
    let mut wins = [0usize; NODES];
    for round in 0..ROUNDS {
        // A new branch each round: every node's first push to it races the others' on
        // `If-None-Match: *`. The node with no delay is first; the slower ones write their
        // layers after the winner moved the head.
        let branch = format!("race-{round}");
        let inos: Vec<u64> = (0..NODES)
            .map(|i| write_file(&nodes[i].vol, &format!("n{i}-r{round}"), 0, &noise((round * NODES + i) as u64, 50_000)))
            .collect();
        let barrier = Barrier::new(NODES);
        let results: Vec<Result<hybridfs_sync::PushReport, SyncError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..NODES)
                .map(|i| {
                    let slot = ((i + round) % NODES) as u64;
                    let store: Arc<dyn ObjectStore> = Arc::new(Node::new(&shared, slot * 40, (round as u64 % 2) * slot * 10));
                    let (vol, branch, barrier) = (nodes[i].vol.clone(), branch.clone(), &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        push(&vol, &Remote::new(store, "vol"), &branch, &|_| {})
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..NODES).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "{INV4}: round {round}: exactly one push is acknowledged: {results:?}");
        let w = winners[0];
        wins[w] += 1;
        for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != w) {
            assert!(matches!(r, Err(SyncError::BranchMoved { .. })), "round {round}: node {i} is told the branch moved: {r:?}");
        }
        // The branch holds the winner's whole tree and nothing of a refused node.
        let names = root_names(&check, &branch);
        let want: Vec<String> = (0..=round).map(|r| format!("n{w}-r{r}")).collect();
        let mut sorted_want = want.clone();
        sorted_want.sort();
        assert_eq!(names, sorted_want, "{INV4}: round {round}: branch {branch} holds node {w}'s acknowledged push, only");
        let fsck = hybridfs_sync::check_remote(&check, &branch, true).unwrap();
        assert!(fsck.problems.is_empty(), "{INV4}: fsck --remote --verify after round {round}: {fsck:?}");
        // The winner is up to date; a refused node's change is still unpushed and refused again.
        let again = push(&nodes[w].vol, &Remote::new(shared.clone(), "vol"), &branch, &|_| {}).unwrap();
        assert!(again.up_to_date && again.seq == 1, "round {round}: {again:?}");
        for i in (0..NODES).filter(|i| *i != w) {
            assert!(unpushed_blocks(nodes[i].vol.meta(), &branch, inos[i]) > 0, "round {round}: node {i}'s refused change is still unpushed");
            let retry = push(&nodes[i].vol, &Remote::new(shared.clone(), "vol"), &branch, &|_| {});
            assert!(matches!(retry, Err(SyncError::BranchMoved { .. })), "{INV4}: round {round}: node {i}'s retry is refused, never up to date: {retry:?}");
        }
        assert_eq!(unpushed_blocks(nodes[w].vol.meta(), &branch, inos[w]), 0, "round {round}: the winner's change is pushed");
        // A refused attempt leaves no layer behind: one per branch.
        assert_eq!(shared.list(&format!("vol/branches/{branch}/layers/")).unwrap().len(), 1, "round {round}");
    }
    assert!(wins.iter().all(|w| *w > 0), "every node won some round (the rounds rotate who is first): {wins:?}");
}

#[test]
fn a_resumed_push_also_publishes_what_was_written_since() {
    let f = volume();
    write_file(&f.vol, "a", 0, &noise(1, 1 << 20));
    let plan = hybridfs_cloud::FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(hybridfs_cloud::Faulty::new(MemStore::new(), plan.clone()));
    let r = Remote::new(store, "vol");
    push(&f.vol, &r, "main", &|_| {}).unwrap();
    write_file(&f.vol, "b", 0, &noise(2, 4 << 20));
    plan.die_after_puts(2);
    push(&f.vol, &r, "main", &|_| {}).unwrap_err();
    plan.heal();
    // Written after the interruption: the resumed push must not leave it out silently.
    write_file(&f.vol, "c", 0, &noise(3, 100_000));
    let rep = push(&f.vol, &r, "main", &|_| {}).unwrap();
    assert!(rep.resumed && !rep.up_to_date, "{rep:?}");
    assert_eq!(rep.resumed_seq, Some(2), "the interrupted push's snapshot is layer 2: {rep:?}");
    assert_eq!(rep.seq, 3, "what was written since is layer 3, in the same call: {rep:?}");
    assert_eq!(root_names(&r, "main"), ["a", "b", "c"], "the branch has the tree as of the push command");
    assert!(push(&f.vol, &r, "main", &|_| {}).unwrap().up_to_date);
    assert_eq!(common::snapshot_names(&f.vol), common::fork_bases(&f.vol, "main"), "no push snapshot is left but the fork base of the last push");
}

#[test]
fn a_push_whose_head_landed_before_a_crash_is_recognised_and_finished() {
    let f = volume();
    let shared = Arc::new(MemStore::new());
    let node = Arc::new(Node::new(&shared, 0, 0));
    let r = Remote::new(node.clone(), "vol");
    write_file(&f.vol, "a", 0, &noise(1, 100_000));
    push(&f.vol, &r, "main", &|_| {}).unwrap();
    // The head PUT of the second push takes effect, but the node never learns it (as a crash
    // or an outage between the head PUT and recording the push would leave it).
    write_file(&f.vol, "b", 0, &noise(2, 100_000));
    node.lose_head_answers.store(1, Ordering::SeqCst);
    let err = push(&f.vol, &r, "main", &|_| {}).unwrap_err();
    assert!(matches!(err, SyncError::Store(_)), "{err}");
    assert_eq!(r.head("main").unwrap().unwrap().0.seq, 2, "the head moved");
    write_file(&f.vol, "c", 0, &noise(3, 100_000));
    let rep = push(&f.vol, &r, "main", &|_| {}).unwrap_or_else(|e| panic!("{INV4}: the node's own push must be recognised, not refused: {e}"));
    assert!(rep.resumed, "{rep:?}");
    assert_eq!((rep.resumed_seq, rep.seq), (Some(2), 3), "{rep:?}");
    assert_eq!(root_names(&r, "main"), ["a", "b", "c"]);
    assert_eq!(common::snapshot_names(&f.vol), common::fork_bases(&f.vol, "main"), "no push snapshot is left but the fork base of the last push");
    assert_eq!(unpushed_blocks(f.vol.meta(), "main", f.vol.lookup(ROOT_INO, b"c").unwrap().ino), 0);
}

#[test]
fn a_push_snapshot_left_by_a_crash_after_recording_is_dropped() {
    let f = volume();
    let r = Remote::new(Arc::new(MemStore::new()), "vol");
    write_file(&f.vol, "a", 0, &noise(1, 100_000));
    push(&f.vol, &r, "main", &|_| {}).unwrap();
    // What a crash between recording a push and keeping its snapshot as a fork base leaves.
    f.vol.snapshot_create("push-main-7").unwrap();
    f.vol.snapshot_hold("push-main-7", "push", true).unwrap();
    f.vol.snapshot_create("push-main-x-1").unwrap();
    write_file(&f.vol, "b", 0, &noise(2, 100_000));
    push(&f.vol, &r, "main", &|_| {}).unwrap();
    let mut left = common::snapshot_names(&f.vol);
    left.sort();
    assert_eq!(common::fork_bases(&f.vol, "main"), ["push-main-1", "push-main-2"], "each push of main keeps its snapshot as a fork base");
    assert_eq!(left, ["push-main-1", "push-main-2", "push-main-x-1"], "the leftover of branch main is dropped; another branch's name is kept");
}

#[test]
fn two_pushes_of_one_volume_at_once_run_one_after_the_other() {
    let f = volume();
    let shared = Arc::new(MemStore::new());
    for i in 0..8 {
        write_file(&f.vol, &format!("f{i}"), 0, &noise(i, 300_000));
    }
    let barrier = Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (vol, barrier) = (f.vol.clone(), &barrier);
                let store: Arc<dyn ObjectStore> = Arc::new(Node::new(&shared, 100, 50));
                s.spawn(move || {
                    barrier.wait();
                    push(&vol, &Remote::new(store, "vol"), "main", &|_| {})
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r.is_ok(), "both pushes succeed: {results:?}");
    }
    let reps: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(reps.iter().filter(|r| r.up_to_date).count(), 1, "one pushed, the other found nothing new: {reps:?}");
    let r = Remote::new(shared, "vol");
    assert_eq!(r.head("main").unwrap().unwrap().0.seq, 1);
    assert_eq!(common::snapshot_names(&f.vol), common::fork_bases(&f.vol, "main"), "no push snapshot is left but the fork base of the last push");
}

/// A clone of `source` in `store` that pushes to `branch` (metadata in memory, blocks lazy).
struct CloneNode {
    vol: Arc<hybridfs_core::Volume>,
    _dir: tempfile::TempDir,
}

fn clone_node(store: Arc<dyn ObjectStore>, source: &str, branch: &str) -> CloneNode {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    hybridfs_sync::clone::import(&meta, &Remote::new(store.clone(), "vol"), source, branch).unwrap();
    let own = hybridfs_blocks::FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = hybridfs_blocks::FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(hybridfs_sync::lazy::LazyStore::new(own, cache, Remote::new(store, "vol"), meta.clone(), None).unwrap());
    let opts = hybridfs_core::VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    CloneNode { vol: hybridfs_core::Volume::open(meta, lazy, opts).unwrap(), _dir: dir }
}

#[test]
fn a_refused_push_names_a_command_that_moves_only_the_change() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let r = Remote::new(store.clone(), "vol");
    let origin = volume();
    for i in 0..40 {
        write_file(&origin.vol, &format!("o{i:02}"), 0, &noise(100 + i, 20_000));
    }
    push(&origin.vol, &r, "main", &|_| {}).unwrap();
    // Two clones of main that push to the same branch name; x is first.
    let (x, y) = (clone_node(store.clone(), "main", "shared"), clone_node(store.clone(), "main", "shared"));
    write_file(&x.vol, "from-x", 0, &noise(1, 300_000));
    write_file(&y.vol, "from-y", 0, &noise(2, 300_000));
    push(&x.vol, &r, "shared", &|_| {}).unwrap();
    let err = push(&y.vol, &r, "shared", &|_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SyncError::BranchMoved { .. }), "{msg}");
    assert!(msg.contains("hybridctl push --branch") && !msg.contains("pull first"), "the refusal names the command that works: {msg}");
    // That command: y's change goes to a branch of its own, forked where y stands (main, 1).
    let own = hybridfs_sync::push_with(&y.vol, &r, "y-own", Some("shared"), &|_| {}, hybridfs_sync::LAYER_RECORDS).unwrap();
    assert!(own.records < 10, "only the change moves, not the 40 files of the tree: {own:?}");
    assert_eq!(own.blocks_uploaded, 1, "{own:?}");
    let mut want: Vec<String> = (0..40).map(|i| format!("o{i:02}")).collect();
    want.push("from-y".into());
    want.sort();
    assert_eq!(root_names(&r, "y-own"), want, "a clone of y-own has the tree y had: main's and y's file, not x's");
    assert_eq!(r.layer("y-own", 1).unwrap().parent, Some(("main".to_string(), 1)));
    assert!(hybridfs_sync::check_remote(&r, "y-own", true).unwrap().problems.is_empty());
}
