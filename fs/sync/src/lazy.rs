//! The block store of a clone: local block files in front of the object store.
//!
//! Two local tiers:
//! * **own** — the volume's `blocks/` directory: blocks sealed on this node. They are the
//!   volume's (the collector deletes them by reference count) and never evicted.
//! * **cache** — fetched blocks, in a directory shared by every clone of the same remote volume
//!   on this node (`HOME/cache/…`), so a node that clones again tomorrow fetches only what
//!   changed; it survives remounts and re-clones. Content addressing makes sharing safe: a
//!   cached block is the same bytes for every clone, verified when read.
//!
//! A block read for the first time is fetched from the store (alone, or as a byte range of its
//! pack: the `pushed` family of the metadata store says where), verified against its id before
//! anything uses it (invariant 5), and kept in the cache. With a cache size, cached blocks are
//! evicted oldest-used first when the cache exceeds it (invariant 7: by at most the blocks being
//! fetched).

use crate::Remote;
use hybridfs_blocks::FileBlockStore;
use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::error::{FsError, Result};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::BlockId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Background fetchers for read-ahead and prefetch.
const FETCHERS: usize = 8;

pub struct LazyStore {
    inner: Arc<Inner>,
    /// Blocks to fetch in the background; full queue: the hint is dropped.
    ahead: crossbeam_channel::Sender<BlockId>,
}

impl std::ops::Deref for LazyStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub struct Inner {
    own: FileBlockStore,
    local: FileBlockStore,
    remote: Remote,
    meta: Arc<MetaStore>,
    cap: Option<u64>,
    /// Bytes of cached block files (counted at open, kept up to date).
    used: AtomicU64,
    /// Blocks fetched or read, oldest use first (entries may be stale; `tick` says).
    lru: Mutex<(VecDeque<(BlockId, u64)>, HashMap<BlockId, u64>, u64)>,
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
    /// Blocks queued or being fetched in the background.
    queued: Mutex<std::collections::HashSet<BlockId>>,
    /// Blocks being fetched now, by anyone: a second reader waits instead of fetching again.
    inflight: Mutex<std::collections::HashSet<BlockId>>,
    landed: std::sync::Condvar,
}

impl LazyStore {
    /// `own`: the volume's block directory; `cache`: the shared cache of fetched blocks.
    pub fn new(own: FileBlockStore, cache: FileBlockStore, remote: Remote, meta: Arc<MetaStore>, cap: Option<u64>) -> Result<Self> {
        let local = cache;
        let mut used = 0;
        let mut ids = Vec::new();
        local.for_each(&mut |id| ids.push(id))?;
        for id in &ids {
            used += local.stored_len(id)?.unwrap_or(0);
        }
        let inner = Arc::new(Inner {
            own,
            local,
            remote,
            meta,
            cap,
            used: AtomicU64::new(used),
            lru: Mutex::new((VecDeque::new(), HashMap::new(), 0)),
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            queued: Mutex::new(Default::default()),
            inflight: Mutex::new(Default::default()),
            landed: std::sync::Condvar::new(),
        });
        for id in ids {
            inner.touch(&id);
        }
        let (ahead, rx) = crossbeam_channel::bounded::<BlockId>(256);
        for n in 0..FETCHERS {
            let (inner, rx) = (Arc::downgrade(&inner), rx.clone());
            std::thread::Builder::new()
                .name(format!("fetch-{n}"))
                .spawn(move || {
                    for id in rx {
                        let Some(inner) = inner.upgrade() else { return };
                        if let Err(e) = inner.ensure(&id) {
                            tracing::warn!("read-ahead of block {id}: {e}");
                        }
                        inner.queued.lock().expect("queued lock").remove(&id);
                    }
                })
                .map_err(|e| FsError::io("start block fetchers", e))?;
        }
        Ok(LazyStore { inner, ahead })
    }
}

impl Inner {
    fn touch(&self, id: &BlockId) {
        let mut g = self.lru.lock().expect("lru lock");
        let (order, latest, tick) = &mut *g;
        *tick += 1;
        latest.insert(*id, *tick);
        order.push_back((*id, *tick));
        // Bound the queue: drop stale entries once it is far longer than the live set.
        if order.len() > 4 * latest.len() + 1024 {
            order.retain(|(i, t)| latest.get(i) == Some(t));
        }
    }

    /// The verified frame of `id` from the store.
    fn fetch(&self, id: &BlockId) -> Result<Vec<u8>> {
        let fail = |why: String| FsError::CorruptBlock { id: *id, why };
        let packed = match self.meta.pushed(id)? {
            None => return Err(fail("not in the local block store, and the object store does not have it".into())),
            Some(p) => p,
        };
        let frame = self
            .remote
            .fetch_frame(id, packed)
            .map_err(|e| fail(format!("fetch from {}: {e}", self.remote.store.describe())))?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(frame)
    }

