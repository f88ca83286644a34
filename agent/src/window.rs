//! Daily windows in a time zone: the burst window (08:00-17:00) and the merge window
//! (17:30-07:30, across midnight).
//!
//! A window is two wall-clock times and a zone, so it follows daylight saving time: 08:00 in
//! Europe/Berlin is 07:00 UTC in winter and 06:00 UTC in summer. A wall-clock time that does
//! not exist on a given day (skipped by a DST jump) maps to the instant just after the gap,
//! one that happens twice to the first (jiff's "compatible" rule). `start == end` means all day.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone)]
pub struct DailyWindow {
    pub start: Time,
    pub end: Time,
    pub tz: TimeZone,
}

/// One occurrence of a window: the instants it opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub opens: Timestamp,
    pub closes: Timestamp,
}

impl DailyWindow {
    pub fn new(start: Time, end: Time, tz: TimeZone) -> Self {
        DailyWindow { start, end, tz }
    }

    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.occurrence(at).is_some()
    }

    /// The occurrence of the window that `at` falls in, if any.
    pub fn occurrence(&self, at: Timestamp) -> Option<Occurrence> {
        let date = at.to_zoned(self.tz.clone()).date();
        // The occurrence that opened yesterday may still be open (windows across midnight).
        [date.yesterday().ok()?, date]
            .into_iter()
            .filter_map(|d| self.occurrence_opening_on(d))
            .find(|o| o.opens <= at && at < o.closes)
    }

    /// The next instant the window opens, strictly after `at`.
    pub fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        let date = at.to_zoned(self.tz.clone()).date();
        (0..3)
            .filter_map(|n| date.checked_add(n.days()).ok())
            .filter_map(|d| self.occurrence_opening_on(d))
            .map(|o| o.opens)
            .find(|opens| *opens > at)
    }

    fn occurrence_opening_on(&self, date: jiff::civil::Date) -> Option<Occurrence> {
        let opens = date.to_datetime(self.start).to_zoned(self.tz.clone()).ok()?.timestamp();
        let end_date = if self.end <= self.start { date.tomorrow().ok()? } else { date };
        let closes = end_date.to_datetime(self.end).to_zoned(self.tz.clone()).ok()?.timestamp();
        Some(Occurrence { opens, closes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, tz: &str) -> DailyWindow {
        DailyWindow::new(start.parse().unwrap(), end.parse().unwrap(), TimeZone::get(tz).unwrap())
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_day_window_is_open_from_start_until_end_in_its_zone() {
        // Istanbul is UTC+3 all year.
        let w = window("08:00", "17:00", "Europe/Istanbul");
        assert!(!w.contains(ts("2026-03-02T04:59:59Z")));
        assert!(w.contains(ts("2026-03-02T05:00:00Z")));
        assert!(w.contains(ts("2026-03-02T13:59:59Z")));
        assert!(!w.contains(ts("2026-03-02T14:00:00Z")));
        let o = w.occurrence(ts("2026-03-02T10:00:00Z")).unwrap();
        assert_eq!(o.opens, ts("2026-03-02T05:00:00Z"));
        assert_eq!(o.closes, ts("2026-03-02T14:00:00Z"));
    }

    #[test]
    fn a_night_window_spans_midnight() {
        let w = window("17:30", "07:30", "UTC");
        assert!(w.contains(ts("2026-03-02T23:00:00Z")));
        assert!(w.contains(ts("2026-03-03T07:29:00Z")));
        assert!(!w.contains(ts("2026-03-03T07:30:00Z")));
        assert!(!w.contains(ts("2026-03-03T12:00:00Z")));
        let o = w.occurrence(ts("2026-03-03T03:00:00Z")).unwrap();
        assert_eq!(o.opens, ts("2026-03-02T17:30:00Z"));
        assert_eq!(o.closes, ts("2026-03-03T07:30:00Z"));
        assert_eq!(w.next_open(ts("2026-03-03T12:00:00Z")), Some(ts("2026-03-03T17:30:00Z")));
    }

    #[test]
    fn a_window_follows_daylight_saving_time() {
        // Berlin: UTC+1 in winter, UTC+2 from 2026-03-29.
        let w = window("08:00", "17:00", "Europe/Berlin");
        assert!(w.contains(ts("2026-03-27T07:00:00Z")));
        assert!(w.contains(ts("2026-03-30T06:00:00Z")));
        assert!(!w.contains(ts("2026-03-30T05:59:00Z")));
        assert!(!w.contains(ts("2026-03-27T06:59:00Z")));
    }
}
