//! The shipped systemd units (`dist/systemd/`) under a live systemd (doc/OPERATIONS.md): a
//! systemd of the test's own, in namespaces of its own ([`LiveSystemd`]), runs the units as
//! shipped, configured through the files an operator writes (`/etc/hybridfs/mount-NAME.env`,
//! `/etc/hybridfs/agent.toml`, `/etc/hybridfs/agent.env`).
//!
//! - `hybridfs@.service` (`Type=notify`): `systemctl start` returns once the volume is mounted
//!   and answering; when the mount process dies (kill -9), systemd starts it again on the
//!   dead mount it left, and what was fsynced before is there (invariant 1); `systemctl stop`
//!   unmounts with everything sealed and the unit ends `inactive`, not `failed`.
//! - an `/etc/fstab` line: systemd's generator makes it a `.mount` unit of a network file
//!   system (`_netdev`); starting it mounts through mount(8)'s helper, stopping it unmounts,
//!   and the mount process still seals everything before it ends.
//! - the Debian package (`tools/package-deb.sh`): `dpkg -i` in the namespace installs the
//!   units, the helper link, man pages and completions, with binaries without debug info;
//!   its unit mounts; `dpkg --purge` removes it all and tells systemd.
//! - `hybrid-agent.service` (`Type=notify`): `systemctl start` returns once the controller's
//!   API answers; SIGTERM (`systemctl stop`) ends it with status 0; a config error stops the
//!   start before the agent runs, and the unit's log names the key.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hybridfs_tests::free_port;
use hybridfs_tests::systemd::{Boot, LiveSystemd};
use hybridfs_tests::{fail_loudly, hybridctl_bin, poll_until, require_root, TestVolume};

const INV1: &str = "invariant 1: what fsync acknowledged survives a crash of the mount process";

/// A folder holding links named as the units expect (`hybridctl`, and `hybrid-agent` when
/// `agent`) to this build's binaries: the `/usr/bin/` of the units under test.
fn bin_dir(scratch: &Path, agent: bool) -> PathBuf {
    let dir = scratch.join("bin");
    fs::create_dir_all(&dir).unwrap();
    let ctl = hybridctl_bin();
    std::os::unix::fs::symlink(&ctl, dir.join("hybridctl")).unwrap();
    if agent {
        let bin = ctl.with_file_name("hybrid-agent");
        if !bin.exists() {
            fail_loudly(&format!("{} not found: build the workspace (cargo build --release --workspace --bins)", bin.display()));
        }
        std::os::unix::fs::symlink(&bin, dir.join("hybrid-agent")).unwrap();
    }
    dir
}

/// `/etc/hybridfs/mount-NAME.env` and an empty `/etc/hybridfs/hybridfs.toml` for `vol`.
fn mount_files(vol: &TestVolume) -> Vec<(&'static str, String)> {
    vec![
        ("hybridfs/hybridfs.toml", String::new()),
        (
            "hybridfs/mount-main.env",
            format!(
                "HYBRIDFS_HOME={}\nMOUNTPOINT={}\nAWS_EC2_METADATA_DISABLED=true\n",
                vol.home().display(),
                vol.mountpoint().display()
            ),
        ),
    ]
}

fn main_volume() -> TestVolume {
    require_root();
    TestVolume::builder().name("main").unmounted().build()
}

