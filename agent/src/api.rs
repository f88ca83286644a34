//! The controller's local API: HTTP/1.1, one request per connection, JSON bodies, on a TCP
//! address (`api.listen`, loopback by default) and on `STATE_DIR/api.sock` (0600; nodes of the
//! `local` provider reach it through the shared file system).
//!
//! Every request carries `Authorization: Bearer TOKEN`; anything else gets 401 and nothing
//! runs. Admin calls (`hybridctl nodes|cost`, tests) use the token in `api.token_file` (created
//! 0600 when missing; refused when group or others can read it). A node uses its own token,
//! given in its bootstrap, valid only for its own report.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `POST /v1/nodes/NODE/report` | that node | body: `NodeReport`; answer: `Directive` |
//! | `GET /v1/nodes` | admin | the node records (tokens left out) |
//! | `POST /v1/nodes/rent` | admin | rent one node now (inside the window's rules) |
//! | `POST /v1/nodes/NODE/drain` | admin | drain that node |
//! | `GET /v1/cost` | admin | the ledger |
//!
//! The server is deliberately small (no framework): a handful of calls a minute, bounded
//! request sizes (16 KiB of headers, 1 MiB of body), a read timeout per connection.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use tracing::warn;

use crate::controller::{Controller, ControllerError};
use crate::state::NodeReport;

const MAX_HEADERS: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Compares two tokens in time independent of where they differ.
pub fn token_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes from the OS, as 64 hex characters.
pub fn random_token() -> io::Result<String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| io::Error::other(format!("read random bytes: {e}")))?;
    Ok(hex::encode(b))
}

/// Reads the admin token, creating the file (0600, 64 hex characters) when missing.
pub fn load_or_create_token(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(io::Error::other(format!(
            "token file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        ))),
        Ok(_) => {
            let t = std::fs::read_to_string(path)?.trim().to_string();
            if t.len() < 16 {
                return Err(io::Error::other(format!("token file {}: token shorter than 16 characters", path.display())));
            }
            Ok(t)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = random_token()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Response {
    pub fn ok(body: serde_json::Value) -> Self {
        Response { status: 200, body }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response { status, body: json!({ "error": message.into() }) }
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
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
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
    Ok(Request { method, path, headers, body })
}

pub fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let body = serde_json::to_vec(&resp.body).map_err(io::Error::other)?;
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    write!(w, "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", resp.status, body.len())?;
    w.write_all(&body)?;
    w.flush()
}

/// A listening socket of the API.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `unix:/path` (0600, a stale socket file replaced) or `HOST:PORT`.
    pub fn bind(addr: &str) -> io::Result<Listener> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            crate::state::set_mode(Path::new(path), 0o600)?;
            Ok(Listener::Unix(l))
        } else {
            Ok(Listener::Tcp(TcpListener::bind(addr)?))
        }
    }

    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_default(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept()?.0),
            Listener::Unix(l) => Box::new(l.accept()?.0),
        })
    }
}

trait Stream: Read + Write + Send {
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

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `listener` on a named thread until `stop` is set (polled every 50 ms).
pub fn serve(listener: Listener, handler: Handler, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking()?;
    std::thread::Builder::new().name("agent-api".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(mut s) => {
                    if let Err(e) = handle_one(&mut s, &handler) {
                        warn!("api: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    warn!("api: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })
}

fn handle_one(s: &mut Box<dyn Stream>, handler: &Handler) -> io::Result<()> {
    s.prepare()?;
    let resp = match read_request(&mut BufReader::new(&mut *s)) {
        Ok(req) => handler(&req),
        Err(e) => Response::error(400, e.to_string()),
    };
    write_response(s, &resp)
}

/// One call to the API at `addr` (`unix:/path` or `HOST:PORT`): status and JSON body.
pub fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&serde_json::Value>) -> io::Result<Response> {
    let body = body.map(serde_json::to_vec).transpose().map_err(io::Error::other)?.unwrap_or_default();
    let mut s: Box<dyn Stream> = match addr.strip_prefix("unix:") {
        Some(p) => Box::new(UnixStream::connect(p)?),
        None => Box::new(TcpStream::connect(addr.trim_start_matches("http://"))?),
    };
    s.prepare()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: agent\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    s.write_all(&body)?;
    s.flush()?;
    let mut raw = Vec::new();
    s.take(MAX_BODY as u64 + MAX_HEADERS as u64).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("response cut"))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let body = if body.is_empty() { serde_json::Value::Null } else { serde_json::from_str(body).map_err(|e| bad(&e.to_string()))? };
    Ok(Response { status, body })
}

/// The controller's routes (see the table at the top).
pub fn route(ctrl: &Mutex<Controller>, admin_token: &str, req: &Request) -> Response {
    let Some(token) = req.bearer() else {
        return Response::error(401, "missing Authorization: Bearer token");
    };
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let mut c = ctrl.lock().unwrap_or_else(|p| p.into_inner());
    if let (["v1", "nodes", node, "report"], "POST") = (segs.as_slice(), req.method.as_str()) {
        let report: NodeReport = match serde_json::from_slice(&req.body) {
            Ok(r) => r,
            Err(e) => return Response::error(400, format!("report: {e}")),
        };
        return match c.report(node, token, report) {
            Ok(d) => Response::ok(json!(d)),
            Err(ControllerError::BadToken(_)) | Err(ControllerError::UnknownNode(_)) => Response::error(401, "not this node's token"),
            Err(e) => Response::error(500, e.to_string()),
        };
    }
    if !token_eq(token, admin_token) {
        return Response::error(401, "wrong token");
    }
    match (segs.as_slice(), req.method.as_str()) {
        (["v1", "nodes"], "GET") => {
            let mut nodes = serde_json::to_value(&c.state().nodes).unwrap_or_default();
            if let Some(list) = nodes.as_array_mut() {
                list.iter_mut().filter_map(|n| n.as_object_mut()).for_each(|n| {
                    n.remove("token");
                });
            }
            Response::ok(nodes)
        }
        (["v1", "cost"], "GET") => Response::ok(json!(c.ledger())),
        (["v1", "nodes", "rent"], "POST") => {
            let now = c.now();
            match c.rent(now) {
                Ok(Some(node)) => Response::ok(json!({ "node": node })),
                Ok(None) => Response::error(409, "could not rent now (see the controller's log)"),
                Err(e) => Response::error(500, e.to_string()),
            }
        }
        (["v1", "nodes", node, "drain"], "POST") => match c.drain(node) {
            Ok(()) => Response::ok(json!({ "node": node, "draining": true })),
            Err(ControllerError::UnknownNode(n)) => Response::error(404, format!("no node {n}")),
            Err(e) => Response::error(500, e.to_string()),
        },
        _ => Response::error(404, format!("no route {} {}", req.method, req.path)),
    }
}

#[cfg(test)]
mod tests;
