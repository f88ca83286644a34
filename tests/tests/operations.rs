//! Operating hybridfs like any file system (doc/OPERATIONS.md, doc/CONFIGURATION.md): the
//! config file reaches the commands and the mounts they start, and its errors name file, line
//! and key; `mount -t fuse.hybridfs` and an fstab line mount through the
//! `mount.fuse.hybridfs` helper; a foreground mount tells systemd `READY=1` once it answers and
//! `STOPPING=1` when it ends; completions and man pages come from the CLI definition; the
//! runbook's restore of a home from a copy of its unmounted volume, and the refusal of a
//! volume whose format is newer than the binary.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hybridfs_tests::free_port;
use hybridfs_tests::cmd::{self, CmdOutput, CMD_LIMIT};
use hybridfs_tests::{hybridctl_bin, procs, require_root, TestVolume};

fn run(c: &mut Command) -> CmdOutput {
    cmd::run(c.env("AWS_EC2_METADATA_DISABLED", "true"), CMD_LIMIT)
}

#[test]
fn the_config_file_reaches_the_mount_and_its_errors_name_file_line_and_key() {
    let mut vol = TestVolume::builder().unmounted().build();
    let file = vol.root().join("hybridfs.toml");
    let file_arg = file.to_str().unwrap().to_string();
    let port = free_port();
    fs::write(&file, format!("[mount]\nthreads = 2\nmetrics_addr = \"127.0.0.1:{port}\"\n\n[log]\nformat = \"json\"\n")).unwrap();

    // config show: each value with its source; HYBRIDFS_HOME (set by the harness) beats the file.
    let out = vol.ctl(&["--config", &file_arg, "config", "show", "--json"]);
    out.assert_success();
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let source = |key: &str| rows.as_array().unwrap().iter().find(|r| r["key"] == key).map(|r| r["source"].as_str().unwrap().to_string());
    assert_eq!(source("mount.threads").unwrap(), format!("{file_arg}:2"));
    assert_eq!(source("home").unwrap(), "env HYBRIDFS_HOME");
    assert_eq!(source("mount.seal_delay").unwrap(), "default");
    let out = vol.ctl_env(&[("HYBRIDFS_MOUNT_THREADS", "3")], &["--config", &file_arg, "config", "show"]);
    let threads = out.stdout.lines().find(|l| l.starts_with("mount.threads")).unwrap_or_default().to_string();
    assert!(threads.contains(" 3 ") && threads.ends_with("env HYBRIDFS_MOUNT_THREADS"), "the environment beats the file: {out}");

    // The background mount reads the same file (named by --config): its metrics server is up,
    // and its log lines are JSON.
    let mp = vol.mountpoint().to_str().unwrap().to_string();
    vol.ctl(&["--config", &file_arg, "mount", "vol", &mp, "-d"]).assert_success();
    vol.set_state(hybridfs_tests::MountState::Mounted);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the mount serves metrics at the address in the config file");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let log = vol.mount_log();
    let line = log.lines().find(|l| l.contains("serving volume vol")).unwrap_or_else(|| panic!("no serving line in mount.log:\n{log}"));
    serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("log.format = json, but {line:?}: {e}"));
    vol.umount();

    // A bad value: exit 2, one line naming the file, the line and the key; nothing runs.
    fs::write(&file, "[mount]\nthreads = 2\nseal_delay = \"soon\"\n").unwrap();
    let out = vol.ctl(&["--config", &file_arg, "mount", "vol", &mp, "-d"]);
    out.assert_code(2);
    assert!(out.stderr.contains(&format!("hybridctl: error: {file_arg}:3: mount.seal_delay: `soon` is not a duration")), "{out}");
    assert!(!procs::is_mounted(vol.mountpoint()), "a refused config mounted nothing");
    // An unknown key is an error, found through HYBRIDFS_CONFIG too.
    fs::write(&file, "home = \"/x\"\n[mount]\nwriteback = true\n").unwrap();
    let out = vol.ctl_env(&[("HYBRIDFS_CONFIG", &file_arg)], &["config", "check"]);
    out.assert_code(2);
    assert!(out.stderr.contains(&format!("{file_arg}:3: mount.writeback: unknown field `writeback`")), "{out}");
    // A named file that does not exist is an error; a good one checks.
    let out = vol.ctl(&["--config", "/nonexistent/hybridfs.toml", "status"]);
    out.assert_code(2);
    fs::write(&file, "[format]\nblock_size = \"64K\"\n").unwrap();
    let out = vol.ctl(&["--config", &file_arg, "config", "check"]);
    out.assert_success();
    assert!(out.stdout.contains(&format!("{file_arg}: ok")), "{out}");
    // format takes its default block size from the file; a flag beats it.
    vol.ctl(&["--config", &file_arg, "format", "small"]).assert_success();
    vol.ctl(&["--config", &file_arg, "format", "big", "--block-size", "4M"]).assert_success();
    let block_size = |name: &str| -> u64 {
        let json: serde_json::Value = serde_json::from_slice(&fs::read(vol.home().join("volumes").join(name).join("volume.json")).unwrap()).unwrap();
        json["block_size"].as_u64().unwrap()
    };
    assert_eq!((block_size("small"), block_size("big")), (64 << 10, 4 << 20));
}

