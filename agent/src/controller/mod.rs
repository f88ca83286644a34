//! The home controller: one reconcile step at a time over the persisted [`State`].
//!
//! Each [`Controller::step`] (every `load.every`, and driven by a manual clock in tests):
//!
//! 1. **Sync with the provider**: describe our instances by the owner tag; adopt an instance
//!    for each `Intended` record (or launch again with the same idempotency key), confirm
//!    `Terminating` ones, and notice nodes the provider lost (their unpushed bytes are a loss).
//!    Then **leaks** (`leaks.rs`): instances with our owner tag that no live node owns are
//!    reported or terminated, and instances past their `expires` tag are terminated.
//! 2. **Interruption notices** (from the provider, or reported by the node: a spot notice it
//!    read from the instance metadata) put the node into `Draining` (it pushes at once by
//!    itself) and rent a replacement when the burst window and `max_nodes` allow.
//! 3. **Lost nodes**: a node that has not reported for two leases has shut itself down (its
//!    dead-man switch pushes and stops after one lease); it is terminated and what it last
//!    reported as unpushed is recorded as lost.
//!    Then **the budget** (`budget.rs`): reservations that ran out are extended by an hour
//!    when that fits, else the node drains; once the limit is spent it is terminated.
//! 4. **Scale**: inside the burst window, the [`Scaler`](crate::scaler::Scaler) decides to rent
//!    or release one node; outside it every node drains.
//! 5. **Drain**: a draining node is terminated once it reports `drained` with zero unpushed
//!    bytes after the drain was asked; never before, except at the hard deadline (the close of
//!    the merge window after the drain began), where what it still held is recorded as lost.
//! 6. **Merge** (inside the merge window): the branch of every node confirmed terminated (so
//!    its last push, made at SIGTERM, is in) and not yet merged is merged into home; failures are retried at the next step until the deadline, where the night is marked
//!    missed, logged at error and the alert command runs once.
//!
//! Every change of a record is saved before the provider is called about it (see `state`).

mod budget;
mod desk;
mod ledger;
mod leaks;
mod metrics;
#[cfg(test)]
mod rent_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use budget::{Budget, OfferRules};
pub use leaks::LeakPolicy;
pub use desk::{apply_queued, run, Desk, Intent, ANSWER_WAIT};
pub use ledger::{ledger, LedgerRow};

use crate::clock::Clock;
use crate::provider::{self, Bootstrap, InstanceState, LaunchRequest, Provider, ProviderError};
use crate::scaler::{ScaleRule, Want};
use crate::state::{Loss, Night, NodeRecord, NodeReport, Phase, State, StateError, StateStore, Traffic};
use crate::volume::HomeVolume;
use crate::window::DailyWindow;

/// What the controller needs to know, from the config file (or a test).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `owner` tag of every instance this controller launches.
    pub owner: String,
    pub volume: String,
    pub store: String,
    pub instance_type: Option<String>,
    pub rule: ScaleRule,
    pub burst: DailyWindow,
    pub merge: DailyWindow,
    pub lease: Duration,
    /// How nodes reach the controller (goes into their bootstrap).
    pub controller_addr: String,
    /// Environment handed to nodes for the volume tools (store endpoint, credentials).
    pub node_env: BTreeMap<String, String>,
    /// Mints each node's own store credentials before its launch, revokes them once it is
    /// gone (`crate::credentials`).
    pub credentials_command: Option<String>,
    pub alert_command: Option<String>,
    /// The agent clock when it is scaled (handed to nodes in their bootstrap).
    pub clock: Option<crate::clock::ScaledClock>,
    /// `[budget]`: none means nothing limits the spend.
    pub budget: Option<Budget>,
    /// `[provider.offers]`: the constraints on what is rented.
    pub offers: OfferRules,
    /// `[leaks]`.
    pub leaks: LeakPolicy,
}

