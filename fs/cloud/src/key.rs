//! The key rule every store applies (see the crate doc): pure checks, no I/O.

use crate::StoreError;

/// S3's limit on a key's length, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The first segment no key may use: the local store keeps its scratch files there.
pub const RESERVED: &str = ".hybridfs-store";

/// Accept `key` or say why not.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Invalid(format!("invalid object key {key:?}: {why}")));
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("absolute (starts with /)");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("empty path segment"),
            "." | ".." => return bad("'.' or '..' segment"),
            _ => {}
        }
    }
    if key.split('/').next() == Some(RESERVED) {
        return bad("reserved first segment");
    }
    Ok(())
}

/// Accept a list prefix: empty, or the beginning of a key. The last segment may be partial
/// (`"a/b"` lists `a/bc` too), so only the segments before the last `/` are checked.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Invalid(format!("invalid list prefix {prefix:?}: {why}")));
    if prefix.starts_with('/') {
        return bad("absolute (starts with /)");
    }
    if prefix.contains('\0') {
        return bad("contains NUL");
    }
    let mut whole: Vec<&str> = prefix.split('/').collect();
    whole.pop();
    for segment in &whole {
        match *segment {
            "" => return bad("empty path segment"),
            "." | ".." => return bad("'.' or '..' segment"),
            _ => {}
        }
    }
    if whole.first() == Some(&RESERVED) {
        return bad("reserved first segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_key, check_prefix};

    #[test]
    fn keys_are_relative_paths_without_dot_segments() {
        for good in ["a", "a/b", "blocks/3f/3f2a", ".hidden/x", "a/.b", "a..b"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a//b", "a/", "../a", "a/../b", "./a", "a\0b", ".hybridfs-store/tmp"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn prefixes_may_end_anywhere() {
        for good in ["", "a", "a/", "a/b", "a/b/", "a/.", "a/.."] {
            assert!(check_prefix(good).is_ok(), "{good:?}");
        }
        for bad in ["/", "/a", "a//", "../", "a/../", "a//b"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
