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
/// faster than the wall clock. Every process given the same values agrees on the time: the
/// controller hands its clock to its nodes in their bootstrap. Every duration of the config
/// (windows, `for`, leases, push and report periods, the local provider's stop grace) is then
/// in agent time: at speed 600 a 5-minute lease is half a real second, so give the leases room
/// for real pushes and mounts.
///
/// On the machine that made it (same boot), the clock runs on `CLOCK_MONOTONIC` from `steady`
/// instead of the wall clock: at speed 600 a wall-clock step of 30 s (a time sync, a VM paused
/// and resumed) would move agent time five hours at once, past windows and leases that the
/// processes' own monotonic waits (and a test's timeouts) never saw pass. Processes on other
/// machines (a cloud node given the clock) use the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaledClock {
    pub anchor: Timestamp,
    pub start: Timestamp,
    pub speed: f64,
    #[serde(default)]
    pub steady: Option<Steady>,
}

/// `CLOCK_MONOTONIC` at a clock's anchor, and the boot it belongs to (monotonic time is
/// shared by every process of one boot of one machine, and by nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steady {
    pub boot: [u64; 2],
    pub anchor_ns: u64,
}

impl Steady {
    /// Now, on this machine; `None` where the boot id or the clock cannot be read.
    pub fn now() -> Option<Steady> {
        Some(Steady { boot: boot_id()?, anchor_ns: monotonic_ns()? })
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
fn boot_id() -> Option<[u64; 2]> {
    static BOOT: std::sync::OnceLock<Option<[u64; 2]>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = u128::from_str_radix(&text.trim().replace('-', ""), 16).ok()?;
        Some([(id >> 64) as u64, id as u64])
    })
}

fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

impl ScaledClock {
    /// Agent time starts at `start` now.
    pub fn starting_now(start: Timestamp, speed: f64) -> Self {
        ScaledClock { anchor: Timestamp::now(), start, speed: speed.max(f64::MIN_POSITIVE), steady: Steady::now() }
    }

    /// The agent time of the wall-clock instant `wall`.
    pub fn at(&self, wall: Timestamp) -> Timestamp {
        self.after(wall.duration_since(self.anchor).as_secs_f64())
    }

    /// The agent time `real` seconds after the anchor.
    fn after(&self, real: f64) -> Timestamp {
        let agent = SignedDuration::try_from_secs_f64(real * self.speed).unwrap_or(SignedDuration::MAX);
        self.start.checked_add(agent).unwrap_or(self.start)
    }

    /// Real seconds since the anchor by this machine's monotonic clock, when the clock was
    /// made in this boot.
    fn steady_elapsed(&self) -> Option<f64> {
        let s = self.steady?;
        if boot_id()? != s.boot {
            return None;
        }
        Some((monotonic_ns()? as i128 - s.anchor_ns as i128) as f64 / 1e9)
    }

    /// The wall-clock length of `d` of agent time.
    pub fn real(&self, d: Duration) -> Duration {
        d.div_f64(self.speed)
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        match self.steady_elapsed() {
            Some(real) => self.after(real),
            None => self.at(Timestamp::now()),
        }
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
        let c = ScaledClock { anchor, start, speed: 600.0, steady: None };
        assert_eq!(c.at(anchor), start);
        // One real minute is ten agent hours.
        let later = anchor.checked_add(SignedDuration::from_secs(60)).unwrap();
        assert_eq!(c.at(later), "2026-12-01T15:55:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(c.real(Duration::from_secs(600)), Duration::from_secs(1));
        let copy: ScaledClock = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(copy.at(later), c.at(later), "a node given the clock in its bootstrap agrees");
    }

    #[test]
    fn a_scaled_clock_made_in_this_boot_runs_on_the_monotonic_clock() {
        let start: Timestamp = "2026-12-01T09:00:00Z".parse().unwrap();
        let c = ScaledClock::starting_now(start, 600.0);
        assert!(c.steady.is_some(), "this machine has a boot id and CLOCK_MONOTONIC");
        // A wall clock stepped an hour forward after the anchor: as if the anchor were an hour
        // earlier. The steady clock does not see the step; the wall-clock reading would be 600
        // hours later.
        let stepped = ScaledClock { anchor: c.anchor.checked_sub(SignedDuration::from_hours(1)).unwrap(), ..c };
        let now = stepped.now();
        assert!(now >= start && now < start.checked_add(SignedDuration::from_hours(1)).unwrap(), "{now}");
        // The same clock from another boot (a node on another machine) reads the wall clock.
        let elsewhere = ScaledClock { steady: Some(Steady { boot: [c.steady.unwrap().boot[0], c.steady.unwrap().boot[1] ^ 1], anchor_ns: 0 }), ..stepped };
        assert!(elsewhere.now() >= start.checked_add(SignedDuration::from_hours(600)).unwrap());
        let copy: ScaledClock = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(copy, c, "the steady anchor travels in a node's bootstrap");
        let old: ScaledClock = serde_json::from_str(r#"{"anchor":"2026-12-01T10:00:00Z","start":"2026-12-01T09:00:00Z","speed":600.0}"#).unwrap();
        assert_eq!(old.steady, None, "a bootstrap without it reads the wall clock");
    }
}
