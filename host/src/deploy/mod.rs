//! Deploys: new versions of a running service, checked, stored, and swapped in on every host
//! sharing the installation's platform database.
//!
//! A deploy, in order:
//! 1. **checks**, each refusing with its own error code while the active version keeps
//!    serving: the deployer's role is in the active policy's `[deploy] roles` (a new service,
//!    or a policy granting more, takes the `platform` role); the policy is valid, names this
//!    service, keeps its database and fits beside the other services; the bytes are a
//!    component, signed by a trusted key when keys are trusted; it compiles; it exports the
//!    same world as the active version; it imports nothing its policy does not grant; it
//!    links, and answers its routes;
//! 2. **the store**: the version and the pointer to it, in one transaction ([`store`]);
//! 3. **the swap**, on this host before the deploy answers ([`Deployer::converge`]), and on
//!    every other host when the platform database's notification reaches it
//!    ([`Deployer::listen`]); a host that missed notifications catches up when it
//!    reconnects, and every few seconds besides.
//!
//! Invariants kept here:
//! - a host serves, for each service, the version the store says is active, or the one it
//!   served before while it loads that one: never none (a version that fails to load on a
//!   host leaves the previous one serving there, and says so in the log);
//! - the checks a deploy passed hold for what is swapped in: the swap loads exactly the bytes
//!   and policy the checks saw, by digest.

pub mod cli;
pub mod migrations;
pub mod signing;
pub mod store;
pub mod watch;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;
use wasmtime::component::Linker;

use crate::admin::keys::Admin;
use crate::metrics::DeployOutcome;
use crate::policy::{self, Kind, Policy, Role};
use crate::runtime::invoke::Dispatcher;
use crate::runtime::registry::{self, Compiler};
use crate::runtime::service::{Canary, Service, Version, VersionStats};
use crate::runtime::state::InvocationState;
use migrations::NewMigration;
use serde_json::json;
use signing::{Signature, TrustedKeys};
use store::{CanaryPlan, NewServiceRefusal, NewVersion, PlatformEvent, StoredCanary, StoredVersion, VersionStore};

/// How often a host compares its versions with the store even without a notification.
const RESYNC: Duration = Duration::from_secs(5);

/// Why a deploy or a rollback was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A check failed (422), with its code.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The deployer's role may not do this (403).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// Another deploy of the service went first (409).
    #[error("{0}")]
    Conflict(String),
    /// The version store could not be reached (503).
    #[error("the version store is unavailable: {0:#}")]
    Store(anyhow::Error),
}

fn refused(code: &'static str, message: impl Into<String>) -> DeployError {
    DeployError::Refused { code, message: message.into() }
}

/// A deploy as asked.
pub struct DeployRequest {
    /// The service.
    pub name: String,
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// The policy's text; none keeps the active version's.
    pub policy: Option<String>,
    pub note: Option<String>,
    pub signature: Option<Signature>,
    /// Deploy it on trial beside the active version rather than in its place.
    pub canary: Option<CanaryPlan>,
    /// Migrations of the service's database that come with it (applied before the swap).
    pub migrations: Vec<NewMigration>,
}

/// What deploys ask of the platform: bring a service new to this host to life (databases,
/// pools, the bus, schedules), end an undeployed one, and migrate a service's database.
pub trait Lifecycle: Send + Sync {
    /// Provisions what `version`'s policy grants and serves it as a new service.
    fn start(self: Arc<Self>, version: Arc<Version>) -> BoxFuture<'static, anyhow::Result<()>>;
    /// Brings what runs for a service (its relay, deliveries, schedules) to its active
    /// version's policy, after a swap.
    fn refresh(&self, service: &Arc<Service>);
    /// Stops serving `name`; its data stays.
    fn stop(&self, name: &str);
    /// The migrations `database` (a service's database name) has applied: version, checksum.
    fn applied_migrations(self: Arc<Self>, database: String)
    -> BoxFuture<'static, anyhow::Result<migrations::Applied>>;
    /// Applies `migrations` to `database`, skipping those applied already.
    fn migrate(
        self: Arc<Self>,
        database: String,
        migrations: Vec<NewMigration>,
    ) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// Checks, stores and swaps versions.
pub struct Deployer {
    dispatcher: Arc<Dispatcher>,
    linker: Linker<InvocationState>,
    compiler: Compiler,
    pub store: VersionStore,
    trusted: TrustedKeys,
    /// One swap at a time on this host.
    swapping: Mutex<()>,
    /// Signalled when the platform's outbox has new events, to wake its relay.
    pub outbox_written: Arc<tokio::sync::Notify>,
    /// Starts and stops services, migrates their databases (set once the platform has its
    /// bus).
    lifecycle: OnceLock<Arc<dyn Lifecycle>>,
}

impl Deployer {
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        linker: Linker<InvocationState>,
        compiler: Compiler,
        store: VersionStore,
        trusted: TrustedKeys,
    ) -> Self {
        if trusted.is_empty() {
            tracing::warn!("no signing keys are trusted: unsigned deploys are accepted");
        }
        Self {
            dispatcher,
            linker,
            compiler,
            store,
            trusted,
            swapping: Mutex::new(()),
            outbox_written: Arc::default(),
            lifecycle: OnceLock::new(),
        }
    }

    /// Lets deploys start new services, stop undeployed ones and migrate, through
    /// `lifecycle`.
    pub fn serve_with(&self, lifecycle: Arc<dyn Lifecycle>) {
        self.lifecycle.set(lifecycle).ok();
    }

