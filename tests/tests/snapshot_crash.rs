//! Snapshot operations interrupted by a crash (`HYBRIDFS_CRASHPOINT=<name>` makes the process
//! doing the work abort at that point, like `kill -9`). One scenario per crash point, each
//! with the work done by the mount process (env var on `hybridctl mount`; the CLI command then
//! fails with a broken connection, exit 1) or by the CLI itself on an unmounted volume.
//!
//! After every crash:
//! - invariant 1: `fsck` is clean and no fsync'd data of the live tree is lost;
//! - invariant 2: a snapshot either exists whole, showing exactly the tree of its time, or
//!   does not exist (and its name can then be used);
//! - a rollback either happened completely or not at all (whole-tree comparison), and a saved
//!   `pre-rollback-*` snapshot shows the tree from before it;
//! - gc can be run again and then frees what it should (and never what is still referenced).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt};
use std::time::Duration;

use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::snap::{as_view, assert_same_tree, is_pre_rollback_name, read_tree, without_mtimes, Tree};
use hybridfs_tests::{sys, TestVolume};

const MIB: usize = 1 << 20;
const CRASH: &str = "HYBRIDFS_CRASHPOINT";
const INV1: &str = "invariant 1: after a crash fsck is clean and fsync'd data survives";
const INV2: &str = "invariant 2: a snapshot is all there, unchanged, or not there at all";
/// How long a mount process that hit a crash point may take to be gone.
const DIE_LIMIT: Duration = Duration::from_secs(30);

