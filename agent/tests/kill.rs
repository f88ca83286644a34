//! A node killed with `kill -9`, with real processes at 600x: its loss since its last push is
//! reported, and nothing else is lost.
//!
//! One `local` node is rented on high load; a checkpoint is written on its mount and pushed by
//! the node's schedule (the test waits for the report that says so); a second checkpoint is
//! written and reported unpushed; then the node process is killed with SIGKILL. The provider
//! notices it gone, removes its namespace, processes and mount; the controller records the
//! loss (the bytes the last report held unpushed, the file they are in, since that last push). At 14:30 the merge
//! window merges its branch. Invariant 6 (no lost writes in merges): home holds the pushed
//! checkpoint byte for byte; the unpushed one is the reported loss, nothing more is missing.
//!
//! Needs root, iproute2, /dev/fuse and `hybridctl` (env HYBRIDCTL, or built next to the agent).

mod common;

use std::path::{Path, PathBuf};

use common::{bytes, can_run, ctl_ok, eventually, mounted, processes_naming, start, write_config, write_synced, Cfg, Sweeper};
use hybrid_agent::clock::{Clock, ScaledClock};
use hybrid_agent::state::{Phase, StateStore};

const SPEED: f64 = 600.0;
const START: &str = "2026-12-01T09:00:00Z";

fn config(dir: &Path) -> PathBuf {
    let burst = ("08:00", "14:30", "UTC");
    let merge = ("14:30", "07:30", "UTC");
    let c = Cfg { every: "5m", up: (80, "10m"), down: Some((30, "30m")), burst, max_nodes: 1, lease: "4h", merge, subnet: "10.249", stop_grace_secs: 14400, node: Some(("2h", "10m")) };
    write_config(dir, "agent.toml", &c)
}

#[test]
fn no_lost_writes_a_node_killed_with_sigkill_loses_only_what_it_had_not_pushed_and_says_so() {
    let Some(ctl) = can_run() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let _sweeper = Sweeper(dir.join("state/local-nodes"));
    ctl_ok(&ctl, dir, &["format", "main", "--store", &format!("file://{}/store", dir.display())]);
    std::fs::write(dir.join("load"), "95\n").unwrap();

    let clock = ScaledClock::starting_now(START.parse().unwrap(), SPEED);
    let _ctrl = start(&ctl, dir, &config(dir), &["--clock-start", START, "--clock-speed", &SPEED.to_string()]);
    let store = StateStore::open(&dir.join("state")).unwrap();
    let nodes = dir.join("state/local-nodes");
    let mut mnt = PathBuf::new();
    eventually("the node has mounted the volume", 60, || {
        let found = std::fs::read_dir(&nodes).ok().and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("mnt")).find(|m| mounted(m)));
        found.map(|m| mnt = m).is_some()
    });
    // Between the thresholds: no release, and no second node after the first is gone.
    std::fs::write(dir.join("load"), "50\n").unwrap();
    let id = mnt.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();

    // A checkpoint the node's schedule pushes (every 2 agent hours: 12 real seconds).
    let pushed = bytes(1, 1_500_000);
    write_synced(&mnt.join("ckpt-1.pt"), &pushed);
    let written = clock.now();
    let report = || store.load().unwrap().nodes[0].last_report.clone();
    eventually("a push after the first checkpoint is reported", 40, || {
        report().is_some_and(|r| r.last_push_at.is_some_and(|p| p > written) && r.unpushed_bytes == 0)
    });
    let last_push = report().unwrap().last_push_at;

    // A second checkpoint, reported unpushed; then the node is killed before its next push.
    let lost = bytes(2, 700_000);
    write_synced(&mnt.join("ckpt-2.pt"), &lost);
    eventually("the second checkpoint is reported unpushed, by path", 20, || {
        report().is_some_and(|r| r.unpushed_bytes >= lost.len() as u64 && r.unpushed_paths.iter().any(|p| p == "/ckpt-2.pt"))
    });
    let instance: serde_json::Value = serde_json::from_slice(&std::fs::read(mnt.parent().unwrap().join("instance.json")).unwrap()).unwrap();
    let pid = instance["pid"].as_i64().unwrap() as i32;
    // SAFETY: SIGKILL to the node process this test's controller started (its pid from the
    // provider's record; the node is alive: it just reported).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = clock.now();

    eventually("the killed node is noticed, cleaned up and its loss recorded", 30, || {
        store.load().unwrap().nodes[0].phase == Phase::Terminated
    });
    let rec = store.load().unwrap().nodes[0].clone();
    let loss = rec.loss.clone().expect("the loss of a killed node is recorded");
    assert!(loss.bytes >= lost.len() as u64 && loss.bytes < (pushed.len() + lost.len()) as u64, "{loss:?}");
    assert_eq!(loss.since, last_push, "lost: everything written after its last push");
    assert_eq!((loss.files, loss.paths.as_slice()), (1, &["/ckpt-2.pt".to_string()][..]), "the loss names the unpushed checkpoint, only it");
    assert!(killed < "2026-12-01T14:30:00Z".parse().unwrap(), "the machine is too slow for this test at {SPEED}x");
    assert!(!mounted(&mnt) && !Path::new("/run/netns").join(format!("hy-{id}")).exists(), "the killed node is cleaned up");

    // The merge window merges what it did push.
    eventually("its branch is merged at 14:30", 60, || store.load().unwrap().nodes[0].merged);
    drop(_ctrl);
    assert_eq!(store.load().unwrap().nodes.len(), 1, "no second node was rented");
    eventually("no process of the test is left", 10, || processes_naming(&dir.display().to_string()).is_empty());
    let home_mnt = dir.join("home-mnt");
    std::fs::create_dir_all(&home_mnt).unwrap();
    let hm = home_mnt.display().to_string();
    ctl_ok(&ctl, dir, &["mount", "main", &hm, "-d"]);
    let got = std::fs::read(home_mnt.join("ckpt-1.pt"));
    let absent = !home_mnt.join("ckpt-2.pt").exists();
    ctl_ok(&ctl, dir, &["umount", &hm]);
    assert!(got.unwrap() == pushed, "the pushed checkpoint came home byte for byte");
    assert!(absent, "the unpushed checkpoint is the reported loss");
}