#[test]
fn the_volume_unit_is_ready_once_mounted_comes_back_after_a_crash_and_stops_sealed() {
    let vol = main_volume();
    let mp = vol.mountpoint().to_path_buf();
    let unit = "hybridfs@main.service";
    let bin = bin_dir(vol.root(), false);
    let boot = Boot { units: &["hybridfs@.service"], bin_dir: Some(&bin), etc: mount_files(&vol), ..Boot::default() };
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), boot);

    // Type=notify: the start returns once the mount answers, so it is there at once.
    sd.systemctl(&["start", unit]).assert_success();
    assert_eq!(sd.fstype_at(&mp).as_deref(), Some("fuse.hybridfs"), "mounted when `systemctl start` returned:\n{}", sd.mountinfo());
    let props = sd.show(unit, &["ActiveState", "SubState", "MainPID"]);
    assert_eq!((props["ActiveState"].as_str(), props["SubState"].as_str()), ("active", "running"), "{props:?}\n{}", sd.log(unit));
    let first = props["MainPID"].clone();

    let f = mp.join("ckpt.bin");
    sd.sh(&format!("printf 'epoch-1 weights' > {f} && sync {f}", f = f.display())).assert_success();

    // The mount process dies: Restart=on-failure mounts again (after RestartSec=5s) on the
    // dead mount it left.
    sd.sh(&format!("kill -9 {first}")).assert_success();
    let back = poll_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let p = sd.show(unit, &["ActiveState", "NRestarts", "MainPID"]);
        p["ActiveState"] == "active" && p["NRestarts"] == "1" && p["MainPID"] != first && p["MainPID"] != "0"
    });
    assert!(back, "not restarted: {:?}\n{}", sd.show(unit, &["ActiveState", "SubState", "NRestarts", "Result"]), sd.log(unit));
    assert!(sd.log(unit).contains("detaching the dead mount"), "{}", sd.log(unit));
    let read = sd.sh(&format!("cat {}", f.display()));
    assert_eq!(read.stdout, "epoch-1 weights", "{INV1}: {read}");

    // A write after the restart, then stop: unmounted, nothing left unsealed, a clean end.
    // (Larger than the 4 KiB a small file keeps in its inode record: it has blocks to seal.)
    sd.sh(&format!("head -c 3145728 /dev/urandom > {}", mp.join("ckpt-2.bin").display())).assert_success();
    sd.systemctl(&["stop", unit]).assert_success();
    let props = sd.show(unit, &["ActiveState", "Result"]);
    assert_eq!((props["ActiveState"].as_str(), props["Result"].as_str()), ("inactive", "success"), "{props:?}\n{}", sd.log(unit));
    assert_eq!(sd.fstype_at(&mp), None, "still mounted after `systemctl stop`:\n{}", sd.mountinfo());
    let out = vol.ctl(&["status", "main", "--json"]);
    out.assert_success();
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let status = &status[0];
    assert_eq!(status["mounted"], false, "{status}");
    assert_eq!(status["bytes"], 15 + 3 * 1024 * 1024, "{status}");
    assert_eq!(status["unsealed_bytes"], 0, "the stop seals what was written: {status}");
}

#[test]
fn an_fstab_line_becomes_a_network_mount_unit_that_mounts_through_the_helper() {
    let vol = main_volume();
    let mp = vol.mountpoint().to_path_buf();
    let etc = vec![
        ("fstab", format!("main {}  fuse.hybridfs  _netdev,nofail,home={}  0 0\n", mp.display(), vol.home().display())),
        ("hybridfs/hybridfs.toml", String::new()),
    ];
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), Boot { etc, sbin: vec![("mount.fuse.hybridfs", hybridctl_bin())], ..Boot::default() });
    let unit = sd.mount_unit(&mp);
    let generated = sd.generated(&unit).unwrap_or_else(|| panic!("the fstab generator made no {unit}"));
    assert!(generated.contains("Type=fuse.hybridfs") && generated.contains("What=main"), "{generated}");
    assert!(sd.generated(&format!("remote-fs.target.wants/{unit}")).is_some(), "_netdev: systemd treats it as a network file system");

    sd.systemctl(&["start", &unit]).assert_success();
    assert_eq!(sd.fstype_at(&mp).as_deref(), Some("fuse.hybridfs"), "mounted when `systemctl start` returned:\n{}", sd.mountinfo());
    sd.sh(&format!("head -c 3145728 /dev/urandom > {f} && sync {f}", f = mp.join("data.bin").display())).assert_success();

    sd.systemctl(&["stop", &unit]).assert_success();
    let props = sd.show(&unit, &["ActiveState", "Result"]);
    assert_eq!((props["ActiveState"].as_str(), props["Result"].as_str()), ("inactive", "success"), "{props:?}");
    assert_eq!(sd.fstype_at(&mp), None, "still mounted after `systemctl stop`:\n{}", sd.mountinfo());
    // umount(8) returns before the mount process has sealed; it ends on its own once done.
    let mut status = serde_json::Value::Null;
    let ended = poll_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let out = vol.ctl(&["status", "main", "--json"]);
        status = serde_json::from_str::<serde_json::Value>(&out.stdout).map(|v| v[0].clone()).unwrap_or_default();
        status["mounted"] == false
    });
    assert!(ended, "the mount process did not end after the unit stopped: {status}");
    assert_eq!(status["bytes"], 3 * 1024 * 1024, "{status}");
    assert_eq!(status["unsealed_bytes"], 0, "sealed before it ended: {status}");
}

