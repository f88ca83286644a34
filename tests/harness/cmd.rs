//! Commands run with a time limit. Output is captured through anonymous temporary files,
//! not pipes: `hybridctl mount -d` leaves a background process that may inherit stdout and
//! stderr, and a pipe it holds open would block a reader until that process exits.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default limit for one `hybridctl` invocation.
pub const CMD_LIMIT: Duration = Duration::from_secs(120);

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code; `None` when killed by a signal or by the time limit.
    pub code: Option<i32>,
    /// True when the harness killed it at the time limit.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics with the whole output unless the command exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self}");
        self
    }

    /// stdout and stderr together, for "mentions X" checks.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = if self.timed_out {
            "killed at the time limit".to_string()
        } else {
            format!("exit {:?}", self.code)
        };
        write!(
            f,
            "`{}`: {end}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` to completion or until `limit`, when it is killed.
pub fn run(cmd: &mut Command, limit: Duration) -> CmdOutput {
    let cmdline = format!("{cmd:?}");
    let out = tempfile::tempfile().expect("create a temp file for stdout");
    let err = tempfile::tempfile().expect("create a temp file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup stdout file"))
        .stderr(err.try_clone().expect("dup stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
    let status = wait_bounded(&mut child, limit);
    CmdOutput {
        cmdline,
        code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: read_all(out),
        stderr: read_all(err),
    }
}

/// Waits for `child` at most `limit`; kills and reaps it past that and returns `None`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    let interval = Duration::from_millis(10);
    let max_tries = limit.as_millis() / interval.as_millis() + 1;
    for _ in 0..max_tries {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(interval),
            Ok(None) => break,
            Err(e) => panic!("wait for child {}: {e}", child.id()),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_all(mut file: File) -> String {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("rewind output file");
    file.read_to_end(&mut bytes).expect("read output file");
    String::from_utf8_lossy(&bytes).into_owned()
}
