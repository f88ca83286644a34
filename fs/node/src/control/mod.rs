//! The control API: typed requests from a client (the CLI, the agent) to the process that owns
//! a volume, and typed replies.
//!
//! A mounted volume's metadata belongs to its mount process, so a client sends its
//! [`Request`] over `volumes/NAME/control.sock` and the mount process runs it; an unmounted
//! volume is opened by the client itself. Both run the same `server::execute`, so a request
//! means the same thing either way. [`call`] is the one client; [`serve`] the one server.
//!
//! # Wire format (version [`PROTOCOL_VERSION`])
//!
//! One JSON line each: the client sends an [`Envelope`]; the server answers with any number
//! of [`Message::Progress`] lines (at most a few per second) and then one [`Message::Done`],
//! carrying the [`Reply`] or a [`ControlError`]. A server given another version answers
//! [`ControlError::Version`] and does nothing. The mount process keeps the volume's object
//! store ([`RemoteSlot`]) for the life of the mount: requests name no store, key or path.

mod client;
mod server;

pub use client::call;
pub use server::{serve, RemoteSlot};

use hybridfs_core::diff::DiffReport;
use hybridfs_core::merge::Policy;
use hybridfs_core::types::SnapshotInfo;
use hybridfs_core::{GcReport, RollbackReport};
use hybridfs_core::FsError;
use hybridfs_sync::clone::PullReport;
use hybridfs_sync::merge::MergeRecord;
use hybridfs_sync::{Progress, PushReport, SyncError};
use serde::{Deserialize, Serialize};

/// Bumped whenever a [`Request`], [`Reply`] or [`Message`] changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a client asks of the process that owns a volume.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    SnapshotCreate { name: String },
    SnapshotDelete { name: String },
    /// Add (`on`) or remove the hold of `by`.
    SnapshotHold { name: String, by: String, on: bool },
    SnapshotList,
    SnapshotShow { name: String },
    /// What changed from snapshot `from` to snapshot `to` (None: the live tree).
    Diff { from: String, to: Option<String> },
    Gc { grace_secs: u64 },
    /// Unmounted volumes only.
    Rollback { name: String },
    /// Publish the live tree as the next layer of `branch`. `fork_from`: the volume's own
    /// branch, when pushing to another one (see [`hybridfs_sync::push_with`]).
    Push { branch: String, fork_from: Option<String> },
    /// Bring a clone forward to the newest head of its source branch (unmounted only).
    Pull,
    /// Fetch the data of the files under these volume paths (components from the root).
    Prefetch { paths: Vec<Vec<String>> },
    /// Merge a branch into the volume.
    Merge(MergeArgs),
    /// Undo merge `id` (None: the newest not undone).
    MergeUndo { id: Option<u64> },
    /// The mount process's background workers (mounted volumes only).
    Workers,
}

impl Request {
    /// The request's name, as a worker's status shows it.
    pub fn op(&self) -> &'static str {
        match self {
            Request::SnapshotCreate { .. } => "snapshot create",
            Request::SnapshotDelete { .. } => "snapshot delete",
            Request::SnapshotHold { .. } => "snapshot hold",
            Request::SnapshotList => "snapshot list",
            Request::SnapshotShow { .. } => "snapshot show",
            Request::Diff { .. } => "diff",
            Request::Gc { .. } => "gc",
            Request::Rollback { .. } => "rollback",
            Request::Push { .. } => "push",
            Request::Pull => "pull",
            Request::Prefetch { .. } => "prefetch",
            Request::Merge(_) => "merge",
            Request::MergeUndo { .. } => "merge undo",
            Request::Workers => "workers",
        }
    }
}

/// A merge as the control API carries it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MergeArgs {
    pub branch: String,
    pub policy: Policy,
    pub dry_run: bool,
    pub confirm: bool,
    /// Percentage of the files the branch may delete without `confirm`.
    pub max_delete: f64,
    pub prefetch: bool,
}

/// One snapshot as `snapshot list` and `show` report it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    #[serde(flatten)]
    pub info: SnapshotInfo,
    /// Bytes only this snapshot keeps.
    pub unique_bytes: u64,
}

