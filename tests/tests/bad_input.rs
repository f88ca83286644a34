//! Bad input and hostile conditions: the CLI's refusals and exit codes (doc/CLI.md),
//! corrupted local blocks (invariant 5, verified reads: EIO plus a log line naming the block,
//! never wrong bytes), and a full disk (ENOSPC, not EIO, and the volume recovers; the sealer
//! keeps out of the reserve and `umount` names what it left unsealed, invariant 1).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hybridfs_tests::cmd;
use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::sys::errno_of;
use hybridfs_tests::{procs, require_root, MountState, TestVolume};

const MIB: usize = 1 << 20;

#[test]
fn format_refuses_an_existing_volume() {
    let mut vol = TestVolume::new();
    fs::write(vol.path("keep"), b"precious").unwrap();
    vol.umount();
    let json = vol.volume_dir().join("volume.json");
    let before = fs::read(&json).unwrap();
    let out = vol.ctl(&["format", "vol"]);
    out.assert_code(2);
    assert!(out.stderr.contains("hybridctl: error:"), "one-line error on stderr: {out}");
    vol.ctl(&["format", "vol", "--block-size", "64K"]).assert_code(2);
    assert_eq!(fs::read(&json).unwrap(), before, "volume.json untouched");
    vol.mount();
    assert_eq!(fs::read(vol.path("keep")).unwrap(), b"precious", "data untouched");
}

#[test]
fn format_refuses_bad_block_sizes() {
    let vol = TestVolume::new();
    for bad in ["3K", "100", "32K", "128M", "1G", "0", "abc", "-64K", "64Q", ""] {
        let name = format!("bad{}", bad.replace(['-', ' '], "_"));
        let out = vol.ctl(&["format", &name, "--block-size", bad]);
        assert_eq!(out.code, Some(2), "--block-size {bad:?} must be refused with exit 2: {out}");
        assert!(!vol.home().join("volumes").join(&name).exists(), "refused format left {name} behind");
    }
    for good in ["64K", "1M", "64M"] {
        let name = format!("good{good}");
        vol.ctl(&["format", &name, "--block-size", good]).assert_success();
    }
}

#[test]
fn mount_on_a_missing_mount_point() {
    let vol = TestVolume::builder().unmounted().build();
    let missing = vol.root().join("no-such-dir");
    let out = vol.ctl_os(&[OsStr::new("mount"), OsStr::new("vol"), missing.as_os_str(), OsStr::new("-d")]);
    assert_eq!(out.code, Some(2), "missing mount point: {out}");
    let out = vol.ctl(&["mount", "no-such-volume", vol.mountpoint().to_str().unwrap(), "-d"]);
    assert!(!out.success() && !procs::is_mounted(vol.mountpoint()), "mount of a missing volume: {out}");
}

#[test]
fn mount_on_a_busy_mount_point() {
    let vol = TestVolume::new();
    fs::write(vol.path("a"), b"first").unwrap();
    vol.ctl(&["format", "other"]).assert_success();
    let out = vol.ctl(&["mount", "other", vol.mountpoint().to_str().unwrap(), "-d"]);
    assert!(!out.success(), "mounting over an existing mount must fail: {out}");
    assert_eq!(out.code, Some(1), "CLI.md: mount point already a mount -> exit 1: {out}");
    assert_eq!(fs::read(vol.path("a")).unwrap(), b"first", "the first mount still answers");
}

#[test]
fn second_mount_of_the_same_volume_is_refused() {
    let vol = TestVolume::new();
    let pid = vol.mount_pid().expect("mount.json pid");
    let second = vol.root().join("mnt2");
    fs::create_dir(&second).unwrap();
    let out = vol.try_mount_at(&second);
    assert_eq!(out.code, Some(1), "second mount of a mounted volume: {out}");
    assert!(out.stderr.contains(&pid.to_string()), "stderr must name the holder's pid {pid}: {out}");
    assert!(!procs::is_mounted(&second), "refused mount left something mounted");
}

/// Flips bytes near the start, middle and end of `path`.
fn corrupt(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let n = bytes.len();
    assert!(n > 0, "empty block file {}", path.display());
    for i in [n / 2, n - 1, n.min(40) - 1, n / 3] {
        bytes[i] ^= 0x5a;
    }
    fs::write(path, bytes).unwrap();
}

