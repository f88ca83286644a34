//! The read-only snapshot trees a mount shows under `/.snapshots/NAME/`.
//!
//! One inode space serves the kernel: live inodes use the low 40 bits; a snapshot's inodes are
//! its id in the high 24 bits over the live number, read at the snapshot's epoch. `.snapshots`
//! itself is a fixed synthetic directory in the root that readdir of the root does not list
//! (as ZFS's `.zfs`). Every view inode is read-only: changes get `EROFS`.

use super::namespace::ReaddirEntry;
use super::Volume;
use crate::error::{FsError, Result};
use crate::types::{Inode, Ino, Kind, SnapshotInfo, ROOT_INO};

/// Live inode numbers stay below `1 << VIEW_SHIFT`.
pub const VIEW_SHIFT: u32 = 40;
const INNER: Ino = (1 << VIEW_SHIFT) - 1;
/// The name of the snapshot directory in the root.
pub const SNAPSHOTS_NAME: &[u8] = b".snapshots";
/// The inode of `/.snapshots`.
pub const SNAPSHOTS_DIR: Ino = (0xFF_FFFF << VIEW_SHIFT) | 1;
/// How long a shared volume's mount trusts its copy of the snapshot catalogue when no
/// notification says it changed (the bound doc/SEMANTICS.md gives for other hosts' changes).
const SHARED_CATALOGUE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

enum View {
    Live(Ino),
    Dir,
    Snap { id: u64, at: u64, inner: Ino },
}

fn encode(id: u64, mut i: Inode) -> Inode {
    if i.ino == ROOT_INO {
        i.parent = SNAPSHOTS_DIR;
    } else {
        i.parent |= id << VIEW_SHIFT;
    }
    i.ino |= id << VIEW_SHIFT;
    i.perm &= !0o222;
    i
}

impl Volume {
    /// Whether `ino` is part of a read-only snapshot view (or `.snapshots` itself).
    pub fn is_view(ino: Ino) -> bool {
        ino > INNER
    }

    /// Whether `name` in `parent` is the snapshot directory.
    pub fn is_snapshots_entry(parent: Ino, name: &[u8]) -> bool {
        parent == ROOT_INO && name == SNAPSHOTS_NAME
    }

    fn catalogue(&self) -> Result<Vec<SnapshotInfo>> {
        if let Some((at, c)) = self.views.read().as_ref() {
            // A shared volume: other hosts (and other processes: `hybridctl snapshot` runs
            // beside the mount) take snapshots too. Their notifications make the catalogue be
            // read again (`snapshots_changed_elsewhere`); a lost one is bounded by this.
            if !self.shared || at.elapsed() < SHARED_CATALOGUE_FOR {
                return Ok(c.clone());
            }
        }
        let mut c = self.meta.snapshots()?;
        c.sort_by_key(|s| s.id);
        *self.views.write() = Some((std::time::Instant::now(), c.clone()));
        Ok(c)
    }

    /// Forget the cached catalogue after it changed.
    pub(crate) fn catalogue_changed(&self) {
        *self.views.write() = None;
    }

    /// A shared volume: another host or process created or deleted a snapshot.
    pub fn snapshots_changed_elsewhere(&self) {
        self.catalogue_changed();
    }

    fn view(&self, ino: Ino) -> Result<View> {
        if ino == SNAPSHOTS_DIR {
            return Ok(View::Dir);
        }
        let id = ino >> VIEW_SHIFT;
        if id == 0 {
            return Ok(View::Live(ino));
        }
        if self.views.read().is_none() {
            self.catalogue()?;
        }
        let epoch_of = || self.views.read().as_ref().and_then(|(_, c)| c.iter().find(|s| s.id == id).map(|s| s.epoch));
        let mut at = epoch_of();
        if at.is_none() && self.shared {
            // Made elsewhere since the catalogue was read.
            self.catalogue_changed();
            self.catalogue()?;
            at = epoch_of();
        }
        Ok(View::Snap { id, at: at.ok_or(FsError::NotFound)?, inner: ino & INNER })
    }

