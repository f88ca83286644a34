//! Moving a volume's history to and from the object store. This stage: **push**.
//!
//! # Remote layout (under the volume's store URL)
//!
//! ```text
//! VOLUME/blocks/<64 hex>                 one block frame (the local frame, unchanged: verifiable)
//! VOLUME/packs/<64 hex>                  small block frames concatenated (blake3 of the pack)
//! VOLUME/branches/BRANCH/layers/<seq>    zstd(bincode Layer): the records changed by one push
//! VOLUME/branches/BRANCH/head            JSON Head: the branch's newest layer
//! ```
//!
//! # One push (invariant 4: blocks → layer → head)
//!
//! 1. Take a snapshot `push-BRANCH-SEQ` (seals staged data, fixes a consistent view) and hold
//!    it; remember it as the pending push, so an interrupted push resumes with the same view.
//! 2. Read the change journal of the epochs since the last push: every record changed, at the
//!    snapshot's epoch (a deleted record becomes a tombstone in the layer). Never a scan of the
//!    volume (invariant 3).
//! 3. Upload the blocks those records name that the store does not have yet (the local
//!    `pushed` set, filled as uploads finish, makes a resumed push skip them). Blocks are
//!    verified before they leave (invariant 5); frames under [`PACK_SMALLER_THAN`] go into
//!    packs of up to [`PACK_BYTES`], so many small files cost few requests.
//! 4. Upload the layer (records + where packed blocks are), then move the head with a
//!    conditional PUT: `If-Match` the head's ETag as this node last saw it, `If-None-Match: *`
//!    for the first push. Another writer that moved the head in between makes this fail with
//!    a clear error; nothing is overwritten.
//! 5. Record the push locally and drop the snapshot.
//!
//! A failure before 4 leaves the old head valid: the store may hold blocks and a layer that no
//! head names yet (invisible, reused by the resumed push).

pub mod clone;
pub mod crypt;
pub mod lazy;

use hybridfs_cloud::{Cond, ObjectStore, StoreError};
use hybridfs_core::meta::{Key, Mutation};
use hybridfs_core::types::{BlockId, Extent, SnapshotInfo};
use hybridfs_core::{FsError, Volume};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Frames smaller than this go into packs.
pub const PACK_SMALLER_THAN: usize = 256 << 10;
/// Target size of one pack.
pub const PACK_BYTES: usize = 8 << 20;
/// Uploads in flight.
pub const PARALLEL: usize = 8;
const LAYER_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Volume(#[from] FsError),
    #[error("branch {branch} moved in the store since this node last pushed (its head is at layer {remote}, this node last pushed layer {local}); pull first")]
    BranchMoved { branch: String, remote: u64, local: u64 },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

/// One record of a layer: its value at the pushed snapshot, or `None` (deleted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    pub value: Option<Vec<u8>>,
}

/// Where a packed block is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub id: BlockId,
    pub pack: BlockId,
    pub offset: u64,
    pub len: u64,
}

/// The metadata changes of one push.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Layer {
    pub format: u32,
    pub volume: String,
    pub branch: String,
    pub seq: u64,
    /// The epoch range `(base_epoch, epoch]` of the pushing node it covers.
    pub base_epoch: u64,
    pub epoch: u64,
    pub block_size: u64,
    /// The first layer of a branch forked from another: the branch and layer it starts from.
    pub parent: Option<(String, u64)>,
    /// The last layer of a push: the tree is whole after it (a large push writes several).
    pub complete: bool,
    pub records: Vec<Record>,
    pub packed: Vec<Packed>,
}

/// The head of a branch: its newest layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub layer: String,
    pub epoch: u64,
    pub pushed_at: i64,
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
}

/// Progress of a push, for a progress line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    pub blocks_total: u64,
    pub blocks_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub branch: String,
    pub seq: u64,
    pub epoch: u64,
    pub records: u64,
    pub blocks_uploaded: u64,
    /// Blocks named by the layer that an earlier (interrupted) push or another file already
    /// put in the store.
    pub blocks_skipped: u64,
    pub packs: u64,
    pub bytes_uploaded: u64,
    pub requests: u64,
    pub resumed: bool,
    pub seconds: f64,
    /// Nothing changed since the last push: no layer was written.
    pub up_to_date: bool,
}

