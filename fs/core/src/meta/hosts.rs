//! Shared volumes (issue 15): which hosts are alive, which of them hold which inodes open, and
//! who runs the collector. Rows of the default family (engine-neutral, so RocksDB volumes
//! never write them: only a shared volume's process does):
//!
//! ```text
//! host/ ++ host id (u64 BE)               lease end, unix ms (u64 LE)
//! open/ ++ ino (u64 BE) ++ host id (BE)   empty: the host has the file open (one row per host)
//! lease/ ++ name                          holder's host id (u64 LE) ++ lease end, unix ms (LE)
//! ```
//!
//! A host renews its `host/` row while it runs; a host whose row ended (or is gone) is dead:
//! its open rows hold nothing, and whoever meets them deletes them. See doc/SEMANTICS.md
//! ("Several hosts": unlink while open on another host).

use super::codec::{be, k1};
use super::MetaStore;
use crate::error::{FsError, Result};
use crate::kv::{prefix_end, Cf, KvRead};
use crate::types::{Inode, Ino};

const HOST: &[u8] = b"host/";
const OPEN: &[u8] = b"open/";
const LEASE: &[u8] = b"lease/";

/// The wall clock in unix milliseconds (leases compare the clocks of hosts: they are assumed
/// to agree within a small part of a lease).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn open_key(ino: Ino, host: u64) -> Vec<u8> {
    [OPEN, &ino.to_be_bytes()[..], &host.to_be_bytes()[..]].concat()
}

fn host_key(host: u64) -> Vec<u8> {
    [HOST, &host.to_be_bytes()[..]].concat()
}

fn lease_key(name: &str) -> Vec<u8> {
    [LEASE, name.as_bytes()].concat()
}

/// Visit the rows of `prefix` in the default family.
fn scan_prefix(r: &dyn KvRead, prefix: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
    let end = prefix_end(prefix);
    r.scan(Cf::Default, prefix, end.as_deref(), &mut |k, v| {
        f(k, v)?;
        Ok(true)
    })
}

/// The hosts with an open row for `ino`, sorted.
pub(super) fn openers_in(r: &dyn KvRead, ino: Ino) -> Result<Vec<u64>> {
    let prefix = [OPEN, &ino.to_be_bytes()[..]].concat();
    let mut out = Vec::new();
    scan_prefix(r, &prefix, &mut |k, _| {
        out.push(be(k, prefix.len())?);
        Ok(())
    })?;
    Ok(out)
}

fn le_pair(v: &[u8]) -> Result<(u64, u64)> {
    match (v.get(..8), v.get(8..16)) {
        (Some(a), Some(b)) => Ok((u64::from_le_bytes(a.try_into().expect("8")), u64::from_le_bytes(b.try_into().expect("8")))),
        _ => Err(FsError::Meta("malformed lease row".into())),
    }
}

/// Copy the fields the data path of an open file owns (size, mtime, ctime, inline bytes) from
/// `from` into `into`; the others (mode, owner, links, atime, ...) stay `into`'s.
pub fn merge_data_fields(into: &mut Inode, from: &Inode) {
    into.size = from.size;
    into.mtime = from.mtime;
    into.ctime = from.ctime;
    into.inline = from.inline.clone();
}

impl MetaStore {
    /// Write `host`'s lease row to end at `until` (unix ms); returns whether the row was
    /// there (false: first renewal, or another host found the lease ended and removed it).
    pub fn renew_host(&self, host: u64, until: u64) -> Result<bool> {
        let mut had = false;
        self.kv.transact(false, &mut |tx| {
            had = tx.get(Cf::Default, &host_key(host))?.is_some();
            tx.put(Cf::Default, host_key(host), until.to_le_bytes().to_vec());
            Ok(())
        })?;
        Ok(had)
    }

