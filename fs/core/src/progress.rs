//! Progress of a long operation (a push's upload, a merge's fetch, a clone, `fsck --verify`,
//! gc, a rollback), as the library reports it to whoever draws it (`hybridctl`'s bar or plain
//! lines), through the control socket when the volume is mounted.
//!
//! An operation counts its work in a [`Meter`], which calls the callback at most every
//! [`EVERY`] (throttled here, at the source) and always for the first event and for the
//! last (all done), so a reader sees the total early and `N/N` at the end. Counting costs an
//! add; the clock is read only every [`CHECK_ITEMS`] items or [`CHECK_BYTES`] bytes.
//!
//! # Wire form
//!
//! [`Progress`] crosses the control socket as JSON. `op` and `unit` are left out when empty
//! (a push's upload of blocks: what clients of the first version read), and a client ignores
//! fields it does not know and draws an op it does not know by its name: both ends may be of
//! different ages.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Progress of one operation (or one pass of it), for a progress line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units of work (blocks unless `unit` says otherwise) in all, and done.
    pub blocks_total: u64,
    pub blocks_done: u64,
    /// 0: not known up front (a merge's fetch knows its blocks, not all their sizes).
    pub bytes_total: u64,
    /// Bytes moved or read (for gc: freed).
    pub bytes_done: u64,
    /// What runs: empty for a push's upload, `fetch` (a merge fetching blocks), `clone`,
    /// `pull`, `fsck` (verifying blocks), `gc`, `rollback`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// What `blocks_*` count: empty for blocks, else `records`, `ranges`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
}

impl Progress {
    /// The noun of `blocks_*`.
    pub fn unit(&self) -> &str {
        if self.unit.is_empty() {
            "blocks"
        } else {
            &self.unit
        }
    }

    /// Every unit of work is done.
    pub fn done(&self) -> bool {
        self.blocks_done >= self.blocks_total
    }
}

/// A callback that takes progress events.
pub type OnProgress<'a> = &'a (dyn Fn(&Progress) + Sync);

/// For callers that draw nothing.
pub fn ignore(_: &Progress) {}

/// Events a [`Meter`] sends at most this often (plus the first and the last).
pub const EVERY: Duration = Duration::from_millis(250);
/// Items counted between two readings of the clock...
pub const CHECK_ITEMS: u64 = 64;
/// ... or bytes, whichever comes first.
pub const CHECK_BYTES: u64 = 1 << 20;

/// Counts the progress of one pass of an operation and reports it, throttled.
pub struct Meter<'a> {
    p: Progress,
    on: OnProgress<'a>,
    /// When the last event went out.
    sent: Instant,
    /// Counted since the clock was last read.
    items: u64,
    bytes: u64,
    /// The last event sent was the final one (all done).
    finished: bool,
}

impl<'a> Meter<'a> {
    /// A pass of `op` over `total` units (`unit`: empty for blocks) and `bytes_total` bytes
    /// (0: unknown); the first event (nothing done yet) goes out now.
    pub fn new(op: &str, unit: &str, total: u64, bytes_total: u64, on: OnProgress<'a>) -> Meter<'a> {
        let p = Progress { blocks_total: total, bytes_total, op: op.to_string(), unit: unit.to_string(), ..Default::default() };
        on(&p);
        Meter { p, on, sent: Instant::now(), items: 0, bytes: 0, finished: total == 0 }
    }

    /// `items` more units done, `bytes` more bytes.
    pub fn add(&mut self, items: u64, bytes: u64) {
        self.p.blocks_done += items;
        self.p.bytes_done += bytes;
        self.items += items;
        self.bytes += bytes;
        if self.p.done() {
            // The last event always goes out (once), so the reader sees N/N.
            if !self.finished {
                self.send();
            }
        } else if self.items >= CHECK_ITEMS || self.bytes >= CHECK_BYTES {
            (self.items, self.bytes) = (0, 0);
            if self.sent.elapsed() >= EVERY {
                self.send();
            }
        }
    }

    /// The pass is over: `total` of its units are done (the last event, unless sent).
    pub fn finish(&mut self) {
        if !self.finished {
            self.p.blocks_done = self.p.blocks_total;
            self.send();
        }
    }

    pub fn progress(&self) -> &Progress {
        &self.p
    }

    fn send(&mut self) {
        (self.on)(&self.p);
        self.sent = Instant::now();
        self.finished = self.p.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_meter_sends_the_first_and_the_last_event_and_throttles_the_rest() {
        let seen = Mutex::new(Vec::new());
        let on = |p: &Progress| seen.lock().unwrap().push((p.blocks_done, p.bytes_done));
        let mut m = Meter::new("fsck", "", 10_000, 10_000 * 4096, &on);
        for _ in 0..10_000 {
            m.add(1, 4096);
        }
        m.finish();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.first(), Some(&(0, 0)));
        assert_eq!(seen.last(), Some(&(10_000, 10_000 * 4096)));
        // A fast loop (well under EVERY): nothing in between, and the last only once.
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn a_slow_pass_sends_events_in_between_in_order() {
        let seen = Mutex::new(Vec::new());
        let on = |p: &Progress| seen.lock().unwrap().push(p.blocks_done);
        let mut m = Meter::new("gc", "", 3 * CHECK_ITEMS, 0, &on);
        for _ in 0..3 * CHECK_ITEMS {
            if (m.progress().blocks_done + 1) % CHECK_ITEMS == 0 {
                std::thread::sleep(EVERY);
            }
            m.add(1, 0);
        }
        let seen = seen.into_inner().unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen, vec![0, CHECK_ITEMS, 2 * CHECK_ITEMS, 3 * CHECK_ITEMS]);
    }

    #[test]
    fn an_empty_pass_sends_one_event_and_finish_adds_none() {
        let seen = Mutex::new(0);
        let on = |_: &Progress| *seen.lock().unwrap() += 1;
        let mut m = Meter::new("gc", "", 0, 0, &on);
        m.finish();
        assert_eq!(*seen.lock().unwrap(), 1);
    }

    #[test]
    fn old_events_read_as_a_push_of_blocks_and_new_fields_are_left_out_when_empty() {
        let old: Progress = serde_json::from_str(r#"{"blocks_total":2,"blocks_done":1,"bytes_total":0,"bytes_done":0}"#).unwrap();
        assert_eq!((old.op.as_str(), old.unit()), ("", "blocks"));
        let line = serde_json::to_string(&Progress { blocks_total: 1, op: "fetch".into(), ..Default::default() }).unwrap();
        assert!(!line.contains("unit"), "{line}");
    }
}
