//! Background work as named workers: each loop of a volume's process has a name, a status a
//! client can read (idle, or busy with what; the last run; the last error) and one stop
//! signal that wakes it at once; a step that fails is retried after a growing pause.
//!
//! A periodic loop is [`Workers::spawn`]ed with its step; work that runs in threads of its
//! own [`Workers::register`]s a handle and marks itself busy while it works: the sealer, the
//! lazy store's fetchers and the control server for the life of the volume, a push's
//! uploaders for the push ([`Workers::register_scoped`]: gone from the list when dropped).
//! [`Workers::status`] lists them all (`hybridctl status` shows them).
//!
//! The registry lives in core because core's own loops (the sealer) and the layers above it
//! (sync's fetchers and uploaders, the node's collector and control server) all report into
//! the one registry of a volume ([`crate::Volume::workers`]). Core knows nothing of how the
//! layers above cancel their I/O: [`Workers::on_stop`] runs their hooks (the node cancels its
//! object stores' in-flight requests there) when the stop signal goes out.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest pause after failures in a row (the pause doubles from the worker's interval).
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What a worker is doing, as a client sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WorkerStatus {
    pub name: String,
    /// What it is busy with now (None: idle).
    pub busy: Option<String>,
    /// How far along it is, when its work reports progress (a push, a merge's fetch, gc... run
    /// through the control socket): the last event, at most a few a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::Progress>,
    /// Unix seconds of the end of its last step.
    pub last_run: Option<u64>,
    pub last_error: Option<String>,
    /// Steps that failed in a row (0 after a success).
    pub failures: u32,
}

/// One worker's status, updated by the worker.
pub struct Handle {
    status: Mutex<WorkerStatus>,
}

// A std Mutex: held only to copy or change a few fields, never across work.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Handle {
    pub fn busy(&self, what: impl Into<String>) {
        let mut s = lock(&self.status);
        s.busy = Some(what.into());
        s.progress = None;
    }

    /// The step's progress so far (cleared when it ends or another begins).
    pub fn progress(&self, p: &crate::progress::Progress) {
        lock(&self.status).progress = Some(p.clone());
    }

    /// The step ended: record its outcome and go idle. Returns the failures in a row.
    pub fn done(&self, outcome: Result<(), String>) -> u32 {
        let mut s = lock(&self.status);
        s.busy = None;
        s.progress = None;
        s.last_run = Some(now());
        match outcome {
            Ok(()) => s.failures = 0,
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                s.last_error = Some(e);
            }
        }
        s.failures
    }

    pub fn status(&self) -> WorkerStatus {
        lock(&self.status).clone()
    }
}

/// The stop signal shared by a process's workers.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Sleep `d`, or less when stopped meanwhile; true when stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self.wake.wait_timeout_while(guard, d, |stopped| !*stopped).unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// The pause before the next step: the interval, doubled per failure in a row, at most
/// [`MAX_BACKOFF`] (never shorter than the interval).
pub fn pause(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let doubled = interval.saturating_mul(1u32 << failures.min(16));
    doubled.min(MAX_BACKOFF).max(interval)
}

/// What a step tells its loop.
pub enum Next {
    /// Run again after the interval.
    Continue,
    /// The work is over (what it served is gone): end the loop.
    Finish,
}

/// What runs when the stop signal goes out (see [`Workers::on_stop`]).
type StopHook = Box<dyn FnOnce() + Send>;

/// The workers of one volume (of one process, in a mount).
#[derive(Default)]
pub struct Workers {
    stop: Arc<Stop>,
    handles: Mutex<Vec<Arc<Handle>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    hooks: Mutex<Vec<StopHook>>,
}

/// A worker that is listed while this value lives ([`Workers::register_scoped`]).
pub struct Scoped {
    handle: Arc<Handle>,
    workers: Arc<Workers>,
}

impl std::ops::Deref for Scoped {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        lock(&self.workers.handles).retain(|h| !Arc::ptr_eq(h, &self.handle));
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.handles).iter().map(|h| h.status().name).collect();
        f.debug_struct("Workers").field("names", &names).field("stopped", &self.is_stopped()).finish()
    }
}

impl Workers {
    pub fn new() -> Arc<Workers> {
        Arc::new(Workers::default())
    }

    /// A status handle for work that runs in threads of its own, listed from now on.
    pub fn register(&self, name: &str) -> Arc<Handle> {
        let h = Arc::new(Handle { status: Mutex::new(WorkerStatus { name: name.to_string(), ..Default::default() }) });
        lock(&self.handles).push(h.clone());
        h
    }

    /// A status handle listed only while the returned value lives (a push's uploaders).
    pub fn register_scoped(self: &Arc<Self>, name: &str) -> Scoped {
        Scoped { handle: self.register(name), workers: self.clone() }
    }

