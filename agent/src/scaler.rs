//! When to rent and when to release: a pure function of the load readings over time.
//!
//! * Rent one node when the load has stayed **above** `up_threshold` for `up_for`, fewer than
//!   `max_nodes` are active, and the burst window is open. The timer then starts again: the next
//!   node needs another full `up_for` of high load (the new node needs time to take load).
//! * Release one node when the load has stayed **below** `down_threshold` for `down_for`. The
//!   timer starts again for the next one.
//! * Between the two thresholds (the dead band) both timers reset: that band is the hysteresis
//!   that keeps a load hovering near one threshold from renting and releasing in turn.
//! * An unreadable load resets both timers: nothing is decided on a missing signal.
//! * Outside the window it never rents (the controller drains everything there).

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleRule {
    pub up_threshold: f64,
    pub up_for: Duration,
    pub down_threshold: f64,
    pub down_for: Duration,
    pub max_nodes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Rent,
    Release,
    Hold,
}

/// The timers; persisted with the controller's state so a restart does not reset them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaler {
    pub above_since: Option<Timestamp>,
    pub below_since: Option<Timestamp>,
}

fn held_for(since: Timestamp, now: Timestamp, d: Duration) -> bool {
    now.duration_since(since).as_secs_f64() >= d.as_secs_f64()
}

impl Scaler {
    /// One load reading at `now`, with `active` nodes rented or being rented.
    pub fn observe(&mut self, rule: &ScaleRule, now: Timestamp, load: Option<f64>, in_window: bool, active: u32) -> Want {
        let Some(load) = load.filter(|l| l.is_finite()) else {
            *self = Scaler::default();
            return Want::Hold;
        };
        if load > rule.up_threshold {
            self.below_since = None;
            let since = *self.above_since.get_or_insert(now);
            if in_window && active < rule.max_nodes && held_for(since, now, rule.up_for) {
                self.above_since = Some(now);
                return Want::Rent;
            }
        } else if load < rule.down_threshold {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if active > 0 && held_for(since, now, rule.down_for) {
                self.below_since = Some(now);
                return Want::Release;
            }
        } else {
            *self = Scaler::default();
        }
        Want::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn rule() -> ScaleRule {
        ScaleRule {
            up_threshold: 90.0,
            up_for: Duration::from_secs(600),
            down_threshold: 50.0,
            down_for: Duration::from_secs(1200),
            max_nodes: 2,
        }
    }

    /// Feeds one reading a minute for `minutes`, returning what was wanted at each.
    fn run(s: &mut Scaler, clock: &ManualClock, load: f64, minutes: u32, active: &mut u32) -> Vec<Want> {
        (0..minutes)
            .map(|_| {
                let want = s.observe(&rule(), clock.now(), Some(load), true, *active);
                match want {
                    Want::Rent => *active += 1,
                    Want::Release => *active -= 1,
                    Want::Hold => {}
                }
                clock.sleep(Duration::from_secs(60));
                want
            })
            .collect()
    }

    fn count(w: &[Want], what: Want) -> usize {
        w.iter().filter(|x| **x == what).count()
    }

    #[test]
    fn rents_only_after_the_load_stays_high_for_the_whole_period_then_one_node_per_period_up_to_max() {
        let clock = ManualClock::new("2026-03-02T06:00:00Z".parse().unwrap());
        let (mut s, mut active) = (Scaler::default(), 0);
        let first = run(&mut s, &clock, 95.0, 10, &mut active);
        assert_eq!(count(&first, Want::Rent), 0, "9 minutes of high load rent nothing");
        let next = run(&mut s, &clock, 95.0, 60, &mut active);
        assert_eq!(active, 2, "one more node per 10 minutes, capped at max_nodes");
        assert_eq!(next[0], Want::Rent);
        assert_eq!(count(&next, Want::Rent), 2);
    }

    #[test]
    fn a_load_in_the_dead_band_neither_rents_nor_releases_and_a_dip_resets_the_timer() {
        let clock = ManualClock::new("2026-03-02T06:00:00Z".parse().unwrap());
        let (mut s, mut active) = (Scaler::default(), 1);
        // Flapping around the upper threshold never holds long enough.
        for _ in 0..12 {
            let w = [run(&mut s, &clock, 95.0, 9, &mut active), run(&mut s, &clock, 70.0, 1, &mut active)].concat();
            assert_eq!(count(&w, Want::Rent) + count(&w, Want::Release), 0);
        }
        let w = run(&mut s, &clock, 70.0, 600, &mut active);
        assert_eq!(count(&w, Want::Rent) + count(&w, Want::Release), 0, "10 hours in the dead band");
        let w = run(&mut s, &clock, 10.0, 21, &mut active);
        assert_eq!(count(&w, Want::Release), 1, "below the lower threshold for 20 minutes releases one");
        assert_eq!(active, 0);
    }

    #[test]
    fn never_rents_outside_the_window_and_a_missing_reading_decides_nothing() {
        let now: Timestamp = "2026-03-02T20:00:00Z".parse().unwrap();
        let mut s = Scaler::default();
        for m in 0..120 {
            let at = now.checked_add(jiff::SignedDuration::from_mins(m)).unwrap();
            assert_eq!(s.observe(&rule(), at, Some(99.0), false, 0), Want::Hold);
        }
        assert_eq!(s.observe(&rule(), now, None, true, 0), Want::Hold);
        assert_eq!(s, Scaler::default(), "an unreadable load resets the timers");
        assert_eq!(s.observe(&rule(), now, Some(f64::NAN), true, 0), Want::Hold);
    }
}
