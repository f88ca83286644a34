//! Names: lookup, create, link, unlink, rename, readdir.

use super::{Caller, Txn, Volume};
use crate::error::{FsError, Result};
use crate::meta::Mutation;
use crate::types::{Dentry, Inode, Ino, Kind, Timespec, NAME_MAX, ROOT_INO};

/// The most directories an ancestor walk climbs (a path of `PATH_MAX` bytes has at most half
/// as many components).
const MAX_DEPTH: usize = 4096;

/// One entry of a readdir answer; `offset` is what the kernel passes back to continue after it.
#[derive(Clone, Debug)]
pub struct ReaddirEntry {
    pub offset: u64,
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// What a new inode should be.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: Kind,
    pub perm: u32,
    pub rdev: u32,
    pub target: Vec<u8>,
}

/// Rename flags (`renameat2`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

impl Txn<'_> {
    /// The parent directory, checked to be a live directory.
    fn dir(&mut self, ino: Ino) -> Result<&Inode> {
        let dir = self.inode(ino)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if dir.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok(dir)
    }

    /// Add `name` → `ino` to `parent`, giving it the directory's next cookie.
    fn add_entry(&mut self, parent: Ino, name: &[u8], ino: Ino, kind: Kind) -> Result<Dentry> {
        let dir = self.inode_mut(parent)?;
        let dentry = Dentry { ino, kind, cookie: dir.gain_entry(kind, Timespec::now()) };
        self.push(Mutation::PutDentry { parent, name: name.to_vec(), dentry });
        Ok(dentry)
    }

    fn remove_entry(&mut self, parent: Ino, name: &[u8], d: Dentry) -> Result<()> {
        self.inode_mut(parent)?.lose_entry(d.kind, Timespec::now());
        self.push(Mutation::DelDentry { parent, name: name.to_vec(), cookie: d.cookie });
        Ok(())
    }

    /// A directory rename on a shared volume: `dir` is not `target` nor one of its ancestors
    /// (else `EINVAL`, as the kernel answers on one host, where its rename lock makes the
    /// check enough). The walk up from `target` expects each ancestor's parent unchanged at
    /// commit: two hosts moving `a` under `b` and `b` under `a` at once each pass the check on
    /// their own, but each one's transaction read what the other writes (the parent of the
    /// directory it moves), so the engine commits at most one of them (serializable) and the
    /// other runs again and fails: never a cycle cut off from the root.
    fn not_under(&mut self, dir: Ino, target: Ino) -> Result<()> {
        if !self.vol.shared {
            return Ok(());
        }
        let mut at = target;
        for _ in 0..MAX_DEPTH {
            if at == dir {
                return Err(FsError::Invalid("a directory cannot move under itself"));
            }
            if at == ROOT_INO {
                return Ok(());
            }
            let parent = match self.slots.get(&at) {
                Some((slot, _)) => slot.inode().parent,
                None => self.vol.meta.get_inode(at)?.ok_or(FsError::NotFound)?.parent,
            };
            self.expect.push(Mutation::ExpectParent { ino: at, parent });
            at = parent;
        }
        // Deeper than any path can be: the walk met other hosts' moves; read it all again.
        Err(FsError::MetaStale(format!("ancestors of directory {target}")))
    }

    /// The entry `name` of `parent` (on a shared volume, checked unchanged at commit).
    fn entry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        // A local volume reads nothing ahead: no key is built for an empty map.
        let ahead = if self.ahead_entries.is_empty() { None } else { self.ahead_entries.remove(&(parent, name.to_vec())) };
        let found = match ahead {
            Some(found) => found,
            None => self.vol.meta.lookup(parent, name)?,
        };
        if self.vol.shared {
            self.expect.push(Mutation::ExpectDentry { parent, name: name.to_vec(), dentry: found });
        }
        Ok(found)
    }
}

