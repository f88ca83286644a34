//! Merge a branch from the store into the home volume (issue 10; invariant 6).
//!
//! # One merge
//!
//! 1. Read the branch's head and its chain of layers ([`Remote::chain`], fork points
//!    followed). The **base** is the parent layer the branch forked from (the first merge of
//!    the branch) or the branch's layer the last merge of it took (later merges: incremental).
//!    The parent branch must be the one this volume pushes: the fork layer's `epoch` is then
//!    an epoch of this volume, and **ours** changed exactly the records its change journal lists
//!    after it.
//! 2. Apply the base layers to a scratch in-memory metadata store — only the records of the
//!    inodes the branch's newer layers or home's journal since the fork name, and of those
//!    directories' entries — end its epoch, then apply the branch's newer layers: **theirs**
//!    is its live tree, the base is its tree at the ended epoch, and its change journal lists
//!    what theirs changed. Memory follows the change; every layer is still downloaded.
//! 3. Plan with the pure planner ([`hybridfs_core::merge::plan`]). `dry_run` stops here.
//!    A plan the planner refused (mass delete) stops here too, with nothing applied.
//! 4. Take the `pre-merge-<branch>-<UTC>` snapshot (it seals staged data), then apply the
//!    plan in **one** synced metadata batch, together with the locations of the branch's blocks
//!    (the `pushed` family: the home volume fetches them from the store on first read, and its
//!    next push does not upload them again), the branch's new merge point and the merge
//!    record. A crash leaves the tree before or after the whole merge.
//!
//! Merge records are kept in the metadata store's named state: `merge/log` (the list) and
//! `merge/record/<id>` (each report); `merge/<branch>` is the branch's merge point. These are
//! not versioned, so undoing a merge (every record changed since its pre-merge snapshot set
//! back to it, [`undo`]) keeps them.
//!
//! Online: a mounted volume merges in its mount process (the CLI sends the request over the
//! control socket). Step 4 then runs under the volume's gate and namespace lock
//! ([`Volume::apply_quiesced`]): no write lands between planning and applying, readers see the
//! tree before or after. Files it changes must be closed: the attempt is repeated while
//! one is open, for up to [`OPEN_FILES_WAIT`], then refused. The kernel's
//! caches are then invalidated for every changed entry and inode ([`KernelCache`]).

use crate::{forkbase, LayerRef, Remote, Result, SyncError};
use hybridfs_core::merge::collect::{self, View};
use hybridfs_core::merge::{apply, names, Conflict, ConflictKind, KernelCache, Link, MergeOptions, MergePlan, Policy};
use hybridfs_core::meta::{Key, MetaStore, Mutation, LIVE};
use hybridfs_core::types::{BlockId, Extent, Ino, SnapshotInfo, ROOT_INO};
use hybridfs_core::{FsError, Volume};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Records applied to the scratch store per batch.
const BATCH: usize = 4096;

/// Blocks a merge fetches at once (`prefetch`).
const FETCHERS: usize = 8;

/// How long a merge waits for the files it changes to be closed (readers close theirs
/// between reads) before it gives up, nothing applied.
pub const OPEN_FILES_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What to merge and how.
#[derive(Clone, Debug)]
pub struct MergeRequest {
    pub branch: String,
    pub policy: Policy,
    pub dry_run: bool,
    pub confirm: bool,
    pub max_delete_pct: f64,
    /// Fetch the branch's blocks during the merge, before it applies (otherwise they are
    /// fetched on first read, unless the volume's block store cannot fetch by itself).
    pub prefetch: bool,
}

impl Default for MergeRequest {
    fn default() -> Self {
        MergeRequest { branch: String::new(), policy: Policy::KeepBoth, dry_run: false, confirm: false, max_delete_pct: 50.0, prefetch: false }
    }
}

/// One change taken from the branch, by path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeLine {
    pub path: String,
    pub what: String,
}

/// One conflict, by path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictLine {
    pub kind: ConflictKind,
    /// The path that kept its place.
    pub path: String,
    /// The conflict copy or renamed entry, if one was made.
    pub copy: Option<String>,
    pub detail: String,
}

