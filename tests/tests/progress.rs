//! Progress of long operations off a terminal (issue 14): `fsck --verify`, `gc`, `rollback`,
//! `clone`, `pull`, `fsck --remote --verify` and `prefetch`, run through the real CLI with stderr a pipe,
//! write plain progress lines there (`verified 0/N blocks, …` … `verified N/N blocks, …`):
//! the first and the last of each pass at least, counts that never go back, the last one
//! complete; stdout holds only the `--json` document. gc and prefetch run in the mount
//! process (their events cross the control socket); fsck, rollback, clone and pull run in the
//! CLI.

use std::collections::BTreeMap;

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_tests::cmd::CmdOutput;
use hybridfs_tests::content::pattern;
use hybridfs_tests::snap::json_of;
use hybridfs_tests::{fail_loudly, TestVolume};
use serde_json::Value;

const KIB: usize = 1 << 10;

/// The `(done, total)` of each plain progress line of `out` that starts with `verb` and
/// counts `unit` (`rolled back 3/10 records, …`): each line checked to be plain (no bar, no
/// escape), and the sequence to be a pass that never goes back and ends complete.
fn progress_of(out: &CmdOutput, verb: &str, unit: &str) -> Vec<(u64, u64)> {
    assert!(!out.stderr.contains('\r') && !out.stderr.contains('\x1b'), "plain progress lines off a terminal: {out}");
    let counts: Vec<(u64, u64)> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix(verb)?.strip_prefix(' '))
        .filter_map(|rest| {
            let (count, after) = rest.split_once(' ')?;
            let noun = after.split([',', ' ']).next()?;
            let (done, total) = count.split_once('/')?;
            (noun == unit).then(|| Some((done.parse().ok()?, total.parse().ok()?)))?
        })
        .collect();
    assert!(counts.len() >= 2, "at least the first and the last `{verb} D/N {unit}` line: {counts:?}\n{out}");
    let total = counts[0].1;
    assert!(counts.iter().all(|&(_, n)| n == total), "one total for the pass: {counts:?}");
    assert!(counts.windows(2).all(|w| w[0].0 <= w[1].0), "the counts never go back: {counts:?}");
    assert_eq!(counts.first().map(|c| c.0), Some(0), "the first line comes before any work: {counts:?}");
    assert_eq!(counts.last(), Some(&(total, total)), "the last line says {total}/{total}: {counts:?}\n{out}");
    counts
}

fn int(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("no integer {k:?} in {v}"))
}

fn ok_json(out: &CmdOutput) -> Value {
    out.assert_success();
    json_of(out)
}

#[test]
fn fsck_gc_and_rollback_report_progress_off_a_terminal() {
    let mut vol = TestVolume::builder().name("prog").block_size("64K").build();
    // 200 files of 4 blocks each, sealed: 800 blocks to verify.
    for i in 0..200u64 {
        vol.put(&format!("d{:02}/f{i:03}", i % 10), &pattern(i, 256 * KIB));
    }
    vol.ctl(&["snapshot", "create", "s1", "--volume", "prog"]).assert_success();

    // fsck --verify, in the CLI: every block read and verified.
    let out = vol.fsck(&["--verify", "--json"]);
    let report = ok_json(&out);
    let counts = progress_of(&out, "verified", "blocks");
    assert_eq!(counts.last().unwrap().0, int(&report, "verified_blocks"), "the lines count the blocks the report verified: {report}");
    assert!(int(&report, "verified_blocks") >= 800, "{report}");
    let plain = vol.fsck(&["--verify"]);
    plain.assert_success();
    progress_of(&plain, "verified", "blocks");
    assert!(plain.stdout.lines().all(|l| !l.starts_with("verified ")), "progress stays off stdout: {plain}");

    // gc, in the mount process: half the files rewritten, s1 (which kept their old blocks)
    // deleted; the collector frees those blocks and says so.
    for i in (0..200u64).step_by(2) {
        vol.put(&format!("d{:02}/f{i:03}", i % 10), &pattern(10_000 + i, 256 * KIB));
    }
    vol.ctl(&["snapshot", "delete", "s1", "--volume", "prog"]).assert_success();
    let out = vol.ctl(&["gc", "--volume", "prog", "--grace", "0", "--json"]);
    let gc = ok_json(&out);
    let blocks = progress_of(&out, "collected", "blocks");
    assert!(int(&gc, "blocks_freed") >= 400, "the 100 old versions of 4 blocks each are freed: {gc}");
    assert!(blocks.last().unwrap().0 >= int(&gc, "blocks_freed"), "every freed block was counted: {blocks:?} {gc}");
    assert!(out.stderr.lines().any(|l| l.starts_with("collected ") && l.contains(" freed")), "gc's lines say what it freed: {out}");

    // rollback, unmounted, in the CLI: the records changed since s2 restored.
    vol.ctl(&["snapshot", "create", "s2", "--volume", "prog"]).assert_success();
    for i in 0..150u64 {
        std::fs::remove_file(vol.path(format!("d{:02}/f{i:03}", i % 10))).unwrap();
    }
    vol.umount();
    let out = vol.ctl(&["rollback", "s2", "--volume", "prog", "--json"]);
    let rb = ok_json(&out);
    let counts = progress_of(&out, "rolled back", "records");
    assert_eq!(counts.last().unwrap().0, int(&rb, "records_restored"), "the lines count the records restored: {rb}");
    assert!(int(&rb, "records_restored") >= 150, "{rb}");
    vol.assert_fsck_clean("after the rollback");
}