/// `/sbin/mount.fuse.hybridfs` → the hybridctl under test for the life of the guard; what was
/// there before is put back on drop (panics included).
struct HelperLink {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl HelperLink {
    fn install() -> HelperLink {
        let path = PathBuf::from("/sbin/mount.fuse.hybridfs");
        let saved = fs::read_link(&path).ok();
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(hybridctl_bin(), &path).expect("link /sbin/mount.fuse.hybridfs");
        HelperLink { path, saved }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(target) = &self.saved {
            let _ = std::os::unix::fs::symlink(target, &self.path);
        }
    }
}

#[test]
fn mount_t_fuse_hybridfs_and_an_fstab_line_mount_through_the_helper() {
    require_root();
    let mut vol = TestVolume::builder().unmounted().build();
    let _link = HelperLink::install();
    let home = vol.home().to_str().unwrap().to_string();
    let mp = vol.mountpoint().to_path_buf();

    // mount(8)'s calling convention, with options meant for mount(8) and systemd mixed in.
    let opts = format!("rw,noauto,_netdev,x-systemd.requires=network-online.target,nofail,home={home},seal_delay=1");
    let out = run(Command::new("mount").args(["-t", "fuse.hybridfs", "-o", &opts, "vol"]).arg(&mp).env_remove("HYBRIDFS_HOME"));
    out.assert_success();
    assert!(procs::is_mounted(&mp), "mount -t fuse.hybridfs exited 0 but nothing is mounted: {out}");
    vol.set_state(hybridfs_tests::MountState::Mounted);
    fs::write(mp.join("via-mount-t"), b"one").unwrap();
    let status = vol.ctl(&["status", "vol", "--json"]);
    assert!(status.stdout.contains(mp.to_str().unwrap()), "status names the mount point: {status}");
    vol.umount();

    // An fstab line, from a scratch fstab (mount -T), never /etc/fstab.
    let fstab = vol.root().join("fstab");
    fs::write(&fstab, format!("# scratch\nvol {} fuse.hybridfs home={home},noauto,_netdev,x-systemd.requires=network-online.target,rw 0 0\n", mp.display())).unwrap();
    let out = run(Command::new("mount").arg("-T").arg(&fstab).arg(&mp).env_remove("HYBRIDFS_HOME"));
    out.assert_success();
    assert!(procs::is_mounted(&mp), "mount -T FSTAB MOUNTPOINT exited 0 but nothing is mounted: {out}");
    vol.set_state(hybridfs_tests::MountState::Mounted);
    assert_eq!(fs::read(mp.join("via-mount-t")).unwrap(), b"one", "the file written through the first mount");
    // The helper daemonized: mount(8) has returned, the mount process lives on in a session of
    // its own.
    let pid = vol.mount_pid().expect("mount.json names the mount process");
    // SAFETY: getsid on a pid has no preconditions.
    let (sid, ours) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
    assert!(sid == pid && sid != ours, "the mount process leads its own session (sid {sid}, pid {pid}, ours {ours})");
    vol.umount();

    // `-o ro`: mounted read-only (the kernel's MS_RDONLY; the file system answers EROFS too):
    // reads work, every change fails with EROFS, and the volume is as it was afterwards.
    let out = run(Command::new("mount").args(["-t", "fuse.hybridfs", "-o", &format!("ro,home={home}"), "vol"]).arg(&mp));
    out.assert_success();
    assert!(procs::is_mounted(&mp), "mount -o ro exited 0 but nothing is mounted: {out}");
    vol.set_state(hybridfs_tests::MountState::Mounted);
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == mp.to_str()).unwrap_or_default().to_string();
    assert!(line.split(' ').nth(3).is_some_and(|o| o.split(',').any(|o| o == "ro")), "the kernel has it read-only: {line}");
    assert_eq!(fs::read(mp.join("via-mount-t")).unwrap(), b"one");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(fs::write(mp.join("new"), b"x"), "create");
    erofs(fs::OpenOptions::new().append(true).open(mp.join("via-mount-t")).map(drop), "open for writing");
    erofs(fs::remove_file(mp.join("via-mount-t")), "unlink");
    erofs(fs::create_dir(mp.join("d")), "mkdir");
    erofs(fs::rename(mp.join("via-mount-t"), mp.join("moved")), "rename");
    vol.umount();
    let out = vol.ctl(&["mount", "vol", mp.to_str().unwrap(), "-d", "--read-only"]);
    out.assert_success();
    vol.set_state(hybridfs_tests::MountState::Mounted);
    erofs(fs::write(mp.join("new"), b"x"), "create under hybridctl mount --read-only");
    vol.umount();
    vol.mount();
    assert_eq!(fs::read(mp.join("via-mount-t")).unwrap(), b"one", "read-write again, nothing changed");
    assert!(!mp.join("new").exists());
}

