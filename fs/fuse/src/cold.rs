//! Cold reads: reads that wait for the object store, served off the FUSE threads.
//!
//! # Off the FUSE threads
//!
//! A session thread runs every read with [`Waiting::Never`]: a read of data the node holds
//! (staged, in the block cache, a local block file) is answered right there, exactly as
//! before. A read that needs a block from the object store (a clone's cold data) gets
//! [`FsError::WouldBlock`] from the block store instead of waiting; the session thread then
//! hands the request's reply (fuser's replies are `Send`) to a waiter thread and goes back to
//! `/dev/fuse`. However many reads wait for a slow or unanswering store, `stat`, `ls`, opens
//! and reads of local data keep their threads.
//!
//! Waiters are named threads (`cold-read-N`), started as needed up to [`WAITERS`] and kept
//! until unmount; each is a named worker of the volume's registry (`hybridctl status` shows
//! which read it waits for). At most [`WAITERS`] more reads queue for a free waiter; a read beyond that
//! fails at once with `EIO` and a log line: the store is not keeping up, and more threads
//! would only pile up (the block store itself starts at most 64 fetches that readers wait on).
//! A waiter runs the read again, now waiting at most the clone's read timeout.
//!
//! # Interrupted callers
//!
//! fuser 0.18 answers `FUSE_INTERRUPT` with `ENOSYS` (the kernel then sends no more), and the
//! kernel keeps a caller whose request userspace has read waiting for the reply, even after
//! `SIGKILL`. So a waiter watches its caller instead ([`Waiting::Interruptible`], every
//! [`INTERRUPT_POLL`](hybridfs_core::blockstore::INTERRUPT_POLL)): the request carries the
//! calling thread's id, and `/proc/TID/status` its pending, blocked and caught signals. The
//! read stops with `EINTR` as soon as the caller ([`interrupted_by`]):
//! * is gone or a zombie;
//! * has `SIGKILL` pending — every fatal signal becomes that: the kernel turns a signal whose
//!   default action kills into `SIGKILL` for each thread of the process;
//! * has a pending signal it catches and does not block (sent to the thread; one sent to the
//!   process counts for the process's main thread only, which the kernel prefers to deliver it
//!   to — another thread's read then waits on, up to the read timeout).
//!
//! Stop signals and ignored signals do not interrupt (a program that expects no `EINTR` from a
//! file would see one). The fetch the read waited for goes on and its block lands in the cache
//! (`hybridfs_sync::lazy`), so the next read finds it.

use crate::errno::ReplyError;
use crate::OpTimer;
use fuser::ReplyData;
use hybridfs_core::blockstore::{with_waiting, Waiting};
use hybridfs_core::worker::Handle;
use hybridfs_core::{FsError, MountView};
use parking_lot::Mutex;
use std::sync::Arc;

/// Waiter threads at most, and reads queued for them at most.
pub const WAITERS: usize = 64;

/// A read handed off a session thread: what to read and whom to answer.
pub(crate) struct ColdRead {
    pub ino: u64,
    pub offset: u64,
    pub size: u32,
    /// The calling thread's id as the kernel gave it (0: not visible from here).
    pub caller: u32,
    pub reply: ReplyData,
    /// The request's timer: a cold read counts until its reply.
    pub timer: OpTimer,
}

/// The waiter pool of one mount. Dropping it (at unmount) ends idle waiters; busy ones end
/// after their read.
pub(crate) struct ColdReads {
    tx: crossbeam_channel::Sender<ColdRead>,
    shared: Arc<Shared>,
}

struct Shared {
    vol: MountView,
    rx: crossbeam_channel::Receiver<ColdRead>,
    load: Mutex<Load>,
}

/// Waiter threads started, and `free`: waiters about to take a read minus reads queued
/// (negative: a backlog).
struct Load {
    threads: usize,
    free: isize,
}

enum Route {
    Queue,
    Spawn(usize),
    Refuse,
}

impl ColdReads {
    pub fn new(vol: MountView) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        ColdReads { tx, shared: Arc::new(Shared { vol, rx, load: Mutex::new(Load { threads: 0, free: 0 }) }) }
    }

    /// Hand `read` to a free waiter, a new one, or the queue; refuse it (`EIO`) when all
    /// [`WAITERS`] are busy and as many reads queue already.
    pub fn submit(&self, read: ColdRead) {
        let route = {
            let mut load = self.shared.load.lock();
            if load.free > 0 || (load.threads == WAITERS && load.free > -(WAITERS as isize)) {
                load.free -= 1;
                Route::Queue
            } else if load.threads < WAITERS {
                load.threads += 1;
                Route::Spawn(load.threads)
            } else {
                Route::Refuse
            }
        };
        match route {
            Route::Queue => {
                // The receiver lives as long as `shared`, which `self` holds.
                let _ = self.tx.send(read);
            }
            Route::Spawn(n) => self.spawn(n, read),
            Route::Refuse => {
                tracing::warn!("read of inode {}: {WAITERS} reads already wait for the object store and as many queue", read.ino);
                read.reply.fail("read", FsError::io("read", std::io::Error::other("too many reads wait for the object store")));
            }
        }
    }

    fn spawn(&self, n: usize, first: ColdRead) {
        let shared = self.shared.clone();
        let name = format!("cold-read-{n}");
        let status = shared.vol.volume().workers().register(&name);
        let started = std::thread::Builder::new().name(name).spawn(move || shared.serve(first, &status));
        if let Err(e) = started {
            // The read went down with the closure: fuser answers a dropped reply with EIO.
            self.shared.load.lock().threads -= 1;
            tracing::error!("start cold-read waiter {n}: {e}");
        }
    }
}