impl Volume {
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Inode> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let found = self.meta.lookup(parent, name)?;
        if self.shared {
            self.recent.read_name(parent, name, found);
        }
        self.getattr(found.ok_or(FsError::NotFound)?.ino)
    }

    /// Create a file, directory, symlink or special file named `name` in `parent`.
    pub fn create_node(&self, parent: Ino, name: &[u8], new: NewNode, who: Caller) -> Result<Inode> {
        self.retrying(|| self.create_node_once(parent, name, &new, who, false))
    }

    /// A new regular file, opened for writing (`O_CREAT`): on a shared volume its open row
    /// goes in the create's batch (no transaction of its own, `hosts.rs`).
    pub fn create_open(&self, parent: Ino, name: &[u8], new: NewNode, who: Caller, passthrough_write: bool) -> Result<super::data::Opened> {
        let row = self.shared && new.kind == Kind::File;
        let caps = self.caps_count();
        let inode = self.retrying(|| self.create_node_once(parent, name, &new, who, row))?;
        self.open_file_with(inode.ino, true, passthrough_write, row, Some((inode, caps)))
    }

    fn create_node_once(&self, parent: Ino, name: &[u8], new: &NewNode, who: Caller, open_row: bool) -> Result<Inode> {
        check_name(name)?;
        if Self::is_snapshots_entry(parent, name) {
            return Err(FsError::Exists);
        }
        let mut txn = self.txn(&[parent]);
        txn.read_ahead(&[parent], &[(parent, name)])?;
        let dir = txn.dir(parent)?;
        let setgid_dir = dir.perm & libc::S_ISGID != 0;
        let dir_gid = dir.gid;
        if txn.entry(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = self.new_ino(parent)?;
        let gid = if setgid_dir { dir_gid } else { who.gid };
        let mut inode = Inode::new(ino, new.kind, new.perm, who.uid, gid);
        if setgid_dir && new.kind == Kind::Dir {
            inode.perm |= libc::S_ISGID;
        }
        inode.parent = parent;
        inode.name = name.to_vec();
        inode.rdev = new.rdev;
        inode.size = new.target.len() as u64;
        inode.target = new.target.clone();
        txn.add_entry(parent, name, ino, new.kind)?;
        txn.insert_new(inode.clone());
        if open_row {
            txn.push(Mutation::PutOpen { ino, host: self.host });
        }
        txn.commit(false)?;
        Ok(inode)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(inode.target)
    }

    /// A new name `newname` in `newparent` for the existing inode `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode> {
        self.retrying(|| self.link_once(ino, newparent, newname))
    }

    fn link_once(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode> {
        check_name(newname)?;
        if Self::is_snapshots_entry(newparent, newname) {
            return Err(FsError::Exists);
        }
        if let Some(node) = self.node_if_open(ino) {
            // The answer carries the size: the kernel's writes by passthrough count.
            self.absorb(&mut node.write())?;
        }
        let mut txn = self.txn(&[ino, newparent]);
        txn.read_ahead(&[ino, newparent], &[(newparent, newname)])?;
        txn.dir(newparent)?;
        let (kind, nlink) = {
            let inode = txn.inode(ino)?;
            (inode.kind, inode.nlink)
        };
        if kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        if nlink == 0 {
            return Err(FsError::NotFound);
        }
        if txn.entry(newparent, newname)?.is_some() {
            return Err(FsError::Exists);
        }
        txn.add_entry(newparent, newname, ino, kind)?;
        let inode = txn.inode_mut(ino)?;
        inode.nlink += 1;
        inode.parent = newparent;
        inode.name = newname.to_vec();
        inode.ctime = Timespec::now();
        let out = inode.clone();
        txn.commit(false)?;
        Ok(out)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.retrying(|| self.unlink_once(parent, name))
    }

    fn unlink_once(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let mut txn = self.txn(&[parent]);
        txn.read_ahead(&[parent], &[(parent, name)])?;
        txn.dir(parent)?;
        let d = txn.entry(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        txn.remove_entry(parent, name, d)?;
        txn.drop_link(d.ino)?;
        txn.commit(false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.retrying(|| self.rmdir_once(parent, name))
    }

    fn rmdir_once(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("cannot remove ."));
        }
        let mut txn = self.txn(&[parent]);
        txn.read_ahead(&[parent], &[(parent, name)])?;
        txn.dir(parent)?;
        let d = txn.entry(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        // The directory's record is read (and so checked unchanged at commit) before its
        // entries: an entry added meanwhile changes the record (its size, its next cookie).
        // On a shared volume the kernel's lookup of the name has usually just read it.
        txn.read_ahead(&[d.ino], &[])?;
        txn.inode(d.ino)?;
        let Some(purge) = self.meta.empty_dir_purge_batch(d.ino)? else {
            return Err(FsError::NotEmpty);
        };
        txn.remove_entry(parent, name, d)?;
        txn.drop_link_with(d.ino, Some(purge))?;
        txn.commit(false)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.retrying(|| self.rename_once(parent, name, newparent, newname, flags))
    }

    fn rename_once(&self, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8], flags: RenameFlags) -> Result<()> {
        check_name(newname)?;
        if Self::is_snapshots_entry(newparent, newname) {
            return Err(FsError::Exists);
        }
        let mut txn = self.txn(&[parent, newparent]);
        txn.read_ahead(&[parent, newparent], &[(parent, name), (newparent, newname)])?;
        txn.dir(parent)?;
        txn.dir(newparent)?;
        let src = txn.entry(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = txn.entry(newparent, newname)?;
        if flags.exchange {
            let dst = dst.ok_or(FsError::NotFound)?;
            if parent != newparent {
                if src.kind == Kind::Dir {
                    txn.not_under(src.ino, newparent)?;
                }
                if dst.kind == Kind::Dir {
                    txn.not_under(dst.ino, parent)?;
                }
            }
            return self.exchange(txn, (parent, name, src), (newparent, newname, dst));
        }
        if src.kind == Kind::Dir && parent != newparent {
            txn.not_under(src.ino, newparent)?;
        }
        if let Some(dst) = dst {
            if flags.noreplace {
                return Err(FsError::Exists);
            }
            if dst.ino == src.ino {
                return Ok(());
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    // Its record first, as in `rmdir_once`.
                    txn.inode(dst.ino)?;
                    if !self.meta.readdir(dst.ino, 0, 1)?.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                }
                _ => {}
            }
            txn.remove_entry(newparent, newname, dst)?;
            txn.drop_link(dst.ino)?;
        }
        txn.remove_entry(parent, name, src)?;
        txn.add_entry(newparent, newname, src.ino, src.kind)?;
        let moved = txn.inode_mut(src.ino)?;
        moved.parent = newparent;
        moved.name = newname.to_vec();
        moved.ctime = Timespec::now();
        txn.commit(false)
    }

    /// `RENAME_EXCHANGE`: swap two entries atomically.
    fn exchange(&self, mut txn: Txn<'_>, a: (Ino, &[u8], Dentry), b: (Ino, &[u8], Dentry)) -> Result<()> {
        let (pa, na, da) = a;
        let (pb, nb, db) = b;
        let put = |parent, name: &[u8], d: Dentry, cookie| Mutation::PutDentry {
            parent,
            name: name.to_vec(),
            dentry: Dentry { ino: d.ino, kind: d.kind, cookie },
        };
        txn.push(put(pa, na, db, da.cookie));
        txn.push(put(pb, nb, da, db.cookie));
        let now = Timespec::now();
        if pa != pb && da.kind != db.kind {
            let (gain, lose) = if da.kind == Kind::Dir { (pb, pa) } else { (pa, pb) };
            txn.inode_mut(gain)?.nlink += 1;
            let l = txn.inode_mut(lose)?;
            l.nlink = l.nlink.saturating_sub(1);
        }
        for (dir, moved, to, name) in [(pa, da.ino, pb, nb), (pb, db.ino, pa, na)] {
            let d = txn.inode_mut(dir)?;
            d.mtime = now;
            d.ctime = now;
            let m = txn.inode_mut(moved)?;
            m.parent = to;
            m.name = name.to_vec();
            m.ctime = now;
        }
        txn.commit(false)
    }

    /// Entries of directory `ino` after readdir offset `offset`, at most `limit` of them.
    /// Offsets 1 and 2 are `.` and `..`; entry offsets are their cookie + 2.
    pub fn readdir(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<ReaddirEntry>> {
        let dir = self.getattr(ino)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        if offset < 1 {
            out.push(ReaddirEntry { offset: 1, ino, kind: Kind::Dir, name: b".".to_vec() });
        }
        if offset < 2 {
            let parent = if dir.parent == 0 { ino } else { dir.parent };
            out.push(ReaddirEntry { offset: 2, ino: parent, kind: Kind::Dir, name: b"..".to_vec() });
        }
        for e in self.meta.readdir(ino, offset.saturating_sub(2), limit)? {
            out.push(ReaddirEntry { offset: e.cookie + 2, ino: e.dentry.ino, kind: e.dentry.kind, name: e.name });
        }
        Ok(out)
    }
}
