//! POSIX behaviour of a mounted volume, through the kernel and `/dev/fuse`: files,
//! directories, links, renames (renameat2 included), open-unlinked files, holes, truncate,
//! fallocate, O_APPEND, metadata, permissions for a non-root user, xattrs, set-ID bits and
//! capabilities cleared by writes, statfs, locks,
//! shared mmap, a 100,000-entry directory, and fsync'd data surviving a remount.
//! Each test mounts its own volume.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::fsop::NOBODY;
use hybridfs_tests::sys::{self, errno_of};
use hybridfs_tests::{fsop, require_root, TestVolume};

const MIB: usize = 1 << 20;

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn meta(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

/// The errno of a call that must fail.
fn errno<T: Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) but should have failed"),
        Err(e) => errno_of(&e),
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("readdir entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[test]
fn regular_files() {
    let vol = TestVolume::new();
    let p = vol.path("a.txt");
    write(&p, b"hello world");
    assert_eq!(read(&p), b"hello world");
    assert_eq!(meta(&p).len(), 11);
    assert!(meta(&p).is_file());

    let f = rw(&p);
    f.write_all_at(b"WORLD", 6).unwrap();
    f.write_all_at(b"!!", 11).unwrap();
    drop(f);
    assert_eq!(read(&p), b"hello WORLD!!");

    let mut buf = [0u8; 8];
    assert_eq!(File::open(&p).unwrap().read_at(&mut buf, 100).unwrap(), 0, "read past EOF");

    let e = errno("create_new on existing", OpenOptions::new().write(true).create_new(true).open(&p));
    assert_eq!(e, libc::EEXIST);
    assert_eq!(errno("open missing", File::open(vol.path("missing"))), libc::ENOENT);

    write(&p, b"short");
    assert_eq!(read(&p), b"short", "O_TRUNC rewrite");
    let data = pattern(1, 3 * MIB + 17);
    write(&vol.path("big"), &data);
    assert_same_bytes("big file", &read(&vol.path("big")), &data);

    fs::remove_file(&p).unwrap();
    assert_eq!(errno("stat unlinked", fs::metadata(&p)), libc::ENOENT);
    assert_eq!(names(vol.mountpoint()), set(&["big"]));
}

#[test]
fn directories() {
    let vol = TestVolume::new();
    let d = vol.path("d");
    fs::create_dir(&d).unwrap();
    fs::create_dir_all(vol.path("d/e/f")).unwrap();
    fs::create_dir(vol.path("d/g")).unwrap();
    write(&vol.path("d/file"), b"x");
    assert!(meta(&d).is_dir());
    assert_eq!(names(&d), set(&["e", "file", "g"]));
    assert_eq!(meta(&d).nlink(), 4, "nlink of a dir = 2 + subdirectories");
    assert_eq!(meta(&vol.path("d/e/f")).nlink(), 2);

    assert_eq!(errno("mkdir existing", fs::create_dir(&d)), libc::EEXIST);
    assert_eq!(errno("rmdir non-empty", fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(errno("rmdir a file", fs::remove_dir(vol.path("d/file"))), libc::ENOTDIR);
    assert_eq!(errno("unlink a dir", fs::remove_file(vol.path("d/g"))), libc::EISDIR);
    assert_eq!(errno("mkdir under a file", fs::create_dir(vol.path("d/file/x"))), libc::ENOTDIR);
    assert_eq!(errno("mkdir under missing", fs::create_dir(vol.path("nope/x"))), libc::ENOENT);

    fs::remove_dir(vol.path("d/g")).unwrap();
    assert_eq!(meta(&d).nlink(), 3);
    fs::remove_dir_all(&d).unwrap();
    assert!(names(vol.mountpoint()).is_empty());
    assert_eq!(meta(vol.mountpoint()).nlink(), 2, "root nlink with no subdirectories");
}

#[test]
fn symlinks() {
    let vol = TestVolume::new();
    write(&vol.path("target"), b"through the link");
    fs::create_dir(vol.path("dir")).unwrap();
    write(&vol.path("dir/inner"), b"inner");

    symlink("target", vol.path("rel")).unwrap();
    symlink(vol.path("target"), vol.path("abs")).unwrap();
    symlink("dir", vol.path("dirlink")).unwrap();
    symlink("missing", vol.path("dangling")).unwrap();
    let long: String = "x/".repeat(500) + "end";
    symlink(&long, vol.path("long")).unwrap();

    assert_eq!(read(&vol.path("rel")), b"through the link");
    assert_eq!(read(&vol.path("abs")), b"through the link");
    assert_eq!(read(&vol.path("dirlink/inner")), b"inner");
    assert_eq!(fs::read_link(vol.path("rel")).unwrap(), Path::new("target"));
    assert_eq!(fs::read_link(vol.path("long")).unwrap(), Path::new(&long));
    let lm = meta(&vol.path("rel"));
    assert!(lm.file_type().is_symlink());
    assert_eq!(lm.len(), "target".len() as u64, "symlink size = target length");
    assert!(fs::metadata(vol.path("rel")).unwrap().is_file(), "stat follows the link");
    assert_eq!(errno("stat dangling", fs::metadata(vol.path("dangling"))), libc::ENOENT);
    assert_eq!(errno("readlink a file", fs::read_link(vol.path("target"))), libc::EINVAL);
    assert_eq!(errno("symlink over existing", symlink("x", vol.path("rel"))), libc::EEXIST);

    fs::remove_file(vol.path("rel")).unwrap();
    assert_eq!(read(&vol.path("target")), b"through the link", "unlinking a link keeps its target");
}

#[test]
fn hard_links() {
    let vol = TestVolume::new();
    let (a, b) = (vol.path("a"), vol.path("sub/b"));
    fs::create_dir(vol.path("sub")).unwrap();
    write(&a, b"shared");
    fs::hard_link(&a, &b).unwrap();
    assert_eq!(meta(&a).nlink(), 2);
    assert_eq!(meta(&b).nlink(), 2);
    assert_eq!(meta(&a).ino(), meta(&b).ino());

    rw(&b).write_all_at(b"SHARED", 0).unwrap();
    assert_eq!(read(&a), b"SHARED", "write through one name, read through the other");

    assert_eq!(errno("link over existing", fs::hard_link(&a, &b)), libc::EEXIST);
    assert_eq!(errno("link a directory", fs::hard_link(vol.path("sub"), vol.path("sub2"))), libc::EPERM);
    assert_eq!(errno("link missing", fs::hard_link(vol.path("nope"), vol.path("x"))), libc::ENOENT);

    fs::remove_file(&a).unwrap();
    assert_eq!(meta(&b).nlink(), 1);
    assert_eq!(read(&b), b"SHARED");
}

#[test]
fn rename_plain() {
    let vol = TestVolume::new();
    fs::create_dir_all(vol.path("d1/sub")).unwrap();
    fs::create_dir(vol.path("d2")).unwrap();
    write(&vol.path("d1/f"), b"f");
    write(&vol.path("d1/sub/g"), b"g");

    fs::rename(vol.path("d1/f"), vol.path("d1/f2")).unwrap();
    fs::rename(vol.path("d1/f2"), vol.path("d2/f3")).unwrap();
    assert_eq!(read(&vol.path("d2/f3")), b"f");
    assert_eq!(errno("old name", fs::metadata(vol.path("d1/f"))), libc::ENOENT);

    write(&vol.path("d2/victim"), b"old");
    let src_ino = meta(&vol.path("d2/f3")).ino();
    fs::rename(vol.path("d2/f3"), vol.path("d2/victim")).unwrap();
    assert_eq!(read(&vol.path("d2/victim")), b"f", "rename over an existing file replaces it");
    assert_eq!(meta(&vol.path("d2/victim")).ino(), src_ino);
    assert_eq!(names(&vol.path("d2")), set(&["victim"]));

    fs::rename(vol.path("d1/sub"), vol.path("d2/moved")).unwrap();
    assert_eq!(read(&vol.path("d2/moved/g")), b"g", "a renamed dir keeps its contents");
    assert_eq!(meta(&vol.path("d1")).nlink(), 2, "source parent lost a subdir");
    assert_eq!(meta(&vol.path("d2")).nlink(), 3, "target parent gained a subdir");

    fs::create_dir(vol.path("empty")).unwrap();
    fs::create_dir(vol.path("d1/x")).unwrap();
    fs::rename(vol.path("d1/x"), vol.path("empty")).unwrap();
    let e = errno("dir over non-empty dir", fs::rename(vol.path("d1"), vol.path("d2")));
    assert!(e == libc::ENOTEMPTY || e == libc::EEXIST, "errno {e}");
    assert_eq!(errno("file over dir", fs::rename(vol.path("d2/victim"), vol.path("d1"))), libc::EISDIR);
    assert_eq!(errno("dir over file", fs::rename(vol.path("d1"), vol.path("d2/victim"))), libc::ENOTDIR);
    assert_eq!(errno("missing source", fs::rename(vol.path("nope"), vol.path("x"))), libc::ENOENT);
    assert_eq!(errno("dir into itself", fs::rename(vol.path("d2"), vol.path("d2/moved/in"))), libc::EINVAL);
    assert_eq!(names(vol.mountpoint()), set(&["d1", "d2", "empty"]));
}

#[test]
fn renameat2_noreplace_and_exchange() {
    let vol = TestVolume::new();
    let (a, b, c) = (vol.path("a"), vol.path("b"), vol.path("c"));
    write(&a, b"AAA");
    write(&b, b"BB");
    fs::create_dir(vol.path("dir")).unwrap();
    write(&vol.path("dir/inside"), b"i");

    assert_eq!(sys::renameat2(&a, &b, sys::RENAME_NOREPLACE), Err(libc::EEXIST));
    assert_eq!((read(&a), read(&b)), (b"AAA".to_vec(), b"BB".to_vec()), "failed NOREPLACE changes nothing");
    sys::renameat2(&a, &c, sys::RENAME_NOREPLACE).expect("NOREPLACE to a free name");
    assert_eq!(read(&c), b"AAA");
    assert_eq!(errno("old name", fs::metadata(&a)), libc::ENOENT);

    let (ino_b, ino_c) = (meta(&b).ino(), meta(&c).ino());
    sys::renameat2(&b, &c, sys::RENAME_EXCHANGE).expect("EXCHANGE two files");
    assert_eq!(read(&b), b"AAA");
    assert_eq!(read(&c), b"BB");
    assert_eq!((meta(&b).ino(), meta(&c).ino()), (ino_c, ino_b), "inodes swapped");

    sys::renameat2(&b, &vol.path("dir"), sys::RENAME_EXCHANGE).expect("EXCHANGE file and dir");
    assert!(meta(&b).is_dir());
    assert_eq!(read(&vol.path("b/inside")), b"i");
    assert_eq!(read(&vol.path("dir")), b"AAA");

    assert_eq!(sys::renameat2(&a, &c, sys::RENAME_EXCHANGE), Err(libc::ENOENT), "EXCHANGE with a missing name");
    assert_eq!(
        sys::renameat2(&c, &b, sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE),
        Err(libc::EINVAL),
        "EXCHANGE|NOREPLACE is invalid"
    );
    assert_eq!(names(vol.mountpoint()), set(&["b", "c", "dir"]));
}

#[test]
fn unlink_open_file() {
    let vol = TestVolume::new();
    let p = vol.path("doomed");
    let mut f = rw(&p);
    f.write_all(b"hello").unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno("stat unlinked", fs::metadata(&p)), libc::ENOENT);
    assert!(names(vol.mountpoint()).is_empty());

    f.write_all_at(b" world", 5).unwrap();
    let big = pattern(9, 2 * MIB);
    f.write_all_at(&big, 11).unwrap();
    let mut buf = vec![0u8; 11];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"hello world");
    let mut back = vec![0u8; big.len()];
    f.read_exact_at(&mut back, 11).unwrap();
    assert_same_bytes("unlinked file, via fd", &back, &big);
    let m = f.metadata().unwrap();
    assert_eq!(m.nlink(), 0);
    assert_eq!(m.len(), 11 + big.len() as u64);
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);

    write(&p, b"new");
    assert_eq!(read(&p), b"new", "a new file under the old name is independent");
    f.read_exact_at(&mut buf[..3], 0).unwrap();
    assert_eq!(&buf[..3], b"hel");
    drop(f);
    assert_eq!(read(&p), b"new");
}

