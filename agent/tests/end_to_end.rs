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

//!
//! `hybridctl nodes list|drain` and `hybridctl cost` are checked against the running
//! controller: with the admin token they answer; with a wrong token they are refused; with no
//! controller at the address they say so in one line.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{can_run, ctl_ok, ctl_run, eventually, mounted, start, write_config, write_synced, Cfg, Sweeper};
use hybrid_agent::state::{Phase, StateStore};

fn config(dir: &Path, merge_start: &str, merge_end: &str) -> PathBuf {
    let c = Cfg::fast((merge_start, merge_end), "10.246");
    write_config(dir, &format!("agent-{}.toml", merge_start.replace(':', "")), &c)
}

fn hhmm(offset_mins: i64) -> String {
    let t = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_mins(offset_mins)).unwrap();
    t.strftime("%H:%M").to_string()
}

/// The hybridctl commands that talk to the controller, while its node runs.
fn check_the_cli(ctl: &Path, dir: &Path, node: &str) {
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let token = dir.join("token").display().to_string();
    let agent = ["--agent", sock.as_str(), "--token-file", token.as_str()];
    fn join<'a>(args: &[&'a str], agent: &[&'a str]) -> Vec<&'a str> {
        [args, agent].concat()
    }
    let with = |args: &[&'static str]| join(args, &agent);
    let list: serde_json::Value = serde_json::from_str(&ctl_ok(ctl, dir, &with(&["nodes", "list", "--json"]))).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!((list[0]["node"].as_str(), list[0]["phase"].as_str()), (Some("n0001"), Some("running")), "{list}");
    assert_eq!(list[0]["instance_id"].as_str(), Some(node));
    assert!(list[0].get("token").is_none(), "the node's token is not shown: {list}");
    let text = ctl_ok(ctl, dir, &with(&["nodes", "list"]));
    assert!(text.contains("n0001") && text.contains("running") && text.contains(node), "{text}");
    let cost: serde_json::Value = serde_json::from_str(&ctl_ok(ctl, dir, &with(&["cost", "--json"]))).unwrap();
    let rows = &cost["nodes"];
    assert!(rows[0]["node"] == "n0001" && rows[0]["stop"].is_null() && rows[0]["estimate"] == true, "{cost}");
    let text = ctl_ok(ctl, dir, &with(&["cost"]));
    // No [budget]: the budget line says so; the unpriced local node reserves nothing.
    assert!(text.contains("total: 1 nodes") && text.contains(" spent or reserved, of no limit;"), "{text}");
    assert!(!ctl_ok(ctl, dir, &with(&["nodes", "list"])).contains("LEAK"), "the controller's own node is no leak");
    let status = ctl_ok(ctl, dir, &with(&["status"]));
    assert!(status.contains(&format!("agent {sock}: 1 nodes (1 running); today ")) && status.contains("USD (estimate)"), "{status}");
    // The metrics, in the Prometheus text format, with the token only.
    let admin = std::fs::read_to_string(dir.join("token")).unwrap();
    let m = hybrid_agent::api::call(&sock, "GET", "/metrics", Some(&admin), None).unwrap();
    let text = m.body.as_str().unwrap_or_default();
    assert!(m.text && text.contains("hybrid_agent_nodes{phase=\"running\"} 1\n") && text.contains("\nhybrid_agent_merge_deadline_missed_total 0\n"), "{m:?}");
    assert_eq!(hybrid_agent::api::call(&sock, "GET", "/metrics", None, None).unwrap().status, 401);

    // Refusals: an unknown node (exit 2), a wrong token (exit 1), no controller (exit 1).
    let out = ctl_run(ctl, dir, &with(&["nodes", "drain", "n0999"]));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef").unwrap();
    let out = ctl_run(ctl, dir, &["nodes", "list", "--agent", &sock, "--token-file", &wrong.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("refused the token") && err.lines().count() == 1, "{err}");
    let gone = format!("unix:{}", dir.join("nothing-here.sock").display());
    let out = ctl_run(ctl, dir, &["cost", "--agent", &gone, "--token-file", &token]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains(&format!("no hybrid-agent controller answers at {gone}")) && err.lines().count() == 1, "{err}");
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
    let day = start(&ctl, dir, &config(dir, &hhmm(600), &hhmm(630)), &[]);
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
    let id = mnt.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    check_the_cli(&ctl, dir, &id);
    drop(day); // the controller stops; its node keeps running

    assert!(mounted(&mnt), "the node outlives its controller");
    // Night: a new controller with the merge window open adopts the node, drains, merges.
    let night = start(&ctl, dir, &config(dir, &hhmm(0), &hhmm(30)), &[]);
    let store = StateStore::open(&dir.join("state")).unwrap();
    eventually("the node is drained, terminated and merged", 120, || {
        store.load().unwrap().nodes.first().is_some_and(|n| n.phase == Phase::Terminated && n.merged)
    });
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let cost = hybrid_agent::api::call(&sock, "GET", "/v1/cost", Some(&token), None).unwrap();
    assert_eq!(hybrid_agent::api::call(&sock, "GET", "/v1/cost", None, None).unwrap().status, 401);
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let since = ctl_ok(&ctl, dir, &["cost", "--since", &today, "--agent", &sock, "--token-file", &dir.join("token").display().to_string()]);
    assert!(since.contains("total: 1 nodes"), "{since}");
    let token_path = dir.join("token").display().to_string();
    let agent_args = ["--agent", sock.as_str(), "--token-file", token_path.as_str()];
    let nights = ctl_ok(&ctl, dir, &[&["merge", "log", "--nights", "--json"][..], &agent_args].concat());
    let nights: serde_json::Value = serde_json::from_str(&nights).unwrap();
    assert!(nights[0]["merged"] == serde_json::json!(["burst-n0001"]) && nights[0]["deadline_missed"] == false, "{nights}");
    let table = ctl_ok(&ctl, dir, &[&["merge", "log", "--nights"][..], &agent_args].concat());
    assert!(table.contains("burst-n0001") && table.contains(" met"), "{table}");
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

/// `Type=notify` (dist/systemd/hybrid-agent.service): the controller says `READY=1` once its
/// API answers and `STOPPING=1` at SIGTERM. No node is rented (the load stays low), so this
/// needs neither root nor hybridctl.
#[test]
fn the_controller_says_ready_once_its_api_answers_and_stopping_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    std::fs::write(dir.join("load"), "0\n").unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let cfg = config(dir, &hhmm(600), &hhmm(630));
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
        .args(["controller", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ctl = common::Controller(child, dir.to_path_buf());
    let recv = || {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification within 60 s: {e}\n{}", std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default())
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let msg = recv();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let api = format!("unix:{}", dir.join("state/api.sock").display());
    let nodes = hybrid_agent::api::call(&api, "GET", "/v1/nodes", Some(token.trim()), None).unwrap();
    assert_eq!(nodes.status, 200, "READY=1 came after the API answers");
    // SAFETY: SIGTERM to the controller this test started.
    unsafe { libc::kill(ctl.0.id() as i32, libc::SIGTERM) };
    let msg = recv();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
}
