//! Shared volumes (issue 15): one volume whose metadata is in PostgreSQL, mounted twice on this
//! machine through two `HYBRIDFS_HOME`s as two hosts (harness `shared::Cluster`), its store a
//! real SeaweedFS.
//!
//! Invariants touched: 1 (a namespace change is one transaction: all of it or none, on every
//! host), and the shared-volume rules of doc/SEMANTICS.md ("Several hosts"): two hosts
//! creating, renaming or removing one name end with one winner and the right errno, never a
//! torn namespace; another host's change is seen by the next lookup within the mount's
//! attribute/entry TTL; a database restart makes operations wait, not fail or hang.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hybridfs_tests::shared::Cluster;
use hybridfs_tests::sys::{errno_of, getxattr, removexattr, renameat2, setxattr};
use hybridfs_tests::{free_port, poll_until, TestVolume};

const NAMESPACE: &str = "shared volume: two hosts changing one name end with exactly one winner and the right errno for the other";
/// Longer than the mounts' entry/attribute TTL (1 s), bounded.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Set `key` in host `vol`'s `volume.json` (read at its next mount).
fn set_host_key(vol: &TestVolume, key: &str, value: serde_json::Value) {
    let path = vol.volume_dir().join("volume.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// `fsck` of the shared volume from host `vol` finds nothing wrong.
fn assert_fsck_clean(vol: &TestVolume) {
    let out = vol.fsck(&[]);
    assert!(out.success(), "fsck of the shared volume failed: {out}");
}

#[test]
fn format_join_and_clear_errors() {
    let mut c = Cluster::start("shv", false, &[]);
    let name = "shv";
    // A shared volume needs its store.
    let other = c.pg.database("other").unwrap();
    let out = c.a.ctl(&["format", "x2", "--meta", &other]);
    assert!(!out.success(), "format --meta without --store succeeded: {out}");
    assert!(out.stderr.contains("needs its object store"), "unclear error: {out}");
    // The database holds no volume.
    let out = c.b.ctl(&["format", "x2", "--meta", &other, "--join"]);
    assert!(!out.success());
    assert!(out.stderr.contains("holds no hybridfs volume"), "unclear error: {out}");
    // The wrong volume's name.
    let out = c.b.ctl(&["format", "wrong", "--meta", &c.meta, "--join"]);
    assert!(!out.success());
    assert!(out.stderr.contains(&format!("holds volume {name}, not wrong")), "unclear error: {out}");
    // A database that already holds a volume is not formatted again.
    let fresh = TestVolume::builder().name(name).unformatted().build();
    let out = fresh.ctl(&["format", name, "--meta", &c.meta, "--store", &c.store, "--no-check"]);
    assert!(!out.success());
    assert!(out.stderr.contains("already holds volume"), "unclear error: {out}");
    // Nobody listens: a bounded failure with a clear message (the command's own limit bounds it).
    let dead = format!("postgres://hybridfs@127.0.0.1:{}/vol?connect_timeout=3", free_port());
    let started = Instant::now();
    let out = fresh.ctl(&["format", name, "--meta", &dead, "--join"]);
    assert!(!out.success());
    assert!(out.stderr.contains("cannot reach the metadata database"), "unclear error: {out}");
    eprintln!("unreachable database refused after {:?}", started.elapsed());
    // The store given at join must be the volume's.
    let out = fresh.ctl(&["format", name, "--meta", &c.meta, "--join", "--store", "s3://elsewhere/x"]);
    assert!(!out.success());
    assert!(out.stderr.contains("keeps its data in"), "unclear error: {out}");
    // Two hosts see one namespace.
    c.mount_both();
    fs::create_dir(c.a.path("d")).unwrap();
    fs::File::create(c.a.path("d/f")).unwrap().sync_all().unwrap();
    assert!(exists(&c.b.path("d/f")), "host B does not see host A's new file");
    fs::rename(c.b.path("d/f"), c.b.path("d/g")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || exists(&c.a.path("d/g")) && !exists(&c.a.path("d/f"))), "host A does not see host B's rename");
    fs::remove_file(c.a.path("d/g")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || !exists(&c.b.path("d/g"))), "host B still sees the file host A removed");
    assert_eq!(names(&c.b.path("d")), Vec::<String>::new());
    // Inode numbers never collide: each host makes files, both list the same, distinct ones.
    for i in 0..20 {
        fs::File::create(c.a.path(format!("d/a{i}"))).unwrap();
        fs::File::create(c.b.path(format!("d/b{i}"))).unwrap();
    }
    let mut inos = std::collections::BTreeSet::new();
    for e in fs::read_dir(c.a.path("d")).unwrap() {
        let e = e.unwrap();
        assert!(inos.insert(std::os::unix::fs::DirEntryExt::ino(&e)), "inode number {} given twice", std::os::unix::fs::DirEntryExt::ino(&e));
    }
    assert_eq!(inos.len(), 40);
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || names(&c.a.path("d")) == names(&c.b.path("d"))));
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

