//! The local state directory: where volumes live, their format file and their lock.

use crate::usage;
use anyhow::{Context, Result};
use hybridfs_blocks::FileBlockStore;
use hybridfs_core::blockstore::BlockStore;
use hybridfs_core::meta::MetaStore;
use hybridfs_core::{Volume, VolumeOptions};
use hybridfs_meta::RocksOptions;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

impl VolumeConfig {
    pub fn remote_name(&self) -> &str {
        self.remote_volume.as_deref().unwrap_or(&self.name)
    }
    pub fn push_branch(&self) -> &str {
        self.branch.as_deref().unwrap_or("main")
    }

    /// The volume's place in its object store (with its cipher when encrypted).
    pub fn remote(&self) -> Result<hybridfs_sync::Remote> {
        let store = hybridfs_cloud::open(&self.store).with_context(|| format!("open the store {}", self.store))?;
        let cipher = hybridfs_sync::crypt::load(self.key_file.as_deref(), self.key_fingerprint.as_deref()).map_err(anyhow::Error::msg)?;
        Ok(hybridfs_sync::Remote::new(store, self.remote_name()).with_cipher(cipher))
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

    pub fn config(&self) -> Result<VolumeConfig> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let cfg: VolumeConfig = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if cfg.format_version != FORMAT_VERSION {
            anyhow::bail!("volume {} has format version {}, this hybridctl knows {FORMAT_VERSION}", self.name, cfg.format_version);
        }
        Ok(cfg)
    }

    /// The mount state, if a live process holds the volume.
    pub fn mount_state(&self) -> Option<MountState> {
        let text = std::fs::read_to_string(self.mount_state_path()).ok()?;
        let state: MountState = serde_json::from_str(&text).ok()?;
        pid_alive(state.pid).then_some(state)
    }

    /// Take the volume's exclusive lock, or say who holds it.
    pub fn lock(&self) -> Result<VolumeLock> {
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
            anyhow::bail!("volume {} is in use by pid {}{at}", self.name, if holder.is_empty() { "?" } else { holder });
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(VolumeLock { _file: file })
    }

    pub fn open_meta(&self, read_only: bool) -> Result<Arc<MetaStore>> {
        let opts = RocksOptions { read_only, ..RocksOptions::default() };
        Ok(Arc::new(hybridfs_meta::open(&self.meta_dir(), &opts)?))
    }

    /// The block store: local files, and for a clone the object store behind them.
    pub fn open_blocks(&self, meta: &Arc<MetaStore>) -> Result<Arc<dyn BlockStore>> {
        let local = FileBlockStore::open(self.blocks_dir())?;
        let cfg = self.config()?;
        // A home volume that merged a branch references the branch's blocks in the store.
        let merged = meta.meta_value(hybridfs_sync::merge::LOG)?.is_some();
        if cfg.clone_of.is_none() && !merged {
            return Ok(Arc::new(local));
        }
        let remote = cfg.remote()?;
        // One cache of fetched blocks per remote volume, shared by its clones on this node.
        let key = blake3::hash(format!("{}\n{}", cfg.store, cfg.remote_name()).as_bytes()).to_hex();
        let cache_dir = self.dir.parent().and_then(Path::parent).map_or(self.dir.join("cache"), |home| home.join("cache").join(&key[..32]));
        let cache = FileBlockStore::open(cache_dir)?;
        let lazy = hybridfs_sync::lazy::LazyStore::new(local, cache, remote, meta.clone(), cfg.cache_bytes)?;
        if let Some(secs) = cfg.read_timeout_secs {
            lazy.set_read_timeout(std::time::Duration::from_secs(secs));
        }
        Ok(Arc::new(lazy))
    }

    /// Open the volume for serving (caller holds the lock).
    pub fn open_volume(&self, seal_delay: std::time::Duration) -> Result<Arc<Volume>> {
        let cfg = self.config()?;
        let opts = VolumeOptions {
            block_size: cfg.block_size,
            staging_dir: self.staging_dir(),
            seal_delay,
            ..VolumeOptions::default()
        };
        let meta = self.open_meta(false)?;
        let blocks = self.open_blocks(&meta)?;
        Ok(Volume::open(meta, blocks, opts)?)
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

fn valid_name(name: &str) -> bool {
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

/// The store at `url` takes a write under the volume's name (see [`hybridfs_cloud::probe`]).
fn probe_store(url: &str, name: &str) -> Result<()> {
    let fail = |e: String| anyhow::anyhow!("the store {url} cannot be used: {e} (nothing was changed; `format --no-check` skips this check)");
    let store = hybridfs_cloud::open(url).map_err(|e| fail(e.to_string()))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let key = format!("{name}/format-check-{}-{nanos}", std::process::id());
    hybridfs_cloud::probe(&*store, &key).map_err(|e| fail(e.to_string()))
}

fn check_store(store: &str) -> Result<()> {
    if let Some(path) = store.strip_prefix("file://") {
        if !path.starts_with('/') {
            return usage(format!("store URL {store}: file:// needs an absolute path (file:///PATH)"));
        }
        return Ok(());
    }
    if let Some(rest) = store.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.len() < 3 || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c)) {
            return usage(format!("store URL {store}: bad bucket name {bucket:?}"));
        }
        return Ok(());
    }
    usage(format!("store URL {store}: expected file:///PATH or s3://BUCKET/PREFIX"))
}

