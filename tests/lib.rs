//! Harness for the hybridfs integration tests. Every test mounts a real volume through
//! `/dev/fuse` with the `hybridctl` binary, under a scratch directory of its own, so tests
//! can run in parallel without sharing a `HYBRIDFS_HOME` or a mount point.
//!
//! - [`TestVolume`]: formats and mounts a volume; on drop it always unmounts (`hybridctl
//!   umount`, else `umount -l`) and kills a leftover mount process, even when the test panics.
//!   It also arms a [`Watchdog`]: a mount that hangs would otherwise hang the test forever.
//! - [`browser`]: headless `chromium` for the dashboard tests (also used by the agent's).
//! - [`cmd`]: commands run with a time limit (`hybridctl`, `umount`, external tools).
//! - [`content`]: deterministic file contents derived from a seed, so a checker can rebuild
//!   what a writer wrote from a file name alone.
//! - [`fsop`]: the client side of the `hybridfs-test-fsop` helper binary, which performs one
//!   file operation in a separate process (as another user, as a second lock owner).
//! - [`shared`]: a shared volume (PostgreSQL metadata, SeaweedFS store) mounted as two hosts.
//! - [`snap`]: snapshot, diff, rollback and gc commands with their `--json` output parsed, and
//!   a whole-tree model ([`snap::Tree`]) to compare a live tree with a snapshot view.
//! - [`sys`]: thin wrappers over the libc calls std lacks (errno, xattrs, renameat2, ...).
//!
//! Preconditions are checked loudly: [`require_fuse`] and [`require_root`] fail the test
//! with a banner instead of letting it pass silently on a machine that cannot run it.

#[path = "harness/browser.rs"]
pub mod browser;
#[path = "harness/cmd.rs"]
pub mod cmd;
#[path = "harness/content.rs"]
pub mod content;
#[path = "harness/fsop.rs"]
pub mod fsop;
#[path = "harness/procs.rs"]
pub mod procs;
#[path = "harness/shared.rs"]
pub mod shared;
#[path = "harness/snap.rs"]
pub mod snap;
#[path = "harness/sys.rs"]
pub mod sys;
#[path = "harness/systemd.rs"]
pub mod systemd;
#[path = "harness/volume.rs"]
pub mod volume;
#[path = "harness/watchdog.rs"]
pub mod watchdog;

pub use cmd::CmdOutput;
pub use volume::{hybridctl_bin, JournalRow, MountState, TestVolume, VolumeBuilder};
pub use watchdog::Watchdog;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prints a banner that stands out in `cargo test` output, then panics with `msg`.
pub fn fail_loudly(msg: &str) -> ! {
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! hybridfs integration test cannot run: {msg}\n{bar}\n");
    panic!("{msg}");
}

/// Fails the test loudly when the machine has no `/dev/fuse`: these tests mount for real and
/// must never pass without having mounted anything.
pub fn require_fuse() {
    if !Path::new("/dev/fuse").exists() {
        fail_loudly(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or run the \
             container with --device /dev/fuse; these tests need a real FUSE mount",
        );
    }
}

/// Fails the test loudly unless it runs as root (tmpfs mounts, other users, chown).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        fail_loudly("this test must run as root (it mounts tmpfs, switches users, chowns)");
    }
}

/// A TCP port on 127.0.0.1 free right now (for a mount's metrics address, an agent's API).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Calls `check` every `interval` until it returns true or `limit` has passed; returns whether
/// it succeeded. The number of tries is bounded by `limit / interval + 1`.
pub fn poll_until(limit: Duration, interval: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let max_tries = (limit.as_millis() / interval.as_millis().max(1)) as u64 + 1;
    for _ in 0..max_tries {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(interval);
    }
    check()
}

/// An installed tool: `$ENV_VAR`, else `$CARGO_HOME/bin` or `~/.cargo/bin`, else `$PATH`.
pub fn installed_tool(name: &str, env_var: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or(home.join(".cargo"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(cargo_home.join("bin")).chain(std::env::split_paths(&path));
    for dir in candidates {
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    fail_loudly(&format!("{name} is not installed: run `{install}` (tests/run.sh does it)"))
}
