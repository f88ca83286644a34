//! [`LocalStore`]: an object store in a local directory (`file:///path`), the embedded default.
//!
//! # Layout
//!
//! ```text
//! ROOT/<key>                         one file per object; key segments are directories
//! ROOT/.hybridfs-store/lock          flock'ed around every commit (see below)
//! ROOT/.hybridfs-store/tmp-PID-SEQ   an object being written
//! ```
//!
//! # Put
//!
//! The data goes to a temporary file, which is fsync'ed; then the commit step makes it the
//! object, atomically, and the object's directory is fsync'ed. A reader sees the old object or
//! the new one, never a part, and an acknowledged put survives a power cut.
//!
//! The commit step runs under the store lock: a process-wide mutex plus an `flock` on the lock
//! file, so puts and deletes are linearizable across threads *and* processes that share the
//! directory (two clones on one host). Under it, `IfAbsent` hard-links the temporary file to the
//! key (`EEXIST` = lost), `IfMatch` compares the current content's ETag, and a plain put renames.
//! Only the commit is serialised: writing and syncing the data happen outside the lock.
//!
//! The ETag is [`content_etag`] of the content, so `head` and `IfMatch` read the object to
//! compute it (heads are tiny; `head` of big objects costs a hash, ~3 GB/s).
//!
//! # Limits
//!
//! Directories are never removed (a delete racing a put into the same directory would otherwise
//! need the lock for the whole put). A key cannot be both an object and a directory of other
//! keys (`a` and `a/b`): the put that would need it fails. Temporary files left by a crash are
//! removed by the next [`LocalStore::open`] once they are an hour old.

use crate::{check_key, check_prefix, content_etag, Cond, ObjectMeta, ObjectStore, StoreError, RESERVED};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Temporary files older than this are leftovers of a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// An [`ObjectStore`] in a local directory.
pub struct LocalStore {
    root: PathBuf,
    /// The lock file; the mutex orders this process's threads, the flock other processes.
    lock: Mutex<File>,
    tmp_seq: AtomicU64,
}

impl LocalStore {
    /// Open (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = std::path::absolute(root.into()).map_err(|e| io_err("resolve", Path::new("."), e))?;
        let scratch = root.join(RESERVED);
        fs::create_dir_all(&scratch).map_err(|e| io_err("create", &scratch, e))?;
        let lock_path = scratch.join("lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path);
        let lock = lock.map_err(|e| io_err("open", &lock_path, e))?;
        remove_stale_tmp(&scratch);
        Ok(LocalStore { root, lock: Mutex::new(lock), tmp_seq: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Write `data` to a new temporary file and make it durable.
    fn write_tmp(&self, data: &[u8]) -> Result<PathBuf, StoreError> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(RESERVED).join(format!("tmp-{}-{seq}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_data()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("write", &tmp, e)
        })?;
        Ok(tmp)
    }

    /// Make `tmp` the object at `path` if `cond` holds, under the store lock.
    fn commit(&self, key: &str, tmp: &Path, path: &Path, cond: &Cond) -> Result<(), StoreError> {
        let _guard = self.lock()?;
        match cond {
            Cond::None => fs::rename(tmp, path).map_err(|e| put_err(key, path, e)),
            Cond::IfAbsent => match fs::hard_link(tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(StoreError::precondition(key)),
                Err(e) => Err(put_err(key, path, e)),
            },
            Cond::IfMatch(etag) => {
                if file_etag(path)?.as_deref() != Some(etag.as_str()) {
                    return Err(StoreError::precondition(key));
                }
                fs::rename(tmp, path).map_err(|e| put_err(key, path, e))
            }
        }
    }

    fn lock(&self) -> Result<StoreLock<'_>, StoreError> {
        let file = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: flock on a descriptor this store owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("lock", &self.root.join(RESERVED).join("lock"), io::Error::last_os_error()));
        }
        Ok(StoreLock { file })
    }

    /// Create the missing directories of `dir` (below the root), syncing each new one's parent.
    fn make_dirs(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().unwrap_or(&self.root);
        if parent != self.root {
            self.make_dirs(key, parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(parent),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(put_err(key, dir, e)),
        }
    }

    /// Keys of every file under `dir`, relative to the root.
    fn walk(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(io_err("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err("list", &dir, e))?;
                let kind = entry.file_type().map_err(|e| io_err("stat", &entry.path(), e))?;
                if kind.is_dir() && entry.path() != self.root.join(RESERVED) {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    keys.extend(self.key_of(&entry.path()));
                }
            }
        }
        Ok(keys)
    }

    fn key_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?.to_str()?;
        check_key(rel).ok().map(|()| rel.to_string())
    }
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(key, &dir)?;
        let tmp = self.write_tmp(data)?;
        let committed = self.commit(key, &tmp, &path, &cond);
        // After a rename the temporary name is gone; after a link or a failure it is still there.
        let _ = fs::remove_file(&tmp);
        committed?;
        sync_dir(&dir)?;
        Ok(content_etag(data))
    }

    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        let path = self.path(key)?;
        let data = fs::read(&path).map_err(|e| read_err(key, &path, e))?;
        let etag = content_etag(&data);
        Ok((data, etag))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let file = File::open(&path).map_err(|e| read_err(key, &path, e))?;
        let size = file.metadata().map_err(|e| io_err("stat", &path, e))?.len();
        let have = size.saturating_sub(offset).min(len);
        if have < len {
            return Err(StoreError::short_read(key, offset, len, have));
        }
        // `len` is at most the file's size here, so this allocation is bounded by the object.
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => StoreError::short_read(key, offset, len, 0),
            _ => io_err("read", &path, e),
        })?;
        Ok(buf)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        let Some(etag) = file_etag(&path)? else { return Ok(None) };
        let len = fs::metadata(&path).map_err(|e| io_err("stat", &path, e))?.len();
        Ok(Some(ObjectMeta { len, etag }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        // Walk only the directory the prefix names completely; filter the rest by string.
        let dir = prefix.rsplit_once('/').map_or(self.root.clone(), |(d, _)| self.root.join(d));
        let mut keys: Vec<String> = self.walk(&dir)?.into_iter().filter(|k| k.starts_with(prefix)).collect();
        keys.sort_unstable();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let _guard = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(()),
            Err(e) => Err(io_err("delete", &path, e)),
        }
    }
}

