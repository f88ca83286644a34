//! Where the API meets the reconcile loop without waiting for it.
//!
//! The loop ([`run`]) owns the [`Controller`]; one step can take long (provider calls: a cloud
//! launch, a describe that times out). The API never takes the controller:
//!
//! * **reads** (`nodes`, `cost`, `nights`, `metrics`) answer from the last published state:
//!   the controller publishes a copy of its state at every save (so an intent written before
//!   a launch shows while the launch runs) and after the loop applies what the API queued;
//! * **a node's report** is checked against the published state (its token), answered from it
//!   (drain and stop follow the node's phase there) and queued, stamped with the time it came;
//! * **mutations** (rent, drain, release) are queued as [`Intent`]s; the loop wakes at once
//!   and applies them between steps, and the API waits for the answer (at most
//!   [`ANSWER_WAIT`]), never holding anything the step needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::Timestamp;
use tracing::{error, warn};

use super::{Controller, ControllerError, Directive};
use crate::clock::Clock;
use crate::state::{NodeReport, State};

/// How long an API call waits for the loop to apply its mutation (the loop may be in the
/// middle of a long step); after it the call answers 503 and the intent stays queued.
pub const ANSWER_WAIT: Duration = Duration::from_secs(120);

pub type Reply<T> = mpsc::Sender<Result<T, ControllerError>>;

/// What the API asks the loop to do.
pub enum Intent {
    /// A node's report, as it came (token checked against the published state, `at` set).
    Report { node: String, token: String, report: NodeReport },
    Rent(Reply<Result<String, String>>),
    Drain(String, Reply<()>),
    Release(String, Reply<()>),
}

/// The state the API reads, the intents it queues, and what it needs to answer alone.
pub struct Desk {
    published: RwLock<Arc<State>>,
    /// The budget and the metrics text as of the last publication (they need the
    /// controller's settings).
    budget: RwLock<Option<(hybrid_agent_api::BudgetView, String)>>,
    inbox: Mutex<Vec<Intent>>,
    wake: Condvar,
    clock: Arc<dyn Clock>,
    lease_secs: u64,
    /// The zone of `since=YYYY-MM-DD` (the burst window's).
    tz: TimeZone,
    volume: String,
    store: String,
}

impl Desk {
    /// A desk for `ctrl`, attached to it: every save of the controller publishes here.
    pub fn attach(ctrl: &mut Controller) -> Arc<Desk> {
        let desk = Arc::new(Desk {
            published: RwLock::new(Arc::new(ctrl.state().clone())),
            budget: RwLock::new(Some((ctrl.budget(), ctrl.metrics()))),
            inbox: Mutex::default(),
            wake: Condvar::new(),
            clock: ctrl.clock.clone(),
            lease_secs: ctrl.settings.lease.as_secs(),
            tz: ctrl.settings.burst.tz.clone(),
            volume: ctrl.settings.volume.clone(),
            store: ctrl.settings.store.clone(),
        });
        ctrl.desk = Some(desk.clone());
        desk
    }

