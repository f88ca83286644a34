//! [`TestVolume`]: one hybridfs volume in a scratch directory, mounted through `/dev/fuse`.
//!
//! Layout of the scratch directory (a fresh temp dir per volume):
//!
//! ```text
//! <root>/home/        HYBRIDFS_HOME for every hybridctl call (unless the builder moved it)
//! <root>/mnt/         the mount point
//! <root>/...          anything else a test keeps outside the mount (lists, configs)
//! ```
//!
//! Teardown on drop, whatever happened (panics included): `hybridctl umount`, then `umount -l`
//! for anything still mounted on the volume's mount points, then SIGKILL for a mount process
//! that is still alive. Set `HYBRIDFS_TEST_KEEP=1` to keep the scratch directory for a post
//! mortem; a panicking test prints the tail of `mount.log` either way.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::cmd::{self, CmdOutput, CMD_LIMIT};
use crate::procs;
use crate::watchdog::{MountPoints, Watchdog};

/// Default limit after which a volume's watchdog aborts its mounts.
const DEFAULT_WATCHDOG: Duration = Duration::from_secs(20 * 60);

/// The `hybridctl` binary under test: `$HYBRIDCTL`, else next to the test executable's
/// directory (`target/release/deps/<test>` → `target/release/hybridctl`).
pub fn hybridctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HYBRIDCTL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("test exe has no grandparent dir");
    let bin = dir.join("hybridctl");
    if !bin.exists() {
        crate::fail_loudly(&format!(
            "{} not found: build it first (cargo build --release --workspace --bins) \
             or point HYBRIDCTL at it",
            bin.display()
        ));
    }
    bin
}

/// Runs `hybridctl ARGS` with `HYBRIDFS_HOME=home`, bounded by `limit`.
pub fn hybridctl_in(home: &Path, args: &[&OsStr], limit: Duration) -> CmdOutput {
    hybridctl_in_env(home, &[], args, limit)
}

/// [`hybridctl_in`] with extra environment variables (e.g. `HYBRIDFS_CRASHPOINT`), set on that
/// one command only (and so inherited by a mount process it starts).
pub fn hybridctl_in_env(home: &Path, env: &[(&str, &str)], args: &[&OsStr], limit: Duration) -> CmdOutput {
    let mut c = Command::new(hybridctl_bin());
    // Tests talk only to 127.0.0.1: the AWS chain must never ask the EC2 metadata endpoint.
    c.args(args).env("HYBRIDFS_HOME", home).env("RUST_BACKTRACE", "1").env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        c.env(k, v);
    }
    cmd::run(&mut c, limit)
}

/// One row of `hybridctl journal NAME --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JournalRow {
    pub epoch: u64,
    pub ino: u64,
    pub block: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    Unmounted,
    Mounted,
    /// The mount process was killed; the kernel mount is left behind, dead.
    Dead,
}

/// How to make a [`TestVolume`].
pub struct VolumeBuilder {
    name: String,
    format_args: Vec<String>,
    home: Option<PathBuf>,
    watchdog: Duration,
    mount: bool,
    format: bool,
    mount_args: Vec<String>,
}

