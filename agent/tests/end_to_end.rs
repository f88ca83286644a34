//! The agent for real, on one host: `hybrid-agent controller` with the `local` provider rents a
//! node when the load file says so; the node (`hybrid-agent node` in its own network namespace)
//! clones and mounts the home volume; a checkpoint (tmp + fsync + rename) and an fsynced log
//! are written there; the controller is stopped and restarted with the merge window open (it
//! adopts its node from its state and the provider's tags); the window drains the node (push),
//! terminates it (SIGTERM: push + unmount) and merges its branch. Invariant 6 (no lost writes
//! in merges): the home volume then holds both files byte for byte; no namespace, mount or
//! process of the node is left behind; the ledger has the node's row.
//!
//! Needs root, iproute2, /dev/fuse and `hybridctl` (env HYBRIDCTL, or built next to the agent).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hybrid_agent::state::{Phase, StateStore};

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the controller this test started; then reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Removes whatever nodes a failed run left: processes in their namespaces, mounts, namespaces.
struct Sweeper(PathBuf);

impl Drop for Sweeper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return };
        for e in entries.filter_map(|e| e.ok()) {
            let ns = format!("hy-{}", e.file_name().to_string_lossy());
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output().map(|o| o.stdout).unwrap_or_default();
            for pid in String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) of processes inside a namespace this test's controller made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if mounted(&e.path().join("mnt")) {
                let _ = Command::new("umount").arg("-l").arg(e.path().join("mnt")).status();
            }
            if Path::new("/run/netns").join(&ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
    }
}

fn hybridctl() -> Option<PathBuf> {
    let beside = Path::new(env!("CARGO_BIN_EXE_hybrid-agent")).with_file_name("hybridctl");
    std::env::var_os("HYBRIDCTL").map(PathBuf::from).or(Some(beside)).filter(|p| p.exists())
}

fn can_run() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    let fuse = Path::new("/dev/fuse").exists();
    let ctl = hybridctl();
    if !(root && ip && fuse && ctl.is_some()) {
        eprintln!("SKIPPED: needs root, iproute2, /dev/fuse and hybridctl (root={root} ip={ip} fuse={fuse} hybridctl={ctl:?})");
        return None;
    }
    ctl
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mounted(path: &Path) -> bool {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split_whitespace().nth(4) == Some(&p))
}

fn config(dir: &Path, merge_start: &str, merge_end: &str) -> PathBuf {
    let text = format!(
        r#"role = "controller"
state_dir = "{d}/state"
[volume]
name = "main"
store = "file://{d}/store"
hybridfs_home = "{d}/home"
[api]
listen = "127.0.0.1:0"
token_file = "{d}/token"
[load]
command = "cat {d}/load"
every = "1s"
[scale_up]
threshold = 50
for = "1s"
[burst]
window = {{ start = "00:00", end = "00:00", tz = "UTC" }}
max_nodes = 1
lease = "30s"
[merge]
start = "{merge_start}"
deadline = "{merge_end}"
tz = "UTC"
[provider]
kind = "local"
[provider.local]
subnet = "10.246"
stop_grace_secs = 30
"#,
        d = dir.display()
    );
    let path = dir.join(format!("agent-{}.toml", merge_start.replace(':', "")));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(ctl: &Path, dir: &Path, config: &Path) -> Controller {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("controller.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
        .args(["controller", "--config"])
        .arg(config)
        .env("HYBRIDCTL", ctl)
        .env("HYBRIDFS_HOME", dir.join("home"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Controller(child)
}

fn hhmm(offset_mins: i64) -> String {
    let t = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_mins(offset_mins)).unwrap();
    t.strftime("%H:%M").to_string()
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn no_lost_writes_a_node_rented_on_load_is_adopted_after_a_restart_drained_merged_and_cleaned_up() {
    let Some(ctl) = can_run() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let home = dir.join("home");
    let out = Command::new(&ctl).args(["format", "main", "--store"]).arg(format!("file://{}/store", dir.display())).env("HYBRIDFS_HOME", &home).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("load"), "95\n").unwrap();
    let _sweeper = Sweeper(dir.join("state/local-nodes"));

    // Day: the load is high, one node is rented and mounts the volume.
    let day = start(&ctl, dir, &config(dir, &hhmm(600), &hhmm(630)));
    let nodes = dir.join("state/local-nodes");
    let mut mnt = PathBuf::new();
    eventually("the node has mounted the volume", 90, || {
        let found = std::fs::read_dir(&nodes).ok().and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("mnt")).find(|m| mounted(m)));
        found.map(|m| mnt = m).is_some()
    });
    let ckpt: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::create_dir_all(mnt.join("ckpt")).unwrap();
    write_synced(&mnt.join("ckpt/step-1.pt"), &ckpt);
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(mnt.join("train.log")).unwrap();
    log.write_all(b"step 1 loss 0.50\n").unwrap();
    log.sync_all().unwrap();
    drop(day); // the controller stops; its node keeps running

    let id = mnt.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    assert!(mounted(&mnt), "the node outlives its controller");
    // Night: a new controller with the merge window open adopts the node, drains, merges.
    let night = start(&ctl, dir, &config(dir, &hhmm(0), &hhmm(30)));
    let store = StateStore::open(&dir.join("state")).unwrap();
    eventually("the node is drained, terminated and merged", 120, || {
        store.load().unwrap().nodes.first().is_some_and(|n| n.phase == Phase::Terminated && n.merged)
    });
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let cost = hybrid_agent::api::call(&sock, "GET", "/v1/cost", Some(&token), None).unwrap();
    assert_eq!(hybrid_agent::api::call(&sock, "GET", "/v1/cost", None, None).unwrap().status, 401);
    drop(night);
    let rows = cost.body.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", cost.body);
    assert!(rows[0]["stop"].is_string() && rows[0]["estimate"] == true && rows[0]["instance_id"] == id.as_str());
    let state = store.load().unwrap();
    assert_eq!(state.nodes.len(), 1, "one node: the restart adopted it, it did not rent another");
    assert!(state.nodes[0].loss.is_none(), "{:?}", state.nodes[0].loss);

    assert!(!mounted(&mnt), "the node's mount is gone");
    assert!(!Path::new("/run/netns").join(format!("hy-{id}")).exists(), "the node's namespace is gone");
    let home_mnt = dir.join("home-mnt");
    std::fs::create_dir_all(&home_mnt).unwrap();
    let status = Command::new(&ctl).args(["mount", "main"]).arg(&home_mnt).arg("-d").env("HYBRIDFS_HOME", &home).status().unwrap();
    assert!(status.success());
    let got = (std::fs::read(home_mnt.join("ckpt/step-1.pt")), std::fs::read(home_mnt.join("train.log")));
    let _ = Command::new(&ctl).arg("umount").arg(&home_mnt).env("HYBRIDFS_HOME", &home).status();
    assert!(got.0.unwrap() == ckpt, "the checkpoint came home byte for byte");
    assert_eq!(got.1.unwrap(), b"step 1 loss 0.50\n");
}
