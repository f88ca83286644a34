//! `hybridctl status`, `fsck` and `journal`: read-only views of volumes.

use crate::fmt::human_bytes;
use anyhow::Result;
use hybridfs_node::Home;
use std::process::ExitCode;

/// With `agent`: a line about the hybrid-agent controller's nodes and today's cost, when this
/// host has its token file (text output only; `--json` stays the list of volumes).
pub fn status(home: &Home, name: Option<&str>, json: bool, agent: &crate::agentcmd::Agent) -> Result<ExitCode> {
    let vols = match name {
        Some(n) => vec![home.volume(n)?],
        None => home.volumes()?,
    };
    let statuses = vols.iter().map(|v| v.status()).collect::<Result<Vec<_>, _>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    if statuses.is_empty() {
        println!("no volumes in {} (create one with `hybridctl format NAME`)", home.root.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16} {:>8} {:>10} {:>8} {:>11} {:>11} {:>11} {:>6}  {}", "VOLUME", "BLOCK", "FILES", "DIRS", "SIZE", "UNPUSHED", "UNSEALED", "EPOCH", "MOUNT");
    for s in &statuses {
        let mount = match (&s.mountpoint, s.pid) {
            (Some(mp), Some(pid)) => format!("{mp} (pid {pid})"),
            _ => "not mounted".into(),
        };
        println!(
            "{:<16} {:>8} {:>10} {:>8} {:>11} {:>11} {:>11} {:>6}  {mount}",
            s.name,
            human_bytes(s.block_size as u64),
            s.files,
            s.directories,
            human_bytes(s.bytes),
            human_bytes(s.unpushed_bytes),
            human_bytes(s.unsealed_bytes),
            s.epoch,
        );
        println!("{:<16} store {}, {} snapshots", "", s.store, s.snapshots);
        if s.unpushed_files > 0 {
            let more = s.unpushed_files.saturating_sub(3);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            println!("{:<16} unpushed in {} files: {}{more}", "", s.unpushed_files, s.unpushed_paths.iter().take(3).cloned().collect::<Vec<_>>().join(", "));
        }
        if let Some(workers) = &s.workers {
            println!("{:<16} workers: {}", "", workers.iter().map(worker_line).collect::<Vec<_>>().join(", "));
        }
        if let Some(m) = s.metrics.as_ref().filter(|m| !m.corrupt_block_ids.is_empty()) {
            println!("{:<16} CORRUPT blocks read: {}", "", m.corrupt_block_ids.join(", "));
        }
    }
    if let Some(line) = crate::agentcmd::status_line(agent) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --watch`: `show` every `secs` seconds (at least 0.1), `count` times or until
/// interrupted. On a terminal each screen replaces the last (cursor home, clear); elsewhere
/// (and with --json) the screens follow each other, each text one headed by the time.
pub fn watch(secs: f64, count: Option<u64>, json: bool, mut show: impl FnMut() -> Result<ExitCode>) -> Result<ExitCode> {
    use std::io::Write;
    if !(secs.is_finite() && secs > 0.0) {
        return crate::usage(format!("--watch {secs}: a number of seconds above 0"));
    }
    let every = std::time::Duration::from_secs_f64(secs.max(0.1));
    let tty = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = 0u64;
    loop {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ");
        if tty {
            print!("\x1b[H\x1b[2J");
            println!("every {secs}s: hybridctl status    {now}\n");
        } else if !json {
            println!("--- {now}");
        }
        show()?;
        std::io::stdout().flush()?;
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(every);
    }
}

/// `collector idle`, `control busy: push (pushed 3/8 blocks, 3.0 MiB of 8.0 MiB)`,
/// `collector idle (2 failures; last: ...)`.
pub(crate) fn worker_line(w: &hybridfs_node::workers::WorkerStatus) -> String {
    let state = match (&w.busy, &w.progress) {
        (None, _) => "idle".to_string(),
        (Some(b), None) => format!("busy: {b}"),
        (Some(b), Some(p)) => format!("busy: {b} ({})", crate::progress::summary(p)),
    };
    let failing = match (&w.last_error, w.failures) {
        (Some(e), n) if n > 0 => format!(" ({n} failures; last: {e})"),
        _ => String::new(),
    };
    format!("{} {state}{failing}", w.name)
}

pub fn fsck(home: &Home, name: &str, verify: bool, repair: bool, json: bool) -> Result<ExitCode> {
    let vd = home.volume(name)?;
    let report = crate::progress::run(if verify { "fsck --verify" } else { "fsck" }, |on| vd.fsck_with(verify, repair, on))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "volume {name}: {} inodes ({} files, {} directories), {}, {} sealed and {} staged blocks{}",
            report.inodes,
            report.files,
            report.directories,
            human_bytes(report.bytes),
            report.sealed_blocks,
            report.staged_blocks,
            if verify { format!(", {} blocks verified", report.verified_blocks) } else { String::new() }
        );
        for n in &report.notes {
            println!("note: {n}");
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", if report.clean() { "clean".to_string() } else { format!("{} problems", report.problems.len()) });
    }
    Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `fsck --remote`: the branch's layers and blocks in the object store.
pub fn fsck_remote(home: &Home, name: &str, branch: Option<String>, verify: bool, json: bool) -> Result<ExitCode> {
    let vd = home.volume(name)?;
    let cfg = vd.config()?;
    let report = crate::progress::run(if verify { "fsck --remote --verify" } else { "fsck --remote" }, |on| vd.fsck_remote_with(branch, verify, on))?;
    let branch = &report.branch;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "volume {name}, branch {branch} in {}: {} layers, {} blocks{}",
            cfg.store,
            report.layers,
            report.blocks,
            if verify { format!(", {} verified", report.verified) } else { String::new() }
        );
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", if report.problems.is_empty() { "clean".to_string() } else { format!("{} problems", report.problems.len()) });
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn journal(home: &Home, name: &str, since: u64, json: bool) -> Result<ExitCode> {
    let rows = home.volume(name)?.journal(since)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!("{:>6} {:>12} {:>12}", "EPOCH", "INODE", "BLOCK");
        for r in &rows {
            println!("{:>6} {:>12} {:>12}", r.epoch, r.ino, r.block);
        }
    }
    Ok(ExitCode::SUCCESS)
}
