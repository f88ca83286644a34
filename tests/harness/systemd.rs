//! [`LiveSystemd`]: a systemd of the test's own, to run the shipped units (`dist/systemd/`)
//! under the real service manager.
//!
//! systemd runs as PID 1 of new PID, mount, cgroup and UTS namespaces (`unshare`), so the
//! machine's own services, `/run` and `/etc` are never touched:
//!
//! - `/run` is a fresh tmpfs inside the namespace;
//! - `/etc` is an overlay whose upper layer is in the test's scratch directory, so the units'
//!   own paths (`/etc/hybridfs/mount-NAME.env`, `/etc/hybridfs/agent.toml`) hold the test's
//!   files, exactly where an operator puts them, and `/etc/fstab` is the test's (empty unless
//!   it gives one): systemd's fstab generator makes `.mount` units of its lines;
//! - `/usr` and `/var` are overlays too: `/usr/sbin` holds the links the test asks for
//!   (mount(8)'s helper `mount.fuse.hybridfs`), and a package installed inside lands there;
//! - `SYSTEMD_UNIT_PATH` names one folder of the scratch directory: the shipped units with
//!   `/usr/bin/` pointed at this build's binaries, empty stand-ins for the targets they are
//!   ordered against (`sysinit.target`, `network-online.target`, …; the real ones would start
//!   the machine's udev, tmpfiles and journald), and a drop-in per unit sending its output to
//!   `UNIT.log` in the scratch directory (there is no journald here); then the generators'
//!   output (`/run/systemd/generator`). Nothing else differs from the shipped units.
//!
//! Commands reach it through `nsenter` (its mount and PID namespaces: `systemctl`, and a shell
//! to use a mount that lives in its mount namespace). The network is the machine's: a service
//! listening on 127.0.0.1 is reachable from the test. Dropping it kills the namespace's PID 1,
//! which takes every process in it, and with them its mounts.

use crate::cmd::{self, CmdOutput};
use crate::{fail_loudly, poll_until};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The shipped units' directory.
pub fn dist_units() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd")
}

const SYSTEMD: &str = "/lib/systemd/systemd";
/// Targets the shipped units are ordered against (and those every service's default
/// dependencies name): empty stand-ins.
const STUB_TARGETS: &[&str] = &[
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "umount.target",
    "network.target",
    "network-online.target",
    "local-fs.target",
    "local-fs-pre.target",
    "remote-fs.target",
    "remote-fs-pre.target",
    "multi-user.target",
];

pub struct LiveSystemd {
    dir: PathBuf,
    /// `unshare`, whose child is the namespace's PID 1.
    unshare: Child,
    /// systemd's PID as this machine sees it.
    pid: i32,
}

/// What a [`LiveSystemd`] runs.
#[derive(Default)]
pub struct Boot<'a> {
    /// Shipped units to run (file names in `dist/systemd/`), their `/usr/bin/` made `bin_dir`.
    pub units: &'a [&'a str],
    pub bin_dir: Option<&'a Path>,
    /// Files to put under the namespace's `/etc` (relative paths: `hybridfs/agent.toml`).
    pub etc: Vec<(&'a str, String)>,
    /// Links to put in its `/usr/sbin` (name, target).
    pub sbin: Vec<(&'a str, PathBuf)>,
    /// Units a package installs into the namespace (its `/usr`, `/etc` and `/var` are
    /// overlays): linked from `/lib/systemd/system/NAME`, not found until the package is there
    /// and again after it is purged. The system's unit folders are never on the unit path:
    /// their `.wants/` would hang the machine's own boot units (udev, tmpfiles, which empties
    /// the machine's /tmp) off the stand-in targets.
    pub installed: &'a [&'a str],
}

/// Boot units that act on the machine rather than on a namespace: masked, in case anything
/// names them.
const MASKED: &[&str] = &[
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-random-seed.service",
    "tmp.mount",
];

/// The trees the namespace sees through an overlay whose upper layer is in the scratch folder.
const OVERLAID: &[&str] = &["etc", "usr", "var"];

