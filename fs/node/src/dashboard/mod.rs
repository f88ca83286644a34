//! `mount --metrics-addr ADDR --dashboard`: the mount's own web page, served by the metrics
//! server ([`crate::metrics_http`]) beside `/metrics`, with the same exposure (bind it to
//! loopback or a trusted network; it only reads, and holds no secret).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /dashboard` | [`PAGE`], embedded in the binary: no external scripts, fonts or styles |
//! | `GET /dashboard/data` | JSON: the volume, counters, the sampled history, this mount's pushes and merges, snapshots, workers |
//!
//! **What it costs the mount.** The page's figures come from what the mount process holds:
//! the volume's counters (atomics), the workers' registry, the snapshot catalogue, and the
//! pushes and merges its control socket ran ([`Dashboard::record`]). Two figures need the
//! metadata: the **unpushed bytes**, exactly as `hybridctl status` counts them but from the
//! journal since the last push and the sizes of the files it names only
//! ([`crate::status::unpushed_per_file`]), and the **unsealed bytes**, from the files that
//! have a staging file only ([`hybridfs_core::Volume::unsealed_bytes`]). Neither reads every
//! inode: their cost follows what changed since the last push, never the size of the volume.
//! Still, a node that wrote much without pushing makes them slower, so a computation that
//! took `t` is not repeated before [`FIGURES_SPACING`]` × t` has passed (at most 1/20 of a
//! core); a sample in between repeats the last figures, and says when they were computed
//! (`figures_at`) and what that took (`figures_took_ms`).
//!
//! **History.** A worker (`dashboard-sampler`) takes a sample every [`INTERVAL`]: the figures
//! above and the write and read rates (the counters' growth over the interval). The last
//! [`KEEP`] samples and [`KEEP_EVENTS`] pushes and merges are kept in memory: the page starts
//! empty after a remount.

use crate::home::VolumeConfig;
use crate::workers::{Next, Workers};
use hybridfs_core::Volume;
use hybridfs_sync::merge::MergeRecord;
use hybridfs_sync::PushReport;
use serde::Serialize;
use serde_json::json;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The page, as served.
pub const PAGE: &str = include_str!("page.html");
/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: an hour at one every [`INTERVAL`].
pub const KEEP: usize = 720;
/// Pushes and merges kept.
pub const KEEP_EVENTS: usize = 100;
/// The unpushed and unsealed figures are recomputed at most once per this many times the
/// last computation took.
pub const FIGURES_SPACING: u32 = 20;

/// One sample of the history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub unpushed_bytes: u64,
    pub unsealed_bytes: u64,
    /// When `unpushed_bytes` and `unsealed_bytes` were computed (Unix seconds).
    pub figures_at: i64,
    pub written_bytes_per_sec: f64,
    pub read_bytes_per_sec: f64,
}

/// A push this mount ran.
#[derive(Debug, Clone, Serialize)]
pub struct PushRow {
    pub at: i64,
    pub branch: String,
    pub seq: u64,
    pub blocks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub up_to_date: bool,
    pub seconds: f64,
}

/// A merge this mount ran.
#[derive(Debug, Clone, Serialize)]
pub struct MergeRow {
    pub at: i64,
    /// 0: a dry run, or nothing to merge (not kept in the merge log).
    pub id: u64,
    pub branch: String,
    pub theirs_seq: u64,
    pub dry_run: bool,
    pub applied: bool,
    pub changes: usize,
    pub conflicts: usize,
}

/// The unpushed and unsealed figures, and what computing them cost.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    unpushed: u64,
    unsealed: u64,
    /// Unix seconds.
    at: i64,
    computed: Option<Instant>,
    took: Duration,
}

impl Figures {
    /// Whether they are due again at `now` (see [`FIGURES_SPACING`]).
    fn due(&self, now: Instant) -> bool {
        self.computed.is_none_or(|c| now.duration_since(c) >= self.took * FIGURES_SPACING)
    }
}

#[derive(Default)]
struct Inner {
    history: VecDeque<Sample>,
    pushes: VecDeque<PushRow>,
    merges: VecDeque<MergeRow>,
    figures: Figures,
    /// Bytes written and read at the last sample, and when.
    last: Option<(Instant, u64, u64)>,
}