#[test]
fn sparse_files_read_zeros() {
    let mut vol = TestVolume::new();
    let p = vol.path("sparse");
    let far = 10 * MIB as u64 + 3;
    let f = rw(&p);
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"mid", 5 * MIB as u64).unwrap();
    f.write_all_at(b"X", far).unwrap();
    drop(f);
    let check = |vol: &TestVolume| {
        let data = read(&vol.path("sparse"));
        assert_eq!(data.len() as u64, far + 1);
        let mut expected = vec![0u8; far as usize + 1];
        expected[..4].copy_from_slice(b"head");
        expected[5 * MIB..5 * MIB + 3].copy_from_slice(b"mid");
        expected[far as usize] = b'X';
        assert_same_bytes("sparse file", &data, &expected);
    };
    check(&vol);
    let mut buf = vec![1u8; 4096];
    let n = File::open(&p).unwrap().read_at(&mut buf, 7 * MIB as u64).unwrap();
    assert_eq!(n, 4096);
    assert!(buf.iter().all(|b| *b == 0), "pread in a hole returns zeros");
    vol.remount();
    check(&vol);
}

#[test]
fn truncate_up_and_down() {
    let mut vol = TestVolume::new();
    let p = vol.path("t");
    let data = pattern(2, 3000);
    write(&p, &data);
    let f = rw(&p);
    f.set_len(1000).unwrap();
    assert_eq!(read(&p), &data[..1000]);
    f.set_len(5000).unwrap();
    let mut expected = data[..1000].to_vec();
    expected.resize(5000, 0);
    assert_same_bytes("truncate up after down (no stale bytes)", &read(&p), &expected);
    f.set_len(0).unwrap();
    assert!(read(&p).is_empty());
    f.write_all_at(b"z", 100).unwrap();
    let mut e2 = vec![0u8; 101];
    e2[100] = b'z';
    assert_eq!(read(&p), e2);
    drop(f);

    // Across block boundaries (default 1 MiB blocks): down into the middle of a block, then up.
    let big = pattern(3, 2 * MIB + MIB / 2);
    let q = vol.path("big");
    write(&q, &big);
    let cut = MIB + MIB / 2 + 3;
    let c = sys::cpath(&q);
    // SAFETY: a valid path; truncate(2) by path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), cut as i64) }, 0, "truncate(2): {}", sys::errno());
    rw(&q).set_len(3 * MIB as u64).unwrap();
    let mut eb = big[..cut].to_vec();
    eb.resize(3 * MIB, 0);
    assert_same_bytes("big truncate down/up", &read(&q), &eb);
    vol.remount();
    assert_same_bytes("after remount", &read(&q), &eb);
    assert_eq!(read(&vol.path("t")), e2);
}

