//! The volume: a POSIX namespace over a [`MetaStore`], a [`BlockStore`] and staging files.
//!
//! # Concurrency
//!
//! * `ns` serialises every change to the namespace (create, link, unlink, rename, setattr, ...)
//!   through [`Txn`]. Namespace changes are a few metadata writes each; one lock keeps rename and
//!   link counting simple and obviously right.
//! * A shared volume (issue 15) is the exception: there a change is made atomic by its
//!   database transaction (every record it read is checked unchanged inside it, see [`Txn`]),
//!   and holding one lock across its round trips made a host's FUSE workers wait on each
//!   other's. So its changes, and the opens and closes that pin nodes, take `ns` *shared*,
//!   plus the *stripes* (`stripes`, by inode number) of every inode they read or pin: what
//!   `ns` protects in-process — an inode's node (loaded, pinned, edited in place), its kernel
//!   references and handles checked against its unlink, its purge — is then guarded per
//!   inode, and two changes of one directory on one host still run one after the other (no
//!   database conflict between them). Stripes are taken in increasing order; one taken out of
//!   order is waited for 10 ms at most, and a change that cannot get it runs again
//!   ([`FsError::MetaStale`], [`Volume::retrying`]), so they never deadlock. Whatever needs
//!   the whole namespace still (the sealer's pins, snapshots, merges, rollbacks) takes `ns`
//!   exclusively. RocksDB volumes take `ns` exclusively for every change, as before.
//! * Each inode that is open (or being sealed) has a [`Node`] in `nodes`, holding the
//!   authoritative copy of its inode record, its staging file and a cache of its extents, under
//!   one `RwLock`. Reads share it; writes, truncates and the sealer take it exclusively.
//! * Lock order: `ns` → stripes → node lock → `refs`. The data path takes only a node lock (and `refs`
//!   when a copy-on-write drops a block reference); it never waits on `ns`.
//! * `refs` spans "write block file + add reference" in the sealer and "drop reference +
//!   delete block file" elsewhere, so a block is never deleted while a new reference to it
//!   is being recorded.
//!
//! # Durability (invariant 1)
//!
//! Every metadata batch goes to the store's write-ahead log before the request is answered, so
//! it survives a crash of the process; `fsync` syncs the staging file and then the log, which
//! makes everything before it durable against power loss too.

pub mod data;
mod kernel_refs;
pub mod hosts;
mod merge;
pub mod mount_view;
pub mod namespace;
mod recent;
mod sealer;
pub mod ship;
pub mod snapshot;
pub mod views;
pub mod xattr;

pub use sealer::{count_unsealed, SealOutcome, SealerHandle, Unsealed};
pub use ship::BlockShipper;

use crate::blockcache::BlockCache;
use crate::blockstore::BlockStore;
use crate::error::{FsError, Result};
use crate::meta::{MetaStore, Mutation};
use crate::metrics::Metrics;
use crate::space::{DiskSpace, SpaceGuard};
use crate::staging::Staging;
use crate::types::{Extent, Inode, Ino, Kind, ROOT_INO};
use crate::worker::Workers;
use parking_lot::lock_api::ArcRwLockWriteGuard;
use parking_lot::{Mutex, RawRwLock, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Largest file size accepted (as ext4 with 4 KiB blocks).
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Inode numbers a shared volume's process takes from the store's counter at a time.
pub const INO_BATCH: u64 = 1024;
/// A shared volume's ranges of new inode numbers given out at once, one per group of parent
/// directories ([`Volume::new_ino`]).
pub const INO_POOLS: usize = 8;
/// Runs of one namespace change that met another host's change (see [`Volume::retrying`]).
pub const STALE_TRIES: u32 = 200;

/// What a volume needs to run; binaries fill it from `volume.json` and flags.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    pub block_size: u32,
    /// Directory of the staging files.
    pub staging_dir: PathBuf,
    /// How long a closed file stays untouched before its staged blocks are sealed.
    pub seal_delay: Duration,
    /// Bytes of verified plain blocks kept in memory for reads.
    pub block_cache_bytes: usize,
    /// The registry the volume's background work reports into (the sealer here; the layers
    /// above add theirs): [`Volume::workers`].
    pub workers: Arc<Workers>,
    /// Other hosts change the same store (a shared volume, issue 15): inode numbers come in
    /// ranges from a counter in the store, and every namespace change checks, inside its
    /// transaction, that what it read is unchanged, else runs again (see `Txn`).
    pub shared: bool,
    /// A shared volume: how long this host's lease lasts without renewal (`hosts.rs`; the
    /// mount's `mount.host_lease`) [default: [`hosts::HOST_LEASE`]].
    pub host_lease: Option<Duration>,
    /// A shared volume: how long closes gather before their open rows are deleted together
    /// (`hosts.rs`) [default: [`hosts::CLOSED_ROWS_GATHER`]]; tests that delete them
    /// themselves ([`Volume::delete_closed_rows`]) give a long one.
    pub closed_rows_gather: Option<Duration>,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            block_size: 1 << 20,
            staging_dir: PathBuf::from("staging"),
            seal_delay: Duration::from_secs(2),
            block_cache_bytes: 64 << 20,
            workers: Workers::new(),
            shared: false,
            host_lease: None,
            closed_rows_gather: None,
        }
    }
}

/// The inode numbers this volume gives new files. A volume and each of its clones create files
/// independently and later exchange them (pull, merge), so each takes numbers from its own
/// range: a home volume the lower half of the live space, a clone one of 4096 slots of the
/// upper half, chosen by its branch name (set at clone time with [`INO_RANGE`]).
pub fn ino_range(meta: &MetaStore) -> Result<(u64, u64)> {
    Ok(match meta.meta_value(INO_RANGE)? {
        Some(v) if v.len() == 16 => {
            (u64::from_le_bytes(v[..8].try_into().expect("8")), u64::from_le_bytes(v[8..].try_into().expect("8")))
        }
        _ => (ROOT_INO + 1, CLONE_INOS),
    })
}

