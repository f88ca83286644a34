//! What the end-to-end tests of the agent share: starting the real binary, sweeping what a
//! failed run left, waiting with a bound.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A controller process; SIGTERM and reaped on drop.
/// A controller the test started; `1`: its scratch dir, whose `controller.log` and nodes'
/// `node.log`s are printed when the test fails (CI keeps nothing else of a failed run).
pub struct Controller(pub Child, pub PathBuf);

impl Drop for Controller {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the controller this test started; then reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
        if std::thread::panicking() {
            print_logs(&self.1);
        }
    }
}

/// The last lines of DIR/controller.log and of every node's node.log, to stderr.
pub fn print_logs(dir: &Path) {
    let mut logs = vec![dir.join("controller.log")];
    if let Ok(entries) = std::fs::read_dir(dir.join("state/local-nodes")) {
        logs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path().join("node.log")));
    }
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(120)..];
        eprintln!("---- {} (last {} lines) ----\n{}", log.display(), tail.len(), tail.join("\n"));
    }
}

/// Removes whatever nodes a failed run left: processes in their namespaces, mounts, namespaces.
pub struct Sweeper(pub PathBuf);

impl Drop for Sweeper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return };
        for e in entries.filter_map(|e| e.ok()) {
            let ns = format!("hy-{}", e.file_name().to_string_lossy());
            for pid in netns_pids(&ns) {
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

pub fn netns_pids(ns: &str) -> Vec<i32> {
    let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

pub fn hybridctl() -> Option<PathBuf> {
    let beside = Path::new(env!("CARGO_BIN_EXE_hybrid-agent")).with_file_name("hybridctl");
    std::env::var_os("HYBRIDCTL").map(PathBuf::from).or(Some(beside)).filter(|p| p.exists())
}

/// The hybridctl binary, or `None` (and a SKIPPED line) when the test cannot run here.
pub fn can_run() -> Option<PathBuf> {
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

pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn mounted(path: &Path) -> bool {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split_whitespace().nth(4) == Some(&p))
}

/// Starts `hybrid-agent controller --config CONFIG EXTRA...`, logging to DIR/controller.log.
pub fn start(ctl: &Path, dir: &Path, config: &Path, extra: &[&str]) -> Controller {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("controller.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
        .args(["controller", "--config"])
        .arg(config)
        .args(extra)
        .env("HYBRIDCTL", ctl)
        .env("HYBRIDFS_HOME", dir.join("home"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Controller(child, dir.to_path_buf())
}

/// Runs `hybridctl ARGS` with the home volume's HYBRIDFS_HOME.
pub fn ctl_run(ctl: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(ctl).args(args).env("HYBRIDFS_HOME", dir.join("home")).output().unwrap()
}

/// `hybridctl ARGS`, which must succeed; its stdout.
pub fn ctl_ok(ctl: &Path, dir: &Path, args: &[&str]) -> String {
    let out = ctl_run(ctl, dir, args);
    assert!(out.status.success(), "hybridctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_synced(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every file under `root` (relative path → bytes).
pub fn read_tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Processes whose command line names `needle` (a test's scratch directory).
pub fn processes_naming(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()) && e.file_name() != me.as_str())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok().map(|c| (e.file_name(), c)))
        .map(|(pid, c)| (pid, String::from_utf8_lossy(&c).replace('\0', " ")))
        .filter(|(_, c)| c.contains(needle))
        .map(|(pid, c)| format!("{} {c}", pid.to_string_lossy()))
        .collect()
}

/// What differs between the tests' controller configs (the rest: a file store under the test's
/// folder, the home volume `main`, the load read from DIR/load, a `local` provider).
pub struct Cfg<'a> {
    pub every: &'a str,
    /// `scale_up`: threshold and `for`.
    pub up: (u32, &'a str),
    pub down: Option<(u32, &'a str)>,
    /// start, end, zone.
    pub burst: (&'a str, &'a str, &'a str),
    pub max_nodes: u32,
    pub lease: &'a str,
    /// start, deadline, zone.
    pub merge: (&'a str, &'a str, &'a str),
    pub subnet: &'a str,
    pub stop_grace_secs: u64,
    /// The nodes' push and report periods.
    pub node: Option<(&'a str, &'a str)>,
}

impl<'a> Cfg<'a> {
    /// A day in seconds: a step a second, high load after a second, always in the burst window,
    /// one node at most, a 30 s lease, merged in the window `merge` (start, deadline; UTC).
    pub fn fast(merge: (&'a str, &'a str), subnet: &'a str) -> Cfg<'a> {
        Cfg {
            every: "1s",
            up: (50, "1s"),
            down: None,
            burst: ("00:00", "00:00", "UTC"),
            max_nodes: 1,
            lease: "30s",
            merge: (merge.0, merge.1, "UTC"),
            subnet,
            stop_grace_secs: 30,
            node: None,
        }
    }
}

/// `n` bytes that do not compress, different for each `seed` (checkpoints).
pub fn bytes(seed: u32, n: u32) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 9) as u8).collect()
}

/// Writes DIR/NAME, a controller config.
pub fn write_config(dir: &Path, name: &str, c: &Cfg) -> PathBuf {
    let down = c.down.map(|(t, f)| format!("[scale_down]\nthreshold = {t}\nfor = \"{f}\"\n")).unwrap_or_default();
    let node = c.node.map(|(p, r)| format!("push_every = \"{p}\"\nreport_every = \"{r}\"\n")).unwrap_or_default();
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
every = "{every}"
[scale_up]
threshold = {up}
for = "{up_for}"
{down}[burst]
window = {{ start = "{bs}", end = "{be}", tz = "{btz}" }}
max_nodes = {max}
lease = "{lease}"
[merge]
start = "{ms}"
deadline = "{md}"
tz = "{mtz}"
[provider]
kind = "local"
[provider.local]
subnet = "{subnet}"
stop_grace_secs = {grace}
{node}"#,
        d = dir.display(),
        every = c.every,
        up = c.up.0,
        up_for = c.up.1,
        bs = c.burst.0,
        be = c.burst.1,
        btz = c.burst.2,
        max = c.max_nodes,
        lease = c.lease,
        ms = c.merge.0,
        md = c.merge.1,
        mtz = c.merge.2,
        subnet = c.subnet,
        grace = c.stop_grace_secs,
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