impl Settings {
    /// Settings for tests: owner `owner`, burst 08:00-17:00 and merge 17:30-07:30 UTC, scale
    /// up above 90 for 10m (at most 2 nodes), down below 50 for 20m, 5-minute lease, no
    /// budget, no offer constraints, leaks reported after 10m.
    #[doc(hidden)]
    pub fn for_tests(owner: &str) -> Settings {
        let utc = |a: &str, b: &str| DailyWindow::new(a.parse().unwrap_or_default(), b.parse().unwrap_or_default(), jiff::tz::TimeZone::UTC);
        Settings {
            owner: owner.into(),
            volume: "main".into(),
            store: "file:///store".into(),
            instance_type: None,
            rule: ScaleRule {
                up_threshold: 90.0,
                up_for: Duration::from_secs(600),
                down_threshold: 50.0,
                down_for: Duration::from_secs(1200),
                max_nodes: 2,
            },
            burst: utc("08:00", "17:00"),
            merge: utc("17:30", "07:30"),
            lease: Duration::from_secs(300),
            controller_addr: "unix:/nonexistent".into(),
            node_env: BTreeMap::new(),
            credentials_command: None,
            alert_command: None,
            clock: None,
            budget: None,
            offers: OfferRules::default(),
            leaks: LeakPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("node {0}: wrong token")]
    BadToken(String),
}

/// The controller's answer to a node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Push everything, stop writing, keep reporting until terminated.
    pub drain: bool,
    /// The node is no longer wanted: push and shut down.
    pub stop: bool,
    pub lease_secs: u64,
}

impl Directive {
    /// What a node in `phase` is told.
    pub fn for_phase(phase: Phase, lease_secs: u64) -> Directive {
        Directive {
            drain: matches!(phase, Phase::Draining | Phase::Terminating | Phase::Terminated),
            stop: matches!(phase, Phase::Terminating | Phase::Terminated),
            lease_secs,
        }
    }
}

pub struct Controller {
    settings: Settings,
    store: StateStore,
    state: State,
    provider: Arc<dyn Provider>,
    home: Arc<dyn HomeVolume>,
    clock: Arc<dyn Clock>,
    /// What the state file holds (saves are skipped when nothing changed).
    saved: Option<State>,
    /// Offers that answered "no capacity", by instance type, and until when they are skipped.
    no_capacity: BTreeMap<String, Timestamp>,
    /// Where the API reads the state (see `desk`): published at every save.
    desk: Option<Arc<Desk>>,
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(t)
}