/// Name of the inode range in the metadata store's named state.
pub const INO_RANGE: &str = "ino_range";
/// Where the clones' inode slots start, and the size of one slot.
pub const CLONE_INOS: u64 = 1 << 39;
pub const CLONE_SLOT: u64 = 1 << 27;

/// The inode range of a clone writing `branch`, as the value of [`INO_RANGE`].
pub fn clone_ino_range(branch: &str) -> Vec<u8> {
    let slot = u64::from_le_bytes(blake3::hash(branch.as_bytes()).as_bytes()[..8].try_into().expect("8")) % 4096;
    let lo = CLONE_INOS + slot * CLONE_SLOT;
    [lo.to_le_bytes(), (lo + CLONE_SLOT).to_le_bytes()].concat()
}

fn next_ino(meta: &MetaStore) -> Result<u64> {
    let (lo, hi) = ino_range(meta)?;
    Ok((meta.max_ino_below(hi)? + 1).max(lo))
}

/// Who is asking: the credentials of the process behind a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The in-memory state of an open inode.
pub(crate) struct NodeData {
    pub inode: Inode,
    pub staging: Option<File>,
    /// Extents looked up so far (`None` = hole). Kept in step with every batch applied.
    /// Its own small lock lets readers, who share the node lock, fill it.
    pub extents: Mutex<HashMap<u64, Option<Extent>>>,
    /// Blocks already journaled in `journal_epoch`.
    pub journaled: HashSet<u64>,
    pub journal_epoch: u64,
    /// The inode record changed (mtime, size) since it was last written to the store.
    pub attr_dirty: bool,
    /// Opens served by kernel passthrough from the staging file (writers included).
    pub passthrough_opens: u32,
    /// Of those, opens the kernel writes through straight into the staging file
    /// ([`data::IoKind::PassthroughWrite`]): while there are any, the staging file is the
    /// truth about the file's bytes, size and mtime, and [`Volume::absorb`] brings the node up
    /// to date with it.
    pub pt_writers: u32,
    /// The staging file's mtime when the node last took its attributes from it.
    pub pt_mtime: crate::types::Timespec,
    /// The staging file was opened for writing since the staging directory was last synced:
    /// `fsync` syncs the directory too, so its entry survives a power cut.
    pub staging_entry_unsynced: bool,
    /// Where reads of the file go, for read-ahead ([`data::ReadPattern`]).
    pub read_pattern: data::ReadPattern,
    /// The file had no `security.capability` attribute when [`Volume`]'s `caps_set` count
    /// was this value (writes that remove it look again once the count moved).
    pub no_caps_at: Option<u64>,
    /// Created by this mount and not yet closed for the last time: its size at that close
    /// goes to [`Volume`]'s `new_files` ([`data::NewFiles`]).
    pub new_file: bool,
}

pub(crate) type Node = Arc<RwLock<NodeData>>;
pub(crate) type NodeGuard = ArcRwLockWriteGuard<RawRwLock, NodeData>;

struct NodeEntry {
    node: Node,
    handles: u32,
    pins: u32,
}

pub struct Volume {
    meta: Arc<MetaStore>,
    blocks: Arc<dyn BlockStore>,
    staging: Staging,
    space: SpaceGuard,
    cache: BlockCache,
    block_size: u64,
    seal_delay: Duration,
    next_ino: AtomicU64,
    /// New inodes get numbers in `[lo, hi)` (see [`ino_range`]).
    ino_limit: u64,
    ino_lo: u64,
    /// A shared volume: the ranges of inode numbers this process took from the store's counter
    /// and has not given out yet (`next`, `end`), [`INO_POOLS`] of them (see [`Volume::new_ino`]).
    ino_pools: Box<[Mutex<(u64, u64)>]>,
    shared: bool,
    /// Writers of file data hold it shared; a snapshot holds it exclusively while it seals
    /// staged data and ends the epoch, so no staged block is ever part of a snapshot. Fair:
    /// a waiting snapshot stops new writers, so a stream of writes cannot starve it. Never
    /// taken twice by one thread.
    gate: RwLock<()>,
    ns: RwLock<()>,
    /// A shared volume: per-inode locks under a shared `ns` (see the module comment).
    stripes: Box<[Mutex<()>]>,
    nodes: Mutex<HashMap<Ino, NodeEntry>>,
    /// The kernel's lookup counts of live inodes (`kernel_refs.rs`: small at millions).
    lookups: Mutex<kernel_refs::KernelRefs>,
    /// A shared volume: inodes purged while the kernel still referenced them (see
    /// `Txn::drop_link`); their FORGET only forgets them. A directory keeps its last record
    /// here (nlink 0) until then: the kernel asks for the attributes of a removed working
    /// directory (`stat .`), with no handle. Lock order: after `lookups`.
    purged_early: Mutex<HashMap<Ino, Option<Inode>>>,
    /// A shared volume: the open directory handles per directory (`opendir`); a directory
    /// one holds is kept as an orphan by `rmdir`, as before.
    dir_handles: Mutex<HashMap<Ino, u32>>,
    refs: Mutex<()>,
    /// Serialises changes to the snapshot catalogue.
    catalog: Mutex<()>,
    /// One collector pass at a time.
    collector: Mutex<()>,
    /// The snapshot catalogue as the views under `/.snapshots` see it (None: reload).
    views: RwLock<Option<(std::time::Instant, Vec<crate::types::SnapshotInfo>)>>,
    sealer: Mutex<Option<SealerHandle>>,
    workers: Arc<Workers>,
    passthrough: std::sync::atomic::AtomicBool,
    /// Where seals put their blocks before committing them (`ship.rs`; None: local only).
    shipper: RwLock<Option<Arc<dyn ship::BlockShipper>>>,
    /// Opens for writing of files with no sealed block may be passthrough too.
    passthrough_writes: std::sync::atomic::AtomicBool,
    /// Counts `security.capability` attributes set since the volume was opened: a node that
    /// found none at count N need not look again while the count is N
    /// ([`NodeData::no_caps_at`], [`data::KillPriv`]).
    caps_set: AtomicU64,
    /// Whether the last new files outgrew the inline limit: new files not created with
    /// `O_TRUNC` are written by passthrough while most did ([`data::NewFiles`]).
    new_files: data::NewFiles,
    /// A shared volume: this host's id ([`hosts`]), and whether its lease was given back.
    host: u64,
    /// A shared volume: how long this host's lease lasts without renewal.
    host_lease: Duration,
    /// A shared volume: files whose last handle on this host went while their open rows are
    /// still stored; the `open-rows` thread deletes them together ([`hosts`]).
    closed_rows: Arc<hosts::ClosedRows>,
    closed_rows_gather: Duration,
    /// A shared volume: directory records and names read or committed a moment ago
    /// (`recent.rs`), for the next namespace change instead of a round trip.
    recent: recent::RecentReads,
    stopped: std::sync::atomic::AtomicBool,
    pub metrics: Metrics,
}

