//! Mounting: the FUSE session options and the kernel connection tuning.

use crate::HybridFs;
use fuser::{Config, InitFlags, KernelConfig, MountOption, SessionACL};
use hybridfs_core::Volume;
use std::path::Path;
use std::sync::Arc;

/// Largest read and write request (the kernel's FUSE_MAX_PAGES limit is 1 MiB on 4 KiB pages).
const MAX_IO: u32 = 1 << 20;

#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Shown as the source of the mount (`hybridfs:NAME`).
    pub fs_name: String,
    /// Session threads reading `/dev/fuse`.
    pub threads: usize,
    /// Serve reads of unsealed files by kernel passthrough instead of writeback-caching writes.
    pub passthrough: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig { fs_name: "hybridfs".into(), threads: 4, passthrough: true }
    }
}

/// Mount `vol` at `mountpoint` and serve it until it is unmounted; the volume is flushed
/// (`Volume::shutdown`) before this returns.
pub fn mount(vol: Arc<Volume>, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<()> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(cfg.fs_name.clone()),
        MountOption::Subtype("hybridfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(HybridFs::new(vol.clone(), cfg.passthrough), mountpoint, &config)?;
    // Changes made behind the kernel's back (a merge) invalidate its caches through this.
    crate::kernel_cache::register(&vol, session.notifier());
    let served = session.run();
    crate::kernel_cache::unregister(&vol);
    served
}

/// Ask the kernel for large requests, readdirplus and parallel lookups, and for either
/// passthrough or writeback caching (the kernel allows only one of the two); returns whether
/// passthrough is on.
pub(crate) fn tune(config: &mut KernelConfig, passthrough: bool) -> bool {
    let cache_mode = if passthrough { InitFlags::FUSE_PASSTHROUGH } else { InitFlags::FUSE_WRITEBACK_CACHE };
    let wanted = [
        cache_mode,
        InitFlags::FUSE_PARALLEL_DIROPS,
        // Always readdirplus (no READDIRPLUS_AUTO): attributes come with every listing, so
        // `ls -l`, `du` and `os.walk` + `stat` need no lookup per entry (measured: `du` of
        // 300k files 3.2 s instead of 9.8 s; a bare `find` pays 2.6 s instead of 0.7 s).
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_CACHE_SYMLINKS,
        InitFlags::FUSE_ASYNC_DIO,
    ];
    for flag in wanted {
        if config.add_capabilities(flag).is_err() {
            tracing::info!("kernel lacks FUSE capability {flag:?}");
        }
    }
    let _ = config.set_max_write(MAX_IO);
    let _ = config.set_max_readahead(MAX_IO);
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
    passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) && config.set_max_stack_depth(1).is_ok()
}