fn put(vol: &TestVolume, rel: &str, data: &[u8]) {
    let p = vol.path(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {rel}: {e}"));
    f.write_all(data).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    f.sync_all().unwrap_or_else(|e| panic!("fsync {rel}: {e}"));
    File::open(p.parent().unwrap()).unwrap().sync_all().unwrap();
}

/// The base tree every scenario starts from, all of it fsync'd: `keep` is never changed,
/// `churn` is overwritten in the scenarios that need dead blocks.
fn base_tree(vol: &TestVolume) {
    put(vol, "keep", &pattern(1, 3 * MIB + 5));
    put(vol, "churn", &pattern(2, 4 * MIB));
    put(vol, "small/a", &pattern(3, 100));
    put(vol, "small/b", &pattern(4, 4096));
    put(vol, "dir/sub/c", &pattern(5, 70_000));
    symlink("keep", vol.path("ln")).unwrap();
    sys::setxattr(&vol.path("small/a"), "user.k", b"v", 0).unwrap();
    File::open(vol.mountpoint()).unwrap().sync_all().unwrap();
}

/// Changes to the base tree (fsync'd), for the state after a snapshot.
fn change_tree(vol: &TestVolume) {
    put(vol, "churn", &pattern(20, 4 * MIB));
    let f = OpenOptions::new().write(true).open(vol.path("small/b")).unwrap();
    f.write_all_at(b"changed", 100).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(vol.path("dir/sub/c")).unwrap();
    fs::rename(vol.path("small/a"), vol.path("dir/a-moved")).unwrap();
    put(vol, "added/big", &pattern(21, 2 * MIB + 1));
    put(vol, "added/small", &pattern(22, 9));
    File::open(vol.path("dir")).unwrap().sync_all().unwrap();
    File::open(vol.path("small")).unwrap().sync_all().unwrap();
}

/// Runs a command against a mount started with a crash point: it must fail with exit 1 (the
/// connection broke) and the mount process must be gone; the dead mount is then detached.
fn crash_mounted(vol: &mut TestVolume, point: &str, args: &[&str]) {
    let pid = vol.mount_pid().expect("mount.json has the mount's pid");
    let out = vol.ctl(args);
    assert_eq!(
        out.code,
        Some(1),
        "with {CRASH}={point} on the mount, `{}` must fail with exit 1 (broken connection): {out}",
        args.join(" ")
    );
    assert!(
        vol.wait_mount_died(pid, DIE_LIMIT),
        "the mount process {pid} must have aborted at crash point {point}; log:\n{}",
        vol.mount_log()
    );
    vol.clean_dead_mount();
}

/// Runs a CLI command on the unmounted volume with a crash point: it must not succeed.
fn crash_unmounted(vol: &TestVolume, point: &str, args: &[&str]) {
    let out = vol.ctl_env(&[(CRASH, point)], args);
    assert!(
        !out.success() && !out.timed_out,
        "with {CRASH}={point}, `hybridctl {}` must abort at the crash point: {out}",
        args.join(" ")
    );
}

fn live_matches(vol: &TestVolume, expected: &Tree, when: &str) {
    assert_same_tree(&format!("{INV1}: live tree {when}"), &without_mtimes(&read_tree(vol.mountpoint())), &without_mtimes(expected));
}

// ---- snapshot create ------------------------------------------------------------------------

/// A crash while creating snapshot `c1` of the base tree. `must_exist`: the crash point is
/// after the synced commit, so the snapshot is durable.
fn snapshot_create_crash(point: &str, mounted: bool, must_exist: bool) {
    let mut vol = TestVolume::new();
    base_tree(&vol);
    let t0 = read_tree(vol.mountpoint());
    if mounted {
        vol.umount();
        vol.mount_env(&[(CRASH, point)]);
        // Unsealed data too: written after the mount, so the snapshot has to seal it.
        put(&vol, "late", &pattern(9, 2 * MIB + 3));
        crash_mounted(&mut vol, point, &["snapshot", "create", "c1", "--volume", "vol"]);
    } else {
        vol.umount();
        crash_unmounted(&vol, point, &["snapshot", "create", "c1", "--volume", "vol"]);
    }
    vol.assert_fsck_clean(&format!("after a crash at {point}"));
    vol.mount();
    let live = read_tree(vol.mountpoint());
    if mounted {
        let late = fs::read(vol.path("late")).unwrap_or_else(|e| panic!("{INV1}: fsync'd file `late` lost: {e}"));
        assert_same_bytes(&format!("{INV1}: late"), &late, &pattern(9, 2 * MIB + 3));
    }
    let mut others = live.clone();
    others.0.remove("late");
    assert_same_tree(
        &format!("{INV1}: live tree after a crash at {point}"),
        &without_mtimes(&others),
        &without_mtimes(&t0),
    );
    match vol.snap_show("c1") {
        Some(s) => {
            assert_eq!(s.name, "c1");
            assert_same_tree(
                &format!("{INV2}: c1 exists after a crash at {point}, so it must show the whole tree"),
                &without_mtimes(&read_tree(&vol.snapshot_path("c1"))),
                &without_mtimes(&as_view(&live)),
            );
        }
        None => {
            assert!(!must_exist, "{INV2}: crash point {point} is after the synced commit: c1 must exist");
            let seen = fs::metadata(vol.snapshot_path("c1")).is_ok();
            assert!(!seen, "c1 is not in the catalogue but .snapshots/c1 exists");
            vol.snap_create("c1");
        }
    }
    // Either way the snapshot now works like any other.
    put(&vol, "keep", &pattern(30, 10));
    assert_same_tree(
        &format!("{INV2}: c1 after the live tree changed"),
        &without_mtimes(&read_tree(&vol.snapshot_path("c1"))),
        &without_mtimes(&as_view(&live)),
    );
    vol.umount();
    vol.assert_fsck_clean(&format!("after recovering from {point}"));
}

#[test]
fn snapshot_after_seal_mounted() {
    snapshot_create_crash("snapshot-after-seal", true, false);
}

#[test]
fn snapshot_after_seal_unmounted() {
    snapshot_create_crash("snapshot-after-seal", false, false);
}

#[test]
fn snapshot_after_commit_mounted() {
    snapshot_create_crash("snapshot-after-commit", true, true);
}

#[test]
fn snapshot_after_commit_unmounted() {
    snapshot_create_crash("snapshot-after-commit", false, true);
}

// ---- snapshot delete ------------------------------------------------------------------------

/// Base tree, snapshot s1, churn overwritten, unmounted: s1 alone holds the old 4 MiB of churn.
/// Returns (tree at s1, live tree, block files with everything sealed).
fn with_dead_blocks(vol: &mut TestVolume) -> (Tree, Tree, usize) {
    base_tree(vol);
    let t1 = read_tree(vol.mountpoint());
    vol.snap_create("s1");
    change_tree(vol);
    let t2 = read_tree(vol.mountpoint());
    vol.umount();
    let n0 = vol.block_files().len();
    (t1, t2, n0)
}

fn delete_crash(mounted: bool) {
    let point = "delete-after-commit";
    let mut vol = TestVolume::new();
    let (t1, t2, n0) = with_dead_blocks(&mut vol);
    if mounted {
        vol.mount_env(&[(CRASH, point)]);
        crash_mounted(&mut vol, point, &["snapshot", "delete", "s1"]);
    } else {
        crash_unmounted(&vol, point, &["snapshot", "delete", "s1"]);
    }
    vol.assert_fsck_clean(&format!("after a crash at {point}"));
    assert_eq!(vol.block_files().len(), n0, "a crashed delete removed block files");
    vol.mount();
    live_matches(&vol, &t2, &format!("after a crash at {point}"));
    if let Some(s) = vol.snap_show("s1") {
        assert_same_tree(
            &format!("{INV2}: s1 still exists after a crash at {point}, so it is whole"),
            &without_mtimes(&read_tree(&vol.snapshot_path("s1"))),
            &without_mtimes(&as_view(&t1)),
        );
        panic!("{INV2}: crash point {point} is after the synced commit: s1 must be deleted, but it is listed: {s:?}");
    }
    vol.umount();
    // The collection queued by the delete still happens.
    let gc = vol.gc(0);
    let n1 = vol.block_files().len();
    assert!(n1 <= n0, "gc added block files ({n0} -> {n1})");
    assert!(gc.blocks_freed >= 4, "gc after a crash at {point} frees the 4 old blocks of churn: {gc:?}");
    assert_eq!(n0 - n1, gc.blocks_freed as usize, "the blocks directory shrinks by blocks_freed: {gc:?}");
    vol.assert_fsck_clean(&format!("after gc following a crash at {point}"));
    vol.mount();
    live_matches(&vol, &t2, "after gc");
    vol.umount();
}

#[test]
fn delete_after_commit_mounted() {
    delete_crash(true);
}

#[test]
fn delete_after_commit_unmounted() {
    delete_crash(false);
}

// ---- rollback -------------------------------------------------------------------------------

fn rollback_crash(point: &str) {
    let mut vol = TestVolume::new();
    base_tree(&vol);
    let t1 = read_tree(vol.mountpoint());
    vol.snap_create("s1");
    change_tree(&vol);
    let t2 = read_tree(vol.mountpoint());
    vol.umount();
    crash_unmounted(&vol, point, &["rollback", "s1", "--volume", "vol", "--json"]);
    vol.assert_fsck_clean(&format!("after a crash at {point}"));

    vol.mount();
    let live = read_tree(vol.mountpoint());
    let rolled_back = if without_mtimes(&live) == without_mtimes(&t1) {
        true
    } else {
        live_matches(&vol, &t2, &format!("after a crash at {point}: neither s1 (rolled back) nor the old state;"));
        false
    };
    eprintln!("{point}: rollback {}", if rolled_back { "happened" } else { "did not happen" });
    if rolled_back {
        // A finished rollback must have saved the state before it.
        assert_same_tree("after a rollback, the live tree equals s1 exactly", &live, &t1);
    }
    let saved: Vec<String> = vol.snap_names().into_iter().filter(|n| n != "s1").collect();
    assert!(saved.len() <= 1, "at most one snapshot saved by one rollback: {saved:?}");
    assert!(saved.iter().all(|n| is_pre_rollback_name(n)), "only pre-rollback-* snapshots appear: {saved:?}");
    assert!(!rolled_back || saved.len() == 1, "a rollback that happened saved the old state first: {saved:?}");
    for name in &saved {
        assert_same_tree(
            &format!("{INV2}: {name} (saved before a crash at {point}) holds the tree from before the rollback"),
            &read_tree(&vol.snapshot_path(name)),
            &as_view(&t2),
        );
    }
    assert_same_tree(&format!("{INV2}: s1 after a crash at {point}"), &read_tree(&vol.snapshot_path("s1")), &as_view(&t1));
    vol.umount();

    // Run it to completion.
    let rb = vol.rollback("s1");
    vol.assert_fsck_clean(&format!("after the rollback that followed a crash at {point}"));
    vol.mount();
    assert_same_tree("the rollback re-run after a crash: live tree equals s1", &read_tree(vol.mountpoint()), &t1);
    let before_rerun = if rolled_back { &t1 } else { &t2 };
    assert_same_tree(
        &format!("{INV2}: {} holds the tree from before the re-run", rb.saved_as.name),
        &read_tree(&vol.snapshot_path(&rb.saved_as.name)),
        &as_view(before_rerun),
    );
    vol.umount();
}

#[test]
fn rollback_after_saved() {
    rollback_crash("rollback-after-saved");
}

#[test]
fn rollback_after_restore() {
    rollback_crash("rollback-after-restore");
}

// ---- gc -------------------------------------------------------------------------------------

fn gc_crash(point: &str, mounted: bool) {
    let mut vol = TestVolume::new();
    let (_t1, t2, n0) = with_dead_blocks(&mut vol);
    if mounted {
        vol.mount_env(&[(CRASH, point)]);
        vol.snap_delete("s1");
        crash_mounted(&mut vol, point, &["gc", "--volume", "vol", "--grace", "0", "--json"]);
    } else {
        vol.snap_delete("s1");
        crash_unmounted(&vol, point, &["gc", "--volume", "vol", "--grace", "0", "--json"]);
    }
    vol.assert_fsck_clean(&format!("after a crash at {point}"));
    let n_mid = vol.block_files().len();
    assert!(n_mid <= n0, "a crashed gc added block files ({n0} -> {n_mid})");
    vol.mount();
    live_matches(&vol, &t2, &format!("after a crash at {point}"));
    assert!(vol.snap_names().is_empty(), "s1 stays deleted");
    vol.umount();

    let gc = vol.gc(0);
    let n1 = vol.block_files().len();
    assert!(n1 <= n_mid, "gc added block files ({n_mid} -> {n1})");
    assert_eq!(
        n_mid - n1,
        gc.blocks_freed as usize,
        "after a crash at {point}, the re-run's blocks_freed must count the block files it removed \
         ({n_mid} -> {n1}), not blocks a crashed pass had already deleted: {gc:?}"
    );
    assert!(
        n0 - n1 >= 4,
        "the crashed gc and its re-run together free the 4 old blocks of churn ({n0} -> {n_mid} -> {n1}): {gc:?}"
    );
    vol.assert_fsck_clean(&format!("after re-running gc following a crash at {point}"));
    let again = vol.gc(0);
    assert_eq!(again.blocks_freed, 0, "a third gc finds nothing: {again:?}");
    vol.mount();
    live_matches(&vol, &t2, &format!("after gc re-run following a crash at {point}"));
    assert_same_bytes("live churn", &fs::read(vol.path("churn")).unwrap(), &pattern(20, 4 * MIB));
    vol.umount();
}

#[test]
fn gc_after_versions_unmounted() {
    gc_crash("gc-after-versions", false);
}

#[test]
fn gc_after_versions_mounted() {
    gc_crash("gc-after-versions", true);
}

#[test]
fn gc_after_block_delete_unmounted() {
    gc_crash("gc-after-block-delete", false);
}

#[test]
fn gc_after_block_delete_mounted() {
    gc_crash("gc-after-block-delete", true);
}
