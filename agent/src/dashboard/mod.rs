//! The controller's web dashboard: one static page (`page.html`, embedded in the binary; no
//! external scripts or styles) and the JSON it draws from.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `GET /dashboard` | anyone who reaches the address | the page (it holds no data) |
//! | `POST /v1/dashboard/login` | admin token | a one-time login path, valid 5 minutes: `{"path", "expires_secs"}` |
//! | `GET /dashboard/login?code=C` | the browser | trades the code for a session cookie, redirects to `/dashboard` |
//! | `GET /dashboard/data` | session cookie or admin token | volume, nodes with cost, unpushed bytes over time, pushes, nights |
//!
//! **Auth.** The admin token never goes into a URL: `hybridctl dashboard` spends it on a
//! one-time code and prints `http://ADDR/dashboard/login?code=…`. The code is good once, for
//! five minutes; it buys a session cookie (`HttpOnly`, `SameSite=Strict`, `Path=/dashboard`,
//! 12 hours, held in memory: a restart of the agent logs everyone out). The cookie opens only
//! `GET /dashboard/data`, which reads; every route that changes something still wants the
//! bearer token, so a page elsewhere cannot act through a logged-in browser.
//!
//! **History.** The unpushed bytes over time and the pushes are sampled at each reconcile step
//! ([`Dashboard::sample`]) and kept in memory, the last [`KEEP`] samples: the chart starts
//! empty after a restart. Node records, costs and nights come from the persisted state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use crate::api::{random_token, token_eq, Request, Response};
use crate::controller::Desk;
use crate::state::{Phase, State};

/// The page, as served.
pub const PAGE: &str = include_str!("page.html");
/// Samples (and pushes) kept: a day at one step a minute.
pub const KEEP: usize = 1440;
pub const COOKIE: &str = "hybrid_dashboard";
const CODE_TTL: Duration = Duration::from_secs(300);
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Pending codes and live sessions kept at most (the oldest go first).
const MAX_GRANTS: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Agent time.
    pub at: Timestamp,
    /// Unpushed bytes summed over the running and draining nodes' last reports.
    pub unpushed_bytes: u64,
    pub nodes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Push {
    pub node: String,
    pub at: Timestamp,
    /// The layer the push made (the node's head after it).
    pub head: Option<u64>,
}

#[derive(Default)]
struct Inner {
    codes: VecDeque<(String, Instant)>,
    sessions: VecDeque<(String, Instant)>,
    history: VecDeque<Sample>,
    pushes: VecDeque<Push>,
    /// Each node's head at the last sample.
    last_head: BTreeMap<String, u64>,
}

/// The dashboard's memory: login codes, sessions, sampled history.
#[derive(Default)]
pub struct Dashboard {
    inner: Mutex<Inner>,
}

fn bounded<T>(q: &mut VecDeque<T>, max: usize, item: T) {
    if q.len() >= max {
        q.pop_front();
    }
    q.push_back(item);
}

/// Spends a grant of `q` equal to `key` that has not expired; drops expired ones.
fn take_grant(q: &mut VecDeque<(String, Instant)>, key: &str, spend: bool) -> bool {
    let now = Instant::now();
    q.retain(|(_, until)| *until > now);
    match q.iter().position(|(k, _)| token_eq(k, key)) {
        Some(i) => {
            if spend {
                q.remove(i);
            }
            true
        }
        None => false,
    }
}