/// The report of one merge (kept: `merge log`, `merge show`).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct MergeRecord {
    /// 0 for a dry run or a merge that had nothing to do (not kept).
    pub id: u64,
    pub branch: String,
    /// Unix seconds.
    pub at: i64,
    pub policy: String,
    pub dry_run: bool,
    /// Nothing to merge: the branch's head is the last merge point.
    pub up_to_date: bool,
    pub applied: bool,
    /// The base: `BRANCH@SEQ`.
    pub base: String,
    /// The branch layer merged.
    pub theirs_seq: u64,
    pub pre_merge: Option<String>,
    pub changes: Vec<ChangeLine>,
    pub conflicts: Vec<ConflictLine>,
    /// Blocks the merged tree takes from the branch and this node does not hold (fetched on
    /// first read), and their bytes.
    pub blocks_to_fetch: u64,
    pub bytes_to_fetch: u64,
    /// Blocks fetched during the merge (`prefetch`, or a block store that cannot fetch by
    /// itself); 0: the merged tree fetches what it takes from the branch on first read.
    #[serde(default)]
    pub blocks_fetched: u64,
    pub records_read: u64,
    /// Things the merge could not settle and says so (the branch's node holds unpushed
    /// changes: [`crate::nodestate`]).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The home snapshot (fork base) the base was read from by key; None: from the parent
    /// branch's layers in the store (the fork base was gone).
    #[serde(default)]
    pub base_snapshot: Option<String>,
    pub seconds: f64,
    /// Set by `merge undo`: the snapshot holding the state the undo replaced.
    pub undone: Option<String>,
    /// The branch's merge point before this merge (restored by an undo).
    #[serde(default)]
    pub previous_point: Option<MergePoint>,
}

/// Where the last merge of a branch left off.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MergePoint {
    pub seq: u64,
    pub layer: LayerRef,
    /// The home epoch the branch forked at (ours' changes are the journal after it).
    pub fork_epoch: u64,
    pub fork: String,
}

/// One line of `merge log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeSummary {
    pub id: u64,
    pub branch: String,
    pub at: i64,
    pub theirs_seq: u64,
    pub changes: u64,
    pub conflicts: u64,
    pub pre_merge: Option<String>,
    pub undone: Option<String>,
}

/// The named state holding the merge log (present once a volume merged a branch).
pub const LOG: &str = "merge/log";

fn point_name(branch: &str) -> String {
    format!("merge/{branch}")
}

fn record_name(id: u64) -> String {
    format!("merge/record/{id:010}")
}

fn load_json<T: serde::de::DeserializeOwned>(meta: &MetaStore, name: &str) -> Result<Option<T>> {
    match meta.meta_value(name)? {
        Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("{name}: {e}")))?)),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(name: &str, v: &T) -> Mutation {
    Mutation::SetMeta { name: name.to_string(), value: Some(serde_json::to_vec(v).expect("plain data")) }
}

/// Past merges, oldest first.
pub fn log(meta: &MetaStore) -> Result<Vec<MergeSummary>> {
    Ok(load_json(meta, LOG)?.unwrap_or_default())
}