    /// Every host's lease: `(host, lease end in unix ms)`.
    pub fn hosts(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        scan_prefix(self.reader(), HOST, &mut |k, v| {
            out.push((be(k, HOST.len())?, super::codec::le(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The hosts with an open row for `ino`, sorted.
    pub fn openers(&self, ino: Ino) -> Result<Vec<u64>> {
        openers_in(self.reader(), ino)
    }

    /// `host` opened `ino`: its open row, written only while the inode exists (else
    /// [`FsError::NotFound`]), in one transaction, so an unlink on another host either sees
    /// the row or removed the inode first.
    pub fn put_open(&self, ino: Ino, host: u64) -> Result<()> {
        self.kv.transact(false, &mut |tx| {
            if tx.get(Cf::Inodes, &k1(ino))?.is_none() {
                return Err(FsError::NotFound);
            }
            tx.put(Cf::Default, open_key(ino, host), Vec::new());
            Ok(())
        })
    }

    /// `host` closed its last handle of `ino`.
    pub fn del_open(&self, ino: Ino, host: u64) -> Result<()> {
        self.kv.transact(false, &mut |tx| {
            tx.del(Cf::Default, open_key(ino, host));
            Ok(())
        })
    }

    /// Remove `host`'s lease row and all its open rows (a clean unmount, or a host found dead).
    pub fn drop_host(&self, host: u64) -> Result<()> {
        let mut rows = Vec::new();
        scan_prefix(self.reader(), OPEN, &mut |k, _| {
            if be(k, OPEN.len() + 8)? == host {
                rows.push(k.to_vec());
            }
            Ok(())
        })?;
        self.kv.transact(false, &mut |tx| {
            for k in &rows {
                tx.del(Cf::Default, k.clone());
            }
            tx.del(Cf::Default, host_key(host));
            Ok(())
        })
    }

    /// Take lease `name` for `host` until `until` (unix ms) unless another host holds it
    /// unexpired; returns whether `host` holds it now. One transaction, so of two hosts taking
    /// it at once one gets it.
    pub fn take_lease(&self, name: &str, host: u64, until: u64) -> Result<bool> {
        let mut got = false;
        let now = now_ms();
        self.kv.transact(false, &mut |tx| {
            got = match tx.get(Cf::Default, &lease_key(name))? {
                Some(v) => {
                    let (holder, end) = le_pair(&v)?;
                    holder == host || end <= now
                }
                None => true,
            };
            if got {
                tx.put(Cf::Default, lease_key(name), [host.to_le_bytes(), until.to_le_bytes()].concat());
            }
            Ok(())
        })?;
        Ok(got)
    }

    /// Give lease `name` back, if `host` still holds it.
    pub fn end_lease(&self, name: &str, host: u64) -> Result<()> {
        self.kv.transact(false, &mut |tx| {
            if let Some(v) = tx.get(Cf::Default, &lease_key(name))? {
                if le_pair(&v)?.0 == host {
                    tx.del(Cf::Default, lease_key(name));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Mutation;
    use crate::types::Kind;

    /// Open rows are per (inode, host), written only while the inode exists, and a batch that
    /// expected other openers writes nothing (invariant 1).
    #[test]
    fn open_rows_leases_and_their_preconditions() {
        let m = MetaStore::memory();
        assert!(matches!(m.put_open(7, 1), Err(FsError::NotFound)));
        m.apply(vec![Mutation::PutInode(Inode::new(7, Kind::File, 0o644, 0, 0))], false).unwrap();
        m.put_open(7, 2).unwrap();
        m.put_open(7, 1).unwrap();
        assert_eq!(m.openers(7).unwrap(), vec![1, 2]);
        assert!(matches!(m.apply(vec![Mutation::ExpectOpeners { ino: 7, hosts: vec![1] }, Mutation::DelInode(7)], false), Err(FsError::MetaStale(_))));
        assert!(m.get_inode(7).unwrap().is_some());
        assert!(!m.renew_host(2, 10).unwrap());
        assert!(m.renew_host(2, 20).unwrap());
        assert_eq!(m.hosts().unwrap(), vec![(2, 20)]);
        m.drop_host(2).unwrap();
        assert_eq!(m.openers(7).unwrap(), vec![1]);
        assert!(m.hosts().unwrap().is_empty());
        // Leases: one holder until it ends or gives it back.
        let later = now_ms() + 60_000;
        assert!(m.take_lease("gc", 1, later).unwrap());
        assert!(!m.take_lease("gc", 2, later).unwrap());
        assert!(m.take_lease("gc", 1, later).unwrap(), "the holder renews");
        m.end_lease("gc", 2).unwrap();
        assert!(!m.take_lease("gc", 2, later).unwrap(), "only the holder gives it back");
        m.end_lease("gc", 1).unwrap();
        assert!(m.take_lease("gc", 2, now_ms()).unwrap());
        assert!(m.take_lease("gc", 1, later).unwrap(), "an ended lease is free");
        // The data path's fields merge into the stored record; the others stay.
        let mut chmodded = m.get_inode(7).unwrap().unwrap();
        chmodded.perm = 0o600;
        m.apply(vec![Mutation::PutInode(chmodded)], false).unwrap();
        let mut written = Inode::new(7, Kind::File, 0o644, 0, 0);
        written.size = 5;
        m.apply(vec![Mutation::MergeInodeData(written.clone())], false).unwrap();
        let now = m.get_inode(7).unwrap().unwrap();
        assert_eq!((now.perm, now.size), (0o600, 5));
        m.apply(vec![Mutation::DelInode(7), Mutation::MergeInodeData(written)], false).unwrap();
        assert_eq!(m.get_inode(7).unwrap(), None, "a merge does not bring a removed inode back");
    }
}
