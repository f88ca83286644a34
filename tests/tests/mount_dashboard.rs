//! `mount --metrics-addr ADDR --dashboard`: the mount's own web page beside `/metrics`,
//! rendered by a real headless browser (Debian's `chromium`): the volume, this mount's push
//! and a merge run through it, the bytes written, the unpushed bytes as `hybridctl status` counts them, and a chart with one
//! point per sample the mount reports. Without `--dashboard` there is no page; asked for
//! without a metrics address, it is a config error naming the key.
//!
//! `HYBRIDFS_MOUNT_DASHBOARD_SCREENSHOT=doc/mount-dashboard.png` also writes a screenshot.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hybridfs_tests::free_port;
use hybridfs_tests::browser::{browse, chromium, element, svg, text_of};
use hybridfs_tests::TestVolume;
use serde_json::Value;

/// A GET of `path`: the status and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn data(port: u16) -> Value {
    let (status, body) = get(port, "/dashboard/data");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Polls `/dashboard/data` (every 250 ms, at most `limit`) until `ok` holds; returns it.
fn wait_for(port: u16, limit: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    for _ in 0..10_000 {
        let d = data(port);
        if ok(&d) {
            return d;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}: {d:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    unreachable!()
}

fn samples(d: &Value) -> usize {
    d["history"].as_array().unwrap().len()
}

/// The last sample's unpushed and unsealed bytes.
fn last_figures(d: &Value) -> (u64, u64) {
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    (last["unpushed_bytes"].as_u64().unwrap(), last["unsealed_bytes"].as_u64().unwrap())
}

/// `hybridctl status --json`'s unpushed and unsealed bytes.
fn status_figures(vol: &TestVolume) -> (u64, u64) {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
    let v = if v.is_array() { v[0].clone() } else { v };
    (v["unpushed_bytes"].as_u64().unwrap(), v["unsealed_bytes"].as_u64().unwrap_or_else(|| panic!("no unsealed_bytes: {v}")))
}

#[test]
fn chromium_renders_the_mounts_volume_push_bytes_and_a_chart_of_its_samples() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Nothing is sealed before the push (whose snapshot seals everything): the unsealed bytes
    // are known too.
    let args = ["--metrics-addr", &addr, "--dashboard", "--seal-delay", "3600"];
    let vol = TestVolume::builder().name("dashvol").mount_args(&args).build();
    let d = data(port);
    assert_eq!((d["volume"].as_str(), d["block_size"].as_u64()), (Some("dashvol"), Some(1 << 20)), "{d}");
    assert_eq!(d["mountpoint"].as_str().map(PathBuf::from), Some(vol.mountpoint().to_path_buf()));
    assert!(d["store"].as_str().unwrap().starts_with("file://"), "{d}");

    // 3 MiB and a few small files: that many bytes unpushed, and unpushed and unsealed exactly
    // as `status` counts them.
    let big = vec![7u8; 3 << 20];
    std::fs::write(vol.path("big.bin"), &big).unwrap();
    for i in 0..5 {
        std::fs::write(vol.path(format!("small-{i}.txt")), format!("file {i}\n").repeat(100)).unwrap();
    }
    let written: u64 = big.len() as u64 + 5 * 700;
    let d = wait_for(port, Duration::from_secs(60), "a sample of the unpushed bytes", |d| last_figures(d).0 == written);
    assert_eq!(status_figures(&vol), last_figures(&d), "status and the dashboard count the same bytes");
    // The big file's blocks are staged (small files may be kept whole in the metadata).
    assert!(last_figures(&d).1 >= big.len() as u64, "{d}");
    assert!(d["counters"]["bytes_written"].as_u64().unwrap() >= written, "{d}");

    let out = vol.ctl(&["push", "--volume", vol.name(), "--json"]);
    out.assert_success();
    let push: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(push["blocks_uploaded"].as_u64().unwrap() >= 4, "{push}");
    // After the push: nothing unpushed or unsealed, the push in the table.
    let d = wait_for(port, Duration::from_secs(60), "the push seen", |d| last_figures(d) == (0, 0) && d["pushes"].as_array().unwrap().len() == 1);
    let row = &d["pushes"][0];
    assert_eq!((&row["branch"], &row["seq"], &row["blocks_uploaded"]), (&push["branch"], &push["seq"], &push["blocks_uploaded"]));

    // A node's branch, merged through this mount: a clone from the same store writes a file
    // and pushes branch `n1`.
    let mut node = TestVolume::builder().name("dashvol").unformatted().build();
    node.ctl(&["clone", &format!("{}/dashvol", d["store"].as_str().unwrap()), "--branch", "n1", "--json"]).assert_success();
    node.mount();
    node.put("from-n1.txt", b"written on the node\n");
    node.ctl(&["push", "--volume", "dashvol", "--json"]).assert_success();
    node.umount();
    let merge = vol.ctl(&["merge", "n1", "--volume", vol.name(), "--json"]);
    merge.assert_success();
    let merge: Value = serde_json::from_str(&merge.stdout).unwrap();
    vol.ctl(&["snapshot", "create", "after-merge", "--volume", vol.name()]).assert_success();
    let before = wait_for(port, Duration::from_secs(60), "the merge seen and 3 samples", |d| d["merges"].as_array().unwrap().len() == 1 && samples(d) >= 3);
    let row = &before["merges"][0];
    assert_eq!((&row["id"], &row["branch"], &row["applied"]), (&merge["id"], &Value::from("n1"), &Value::from(true)), "{row}");
    assert_eq!(row["changes"].as_u64(), Some(merge["changes"].as_array().unwrap().len() as u64));

    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED the browser part: no chromium (tests/run.sh installs Debian's chromium)");
        return;
    };
    let profile = vol.root().join("chromium");
    let url = format!("http://{addr}/dashboard");
    let dom = browse(&chromium, &profile, &url, &["--dump-dom"]);
    let after = samples(&data(port));
    assert_eq!(text_of(&dom, "error"), "", "{dom}");
    assert_eq!(text_of(&dom, "volume"), "volume dashvol");
    assert_eq!(text_of(&dom, "mountpoint"), format!("at {}", vol.mountpoint().display()));
    assert_eq!(text_of(&dom, "block-size"), "block size 1.0 MiB");
    assert!(text_of(&dom, "store").starts_with("file://"), "{dom}");
    let shown_written = text_of(&dom, "written");
    assert!(shown_written.ends_with("MiB") && !shown_written.starts_with("0"), "written: {shown_written}");
    assert!(text_of(&dom, "unpushed").ends_with('B'), "{dom}");
    let pushes = element(&dom, "table", "pushes");
    let cells = format!("<td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>", push["branch"].as_str().unwrap(), push["seq"], push["blocks_uploaded"]);
    assert!(pushes.contains(&cells), "the push row ({cells}) in {pushes}");
    let merges = element(&dom, "table", "merges");
    let cells = format!("<td class=\"num\">{}</td><td>n1</td>", merge["id"]);
    assert!(merges.contains(&cells) && merges.contains("<td class=\"ok\">yes</td>"), "the merge row ({cells}, applied) in {merges}");
    assert!(element(&dom, "table", "snapshots").contains("<td>after-merge</td>"), "{dom}");
    assert!(element(&dom, "table", "workers").contains("<td>dashboard-sampler</td>"), "{dom}");

    // The chart: one point per sample in the data the page drew (the mount samples on: the
    // page's count lies between the test's reads before and after).
    let chart = svg(&dom, "unpushed-chart");
    let points = chart.matches("class=\"point\"").count();
    assert!(chart.contains(&format!("data-points=\"{points}\"")), "{chart}");
    assert!(samples(&before) <= points && points <= after, "{} <= {points} <= {after}", samples(&before));
    assert!(chart.contains(&format!("data-value=\"{written}\"")), "a point at the {written} unpushed bytes: {chart}");
    assert!(chart.contains("data-value=\"0\""), "and at 0 after the push: {chart}");
    assert_eq!(svg(&dom, "rate-chart").matches("class=\"point\"").count(), points);

    if let Some(png) = std::env::var_os("HYBRIDFS_MOUNT_DASHBOARD_SCREENSHOT") {
        let shot = format!("--screenshot={}", std::path::absolute(&png).unwrap().display());
        browse(&chromium, &profile, &url, &[&shot]);
        assert!(Path::new(&png).exists());
    }
}

#[test]
fn without_the_switch_there_is_no_page_and_metrics_still_answer() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _vol = TestVolume::builder().mount_args(&["--metrics-addr", &addr]).build();
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hybridfs_"), "{body}");
    for path in ["/dashboard", "/dashboard/data"] {
        let (status, body) = get(port, path);
        assert_eq!(status, 404, "{path}: {body}");
    }
}

#[test]
fn the_dashboard_without_a_metrics_address_is_a_config_error_naming_the_key() {
    let vol = TestVolume::builder().unmounted().build();
    let mp = vol.mountpoint().to_str().unwrap();
    let out = vol.ctl(&["mount", vol.name(), mp, "-d", "--dashboard"]);
    out.assert_code(2);
    assert!(out.stderr.contains("flag --dashboard: mount.dashboard: needs mount.metrics_addr"), "{out}");
    assert!(!hybridfs_tests::procs::is_mounted(vol.mountpoint()), "nothing was mounted");

    let out = vol.ctl_env(&[("HYBRIDFS_MOUNT_DASHBOARD", "true")], &["config", "check"]);
    out.assert_code(2);
    assert!(out.stderr.contains("env HYBRIDFS_MOUNT_DASHBOARD: mount.dashboard: needs mount.metrics_addr"), "{out}");
    let out = vol.ctl_env(&[("HYBRIDFS_MOUNT_DASHBOARD", "true"), ("HYBRIDFS_MOUNT_METRICS_ADDR", "127.0.0.1:9580")], &["config", "check"]);
    out.assert_success();
}
