//! Conflict copy names: `NAME.conflict-<branch>-<UTC>` with the extension kept last
//! (`ckpt.pt` → `ckpt.conflict-burst-n1-20261201T0730Z.pt`), so tools that go by extension
//! still open the copy. A taken name gets `-2`, `-3`, … before the extension; nothing is ever
//! overwritten. Names stay within [`NAME_MAX`] by shortening the stem.

use crate::types::NAME_MAX;

/// Longest extension kept last (`.tar.gz` keeps `.gz`; a long "extension" is part of the stem).
const EXT_MAX: usize = 16;

/// The UTC time `secs` as `YYYYMMDDTHHMMZ`.
pub fn stamp(secs: i64) -> String {
    let (y, m, d, hh, mm, _) = crate::types::utc(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}Z")
}

/// A branch name as it may appear inside a file name.
fn clean_branch(branch: &str) -> String {
    branch.chars().map(|c| if c == '/' || c == '\0' { '-' } else { c }).collect()
}

/// Split `name` into stem and extension (with its dot); dot files and names without a dot
/// have no extension.
fn split_ext(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && name.len() - i <= EXT_MAX && i + 1 < name.len() => name.split_at(i),
        _ => (name, &[]),
    }
}

/// The `n`th candidate conflict name for `name` (n = 1 is the plain one).
pub fn candidate(name: &[u8], branch: &str, stamp: &str, n: u32) -> Vec<u8> {
    let (stem, ext) = split_ext(name);
    let mut tag = format!(".conflict-{}-{stamp}", clean_branch(branch)).into_bytes();
    if n > 1 {
        tag.extend_from_slice(format!("-{n}").as_bytes());
    }
    let room = NAME_MAX.saturating_sub(tag.len() + ext.len()).max(1);
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(&tag);
    out.extend_from_slice(ext);
    out.truncate(NAME_MAX);
    out
}

/// The first conflict name for `name` that `taken` says is free.
pub fn conflict_name(name: &[u8], branch: &str, stamp: &str, taken: &mut dyn FnMut(&[u8]) -> bool) -> Vec<u8> {
    for n in 1.. {
        let c = candidate(name, branch, stamp, n);
        if !taken(&c) {
            return c;
        }
    }
    unreachable!("some counter gives a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn extension_is_kept_last() {
        assert_eq!(s(candidate(b"ckpt.pt", "burst-n1", "20261201T0730Z", 1)), "ckpt.conflict-burst-n1-20261201T0730Z.pt");
        assert_eq!(s(candidate(b"README", "b", "T", 1)), "README.conflict-b-T");
        assert_eq!(s(candidate(b".bashrc", "b", "T", 1)), ".bashrc.conflict-b-T");
        assert_eq!(s(candidate(b"a.tar.gz", "b", "T", 1)), "a.tar.conflict-b-T.gz");
        assert_eq!(s(candidate(b"x.", "b", "T", 1)), "x..conflict-b-T");
        assert_eq!(s(candidate(b"ckpt.pt", "nodes/n1", "T", 3)), "ckpt.conflict-nodes-n1-T-3.pt");
    }

    #[test]
    fn taken_names_are_skipped_and_length_is_capped() {
        let mut seen = vec![candidate(b"f.bin", "b", "T", 1)];
        let got = conflict_name(b"f.bin", "b", "T", &mut |n| seen.iter().any(|s| s == n));
        assert_eq!(s(got.clone()), "f.conflict-b-T-2.bin");
        seen.push(got);
        let long = vec![b'x'; 250];
        let c = candidate(&long, "branch", "20261201T0730Z", 1);
        assert!(c.len() <= NAME_MAX);
        assert!(s(c).ends_with(".conflict-branch-20261201T0730Z"));
    }

    #[test]
    fn stamp_has_minutes() {
        assert_eq!(stamp(0), "19700101T0000Z");
        assert_eq!(stamp(1_764_574_200), "20251201T0730Z");
    }
}
