//! Which offer to rent, and the budget as a reservation (not a rate).
//!
//! **Offers** are tried cheapest first among those meeting the constraints (`instance_type`
//! when pinned, GPU type, minimum GPUs, maximum price per hour, spot allowed); offers without
//! a price come last, and are never rented under a budget (nothing could be reserved for
//! them). An offer whose launch answers "no capacity" is backed off for `no_capacity_backoff`
//! (kept in memory: a restart tries every offer again) and the next one is tried.
//!
//! **The budget** (`budget.per_day`, optional `per_month`): a node counts against the day (and
//! month) it was rented, in the burst window's zone. Before a launch, the controller reserves
//! `price x (time left in the burst window + drain_time)` and refuses the launch when that plus
//! what that day's nodes have already spent or reserved (the *committed* sum) does not fit. A
//! live node's committed cost is the larger of what it has spent and its reservation; once it
//! stops, the reservation is settled to what it spent. The reservation is saved with the node
//! (`reserved_until`), before the provider is called, so a restart keeps it.
//!
//! A node still running when its reservation ends (a long drain) gets one more hour reserved
//! if that fits; if not, it is drained, and once what the period's nodes have actually spent
//! reaches the limit, every node past its reservation is terminated, ahead of the merge
//! window's hard deadline (what it had not pushed is recorded as its loss, like at the hard
//! deadline). Spending goes past the limit only by what those nodes cost between two steps
//! and until the provider stops them: far less than one node-hour at any sane `load.every`.
//!
//! Every refusal (budget, no offer meeting the constraints, no capacity anywhere) is counted
//! (`hybrid_agent_rent_refusals_total`), kept as the last refusal (`GET /v1/budget`,
//! `hybridctl cost`), answered as 409 to `hybridctl nodes rent`, and logged at warn once per
//! run of refusals (not at every step).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use jiff::civil::Date;
use jiff::Timestamp;
use tracing::{info, warn};

use super::{after, Controller, ControllerError};
use crate::provider::Offer;
use crate::state::{NodeRecord, Phase};

/// `[budget]`: limits in USD.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub per_day: f64,
    pub per_month: Option<f64>,
    /// Reserved past the burst window's close: the time a node takes to drain.
    pub drain_time: Duration,
}

/// `[provider.offers]`: what an offer must meet to be rented.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRules {
    pub gpu_type: Option<String>,
    pub min_gpus: u32,
    pub max_price_per_hour: Option<f64>,
    pub allow_spot: bool,
    pub no_capacity_backoff: Duration,
}

impl Default for OfferRules {
    fn default() -> Self {
        OfferRules { gpu_type: None, min_gpus: 0, max_price_per_hour: None, allow_spot: false, no_capacity_backoff: Duration::from_secs(600) }
    }
}

/// How a node is extended when its reservation runs out.
const EXTENSION: Duration = Duration::from_secs(3600);

fn hours(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64().max(0.0) / 3600.0
}

/// What a node has cost up to `now` (up to its stop, once stopped): what the ledger shows.
pub fn spent(n: &NodeRecord, now: Timestamp) -> f64 {
    let Some(start) = n.started_at else { return 0.0 };
    let end = if n.phase.is_live() { now } else { n.stopped_at.unwrap_or(now) };
    n.price_per_hour * hours(start, end)
}

/// Spent, or while the node is live its reservation when that is larger.
pub fn committed(n: &NodeRecord, now: Timestamp) -> f64 {
    let spent = spent(n, now);
    match n.reserved_until.filter(|_| n.phase.is_live()) {
        Some(until) => spent.max(n.price_per_hour * hours(n.started_at.unwrap_or(n.requested_at), until)),
        None => spent,
    }
}

/// Offers meeting `rules` (and the pinned `instance_type`), cheapest first, unpriced last;
/// unpriced ones dropped under a budget.
pub fn candidates(offers: Vec<Offer>, rules: &OfferRules, pinned: Option<&str>, budget: bool) -> Vec<Offer> {
    let mut ok: Vec<Offer> = offers
        .into_iter()
        .filter(|o| pinned.is_none_or(|t| o.instance_type == t))
        .filter(|o| rules.gpu_type.as_ref().is_none_or(|g| o.gpu_type.as_ref().is_some_and(|og| og.eq_ignore_ascii_case(g))))
        .filter(|o| o.gpus >= rules.min_gpus)
        .filter(|o| rules.max_price_per_hour.is_none_or(|max| o.price_per_hour.is_some_and(|p| p <= max)))
        .filter(|o| rules.allow_spot || !o.spot)
        .filter(|o| !budget || o.price_per_hour.is_some())
        .collect();
    ok.sort_by(|a, b| a.price_per_hour.unwrap_or(f64::INFINITY).total_cmp(&b.price_per_hour.unwrap_or(f64::INFINITY)));
    ok
}