    /// Loads a stored version: compiled (from the cache when its artifact is there, without
    /// reading its bytes from the store), checked against its policy, linked, and asked for
    /// its routes.
    pub async fn load(&self, stored: &StoredVersion) -> anyhow::Result<Arc<Version>> {
        let source = format!("{}/v{} in the version store", stored.component, stored.version);
        let policy = Policy::parse(&stored.policy, Path::new(&source))?;
        anyhow::ensure!(
            policy.limits.fuel.is_none() || self.dispatcher.options.fuel,
            "{source} sets limits.fuel, and this host meters no fuel: it takes a restart"
        );
        let bytes = match self.compiler.is_cached(&stored.digest) {
            true => None,
            false => Some(self.store.bytes(&stored.digest).await?),
        };
        let compiled = match bytes {
            Some(bytes) => tokio::task::block_in_place(|| self.compiler.compile(&bytes))?,
            None => self.compiler.load_cached(&stored.digest)?,
        };
        let version = self.prepare(stored.version, compiled, policy).await.map_err(|err| anyhow::anyhow!("{err}"))?;
        Ok(Arc::new(version))
    }

    /// A compiled component with its policy, as a version: imports checked, linked, routes
    /// asked (a plugin serves none).
    async fn prepare(&self, number: i64, compiled: registry::Compiled, policy: Policy) -> Result<Version, DeployError> {
        registry::check_imports(&self.dispatcher.engine, &policy, &compiled.component)
            .map_err(|err| refused("imports_not_granted", format!("{err:#}")))?;
        let world = registry::prepare(&self.linker, &policy, &compiled.component)
            .map_err(|err| refused("does_not_link", format!("{err:#}")))?;
        let plugin = world.kind() != Kind::Service;
        let version = Version {
            name: policy.component.name.as_str().into(),
            number,
            digest: compiled.digest,
            from_cache: compiled.from_cache,
            exports: registry::exports(&self.dispatcher.engine, &compiled.component),
            policy: Arc::new(policy),
            world,
            routes: Vec::new(),
            stats: VersionStats::default(),
        };
        if plugin {
            return Ok(version);
        }
        let shared = Arc::new(version);
        let routes = self
            .dispatcher
            .routes(&shared)
            .await
            .map_err(|err| refused("does_not_start", format!("the component failed to list its routes: {err}")))?;
        let mut version = Arc::into_inner(shared).expect("no invocation keeps the version");
        version.routes = routes;
        Ok(version)
    }

    /// Whether `admin` may deploy `name` at all: a role its active policy's `[deploy] roles`
    /// lists, or for a component no host serves `platform` (or `risk`, for a new fraud rule,
    /// which the deploy checks once it has read the policy). (Checked again by the deploy; this
    /// is for refusing a request before reading its body.) A refusal is recorded as any is.
    pub async fn may_deploy(&self, admin: &Admin, name: &str) -> Result<(), DeployError> {
        let allowed = match self.dispatcher.registry.get(name) {
            Some(service) => allowed(admin, &service.active().policy, "deploy"),
            None if matches!(admin.role, Role::Platform | Role::Risk) => Ok(()),
            None => Err(DeployError::Forbidden {
                code: "new_service_needs_platform",
                message: format!("no service named {name:?} is served; deploying a new one takes a platform key"),
            }),
        };
        if let Err(refusal) = &allowed {
            self.record(name, admin, "deploy", Some(refusal), DeployOutcome::Deployed).await;
        }
        allowed
    }

    /// Deploys a new version of a served service, after every check; answers it as stored.
    pub async fn deploy(&self, admin: &Admin, request: DeployRequest) -> Result<StoredVersion, DeployError> {
        let name = request.name.clone();
        let deployed = self.checked_deploy(admin, request).await;
        self.record(&name, admin, "deploy", deployed.as_ref().err(), DeployOutcome::Deployed).await;
        deployed
    }

    /// Counts a deploy or rollback, and records a refused one as the platform's event (the
    /// others' events are written with them).
    async fn record(&self, name: &str, admin: &Admin, what: &str, refusal: Option<&DeployError>, done: DeployOutcome) {
        let Some(refusal) = refusal else {
            self.dispatcher.metrics.record_deploy(name, done);
            self.outbox_written.notify_one();
            return;
        };
        let code = match refusal {
            DeployError::Refused { code, .. } | DeployError::Forbidden { code, .. } => *code,
            DeployError::Conflict(_) => "deploy_conflict",
            // A name nothing knows makes no metric series or audit record (any key could
            // make up names without end); nothing can be recorded where the store is away.
            DeployError::NotFound(_) | DeployError::Store(_) => return,
        };
        if self.dispatcher.registry.get(name).is_none() {
            return;
        }
        self.dispatcher.metrics.record_deploy(name, DeployOutcome::Refused);
        let event = PlatformEvent {
            topic: "platform.component_refused",
            component: name.to_string(),
            data: json!({
                "entity_type": "component", "component": name, "refused": what, "code": code,
                "message": refusal.to_string(), "by": admin.key_id, "role": admin.role.name(),
            }),
        };
        match self.store.record(&event).await {
            Ok(()) => self.outbox_written.notify_one(),
            Err(err) => tracing::warn!(component = %name, "recording the refusal failed: {err:#}"),
        }
    }

