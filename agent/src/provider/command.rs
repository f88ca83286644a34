//! The `command` provider: a user's program does the renting; it speaks JSON.
//!
//! Each call runs `PROGRAM OP` (through `sh -c`, so `program` may carry arguments) with the
//! request as JSON on stdin, and reads the answer as JSON from stdout. `OP` is one of:
//!
//! | OP | stdin | stdout |
//! |---|---|---|
//! | `offers` | `{}` | `[Offer]` (`instance_type`, `gpus`, `price_per_hour`, `spot`, `gpu_type`) |
//! | `launch` | `{"idempotency_key", "instance_type", "tags", "bootstrap"}` | `Instance` |
//! | `describe` | `{"tags": {...}}` | `[Instance]`: every instance carrying all the tags |
//! | `terminate` | `{"instance_id"}` | anything (ignored) |
//! | `interruptions` | `{}` | `[Interruption]` (`instance_id`, `at`); only with `interruptions = true` |
//!
//! `Instance` is `{"id", "instance_type", "state": "pending|running|stopping|terminated",
//! "tags", "launched_at", "terminated_at"}` (times RFC 3339 or null). The request goes on
//! stdin, never in argv (the bootstrap holds the node's token: argv is visible to every
//! user in `ps`). The environment carries `HYBRID_AGENT_OP` (the OP) and `HYBRID_AGENT_NOW`
//! (the agent's time, RFC 3339: a scaled or manual clock reaches the program too), plus
//! `provider.command.env`.
//!
//! Exit status: `0` the answer is on stdout; `3` no capacity for this offer (nothing was
//! started; the controller backs the offer off and tries the next); `75` (EX_TEMPFAIL)
//! transient (throttled, network): retried at the next step with the same idempotency key;
//! anything else is fatal for this call. A call that runs past `timeout` is killed (its whole
//! process group) and counts as transient. The last lines of stderr (at most 400 characters)
//! end the error line (so a program must never print its request, which holds the node's
//! token, on stderr; stdout is never quoted). The program keeps the contract of `provider/mod.rs`: `launch` is
//! idempotent by key (a transient or timed-out launch is asked again with the same key).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::clock::Clock;
use crate::config::Dur;

/// Exit status of a program that found no capacity for the offer asked.
pub const EXIT_NO_CAPACITY: i32 = 3;
/// Exit status of a transient failure (EX_TEMPFAIL).
pub const EXIT_TRANSIENT: i32 = 75;
/// At most this much of stdout is read.
const MAX_STDOUT: u64 = 8 << 20;
/// The tail of stderr kept for the error line.
const STDERR_TAIL: usize = 400;

/// `[provider.command]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program, run as `PROGRAM OP` by `sh -c` (may carry arguments).
    pub program: toml::Spanned<String>,
    /// Longest a call may run before it is killed (transient).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Extra environment for the program (region, profile; not logged).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The program answers `interruptions` (default: not asked; no notices).
    #[serde(default)]
    pub interruptions: bool,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(120))
}

impl CommandConfig {
    pub fn new(program: &str) -> CommandConfig {
        CommandConfig {
            program: toml::Spanned::new(0..0, program.to_string()),
            timeout: default_timeout(),
            env: BTreeMap::new(),
            interruptions: false,
        }
    }
}

pub struct CommandProvider {
    cfg: CommandConfig,
    clock: Arc<dyn Clock>,
}

impl CommandProvider {
    pub fn new(cfg: CommandConfig, clock: Arc<dyn Clock>) -> CommandProvider {
        CommandProvider { cfg, clock }
    }

    fn program(&self) -> &str {
        self.cfg.program.get_ref()
    }

    /// Runs `PROGRAM op` with `input` on stdin; the parsed stdout, or the error its exit
    /// status maps to.
    fn call<T: DeserializeOwned>(&self, op: &str, input: &serde_json::Value) -> Result<T, ProviderError> {
        let out = self.run(op, input)?;
        serde_json::from_slice(&out).map_err(|e| {
            // Not the output itself: a launch answer could echo the bootstrap (invariant 8).
            ProviderError::Permanent(format!("command provider: {op}: stdout is not the expected JSON: {e}"))
        })
    }

