//! `hybridctl snapshot …`, `diff`, `rollback` and `gc`, and the control socket that carries
//! them to a mount process.
//!
//! A mounted volume's metadata belongs to its mount process, so the CLI sends the request over
//! `volumes/NAME/control.sock` (one JSON line each way) and the mount process runs it; an
//! unmounted volume is opened by the CLI itself. Both paths run the same [`execute`].

use crate::home::{human_bytes, Home, VolumeDir};
use crate::usage;
use anyhow::{bail, Context, Result};
use hybridfs_core::meta::LIVE;
use hybridfs_core::types::SnapshotInfo;
use hybridfs_core::{FsError, Volume};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Longest a request may take in the mount process (sealing a large dirty set, a big gc).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create { name: String },
    Delete { name: String },
    Hold { name: String, by: String, on: bool },
    List,
    Show { name: String },
    Diff { from: String, to: Option<String> },
    Gc { grace_secs: u64 },
    Rollback { name: String },
    /// Publish the live tree to `store` (the volume's store URL) as the next layer of `branch`.
    /// `fork_from`: the volume's own branch, when pushing to another one (see
    /// [`hybridfs_sync::push_with`]).
    Push {
        store: String,
        volume: String,
        branch: String,
        key_file: Option<String>,
        fingerprint: Option<String>,
        #[serde(default)]
        fork_from: Option<String>,
    },
    /// Bring a clone forward to the newest head of its source branch (unmounted only).
    Pull { store: String, volume: String, key_file: Option<String>, fingerprint: Option<String> },
    /// Fetch the data of the files under these volume paths (components from the root).
    Prefetch { paths: Vec<Vec<String>> },
    /// Merge a branch into the volume (in the mount process when mounted: see `mergecmd`).
    Merge(crate::mergecmd::MergeArgs),
    /// Undo merge `id` (None: the newest not undone).
    MergeUndo { id: Option<u64> },
}

/// A failed request: the message and whether it was bad input (exit 2) or a failure (exit 1).
#[derive(Serialize, Deserialize, Debug)]
struct Failure {
    error: String,
    bad_input: bool,
}

fn failure(e: FsError) -> Failure {
    let bad_input = matches!(e, FsError::BadInput(_) | FsError::Invalid(_));
    Failure { error: e.to_string(), bad_input }
}

impl From<FsError> for Failure {
    fn from(e: FsError) -> Self {
        failure(e)
    }
}

impl From<hybridfs_sync::SyncError> for Failure {
    fn from(e: hybridfs_sync::SyncError) -> Self {
        match e {
            hybridfs_sync::SyncError::Volume(e) => failure(e),
            e => Failure { error: e.to_string(), bad_input: false },
        }
    }
}

fn snapshot_json(vol: &Volume, s: &SnapshotInfo) -> Result<Value, FsError> {
    let unique = vol.snapshot_unique_bytes(&s.name)?;
    Ok(json!({
        "id": s.id, "name": s.name, "epoch": s.epoch, "created": s.created,
        "files": s.files, "bytes": s.bytes, "unique_bytes": unique, "holds": s.holds,
    }))
}

fn epoch_of(vol: &Volume, name: &str) -> Result<u64, FsError> {
    Ok(vol.snapshot(name)?.epoch)
}

