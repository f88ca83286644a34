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
        self.send_error(Errno::from_i32(e.errno()));
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