/// The outcome of one racing operation: Ok, or its errno.
fn outcome(r: std::io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| errno_of(&e))
}

/// Run `op(a_dir, 0)` on host A and `op(b_dir, 1)` on host B at the same moment.
fn race<F>(a: PathBuf, b: PathBuf, op: F) -> (Result<(), i32>, Result<(), i32>)
where
    F: Fn(&Path, usize) -> std::io::Result<()> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(2));
    let (op2, barrier2) = (op.clone(), barrier.clone());
    let t = std::thread::spawn(move || {
        barrier2.wait();
        outcome(op2(&b, 1))
    });
    barrier.wait();
    let ra = outcome(op(&a, 0));
    (ra, t.join().unwrap())
}

/// Exactly one of the two succeeded, the other failed with `errno`.
fn one_winner(what: &str, r: (Result<(), i32>, Result<(), i32>), errno: i32) {
    let ok = [r.0, r.1].iter().filter(|x| x.is_ok()).count();
    let right = [r.0, r.1].iter().filter(|x| **x == Err(errno)).count();
    assert!(ok == 1 && right == 1, "{NAMESPACE}: {what}: host A {:?}, host B {:?} (want one Ok and one errno {errno})", r.0, r.1);
}

#[test]
fn racing_creates_renames_and_unlinks_from_two_hosts_have_one_winner() {
    let c = Cluster::start("race", true, &[]);
    fs::create_dir(c.a.path("r")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("r"))));
    let (ra, rb) = (c.a.path("r"), c.b.path("r"));
    const ROUNDS: usize = 30;
    let deadline = Instant::now() + Duration::from_secs(600);
    for i in 0..ROUNDS {
        assert!(Instant::now() < deadline, "the races ran past their time limit");
        // create O_EXCL of one name
        let r = race(ra.clone(), rb.clone(), move |d, _| {
            fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(d.join(format!("c{i}"))).map(|_| ())
        });
        one_winner(&format!("create c{i}"), r, libc::EEXIST);
        // mkdir of one name
        let r = race(ra.clone(), rb.clone(), move |d, _| fs::create_dir(d.join(format!("m{i}"))));
        one_winner(&format!("mkdir m{i}"), r, libc::EEXIST);
        // rename two files onto one name without replacing: one wins
        fs::File::create(ra.join(format!("x{i}"))).unwrap();
        fs::File::create(rb.join(format!("y{i}"))).unwrap();
        let r = race(ra.clone(), rb.clone(), move |d, host| {
            let src = if host == 0 { format!("x{i}") } else { format!("y{i}") };
            renameat2(&d.join(src), &d.join(format!("t{i}")), libc::RENAME_NOREPLACE).map_err(std::io::Error::from_raw_os_error)
        });
        one_winner(&format!("rename onto t{i}"), r, libc::EEXIST);
        // unlink of one name
        let r = race(ra.clone(), rb.clone(), move |d, _| fs::remove_file(d.join(format!("c{i}"))));
        one_winner(&format!("unlink c{i}"), r, libc::ENOENT);
        // rmdir of one name
        let r = race(ra.clone(), rb.clone(), move |d, _| fs::remove_dir(d.join(format!("m{i}"))));
        one_winner(&format!("rmdir m{i}"), r, libc::ENOENT);
    }
    // Renames of different files onto one name at once (replacing): both succeed, one after
    // the other; one file is left under the name, the sources are gone.
    for i in 0..ROUNDS {
        fs::File::create(ra.join(format!("p{i}"))).unwrap();
        fs::File::create(rb.join(format!("q{i}"))).unwrap();
    }
    for i in 0..ROUNDS {
        let r = race(ra.clone(), rb.clone(), move |d, host| {
            let src = if host == 0 { format!("p{i}") } else { format!("q{i}") };
            fs::rename(d.join(src), d.join(format!("z{i}")))
        });
        assert!(r.0.is_ok() && r.1.is_ok(), "{NAMESPACE}: renames of two files onto z{i}: host A {:?}, host B {:?}", r.0, r.1);
    }
    // One namespace, the same on both hosts, and consistent.
    let want = names(&ra);
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || names(&rb) == want), "hosts list different names: {want:?} vs {:?}", names(&rb));
    for i in 0..ROUNDS {
        assert!(want.contains(&format!("t{i}")) && want.contains(&format!("z{i}")), "{NAMESPACE}: t{i} or z{i} missing: {want:?}");
        for gone in [format!("c{i}"), format!("m{i}"), format!("p{i}"), format!("q{i}")] {
            assert!(!want.contains(&gone), "{NAMESPACE}: {gone} left: {want:?}");
        }
        // Exactly one of the two renamed files is left over (the loser of the NOREPLACE race).
        let left = [format!("x{i}"), format!("y{i}")].iter().filter(|n| want.contains(n)).count();
        assert_eq!(left, 1, "{NAMESPACE}: round {i}: {want:?}");
    }
    let mut c = c;
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

