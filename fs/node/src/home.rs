//! The local state directory: where volumes live, their format file (`volume.json`), their
//! mount state (`mount.json`) and their lock.
//!
//! ```text
//! HOME/volumes/NAME/volume.json   the volume's format (VolumeConfig); a shared volume's
//!                                 names its PostgreSQL database (crate::shared)
//!                   meta/         RocksDB: the versioned metadata (not for a shared volume)
//!                   blocks/       sealed blocks of this volume
//!                   staging/      per-inode staging files
//!                   lock          flock-ed by the process that owns the volume (its pid inside)
//!                   mount.json    while a mount process serves it (MountState)
//!                   mount.log     the daemonized mount's log
//!                   metrics.json  the mount's counters, every 2 s (for `status`)
//!                   control.sock  the mount's control socket (crate::control)
//! HOME/cache/KEY/                 blocks fetched for clones of one remote volume
//! HOME/store/                     the default object store (file://)
//! ```

use crate::error::{typed, NodeError, NodeResult};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// 2: versioned metadata (snapshots), inode names.
pub const FORMAT_VERSION: u32 = 2;

pub struct Home {
    pub root: PathBuf,
}

/// `volume.json`: the format of a volume, fixed at `format` time.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VolumeConfig {
    pub format_version: u32,
    pub name: String,
    pub block_size: u32,
    pub store: String,
    pub created: i64,
    /// The volume's name in the store (a clone keeps its source's name there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_volume: Option<String>,
    /// The branch `push` writes [default: main].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A clone: the branch and layer it was made from; its data is fetched from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<(String, u64)>,
    /// A clone's local block cache limit in bytes (none: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Client-side encryption: the key's fingerprint (never the key) and where the key file is
    /// (the `HYBRIDFS_ENCRYPTION_KEY` environment variable overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// A clone: seconds a read waits for a block from the store before it fails with EIO
    /// [default: 30].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout_secs: Option<u64>,
    /// A shared volume (`format --meta`): the URL of the PostgreSQL database holding its
    /// metadata (crate::shared); none: RocksDB in `meta/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// A shared volume: seconds an operation waits for an unavailable database before it
    /// fails with EIO [default: 60].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_timeout_secs: Option<u64>,
    /// A shared volume: milliseconds the kernel of a mount trusts attributes and directory
    /// entries, so how long another host's change may stay unseen [default: 1000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_cache_ttl_ms: Option<u64>,
    /// When written data goes to the object store (none: [`BlocksToStore::OnFsync`] for a
    /// shared volume, whose other hosts read the data there, [`BlocksToStore::Later`] for the
    /// others; a mount's `--blocks-to-store` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_to_store: Option<BlocksToStore>,
}

/// When a volume's written data goes to its object store (`mount.blocks_to_store`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BlocksToStore {
    /// At `push` (the one-host default): `fsync` makes data durable on this host only.
    #[default]
    Later,
    /// Before `fsync` and `close()` return: the file's staged data is sealed into blocks and
    /// uploaded, and only then are the extents naming them committed (the data path of a
    /// volume several hosts share: another host reads the blocks through the store).
    OnFsync,
}

impl BlocksToStore {
    pub fn as_str(self) -> &'static str {
        match self {
            BlocksToStore::Later => "later",
            BlocksToStore::OnFsync => "on-fsync",
        }
    }
}

impl std::str::FromStr for BlocksToStore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "later" => Ok(BlocksToStore::Later),
            "on-fsync" => Ok(BlocksToStore::OnFsync),
            _ => Err(format!("`{s}` is not a blocks_to_store mode (later or on-fsync)")),
        }
    }
}

impl VolumeConfig {
    pub fn remote_name(&self) -> &str {
        self.remote_volume.as_deref().unwrap_or(&self.name)
    }
    pub fn push_branch(&self) -> &str {
        self.branch.as_deref().unwrap_or("main")
    }
}

/// `mount.json`: present while a mount process serves the volume.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MountState {
    pub mountpoint: PathBuf,
    pub pid: u32,
}

