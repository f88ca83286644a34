//! Reads on a clone while the store does not answer (issue 9): a read waits at most the read
//! timeout, then fails with EIO (never wrong bytes: invariant 5); the fetch goes on and the
//! block is there for a later read once the store answers again. A read that may not wait
//! (`Waiting::Never`, the FUSE threads) or whose caller is interrupted stops at once, and the
//! fetch goes on the same way.

mod common;

use common::{noise, read, volume, write_file};
use hybridfs_blocks::FileBlockStore;
use hybridfs_cloud::{Cond, MemStore, ObjectMeta, ObjectStore, StoreError};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::blockstore::{with_waiting, Waiting};
use hybridfs_core::{FsError, Volume, VolumeOptions};
use hybridfs_sync::lazy::LazyStore;
use hybridfs_sync::{push, Remote};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store whose reads hang (at most 60 s, so a test never hangs for good) while `blackhole`.
struct Blackhole {
    inner: MemStore,
    blackhole: AtomicBool,
}

impl Blackhole {
    fn wait(&self) {
        let started = Instant::now();
        while self.blackhole.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ObjectStore for Blackhole {
    fn describe(&self) -> String {
        "mem://blackhole".into()
    }
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        self.inner.put(key, data, cond)
    }
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.wait();
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.wait();
        self.inner.get_range(key, offset, len)
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
}

/// A volume pushed to a [`Blackhole`] store holding `f` (300,000 bytes of noise), and a clone
/// of it whose block store fetches from that store with the given read timeout.
struct Clone {
    store: Arc<Blackhole>,
    vol: Arc<Volume>,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn clone_of_one_file(read_timeout: Duration) -> Clone {
    let origin = volume();
    let data = noise(7, 300_000);
    write_file(&origin.vol, "f", 0, &data);
    let store = Arc::new(Blackhole { inner: MemStore::new(), blackhole: AtomicBool::new(false) });
    push(&origin.vol, &Remote::new(store.clone(), "vol"), "main", &|_| {}).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::memory());
    hybridfs_sync::clone::import(&meta, &Remote::new(store.clone(), "vol"), "main", "node").unwrap();
    let own = FileBlockStore::open(dir.path().join("blocks")).unwrap();
    let cache = FileBlockStore::open(dir.path().join("cache")).unwrap();
    let lazy = Arc::new(LazyStore::new(own, cache, Remote::new(store.clone(), "vol"), meta.clone(), None).unwrap());
    lazy.set_read_timeout(read_timeout);
    let opts = VolumeOptions { staging_dir: dir.path().join("staging"), ..Default::default() };
    let vol = Volume::open(meta, lazy, opts).unwrap();
    Clone { store, vol, data, _dir: dir }
}

/// Reads `f` until it succeeds (at most 100 tries, 50 ms apart).
fn read_once_landed(vol: &Volume) -> Option<Vec<u8>> {
    for _ in 0..100 {
        match read(vol, "f") {
            Ok(b) => return Some(b),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    None
}

#[test]
fn a_read_waits_for_an_unanswering_store_at_most_the_read_timeout() {
    let Clone { store, vol, data, .. } = clone_of_one_file(Duration::from_millis(500));
    store.blackhole.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = read(&vol, "f").unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.errno(), 5, "EIO: {err}");
    assert!(err.to_string().contains("did not answer"), "the error says why: {err}");
    assert!(took < Duration::from_secs(5), "the read returned after {took:?}, its timeout is 500 ms");

    // The store answers again: the fetch that went on lands, and the read gets the bytes.
    store.blackhole.store(false, Ordering::SeqCst);
    assert_eq!(read_once_landed(&vol).as_deref(), Some(&data[..]), "invariant 5: the right bytes once the store answers");
}

fn always_interrupted(_: u64) -> bool {
    true
}

#[test]
fn a_read_that_may_not_wait_or_is_interrupted_stops_at_once_and_the_fetch_goes_on() {
    let Clone { store, vol, data, .. } = clone_of_one_file(Duration::from_secs(120));
    store.blackhole.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = with_waiting(Waiting::Never, || read(&vol, "f")).unwrap_err();
    assert!(matches!(err, FsError::WouldBlock), "a read that may not wait: {err}");
    let interruptible = Waiting::Interruptible { probe: always_interrupted, arg: 0 };
    let err = with_waiting(interruptible, || read(&vol, "f")).unwrap_err();
    assert!(matches!(err, FsError::Interrupted), "an interrupted read: {err}");
    assert_eq!(err.errno(), 4, "EINTR");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "both returned long before the read timeout (120 s): {took:?}");

    // Neither cancelled the fetch: it lands once the store answers, verified (invariant 5).
    store.blackhole.store(false, Ordering::SeqCst);
    let landed = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        with_waiting(Waiting::Never, || read(&vol, "f")).is_ok()
    });
    assert!(landed, "the fetch went on and its block is in the cache");
    assert_eq!(with_waiting(Waiting::Never, || read(&vol, "f")).ok().as_deref(), Some(&data[..]), "invariant 5");
}
