//! Cold reads on a clone while its store does not answer (issue 9, items 9 and 12), through a
//! real mount of a real clone of a volume on a real S3 server (SeaweedFS on 127.0.0.1), with a
//! blackhole proxy between the clone and the server:
//!
//! - a reader interrupted by a signal returns at once (`EINTR` for a caught signal; killed for
//!   a fatal one), long before the clone's read timeout (120 s here), though the request is
//!   already in the mount process, where the kernel makes even `SIGKILL` wait for our reply;
//! - more cold readers than FUSE threads (`--threads 2`) hung on the store leave `stat`, `ls`
//!   and reads of local and cached data answering; once the store answers again, the hung
//!   reads finish and every cold file reads back byte for byte (invariant 5).
//!
//! Those are behaviour checks with generous bounds, not timings.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_tests::cmd::wait_bounded;
use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::{fail_loudly, poll_until, TestVolume};

const MIB: usize = 1 << 20;
const INV5: &str = "invariant 5: a read from the store is the right bytes or an error, never wrong bytes";
/// The clone's read timeout: every bound in these tests is far below it.
const READ_TIMEOUT_SECS: u64 = 120;
/// How long a signalled reader may take to go.
const PROMPTLY: Duration = Duration::from_secs(20);
const COLD_FILES: usize = 6;

type Env = Vec<(&'static str, String)>;

fn env_refs(env: &Env) -> Vec<(&'static str, &str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn env_with(env: &Env, key: &str, value: &str) -> Env {
    env.iter().map(|(k, v)| (*k, if *k == key { value.to_string() } else { v.clone() })).collect()
}

// ---------------------------------------------------------------------------------------------
// A blackhole between the clone and the store

/// A TCP proxy on 127.0.0.1 in front of the S3 server. While `on`, it forwards nothing: new
/// connections and new requests on open ones are held unanswered (a blackholed store). When
/// turned off, the held connections are reset, so clients retry at once.
struct Blackhole {
    port: u16,
    on: Arc<AtomicBool>,
}

impl Blackhole {
    fn start(target: String) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let on = Arc::new(AtomicBool::new(false));
        let flag = on.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (flag, target) = (flag.clone(), target.clone());
                std::thread::spawn(move || forward(client, &target, &flag));
            }
        });
        Blackhole { port, on }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }
}

/// Serve one client connection (see [`Blackhole`]).
fn forward(client: TcpStream, target: &str, on: &AtomicBool) {
    if on.load(Ordering::SeqCst) {
        return hold(&client, on);
    }
    let Ok(upstream) = TcpStream::connect(target) else { return };
    let (mut from_client, mut to_upstream) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut from_upstream, mut to_client) = (upstream, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_upstream, &mut to_client);
    });
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from_client.read(&mut buf) {
        if on.load(Ordering::SeqCst) {
            hold(&from_client, on);
            let _ = to_upstream.shutdown(std::net::Shutdown::Both);
            return;
        }
        if n == 0 || to_upstream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_upstream.shutdown(std::net::Shutdown::Both);
}

/// Keep `s` open and unanswered while `on` (at most 10 minutes), then reset it.
fn hold(s: &TcpStream, on: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while on.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    hybridfs_tests::sys::reset_connection(s);
}

// ---------------------------------------------------------------------------------------------
// A clone behind the blackhole

struct ColdClone {
    _server: SeaweedServer,
    origin: TestVolume,
    clone: TestVolume,
    proxy: Blackhole,
}

fn cold_file(i: usize) -> Vec<u8> {
    pattern(900 + i as u64, 3 * MIB)
}

/// Node A pushes `cold/0..COLD_FILES` and `warm`; node B clones it through the blackhole
/// proxy, with a read timeout of [`READ_TIMEOUT_SECS`], and mounts it with `mount_args`.
/// B then holds `local` (written on B) and `warm` (prefetched into its cache); the `cold`
/// files' data is only in the store.
fn cold_clone(bucket: &str, mount_args: &[&str]) -> ColdClone {
    let server = SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the cold-read tests need a real S3 server: {e}")));
    let env: Env = server.env();
    server.store(bucket, "").unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    let store_url = format!("s3://{bucket}/p");
    let mut origin = TestVolume::builder().name("data").block_size("1M").store(&store_url).unmounted().build();
    origin.mount_env(&env_refs(&env));
    for i in 0..COLD_FILES {
        origin.put(&format!("cold/{i}"), &cold_file(i));
    }
    origin.put("warm", &pattern(800, 2 * MIB));
    origin.ctl(&["push", "--volume", "data", "--json"]).assert_success();

    let proxy = Blackhole::start(server.endpoint().trim_start_matches("http://").to_string());
    let penv = env_with(&env, "AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{}", proxy.port));
    let mut clone = TestVolume::builder().name("data").unformatted().mount_args(mount_args).build();
    let url = format!("{store_url}/data");
    clone.ctl_env(&env_refs(&penv), &["clone", &url, "--branch", "nodeb", "--json"]).assert_success();
    set_read_timeout(&clone, READ_TIMEOUT_SECS);
    clone.mount_env(&env_refs(&penv));
    let checked = poll_until(Duration::from_secs(60), Duration::from_millis(100), || clone.mount_log().contains("the store answers"));
    assert!(checked, "the clone's mount reaches the store through the proxy:\n{}", clone.mount_log());
    clone.put("local", &pattern(801, 2 * MIB));
    let warm = clone.path("warm");
    clone.ctl_env(&env_refs(&penv), &["prefetch", warm.to_str().unwrap(), "--json"]).assert_success();
    ColdClone { _server: server, origin, clone, proxy }
}