    pub(super) fn publish(&self, state: &State, budget: hybrid_agent_api::BudgetView, metrics: String) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state.clone());
        *self.budget.write().unwrap_or_else(|p| p.into_inner()) = Some((budget, metrics));
    }

    /// The budget as of the last publication (each save and each step).
    pub fn budget(&self) -> Option<hybrid_agent_api::BudgetView> {
        self.budget.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.0.clone())
    }

    /// The last published state (never waits for a step).
    pub fn state(&self) -> Arc<State> {
        self.published.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The home volume's name and store URL (from the settings).
    pub fn volume(&self) -> &str {
        &self.volume
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn parse_since(&self, s: &str) -> Result<Timestamp, String> {
        super::parse_since(s, &self.tz)
    }

    /// Every node, as the API shows them (no secrets).
    pub fn nodes(&self) -> Vec<hybrid_agent_api::NodeView> {
        self.state().nodes.iter().map(crate::state::NodeRecord::view).collect()
    }

    pub fn nights(&self) -> Vec<crate::state::Night> {
        self.state().nights.clone()
    }

    /// The ledger of what ran since `since` (hours counted from it).
    pub fn ledger_since(&self, since: Option<Timestamp>) -> Vec<super::LedgerRow> {
        super::ledger(&self.state(), self.clock.now(), since)
    }

    /// The object-store traffic per day from the day of `since` on.
    pub fn store_days(&self, since: Option<Timestamp>) -> Vec<crate::state::StoreDay> {
        let since = since.map(|t| super::day_of(t, &self.tz));
        self.state().store_days(since.as_deref())
    }

    /// The metrics in the Prometheus text format, as of the last publication.
    pub fn metrics(&self) -> String {
        self.budget.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.1.clone()).unwrap_or_default()
    }

    fn queue(&self, intent: Intent) {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).push(intent);
        self.wake.notify_all();
    }

    /// A node's report: checked against the published state, queued, answered from it.
    pub fn report(&self, node: &str, token: &str, mut report: NodeReport) -> Result<Directive, ControllerError> {
        let state = self.state();
        let rec = state.node(node).ok_or_else(|| ControllerError::UnknownNode(node.into()))?;
        if !crate::api::token_eq(&rec.token, token) {
            return Err(ControllerError::BadToken(node.into()));
        }
        report.at = self.clock.now();
        let directive = Directive::for_phase(rec.phase, self.lease_secs);
        self.queue(Intent::Report { node: node.into(), token: token.into(), report });
        Ok(directive)
    }

    /// Queues a mutation and waits for the loop's answer (`None`: not answered in time).
    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Intent) -> Option<Result<T, ControllerError>> {
        let (tx, rx) = mpsc::channel();
        self.queue(make(tx));
        rx.recv_timeout(ANSWER_WAIT).ok()
    }

    pub fn rent(&self) -> Option<Result<Result<String, String>, ControllerError>> {
        self.ask(Intent::Rent)
    }

    pub fn drain(&self, node: &str) -> Option<Result<(), ControllerError>> {
        self.ask(|r| Intent::Drain(node.into(), r))
    }

    pub fn release(&self, node: &str) -> Option<Result<(), ControllerError>> {
        self.ask(|r| Intent::Release(node.into(), r))
    }

    /// The queued intents; waits until one comes or `until`.
    fn take(&self, until: Instant) -> Vec<Intent> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        while inbox.is_empty() {
            let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            inbox = self.wake.wait_timeout(inbox, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        std::mem::take(&mut *inbox)
    }
}

impl Controller {
    /// Applies one intent the API queued.
    pub fn apply(&mut self, intent: Intent) {
        fn answer<T>(reply: Reply<T>, r: Result<T, ControllerError>) {
            // The caller may have given up waiting (ANSWER_WAIT): the intent is applied anyway.
            let _ = reply.send(r);
        }
        match intent {
            Intent::Report { node, token, report } => {
                let at = report.at;
                if let Err(e) = self.record_report(&node, &token, report, at) {
                    warn!("report of node {node}: {e}");
                }
            }
            Intent::Rent(reply) => {
                let r = self.rent_now();
                answer(reply, r);
            }
            Intent::Drain(node, reply) => {
                let r = self.drain(&node);
                answer(reply, r);
            }
            Intent::Release(node, reply) => {
                let r = self.release(&node);
                answer(reply, r);
            }
        }
        self.publish();
    }
}

/// Applies what the API queued, waiting for it until `until` at most (a test that steps the
/// controller by hand runs this between its steps).
pub fn apply_queued(ctrl: &mut Controller, desk: &Desk, until: Instant) {
    for intent in desk.take(until) {
        ctrl.apply(intent);
    }
}

/// The reconcile loop: a step every `every` (real time) with the load `load` reads, and what
/// the API queues applied as it comes, until `stop`; `after_step` sees the controller after
/// each step (the dashboard samples it).
pub fn run(
    ctrl: &mut Controller,
    desk: &Desk,
    every: Duration,
    stop: &AtomicBool,
    mut load: impl FnMut(Timestamp) -> Option<f64>,
    mut after_step: impl FnMut(&Controller),
) {
    while !stop.load(Ordering::Relaxed) {
        let reading = load(ctrl.now());
        if let Err(e) = ctrl.step(reading) {
            error!("reconcile: {e}");
        }
        ctrl.publish();
        after_step(ctrl);
        let next = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            // Wakes at least every 100 ms to notice `stop`.
            apply_queued(ctrl, desk, next.min(Instant::now() + Duration::from_millis(100)));
        }
    }
}
