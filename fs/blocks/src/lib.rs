//! Content-addressed blocks on the local disk: blake3 ids, zstd frames, verified reads.
//!
//! # Block frame (version 1)
//!
//! ```text
//! offset  size  field
//! 0       4     magic "HYBK"
//! 4       1     frame version (1)
//! 5       1     codec: 0 = raw, 1 = zstd
//! 6       2     reserved, zero (room for an encryption scheme id)
//! 8       4     plain length, little endian
//! 12      ..    payload (plain bytes, or one zstd frame)
//! ```
//!
//! The id of a block is blake3 of its plain bytes. A block file lives at
//! `blocks/<first two hex digits>/<64 hex digits>`; it is written to a temporary name and
//! renamed, so a process crash leaves either nothing or the whole frame. A power cut can still
//! leave a renamed file short or empty (the rename may reach the disk before the data, e.g.
//! ext4 and XFS with delayed allocation), until `sync` has run: so `put` of bytes whose path
//! exists verifies the file and rewrites it unless it decodes to those bytes, and counts it as
//! unsynced either way. Nobody references a block before the `sync` after its `put` (the
//! sealer's commit order), so a torn file is never the only copy. `sync` makes the blocks put
//! since the last sync durable: each file, or the whole file system in one `syncfs` when there
//! are many (sealing thousands of small files then costs one sync, not thousands), then their
//! directories. `get` decodes and then
//! checks length and hash (invariant 5) before returning a byte.
//!
//! Compression runs only when a 64 KiB sample compresses below 90%: float weights and already
//! compressed data are stored raw and cost no CPU.

use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::error::{FsError, Result};
use hybridfs_core::types::BlockId;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const MAGIC: &[u8; 4] = b"HYBK";
const VERSION: u8 = 1;
const HEADER: usize = 12;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const SAMPLE: usize = 64 * 1024;

pub fn block_id(data: &[u8]) -> BlockId {
    BlockId(*blake3::hash(data).as_bytes())
}

/// Encode plain bytes into a frame.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let compressed = worth_compressing(data).then(|| zstd::bulk::compress(data, 1).ok()).flatten();
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < data.len() => (CODEC_ZSTD, c),
        _ => (CODEC_RAW, data),
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, codec, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn worth_compressing(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(SAMPLE)];
    match zstd::bulk::compress(sample, 1) {
        Ok(c) => c.len() * 10 < sample.len() * 9,
        Err(_) => false,
    }
}

/// Decode a frame and verify it is block `id`.
pub fn decode(id: &BlockId, frame: &[u8]) -> Result<Vec<u8>> {
    let plain = decode_plain(frame).map_err(|why| FsError::CorruptBlock { id: *id, why })?;
    if block_id(&plain) != *id {
        return Err(FsError::CorruptBlock { id: *id, why: "hash mismatch".into() });
    }
    Ok(plain)
}

/// Check that `frame` is block `id` (header, length, hash) without keeping its plain bytes:
/// a raw frame's payload is hashed where it lies, no copy (a fetch verifies every block it
/// gets before caching it, and the plain copy was thrown away).
pub fn verify(id: &BlockId, frame: &[u8]) -> Result<()> {
    match raw_payload(frame) {
        Some(payload) if block_id(payload) == *id => Ok(()),
        Some(_) => Err(FsError::CorruptBlock { id: *id, why: "hash mismatch".into() }),
        None => decode(id, frame).map(|_| ()),
    }
}

/// [`decode`] of a frame the caller hands over: a raw frame's bytes are verified where they
/// lie and stay in its buffer (moved to its start), so reading a block costs no second
/// buffer of its size.
pub fn decode_owned(id: &BlockId, mut frame: Vec<u8>) -> Result<Vec<u8>> {
    match raw_payload(&frame) {
        Some(payload) if block_id(payload) == *id => {
            frame.drain(..HEADER);
            Ok(frame)
        }
        Some(_) => Err(FsError::CorruptBlock { id: *id, why: "hash mismatch".into() }),
        None => decode(id, &frame),
    }
}

