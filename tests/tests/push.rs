//! Push (issue 4) through a real mount, the `hybridctl push` CLI and a real S3 server
//! (SeaweedFS on 127.0.0.1, started by each test):
//!
//! - invariant 3 (O(changes)): the first push moves every block once, small files packed into
//!   few requests; a 64 KiB in-place change in 3 big files moves 3 blocks and a small layer;
//!   a push with nothing changed writes nothing;
//! - invariant 4 (commit order): what is in the store is always whole and verifiable (every
//!   block object decodes under the id its key names, every pack hashes to its name, every
//!   block a layer names is there); the store killed mid-push leaves the old head, and the
//!   next push resumes without sending again what arrived; a head another volume moved is
//!   never overwritten;
//! - the failures a user meets (wrong key, no bucket, no server) end the command with exit 1
//!   and one clear line, within a bounded time, and never show a secret (invariant 8).
//!
//! A mounted volume pushes from its mount process, so the AWS variables go on the mount
//! (`mount_env`); an unmounted volume pushes from the CLI itself (`ctl_env`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridfs_cloud::testserver::{SeaweedServer, SECRET_KEY};
use hybridfs_cloud::{ObjectStore, S3Store};
use hybridfs_core::meta::Key;
use hybridfs_core::types::BlockId;
use hybridfs_sync::{Head, Layer};
use hybridfs_tests::cmd::{wait_bounded, CmdOutput};
use hybridfs_tests::content::pattern;
use hybridfs_tests::{fail_loudly, hybridctl_bin, poll_until, procs, TestVolume};
use serde_json::Value;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const INV3: &str = "invariant 3: a push moves what changed since the last one, not the volume";
const INV4: &str = "invariant 4: the store never holds a head naming anything not fully written; \
                    an interrupted push leaves the old head valid and is resumed, not restarted";
const INV8: &str = "invariant 8: credentials never appear in errors or logs";

// ---------------------------------------------------------------------------------------------
// The server and the volume

fn start_server() -> SeaweedServer {
    SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the push tests need a real S3 server: {e}")))
}

