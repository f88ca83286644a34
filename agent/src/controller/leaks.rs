//! Leak detection, Karpenter-style, at every reconcile step.
//!
//! The step lists the provider's instances carrying this controller's `owner` tag *first*
//! (before looking at the state), so an instance launched by a step that crashed before it
//! saved is in the list. After adoption (an `Intended` record takes the instance tagged with
//! its intent), every instance the provider does not call terminated and that is not the
//! instance of a live node of the state is a **leak**: unknown to the state (a crash lost the
//! record, a second instance for one intent, an old state restored), or a node the state has
//! as terminated while the provider still runs it. Identified by instance id, never by
//! address. Instances younger than `leaks.grace` are left alone (a launch whose answer is
//! still on its way). A leak is logged at warn when first found, counted
//! (`hybrid_agent_leaked_instances`), listed by `GET /v1/leaks` and `hybridctl nodes list`;
//! with `leaks.terminate = true` it is terminated (asked again at every step until the
//! provider confirms).
//!
//! The `expires` tag (the launch's hard deadline plus an hour) is enforced too: an instance
//! past it is terminated, a live node through the normal path (its unpushed data recorded as
//! lost), an unknown one directly, whatever `leaks.terminate` says.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tracing::warn;

use super::{Controller, ControllerError};
use crate::provider::{self, Instance, InstanceState};

/// `[leaks]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakPolicy {
    pub grace: Duration,
    pub terminate: bool,
}

impl Default for LeakPolicy {
    fn default() -> Self {
        LeakPolicy { grace: Duration::from_secs(600), terminate: false }
    }
}

fn expired(inst: &Instance, now: Timestamp) -> bool {
    inst.tags.get(provider::TAG_EXPIRES).and_then(|t| t.parse::<Timestamp>().ok()).is_some_and(|t| t <= now)
}

impl Controller {
    /// Runs after adoption, on the instances listed at the start of the step.
    pub(super) fn find_leaks(&mut self, now: Timestamp, instances: &[Instance]) -> Result<(), ControllerError> {
        let grace = SignedDuration::try_from(self.settings.leaks.grace).unwrap_or(SignedDuration::MAX);
        let mut found = Vec::new();
        let mut expired_nodes = Vec::new();
        for inst in instances.iter().filter(|i| i.state != InstanceState::Terminated) {
            let live = self.state.nodes.iter().find(|n| n.phase.is_live() && n.instance_id.as_deref() == Some(inst.id.as_str()));
            if let Some(rec) = live {
                if expired(inst, now) && !matches!(rec.phase, crate::state::Phase::Terminating) {
                    expired_nodes.push(rec.intent.clone());
                }
                continue;
            }
            let before = self.state.rent.leaks.iter().find(|l| l.instance_id == inst.id).cloned();
            let first_seen = before.as_ref().map_or(now, |l| l.first_seen);
            let born = inst.launched_at.unwrap_or(first_seen);
            let is_expired = expired(inst, now);
            if !is_expired && now.duration_since(born) < grace {
                continue;
            }
            let intent = inst.tags.get(provider::TAG_INTENT).cloned();
            let why = match (is_expired, intent.as_deref().and_then(|i| self.state.node(i))) {
                (true, _) => "past its expires tag".to_string(),
                (false, Some(rec)) if !rec.phase.is_live() => format!("the state has node {} terminated", rec.intent),
                (false, Some(rec)) => format!("a second instance for node {} (it has {})", rec.intent, rec.instance_id.as_deref().unwrap_or("none")),
                (false, None) => "not in the state".to_string(),
            };
            let mut leak = before.clone().unwrap_or(hybrid_agent_api::Leak {
                instance_id: inst.id.clone(),
                instance_type: inst.instance_type.clone(),
                intent,
                launched_at: inst.launched_at,
                first_seen,
                why: why.clone(),
                terminate_requested_at: None,
            });
            leak.why = why;
            if before.is_none() {
                let action = if self.settings.leaks.terminate || is_expired { "terminating it" } else { "reported, left running (leaks.terminate = false)" };
                warn!(
                    "leak: instance {} ({}) carries our owner tag: {}; {action}",
                    inst.id, inst.instance_type, leak.why
                );
            }
            if self.settings.leaks.terminate || is_expired {
                match self.provider.terminate(&inst.id) {
                    Ok(()) => {
                        if leak.terminate_requested_at.is_none() {
                            self.state.rent.leaks_terminated += 1;
                            leak.terminate_requested_at = Some(now);
                        }
                    }
                    Err(e) => warn!("leak: terminate instance {}: {e}; asked again next step", inst.id),
                }
            }
            found.push(leak);
        }
        // What the provider no longer runs is no longer a leak.
        self.state.rent.leaks = found;
        for intent in expired_nodes {
            warn!("node {intent}: its instance is past its expires tag; terminating");
            self.terminate(&intent, Some("past its expires tag"))?;
        }
        self.save()
    }

    /// The leaks found by the last step (`GET /v1/leaks`).
    pub fn leaks(&self) -> Vec<hybrid_agent_api::Leak> {
        self.state.rent.leaks.clone()
    }
}
