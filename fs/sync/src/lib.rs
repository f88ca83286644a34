//! Moving a volume's history to and from the object store. This stage: **push**.
//!
//! # Remote layout (under the volume's store URL)
//!
//! ```text
//! VOLUME/blocks/<64 hex>                       one block frame (the local frame: verifiable)
//! VOLUME/packs/<64 hex>                        small block frames and block deltas ([`delta`]) concatenated (blake3 of the pack)
//! VOLUME/branches/BRANCH/layers/<seq>-<hash>   a layer (format: hybridfs_core::layer): the records changed by one push
//! VOLUME/branches/BRANCH/head                  JSON Head: the branch's newest layer, key and hash
//! VOLUME/branches/BRANCH/node                  JSON NodeState: its node's last report (nodestate)
//! ```
//!
//! Layer objects are named by the hash of their bytes and chained (each names the one before
//! it, the head names the newest): see [`chain`].
//!
//! # One push (invariant 4: blocks → layer → head)
//!
//! 1. Take a snapshot `push-BRANCH-SEQ` (seals staged data, fixes a consistent view) and hold
//!    it; remember it as the pending push, with a random push id, so an interrupted push
//!    resumes with the same view.
//! 2. Read the change journal of the epochs since the last push: every record changed, at the
//!    snapshot's epoch (a deleted record becomes a tombstone in the layer), in its published
//!    form ([`hybridfs_core::record::published`]: a small file's inline bytes become a block
//!    of their own, so a layer is metadata only). Never a scan of the volume (invariant 3).
//! 3. Upload the blocks those records name that the store does not have yet (the local
//!    `pushed` set, filled as uploads finish, makes a resumed push skip them). Blocks are
//!    verified before they leave (invariant 5; inline bytes against the id published for
//!    them); frames under [`PACK_SMALLER_THAN`] go into
//!    packs of up to [`PACK_BYTES`], so many small files cost few requests. A block that
//!    replaced one the store holds goes as a delta against it when the change is small
//!    ([`delta`]: always packed, chains bounded, verified before it leaves).
//! 4. Upload the layer under a key no other attempt uses (its hash), naming the layer before
//!    it, then move the head with a conditional PUT: `If-Match` the head's ETag as this node
//!    last saw it, `If-None-Match: *` for the first push. Another writer that moved the head in
//!    between makes this fail with a clear error; nothing is overwritten, and the refused
//!    attempt's layers (which no head names) are deleted again.
//! 5. Record the push locally; keep the snapshot as a fork base (a root branch such as
//!    `main`: the base of merges of branches forked from this layer, see [`forkbase`]) or drop
//!    it.
//!
//! A failure before 4 leaves the old head valid: the store may hold blocks and layers that no
//! head names (invisible). A crash between 4 and 5 leaves a head naming this node's pending
//! push id: the next push recognises it and finishes step 5. A push that resumed an
//! interrupted one then pushes what was written since, in the same call. Pushes of one volume
//! run one at a time in a process ([`push`] waits for the one running).

pub mod chain;
mod check;
pub mod clone;
pub mod crypt;
pub mod delta;
pub mod forkbase;
pub mod lazy;
pub mod merge;
pub mod nodestate;
pub mod ranged;
mod upload;

