//! Test support, not for production: a real PostgreSQL on 127.0.0.1, one per test.
//!
//! [`PgServer::start`] finds Debian's PostgreSQL (`/usr/lib/postgresql/<version>/bin`, else
//! `initdb` on `PATH`), runs `initdb` in a fresh directory (as the `postgres` user when the
//! test runs as root: PostgreSQL refuses to run as root), and starts `postgres` on a free
//! loopback port with its socket in that directory, waiting (at most 30 s) until it answers.
//! Dropping the server stops it (SIGQUIT, an immediate shutdown, then SIGKILL of its process
//! group) and the directory goes with it; it also dies with the thread that started it
//! (`PR_SET_PDEATHSIG`). [`PgServer::stop`] and [`PgServer::restart`] are "the database went
//! down" and "it came back" (same data, same port).
//!
//! Settings are for tests: `fsync=off` (durability is PostgreSQL's, not under test here).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_WITHIN: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "install it with `apt-get install postgresql-15` (tests/run.sh does)";
/// The role the tests connect as (trust authentication on loopback).
pub const USER: &str = "hybridfs";

/// A running `postgres`, stopped on drop.
pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PgServer {
    /// Start a server in a new directory under the system's temporary directory.
    pub fn start() -> Result<Self, String> {
        Self::start_in(&std::env::temp_dir())
    }

    /// Start a server in a new directory under `parent` (a test's scratch directory).
    pub fn start_in(parent: &Path) -> Result<Self, String> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("pg-").tempdir_in(parent).map_err(|e| format!("temp dir: {e}"))?;
        let data = dir.path().join("data");
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            // postgres must own its directory and every directory above it must let it in.
            chown_postgres(dir.path())?;
            allow_traverse(dir.path())?;
        }
        let mut initdb = run_as_postgres(as_root, bin.join("initdb"));
        initdb.args(["-D"]).arg(&data).args(["-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"]);
        let out = initdb.stdin(Stdio::null()).output().map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("pick a free port: {e}"))?;
        let mut server = PgServer { child: None, dir, bin, port };
        server.spawn()?;
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let as_root = unsafe { libc::geteuid() } == 0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .map_err(|e| format!("open postgres.log: {e}"))?;
        if as_root {
            chown_postgres(&self.dir.path().join("postgres.log"))?;
        }
        let mut cmd = run_as_postgres(as_root, self.bin.join("postgres"));
        cmd.arg("-D").arg(self.dir.path().join("data"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"]).arg(self.dir.path());
        cmd.args(["-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB"]);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().map_err(|e| format!("run postgres: {e}"))?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("postgres exited ({status}); its log ends: {}", self.log_tail()));
            }
            match postgres::Client::connect(&self.url(), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("not ready within {READY_WITHIN:?}: {e}; its log ends: {}", self.log_tail()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `postgres://hybridfs@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres?connect_timeout=5", self.port)
    }

    /// A fresh database on this server (one per volume or test), as a URL.
    pub fn database(&self, name: &str) -> Result<String, String> {
        let mut c = postgres::Client::connect(&self.url(), postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\"")).map_err(|e| format!("create database {name}: {e}"))?;
        Ok(format!("postgres://{USER}@127.0.0.1:{}/{name}?connect_timeout=5", self.port))
    }

    /// Stop the server at once (SIGQUIT: an immediate shutdown), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as i32;
            // SAFETY: signalling a process group this server started.
            unsafe { libc::killpg(pgid, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above; whatever is left of the group goes.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Start it again after [`stop`](Self::stop): same data, same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()?;
        self.wait_ready()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's newest PostgreSQL server binaries, else the directory of `initdb` on `PATH`.
pub fn find_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    on_path
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .ok_or_else(|| format!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin, no initdb on PATH); {INSTALL_HINT}"))
}

fn run_as_postgres(as_root: bool, program: PathBuf) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))).flatten()
        })
        .ok_or_else(|| format!("no `postgres` user to run PostgreSQL as; {INSTALL_HINT}"))
}

fn chown_postgres(path: &Path) -> Result<(), String> {
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Let other users through the directories above `dir` (a 0700 scratch directory would keep
/// the `postgres` user out).
fn allow_traverse(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else { continue };
        let mode = m.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| format!("let postgres through {}: {e}", a.display()))?;
        }
    }
    Ok(())
}
