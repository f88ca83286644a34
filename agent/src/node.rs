//! The burst node role: bootstrap, clone, mount, push on a schedule, report to the controller,
//! drain when told, and stop by itself when the controller is gone (dead-man switch).
//!
//! [`NodeAgent::tick`] is one pass, a pure-ish function of the clock, the volume and the
//! controller link, so the whole life of a node is unit tested with fakes:
//!
//! * every `push_every`: push the branch;
//! * every tick: report health and unpushed bytes; the answer may say *drain* (push now, then
//!   report `drained` with the count after that push, and write nothing more) or *stop*;
//! * a SIGTERM or an interruption notice: push at once, unmount, exit;
//! * no answer from the controller for longer than the lease: push, unmount, exit (a node that
//!   cannot be told to stop must not run up a bill).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::controller::Directive;
use crate::provider::Bootstrap;
use crate::state::NodeReport;
use crate::volume::NodeVolume;

/// How the node talks to its controller.
pub trait ControllerLink: Send + Sync {
    fn report(&self, report: &NodeReport) -> Result<Directive, String>;
}

/// The controller's API over HTTP (TCP or unix socket), with the node's own token.
pub struct HttpLink {
    pub addr: String,
    pub node: String,
    pub token: String,
}

impl ControllerLink for HttpLink {
    fn report(&self, report: &NodeReport) -> Result<Directive, String> {
        let body = serde_json::to_value(report).map_err(|e| e.to_string())?;
        let path = format!("/v1/nodes/{}/report", self.node);
        let resp = crate::api::call(&self.addr, "POST", &path, Some(&self.token), Some(&body))
            .map_err(|e| format!("report to {}: {e}", self.addr))?;
        if resp.status != 200 {
            return Err(format!("report to {}: HTTP {} {}", self.addr, resp.status, resp.body));
        }
        serde_json::from_value(resp.body).map_err(|e| format!("read the controller's answer: {e}"))
    }
}

#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub mountpoint: PathBuf,
    pub push_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Pushed (as far as possible) and unmounted: the process should exit.
    Exit,
}

pub struct NodeAgent {
    pub boot: Bootstrap,
    pub settings: NodeSettings,
    pub volume: Arc<dyn NodeVolume>,
    pub link: Arc<dyn ControllerLink>,
    pub clock: Arc<dyn Clock>,
    /// Set by SIGTERM (or an interruption notice).
    pub stop: Arc<AtomicBool>,
    /// A spot interruption notice (when the instance is taken back), set with `stop` by the
    /// poller (`spot::spawn_watch`); reported with the node's last report.
    pub notice: Arc<std::sync::Mutex<Option<Timestamp>>>,
    last_push: Option<Timestamp>,
    head: Option<u64>,
    last_contact: Timestamp,
    draining: bool,
}

impl NodeAgent {
    pub fn new(
        boot: Bootstrap,
        settings: NodeSettings,
        volume: Arc<dyn NodeVolume>,
        link: Arc<dyn ControllerLink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.now();
        NodeAgent {
            boot,
            settings,
            volume,
            link,
            clock,
            stop: Arc::default(),
            notice: Arc::default(),
            last_push: None,
            head: None,
            last_contact: now,
            draining: false,
        }
    }

    /// Clones (once) and mounts.
    pub fn start(&mut self) -> Result<(), crate::volume::VolumeError> {
        let b = &self.boot;
        self.volume.ensure_clone(&b.store, &b.volume, &b.source_branch, &b.branch)?;
        self.volume.mount(&self.settings.mountpoint)?;
        info!("node {}: {} mounted at {}, pushing {}", b.node, b.volume, self.settings.mountpoint.display(), b.branch);
        self.last_contact = self.clock.now();
        Ok(())
    }

    fn push(&mut self) -> bool {
        match self.volume.push() {
            Ok(seq) => {
                self.head = Some(seq);
                self.last_push = Some(self.clock.now());
                true
            }
            Err(e) => {
                error!("node {}: push {}: {e}", self.boot.node, self.boot.branch);
                false
            }
        }
    }