#[test]
fn a_database_restart_in_the_middle_of_a_write_stream_is_waited_out() {
    let mut c = Cluster::start("restart", false, &[]);
    // Host B waits 10 s for the database (host A the default 60 s).
    set_host_key(&c.b, "meta_timeout_secs", serde_json::json!(10));
    c.mount_both();
    let dir = c.a.path("stream");
    fs::create_dir(&dir).unwrap();
    const FILES: usize = 300;
    // The stream runs in a child process, not a thread of this one: restarting PostgreSQL forks
    // this process, and a fork inherits every open descriptor. If one of the stream's files were
    // open here at that moment, the server's exec would close it (close-on-exec), a close on a
    // shared volume flushes the file's data through the database, which is down at that moment:
    // the server's start would wait out the mount's whole database bound (60 s) and the stream
    // would fail with EIO. A test artefact, not what a host's own processes see.
    let script = r#"
import os, sys
d = sys.argv[1]
for i in range(int(sys.argv[2])):
    p = os.path.join(d, 'f%d' % i)
    for step in ('create', 'write', 'fsync', 'rename'):
        try:
            if step == 'create': f = open(p, 'wb')
            elif step == 'write': f.write(b'file %d\n' % i); f.flush()
            elif step == 'fsync': os.fsync(f.fileno()); f.close()
            else: os.rename(p, os.path.join(d, 'g%d' % i))
        except OSError as e:
            sys.exit('%s f%d: %s' % (step, i, e))
"#;
    let mut writer = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&dir)
        .arg(FILES.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the write stream (python3): {e}"));
    // Restart the database while the stream runs.
    assert!(poll_until(Duration::from_secs(60), Duration::from_millis(20), || fs::read_dir(&dir).map(|d| d.count() > 20).unwrap_or(false)));
    c.pg.restart().unwrap_or_else(|e| panic!("restart PostgreSQL: {e}"));
    // Bounded: the writer finishes (its operations waited for the database), or the test fails.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = writer.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = writer.kill();
            let _ = writer.wait();
            panic!("the write stream hung after the database restart");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(writer.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "an operation failed across the database restart: {}", err.trim());
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..FILES).map(|i| format!("g{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(names(&dir), want);
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || names(&c.b.path("stream")) == want), "host B lists a different stream");
    // Down for good: an operation fails with EIO after the volume's bound, never hangs.
    c.pg.stop();
    let started = Instant::now();
    let probe = c.b.path("stream/after-stop");
    let t = std::thread::spawn(move || fs::File::create(probe).map(|_| ()).map_err(|e| errno_of(&e)));
    let deadline = Instant::now() + Duration::from_secs(240);
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "a create hung with the database down");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(t.join().unwrap(), Err(libc::EIO), "a create with the database down for good");
    eprintln!("a create with the database down failed after {:?}", started.elapsed());
    c.pg.restart().unwrap();
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