/// `GET path` with the bearer token: (status line, body).
fn get(port: u16, path: &str, token: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("the API at 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A controller of volume `main` (its store: a file store in the scratch folder) with a load
/// that never asks for a node.
fn agent_toml(dir: &Path, home: &Path, port: u16) -> String {
    format!(
        r#"role = "controller"
state_dir = "{d}/state"
[volume]
name = "main"
store = "file://{d}/store"
hybridfs_home = "{home}"
[api]
listen = "127.0.0.1:{port}"
token_file = "{d}/token"
[load]
command = "echo 5"
every = "1s"
[scale_up]
threshold = 90
for = "1m"
[burst]
window = {{ start = "00:00", end = "00:00", tz = "UTC" }}
max_nodes = 1
lease = "1h"
[merge]
start = "01:00"
deadline = "05:00"
tz = "UTC"
[provider]
kind = "local"
[provider.local]
subnet = "10.231.7.0/24"
"#,
        d = dir.display(),
        home = home.display()
    )
}

#[test]
fn the_agent_unit_is_ready_once_its_api_answers_and_stops_cleanly() {
    let vol = main_volume();
    let dir = vol.root().join("agent");
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut etc = mount_files(&vol);
    etc.push(("hybridfs/agent.toml", agent_toml(&dir, vol.home(), port)));
    etc.push(("hybridfs/agent.env", format!("AWS_EC2_METADATA_DISABLED=true\nHYBRIDFS_HOME={}\n", vol.home().display())));
    let bin = bin_dir(vol.root(), true);
    let boot = Boot { units: &["hybridfs@.service", "hybrid-agent.service"], bin_dir: Some(&bin), etc, ..Boot::default() };
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), boot);
    let agent = "hybrid-agent.service";

    sd.systemctl(&["start", "hybridfs@main.service"]).assert_success();
    sd.systemctl(&["start", agent]).assert_success();
    // Type=notify: ready means the API answers, with no waiting here.
    let token = fs::read_to_string(dir.join("token")).expect("the agent wrote its token file before it said ready");
    let (status, body) = get(port, "/v1/nodes", token.trim());
    assert!(status.contains(" 200 "), "{status}\n{body}\n{}", sd.log(agent));
    assert_eq!(body.trim(), "[]", "no load, no nodes");
    let props = sd.show(agent, &["ActiveState", "SubState", "Type"]);
    assert_eq!((props["ActiveState"].as_str(), props["SubState"].as_str(), props["Type"].as_str()), ("active", "running", "notify"), "{props:?}");

    // SIGTERM: saved and stopped, status 0, `inactive` rather than `failed`.
    sd.systemctl(&["stop", agent]).assert_success();
    let props = sd.show(agent, &["ActiveState", "Result", "ExecMainStatus"]);
    assert_eq!(
        (props["ActiveState"].as_str(), props["Result"].as_str(), props["ExecMainStatus"].as_str()),
        ("inactive", "success", "0"),
        "{props:?}\n{}",
        sd.log(agent)
    );
    assert!(sd.log(agent).contains("controller stopping"), "{}", sd.log(agent));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the API still answers after the stop");

    // A config error: ExecStartPre (check-config) refuses before the agent runs, and says
    // which key. The overlay's upper layer is the namespace's /etc.
    let conf = vol.root().join("systemd/etc-upper/hybridfs/agent.toml");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("surge = true\n");
    fs::write(&conf, text).unwrap();
    let out = sd.systemctl(&["start", agent]);
    assert!(!out.success(), "a bad config started: {out}");
    let props = sd.show(agent, &["ActiveState", "Result"]);
    assert_ne!(props["ActiveState"], "active", "{props:?}");
    assert_eq!(props["Result"], "exit-code", "{props:?}");
    assert!(sd.log(agent).contains("surge"), "the log names the unknown key:\n{}", sd.log(agent));

    sd.systemctl(&["stop", "hybridfs@main.service"]).assert_success();
    assert_eq!(sd.prop("hybridfs@main.service", "Result"), "success");
}

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn the_debian_package_installs_its_units_mounts_through_them_and_purges() {
    let vol = main_volume();
    // The package, built by tools/package-deb.sh from this build's binaries (dpkg-deb: the
    // path a machine without cargo-deb takes), into the scratch folder.
    let target = vol.root().join("target");
    fs::create_dir_all(target.join("release")).unwrap();
    let ctl = hybridctl_bin();
    for bin in ["hybridctl", "hybrid-agent"] {
        let from = ctl.with_file_name(bin);
        if !from.exists() {
            fail_loudly(&format!("{} not found: build the workspace (cargo build --release --workspace --bins)", from.display()));
        }
        std::os::unix::fs::symlink(&from, target.join("release").join(bin)).unwrap();
    }
    let mut c = std::process::Command::new(repo().join("tools/package-deb.sh"));
    c.args(["--no-build", "--dpkg-deb"]).env("CARGO_TARGET_DIR", &target).env("TMPDIR", vol.root());
    let out = hybridfs_tests::cmd::run(&mut c, Duration::from_secs(600));
    out.assert_success();
    let deb = PathBuf::from(out.stdout.trim());
    assert!(deb.starts_with(&target) && deb.exists(), "{out}");

    let mut etc = mount_files(&vol);
    etc.retain(|(rel, _)| *rel != "hybridfs/hybridfs.toml"); // the package's conffile
    let boot = Boot { etc, installed: &["hybridfs@.service", "hybrid-agent.service"], ..Boot::default() };
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), boot);
    sd.sh(&format!("dpkg -i {}", deb.display())).assert_success();
    // Installed where a package puts things, and systemd told (postinst: daemon-reload).
    let exec = sd.prop("hybridfs@main.service", "ExecStart");
    assert!(exec.contains("path=/usr/bin/hybridctl") && exec.contains("--mkdir"), "{exec}");
    let out = sd.sh("readlink /usr/sbin/mount.fuse.hybridfs && hybridctl --version && ls /usr/share/man/man1/hybridctl-mount.1.gz /usr/share/bash-completion/completions/hybridctl /etc/hybridfs/hybridfs.toml");
    out.assert_success();
    assert!(out.stdout.starts_with("/usr/bin/hybridctl\nhybridctl "), "{out}");
    let out = sd.sh("readelf -SW /usr/bin/hybridctl | grep -c -E '[.]debug_(info|line|str)' || true");
    assert_eq!(out.stdout.trim(), "0", "the packaged binary has no debug info (readelf): {out}");

    let unit = "hybridfs@main.service";
    sd.systemctl(&["start", unit]).assert_success();
    let mp = vol.mountpoint();
    assert_eq!(sd.fstype_at(mp).as_deref(), Some("fuse.hybridfs"), "{}", sd.log(unit));
    sd.sh(&format!("printf installed > {}", mp.join("f").display())).assert_success();
    sd.systemctl(&["stop", unit]).assert_success();
    assert_eq!(sd.prop(unit, "Result"), "success");

    sd.sh("dpkg --purge hybridfs").assert_success();
    let out = sd.sh("test ! -e /usr/bin/hybridctl && test ! -e /usr/sbin/mount.fuse.hybridfs && test ! -e /lib/systemd/system/hybridfs@.service");
    assert!(out.success(), "purge left files behind: {out}");
    assert_eq!(sd.prop(unit, "LoadState"), "not-found", "postrm: daemon-reload");
    // What the operator wrote is theirs: kept.
    assert!(sd.sh("test -e /etc/hybridfs/mount-main.env").success());
    let out = vol.ctl(&["status", "main", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status[0]["files"], 1, "the volume outlives the package: {out}");
}