    fn report(&self, drained: bool) -> Result<Directive, String> {
        let unpushed = self.volume.unpushed();
        let healthy = unpushed.is_ok();
        let u = unpushed.unwrap_or(crate::volume::Unpushed { bytes: u64::MAX, ..Default::default() });
        let r = NodeReport {
            at: self.clock.now(),
            healthy,
            unpushed_bytes: u.bytes,
            last_push_at: self.last_push,
            head: self.head,
            unpushed_paths: u.paths,
            unpushed_files: u.files,
            store: u.store,
            drained: drained && healthy && u.bytes == 0,
            interruption: *self.notice.lock().unwrap_or_else(|p| p.into_inner()),
        };
        self.link.report(&r)
    }

    /// Pushes what is left and unmounts: the last thing a node does.
    fn finish(&mut self, why: &str) -> Step {
        info!("node {}: {why}; pushing and stopping", self.boot.node);
        self.push();
        if let Err(e) = self.volume.umount(&self.settings.mountpoint) {
            warn!("node {}: {e}", self.boot.node);
        }
        let _ = self.report(true);
        Step::Exit
    }

    /// One pass (see the module comment).
    pub fn tick(&mut self) -> Step {
        let now = self.clock.now();
        if self.stop.load(Ordering::Relaxed) {
            let notice = *self.notice.lock().unwrap_or_else(|p| p.into_inner());
            return match notice {
                Some(at) => self.finish(&format!("spot interruption notice (taken back at {at})")),
                None => self.finish("asked to stop (SIGTERM)"),
            };
        }
        let due = self.last_push.is_none_or(|t| now.duration_since(t).as_secs_f64() >= self.settings.push_every.as_secs_f64());
        if due && !self.draining {
            self.push();
        }
        match self.report(false) {
            Ok(d) => {
                self.last_contact = now;
                if d.stop {
                    return self.finish("the controller released this node");
                }
                if d.drain {
                    if !self.draining {
                        info!("node {}: draining", self.boot.node);
                        self.draining = true;
                    }
                    if self.push() {
                        if let Err(e) = self.report(true) {
                            warn!("node {}: {e}", self.boot.node);
                        }
                    }
                }
                Step::Continue
            }
            Err(e) => {
                warn!("node {}: {e}", self.boot.node);
                let lease = Duration::from_secs(self.boot.lease_secs);
                if now.duration_since(self.last_contact).as_secs_f64() > lease.as_secs_f64() {
                    error!("node {}: no answer from the controller for more than the lease ({}s)", self.boot.node, self.boot.lease_secs);
                    return self.finish("dead-man switch");
                }
                Step::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::volume::fake::FakeNode;

    #[derive(Default)]
    struct FakeLink {
        answer: Mutex<Option<Directive>>,
        reports: Mutex<Vec<NodeReport>>,
    }

    impl ControllerLink for FakeLink {
        fn report(&self, r: &NodeReport) -> Result<Directive, String> {
            self.reports.lock().unwrap().push(r.clone());
            self.answer.lock().unwrap().clone().ok_or_else(|| "connection refused".to_string())
        }
    }

    fn directive(drain: bool, stop: bool) -> Option<Directive> {
        Some(Directive { drain, stop, lease_secs: 300 })
    }

    fn agent(link: Arc<FakeLink>, vol: FakeNode, clock: &ManualClock) -> NodeAgent {
        let boot = crate::provider::conformance::request("o", "n0001").bootstrap;
        let boot = Bootstrap { lease_secs: 300, ..boot };
        let settings = NodeSettings { mountpoint: "/mnt/hybrid".into(), push_every: Duration::from_secs(600) };
        let mut a = NodeAgent::new(boot, settings, Arc::new(vol), link, Arc::new(clock.clone()));
        a.start().unwrap();
        a
    }

    #[test]
    fn a_node_pushes_on_schedule_and_reports_what_it_has_not_pushed() {
        let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
        let (link, vol) = (Arc::new(FakeLink::default()), FakeNode::default());
        *link.answer.lock().unwrap() = directive(false, false);
        let mut a = agent(link.clone(), vol.clone(), &clock);
        assert!(vol.get().mounted && vol.get().cloned.as_deref() == Some("burst-n0001"));
        for _ in 0..30 {
            vol.write("/ckpt/a", 1000);
            assert_eq!(a.tick(), Step::Continue);
            clock.advance(Duration::from_secs(60));
        }
        assert_eq!(vol.get().pushes, 3, "at start, then every 10 minutes");
        let last = link.reports.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.unpushed_bytes, 9000, "nine minutes of writes since the last push");
        assert!(!last.drained && last.head == Some(3));
    }

    #[test]
    fn no_lost_writes_a_drain_pushes_then_reports_drained_with_zero_unpushed() {
        let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
        let (link, vol) = (Arc::new(FakeLink::default()), FakeNode::default());
        *link.answer.lock().unwrap() = directive(false, false);
        let mut a = agent(link.clone(), vol.clone(), &clock);
        a.tick();
        vol.write("/ckpt/b", 5000);
        *link.answer.lock().unwrap() = directive(true, false);
        assert_eq!(a.tick(), Step::Continue);
        let last = link.reports.lock().unwrap().last().cloned().unwrap();
        assert!(last.drained && last.unpushed_bytes == 0, "{last:?}");
        *link.answer.lock().unwrap() = directive(true, true);
        assert_eq!(a.tick(), Step::Exit);
        assert!(!vol.get().mounted);
    }

    #[test]
    fn the_dead_man_switch_pushes_and_stops_after_the_lease_without_the_controller() {
        let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
        let (link, vol) = (Arc::new(FakeLink::default()), FakeNode::default());
        *link.answer.lock().unwrap() = directive(false, false);
        let mut a = agent(link.clone(), vol.clone(), &clock);
        a.tick();
        *link.answer.lock().unwrap() = None; // the controller is gone
        let mut minutes = 0;
        while a.tick() == Step::Continue {
            vol.write("/ckpt/c", 100);
            clock.advance(Duration::from_secs(60));
            minutes += 1;
            assert!(minutes < 60, "never stopped");
        }
        assert_eq!(minutes, 6, "stops at the first tick past the 5-minute lease");
        assert_eq!(vol.get().unpushed, 0, "pushed before stopping");
        assert!(!vol.get().mounted);
    }

    #[test]
    fn no_lost_writes_a_spot_notice_pushes_at_once_and_the_last_report_carries_it() {
        let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
        let (link, vol) = (Arc::new(FakeLink::default()), FakeNode::default());
        *link.answer.lock().unwrap() = directive(false, false);
        let mut a = agent(link.clone(), vol.clone(), &clock);
        a.tick();
        vol.write("/ckpt/e", 4096);
        let at: Timestamp = "2026-03-02T09:02:00Z".parse().unwrap();
        *a.notice.lock().unwrap() = Some(at);
        a.stop.store(true, Ordering::Relaxed);
        assert_eq!(a.tick(), Step::Exit);
        assert_eq!(vol.get().unpushed, 0, "pushed before it goes");
        assert!(!vol.get().mounted);
        let last = link.reports.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.interruption, Some(at));
        assert!(last.drained && last.unpushed_bytes == 0, "{last:?}");
    }

    #[test]
    fn sigterm_pushes_at_once_and_stops() {
        let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
        let (link, vol) = (Arc::new(FakeLink::default()), FakeNode::default());
        *link.answer.lock().unwrap() = directive(false, false);
        let mut a = agent(link, vol.clone(), &clock);
        a.tick();
        vol.write("/ckpt/d", 777);
        a.stop.store(true, Ordering::Relaxed);
        assert_eq!(a.tick(), Step::Exit);
        assert_eq!(vol.get().unpushed, 0);
    }
}
