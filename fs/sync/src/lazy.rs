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
//! A block read for the first time is fetched from the store (the `pushed` family of the
//! metadata store says where), verified against its id before anything uses it (invariant 5),
//! and kept in the cache. With a cache size, cached blocks are evicted oldest-used first when
//! the cache exceeds it (invariant 7: by at most the blocks and packs being fetched). How a
//! block comes:
//! * **alone** (`VOLUME/blocks/ID`): one GET; with a part size ([`LazyStore::set_part_bytes`],
//!   volumes whose blocks are larger than [`crate::ranged::PART_BYTES`]) as parallel ranged GETs put
//!   back together before the frame is verified ([`crate::ranged`]).
//! * **in a pack** (small blocks): the whole pack, once: one GET, checked against the pack's
//!   name, and kept in the cache as ONE file (`CACHE/packs/PACK`), so reading the other files
//!   of the pack (a directory, a shuffled data loader) fetches nothing more. A block of a
//!   cached pack is read from that file at its recorded place (the `pushed` family) and
//!   verified against its id like any cached block (invariant 5): one positioned read of a
//!   file held open, no file per block (creating 10,000 cache files for 10,000 small files
//!   was most of a clone's extra cost per file), and no hash of the blocks nobody reads. A
//!   delta in a pack (fs/sync/src/delta.rs) is resolved against its base and verified when
//!   asked for, and the result kept as a block file. Readers of other blocks of a pack being
//!   fetched wait for its bytes instead of asking the store again, and take their block from
//!   them (verified) until the pack file is written. At most [`PACKS_IN_MEMORY`] packs are
//!   held in memory at once (being fetched or written): beyond, a reader of another pack
//!   waits for one to go (a block comes as its byte range only if none goes within two
//!   minutes). A pack whose bytes do not match its name is remembered as damaged, and its
//!   blocks are fetched one by one as byte ranges (each verified: the good ones still read).
//!   Packs of an encrypted volume are read by ranges too (a sealed frame does not say its
//!   length). A cached pack is evicted whole (it is one entry of the use order); under a
//!   cache limit below two packs ([`crate::PACK_BYTES`]) blocks of packs come as their byte
//!   ranges (a pack kept would be evicted at once, and fetched again for its next block).
//!
//! A read waits for a block from the store at most the read timeout ([`DEFAULT_READ_TIMEOUT`],
//! [`LazyStore::set_read_timeout`]): a store that does not answer (blackholed, overloaded)
//! makes the read fail with `EIO` then, instead of blocking for the store client's own
//! timeouts and retries. The fetch itself goes on in its own thread (at most
//! [`MAX_WAITED_FETCHES`] at a time) and keeps the block when it lands, so reading again later
//! finds it. The reading thread's [`Waiting`] mode (set by the FUSE adapter) can make a read
//! not wait at all (`WouldBlock`: the adapter then hands it to a waiter thread) or stop
//! waiting when its caller is interrupted by a signal (`Interrupted`, `EINTR`); either way
//! the fetch goes on as above.
//!
//! The read-ahead fetchers are named workers (`fetch-N`) of the volume's registry
//! ([`LazyStore::with_workers`]): `hybridctl status` shows which block each fetches, and they
//! end at the registry's stop signal. A fetch a reader waits on is listed too, as a
//! `fetch-read` worker, for as long as it runs.

