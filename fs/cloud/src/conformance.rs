//! The behaviour every [`ObjectStore`] must show. Each implementation calls [`conformance`]
//! from its tests on an empty store (all keys are under `conformance/`).

use crate::{Cond, ObjectMeta, ObjectStore, StoreError};

const BASE: &str = "conformance";

/// Check `store` against the trait's contract; panics with the failed expectation.
pub fn conformance(store: &dyn ObjectStore) {
    round_trip(store);
    if_absent(store);
    if_match(store);
    races(store);
    absent_objects(store);
    ranges(store);
    listing(store);
    pagination(store);
    deletes(store);
    sizes(store);
    invalid_keys(store);
}

fn key(name: &str) -> String {
    format!("{BASE}/{name}")
}

fn round_trip(store: &dyn ObjectStore) {
    let k = key("round/trip");
    let etag = store.put(&k, b"hello", Cond::None).expect("put");
    assert!(!etag.is_empty(), "put returns an etag");
    let (data, got_etag) = store.get(&k).expect("get");
    assert_eq!(data, b"hello");
    assert_eq!(got_etag, etag, "get returns the etag put returned");
    assert_eq!(store.head(&k).expect("head"), Some(ObjectMeta { len: 5, etag: etag.clone() }));
    let etag2 = store.put(&k, b"hello, again", Cond::None).expect("overwrite");
    assert_ne!(etag2, etag, "new content, new etag");
    assert_eq!(store.get(&k).expect("get").0, b"hello, again");
}

fn if_absent(store: &dyn ObjectStore) {
    let k = key("heads/absent");
    let etag = store.put(&k, b"first", Cond::IfAbsent).expect("the first IfAbsent put wins");
    let lost = store.put(&k, b"second", Cond::IfAbsent);
    assert!(matches!(lost, Err(StoreError::Precondition { .. })), "second IfAbsent: {lost:?}");
    assert_eq!(store.get(&k).expect("get"), (b"first".to_vec(), etag), "the loser changed nothing");
}

fn if_match(store: &dyn ObjectStore) {
    let k = key("heads/match");
    let stale = store.put(&k, b"v1", Cond::IfAbsent).expect("create");
    let current = store.put(&k, b"v2", Cond::IfMatch(stale.clone())).expect("IfMatch current etag");
    let lost = store.put(&k, b"v3", Cond::IfMatch(stale));
    assert!(matches!(lost, Err(StoreError::Precondition { .. })), "IfMatch stale etag: {lost:?}");
    assert_eq!(store.get(&k).expect("get"), (b"v2".to_vec(), current));
    let missing = store.put(&key("heads/never"), b"x", Cond::IfMatch("0123456789abcdef".into()));
    assert!(matches!(missing, Err(StoreError::Precondition { .. })), "IfMatch on absent: {missing:?}");
}

/// Conditional puts racing on one key: exactly one wins, whatever the interleaving.
fn races(store: &dyn ObjectStore) {
    let owned = key("heads/race");
    let k = owned.as_str();
    // Each racer writes its own bytes, unlike any earlier content: an ETag may be a content
    // hash (S3's MD5, ours blake3), and rewriting identical bytes keeps it.
    let wins = |round: u8, cond: &(dyn Fn() -> Cond + Sync)| -> usize {
        std::thread::scope(|s| {
            let tries: Vec<_> = (0..8u8).map(|i| s.spawn(move || store.put(k, &[round, i], cond()))).collect();
            let results: Vec<_> = tries.into_iter().map(|t| t.join().expect("racer")).collect();
            for r in &results {
                assert!(matches!(r, Ok(_) | Err(StoreError::Precondition { .. })), "a racer failed otherwise: {r:?}");
            }
            results.iter().filter(|r| r.is_ok()).count()
        })
    };
    assert_eq!(wins(1, &|| Cond::IfAbsent), 1, "IfAbsent: exactly one racer creates the key");
    let (_, etag) = store.get(k).expect("get");
    assert_eq!(wins(2, &|| Cond::IfMatch(etag.clone())), 1, "IfMatch: exactly one racer moves the head");
}

fn absent_objects(store: &dyn ObjectStore) {
    let k = key("no/such/object");
    assert_eq!(store.head(&k).expect("head absent"), None);
    assert!(matches!(store.get(&k), Err(StoreError::NotFound { .. })), "get absent");
    assert!(matches!(store.get_range(&k, 0, 1), Err(StoreError::NotFound { .. })), "get_range absent");
}

