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

use super::codec::{be, k1, k2};
use super::MetaStore;
use crate::error::{FsError, Result};
use crate::kv::{prefix_end, Cf, Head, KvRead};
use crate::meta::Mutation;
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

/// The purge of `ino` (see [`MetaStore::purge_batch`]): its record, its orphan row, the
/// extents of `blocks` and the xattrs `names`.
fn purge_of(ino: Ino, blocks: impl IntoIterator<Item = u64>, names: impl IntoIterator<Item = Vec<u8>>) -> Vec<Mutation> {
    let mut batch = vec![Mutation::DelInode(ino), Mutation::DelOrphan(ino)];
    batch.extend(blocks.into_iter().map(|block| Mutation::DelExtent { ino, block }));
    batch.extend(names.into_iter().map(|name| Mutation::DelXattr { ino, name }));
    batch
}

/// Where the open rows of `ino` are (the default family).
pub(super) fn openers_prefix(ino: Ino) -> Vec<u8> {
    [OPEN, &ino.to_be_bytes()[..]].concat()
}

/// The hosts with an open row for `ino`, sorted.
pub(super) fn openers_in(r: &dyn KvRead, ino: Ino) -> Result<Vec<u64>> {
    let prefix = openers_prefix(ino);
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

/// Set in `into` every field a change on this host made to an inode record (where `after`
/// differs from `before`, the record as the change found it), and with `data` the data path's
/// fields too ([`merge_data_fields`]: written by this host and not yet stored); the others stay
/// `into`'s, as stored (another host's changes since).
pub fn merge_changed_fields(into: &mut Inode, before: &Inode, after: &Inode, data: bool) {
    if data {
        merge_data_fields(into, after);
    }
    macro_rules! changed {
        ($($f:ident),*) => {$(
            if after.$f != before.$f {
                into.$f = after.$f.clone();
            }
        )*};
    }
    changed!(kind, perm, uid, gid, nlink, size, atime, mtime, ctime, rdev, parent, name, next_cookie, target, inline);
}

/// What `fsck` finds in a shared volume's host rows (see [`MetaStore::check_hosts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRows {
    /// Hosts with a lease row.
    pub hosts: u64,
    /// Hosts whose lease ended (`host`, lease end in unix ms): dead, their rows hold nothing.
    pub dead: Vec<(u64, u64)>,
    /// Open rows `(ino, host)` of hosts that are dead or have no lease row.
    pub dead_open_rows: Vec<(Ino, u64)>,
    /// Open rows `(ino, host)` of inodes no longer stored.
    pub missing_open_rows: Vec<(Ino, u64)>,
    /// Orphans no live host holds open (a crashed host's unlinked open files): the next lease
    /// pass of a mounted host purges them.
    pub unheld_orphans: Vec<Ino>,
}

impl HostRows {
    pub fn is_empty(&self) -> bool {
        self.dead.is_empty() && self.dead_open_rows.is_empty() && self.missing_open_rows.is_empty() && self.unheld_orphans.is_empty()
    }
}

impl MetaStore {
    /// The hosts holding `ino` open ([`MetaStore::openers`]) and its [`MetaStore::purge_batch`],
    /// read together: one round trip on a shared engine for a file with few blocks and xattrs
    /// (the unlink of a file no host holds made three).
    pub fn openers_and_purge_batch(&self, ino: Ino) -> Result<(Vec<u64>, Vec<Mutation>)> {
        /// Rows read with the others; a part with more is read again whole.
        const FEW: usize = 64;
        let (open, own) = (openers_prefix(ino), k1(ino));
        let (Some(open_end), Some(end)) = (prefix_end(&open), prefix_end(&own)) else {
            return Ok((self.openers(ino)?, self.purge_batch(ino)?));
        };
        let blocks = k2(ino, 0);
        let heads = [
            Head { cf: Cf::Default, start: &open, end: &open_end, limit: FEW },
            Head { cf: Cf::Extents, start: &blocks, end: &end, limit: FEW },
            Head { cf: Cf::Xattrs, start: &own, end: &end, limit: FEW },
        ];
        let rows = self.kv.heads(&heads)?;
        let [hosts, extents, xattrs] = rows.as_slice() else {
            return Err(FsError::Meta("heads answered fewer ranges than asked".into()));
        };
        if [hosts, extents, xattrs].iter().any(|r| r.len() >= FEW) {
            return Ok((self.openers(ino)?, self.purge_batch(ino)?));
        }
        let hosts = hosts.iter().map(|(k, _)| be(k, open.len())).collect::<Result<Vec<u64>>>()?;
        let blocks = extents.iter().map(|(k, _)| be(k, 8)).collect::<Result<Vec<u64>>>()?;
        Ok((hosts, purge_of(ino, blocks, xattrs.iter().map(|(k, _)| k[8..].to_vec()))))
    }

