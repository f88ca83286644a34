//! Merge (issue 10; invariant 6: no lost writes in merges) through real mounts, the real
//! `hybridctl` CLI and a real S3 server (SeaweedFS on 127.0.0.1, started by the test).
//!
//! Home formats, writes and pushes `main`; a burst node clones it, writes during the "day"
//! and pushes its branch; home writes too (some of the same files), unmounts and merges the
//! branch while mounted, a reader looping over the mount: a dry run first (nothing applied),
//! then the merge (exit 3: conflicts kept). The mount shows right away (kernel caches
//! invalidated) every change of both sides, the conflicting file's branch version as
//! `NAME.conflict-<branch>-<UTC>`; the next push of main uploads none of the branch's blocks;
//! merging again says it is up to date; `merge undo` (online too) returns to the pre-merge
//! snapshot, keeping the state it replaced as `pre-undo-<UTC>`; merging again redoes it. A merge of an unmounted volume killed
//! before or after its apply batch leaves the tree before or after, never a mix.
//!
//! The required run of the issue: home and two burst clones write during a "day", both push,
//! home merges both while mounted and a reader process loops over the mount; only metadata
//! moves (the branches' blocks are fetched, verified, on first read), the push of main uploads
//! none of them, undo and redo, and the branches' bytes read afresh from the store.

use std::collections::BTreeMap;
use std::fs;

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_tests::cmd::CmdOutput;
use hybridfs_tests::content::{assert_same_bytes, assert_tree, pattern, read_tree};
use hybridfs_tests::{fail_loudly, TestVolume};
use serde_json::Value;

const KIB: usize = 1 << 10;
const INV6: &str = "invariant 6: every change made on either side is in the merge result or a reported conflict copy";

type Env = Vec<(&'static str, String)>;

fn env_refs(env: &Env) -> Vec<(&'static str, &str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn json_of(out: &CmdOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
}

fn push_ok(vol: &TestVolume) -> Value {
    let out = vol.ctl(&["push", "--volume", vol.name(), "--json"]);
    out.assert_success();
    json_of(&out)
}

fn merge_cmd(home: &TestVolume, env: &Env, args: &[&str]) -> CmdOutput {
    let mut all = vec!["merge"];
    all.extend_from_slice(args);
    home.ctl_env(&env_refs(env), &all)
}

/// 24 files of 10-40 KiB in 4 directories.
fn dataset() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for d in 0..4 {
        for f in 0..6 {
            files.insert(format!("d{d}/f{f}"), pattern(100 + d * 10 + f, 10 * KIB + (d * 6 + f) as usize * KIB));
        }
    }
    files
}

/// Home and a burst node after a "day": home pushed the base, the burst node cloned it,
/// wrote and pushed branch `burst-n1`, home wrote too (home is still mounted).
struct Day {
    _server: SeaweedServer,
    env: Env,
    home: TestVolume,
    /// The burst node (unmounted).
    burst: TestVolume,
    base: BTreeMap<String, Vec<u8>>,
    /// Home's tree before the merge.
    before: BTreeMap<String, Vec<u8>>,
    /// The branch's versions: new file, the file both changed, a file only it changed, a new
    /// file in a new directory.
    b: [Vec<u8>; 4],
}

