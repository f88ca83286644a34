//! `hybridctl nodes list|rent|drain|release` and `hybridctl cost`: calls to the hybrid-agent
//! controller's local API (`hybrid-agent-api`: HTTP on a unix socket or a TCP address, with
//! the admin token from a 0600 file). No volume is opened here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use hybrid_agent_api::{BudgetView, LedgerRow, Leak, Night, NodeView, StoreDay};
use hybridfs_node::NodeError;
use jiff::Timestamp;

use crate::fmt::human_bytes;

/// Where the controller's API is: `--agent` / `HYBRID_AGENT`, else its default state socket.
pub const DEFAULT_ADDR: &str = "unix:/var/lib/hybrid-agent/api.sock";
/// The admin token: `--token-file` / `HYBRID_AGENT_TOKEN_FILE`, else the config example's.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/hybridfs/agent.token";

pub enum NodesCmd {
    List,
    Rent,
    Drain(String),
    Release(String),
}

pub struct Agent {
    addr: String,
    token_file: PathBuf,
}

impl Agent {
    /// The controller at `addr` with the admin token in `token_file`, as the config resolved
    /// them (`agent.address`, `agent.token_file`: flag, else `$HYBRID_AGENT` and
    /// `$HYBRID_AGENT_TOKEN_FILE`, else the file, else [`DEFAULT_ADDR`], [`DEFAULT_TOKEN_FILE`]).
    pub fn new(addr: &str, token_file: &Path) -> Agent {
        Agent { addr: addr.to_string(), token_file: token_file.to_path_buf() }
    }

    /// One call; the answer's body on 200, else one line saying what refused it.
    fn call(&self, method: &str, path: &str) -> Result<serde_json::Value> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("read the agent's token file {} (--token-file or HYBRID_AGENT_TOKEN_FILE)", self.token_file.display()))?;
        let resp = hybrid_agent_api::call(&self.addr, method, path, Some(token.trim()), None).map_err(|e| {
            anyhow!("no hybrid-agent controller answers at {}: {e} (is `hybrid-agent controller` running? --agent or HYBRID_AGENT names its API)", self.addr)
        })?;
        match resp.status {
            200 => Ok(resp.body),
            401 => bail!("the controller at {} refused the token in {}: {}", self.addr, self.token_file.display(), resp.message()),
            400 | 404 => Err(NodeError::NotFound(format!("{}: {}", self.addr, resp.message())).into()),
            s => bail!("the controller at {} answered HTTP {s}: {}", self.addr, resp.message()),
        }
    }
}

fn when(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| t.strftime("%Y-%m-%d %H:%MZ").to_string())
}