/// The report of merge `id`.
pub fn show(meta: &MetaStore, id: u64) -> Result<MergeRecord> {
    load_json(meta, &record_name(id))?.ok_or_else(|| SyncError::Volume(FsError::BadInput(format!("no merge {id} in the log"))))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn bad(msg: String) -> SyncError {
    SyncError::Volume(FsError::BadInput(msg))
}

/// The branch's layers split at the base, read into a scratch store.
struct Theirs {
    meta: MetaStore,
    base_epoch: u64,
    base: String,
    point: MergePoint,
    /// Where each block the kept records name is in the store (None: alone).
    located: BTreeMap<BlockId, Option<(BlockId, u64, u64)>>,
    records: u64,
    /// The home snapshot the base values were read from (None: from the store's layers).
    base_snapshot: Option<String>,
}

/// Where the base values of the records the merge reads come from.
enum BaseSource {
    /// This volume's snapshot at the fork epoch ([`forkbase`]): read by key, O(changes).
    Home(SnapshotInfo),
    /// The parent branch's layers up to the fork point, downloaded whole: O(pushed history).
    Store(Vec<crate::ChainLink>),
}

/// Read the branch from its base to its head into a scratch store.
fn read_theirs(vol: &Volume, remote: &Remote, branch: &str, head: LayerRef, last: Option<&MergePoint>) -> Result<Theirs> {
    let own = remote.chain(branch, head.clone(), 1, false)?;
    let split = match last {
        Some(p) => own.iter().position(|l| l.r == p.layer).map(|i| i + 1).ok_or_else(|| {
            SyncError::Corrupt(format!("branch {branch} no longer holds layer {} that the last merge took: its history was replaced", p.seq))
        })?,
        None => 0,
    };
    // Theirs' layers first: with home's journal since the fork they name every inode the
    // merge can touch, and only those inodes' records (and their directories' entries) are
    // read at the base: memory and reads follow the change, not the volume.
    let mut theirs_layers = Vec::new();
    for link in &own[split..] {
        theirs_layers.push(remote.open_link(link)?);
    }
    let first = match (split, theirs_layers.first()) {
        (0, Some(l)) => (l.parent.clone(), l.parent_ref.clone()),
        _ => own.first().map(|l| remote.open_link(l)).transpose()?.map_or((None, None), |l| (l.parent, l.parent_ref)),
    };
    let (Some((fork_branch, fork_seq)), Some(fork_ref)) = first else {
        return Err(bad(format!("branch {branch} is not a fork of a branch of this volume (its first layer names no parent)")));
    };
    let home_base = match last {
        Some(p) => forkbase::at_epoch(vol, p.fork_epoch)?,
        None => forkbase::find(vol, &fork_branch, &fork_ref.key)?,
    };
    let (source, fork_epoch) = match home_base {
        Some(s) => {
            let epoch = s.epoch;
            (BaseSource::Home(s), epoch)
        }
        None => {
            let links = remote.chain(&fork_branch, fork_ref.clone(), 1, true)?;
            let fork_layer = match links.last() {
                Some(l) => remote.open_link(l)?,
                None => return Err(SyncError::Corrupt(format!("branch {branch} forks from layer {fork_seq} of {fork_branch}, which has no layers"))),
            };
            let pushed = crate::load_state(vol, &fork_branch)?;
            // An adopted branch (`clone --adopt`): its layers up to the adopted one carry the
            // lost home's epochs, not this volume's; only the adopted layer has one here (the
            // import's), and an older fork point has no base on this volume at all.
            let adopted_epoch = match pushed.adopted {
                Some((seq, _)) if fork_seq < seq => {
                    return Err(bad(format!(
                        "branch {branch} forks from layer {fork_seq} of branch {fork_branch}, older than layer {seq} this volume adopted (clone --adopt): the base of its merge (layer {fork_seq} as the lost home held it, with what that home changed since) is not on this volume, and a merge would take this volume's changes for the wrong ones; nothing was merged. Clone branch {branch} as a volume of its own and copy its changes over by hand"
                    )));
                }
                Some((seq, epoch)) if fork_seq == seq => Some(epoch),
                _ => None,
            };
            let fork_epoch = adopted_epoch.unwrap_or(fork_layer.epoch);
            if pushed.seq < fork_seq || fork_epoch > vol.epoch() {
                return Err(bad(format!(
                    "branch {branch} forks from layer {fork_seq} of branch {fork_branch}, which this volume did not push (it pushed {fork_branch} to layer {}): merge it on the volume that pushes {fork_branch}",
                    pushed.seq
                )));
            }
            (BaseSource::Store(links), last.map_or(fork_epoch, |p| p.fork_epoch))
        }
    };
    let mut owners: BTreeSet<Ino> = [ROOT_INO].into();
    for layer in &theirs_layers {
        owners.extend(layer.records.iter().map(|r| owner(&r.key)));
    }
    vol.meta().changes(fork_epoch, LIVE, &mut |c| {
        owners.insert(owner(&c.key));
        Ok(true)
    })?;
    let meta = MetaStore::memory();
    // Where every block the kept records name is in the store: a merged file may take a base
    // version whose blocks home no longer holds (deleted at home, modified on the branch).
    // Home's own base records name blocks it holds or pushed (its `pushed` family knows).
    let mut located = BTreeMap::new();
    let mut records = 0;
    let base_snapshot = match source {
        BaseSource::Home(s) => {
            records += copy_base(vol.meta(), s.epoch, &owners, &meta)?;
            Some(s.name)
        }
        BaseSource::Store(links) => {
            for link in &links {
                records += apply_kept(&meta, remote.open_link(link)?, &owners, &mut located)?;
            }
            None
        }
    };
    for link in &own[..split] {
        records += apply_kept(&meta, remote.open_link(link)?, &owners, &mut located)?;
    }
    let base_epoch = end_base(&meta)?;
    for layer in theirs_layers {
        locate(&layer, &mut located)?;
        records += layer.records.len() as u64;
        apply_records(&meta, layer.records.into_iter())?;
    }
    let base = match split {
        0 => format!("{fork_branch}@{fork_seq}"),
        i => format!("{branch}@{}", own[i - 1].r.seq),
    };
    let point = MergePoint {
        seq: head.seq,
        layer: head,
        fork_epoch,
        fork: last.map_or_else(|| format!("{fork_branch}@{fork_seq}"), |p| p.fork.clone()),
    };
    Ok(Theirs { meta, base_epoch, base, point, located, records, base_snapshot })
}

/// Apply the records of a base layer that belong to `owners` (counted: all it holds).
fn apply_kept(meta: &MetaStore, mut layer: crate::Layer, owners: &BTreeSet<Ino>, located: &mut BTreeMap<BlockId, Option<(BlockId, u64, u64)>>) -> Result<u64> {
    let read = layer.records.len() as u64;
    layer.records.retain(|r| owners.contains(&owner(&r.key)));
    locate(&layer, located)?;
    apply_records(meta, layer.records.into_iter())?;
    Ok(read)
}

/// Copy into `into` every record of the `owners` at epoch `at` of `home` (an inode, its
/// extents and xattrs, a directory's entries): point lookups and one range per inode, never
/// a scan of the volume. Returns the records copied.
fn copy_base(home: &MetaStore, at: u64, owners: &BTreeSet<Ino>, into: &MetaStore) -> Result<u64> {
    let mut copied = 0;
    let mut batch = Vec::with_capacity(BATCH);
    for &ino in owners {
        let Some(inode) = home.get_inode_at(ino, at)? else { continue };
        let mut keys = vec![Key::Inode(ino)];
        if inode.kind == hybridfs_core::types::Kind::Dir {
            for e in home.readdir_at(ino, 0, usize::MAX, at)? {
                keys.push(Key::Dentry(ino, e.name));
                keys.push(Key::Cookie(ino, e.cookie));
            }
        }
        keys.extend(home.extents_at(ino, 0, at)?.into_iter().map(|(b, _)| Key::Extent(ino, b)));
        keys.extend(home.xattr_names_at(ino, at)?.into_iter().map(|n| Key::Xattr(ino, n)));
        // In the form a push published them (a small file's inline bytes as the block
        // published for them), as the branch's layers and the store's base have them.
        for key in keys {
            for p in hybridfs_core::record::published(home, &key, at)? {
                if let Some(value) = p.value {
                    batch.push(Mutation::Raw { key: p.key, value: Some(value) });
                    copied += 1;
                }
            }
            if batch.len() >= BATCH {
                into.apply(std::mem::take(&mut batch), false)?;
            }
        }
    }
    into.apply(batch, false)?;
    Ok(copied)
}

/// The inode a record belongs to (a directory's for entries).
fn owner(key: &Key) -> Ino {
    match key {
        Key::Inode(i) | Key::Extent(i, _) | Key::Xattr(i, _) | Key::Dentry(i, _) | Key::Cookie(i, _) => *i,
    }
}

/// Note where the sealed blocks a layer's records name are in the store.
fn locate(layer: &crate::Layer, located: &mut BTreeMap<BlockId, Option<(BlockId, u64, u64)>>) -> Result<()> {
    located.extend(layer.located()?);
    Ok(())
}

/// Write layer records into the scratch store, a batch at a time.
fn apply_records(meta: &MetaStore, records: impl Iterator<Item = crate::Record>) -> Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    for r in records {
        batch.push(Mutation::Raw { key: r.key, value: r.value });
        if batch.len() >= BATCH {
            meta.apply(std::mem::take(&mut batch), false)?;
        }
    }
    meta.apply(batch, false)?;
    Ok(())
}