impl Dashboard {
    pub fn new() -> Dashboard {
        Dashboard::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the unpushed bytes now and the pushes (new layers) made since the last sample (called after
    /// each reconcile step).
    pub fn sample(&self, state: &State, now: Timestamp) {
        let mut d = self.lock();
        let live: Vec<_> = state.nodes.iter().filter(|n| matches!(n.phase, Phase::Running | Phase::Draining)).collect();
        let unpushed_bytes = live.iter().filter_map(|n| n.last_report.as_ref()).map(|r| r.unpushed_bytes).sum();
        bounded(&mut d.history, KEEP, Sample { at: now, unpushed_bytes, nodes: live.len() });
        // A push made a new layer: the node's head moved since the last sample.
        for n in &state.nodes {
            let Some(r) = n.last_report.as_ref() else { continue };
            let Some(head) = r.head else { continue };
            if d.last_head.insert(n.intent.clone(), head) != Some(head) {
                let at = r.last_push_at.unwrap_or(r.at);
                bounded(&mut d.pushes, KEEP, Push { node: n.intent.clone(), at, head: Some(head) });
            }
        }
    }

    /// What the page draws.
    pub fn data(&self, desk: &Desk) -> serde_json::Value {
        let d = self.lock();
        let state = desk.state();
        let ledger = desk.ledger_since(None);
        let nodes: Vec<_> = state
            .nodes
            .iter()
            .zip(&ledger)
            .map(|(n, row)| {
                let r = n.last_report.as_ref();
                json!({
                    "node": n.intent,
                    "phase": n.phase,
                    "instance_type": n.instance_type,
                    "branch": n.branch,
                    "unpushed_bytes": r.map_or(0, |r| r.unpushed_bytes),
                    "last_push_at": r.and_then(|r| r.last_push_at),
                    "head": r.and_then(|r| r.head),
                    "hours": row.hours,
                    "price_per_hour": row.price_per_hour,
                    "cost": row.cost,
                    "estimate": row.estimate,
                    "merged": n.merged,
                    "lost_bytes": n.loss.as_ref().map_or(0, |l| l.bytes),
                })
            })
            .collect();
        json!({
            "volume": desk.volume(),
            "store": desk.store(),
            "now": desk.now(),
            "nodes": nodes,
            "cost_total": ledger.iter().map(|r| r.cost).sum::<f64>(),
            "history": d.history,
            "pushes": d.pushes,
            "nights": state.nights,
        })
    }

    /// A one-time login code (for `POST /v1/dashboard/login`).
    fn new_code(&self) -> std::io::Result<String> {
        let code = random_token()?;
        bounded(&mut self.lock().codes, MAX_GRANTS, (code.clone(), Instant::now() + CODE_TTL));
        Ok(code)
    }

    /// The dashboard's routes; `None` for any other path (the API's routes then answer).
    pub fn route(&self, desk: &Desk, admin_token: &str, req: &Request) -> Option<Response> {
        let admin = req.bearer().is_some_and(|t| token_eq(t, admin_token));
        let get = req.method == "GET";
        Some(match req.path.trim_end_matches('/') {
            "/dashboard" if get => Response::html(200, PAGE.to_string()),
            "/v1/dashboard/login" if req.method == "POST" => {
                if !admin {
                    return Some(Response::error(401, "wrong or missing token"));
                }
                match self.new_code() {
                    Ok(code) => Response::ok(json!({
                        "path": format!("/dashboard/login?code={code}"),
                        "expires_secs": CODE_TTL.as_secs(),
                    })),
                    Err(e) => Response::error(500, e.to_string()),
                }
            }
            "/dashboard/login" if get => {
                let code = req.query.get("code").map(String::as_str).unwrap_or_default();
                if !take_grant(&mut self.lock().codes, code, true) {
                    return Some(Response::html(
                        401,
                        "<!doctype html><p>This login link was used or has expired: run <code>hybridctl dashboard</code> again.</p>".into(),
                    ));
                }
                let session = match random_token() {
                    Ok(s) => s,
                    Err(e) => return Some(Response::error(500, e.to_string())),
                };
                bounded(&mut self.lock().sessions, MAX_GRANTS, (session.clone(), Instant::now() + SESSION_TTL));
                let cookie =
                    format!("{COOKIE}={session}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs());
                Response::redirect("/dashboard").with_header("Set-Cookie", &cookie)
            }
            "/dashboard/data" if get => {
                let session = req.cookie(COOKIE).is_some_and(|s| take_grant(&mut self.lock().sessions, s, false));
                if !(admin || session) {
                    return Some(Response::error(401, "log in through the link `hybridctl dashboard` prints"));
                }
                Response::ok(self.data(desk))
            }
            _ => return None,
        })
    }
}
