//! A shared volume's last answers about directories and names (issue 15), kept a moment so
//! that a namespace change does not ask the database again.
//!
//! Before the kernel creates, renames or unlinks a name it asks for the directory's
//! attributes (its permission check, after its own last change in the directory dropped
//! them) and looks the name up; the change's transaction then wanted both again
//! (`Txn::read_ahead`): two of a create's six round trips asked what the two before had
//! just answered. Kept here: directory records this host read or committed, and names it
//! looked up or committed, each for [`RECENT_FOR`]. A change *takes* what it uses (the next
//! change asks the database, or a newer answer), so a change that runs again after a
//! conflict reads afresh.
//!
//! Safe at any age for a change: it expects what it read unchanged at commit inside its
//! transaction, so a stale answer fails the commit and the change runs again. The age bound
//! and the forgetting (another host's change notification, every batch of this host that
//! writes the key) only keep such retries rare. The kernel's own questions (`getattr`) are
//! answered from here only for a directory record this host committed itself less than
//! [`RECENT_ATTR_FOR`] ago and no other host's notification about it came since: what the
//! kernel would have kept for its whole attribute timeout had its own create not dropped it.

use crate::meta::Mutation;
use crate::types::{Dentry, Ino, Inode, Kind};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an answer is kept for the next namespace change.
pub const RECENT_FOR: Duration = Duration::from_millis(500);

/// How long a directory record this host committed answers the kernel's `getattr`.
pub const RECENT_ATTR_FOR: Duration = Duration::from_millis(100);

/// At most this many answers of each kind are kept (the oldest go first when full).
const RECENT_MAX: usize = 4096;

#[derive(Default)]
pub(super) struct RecentReads {
    inner: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    /// A directory's record, when it was read or committed, and whether this host committed it.
    dirs: HashMap<Ino, (Inode, Instant, bool)>,
    names: HashMap<(Ino, Vec<u8>), (Option<Dentry>, Instant)>,
}

impl Recent {
    fn make_room(&mut self, now: Instant) {
        if self.dirs.len() >= RECENT_MAX {
            self.dirs.retain(|_, (_, at, _)| now.duration_since(*at) < RECENT_FOR);
            if self.dirs.len() >= RECENT_MAX {
                self.dirs.clear();
            }
        }
        if self.names.len() >= RECENT_MAX {
            self.names.retain(|_, (_, at)| now.duration_since(*at) < RECENT_FOR);
            if self.names.len() >= RECENT_MAX {
                self.names.clear();
            }
        }
    }
}

impl RecentReads {
    /// A record read from the store (kept when it is a directory's).
    pub fn read_inode(&self, inode: &Inode) {
        if inode.kind == Kind::Dir {
            let now = Instant::now();
            let mut r = self.inner.lock();
            r.make_room(now);
            r.dirs.insert(inode.ino, (inode.clone(), now, false));
        }
    }

    /// A name looked up in the store: its entry, or none.
    pub fn read_name(&self, parent: Ino, name: &[u8], found: Option<Dentry>) {
        let now = Instant::now();
        let mut r = self.inner.lock();
        r.make_room(now);
        r.names.insert((parent, name.to_vec()), (found, now));
    }

    /// A batch of this host was committed: its directory records and names are the stored
    /// ones now; any other record or name it wrote, or wrote in a way not known here, is
    /// forgotten.
    pub fn committed(&self, batch: &[Mutation]) {
        let now = Instant::now();
        let mut r = self.inner.lock();
        r.make_room(now);
        for m in batch {
            match m {
                Mutation::PutInode(i) | Mutation::InsertInode(i) if i.kind == Kind::Dir => {
                    r.dirs.insert(i.ino, (i.clone(), now, true));
                }
                Mutation::PutInode(i) | Mutation::InsertInode(i) | Mutation::MergeInodeData(i) => {
                    r.dirs.remove(&i.ino);
                }
                Mutation::MergeInodeFields { after, .. } => {
                    r.dirs.remove(&after.ino);
                }
                Mutation::DelInode(ino) => {
                    r.dirs.remove(ino);
                }
                Mutation::PutDentry { parent, name, dentry } => {
                    r.names.insert((*parent, name.clone()), (Some(*dentry), now));
                }
                Mutation::DelDentry { parent, name, .. } => {
                    r.names.insert((*parent, name.clone()), (None, now));
                }
                Mutation::Restore { .. } | Mutation::Raw { .. } => {
                    r.dirs.clear();
                    r.names.clear();
                }
                _ => {}
            }
        }
    }