fn block_hex(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn corrupted_local_block_reads_as_eio() {
    let mut vol = TestVolume::new();
    let data = pattern(11, 300_000);
    fs::write(vol.path("victim"), &data).unwrap();
    vol.umount();
    let blocks: Vec<PathBuf> = vol.block_files();
    assert!(!blocks.is_empty(), "after umount the data must be in sealed blocks under blocks/XX/");
    for b in &blocks {
        let hex = block_hex(b);
        assert!(hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()), "block file name {hex}");
        corrupt(b);
    }
    vol.mount();
    let mut buf = Vec::new();
    let r = File::open(vol.path("victim")).and_then(|mut f| f.read_to_end(&mut buf));
    match r {
        Ok(n) => panic!("read of a corrupted block succeeded with {n} bytes (intact: {})", buf == data),
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "corruption must read as EIO: {e}"),
    }
    let log = vol.mount_log();
    let hexes: Vec<String> = blocks.iter().map(|b| block_hex(b)).collect();
    assert!(
        hexes.iter().any(|h| log.contains(h.as_str())),
        "mount.log must name the corrupted block (one of {hexes:?}); log:\n{log}"
    );
    // Invariant 5 also asks for a metric naming the block: `status --json` shows it.
    let named = hybridfs_tests::poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let status = vol.ctl(&["status", vol.name(), "--json"]);
        hexes.iter().any(|h| status.stdout.contains(&format!("\"{h}\"")))
    });
    assert!(named, "status --json must list the corrupt block in its metrics");
    vol.umount();
    let out = vol.fsck(&["--verify"]);
    assert_eq!(out.code, Some(1), "fsck --verify on corrupted blocks: {out}");
    let all = out.all_output();
    for h in &hexes {
        assert!(all.contains(h.as_str()), "fsck --verify must name block {h}: {out}");
    }
}

/// A tmpfs mounted for the test, unmounted on drop (lazily if busy).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = cmd::run(
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path),
            Duration::from_secs(30),
        );
        out.assert_success();
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = cmd::run(Command::new("umount").arg(&self.path), Duration::from_secs(30));
        if !out.success() {
            procs::lazy_unmount_all(&self.path);
        }
    }
}

/// Writes 1 MiB chunks (fsync every 16) until an error; returns its errno and bytes written.
fn fill_until_error(path: &Path, limit: usize) -> (i32, usize) {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path).unwrap();
    let chunk = pattern(12, MIB);
    let mut written = 0;
    while written < limit {
        if let Err(e) = f.write_all(&chunk) {
            return (errno_of(&e), written);
        }
        written += MIB;
        if written % (16 * MIB) == 0 {
            if let Err(e) = f.sync_all() {
                return (errno_of(&e), written);
            }
        }
    }
    match f.sync_all() {
        Err(e) => (errno_of(&e), written),
        Ok(()) => panic!("wrote {written} bytes to a 300 MiB tmpfs home without ENOSPC"),
    }
}

#[test]
fn full_disk_gives_enospc_and_recovers() {
    full_disk_gives_enospc_and_recovers_with(&["--passthrough-writes", "false"]);
}

/// The same with the kernel writing the files by passthrough: nothing of ours checks its
/// writes and it fills the disk to the last byte. The space guard's ballast (`space.rs`) is
/// given up so the metadata store can record the writes and the unlink that frees space;
/// meanwhile a new writer goes through the mount and its reserve check (it does not eat the
/// room the ballast left); once there is room the ballast is taken again and new files are
/// written by passthrough. Invariant 1: a file fsynced before the disk filled keeps its
/// bytes, across the full disk and a remount; fsck is clean.
#[test]
fn full_disk_under_passthrough_writes_gives_enospc_and_recovers() {
    full_disk_gives_enospc_and_recovers_with(&["--passthrough-writes", "true"]);
}

