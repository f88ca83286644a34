//! The cost ledger: one row per node, from what the provider reported.

use jiff::Timestamp;
use serde::Serialize;

use crate::state::State;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    pub node: String,
    pub instance_id: Option<String>,
    pub instance_type: String,
    pub start: Option<Timestamp>,
    /// `None` while it runs (hours then count up to now).
    pub stop: Option<Timestamp>,
    pub hours: f64,
    pub price_per_hour: f64,
    pub cost: f64,
    /// The price is a guess: the provider gave none.
    pub estimate: bool,
}

/// Hours are counted from the provider's start to its stop (or `now`), per node.
pub fn ledger(state: &State, now: Timestamp) -> Vec<LedgerRow> {
    state
        .nodes
        .iter()
        .map(|n| {
            let hours = match n.started_at {
                Some(start) => n.stopped_at.unwrap_or(now).duration_since(start).as_secs_f64().max(0.0) / 3600.0,
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
