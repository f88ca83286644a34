//! The local-directory store and `open`, through the shared conformance suite.

use hybridfs_cloud::{conformance, open, Cond, LocalStore, ObjectStore, StoreError};

#[test]
fn local_store_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&LocalStore::open(dir.path().join("store")).unwrap());
}

#[test]
fn open_file_url_gives_a_conforming_retrying_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    let store = open(&url).unwrap();
    assert_eq!(store.describe(), url);
    conformance(store.as_ref());
}

#[test]
fn objects_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let etag = LocalStore::open(dir.path()).unwrap().put("heads/main", b"layer-7", Cond::IfAbsent).unwrap();
    let again = LocalStore::open(dir.path()).unwrap();
    assert_eq!(again.get("heads/main").unwrap(), (b"layer-7".to_vec(), etag));
}

#[test]
fn open_rejects_bad_urls_with_the_accepted_forms() {
    for bad in ["file://relative/path", "ftp://host/x", "s3://x", "/plain/path"] {
        let Err(e) = open(bad) else { panic!("{bad} opened") };
        assert!(matches!(e, StoreError::Invalid(_)), "{bad}: {e:?}");
        assert!(e.to_string().contains("file:///absolute/path or s3://bucket/prefix"), "{e}");
    }
}
