//! The data path of a volume several hosts share (issue 15): a mount with
//! `--blocks-to-store on-fsync` puts a file's new blocks in the volume's object store before
//! `fsync` (and `close`) return, and commits the extents naming them only after. Through a
//! real mount and a real S3 server (SeaweedFS on 127.0.0.1, started by each test):
//!
//! - right after `fsync` returns, the file's block objects are in the store and decode to the
//!   file's bytes; the file is sealed (nothing staged); a later push sends none of them again;
//! - `kill -9` of the mount right after `fsync`, with this host's block files and staging
//!   deleted: a second `HYBRIDFS_HOME` opening a copy of the metadata (the other host, without
//!   PostgreSQL) reads every fsynced byte through the store (invariant 1 across hosts,
//!   invariant 5: what it fetches is verified);
//! - the store down at `fsync`: `EIO` in bounded time, nothing committed that names a block the
//!   store lacks (the data stays staged: invariant 1), and with the store back the next
//!   `fsync` ships it; nothing is lost;
//! - two hosts of a shared volume (PostgreSQL metadata, harness `shared::Cluster`, on-fsync by
//!   default): after `close()` on A, an `open` on B reads the new bytes (also an overwrite of
//!   part of a block), through the store; `kill -9` of A right after an `fsync` loses nothing
//!   B can read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_sync::Remote;
use hybridfs_tests::content::{assert_same_bytes, pattern};
use hybridfs_tests::shared::Cluster;
use hybridfs_tests::{fail_loudly, poll_until, TestVolume};
use serde_json::Value;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const INV1: &str = "invariant 1: what fsync acknowledged survives kill -9, also for the other hosts of a shared volume";
const ORDER: &str = "commit order (as a push's, invariant 4): a block reaches the store before any record naming it is committed";

fn start_server() -> SeaweedServer {
    SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("the shared-volume data tests need a real S3 server: {e}")))
}

/// The store as the tests read it: `bucket` (created), volume `vol`.
fn test_remote(server: &SeaweedServer, bucket: &str) -> Remote {
    let store = server.store(bucket, "h").unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    Remote::new(Arc::new(store), "vol")
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A volume on `s3://BUCKET/h`, mounted with `--blocks-to-store on-fsync` and a seal delay of
/// an hour, so only `fsync`/`close` seal while the test runs.
fn shared_volume(server: &SeaweedServer, bucket: &str) -> TestVolume {
    let mut vol = TestVolume::builder()
        .name("vol")
        .block_size("1M")
        .store(&format!("s3://{bucket}/h"))
        .mount_args(&["--blocks-to-store", "on-fsync", "--seal-delay", "3600"])
        .unmounted()
        .build();
    vol.mount_env(&env_refs(&server.env()));
    vol
}

fn status(vol: &TestVolume) -> Value {
    let out = vol.ctl(&["status", vol.name(), "--json"]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
    v[0].clone()
}

fn unsealed_bytes(vol: &TestVolume) -> u64 {
    status(vol)["unsealed_bytes"].as_u64().expect("status --json: unsealed_bytes")
}

/// Each whole or last block of `data` (1 MiB blocks) is an object `vol/blocks/<id>` in the
/// store, verified against its id, holding exactly those bytes.
fn assert_blocks_in_store(remote: &Remote, what: &str, data: &[u8]) {
    for (n, chunk) in data.chunks(MIB).enumerate() {
        let id = hybridfs_blocks::block_id(chunk);
        let frame = remote
            .fetch_frame(&id, None)
            .unwrap_or_else(|e| panic!("{ORDER}: block {n} of {what} ({id}) is not in the store: {e}"));
        let plain = hybridfs_blocks::decode(&id, &frame).unwrap_or_else(|e| panic!("block {n} of {what}: {e}"));
        assert_same_bytes(&format!("{what}, block {n} as the store holds it"), &plain, chunk);
    }
}

fn objects(remote: &Remote, kind: &str) -> Vec<String> {
    let prefix = format!("{}/{kind}/", remote.volume);
    remote.store.list(&prefix).unwrap_or_else(|e| panic!("list {prefix}: {e}"))
}

fn write_and_fsync(path: &Path, data: &[u8]) -> File {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    f
}

#[test]
fn fsync_returns_once_the_blocks_are_in_the_store_and_a_push_does_not_send_them_again() {
    let server = start_server();
    let remote = test_remote(&server, "fsyncstore");
    let vol = shared_volume(&server, "fsyncstore");
    let big = pattern(1, 3 * MIB + 512 * KIB);
    let small = pattern(2, 20 * KIB);
    assert!(objects(&remote, "blocks").is_empty() && objects(&remote, "packs").is_empty(), "a new volume has no blocks");

    let f = write_and_fsync(&vol.path("big"), &big);
    // Still open, checked at once: fsync did not return before the upload.
    assert_blocks_in_store(&remote, "big (after its fsync, still open)", &big);
    assert_eq!(objects(&remote, "blocks").len(), 4, "3 whole blocks and the 512 KiB tail, each an object");
    assert_eq!(unsealed_bytes(&vol), 0, "{ORDER}: fsync sealed the file (the seal delay is an hour)");
    drop(f);

    // A small file goes packed, as a push would send it.
    let mut f = File::create(vol.path("small")).unwrap();
    f.write_all(&small).unwrap();
    f.sync_data().unwrap();
    assert_eq!(objects(&remote, "packs").len(), 1, "the 20 KiB block went in one pack");
    drop(f);

    // close() alone ships too (close-to-open between hosts): written, closed, no fsync.
    let late = pattern(3, 2 * MIB);
    let mut f = File::create(vol.path("closed")).unwrap();
    f.write_all(&late).unwrap();
    drop(f);
    assert_blocks_in_store(&remote, "closed (after its close)", &late);

    // Blocks the store has are recorded as pushed: the push sends only its layer.
    let out = vol.ctl_env(&env_refs(&server.env()), &["push", "--volume", "vol", "--json"]);
    out.assert_success();
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("push --json ({e}): {out}"));
    assert_eq!(report["blocks_uploaded"], 0, "every block went at fsync/close: {report}");
    assert_eq!(report["blocks_skipped"], 7, "4 + 1 + 2 blocks, named by the layer, skipped: {report}");
    for (name, data) in [("big", &big), ("small", &small), ("closed", &late)] {
        assert_same_bytes(name, &fs::read(vol.path(name)).unwrap(), data);
    }
}

/// Copy a directory tree (the metadata of a killed mount: what another host sees in the
/// shared engine).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

fn empty_dir(dir: &Path) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
}

