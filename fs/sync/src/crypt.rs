//! Client-side encryption of everything a volume puts in the object store (invariant 8).
//!
//! One 32-byte volume key, chosen at format time, never stored with the volume and never
//! logged: it comes from a key file (its path is in `volume.json`) or from the
//! `HYBRIDFS_ENCRYPTION_KEY` environment variable (64 hex digits). Two keys derive from it with
//! blake3's key derivation:
//!
//! * a **data key** for XChaCha20-Poly1305 (an AEAD: tampering is detected). Every object body
//!   is `random 24-byte nonce ++ ciphertext`; a block frame, a pack entry (each frame on its
//!   own, so ranged reads still work), a layer and a head are each sealed this way. Block
//!   frames are bound to their block id as associated data, so the store cannot swap blocks;
//! * a **name key** for blake3's keyed hash: a block is stored under `keyed_hash(id)`, not its
//!   content hash, so the store learns nothing from names (equal blocks still dedupe).
//!
//! Decrypted frames are still checked against their id (invariant 5).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hybridfs_core::types::BlockId;

const NONCE: usize = 24;

pub struct Cipher {
    aead: XChaCha20Poly1305,
    names: [u8; 32],
    /// First 16 hex digits of blake3 of the key: tells keys apart, reveals nothing.
    pub fingerprint: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher({})", self.fingerprint)
    }
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        let data = blake3::derive_key("hybridfs 2026 object data", key);
        let names = blake3::derive_key("hybridfs 2026 object names", key);
        Cipher {
            aead: XChaCha20Poly1305::new((&data).into()),
            names,
            fingerprint: blake3::hash(key).to_hex()[..16].to_string(),
        }
    }

    /// Parse 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Cipher, String> {
        let t = text.trim();
        let bytes = hex::decode(t).map_err(|_| "the encryption key must be 64 hex digits".to_string())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| "the encryption key must be 64 hex digits (32 bytes)".to_string())?;
        Ok(Cipher::new(&key))
    }

    /// A new random key as 64 hex digits.
    pub fn generate_hex() -> Result<String, String> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("random key: {e}"))?;
        Ok(hex::encode(key))
    }

    /// The name a block has in the store.
    pub fn block_name(&self, id: &BlockId) -> String {
        blake3::keyed_hash(&self.names, &id.0).to_hex().to_string()
    }

    /// `nonce ++ ciphertext` of `plain`, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        getrandom::getrandom(&mut nonce).expect("the system random source works");
        let ct = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: context })
            .expect("encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The plain bytes of an object sealed with [`Cipher::seal`] and the same context.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < NONCE + 16 {
            return Err("encrypted object is truncated".into());
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: context })
            .map_err(|_| "decryption failed: wrong key, or the object was changed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_with_the_same_key_and_context_only() {
        let a = Cipher::new(&[7; 32]);
        let b = Cipher::new(&[8; 32]);
        let s = a.seal(b"frame bytes", b"ctx");
        assert_eq!(a.open(&s, b"ctx").unwrap(), b"frame bytes");
        assert!(a.open(&s, b"other").is_err(), "bound to its context");
        assert!(b.open(&s, b"ctx").is_err(), "wrong key");
        let mut t = s.clone();
        t[30] ^= 1;
        assert!(a.open(&t, b"ctx").is_err(), "tampering is detected");
        assert!(!s.windows(5).any(|w| w == b"frame"), "no plaintext in the object");
        let id = BlockId([1; 32]);
        assert_ne!(a.block_name(&id), id.to_hex());
        assert_ne!(a.block_name(&id), b.block_name(&id));
        assert!(Cipher::from_hex("zz").is_err());
        assert_eq!(Cipher::generate_hex().unwrap().len(), 64);
    }
}

/// The environment variable that may hold a volume's key (64 hex digits).
pub const KEY_ENV: &str = "HYBRIDFS_ENCRYPTION_KEY";

/// The cipher of a volume: from [`KEY_ENV`], else from `key_file`. `fingerprint` is what the
/// volume was formatted with (None: not encrypted); a key that does not match it is refused.
pub fn load(key_file: Option<&str>, fingerprint: Option<&str>) -> Result<Option<std::sync::Arc<Cipher>>, String> {
    let Some(want) = fingerprint else { return Ok(None) };
    let cipher = match std::env::var(KEY_ENV) {
        Ok(hex) => Cipher::from_hex(&hex).map_err(|e| format!("{KEY_ENV}: {e}"))?,
        Err(_) => {
            let Some(path) = key_file else {
                return Err(format!("the volume is encrypted: set {KEY_ENV} or give its key file"));
            };
            let text = std::fs::read_to_string(path).map_err(|e| format!("read the encryption key file {path}: {e}"))?;
            Cipher::from_hex(&text).map_err(|e| format!("encryption key file {path}: {e}"))?
        }
    };
    if cipher.fingerprint != want {
        return Err(format!(
            "wrong encryption key: its fingerprint is {}, the volume was formatted with {want}",
            cipher.fingerprint
        ));
    }
    Ok(Some(std::sync::Arc::new(cipher)))
}
