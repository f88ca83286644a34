//! Clone, pull, prefetch, encryption and corruption (issue 4) between nodes, through real
//! mounts, the real `hybridctl` CLI and a real S3 server (SeaweedFS on 127.0.0.1, started by
//! each test). A "node" is a `HYBRIDFS_HOME` of its own with a mount point of its own; nodes
//! share nothing but the store.
//!
//! - the two-node workflow: node A formats, writes and pushes; node B clones (metadata only:
//!   no block data arrives until read), reads every byte back, writes, pushes its own branch;
//!   A pushes again, B pulls it (unmounted) and keeps its own changes; a change made on both
//!   sides makes the pull refuse and keeps B's bytes (invariant 6); node C clones B's branch
//!   and gets B's changes on top of A's data (fork chain);
//! - `--cache SIZE` bounds the fetched blocks however much is read or prefetched (invariant 7);
//! - an encrypted volume leaves no plaintext and no block id in the store, cannot be cloned
//!   without its key and reads back with it (invariant 8);
//! - a damaged object in the store is `EIO` on the clone, never wrong bytes, and is named by
//!   `fsck --remote --verify` and the clone's metrics (invariant 5);
//! - a home lost with its whole `HYBRIDFS_HOME` is rebuilt by adopting main (`clone --adopt`):
//!   its push continues main's chain, what merges into it and what is refused, two adopters
//!   racing (invariant 4).
//!
//! A mounted volume pushes and fetches from its mount process, so the AWS variables go on the
//! mount (`mount_env`); clone, pull and fsck run in the CLI (`ctl_env`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hybridfs_cloud::testserver::{SeaweedServer, SECRET_KEY};
use hybridfs_cloud::{Cond, ObjectStore, S3Store};
use hybridfs_tests::cmd::CmdOutput;
use hybridfs_tests::content::{assert_same_bytes, assert_tree, pattern, splitmix64};
use hybridfs_tests::{fail_loudly, poll_until, TestVolume};
use serde_json::Value;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const INV5: &str = "invariant 5: a block that does not verify is EIO and a metric naming it, never wrong bytes";
const INV6: &str = "invariant 6: a pull never loses a local change";
const INV7: &str = "invariant 7: the cache stays within --cache (plus the blocks being fetched)";
const INV8: &str = "invariant 8: the store sees no plaintext, no block id, no key";

type Env = Vec<(&'static str, String)>;

// ---------------------------------------------------------------------------------------------
// Server, nodes, files

fn start_server() -> SeaweedServer {
    SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the clone tests need a real S3 server: {e}")))
}

/// The S3 store the tests read with: `bucket` (created) under `prefix`.
fn test_store(server: &SeaweedServer, bucket: &str, prefix: &str) -> S3Store {
    server.store(bucket, prefix).unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"))
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Node A: volume `data` formatted on `store_url` (extra format args), mounted with `env`.
fn origin(store_url: &str, format_args: &[&str], env: &Env) -> TestVolume {
    let mut vol = TestVolume::builder()
        .name("data")
        .block_size("1M")
        .store(store_url)
        .format_args(format_args)
        .unmounted()
        .build();
    vol.mount_env(&env_refs(env));
    vol
}

/// A node with an empty `HYBRIDFS_HOME` (its volume will be `data`, made by `clone`).
fn empty_node() -> TestVolume {
    TestVolume::builder().name("data").unformatted().build()
}

/// `hybridctl clone URL --branch BRANCH EXTRA... --json` on `node`, with `env`.
fn clone_cmd(node: &TestVolume, env: &Env, url: &str, branch: &str, extra: &[&str]) -> CmdOutput {
    let mut args = vec!["clone", url, "--branch", branch];
    args.extend_from_slice(extra);
    args.push("--json");
    node.ctl_env(&env_refs(env), &args)
}

/// A clone that must succeed; its `--json` report.
fn clone_ok(node: &TestVolume, env: &Env, url: &str, branch: &str, extra: &[&str]) -> Value {
    let out = clone_cmd(node, env, url, branch, extra);
    out.assert_success();
    json_of(&out)
}

fn json_of(out: &CmdOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
}

fn int(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("no integer {k:?} in {v}"))
}

/// `hybridctl push --volume data --json` of a mounted volume (its mount process pushes, with
/// the store's variables it was mounted with); the report.
fn push_ok(vol: &TestVolume) -> Value {
    let out = vol.ctl(&["push", "--volume", vol.name(), "--json"]);
    out.assert_success();
    json_of(&out)
}

/// Overwrites `data.len()` bytes of `rel` at `offset` in place and fsyncs.
fn overwrite_at(vol: &TestVolume, rel: &str, offset: usize, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(vol.path(rel)).unwrap_or_else(|e| panic!("open {rel}: {e}"));
    f.write_all_at(data, offset as u64).unwrap_or_else(|e| panic!("write {rel} at {offset}: {e}"));
    f.sync_all().unwrap_or_else(|e| panic!("fsync {rel}: {e}"));
}

/// Bytes of the regular files under `dir` (0 if it does not exist), depth 6 at most. Files
/// that vanish while it looks (evicted blocks) count 0.
fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: usize) -> u64 {
        if depth > 6 {
            return 0;
        }
        let Ok(entries) = fs::read_dir(dir) else { return 0 };
        let mut sum = 0;
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                sum += walk(&e.path(), depth + 1);
            } else if meta.is_file() {
                sum += meta.len();
            }
        }
        sum
    }
    walk(dir, 0)
}

/// The node's cache of fetched blocks: `HOME/cache`.
fn cache_dir(node: &TestVolume) -> PathBuf {
    node.home().join("cache")
}

/// Block data on a node: its volume's own `blocks/` and the shared cache.
fn local_block_bytes(node: &TestVolume) -> u64 {
    dir_bytes(&node.volume_dir().join("blocks")) + dir_bytes(&cache_dir(node))
}

/// Waits (at most 15 s) until the size of `dir` is the same in two looks 300 ms apart: the
/// background fetchers are done. Returns that size.
fn settled_bytes(dir: &Path) -> u64 {
    let mut last = dir_bytes(dir);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(300));
        let now = dir_bytes(dir);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The one `hybridctl: error:` line of a command that failed with exit 1.