/// End the base's epoch in the scratch store, with a snapshot there so that the versions it
/// reads stay (a version is kept in history only while a snapshot needs it).
fn end_base(meta: &MetaStore) -> Result<u64> {
    let epoch = meta.epoch();
    let snap = SnapshotInfo { id: 1, name: "base".into(), epoch, created: now(), files: 0, bytes: 0, holds: Vec::new() };
    meta.apply(vec![Mutation::PutSnapshot(snap), Mutation::SetEpoch(epoch + 1)], false)?;
    Ok(epoch)
}

/// Merge `req.branch` of `remote` into the home volume `vol`, mounted (give the mount's
/// `kernel` caches, invalidated for every changed entry and inode) or not.
pub fn merge(vol: &Volume, remote: &Remote, req: &MergeRequest, kernel: Option<&dyn KernelCache>) -> Result<MergeRecord> {
    merge_with(vol, remote, req, kernel, &|_| {})
}

/// [`merge`], reporting the progress of the blocks it fetches (`prefetch`).
pub fn merge_with(
    vol: &Volume,
    remote: &Remote,
    req: &MergeRequest,
    kernel: Option<&dyn KernelCache>,
    progress: &(dyn Fn(&crate::Progress) + Sync),
) -> Result<MergeRecord> {
    let started = std::time::Instant::now();
    let branch = req.branch.as_str();
    let home = vol.meta();
    let (head, _) = remote.head(branch)?.ok_or_else(|| bad(format!("volume {} has no branch {branch} in {}", remote.volume, remote.store.describe())))?;
    let last: Option<MergePoint> = load_json(home, &point_name(branch))?;
    let mut record = MergeRecord {
        branch: branch.to_string(),
        at: now(),
        policy: serde_json::to_value(req.policy).expect("plain").as_str().unwrap_or_default().to_string(),
        dry_run: req.dry_run,
        theirs_seq: head.seq,
        previous_point: last.clone(),
        ..Default::default()
    };
    record.warnings.extend(node_warning(remote, branch, &head));
    if last.as_ref().is_some_and(|p| p.layer == head.layer_ref()) {
        record.up_to_date = true;
        record.base = format!("{branch}@{}", head.seq);
        return Ok(record);
    }
    let theirs = read_theirs(vol, remote, branch, head.layer_ref(), last.as_ref())?;
    record.base = theirs.base.clone();
    record.records_read = theirs.records;
    record.base_snapshot = theirs.base_snapshot.clone();
    if !req.dry_run {
        let name = unique_snapshot(vol, &format!("pre-merge-{}-{}", branch.replace('/', "-"), hybridfs_core::volume::snapshot::chrono_stamp()))?;
        vol.snapshot_create(&name)?;
        record.pre_merge = Some(name);
        hybridfs_core::crashpoint("merge-after-snapshot");
    }
    if req.dry_run {
        let plan = plan_merge(home, &theirs, req, branch)?;
        count_fetch(vol, &mut record, &plan);
        if let Some(why) = &plan.refused {
            return Err(SyncError::Conflict(why.clone()));
        }
        describe(&mut record, &plan, &[home, &theirs.meta]);
        record.seconds = started.elapsed().as_secs_f64();
        return Ok(record);
    }
    if req.prefetch || !vol.blocks().fetches() {
        // Only metadata moves by default: the merged tree references the branch's blocks in
        // the store (the `pushed` rows of the apply batch) and the block store fetches them,
        // verified, on first read. Asked to, or when the block store cannot fetch by itself
        // (its store could not be opened when it was), they come now, before any reader can
        // reach them; a failure here applies nothing.
        record.blocks_fetched = fetch_blocks(vol, remote, &theirs.located, progress)?;
    }
    // Planned and applied with no writer in between (the gate and the namespace lock).
    let mut planned: Option<MergePlan> = None;
    let mut changed = (Default::default(), Default::default());
    vol.apply_quiesced(OPEN_FILES_WAIT, &mut |meta| {
        let plan = plan_merge(meta, &theirs, req, branch).map_err(|e| FsError::Meta(e.to_string()))?;
        if let Some(why) = &plan.refused {
            return Err(FsError::Refused(why.clone()));
        }
        let mut batch = apply::mutations(meta, &plan)?;
        changed = apply::touched_by(&batch);
        for id in apply::new_blocks(&plan) {
            if meta.pushed(&id)?.is_none() {
                batch.push(Mutation::MarkPushed { id, packed: theirs.located.get(&id).copied().flatten() });
            }
        }
        let mut entries = log(meta).map_err(|e| FsError::Meta(e.to_string()))?;
        record.id = entries.last().map_or(1, |e| e.id + 1);
        record.applied = true;
        count_fetch(vol, &mut record, &plan);
        batch.push(put_json(&point_name(branch), &theirs.point));
        // The record with paths needs the merged tree: written again right after (a crash in
        // between leaves the merge, its log line and a record without paths).
        entries.push(summary(&record, &plan));
        batch.push(put_json(LOG, &entries));
        batch.push(put_json(&record_name(record.id), &record));
        let inodes = changed.1.clone();
        planned = Some(plan);
        Ok((batch, inodes))
    })?;
    hybridfs_core::crashpoint("merge-after-apply");
    if let Some(base) = &theirs.base_snapshot {
        // The branch's next (incremental) merge reads this base again.
        forkbase::hold(vol, base, branch, true)?;
    }
    if let Some(k) = kernel {
        apply::invalidate(k, &changed.0, &changed.1);
    }
    let plan = planned.expect("applied");
    describe(&mut record, &plan, &[home, &theirs.meta]);
    record.seconds = started.elapsed().as_secs_f64();
    home.apply(vec![put_json(&record_name(record.id), &record)], true)?;
    tracing::info!(branch, id = record.id, changes = record.changes.len(), conflicts = record.conflicts.len(), "merged");
    Ok(record)
}