/// What `prefetch` did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PrefetchReport {
    pub paths: usize,
    pub blocks: u64,
    pub seconds: f64,
}

/// The answer to a [`Request`]: one variant per kind of result.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// `SnapshotCreate`, `SnapshotDelete`, `SnapshotHold`.
    Snapshot(SnapshotInfo),
    /// `SnapshotList` (all) and `SnapshotShow` (one).
    Snapshots(Vec<SnapshotRow>),
    Diff(DiffReport),
    Gc(GcReport),
    Rollback(RollbackReport),
    Push(PushReport),
    Pull(PullReport),
    Prefetch(PrefetchReport),
    /// `Merge` and `MergeUndo`.
    Merge(MergeRecord),
    Workers(Vec<crate::workers::WorkerStatus>),
}

/// A request that failed, as it crosses the socket.
#[derive(thiserror::Error, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ControlError {
    /// The request was wrong (an unknown snapshot, a bad name): the CLI exits 2.
    #[error("{0}")]
    BadInput(String),
    /// Refused while the volume is mounted.
    #[error("the volume is mounted: unmount it first (hybridctl umount MOUNTPOINT); a rollback or a pull changes the tree under running programs")]
    Mounted,
    /// Asked of a volume that is not mounted.
    #[error("the volume is not mounted")]
    NotMounted,
    #[error("the mount process speaks control protocol {server}, this client {client}: remount the volume with this version")]
    Version { client: u32, server: u32 },
    /// The reply came but does not fit the request (a bug on one side).
    #[error("the mount process answered {0} to this request")]
    UnexpectedReply(String),
    /// Everything else: the operation failed (the CLI exits 1).
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ControlError::BadInput(_))
    }
}

impl From<FsError> for ControlError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::BadInput(_) | FsError::Invalid(_) => ControlError::BadInput(e.to_string()),
            e => ControlError::Failed(e.to_string()),
        }
    }
}

impl From<SyncError> for ControlError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Volume(e) => e.into(),
            e => ControlError::Failed(e.to_string()),
        }
    }
}

/// The first line a client sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// A line the server sends.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Progress(Progress),
    Done(Result<Reply, ControlError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is the contract between two binaries of different ages: a request
    /// and an answer read back equal to what was sent.
    #[test]
    fn requests_and_answers_read_back_as_sent() {
        let reqs = [
            Request::Push { branch: "b".into(), fork_from: Some("main".into()) },
            Request::Merge(MergeArgs { branch: "n1".into(), policy: Policy::default(), dry_run: true, confirm: false, max_delete: 50.0, prefetch: false }),
            Request::Pull,
            Request::Diff { from: "a".into(), to: None },
        ];
        for request in reqs {
            let line = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, request: request.clone() }).unwrap();
            let back: Envelope = serde_json::from_str(&line).unwrap();
            assert_eq!(back.request, request);
        }
        let done = Message::Done(Err(ControlError::BadInput("no snapshot x".into())));
        let back: Message = serde_json::from_str(&serde_json::to_string(&done).unwrap()).unwrap();
        assert!(matches!(back, Message::Done(Err(ControlError::BadInput(m))) if m == "no snapshot x"));
        let info = SnapshotInfo { id: 1, name: "s".into(), epoch: 2, created: 3, files: 4, bytes: 5, holds: vec!["n".into()] };
        let row = Message::Done(Ok(Reply::Snapshots(vec![SnapshotRow { info: info.clone(), unique_bytes: 6 }])));
        let back: Message = serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert!(matches!(back, Message::Done(Ok(Reply::Snapshots(r))) if r[0].info == info && r[0].unique_bytes == 6));
    }

    #[test]
    fn bad_input_from_the_volume_stays_bad_input_across_the_socket() {
        let e: ControlError = SyncError::Volume(FsError::BadInput("bad".into())).into();
        assert!(e.is_bad_input());
        let e: ControlError = SyncError::Conflict("moved".into()).into();
        assert!(!e.is_bad_input());
    }
}
