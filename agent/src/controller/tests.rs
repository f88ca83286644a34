use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::clock::ManualClock;
use crate::provider::conformance::OnLaunch;
use crate::provider::memory::MemoryProvider;
use crate::provider::LaunchRequest;
use crate::state::{NodeReport, StoreTraffic};
use crate::volume::fake::{FakeHome, FakeNode};
use crate::volume::NodeVolume;

pub(super) fn settings() -> Settings {
    Settings::for_tests("test-ctl")
}

pub(super) struct World {
    dir: tempfile::TempDir,
    pub(super) clock: ManualClock,
    pub(super) provider: MemoryProvider,
    home: FakeHome,
    /// The simulated node agents, by instance id.
    nodes: BTreeMap<String, FakeNode>,
}

impl World {
    pub(super) fn new(start: &str) -> World {
        let clock = ManualClock::new(start.parse().unwrap());
        World {
            dir: tempfile::tempdir().unwrap(),
            provider: MemoryProvider::new(Arc::new(clock.clone())),
            clock,
            home: FakeHome::default(),
            nodes: BTreeMap::new(),
        }
    }

    pub(super) fn controller_with(&self, s: Settings, provider: Arc<dyn Provider>) -> Controller {
        let store = StateStore::open(self.dir.path()).unwrap();
        Controller::open(s, store, provider, Arc::new(self.home.clone()), Arc::new(self.clock.clone())).unwrap()
    }

    pub(super) fn controller(&self) -> Controller {
        self.controller_with(settings(), Arc::new(self.provider.clone()))
    }

    /// Every running instance acts as a node agent: writes `write` bytes, reports, and obeys.
    fn nodes_act(&mut self, c: &mut Controller, write: u64) {
        for inst in self.provider.running() {
            let boot = self.provider.bootstrap_of(&inst.id).unwrap();
            let vol = self.nodes.entry(inst.id.clone()).or_default().clone();
            let draining = c.state().node(&boot.node).is_some_and(|n| n.phase != Phase::Running);
            if !draining {
                vol.write(&format!("/ckpt/{}-{}", boot.node, self.clock.now().as_second()), write);
            }
            let d = c.report(&boot.node, &boot.token, self.report(&vol, false)).unwrap();
            if d.drain {
                vol.push().unwrap();
                c.report(&boot.node, &boot.token, self.report(&vol, true)).unwrap();
            }
        }
    }

    fn report(&self, vol: &FakeNode, drained: bool) -> NodeReport {
        let n = vol.get();
        NodeReport {
            at: self.clock.now(),
            healthy: true,
            unpushed_bytes: n.unpushed,
            last_push_at: (n.pushes > 0).then(|| self.clock.now()),
            head: (n.pushes > 0).then_some(n.pushes),
            unpushed_paths: n.files.keys().cloned().collect(),
            unpushed_files: n.files.len() as u64,
            store: n.store.clone(),
            drained,
            interruption: None,
        }
    }

    fn minute(&mut self, c: &mut Controller, load: f64, write: u64) {
        c.step(Some(load)).unwrap();
        self.nodes_act(c, write);
        self.clock.advance(Duration::from_secs(60));
    }

    fn at(&self) -> String {
        self.clock.now().to_string()
    }
}

fn hhmm(t: Timestamp) -> String {
    t.strftime("%H:%M").to_string()
}

