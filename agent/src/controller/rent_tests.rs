//! Offers, the budget and leaks, with the memory provider and the manual clock.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{settings, World};
use super::*;
use crate::provider::{conformance, Offer};

fn offer(t: &str, gpu: &str, gpus: u32, price: Option<f64>, spot: bool) -> Offer {
    Offer { instance_type: t.into(), gpus, price_per_hour: price, spot, gpu_type: Some(gpu.into()) }
}

fn report(at: Timestamp, unpushed: u64) -> NodeReport {
    NodeReport { at, healthy: true, unpushed_bytes: unpushed, last_push_at: None, head: None, unpushed_paths: vec![], unpushed_files: 0, store: Default::default(), drained: false, interruption: None }
}

fn budget(per_day: f64, drain_h: u64) -> Option<Budget> {
    Some(Budget { per_day, per_month: None, drain_time: Duration::from_secs(drain_h * 3600) })
}

fn metric(c: &Controller, line_start: &str) -> f64 {
    let m = c.metrics();
    let line = m.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in\n{m}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn offers_are_tried_cheapest_first_within_the_constraints_and_no_capacity_falls_through_to_the_next() {
    let w = World::new("2026-03-02T09:00:00Z");
    w.provider.set_offers(vec![
        offer("big-a100", "a100", 4, Some(12.0), false),
        offer("l4-dear", "l4", 1, Some(1.5), false),
        offer("l4-spot", "l4", 1, Some(0.3), true),
        offer("l4-cheap", "l4", 1, Some(0.8), false),
        offer("l4-noprice", "l4", 1, None, false),
        offer("l4-toodear", "l4", 1, Some(3.0), false),
    ]);
    let mut s = settings();
    s.offers = OfferRules { gpu_type: Some("L4".into()), min_gpus: 1, max_price_per_hour: Some(2.0), allow_spot: false, no_capacity_backoff: Duration::from_secs(900) };
    s.rule.max_nodes = 10;
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    let now = w.clock.now();
    // Cheapest within the constraints: not the spot one (not allowed), not the a100.
    let a = c.rent(now).unwrap().unwrap();
    assert_eq!(c.state().node(&a).unwrap().instance_type, "l4-cheap");
    assert_eq!(c.state().node(&a).unwrap().price_per_hour, 0.8);

    // No capacity for the cheapest: the next one, same intent, a key of its own.
    w.provider.set_no_capacity(&["l4-cheap"]);
    let b = c.rent(now).unwrap().unwrap();
    let rec = c.state().node(&b).unwrap();
    assert_eq!((rec.instance_type.as_str(), rec.phase), ("l4-dear", Phase::Running));
    assert_eq!(rec.idempotency_key, format!("test-ctl-{b}-2"));
    assert_eq!(w.provider.launches(), 2, "the refused offer started nothing");

    // The backed-off offer is skipped for its backoff: no launch is even asked of it.
    w.provider.set_no_capacity(&["l4-dear"]);
    let why = c.try_rent(now).unwrap().unwrap_err();
    assert!(why.contains("no capacity") && why.contains("l4-dear"), "{why}");
    assert_eq!(c.state().nodes.len(), 2, "a rent that launched nothing leaves no record");
    assert_eq!(metric(&c, "hybrid_agent_rent_refusals_total"), 1.0);

    // After the backoff, the cheapest is tried again.
    w.provider.set_no_capacity(&[]);
    w.clock.advance(Duration::from_secs(901));
    let d = c.rent(w.clock.now()).unwrap().unwrap();
    assert_eq!(c.state().node(&d).unwrap().instance_type, "l4-cheap");

    // Nothing meets the constraints: refused, saying so.
    let mut s = settings();
    s.offers.gpu_type = Some("h100".into());
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    let why = c.try_rent(w.clock.now()).unwrap().unwrap_err();
    assert!(why.contains("meets the constraints"), "{why}");
}

#[test]
fn the_budget_reserves_the_rest_of_the_window_plus_the_drain_and_refuses_the_launch_that_would_exceed_it() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut s = settings();
    // 2.50/h; at 09:00 a node reserves (17:00 - 09:00 + 1 h drain) x 2.50 = 22.50.
    s.budget = budget(40.0, 1);
    let mut c = w.controller_with(s.clone(), Arc::new(w.provider.clone()));
    let a = c.rent_now().unwrap().unwrap();
    assert_eq!(c.state().node(&a).unwrap().reserved_until, Some("2026-03-02T18:00:00Z".parse().unwrap()));
    assert_eq!(c.budget().day_committed, 22.5);
    // A second one would make 45.00 > 40.00: refused, with the reason `nodes rent` shows (409).
    let why = c.rent_now().unwrap().unwrap_err();
    assert!(why.starts_with("budget: mem-gpu at 2.50 USD/h would reserve 22.50 USD") && why.contains("22.50 of budget.per_day 40.00"), "{why}");
    assert_eq!(w.provider.launches(), 1);
    assert_eq!(c.state().nodes.len(), 1);
    assert_eq!(c.budget().last_refusal.as_ref().map(|r| r.reason.as_str()), Some(why.as_str()));
    assert_eq!(metric(&c, "hybrid_agent_rent_refusals_total"), 1.0);
    assert_eq!(metric(&c, "hybrid_agent_budget_committed_usd{period=\"day\"}"), 22.5);

    // The reservation survives a restart: the same launch is still refused.
    drop(c);
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    assert!(c.rent_now().unwrap().is_err());
    assert_eq!(c.state().rent.refusals, 2);

    // At 13:00 the rest of the window is shorter: 5 h x 2.50 = 12.50 fits (22.50 + 12.50 <= 40).
    w.clock.set("2026-03-02T13:00:00Z".parse().unwrap());
    let b = c.rent_now().unwrap().unwrap();
    assert_eq!(c.budget().day_committed, 35.0);
    assert!(!c.state().rent.refusing, "a rent that succeeds ends the run of refusals");
    // Released early, the node's reservation is settled to what it spent.
    c.release(&b).unwrap();
    w.clock.advance(Duration::from_secs(3600));
    c.step(Some(70.0)).unwrap();
    let rec = c.state().node(&b).unwrap();
    assert_eq!(rec.phase, Phase::Terminated);
    assert!((c.budget().day_committed - 22.5).abs() < 1e-9, "{:?}", c.budget());
}