    fn snapshots_dir(&self) -> Result<Inode> {
        let root = self.getattr(ROOT_INO)?;
        let mut d = Inode::new(SNAPSHOTS_DIR, Kind::Dir, 0o555, 0, 0);
        d.parent = ROOT_INO;
        d.nlink = 2 + self.catalogue()?.len() as u32;
        d.mtime = root.mtime;
        d.ctime = root.ctime;
        d.atime = root.atime;
        Ok(d)
    }

    /// `lookup` in a view (or of `.snapshots` in the root).
    pub(crate) fn view_lookup(&self, parent: Ino, name: &[u8]) -> Result<Inode> {
        match self.view(parent)? {
            View::Live(p) if Self::is_snapshots_entry(p, name) => self.snapshots_dir(),
            View::Live(p) => self.lookup(p, name),
            View::Dir => {
                let snap = self.catalogue()?.into_iter().find(|s| s.name.as_bytes() == name).ok_or(FsError::NotFound)?;
                Ok(encode(snap.id, self.getattr_at(ROOT_INO, snap.epoch)?))
            }
            View::Snap { id, at, inner } => Ok(encode(id, self.lookup_at(inner, name, at)?)),
        }
    }

    pub(crate) fn view_getattr(&self, ino: Ino) -> Result<Inode> {
        match self.view(ino)? {
            View::Live(i) => self.getattr(i),
            View::Dir => self.snapshots_dir(),
            View::Snap { id, at, inner } => Ok(encode(id, self.getattr_at(inner, at)?)),
        }
    }

    /// Entries of any directory, live or in a view, after readdir offset `offset`.
    pub(crate) fn view_readdir(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<ReaddirEntry>> {
        match self.view(ino)? {
            View::Live(i) => self.readdir(i, offset, limit),
            View::Dir => {
                let mut out = Vec::new();
                if offset < 1 {
                    out.push(ReaddirEntry { offset: 1, ino: SNAPSHOTS_DIR, kind: Kind::Dir, name: b".".to_vec() });
                }
                if offset < 2 {
                    out.push(ReaddirEntry { offset: 2, ino: ROOT_INO, kind: Kind::Dir, name: b"..".to_vec() });
                }
                for (i, s) in self.catalogue()?.into_iter().enumerate() {
                    let off = i as u64 + 3;
                    if off > offset && out.len() < limit + 2 {
                        let ino = (s.id << VIEW_SHIFT) | ROOT_INO;
                        out.push(ReaddirEntry { offset: off, ino, kind: Kind::Dir, name: s.name.into_bytes() });
                    }
                }
                Ok(out)
            }
            View::Snap { id, at, inner } => {
                let mut out = self.readdir_at(inner, offset, limit, at)?;
                for e in &mut out {
                    e.ino = if e.name == b".." && inner == ROOT_INO { SNAPSHOTS_DIR } else { e.ino | (id << VIEW_SHIFT) };
                }
                Ok(out)
            }
        }
    }

    pub(crate) fn view_read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        match self.view(ino)? {
            View::Live(i) => self.read(i, offset, size),
            View::Dir => Err(FsError::IsDir),
            View::Snap { at, inner, .. } => self.read_at(inner, offset, size, at),
        }
    }

    pub(crate) fn view_readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let i = self.view_getattr(ino)?;
        if i.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(i.target)
    }

    pub(crate) fn view_getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        match self.view(ino)? {
            View::Live(i) => self.getxattr(i, name),
            View::Dir => Err(FsError::NoXattr),
            View::Snap { at, inner, .. } => self.getxattr_at(inner, name, at),
        }
    }

    pub(crate) fn view_listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.view(ino)? {
            View::Live(i) => self.listxattr(i),
            View::Dir => Ok(Vec::new()),
            View::Snap { at, inner, .. } => self.listxattr_at(inner, at),
        }
    }
}