#[test]
fn a_whole_day_rents_two_nodes_at_nine_drains_them_and_merges_both_at_night() {
    let mut w = World::new("2026-03-02T06:00:00Z");
    let mut c = w.controller();
    let mut rented_at = Vec::new();
    // 06:00 .. 08:00 next day, one step a minute: 26 hours in well under a second.
    for _ in 0..(26 * 60) {
        let now = w.clock.now();
        let hour = now.to_zoned(jiff::tz::TimeZone::UTC).hour();
        let load = if (9..14).contains(&hour) || (19..23).contains(&hour) { 97.0 } else { 20.0 };
        let before = w.provider.launches();
        w.minute(&mut c, load, 1 << 20);
        if w.provider.launches() > before {
            rented_at.push(hhmm(now));
        }
    }
    assert_eq!(rented_at, ["09:10", "09:20"], "two nodes, 10 minutes of high load apart; none at night");
    let s = c.state();
    assert_eq!(s.nodes.len(), 2);
    for n in &s.nodes {
        assert_eq!(n.phase, Phase::Terminated, "{}", n.intent);
        assert!(n.merged && n.loss.is_none(), "{n:?}");
        let stopped = hhmm(n.stopped_at.unwrap());
        assert!(stopped.as_str() >= "14:19" && stopped.as_str() <= "15:00", "released after the load fell: {stopped}");
    }
    assert_eq!(w.home.get().merged, ["burst-n0001", "burst-n0002"]);
    assert!(w.provider.running().is_empty());
    // The night before (open until 07:30) had nothing to merge; this night merged both.
    let opened: Vec<String> = s.nights.iter().map(|n| n.opened.to_string()).collect();
    assert_eq!(opened, ["2026-03-01T17:30:00Z", "2026-03-02T17:30:00Z"]);
    assert!(s.nights.iter().all(|n| !n.deadline_missed));
    assert_eq!(s.nights[1].merged, ["burst-n0001", "burst-n0002"]);
    let ledger = c.ledger();
    assert_eq!(ledger.len(), 2);
    for row in &ledger {
        assert!(row.hours > 4.5 && row.hours < 6.0, "{row:?}");
        assert!((row.cost - row.hours * 2.5).abs() < 1e-9 && !row.estimate);
    }
    // The store traffic of the day: the controller's two pushes of main (2 requests and 500
    // bytes each in the fake) and two merges (3 requests, 1000 bytes each), and what the
    // nodes' counters grew by, each report adding only what grew.
    let days = s.store_days(None);
    assert_eq!(days.iter().map(|d| d.day.as_str()).collect::<Vec<_>>(), ["2026-03-02"]);
    let t = &days[0].traffic;
    assert_eq!(t["merge"], StoreTraffic { requests: 6, bytes_sent: 0, bytes_received: 2000 });
    let by_nodes: u64 = s.nodes.iter().map(|n| n.store_seen["push"].bytes_sent).sum();
    assert!(by_nodes >= 4 * 60 * (1 << 20), "two nodes pushed 1 MiB a minute for hours: {by_nodes}");
    assert_eq!(t["push"].bytes_sent, 1000 + by_nodes, "{t:?}");
    let pushed: u64 = w.nodes.values().map(|n| n.get().store["push"].bytes_sent).sum();
    assert!(by_nodes <= pushed, "counted at most what the nodes pushed");
}

#[test]
fn the_load_signal_rents_nothing_before_the_window_opens_and_drains_at_its_close() {
    let mut w = World::new("2026-03-02T07:00:00Z");
    let mut c = w.controller();
    for _ in 0..60 {
        w.minute(&mut c, 99.0, 0);
    }
    assert_eq!(w.provider.launches(), 0, "07:00-08:00 is outside the window: {}", w.at());
    for _ in 0..(9 * 60) {
        w.minute(&mut c, 99.0, 1000);
    }
    assert_eq!(w.provider.launches(), 2, "high load all day: max_nodes and no more");
    // 17:00: the window closes, both nodes drain and go although the load stays high.
    for _ in 0..10 {
        w.minute(&mut c, 99.0, 1000);
    }
    assert!(w.provider.running().is_empty());
    assert!(c.state().nodes.iter().all(|n| n.phase == Phase::Terminated && n.loss.is_none()));
}