/// `read_timeout_secs` in the clone's `volume.json`.
fn set_read_timeout(vol: &TestVolume, secs: u64) {
    let path = vol.volume_dir().join("volume.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    cfg["read_timeout_secs"] = secs.into();
    fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// The `hybridfs-test-fsop` helper cargo built with this test; `HYBRIDFS_TEST_FSOP` overrides
/// it (as `HYBRIDCTL` does the CLI) where checkouts share a target directory, whose one
/// unhashed copy of the helper any of them may have built last.
fn fsop_bin() -> std::path::PathBuf {
    std::env::var_os("HYBRIDFS_TEST_FSOP").map_or_else(|| env!("CARGO_BIN_EXE_hybridfs-test-fsop").into(), Into::into)
}

/// `cat PATH > /dev/null` in a process of its own, with SIGINT and SIGTERM at their default
/// action: a harness started as a background job of a shell without job control runs with
/// them ignored, and ignored signals are inherited across exec (the test would then see a
/// `cat` that never dies and blame the mount).
fn cat(path: &std::path::Path) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("cat");
    cmd.arg(path).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn cat")
}

/// The test's own process group sends no signal to the children: `kill(2)` one.
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) of our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill {} with signal {sig}", child.id());
}

/// Waits a moment and checks that `child` still waits (for the blackholed store).
fn assert_waiting(child: &mut Child, what: &str) {
    std::thread::sleep(Duration::from_millis(1500));
    let status = child.try_wait().unwrap();
    assert!(status.is_none(), "{what} should wait for the blackholed store, but it exited: {status:?}");
}

/// Signals `child` and returns how long it took to exit; fails after [`PROMPTLY`].
fn signal_and_wait(child: &mut Child, sig: i32, what: &str) -> (Duration, std::process::ExitStatus) {
    let started = Instant::now();
    signal(child, sig);
    let status = wait_bounded(child, PROMPTLY);
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!("{what}: still reading {PROMPTLY:?} after signal {sig} (the read timeout is {READ_TIMEOUT_SECS} s)")
    });
    eprintln!("{what}: gone {took:?} after signal {sig} ({status:?})");
    (took, status)
}

// ---------------------------------------------------------------------------------------------
// 1. Signals