/// Run one request against an open volume; long ones report progress as they go.
fn execute(vol: &Volume, req: &Request, progress: &(dyn Fn(&Value) + Sync)) -> Result<Value, Failure> {
    match req {
        Request::Create { name } => Ok(serde_json::to_value(vol.snapshot_create(name)?).expect("plain data")),
        Request::Delete { name } => Ok(serde_json::to_value(vol.snapshot_delete(name)?).expect("plain data")),
        Request::Hold { name, by, on } => Ok(serde_json::to_value(vol.snapshot_hold(name, by, *on)?).expect("plain data")),
        Request::List => {
            let list: Result<Vec<Value>, FsError> = vol.snapshots()?.iter().map(|s| snapshot_json(vol, s)).collect();
            Ok(Value::Array(list?))
        }
        Request::Show { name } => Ok(snapshot_json(vol, &vol.snapshot(name)?)?),
        Request::Diff { from, to } => {
            let from_epoch = epoch_of(vol, from)?;
            let to_epoch = match to {
                Some(t) => epoch_of(vol, t)?,
                None => LIVE,
            };
            if to_epoch != LIVE && to_epoch < from_epoch {
                return Err(failure(FsError::BadInput(format!(
                    "snapshot {} is older than {from}: give the older snapshot first",
                    to.as_deref().unwrap_or_default()
                ))));
            }
            let report = hybridfs_core::diff::diff(vol.meta(), from_epoch, to_epoch, vol.block_size())?;
            Ok(serde_json::to_value(report).expect("plain data"))
        }
        Request::Gc { grace_secs } => Ok(serde_json::to_value(vol.collect(Duration::from_secs(*grace_secs))?).expect("plain data")),
        Request::Rollback { name } => Ok(serde_json::to_value(vol.rollback(name)?).expect("plain data")),
        Request::Prefetch { paths } => {
            let started = std::time::Instant::now();
            let mut blocks = 0;
            for path in paths {
                let mut ino = hybridfs_core::types::ROOT_INO;
                for part in path {
                    ino = vol.lookup(ino, part.as_bytes())?.ino;
                }
                blocks += vol.prefetch_tree(ino)?;
            }
            Ok(json!({ "paths": paths.len(), "blocks": blocks, "seconds": started.elapsed().as_secs_f64() }))
        }
        Request::Merge(m) => {
            let remote = remote_for(&m.store, &m.volume, &m.key_file, &m.fingerprint)?;
            Ok(crate::mergecmd::execute(vol, &remote, m)?)
        }
        Request::MergeUndo { id } => Ok(crate::mergecmd::execute_undo(vol, *id)?),
        Request::Pull { store, volume, key_file, fingerprint } => {
            let remote = remote_for(store, volume, key_file, fingerprint)?;
            let report = hybridfs_sync::clone::pull(vol.meta(), &remote)?;
            Ok(serde_json::to_value(report).expect("plain data"))
        }
        Request::Push { store, volume, branch, key_file, fingerprint, fork_from } => {
            let remote = remote_for(store, volume, key_file, fingerprint)?;
            let progress = |p: &hybridfs_sync::Progress| progress(&json!(p));
            let report = hybridfs_sync::push_with(vol, &remote, branch, fork_from.as_deref(), &progress, hybridfs_sync::LAYER_RECORDS)?;
            Ok(serde_json::to_value(report).expect("plain data"))
        }
    }
}

fn remote_for(store: &str, volume: &str, key_file: &Option<String>, fingerprint: &Option<String>) -> Result<hybridfs_sync::Remote, Failure> {
    let store = hybridfs_cloud::open(store).map_err(hybridfs_sync::SyncError::from)?;
    let cipher = hybridfs_sync::crypt::load(key_file.as_deref(), fingerprint.as_deref())
        .map_err(|e| Failure { error: e, bad_input: false })?;
    Ok(hybridfs_sync::Remote::new(store, volume).with_cipher(cipher))
}

/// Serve requests on the volume's control socket until the process exits.
pub fn serve_control(vol: Arc<Volume>, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    // Only the mount's owner (root, usually) may take or delete snapshots.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let vol = vol.clone();
            let _ = std::thread::Builder::new().name("control-req".into()).spawn(move || {
                if let Err(e) = answer(&vol, conn) {
                    tracing::warn!("control request: {e}");
                }
            });
        }
    })?;
    Ok(())
}