    async fn checked_deploy(&self, admin: &Admin, request: DeployRequest) -> Result<StoredVersion, DeployError> {
        let DeployRequest { name, wasm, policy, note, signature, canary, migrations } = request;
        if let Some(plan) = canary
            && (!(1..=99).contains(&plan.percent) || !(0.0..=1.0).contains(&plan.margin) || plan.min_requests < 1)
        {
            return Err(refused(
                "invalid_canary",
                "a canary serves 1 to 99 percent of callers, with a margin of 0 to 1 and at least 1 request",
            ));
        }
        let Some(service) = self.dispatcher.registry.get(&name) else {
            let request = DeployRequest { name, wasm, policy, note, signature, canary, migrations };
            return self.deploy_new_service(admin, request).await;
        };
        let active = service.active();
        allowed(admin, &active.policy, "deploy")?;

        let policy = match policy {
            Some(text) => Policy::parse(&text, Path::new("the deployed policy"))
                .map_err(|err| refused("invalid_policy", format!("{err:#}")))?,
            None => (*active.policy).clone(),
        };
        if policy.component.name != name {
            return Err(refused(
                "name_mismatch",
                format!("the policy is for {:?}, not {name:?}", policy.component.name),
            ));
        }
        policy_change(admin, &active.policy, &policy, "the policy")?;
        let (digest, signed_by, compiled) = self.check_artifact(admin, &policy, &wasm, signature.as_ref())?;
        let exports = registry::exports(&self.dispatcher.engine, &compiled.component);
        if exports != active.exports {
            return Err(refused(
                "different_world",
                format!(
                    "the component exports {} where the active version exports {}",
                    list(&exports),
                    list(&active.exports)
                ),
            ));
        }
        // Checked, linked and started now; numbered once stored.
        let mut version = self.prepare(0, compiled, policy.clone()).await?;
        if !migrations.is_empty() {
            // Not while another deploy is going first: its own migrations may be under way.
            let now = self.store.active_of(&name).await.map_err(DeployError::Store)?.map(|stored| stored.version);
            if now != Some(active.number) {
                return Err(DeployError::Conflict(format!("another deploy of {name} went first")));
            }
            self.migrate(&policy, migrations).await?;
        }

        let role = admin.role.name();
        let new = NewVersion {
            component: &name,
            bytes: &wasm,
            digest: &digest,
            policy: &policy.text,
            signature: signature.as_ref().map(|signature| signature.signature.as_str()),
            signed_by: signed_by.as_deref(),
            deployed_by: &admin.key_id,
            deployer_role: Some(role),
            note: note.as_deref(),
        };
        let event = |version| {
            let mut event = deployed_event(&new, version);
            if let Some(plan) = canary {
                event.topic = "platform.component_canary_started";
                event.data["canary"] = json!(plan);
                event.data["active_version"] = json!(active.number);
            }
            event
        };
        let stored = self.store.deploy(&new, Some(active.number), canary, event).await.map_err(DeployError::Store)?;
        let number = match stored {
            Ok(number) => number,
            Err(now) => {
                return Err(DeployError::Conflict(format!(
                    "another deploy went first: version {} is active now, not {}",
                    now.unwrap_or_default(),
                    active.number
                )));
            }
        };
        tracing::info!(component = %name, version = number, %digest, deployed_by = %admin.key_id, role, "version deployed");
        version.number = number;
        self.converge_to(&name, Some(Arc::new(version))).await;
        let serving = match canary {
            None => service.active().number == number,
            Some(_) => service.canary().is_some_and(|canary| canary.version.number == number),
        };
        if !serving {
            return Err(DeployError::Store(anyhow::anyhow!(
                "{name} version {number} is stored and active, but this host did not swap to it (see its log)"
            )));
        }
        let stored = self.store.version(&name, number).await.map_err(DeployError::Store)?;
        stored.ok_or_else(|| DeployError::Store(anyhow::anyhow!("version {number} of {name} vanished")))
    }

