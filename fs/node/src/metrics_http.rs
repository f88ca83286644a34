//! `mount --metrics-addr ADDR`: the process's metrics in the Prometheus text format at
//! `http://ADDR/metrics`; with `--dashboard`, also the mount's web page at
//! `http://ADDR/dashboard` and its JSON at `/dashboard/data` ([`crate::dashboard`]). Every
//! route only reads; anyone who reaches the address may read them all, so bind it to loopback
//! or a trusted network.
//!
//! The libraries count through the `metrics` facade (names in `doc/METRICS.md`); this installs
//! the Prometheus recorder behind it and serves what it renders. The server is one accepting
//! thread (`metrics-http`) that answers each connection on a short thread of its own (a
//! browser opens connections it does not use at once), at most `MAX_CONNECTIONS` at a time:
//! a scraper every few seconds, or a page open somewhere, is its whole load. A second thread (`metrics-upkeep`) folds histogram samples every 5 s so
//! their memory stays bounded.

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::dashboard::Dashboard;

/// Latency buckets (seconds): a FUSE request takes ~10 µs, an object-store call up to the
/// read timeout.
const BUCKETS: &[f64] = &[1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// Connections answered at once (each is a short read and one reply, 5 s at most).
const MAX_CONNECTIONS: usize = 16;

/// Install the recorder and start serving at `addr` (and `dashboard`'s routes, if given).
/// Fails (before the mount starts) when the address cannot be bound.
pub fn serve(addr: SocketAddr, dashboard: Option<Arc<Dashboard>>) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("serve metrics at {addr}"))?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("install the metrics recorder")?;
    let upkeep = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        upkeep.run_upkeep();
    })?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                // A browser opens connections it may not use at once: each gets its own short
                // thread, so an idle one does not hold up the next request; at most
                // MAX_CONNECTIONS at a time, the rest are closed.
                Ok(stream) if in_flight.fetch_add(1, Ordering::SeqCst) < MAX_CONNECTIONS => {
                    let (handle, dashboard, ours) = (handle.clone(), dashboard.clone(), in_flight.clone());
                    let spawned = std::thread::Builder::new().name("metrics-req".into()).spawn(move || {
                        if let Err(e) = answer(stream, &handle, dashboard.as_deref()) {
                            tracing::debug!("metrics request: {e}");
                        }
                        ours.fetch_sub(1, Ordering::SeqCst);
                    });
                    if let Err(e) = spawned {
                        tracing::warn!("answer a metrics connection: {e}");
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                Ok(_) => {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!("accept a metrics connection: {e}"),
            }
        }
    })?;
    tracing::info!("serving metrics at http://{addr}/metrics");
    Ok(())
}

/// One HTTP/1.0-style exchange: the reply to a GET of `/metrics` (or the dashboard's paths),
/// 404 to anything else.
fn answer(stream: TcpStream, handle: &PrometheusHandle, dashboard: Option<&Dashboard>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut stream = reader.into_inner();
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or_default();
    let (status, content_type, body) = route(request.starts_with("GET "), path, handle, dashboard);
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

const TEXT: &str = "text/plain; version=0.0.4";

/// Status line, content type and body for a request of `path` (without its query).
fn route(get: bool, path: &str, handle: &PrometheusHandle, dashboard: Option<&Dashboard>) -> (&'static str, &'static str, String) {
    match (get, path, dashboard) {
        (true, "/metrics", _) => ("200 OK", TEXT, handle.render()),
        (true, "/dashboard" | "/dashboard/", Some(_)) => ("200 OK", "text/html; charset=utf-8", crate::dashboard::PAGE.to_string()),
        (true, "/dashboard/data", Some(d)) => match d.data() {
            Some(v) => ("200 OK", "application/json", v.to_string()),
            None => ("503 Service Unavailable", TEXT, "the volume is not open yet\n".to_string()),
        },
        (_, _, Some(_)) => ("404 Not Found", TEXT, "try /metrics or /dashboard\n".to_string()),
        _ => ("404 Not Found", TEXT, "try /metrics\n".to_string()),
    }
}
