//! Encryption keys: the one place a volume's key is found, made or checked.
//!
//! A volume formatted with `--encryption-key-file` records the key's fingerprint (never the
//! key) and the file's path in `volume.json`. Whenever the volume's store is opened the key
//! comes from `HYBRIDFS_ENCRYPTION_KEY` if set, else from that file, and must match the
//! fingerprint ([`volume_cipher`]). `format` makes the key file if it is missing
//! ([`prepare_key_file`]); `clone` takes whatever key it is given ([`given_cipher`]) and records
//! its fingerprint.

use anyhow::{Context, Result};
use hybridfs_sync::crypt::{self, Cipher};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The cipher of a volume whose key has `fingerprint` (None: not encrypted), from the
/// environment or `key_file`.
pub fn volume_cipher(key_file: Option<&str>, fingerprint: Option<&str>) -> Result<Option<Arc<Cipher>>> {
    crypt::load(key_file, fingerprint).map_err(anyhow::Error::msg)
}

/// The key given to `clone`: the environment's, else the one in `key_file`, else none.
pub fn given_cipher(key_file: Option<&str>) -> Result<Option<Arc<Cipher>>> {
    let cipher = match (std::env::var(crypt::KEY_ENV), key_file) {
        (Ok(hex), _) => Cipher::from_hex(&hex).map_err(anyhow::Error::msg)?,
        (Err(_), Some(p)) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("read the encryption key file {p}"))?;
            Cipher::from_hex(&text).map_err(anyhow::Error::msg)?
        }
        (Err(_), None) => return Ok(None),
    };
    Ok(Some(Arc::new(cipher)))
}

/// A key file `format` will record.
#[derive(Clone, Debug)]
pub struct PreparedKey {
    /// Absolute path of the key file.
    pub path: String,
    pub fingerprint: String,
    /// The file did not exist: a new random key was written there (mode 0600).
    pub created: bool,
}

/// Use the key in `path`, or make a new random one there (mode 0600).
pub fn prepare_key_file(path: &Path) -> Result<PreparedKey> {
    let abs = std::path::absolute(path).with_context(|| format!("resolve {}", path.display()))?;
    let (hex, created) = match std::fs::read_to_string(&abs) {
        Ok(t) => (t, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            let hex = Cipher::generate_hex().map_err(anyhow::Error::msg)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&abs)
                .with_context(|| format!("create the key file {}", abs.display()))?;
            f.write_all(format!("{hex}\n").as_bytes())?;
            f.sync_all()?;
            (hex, true)
        }
        Err(e) => return Err(e).with_context(|| format!("read the key file {}", abs.display())),
    };
    let cipher = Cipher::from_hex(&hex).map_err(|e| crate::BadInput(format!("key file {}: {e}", abs.display())))?;
    Ok(PreparedKey { path: abs.display().to_string(), fingerprint: cipher.fingerprint, created })
}