fn the_error_line(out: &CmdOutput) -> String {
    assert_eq!(out.code, Some(1), "the command fails with exit 1: {out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("hybridctl: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line on stderr: {out}");
    lines[0].to_string()
}

/// 300 small files (10-50 KiB) in 10 directories and 2 files of 20 MiB, all pseudo-random.
fn dataset() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut rng = 42u64;
    for d in 0..10 {
        for f in 0..30 {
            let len = 10 * KIB + (splitmix64(&mut rng) % (40 * KIB as u64)) as usize;
            files.insert(format!("d{d:02}/f{f:02}"), pattern(1000 + d * 100 + f, len));
        }
    }
    files.insert("big/0".into(), pattern(7, 20 * MIB));
    files.insert("big/1".into(), pattern(8, 20 * MIB));
    files
}

// ---------------------------------------------------------------------------------------------
// 1. Two nodes (and a third)

#[test]
fn two_nodes_clone_read_write_push_pull() {
    let started = Instant::now();
    let server = start_server();
    let env = server.env();
    let _bucket = test_store(&server, "hybridfs-clone", "");
    let url = "s3://hybridfs-clone/pfx/data";

    // Node A: the dataset, pushed to main.
    let a = origin("s3://hybridfs-clone/pfx", &[], &env);
    let mut want = dataset();
    for (path, bytes) in &want {
        a.put(path, bytes);
    }
    let pa1 = push_ok(&a);
    assert_eq!((int(&pa1, "seq"), pa1["branch"].as_str()), (1, Some("main")), "{pa1}");
    assert_eq!(int(&pa1, "blocks_uploaded"), 340, "300 small blocks + 2 x 20: {pa1}");

    // Node B: clone = metadata only.
    let mut b = empty_node();
    assert_ne!(a.home(), b.home());
    let cloned = clone_ok(&b, &env, url, "nodeb", &[]);
    assert_eq!((int(&cloned, "seq"), int(&cloned, "layers"), int(&cloned, "blocks")), (1, 1, 340), "{cloned}");
    assert_eq!((cloned["source"].as_str(), cloned["branch"].as_str()), (Some("main"), Some("nodeb")), "{cloned}");
    let after_clone = local_block_bytes(&b);
    assert!(
        after_clone < MIB as u64,
        "a clone downloads metadata only: {after_clone} bytes of block data on B right after the clone \
         (blocks/ {} + cache {})",
        dir_bytes(&b.volume_dir().join("blocks")),
        dir_bytes(&cache_dir(&b))
    );

    // B reads everything: byte for byte A's data, fetched on first read.
    b.mount_env(&env_refs(&env));
    assert_tree(b.mountpoint(), &want, "node B right after the clone");
    let fetched = dir_bytes(&cache_dir(&b));
    assert!(fetched >= 40 * MIB as u64, "the reads fetched the data into B's cache: {fetched} bytes there");
    assert_tree(a.mountpoint(), &want, "node A");
    // The clone's read-ahead fetchers are named workers of its mount, beside the sealer
    // (issue 11): `hybridctl status` lists them.
    let status = json_of(&b.ctl(&["status", "data", "--json"]));
    let workers: Vec<&str> = status[0]["workers"].as_array().into_iter().flatten().filter_map(|w| w["name"].as_str()).collect();
    for want in ["sealer", "fetch-0", "fetch-7", "collector", "control"] {
        assert!(workers.contains(&want), "worker {want} missing from the clone's status: {status}");
    }

    // B changes: a new file, 4 KiB in block 5 of big/1. Its push: 2 blocks, to its branch.
    let from_b = pattern(2001, 50 * KIB);
    b.put("d01/from-b", &from_b);
    let patch_b = pattern(2002, 4 * KIB);
    overwrite_at(&b, "big/1", 5 * MIB + 100 * KIB, &patch_b);
    let mut want_b = want.clone();
    want_b.insert("d01/from-b".into(), from_b.clone());
    want_b.get_mut("big/1").unwrap()[5 * MIB + 100 * KIB..][..4 * KIB].copy_from_slice(&patch_b);
    let pb1 = push_ok(&b);
    assert_eq!((int(&pb1, "seq"), pb1["branch"].as_str()), (1, Some("nodeb")), "B pushes to its own branch: {pb1}");
    assert_eq!(int(&pb1, "blocks_uploaded"), 2, "B's push moves its new file and its changed block only: {pb1}");
    assert!(int(&pb1, "bytes_uploaded") < 3 * MIB as u64, "B's push moves its changes, not the volume: {pb1}");

    // A: another new file (another directory), main moves to 2.
    let from_a = pattern(3001, 60 * KIB);
    a.put("d03/from-a", &from_a);
    want.insert("d03/from-a".into(), from_a.clone());
    let pa2 = push_ok(&a);
    assert_eq!((int(&pa2, "seq"), pa2["branch"].as_str()), (2, Some("main")), "{pa2}");

    // B pulls it (unmounted): no conflict; B sees A's file and keeps its own changes.
    b.umount();
    let pull = b.ctl_env(&env_refs(&env), &["pull", "--volume", "data", "--json"]);
    assert!(
        pull.success(),
        "{INV6}: B changed d01/from-b and big/1, A added d03/from-a: disjoint changes, the pull must succeed: {pull}"
    );
    let pulled = json_of(&pull);
    assert_eq!((int(&pulled, "from_seq"), int(&pulled, "to_seq")), (1, 2), "{pulled}");
    assert_eq!(pulled["up_to_date"].as_bool(), Some(false), "{pulled}");
    want_b.insert("d03/from-a".into(), from_a.clone());
    b.mount_env(&env_refs(&env));
    assert_tree(b.mountpoint(), &want_b, "node B after pulling main 2");

    // B pushes again: the pulled records go along, their blocks are in the store already.
    let pb2 = push_ok(&b);
    assert_eq!((int(&pb2, "seq"), pb2["branch"].as_str()), (2, Some("nodeb")), "{pb2}");
    assert_eq!(int(&pb2, "blocks_uploaded"), 0, "the pulled file's block is in the store already: {pb2}");
    let want_c = want_b.clone();

    // Both change d05/f07: A pushes, B's pull is refused and B keeps its bytes.
    let x = "d05/f07";
    let x_a = pattern(4001, 33 * KIB);
    let x_b = pattern(4002, 27 * KIB);
    a.put(x, &x_a);
    b.put(x, &x_b);
    let pa3 = push_ok(&a);
    assert_eq!(int(&pa3, "seq"), 3, "{pa3}");
    b.umount();
    let refused = b.ctl_env(&env_refs(&env), &["pull", "--volume", "data"]);
    let line = the_error_line(&refused);
    assert!(line.contains("changed both"), "{INV6}: the refusal says both sides changed the file: {line}");
    want_b.insert(x.into(), x_b.clone());
    b.mount_env(&env_refs(&env));
    assert_tree(b.mountpoint(), &want_b, &format!("{INV6}: node B after the refused pull"));
    b.umount();

    // Node C clones B's branch: A's data under B's changes (main 1 → nodeb 1 → nodeb 2).
    let mut c = empty_node();
    let cloned_c = clone_ok(&c, &env, url, "nodec", &["--source", "nodeb"]);
    assert_eq!((int(&cloned_c, "seq"), int(&cloned_c, "layers")), (2, 3), "main 1, nodeb 1, nodeb 2: {cloned_c}");
    assert!(local_block_bytes(&c) < MIB as u64, "C's clone downloads metadata only");
    c.mount_env(&env_refs(&env));
    assert_tree(c.mountpoint(), &want_c, "node C (clone of nodeb)");
    c.umount();

    // The store holds every block both branches name.
    for branch in ["main", "nodeb"] {
        let out = a.ctl_env(&env_refs(&env), &["fsck", "data", "--remote", "--branch", branch]);
        assert!(out.success() && out.stdout.contains("clean"), "fsck --remote --branch {branch}: {out}");
    }
    eprintln!("two nodes: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Prefetch under a cache limit

#[test]
fn prefetch_and_cache_limit() {
    const CAP: u64 = 32 * MIB as u64;
    const FILES: usize = 4;
    const FILE_LEN: usize = 25 * MIB;
    let server = start_server();
    let env = server.env();
    let _bucket = test_store(&server, "hybridfs-cache", "");
    let a = origin("s3://hybridfs-cache/p", &[], &env);
    for i in 0..FILES {
        a.put(&format!("dir/{i}"), &pattern(500 + i as u64, FILE_LEN));
    }
    a.put("outside", &pattern(600, 2 * MIB));
    let pushed = push_ok(&a);
    assert_eq!(int(&pushed, "blocks_uploaded"), (FILES * FILE_LEN / MIB + 2) as u64, "{pushed}");

    let mut b = empty_node();
    clone_ok(&b, &env, "s3://hybridfs-cache/p/data", "nodeb", &["--cache", "32M"]);
    b.mount_env(&env_refs(&env));
    let cache = cache_dir(&b);

    // Watch the cache the whole time (bounded: stops when told, or after 10 minutes).
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let samples = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak.fetch_max(dir_bytes(&cache), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let dir = b.path("dir");
            let out = b.ctl_env(&env_refs(&env), &["prefetch", dir.to_str().unwrap(), "--json"]);
            out.assert_success();
            let report = json_of(&out);
            assert_eq!(int(&report, "blocks"), (FILES * FILE_LEN / MIB) as u64, "prefetch names every block of dir: {report}");
            let after_prefetch = settled_bytes(&cache);
            assert!(
                after_prefetch <= CAP + MIB as u64,
                "{INV7}: {after_prefetch} bytes in the cache after prefetching 100 MiB with --cache 32M"
            );

            // Read all 100 MiB through the mount, 1 MiB at a time, checking every byte.
            for i in 0..FILES {
                let rel = format!("dir/{i}");
                let want = pattern(500 + i as u64, FILE_LEN);
                let mut f = File::open(b.path(&rel)).unwrap_or_else(|e| panic!("open {rel}: {e}"));
                let mut buf = vec![0u8; MIB];
                for chunk in 0..FILE_LEN / MIB {
                    f.read_exact(&mut buf).unwrap_or_else(|e| panic!("read {rel} block {chunk}: {e}"));
                    assert_same_bytes(&format!("{rel} block {chunk}"), &buf, &want[chunk * MIB..][..MIB]);
                }
                assert_eq!(f.read(&mut buf).unwrap(), 0, "{rel} ends at {FILE_LEN}");
            }
            let after_read = settled_bytes(&cache);
            assert!(after_read <= CAP + MIB as u64, "{INV7}: {after_read} bytes in the cache after reading 100 MiB with --cache 32M");
            after_read
        }));
        stop.store(true, Ordering::Relaxed);
        match result {
            Ok(after_read) => eprintln!("cache after reading: {after_read} bytes"),
            Err(p) => std::panic::resume_unwind(p),
        }
    });
    // While blocks were being fetched the cache may hold those beyond the limit, no more: at
    // most the 8 background fetchers and the 4 FUSE threads at once.
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("cache peak {peak} bytes over {} samples", samples.load(Ordering::Relaxed));
    assert!(samples.load(Ordering::Relaxed) > 10, "the cache was watched");
    assert!(peak <= CAP + 12 * MIB as u64, "{INV7}: the cache reached {peak} bytes with --cache 32M");
    assert_eq!(fs::read(b.path("outside")).unwrap(), pattern(600, 2 * MIB), "a file outside the prefetched tree");
    b.umount();
}

