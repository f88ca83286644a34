//! The one place hybridctl draws progress: the library reports [`Progress`] events (a push's
//! upload, a merge's block fetch, a clone or a pull applying layers, `fsck --verify`, gc, a
//! rollback, a prefetch) through the control API's callback (or directly, run here), and this module
//! draws them — an `indicatif` bar on stderr when stderr is a terminal, else plain lines
//! (`pushed 3/8 blocks, …`, `fetched 4/4 blocks, …`, `cloned 4096/9000 records, …`,
//! `verified 12/40 blocks, …`, `collected 3/3 blocks, 1.0 MiB freed …`, `rolled back
//! 500/500 records …`, `prefetched 8/8 blocks, …`) at most one a second plus the first and the last, which scripts and
//! the tests read. Before the first event (and for an operation that reports none) a
//! terminal shows a spinner, anything else nothing. stdout is never touched: `--json` output
//! stays clean.

use crate::fmt::human_bytes;
use hybridfs_node::types::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a plain (non-terminal) progress line may be written.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Draws the progress of one long operation; [`Reporter::finish`] (or drop) clears it.
pub(crate) struct Reporter {
    state: Mutex<State>,
}

struct State {
    start: Instant,
    /// A terminal: the bar (a spinner until the first event).
    bar: Option<ProgressBar>,
    /// Not a terminal: when the last plain line was written.
    plain: Plain,
}

