//! The kernel's caches of a mount, for changes made behind its back (a merge applied by the
//! mount process): fuser's notifier, registered per volume when the session starts, behind
//! core's [`KernelCache`] seam (core holds no fuser type).

use fuser::{INodeNo, Notifier};
use hybridfs_core::merge::KernelCache;
use hybridfs_core::types::Ino;
use hybridfs_core::Volume;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

/// The notifier of one mount.
struct Notifications(Notifier);

impl KernelCache for Notifications {
    fn invalidate_entry(&self, parent: Ino, name: &[u8]) {
        // ENOENT (nothing cached) is not an error; fuser already maps it to Ok.
        if let Err(e) = self.0.inval_entry(INodeNo(parent), OsStr::from_bytes(name)) {
            tracing::warn!("invalidate the kernel's entry {} in directory {parent}: {e}", String::from_utf8_lossy(name));
        }
    }

    fn invalidate_inode(&self, ino: Ino) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0) {
            tracing::warn!("invalidate the kernel's inode {ino}: {e}");
        }
    }
}

/// Mounts of this process, by volume.
type Mounted = Vec<(usize, Arc<Notifications>)>;

fn mounted() -> &'static Mutex<Mounted> {
    static MOUNTED: std::sync::OnceLock<Mutex<Mounted>> = std::sync::OnceLock::new();
    MOUNTED.get_or_init(Default::default)
}

fn key(vol: &Volume) -> usize {
    vol as *const Volume as usize
}

/// The session serving `vol` starts: remember its notifier.
pub(crate) fn register(vol: &Arc<Volume>, notifier: Notifier) {
    let mut all = mounted().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(k, _)| *k != key(vol));
    all.push((key(vol), Arc::new(Notifications(notifier))));
}

/// The session ended.
pub(crate) fn unregister(vol: &Volume) {
    mounted().lock().unwrap_or_else(|p| p.into_inner()).retain(|(k, _)| *k != key(vol));
}

/// The kernel caches of the mount serving `vol` in this process, if it is mounted here.
pub fn of(vol: &Volume) -> Option<Arc<dyn KernelCache>> {
    let all = mounted().lock().unwrap_or_else(|p| p.into_inner());
    all.iter().find(|(k, _)| *k == key(vol)).map(|(_, n)| n.clone() as Arc<dyn KernelCache>)
}
