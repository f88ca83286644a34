//! The `local` provider: each node is a real `hybrid-agent node` process on this host, in its
//! own network namespace, with its own state directory and mount point. For tests and for a
//! demo on one machine. Needs root and `ip` (iproute2).
//!
//! Layout under the provider's root (`STATE_DIR/local-nodes/` by default), one folder per
//! instance, named by its id:
//!
//! ```text
//! ROOT/<id>/instance.json   the instance (id, key, tags, state, pid, netns, veth, addresses)
//! ROOT/<id>/bootstrap.json  what the node starts from (0600: holds its token)
//! ROOT/<id>/agent.toml      the node's config (role = "node")
//! ROOT/<id>/state/          the node's state directory (its HYBRIDFS_HOME is state/hybridfs)
//! ROOT/<id>/mnt/            its mount point
//! ROOT/<id>/node.log        its stdout and stderr
//! ```
//!
//! Network: namespace `hy-<id>`, a veth pair `<tag>h` (host side, `10.X.Y.1/30`) and `<tag>n`
//! (inside, `10.X.Y.2/30`, default route via the host side), so the node reaches services
//! listening on the host address (an S3 server) and nothing else it was not given. The
//! controller's API is reached through its unix socket (the file system is shared).
//!
//! Lifecycle: `launch` is idempotent by key (the id is derived from the key). A launch that
//! fails halfway removes everything it made. `terminate` sends SIGTERM (the node pushes and
//! exits) and marks the instance `stopping`; `describe` finishes the job: once the node has
//! exited, or `stop_grace` has passed (then SIGKILL), every process left in the namespace is
//! killed, the mount point unmounted, the veth and the namespace deleted, and the instance is
//! `terminated`. A node that exits by itself (its dead-man switch) is cleaned up the same way.
//! Interruption notices: a file `ROOT/<id>/interrupt` (written by a test or an operator).
//! `{host_addr}` in the bootstrap's `metadata_endpoint` becomes the host side of the veth (a
//! test serving spot notices to a node there).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::*;
use crate::state::set_mode;

/// `[provider.local]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where instances live (default: STATE_DIR/local-nodes).
    pub root: Option<PathBuf>,
    /// The first two octets of the /30 networks handed out (default "10.231").
    #[serde(default = "default_subnet")]
    pub subnet: String,
    /// The price reported per node-hour (absent: 0, marked as an estimate).
    pub price_per_hour: Option<f64>,
    /// How long a node may take to push and exit after SIGTERM before it is killed.
    #[serde(default = "default_grace")]
    pub stop_grace_secs: u64,
    /// The node command (default: this binary, `node --config {config}`). Placeholders:
    /// `{config}`, `{dir}` (the instance folder), `{host_addr}` (the host side of the veth).
    pub node_command: Option<Vec<String>>,
    /// The nodes' `node.push_every` and `node.report_every` (default: the node role's).
    pub push_every: Option<String>,
    pub report_every: Option<String>,
    /// Environment added to each node's (and so its hybridctl's): `{host_addr}` in a value
    /// becomes the host side of its veth, e.g. `AWS_ENDPOINT_URL = "http://{host_addr}:8333"`
    /// for an S3 server on this host (listening on that address too).
    #[serde(default)]
    pub node_env: BTreeMap<String, String>,
}

fn default_subnet() -> String {
    "10.231".into()
}
fn default_grace() -> u64 {
    60
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { root: None, subnet: default_subnet(), price_per_hour: None, stop_grace_secs: default_grace(), node_command: None, push_every: None, report_every: None, node_env: BTreeMap::new() }
    }
}

impl LocalConfig {
    pub fn with_root(root: PathBuf) -> Self {
        LocalConfig { root: Some(root), ..LocalConfig::default() }
    }
}

pub const INSTANCE_TYPE: &str = "local";

/// The instance record kept in `instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    key: String,
    tags: BTreeMap<String, String>,
    state: InstanceState,
    launched_at: Timestamp,
    terminated_at: Option<Timestamp>,
    stop_requested_at: Option<Timestamp>,
    pid: Option<i32>,
    /// /proc/PID/stat start time: a reused pid is not our node.
    pid_start: Option<u64>,
    netns: String,
    veth_host: String,
    host_addr: String,
    node_addr: String,
}

pub struct LocalProvider {
    cfg: LocalConfig,
    root: PathBuf,
    clock: Arc<dyn crate::clock::Clock>,
    /// One launch/terminate/describe at a time (they share the folder and the address space).
    lock: Mutex<()>,
}