impl VolumeBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// `--block-size SIZE` for `hybridctl format`.
    pub fn block_size(mut self, size: &str) -> Self {
        self.format_args.extend(["--block-size".to_string(), size.to_string()]);
        self
    }

    /// `--store URL` for `hybridctl format`: the volume's object store (`file:///PATH`,
    /// `s3://BUCKET/PREFIX`). Format makes no request to it; an `s3://` store needs the AWS
    /// variables on whatever runs the push: [`TestVolume::mount_env`] for a mounted volume (the
    /// mount process pushes), [`TestVolume::ctl_env`] for an unmounted one.
    pub fn store(mut self, url: &str) -> Self {
        self.format_args.extend(["--store".to_string(), url.to_string()]);
        self
    }

    /// Extra `hybridctl format` arguments (e.g. `--encryption-key-file PATH`).
    pub fn format_args(mut self, args: &[&str]) -> Self {
        self.format_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Puts `HYBRIDFS_HOME` at `home` instead of inside the scratch directory.
    pub fn home(mut self, home: &Path) -> Self {
        self.home = Some(home.to_path_buf());
        self
    }

    pub fn watchdog(mut self, limit: Duration) -> Self {
        self.watchdog = limit;
        self
    }

    /// Extra `hybridctl mount` flags for every mount of this volume (e.g. `--writeback-cache`).
    pub fn mount_args(mut self, args: &[&str]) -> Self {
        self.mount_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Formats only; the test mounts when it wants to.
    pub fn unmounted(mut self) -> Self {
        self.mount = false;
        self
    }

    /// Neither formats nor mounts: the scratch directory, an empty `HYBRIDFS_HOME` and the
    /// mount point only, for a volume the test makes itself (e.g. `hybridctl clone URL` with
    /// [`TestVolume::ctl_env`]; the name given here must be the volume's local name).
    pub fn unformatted(mut self) -> Self {
        self.format = false;
        self.mount = false;
        self
    }

    pub fn build(self) -> TestVolume {
        crate::require_fuse();
        let scratch = tempfile::Builder::new()
            .prefix("hybridfs-test-")
            .tempdir()
            .expect("create scratch dir");
        let root = scratch.path().canonicalize().expect("canonicalize scratch dir");
        // Other users (permission tests, pjdfstest) must be able to reach the mount point.
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod scratch dir");
        let home = self.home.clone().unwrap_or_else(|| root.join("home"));
        let mountpoint = root.join("mnt");
        fs::create_dir_all(&home).expect("create HYBRIDFS_HOME");
        fs::create_dir_all(&mountpoint).expect("create mount point");
        let mountpoints: MountPoints = Arc::new(Mutex::new(vec![mountpoint.clone()]));
        let mut vol = TestVolume {
            scratch: Some(scratch),
            root,
            home,
            name: self.name,
            mountpoint,
            state: MountState::Unmounted,
            mountpoints,
            watchdog: None,
            mount_args: self.mount_args.clone(),
        };
        vol.watchdog = Some(vol.arm_watchdog(self.watchdog));
        if self.format {
            let mut format = vec!["format", vol.name.as_str()];
            format.extend(self.format_args.iter().map(String::as_str));
            // The store's credentials are given to the commands that use it, not to format.
            if self.format_args.iter().any(|a| a.starts_with("s3://")) {
                format.push("--no-check");
            }
            vol.ctl(&format).assert_success();
        }
        if self.mount {
            vol.mount();
        }
        vol
    }
}

/// A formatted volume with its own scratch `HYBRIDFS_HOME` and mount point.
pub struct TestVolume {
    scratch: Option<TempDir>,
    root: PathBuf,
    home: PathBuf,
    name: String,
    mountpoint: PathBuf,
    state: MountState,
    mountpoints: MountPoints,
    watchdog: Option<Watchdog>,
    mount_args: Vec<String>,
}

impl TestVolume {
    /// A volume with the default format, mounted.
    pub fn new() -> Self {
        Self::builder().build()
    }

    pub fn builder() -> VolumeBuilder {
        let secs = std::env::var("HYBRIDFS_TEST_WATCHDOG_SECS").ok().and_then(|s| s.parse().ok());
        VolumeBuilder {
            name: "vol".to_string(),
            format_args: Vec::new(),
            home: None,
            watchdog: secs.map(Duration::from_secs).unwrap_or(DEFAULT_WATCHDOG),
            mount: true,
            format: true,
            mount_args: Vec::new(),
        }
    }

    /// The scratch directory, outside the mount.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `rel` inside the mount.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Writes `data` at `rel` inside the mount (parents created) and fsyncs it.
    pub fn put(&self, rel: &str, data: &[u8]) {
        use std::io::Write;
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = fs::File::create(&p).unwrap_or_else(|e| panic!("create {rel}: {e}"));
        f.write_all(data).unwrap_or_else(|e| panic!("write {rel}: {e}"));
        f.sync_all().unwrap_or_else(|e| panic!("fsync {rel}: {e}"));
    }

    /// `HOME/volumes/NAME`.
    pub fn volume_dir(&self) -> PathBuf {
        self.home.join("volumes").join(&self.name)
    }

    pub fn state(&self) -> MountState {
        self.state
    }

    /// Runs `hybridctl ARGS` against this volume's home.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        self.ctl_os(&args.iter().map(OsStr::new).collect::<Vec<_>>())
    }

    pub fn ctl_os(&self, args: &[&OsStr]) -> CmdOutput {
        hybridctl_in(&self.home, args, CMD_LIMIT)
    }

    /// `hybridctl ARGS` with extra environment variables for that command only.
    pub fn ctl_env(&self, env: &[(&str, &str)], args: &[&str]) -> CmdOutput {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        hybridctl_in_env(&self.home, env, &args, CMD_LIMIT)
    }

    /// `hybridctl mount NAME MP -d` for another mount point, tracked for cleanup. The caller
    /// checks the outcome; this volume's own state is not changed.
    pub fn try_mount_at(&self, mountpoint: &Path) -> CmdOutput {
        self.track_mountpoint(mountpoint);
        let name = self.name.clone();
        let mut args = vec![OsStr::new("mount"), OsStr::new(&name), mountpoint.as_os_str(), OsStr::new("-d")];
        args.extend(self.mount_args.iter().map(OsStr::new));
        self.ctl_os(&args)
    }

    /// Makes teardown (and the watchdog) take `mountpoint` down too.
    pub fn track_mountpoint(&self, mountpoint: &Path) {
        let mut mps = self.mountpoints.lock().unwrap_or_else(|e| e.into_inner());
        if !mps.iter().any(|m| m == mountpoint) {
            mps.push(mountpoint.to_path_buf());
        }
    }

    /// Mounts at the volume's mount point; panics with the reason and the log tail on failure.
    pub fn mount(&mut self) {
        self.mount_env(&[]);
    }

    /// [`mount`](Self::mount) with extra environment variables for the mount process (which
    /// inherits them from `hybridctl mount -d`), e.g. `HYBRIDFS_CRASHPOINT`.
    pub fn mount_env(&mut self, env: &[(&str, &str)]) {
        let mp = self.mountpoint.clone();
        self.track_mountpoint(&mp);
        let mut args = vec![OsStr::new("mount"), OsStr::new(&self.name), mp.as_os_str(), OsStr::new("-d")];
        args.extend(self.mount_args.iter().map(OsStr::new));
        let out = hybridctl_in_env(&self.home, env, &args, CMD_LIMIT);
        assert!(out.success(), "mount failed: {out}\n--- mount.log tail ---\n{}", self.log_tail(40));
        assert!(
            procs::is_mounted(&mp),
            "`hybridctl mount -d` exited 0 but nothing is mounted at {}",
            mp.display()
        );
        let fstype = procs::mount_fstype(&mp).unwrap_or_default();
        assert!(fstype.starts_with("fuse"), "{} is mounted as {fstype:?}, not through FUSE", mp.display());
        self.state = MountState::Mounted;
    }

    /// `hybridctl umount MP`; panics unless it succeeds and the mount is gone.
    pub fn umount(&mut self) {
        let out = self.ctl_os(&[OsStr::new("umount"), self.mountpoint.as_os_str()]);
        assert!(out.success(), "umount failed: {out}\n--- mount.log tail ---\n{}", self.log_tail(40));
        assert!(
            !procs::is_mounted(&self.mountpoint),
            "`hybridctl umount` exited 0 but {} is still mounted",
            self.mountpoint.display()
        );
        if let Some(pid) = self.mount_pid() {
            assert!(!procs::pid_alive(pid), "mount process {pid} still alive after umount");
        }
        self.state = MountState::Unmounted;
    }

    pub fn remount(&mut self) {
        self.umount();
        self.mount();
    }

    /// Pid of the mount process, from `HOME/volumes/NAME/mount.json` (field `pid`).
    pub fn mount_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.volume_dir().join("mount.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.get("pid")?.as_i64().map(|p| p as i32)
    }

    /// Pid written in the volume's `lock` file.
    fn lock_pid(&self) -> Option<i32> {
        fs::read_to_string(self.volume_dir().join("lock")).ok()?.trim().parse().ok()
    }

    /// `kill -9` of the mount process; waits until it is gone. Returns its pid.
    pub fn kill_mount(&mut self) -> i32 {
        let pid = self.mount_pid().expect("mount.json has no pid: is the volume mounted?");
        assert!(procs::pid_alive(pid), "mount process {pid} (from mount.json) is not running");
        assert!(procs::kill9_and_wait(pid, Duration::from_secs(10)), "mount process {pid} survived SIGKILL for 10 s");
        self.state = MountState::Dead;
        pid
    }

    /// After the mount process was expected to die by itself (a crash point): waits (bounded)
    /// until `pid` is gone and marks the mount dead. Returns whether it died.
    pub fn wait_mount_died(&mut self, pid: i32, limit: Duration) -> bool {
        let died = crate::poll_until(limit, Duration::from_millis(20), || !procs::pid_alive(pid));
        if died {
            self.state = MountState::Dead;
        }
        died
    }

    /// Detaches the dead kernel mount left by [`kill_mount`](Self::kill_mount) (`umount -l`).
    pub fn clean_dead_mount(&mut self) {
        procs::lazy_unmount_all(&self.mountpoint);
        self.state = MountState::Unmounted;
    }

    /// Marks the volume as mounted again after a test mounted it by hand (e.g. with
    /// [`try_mount_at`](Self::try_mount_at) on the volume's own mount point).
    pub fn set_state(&mut self, state: MountState) {
        self.state = state;
    }

    /// The dirty-extent journal, `hybridctl journal NAME --json`.
    pub fn journal(&self) -> Vec<JournalRow> {
        let out = self.ctl(&["journal", &self.name, "--json"]);
        out.assert_success();
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("journal --json is not JSON ({e}): {out}"));
        let rows = json.as_array().unwrap_or_else(|| panic!("journal --json is not an array: {out}"));
        rows.iter().map(|r| parse_journal_row(r)).collect()
    }

    /// `hybridctl fsck NAME EXTRA...`.
    pub fn fsck(&self, extra: &[&str]) -> CmdOutput {
        let mut args = vec!["fsck", self.name.as_str()];
        args.extend_from_slice(extra);
        self.ctl(&args)
    }

    /// The background mount process's log.
    pub fn mount_log(&self) -> String {
        fs::read(self.volume_dir().join("mount.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.mount_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sealed block files: `HOME/volumes/NAME/blocks/XX/<64 hex>`.
    pub fn block_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dirs) = fs::read_dir(self.volume_dir().join("blocks")) else {
            return out;
        };
        for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
            for f in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                if f.path().is_file() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    fn arm_watchdog(&self, limit: Duration) -> Watchdog {
        let mount_json = self.volume_dir().join("mount.json");
        let pid_of = Box::new(move || {
            let text = fs::read_to_string(&mount_json).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            json.get("pid")?.as_i64().map(|p| p as i32)
        });
        Watchdog::arm(limit, self.mountpoints.clone(), pid_of)
    }

    fn teardown(&mut self) {
        if self.state == MountState::Mounted && procs::is_mounted(&self.mountpoint) {
            let out = hybridctl_in(
                &self.home,
                &[OsStr::new("umount"), self.mountpoint.as_os_str()],
                Duration::from_secs(60),
            );
            if !out.success() {
                eprintln!("harness: hybridctl umount failed, falling back to umount -l: {out}");
            }
        }
        let mountpoints = self.mountpoints.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for mp in &mountpoints {
            procs::lazy_unmount_all(mp);
        }
        self.kill_leftovers(&mountpoints);
        self.state = MountState::Unmounted;
    }

    /// SIGKILL for mount processes still alive after unmounting: the pid in mount.json or
    /// lock, and any hybridctl process with one of our mount points as an argument.
    fn kill_leftovers(&self, mountpoints: &[PathBuf]) {
        let mut pids: Vec<i32> = [self.mount_pid(), self.lock_pid()]
            .into_iter()
            .flatten()
            .filter(|p| is_mount_process(*p))
            .collect();
        for mp in mountpoints {
            let holders = procs::processes_with_arg(&mp.to_string_lossy());
            pids.extend(holders.into_iter().filter(|p| is_mount_process(*p)));
        }
        for pid in pids {
            if procs::pid_alive(pid) {
                eprintln!("harness: killing leftover mount process {pid}: {:?}", procs::cmdline(pid));
                procs::kill9_and_wait(pid, Duration::from_secs(10));
            }
        }
    }
}

impl Default for TestVolume {
    fn default() -> Self {
        Self::new()
    }
}

/// A hybridctl process (not, say, a `umount -l` naming the same mount point).
fn is_mount_process(pid: i32) -> bool {
    procs::cmdline(pid).first().is_some_and(|exe| exe.contains("hybridctl"))
}

fn parse_journal_row(row: &serde_json::Value) -> JournalRow {
    let field = |k: &str| {
        row.get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("journal row without integer field {k:?}: {row}"))
    };
    JournalRow { epoch: field("epoch"), ino: field("ino"), block: field("block") }
}

impl Drop for TestVolume {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "harness: test failed; scratch {} ; mount.log tail:\n{}",
                self.root.display(),
                self.log_tail(60)
            );
        }
        // Stop the watchdog first: if it fired, this waits until it has finished aborting,
        // so the two never take the mounts down at the same time. Teardown is bounded itself.
        let fired = self.watchdog.take().is_some_and(Watchdog::disarm);
        self.teardown();
        if std::env::var_os("HYBRIDFS_TEST_KEEP").is_some() {
            if let Some(dir) = self.scratch.take() {
                eprintln!("harness: keeping scratch dir {}", dir.keep().display());
            }
        }
        if fired && !panicking {
            panic!("the watchdog fired: the test hung and its mounts were aborted");
        }
    }
}