/// Host B's kernel trusts entries and attributes for 10 minutes here: what it sees of host A's
/// rename, unlink and close comes from the database's notifications, not from the TTL.
#[test]
fn another_hosts_changes_reach_this_hosts_kernel_through_notifications() {
    let mut c = Cluster::start("notify", false, &[]);
    set_host_key(&c.b, "meta_cache_ttl_ms", serde_json::json!(600_000));
    c.mount_both();
    fs::create_dir(c.a.path("d")).unwrap();
    fs::File::create(c.a.path("d/f")).unwrap().sync_all().unwrap();
    // B caches a positive entry for f, a negative one for x, and f's attributes.
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("d/f"))));
    assert!(!exists(&c.b.path("d/x")));
    assert_eq!(fs::metadata(c.b.path("d/f")).unwrap().len(), 0);
    fs::rename(c.a.path("d/f"), c.a.path("d/x")).unwrap();
    assert!(
        poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("d/x")) && !exists(&c.b.path("d/f"))),
        "host B's kernel still shows the old names after host A's rename"
    );
    // A new size written at close on A: B's cached attributes go.
    let before = fs::metadata(c.b.path("d/x")).unwrap().len();
    assert_eq!(before, 0);
    fs::write(c.a.path("d/x"), b"hello").unwrap();
    assert!(
        poll_until(SEEN_WITHIN, Duration::from_millis(50), || fs::metadata(c.b.path("d/x")).map(|m| m.len()).unwrap_or(0) == 5),
        "host B's kernel still shows the old size after host A's close"
    );
    assert_eq!(fs::read(c.b.path("d/x")).unwrap(), b"hello", "close-to-open: host B reads what host A wrote before its close");
    fs::remove_file(c.a.path("d/x")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || !exists(&c.b.path("d/x"))), "host B still sees the file host A removed");
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

/// `hybridctl snapshot create NAME` on host `home`'s mount.
fn snapshot_create(home: PathBuf, name: &'static str) -> hybridfs_tests::CmdOutput {
    let args = ["snapshot", "create", name, "--volume", "snap"].map(std::ffi::OsStr::new);
    hybridfs_tests::volume::hybridctl_in(&home, &args, Duration::from_secs(120))
}

/// Snapshots taken on two hosts at once each end their own epoch (the epoch is read inside
/// the transaction that ends it, invariant 2: a snapshot is one epoch), and one name is
/// taken once.
#[test]
fn snapshots_taken_on_two_hosts_at_once_get_their_own_epochs() {
    let c = Cluster::start("snap", true, &[]);
    fs::write(c.a.path("f"), b"one").unwrap();
    for round in 0..3 {
        let (names, same): ([&'static str; 2], bool) = match round {
            0 => (["s-a", "s-b"], false),
            1 => (["t-a", "t-b"], false),
            _ => (["same", "same"], true),
        };
        let (ha, hb) = (c.a.home().to_path_buf(), c.b.home().to_path_buf());
        let barrier = Arc::new(Barrier::new(2));
        let b2 = barrier.clone();
        let tb = std::thread::spawn(move || {
            b2.wait();
            snapshot_create(hb, names[1])
        });
        barrier.wait();
        let oa = snapshot_create(ha, names[0]);
        let ob = tb.join().unwrap();
        if same {
            assert!(oa.success() != ob.success(), "one name taken twice or not at all: {oa}\n{ob}");
            let lost = if oa.success() { &ob } else { &oa };
            assert!(lost.stderr.contains("already exists"), "unclear error: {lost}");
        } else {
            assert!(oa.success() && ob.success(), "{oa}\n{ob}");
        }
    }
    let out = c.b.ctl(&["snapshot", "list", "--volume", "snap", "--json"]);
    assert!(out.success(), "{out}");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 5, "{list:?}");
    let epochs: std::collections::BTreeSet<u64> = list.iter().map(|s| s["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs.len(), 5, "two snapshots share an epoch: {list:?}");
}

/// Invariant 2 (a snapshot reads the volume as it was at its epoch) on a shared volume:
/// what another host removes after a snapshot (a file, then its directory, each deletion's
/// history read in its transaction's one prefetch statement, the directory purged in its
/// rmdir's own transaction) stays readable in the snapshot and is gone live.
#[test]
fn what_another_host_removes_after_a_snapshot_stays_in_the_snapshot() {
    let mut c = Cluster::start("snapdel", true, &[]);
    fs::create_dir(c.a.path("d")).unwrap();
    fs::write(c.a.path("d/f"), b"kept in the snapshot").unwrap();
    fs::create_dir(c.a.path("d/e")).unwrap();
    fs::write(c.a.path("x"), b"x").unwrap();
    setxattr(&c.a.path("x"), "user.v", b"1", 0).unwrap();
    c.a.ctl(&["snapshot", "create", "before", "--volume", "snapdel"]).assert_success();
    // An xattr rewritten after the snapshot, then removed in the same epoch: its removal
    // finds the snapshot's version in the store (the prefetched history range, not this
    // transaction's writes) and leaves a tombstone, so a later snapshot does not show it.
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("x"))));
    setxattr(&c.b.path("x"), "user.v", b"2", 0).unwrap();
    removexattr(&c.b.path("x"), "user.v").unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("d/f")) && exists(&c.b.path("d/e"))));
    fs::remove_file(c.b.path("d/f")).unwrap();
    fs::remove_dir(c.b.path("d/e")).unwrap();
    fs::remove_dir(c.b.path("d")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || !exists(&c.a.path("d"))), "host A still sees d");
    for host in [&c.a, &c.b] {
        let snap = host.path(".snapshots/before/d");
        assert_eq!(fs::read(snap.join("f")).unwrap(), b"kept in the snapshot");
        assert_eq!(names(&snap), ["e", "f"]);
        assert!(fs::metadata(snap.join("e")).unwrap().is_dir());
    }
    c.b.ctl(&["snapshot", "create", "after", "--volume", "snapdel"]).assert_success();
    for host in [&c.b, &c.a] {
        // (Host A learns of B's snapshot when its view of the catalogue is next read.)
        assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&host.path(".snapshots/after/x"))), "no snapshot 'after': {:?} {:?}", fs::read_dir(host.path(".snapshots")).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()), fs::read_dir(host.path(".snapshots/after")).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()));
        assert!(!exists(&host.path(".snapshots/after/d")), "a later snapshot shows the removed directory");
        assert_eq!(getxattr(&host.path(".snapshots/after/x"), "user.v", 64), Err(libc::ENODATA), "a later snapshot shows the removed xattr");
        assert_eq!(getxattr(&host.path(".snapshots/before/x"), "user.v", 64).unwrap(), b"1");
    }
    // Made again after the snapshot and removed again: the snapshot keeps the first.
    fs::create_dir(c.a.path("d")).unwrap();
    fs::write(c.a.path("d/f"), b"second").unwrap();
    fs::remove_file(c.a.path("d/f")).unwrap();
    fs::remove_dir(c.a.path("d")).unwrap();
    assert_eq!(fs::read(c.b.path(".snapshots/before/d/f")).unwrap(), b"kept in the snapshot");
    assert!(!exists(&c.a.path("d")) && !exists(&c.b.path("d")));
    let meta = store(&c);
    assert!(meta.orphans().unwrap().is_empty(), "no orphan left: {:?}", meta.orphans().unwrap());
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

