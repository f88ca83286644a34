//! The mount lifecycle: serve a volume through FUSE in this process until it is unmounted
//! ([`mount_foreground`]), or start a process that does and wait until the mount answers
//! ([`mount_daemon`]); and [`umount`].
//!
//! A mount process owns its volume (the lock) and, for the life of the mount, the background
//! work around it: the sealer, the collector, the metrics writer and server (with the
//! dashboard, [`crate::dashboard`], when asked), the control socket (crate::control) and the
//! store check. The named workers (sealer, fetchers,
//! uploaders, collector, metrics writer, control) share the volume's registry
//! ([`Volume::workers`]); when the session ends they are stopped, which also cancels the
//! mount's object stores: a request in flight (a push's upload, a fetch) is aborted.

use crate::error::{bad_input, typed, NodeResult};
use crate::control::RemoteSlot;
use crate::home::{pid_alive, Home, MountState, VolumeDir};
use crate::workers::{Next, Workers};
use hybridfs_core::Volume;
use std::sync::Arc;
use anyhow::{bail, Context, Result};
use hybridfs_fuse::MountConfig;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `mount -d` waits for the mount to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);


/// Check the mount point; clean up a dead hybridfs mount left by a killed process.
fn prepare_mountpoint(mp: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(mp).with_context(|| format!("resolve {}", mp.display()))?;
    if is_dead_mount(&abs) {
        detach_stale(&abs)?;
    }
    let meta = match std::fs::metadata(&abs) {
        Ok(m) => m,
        Err(_) => return bad_input(format!("mount point {} does not exist", mp.display())),
    };
    if !meta.is_dir() {
        return bad_input(format!("mount point {} is not a directory", mp.display()));
    }
    let mp = abs.canonicalize().with_context(|| format!("resolve {}", mp.display()))?;
    if let Some((fstype, source)) = mount_type(&mp) {
        bail!("mount point {} is busy: {source} ({fstype}) is mounted there", mp.display());
    }
    Ok(mp)
}

/// A FUSE mount whose process is gone answers every request with ENOTCONN. `statfs` always
/// asks (a `stat` of the root may be answered from the kernel's attribute cache).
fn is_dead_mount(mp: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statvfs fills a zeroed struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

fn detach_stale(mp: &Path) -> Result<()> {
    if !is_hybridfs_mount(mp) {
        bail!("mount point {} is not answering, and it is not a hybridfs mount", mp.display());
    }
    tracing::warn!("{}: the previous mount process is gone; detaching the dead mount", mp.display());
    lazy_umount(mp)
}

fn lazy_umount(mp: &Path) -> Result<()> {
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        bail!("detach {}: {}", mp.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// How to serve a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE session threads.
    pub threads: usize,
    /// Serve reads of files not yet sealed by kernel passthrough (else: writeback cache).
    pub passthrough: bool,
    /// With `passthrough`: writes of files with no sealed block (new files, `O_TRUNC` opens)
    /// go by kernel passthrough straight into their staging files.
    pub passthrough_writes: bool,
    /// Seconds a closed file stays untouched before its data is sealed.
    pub seal_delay: u64,
    /// Seconds a read waits for a block from the object store [default: the volume's
    /// `read_timeout_secs`, else 30].
    pub read_timeout: Option<u64>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the mount's web page at `http://ADDR/dashboard` (needs `metrics_addr`).
    pub dashboard: bool,
    /// Mount read-only (`MS_RDONLY`; every change is `EROFS`).
    pub read_only: bool,
    /// When written data goes to the object store [default: the volume's `blocks_to_store`,
    /// else on-fsync for a shared volume, later for the others]: `OnFsync` makes `fsync` and `close()` upload the file's new blocks first.
    pub blocks_to_store: Option<crate::BlocksToStore>,
    /// A shared volume: seconds this host's lease lasts without renewal (a host silent that
    /// long is dead: what it held open is free) [default: 60].
    pub host_lease: Option<u64>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            passthrough: true,
            passthrough_writes: true,
            seal_delay: 30,
            read_timeout: None,
            metrics_addr: None,
            dashboard: false,
            read_only: false,
            blocks_to_store: None,
            host_lease: None,
        }
    }
}

