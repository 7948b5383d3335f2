//! `micropay serve --watch`: a component or policy file that changes in the host's
//! directories is deployed within a second, with every check a deploy makes; a file refused
//! is logged, and the running version keeps serving.
//!
//! The host's own files are its operator's: a watched deploy acts with the `platform` role,
//! recorded as deployed by `watch`. With trusted keys, the component needs its signature
//! beside it (`FILE.wasm.sig`, as `micropay sign` writes it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::signing::{self, Signature};
use super::{DeployRequest, Deployer};
use crate::admin::keys::Admin;
use crate::policy::{Policy, Role};

/// How often the directories are looked at.
const POLL: Duration = Duration::from_millis(200);

/// Watches `policies` (every `*.toml`) and the component files they name in `components`.
pub async fn run(
    deployer: Arc<Deployer>,
    policies: Vec<PathBuf>,
    components: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = Admin { key_id: "watch".into(), role: Role::Platform };
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    let mut first = true;
    tracing::info!(policies = ?policies, components = %components.display(), "watching for changed components and policies");
    while !*shutdown.borrow() {
        for path in policy_files(&policies) {
            let Ok(policy) = Policy::load(&path) else {
                if changed(&mut seen, &path) && !first {
                    tracing::warn!(policy = %path.display(), "watched policy is invalid; not deployed");
                }
                continue;
            };
            let wasm = components.join(&policy.component.file);
            // Both looked at every time: the first pass only records what is there.
            let (policy_changed, wasm_changed) = (changed(&mut seen, &path), changed(&mut seen, &wasm));
            if first || !(policy_changed || wasm_changed) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&wasm) else { continue };
            let name = policy.component.name.clone();
            let holds = deployer.store.holds(&name, &crate::runtime::registry::digest(&bytes), &policy.text).await;
            if holds.unwrap_or(false) {
                continue;
            }
            let signature = std::fs::read_to_string(signing::signature_path(&wasm))
                .ok()
                .and_then(|text| serde_json::from_str::<Signature>(&text).ok());
            let request = DeployRequest {
                name: name.clone(),
                wasm: bytes,
                policy: Some(policy.text.clone()),
                note: Some(format!("changed on disk: {}", wasm.display())),
                signature,
                canary: None,
                migrations: Vec::new(),
            };
            match deployer.deploy(&watcher, request).await {
                Ok(stored) => tracing::info!(component = %name, version = stored.version, "watched change deployed"),
                Err(err) => {
                    tracing::warn!(component = %name, "watched change refused; the running version keeps serving: {err}")
                }
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The policy files of `dirs`, sorted.
fn policy_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Whether `path`'s modification time or size differ from what was seen last (and records
/// them).
fn changed(seen: &mut HashMap<PathBuf, (SystemTime, u64)>, path: &PathBuf) -> bool {
    let Ok(metadata) = std::fs::metadata(path) else { return false };
    let now = (metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH), metadata.len());
    seen.insert(path.clone(), now) != Some(now)
}