#[test]
fn fallocate_modes() {
    let mut vol = TestVolume::new();
    let fl_keep = libc::FALLOC_FL_KEEP_SIZE;
    let fl_punch = libc::FALLOC_FL_PUNCH_HOLE;

    let f = rw(&vol.path("alloc"));
    sys::fallocate(f.as_raw_fd(), 0, 0, MIB as i64 + 10).expect("fallocate mode 0");
    assert_eq!(f.metadata().unwrap().len(), MIB as u64 + 10);
    assert!(read(&vol.path("alloc")).iter().all(|b| *b == 0), "allocated range reads zeros");

    let g = rw(&vol.path("grow"));
    let data = pattern(4, 100_000);
    g.write_all_at(&data, 0).unwrap();
    sys::fallocate(g.as_raw_fd(), 0, 50_000, 100_000).expect("fallocate over data and past EOF");
    let mut expected = data.clone();
    expected.resize(150_000, 0);
    assert_same_bytes("fallocate mode 0 keeps data", &read(&vol.path("grow")), &expected);
    sys::fallocate(g.as_raw_fd(), fl_keep, 150_000, MIB as i64).expect("fallocate KEEP_SIZE");
    assert_eq!(g.metadata().unwrap().len(), 150_000, "KEEP_SIZE keeps the size");
    assert_same_bytes("KEEP_SIZE keeps data", &read(&vol.path("grow")), &expected);

    let h = rw(&vol.path("punch"));
    let mut pdata = pattern(5, 3 * MIB);
    h.write_all_at(&pdata, 0).unwrap();
    sys::fallocate(h.as_raw_fd(), fl_punch | fl_keep, 100_000, 1_200_000).expect("punch hole");
    sys::fallocate(h.as_raw_fd(), fl_punch | fl_keep, 5, 12).expect("punch a small unaligned hole");
    pdata[100_000..1_300_000].fill(0);
    pdata[5..17].fill(0);
    assert_eq!(h.metadata().unwrap().len(), 3 * MIB as u64, "punch keeps the size");
    assert_same_bytes("punched file", &read(&vol.path("punch")), &pdata);

    assert_eq!(sys::fallocate(h.as_raw_fd(), fl_punch, 0, 10), Err(libc::EOPNOTSUPP), "PUNCH_HOLE needs KEEP_SIZE");
    assert_eq!(
        sys::fallocate(h.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, 65536),
        Err(libc::EOPNOTSUPP),
        "collapse range is not supported"
    );
    drop((f, g, h));
    vol.remount();
    assert_same_bytes("punched file after remount", &read(&vol.path("punch")), &pdata);
    assert_same_bytes("grown file after remount", &read(&vol.path("grow")), &expected);
}