/// A mount started in the background.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub pid: u32,
    pub mountpoint: PathBuf,
}

/// Start a mount process and return once the mount answers. `program` is a binary that
/// takes `--home HOME mount NAME MOUNTPOINT [flags]` and serves the mount in the foreground
/// (hybridctl; the CLI passes itself). Its output goes to the volume's `mount.log`.
pub fn mount_daemon(home: &Home, name: &str, mp: &Path, opts: &MountOptions, program: &Path) -> NodeResult<Daemon> {
    typed(|| {
        let vd = home.volume(name)?;
        vd.config()?;
        let mp = prepare_mountpoint(mp)?;
        drop(vd.lock()?);
        spawn_daemon(home, &vd, &mp, opts, program)
    })
}

/// Serve volume `name` at `mp` in this process until it is unmounted (or SIGINT, SIGTERM,
/// SIGHUP); everything is flushed when it returns. Under systemd (`Type=notify`,
/// `$NOTIFY_SOCKET` set) it says `READY=1` once the mount answers and `STOPPING=1` when the
/// session ends, before the flush ([`crate::notify`]).
pub fn mount_foreground(home: &Home, name: &str, mp: &Path, opts: &MountOptions) -> NodeResult<()> {
    typed(|| {
        let vd = home.volume(name)?;
        let cfg = vd.config()?;
        let shared_ttl = cfg.meta.as_ref().map(|_| cfg.meta_cache_ttl_ms.map_or(hybridfs_fuse::SHARED_TTL, Duration::from_millis));
        let mp = prepare_mountpoint(mp)?;
        let dashboard = dashboard_of(opts)?;
        // Before any thread starts (RocksDB's, the sealer), so that every thread inherits the mask.
        let signals = block_termination_signals()?;
        let _lock = vd.lock()?;
        if let Some(addr) = opts.metrics_addr {
            crate::metrics_http::serve(addr, dashboard.clone())?;
        }
        // The volume with its object store, kept for the life of the mount.
        let (vol, remote) = vd.open_volume_with(
            Duration::from_secs(opts.seal_delay),
            opts.read_timeout.map(Duration::from_secs),
            opts.blocks_to_store,
            opts.host_lease.map(Duration::from_secs),
        )?;
        vol.start_sealer()?;
        let state = MountState { mountpoint: mp.clone(), pid: std::process::id() };
        std::fs::write(vd.mount_state_path(), serde_json::to_vec(&state)?)?;
        spawn_readahead_tuner(mp.clone());
        crate::notify::spawn_ready_when_mounted(mp.clone(), format!("serving volume {name} at {}", mp.display()));
        spawn_signal_handler(mp.clone(), signals)?;
        // The mount's background work; stopped (and waited for) when the session ends.
        let workers = vol.workers().clone();
        spawn_metrics_writer(&workers, &vol, vd.metrics_path())?;
        crate::control::serve(vol.clone(), remote.clone(), workers.clone(), &vd.control_path(), dashboard.clone())?;
        if let Some(d) = &dashboard {
            d.attach(&vol, cfg, mp.clone(), &workers)?;
        }
        spawn_collector(&workers, &vol)?;
        spawn_store_check(remote);
        let cfg = MountConfig {
            fs_name: format!("hybridfs:{name}"),
            threads: opts.threads,
            passthrough: opts.passthrough,
            // Never on a shared volume (other hosts learn of a file's writes only through
            // the mount: with `blocks_to_store = on-fsync` the volume refuses them anyway).
            passthrough_writes: opts.passthrough_writes && shared_ttl.is_none() && !opts.read_only,
            read_only: opts.read_only,
            shared_ttl,
        };
        tracing::info!("serving volume {name} at {}", mp.display());
        let served = hybridfs_fuse::mount(vol.clone(), &mp, &cfg);
        crate::notify::notify(&format!("STOPPING=1\nSTATUS=unmounted from {}; flushing", mp.display()));
        workers.stop();
        write_metrics(&vol, &vd.metrics_path());
        let _ = std::fs::remove_file(vd.mount_state_path());
        let _ = std::fs::remove_file(vd.control_path());
        served.with_context(|| format!("mount {name} at {}", mp.display()))?;
        // Nothing unsealed is lost (invariant 1): say what stays staged instead of "flushed".
        match vol.unsealed().and_then(|u| Ok((u, vol.no_room_for(u.bytes)?))) {
            Ok((u, _)) if u.files == 0 => tracing::info!("volume {name} unmounted from {}; everything flushed", mp.display()),
            Ok((u, full)) => tracing::warn!("volume {name} unmounted from {}; {}", mp.display(), crate::status::unsealed_line(u, full)),
            Err(e) => tracing::warn!("volume {name} unmounted from {}; counting what is left unsealed failed: {e}", mp.display()),
        }
        Ok(())
    })
}