    /// Another host changed the record of `ino`.
    pub fn forget_inode(&self, ino: Ino) {
        self.inner.lock().dirs.remove(&ino);
    }

    /// Another host changed the entry `name` of `parent`.
    pub fn forget_name(&self, parent: Ino, name: &[u8]) {
        self.inner.lock().names.remove(&(parent, name.to_vec()));
    }

    /// Forget everything (a change of many records at once: a merge, a rollback).
    pub fn clear(&self) {
        let mut r = self.inner.lock();
        r.dirs.clear();
        r.names.clear();
    }

    /// The directory record of `ino` for a namespace change, taken.
    pub fn take_dir(&self, ino: Ino) -> Option<Inode> {
        let mut r = self.inner.lock();
        let (inode, at, _) = r.dirs.remove(&ino)?;
        (at.elapsed() < RECENT_FOR).then_some(inode)
    }

    /// The entry `name` of `parent` (`Some(None)`: no such name) for a namespace change, taken.
    pub fn take_name(&self, parent: Ino, name: &[u8]) -> Option<Option<Dentry>> {
        let mut r = self.inner.lock();
        let (found, at) = r.names.remove(&(parent, name.to_vec()))?;
        (at.elapsed() < RECENT_FOR).then_some(found)
    }

    /// The kernel's `getattr` of directory `ino`: the record this host committed last, if
    /// within [`RECENT_ATTR_FOR`] (kept for the next change).
    pub fn dir_attr(&self, ino: Ino) -> Option<Inode> {
        let r = self.inner.lock();
        let (inode, at, ours) = r.dirs.get(&ino)?;
        (*ours && at.elapsed() < RECENT_ATTR_FOR).then(|| inode.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(ino: Ino) -> Inode {
        Inode::new(ino, Kind::Dir, 0o755, 0, 0)
    }

    #[test]
    fn an_answer_is_taken_once_and_only_a_committed_directory_answers_getattr() {
        let r = RecentReads::default();
        r.read_inode(&dir(5));
        r.read_inode(&Inode::new(6, Kind::File, 0o644, 0, 0));
        r.read_name(5, b"a", None);
        assert!(r.dir_attr(5).is_none(), "a record read, not committed here, does not answer the kernel");
        assert_eq!(r.take_name(5, b"a"), Some(None));
        assert_eq!(r.take_name(5, b"a"), None, "taken once");
        assert!(r.take_dir(6).is_none(), "files are not kept");
        assert_eq!(r.take_dir(5).map(|i| i.ino), Some(5));
        assert!(r.take_dir(5).is_none());

        let mut d = dir(7);
        d.nlink = 3;
        let entry = Dentry { ino: 9, kind: Kind::File, cookie: 1 };
        r.committed(&[
            Mutation::PutInode(d),
            Mutation::PutDentry { parent: 7, name: b"b".to_vec(), dentry: entry },
            Mutation::DelDentry { parent: 7, name: b"c".to_vec(), cookie: 2 },
        ]);
        assert_eq!(r.dir_attr(7).map(|i| i.nlink), Some(3));
        assert_eq!(r.dir_attr(7).map(|i| i.nlink), Some(3), "getattr keeps it for the next change");
        assert_eq!(r.take_name(7, b"b"), Some(Some(entry)));
        assert_eq!(r.take_name(7, b"c"), Some(None));
        r.forget_inode(7);
        assert!(r.dir_attr(7).is_none(), "another host's notification");

        r.committed(&[Mutation::PutInode(dir(8))]);
        r.committed(&[Mutation::MergeInodeData(dir(8))]);
        assert!(r.take_dir(8).is_none(), "a write not known here forgets the record");
    }

    #[test]
    fn old_answers_are_not_used_and_the_store_is_bounded() {
        let r = RecentReads::default();
        {
            let mut inner = r.inner.lock();
            let long_ago = Instant::now() - RECENT_FOR - Duration::from_millis(1);
            inner.dirs.insert(3, (dir(3), long_ago, true));
            inner.names.insert((3, b"x".to_vec()), (None, long_ago));
        }
        assert!(r.dir_attr(3).is_none());
        assert!(r.take_name(3, b"x").is_none());
        assert!(r.take_dir(3).is_none());
        for i in 0..(RECENT_MAX as u64 * 2) {
            r.read_inode(&dir(100 + i));
            r.read_name(1, &i.to_be_bytes(), None);
        }
        let inner = r.inner.lock();
        assert!(inner.dirs.len() <= RECENT_MAX && inner.names.len() <= RECENT_MAX);
    }
}