/// The warning when the branch's node reported changes its head does not hold (a state that
/// cannot be read is said too: the merge goes on, it does not know).
fn node_warning(remote: &Remote, branch: &str, head: &crate::Head) -> Option<String> {
    match crate::nodestate::read(remote, branch) {
        Ok(Some(state)) => crate::nodestate::unpushed_warning(branch, head, &state),
        Ok(None) => None,
        Err(e) => Some(format!("read the reported state of branch {branch}'s node: {e}")),
    }
}

/// Fetch (verified) into the volume's own blocks those the branch's new layers name that
/// this node holds no copy of, [`FETCHERS`] at a time.
fn fetch_blocks(
    vol: &Volume,
    remote: &Remote,
    located: &BTreeMap<BlockId, Option<(BlockId, u64, u64)>>,
    progress: &(dyn Fn(&crate::Progress) + Sync),
) -> Result<u64> {
    let mut todo = Vec::new();
    for (id, packed) in located {
        if !vol.blocks().is_local(id)? {
            todo.push((*id, *packed));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let prog = std::sync::Mutex::new(crate::Progress { blocks_total: todo.len() as u64, op: "fetch".into(), ..Default::default() });
    let fetch_one = |id: &BlockId, packed: Option<(BlockId, u64, u64)>| -> Result<u64> {
        // `fetch_frame` checks the frame against the id; `put` stores what it decoded and
        // names it by its hash again.
        let frame = remote.fetch_frame(id, packed)?;
        let got = vol.blocks().put(&hybridfs_blocks::decode(id, &frame)?)?;
        if got != *id {
            return Err(SyncError::Corrupt(format!("block {id} from the store hashes to {got}")));
        }
        Ok(frame.len() as u64)
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..FETCHERS.min(todo.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((id, packed)) = todo.get(i) else { return Ok(()) };
                        let bytes = fetch_one(id, *packed).inspect_err(|_| next.store(todo.len(), std::sync::atomic::Ordering::Relaxed))?;
                        let mut p = prog.lock().unwrap_or_else(|p| p.into_inner());
                        p.blocks_done += 1;
                        p.bytes_done += bytes;
                        progress(&p);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(SyncError::Corrupt("a block fetcher panicked".into()))))
    })?;
    vol.blocks().sync()?;
    Ok(todo.len() as u64)
}

