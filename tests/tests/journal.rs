//! The dirty-extent journal records exactly the blocks that were written.
//!
//! Invariant 3 ("O(changes)"): snapshot, push, clone and diff find what changed by reading the
//! journal, never by scanning the volume, so the journal must name every written block (or a
//! push loses data) and only written blocks (or a push moves more than what changed).
//! With `--block-size 64K`, files are written at chosen offsets — a write spanning a block
//! boundary, a sparse write far into a file, the same block overwritten twice — and the
//! (ino, block) pairs `hybridctl journal NAME --json` lists for those inodes must be exactly
//! the written blocks.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};

use hybridfs_tests::TestVolume;

const BS: u64 = 64 << 10;

/// Writes `len` bytes at `offset` and returns the 64 KiB block indexes the write touched.
fn write_at(f: &File, offset: u64, len: usize) -> BTreeSet<u64> {
    f.write_all_at(&vec![0xa5; len], offset).unwrap();
    (offset / BS..=(offset + len as u64 - 1) / BS).collect()
}

#[test]
fn journal_lists_exactly_the_written_blocks() {
    let mut vol = TestVolume::builder().block_size("64K").build();
    let open = |name: &str| {
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(vol.path(name)).unwrap()
    };
    let mut expected: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut record = |f: &File, blocks: BTreeSet<u64>| {
        let ino = f.metadata().unwrap().ino();
        expected.extend(blocks.into_iter().map(|b| (ino, b)));
    };

    let a = open("a");
    record(&a, write_at(&a, 0, 10));
    record(&a, write_at(&a, 3 * BS + 100, 50));
    record(&a, write_at(&a, BS - 10, 20)); // spans blocks 0 and 1
    let b = open("b");
    record(&b, write_at(&b, 5 << 30, 4096)); // sparse: block 81920, nothing before it
    let c = open("c");
    record(&c, write_at(&c, 2 * BS + 7, 1000)); // the same block twice
    record(&c, write_at(&c, 2 * BS + 500, 1000));
    let d = open("d");
    record(&d, write_at(&d, 0, 3 * BS as usize)); // three whole blocks
    let untouched = open("empty");
    let inos: BTreeSet<u64> =
        [&a, &b, &c, &d, &untouched].iter().map(|f| f.metadata().unwrap().ino()).collect();
    for f in [&a, &b, &c, &d, &untouched] {
        f.sync_all().unwrap();
    }
    drop((a, b, c, d, untouched));
    vol.umount();

    let rows = vol.journal();
    let got: BTreeSet<(u64, u64)> =
        rows.iter().filter(|r| inos.contains(&r.ino)).map(|r| (r.ino, r.block)).collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "journal (ino, block) for the written inodes differs:\n  missing (written, not journaled): \
         {missing:?}\n  extra (journaled, never written): {extra:?}\n  inodes {inos:?}\n  all rows {rows:?}"
    );
}