fn day(bucket: &str) -> Day {
    let server = SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the merge test needs a real S3 server: {e}")));
    let env: Env = server.env();
    let _bucket = server.store(bucket, "").unwrap_or_else(|e| panic!("create bucket: {e}"));
    let url = format!("s3://{bucket}/pfx");

    // Home: the base, pushed to main.
    let mut home = TestVolume::builder().name("data").block_size("1M").store(&url).unmounted().build();
    home.mount_env(&env_refs(&env));
    let base = dataset();
    for (p, b) in &base {
        home.put(p, b);
    }
    push_ok(&home);

    // The burst node: clone, a day of writes, push its branch.
    let mut burst = TestVolume::builder().name("data").unformatted().build();
    let cloned = burst.ctl_env(&env_refs(&env), &["clone", &format!("{url}/data"), "--branch", "burst-n1", "--json"]);
    cloned.assert_success();
    burst.mount_env(&env_refs(&env));
    let b = [pattern(2001, 50 * KIB), pattern(2002, 30 * KIB), pattern(2003, 20 * KIB), pattern(2004, 70 * KIB)];
    burst.put("d1/from-burst", &b[0]);
    burst.put("d2/f3", &b[1]);
    burst.put("d3/f0", &b[2]);
    burst.put("out/ckpt.pt", &b[3]);
    fs::remove_file(burst.path("d0/f1")).unwrap();
    push_ok(&burst);
    burst.umount();

    // Home's day: a new name in the same directory, the same file, the file the branch deleted.
    let mut before = base.clone();
    for (i, path) in ["d1/from-home", "d2/f3", "d0/f1"].into_iter().enumerate() {
        let bytes = pattern(3001 + i as u64, (40 - 5 * i) * KIB);
        home.put(path, &bytes);
        before.insert(path.into(), bytes);
    }
    Day { _server: server, env, home, burst, base, before, b }
}

/// The merged tree, given the conflict copy's path.
fn merged(d: &Day, copy: &str) -> BTreeMap<String, Vec<u8>> {
    let mut want = d.before.clone();
    want.insert("d1/from-burst".into(), d.b[0].clone());
    want.insert("d3/f0".into(), d.b[2].clone());
    want.insert("out/ckpt.pt".into(), d.b[3].clone());
    want.insert(copy.into(), d.b[1].clone());
    want
}