impl Volume {
    /// Write the root directory of a new volume.
    pub fn format(meta: &MetaStore, uid: u32, gid: u32) -> Result<()> {
        Self::format_with(meta, uid, gid, Vec::new())
    }

    /// [`Volume::format`], writing `extra` in the same batch (a shared volume's descriptor).
    pub fn format_with(meta: &MetaStore, uid: u32, gid: u32, extra: Vec<Mutation>) -> Result<()> {
        if meta.get_inode(ROOT_INO)?.is_some() {
            return Err(FsError::Exists);
        }
        let mut root = Inode::new(ROOT_INO, Kind::Dir, 0o755, uid, gid);
        root.parent = ROOT_INO;
        let mut batch = vec![Mutation::PutInode(root), Mutation::SetEpoch(1)];
        batch.extend(extra);
        meta.apply(batch, true)
    }

    /// Open a formatted volume. Orphans left by a crash are purged here.
    pub fn open(
        meta: Arc<MetaStore>,
        blocks: Arc<dyn BlockStore>,
        opts: VolumeOptions,
    ) -> Result<Arc<Volume>> {
        if meta.get_inode(ROOT_INO)?.is_none() {
            return Err(FsError::Meta("the volume has no root directory (not formatted?)".into()));
        }
        if !opts.block_size.is_power_of_two() || opts.block_size < 4096 {
            return Err(FsError::Invalid("block size must be a power of two >= 4096"));
        }
        let staging = Staging::new(&opts.staging_dir)?;
        let vol = Arc::new(Volume {
            space: SpaceGuard::new(staging.dir())?,
            staging,
            cache: BlockCache::new(opts.block_cache_bytes),
            block_size: opts.block_size as u64,
            seal_delay: opts.seal_delay,
            gate: RwLock::new(()),
            next_ino: AtomicU64::new(next_ino(&meta)?),
            ino_limit: ino_range(&meta)?.1,
            ino_lo: ino_range(&meta)?.0,
            ino_pools: (0..INO_POOLS).map(|_| Mutex::new((0, 0))).collect(),
            shared: opts.shared,
            ns: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            nodes: Mutex::new(HashMap::new()),
            lookups: Mutex::new(kernel_refs::KernelRefs::default()),
            purged_early: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            refs: Mutex::new(()),
            catalog: Mutex::new(()),
            collector: Mutex::new(()),
            views: RwLock::new(None),
            sealer: Mutex::new(None),
            workers: opts.workers,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            shipper: RwLock::new(None),
            passthrough_writes: std::sync::atomic::AtomicBool::new(false),
            caps_set: AtomicU64::new(0),
            new_files: data::NewFiles::default(),
            host: hosts::new_host_id(),
            host_lease: opts.host_lease.filter(|d| !d.is_zero()).unwrap_or(hosts::HOST_LEASE),
            closed_rows: Arc::default(),
            closed_rows_gather: opts.closed_rows_gather.unwrap_or(hosts::CLOSED_ROWS_GATHER),
            recent: recent::RecentReads::default(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            metrics: Metrics::default(),
            meta,
            blocks,
        });
        // Orphans are this process's (files unlinked while open, left by a crash); on a shared
        // volume those a live host holds open stay (`hosts.rs`, doc/SEMANTICS.md).
        if vol.shared {
            vol.meta.set_usage_deltas(true);
            vol.start_lease()?;
        }
        vol.purge_orphans()?;
        Ok(vol)
    }

    /// Start the background sealer and queue every inode that still has staged data.
    pub fn start_sealer(self: &Arc<Self>) -> Result<()> {
        // A mount is the staging directory's one writer: its new staging files come from a
        // pool made ahead by a thread (`staging.rs`).
        self.staging.start_pool();
        let handle = sealer::spawn(self.clone(), self.seal_delay);
        for ino in self.staging.list()? {
            handle.enqueue(ino);
        }
        *self.sealer.lock() = Some(handle);
        Ok(())
    }

    /// Flush everything: persist open inodes, seal all staged data, sync the store.
    pub fn shutdown(&self) -> Result<()> {
        let open: Vec<Node> = self.nodes.lock().values().map(|e| e.node.clone()).collect();
        for node in open {
            let mut st = node.write();
            self.persist_attrs(&mut st, false)?;
        }
        if let Some(handle) = self.sealer.lock().take() {
            handle.stop_and_drain();
        }
        if self.shared {
            if let Err(e) = self.end_lease() {
                tracing::warn!("give this host's lease back (it ends by itself): {e}");
            }
        }
        self.meta.sync()?;
        self.blocks.sync()
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The named background workers of this volume (`hybridctl status` lists them).
    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// The epoch writes happen in; snapshots end epochs.
    pub fn epoch(&self) -> u64 {
        self.meta.epoch()
    }

    pub fn meta(&self) -> &MetaStore {
        &*self.meta
    }

    pub fn blocks(&self) -> &dyn BlockStore {
        &*self.blocks
    }

    pub fn disk_space(&self) -> Result<DiskSpace> {
        self.space.disk()
    }

    /// Bytes of live files in blocks still staged (written, not yet sealed into blocks), as
    /// `hybridctl status` counts them, read only from the files that have a staging file: the
    /// cost follows the unsealed data, never the size of the volume.
    pub fn unsealed_bytes(&self) -> Result<u64> {
        self.unsealed().map(|u| u.bytes)
    }

    /// The live files with staged blocks and those blocks' bytes (see [`Volume::unsealed_bytes`]).
    pub fn unsealed(&self) -> Result<Unsealed> {
        count_unsealed(&self.meta, &self.staging.list()?, self.block_size, &mut |ino| match self.getattr(ino) {
            Ok(inode) => Ok(Some(inode.size)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Whether sealing `bytes` more would eat into the disk's reserve (the disk is full for
    /// the sealer: see `sealer.rs`).
    pub fn no_room_for(&self, bytes: u64) -> Result<bool> {
        Ok(self.space.room()? < bytes)
    }

    /// The current attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        if let Some(node) = self.node_if_open(ino) {
            return Ok(node.read().live_inode());
        }
        if !self.shared {
            return self.meta.get_inode(ino)?.ok_or(FsError::NotFound);
        }
        if let Some(dir) = self.recent.dir_attr(ino) {
            return Ok(dir);
        }
        let Some(inode) = self.meta.get_inode(ino)? else {
            // A directory this host removed while the kernel referenced it: its last record.
            return self.purged_early.lock().get(&ino).cloned().flatten().ok_or(FsError::NotFound);
        };
        self.recent.read_inode(&inode);
        Ok(inode)
    }

    /// `opendir`: the directory's attributes; on a shared volume its handle is counted (a
    /// directory with an open handle is kept as an orphan by `rmdir` until its FORGET).
    pub fn opendir(&self, ino: Ino) -> Result<Inode> {
        let inode = self.getattr(ino)?;
        if inode.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.shared {
            *self.dir_handles.lock().entry(ino).or_default() += 1;
        }
        Ok(inode)
    }

    /// A directory handle of `opendir` was released.
    pub fn releasedir(&self, ino: Ino) {
        if self.shared {
            let mut handles = self.dir_handles.lock();
            if let Some(n) = handles.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    handles.remove(&ino);
                }
            }
        }
    }

    /// A shared volume: another host changed the record of `ino` (its change notification).
    pub fn changed_elsewhere(&self, ino: Ino) {
        self.recent.forget_inode(ino);
    }

    /// A shared volume: another host changed the entry `name` of `parent`.
    pub fn name_changed_elsewhere(&self, parent: Ino, name: &[u8]) {
        self.recent.forget_name(parent, name);
    }

    /// Whether live inode `ino` exists (open, or in the store), without decoding it.
    pub(crate) fn exists(&self, ino: Ino) -> Result<bool> {
        Ok(self.node_if_open(ino).is_some() || self.meta.has_inode(ino)?)
    }

    /// The attributes of live inodes `inos` (`None`: no such inode): open files from memory,
    /// the others with one store read for all of them (a listing's entries: readdirplus).
    pub fn getattrs(&self, inos: &[Ino]) -> Result<Vec<Option<Inode>>> {
        let mut out: Vec<Option<Inode>> = Vec::with_capacity(inos.len());
        let mut stored = Vec::new();
        for &ino in inos {
            match self.node_if_open(ino) {
                Some(node) => out.push(Some(node.read().inode.clone())),
                None => {
                    stored.push((out.len(), ino));
                    out.push(None);
                }
            }
        }
        let wanted: Vec<Ino> = stored.iter().map(|(_, ino)| *ino).collect();
        for ((at, _), inode) in stored.into_iter().zip(self.meta.get_inodes(&wanted)?) {
            out[at] = inode;
        }
        Ok(out)
    }

    /// Count one more kernel reference to `ino` (every entry the adapter hands out).
    pub fn remember(&self, ino: Ino) {
        self.lookups.lock().add(ino);
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let gone = self.lookups.lock().forget(ino, n);
        if gone && self.shared && self.purged_early.lock().remove(&ino).is_some() {
            return;
        }
        if gone {
            if let Err(e) = self.purge_if_unused(ino) {
                tracing::error!("purge inode {ino}: {e}");
            }
        }
    }

    /// Inodes the kernel holds references to, and the memory their table takes (bytes).
    pub fn kernel_refs(&self) -> (u64, u64) {
        let l = self.lookups.lock();
        (l.len() as u64, l.heap_bytes() as u64)
    }

    fn node_if_open(&self, ino: Ino) -> Option<Node> {
        self.nodes.lock().get(&ino).map(|e| e.node.clone())
    }

    fn is_referenced(&self, ino: Ino) -> bool {
        self.lookups.lock().contains(ino) || self.nodes.lock().contains_key(&ino)
    }

    /// Load (or find) the node of `ino` and count a handle or a pin on it. Caller holds `ns`.
    fn pin_locked(&self, ino: Ino, handle: bool) -> Result<Node> {
        self.pin_locked_with(ino, handle, None)
    }

    /// [`Volume::pin_locked`]; a new node starts from `known` when given (the record of a
    /// file just created) instead of the store's.
    fn pin_locked_with(&self, ino: Ino, handle: bool, known: Option<Inode>) -> Result<Node> {
        let count = |e: &mut NodeEntry| if handle { e.handles += 1 } else { e.pins += 1 };
        if let Some(e) = self.nodes.lock().get_mut(&ino) {
            count(e);
            return Ok(e.node.clone());
        }
        // Not under `nodes`: the store read may be a database round trip, and other inodes'
        // lookups need not wait for it. Nobody else pins `ino` meanwhile (the caller holds
        // its part of `ns`).
        let inode = match known {
            Some(inode) => inode,
            None => self.meta.get_inode(ino)?.ok_or(FsError::NotFound)?,
        };
        let staging = if inode.kind == Kind::File { self.staging.open(ino, false)? } else { None };
        let node = Arc::new(RwLock::new(NodeData {
            inode,
            staging,
            extents: Mutex::new(HashMap::new()),
            journaled: HashSet::new(),
            journal_epoch: 0,
            attr_dirty: false,
            passthrough_opens: 0,
            pt_writers: 0,
            pt_mtime: crate::types::Timespec::default(),
            staging_entry_unsynced: false,
            read_pattern: Default::default(),
            no_caps_at: None,
            new_file: false,
        }));
        let mut nodes = self.nodes.lock();
        let e = nodes.entry(ino).or_insert(NodeEntry { node, handles: 0, pins: 0 });
        count(e);
        Ok(e.node.clone())
    }

    /// Drop a handle or pin; returns true when the node left memory. Caller holds `ns`.
    fn unpin_locked(&self, ino: Ino, handle: bool) -> bool {
        let mut nodes = self.nodes.lock();
        let Some(e) = nodes.get_mut(&ino) else { return false };
        if handle { e.handles = e.handles.saturating_sub(1) } else { e.pins = e.pins.saturating_sub(1) }
        if e.handles == 0 && e.pins == 0 {
            nodes.remove(&ino);
            return true;
        }
        false
    }

    fn has_handles(&self, ino: Ino) -> bool {
        self.nodes.lock().get(&ino).is_some_and(|e| e.handles > 0)
    }

    /// Write the inode record of an open node if it changed.
    fn persist_attrs(&self, st: &mut NodeData, sync: bool) -> Result<()> {
        self.absorb(st)?;
        if st.attr_dirty {
            self.meta.apply(vec![self.inode_write(&st.inode)], sync)?;
            st.attr_dirty = false;
        } else if sync {
            self.meta.sync()?;
        }
        Ok(())
    }

    /// Apply a batch of the live tree. A block whose last reference it drops is deleted at
    /// once: a reader of the live tree holds its node's lock while it reads a block, so nobody
    /// can be reading it. (Blocks freed by the collector, whose versions snapshot readers may
    /// still be reading, wait out the grace period instead.)
    ///
    /// A batch the metadata store refuses for lack of disk space (the kernel's passthrough
    /// writes filled the disk: `space.rs`) is tried again once the space guard gave up its
    /// ballast, for a few seconds (RocksDB recovers from a full disk on its own thread, within
    /// 5 s of there being room).
    pub(crate) fn apply_live(&self, batch: Vec<Mutation>, sync: bool) -> Result<()> {
        let mut freed = self.meta.apply_slice(&batch, sync);
        if freed.as_ref().is_err_and(disk_full) && self.space.make_room() {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(6);
            for _ in 0..60 {
                freed = self.meta.apply_slice(&batch, sync);
                if !freed.as_ref().is_err_and(disk_full) || std::time::Instant::now() >= until {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let freed = freed?;
        if self.shared {
            self.recent.committed(&batch);
        }
        if freed.is_empty() {
            return Ok(());
        }
        let _refs = self.refs.lock();
        let mut done = Vec::new();
        for id in freed {
            if self.meta.block_refs(&id)? == 0 {
                self.cache.remove(&id);
                if let Err(e) = self.blocks.remove(&id) {
                    tracing::warn!("delete unreferenced block {id}: {e}");
                    continue;
                }
                done.push(Mutation::DelFree(id));
            }
        }
        // The batch itself is applied: a caller must not take this for its failure. Rows of
        // deleted blocks left behind are cleared by the next collector pass.
        if let Err(e) = self.meta.apply(done, false) {
            tracing::warn!("record deleted blocks as gone: {e}");
        }
        Ok(())
    }

    /// The write of an open file's inode record from its data path: the whole record, or on
    /// a shared volume only the fields the data path changes, merged into the record as stored
    /// inside the batch's transaction (another host's chmod, chown, utimes or unlink stays).
    pub(crate) fn inode_write(&self, inode: &Inode) -> Mutation {
        if self.shared {
            Mutation::MergeInodeData(inode.clone())
        } else {
            Mutation::PutInode(inode.clone())
        }
    }

    /// A shared volume: take what other hosts changed in an open node's record (mode, owner,
    /// links, times they set) from the store, keeping this host's data fields.
    pub(crate) fn refresh_node(&self, st: &mut NodeData) -> Result<()> {
        if let Some(mut stored) = self.meta.get_inode(st.inode.ino)? {
            crate::meta::merge_data_fields(&mut stored, &st.inode);
            st.inode = stored;
        }
        Ok(())
    }

    /// Delete an inode nobody links or references any more (on a shared volume: that no live
    /// host holds open, `hosts.rs`); returns whether it went.
    fn purge_if_unused(&self, ino: Ino) -> Result<bool> {
        if self.shared {
            return self.retrying(|| self.purge_once(ino));
        }
        self.purge_once(ino)
    }

    fn purge_once(&self, ino: Ino) -> Result<bool> {
        let _ns = self.ns_for(&[ino]);
        if self.is_referenced(ino) {
            return Ok(false);
        }
        // Only an unlinked inode is purged, and on a local volume each one that outlived its
        // last link has an orphan row, written in the same batch under `ns` (held here):
        // `Txn::drop_link` (unlink, rmdir, a rename over a name), a rollback's and a merge
        // undo's restored records, a pull's (`is_unlinked_inode`); fsck reports an unlinked
        // inode without one. So the small orphans family answers for the linked files, most
        // of what the kernel forgets (every file it had looked up, after a drop of its
        // caches), without reading and decoding their inode records. A shared volume reads
        // the record as before (its orphans follow the hosts' open rows, `hosts.rs`).
        if !self.shared && !self.meta.is_orphan(ino)? {
            return Ok(false);
        }
        let inode = match self.meta.get_inode(ino)? {
            Some(inode) if inode.nlink == 0 => inode,
            Some(_) => return Ok(false),
            // A shared volume: another host removed it (the kernel here forgets what another
            // host's rmdir or unlink took away), or this one purged it: its orphan row, if it
            // had one, went in the same transaction. A read, not a writing transaction per FORGET.
            None if self.shared && !self.meta.is_orphan(ino)? => return Ok(false),
            None => return self.meta.apply(vec![Mutation::DelOrphan(ino)], false).map(|_| false),
        };
        let mut batch = Vec::new();
        if self.shared {
            let h = self.holders(ino)?;
            if h.others_alive {
                return Ok(false);
            }
            batch.extend(h.mutations(ino));
            if h.rows.contains(&self.host) {
                batch.push(Mutation::DelOpen { ino, host: self.host });
            }
            batch.push(Mutation::ExpectInode(ino, Some(inode)));
        }
        batch.extend(self.purge_batch(ino)?);
        self.apply_live(batch, false)?;
        self.staging.remove(ino)?;
        Ok(true)
    }

    /// The mutations that delete inode `ino` with its extents, references and xattrs.
    fn purge_batch(&self, ino: Ino) -> Result<Vec<Mutation>> {
        self.meta.purge_batch(ino)
    }

    /// Whether other hosts share this volume's metadata store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A number for a new inode in directory `parent`: from the volume's own counter, or on
    /// a shared volume from one of this process's ranges, taken [`INO_BATCH`] at a time from
    /// the store's counter ([`MetaStore::allocate_inos`]) so that no two hosts ever give out
    /// the same one. The range is the parent's ([`INO_POOLS`], by its number): creates in
    /// different directories (two processes' work directories) get numbers far apart, not
    /// interleaved ones, so their new inode rows and the reads that expect them absent sit in
    /// different pages of the database's index (PostgreSQL's SERIALIZABLE locks what a read
    /// saw page by page: neighbouring new keys made two creates conflict).
    fn new_ino(&self, parent: Ino) -> Result<Ino> {
        let ino = if self.shared {
            let mut pool = self.ino_pools[(parent % INO_POOLS as u64) as usize].lock();
            if pool.0 >= pool.1 {
                let first = self.meta.allocate_inos(self.ino_lo, self.ino_limit, INO_BATCH)?;
                *pool = (first, first + INO_BATCH);
            }
            pool.0 += 1;
            pool.0 - 1
        } else {
            self.next_ino.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        if ino >= self.ino_limit || Self::is_view(ino) {
            tracing::error!("inode numbers of this volume are used up (limit {})", self.ino_limit);
            return Err(FsError::NoSpace);
        }
        Ok(ino)
    }

    /// Run a namespace change again while another host changed what it read before it
    /// committed ([`FsError::MetaStale`]: only on a shared volume), at most [`STALE_TRIES`]
    /// times. Each run reads afresh, so the last one answers from the namespace as it is:
    /// of two hosts creating one name, the second gets `EEXIST`.
    pub(crate) fn retrying<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut pause = Duration::from_micros(500);
        for n in 1.. {
            match op() {
                Err(FsError::MetaStale(why)) if n < STALE_TRIES => {
                    tracing::debug!("namespace change ran into another host's ({why}); again ({n} of {STALE_TRIES})");
                    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                    std::thread::sleep(pause + pause * (nanos % 100) / 100);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => return other,
            }
        }
        unreachable!("the loop returns by its last attempt")
    }

    /// `ns` exclusively: nothing else changes the namespace or pins a node meanwhile.
    fn ns_all(&self) -> NsHold<'_> {
        NsHold { vol: self, all: Some(self.ns.write()), shared: None, stripes: Vec::new() }
    }

    /// What a change of inodes `inos` (and of those it reads later, [`NsHold::take`]) holds:
    /// all of `ns`, or on a shared volume `ns` shared and the inodes' stripes.
    fn ns_for(&self, inos: &[Ino]) -> NsHold<'_> {
        if !self.shared {
            return self.ns_all();
        }
        let mut idx: Vec<usize> = inos.iter().map(|&ino| stripe_of(ino)).collect();
        idx.sort_unstable();
        idx.dedup();
        let shared = Some(self.ns.read());
        let stripes = idx.into_iter().map(|i| (i, self.stripes[i].lock())).collect();
        NsHold { vol: self, all: None, shared, stripes }
    }

    /// Start a namespace transaction on inodes `inos` (those it loads later it locks as it
    /// loads them): takes `ns` ([`Volume::ns_for`]).
    fn txn(&self, inos: &[Ino]) -> Txn<'_> {
        Txn {
            vol: self,
            ns: self.ns_for(inos),
            slots: BTreeMap::new(),
            expect: Vec::new(),
            batch: Vec::new(),
            purged: Vec::new(),
            ghosts: Vec::new(),
            purged_data: Vec::new(),
            before: Vec::new(),
            merge_base: BTreeMap::new(),
            ahead_inodes: HashMap::new(),
            ahead_entries: HashMap::new(),
            fresh: Vec::new(),
            committed: false,
        }
    }
}

/// The inode records a namespace change reads and writes, and the batch it builds.
///
/// Open inodes are edited in place under their node lock, held until commit, so a concurrent
/// write cannot slip a stale size past the change.
struct Txn<'v> {
    vol: &'v Volume,
    ns: NsHold<'v>,
    slots: BTreeMap<Ino, (Slot, bool)>,
    /// A shared volume: what this transaction read (inode records it loaded from the store,
    /// directory entries it looked up), checked unchanged inside the commit's transaction.
    expect: Vec<Mutation>,
    batch: Vec<Mutation>,
    /// Inodes deleted by this transaction: their staging files go after the commit.
    purged: Vec<Ino>,
    /// Directories deleted by this transaction, as last recorded (see `Volume::purged_early`).
    ghosts: Vec<Inode>,
    /// Unlinked inodes still referenced by the kernel whose data this transaction deleted:
    /// their staging files go after the commit too.
    purged_data: Vec<Ino>,
    /// What each open node looked like before this transaction edited it in place.
    before: Vec<(Ino, (Inode, bool))>,
    /// A shared volume: each open node's record as this transaction found it (brought up to
    /// date with the store) and whether its data fields were unwritten; the commit writes
    /// only what the transaction changed in it (`Mutation::MergeInodeFields`).
    merge_base: BTreeMap<Ino, (Inode, bool)>,
    /// A shared volume: records and entries read ahead ([`Txn::read_ahead`]), each taken by
    /// its first read.
    ahead_inodes: HashMap<Ino, Option<Inode>>,
    ahead_entries: HashMap<(Ino, Vec<u8>), Option<crate::types::Dentry>>,
    /// A shared volume: new inodes, numbered from the database's counter: written without a
    /// read of their rows (`Mutation::InsertInode`).
    fresh: Vec<Ino>,
    committed: bool,
}

/// A transaction that fails (or is dropped) before its batch reaches the store leaves no
/// trace in the open nodes it edited: their state goes back to the store's (invariant 1).
impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (ino, before) in self.before.drain(..) {
            if let Some((Slot::Open(g), _)) = self.slots.get_mut(&ino) {
                g.roll_back(before);
            }
        }
    }
}