#[test]
fn a_mount_with_json_debug_logs_writes_one_span_per_fuse_request_and_worker_step() {
    let mut vol = TestVolume::builder().unmounted().build();
    vol.ctl_env(&[("HYBRIDFS_LOG", "info,hybridfs_fuse=debug,hybridfs_core::worker=debug,hybridfs_core::absorb=debug"), ("HYBRIDFS_LOG_FORMAT", "json")], &[
        "mount",
        "vol",
        vol.mountpoint().to_str().unwrap(),
        "-d",
        "--seal-delay",
        "1",
    ])
    .assert_success();
    vol.set_state(hybridfs_tests::MountState::Mounted);
    fs::create_dir(vol.path("d")).unwrap();
    fs::write(vol.path("d/f"), b"spans").unwrap();
    assert_eq!(fs::read(vol.path("d/f")).unwrap(), b"spans");
    let e = fs::remove_dir(vol.path("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    // Let the sealer's worker step run once (seal delay 1 s; bounded wait).
    std::thread::sleep(Duration::from_secs(3));
    vol.umount();
    let log = vol.mount_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect();
    assert!(lines.len() > 10, "JSON lines in mount.log:\n{log}");
    let spans = |name: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["fields"]["message"] == "close" && l["span"]["name"] == name).map(|l| &l["span"]).collect()
    };
    let fuse = spans("fuse");
    let find = |op: &str, result: &str| fuse.iter().any(|s| s["op"] == op && s["result"] == result && s["ino"].is_u64());
    assert!(find("lookup", "ok"), "a lookup span: {fuse:?}");
    assert!(find("read", "ok") || find("open", "ok"), "a read (or an open served by passthrough) span: {fuse:?}");
    // Written by kernel passthrough (the default): no write request, the mount's absorb of
    // the kernel's 5 bytes is the span; with passthrough writes off, a write request's.
    let absorbed = spans("absorb").iter().any(|s| s["result"] == "ok" && s["bytes"] == 5 && s["ino"].is_u64());
    assert!(find("write", "ok") || absorbed, "a write span, or an absorb span of the 5 bytes: {:?}", spans("absorb"));
    assert!(find("rmdir", "ENOTEMPTY"), "the failed rmdir's span names its errno: {fuse:?}");
    assert!(spans("worker").iter().any(|s| s["worker"].is_string() && s["result"] == "ok"), "a worker step span:\n{log}");
}

#[test]
fn status_watch_repeats_plain_blocks_off_a_terminal_bounded_by_count() {
    let vol = TestVolume::builder().unmounted().build();
    let out = vol.ctl(&["status", "--watch", "0.2", "--count", "3"]);
    out.assert_success();
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("--- ")).count(), 3, "three blocks, each headed by the time: {out}");
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("VOLUME")).count(), 3, "{out}");
    assert!(!out.stdout.contains('\x1b'), "no screen control off a terminal: {out}");
    let out = vol.ctl(&["status", "--watch", "0.2", "--count", "2", "--json"]);
    out.assert_success();
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out.stdout).into_iter().map(|d| d.unwrap()).collect();
    assert_eq!(docs.len(), 2, "one JSON document per refresh: {out}");
    vol.ctl(&["status", "--count", "2"]).assert_code(2);
}