/// A day and a month, in the burst window's zone.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Period {
    day: Date,
}

impl Period {
    fn same_day(&self, d: Date) -> bool {
        d == self.day
    }
    fn same_month(&self, d: Date) -> bool {
        (d.year(), d.month()) == (self.day.year(), self.day.month())
    }
}

/// Sums over the nodes of one period.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    day_spent: f64,
    day_committed: f64,
    month_spent: f64,
    month_committed: f64,
}

impl Controller {
    fn date_of(&self, t: Timestamp) -> Date {
        t.to_zoned(self.settings.burst.tz.clone()).date()
    }

    fn totals(&self, period: Period, now: Timestamp) -> Totals {
        let mut t = Totals::default();
        for n in &self.state.nodes {
            let d = self.date_of(n.requested_at);
            let (s, c) = (spent(n, now), committed(n, now));
            if period.same_month(d) {
                t.month_spent += s;
                t.month_committed += c;
                if period.same_day(d) {
                    t.day_spent += s;
                    t.day_committed += c;
                }
            }
        }
        t
    }

    /// Whether `amount` more fits the budget of the period of `anchor`: `Err` says what it
    /// would overrun.
    fn fits(&self, budget: &Budget, anchor: Timestamp, now: Timestamp, amount: f64) -> Result<(), String> {
        let period = Period { day: self.date_of(anchor) };
        let t = self.totals(period, now);
        // A cent of slack for float sums.
        if t.day_committed + amount > budget.per_day + 0.005 {
            return Err(format!("{} already has {:.2} of budget.per_day {:.2} USD spent or reserved", period.day, t.day_committed, budget.per_day));
        }
        if let Some(month) = budget.per_month {
            if t.month_committed + amount > month + 0.005 {
                return Err(format!(
                    "{}-{:02} already has {:.2} of budget.per_month {:.2} USD spent or reserved",
                    period.day.year(),
                    period.day.month(),
                    t.month_committed,
                    month
                ));
            }
        }
        Ok(())
    }

    /// The reservation for renting `offer` now: `Ok(None)` without a budget, `Ok(Some(until))`
    /// when it fits, else why not.
    pub(super) fn reserve(&self, offer: &Offer, now: Timestamp) -> Result<Option<Timestamp>, String> {
        let Some(budget) = &self.settings.budget else { return Ok(None) };
        let Some(price) = offer.price_per_hour else {
            return Err(format!("budget: offer {} has no price, so nothing can be reserved for it", offer.instance_type));
        };
        let closes = self.settings.burst.occurrence(now).map_or(now, |o| o.closes);
        let until = after(closes, budget.drain_time);
        let amount = price * hours(now, until);
        self.fits(budget, now, now, amount).map(|()| Some(until)).map_err(|why| {
            format!(
                "budget: {} at {price:.2} USD/h would reserve {amount:.2} USD (until {until}: the burst window's close + drain_time), and {why}",
                offer.instance_type
            )
        })
    }

    /// Offers to try for the next rent, cheapest first (backed-off ones left out).
    pub(super) fn offers_to_try(&mut self, now: Timestamp) -> Result<Vec<Offer>, String> {
        let offers = self.provider.offers().map_err(|e| format!("list offers: {e}"))?;
        let listed = offers.len();
        let ok = candidates(offers, &self.settings.offers, self.settings.instance_type.as_deref(), self.settings.budget.is_some());
        self.no_capacity.retain(|_, until| *until > now);
        let fresh: Vec<Offer> = ok.iter().filter(|o| !self.no_capacity.contains_key(&o.instance_type)).cloned().collect();
        match (fresh.is_empty(), ok.is_empty()) {
            (false, _) => Ok(fresh),
            (true, false) => Err(format!("no capacity: every offer meeting the constraints is backed off ({})", backed_off(&self.no_capacity))),
            (true, true) => Err(format!("none of the provider's {listed} offers meets the constraints (provider.instance_type, provider.offers)")),
        }
    }

    /// Marks `offer` without capacity until `now + no_capacity_backoff`.
    pub(super) fn back_off(&mut self, offer: &Offer, now: Timestamp) {
        let until = after(now, self.settings.offers.no_capacity_backoff);
        self.no_capacity.insert(offer.instance_type.clone(), until);
    }