    /// The stop signal, for loops that wait on something else and look at it between waits.
    pub fn stop_signal(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Run `hook` when the stop signal goes out (at once if it went out already): how a
    /// layer above core aborts its in-flight I/O (the node cancels its object stores).
    pub fn on_stop(&self, hook: impl FnOnce() + Send + 'static) {
        if self.is_stopped() {
            return hook();
        }
        lock(&self.hooks).push(Box::new(hook));
    }

    /// Run `step` every `interval` (the first time after one interval) on a thread named
    /// `name` until [`Workers::stop`] or until it returns [`Next::Finish`]. A failed step is
    /// logged once, kept as the worker's last error, and retried after [`pause`].
    pub fn spawn<F>(&self, name: &str, interval: Duration, mut step: F) -> std::io::Result<()>
    where
        F: FnMut(&Handle) -> Result<Next, String> + Send + 'static,
    {
        let handle = self.register(name);
        let stop = self.stop.clone();
        let thread_name = name.to_string();
        let t = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
            let mut failures = 0;
            while !stop.wait(pause(interval, failures)) {
                let span = tracing::debug_span!("worker", worker = %thread_name, result = tracing::field::Empty).entered();
                let outcome = step(&handle);
                match &outcome {
                    Ok(_) => span.record("result", "ok"),
                    Err(e) => {
                        tracing::error!("{thread_name}: {e}");
                        span.record("result", "error")
                    }
                };
                drop(span);
                let finished = matches!(outcome, Ok(Next::Finish));
                failures = handle.done(outcome.map(|_| ()));
                if finished {
                    return;
                }
            }
        })?;
        lock(&self.threads).push(t);
        Ok(())
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        lock(&self.handles).iter().map(|h| h.status()).collect()
    }

    /// Signal every worker to stop, run the stop hooks (in-flight store requests are aborted)
    /// and wait until the spawned workers have ended.
    pub fn stop(&self) {
        self.stop.stop();
        let hooks: Vec<StopHook> = lock(&self.hooks).drain(..).collect();
        for hook in hooks {
            hook();
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_stop_wakes_a_sleeping_worker_at_once() {
        let workers = Workers::new();
        workers.spawn("sleepy", Duration::from_secs(3600), |_| Ok(Next::Continue)).unwrap();
        let started = std::time::Instant::now();
        workers.stop();
        assert!(started.elapsed() < Duration::from_secs(60), "stop waited for the hour-long interval");
        assert_eq!(workers.status()[0].last_run, None, "the step never ran");
    }

    #[test]
    fn failures_back_off_and_a_success_resets_them() {
        let second = Duration::from_secs(1);
        assert_eq!(pause(second, 0), second);
        assert_eq!(pause(second, 1), 2 * second);
        assert_eq!(pause(second, 3), 8 * second);
        assert_eq!(pause(second, 40), MAX_BACKOFF);
        let h = Workers::new().register("w");
        assert_eq!(h.done(Err("boom".into())), 1);
        assert_eq!(h.done(Err("boom again".into())), 2);
        assert_eq!(h.status().last_error.as_deref(), Some("boom again"));
        assert_eq!(h.done(Ok(())), 0);
        assert_eq!(h.status().last_error.as_deref(), Some("boom again"), "the last error stays visible");
    }

    #[test]
    fn status_shows_what_a_worker_is_busy_with() {
        let workers = Workers::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        workers
            .spawn("counter", Duration::from_millis(1), move |h| {
                h.busy("counting");
                r.fetch_add(1, Ordering::SeqCst);
                Ok(if r.load(Ordering::SeqCst) >= 3 { Next::Finish } else { Next::Continue })
            })
            .unwrap();
        let control = workers.register("control");
        control.busy("push");
        for _ in 0..5000 {
            if runs.load(Ordering::SeqCst) >= 3 && workers.status()[0].busy.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = workers.status();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "Finish ends the loop");
        assert_eq!(status[0].name, "counter");
        assert!(status[0].busy.is_none() && status[0].last_run.is_some());
        assert_eq!(status[1].busy.as_deref(), Some("push"));
        workers.stop();
    }

    #[test]
    fn a_scoped_worker_is_listed_while_it_lives_and_stop_runs_the_hooks_once() {
        let workers = Workers::new();
        let uploader = workers.register_scoped("upload-0");
        uploader.busy("upload block 1");
        assert_eq!(workers.status().len(), 1);
        assert_eq!(workers.status()[0].busy.as_deref(), Some("upload block 1"));
        drop(uploader);
        assert!(workers.status().is_empty(), "a dropped scoped worker is still listed");
        let hooks = Arc::new(AtomicU32::new(0));
        let h = hooks.clone();
        workers.on_stop(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        workers.stop();
        workers.stop();
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        let h = hooks.clone();
        workers.on_stop(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hooks.load(Ordering::SeqCst), 2, "a hook added after the stop runs at once");
        assert!(workers.is_stopped());
    }
}
