//! Invariant 1 (durability): data and metadata acknowledged by `fsync` survive `kill -9` of the
//! mount process, and `hybridctl fsck` is clean after restart.
//!
//! Each round: a writer process (`hybridfs-test-fsop crash-writer`) creates files
//! `f-<seed>-<len>` in a loop; each file is fully written and fsync'd, its directory fsync'd,
//! and only then its name appended to a list file OUTSIDE the mount, which is fsync'd too.
//! Mid-stream the mount process gets SIGKILL. The dead mount is cleaned (`umount -l` in some
//! rounds; in others `hybridctl mount` must clean the stale mount itself), the volume is
//! mounted again, and every file of every round's list must be there byte for byte (content
//! is rebuilt from the seed in the name). Then `hybridctl umount` and `hybridctl fsck NAME`
//! must exit 0. The same rounds run with passthrough writes on (the kernel writes new files
//! straight into their staging files; `fsync` takes the dirty-extent journal from the staging
//! file's data regions), and more tests kill the mount while a passthrough-written file is
//! still open: with unsynced bytes after the synced ones, and after attributes set on it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use hybridfs_tests::cmd::wait_bounded;
use hybridfs_tests::content::{assert_same_bytes, parse_seeded_name, pattern};
use hybridfs_tests::{fsop, poll_until, procs, TestVolume};

const ROUNDS: usize = 4;

/// Acknowledged names in a list file: complete lines only (a line cut by the crash was never
/// acknowledged).
fn acknowledged(list: &Path) -> Vec<String> {
    let text = fs::read_to_string(list).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

fn verify_round(vol: &TestVolume, round: usize) -> usize {
    let list = vol.root().join(format!("list-{round}"));
    let names = acknowledged(&list);
    for name in &names {
        let (seed, len) = parse_seeded_name(name).unwrap_or_else(|| panic!("bad name in list: {name:?}"));
        let path = vol.path(format!("round-{round}/{name}"));
        let got = fs::read(&path)
            .unwrap_or_else(|e| panic!("round {round}: acknowledged file {name} lost after kill -9: {e}"));
        assert_same_bytes(&format!("round {round}: {name}"), &got, &pattern(seed, len));
    }
    names.len()
}

#[test]
fn fsynced_files_survive_kill_9_of_the_mount() {
    kill_9_rounds(&[]);
}

/// The rounds above, with the files written by kernel passthrough.
#[test]
fn fsynced_passthrough_writes_survive_kill_9_of_the_mount() {
    kill_9_rounds(&["--passthrough-writes", "true"]);
}

fn kill_9_rounds(mount_args: &[&str]) {
    let mut vol = TestVolume::builder().mount_args(mount_args).build();
    let writer = fsop!();
    for round in 0..ROUNDS {
        let list = vol.root().join(format!("list-{round}"));
        let dir = vol.path(format!("round-{round}"));
        let log = vol.root().join(format!("writer-{round}.log"));
        let args = [dir.to_str().unwrap(), list.to_str().unwrap(), "100000"];
        let mut child = writer.spawn(&[&["crash-writer"][..], &args[..]].concat(), &log);

        let want = 20 + 10 * round;
        let reached = poll_until(Duration::from_secs(180), Duration::from_millis(5), || {
            acknowledged(&list).len() >= want || matches!(child.try_wait(), Ok(Some(_)))
        });
        let acked = acknowledged(&list).len();
        assert!(
            reached && acked >= want,
            "round {round}: writer acknowledged only {acked} files (wanted {want}); log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        // Let the writer get into the middle of the next file(s) before the kill.
        std::thread::sleep(Duration::from_millis(3 * round as u64));
        let pid = vol.kill_mount();
        eprintln!("round {round}: killed mount process {pid} after {acked}+ acknowledged files");

        if wait_bounded(&mut child, Duration::from_secs(30)).is_none() {
            eprintln!("round {round}: writer did not exit after the crash; killed it");
        }
        if round % 2 == 0 {
            vol.clean_dead_mount();
        } else {
            assert!(procs::is_mounted(vol.mountpoint()), "the dead mount should still be attached");
        }
        vol.mount();
        let mut checked = 0;
        for r in 0..=round {
            checked += verify_round(&vol, r);
        }
        eprintln!("round {round}: {checked} acknowledged files intact");

        vol.umount();
        let fsck = vol.fsck(&[]);
        assert!(fsck.success(), "round {round}: fsck after kill -9 and remount is not clean: {fsck}");
        vol.mount();
    }
}

/// Invariant 1 on the passthrough write path: a file the kernel writes straight into its
/// staging file, fsync'd and still open, with more bytes written after the fsync, when the
/// mount gets SIGKILL: after a remount every fsync'd byte is back (the journal and the size
/// were made durable by the fsync, not by a close that never came), and fsck is clean.
#[test]
fn fsynced_bytes_of_a_file_open_for_passthrough_writes_survive_kill_9() {
    let mut vol = TestVolume::builder().mount_args(&["--passthrough-writes", "true"]).build();
    let path = vol.path("ckpt.pt");
    let f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
    kill_9_with_an_open_passthrough_writer(&mut vol, f, &path);
}

/// Invariant 1 on the passthrough write path of a new file created without `O_TRUNC` (tar's
/// `O_EXCL`), which is written by passthrough once most of the volume's last 16 new files
/// outgrew the inline limit: as above, fsync'd bytes survive `kill -9` of the mount with the
/// file still open. Before that, a small `O_EXCL` file written by passthrough goes back
/// inline at close and reads back whole.
#[test]
fn fsynced_bytes_of_a_new_exclusive_file_written_by_passthrough_survive_kill_9() {
    let mut vol = TestVolume::builder().mount_args(&["--passthrough-writes", "true"]).build();
    let pid = vol.mount_pid().expect("mount pid");
    let excl = |p: &Path| fs::OpenOptions::new().write(true).create_new(true).open(p).unwrap();
    let large = pattern(3, 10_000);
    let before = procs::bytes_written_by(pid);
    for i in 0..16 {
        excl(&vol.path(format!("large-{i}"))).write_all_at(&large, 0).unwrap();
    }
    let through_us = procs::bytes_written_by(pid) - before;
    assert!(
        through_us >= (7 * large.len()) as u64,
        "a mount starts out expecting small files: the first new files go through it ({through_us} bytes)"
    );
    let small = pattern(4, 100);
    let before = procs::bytes_written_by(pid);
    excl(&vol.path("small")).write_all_at(&small, 0).unwrap();
    let after_small = procs::bytes_written_by(pid) - before;
    assert_same_bytes("a small O_EXCL file written by passthrough", &fs::read(vol.path("small")).unwrap(), &small);
    eprintln!("the small file cost the mount {after_small} bytes of writes");
    for i in 0..16 {
        assert_same_bytes("a new file", &fs::read(vol.path(format!("large-{i}"))).unwrap(), &large);
    }
    let path = vol.path("big.bin");
    let f = excl(&path);
    kill_9_with_an_open_passthrough_writer(&mut vol, f, &path);
}

/// Invariant 1 on a setattr of a file open here (tar's `futimens`, `fchown`, `fchmod` of each
/// file it wrote, before closing it), which skips the transaction's store reads: each one is
/// in the metadata store's log before it returns, as every namespace change is, so after a
/// `kill -9` of the mount (the process, not the machine: no fsync after them) the remounted
/// file has the times, owner and mode set, with the bytes the kernel wrote by passthrough.
#[test]
fn attributes_set_on_an_open_passthrough_file_survive_kill_9() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut vol = TestVolume::builder().mount_args(&["--passthrough-writes", "true"]).build();
    let path = vol.path("t.c");
    let f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
    let data = pattern(21, 70_000);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    let then = std::time::UNIX_EPOCH + Duration::from_secs(1_153_704_088);
    f.set_times(fs::FileTimes::new().set_modified(then)).unwrap();
    std::os::unix::fs::fchown(&f, Some(1234), Some(5678)).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640)).unwrap();
    let killed = vol.kill_mount();
    eprintln!("killed mount process {killed} with the file open");
    drop(f);
    vol.clean_dead_mount();
    vol.mount();
    let md = fs::metadata(&path).unwrap();
    assert_eq!(
        (md.mtime(), md.uid(), md.gid(), md.mode() & 0o7777),
        (1_153_704_088, 1234, 5678, 0o640),
        "invariant 1: a setattr acknowledged on an open file is in the store's log"
    );
    assert_same_bytes("the fsync'd bytes", &fs::read(&path).unwrap(), &data);
    vol.umount();
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after kill -9 is not clean: {fsck}");
}