impl LiveSystemd {
    /// Boots a systemd in `dir` (a scratch folder of the test) running what `boot` says.
    pub fn boot(dir: &Path, boot: Boot) -> LiveSystemd {
        if !Path::new(SYSTEMD).exists() {
            fail_loudly("no /lib/systemd/systemd: install Debian's `systemd` package (tests/run.sh does)");
        }
        let unit_dir = dir.join("units");
        fs::create_dir_all(&unit_dir).unwrap();
        let mut mounts = String::new();
        for tree in OVERLAID {
            let (upper, work) = (dir.join(format!("{tree}-upper")), dir.join(format!("{tree}-work")));
            fs::create_dir_all(&upper).unwrap();
            fs::create_dir_all(&work).unwrap();
            mounts += &format!(
                "mount -t overlay overlay -o lowerdir=/{tree},upperdir={},workdir={} /{tree}\n",
                upper.display(),
                work.display()
            );
        }
        for t in STUB_TARGETS {
            fs::write(unit_dir.join(t), format!("[Unit]\nDescription=stand-in for {t}\n")).unwrap();
        }
        for u in MASKED {
            std::os::unix::fs::symlink("/dev/null", unit_dir.join(u)).unwrap();
        }
        for u in boot.installed {
            std::os::unix::fs::symlink(Path::new("/lib/systemd/system").join(u), unit_dir.join(u)).unwrap();
        }
        for u in boot.units {
            let text = fs::read_to_string(dist_units().join(u)).unwrap_or_else(|e| panic!("read dist/systemd/{u}: {e}"));
            let bin = format!("{}/", boot.bin_dir.expect("units need a bin_dir").display());
            fs::write(unit_dir.join(u), text.replace("/usr/bin/", &bin)).unwrap();
        }
        for u in boot.units.iter().chain(boot.installed) {
            let dropins = unit_dir.join(format!("{u}.d"));
            fs::create_dir_all(&dropins).unwrap();
            let log = dir.join(format!("{u}.log"));
            fs::write(
                dropins.join("test-log.conf"),
                format!("[Service]\nStandardOutput=append:{l}\nStandardError=append:{l}\n", l = log.display()),
            )
            .unwrap();
        }
        let etc = dir.join("etc-upper");
        fs::write(etc.join("fstab"), "").unwrap();
        for (rel, text) in &boot.etc {
            let path = etc.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let sbin = dir.join("usr-upper/sbin");
        fs::create_dir_all(&sbin).unwrap();
        for (name, target) in &boot.sbin {
            std::os::unix::fs::symlink(target, sbin.join(name)).unwrap();
        }
        let path = format!("{}:/run/systemd/generator", unit_dir.display());
        let script = dir.join("boot.sh");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\nmount -t tmpfs tmpfs /run\n{mounts}\
                 export SYSTEMD_UNIT_PATH={path} container=hybridfs-test\n\
                 exec {SYSTEMD} --system --unit=basic.target\n"
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("systemd.log")).unwrap();
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--cgroup", "--uts", "--propagation", "private", "sh"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run unshare (util-linux)");
        let children = format!("/proc/{}/task/{}/children", unshare.id(), unshare.id());
        let mut pid = 0;
        poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            pid = fs::read_to_string(&children).ok().and_then(|c| c.split_whitespace().next()?.parse().ok()).unwrap_or(0);
            pid != 0 && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("systemd"))
        });
        let mut sd = LiveSystemd { dir: dir.to_path_buf(), unshare, pid };
        if pid == 0 {
            panic!("systemd did not start in its namespace: {}", sd.log("systemd"));
        }
        let mut answer = String::new();
        let up = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            answer = sd.systemctl(&["is-system-running"]).stdout;
            matches!(answer.trim(), "running" | "degraded")
        });
        if !up {
            let log = sd.log("systemd");
            sd.stop();
            panic!("systemd did not come up (is-system-running: {answer:?}):\n{log}");
        }
        sd
    }

    /// `nsenter` into the namespace's mount and PID namespaces, then `args`.
    fn enter(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "--"]).args(args);
        cmd::run(&mut c, Duration::from_secs(180))
    }

    /// `systemctl ARGS` against this systemd.
    pub fn systemctl(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend_from_slice(args);
        self.enter(&all)
    }

    /// A shell command inside the namespace (where the units' mounts are).
    pub fn sh(&self, script: &str) -> CmdOutput {
        self.enter(&["sh", "-c", script])
    }

    /// The unit's properties (`systemctl show -p …`).
    pub fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
        let mut args = vec!["show", unit];
        for p in props {
            args.extend_from_slice(&["-p", p]);
        }
        let out = self.systemctl(&args);
        out.assert_success();
        out.stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// One property.
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.show(unit, &[prop]).remove(prop).unwrap_or_default()
    }

    /// The name of the `.mount` unit for `mp` (`systemd-escape`).
    pub fn mount_unit(&self, mp: &Path) -> String {
        let out = self.enter(&["systemd-escape", "--path", "--suffix=mount", mp.to_str().unwrap()]);
        out.assert_success();
        out.stdout.trim().to_string()
    }

    /// A file the generators wrote (`/run/systemd/generator/REL`), if there is one.
    pub fn generated(&self, rel: &str) -> Option<String> {
        let path = format!("/proc/{}/root/run/systemd/generator/{rel}", self.pid);
        // A `.wants/` entry is a link to the unit: read through it.
        fs::read_to_string(path).ok()
    }

    /// The namespace's mount table.
    pub fn mountinfo(&self) -> String {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap_or_default()
    }

    /// The file system type mounted at `mp` in the namespace (the last mount there).
    pub fn fstype_at(&self, mp: &Path) -> Option<String> {
        let mp = mp.to_str()?;
        self.mountinfo().lines().filter(|l| l.split(' ').nth(4) == Some(mp)).last().and_then(|l| {
            let (_, after) = l.split_once(" - ")?;
            after.split(' ').next().map(str::to_string)
        })
    }

    /// The output of `unit` (its unit file's `UNIT.log`: one for all instances of a template),
    /// or systemd's own with `systemd`.
    pub fn log(&self, unit: &str) -> String {
        let file = match (unit.split_once('@'), unit.rsplit_once('.')) {
            (Some((template, _)), Some((_, suffix))) => format!("{template}@.{suffix}"),
            _ => unit.to_string(),
        };
        fs::read_to_string(self.dir.join(format!("{file}.log"))).unwrap_or_default()
    }

    fn stop(&mut self) {
        if self.pid != 0 {
            // SAFETY: kill with a pid this harness started (the namespace's PID 1).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.pid = 0;
        }
        let _ = self.unshare.kill();
        let _ = cmd::wait_bounded(&mut self.unshare, Duration::from_secs(20));
    }
}

impl Drop for LiveSystemd {
    fn drop(&mut self) {
        self.stop();
    }
}
