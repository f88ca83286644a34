//! [`Faulty`]: test-only fault injection around any store. Not for production use.
//!
//! A shared [`FaultPlan`] (atomics, so a test changes it while other threads push) decides
//! what goes wrong:
//!
//! - `fail_next_puts(n)`: the next `n` puts are refused with HTTP 503 and not applied.
//! - `lose_next_put_answers(n)`: the next `n` puts are applied, then answer "unreachable" (the
//!   connection died after the write).
//! - `die_after_puts(k)`: after `k` more successful puts the store goes down: every later call
//!   of any kind fails with [`StoreError::Unreachable`] until [`FaultPlan::heal`]. This is the
//!   store dying in the middle of a push. `kill()` is `die_after_puts(0)` for all calls at once.
//! - `corrupt_reads(substring, how)`: `get` and `get_range` of keys containing `substring`
//!   return wrong bytes (one flipped, or truncated), as a bad disk or proxy would; the store
//!   itself is untouched. Callers must catch this by checking hashes (invariant 5).
//!
//! Faults are checked in that order on a put: down, dying, 503, then the write, then a lost
//! answer.

use crate::{Cond, ObjectMeta, ObjectStore, StoreError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How [`FaultPlan::corrupt_reads`] damages what a read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Flip the lowest bit of the middle byte (an empty object gains a byte).
    FlipByte,
    /// Drop the second half (an empty object stays empty: choose `FlipByte` for those).
    Truncate,
}

/// Countdown value meaning "not dying".
const NOT_DYING: u64 = u64::MAX;

/// What a [`Faulty`] store does wrong; share it with `Arc` and change it at any time.
pub struct FaultPlan {
    fail_puts: AtomicU64,
    lose_answers: AtomicU64,
    /// Successful puts left before the store goes down, or [`NOT_DYING`].
    puts_to_death: AtomicU64,
    down: AtomicBool,
    corrupt: Mutex<Option<(String, Corruption)>>,
    puts_done: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            fail_puts: AtomicU64::new(0),
            lose_answers: AtomicU64::new(0),
            puts_to_death: AtomicU64::new(NOT_DYING),
            down: AtomicBool::new(false),
            corrupt: Mutex::new(None),
            puts_done: AtomicU64::new(0),
        }
    }
}

impl FaultPlan {
    /// A plan with no fault.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn fail_next_puts(&self, n: u64) {
        self.fail_puts.store(n, Ordering::SeqCst);
    }

    pub fn lose_next_put_answers(&self, n: u64) {
        self.lose_answers.store(n, Ordering::SeqCst);
    }

    pub fn die_after_puts(&self, k: u64) {
        self.puts_to_death.store(k, Ordering::SeqCst);
    }

    /// The store is down from now on, for every call.
    pub fn kill(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    pub fn corrupt_reads(&self, key_substring: &str, how: Corruption) {
        *self.corrupt.lock() = Some((key_substring.to_string(), how));
    }

    /// Back to no fault at all (the store is up again; nothing it lost comes back).
    pub fn heal(&self) {
        self.fail_puts.store(0, Ordering::SeqCst);
        self.lose_answers.store(0, Ordering::SeqCst);
        self.puts_to_death.store(NOT_DYING, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
        *self.corrupt.lock() = None;
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Puts applied to the inner store through the wrapper so far.
    pub fn puts_done(&self) -> u64 {
        self.puts_done.load(Ordering::SeqCst)
    }

    /// Take one from a counter if it is above zero; whether one was taken.
    fn take(counter: &AtomicU64) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// Count one put towards the death countdown; false once the store has died.
    fn survive_put(&self) -> bool {
        let next = |n: u64| match n {
            NOT_DYING => Some(NOT_DYING),
            0 => None,
            n => Some(n - 1),
        };
        if self.puts_to_death.fetch_update(Ordering::SeqCst, Ordering::SeqCst, next).is_err() {
            self.kill();
        }
        !self.is_down()
    }

    fn corruption_for(&self, key: &str) -> Option<Corruption> {
        self.corrupt.lock().as_ref().filter(|(sub, _)| key.contains(sub.as_str())).map(|(_, how)| *how)
    }
}

/// A store that fails as its [`FaultPlan`] says. Test-only.
pub struct Faulty<S> {
    inner: S,
    plan: Arc<FaultPlan>,
}

impl<S: ObjectStore> Faulty<S> {
    pub fn new(inner: S, plan: Arc<FaultPlan>) -> Self {
        Faulty { inner, plan }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.plan.is_down() {
            return Err(self.down_error());
        }
        Ok(())
    }

    fn down_error(&self) -> StoreError {
        StoreError::Unreachable { endpoint: self.inner.describe(), msg: "injected fault: the store is down".into() }
    }

    fn damage(&self, key: &str, mut data: Vec<u8>) -> Vec<u8> {
        match self.plan.corruption_for(key) {
            Some(Corruption::FlipByte) if data.is_empty() => data.push(0),
            Some(Corruption::FlipByte) => {
                let mid = data.len() / 2;
                data[mid] ^= 1;
            }
            Some(Corruption::Truncate) => data.truncate(data.len() / 2),
            None => {}
        }
        data
    }
}

impl<S: ObjectStore> ObjectStore for Faulty<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        self.check_up()?;
        if !self.plan.survive_put() {
            return Err(self.down_error());
        }
        if FaultPlan::take(&self.plan.fail_puts) {
            return Err(StoreError::Server { status: 503, msg: "injected fault: SlowDown".into() });
        }
        let etag = self.inner.put(key, data, cond)?;
        self.plan.puts_done.fetch_add(1, Ordering::SeqCst);
        if FaultPlan::take(&self.plan.lose_answers) {
            let msg = "injected fault: connection reset after the write".into();
            return Err(StoreError::Unreachable { endpoint: self.inner.describe(), msg });
        }
        Ok(etag)
    }

    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.check_up()?;
        let (data, etag) = self.inner.get(key)?;
        Ok((self.damage(key, data), etag))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.check_up()?;
        let data = self.inner.get_range(key, offset, len)?;
        Ok(self.damage(key, data))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.check_up()?;
        self.inner.head(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check_up()?;
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_up()?;
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use super::{FaultPlan, Faulty};
    use crate::{Cond, MemStore, ObjectStore, StoreError};

    #[test]
    fn faulty_without_faults_conforms() {
        crate::conformance(&Faulty::new(MemStore::new(), FaultPlan::new()));
    }

    #[test]
    fn the_store_dies_after_k_puts_until_healed() {
        let plan = FaultPlan::new();
        let store = Faulty::new(MemStore::new(), plan.clone());
        plan.die_after_puts(2);
        store.put("a", b"1", Cond::None).unwrap();
        store.put("b", b"2", Cond::None).unwrap();
        assert!(matches!(store.put("c", b"3", Cond::None), Err(StoreError::Unreachable { .. })));
        assert!(matches!(store.get("a"), Err(StoreError::Unreachable { .. })), "every call fails once down");
        assert!(matches!(store.list(""), Err(StoreError::Unreachable { .. })));
        plan.heal();
        assert_eq!(store.list("").unwrap(), vec!["a".to_string(), "b".to_string()], "c was never written");
        assert_eq!(plan.puts_done(), 2);
    }

    #[test]
    fn lost_answers_are_applied_writes() {
        let plan = FaultPlan::new();
        let store = Faulty::new(MemStore::new(), plan.clone());
        plan.lose_next_put_answers(1);
        assert!(store.put("a", b"1", Cond::None).unwrap_err().is_transient());
        assert_eq!(store.get("a").unwrap().0, b"1");
    }
}