impl Home {
    pub fn resolve(flag: Option<PathBuf>) -> Result<Home> {
        let root = flag
            .or_else(|| std::env::var_os("HYBRIDFS_HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/hybridfs"));
        Ok(Home { root })
    }

    pub fn volume(&self, name: &str) -> Result<VolumeDir> {
        if !valid_name(name) {
            return usage(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
        }
        let dir = self.root.join("volumes").join(name);
        if !dir.join("volume.json").exists() {
            return usage(format!("no volume named {name} in {}", self.root.display()));
        }
        Ok(VolumeDir { name: name.to_string(), dir })
    }

    pub fn volumes(&self) -> Result<Vec<VolumeDir>> {
        let dir = self.root.join("volumes");
        let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut names: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        Ok(names.iter().filter_map(|n| self.volume(n).ok()).collect())
    }

    /// `check`: first make sure the store is reachable and writable (a small object written,
    /// read back and deleted), so bad settings show now rather than at the first push.
    pub fn format(&self, name: &str, block_size: &str, store: Option<&str>, key_file: Option<&Path>, check: bool) -> Result<()> {
        let key = match key_file {
            Some(p) => Some(prepare_key_file(p)?),
            None => None,
        };
        if !valid_name(name) {
            return usage(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
        }
        let bs = match parse_size(block_size) {
            Some(b) if b.is_power_of_two() && (64 << 10..=64 << 20).contains(&b) => b as u32,
            _ => return usage(format!("bad block size {block_size:?}: a power of two from 64K to 64M")),
        };
        let default_store = format!("file://{}", self.root.join("store").display());
        let store = store.unwrap_or(&default_store);
        check_store(store)?;
        let dir = self.root.join("volumes").join(name);
        if dir.exists() {
            return usage(format!("volume {name} already exists in {} (nothing was changed)", self.root.display()));
        }
        // An object store over the network (a local directory is checked when first used).
        if check && store.starts_with("s3://") {
            probe_store(store, name)?;
        }
        std::fs::create_dir_all(dir.parent().expect("has parent")).with_context(|| format!("create {}", self.root.display()))?;
        let tmp = self.root.join("volumes").join(format!(".{name}.formatting"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let vd = VolumeDir { name: name.to_string(), dir: tmp.clone() };
        let meta = vd.open_meta(false)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Volume::format(&*meta, uid, gid)?;
        drop(meta);
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let cfg = VolumeConfig {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            block_size: bs,
            store: store.to_string(),
            created,
            remote_volume: None,
            branch: None,
            clone_of: None,
            cache_bytes: None,
            key_fingerprint: key.as_ref().map(|(_, f)| f.clone()),
            key_file: key.map(|(p, _)| p),
            read_timeout_secs: None,
        };
        std::fs::write(vd.config_path(), serde_json::to_vec_pretty(&cfg)?)?;
        std::fs::rename(&tmp, &dir).with_context(|| format!("create {}", dir.display()))?;
        println!("formatted volume {name}: block size {}, store {store}", human_bytes(bs as u64));
        Ok(())
    }
}

/// Use the key in `path`, or make a new random one there (mode 0600); returns the absolute
/// path and the key's fingerprint.
fn prepare_key_file(path: &Path) -> Result<(String, String)> {
    let abs = std::path::absolute(path).with_context(|| format!("resolve {}", path.display()))?;
    let hex = match std::fs::read_to_string(&abs) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            let hex = hybridfs_sync::crypt::Cipher::generate_hex().map_err(anyhow::Error::msg)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&abs)
                .with_context(|| format!("create the key file {}", abs.display()))?;
            f.write_all(format!("{hex}\n").as_bytes())?;
            f.sync_all()?;
            eprintln!("hybridctl: a new encryption key is in {}: keep a copy elsewhere; without it the store's copy cannot be read", abs.display());
            hex
        }
        Err(e) => return Err(e).with_context(|| format!("read the key file {}", abs.display())),
    };
    let cipher = hybridfs_sync::crypt::Cipher::from_hex(&hex)
        .map_err(|e| crate::Usage(format!("key file {}: {e}", abs.display())))?;
    Ok((abs.display().to_string(), cipher.fingerprint))
}

impl Home {
    /// `hybridctl clone STORE/VOLUME --branch B`: a local volume built from the layers of
    /// branch `source` of VOLUME; file data is fetched when first read.
    #[allow(clippy::too_many_arguments)]
    pub fn clone_volume(
        &self,
        url: &str,
        branch: &str,
        source: &str,
        from: Option<u64>,
        name: Option<&str>,
        cache: Option<u64>,
        key_file: Option<&Path>,
        json: bool,
    ) -> Result<()> {
        let trimmed = url.trim_end_matches('/');
        let Some((store, volume)) = trimmed.rsplit_once('/') else {
            return usage(format!("clone URL {url}: expected s3://BUCKET/PREFIX/VOLUME or file:///PATH/VOLUME"));
        };
        if store.ends_with(':') || store.ends_with("//") {
            return usage(format!("clone URL {url}: name the volume after the store (…/VOLUME)"));
        }
        check_store(store)?;
        if !valid_name(volume) || !valid_name(branch) || !valid_name(source) {
            return usage(format!("bad volume or branch name in {url} / {branch} / {source}"));
        }
        let name = name.unwrap_or(volume);
        if !valid_name(name) {
            return usage(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
        }
        let dir = self.root.join("volumes").join(name);
        if dir.exists() {
            return usage(format!("volume {name} already exists in {} (choose another with --name)", self.root.display()));
        }
        let objects = hybridfs_cloud::open(store).with_context(|| format!("open the store {store}"))?;
        // The key of an encrypted volume: from the environment or the key file given here.
        let key_file = key_file.map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf()).display().to_string());
        let cipher = match (std::env::var(hybridfs_sync::crypt::KEY_ENV), &key_file) {
            (Ok(hex), _) => Some(hybridfs_sync::crypt::Cipher::from_hex(&hex).map_err(anyhow::Error::msg)?),
            (Err(_), Some(p)) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("read the encryption key file {p}"))?;
                Some(hybridfs_sync::crypt::Cipher::from_hex(&text).map_err(anyhow::Error::msg)?)
            }
            (Err(_), None) => None,
        };
        let fingerprint = cipher.as_ref().map(|c| c.fingerprint.clone());
        let remote = hybridfs_sync::Remote::new(objects, volume.to_string()).with_cipher(cipher.map(Arc::new));
        std::fs::create_dir_all(self.root.join("volumes")).with_context(|| format!("create {}", self.root.display()))?;
        let tmp = self.root.join("volumes").join(format!(".{name}.cloning"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let vd = VolumeDir { name: name.to_string(), dir: tmp.clone() };
        let result = (|| -> Result<hybridfs_sync::clone::CloneReport> {
            let meta = vd.open_meta(false)?;
            let report = hybridfs_sync::clone::import_at(&meta, &remote, source, from, branch)?;
            drop(meta);
            let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            let cfg = VolumeConfig {
                format_version: FORMAT_VERSION,
                name: name.to_string(),
                block_size: report.block_size as u32,
                store: store.to_string(),
                created,
                remote_volume: Some(volume.to_string()),
                branch: Some(branch.to_string()),
                clone_of: Some((source.to_string(), report.seq)),
                cache_bytes: cache,
                key_fingerprint: fingerprint.clone(),
                key_file: key_file.clone(),
                read_timeout_secs: None,
            };
            std::fs::write(vd.config_path(), serde_json::to_vec_pretty(&cfg)?)?;
            Ok(report)
        })();
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &dir).with_context(|| format!("create {}", dir.display()))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "cloned {volume} (branch {source}, layer {}) as volume {name}: {} records from {} layers in {:.2}s; {} blocks stay in the store until read; pushes go to branch {branch}",
                report.seq, report.records, report.layers, report.seconds, report.blocks
            );
        }
        Ok(())
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Whether `path` is a hybridfs mount (its source is `hybridfs:NAME`).
pub fn is_hybridfs_mount(path: &Path) -> bool {
    mount_type(path).is_some_and(|(fstype, source)| fstype.starts_with("fuse") && source.starts_with("hybridfs"))
}

/// Whether `path` is in this process's mount table: (file system type, source).
pub fn mount_type(path: &Path) -> Option<(String, String)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mp = fields.get(4)?.replace("\\040", " ");
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?.to_string();
        let source = fields.get(sep + 2)?.to_string();
        (mp == want).then_some((fstype, source))
    })
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
