//! Faults with real processes in an accelerated day (600x, `local` nodes): the controller
//! killed with SIGKILL mid-day, and the object store unreachable through a merge window.
//!
//! * **Controller restart**: one node runs and has pushed a checkpoint; the controller gets
//!   SIGKILL and is started again (its agent time continuing: `--clock-start` now). It adopts
//!   the node from its state and the provider's tags (the node's reports reach the new
//!   process), rents no second node although the load stays high, and at night drains the
//!   node and merges its branch: home holds both checkpoints, the one written after the
//!   restart too (invariant 6, no lost writes in merges).
//! * **Store down in the merge window**: the node is drained and terminated when the burst
//!   window closes (its branch pushed); then the store goes away (the `file://` store's
//!   directory is replaced by a plain file: every store call fails) before the merge window
//!   opens. The merge is retried every step until the deadline; then the night is reported
//!   missed, the alert command runs (once, `HYBRID_AGENT_UNMERGED=1`) and
//!   `hybrid_agent_merge_deadline_missed_total` is 1. The branch stays unmerged, no loss is
//!   recorded. The store comes back; the controller is restarted with its clock at the next
//!   night (the state is all in files; a day of waiting would take 144 s at 600x) and merges
//!   the branch: home holds the checkpoint byte for byte.
//!
//! Needs root, iproute2, /dev/fuse and `hybridctl` (env HYBRIDCTL, or built next to the agent).

mod common;

use std::path::{Path, PathBuf};

use common::{bytes, can_run, ctl_ok, eventually, mounted, processes_naming, start, write_config, write_synced, Cfg, Sweeper};
use hybrid_agent::clock::{Clock, ScaledClock};
use hybrid_agent::state::{Phase, State, StateStore};
use jiff::Timestamp;

const SPEED: f64 = 600.0;

fn state(store: &StateStore) -> State {
    store.load().unwrap()
}

/// hybridctl, a scratch folder with the home volume `main` (a file store) and a high load,
/// and what sweeps the nodes a failed run leaves; `None` when the test cannot run here.
fn begin() -> Option<(PathBuf, tempfile::TempDir, Sweeper)> {
    let ctl = can_run()?;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let sweeper = Sweeper(dir.join("state/local-nodes"));
    ctl_ok(&ctl, dir, &["format", "main", "--store", &format!("file://{}/store", dir.display())]);
    std::fs::write(dir.join("load"), "95\n").unwrap();
    Some((ctl, scratch, sweeper))
}

/// Waits for the one node's mount; its path.
fn node_mount(dir: &Path) -> PathBuf {
    let nodes = dir.join("state/local-nodes");
    let mut mnt = PathBuf::new();
    eventually("the node has mounted the volume", 60, || {
        let found = std::fs::read_dir(&nodes).ok().and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("mnt")).find(|m| mounted(m)));
        found.map(|m| mnt = m).is_some()
    });
    mnt
}

/// Mounts home, reads `names`, unmounts.
fn home_files(ctl: &Path, dir: &Path, names: &[&str]) -> Vec<Option<Vec<u8>>> {
    let home_mnt = dir.join("home-mnt");
    std::fs::create_dir_all(&home_mnt).unwrap();
    let hm = home_mnt.display().to_string();
    ctl_ok(ctl, dir, &["mount", "main", &hm, "-d"]);
    let got = names.iter().map(|n| std::fs::read(home_mnt.join(n)).ok()).collect();
    ctl_ok(ctl, dir, &["umount", &hm]);
    got
}

#[test]
fn no_lost_writes_a_controller_killed_mid_day_adopts_its_node_rents_no_second_and_merges_it_at_night() {
    let Some((ctl, scratch, _sweeper)) = begin() else { return };
    let dir = scratch.path();
    let c = Cfg {
        every: "5m",
        up: (80, "10m"),
        down: Some((30, "30m")),
        burst: ("08:00", "14:00", "UTC"),
        max_nodes: 1,
        lease: "4h",
        merge: ("14:00", "07:30", "UTC"),
        subnet: "10.236",
        stop_grace_secs: 14400,
        node: Some(("1h", "10m")),
    };
    let config = write_config(dir, "agent.toml", &c);
    let start_at = "2026-12-01T09:00:00Z";
    let clock = ScaledClock::starting_now(start_at.parse().unwrap(), SPEED);
    let speed = SPEED.to_string();
    let mut ctrl = start(&ctl, dir, &config, &["--clock-start", start_at, "--clock-speed", &speed]);
    let store = StateStore::open(&dir.join("state")).unwrap();
    let mnt = node_mount(dir);
    let first = bytes(1, 1_000_000);
    write_synced(&mnt.join("ckpt-1.pt"), &first);
    let written = clock.now();
    eventually("a push after the first checkpoint is reported", 40, || {
        state(&store).nodes[0].last_report.as_ref().is_some_and(|r| r.last_push_at.is_some_and(|p| p > written) && r.unpushed_bytes == 0)
    });

    // SIGKILL: no chance to save anything more; then the same controller again, its agent
    // time going on from where it is now.
    // SAFETY: SIGKILL to the controller this test started.
    unsafe { libc::kill(ctrl.0.id() as i32, libc::SIGKILL) };
    let _ = ctrl.0.wait();
    let restarted: Timestamp = clock.now();
    let now = restarted.to_string();
    let _ctrl = start(&ctl, dir, &config, &["--clock-start", &now, "--clock-speed", &speed]);
    assert!(restarted < "2026-12-01T13:00:00Z".parse().unwrap(), "the machine is too slow for this test at {SPEED}x");
    eventually("the node reports to the restarted controller", 30, || {
        state(&store).nodes[0].last_report.as_ref().is_some_and(|r| r.at > restarted)
    });
    let second = bytes(2, 800_000);
    write_synced(&mnt.join("ckpt-2.pt"), &second);

    // 14:00: the merge window drains the node and merges its branch.
    eventually("the node is terminated and its branch merged", 90, || {
        let s = state(&store);
        s.nodes.iter().all(|n| n.phase == Phase::Terminated && n.merged)
    });
    drop(_ctrl);
    let s = state(&store);
    assert_eq!(s.nodes.len(), 1, "no second node was rented after the restart: {:?}", s.nodes);
    assert!(s.nodes[0].loss.is_none(), "{:?}", s.nodes[0].loss);
    assert!(s.nights.iter().all(|n| !n.deadline_missed), "{:?}", s.nights);
    eventually("no process of the test is left", 10, || processes_naming(&dir.display().to_string()).is_empty());
    let got = home_files(&ctl, dir, &["ckpt-1.pt", "ckpt-2.pt"]);
    assert!(got[0].as_ref() == Some(&first), "the checkpoint pushed before the restart came home byte for byte");
    assert!(got[1].as_ref() == Some(&second), "the checkpoint written after the restart came home byte for byte");
}

