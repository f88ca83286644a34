//! The values the namespace is made of: inodes, directory entries, extents, block ids.
//!
//! These are serialised with bincode by the metadata store; changing a field changes the
//! on-disk format (bump `FORMAT_VERSION` in `volume.rs`).

use serde::{Deserialize, Serialize};
use std::fmt;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;
/// Longest name of one directory entry, as on ext4.
pub const NAME_MAX: usize = 255;
/// Files up to this size keep their bytes in the inode record: a small file costs one
/// metadata write, no staging file and no block. Must not exceed the smallest block size.
pub const INLINE_MAX: u64 = 4096;

/// A point in time, seconds and nanoseconds since the Unix epoch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
    }
}

/// The UTC calendar time of `secs` since the Unix epoch: (year, month, day, hour, minute,
/// second), for generated names (snapshots, conflict copies).
pub fn utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The file type, in the `S_IFMT` bits of `mode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }

    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }
}

/// One file, directory, symlink or special file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub rdev: u32,
    /// The directory this inode was last linked into (for directories: their `..`).
    pub parent: Ino,
    /// The name it was last linked under in `parent` (diff turns inodes into paths with it).
    #[serde(with = "byte_string")]
    pub name: Vec<u8>,
    /// Directories: the cookie the next entry gets (readdir offsets stay stable under change).
    pub next_cookie: u64,
    /// Symlinks: the target.
    #[serde(with = "byte_string")]
    pub target: Vec<u8>,
    /// Small regular files: the whole content, kept in the inode record instead of blocks
    /// (`len() == size`, and the file has no extents). `None` once the file outgrew
    /// [`INLINE_MAX`] (or for other kinds).
    #[serde(with = "byte_string::optional")]
    pub inline: Option<Vec<u8>>,
}

/// The byte strings of an [`Inode`] through serde's byte-string calls instead of a sequence of
/// `u8`s. bincode writes both forms alike (a `u64` length, then the bytes), so stored records
/// do not change; decoding becomes one copy instead of a visit per byte (a 1 KiB inline file
/// cost more to decode than the store lookup that found it). Text formats (JSON) read either
/// form: an array of numbers or a string.
mod byte_string {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub mod optional {
        use super::Bytes;
        use serde::de::{Deserializer, Visitor};
        use serde::Serializer;
        use std::fmt;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&AsBytes(b)),
                None => s.serialize_none(),
            }
        }

        /// `&[u8]` as a byte string (serde's own impl writes a sequence).
        struct AsBytes<'a>(&'a [u8]);

        impl serde::Serialize for AsBytes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            d.deserialize_option(Optional)
        }

        struct Optional;

        impl<'de> Visitor<'de> for Optional {
            type Value = Option<Vec<u8>>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an optional byte string")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_byte_buf(Bytes).map(Some)
            }
        }
    }
}

impl Inode {
    pub fn new(ino: Ino, kind: Kind, perm: u32, uid: u32, gid: u32) -> Self {
        let now = Timespec::now();
        Inode {
            ino,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            parent: 0,
            name: Vec::new(),
            next_cookie: 1,
            target: Vec::new(),
            inline: if kind == Kind::File { Some(Vec::new()) } else { None },
        }
    }

    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | self.perm
    }

    /// A directory gains an entry of `kind`: it gets the next readdir cookie (returned), a
    /// subdirectory counts in the link count, the times move to `now`.
    pub fn gain_entry(&mut self, kind: Kind, now: Timespec) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.mtime = now;
        self.ctime = now;
        if kind == Kind::Dir {
            self.nlink += 1;
        }
        cookie
    }

    /// A directory loses an entry of `kind`.
    pub fn lose_entry(&mut self, kind: Kind, now: Timespec) {
        self.mtime = now;
        self.ctime = now;
        if kind == Kind::Dir {
            self.nlink = self.nlink.saturating_sub(1);
        }
    }
}

/// A directory entry: the name lives in the key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dentry {
    pub ino: Ino,
    pub kind: Kind,
    /// Position of the entry in its directory's readdir order.
    pub cookie: u64,
}

/// The content hash of a sealed block (blake3 of its plain bytes).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<BlockId> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(BlockId(out))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", &self.to_hex()[..16])
    }
}

/// Where the bytes of one block of a file live. No extent at all means a hole (zeros).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// In the inode's private staging file, at the same offset as in the file. Mutable.
    Staged,
    /// In an immutable sealed block of `len` bytes (the rest of the block reads as zeros).
    Sealed { id: BlockId, len: u32 },
}

/// One row of the dirty-extent journal: block `block` of inode `ino` was written in `epoch`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalEntry {
    pub epoch: u64,
    pub ino: Ino,
    pub block: u64,
}

/// A named, immutable view of the volume at the end of epoch `epoch` (invariant 2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Never reused: it names the snapshot's inode range in the mount.
    pub id: u64,
    pub name: String,
    pub epoch: u64,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// Files and bytes of the live tree when it was taken.
    pub files: u64,
    pub bytes: u64,
    /// Who depends on it (clones, branches, admin holds); it cannot be deleted while held.
    pub holds: Vec<String>,
}

/// Files and logical bytes of the live tree, kept up to date by the metadata store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inode record as it was serialised before its byte strings went through
    /// `byte_string`: plain `Vec<u8>` fields, a sequence of `u8`s each.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct InodeAsSequences {
        ino: Ino,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u64,
        atime: Timespec,
        mtime: Timespec,
        ctime: Timespec,
        rdev: u32,
        parent: Ino,
        name: Vec<u8>,
        next_cookie: u64,
        target: Vec<u8>,
        inline: Option<Vec<u8>>,
    }

    fn as_sequences(i: &Inode) -> InodeAsSequences {
        InodeAsSequences {
            ino: i.ino,
            kind: i.kind,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            rdev: i.rdev,
            parent: i.parent,
            name: i.name.clone(),
            next_cookie: i.next_cookie,
            target: i.target.clone(),
            inline: i.inline.clone(),
        }
    }

    /// Invariant 1 (what was acknowledged survives): inode records stored before the byte
    /// strings were written as such decode to the same inode, and new records are the same
    /// bytes, so volumes, layers and pushed records of either age read alike.
    #[test]
    fn inode_records_keep_their_bytes_and_old_records_decode_the_same() {
        let mut file = Inode::new(42, Kind::File, 0o644, 1, 2);
        file.name = b"notes.txt".to_vec();
        file.inline = Some(b"hello\0world".to_vec());
        file.size = 11;
        let mut link = Inode::new(43, Kind::Symlink, 0o777, 0, 0);
        link.target = b"../somewhere/else".to_vec();
        let mut empty = Inode::new(44, Kind::File, 0o600, 0, 0);
        empty.inline = Some(Vec::new());
        let dir = Inode::new(45, Kind::Dir, 0o755, 0, 0);
        for i in [file, link, empty, dir] {
            let old = bincode::serialize(&as_sequences(&i)).unwrap();
            assert_eq!(bincode::serialize(&i).unwrap(), old, "inode {}", i.ino);
            assert_eq!(bincode::deserialize::<Inode>(&old).unwrap(), i);
            let json = serde_json::to_string(&i).unwrap();
            assert_eq!(serde_json::from_str::<Inode>(&json).unwrap(), i);
            let old_json = serde_json::to_string(&as_sequences(&i)).unwrap();
            assert_eq!(serde_json::from_str::<Inode>(&old_json).unwrap(), i);
        }
    }
}
