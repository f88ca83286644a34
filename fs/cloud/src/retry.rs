//! [`Retry`]: a store wrapper that tries transient failures again, within bounds.
//!
//! Only errors that say so ([`StoreError::is_transient`]: unreachable, 5xx) are retried, with
//! exponential backoff (100 ms doubling, at most 3 s a pause), at most 6 attempts and 30 s in
//! all ([`RetryPolicy::default`]). Each retry logs one warning with the store's URL (never a
//! secret), the operation, the key and the error. A lost compare-and-swap is never retried.
//!
//! # Conditional puts whose answer was lost
//!
//! A put may reach the store and its answer get lost (connection reset after the write). A
//! conditional put retried after that finds its own write and fails with `Precondition`. So when
//! a conditional put fails with `Precondition` after a transient failure, `Retry` reads the
//! object: if it holds exactly the bytes of this put, the put did happen and succeeds with the
//! current ETag. Otherwise another writer won and the `Precondition` stands.
//!
//! # Cancellation
//!
//! With a token ([`Retry::with_cancel`]), a cancelled token fails every call at once with
//! [`StoreError::Cancelled`], also in the middle of a pause between attempts (looked at every
//! [`CANCEL_POLL`]). The store inside aborts its request in flight itself ([`crate::S3Store`]
//! holds the same token).

use crate::call::call_cancelled;
use crate::{CancellationToken, Cond, ObjectMeta, ObjectStore, StoreError};
use std::time::{Duration, Instant};

/// How often a pause between attempts looks at the cancellation token.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Sleep `pause`, or less when `cancel` is cancelled meanwhile; false when cancelled.
fn sleep_unless_cancelled(cancel: &CancellationToken, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    while !cancel.is_cancelled() && !call_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(CANCEL_POLL));
    }
    false
}

/// Object-store requests by operation (`put`, `get`, ...) and outcome (`ok`, `transient`,
/// `failed`), each attempt counted; their latency (histogram, seconds); retries by operation.
pub const STORE_REQUESTS: &str = "hybridfs_store_requests_total";
pub const STORE_REQUEST_SECONDS: &str = "hybridfs_store_request_seconds";
pub const STORE_RETRIES: &str = "hybridfs_store_retries_total";

fn count_request<T>(op: &'static str, result: &Result<T, StoreError>, took: Duration) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) if e.is_transient() => "transient",
        Err(_) => "failed",
    };
    metrics::counter!(STORE_REQUESTS, "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!(STORE_REQUEST_SECONDS, "op" => op).record(took.as_secs_f64());
}

/// How long and how often [`Retry`] tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The pause after the first failure; it doubles after each retry.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(3),
            max_total: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (from 1), `elapsed` after the first
    /// began; `None`: give up.
    pub fn delay(&self, attempt: u32, elapsed: Duration) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let doubled = self.first_delay.saturating_mul(1u32 << (attempt - 1).min(20));
        let pause = doubled.min(self.max_delay);
        (elapsed.saturating_add(pause) <= self.max_total).then_some(pause)
    }
}

/// An [`ObjectStore`] that retries the transient failures of `S`.
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    cancel: CancellationToken,
}

impl<S: ObjectStore> Retry<S> {
    pub fn new(inner: S) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    pub fn with_policy(inner: S, policy: RetryPolicy) -> Self {
        Retry { inner, policy, cancel: CancellationToken::new() }
    }

    /// Fail calls with [`StoreError::Cancelled`] once `cancel` is cancelled.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Call `call` until it succeeds, fails for good, or the policy gives up.
    fn run<T>(&self, op: &'static str, key: &str, mut call: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            if self.cancel.is_cancelled() || call_cancelled() {
                return Err(StoreError::Cancelled);
            }
            let sent = Instant::now();
            let result = call();
            count_request(op, &result, sent.elapsed());
            let err = match result {
                Err(e) if e.is_transient() => e,
                done => return done,
            };
            let Some(pause) = self.policy.delay(attempt, start.elapsed()) else {
                return Err(err);
            };
            // One line per call at info (the mount log shows it; a command's default filter does
            // not: its error, if the retries fail, is its one line), the rest at debug.
            let store = self.inner.describe();
            if attempt == 1 {
                tracing::info!(%store, op, key, error = %err, "object store call failed, retrying");
            } else {
                tracing::debug!(%store, op, key, attempt, ?pause, error = %err, "object store call failed, retrying");
            }
            metrics::counter!(STORE_RETRIES, "op" => op).increment(1);
            if !sleep_unless_cancelled(&self.cancel, pause) {
                return Err(StoreError::Cancelled);
            }
            attempt += 1;
        }
    }

    /// A conditional put lost after an attempt whose answer was lost: did that attempt win?
    fn resolve_lost_answer(&self, key: &str, data: &[u8], lost: StoreError) -> Result<String, StoreError> {
        match self.run("get", key, || self.inner.get(key)) {
            Ok((current, etag)) if current == data => {
                let store = self.inner.describe();
                tracing::info!(%store, key, "conditional put had succeeded before its answer was lost");
                Ok(etag)
            }
            _ => Err(lost),
        }
    }
}

impl<S: ObjectStore> ObjectStore for Retry<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        let mut answer_lost = false;
        let result = self.run("put", key, || {
            let result = self.inner.put(key, data, cond.clone());
            answer_lost |= result.as_ref().is_err_and(StoreError::is_transient);
            result
        });
        match result {
            Err(lost @ StoreError::Precondition { .. }) if answer_lost && cond != Cond::None => {
                self.resolve_lost_answer(key, data, lost)
            }
            other => other,
        }
    }

    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.run("get", key, || self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.run("get_range", key, || self.inner.get_range(key, offset, len))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.run("head", key, || self.inner.head(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run("list", prefix, || self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", key, || self.inner.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::RetryPolicy;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_the_cap_within_attempts_and_total_time() {
        let p = RetryPolicy::default();
        let ms = Duration::from_millis;
        let pauses: Vec<Option<Duration>> = (1..=6).map(|a| p.delay(a, Duration::ZERO)).collect();
        assert_eq!(pauses, vec![Some(ms(100)), Some(ms(200)), Some(ms(400)), Some(ms(800)), Some(ms(1600)), None]);
        let long = RetryPolicy { max_attempts: 100, ..RetryPolicy::default() };
        assert_eq!(long.delay(9, Duration::ZERO), Some(Duration::from_secs(3)), "capped at 3 s");
        assert_eq!(long.delay(9, Duration::from_secs(28)), None, "would pass 30 s in all");
        assert_eq!(long.delay(99, Duration::ZERO), Some(Duration::from_secs(3)), "no overflow");
    }
}