#[test]
fn crash_safety_the_intent_is_written_before_the_provider_is_called() {
    let w = World::new("2026-03-02T10:00:00Z");
    // At each launch, the intent is already on disk.
    let dir = w.dir.path().to_path_buf();
    let checker = OnLaunch {
        inner: w.provider.clone(),
        on_launch: move |p: &MemoryProvider, req: &LaunchRequest| {
            let saved = StateStore::open(&dir).unwrap().load().unwrap();
            let rec = saved.node(&req.tags[provider::TAG_INTENT]).expect("the intent is saved before launch");
            assert_eq!(rec.idempotency_key, req.idempotency_key);
            p.launch(req)
        },
    };
    let mut c = w.controller_with(settings(), Arc::new(checker));
    let now = w.clock.now();
    assert_eq!(c.rent(now).unwrap().as_deref(), Some("n0001"));
    assert_eq!(w.provider.launches(), 1);
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Running);
}

#[test]
fn crash_safety_a_lost_launch_answer_is_adopted_from_the_tags_and_never_launches_twice() {
    let mut w = World::new("2026-03-02T10:00:00Z");
    let mut c = w.controller();
    w.provider.lose_next_launch_response();
    let now = w.clock.now();
    c.rent(now).unwrap();
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Intended, "no answer: still an intent");
    // A crash now: a new controller over the same state finds the instance by its tags.
    drop(c);
    let mut c = w.controller();
    w.minute(&mut c, 70.0, 0);
    let rec = c.state().node("n0001").unwrap();
    assert_eq!((rec.phase, rec.instance_id.as_deref()), (Phase::Running, Some("mem-1")));
    assert_eq!(w.provider.launches(), 1, "one intent, one instance");
}

#[test]
fn crash_safety_an_intent_whose_launch_never_happened_is_launched_with_the_same_key() {
    let mut w = World::new("2026-03-02T10:00:00Z");
    let store = StateStore::open(w.dir.path()).unwrap();
    // The state a crash right after saving the intent leaves behind.
    {
        let mut c = w.controller();
        let now = w.clock.now();
        c.state.next_intent = 2;
        c.state.nodes.push(NodeRecord::intended("test-ctl", "n0001", "x".repeat(64), now));
        c.save().unwrap();
    }
    assert_eq!(store.load().unwrap().nodes.len(), 1);
    let mut c = w.controller();
    w.minute(&mut c, 70.0, 0);
    w.minute(&mut c, 70.0, 0);
    assert_eq!(w.provider.launches(), 1);
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Running);
}

#[test]
fn a_restarted_controller_adopts_its_nodes_and_drains_them_later() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..30 {
        w.minute(&mut c, 99.0, 4096);
    }
    assert_eq!(w.provider.launches(), 2);
    drop(c);
    let mut c = w.controller();
    assert_eq!(c.state().live().count(), 2, "the state remembers both nodes");
    for _ in 0..60 {
        w.minute(&mut c, 10.0, 4096);
    }
    assert_eq!(w.provider.launches(), 2, "no relaunch after the restart");
    assert!(w.provider.running().is_empty(), "both released after the load fell");
    assert!(c.state().nodes.iter().all(|n| n.loss.is_none()));
}