/// A shared volume pushes, is cloned and merges like any other, from either host: host B
/// pushes main, a burst node clones it, writes and pushes its branch, host A merges the
/// branch online, and both hosts read the merged file.
#[test]
fn either_host_pushes_and_merges_a_shared_volume_and_a_clone_of_it_merges_back() {
    let c = Cluster::start("pm", true, &[]);
    let env = c.env_refs();
    fs::create_dir(c.a.path("data")).unwrap();
    fs::write(c.a.path("data/home"), b"written on host a").unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("data/home"))));
    let out = c.b.ctl_env(&env, &["push", "--volume", "pm", "--json"]);
    out.assert_success();
    let url = format!("{}/pm", c.store);
    let mut burst = TestVolume::builder().name("pm").unformatted().build();
    burst.ctl_env(&env, &["clone", &url, "--branch", "burst", "--json"]).assert_success();
    burst.mount_env(&env);
    assert_eq!(fs::read(burst.path("data/home")).unwrap(), b"written on host a", "the clone reads main as host b pushed it");
    burst.put("data/from-burst", b"written on the burst node");
    burst.ctl(&["push", "--volume", "pm", "--json"]).assert_success();
    burst.umount();
    let out = c.a.ctl_env(&env, &["merge", "burst", "--volume", "pm", "--json"]);
    out.assert_success();
    for host in [&c.a, &c.b] {
        assert!(
            poll_until(SEEN_WITHIN, Duration::from_millis(50), || fs::read(host.path("data/from-burst")).ok().as_deref() == Some(&b"written on the burst node"[..])),
            "the merged file on {}",
            host.home().display()
        );
        assert_eq!(fs::read(host.path("data/home")).unwrap(), b"written on host a");
    }
    assert_fsck_clean(&c.a);
}

/// The volume's metadata store as a third party sees it (the test reads rows directly).
fn store(c: &Cluster) -> hybridfs_core::meta::MetaStore {
    let kv = hybridfs_meta_pg::PgKv::connect_existing(&c.meta).unwrap();
    hybridfs_core::meta::MetaStore::new(std::sync::Arc::new(kv)).unwrap()
}