impl Controller {
    /// Opens the state under `store` (a restart adopts what it finds there).
    pub fn open(
        settings: Settings,
        store: StateStore,
        provider: Arc<dyn Provider>,
        home: Arc<dyn HomeVolume>,
        clock: Arc<dyn Clock>,
    ) -> Result<Controller, ControllerError> {
        let state = store.load()?;
        Ok(Controller { settings, store, saved: Some(state.clone()), state, provider, home, clock, no_capacity: BTreeMap::new(), desk: None })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Saves the state when it changed since the last save.
    fn save(&mut self) -> Result<(), ControllerError> {
        if self.saved.as_ref() != Some(&self.state) {
            self.store.save(&self.state)?;
            let before = self.saved.as_ref().map_or(&[][..], |s| &s.nights[..]);
            for night in self.state.nights.iter().filter(|n| !before.contains(n)) {
                self.store.save_night(night, &self.state.nodes)?;
            }
            self.saved = Some(self.state.clone());
            self.publish();
        }
        Ok(())
    }

    /// Shows the current state to the API (reports applied since the last save included).
    fn publish(&self) {
        if let Some(d) = &self.desk {
            d.publish(&self.state, self.budget(), self.metrics());
        }
    }

    /// One reconcile pass with the load read just before (`None`: unreadable).
    pub fn step(&mut self, load: Option<f64>) -> Result<(), ControllerError> {
        let now = self.clock.now();
        self.sync_with_provider(now)?;
        self.handle_interruptions(now)?;
        self.handle_lost_nodes(now)?;
        self.enforce_budget(now)?;
        self.scale(now, load)?;
        self.progress_drains(now)?;
        self.merge_night(now)?;
        self.save()
    }

    fn owner_filter(&self) -> BTreeMap<String, String> {
        [(provider::TAG_OWNER.to_string(), self.settings.owner.clone())].into()
    }

    // ---- 1. provider sync ----

    fn sync_with_provider(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        let instances = match self.provider.describe(&self.owner_filter()) {
            Ok(i) => i,
            Err(e) => {
                warn!("describe instances of {}: {e}", self.provider.name());
                return Ok(());
            }
        };
        let by_intent: BTreeMap<&str, &provider::Instance> =
            instances.iter().filter_map(|i| i.tags.get(provider::TAG_INTENT).map(|t| (t.as_str(), i))).collect();
        let mut relaunch = Vec::new();
        let mut gone = Vec::new();
        for rec in self.state.nodes.iter_mut().filter(|n| n.phase.is_live()) {
            let inst = by_intent.get(rec.intent.as_str()).copied();
            match (rec.phase, inst) {
                (Phase::Intended, Some(i)) => {
                    info!("node {}: adopted instance {} from the provider's tags", rec.intent, i.id);
                    rec.instance_id = Some(i.id.clone());
                    rec.started_at = i.launched_at.or(Some(now));
                    rec.phase = Phase::Running;
                }
                (Phase::Intended, None) => relaunch.push(rec.intent.clone()),
                (Phase::Terminating, i) if i.is_none_or(|i| i.state == InstanceState::Terminated) => {
                    rec.stopped_at = i.and_then(|i| i.terminated_at).or(Some(now));
                    rec.phase = Phase::Terminated;
                    gone.push(rec.intent.clone());
                    info!("node {}: termination confirmed by describe", rec.intent);
                    // A node released before it drained: its final report (after its push at
                    // SIGTERM) says whether anything stayed behind.
                    if rec.loss.is_none() && rec.last_report.as_ref().is_some_and(|r| r.unpushed_bytes > 0) {
                        record_loss(rec, "terminated with unpushed data in its final report");
                    }
                }
                (Phase::Running | Phase::Draining, i) if i.is_none_or(|i| i.state == InstanceState::Terminated) => {
                    warn!("node {}: the provider no longer runs it", rec.intent);
                    rec.stopped_at = i.and_then(|i| i.terminated_at).or(Some(now));
                    rec.phase = Phase::Terminated;
                    gone.push(rec.intent.clone());
                    record_loss(rec, "the instance went away (killed or reclaimed)");
                }
                _ => {}
            }
        }
        self.save()?;
        for intent in gone {
            self.revoke_credentials(&intent);
        }
        for intent in relaunch {
            if let Some(e) = self.launch_intent(&intent, now)? {
                // Nothing was started: the intent goes (the next rent tries the other offers).
                warn!("node {intent}: {e}; the intent is dropped");
                if let Some(t) = self.state.node(&intent).map(|n| n.instance_type.clone()) {
                    self.no_capacity.insert(t, after(now, self.settings.offers.no_capacity_backoff));
                }
                self.state.nodes.retain(|n| n.intent != intent);
                self.save()?;
            }
        }
        self.find_leaks(now, &instances)?;
        // Terminations not yet confirmed are asked again (terminate is idempotent).
        let pending: Vec<String> =
            self.state.nodes.iter().filter(|n| n.phase == Phase::Terminating).filter_map(|n| n.instance_id.clone()).collect();
        for id in pending {
            if let Err(e) = self.provider.terminate(&id) {
                warn!("terminate instance {id} (again): {e}");
            }
        }
        Ok(())
    }

    // ---- 2. interruptions, 3. lost nodes ----

    fn handle_interruptions(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        let notices = self.provider.interruptions().unwrap_or_else(|e| {
            warn!("read interruption notices: {e}");
            Vec::new()
        });
        // (node, when the notice came, when its drain counts from)
        let mut interrupted: Vec<(String, Timestamp, Timestamp)> = Vec::new();
        for n in notices {
            if let Some(rec) = self.state.nodes.iter().find(|r| r.instance_id.as_deref() == Some(&n.instance_id)) {
                if rec.phase == Phase::Running {
                    interrupted.push((rec.intent.clone(), n.at, now));
                }
            }
        }
        // Notices a node saw itself (a spot notice from the instance metadata) and reported: it
        // pushed before that report and writes nothing after it, so the drain counts from it.
        for rec in self.state.nodes.iter().filter(|r| r.phase == Phase::Running) {
            if let Some((at, report)) = rec.last_report.as_ref().and_then(|r| r.interruption.map(|at| (at, r.at))) {
                if !interrupted.iter().any(|(i, _, _)| i == &rec.intent) {
                    interrupted.push((rec.intent.clone(), at, report));
                }
            }
        }
        for (intent, at, asked) in interrupted {
            if let Some(rec) = self.state.node_mut(&intent) {
                warn!("node {intent}: interruption notice (taken back at {at}); draining");
                rec.phase = Phase::Draining;
                rec.drain_requested_at = Some(asked);
            }
            self.save()?;
            self.replace(&intent, now)?;
        }
        self.save()
    }

    /// Rents a node in place of an interrupted one, when the burst window (outside the merge
    /// window) and `max_nodes` allow; `rent` applies its own checks.
    fn replace(&mut self, intent: &str, now: Timestamp) -> Result<(), ControllerError> {
        let in_window = self.settings.burst.contains(now) && !self.settings.merge.contains(now);
        let active = self.state.nodes.iter().filter(|n| matches!(n.phase, Phase::Intended | Phase::Running)).count() as u32;
        if !in_window || active >= self.settings.rule.max_nodes {
            info!("node {intent}: not replaced ({})", if in_window { "max_nodes active" } else { "outside the burst window" });
            return Ok(());
        }
        if let Some(new) = self.rent(now)? {
            info!("node {intent}: replaced by {new}");
        }
        Ok(())
    }

    fn handle_lost_nodes(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        let limit = self.settings.lease * 2;
        let lost: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| matches!(n.phase, Phase::Running | Phase::Draining))
            .filter(|n| {
                let seen = n.last_report.as_ref().map(|r| r.at).or(n.started_at).unwrap_or(n.requested_at);
                now >= after(seen, limit)
            })
            .map(|n| n.intent.clone())
            .collect();
        for intent in lost {
            warn!("node {intent}: no report for two leases; its dead-man switch has stopped it");
            self.terminate(&intent, Some("no report for two leases (node lost)"))?;
        }
        Ok(())
    }