/// What the page is about: set once the volume is open.
struct Mounted {
    vol: Weak<Volume>,
    cfg: VolumeConfig,
    mountpoint: PathBuf,
}

/// The dashboard's memory: the mounted volume, the sampled history, pushes and merges.
#[derive(Default)]
pub struct Dashboard {
    mounted: OnceLock<Mounted>,
    inner: Mutex<Inner>,
}

fn bounded<T>(q: &mut VecDeque<T>, max: usize, item: T) {
    if q.len() >= max {
        q.pop_front();
    }
    q.push_back(item);
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        now.saturating_sub(before) as f64 / secs
    } else {
        0.0
    }
}

impl Dashboard {
    pub fn new() -> Dashboard {
        Dashboard::default()
    }

    // A std Mutex: held only to copy or append a few values, never across I/O.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volume is open: the page can show it, and the sampler starts (a worker of the
    /// mount, stopped with the others).
    pub fn attach(self: &Arc<Self>, vol: &Arc<Volume>, cfg: VolumeConfig, mountpoint: PathBuf, workers: &Workers) -> std::io::Result<()> {
        let _ = self.mounted.set(Mounted { vol: Arc::downgrade(vol), cfg, mountpoint });
        let weak = Arc::downgrade(self);
        self.sample(vol).map_err(std::io::Error::other)?;
        workers.spawn("dashboard-sampler", INTERVAL, move |h| {
            let Some(me) = weak.upgrade() else { return Ok(Next::Finish) };
            let Some(vol) = me.volume() else { return Ok(Next::Finish) };
            h.busy("sample");
            me.sample(&vol)?;
            Ok(Next::Continue)
        })
    }

    fn volume(&self) -> Option<Arc<Volume>> {
        self.mounted.get()?.vol.upgrade()
    }

    /// Take one sample now.
    pub fn sample(&self, vol: &Volume) -> Result<(), String> {
        let now = Instant::now();
        let figures = self.lock().figures;
        let figures = if figures.due(now) { self.figures(vol, now)? } else { figures };
        let written = vol.metrics.bytes_written.load(Ordering::Relaxed);
        let read = vol.metrics.bytes_read.load(Ordering::Relaxed);
        let mut d = self.lock();
        let (w, r) = match d.last {
            Some((t, w0, r0)) => {
                let secs = now.duration_since(t).as_secs_f64();
                (per_sec(written, w0, secs), per_sec(read, r0, secs))
            }
            None => (0.0, 0.0),
        };
        d.last = Some((now, written, read));
        d.figures = figures;
        let sample = Sample {
            at: unix_now(),
            unpushed_bytes: figures.unpushed,
            unsealed_bytes: figures.unsealed,
            figures_at: figures.at,
            written_bytes_per_sec: w,
            read_bytes_per_sec: r,
        };
        bounded(&mut d.history, KEEP, sample);
        Ok(())
    }