/// File `g` written and held open on host A, then unlinked on host B: the open file and its
/// inode number.
fn open_on_a_unlinked_on_b(c: &Cluster) -> (fs::File, u64) {
    use std::os::unix::fs::MetadataExt;
    fs::write(c.a.path("g"), vec![7u8; 300_000]).unwrap();
    let f = fs::File::open(c.a.path("g")).unwrap();
    let ino = f.metadata().unwrap().ino();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("g"))));
    fs::remove_file(c.b.path("g")).unwrap();
    (f, ino)
}

/// A cluster whose hosts hold leases of `lease_secs` (their lease passes run every sixth).
fn cluster_with_lease(name: &str, lease_secs: &'static str) -> Cluster {
    let mut c = Cluster::start(name, false, &[]);
    c.env.push(("HYBRIDFS_MOUNT_HOST_LEASE", lease_secs.to_string()));
    c.mount_both();
    c
}

const UNLINK_OPEN: &str = "shared volume: a file unlinked on one host while another holds it open stays readable and writable there (POSIX unlink-while-open across hosts)";

#[test]
fn a_file_unlinked_on_one_host_stays_open_on_the_other_and_goes_at_its_close() {
    use std::io::{Read, Seek};
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mut c = cluster_with_lease("unlinkopen", "6");
    fs::write(c.a.path("f"), b"hello").unwrap();
    let mut f = fs::OpenOptions::new().read(true).write(true).open(c.a.path("f")).unwrap();
    let ino = f.metadata().unwrap().ino();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("f"))));
    fs::remove_file(c.b.path("f")).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || !exists(&c.a.path("f"))), "host A still sees the name host B removed");
    let meta = store(&c);
    let kept = meta.get_inode(ino).unwrap();
    assert!(kept.as_ref().is_some_and(|i| i.nlink == 0), "{UNLINK_OPEN}: the inode went under its reader: {kept:?}");
    assert!(meta.orphans().unwrap().contains(&ino), "{UNLINK_OPEN}: not an orphan");
    // A reads what was there and writes more, through its open descriptor.
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello", "{UNLINK_OPEN}");
    f.write_all_at(b" world", 5).unwrap();
    f.sync_all().unwrap();
    f.rewind().unwrap();
    s.clear();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world", "{UNLINK_OPEN}");
    let stored = meta.get_inode(ino).unwrap().expect("still there while open");
    assert_eq!((stored.nlink, stored.size), (0, 11), "{UNLINK_OPEN}: A's close-time write brought links back or lost its size");
    drop(f);
    // Nobody holds it now: it goes (at A's forget, or at a lease pass of either host).
    assert!(
        poll_until(Duration::from_secs(30), Duration::from_millis(100), || meta.get_inode(ino).unwrap().is_none()),
        "the unlinked file stayed after its last close"
    );
    assert!(poll_until(Duration::from_secs(30), Duration::from_millis(100), || !meta.orphans().unwrap().contains(&ino)));
    assert!(meta.openers(ino).unwrap().is_empty(), "open rows left: {:?}", meta.openers(ino).unwrap());
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

#[test]
fn a_crashed_hosts_unlinked_open_file_is_purged_once_its_lease_ends() {
    let mut c = cluster_with_lease("orphancrash", "3");
    let (f, ino) = open_on_a_unlinked_on_b(&c);
    let meta = store(&c);
    assert!(meta.orphans().unwrap().contains(&ino), "{UNLINK_OPEN}: not kept as an orphan");
    assert_eq!(meta.openers(ino).unwrap().len(), 1, "host A's open row");
    // A dies holding it: nobody releases it; B's lease pass purges it once A's lease ended.
    c.a.kill_mount();
    drop(f);
    c.a.clean_dead_mount();
    assert!(
        poll_until(Duration::from_secs(60), Duration::from_millis(200), || meta.get_inode(ino).unwrap().is_none()),
        "a crashed host's unlinked open file was never purged"
    );
    assert!(!meta.orphans().unwrap().contains(&ino));
    assert!(meta.openers(ino).unwrap().is_empty(), "the dead host's open row stayed");
    c.b.umount();
    assert_fsck_clean(&c.b);
}

#[test]
fn a_chmod_on_one_host_survives_another_hosts_writes_and_close() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Cluster::start("chmodclose", true, &[]);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(c.a.path("m")).unwrap();
    f.write_all(b"first").unwrap();
    f.flush().unwrap();
    let ino = f.metadata().unwrap().ino();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("m"))));
    fs::set_permissions(c.b.path("m"), fs::Permissions::from_mode(0o600)).unwrap();
    f.write_all(b" and more").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let meta = store(&c);
    let stored = meta.get_inode(ino).unwrap().unwrap();
    assert_eq!((stored.perm & 0o7777, stored.size), (0o600, 14), "host A's close overwrote host B's chmod (or lost its size)");
    for host in [&c.a, &c.b] {
        let mode = || fs::metadata(host.path("m")).map(|m| m.mode() & 0o7777).unwrap_or(0);
        assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || mode() == 0o600), "mode {:o} on a host", mode());
    }
    // (Within the attribute bound: B's kernel took size 5 from its own chmod's reply.)
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || fs::read(c.b.path("m")).unwrap() == b"first and more"));
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