#[test]
fn no_lost_writes_a_node_with_unpushed_data_is_kept_until_the_hard_deadline_then_its_loss_is_reported() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 99.0, 0);
    }
    let inst = w.provider.running()[0].clone();
    let boot = w.provider.bootstrap_of(&inst.id).unwrap();
    // This node's push never succeeds: it reports 5 MiB unpushed, never drained.
    let stuck = |c: &mut Controller, at: Timestamp| {
        let r = NodeReport {
            at,
            healthy: false,
            unpushed_bytes: 5 << 20,
            last_push_at: None,
            head: None,
            unpushed_paths: vec!["/ckpt/step-100.pt".into()],
            unpushed_files: 1,
            store: Default::default(),
            drained: false,
            interruption: None,
        };
        c.report(&boot.node, &boot.token, r).unwrap()
    };
    c.drain("n0001").unwrap();
    // Reported every minute until 07:29 the next morning: never terminated.
    while w.clock.now() < "2026-03-03T07:29:00Z".parse::<Timestamp>().unwrap() {
        c.step(Some(10.0)).unwrap();
        assert!(stuck(&mut c, w.clock.now()).drain);
        w.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Draining, "kept while it holds data");
    for _ in 0..3 {
        c.step(Some(10.0)).unwrap();
        stuck(&mut c, w.clock.now());
        w.clock.advance(Duration::from_secs(60));
    }
    let rec = c.state().node("n0001").unwrap();
    assert_eq!(rec.phase, Phase::Terminated, "terminated at the hard deadline (07:30)");
    let loss = rec.loss.as_ref().unwrap();
    assert_eq!((loss.bytes, loss.paths.as_slice(), loss.files), (5 << 20, &["/ckpt/step-100.pt".to_string()][..], 1));
    assert!(c.state().nights[0].deadline_missed, "its branch was not merged");
}

#[test]
fn a_killed_node_is_noticed_and_what_it_had_not_pushed_is_reported() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..12 {
        w.minute(&mut c, 95.0, 1000);
    }
    let inst = w.provider.running()[0].clone();
    w.provider.terminate(&inst.id).unwrap(); // kill -9 from outside
    w.minute(&mut c, 95.0, 1000);
    let rec = c.state().nodes.iter().find(|n| n.instance_id.as_deref() == Some(&inst.id)).unwrap();
    assert_eq!(rec.phase, Phase::Terminated);
    let loss = rec.loss.as_ref().expect("its unpushed bytes are reported");
    assert_eq!(loss.bytes, 2000, "two minutes of writes since it was rented, never pushed");
}

#[test]
fn a_silent_node_is_terminated_after_two_leases_with_its_last_known_loss() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    assert_eq!(w.provider.running().len(), 1);
    // The node stops reporting (partition): steps without node activity.
    for _ in 0..11 {
        c.step(Some(80.0)).unwrap();
        w.clock.advance(Duration::from_secs(60));
    }
    let rec = c.state().node("n0001").unwrap();
    assert_eq!(rec.phase, Phase::Terminated);
    assert!(rec.loss.as_ref().unwrap().reason.contains("node lost"));
}

#[test]
fn an_interruption_notice_drains_the_node() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    w.provider.interrupt("mem-1");
    for _ in 0..3 {
        w.minute(&mut c, 80.0, 1000);
    }
    let rec = c.state().node("n0001").unwrap();
    assert_eq!(rec.phase, Phase::Terminated);
    assert!(rec.loss.is_none(), "it pushed before it went");
}

#[test]
fn no_lost_writes_a_spot_notice_the_node_reports_drains_it_and_rents_a_replacement_in_the_window() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    assert_eq!(w.provider.launches(), 1);
    // The node reads a spot notice from its metadata endpoint: it pushes, then reports it.
    let boot = w.provider.bootstrap_of("mem-1").unwrap();
    let vol = w.nodes["mem-1"].clone();
    vol.push().unwrap();
    let at: Timestamp = "2026-03-02T09:13:00Z".parse().unwrap();
    let r = NodeReport { interruption: Some(at), ..w.report(&vol, true) };
    c.report(&boot.node, &boot.token, r).unwrap();
    c.step(Some(95.0)).unwrap();
    assert_eq!(w.provider.launches(), 2, "a replacement is rented at once");
    assert_eq!(c.state().node("n0002").unwrap().phase, Phase::Running);
    let rec = c.state().node("n0001").unwrap();
    assert!(matches!(rec.phase, Phase::Terminating | Phase::Terminated), "{:?}", rec.phase);
    c.step(Some(95.0)).unwrap();
    let rec = c.state().node("n0001").unwrap();
    assert_eq!(rec.phase, Phase::Terminated);
    assert!(rec.loss.is_none(), "it pushed before it reported the notice: {:?}", rec.loss);
}