impl Reporter {
    /// For `what` (e.g. `push`, `clone`): a spinner on a terminal, silent otherwise until the
    /// first event.
    pub(crate) fn new(what: &str) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Reporter { state: Mutex::new(State { start: Instant::now(), bar, plain: Plain::default() }) }
    }

    /// One event from the library.
    pub(crate) fn event(&self, p: &Progress) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let secs = s.start.elapsed().as_secs_f64();
        match &s.bar {
            Some(bar) => draw_bar(bar, p),
            None => {
                if let Some(line) = s.plain.line(p, secs) {
                    eprintln!("{line}");
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = &s.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Run `f` (an operation named `what`) with a callback that draws its progress events: a
/// spinner on a terminal until the first.
pub(crate) fn run<T>(what: &str, f: impl FnOnce(&(dyn Fn(&Progress) + Sync)) -> T) -> T {
    let r = Reporter::new(what);
    let out = f(&|p: &Progress| r.event(p));
    r.finish();
    out
}

fn draw_bar(bar: &ProgressBar, p: &Progress) {
    let verb = verb(p);
    // Bytes when the sizes are known up front, else blocks.
    let (len, pos, template) = if p.bytes_total > 0 {
        (p.bytes_total, p.bytes_done, "{msg} [{bar:16}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
    } else {
        (p.blocks_total, p.blocks_done, "{msg} [{bar:16}] ETA {eta}")
    };
    if bar.length() != Some(len) {
        // First event (the spinner becomes a bar), or a new pass (a resumed push's second part).
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
        bar.set_length(len);
    }
    bar.set_position(pos);
    // Kept under 80 columns (a wrapped bar redraws badly): the verb names the operation.
    bar.set_message(format!("{verb} {}/{} {}", p.blocks_done, p.blocks_total, p.unit()));
}

/// What the operation did, for its line: an op this version does not know (a newer mount
/// process) by its own name.
fn verb(p: &Progress) -> &str {
    match p.op.as_str() {
        "" | "push" => "pushed",
        "fetch" => "fetched",
        "clone" => "cloned",
        "pull" => "pulled",
        "fsck" => "verified",
        "gc" => "collected",
        "rollback" => "rolled back",
        "prefetch" => "prefetched",
        other => other,
    }
}

/// Where an operation stands, without rate or ETA (the caller did not see it start): for
/// `status` and `top`, from a worker's last event. `pushed 3/8 blocks, 3.0 MiB of 8.0 MiB`.
pub(crate) fn summary(p: &Progress) -> String {
    let head = format!("{} {}/{} {}", verb(p), p.blocks_done, p.blocks_total, p.unit());
    match (p.bytes_done, p.bytes_total, p.op.as_str()) {
        (_, t, _) if t > 0 => format!("{head}, {} of {}", human_bytes(p.bytes_done), human_bytes(t)),
        (0, _, _) => head,
        (d, _, "gc") => format!("{head}, {} freed", human_bytes(d)),
        (d, _, _) => format!("{head}, {}", human_bytes(d)),
    }
}

/// Plain lines for a log or a script: the first event, then at most one per [`PLAIN_EVERY`],
/// and always the first and the last of each pass (nothing done, all done), so `fetched N/N
/// blocks` is there to read.
#[derive(Default)]
struct Plain {
    last: Option<f64>,
}

impl Plain {
    /// The line to write for `p`, `secs` after the operation began, or None (throttled).
    fn line(&mut self, p: &Progress, secs: f64) -> Option<String> {
        // The first event of a pass (nothing done: a gc's blocks after its ranges) and the
        // last always.
        let edge = p.done() || p.blocks_done == 0;
        let due = self.last.is_none_or(|t| secs - t >= PLAIN_EVERY.as_secs_f64());
        if !(due || edge) {
            return None;
        }
        self.last = Some(secs);
        Some(plain_line(p, secs))
    }
}

/// `pushed 3/8 blocks, 12.0 MiB of 32.0 MiB (4.0 MiB/s, ETA 5s)`.
fn plain_line(p: &Progress, secs: f64) -> String {
    let verb = verb(p);
    let secs = secs.max(0.001);
    if !matches!(p.op.as_str(), "" | "push" | "fetch") {
        return other_line(p, verb, secs);
    }
    let (done, total) = (p.bytes_done, p.bytes_total);
    let rate = done as f64 / secs;
    if total > 0 {
        let eta = if rate > 0.0 { total.saturating_sub(done) as f64 / rate } else { 0.0 };
        format!(
            "{verb} {}/{} blocks, {} of {} ({}/s, ETA {:.0}s)",
            p.blocks_done,
            p.blocks_total,
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64),
            eta
        )
    } else {
        // Sizes not known up front: the ETA goes by blocks.
        let per_block = secs / p.blocks_done.max(1) as f64;
        let eta = p.blocks_total.saturating_sub(p.blocks_done) as f64 * per_block;
        format!("{verb} {}/{} blocks, {} ({}/s, ETA {:.0}s)", p.blocks_done, p.blocks_total, human_bytes(done), human_bytes(rate as u64), eta)
    }
}

/// The line of an operation other than a push's upload or a merge's fetch (whose lines
/// above are kept as they were: scripts read them): its unit, its bytes where it has any
/// (for gc: freed), the ETA by bytes when their total is known, else by units.
/// `cloned 4096/9000 records, 1.0 MiB of 2.2 MiB (512.0 KiB/s, ETA 2s)`,
/// `collected 3/3 blocks, 1.0 MiB freed (ETA 0s)`, `rolled back 10/50 records (ETA 4s)`.
fn other_line(p: &Progress, verb: &str, secs: f64) -> String {
    let (done, total) = (p.bytes_done, p.bytes_total);
    let rate = done as f64 / secs;
    let head = format!("{verb} {}/{} {}", p.blocks_done, p.blocks_total, p.unit());
    if p.blocks_done == 0 && done == 0 {
        // The first line of a pass: what there is to do, no rate or ETA yet.
        return if total > 0 { format!("{head}, {} of {}", human_bytes(0), human_bytes(total)) } else { head };
    }
    if total > 0 {
        let eta = if rate > 0.0 { total.saturating_sub(done) as f64 / rate } else { 0.0 };
        return format!("{head}, {} of {} ({}/s, ETA {eta:.0}s)", human_bytes(done), human_bytes(total), human_bytes(rate as u64));
    }
    let per_unit = secs / p.blocks_done.max(1) as f64;
    let eta = p.blocks_total.saturating_sub(p.blocks_done) as f64 * per_unit;
    match (done, p.op.as_str()) {
        (0, _) => format!("{head} (ETA {eta:.0}s)"),
        (_, "gc") => format!("{head}, {} freed (ETA {eta:.0}s)", human_bytes(done)),
        _ => format!("{head}, {} ({}/s, ETA {eta:.0}s)", human_bytes(done), human_bytes(rate as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(done: u64, total: u64, op: &str) -> Progress {
        Progress { blocks_total: total, blocks_done: done, bytes_total: total * 1024, bytes_done: done * 1024, op: op.into(), ..Default::default() }
    }

    #[test]
    fn a_summary_says_where_an_operation_stands_in_its_own_words() {
        assert_eq!(summary(&ev(3, 8, "")), "pushed 3/8 blocks, 3.0 KiB of 8.0 KiB");
        let gc = Progress { blocks_total: 4, blocks_done: 2, bytes_done: 2048, op: "gc".into(), ..Default::default() };
        assert_eq!(summary(&gc), "collected 2/4 blocks, 2.0 KiB freed");
        let clone = Progress { blocks_total: 90, blocks_done: 0, op: "clone".into(), unit: "records".into(), ..Default::default() };
        assert_eq!(summary(&clone), "cloned 0/90 records");
    }

    #[test]
    fn plain_lines_are_throttled_but_keep_the_first_and_the_last() {
        let mut plain = Plain::default();
        // Events every 0.25 s (what the mount sends at most) over 2.5 s, 10 blocks.
        let lines: Vec<String> = (1..=10).filter_map(|i| plain.line(&ev(i, 10, ""), i as f64 * 0.25)).collect();
        assert_eq!(lines.first().map(|l| l.starts_with("pushed 1/10 blocks, ")), Some(true), "{lines:?}");
        assert_eq!(lines.last().map(|l| l.starts_with("pushed 10/10 blocks, ")), Some(true), "{lines:?}");
        // 0.25 s, then ≥1 s apart (1.25, 2.25), then the last at 2.5 s.
        assert_eq!(lines.len(), 4, "at most one line a second, plus the last: {lines:?}");
    }

    #[test]
    fn a_fetch_says_fetched_and_goes_by_blocks_when_sizes_are_unknown() {
        let mut plain = Plain::default();
        let p = Progress { blocks_total: 4, blocks_done: 4, bytes_total: 0, bytes_done: 4096, op: "fetch".into(), ..Default::default() };
        let line = plain.line(&p, 2.0).expect("the last event is always written");
        assert!(line.starts_with("fetched 4/4 blocks, 4.0 KiB ("), "{line}");
        assert!(line.ends_with("ETA 0s)"), "{line}");
    }

    #[test]
    fn sizes_known_up_front_give_bytes_and_an_eta() {
        let line = plain_line(&ev(2, 8, ""), 2.0);
        assert!(line.starts_with("pushed 2/8 blocks, 2.0 KiB of 8.0 KiB (1.0 KiB/s, ETA 6s)"), "{line}");
    }

    #[test]
    fn a_push_line_is_as_it_was_whether_its_op_is_empty_or_push() {
        assert_eq!(plain_line(&ev(2, 8, ""), 2.0), "pushed 2/8 blocks, 2.0 KiB of 8.0 KiB (1.0 KiB/s, ETA 6s)");
        assert_eq!(plain_line(&ev(2, 8, "push"), 2.0), plain_line(&ev(2, 8, ""), 2.0));
    }

    #[test]
    fn each_operation_names_what_it_did_and_counts_its_own_unit() {
        let clone = Progress { unit: "records".into(), ..ev(4096, 8192, "clone") };
        assert_eq!(plain_line(&clone, 2.0), "cloned 4096/8192 records, 4.0 MiB of 8.0 MiB (2.0 MiB/s, ETA 2s)");
        let pull = Progress { unit: "records".into(), ..ev(1, 1, "pull") };
        assert!(plain_line(&pull, 1.0).starts_with("pulled 1/1 records, "));
        assert!(plain_line(&ev(3, 4, "fsck"), 1.0).starts_with("verified 3/4 blocks, 3.0 KiB of 4.0 KiB"));
        let gc = Progress { blocks_total: 4, blocks_done: 2, bytes_done: 2 << 20, op: "gc".into(), ..Default::default() };
        assert_eq!(plain_line(&gc, 1.0), "collected 2/4 blocks, 2.0 MiB freed (ETA 1s)");
        let ranges = Progress { blocks_total: 2, blocks_done: 1, op: "gc".into(), unit: "ranges".into(), ..Default::default() };
        assert_eq!(plain_line(&ranges, 1.0), "collected 1/2 ranges (ETA 1s)");
        assert!(plain_line(&ev(1, 4, "prefetch"), 1.0).starts_with("prefetched 1/4 blocks, 1.0 KiB of 4.0 KiB"));
        let rollback = Progress { blocks_total: 50, blocks_done: 10, op: "rollback".into(), unit: "records".into(), ..Default::default() };
        assert_eq!(plain_line(&rollback, 1.0), "rolled back 10/50 records (ETA 4s)");
    }

    #[test]
    fn an_operation_this_version_does_not_know_is_drawn_by_its_name() {
        // A newer mount process's event, with a field this version has no use for.
        let p: Progress = serde_json::from_str(r#"{"blocks_total":3,"blocks_done":3,"bytes_total":0,"bytes_done":0,"op":"rebalance","unit":"shards","new":1}"#).unwrap();
        assert_eq!(Plain::default().line(&p, 1.0).as_deref(), Some("rebalance 3/3 shards (ETA 0s)"));
    }

    #[test]
    fn a_second_pass_starts_with_a_line_of_its_own() {
        // gc: its ranges, then its blocks, well within a second.
        let mut plain = Plain::default();
        let ranges = |done| Progress { blocks_total: 1, blocks_done: done, op: "gc".into(), unit: "ranges".into(), ..Default::default() };
        let blocks = |done| Progress { blocks_total: 8, blocks_done: done, op: "gc".into(), ..Default::default() };
        let events = [ranges(0), ranges(1), blocks(0), blocks(4), blocks(8)];
        let lines: Vec<String> = events.iter().enumerate().filter_map(|(i, p)| plain.line(p, 0.1 * i as f64)).collect();
        let heads: Vec<&str> = lines.iter().map(|l| l.split(" (").next().unwrap_or_default()).collect();
        assert_eq!(heads, ["collected 0/1 ranges", "collected 1/1 ranges", "collected 0/8 blocks", "collected 8/8 blocks"], "{lines:?}");
        assert_eq!(lines[2], "collected 0/8 blocks", "nothing done yet: no rate, no ETA");
        assert_eq!(plain_line(&Progress { blocks_total: 2, bytes_total: 2048, op: "clone".into(), unit: "records".into(), ..Default::default() }, 0.5), "cloned 0/2 records, 0 B of 2.0 KiB");
    }
}