use crate::{Remote, SyncError};
use hybridfs_cloud::StoreError;
use hybridfs_blocks::FileBlockStore;
use hybridfs_core::blockstore::{self, BlockStore, Waiting, INTERRUPT_POLL};
use hybridfs_core::error::{FsError, Result};
use hybridfs_core::meta::MetaStore;
use hybridfs_core::types::BlockId;
use hybridfs_core::worker::{pause, Handle, Stop, Workers};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Background fetchers for read-ahead and prefetch: enough requests in flight to fill a link
/// with 1 MiB blocks (a plain parallel download uses 16).
const FETCHERS: usize = 32;
/// Damaged packs remembered (their blocks are read by ranges); forgotten all at once beyond.
const DAMAGED_PACKS: usize = 1024;
/// Packs held in memory at once, being fetched or written to the cache (at most 8 MiB
/// each): beyond, a reader of another pack waits for one to go.
pub const PACKS_IN_MEMORY: usize = 16;
/// Cached pack files held open at once; beyond, the others are closed (and opened again when
/// read).
const OPEN_PACKS: usize = 256;
/// How long a read waits for a block from the store by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Fetches readers wait on at once; more readers of missing blocks fail at once with `EIO`
/// (the store is not keeping up: more threads would only pile up).
pub const MAX_WAITED_FETCHES: usize = 64;

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
    /// Packs being fetched whole (`None`) or, once their bytes are here and verified, being
    /// written to the cache (their bytes): a reader of another of their blocks waits for the
    /// bytes and takes its block from them. Lock order: this, then `packs`.
    packs_fetching: Mutex<HashMap<BlockId, Option<Arc<Vec<u8>>>>>,
    pack_landed: std::sync::Condvar,
    /// The packs kept whole in the cache (`CACHE/packs/PACK`).
    packs: Mutex<CachedPacks>,
    packs_dir: PathBuf,
    /// Packs whose bytes did not match their name: their blocks are fetched by ranges.
    damaged_packs: Mutex<std::collections::HashSet<BlockId>>,
    /// Packs fetched whole.
    pub packs_fetched: AtomicU64,
    /// Blocks stored alone are fetched as parallel ranged GETs of this size (0: one GET).
    part_bytes: AtomicU64,
    /// Why the last fetch a reader waited on failed (taken by a waiting reader).
    failed: Mutex<HashMap<BlockId, FsError>>,
    /// Fetch threads readers wait on now.
    waited: AtomicUsize,
    read_timeout_ms: AtomicU64,
    /// The registry the fetch threads report into (`hybridctl status`).
    workers: Arc<Workers>,
}

/// Packs kept whole in the cache: their length and, while open, their file.
#[derive(Default)]
struct CachedPacks {
    by_id: HashMap<BlockId, (u64, Option<Arc<File>>)>,
    open: usize,
}

impl LazyStore {
    /// `own`: the volume's block directory; `cache`: the shared cache of fetched blocks.
    /// Refused while a pull of the clone is unfinished ([`crate::clone::refuse_if_pulling`]).
    pub fn new(own: FileBlockStore, cache: FileBlockStore, remote: Remote, meta: Arc<MetaStore>, cap: Option<u64>) -> Result<Self> {
        Self::with_workers(own, cache, remote, meta, cap, &Workers::new())
    }

