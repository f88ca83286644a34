//! The controller's local API as both sides see it: the wire format (HTTP/1.1, one request per
//! connection, JSON bodies, `Authorization: Bearer TOKEN`, on a TCP address or a unix socket)
//! and the types its answers carry. The server (routes, listeners) is in `hybrid-agent`; the
//! clients are the burst nodes (their reports) and `hybridctl nodes|cost`.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `POST /v1/nodes/NODE/report` | that node | body: `NodeReport`; answer: the controller's directive |
//! | `GET /v1/nodes` | admin | `[NodeView]` |
//! | `POST /v1/nodes/rent` | admin | rent one node now (inside the window's rules): `{"node"}` |
//! | `POST /v1/nodes/NODE/drain` | admin | push everything, then terminate once 0 bytes are unpushed |
//! | `POST /v1/nodes/NODE/release` | admin | terminate now (the node pushes at SIGTERM; what its final report still holds is recorded as lost) |
//! | `GET /v1/cost[?since=DATE]` | admin | `[LedgerRow]` (clipped to DATE: `YYYY-MM-DD` or RFC 3339) |
//! | `GET /v1/store[?since=DATE]` | admin | `[StoreDay]`: object-store requests and bytes per day, by pushes, clones, fetches, merges |
//! | `GET /v1/nights` | admin | `[Night]`: each night's merge report |
//! | `GET /metrics` | admin | the Prometheus text format (doc/METRICS.md, "hybrid-agent") |
//! | `GET /v1/budget` | admin | `BudgetView`: limits, spent and reserved, refused launches |
//! | `GET /v1/leaks` | admin | `[Leak]`: instances with our owner tag the state does not know |

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const MAX_HEADERS: usize = 16 * 1024;
pub const MAX_BODY: usize = 1024 * 1024;
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Compares two tokens in time independent of where they differ.
pub fn token_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without its query (`/v1/cost`).
    pub path: String,
    /// The query's `key=value` pairs, `%XX` decoded (`+` in a time is sent as `%2B`).
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
    }
    /// The value of cookie `name` (the dashboard's session).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let all = self.headers.get("cookie")?;
        all.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// JSON; or, for a text answer (`/metrics`), a JSON string sent as the raw text.
    pub body: serde_json::Value,
    /// The body is plain text (`text/plain`, or the `Content-Type` in `headers`), not JSON.
    pub text: bool,
    /// Extra response headers (the dashboard's `Set-Cookie`, `Location`, `Content-Type`).
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn ok(body: serde_json::Value) -> Self {
        Response { status: 200, body, text: false, headers: vec![] }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response { status, body: serde_json::json!({ "error": message.into() }), text: false, headers: vec![] }
    }
    /// A plain-text answer (the Prometheus text format).
    pub fn text(body: String) -> Self {
        Response { status: 200, body: serde_json::Value::String(body), text: true, headers: vec![] }
    }
    /// An HTML page (the dashboard).
    pub fn html(status: u16, body: String) -> Self {
        Response { status, ..Response::text(body) }.with_header("Content-Type", "text/html; charset=utf-8")
    }
    /// A `303 See Other` to `location`.
    pub fn redirect(location: &str) -> Self {
        Response { status: 303, ..Response::text(String::new()) }.with_header("Location", location)
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// The value of header `name` (case-insensitive) set on this response.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The `error` of an error answer, else the body as text.
    pub fn message(&self) -> String {
        self.body["error"].as_str().map_or_else(|| self.body.to_string(), str::to_string)
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request (bounded sizes).
pub fn read_request(r: &mut impl BufRead) -> io::Result<Request> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.by_ref().take((MAX_HEADERS - head.len()) as u64 + 1).read_line(&mut line)?;
        head.extend_from_slice(line.as_bytes());
        if n == 0 || head.len() > MAX_HEADERS {
            return Err(bad("request head too long or cut"));
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let first = lines.first().ok_or_else(|| bad("empty request"))?;
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect();
    let headers: BTreeMap<String, String> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").map_or(Ok(0), |v| v.parse()).map_err(|_| bad("bad content-length"))?;
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Request { method, path: path.to_string(), query, headers, body })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let (body, kind) = match (&resp.body, resp.text) {
        (serde_json::Value::String(t), true) => (t.as_bytes().to_vec(), "text/plain; version=0.0.4"),
        (b, _) => (serde_json::to_vec(b).map_err(io::Error::other)?, "application/json"),
    };
    let kind = resp.header("content-type").filter(|_| resp.text).unwrap_or(kind);
    let extra: String = resp
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let reason = match resp.status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    write!(w, "HTTP/1.1 {} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n", resp.status, body.len())?;
    w.write_all(&body)?;
    w.flush()
}

/// A connection of the API (TCP or unix socket), with timeouts set by `prepare`.
pub trait Stream: Read + Write + Send {
    fn prepare(&self) -> io::Result<()>;
}
impl Stream for TcpStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(IO_TIMEOUT))?;
        self.set_write_timeout(Some(IO_TIMEOUT))
    }
}
impl Stream for UnixStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(IO_TIMEOUT))?;
        self.set_write_timeout(Some(IO_TIMEOUT))
    }
}

