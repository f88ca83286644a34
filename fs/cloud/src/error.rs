//! The errors of the object-store tier, one enum for every store.
//!
//! Each variant is a thing a caller decides on: lost a compare-and-swap (`Precondition`), no
//! such object (`NotFound`), fix the configuration (`Auth`, `NoBucket`, `Invalid`), wait and try
//! again (`Unreachable`, `Server`: [`StoreError::is_transient`]), or distrust the bytes
//! (`Corrupt`). Messages are one line and never hold a credential (invariant 8).

/// An object-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional put lost: the object exists (`IfAbsent`) or changed (`IfMatch`).
    #[error("precondition failed for {key}: the object already exists or changed")]
    Precondition { key: String },
    #[error("no object {key}")]
    NotFound { key: String },
    /// The store refused our credentials; the message says which store and what to check.
    #[error("{0}")]
    Auth(String),
    #[error("no bucket {0}: create it or fix the store URL")]
    NoBucket(String),
    /// Connection refused, timed out, DNS failure, connection reset.
    #[error("cannot reach the store at {endpoint}: {msg}")]
    Unreachable { endpoint: String, msg: String },
    /// The store answered 5xx (500 "No writable volumes", 503 SlowDown, …).
    #[error("store server error (HTTP {status}): {msg}")]
    Server { status: u16, msg: String },
    /// The bytes read are not what the object should hold (short, wrong length).
    #[error("object {key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    /// Bad input: an invalid key, prefix or store URL.
    #[error("{0}")]
    Invalid(String),
    /// The call was cancelled (the mount is stopping, the push was interrupted): the request
    /// in flight was aborted. Permanent: a cancelled call is never retried.
    #[error("cancelled: the request to the store was aborted")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether the same call may succeed later: the store was unreachable or answered 5xx.
    /// Everything else is permanent; a lost compare-and-swap above all is never retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. } | StoreError::Server { .. })
    }

    pub(crate) fn not_found(key: &str) -> Self {
        StoreError::NotFound { key: key.to_string() }
    }

    pub(crate) fn precondition(key: &str) -> Self {
        StoreError::Precondition { key: key.to_string() }
    }

    pub(crate) fn short_read(key: &str, offset: u64, want: u64, got: u64) -> Self {
        let why = format!("wanted {want} bytes at offset {offset}, got {got}");
        StoreError::Corrupt { key: key.to_string(), why }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn only_unreachable_and_server_errors_are_transient() {
        let unreachable = StoreError::Unreachable { endpoint: "e".into(), msg: "m".into() };
        assert!(unreachable.is_transient());
        assert!(StoreError::Server { status: 503, msg: "SlowDown".into() }.is_transient());
        assert!(!StoreError::precondition("k").is_transient());
        assert!(!StoreError::not_found("k").is_transient());
        assert!(!StoreError::Auth("no".into()).is_transient());
        assert!(!StoreError::short_read("k", 0, 2, 1).is_transient());
        assert!(!StoreError::Cancelled.is_transient());
    }

    #[test]
    fn messages_are_one_line() {
        let e = StoreError::short_read("blocks/ab", 4, 10, 3);
        assert_eq!(e.to_string(), "object blocks/ab is corrupt: wanted 10 bytes at offset 4, got 3");
    }
}