    /// Compute the unpushed and unsealed bytes (see the module's doc for their cost).
    fn figures(&self, vol: &Volume, now: Instant) -> Result<Figures, String> {
        let Some(m) = self.mounted.get() else { return Ok(Figures::default()) };
        let mut size_of = |ino| match vol.getattr(ino) {
            Ok(i) => Ok(Some(i.size)),
            Err(hybridfs_core::FsError::NotFound) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        let per_file = crate::status::unpushed_per_file(vol.meta(), m.cfg.push_branch(), vol.block_size(), &mut size_of)
            .map_err(|e| format!("count unpushed bytes: {e:#}"))?;
        let unsealed = vol.unsealed_bytes().map_err(|e| format!("count unsealed bytes: {e}"))?;
        Ok(Figures { unpushed: per_file.values().sum(), unsealed, at: unix_now(), computed: Some(now), took: now.elapsed() })
    }

    /// Remember a push or merge the mount's control socket ran.
    pub fn record(&self, reply: &crate::control::Reply) {
        use crate::control::Reply;
        match reply {
            Reply::Push(p) => bounded(&mut self.lock().pushes, KEEP_EVENTS, push_row(p)),
            Reply::Merge(m) => bounded(&mut self.lock().merges, KEEP_EVENTS, merge_row(m)),
            _ => {}
        }
    }

    /// What the page draws; None until the volume is open.
    pub fn data(&self) -> Option<serde_json::Value> {
        let m = self.mounted.get()?;
        let vol = m.vol.upgrade()?;
        let snapshots = vol.snapshots().unwrap_or_else(|e| {
            tracing::warn!("dashboard: list snapshots: {e}");
            Vec::new()
        });
        let c = &vol.metrics;
        let fetch = hybridfs_cloud::traffic::totals().remove("fetch").unwrap_or_default();
        let d = self.lock();
        Some(json!({
            "volume": m.cfg.name,
            "mountpoint": m.mountpoint.display().to_string(),
            "store": m.cfg.store,
            "branch": m.cfg.push_branch(),
            "block_size": m.cfg.block_size,
            "now": unix_now(),
            "interval_secs": INTERVAL.as_secs(),
            "unpushed_bytes": d.figures.unpushed,
            "unsealed_bytes": d.figures.unsealed,
            "figures_at": d.figures.at,
            "figures_took_ms": d.figures.took.as_secs_f64() * 1000.0,
            "counters": {
                "bytes_written": c.bytes_written.load(Ordering::Relaxed),
                "bytes_read": c.bytes_read.load(Ordering::Relaxed),
                "cache_hits": c.cache_hits.load(Ordering::Relaxed),
                "cache_misses": c.cache_misses.load(Ordering::Relaxed),
                "fetched_bytes": c.fetch_bytes.load(Ordering::Relaxed),
                "store_fetch_requests": fetch.requests,
                "store_fetch_bytes": fetch.bytes_received,
            },
            "history": d.history,
            "pushes": d.pushes,
            "merges": d.merges,
            "snapshots": snapshots,
            "workers": vol.workers().status(),
        }))
    }
}

fn push_row(p: &PushReport) -> PushRow {
    PushRow {
        at: unix_now(),
        branch: p.branch.clone(),
        seq: p.seq,
        blocks_uploaded: p.blocks_uploaded,
        bytes_uploaded: p.bytes_uploaded,
        up_to_date: p.up_to_date,
        seconds: p.seconds,
    }
}

fn merge_row(m: &MergeRecord) -> MergeRow {
    MergeRow {
        at: m.at,
        id: m.id,
        branch: m.branch.clone(),
        theirs_seq: m.theirs_seq,
        dry_run: m.dry_run,
        applied: m.applied,
        changes: m.changes.len(),
        conflicts: m.conflicts.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_spaced_by_what_they_cost() {
        let t0 = Instant::now();
        assert!(Figures::default().due(t0), "never computed: due");
        let f = Figures { computed: Some(t0), took: Duration::from_millis(100), ..Figures::default() };
        assert!(!f.due(t0 + Duration::from_secs(1)), "100 ms of work: not again within 2 s");
        assert!(f.due(t0 + Duration::from_secs(2)));
        let cheap = Figures { computed: Some(t0), took: Duration::from_micros(50), ..Figures::default() };
        assert!(cheap.due(t0 + INTERVAL), "cheap figures: every sample");
    }

    #[test]
    fn history_and_events_stay_bounded() {
        let mut q = VecDeque::new();
        for i in 0..(KEEP + 10) {
            bounded(&mut q, KEEP, i);
        }
        assert_eq!(q.len(), KEEP);
        assert_eq!(q.front(), Some(&10), "the oldest go first");
        let d = Dashboard::new();
        let report = PushReport { branch: "main".into(), seq: 3, blocks_uploaded: 2, bytes_uploaded: 9, ..Default::default() };
        for _ in 0..(KEEP_EVENTS + 5) {
            d.record(&crate::control::Reply::Push(report.clone()));
        }
        let pushes = &d.lock().pushes;
        assert_eq!(pushes.len(), KEEP_EVENTS);
        assert_eq!((pushes[0].seq, pushes[0].blocks_uploaded, pushes[0].bytes_uploaded), (3, 2, 9));
    }

    #[test]
    fn rates_never_go_negative() {
        assert_eq!(per_sec(10, 20, 1.0), 0.0, "a counter that went back (remount)");
        assert_eq!(per_sec(30, 10, 2.0), 10.0);
        assert_eq!(per_sec(30, 10, 0.0), 0.0);
    }
}