fn full_disk_gives_enospc_and_recovers_with(mount_args: &[&str]) {
    require_root();
    let passthrough = mount_args.ends_with(&["true"]);
    let outer = tempfile::Builder::new().prefix("hybridfs-full-").tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&outer.path().join("small"), "300m");
    let home = tmpfs.path.join("home");
    assert_eq!(procs::mount_fstype(&tmpfs.path).as_deref(), Some("tmpfs"), "home must be on the small tmpfs");
    let mut vol = TestVolume::builder().home(&home).mount_args(mount_args).build();
    let ballast = vol.volume_dir().join("staging").join("ballast");
    assert_eq!(ballast.exists(), passthrough, "the ballast is held exactly while passthrough writes are on");

    // Invariant 1: fsynced before the disk fills, kept whatever happens after.
    let kept = pattern(14, 3 * MIB + 17);
    let mut f = File::create(vol.path("kept")).unwrap();
    f.write_all(&kept).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let (errno, written) = fill_until_error(&vol.path("filler"), 1024 * MIB);
    eprintln!("first error after {} MiB: errno {errno}", written / MIB);
    assert_eq!(errno, libc::ENOSPC, "a full disk must report ENOSPC (not EIO or other)");
    if passthrough {
        // The filler's release (sent by the kernel after close returns) absorbs its writes.
        for _ in 0..100 {
            if !ballast.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!ballast.exists(), "the ballast is given up once the kernel filled the disk:\n{}", vol.mount_log());
        // A new writer now goes through the mount and stops at the reserve: the room the
        // ballast left stays for the metadata store.
        let (errno, _) = fill_until_error(&vol.path("second"), 64 * MIB);
        assert_eq!(errno, libc::ENOSPC, "a second writer on the full disk gets ENOSPC");
        let (avail, _) = avail_and_reserve(&tmpfs.path);
        assert!(
            avail >= BALLAST / 2,
            "a writer opened after the ballast was given up ate its room ({avail} bytes free): it must not be a passthrough write"
        );
        fs::remove_file(vol.path("second")).expect("delete on the full disk");
    }
    assert_same_bytes("invariant 1: fsynced file on the full disk", &fs::read(vol.path("kept")).unwrap(), &kept);

    fs::remove_file(vol.path("filler")).unwrap();
    let data = pattern(13, 8 * MIB);
    let mut f = File::create(vol.path("after")).unwrap();
    f.write_all(&data).expect("write after freeing space");
    f.sync_all().expect("fsync after freeing space");
    drop(f);
    assert_same_bytes("file written after ENOSPC", &fs::read(vol.path("after")).unwrap(), &data);
    assert_eq!(ballast.exists(), passthrough, "the ballast is taken again once there is room:\n{}", vol.mount_log());

    vol.umount();
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after a full disk: {fsck}");
    vol.mount();
    assert_same_bytes("after remount", &fs::read(vol.path("after")).unwrap(), &data);
    assert_same_bytes("invariant 1: fsynced file after the full disk and a remount", &fs::read(vol.path("kept")).unwrap(), &kept);
    vol.umount();
    drop(vol);
    drop(tmpfs);
}

/// The space guard's ballast (`fs/core/src/space.rs`).
const BALLAST: u64 = 8 << 20;

/// Bytes free for unprivileged writers on the file system holding `path`, and its reserve as
/// hybridfs computes it (2% of the file system, 8-256 MiB: `fs/core/src/space.rs`).
fn avail_and_reserve(path: &Path) -> (u64, u64) {
    let st = hybridfs_tests::sys::statvfs(path).expect("statvfs");
    let total = st.f_blocks as u64 * st.f_frsize as u64;
    (st.f_bavail as u64 * st.f_frsize as u64, (total / 50).clamp(8 << 20, 256 << 20))
}

/// The sealer worker's `last_error` in `hybridctl status --json`.
fn sealer_error(vol: &TestVolume) -> Option<String> {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    let workers = v[0]["workers"].as_array()?;
    let sealer = workers.iter().find(|w| w["name"] == "sealer")?;
    sealer["last_error"].as_str().map(str::to_string)
}

fn unsealed_bytes(vol: &TestVolume) -> u64 {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    v[0]["unsealed_bytes"].as_u64().expect("unsealed_bytes")
}