#[test]
fn a_spot_notice_outside_the_burst_window_is_not_replaced() {
    let mut w = World::new("2026-03-02T16:40:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    assert_eq!(w.provider.launches(), 1);
    while w.clock.now() < "2026-03-02T16:59:00Z".parse::<Timestamp>().unwrap() {
        w.minute(&mut c, 60.0, 1000);
    }
    w.clock.advance(Duration::from_secs(120)); // 17:01: the window is closed
    let boot = w.provider.bootstrap_of("mem-1").unwrap();
    let vol = w.nodes["mem-1"].clone();
    vol.push().unwrap();
    let r = NodeReport { interruption: Some(w.clock.now()), ..w.report(&vol, true) };
    c.report(&boot.node, &boot.token, r).unwrap();
    c.step(Some(95.0)).unwrap();
    assert_eq!(w.provider.launches(), 1, "no replacement outside the window");
}

#[test]
fn the_store_unreachable_in_the_merge_window_is_retried_until_the_deadline_then_alerts() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let flag = w.dir.path().join("alerted");
    let mut s = settings();
    s.alert_command = Some(format!("echo $HYBRID_AGENT_UNMERGED > {}", flag.display()));
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    w.home.get().store_down = true;
    while w.clock.now() < "2026-03-03T07:31:00Z".parse::<Timestamp>().unwrap() {
        w.minute(&mut c, 10.0, 0);
    }
    let night = &c.state().nights[0];
    assert!(night.deadline_missed && night.alerted && night.failed == ["burst-n0001"], "{night:?}");
    assert_eq!(std::fs::read_to_string(&flag).unwrap().trim(), "1");
    assert!(w.home.get().merged.is_empty());
    // Besides the error log and the alert: a metric, and the night's report as a file.
    let m = c.metrics();
    assert!(m.contains("\nhybrid_agent_merge_deadline_missed_total 1\n") && m.contains("\nhybrid_agent_unmerged_branches 1\n"), "{m}");
    assert!(m.contains("hybrid_agent_nodes{phase=\"terminated\"} 1"), "{m}");
    let store = StateStore::open(w.dir.path()).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(store.night_path(night.opened)).unwrap()).unwrap();
    assert!(report["deadline_missed"] == true && report["failed"][0] == "burst-n0001", "{report}");
    assert_eq!(report["nodes"][0]["node"], "n0001");
    // The next night the store is back: the branch merges then.
    w.home.get().store_down = false;
    while w.clock.now() < "2026-03-03T17:31:00Z".parse::<Timestamp>().unwrap() {
        w.minute(&mut c, 10.0, 0);
    }
    assert_eq!(w.home.get().merged, ["burst-n0001"]);
    let m = c.metrics();
    assert!(m.contains("\nhybrid_agent_merge_deadline_missed_total 1\n") && m.contains("\nhybrid_agent_merge_deadline_missed 0\n"), "{m}");
    assert!(m.contains("\nhybrid_agent_unmerged_branches 0\n"), "{m}");
}

/// No step falls in the window's last minute (steps every 7 minutes: 07:24, then 07:31): the
/// first step after the close reports the night missed (faults.rs at 600x, where a slow failing
/// merge delays the next step, saw the night never reported when only a step in the last
/// minute checked); and a controller restarted across the close reports it too (the check
/// reads the state alone).
#[test]
fn a_merge_deadline_that_falls_between_two_steps_is_still_reported_missed() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let flag = w.dir.path().join("alerted");
    let mut s = settings();
    s.alert_command = Some(format!("echo $HYBRID_AGENT_UNMERGED > {}", flag.display()));
    let mut c = w.controller_with(s.clone(), Arc::new(w.provider.clone()));
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 1000);
    }
    w.home.get().store_down = true;
    while w.clock.now() < "2026-03-02T12:02:00Z".parse::<Timestamp>().unwrap() {
        w.minute(&mut c, 10.0, 0);
    }
    while w.clock.now() < "2026-03-03T07:25:00Z".parse::<Timestamp>().unwrap() {
        c.step(Some(10.0)).unwrap();
        w.nodes_act(&mut c, 0);
        w.clock.advance(Duration::from_secs(7 * 60));
    }
    assert!(!c.state().nights[0].alerted, "07:24: the window is still open");
    // Restarted across the close: the first step, at 07:31, reports the night.
    drop(c);
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    c.step(Some(10.0)).unwrap();
    let night = &c.state().nights[0];
    assert!(night.deadline_missed && night.alerted && night.failed == ["burst-n0001"], "{night:?}");
    assert_eq!(std::fs::read_to_string(&flag).unwrap().trim(), "1");
    assert!(c.metrics().contains("\nhybrid_agent_merge_deadline_missed_total 1\n"));
}