#[test]
fn no_lost_writes_the_store_down_through_the_merge_window_misses_the_night_alerts_and_the_next_night_merges() {
    let Some((ctl, scratch, _sweeper)) = begin() else { return };
    let dir = scratch.path();
    let c = Cfg {
        every: "5m",
        up: (80, "10m"),
        down: None,
        burst: ("08:00", "12:00", "UTC"),
        max_nodes: 1,
        lease: "4h",
        merge: ("13:30", "15:00", "UTC"),
        subnet: "10.237",
        stop_grace_secs: 14400,
        node: Some(("1h", "10m")),
    };
    let config = write_config(dir, "agent.toml", &c);
    let alerted = dir.join("alerted");
    let text = std::fs::read_to_string(&config).unwrap();
    let alert = format!("alert_command = \"echo $HYBRID_AGENT_UNMERGED >> {}\"\n[provider]\n", alerted.display());
    std::fs::write(&config, text.replacen("[provider]\n", &alert, 1)).unwrap();
    let start_at = "2026-12-01T09:00:00Z";
    let clock = ScaledClock::starting_now(start_at.parse().unwrap(), SPEED);
    let speed = SPEED.to_string();
    let ctrl = start(&ctl, dir, &config, &["--clock-start", start_at, "--clock-speed", &speed]);
    let store = StateStore::open(&dir.join("state")).unwrap();
    let mnt = node_mount(dir);
    let ckpt = bytes(3, 1_200_000);
    write_synced(&mnt.join("ckpt.pt"), &ckpt);

    // 12:00: the burst window closes; the node drains (pushes) and is terminated.
    eventually("the node is drained and terminated", 60, || state(&store).nodes[0].phase == Phase::Terminated);
    let s = state(&store);
    assert!(s.nodes[0].loss.is_none() && s.nodes[0].last_report.as_ref().is_some_and(|r| r.head.is_some()), "{:?}", s.nodes[0]);
    // The store goes away before the merge window opens at 13:30.
    let away = dir.join("store.away");
    std::fs::rename(dir.join("store"), &away).unwrap();
    std::fs::write(dir.join("store"), "not a store\n").unwrap();
    assert!(clock.now() < "2026-12-01T13:30:00Z".parse().unwrap(), "the machine is too slow for this test at {SPEED}x");

    eventually("the night is reported missed at its deadline (15:00)", 60, || state(&store).nights.iter().any(|n| n.deadline_missed));
    let s = state(&store);
    let night = s.nights.iter().find(|n| n.deadline_missed).unwrap();
    assert!(night.alerted && night.merged.is_empty() && night.failed == ["burst-n0001"], "{night:?}");
    assert_eq!(std::fs::read_to_string(&alerted).unwrap(), "1\n", "the alert command ran once, told of one unmerged branch");
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let metrics = hybrid_agent::api::call(&sock, "GET", "/metrics", Some(token.trim()), None).unwrap();
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(text.lines().any(|l| l == "hybrid_agent_merge_deadline_missed_total 1"), "{text}");
    assert!(!s.nodes[0].merged && s.nodes[0].loss.is_none(), "unmerged, nothing lost: {:?}", s.nodes[0]);
    drop(ctrl);

    // The store is back; the next night (the controller started with its clock there) merges.
    std::fs::remove_file(dir.join("store")).unwrap();
    std::fs::rename(&away, dir.join("store")).unwrap();
    let next = "2026-12-02T13:25:00Z";
    let _ctrl = start(&ctl, dir, &config, &["--clock-start", next, "--clock-speed", &speed]);
    eventually("the next night merges the branch", 60, || state(&store).nodes[0].merged);
    drop(_ctrl);
    let s = state(&store);
    assert_eq!(s.nodes.len(), 1, "{:?}", s.nodes);
    assert!(s.nights.last().is_some_and(|n| n.merged == ["burst-n0001"] && !n.deadline_missed), "{:?}", s.nights);
    assert_eq!(std::fs::read_to_string(&alerted).unwrap(), "1\n", "no second alert");
    eventually("no process of the test is left", 10, || processes_naming(&dir.display().to_string()).is_empty());
    let got = home_files(&ctl, dir, &["ckpt.pt"]);
    assert!(got[0].as_ref() == Some(&ckpt), "the checkpoint came home byte for byte the next night");
}