#[test]
fn one_host_runs_the_collector_at_a_time() {
    let mut c = Cluster::start("gclease", true, &[]);
    let gc = |host: &hybridfs_tests::TestVolume| {
        let out = host.ctl(&["gc", "--volume", "gclease", "--grace", "0", "--json"]);
        out.assert_success();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("gc --json: {e}: {out}"));
        v["skipped"].as_bool().unwrap_or(false)
    };
    // (The mounts' own periodic passes hold the lease for a moment every 30 s: bounded retries.)
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || !gc(&c.a)), "a pass with nobody else running skipped");
    // Another host (the test, as host 42) holds the collector's lease: passes skip.
    let meta = store(&c);
    let until = hybridfs_core::meta::now_ms() + 600_000;
    assert!(meta.take_lease(hybridfs_core::volume::snapshot::GC_LEASE, 42, until).unwrap());
    assert!(gc(&c.a), "host A ran a pass while another host held the lease");
    assert!(gc(&c.b), "host B ran a pass while another host held the lease");
    meta.end_lease(hybridfs_core::volume::snapshot::GC_LEASE, 42).unwrap();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(100), || !gc(&c.b)), "the lease given back, passes still skip");
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

const NO_CYCLE: &str = "shared volume: never a torn namespace: two hosts moving two directories under each other at once end with one move done and EINVAL for the other, every directory reachable from the root (invariant 1: a namespace change is one transaction)";

/// Follow `ino`'s parents in the store up to the root, at most 64 steps: whether it gets there.
fn reaches_root(meta: &hybridfs_core::meta::MetaStore, ino: u64) -> bool {
    let mut at = ino;
    for _ in 0..64 {
        if at == hybridfs_core::types::ROOT_INO {
            return true;
        }
        match meta.get_inode(at).unwrap() {
            Some(i) if i.nlink > 0 => at = i.parent,
            _ => return false,
        }
    }
    false
}