    /// Deploys a service this host does not serve: a policy is required, and the `platform`
    /// role (it grants a database, topics, calls). The same checks as any deploy, but the
    /// world's (there is no running version to compare with); then every host provisions its
    /// database and serves it.
    async fn deploy_new_service(&self, admin: &Admin, request: DeployRequest) -> Result<StoredVersion, DeployError> {
        let DeployRequest { name, wasm, policy, note, signature, canary, migrations } = request;
        if !migrations.is_empty() {
            return Err(refused(
                "invalid_migrations",
                "a new service's migrations come from the hosts' migrations directory; later ones come with its deploys",
            ));
        }
        let new_service_needs_platform = || DeployError::Forbidden {
            code: "new_service_needs_platform",
            message: format!("no service named {name:?} is served; deploying a new one takes a platform key"),
        };
        if !matches!(admin.role, Role::Platform | Role::Risk) {
            return Err(new_service_needs_platform());
        }
        if canary.is_some() {
            return Err(refused("invalid_canary", "a new service has no active version to try a canary beside"));
        }
        let text =
            policy.ok_or_else(|| refused("policy_required", format!("{name} is a new service: send its policy")))?;
        let policy = Policy::parse(&text, Path::new("the deployed policy"))
            .map_err(|err| refused("invalid_policy", format!("{err:#}")))?;
        // The risk team brings new fraud rules; every other new component takes the platform's key.
        if admin.role == Role::Risk && policy.component.kind != Kind::FraudRule {
            return Err(new_service_needs_platform());
        }
        if policy.component.name != name {
            return Err(refused(
                "name_mismatch",
                format!("the policy is for {:?}, not {name:?}", policy.component.name),
            ));
        }
        let (digest, signed_by, compiled) = self.check_artifact(admin, &policy, &wasm, signature.as_ref())?;
        let mut version = self.prepare(0, compiled, policy.clone()).await?;
        let new = NewVersion {
            component: &name,
            bytes: &wasm,
            digest: &digest,
            policy: &policy.text,
            signature: signature.as_ref().map(|signature| signature.signature.as_str()),
            signed_by: signed_by.as_deref(),
            deployed_by: &admin.key_id,
            deployer_role: Some(admin.role.name()),
            note: note.as_deref(),
        };
        // Against every service of the installation, served here or not yet, under its lock.
        let fits = |other: &str| {
            let other = Policy::parse(other, Path::new("a stored policy")).map_err(|err| format!("{err:#}"))?;
            policy::check_compatible(&other, &policy).map_err(|err| format!("{err:#}"))
        };
        let stored = self.store.deploy_new(&new, fits, |number| deployed_event(&new, number)).await;
        let number = match stored.map_err(DeployError::Store)? {
            Ok(number) => number,
            Err(NewServiceRefusal::Incompatible(reason)) => return Err(refused("incompatible_policy", reason)),
            Err(NewServiceRefusal::Served) => {
                return Err(DeployError::Conflict(format!("another deploy of {name} went first")));
            }
        };
        tracing::info!(component = %name, version = number, %digest, deployed_by = %admin.key_id, "new service deployed");
        version.number = number;
        self.converge_to(&name, Some(Arc::new(version))).await;
        if self.dispatcher.registry.get(&name).is_none() {
            return Err(DeployError::Store(anyhow::anyhow!(
                "{name} version {number} is stored and active, but this host could not start it (see its log)"
            )));
        }
        let stored = self.store.version(&name, number).await.map_err(DeployError::Store)?;
        stored.ok_or_else(|| DeployError::Store(anyhow::anyhow!("version {number} of {name} vanished")))
    }

    /// Checks the migrations that come with a deploy against what the service's database has
    /// applied (see [`migrations`]), then applies them: before the swap, so the new version
    /// finds its schema, and the old one, which keeps serving meanwhile, loses nothing.
    async fn migrate(&self, policy: &Policy, migrations: Vec<NewMigration>) -> Result<(), DeployError> {
        let database = policy
            .database
            .as_ref()
            .ok_or_else(|| refused("invalid_migrations", "the service has no database to migrate"))?
            .name
            .clone();
        let lifecycle = self.lifecycle.get().ok_or_else(|| DeployError::Store(anyhow::anyhow!("not started")))?;
        let applied = lifecycle.clone().applied_migrations(database.clone()).await.map_err(DeployError::Store)?;
        migrations::check(&migrations, &applied).map_err(|(code, message)| refused(code, message))?;
        let versions: Vec<i64> = migrations.iter().map(|migration| migration.version).collect();
        lifecycle
            .clone()
            .migrate(database.clone(), migrations)
            .await
            .map_err(|err| refused("migration_failed", format!("{err:#}")))?;
        tracing::info!(%database, ?versions, "migrations of a deploy applied");
        Ok(())
    }

    /// Refuses a policy that does not fit beside the other services (their databases, one
    /// identity provider) or on this host (fuel metering).
    fn fits(&self, policy: &Policy) -> Result<(), DeployError> {
        let name = &policy.component.name;
        for other in self.dispatcher.registry.all().iter().filter(|other| *other.name != **name) {
            policy::check_compatible(&other.active().policy, policy)
                .map_err(|err| refused("incompatible_policy", format!("{err:#}")))?;
        }
        if policy.limits.fuel.is_some() && !self.dispatcher.options.fuel {
            return Err(refused(
                "fuel_unavailable",
                "this host meters no fuel (no policy asked for it when it started): limits.fuel takes a restart",
            ));
        }
        Ok(())
    }

    /// The checks of a deploy that do not depend on a running version: the policy fits beside
    /// the other services and this host; the bytes are a component, signed as the host
    /// requires, that compiles. Answers its digest, its signer, and the compiled component.
    fn check_artifact(
        &self,
        admin: &Admin,
        policy: &Policy,
        wasm: &[u8],
        signature: Option<&Signature>,
    ) -> Result<(String, Option<String>, registry::Compiled), DeployError> {
        self.fits(policy)?;
        if !is_component(wasm) {
            return Err(refused("not_a_component", "the file is not a WebAssembly component"));
        }
        let digest = registry::digest(wasm);
        let signed_by = self.trusted.check(&digest, signature, admin.role)?;
        // Compiling takes a core for a while: off the runtime's workers' turn.
        let compiled = tokio::task::block_in_place(|| self.compiler.compile(wasm))
            .map_err(|err| refused("does_not_compile", format!("the component does not compile: {err:#}")))?;
        Ok((digest, signed_by, compiled))
    }

    /// Stops serving a service on every host; its versions and its data stay, and deploying
    /// it again serves it again.
    pub async fn undeploy(&self, admin: &Admin, name: &str) -> Result<(), DeployError> {
        let undeployed = self.checked_undeploy(admin, name).await;
        self.record(name, admin, "undeploy", undeployed.as_ref().err(), DeployOutcome::Undeployed).await;
        undeployed
    }