/// Writes 5 MiB to `f` (open for writing, empty, at `path`), fsyncs, checks the mount process
/// did not write them itself (a passthrough write), writes 2 MiB more unsynced, kills the
/// mount, remounts: the fsync'd bytes and size are back, and fsck is clean.
fn kill_9_with_an_open_passthrough_writer(vol: &mut TestVolume, f: fs::File, path: &Path) {
    const MIB: usize = 1 << 20;
    let pid = vol.mount_pid().expect("mount pid");
    let synced = pattern(16, 5 * MIB + 12_345);
    let before = procs::bytes_written_by(pid);
    f.write_all_at(&synced, 0).unwrap();
    f.sync_all().unwrap();
    let through_us = procs::bytes_written_by(pid) - before;
    assert!(
        through_us < (synced.len() / 4) as u64,
        "the mount process wrote {through_us} bytes for {} written: not a passthrough write",
        synced.len()
    );
    // Unsynced: more bytes past the end, in a new block, then the crash.
    f.write_all_at(&pattern(17, 2 * MIB), synced.len() as u64).unwrap();
    let killed = vol.kill_mount();
    eprintln!("killed mount process {killed} with the file open");
    drop(f);
    vol.clean_dead_mount();
    vol.mount();
    let got = fs::read(path).unwrap_or_else(|e| panic!("invariant 1: fsync'd file lost after kill -9: {e}"));
    assert!(got.len() >= synced.len(), "invariant 1: fsync'd size lost: {} < {}", got.len(), synced.len());
    assert_same_bytes("invariant 1: fsync'd bytes after kill -9", &got[..synced.len()], &synced);
    vol.umount();
    let fsck = vol.fsck(&[]);
    assert!(fsck.success(), "fsck after kill -9 of a passthrough writer is not clean: {fsck}");
}
