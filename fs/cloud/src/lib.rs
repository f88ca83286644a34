//! The object-store tier: where pushed blocks, packs, layers and branch heads live.
//!
//! One synchronous trait, [`ObjectStore`], with these implementations:
//!
//! - [`LocalStore`] (`file:///path`): a directory; the embedded default and the store of most
//!   tests.
//! - [`S3Store`] (`s3://bucket/prefix`): any S3-compatible endpoint through aws-sdk-s3.
//! - [`MemStore`]: in memory, for unit tests of the code above this tier.
//!
//! and two wrappers that add behaviour around any store:
//!
//! - [`Retry`]: retries transient errors (store unreachable, 5xx) with bounded exponential
//!   backoff; [`open`] wraps every store in it.
//! - [`Faulty`]: test-only fault injection (503s, a store that dies mid-push, lost replies,
//!   corrupted reads), driven by a shared [`FaultPlan`].
//!
//! Every implementation passes [`conformance`].
//!
//! # Keys
//!
//! A key is a relative, `/`-separated path: not empty, at most [`MAX_KEY_LEN`] bytes, no
//! leading `/`, no empty, `.` or `..` segment, no NUL, and not under [`RESERVED`] (the local
//! store's scratch directory). Every store applies the same rule ([`check_key`]), so a key that
//! works on one works on all. `list(prefix)` has S3 semantics: every key that starts with the
//! prefix as a string (`"a/b"` matches `a/b/c` and `a/bc`), in byte order.
//!
//! # Conditional puts and ETags
//!
//! An ETag is an opaque string that changes when the content changes. `put` returns the new
//! one; [`Cond::IfAbsent`] (`If-None-Match: *`) and [`Cond::IfMatch`] (`If-Match: etag`) make a
//! put a compare-and-swap that fails with [`StoreError::Precondition`] when it lost. Branch heads
//! move only this way (invariant 4).
//!
//! # Errors
//!
//! [`StoreError`] says what went wrong in the store's terms; [`StoreError::is_transient`] says
//! whether trying again may help. No error, log line or [`ObjectStore::describe`] ever holds a
//! credential (invariant 8).
//!
//! # Cancellation
//!
//! A store opened with a [`CancellationToken`] ([`open_with`]) aborts its requests in flight
//! when the token is cancelled and fails every call after that with [`StoreError::Cancelled`]:
//! the node cancels the stores of a mount when the mount stops (umount, a signal), so nothing
//! is left waiting on a store that does not answer. One call's work (a push) is cancelled on
//! its own through a [`CallScoped`] view of the store, with a token of its own.
//!
//! # Threads
//!
//! The trait is synchronous: core calls it from plain threads. [`S3Store`] owns a small tokio
//! runtime and waits on it; see its module for why that is safe from any thread.

mod call;
mod conformance;
mod error;
mod faulty;
mod key;
mod local;
mod mem;
mod retry;
pub mod traffic;
mod s3;
pub mod testserver;
mod url;

use std::sync::Arc;

pub use call::CallScoped;
pub use conformance::conformance;
pub use error::StoreError;
pub use faulty::{Corruption, FaultPlan, Faulty};
pub use key::{check_key, check_prefix, MAX_KEY_LEN, RESERVED};
pub use local::LocalStore;
pub use mem::MemStore;
pub use retry::{Retry, RetryPolicy};
pub use s3::{S3Config, S3Credentials, S3Store};
pub use url::StoreUrl;
/// The cancellation token stores take ([`open_with`], [`S3Store::with_cancel`],
/// [`Retry::with_cancel`]).
pub use tokio_util::sync::CancellationToken;

/// What `head` tells about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub len: u64,
    pub etag: String,
}

/// The condition of a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    /// Always write (last writer wins).
    None,
    /// Write only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Write only if the object's ETag is still this one (`If-Match`).
    IfMatch(String),
}

/// An object store. Implementations are cheap to share between threads.
pub trait ObjectStore: Send + Sync + 'static {
    /// The store's URL, never with secrets (invariant 8).
    fn describe(&self) -> String;
    /// Write the whole object at once; returns its new ETag.
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError>;
    /// Read the whole object and its ETag; [`StoreError::NotFound`] if absent.
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError>;
    /// Read exactly `len` bytes at `offset`; [`StoreError::Corrupt`] if the object is shorter.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;
    /// Length and ETag of the object, or `None` if absent.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Every key starting with `prefix`, sorted (pagination is internal).
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Remove the object; an absent key is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Open the store named by `url` (`file:///abs/path` or `s3://bucket/prefix`), wrapped in
/// [`Retry`] with the default policy. S3 settings come from the environment
/// ([`S3Config::from_env`]).
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_with(url, &CancellationToken::new())
}

/// [`open`], the store's calls cancelled (requests in flight aborted) when `cancel` is.
pub fn open_with(url: &str, cancel: &CancellationToken) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let store: Arc<dyn ObjectStore> = match StoreUrl::parse(url)? {
        StoreUrl::File(path) => Arc::new(Retry::new(LocalStore::open(path)?).with_cancel(cancel.clone())),
        StoreUrl::S3 { bucket, prefix } => {
            let s3 = S3Store::new(&bucket, &prefix, S3Config::from_env())?.with_cancel(cancel.clone());
            Arc::new(Retry::new(s3).with_cancel(cancel.clone()))
        }
    };
    Ok(store)
}

/// List at `key`, write a small object there, read it back and delete it: the store answers,
/// the bucket exists and the credentials may list and write. The first failure, as the store reported it.
pub fn probe(store: &dyn ObjectStore, key: &str) -> Result<(), StoreError> {
    let body = format!("hybridfs store check {key}");
    // A list first: some servers make a missing bucket on a PUT by an admin.
    store.list(key)?;
    store.put(key, body.as_bytes(), Cond::None)?;
    let (back, _) = store.get(key)?;
    if back != body.as_bytes() {
        return Err(StoreError::Corrupt { key: key.to_string(), why: "it reads back different bytes than were written".into() });
    }
    store.delete(key)
}

/// The ETag the local and in-memory stores give `data`: the first 32 hex digits of its blake3.
pub fn content_etag(data: &[u8]) -> String {
    let hash = blake3::hash(data);
    hex::encode(&hash.as_bytes()[..16])
}
