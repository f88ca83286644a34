//! The core's one error type and its errno table.
//!
//! Every layer below core (metadata store, block store, staging files) converts its failures
//! into [`FsError`]; the FUSE adapter turns an `FsError` into an errno with [`FsError::errno`]
//! and nothing else. That function is the project's one errno table.

use crate::types::BlockId;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no space left on the device holding the volume")]
    NoSpace,
    #[error("no such attribute")]
    NoXattr,
    #[error("result does not fit in the caller's buffer")]
    Range,
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("file too large")]
    TooBig,
    #[error("read-only file system (a snapshot)")]
    ReadOnly,
    #[error("block {id} is corrupt: {why}")]
    CorruptBlock { id: BlockId, why: String },
    /// The metadata engine failed or refused (fatal for the operation).
    #[error("metadata store: {0}")]
    Meta(String),
    /// A metadata transaction lost a race with another one (a serialization failure on a
    /// shared engine); transient: [`crate::kv::Kv::transact`] retries it.
    #[error("metadata store: transaction conflict: {0}")]
    MetaConflict(String),
    /// The metadata engine cannot be reached now (a database restarting); transient.
    #[error("metadata store unavailable: {0}")]
    MetaUnavailable(String),
    /// A shared volume: a record a namespace change read (a directory entry, an inode) was
    /// changed by another host before the change committed ([`crate::meta::Mutation::ExpectInode`]);
    /// the volume runs the whole operation again from fresh reads.
    #[error("metadata store: changed by another host meanwhile: {0}")]
    MetaStale(String),
    /// A request that names something wrong (an unknown or taken snapshot name, bad characters).
    #[error("{0}")]
    BadInput(String),
    /// A request refused because of the volume's state (a held snapshot, open files).
    #[error("{0}")]
    Refused(String),
    /// A read that may not wait ([`crate::blockstore::Waiting::Never`]) needs a block from a
    /// slower store: the caller retries it where waiting is fine. Never shown to a user.
    #[error("the read needs a block from the object store")]
    WouldBlock,
    /// A read gave up waiting for the object store because its caller was interrupted by a
    /// signal or is gone ([`crate::blockstore::Waiting::Interruptible`]).
    #[error("interrupted while waiting for the object store")]
    Interrupted,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl FsError {
    /// The errno a caller of the file system sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NoXattr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::TooBig => libc::EFBIG,
            FsError::ReadOnly => libc::EROFS,
            FsError::CorruptBlock { .. } => libc::EIO,
            FsError::Meta(_) | FsError::MetaConflict(_) | FsError::MetaUnavailable(_) | FsError::MetaStale(_) => libc::EIO,
            FsError::BadInput(_) => libc::EINVAL,
            FsError::Refused(_) => libc::EBUSY,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Interrupted => libc::EINTR,
            FsError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => libc::ENOSPC,
                Some(code) => code,
                None => libc::EIO,
            },
        }
    }

    /// Wrap an I/O error with what was being done ("read staging file of inode 7").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FsError::Io { context: context.into(), source }
    }

    /// True for errors that are the caller's doing and need no log line.
    pub fn is_expected(&self) -> bool {
        !matches!(
            self,
            FsError::CorruptBlock { .. }
                | FsError::Meta(_)
                | FsError::MetaConflict(_)
                | FsError::MetaUnavailable(_)
                | FsError::MetaStale(_)
                | FsError::Io { .. }
        )
    }

    /// True for metadata-engine errors that may go away when the operation is tried again.
    pub fn is_transient(&self) -> bool {
        matches!(self, FsError::MetaConflict(_) | FsError::MetaUnavailable(_))
    }
}
