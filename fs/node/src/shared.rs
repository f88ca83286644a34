//! Shared volumes (issue 15): one volume that several hosts mount at once, its metadata in a
//! PostgreSQL database ([`hybridfs_meta_pg::PgKv`]), its data in its object store.
//!
//! The database holds the whole volume, one volume per database: its metadata table and a
//! descriptor ([`SharedDescriptor`], the named state [`DESCRIPTOR`]) with the volume's name,
//! format, block size and store. Each host's `HYBRIDFS_HOME` holds only a small local
//! descriptor, `volumes/NAME/volume.json` with the database URL in `meta`, and the host's own
//! staging files, block files and cache:
//!
//! ```text
//! hybridctl format NAME --meta postgres://USER@HOST:PORT/DB --store s3://BUCKET/PREFIX   (once)
//! hybridctl format NAME --meta postgres://USER@HOST:PORT/DB --join                      (every other host)
//! hybridctl mount NAME /mnt/hybrid                                                       (every host)
//! ```

use crate::create::{check_store, now_secs, probe_store, Formatted};
use crate::error::{bad_input, typed, NodeError, NodeResult};
use crate::home::{parse_size, valid_name, Home, VolumeConfig, FORMAT_VERSION};
use crate::keys;
use anyhow::Context;
use hybridfs_core::error::FsError;
use hybridfs_core::meta::{MetaStore, Mutation};
use hybridfs_core::Volume;
use hybridfs_meta_pg::{redact, PgKv};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The named state holding the [`SharedDescriptor`] in the volume's database.
pub const DESCRIPTOR: &str = "shared_volume";

/// What the database says about the volume it holds.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SharedDescriptor {
    pub name: String,
    pub format_version: u32,
    pub block_size: u32,
    pub store: String,
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

/// `format --meta`'s request.
#[derive(Clone, Debug, Default)]
pub struct SharedSpec {
    pub name: String,
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB` (libpq URL parameters accepted, e.g.
    /// `connect_timeout=5`).
    pub meta: String,
    /// Required for a new volume; for `join`, must match the volume's if given.
    pub store: Option<String>,
    /// A new volume's block size [default: 1M]; ignored by `join` (the volume's).
    pub block_size: Option<String>,
    pub key_file: Option<std::path::PathBuf>,
    /// Check that the store takes a write first.
    pub check: bool,
    /// Join the volume already in the database instead of making a new one.
    pub join: bool,
}

/// How long an operation of a mounted shared volume waits for an unavailable database before
/// it fails with EIO [default: 60 s; `meta_timeout_secs` in `volume.json`].
pub const DEFAULT_META_TIMEOUT: Duration = hybridfs_meta_pg::DEFAULT_WAIT;

/// Open the metadata of the shared volume whose database is `url`.
pub(crate) fn open_meta(url: &str, wait: Option<Duration>) -> anyhow::Result<Arc<MetaStore>> {
    Ok(open_engine(url, wait)?.0)
}

/// [`open_meta`], with its engine (for [`invalidate_on_changes`]).
pub(crate) fn open_engine(url: &str, wait: Option<Duration>) -> anyhow::Result<(Arc<MetaStore>, Arc<PgKv>)> {
    let kv = Arc::new(PgKv::connect_existing(url).map_err(|e| db_error(url, e))?);
    kv.set_wait(wait.unwrap_or(DEFAULT_META_TIMEOUT));
    let meta = MetaStore::new(kv.clone()).map_err(|e| db_error(url, e))?;
    Ok((Arc::new(meta), kv))
}

/// Drop the kernel's cached entries and attributes that another host's commits changed
/// (PostgreSQL `LISTEN/NOTIFY`, [`PgKv::listen`]): a rename, unlink or new size on one host
/// is seen by the next lookup on this one at once rather than after the TTL, which stays as
/// the bound when a notification is lost (a reconnect). The volume forgets its own recent
/// answers about those rows too (core's `volume/recent.rs`). The kernel's caches are left
/// alone while the volume is not mounted in this process; stops when the volume is gone.
pub(crate) fn invalidate_on_changes(pg: &PgKv, vol: &Arc<Volume>) -> anyhow::Result<()> {
    use hybridfs_core::meta::Key;
    let weak = Arc::downgrade(vol);
    pg.listen(move |rows| {
        let Some(vol) = weak.upgrade() else { return false };
        if rows.is_empty() {
            return true;
        }
        let kernel = hybridfs_fuse::kernel_cache::of(&vol);
        for (cf, key) in rows {
            if cf == hybridfs_core::kv::Cf::Snapshots {
                // A snapshot made or deleted elsewhere: `/.snapshots` is read again.
                vol.snapshots_changed_elsewhere();
                if let Some(k) = &kernel {
                    k.invalidate_entry(hybridfs_core::volume::views::SNAPSHOTS_DIR, &key);
                    k.invalidate_inode(hybridfs_core::volume::views::SNAPSHOTS_DIR);
                }
                continue;
            }
            match Key::of_row(cf, &key) {
                Ok(Key::Inode(ino)) => {
                    vol.changed_elsewhere(ino);
                    if let Some(k) = &kernel {
                        k.invalidate_inode(ino);
                    }
                }
                Ok(Key::Dentry(parent, name)) => {
                    vol.name_changed_elsewhere(parent, &name);
                    if let Some(k) = &kernel {
                        k.invalidate_entry(parent, &name);
                    }
                }
                _ => {}
            }
        }
        true
    })
    .context("start listening for other hosts' changes")?;
    Ok(())
}

/// A database error as the user should read it.
fn db_error(url: &str, e: FsError) -> anyhow::Error {
    let shown = redact(url);
    match e {
        FsError::NotFound => anyhow::Error::from(NodeError::NotFound(format!(
            "the database {shown} holds no hybridfs volume (make one there with `hybridctl format NAME --meta URL --store s3://BUCKET/PREFIX`)"
        ))),
        FsError::MetaUnavailable(why) => anyhow::anyhow!("cannot reach the metadata database {shown}: {why}"),
        e => anyhow::anyhow!("the metadata database {shown}: {e}"),
    }
}

