//! Signed artifacts: an Ed25519 signature over a component's digest, by a key the host
//! trusts for the deployer's role.
//!
//! - `micropay keygen` makes a key pair: the secret key file stays with the signer, the line
//!   it prints (`ID=PUBLIC_KEY@role+role`) goes into the hosts' trusted keys
//!   (`MICROPAY_TRUSTED_KEYS`, or one line each in `--trusted-keys-file`);
//! - `micropay sign FILE.wasm --key KEY` writes `FILE.wasm.sig`: the key's id and the
//!   signature over `micropay-component:{sha256 of the file, hex}`, which `micropay deploy`
//!   sends along;
//! - with keys trusted, every deploy must carry a signature by one of them, trusted for the
//!   deployer's role; with none (the embedded default), unsigned deploys are accepted and the
//!   host says so when it starts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::DeployError;
use crate::policy::Role;

/// A detached signature of a component, as `micropay sign` writes it and a deploy carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signature {
    /// The id of the key that signed.
    pub key_id: String,
    /// The Ed25519 signature (base64) over [`message`] of the component's digest.
    pub signature: String,
}

/// What is signed: the component's digest, in a context of its own.
fn message(digest: &str) -> Vec<u8> {
    format!("micropay-component:{digest}").into_bytes()
}

/// A key's id: the first 16 hex digits of the SHA-256 of its public key.
fn key_id(public: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(public.as_bytes()))[..16].to_string()
}

/// One trusted key.
struct Trusted {
    key: VerifyingKey,
    roles: Vec<Role>,
}

/// The public keys a host trusts, by id, each for some roles.
#[derive(Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, Trusted>,
}

impl TrustedKeys {
    /// Reads `ID=PUBLIC_KEY@role+role` entries, separated by commas, spaces or new lines, from
    /// `inline` and from the lines of `file` (`#` starts a comment).
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> anyhow::Result<Self> {
        let mut text = inline.unwrap_or_default().to_string();
        if let Some(file) = file {
            let lines = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            for line in lines.lines() {
                text.push('\n');
                text.push_str(line.split('#').next().unwrap_or_default());
            }
        }
        let mut keys = BTreeMap::new();
        for entry in text.split([',', ' ', '\n', '\t']).map(str::trim).filter(|entry| !entry.is_empty()) {
            let (id, trusted) = parse_entry(entry).with_context(|| format!("invalid trusted key {entry:?}"))?;
            keys.insert(id, trusted);
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a deploy's signature: none needed when no key is trusted; otherwise one by a
    /// trusted key, trusted for `role`, over `digest`. Answers the signing key's id.
    pub fn check(
        &self,
        digest: &str,
        signature: Option<&Signature>,
        role: Role,
    ) -> Result<Option<String>, DeployError> {
        let untrusted = |message: String| DeployError::Refused { code: "signature_untrusted", message };
        let Some(signature) = signature else {
            if self.keys.is_empty() {
                return Ok(None);
            }
            return Err(DeployError::Refused {
                code: "signature_missing",
                message: "this host accepts only signed components (micropay sign)".into(),
            });
        };
        let Some(trusted) = self.keys.get(&signature.key_id) else {
            return Err(untrusted(format!("key {} is not trusted here", signature.key_id)));
        };
        if !trusted.roles.contains(&role) {
            return Err(untrusted(format!("key {} is not trusted for the {} role", signature.key_id, role.name())));
        }
        let bytes = BASE64.decode(&signature.signature).ok().and_then(|bytes| <[u8; 64]>::try_from(bytes).ok());
        let bytes = bytes.ok_or_else(|| untrusted("the signature is not an Ed25519 signature".into()))?;
        trusted.key.verify(&message(digest), &ed25519_dalek::Signature::from_bytes(&bytes)).map_err(|_| {
            untrusted(format!("the signature by key {} does not match the component", signature.key_id))
        })?;
        Ok(Some(signature.key_id.clone()))
    }
}

fn parse_entry(entry: &str) -> anyhow::Result<(String, Trusted)> {
    let (id, rest) = entry.split_once('=').context("expected ID=PUBLIC_KEY@role+role")?;
    let (public, roles) = rest.split_once('@').context("expected ID=PUBLIC_KEY@role+role")?;
    let bytes = BASE64.decode(public).context("the public key is not base64")?;
    let bytes = <[u8; 32]>::try_from(bytes).ok().context("the public key is not 32 bytes")?;
    let key = VerifyingKey::from_bytes(&bytes).context("not an Ed25519 public key")?;
    if key_id(&key) != id {
        bail!("the id {id} is not this key's ({})", key_id(&key));
    }
    let roles = roles
        .split('+')
        .map(|role| <Role as clap::ValueEnum>::from_str(role, false).map_err(|_| anyhow::anyhow!("no role {role:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((id.to_string(), Trusted { key, roles }))
}

/// A new key pair: writes the secret key to `path` (readable by its owner only) and answers
/// the trusted-key entry for `roles`.
pub fn keygen(path: &Path, roles: &[Role]) -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    let key = SigningKey::from_bytes(&secret);
    let public = key.verifying_key();
    let id = key_id(&public);
    if path.exists() {
        bail!("{} exists already", path.display());
    }
    write_private(path, &format!("{id}:{}\n", BASE64.encode(secret)))?;
    let roles: Vec<&str> = roles.iter().map(|role| role.name()).collect();
    Ok(format!("{id}={}@{}", BASE64.encode(public.as_bytes()), roles.join("+")))
}

/// Signs the component at `file` with the secret key at `key`; writes and answers
/// `FILE.sig`'s path.
pub fn sign(file: &Path, key: &Path) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let (id, secret) = text.trim().split_once(':').context("not a key written by micropay keygen")?;
    let secret = BASE64.decode(secret).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    let key = SigningKey::from_bytes(&secret.context("not a key written by micropay keygen")?);
    if key_id(&key.verifying_key()) != id {
        bail!("the key file's id does not match its key");
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let digest = crate::runtime::registry::digest(&bytes);
    let signature =
        Signature { key_id: id.to_string(), signature: BASE64.encode(key.sign(&message(&digest)).to_bytes()) };
    let path = signature_path(file);
    std::fs::write(&path, serde_json::to_string_pretty(&signature)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Where `micropay sign` puts the signature of `file`: beside it, `.sig` appended.
pub fn signature_path(file: &Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