// ---------------------------------------------------------------------------------------------
// 3. Encryption

const MARKER: &[u8] = b"HYBRIDFS-PLAINTEXT-MARKER-q7Zx3";

/// A file with `MARKER` in it (random bytes around it, so no compression hides it), and a
/// 3 MiB file with `MARKER` in each of its blocks.
fn marker_files(vol: &TestVolume) -> BTreeMap<String, Vec<u8>> {
    let mut small = pattern(71, 100 * KIB);
    for at in [0, 50 * KIB, 100 * KIB - MARKER.len()] {
        small[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let mut big = pattern(72, 3 * MIB);
    for blk in 0..3 {
        let at = blk * MIB + 1000;
        big[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let name = format!("dir-{}/secret.txt", String::from_utf8_lossy(MARKER));
    let files = BTreeMap::from([(name, small), ("big".to_string(), big)]);
    for (p, d) in &files {
        vol.put(p, d);
    }
    files
}

/// Every object in `store` (key, body).
fn all_objects(store: &S3Store) -> Vec<(String, Vec<u8>)> {
    let keys = store.list("").unwrap_or_else(|e| panic!("list the bucket: {e}"));
    keys.into_iter().map(|k| {
        let (body, _) = store.get(&k).unwrap_or_else(|e| panic!("get {k}: {e}"));
        (k, body)
    }).collect()
}

/// The ids (64 hex) of the sealed blocks in the volume's `blocks/XX/<hex>`.
fn local_block_ids(vol: &TestVolume) -> Vec<String> {
    let ids: Vec<String> = vol
        .block_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| is_hex64(n))
        .collect();
    assert!(!ids.is_empty(), "the volume has sealed blocks in {}", vol.volume_dir().join("blocks").display());
    ids
}

#[test]
fn encrypted_volume_end_to_end() {
    let server = start_server();
    let env = server.env();
    assert!(std::env::var_os("HYBRIDFS_ENCRYPTION_KEY").is_none(), "the test runs without HYBRIDFS_ENCRYPTION_KEY");
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("data.key");
    let key_path = key_file.to_str().unwrap();

    // The check sees plaintext when it is there: the same files pushed without a key.
    let plain_bucket = test_store(&server, "hybridfs-plain", "");
    let p = origin("s3://hybridfs-plain/p", &[], &env);
    marker_files(&p);
    push_ok(&p);
    let plain = all_objects(&plain_bucket);
    assert!(plain.iter().any(|(_, body)| contains(body, MARKER)), "control: without a key the marker is in the store");
    let plain_ids = local_block_ids(&p);
    assert!(plain.iter().any(|(k, _)| plain_ids.iter().any(|id| k.contains(id.as_str()))), "control: without a key blocks are named by id");
    drop(p);

    // Node A, encrypted (the key file is created).
    let bucket = test_store(&server, "hybridfs-enc", "");
    let a = origin("s3://hybridfs-enc/enc", &["--encryption-key-file", key_path], &env);
    let key_hex = fs::read_to_string(&key_file).expect("format created the key file").trim().to_string();
    assert!(is_hex64(&key_hex), "the key file holds 64 hex digits: {key_hex:?}");
    let files = marker_files(&a);
    let pushed = push_ok(&a);
    assert_eq!(int(&pushed, "seq"), 1, "{pushed}");

    let objects = all_objects(&bucket);
    assert!(objects.len() >= 4, "blocks, a layer and a head: {:?}", objects.iter().map(|o| &o.0).collect::<Vec<_>>());
    let ids = local_block_ids(&a);
    let key_raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let marker_str = String::from_utf8_lossy(MARKER).into_owned();
    for (k, body) in &objects {
        assert!(!contains(body, MARKER), "{INV8}: object {k} holds the plaintext marker");
        assert!(!k.contains(&marker_str), "{INV8}: object name {k} holds the plaintext marker");
        for id in &ids {
            assert!(!k.contains(id.as_str()), "{INV8}: object name {k} holds the block id {id}");
        }
        assert!(!contains(body, key_hex.as_bytes()) && !contains(body, &key_raw), "{INV8}: object {k} holds the key");
        assert!(!contains(body, SECRET_KEY.as_bytes()), "{INV8}: object {k} holds the S3 secret");
    }
    assert!(!a.mount_log().contains(&key_hex), "{INV8}: the mount log shows the key");
    let volume_json = fs::read_to_string(a.volume_dir().join("volume.json")).unwrap();
    assert!(!volume_json.contains(&key_hex), "{INV8}: volume.json keeps the key's fingerprint, not the key: {volume_json}");

    // Without the key, no clone; with another key, no clone; nothing is left behind.
    let url = "s3://hybridfs-enc/enc/data";
    let mut b = empty_node();
    let no_key = clone_cmd(&b, &env, url, "nodeb", &[]);
    let line = the_error_line(&no_key);
    assert!(line.to_lowercase().contains("key"), "the refusal says a key is needed: {line}");
    assert!(!b.volume_dir().exists(), "a failed clone leaves no volume");
    let wrong = keys.path().join("wrong.key");
    fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    let wrong_key = clone_cmd(&b, &env, url, "nodeb", &["--encryption-key-file", wrong.to_str().unwrap()]);
    the_error_line(&wrong_key);
    assert!(!wrong_key.all_output().contains(&key_hex), "{INV8}: {wrong_key}");
    assert!(!b.volume_dir().exists(), "a failed clone leaves no volume");

    // With the key: the same bytes.
    clone_ok(&b, &env, url, "nodeb", &["--encryption-key-file", key_path]);
    b.mount_env(&env_refs(&env));
    assert_tree(b.mountpoint(), &files, "the encrypted volume cloned with its key");
    b.umount();

    for node in [&a, &b] {
        let out = node.ctl_env(&env_refs(&env), &["fsck", "data", "--remote", "--verify"]);
        assert!(out.success() && out.stdout.contains("clean"), "fsck --remote --verify of the encrypted volume: {out}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A damaged object

#[test]
fn corrupt_object_reads_as_eio() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-corrupt", "c");
    let a = origin("s3://hybridfs-corrupt/c", &[], &env);
    let victim = pattern(11, 4 * MIB);
    let other = pattern(12, 3 * MIB);
    a.put("victim", &victim);
    a.put("other", &other);
    let mut small = BTreeMap::new();
    for i in 0..20u64 {
        let d = pattern(100 + i, 20 * KIB);
        a.put(&format!("small/{i:02}"), &d);
        small.insert(format!("small/{i:02}"), d);
    }
    push_ok(&a);

    let mut b = empty_node();
    clone_ok(&b, &env, "s3://hybridfs-corrupt/c/data", "nodeb", &[]);

    // Block 2 of victim (blake3 of its bytes) is replaced in the store by garbage of its length.
    let bad = hybridfs_blocks::block_id(&victim[2 * MIB..3 * MIB]).to_hex();
    let key = format!("data/blocks/{bad}");
    let len = store
        .head(&key)
        .unwrap_or_else(|e| panic!("head {key}: {e}"))
        .unwrap_or_else(|| panic!("block 2 of victim is not in the store as {key}"))
        .len;
    store.put(&key, &pattern(666, len as usize), Cond::None).unwrap();

    b.mount_env(&env_refs(&env));
    let f = File::open(b.path("victim")).unwrap();
    let mut buf = vec![0u8; MIB];
    f.read_exact_at(&mut buf, 0).expect("block 0 of victim is intact");
    assert_same_bytes("victim block 0", &buf, &victim[..MIB]);
    for attempt in 0..2 {
        let err = f.read_exact_at(&mut buf, 2 * MIB as u64).expect_err(&format!("{INV5}: block 2 of victim read without error"));
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{INV5}: reading the damaged block (try {attempt}): {err}");
    }
    let err = fs::read(b.path("victim")).expect_err(&format!("{INV5}: victim read whole without error"));
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{INV5}: {err}");
    assert_eq!(fs::read(b.path("other")).unwrap(), other, "another file reads fine");
    for (p, d) in &small {
        assert_eq!(&fs::read(b.path(p)).unwrap(), d, "{p} reads fine");
    }
    f.read_exact_at(&mut buf, 3 * MIB as u64).expect("block 3 of victim is intact");
    assert_same_bytes("victim block 3", &buf, &victim[3 * MIB..]);

    // fsck --remote --verify on A names the block.
    let out = a.ctl_env(&env_refs(&env), &["fsck", "data", "--remote", "--verify"]);
    assert_eq!(out.code, Some(1), "{INV5}: fsck --remote --verify finds the damaged object: {out}");
    assert!(out.stdout.contains(&bad), "{INV5}: fsck names block {bad}: {out}");

    // B's metrics name it (metrics.json is written every 2 s), and so does its log.
    let mut last = String::new();
    let named = poll_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let st = b.ctl(&["status", "data", "--json"]);
        last = st.to_string();
        st.success()
            && serde_json::from_str::<Value>(&st.stdout).ok().is_some_and(|v| {
                v[0]["metrics"]["corrupt_block_ids"].as_array().is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(bad.as_str())))
            })
    });
    assert!(named, "{INV5}: status --json on B lists the corrupt block {bad}: {last}");
    assert!(b.mount_log().contains(&bad), "{INV5}: B's mount log names block {bad}");
    drop(f);
    b.umount();
}

// ---------------------------------------------------------------------------------------------
// 5. A refused push and the way out (issue 9)

/// Two clones push one branch name; the second is refused. The refusal names a command that
/// works (`push --branch NEW`), and that command moves only the clone's change: a clone of the
/// new branch has main's tree plus that change, and nothing of the other node's.
#[test]
fn a_refused_push_names_a_command_that_moves_only_the_change() {
    let server = start_server();
    let env = server.env();
    let _bucket = test_store(&server, "hybridfs-refused", "");
    let url = "s3://hybridfs-refused/p/data";
    let a = origin("s3://hybridfs-refused/p", &[], &env);
    let mut want = BTreeMap::new();
    for i in 0..30 {
        want.insert(format!("d/f{i:02}"), pattern(500 + i, 20 * KIB));
    }
    for (path, bytes) in &want {
        a.put(path, bytes);
    }
    push_ok(&a);
    let (mut x, mut y) = (empty_node(), empty_node());
    clone_ok(&x, &env, url, "shared", &[]);
    clone_ok(&y, &env, url, "shared", &[]);
    x.mount_env(&env_refs(&env));
    y.mount_env(&env_refs(&env));
    x.put("from-x", &pattern(1, 100 * KIB));
    let from_y = pattern(2, 100 * KIB);
    y.put("from-y", &from_y);
    push_ok(&x);
    let refused = y.ctl(&["push", "--volume", "data", "--json"]);
    let line = the_error_line(&refused);
    assert!(line.contains("moved") && line.contains("hybridctl push --branch"), "the refusal names the command that works: {line}");
    let own = y.ctl(&["push", "--volume", "data", "--branch", "y-own", "--json"]);
    own.assert_success();
    let own = json_of(&own);
    assert!(int(&own, "records") < 10, "only y's change moves, not main's 30 files: {own}");
    assert_eq!(int(&own, "blocks_uploaded"), 1, "{own}");
    let mut z = empty_node();
    clone_ok(&z, &env, url, "z", &["--source", "y-own"]);
    z.mount_env(&env_refs(&env));
    want.insert("from-y".into(), from_y);
    assert_tree(z.mountpoint(), &want, "a clone of y-own: main's tree and y's file, not x's");
    for n in [&mut x, &mut y, &mut z] {
        n.umount();
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Small files (issue 9, item 6): a clone is metadata only whatever the file sizes

/// `n` small files (1 to 4096 bytes of pseudo-random data, up to the inline limit) in 20
/// directories.
fn small_files(n: u64) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut s = 7000 + i;
            let len = 1 + (splitmix64(&mut s) % 4096) as usize;
            (format!("d{:02}/f{i:05}", i % 20), pattern(7000 + i, len))
        })
        .collect()
}

