//! [`MountView`]: the volume as a mount shows it, the one facade a protocol adapter calls.
//!
//! A mount shows two kinds of inodes in one number space (see `views.rs`): the live tree, and
//! under `/.snapshots/NAME/` read-only snapshot trees. The facade routes each call by inode:
//! * reads (attributes, lookups, listings, data, links, xattrs) go to the live tree or to the
//!   snapshot at its epoch;
//! * changes to a view inode (or into a view directory) fail with [`FsError::ReadOnly`]
//!   (`EROFS`); open, flush, fsync and release of a view file do nothing beyond checking it;
//! * kernel lookup counts ([`Volume::remember`], [`Volume::forget`]) are kept for live inodes
//!   only: every entry the facade hands out counts one, as the kernel takes one reference per
//!   entry it is given (a view inode needs no count: nothing is pinned for it).
//!
//! * a read-only mount (`ro`) refuses every change, and every open for writing, with
//!   `EROFS` as well (the kernel's `MS_RDONLY` refuses most of them before they reach us).
//!
//! Routing costs one comparison of the inode number per call on the live path (`is_view`), as
//! it did in the adapter before.

use super::data::{Fallocate, IoKind, KillPriv, Opened, SetAttr};
use super::namespace::{NewNode, ReaddirEntry, RenameFlags};
use super::xattr::XattrMode;
use super::{Caller, Volume};
use crate::error::{FsError, Result};
use crate::space::DiskSpace;
use crate::types::{Ino, Inode, Kind};
use std::sync::Arc;

/// The volume as a mount shows it: live tree plus read-only snapshot views, lookups counted.
#[derive(Clone)]
pub struct MountView {
    vol: Arc<Volume>,
    read_only: bool,
}

impl MountView {
    pub fn new(vol: Arc<Volume>) -> Self {
        MountView { vol, read_only: false }
    }

    /// The volume mounted read-only: every change is `EROFS`.
    pub fn read_only(vol: Arc<Volume>) -> Self {
        MountView { vol, read_only: true }
    }