/// Connects to `addr` (`unix:/path`, `HOST:PORT` or `http://HOST:PORT`), giving up after
/// [`IO_TIMEOUT`].
pub fn connect(addr: &str) -> io::Result<Box<dyn Stream>> {
    let s: Box<dyn Stream> = match addr.strip_prefix("unix:") {
        Some(p) => Box::new(UnixStream::connect(p)?),
        None => {
            use std::net::ToSocketAddrs;
            let host = addr.trim_start_matches("http://").trim_end_matches('/');
            let sa = host.to_socket_addrs()?.next().ok_or_else(|| bad(&format!("{host}: no address")))?;
            Box::new(TcpStream::connect_timeout(&sa, IO_TIMEOUT)?)
        }
    };
    s.prepare()?;
    Ok(s)
}

/// One HTTP/1.1 exchange with `addr` (`Connection: close`): the answer's status, head and
/// body. `headers` go out as given, besides `Host`, `Content-Length` and `Connection`.
pub fn exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<(u16, String, Vec<u8>)> {
    let mut s = connect(addr)?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    // One write: a server that answers after the first segment would cut the rest (EPIPE).
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    s.flush()?;
    let mut raw = Vec::new();
    s.take(MAX_BODY as u64 + MAX_HEADERS as u64).read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("response cut"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    raw.drain(..split + 4);
    Ok((status, head, raw))
}

/// One call to the API at `addr`: status and JSON body. An error is the connection's (no
/// controller there, or it broke off); an HTTP error status is an `Ok` response.
pub fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&serde_json::Value>) -> io::Result<Response> {
    let body = body.map(serde_json::to_vec).transpose().map_err(io::Error::other)?.unwrap_or_default();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
    let (status, head, body) = exchange(addr, method, path, &headers, &body)?;
    let text = head.lines().any(|l| l.to_ascii_lowercase().starts_with("content-type: text/plain"));
    let body = String::from_utf8_lossy(&body);
    let body = match (body.is_empty(), text) {
        (true, _) => serde_json::Value::Null,
        (false, true) => serde_json::Value::String(body.into_owned()),
        (false, false) => serde_json::from_str(&body).map_err(|e| bad(&e.to_string()))?,
    };
    Ok(Response { status, body, text, headers: vec![] })
}

// ---- what the answers carry ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before the launch call; no instance id known yet.
    Intended,
    /// Launched; the node works and reports.
    Running,
    /// Told to push everything and stop writing; waiting for zero unpushed bytes.
    Draining,
    /// Termination asked; waiting for a describe to confirm it.
    Terminating,
    /// Confirmed gone by the provider.
    Terminated,
}

impl Phase {
    /// Whether the node may be costing money.
    pub fn is_live(self) -> bool {
        self != Phase::Terminated
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intended => "intended",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Terminating => "terminating",
            Phase::Terminated => "terminated",
        }
    }
}

/// What a node last said about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub at: Timestamp,
    pub healthy: bool,
    pub unpushed_bytes: u64,
    /// When its branch was last pushed, and the layer that push made.
    pub last_push_at: Option<Timestamp>,
    pub head: Option<u64>,
    /// Files written since the last push, most unpushed bytes first (at most 100, as
    /// `hybridctl status --json` lists them; for the loss report).
    #[serde(default)]
    pub unpushed_paths: Vec<String>,
    /// How many files hold unpushed bytes (`unpushed_paths` may name fewer).
    #[serde(default)]
    pub unpushed_files: u64,
    /// The node's object-store traffic so far (its clone, and the counters of its mount), by
    /// purpose: `push`, `clone`, `fetch`, `merge`. Counters: the controller adds what grew.
    #[serde(default)]
    pub store: BTreeMap<String, StoreTraffic>,
    /// The node has pushed after it was told to drain, and writes nothing more.
    #[serde(default)]
    pub drained: bool,
    /// A spot interruption notice: the provider takes the node back at this time. The node
    /// has pushed and stops; the controller drains it and may rent a replacement.
    #[serde(default)]
    pub interruption: Option<Timestamp>,
}

/// What was lost when a node had to go with unpushed data (hard deadline, or the node died).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub bytes: u64,
    /// The files those bytes were in (the first 100 of `files`).
    pub paths: Vec<String>,
    /// How many files held them.
    #[serde(default)]
    pub files: u64,
    /// The last push that did reach the store: everything written after it is lost.
    pub since: Option<Timestamp>,
    pub reason: String,
}

