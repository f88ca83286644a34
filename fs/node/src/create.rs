//! Making volumes: `format` (a new, empty one) and `clone` (a local writable copy of a branch
//! in an object store; its data is fetched when first read).
//!
//! Both build the volume in a hidden directory next to its final place and rename it there
//! only when it is complete, so a failure leaves no half-made volume behind.

use crate::error::{bad_input, typed, NodeResult};
use crate::home::{parse_size, valid_name, Home, VolumeConfig, VolumeDir, FORMAT_VERSION};
use crate::keys;
use anyhow::{Context, Result};
use hybridfs_core::progress::OnProgress;
use hybridfs_core::Volume;
use hybridfs_sync::clone::CloneReport;
use std::path::{Path, PathBuf};

/// What `format` made.
#[derive(Clone, Debug)]
pub struct Formatted {
    pub name: String,
    pub block_size: u32,
    pub store: String,
    /// A new random encryption key was written to this file: keep a copy elsewhere.
    pub new_key_file: Option<String>,
}

/// `clone`'s request.
#[derive(Clone, Debug, Default)]
pub struct CloneSpec {
    /// STORE/VOLUME.
    pub url: String,
    /// The branch the clone pushes to.
    pub branch: String,
    /// The branch cloned.
    pub source: String,
    /// Layer of `source` to clone [default: its head].
    pub from: Option<u64>,
    /// Local name [default: the volume's name in the store].
    pub name: Option<String>,
    /// Local block cache limit in bytes.
    pub cache: Option<u64>,
    pub key_file: Option<PathBuf>,
    /// Adopt `source` (which must be `branch`): the new volume continues its chain as its pusher
    /// (a home lost with its `HYBRIDFS_HOME`; see [`hybridfs_sync::clone::import_adopting`]).
    pub adopt: bool,
}

/// What `clone` made.
#[derive(Clone, Debug)]
pub struct Cloned {
    /// The volume's name in the store.
    pub volume: String,
    /// The local volume's name.
    pub name: String,
    pub report: CloneReport,
}

/// The store at `url` takes a write under the volume's name (see [`hybridfs_cloud::probe`]).
pub(crate) fn probe_store(url: &str, name: &str) -> Result<()> {
    let fail = |e: String| anyhow::anyhow!("the store {url} cannot be used: {e} (nothing was changed; `format --no-check` skips this check)");
    let store = hybridfs_cloud::open(url).map_err(|e| fail(e.to_string()))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let key = format!("{name}/format-check-{}-{nanos}", std::process::id());
    hybridfs_cloud::probe(&*store, &key).map_err(|e| fail(e.to_string()))
}

pub(crate) fn check_store(store: &str) -> Result<()> {
    if let Some(path) = store.strip_prefix("file://") {
        if !path.starts_with('/') {
            return bad_input(format!("store URL {store}: file:// needs an absolute path (file:///PATH)"));
        }
        return Ok(());
    }
    if let Some(rest) = store.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.len() < 3 || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c)) {
            return bad_input(format!("store URL {store}: bad bucket name {bucket:?}"));
        }
        return Ok(());
    }
    bad_input(format!("store URL {store}: expected file:///PATH or s3://BUCKET/PREFIX"))
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