/// The store lock held; released (flock, then mutex) on drop.
struct StoreLock<'a> {
    file: std::sync::MutexGuard<'a, File>,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `LocalStore::lock`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The ETag of the file at `path`, or `None` if there is no such file.
fn file_etag(path: &Path) -> Result<Option<String>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(io_err("open", path, e)),
    };
    if file.metadata().map_err(|e| io_err("stat", path, e))?.is_dir() {
        return Ok(None);
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| io_err("read", path, e))?;
    Ok(Some(content_etag(&data)))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("sync", dir, e))
}

fn remove_stale_tmp(scratch: &Path) {
    let Ok(entries) = fs::read_dir(scratch) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if name.to_string_lossy().starts_with("tmp-") && old.is_some_and(|age| age > STALE_TMP) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether an open/read error means "no such object" (missing, or a directory of other keys).
fn absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory)
}

fn read_err(key: &str, path: &Path, e: io::Error) -> StoreError {
    if absent(&e) {
        StoreError::not_found(key)
    } else {
        io_err("read", path, e)
    }
}

fn put_err(key: &str, path: &Path, e: io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::IsADirectory
        | ErrorKind::DirectoryNotEmpty
        | ErrorKind::NotADirectory
        | ErrorKind::AlreadyExists => StoreError::Invalid(format!(
            "cannot put {key} in a local store: a key and a directory of other keys would share a name"
        )),
        _ => io_err("write", path, e),
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Other(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::LocalStore;
    use crate::{Cond, ObjectStore};

    #[test]
    fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance(&LocalStore::open(dir.path()).unwrap());
    }

    #[test]
    fn no_temporary_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.put("a/b", b"1", Cond::None).unwrap();
        assert!(store.put("a/b", b"2", Cond::IfAbsent).is_err());
        assert!(store.put("a/b", b"3", Cond::IfMatch("stale".into())).is_err());
        let scratch = std::fs::read_dir(dir.path().join(crate::RESERVED)).unwrap();
        let names: Vec<String> = scratch.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["lock".to_string()]);
        assert_eq!(store.list("").unwrap(), vec!["a/b".to_string()], "the scratch directory is not listed");
    }

    #[test]
    fn a_key_cannot_also_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.put("a/b", b"1", Cond::None).unwrap();
        let e = store.put("a", b"2", Cond::None).unwrap_err();
        assert!(e.to_string().contains("share a name"), "{e}");
        let e = store.put("a/b/c", b"3", Cond::None).unwrap_err();
        assert!(e.to_string().contains("share a name"), "{e}");
        assert!(store.get("a").is_err_and(|e| matches!(e, crate::StoreError::NotFound { .. })));
        assert_eq!(store.head("a").unwrap(), None);
    }

    #[test]
    fn two_handles_on_one_directory_see_each_others_heads() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (LocalStore::open(dir.path()).unwrap(), LocalStore::open(dir.path()).unwrap());
        let etag = one.put("heads/main", b"layer-1", Cond::IfAbsent).unwrap();
        assert!(two.put("heads/main", b"layer-x", Cond::IfAbsent).is_err());
        two.put("heads/main", b"layer-2", Cond::IfMatch(etag.clone())).unwrap();
        assert!(one.put("heads/main", b"layer-3", Cond::IfMatch(etag)).is_err(), "the head moved");
    }
}
