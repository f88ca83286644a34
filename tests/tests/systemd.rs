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
//! - `hybrid-agent.service` (`Type=notify`): `systemctl start` returns once the controller's
//!   API answers; SIGTERM (`systemctl stop`) ends it with status 0; a config error stops the
//!   start before the agent runs, and the unit's log names the key.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hybridfs_tests::systemd::LiveSystemd;
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
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), &["hybridfs@.service"], &bin_dir(vol.root(), false), &mount_files(&vol), &[]);

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
    let ctl = hybridctl_bin();
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), &[], &bin_dir(vol.root(), false), &etc, &[("mount.fuse.hybridfs", &ctl)]);
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    let sd = LiveSystemd::boot(&vol.root().join("systemd"), &["hybridfs@.service", "hybrid-agent.service"], &bin_dir(vol.root(), true), &etc, &[]);
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