    /// For `rmdir`: `None` when directory `ino` has an entry, else its
    /// [`MetaStore::purge_batch`], the emptiness and the xattrs read together (one round trip
    /// on a shared engine instead of a `readdir` and an `xattr_names`; a directory has no
    /// extents).
    pub fn empty_dir_purge_batch(&self, ino: Ino) -> Result<Option<Vec<Mutation>>> {
        /// Xattrs read with the entries; a directory with more is read again whole.
        const FEW: usize = 16;
        let own = k1(ino);
        let Some(end) = prefix_end(&own) else {
            return Ok(match self.readdir(ino, 0, 1)?.is_empty() {
                true => Some(self.purge_batch(ino)?),
                false => None,
            });
        };
        let entries = k2(ino, 1);
        let heads = [
            Head { cf: Cf::Cookies, start: &entries, end: &end, limit: 1 },
            Head { cf: Cf::Xattrs, start: &own, end: &end, limit: FEW },
        ];
        let rows = self.kv.heads(&heads)?;
        let [entries, xattrs] = rows.as_slice() else {
            return Err(FsError::Meta("heads answered fewer ranges than asked".into()));
        };
        if !entries.is_empty() {
            return Ok(None);
        }
        if xattrs.len() >= FEW {
            return self.purge_batch(ino).map(Some);
        }
        Ok(Some(purge_of(ino, [], xattrs.iter().map(|(k, _)| k[8..].to_vec()))))
    }

    /// The mutations that delete inode `ino` with its extents, references, xattrs and orphan
    /// row (its block references drop inside the batch: nothing still named is freed).
    pub fn purge_batch(&self, ino: Ino) -> Result<Vec<Mutation>> {
        let blocks: Vec<u64> = self.extents(ino, 0)?.into_iter().map(|(block, _)| block).collect();
        Ok(purge_of(ino, blocks, self.xattr_names(ino)?))
    }

    /// A shared volume's host rows as `fsck` checks them at `now` (unix ms): dead hosts,
    /// open rows that hold nothing, orphans nobody holds.
    pub fn check_hosts(&self, now: u64) -> Result<HostRows> {
        let leases = self.hosts()?;
        let alive = |host: u64| leases.iter().any(|&(id, end)| id == host && end > now);
        let mut r = HostRows { hosts: leases.len() as u64, ..HostRows::default() };
        r.dead = leases.iter().copied().filter(|&(_, end)| end <= now).collect();
        let mut rows = Vec::new();
        scan_prefix(self.reader(), OPEN, &mut |k, _| {
            rows.push((be(k, OPEN.len())?, be(k, OPEN.len() + 8)?));
            Ok(())
        })?;
        for (ino, host) in rows {
            if self.get_inode(ino)?.is_none() {
                r.missing_open_rows.push((ino, host));
            } else if !alive(host) {
                r.dead_open_rows.push((ino, host));
            }
        }
        for ino in self.orphans()? {
            let linked = self.get_inode(ino)?.is_some_and(|i| i.nlink > 0);
            if !linked && !self.openers(ino)?.into_iter().any(alive) {
                r.unheld_orphans.push(ino);
            }
        }
        Ok(r)
    }

