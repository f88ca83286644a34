//! Opening a volume: which metadata engine, block store (local, or lazy over the object
//! store) and object store it runs on. Every process that opens a volume (the CLI, a mount,
//! the agent, tests) goes through here.

use crate::control::RemoteSlot;
use crate::error::{typed, NodeResult};
use crate::home::{VolumeConfig, VolumeDir};
use crate::keys;
use anyhow::{Context, Result};
use hybridfs_blocks::FileBlockStore;
use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::worker::Workers;
use hybridfs_core::{Volume, VolumeOptions};
use hybridfs_cloud::CancellationToken;
use hybridfs_meta::{IndexLayout, RocksOptions};
use hybridfs_sync::Remote;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

impl VolumeConfig {
    /// The volume's place in its object store (with its cipher when encrypted).
    pub fn remote(&self) -> NodeResult<Remote> {
        typed(|| self.remote_with(&CancellationToken::new()))
    }

    /// [`VolumeConfig::remote`] whose requests in flight are aborted, and later calls fail,
    /// once `cancel` is cancelled (a mount's store: [`RemoteSlot`], at umount or a signal).
    pub(crate) fn remote_with(&self, cancel: &CancellationToken) -> Result<Remote> {
        let store = hybridfs_cloud::open_with(&self.store, cancel).with_context(|| format!("open the store {}", self.store))?;
        let cipher = keys::volume_cipher(self.key_file.as_deref(), self.key_fingerprint.as_deref())?;
        Ok(Remote::new(store, self.remote_name()).with_cipher(cipher))
    }
}

/// `HYBRIDFS_META_INDEX` (`whole`, `partitioned`, `pinned-l0`, `pinned`): the RocksDB index
/// layout ([`IndexLayout`]) for A/B runs of one build (benches/stat_ab.py); unset or
/// anything else: the default.
fn meta_index_from_env() -> IndexLayout {
    match std::env::var("HYBRIDFS_META_INDEX").as_deref() {
        Ok("whole") => IndexLayout::Whole,
        Ok("partitioned") => IndexLayout::Partitioned,
        Ok("pinned-l0") => IndexLayout::PartitionedPinnedL0,
        Ok("pinned") => IndexLayout::PartitionedPinned,
        _ => IndexLayout::default(),
    }
}

impl VolumeDir {
    /// The volume's metadata: RocksDB in `meta/`, or a shared volume's database (a volume
    /// being made has no `volume.json` yet: RocksDB).
    pub fn open_meta(&self, read_only: bool) -> NodeResult<Arc<MetaStore>> {
        typed(|| {
            if self.config_path().exists() {
                let cfg = self.config()?;
                if let Some(url) = &cfg.meta {
                    return crate::shared::open_meta(url, cfg.meta_timeout_secs.map(Duration::from_secs));
                }
            }
            let opts = RocksOptions { read_only, index: meta_index_from_env(), ..RocksOptions::default() };
            Ok(Arc::new(hybridfs_meta::open(&self.meta_dir(), &opts)?))
        })
    }

    /// The block store: the volume's local block files in front of its object store
    /// ([`hybridfs_sync::lazy::LazyStore`], local first). A clone fetches its data from there;
    /// a home volume holds its own blocks and fetches only blocks it references without a
    /// copy: those a merge took from a branch (only metadata moves at merge time). A home
    /// volume whose store cannot be opened (settings or key missing) serves its local blocks
    /// alone, unless it merged a branch (then it may need the store to read). It fetches
    /// through `remote`, the object store of the volume's process (one per mount, shared with
    /// its control requests); its fetchers report into `workers`.
    pub fn open_blocks(&self, meta: &Arc<MetaStore>, remote: &RemoteSlot, workers: &Arc<Workers>) -> NodeResult<Arc<dyn BlockStore>> {
        self.open_blocks_with(meta, remote, workers, None)
    }

