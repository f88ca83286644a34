//! Deterministic file contents. A file's bytes are a function of a seed (and its length),
//! so a writer can name a file `f-<seed>-<len>` and a checker can rebuild the expected bytes
//! from the name alone, after a crash, without any record of what was written.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// `len` pseudo-random bytes derived from `seed` (splitmix64; fast, not cryptographic).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One step of splitmix64: also usable as a tiny deterministic RNG.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The name a crash writer gives a file of `len` bytes made from `seed`.
pub fn seeded_name(seed: u64, len: usize) -> String {
    format!("f-{seed:016x}-{len}")
}

/// Inverse of [`seeded_name`]: `(seed, len)`, or `None` for any other name.
pub fn parse_seeded_name(name: &str) -> Option<(u64, usize)> {
    let rest = name.strip_prefix("f-")?;
    let (seed, len) = rest.split_once('-')?;
    Some((u64::from_str_radix(seed, 16).ok()?, len.parse().ok()?))
}

/// First index where `a` and `b` differ (or where the shorter one ends), for messages that
/// say where a comparison failed instead of dumping megabytes.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        return Some(i);
    }
    (a.len() != b.len()).then(|| a.len().min(b.len()))
}

/// Panics with the first differing offset unless `actual == expected`.
pub fn assert_same_bytes(what: &str, actual: &[u8], expected: &[u8]) {
    if let Some(at) = first_difference(actual, expected) {
        panic!(
            "{what}: content differs at byte {at} (len actual {} expected {}): \
             actual {:02x?} expected {:02x?}",
            actual.len(),
            expected.len(),
            &actual[at.min(actual.len())..(at + 16).min(actual.len())],
            &expected[at.min(expected.len())..(at + 16).min(expected.len())],
        );
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_prefix_stable() {
        assert_eq!(pattern(7, 100), pattern(7, 100));
        assert_eq!(&pattern(7, 1000)[..100], &pattern(7, 100)[..]);
        assert_ne!(pattern(7, 64), pattern(8, 64));
        assert!(pattern(1, 0).is_empty());
    }

    #[test]
    fn seeded_names_round_trip() {
        let name = seeded_name(0xdead_beef, 12345);
        assert_eq!(parse_seeded_name(&name), Some((0xdead_beef, 12345)));
        assert_eq!(parse_seeded_name("list.txt"), None);
    }

    #[test]
    fn first_difference_finds_offsets() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}

/// Every regular file under `root` (relative path → bytes), directories walked to depth 8.
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeMap<String, Vec<u8>>) {
        assert!(depth < 8, "tree deeper than the tests make it: {}", dir.display());
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())).path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                walk(root, &p, depth + 1, out);
            } else {
                out.insert(rel, fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, 0, &mut out);
    out
}

/// The files under `root` are exactly `want`: same paths, same bytes.
pub fn assert_tree(root: &Path, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let got = read_tree(root);
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, unexpected {extra:?}");
    for (path, bytes) in want {
        assert_same_bytes(&format!("{what}: {path}"), &got[path], bytes);
    }
}
