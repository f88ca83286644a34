//! `hybridfs-test-fsop [--as UID:GID] OP ARGS...`: one file operation in its own process, for
//! the integration tests (see `tests/harness/fsop.rs` for the protocol). Prints `ok [DATA]` or
//! `errno N` and exits 0; exit 2 means the harness called it wrong.
//!
//! Ops: open PATH r|w|rw|a | create PATH TEXT | write PATH TEXT | read PATH | mkdir PATH |
//! rmdir PATH | unlink PATH | rename FROM TO | chmod PATH OCTAL | chown PATH UID GID |
//! utime-now PATH | utime-set PATH | truncate PATH LEN | setxattr PATH NAME VALUE |
//! flock-try PATH | setlk-try PATH START LEN | getlk PATH START LEN |
//! crash-writer DIR LIST MAX_FILES (loops; see [`crash_writer`]) |
//! read-catching PATH (one `read(2)` of up to 1 MiB with a SIGUSR1 handler installed; prints
//! the byte count, or `errno 4` when the signal interrupted it).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::exit;

use hybridfs_tests::content::{pattern, seeded_name, splitmix64};
use hybridfs_tests::sys::{self, errno_of, SysResult};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--as") {
        let who = args.get(1).cloned().unwrap_or_else(|| usage("--as needs UID:GID"));
        switch_user(&who);
        args.drain(..2);
    }
    let Some((op, rest)) = args.split_first() else { usage("no op") };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match run(op, &rest) {
        Ok(data) if data.is_empty() => println!("ok"),
        Ok(data) => println!("ok {data}"),
        Err(e) => println!("errno {e}"),
    }
}

fn usage(why: &str) -> ! {
    eprintln!("hybridfs-test-fsop: usage error: {why}");
    exit(2)
}

/// Drops supplementary groups, then gid, then uid (the order that keeps the right to do so).
fn switch_user(who: &str) {
    let (uid, gid) = who.split_once(':').unwrap_or_else(|| usage("--as UID:GID"));
    let uid: u32 = uid.parse().unwrap_or_else(|_| usage("bad uid"));
    let gid: u32 = gid.parse().unwrap_or_else(|_| usage("bad gid"));
    // SAFETY: single-threaded process; plain credential syscalls.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            eprintln!("hybridfs-test-fsop: switch to {uid}:{gid}: {}", io::Error::last_os_error());
            exit(3);
        }
    }
}

fn io<T>(r: io::Result<T>) -> SysResult<T> {
    r.map_err(|e| errno_of(&e))
}

fn arg<'a>(rest: &[&'a str], i: usize) -> &'a str {
    rest.get(i).copied().unwrap_or_else(|| usage("missing argument"))
}

fn num(s: &str) -> i64 {
    s.parse().unwrap_or_else(|_| usage("bad number"))
}

fn run(op: &str, rest: &[&str]) -> SysResult<String> {
    let path = Path::new(arg(rest, 0));
    match op {
        "open" => open_mode(path, arg(rest, 1)).map(|_| String::new()),
        "create" => create(path, arg(rest, 1)),
        "write" => {
            let mut f = io(OpenOptions::new().write(true).truncate(true).open(path))?;
            io(f.write_all(arg(rest, 1).as_bytes())).map(|_| String::new())
        }
        "read" => {
            let mut s = String::new();
            io(io(File::open(path))?.read_to_string(&mut s)).map(|_| s)
        }
        "mkdir" => io(fs::create_dir(path)).map(|_| String::new()),
        "rmdir" => io(fs::remove_dir(path)).map(|_| String::new()),
        "unlink" => io(fs::remove_file(path)).map(|_| String::new()),
        "rename" => io(fs::rename(path, arg(rest, 1))).map(|_| String::new()),
        "chmod" => {
            let mode = u32::from_str_radix(arg(rest, 1), 8).unwrap_or_else(|_| usage("bad mode"));
            io(fs::set_permissions(path, fs::Permissions::from_mode(mode))).map(|_| String::new())
        }
        "chown" => {
            let (u, g) = (num(arg(rest, 1)) as u32, num(arg(rest, 2)) as u32);
            io(std::os::unix::fs::chown(path, Some(u), Some(g))).map(|_| String::new())
        }
        "utime-now" => utime_now(path).map(|_| String::new()),
        "utime-set" => sys::utimensat(path, (1_000_000, 0), (1_000_000, 0), 0).map(|_| String::new()),
        "truncate" => {
            let f = io(OpenOptions::new().write(true).open(path))?;
            io(f.set_len(num(arg(rest, 1)) as u64)).map(|_| String::new())
        }
        "setxattr" => sys::setxattr(path, arg(rest, 1), arg(rest, 2).as_bytes(), 0).map(|_| String::new()),
        "flock-try" => {
            let f = io(File::open(path))?;
            sys::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).map(|_| String::new())
        }
        "setlk-try" => {
            let f = io(OpenOptions::new().read(true).write(true).open(path))?;
            sys::setlk(f.as_raw_fd(), libc::F_WRLCK, num(arg(rest, 1)), num(arg(rest, 2))).map(|_| String::new())
        }
        "getlk" => {
            let f = io(OpenOptions::new().read(true).write(true).open(path))?;
            match sys::getlk(f.as_raw_fd(), libc::F_WRLCK, num(arg(rest, 1)), num(arg(rest, 2)))? {
                None => Ok("unlck".to_string()),
                Some((kind, pid)) => Ok(format!("lck {kind} {pid}")),
            }
        }
        "read-catching" => read_catching(path),
        "crash-writer" => crash_writer(path, Path::new(arg(rest, 1)), num(arg(rest, 2)) as u64),
        _ => usage(&format!("unknown op {op}")),
    }
}