    /// `fsck --repair` of what [`MetaStore::check_hosts`] found: dead hosts' rows go, open
    /// rows of missing inodes go, and each orphan no live host holds is purged in one batch
    /// that expects its open rows unchanged (a host opening it meanwhile keeps it). Returns
    /// how many orphans went.
    pub fn repair_hosts(&self, found: &HostRows) -> Result<usize> {
        for &(host, _) in &found.dead {
            self.drop_host(host)?;
        }
        for &(ino, host) in found.dead_open_rows.iter().chain(&found.missing_open_rows) {
            self.del_open(ino, host)?;
        }
        let mut purged = 0;
        for &ino in &found.unheld_orphans {
            let mut batch = vec![Mutation::ExpectOpeners { ino, hosts: self.openers(ino)? }];
            match self.get_inode(ino)? {
                Some(i) if i.nlink > 0 => continue,
                Some(i) => batch.push(Mutation::ExpectInode(ino, Some(i))),
                None => batch.push(Mutation::ExpectInode(ino, None)),
            }
            batch.extend(self.purge_batch(ino)?);
            match self.apply(batch, false) {
                Ok(()) => purged += 1,
                Err(FsError::MetaStale(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

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
        self.del_opens(&[ino], host)
    }

    /// `host` closed its last handles of `inos`: their open rows go in one transaction.
    pub fn del_opens(&self, inos: &[Ino], host: u64) -> Result<()> {
        self.kv.transact(false, &mut |tx| {
            for &ino in inos {
                tx.del(Cf::Default, open_key(ino, host));
            }
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

    /// The open rows and purge batch read together are what the reads one by one give, for
    /// a file with few rows of each kind and one with more than the first read takes.
    #[test]
    fn openers_and_purge_batch_read_together_match_the_reads_one_by_one() {
        use crate::types::{BlockId, Extent};
        let m = MetaStore::memory();
        for (ino, blocks, xattrs) in [(7u64, 3u64, 2usize), (8, 70, 1), (9, 0, 0)] {
            let mut batch = vec![Mutation::PutInode(Inode::new(ino, Kind::File, 0o644, 0, 0))];
            for block in 0..blocks {
                batch.push(Mutation::PutExtent { ino, block: block * 2, extent: Extent::Sealed { id: BlockId([block as u8; 32]), len: 10 } });
            }
            for x in 0..xattrs {
                batch.push(Mutation::PutXattr { ino, name: format!("user.{x}").into_bytes(), value: vec![1] });
            }
            m.apply(batch, false).unwrap();
            if ino != 9 {
                m.put_open(ino, 5).unwrap();
                m.put_open(ino, 3).unwrap();
            }
            let together = m.openers_and_purge_batch(ino).unwrap();
            assert_eq!(together, (m.openers(ino).unwrap(), m.purge_batch(ino).unwrap()), "inode {ino}");
            assert_eq!(together.1.len(), 2 + blocks as usize + xattrs, "inode {ino}");
        }
    }

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

    /// A namespace change on a host's open file writes only the fields it changed (and the
    /// data fields it had not written): another host's chmod since stays; a directory's
    /// parent is a precondition (invariant 1: a stale batch writes nothing).
    #[test]
    fn changed_fields_merge_and_parent_preconditions() {
        let m = MetaStore::memory();
        let mut dir = Inode::new(5, Kind::Dir, 0o755, 0, 0);
        dir.parent = 1;
        let cached = Inode::new(7, Kind::File, 0o644, 0, 0);
        m.apply(vec![Mutation::PutInode(dir), Mutation::PutInode(cached.clone())], false).unwrap();
        let mut chmodded = cached.clone();
        chmodded.perm = 0o600;
        m.apply(vec![Mutation::PutInode(chmodded)], false).unwrap();
        // This host renames its open file (cached before the chmod) and has written 3 bytes.
        let mut renamed = cached.clone();
        renamed.parent = 5;
        renamed.name = b"new".to_vec();
        renamed.size = 3;
        m.apply(vec![Mutation::MergeInodeFields { before: cached.clone(), after: renamed.clone(), data: false }], false).unwrap();
        let now = m.get_inode(7).unwrap().unwrap();
        assert_eq!((now.perm, now.parent, now.name.as_slice(), now.size), (0o600, 5, &b"new"[..], 3), "size changed in the change: it goes");
        let mut before = renamed.clone();
        before.size = 9;
        let mut after = before.clone();
        after.uid = 42;
        m.apply(vec![Mutation::MergeInodeFields { before: before.clone(), after: after.clone(), data: false }], false).unwrap();
        assert_eq!((m.get_inode(7).unwrap().unwrap().uid, m.get_inode(7).unwrap().unwrap().size), (42, 3), "unchanged data fields stay the store's");
        m.apply(vec![Mutation::MergeInodeFields { before, after, data: true }], false).unwrap();
        assert_eq!(m.get_inode(7).unwrap().unwrap().size, 9, "unwritten data fields go");
        // Parents.
        m.apply(vec![Mutation::ExpectParent { ino: 5, parent: 1 }], false).unwrap();
        let moved = vec![Mutation::ExpectParent { ino: 5, parent: 9 }, Mutation::DelInode(7)];
        assert!(matches!(m.apply(moved, false), Err(FsError::MetaStale(_))));
        assert!(m.get_inode(7).unwrap().is_some(), "a batch whose parent check failed wrote nothing");
        assert!(matches!(m.apply(vec![Mutation::ExpectParent { ino: 6, parent: 1 }], false), Err(FsError::MetaStale(_))));
    }
}