#[test]
fn o_append_writes_at_end() {
    let vol = TestVolume::new();
    let p = vol.path("log");
    write(&p, b"0123456789");
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"AB").unwrap();
    assert_eq!(read(&p), b"0123456789AB");
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all_at(b"xy", 0).unwrap();
    a.write_all(b"CD").unwrap();
    assert_eq!(read(&p), b"xy23456789ABCD");
    w.set_len(4).unwrap();
    a.write_all(b"EF").unwrap();
    assert_eq!(read(&p), b"xy23EF", "append after another fd shrank the file");
    assert_eq!(a.stream_position().unwrap(), 6);
    let mut r = File::open(&p).unwrap();
    r.seek(SeekFrom::End(-2)).unwrap();
    let mut tail = String::new();
    r.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "EF");
}

#[test]
fn chmod_chown_utimensat_persist() {
    let mut vol = TestVolume::new();
    let p = vol.path("m");
    write(&p, b"meta");
    fs::create_dir(vol.path("dir")).unwrap();
    let ctime0 = (meta(&p).ctime(), meta(&p).ctime_nsec());
    std::thread::sleep(Duration::from_millis(20));

    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(meta(&p).mode() & 0o7777, 0o640);
    assert!((meta(&p).ctime(), meta(&p).ctime_nsec()) > ctime0, "chmod updates ctime");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(meta(&p).mode() & 0o7777, 0o4751);
    fs::set_permissions(vol.path("dir"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(meta(&vol.path("dir")).mode() & 0o7777, 0o1777);

    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    assert_eq!((meta(&p).uid(), meta(&p).gid()), (1234, 5678));
    std::os::unix::fs::chown(&p, None, Some(42)).unwrap();
    assert_eq!((meta(&p).uid(), meta(&p).gid()), (1234, 42));

    let (at, mt) = ((1_600_000_000, 123_456_789), (1_700_000_000, 987_654_321));
    sys::utimensat(&p, at, mt, 0).expect("utimensat");
    let check_times = |m: &fs::Metadata, at: (i64, i64), mt: (i64, i64)| {
        assert_eq!((m.atime(), m.atime_nsec()), at, "atime");
        assert_eq!((m.mtime(), m.mtime_nsec()), mt, "mtime");
    };
    check_times(&meta(&p), at, mt);
    let mt2 = (1_650_000_000, 1);
    sys::utimensat(&p, (0, libc::UTIME_OMIT), mt2, 0).expect("utimensat with UTIME_OMIT");
    check_times(&meta(&p), at, mt2);

    let mode_before = meta(&p).mode();
    vol.remount();
    let m = meta(&p);
    assert_eq!(m.mode(), mode_before, "mode after remount");
    assert_eq!((m.uid(), m.gid()), (1234, 42), "owner after remount");
    check_times(&m, at, mt2);
    assert_eq!(meta(&vol.path("dir")).mode() & 0o7777, 0o1777);
}

#[test]
fn permissions_for_a_non_root_user() {
    require_root();
    let vol = TestVolume::new();
    let nobody = fsop!().as_user(NOBODY);
    let root = fsop!();
    let chmod = |rel: &str, mode: u32| fs::set_permissions(vol.path(rel), fs::Permissions::from_mode(mode)).unwrap();
    let sp = |rel: &str| vol.path(rel).to_str().unwrap().to_string();

    write(&vol.path("root644"), b"public");
    chmod("root644", 0o644);
    write(&vol.path("root600"), b"secret");
    chmod("root600", 0o600);
    write(&vol.path("root666"), b"everyone");
    chmod("root666", 0o666);
    fs::create_dir(vol.path("closed")).unwrap();
    chmod("closed", 0o755);
    write(&vol.path("closed/file"), b"c");
    fs::create_dir(vol.path("private")).unwrap();
    chmod("private", 0o700);
    write(&vol.path("private/file"), b"p");
    fs::create_dir(vol.path("shared")).unwrap();
    chmod("shared", 0o777);
    fs::create_dir(vol.path("sticky")).unwrap();
    chmod("sticky", 0o1777);
    write(&vol.path("sticky/roots"), b"s");
    chmod("sticky/roots", 0o666);

    assert_eq!(nobody.run(&["read", &sp("root644")]), Ok("public".into()), "others may read 0644");
    assert_eq!(nobody.run(&["open", &sp("root644"), "w"]), Err(libc::EACCES), "others may not write 0644");
    assert_eq!(nobody.run(&["write", &sp("root644"), "x"]), Err(libc::EACCES));
    assert_eq!(nobody.run(&["read", &sp("root600")]), Err(libc::EACCES));
    assert_eq!(nobody.run(&["write", &sp("root666"), "mine"]), Ok(String::new()), "others may write 0666");
    assert_eq!(read(&vol.path("root666")), b"mine");
    assert_eq!(nobody.run(&["create", &sp("closed/new"), "x"]), Err(libc::EACCES), "no create in 0755 dir");
    assert_eq!(nobody.run(&["unlink", &sp("closed/file")]), Err(libc::EACCES));
    assert_eq!(nobody.run(&["read", &sp("private/file")]), Err(libc::EACCES), "no search permission");

    assert_eq!(nobody.run(&["create", &sp("shared/mine"), "m"]), Ok(String::new()));
    let m = meta(&vol.path("shared/mine"));
    assert_eq!((m.uid(), m.gid()), NOBODY, "new file owned by its creator");
    assert_eq!(nobody.run(&["chmod", &sp("shared/mine"), "600"]), Ok(String::new()), "owner may chmod");
    assert_eq!(nobody.run(&["chmod", &sp("root644"), "666"]), Err(libc::EPERM), "non-owner may not chmod");
    assert_eq!(nobody.run(&["chown", &sp("shared/mine"), "0", "0"]), Err(libc::EPERM), "no giving away files");
    assert_eq!(nobody.run(&["utime-now", &sp("root666")]), Ok(String::new()), "UTIME_NOW with write access");
    assert_eq!(nobody.run(&["utime-set", &sp("root666")]), Err(libc::EPERM), "explicit times need ownership");
    assert_eq!(nobody.run(&["truncate", &sp("root644"), "0"]), Err(libc::EACCES));
    assert_eq!(nobody.run(&["unlink", &sp("sticky/roots")]), Err(libc::EPERM), "sticky dir protects others' files");
    assert_eq!(read(&vol.path("root644")), b"public", "denied writes changed nothing");

    write(&vol.path("locked"), b"l");
    chmod("locked", 0o000);
    assert_eq!(root.run(&["write", &sp("locked"), "root"]), Ok(String::new()), "root overrides mode bits");
    assert_eq!(read(&vol.path("locked")), b"root");
}

#[test]
fn xattrs() {
    let mut vol = TestVolume::new();
    let p = vol.path("x");
    write(&p, b"x");
    fs::create_dir(vol.path("d")).unwrap();

    sys::setxattr(&p, "user.a", b"hello", 0).expect("setxattr");
    assert_eq!(sys::getxattr(&p, "user.a", 64), Ok(b"hello".to_vec()));
    assert_eq!(sys::getxattr_len(&p, "user.a"), Ok(5));
    assert_eq!(sys::getxattr(&p, "user.a", 2), Err(libc::ERANGE), "buffer too small");
    assert_eq!(sys::getxattr(&p, "user.none", 64), Err(libc::ENODATA));
    assert_eq!(sys::setxattr(&p, "user.a", b"v", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(sys::setxattr(&p, "user.b", b"v", libc::XATTR_REPLACE), Err(libc::ENODATA));
    sys::setxattr(&p, "user.b", b"", libc::XATTR_CREATE).expect("create empty value");
    assert_eq!(sys::getxattr(&p, "user.b", 16), Ok(Vec::new()));
    sys::setxattr(&p, "user.a", b"world!", libc::XATTR_REPLACE).expect("replace");
    assert_eq!(sys::getxattr(&p, "user.a", 64), Ok(b"world!".to_vec()));
    let big = pattern(6, 4000);
    sys::setxattr(&p, "user.big", &big, 0).expect("4000-byte value");
    assert_eq!(sys::getxattr(&p, "user.big", 8192), Ok(big.clone()));

    let listed: BTreeSet<String> = sys::listxattr(&p, 4096).unwrap().into_iter().filter(|n| n.starts_with("user.")).collect();
    assert_eq!(listed, set(&["user.a", "user.b", "user.big"]));
    let full_len = sys::listxattr_len(&p).unwrap();
    assert!(full_len >= "user.a\0user.b\0user.big\0".len());
    assert_eq!(sys::listxattr(&p, 1), Err(libc::ERANGE), "list buffer too small");

    sys::removexattr(&p, "user.a").expect("removexattr");
    assert_eq!(sys::getxattr(&p, "user.a", 64), Err(libc::ENODATA));
    assert_eq!(sys::removexattr(&p, "user.a"), Err(libc::ENODATA));
    sys::setxattr(&vol.path("d"), "user.dir", b"on a dir", 0).expect("xattr on a directory");

    vol.remount();
    assert_eq!(sys::getxattr(&p, "user.big", 8192), Ok(big), "xattr after remount");
    assert_eq!(sys::getxattr(&p, "user.b", 16), Ok(Vec::new()));
    assert_eq!(sys::getxattr(&p, "user.a", 64), Err(libc::ENODATA));
    assert_eq!(sys::getxattr(&vol.path("d"), "user.dir", 64), Ok(b"on a dir".to_vec()));
}

/// A `security.capability` value the kernel accepts (revision 2, CAP_NET_BIND_SERVICE
/// permitted).
fn file_caps() -> Vec<u8> {
    let mut v = 0x0200_0000u32.to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// What `file_remove_privs` guarantees on a local file system, on a mount where the file
/// system does it (FUSE_HANDLE_KILLPRIV_V2): a write or truncate by a process without
/// `CAP_FSETID` clears set-user-ID and set-group-ID (with group execute), one by root keeps
/// them, and every write and truncate removes `security.capability`, also once the kernel
/// has marked the file as having none (a write before the attribute was set) and stopped
/// asking.
#[test]
fn writes_and_truncates_clear_setuid_setgid_and_capabilities() {
    require_root();
    let mut vol = TestVolume::new();
    let nobody = fsop!().as_user(NOBODY);
    let mode = |vol: &TestVolume, rel: &str| meta(&vol.path(rel)).mode() & 0o7777;
    let chmod = |vol: &TestVolume, rel: &str, m: u32| fs::set_permissions(vol.path(rel), fs::Permissions::from_mode(m)).unwrap();
    let sp = vol.path("s").to_str().unwrap().to_string();

    write(&vol.path("s"), b"old");
    chmod(&vol, "s", 0o6777);
    assert_eq!(nobody.run(&["write", &sp, "new"]), Ok(String::new()));
    assert_eq!(mode(&vol, "s"), 0o777, "a write by another user clears set-user-ID and set-group-ID");
    assert_eq!(read(&vol.path("s")), b"new");

    write(&vol.path("r"), b"old");
    chmod(&vol, "r", 0o6755);
    OpenOptions::new().append(true).open(vol.path("r")).unwrap().write_all(b"+root").unwrap();
    assert_eq!(mode(&vol, "r"), 0o6755, "root's writes keep them (CAP_FSETID)");

    let caps = file_caps();
    let c = vol.path("c");
    let mut f = rw(&c);
    f.write_all(b"first").unwrap();
    sys::setxattr(&c, "security.capability", &caps, 0).expect("set capabilities");
    assert_eq!(sys::getxattr(&c, "security.capability", 64), Ok(caps.clone()));
    f.write_all(b" second").unwrap();
    assert_eq!(sys::getxattr(&c, "security.capability", 64), Err(libc::ENODATA), "a write removes capabilities");
    sys::setxattr(&c, "security.capability", &caps, 0).expect("set capabilities again");
    f.set_len(5).unwrap();
    assert_eq!(sys::getxattr(&c, "security.capability", 64), Err(libc::ENODATA), "a truncate removes capabilities");
    sys::setxattr(&c, "security.capability", &caps, 0).expect("set capabilities a third time");
    f.write_all_at(b"!", 0).unwrap();
    assert_eq!(sys::getxattr(&c, "security.capability", 64), Err(libc::ENODATA), "each write looks again");
    drop(f);
    sys::setxattr(&c, "security.capability", &caps, 0).expect("set capabilities to keep");
    sys::setxattr(&c, "user.other", b"v", 0).expect("another attribute");
    let _ = read(&c);
    vol.remount();
    assert_eq!(sys::getxattr(&c, "security.capability", 64), Ok(caps), "reads and close keep capabilities");
    assert_eq!(read(&c), b"!irst");
    assert_eq!((mode(&vol, "s"), mode(&vol, "r")), (0o777, 0o6755), "after remount");
}

#[test]
fn statfs_is_sane() {
    let vol = TestVolume::new();
    let st = sys::statvfs(vol.mountpoint()).expect("statvfs");
    assert!(st.f_bsize > 0 && st.f_frsize > 0, "block sizes: {} {}", st.f_bsize, st.f_frsize);
    assert!(st.f_blocks > 0, "f_blocks = 0");
    assert!(st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_blocks, "free > total");
    assert!(st.f_namemax >= 255, "f_namemax {}", st.f_namemax);
    let name = "n".repeat(255);
    write(&vol.path(&name), b"long name");
    assert_eq!(read(&vol.path(&name)), b"long name");
    let too_long = "n".repeat(256);
    assert_eq!(errno("256-byte name", fs::write(vol.path(too_long), b"x")), libc::ENAMETOOLONG);
}

#[test]
fn flock_conflicts_between_processes() {
    let vol = TestVolume::new();
    let p = vol.path("lockme");
    write(&p, b"l");
    let other = fsop!();
    let f = File::open(&p).unwrap();
    sys::flock(f.as_raw_fd(), libc::LOCK_EX).expect("flock EX");
    assert_eq!(other.on("flock-try", &p, &[]), Err(libc::EWOULDBLOCK), "second process blocked");
    sys::flock(f.as_raw_fd(), libc::LOCK_UN).unwrap();
    assert_eq!(other.on("flock-try", &p, &[]), Ok(String::new()), "free after unlock");
    sys::flock(f.as_raw_fd(), libc::LOCK_SH).unwrap();
    assert_eq!(other.on("flock-try", &p, &[]), Err(libc::EWOULDBLOCK), "EX blocked by SH");
}

#[test]
fn fcntl_locks_conflict_between_processes() {
    let vol = TestVolume::new();
    let p = vol.path("ranges");
    write(&p, &[0u8; 1000]);
    let other = fsop!();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    sys::setlk(f.as_raw_fd(), libc::F_WRLCK, 0, 100).expect("F_SETLK");
    let e = other.on("setlk-try", &p, &["50", "10"]).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "overlapping lock: errno {e}");
    assert_eq!(other.on("setlk-try", &p, &["200", "10"]), Ok(String::new()), "disjoint range");
    let me = std::process::id();
    assert_eq!(other.on("getlk", &p, &["0", "10"]), Ok(format!("lck {} {me}", libc::F_WRLCK)));
    sys::setlk(f.as_raw_fd(), libc::F_UNLCK, 0, 100).unwrap();
    assert_eq!(other.on("setlk-try", &p, &["50", "10"]), Ok(String::new()), "free after unlock");
}

#[test]
fn mmap_shared_write_then_read() {
    let mut vol = TestVolume::new();
    let p = vol.path("mapped");
    let len = 3 * 4096 + 100;
    let data = pattern(7, len);
    let f = rw(&p);
    f.set_len(len as u64).unwrap();
    // SAFETY: a fresh shared mapping of `len` bytes of an open file; unmapped below.
    unsafe {
        let addr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", sys::errno());
        std::slice::from_raw_parts_mut(addr.cast::<u8>(), len).copy_from_slice(&data);
        assert_eq!(libc::msync(addr, len, libc::MS_SYNC), 0, "msync: {}", sys::errno());
        assert_eq!(libc::munmap(addr, len), 0);
    }
    let mut back = vec![0u8; len];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_same_bytes("read() after mmap write", &back, &data);
    drop(f);

    let q = vol.path("written");
    let wdata = pattern(8, 2 * MIB + 5);
    write(&q, &wdata);
    let g = File::open(&q).unwrap();
    // SAFETY: a read-only shared mapping of the whole file; unmapped below.
    unsafe {
        let addr = libc::mmap(std::ptr::null_mut(), wdata.len(), libc::PROT_READ, libc::MAP_SHARED, g.as_raw_fd(), 0);
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", sys::errno());
        let seen = std::slice::from_raw_parts(addr.cast::<u8>(), wdata.len()).to_vec();
        libc::munmap(addr, wdata.len());
        assert_same_bytes("mmap read of write() data", &seen, &wdata);
    }
    drop(g);
    vol.remount();
    assert_same_bytes("mmap-written file after remount", &read(&p), &data);
}

#[test]
fn directory_with_100k_entries() {
    const N: usize = 100_000;
    let vol = TestVolume::new();
    let d = vol.path("big");
    fs::create_dir(&d).unwrap();
    let name = |i: usize| format!("entry-{i:06}");
    let t = Instant::now();
    for i in 0..N {
        File::create(d.join(name(i))).unwrap_or_else(|e| panic!("create #{i}: {e}"));
    }
    eprintln!("created {N} files in {:?}", t.elapsed());

    let t = Instant::now();
    let listed = names(&d);
    eprintln!("readdir of {N} entries in {:?}", t.elapsed());
    let raw_count = fs::read_dir(&d).unwrap().count();
    assert_eq!(raw_count, N, "readdir returns each entry exactly once");
    assert_eq!(listed.len(), N);
    assert!(listed.iter().enumerate().all(|(i, n)| *n == name(i)), "readdir names");

    for i in (0..N).step_by(9973).chain([N - 1]) {
        let m = meta(&d.join(name(i)));
        assert!(m.is_file() && m.len() == 0, "stat {}", name(i));
    }
    assert_eq!(errno("stat a missing name", fs::metadata(d.join("entry-x"))), libc::ENOENT);

    let t = Instant::now();
    for i in 0..N {
        fs::remove_file(d.join(name(i))).unwrap_or_else(|e| panic!("unlink #{i}: {e}"));
    }
    eprintln!("deleted {N} files in {:?}", t.elapsed());
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    fs::remove_dir(&d).unwrap();
}

#[test]
fn fsynced_data_survives_remount() {
    let mut vol = TestVolume::new();
    fs::create_dir(vol.path("dir")).unwrap();
    let a = pattern(10, 3 * MIB + 1);
    let mut f = rw(&vol.path("dir/a"));
    f.write_all(&a).unwrap();
    f.sync_all().unwrap();
    let mut g = rw(&vol.path("dir/b"));
    g.write_all(b"fdatasync'd").unwrap();
    g.sync_data().unwrap();
    File::open(vol.path("dir")).unwrap().sync_all().unwrap();
    drop((f, g));
    vol.remount();
    assert_same_bytes("fsync'd file", &read(&vol.path("dir/a")), &a);
    assert_eq!(read(&vol.path("dir/b")), b"fdatasync'd");
}