    fn run(&self, op: &str, input: &serde_json::Value) -> Result<Vec<u8>, ProviderError> {
        let fail = |m: String| ProviderError::Permanent(format!("command provider: {op}: {m}"));
        let body = serde_json::to_vec(input).map_err(|e| fail(e.to_string()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {} \"$@\"", self.program()))
            .arg("hybrid-agent-provider")
            .arg(op)
            .envs(&self.cfg.env)
            .env("HYBRID_AGENT_OP", op)
            .env("HYBRID_AGENT_NOW", self.clock.now().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("run `{}`: {e}", self.program())))?;
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its stdin closes the pipe: not an error.
            std::thread::spawn(move || drop(stdin.write_all(&body)));
        }
        for (is_out, pipe) in [(true, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)), (false, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>))] {
            let tx = tx.clone();
            if let Some(pipe) = pipe {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = pipe.take(MAX_STDOUT).read_to_end(&mut buf);
                    let _ = tx.send((is_out, buf));
                });
            }
        }
        drop(tx);
        let deadline = Instant::now() + self.cfg.timeout.0;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    // SAFETY: kill(2) on the child's own process group (made by process_group(0)).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = child.wait();
                    return Err(ProviderError::Transient(format!(
                        "command provider: {op}: no answer within {}s (killed)",
                        self.cfg.timeout.0.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(fail(format!("wait: {e}"))),
            }
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            match rx.recv_timeout(left) {
                Ok((true, b)) => stdout = b,
                Ok((false, b)) => stderr = b,
                Err(_) => return Err(fail("exited, but its stdout or stderr stays open (a background process holds it)".into())),
            }
        }
        let why = stderr_tail(&stderr);
        match status.code() {
            Some(0) => Ok(stdout),
            Some(EXIT_NO_CAPACITY) => Err(ProviderError::NoCapacity(format!("command provider: {op}: {why}"))),
            Some(EXIT_TRANSIENT) => Err(ProviderError::Transient(format!("command provider: {op}: {why}"))),
            Some(c) => Err(fail(format!("exit {c}: {why}"))),
            None => Err(fail(format!("{status}: {why}"))),
        }
    }
}

/// The last lines of `stderr`, joined by ` | `, at most [`STDERR_TAIL`] characters.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return "(nothing on stderr)".into();
    }
    let mut out = String::new();
    for line in lines.iter().rev() {
        if !out.is_empty() && out.len() + line.len() + 3 > STDERR_TAIL {
            break;
        }
        out = if out.is_empty() { line.to_string() } else { format!("{line} | {out}") };
    }
    if out.chars().count() > STDERR_TAIL {
        let skip = out.chars().count() - STDERR_TAIL;
        out = format!("...{}", out.chars().skip(skip).collect::<String>());
    }
    out
}

impl Provider for CommandProvider {
    fn name(&self) -> &str {
        "command"
    }