#[test]
fn a_report_with_a_wrong_token_or_for_an_unknown_node_is_refused() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    for _ in 0..11 {
        w.minute(&mut c, 95.0, 0);
    }
    let r = NodeReport { at: w.clock.now(), healthy: true, unpushed_bytes: 0, last_push_at: None, head: None, unpushed_paths: vec![], unpushed_files: 0, store: Default::default(), drained: true, interruption: None };
    assert!(matches!(c.report("n0001", "guess", r.clone()), Err(ControllerError::BadToken(_))));
    assert!(matches!(c.report("n0009", "guess", r), Err(ControllerError::UnknownNode(_))));
    assert!(c.state().node("n0001").unwrap().last_report.as_ref().is_some_and(|r| !r.drained));
}

#[test]
fn nodes_that_die_before_their_first_report_make_renting_back_off() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    let mut launched_at = Vec::new();
    for _ in 0..120 {
        let before = w.provider.launches();
        c.step(Some(99.0)).unwrap();
        if w.provider.launches() > before {
            launched_at.push(hhmm(w.clock.now()));
        }
        for inst in w.provider.running() {
            w.provider.terminate(&inst.id).unwrap(); // dies while booting, never reports
        }
        w.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(launched_at, ["09:10", "09:30", "10:10"], "waits 20, then 40 minutes after each death; not every 10");
}

#[test]
fn no_lost_writes_a_branch_is_merged_only_after_the_provider_confirms_its_node_gone() {
    let mut w = World::new("2026-03-02T17:00:00Z");
    let mut c = w.controller();
    c.rent(w.clock.now()).unwrap();
    w.minute(&mut c, 70.0, 1000);
    w.provider.slow_terminate();
    // 17:30: the merge window drains the node; its instance is still stopping (its last push
    // at SIGTERM may still be on the way): no merge yet.
    while w.clock.now() < "2026-03-02T18:00:00Z".parse::<Timestamp>().unwrap() {
        w.minute(&mut c, 70.0, 1000);
    }
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Terminating);
    assert!(w.home.get().merged.is_empty(), "merged while the node could still push");
    w.provider.finish_terminations();
    w.minute(&mut c, 70.0, 0);
    w.minute(&mut c, 70.0, 0);
    assert_eq!(w.home.get().merged, ["burst-n0001"]);
}

#[test]
fn a_released_node_goes_now_and_only_what_its_final_report_still_held_is_a_loss() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    let now = w.clock.now();
    let (a, b) = (c.rent(now).unwrap().unwrap(), c.rent(now).unwrap().unwrap());
    w.minute(&mut c, 60.0, 1000);
    let token = |c: &Controller, n: &str| c.state().node(n).unwrap().token.clone();
    // Both are released before they drained: terminated at once, not waiting for a drain.
    c.release(&a).unwrap();
    c.release(&b).unwrap();
    assert!(c.state().nodes.iter().all(|n| n.phase == Phase::Terminating));
    assert!(matches!(c.release("n0999"), Err(ControllerError::UnknownNode(_))));
    // Their final reports, after the push at SIGTERM: a pushed everything, b could not.
    let last = |unpushed: u64| NodeReport { unpushed_bytes: unpushed, drained: unpushed == 0, ..w.report(&FakeNode::default(), true) };
    c.report(&a, &token(&c, &a), last(0)).unwrap();
    c.report(&b, &token(&c, &b), last(500)).unwrap();
    c.step(Some(60.0)).unwrap();
    let s = c.state();
    assert!(s.nodes.iter().all(|n| n.phase == Phase::Terminated));
    assert_eq!(s.node(&a).unwrap().loss, None);
    assert_eq!(s.node(&b).unwrap().loss.as_ref().map(|l| l.bytes), Some(500), "{:?}", s.node(&b));
}