fn ranges(store: &dyn ObjectStore) {
    let k = key("ranges");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put(&k, &data, Cond::None).expect("put");
    assert_eq!(store.get_range(&k, 0, 10).expect("head range"), &data[..10]);
    assert_eq!(store.get_range(&k, 4097, 3000).expect("middle range"), &data[4097..7097]);
    assert_eq!(store.get_range(&k, 9_990, 10).expect("tail range"), &data[9_990..]);
    assert_eq!(store.get_range(&k, 5, 0).expect("empty range"), Vec::<u8>::new());
    let short = store.get_range(&k, 9_995, 10);
    assert!(matches!(short, Err(StoreError::Corrupt { .. })), "range past the end: {short:?}");
    let beyond = store.get_range(&k, 20_000, 1);
    assert!(matches!(beyond, Err(StoreError::Corrupt { .. })), "range beyond the end: {beyond:?}");
}

fn listing(store: &dyn ObjectStore) {
    for name in ["list/b/2", "list/a", "list/b/1", "list/ab", "list/c/x/y", "listing", "lis"] {
        store.put(&key(name), name.as_bytes(), Cond::None).expect("put");
    }
    let all = store.list(&key("list/")).expect("list");
    let want: Vec<String> = ["list/a", "list/ab", "list/b/1", "list/b/2", "list/c/x/y"].map(key).into();
    assert_eq!(all, want, "every key under the prefix, sorted, nothing else");
    assert_eq!(store.list(&key("list/a")).expect("list"), vec![key("list/a"), key("list/ab")], "string prefix");
    assert_eq!(store.list(&key("list/b/")).expect("list"), vec![key("list/b/1"), key("list/b/2")]);
    assert_eq!(store.list(&key("list/zzz")).expect("list"), Vec::<String>::new());
    assert_eq!(store.list(&key("nothing/here/")).expect("list"), Vec::<String>::new());
    let everything = store.list("").expect("list everything");
    assert!(everything.contains(&key("lis")) && everything.contains(&key("list/c/x/y")));
    assert!(everything.windows(2).all(|w| w[0] < w[1]), "sorted");
}

/// 1100 keys: more than one S3 page (1000), so continuation tokens are followed.
fn pagination(store: &dyn ObjectStore) {
    let keys: Vec<String> = (0..1100).map(|i| key(&format!("page/{i:05}"))).collect();
    std::thread::scope(|s| {
        for chunk in keys.chunks(138) {
            s.spawn(move || {
                for k in chunk {
                    store.put(k, b"p", Cond::None).expect("put");
                }
            });
        }
    });
    assert_eq!(store.list(&key("page/")).expect("list 1100 keys"), keys);
}

fn deletes(store: &dyn ObjectStore) {
    let k = key("delete/me");
    store.put(&k, b"x", Cond::None).expect("put");
    store.delete(&k).expect("delete");
    assert_eq!(store.head(&k).expect("head"), None);
    assert!(matches!(store.get(&k), Err(StoreError::NotFound { .. })));
    assert!(!store.list(&key("delete/")).expect("list").contains(&k));
    store.delete(&k).expect("deleting an absent key is fine");
    store.put(&k, b"again", Cond::IfAbsent).expect("a deleted key is absent");
}

fn sizes(store: &dyn ObjectStore) {
    let one = key("sizes/one");
    store.put(&one, b"z", Cond::None).expect("put 1 byte");
    assert_eq!(store.get(&one).expect("get").0, b"z");
    let empty = key("sizes/empty");
    store.put(&empty, b"", Cond::None).expect("put 0 bytes");
    assert_eq!(store.get(&empty).expect("get").0, b"");
    assert_eq!(store.head(&empty).expect("head").map(|m| m.len), Some(0));
    let big_key = key("sizes/8mib");
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let etag = store.put(&big_key, &big, Cond::None).expect("put 8 MiB");
    let (got, got_etag) = store.get(&big_key).expect("get 8 MiB");
    assert!(got == big, "8 MiB round trip");
    assert_eq!(got_etag, etag);
    assert_eq!(store.head(&big_key).expect("head").map(|m| m.len), Some(8 << 20));
    assert!(store.get_range(&big_key, 5 << 20, 1 << 20).expect("range") == big[5 << 20..6 << 20]);
}

fn invalid_keys(store: &dyn ObjectStore) {
    for bad in ["", "/abs", "a//b", "../up", "a/./b"] {
        assert!(matches!(store.put(bad, b"x", Cond::None), Err(StoreError::Invalid(_))), "put {bad:?}");
        assert!(matches!(store.get(bad), Err(StoreError::Invalid(_))), "get {bad:?}");
    }
    assert!(matches!(store.list("../"), Err(StoreError::Invalid(_))), "list ../");
}