/// Invariant 1 (unsealed data is never lost) on a nearly full disk: a file whose seal would
/// eat into the reserve stays staged (the sealer says why in its status), the reserve stays
/// free so small writes and deletes go on, `umount` exits 0 with a warning naming the file
/// left unsealed (the mount log too, not "everything flushed"), and once there is room the
/// next mount seals it and it reads back byte for byte.
#[test]
fn sealer_keeps_out_of_the_reserve_and_umount_names_what_is_left_unsealed() {
    require_root();
    let outer = tempfile::Builder::new().prefix("hybridfs-reserve-").tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&outer.path().join("small"), "96m");
    assert_eq!(procs::mount_fstype(&tmpfs.path).as_deref(), Some("tmpfs"), "home must be on the small tmpfs");
    // Room to give back later, outside the home: 48 MiB.
    let ballast = tmpfs.path.join("ballast");
    fs::write(&ballast, pattern(20, 48 * MIB)).unwrap();
    let home = tmpfs.path.join("home");
    let mut vol = TestVolume::builder().home(&home).mount_args(&["--seal-delay", "1"]).build();

    // A file that leaves 2-3 MiB above the reserve: sealing it writes up to a chunk of 64
    // blocks (at least 64 x 64 KiB) before it frees their staged bytes.
    let (avail, reserve) = avail_and_reserve(&tmpfs.path);
    assert!(avail > reserve + 16 * MIB as u64, "too little room on the tmpfs: {avail} free, reserve {reserve}");
    let big_len = ((avail - reserve - 2 * MIB as u64) as usize) / MIB * MIB;
    let big = pattern(21, big_len);
    let mut f = File::create(vol.path("big")).unwrap();
    for chunk in big.chunks(MIB) {
        f.write_all(chunk).expect("write within the room above the reserve");
    }
    f.sync_all().unwrap();
    drop(f);

    let mut why = None;
    for _ in 0..150 {
        why = sealer_error(&vol).filter(|e| e.contains("disk full"));
        if why.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let why = why.unwrap_or_else(|| panic!("the sealer's status never said why it left the file staged:\n{}", vol.mount_log()));
    eprintln!("sealer: {why}");
    let (avail, _) = avail_and_reserve(&tmpfs.path);
    assert!(avail >= reserve, "the sealer ate into the reserve: {avail} bytes free, reserve {reserve}");
    assert_eq!(unsealed_bytes(&vol), big_len as u64, "the big file stays staged");
    assert!(vol.mount_log().contains("disk full:"), "the sealer warns once:\n{}", vol.mount_log());

    // Small writes and deletes go on within the reserve rules.
    let small = pattern(22, 64 * 1024);
    fs::write(vol.path("small"), &small).expect("a small write above the reserve");
    assert_same_bytes("small file", &fs::read(vol.path("small")).unwrap(), &small);
    fs::write(vol.path("gone"), b"x").unwrap();
    fs::remove_file(vol.path("gone")).expect("delete on a nearly full disk");

    // umount succeeds (nothing is lost) and names what it left unsealed.
    let out = vol.ctl_os(&[OsStr::new("umount"), vol.mountpoint().as_os_str()]);
    out.assert_success();
    vol.set_state(MountState::Unmounted);
    let line = format!("1 files ({big_len} bytes) left unsealed: disk full; they stay in staging and are sealed at the next mount");
    assert!(out.stderr.contains(&line), "umount must name what it left unsealed ({line}): {out}");
    let log = vol.mount_log();
    assert!(log.contains(&line), "the mount's exit log must say it too:\n{log}");
    assert!(!log.contains("everything flushed"), "not everything was flushed:\n{log}");

    // Room again: the next mount seals the file, and its bytes are the ones written.
    fs::remove_file(&ballast).unwrap();
    vol.mount();
    let mut left = u64::MAX;
    for _ in 0..300 {
        left = unsealed_bytes(&vol);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left, 0, "the next mount seals what was left staged:\n{}", vol.mount_log());
    assert_same_bytes("big file sealed at the next mount", &fs::read(vol.path("big")).unwrap(), &big);
    assert_same_bytes("small file", &fs::read(vol.path("small")).unwrap(), &small);
    let out = vol.ctl_os(&[OsStr::new("umount"), vol.mountpoint().as_os_str()]);
    out.assert_success();
    vol.set_state(MountState::Unmounted);
    assert!(!out.stderr.contains("left unsealed"), "everything is sealed now: {out}");
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after the full disk: {fsck}");
    drop(vol);
    drop(tmpfs);
}
