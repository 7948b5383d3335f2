//! The registry of services, and how a component becomes a version: compiled once
//! (precompiled artifacts cached by content hash, so a restart only deserializes), checked
//! against its policy, linked against its capabilities and kept as an `InstancePre` from
//! which every invocation instantiates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::policy::{Kind, Policy};
use crate::runtime::bindings::{
    fraud_rule::FraudRulePre, identity::IdentityServicePre, service::ServicePre, subscribing::SubscribingServicePre,
    template::TemplatePre,
};
use crate::runtime::service::Service;
use crate::runtime::state::InvocationState;

/// The services of the host, by name.
#[derive(Default)]
pub struct Registry {
    services: RwLock<HashMap<String, Arc<Service>>>,
}

impl Registry {
    pub fn insert(&self, service: Arc<Service>) {
        self.services.write().unwrap().insert(service.name.to_string(), service);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.services.read().unwrap().get(name).cloned()
    }

    /// Stops serving `name`; its data stays.
    pub fn remove(&self, name: &str) -> Option<Arc<Service>> {
        self.services.write().unwrap().remove(name)
    }

    /// Every service, sorted by name.
    pub fn all(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self.services.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The service that authenticates callers: the one whose active version's policy names it
    /// the identity provider (at most one may: see `policy::load_all` and the deploy checks).
    pub fn identity(&self) -> Option<Arc<Service>> {
        self.services.read().unwrap().values().find(|s| s.active().policy.component.identity_provider).cloned()
    }
}

/// SHA-256 of a component's bytes (hex): its identity in the version store and the cache.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A compiled component.
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
    /// The digests this process compiled (rather than found in the cache).
    compiled_here: Mutex<HashSet<String>>,
}

impl Compiler {
    pub fn new(engine: Engine, cache_dir: PathBuf) -> Self {
        Self { engine, cache_dir, compiled_here: Mutex::default() }
    }

    /// Loads the component file at `path` (see [`Compiler::compile`]).
    pub fn load(&self, path: &Path) -> anyhow::Result<Compiled> {
        let bytes = std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        self.compile(&bytes)
    }

    /// Whether an artifact of the component with this digest is in the cache.
    pub fn is_cached(&self, digest: &str) -> bool {
        self.artifact(digest).exists()
    }

    /// The cached artifact of the component with `digest` (see [`Compiler::is_cached`]); it
    /// counts as from the cache unless this process compiled it.
    pub fn load_cached(&self, digest: &str) -> anyhow::Result<Compiled> {
        let artifact = self.artifact(digest);
        // SAFETY: as in `compile`: written by an engine of the same compatibility hash into
        // the host's own cache directory.
        let component = unsafe { Component::deserialize_file(&self.engine, &artifact) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading {}", artifact.display()))?;
        let from_cache = !self.compiled_here.lock().unwrap().contains(digest);
        Ok(Compiled { component, digest: digest.to_string(), from_cache })
    }

    fn artifact(&self, digest: &str) -> PathBuf {
        let mut engine_hash = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        self.cache_dir.join(format!("{digest}-{:016x}.cwasm", engine_hash.finish()))
    }

    /// Compiles a component's bytes: from the cache when an artifact for these bytes and this
    /// engine exists, otherwise with Cranelift, and then cached.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Compiled> {
        let digest = digest(bytes);
        let artifact = self.artifact(&digest);
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
        let precompiled =
            self.engine.precompile_component(bytes).map_err(anyhow::Error::from).context("compiling the component")?;
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating cache directory {}", self.cache_dir.display()))?;
        let partial = artifact.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, &precompiled).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &artifact).with_context(|| format!("writing {}", artifact.display()))?;
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &precompiled) }?;
        self.compiled_here.lock().unwrap().insert(digest.clone());
        Ok(Compiled { component, digest, from_cache: false })
    }
}