    // ---- 4. scaling ----

    fn scale(&mut self, now: Timestamp, load: Option<f64>) -> Result<(), ControllerError> {
        let in_window = self.settings.burst.contains(now) && !self.settings.merge.contains(now);
        let active =
            self.state.nodes.iter().filter(|n| matches!(n.phase, Phase::Intended | Phase::Running)).count() as u32;
        let want = self.state.scaler.observe(&self.settings.rule, now, load, in_window, active);
        if !in_window {
            for intent in self.nodes_in(Phase::Running) {
                info!("node {intent}: outside the burst window; draining");
                self.drain(&intent)?;
            }
            return Ok(());
        }
        match want {
            Want::Rent => match self.rent_backoff_until().filter(|until| *until > now) {
                Some(until) => {
                    warn!("load is high, but recent nodes died before their first report: not renting before {until}");
                    Ok(())
                }
                None => self.rent(now).map(|_| ()),
            },
            Want::Release => match self.least_unpushed_running() {
                Some(intent) => {
                    info!("node {intent}: load low; draining");
                    self.drain(&intent)
                }
                None => Ok(()),
            },
            Want::Hold => Ok(()),
        }
    }

    /// After nodes that ended without ever reporting (a broken image, bad credentials, a
    /// store they cannot clone from), renting waits: `up_for` (at least a minute) doubled per
    /// consecutive such node, at most an hour. Without it, a node that cannot boot would be
    /// rented again every `up_for`, all day.
    fn rent_backoff_until(&self) -> Option<Timestamp> {
        let failed: Vec<&NodeRecord> =
            self.state.nodes.iter().rev().take_while(|n| n.phase == Phase::Terminated && n.last_report.is_none()).collect();
        let last = failed.first()?;
        let base = self.settings.rule.up_for.max(Duration::from_secs(60));
        let wait = base.saturating_mul(1 << failed.len().min(6)).min(Duration::from_secs(3600));
        Some(after(last.stopped_at.unwrap_or(last.requested_at), wait))
    }

    fn nodes_in(&self, phase: Phase) -> Vec<String> {
        self.state.nodes.iter().filter(|n| n.phase == phase).map(|n| n.intent.clone()).collect()
    }

    fn least_unpushed_running(&self) -> Option<String> {
        self.state
            .nodes
            .iter()
            .filter(|n| n.phase == Phase::Running)
            .min_by_key(|n| n.last_report.as_ref().map_or(u64::MAX, |r| r.unpushed_bytes))
            .map(|n| n.intent.clone())
    }

    /// Rents one node (see [`Controller::try_rent`]); `None` when it could not.
    pub fn rent(&mut self, now: Timestamp) -> Result<Option<String>, ControllerError> {
        Ok(self.try_rent(now)?.ok())
    }

