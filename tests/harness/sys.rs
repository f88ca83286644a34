//! Thin wrappers over libc calls std does not offer. Each returns `Err(errno)` on failure, so
//! tests can assert exact errno values (`assert_eq!(r, Err(libc::EEXIST))`).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub type SysResult<T> = Result<T, i32>;

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno inside an `io::Error`; panics if it has none (a harness error, not an FS one).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("io error without errno: {e}"))
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

fn cname(s: &str) -> CString {
    CString::new(s).expect("name with NUL")
}

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Linux `renameat2` flags.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// `renameat2(AT_FDCWD, old, AT_FDCWD, new, flags)` through the raw syscall.
pub fn renameat2(old: &Path, new: &Path, flags: u32) -> SysResult<()> {
    let (o, n) = (cpath(old), cpath(new));
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, o.as_ptr(), libc::AT_FDCWD, n.as_ptr(), flags)
    };
    check(r).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, offset: i64, len: i64) -> SysResult<()> {
    // SAFETY: plain syscall on a file descriptor.
    check(unsafe { libc::fallocate(fd, mode, offset, len) } as libc::c_long).map(drop)
}

pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> SysResult<()> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: valid strings and a buffer of value.len() bytes.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    check(r as libc::c_long).map(drop)
}

/// `getxattr` into a buffer of `size` bytes (for the size query use [`getxattr_len`]).
pub fn getxattr(path: &Path, name: &str, size: usize) -> SysResult<Vec<u8>> {
    let (p, n) = (cpath(path), cname(name));
    let mut buf = vec![0u8; size];
    // SAFETY: buf has `size` writable bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    let len = check(r as libc::c_long)? as usize;
    buf.truncate(len);
    Ok(buf)
}

/// The size `getxattr(path, name, NULL, 0)` reports.
pub fn getxattr_len(path: &Path, name: &str) -> SysResult<usize> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: a NULL buffer with size 0 is the documented size query.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    check(r as libc::c_long).map(|l| l as usize)
}

/// `listxattr` into a buffer of `size` bytes, split into names.
pub fn listxattr(path: &Path, size: usize) -> SysResult<Vec<String>> {
    let p = cpath(path);
    let mut buf = vec![0u8; size];
    // SAFETY: buf has `size` writable bytes.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) };
    let len = check(r as libc::c_long)? as usize;
    Ok(buf[..len]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// The size `listxattr(path, NULL, 0)` reports.
pub fn listxattr_len(path: &Path) -> SysResult<usize> {
    let p = cpath(path);
    // SAFETY: a NULL buffer with size 0 is the documented size query.
    let r = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    check(r as libc::c_long).map(|l| l as usize)
}

pub fn removexattr(path: &Path, name: &str) -> SysResult<()> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: valid strings.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } as libc::c_long).map(drop)
}

/// `utimensat(AT_FDCWD, path, [atime, mtime], flags)`; times as (seconds, nanoseconds).
pub fn utimensat(path: &Path, atime: (i64, i64), mtime: (i64, i64), flags: i32) -> SysResult<()> {
    let p = cpath(path);
    let ts = [
        libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 },
        libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 },
    ];
    // SAFETY: a valid path and an array of two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), flags) } as libc::c_long).map(drop)
}

pub fn statvfs(path: &Path) -> SysResult<libc::statvfs> {
    let p = cpath(path);
    // SAFETY: statvfs is plain data; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) } as libc::c_long)?;
    Ok(st)
}

pub fn flock(fd: RawFd, op: i32) -> SysResult<()> {
    // SAFETY: plain syscall on a file descriptor.
    check(unsafe { libc::flock(fd, op) } as libc::c_long).map(drop)
}

fn flock_struct(kind: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: libc::flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// `fcntl(F_SETLK)` with a lock of `kind` (F_RDLCK, F_WRLCK, F_UNLCK) on [start, start+len).
pub fn setlk(fd: RawFd, kind: i32, start: i64, len: i64) -> SysResult<()> {
    let fl = flock_struct(kind, start, len);
    // SAFETY: a valid flock struct.
    check(unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } as libc::c_long).map(drop)
}

/// `fcntl(F_GETLK)`: `None` when the lock could be placed, else (type, pid) of a holder.
pub fn getlk(fd: RawFd, kind: i32, start: i64, len: i64) -> SysResult<Option<(i32, i32)>> {
    let mut fl = flock_struct(kind, start, len);
    // SAFETY: a valid flock struct the kernel fills in.
    check(unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) } as libc::c_long)?;
    Ok((fl.l_type as i32 != libc::F_UNLCK).then_some((fl.l_type as i32, fl.l_pid)))
}

/// `pread` that returns the errno instead of an `io::Error`.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: i64) -> SysResult<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) } as libc::c_long)
        .map(|n| n as usize)
}

/// Close `s` with a TCP reset (linger 0): a connection that breaks instead of ending.
pub fn reset_connection(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket the caller owns, with a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
}