/// Refuses a component whose imports ask for a capability its policy does not grant, before
/// anything of it runs. (Imports the host does not provide at all fail at linking.) A plugin
/// is granted nothing: it may import only the types of its contract, and WASI, which the host
/// gives it with nothing behind it (see `capabilities::wasi`).
pub fn check_imports(engine: &Engine, policy: &Policy, component: &Component) -> anyhow::Result<()> {
    for (import, _) in component.component_type().imports(engine) {
        let interface = import.split('@').next().unwrap_or(import);
        let refusal = match (policy.component.kind, interface) {
            (Kind::FraudRule, "micropay:platform/rule-types") => continue,
            (Kind::Template, "micropay:platform/template-types") => continue,
            (Kind::FraudRule | Kind::Template, wasi) if wasi.starts_with("wasi:") => continue,
            (Kind::FraudRule, _) => "capability at all: it is a fraud-rule plugin",
            (Kind::Template, _) => "capability at all: it is a template plugin",
            (Kind::Service, "micropay:platform/database") if policy.database.is_none() => "database ([database] name)",
            (Kind::Service, "micropay:platform/services") if policy.services.call.is_empty() => {
                "service calls ([services] call)"
            }
            (Kind::Service, "micropay:platform/events") if policy.events.publish.is_empty() => {
                "event topics ([events] publish)"
            }
            (Kind::Service, "micropay:platform/fraud-rules") if !policy.hosts(Kind::FraudRule) => {
                "fraud rules ([plugins] host = [\"fraud-rule\"])"
            }
            (Kind::Service, "micropay:platform/templates") if !policy.hosts(Kind::Template) => {
                "templates ([plugins] host = [\"template\"])"
            }
            (Kind::Service, "micropay:platform/messaging") if policy.messaging.channels.is_empty() => {
                "channel ([messaging] channels)"
            }
            _ => continue,
        };
        anyhow::bail!("the component imports {import}, but its policy {} grants no {refusal}", policy.source.display());
    }
    Ok(())
}

/// The interfaces a component exports: its world, as far as the host calls it. A new version
/// of a service must export the same.
pub fn exports(engine: &Engine, component: &Component) -> BTreeSet<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// A linked component, by the world it implements: what the host can call on it.
pub enum World {
    /// A service: its `handler`, and `authenticator` and `subscriber` when it exports them.
    Service {
        handler: ServicePre<InvocationState>,
        identity: Option<IdentityServicePre<InvocationState>>,
        subscriber: Option<SubscribingServicePre<InvocationState>>,
    },
    /// A fraud rule: its `rule`.
    FraudRule(FraudRulePre<InvocationState>),
    /// A set of templates: its `renderer`.
    Template(TemplatePre<InvocationState>),
}

impl World {
    pub fn kind(&self) -> Kind {
        match self {
            World::Service { .. } => Kind::Service,
            World::FraudRule(_) => Kind::FraudRule,
            World::Template(_) => Kind::Template,
        }
    }
}

/// Links a component and checks the world it implements, as its policy's `component.kind`
/// says. A service must export the `handler`; one whose policy names it the identity provider
/// must export `authenticator` (exporting it without that grant gives nothing: it is never
/// asked); one whose policy subscribes it to topics must export `subscriber`. A fraud rule must
/// export `rule`, a template `renderer`.
pub fn prepare(linker: &Linker<InvocationState>, policy: &Policy, component: &Component) -> anyhow::Result<World> {
    let instance_pre =
        linker.instantiate_pre(component).map_err(anyhow::Error::from).context("linking the component's imports")?;
    if policy.component.kind == Kind::FraudRule {
        let rule = FraudRulePre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the fraud-rule world's rule")?;
        return Ok(World::FraudRule(rule));
    }
    if policy.component.kind == Kind::Template {
        let template = TemplatePre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the template world's renderer")?;
        return Ok(World::Template(template));
    }
    let handler = ServicePre::new(instance_pre.clone())
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
    Ok(World::Service { handler, identity, subscriber })
}