pub use chain::{ChainLink, LayerRef, LayerStream};
pub use check::{check_remote, check_remote_with, RemoteCheck};
use upload::{upload_blocks, Body};
pub use upload::ship_blocks;
use hybridfs_cloud::{Cond, ObjectStore, StoreError};
use hybridfs_core::meta::{Key, Mutation};
use hybridfs_core::record;
use hybridfs_core::types::{BlockId, SnapshotInfo};
use hybridfs_core::{FsError, Volume};
use serde::{Deserialize, Serialize};
use hybridfs_core::types::Ino;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Frames smaller than this go into packs.
pub const PACK_SMALLER_THAN: usize = 256 << 10;
/// Target size of one pack.
pub const PACK_BYTES: usize = 8 << 20;
/// Uploads in flight.
pub const PARALLEL: usize = 8;
/// The layer format pushes write (see [`hybridfs_core::layer`]).
pub(crate) const LAYER_FORMAT: u32 = hybridfs_core::layer::LAYER_FORMAT;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Volume(#[from] FsError),
    #[error("branch {branch} moved in the store since this node last pushed (its head is at layer {remote}, this node's is at layer {local}): nothing was overwritten and this node's change is kept; push it to a branch of its own with `hybridctl push --branch NEW-NAME` (only the change moves: the new branch starts where this node's {branch} stands) and merge it later")]
    BranchMoved { branch: String, remote: u64, local: u64 },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

pub use hybridfs_core::layer::{Entry, Layer, LayerHeader, Packed, Record};

impl From<hybridfs_core::layer::LayerError> for SyncError {
    fn from(e: hybridfs_core::layer::LayerError) -> SyncError {
        SyncError::Corrupt(e.to_string())
    }
}

/// The head of a branch: its newest layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    /// The key of the newest layer.
    pub layer: String,
    /// blake3 of its stored bytes (empty in heads of format-1 branches, which are refused).
    #[serde(default)]
    pub hash: String,
    /// The pushing node's epoch the layer was read at.
    pub epoch: u64,
    pub pushed_at: i64,
    /// The id of the push that wrote it: lets that node recognise its own push after a crash.
    #[serde(default)]
    pub push: String,
}

/// What this node last pushed to a branch (kept in the metadata store).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct PushState {
    pub seq: u64,
    pub epoch: u64,
    /// ETag of the head this node wrote.
    pub etag: Option<String>,
    /// A push that started and did not finish: its snapshot.
    pub pending: Option<String>,
    /// A clone's branch: where it forked (named by its first layer).
    #[serde(default)]
    pub parent: Option<(String, u64)>,
    /// ... and the exact layer (its first layer names it).
    #[serde(default)]
    pub parent_ref: Option<LayerRef>,
    /// The id of the pending push (written into its layers and head).
    #[serde(default)]
    pub push_id: Option<String>,
    /// The newest layer this node pushed (`seq`), exactly.
    #[serde(default)]
    pub last: Option<LayerRef>,
    /// This volume adopted the branch (`clone --adopt`, [`clone::import_adopting`]) at this
    /// layer, importing it at this epoch of its own: layers up to it were pushed by another
    /// home, whose epochs are not this volume's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<(u64, u64)>,
}

/// Progress of a push, a merge's block fetch, a clone, a pull, a check (see
/// [`hybridfs_core::progress`]).
pub use hybridfs_core::progress::{Meter, Progress};

/// What a push did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushReport {
    pub branch: String,
    pub seq: u64,
    pub epoch: u64,
    pub records: u64,
    pub blocks_uploaded: u64,
    /// Of the blocks uploaded, those sent as deltas against the block they replaced
    /// ([`delta`]).
    #[serde(default)]
    pub blocks_as_deltas: u64,
    /// Blocks named by the layer that an earlier (interrupted) push or another file already
    /// put in the store.
    pub blocks_skipped: u64,
    pub packs: u64,
    pub bytes_uploaded: u64,
    pub requests: u64,
    pub resumed: bool,
    /// A resumed push: the layer that finished the interrupted push (what was written since
    /// went on as `seq`, in the same call).
    pub resumed_seq: Option<u64>,
    pub seconds: f64,
    /// Nothing changed since the last push: no layer was written.
    pub up_to_date: bool,
}

/// A volume's place in an object store. Clones share the store (its client, runtime and
/// cancellation).
#[derive(Clone)]
pub struct Remote {
    pub store: Arc<dyn ObjectStore>,
    pub volume: String,
    /// With client-side encryption: every object body is sealed, block names are keyed.
    pub cipher: Option<Arc<crypt::Cipher>>,
    /// The call this remote serves ([`Remote::for_call`]); never cancelled otherwise.
    call: hybridfs_cloud::CancellationToken,
}

impl Remote {
    pub fn new(store: Arc<dyn ObjectStore>, volume: impl Into<String>) -> Remote {
        Remote { store, volume: volume.into(), cipher: None, call: Default::default() }
    }

    /// This remote for one call's work (a push, a merge): once `cancel` is cancelled its store
    /// calls fail with `Cancelled` (a request in flight is aborted) and a push's uploaders read
    /// no more blocks; the store itself serves on.
    pub fn for_call(&self, cancel: hybridfs_cloud::CancellationToken) -> Remote {
        let store: Arc<dyn ObjectStore> = Arc::new(hybridfs_cloud::CallScoped::new(self.store.clone(), cancel.clone()));
        Remote { store, volume: self.volume.clone(), cipher: self.cipher.clone(), call: cancel }
    }