/// The mount's dashboard, if asked for: it is served on the metrics address, so it needs one.
fn dashboard_of(opts: &MountOptions) -> Result<Option<Arc<crate::dashboard::Dashboard>>> {
    match (opts.dashboard, opts.metrics_addr) {
        (false, _) => Ok(None),
        (true, None) => bad_input("mount.dashboard (--dashboard) needs mount.metrics_addr (--metrics-addr): the page is served there"),
        (true, Some(_)) => Ok(Some(Arc::new(crate::dashboard::Dashboard::new()))),
    }
}

/// Say in the mount log whether the volume's store answers: the mount never waits for it
/// (local first), but an unreachable store shows now, not at the first push or cold read.
fn spawn_store_check(remote: Arc<RemoteSlot>) {
    let _ = std::thread::Builder::new().name("store-check".into()).spawn(move || {
        let cfg = remote.config();
        let result = remote.get().map_err(anyhow::Error::from).and_then(|r| r.head(cfg.push_branch()).map_err(anyhow::Error::from));
        match result {
            Ok(_) => tracing::info!(store = %cfg.store, "the store answers"),
            Err(e) => tracing::warn!(
                store = %cfg.store,
                "the store is unreachable now ({e:#}): the volume works locally; push, clone and reads of data not on this node need it"
            ),
        }
    });
}