/// The S3 store the tests read with: `bucket` (created) under `prefix`.
fn test_store(server: &SeaweedServer, bucket: &str, prefix: &str) -> Arc<S3Store> {
    Arc::new(server.store(bucket, prefix).unwrap_or_else(|e| panic!("create bucket {bucket}: {e}")))
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `env` with `key` replaced by `value`.
fn env_with(env: &[(&'static str, String)], key: &str, value: &str) -> Vec<(&'static str, String)> {
    env.iter().map(|(k, v)| (*k, if *k == key { value.to_string() } else { v.clone() })).collect()
}

/// A volume on the store `url`, mounted with `env` on its mount process.
fn mounted_volume(name: &str, url: &str, env: &[(&'static str, String)]) -> TestVolume {
    let mut vol = TestVolume::builder().name(name).block_size("1M").store(url).unmounted().build();
    vol.mount_env(&env_refs(env));
    vol
}

fn unmounted_volume(name: &str, url: &str) -> TestVolume {
    TestVolume::builder().name(name).block_size("1M").store(url).unmounted().build()
}

// ---------------------------------------------------------------------------------------------
// The CLI

/// `hybridctl push --volume NAME --json EXTRA...`, with `env` on the command.
fn push_cmd(vol: &TestVolume, env: &[(&'static str, String)], extra: &[&str]) -> CmdOutput {
    let mut args = vec!["push", "--volume", vol.name(), "--json"];
    args.extend_from_slice(extra);
    vol.ctl_env(&env_refs(env), &args)
}

/// `hybridctl push --json`'s report.
#[derive(Debug, Clone)]
struct Report {
    branch: String,
    seq: u64,
    records: u64,
    blocks_uploaded: u64,
    blocks_as_deltas: u64,
    blocks_skipped: u64,
    packs: u64,
    bytes_uploaded: u64,
    requests: u64,
    resumed: bool,
    resumed_seq: Option<u64>,
    up_to_date: bool,
}

impl Report {
    fn parse(out: &CmdOutput) -> Report {
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("push --json: stdout is not one JSON document ({e}): {out}"));
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("push --json: no integer {k:?}: {v}"));
        let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or_else(|| panic!("push --json: no boolean {k:?}: {v}"));
        for k in ["epoch", "seconds"] {
            assert!(v.get(k).is_some_and(Value::is_number), "push --json: no number {k:?}: {v}");
        }
        Report {
            branch: v.get("branch").and_then(Value::as_str).unwrap_or_else(|| panic!("push --json: no branch: {v}")).into(),
            seq: u("seq"),
            records: u("records"),
            blocks_uploaded: u("blocks_uploaded"),
            blocks_as_deltas: u("blocks_as_deltas"),
            blocks_skipped: u("blocks_skipped"),
            packs: u("packs"),
            bytes_uploaded: u("bytes_uploaded"),
            requests: u("requests"),
            resumed: b("resumed"),
            resumed_seq: v.get("resumed_seq").and_then(Value::as_u64),
            up_to_date: b("up_to_date"),
        }
    }
}

/// A push that must succeed; its report.
fn push_ok(vol: &TestVolume, env: &[(&'static str, String)], extra: &[&str]) -> (Report, CmdOutput) {
    let out = push_cmd(vol, env, extra);
    out.assert_success();
    (Report::parse(&out), out)
}

/// The one `hybridctl: error:` line of a failed command (exit 1); panics unless there is
/// exactly one.
fn the_error_line(out: &CmdOutput) -> String {
    assert_eq!(out.code, Some(1), "a store failure exits 1: {out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("hybridctl: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line on stderr: {out}");
    lines[0].to_string()
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `hybridctl status --json`'s `unpushed_bytes` of the volume.
fn unpushed_bytes(vol: &TestVolume) -> u64 {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
    v[0]["unpushed_bytes"].as_u64().unwrap_or_else(|| panic!("status --json: no unpushed_bytes: {v}"))
}

/// Spawns `hybridctl push --volume NAME --branch BRANCH --json` for `vol` (its mount pushes).
fn spawn_push(vol: &TestVolume, branch: &str, tag: &str) -> (Child, std::path::PathBuf, std::path::PathBuf) {
    let (out_path, err_path) = (vol.root().join(format!("{tag}.out")), vol.root().join(format!("{tag}.err")));
    let child = Command::new(hybridctl_bin())
        .args(["push", "--volume", vol.name(), "--branch", branch, "--json"])
        .env("HYBRIDFS_HOME", vol.home())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn hybridctl push");
    (child, out_path, err_path)
}

fn finished(mut child: Child, out: &std::path::Path, err: &std::path::Path, what: &str) -> CmdOutput {
    let status = wait_bounded(&mut child, Duration::from_secs(120));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    CmdOutput {
        cmdline: what.to_string(),
        code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: fs::read_to_string(out).unwrap_or_default(),
        stderr: fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Kills a background command that a failing test left running.
struct Background(Option<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is in the store

/// One volume's objects in the store, by the remote layout the push documents (read here
/// independently of the sync crate's own reader, so a layout change shows up as a failure):
///
/// ```text
/// VOLUME/blocks/<hex>  VOLUME/packs/<hex>  VOLUME/branches/B/head
/// VOLUME/branches/B/layers/<012 seq>-<32 hex: blake3 of the stored bytes>
/// ```
///
/// The head names its layer's key and full hash; each layer names the one before it (`prev`).
struct Remote {
    store: Arc<S3Store>,
    volume: String,
}

fn remote(store: &Arc<S3Store>, volume: &str) -> Remote {
    Remote { store: store.clone(), volume: volume.to_string() }
}

impl Remote {
    fn block_key(&self, id: &BlockId) -> String {
        format!("{}/blocks/{}", self.volume, id.to_hex())
    }
    fn pack_key(&self, id: &BlockId) -> String {
        format!("{}/packs/{}", self.volume, id.to_hex())
    }
    fn head_key(&self, branch: &str) -> String {
        format!("{}/branches/{branch}/head", self.volume)
    }
    /// The layer at `key` (decoded by core), whose stored bytes hash to `hash`, and whose key
    /// is `layers/<seq>-<first 32 hex digits of the hash>`.
    fn layer(&self, branch: &str, seq: u64, key: &str, hash: &str) -> Result<Layer, String> {
        let want_key = format!("{}/branches/{branch}/layers/{seq:012}-{}", self.volume, hash.get(..32).unwrap_or("?"));
        if key != want_key {
            return Err(format!("layer {seq} is named {key}, not {want_key}"));
        }
        let (bytes, _) = self.store.get(key).map_err(|e| e.to_string())?;
        let got = blake3::hash(&bytes).to_hex().to_string();
        if got != hash {
            return Err(format!("{key} hashes to {got}, its name says {hash}"));
        }
        let reader = hybridfs_core::layer::LayerReader::open(&bytes[..]).map_err(|e| format!("not a layer: {e}"))?;
        reader.into_layer().map_err(|e| format!("not a layer: {e}"))
    }
    /// The layers of `branch` (not following forks), oldest first, from its head back along
    /// `prev`, each checked against the hash that names it.
    fn chain(&self, branch: &str, head: &Head) -> Vec<Layer> {
        let mut out = Vec::new();
        let (mut seq, mut key, mut hash) = (head.seq, head.layer.clone(), head.hash.clone());
        for _ in 0..=head.seq {
            let layer = self.layer(branch, seq, &key, &hash).unwrap_or_else(|e| panic!("{INV4}: layer {seq} of {branch} (head {head:?}): {e}"));
            assert_eq!((layer.seq, layer.branch.as_str(), layer.volume.as_str()), (seq, branch, self.volume.as_str()));
            let prev = layer.prev.clone();
            out.push(layer);
            match prev {
                Some(p) => {
                    assert_eq!(p.seq + 1, seq, "{INV4}: layer {seq} names layer {} before it", p.seq);
                    (seq, key, hash) = (p.seq, p.key, p.hash);
                }
                None => {
                    assert_eq!(seq, 1, "{INV4}: layer {seq} of {branch} names no layer before it");
                    break;
                }
            }
        }
        out.reverse();
        out
    }
    /// The names in the root directory of `branch`, as its layers say.
    fn root_names(&self, branch: &str) -> BTreeSet<String> {
        let head = head_of(self, branch).unwrap_or_else(|| panic!("{INV4}: branch {branch} has no head"));
        let mut names = BTreeMap::new();
        for layer in self.chain(branch, &head) {
            for rec in layer.records {
                if let Key::Dentry(1, name) = rec.key {
                    names.insert(String::from_utf8_lossy(&name).into_owned(), rec.value.is_some());
                }
            }
        }
        names.into_iter().filter(|(_, live)| *live).map(|(n, _)| n).collect()
    }
}

/// The head of `branch` (JSON), if it has one.
fn head_of(r: &Remote, branch: &str) -> Option<Head> {
    match r.store.get(&r.head_key(branch)) {
        Ok((bytes, _)) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("the head of {branch} is not JSON {{seq, layer, epoch, pushed_at}} ({e}): {}", String::from_utf8_lossy(&bytes))
        })),
        Err(hybridfs_cloud::StoreError::NotFound { .. }) => None,
        Err(e) => panic!("read the head of {branch}: {e}"),
    }
}

/// Every object under `VOLUME/blocks/` decodes under the id its key names, and every pack
/// under `VOLUME/packs/` hashes to its name: nothing partial or wrong is in the store, also
/// not what an interrupted push left that no layer names yet. Returns (blocks, packs).
fn check_objects(r: &Remote) -> (BTreeSet<BlockId>, BTreeSet<BlockId>) {
    let mut blocks = BTreeSet::new();
    let blocks_prefix = format!("{}/blocks/", r.volume);
    for key in r.store.list(&blocks_prefix).unwrap_or_else(|e| panic!("list {blocks_prefix}: {e}")) {
        let hex = key.strip_prefix(&blocks_prefix).unwrap();
        let id = BlockId::from_hex(hex).unwrap_or_else(|| panic!("{INV4}: {key} is not named by a block id"));
        let (frame, _) = r.store.get(&key).unwrap_or_else(|e| panic!("get {key}: {e}"));
        hybridfs_blocks::decode(&id, &frame).unwrap_or_else(|e| panic!("{INV4}: block object {key} does not decode: {e}"));
        blocks.insert(id);
    }
    let mut packs = BTreeSet::new();
    let packs_prefix = format!("{}/packs/", r.volume);
    for key in r.store.list(&packs_prefix).unwrap_or_else(|e| panic!("list {packs_prefix}: {e}")) {
        let hex = key.strip_prefix(&packs_prefix).unwrap();
        let id = BlockId::from_hex(hex).unwrap_or_else(|| panic!("{INV4}: {key} is not named by a pack id"));
        let (body, _) = r.store.get(&key).unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(blake3::hash(&body).as_bytes(), &id.0, "{INV4}: pack {key} ({} bytes) is not the pack its name says", body.len());
        packs.insert(id);
    }
    (blocks, packs)
}

/// What the layers of a branch say.
struct BranchCheck {
    head: Head,
    /// Blocks the layers name.
    named: BTreeSet<BlockId>,
    /// Of those, the ones in packs.
    packed: BTreeSet<BlockId>,
}

/// The head of `branch` names its newest layer; every layer up to it is there and readable;
/// every block a layer names is in the store (alone or in a pack, a whole frame or a delta
/// whose base is there too) and reads back under its id.
fn check_branch(r: &Remote, branch: &str) -> BranchCheck {
    let head = head_of(r, branch).unwrap_or_else(|| panic!("{INV4}: branch {branch} has no head in the store"));
    let mut where_packed = BTreeMap::new();
    let mut named = BTreeSet::new();
    for layer in r.chain(branch, &head) {
        for p in layer.packed {
            where_packed.insert(p.id, (p.pack, p.offset, p.len));
        }
        for rec in layer.records {
            if let Some(id) = hybridfs_core::record::sealed_block(&rec.key, rec.value.as_deref()).unwrap_or_else(|e| panic!("{e}")) {
                named.insert(id);
            }
        }
    }
    let mut packed = BTreeSet::new();
    let reader = hybridfs_sync::Remote::new(r.store.clone(), r.volume.clone());
    for id in &named {
        if where_packed.contains_key(id) {
            packed.insert(*id);
        }
        let frame = reader
            .fetch_frame(id, where_packed.get(id).copied())
            .unwrap_or_else(|e| panic!("{INV4}: block {id}, named by a layer of {branch} under head {head:?}, is not in the store: {e}"));
        hybridfs_blocks::decode(id, &frame).unwrap_or_else(|e| panic!("{INV4}: block {id} in the store: {e}"));
    }
    BranchCheck { head, named, packed }
}

// ---------------------------------------------------------------------------------------------
// 1. O(changes)

#[test]
fn push_moves_only_what_changed() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-push", "site-a");
    let mut vol = mounted_volume("vol", "s3://hybridfs-push/site-a", &env);
    const BIG: usize = 20;
    const SMALL: usize = 200;
    for i in 0..BIG {
        vol.put(&format!("big/{i:02}"), &pattern(i as u64, 3 * MIB));
    }
    for i in 0..SMALL {
        vol.put(&format!("small/{i:03}"), &pattern(1000 + i as u64, 10 * KIB));
    }

    let before = unpushed_bytes(&vol);
    assert_eq!(before, (BIG * 3 * MIB + SMALL * 10 * KIB) as u64, "status: everything is unpushed before the first push");
    let (first, out) = push_ok(&vol, &[], &[]);
    assert_eq!(unpushed_bytes(&vol), 0, "status: nothing is unpushed right after a push");
    let big_blocks = (BIG * 3) as u64;
    assert_eq!((first.seq, first.branch.as_str(), first.up_to_date, first.resumed), (1, "main", false, false), "{first:?}");
    assert_eq!(first.blocks_uploaded, big_blocks + SMALL as u64, "{INV3}: every block once, 3 per big file, 1 per small one: {first:?}");
    assert_eq!(first.blocks_skipped, 0, "{first:?}");
    assert!(first.packs >= 1, "the 10 KiB blocks travel in packs: {first:?}");
    // Head read, layer, head; one request per big block; the small ones in packs.
    let small_requests = first.requests.saturating_sub(big_blocks + 3);
    assert!(
        small_requests * 10 <= SMALL as u64,
        "{SMALL} small files must cost at most a tenth as many requests, they cost {small_requests}: {first:?}"
    );
    assert!(first.bytes_uploaded >= (BIG * 3 * MIB + SMALL * 10 * KIB) as u64, "{first:?}");
    assert!(out.stderr.contains("pushed "), "progress lines go to stderr: {out}");
    // stderr is not a terminal here: plain lines a script can read (no bar, no escapes), the
    // last of which says every block of its pass is up; stdout held only the JSON (parsed above).
    assert!(!out.stderr.contains('\r') && !out.stderr.contains('\x1b'), "plain progress lines off a terminal: {out}");
    let complete = |l: &&str| l.strip_prefix("pushed ").and_then(|r| r.split(' ').next()).and_then(|f| f.split_once('/')).is_some_and(|(a, b)| a == b);
    assert!(out.stderr.lines().any(|l| complete(&l)), "a final `pushed N/N blocks` line: {out}");

    // 64 KiB changed in place in block 1 of three big files: 3 deltas (against the blocks of
    // the first push, in one pack) and a layer move.
    let changed = [0usize, 7, 13];
    for i in changed {
        let f = OpenOptions::new().write(true).open(vol.path(format!("big/{i:02}"))).unwrap();
        f.write_all_at(&pattern(5000 + i as u64, 64 * KIB), (MIB + 100 * KIB) as u64).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(unpushed_bytes(&vol), 3 * MIB as u64, "status: the 3 changed blocks are unpushed");
    let (second, _) = push_ok(&vol, &[], &[]);
    assert_eq!(unpushed_bytes(&vol), 0, "status: nothing is unpushed right after a push");
    assert_eq!(second.seq, 2, "{second:?}");
    assert_eq!((second.blocks_uploaded, second.blocks_as_deltas, second.packs), (3, 3, 1), "{INV3}: one delta per changed file: {second:?}");
    let limit = (1.25 * (3 * 64 * KIB) as f64) as u64 + 64 * KIB as u64;
    assert!(
        second.bytes_uploaded <= limit,
        "{INV3}: {} bytes sent for 3 x 64 KiB written; at most 1.25 x that + 64 KiB of layer ({limit}): {second:?}",
        second.bytes_uploaded
    );
    assert!(second.records < 50, "{INV3}: the layer holds the changed records, not the volume's: {second:?}");

    let (third, _) = push_ok(&vol, &[], &[]);
    assert!(third.up_to_date, "{INV3}: nothing changed, nothing is written: {third:?}");
    assert_eq!((third.seq, third.blocks_uploaded, third.bytes_uploaded), (2, 0, 0), "{third:?}");

    // What the store holds: head → layer 2; every block reads back (the deltas resolved).
    let r = remote(&store, "vol");
    let branch = check_branch(&r, "main");
    assert_eq!(branch.head.seq, 2, "the head names layer 2: {:?}", branch.head);
    assert!(branch.head.layer.contains("/branches/main/layers/000000000002-"), "{:?}", branch.head);
    assert_eq!(branch.named.len() as u64, big_blocks + SMALL as u64 + 3, "blocks named by the two layers");
    assert_eq!(branch.packed.len(), SMALL + 3, "the small blocks and the deltas are in packs");
    let (blocks, packs) = check_objects(&r);
    assert_eq!(blocks.len() as u64, big_blocks, "one object per big block of the first push: deltas travel in packs");
    assert_eq!(packs.len() as u64, first.packs + 1, "the packs of the first push and the deltas' pack");
    let mut keys = r.store.list("").unwrap();
    keys.retain(|k| !k.starts_with("vol/blocks/") && !k.starts_with("vol/packs/"));
    let layer_1 = keys.iter().filter(|k| k.starts_with("vol/branches/main/layers/000000000001-")).count();
    assert_eq!((keys.len(), layer_1), (3, 1), "the head and one object per layer, nothing else under the prefix: {keys:?}");
    assert!(keys.contains(&"vol/branches/main/head".to_string()) && keys.contains(&branch.head.layer), "{keys:?}");
    assert!(store.list("").unwrap().iter().all(|k| k.starts_with("vol/")));
    vol.umount();
}

// ---------------------------------------------------------------------------------------------
// 2. The store dies mid-push

#[test]
fn store_killed_mid_push_keeps_the_old_head_and_the_next_push_resumes() {
    let mut server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-resume", "site-b");
    let mut vol = mounted_volume("vol", "s3://hybridfs-resume/site-b", &env);
    let r = remote(&store, "vol");
    vol.put("first", &pattern(1, 300 * KIB));
    let (first, _) = push_ok(&vol, &[], &[]);
    assert_eq!(first.seq, 1, "{first:?}");
    let old_head = r.store.get(&r.head_key("main")).unwrap().0;

    // ~200 MiB of new blocks.
    const FILES: usize = 50;
    for i in 0..FILES {
        vol.put(&format!("data/{i:02}"), &pattern(100 + i as u64, 4 * MIB));
    }
    let total_blocks = (FILES * 4) as u64;
    let before = r.store.list("vol/blocks/").unwrap().len();

    // The push, in the background (the CLI waits for the mount process, which pushes).
    let (child, out_path, err_path) = spawn_push(&vol, "main", "push2");
    let mut push = Background(Some(child));
    let started = Instant::now();
    let mut arrived_before_stop = 0;
    let mut exited_early = false;
    let seen = poll_until(Duration::from_secs(30), Duration::from_millis(5), || {
        if matches!(push.0.as_mut().unwrap().try_wait(), Ok(Some(_))) {
            exited_early = true;
            return true;
        }
        arrived_before_stop = r.store.list("vol/blocks/").map(|l| l.len()).unwrap_or(0).saturating_sub(before);
        arrived_before_stop >= 3
    });
    assert!(!exited_early, "the push finished before the store could be stopped (test setup too small): {}", fs::read_to_string(&err_path).unwrap_or_default());
    assert!(seen, "no block of the second push reached the store within 30 s: {}", fs::read_to_string(&err_path).unwrap_or_default());
    server.stop();
    eprintln!("store stopped {:?} after the push started, {arrived_before_stop} blocks had arrived", started.elapsed());

    // Local writes and fsync keep working while the store is down (bounded: a hang fails).
    let outage = vol.path("written-during-outage");
    let outage_data = pattern(7, 500 * KIB);
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (outage, outage_data) = (outage.clone(), outage_data.clone());
        std::thread::spawn(move || {
            let r = (|| -> std::io::Result<()> {
                let mut f = File::create(&outage)?;
                f.write_all(&outage_data)?;
                f.sync_all()
            })();
            let _ = tx.send(r);
        });
    }
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r.expect("write + fsync while the store is down"),
        Err(_) => panic!("write + fsync of a local file hung for 60 s while the store was down"),
    }
    assert_eq!(fs::read(&outage).unwrap(), outage_data, "the file written during the outage reads back");

    // The push gives up: exit 1, one line naming the store.
    let failed = finished(push.0.take().expect("running"), &out_path, &err_path, "hybridctl push --volume vol --json (background)");
    assert!(!failed.timed_out, "the push must give up within 120 s of the store going down: {failed}");
    let line = the_error_line(&failed);
    assert!(line.contains("store"), "the error names the store: {line}");
    eprintln!("push ended {:?} after it started: {line}", started.elapsed());
    let pid = vol.mount_pid().expect("mount pid");
    assert!(procs::pid_alive(pid), "the mount process survives the store going down");

    // The store comes back on the same data and ports: the old head is intact and valid.
    server.restart().unwrap_or_else(|e| panic!("restart the S3 server: {e}"));
    assert_eq!(r.store.get(&r.head_key("main")).unwrap().0, old_head, "{INV4}: the failed push did not move the head");
    assert_eq!(check_branch(&r, "main").head.seq, 1, "{INV4}");
    let (in_store, _) = check_objects(&r);
    let arrived = in_store.len() - before;
    assert!(arrived >= 3, "blocks of the interrupted push are in the store: {arrived}");
    assert!(
        !r.store.list("vol/branches/main/layers/").unwrap().iter().any(|k| k.contains("/layers/000000000002-")),
        "{INV4}: no layer before all its blocks are in the store"
    );

    // The next push resumes: same snapshot, what arrived is not sent again.
    let (resumed, out) = push_ok(&vol, &[], &[]);
    eprintln!("resumed push: {resumed:?}");
    assert!(resumed.resumed, "{INV4}: the push resumes the interrupted one: {resumed:?}\n{out}");
    // Issue 9: the resumed part is layer 2 (the interrupted push's snapshot); the file written
    // during the outage goes on as layer 3 in the same command, not silently left out.
    assert_eq!((resumed.resumed_seq, resumed.seq), (Some(2), 3), "{resumed:?}");
    assert!(resumed.blocks_skipped > 0, "{INV4}: what arrived is not sent again: {resumed:?}");
    assert!(resumed.blocks_skipped <= arrived as u64, "only what is in the store is skipped: {resumed:?}, {arrived} arrived");
    assert_eq!(
        resumed.blocks_uploaded + resumed.blocks_skipped,
        total_blocks + 1,
        "{INV4}: the resumed push covers the snapshot of the interrupted one, then the file written since: {resumed:?}"
    );
    let branch = check_branch(&r, "main");
    assert_eq!(branch.head.seq, 3, "{INV4}: {:?}", branch.head);
    assert!(r.root_names("main").contains("written-during-outage"), "the branch has the tree as of the push command");
    check_objects(&r);
    assert_eq!(unpushed_bytes(&vol), 0, "status: nothing unpushed right after a push");

    // Nothing is left for the next push.
    let (next, _) = push_ok(&vol, &[], &[]);
    assert_eq!((next.seq, next.resumed, next.up_to_date), (3, false, true), "{next:?}");
    check_branch(&r, "main");
    vol.umount();
}

// ---------------------------------------------------------------------------------------------
// 3. Bad settings

#[test]
fn bad_store_settings_fail_with_one_clear_line() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-bad", "");

    // Wrong secret key (on the mount, which pushes): access denied, and no secret shown.
    let wrong_secret = "wrong-Secret-7Hq2ZxVb";
    let bad_env = env_with(&env, "AWS_SECRET_ACCESS_KEY", wrong_secret);
    let mut vol = mounted_volume("vol", "s3://hybridfs-bad/denied", &bad_env);
    vol.put("f", &pattern(1, 100 * KIB));
    let out = push_cmd(&vol, &[], &[]);
    let line = the_error_line(&out);
    let lower = line.to_lowercase();
    assert!(lower.contains("access denied"), "the error says the credentials were refused: {line}");
    for secret in [wrong_secret, SECRET_KEY] {
        assert!(!out.all_output().contains(secret), "{INV8}: the output shows a secret key: {out}");
        assert!(!vol.mount_log().contains(secret), "{INV8}: the mount log shows a secret key");
    }
    assert!(store.list("denied/").unwrap().is_empty(), "nothing was written with wrong credentials");
    vol.umount();

    // A bucket that does not exist (unmounted: the CLI pushes).
    let vol = unmounted_volume("vol", "s3://hybridfs-no-such-bucket/p");
    let out = push_cmd(&vol, &env, &[]);
    let line = the_error_line(&out);
    assert!(line.contains("hybridfs-no-such-bucket") && line.contains("bucket"), "the error names the bucket: {line}");
    assert!(!out.all_output().contains(SECRET_KEY), "{INV8}: {out}");

    // An endpoint where nothing listens: the command returns, in bounded time, and says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let closed_env = env_with(&env, "AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"));
    let vol = unmounted_volume("vol", "s3://hybridfs-bad/closed");
    let started = Instant::now();
    let out = push_cmd(&vol, &closed_env, &[]);
    let took = started.elapsed();
    assert!(!out.timed_out, "push against a closed port must return (harness limit 120 s): {out}");
    let line = only_the_error_line(&out);
    assert!(line.contains("cannot reach the store"), "the error says the store cannot be reached: {line}");
    assert!(line.contains(&port.to_string()), "the error names the endpoint: {line}");
    assert!(!out.all_output().contains(SECRET_KEY), "{INV8}: {out}");
    eprintln!("push against a closed port returned in {took:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Two writers, one branch

#[test]
fn two_volumes_cannot_both_move_one_branch() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-two", "shared-prefix");
    let url = "s3://hybridfs-two/shared-prefix";
    let r = remote(&store, "shared");
    // Two volumes of the same name, each in its own HYBRIDFS_HOME, on one store.
    let mut a = mounted_volume("shared", url, &env);
    let mut b = mounted_volume("shared", url, &env);
    assert_ne!(a.home(), b.home());
    a.put("from-a", &pattern(1, 200 * KIB));
    b.put("from-b", &pattern(2, 200 * KIB));

    let (pa, _) = push_ok(&a, &[], &[]);
    assert_eq!(pa.seq, 1, "{pa:?}");
    let head_a = r.store.get(&r.head_key("main")).unwrap().0;

    let out = push_cmd(&b, &[], &[]);
    let line = the_error_line(&out);
    assert!(line.contains("moved") && line.contains("main"), "{INV4}: the second writer is told the branch moved: {line}");
    assert_eq!(r.store.get(&r.head_key("main")).unwrap().0, head_a, "{INV4}: the head of main is never overwritten");
    let main = check_branch(&r, "main");
    assert_eq!(main.head.seq, 1);

    // Its own branch is fine.
    let (pb, _) = push_ok(&b, &[], &["--branch", "other"]);
    assert_eq!((pb.branch.as_str(), pb.seq, pb.up_to_date), ("other", 1, false), "{pb:?}");
    check_branch(&r, "other");
    // A retry to main is refused the same way.
    let again = push_cmd(&b, &[], &[]);
    assert!(the_error_line(&again).contains("moved"), "{again}");

    // a keeps moving main.
    a.put("from-a-2", &pattern(3, 200 * KIB));
    let (pa2, _) = push_ok(&a, &[], &[]);
    assert_eq!(pa2.seq, 2, "{pa2:?}");
    assert_eq!(check_branch(&r, "main").head.seq, 2);
    assert_eq!(check_branch(&r, "other").head.seq, 1);
    check_objects(&r);
    a.umount();
    b.umount();
}

// ---------------------------------------------------------------------------------------------
// 5. Racing nodes (issue 9)

/// Three nodes (volumes of one name in their own homes, one store) push a new branch at the
/// same moment, several rounds: exactly one push is acknowledged each round, the branch holds
/// its tree and nothing of the refused nodes, whose next try is refused again (their change is
/// still unpushed, never "up to date"); `fsck --remote --verify` is clean.
#[test]
fn racing_nodes_never_lose_an_acknowledged_push() {
    const NODES: usize = 3;
    const ROUNDS: usize = 4;
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-race", "p");
    let url = "s3://hybridfs-race/p";
    let r = remote(&store, "shared");
    let mut nodes: Vec<TestVolume> = (0..NODES).map(|_| mounted_volume("shared", url, &env)).collect();
    for round in 0..ROUNDS {
        let branch = format!("race-{round}");
        for (i, n) in nodes.iter().enumerate() {
            n.put(&format!("n{i}-r{round}"), &pattern((round * NODES + i) as u64, 300 * KIB));
        }
        let started: Vec<_> = nodes.iter().enumerate().map(|(i, n)| spawn_push(n, &branch, &format!("race-{round}-{i}"))).collect();
        let outs: Vec<CmdOutput> =
            started.into_iter().enumerate().map(|(i, (c, o, e))| finished(c, &o, &e, &format!("push of node {i}, round {round}"))).collect();
        let winners: Vec<usize> = (0..NODES).filter(|i| outs[*i].success()).collect();
        assert_eq!(winners.len(), 1, "{INV4}: round {round}: exactly one push is acknowledged: {outs:?}");
        let w = winners[0];
        for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != w) {
            assert!(the_error_line(out).contains("moved"), "{INV4}: round {round}: node {i} is told the branch moved: {out}");
        }
        let names = r.root_names(&branch);
        let want: BTreeSet<String> = (0..=round).map(|k| format!("n{w}-r{k}")).collect();
        assert_eq!(names, want, "{INV4}: round {round}: branch {branch} holds node {w}'s acknowledged push and nothing else");
        check_branch(&r, &branch);
        let fsck = nodes[w].ctl_env(&env_refs(&env), &["fsck", "shared", "--remote", "--verify", "--branch", &branch]);
        fsck.assert_success();
        let (again, _) = push_ok(&nodes[w], &[], &["--branch", &branch]);
        assert!(again.up_to_date, "round {round}: the winner is up to date: {again:?}");
        for i in (0..NODES).filter(|i| *i != w) {
            let retry = push_cmd(&nodes[i], &[], &["--branch", &branch]);
            assert!(the_error_line(&retry).contains("moved"), "{INV4}: round {round}: node {i}'s change is still refused, never up to date: {retry}");
        }
        eprintln!("round {round}: node {w} won");
    }
    for n in &mut nodes {
        n.umount();
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A client that goes away (issue 9: SIGPIPE; issue 11: cancellation per call)

/// `hybridctl status --json`'s workers of the mounted `vol`, as JSON.
fn status_workers(vol: &TestVolume) -> Vec<Value> {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
    v[0]["workers"].as_array().cloned().unwrap_or_else(|| panic!("no workers in status: {out}"))
}

/// The mounted `vol`'s workers: name → what it is busy with.
fn workers_busy(vol: &TestVolume) -> BTreeMap<String, Option<String>> {
    status_workers(vol).iter().map(|w| (w["name"].as_str().unwrap_or("?").to_string(), w["busy"].as_str().map(String::from))).collect()
}

/// The mounted `vol`'s `control` worker.
fn control_worker(vol: &TestVolume) -> Value {
    status_workers(vol).into_iter().find(|w| w["name"] == "control").unwrap_or_else(|| panic!("no control worker"))
}

/// A push client killed (as by Ctrl-C) while its push runs in the mount process cancels that
/// push there: the push's uploaders and store calls stop, the mount's control worker goes
/// idle soon, and the mount survives (it ignores SIGPIPE; writing to the gone client is an
/// error it logs). Invariant 4: the cancelled push leaves no head naming a missing block, and
/// the next push resumes it and finishes; a fresh clone of the branch has every byte.
#[test]
fn a_push_client_killed_mid_push_cancels_it_and_the_next_push_finishes() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-pipe", "p");
    let mut vol = mounted_volume("vol", "s3://hybridfs-pipe/p", &env);
    let pid = vol.mount_pid().expect("mount pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ign = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(|v| u64::from_str_radix(v.trim(), 16).unwrap()).unwrap();
    assert_ne!(ign & (1 << (libc::SIGPIPE - 1)), 0, "the mount process ignores SIGPIPE (SigIgn {ign:x})");

    let mut want = BTreeMap::new();
    for i in 0..60 {
        let (rel, data) = (format!("data/{i:02}"), pattern(300 + i as u64, 4 * MIB));
        vol.put(&rel, &data);
        want.insert(rel, data);
    }
    let (child, _out, err) = spawn_push(&vol, "main", "killed");
    let mut push = Background(Some(child));
    let streaming = poll_until(Duration::from_secs(60), Duration::from_millis(5), || fs::read_to_string(&err).unwrap_or_default().contains("pushed "));
    assert!(streaming, "the push streamed no progress within 60 s: {}", fs::read_to_string(&err).unwrap_or_default());
    // Where the push stands shows in the mount's workers too (`status`, `top`): the control
    // worker's last progress event.
    let control = control_worker(&vol);
    assert_eq!(control["busy"], "push", "{control}");
    let (done, total) = (control["progress"]["blocks_done"].as_u64(), control["progress"]["blocks_total"].as_u64());
    assert!(matches!((done, total), (Some(d), Some(t)) if t >= 60 && d <= t), "the control worker shows the push's progress: {control}");
    let mut child = push.0.take().expect("running");
    child.kill().unwrap();
    child.wait().unwrap();

    // The mount's push stops: its control worker and uploaders go idle (bounded wait).
    let mut last = BTreeMap::new();
    let idle = poll_until(Duration::from_secs(60), Duration::from_millis(100), || {
        last = workers_busy(&vol);
        last.iter().all(|(name, busy)| !(name == "control" || name.starts_with("upload-")) || busy.is_none())
    });
    assert!(idle, "the cancelled push still runs in the mount process 60 s after its client went away: {last:?}\n{}", log_tail(&vol.mount_log()));
    assert!(control_worker(&vol)["progress"].is_null(), "an idle worker shows no progress: {}", control_worker(&vol));
    let r = remote(&store, "vol");
    assert!(head_of(&r, "main").is_none(), "{INV4}: the cancelled push moved no head (it was cancelled mid-upload)");
    assert!(vol.mount_log().contains("went away"), "the mount log says why the push stopped:\n{}", log_tail(&vol.mount_log()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(procs::pid_alive(pid), "the mount process survives a client that went away mid-push\n{}", log_tail(&vol.mount_log()));

    // The next push resumes the cancelled one and finishes.
    let (next, out) = push_ok(&vol, &[], &[]);
    assert!(next.resumed && !next.up_to_date, "{INV4}: the next push resumes the cancelled one: {next:?}\n{out}");
    assert!(next.blocks_skipped > 0, "{INV4}: what arrived before the cancel is not sent again: {next:?}");
    check_branch(&r, "main");
    check_objects(&r);
    vol.umount();

    // A fresh clone of the branch has every byte.
    let mut fresh = TestVolume::builder().name("vol").unformatted().build();
    fresh.ctl_env(&env_refs(&env), &["clone", "s3://hybridfs-pipe/p/vol", "--branch", "copy", "--source", "main", "--json"]).assert_success();
    fresh.mount_env(&env_refs(&env));
    hybridfs_tests::content::assert_tree(&fresh.path("data"), &want.iter().map(|(k, v)| (k.trim_start_matches("data/").to_string(), v.clone())).collect(), "a fresh clone after the resumed push");
    fresh.umount();
}

// ---------------------------------------------------------------------------------------------
// 7. Format checks the store; errors stay one line (issue 9)

/// `hybridctl format NAME --store URL EXTRA...` in `vol`'s home with `env`.
fn format_cmd(vol: &TestVolume, env: &[(&'static str, String)], name: &str, url: &str, extra: &[&str]) -> CmdOutput {
    let mut args = vec!["format", name, "--store", url];
    args.extend_from_slice(extra);
    vol.ctl_env(&env_refs(env), &args)
}

/// A failed command prints exactly one line, the error (no retry or credential-chain warnings).
fn only_the_error_line(out: &CmdOutput) -> String {
    let line = the_error_line(out);
    assert_eq!(out.stderr.lines().count(), 1, "one line on stderr, nothing else: {out}");
    line
}

#[test]
fn format_checks_the_store_and_errors_stay_one_line() {
    let server = start_server();
    let env = server.env();
    let store = test_store(&server, "hybridfs-fmt", "");
    let scratch = TestVolume::builder().name("scratch").unformatted().build();
    let created = |name: &str| scratch.home().join("volumes").join(name).exists();

    // Good settings: the volume is made and the check leaves nothing in the store.
    format_cmd(&scratch, &env, "good", "s3://hybridfs-fmt/ok", &[]).assert_success();
    assert!(created("good"));
    assert_eq!(store.list("").unwrap(), Vec::<String>::new(), "the check object is deleted again");

    // A wrong secret key: refused now, one line, no secret shown, nothing made.
    let wrong_secret = "wrong-Secret-4Kd9PqLx";
    let out = format_cmd(&scratch, &env_with(&env, "AWS_SECRET_ACCESS_KEY", wrong_secret), "denied", "s3://hybridfs-fmt/d", &[]);
    let line = only_the_error_line(&out);
    assert!(line.to_lowercase().contains("access denied") && line.contains("--no-check"), "{line}");
    assert!(!out.all_output().contains(wrong_secret) && !out.all_output().contains(SECRET_KEY), "{INV8}: {out}");
    assert!(!created("denied"), "a failed check makes no volume");

    // A bucket that does not exist.
    let line = only_the_error_line(&format_cmd(&scratch, &env, "nobucket", "s3://hybridfs-no-such-bucket/p", &[]));
    assert!(line.contains("hybridfs-no-such-bucket") && line.contains("bucket"), "{line}");
    assert!(!created("nobucket"));

    // Nothing listens: one line after the retries (which stay out of the output), bounded.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let closed_env = env_with(&env, "AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let line = only_the_error_line(&format_cmd(&scratch, &closed_env, "closed", "s3://hybridfs-fmt/c", &[]));
    assert!(line.contains("cannot reach the store") && line.contains(&port.to_string()), "{line}");
    assert!(started.elapsed() < Duration::from_secs(60), "format against a closed port took {:?}", started.elapsed());
    assert!(!created("closed"));

    // No credentials at all (the EC2 metadata endpoint enabled but pointed at a closed local
    // port, so the AWS chain tries it and fails): one line that says so.
    let empty = scratch.root().join("empty-aws-config");
    fs::write(&empty, "").unwrap();
    let no_keys: Vec<(&'static str, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .cloned()
        .chain([
            ("AWS_EC2_METADATA_DISABLED", "false".to_string()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{port}")),
            ("AWS_SHARED_CREDENTIALS_FILE", empty.display().to_string()),
            ("AWS_CONFIG_FILE", empty.display().to_string()),
        ])
        .collect();
    let line = only_the_error_line(&format_cmd(&scratch, &no_keys, "nokeys", "s3://hybridfs-fmt/n", &[]));
    assert!(line.contains("no credentials"), "{line}");

    // --no-check makes it anyway, and it mounts (local first) and takes writes.
    format_cmd(&scratch, &closed_env, "closed", "s3://hybridfs-fmt/c", &["--no-check"]).assert_success();
    let mut vol = TestVolume::builder().name("offline").store("s3://hybridfs-fmt/c").unmounted().build();
    vol.mount_env(&env_refs(&closed_env));
    let said = poll_until(Duration::from_secs(60), Duration::from_millis(100), || vol.mount_log().contains("the store is unreachable"));
    assert!(said, "the mount says the store is unreachable:\n{}", log_tail(&vol.mount_log()));
    vol.put("local-first", &pattern(9, 200 * KIB));
    assert_eq!(fs::read(vol.path("local-first")).unwrap(), pattern(9, 200 * KIB));
    vol.umount();
}

/// A TCP proxy on 127.0.0.1 in front of the S3 server that, while armed, resets (RST) every
/// connection whose request has sent more than `reset_after` bytes: a store connection reset
/// in the middle of an upload.
struct ResetProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    resets: Arc<AtomicU64>,
}

fn start_reset_proxy(target: String, reset_after: u64) -> ResetProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (armed, resets) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (a, r) = (armed.clone(), resets.clone());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(&target) else { continue };
            let (a, r) = (a.clone(), r.clone());
            let (mut c_read, mut u_write) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut u_read, mut c_write) = (upstream, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u_read, &mut c_write);
            });
            std::thread::spawn(move || {
                let (mut sent, mut buf) = (0u64, vec![0u8; 64 * KIB]);
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 || u_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    if a.load(Ordering::SeqCst) && sent > reset_after {
                        r.fetch_add(1, Ordering::SeqCst);
                        hybridfs_tests::sys::reset_connection(&c_read);
                        let _ = u_write.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            });
        }
    });
    ResetProxy { port, armed, resets }
}

/// Connections the store resets mid-upload fail the push (one line), never the mount; the
/// next push, with the store healthy again, resumes and completes.
#[test]
fn store_connections_reset_mid_upload_never_take_the_mount_down() {
    let server = start_server();
    let store = test_store(&server, "hybridfs-reset", "p");
    let target = server.endpoint().trim_start_matches("http://").to_string();
    let proxy = start_reset_proxy(target, 512 * KIB as u64);
    let env = env_with(&server.env(), "AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{}", proxy.port));
    let mut vol = mounted_volume("vol", "s3://hybridfs-reset/p", &env);
    let pid = vol.mount_pid().expect("mount pid");
    for i in 0..16 {
        vol.put(&format!("data/{i:02}"), &pattern(700 + i as u64, 2 * MIB));
    }
    proxy.armed.store(true, Ordering::SeqCst);
    let out = push_cmd(&vol, &[], &[]);
    let line = the_error_line(&out);
    assert!(proxy.resets.load(Ordering::SeqCst) > 0, "the proxy reset uploads: {out}");
    assert!(procs::pid_alive(pid), "the mount process survives connections reset mid-upload ({line})\n{}", log_tail(&vol.mount_log()));
    proxy.armed.store(false, Ordering::SeqCst);
    let (rep, _) = push_ok(&vol, &[], &[]);
    assert_eq!(rep.seq, 1, "{rep:?}");
    let r = remote(&store, "vol");
    assert_eq!(check_branch(&r, "main").named.len(), 32, "{INV4}");
    assert!(procs::pid_alive(pid));
    vol.umount();
}

/// A foreground mount whose stderr (its log) is a pipe nobody reads any more — a supervisor
/// or a `| tee` that went away — keeps serving, and its log lines (here the last one, at
/// unmount) never kill it with SIGPIPE: it exits 0 after flushing.
#[test]
fn a_mount_whose_log_pipe_closed_keeps_running_and_exits_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    let vol = TestVolume::builder().name("vol").unmounted().build();
    let mp = vol.mountpoint().to_path_buf();
    vol.track_mountpoint(&mp);
    let mut child = Command::new(hybridctl_bin())
        .args(["mount", "vol"])
        .arg(&mp)
        .env("HYBRIDFS_HOME", vol.home())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hybridctl mount");
    let mounted = poll_until(Duration::from_secs(30), Duration::from_millis(20), || procs::is_mounted(&mp));
    assert!(mounted, "the foreground mount did not come up within 30 s");
    drop(child.stderr.take());
    vol.put("after-the-pipe-closed", &pattern(3, 100 * KIB));
    assert_eq!(fs::read(vol.path("after-the-pipe-closed")).unwrap(), pattern(3, 100 * KIB));
    let out = vol.ctl(&["umount", mp.to_str().unwrap()]);
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("the mount process did not exit within 60 s of umount: {out}"));
    assert_ne!(status.signal(), Some(libc::SIGPIPE), "the mount process was killed by SIGPIPE writing its log: {out}");
    assert_eq!(status.code(), Some(0), "the mount process exits 0 after flushing ({status:?}): {out}");
}
