//! `hybridctl top [NAME]`: refreshing rates of a mounted volume, from its counters — the
//! volume's `metrics.json` (bytes read and written, blocks sealed; rewritten by the mount every
//! 2 s) and, when the mount serves Prometheus metrics (`--metrics-addr`, default the config's
//! `mount.metrics_addr`), FUSE requests by kind and block fetches. Each refresh is the
//! difference of two samples over the time between them. Below the rates: the mount's busy
//! workers, with how far a push, merge, gc or prefetch run through the mount has come.

use crate::fmt::human_bytes;
use anyhow::{Context, Result};
use hybridfs_node::{Home, VolumeDir};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BYTES_READ: &str = "hybridfs_bytes_read_total";
const BYTES_WRITTEN: &str = "hybridfs_bytes_written_total";
const BLOCKS_SEALED: &str = "hybridfs_blocks_sealed_total";
const FUSE_REQUESTS: &str = "hybridfs_fuse_requests_total";
/// Passthrough writes never reach the mount as requests: its absorbs of them count instead,
/// as the kind `absorb`.
const PASSTHROUGH_ABSORBS: &str = "hybridfs_passthrough_absorbs_total";
const FETCHES: &str = "hybridfs_block_cache_misses_total";
const FETCH_BYTES: &str = "hybridfs_block_fetch_bytes_total";

/// Counter name (with its labels, as Prometheus writes them) → value.
type Sample = BTreeMap<String, u64>;

/// One refresh: per-second rates over `seconds`.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct Rates {
    pub volume: String,
    pub seconds: f64,
    pub read_bytes_per_sec: f64,
    pub written_bytes_per_sec: f64,
    pub blocks_sealed_per_sec: f64,
    /// FUSE requests per second by kind (`read`, `write`, `lookup`, …), and the mount's
    /// absorbs of passthrough writes as `absorb` (writes by kernel passthrough are no
    /// requests), the busy ones only; absent without a metrics address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<BTreeMap<String, f64>>,
    /// Blocks brought from the block store (the object store, on a clone) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetches_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_bytes_per_sec: Option<f64>,
    /// The mount's busy workers (`control` runs a push, a merge, ...), with their progress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<hybridfs_node::workers::WorkerStatus>,
}

pub fn top(home: &Home, name: Option<&str>, addr: Option<SocketAddr>, interval: f64, once: bool, json: bool) -> Result<ExitCode> {
    let vd = crate::snapcmd::pick_volume(home, name)?;
    let interval = Duration::from_secs_f64(interval.max(0.5));
    let mut prev = sample(&vd, addr)?;
    let mut at = Instant::now();
    let clear = !once && !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        std::thread::sleep(interval);
        let cur = sample(&vd, addr)?;
        let now = Instant::now();
        let mut r = rates(&vd.name, &prev, &cur, now.duration_since(at).as_secs_f64(), addr.is_some());
        r.busy = vd.workers().unwrap_or_default().into_iter().filter(|w| w.busy.is_some()).collect();
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            if clear {
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", render(&r));
        }
        std::io::stdout().flush()?;
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        (prev, at) = (cur, now);
    }
}

/// The counters now: `metrics.json`, plus the Prometheus text at `addr` when given.
fn sample(vd: &VolumeDir, addr: Option<SocketAddr>) -> Result<Sample> {
    let path = vd.metrics_path();
    let bytes = std::fs::read(&path).with_context(|| format!("read {} (is volume {} mounted?)", path.display(), vd.name))?;
    let snap: hybridfs_node::types::MetricsSnapshot = serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
    let mut s: Sample = snap.counters;
    if let Some(addr) = addr {
        s.extend(parse_prometheus(&scrape(addr)?));
    }
    Ok(s)
}

fn scrape(addr: SocketAddr) -> Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect to the mount's metrics at {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text).with_context(|| format!("read the metrics at {addr}"))?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(text))
}

/// The counters (`*_total`) of a Prometheus text page: `name{labels} value` lines.
fn parse_prometheus(text: &str) -> Sample {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| k.split('{').next().is_some_and(|n| n.ends_with("_total")))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()? as u64)))
        .collect()
}

fn rates(volume: &str, prev: &Sample, cur: &Sample, seconds: f64, scraped: bool) -> Rates {
    let secs = seconds.max(0.001);
    // Counters restart at 0 with a new mount: a drop counts from 0.
    let delta = |k: &str| {
        let (a, b) = (prev.get(k).copied().unwrap_or(0), cur.get(k).copied().unwrap_or(0));
        (if b >= a { b - a } else { b }) as f64 / secs
    };
    let ops = scraped.then(|| {
        cur.keys()
            .filter_map(|k| Some((k, k.strip_prefix(FUSE_REQUESTS)?.strip_prefix("{op=\"")?.split('"').next()?)))
            .chain(cur.keys().filter(|k| *k == PASSTHROUGH_ABSORBS).map(|k| (k, "absorb")))
            .map(|(k, op)| (op.to_string(), delta(k)))
            .filter(|(_, r)| *r > 0.0)
            .collect()
    });
    Rates {
        volume: volume.to_string(),
        seconds,
        read_bytes_per_sec: delta(BYTES_READ),
        written_bytes_per_sec: delta(BYTES_WRITTEN),
        blocks_sealed_per_sec: delta(BLOCKS_SEALED),
        ops_per_sec: ops,
        fetches_per_sec: scraped.then(|| delta(FETCHES)),
        fetched_bytes_per_sec: scraped.then(|| delta(FETCH_BYTES)),
        busy: Vec::new(),
    }
}

