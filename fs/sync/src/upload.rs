//! Uploading a push's blocks: [`PARALLEL`] requests in flight, small frames packed.
//!
//! The uploaders are named workers (`upload-N`) of the volume's registry for the length of the
//! push ([`hybridfs_core::worker`]): `hybridctl status` shows what each sends. At the
//! registry's stop signal, or when the push's own call is cancelled ([`Remote::for_call`]: its
//! client went away), no new block is read or sent; requests in flight end as the store's
//! cancellation aborts them (the node cancels its stores at the same signal, a call's store
//! view at the call's).

use crate::{Progress, Remote, Result, SyncError, PACK_BYTES, PACK_SMALLER_THAN, PARALLEL};
use hybridfs_cloud::Cond;
use hybridfs_core::meta::Mutation;
use hybridfs_core::types::BlockId;
use hybridfs_core::Volume;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) struct Uploaded {
    pub blocks: u64,
    /// Of them, sent as deltas against a block the store had ([`crate::delta`]).
    pub deltas: u64,
    pub packs: u64,
    pub bytes: u64,
    pub requests: u64,
}

/// What goes to the store for one block.
pub(crate) enum Body {
    /// Its frame (verified here before it leaves).
    Whole(Vec<u8>),
    /// A delta object against a block the store holds, at this chain depth (verified by
    /// whoever made it: applied to its base, it gave the block). Always packed.
    Delta { body: Vec<u8>, depth: u8 },
}

/// One request's worth of work.
enum Job {
    Block(BlockId, Vec<u8>),
    /// Frames and deltas (with their depth).
    Pack(Vec<(BlockId, Vec<u8>, Option<u8>)>),
}

impl Job {
    /// What an uploader busy with it says (`hybridctl status`).
    fn describe(&self) -> String {
        match self {
            Job::Block(id, _) => format!("upload block {id}"),
            Job::Pack(frames) => format!("upload a pack of {} blocks", frames.len()),
        }
    }
}

/// Upload blocks `ids`, each body got from `frame` (the local block store, the inline bytes a
/// push publishes as a block, or a delta) and verified against its id before it leaves.
pub(crate) fn upload_blocks(
    vol: &Volume,
    remote: &Remote,
    ids: &[BlockId],
    frame: &dyn Fn(&BlockId) -> Result<Body>,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Uploaded> {
    let mut out = Uploaded { blocks: 0, deltas: 0, packs: 0, bytes: 0, requests: 0 };
    if ids.is_empty() {
        return Ok(out);
    }
    let bytes_total: u64 = ids.iter().map(|id| vol.blocks().stored_len(id).ok().flatten().unwrap_or(0)).sum();
    let prog = Mutex::new(Progress { blocks_total: ids.len() as u64, bytes_total, ..Default::default() });
    let (tx, rx) = crossbeam_channel::bounded::<Job>(PARALLEL * 2);
    let first_error: Mutex<Option<SyncError>> = Mutex::new(None);
    // blocks, packs, bytes, blocks uploaded alone, deltas
    let counts = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    let workers = vol.workers();
    std::thread::scope(|s| -> Result<()> {
        for n in 0..PARALLEL {
            let rx = rx.clone();
            let (first_error, counts, prog) = (&first_error, &counts, &prog);
            let status = workers.register_scoped(&format!("upload-{n}"));
            s.spawn(move || {
                for job in rx {
                    if first_error.lock().expect("lock").is_some() {
                        continue;
                    }
                    status.busy(job.describe());
                    let result = run_job(vol, remote, job, counts, prog, progress);
                    status.done(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    if let Err(e) = result {
                        first_error.lock().expect("lock").get_or_insert(e);
                    }
                }
            });
        }
        drop(rx);
        let mut pack: Vec<(BlockId, Vec<u8>, Option<u8>)> = Vec::new();
        let mut pack_len = 0;
        for id in ids {
            if first_error.lock().expect("lock").is_some() {
                break;
            }
            if workers.is_stopped() || remote.is_cancelled() {
                first_error.lock().expect("lock").get_or_insert(SyncError::Store(hybridfs_cloud::StoreError::Cancelled));
                break;
            }
            let (frame, depth) = match frame(id)? {
                Body::Whole(frame) => {
                    // Verify before it leaves: a corrupt local block must not become the store's copy.
                    hybridfs_blocks::verify(id, &frame)?;
                    if frame.len() >= PACK_SMALLER_THAN {
                        let _ = tx.send(Job::Block(*id, frame));
                        continue;
                    }
                    (frame, None)
                }
                Body::Delta { body, depth } => (body, Some(depth)),
            };
            pack_len += frame.len();
            pack.push((*id, frame, depth));
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
    out.deltas = counts[4].load(Ordering::Relaxed);
    out.packs = counts[1].load(Ordering::Relaxed);
    out.bytes = counts[2].load(Ordering::Relaxed);
    out.requests = out.packs + counts[3].load(Ordering::Relaxed);
    Ok(out)
}

fn run_job(
    vol: &Volume,
    remote: &Remote,
    job: Job,
    counts: &[AtomicU64; 5],
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
            for (id, f, depth) in frames {
                let f = remote.seal_frame(&id, f);
                entries.push((id, body.len() as u64, f.len() as u64, depth));
                body.extend_from_slice(&f);
            }
            let pack = BlockId(*blake3::hash(&body).as_bytes());
            remote.store.put(&remote.pack_key(&pack), &body, Cond::None)?;
            counts[1].fetch_add(1, Ordering::Relaxed);
            let mut marks = Vec::with_capacity(entries.len());
            for (id, offset, len, depth) in entries {
                marks.push(Mutation::MarkPushed { id, packed: Some((pack, offset, len)) });
                if let Some(depth) = depth {
                    // With the mark, in one batch: a later push knows this chain's length.
                    let r = crate::delta::Recorded { depth, pack, offset, len };
                    let value = serde_json::to_vec(&r).expect("plain data");
                    marks.push(Mutation::SetMeta { name: crate::delta::state_name(&id), value: Some(value) });
                    counts[4].fetch_add(1, Ordering::Relaxed);
                }
            }
            (marks, body.len() as u64, plain)
        }
    };
    // Recorded as uploads finish, so an interrupted push resumes without them.
    hybridfs_core::crashpoint("push-after-block");
    let n = marks.iter().filter(|m| matches!(m, Mutation::MarkPushed { .. })).count() as u64;
    vol.meta().apply(marks, false)?;
    counts[0].fetch_add(n, Ordering::Relaxed);
    counts[2].fetch_add(bytes, Ordering::Relaxed);
    let mut p = prog.lock().expect("lock");
    p.blocks_done += n;
    p.bytes_done += plain;
    progress(&p);
    Ok(())
}


/// Put the sealed blocks `ids` of `vol` in the store before the records naming them are
/// committed (a volume with `blocks_to_store = on-fsync`: its `fsync`, `close` and seals; see
/// `hybridfs_core::volume::ship`): the objects a push writes (a block alone, small ones
/// packed), recorded in the `pushed` family as they land, so a later push skips them. Blocks
/// the store already has (recorded as pushed) are not sent again. Returns how many were sent.
pub fn ship_blocks(vol: &Volume, remote: &Remote, ids: &[BlockId]) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut todo = Vec::new();
    for id in ids {
        if seen.insert(*id) && vol.meta().pushed(id)?.is_none() {
            todo.push(*id);
        }
    }
    let frame = |id: &BlockId| -> Result<Body> { Ok(Body::Whole(vol.blocks().frame(id)?)) };
    Ok(upload_blocks(vol, remote, &todo, &frame, &|_| {})?.blocks)
}