impl Shared {
    /// A waiter: serve `first`, then reads from the queue until the pool is dropped.
    fn serve(&self, first: ColdRead, status: &Handle) {
        let mut next = Some(first);
        loop {
            if let Some(read) = next.take() {
                status.busy(format!("read inode {} at {} for thread {}", read.ino, read.offset, read.caller));
                let outcome = self.read(read);
                status.done(outcome);
            }
            self.load.lock().free += 1;
            match self.rx.recv() {
                Ok(read) => next = Some(read),
                Err(_) => return,
            }
        }
    }

    /// Serve one read; what went wrong, for the waiter's status (an interrupted caller is not
    /// a failure).
    fn read(&self, r: ColdRead) -> Result<(), String> {
        let result = if r.caller == 0 {
            self.vol.read(r.ino, r.offset, r.size)
        } else if caller_interrupted(r.caller as u64) {
            Err(FsError::Interrupted)
        } else {
            let waiting = Waiting::Interruptible { probe: caller_interrupted, arg: r.caller as u64 };
            with_waiting(waiting, || self.vol.read(r.ino, r.offset, r.size))
        };
        let outcome = match result {
            Ok(d) => {
                r.reply.data(&d);
                Ok(())
            }
            Err(FsError::Interrupted) => {
                tracing::debug!("read of inode {} stopped waiting for the object store: its caller {} was interrupted", r.ino, r.caller);
                r.reply.fail("read", FsError::Interrupted);
                Ok(())
            }
            Err(e) => {
                let why = format!("read of inode {}: {e}", r.ino);
                r.reply.fail("read", e);
                Err(why)
            }
        };
        drop(r.timer);
        outcome
    }
}

/// Whether thread `tid` (a FUSE caller) is gone or has a signal that should end its wait.
fn caller_interrupted(tid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => interrupted_by(&status, tid),
        Err(_) => true,
    }
}

/// [`caller_interrupted`] on the text of `/proc/TID/status` (rules in the module doc).
pub(crate) fn interrupted_by(status: &str, tid: u64) -> bool {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    if matches!(field("State:").and_then(|s| s.chars().next()), Some('Z' | 'X')) {
        return true;
    }
    const KILL: u64 = 1 << (libc::SIGKILL - 1);
    let own = mask("SigPnd:");
    if own & KILL != 0 {
        return true;
    }
    let main_thread = field("Tgid:").and_then(|v| v.parse::<u64>().ok()) == Some(tid);
    let pending = own | if main_thread { mask("ShdPnd:") } else { 0 };
    pending & !mask("SigBlk:") & mask("SigCgt:") != 0
}

#[cfg(test)]
mod tests {
    use super::interrupted_by;

    fn status(state: &str, tgid: u64, own: u64, shared: u64, blocked: u64, caught: u64) -> String {
        format!(
            "Name:\tcat\nState:\t{state}\nTgid:\t{tgid}\nPid:\t7\nSigQ:\t0/1\nSigPnd:\t{own:016x}\nShdPnd:\t{shared:016x}\n\
             SigBlk:\t{blocked:016x}\nSigIgn:\t0000000000000000\nSigCgt:\t{caught:016x}\n"
        )
    }

    const USR1: u64 = 1 << (libc::SIGUSR1 - 1);
    const KILL: u64 = 1 << (libc::SIGKILL - 1);
    const TSTP: u64 = 1 << (libc::SIGTSTP - 1);

    #[test]
    fn a_waiting_caller_is_interrupted_by_what_ends_its_wait_only() {
        assert!(!interrupted_by(&status("S (sleeping)", 7, 0, 0, 0, USR1), 7), "nothing pending");
        assert!(interrupted_by(&status("D (disk sleep)", 7, KILL, 0, 0, 0), 7), "SIGKILL (any fatal signal)");
        assert!(interrupted_by(&status("Z (zombie)", 7, 0, 0, 0, 0), 7), "exited");
        assert!(interrupted_by(&status("S (sleeping)", 7, USR1, 0, 0, USR1), 7), "a caught signal to the thread");
        assert!(!interrupted_by(&status("S (sleeping)", 7, USR1, 0, USR1, USR1), 7), "blocked");
        assert!(!interrupted_by(&status("S (sleeping)", 7, TSTP, 0, 0, 0), 7), "a stop signal with no handler");
        assert!(interrupted_by(&status("S (sleeping)", 7, 0, USR1, 0, USR1), 7), "to the process, main thread");
        assert!(!interrupted_by(&status("S (sleeping)", 5, 0, USR1, 0, USR1), 7), "to the process, another thread");
    }
}