/// The payload of a well-formed raw frame (header and length checked), else None (a zstd
/// frame, or one [`decode`] rejects with its reason).
fn raw_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < HEADER || &frame[..4] != MAGIC || frame[4] != VERSION || frame[5] != CODEC_RAW {
        return None;
    }
    let len = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes")) as usize;
    let payload = &frame[HEADER..];
    (payload.len() == len).then_some(payload)
}

/// The plain bytes of a frame, its length checked (not its hash: the caller names the block).
fn decode_plain(frame: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if frame.len() < HEADER || &frame[..4] != MAGIC {
        return Err("bad frame header".into());
    }
    if frame[4] != VERSION {
        return Err("unknown frame version".into());
    }
    let len = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes")) as usize;
    let payload = &frame[HEADER..];
    let plain = match frame[5] {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => zstd::bulk::decompress(payload, len).map_err(|e| format!("zstd: {e}"))?,
        _ => return Err("unknown codec".into()),
    };
    if plain.len() != len {
        return Err("length mismatch".into());
    }
    Ok(plain)
}

/// The length of the frame at the start of `bytes` (frames laid end to end, as in a pack), or
/// `None` where `bytes` does not start with a whole frame. It reads the header (and a zstd
/// payload's own frame header) only: what the frame holds is checked by [`frame_id`] or
/// [`decode`].
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return None;
    }
    let payload = match bytes[5] {
        CODEC_RAW => u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize,
        CODEC_ZSTD => zstd::zstd_safe::find_frame_compressed_size(&bytes[HEADER..]).ok()?,
        _ => return None,
    };
    let n = HEADER.checked_add(payload)?;
    (n <= bytes.len()).then_some(n)
}

/// The id of the block a frame holds (blake3 of its decoded bytes), for a frame found without
/// a name (the other blocks of a pack fetched whole); `None` if it does not decode. Naming a
/// frame by what it decodes to is its verification: a damaged frame gets an id nobody asks for.
pub fn frame_id(frame: &[u8]) -> Option<BlockId> {
    decode_plain(frame).ok().map(|plain| block_id(&plain))
}

/// The local block store: one file per block under a directory.
pub struct FileBlockStore {
    dir: PathBuf,
    /// Block files and fan-out directories written since the last sync.
    unsynced: Mutex<Unsynced>,
    tmp_seq: AtomicU64,
}

#[derive(Default)]
struct Unsynced {
    files: Vec<PathBuf>,
    dirs: HashSet<PathBuf>,
}

/// Above this many unsynced block files, one `syncfs` is cheaper than an fsync each.
const SYNCFS_OVER: usize = 16;

impl FileBlockStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| FsError::io(format!("create {}", dir.display()), e))?;
        Ok(FileBlockStore { dir, unsynced: Mutex::new(Unsynced::default()), tmp_seq: AtomicU64::new(0) })
    }

    /// The directory the block files are under (fan-out directories of two hex digits; other
    /// directories there, such as a clone cache's `packs/`, are not blocks).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Write block file `path` atomically; `durable`: recorded for the next [`BlockStore::sync`]
    /// (a cache fill is not: it can be fetched again, and nobody syncs a cache).
    fn write_new(&self, path: &Path, frame: &[u8], durable: bool) -> Result<()> {
        let fan = path.parent().expect("block path has a parent");
        std::fs::create_dir_all(fan).map_err(|e| FsError::io(format!("create {}", fan.display()), e))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = fan.join(format!(".tmp.{}.{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(frame)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(FsError::io(format!("write block file {}", path.display()), e));
        }
        if !durable {
            return Ok(());
        }
        let mut u = self.unsynced.lock().expect("unsynced lock");
        u.files.push(path.to_path_buf());
        u.dirs.insert(fan.to_path_buf());
        Ok(())
    }
}