fn read_descriptor(meta: &MetaStore, url: &str) -> anyhow::Result<Option<SharedDescriptor>> {
    let Some(bytes) = meta.meta_value(DESCRIPTOR).map_err(|e| db_error(url, e))? else { return Ok(None) };
    let d = serde_json::from_slice(&bytes).with_context(|| format!("parse the volume descriptor in {}", redact(url)))?;
    Ok(Some(d))
}

impl Home {
    /// `format NAME --meta URL --store STORE` (a new shared volume in the database at URL) or
    /// `format NAME --meta URL --join` (this host joins the volume already there). Either way
    /// this host gets `volumes/NAME/volume.json` naming the database; nothing else of the
    /// volume is kept here but the host's staging, block files and cache.
    pub fn format_shared(&self, spec: &SharedSpec) -> NodeResult<Formatted> {
        typed(|| {
            let name = spec.name.as_str();
            let url = spec.meta.as_str();
            let shown = redact(url);
            if !valid_name(name) {
                return bad_input(format!("bad volume name {name:?}: use letters, digits, '.', '_' and '-'"));
            }
            if !hybridfs_meta_pg::is_pg_url(url) {
                return bad_input(format!("--meta {shown}: expected postgres://USER@HOST:PORT/DB"));
            }
            let dir = self.root.join("volumes").join(name);
            if dir.exists() {
                return bad_input(format!("volume {name} already exists in {} (nothing was changed)", self.root.display()));
            }
            let key = match &spec.key_file {
                Some(p) => Some(keys::prepare_key_file(p)?),
                None => None,
            };
            let desc = if spec.join {
                let meta = open_meta(url, Some(Duration::ZERO))?;
                let Some(desc) = read_descriptor(&meta, url)? else {
                    return Err(NodeError::NotFound(format!(
                        "the database {shown} holds no hybridfs volume (make one there with `hybridctl format {name} --meta URL --store s3://BUCKET/PREFIX`)"
                    ))
                    .into());
                };
                if desc.format_version != FORMAT_VERSION {
                    return bad_input(format!(
                        "volume {} in {shown} has format version {}; this hybridctl knows {FORMAT_VERSION}",
                        desc.name, desc.format_version
                    ));
                }
                if desc.name != name {
                    return Err(NodeError::NotFound(format!("the database {shown} holds volume {}, not {name}", desc.name)).into());
                }
                if let Some(store) = &spec.store {
                    if store.trim_end_matches('/') != desc.store.trim_end_matches('/') {
                        return bad_input(format!("volume {name} in {shown} keeps its data in {}, not {store}", desc.store));
                    }
                }
                match (&desc.key_fingerprint, &key) {
                    (Some(want), Some(k)) if *want != k.fingerprint => {
                        return bad_input(format!("the key in {} is not volume {name}'s (fingerprint {want})", k.path))
                    }
                    (Some(_), None) => return bad_input(format!("volume {name} is encrypted: give its key with --encryption-key-file")),
                    (None, Some(_)) => return bad_input(format!("volume {name} is not encrypted: drop --encryption-key-file")),
                    _ => {}
                }
                desc
            } else {
                let Some(store) = spec.store.as_deref() else {
                    return bad_input(
                        "a shared volume needs its object store, where every host reads its data: give --store s3://BUCKET/PREFIX (nothing was changed)",
                    );
                };
                check_store(store)?;
                let block = spec.block_size.as_deref().unwrap_or("1M");
                let bs = match parse_size(block) {
                    Some(b) if b.is_power_of_two() && (64 << 10..=64 << 20).contains(&b) => b as u32,
                    _ => return bad_input(format!("bad block size {block:?}: a power of two from 64K to 64M")),
                };
                if spec.check && store.starts_with("s3://") {
                    probe_store(store, name)?;
                }
                let kv = PgKv::connect(url).map_err(|e| db_error(url, e))?;
                let meta = MetaStore::new(Arc::new(kv)).map_err(|e| db_error(url, e))?;
                if let Some(other) = read_descriptor(&meta, url)? {
                    return bad_input(format!(
                        "the database {shown} already holds volume {} (join it with `hybridctl format {} --meta URL --join`; one volume per database)",
                        other.name, other.name
                    ));
                }
                let desc = SharedDescriptor {
                    name: name.to_string(),
                    format_version: FORMAT_VERSION,
                    block_size: bs,
                    store: store.to_string(),
                    created: now_secs(),
                    key_fingerprint: key.as_ref().map(|k| k.fingerprint.clone()),
                };
                // SAFETY: getuid/getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                let described = Mutation::SetMeta { name: DESCRIPTOR.into(), value: Some(serde_json::to_vec(&desc)?) };
                Volume::format_with(&meta, uid, gid, vec![described]).map_err(|e| match e {
                    FsError::Exists => anyhow::anyhow!("the database {shown} already holds a volume without a descriptor (nothing was changed)"),
                    e => db_error(url, e),
                })?;
                desc
            };
            std::fs::create_dir_all(self.root.join("volumes")).with_context(|| format!("create {}", self.root.display()))?;
            let tmp = self.root.join("volumes").join(format!(".{name}.formatting"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let cfg = VolumeConfig {
                format_version: FORMAT_VERSION,
                name: name.to_string(),
                block_size: desc.block_size,
                store: desc.store.clone(),
                created: desc.created,
                remote_volume: None,
                branch: None,
                clone_of: None,
                cache_bytes: None,
                key_fingerprint: desc.key_fingerprint.clone(),
                key_file: key.as_ref().map(|k| k.path.clone()),
                read_timeout_secs: None,
                meta: Some(url.to_string()),
                meta_timeout_secs: None,
                meta_cache_ttl_ms: None,
                blocks_to_store: None,
            };
            write_private(&tmp.join("volume.json"), &serde_json::to_vec_pretty(&cfg)?)?;
            std::fs::rename(&tmp, &dir).with_context(|| format!("create {}", dir.display()))?;
            let new_key_file = key.filter(|k| k.created).map(|k| k.path);
            Ok(Formatted { name: name.to_string(), block_size: desc.block_size, store: desc.store, new_key_file })
        })
    }
}

/// `volume.json` of a shared volume may hold the database password: readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
