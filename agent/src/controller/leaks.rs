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

use std::collections::BTreeMap;
use std::time::Duration;

use hybrid_agent_api::Leak;
use jiff::{SignedDuration, Timestamp};
use tracing::warn;

use super::{Controller, ControllerError};
use crate::provider::{self, Instance, InstanceState};
use crate::state::{Phase, State};

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

/// What the step does about one instance the provider lists as not terminated.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The instance of a live node.
    Ours,
    /// The instance of a live node (its intent) past its `expires` tag.
    OursExpired(String),
    /// Not ours, but younger than the grace period.
    Young,
    Leak { why: String, expired: bool },
}

/// Decides about `inst` (a pure function of the state, the policy and the time). `born`: when
/// it was launched, or first listed when the provider does not say.
fn classify(inst: &Instance, state: &State, born: Timestamp, grace: SignedDuration, now: Timestamp) -> Verdict {
    let is_expired = expired(inst, now);
    let live = state.nodes.iter().find(|n| n.phase.is_live() && n.instance_id.as_deref() == Some(inst.id.as_str()));
    if let Some(rec) = live {
        return match is_expired && rec.phase != Phase::Terminating {
            true => Verdict::OursExpired(rec.intent.clone()),
            false => Verdict::Ours,
        };
    }
    if !is_expired && now.duration_since(born) < grace {
        return Verdict::Young;
    }
    let why = match (is_expired, inst.tags.get(provider::TAG_INTENT).and_then(|i| state.node(i))) {
        (true, _) => "past its expires tag".to_string(),
        (false, Some(rec)) if !rec.phase.is_live() => format!("the state has node {} terminated", rec.intent),
        (false, Some(rec)) => format!("a second instance for node {} (it has {})", rec.intent, rec.instance_id.as_deref().unwrap_or("none")),
        (false, None) => "not in the state".to_string(),
    };
    Verdict::Leak { why, expired: is_expired }
}

impl Controller {
    /// Runs after adoption, on the instances listed at the start of the step.
    pub(super) fn find_leaks(&mut self, now: Timestamp, instances: &[Instance]) -> Result<(), ControllerError> {
        let grace = SignedDuration::try_from(self.settings.leaks.grace).unwrap_or(SignedDuration::MAX);
        let (mut found, mut seen, mut expired_nodes) = (Vec::new(), BTreeMap::new(), Vec::new());
        for inst in instances.iter().filter(|i| i.state != InstanceState::Terminated) {
            let first_seen = self.state.rent.first_seen.get(&inst.id).copied().unwrap_or(now);
            match classify(inst, &self.state, inst.launched_at.unwrap_or(first_seen), grace, now) {
                Verdict::Ours => {}
                Verdict::OursExpired(intent) => expired_nodes.push(intent),
                Verdict::Young => {
                    seen.insert(inst.id.clone(), first_seen);
                }
                Verdict::Leak { why, expired } => {
                    seen.insert(inst.id.clone(), first_seen);
                    found.push(self.handle_leak(inst, why, expired, first_seen, now));
                }
            }
        }
        // What the provider no longer runs is no longer a leak.
        (self.state.rent.leaks, self.state.rent.first_seen) = (found, seen);
        for intent in expired_nodes {
            warn!("node {intent}: its instance is past its expires tag; terminating");
            self.terminate(&intent, Some("past its expires tag"))?;
        }
        self.save()
    }

    /// Logs a new leak, and terminates it when configured (or expired).
    fn handle_leak(&mut self, inst: &Instance, why: String, expired: bool, first_seen: Timestamp, now: Timestamp) -> Leak {
        let before = self.state.rent.leaks.iter().find(|l| l.instance_id == inst.id).cloned();
        let terminate = self.settings.leaks.terminate || expired;
        if before.is_none() {
            let action = if terminate { "terminating it" } else { "reported, left running (leaks.terminate = false)" };
            warn!("leak: instance {} ({}) carries our owner tag: {why}; {action}", inst.id, inst.instance_type);
        }
        let mut leak = before.unwrap_or_else(|| Leak {
            instance_id: inst.id.clone(),
            instance_type: inst.instance_type.clone(),
            intent: inst.tags.get(provider::TAG_INTENT).cloned(),
            launched_at: inst.launched_at,
            first_seen,
            why: String::new(),
            terminate_requested_at: None,
        });
        leak.why = why;
        if terminate {
            match self.provider.terminate(&inst.id) {
                Ok(()) if leak.terminate_requested_at.is_none() => {
                    self.state.rent.leaks_terminated += 1;
                    leak.terminate_requested_at = Some(now);
                }
                Ok(()) => {}
                Err(e) => warn!("leak: terminate instance {}: {e}; asked again next step", inst.id),
            }
        }
        leak
    }

    /// The leaks found by the last step (`GET /v1/leaks`).
    pub fn leaks(&self) -> Vec<Leak> {
        self.state.rent.leaks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn inst(id: &str, intent: &str, expires: &str) -> Instance {
        let tags = [(provider::TAG_OWNER, "o"), (provider::TAG_INTENT, intent), (provider::TAG_EXPIRES, expires)];
        Instance {
            id: id.into(),
            instance_type: "t".into(),
            state: InstanceState::Running,
            tags: tags.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            launched_at: None,
            terminated_at: None,
        }
    }

    #[test]
    fn each_listed_instance_is_ours_young_or_a_leak_saying_why_by_id_never_by_tag_alone() {
        let now: Timestamp = "2026-03-02T12:00:00Z".parse().unwrap();
        let grace = SignedDuration::from_mins(10);
        let old = now.checked_sub(SignedDuration::from_mins(11)).unwrap();
        let mut state = State::default();
        let mut live = NodeRecord::intended("o", "n0001", "tok".into(), old);
        (live.phase, live.instance_id) = (Phase::Running, Some("i-1".into()));
        let mut gone = NodeRecord::intended("o", "n0002", "tok".into(), old);
        (gone.phase, gone.instance_id) = (Phase::Terminated, Some("i-2".into()));
        state.nodes = vec![live, gone];
        let later = "2099-01-01T00:00:00Z";
        assert_eq!(classify(&inst("i-1", "n0001", later), &state, old, grace, now), Verdict::Ours);
        assert_eq!(classify(&inst("i-1", "n0001", "2026-03-02T11:00:00Z"), &state, old, grace, now), Verdict::OursExpired("n0001".into()));
        // Carrying a live node's intent tag does not make an instance ours: its id does.
        let second = classify(&inst("i-9", "n0001", later), &state, old, grace, now);
        assert_eq!(second, Verdict::Leak { why: "a second instance for node n0001 (it has i-1)".into(), expired: false });
        let billed = classify(&inst("i-2", "n0002", later), &state, old, grace, now);
        assert_eq!(billed, Verdict::Leak { why: "the state has node n0002 terminated".into(), expired: false });
        let unknown = classify(&inst("i-3", "n0777", later), &state, old, grace, now);
        assert_eq!(unknown, Verdict::Leak { why: "not in the state".into(), expired: false });
        assert_eq!(classify(&inst("i-3", "n0777", later), &state, now, grace, now), Verdict::Young, "inside the grace period");
        let expired = classify(&inst("i-4", "n0777", "2026-03-02T11:59:00Z"), &state, now, grace, now);
        assert_eq!(expired, Verdict::Leak { why: "past its expires tag".into(), expired: true }, "expires beats the grace period");
    }
}
