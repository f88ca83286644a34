//! The version collector: after a snapshot is deleted, remove the history versions no
//! remaining snapshot can see, reading only the journal rows of the epochs it covered, and
//! release their block references.

use super::codec::{be, hist_prefix, sealed_of};
use super::{GcStats, MetaStore};
use crate::error::Result;
use crate::kv::{prefix_end, Cf, KvOp};
use crate::types::BlockId;
use std::collections::{BTreeMap, HashMap, HashSet};

impl MetaStore {
    /// Remove the history versions of records written in epochs `(from, to]` that no snapshot
    /// in `pinned` (epochs) can see any more. With `dry_run`, change nothing and report what
    /// would go. Cost: the journal rows of those epochs and the versions of their records.
    pub fn collect_range(&self, from: u64, to: u64, pinned: &[u64], dry_run: bool) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut seen: HashSet<(Cf, Vec<u8>)> = HashSet::new();
        let mut pending: Vec<(Cf, Vec<u8>)> = Vec::new();
        let mut deltas: BTreeMap<BlockId, i64> = BTreeMap::new();
        let mut lens: HashMap<BlockId, u64> = HashMap::new();
        let mut flush = |pending: &mut Vec<(Cf, Vec<u8>)>, deltas: &mut BTreeMap<BlockId, i64>, stats: &mut GcStats| -> Result<()> {
            let _w = self.write.lock();
            let mut ops = Vec::new();
            let mut chunk_deltas = BTreeMap::new();
            for (cf, base) in pending.drain(..) {
                stats.keys += 1;
                self.collect_key(cf, &base, pinned, &mut ops, &mut chunk_deltas, &mut lens)?;
            }
            stats.versions_removed += ops.len() as u64;
            if dry_run {
                for (id, d) in chunk_deltas {
                    *deltas.entry(id).or_default() += d;
                }
                return Ok(());
            }
            for (id, d) in &chunk_deltas {
                if self.block_refs(id)? as i64 + d <= 0 {
                    stats.unreferenced.push((*id, lens.get(id).copied().unwrap_or(0)));
                }
            }
            self.finish_refs(&mut ops, &chunk_deltas)?;
            if !ops.is_empty() {
                self.kv.write(ops, false)?;
            }
            Ok(())
        };
        self.changes(from, to, &mut |c| {
            let (cf, base) = c.key.cf_base();
            // A dry run must count each record once; a real pass may see a record again in a
            // later chunk (collecting is idempotent), which keeps its memory to one chunk.
            if seen.insert((cf, base.clone())) {
                pending.push((cf, base));
            }
            if !dry_run && seen.len() >= 512 {
                seen.clear();
            }
            if pending.len() >= 512 {
                flush(&mut pending, &mut deltas, &mut stats)?;
            }
            Ok(true)
        })?;
        flush(&mut pending, &mut deltas, &mut stats)?;
        if dry_run {
            for (id, d) in deltas {
                if self.block_refs(&id)? as i64 + d <= 0 {
                    stats.unreferenced.push((id, lens.get(&id).copied().unwrap_or(0)));
                }
            }
        }
        Ok(stats)
    }

    fn collect_key(
        &self,
        cf: Cf,
        base: &[u8],
        pinned: &[u64],
        ops: &mut Vec<KvOp>,
        deltas: &mut BTreeMap<BlockId, i64>,
        lens: &mut HashMap<BlockId, u64>,
    ) -> Result<()> {
        struct V {
            epoch: u64,
            value: Option<Vec<u8>>,
            key: Option<Vec<u8>>,
        }
        let mut versions = Vec::new();
        if let Some(v) = self.kv.get(cf, base)? {
            versions.push(V { epoch: be(&v, 0)?, value: Some(v[8..].to_vec()), key: None });
        }
        let prefix = hist_prefix(cf, base);
        let end = prefix_end(&prefix);
        self.kv.scan(Cf::History, &prefix, end.as_deref(), &mut |k, v| {
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
            ops.push(KvOp::Del(Cf::History, key.clone()));
            if cf == Cf::Extents {
                if let Some((id, len)) = v.value.as_deref().map(sealed_of).transpose()?.flatten() {
                    *deltas.entry(id).or_default() -= 1;
                    lens.insert(id, len);
                }
            }
        }
        Ok(())
    }
}
