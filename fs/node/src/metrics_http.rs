//! `mount --metrics-addr ADDR`: the process's metrics in the Prometheus text format at
//! `http://ADDR/metrics`.
//!
//! The libraries count through the `metrics` facade (names in `doc/METRICS.md`); this installs
//! the Prometheus recorder behind it and serves what it renders. The server is one thread
//! (`metrics-http`) answering one short request at a time: a scraper every few seconds is
//! its whole load. A second thread (`metrics-upkeep`) folds histogram samples every 5 s so
//! their memory stays bounded.

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Latency buckets (seconds): a FUSE request takes ~10 µs, an object-store call up to the
/// read timeout.
const BUCKETS: &[f64] = &[1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// Install the recorder and start serving at `addr`. Fails (before the mount starts) when the
/// address cannot be bound.
pub fn serve(addr: SocketAddr) -> Result<()> {
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
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    if let Err(e) = answer(stream, &handle) {
                        tracing::debug!("metrics request: {e}");
                    }
                }
                Err(e) => tracing::warn!("accept a metrics connection: {e}"),
            }
        }
    })?;
    tracing::info!("serving metrics at http://{addr}/metrics");
    Ok(())
}

/// One HTTP/1.0-style exchange: `GET /metrics` gets the text, anything else 404.
fn answer(stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
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
    let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