impl Home {
    /// A new, empty volume. `check`: first make sure the store is reachable and writable (a
    /// small object written, read back and deleted), so bad settings show now rather than at
    /// the first push.
    pub fn format(&self, name: &str, block_size: &str, store: Option<&str>, key_file: Option<&Path>, check: bool) -> NodeResult<Formatted> {
        typed(|| {
            let key = match key_file {
                Some(p) => Some(keys::prepare_key_file(p)?),
                None => None,
            };
            if !valid_name(name) {
                return bad_input(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
            }
            let bs = match parse_size(block_size) {
                Some(b) if b.is_power_of_two() && (64 << 10..=64 << 20).contains(&b) => b as u32,
                _ => return bad_input(format!("bad block size {block_size:?}: a power of two from 64K to 64M")),
            };
            let default_store = format!("file://{}", self.root.join("store").display());
            let store = store.unwrap_or(&default_store);
            check_store(store)?;
            let dir = self.root.join("volumes").join(name);
            if dir.exists() {
                return bad_input(format!("volume {name} already exists in {} (nothing was changed)", self.root.display()));
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
            let cfg = VolumeConfig {
                format_version: FORMAT_VERSION,
                name: name.to_string(),
                block_size: bs,
                store: store.to_string(),
                created: now_secs(),
                remote_volume: None,
                branch: None,
                clone_of: None,
                cache_bytes: None,
                key_fingerprint: key.as_ref().map(|k| k.fingerprint.clone()),
                key_file: key.as_ref().map(|k| k.path.clone()),
                read_timeout_secs: None,
                meta: None,
                meta_timeout_secs: None,
                meta_cache_ttl_ms: None,
                blocks_to_store: None,
            };
            std::fs::write(vd.config_path(), serde_json::to_vec_pretty(&cfg)?)?;
            std::fs::rename(&tmp, &dir).with_context(|| format!("create {}", dir.display()))?;
            let new_key_file = key.filter(|k| k.created).map(|k| k.path);
            Ok(Formatted { name: name.to_string(), block_size: bs, store: store.to_string(), new_key_file })
        })
    }

    /// `hybridctl clone STORE/VOLUME --branch B`: a local volume built from the layers of
    /// branch `source` of VOLUME; file data is fetched when first read.
    pub fn clone_volume(&self, spec: &CloneSpec) -> NodeResult<Cloned> {
        self.clone_volume_with(spec, &hybridfs_core::progress::ignore)
    }

    /// [`Home::clone_volume`], reporting to `progress` (op `clone`: records applied, layer
    /// bytes downloaded).
    pub fn clone_volume_with(&self, spec: &CloneSpec, progress: OnProgress) -> NodeResult<Cloned> {
        typed(|| {
            let (url, branch, source) = (spec.url.as_str(), spec.branch.as_str(), spec.source.as_str());
            let trimmed = url.trim_end_matches('/');
            let Some((store, volume)) = trimmed.rsplit_once('/') else {
                return bad_input(format!("clone URL {url}: expected s3://BUCKET/PREFIX/VOLUME or file:///PATH/VOLUME"));
            };
            if store.ends_with(':') || store.ends_with("//") {
                return bad_input(format!("clone URL {url}: name the volume after the store (…/VOLUME)"));
            }
            check_store(store)?;
            if !valid_name(volume) || !valid_name(branch) || !valid_name(source) {
                return bad_input(format!("bad volume or branch name in {url} / {branch} / {source}"));
            }
            if spec.adopt && (branch != source || spec.from.is_some()) {
                return bad_input(format!(
                    "--adopt continues branch {source} from its head: give --branch {source} --source {source} and no --from"
                ));
            }
            let name = spec.name.as_deref().unwrap_or(volume);
            if !valid_name(name) {
                return bad_input(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
            }
            let dir = self.root.join("volumes").join(name);
            if dir.exists() {
                return bad_input(format!("volume {name} already exists in {} (choose another with --name)", self.root.display()));
            }
            let objects = hybridfs_cloud::open(store).with_context(|| format!("open the store {store}"))?;
            let key_file = spec.key_file.as_deref().map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf()).display().to_string());
            let cipher = keys::given_cipher(key_file.as_deref())?;
            let fingerprint = cipher.as_ref().map(|c| c.fingerprint.clone());
            let remote = hybridfs_sync::Remote::new(objects, volume.to_string())
                .with_cipher(cipher)
                .counted(hybridfs_cloud::traffic::Purpose::Clone);
            std::fs::create_dir_all(self.root.join("volumes")).with_context(|| format!("create {}", self.root.display()))?;
            let tmp = self.root.join("volumes").join(format!(".{name}.cloning"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let vd = VolumeDir { name: name.to_string(), dir: tmp.clone() };
            let result = (|| -> Result<CloneReport> {
                let meta = vd.open_meta(false)?;
                let report = match spec.adopt {
                    true => hybridfs_sync::clone::import_adopting(&meta, &remote, source, progress)?,
                    false => hybridfs_sync::clone::import_at_with(&meta, &remote, source, spec.from, branch, progress)?,
                };
                drop(meta);
                let cfg = VolumeConfig {
                    format_version: FORMAT_VERSION,
                    name: name.to_string(),
                    block_size: report.block_size as u32,
                    store: store.to_string(),
                    created: now_secs(),
                    remote_volume: Some(volume.to_string()),
                    branch: Some(branch.to_string()),
                    clone_of: Some((source.to_string(), report.seq)),
                    cache_bytes: spec.cache,
                    key_fingerprint: fingerprint.clone(),
                    key_file: key_file.clone(),
                    read_timeout_secs: None,
                    meta: None,
                    meta_timeout_secs: None,
                    meta_cache_ttl_ms: None,
                    blocks_to_store: None,
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
            Ok(Cloned { volume: volume.to_string(), name: name.to_string(), report })
        })
    }
}