    /// Rents one node: publish main, then for each offer meeting the constraints, cheapest
    /// first: reserve its cost in the budget (or refuse), write the intent, launch; an offer
    /// without capacity is backed off and the next one tried. `Ok(Err)` says why nothing was
    /// rented (counted and kept as the last refusal, except a failure to publish main).
    pub fn try_rent(&mut self, now: Timestamp) -> Result<Result<String, String>, ControllerError> {
        let pushed = self.home.push_main();
        self.count_own_traffic();
        if let Err(e) = pushed {
            error!("rent a node: publish main first: {e}");
            return Ok(Err(format!("publish main first: {e}")));
        }
        let token = match crate::api::random_token() {
            Ok(t) => t,
            Err(e) => {
                error!("rent a node: {e}");
                return Ok(Err(e.to_string()));
            }
        };
        let offers = match self.offers_to_try(now) {
            Ok(o) => o,
            Err(why) => return self.refuse(now, why).map(Err),
        };
        let intent = format!("n{:04}", self.state.next_intent);
        let mut tried = Vec::new();
        for (attempt, offer) in offers.iter().enumerate() {
            let reserved_until = match self.reserve(offer, now) {
                Ok(r) => r,
                Err(why) => {
                    self.state.nodes.retain(|n| n.intent != intent);
                    let why = if tried.is_empty() { why } else { format!("{why} (no capacity for {})", tried.join(", ")) };
                    return self.refuse(now, why).map(Err);
                }
            };
            if attempt == 0 {
                self.state.next_intent += 1;
                self.state.nodes.push(NodeRecord::intended(&self.settings.owner, &intent, token.clone(), now));
            }
            let Some(rec) = self.state.node_mut(&intent) else { break };
            rec.instance_type = offer.instance_type.clone();
            (rec.price_per_hour, rec.price_is_estimate) = (offer.price_per_hour.unwrap_or(0.0), offer.price_per_hour.is_none());
            rec.reserved_until = reserved_until;
            if attempt > 0 {
                // Another offer is another launch: a key of its own (the first one started nothing).
                rec.idempotency_key = format!("{}-{intent}-{}", self.settings.owner, attempt + 1);
            }
            // The intent (and its reservation) is on disk before the provider hears of it.
            self.save()?;
            match self.launch_intent(&intent, now)? {
                None => {
                    self.state.rent.refusing = false;
                    self.save()?;
                    return Ok(Ok(intent));
                }
                Some(e) => {
                    warn!("node {intent}: {} has no capacity ({e}); not tried again for {:?}, trying the next offer", offer.instance_type, self.settings.offers.no_capacity_backoff);
                    self.back_off(offer, now);
                    tried.push(offer.instance_type.clone());
                }
            }
        }
        self.state.nodes.retain(|n| n.intent != intent);
        self.refuse(now, format!("no capacity for any offer meeting the constraints (tried {})", tried.join(", "))).map(Err)
    }

    /// An operator's rent (`hybridctl nodes rent`): under the same rules as the scaler's (inside
    /// the burst window, outside the merge window, fewer than `max_nodes` active, the budget).
    /// `Ok(Err)` says why not.
    pub fn rent_now(&mut self) -> Result<Result<String, String>, ControllerError> {
        let now = self.clock.now();
        if !self.settings.burst.contains(now) || self.settings.merge.contains(now) {
            return Ok(Err(format!("outside the burst window (agent time {now})")));
        }
        let active = self.state.nodes.iter().filter(|n| matches!(n.phase, Phase::Intended | Phase::Running)).count() as u32;
        if active >= self.settings.rule.max_nodes {
            return Ok(Err(format!("{active} nodes active: burst.max_nodes is {}", self.settings.rule.max_nodes)));
        }
        self.try_rent(now)
    }