    async fn checked_undeploy(&self, admin: &Admin, name: &str) -> Result<(), DeployError> {
        if admin.role != Role::Platform {
            return Err(DeployError::Forbidden {
                code: "undeploy_needs_platform",
                message: "undeploying a service takes a platform key".into(),
            });
        }
        let event = PlatformEvent {
            topic: "platform.component_undeployed",
            component: name.to_string(),
            data: json!({ "entity_type": "component", "component": name, "by": admin.key_id, "role": admin.role.name() }),
        };
        if !self.store.deactivate(name, &event).await.map_err(DeployError::Store)? {
            return Err(DeployError::NotFound(format!("no service named {name:?} is served")));
        }
        tracing::info!(component = %name, by = %admin.key_id, "service undeployed");
        self.converge(name).await;
        Ok(())
    }

    /// Activates an earlier stored version: `to`, or the newest one older than the active.
    pub async fn rollback(&self, admin: &Admin, name: &str, to: Option<i64>) -> Result<StoredVersion, DeployError> {
        let rolled_back = self.checked_rollback(admin, name, to).await;
        self.record(name, admin, "rollback", rolled_back.as_ref().err(), DeployOutcome::RolledBack).await;
        rolled_back
    }

    async fn checked_rollback(&self, admin: &Admin, name: &str, to: Option<i64>) -> Result<StoredVersion, DeployError> {
        let service = self
            .dispatcher
            .registry
            .get(name)
            .ok_or_else(|| DeployError::NotFound(format!("no service named {name:?} is served")))?;
        let active = service.active();
        allowed(admin, &active.policy, "roll back")?;
        // A version on trial is what a plain rollback takes back first.
        if let (Some(canary), None) = (service.canary(), to) {
            let reason = format!("rolled back by {}", admin.key_id);
            self.end_canary(name, &canary, &reason).await.map_err(DeployError::Store)?;
            let stored = self.store.version(name, active.number).await.map_err(DeployError::Store)?;
            return stored
                .ok_or_else(|| DeployError::Store(anyhow::anyhow!("version {} of {name} vanished", active.number)));
        }
        let versions = self.store.versions(name).await.map_err(DeployError::Store)?;
        let target = match to {
            Some(to) => versions.into_iter().find(|version| version.version == to),
            None => versions.into_iter().find(|version| version.version < active.number),
        };
        let target = target.ok_or_else(|| match to {
            Some(to) => DeployError::NotFound(format!("{name} has no version {to}")),
            None => DeployError::NotFound(format!("{name} has no version older than {}", active.number)),
        })?;
        if target.version == active.number {
            return Err(refused("already_active", format!("version {} of {name} is the active one", target.version)));
        }
        // The earlier version passed its own deploy's checks, against what was active then and
        // the keys trusted then: it passes today's again.
        let policy = Policy::parse(&target.policy, Path::new("the stored policy"))
            .map_err(|err| refused("invalid_policy", format!("{err:#}")))?;
        policy_change(admin, &active.policy, &policy, &format!("version {}", target.version))?;
        self.fits(&policy)?;
        let signature = target.signature.clone().zip(target.signed_by.clone());
        let signature = signature.map(|(signature, key_id)| Signature { key_id, signature });
        self.trusted.check(&target.digest, signature.as_ref(), admin.role)?;
        let version = self.load(&target).await.map_err(|err| refused("does_not_load", format!("{err:#}")))?;
        if version.exports != active.exports {
            return Err(refused("different_world", "the stored version exports another world"));
        }
        let event = PlatformEvent {
            topic: "platform.component_rolled_back",
            component: name.to_string(),
            data: json!({
                "entity_type": "component", "component": name, "version": target.version, "from": active.number,
                "digest": target.digest, "by": admin.key_id, "role": admin.role.name(),
            }),
        };
        let activated = self.store.activate(name, active.number, target.version, &admin.key_id, &event).await;
        if let Err(now) = activated.map_err(DeployError::Store)? {
            return Err(DeployError::Conflict(format!(
                "version {} of {name} is active now, not {}: look again",
                now.unwrap_or_default(),
                active.number
            )));
        }
        tracing::info!(component = %name, version = target.version, by = %admin.key_id, "version rolled back to");
        // Loaded for the checks above: swapped in as it is, not loaded again.
        self.converge_to(name, Some(version)).await;
        let stored = self.store.version(name, target.version).await.map_err(DeployError::Store)?;
        stored.ok_or_else(|| DeployError::Store(anyhow::anyhow!("version {} of {name} vanished", target.version)))
    }

    /// Makes the version on trial of a service its active version.
    pub async fn promote(&self, admin: &Admin, name: &str) -> Result<StoredVersion, DeployError> {
        let promoted = self.checked_promote(admin, name).await;
        self.record(name, admin, "promote", promoted.as_ref().err(), DeployOutcome::Promoted).await;
        promoted
    }