enum Slot {
    Open(NodeGuard),
    Plain(Inode),
}

impl Slot {
    fn inode(&self) -> &Inode {
        match self {
            Slot::Open(g) => &g.inode,
            Slot::Plain(i) => i,
        }
    }
    fn inode_mut(&mut self) -> &mut Inode {
        match self {
            Slot::Open(g) => &mut g.inode,
            Slot::Plain(i) => i,
        }
    }
}

/// Stripes of a shared volume's inode locks.
const STRIPES: usize = 256;

fn stripe_of(ino: Ino) -> usize {
    (ino % STRIPES as u64) as usize
}

/// What a namespace change (or a pin) holds of `ns`: all of it, or its shared side and the
/// stripes of the inodes it touches (a shared volume: see the module comment).
pub(crate) struct NsHold<'v> {
    vol: &'v Volume,
    all: Option<parking_lot::RwLockWriteGuard<'v, ()>>,
    shared: Option<parking_lot::RwLockReadGuard<'v, ()>>,
    stripes: Vec<(usize, parking_lot::MutexGuard<'v, ()>)>,
}

impl NsHold<'_> {
    /// Hold inode `ino` too: its stripe, waited for when above every stripe held, else
    /// waited for only briefly ([`FsError::MetaStale`] when still busy: the change runs
    /// again, so no two changes wait on each other for ever).
    fn take(&mut self, ino: Ino) -> Result<()> {
        if self.all.is_some() || self.shared.is_none() {
            return Ok(());
        }
        let i = stripe_of(ino);
        if self.stripes.iter().any(|(j, _)| *j == i) {
            return Ok(());
        }
        let guard = if self.stripes.iter().all(|(j, _)| *j < i) {
            self.vol.stripes[i].lock()
        } else {
            let wait = Duration::from_millis(10);
            self.vol.stripes[i].try_lock_for(wait).ok_or_else(|| FsError::MetaStale(format!("inode {ino} is busy on this host")))?
        };
        self.stripes.push((i, guard));
        Ok(())
    }
}

