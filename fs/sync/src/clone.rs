//! Clone: a writable local copy of a branch, built from its layers, data fetched on demand.
//!
//! Only metadata moves up front: the layers of the source branch (and, for a branch that was
//! itself forked, of its parent up to the fork) are applied in order to an empty metadata
//! store, and every block they name is recorded as "in the store" with its location (alone or
//! in a pack). File data comes later, block by block, through [`crate::lazy::LazyStore`].
//!
//! A layer is read as a stream of records and loaded in batches of [`BATCH`], on two
//! threads (one downloads and decodes the layers, at most two batches ahead, the other loads):
//! memory stays bounded by a few batches and one compressed layer, whatever the size of the
//! branch (invariant 7). The new store is filled below the engine's transactions and past its
//! log ([`MetaStore::bulk_load`]: the same rows as [`MetaStore::apply_unlogged`], with the
//! old versions that count read once per batch; with RocksDB, sorted table files ingested
//! whole) and made durable once at the end ([`MetaStore::persist`]), before the clone's state
//! is written with
//! a synced batch: a clone interrupted before that is never taken for a complete one (the
//! caller also builds it in a directory of its own and renames it only when it is done).
//!
//! The clone then writes its own branch: its push state starts at the imported epoch with the
//! source as parent, so its first push carries only its own changes and names its fork point.
//!
//! # Adopting a branch ([`import_adopting`], `hybridctl clone --adopt`)
//!
//! A home lost with its whole `HYBRIDFS_HOME` leaves its branch (`main`) in the store with no
//! pusher: a plain clone of it cannot push it (its push would be refused as moved). An
//! **adopting** clone continues the branch's chain instead: its push state is the head it
//! cloned (layer `seq`, the head's ETag, the exact layer), so its next push names that layer as
//! the one before it and moves the head with `If-Match` on the ETag it cloned (another writer
//! that moved the head in between still makes it fail, invariant 4). Its new files take the
//! home's inode range (the numbers after the imported ones), and the imported tree is kept as
//! a snapshot `push-BRANCH-SEQ` recorded as the fork base of layer `seq` ([`crate::forkbase`]):
//! a branch forked at the adopted head merges into the new home as into the old one. A branch
//! forked at an older layer has no base on this volume (the adopted volume's epochs are not the
//! lost home's): its merge is refused, naming the branch and the layer
//! ([`PushState::adopted`]). Nothing in the store says whether the old pusher is really gone:
//! the operator must be sure (the CLI says so).

use crate::{LayerRef, LayerStream, PushState, Remote, Result, SyncError};
use hybridfs_core::progress::{self, Meter, OnProgress};
use hybridfs_core::meta::{MetaStore, Mutation, Records};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Records applied per metadata batch (and read from a layer at a time). A clone's bulk load
/// uses the same batches as the transactions did: a block referenced in one batch and no
/// more in a later one goes on the free list either way.
pub const BATCH: usize = 4096;

/// Where a clone stands against its source branch (kept in the metadata store).
#[derive(Serialize, serde::Deserialize, Clone, Debug)]
pub struct CloneBase {
    pub source: String,
    /// The source layer the clone includes.
    pub seq: u64,
    /// Records written after this epoch are this node's, except those of pull epochs.
    pub import_epoch: u64,
    pub pull_epochs: Vec<u64>,
    /// The exact source layer `seq` (the next pull checks that the new layers follow it).
    #[serde(default)]
    pub layer: Option<LayerRef>,
    /// A pull that started applying and did not finish: the head it brings the clone to. The
    /// volume is not opened until a pull finishes it (see [`refuse_if_pulling`]).
    #[serde(default)]
    pub pulling: Option<(u64, LayerRef)>,
}

/// Opening a clone whose pull was interrupted is refused: its tree is part old, part new, and
/// writes made now would land in the pull's epoch.
pub fn refuse_if_pulling(meta: &MetaStore) -> Result<()> {
    match CloneBase::load(meta)? {
        Some(CloneBase { pulling: Some((_, r)), source, .. }) => Err(SyncError::Conflict(format!(
            "a pull of branch {source} (to layer {}) was interrupted: run `hybridctl pull` to finish it before using the volume",
            r.seq
        ))),
        _ => Ok(()),
    }
}

