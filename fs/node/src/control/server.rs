//! The server side of the control API: [`serve`] answers on a mount's control socket, one
//! thread per connection; [`execute`] runs a request against an open volume (also used by
//! the client for an unmounted volume).

use super::{ControlError, Envelope, Message, PrefetchReport, Reply, Request, SnapshotRow, PROTOCOL_VERSION};
use crate::dashboard::Dashboard;
use crate::home::VolumeConfig;
use crate::workers::{Handle, Workers};
use anyhow::{Context, Result};
use hybridfs_core::meta::LIVE;
use hybridfs_core::types::SnapshotInfo;
use hybridfs_core::{FsError, Volume};
use hybridfs_sync::merge::MergeRequest;
use hybridfs_cloud::traffic::Purpose;
use hybridfs_cloud::CancellationToken;
use hybridfs_sync::{Progress, Remote};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The volume's object store, opened on first use and then kept (for a mount process: for
/// the life of the mount, shared by its block store's fetchers and its control requests).
/// Opening it fails while the store's settings or key are wrong; the next use tries again.
/// Its calls are cancelled (requests in flight aborted) when the volume's workers stop; one
/// request's calls alone with a [`RemoteSlot::call_token`].
pub struct RemoteSlot {
    cfg: VolumeConfig,
    /// Cancelled when the volume's workers stop.
    cancel: CancellationToken,
    // A std Mutex: held only to clone or set the Arcs, never across store I/O.
    /// The remote as opened, and the same counted as `fetch` (what `get` hands out).
    remote: Mutex<Option<(Arc<Remote>, Arc<Remote>)>>,
}

impl RemoteSlot {
    pub fn new(cfg: VolumeConfig, workers: Arc<Workers>) -> RemoteSlot {
        let cancel = CancellationToken::new();
        let on_stop = cancel.clone();
        workers.on_stop(move || on_stop.cancel());
        RemoteSlot { cfg, cancel, remote: Mutex::new(None) }
    }

    /// A token for one request's store calls: cancelled with the store, or on its own.
    pub fn call_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.cfg
    }

    /// Whether the store was cancelled (the volume's workers stopped: umount, a signal).
    pub fn is_stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The remote, its calls counted as `fetch` (blocks read on demand, checks).
    pub fn get(&self) -> Result<Arc<Remote>, ControlError> {
        self.both().map(|(_, fetch)| fetch)
    }

    /// The remote for one request's work, its calls counted as `purpose`.
    pub fn for_call(&self, cancel: &CancellationToken, purpose: Purpose) -> Result<Remote, ControlError> {
        self.both().map(|(raw, _)| raw.for_call(cancel.clone()).counted(purpose))
    }

    fn both(&self) -> Result<(Arc<Remote>, Arc<Remote>), ControlError> {
        let mut slot = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let remote = self.cfg.remote_with(&self.cancel).map_err(|e| ControlError::Failed(format!("{e:#}")))?;
        let both = (Arc::new(remote.clone()), Arc::new(remote.counted(Purpose::Fetch)));
        *slot = Some(both.clone());
        Ok(both)
    }
}

fn snapshot_row(vol: &Volume, info: SnapshotInfo) -> Result<SnapshotRow, FsError> {
    let unique_bytes = vol.snapshot_unique_bytes(&info.name)?;
    Ok(SnapshotRow { info, unique_bytes })
}

fn diff(vol: &Volume, from: &str, to: Option<&str>) -> Result<Reply, ControlError> {
    let from_epoch = vol.snapshot(from)?.epoch;
    let to_epoch = match to {
        Some(t) => vol.snapshot(t)?.epoch,
        None => LIVE,
    };
    if to_epoch != LIVE && to_epoch < from_epoch {
        let to = to.unwrap_or_default();
        return Err(ControlError::BadInput(format!("snapshot {to} is older than {from}: give the older snapshot first")));
    }
    Ok(Reply::Diff(hybridfs_core::diff::diff(vol.meta(), from_epoch, to_epoch, vol.block_size())?))
}