#[test]
fn home_merges_a_burst_branch_online_undo_and_redo() {
    let mut d = day("hybridfs-merge");
    let env = d.env.clone();
    assert_eq!(d.base.len(), 24);
    let (before, b_conflict) = (d.before.clone(), d.b[1].clone());

    // Dry run, mounted: the plan, nothing applied.
    let dry = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--dry-run", "--json"]);
    assert_eq!(dry.code, Some(3), "the dry run shows conflicts: {dry}");
    let plan = json_of(&dry);
    assert_eq!(plan["applied"].as_bool(), Some(false), "{plan}");
    assert!(plan["bytes_to_fetch"].as_u64().unwrap() >= (50 + 20 + 70) as u64 * KIB as u64, "{plan}");
    assert_tree(d.home.mountpoint(), &before, "after the dry run: nothing applied");

    // The merge, online, while a reader loops over the mount: every file it reads holds the
    // bytes of before or after the merge.
    // The kernel caches the names the merge adds as absent (for its entry timeout, 5 s).
    for p in ["d1/from-burst", "out"] {
        assert!(fs::metadata(d.home.path(p)).is_err(), "{p} is not there before the merge");
    }
    let after = merged(&d, "the copy's name is not known yet");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, reads) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u64;
            let mut bad = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (p, b) in &before {
                    match fs::read(d.home.path(p)) {
                        Ok(got) if got == *b || after.get(p) == Some(&got) => reads += 1,
                        Ok(got) => bad.push(format!("{p}: {} bytes, neither before nor after", got.len())),
                        Err(e) => bad.push(format!("{p}: {e}")),
                    }
                }
            }
            assert!(bad.is_empty(), "a reader during the merge saw: {bad:?}");
            reads
        });
        let out = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, reader.join().unwrap())
    });
    assert!(reads > 0, "the reader read during the merge");
    assert_eq!(out.code, Some(3), "{INV6}: merged with conflicts kept: {out}");
    let rec = json_of(&out);
    let conflicts = rec["conflicts"].as_array().unwrap();
    let content: Vec<&Value> = conflicts.iter().filter(|c| c["kind"] == "content").collect();
    assert_eq!(content.len(), 1, "one content conflict (d2/f3): {rec}");
    assert_eq!(content[0]["path"].as_str(), Some("/d2/f3"), "{rec}");
    let copy = content[0]["copy"].as_str().unwrap().trim_start_matches('/').to_string();
    assert!(copy.starts_with("d2/f3.conflict-burst-n1-"), "conflict copy name: {copy}");
    let base = rec["base_snapshot"].as_str().unwrap_or_else(|| panic!("the base is read from home's fork base, not main's layers: {rec}"));
    assert!(base.starts_with("push-main-"), "{rec}");
    assert!(conflicts.iter().any(|c| c["kind"] == "delete-modify" && c["path"] == "/d0/f1"), "delete vs modify reported: {rec}");
    let id = rec["id"].as_u64().unwrap();
    let pre = rec["pre_merge"].as_str().unwrap().to_string();
    assert!(pre.starts_with("pre-merge-burst-n1-"), "{pre}");

    // Right away, through the same mount, by name before any listing refreshes the kernel's
    // view: the names it cached as absent exist, the file whose attributes and pages it
    // cached (the reader read it) has the branch's bytes (the kernel's caches were invalidated).
    for (p, b) in [("d1/from-burst", &d.b[0]), ("out/ckpt.pt", &d.b[3]), ("d3/f0", &d.b[2])] {
        let got = fs::read(d.home.path(p)).unwrap_or_else(|e| panic!("{INV6}: read {p} right after the merge: {e}"));
        assert_same_bytes(&format!("{p} right after the merge"), &got, b);
    }
    let want = merged(&d, &copy);
    assert_tree(d.home.mountpoint(), &want, &format!("{INV6}: the mount right after the merge"));
    let fsck = d.home.fsck(&[]);
    assert!(fsck.success(), "fsck after the merge: {fsck}");

    // The log, the record, and merging again.
    let log = json_of(&merge_cmd(&d.home, &env, &["log", "--volume", "data", "--json"]));
    assert_eq!(log.as_array().map(Vec::len), Some(1), "{log}");
    let show = merge_cmd(&d.home, &env, &["show", &id.to_string(), "--volume", "data", "--json"]);
    show.assert_success();
    assert_eq!(json_of(&show)["conflicts"], rec["conflicts"], "merge show gives the kept report");
    let again = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    again.assert_success();
    assert_eq!(json_of(&again)["up_to_date"].as_bool(), Some(true), "{again}");

    // Home pushes main: the branch's blocks are in the store already.
    let pushed = push_ok(&d.home);
    assert!(pushed["blocks_uploaded"].as_u64().unwrap() <= 3, "only home's own 3 new blocks go up: {pushed}");

    // Undo, online: back to the pre-merge state right away, the replaced state kept as a
    // snapshot; then redo, online.
    let home = &mut d.home;
    let undo = merge_cmd(home, &env, &["undo", "--volume", "data", "--json"]);
    undo.assert_success();
    let undone = json_of(&undo);
    let saved = undone["undone"].as_str().unwrap().to_string();
    assert!(saved.starts_with("pre-undo-"), "{undone}");
    assert!(fs::metadata(home.path("d1/from-burst")).is_err(), "the undo invalidated the kernel's entry");
    assert_tree(home.mountpoint(), &before, "after merge undo: the pre-merge state");
    let kept = read_tree(&home.path(format!(".snapshots/{saved}")));
    assert_eq!(kept.len(), want.len(), "the pre-undo snapshot holds the merged tree");
    let redo = merge_cmd(home, &env, &["burst-n1", "--volume", "data", "--json"]);
    assert_eq!(redo.code, Some(3), "merging again after the undo: {redo}");
    let got = read_tree(home.mountpoint());
    for (p, b) in want.iter().filter(|(p, _)| !p.contains(".conflict-")) {
        assert_same_bytes(&format!("after the redo: {p}"), &got[p], b);
    }
    assert!(got.values().filter(|b| **b == b_conflict).count() == 1, "{INV6}: the redo keeps the branch's d2/f3 as a copy");
    home.umount();
}