#[test]
fn the_month_counts_the_earlier_days_of_the_month() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut s = settings();
    s.budget = Some(Budget { per_day: 25.0, per_month: Some(30.0), drain_time: Duration::from_secs(3600) });
    s.lease = Duration::from_secs(24 * 3600);
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    let a = c.rent_now().unwrap().unwrap();
    // It runs 09:00 to 17:00 (20.00 spent) and stops.
    w.clock.set("2026-03-02T17:00:00Z".parse().unwrap());
    c.release(&a).unwrap();
    c.step(None).unwrap();
    assert!((c.budget().month_committed - 20.0).abs() < 1e-9, "{:?}", c.budget());
    // The next day: 22.50 fits the day (25.00) but not the month (20.00 + 22.50 > 30.00).
    w.clock.set("2026-03-03T09:00:00Z".parse().unwrap());
    assert_eq!(c.budget().day_committed, 0.0, "a new day");
    let why = c.rent_now().unwrap().unwrap_err();
    assert!(why.contains("2026-03 already has 20.00 of budget.per_month 30.00"), "{why}");
    // In April the month starts again.
    w.clock.set("2026-04-01T09:00:00Z".parse().unwrap());
    assert!(c.rent_now().unwrap().is_ok());
}

/// Runs minute steps until `until`, the node reporting unpushed bytes (never drained).
fn run_reporting(w: &World, c: &mut Controller, node: &str, until: &str) {
    let until: Timestamp = until.parse().unwrap();
    let token = c.state().node(node).unwrap().token.clone();
    for _ in 0..24 * 60 {
        if w.clock.now() >= until {
            return;
        }
        c.step(Some(70.0)).unwrap();
        if c.state().node(node).unwrap().phase.is_live() {
            c.report(node, &token, report(w.clock.now(), 4096)).unwrap();
        }
        w.clock.advance(Duration::from_secs(60));
    }
}