impl<'v> Txn<'v> {
    /// A shared volume: read the records of `inos` and the entries `entries` (parent, name)
    /// that this change reads first, all in one round trip ([`MetaStore::get_together`])
    /// instead of one each. [`Txn::load`] (of an inode not open here) and [`Txn::entry`]
    /// take them from here, and expect them unchanged at commit as they do what they read
    /// themselves, so a read ahead that went stale fails the commit's checks (the change runs
    /// again) like any other.
    fn read_ahead(&mut self, inos: &[Ino], entries: &[(Ino, &[u8])]) -> Result<()> {
        if !self.vol.shared {
            return Ok(());
        }
        let recent = &self.vol.recent;
        let mut inos: Vec<Ino> = inos.iter().copied().filter(|i| !self.slots.contains_key(i)).collect();
        inos.retain(|&ino| match recent.take_dir(ino) {
            Some(dir) => {
                self.ahead_inodes.insert(ino, Some(dir));
                false
            }
            None => true,
        });
        let mut entries: Vec<(Ino, &[u8])> = entries.to_vec();
        entries.retain(|&(parent, name)| match recent.take_name(parent, name) {
            Some(found) => {
                self.ahead_entries.insert((parent, name.to_vec()), found);
                false
            }
            None => true,
        });
        if inos.is_empty() && entries.is_empty() {
            return Ok(());
        }
        let (found, names) = self.vol.meta.get_together(&inos, &entries)?;
        self.ahead_inodes.extend(inos.into_iter().zip(found));
        self.ahead_entries.extend(entries.iter().map(|(p, n)| (*p, n.to_vec())).zip(names));
        Ok(())
    }

