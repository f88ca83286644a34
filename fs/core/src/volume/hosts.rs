//! Shared volumes (issue 15): this host's lease, its open rows, and the purge of orphans no
//! live host holds open (rows: `meta/hosts.rs`; rules: doc/SEMANTICS.md, "Several hosts").
//!
//! * Each mount of a shared volume is a host with a random id, and a lease row it renews every
//!   sixth of its lease (the mount's `mount.host_lease`, else [`HOST_LEASE`]: 60 s). A host
//!   whose lease ended is dead: whatever it held open is free.
//! * The first open of a file on a host writes an open row `(ino, host)` (a new file's row
//!   goes in its create's batch). Its last release removes it later, in one transaction with
//!   the other rows closed meanwhile ([`ClosedRows`]: the `open-rows` thread, within
//!   [`CLOSED_ROWS_GATHER`] of the close): a create and close is one transaction, not two. A
//!   reopen before that keeps the row and writes nothing. RocksDB volumes write none.
//! * The last link of a file goes: the inode stays, as an orphan, while this host has it
//!   open (or pinned) or a live host has an open row for it, else it goes in the unlink's
//!   transaction (a kernel reference alone keeps nothing: `Txn::drop_link`); the batch
//!   expects exactly the open rows it saw, so an open on another host racing the unlink
//!   either is seen or finds no inode.
//! * An orphan is purged by the host whose last reference goes (a file another host unlinked
//!   while this host's row was waiting to go: right after the row went), or, when its
//!   holders are dead (a crash), by any host's lease pass or mount.

use super::Volume;
use crate::error::Result;
use crate::meta::{now_ms, Mutation};
use crate::types::Ino;
use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a host's lease lasts without renewal, unless the mount says
/// (`VolumeOptions::host_lease`: the configuration's `mount.host_lease`).
pub const HOST_LEASE: Duration = Duration::from_secs(60);

/// A host id: random, never 0.
pub(super) fn new_host_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish().max(1)
}

/// How long the `open-rows` thread gathers closes before deleting their rows in one
/// transaction (how late a row may go after its file's last close on this host).
pub const CLOSED_ROWS_GATHER: Duration = Duration::from_millis(20);

/// A shared volume's files whose last handle on this host went and whose open rows are still
/// stored (the `open-rows` thread deletes them). The set's lock is held across that
/// deletion, so an open that finds its inode here (the row still stored: it takes it back)
/// or not (the row gone or never written: it writes one) is never wrong.
#[derive(Default)]
pub(super) struct ClosedRows {
    inos: Mutex<HashSet<Ino>>,
    wake: Condvar,
}

/// Who holds an inode open, as read from the store.
pub(super) struct Holders {
    /// The hosts with an open row (what the batch expects unchanged).
    pub rows: Vec<u64>,
    /// Some other host whose lease runs holds it.
    pub others_alive: bool,
    /// Hosts with a row whose lease ended: their rows go in the batch.
    pub dead: Vec<u64>,
}

impl Holders {
    /// The batch's precondition on the open rows, and the removal of dead hosts' rows.
    pub fn mutations(&self, ino: Ino) -> Vec<Mutation> {
        let mut out = vec![Mutation::ExpectOpeners { ino, hosts: self.rows.clone() }];
        out.extend(self.dead.iter().map(|&host| Mutation::DelOpen { ino, host }));
        out
    }
}

impl Volume {
    /// Who holds `ino` open (a shared volume).
    pub(super) fn holders(&self, ino: Ino) -> Result<Holders> {
        self.holders_of(self.meta.openers(ino)?)
    }

    /// [`Volume::holders`] from the open rows `rows` just read.
    pub(super) fn holders_of(&self, rows: Vec<u64>) -> Result<Holders> {
        let mut h = Holders { rows, others_alive: false, dead: Vec::new() };
        if h.rows.iter().all(|&host| host == self.host) {
            return Ok(h);
        }
        let now = now_ms();
        let leases = self.meta.hosts()?;
        for &host in h.rows.iter().filter(|&&host| host != self.host) {
            if leases.iter().any(|&(id, end)| id == host && end > now) {
                h.others_alive = true;
            } else {
                h.dead.push(host);
            }
        }
        Ok(h)
    }

    /// The first open of `ino` on this host (a shared volume): its open row, unless the row
    /// of an earlier open is still stored (closed, not yet deleted): that one stays.
    pub(super) fn note_open(&self, ino: Ino) -> Result<()> {
        if self.closed_rows.inos.lock().remove(&ino) {
            return Ok(());
        }
        self.meta.put_open(ino, self.host)
    }

    /// The last handle of `ino` on this host went (a shared volume): its open row goes with
    /// the next deletion of closed rows ([`ClosedRows`]).
    pub(super) fn note_closed(&self, ino: Ino) {
        self.closed_rows.inos.lock().insert(ino);
        self.closed_rows.wake.notify_one();
    }

