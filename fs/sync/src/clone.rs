//! Clone: a writable local copy of a branch, built from its layers, data fetched on demand.
//!
//! Only metadata moves up front: the layers of the source branch (and, for a branch that was
//! itself forked, of its parent up to the fork) are applied in order to an empty metadata
//! store, and every block they name is recorded as "in the store" with its location (alone or
//! in a pack). File data comes later, block by block, through [`crate::lazy::LazyStore`].
//!
//! The clone then writes its own branch: its push state starts at the imported epoch with the
//! source as parent, so its first push carries only its own changes and names its fork point.

use crate::{PushState, Remote, Result, SyncError};
use hybridfs_core::meta::{Key, MetaStore, Mutation};
use hybridfs_core::types::{Extent, Inode};
use serde::Serialize;
use std::time::Instant;

/// Records applied per metadata batch.
const BATCH: usize = 4096;

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
}

/// The layers to apply for `branch` up to `seq`, oldest first, following fork points.
fn chain(remote: &Remote, branch: &str, seq: u64, depth: usize) -> Result<Vec<(String, u64)>> {
    if depth > 64 {
        return Err(SyncError::Corrupt(format!("branch {branch}: more than 64 nested forks")));
    }
    let mut out = Vec::new();
    if seq >= 1 {
        if let Some((pb, ps)) = remote.layer(branch, 1)?.parent {
            out = chain(remote, &pb, ps, depth + 1)?;
        }
    }
    out.extend((1..=seq).map(|s| (branch.to_string(), s)));
    Ok(out)
}

/// Fill the empty `meta` with branch `source` of `remote` as of its head; the clone will push
/// to `branch`.
pub fn import(meta: &MetaStore, remote: &Remote, source: &str, branch: &str) -> Result<CloneReport> {
    let started = Instant::now();
    let (head, _) = remote.head(source)?.ok_or_else(|| {
        SyncError::Corrupt(format!("volume {} has no branch {source} in {}", remote.volume, remote.store.describe()))
    })?;
    let mut report = CloneReport {
        volume: remote.volume.clone(),
        source: source.to_string(),
        seq: head.seq,
        layers: 0,
        records: 0,
        blocks: 0,
        block_size: 0,
        branch: branch.to_string(),
        seconds: 0.0,
    };
    for (b, s) in chain(remote, source, head.seq, 0)? {
        let layer = remote.layer(&b, s)?;
        report.layers += 1;
        report.block_size = layer.block_size;
        let mut batch = Vec::with_capacity(BATCH);
        for p in &layer.packed {
            batch.push(Mutation::MarkPushed { id: p.id, packed: Some((p.pack, p.offset, p.len)) });
        }
        let packed: std::collections::HashSet<_> = layer.packed.iter().map(|p| p.id).collect();
        for r in layer.records {
            match (&r.key, &r.value) {
                (Key::Extent(..), Some(v)) => {
                    if let Ok(Extent::Sealed { id, .. }) = bincode::deserialize::<Extent>(v) {
                        report.blocks += 1;
                        if !packed.contains(&id) {
                            batch.push(Mutation::MarkPushed { id, packed: None });
                        }
                    }
                }
                // Unlinked while open on the pushing node: purged at the clone's first mount.
                (Key::Inode(ino), Some(v)) => {
                    if bincode::deserialize::<Inode>(v).is_ok_and(|i| i.nlink == 0) {
                        batch.push(Mutation::PutOrphan(*ino));
                    }
                }
                _ => {}
            }
            report.records += 1;
            batch.push(Mutation::Raw { key: r.key, value: r.value });
            if batch.len() >= BATCH {
                meta.apply(std::mem::take(&mut batch), false)?;
            }
        }
        meta.apply(batch, false)?;
    }
    // Local writes start in a new epoch; the clone's branch starts at the import.
    let epoch = meta.epoch();
    let state = PushState { epoch, parent: Some((source.to_string(), head.seq)), ..Default::default() };
    meta.apply(
        vec![
            Mutation::SetMeta {
                name: crate::state_name(branch),
                value: Some(serde_json::to_vec(&state).expect("plain data")),
            },
            Mutation::SetEpoch(epoch + 1),
        ],
        true,
    )?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
