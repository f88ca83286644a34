//! hybridfs core: the protocol-neutral file system.
//!
//! A tour of the modules:
//!
//! * [`types`] — inodes, directory entries, extents, block ids, journal rows.
//! * [`kv`] — the storage-engine seam ([`kv::Kv`]): ordered keys in column families, atomic
//!   batches; an in-memory engine here, RocksDB in the `hybridfs-meta` crate.
//! * [`meta`] — the typed, versioned metadata over any engine ([`meta::MetaStore`]): reads at
//!   an epoch, the change journal, block reference counts, the snapshot catalogue.
//! * [`blockstore`] — the sealed-block seam ([`blockstore::BlockStore`]); the on-disk one lives
//!   in `hybridfs-blocks`.
//! * [`staging`] — per-inode staging files that hold data not yet sealed.
//! * [`volume`] — the [`volume::Volume`]: POSIX operations, copy-on-write, the dirty-extent
//!   journal and the background sealer; [`MountView`], the facade a protocol adapter calls
//!   (live tree and read-only `.snapshots/` views, `EROFS`, kernel lookup counts).
//! * [`record`] — records as typed values, and the form a push publishes them in (a small
//!   file's inline bytes as a sealed block).
//! * [`merge`] — the three-way merge of a branch into the home tree: the pure planner, and
//!   the input and apply steps around it.
//! * [`worker`] — background work as named workers (status, stop signal, backoff): the
//!   registry every layer's loops report into.
//! * [`fsck`] — consistency checks over a metadata store and a block store.
//! * [`progress`] — progress events of long operations, throttled where they are counted.
//! * [`extent`] — pure block arithmetic. [`error`] — the one error enum and errno table.
//!
//! Core holds no FUSE, RocksDB or cloud types: every I/O seam is a trait.

pub mod blockcache;
pub mod blockstore;
pub mod diff;
pub mod error;
pub mod extent;
pub mod fsck;
pub mod kv;
pub mod layer;
pub mod merge;
pub mod meta;
pub mod metrics;
pub mod progress;
pub mod record;
pub mod space;
pub mod staging;
pub mod types;
pub mod volume;
pub mod worker;

pub use error::{FsError, Result};

/// Test hook for crash tests: when `HYBRIDFS_CRASHPOINT` names this point, the process dies
/// on the spot (`abort`: no destructor, no flush), as under `kill -9`.
pub fn crashpoint(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WANTED.get_or_init(|| std::env::var("HYBRIDFS_CRASHPOINT").ok()).as_deref() == Some(name) {
        eprintln!("hybridfs: crash point {name} reached; aborting");
        std::process::abort();
    }
}
pub use volume::data::{choose_io, Fallocate, IoKind, KillPriv, Opened, SetAttr, TimeSet};
pub use volume::namespace::{NewNode, ReaddirEntry, RenameFlags};
pub use volume::xattr::XattrMode;
pub use volume::snapshot::{check_snapshot_name, GcReport, RollbackReport};
pub use volume::mount_view::MountView;
pub use volume::{Caller, Volume, VolumeOptions};
