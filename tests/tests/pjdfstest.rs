//! The Rust pjdfstest suite (crate `pjdfstest` 0.2.2, installed with `cargo install`) on a
//! mounted volume. Every failure must be listed in `tests/pjdfstest/exclude.txt` (one test
//! name per line, `# reason` after it); any other failure fails this test. Excluded tests
//! that now pass are reported so the list can shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hybridfs_tests::{cmd, installed_tool, require_root, TestVolume};

/// Features the file system supports (see `pjdfstest -l`). `chflags`, `nfsv4_acls`,
/// `stat_st_birthtime` and `chflags_sf_snapshot` are BSD-only.
const CONFIG: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
# Timestamps have nanosecond resolution; a short nap is enough.
naptime = 0.01
allow_remount = false

[dummy_auth]
# Debian has no "tests" user; these two exist on every Debian install.
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

/// `name -> reason` from the exclude list.
fn exclude_list() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pjdfstest/exclude.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once('#').unwrap_or((l, ""));
            (name.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Test name -> result word (`ok`, `FAILED`, `skipped`, ...) and the detail lines under it.
fn parse_results(output: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut results: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(r) = current.as_ref().and_then(|n| results.get_mut(n)) {
                r.1.push(line.trim().to_string());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(_)) = (words.next(), line.split_whitespace().nth(1)) else {
            current = None;
            continue;
        };
        if !name.contains("::") {
            current = None;
            continue;
        }
        let result = line[name.len()..].trim().to_string();
        results.insert(name.to_string(), (result, Vec::new()));
        current = Some(name.to_string());
    }
    results
}

#[test]
fn pjdfstest_suite() {
    run_pjdfstest(&[]);
}

/// The same suite on a mount with the kernel's writeback cache instead of passthrough.
#[test]
fn pjdfstest_suite_writeback_cache() {
    run_pjdfstest(&["--writeback-cache"]);
}

/// The same suite on a shared volume (issue 15): metadata in PostgreSQL, mounted by two
/// hosts; the suite runs on host A while host B is mounted too.
#[test]
fn pjdfstest_suite_shared_volume() {
    require_root();
    let c = hybridfs_tests::shared::Cluster::start("pjd", true, &[]);
    run_pjdfstest_on(&c.a);
}

fn run_pjdfstest(mount_args: &[&str]) {
    require_root();
    let vol = TestVolume::builder().mount_args(mount_args).watchdog(Duration::from_secs(50 * 60)).build();
    run_pjdfstest_on(&vol);
}

fn run_pjdfstest_on(vol: &TestVolume) {
    let bin = installed_tool("pjdfstest", "PJDFSTEST", "cargo install pjdfstest --version 0.2.2 --locked");
    let config = vol.root().join("pjdfstest.toml");
    fs::write(&config, CONFIG).unwrap();
    let secondary = vol.root().join("secondary");
    fs::create_dir(&secondary).unwrap();

    let mut c = Command::new(&bin);
    c.arg("-c").arg(&config).arg("-p").arg(vol.mountpoint()).arg("-s").arg(&secondary);
    c.env("NO_COLOR", "1").env("RUST_BACKTRACE", "0").env("CLICOLOR", "0").env_remove("CLICOLOR_FORCE");
    let out = cmd::run(&mut c, Duration::from_secs(45 * 60));
    let text = strip_ansi(&out.stdout);
    eprintln!("{text}\n{}", out.stderr);
    assert!(!out.timed_out, "pjdfstest ran past its time limit");

    let results = parse_results(&text);
    assert!(results.len() > 50, "pjdfstest ran only {} tests: {out}", results.len());
    let excluded = exclude_list();
    let failed: BTreeSet<&String> = results.iter().filter(|(_, r)| r.0 == "FAILED").map(|(n, _)| n).collect();
    let unexpected: Vec<&&String> = failed.iter().filter(|n| !excluded.contains_key(n.as_str())).collect();
    let now_passing: Vec<&String> =
        excluded.keys().filter(|n| results.get(*n).is_some_and(|r| r.0 == "ok")).collect();
    if !now_passing.is_empty() {
        eprintln!("pjdfstest: excluded tests that pass now (remove them from exclude.txt): {now_passing:?}");
    }
    let details: Vec<String> = unexpected
        .iter()
        .map(|n| format!("{n}: {}", results[n.as_str()].1.join(" | ")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} pjdfstest failures not in tests/pjdfstest/exclude.txt:\n{}",
        unexpected.len(),
        details.join("\n")
    );
    assert!(
        out.success() || !failed.is_empty(),
        "pjdfstest exited non-zero without a FAILED test: {out}"
    );
}