fn answer(vol: &Volume, conn: UnixStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => serde_json::to_string(&Failure { error: format!("bad request: {e}"), bad_input: true })?,
        Ok(Request::Rollback { .. } | Request::Pull { .. }) => serde_json::to_string(&Failure {
            error: "the volume is mounted: unmount it first (hybridctl umount MOUNTPOINT); a rollback or a pull changes the tree under running programs".into(),
            bad_input: false,
        })?,
        Ok(req) => {
            // Progress lines, at most a few per second, before the answer.
            let last = std::sync::Mutex::new(std::time::Instant::now() - Duration::from_secs(1));
            let send = |p: &Value| {
                let mut t = last.lock().expect("lock");
                if t.elapsed() >= Duration::from_millis(250) {
                    *t = std::time::Instant::now();
                    let mut w = &conn;
                    let _ = w.write_all(format!("{}\n", json!({ "progress": p })).as_bytes());
                }
            };
            match execute(vol, &req, &send) {
                Ok(v) => serde_json::to_string(&json!({ "ok": v }))?,
                Err(f) => serde_json::to_string(&f)?,
            }
        }
    };
    let mut w = &conn;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")?;
    Ok(())
}

/// A request failed in the volume: exit 1, or 2 for bad input.
fn fail(f: Failure) -> anyhow::Error {
    if f.bad_input { crate::Usage(f.error).into() } else { anyhow::anyhow!(f.error) }
}

/// Send `req` to the mount process of `vd`, or run it here when the volume is not mounted.
pub(crate) fn call(vd: &VolumeDir, req: &Request) -> Result<Value> {
    if let Some(state) = vd.mount_state() {
        let path = vd.control_path();
        let mut conn = UnixStream::connect(&path).with_context(|| {
            format!("reach the mount process (pid {}) of volume {} at {}", state.pid, vd.name, path.display())
        })?;
        conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        conn.write_all(serde_json::to_string(req)?.as_bytes())?;
        conn.write_all(b"\n")?;
        let mut reader = BufReader::new(&conn);
        for _ in 0..10_000_000 {
            let mut line = String::new();
            reader.read_line(&mut line).context("read the mount process's answer")?;
            if line.is_empty() {
                bail!("the mount process (pid {}) closed the connection without answering (did it crash? see {})", state.pid, vd.log_path().display());
            }
            let v: Value = serde_json::from_str(&line).context("parse the mount process's answer")?;
            if let Some(p) = v.get("progress") {
                progress(p);
                continue;
            }
            if let Some(ok) = v.get("ok") {
                end_progress();
                return Ok(ok.clone());
            }
            end_progress();
            let f: Failure = serde_json::from_value(v).context("parse the mount process's answer")?;
            return Err(fail(f));
        }
        bail!("the mount process sent no answer");
    }
    let _lock = vd.lock()?;
    if let Request::Pull { store, volume, key_file, fingerprint } = req {
        // Only the metadata: the volume is not opened while a pull is unfinished.
        let meta = vd.open_meta(false)?;
        let remote = remote_for(store, volume, key_file, fingerprint).map_err(fail)?;
        let report = hybridfs_sync::clone::pull(&meta, &remote).map_err(|e| fail(e.into()))?;
        return Ok(serde_json::to_value(report).expect("plain data"));
    }
    let vol = vd.open_volume(Duration::from_secs(30))?;
    let result = execute(&vol, req, &progress);
    end_progress();
    vol.shutdown().context("flush the volume")?;
    result.map_err(fail)
}

