//! A push's uploaders are named workers of the volume's registry (issue 11): listed with what
//! they send while the push runs, gone after it; the registry's stop ends a push at once and
//! leaves the old head valid (invariant 4: no head names a block that is not written).

mod common;

use common::{noise, volume, write_file};
use hybridfs_cloud::{CancellationToken, Cond, MemStore, ObjectMeta, ObjectStore, Retry, StoreError};
use hybridfs_sync::{push, Remote, SyncError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store whose puts wait (at most 60 s, so a test never hangs for good) while closed.
/// Clones share the store and the gate.
#[derive(Clone)]
struct Gate(Arc<(MemStore, AtomicBool)>);

impl Gate {
    fn closed() -> Gate {
        Gate(Arc::new((MemStore::new(), AtomicBool::new(true))))
    }
    fn open(&self) {
        self.0 .1.store(false, Ordering::SeqCst);
    }
    fn keys(&self) -> Vec<String> {
        self.0 .0.list("").unwrap()
    }
}

impl ObjectStore for Gate {
    fn describe(&self) -> String {
        "mem://gate".into()
    }
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        let started = Instant::now();
        while self.0 .1.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.0 .0.put(key, data, cond)
    }
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.0 .0.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.0 .0.get_range(key, offset, len)
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.0 .0.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.0 .0.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0 .0.delete(key)
    }
}

fn uploaders(vol: &hybridfs_core::Volume) -> Vec<hybridfs_core::worker::WorkerStatus> {
    vol.workers().status().into_iter().filter(|w| w.name.starts_with("upload-")).collect()
}

/// Wait (bounded) until an uploader says it sends a block.
fn wait_for_busy_uploader(vol: &hybridfs_core::Volume) -> Option<String> {
    for _ in 0..3000 {
        if let Some(busy) = uploaders(vol).into_iter().find_map(|w| w.busy) {
            return Some(busy);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_pushs_uploaders_are_listed_while_they_send_and_gone_after() {
    let f = volume();
    write_file(&f.vol, "f", 0, &noise(1, 3 << 20));
    let gate = Gate::closed();
    let remote = Remote::new(Arc::new(gate.clone()), "vol");
    assert!(uploaders(&f.vol).is_empty(), "no push, no uploader");
    std::thread::scope(|s| {
        let pushing = s.spawn(|| push(&f.vol, &remote, "main", &|_| {}));
        let busy = wait_for_busy_uploader(&f.vol);
        gate.open();
        pushing.join().unwrap().unwrap();
        assert!(busy.as_deref().is_some_and(|b| b.starts_with("upload ")), "no uploader said what it sends: {busy:?}");
    });
    assert!(uploaders(&f.vol).is_empty(), "uploaders outlived their push: {:?}", uploaders(&f.vol));
}

#[test]
fn a_stop_ends_a_push_and_leaves_no_head() {
    let f = volume();
    write_file(&f.vol, "f", 0, &noise(2, 3 << 20));
    let gate = Gate::closed();
    // As the node opens a mount's store: cancelled when the volume's workers stop.
    let cancel = CancellationToken::new();
    let on_stop = cancel.clone();
    f.vol.workers().on_stop(move || on_stop.cancel());
    let store = Arc::new(Retry::new(gate.clone()).with_cancel(cancel));
    let remote = Remote::new(store, "vol");
    let result = std::thread::scope(|s| {
        let pushing = s.spawn(|| push(&f.vol, &remote, "main", &|_| {}));
        assert!(wait_for_busy_uploader(&f.vol).is_some(), "the push never started uploading");
        f.vol.workers().stop();
        gate.open();
        pushing.join().unwrap()
    });
    assert!(matches!(result, Err(SyncError::Store(StoreError::Cancelled))), "{result:?}");
    assert!(gate.keys().iter().all(|k| !k.contains("head")), "a stopped push moved the head");
}
