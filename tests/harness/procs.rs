//! Processes and mounts, read from `/proc`: is a pid alive, which processes were started with
//! a given argument (a test's unique mount point), is a path a mount point, and the lazy
//! unmount and FUSE-connection abort used when a mount process is dead or hung.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cmd;

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the last ')' (the command name may contain spaces or ')').
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Bytes `pid` has written with system calls so far (`wchar` of `/proc/PID/io`): a mount
/// process that writes little while a file grows by much is not on the data path.
pub fn bytes_written_by(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_else(|e| panic!("read /proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wchar in /proc/{pid}/io: {io}"))
}

/// The argument vector of `pid`, empty when it is gone.
pub fn cmdline(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Live processes other than this one with an argument exactly equal to `arg`.
pub fn processes_with_arg(arg: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && cmdline(*pid).iter().any(|a| a == arg))
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// Sends SIGKILL to `pid` and waits (bounded) until it is gone; returns whether it died.
pub fn kill9_and_wait(pid: i32, limit: Duration) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    crate::poll_until(limit, Duration::from_millis(20), || !pid_alive(pid))
}

/// One line of `/proc/self/mountinfo` for `mountpoint`, the topmost if stacked.
fn mountinfo_line(mountpoint: &Path) -> Option<String> {
    let target = mountpoint.to_str()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(target))
        .last()
        .map(str::to_string)
}

/// True when something is mounted at `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    mountinfo_line(mountpoint).is_some()
}

/// The file system type mounted at `mountpoint` (`fuse.hybridfs`, `tmpfs`, ...).
pub fn mount_fstype(mountpoint: &Path) -> Option<String> {
    let line = mountinfo_line(mountpoint)?;
    let (_, after) = line.split_once(" - ")?;
    after.split(' ').next().map(str::to_string)
}

/// Aborts the FUSE connection behind `mountpoint` through fusectl, so every request blocked
/// on it fails with ENOTCONN. Best effort: fusectl may not be mounted.
pub fn abort_fuse_connection(mountpoint: &Path) {
    let Some(line) = mountinfo_line(mountpoint) else {
        return;
    };
    let Some(dev) = line.split(' ').nth(2) else {
        return;
    };
    let minor = dev.split(':').nth(1).unwrap_or("");
    let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
}

/// `umount -l` until nothing is mounted at `mountpoint` (bounded: stacked mounts included).
pub fn lazy_unmount_all(mountpoint: &Path) {
    for _ in 0..8 {
        if !is_mounted(mountpoint) {
            return;
        }
        let out = cmd::run(
            Command::new("umount").arg("-l").arg(mountpoint),
            Duration::from_secs(30),
        );
        if !out.success() {
            eprintln!("harness: {out}");
        }
    }
}