fn prefetch(vol: &Volume, paths: &[Vec<String>], progress: &(dyn Fn(&Progress) + Sync)) -> Result<Reply, ControlError> {
    let started = Instant::now();
    let mut blocks = 0;
    for path in paths {
        let mut ino = hybridfs_core::types::ROOT_INO;
        for part in path {
            ino = vol.lookup(ino, part.as_bytes())?.ino;
        }
        blocks += vol.prefetch_tree_with(ino, progress)?;
    }
    Ok(Reply::Prefetch(PrefetchReport { paths: paths.len(), blocks, seconds: started.elapsed().as_secs_f64() }))
}

/// Run one request against an open volume; long ones report progress as they go. Its store
/// calls end when `cancel` is cancelled (its client went away).
pub(crate) fn execute(
    vol: &Volume,
    slot: &RemoteSlot,
    req: &Request,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Reply, ControlError> {
    let kernel = || hybridfs_fuse::kernel_cache::of(vol);
    let remote = |purpose| slot.for_call(cancel, purpose);
    Ok(match req {
        Request::SnapshotCreate { name } => Reply::Snapshot(vol.snapshot_create(name)?),
        Request::SnapshotDelete { name } => Reply::Snapshot(vol.snapshot_delete(name)?),
        Request::SnapshotHold { name, by, on } => Reply::Snapshot(vol.snapshot_hold(name, by, *on)?),
        Request::SnapshotList => {
            Reply::Snapshots(vol.snapshots()?.into_iter().map(|s| snapshot_row(vol, s)).collect::<Result<_, FsError>>()?)
        }
        Request::SnapshotShow { name } => Reply::Snapshots(vec![snapshot_row(vol, vol.snapshot(name)?)?]),
        Request::Diff { from, to } => return diff(vol, from, to.as_deref()),
        Request::Gc { grace_secs } => Reply::Gc(vol.collect_with(Duration::from_secs(*grace_secs), progress)?),
        Request::Rollback { name } => Reply::Rollback(vol.rollback_with(name, progress)?),
        Request::Prefetch { paths } => return prefetch(vol, paths, progress),
        Request::Merge(m) => {
            let req = MergeRequest {
                branch: m.branch.clone(),
                policy: m.policy,
                dry_run: m.dry_run,
                confirm: m.confirm,
                max_delete_pct: m.max_delete,
                prefetch: m.prefetch,
            };
            Reply::Merge(hybridfs_sync::merge::merge_with(vol, &remote(Purpose::Merge)?, &req, kernel().as_deref(), progress)?)
        }
        Request::MergeUndo { id } => Reply::Merge(hybridfs_sync::merge::undo(vol, *id, kernel().as_deref())?),
        Request::Pull => Reply::Pull(hybridfs_sync::clone::pull_reporting(vol.meta(), &remote(Purpose::Fetch)?, progress)?),
        Request::Workers => return Err(ControlError::NotMounted),
        Request::Push { branch, fork_from } => {
            let report = hybridfs_sync::push_with(vol, &remote(Purpose::Push)?, branch, fork_from.as_deref(), progress, hybridfs_sync::LAYER_RECORDS)?;
            Reply::Push(report)
        }
    })
}

/// Serve requests on the volume's control socket at `path` until the process exits.
/// Pushes and merges it runs are told to `dashboard`, when the mount has one.
pub fn serve(vol: Arc<Volume>, remote: Arc<RemoteSlot>, workers: Arc<Workers>, path: &Path, dashboard: Option<Arc<Dashboard>>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    // Only the mount's owner (root, usually) may take or delete snapshots.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let status = workers.register("control");
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (vol, remote, workers, status, dashboard) = (vol.clone(), remote.clone(), workers.clone(), status.clone(), dashboard.clone());
            let _ = std::thread::Builder::new().name("control-req".into()).spawn(move || {
                if let Err(e) = answer(&vol, &remote, &workers, &status, conn, dashboard.as_deref()) {
                    tracing::warn!("control request: {e}");
                }
            });
        }
    })?;
    Ok(())
}

