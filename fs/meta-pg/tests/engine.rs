//! The PostgreSQL engine against a real PostgreSQL on 127.0.0.1 (started per test).

use hybridfs_core::error::FsError;
use hybridfs_core::kv::KvRead;
use hybridfs_core::meta::{MetaStore, Mutation};
use hybridfs_core::types::{BlockId, Extent, Inode, Kind};
use hybridfs_meta_pg::testserver::PgServer;
use hybridfs_meta_pg::PgKv;
use std::sync::Arc;

fn server() -> PgServer {
    PgServer::start().unwrap_or_else(|e| panic!("start PostgreSQL: {e}"))
}

#[test]
fn pg_kv_conforms() {
    let pg = server();
    let kv = PgKv::connect(&pg.database("conformance").unwrap()).unwrap();
    hybridfs_core::kv::conformance(&kv);
}

/// Invariant 3 (reference counts) with two hosts: two engines (two connection pools, as two
/// mounts on two hosts would have) on one database apply batches that reference one block
/// at the same time. With read-modify-write under a process-local lock, one host's count
/// overwrote the other's; in transactions, every reference is counted.
#[test]
fn two_hosts_referencing_one_block_lose_no_count() {
    let pg = server();
    let url = pg.database("twohosts").unwrap();
    let hosts: Vec<Arc<MetaStore>> =
        (0..2).map(|_| Arc::new(MetaStore::new(Arc::new(PgKv::connect(&url).unwrap())).unwrap())).collect();
    let block = BlockId([9; 32]);
    let per_host = 40u64;
    std::thread::scope(|s| {
        for (h, meta) in hosts.iter().enumerate() {
            s.spawn(move || {
                for i in 0..per_host {
                    let ino = 1000 * (h as u64 + 1) + i;
                    let mut inode = Inode::new(ino, Kind::File, 0o644, 0, 0);
                    inode.size = 100;
                    let extent = Extent::Sealed { id: block, len: 100 };
                    meta.apply(vec![Mutation::PutInode(inode), Mutation::PutExtent { ino, block: 0, extent }], false)
                        .unwrap();
                }
            });
        }
    });
    for meta in &hosts {
        assert_eq!(meta.block_refs(&block).unwrap(), 2 * per_host, "every reference counted, seen from either host");
        assert_eq!(meta.usage().unwrap().files, 2 * per_host, "usage too");
    }
    // Dropping them from both hosts at once frees the block exactly once.
    let freed: Vec<Vec<BlockId>> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(h, meta)| {
                s.spawn(move || {
                    let mut freed = Vec::new();
                    for i in 0..per_host {
                        let ino = 1000 * (h as u64 + 1) + i;
                        freed.extend(meta.apply_freeing(vec![Mutation::DelExtent { ino, block: 0 }], false).unwrap());
                    }
                    freed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(freed.concat(), vec![block], "the last reference, on whichever host, frees it once");
    assert_eq!(hosts[0].block_refs(&block).unwrap(), 0);
    assert_eq!(hosts[1].free_blocks().unwrap().len(), 1);
}

/// A database restart is a transient error while it is down, and the engine reconnects by
/// itself when it is back.
#[test]
fn a_database_restart_is_transient_and_the_engine_reconnects() {
    let mut pg = server();
    let kv = PgKv::connect(&pg.database("restart").unwrap()).unwrap();
    hybridfs_core::kv::write_ops(&kv, vec![hybridfs_core::kv::KvOp::Put(hybridfs_core::kv::Cf::Inodes, b"k".to_vec(), b"v".to_vec())], false)
        .unwrap();
    pg.stop();
    // An operation waits for the database at most its bound, then fails as unavailable.
    kv.set_wait(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let down = kv.get(hybridfs_core::kv::Cf::Inodes, b"k").unwrap_err();
    assert!(down.is_transient(), "while down: {down:?}");
    assert!(matches!(down, FsError::MetaUnavailable(_)), "{down:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "waited past its bound: {:?}", started.elapsed());
    pg.restart().unwrap();
    assert_eq!(kv.get(hybridfs_core::kv::Cf::Inodes, b"k").unwrap().as_deref(), Some(&b"v"[..]), "reconnected, data kept");
    // Down while an operation runs, back within the bound: the operation waits it out.
    kv.set_wait(std::time::Duration::from_secs(60));
    pg.stop();
    let kv = std::sync::Arc::new(kv);
    let reader = {
        let kv = kv.clone();
        std::thread::spawn(move || kv.get(hybridfs_core::kv::Cf::Inodes, b"k"))
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    pg.restart().unwrap();
    assert_eq!(reader.join().unwrap().unwrap().as_deref(), Some(&b"v"[..]), "a read across a restart waited and resumed");
}

/// Invariant 1 across a lost answer: a transaction whose connection broke after its `COMMIT`
/// was sent (here: the engine reports the break after a commit that went in) is not run again
/// on top of itself. Its token row tells the rerun that it committed, so a create reports
/// success, not `EEXIST`, and runs once.
#[test]
fn a_commit_whose_answer_was_lost_reports_the_first_runs_success() {
    use hybridfs_core::kv::{Cf, Kv};
    let pg = server();
    let kv = PgKv::connect(&pg.database("ambiguous").unwrap()).unwrap();
    let create = |kv: &PgKv, key: &[u8]| {
        let mut runs = 0;
        let out = kv.transact(false, &mut |tx| {
            runs += 1;
            if tx.get(Cf::Default, key)?.is_some() {
                return Err(FsError::Exists);
            }
            tx.put(Cf::Default, key.to_vec(), b"made".to_vec());
            Ok(())
        });
        (out, runs)
    };
    kv.lose_commit_answers(1);
    let (out, runs) = create(&kv, b"x");
    assert!(out.is_ok(), "a create whose commit answer was lost reported {out:?}");
    assert_eq!(runs, 1, "the committed body ran again");
    assert_eq!(kv.get(Cf::Default, b"x").unwrap().as_deref(), Some(&b"made"[..]));
    // The check is real: a create of a name that exists still fails.
    assert!(matches!(create(&kv, b"x").0, Err(FsError::Exists)));
    // Token rows are in no family: a scan of the default family sees only the row made.
    let mut rows = Vec::new();
    kv.scan(Cf::Default, &[], None, &mut |k, _| {
        rows.push(k.to_vec());
        Ok(true)
    })
    .unwrap();
    assert_eq!(rows, vec![b"x".to_vec()]);
}

/// Shared volumes: an open row is written only while its inode exists, and a batch that
/// expected other open rows (an unlink on another host racing an open) writes nothing.
#[test]
fn open_rows_race_unlinks_in_the_database() {
    let pg = server();
    let url = pg.database("openrows").unwrap();
    let a = MetaStore::new(Arc::new(PgKv::connect(&url).unwrap())).unwrap();
    let b = MetaStore::new(Arc::new(PgKv::connect(&url).unwrap())).unwrap();
    a.apply(vec![Mutation::PutInode(Inode::new(7, Kind::File, 0o644, 0, 0))], false).unwrap();
    let seen = b.openers(7).unwrap();
    assert!(seen.is_empty());
    a.put_open(7, 11).unwrap();
    let unlink = vec![Mutation::ExpectOpeners { ino: 7, hosts: seen }, Mutation::DelInode(7)];
    assert!(matches!(b.apply(unlink, false), Err(FsError::MetaStale(_))), "an unlink that missed an open row went in");
    assert!(b.get_inode(7).unwrap().is_some());
    assert_eq!(b.openers(7).unwrap(), vec![11]);
    a.del_open(7, 11).unwrap();
    b.apply(vec![Mutation::ExpectOpeners { ino: 7, hosts: vec![] }, Mutation::DelInode(7)], false).unwrap();
    assert!(matches!(a.put_open(7, 11), Err(FsError::NotFound)), "an open row for a removed inode");
}
