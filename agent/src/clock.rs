//! The agent's notion of time, injectable so a whole day runs in seconds in tests.
//!
//! Every decision takes `now` from a [`Clock`]; every wait goes through [`Clock::sleep`].
//! [`SystemClock`] is the wall clock; [`ManualClock`] only moves when told to (or when someone
//! sleeps on it: a sleep advances it by the duration at once), so a reconcile loop driven by it
//! steps through 24 hours of decisions without waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    fn sleep(&self, d: Duration);
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that moves only when advanced; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock { now: Arc::new(Mutex::new(start)) }
    }

    pub fn advance(&self, d: Duration) {
        // A std Mutex: held for one addition, never across a wait.
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        let step = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
        *now = now.checked_add(step).unwrap_or(*now);
    }

    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let start: Timestamp = "2026-03-02T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.sleep(Duration::from_secs(3600));
        assert_eq!(clock.now(), "2026-03-02T01:00:00Z".parse::<Timestamp>().unwrap());
    }
}
