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

/// Mount flags for passthrough writes: new files and `O_TRUNC` opens are written by the
/// kernel straight into their staging files.
const PASSTHROUGH_WRITES: &[&str] = &["--passthrough-writes", "true"];

fn read_all(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The mount process wrote less than a quarter of `len` bytes since `before`: the bytes went
/// by passthrough.
fn assert_passthrough(vol: &TestVolume, before: u64, len: usize) {
    let through_us = procs::bytes_written_by(vol.mount_pid().unwrap()) - before;
    assert!(through_us < (len / 4) as u64, "the mount process wrote {through_us} of {len} bytes: not a passthrough write");
}

/// While the kernel owns the file's size (passthrough writes), `stat` sees every write's size
/// and mtime; truncate, an `O_APPEND` writer opened meanwhile, a reader, and writes through a
/// shared mapping all land; the bytes are the same after close, after a remount, and fsck is
/// clean.
#[test]
fn passthrough_writes_keep_size_mtime_and_bytes_right() {
    let mut vol = TestVolume::builder().mount_args(PASSTHROUGH_WRITES).build();
    let path = vol.path("f.bin");
    let before = procs::bytes_written_by(vol.mount_pid().unwrap());
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let mut want = vec![1u8; 3 * MIB + 7];
    f.write_all_at(&want, 0).unwrap();
    assert_passthrough(&vol, before, want.len());
    let m1 = std::fs::metadata(&path).unwrap();
    assert_eq!(m1.len(), want.len() as u64, "stat while writing by passthrough");
    // The clock must move for mtime to (no timing is asserted).
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.write_all_at(b"x", 10).unwrap();
    want[10] = b'x';
    let m2 = std::fs::metadata(&path).unwrap();
    assert!(m2.modified().unwrap() > m1.modified().unwrap(), "mtime follows passthrough writes");

    f.set_len((MIB + 5) as u64).unwrap();
    want.truncate(MIB + 5);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), want.len() as u64, "size after truncate");
    {
        let mut a = OpenOptions::new().append(true).open(&path).unwrap();
        a.write_all(b"tail").unwrap();
        want.extend_from_slice(b"tail");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), want.len() as u64, "size after append");
    assert_eq!(read_all(&path), want, "a reader opened while the file is open for writing");

    // Writes through a shared mapping of the passthrough open.
    // SAFETY: a fresh shared mapping of an open file, unmapped before the file is closed.
    unsafe {
        let len = want.len();
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let at = std::slice::from_raw_parts_mut(p as *mut u8, len);
        at[MIB - 2..MIB + 2].copy_from_slice(b"mmap");
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, len), 0);
    }
    want[MIB - 2..MIB + 2].copy_from_slice(b"mmap");
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), want.len() as u64, "size after close");
    assert_eq!(read_all(&path), want, "bytes after close");
    let reopened = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    reopened.write_all_at(b"again", 0).unwrap();
    want[..5].copy_from_slice(b"again");
    drop(reopened);
    assert_eq!(read_all(&path), want, "bytes after a reopen");
    vol.remount();
    assert_eq!(read_all(&path), want, "bytes after a remount");
    vol.umount();
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after passthrough writes: {fsck}");
}

/// Invariant 2 with passthrough writes: a snapshot taken while a file is open for
/// passthrough writing has the bytes fsync'd before it, and keeps them whatever the kernel
/// writes afterwards into the same blocks; the live file has the new bytes, also after a
/// remount; a file opened with `O_TRUNC` over sealed blocks is written by passthrough and the
/// snapshot keeps the old one.
#[test]
fn snapshots_of_files_open_for_passthrough_writes_keep_their_bytes() {
    let mut vol = TestVolume::builder().mount_args(PASSTHROUGH_WRITES).build();
    let path = vol.path("ckpt.bin");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let a = vec![0xAAu8; 2 * MIB + 100];
    f.write_all_at(&a, 0).unwrap();
    f.sync_all().unwrap();
    vol.ctl(&["snapshot", "create", "s1", "--volume", vol.name()]).assert_success();
    f.write_all_at(&vec![0xBB; MIB], 0).unwrap();
    f.write_all_at(&vec![0xCC; MIB], a.len() as u64).unwrap();
    f.sync_all().unwrap();
    let mut s2 = a.clone();
    s2[..MIB].fill(0xBB);
    s2.extend_from_slice(&vec![0xCC; MIB]);
    vol.ctl(&["snapshot", "create", "s2", "--volume", vol.name()]).assert_success();
    f.write_all_at(&vec![0xDD; 100], (MIB + 10) as u64).unwrap();
    let mut live = s2.clone();
    live[MIB + 10..MIB + 110].fill(0xDD);
    assert_eq!(read_all(&path), live, "the live file while open");
    drop(f);

    let old = vol.path("old.bin");
    std::fs::write(&old, vec![0x11u8; 3 * MIB]).unwrap();
    vol.ctl(&["snapshot", "create", "s3", "--volume", vol.name()]).assert_success();
    let before = procs::bytes_written_by(vol.mount_pid().unwrap());
    let new = vec![0x22u8; 2 * MIB + 1];
    {
        let g = OpenOptions::new().write(true).truncate(true).open(&old).unwrap();
        assert_eq!(g.metadata().unwrap().len(), 0, "O_TRUNC emptied the file");
        g.write_all_at(&new, 0).unwrap();
        g.sync_all().unwrap();
    }
    assert_passthrough(&vol, before, new.len());

    for round in ["mounted", "after a remount"] {
        assert_eq!(read_all(&vol.path(".snapshots/s1/ckpt.bin")), a, "{INV2}: s1 ({round})");
        assert_eq!(read_all(&vol.path(".snapshots/s2/ckpt.bin")), s2, "{INV2}: s2 ({round})");
        assert_eq!(read_all(&path), live, "the live file ({round})");
        assert_eq!(read_all(&vol.path(".snapshots/s3/old.bin")), vec![0x11u8; 3 * MIB], "{INV2}: s3 ({round})");
        assert_eq!(read_all(&old), new, "the file rewritten with O_TRUNC ({round})");
        if round == "mounted" {
            vol.remount();
        }
    }
    vol.umount();
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after snapshots of passthrough-written files: {fsck}");
}