/// Total bytes of the objects under `prefix`.
fn object_bytes(store: &S3Store, prefix: &str) -> u64 {
    let keys = store.list(prefix).unwrap_or_else(|e| panic!("list {prefix}: {e}"));
    keys.iter().map(|k| store.get(k).unwrap_or_else(|e| panic!("get {k}: {e}")).0.len() as u64).sum()
}

/// Invariant 3 (clone cost follows the metadata, not the data) and invariant 5: home keeps
/// small files inline, its push publishes their bytes as packed blocks and a layer of
/// metadata only; a clone of 3,000 small files downloads no file data (no block in the clone's
/// blocks or cache, the layers a small fraction of the files' bytes), then reads every file
/// byte for byte through its mount, fetching each block on first read.
#[test]
fn a_clone_of_many_small_files_downloads_no_file_data_until_read() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-small", "s");
    let a = origin("s3://hybridfs-small/s", &[], &env);
    let files = small_files(3000);
    for (p, d) in &files {
        a.put(p, d);
    }
    let data_bytes: u64 = files.values().map(|d| d.len() as u64).sum();
    let pushed = push_ok(&a);
    assert!(int(&pushed, "packs") >= 1, "small files' bytes go into packs: {pushed}");
    let layers = object_bytes(&store, "data/branches/main/layers/");
    assert!(layers > 0 && layers * 10 < data_bytes, "the layers are metadata only: {layers} bytes for {data_bytes} bytes of small files");

    let mut b = empty_node();
    let report = clone_ok(&b, &env, "s3://hybridfs-small/s/data", "nodeb", &[]);
    assert!(int(&report, "records") >= 3000, "{report}");
    assert_eq!(local_block_bytes(&b), 0, "no file data arrives at clone time");
    b.mount_env(&env_refs(&env));
    assert_tree(&b.path(""), &files, "the clone's tree, read through its mount");
    assert!(local_block_bytes(&b) > 0, "the blocks read are fetched (and cached) then");
    // Issue 16: each pack is fetched once, whole, for all its files (not a request per file);
    // the mount's own check that the store answers is one more request.
    let packs = int(&pushed, "packs");
    let (mut fetches, mut last) = (u64::MAX, String::new());
    poll_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let st = b.ctl(&["status", "data", "--json"]);
        last = st.to_string();
        let v = serde_json::from_str::<Value>(&st.stdout).ok();
        fetches = v.and_then(|v| v[0]["metrics"]["counters"]["store_fetch_requests"].as_u64()).unwrap_or(u64::MAX);
        fetches <= packs + 2
    });
    assert!(fetches <= packs + 2, "{packs} packs fetched once each for 3000 files, but {fetches} fetch requests: {last}");
    b.umount();
}

