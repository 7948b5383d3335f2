//! Admin API keys. A key is `mpk_{id}_{secret}`; the keys file keeps only its id, role and the
//! SHA-256 of the whole key, so reading the file reveals no key. `micropay admin-key create`
//! prints a new key once and appends its hash.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Role;

/// How every admin API key begins, which tells it apart from a user's bearer token.
pub const ADMIN_KEY_PREFIX: &str = "mpk_";

/// One key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub role: Role,
    /// SHA-256 (hex) of the whole key.
    pub sha256: String,
    pub created_at: String,
}

/// The keys file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyFile {
    #[serde(default, rename = "key")]
    pub keys: Vec<StoredKey>,
}

/// An authenticated administrator.
#[derive(Debug, Clone)]
pub struct Admin {
    pub key_id: String,
    pub role: Role,
}

impl KeyFile {
    /// Reads `path`; a missing file holds no keys.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("invalid admin keys file {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Creates a key with `role`, stores its hash in `path`, and returns the key itself.
    pub fn create(path: &Path, role: Role) -> anyhow::Result<String> {
        let mut file = Self::read(path)?;
        let mut random = [0u8; 36];
        getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("system random generator: {err}"))?;
        let id = hex::encode(&random[..4]);
        let key = format!("{ADMIN_KEY_PREFIX}{id}_{}", hex::encode(&random[4..]));
        file.keys.push(StoredKey { id, role, sha256: digest(&key), created_at: chrono::Utc::now().to_rfc3339() });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, toml::to_string(&file)?).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(key)
    }

    /// The administrator `key` belongs to, if it is one of ours.
    pub fn verify(&self, key: &str) -> Option<Admin> {
        let id = key.strip_prefix(ADMIN_KEY_PREFIX)?.split('_').next()?;
        let stored = self.keys.iter().find(|stored| stored.id == id)?;
        constant_time_eq(stored.sha256.as_bytes(), digest(key).as_bytes())
            .then(|| Admin { key_id: stored.id.clone(), role: stored.role })
    }
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
