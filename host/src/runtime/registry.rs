//! The component registry: each component compiled once (precompiled artifacts cached by
//! content hash, so a restart only deserializes), linked against its capabilities and kept as
//! an `InstancePre` from which every invocation instantiates.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::capabilities::database::ServiceDatabase;
use crate::policy::Policy;
use crate::runtime::bindings::{
    Route, identity::IdentityServicePre, service::ServicePre, subscribing::SubscribingServicePre,
};
use crate::runtime::state::InvocationState;

/// A component ready to be invoked.
pub struct LoadedComponent {
    /// The service name and mount point.
    pub name: Arc<str>,
    /// SHA-256 of the component file: its version.
    pub digest: String,
    /// Whether its compiled artifact came from the cache.
    pub from_cache: bool,
    pub policy: Policy,
    /// The handler world, for HTTP invocations.
    pub service: ServicePre<InvocationState>,
    /// Present when the component also exports `authenticator`.
    pub identity: Option<IdentityServicePre<InvocationState>>,
    /// Present when the component also exports `subscriber`.
    pub subscriber: Option<SubscribingServicePre<InvocationState>>,
    /// The component's own database, if its policy grants one.
    pub database: Option<Arc<ServiceDatabase>>,
    /// The endpoints it serves (asked once, at load).
    pub routes: Vec<Route>,
    /// One permit per instance that may be alive at once (`limits.max_instances`).
    pub slots: tokio::sync::Semaphore,
    /// Signalled when one of its units of work committed events, to wake its outbox relay.
    pub outbox_written: Arc<tokio::sync::Notify>,
}

impl LoadedComponent {
    /// The short form of its digest, for logs.
    pub fn version(&self) -> &str {
        &self.digest[..12]
    }
}

/// The loaded components by service name.
#[derive(Default)]
pub struct Registry {
    components: RwLock<HashMap<String, Arc<LoadedComponent>>>,
}

impl Registry {
    pub fn insert(&self, component: Arc<LoadedComponent>) {
        self.components.write().unwrap().insert(component.name.to_string(), component);
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedComponent>> {
        self.components.read().unwrap().get(name).cloned()
    }

    /// Every component, sorted by name.
    pub fn all(&self) -> Vec<Arc<LoadedComponent>> {
        let mut all: Vec<_> = self.components.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The component that authenticates callers: the one whose policy names it the identity
    /// provider (at most one may: see `policy::load_all`).
    pub fn identity(&self) -> Option<Arc<LoadedComponent>> {
        self.components.read().unwrap().values().find(|c| c.policy.component.identity_provider).cloned()
    }
}

/// A loaded component file.
pub struct Compiled {
    pub component: Component,
    /// SHA-256 of the file: the component's version.
    pub digest: String,
    /// Whether it came from the artifact cache rather than the compiler.
    pub from_cache: bool,
}

/// Compiles components, caching precompiled artifacts in a directory.
pub struct Compiler {
    engine: Engine,
    cache_dir: PathBuf,
}

impl Compiler {
    pub fn new(engine: Engine, cache_dir: PathBuf) -> Self {
        Self { engine, cache_dir }
    }

    /// Loads `path`: from the cache when an artifact for these bytes and this engine exists,
    /// otherwise compiled with Cranelift and then cached.
    pub fn load(&self, path: &Path) -> anyhow::Result<Compiled> {
        let bytes = std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let mut engine_hash = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let artifact = self.cache_dir.join(format!("{digest}-{:016x}.cwasm", engine_hash.finish()));

        if artifact.exists() {
            // SAFETY: the artifact was written by `Engine::precompile_component` of an engine
            // with the same compatibility hash (it is in the file name), into the host's own
            // cache directory, which nothing else writes.
            match unsafe { Component::deserialize_file(&self.engine, &artifact) } {
                Ok(component) => return Ok(Compiled { component, digest, from_cache: true }),
                Err(err) => {
                    tracing::warn!(artifact = %artifact.display(), "cached artifact unusable, recompiling: {err:#}")
                }
            }
        }
        let precompiled = self
            .engine
            .precompile_component(&bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling component {}", path.display()))?;
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating cache directory {}", self.cache_dir.display()))?;
        let partial = artifact.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, &precompiled).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &artifact).with_context(|| format!("writing {}", artifact.display()))?;
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &precompiled) }?;
        Ok(Compiled { component, digest, from_cache: false })
    }
}

/// Refuses a component whose imports ask for a capability its policy does not grant, before
/// anything of it runs. (Imports the host does not provide at all fail at linking.)
pub fn check_imports(engine: &Engine, policy: &Policy, component: &Component) -> anyhow::Result<()> {
    for (import, _) in component.component_type().imports(engine) {
        let interface = import.split('@').next().unwrap_or(import);
        let refusal = match interface {
            "micropay:platform/database" if policy.database.is_none() => "a database ([database] name)",
            "micropay:platform/services" if policy.services.call.is_empty() => "service calls ([services] call)",
            "micropay:platform/events" if policy.events.publish.is_empty() => "event topics ([events] publish)",
            _ => continue,
        };
        anyhow::bail!("the component imports {import}, but its policy {} grants no {refusal}", policy.source.display());
    }
    Ok(())
}

/// A linked component, by the worlds it implements.
pub struct Prepared {
    pub service: ServicePre<InvocationState>,
    pub identity: Option<IdentityServicePre<InvocationState>>,
    pub subscriber: Option<SubscribingServicePre<InvocationState>>,
}

/// Links a component and checks the worlds it implements: every component must export the
/// `handler`; one whose policy names it the identity provider must export `authenticator`
/// (exporting it without that grant gives nothing: it is never asked); one whose policy
/// subscribes it to topics must export `subscriber`.
pub fn prepare(linker: &Linker<InvocationState>, policy: &Policy, component: &Component) -> anyhow::Result<Prepared> {
    let instance_pre =
        linker.instantiate_pre(component).map_err(anyhow::Error::from).context("linking the component's imports")?;
    let service = ServicePre::new(instance_pre.clone())
        .map_err(anyhow::Error::from)
        .context("the component does not export the service world's handler")?;
    let identity = IdentityServicePre::new(instance_pre.clone()).ok();
    if identity.is_none() && policy.component.identity_provider {
        anyhow::bail!(
            "its policy {} names it the identity provider, but it does not export micropay:platform/authenticator",
            policy.source.display()
        );
    }
    let subscriber = SubscribingServicePre::new(instance_pre).ok();
    if subscriber.is_none() && !policy.events.subscribe.is_empty() {
        anyhow::bail!(
            "its policy {} subscribes it to events, but it does not export micropay:platform/subscriber",
            policy.source.display()
        );
    }
    Ok(Prepared { service, identity, subscriber })
}
