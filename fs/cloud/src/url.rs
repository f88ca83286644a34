//! Store URLs: `file:///abs/path` and `s3://bucket/prefix` (parsing only, no I/O).

use crate::StoreError;
use std::path::PathBuf;

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory (absolute path).
    File(PathBuf),
    /// A bucket and a key prefix without leading or trailing `/` (may be empty).
    S3 { bucket: String, prefix: String },
}

const USAGE: &str = "use file:///absolute/path or s3://bucket/prefix";

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("invalid store URL {url:?}: {why}; {USAGE}"));
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("the path must be absolute"));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad("unknown scheme"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(bad)?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            crate::check_key(prefix).map_err(|e| bad(&format!("prefix: {e}")))?;
        }
        Ok(StoreUrl::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }
}

/// S3 bucket naming, loosely: 3 to 63 of lowercase letters, digits, `.` and `-`.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    if !bucket.chars().all(ok) {
        return Err("a bucket name has only lowercase letters, digits, '.' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StoreUrl;
    use std::path::PathBuf;

    #[test]
    fn parses_file_and_s3_urls() {
        assert_eq!(StoreUrl::parse("file:///var/x").unwrap(), StoreUrl::File(PathBuf::from("/var/x")));
        let s3 = |b: &str, p: &str| StoreUrl::S3 { bucket: b.into(), prefix: p.into() };
        assert_eq!(StoreUrl::parse("s3://bkt").unwrap(), s3("bkt", ""));
        assert_eq!(StoreUrl::parse("s3://bkt/").unwrap(), s3("bkt", ""));
        assert_eq!(StoreUrl::parse("s3://bkt/vol/a/").unwrap(), s3("bkt", "vol/a"));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in
            ["file://rel/x", "http://x/y", "s3://", "s3://ab", "s3://Bucket/x", "s3://bkt/a//b", "s3://bkt/../x", "/x"]
        {
            let e = StoreUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid store URL"), "{bad}: {e}");
        }
    }
}
