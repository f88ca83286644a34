//! A whole working day with real processes, in about a minute: `hybrid-agent controller
//! --clock-start 08:55 --clock-speed 600` with the `local` provider.
//!
//! Load rises at 09:00; the controller rents two nodes (each `hybrid-agent node` in its own
//! network namespace, cloning and mounting the home volume). On each, a training script, run
//! inside the node's namespace, reads the dataset from the mount and writes checkpoints
//! (tmp + fsync + rename) and an fsynced log. The load falls: one node is drained and
//! released. The load settles between the thresholds (no more releases); at 17:30 the merge
//! window drains the other, merges both branches and the night is recorded.
//!
//! Invariant 6 (no lost writes in merges): home then holds every output of both nodes byte for
//! byte, and the dataset unchanged. Nothing is left behind: no process naming the test's
//! folder, no namespace, no mount. The ledger (`hybridctl cost --json`) has the two nodes,
//! started after 09:00 and stopped when they were released, in agent time, and the day's
//! object-store requests and bytes by pushes (at least the checkpoints written), clones,
//! fetches and merges.
//!
//! Needs root, iproute2, /dev/fuse and `hybridctl` (env HYBRIDCTL, or built next to the agent).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{can_run, ctl_ok, eventually, mounted, processes_naming, read_tree, start, write_config, Cfg, Sweeper};
use hybrid_agent::clock::{Clock, ScaledClock};
use hybrid_agent::state::{Phase, State, StateStore};
use jiff::Timestamp;

const SPEED: f64 = 600.0;
const START: &str = "2026-12-01T08:55:00+03:00";

fn at(hhmm: &str) -> Timestamp {
    format!("2026-12-01T{hhmm}:00+03:00").parse().unwrap()
}

fn config(dir: &Path) -> PathBuf {
    let burst = ("08:00", "17:30", "Europe/Istanbul");
    let merge = ("17:30", "07:30", "Europe/Istanbul");
    let c = Cfg { every: "5m", up: (80, "10m"), down: Some((30, "30m")), burst, max_nodes: 2, lease: "4h", merge, subnet: "10.247", stop_grace_secs: 14400, node: Some(("1h", "10m")) };
    write_config(dir, "agent.toml", &c)
}

