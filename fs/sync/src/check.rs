//! `fsck --remote`: every layer of a branch verified along its chain, every block it names
//! present (and, with `--verify`, hashing right).

use crate::{Remote, Result, SyncError};
use hybridfs_cloud::StoreError;
use hybridfs_core::progress::{Meter, OnProgress};
use hybridfs_core::types::BlockId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

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
    check_remote_with(remote, branch, verify, &hybridfs_core::progress::ignore)
}

/// [`check_remote`], reporting the verification (`verify`) to `progress`: op `fsck`, blocks
/// downloaded and verified of those the layers name, and their bytes (of a total known when
/// every block is in a pack, whose index gives its length).
pub fn check_remote_with(remote: &Remote, branch: &str, verify: bool, progress: OnProgress) -> Result<RemoteCheck> {
    let mut report = RemoteCheck { branch: branch.to_string(), ..Default::default() };
    let Some((head, _)) = remote.head(branch)? else {
        report.problems.push(format!("branch {branch} has no head in {}", remote.store.describe()));
        return Ok(report);
    };
    let mut packed: BTreeMap<BlockId, (BlockId, u64, u64)> = BTreeMap::new();
    let mut named: BTreeSet<BlockId> = BTreeSet::new();
    // The walk checks every layer against the hash that names it (head → layer → layer...).
    let links = match remote.chain(branch, head.layer_ref(), 1, true) {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(format!("the layers of branch {branch}: {e}"));
            Vec::new()
        }
    };
    for link in links {
        let layer = match remote.open_link(&link) {
            Ok(l) => l,
            Err(e) => {
                report.problems.push(format!("layer {} of branch {}: {e}", link.r.seq, link.branch));
                continue;
            }
        };
        report.layers += 1;
        for p in &layer.packed {
            packed.insert(p.id, (p.pack, p.offset, p.len));
        }
        match layer.located() {
            Ok(blocks) => named.extend(blocks.into_iter().map(|(id, _)| id)),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report.blocks = named.len() as u64;
    let mut meter = verify.then(|| {
        // Known up front only when every block is in a pack (the index gives its length).
        let lens: Option<Vec<u64>> = named.iter().map(|id| packed.get(id).map(|(_, _, len)| *len)).collect();
        Meter::new("fsck", "", named.len() as u64, lens.map_or(0, |l| l.iter().sum()), progress)
    });
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
        let mut read = range.map_or(0, |(_, len)| len);
        match remote.fetch_frame(id, packed.get(id).copied()) {
            Ok(frame) => {
                report.verified += 1;
                read = range.map_or(frame.len() as u64, |(_, len)| len);
            }
            Err(SyncError::Store(StoreError::NotFound { .. })) => report.problems.push(format!("block {id}: object {key} is missing")),
            Err(e) => report.problems.push(format!("block {id} in {key}: {e}")),
        }
        if let Some(m) = &mut meter {
            m.add(1, read);
        }
    }
    if let Some(m) = &mut meter {
        m.finish();
    }
    Ok(report)
}