/// Invariant 5: a small file's block that does not verify in the store (its range of a pack
/// damaged) reads as `EIO` on a clone, named in the mount log, never as wrong bytes; the
/// other files of the same pack read fine.
#[test]
fn a_corrupt_small_file_block_in_the_store_reads_as_eio_naming_it() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-smallbad", "c");
    let a = origin("s3://hybridfs-smallbad/c", &[], &env);
    let files = small_files(50);
    for (p, d) in &files {
        a.put(p, d);
    }
    push_ok(&a);
    let (victim, bytes) = files.iter().nth(17).unwrap();
    let bad = hybridfs_blocks::block_id(bytes);
    let remote = hybridfs_sync::Remote::new(std::sync::Arc::new(test_store(&server, "hybridfs-smallbad", "c")), "data");
    let layer = remote.layer("main", 1).unwrap();
    let p = layer.packed.iter().find(|p| p.id == bad).unwrap_or_else(|| panic!("block {bad} of {victim} is not in a pack"));
    let pack_key = format!("data/packs/{}", p.pack.to_hex());
    let (mut body, _) = store.get(&pack_key).unwrap();
    for b in &mut body[(p.offset + p.len - 4) as usize..(p.offset + p.len) as usize] {
        *b ^= 0x5a;
    }
    store.put(&pack_key, &body, Cond::None).unwrap();

    let mut b = empty_node();
    clone_ok(&b, &env, "s3://hybridfs-smallbad/c/data", "nodeb", &[]);
    b.mount_env(&env_refs(&env));
    for attempt in 0..2 {
        let err = fs::read(b.path(victim)).expect_err(&format!("{INV5}: {victim} read without error (try {attempt})"));
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{INV5}: {victim}: {err}");
    }
    for (path, d) in files.iter().filter(|(path, _)| *path != victim) {
        assert_eq!(&fs::read(b.path(path)).unwrap(), d, "{path} shares the pack and reads fine");
    }
    assert!(b.mount_log().contains(&bad.to_hex()), "{INV5}: the mount log names block {bad}");
    b.umount();
}