fn send(conn: &UnixStream, msg: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_string(msg).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut w = conn;
    w.write_all(line.as_bytes())
}

fn answer(vol: &Volume, remote: &RemoteSlot, workers: &Workers, status: &Handle, conn: UnixStream, dashboard: Option<&Dashboard>) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let result = match serde_json::from_str::<Envelope>(&line) {
        Err(e) => Err(ControlError::BadInput(format!("bad request: {e}"))),
        Ok(env) if env.version != PROTOCOL_VERSION => Err(ControlError::Version { client: env.version, server: PROTOCOL_VERSION }),
        Ok(Envelope { request: Request::Rollback { .. } | Request::Pull, .. }) => Err(ControlError::Mounted),
        Ok(Envelope { request: Request::Workers, .. }) => Ok(Reply::Workers(workers.status())),
        Ok(env) => {
            // Progress lines, at most a few per second, before the answer; the first one of a
            // pass (nothing done yet: it carries the totals) and the last one (every unit
            // done) always, so the client can say a pass began and is complete.
            let last = Mutex::new(Instant::now() - Duration::from_secs(1));
            let progress = |p: &Progress| {
                let mut t = last.lock().unwrap_or_else(|p| p.into_inner());
                if p.blocks_done == 0 || p.done() || t.elapsed() >= Duration::from_millis(250) {
                    *t = Instant::now();
                    // Also for `status` and `top`, which ask the workers.
                    status.progress(p);
                    let _ = send(&conn, &Message::Progress(p.clone()));
                }
            };
            status.busy(env.request.op());
            let cancel = remote.call_token();
            let watch = watch_client(&conn, &cancel);
            let result = execute(vol, remote, &env.request, &cancel, &progress);
            if watch.is_some_and(ClientWatch::done) {
                tracing::info!("control request {}: its client went away; cancelled", env.request.op());
            }
            status.done(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            if let (Some(d), Ok(reply), Request::Push { .. } | Request::Merge(_)) = (dashboard, &result, &env.request) {
                d.record(reply);
            }
            result
        }
    };
    send(&conn, &Message::Done(result))?;
    Ok(())
}

/// Watches a control connection while its request runs: the client sends nothing after its
/// request, so the end of the stream (or an error) means it went away (Ctrl-C of `hybridctl
/// push`), and the request's `cancel` is cancelled.
struct ClientWatch {
    conn: UnixStream,
    thread: std::thread::JoinHandle<()>,
    /// Set by the request when it ended (then the stream's end is ours, not the client's).
    ended: Arc<AtomicBool>,
    /// Set by the watcher when the client went away.
    gone: Arc<AtomicBool>,
}

fn watch_client(conn: &UnixStream, cancel: &CancellationToken) -> Option<ClientWatch> {
    let reader = conn.try_clone().ok()?;
    let conn = conn.try_clone().ok()?;
    let (ended, gone) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (cancel, ended_w, gone_w) = (cancel.clone(), ended.clone(), gone.clone());
    let thread = std::thread::Builder::new()
        .name("control-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            // Bounded: reads time out (the connection's read timeout) and are asked again; a
            // closed stream, or ours shut down when the request ends, ends the loop.
            for _ in 0..1_000_000 {
                match std::io::Read::read(&mut &reader, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {
                        if ended_w.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !ended_w.load(Ordering::SeqCst) {
                gone_w.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
        })
        .ok()?;
    Some(ClientWatch { conn, thread, ended, gone })
}

impl ClientWatch {
    /// The request ended: stop watching. Whether its client had gone away.
    fn done(self) -> bool {
        self.ended.store(true, Ordering::SeqCst);
        let _ = self.conn.shutdown(std::net::Shutdown::Read);
        let _ = self.thread.join();
        self.gone.load(Ordering::SeqCst)
    }
}
