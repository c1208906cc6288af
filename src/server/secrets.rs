//! Webhook signing secrets at rest: sealed with XChaCha20-Poly1305 under a server key.
//!
//! The keys live in a key file, one base64 key (32 bytes) per line, the first the one that
//! seals; the others still open what they sealed. By default the file is `secrets.key`
//! beside the control database, created 0600 with one random key on first use;
//! `CONNECTOR_SECRETS_KEY_FILE` puts it elsewhere (away from the database's disk and its
//! backups). A stored secret reads `sealed:v1:KEYID:BASE64(nonce ‖ ciphertext)`, where
//! KEYID names the key (the first 8 hex digits of its SHA-256), so a copy of the database
//! alone gives no secret away. `connector-server admin rotate-secrets-key` adds a new first
//! key and seals every secret again under it; a running server reads the file again when
//! it meets a key it does not know.

use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest;

/// The environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "CONNECTOR_SECRETS_KEY_FILE";
/// How a sealed secret starts.
const SEALED: &str = "sealed:v1:";

/// The server's secret keys, the sealing one first.
pub struct SecretKeys {
    path: PathBuf,
    keys: Vec<(String, [u8; 32])>,
}

fn key_id(key: &[u8; 32]) -> String {
    sha2::Sha256::digest(key)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl SecretKeys {
    /// The key file for a control database at `db`: `CONNECTOR_SECRETS_KEY_FILE`, else
    /// `secrets.key` beside it.
    pub fn path_for(db: &Path) -> PathBuf {
        std::env::var_os(KEY_FILE_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| db.with_file_name("secrets.key"))
    }

    /// Reads the key file, creating it (0600, one random key) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        if !path.exists() {
            let key: [u8; 32] = rand::random();
            write_private(path, &format!("{}\n", b64().encode(key)))?;
            tracing::info!(file = %path.display(), "Made the key that seals webhook secrets.");
        }
        Self::load(path)
    }

    fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("secrets key file {}: {e}", path.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().map(str::trim).enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key: [u8; 32] = b64()
                .decode(line)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "secrets key file {}, line {}: not a base64 key of 32 bytes",
                        path.display(),
                        n + 1
                    )
                })?;
            keys.push((key_id(&key), key));
        }
        if keys.is_empty() {
            return Err(format!(
                "secrets key file {} holds no key: put a base64 key of 32 bytes on its first line, or delete it to have one made",
                path.display()
            ));
        }
        Ok(SecretKeys {
            path: path.to_owned(),
            keys,
        })
    }

    /// Reads the key file again (after a rotation by another process).
    pub fn reload(&mut self) -> Result<(), String> {
        *self = Self::load(&self.path)?;
        Ok(())
    }

    /// Whether `stored` is sealed (else it is a secret of an older version, in clear).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED)
    }

    /// Whether `stored` was sealed under the sealing key.
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(SEALED)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.keys[0].0)
    }

    /// Seals a secret under the first key.
    pub fn seal(&self, secret: &str) -> String {
        let (id, key) = &self.keys[0];
        let nonce: [u8; 24] = rand::random();
        let cipher = XChaCha20Poly1305::new(key.into());
        // encryption under a valid key and nonce cannot fail
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), secret.as_bytes())
            .unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{SEALED}{id}:{}", b64().encode(bytes))
    }

    /// Opens a sealed secret; `Ok(None)` when its key is not among these keys.
    pub fn open(&self, stored: &str) -> Result<Option<String>, String> {
        let Some(rest) = stored.strip_prefix(SEALED) else {
            return Ok(Some(stored.to_owned()));
        };
        let (id, data) = rest
            .split_once(':')
            .ok_or("a sealed secret without its key id")?;
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            return Ok(None);
        };
        let bytes = b64()
            .decode(data)
            .map_err(|e| format!("a sealed secret that is not base64: {e}"))?;
        if bytes.len() < 24 {
            return Err("a sealed secret too short to hold its nonce".into());
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = XChaCha20Poly1305::new(key.into())
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| format!("a secret sealed under key {id} does not open with it"))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| "a sealed secret that is not text".into())
    }

    /// Puts a new random key first in the key file (the others stay, to open what they
    /// sealed); returns the keys as they are now.
    pub fn rotate(path: &Path) -> Result<Self, String> {
        let old = Self::load_or_create(path)?;
        let key: [u8; 32] = rand::random();
        let mut text = format!("{}\n", b64().encode(key));
        for (_, k) in &old.keys {
            text.push_str(&format!("{}\n", b64().encode(k)));
        }
        write_private(path, &text)?;
        Self::load(path)
    }
}

/// Writes a file only its owner may read, whole or not at all.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let shown = |e: std::io::Error| format!("secrets key file {}: {e}", path.display());
    let tmp = path.with_extension("key.tmp");
    crate::files::write_synced(&tmp, text.as_bytes()).map_err(shown)?;
    crate::files::private_file(&tmp).map_err(shown)?;
    std::fs::rename(&tmp, path).map_err(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_sealed_opens_only_with_its_key_and_reads_nothing_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let keys = SecretKeys::load_or_create(&path).unwrap();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sealed = keys.seal(secret);
        assert!(SecretKeys::is_sealed(&sealed) && keys.is_current(&sealed));
        assert!(!sealed.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_eq!(keys.open(&sealed).unwrap().as_deref(), Some(secret));
        // a changed byte does not open
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.open(&tampered).is_err() || keys.open(&tampered).unwrap().is_none());
        // after a rotation: the old secret still opens, new ones seal under the new key
        let rotated = SecretKeys::rotate(&path).unwrap();
        assert!(!rotated.is_current(&sealed));
        assert_eq!(rotated.open(&sealed).unwrap().as_deref(), Some(secret));
        assert!(rotated.is_current(&rotated.seal(secret)));
        // another server's key file opens nothing of this one's
        let other = SecretKeys::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.open(&sealed).unwrap(), None);
    }
}
