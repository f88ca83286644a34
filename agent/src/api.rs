//! The controller's local API server: listeners on a TCP address (`api.listen`, loopback by
//! default) and on `STATE_DIR/api.sock` (0600; nodes of the `local` provider reach it through
//! the shared file system), and the routes. The wire format, the route table and the types of
//! the answers are in the `hybrid-agent-api` crate (shared with `hybridctl nodes|cost`).
//!
//! Every request carries `Authorization: Bearer TOKEN`; anything else gets 401 and nothing
//! runs. Admin calls (`hybridctl nodes|cost`, tests) use the token in `api.token_file` (created
//! 0600 when missing; refused when group or others can read it). A node uses its own token,
//! given in its bootstrap, valid only for its own report.
//!
//! The server is deliberately small (no framework): a handful of calls a minute, bounded
//! request sizes (16 KiB of headers, 1 MiB of body), a read timeout per connection, a thread
//! per connection (at most `MAX_CONNECTIONS`). Routes never take the controller: see
//! `controller::desk` (reads from the published state, mutations queued for the loop).

use std::io::{self, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use tracing::warn;

pub use hybrid_agent_api::{call, read_request, token_eq, write_response, Request, Response, Stream, MAX_BODY, MAX_HEADERS};

use crate::controller::{ControllerError, Desk, ANSWER_WAIT};
use crate::state::NodeReport;

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

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `listener` on a named thread until `stop` is set (polled every 50 ms), each
/// connection on its own thread (a mutation waits for the reconcile loop; reads must not wait
/// behind it), at most [`MAX_CONNECTIONS`] at once.
pub fn serve(listener: Listener, handler: Handler, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking()?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("agent-api".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if open.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            match listener.accept() {
                Ok(mut s) => {
                    let (handler, mine) = (handler.clone(), open.clone());
                    open.fetch_add(1, Ordering::AcqRel);
                    let spawned = std::thread::Builder::new().name("agent-api-conn".into()).spawn(move || {
                        if let Err(e) = handle_one(&mut s, &handler) {
                            warn!("api: {e}");
                        }
                        mine.fetch_sub(1, Ordering::AcqRel);
                    });
                    if let Err(e) = spawned {
                        open.fetch_sub(1, Ordering::AcqRel);
                        warn!("api: start a connection thread: {e}");
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

/// The controller's routes (see the table at the top). Reads answer from what the loop last
/// published; mutations wait for the loop to apply them, never for a step's provider calls
/// (`controller::desk`).
pub fn route(desk: &Desk, admin_token: &str, req: &Request) -> Response {
    let Some(token) = req.bearer() else {
        return Response::error(401, "missing Authorization: Bearer token");
    };
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    if let (["v1", "nodes", node, "report"], "POST") = (segs.as_slice(), req.method.as_str()) {
        let report: NodeReport = match serde_json::from_slice(&req.body) {
            Ok(r) => r,
            Err(e) => return Response::error(400, format!("report: {e}")),
        };
        return match desk.report(node, token, report) {
            Ok(d) => Response::ok(json!(d)),
            Err(ControllerError::BadToken(_)) | Err(ControllerError::UnknownNode(_)) => Response::error(401, "not this node's token"),
            Err(e) => Response::error(500, e.to_string()),
        };
    }
    if !token_eq(token, admin_token) {
        return Response::error(401, "wrong token");
    }
    let busy = || Response::error(503, format!("the controller did not get to it within {}s; it stays queued", ANSWER_WAIT.as_secs()));
    let done = |r: Option<Result<(), ControllerError>>, node: &str, what: &str| match r {
        Some(Ok(())) => Response::ok(json!({ "node": node, what: true })),
        Some(Err(ControllerError::UnknownNode(n))) => Response::error(404, format!("no node {n}")),
        Some(Err(e)) => Response::error(500, e.to_string()),
        None => busy(),
    };
    match (segs.as_slice(), req.method.as_str()) {
        (["v1", "nodes"], "GET") => Response::ok(json!(desk.nodes())),
        (["metrics"], "GET") => Response::text(desk.metrics()),
        (["v1", "nights"], "GET") => Response::ok(json!(desk.nights())),
        (["v1", "budget"], "GET") => Response::ok(json!(desk.budget())),
        (["v1", "leaks"], "GET") => Response::ok(json!(desk.state().rent.leaks)),
        (["v1", "cost"], "GET") => match req.query.get("since").map(|s| desk.parse_since(s)).transpose() {
            Ok(since) => Response::ok(json!(desk.ledger_since(since))),
            Err(e) => Response::error(400, e),
        },
        (["v1", "store"], "GET") => match req.query.get("since").map(|s| desk.parse_since(s)).transpose() {
            Ok(since) => Response::ok(json!(desk.store_days(since))),
            Err(e) => Response::error(400, e),
        },
        (["v1", "nodes", "rent"], "POST") => match desk.rent() {
            Some(Ok(Ok(node))) => Response::ok(json!({ "node": node })),
            Some(Ok(Err(why))) => Response::error(409, why),
            Some(Err(e)) => Response::error(500, e.to_string()),
            None => busy(),
        },
        (["v1", "nodes", node, "drain"], "POST") => done(desk.drain(node), node, "draining"),
        (["v1", "nodes", node, "release"], "POST") => done(desk.release(node), node, "released"),
        _ => Response::error(404, format!("no route {} {}", req.method, req.path)),
    }
}

#[cfg(test)]
mod tests;