#[test]
fn directories_moved_under_each_other_on_two_hosts_never_form_a_cycle() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let mut c = Cluster::start("cycle", true, &[]);
    let meta = store(&c);
    const ROUNDS: usize = 25;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut a_won, mut einval) = (0, 0);
    for i in 0..ROUNDS {
        assert!(Instant::now() < deadline, "the races ran past their time limit");
        let t = format!("t{i}");
        fs::create_dir_all(c.a.path(format!("{t}/a"))).unwrap();
        fs::create_dir_all(c.a.path(format!("{t}/b"))).unwrap();
        assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path(format!("{t}/a"))) && exists(&c.b.path(format!("{t}/b")))));
        let inos = [fs::metadata(c.a.path(format!("{t}/a"))).unwrap().ino(), fs::metadata(c.a.path(format!("{t}/b"))).unwrap().ino()];
        // Directory descriptors opened first: each rename names its target directory by
        // descriptor, so no lookup of a path the other host just changed gets in between.
        let open = |p: PathBuf| fs::File::open(p).unwrap();
        let (ta, tb) = (Arc::new(open(c.a.path(&t))), Arc::new(open(c.b.path(&t))));
        let (a_b, b_a) = (Arc::new(open(c.a.path(format!("{t}/b")))), Arc::new(open(c.b.path(format!("{t}/a")))));
        let r = race(PathBuf::new(), PathBuf::new(), move |_, host| {
            // Host A moves a under b; host B moves b under a.
            let (dir, into, name) = if host == 0 { (&ta, &a_b, c"a") } else { (&tb, &b_a, c"b") };
            // SAFETY: valid descriptors and NUL-terminated names.
            let rc = unsafe { libc::renameat(dir.as_raw_fd(), name.as_ptr(), into.as_raw_fd(), name.as_ptr()) };
            if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
        // The loser: EINVAL from the volume (or from its kernel, once it learned of the other
        // move), or ENOENT when its kernel had dropped the entry the other host moved.
        let ok = [r.0, r.1].iter().filter(|x| x.is_ok()).count();
        let refused = [r.0, r.1].iter().filter(|x| matches!(x, Err(libc::EINVAL) | Err(libc::ENOENT))).count();
        assert!(ok == 1 && refused == 1, "{NO_CYCLE}: round {i}: host A {:?}, host B {:?}", r.0, r.1);
        a_won += usize::from(r.0.is_ok());
        einval += usize::from(r.0 == Err(libc::EINVAL) || r.1 == Err(libc::EINVAL));
        for ino in inos {
            assert!(reaches_root(&meta, ino), "{NO_CYCLE}: round {i}: directory {ino} is cut off from the root");
        }
    }
    eprintln!("host A's move won {a_won} of {ROUNDS} rounds; the other got EINVAL in {einval}");
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

#[test]
fn a_rename_and_chown_on_the_host_with_the_file_open_keep_another_hosts_chmod_and_write() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Cluster::start("renameopen", true, &[]);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(c.a.path("o")).unwrap();
    f.write_all(b"first").unwrap();
    let ino = f.metadata().unwrap().ino();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || exists(&c.b.path("o"))));
    // Host B changes the mode and appends, while host A holds the file open.
    fs::set_permissions(c.b.path("o"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut g = fs::OpenOptions::new().append(true).open(c.b.path("o")).unwrap();
    g.write_all(b" more").unwrap();
    drop(g);
    let meta = store(&c);
    assert_eq!(meta.get_inode(ino).unwrap().unwrap().size, 10, "host B's append did not reach the store at its close");
    // Host A renames and chowns the file it holds open.
    fs::rename(c.a.path("o"), c.a.path("p")).unwrap();
    std::os::unix::fs::fchown(&f, Some(4321), None).unwrap();
    drop(f);
    let stored = meta.get_inode(ino).unwrap().unwrap();
    assert_eq!(
        (stored.perm & 0o7777, stored.size, stored.uid, stored.name.as_slice()),
        (0o600, 10, 4321, &b"p"[..]),
        "host A's rename or chown of its open file wrote its whole cached record over host B's chmod and append"
    );
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || fs::read(c.b.path("p")).is_ok_and(|d| d == b"first more")));
    let mode = || fs::metadata(c.a.path("p")).map(|m| (m.mode() & 0o7777, m.uid())).unwrap_or_default();
    assert!(poll_until(SEEN_WITHIN, Duration::from_millis(50), || mode() == (0o600, 4321)), "host A sees {:?}", mode());
    c.a.umount();
    c.b.umount();
    assert_fsck_clean(&c.a);
}

#[test]
fn fsck_reports_and_repairs_what_a_crashed_host_left() {
    let mut c = cluster_with_lease("fsckhosts", "3");
    let (f, ino) = open_on_a_unlinked_on_b(&c);
    // Host B leaves cleanly (no lease pass of its own any more), then host A dies holding the
    // unlinked file: its lease row, open row and the orphan stay in the database.
    c.b.umount();
    c.a.kill_mount();
    drop(f);
    c.a.clean_dead_mount();
    let meta = store(&c);
    assert!(meta.orphans().unwrap().contains(&ino) && meta.openers(ino).unwrap().len() == 1, "{UNLINK_OPEN}: nothing left to repair");
    let unheld = |out: &hybridfs_tests::CmdOutput| out.stdout.contains(&format!("orphan inode {ino}: no live host holds it open"));
    let mut out = c.b.fsck(&[]);
    assert!(poll_until(Duration::from_secs(30), Duration::from_millis(500), || {
        out = c.b.fsck(&[]);
        unheld(&out)
    }), "fsck does not report the dead host's orphan once its lease ended: {out}");
    assert!(out.success(), "leftovers of a crashed host are notes, not problems: {out}");
    assert!(out.stdout.contains("its lease ended") && out.stdout.contains("which is dead"), "{out}");
    assert!(meta.get_inode(ino).unwrap().is_some(), "fsck without --repair changed the volume");
    let out = c.b.fsck(&["--repair"]);
    assert!(out.success() && out.stdout.contains("purged 1 orphans"), "{out}");
    // The purge dropped the orphan's block references inside its batch (invariant: a block's
    // count is the number of extent versions naming it); fsck finds the counts right.
    assert_eq!(meta.get_inode(ino).unwrap(), None, "the orphan stayed");
    assert!(meta.openers(ino).unwrap().is_empty() && meta.hosts().unwrap().is_empty(), "the dead host's rows stayed");
    let out = c.b.fsck(&[]);
    assert!(out.success() && !unheld(&out) && !out.stdout.contains("which is dead"), "{out}");
}
