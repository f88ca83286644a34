//! Retry over Faulty: transient faults are ridden out within bounds, permanent ones are not
//! retried, lost answers of conditional puts are resolved, corrupted reads reach the caller.

use hybridfs_cloud::Cond;
use hybridfs_cloud::{Corruption, FaultPlan, Faulty, MemStore, ObjectStore, Retry, RetryPolicy, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn retrying(plan: &Arc<FaultPlan>) -> Retry<Faulty<MemStore>> {
    Retry::new(Faulty::new(MemStore::new(), plan.clone()))
}

#[test]
fn retry_recovers_from_two_injected_503s() {
    let plan = FaultPlan::new();
    let store = retrying(&plan);
    plan.fail_next_puts(2);
    let etag = store.put("blocks/a", b"data", Cond::None).expect("the third attempt succeeds");
    assert_eq!(store.get("blocks/a").unwrap(), (b"data".to_vec(), etag));
    assert_eq!(plan.puts_done(), 1);
}

#[test]
fn retry_gives_up_when_the_fault_persists() {
    let plan = FaultPlan::new();
    let store = retrying(&plan);
    plan.fail_next_puts(1_000);
    let start = Instant::now();
    let e = store.put("blocks/a", b"data", Cond::None).unwrap_err();
    assert!(matches!(e, StoreError::Server { status: 503, .. }), "{e:?}");
    // Default policy: 6 attempts, pauses 100+200+400+800+1600 ms.
    assert!(start.elapsed() >= Duration::from_millis(3_100), "{:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(plan.puts_done(), 0);
}

#[test]
fn retry_stops_within_the_total_time_bound() {
    let plan = FaultPlan::new();
    let policy = RetryPolicy { max_attempts: 1_000, max_total: Duration::from_millis(700), ..RetryPolicy::default() };
    let store = Retry::with_policy(Faulty::new(MemStore::new(), plan.clone()), policy);
    plan.kill();
    let start = Instant::now();
    assert!(matches!(store.list(""), Err(StoreError::Unreachable { .. })));
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn a_lost_compare_and_swap_is_never_retried() {
    let plan = FaultPlan::new();
    let store = retrying(&plan);
    store.put("heads/main", b"v1", Cond::IfAbsent).unwrap();
    let start = Instant::now();
    let e = store.put("heads/main", b"v2", Cond::IfAbsent).unwrap_err();
    assert!(matches!(e, StoreError::Precondition { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_millis(100), "no backoff happened");
    assert_eq!(plan.puts_done(), 1);
}

#[test]
fn a_store_dying_mid_push_fails_the_push_and_keeps_what_was_written() {
    let plan = FaultPlan::new();
    let policy = RetryPolicy { max_attempts: 3, first_delay: Duration::from_millis(10), ..RetryPolicy::default() };
    let store = Retry::with_policy(Faulty::new(MemStore::new(), plan.clone()), policy);
    plan.die_after_puts(3);
    let results: Vec<_> = (0..5).map(|i| store.put(&format!("blocks/{i}"), b"x", Cond::None)).collect();
    assert!(results[..3].iter().all(Result::is_ok));
    assert!(results[3..].iter().all(|r| matches!(r, Err(StoreError::Unreachable { .. }))), "{results:?}");
    assert!(matches!(store.head("blocks/0"), Err(StoreError::Unreachable { .. })), "every call fails while down");
    plan.heal();
    assert_eq!(store.list("blocks/").unwrap(), vec!["blocks/0", "blocks/1", "blocks/2"]);
}

#[test]
fn a_conditional_put_whose_answer_was_lost_still_succeeds() {
    let plan = FaultPlan::new();
    let store = retrying(&plan);
    plan.lose_next_put_answers(1);
    let first = store.put("heads/main", b"layer-1", Cond::IfAbsent).expect("applied, answer lost, resolved");
    assert_eq!(store.get("heads/main").unwrap(), (b"layer-1".to_vec(), first.clone()));
    plan.lose_next_put_answers(1);
    let second = store.put("heads/main", b"layer-2", Cond::IfMatch(first.clone())).expect("resolved too");
    assert_eq!(store.get("heads/main").unwrap(), (b"layer-2".to_vec(), second));
    let e = store.put("heads/main", b"layer-3", Cond::IfMatch(first)).unwrap_err();
    assert!(matches!(e, StoreError::Precondition { .. }), "a real loser still loses: {e:?}");
}

#[test]
fn corrupted_reads_return_different_bytes() {
    let plan = FaultPlan::new();
    let store = retrying(&plan);
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    store.put("blocks/ab/abcd", &data, Cond::None).unwrap();
    store.put("blocks/cd/cdef", &data, Cond::None).unwrap();
    plan.corrupt_reads("ab/", Corruption::FlipByte);
    let (flipped, _) = store.get("blocks/ab/abcd").unwrap();
    assert_eq!(flipped.len(), data.len());
    assert_ne!(flipped, data, "one byte differs: only a hash check can tell");
    assert_ne!(store.get_range("blocks/ab/abcd", 0, 100).unwrap(), data[..100]);
    assert_eq!(store.get("blocks/cd/cdef").unwrap().0, data, "other keys are untouched");
    plan.corrupt_reads("ab/", Corruption::Truncate);
    assert_eq!(store.get("blocks/ab/abcd").unwrap().0, data[..2048]);
    plan.heal();
    assert_eq!(store.get("blocks/ab/abcd").unwrap().0, data, "the stored object was never damaged");
}
