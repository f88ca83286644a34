//! Client side of the `hybridfs-test-fsop` helper binary (tests/bin/fsop.rs), which performs
//! one file operation in a separate, single-threaded process: as another user (it switches
//! uid/gid itself, so no fork happens inside the multi-threaded test process), or as a second
//! owner of a lock.
//!
//! Protocol: `hybridfs-test-fsop [--as UID:GID] OP ARGS...` prints `ok [DATA]` or `errno N` on
//! stdout and exits 0; any other exit is a harness failure.
//!
//! Get a client with [`fsop!()`](crate::fsop!), which finds the binary cargo built for the
//! calling integration test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd;

/// `Fsop` for the helper binary cargo built alongside the calling integration test.
#[macro_export]
macro_rules! fsop {
    () => {
        $crate::fsop::Fsop::new(env!("CARGO_BIN_EXE_hybridfs-test-fsop"))
    };
}

/// Uid and gid of `nobody` / `nogroup` on Debian.
pub const NOBODY: (u32, u32) = (65534, 65534);

#[derive(Clone)]
pub struct Fsop {
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl Fsop {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Fsop { bin: bin.into(), user: None }
    }

    /// The same helper, running as `uid:gid` with no supplementary groups.
    pub fn as_user(&self, user: (u32, u32)) -> Self {
        Fsop { bin: self.bin.clone(), user: Some(user) }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some((uid, gid)) = self.user {
            c.arg("--as").arg(format!("{uid}:{gid}"));
        }
        c.args(args);
        c
    }

    /// Runs one operation: `Ok(data)` or `Err(errno)`.
    pub fn run(&self, args: &[&str]) -> Result<String, i32> {
        let out = cmd::run(&mut self.command(args), Duration::from_secs(60));
        assert!(out.success(), "fsop helper failed: {out}");
        let line = out.stdout.lines().next().unwrap_or("").to_string();
        if let Some(errno) = line.strip_prefix("errno ") {
            return Err(errno.trim().parse().unwrap_or_else(|_| panic!("bad fsop output: {out}")));
        }
        match line.strip_prefix("ok") {
            Some(data) => Ok(data.strip_prefix(' ').unwrap_or(data).to_string()),
            None => panic!("bad fsop output: {out}"),
        }
    }

    /// Same as [`run`](Self::run) with a path as first argument.
    pub fn on(&self, op: &str, path: &Path, rest: &[&str]) -> Result<String, i32> {
        let p = path.to_str().expect("utf-8 path");
        let mut args = vec![op, p];
        args.extend_from_slice(rest);
        self.run(&args)
    }

    /// Starts a long-running operation (the crash writer); stdout/stderr go to `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Child {
        let file = std::fs::File::create(log).expect("create fsop log");
        self.command(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn fsop helper")
    }
}