#[test]
fn the_ledger_since_a_date_lists_what_ran_after_it_and_counts_hours_from_it() {
    let w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    let now = w.clock.now();
    let first = c.rent(now).unwrap().unwrap();
    w.clock.advance(Duration::from_secs(3600));
    c.release(&first).unwrap();
    c.step(Some(60.0)).unwrap(); // 10:00: the first stops
    let second = c.rent(w.clock.now()).unwrap().unwrap();
    w.clock.advance(Duration::from_secs(2 * 3600)); // 12:00: the second still runs
    assert_eq!(c.ledger().len(), 2);
    let since = c.parse_since("2026-03-02T11:00:00Z").unwrap();
    let rows = c.ledger_since(Some(since));
    assert_eq!(rows.len(), 1, "the node that stopped at 10:00 is not listed: {rows:?}");
    assert_eq!(rows[0].node, second);
    assert!((rows[0].hours - 1.0).abs() < 1e-9, "hours count from 11:00: {rows:?}");
    // A date is midnight in the burst window's zone (UTC here).
    assert_eq!(c.parse_since("2026-03-02").unwrap(), "2026-03-02T00:00:00Z".parse::<Timestamp>().unwrap());
    assert!(c.parse_since("yesterday").unwrap_err().contains("YYYY-MM-DD"));
}

#[test]
fn an_operator_rents_only_inside_the_burst_window_and_up_to_max_nodes() {
    let w = World::new("2026-03-02T07:00:00Z");
    let mut c = w.controller();
    assert!(c.rent_now().unwrap().unwrap_err().contains("outside the burst window"));
    w.clock.set("2026-03-02T09:00:00Z".parse().unwrap());
    assert_eq!(c.rent_now().unwrap(), Ok("n0001".to_string()));
    assert_eq!(c.rent_now().unwrap(), Ok("n0002".to_string()));
    assert!(c.rent_now().unwrap().unwrap_err().contains("max_nodes is 2"));
    w.clock.set("2026-03-02T18:00:00Z".parse().unwrap());
    assert!(c.rent_now().unwrap().is_err(), "not in the merge window");
    assert_eq!(w.provider.launches(), 2);
}

