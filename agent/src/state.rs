//! The controller's persisted state: every node it ever asked for, and where each stands.
//!
//! One JSON file, `STATE_DIR/state.json`, replaced atomically: written to `state.json.tmp`,
//! fsynced, renamed over the old one, then the directory fsynced. A crash leaves either the old
//! or the new file, never a torn one. The state is small (one record per node per day), so a
//! whole-file rewrite per change costs less than a database and keeps the file readable.
//!
//! The write order that makes a crash unable to leak a node (tested in `controller::tests`):
//!
//! 1. `Phase::Intended` is saved (with the idempotency key) **before** the provider is called;
//! 2. the provider launches (same key, same instance: the call can be repeated);
//! 3. the instance id is saved (`Phase::Running`).
//!
//! After a crash between 1 and 3, the next reconcile finds the intent, describes the provider's
//! instances by the owner tag, and adopts the one tagged with that intent, or launches with the
//! same key, which gives back the same instance. Termination is saved as `Terminating` before
//! the provider is asked, and becomes `Terminated` only once a describe confirms it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::scaler::Scaler;

pub const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;

// The phases, reports and losses are what the API shows too: defined with its types.
pub use hybrid_agent_api::{Loss, Night, NodeReport, Phase, StoreDay, StoreTraffic};

/// Object-store traffic by purpose (`push`, `clone`, `fetch`, `merge`).
pub type Traffic = BTreeMap<String, StoreTraffic>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The intent id, also the node's name (`n0001`).
    pub intent: String,
    pub idempotency_key: String,
    pub phase: Phase,
    pub instance_id: Option<String>,
    pub instance_type: String,
    pub price_per_hour: f64,
    /// The price is a guess (the provider gives none).
    pub price_is_estimate: bool,
    pub branch: String,
    /// The token the node authenticates with (secret; this file is 0600).
    pub token: String,
    pub requested_at: Timestamp,
    /// Start and stop as the provider reports them.
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub drain_requested_at: Option<Timestamp>,
    pub last_report: Option<NodeReport>,
    pub loss: Option<Loss>,
    /// The branch has been merged into the home volume.
    pub merged: bool,
    /// The budget's reservation: this node is paid for up to here (see `controller::budget`).
    #[serde(default)]
    pub reserved_until: Option<Timestamp>,
    /// The traffic counters of the node's last report (the next one adds what grew).
    #[serde(default)]
    pub store_seen: Traffic,
}

impl NodeRecord {
    /// A fresh intent: named `intent`, pushing `burst-<intent>` (a branch name cannot hold `/`), launched with the key
    /// `<owner>-<intent>`; no instance yet.
    pub fn intended(owner: &str, intent: &str, token: String, now: Timestamp) -> NodeRecord {
        NodeRecord {
            intent: intent.to_string(),
            idempotency_key: format!("{owner}-{intent}"),
            phase: Phase::Intended,
            instance_id: None,
            instance_type: String::new(),
            price_per_hour: 0.0,
            price_is_estimate: true,
            branch: format!("burst-{intent}"),
            token,
            requested_at: now,
            started_at: None,
            stopped_at: None,
            drain_requested_at: None,
            last_report: None,
            loss: None,
            merged: false,
            reserved_until: None,
            store_seen: Traffic::new(),
        }
    }
}

impl NodeRecord {
    /// What the API shows of it: everything but the token and the idempotency key.
    pub fn view(&self) -> hybrid_agent_api::NodeView {
        hybrid_agent_api::NodeView {
            node: self.intent.clone(),
            phase: self.phase,
            instance_id: self.instance_id.clone(),
            instance_type: self.instance_type.clone(),
            branch: self.branch.clone(),
            requested_at: self.requested_at,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            drain_requested_at: self.drain_requested_at,
            last_report: self.last_report.clone(),
            loss: self.loss.clone(),
            merged: self.merged,
        }
    }
}


#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub next_intent: u64,
    pub nodes: Vec<NodeRecord>,
    pub scaler: Scaler,
    pub nights: Vec<Night>,
    /// Budget refusals and leaked instances (`controller::budget`, `controller::leaks`).
    #[serde(default)]
    pub rent: RentState,
    /// Object-store traffic per day (`YYYY-MM-DD` in the burst window's zone): the nodes'
    /// and the controller's own (its pushes of main, its merges).
    #[serde(default)]
    pub store: BTreeMap<String, Traffic>,
}