pub fn nodes(agent: &Agent, cmd: NodesCmd, json: bool) -> Result<ExitCode> {
    let (method, path, done) = match &cmd {
        NodesCmd::List => ("GET", "/v1/nodes".to_string(), String::new()),
        NodesCmd::Rent => ("POST", "/v1/nodes/rent".to_string(), String::new()),
        NodesCmd::Drain(n) => (
            "POST",
            format!("/v1/nodes/{n}/drain"),
            format!("node {n}: draining (it pushes everything; it is terminated once it reports 0 unpushed bytes)"),
        ),
        NodesCmd::Release(n) => (
            "POST",
            format!("/v1/nodes/{n}/release"),
            format!("node {n}: released (it pushes at SIGTERM and is terminated; what it could not push is reported as lost)"),
        ),
    };
    if let NodesCmd::Drain(n) | NodesCmd::Release(n) = &cmd {
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return crate::usage(format!("bad node name {n:?}"));
        }
    }
    let body = agent.call(method, &path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    match cmd {
        NodesCmd::List => {
            print_nodes(&serde_json::from_value::<Vec<NodeView>>(body).context("read the controller's node list")?);
            // A controller from before leak detection has no such route: nothing to mark.
            if let Ok(leaks) = agent.call("GET", "/v1/leaks").and_then(|b| Ok(serde_json::from_value::<Vec<Leak>>(b)?)) {
                print_leaks(&leaks);
            }
        }
        NodesCmd::Rent => println!("rented node {} (hybridctl nodes list shows it boot)", body["node"].as_str().unwrap_or("?")),
        NodesCmd::Drain(_) | NodesCmd::Release(_) => println!("{done}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_nodes(nodes: &[NodeView]) {
    if nodes.is_empty() {
        println!("no nodes");
        return;
    }
    println!("{:<7} {:<11} {:<14} {:<8} {:<17} {:<17} {:>10} {:<17} MERGED", "NODE", "PHASE", "INSTANCE", "TYPE", "STARTED", "STOPPED", "UNPUSHED", "LAST PUSH");
    for n in nodes {
        let r = n.last_report.as_ref();
        let unpushed = r.map_or_else(|| "-".into(), |r| human_bytes(r.unpushed_bytes));
        println!(
            "{:<7} {:<11} {:<14} {:<8} {:<17} {:<17} {:>10} {:<17} {}",
            n.node,
            n.phase.as_str(),
            n.instance_id.as_deref().unwrap_or("-"),
            if n.instance_type.is_empty() { "-" } else { &n.instance_type },
            when(n.started_at),
            when(n.stopped_at),
            unpushed,
            when(r.and_then(|r| r.last_push_at)),
            if n.merged { "yes" } else { "no" }
        );
    }
    for n in nodes {
        if let Some(l) = &n.loss {
            println!("{}: LOST {} in {} files since the push at {}: {}", n.node, human_bytes(l.bytes), l.files, when(l.since), l.reason);
            for p in &l.paths {
                println!("{}:   {p}", n.node);
            }
        }
    }
}

fn print_leaks(leaks: &[Leak]) {
    for l in leaks {
        let action = match l.terminate_requested_at {
            Some(t) => format!("termination asked at {}", when(Some(t))),
            None => "left running (leaks.terminate = false)".into(),
        };
        println!(
            "LEAK {} ({}, launched {}, intent {}): carries this controller's owner tag: {}; {action}",
            l.instance_id,
            if l.instance_type.is_empty() { "-" } else { &l.instance_type },
            when(l.launched_at),
            l.intent.as_deref().unwrap_or("-"),
            l.why
        );
    }
}

/// The budget line under the ledger: committed (spent + reserved) against the limits, and
/// the refused launches.
fn print_budget(b: &BudgetView) {
    let limit = |v: Option<f64>| v.map_or_else(|| "no limit".to_string(), |v| format!("{v:.2} USD"));
    println!(
        "budget {}: {:.2} USD spent, {:.2} spent or reserved, of {}; month {:.2} spent or reserved, of {}",
        b.day,
        b.day_spent,
        b.day_committed,
        limit(b.per_day),
        b.month_committed,
        limit(b.per_month)
    );
    if let Some(r) = &b.last_refusal {
        println!("launches refused: {}; the last at {}: {}", b.refusals, when(Some(r.at)), r.reason);
    }
}

pub fn cost(agent: &Agent, since: Option<String>, json: bool) -> Result<ExitCode> {
    let query = match &since {
        Some(s) if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-:+.".contains(c)) => {
            return crate::usage(format!("bad --since {s:?}: use YYYY-MM-DD or an RFC 3339 time"))
        }
        Some(s) => format!("?since={}", s.replace('+', "%2B")),
        None => String::new(),
    };
    let body = agent.call("GET", &format!("/v1/cost{query}"))?;
    let store = agent.call("GET", &format!("/v1/store{query}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": body, "store": store }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<LedgerRow> = serde_json::from_value(body).context("read the controller's ledger")?;
    let days: Vec<StoreDay> = serde_json::from_value(store).context("read the controller's store ledger")?;
    println!("{:<7} {:<14} {:<8} {:<17} {:<17} {:>8} {:>9} {:>10}", "NODE", "INSTANCE", "TYPE", "START", "STOP", "HOURS", "PRICE/H", "COST");
    for r in &rows {
        println!(
            "{:<7} {:<14} {:<8} {:<17} {:<17} {:>8.2} {:>9.3} {:>10.2}{}",
            r.node,
            r.instance_id.as_deref().unwrap_or("-"),
            r.instance_type,
            when(r.start),
            when(r.stop),
            r.hours,
            r.price_per_hour,
            r.cost,
            if r.estimate { " estimate" } else { "" }
        );
    }
    let (hours, cost): (f64, f64) = rows.iter().fold((0.0, 0.0), |(h, c), r| (h + r.hours, c + r.cost));
    let guessed = rows.iter().any(|r| r.estimate);
    let note = if guessed { " (an estimate: the provider gave no price for some nodes)" } else { "" };
    println!("total: {} nodes, {hours:.2} hours, {cost:.2} USD{note}", rows.len());
    // A controller from before budgets has no such route: the ledger is all there is.
    if let Ok(b) = agent.call("GET", "/v1/budget").and_then(|b| Ok(serde_json::from_value::<BudgetView>(b)?)) {
        print_budget(&b);
    }
    if !days.is_empty() {
        println!("\nobject store:\n{:<10} {:<6} {:>9} {:>11} {:>11}", "DAY", "BY", "REQUESTS", "SENT", "RECEIVED");
    }
    for d in &days {
        for (purpose, t) in &d.traffic {
            println!("{:<10} {:<6} {:>9} {:>11} {:>11}", d.day, purpose, t.requests, human_bytes(t.bytes_sent), human_bytes(t.bytes_received));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hybridctl merge log --nights`: the controller's report of each night's merge window.
pub fn nights(agent: &Agent, json: bool) -> Result<ExitCode> {
    let body = agent.call("GET", "/v1/nights")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let nights: Vec<Night> = serde_json::from_value(body).context("read the controller's nightly reports")?;
    if nights.is_empty() {
        println!("no merge window has opened yet");
    }
    let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
    println!("{:<17} {:<30} {:<30} {}", "OPENED", "MERGED", "FAILED", "DEADLINE");
    for n in &nights {
        let deadline = match (n.deadline_missed, n.alerted) {
            (false, _) => "met",
            (true, true) => "MISSED (alert run)",
            (true, false) => "MISSED",
        };
        println!("{:<17} {:<30} {:<30} {deadline}", when(Some(n.opened)), list(&n.merged), list(&n.failed));
    }
    Ok(ExitCode::SUCCESS)
}

/// `hybridctl status`'s agent line: `agent unix:/...: 2 nodes (1 running, 1 draining); today
/// 3.50 node-hours, 10.50 USD`. None where this host has no token file for it (no controller
/// here, or not an admin); a controller that does not answer is one line saying so.
pub fn status_line(agent: &Agent) -> Option<String> {
    if !agent.token_file.exists() {
        return None;
    }
    let summary = || -> Result<String> {
        let nodes: Vec<NodeView> = serde_json::from_value(agent.call("GET", "/v1/nodes")?).context("read the controller's nodes")?;
        let today = Timestamp::now().strftime("%Y-%m-%d").to_string();
        let rows: Vec<LedgerRow> =
            serde_json::from_value(agent.call("GET", &format!("/v1/cost?since={today}"))?).context("read the controller's ledger")?;
        let mut phases = std::collections::BTreeMap::<&str, usize>::new();
        for n in nodes.iter().filter(|n| n.phase.is_live()) {
            *phases.entry(n.phase.as_str()).or_default() += 1;
        }
        let live: usize = phases.values().sum();
        let phases = phases.iter().map(|(p, c)| format!("{c} {p}")).collect::<Vec<_>>().join(", ");
        let phases = if phases.is_empty() { String::new() } else { format!(" ({phases})") };
        let (hours, cost) = rows.iter().fold((0.0, 0.0), |(h, c), r| (h + r.hours, c + r.cost));
        let estimate = if rows.iter().any(|r| r.estimate) { " (estimate)" } else { "" };
        Ok(format!("{live} nodes{phases}; today {hours:.2} node-hours, {cost:.2} USD{estimate}"))
    };
    Some(match summary() {
        Ok(s) => format!("agent {}: {s}", agent.addr),
        Err(e) => format!("agent {}: {e:#}", agent.addr),
    })
}

/// `hybridctl dashboard`: a one-time login link to the controller's web page (the admin token
/// buys a code good once, for 5 minutes; the browser trades it for a session cookie).
pub fn dashboard(agent: &Agent, json: bool) -> Result<ExitCode> {
    if agent.addr.starts_with("unix:") {
        return crate::usage(format!(
            "the dashboard is served on the controller's TCP address (api.listen), not {}: pass --agent HOST:PORT",
            agent.addr
        ));
    }
    let body = agent.call("POST", "/v1/dashboard/login")?;
    let path = body["path"].as_str().context("the controller's answer has no login path")?;
    let host = agent.addr.trim_start_matches("http://").trim_end_matches('/');
    let url = format!("http://{host}{path}");
    if json {
        println!("{}", serde_json::json!({ "url": url, "expires_secs": body["expires_secs"] }));
    } else {
        println!("{url}");
        eprintln!("open it within {} s; it works once (run hybridctl dashboard again for another)", body["expires_secs"]);
    }
    Ok(ExitCode::SUCCESS)
}
