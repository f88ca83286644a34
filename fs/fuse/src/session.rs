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
    /// With `passthrough`: writes of files with no sealed block (new files, `O_TRUNC` opens)
    /// go by passthrough too.
    pub passthrough_writes: bool,
    /// Mount read-only (`MS_RDONLY`; the file system answers `EROFS` to every change too).
    pub read_only: bool,
    /// A shared volume (other hosts change it): how long the kernel may trust attributes and
    /// entries ([`crate::HybridFs::shared`]); none: a volume only this process changes.
    pub shared_ttl: Option<std::time::Duration>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig { fs_name: "hybridfs".into(), threads: 4, passthrough: true, passthrough_writes: true, read_only: false, shared_ttl: None }
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
        if cfg.read_only { MountOption::RO } else { MountOption::RW },
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let mut fs = HybridFs::new(vol.clone(), cfg.passthrough, cfg.passthrough_writes, cfg.read_only);
    if let Some(ttl) = cfg.shared_ttl {
        fs = fs.shared(ttl);
    }
    // SAFETY: geteuid has no preconditions.
    let session = if unsafe { libc::geteuid() } == 0 {
        let fd = mount_typed(mountpoint, &cfg.fs_name, cfg.read_only)?;
        fuser::Session::from_fd(fs, fd, SessionACL::All, config)?
    } else {
        fuser::Session::new(fs, mountpoint, &config)?
    };
    // Changes made behind the kernel's back (a merge) invalidate its caches through this.
    crate::kernel_cache::register(&vol, session.notifier());
    let served = session.run();
    crate::kernel_cache::unregister(&vol);
    served
}

/// Mount as root with the type `fuse.hybridfs`, so `/proc/mounts`, `df -t` and `findmnt`
/// name the file system (fuser's own mount(2) says only `fuse`). Returns the `/dev/fuse`
/// descriptor the session serves. Options as [`mount`] sets them: default permissions, open
/// to all users, noatime, devices and setuid honoured; `MS_RDONLY` when `read_only`.
fn mount_typed(mountpoint: &Path, source: &str, read_only: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let c_source = CString::new(source).map_err(invalid)?;
    let c_target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(invalid)?;
    let c_type = CString::new("fuse.hybridfs").expect("no NUL");
    let c_data = CString::new(data).expect("no NUL");
    // SAFETY: every pointer is a valid C string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            libc::MS_NOATIME | if read_only { libc::MS_RDONLY } else { 0 },
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("mount {} (fuse.hybridfs): {e}", mountpoint.display())));
    }
    Ok(OwnedFd::from(dev))
}

/// Ask the kernel for large requests, readdirplus and parallel lookups, and for either
/// passthrough or writeback caching (the kernel allows only one of the two); returns whether
/// passthrough is on. With `passthrough_writes`, `O_TRUNC` comes with the open
/// (FUSE_ATOMIC_O_TRUNC), so that the file can be emptied before its I/O mode is chosen.
pub(crate) fn tune(config: &mut KernelConfig, passthrough: bool, passthrough_writes: bool) -> bool {
    let cache_mode = if passthrough { InitFlags::FUSE_PASSTHROUGH } else { InitFlags::FUSE_WRITEBACK_CACHE };
    if passthrough && passthrough_writes && config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC).is_err() {
        tracing::info!("kernel lacks FUSE capability FUSE_ATOMIC_O_TRUNC");
    }
    let wanted = [
        cache_mode,
        InitFlags::FUSE_PARALLEL_DIROPS,
        // Always readdirplus (no READDIRPLUS_AUTO): attributes come with every listing, so
        // `ls -l`, `du` and `os.walk` + `stat` need no lookup per entry (measured: `du` of
        // 300k files 3.2 s instead of 9.8 s; a bare `find` pays 2.6 s instead of 0.7 s).
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_CACHE_SYMLINKS,
        InitFlags::FUSE_ASYNC_DIO,
        // We clear set-user/group-ID and capabilities on write and truncate (`KillPriv`, and
        // `Volume::setattr` for a new size); the kernel then marks files it found with
        // neither (`S_NOSEC`) and no longer asks for `security.capability` before each write:
        // without it, 10,600 of an untar's 42,757 requests (2,090 files).
        InitFlags::FUSE_HANDLE_KILLPRIV_V2,
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