    /// This remote with its store calls counted as `purpose` (`hybridfs_cloud::traffic`).
    pub fn counted(&self, purpose: hybridfs_cloud::traffic::Purpose) -> Remote {
        let store: Arc<dyn ObjectStore> = Arc::new(hybridfs_cloud::traffic::Counted::new(self.store.clone(), purpose));
        Remote { store, ..self.clone() }
    }

    /// Whether the call this remote serves was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.call.is_cancelled()
    }

    pub fn with_cipher(mut self, cipher: Option<Arc<crypt::Cipher>>) -> Remote {
        self.cipher = cipher;
        self
    }

    pub fn block_key(&self, id: &BlockId) -> String {
        match &self.cipher {
            Some(c) => format!("{}/blocks/{}", self.volume, c.block_name(id)),
            None => format!("{}/blocks/{}", self.volume, id.to_hex()),
        }
    }

    /// A block frame as it goes to the store.
    pub fn seal_frame(&self, id: &BlockId, frame: Vec<u8>) -> Vec<u8> {
        match &self.cipher {
            Some(c) => c.seal(&frame, &id.0),
            None => frame,
        }
    }

    /// A block frame as it came from the store (not yet verified against its id).
    pub fn open_frame(&self, id: &BlockId, body: Vec<u8>) -> Result<Vec<u8>> {
        match &self.cipher {
            Some(c) => c.open(&body, &id.0).map_err(|e| SyncError::Corrupt(format!("block {id}: {e}"))),
            None => Ok(body),
        }
    }

    fn seal_meta(&self, key: &str, body: Vec<u8>) -> Vec<u8> {
        match &self.cipher {
            Some(c) => c.seal(&body, key.as_bytes()),
            None => body,
        }
    }

    fn open_meta(&self, key: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        match &self.cipher {
            Some(c) => c.open(&body, key.as_bytes()).map_err(|e| SyncError::Corrupt(format!("{key}: {e}"))),
            None => Ok(body),
        }
    }

    /// Read a block's frame from the store, alone or from its pack, decrypted and verified
    /// against its id (invariant 5); a delta object is resolved against its base ([`delta`]).
    pub fn fetch_frame(&self, id: &BlockId, packed: Option<(BlockId, u64, u64)>) -> Result<Vec<u8>> {
        self.fetch_frame_with(id, packed, &|_| None)
    }

    /// [`Remote::fetch_frame`] that takes a delta's base from `local` when it has a copy (the
    /// copy is verified before use; a bad one is read from the store instead).
    pub fn fetch_frame_with(
        &self,
        id: &BlockId,
        packed: Option<(BlockId, u64, u64)>,
        local: &dyn Fn(&BlockId) -> Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        delta::resolve(self, id, packed, local, 0)
    }

    /// [`Remote::fetch_frame`] of a block stored alone, read as parallel ranged GETs of
    /// `part` bytes ([`ranged::get_in_parts`]); the parts are put back together, then
    /// decrypted and verified as one frame (invariant 5: a damaged part fails the block).
    pub fn fetch_frame_in_parts(&self, id: &BlockId, part: u64) -> Result<Vec<u8>> {
        let body = ranged::get_in_parts(&*self.store, &self.block_key(id), part)?;
        self.verified_frame(id, body)
    }

    /// The whole body of pack `pack`, checked against its name (the blake3 of the body the
    /// push wrote): a damaged pack is [`SyncError::Corrupt`]. Its frames are verified one by
    /// one by whoever takes them out.
    pub fn fetch_pack(&self, pack: &BlockId) -> Result<Vec<u8>> {
        let (body, _) = self.store.get(&self.pack_key(pack))?;
        if blake3::hash(&body).as_bytes() != &pack.0 {
            return Err(SyncError::Corrupt(format!("pack {pack}: its bytes in the store do not match its name")));
        }
        Ok(body)
    }

    /// A frame from the store, decrypted and verified against its id (a delta resolved).
    fn verified_frame(&self, id: &BlockId, body: Vec<u8>) -> Result<Vec<u8>> {
        delta::resolve_body(self, id, body, &|_| None, 0)
    }
    pub fn pack_key(&self, id: &BlockId) -> String {
        format!("{}/packs/{}", self.volume, id.to_hex())
    }
    pub fn head_key(&self, branch: &str) -> String {
        format!("{}/branches/{branch}/head", self.volume)
    }

    /// The head of `branch` and its ETag, if the branch exists.
    pub fn head(&self, branch: &str) -> Result<Option<(Head, String)>> {
        let key = self.head_key(branch);
        match self.store.get(&key) {
            Ok((bytes, etag)) => {
                let bytes = self.open_meta(&key, bytes)?;
                let head = serde_json::from_slice(&bytes).map_err(|e| {
                    let hint = if self.cipher.is_none() {
                        " (if the volume is encrypted, give its key: --encryption-key-file or HYBRIDFS_ENCRYPTION_KEY)"
                    } else {
                        ""
                    };
                    SyncError::Corrupt(format!("head of branch {branch} is not valid: {e}{hint}"))
                })?;
                Ok(Some((head, etag)))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn state_name(branch: &str) -> String {
    format!("push/{branch}")
}

fn load_state(vol: &Volume, branch: &str) -> Result<PushState> {
    load_meta_state(vol.meta(), branch)
}

fn load_meta_state(meta: &hybridfs_core::meta::MetaStore, branch: &str) -> Result<PushState> {
    Ok(match meta.meta_value(&state_name(branch))? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("local push state: {e}")))?,
        None => PushState::default(),
    })
}