#[test]
fn clone_pull_remote_verify_and_prefetch_report_progress_off_a_terminal() {
    let server = SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the progress tests need a real S3 server: {e}")));
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    server.store("hybridfs-progress", "").unwrap_or_else(|e| panic!("create the bucket: {e}"));
    let mut a = TestVolume::builder().name("data").block_size("64K").store("s3://hybridfs-progress/pfx").unmounted().build();
    a.mount_env(&env);
    // 2,000 small files (an inode and a name each, at least) and 40 blocks of data.
    let mut files = BTreeMap::new();
    for i in 0..2000u64 {
        files.insert(format!("d{:02}/f{i:04}", i % 50), pattern(i, 512));
    }
    for i in 0..10u64 {
        files.insert(format!("big/{i}"), pattern(100 + i, 256 * KIB));
    }
    for (path, bytes) in &files {
        a.put(path, bytes);
    }
    ok_json(&a.ctl(&["push", "--volume", "data", "--json"]));

    // fsck --remote --verify, in the CLI: every block downloaded and verified.
    let out = a.ctl_env(&env, &["fsck", "data", "--remote", "--verify", "--json"]);
    let check = ok_json(&out);
    let counts = progress_of(&out, "verified", "blocks");
    assert_eq!(counts.last().unwrap().0, int(&check, "blocks"), "{check}");
    assert_eq!(int(&check, "verified"), int(&check, "blocks"), "{check}");

    // clone, in the CLI: the records of the layers applied, the layer bytes downloaded.
    let mut b = TestVolume::builder().name("data").unformatted().build();
    let out = b.ctl_env(&env, &["clone", "s3://hybridfs-progress/pfx/data", "--branch", "nodeb", "--json"]);
    let cloned = ok_json(&out);
    let counts = progress_of(&out, "cloned", "records");
    assert_eq!(counts.last().unwrap().0, int(&cloned, "records"), "the lines count the records applied: {cloned}");
    assert!(int(&cloned, "records") >= 4000, "{cloned}");
    let last = out.stderr.lines().filter(|l| l.starts_with("cloned ")).last().unwrap_or_default();
    let (done, total) = last.split_once(", ").and_then(|(_, r)| r.split_once(" (")).and_then(|(b, _)| b.split_once(" of ")).unwrap_or_else(|| panic!("bytes in {last:?}"));
    assert_eq!(done, total, "every byte of the layers was downloaded: {last}");

    // pull, in the CLI (B unmounted): A's next push.
    for i in 0..1000u64 {
        a.put(&format!("new/{:02}/f{i:04}", i % 20), &pattern(50_000 + i, 512));
    }
    ok_json(&a.ctl(&["push", "--volume", "data", "--json"]));
    let out = b.ctl_env(&env, &["pull", "--volume", "data", "--json"]);
    let pulled = ok_json(&out);
    let counts = progress_of(&out, "pulled", "records");
    assert_eq!(counts.last().unwrap().0, int(&pulled, "records"), "{pulled}");
    assert!(int(&pulled, "records") >= 2000, "{pulled}");

    // prefetch, in B's mount process: the blocks of big/ (in the store only) fetched.
    b.mount_env(&env);
    let big = b.path("big");
    let out = b.ctl(&["prefetch", big.to_str().unwrap(), "--json"]);
    let fetched = ok_json(&out);
    let counts = progress_of(&out, "prefetched", "blocks");
    assert_eq!(counts.last().unwrap().0, int(&fetched, "blocks"), "{fetched}");
    assert_eq!(int(&fetched, "blocks"), 40, "10 files of 4 blocks: {fetched}");
}
