//! The cost ledger: one row per node, from what the provider reported.

use jiff::Timestamp;

pub use hybrid_agent_api::LedgerRow;

use crate::state::State;

/// Hours are counted from the provider's start to its stop (or `now`), per node. With `since`,
/// only nodes still running then or started after are listed, and their hours count from it.
pub fn ledger(state: &State, now: Timestamp, since: Option<Timestamp>) -> Vec<LedgerRow> {
    state
        .nodes
        .iter()
        .filter(|n| since.is_none_or(|s| n.stopped_at.is_none_or(|stop| stop > s)))
        .map(|n| {
            let from = match (n.started_at, since) {
                (Some(start), Some(s)) => Some(start.max(s)),
                (start, _) => start,
            };
            let hours = match from {
                Some(from) => n.stopped_at.unwrap_or(now).duration_since(from).as_secs_f64().max(0.0) / 3600.0,
                None => 0.0,
            };
            LedgerRow {
                node: n.intent.clone(),
                instance_id: n.instance_id.clone(),
                instance_type: n.instance_type.clone(),
                start: n.started_at,
                stop: n.stopped_at,
                hours,
                price_per_hour: n.price_per_hour,
                cost: hours * n.price_per_hour,
                estimate: n.price_is_estimate,
            }
        })
        .collect()
}