    /// Delete the open rows of the files closed since the last call, in one transaction
    /// (on failure they stay for the next call and the error is returned), then purge those
    /// another host unlinked meanwhile: their rows kept them as orphans (a failure there is
    /// logged; a lease pass purges them later). Returns how many rows went.
    pub fn delete_closed_rows(&self) -> Result<usize> {
        let inos: Vec<Ino> = {
            let mut closed = self.closed_rows.inos.lock();
            if closed.is_empty() {
                return Ok(0);
            }
            let inos: Vec<Ino> = closed.iter().copied().collect();
            self.meta.del_opens(&inos, self.host)?;
            closed.clear();
            inos
        };
        // The rows went: what fails from here is logged (the purge falls to a lease pass).
        match self.meta.get_inodes(&inos) {
            Ok(inodes) => {
                for (ino, inode) in inos.iter().zip(inodes) {
                    if inode.is_some_and(|i| i.nlink == 0) {
                        if let Err(e) = self.purge_if_unused(*ino) {
                            tracing::warn!("purge inode {ino}, unlinked on another host after its close here: {e}");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("look for files other hosts unlinked after their close here: {e}"),
        }
        Ok(inos.len())
    }

    /// The `open-rows` thread: deletes closed files' open rows a moment after their close
    /// ([`CLOSED_ROWS_GATHER`] unless the volume's options say), until the volume is dropped or its lease given back.
    fn start_closed_rows(self: &Arc<Self>) -> Result<()> {
        let weak: Weak<Volume> = Arc::downgrade(self);
        let rows = Arc::clone(&self.closed_rows);
        let gather = self.closed_rows_gather;
        std::thread::Builder::new()
            .name("open-rows".into())
            .spawn(move || loop {
                let pending = {
                    let mut closed = rows.inos.lock();
                    if closed.is_empty() {
                        // Wakes at a close, or after a while to see whether the volume went.
                        rows.wake.wait_for(&mut closed, Duration::from_millis(200));
                    }
                    !closed.is_empty()
                };
                match weak.upgrade() {
                    Some(vol) if !vol.stopped.load(std::sync::atomic::Ordering::Acquire) => {}
                    _ => return,
                }
                if !pending {
                    continue;
                }
                std::thread::sleep(gather);
                let Some(vol) = weak.upgrade() else { return };
                if let Err(e) = vol.delete_closed_rows() {
                    tracing::warn!("forget files this host closed (their open rows hold them until this host's lease ends or it unmounts): {e}");
                    drop(vol);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map_err(|e| crate::error::FsError::io("start the open-rows thread", e))?;
        Ok(())
    }

    /// This host's id among the hosts of a shared volume.
    pub fn host_id(&self) -> u64 {
        self.host
    }

    /// Take this host's lease and keep renewing it from a thread of its own (which also
    /// purges orphans whose holders are dead and folds usage delta rows into their shards,
    /// [`MetaStore::set_usage_deltas`](crate::meta::MetaStore::set_usage_deltas)), until the
    /// volume is dropped.
    pub(super) fn start_lease(self: &Arc<Self>) -> Result<()> {
        let lease = self.host_lease;
        self.meta.renew_host(self.host, now_ms() + lease.as_millis() as u64)?;
        let weak: Weak<Volume> = Arc::downgrade(self);
        let every = (lease / 6).max(Duration::from_millis(200));
        std::thread::Builder::new()
            .name("host-lease".into())
            .spawn(move || loop {
                // Sleep in short steps so a dropped volume ends the thread soon.
                let until = std::time::Instant::now() + every;
                while std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(100));
                    if weak.strong_count() == 0 {
                        return;
                    }
                }
                let Some(vol) = weak.upgrade() else { return };
                if vol.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                match vol.meta.renew_host(vol.host, now_ms() + lease.as_millis() as u64) {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        "this host's lease had ended (renewals late by more than {lease:?}): other hosts may have freed files it holds open"
                    ),
                    Err(e) => tracing::warn!("renew this host's lease: {e}"),
                }
                if let Err(e) = vol.drop_dead_hosts(lease) {
                    tracing::warn!("remove the rows of dead hosts: {e}");
                }
                if let Err(e) = vol.purge_orphans() {
                    tracing::warn!("purge orphans of dead hosts: {e}");
                }
                if let Err(e) = vol.meta.fold_usage_deltas() {
                    tracing::warn!("fold usage rows into their shards: {e}");
                }
            })
            .map_err(|e| crate::error::FsError::io("start the host lease thread", e))?;
        self.start_closed_rows()
    }

    /// Remove the lease and open rows of hosts whose lease ended more than a lease ago (their
    /// rows held nothing since it ended; this only keeps the rows from piling up).
    fn drop_dead_hosts(&self, lease: Duration) -> Result<()> {
        let now = now_ms();
        for (host, end) in self.meta.hosts()? {
            if host != self.host && end.saturating_add(lease.as_millis() as u64) < now {
                self.meta.drop_host(host)?;
            }
        }
        Ok(())
    }

    /// Purge every orphan that neither this host references nor a live host holds open (a
    /// crashed host's files unlinked while open); returns how many went.
    pub fn purge_orphans(&self) -> Result<usize> {
        let mut n = 0;
        for ino in self.meta.orphans()? {
            if self.purge_if_unused(ino)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A clean unmount: this host's lease and open rows go (closed ones too: whoever purges
    /// orphans next finds their holders gone).
    pub(super) fn end_lease(&self) -> Result<()> {
        self.stopped.store(true, std::sync::atomic::Ordering::Release);
        self.closed_rows.wake.notify_all();
        let mut closed = self.closed_rows.inos.lock();
        self.meta.drop_host(self.host)?;
        closed.clear();
        Ok(())
    }
}