/// Invariant 5 with ranged parts (issue 16): a volume of 16 MiB blocks is read on a clone as
/// parallel ranged GETs of 8 MiB, put back together and verified before use: the file reads
/// byte for byte through the mount. A block whose object is damaged in the store (one byte of
/// its second part) reads as `EIO` on a fresh clone, named in the mount log, never as wrong
/// bytes; the file's other blocks read fine.
#[test]
fn large_blocks_are_read_in_verified_ranged_parts_and_a_damaged_part_is_eio() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-parts", "p");
    let mut a = TestVolume::builder().name("data").block_size("16M").store("s3://hybridfs-parts/p").unmounted().build();
    a.mount_env(&env_refs(&env));
    let big = pattern(16_016, 40 * MIB);
    a.put("big", &big);
    push_ok(&a);

    let mut b = empty_node();
    clone_ok(&b, &env, "s3://hybridfs-parts/p/data", "nodeb", &[]);
    b.mount_env(&env_refs(&env));
    assert_same_bytes("big, read on the clone in ranged parts", &fs::read(b.path("big")).unwrap(), &big);
    b.umount();

    let bad = hybridfs_blocks::block_id(&big[16 * MIB..32 * MIB]);
    let key = format!("data/blocks/{}", bad.to_hex());
    let (mut body, _) = store.get(&key).unwrap_or_else(|e| panic!("block 1 of big is stored alone at {key}: {e}"));
    let at = body.len() - 1000;
    body[at] ^= 1;
    store.put(&key, &body, Cond::None).unwrap();
    let mut c = empty_node();
    clone_ok(&c, &env, "s3://hybridfs-parts/p/data", "nodec", &[]);
    c.mount_env(&env_refs(&env));
    let f = File::open(c.path("big")).unwrap();
    let mut buf = vec![0u8; 4096];
    for attempt in 0..2 {
        let err = f.read_exact_at(&mut buf, 20 * MIB as u64).expect_err(&format!("{INV5}: the damaged block read without error (try {attempt})"));
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{INV5}: {err}");
    }
    f.read_exact_at(&mut buf, 33 * MIB as u64).expect("block 2 is intact");
    assert_same_bytes("big block 2", &buf, &big[33 * MIB..33 * MIB + 4096]);
    drop(f);
    assert!(c.mount_log().contains(&bad.to_hex()), "{INV5}: the mount log names block {bad}");
    c.umount();
}

