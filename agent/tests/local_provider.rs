//! The `local` provider for real: network namespaces, veth pairs, processes, and that nothing
//! is left behind (after a terminate, a `kill -9` of the node, or a launch that fails halfway).
//! Needs root and iproute2; the node is a bash script standing in for `hybrid-agent node`.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybrid_agent::clock::SystemClock;
use hybrid_agent::provider::local::{LocalConfig, LocalProvider};
use hybrid_agent::provider::{conformance, InstanceState, Provider, TAG_OWNER};

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !root || !ip {
        eprintln!("SKIPPED: the local provider needs root and iproute2 (root={root}, ip={ip})");
    }
    root && ip
}

/// A stand-in node: waits for the test's port, connects to the host side of its veth, says
/// its pid and a background child's pid (like the mount daemon a real node starts), then sleeps.
fn script() -> Vec<String> {
    let s = r#"sleep 600 & child=$!
for i in $(seq 200); do [ -s {dir}/port ] && break; sleep 0.05; done
exec 3<>/dev/tcp/{host_addr}/$(cat {dir}/port) || exit 7
echo "$$ $child" >&3
exec 3>&-
exec sleep 600"#;
    vec!["bash".into(), "-c".into(), s.into()]
}

fn provider(dir: &Path, subnet: &str, cmd: Vec<String>) -> LocalProvider {
    let mut cfg = LocalConfig::with_root(dir.join("nodes"));
    cfg.subnet = subnet.into();
    cfg.node_command = Some(cmd);
    cfg.stop_grace_secs = 5;
    LocalProvider::new(cfg, dir, Arc::new(SystemClock)).unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", name]).output().is_ok_and(|o| o.status.success())
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
}

fn record(p: &LocalProvider, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p.dir(id).join("instance.json")).unwrap()).unwrap()
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_local_provider_keeps_the_provider_contract() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path(), "10.241", vec!["sleep".into(), "600".into()]);
    conformance::check(&p);
    let left: Vec<_> = std::fs::read_dir(p.root()).unwrap().collect();
    assert_eq!(left.len(), 1, "one instance folder, kept as the record of a terminated instance");
}

#[test]
fn a_node_runs_in_its_own_namespace_reaches_the_host_through_its_veth_and_a_kill_9_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path(), "10.242", script());
    let mut req = conformance::request(&format!("lp-{}", std::process::id()), "n0001");
    req.instance_type = "local".into();
    let inst = p.launch(&req).unwrap();
    let rec = record(&p, &inst.id);
    let (netns, veth, host_addr) =
        (rec["netns"].as_str().unwrap().to_string(), rec["veth_host"].as_str().unwrap().to_string(), rec["host_addr"].as_str().unwrap().to_string());
    assert!(netns_exists(&netns) && link_exists(&veth));
    // The node connects to a listener on the host side of its veth: only reachable through it.
    let listener = TcpListener::bind(format!("{host_addr}:0")).unwrap();
    std::fs::write(p.dir(&inst.id).join("port"), listener.local_addr().unwrap().port().to_string()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    eventually("the node connects", || {
        conn = listener.accept().ok();
        conn.is_some()
    });
    let (mut stream, peer) = conn.unwrap();
    assert_eq!(peer.ip().to_string(), rec["node_addr"].as_str().unwrap(), "it came from inside the namespace");
    stream.set_nonblocking(false).unwrap();
    let mut said = String::new();
    stream.read_to_string(&mut said).unwrap();
    let pids: Vec<i32> = said.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{said}");
    let ns_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ns_of(pids[0]), std::fs::read_link("/proc/self/ns/net").unwrap(), "the node is in another network namespace");
    assert!(pid_alive(pids[1]));
    // kill -9 of the node: the next describe finds it gone and cleans everything up.
    // SAFETY: kill(2) of the node this test launched.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let owner: BTreeMap<String, String> = [(TAG_OWNER.to_string(), req.tags[TAG_OWNER].clone())].into();
    eventually("describe reports it terminated", || p.describe(&owner).unwrap()[0].state == InstanceState::Terminated);
    assert!(!netns_exists(&netns), "namespace {netns} left behind");
    assert!(!link_exists(&veth), "veth {veth} left behind");
    assert!(!pid_alive(pids[1]), "the node's background child {} left running", pids[1]);
    p.terminate(&inst.id).unwrap();
    assert_eq!(p.launch(&req).unwrap().id, inst.id, "the key still names the same (terminated) instance");
}

#[test]
fn a_terminated_node_gets_sigterm_and_is_cleaned_up_once_it_exits() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A node that takes a moment to "push" on SIGTERM, then exits.
    let node = vec!["bash".into(), "-c".into(), "trap 'sleep 0.3; echo pushed > {dir}/pushed; exit 0' TERM; while true; do sleep 0.05; done".into()];
    let p = provider(dir.path(), "10.243", node);
    let req = conformance::request(&format!("lt-{}", std::process::id()), "n0001");
    let inst = p.launch(&req).unwrap();
    let netns = record(&p, &inst.id)["netns"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(200));
    p.terminate(&inst.id).unwrap();
    let owner: BTreeMap<String, String> = [(TAG_OWNER.to_string(), req.tags[TAG_OWNER].clone())].into();
    eventually("describe confirms the termination", || p.describe(&owner).unwrap()[0].state == InstanceState::Terminated);
    assert_eq!(std::fs::read_to_string(p.dir(&inst.id).join("pushed")).unwrap().trim(), "pushed", "it got SIGTERM and its time to push");
    assert!(!netns_exists(&netns));
}

#[test]
fn a_launch_that_fails_halfway_leaves_no_namespace_veth_or_folder() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path(), "10.244", vec!["/nonexistent/hybrid-agent".into()]);
    let req = conformance::request(&format!("lf-{}", std::process::id()), "n0001");
    let e = p.launch(&req).unwrap_err().to_string();
    assert!(e.contains("start node") && e.contains("No such file"), "{e}");
    let id = LocalProvider::id_of(&req.idempotency_key);
    assert!(!netns_exists(&format!("hy-{id}")), "a namespace was left behind");
    assert!(!link_exists(&format!("hy{}h", &id[1..9])), "a veth was left behind");
    assert_eq!(std::fs::read_dir(p.root()).unwrap().count(), 0, "an instance folder was left behind");
    let links = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("10.244."), "an address of the failed node is still on the host");
}
