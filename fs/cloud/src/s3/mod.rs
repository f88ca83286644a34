//! [`S3Store`]: an object store on any S3-compatible endpoint (`s3://bucket/prefix`).
//!
//! # Keys
//!
//! Object `key` of the store `s3://B/P` is `P/key` in bucket `B` (just `key` when `P` is
//! empty); `list` strips `P/` again.
//!
//! # The async bridge
//!
//! Callers are plain threads and the trait is synchronous; aws-sdk-s3 is async. Every store of
//! a process shares one small tokio runtime (2 workers, threads `hybridfs-s3`), started by the
//! first store and kept for the life of the process. A call spawns its request on that
//! runtime, under a `tokio::time::timeout` a little past the SDK's own operation timeout, and
//! waits for the answer on a channel: a request past its deadline is dropped (aborted) on
//! the runtime, not left running. Waiting on a channel (not `Runtime::block_on`) is what makes
//! a call safe from any thread, a thread of another tokio runtime included: it blocks that
//! thread, but never panics.
//!
//! A store holds a cancellation token ([`S3Store::with_cancel`]; the node gives every store
//! of a mount the mount's): the request task runs under it, so cancelling the token drops
//! (aborts) every request in flight at once, and the waiting callers get
//! [`StoreError::Cancelled`]; a call made after that fails without a request.
//!
//! `head` of a key in a bucket that does not exist answers `None`: a HEAD answer has no body to
//! say which of the two is missing. Every other call says [`StoreError::NoBucket`].
//!
//! # Bounds
//!
//! Connect 5 s, socket read 30 s, whole operation 60 s ([`S3Config::default`]), so nothing
//! hangs; the SDK's own retries are off: [`crate::Retry`] decides what is retried.
//!
//! # Settings
//!
//! [`S3Config`] holds the endpoint, region, credentials and timeouts; [`S3Config::from_env`]
//! reads `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` and `AWS_REGION`/`AWS_DEFAULT_REGION`
//! (default `us-east-1`). Without explicit credentials the usual AWS chain finds them
//! (environment first). A custom endpoint implies path-style addressing
//! (`http://host:port/bucket/key`), which S3-compatible servers on an IP address need.
//!
//! Request checksums are computed only where S3 requires them: S3-compatible servers do not
//! all accept the newer default trailers, and every byte read is verified against its hash
//! above this tier anyway (invariant 5).

mod errors;

use crate::{check_key, check_prefix, CancellationToken, Cond, ObjectMeta, ObjectStore, StoreError};
use aws_sdk_s3::config::{retry::RetryConfig, timeout::TimeoutConfig, ResponseChecksumValidation};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use errors::{redact_url, Place};
use std::fmt;
use std::future::Future;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A listing stops with an error past this many pages (a billion keys): a bound on a server
/// that never ends its listing.
const MAX_LIST_PAGES: usize = 1_000_000;

/// How long past the operation timeout a caller waits before giving up on the runtime.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// An access key pair. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// How to reach an S3 store. Its `Debug` shows neither the secret key nor the endpoint's
/// user info.
#[derive(Clone)]
pub struct S3Config {
    /// Custom endpoint (`http://127.0.0.1:8333`); `None`: AWS S3 for the region.
    pub endpoint: Option<String>,
    /// `None`: `us-east-1`.
    pub region: Option<String>,
    /// `None`: the AWS default credentials chain.
    pub credentials: Option<S3Credentials>,
    /// `None`: path style exactly when a custom endpoint is set.
    pub force_path_style: Option<bool>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub operation_timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            credentials: None,
            force_path_style: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("force_path_style", &self.force_path_style)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl S3Config {
    /// Endpoint and region from the standard AWS variables; credentials from the AWS chain.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        S3Config {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            ..S3Config::default()
        }
    }

    fn region(&self) -> String {
        self.region.clone().unwrap_or_else(|| "us-east-1".to_string())
    }

    fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .operation_attempt_timeout(self.operation_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }
}

/// An [`ObjectStore`] in an S3 bucket, under a key prefix.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    region: String,
    place: Arc<Place>,
    wait: Duration,
    /// The process's runtime for object-store I/O ([`shared_runtime`]).
    runtime: &'static tokio::runtime::Runtime,
    /// Cancelled: requests in flight are aborted, new calls fail ([`S3Store::with_cancel`]).
    cancel: CancellationToken,
}

