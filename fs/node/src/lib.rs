//! hybridfs node library: the one composition root. Every process that works with volumes
//! on a node (the `hybridctl` CLI, the node agent, the integration tests) goes through it;
//! none of them picks a metadata engine, block store or object store itself.
//!
//! A tour of the modules:
//!
//! * [`home`] — the state directory: volumes, `volume.json` ([`VolumeConfig`]), the volume
//!   lock, the mount state.
//! * `volume` — opening a volume: RocksDB metadata, the block store (local, or lazy over the
//!   object store for clones and merged volumes), the object store ([`VolumeConfig::remote`]).
//! * `ship` — `blocks_to_store = on-fsync`: seals upload their blocks to the volume's store
//!   before committing them (the data path of a volume several hosts share).
//! * [`create`] — `format` and `clone`.
//! * [`shared`] — shared volumes: `format --meta postgres://...` and `--join`, metadata in
//!   PostgreSQL, several hosts mounting one volume.
//! * [`keys`] — encryption-key resolution, in one place.
//! * [`mount`] — the mount lifecycle: foreground and daemonized, umount.
//! * [`notify`] — systemd readiness (`READY=1`, `STOPPING=1` to `$NOTIFY_SOCKET`).
//! * [`control`] — the typed control API between a client and the mount process: one
//!   client ([`control::call`]), one server ([`control::serve`]).
//! * [`status`] — read-only views: status, fsck, journal, merge log.
//! * [`workers`] — background work as named workers with a status, a stop signal and backoff.
//! * [`metrics_http`] — `/metrics` in the Prometheus text format.
//! * [`dashboard`] — the mount's web page (`--dashboard`), served beside `/metrics`.
//! * [`types`] — the report types of the layers below, for callers that print them.
//! * [`error`] — [`NodeError`] (the kinds callers match on: bad input, not found, busy,
//!   store unreachable, control, I/O), [`BadInput`], and the one table from errors to exit
//!   codes.
//!
//! An agent opens a volume with [`Home::volume`], clones with [`Home::clone_volume`], mounts
//! with [`mount::mount_daemon`], pushes, merges and snapshots with [`control::call`], and reads
//! unpushed bytes with [`VolumeDir::status`].

pub mod control;
pub mod create;
pub mod dashboard;
pub mod error;
pub mod home;
pub mod keys;
pub mod metrics_http;
pub mod mount;
pub mod notify;
pub mod shared;
pub mod status;
mod ship;
mod volume;
pub mod workers;

pub use error::{bad_input, exit_code, BadInput, NodeError, NodeResult};
pub use home::{BlocksToStore, Home, MountState, VolumeConfig, VolumeDir, VolumeLock};
/// Object-store requests and bytes by purpose (push, clone, fetch, merge).
pub use hybridfs_cloud::traffic;

/// The report types of the layers below, as the node's operations return them.
pub mod types {
    pub use hybridfs_core::diff::{ChangeKind, DiffEntry, DiffReport};
    pub use hybridfs_core::fsck::FsckReport;
    pub use hybridfs_core::merge::Policy;
    pub use hybridfs_core::metrics::MetricsSnapshot;
    pub use hybridfs_core::types::{utc, JournalEntry, SnapshotInfo};
    pub use hybridfs_core::{GcReport, RollbackReport};
    pub use hybridfs_sync::clone::{CloneReport, PullReport};
    pub use hybridfs_sync::merge::{MergeRecord, MergeSummary};
    pub use hybridfs_sync::{Progress, PushReport, RemoteCheck};
}