/// Blocks and bytes the merged tree takes from the branch that this node does not hold.
fn count_fetch(vol: &Volume, record: &mut MergeRecord, plan: &MergePlan) {
    for id in apply::new_blocks(plan) {
        if !vol.blocks().is_local(&id).unwrap_or(false) {
            record.blocks_to_fetch += 1;
            record.bytes_to_fetch += block_len(plan, &id);
        }
    }
}

fn plan_merge(home: &MetaStore, theirs: &Theirs, req: &MergeRequest, branch: &str) -> Result<MergePlan> {
    let ours_keys = collect::touched(home, theirs.point.fork_epoch, LIVE)?;
    let theirs_keys = collect::touched(&theirs.meta, theirs.base_epoch, LIVE)?;
    let base = View { meta: &theirs.meta, epoch: theirs.base_epoch };
    let input = collect::input(base, collect::live(home), collect::live(&theirs.meta), &ours_keys, &theirs_keys)?;
    let opts = MergeOptions {
        branch: branch.to_string(),
        stamp: names::stamp(now()),
        policy: req.policy,
        max_delete_pct: req.max_delete_pct,
        confirm: req.confirm,
        first_ino: collect::first_free_ino(home)?,
    };
    Ok(collect::plan_home(&input, home, &opts)?)
}