impl FileBlockStore {
    /// Keep a verified frame fetched from elsewhere (a cache fill): written atomically, not
    /// synced (it can be fetched again), and not remembered for a sync: a clone's cache is
    /// never synced, so remembering each fill grew the mount's memory by a path per block
    /// fetched, without bound (invariant 7).
    pub fn insert_frame(&self, id: &BlockId, frame: &[u8]) -> Result<()> {
        let path = self.path(id);
        if path.exists() {
            return Ok(());
        }
        self.write_new(&path, frame, false)
    }
}

impl BlockStore for FileBlockStore {
    fn put(&self, data: &[u8]) -> Result<BlockId> {
        let id = block_id(data);
        let path = self.path(&id);
        match std::fs::read(&path) {
            // Deduplicated: the existing file must hold these bytes and be made durable
            // by the next sync like a new one (it may be a torn file from a power cut, or
            // one whose sync failed).
            Ok(frame) if decode(&id, &frame).is_ok() => {
                let mut u = self.unsynced.lock().expect("unsynced lock");
                u.files.push(path.clone());
                u.dirs.insert(path.parent().expect("block path has a parent").to_path_buf());
            }
            Ok(_) => {
                tracing::warn!("block file {} is damaged; writing it again", path.display());
                self.write_new(&path, &encode(data), true)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write_new(&path, &encode(data), true)?,
            Err(e) => return Err(FsError::io(format!("read block file {}", path.display()), e)),
        }
        Ok(id)
    }

    fn sync(&self) -> Result<()> {
        let u = std::mem::take(&mut *self.unsynced.lock().expect("unsynced lock"));
        // A block deleted since it was put needs no sync.
        let sync = |p: &Path| match File::open(p) {
            Ok(f) => f.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        let failed = |p: &Path, e| FsError::io(format!("sync {}", p.display()), e);
        let synced = if u.files.len() > SYNCFS_OVER {
            File::open(&self.dir).map_err(|e| failed(&self.dir, e)).and_then(|dir| {
                // SAFETY: syncfs on an open descriptor we own.
                match unsafe { libc::syncfs(dir.as_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(failed(&self.dir, std::io::Error::last_os_error())),
                }
            })
        } else {
            u.files.iter().chain(u.dirs.iter()).try_for_each(|p| sync(p).map_err(|e| failed(p, e)))
        };
        if synced.is_err() {
            // Nothing is known durable: the next sync tries every one of them again.
            let mut now = self.unsynced.lock().expect("unsynced lock");
            now.files.extend(u.files);
            now.dirs.extend(u.dirs);
        }
        synced
    }

    fn get(&self, id: &BlockId) -> Result<Vec<u8>> {
        let path = self.path(id);
        let frame = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FsError::CorruptBlock { id: *id, why: "block file missing".into() },
            _ => FsError::io(format!("read block file {}", path.display()), e),
        })?;
        decode_owned(id, frame)
    }

    fn contains(&self, id: &BlockId) -> Result<bool> {
        Ok(self.path(id).exists())
    }

    fn remove(&self, id: &BlockId) -> Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FsError::io(format!("remove block {id}"), e)),
            _ => Ok(()),
        }
    }

    fn frame(&self, id: &BlockId) -> Result<Vec<u8>> {
        std::fs::read(self.path(id)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FsError::CorruptBlock { id: *id, why: "missing from the block store".into() },
            _ => FsError::io(format!("read block {id}"), e),
        })
    }

    fn stored_len(&self, id: &BlockId) -> Result<Option<u64>> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FsError::io(format!("stat block {id}"), e)),
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(BlockId)) -> Result<()> {
        let list = |p: &Path| std::fs::read_dir(p).map_err(|e| FsError::io(format!("list {}", p.display()), e));
        for fan in list(&self.dir)? {
            let fan = fan.map_err(|e| FsError::io("list block store", e))?.path();
            // Block files live in fan-out directories named by two hex digits only.
            if !fan.is_dir() || fan.file_name().is_none_or(|n| n.len() != 2) {
                continue;
            }
            for entry in list(&fan)? {
                let name = entry.map_err(|e| FsError::io("list block store", e))?.file_name();
                if let Some(id) = name.to_str().and_then(BlockId::from_hex) {
                    f(id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_raw_and_compressed() {
        let zeros = vec![0u8; 1 << 20];
        let noise: Vec<u8> = (0..1u32 << 18).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        for data in [&zeros, &noise] {
            let id = block_id(data);
            let frame = encode(data);
            assert_eq!(&decode(&id, &frame).unwrap(), data);
        }
        assert!(encode(&zeros).len() < 4096, "zeros compress");
        assert_eq!(encode(&noise)[5], CODEC_RAW, "noise is stored raw");
    }

    /// Frames laid end to end (a pack) split at their own lengths, raw and zstd alike; a
    /// damaged frame gets an id no one asks for (invariant 5: a frame is named by what it
    /// decodes to, never trusted for a name it was not checked against).
    #[test]
    fn packed_frames_split_and_name_themselves() {
        let blocks = [b"small".repeat(3), vec![0u8; 100_000], (0..5000u32).flat_map(|i| i.to_le_bytes()).collect()];
        let frames: Vec<Vec<u8>> = blocks.iter().map(|b| encode(b)).collect();
        assert_eq!(frames[1][5], CODEC_ZSTD);
        let mut pack: Vec<u8> = frames.concat();
        let mut at = 0;
        for (b, f) in blocks.iter().zip(&frames) {
            let n = frame_len(&pack[at..]).expect("a whole frame");
            assert_eq!(n, f.len());
            assert_eq!(frame_id(&pack[at..at + n]), Some(block_id(b)));
            at += n;
        }
        assert_eq!(at, pack.len());
        assert_eq!(frame_len(&pack[..frames[0].len() - 1]), None, "a cut frame is not whole");
        pack[frames[0].len() + 20] ^= 1;
        let n = frame_len(&pack[frames[0].len()..]).unwrap_or(0);
        if n > 0 {
            assert_ne!(frame_id(&pack[frames[0].len()..frames[0].len() + n]), Some(block_id(&blocks[1])));
        }
    }

    /// Invariant 5: a flipped byte is an error naming the block, never wrong data.
    #[test]
    fn corrupt_frames_are_refused() {
        let data = b"hello block".repeat(100);
        let id = block_id(&data);
        let mut frame = encode(&data);
        let last = frame.len() - 1;
        frame[last] ^= 1;
        match decode(&id, &frame) {
            Err(FsError::CorruptBlock { id: got, .. }) => assert_eq!(got, id),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(decode(&id, &frame[..5]).is_err());
    }

    /// Invariant 5 on the copy-free paths: `verify` and `decode_owned` accept exactly the
    /// frames `decode` accepts (raw and zstd), give the same bytes, and refuse a flipped byte
    /// anywhere (header, length, payload), a short frame and a frame named for another block.
    #[test]
    fn verify_and_decode_owned_agree_with_decode() {
        let noise: Vec<u8> = (0..1u32 << 16).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        let zeros = vec![0u8; 100_000];
        let other = block_id(b"another block");
        for data in [&noise, &zeros] {
            let id = block_id(data);
            let frame = encode(data);
            verify(&id, &frame).unwrap();
            assert_eq!(decode_owned(&id, frame.clone()).unwrap(), *data);
            assert!(matches!(verify(&other, &frame), Err(FsError::CorruptBlock { .. })));
            assert!(matches!(decode_owned(&other, frame.clone()), Err(FsError::CorruptBlock { .. })));
            for at in [0, 5, 8, HEADER, frame.len() / 2, frame.len() - 1] {
                let mut bad = frame.clone();
                bad[at] ^= 1;
                assert!(verify(&id, &bad).is_err(), "a flipped byte at {at} passed verify");
                assert!(decode_owned(&id, bad.clone()).is_err(), "a flipped byte at {at} passed decode_owned");
                assert!(decode(&id, &bad).is_err());
            }
            assert!(verify(&id, &frame[..frame.len() - 1]).is_err(), "a short frame");
            assert!(decode_owned(&id, frame[..HEADER].to_vec()).is_err());
        }
    }

    /// Invariant 1: after a power cut a renamed block file can be empty (its data never
    /// reached the disk). Sealing the same bytes again must not deduplicate onto it.
    #[test]
    fn put_rewrites_a_torn_block_file_instead_of_deduplicating_onto_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path()).unwrap();
        let data = vec![0x5au8; 70_000];
        let id = block_id(&data);
        let path = store.path(&id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(store.put(&data).unwrap(), id);
        store.sync().unwrap();
        assert_eq!(store.get(&id).unwrap(), data);
    }

    /// A deduplicated put still goes through the next sync (its file may not be durable yet).
    #[test]
    fn deduplicated_put_is_synced_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path()).unwrap();
        let id = store.put(b"bbbb").unwrap();
        store.sync().unwrap();
        assert!(store.unsynced.lock().unwrap().files.is_empty());
        assert_eq!(store.put(b"bbbb").unwrap(), id);
        assert_eq!(store.unsynced.lock().unwrap().files, vec![store.path(&id)]);
    }

    /// Invariant 7: cache fills (a clone's fetched blocks) are not remembered for a sync that
    /// never comes: the unsynced list stays empty however many blocks are fetched, while puts
    /// (the volume's own blocks, invariant 1) are still remembered until synced.
    #[test]
    fn cache_fills_are_not_remembered_for_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path()).unwrap();
        for n in 0..300u32 {
            let data = n.to_le_bytes().repeat(100);
            let id = block_id(&data);
            store.insert_frame(&id, &encode(&data)).unwrap();
            assert_eq!(store.get(&id).unwrap(), data);
        }
        let u = store.unsynced.lock().unwrap();
        assert!(u.files.is_empty() && u.dirs.is_empty(), "{} files, {} dirs remembered", u.files.len(), u.dirs.len());
        drop(u);
        let id = store.put(b"own block").unwrap();
        assert_eq!(store.unsynced.lock().unwrap().files, vec![store.path(&id)]);
    }

    /// A sync that fails keeps its list: nothing it was to sync is forgotten.
    #[test]
    fn failed_sync_keeps_the_unsynced_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path().join("b")).unwrap();
        let id = store.put(b"cccc").unwrap();
        let fan = store.path(&id).parent().unwrap().to_path_buf();
        // A path under a regular file (ENOTDIR) makes the sync fail.
        let bad = store.path(&id).join("x");
        store.unsynced.lock().unwrap().dirs.insert(bad);
        assert!(store.sync().is_err());
        let u = store.unsynced.lock().unwrap();
        assert_eq!(u.files, vec![store.path(&id)]);
        assert!(u.dirs.contains(&fan));
    }

    #[test]
    fn store_puts_gets_dedups_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path()).unwrap();
        let a = store.put(b"aaaa").unwrap();
        assert_eq!(store.put(b"aaaa").unwrap(), a);
        store.sync().unwrap();
        assert_eq!(store.get(&a).unwrap(), b"aaaa");
        let mut all = Vec::new();
        store.for_each(&mut |id| all.push(id)).unwrap();
        assert_eq!(all, vec![a]);
        std::fs::write(store.path(&a), b"junk").unwrap();
        assert!(matches!(store.get(&a), Err(FsError::CorruptBlock { .. })));
        assert_eq!(store.put(b"aaaa").unwrap(), a, "a damaged file is rewritten on dedup");
        assert_eq!(store.get(&a).unwrap(), b"aaaa");
        store.remove(&a).unwrap();
        assert!(!store.contains(&a).unwrap());
    }
}