/// The one runtime of this process for object-store I/O, shared by every store it opens.
/// Never shut down: it lives as long as the process (a static is never dropped, so exiting
/// never waits for its tasks).
fn shared_runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> = std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hybridfs-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    built.as_ref().map_err(|e| StoreError::Other(format!("start the S3 client runtime: {e}")))
}

impl S3Store {
    /// A store on `bucket` under `prefix` (no leading or trailing `/`; may be empty). No
    /// request is made: a wrong bucket or credential shows on the first call.
    pub fn new(bucket: &str, prefix: &str, config: S3Config) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_key(&prefix)?;
        }
        let runtime = shared_runtime()?;
        let region = config.region();
        let place = Arc::new(Place {
            store: describe(bucket, &prefix),
            bucket: bucket.to_string(),
            endpoint: config
                .endpoint
                .as_deref()
                .map_or_else(|| format!("https://s3.{region}.amazonaws.com"), redact_url),
        });
        let wait = config.operation_timeout + ANSWER_GRACE;
        let cancel = CancellationToken::new();
        let client = wait_for(runtime, wait, &place, &cancel, client_for(config))?;
        let bucket = bucket.to_string();
        Ok(S3Store { client, bucket, prefix, region, place, wait, runtime, cancel })
    }

    /// Abort the store's requests in flight, and fail its later calls, once `cancel` is
    /// cancelled.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Create the bucket; one that this account already owns is fine.
    pub fn create_bucket(&self) -> Result<(), StoreError> {
        let req = self.client.create_bucket().bucket(&self.bucket);
        let req = match self.region.as_str() {
            "us-east-1" => req,
            region => {
                use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
                let location = BucketLocationConstraint::from(region);
                req.create_bucket_configuration(
                    CreateBucketConfiguration::builder().location_constraint(location).build(),
                )
            }
        };
        let place = self.place.clone();
        self.run(async move {
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e) if aws_sdk_s3::error::ProvideErrorMetadata::code(&e) == Some("BucketAlreadyOwnedByYou") => {
                    Ok(())
                }
                Err(e) => Err(place.map("(create bucket)", e)),
            }
        })
    }

    /// The bucket's key for store key `key`.
    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// Store key of bucket key `full`, if it is one of this store's keys.
    fn store_key(&self, full: &str) -> Option<String> {
        let key = if self.prefix.is_empty() { full } else { full.strip_prefix(&self.prefix)?.strip_prefix('/')? };
        check_key(key).ok().map(|()| key.to_string())
    }

    /// Run `fut` on the store's runtime and wait for its answer (see the module doc).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        wait_for(self.runtime, self.wait, &self.place, &self.cancel, fut)
    }

    async fn list_pages(
        client: Client,
        bucket: String,
        prefix: String,
        place: Arc<Place>,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let req = client.list_objects_v2().bucket(&bucket).prefix(&prefix).set_continuation_token(token.clone());
            let page = req.send().await.map_err(|e| place.map(&prefix, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) if token.as_deref() != Some(next) => token = Some(next.to_string()),
                (Some(true), _) => {
                    return Err(StoreError::Other(format!(
                        "list {prefix} in {}: the store's listing does not advance",
                        place.store
                    )))
                }
                _ => return Ok(keys),
            }
        }
        Err(StoreError::Other(format!("list {prefix} in {}: more than {MAX_LIST_PAGES} pages", place.store)))
    }
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.place.store.clone()
    }

    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        check_key(key)?;
        let mut req = self.client.put_object().bucket(&self.bucket).key(self.full_key(key));
        req = req.content_length(data.len() as i64).body(ByteStream::from(data.to_vec()));
        req = match &cond {
            Cond::None => req,
            Cond::IfAbsent => req.if_none_match("*"),
            Cond::IfMatch(etag) => req.if_match(etag),
        };
        let (place, key) = (self.place.clone(), key.to_string());
        self.run(async move {
            match req.send().await {
                Ok(out) => out.e_tag.ok_or_else(|| no_etag(&place, &key)),
                // If-Match on an absent object: S3 says 404, and the put lost all the same.
                Err(e) => match place.map(&key, e) {
                    StoreError::NotFound { key } if matches!(cond, Cond::IfMatch(_)) => {
                        Err(StoreError::Precondition { key })
                    }
                    other => Err(other),
                },
            }
        })
    }

    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        check_key(key)?;
        let req = self.client.get_object().bucket(&self.bucket).key(self.full_key(key));
        let (place, key) = (self.place.clone(), key.to_string());
        self.run(async move {
            let out = req.send().await.map_err(|e| place.map(&key, e))?;
            let etag = out.e_tag.clone().ok_or_else(|| no_etag(&place, &key))?;
            let want = out.content_length;
            let data = read_body(out.body, &place, &key).await?;
            if let Some(want) = want.filter(|&n| n != data.len() as i64) {
                let why = format!("the store announced {want} bytes and sent {}", data.len());
                return Err(StoreError::Corrupt { key, why });
            }
            Ok((data, etag))
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        if len == 0 {
            return self.head(key)?.map(|_| Vec::new()).ok_or_else(|| StoreError::not_found(key));
        }
        let last = offset
            .checked_add(len - 1)
            .ok_or_else(|| StoreError::Invalid(format!("range {offset}+{len} overflows")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .range(format!("bytes={offset}-{last}"));
        let (place, key) = (self.place.clone(), key.to_string());
        self.run(async move {
            let out = req.send().await.map_err(|e| match place.map(&key, e) {
                StoreError::Corrupt { key, .. } => StoreError::short_read(&key, offset, len, 0),
                other => other,
            })?;
            let data = read_body(out.body, &place, &key).await?;
            if data.len() as u64 != len {
                return Err(StoreError::short_read(&key, offset, len, data.len() as u64));
            }
            Ok(data)
        })
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        let req = self.client.head_object().bucket(&self.bucket).key(self.full_key(key));
        let (place, key) = (self.place.clone(), key.to_string());
        self.run(async move {
            match req.send().await.map_err(|e| place.map(&key, e)) {
                Ok(out) => {
                    let etag = out.e_tag.ok_or_else(|| no_etag(&place, &key))?;
                    Ok(Some(ObjectMeta { len: out.content_length.unwrap_or(0).max(0) as u64, etag }))
                }
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        let full = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", self.prefix) };
        let (client, bucket, place) = (self.client.clone(), self.bucket.clone(), self.place.clone());
        let full_keys = self.run(Self::list_pages(client, bucket, full, place))?;
        let mut keys: Vec<String> = full_keys.iter().filter_map(|k| self.store_key(k)).collect();
        keys.sort_unstable();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let req = self.client.delete_object().bucket(&self.bucket).key(self.full_key(key));
        let (place, key) = (self.place.clone(), key.to_string());
        self.run(async move {
            match req.send().await.map_err(|e| place.map(&key, e)) {
                Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

fn describe(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

/// The SDK client for `config`: our timeouts, no SDK retries, path style for custom endpoints.
async fn client_for(config: S3Config) -> Result<Client, StoreError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region()))
        .timeout_config(config.timeouts())
        .retry_config(RetryConfig::disabled());
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(c) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            None,
            None,
            "hybridfs",
        ));
    }
    let shared = loader.load().await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style.unwrap_or(config.endpoint.is_some()))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(s3))
}

/// Spawn `fut` on `runtime` and wait at most `wait` for its answer; past `wait`, or once
/// `cancel` (or the token of the call in progress) is cancelled, the request is dropped on the
/// runtime (aborted), not left running.
fn wait_for<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    wait: Duration,
    place: &Place,
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    // The call's own token ([`crate::CallScoped`]), or one never cancelled.
    let call = crate::call::call_token().unwrap_or_default();
    if cancel.is_cancelled() || call.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let cancel = cancel.clone();
    runtime.spawn(async move {
        // None: cancelled; Some(None): timed out.
        let answer = call.run_until_cancelled_owned(cancel.run_until_cancelled_owned(tokio::time::timeout(wait, fut))).await;
        let _ = tx.send(answer.flatten().map(|timed| timed.ok()));
    });
    // The task answers by `wait`; the grace covers a runtime too busy to run it on time.
    match rx.recv_timeout(wait + Duration::from_secs(1)) {
        Ok(Some(Some(answer))) => answer,
        Ok(None) => Err(StoreError::Cancelled),
        Ok(Some(None)) | Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(place.unreachable(format!("no answer within {wait:?}")))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(StoreError::Other("the S3 request task ended without an answer".into()))
        }
    }
}

async fn read_body(body: ByteStream, place: &Place, key: &str) -> Result<Vec<u8>, StoreError> {
    match body.collect().await {
        Ok(bytes) => Ok(bytes.into_bytes().to_vec()),
        Err(e) => Err(place.unreachable(format!("read {key}: {}", errors::chain(&e)))),
    }
}

fn no_etag(place: &Place, key: &str) -> StoreError {
    StoreError::Other(format!("{} {key}: the store's answer has no ETag", place.store))
}

#[cfg(test)]
mod tests {
    use super::{S3Config, S3Credentials, S3Store};

    /// A request past its deadline is dropped on the runtime (its future is aborted), not left
    /// running; and every store of the process shares one runtime.
    #[test]
    fn a_timed_out_request_is_aborted_and_stores_share_one_runtime() {
        let (a, b) = (store("a"), store("b"));
        assert!(std::ptr::eq(a.runtime, b.runtime), "each store started its own runtime");
        let (dropped, never) = never_answering();
        let r = super::wait_for(a.runtime, std::time::Duration::from_millis(50), &a.place, &a.cancel, never);
        assert!(r.is_err(), "a request that never answers must fail at its deadline");
        assert!(dropped_soon(&dropped), "the timed-out request is still running on the runtime");
    }

    /// A request that never answers, and a flag set when the runtime drops (aborts) it.
    fn never_answering() -> (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        impl std::future::Future<Output = Result<(), crate::StoreError>> + Send + 'static,
    ) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let never = async move {
            let _guard = guard;
            std::future::pending::<Result<(), crate::StoreError>>().await
        };
        (dropped, never)
    }

    /// Whether `dropped` is set within 2 s.
    fn dropped_soon(dropped: &std::sync::atomic::AtomicBool) -> bool {
        (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            dropped.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Cancelling the store's token aborts a request in flight long before its deadline (the
    /// caller gets `Cancelled`, the request's future is dropped), and fails later calls.
    #[test]
    fn cancel_aborts_a_request_in_flight_and_fails_later_calls() {
        let cancel = crate::CancellationToken::new();
        let s = store("c").with_cancel(cancel.clone());
        let (dropped, never) = never_answering();
        let canceller = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            canceller.cancel();
        });
        // An hour-long deadline: only the cancellation can end this call.
        let r = super::wait_for(s.runtime, std::time::Duration::from_secs(3600), &s.place, &s.cancel, never);
        t.join().unwrap();
        assert!(matches!(r, Err(crate::StoreError::Cancelled)), "{r:?}");
        assert!(dropped_soon(&dropped), "the cancelled request is still running on the runtime");
        let later = <S3Store as crate::ObjectStore>::get(&s, "k");
        assert!(matches!(later, Err(crate::StoreError::Cancelled)), "{later:?}");
    }

    fn store(prefix: &str) -> S3Store {
        let config = S3Config { endpoint: Some("http://127.0.0.1:9".into()), ..S3Config::default() };
        S3Store::new("bkt", prefix, config).unwrap()
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let s = store("vol/a/");
        assert_eq!(s.full_key("heads/main"), "vol/a/heads/main");
        assert_eq!(s.store_key("vol/a/heads/main").as_deref(), Some("heads/main"));
        assert_eq!(s.store_key("vol/ab/x"), None);
        assert_eq!(s.store_key("vol/a/"), None);
        let bare = store("");
        assert_eq!(bare.full_key("heads/main"), "heads/main");
        assert_eq!(bare.store_key("heads/main").as_deref(), Some("heads/main"));
    }

    #[test]
    fn describe_and_debug_hold_no_secret() {
        let creds = S3Credentials { access_key_id: "AKIA".into(), secret_access_key: "s3cr3t".into() };
        let config = S3Config {
            endpoint: Some("http://u:pw@127.0.0.1:9".into()),
            credentials: Some(creds),
            ..S3Config::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("pw"), "{debug}");
        let s = S3Store::new("bkt", "p", config).unwrap();
        assert_eq!(<S3Store as crate::ObjectStore>::describe(&s), "s3://bkt/p");
        assert_eq!(s.place.endpoint, "http://127.0.0.1:9");
    }
}