/// The first epoch whose journal rows `branch` does not have yet: 0 before the first push,
/// else the epoch after the last push's snapshot (a pending push is not there yet).
pub fn unpushed_since(meta: &hybridfs_core::meta::MetaStore, branch: &str) -> Result<u64> {
    Ok(match meta.meta_value(&state_name(branch))? {
        Some(b) => {
            let st: PushState = serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("local push state: {e}")))?;
            if st.seq == 0 && st.parent.is_none() { 0 } else { st.epoch + 1 }
        }
        None => 0,
    })
}

fn save_state(vol: &Volume, branch: &str, st: &PushState) -> Result<()> {
    let value = serde_json::to_vec(st).expect("plain data");
    vol.meta().apply(vec![Mutation::SetMeta { name: state_name(branch), value: Some(value) }], true)?;
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A new push id: 16 random hex digits.
fn new_push_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the system's random source");
    hex::encode(b)
}

/// The snapshot a push reads: the pending one of an interrupted push, or a new one.
fn push_snapshot(vol: &Volume, branch: &str, st: &mut PushState) -> Result<(SnapshotInfo, bool)> {
    if let Some(name) = &st.pending {
        if let Ok(s) = vol.snapshot(name) {
            if st.push_id.is_none() {
                st.push_id = Some(new_push_id());
                save_state(vol, branch, st)?;
            }
            return Ok((s, true));
        }
    }
    let name = format!("push-{branch}-{}", st.seq + 1);
    // A leftover of this name (a crash after its push was recorded) is an older view.
    if vol.snapshot(&name).is_ok() {
        drop_snapshot(vol, &name)?;
    }
    vol.snapshot_create(&name)?;
    vol.snapshot_hold(&name, "push", true)?;
    let snap = vol.snapshot(&name)?;
    st.pending = Some(name);
    st.push_id = Some(new_push_id());
    save_state(vol, branch, st)?;
    Ok((snap, false))
}

fn drop_snapshot(vol: &Volume, name: &str) -> Result<()> {
    vol.snapshot_hold(name, "push", false)?;
    vol.snapshot_delete(name)?;
    Ok(())
}

