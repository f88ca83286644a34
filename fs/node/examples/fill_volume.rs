//! Fill an unmounted volume with empty files fast, for `benches/million_files.sh --fill core`.
//!
//! Every file is made by [`Volume::create_node`], the call a FUSE `mknod`/`create` makes,
//! so the store holds exactly the records a create through a mount leaves (inode, entry,
//! cookie, change-journal rows, the directory's new attributes); only the kernel round trip
//! and the open/release a shell's `: > f` adds are skipped. Directories `dNNNNN` of
//! `PER_DIR` files `fN` each, under the root, filled by `THREADS` threads (one directory at a
//! time each). Takes the volume's lock, so it refuses a mounted volume.
//!
//! usage: fill_volume HYBRIDFS_HOME VOLUME FILES PER_DIR [THREADS] [FIRST_DIR]
//! (FIRST_DIR: number of the first directory, to add files to a volume filled before)

use hybridfs_core::types::{Kind, ROOT_INO};
use hybridfs_core::{Caller, NewNode, Volume};
use hybridfs_node::Home;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], i: usize, default: Option<u64>) -> u64 {
    match args.get(i) {
        Some(s) => s.parse().unwrap_or_else(|_| panic!("argument {i}: not a number: {s}")),
        None => default.unwrap_or_else(|| {
            eprintln!("usage: fill_volume HYBRIDFS_HOME VOLUME FILES PER_DIR [THREADS] [FIRST_DIR]");
            std::process::exit(2)
        }),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        arg(&args, 99, None);
    }
    let (files, per_dir) = (arg(&args, 3, None), arg(&args, 4, None).max(1));
    let threads = arg(&args, 5, Some(2)).max(1);
    let first_dir = arg(&args, 6, Some(0));
    let vd = Home::at(&args[1]).volume(&args[2])?;
    let _lock = vd.lock()?;
    let (vol, _remote) = vd.open_volume(Duration::from_secs(5))?;
    let who = Caller { uid: unsafe { libc::getuid() }, gid: unsafe { libc::getgid() } };
    let dirs = files.div_ceil(per_dir);
    let next_dir = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let work = |vol: Arc<Volume>, next_dir: Arc<AtomicU64>, made: Arc<AtomicU64>| -> anyhow::Result<()> {
        let node = |kind| NewNode { kind, perm: if kind == Kind::Dir { 0o755 } else { 0o644 }, rdev: 0, target: Vec::new() };
        loop {
            let d = next_dir.fetch_add(1, Ordering::Relaxed);
            if d >= dirs {
                return Ok(());
            }
            let n = per_dir.min(files - d * per_dir);
            let dir = vol.create_node(ROOT_INO, format!("d{:05}", first_dir + d).as_bytes(), node(Kind::Dir), who)?;
            for i in 0..n {
                vol.create_node(dir.ino, format!("f{i}").as_bytes(), node(Kind::File), who)?;
            }
            let total = made.fetch_add(n, Ordering::Relaxed) + n;
            if (total / per_dir) % 50 == 0 {
                eprintln!("fill_volume: {total} files, {:.0} files/s", total as f64 / t0.elapsed().as_secs_f64());
            }
        }
    };
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (vol, next_dir, made) = (vol.clone(), next_dir.clone(), made.clone());
                scope.spawn(|| work(vol, next_dir, made))
            })
            .collect();
        for h in handles {
            h.join().expect("fill thread panicked")?;
        }
        Ok(())
    })?;
    vol.shutdown()?;
    let s = t0.elapsed().as_secs_f64();
    println!("{{\"files\": {}, \"dirs\": {dirs}, \"seconds\": {s:.2}, \"files_per_s\": {:.0}}}", made.load(Ordering::Relaxed), made.load(Ordering::Relaxed) as f64 / s);
    Ok(())
}
