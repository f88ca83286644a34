//! A hung mount would hang its test forever (a blocked `read()` on a FUSE file never
//! returns). Each [`TestVolume`](crate::TestVolume) arms a watchdog: past its limit, it aborts
//! the FUSE connections of the volume's mount points and kills their mount processes, so the
//! blocked call fails with ENOTCONN and the test fails instead of hanging.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::procs;

/// Mount points a watchdog (and a volume's cleanup) must take down.
pub type MountPoints = Arc<Mutex<Vec<PathBuf>>>;

pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts a watchdog that fires after `limit` unless dropped first.
    pub fn arm(limit: Duration, mountpoints: MountPoints, pid_of: Box<dyn Fn() -> Option<i32> + Send>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                fire(limit, &mountpoints, pid_of());
            }
        });
        Watchdog { stop: Some(stop), thread: Some(thread), fired }
    }

    /// Whether the watchdog fired (the test then failed for a hang, whatever else it saw).
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Stops the watchdog, waiting for an abort in progress to finish; returns whether it
    /// fired.
    pub fn disarm(mut self) -> bool {
        self.stop_and_join();
        self.fired()
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fire(limit: Duration, mountpoints: &MountPoints, pid: Option<i32>) {
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!!! WATCHDOG: test still running after {limit:?}; aborting its FUSE mounts \
         and killing the mount process so blocked calls fail\n{bar}"
    );
    let mountpoints = mountpoints.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for mp in &mountpoints {
        procs::abort_fuse_connection(mp);
    }
    if let Some(pid) = pid {
        procs::kill9_and_wait(pid, Duration::from_secs(5));
    }
    for mp in &mountpoints {
        for pid in procs::processes_with_arg(&mp.to_string_lossy()) {
            procs::kill9_and_wait(pid, Duration::from_secs(5));
        }
        procs::lazy_unmount_all(mp);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