    async fn checked_promote(&self, admin: &Admin, name: &str) -> Result<StoredVersion, DeployError> {
        let service = self
            .dispatcher
            .registry
            .get(name)
            .ok_or_else(|| DeployError::NotFound(format!("no service named {name:?} is served")))?;
        let active = service.active();
        allowed(admin, &active.policy, "promote")?;
        let canary =
            service.canary().ok_or_else(|| DeployError::NotFound(format!("{name} has no version on trial")))?;
        policy_change(admin, &active.policy, &canary.version.policy, "the version on trial")?;
        let event = |version| PlatformEvent {
            topic: "platform.component_promoted",
            component: name.to_string(),
            data: json!({
                "entity_type": "component", "component": name, "version": version, "from": active.number,
                "by": admin.key_id, "role": admin.role.name(),
            }),
        };
        let promoted = self.store.promote(name, canary.version.number, &admin.key_id, event).await;
        let version = promoted.map_err(DeployError::Store)?.ok_or_else(|| {
            DeployError::Conflict(format!("version {} of {name} is no longer on trial", canary.version.number))
        })?;
        tracing::info!(component = %name, version, by = %admin.key_id, "version on trial promoted");
        // The version on trial becomes the active one as it is, not loaded again.
        self.converge_to(name, Some(canary.version.clone())).await;
        let stored = self.store.version(name, version).await.map_err(DeployError::Store)?;
        stored.ok_or_else(|| DeployError::Store(anyhow::anyhow!("version {version} of {name} vanished")))
    }

    /// Ends a trial, the active version staying, with `reason` in the log and the audit trail;
    /// answers whether this call ended it (another host, or the operator, may have first).
    async fn end_canary(&self, name: &str, canary: &Canary, reason: &str) -> anyhow::Result<bool> {
        let (requests, errors) = canary.version.stats.counts();
        let event = PlatformEvent {
            topic: "platform.component_canary_rolled_back",
            component: name.to_string(),
            data: json!({
                "entity_type": "component", "component": name, "version": canary.version.number,
                "reason": reason, "requests": requests, "errors": errors,
            }),
        };
        let ended = self.store.end_canary(name, canary.version.number, &event).await?;
        if ended {
            self.outbox_written.notify_one();
            tracing::warn!(component = %name, version = canary.version.number, requests, errors, "version on trial rolled back: {reason}");
        }
        self.converge(name).await;
        Ok(ended)
    }

