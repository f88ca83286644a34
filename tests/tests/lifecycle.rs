//! The mount process's life cycle: SIGTERM unmounts cleanly, flushing and sealing everything
//! as `hybridctl umount` does (invariant 1: nothing written is lost on a clean stop).

use std::fs;
use std::time::Duration;

use hybridfs_tests::volume::MountState;
use hybridfs_tests::{poll_until, procs, TestVolume};

#[test]
fn sigterm_unmounts_cleanly_and_loses_nothing() {
    let mut vol = TestVolume::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    fs::write(vol.path("big"), &data).unwrap();
    fs::write(vol.path("small"), b"small file").unwrap();
    let pid = vol.mount_pid().expect("mount pid");
    // SAFETY: sending a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let gone = poll_until(Duration::from_secs(60), Duration::from_millis(20), || !procs::pid_alive(pid));
    assert!(gone, "mount process {pid} still running 60 s after SIGTERM");
    assert!(!procs::is_mounted(vol.mountpoint()), "SIGTERM left the mount attached");
    vol.set_state(MountState::Unmounted);
    assert!(vol.mount_log().contains("everything flushed"), "no clean shutdown in the log:\n{}", vol.mount_log());
    let fsck = vol.fsck(&["--verify"]);
    assert!(fsck.success(), "fsck after SIGTERM: {fsck}");
    assert!(fsck.stdout.contains(" 0 staged blocks"), "unmount seals everything: {fsck}");
    vol.mount();
    assert_eq!(fs::read(vol.path("big")).unwrap(), data);
    assert_eq!(fs::read(vol.path("small")).unwrap(), b"small file");
}

/// `hybridctl status` lists the mount process's named workers (from its control API): core's
/// sealer and the lazy block store's fetchers beside the node's own; and a request run through the control socket leaves the
/// control worker idle with a last run.
#[test]
fn status_lists_the_mount_processes_workers() {
    let vol = TestVolume::new();
    vol.ctl(&["snapshot", "create", "s1", "--volume", vol.name()]).assert_success();
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    let workers = v[0]["workers"].as_array().unwrap_or_else(|| panic!("no workers in status: {out}"));
    let names: Vec<&str> = workers.iter().filter_map(|w| w["name"].as_str()).collect();
    for want in ["sealer", "fetch-0", "metrics-writer", "control", "collector"] {
        assert!(names.contains(&want), "worker {want} missing from {names:?}");
    }
    let control = workers.iter().find(|w| w["name"] == "control").expect("control worker");
    assert!(control["last_run"].as_u64().is_some(), "the snapshot request ran through the control worker: {control}");
    assert_eq!(control["failures"], 0, "{control}");
    let human = vol.ctl(&["status", vol.name()]);
    human.assert_success();
    assert!(human.stdout.contains("workers: "), "{human}");
    for want in ["sealer idle", "metrics-writer idle", "fetch-0 idle"] {
        assert!(human.stdout.contains(want), "{want} missing: {human}");
    }
}