    /// [`LazyStore::new`] whose fetchers report into (and stop with) `workers`.
    pub fn with_workers(
        own: FileBlockStore,
        cache: FileBlockStore,
        remote: Remote,
        meta: Arc<MetaStore>,
        cap: Option<u64>,
        workers: &Arc<Workers>,
    ) -> Result<Self> {
        crate::clone::refuse_if_pulling(&meta).map_err(|e| match e {
            crate::SyncError::Volume(e) => e,
            e => FsError::Refused(e.to_string()),
        })?;
        let local = cache;
        let mut used = 0;
        let mut ids = Vec::new();
        local.for_each(&mut |id| ids.push(id))?;
        for id in &ids {
            used += local.stored_len(id)?.unwrap_or(0);
        }
        let packs_dir = local.dir().join("packs");
        std::fs::create_dir_all(&packs_dir).map_err(|e| FsError::io(format!("create {}", packs_dir.display()), e))?;
        let mut packs = CachedPacks::default();
        let list = std::fs::read_dir(&packs_dir).map_err(|e| FsError::io(format!("list {}", packs_dir.display()), e))?;
        for entry in list {
            let entry = entry.map_err(|e| FsError::io(format!("list {}", packs_dir.display()), e))?;
            let Some(pack) = entry.file_name().to_str().and_then(BlockId::from_hex) else { continue };
            let len = entry.metadata().map_err(|e| FsError::io(format!("stat cached pack {pack}"), e))?.len();
            used += len;
            packs.by_id.insert(pack, (len, None));
            ids.push(pack);
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
            packs_fetching: Mutex::new(Default::default()),
            pack_landed: std::sync::Condvar::new(),
            packs: Mutex::new(packs),
            packs_dir,
            damaged_packs: Mutex::new(Default::default()),
            packs_fetched: AtomicU64::new(0),
            part_bytes: AtomicU64::new(0),
            failed: Mutex::new(HashMap::new()),
            waited: AtomicUsize::new(0),
            read_timeout_ms: AtomicU64::new(DEFAULT_READ_TIMEOUT.as_millis() as u64),
            workers: workers.clone(),
        });
        for id in ids {
            inner.touch(&id);
        }
        let (ahead, rx) = crossbeam_channel::bounded::<BlockId>(256);
        for n in 0..FETCHERS {
            let (inner, rx) = (Arc::downgrade(&inner), rx.clone());
            let (status, stop) = (workers.register(&format!("fetch-{n}")), workers.stop_signal());
            std::thread::Builder::new()
                .name(format!("fetch-{n}"))
                .spawn(move || fetcher(&inner, &rx, &status, &stop))
                .map_err(|e| FsError::io("start block fetchers", e))?;
        }
        Ok(LazyStore { inner, ahead })
    }

    /// Fetch blocks stored alone as parallel ranged GETs of `part` bytes (0: one GET each):
    /// for volumes whose blocks are larger than [`crate::ranged::PART_BYTES`].
    pub fn set_part_bytes(&self, part: u64) {
        self.part_bytes.store(part, Ordering::Relaxed);
    }

    /// How long a read waits for a block from the store before it fails with `EIO`.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.read_timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The frame of `id` for a reader: local, or fetched by a thread of its own while the
    /// reader waits at most the read timeout, and as the thread's [`Waiting`] mode allows: not
    /// at all ([`FsError::WouldBlock`]), or until its caller is interrupted
    /// ([`FsError::Interrupted`]). A reader that stops waiting leaves the fetch going: the
    /// block lands in the cache for the next read.
    fn load_for_reader(&self, id: &BlockId) -> Result<Vec<u8>> {
        let timeout = Duration::from_millis(self.read_timeout_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + timeout;
        let mut looked_again = false;
        for _ in 0..8 {
            if let Some(frame) = self.local_frame(id)? {
                return Ok(frame);
            }
            let mode = blockstore::waiting();
            if matches!(mode, Waiting::Never) {
                return Err(FsError::WouldBlock);
            }
            {
                let mut inflight = self.inflight.lock().expect("inflight lock");
                if !inflight.contains(id) {
                    // A fetch may have landed between the look above and this lock
                    // (a copy that is there but did not read is damaged: fetch it again).
                    if !looked_again && self.has_local(id)? {
                        looked_again = true;
                        continue;
                    }
                    self.start_fetch(id, &mut inflight)?;
                }
            }
            self.wait_landed(id, deadline, mode).map_err(|e| match e {
                FsError::Interrupted => e,
                _ => FsError::io(
                    format!("read block {id}"),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the store {} did not answer within {timeout:?} (the read timeout)", self.remote.store.describe()),
                    ),
                ),
            })?;
            if let Some(e) = self.failed.lock().expect("failed lock").remove(id) {
                return Err(e);
            }
        }
        Err(FsError::CorruptBlock { id: *id, why: "could not keep it in the local cache (evicted while read 8 times)".into() })
    }

    /// Wait until no fetch of `id` is in flight: `Ok`, or an error at `deadline` (any error but
    /// `Interrupted` means the deadline passed), or `Interrupted` as soon as `mode`'s probe
    /// says so (asked every [`INTERRUPT_POLL`], without holding the in-flight set).
    fn wait_landed(&self, id: &BlockId, deadline: Instant, mode: Waiting) -> Result<()> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = match mode {
                Waiting::Interruptible { .. } => left.min(INTERRUPT_POLL),
                _ => left,
            };
            let inflight = self.inflight.lock().expect("inflight lock");
            let (inflight, _) = self.landed.wait_timeout_while(inflight, slice, |f| f.contains(id)).expect("inflight lock");
            if !inflight.contains(id) {
                return Ok(());
            }
            drop(inflight);
            if let Waiting::Interruptible { probe, arg } = mode {
                if probe(arg) {
                    return Err(FsError::Interrupted);
                }
            }
            if Instant::now() >= deadline {
                return Err(FsError::WouldBlock);
            }
        }
    }

    /// Fetch `id` in a thread of its own (the caller holds the in-flight set and marks it): a
    /// named worker (`fetch-read`) listed while it runs.
    fn start_fetch(&self, id: &BlockId, inflight: &mut std::collections::HashSet<BlockId>) -> Result<()> {
        if self.waited.fetch_add(1, Ordering::SeqCst) >= MAX_WAITED_FETCHES {
            self.waited.fetch_sub(1, Ordering::SeqCst);
            return Err(FsError::io(
                format!("read block {id}"),
                std::io::Error::other(format!("{MAX_WAITED_FETCHES} reads already wait for the store {}", self.remote.store.describe())),
            ));
        }
        self.failed.lock().expect("failed lock").remove(id);
        inflight.insert(*id);
        let (inner, id) = (self.inner.clone(), *id);
        let status = self.workers.register_scoped("fetch-read");
        status.busy(format!("fetch block {id} for a reader"));
        let started = std::thread::Builder::new().name("fetch-read".into()).spawn(move || {
            let result = inner.fetch_and_keep(&id);
            status.done(result.as_ref().map(|_| ()).map_err(|e| format!("fetch block {id}: {e}")));
            if let Err(e) = result {
                inner.failed.lock().expect("failed lock").insert(id, e);
            }
            inner.inflight.lock().expect("inflight lock").remove(&id);
            inner.waited.fetch_sub(1, Ordering::SeqCst);
            inner.landed.notify_all();
        });
        if let Err(e) = started {
            inflight.remove(&id);
            self.waited.fetch_sub(1, Ordering::SeqCst);
            return Err(FsError::io("start a block fetch", e));
        }
        Ok(())
    }
}

