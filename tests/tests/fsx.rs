//! fsx (crate `fsx` 0.3.2, installed with `cargo install`): at least 100,000 random
//! operations on one file in the mount, every read checked against an in-memory model.
//! Enabled: pread/pwrite, mmap reads and writes (with msync), truncate, fsync, fdatasync,
//! posix_fallocate, punch hole, copy_file_range, sendfile, posix_fadvise, close/reopen and
//! msync(MS_INVALIDATE). Not enabled: collapse/insert range (the FS answers EOPNOTSUPP, and
//! fsx 0.3.2 has no such operation) and zero range (fsx 0.3.2 has none).

use std::fs;
use std::process::Command;
use std::time::Duration;

use hybridfs_tests::{cmd, installed_tool, TestVolume};

fn config(flen: u64) -> String {
    format!(
        r#"
flen = {flen}

[opsize]
min = 0
max = 131072

[weights]
close_open = 1
invalidate = 1
read = 10
write = 10
mapread = 5
mapwrite = 5
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 3
punch_hole = 3
sendfile = 1
posix_fadvise = 1
copy_file_range = 3
"#
    )
}

/// Runs fsx for `ops` operations on a fresh volume with `block_size` and a file up to `flen`.
fn run_fsx(block_size: &str, flen: u64, ops: u64, seed: u64, mount_args: &[&str]) {
    let bin = installed_tool("fsx", "FSX", "cargo install fsx --version 0.3.2 --locked");
    let vol = TestVolume::builder()
        .block_size(block_size)
        .mount_args(mount_args)
        .watchdog(Duration::from_secs(40 * 60))
        .build();
    let conf = vol.root().join("fsx.toml");
    fs::write(&conf, config(flen)).unwrap();
    let artifacts = vol.root().join("fsx-artifacts");
    fs::create_dir(&artifacts).unwrap();
    let seed = std::env::var("FSX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);

    let mut c = Command::new(&bin);
    c.arg("-f").arg(&conf).arg("-N").arg(ops.to_string()).arg("-S").arg(seed.to_string());
    c.arg("-P").arg(&artifacts).arg(vol.path("fsx.file"));
    let started = std::time::Instant::now();
    let out = cmd::run(&mut c, Duration::from_secs(35 * 60));
    eprintln!("fsx block size {block_size}, flen {flen}, {ops} ops, seed {seed}: {:?}", started.elapsed());
    let all = out.all_output();
    let lines: Vec<&str> = all.lines().collect();
    let tail = &lines[lines.len().saturating_sub(80)..];
    assert!(
        out.success(),
        "fsx failed (reproduce with FSX_SEED={seed}): exit {:?}, timed out {}\n{}",
        out.code,
        out.timed_out,
        tail.join("\n")
    );
}

/// The default mount: reads of unsealed files by kernel passthrough, write-through writes.
#[test]
fn fsx_100k_ops_64k_blocks() {
    run_fsx("64K", 1 << 20, 100_000, 1, &[]);
}

#[test]
fn fsx_100k_ops_1m_blocks() {
    run_fsx("1M", 4 << 20, 100_000, 2, &[]);
}

/// Passthrough writes: fsx's file is created (and reopened) for writing by kernel
/// passthrough, so its writes, mmap writes, truncates and fsyncs go through the path where
/// the staging file is the truth and the journal is taken from its data regions.
#[test]
fn fsx_100k_ops_passthrough_writes() {
    run_fsx("64K", 1 << 20, 100_000, 4, &["--passthrough-writes", "true"]);
}

/// The other mount mode: the kernel's writeback cache gathers writes.
#[test]
fn fsx_100k_ops_writeback_cache() {
    run_fsx("64K", 1 << 20, 100_000, 3, &["--writeback-cache"]);
}