#[test]
fn a_node_past_its_reservation_is_extended_while_it_fits_then_terminated_once_the_budget_is_spent() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut s = settings();
    // Reserved 22.50 until 18:00; one more hour fits at 18:00 (25.00) and 19:00 (27.50), not
    // at 20:00 (30.00 > 28.00); spending reaches 28.00 at 20:12.
    s.budget = budget(28.0, 1);
    // A merge window that does not end the node first (its hard deadline is later).
    s.merge = DailyWindow::new("23:00".parse().unwrap(), "07:30".parse().unwrap(), jiff::tz::TimeZone::UTC);
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    let n = c.rent_now().unwrap().unwrap();
    run_reporting(&w, &mut c, &n, "2026-03-02T18:30:00Z");
    let rec = c.state().node(&n).unwrap();
    assert_eq!(rec.phase, Phase::Draining, "outside the window it drains; it holds unpushed data");
    assert_eq!(rec.reserved_until, Some("2026-03-02T19:00:00Z".parse().unwrap()), "extended by an hour at 18:00");
    run_reporting(&w, &mut c, &n, "2026-03-02T20:11:00Z");
    assert!(c.state().node(&n).unwrap().phase.is_live(), "not stopped while the budget holds: {:?}", c.state().node(&n));
    assert_eq!(c.state().node(&n).unwrap().reserved_until, Some("2026-03-02T20:00:00Z".parse().unwrap()));
    run_reporting(&w, &mut c, &n, "2026-03-02T21:00:00Z");
    let rec = c.state().node(&n).unwrap();
    assert!(!rec.phase.is_live() || rec.phase == Phase::Terminating, "{rec:?}");
    let loss = rec.loss.as_ref().expect("a node terminated with unpushed data records its loss");
    assert_eq!(loss.bytes, 4096);
    assert!(loss.reason.contains("budget spent"), "{loss:?}");
    // The ledger never runs more than one node-hour past the budget.
    let cost: f64 = c.ledger().iter().map(|r| r.cost).sum();
    assert!(cost >= 28.0 && cost <= 28.0 + 2.5, "ledger {cost} against a 28.00 budget");
}

#[test]
fn an_instance_with_our_owner_tag_unknown_to_the_state_is_reported_after_the_grace_and_terminated_when_configured() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut s = settings();
    s.lease = Duration::from_secs(4 * 3600); // our node, silent here, is not lost meanwhile
    let mut c = w.controller_with(s.clone(), Arc::new(w.provider.clone()));
    let node = c.rent(w.clock.now()).unwrap().unwrap();
    // A crash lost this one's record: it carries our owner tag, an intent the state lacks.
    let stray = w.provider.launch(&conformance::request("test-ctl", "n0999")).unwrap();
    // Another controller's instance is none of ours.
    let other = w.provider.launch(&conformance::request("someone-else", "n0001")).unwrap();
    c.step(Some(70.0)).unwrap();
    assert!(c.leaks().is_empty(), "younger than the grace period: a launch may be in flight");
    w.clock.advance(Duration::from_secs(601));
    c.step(Some(70.0)).unwrap();
    let leaks = c.leaks();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!((leaks[0].instance_id.as_str(), leaks[0].intent.as_deref()), (stray.id.as_str(), Some("n0999")));
    assert_eq!(leaks[0].why, "not in the state");
    assert_eq!(leaks[0].terminate_requested_at, None);
    assert_eq!(metric(&c, "hybrid_agent_leaked_instances "), 1.0);
    assert!(w.provider.running().iter().any(|i| i.id == stray.id), "leaks.terminate = false only reports");
    assert_eq!(c.state().node(&node).unwrap().phase, Phase::Running, "our own node is not a leak");

    // leaks.terminate = true: terminated at the next step, by id.
    s.leaks.terminate = true;
    drop(c);
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    c.step(Some(70.0)).unwrap();
    let running: Vec<String> = w.provider.running().into_iter().map(|i| i.id).collect();
    assert!(!running.contains(&stray.id), "{running:?}");
    assert!(running.contains(&other.id), "another owner's instance is left alone");
    assert_eq!(c.state().rent.leaks_terminated, 1);
    c.step(Some(70.0)).unwrap();
    assert!(c.leaks().is_empty(), "gone once the provider says terminated");
    assert_eq!(metric(&c, "hybrid_agent_leaked_instances_terminated_total"), 1.0);
}

#[test]
fn an_instance_past_its_expires_tag_is_terminated_even_when_leaks_are_only_reported() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    let mut req = conformance::request("test-ctl", "n0999");
    req.tags.insert(provider::TAG_EXPIRES.into(), "2026-03-02T08:00:00Z".into());
    let stray = w.provider.launch(&req).unwrap();
    let node = c.rent(w.clock.now()).unwrap().unwrap();
    c.step(Some(70.0)).unwrap();
    assert!(!w.provider.running().iter().any(|i| i.id == stray.id), "past expires: terminated with leaks.terminate = false");
    assert_eq!(c.leaks()[0].why, "past its expires tag");
    assert!(c.leaks()[0].terminate_requested_at.is_some());
    assert_eq!(c.state().node(&node).unwrap().phase, Phase::Running, "ours, within its expires: untouched");
}