/// `kill -9` (a crash point's abort) during a merge: before the apply batch the tree is the
/// pre-merge one and the merge runs again; after it, the whole merge is there, recorded, and
/// merging again says it is up to date. Never a mix (one batch).
#[test]
fn a_merge_killed_before_or_after_apply_is_never_half_applied() {
    let mut d = day("hybridfs-merge-crash");
    let env = d.env.clone();
    let before = d.before.clone();
    d.home.umount();
    // The human plan of an offline dry run: one line per change and per conflict.
    let dry = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--dry-run"]);
    assert_eq!(dry.code, Some(3), "{dry}");
    assert!(dry.stdout.contains("would merge branch burst-n1") && dry.stdout.contains("/d1/from-burst"), "{dry}");
    assert!(dry.stdout.lines().any(|l| l.starts_with("! content") && l.contains("/d2/f3 -> /d2/f3.conflict-burst-n1-")), "{dry}");
    let mut crash_env = env.clone();
    crash_env.push(("HYBRIDFS_CRASHPOINT", "merge-after-snapshot".into()));
    let killed = merge_cmd(&d.home, &crash_env, &["burst-n1", "--volume", "data", "--json"]);
    assert!(!killed.success() && killed.code != Some(3), "the merge dies at the crash point: {killed}");
    d.home.mount_env(&env_refs(&env));
    assert_tree(d.home.mountpoint(), &before, "killed before apply: the pre-merge tree");
    d.home.umount();
    let log = json_of(&merge_cmd(&d.home, &env, &["log", "--volume", "data", "--json"]));
    assert_eq!(log.as_array().map(Vec::len), Some(0), "nothing recorded: {log}");

    crash_env.last_mut().unwrap().1 = "merge-after-apply".into();
    let blocks_before = d.home.block_files().len();
    let killed = merge_cmd(&d.home, &crash_env, &["burst-n1", "--volume", "data", "--prefetch", "--json"]);
    let fetched = d.home.block_files().len() - blocks_before;
    assert!(fetched >= 4, "--prefetch fetched the branch's 4 new blocks before applying: {fetched}");
    assert!(killed.stderr.contains("fetched 4/4 blocks"), "--prefetch reports its progress: {killed}");
    assert!(!killed.success() && killed.code != Some(3), "the merge dies at the crash point: {killed}");
    let log = json_of(&merge_cmd(&d.home, &env, &["log", "--volume", "data", "--json"]));
    assert_eq!(log.as_array().map(Vec::len), Some(1), "the merge is recorded with its batch: {log}");
    let again = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    again.assert_success();
    assert_eq!(json_of(&again)["up_to_date"].as_bool(), Some(true), "{again}");
    let fsck = d.home.fsck(&[]);
    assert!(fsck.success(), "fsck after a merge killed after apply: {fsck}");
    d.home.mount_env(&env_refs(&env));
    let got = read_tree(d.home.mountpoint());
    let copies: Vec<&String> = got.keys().filter(|k| k.starts_with("d2/f3.conflict-burst-n1-")).collect();
    assert_eq!(copies.len(), 1, "{INV6}: one conflict copy: {:?}", got.keys());
    let copy = copies[0].clone();
    assert_tree(d.home.mountpoint(), &merged(&d, &copy), &format!("{INV6}: killed after apply: the whole merge"));
    d.home.umount();
}