pub struct Remote {
    pub store: Arc<dyn ObjectStore>,
    pub volume: String,
    /// With client-side encryption: every object body is sealed, block names are keyed.
    pub cipher: Option<Arc<crypt::Cipher>>,
}

impl Remote {
    pub fn new(store: Arc<dyn ObjectStore>, volume: impl Into<String>) -> Remote {
        Remote { store, volume: volume.into(), cipher: None }
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
    /// against its id (invariant 5).
    pub fn fetch_frame(&self, id: &BlockId, packed: Option<(BlockId, u64, u64)>) -> Result<Vec<u8>> {
        let body = match packed {
            None => self.store.get(&self.block_key(id)).map(|(b, _)| b)?,
            Some((pack, offset, len)) => self.store.get_range(&self.pack_key(&pack), offset, len)?,
        };
        let frame = self.open_frame(id, body)?;
        hybridfs_blocks::decode(id, &frame).map_err(|e| SyncError::Corrupt(format!("the copy in the store: {e}")))?;
        Ok(frame)
    }
    pub fn pack_key(&self, id: &BlockId) -> String {
        format!("{}/packs/{}", self.volume, id.to_hex())
    }
    pub fn layer_key(&self, branch: &str, seq: u64) -> String {
        format!("{}/branches/{branch}/layers/{seq:012}", self.volume)
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

    pub fn layer(&self, branch: &str, seq: u64) -> Result<Layer> {
        let key = self.layer_key(branch, seq);
        let (bytes, _) = self.store.get(&key)?;
        let bytes = self.open_meta(&key, bytes)?;
        let plain = zstd::decode_all(&bytes[..]).map_err(|e| SyncError::Corrupt(format!("layer {seq} of {branch}: {e}")))?;
        bincode::deserialize(&plain).map_err(|e| SyncError::Corrupt(format!("layer {seq} of {branch}: {e}")))
    }
}

pub(crate) fn state_name(branch: &str) -> String {
    format!("push/{branch}")
}

fn load_state(vol: &Volume, branch: &str) -> Result<PushState> {
    Ok(match vol.meta().meta_value(&state_name(branch))? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("local push state: {e}")))?,
        None => PushState::default(),
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

/// The snapshot a push reads: the pending one of an interrupted push, or a new one.
fn push_snapshot(vol: &Volume, branch: &str, st: &mut PushState) -> Result<(SnapshotInfo, bool)> {
    if let Some(name) = &st.pending {
        if let Ok(s) = vol.snapshot(name) {
            return Ok((s, true));
        }
    }
    let name = format!("push-{branch}-{}", st.seq + 1);
    let snap = match vol.snapshot(&name) {
        Ok(s) => s,
        Err(_) => vol.snapshot_create(&name)?,
    };
    vol.snapshot_hold(&name, "push", true)?;
    st.pending = Some(name);
    save_state(vol, branch, st)?;
    Ok((snap, false))
}

/// Publish the live tree of `vol` as the next layer of `branch`.
pub fn push(vol: &Volume, remote: &Remote, branch: &str, progress: &(dyn Fn(&Progress) + Sync)) -> Result<PushReport> {
    push_chunked(vol, remote, branch, progress, LAYER_RECORDS)
}

/// Records per layer: a push of more changes writes several layers (memory stays bounded
/// whatever the size of the change, invariant 7); the head moves once, after the last.
pub const LAYER_RECORDS: usize = 100_000;

/// [`push`] with at most `chunk` records per layer.
pub fn push_chunked(
    vol: &Volume,
    remote: &Remote,
    branch: &str,
    progress: &(dyn Fn(&Progress) + Sync),
    chunk: usize,
) -> Result<PushReport> {
    let started = Instant::now();
    let mut st = load_state(vol, branch)?;
    let head = remote.head(branch)?;
    if let Some((h, etag)) = &head {
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
    let (snap, resumed) = push_snapshot(vol, branch, &mut st)?;
    let meta = vol.meta();
    let mut report = PushReport { branch: branch.to_string(), resumed, requests: 1, ..Default::default() };

    // The records changed since the last push, read at the snapshot, a chunk at a time; each
    // chunk's blocks go before its layer (invariant 4). A record changed in several epochs may
    // appear in two chunks: the later layer simply repeats its value.
    let mut seq = st.seq;
    let mut keys: BTreeSet<Key> = BTreeSet::new();
    let mut failure: Option<SyncError> = None;
    let layer_of = |keys: &mut BTreeSet<Key>, seq: &mut u64, report: &mut PushReport| -> Result<()> {
        *seq += 1;
        let last = false;
        write_layer(vol, remote, branch, &st, &snap, std::mem::take(keys), *seq, last, report, progress)
    };
    meta.changes(st.epoch, snap.epoch, &mut |c| {
        keys.insert(c.key);
        if keys.len() >= chunk.max(1) {
            if let Err(e) = layer_of(&mut keys, &mut seq, &mut report) {
                failure = Some(e);
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if keys.is_empty() && seq == st.seq && head.is_some() {
        finish(vol, branch, &mut st, &snap, None)?;
        report.up_to_date = true;
        report.seq = st.seq;
        report.epoch = st.epoch;
        report.requests = 1;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    seq += 1;
    write_layer(vol, remote, branch, &st, &snap, keys, seq, true, &mut report, progress)?;
    hybridfs_core::crashpoint("push-after-layer");
    let new_head = Head { seq, layer: remote.layer_key(branch, seq), epoch: snap.epoch, pushed_at: now() };
    let cond = match &head {
        Some((_, etag)) => Cond::IfMatch(etag.clone()),
        None => Cond::IfAbsent,
    };
    let head_key = remote.head_key(branch);
    let head_body = remote.seal_meta(&head_key, serde_json::to_vec(&new_head).expect("plain data"));
    let etag = match remote.store.put(&head_key, &head_body, cond) {
        Ok(etag) => etag,
        Err(StoreError::Precondition { .. }) => {
            let remote_seq = remote.head(branch)?.map_or(0, |(h, _)| h.seq);
            return Err(SyncError::BranchMoved { branch: branch.to_string(), remote: remote_seq, local: st.seq });
        }
        Err(e) => return Err(e.into()),
    };
    report.requests += 1;
    st.seq = seq;
    finish(vol, branch, &mut st, &snap, Some(etag))?;
    report.seq = seq;
    report.epoch = snap.epoch;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Upload the blocks `keys` name that the store lacks, then their layer `seq`.
#[allow(clippy::too_many_arguments)]
fn write_layer(
    vol: &Volume,
    remote: &Remote,
    branch: &str,
    st: &PushState,
    snap: &SnapshotInfo,
    keys: BTreeSet<Key>,
    seq: u64,
    last: bool,
    report: &mut PushReport,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<()> {
    let meta = vol.meta();
    let mut records = Vec::with_capacity(keys.len());
    let mut blocks: BTreeSet<BlockId> = BTreeSet::new();
    for key in keys {
        let value = meta.raw_at(&key, snap.epoch)?;
        if let (Key::Extent(..), Some(v)) = (&key, &value) {
            if let Ok(Extent::Sealed { id, .. }) = bincode::deserialize::<Extent>(v) {
                blocks.insert(id);
            }
        }
        records.push(Record { key, value });
    }
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
    let uploaded = upload_blocks(vol, remote, &todo, progress)?;
    report.blocks_uploaded += uploaded.blocks;
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
    let layer = Layer {
        format: LAYER_FORMAT,
        volume: remote.volume.clone(),
        branch: branch.to_string(),
        seq,
        base_epoch: st.epoch,
        epoch: snap.epoch,
        block_size: vol.block_size(),
        parent: if seq == 1 { st.parent.clone() } else { None },
        complete: last,
        records,
        packed,
    };
    let plain = bincode::serialize(&layer).expect("plain data");
    drop(layer);
    let bytes = zstd::encode_all(&plain[..], 3).map_err(|e| SyncError::Corrupt(format!("compress layer: {e}")))?;
    let layer_key = remote.layer_key(branch, seq);
    let bytes = remote.seal_meta(&layer_key, bytes);
    remote.store.put(&layer_key, &bytes, Cond::None)?;
    report.bytes_uploaded += bytes.len() as u64;
    report.requests += 1;
    Ok(())
}

/// The push is recorded: remember where it got to, release and drop its snapshot.
fn finish(vol: &Volume, branch: &str, st: &mut PushState, snap: &SnapshotInfo, etag: Option<String>) -> Result<()> {
    st.epoch = snap.epoch;
    if etag.is_some() {
        st.etag = etag;
    }
    st.pending = None;
    save_state(vol, branch, st)?;
    vol.snapshot_hold(&snap.name, "push", false)?;
    vol.snapshot_delete(&snap.name)?;
    Ok(())
}

struct Uploaded {
    blocks: u64,
    packs: u64,
    bytes: u64,
    requests: u64,
}

/// One request's worth of work.
enum Job {
    Block(BlockId, Vec<u8>),
    Pack(Vec<(BlockId, Vec<u8>)>),
}

fn upload_blocks(vol: &Volume, remote: &Remote, ids: &[BlockId], progress: &(dyn Fn(&Progress) + Sync)) -> Result<Uploaded> {
    let mut out = Uploaded { blocks: 0, packs: 0, bytes: 0, requests: 0 };
    if ids.is_empty() {
        return Ok(out);
    }
    let bytes_total: u64 = ids.iter().map(|id| vol.blocks().stored_len(id).ok().flatten().unwrap_or(0)).sum();
    let prog = Mutex::new(Progress { blocks_total: ids.len() as u64, bytes_total, ..Default::default() });
    let (tx, rx) = crossbeam_channel::bounded::<Job>(PARALLEL * 2);
    let first_error: Mutex<Option<SyncError>> = Mutex::new(None);
    // blocks, packs, bytes, blocks uploaded alone
    let counts = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..PARALLEL {
            let rx = rx.clone();
            let (first_error, counts, prog) = (&first_error, &counts, &prog);
            s.spawn(move || {
                for job in rx {
                    if first_error.lock().expect("lock").is_some() {
                        continue;
                    }
                    if let Err(e) = run_job(vol, remote, job, counts, prog, progress) {
                        first_error.lock().expect("lock").get_or_insert(e);
                    }
                }
            });
        }
        drop(rx);
        let mut pack: Vec<(BlockId, Vec<u8>)> = Vec::new();
        let mut pack_len = 0;
        for id in ids {
            if first_error.lock().expect("lock").is_some() {
                break;
            }
            let frame = vol.blocks().frame(id)?;
            // Verify before it leaves: a corrupt local block must not become the store's copy.
            hybridfs_blocks::decode(id, &frame)?;
            if frame.len() >= PACK_SMALLER_THAN {
                let _ = tx.send(Job::Block(*id, frame));
                continue;
            }
            pack_len += frame.len();
            pack.push((*id, frame));
            if pack_len >= PACK_BYTES {
                let _ = tx.send(Job::Pack(std::mem::take(&mut pack)));
                pack_len = 0;
            }
        }
        if !pack.is_empty() {
            let _ = tx.send(Job::Pack(pack));
        }
        drop(tx);
        Ok(())
    })?;
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    out.blocks = counts[0].load(Ordering::Relaxed);
    out.packs = counts[1].load(Ordering::Relaxed);
    out.bytes = counts[2].load(Ordering::Relaxed);
    out.requests = out.packs + counts[3].load(Ordering::Relaxed);
    Ok(out)
}

fn run_job(
    vol: &Volume,
    remote: &Remote,
    job: Job,
    counts: &[AtomicU64; 4],
    prog: &Mutex<Progress>,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<()> {
    let (marks, bytes, plain): (Vec<Mutation>, u64, u64) = match job {
        Job::Block(id, frame) => {
            let plain = frame.len() as u64;
            let frame = remote.seal_frame(&id, frame);
            remote.store.put(&remote.block_key(&id), &frame, Cond::None)?;
            counts[3].fetch_add(1, Ordering::Relaxed);
            (vec![Mutation::MarkPushed { id, packed: None }], frame.len() as u64, plain)
        }
        Job::Pack(frames) => {
            let plain = frames.iter().map(|f| f.1.len() as u64).sum();
            let mut body = Vec::with_capacity(plain as usize);
            let mut entries = Vec::new();
            for (id, f) in frames {
                let f = remote.seal_frame(&id, f);
                entries.push((id, body.len() as u64, f.len() as u64));
                body.extend_from_slice(&f);
            }
            let pack = BlockId(*blake3::hash(&body).as_bytes());
            remote.store.put(&remote.pack_key(&pack), &body, Cond::None)?;
            counts[1].fetch_add(1, Ordering::Relaxed);
            let marks = entries
                .iter()
                .map(|(id, offset, len)| Mutation::MarkPushed { id: *id, packed: Some((pack, *offset, *len)) })
                .collect();
            (marks, body.len() as u64, plain)
        }
    };
    // Recorded as uploads finish, so an interrupted push resumes without them.
    hybridfs_core::crashpoint("push-after-block");
    let n = marks.len() as u64;
    vol.meta().apply(marks, false)?;
    counts[0].fetch_add(n, Ordering::Relaxed);
    counts[2].fetch_add(bytes, Ordering::Relaxed);
    let mut p = prog.lock().expect("lock");
    p.blocks_done += n;
    p.bytes_done += plain;
    progress(&p);
    Ok(())
}

/// What `fsck --remote` found in the store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoteCheck {
    pub branch: String,
    pub layers: u64,
    pub blocks: u64,
    pub verified: u64,
    /// One line per problem: a missing or bad object, naming the block.
    pub problems: Vec<String>,
}

/// Check that every block the layers of `branch` name is in the store; with `verify`, also
/// download and hash each one (invariant 5).
pub fn check_remote(remote: &Remote, branch: &str, verify: bool) -> Result<RemoteCheck> {
    let mut report = RemoteCheck { branch: branch.to_string(), ..Default::default() };
    let Some((head, _)) = remote.head(branch)? else {
        report.problems.push(format!("branch {branch} has no head in {}", remote.store.describe()));
        return Ok(report);
    };
    let mut packed: BTreeMap<BlockId, (BlockId, u64, u64)> = BTreeMap::new();
    let mut named: BTreeSet<BlockId> = BTreeSet::new();
    for (b, s) in clone::layer_chain(remote, branch, head.seq)? {
        let layer = match remote.layer(&b, s) {
            Ok(l) => l,
            Err(e) => {
                report.problems.push(format!("layer {s} of branch {b}: {e}"));
                continue;
            }
        };
        report.layers += 1;
        for p in layer.packed {
            packed.insert(p.id, (p.pack, p.offset, p.len));
        }
        for r in layer.records {
            if let (Key::Extent(..), Some(v)) = (&r.key, &r.value) {
                if let Ok(Extent::Sealed { id, .. }) = bincode::deserialize::<Extent>(v) {
                    named.insert(id);
                }
            }
        }
    }
    report.blocks = named.len() as u64;
    for id in &named {
        let (key, range) = match packed.get(id) {
            Some((pack, offset, len)) => (remote.pack_key(pack), Some((*offset, *len))),
            None => (remote.block_key(id), None),
        };
        if !verify {
            match remote.store.head(&key)? {
                None => report.problems.push(format!("block {id}: object {key} is missing")),
                Some(m) if range.is_some_and(|(o, l)| o + l > m.len) => {
                    report.problems.push(format!("block {id}: pack {key} is shorter ({} bytes) than its index says", m.len))
                }
                Some(_) => {}
            }
            continue;
        }
        match remote.fetch_frame(id, packed.get(id).copied()) {
            Ok(_) => report.verified += 1,
            Err(SyncError::Store(StoreError::NotFound { .. })) => report.problems.push(format!("block {id}: object {key} is missing")),
            Err(e) => report.problems.push(format!("block {id} in {key}: {e}")),
        }
    }
    Ok(report)
}
