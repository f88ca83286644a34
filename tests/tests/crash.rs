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
//! must exit 0.

use std::fs;
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
    let mut vol = TestVolume::new();
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
