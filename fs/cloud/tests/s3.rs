//! The S3 store against a real SeaweedFS server on 127.0.0.1 (started per test; see
//! `hybridfs_cloud::testserver`). Without `weed` installed these tests fail and say how to
//! install it: they never skip.

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_cloud::{conformance, Cond, ObjectStore, Retry, S3Config, S3Credentials, S3Store, StoreError};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn server() -> SeaweedServer {
    SeaweedServer::start().unwrap_or_else(|e| panic!("these tests need a real S3 server: {e}"))
}

#[test]
fn s3_store_passes_conformance() {
    let server = server();
    let store = server.store("conformance", "").unwrap();
    assert_eq!(store.describe(), "s3://conformance");
    conformance(&store);
}

#[test]
fn s3_store_under_a_prefix_passes_conformance_and_sees_only_its_prefix() {
    let server = server();
    let store = server.store("shared", "volumes/one").unwrap();
    conformance(&store);
    let other = server.store("shared", "volumes/one-b").unwrap();
    other.put("heads/main", b"x", Cond::None).unwrap();
    assert_eq!(other.list("").unwrap(), vec!["heads/main"], "a sibling prefix sees only its own keys");
    assert!(!store.list("").unwrap().iter().any(|k| k.contains("one-b")));
    let whole = server.store("shared", "").unwrap();
    assert!(whole
        .list("volumes/one/conformance/heads/")
        .unwrap()
        .contains(&"volumes/one/conformance/heads/match".to_string()));
}

#[test]
fn wrong_secret_key_is_an_auth_error() {
    let server = server();
    server.store("authbkt", "").unwrap().put("k", b"v", Cond::None).unwrap();
    let creds = S3Credentials { access_key_id: "testkey".into(), secret_access_key: "not-the-secret".into() };
    let config = S3Config { credentials: Some(creds), ..server.config() };
    let store = S3Store::new("authbkt", "", config).unwrap();
    for result in [store.get("k").map(|_| ()), store.put("k", b"w", Cond::None).map(|_| ()), store.list("").map(|_| ())]
    {
        let e = result.unwrap_err();
        assert!(matches!(e, StoreError::Auth(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&server.endpoint()) && msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
        assert!(!msg.contains("not-the-secret") && !msg.contains("testsecret"), "no secret in errors: {msg}");
    }
    let unknown = S3Credentials { access_key_id: "nobody".into(), secret_access_key: "x".into() };
    let e = S3Store::new("authbkt", "", S3Config { credentials: Some(unknown), ..server.config() })
        .unwrap()
        .get("k")
        .unwrap_err();
    assert!(matches!(e, StoreError::Auth(_)), "unknown access key: {e:?}");
}

#[test]
fn unknown_bucket_is_no_bucket() {
    let server = server();
    let store = S3Store::new("never-created", "p", server.config()).unwrap();
    for result in [store.get("k").map(|_| ()), store.list("").map(|_| ()), store.get_range("k", 0, 4).map(|_| ())] {
        let e = result.unwrap_err();
        assert!(matches!(e, StoreError::NoBucket(_)), "{e:?}");
        assert!(e.to_string().contains("never-created"), "{e}");
    }
}

#[test]
fn closed_port_is_unreachable_within_the_timeouts() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let creds = S3Credentials { access_key_id: "k".into(), secret_access_key: "s".into() };
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        credentials: Some(creds),
        ..S3Config::default()
    };
    let store = S3Store::new("bucket", "", config.clone()).unwrap();
    let e = store.get("k").unwrap_err();
    assert!(matches!(&e, StoreError::Unreachable { endpoint, .. } if endpoint.contains(&port.to_string())), "{e:?}");
    assert!(e.is_transient());
    // Through Retry too: it tries again, then returns the same kind of error.
    let start = Instant::now();
    let e = Retry::new(S3Store::new("bucket", "", config).unwrap()).put("k", b"v", Cond::IfAbsent).unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(90), "bounded: {:?}", start.elapsed());
}

#[test]
fn a_stopped_server_is_unreachable_and_heads_stay_consistent() {
    let mut server = server();
    let store = server.store("downbkt", "").unwrap();
    let etag = store.put("heads/main", b"layer-1", Cond::IfAbsent).unwrap();
    server.stop();
    let e = store.put("heads/main", b"layer-2", Cond::IfMatch(etag)).unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(matches!(store.head("heads/main"), Err(StoreError::Unreachable { .. })));
}

#[test]
fn etags_from_put_get_head_and_list_agree_across_clients() {
    let server = server();
    let one = server.store("etags", "vol").unwrap();
    let two = S3Store::new("etags", "vol", server.config()).unwrap();
    let etag = one.put("heads/main", b"layer-1", Cond::IfAbsent).unwrap();
    assert_eq!(two.head("heads/main").unwrap().unwrap().etag, etag);
    let moved = two.put("heads/main", b"layer-2", Cond::IfMatch(etag.clone())).unwrap();
    let e = one.put("heads/main", b"layer-3", Cond::IfMatch(etag)).unwrap_err();
    assert!(matches!(e, StoreError::Precondition { .. }), "the other client moved the head: {e:?}");
    assert_eq!(one.get("heads/main").unwrap(), (b"layer-2".to_vec(), moved));
}

/// A stop reaches the request in flight (issue 11): a GET to a store that accepts the
/// connection and never answers (blackholed) ends with `Cancelled` when the store's token is
/// cancelled, not at the store's timeouts (here an hour), and the connection is closed: the
/// request was aborted, not left running. Through `Retry` too, which does not retry it.
#[test]
fn cancel_aborts_a_request_to_a_blackholed_store() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (conn_tx, conn_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Accept one connection, read the request and never answer; report when it closes.
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match std::io::Read::read(&mut conn, &mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        let _ = conn_tx.send(closed);
    });
    let creds = S3Credentials { access_key_id: "k".into(), secret_access_key: "s".into() };
    let hour = Duration::from_secs(3600);
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        credentials: Some(creds),
        read_timeout: hour,
        operation_timeout: hour,
        ..S3Config::default()
    };
    let cancel = hybridfs_cloud::CancellationToken::new();
    let store = Retry::new(S3Store::new("bucket", "", config).unwrap().with_cancel(cancel.clone())).with_cancel(cancel.clone());
    let canceller = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        canceller.cancel();
    });
    let e = store.get("blocks/k").unwrap_err();
    stopper.join().unwrap();
    assert!(matches!(e, StoreError::Cancelled), "{e:?}");
    assert!(!e.is_transient(), "a cancelled call must not be retried");
    let closed = conn_rx.recv_timeout(Duration::from_secs(90)).expect("the blackhole saw no connection end");
    assert!(closed, "the aborted request's connection was left open");
    assert!(matches!(store.put("k", b"v", Cond::None), Err(StoreError::Cancelled)), "a call after the cancel went out");
}