/// Kills the child on drop (a failed test leaves no foreground mount behind; the volume's
/// teardown then detaches the mount point).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = cmd::wait_bounded(&mut self.0, Duration::from_secs(30));
        }
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 60 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_foreground_mount_says_ready_once_it_answers_and_stopping_at_umount() {
    let mut vol = TestVolume::builder().unmounted().build();
    let sock_path = vol.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let log = fs::File::create(vol.root().join("foreground.log")).unwrap();
    let child = Command::new(hybridctl_bin())
        .args([OsStr::new("mount"), OsStr::new("vol"), vol.mountpoint().as_os_str()])
        .env("HYBRIDFS_HOME", vol.home())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    vol.track_mountpoint(&vol.mountpoint().to_path_buf());

    let msg = recv(&sock);
    assert!(msg.lines().any(|l| l == "READY=1"), "first notification: {msg:?}");
    // Ready means answering: the mount is there and serves requests now.
    assert!(procs::is_mounted(vol.mountpoint()), "READY=1 came before the mount");
    fs::write(vol.path("hello"), b"ready").unwrap();
    assert_eq!(fs::read(vol.path("hello")).unwrap(), b"ready");
    vol.set_state(hybridfs_tests::MountState::Mounted);

    let mp = vol.mountpoint().to_path_buf();
    let out = vol.ctl_os(&[OsStr::new("umount"), mp.as_os_str()]);
    out.assert_success();
    vol.set_state(hybridfs_tests::MountState::Unmounted);
    let msg = recv(&sock);
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "notification at umount: {msg:?}");
    let status = cmd::wait_bounded(&mut child.0, Duration::from_secs(60)).expect("the foreground mount exits after umount");
    assert!(status.success(), "foreground mount exit: {status}\n{}", fs::read_to_string(vol.root().join("foreground.log")).unwrap_or_default());

    // A background mount's process is not the one systemd watches: it gets no NOTIFY_SOCKET.
    let out = vol.ctl_env(&[("NOTIFY_SOCKET", sock_path.to_str().unwrap())], &["mount", "vol", mp.to_str().unwrap(), "-d"]);
    out.assert_success();
    vol.set_state(hybridfs_tests::MountState::Mounted);
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "mount -d sent a notification from its child");
    vol.umount();
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    let ctl = |args: &[&str]| run(Command::new(hybridctl_bin()).args(args));
    let bash = ctl(&["completions", "bash"]);
    bash.assert_success();
    for sub in ["mount", "umount", "snapshot", "config", "completions"] {
        assert!(bash.stdout.contains(sub), "bash completion offers {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hybridctl.bash");
    fs::write(&script, &bash.stdout).unwrap();
    run(Command::new("bash").arg("-n").arg(&script)).assert_success();
    // Sourced, it completes `hybridctl sn` to snapshot.
    let probe = format!(
        "source {}; COMP_WORDS=(hybridctl sn); COMP_CWORD=1; COMP_LINE='hybridctl sn'; COMP_POINT=12; _hybridctl hybridctl sn hybridctl; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = run(Command::new("bash").arg("-c").arg(&probe));
    assert!(out.stdout.split_whitespace().any(|w| w == "snapshot"), "completion of `hybridctl sn`: {out}");
    for shell in ["zsh", "fish"] {
        let out = ctl(&["completions", shell]);
        out.assert_success();
        assert!(out.stdout.contains("mount") && out.stdout.contains("writeback-cache"), "{shell} completion: {out}");
    }

    let man = dir.path().join("man");
    ctl(&["man", man.to_str().unwrap()]).assert_success();
    let page = fs::read_to_string(man.join("hybridctl.1")).expect("hybridctl.1");
    assert!(page.starts_with(".ie") || page.contains(".TH hybridctl 1"), "a roff page: {}", &page[..page.len().min(200)]);
    let mount = fs::read_to_string(man.join("hybridctl-mount.1")).expect("one page per subcommand: hybridctl-mount.1");
    assert!(mount.contains("writeback\\-cache"), "the mount page documents its flags");
    assert!(Path::new(&man.join("hybridctl-config-show.1")).exists(), "nested subcommands have pages too");
}

/// `cp -a FROM TO`, the way doc/OPERATIONS.md copies an unmounted volume's directory.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(from).arg(to)).assert_success();
}