    /// Fetch `id` into the local cache unless it is there.
    pub fn ensure(&self, id: &BlockId) -> Result<()> {
        self.load(id).map(|_| ())
    }

    /// The frame of `id`: the local copy, or fetched (once, however many ask at the same time)
    /// and kept. Returns the bytes it got, so a block evicted right after it landed is still
    /// served.
    fn load(&self, id: &BlockId) -> Result<Vec<u8>> {
        if let Ok(frame) = self.own.frame(id) {
            return Ok(frame);
        }
        for _ in 0..8 {
            match self.local.frame(id) {
                Ok(frame) => return Ok(frame),
                Err(FsError::CorruptBlock { .. }) => {}
                Err(e) => return Err(e),
            }
            {
                let mut inflight = self.inflight.lock().expect("inflight lock");
                if inflight.contains(id) {
                    // Someone is fetching it: wait (bounded), then look again.
                    let (_g, _) = self
                        .landed
                        .wait_timeout_while(inflight, std::time::Duration::from_secs(120), |f| f.contains(id))
                        .expect("inflight lock");
                    continue;
                }
                inflight.insert(*id);
            }
            let result = self.fetch(id).and_then(|frame| {
                self.local.insert_frame(id, &frame)?;
                self.used.fetch_add(frame.len() as u64, Ordering::Relaxed);
                self.touch(id);
                Ok(frame)
            });
            self.inflight.lock().expect("inflight lock").remove(id);
            self.landed.notify_all();
            let frame = result?;
            self.evict()?;
            return Ok(frame);
        }
        Err(FsError::CorruptBlock { id: *id, why: "could not keep it in the local cache (evicted while read 8 times)".into() })
    }

    /// Drop the least recently used blocks the store holds until under the cap.
    fn evict(&self) -> Result<()> {
        let Some(cap) = self.cap else { return Ok(()) };
        for _ in 0..100_000 {
            if self.used.load(Ordering::Relaxed) <= cap {
                return Ok(());
            }
            let victim = {
                let mut g = self.lru.lock().expect("lru lock");
                let (order, latest, _) = &mut *g;
                let mut found = None;
                while let Some((id, t)) = order.pop_front() {
                    if latest.get(&id) == Some(&t) {
                        latest.remove(&id);
                        found = Some(id);
                        break;
                    }
                }
                found
            };
            let Some(id) = victim else { return Ok(()) };
            let len = self.local.stored_len(&id)?.unwrap_or(0);
            self.local.remove(&id)?;
            self.used.fetch_sub(len.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        Ok(())
    }

    fn drop_cached(&self, id: &BlockId) -> Result<()> {
        let len = self.local.stored_len(id)?.unwrap_or(0);
        self.local.remove(id)?;
        self.used.fetch_sub(len.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        Ok(())
    }

    pub fn cached_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

impl BlockStore for LazyStore {
    fn put(&self, data: &[u8]) -> Result<BlockId> {
        self.own.put(data)
    }

    fn sync(&self) -> Result<()> {
        self.own.sync()
    }

    fn get(&self, id: &BlockId) -> Result<Vec<u8>> {
        let frame = self.load(id)?;
        self.touch(id);
        match hybridfs_blocks::decode(id, &frame) {
            // A damaged cached copy of a block the store holds: fetch it again.
            Err(FsError::CorruptBlock { why, .. }) if self.meta.pushed(id)?.is_some() && !self.own.contains(id)? => {
                tracing::warn!("cached block {id} is bad ({why}); fetching it again");
                self.drop_cached(id)?;
                hybridfs_blocks::decode(id, &self.load(id)?)
            }
            r => r,
        }
    }

    fn contains(&self, id: &BlockId) -> Result<bool> {
        Ok(self.own.contains(id)? || self.local.contains(id)? || self.meta.pushed(id)?.is_some())
    }

    /// Only the volume's own blocks are removed: cached ones may serve other clones and go
    /// by eviction.
    fn remove(&self, id: &BlockId) -> Result<()> {
        self.own.remove(id)
    }

    fn stored_len(&self, id: &BlockId) -> Result<Option<u64>> {
        self.own.stored_len(id)
    }

    fn frame(&self, id: &BlockId) -> Result<Vec<u8>> {
        self.load(id)
    }

    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> Result<()> {
        self.own.for_each(f)
    }

    fn prefetch(&self, ids: &[BlockId]) {
        for id in ids {
            if self.own.contains(id).unwrap_or(true)
                || self.local.contains(id).unwrap_or(true)
                || !self.queued.lock().expect("queued lock").insert(*id) {
                continue;
            }
            if self.ahead.try_send(*id).is_err() {
                self.queued.lock().expect("queued lock").remove(id);
            }
        }
    }
}