/// Merges are incremental and several branches merge one after another: the burst node
/// pushes more after the first merge, and only that is merged next; a second burst node's
/// branch, cloned before the first merge, merges on top, its new name in the same directory
/// as the first branch's.
#[test]
fn later_merges_take_only_what_the_branch_pushed_since_and_branches_stack() {
    let mut d = day("hybridfs-merge-again");
    let env = d.env.clone();
    // A second burst node, cloned from the same main.
    let mut n2 = TestVolume::builder().name("data").unformatted().build();
    n2.ctl_env(&env_refs(&env), &["clone", "s3://hybridfs-merge-again/pfx/data", "--branch", "burst-n2", "--json"]).assert_success();
    n2.mount_env(&env_refs(&env));
    let n2_new = pattern(5001, 12 * KIB);
    n2.put("d1/from-n2", &n2_new);
    push_ok(&n2);
    n2.umount();

    let first = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    assert_eq!(first.code, Some(3), "{first}");
    let copy = json_of(&first)["conflicts"].as_array().unwrap().iter().find(|c| c["kind"] == "content").unwrap()["copy"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let mut want = merged(&d, &copy);

    // The burst node works on and pushes again: one new file, one more change.
    d.burst.mount_env(&env_refs(&env));
    let later = pattern(6001, 18 * KIB);
    let later_f2 = pattern(6002, 14 * KIB);
    d.burst.put("d1/later", &later);
    d.burst.put("d3/f2", &later_f2);
    push_ok(&d.burst);
    d.burst.umount();
    let second = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    second.assert_success();
    let rec = json_of(&second);
    assert_eq!(rec["base"].as_str(), Some("burst-n1@1"), "the base moved to the last merge point: {rec}");
    assert!(rec["base_snapshot"].is_string(), "the incremental merge reads the fork base the first one held: {rec}");
    let mut paths: Vec<&str> = rec["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, ["/d1/later", "/d3/f2"], "only what the branch pushed since: {rec}");
    want.insert("d1/later".into(), later);
    want.insert("d3/f2".into(), later_f2);

    // The second branch: its new name in d1 beside both others, no conflict.
    let third = merge_cmd(&d.home, &env, &["burst-n2", "--volume", "data", "--json"]);
    third.assert_success();
    assert_eq!(json_of(&third)["conflicts"].as_array().map(Vec::len), Some(0), "{third}");
    want.insert("d1/from-n2".into(), n2_new);
    assert_tree(d.home.mountpoint(), &want, &format!("{INV6}: two merges of one branch and one of another"));
    let log = json_of(&merge_cmd(&d.home, &env, &["log", "--volume", "data", "--json"]));
    assert_eq!(log.as_array().map(Vec::len), Some(3), "{log}");
    d.home.umount();
}

/// Files under `dir`, recursively, by file name (block files are named by their id).
/// The blocks a node's cache holds: its block files, and the blocks inside the packs it keeps
/// whole (`CACHE/STORE/packs/PACK`: a pack's frames one after the other, each named by its
/// content).
fn cached_blocks(cache: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = file_names(cache);
    let stores = fs::read_dir(cache).into_iter().flatten().flatten().map(|e| e.path().join("packs"));
    for e in stores.flat_map(|packs| fs::read_dir(packs).into_iter().flatten().flatten()) {
        let Ok(bytes) = fs::read(e.path()) else { continue };
        let mut at = 0;
        while let Some(n) = hybridfs_blocks::frame_len(&bytes[at..]) {
            if let Some(id) = hybridfs_blocks::frame_id(&bytes[at..at + n]) {
                out.insert(id.to_hex());
            }
            at += n;
        }
    }
    out
}

fn file_names(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    for _ in 0..100_000 {
        let Some(d) = todo.pop() else { break };
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The required end-to-end run of issue 10, invariant 6 (and 5: verified reads; 4: the push
/// that follows): home and two burst clones write during a "day", both push, and home merges
/// both branches **while mounted**, a reader process looping over the mount (every read gives
/// the bytes of before or after, never a mix, never an error). Only metadata moves: home's
/// block directory gains none of the branches' blocks, the reports say what the first reads
/// will fetch, and reading the merged tree fetches them from the store (verified) into the
/// node's cache. The next push of main uploads only home's own three blocks (checked in the
/// store's listing). Both merges are undone, online (back to the tree before), and redone;
/// then, with the cache emptied and the volume mounted again, every byte that came from the
/// branches is read afresh from the store and checked.
#[test]
fn home_merges_two_burst_branches_online_reading_their_blocks_lazily_undo_redo() {
    let bucket = "hybridfs-merge-two";
    let mut d = day(bucket);
    let env = d.env.clone();
    let s3 = d._server.store(bucket, "").unwrap_or_else(|e| panic!("open the bucket: {e}"));

    // The second burst node: a new file big enough for a block object of its own, a rewrite.
    let mut n2 = TestVolume::builder().name("data").unformatted().build();
    n2.ctl_env(&env_refs(&env), &["clone", &format!("s3://{bucket}/pfx/data"), "--branch", "burst-n2", "--json"]).assert_success();
    n2.mount_env(&env_refs(&env));
    let (n2_new, n2_f1) = (pattern(5001, 300 * KIB), pattern(5002, 24 * KIB));
    n2.put("d1/from-n2", &n2_new);
    n2.put("d3/f1", &n2_f1);
    push_ok(&n2);
    n2.umount();
    let branch_blocks: std::collections::BTreeSet<String> =
        file_names(&d.burst.volume_dir().join("blocks")).union(&file_names(&n2.volume_dir().join("blocks"))).cloned().collect();
    assert!(branch_blocks.len() >= 6, "the branches sealed their new files: {branch_blocks:?}");

    // What a reader may see for each file of before: its bytes before, or after both merges.
    let before = d.before.clone();
    let mut after = before.clone();
    after.insert("d3/f0".into(), d.b[2].clone());
    after.insert("d3/f1".into(), n2_f1.clone());
    let cache = d.home.home().join("cache");
    let reader = Reader::start(d.home.root(), d.home.mountpoint(), &before, &after);
    let m1 = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    let m2 = merge_cmd(&d.home, &env, &["burst-n2", "--volume", "data", "--json"]);
    let (reads, bad) = reader.finish();
    assert!(reads > 0, "the reader process read during the merges");
    assert!(bad.is_empty(), "{INV6}: the reader process during the merges saw: {bad:?}");
    assert_eq!(m1.code, Some(3), "{INV6}: burst-n1 merged with its conflicts kept: {m1}");
    assert_eq!(m2.code, Some(0), "burst-n2 merged cleanly on top: {m2}");
    let (r1, r2) = (json_of(&m1), json_of(&m2));
    for r in [&r1, &r2] {
        assert_eq!(r["blocks_fetched"].as_u64(), Some(0), "only metadata moves at merge time: {r}");
        assert!(r["blocks_to_fetch"].as_u64().unwrap() > 0, "the report says what the first reads fetch: {r}");
    }
    assert_eq!(r2["conflicts"].as_array().map(Vec::len), Some(0), "{r2}");
    let copy_of = |r: &Value| r["conflicts"].as_array().unwrap().iter().find(|c| c["kind"] == "content").unwrap()["copy"].as_str().unwrap().trim_start_matches('/').to_string();
    let own = file_names(&d.home.volume_dir().join("blocks"));
    assert!(own.is_disjoint(&branch_blocks), "no block of a branch was downloaded into home's blocks: {:?}", own.intersection(&branch_blocks).collect::<Vec<_>>());
    let fsck = d.home.fsck(&[]);
    assert!(fsck.success() && fsck.stdout.contains("only in the object store"), "fsck counts the remote-only blocks, clean: {fsck}");

    let with_n2 = |mut want: BTreeMap<String, Vec<u8>>| {
        want.insert("d1/from-n2".into(), n2_new.clone());
        want.insert("d3/f1".into(), n2_f1.clone());
        want
    };
    let want = with_n2(merged(&d, &copy_of(&r1)));
    assert_tree(d.home.mountpoint(), &want, &format!("{INV6}: the mount right after both merges"));
    let fetched = cached_blocks(&cache);
    assert!(branch_blocks.is_subset(&fetched), "the reads fetched the branches' blocks into the cache: {:?}", branch_blocks.difference(&fetched).collect::<Vec<_>>());

    // The push of main: one pack of home's own three small blocks; none of the branches'.
    let objects = |kind: &str| s3_list(&s3, &format!("pfx/data/{kind}/"));
    let (packs, blocks) = (objects("packs"), objects("blocks"));
    let pushed = push_ok(&d.home);
    assert_eq!(pushed["blocks_uploaded"].as_u64(), Some(3), "only home's own 3 new blocks go up: {pushed}");
    let new_packs: Vec<String> = objects("packs").into_iter().filter(|k| !packs.contains(k)).collect();
    let new_blocks: Vec<String> = objects("blocks").into_iter().filter(|k| !blocks.contains(k)).collect();
    assert!(new_packs.len() == 1 && new_blocks.is_empty(), "the store gained one pack, no block object: {new_packs:?} {new_blocks:?}; {pushed}");

    // Undo both (newest first), online: the tree before; then redo both.
    for (r, branch) in [(&r2, "burst-n2"), (&r1, "burst-n1")] {
        let undo = merge_cmd(&d.home, &env, &["undo", "--volume", "data", "--json"]);
        undo.assert_success();
        let u = json_of(&undo);
        assert_eq!((u["id"].as_u64(), u["branch"].as_str()), (r["id"].as_u64(), Some(branch)), "{u}");
    }
    assert!(fs::metadata(d.home.path("d1/from-n2")).is_err(), "the undo invalidated the kernel's entry");
    assert_tree(d.home.mountpoint(), &before, "after undoing both merges: the tree before");
    let redo1 = merge_cmd(&d.home, &env, &["burst-n1", "--volume", "data", "--json"]);
    assert_eq!(redo1.code, Some(3), "redo of burst-n1: {redo1}");
    let redo2 = merge_cmd(&d.home, &env, &["burst-n2", "--volume", "data", "--json"]);
    assert_eq!(redo2.code, Some(0), "redo of burst-n2: {redo2}");
    let want = with_n2(merged(&d, &copy_of(&json_of(&redo1))));

    // A fresh read of everything the branches brought: the cache emptied, mounted again.
    d.home.umount();
    fs::remove_dir_all(&cache).unwrap();
    let fsck = d.home.fsck(&[]);
    assert!(fsck.success() && fsck.stdout.contains("only in the object store"), "{fsck}");
    d.home.mount_env(&env_refs(&env));
    assert_tree(d.home.mountpoint(), &want, &format!("{INV6}: after undo and redo, read afresh from the store"));
    let fetched = cached_blocks(&cache);
    assert!(branch_blocks.is_subset(&fetched), "read afresh: fetched again, verified: {:?}", branch_blocks.difference(&fetched).collect::<Vec<_>>());
    d.home.umount();
    let fsck = d.home.fsck(&[]);
    assert!(fsck.success(), "fsck at the end: {fsck}");
}

/// A reader **process** looping over files of the mount while merges run: each whole read of
/// a file (`cmp` against the bytes before and after) must be one of the two; a read that
/// fails or matches neither is written down. Bounded: it stops when told, or after 5 minutes.
struct Reader {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Reader {
    fn start(scratch: &std::path::Path, mount: &std::path::Path, before: &BTreeMap<String, Vec<u8>>, after: &BTreeMap<String, Vec<u8>>) -> Reader {
        let dir = scratch.join("reader");
        let mut script = String::from("end=$(( $(date +%s) + 300 ))\nwhile [ ! -e \"$R/stop\" ] && [ $(date +%s) -lt $end ]; do\n");
        for (i, (p, b)) in before.iter().enumerate() {
            for (side, bytes) in [("before", b), ("after", after.get(p).unwrap_or(b))] {
                fs::create_dir_all(dir.join(side)).unwrap();
                fs::write(dir.join(side).join(i.to_string()), bytes).unwrap();
            }
            let f = mount.join(p);
            script.push_str(&format!(
                "  if cmp -s '{f}' \"$R/before/{i}\" || cmp -s '{f}' \"$R/after/{i}\"; then echo ok; else echo \"bad {p}\"; fi\n",
                f = f.display()
            ));
        }
        script.push_str("done > \"$R/log\" 2>&1\n");
        let child = std::process::Command::new("sh").arg("-c").arg(&script).env("R", &dir).spawn().unwrap_or_else(|e| panic!("start the reader process: {e}"));
        // Reading before the merges start.
        for _ in 0..300 {
            if fs::metadata(dir.join("log")).is_ok_and(|m| m.len() > 0) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Reader { child, dir }
    }

    /// Stop it; (whole reads that matched, what went wrong).
    fn finish(mut self) -> (u64, Vec<String>) {
        fs::write(self.dir.join("stop"), b"").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the reader process: {status}");
        let log = fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let ok = log.lines().filter(|l| *l == "ok").count() as u64;
        (ok, log.lines().filter(|l| *l != "ok").map(String::from).collect())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("stop"), b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys under `prefix` in the test's bucket.
fn s3_list(s3: &hybridfs_cloud::S3Store, prefix: &str) -> Vec<String> {
    use hybridfs_cloud::ObjectStore;
    s3.list(prefix).unwrap_or_else(|e| panic!("list {prefix}: {e}"))
}