/// What renting remembers across restarts besides the nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RentState {
    /// Launches refused (budget, no offer, no capacity), counted for `/metrics`.
    pub refusals: u64,
    pub last_refusal: Option<hybrid_agent_api::Refusal>,
    /// The last rent was refused (a refusal is logged when this turns true, not at each one).
    pub refusing: bool,
    /// Instances with our owner tag that the state does not know, as last listed.
    pub leaks: Vec<hybrid_agent_api::Leak>,
    /// Leaked or expired instances the controller asked the provider to terminate.
    pub leaks_terminated: u64,
    /// When each instance not (or no longer) ours was first listed: its age for the grace
    /// period when the provider gives no launch time.
    #[serde(default)]
    pub first_seen: std::collections::BTreeMap<String, Timestamp>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: FORMAT_VERSION,
            next_intent: 1,
            nodes: Vec::new(),
            scaler: Scaler::default(),
            nights: Vec::new(),
            rent: RentState::default(),
            store: BTreeMap::new(),
        }
    }
}

impl State {
    pub fn node(&self, intent: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.intent == intent)
    }

    pub fn node_mut(&mut self, intent: &str) -> Option<&mut NodeRecord> {
        self.nodes.iter_mut().find(|n| n.intent == intent)
    }

    pub fn live(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.iter().filter(|n| n.phase.is_live())
    }

    /// Adds `traffic` to the ledger of `day`.
    pub fn count_store(&mut self, day: String, traffic: &Traffic) {
        if traffic.values().all(|t| *t == StoreTraffic::default()) {
            return;
        }
        let ledger = self.store.entry(day).or_default();
        for (purpose, t) in traffic {
            ledger.entry(purpose.clone()).or_default().add(t);
        }
    }

    /// The ledger's days from `since` on (all with `None`).
    pub fn store_days(&self, since: Option<&str>) -> Vec<StoreDay> {
        let days = self.store.iter().filter(|(day, _)| since.is_none_or(|s| day.as_str() >= s));
        days.map(|(day, traffic)| StoreDay { day: day.clone(), traffic: traffic.clone() }).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("read state {}: {source}", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("state {}: format version {found}, this agent reads {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

/// The state file of one controller.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Creates `dir` (0700) if needed.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let io = |what, source| StateError::Io { what, path: dir.to_path_buf(), source };
        fs::create_dir_all(dir).map_err(|e| io("create state directory", e))?;
        set_mode(dir, 0o700).map_err(|e| io("restrict state directory", e))?;
        Ok(StateStore { dir: dir.to_path_buf() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved state, or a fresh one when none was ever saved.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Io { what: "read state", path, source }),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path: path.clone(), source })?;
        if state.version != FORMAT_VERSION {
            return Err(StateError::Version { path, found: state.version });
        }
        Ok(state)
    }

    /// Replaces the file atomically and durably (see the module comment).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |what, source| StateError::Io { what, path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io("encode state", std::io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(|e| io("create state", e))?;
        set_mode(&tmp, 0o600).map_err(|e| io("restrict state", e))?;
        f.write_all(&bytes).map_err(|e| io("write state", e))?;
        f.sync_all().map_err(|e| io("sync state", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("replace state", e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("sync state directory", e))
    }
}

impl StateStore {
    /// The report file of the night that opened at `opened`.
    pub fn night_path(&self, opened: Timestamp) -> PathBuf {
        self.dir.join("nights").join(format!("{}.json", opened.strftime("%Y%m%dT%H%M%SZ")))
    }

    /// Keeps the night's report as a file of its own, `STATE_DIR/nights/<opened, UTC>.json`
    /// (replaced atomically), rewritten each time the night changes: what was merged, what
    /// failed, whether the deadline was missed, and each node merged or lost that night.
    pub fn save_night(&self, night: &Night, nodes: &[NodeRecord]) -> Result<(), StateError> {
        let path = self.night_path(night.opened);
        let io = |what, source| StateError::Io { what, path: path.clone(), source };
        let branch_of = |b: &String| nodes.iter().find(|n| &n.branch == b).map(NodeRecord::view);
        let report = serde_json::json!({
            "opened": night.opened,
            "merged": night.merged,
            "failed": night.failed,
            "deadline_missed": night.deadline_missed,
            "alerted": night.alerted,
            "nodes": night.merged.iter().chain(&night.failed).filter_map(branch_of).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| io("encode night report", std::io::Error::other(e)))?;
        fs::create_dir_all(self.dir.join("nights")).map_err(|e| io("create nights directory", e))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(|e| io("create night report", e))?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| io("write night report", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("replace night report", e))
    }
}

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_reopen_and_a_leftover_tmp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State { next_intent: 7, ..State::default() };
        s.scaler.above_since = Some("2026-03-02T06:00:00Z".parse().unwrap());
        store.save(&s).unwrap();
        // A crash mid-write leaves a torn tmp file: the saved state is untouched.
        fs::write(dir.path().join("state.json.tmp"), b"{\"version\":1, torn").unwrap();
        let again = StateStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(again, s);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(store.path()).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.starts_with("read state ") && e.contains("state.json"), "{e}");
    }
}