    fn load(&mut self, ino: Ino) -> Result<&mut (Slot, bool)> {
        if !self.slots.contains_key(&ino) {
            self.ns.take(ino)?;
            let slot = match self.vol.node_if_open(ino) {
                Some(node) => {
                    let mut g = node.write_arc();
                    self.before.push((ino, g.checkpoint()));
                    if self.vol.shared {
                        // Another host may have changed the record since this one cached it
                        // (a chmod, a rename, a write and close): the change starts from the
                        // stored record (this host's unwritten data fields kept), expects it
                        // unchanged at commit, and writes back only what it changes.
                        let stored = self.vol.meta.get_inode(ino)?.ok_or(FsError::NotFound)?;
                        self.expect.push(Mutation::ExpectInode(ino, Some(stored.clone())));
                        let mut fresh = stored;
                        crate::meta::merge_data_fields(&mut fresh, &g.inode);
                        g.inode = fresh;
                        self.merge_base.insert(ino, (g.inode.clone(), g.attr_dirty));
                    }
                    Slot::Open(g)
                }
                None => {
                    let inode = match self.ahead_inodes.remove(&ino) {
                        Some(found) => found,
                        None => self.vol.meta.get_inode(ino)?,
                    }
                    .ok_or(FsError::NotFound)?;
                    if self.vol.shared {
                        self.expect.push(Mutation::ExpectInode(ino, Some(inode.clone())));
                    }
                    Slot::Plain(inode)
                }
            };
            self.slots.insert(ino, (slot, false));
        }
        Ok(self.slots.get_mut(&ino).expect("just inserted"))
    }

