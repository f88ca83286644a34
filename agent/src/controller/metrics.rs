//! The controller's metrics, in the Prometheus text format (`GET /metrics`, admin token):
//! computed from the persisted state at each scrape, so they survive restarts.

use std::fmt::Write;

use crate::state::{Phase, State};

/// Renders the metrics of `state` (names in doc/METRICS.md, "hybrid-agent").
pub fn render(state: &State) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let missed = state.nights.iter().filter(|n| n.deadline_missed).count() as f64;
    metric("hybrid_agent_merge_deadline_missed_total", "counter", "merge windows that closed with branches not merged", &[("", missed)]);
    let last_missed = state.nights.last().is_some_and(|n| n.deadline_missed) as u8 as f64;
    metric("hybrid_agent_merge_deadline_missed", "gauge", "1 when the latest merge window closed with branches not merged", &[("", last_missed)]);
    let unmerged = state.nodes.iter().filter(|n| !n.merged && n.last_report.as_ref().is_some_and(|r| r.head.is_some())).count() as f64;
    metric("hybrid_agent_unmerged_branches", "gauge", "branches of nodes that pushed and are not merged into home yet", &[("", unmerged)]);
    let phases = [Phase::Intended, Phase::Running, Phase::Draining, Phase::Terminating, Phase::Terminated];
    let labels: Vec<String> = phases.iter().map(|p| format!("{{phase=\"{}\"}}", p.as_str())).collect();
    let counts: Vec<(&str, f64)> =
        phases.iter().zip(&labels).map(|(p, l)| (l.as_str(), state.nodes.iter().filter(|n| n.phase == *p).count() as f64)).collect();
    metric("hybrid_agent_nodes", "gauge", "nodes the controller asked for, by phase", &counts);
    let lost: u64 = state.nodes.iter().filter_map(|n| n.loss.as_ref()).map(|l| l.bytes).sum();
    metric("hybrid_agent_lost_bytes_total", "counter", "unpushed bytes nodes went away with (hard deadline, killed, released)", &[("", lost as f64)]);
    let unpushed: u64 =
        state.nodes.iter().filter(|n| n.phase.is_live()).filter_map(|n| n.last_report.as_ref()).map(|r| r.unpushed_bytes).sum();
    metric("hybrid_agent_unpushed_bytes", "gauge", "unpushed bytes the live nodes last reported", &[("", unpushed as f64)]);
    out
}