/// Invariant 1: a clone is complete only once its records are durable. A clone that dies after
/// applying its records (written past RocksDB's WAL) and before making them durable leaves no
/// volume, only its work directory; the next clone of that name starts over and is whole.
#[test]
fn an_interrupted_clone_leaves_no_volume_and_the_next_clone_is_whole() {
    let server = start_server();
    let env = server.env();
    let _store = test_store(&server, "hybridfs-cut", "s");
    let a = origin("s3://hybridfs-cut/s", &[], &env);
    let files = small_files(300);
    for (p, d) in &files {
        a.put(p, d);
    }
    push_ok(&a);
    let mut b = empty_node();
    let mut crash_env = env.clone();
    crash_env.push(("HYBRIDFS_CRASHPOINT", "clone-before-persist".into()));
    let killed = clone_cmd(&b, &crash_env, "s3://hybridfs-cut/s/data", "nodeb", &[]);
    assert!(!killed.success(), "the clone dies at the crash point: {killed}");
    assert!(!b.volume_dir().exists(), "invariant 1: no volume after an interrupted clone");
    assert!(b.home().join("volumes").join(".data.cloning").exists(), "its work directory is left, named as unfinished");
    let report = clone_ok(&b, &env, "s3://hybridfs-cut/s/data", "nodeb", &[]);
    assert!(int(&report, "records") >= 300, "{report}");
    b.mount_env(&env_refs(&env));
    assert_tree(&b.path(""), &files, "the clone after an interrupted one");
    b.umount();
}

// ---------------------------------------------------------------------------------------------
// 7. Disaster recovery: a home lost with its whole HYBRIDFS_HOME is rebuilt by adopting main
//    (`clone --branch main --source main --adopt`). The adopting home continues main's chain:
//    nothing unpushed right after the adopt, its push moves the head from the one it cloned
//    (seq + 1), a fresh clone reads the old and the new files byte for byte; a branch forked at
//    the adopted head and one forked after the adoption merge into it; one forked at an older
//    layer of the lost home is refused, naming the branch and the missing base, nothing merged;
//    `pull` says up to date; later pushes work. Two adopters racing: one push wins, the other
//    is refused as moved (invariant 4).

const INV4: &str = "invariant 4: the head moves by a conditional PUT on the head this node saw; a concurrent writer makes the push fail, nothing overwritten";
const INV6_MERGE: &str = "invariant 6: a merge never loses a change (a merge without its base is refused, nothing applied)";

