//! `mount --metrics-addr`: the mount serves its metrics in the Prometheus text format, and
//! the series named in doc/METRICS.md move with the work done through the mount.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use hybridfs_tests::free_port;
use hybridfs_tests::TestVolume;

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample line `series` (name with its labels, exactly), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn mount_serves_prometheus_metrics_that_move_with_the_work() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let vol = TestVolume::builder().mount_args(&["--metrics-addr", &addr]).build();
    let before = scrape(port);
    let written_before = sample(&before, "hybridfs_bytes_written_total").unwrap_or(0.0);

    let data = vec![7u8; 3 << 20];
    std::fs::write(vol.path("a.bin"), &data).unwrap();
    for i in 0..20 {
        let _ = std::fs::metadata(vol.path(format!("missing-{i}")));
    }
    assert_eq!(std::fs::read(vol.path("a.bin")).unwrap(), data);

    let after = scrape(port);
    let written = sample(&after, "hybridfs_bytes_written_total").expect("bytes written series");
    assert!(written - written_before >= data.len() as f64, "bytes written moved by {}:\n{after}", written - written_before);
    let lookups = sample(&after, "hybridfs_fuse_requests_total{op=\"lookup\"}").expect("lookup count");
    assert!(lookups >= 20.0, "{lookups} lookups counted");
    // The file is written by kernel passthrough by default (no write request reaches the
    // mount; its absorb of them counts), by write requests with passthrough writes off.
    let writes = sample(&after, "hybridfs_fuse_requests_total{op=\"write\"}").unwrap_or(0.0);
    let absorbs = sample(&after, "hybridfs_passthrough_absorbs_total").unwrap_or(0.0);
    assert!(writes + absorbs >= 1.0, "writes counted as write requests or absorbs:\n{after}");
    assert!(
        after.lines().any(|l| l.starts_with("hybridfs_fuse_request_seconds_bucket{op=\"lookup\"")),
        "lookup latency is a histogram:\n{after}"
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

/// An address that cannot be bound fails the mount with one clear line, before it mounts.
#[test]
fn a_busy_metrics_address_fails_the_mount_clearly() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let vol = TestVolume::builder().unmounted().build();
    let out = vol.ctl(&["mount", vol.name(), vol.mountpoint().to_str().unwrap(), "-d", "--metrics-addr", &addr]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.all_output().contains(&format!("serve metrics at {addr}")), "{out}");
}

/// `hybridctl top --once --json`: one line of rates from the mount's counters while files are
/// written and read — bytes/s from metrics.json, FUSE ops/s by kind from the metrics address.
#[test]
fn top_once_reports_the_rates_of_a_busy_mount() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let vol = TestVolume::builder().mount_args(&["--metrics-addr", &addr]).build();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), vol.path(""));
        std::thread::spawn(move || {
            // Bounded: at most 200 rounds of 100 ms, stopped as soon as top has answered.
            for i in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let p = dir.join(format!("w{}", i % 8));
                std::fs::write(&p, vec![i as u8; 256 << 10]).unwrap();
                std::fs::read(&p).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = vol.ctl(&["top", vol.name(), "--once", "--json", "--interval", "3", "--metrics-addr", &addr]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--once --json: one JSON line on stdout, nothing else: {out}");
    let r: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["volume"], vol.name(), "{r}");
    assert!(r["written_bytes_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "writes show in MB/s written: {r}");
    let ops = |kind: &str| r["ops_per_sec"][kind].as_f64().unwrap_or(0.0);
    assert!(ops("write") + ops("absorb") > 0.0, "writes show by kind (`absorb` when written by passthrough): {r}");
    assert!(r["fetches_per_sec"].as_f64().is_some(), "fetches are reported with a metrics address: {r}");
}
