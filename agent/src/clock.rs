//! The agent's notion of time, injectable so a whole day runs in seconds in tests.
//!
//! Every decision takes `now` from a [`Clock`]; every wait goes through [`Clock::sleep`].
//! [`SystemClock`] is the wall clock; [`ManualClock`] only moves when told to (or when someone
//! sleeps on it: a sleep advances it by the duration at once), so a reconcile loop driven by it
//! steps through 24 hours of decisions without waiting. [`ScaledClock`] is the wall clock
//! shifted and sped up (`hybrid-agent controller --clock-start T --clock-speed N`): a whole day
//! passes in minutes in a demo or an end-to-end test with real processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

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

/// Agent time that was `start` at the wall-clock instant `anchor` and runs `speed` times
/// faster than the wall clock. Every process given the same three values agrees on the time:
/// the controller hands its clock to its nodes in their bootstrap. Every duration of the
/// config (windows, `for`, leases, push and report periods, the local provider's stop grace)
/// is then in agent time: at speed 600 a 5-minute lease is half a real second, so give the
/// leases room for real pushes and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaledClock {
    pub anchor: Timestamp,
    pub start: Timestamp,
    pub speed: f64,
}

impl ScaledClock {
    /// Agent time starts at `start` now.
    pub fn starting_now(start: Timestamp, speed: f64) -> Self {
        ScaledClock { anchor: Timestamp::now(), start, speed: speed.max(f64::MIN_POSITIVE) }
    }

    /// The agent time of the wall-clock instant `wall`.
    pub fn at(&self, wall: Timestamp) -> Timestamp {
        let real = wall.duration_since(self.anchor).as_secs_f64();
        let agent = SignedDuration::try_from_secs_f64(real * self.speed).unwrap_or(SignedDuration::MAX);
        self.start.checked_add(agent).unwrap_or(self.start)
    }

    /// The wall-clock length of `d` of agent time.
    pub fn real(&self, d: Duration) -> Duration {
        d.div_f64(self.speed)
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(self.real(d))
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

    #[test]
    fn a_scaled_clock_runs_n_times_faster_from_its_start_and_copies_agree() {
        let anchor: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let start: Timestamp = "2026-12-01T08:55:00+03:00".parse().unwrap();
        let c = ScaledClock { anchor, start, speed: 600.0 };
        assert_eq!(c.at(anchor), start);
        // One real minute is ten agent hours.
        let later = anchor.checked_add(SignedDuration::from_secs(60)).unwrap();
        assert_eq!(c.at(later), "2026-12-01T15:55:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(c.real(Duration::from_secs(600)), Duration::from_secs(1));
        let copy: ScaledClock = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(copy.at(later), c.at(later), "a node given the clock in its bootstrap agrees");
    }
}