    fn inode(&mut self, ino: Ino) -> Result<&Inode> {
        Ok(self.load(ino)?.0.inode())
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        let slot = self.load(ino)?;
        slot.1 = true;
        Ok(slot.0.inode_mut())
    }

    /// The node state of an open inode taking part in this transaction.
    fn node_mut(&mut self, ino: Ino) -> Result<Option<&mut NodeData>> {
        Ok(match &mut self.load(ino)?.0 {
            Slot::Open(g) => Some(&mut **g),
            Slot::Plain(_) => None,
        })
    }

    /// A new inode. On a shared volume its number came from the database's counter, so no
    /// record has had it: nothing is read to check that (a read of an absent key is what
    /// makes PostgreSQL's `SERIALIZABLE` conflicts between neighbouring creates).
    fn insert_new(&mut self, inode: Inode) {
        if self.vol.shared {
            self.fresh.push(inode.ino);
        }
        self.slots.insert(inode.ino, (Slot::Plain(inode), true));
    }

    fn push(&mut self, m: Mutation) {
        self.batch.push(m);
    }

    /// One link to `ino` went away: keep it as an orphan while referenced, else delete it.
    fn drop_link(&mut self, ino: Ino) -> Result<()> {
        self.drop_link_with(ino, None)
    }

    /// [`Txn::drop_link`] with `ino`'s purge batch already read (an empty directory's:
    /// [`MetaStore::empty_dir_purge_batch`]): a purge reads nothing more.
    fn drop_link_with(&mut self, ino: Ino, mut purge: Option<Vec<Mutation>>) -> Result<()> {
        let inode = self.inode_mut(ino)?;
        inode.nlink = if inode.kind == Kind::Dir { 0 } else { inode.nlink.saturating_sub(1) };
        inode.ctime = crate::types::Timespec::now();
        if inode.nlink > 0 {
            return Ok(());
        }
        let kind = inode.kind;
        // A shared volume: another live host holding the file open keeps it (its data
        // included) as an orphan; the batch expects the open rows it saw (`hosts.rs`).
        let mut remote = false;
        if self.vol.shared && kind == Kind::File {
            // The open rows and what a purge deletes, read in one round trip.
            let (rows, batch) = self.vol.meta.openers_and_purge_batch(ino)?;
            let h = self.vol.holders_of(rows)?;
            self.expect.extend(h.mutations(ino));
            remote = h.others_alive;
            purge = Some(batch);
        }
        // A shared volume frees a file in this transaction when no handle, pin or live host
        // holds it, even while the kernel still has a reference: nothing can reach it by that
        // reference but a request the kernel makes for an open file (which has a handle), and
        // the kernel's FORGET then has nothing to do (`purged_early`). One transaction instead
        // of two (an orphan now, its purge at FORGET). RocksDB volumes keep the orphan until
        // FORGET, as before.
        // A directory likewise when no handle holds it (`opendir`) or pins it: the kernel's
        // questions about a removed working directory, which has no handle, are answered from
        // its last record until its FORGET (`Volume::getattr`); nothing else can reach it (the
        // kernel marks a removed directory dead: no lookup or create in it comes here).
        let held = if self.vol.shared && kind == Kind::File {
            remote || self.vol.nodes.lock().contains_key(&ino)
        } else if self.vol.shared && kind == Kind::Dir {
            self.vol.dir_handles.lock().contains_key(&ino) || self.vol.nodes.lock().contains_key(&ino)
        } else {
            remote || self.vol.is_referenced(ino)
        };
        if held {
            self.push(Mutation::PutOrphan(ino));
            if !remote && !self.vol.has_handles(ino) {
                self.drop_data(ino)?;
            }
            return Ok(());
        }
        let purge = match purge {
            Some(batch) => batch,
            None => self.vol.purge_batch(ino)?,
        };
        self.batch.extend(purge);
        if let Some((slot, _)) = self.slots.remove(&ino) {
            if kind == Kind::Dir && self.vol.shared {
                self.ghosts.push(slot.inode().clone());
            }
        }
        self.purged.push(ino);
        Ok(())
    }

