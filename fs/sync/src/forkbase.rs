//! Fork bases: the snapshots a merge reads its base from (issue 10: planning in O(changes)).
//!
//! A burst node's branch forks from a layer of `main` that this volume pushed, and the base of
//! its first merge is exactly this volume's tree at the epoch that push read. So a push of a
//! root branch (one that is not itself a fork, e.g. `main`) keeps its `push-BRANCH-N`
//! snapshot as a **fork base** instead of dropping it, and records which layer it is:
//!
//! ```text
//! named state  forkbase/BRANCH   JSON [ForkBase {seq, key, epoch, snapshot}], oldest first
//! ```
//!
//! A merge then reads base values by key from that snapshot (only the records the two sides
//! changed), instead of downloading and decoding `main`'s layers up to the fork point (which
//! costs the size of the volume). The newest [`FORK_BASES_KEPT`] fork bases of a branch are
//! kept; older ones are deleted at the next push unless held: a merge holds its branch's base
//! (holder `merge-BRANCH`, see [`hold`]) because the branch's next, incremental merge reads it
//! again. A base that is gone (deleted by hand, or pruned before the merge) is not an error:
//! the merge then reads `main`'s layers from the store as before, slower, same result.
//!
//! A fork base pins, like any snapshot, the versions this volume overwrote since it (history
//! records and their blocks): that is the space cost of an O(changes) merge. A branch that is
//! itself a fork (a burst node's) keeps none.

use crate::{LayerRef, Result, SyncError};
use hybridfs_core::meta::Mutation;
use hybridfs_core::types::SnapshotInfo;
use hybridfs_core::Volume;
use serde::{Deserialize, Serialize};

/// Fork bases kept per branch (besides held ones): bursts forked from any of the last this
/// many pushes merge in O(changes).
pub const FORK_BASES_KEPT: usize = 8;

/// One kept push: layer `seq` (`key`) of the branch was read at `epoch`, held by `snapshot`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForkBase {
    pub seq: u64,
    pub key: String,
    pub epoch: u64,
    pub snapshot: String,
}

fn state_name(branch: &str) -> String {
    format!("forkbase/{branch}")
}

/// The fork bases recorded for `branch`, oldest first.
pub fn list(vol: &Volume, branch: &str) -> Result<Vec<ForkBase>> {
    match vol.meta().meta_value(&state_name(branch))? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| SyncError::Corrupt(format!("fork bases of {branch}: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn save(vol: &Volume, branch: &str, bases: &[ForkBase]) -> Result<()> {
    vol.meta().apply(vec![record(branch, bases)], true)?;
    Ok(())
}

/// The mutation that records `bases` as the fork bases of `branch`.
pub(crate) fn record(branch: &str, bases: &[ForkBase]) -> Mutation {
    Mutation::SetMeta { name: state_name(branch), value: Some(serde_json::to_vec(bases).expect("plain data")) }
}

/// The push of `layer` (read at `snap`) is recorded: keep its snapshot as a fork base, release
/// the push's hold on it, and delete the fork bases beyond the newest [`FORK_BASES_KEPT`]
/// that nothing holds.
pub(crate) fn keep(vol: &Volume, branch: &str, layer: &LayerRef, snap: &SnapshotInfo) -> Result<()> {
    let mut bases = list(vol, branch)?;
    bases.retain(|b| b.snapshot != snap.name);
    bases.push(ForkBase { seq: layer.seq, key: layer.key.clone(), epoch: snap.epoch, snapshot: snap.name.clone() });
    save(vol, branch, &bases)?;
    hybridfs_core::crashpoint("push-after-fork-base");
    vol.snapshot_hold(&snap.name, "push", false)?;
    prune(vol, branch, bases)
}

fn prune(vol: &Volume, branch: &str, bases: Vec<ForkBase>) -> Result<()> {
    let mut live = Vec::with_capacity(bases.len());
    for b in bases {
        // A base deleted by hand (or a name reused at another epoch) is forgotten.
        if let Some(s) = vol.meta().snapshot(&b.snapshot)?.filter(|s| s.epoch == b.epoch) {
            live.push((b, s));
        }
    }
    let mut extra = live.iter().filter(|(_, s)| s.holds.is_empty()).count().saturating_sub(FORK_BASES_KEPT);
    let mut kept = Vec::with_capacity(live.len());
    for (b, s) in live {
        if extra > 0 && s.holds.is_empty() {
            extra -= 1;
            vol.snapshot_delete(&s.name)?;
            tracing::info!(branch, snapshot = %s.name, "fork base dropped (older than the last {FORK_BASES_KEPT} pushes)");
        } else {
            kept.push(b);
        }
    }
    save(vol, branch, &kept)
}

/// Whether `name` is a fork base of `branch` (a push must not drop it as a leftover).
pub(crate) fn is_fork_base(vol: &Volume, branch: &str, name: &str) -> Result<bool> {
    Ok(list(vol, branch)?.iter().any(|b| b.snapshot == name))
}

/// The snapshot holding this volume's tree as layer `key` of `branch` has it, if still kept.
pub fn find(vol: &Volume, branch: &str, key: &str) -> Result<Option<SnapshotInfo>> {
    let Some(b) = list(vol, branch)?.into_iter().find(|b| b.key == key) else { return Ok(None) };
    at_epoch(vol, b.epoch)
}

/// A snapshot taken at exactly `epoch` (its versions are kept), if there is one.
pub fn at_epoch(vol: &Volume, epoch: u64) -> Result<Option<SnapshotInfo>> {
    Ok(vol.snapshots()?.into_iter().find(|s| s.epoch == epoch))
}

/// The holder name a merge of `branch` holds its fork base with.
pub fn holder(branch: &str) -> String {
    format!("merge-{}", branch.replace(',', "_"))
}

/// Hold (or release) snapshot `name` for merges of `branch`.
pub fn hold(vol: &Volume, name: &str, branch: &str, on: bool) -> Result<()> {
    let h = holder(branch);
    let held = vol.snapshot(name)?.holds.contains(&h);
    if held != on {
        vol.snapshot_hold(name, &h, on)?;
    }
    Ok(())
}