    /// Judges every version on trial each second until `shutdown`: one whose error rate
    /// exceeds the active version's by more than its margin is rolled back (by whichever host
    /// sees it first; the others follow the store).
    pub async fn judge_canaries(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            for service in self.dispatcher.registry.all() {
                let Some(canary) = service.canary() else { continue };
                if !canary.failing(&service.active()) {
                    continue;
                }
                let (requests, errors) = canary.version.stats.counts();
                let reason = format!(
                    "{errors} errors in {requests} requests, over the active version's rate by more than {}",
                    canary.margin
                );
                match self.end_canary(&service.name, &canary, &reason).await {
                    Ok(true) => self.dispatcher.metrics.record_deploy(&service.name, DeployOutcome::CanaryRolledBack),
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(component = %service.name, "rolling the version on trial back failed: {err:#}")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Brings `name` on this host to the version the store says is active. A version that
    /// fails to load leaves the one serving in place (and is logged).
    pub async fn converge(&self, name: &str) {
        self.converge_to(name, None).await
    }

    /// [`Deployer::converge`], with a version already loaded that is used if it is the one.
    async fn converge_to(&self, name: &str, ready: Option<Arc<Version>>) {
        let _one_at_a_time = self.swapping.lock().await;
        let result = async {
            let stored = self.store.active_of(name).await?;
            let service = self.dispatcher.registry.get(name);
            let ready_for = |stored: &StoredVersion| match &ready {
                Some(ready) if ready.number == stored.version && ready.digest == stored.digest => Some(ready.clone()),
                _ => None,
            };
            match (stored, service) {
                (Some(stored), Some(service)) => {
                    if service.active().number != stored.version {
                        let version = match ready_for(&stored) {
                            Some(ready) => ready,
                            None => self.load(&stored).await?,
                        };
                        let previous = service.activate(version);
                        if let Some(lifecycle) = self.lifecycle.get() {
                            lifecycle.refresh(&service);
                        }
                        self.dispatcher.metrics.record_deploy(name, DeployOutcome::Swapped);
                        tracing::info!(component = %name, from = previous.number, to = stored.version, "version swapped");
                    }
                    let trial = self.store.canary_of(name).await?;
                    let serving = service.canary().map(|canary| canary.version.number);
                    if trial.as_ref().map(|trial| trial.version.version) != serving {
                        let canary = match trial {
                            Some(StoredCanary { version: stored, plan }) => Some(Canary {
                                version: match ready_for(&stored) {
                                    Some(ready) => ready,
                                    None => self.load(&stored).await?,
                                },
                                percent: plan.percent.clamp(1, 99) as u8,
                                margin: plan.margin,
                                min_requests: plan.min_requests.max(1) as u64,
                                baseline: service.active().stats.counts(),
                            }),
                            None => None,
                        };
                        let on_trial = canary.as_ref().map(|canary| (canary.version.number, canary.percent));
                        service.set_canary(canary);
                        tracing::info!(component = %name, canary = ?on_trial, "version on trial changed");
                    }
                }
                (Some(stored), None) => {
                    let lifecycle = self.lifecycle.get().context("this host does not start services yet")?;
                    let version = match ready_for(&stored) {
                        Some(ready) => ready,
                        None => self.load(&stored).await?,
                    };
                    lifecycle.clone().start(version).await?;
                    self.dispatcher.metrics.record_deploy(name, DeployOutcome::Swapped);
                    tracing::info!(component = %name, version = stored.version, "service started");
                }
                (None, Some(_)) => {
                    if let Some(lifecycle) = self.lifecycle.get() {
                        lifecycle.stop(name);
                    }
                    tracing::info!(component = %name, "service stopped: undeployed");
                }
                (None, None) => {}
            }
            anyhow::Ok(())
        };
        if let Err(err) = result.await {
            tracing::error!(component = %name, "bringing this host to the active version failed; what it served keeps serving: {err:#}");
        }
    }

    /// Stores, as the next version, each component file and policy of the host's that the
    /// store does not hold yet (a new installation's first versions; a file changed since),
    /// by `files`, after checking it as at a deploy: it compiles, imports only what its
    /// policy grants, and links. A file refused stops the host, naming the policy file.
    pub async fn store_files(&self, components_dir: &Path, policies: &[Policy]) -> anyhow::Result<()> {
        for policy in policies {
            let name = &policy.component.name;
            let path = components_dir.join(&policy.component.file);
            let bytes = std::fs::read(&path).with_context(|| format!("reading component {}", path.display()))?;
            let digest = registry::digest(&bytes);
            if self.store.holds(name, &digest, &policy.text).await? {
                continue;
            }
            // Where keys are trusted, the host's files are signed too (`FILE.sig` beside each).
            let signature = std::fs::read_to_string(signing::signature_path(&path))
                .ok()
                .and_then(|text| serde_json::from_str::<Signature>(&text).ok());
            let signed_by = self
                .trusted
                .check(&digest, signature.as_ref(), Role::Platform)
                .map_err(|err| anyhow::anyhow!("refusing component {name} ({}): {err}", path.display()))?;
            let compiled = self.compiler.compile(&bytes).with_context(|| format!("loading component {name}"))?;
            registry::check_imports(&self.dispatcher.engine, policy, &compiled.component)
                .with_context(|| format!("refusing component {name}"))?;
            registry::prepare(&self.linker, policy, &compiled.component)
                .with_context(|| format!("refusing component {name}"))?;
            let stored = self.store.active_of(name).await?;
            if let Some(stored) = &stored {
                let active = Policy::parse(&stored.policy, Path::new("the stored policy"))?;
                anyhow::ensure!(
                    active.database.as_ref().map(|d| &d.name) == policy.database.as_ref().map(|d| &d.name),
                    "refusing {}: {name} keeps its database ({:?})",
                    policy.source.display(),
                    active.database.as_ref().map(|d| &d.name)
                );
            }
            let active = stored.map(|version| version.version);
            let new = NewVersion {
                component: name,
                bytes: &bytes,
                digest: &digest,
                policy: &policy.text,
                signature: signature.as_ref().map(|signature| signature.signature.as_str()),
                signed_by: signed_by.as_deref(),
                deployed_by: "files",
                deployer_role: None,
                note: Some("read from the host's files"),
            };
            // Another host storing the same files at once went first: theirs is as good.
            let event = |version| deployed_event(&new, version);
            if let Ok(version) = self.store.deploy(&new, active, None, event).await? {
                tracing::info!(component = %name, version, %digest, file = %path.display(), "version stored from the files");
            }
        }
        Ok(())
    }

    /// Converges every service this host serves, and every one the store holds.
    async fn converge_all(&self) -> anyhow::Result<()> {
        let mut names: BTreeSet<String> = self.store.active().await?.into_iter().map(|v| v.component).collect();
        names.extend(self.dispatcher.registry.all().iter().map(|service| service.name.to_string()));
        for name in names {
            self.converge(&name).await;
        }
        Ok(())
    }

    /// Follows the store's notifications until `shutdown`: each one converges its service.
    /// After a lost connection, and every [`RESYNC`], every service is compared.
    pub async fn listen(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut listener = None;
        while !*shutdown.borrow() {
            if listener.is_none() {
                match self.store.listen().await {
                    Ok(connected) => {
                        listener = Some(connected);
                        // Whatever was deployed while this host did not listen.
                        if let Err(err) = self.converge_all().await {
                            tracing::warn!("comparing versions with the store failed: {err:#}");
                        }
                    }
                    Err(err) => {
                        tracing::warn!("listening for deploys failed, retrying: {err:#}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                }
            }
            let connected = listener.as_mut().expect("connected above");
            tokio::select! {
                notification = connected.try_recv() => match notification {
                    Ok(Some(notification)) => self.converge(notification.payload()).await,
                    Ok(None) | Err(_) => listener = None,
                },
                _ = tokio::time::sleep(RESYNC) => {
                    if let Err(err) = self.converge_all().await {
                        tracing::warn!("comparing versions with the store failed: {err:#}");
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// The event of a stored deploy.
fn deployed_event(new: &NewVersion<'_>, version: i64) -> PlatformEvent {
    PlatformEvent {
        topic: "platform.component_deployed",
        component: new.component.to_string(),
        data: json!({
            "entity_type": "component", "component": new.component, "version": version, "digest": new.digest,
            "by": new.deployed_by, "role": new.deployer_role, "signed_by": new.signed_by, "note": new.note,
        }),
    }
}

/// The checks of a policy replacing `active`'s, for a deploy, a rollback or a promotion: it
/// keeps the service's database; what it grants beyond the active one takes a `platform` key.
/// (`what` names it in messages.)
fn policy_change(admin: &Admin, active: &Policy, policy: &Policy, what: &str) -> Result<(), DeployError> {
    if policy.database.as_ref().map(|d| &d.name) != active.database.as_ref().map(|d| &d.name) {
        return Err(refused("database_changed", format!("{what} names another database: a service keeps its own")));
    }
    let more = grants_more(active, policy);
    if !more.is_empty() && admin.role != Role::Platform {
        return Err(DeployError::Forbidden {
            code: "grant_needs_platform",
            message: format!("{what} grants more ({}): that takes a platform key", more.join(", ")),
        });
    }
    Ok(())
}

/// Refuses a deployer whose role the active policy's `[deploy] roles` does not list.
fn allowed(admin: &Admin, policy: &Policy, what: &str) -> Result<(), DeployError> {
    match policy.deploy.roles.contains(&admin.role) {
        true => Ok(()),
        false => Err(DeployError::Forbidden {
            code: "role_not_allowed",
            message: format!(
                "the {} role may not {what} {} (its policy's deploy.roles)",
                admin.role.name(),
                policy.component.name
            ),
        }),
    }
}

/// What `new` grants that `old` does not, by field.
pub fn grants_more(old: &Policy, new: &Policy) -> Vec<&'static str> {
    let widens = |old: &[String], new: &[String]| new.iter().any(|item| !old.contains(item));
    let (a, b) = (&old.limits, &new.limits);
    let more_fuel = match (a.fuel, b.fuel) {
        (Some(old), Some(new)) => new > old,
        (Some(_), None) => true,
        (None, _) => false,
    };
    [
        ("a database", old.database.is_none() && new.database.is_some()),
        ("identity_provider", !old.component.identity_provider && new.component.identity_provider),
        ("events.publish", widens(&old.events.publish, &new.events.publish)),
        ("events.subscribe", widens(&old.events.subscribe, &new.events.subscribe)),
        ("services.call", widens(&old.services.call, &new.services.call)),
        ("plugins.host", new.plugins.host.iter().any(|kind| !old.plugins.host.contains(kind))),
        ("messaging.channels", new.messaging.channels.iter().any(|channel| !old.messaging.channels.contains(channel))),
        ("deploy.roles", new.deploy.roles.iter().any(|role| !old.deploy.roles.contains(role))),
        ("schedule", new.schedule.iter().any(|job| !old.schedule.contains(job))),
        ("limits.memory_mb", b.memory_mb > a.memory_mb),
        ("limits.deadline_ms", b.deadline_ms > a.deadline_ms),
        ("limits.fuel", more_fuel),
        ("limits.max_instances", b.max_instances > a.max_instances),
        ("limits.queue_ms", b.queue_ms > a.queue_ms),
        ("limits.max_response_kb", b.max_response_kb > a.max_response_kb),
        ("limits.max_query_rows", b.max_query_rows > a.max_query_rows),
        ("limits.max_query_mb", b.max_query_mb > a.max_query_mb),
    ]
    .into_iter()
    .filter(|(_, more)| *more)
    .map(|(field, _)| field)
    .collect()
}

/// Whether `bytes` begin as a WebAssembly component does (a core module, or anything else,
/// does not).
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

fn list(exports: &BTreeSet<String>) -> String {
    let names: Vec<&str> = exports.iter().map(String::as_str).collect();
    if names.is_empty() { "nothing".into() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        let text =
            format!("[component]\nname = \"probe\"\nfile = \"probe.wasm\"\n[database]\nname = \"probe\"\n{extra}");
        Policy::parse(&text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn a_policy_that_widens_anything_grants_more() {
        let base = policy("[events]\npublish = [\"probe.*\"]\n[limits]\nmemory_mb = 16\nfuel = 1000\n");
        assert!(grants_more(&base, &base).is_empty());
        let cases = [
            (
                "[events]\npublish = [\"probe.*\", \"user.*\"]\n[limits]\nmemory_mb = 16\nfuel = 1000\n",
                "events.publish",
            ),
            ("[events]\npublish = [\"probe.*\"]\n[limits]\nmemory_mb = 17\nfuel = 1000\n", "limits.memory_mb"),
            ("[events]\npublish = [\"probe.*\"]\n[limits]\nmemory_mb = 16\n", "limits.fuel"),
            (
                "[events]\npublish = [\"probe.*\"]\n[services]\ncall = [\"user\"]\n[limits]\nmemory_mb = 16\nfuel = 1000\n",
                "services.call",
            ),
            (
                "[events]\npublish = [\"probe.*\"]\n[deploy]\nroles = [\"risk\"]\n[limits]\nmemory_mb = 16\nfuel = 1000\n",
                "deploy.roles",
            ),
            (
                "[events]\npublish = [\"probe.*\"]\n[plugins]\nhost = [\"fraud-rule\"]\n[limits]\nmemory_mb = 16\nfuel = 1000\n",
                "plugins.host",
            ),
        ];
        for (extra, field) in cases {
            assert_eq!(grants_more(&base, &policy(extra)), vec![field], "{extra}");
        }
        // Narrowing grants nothing more.
        let narrower = policy("[events]\npublish = []\n[limits]\nmemory_mb = 8\nfuel = 10\n");
        assert!(grants_more(&base, &narrower).is_empty());
    }

    #[test]
    fn only_a_component_is_a_component() {
        assert!(is_component(b"\0asm\x0d\0\x01\0more"));
        assert!(!is_component(b"\0asm\x01\0\0\0more"));
        assert!(!is_component(b"hello, world"));
    }
}