/// One read-ahead fetcher: blocks from the queue until the store is dropped or the stop
/// signal goes out (looked at every 200 ms). After failures in a row (the store is down) it
/// pauses before the next hint, 100 ms doubled per failure ([`pause`]).
fn fetcher(inner: &std::sync::Weak<Inner>, rx: &crossbeam_channel::Receiver<BlockId>, status: &Handle, stop: &Stop) {
    while !stop.is_stopped() {
        let id = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(id) => id,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        status.busy(format!("fetch block {id}"));
        let result = inner.ensure(&id);
        if let Err(e) = &result {
            tracing::warn!("read-ahead of block {id}: {e}");
        }
        let failures = status.done(result.map_err(|e| format!("read-ahead of block {id}: {e}")));
        inner.queued.lock().expect("queued lock").remove(&id);
        if failures > 0 && stop.wait(pause(Duration::from_millis(100), failures)) {
            return;
        }
    }
}

impl Inner {
    fn touch(&self, id: &BlockId) {
        // Use order only matters for eviction: without a cap (a home volume's default) it
        // is not kept, so reading a volume's own blocks costs no lock and no memory here.
        if self.cap.is_none() {
            return;
        }
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

    /// The verified frame of `id` from the store: alone (whole, or in parts), or with its
    /// whole pack, or as a byte range of it (see the module's doc); and the pack kept in the
    /// cache that holds it, if one should (else the caller keeps it as a block file).
    fn fetch(&self, id: &BlockId) -> Result<(Vec<u8>, Option<BlockId>)> {
        let fail = |why: String| FsError::CorruptBlock { id: *id, why };
        let packed = match self.meta.pushed(id)? {
            None => return Err(fail("not in the local block store, and the object store does not have it".into())),
            Some(p) => p,
        };
        let part = self.part_bytes.load(Ordering::Relaxed);
        // A delta's base may be on the node already (the block it replaced, read before).
        let local = |base: &BlockId| self.local_frame(base).ok().flatten();
        let alone = |f: Vec<u8>| (f, None);
        let fetched = match packed {
            Some((pack, offset, len)) if self.remote.cipher.is_none() => match self.from_whole_pack(id, &pack, offset, len) {
                Ok(Some(got)) => Ok(got),
                Ok(None) => self.remote.fetch_frame_with(id, packed, &local).inspect(|f| self.count_fetch(f.len())).map(alone),
                Err(e) => Err(e),
            },
            None if part > 0 => self.remote.fetch_frame_in_parts(id, part).inspect(|f| self.count_fetch(f.len())).map(alone),
            _ => self.remote.fetch_frame_with(id, packed, &local).inspect(|f| self.count_fetch(f.len())).map(alone),
        };
        fetched.map_err(|e| match e {
            // The store did not serve it (down, 5xx, refused credentials...): an I/O error, not
            // a damaged block. Missing or bad bytes in the store are damage (invariant 5).
            SyncError::Store(e) if !matches!(e, StoreError::NotFound { .. } | StoreError::Corrupt { .. }) => FsError::io(
                format!("fetch block {id}"),
                std::io::Error::other(format!("the store {} failed: {e}", self.remote.store.describe())),
            ),
            e => fail(format!("fetch from {}: {e}", self.remote.store.describe())),
        })
    }

    fn count_fetch(&self, bytes: usize) {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Block `id` (at `offset`, `len` bytes of pack `pack`) from its whole pack: from the
    /// cached pack file, or from the pack fetched once however many of its blocks are asked
    /// for at the same time, then kept in the cache as one file. With the frame: the pack, if
    /// it is to serve the block from the cache from now on (not for a delta: resolved here,
    /// the caller keeps the result as a block file). `None`: fetch the block's range instead (the pack is damaged,
    /// [`PACKS_IN_MEMORY`] packs stayed held for two minutes, or the block was kept meanwhile
    /// and does not read from the cache after all).
    fn from_whole_pack(&self, id: &BlockId, pack: &BlockId, offset: u64, len: u64) -> Result<Option<(Vec<u8>, Option<BlockId>)>, SyncError> {
        // Under a cache limit below two packs, a pack kept would be evicted at once (or push
        // out the one read from): every read of another of its blocks would fetch it again.
        if self.damaged_packs.lock().expect("damaged packs lock").contains(pack) || self.cap.is_some_and(|c| c < 2 * crate::PACK_BYTES as u64) {
            return Ok(None);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut waited = false;
        for _ in 0..100_000 {
            if let Some(range) = self.pack_range(pack, offset, len) {
                let delta = crate::delta::is_delta(&range);
                return self.block_in_pack(id, pack, &range, 0, len).map(|f| Some((f, (!delta).then_some(*pack))));
            }
            let mut fetching = self.packs_fetching.lock().expect("packs lock");
            match fetching.get(pack) {
                Some(Some(body)) => {
                    let body = body.clone();
                    drop(fetching);
                    let delta = body.get(offset as usize..).is_some_and(crate::delta::is_delta);
                    let frame = self.block_in_pack(id, pack, &body, offset, len)?;
                    // The pack file is being written: wait for it (a few ms), so the block is
                    // read from it next time instead of being kept as a file of its own.
                    let mut fetching = self.packs_fetching.lock().expect("packs lock");
                    while fetching.contains_key(pack) && Instant::now() < deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        fetching = self.pack_landed.wait_timeout(fetching, left).expect("packs lock").0;
                    }
                    return Ok(Some((frame, (!delta).then_some(*pack))));
                }
                Some(None) if Instant::now() < deadline => {
                    waited = true;
                    let left = deadline.saturating_duration_since(Instant::now());
                    drop(self.pack_landed.wait_timeout(fetching, left).expect("packs lock"));
                }
                Some(None) => return Ok(None),
                // Kept meanwhile (it goes from here only once it is among the cached packs,
                // under this lock): read it from the file.
                None if self.pack_cached(pack) => {}
                // The fetch waited on failed (or its pack was evicted at once): the block's range.
                None if waited => return Ok(None),
                // Kept alone meanwhile (a block file).
                None if self.local.contains(id)? => {
                    drop(fetching);
                    return Ok(self.local_frame(id)?.map(|f| (f, None)));
                }
                // As many packs held as allowed: wait for one to go, then look again.
                None if fetching.len() >= PACKS_IN_MEMORY && Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    drop(self.pack_landed.wait_timeout(fetching, left).expect("packs lock"));
                }
                None if fetching.len() >= PACKS_IN_MEMORY => return Ok(None),
                None => {
                    // Another mount of a clone sharing this cache may have kept it.
                    if self.adopt_pack_file(pack) {
                        continue;
                    }
                    fetching.insert(*pack, None);
                    drop(fetching);
                    return self.fetch_whole_pack(id, pack, offset, len);
                }
            }
        }
        Ok(None)
    }

    /// Fetch pack `pack` whole (marked as being fetched by the caller), hand its bytes to the
    /// readers waiting for it, keep it in the cache as one file; block `id` from it, as
    /// [`Self::from_whole_pack`].
    fn fetch_whole_pack(&self, id: &BlockId, pack: &BlockId, offset: u64, len: u64) -> Result<Option<(Vec<u8>, Option<BlockId>)>, SyncError> {
        let body = match self.remote.fetch_pack(pack) {
            Ok(body) => Arc::new(body),
            Err(e) => {
                self.packs_fetching.lock().expect("packs lock").remove(pack);
                self.pack_landed.notify_all();
                let SyncError::Corrupt(why) = e else { return Err(e) };
                tracing::warn!("{why}; reading its blocks one by one");
                let mut damaged = self.damaged_packs.lock().expect("damaged packs lock");
                if damaged.len() >= DAMAGED_PACKS {
                    damaged.clear();
                }
                damaged.insert(*pack);
                return Ok(None);
            }
        };
        self.packs_fetched.fetch_add(1, Ordering::Relaxed);
        self.count_fetch(body.len());
        self.packs_fetching.lock().expect("packs lock").insert(*pack, Some(body.clone()));
        self.pack_landed.notify_all();
        let delta = body.get(offset as usize..).is_some_and(crate::delta::is_delta);
        let frame = self.block_in_pack(id, pack, &body, offset, len);
        if let Err(e) = self.keep_pack(pack, &body) {
            tracing::warn!("keep pack {pack} in the cache: {e}");
        }
        frame.map(|f| Some((f, (!delta).then_some(*pack))))
    }

    /// Write the verified bytes of pack `pack` to the cache as one file, then let them go from
    /// memory (the readers find the pack among the cached ones from then on).
    fn keep_pack(&self, pack: &BlockId, body: &[u8]) -> Result<()> {
        let path = self.packs_dir.join(pack.to_hex());
        let tmp = self.packs_dir.join(format!(".tmp.{}.{}", std::process::id(), pack.to_hex()));
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, &path)
        };
        let written = write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FsError::io(format!("write cached pack {}", path.display()), e)
        });
        let mut fetching = self.packs_fetching.lock().expect("packs lock");
        if written.is_ok() {
            let mut packs = self.packs.lock().expect("cached packs lock");
            if packs.by_id.insert(*pack, (body.len() as u64, None)).is_none() {
                self.used.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }
        fetching.remove(pack);
        drop(fetching);
        self.pack_landed.notify_all();
        if written.is_ok() {
            self.touch(pack);
        }
        written
    }

    /// Whether pack `pack` is kept whole in the cache.
    fn pack_cached(&self, pack: &BlockId) -> bool {
        self.packs.lock().expect("cached packs lock").by_id.contains_key(pack)
    }

    /// Count in a pack file another mount sharing the cache wrote; whether there is one.
    fn adopt_pack_file(&self, pack: &BlockId) -> bool {
        let Ok(md) = std::fs::metadata(self.packs_dir.join(pack.to_hex())) else { return false };
        let mut packs = self.packs.lock().expect("cached packs lock");
        if packs.by_id.insert(*pack, (md.len(), None)).is_none() {
            self.used.fetch_add(md.len(), Ordering::Relaxed);
        }
        drop(packs);
        self.touch(pack);
        true
    }

    /// `len` bytes at `offset` of cached pack `pack` (unverified: the caller verifies the frame
    /// against its id); `None` if the pack is not cached or its file does not read (gone:
    /// another mount sharing the cache evicted it, or damaged: forgotten).
    fn pack_range(&self, pack: &BlockId, offset: u64, len: u64) -> Option<Vec<u8>> {
        let file = {
            let mut packs = self.packs.lock().expect("cached packs lock");
            let open = packs.by_id.get(pack)?.1.clone();
            match open {
                Some(f) => f,
                None => {
                    let Ok(f) = File::open(self.packs_dir.join(pack.to_hex())) else {
                        drop(packs);
                        self.drop_pack(pack);
                        return None;
                    };
                    let f = Arc::new(f);
                    if packs.open >= OPEN_PACKS {
                        packs.by_id.values_mut().for_each(|(_, f)| *f = None);
                        packs.open = 0;
                    }
                    packs.open += 1;
                    if let Some((_, open)) = packs.by_id.get_mut(pack) {
                        *open = Some(f.clone());
                    }
                    f
                }
            }
        };
        let mut buf = vec![0; usize::try_from(len).ok()?];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {
                self.touch(pack);
                Some(buf)
            }
            Err(e) => {
                tracing::warn!("cached pack {pack} does not read at {offset}+{len} ({e}); dropping it");
                self.drop_pack(pack);
                None
            }
        }
    }

    /// Forget cached pack `pack` and remove its file.
    fn drop_pack(&self, pack: &BlockId) {
        let gone = {
            let mut packs = self.packs.lock().expect("cached packs lock");
            let gone = packs.by_id.remove(pack);
            if gone.as_ref().is_some_and(|(_, open)| open.is_some()) {
                packs.open = packs.open.saturating_sub(1);
            }
            gone
        };
        if let Some((len, _)) = gone {
            let _ = std::fs::remove_file(self.packs_dir.join(pack.to_hex()));
            self.used.fetch_sub(len.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Where block `id` is in a cached pack: `(pack, offset, len)`.
    fn in_cached_pack(&self, id: &BlockId) -> Result<Option<(BlockId, u64, u64)>> {
        if self.packs.lock().expect("cached packs lock").by_id.is_empty() {
            return Ok(None);
        }
        Ok(match self.meta.pushed(id)? {
            Some(Some((pack, offset, len))) if self.pack_cached(&pack) => Some((pack, offset, len)),
            _ => None,
        })
    }

    /// Block `id`'s frame in the verified bytes of pack `pack`: at its recorded place, checked
    /// against `id` (invariant 5). A delta there is resolved against its base (a verified local
    /// copy, or read from the store where the delta says) and the result checked against `id`.
    fn block_in_pack(&self, id: &BlockId, pack: &BlockId, body: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, SyncError> {
        let frame = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, n)| body.get(o..o.checked_add(n)?))
            .ok_or_else(|| SyncError::Corrupt(format!("pack {pack} is shorter than its block {id} at {offset}+{len}")))?;
        if crate::delta::is_delta(frame) {
            let local = |base: &BlockId| self.local_frame(base).ok().flatten();
            return crate::delta::resolve_body(&self.remote, id, frame.to_vec(), &local, 0);
        }
        hybridfs_blocks::verify(id, frame).map_err(|e| SyncError::Corrupt(format!("the copy in pack {pack}: {e}")))?;
        Ok(frame.to_vec())
    }

    /// Fetch `id` into the local cache unless it is there.
    pub fn ensure(&self, id: &BlockId) -> Result<()> {
        self.load(id).map(|_| ())
    }

    /// The frame of `id`: the local copy, or fetched (once, however many ask at the same time)
    /// and kept. Returns the bytes it got, so a block evicted right after it landed is still
    /// served.
    fn load(&self, id: &BlockId) -> Result<Vec<u8>> {
        let mut looked_again = false;
        for _ in 0..8 {
            if let Some(frame) = self.local_frame(id)? {
                return Ok(frame);
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
                // A fetch may have landed between the look above and this lock (a copy
                // that is there but did not read is damaged: fetch it again).
                if !looked_again && self.has_local(id)? {
                    looked_again = true;
                    continue;
                }
                inflight.insert(*id);
            }
            let result = self.fetch_and_keep(id);
            self.inflight.lock().expect("inflight lock").remove(id);
            self.landed.notify_all();
            return result;
        }
        Err(FsError::CorruptBlock { id: *id, why: "could not keep it in the local cache (evicted while read 8 times)".into() })
    }

    /// Whether a local tier holds a copy of `id` (a file exists; read with [`Self::local_frame`]).
    /// Asked under the in-flight lock before a fetch starts, so that a block whose fetch
    /// finished after the caller's first look is not fetched a second time.
    fn has_local(&self, id: &BlockId) -> Result<bool> {
        Ok(self.own.contains(id)? || self.local.contains(id)? || self.in_cached_pack(id)?.is_some())
    }

    /// The block's frame if a local tier has a readable copy: the volume's own block file, a
    /// cached block file, or its place in a cached pack (a delta there is not a readable copy:
    /// it is resolved by a fetch). Unverified: the caller verifies it against `id`.
    fn local_frame(&self, id: &BlockId) -> Result<Option<Vec<u8>>> {
        if let Ok(frame) = self.own.frame(id) {
            return Ok(Some(frame));
        }
        match self.local.frame(id) {
            Ok(frame) => {
                self.touch(id);
                return Ok(Some(frame));
            }
            Err(FsError::CorruptBlock { .. }) => {}
            Err(e) => return Err(e),
        }
        let Some((pack, offset, len)) = self.in_cached_pack(id)? else { return Ok(None) };
        Ok(self.pack_range(&pack, offset, len).filter(|f| !crate::delta::is_delta(f)))
    }

    /// Fetch `id` from the store into the cache (a block file, unless a cached pack holds
    /// it: one that failed to be written, or was evicted at once under a limit smaller than
    /// itself, does not); its frame.
    fn fetch_and_keep(&self, id: &BlockId) -> Result<Vec<u8>> {
        let (frame, pack) = self.fetch(id)?;
        self.evict()?;
        if !pack.is_some_and(|p| self.pack_cached(&p)) {
            self.keep_frame(id, &frame)?;
            self.evict()?;
        }
        Ok(frame)
    }

    /// Keep a verified frame in the cache (counted once: a block its pack brought is there).
    fn keep_frame(&self, id: &BlockId, frame: &[u8]) -> Result<()> {
        if !self.local.contains(id)? {
            self.local.insert_frame(id, frame)?;
            self.used.fetch_add(frame.len() as u64, Ordering::Relaxed);
        }
        self.touch(id);
        Ok(())
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
            if self.pack_cached(&id) {
                self.drop_pack(&id);
                continue;
            }
            let len = self.local.stored_len(&id)?.unwrap_or(0);
            self.local.remove(&id)?;
            self.used.fetch_sub(len.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drop the cached copy of `id` (a damaged one): its block file, or the cached pack it
    /// was read from.
    fn drop_cached(&self, id: &BlockId) -> Result<()> {
        if !self.local.contains(id)? {
            if let Some((pack, _, _)) = self.in_cached_pack(id)? {
                self.drop_pack(&pack);
            }
            return Ok(());
        }
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
        let frame = self.load_for_reader(id)?;
        match hybridfs_blocks::decode_owned(id, frame) {
            // A damaged cached copy of a block the store holds: fetch it again.
            Err(FsError::CorruptBlock { why, .. }) if self.meta.pushed(id)?.is_some() && !self.own.contains(id)? => {
                tracing::warn!("cached block {id} is bad ({why}); fetching it again");
                self.drop_cached(id)?;
                hybridfs_blocks::decode_owned(id, self.load_for_reader(id)?)
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
        self.load_for_reader(id)
    }

    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> Result<()> {
        self.own.for_each(f)
    }

    fn fetches(&self) -> bool {
        true
    }

    fn is_local(&self, id: &BlockId) -> Result<bool> {
        self.has_local(id)
    }

    fn prefetch(&self, ids: &[BlockId]) {
        for id in ids {
            if self.has_local(id).unwrap_or(true)
                || !self.queued.lock().expect("queued lock").insert(*id) {
                continue;
            }
            if self.ahead.try_send(*id).is_err() {
                self.queued.lock().expect("queued lock").remove(id);
            }
        }
    }
}