    /// [`VolumeDir::open_blocks`] whose reads wait `read_timeout` for a block from the store
    /// (none: the volume's `read_timeout_secs`, else the lazy store's default).
    pub fn open_blocks_with(&self, meta: &Arc<MetaStore>, remote: &RemoteSlot, workers: &Arc<Workers>, read_timeout: Option<Duration>) -> NodeResult<Arc<dyn BlockStore>> {
        typed(|| -> Result<Arc<dyn BlockStore>> {
            let local = FileBlockStore::open(self.blocks_dir())?;
            let cfg = remote.config();
            let remote = match remote.get() {
                Ok(remote) => Remote::clone(&remote),
                Err(e) if cfg.clone_of.is_none() && meta.meta_value(hybridfs_sync::merge::LOG)?.is_none() => {
                    tracing::warn!("volume {}: the store cannot be opened ({e:#}); serving local blocks only", self.name);
                    return Ok(Arc::new(local));
                }
                Err(e) => return Err(e.into()),
            };
            // One cache of fetched blocks per remote volume, shared by its clones on this node.
            let key = blake3::hash(format!("{}\n{}", cfg.store, cfg.remote_name()).as_bytes()).to_hex();
            let cache_dir = self.dir.parent().and_then(Path::parent).map_or(self.dir.join("cache"), |home| home.join("cache").join(&key[..32]));
            let cache = FileBlockStore::open(cache_dir)?;
            let lazy = hybridfs_sync::lazy::LazyStore::with_workers(local, cache, remote, meta.clone(), cfg.cache_bytes, workers)?;
            // Blocks larger than a part come as parallel ranged GETs (one connection is slow).
            if u64::from(cfg.block_size) > hybridfs_sync::ranged::PART_BYTES {
                lazy.set_part_bytes(hybridfs_sync::ranged::PART_BYTES);
            }
            if let Some(timeout) = read_timeout.or(cfg.read_timeout_secs.map(Duration::from_secs)) {
                lazy.set_read_timeout(timeout);
            }
            Ok(Arc::new(lazy))
        })
    }

    /// Open the volume for serving (caller holds the lock), with its object store: the one
    /// [`RemoteSlot`] its block store fetches through and its control requests use. Its
    /// background work reports into [`Volume::workers`]; stopping them also cancels every
    /// store call.
    pub fn open_volume(&self, seal_delay: Duration) -> NodeResult<(Arc<Volume>, Arc<RemoteSlot>)> {
        self.open_volume_with(seal_delay, None, None, None)
    }

    /// [`VolumeDir::open_volume`] with a read timeout for blocks from the store (a mount's
    /// `--read-timeout`; none: the volume's own) and a `blocks_to_store` mode (a mount's
    /// `--blocks-to-store`; none: the volume's own, else `on-fsync` for a shared volume and
    /// `later` for the others). With `on-fsync`, every seal
    /// (`fsync`, `close`, the sealer, a snapshot) ships its blocks to the store first
    /// ([`crate::ship`]).
    pub fn open_volume_with(
        &self,
        seal_delay: Duration,
        read_timeout: Option<Duration>,
        blocks_to_store: Option<crate::BlocksToStore>,
        host_lease: Option<Duration>,
    ) -> NodeResult<(Arc<Volume>, Arc<RemoteSlot>)> {
        typed(|| {
            let cfg = self.config()?;
            let workers = Workers::new();
            let remote = Arc::new(RemoteSlot::new(cfg.clone(), workers.clone()));
            let opts = VolumeOptions {
                block_size: cfg.block_size,
                staging_dir: self.staging_dir(),
                seal_delay,
                workers: workers.clone(),
                shared: cfg.meta.is_some(),
                host_lease,
                ..VolumeOptions::default()
            };
            let (meta, shared) = match &cfg.meta {
                Some(url) => {
                    let (meta, pg) = crate::shared::open_engine(url, cfg.meta_timeout_secs.map(Duration::from_secs))?;
                    (meta, Some(pg))
                }
                None => (self.open_meta(false)?, None),
            };
            let blocks = self.open_blocks_with(&meta, &remote, &workers, read_timeout)?;
            let vol = Volume::open(meta, blocks, opts)?;
            if let Some(pg) = shared {
                crate::shared::invalidate_on_changes(&pg, &vol)?;
            }
            // Other hosts of a shared volume read its data through the store: by default, its
            // blocks go there before fsync and close() return.
            let default = if cfg.meta.is_some() { crate::BlocksToStore::OnFsync } else { crate::BlocksToStore::Later };
            if blocks_to_store.or(cfg.blocks_to_store).unwrap_or(default) == crate::BlocksToStore::OnFsync {
                vol.ship_blocks_with(Some(Arc::new(crate::ship::StoreShipper::new(remote.clone()))));
            }
            Ok((vol, remote))
        })
    }
}