/// The one error line of a command that failed: exit 1 (refused) or 2 (bad input).
fn failed_line(out: &CmdOutput) -> String {
    assert!(matches!(out.code, Some(1 | 2)), "the command fails with exit 1 or 2: {out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("hybridctl: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line on stderr: {out}");
    lines[0].to_string()
}

/// `clone --adopt` of main on `node`: must succeed, and warn that the old home must be gone.
fn adopt_ok(node: &TestVolume, env: &Env, url: &str) -> Value {
    let out = clone_cmd(node, env, url, "main", &["--source", "main", "--adopt"]);
    out.assert_success();
    assert!(out.stderr.contains("warning") && out.stderr.contains("be sure the home that pushed it is gone"), "the adopt warns: {out}");
    let v = json_of(&out);
    assert_eq!(v["adopted"].as_bool(), Some(true), "{v}");
    v
}

fn merge_branch(home: &TestVolume, env: &Env, branch: &str) -> CmdOutput {
    home.ctl_env(&env_refs(env), &["merge", branch, "--volume", "data", "--json"])
}

fn adopt_files(seed: u64, dir: &str, n: u64) -> BTreeMap<String, Vec<u8>> {
    (0..n).map(|i| (format!("{dir}/f{i:02}"), pattern(seed + i, 3 * KIB + (i as usize) * 700))).collect()
}

/// The home is lost: unmounted, its whole `HYBRIDFS_HOME` deleted.
fn lose(home: &mut TestVolume) {
    home.umount();
    fs::remove_dir_all(home.home()).unwrap_or_else(|e| panic!("delete {}: {e}", home.home().display()));
}

/// A burst node cloned from main as branch `branch`: writes `file` and pushes its branch.
fn burst(env: &Env, url: &str, branch: &str, file: &str, bytes: &[u8]) -> TestVolume {
    let mut n = empty_node();
    clone_ok(&n, env, url, branch, &[]);
    n.mount_env(&env_refs(env));
    n.put(file, bytes);
    let p = push_ok(&n);
    assert_eq!((int(&p, "seq"), p["branch"].as_str()), (1, Some(branch)), "{p}");
    n.umount();
    n
}

#[test]
fn a_home_lost_with_its_home_dir_is_rebuilt_by_adopting_main() {
    let server = start_server();
    let env = server.env();
    let _bucket = test_store(&server, "hybridfs-adopt", "");
    let url = "s3://hybridfs-adopt/p/data";

    // The old home pushes main 1 (branch `old` forks there) and main 2 (`athead` forks there).
    let mut a = origin("s3://hybridfs-adopt/p", &[], &env);
    let mut want = adopt_files(100, "one", 12);
    for (p, b) in &want {
        a.put(p, b);
    }
    assert_eq!(int(&push_ok(&a), "seq"), 1);
    let from_old = pattern(900, 9 * KIB);
    let _old = burst(&env, url, "old", "from-old", &from_old);
    let two = adopt_files(200, "two", 8);
    for (p, b) in &two {
        a.put(p, b);
    }
    want.extend(two);
    assert_eq!(int(&push_ok(&a), "seq"), 2);
    let from_athead = pattern(901, 11 * KIB);
    let _athead = burst(&env, url, "athead", "from-athead", &from_athead);
    // Written on the old home and never pushed: lost with it.
    a.put("unpushed", &pattern(902, 5 * KIB));
    lose(&mut a);

    // The new home adopts main at layer 2: nothing to push, the old tree byte for byte.
    let mut n = empty_node();
    let adopted = adopt_ok(&n, &env, url);
    assert_eq!((int(&adopted, "seq"), adopted["branch"].as_str()), (2, Some("main")), "{adopted}");
    n.mount_env(&env_refs(&env));
    let status = json_of(&n.ctl(&["status", "data", "--json"]));
    assert_eq!(int(&status[0], "unpushed_bytes"), 0, "nothing is unpushed right after the adopt: {status}");
    assert_tree(n.mountpoint(), &want, "the adopting home right after the adopt");

    // Its push continues main's chain: layer 3, from the head it cloned.
    let new = pattern(903, 20 * KIB);
    n.put("new/after-adopt", &new);
    want.insert("new/after-adopt".into(), new);
    let p3 = push_ok(&n);
    assert_eq!((int(&p3, "seq"), p3["branch"].as_str()), (3, Some("main")), "{INV4}: the adopted home's push moves main to 3: {p3}");
    assert_eq!(int(&p3, "blocks_uploaded"), 1, "only the new file goes up: {p3}");

    // A fresh clone of main sees the old and the new files; its own branch merges back.
    let mut f = empty_node();
    assert_eq!(int(&clone_ok(&f, &env, url, "fresh", &[]), "seq"), 3);
    f.mount_env(&env_refs(&env));
    assert_tree(f.mountpoint(), &want, "a fresh clone of main after the adopted home's push");
    let from_fresh = pattern(904, 7 * KIB);
    f.put("from-fresh", &from_fresh);
    push_ok(&f);
    f.umount();

    // A branch forked at the adopted head merges (its base is the adopt's fork base) ...
    let m = merge_branch(&n, &env, "athead");
    m.assert_success();
    let rec = json_of(&m);
    assert_eq!(rec["base"].as_str(), Some("main@2"), "{rec}");
    assert_eq!(rec["base_snapshot"].as_str(), Some("push-main-2"), "the adopted tree is the fork base of layer 2: {rec}");
    assert!(rec["conflicts"].as_array().is_some_and(Vec::is_empty), "{rec}");
    want.insert("from-athead".into(), from_athead);
    // ... and one forked after the adoption, from the adopted home's own push.
    merge_branch(&n, &env, "fresh").assert_success();
    want.insert("from-fresh".into(), from_fresh);
    assert_tree(n.mountpoint(), &want, "the adopted home after merging athead and fresh");

    // A branch forked at an older layer of the lost home has no base here: refused, nothing
    // merged, the branch and the missing base named.
    let refused = merge_branch(&n, &env, "old");
    let line = failed_line(&refused);
    assert!(
        line.contains("branch old") && line.contains("layer 1 of branch main") && line.contains("adopted") && line.contains("nothing was merged"),
        "{INV6_MERGE}: the refusal names the branch and the missing base: {line}"
    );
    assert_tree(n.mountpoint(), &want, &format!("{INV6_MERGE}: the adopted home after the refused merge"));

    // Later pushes work (the merges went up as layer 4); pull has nothing to bring.
    let p4 = push_ok(&n);
    assert_eq!(int(&p4, "seq"), 4, "{p4}");
    n.umount();
    let pull = n.ctl_env(&env_refs(&env), &["pull", "--volume", "data", "--json"]);
    pull.assert_success();
    assert_eq!(json_of(&pull)["up_to_date"].as_bool(), Some(true), "the adopted home holds the head it pushed: {pull}");
    let mut g = empty_node();
    assert_eq!(int(&clone_ok(&g, &env, url, "g", &[]), "seq"), 4);
    g.mount_env(&env_refs(&env));
    assert_tree(g.mountpoint(), &want, "a clone of main 4: the lost home's pushed files, the new ones, the merged branches");
    g.umount();
}

#[test]
fn two_adopters_racing_one_push_wins_the_other_is_refused() {
    let server = start_server();
    let env = server.env();
    let _bucket = test_store(&server, "hybridfs-adopt2", "");
    let url = "s3://hybridfs-adopt2/p/data";
    let mut a = origin("s3://hybridfs-adopt2/p", &[], &env);
    let mut want = adopt_files(300, "d", 10);
    for (p, b) in &want {
        a.put(p, b);
    }
    push_ok(&a);
    lose(&mut a);

    // --adopt continues the branch it clones: another branch name is refused.
    let bad = clone_cmd(&empty_node(), &env, url, "elsewhere", &["--adopt"]);
    assert!(failed_line(&bad).contains("--adopt continues branch main"), "{bad}");

    let (mut x, mut y) = (empty_node(), empty_node());
    adopt_ok(&x, &env, url);
    adopt_ok(&y, &env, url);
    x.mount_env(&env_refs(&env));
    y.mount_env(&env_refs(&env));
    let from_x = pattern(1, 30 * KIB);
    x.put("from-x", &from_x);
    y.put("from-y", &pattern(2, 30 * KIB));
    let px = push_ok(&x);
    assert_eq!(int(&px, "seq"), 2, "{px}");
    let refused = y.ctl(&["push", "--volume", "data", "--json"]);
    let line = failed_line(&refused);
    assert!(line.contains("moved"), "{INV4}: the second adopter's push is refused as moved: {line}");
    x.umount();
    y.umount();
    let mut z = empty_node();
    assert_eq!(int(&clone_ok(&z, &env, url, "z", &[]), "seq"), 2, "{INV4}: the head names the winner's layer");
    z.mount_env(&env_refs(&env));
    want.insert("from-x".into(), from_x);
    assert_tree(z.mountpoint(), &want, &format!("{INV4}: main after the race: the winner's file, not the loser's"));
    z.umount();
}