fn unique_snapshot(vol: &Volume, name: &str) -> Result<String> {
    let mut candidate = name.to_string();
    for n in 2.. {
        if vol.snapshot(&candidate).is_err() {
            break;
        }
        candidate = format!("{name}-{n}");
    }
    Ok(candidate)
}

/// The length of block `id` as an extent of the plan names it.
fn block_len(plan: &MergePlan, id: &BlockId) -> u64 {
    let nodes = plan.nodes.values().flatten().chain(plan.copies.iter().map(|c| &c.node));
    nodes
        .flat_map(|n| n.content.extents.iter())
        .find_map(|(_, e)| match e {
            Extent::Sealed { id: i, len } if i == id => Some(u64::from(*len)),
            _ => None,
        })
        .unwrap_or(0)
}

/// A path for `link`: in the first store whose tree holds its directory.
fn path_in(stores: &[&MetaStore], link: &Link) -> String {
    for m in stores {
        if link.0 == hybridfs_core::types::ROOT_INO || m.get_inode(link.0).ok().flatten().is_some() {
            return apply::path_of(m, link);
        }
    }
    apply::path_of(stores[0], link)
}

fn conflict_line(c: &Conflict, stores: &[&MetaStore]) -> ConflictLine {
    ConflictLine {
        kind: c.kind,
        path: c.at.as_ref().map_or_else(|| format!("<inode {}>", c.ino), |l| path_in(stores, l)),
        copy: c.copy.as_ref().map(|(_, l)| path_in(stores, l)),
        detail: c.detail.clone(),
    }
}

/// Fill the record's lines by path.
fn describe(record: &mut MergeRecord, plan: &MergePlan, stores: &[&MetaStore]) {
    record.conflicts = plan.conflicts.iter().map(|c| conflict_line(c, stores)).collect();
    record.changes = plan
        .taken
        .iter()
        .map(|(ino, what)| {
            let link = plan.nodes.get(ino).cloned().flatten().or_else(|| plan.ours.get(ino).cloned().flatten()).and_then(|n| n.links.into_iter().next());
            let path = link.map_or_else(|| format!("<inode {ino}>"), |l| path_in(stores, &l));
            ChangeLine { path, what: what.clone() }
        })
        .collect();
    for c in &plan.copies {
        if let Some(l) = c.node.links.iter().next() {
            record.changes.push(ChangeLine { path: path_in(stores, l), what: format!("conflict copy of the branch's version of inode {}", c.from) });
        }
    }
}