/// The files of one volume.
pub struct VolumeDir {
    pub name: String,
    pub dir: PathBuf,
}

impl VolumeDir {
    pub fn config_path(&self) -> PathBuf { self.dir.join("volume.json") }
    pub fn meta_dir(&self) -> PathBuf { self.dir.join("meta") }
    pub fn blocks_dir(&self) -> PathBuf { self.dir.join("blocks") }
    pub fn staging_dir(&self) -> PathBuf { self.dir.join("staging") }
    pub fn lock_path(&self) -> PathBuf { self.dir.join("lock") }
    pub fn mount_state_path(&self) -> PathBuf { self.dir.join("mount.json") }
    pub fn log_path(&self) -> PathBuf { self.dir.join("mount.log") }
    pub fn metrics_path(&self) -> PathBuf { self.dir.join("metrics.json") }
    pub fn control_path(&self) -> PathBuf { self.dir.join("control.sock") }

    pub fn config(&self) -> NodeResult<VolumeConfig> {
        typed(|| {
            let path = self.config_path();
            let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            let cfg: VolumeConfig = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
            if cfg.format_version != FORMAT_VERSION {
                anyhow::bail!("volume {} has format version {}, this hybridctl knows {FORMAT_VERSION}", self.name, cfg.format_version);
            }
            Ok(cfg)
        })
    }

    /// The mount state, if a live process holds the volume.
    pub fn mount_state(&self) -> Option<MountState> {
        let text = std::fs::read_to_string(self.mount_state_path()).ok()?;
        let state: MountState = serde_json::from_str(&text).ok()?;
        pid_alive(state.pid).then_some(state)
    }

    /// Take the volume's exclusive lock, or say who holds it.
    pub fn lock(&self) -> NodeResult<VolumeLock> {
        typed(|| {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.lock_path())
                .with_context(|| format!("open {}", self.lock_path().display()))?;
            // SAFETY: flock on an open descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let at = self.mount_state().map(|m| format!(" at {}", m.mountpoint.display())).unwrap_or_default();
                let holder = if holder.is_empty() { "?" } else { holder };
            return Err(NodeError::Busy(format!("volume {} is in use by pid {holder}{at}", self.name)).into());
            }
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.sync_all()?;
            Ok(VolumeLock { _file: file })
        })
    }
}

/// Held while a process owns a volume; released when dropped (or when the process dies).
pub struct VolumeLock {
    _file: File,
}

/// Whether process `pid` runs. A killed process its parent has not reaped yet (a zombie)
/// still answers signal 0, but it serves nothing: it counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => true,
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Home {
    /// The state directory at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `flag`, else `$HYBRIDFS_HOME`, else `/var/lib/hybridfs`.
    pub fn resolve(flag: Option<PathBuf>) -> NodeResult<Home> {
        typed(|| {
            let root = flag
                .or_else(|| std::env::var_os("HYBRIDFS_HOME").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/var/lib/hybridfs"));
            Ok(Home { root })
        })
    }

    pub fn volume(&self, name: &str) -> NodeResult<VolumeDir> {
        if !valid_name(name) {
            return Err(NodeError::BadInput(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'")));
        }
        let dir = self.root.join("volumes").join(name);
        if !dir.join("volume.json").exists() {
            return Err(NodeError::NotFound(format!("no volume named {name} in {}", self.root.display())));
        }
        Ok(VolumeDir { name: name.to_string(), dir })
    }

    pub fn volumes(&self) -> NodeResult<Vec<VolumeDir>> {
        typed(|| {
            let dir = self.root.join("volumes");
            let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
            let mut names: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
            names.sort();
            Ok(names.iter().filter_map(|n| self.volume(n).ok()).collect())
        })
    }

}

#[cfg(test)]
mod tests {
    use super::pid_alive;

    /// A killed process nobody has reaped yet (a zombie) still answers signal 0; `status`
    /// must not show a mount whose process is one as mounted.
    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(pid_alive(pid));
        // SAFETY: SIGKILL to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        });
        assert!(zombie, "the child never became a zombie");
        assert!(!pid_alive(pid), "a zombie counts as alive");
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }
}