/// The push report's layer number.
fn pushed_seq(out: &CmdOutput) -> u64 {
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("push --json: {e}: {out}"));
    v["seq"].as_u64().unwrap_or_else(|| panic!("push --json: no seq: {out}"))
}

/// doc/OPERATIONS.md, "Backup and restore of metadata": a copy of the unmounted volume's
/// directory, put into a new `HYBRIDFS_HOME`, mounts with everything it held (invariant 1:
/// what was written and unmounted is in the copy). It goes on pushing main only if no push
/// came after the copy; an older copy is refused (invariant 4: the head moves by a conditional
/// PUT, so a writer that does not know the newest head never overwrites it) and its change
/// moves to a branch of its own.
#[test]
fn a_home_restored_from_a_copy_of_its_unmounted_volume_pushes_main_only_when_no_push_came_after_the_copy() {
    let store = tempfile::Builder::new().prefix("hybridfs-test-store-").tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let mut home = TestVolume::builder().store(&url).build();
    home.put("a", b"first");
    assert_eq!(pushed_seq(&home.ctl(&["push", "--json"])), 1);
    home.put("unpushed", b"written after the push");
    home.umount();
    let copy1 = home.root().join("copy-1");
    copy_tree(&home.volume_dir(), &copy1);
    home.mount();
    home.put("b", b"second");
    assert_eq!(pushed_seq(&home.ctl(&["push", "--json"])), 2);
    home.umount();
    let copy2 = home.root().join("copy-2");
    copy_tree(&home.volume_dir(), &copy2);

    // The copy older than the store's head: its data is there, main refuses it.
    let mut old = TestVolume::builder().unformatted().build();
    copy_tree(&copy1, &old.volume_dir());
    old.mount();
    assert_eq!(fs::read(old.path("a")).unwrap(), b"first");
    assert_eq!(fs::read(old.path("unpushed")).unwrap(), b"written after the push");
    assert!(!old.path("b").exists(), "the copy holds the volume as it was copied");
    let out = old.ctl(&["push"]);
    out.assert_code(1);
    assert!(out.stderr.contains("branch main moved") && out.stderr.contains("push --branch"), "{out}");
    assert_eq!(pushed_seq(&old.ctl(&["push", "--branch", "restored-copy", "--json"])), 1);
    old.umount();

    // The copy in step with the store: a working home, main goes on from its layer.
    let mut new = TestVolume::builder().unformatted().build();
    copy_tree(&copy2, &new.volume_dir());
    run(Command::new(hybridctl_bin()).env("HYBRIDFS_HOME", new.home()).args(["fsck", "vol"])).assert_success();
    new.mount();
    assert_eq!(fs::read(new.path("b")).unwrap(), b"second");
    new.put("c", b"third");
    assert_eq!(pushed_seq(&new.ctl(&["push", "--json"])), 3);
    new.umount();
}

/// doc/OPERATIONS.md, "Upgrade": a volume whose `volume.json` has another format version than
/// the binary knows is refused by every command that opens it, naming both versions, and left
/// as it is.
#[test]
fn a_volume_of_another_format_version_is_refused_naming_both_versions() {
    let vol = TestVolume::builder().unmounted().build();
    let path = vol.volume_dir().join("volume.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let known = cfg["format_version"].as_u64().unwrap();
    cfg["format_version"] = (known + 1).into();
    let text = serde_json::to_string_pretty(&cfg).unwrap();
    fs::write(&path, &text).unwrap();
    let want = format!("volume vol has format version {}, this hybridctl knows {known}", known + 1);
    for args in [&["status"][..], &["fsck", "vol"], &["snapshot", "list"]] {
        let out = vol.ctl(args);
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.stderr.contains(&want), "{out}");
    }
    let out = vol.try_mount_at(vol.mountpoint());
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains(&want), "{out}");
    assert!(!procs::is_mounted(vol.mountpoint()));
    assert_eq!(fs::read_to_string(&path).unwrap(), text, "a refused volume is not rewritten");
}