fn run(cmd: &str, args: &[&str]) -> Result<(), ProviderError> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ProviderError::Permanent(format!("run {cmd}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(ProviderError::Permanent(format!("{cmd} {}: {}", args.join(" "), err.trim())))
}

/// The 22nd field of /proc/PID/stat (start time in clock ticks), and whether it is a zombie.
fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some((fields.get(19)?.parse().ok()?, fields.first() == Some(&"Z")))
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(&p))
}

impl LocalProvider {
    pub fn new(cfg: LocalConfig, default_root: &Path, clock: Arc<dyn crate::clock::Clock>) -> Result<Self, ProviderError> {
        let root = cfg.root.clone().unwrap_or_else(|| default_root.to_path_buf());
        fs::create_dir_all(&root).map_err(|e| ProviderError::Permanent(format!("create {}: {e}", root.display())))?;
        Ok(LocalProvider { cfg, root, clock, lock: Mutex::new(()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The instance id of an idempotency key: `l` + 12 hex digits of a hash of the key.
    pub fn id_of(key: &str) -> String {
        // FNV-1a 64: stable, no dependency; collisions among one controller's keys are not a
        // concern at this scale (and a collision is caught: the stored key is compared).
        let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        format!("l{:012x}", h & 0xffff_ffff_ffff)
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn load(&self, id: &str) -> Option<Record> {
        let bytes = fs::read(self.dir(id).join("instance.json")).ok()?;
        serde_json::from_slice(&bytes).map_err(|e| warn!("read local instance {id}: {e}")).ok()
    }

    fn store(&self, rec: &Record) -> Result<(), ProviderError> {
        let dir = self.dir(&rec.id);
        let tmp = dir.join("instance.json.tmp");
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        fs::write(&tmp, bytes)
            .and_then(|_| fs::File::open(&tmp)?.sync_all())
            .and_then(|_| fs::rename(&tmp, dir.join("instance.json")))
            .map_err(|e| ProviderError::Permanent(format!("save local instance {}: {e}", rec.id)))
    }

    fn records(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(&self.root) else { return vec![] };
        entries.filter_map(|e| e.ok()).filter_map(|e| self.load(&e.file_name().to_string_lossy())).collect()
    }

    fn instance(rec: &Record) -> Instance {
        Instance {
            id: rec.id.clone(),
            instance_type: INSTANCE_TYPE.into(),
            state: rec.state,
            tags: rec.tags.clone(),
            launched_at: Some(rec.launched_at),
            terminated_at: rec.terminated_at,
        }
    }

    /// A free /30: the lowest slot no instance of this provider uses and no host interface has.
    fn pick_slot(&self) -> Result<(String, String), ProviderError> {
        let used: Vec<String> = self.records().into_iter().filter(|r| r.state != InstanceState::Terminated).map(|r| r.host_addr).collect();
        let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().map_err(|e| ProviderError::Permanent(format!("run ip: {e}")))?;
        let host = String::from_utf8_lossy(&out.stdout).into_owned();
        for slot in 0..16384u32 {
            let (a, b) = (slot / 64, (slot % 64) * 4);
            let host_addr = format!("{}.{a}.{}", self.cfg.subnet, b + 1);
            if !used.contains(&host_addr) && !host.contains(&format!("inet {host_addr}/")) {
                return Ok((host_addr, format!("{}.{a}.{}", self.cfg.subnet, b + 2)));
            }
        }
        Err(ProviderError::Transient("no free address for another local node".into()))
    }

    fn make_network(&self, rec: &Record) -> Result<(), ProviderError> {
        let inner = format!("{}n", &rec.veth_host[..rec.veth_host.len() - 1]);
        run("ip", &["netns", "add", &rec.netns])?;
        run("ip", &["link", "add", &rec.veth_host, "type", "veth", "peer", "name", &inner])?;
        run("ip", &["link", "set", &inner, "netns", &rec.netns])?;
        run("ip", &["addr", "add", &format!("{}/30", rec.host_addr), "dev", &rec.veth_host])?;
        run("ip", &["link", "set", &rec.veth_host, "up"])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &rec.netns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        ns(&["addr", "add", &format!("{}/30", rec.node_addr), "dev", &inner])?;
        ns(&["link", "set", &inner, "up"])?;
        ns(&["link", "set", "lo", "up"])?;
        ns(&["route", "add", "default", "via", &rec.host_addr])
    }

    fn write_node_files(&self, rec: &Record, boot: &Bootstrap) -> Result<(), ProviderError> {
        let dir = self.dir(&rec.id);
        let err = |e: std::io::Error| ProviderError::Permanent(format!("write node files of {}: {e}", rec.id));
        fs::create_dir_all(dir.join("state")).map_err(err)?;
        fs::create_dir_all(dir.join("mnt")).map_err(err)?;
        let boot_path = dir.join("bootstrap.json");
        fs::write(&boot_path, b"").and_then(|_| set_mode(&boot_path, 0o600)).map_err(err)?;
        let bytes = serde_json::to_vec_pretty(boot).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        fs::write(&boot_path, bytes).map_err(err)?;
        let mut config = format!(
            "role = \"node\"\nstate_dir = {:?}\n\n[node]\nbootstrap = {:?}\nmountpoint = {:?}\n",
            dir.join("state"),
            boot_path,
            dir.join("mnt")
        );
        for (key, value) in [("push_every", &self.cfg.push_every), ("report_every", &self.cfg.report_every)] {
            if let Some(v) = value {
                config.push_str(&format!("{key} = {v:?}\n"));
            }
        }
        fs::write(dir.join("agent.toml"), config).map_err(err)
    }

    fn node_command(&self, rec: &Record) -> Vec<String> {
        let dir = self.dir(&rec.id);
        let default = || {
            let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "hybrid-agent".into());
            vec![exe, "node".into(), "--config".into(), "{config}".into()]
        };
        self.cfg.node_command.clone().unwrap_or_else(default)
            .into_iter()
            .map(|a| {
                a.replace("{config}", &dir.join("agent.toml").to_string_lossy())
                    .replace("{dir}", &dir.to_string_lossy())
                    .replace("{host_addr}", &rec.host_addr)
            })
            .collect()
    }

    /// Starts the node in its namespace, in a session of its own (it outlives a controller
    /// restart; the controller adopts it from the instance record).
    fn spawn(&self, rec: &mut Record, env: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        let dir = self.dir(&rec.id);
        let err = |e: std::io::Error| ProviderError::Permanent(format!("start node {}: {e}", rec.id));
        let log = fs::File::create(dir.join("node.log")).map_err(err)?;
        let netns = fs::File::open(format!("/run/netns/{}", rec.netns)).map_err(err)?;
        let argv = self.node_command(rec);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(env).stdin(Stdio::null()).stdout(log.try_clone().map_err(err)?).stderr(log);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
        // SAFETY: only async-signal-safe calls (setsid, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(err)?;
        let pid = child.id() as i32;
        rec.pid = Some(pid);
        rec.pid_start = proc_start(pid).map(|(s, _)| s);
        // The child is reaped by `reap` (a zombie otherwise counts as alive until then).
        REAPER.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        Ok(())
    }

    /// Whether the node's process still runs (not exited, not a zombie, not a reused pid).
    fn alive(rec: &Record) -> bool {
        reap();
        match (rec.pid, rec.pid_start) {
            (Some(pid), Some(start)) => proc_start(pid).is_some_and(|(s, zombie)| s == start && !zombie),
            _ => false,
        }
    }

    /// Removes everything of an instance but its folder's records: processes in its
    /// namespace, its mount, its veth and namespace. Safe to repeat.
    fn cleanup(&self, rec: &Record) {
        if let Some(pid) = rec.pid.filter(|_| Self::alive(rec)) {
            // SAFETY: kill(2) on a pid we checked is ours (start time matches).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for _ in 0..50 {
            let pids = netns_pids(&rec.netns);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) of processes inside the node's own network namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
            reap();
        }
        let mnt = self.dir(&rec.id).join("mnt");
        if is_mountpoint(&mnt) {
            if let Err(e) = run("umount", &["-l", &mnt.to_string_lossy()]) {
                warn!("local node {}: {e}", rec.id);
            }
        }
        let _ = run("ip", &["link", "del", &rec.veth_host]);
        if Path::new("/run/netns").join(&rec.netns).exists() {
            if let Err(e) = run("ip", &["netns", "del", &rec.netns]) {
                warn!("local node {}: {e}", rec.id);
            }
        }
    }

    fn finish(&self, rec: &mut Record) -> Result<(), ProviderError> {
        self.cleanup(rec);
        rec.state = InstanceState::Terminated;
        rec.terminated_at = Some(self.clock.now());
        info!("local node {}: terminated and cleaned up", rec.id);
        self.store(rec)
    }

    /// Brings one record up to date: a node that exited (or outlived its stop grace) is
    /// cleaned up and marked terminated.
    fn refresh(&self, rec: &mut Record) -> Result<(), ProviderError> {
        if rec.state == InstanceState::Terminated {
            return Ok(());
        }
        if !Self::alive(rec) {
            return self.finish(rec);
        }
        let grace = jiff::SignedDuration::from_secs(self.cfg.stop_grace_secs as i64);
        if let Some(asked) = rec.stop_requested_at {
            if self.clock.now() >= asked.checked_add(grace).unwrap_or(asked) {
                warn!("local node {}: still running {}s after SIGTERM; killing it", rec.id, self.cfg.stop_grace_secs);
                return self.finish(rec);
            }
        }
        Ok(())
    }

    fn launch_locked(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        let id = Self::id_of(&req.idempotency_key);
        if let Some(rec) = self.load(&id) {
            if rec.key != req.idempotency_key {
                return Err(ProviderError::Permanent(format!("instance id {id} collides for key {}", req.idempotency_key)));
            }
            return Ok(Self::instance(&rec));
        }
        let (host_addr, node_addr) = self.pick_slot()?;
        let mut rec = Record {
            id: id.clone(),
            key: req.idempotency_key.clone(),
            tags: req.tags.clone(),
            state: InstanceState::Pending,
            launched_at: self.clock.now(),
            terminated_at: None,
            stop_requested_at: None,
            pid: None,
            pid_start: None,
            netns: format!("hy-{id}"),
            veth_host: format!("hy{}h", &id[1..9]),
            host_addr,
            node_addr,
        };
        let tmp_dir = self.root.join(format!(".launch-{id}"));
        let _ = fs::remove_dir_all(&tmp_dir);
        fs::create_dir_all(&tmp_dir).map_err(|e| ProviderError::Permanent(format!("create {}: {e}", tmp_dir.display())))?;
        let result = self.bring_up(&mut rec, &req.bootstrap, &tmp_dir);
        if let Err(e) = result {
            // Nothing half-made stays behind: the key is free to try again.
            self.cleanup(&rec);
            let _ = fs::remove_dir_all(&tmp_dir);
            let _ = fs::remove_dir_all(self.dir(&id));
            return Err(e);
        }
        Ok(Self::instance(&rec))
    }

    fn bring_up(&self, rec: &mut Record, boot: &Bootstrap, tmp_dir: &Path) -> Result<(), ProviderError> {
        // Built under a temporary name and renamed: a crash never leaves a half instance
        // folder that a later launch with the same key would take for a whole one.
        fs::rename(tmp_dir, self.dir(&rec.id)).map_err(|e| ProviderError::Permanent(format!("create instance folder: {e}")))?;
        self.make_network(rec)?;
        // A metadata endpoint for spot notices (a test's) may be served on the host side of the veth.
        let boot = &Bootstrap { metadata_endpoint: boot.metadata_endpoint.as_ref().map(|e| e.replace("{host_addr}", &rec.host_addr)), ..boot.clone() };
        self.write_node_files(rec, boot)?;
        let mut env = boot.env.clone();
        env.extend(self.cfg.node_env.iter().map(|(k, v)| (k.clone(), v.replace("{host_addr}", &rec.host_addr))));
        self.spawn(rec, &env)?;
        rec.state = InstanceState::Running;
        self.store(rec)?;
        info!("local node {}: started (pid {:?}, netns {}, {})", rec.id, rec.pid, rec.netns, rec.node_addr);
        Ok(())
    }
}

static REAPER: Mutex<Vec<std::process::Child>> = Mutex::new(Vec::new());

/// Collects exited children of this process (nodes launched by it).
fn reap() {
    let mut children = REAPER.lock().unwrap_or_else(|p| p.into_inner());
    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
}

fn netns_pids(netns: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else { return vec![] };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn offers(&self) -> Result<Vec<Offer>, ProviderError> {
        Ok(vec![Offer { instance_type: INSTANCE_TYPE.into(), gpus: 0, price_per_hour: self.cfg.price_per_hour, spot: false, gpu_type: None }])
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.launch_locked(req)
    }

    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for mut rec in self.records().into_iter().filter(|r| has_tags(&r.tags, tags)) {
            self.refresh(&mut rec)?;
            out.push(Self::instance(&rec));
        }
        Ok(out)
    }

    fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rec) = self.load(instance_id) else {
            return Err(ProviderError::Permanent(format!("terminate {instance_id}: no such local instance")));
        };
        if rec.state == InstanceState::Terminated || rec.stop_requested_at.is_some() {
            return Ok(());
        }
        if let Some(pid) = rec.pid.filter(|_| Self::alive(&rec)) {
            // SAFETY: kill(2) on our node's pid (start time checked by `alive`).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        rec.state = InstanceState::Stopping;
        rec.stop_requested_at = Some(self.clock.now());
        self.store(&rec)?;
        self.refresh(&mut rec)
    }

    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .records()
            .into_iter()
            .filter(|r| r.state != InstanceState::Terminated && self.dir(&r.id).join("interrupt").exists())
            .map(|r| Interruption { instance_id: r.id, at: self.clock.now() })
            .collect())
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        reap();
    }
}