#[test]
fn a_reader_waiting_for_an_unanswering_store_returns_when_signalled() {
    use std::os::unix::process::ExitStatusExt;
    let mut n = cold_clone("hybridfs-cold-sig", &[]);
    n.proxy.set(true);

    // A caught signal: the read returns EINTR and the process goes on.
    let mut catching = Command::new(fsop_bin())
        .args(["read-catching", n.clone.path("cold/0").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fsop");
    assert_waiting(&mut catching, "a reader with a SIGUSR1 handler");
    let (_, status) = signal_and_wait(&mut catching, libc::SIGUSR1, "a reader with a SIGUSR1 handler");
    let mut out = String::new();
    catching.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!((status.code(), out.trim()), (Some(0), "errno 4"), "the interrupted read returns EINTR");

    // Fatal signals: SIGINT, SIGTERM and SIGKILL end a reader of a cold file.
    for (i, sig) in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL].into_iter().enumerate() {
        let mut reader = cat(&n.clone.path(format!("cold/{}", i + 1)));
        assert_waiting(&mut reader, "cat of a cold file");
        let (_, status) = signal_and_wait(&mut reader, sig, "cat of a cold file");
        assert_eq!(status.signal(), Some(sig), "cat ends by its signal");
    }

    // The mount is fine, and once the store answers the file reads back whole.
    assert_same_bytes("local file while the store is blackholed", &fs::read(n.clone.path("local")).unwrap(), &pattern(801, 2 * MIB));
    n.proxy.set(false);
    let got = read_when_the_store_answers(&n.clone.path("cold/0"));
    assert_same_bytes(&format!("{INV5}: cold/0 after the store came back"), &got, &cold_file(0));
    n.clone.umount();
    n.origin.umount();
}

/// Reads `path` whole, trying again (at most 90 s) while reads fail.
fn read_when_the_store_answers(path: &std::path::Path) -> Vec<u8> {
    let mut last = None;
    let ok = poll_until(Duration::from_secs(90), Duration::from_millis(500), || match fs::read(path) {
        Ok(b) => {
            last = Some(Ok(b));
            true
        }
        Err(e) => {
            last = Some(Err(e));
            false
        }
    });
    match last {
        Some(Ok(b)) if ok => b,
        other => panic!("{} does not read back after the store came back: {other:?}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. More cold readers than FUSE threads

#[test]
fn cold_reads_on_an_unanswering_store_leave_the_mount_answering() {
    let mut n = cold_clone("hybridfs-cold-busy", &["--threads", "2"]);
    n.proxy.set(true);
    let mut readers: Vec<Child> = (0..COLD_FILES).map(|i| cat(&n.clone.path(format!("cold/{i}")))).collect();
    std::thread::sleep(Duration::from_millis(1500));
    for (i, r) in readers.iter_mut().enumerate() {
        assert!(r.try_wait().unwrap().is_none(), "cat cold/{i} should wait for the blackholed store");
    }

    // With every reader waiting: metadata, listings, local and cached data, from a thread
    // of its own so that a hang fails the test instead of stopping it.
    let (mp, (tx, rx)) = (n.clone.mountpoint().to_path_buf(), mpsc::channel());
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<(u64, Vec<String>, Vec<u8>, Vec<u8>)> {
            let size = fs::metadata(mp.join("cold/5"))?.len();
            let mut listed = Vec::new();
            for dir in [mp.clone(), mp.join("cold")] {
                for e in fs::read_dir(dir)? {
                    listed.push(e?.file_name().to_string_lossy().into_owned());
                }
            }
            let mut local = Vec::new();
            File::open(mp.join("local"))?.read_to_end(&mut local)?;
            Ok((size, listed, local, fs::read(mp.join("warm"))?))
        })();
        let _ = tx.send(r);
    });
    let (size, listed, local, warm) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("stat, ls and reads of local and cached data answer while cold reads wait (30 s)")
        .expect("stat, ls and reads of local and cached data succeed while cold reads wait");
    assert_eq!(size, cold_file(5).len() as u64);
    for name in ["cold", "local", "warm", "0", "5"] {
        assert!(listed.iter().any(|l| l == name), "ls lists {name}: {listed:?}");
    }
    assert_same_bytes("local file while cold reads wait", &local, &pattern(801, 2 * MIB));
    assert_same_bytes("cached file while cold reads wait", &warm, &pattern(800, 2 * MIB));
    // The waiting reads show in `hybridctl status` (issue 11): the waiter threads that hold
    // their replies (`cold-read-N`) and the fetches they wait on (`fetch-read`), busy.
    let out = n.clone.ctl(&["status", "data", "--json"]);
    out.assert_success();
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
    let busy: Vec<(String, String)> = status[0]["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w["name"].as_str()?.to_string(), w["busy"].as_str()?.to_string())))
        .collect();
    assert!(busy.iter().any(|(name, what)| name.starts_with("cold-read-") && what.starts_with("read inode")), "a busy cold-read waiter in status: {busy:?}");
    assert!(busy.iter().any(|(name, what)| name == "fetch-read" && what.starts_with("fetch block")), "a busy fetch-read worker in status: {busy:?}");
    for (i, r) in readers.iter_mut().enumerate() {
        assert!(r.try_wait().unwrap().is_none(), "cat cold/{i} still waits for the blackholed store");
    }

    // The store answers again: the waiting reads finish, and every cold file reads back whole.
    n.proxy.set(false);
    for (i, r) in readers.iter_mut().enumerate() {
        let status = wait_bounded(r, Duration::from_secs(90)).unwrap_or_else(|| panic!("cat cold/{i} did not finish once the store answered"));
        let mut err = String::new();
        r.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "cat cold/{i} once the store answered: {status:?} {err}");
    }
    for i in 0..COLD_FILES {
        let got = read_when_the_store_answers(&n.clone.path(format!("cold/{i}")));
        assert_same_bytes(&format!("{INV5}: cold/{i} after the store came back"), &got, &cold_file(i));
    }
    n.clone.umount();
    n.origin.umount();
}
