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