    fn offers(&self) -> Result<Vec<Offer>, ProviderError> {
        self.call("offers", &json!({}))
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        let input = json!({
            "idempotency_key": req.idempotency_key,
            "instance_type": req.instance_type,
            "tags": req.tags,
            "bootstrap": req.bootstrap,
        });
        self.call("launch", &input)
    }

    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        let all: Vec<Instance> = self.call("describe", &json!({ "tags": tags }))?;
        // Whatever the program matched, only what carries every tag is ours.
        Ok(all.into_iter().filter(|i| has_tags(&i.tags, tags)).collect())
    }

    fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.run("terminate", &json!({ "instance_id": instance_id })).map(drop)
    }

    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError> {
        if !self.cfg.interruptions {
            return Ok(Vec::new());
        }
        self.call("interruptions", &json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::provider::conformance;

    fn example() -> String {
        format!("{}/examples/command/json-file-provider", env!("CARGO_MANIFEST_DIR"))
    }

    fn provider(dir: &std::path::Path, script: Option<&str>) -> CommandProvider {
        let mut cfg = CommandConfig::new(&script.map_or_else(example, str::to_string));
        cfg.env.insert("HYBRID_PROVIDER_FILE".into(), dir.join("instances.json").display().to_string());
        cfg.timeout = Dur(Duration::from_secs(20));
        let clock = Arc::new(ManualClock::new("2026-03-02T06:00:00Z".parse().unwrap()));
        CommandProvider::new(cfg, clock)
    }

    #[test]
    fn the_example_json_file_provider_keeps_the_provider_contract() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), None);
        super::super::conformance::check(&p);
        // Times come from the agent's clock (HYBRID_AGENT_NOW), not the wall clock.
        let all = p.describe(&BTreeMap::new()).unwrap();
        assert_eq!(all[0].launched_at, Some("2026-03-02T06:00:00Z".parse().unwrap()));
    }

    #[test]
    fn exit_codes_map_to_no_capacity_transient_and_fatal_with_stderr_in_the_line_and_no_secret_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("p.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\necho noise >&2\ncase \"$HYBRID_AGENT_OP\" in\n offers) echo 'InsufficientInstanceCapacity: none in us-east-1a' >&2; exit 3;;\n describe) echo 'throttled' >&2; exit 75;;\n terminate) echo 'AuthFailure: bad key' >&2; exit 1;;\n interruptions) sleep 30;;\nesac\n",
        )
        .unwrap();
        crate::state::set_mode(&script, 0o755).unwrap();
        let mut p = provider(dir.path(), Some(script.to_str().unwrap()));
        let e = p.offers().unwrap_err();
        assert!(matches!(e, ProviderError::NoCapacity(_)), "{e:?}");
        assert!(e.to_string().contains("offers: noise | InsufficientInstanceCapacity: none in us-east-1a"), "{e}");
        let e = p.describe(&BTreeMap::new()).unwrap_err();
        assert!(matches!(e, ProviderError::Transient(_)) && e.to_string().contains("throttled"), "{e:?}");
        let e = p.terminate("i-1").unwrap_err();
        assert!(matches!(e, ProviderError::Permanent(_)) && e.to_string().ends_with("exit 1: noise | AuthFailure: bad key"), "{e}");
        // A call past its timeout is killed (the whole group: the sleep too) and is transient.
        p.cfg.interruptions = true;
        p.cfg.timeout = Dur(Duration::from_secs(1));
        let e = p.interruptions().unwrap_err();
        assert!(matches!(e, ProviderError::Transient(_)) && e.to_string().contains("no answer within 1s"), "{e:?}");
        // Invariant 8: the launch request (the node's token in its bootstrap) goes on stdin,
        // never in argv, and an answer that echoes it is never quoted in the error line.
        let mut req = conformance::request("o", "n1");
        req.bootstrap.token = "SECRET-TOKEN-1234".into();
        for (name, exit) in [("echo0.sh", 0), ("echo1.sh", 1)] {
            let echo = dir.path().join(name);
            std::fs::write(&echo, format!("#!/bin/sh\necho \"argv: $* ($#)\" >&2\ncat\nexit {exit}\n")).unwrap();
            crate::state::set_mode(&echo, 0o755).unwrap();
            let e = provider(dir.path(), Some(echo.to_str().unwrap())).launch(&req).unwrap_err().to_string();
            assert!(!e.contains("SECRET-TOKEN-1234"), "{e}");
            match exit {
                0 => assert!(e.contains("launch: stdout is not the expected JSON"), "{e}"),
                _ => assert!(e.ends_with("launch: exit 1: argv: launch (1)"), "{e}"),
            }
        }
        // A program that is not there is one clear line.
        let p = provider(dir.path(), Some("/nonexistent/provider"));
        let e = p.offers().unwrap_err().to_string();
        assert!(e.contains("offers: exit 127") && e.contains("/nonexistent/provider"), "{e}");
    }
}
