//! The one place where core errors become FUSE error replies, logged once.

use fuser::{Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr};
use hybridfs_core::FsError;

pub(crate) trait ReplyError: Sized {
    fn send_error(self, errno: Errno);

    /// Log unexpected failures (I/O, metadata; corrupt blocks are logged by the core with
    /// their id) and reply with the errno of the one table, `FsError::errno`.
    fn fail(self, op: &str, e: FsError) {
        if !e.is_expected() && !matches!(e, FsError::CorruptBlock { .. }) {
            tracing::error!("{op}: {e}");
        }
        let errno = Errno::from_i32(e.errno());
        FAILURE.set(Some(errno_name(e.errno())));
        self.send_error(errno);
    }
}

thread_local! {
    /// The errno of the last failed reply on this thread, for the request's span.
    static FAILURE: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// The failure [`ReplyError::fail`] noted on this thread since the last call (and forgets it).
pub(crate) fn take_failure() -> Option<&'static str> {
    FAILURE.take()
}

/// `ENOENT`, `EROFS`, ...: the name of the errnos a reply carries (else `errno`).
fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EXDEV => "EXDEV",
        libc::EFBIG => "EFBIG",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "errno",
    }
}

macro_rules! reply_error {
    ($($t:ty),*) => {$(
        impl ReplyError for $t {
            fn send_error(self, errno: Errno) {
                self.error(errno)
            }
        }
    )*};
}

reply_error!(ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr);

pub(crate) trait ReplyResult {
    fn result(self, op: &str, r: Result<(), FsError>);
}

impl ReplyResult for ReplyEmpty {
    fn result(self, op: &str, r: Result<(), FsError>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.fail(op, e),
        }
    }
}
