//! Spot interruption notices, as a node on EC2 sees them: the instance metadata service's
//! `/latest/meta-data/spot/instance-action`, read with IMDSv2.
//!
//! IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` gives a session
//! token; every read sends it as `X-aws-ec2-metadata-token`. A 401 means the token expired: one
//! new token, one retry. `instance-action` answers 404 until EC2 decides to take the instance
//! back, then 200 with `{"action": "terminate", "time": "2026-12-01T10:02:00Z"}` (about two
//! minutes ahead).
//!
//! Only the endpoint in the node's bootstrap is ever contacted (`metadata_endpoint`, set by the
//! `ec2` provider; a test serves its own), and only when the bootstrap names one: a node of any
//! other provider polls nothing. The session token is never logged.
//!
//! [`spawn_watch`] runs the poller as a named thread: on a notice it records the time and sets
//! the node's stop flag, so the node pushes at once and reports the notice (`node.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Deserialize;
use tracing::{debug, warn};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";
const TOKEN_TTL_SECS: u64 = 21600;

/// Reads spot notices from one metadata endpoint.
pub struct SpotWatch {
    /// `host:port` of the endpoint.
    addr: String,
    token: Option<(String, Instant)>,
}

#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: Timestamp,
}

impl SpotWatch {
    /// `endpoint`: `http://HOST[:PORT]` (plain HTTP, as the metadata service speaks).
    pub fn new(endpoint: &str) -> Result<SpotWatch, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| format!("metadata endpoint {endpoint:?}: use http://HOST[:PORT]"))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("metadata endpoint {endpoint:?}: use http://HOST[:PORT]"));
        }
        let addr = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) { host.to_string() } else { format!("{host}:80") };
        Ok(SpotWatch { addr, token: None })
    }

    /// One look: `Some(when)` when the instance is to be taken back (stopped, hibernated or
    /// terminated) at `when`; `None` when there is no notice.
    pub fn poll(&mut self) -> Result<Option<Timestamp>, String> {
        for _attempt in 0..2 {
            let token = self.token()?;
            let (status, body) = self.http("GET", ACTION_PATH, &[("X-aws-ec2-metadata-token", &token)])?;
            match status {
                200 => {
                    let a: InstanceAction = serde_json::from_slice(&body).map_err(|e| format!("read spot/instance-action: {e}"))?;
                    debug!("spot notice: {} at {}", a.action, a.time);
                    return Ok(Some(a.time));
                }
                404 => return Ok(None),
                401 => self.token = None,
                s => return Err(format!("GET {ACTION_PATH} at {}: HTTP {s}", self.addr)),
            }
        }
        Err(format!("GET {ACTION_PATH} at {}: the metadata service refused a fresh token", self.addr))
    }

    fn token(&mut self) -> Result<String, String> {
        let fresh = Duration::from_secs(TOKEN_TTL_SECS - 60);
        if let Some((t, at)) = &self.token {
            if at.elapsed() < fresh {
                return Ok(t.clone());
            }
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let (status, body) = self.http("PUT", TOKEN_PATH, &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)])?;
        if status != 200 {
            return Err(format!("PUT {TOKEN_PATH} at {}: HTTP {status}", self.addr));
        }
        let token = String::from_utf8(body).map_err(|_| format!("PUT {TOKEN_PATH} at {}: not text", self.addr))?.trim().to_string();
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// One HTTP exchange with the endpoint: status and body.
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, Vec<u8>), String> {
        let (status, _, body) =
            hybrid_agent_api::exchange(&self.addr, method, path, headers, &[]).map_err(|e| format!("{method} {path} at {}: {e}", self.addr))?;
        Ok((status, body))
    }
}