/// Drop the `push-BRANCH-N` snapshots a crash left behind (between recording a push and
/// deleting its snapshot, or keeping it as a fork base): every one but the pending push's and
/// the fork bases.
fn drop_stale_push_snapshots(vol: &Volume, branch: &str, st: &PushState) -> Result<()> {
    let prefix = format!("push-{branch}-");
    for s in vol.snapshots()? {
        let ours = s.name.strip_prefix(&prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours && st.pending.as_deref() != Some(s.name.as_str()) && !forkbase::is_fork_base(vol, branch, &s.name)? {
            tracing::info!(snapshot = %s.name, "drop the snapshot of a push recorded before a crash");
            drop_snapshot(vol, &s.name)?;
        }
    }
    Ok(())
}

/// Pushes of one volume run one at a time in a process (two `hybridctl push` reach one mount
/// process as two requests): the lock of `vol`.
fn push_lock(vol: &Volume) -> Arc<Mutex<()>> {
    static LOCKS: std::sync::OnceLock<Mutex<std::collections::HashMap<usize, Arc<Mutex<()>>>>> = std::sync::OnceLock::new();
    let mut all = LOCKS.get_or_init(Default::default).lock().expect("lock");
    all.entry(vol as *const Volume as usize).or_default().clone()
}

/// Publish the live tree of `vol` as the next layer of `branch`.
pub fn push(vol: &Volume, remote: &Remote, branch: &str, progress: &(dyn Fn(&Progress) + Sync)) -> Result<PushReport> {
    push_chunked(vol, remote, branch, progress, LAYER_RECORDS)
}

/// Records per layer: a push of more changes writes several layers (memory stays bounded
/// whatever the size of the change, invariant 7); the head moves once, after the last.
pub const LAYER_RECORDS: usize = 100_000;

/// [`push`] with at most `chunk` records per layer. A push that finished an interrupted one
/// (its older snapshot) then pushes what was written since: the branch gets the tree as of
/// this call.
pub fn push_chunked(
    vol: &Volume,
    remote: &Remote,
    branch: &str,
    progress: &(dyn Fn(&Progress) + Sync),
    chunk: usize,
) -> Result<PushReport> {
    push_with(vol, remote, branch, None, progress, chunk)
}

/// [`push`] to `branch`; when this node never pushed it and `fork_from` names the branch the
/// volume pushes to, `branch` starts as a fork of where this node's `fork_from` stands (its
/// last pushed layer, or a clone's fork point), so its first layer carries only this node's
/// changes since: the way out when `fork_from` was moved by another node.
pub fn push_with(
    vol: &Volume,
    remote: &Remote,
    branch: &str,
    fork_from: Option<&str>,
    progress: &(dyn Fn(&Progress) + Sync),
    chunk: usize,
) -> Result<PushReport> {
    let lock = push_lock(vol);
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(from) = fork_from.filter(|f| *f != branch) {
        start_fork(vol, remote, branch, from)?;
    }
    let started = Instant::now();
    let mut report = push_once(vol, remote, branch, progress, chunk)?;
    if report.resumed {
        report.resumed_seq = Some(report.seq);
        let rest = push_once(vol, remote, branch, progress, chunk)?;
        report.absorb(&rest);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl PushReport {
    /// Add a later push of the same call.
    fn absorb(&mut self, later: &PushReport) {
        if later.up_to_date {
            return;
        }
        self.up_to_date = false;
        self.seq = later.seq;
        self.epoch = later.epoch;
        self.records += later.records;
        self.blocks_uploaded += later.blocks_uploaded;
        self.blocks_as_deltas += later.blocks_as_deltas;
        self.blocks_skipped += later.blocks_skipped;
        self.packs += later.packs;
        self.bytes_uploaded += later.bytes_uploaded;
        self.requests += later.requests;
    }
}

/// A first push of `branch` forks from where this node's `from` stands (nothing to do when
/// this node has pushed `branch` before, or has nothing of `from` in the store).
fn start_fork(vol: &Volume, remote: &Remote, branch: &str, from: &str) -> Result<()> {
    if vol.meta().meta_value(&state_name(branch))?.is_some() {
        return Ok(());
    }
    let base = load_state(vol, from)?;
    let (parent, parent_ref) = if base.seq > 0 {
        let r = match base.last.clone() {
            Some(r) => r,
            None => remote.layer_ref(from, base.seq)?,
        };
        ((from.to_string(), base.seq), Some(r))
    } else if let Some(p) = base.parent.clone() {
        (p, base.parent_ref.clone())
    } else {
        return Ok(());
    };
    tracing::info!(branch, from = %parent.0, layer = parent.1, "a new branch forks from where this node stands");
    let st = PushState { epoch: base.epoch, parent: Some(parent), parent_ref, ..Default::default() };
    save_state(vol, branch, &st)
}

/// Our pending push moved the head, and this node crashed before recording it.
fn landed(st: &PushState, head: &Head) -> bool {
    st.pending.is_some() && head.seq > st.seq && !head.push.is_empty() && st.push_id.as_deref() == Some(head.push.as_str())
}

/// One push: the pending one, or a new one of the live tree.
fn push_once(vol: &Volume, remote: &Remote, branch: &str, progress: &(dyn Fn(&Progress) + Sync), chunk: usize) -> Result<PushReport> {
    let mut st = load_state(vol, branch)?;
    let head = remote.head(branch)?;
    drop_stale_push_snapshots(vol, branch, &st)?;
    let mut report = PushReport { branch: branch.to_string(), requests: 1, ..Default::default() };
    if let Some((h, etag)) = &head {
        if landed(&st, h) {
            tracing::info!(branch, seq = h.seq, "the head names this node's pending push: record it");
            let snap = vol.snapshot(st.pending.as_deref().unwrap_or_default())?;
            st.seq = h.seq;
            st.last = Some(h.layer_ref());
            finish(vol, branch, &mut st, &snap, Some(etag.clone()))?;
            (report.resumed, report.seq, report.epoch) = (true, st.seq, st.epoch);
            return Ok(report);
        }
        if h.seq != st.seq || st.etag.as_deref() != Some(etag.as_str()) {
            return Err(SyncError::BranchMoved { branch: branch.to_string(), remote: h.seq, local: st.seq });
        }
    } else if st.seq != 0 {
        return Err(SyncError::Corrupt(format!(
            "branch {branch} has no head in {} but this node pushed layer {} to it",
            remote.store.describe(),
            st.seq
        )));
    }
    if st.seq == 0 && st.parent.is_some() && st.parent_ref.is_none() {
        let (pb, ps) = st.parent.clone().expect("checked");
        st.parent_ref = Some(remote.layer_ref(&pb, ps)?);
    }
    let (snap, resumed) = push_snapshot(vol, branch, &mut st)?;
    report.resumed = resumed;
    let w = LayerWriter {
        vol,
        remote,
        branch,
        st: &st,
        snap: &snap,
        push_id: st.push_id.clone().unwrap_or_default(),
        progress,
    };

    // The records changed since the last push, read at the snapshot, a chunk at a time; each
    // chunk's blocks go before its layer (invariant 4). A record changed in several epochs may
    // appear in two chunks: the later layer simply repeats its value.
    let mut prev = head.as_ref().map(|(h, _)| h.layer_ref());
    let mut written: Vec<LayerRef> = Vec::new();
    let mut keys: BTreeSet<Key> = BTreeSet::new();
    let mut failure: Option<SyncError> = None;
    vol.meta().changes(st.epoch, snap.epoch, &mut |c| {
        keys.insert(c.key);
        if keys.len() >= chunk.max(1) {
            match w.write(std::mem::take(&mut keys), prev.take(), false, &mut report) {
                Ok(r) => {
                    prev = Some(r.clone());
                    written.push(r);
                }
                Err(e) => {
                    failure = Some(e);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if keys.is_empty() && written.is_empty() && head.is_some() {
        finish(vol, branch, &mut st, &snap, None)?;
        report.up_to_date = true;
        (report.seq, report.epoch) = (st.seq, st.epoch);
        return Ok(report);
    }
    let last = w.write(keys, prev, true, &mut report)?;
    written.push(last.clone());
    hybridfs_core::crashpoint("push-after-layer");
    let etag = move_head(remote, branch, &st, &head, &last, &snap, &written)?;
    hybridfs_core::crashpoint("push-after-head");
    report.requests += 1;
    st.seq = last.seq;
    st.last = Some(last);
    finish(vol, branch, &mut st, &snap, Some(etag))?;
    (report.seq, report.epoch) = (st.seq, snap.epoch);
    Ok(report)
}

/// The commit point: the head names `last`, by a conditional PUT against the head this node
/// saw. Refused (another writer moved it): the layers `written` are deleted again, since no
/// head names them.
fn move_head(
    remote: &Remote,
    branch: &str,
    st: &PushState,
    head: &Option<(Head, String)>,
    last: &LayerRef,
    snap: &SnapshotInfo,
    written: &[LayerRef],
) -> Result<String> {
    let push_id = st.push_id.clone().unwrap_or_default();
    let new_head = Head { seq: last.seq, layer: last.key.clone(), hash: last.hash.clone(), epoch: snap.epoch, pushed_at: now(), push: push_id.clone() };
    let cond = match head {
        Some((_, etag)) => Cond::IfMatch(etag.clone()),
        None => Cond::IfAbsent,
    };
    let head_key = remote.head_key(branch);
    let head_body = remote.seal_meta(&head_key, serde_json::to_vec(&new_head).expect("plain data"));
    match remote.store.put(&head_key, &head_body, cond) {
        Ok(etag) => Ok(etag),
        Err(StoreError::Precondition { .. }) => {
            let now = remote.head(branch)?;
            if let Some((h, etag)) = now.as_ref().filter(|(h, _)| h.push == push_id && h.layer == last.key) {
                tracing::info!(branch, seq = h.seq, "the head already names this push");
                return Ok(etag.clone());
            }
            for r in written {
                if let Err(e) = remote.store.delete(&r.key) {
                    tracing::debug!(key = %r.key, "delete a refused push's layer: {e}");
                }
            }
            let remote_seq = now.map_or(0, |(h, _)| h.seq);
            Err(SyncError::BranchMoved { branch: branch.to_string(), remote: remote_seq, local: st.seq })
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the layers of one push.
struct LayerWriter<'a> {
    vol: &'a Volume,
    remote: &'a Remote,
    branch: &'a str,
    st: &'a PushState,
    snap: &'a SnapshotInfo,
    push_id: String,
    progress: &'a (dyn Fn(&Progress) + Sync),
}

impl LayerWriter<'_> {
    /// Block `id` of `(ino, block)` as a delta against the block the extent named at the
    /// previous push ([`delta`]), when the store holds that one as a whole frame or as a
    /// delta of a chain shorter than [`delta::MAX_CHAIN`] that this node recorded, it is on
    /// the node, and the changed ranges are small. None: send the block whole. Only the two
    /// blocks are read (invariant 3); the delta is applied to the base and checked against
    /// `id` before it may leave (invariant 5).
    fn delta(&self, id: &BlockId, ino: Ino, block: u64) -> Result<Option<Body>> {
        let meta = self.vol.meta();
        if self.st.seq == 0 && self.st.parent.is_none() {
            return Ok(None);
        }
        let Some(hybridfs_core::types::Extent::Sealed { id: base, .. }) = meta.get_extent_at(ino, block, self.st.epoch)? else {
            return Ok(None);
        };
        if base == *id {
            return Ok(None);
        }
        let (depth, base_at) = match meta.pushed(&base)? {
            None => return Ok(None),
            Some(None) => (0, None),
            Some(Some(at)) => match meta.meta_value(&delta::state_name(&base))? {
                Some(v) => match serde_json::from_slice::<delta::Recorded>(&v) {
                    Ok(r) if (r.pack, r.offset, r.len) == at => (r.depth, Some(at)),
                    _ => return Ok(None),
                },
                None => return Ok(None),
            },
        };
        if depth >= delta::MAX_CHAIN || !self.vol.blocks().is_local(&base)? {
            return Ok(None);
        }
        let (old, new) = match (self.vol.blocks().get(&base), self.vol.blocks().get(id)) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(e), _) => {
                tracing::debug!("block {base}, the base for a delta of {id}: {e}; sending {id} whole");
                return Ok(None);
            }
            (_, Err(e)) => return Err(e.into()),
        };
        let Some(ranges) = delta::Delta::between(&old, &new, delta::max_delta_bytes(new.len())) else {
            return Ok(None);
        };
        let d = delta::Delta { depth: depth + 1, result: *id, result_len: new.len() as u32, base, base_at, ranges };
        if hybridfs_blocks::block_id(&d.apply(&old)?) != *id {
            return Err(SyncError::Corrupt(format!("the delta of block {id} against {base} does not give the block back")));
        }
        Ok(Some(Body::Delta { body: d.encode(), depth: d.depth }))
    }

    /// Upload the blocks `keys` name that the store lacks, then their layer (after `prev`).
    fn write(&self, keys: BTreeSet<Key>, prev: Option<LayerRef>, last: bool, report: &mut PushReport) -> Result<LayerRef> {
        let (vol, remote) = (self.vol, self.remote);
        let meta = vol.meta();
        // Each changed record in its published form (a small file's inline bytes become a
        // block of their own: the layer stays metadata only); a key two changed records
        // publish (an inode and its block 0) is carried once.
        let mut published: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
        let mut blocks: BTreeSet<BlockId> = BTreeSet::new();
        let mut inline: HashMap<BlockId, Ino> = HashMap::new();
        // Where each block is in its file: the block it replaced there may serve as a delta base.
        let mut placed: HashMap<BlockId, (Ino, u64)> = HashMap::new();
        for key in keys {
            for p in record::published(meta, &key, self.snap.epoch)? {
                if let Some(id) = record::sealed_block(&p.key, p.value.as_deref())? {
                    blocks.insert(id);
                    if let Key::Extent(ino, block) = &p.key {
                        placed.insert(id, (*ino, *block));
                    }
                }
                if let Some((ino, id)) = p.inline_block {
                    inline.insert(id, ino);
                }
                published.insert(p.key, p.value);
            }
        }
        let records: Vec<Record> = published.into_iter().map(|(key, value)| Record { key, value }).collect();
        report.records += records.len() as u64;
        // Blocks: skip what the store has; verify, then upload (small ones packed).
        let mut todo = Vec::new();
        for id in &blocks {
            if meta.pushed(id)?.is_some() {
                report.blocks_skipped += 1;
            } else {
                todo.push(*id);
            }
        }
        let at = self.snap.epoch;
        let frame = |id: &BlockId| -> Result<Body> {
            if let Some(&ino) = inline.get(id) {
                return Ok(Body::Whole(hybridfs_blocks::encode(&record::inline_bytes(meta, ino, at, id)?)));
            }
            if let Some(&(ino, block)) = placed.get(id) {
                if let Some(body) = self.delta(id, ino, block)? {
                    return Ok(body);
                }
            }
            Ok(Body::Whole(vol.blocks().frame(id)?))
        };
        let uploaded = upload_blocks(vol, remote, &todo, &frame, self.progress)?;
        report.blocks_uploaded += uploaded.blocks;
        report.blocks_as_deltas += uploaded.deltas;
        report.packs += uploaded.packs;
        report.bytes_uploaded += uploaded.bytes;
        report.requests += uploaded.requests;
        // Where the packed blocks of this layer are, also those an interrupted push uploaded
        // (no layer names them yet) or an earlier push did (a reader may start from any layer).
        let mut packed = Vec::new();
        for id in &blocks {
            if let Some(Some((pack, offset, len))) = meta.pushed(id)? {
                packed.push(Packed { id: *id, pack, offset, len });
            }
        }
        let seq = prev.as_ref().map_or(1, |p| p.seq + 1);
        let first_of_fork = seq == 1;
        let layer = Layer {
            format: LAYER_FORMAT,
            volume: remote.volume.clone(),
            branch: self.branch.to_string(),
            seq,
            base_epoch: self.st.epoch,
            epoch: self.snap.epoch,
            block_size: vol.block_size(),
            parent: if first_of_fork { self.st.parent.clone() } else { None },
            complete: last,
            records,
            packed,
            push: self.push_id.clone(),
            prev,
            parent_ref: if first_of_fork { self.st.parent_ref.clone() } else { None },
        };
        let bytes = hybridfs_core::layer::encode(&layer)?;
        drop(layer);
        let bytes = remote.seal_meta(&remote.layer_aad(self.branch, seq), bytes);
        let r = remote.layer_ref_for(self.branch, seq, &bytes);
        remote.store.put(&r.key, &bytes, Cond::None)?;
        report.bytes_uploaded += bytes.len() as u64;
        report.requests += 1;
        Ok(r)
    }
}

/// The push is recorded: remember where it got to, then keep its snapshot as a fork base
/// (a layer was written and the branch is not a fork: [`forkbase`]) or release and drop it.
fn finish(vol: &Volume, branch: &str, st: &mut PushState, snap: &SnapshotInfo, etag: Option<String>) -> Result<()> {
    st.epoch = snap.epoch;
    let wrote = etag.is_some();
    if wrote {
        st.etag = etag;
    }
    st.pending = None;
    st.push_id = None;
    save_state(vol, branch, st)?;
    hybridfs_core::crashpoint("push-after-state");
    match &st.last {
        Some(layer) if wrote && st.parent.is_none() => forkbase::keep(vol, branch, layer, snap),
        _ => drop_snapshot(vol, &snap.name),
    }
}