impl CloneBase {
    fn mutation(&self) -> Mutation {
        Mutation::SetMeta { name: "clone".into(), value: Some(serde_json::to_vec(self).expect("plain data")) }
    }

    pub fn load(meta: &MetaStore) -> Result<Option<CloneBase>> {
        match meta.meta_value("clone")? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("clone state: {e}")))?)),
            None => Ok(None),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CloneReport {
    pub volume: String,
    pub source: String,
    pub seq: u64,
    pub layers: u64,
    pub records: u64,
    pub blocks: u64,
    pub block_size: u64,
    pub branch: String,
    pub seconds: f64,
    /// Of `seconds`: walking the chain (headers), applying the records, making them durable.
    pub walk_seconds: f64,
    pub apply_seconds: f64,
    pub persist_seconds: f64,
    /// An adopting clone ([`import_adopting`]): it continues branch `source` from layer `seq`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// What the operator should know (an adopted branch's node reported changes not pushed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Fill the empty `meta` with branch `source` of `remote` as of its head; the clone will push
/// to `branch`.
pub fn import(meta: &MetaStore, remote: &Remote, source: &str, branch: &str) -> Result<CloneReport> {
    import_at(meta, remote, source, None, branch)
}

/// As [`import`], as of layer `at` of `source` (None: its head): an earlier pushed state.
pub fn import_at(meta: &MetaStore, remote: &Remote, source: &str, at: Option<u64>, branch: &str) -> Result<CloneReport> {
    import_with(meta, remote, source, at, branch, Load::Bulk, false, &progress::ignore)
}

/// [`import_at`], reporting to `progress` (op `clone`, in records): the records of the layers
/// applied to the new store of all they hold, and the bytes of the layer objects downloaded
/// of their sum (the walk of the chain, which reads each header, comes first and is not
/// counted).
pub fn import_at_with(meta: &MetaStore, remote: &Remote, source: &str, at: Option<u64>, branch: &str, progress: OnProgress) -> Result<CloneReport> {
    import_with(meta, remote, source, at, branch, Load::Bulk, false, progress)
}

/// Fill the empty `meta` with branch `source` as of its head and make this volume its pusher
/// (see the module doc, "Adopting a branch"): the next push moves `source`'s head from the one
/// cloned. The caller must know that the branch's old pusher is gone.
pub fn import_adopting(meta: &MetaStore, remote: &Remote, source: &str, progress: OnProgress) -> Result<CloneReport> {
    import_with(meta, remote, source, None, source, Load::Bulk, true, progress)
}

/// [`import_at`] through the store's transactions ([`MetaStore::apply_unlogged`] in batches of
/// [`BATCH`]), as clones loaded before [`MetaStore::bulk_load`]: for tests that compare both.
#[doc(hidden)]
pub fn import_at_through_transactions(
    meta: &MetaStore,
    remote: &Remote,
    source: &str,
    at: Option<u64>,
    branch: &str,
) -> Result<CloneReport> {
    import_with(meta, remote, source, at, branch, Load::Transactions, false, &progress::ignore)
}

/// How a clone fills its new store.
#[derive(Clone, Copy)]
enum Load {
    Bulk,
    Transactions,
}

#[allow(clippy::too_many_arguments)]
fn import_with(
    meta: &MetaStore,
    remote: &Remote,
    source: &str,
    at: Option<u64>,
    branch: &str,
    load: Load,
    adopt: bool,
    progress: OnProgress,
) -> Result<CloneReport> {
    let started = Instant::now();
    let (head, head_etag) = remote.head(source)?.ok_or_else(|| {
        SyncError::Corrupt(format!("volume {} has no branch {source} in {}", remote.volume, remote.store.describe()))
    })?;
    let mut links = remote.chain(source, head.layer_ref(), 1, true)?;
    if let Some(seq) = at {
        if seq == 0 || seq > head.seq {
            return Err(SyncError::Conflict(format!("branch {source} has layers 1 to {}, not {seq}", head.seq)));
        }
        let keep = links.iter().position(|l| l.branch == source && l.r.seq == seq).map_or(links.len(), |i| i + 1);
        links.truncate(keep);
    }
    let top = links.last().map(|l| l.r.clone()).ok_or_else(|| SyncError::Corrupt(format!("branch {source} has no layers")))?;
    if at.is_some() && !links.last().expect("not empty").header.complete {
        return Err(SyncError::Conflict(format!(
            "layer {} of branch {source} is a part of a larger push: choose the last layer of a push",
            top.seq
        )));
    }
    let mut report = CloneReport {
        volume: remote.volume.clone(),
        source: source.to_string(),
        seq: top.seq,
        layers: 0,
        records: 0,
        blocks: 0,
        block_size: 0,
        branch: branch.to_string(),
        seconds: 0.0,
        walk_seconds: started.elapsed().as_secs_f64(),
        apply_seconds: 0.0,
        persist_seconds: 0.0,
        adopted: adopt,
        warnings: Vec::new(),
    };
    let applying = Instant::now();
    // Compactions stay off until this process closes the store: turned on again here, they
    // would run before it closes (8 s of a 1,000,000-file clone); the next open (the mount)
    // runs them in the background.
    if let Load::Bulk = load {
        meta.bulk_tuning(true)?;
    }
    // Two threads: this one loads chunks into the store while the other downloads, verifies
    // and decodes the layers ahead of it (at most two chunks ahead: memory stays bounded).
    let mut meter = Meter::new(
        "clone",
        "records",
        links.iter().map(|l| l.header.records).sum(),
        links.iter().map(|l| l.bytes).sum(),
        progress,
    );
    // A chunk's buffers go back to the reader once loaded (at most four chunks exist).
    let (read, loaded) = std::thread::scope(|s| {
        // Each chunk with the bytes of the layers downloaded so far.
        let (to_load, chunks) = std::sync::mpsc::sync_channel::<(Records, u64)>(2);
        let (to_reuse, reusable) = std::sync::mpsc::channel::<Records>();
        let links = &links;
        let reader = s.spawn(move || -> Result<(u64, u64, u64, u64)> {
            let (mut layers, mut records, mut blocks, mut block_size) = (0, 0, 0, 0);
            let downloaded = std::cell::Cell::new(0);
            let mut batch = Records::default();
            let mut flush = |full: &mut Records| -> Result<()> {
                let mut next = reusable.try_recv().unwrap_or_default();
                next.clear();
                to_load
                    .send((std::mem::replace(full, next), downloaded.get()))
                    .map_err(|_| SyncError::Conflict("the clone stopped loading".into()))
            };
            for link in links {
                let mut layer = remote.stream_link(link)?;
                downloaded.set(downloaded.get() + layer.stored_bytes);
                layers += 1;
                block_size = layer.header().block_size;
                let applied = apply_layer(&mut layer, &mut batch, &mut flush)?;
                records += applied.records;
                blocks += applied.blocks;
            }
            flush(&mut batch)?;
            Ok((layers, records, blocks, block_size))
        });
        let mut bytes = 0;
        let mut count = |records: u64, downloaded: u64| {
            meter.add(records, downloaded - bytes);
            bytes = downloaded;
        };
        let loaded = match load {
            Load::Bulk => {
                let mut bulk = meta.bulk_load();
                chunks
                    .into_iter()
                    .try_for_each(|(chunk, downloaded)| {
                        bulk.load_records(&chunk)?;
                        count(chunk.records(), downloaded);
                        // The reader may be gone (it failed or is done): the chunk is dropped.
                        let _ = to_reuse.send(chunk);
                        Ok(())
                    })
                    .and_then(|()| bulk.finish())
            }
            Load::Transactions => chunks.into_iter().try_for_each(|(chunk, downloaded)| {
                meta.apply_unlogged(chunk.to_mutations()?)?;
                count(chunk.records(), downloaded);
                Ok(())
            }),
        };
        (reader.join().expect("the layer reader does not panic"), loaded)
    });
    // A loading error first: it is why the reader stopped.
    loaded?;
    (report.layers, report.records, report.blocks, report.block_size) = read?;
    report.apply_seconds = applying.elapsed().as_secs_f64();
    hybridfs_core::crashpoint("clone-before-persist");
    // Everything applied is durable before the clone's state says it is complete.
    let persisting = Instant::now();
    meta.persist()?;
    report.persist_seconds = persisting.elapsed().as_secs_f64();
    meter.finish();
    // Local writes start in a new epoch; the clone's branch starts at the import.
    let epoch = meta.epoch();
    let base = CloneBase {
        source: source.to_string(),
        seq: top.seq,
        import_epoch: epoch,
        pull_epochs: Vec::new(),
        layer: Some(top.clone()),
        pulling: None,
    };
    let mut batch = vec![base.mutation()];
    let state = if adopt {
        // The branch's own fork point, if it is itself a fork (its first layer names it).
        let first = links.iter().find(|l| l.branch == source && l.r.seq == 1);
        let (parent, parent_ref) = first.map_or((None, None), |l| (l.header.parent.clone(), l.header.parent_ref.clone()));
        match parent {
            // A root branch: the imported tree is the fork base of the adopted layer; new
            // files continue the home range (the numbers after the imported ones).
            None => batch.extend(adopted_fork_base(meta, source, &top, epoch)?),
            // A fork: its node's range (its branch's slot), after the numbers it used.
            Some(_) => batch.push(clone_ino_range(branch)),
        }
        report.warnings.extend(adopt_warnings(remote, source, &head)?);
        PushState {
            seq: top.seq,
            epoch,
            etag: Some(head_etag),
            last: Some(top.clone()),
            parent,
            parent_ref,
            adopted: Some((top.seq, epoch)),
            ..Default::default()
        }
    } else {
        // This clone's new files get numbers no other node uses.
        batch.push(clone_ino_range(branch));
        PushState { epoch, parent: Some((source.to_string(), top.seq)), parent_ref: Some(top.clone()), ..Default::default() }
    };
    batch.push(Mutation::SetMeta { name: crate::state_name(branch), value: Some(serde_json::to_vec(&state).expect("plain data")) });
    batch.push(Mutation::SetEpoch(epoch + 1));
    meta.apply(batch, true)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The inode range of a clone writing `branch` ([`hybridfs_core::volume::clone_ino_range`]).
fn clone_ino_range(branch: &str) -> Mutation {
    Mutation::SetMeta { name: hybridfs_core::volume::INO_RANGE.into(), value: Some(hybridfs_core::volume::clone_ino_range(branch)) }
}

/// The snapshot `push-BRANCH-SEQ` of the imported tree (at `epoch`, the import's) and its
/// record as the fork base of layer `top` of `branch` ([`crate::forkbase`]), as mutations.
fn adopted_fork_base(meta: &MetaStore, branch: &str, top: &LayerRef, epoch: u64) -> Result<Vec<Mutation>> {
    let name = format!("push-{branch}-{}", top.seq);
    let usage = meta.usage()?;
    let snap = hybridfs_core::types::SnapshotInfo {
        id: meta.next_snapshot_id()?,
        name: name.clone(),
        epoch,
        created: crate::now(),
        files: usage.files,
        bytes: usage.bytes,
        holds: Vec::new(),
    };
    let base = crate::forkbase::ForkBase { seq: top.seq, key: top.key.clone(), epoch, snapshot: name };
    Ok(vec![Mutation::PutSnapshot(snap), crate::forkbase::record(branch, &[base])])
}

/// What an adopting clone tells the operator: the old pusher must be gone, and what its node
/// last reported beyond the head (lost with it).
fn adopt_warnings(remote: &Remote, branch: &str, head: &crate::Head) -> Result<Vec<String>> {
    let mut w = vec![format!(
        "this volume now pushes branch {branch} from layer {} on: be sure the home that pushed it is gone (the store cannot tell; if it still runs, whichever of the two pushes second is refused as moved)",
        head.seq
    )];
    if let Some(state) = crate::nodestate::read(remote, branch)? {
        w.extend(crate::nodestate::unpushed_warning(branch, head, &state).map(|x| format!("{x} (lost with that home)")));
    }
    Ok(w)
}


/// What applying one layer did.
struct Applied {
    records: u64,
    blocks: u64,
}

/// Add the records of `layer` to `batch`, decoded in place ([`LayerStream::next_with`]),
/// handing every full batch (of [`BATCH`]) to `flush`: each record as stored, each block it
/// names marked as in the store (with its pack location), an inode unlinked while open on the
/// pushing node as an orphan (purged at the first mount). A record that does not decode is an
/// error naming it.
fn apply_layer(layer: &mut LayerStream, batch: &mut Records, flush: &mut dyn FnMut(&mut Records) -> Result<()>) -> Result<Applied> {
    let mut applied = Applied { records: 0, blocks: 0 };
    let mut base = Vec::new();
    loop {
        let added = layer.next_with(|header, e| -> std::result::Result<(), hybridfs_core::layer::LayerError> {
            if let Some(id) = header.sealed_block_of(&e)? {
                applied.blocks += 1;
                batch.push_pushed(id, e.packed);
            }
            if let (hybridfs_core::layer::KeyRef::Inode(ino), true) = (e.key, header.is_unlinked_inode_of(&e)?) {
                batch.push_orphan(ino);
            }
            applied.records += 1;
            let cf = e.key.base_into(&mut base);
            batch.push_raw(cf, &base, e.value);
            Ok(())
        })?;
        match added {
            None => return Ok(applied),
            Some(r) => r.map_err(|x| layer.bad(x))?,
        }
        if batch.len() >= BATCH {
            flush(batch)?;
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PullReport {
    pub source: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub records: u64,
    pub up_to_date: bool,
}

/// Bring a clone forward to the head of its source branch. Refused, naming them, when records
/// this node changed since the clone were also changed by the new layers: merging both sides is
/// the merge stage's job, and a pull never loses a local change (invariant 6).
///
/// The new records apply in an epoch of their own (so later pulls can tell them from this
/// node's writes), each layer read as a stream and applied in batches of [`BATCH`] (memory
/// stays bounded by a batch and one compressed layer whatever the size of the change,
/// invariant 7): first the base records the pull as started (its
/// epoch is a pull epoch from then on), then the records, then the base its new layer. An
/// interrupted pull leaves the volume refused ([`refuse_if_pulling`]) until `pull` runs again
/// and finishes it, to the same head. The pulled records are journaled, so the clone's next
/// push carries them too.
pub fn pull(meta: &MetaStore, remote: &Remote) -> Result<PullReport> {
    pull_with(meta, remote, None, &progress::ignore)
}

/// [`pull`], reporting to `progress` as a clone does (op `pull`, in records): the records of
/// the new layers applied, and the bytes of their objects downloaded for that (the check
/// that reads them first is not counted).
pub fn pull_reporting(meta: &MetaStore, remote: &Remote, progress: OnProgress) -> Result<PullReport> {
    pull_with(meta, remote, None, progress)
}

/// [`pull`] that stops (as a crash would) after applying `stop_after` batches: for tests.
pub fn pull_stopping_after(meta: &MetaStore, remote: &Remote, stop_after: Option<usize>) -> Result<PullReport> {
    pull_with(meta, remote, stop_after, &progress::ignore)
}

fn pull_with(meta: &MetaStore, remote: &Remote, stop_after: Option<usize>, progress: OnProgress) -> Result<PullReport> {
    let mut base = CloneBase::load(meta)?.ok_or_else(|| SyncError::Conflict("this volume is not a clone: nothing to pull".into()))?;
    let source = base.source.clone();
    let (to_seq, to) = match &base.pulling {
        Some(p) => p.clone(),
        None => {
            let (head, _) = remote.head(&source)?.ok_or_else(|| {
                SyncError::Corrupt(format!("volume {} has no branch {source} in {}", remote.volume, remote.store.describe()))
            })?;
            (head.seq, head.layer_ref())
        }
    };
    let mut report = PullReport { source: source.clone(), from_seq: base.seq, to_seq, records: 0, up_to_date: false };
    // A volume that adopted its source pushes it: the head it pushed is what it holds.
    let own = crate::load_meta_state(meta, &source)?;
    if base.pulling.is_none() && own.adopted.is_some() && own.seq >= to_seq {
        report.from_seq = own.seq;
        report.up_to_date = true;
        return Ok(report);
    }
    if to_seq <= base.seq {
        report.up_to_date = true;
        return Ok(report);
    }
    let links = remote.chain(&source, to.clone(), base.seq + 1, false)?;
    check_pull(meta, remote, &base, &links)?;
    let epoch = match &base.pulling {
        Some(_) => meta.epoch(),
        None => {
            // The pull's own epoch: end the current one, and mark the pull started.
            let epoch = meta.epoch() + 1;
            base.pull_epochs.push(epoch);
            base.pulling = Some((to_seq, to.clone()));
            meta.apply(vec![Mutation::SetEpoch(epoch), base.mutation()], true)?;
            epoch
        }
    };
    if base.pull_epochs.last() != Some(&epoch) {
        return Err(SyncError::Corrupt(format!("an interrupted pull's epoch is not the volume's current epoch {epoch}")));
    }
    let mut batches = 0;
    let mut batch = Records::default();
    let mut meter = Meter::new("pull", "records", links.iter().map(|l| l.header.records).sum(), links.iter().map(|l| l.bytes).sum(), progress);
    let downloaded = std::cell::Cell::new(0);
    let mut counted = 0;
    let mut flush = |full: &mut Records| -> Result<()> {
        meta.apply(full.to_mutations()?, false)?;
        meter.add(full.records(), downloaded.get() - counted);
        counted = downloaded.get();
        full.clear();
        batches += 1;
        if stop_after.is_some_and(|n| batches >= n) {
            return Err(SyncError::Conflict(format!("pull stopped after {batches} batches (test)")));
        }
        Ok(())
    };
    for link in &links {
        let mut layer = remote.stream_link(link)?;
        downloaded.set(downloaded.get() + layer.stored_bytes);
        report.records += apply_layer(&mut layer, &mut batch, &mut flush)?.records;
    }
    let last = batch.records();
    base.seq = to_seq;
    base.layer = Some(to);
    base.pulling = None;
    let mut last_batch = batch.to_mutations()?;
    last_batch.push(base.mutation());
    last_batch.push(Mutation::SetEpoch(epoch + 1));
    meta.apply(last_batch, true)?;
    drop(flush);
    meter.add(last, downloaded.get() - counted);
    meter.finish();
    Ok(report)
}

/// A pull may go ahead: the new layers follow the layer the clone holds, and change no record
/// this node changed since the clone (read a layer at a time; refused, naming the first ones).
fn check_pull(meta: &MetaStore, remote: &Remote, base: &CloneBase, links: &[crate::ChainLink]) -> Result<()> {
    let source = &base.source;
    let mut local = std::collections::HashSet::new();
    meta.changes(base.import_epoch, hybridfs_core::meta::LIVE, &mut |c| {
        if !base.pull_epochs.contains(&c.epoch) {
            local.insert(c.key);
        }
        Ok(true)
    })?;
    let mut conflicts = std::collections::BTreeSet::new();
    for link in links {
        if link.r.seq == base.seq + 1 && base.layer.is_some() && link.header.prev != base.layer {
            return Err(SyncError::Corrupt(format!(
                "layer {} of branch {source} does not follow the layer this clone holds ({:?}): the branch's history was replaced",
                link.r.seq, base.layer
            )));
        }
        let mut layer = remote.stream_link(link)?;
        loop {
            let chunk = layer.next_chunk(BATCH)?;
            if chunk.is_empty() {
                break;
            }
            conflicts.extend(chunk.into_iter().filter(|e| local.contains(&e.key)).map(|e| format!("{:?}", e.key)));
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = conflicts.iter().take(5).map(String::as_str).collect();
    Err(SyncError::Conflict(format!(
        "{} records changed both here and on branch {source} since the clone (first: {}); nothing was pulled: push this clone's branch and merge instead",
        conflicts.len(),
        shown.join(", ")
    )))
}