/// Polls `watch` every `every` until `stop`; on the first notice stores its time in `notice`
/// and sets `stop` (the node then pushes at once, reports the notice and exits).
pub fn spawn_watch(mut watch: SpotWatch, every: Duration, notice: Arc<Mutex<Option<Timestamp>>>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("spot-watch".into()).spawn(move || {
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match watch.poll() {
                Ok(Some(at)) => {
                    warn!("spot interruption notice: this instance is taken back at {at}; pushing now");
                    *notice.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // Once, then every 30th failure: a missing endpoint is not worth a line a poll.
                    if failures % 30 == 1 {
                        warn!("poll spot notices: {e}");
                    }
                }
            }
            let end = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// The request head (up to the blank line).
    fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A metadata service: one token, a notice once `notice` is set, 401 for a stale token.
    fn serve(notice: Arc<Mutex<Option<&'static str>>>, token: Arc<Mutex<&'static str>>, requests: Arc<Mutex<Vec<String>>>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in l.incoming().take(50) {
                let mut s = conn.unwrap();
                let req = read_head(&mut s);
                requests.lock().unwrap().push(req.lines().next().unwrap().to_string());
                let current = *token.lock().unwrap();
                let (status, body) = if req.starts_with("PUT /latest/api/token ") && req.contains("X-aws-ec2-metadata-token-ttl-seconds: 21600") {
                    ("200 OK", current.to_string())
                } else if !req.contains(&format!("X-aws-ec2-metadata-token: {current}\r\n")) {
                    ("401 Unauthorized", String::new())
                } else if let Some(time) = *notice.lock().unwrap() {
                    ("200 OK", format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}"))
                } else {
                    ("404 Not Found", String::new())
                };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn imdsv2_token_flow_no_notice_then_a_notice_and_a_stale_token_is_renewed() {
        let (notice, token, reqs) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new("tok-1")), Arc::new(Mutex::new(Vec::new())));
        let mut w = SpotWatch::new(&serve(notice.clone(), token.clone(), reqs.clone())).unwrap();
        assert_eq!(w.poll().unwrap(), None);
        assert_eq!(w.poll().unwrap(), None);
        assert_eq!(reqs.lock().unwrap().iter().filter(|r| r.starts_with("PUT")).count(), 1, "the token is reused");
        *token.lock().unwrap() = "tok-2"; // the service forgot the old one
        *notice.lock().unwrap() = Some("2026-12-01T10:02:00Z");
        assert_eq!(w.poll().unwrap(), Some("2026-12-01T10:02:00Z".parse().unwrap()));
        assert_eq!(reqs.lock().unwrap().iter().filter(|r| r.starts_with("PUT")).count(), 2, "one new token after the 401");
        assert!(reqs.lock().unwrap().iter().all(|r| r.contains("/latest/api/token") || r.contains(ACTION_PATH)));
    }

    #[test]
    fn the_watch_sets_the_stop_flag_and_the_notice_time() {
        let (notice, token, reqs) = (Arc::new(Mutex::new(Some("2026-12-01T10:02:00Z"))), Arc::new(Mutex::new("t")), Arc::default());
        let w = SpotWatch::new(&serve(notice, token, reqs)).unwrap();
        let (seen, stop) = (Arc::new(Mutex::new(None)), Arc::new(AtomicBool::new(false)));
        spawn_watch(w, Duration::from_millis(10), seen.clone(), stop.clone()).unwrap().join().unwrap();
        assert!(stop.load(Ordering::Relaxed));
        assert_eq!(*seen.lock().unwrap(), Some("2026-12-01T10:02:00Z".parse().unwrap()));
    }

    #[test]
    fn endpoints_are_plain_http_host_and_port() {
        assert_eq!(SpotWatch::new("http://169.254.169.254").unwrap().addr, "169.254.169.254:80");
        assert_eq!(SpotWatch::new("http://127.0.0.1:8111/").unwrap().addr, "127.0.0.1:8111");
        assert!(SpotWatch::new("https://x").is_err() && SpotWatch::new("http://h/path").is_err());
        let refused = SpotWatch::new("http://127.0.0.1:1").unwrap().poll().unwrap_err();
        assert!(refused.contains("127.0.0.1:1") && !refused.contains('\n'), "{refused}");
    }
}
