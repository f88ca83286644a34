//! The one place hybridctl draws progress: the library reports [`Progress`] events (a push's
//! upload, a merge's block fetch) through the control API's callback, and this module draws
//! them — an `indicatif` bar on stderr when stderr is a terminal, else plain lines
//! (`pushed 3/8 blocks, …`, `fetched 4/4 blocks, …`) at most one a second plus the last one,
//! which scripts and the tests read. Long operations that report no events (clone, fsck
//! --verify, gc, rollback, pull) get a spinner on a terminal and nothing otherwise. stdout is
//! never touched: `--json` output stays clean.

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

/// Run `f` under a spinner named `what` (on a terminal only).
pub(crate) fn with_spinner<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let r = Reporter::new(what);
    let out = f();
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
    bar.set_message(format!("{verb} {}/{} blocks", p.blocks_done, p.blocks_total));
}

fn verb(p: &Progress) -> &'static str {
    if p.op == "fetch" {
        "fetched"
    } else {
        "pushed"
    }
}

/// Plain lines for a log or a script: the first event, then at most one per [`PLAIN_EVERY`],
/// and always the last (all blocks done), so `fetched N/N blocks` is there to read.
#[derive(Default)]
struct Plain {
    last: Option<f64>,
}

impl Plain {
    /// The line to write for `p`, `secs` after the operation began, or None (throttled).
    fn line(&mut self, p: &Progress, secs: f64) -> Option<String> {
        let done = p.blocks_done >= p.blocks_total;
        let due = self.last.is_none_or(|t| secs - t >= PLAIN_EVERY.as_secs_f64());
        if !(due || done) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(done: u64, total: u64, op: &str) -> Progress {
        Progress { blocks_total: total, blocks_done: done, bytes_total: total * 1024, bytes_done: done * 1024, op: op.into() }
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
        let p = Progress { blocks_total: 4, blocks_done: 4, bytes_total: 0, bytes_done: 4096, op: "fetch".into() };
        let line = plain.line(&p, 2.0).expect("the last event is always written");
        assert!(line.starts_with("fetched 4/4 blocks, 4.0 KiB ("), "{line}");
        assert!(line.ends_with("ETA 0s)"), "{line}");
    }

    #[test]
    fn sizes_known_up_front_give_bytes_and_an_eta() {
        let line = plain_line(&ev(2, 8, ""), 2.0);
        assert!(line.starts_with("pushed 2/8 blocks, 2.0 KiB of 8.0 KiB (1.0 KiB/s, ETA 6s)"), "{line}");
    }
}
