//! The local data path through a real mount (issue 8): deleted bytes never come back
//! (invariant 2), the mount answers what programs ask of every file quietly, and `status`
//! tells a dead mount from a live one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use hybridfs_tests::{procs, sys, TestVolume};

const MIB: usize = 1 << 20;
const INV2: &str = "invariant 2: a snapshot never changes, and deleted bytes never come back";

/// A snapshot seals a file that stays open without punching its staging bytes. Punching the
/// whole block afterwards and writing one byte must leave the rest of the block zeros, while
/// open, after close and after a remount; the snapshot keeps the old bytes.
#[test]
fn punched_block_of_a_file_open_across_a_snapshot_stays_zero() {
    let mut vol = TestVolume::new();
    let path = vol.path("ckpt.bin");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    f.write_all_at(&vec![0xAA; MIB], 0).unwrap();
    f.sync_all().unwrap();
    vol.ctl(&["snapshot", "create", "s1", "--volume", vol.name()]).assert_success();
    sys::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, MIB as i64).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    let mut buf = [0xFFu8; 16];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf[0], b'x');
    assert!(buf[1..].iter().all(|b| *b == 0), "{INV2}: punched bytes read back while open: {buf:x?}");
    f.sync_all().unwrap();
    drop(f);
    vol.remount();
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), MIB);
    assert_eq!(got[0], b'x');
    assert!(got[1..].iter().all(|b| *b == 0), "{INV2}: punched bytes came back after remount");
    let old = std::fs::read(vol.path(".snapshots/s1/ckpt.bin")).unwrap();
    assert!(old.iter().all(|b| *b == 0xAA), "{INV2}: the snapshot lost its bytes");
}

/// Every `open()` by Python asks the file whether it is a terminal (`TCGETS`): the answer is
/// ENOTTY, and the mount log does not grow a warning per call.
#[test]
fn terminal_ioctl_is_enotty_and_not_logged() {
    let vol = TestVolume::new();
    let mut f = File::create(vol.path("a.txt")).unwrap();
    f.write_all(b"hello").unwrap();
    for _ in 0..50 {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS fills a termios we own.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t) };
        assert_eq!(rc, -1);
        assert_eq!(sys::errno(), libc::ENOTTY);
    }
    let log = vol.mount_log();
    assert!(!log.contains("ioctl"), "ioctl calls were logged:\n{log}");
}

/// The mount table names the file system (`findmnt -t fuse.hybridfs`, `df -t`).
#[test]
fn mount_table_says_fuse_hybridfs() {
    let vol = TestVolume::new();
    assert_eq!(procs::mount_fstype(vol.mountpoint()).as_deref(), Some("fuse.hybridfs"));
}

/// `status` of a volume whose mount process was killed says it is not mounted. (Here the
/// killed process is reaped at once; the zombie case, which `status` once got wrong, is the
/// unit test `home::tests::a_zombie_is_not_alive`.)
#[test]
fn status_does_not_show_a_killed_mount_as_mounted() {
    let mut vol = TestVolume::new();
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    assert!(out.stdout.contains("\"mounted\": true"), "{out}");
    vol.kill_mount();
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    assert!(out.stdout.contains("\"mounted\": false"), "a killed mount shows as mounted: {out}");
    vol.clean_dead_mount();
}
