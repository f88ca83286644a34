//! Volume operations the agent needs, behind two small traits.
//!
//! [`HomeVolume`] is what the controller does to the home volume (publish `main` before a
//! node clones it; merge a node's branch at night); [`NodeVolume`] is what a node does to its
//! clone (clone, mount, push, unpushed bytes, unmount). The controller and node logic is
//! tested against [`fake`]; [`Hybridctl`] implements both by running the `hybridctl` binary
//! with `--json`.
//!
//! **Temporary seam:** `Hybridctl` shells out because the node library (`fs/node`, crate
//! `hybridfs-node`, issue 11) landed on main only as this agent's first part was finished. An
//! implementation on that library replaces this one (see doc/AGENT.md); the traits stay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use std::sync::{Arc, Mutex};

use crate::state::{StoreTraffic, Traffic};

/// `hybridctl` writes its store traffic to the file this names (`hybridfs_cloud::traffic`).
pub const TRAFFIC_FILE_ENV: &str = "HYBRIDCTL_TRAFFIC_FILE";

#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct VolumeError {
    pub op: String,
    pub message: String,
}

impl VolumeError {
    pub fn new(op: impl Into<String>, message: impl Into<String>) -> Self {
        VolumeError { op: op.into(), message: message.into() }
    }
}

/// The result of a merge of one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    pub changes: usize,
    pub conflicts: usize,
}

pub trait HomeVolume: Send + Sync {
    /// Publishes the home volume's `main`, so a clone made now starts from current data.
    fn push_main(&self) -> Result<u64, VolumeError>;
    /// Merges `branch` into the home volume.
    fn merge(&self, branch: &str) -> Result<MergeOutcome, VolumeError>;
    /// The object-store traffic of the pushes and merges made since the last call.
    fn take_traffic(&self) -> Traffic {
        Traffic::new()
    }
}

pub trait NodeVolume: Send + Sync {
    /// Makes the local clone of `store/volume`, pushing to `branch`, if it is not there yet.
    fn ensure_clone(&self, store: &str, volume: &str, source: &str, branch: &str) -> Result<(), VolumeError>;
    fn mount(&self, mountpoint: &Path) -> Result<(), VolumeError>;
    /// Pushes the clone's branch; returns the layer it made (or the head when up to date).
    fn push(&self) -> Result<u64, VolumeError>;
    /// What a push would send now.
    fn unpushed(&self) -> Result<Unpushed, VolumeError>;
    fn umount(&self, mountpoint: &Path) -> Result<(), VolumeError>;
}

/// The data of a clone not in its branch yet, and its store traffic so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpushed {
    pub bytes: u64,
    /// How many files hold those bytes.
    pub files: u64,
    /// The files, most unpushed bytes first (at most 100).
    pub paths: Vec<String>,
    /// The clone's object-store traffic so far (its clone, its mount's pushes and fetches).
    pub store: Traffic,
}

/// Runs `hybridctl` (the seam described at the top).
#[derive(Debug, Clone)]
pub struct Hybridctl {
    pub bin: PathBuf,
    /// `HYBRIDFS_HOME` of the volume.
    pub home: PathBuf,
    /// The local volume's name.
    pub volume: String,
    /// Extra environment (store endpoint and credentials). Never logged.
    pub env: BTreeMap<String, String>,
    /// Store traffic of the commands run here (`HYBRIDCTL_TRAFFIC_FILE`) not taken yet.
    pub traffic: Arc<Mutex<Traffic>>,
}

impl Hybridctl {
    pub fn new(bin: PathBuf, home: PathBuf, volume: String, env: BTreeMap<String, String>) -> Hybridctl {
        Hybridctl { bin, home, volume, env, traffic: Arc::default() }
    }
}

/// `hybridctl status --json`: one volume.
#[derive(Deserialize)]
struct StatusJson {
    unpushed_bytes: u64,
    #[serde(default)]
    unpushed_files: u64,
    #[serde(default)]
    unpushed_paths: Vec<String>,
    metrics: Option<MetricsJson>,
}

#[derive(Deserialize)]
struct MetricsJson {
    #[serde(default)]
    counters: BTreeMap<String, u64>,
}