#[test]
fn a_host_killed_after_fsync_loses_nothing_another_home_reads_it_through_the_store() {
    let server = start_server();
    let mut vol = shared_volume(&server, "killed");
    let big = pattern(11, 2 * MIB + 300 * KIB);
    let small = pattern(12, 9 * KIB);
    let _open = write_and_fsync(&vol.path("big"), &big);
    let _open2 = write_and_fsync(&vol.path("small"), &small);
    fs::create_dir(vol.path("d")).unwrap();
    let _open3 = write_and_fsync(&vol.path("d/tiny"), b"inline bytes live in the metadata");
    File::open(vol.path("d")).unwrap().sync_all().unwrap();
    vol.kill_mount();
    vol.clean_dead_mount();

    // This host's data is gone: only the metadata (shared) and the store remain.
    let vd = vol.volume_dir();
    empty_dir(&vd.join("blocks"));
    empty_dir(&vd.join("staging"));
    let home2 = vol.root().join("home2");
    let vd2 = home2.join("volumes").join("vol");
    fs::create_dir_all(&vd2).unwrap();
    fs::copy(vd.join("volume.json"), vd2.join("volume.json")).unwrap();
    copy_tree(&vd.join("meta"), &vd2.join("meta"));
    let mut other = TestVolume::builder().name("vol").home(&home2).unformatted().build();
    other.mount_env(&env_refs(&server.env()));
    assert_same_bytes(&format!("{INV1}: big on the other home"), &fs::read(other.path("big")).unwrap(), &big);
    assert_same_bytes(&format!("{INV1}: small on the other home"), &fs::read(other.path("small")).unwrap(), &small);
    assert_eq!(fs::read(other.path("d/tiny")).unwrap(), b"inline bytes live in the metadata", "{INV1}");
    assert!(other.block_files().is_empty(), "the other home has no block files of its own: it read through the store");
    other.umount();

    // The first host, remounted without its block files, reads through the store too.
    vol.mount_env(&env_refs(&server.env()));
    assert_same_bytes(&format!("{INV1}: big back on the first host"), &fs::read(vol.path("big")).unwrap(), &big);
    assert_same_bytes(&format!("{INV1}: small back on the first host"), &fs::read(vol.path("small")).unwrap(), &small);
}

