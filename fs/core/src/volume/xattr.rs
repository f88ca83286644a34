//! Extended attributes, stored per inode in the metadata store.

use super::Volume;
use crate::error::{FsError, Result};
use crate::meta::Mutation;
use crate::types::{Ino, Timespec};

/// The attribute holding a file's capabilities: a write or a truncate removes it
/// ([`crate::KillPriv`]), as the kernel's `file_remove_privs` does.
pub const XATTR_CAPS: &[u8] = b"security.capability";

/// Longest value accepted, as on ext4.
pub const XATTR_SIZE_MAX: usize = 64 * 1024;

/// How `setxattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    /// `XATTR_CREATE`: fail if it exists.
    Create,
    /// `XATTR_REPLACE`: fail if it does not.
    Replace,
}

fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    const NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    if !NAMESPACES.iter().any(|ns| name.starts_with(ns) && name.len() > ns.len()) {
        return Err(FsError::Unsupported("xattr namespace"));
    }
    Ok(())
}

impl Volume {
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        self.retrying(|| self.setxattr_once(ino, name, value, mode))
    }

    fn setxattr_once(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::Range);
        }
        let mut txn = self.txn(&[ino]);
        let exists = self.meta.get_xattr(ino, name)?.is_some();
        match (mode, exists) {
            (XattrMode::Create, true) => return Err(FsError::Exists),
            (XattrMode::Replace, false) => return Err(FsError::NoXattr),
            _ => {}
        }
        txn.inode_mut(ino)?.ctime = Timespec::now();
        txn.push(Mutation::PutXattr { ino, name: name.to_vec(), value: value.to_vec() });
        txn.commit(false)?;
        if name == XATTR_CAPS {
            // After the commit: a writer that read the old count looks again at its next
            // write; one that reads the new count finds the attribute.
            self.caps_set.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    /// The kernel asks for `security.capability` before a write to a file (once per file and
    /// attribute refresh with FUSE_HANDLE_KILLPRIV_V2, else before every write) and at each
    /// chown, so the answer "none" must be cheap: the inode's existence is checked without
    /// decoding it, and for a file open here (an untar's: its first write and its `fchown`
    /// both come while it is open) on a volume no other host writes, "none" comes from the
    /// node when it knows the file has none ([`NodeData::no_caps_at`]: since the file was
    /// created, or last looked, no `security.capability` was set anywhere in the volume).
    ///
    /// [`NodeData::no_caps_at`]: super::NodeData::no_caps_at
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name == XATTR_CAPS && !self.shared {
            if let Some(node) = self.node_if_open(ino) {
                // The node's answer first, then the count: a `security.capability` set
                // in between moved the count already, or its setxattr has not returned.
                let known = node.read().no_caps_at;
                if known.is_some() && known == Some(self.caps_count()) {
                    return Err(FsError::NoXattr);
                }
            }
        }
        if !self.exists(ino)? {
            return Err(FsError::NotFound);
        }
        if check_xattr_name(name).is_err() {
            return Err(FsError::NoXattr);
        }
        self.meta.get_xattr(ino, name)?.ok_or(FsError::NoXattr)
    }

    /// The names, each followed by a NUL byte, as `listxattr` returns them.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.getattr(ino)?;
        let mut out = Vec::new();
        for name in self.meta.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.retrying(|| self.removexattr_once(ino, name))
    }

    fn removexattr_once(&self, ino: Ino, name: &[u8]) -> Result<()> {
        check_xattr_name(name).map_err(|_| FsError::NoXattr)?;
        let mut txn = self.txn(&[ino]);
        if self.meta.get_xattr(ino, name)?.is_none() {
            return Err(FsError::NoXattr);
        }
        txn.inode_mut(ino)?.ctime = Timespec::now();
        txn.push(Mutation::DelXattr { ino, name: name.to_vec() });
        txn.commit(false)
    }
}