impl StatusJson {
    /// The store traffic counted by the volume's (current or last) mount process.
    fn traffic(&self) -> Traffic {
        let Some(m) = &self.metrics else { return Traffic::new() };
        let get = |p: &str, what: &str| m.counters.get(&format!("store_{p}_{what}")).copied();
        ["push", "clone", "fetch", "merge"]
            .into_iter()
            .filter_map(|p| {
                let requests = get(p, "requests")?;
                let t = StoreTraffic { requests, bytes_sent: get(p, "bytes_sent")?, bytes_received: get(p, "bytes_received")? };
                Some((p.to_string(), t))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct PushJson {
    seq: u64,
}

#[derive(Deserialize)]
struct MergeJson {
    #[serde(default)]
    changes: Vec<serde_json::Value>,
    #[serde(default)]
    conflicts: Vec<serde_json::Value>,
}

impl Hybridctl {
    /// `HYBRIDCTL` from the environment, else `hybridctl` next to this binary, else on PATH.
    pub fn find_binary() -> PathBuf {
        if let Some(p) = std::env::var_os("HYBRIDCTL") {
            return PathBuf::from(p);
        }
        let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("hybridctl")));
        beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("hybridctl"))
    }

    fn run(&self, op: &str, args: &[&str]) -> Result<(i32, String), VolumeError> {
        self.run_counting(op, args, None)
    }

    /// `run`, adding the store traffic of the command to `self.traffic`: what the hybridctl
    /// process made itself (its traffic file), and when the volume is mounted what its mount
    /// process counted as `purpose` meanwhile (a push or merge runs there then).
    fn run_counting(&self, op: &str, args: &[&str], purpose: Option<&str>) -> Result<(i32, String), VolumeError> {
        let mounted = |s: &Self| purpose.map(|p| s.status().map(|st| st.traffic().get(p).copied().unwrap_or_default()).unwrap_or_default());
        let before = mounted(self);
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // In the volume's home (never loose in /tmp), removed once read; the home is made
        // here if a first clone has not made it yet (hybridctl makes it the same way).
        let _ = std::fs::create_dir_all(&self.home);
        let file = self.home.join(format!(".hybrid-agent-traffic-{}-{seq}.json", std::process::id()));
        let out = Command::new(&self.bin)
            .args(args)
            .env("HYBRIDFS_HOME", &self.home)
            .env(TRAFFIC_FILE_ENV, &file)
            .envs(&self.env)
            .output()
            .map_err(|e| VolumeError::new(op, format!("run {}: {e}", self.bin.display())));
        let own: Traffic = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        // Read before the lock is taken: `status` runs through here too.
        let after = mounted(self);
        {
            let mut total = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
            for (p, t) in &own {
                total.entry(p.clone()).or_default().add(t);
            }
            if let (Some(p), Some(before), Some(after)) = (purpose, before, after) {
                total.entry(p.to_string()).or_default().add(&after.since(&before));
            }
        }
        let out = out?;
        let code = out.status.code().unwrap_or(-1);
        // merge exits 3 when it merged with conflicts kept: merged all the same.
        if code == 0 || (op.starts_with("merge") && code == 3) {
            return Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
        Err(VolumeError::new(op, format!("hybridctl exit {code}: {line}")))
    }

    fn status(&self) -> Result<StatusJson, VolumeError> {
        let (_, out) = self.run("status", &["status", &self.volume, "--json"])?;
        let list: Vec<StatusJson> = Self::json("status", &out)?;
        list.into_iter().next().ok_or_else(|| VolumeError::new("status", "no such volume"))
    }

    fn json<T: serde::de::DeserializeOwned>(op: &str, stdout: &str) -> Result<T, VolumeError> {
        serde_json::from_str(stdout).map_err(|e| VolumeError::new(op, format!("read hybridctl --json output: {e}")))
    }
}

impl HomeVolume for Hybridctl {
    fn push_main(&self) -> Result<u64, VolumeError> {
        let (_, out) = self.run_counting("push main", &["push", "--volume", &self.volume, "--branch", "main", "--json"], Some("push"))?;
        Ok(Self::json::<PushJson>("push main", &out)?.seq)
    }

    fn merge(&self, branch: &str) -> Result<MergeOutcome, VolumeError> {
        let op = format!("merge {branch}");
        let (_, out) = self.run_counting(&op, &["merge", branch, "--volume", &self.volume, "--json"], Some("merge"))?;
        let m: MergeJson = Self::json(&op, &out)?;
        Ok(MergeOutcome { changes: m.changes.len(), conflicts: m.conflicts.len() })
    }

    fn take_traffic(&self) -> Traffic {
        std::mem::take(&mut *self.traffic.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl NodeVolume for Hybridctl {
    fn ensure_clone(&self, store: &str, volume: &str, source: &str, branch: &str) -> Result<(), VolumeError> {
        if self.home.join("volumes").join(&self.volume).join("volume.json").exists() {
            return Ok(());
        }
        let url = format!("{}/{volume}", store.trim_end_matches('/'));
        self.run("clone", &["clone", &url, "--branch", branch, "--source", source, "--name", &self.volume, "--json"])?;
        Ok(())
    }

    fn mount(&self, mountpoint: &Path) -> Result<(), VolumeError> {
        let mp = mountpoint.to_string_lossy();
        self.run("mount", &["mount", &self.volume, &mp, "-d"]).map(|_| ())
    }

    fn push(&self) -> Result<u64, VolumeError> {
        let (_, out) = self.run("push", &["push", "--volume", &self.volume, "--json"])?;
        Ok(Self::json::<PushJson>("push", &out)?.seq)
    }

    fn unpushed(&self) -> Result<Unpushed, VolumeError> {
        let s = self.status()?;
        // The mount's counters, and what this node's own hybridctl runs made (its clone).
        let mut store = s.traffic();
        for (p, t) in self.traffic.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            store.entry(p.clone()).or_default().add(t);
        }
        Ok(Unpushed { bytes: s.unpushed_bytes, files: s.unpushed_files, paths: s.unpushed_paths, store })
    }

    fn umount(&self, mountpoint: &Path) -> Result<(), VolumeError> {
        let mp = mountpoint.to_string_lossy();
        self.run("umount", &["umount", &mp]).map(|_| ())
    }
}

/// In-memory volumes for tests of the controller and node logic.
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Default)]
    pub struct Home {
        pub pushes: u64,
        pub merged: Vec<String>,
        /// Merges fail while set (the store unreachable).
        pub store_down: bool,
        /// Conflicts the merge of a branch reports (none when absent).
        pub conflicts: BTreeMap<String, usize>,
        /// Store traffic not taken yet: a push of main counts 2 requests and 500 bytes sent, a
        /// merge 3 requests and 1000 bytes received.
        pub traffic: Traffic,
    }

    #[derive(Debug, Default, Clone)]
    pub struct FakeHome(pub Arc<Mutex<Home>>);

    impl FakeHome {
        pub fn get(&self) -> std::sync::MutexGuard<'_, Home> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl HomeVolume for FakeHome {
        fn push_main(&self) -> Result<u64, VolumeError> {
            let mut h = self.get();
            if h.store_down {
                return Err(VolumeError::new("push main", "store unreachable"));
            }
            h.pushes += 1;
            h.traffic.entry("push".into()).or_default().add(&StoreTraffic { requests: 2, bytes_sent: 500, bytes_received: 0 });
            Ok(h.pushes)
        }
        fn take_traffic(&self) -> Traffic {
            std::mem::take(&mut self.get().traffic)
        }
        fn merge(&self, branch: &str) -> Result<MergeOutcome, VolumeError> {
            let mut h = self.get();
            if h.store_down {
                return Err(VolumeError::new(format!("merge {branch}"), "store unreachable"));
            }
            h.merged.push(branch.to_string());
            h.traffic.entry("merge".into()).or_default().add(&StoreTraffic { requests: 3, bytes_sent: 0, bytes_received: 1000 });
            Ok(MergeOutcome { changes: 1, conflicts: h.conflicts.get(branch).copied().unwrap_or(0) })
        }
    }

    /// A node's clone: bytes written since the last push, pushes made.
    #[derive(Debug, Default)]
    pub struct Node {
        pub cloned: Option<String>,
        pub mounted: bool,
        pub unpushed: u64,
        pub pushes: u64,
        /// Files written since the last push.
        pub files: BTreeMap<String, u64>,
        /// Store traffic counters, as the clone reports them.
        pub store: Traffic,
    }

    #[derive(Debug, Default, Clone)]
    pub struct FakeNode(pub Arc<Mutex<Node>>);

    impl FakeNode {
        pub fn get(&self) -> std::sync::MutexGuard<'_, Node> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
        pub fn write(&self, path: &str, bytes: u64) {
            let mut n = self.get();
            n.unpushed += bytes;
            n.files.insert(path.into(), bytes);
        }
    }

    impl NodeVolume for FakeNode {
        fn ensure_clone(&self, _store: &str, _volume: &str, _source: &str, branch: &str) -> Result<(), VolumeError> {
            self.get().cloned.get_or_insert_with(|| branch.to_string());
            Ok(())
        }
        fn mount(&self, _mp: &Path) -> Result<(), VolumeError> {
            self.get().mounted = true;
            Ok(())
        }
        fn push(&self) -> Result<u64, VolumeError> {
            let mut n = self.get();
            let sent = StoreTraffic { requests: 1, bytes_sent: n.unpushed, bytes_received: 0 };
            n.store.entry("push".into()).or_default().add(&sent);
            n.unpushed = 0;
            n.files.clear();
            n.pushes += 1;
            Ok(n.pushes)
        }
        fn unpushed(&self) -> Result<Unpushed, VolumeError> {
            let n = self.get();
            Ok(Unpushed { bytes: n.unpushed, files: n.files.len() as u64, paths: n.files.keys().cloned().collect(), store: n.store.clone() })
        }
        fn umount(&self, _mp: &Path) -> Result<(), VolumeError> {
            self.get().mounted = false;
            Ok(())
        }
    }
}