#[test]
fn the_store_down_at_fsync_is_eio_in_bounded_time_and_loses_nothing() {
    let mut server = start_server();
    let remote = test_remote(&server, "storedown");
    let mut vol = shared_volume(&server, "storedown");
    let data = pattern(21, 2 * MIB + 300 * KIB);
    let mut f = File::create(vol.path("f")).unwrap();
    f.write_all(&data).unwrap();

    server.stop();
    let started = Instant::now();
    let err = f.sync_all().expect_err("fsync with the store down must fail");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "fsync with the store down: {err}");
    // A bound, not a speed check: the mount's own limit is 30 s per fsync.
    assert!(took < Duration::from_secs(90), "fsync with the store down returned after {took:?}: it must not hang");
    assert_eq!(unsealed_bytes(&vol), data.len() as u64, "{ORDER}: nothing was committed that names a block the store lacks; {INV1}: the bytes stay staged");
    assert!(vol.mount_log().contains("upload"), "the mount log says the upload failed:\n{}", vol.mount_log());
    drop(f); // close() tries again and fails the same way; the data stays staged
    assert_same_bytes("f, read back with the store down", &fs::read(vol.path("f")).unwrap(), &data);
    vol.umount();

    server.restart().unwrap_or_else(|e| panic!("restart the store: {e}"));
    vol.mount_env(&env_refs(&server.env()));
    assert_same_bytes(&format!("{INV1}: f after the remount"), &fs::read(vol.path("f")).unwrap(), &data);
    // With the store back, the next fsync ships what stayed staged.
    let f = OpenOptions::new().append(true).open(vol.path("f")).unwrap();
    f.sync_all().unwrap_or_else(|e| panic!("fsync with the store back: {e}"));
    drop(f);
    assert_eq!(unsealed_bytes(&vol), 0, "the staged data is sealed now");
    assert_blocks_in_store(&remote, "f (shipped once the store was back)", &data);
    assert_same_bytes(&format!("{INV1}: f at the end"), &fs::read(vol.path("f")).unwrap(), &data);
}

/// Longer than a shared mount's attribute/entry TTL (1 s), bounded.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// Whether `path` on a host reads as `want`, within [`SEEN_WITHIN`].
fn reads_within(path: &Path, want: &[u8]) -> bool {
    poll_until(SEEN_WITHIN, Duration::from_millis(100), || fs::read(path).is_ok_and(|got| got == want))
}

#[test]
fn close_on_one_host_then_open_on_the_other_reads_the_new_bytes_through_the_store() {
    let mut c = Cluster::start("c2o", true, &[]);
    let mut data = pattern(31, 2 * MIB + 300 * KIB);
    let mut f = File::create(c.a.path("ckpt")).unwrap();
    f.write_all(&data).unwrap();
    drop(f); // close(): no fsync
    let on_b = c.b.path("ckpt");
    assert!(reads_within(&on_b, &data), "close-to-open: B reads what A wrote before its close()");
    assert!(c.b.block_files().is_empty(), "B holds no block of its own: it read them through the store");

    // A rewrites 64 KiB inside the second block: B sees the new block after A's close.
    let patch = pattern(32, 64 * KIB);
    let f = OpenOptions::new().write(true).open(c.a.path("ckpt")).unwrap();
    f.write_all_at(&patch, (MIB + 4096) as u64).unwrap();
    drop(f);
    data[MIB + 4096..MIB + 4096 + patch.len()].copy_from_slice(&patch);
    assert!(reads_within(&on_b, &data), "close-to-open: B reads A's overwrite after A's close()");

    // A dies right after an fsync, its file still open: B reads every fsynced byte.
    let late = pattern(33, MIB + 700 * KIB);
    let mut f = File::create(c.a.path("late")).unwrap();
    f.write_all(&late).unwrap();
    f.sync_all().unwrap();
    c.a.kill_mount();
    c.a.clean_dead_mount();
    drop(f);
    assert!(reads_within(&c.b.path("late"), &late), "{INV1}: B reads what A fsynced before it was killed");
    assert_same_bytes("ckpt on B at the end", &fs::read(&on_b).unwrap(), &data);
}