/// The training job: reads the whole dataset each step, writes a checkpoint (tmp + fsync +
/// rename) and appends a line to its log (fsynced).
const TRAIN: &str = r#"set -eu
mnt=$1; run=$2; out=$mnt/runs/$run
mkdir -p "$out"
for step in 1 2 3; do
  sum=$(cat "$mnt"/dataset/*.bin | sha256sum | cut -c1-16)
  dd if=/dev/urandom of="$out/.ckpt-$step.tmp" bs=64k count=24 conv=fsync status=none
  mv "$out/.ckpt-$step.tmp" "$out/ckpt-$step.pt"
  echo "step $step data $sum" | dd of="$out/train.log" oflag=append conv=notrunc,fsync status=none
done
"#;

fn load(dir: &Path, value: u32) {
    std::fs::write(dir.join("load"), format!("{value}\n")).unwrap();
}

fn state(store: &StateStore) -> State {
    store.load().unwrap()
}

#[test]
fn no_lost_writes_a_day_of_two_nodes_comes_home_byte_for_byte_and_nothing_is_left_behind() {
    let Some(ctl) = can_run() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let _sweeper = Sweeper(dir.join("state/local-nodes"));

    // The home volume with a dataset.
    let store_url = format!("file://{}/store", dir.display());
    ctl_ok(&ctl, dir, &["format", "main", "--store", &store_url]);
    let home_mnt = dir.join("home-mnt");
    std::fs::create_dir_all(&home_mnt).unwrap();
    let hm = home_mnt.display().to_string();
    ctl_ok(&ctl, dir, &["mount", "main", &hm, "-d"]);
    std::fs::create_dir_all(home_mnt.join("dataset")).unwrap();
    let dataset: Vec<Vec<u8>> = (0..2u32).map(|k| (0..700_000u32).map(|i| (i.wrapping_mul(2654435761 + k) >> 11) as u8).collect()).collect();
    for (k, d) in dataset.iter().enumerate() {
        common::write_synced(&home_mnt.join(format!("dataset/part-{k}.bin")), d);
    }
    ctl_ok(&ctl, dir, &["umount", &hm]);
    std::fs::write(dir.join("train.sh"), TRAIN).unwrap();
    load(dir, 10);

    // 08:55, 600 times the wall clock: a day passes in about a minute.
    let clock = ScaledClock::starting_now(START.parse().unwrap(), SPEED);
    let _ctrl = start(&ctl, dir, &config(dir), &["--clock-start", START, "--clock-speed", &SPEED.to_string()]);
    let store = StateStore::open(&dir.join("state")).unwrap();
    std::thread::sleep(clock.real(Duration::from_secs(300)));
    load(dir, 95);
    let load_rose = clock.now();

    // Two nodes rented and mounted.
    let nodes = dir.join("state/local-nodes");
    let mut mnts: Vec<PathBuf> = Vec::new();
    eventually("two nodes have mounted the volume", 60, || {
        let found: Vec<PathBuf> = std::fs::read_dir(&nodes)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("mnt")).filter(|m| mounted(m) && m.join("dataset").exists()).collect())
            .unwrap_or_default();
        mnts = found;
        mnts.len() == 2
    });
    mnts.sort();
    let ids: Vec<String> = mnts.iter().map(|m| m.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()).collect();

    // The training job on each node, inside its namespace.
    let jobs: Vec<_> = mnts
        .iter()
        .zip(&ids)
        .map(|(m, id)| {
            Command::new("ip")
                .args(["netns", "exec", &format!("hy-{id}"), "sh"])
                .arg(dir.join("train.sh"))
                .arg(m)
                .arg(id)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut j in jobs {
        assert!(j.wait().unwrap().success(), "a training job failed");
    }
    let outputs: Vec<_> = mnts.iter().zip(&ids).map(|(m, id)| read_tree(&m.join("runs").join(id))).collect();
    for o in &outputs {
        assert_eq!(o.len(), 4, "three checkpoints and a log: {:?}", o.keys());
    }
    let trained = clock.now();
    assert!(trained < at("16:30"), "the machine is too slow for a day at {SPEED}x: training ended at {trained}");

    // The load falls: one node is drained; then the load settles between the thresholds (30
    // agent minutes, 3 real seconds, before low load would release the next one).
    load(dir, 10);
    let mut released = String::new();
    eventually("one node is drained on low load", 30, || {
        let s = state(&store);
        let drained = s.nodes.iter().find(|n| n.drain_requested_at.is_some());
        drained.map(|n| released = n.intent.clone()).is_some()
    });
    load(dir, 50);
    eventually("the drained node is released", 60, || state(&store).node(&released).is_some_and(|n| n.phase == Phase::Terminated));
    assert!(clock.now() < at("17:30"), "the machine is too slow for a day at {SPEED}x");

    // 17:30: the merge window drains the other, merges both branches.
    eventually("both nodes are terminated and merged", 90, || {
        let s = state(&store);
        s.nodes.len() == 2 && s.nodes.iter().all(|n| n.phase == Phase::Terminated && n.merged)
    });
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let token = dir.join("token").display().to_string();
    let ledger: serde_json::Value = serde_json::from_str(&ctl_ok(&ctl, dir, &["cost", "--json", "--agent", &sock, "--token-file", &token])).unwrap();
    drop(_ctrl);

    let s = state(&store);
    for n in &s.nodes {
        assert!(n.loss.is_none(), "node {}: {:?}", n.intent, n.loss);
        let drain = n.drain_requested_at.expect("drained before it was terminated");
        if n.intent == released {
            assert!(drain < at("17:30"), "node {} was released on low load, at {drain}", n.intent);
        } else {
            assert!(drain >= at("17:30"), "node {} was drained by the merge window, at {drain}", n.intent);
        }
    }
    assert_eq!(s.nights.len(), 1, "{:?}", s.nights);
    assert!(s.nights[0].merged.len() == 2 && !s.nights[0].deadline_missed, "{:?}", s.nights[0]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(store.night_path(s.nights[0].opened)).unwrap()).unwrap();
    assert!(report["merged"].as_array().map(Vec::len) == Some(2) && report["nodes"].as_array().map(Vec::len) == Some(2), "{report}");

    // The ledger matches what ran: two local nodes, started after the load rose, stopped.
    let rows = ledger["nodes"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{ledger}");
    for r in rows {
        let start: Timestamp = r["start"].as_str().unwrap().parse().unwrap();
        let stop: Timestamp = r["stop"].as_str().unwrap().parse().unwrap();
        assert!(start >= load_rose && stop > start && ids.iter().any(|i| r["instance_id"] == i.as_str()), "{r}");
        let hours = stop.duration_since(start).as_secs_f64() / 3600.0;
        assert!((r["hours"].as_f64().unwrap() - hours).abs() < 1e-6 && r["instance_type"] == "local", "{r}");
    }

    // The day's object-store traffic (`hybridctl cost --json`, "store"), counted by the nodes'
    // clones and mounts and by the controller's own pushes of main and merges. The nodes'
    // pushes sent at least the checkpoints they wrote (random bytes: compression and
    // deduplication cannot shrink them), and not many times more (each pushed once, plus main
    // published before each rent); their clones and fetches read the dataset; the night's
    // merges read the branches.
    let day = ledger["store"].as_array().unwrap().iter().find(|d| d["day"] == "2026-12-01").cloned().expect("a store row for the day");
    let t = |purpose: &str, what: &str| day["traffic"][purpose][what].as_u64().unwrap_or(0);
    let checkpoints: u64 = outputs.iter().flat_map(|o| o.iter()).filter(|(k, _)| k.ends_with(".pt")).map(|(_, v)| v.len() as u64).sum();
    assert_eq!(checkpoints, 2 * 3 * 24 * 65536);
    assert!(t("push", "bytes_sent") >= checkpoints && t("push", "bytes_sent") < 3 * checkpoints, "{day}");
    assert!(t("push", "requests") > 0 && t("merge", "requests") > 0 && t("merge", "bytes_received") > 0, "{day}");
    assert!(t("clone", "requests") > 0 && t("clone", "bytes_received") + t("fetch", "bytes_received") > 0, "{day}");

    // Nothing left behind.
    for (m, id) in mnts.iter().zip(&ids) {
        assert!(!mounted(m), "{} is still mounted", m.display());
        assert!(!Path::new("/run/netns").join(format!("hy-{id}")).exists(), "namespace hy-{id} is left");
    }
    eventually("no process of the test is left", 10, || processes_naming(&dir.display().to_string()).is_empty());

    // Home holds every output byte for byte, and the dataset.
    ctl_ok(&ctl, dir, &["mount", "main", &hm, "-d"]);
    let home_runs = std::fs::read_dir(home_mnt.join("runs")).map(|d| d.count()).unwrap_or(0);
    let got: Vec<_> = ids.iter().map(|id| read_tree(&home_mnt.join("runs").join(id))).collect();
    let data: Vec<_> = (0..2).map(|k| std::fs::read(home_mnt.join(format!("dataset/part-{k}.bin"))).unwrap()).collect();
    ctl_ok(&ctl, dir, &["umount", &hm]);
    assert_eq!(home_runs, 2);
    for (g, want) in got.iter().zip(&outputs) {
        assert_eq!(g.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        assert!(g == want, "every output came home byte for byte");
    }
    assert!(data == dataset, "the dataset is unchanged");
    let log = String::from_utf8_lossy(&outputs[0]["train.log"]).into_owned();
    assert_eq!(log.lines().count(), 3, "{log}");
}