    /// Launches the intent's instance. `Ok(Some)`: the provider had no capacity (nothing
    /// started; the record is left as it was for the caller to decide).
    fn launch_intent(&mut self, intent: &str, now: Timestamp) -> Result<Option<ProviderError>, ControllerError> {
        let Some(rec) = self.state.node(intent).cloned() else { return Ok(None) };
        let expires = after(self.hard_deadline(now), Duration::from_secs(3600));
        let tags: BTreeMap<String, String> = [
            (provider::TAG_OWNER, self.settings.owner.clone()),
            (provider::TAG_INTENT, rec.intent.clone()),
            (provider::TAG_VOLUME, self.settings.volume.clone()),
            (provider::TAG_EXPIRES, expires.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut env = self.settings.node_env.clone();
        if let Some(cmd) = &self.settings.credentials_command {
            match crate::credentials::mint(cmd, &self.scope(&rec)) {
                Ok(minted) => env.extend(minted),
                Err(e) => {
                    // Never launched without them: the intent stays and is tried again.
                    error!("node {intent}: {e}; not launched, tried again next step");
                    return Ok(None);
                }
            }
        }
        let req = LaunchRequest {
            idempotency_key: rec.idempotency_key.clone(),
            instance_type: rec.instance_type.clone(),
            tags,
            bootstrap: Bootstrap {
                node: rec.intent.clone(),
                store: self.settings.store.clone(),
                volume: self.settings.volume.clone(),
                branch: rec.branch.clone(),
                source_branch: "main".into(),
                controller: self.settings.controller_addr.clone(),
                token: rec.token.clone(),
                lease_secs: self.settings.lease.as_secs(),
                env,
                clock: self.settings.clock,
                metadata_endpoint: None,
            },
        };
        match self.provider.launch(&req) {
            Ok(inst) => {
                info!("node {intent}: launched instance {} ({})", inst.id, inst.instance_type);
                if let Some(r) = self.state.node_mut(intent) {
                    r.instance_id = Some(inst.id);
                    r.started_at = inst.launched_at.or(Some(now));
                    r.phase = Phase::Running;
                }
            }
            Err(e @ ProviderError::NoCapacity(_)) => return Ok(Some(e)),
            Err(e) if e.is_transient() => warn!("node {intent}: launch: {e}; the intent stays and is retried"),
            Err(e) => {
                error!("node {intent}: launch: {e}");
                if let Some(r) = self.state.node_mut(intent) {
                    r.phase = Phase::Terminated;
                    r.stopped_at = Some(now);
                }
                self.revoke_credentials(intent);
            }
        }
        self.save().map(|()| None)
    }

    fn scope<'a>(&'a self, rec: &'a NodeRecord) -> crate::credentials::NodeScope<'a> {
        crate::credentials::NodeScope { node: &rec.intent, branch: &rec.branch, volume: &self.settings.volume, store: &self.settings.store }
    }

    /// The node is gone: its minted credentials go too (a failure is logged).
    fn revoke_credentials(&self, intent: &str) {
        let (Some(cmd), Some(rec)) = (&self.settings.credentials_command, self.state.node(intent)) else { return };
        match crate::credentials::revoke(cmd, &self.scope(rec)) {
            Ok(()) => info!("node {intent}: store credentials revoked"),
            Err(e) => error!("node {intent}: {e}"),
        }
    }

    // ---- 5. drain and terminate ----

    /// Asks a node to drain (it learns it at its next report).
    pub fn drain(&mut self, intent: &str) -> Result<(), ControllerError> {
        let now = self.clock.now();
        let rec = self.state.node_mut(intent).ok_or_else(|| ControllerError::UnknownNode(intent.into()))?;
        if rec.phase == Phase::Running {
            rec.phase = Phase::Draining;
            rec.drain_requested_at = Some(now);
        }
        self.save()
    }

    /// Terminates a node now, without waiting for it to report zero unpushed bytes (an
    /// operator's `hybridctl nodes release`): the node pushes at SIGTERM before it exits; if its
    /// final report still holds unpushed bytes, they are recorded as lost when the termination
    /// is confirmed. `drain` is the way that waits.
    pub fn release(&mut self, intent: &str) -> Result<(), ControllerError> {
        let rec = self.state.node(intent).ok_or_else(|| ControllerError::UnknownNode(intent.into()))?;
        if matches!(rec.phase, Phase::Terminating | Phase::Terminated) {
            return Ok(());
        }
        info!("node {intent}: released by an operator; terminating");
        self.terminate(intent, None)
    }

    /// The close of the merge window during or after `t`: the latest a node may keep data.
    fn hard_deadline(&self, t: Timestamp) -> Timestamp {
        let merge = &self.settings.merge;
        merge
            .occurrence(t)
            .or_else(|| merge.next_open(t).and_then(|o| merge.occurrence(o)))
            .map_or(after(t, Duration::from_secs(86400)), |o| o.closes)
    }

    fn progress_drains(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        for intent in self.nodes_in(Phase::Draining) {
            let Some(rec) = self.state.node(&intent) else { continue };
            let asked = rec.drain_requested_at.unwrap_or(now);
            if is_drained(rec) {
                info!("node {intent}: drained (0 unpushed bytes); terminating");
                self.terminate(&intent, None)?;
            } else if now >= self.hard_deadline(asked) {
                error!("node {intent}: still holds unpushed data at the hard deadline; terminating anyway");
                self.terminate(&intent, Some("hard deadline reached with unpushed data"))?;
            }
        }
        Ok(())
    }

    /// Marks the node `Terminating` (saved), then asks the provider. `loss`: why it goes with
    /// data it may not have pushed (recorded from its last report).
    fn terminate(&mut self, intent: &str, loss: Option<&str>) -> Result<(), ControllerError> {
        let Some(rec) = self.state.node_mut(intent) else { return Ok(()) };
        if let Some(reason) = loss {
            record_loss(rec, reason);
        }
        rec.phase = Phase::Terminating;
        let id = rec.instance_id.clone();
        self.save()?;
        if let Some(id) = id {
            if let Err(e) = self.provider.terminate(&id) {
                warn!("node {intent}: terminate instance {id}: {e}; asked again next step");
            }
        }
        Ok(())
    }

    // ---- 6. the nightly merge ----

    fn merge_night(&mut self, now: Timestamp) -> Result<(), ControllerError> {
        self.check_deadline(now);
        let Some(night) = self.settings.merge.occurrence(now) else {
            return Ok(());
        };
        if !self.state.nights.iter().any(|n| n.opened == night.opens) {
            info!("merge window open (until {})", night.closes);
            self.state.nights.push(Night { opened: night.opens, merged: vec![], failed: vec![], deadline_missed: false, alerted: false, conflicts: BTreeMap::new() });
        }
        let mergeable: Vec<(String, String)> = self
            .state
            .nodes
            .iter()
            // Only once the provider confirms the node gone: its last push (at SIGTERM) is then
            // in the store, and nothing can be written to the branch after the merge read it.
            .filter(|n| !n.merged && n.phase == Phase::Terminated)
            .map(|n| (n.intent.clone(), n.branch.clone()))
            .collect();
        for (intent, branch) in mergeable {
            let pushed = self.state.node(&intent).and_then(|n| n.last_report.as_ref()).is_some_and(|r| r.head.is_some());
            let result = if pushed { self.home.merge(&branch).map(Some) } else { Ok(None) };
            self.count_own_traffic();
            match result {
                Ok(outcome) => {
                    info!("merged {branch}: {outcome:?}");
                    if let Some(r) = self.state.node_mut(&intent) {
                        r.merged = true;
                    }
                    if let Some(n) = self.state.nights.iter_mut().find(|n| n.opened == night.opens) {
                        n.merged.push(branch.clone());
                        n.failed.retain(|b| b != &branch);
                        if let Some(o) = outcome.as_ref().filter(|o| o.conflicts > 0) {
                            n.conflicts.insert(branch.clone(), o.conflicts);
                        }
                    }
                }
                Err(e) => {
                    warn!("merge {branch}: {e}; retried until {}", night.closes);
                    if let Some(n) = self.state.nights.iter_mut().find(|n| n.opened == night.opens) {
                        if !n.failed.contains(&branch) {
                            n.failed.push(branch.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Once the last night's window has closed (at the first step at or after its close, however
    /// far apart steps are: a slow failing merge delays the next one): a night that left a
    /// branch of a node rented before the close unmerged missed its deadline. Read from the
    /// state alone, so a restart across the close still reports it; once per night.
    fn check_deadline(&mut self, now: Timestamp) {
        let Some(n) = self.state.nights.last() else { return };
        let Some(closes) = self.settings.merge.occurrence(n.opened).map(|o| o.closes) else { return };
        if n.alerted || now < closes {
            return;
        }
        let pending = self.state.nodes.iter().filter(|r| !r.merged && r.requested_at < closes).count();
        if pending == 0 {
            return;
        }
        let alert = self.settings.alert_command.clone();
        let Some(n) = self.state.nights.last_mut() else { return };
        n.deadline_missed = true;
        n.alerted = true;
        error!("merge window closed at {closes}: {pending} branch(es) not merged ({:?})", n.failed);
        if let Some(cmd) = alert {
            run_alert(&cmd, pending);
        }
    }

    // ---- the node's side of the API ----

    /// A node reports; the answer tells it whether to drain or stop.
    pub fn report(&mut self, intent: &str, token: &str, report: NodeReport) -> Result<Directive, ControllerError> {
        let now = self.clock.now();
        self.record_report(intent, token, report, now)
    }

    /// Keeps a report that came at `at` (the node's own clock is not trusted).
    fn record_report(&mut self, intent: &str, token: &str, mut report: NodeReport, at: Timestamp) -> Result<Directive, ControllerError> {
        let lease_secs = self.settings.lease.as_secs();
        let rec = self.state.node_mut(intent).ok_or_else(|| ControllerError::UnknownNode(intent.into()))?;
        if !crate::api::token_eq(&rec.token, token) {
            return Err(ControllerError::BadToken(intent.into()));
        }
        report.at = at;
        report.unpushed_paths.truncate(200);
        // The node's counters grew by this much since its last report: that day's traffic.
        let grew: Traffic = report.store.iter().map(|(p, t)| (p.clone(), t.since(&rec.store_seen.get(p).copied().unwrap_or_default()))).collect();
        rec.store_seen = report.store.clone();
        rec.last_report = Some(report);
        let phase = rec.phase;
        let day = self.day_of(at);
        self.state.count_store(day, &grew);
        // Saved at the end of the next step: a report lost to a crash is sent again.
        Ok(Directive::for_phase(phase, lease_secs))
    }

    pub fn ledger(&self) -> Vec<LedgerRow> {
        ledger(&self.state, self.clock.now(), None)
    }

    /// The ledger of what ran since `since` (hours counted from it).
    pub fn ledger_since(&self, since: Option<Timestamp>) -> Vec<LedgerRow> {
        ledger(&self.state, self.clock.now(), since)
    }

    /// `YYYY-MM-DD` (midnight in the burst window's zone) or an RFC 3339 instant.
    pub fn parse_since(&self, s: &str) -> Result<Timestamp, String> {
        parse_since(s, &self.settings.burst.tz)
    }

    /// The ledger's day of `t` (`YYYY-MM-DD` in the burst window's zone).
    fn day_of(&self, t: Timestamp) -> String {
        day_of(t, &self.settings.burst.tz)
    }

    /// Adds the traffic of the controller's own pushes and merges to today's ledger.
    fn count_own_traffic(&mut self) {
        let day = self.day_of(self.clock.now());
        let traffic = self.home.take_traffic();
        self.state.count_store(day, &traffic);
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        metrics::render(&self.state) + &self.rent_metrics()
    }

    /// Every node, as the API shows them (no secrets).
    pub fn nodes(&self) -> Vec<hybrid_agent_api::NodeView> {
        self.state.nodes.iter().map(NodeRecord::view).collect()
    }
}

/// The date of `t` in `tz`, `YYYY-MM-DD`.
pub fn day_of(t: Timestamp, tz: &jiff::tz::TimeZone) -> String {
    t.to_zoned(tz.clone()).date().to_string()
}

/// `YYYY-MM-DD` (midnight in `tz`) or an RFC 3339 instant.
pub fn parse_since(s: &str, tz: &jiff::tz::TimeZone) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let date: jiff::civil::Date = s.parse().map_err(|_| format!("since {s:?}: use YYYY-MM-DD or an RFC 3339 time"))?;
    date.to_zoned(tz.clone()).map(|z| z.timestamp()).map_err(|e| format!("since {s:?}: {e}"))
}

/// A node is drained when its last report, made after the drain was asked, says it pushed
/// and holds zero unpushed bytes.
fn is_drained(rec: &NodeRecord) -> bool {
    let asked = rec.drain_requested_at;
    matches!(rec.phase, Phase::Draining | Phase::Terminating | Phase::Terminated)
        && rec.last_report.as_ref().is_some_and(|r| r.drained && r.unpushed_bytes == 0 && asked.is_none_or(|a| r.at >= a))
}

fn record_loss(rec: &mut NodeRecord, reason: &str) {
    let Some(r) = &rec.last_report else {
        rec.loss = Some(Loss { bytes: 0, paths: vec![], files: 0, since: None, reason: format!("{reason}; it never reported") });
        return;
    };
    if r.unpushed_bytes > 0 || !r.drained {
        rec.loss = Some(Loss {
            bytes: r.unpushed_bytes,
            paths: r.unpushed_paths.clone(),
            files: r.unpushed_files,
            since: r.last_push_at,
            reason: format!("{reason}; as of its last report at {}", r.at),
        });
        let named = r.unpushed_paths.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let since = r.last_push_at.map_or("it started (it never pushed)".to_string(), |t| format!("its last push at {t}"));
        error!("node {}: lost {} unpushed bytes in {} files ({named}) written since {since} ({reason})", rec.intent, r.unpushed_bytes, r.unpushed_files);
    }
}

fn run_alert(cmd: &str, pending: usize) {
    let status = std::process::Command::new("sh").arg("-c").arg(cmd).env("HYBRID_AGENT_UNMERGED", pending.to_string()).status();
    match status {
        Ok(s) if s.success() => info!("alert command ran"),
        Ok(s) => error!("alert command: exit {s}"),
        Err(e) => error!("run alert command: {e}"),
    }
}