/// The API never waits for a reconcile step: while a launch hangs in the provider (a slow
/// cloud API), `GET /v1/nodes` (what `hybridctl nodes list` calls), the ledger, the nights
/// and the metrics answer, and show the intent saved before the launch (the write order of
/// `state`); the rent queued through the API is answered once the loop gets past the launch.
#[test]
fn api_reads_answer_while_a_provider_call_is_blocked() {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use crate::api::{call, route, serve, Listener, Request};

    const ADMIN: &str = "admin-token-0123456789";
    let w = World::new("2026-03-02T09:00:00Z");
    let mut c = w.controller();
    let desk = Desk::attach(&mut c);
    let stop = Arc::new(AtomicBool::new(false));
    let listener = Listener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr();
    let d = desk.clone();
    let server = serve(listener, Arc::new(move |r: &Request| route(&d, ADMIN, r)), stop.clone()).unwrap();
    let (d, s) = (desk.clone(), stop.clone());
    let looper = std::thread::spawn(move || run(&mut c, &d, Duration::from_millis(20), &s, |_| Some(10.0), |_| ()));

    w.provider.hold_launches();
    let a = addr.clone();
    let renter = std::thread::spawn(move || call(&a, "POST", "/v1/nodes/rent", Some(ADMIN), None).unwrap());
    let t0 = Instant::now();
    while w.provider.launches_held() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the rent never reached the provider");
        std::thread::sleep(Duration::from_millis(10));
    }
    let nodes = call(&addr, "GET", "/v1/nodes", Some(ADMIN), None).unwrap();
    assert_eq!(nodes.status, 200, "{nodes:?}");
    let list: Vec<hybrid_agent_api::NodeView> = serde_json::from_value(nodes.body).unwrap();
    assert_eq!(list.iter().map(|n| (n.node.as_str(), n.phase)).collect::<Vec<_>>(), [("n0001", Phase::Intended)]);
    for path in ["/v1/cost", "/v1/nights", "/metrics"] {
        assert_eq!(call(&addr, "GET", path, Some(ADMIN), None).unwrap().status, 200, "{path} while the launch hangs");
    }
    assert_eq!(w.provider.launches_held(), 1, "still blocked: the reads did not wait for it");

    w.provider.let_launches_go();
    let rented = renter.join().unwrap();
    assert_eq!((rented.status, rented.body["node"].as_str()), (200, Some("n0001")), "{rented:?}");
    let drained = call(&addr, "POST", "/v1/nodes/n0001/drain", Some(ADMIN), None).unwrap();
    assert_eq!(drained.status, 200, "{drained:?}");
    assert_eq!(call(&addr, "POST", "/v1/nodes/n0009/drain", Some(ADMIN), None).unwrap().status, 404);
    let list: Vec<hybrid_agent_api::NodeView> =
        serde_json::from_value(call(&addr, "GET", "/v1/nodes", Some(ADMIN), None).unwrap().body).unwrap();
    assert_eq!(list[0].phase, Phase::Draining, "the drain was applied before it was answered");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looper.join().unwrap();
    server.join().unwrap();
}

/// Each node gets the credentials the command mints for it (its bootstrap, over the common
/// environment), revoked once its termination is confirmed; a node whose credentials cannot
/// be minted is not launched (the intent stays and is tried again).
#[test]
fn each_node_is_launched_with_its_own_minted_credentials_revoked_when_it_is_gone() {
    let mut w = World::new("2026-03-02T09:00:00Z");
    let log = w.dir.path().join("credentials.log");
    let fail = w.dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let cmd = format!(
        r#"echo "$HYBRID_AGENT_ACTION $HYBRID_AGENT_NODE $HYBRID_AGENT_BRANCH" >> {log}; test -e {fail} && exit 1; printf '{{"AWS_ACCESS_KEY_ID":"key-%s"}}' "$HYBRID_AGENT_NODE""#,
        log = log.display(),
        fail = fail.display()
    );
    let s = Settings { credentials_command: Some(cmd), node_env: [("AWS_ACCESS_KEY_ID".to_string(), "shared".to_string())].into(), ..settings() };
    let mut c = w.controller_with(s, Arc::new(w.provider.clone()));
    c.rent(w.clock.now()).unwrap();
    assert_eq!(w.provider.launches(), 0, "no credentials, no launch");
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Intended);
    std::fs::remove_file(&fail).unwrap();
    w.minute(&mut c, 10.0, 0);
    let inst = w.provider.running()[0].clone();
    let boot = w.provider.bootstrap_of(&inst.id).unwrap();
    assert_eq!(boot.env["AWS_ACCESS_KEY_ID"], "key-n0001", "its own, over the shared one");
    c.release("n0001").unwrap();
    w.minute(&mut c, 10.0, 0);
    assert_eq!(c.state().node("n0001").unwrap().phase, Phase::Terminated);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "mint n0001 burst-n0001\nmint n0001 burst-n0001\nrevoke n0001 burst-n0001\n");
}
