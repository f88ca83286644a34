//! `hybridctl merge`: merge a branch into the home volume, and its log, report and undo.
//!
//! A mounted volume merges in its mount process (the request goes over the control API,
//! like a push): the merge is applied under the volume's locks and the kernel's caches are
//! invalidated for what changed, so `ls`, `stat` and `cat` right after show the merged tree.
//! An unmounted volume is opened here. `merge undo` goes the same way.
//!
//! Exit codes: 0 merged cleanly (or nothing to merge), 3 merged with conflicts kept (each one
//! listed), 1 failed (nothing applied), 2 bad input. A dry run exits the same way as the merge
//! it shows would.

use crate::snapcmd::{call, pick_volume};
use crate::usage;
use anyhow::Result;
use hybridfs_node::control::{ControlError, MergeArgs, Reply, Request};
use hybridfs_node::types::{MergeRecord, Policy};
use hybridfs_node::Home;
use std::process::ExitCode;

/// Merged with conflicts kept.
pub const EXIT_CONFLICTS: u8 = 3;

/// What the `merge` family was asked.
pub enum MergeCmd {
    Merge { branch: String, policy: String, dry_run: bool, confirm: bool, max_delete: f64, prefetch: bool },
    Log,
    Show { id: u64 },
    Undo { id: Option<u64> },
}

/// The merge record a merge or an undo answers.
fn record(reply: Reply) -> Result<MergeRecord> {
    match reply {
        Reply::Merge(r) => Ok(r),
        other => Err(ControlError::UnexpectedReply(format!("{other:?}")).into()),
    }
}

pub fn run(home: &Home, volume: Option<&str>, cmd: MergeCmd, json: bool) -> Result<ExitCode> {
    let vd = pick_volume(home, volume)?;
    match cmd {
        MergeCmd::Merge { branch, policy, dry_run, confirm, max_delete, prefetch } => {
            let policy: Policy = match policy.parse() {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            if !(0.0..=100.0).contains(&max_delete) {
                return usage("--max-delete is a percentage from 0 to 100");
            }
            let args = MergeArgs { branch, policy, dry_run, confirm, max_delete, prefetch };
            let record = record(call(&vd, &Request::Merge(args))?)?;
            print_record(&vd.name, &record, json);
            Ok(exit_of(&record))
        }
        MergeCmd::Log => {
            let entries = vd.merge_log()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:>4}  {:<20} {:<20} {:>6} {:>8} {:>9}  PRE-MERGE SNAPSHOT", "ID", "WHEN (UTC)", "BRANCH", "LAYER", "CHANGES", "CONFLICTS");
            for e in entries {
                let undone = e.undone.as_ref().map_or(String::new(), |u| format!("  (undone; replaced state: {u})"));
                let pre = e.pre_merge.unwrap_or_default();
                println!("{:>4}  {:<20} {:<20} {:>6} {:>8} {:>9}  {pre}{undone}", e.id, when(e.at), e.branch, e.theirs_seq, e.changes, e.conflicts);
            }
            Ok(ExitCode::SUCCESS)
        }
        MergeCmd::Show { id } => {
            let record = vd.merge_show(id)?;
            print_record(&vd.name, &record, json);
            Ok(ExitCode::SUCCESS)
        }
        MergeCmd::Undo { id } => {
            let record = record(call(&vd, &Request::MergeUndo { id })?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!(
                    "merge {} of branch {} undone: volume {} is back at snapshot {}; the state it replaced is snapshot {}",
                    record.id,
                    record.branch,
                    vd.name,
                    record.pre_merge.as_deref().unwrap_or_default(),
                    record.undone.as_deref().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_of(record: &MergeRecord) -> ExitCode {
    if record.conflicts.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_CONFLICTS) }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn when(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = hybridfs_node::types::utc(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

fn print_record(volume: &str, r: &MergeRecord, json: bool) {
    for w in r.warnings.iter().filter(|_| !json) {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("plain data"));
        return;
    }
    if r.up_to_date {
        println!("branch {} is already merged into volume {volume} up to its head (layer {}): nothing to do", r.branch, r.theirs_seq);
        return;
    }
    let verb = if r.dry_run { "would merge" } else { "merged" };
    println!(
        "{verb} branch {} (layer {}, base {}) into volume {volume}: {} changes, {} conflicts{}",
        r.branch,
        r.theirs_seq,
        r.base,
        r.changes.len(),
        r.conflicts.len(),
        if r.dry_run { " (dry run: nothing applied)".to_string() } else { format!(" kept; merge {}", r.id) }
    );
    if let Some(pre) = &r.pre_merge {
        println!("pre-merge snapshot: {pre} (hybridctl merge undo {} returns to it)", r.id);
    }
    if r.blocks_fetched > 0 {
        println!("data from the branch: {} blocks fetched during the merge", r.blocks_fetched);
    } else if r.blocks_to_fetch > 0 {
        println!("data from the branch: {} blocks, {} bytes, fetched from the store on first read", r.blocks_to_fetch, r.bytes_to_fetch);
    }
    for c in &r.changes {
        println!("  {:<40} {}", c.path, c.what);
    }
    for c in &r.conflicts {
        let kind = serde_json::to_value(c.kind).expect("plain").as_str().unwrap_or_default().to_string();
        let copy = c.copy.as_ref().map_or(String::new(), |p| format!(" -> {p}"));
        println!("! {kind:<14} {}{copy}: {}", c.path, c.detail);
    }
}