fn render(r: &Rates) -> String {
    let mut out = format!(
        "volume {} ({:.1}s): read {}/s, written {}/s, {:.1} blocks sealed/s\n",
        r.volume,
        r.seconds,
        human_bytes(r.read_bytes_per_sec as u64),
        human_bytes(r.written_bytes_per_sec as u64),
        r.blocks_sealed_per_sec
    );
    match (&r.ops_per_sec, r.fetches_per_sec, r.fetched_bytes_per_sec) {
        (Some(ops), Some(f), Some(fb)) => {
            let total = ops.values().fold(0.0, |a, b| a + b);
            let mut by: Vec<_> = ops.iter().collect();
            by.sort_by(|a, b| b.1.total_cmp(a.1));
            let kinds: Vec<String> = by.iter().map(|(op, n)| format!("{op} {n:.0}")).collect();
            out += &format!("ops/s {total:.0}: {}\n", if kinds.is_empty() { "idle".into() } else { kinds.join(", ") });
            out += &format!("fetches {f:.1}/s, {}/s\n", human_bytes(fb as u64));
        }
        _ => out += "ops by kind and fetches: give the mount's --metrics-addr (mount.metrics_addr)\n",
    }
    for w in &r.busy {
        out += &format!("{}\n", crate::report::worker_line(w));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE hybridfs_fuse_requests_total counter\n\
        hybridfs_fuse_requests_total{op=\"read\"} 100\n\
        hybridfs_fuse_requests_total{op=\"lookup\"} 7\n\
        hybridfs_block_cache_misses_total 4\n\
        hybridfs_block_fetch_bytes_total 4194304\n\
        hybridfs_block_fetch_seconds_sum 0.5\n";

    #[test]
    fn busy_workers_are_listed_with_their_progress() {
        let p = hybridfs_node::types::Progress { blocks_total: 8, blocks_done: 3, bytes_total: 8 << 20, bytes_done: 3 << 20, ..Default::default() };
        let busy = hybridfs_node::workers::WorkerStatus { name: "control".into(), busy: Some("push".into()), progress: Some(p), ..Default::default() };
        let r = Rates { volume: "v".into(), busy: vec![busy], ..Default::default() };
        let text = render(&r);
        assert!(text.ends_with("control busy: push (pushed 3/8 blocks, 3.0 MiB of 8.0 MiB)\n"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["busy"][0]["progress"]["blocks_done"], 3, "{json}");
        assert!(serde_json::to_value(Rates::default()).unwrap().get("busy").is_none(), "nothing busy: no key");
    }

    #[test]
    fn prometheus_counters_are_read_with_their_labels() {
        let s = parse_prometheus(PAGE);
        assert_eq!(s.get("hybridfs_fuse_requests_total{op=\"read\"}"), Some(&100));
        assert_eq!(s.get(FETCHES), Some(&4));
        assert!(!s.contains_key("hybridfs_block_fetch_seconds_sum"), "only counters: {s:?}");
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let mut prev = parse_prometheus(PAGE);
        prev.insert(BYTES_WRITTEN.into(), 1000);
        let mut cur = parse_prometheus(&PAGE.replace("} 100", "} 300").replace("misses_total 4", "misses_total 8"));
        cur.insert(BYTES_WRITTEN.into(), 5000);
        let r = rates("v", &prev, &cur, 2.0, true);
        assert_eq!(r.written_bytes_per_sec, 2000.0);
        assert_eq!(r.ops_per_sec, Some(BTreeMap::from([("read".to_string(), 100.0)])), "lookup did not move: left out");
        // Passthrough writes show as the mount's absorbs of them.
        prev.insert(PASSTHROUGH_ABSORBS.into(), 2);
        cur.insert(PASSTHROUGH_ABSORBS.into(), 6);
        let ops = rates("v", &prev, &cur, 2.0, true).ops_per_sec.unwrap();
        assert_eq!((ops.get("absorb"), ops.get("read")), (Some(&2.0), Some(&100.0)), "{ops:?}");
        assert_eq!(r.fetches_per_sec, Some(2.0));
        let text = render(&r);
        assert!(text.contains("ops/s 100: read 100") && text.contains("fetches 2.0/s"), "{text}");
        // A remount restarts the counters: no negative rate.
        assert_eq!(rates("v", &cur, &prev, 1.0, false).written_bytes_per_sec, 1000.0);
        assert_eq!(rates("v", &cur, &prev, 1.0, false).ops_per_sec, None);
    }
}
