//! Cancellation per call: one piece of work (a push, a merge) cancelled on its own, while the
//! store it runs on serves everything else.
//!
//! A store's own token ([`crate::open_with`]) ends all its calls (a mount's stop). A call's
//! token, usually a child of that one, ends only the calls made through a [`CallScoped`]
//! view of the store: each call first checks the token, then runs with it as the calling
//! thread's *call token*, which [`crate::Retry`] (between attempts) and [`crate::S3Store`]
//! (the request in flight is aborted) watch beside their own. Any thread that calls through
//! the view gets it: a push's uploaders need nothing of their own.

use crate::{CancellationToken, Cond, ObjectMeta, ObjectStore, StoreError};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static CALL: RefCell<Option<CancellationToken>> = const { RefCell::new(None) };
}

/// The token of the call this thread is in, if it runs one through a [`CallScoped`] store.
pub(crate) fn call_token() -> Option<CancellationToken> {
    CALL.with(|c| c.borrow().clone())
}

/// Whether the call this thread is in was cancelled.
pub(crate) fn call_cancelled() -> bool {
    CALL.with(|c| c.borrow().as_ref().is_some_and(CancellationToken::is_cancelled))
}

/// A store whose calls also end, with [`StoreError::Cancelled`], when `cancel` is cancelled.
pub struct CallScoped {
    inner: Arc<dyn ObjectStore>,
    cancel: CancellationToken,
}

impl CallScoped {
    pub fn new(inner: Arc<dyn ObjectStore>, cancel: CancellationToken) -> Self {
        CallScoped { inner, cancel }
    }

    fn scoped<T>(&self, call: impl FnOnce(&dyn ObjectStore) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let outer = CALL.with(|c| c.replace(Some(self.cancel.clone())));
        let result = call(&*self.inner);
        CALL.with(|c| *c.borrow_mut() = outer);
        match result {
            Err(_) if self.cancel.is_cancelled() => Err(StoreError::Cancelled),
            r => r,
        }
    }
}

impl ObjectStore for CallScoped {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        self.scoped(|s| s.put(key, data, cond))
    }
    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.scoped(|s| s.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.scoped(|s| s.get_range(key, offset, len))
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.scoped(|s| s.head(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.scoped(|s| s.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.scoped(|s| s.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemStore, Retry, RetryPolicy};
    use std::time::Duration;

    /// A store that is always unreachable: Retry keeps trying until cancelled.
    struct Down;
    impl ObjectStore for Down {
        fn describe(&self) -> String {
            "down".into()
        }
        fn put(&self, _: &str, _: &[u8], _: Cond) -> Result<String, StoreError> {
            Err(StoreError::Unreachable { endpoint: "down".into(), msg: "no".into() })
        }
        fn get(&self, k: &str) -> Result<(Vec<u8>, String), StoreError> {
            self.put(k, b"", Cond::None).map(|_| (vec![], String::new()))
        }
        fn get_range(&self, k: &str, _: u64, _: u64) -> Result<Vec<u8>, StoreError> {
            self.get(k).map(|r| r.0)
        }
        fn head(&self, k: &str) -> Result<Option<ObjectMeta>, StoreError> {
            self.get(k).map(|_| None)
        }
        fn list(&self, k: &str) -> Result<Vec<String>, StoreError> {
            self.get(k).map(|_| vec![])
        }
        fn delete(&self, k: &str) -> Result<(), StoreError> {
            self.get(k).map(|_| ())
        }
    }

    #[test]
    fn a_cancelled_call_ends_its_own_calls_only() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::default());
        let token = CancellationToken::new();
        let call = CallScoped::new(store.clone(), token.clone());
        call.put("a", b"1", Cond::None).unwrap();
        token.cancel();
        assert!(matches!(call.get("a"), Err(StoreError::Cancelled)));
        assert_eq!(store.get("a").unwrap().0, b"1", "the store itself still serves");
    }

    #[test]
    fn a_call_cancelled_while_retrying_ends_promptly() {
        // Retries for an hour unless the call's cancel reaches the pauses between attempts.
        let policy = RetryPolicy { max_attempts: 1_000_000, max_total: Duration::from_secs(3600), ..RetryPolicy::default() };
        let store: Arc<dyn ObjectStore> = Arc::new(Retry::with_policy(Down, policy));
        let token = CancellationToken::new();
        let call = CallScoped::new(store, token.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(call.put("a", b"1", Cond::None)));
        std::thread::sleep(Duration::from_millis(200));
        token.cancel();
        let ended = rx.recv_timeout(Duration::from_secs(60)).expect("the call ends at its cancel");
        assert!(matches!(ended, Err(StoreError::Cancelled)), "{ended:?}");
    }
}
