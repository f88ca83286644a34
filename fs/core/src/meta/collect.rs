//! The version collector: after a snapshot is deleted, remove the history versions no
//! remaining snapshot can see, reading only the journal rows of the epochs it covered, and
//! release their block references.

use super::codec::{be, change_key, hist_prefix, sealed_of};
use super::refs::finish_refs;
use super::{GcStats, MetaStore};
use crate::error::Result;
use crate::kv::{prefix_end, Cf, KvRead};
use crate::types::BlockId;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Records the collector takes per transaction (and per pass of the journal scan).
const CHUNK: usize = 512;

impl MetaStore {
    /// Remove the history versions of records written in epochs `(from, to]` that no snapshot
    /// in `pinned` (epochs) can see any more. With `dry_run`, change nothing and report what
    /// would go. Cost: the journal rows of those epochs and the versions of their records.
    ///
    /// The journal is read a chunk of records at a time; each chunk is collected in its own
    /// transaction after that part of the scan is over (a scan never writes).
    pub fn collect_range(&self, from: u64, to: u64, pinned: &[u64], dry_run: bool) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut deltas: BTreeMap<BlockId, i64> = BTreeMap::new();
        let mut lens: HashMap<BlockId, u64> = HashMap::new();
        // A dry run must count each record once; a real pass may see a record again in a
        // later chunk (collecting is idempotent), which keeps its memory to one chunk.
        let mut seen: HashSet<(Cf, Vec<u8>)> = HashSet::new();
        let Some(first) = from.checked_add(1) else { return Ok(stats) };
        let mut cursor = first.to_be_bytes().to_vec();
        let end = to.checked_add(1).map(|e| e.to_be_bytes().to_vec());
        loop {
            let mut pending: Vec<(Cf, Vec<u8>)> = Vec::new();
            let mut last = None;
            self.changes_from(&cursor, end.as_deref(), &mut |c| {
                let (cf, base) = c.key.cf_base();
                last = Some(change_key(c.epoch, cf, &base));
                if seen.insert((cf, base.clone())) {
                    pending.push((cf, base));
                }
                Ok(pending.len() < CHUNK)
            })?;
            if !dry_run {
                seen.clear();
            }
            self.collect_chunk(&pending, pinned, dry_run, &mut stats, &mut deltas, &mut lens)?;
            match last {
                Some(mut k) if pending.len() >= CHUNK => {
                    k.push(0);
                    cursor = k;
                }
                _ => break,
            }
        }
        if dry_run {
            for (id, d) in deltas {
                if self.block_refs(&id)? as i64 + d <= 0 {
                    stats.unreferenced.push((id, lens.get(&id).copied().unwrap_or(0)));
                }
            }
        }
        Ok(stats)
    }

    /// Collect the records of one chunk in one transaction (dry: only count).
    fn collect_chunk(
        &self,
        records: &[(Cf, Vec<u8>)],
        pinned: &[u64],
        dry_run: bool,
        stats: &mut GcStats,
        deltas: &mut BTreeMap<BlockId, i64>,
        lens: &mut HashMap<BlockId, u64>,
    ) -> Result<()> {
        let mut chunk = GcStats::default();
        let mut chunk_deltas = BTreeMap::new();
        self.kv.transact(false, &mut |tx| {
            // A retried attempt starts again from nothing.
            chunk = GcStats::default();
            chunk_deltas = BTreeMap::new();
            let mut doomed = Vec::new();
            for (cf, base) in records {
                chunk.keys += 1;
                collect_key(tx, *cf, base, pinned, &mut doomed, &mut chunk_deltas, lens)?;
            }
            chunk.versions_removed = doomed.len() as u64;
            if dry_run {
                return Ok(());
            }
            for (id, d) in &chunk_deltas {
                if super::refs::RefEntry::load(tx, *id)?.count as i64 + d <= 0 {
                    chunk.unreferenced.push((*id, lens.get(id).copied().unwrap_or(0)));
                }
            }
            for key in doomed {
                tx.del(Cf::History, key);
            }
            finish_refs(tx, &chunk_deltas)?;
            Ok(())
        })?;
        stats.keys += chunk.keys;
        stats.versions_removed += chunk.versions_removed;
        stats.unreferenced.extend(chunk.unreferenced);
        if dry_run {
            for (id, d) in chunk_deltas {
                *deltas.entry(id).or_default() += d;
            }
        }
        Ok(())
    }
}

/// The history versions of one record that no snapshot in `pinned` sees any more go into
/// `doomed` (their keys), their block references into `deltas`.
fn collect_key(
    r: &dyn KvRead,
    cf: Cf,
    base: &[u8],
    pinned: &[u64],
    doomed: &mut Vec<Vec<u8>>,
    deltas: &mut BTreeMap<BlockId, i64>,
    lens: &mut HashMap<BlockId, u64>,
) -> Result<()> {
    struct V {
        epoch: u64,
        value: Option<Vec<u8>>,
        key: Option<Vec<u8>>,
    }
    let mut versions = Vec::new();
    if let Some(v) = r.get(cf, base)? {
        versions.push(V { epoch: be(&v, 0)?, value: Some(v[8..].to_vec()), key: None });
    }
    let prefix = hist_prefix(cf, base);
    let end = prefix_end(&prefix);
    r.scan(Cf::History, &prefix, end.as_deref(), &mut |k, v| {
        if k.len() == prefix.len() + 8 {
            let value = (v.first() == Some(&1)).then(|| v[1..].to_vec());
            versions.push(V { epoch: !be(k, prefix.len())?, value, key: Some(k.to_vec()) });
        }
        Ok(true)
    })?;
    if versions.iter().all(|v| v.key.is_none()) {
        return Ok(());
    }
    // Newest first; the live version before a history one of the same epoch.
    versions.sort_by(|a, b| b.epoch.cmp(&a.epoch));
    let n = versions.len();
    let pinned_at = |i: usize| {
        let newer = if i == 0 { u64::MAX } else { versions[i - 1].epoch };
        pinned.iter().any(|&s| versions[i].epoch <= s && s < newer)
    };
    let mut keep = vec![false; n];
    for i in 0..n {
        keep[i] = versions[i].key.is_none() || (versions[i].value.is_some() && (i == 0 || pinned_at(i)));
    }
    for i in 0..n {
        if versions[i].value.is_none() {
            let older_kept = (i + 1..n).any(|j| keep[j] && versions[j].value.is_some());
            keep[i] = older_kept && (i == 0 || pinned_at(i));
        }
    }
    for (v, kept) in versions.iter().zip(keep) {
        if kept {
            continue;
        }
        let Some(key) = &v.key else { continue };
        doomed.push(key.clone());
        if cf == Cf::Extents {
            if let Some((id, len)) = v.value.as_deref().map(sealed_of).transpose()?.flatten() {
                *deltas.entry(id).or_default() -= 1;
                lens.insert(id, len);
            }
        }
    }
    Ok(())
}