fn summary(record: &MergeRecord, plan: &MergePlan) -> MergeSummary {
    MergeSummary {
        id: record.id,
        branch: record.branch.clone(),
        at: record.at,
        theirs_seq: record.theirs_seq,
        changes: (plan.taken.len() + plan.copies.len()) as u64,
        conflicts: plan.conflicts.len() as u64,
        pre_merge: record.pre_merge.clone(),
        undone: None,
    }
}

/// Undo merge `id` (None: the newest one not undone): the volume, mounted (give the mount's
/// `kernel` caches) or not, returns to the merge's pre-merge snapshot. The state it replaces
/// is kept first as snapshot `pre-undo-<UTC>` (an undo loses nothing either); the branch's
/// merge point goes back, so merging the branch again redoes the merge. Like the merge, it is
/// one batch under the volume's locks, and waits for the files it changes to be closed.
pub fn undo(vol: &Volume, id: Option<u64>, kernel: Option<&dyn KernelCache>) -> Result<MergeRecord> {
    let home = vol.meta();
    let mut entries = log(home)?;
    let pos = match id {
        Some(id) => entries.iter().position(|e| e.id == id).ok_or_else(|| bad(format!("no merge {id} in the log")))?,
        None => entries.iter().rposition(|e| e.undone.is_none()).ok_or_else(|| bad("no merge to undo".into()))?,
    };
    if let Some(u) = &entries[pos].undone {
        return Err(bad(format!("merge {} was already undone (the state it replaced is snapshot {u})", entries[pos].id)));
    }
    let mut record = show(home, entries[pos].id)?;
    let pre = record.pre_merge.clone().ok_or_else(|| SyncError::Corrupt(format!("merge {} has no pre-merge snapshot", record.id)))?;
    let target = vol.snapshot(&pre)?.epoch;
    let saved = unique_snapshot(vol, &format!("pre-undo-{}", hybridfs_core::volume::snapshot::chrono_stamp()))?;
    vol.snapshot_create(&saved)?;
    record.undone = Some(saved);
    entries[pos].undone = record.undone.clone();
    let point = match &record.previous_point {
        Some(p) => put_json(&point_name(&record.branch), p),
        None => Mutation::SetMeta { name: point_name(&record.branch), value: None },
    };
    let mut changed = (BTreeSet::new(), BTreeSet::new());
    vol.apply_quiesced(OPEN_FILES_WAIT, &mut |meta| {
        let keys = collect::touched(meta, target, LIVE)?;
        let mut batch = Vec::with_capacity(keys.len() + 3);
        changed = (BTreeSet::new(), BTreeSet::new());
        for key in keys {
            match &key {
                Key::Dentry(p, n) => {
                    changed.0.insert((*p, n.clone()));
                }
                Key::Inode(i) => {
                    changed.1.insert(*i);
                    // Unlinked while open then: an orphan again, purged when nobody holds it.
                    if meta.get_inode_at(*i, target)?.is_some_and(|n| n.nlink == 0) {
                        batch.push(Mutation::PutOrphan(*i));
                    }
                }
                Key::Extent(i, _) | Key::Xattr(i, _) => {
                    changed.1.insert(*i);
                }
                Key::Cookie(..) => {}
            }
            batch.push(Mutation::Restore { key, at: target });
        }
        batch.extend([point.clone(), put_json(LOG, &entries), put_json(&record_name(record.id), &record)]);
        Ok((batch, changed.1.clone()))
    })?;
    if let Some(k) = kernel {
        apply::invalidate(k, &changed.0, &changed.1);
    }
    if let (None, Some(base)) = (&record.previous_point, &record.base_snapshot) {
        // The branch is unmerged again: its fork base is only kept as the newest pushes' are.
        if vol.snapshot(base).is_ok() {
            forkbase::hold(vol, base, &record.branch, false)?;
        }
    }
    tracing::info!(id = record.id, branch = %record.branch, "merge undone");
    Ok(record)
}