/// One progress line on stderr, redrawn in place when stderr is a terminal.
fn progress(p: &Value) {
    use std::io::IsTerminal;
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    let (done, total) = (p["bytes_done"].as_u64().unwrap_or(0), p["bytes_total"].as_u64().unwrap_or(0));
    let secs = start.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 { (total.saturating_sub(done)) as f64 / rate } else { 0.0 };
    let line = format!(
        "pushed {}/{} blocks, {} of {} ({}/s, ETA {:.0}s)",
        p["blocks_done"], p["blocks_total"], human_bytes(done), human_bytes(total), human_bytes(rate as u64), eta
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}

fn end_progress() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

/// `--volume` or the only volume (or `main`).
pub fn pick_volume(home: &Home, name: Option<&str>) -> Result<VolumeDir> {
    if let Some(n) = name {
        return home.volume(n);
    }
    let all = home.volumes()?;
    match all.len() {
        0 => usage(format!("no volumes in {}: create one with hybridctl format NAME", home.root.display())),
        1 => Ok(all.into_iter().next().expect("one")),
        _ => match all.into_iter().find(|v| v.name == "main") {
            Some(v) => Ok(v),
            None => usage("several volumes exist: choose one with --volume NAME"),
        },
    }
}

fn created(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let age = std::time::SystemTime::now().duration_since(t).unwrap_or_default().as_secs();
    match age {
        0..=119 => format!("{age}s ago"),
        120..=7199 => format!("{}m ago", age / 60),
        7200..=172_799 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_snapshot_row(s: &Value) {
    let holds: Vec<&str> = s["holds"].as_array().map(|a| a.iter().filter_map(|h| h.as_str()).collect()).unwrap_or_default();
    println!(
        "{:<28} {:>10} {:>6} {:>9} {:>10} {:>10}  {}",
        s["name"].as_str().unwrap_or_default(),
        created(s["created"].as_i64().unwrap_or_default()),
        s["epoch"].as_u64().unwrap_or_default(),
        s["files"].as_u64().unwrap_or_default(),
        human_bytes(s["bytes"].as_u64().unwrap_or_default()),
        human_bytes(s["unique_bytes"].as_u64().unwrap_or_default()),
        holds.join(","),
    );
}

const HEADER: &str = "NAME                            CREATED  EPOCH     FILES       SIZE     UNIQUE  HOLDS";

pub fn run(home: &Home, volume: Option<&str>, req: Request, json: bool) -> Result<ExitCode> {
    let vd = pick_volume(home, volume)?;
    let out = call(&vd, &req)?;
    if json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &req {
        Request::Create { name } => println!("snapshot {name} of volume {} taken (epoch {})", vd.name, out["epoch"]),
        Request::Delete { name } => println!("snapshot {name} deleted; its space is reclaimed by the collector (hybridctl gc)"),
        Request::Hold { name, by, on: true } => println!("snapshot {name} held by {by}"),
        Request::Hold { name, by, on: false } => println!("snapshot {name} released by {by}"),
        Request::List => {
            println!("{HEADER}");
            for s in out.as_array().into_iter().flatten() {
                print_snapshot_row(s);
            }
        }
        Request::Show { .. } => {
            println!("{HEADER}");
            print_snapshot_row(&out);
        }
        Request::Diff { .. } => print_diff(&serde_json::from_value(out.clone()).unwrap_or_else(|_| DiffJson::default())),
        Request::Gc { .. } => println!(
            "gc: {} deleted-snapshot ranges, {} records examined, {} old versions removed, {} blocks freed ({}), {} blocks in their grace period",
            out["ranges"],
            out["records_examined"],
            out["versions_removed"],
            out["blocks_freed"],
            human_bytes(out["bytes_freed"].as_u64().unwrap_or_default()),
            out["blocks_waiting"],
        ),
        Request::Rollback { name } => println!(
            "volume {} rolled back to snapshot {name} ({} records restored); the previous state is snapshot {}",
            vd.name, out["records_restored"], out["saved_as"]["name"].as_str().unwrap_or_default()
        ),
        Request::Pull { .. } if out["up_to_date"].as_bool() == Some(true) => {
            println!("volume {} is up to date with branch {} (layer {})", vd.name, out["source"].as_str().unwrap_or_default(), out["to_seq"])
        }
        Request::Pull { .. } => println!(
            "volume {} pulled branch {} from layer {} to {}: {} records",
            vd.name,
            out["source"].as_str().unwrap_or_default(),
            out["from_seq"],
            out["to_seq"],
            out["records"]
        ),
        Request::Merge(_) | Request::MergeUndo { .. } => println!("{out}"),
        Request::Prefetch { .. } => println!(
            "prefetched {} paths: {} blocks are local now ({:.1}s)",
            out["paths"],
            out["blocks"],
            out["seconds"].as_f64().unwrap_or_default()
        ),
        Request::Push { branch, store, .. } if out["up_to_date"].as_bool() == Some(true) => {
            println!("branch {branch} in {store} is up to date (layer {})", out["seq"])
        }
        Request::Push { branch, store, .. } => println!(
            "pushed layer {} of branch {branch} to {store}: {} records, {} blocks uploaded in {} packs and single objects ({}), {} already there, {} requests, {:.1}s{}",
            out["seq"],
            out["records"],
            out["blocks_uploaded"],
            out["packs"],
            human_bytes(out["bytes_uploaded"].as_u64().unwrap_or_default()),
            out["blocks_skipped"],
            out["requests"],
            out["seconds"].as_f64().unwrap_or_default(),
            if out["resumed"].as_bool() == Some(true) { " (resumed an interrupted push)" } else { "" },
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON of a [`DiffReport`], read back for printing.
#[derive(Deserialize, Default)]
struct DiffJson {
    journal_rows: u64,
    entries: Vec<EntryJson>,
}

#[derive(Deserialize)]
struct EntryJson {
    change: String,
    path: String,
    from_path: Option<String>,
    #[serde(default)]
    ranges: Vec<(u64, u64)>,
    #[serde(default)]
    attrs: Vec<String>,
}

fn print_diff(d: &DiffJson) {
    for e in &d.entries {
        let code = match e.change.as_str() {
            "added" => "+",
            "deleted" => "-",
            "renamed" => "R",
            _ => "M",
        };
        match &e.from_path {
            Some(from) => println!("{code} {from} -> {}", e.path),
            None => println!("{code} {}", e.path),
        }
        if !e.ranges.is_empty() || !e.attrs.is_empty() {
            let shown: Vec<String> = e.ranges.iter().take(8).map(|(a, b)| format!("{a}-{b}")).collect();
            let more = if e.ranges.len() > 8 { format!(" (+{} more)", e.ranges.len() - 8) } else { String::new() };
            let bytes: u64 = e.ranges.iter().map(|(a, b)| b - a).sum();
            if !e.ranges.is_empty() {
                println!("    bytes {}{more} ({})", shown.join(","), human_bytes(bytes));
            }
            if !e.attrs.is_empty() {
                println!("    changed: {}", e.attrs.join(", "));
            }
        }
    }
    eprintln!("{} changes ({} journal rows read)", d.entries.len(), d.journal_rows);
}

/// `hybridctl prefetch PATH...`: the mounted volume holding the paths, and each path's
/// components below its mount point.
pub fn prefetch(home: &Home, paths: &[std::path::PathBuf], json: bool) -> Result<ExitCode> {
    let mut target: Option<(VolumeDir, Vec<Vec<String>>)> = None;
    for p in paths {
        let abs = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
        let found = home.volumes()?.into_iter().find_map(|vd| {
            let mp = vd.mount_state()?.mountpoint;
            let rest = abs.strip_prefix(&mp).ok()?.to_path_buf();
            Some((vd, rest))
        });
        let Some((vd, rest)) = found else {
            return usage(format!("{} is not inside a mounted hybridfs volume", p.display()));
        };
        let parts: Vec<String> = rest.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.first().is_some_and(|c| c == ".snapshots") {
            return usage(format!("{}: prefetch live paths, not snapshots", p.display()));
        }
        match &mut target {
            Some((v, list)) if v.name == vd.name => list.push(parts),
            Some((v, _)) => return usage(format!("{} is on volume {}, the others on {}: one volume at a time", p.display(), vd.name, v.name)),
            None => target = Some((vd, vec![parts])),
        }
    }
    let Some((vd, list)) = target else { return usage("name at least one path") };
    run(home, Some(&vd.name), Request::Prefetch { paths: list }, json)
}