/// One `read(2)` with a handler for SIGUSR1 installed without `SA_RESTART`: a signal that
/// interrupts the read makes it return `EINTR` (a caught signal: the process lives on).
fn read_catching(path: &Path) -> SysResult<String> {
    extern "C" fn on_signal(_: libc::c_int) {}
    let f = io(File::open(path))?;
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: a zeroed sigaction with a handler that does nothing is valid; `buf` outlives
    // the read and its length is what read(2) may fill.
    let n = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            return Err(sys::errno());
        }
        libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
    };
    if n < 0 {
        return Err(sys::errno());
    }
    Ok(n.to_string())
}

fn open_mode(path: &Path, mode: &str) -> SysResult<File> {
    let mut o = OpenOptions::new();
    match mode {
        "r" => o.read(true),
        "w" => o.write(true),
        "rw" => o.read(true).write(true),
        "a" => o.append(true),
        _ => usage("open mode r|w|rw|a"),
    };
    io(o.open(path))
}

fn create(path: &Path, text: &str) -> SysResult<String> {
    let mut f = io(OpenOptions::new().write(true).create_new(true).mode(0o644).open(path))?;
    io(f.write_all(text.as_bytes())).map(|_| String::new())
}

fn utime_now(path: &Path) -> SysResult<()> {
    let p = CString::new(path.to_str().expect("utf-8 path")).expect("nul");
    // SAFETY: valid path; NULL times means "now".
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(sys::errno())
    }
}

/// Writes files `DIR/f-<seed>-<len>` (content `pattern(seed, len)`) in a loop, up to
/// `max_files`. Each file is fully written and fsync'd, its directory fsync'd, and only then
/// is its name appended to LIST (outside the mount) and LIST fsync'd: a name in LIST is an
/// acknowledged file. Exits at the first error (the mount being killed), printing it.
fn crash_writer(dir: &Path, list: &Path, max_files: u64) -> SysResult<String> {
    io(fs::create_dir_all(dir))?;
    let mut list_file = io(OpenOptions::new().create(true).append(true).open(list))?;
    let mut rng = std::process::id() as u64 ^ 0x5eed_0000_0000 ^ now_nanos();
    for _ in 0..max_files {
        let seed = splitmix64(&mut rng);
        let len = writer_len(seed);
        let name = seeded_name(seed, len);
        write_durably(&dir.join(&name), &pattern(seed, len))?;
        io(fsync_dir(dir))?;
        io(list_file.write_all(format!("{name}\n").as_bytes()))?;
        io(list_file.sync_all())?;
    }
    Ok(format!("wrote {max_files}"))
}

/// Mostly small files, some spanning several 64 KiB / 1 MiB blocks, some empty.
fn writer_len(seed: u64) -> usize {
    match seed % 8 {
        0 => 0,
        1..=4 => (seed >> 8) as usize % 16_384,
        5 | 6 => (seed >> 8) as usize % 300_000,
        _ => 1_000_000 + (seed >> 8) as usize % 1_200_000,
    }
}

fn write_durably(path: &Path, data: &[u8]) -> SysResult<()> {
    let mut f = io(OpenOptions::new().write(true).create(true).truncate(true).open(path))?;
    io(f.write_all(data))?;
    io(f.sync_all())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