    /// Counts a refused rent, keeps it for the API, and logs it when it starts a run of them.
    pub(super) fn refuse(&mut self, now: Timestamp, reason: String) -> Result<String, ControllerError> {
        let rent = &mut self.state.rent;
        rent.refusals += 1;
        if !rent.refusing {
            warn!("not renting: {reason} (logged once until a rent succeeds; counted in hybrid_agent_rent_refusals_total)");
        }
        rent.refusing = true;
        rent.last_refusal = Some(hybrid_agent_api::Refusal { at: now, reason: reason.clone() });
        self.save()?;
        Ok(reason)
    }

    /// Reservations that ran out: extended by an hour when that fits, else the node drains;
    /// once the period's actual spending reaches its limit, nodes past their reservation are
    /// terminated (their unpushed data recorded as lost).
    pub(super) fn enforce_budget(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        let Some(budget) = self.settings.budget.clone() else { return Ok(()) };
        let over: Vec<(String, Timestamp, f64)> = self
            .state
            .nodes
            .iter()
            .filter(|n| matches!(n.phase, Phase::Running | Phase::Draining))
            .filter_map(|n| n.reserved_until.filter(|u| *u <= now).map(|_| (n.intent.clone(), n.requested_at, n.price_per_hour)))
            .collect();
        for (intent, requested, price) in over {
            let until = after(now, EXTENSION);
            let extend = price * hours(now, until);
            match self.fits(&budget, requested, now, extend) {
                Ok(()) => {
                    info!("node {intent}: reservation ran out; one more hour reserved ({extend:.2} USD)");
                    if let Some(r) = self.state.node_mut(&intent) {
                        r.reserved_until = Some(until);
                    }
                }
                Err(why) => {
                    let period = Period { day: self.date_of(requested) };
                    let t = self.totals(period, now);
                    let spent_out = t.day_spent >= budget.per_day || budget.per_month.is_some_and(|m| t.month_spent >= m);
                    let rec = self.state.node(&intent);
                    if spent_out {
                        warn!("node {intent}: the budget is spent ({why}); terminating it");
                        self.terminate(&intent, Some("budget spent (budget.per_day/per_month) with unpushed data"))?;
                    } else if rec.is_some_and(|r| r.phase == Phase::Running) {
                        warn!("node {intent}: its reservation ran out and the budget has no hour left ({why}); draining");
                        self.drain(&intent)?;
                    }
                }
            }
        }
        self.save()
    }

    /// The budget as `GET /v1/budget` shows it.
    pub fn budget(&self) -> hybrid_agent_api::BudgetView {
        let now = self.clock.now();
        let period = Period { day: self.date_of(now) };
        let t = self.totals(period, now);
        hybrid_agent_api::BudgetView {
            per_day: self.settings.budget.as_ref().map(|b| b.per_day),
            per_month: self.settings.budget.as_ref().and_then(|b| b.per_month),
            day: period.day.to_string(),
            day_spent: t.day_spent,
            day_committed: t.day_committed,
            month_spent: t.month_spent,
            month_committed: t.month_committed,
            refusals: self.state.rent.refusals,
            last_refusal: self.state.rent.last_refusal.clone(),
        }
    }

    /// The budget's and the leaks' metrics (doc/METRICS.md), appended to the others.
    pub(super) fn rent_metrics(&self) -> String {
        let b = self.budget();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric("hybrid_agent_rent_refusals_total", "counter", "rents refused: budget, no offer meeting the constraints, no capacity", &[("", b.refusals as f64)]);
        let committed = [("{period=\"day\"}", b.day_committed), ("{period=\"month\"}", b.month_committed)];
        metric("hybrid_agent_budget_committed_usd", "gauge", "spent plus reserved by the nodes rented this day or month", &committed);
        let spent = [("{period=\"day\"}", b.day_spent), ("{period=\"month\"}", b.month_spent)];
        metric("hybrid_agent_budget_spent_usd", "gauge", "spent by the nodes rented this day or month", &spent);
        let limits: Vec<(&str, f64)> =
            [("{period=\"day\"}", b.per_day), ("{period=\"month\"}", b.per_month)].into_iter().filter_map(|(l, v)| v.map(|v| (l, v))).collect();
        metric("hybrid_agent_budget_limit_usd", "gauge", "budget.per_day and budget.per_month", &limits);
        let leaks = self.state.rent.leaks.len() as f64;
        metric("hybrid_agent_leaked_instances", "gauge", "instances with this controller's owner tag that its state does not know", &[("", leaks)]);
        let terminated = self.state.rent.leaks_terminated as f64;
        metric("hybrid_agent_leaked_instances_terminated_total", "counter", "leaked or expired instances the controller terminated", &[("", terminated)]);
        out
    }
}

fn backed_off(map: &BTreeMap<String, Timestamp>) -> String {
    map.iter().map(|(t, until)| format!("{t} until {until}")).collect::<Vec<_>>().join(", ")
}