/// Start `hybridctl mount` in the background and wait until the mount answers.
fn spawn_daemon(home: &Home, vd: &VolumeDir, mp: &Path, flags: &MountOptions, program: &Path) -> Result<Daemon> {
    rotate_log(&vd.log_path());
    let log = std::fs::OpenOptions::new().create(true).append(true).open(vd.log_path())?;
    let mut cmd = Command::new(program);
    cmd.arg("--home").arg(&home.root).arg("mount").arg(&vd.name).arg(mp);
    cmd.arg("--threads").arg(flags.threads.to_string()).arg("--seal-delay").arg(flags.seal_delay.to_string());
    if !flags.passthrough {
        cmd.arg("--writeback-cache");
    }
    cmd.arg("--passthrough-writes").arg(flags.passthrough_writes.to_string());
    if let Some(secs) = flags.read_timeout {
        cmd.arg("--read-timeout").arg(secs.to_string());
    }
    if let Some(addr) = flags.metrics_addr {
        cmd.arg("--metrics-addr").arg(addr.to_string());
    }
    if flags.dashboard {
        cmd.arg("--dashboard");
    }
    if flags.read_only {
        cmd.arg("--read-only");
    }
    if let Some(mode) = flags.blocks_to_store {
        cmd.arg("--blocks-to-store").arg(mode.as_str());
    }
    if let Some(secs) = flags.host_lease {
        cmd.arg("--host-lease").arg(secs.to_string());
    }
    // Readiness is this process's to say (it returns once the mount answers), not the child's:
    // systemd takes notifications only from a unit's main process.
    cmd.env_remove(crate::notify::SOCKET_ENV);
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so it outlives us.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount process")?;
    let start = Instant::now();
    while start.elapsed() < READY_TIMEOUT {
        if let Some(status) = child.try_wait()? {
            bail!("the mount process exited ({status}): {}", log_tail(&vd.log_path()));
        }
        if is_hybridfs_mount(mp) && std::fs::metadata(mp).is_ok() {
            return Ok(Daemon { pid: child.id(), mountpoint: mp.to_path_buf() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!("the mount did not answer within {}s: {}", READY_TIMEOUT.as_secs(), log_tail(&vd.log_path()))
}

/// A mount log past this size is moved to `mount.log.1` (replacing the one before) when the
/// next mount starts, so logs of long-lived volumes stay bounded at two files.
const LOG_ROTATE_BYTES: u64 = 64 << 20;

fn rotate_log(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let old = path.with_extension("log.1");
        if let Err(e) = std::fs::rename(path, &old) {
            tracing::warn!("rotate {} to {}: {e}", path.display(), old.display());
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// SIGINT, SIGTERM and SIGHUP unmount the volume (lazily, so open files finish first); the
/// session then ends and the volume is flushed as on `hybridctl umount`. The signals are
/// blocked in every thread (threads inherit the mask of the thread that starts them) and
/// taken by one `sigwait`.
fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("block termination signals: {}", std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

fn spawn_signal_handler(mp: PathBuf, set: libc::sigset_t) -> Result<()> {
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut sig = 0;
        // SAFETY: sigwait on a set blocked in this thread.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            tracing::info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = lazy_umount(&mp) {
                tracing::error!("unmount on signal {sig}: {e}");
            }
        }
    })?;
    Ok(())
}

/// Every 2 s, the volume's counters go to `metrics.json` (for `hybridctl status`).
fn spawn_metrics_writer(workers: &Workers, vol: &Arc<Volume>, path: PathBuf) -> Result<()> {
    write_metrics(vol, &path);
    let weak = Arc::downgrade(vol);
    workers.spawn("metrics-writer", Duration::from_secs(2), move |_| {
        let Some(vol) = weak.upgrade() else { return Ok(Next::Finish) };
        write_metrics(&vol, &path);
        Ok(Next::Continue)
    })?;
    Ok(())
}

fn write_metrics(vol: &hybridfs_core::Volume, path: &Path) {
    let tmp = path.with_extension("json.tmp");
    let mut snapshot = vol.metrics.snapshot();
    // What grows with the volume: the kernel's references, the metadata engine's memory.
    let (refs, refs_bytes) = vol.kernel_refs();
    snapshot.counters.insert("kernel_refs".into(), refs);
    snapshot.counters.insert("kernel_refs_bytes".into(), refs_bytes);
    for (part, bytes) in vol.meta().engine_memory() {
        snapshot.counters.insert(format!("meta_mem_{part}_bytes"), bytes);
    }
    // This process's object-store traffic (pushes and merges it ran, blocks it fetched).
    for (purpose, t) in hybridfs_cloud::traffic::totals() {
        snapshot.counters.insert(format!("store_{purpose}_requests"), t.requests);
        snapshot.counters.insert(format!("store_{purpose}_bytes_sent"), t.bytes_sent);
        snapshot.counters.insert(format!("store_{purpose}_bytes_received"), t.bytes_received);
    }
    let write = serde_json::to_vec_pretty(&snapshot)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = write {
        tracing::warn!("write {}: {e}", path.display());
    }
}

/// Every 30 s, reclaim what deleted snapshots and deleted files left (blocks unreferenced for
/// more than 60 s); `hybridctl gc` runs the same pass on demand.
fn spawn_collector(workers: &Workers, vol: &Arc<Volume>) -> Result<()> {
    let weak = Arc::downgrade(vol);
    workers.spawn("collector", Duration::from_secs(30), move |h| {
        let Some(vol) = weak.upgrade() else { return Ok(Next::Finish) };
        h.busy("collect");
        let r = vol.collect(Duration::from_secs(60)).map_err(|e| e.to_string())?;
        if r.blocks_freed > 0 || r.versions_removed > 0 {
            tracing::info!("collector: {} versions removed, {} blocks freed", r.versions_removed, r.blocks_freed)
        }
        Ok(Next::Continue)
    })?;
    Ok(())
}

/// Raise the kernel readahead of the new mount to match our 1 MiB requests.
fn spawn_readahead_tuner(mp: PathBuf) {
    std::thread::spawn(move || {
        for _ in 0..200 {
            if is_hybridfs_mount(&mp) {
                if let Ok(meta) = std::fs::metadata(&mp) {
                    use std::os::unix::fs::MetadataExt;
                    let dev = meta.dev();
                    let (maj, min) = (libc::major(dev), libc::minor(dev));
                    let path = format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb");
                    if let Err(e) = std::fs::write(&path, "4096") {
                        tracing::info!("set readahead via {path}: {e}");
                    }
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    });
}

/// Unmount `mp` and wait (up to `timeout` seconds) until its mount process has flushed
/// everything and exited. Returns the mount point as resolved, and a line saying what the
/// mount left unsealed, if anything ([`VolumeDir::unsealed_note`]: a disk too full to seal;
/// the data stays in staging, durable, and is sealed at the next mount).
pub fn umount(home: &Home, mp: &Path, timeout: u64) -> NodeResult<(PathBuf, Option<String>)> {
    typed(|| {
        let mp = match mp.canonicalize() {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => mp.to_path_buf(),
            Err(_) => return bad_input(format!("{} does not exist", mp.display())),
        };
        if mount_type(&mp).is_none() {
            bail!("{} is not mounted", mp.display());
        }
        let owner = home.volumes()?.into_iter().find_map(|vd| vd.mount_state().filter(|s| s.mountpoint == mp).map(|s| (vd, s)));
        let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
        if let Err(e) = umount_retrying_busy(&c) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                lazy_umount(&mp)?;
            } else {
                bail!("unmount {}: {e}", mp.display());
            }
        }
        if let Some((vd, state)) = owner {
            // Gone means the volume's lock is free too: a process whose main thread is a
            // zombie may still have threads exiting that hold its files (the lock, RocksDB's:
            // asked for itself, as the volume's lock may be let go before the process ends).
            let start = Instant::now();
            while pid_alive(state.pid) || vd.lock().is_err() || meta_locked(&vd.meta_dir()) {
                if start.elapsed() > Duration::from_secs(timeout) {
                    bail!("unmounted {}, but mount process {} is still flushing after {timeout}s", mp.display(), state.pid);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Read-only, after the process ended: a failure to count only loses the note.
            let note = vd.unsealed_note().unwrap_or_else(|e| Some(format!("could not count what is left unsealed: {e}")));
            return Ok((mp, note));
        }
        Ok((mp, None))
    })
}

/// Whether a process holds RocksDB's lock on the metadata in `meta` (its `LOCK` file, an
/// `fcntl` record lock, asked with `F_GETLK`); no such file (another engine): no.
fn meta_locked(meta: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(meta.join("LOCK")) else { return false };
    // SAFETY: a zeroed `flock` is a valid value; F_GETLK only writes into it.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    (unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) }) == 0 && probe.l_type != libc::F_UNLCK as libc::c_short
}

/// How long `umount` tries again while the kernel says the mount is busy.
const UMOUNT_BUSY_RETRY: Duration = Duration::from_secs(5);

/// `umount2(mp)`, tried again for up to [`UMOUNT_BUSY_RETRY`] while it fails with `EBUSY`: a
/// file just closed may still be held for a moment (by a process exiting, or a descriptor a
/// parallel fork inherited until its exec); a mount still busy after that is reported.
fn umount_retrying_busy(mp: &std::ffi::CStr) -> std::io::Result<()> {
    let start = Instant::now();
    loop {
        // SAFETY: umount2 with a valid C string.
        if unsafe { libc::umount2(mp.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || start.elapsed() >= UMOUNT_BUSY_RETRY {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `path` is a hybridfs mount (its source is `hybridfs:NAME`).
pub fn is_hybridfs_mount(path: &Path) -> bool {
    mount_type(path).is_some_and(|(fstype, source)| fstype.starts_with("fuse") && source.starts_with("hybridfs"))
}

/// Whether `path` is in this process's mount table: (file system type, source).
pub fn mount_type(path: &Path) -> Option<(String, String)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mp = fields.get(4)?.replace("\\040", " ");
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?.to_string();
        let source = fields.get(sep + 2)?.to_string();
        (mp == want).then_some((fstype, source))
    })
}