    /// Refuse a change on a read-only mount or one that touches a view inode.
    fn writable(&self, inos: &[Ino]) -> Result<()> {
        if self.read_only || inos.iter().any(|i| Volume::is_view(*i)) {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// The volume behind the view (for what is not per inode: kernel cache registration).
    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// `name` in `parent`, counted when live. `Ok(None)`: the live tree has no such name, an
    /// answer the kernel may cache (a negative entry). A name missing in a view, or in
    /// `.snapshots`, is `Err(NotFound)`: a snapshot may be taken any moment.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Inode>> {
        if Volume::is_view(parent) || Volume::is_snapshots_entry(parent, name) {
            return self.vol.view_lookup(parent, name).map(Some);
        }
        match self.vol.lookup(parent, name) {
            Ok(i) => {
                self.vol.remember(i.ino);
                Ok(Some(i))
            }
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        if !Volume::is_view(ino) {
            self.vol.forget(ino, n);
        }
    }

    /// An entry of a listing the kernel linked (readdirplus): one reference, except for `.`
    /// and `..` and view inodes.
    pub fn listed(&self, e: &ReaddirEntry) {
        if e.name != b"." && e.name != b".." && !Volume::is_view(e.ino) {
            self.vol.remember(e.ino);
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        self.vol.view_getattr(ino)
    }

    /// The attributes of the entries `inos` of a listing, in order (`Err(NotFound)` where one
    /// is gone): live inodes with one store read for all ([`Volume::getattrs`]), view inodes
    /// one by one.
    pub fn getattrs(&self, inos: &[Ino]) -> Result<Vec<Result<Inode>>> {
        let live: Vec<Ino> = inos.iter().copied().filter(|i| !Volume::is_view(*i)).collect();
        let mut found = self.vol.getattrs(&live)?.into_iter();
        Ok(inos
            .iter()
            .map(|&ino| match Volume::is_view(ino) {
                true => self.vol.view_getattr(ino),
                false => found.next().flatten().ok_or(FsError::NotFound),
            })
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.vol.view_readlink(ino)
    }

    pub fn readdir(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<ReaddirEntry>> {
        self.vol.view_readdir(ino, offset, limit)
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.vol.view_read(ino, offset, size)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.vol.view_getxattr(ino, name)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.vol.view_listxattr(ino)
    }

    /// A new node (not a regular file's open: see [`MountView::create`]), counted.
    pub fn create_node(&self, parent: Ino, name: &[u8], new: NewNode, who: Caller) -> Result<Inode> {
        self.writable(&[parent])?;
        let i = self.vol.create_node(parent, name, new, who)?;
        self.vol.remember(i.ino);
        Ok(i)
    }

    /// A new file opened for writing, counted. Written by kernel passthrough (where the mount
    /// allows it) when created with `truncate` (`O_TRUNC`): how whole files such as
    /// checkpoints are written (`open(.., "wb")`, `>`). Without it (an untar's or a copy's
    /// `O_EXCL`) only while most of the volume's last new files outgrew the inline limit
    /// ([`NewFiles`](super::data::NewFiles)): many small files stay on our path and inline,
    /// without a staging file and a backing file each, and a tree of larger files (tar's
    /// 10 KiB records) is not a write request per record.
    pub fn create(&self, parent: Ino, name: &[u8], new: NewNode, who: Caller, truncate: bool) -> Result<Opened> {
        self.writable(&[parent])?;
        let caps = self.vol.caps_count();
        let passthrough_write = truncate || self.vol.expect_large_new_files();
        let opened = self.vol.create_open(parent, name, new, who, passthrough_write)?;
        self.vol.remember(opened.inode.ino);
        self.vol.created_without_caps(opened.inode.ino, caps);
        Ok(opened)
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode> {
        self.writable(&[ino, newparent])?;
        let i = self.vol.link(ino, newparent, newname)?;
        self.vol.remember(i.ino);
        Ok(i)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable(&[parent])?;
        self.vol.unlink(parent, name)
    }

    /// `opendir`: a directory's attributes (a view's too); a live one's handle is counted.
    pub fn opendir(&self, ino: Ino) -> Result<Inode> {
        if Volume::is_view(ino) {
            let inode = self.vol.view_getattr(ino)?;
            return match inode.kind {
                Kind::Dir => Ok(inode),
                _ => Err(FsError::NotDir),
            };
        }
        self.vol.opendir(ino)
    }

    pub fn releasedir(&self, ino: Ino) {
        if !Volume::is_view(ino) {
            self.vol.releasedir(ino);
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable(&[parent])?;
        self.vol.rmdir(parent, name)
    }

    pub fn rename(&self, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8], flags: RenameFlags) -> Result<()> {
        self.writable(&[parent, newparent])?;
        self.vol.rename(parent, name, newparent, newname, flags)
    }

    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Inode> {
        self.writable(&[ino])?;
        self.vol.setattr(ino, set)
    }

    /// Open a file; a view file opens read-only, through the page cache, with nothing to
    /// release.
    pub fn open(&self, ino: Ino, write: bool) -> Result<Opened> {
        if write {
            self.writable(&[])?;
        }
        if !Volume::is_view(ino) {
            return self.vol.open_file(ino, write);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        let inode = self.vol.view_getattr(ino)?;
        Ok(Opened { inode, kind: IoKind::Cached, backing: None, flush_on_close: false })
    }

    pub fn release(&self, ino: Ino, kind: IoKind) -> Result<()> {
        if Volume::is_view(ino) {
            return Ok(());
        }
        self.vol.release_file(ino, kind)
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8], kill: KillPriv) -> Result<u32> {
        self.writable(&[ino])?;
        self.vol.write_killing(ino, offset, data, kill)
    }

    pub fn flush(&self, ino: Ino) -> Result<()> {
        if Volume::is_view(ino) {
            return Ok(());
        }
        self.vol.flush(ino)
    }

    pub fn fsync(&self, ino: Ino) -> Result<()> {
        if Volume::is_view(ino) {
            return Ok(());
        }
        self.vol.fsync(ino)
    }

    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        self.writable(&[ino])?;
        self.vol.fallocate(ino, offset, len, mode)
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        self.writable(&[ino])?;
        self.vol.setxattr(ino, name, value, mode)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable(&[ino])?;
        self.vol.removexattr(ino, name)
    }

    pub fn disk_space(&self) -> Result<DiskSpace> {
        self.vol.disk_space()
    }

    /// See [`Volume::enable_passthrough_writes`].
    pub fn enable_passthrough_writes(&self, on: bool) {
        self.vol.enable_passthrough_writes(on)
    }

    /// See [`Volume::enable_passthrough`].
    pub fn enable_passthrough(&self, on: bool) {
        self.vol.enable_passthrough(on)
    }

    /// Flush everything at unmount ([`Volume::shutdown`]).
    pub fn shutdown(&self) -> Result<()> {
        self.vol.shutdown()
    }
}