/// A node as `GET /v1/nodes` shows it (the controller's record without its secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name (its intent id, `n0001`).
    pub node: String,
    pub phase: Phase,
    pub instance_id: Option<String>,
    pub instance_type: String,
    pub branch: String,
    pub requested_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub drain_requested_at: Option<Timestamp>,
    pub last_report: Option<NodeReport>,
    pub loss: Option<Loss>,
    /// Its branch is merged into the home volume.
    pub merged: bool,
}

/// One night's merge window, as the nightly report keeps it (`STATE_DIR/nights/<opened>.json`,
/// `GET /v1/nights`, `hybridctl merge log --nights`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Night {
    /// When this merge window opened (identifies the night).
    pub opened: Timestamp,
    pub merged: Vec<String>,
    pub failed: Vec<String>,
    pub deadline_missed: bool,
    pub alerted: bool,
    /// Conflicts of each merged branch (a merge with conflicts still merges: MERGE.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, usize>,
}

/// One row of the cost ledger: a node, from what the provider reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// An instance that carries this controller's owner tag but is not one of its live nodes
/// (`GET /v1/leaks`; `hybridctl nodes list` marks it). Identified by id, never by address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leak {
    pub instance_id: String,
    pub instance_type: String,
    /// Its `intent` tag, if it has one.
    pub intent: Option<String>,
    pub launched_at: Option<Timestamp>,
    /// When the controller first listed it.
    pub first_seen: Timestamp,
    /// Why it counts as leaked (not in the state; the state has it terminated; past `expires`).
    pub why: String,
    /// Set once the controller asked the provider to terminate it (`leaks.terminate = true`,
    /// or past its `expires` tag).
    pub terminate_requested_at: Option<Timestamp>,
}

/// A launch the budget (or capacity) refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub at: Timestamp,
    pub reason: String,
}

/// The budget as `GET /v1/budget` shows it (`hybridctl cost` prints it under the ledger).
/// `committed` is spent plus reserved: a live node counts its whole reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    /// `None`: no `[budget]` configured.
    pub per_day: Option<f64>,
    pub per_month: Option<f64>,
    /// The day and month the figures are for (`YYYY-MM-DD`, in the burst window's zone).
    pub day: String,
    pub day_spent: f64,
    pub day_committed: f64,
    pub month_spent: f64,
    pub month_committed: f64,
    /// Launches refused since the state was created.
    pub refusals: u64,
    pub last_refusal: Option<Refusal>,
}

/// Object-store requests and bytes of one purpose (`hybridfs_cloud::traffic`, whose JSON it
/// reads: that crate is not linked here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTraffic {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl StoreTraffic {
    pub fn add(&mut self, o: &StoreTraffic) {
        self.requests += o.requests;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }

    /// What counters grew by since `before`; all of `self` when one went down (the process
    /// that counts restarted).
    pub fn since(&self, before: &StoreTraffic) -> StoreTraffic {
        match (self.requests.checked_sub(before.requests), self.bytes_sent.checked_sub(before.bytes_sent), self.bytes_received.checked_sub(before.bytes_received)) {
            (Some(requests), Some(bytes_sent), Some(bytes_received)) => StoreTraffic { requests, bytes_sent, bytes_received },
            _ => *self,
        }
    }
}

/// One day of the ledger's object-store traffic (the day in the burst window's zone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// By purpose: `push`, `clone`, `fetch`, `merge` (the nodes' and the controller's own).
    pub traffic: BTreeMap<String, StoreTraffic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_target_is_split_into_path_and_query() {
        let r = read_request(&mut "GET /v1/cost?since=2026-12-01&x=08:00%2B03:00 HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n".as_bytes()).unwrap();
        assert_eq!((r.path.as_str(), r.bearer()), ("/v1/cost", Some("abc")));
        assert_eq!(r.query.get("since").map(String::as_str), Some("2026-12-01"));
        assert_eq!(r.query.get("x").map(String::as_str), Some("08:00+03:00"));
    }

    #[test]
    fn oversized_or_cut_requests_are_rejected() {
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(read_request(&mut big.as_bytes()).is_err());
        assert!(read_request(&mut "GET / HTTP/1.1\r\nHost: x\r\n".as_bytes()).is_err());
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEADERS));
        assert!(read_request(&mut long.as_bytes()).is_err());
        let ok = read_request(&mut "GET /v1/nodes HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n".as_bytes()).unwrap();
        assert_eq!((ok.path.as_str(), ok.bearer()), ("/v1/nodes", Some("abc")));
    }

    #[test]
    fn an_answer_says_its_error() {
        assert_eq!(Response::error(401, "wrong token").message(), "wrong token");
        assert_eq!(Response::ok(serde_json::json!([1])).message(), "[1]");
    }
}