    /// The last name of `ino` went and no open file can reach its data any more: free the
    /// data now (space comes back at `rm`, not at the kernel's FORGET, which may arrive after
    /// the next write), keeping the inode record as an orphan for the kernel's references.
    fn drop_data(&mut self, ino: Ino) -> Result<()> {
        for (block, _) in self.vol.meta.extents(ino, 0)? {
            self.batch.push(Mutation::DelExtent { ino, block });
        }
        if let Some(st) = self.node_mut(ino)? {
            st.extents.get_mut().clear();
        }
        self.purged_data.push(ino);
        Ok(())
    }

    fn commit(mut self, sync: bool) -> Result<()> {
        // The checks go first: a batch whose reads went stale writes nothing.
        let mut batch = std::mem::take(&mut self.expect);
        batch.append(&mut self.batch);
        for (ino, (slot, dirty)) in self.slots.iter_mut() {
            if *dirty {
                let after = slot.inode().clone();
                batch.push(match self.merge_base.remove(ino) {
                    Some((before, data)) => Mutation::MergeInodeFields { before, after, data },
                    None if self.fresh.contains(ino) => Mutation::InsertInode(after),
                    None => Mutation::PutInode(after),
                });
                if let Slot::Open(g) = slot {
                    g.attr_dirty = false;
                }
            }
        }
        self.vol.apply_live(batch, sync)?;
        self.committed = true;
        if self.vol.shared {
            let lookups = self.vol.lookups.lock();
            let mut early = self.vol.purged_early.lock();
            early.extend(self.purged.iter().filter(|&&ino| lookups.contains(ino)).map(|&ino| (ino, None)));
            for dir in self.ghosts.drain(..).filter(|d| lookups.contains(d.ino)) {
                early.insert(dir.ino, Some(dir));
            }
        }
        for ino in self.purged.iter().chain(&self.purged_data) {
            self.vol.staging.remove(*ino)?;
        }
        Ok(())
    }
}

/// A write the disk had no room for (the metadata store's ENOSPC keeps its errno); not
/// [`FsError::NoSpace`], which is also a refusal of ours.
fn disk_full(e: &FsError) -> bool {
    matches!(e, FsError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
}
