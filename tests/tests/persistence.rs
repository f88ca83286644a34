//! Data and namespace survive `hybridctl umount` + `hybridctl mount`: files of sizes around
//! the block size (0, 1, bs-1, bs, bs+1, several MiB of random bytes), for the default block
//! size and the smallest one, plus a tree of small files, links and metadata, compared byte
//! for byte after each of two remounts.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::TestVolume;

/// (name, length) of the files written for a block size `bs`.
fn sizes(bs: usize) -> Vec<(String, usize)> {
    [0, 1, 4095, 4096, bs - 1, bs, bs + 1, 2 * bs + 7, 7 * (1 << 20) + 333]
        .into_iter()
        .map(|len| (format!("size-{len}"), len))
        .collect()
}

fn write_all(dir: &Path, files: &[(String, usize)]) {
    fs::create_dir_all(dir).unwrap();
    for (i, (name, len)) in files.iter().enumerate() {
        fs::write(dir.join(name), pattern(100 + i as u64, *len)).unwrap();
    }
}

fn check_all(dir: &Path, files: &[(String, usize)], when: &str) {
    for (i, (name, len)) in files.iter().enumerate() {
        let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{when}: read {name}: {e}"));
        assert_same_bytes(&format!("{when}: {name}"), &got, &pattern(100 + i as u64, *len));
    }
}

fn roundtrip(block_size: Option<&str>, bs: usize) {
    let mut builder = TestVolume::builder();
    if let Some(b) = block_size {
        builder = builder.block_size(b);
    }
    let mut vol = builder.build();
    let files = sizes(bs);
    let dir = vol.path("data");
    write_all(&dir, &files);
    check_all(&dir, &files, "before umount");
    for round in ["after first remount", "after second remount"] {
        vol.remount();
        check_all(&dir, &files, round);
    }
    let listed = fs::read_dir(&dir).unwrap().count();
    assert_eq!(listed, files.len(), "no extra or missing entries");
}

#[test]
fn sizes_around_default_block_size() {
    roundtrip(None, 1 << 20);
}

#[test]
fn sizes_around_64k_blocks() {
    roundtrip(Some("64K"), 64 << 10);
}

#[test]
fn tree_links_and_metadata() {
    let mut vol = TestVolume::new();
    let root = vol.path("tree");
    for d in 0..10 {
        for f in 0..50 {
            let p = root.join(format!("d{d}/sub/f{f}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, pattern(d * 1000 + f, (f * 37) as usize)).unwrap();
        }
    }
    symlink("d0/sub/f1", root.join("link")).unwrap();
    fs::hard_link(root.join("d1/sub/f2"), root.join("hard")).unwrap();
    fs::set_permissions(root.join("d2/sub/f3"), fs::Permissions::from_mode(0o600)).unwrap();
    let before = fs::metadata(root.join("d2/sub/f3")).unwrap();

    vol.remount();
    for d in 0..10 {
        let sub = root.join(format!("d{d}/sub"));
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 50);
        for f in 0..50 {
            let got = fs::read(sub.join(format!("f{f}"))).unwrap();
            assert_same_bytes("small file", &got, &pattern(d * 1000 + f, (f * 37) as usize));
        }
    }
    assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("d0/sub/f1"));
    let hard = fs::metadata(root.join("hard")).unwrap();
    assert_eq!(hard.nlink(), 2);
    assert_eq!(hard.ino(), fs::metadata(root.join("d1/sub/f2")).unwrap().ino());
    let after = fs::metadata(root.join("d2/sub/f3")).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()));
    assert_eq!(after.ino(), before.ino(), "inode numbers are stable across mounts");
}
